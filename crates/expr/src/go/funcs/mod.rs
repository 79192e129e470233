//! The functions templates may call: Go's builtins (here), Sprig's (`strings.rs`,
//! `lists.rs`, `maths.rs`, `encoding.rs`, `dates.rs`, `semver.rs`, `urls.rs`, `crypto.rs`,
//! `certs.rs`) and µTask's own (`utask.rs`).
//! Each declares its parameters with Go's types so arguments are checked as Go checks
//! them, and pays the budget for what it creates before creating it.

mod certs;
mod crypto;
mod dates;
mod encoding;
mod lists;
mod maths;
pub(crate) mod semver;
mod strings;
mod urls;
mod utask;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::LazyLock;

use super::exec::{Exec, Fail, R};
use super::printf;
use super::value::{Capped, GoStruct, IntType, Val};

pub(crate) use dates::time_method;

/// A field or method of a struct a function returned (`(semver "1.2.3").Major`,
/// `$ca.Cert`).
pub(crate) fn struct_method(st: &GoStruct, name: &str, args: Vec<Val>) -> R<Val> {
    match st {
        GoStruct::Version(v) => semver::version_method(v, name, args),
        GoStruct::Cert { cert, key } => {
            let field = match name {
                "Cert" => cert,
                "Key" => key,
                other => {
                    return Err(Fail::msg(format!(
                        "can't evaluate field {other} in type sprig.certificate"
                    )));
                }
            };
            if !args.is_empty() {
                return Err(Fail::msg(format!(
                    "{name} has arguments but cannot be invoked as function"
                )));
            }
            Ok(s(field.as_str()))
        }
    }
}

/// A parameter's Go type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum P {
    /// `interface{}`
    Any,
    /// `string`
    Str,
    /// `int`
    Int,
    /// `float64`
    Float,
    Bool,
    /// `map[string]interface{}`
    Map,
    /// `time.Time`
    Time,
    /// Sprig's `certificate`
    Cert,
}

impl P {
    pub(crate) fn go_name(self) -> &'static str {
        match self {
            P::Any => "interface {}",
            P::Str => "string",
            P::Int => "int",
            P::Float => "float64",
            P::Bool => "bool",
            P::Map => "map[string]interface {}",
            P::Cert => "sprig.certificate",
            P::Time => "time.Time",
        }
    }

    pub(crate) fn can_be_nil(self) -> bool {
        matches!(self, P::Any | P::Map)
    }

    /// A value passed for this parameter: Go refuses any other type (an `int64` for an
    /// `int`, a `json.Number` for a `string`), and no value where nil cannot go.
    pub(crate) fn check(self, v: Val) -> R<Val> {
        let ok = match (&v, self) {
            (Val::Missing | Val::Nil, p) => {
                return if p.can_be_nil() {
                    Ok(Val::Nil)
                } else {
                    Err(Fail::msg(format!(
                        "invalid value; expected {}",
                        p.go_name()
                    )))
                };
            }
            (_, P::Any) => true,
            (Val::Str(_), P::Str) => true,
            (Val::Int(_, IntType::Int), P::Int) => true,
            (Val::Float(_), P::Float) => true,
            (Val::Bool(_), P::Bool) => true,
            (Val::Map(_), P::Map) => true,
            (Val::Time(_), P::Time) => true,
            (Val::Struct(st), P::Cert) => matches!(**st, GoStruct::Cert { .. }),
            _ => false,
        };
        if ok {
            Ok(v)
        } else {
            Err(Fail::msg(format!(
                "wrong type for value; expected {}; got {}",
                self.go_name(),
                v.type_name()
            )))
        }
    }
}

pub(crate) type FnImpl = fn(&mut Exec<'_>, Vec<Val>) -> R<Val>;

pub(crate) struct FuncDef {
    pub(crate) name: &'static str,
    pub(crate) params: &'static [P],
    pub(crate) variadic: Option<P>,
    pub(crate) f: FnImpl,
}

pub(crate) const fn def(
    name: &'static str,
    params: &'static [P],
    variadic: Option<P>,
    f: FnImpl,
) -> FuncDef {
    FuncDef {
        name,
        params,
        variadic,
        f,
    }
}

/// Functions µTask has that are refused here, and why.
pub(crate) const REFUSED: &[(&str, &str)] = &[
    ("env", "reads the server's environment"),
    ("expandenv", "reads the server's environment"),
    ("getHostByName", "resolves names over the network"),
];

static FUNCS: LazyLock<HashMap<&'static str, FuncDef>> = LazyLock::new(|| {
    let mut all = Vec::new();
    all.extend(builtins());
    all.extend(strings::defs());
    all.extend(lists::defs());
    all.extend(maths::defs());
    all.extend(encoding::defs());
    all.extend(dates::defs());
    all.extend(utask::defs());
    all.extend(semver::defs());
    all.extend(urls::defs());
    all.extend(crypto::defs());
    all.extend(certs::defs());
    all.into_iter().map(|d| (d.name, d)).collect()
});

pub(crate) fn lookup(name: &str) -> Option<&'static FuncDef> {
    FUNCS.get(name)
}

pub(crate) fn is_function(name: &str) -> bool {
    FUNCS.contains_key(name)
}

/// A call the parser can refuse from its constant arguments alone: `genPrivateKey "dsa"`.
pub(crate) fn check_call(name: &str, first_arg: Option<&str>) -> Result<(), String> {
    match (name, first_arg) {
        ("genPrivateKey", Some("dsa")) => Err(format!(
            "function \"genPrivateKey\" with \"dsa\" is not available here: {}",
            certs::DSA_REFUSED
        )),
        _ => Ok(()),
    }
}

/// Why a name is not a function templates may call.
pub(crate) fn unknown_function(name: &str) -> String {
    match REFUSED.iter().find(|(n, _)| *n == name) {
        Some((_, why)) => format!("function {name:?} is not available here: it {why}"),
        None => format!("function {name:?} not defined"),
    }
}

pub(crate) fn names() -> Vec<&'static str> {
    let mut n: Vec<&'static str> = FUNCS.keys().copied().collect();
    n.sort_unstable();
    n
}

// ---- reading arguments ----

/// The text of a `P::Str` argument.
pub(crate) fn text(v: &Val) -> &str {
    v.as_text().unwrap_or("")
}

/// The value of a `P::Int`/`P::Int64` argument.
pub(crate) fn int(v: &Val) -> i64 {
    match v {
        Val::Int(i, _) => *i,
        _ => 0,
    }
}

/// spf13/cast's `ToInt64`, which Sprig's arithmetic uses: numbers truncate, strings
/// parse with Go's base prefixes (a `.0` tail allowed), anything else is 0.
pub(crate) fn to_i64(v: &Val) -> i64 {
    match v {
        Val::Int(i, _) => *i,
        Val::Float(f) => *f as i64,
        Val::Bool(b) => i64::from(*b),
        Val::Str(s) | Val::Number(s) => parse_go_int(s).unwrap_or(0),
        _ => 0,
    }
}

/// `strconv.ParseInt(s, 0, 64)` after cast's trimming of a zero decimal part.
pub(crate) fn parse_go_int(s: &str) -> Option<i64> {
    let mut t = s;
    if let Some((whole, frac)) = t.split_once('.')
        && !whole.is_empty()
        && frac.bytes().all(|b| b == b'0')
    {
        t = whole;
    }
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    let digits = if radix != 10 {
        digits.replace('_', "")
    } else {
        digits.to_string()
    };
    let v = i128::from_str_radix(&digits, radix).ok()?;
    i64::try_from(if neg { -v } else { v }).ok()
}

/// spf13/cast's `ToFloat64`.
pub(crate) fn to_f64(v: &Val) -> f64 {
    match v {
        Val::Int(i, _) => *i as f64,
        Val::Float(f) => *f,
        Val::Bool(b) => f64::from(u8::from(*b)),
        Val::Str(s) | Val::Number(s) => s.parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// Sprig's `strval`: a string as it is, anything else as `%v` prints it.
pub(crate) fn strval(e: &mut Exec<'_>, v: &Val) -> R<Rc<str>> {
    match v {
        Val::Str(s) | Val::Number(s) => Ok(s.clone()),
        other => Ok(e.sprint_one(other)?.into()),
    }
}

/// Sprig's `empty`: nil, false, zero and empty containers.
pub(crate) fn empty(v: &Val) -> bool {
    match v {
        Val::Time(_) | Val::Struct(_) => false,
        other => !other.truth(),
    }
}

/// A new string of `len` bytes is about to be made: pays for it first.
pub(crate) fn alloc(e: &mut Exec<'_>, len: usize) -> R<()> {
    e.budget.take(len)
}

pub(crate) fn s(text: impl Into<Rc<str>>) -> Val {
    Val::Str(text.into())
}

// ---- Go's builtins ----

fn builtins() -> Vec<FuncDef> {
    use P::*;
    vec![
        // `and` and `or` are evaluated lazily by the executor; these entries name them.
        def("and", &[Any], Some(Any), |_, mut a| {
            Ok(a.pop().unwrap_or(Val::Missing))
        }),
        def("or", &[Any], Some(Any), |_, mut a| {
            Ok(a.pop().unwrap_or(Val::Missing))
        }),
        def("not", &[Any], None, |_, a| Ok(Val::Bool(!a[0].truth()))),
        def("len", &[Any], None, go_len),
        def("index", &[Any], Some(Any), go_index),
        def("print", &[], Some(Any), |e, a| Ok(s(sprint(e, &a, false)?))),
        def("println", &[], Some(Any), |e, a| {
            Ok(s(sprint(e, &a, true)?))
        }),
        def("printf", &[Str], Some(Any), |e, a| {
            let out = printf::sprintf(e, text(&a[0]), &a[1..])?;
            Ok(s(out))
        }),
        def("html", &[], Some(Any), |e, a| {
            let t = eval_args_text(e, &a)?;
            alloc(e, t.len() * 6)?;
            Ok(s(html_escape(&t)))
        }),
        def("js", &[], Some(Any), |e, a| {
            let t = eval_args_text(e, &a)?;
            alloc(e, t.len() * 6)?;
            Ok(s(js_escape(&t)))
        }),
        def("urlquery", &[], Some(Any), |e, a| {
            let t = eval_args_text(e, &a)?;
            alloc(e, t.len() * 3)?;
            Ok(s(query_escape(&t)))
        }),
        def("call", &[Any], Some(Any), |_, a| match &a[0] {
            Val::Missing | Val::Nil => Err(Fail::msg("call of nil")),
            other => Err(Fail::msg(format!(
                "non-function of type {}",
                other.type_name()
            ))),
        }),
        def("eq", &[Any], Some(Any), |_, a| {
            if a.len() < 2 {
                return Err(Fail::msg("missing argument for comparison"));
            }
            for b in &a[1..] {
                if go_eq(&a[0], b)? {
                    return Ok(Val::Bool(true));
                }
            }
            Ok(Val::Bool(false))
        }),
        def("ne", &[Any, Any], None, |_, a| {
            Ok(Val::Bool(!go_eq(&a[0], &a[1])?))
        }),
        def("lt", &[Any, Any], None, |_, a| {
            Ok(Val::Bool(go_lt(&a[0], &a[1])?))
        }),
        def("le", &[Any, Any], None, |_, a| {
            Ok(Val::Bool(go_lt(&a[0], &a[1])? || go_eq(&a[0], &a[1])?))
        }),
        def("gt", &[Any, Any], None, |_, a| {
            Ok(Val::Bool(!(go_lt(&a[0], &a[1])? || go_eq(&a[0], &a[1])?)))
        }),
        def("ge", &[Any, Any], None, |_, a| {
            Ok(Val::Bool(!go_lt(&a[0], &a[1])?))
        }),
    ]
}

/// `fmt.Sprint` (spaces between operands when neither is a string) or `fmt.Sprintln`
/// (spaces always, and a newline).
pub(crate) fn sprint(e: &mut Exec<'_>, args: &[Val], ln: bool) -> R<String> {
    let mut out = Capped::new(e.budget.bytes_left());
    for (i, a) in args.iter().enumerate() {
        let is_str = |v: &Val| matches!(v, Val::Str(_) | Val::Number(_));
        if i > 0 && (ln || !(is_str(a) || is_str(&args[i - 1]))) {
            out.push(' ').map_err(|_| e.budget.stop())?;
        }
        out.write_v(a).map_err(|_| e.budget.stop())?;
    }
    if ln {
        out.push('\n').map_err(|_| e.budget.stop())?;
    }
    e.budget.take(out.text.len())?;
    Ok(out.text)
}

/// The text `html`, `js` and `urlquery` escape: one string as it is, else `fmt.Sprint`.
fn eval_args_text(e: &mut Exec<'_>, args: &[Val]) -> R<String> {
    if let [Val::Str(s)] = args {
        return Ok(s.to_string());
    }
    sprint(e, args, false)
}

fn go_len(_: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let n = match &a[0] {
        Val::Str(s) | Val::Number(s) => s.len(),
        Val::List(l) => l.len(),
        Val::Map(m) => m.borrow().len(),
        Val::Missing | Val::Nil => return Err(Fail::msg("len of nil pointer")),
        other => return Err(Fail::msg(format!("len of type {}", other.type_name()))),
    };
    Ok(Val::int(n as i64))
}

fn index_arg(v: &Val, len: usize, what: &str) -> R<usize> {
    let i = match v {
        Val::Int(i, _) => *i,
        Val::Missing | Val::Nil => return Err(Fail::msg(format!("cannot index {what} with nil"))),
        other => {
            return Err(Fail::msg(format!(
                "cannot index {what} with type {}",
                other.type_name()
            )));
        }
    };
    if i < 0 || i as usize >= len {
        return Err(Fail::msg(format!("index out of range: {i}")));
    }
    Ok(i as usize)
}

fn go_index(_: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let mut item = a[0].clone();
    for idx in &a[1..] {
        item = match &item {
            Val::List(l) => l[index_arg(idx, l.len(), "slice/array")?].clone(),
            Val::Str(s) | Val::Number(s) => Val::Int(
                i64::from(s.as_bytes()[index_arg(idx, s.len(), "slice/array")?]),
                IntType::Byte,
            ),
            Val::Map(m) => match idx {
                Val::Str(k) => m.borrow().get(&**k).cloned().unwrap_or(Val::Nil),
                Val::Missing | Val::Nil => Val::Nil,
                other => {
                    return Err(Fail::msg(format!(
                        "value has type {}; should be string",
                        other.type_name()
                    )));
                }
            },
            Val::Missing | Val::Nil => return Err(Fail::msg("index of untyped nil")),
            other => {
                return Err(Fail::msg(format!(
                    "can't index item of type {}",
                    other.type_name()
                )));
            }
        };
    }
    Ok(item)
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Basic {
    Bool,
    Int,
    Float,
    Str,
    /// Nil, maps, lists, times: no basic kind.
    None,
}

fn basic(v: &Val) -> Basic {
    match v {
        Val::Bool(_) => Basic::Bool,
        Val::Int(..) => Basic::Int,
        Val::Float(_) => Basic::Float,
        Val::Str(_) | Val::Number(_) => Basic::Str,
        _ => Basic::None,
    }
}

/// Go's `eq` for two values: basic kinds compare by value and must match (an `int` and
/// a `float64` are incompatible), nil equals only nil, maps and lists cannot compare.
pub(crate) fn go_eq(a: &Val, b: &Val) -> R<bool> {
    let (ka, kb) = (basic(a), basic(b));
    if ka != kb {
        if !a.is_nil() && !b.is_nil() {
            return Err(Fail::msg("incompatible types for comparison"));
        }
        return Ok(false);
    }
    Ok(match (a, b) {
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Int(x, _), Val::Int(y, _)) => x == y,
        (Val::Float(x), Val::Float(y)) => x == y,
        (x, y) if ka == Basic::Str => x.as_text() == y.as_text(),
        (x, y) if x.is_nil() || y.is_nil() => x.is_nil() == y.is_nil(),
        (Val::Time(x), Val::Time(y)) => x == y,
        // A certificate is a comparable struct; a version is a pointer, equal to itself.
        (Val::Struct(x), Val::Struct(y)) => match (&**x, &**y) {
            (GoStruct::Version(_), GoStruct::Version(_)) => Rc::ptr_eq(x, y),
            (a, b) => a == b,
        },
        (x, _) => {
            return Err(Fail::msg(format!("non-comparable type {}", x.type_name())));
        }
    })
}

/// Go's `lt`: only basic kinds, of the same kind, and not booleans.
pub(crate) fn go_lt(a: &Val, b: &Val) -> R<bool> {
    let (ka, kb) = (basic(a), basic(b));
    if ka == Basic::None || kb == Basic::None {
        return Err(Fail::msg("invalid type for comparison"));
    }
    if ka != kb {
        return Err(Fail::msg("incompatible types for comparison"));
    }
    Ok(match (a, b) {
        (Val::Int(x, _), Val::Int(y, _)) => x < y,
        (Val::Float(x), Val::Float(y)) => x < y,
        (x, y) if ka == Basic::Str => x.as_text() < y.as_text(),
        _ => return Err(Fail::msg("invalid type for comparison")),
    })
}

/// Go's `template.HTMLEscapeString`.
pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Go's `template.JSEscapeString`.
pub(crate) fn js_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Go's `url.QueryEscape`.
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
