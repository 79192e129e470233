//! Values as a Go template sees them: the JSON context decoded the way µTask decodes it
//! (objects are `map[string]interface{}`, numbers are `json.Number`), plus the Go types
//! functions return (`int`, `int64`, `float64`, `time.Time`). Printing follows `fmt`'s
//! `%v`, JSON follows `encoding/json`; both write into a [`Capped`] buffer so printing
//! a value never builds more text than the rendering may still create.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::Value as Json;

/// A Go map as templates build and read them: shared and mutable (`set` changes it in
/// place, as sprig does), iterated in key order (as `range` and `fmt` do).
pub(crate) type MapRef = Rc<RefCell<BTreeMap<String, Val>>>;

/// The Go integer type a value has: it shows in `typeOf` and in argument checks
/// (`repeat (add 1 2) "x"` is refused, as Go refuses an `int64` for an `int`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IntType {
    Int,
    Int64,
    /// A character constant (`'a'`).
    Rune,
    /// A byte, from `index` on a string.
    Byte,
    /// A `uint64` (a semantic version's numbers).
    Uint64,
}

/// A Go struct, or pointer to one, that a function returns and templates read fields
/// and methods of.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum GoStruct {
    /// Masterminds/semver's `*semver.Version`, from `semver`.
    Version(super::funcs::semver::Version),
    /// Sprig's `certificate`: PEM texts of a certificate and of its private key.
    Cert { cert: String, key: String },
}

impl GoStruct {
    /// `%v`: a version prints through its `String` method, a struct as `{field field}`.
    pub(crate) fn print(&self) -> String {
        match self {
            GoStruct::Version(v) => v.string(),
            GoStruct::Cert { cert, key } => format!("{{{cert} {key}}}"),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Val {
    /// No value at all (Go's invalid `reflect.Value`): what a pipeline yields for a
    /// missing key or a nil. Printed alone it reads `<no value>`.
    Missing,
    /// A nil interface (JSON `null`, an absent map key read through `.a.b`).
    Nil,
    Bool(bool),
    Int(i64, IntType),
    Float(f64),
    /// A JSON number from the context, kept as its text (Go's `json.Number`, a string
    /// type: it prints as written and compares as a string).
    Number(Rc<str>),
    Str(Rc<str>),
    List(Rc<Vec<Val>>),
    Map(MapRef),
    Time(jiff::Zoned),
    Struct(Rc<GoStruct>),
}

/// Dropping a value frees nested lists and maps one level at a time: a template can
/// build values nested far deeper than the stack would take recursive drops for.
impl Drop for Val {
    fn drop(&mut self) {
        let mut pending = Vec::new();
        take_children(self, &mut pending);
        while let Some(mut v) = pending.pop() {
            take_children(&mut v, &mut pending);
        }
    }
}

/// Moves the items of a list or map this value alone holds into `into`.
fn take_children(v: &mut Val, into: &mut Vec<Val>) {
    match v {
        Val::List(items) => {
            if let Some(items) = Rc::get_mut(items) {
                into.append(items);
            }
        }
        Val::Map(m) if Rc::strong_count(m) == 1 && Rc::weak_count(m) == 0 => {
            into.extend(std::mem::take(&mut *m.borrow_mut()).into_values());
        }
        _ => {}
    }
}

/// How deep comparisons and searches go into nested values before giving up.
const MAX_WALK_DEPTH: usize = 200;

impl Val {
    pub(crate) fn str(s: impl Into<Rc<str>>) -> Val {
        Val::Str(s.into())
    }

    pub(crate) fn int(i: i64) -> Val {
        Val::Int(i, IntType::Int)
    }

    pub(crate) fn int64(i: i64) -> Val {
        Val::Int(i, IntType::Int64)
    }

    pub(crate) fn list(items: Vec<Val>) -> Val {
        Val::List(Rc::new(items))
    }

    pub(crate) fn map(m: BTreeMap<String, Val>) -> Val {
        Val::Map(Rc::new(RefCell::new(m)))
    }

    /// The value µTask's engine sees for a JSON document decoded with `UseNumber`.
    pub(crate) fn from_json(v: &Json) -> Val {
        match v {
            Json::Null => Val::Nil,
            Json::Bool(b) => Val::Bool(*b),
            Json::Number(n) => Val::Number(n.to_string().into()),
            Json::String(s) => Val::str(s.as_str()),
            Json::Array(items) => Val::list(items.iter().map(Val::from_json).collect()),
            Json::Object(m) => Val::map(
                m.iter()
                    .map(|(k, v)| (k.clone(), Val::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// The value Go's `json.Unmarshal` gives (numbers become `float64`), as µTask's
    /// `fromJson` returns it.
    pub(crate) fn from_json_floats(v: &Json) -> Val {
        match v {
            Json::Number(n) => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
            Json::Array(items) => Val::list(items.iter().map(Val::from_json_floats).collect()),
            Json::Object(m) => Val::map(
                m.iter()
                    .map(|(k, v)| (k.clone(), Val::from_json_floats(v)))
                    .collect(),
            ),
            other => Val::from_json(other),
        }
    }

    pub(crate) fn is_nil(&self) -> bool {
        matches!(self, Val::Missing | Val::Nil)
    }

    /// A pipeline's result: a nil interface becomes no value (Go digs into `interface{}`).
    pub(crate) fn unwrapped(self) -> Val {
        match self {
            Val::Nil => Val::Missing,
            v => v,
        }
    }

    /// Go's `%T`.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Val::Missing | Val::Nil => "<nil>",
            Val::Bool(_) => "bool",
            Val::Int(_, IntType::Int) => "int",
            Val::Int(_, IntType::Int64) => "int64",
            Val::Int(_, IntType::Rune) => "int32",
            Val::Int(_, IntType::Byte) => "uint8",
            Val::Int(_, IntType::Uint64) => "uint64",
            Val::Float(_) => "float64",
            Val::Number(_) => "json.Number",
            Val::Str(_) => "string",
            Val::List(_) => "[]interface {}",
            Val::Map(_) => "map[string]interface {}",
            Val::Time(_) => "time.Time",
            Val::Struct(st) => match &**st {
                GoStruct::Version(_) => "*semver.Version",
                GoStruct::Cert { .. } => "sprig.certificate",
            },
        }
    }

    /// Go's `reflect.Kind` name, as sprig's `kindOf` prints it.
    pub(crate) fn kind_name(&self) -> &'static str {
        match self {
            Val::Missing | Val::Nil => "invalid",
            Val::Bool(_) => "bool",
            Val::Int(_, IntType::Int) => "int",
            Val::Int(_, IntType::Int64) => "int64",
            Val::Int(_, IntType::Rune) => "int32",
            Val::Int(_, IntType::Byte) => "uint8",
            Val::Int(_, IntType::Uint64) => "uint64",
            Val::Float(_) => "float64",
            Val::Number(_) | Val::Str(_) => "string",
            Val::List(_) => "slice",
            Val::Map(_) => "map",
            Val::Time(_) => "struct",
            Val::Struct(st) => match &**st {
                GoStruct::Version(_) => "ptr",
                GoStruct::Cert { .. } => "struct",
            },
        }
    }

    /// Go's truth: zero values and empty containers are false.
    pub(crate) fn truth(&self) -> bool {
        match self {
            Val::Missing | Val::Nil => false,
            Val::Bool(b) => *b,
            Val::Int(i, _) => *i != 0,
            Val::Float(f) => *f != 0.0,
            Val::Number(s) | Val::Str(s) => !s.is_empty(),
            Val::List(l) => !l.is_empty(),
            Val::Map(m) => !m.borrow().is_empty(),
            Val::Time(_) | Val::Struct(_) => true,
        }
    }

    /// The text of a string kind (`string` or `json.Number`).
    pub(crate) fn as_text(&self) -> Option<&str> {
        match self {
            Val::Str(s) | Val::Number(s) => Some(s),
            _ => None,
        }
    }

    /// Go's `reflect.DeepEqual` over these values (values nested past
    /// [`MAX_WALK_DEPTH`] compare unequal).
    pub(crate) fn deep_equal(&self, other: &Val) -> bool {
        self.deep_equal_at(other, 0)
    }

    fn deep_equal_at(&self, other: &Val, depth: usize) -> bool {
        if depth > MAX_WALK_DEPTH {
            return false;
        }
        match (self, other) {
            (Val::Missing | Val::Nil, Val::Missing | Val::Nil) => true,
            (Val::Bool(a), Val::Bool(b)) => a == b,
            (Val::Int(a, ta), Val::Int(b, tb)) => a == b && ta == tb,
            (Val::Float(a), Val::Float(b)) => a == b,
            (Val::Number(a), Val::Number(b)) | (Val::Str(a), Val::Str(b)) => a == b,
            (Val::List(a), Val::List(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b.iter())
                        .all(|(x, y)| x.deep_equal_at(y, depth + 1))
            }
            (Val::Map(a), Val::Map(b)) => {
                if Rc::ptr_eq(a, b) {
                    return true;
                }
                let (a, b) = (a.borrow(), b.borrow());
                a.len() == b.len()
                    && a.iter()
                        .zip(b.iter())
                        .all(|((ka, va), (kb, vb))| ka == kb && va.deep_equal_at(vb, depth + 1))
            }
            (Val::Time(a), Val::Time(b)) => a == b,
            (Val::Struct(a), Val::Struct(b)) => a == b,
            _ => false,
        }
    }

    /// Whether `map` can be reached from this value (so storing this value in `map`
    /// would make a cycle, which printing could never finish). A value nested past
    /// [`MAX_WALK_DEPTH`] counts as reaching it.
    pub(crate) fn reaches(&self, map: &MapRef, steps: &mut u64) -> bool {
        self.reaches_at(map, steps, 0)
    }

    fn reaches_at(&self, map: &MapRef, steps: &mut u64, depth: usize) -> bool {
        *steps = steps.saturating_add(1);
        if depth > MAX_WALK_DEPTH {
            return true;
        }
        match self {
            Val::Map(m) => {
                Rc::ptr_eq(m, map)
                    || m.borrow()
                        .values()
                        .any(|v| v.reaches_at(map, steps, depth + 1))
            }
            Val::List(l) => l.iter().any(|v| v.reaches_at(map, steps, depth + 1)),
            _ => false,
        }
    }
}

/// Text that refuses to grow past a cap: printing a list that holds one large string a
/// million times fails here instead of allocating gigabytes.
pub(crate) struct Capped {
    pub(crate) text: String,
    pub(crate) cap: usize,
}

/// The printed text would pass what the rendering may still create.
#[derive(Debug)]
pub(crate) struct Overflow;

/// Containers nested deeper than this are not printed (values built by templates are
/// acyclic, so this only guards the stack).
const MAX_PRINT_DEPTH: usize = 200;

impl Capped {
    pub(crate) fn new(cap: usize) -> Capped {
        Capped {
            text: String::new(),
            cap,
        }
    }

    pub(crate) fn push_str(&mut self, s: &str) -> Result<(), Overflow> {
        if self.text.len() + s.len() > self.cap {
            return Err(Overflow);
        }
        self.text.push_str(s);
        Ok(())
    }

    pub(crate) fn push(&mut self, c: char) -> Result<(), Overflow> {
        let mut buf = [0u8; 4];
        self.push_str(c.encode_utf8(&mut buf))
    }

    /// `fmt`'s `%v` of a value (`Missing` as `<nil>`, as inside `fmt.Sprint`).
    pub(crate) fn write_v(&mut self, v: &Val) -> Result<(), Overflow> {
        self.write_v_at(v, 0)
    }

    fn write_v_at(&mut self, v: &Val, depth: usize) -> Result<(), Overflow> {
        if depth > MAX_PRINT_DEPTH {
            return Err(Overflow);
        }
        match v {
            Val::Missing | Val::Nil => self.push_str("<nil>"),
            Val::Bool(b) => self.push_str(if *b { "true" } else { "false" }),
            Val::Int(i, _) => self.push_str(&i.to_string()),
            Val::Float(f) => self.push_str(&format_float_g(*f, -1)),
            Val::Number(s) | Val::Str(s) => self.push_str(s),
            Val::List(items) => {
                self.push('[')?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.push(' ')?;
                    }
                    self.write_v_at(item, depth + 1)?;
                }
                self.push(']')
            }
            Val::Map(m) => {
                self.push_str("map[")?;
                for (i, (k, item)) in m.borrow().iter().enumerate() {
                    if i > 0 {
                        self.push(' ')?;
                    }
                    self.push_str(k)?;
                    self.push(':')?;
                    self.write_v_at(item, depth + 1)?;
                }
                self.push(']')
            }
            Val::Time(t) => self.push_str(&go_time_string(t)),
            Val::Struct(st) => self.push_str(&st.print()),
        }
    }

    /// `encoding/json`'s encoding of a value: keys sorted, `<`, `>` and `&` escaped when
    /// `escape_html` (as `json.Marshal` does), indented by `indent` when given.
    pub(crate) fn write_json(
        &mut self,
        v: &Val,
        escape_html: bool,
        indent: Option<&str>,
    ) -> Result<(), JsonError> {
        self.write_json_at(v, escape_html, indent, 0)
    }

    fn write_json_at(
        &mut self,
        v: &Val,
        html: bool,
        indent: Option<&str>,
        depth: usize,
    ) -> Result<(), JsonError> {
        if depth > MAX_PRINT_DEPTH {
            return Err(JsonError::Overflow);
        }
        let newline = |out: &mut Capped, level: usize| -> Result<(), Overflow> {
            if let Some(step) = indent {
                out.push('\n')?;
                for _ in 0..level {
                    out.push_str(step)?;
                }
            }
            Ok(())
        };
        match v {
            Val::Missing | Val::Nil => self.push_str("null")?,
            Val::Bool(b) => self.push_str(if *b { "true" } else { "false" })?,
            Val::Int(i, _) => self.push_str(&i.to_string())?,
            Val::Float(f) => {
                if !f.is_finite() {
                    return Err(JsonError::Unsupported(format!(
                        "json: unsupported value: {}",
                        format_float_g(*f, -1)
                    )));
                }
                self.push_str(&json_float(*f))?
            }
            Val::Number(n) => {
                if serde_json::from_str::<serde_json::Number>(n).is_err() {
                    return Err(JsonError::Unsupported(format!(
                        "json: invalid number literal {n:?}"
                    )));
                }
                self.push_str(n)?
            }
            Val::Str(s) => self.write_json_string(s, html)?,
            Val::Time(t) => self.write_json_string(&rfc3339_nano(t), html)?,
            Val::Struct(st) => match &**st {
                GoStruct::Version(v) => self.write_json_string(&v.string(), html)?,
                GoStruct::Cert { cert, key } => {
                    self.push('{')?;
                    newline(self, depth + 1)?;
                    self.write_json_string("Cert", html)?;
                    self.push(':')?;
                    if indent.is_some() {
                        self.push(' ')?;
                    }
                    self.write_json_string(cert, html)?;
                    self.push(',')?;
                    newline(self, depth + 1)?;
                    self.write_json_string("Key", html)?;
                    self.push(':')?;
                    if indent.is_some() {
                        self.push(' ')?;
                    }
                    self.write_json_string(key, html)?;
                    newline(self, depth)?;
                    self.push('}')?;
                }
            },
            Val::List(items) => {
                if items.is_empty() {
                    self.push_str("[]")?;
                    return Ok(());
                }
                self.push('[')?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.push(',')?;
                    }
                    newline(self, depth + 1)?;
                    self.write_json_at(item, html, indent, depth + 1)?;
                }
                newline(self, depth)?;
                self.push(']')?;
            }
            Val::Map(m) => {
                let m = m.borrow();
                if m.is_empty() {
                    self.push_str("{}")?;
                    return Ok(());
                }
                self.push('{')?;
                for (i, (k, item)) in m.iter().enumerate() {
                    if i > 0 {
                        self.push(',')?;
                    }
                    newline(self, depth + 1)?;
                    self.write_json_string(k, html)?;
                    self.push(':')?;
                    if indent.is_some() {
                        self.push(' ')?;
                    }
                    self.write_json_at(item, html, indent, depth + 1)?;
                }
                newline(self, depth)?;
                self.push('}')?;
            }
        }
        Ok(())
    }

    fn write_json_string(&mut self, s: &str, html: bool) -> Result<(), Overflow> {
        self.push('"')?;
        let mut start = 0;
        for (i, c) in s.char_indices() {
            let escaped: Option<String> = match c {
                '"' => Some("\\\"".into()),
                '\\' => Some("\\\\".into()),
                '\n' => Some("\\n".into()),
                '\r' => Some("\\r".into()),
                '\t' => Some("\\t".into()),
                '<' | '>' | '&' if html => Some(format!("\\u{:04x}", c as u32)),
                '\u{2028}' | '\u{2029}' => Some(format!("\\u{:04x}", c as u32)),
                c if (c as u32) < 0x20 => Some(format!("\\u{:04x}", c as u32)),
                _ => None,
            };
            if let Some(e) = escaped {
                self.push_str(&s[start..i])?;
                self.push_str(&e)?;
                start = i + c.len_utf8();
            }
        }
        self.push_str(&s[start..])?;
        self.push('"')
    }
}

pub(crate) enum JsonError {
    Overflow,
    Unsupported(String),
}

impl From<Overflow> for JsonError {
    fn from(_: Overflow) -> Self {
        JsonError::Overflow
    }
}

/// The value as JSON for the caller (`render_value`, `eval` caching): numbers keep
/// their text, floats become JSON numbers, times RFC 3339 strings.
pub(crate) fn to_json(v: &Val) -> Json {
    match v {
        Val::Missing | Val::Nil => Json::Null,
        Val::Bool(b) => Json::Bool(*b),
        Val::Int(i, _) => Json::from(*i),
        Val::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Val::Number(n) => serde_json::from_str::<serde_json::Number>(n)
            .map_or_else(|_| Json::String(n.to_string()), Json::Number),
        Val::Str(s) => Json::String(s.to_string()),
        Val::Time(t) => Json::String(rfc3339_nano(t)),
        Val::Struct(st) => match &**st {
            GoStruct::Version(v) => Json::String(v.string()),
            GoStruct::Cert { cert, key } => serde_json::json!({"Cert": cert, "Key": key}),
        },
        Val::List(items) => Json::Array(items.iter().map(to_json).collect()),
        Val::Map(m) => Json::Object(
            m.borrow()
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
    }
}

/// Decimal digits and exponent of the shortest representation of a finite, non-zero
/// `f.abs()`: `1234.5` → (`"12345"`, 3), meaning 1.2345e3.
fn shortest_digits(f: f64) -> (String, i32) {
    let s = format!("{:e}", f.abs());
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    (mant.replace('.', ""), exp.parse().unwrap_or(0))
}

/// Digits and exponent of `f.abs()` rounded to `sig` significant digits.
fn rounded_digits(f: f64, sig: usize) -> (String, i32) {
    let s = format!("{:.*e}", sig.saturating_sub(1), f.abs());
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    (mant.replace('.', ""), exp.parse().unwrap_or(0))
}

fn special_float(f: f64) -> Option<String> {
    if f.is_nan() {
        Some("NaN".into())
    } else if f.is_infinite() {
        Some(if f > 0.0 { "+Inf" } else { "-Inf" }.into())
    } else {
        None
    }
}

/// `%e` from digits: `d.ddde±XX` with at least two exponent digits, as Go writes it.
fn e_form(neg: bool, digits: &str, exp: i32, upper: bool) -> String {
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    out.push_str(&digits[..1]);
    if digits.len() > 1 {
        out.push('.');
        out.push_str(&digits[1..]);
    }
    out.push(if upper { 'E' } else { 'e' });
    out.push(if exp < 0 { '-' } else { '+' });
    let e = exp.unsigned_abs();
    if e < 10 {
        out.push('0');
    }
    out.push_str(&e.to_string());
    out
}

/// `%f` from digits (no trailing zeros beyond the digits given).
fn f_form(neg: bool, digits: &str, exp: i32) -> String {
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    let point = exp + 1; // digits before the decimal point
    if point <= 0 {
        out.push_str("0.");
        for _ in 0..(-point) {
            out.push('0');
        }
        out.push_str(digits);
    } else {
        let p = point as usize;
        if digits.len() <= p {
            out.push_str(digits);
            for _ in digits.len()..p {
                out.push('0');
            }
        } else {
            out.push_str(&digits[..p]);
            out.push('.');
            out.push_str(&digits[p..]);
        }
    }
    out
}

/// Go's `strconv.FormatFloat(f, 'g', prec, 64)` (`prec` -1: the shortest text that reads
/// back as `f`), which is also `fmt`'s `%v` for a float: `1e+06`, `123456`, `0.0001`,
/// `1e-05`.
pub(crate) fn format_float_g(f: f64, prec: i32) -> String {
    if let Some(s) = special_float(f) {
        return s;
    }
    let neg = f.is_sign_negative();
    if f == 0.0 {
        return if neg { "-0" } else { "0" }.into();
    }
    let shortest = prec < 0;
    let (digits, exp) = if shortest {
        shortest_digits(f)
    } else {
        let p = if prec == 0 { 1 } else { prec as usize };
        let (d, e) = rounded_digits(f, p);
        let trimmed = d.trim_end_matches('0');
        (
            if trimmed.is_empty() {
                "0".to_string()
            } else {
                trimmed.to_string()
            },
            e,
        )
    };
    let digits = if digits.is_empty() {
        "0".into()
    } else {
        digits
    };
    let eprec = if shortest {
        6
    } else {
        let p = if prec == 0 { 1 } else { prec };
        let nd = digits.len() as i32;
        if p > nd && nd > exp { nd } else { p }
    };
    if exp < -4 || exp >= eprec {
        e_form(neg, &digits, exp, false)
    } else {
        f_form(neg, &digits, exp)
    }
}

/// `%e` with a precision (digits after the point).
pub(crate) fn format_float_e(f: f64, prec: usize, upper: bool) -> String {
    if let Some(s) = special_float(f) {
        return s;
    }
    let neg = f.is_sign_negative();
    let s = format!("{:.*e}", prec, f.abs());
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    e_form(neg, &mant.replace('.', ""), exp.parse().unwrap_or(0), upper)
}

/// `%f` with a precision.
pub(crate) fn format_float_f(f: f64, prec: usize) -> String {
    if let Some(s) = special_float(f) {
        return s;
    }
    format!("{:.*}", prec, f)
}

/// How `encoding/json` writes a float64: fixed notation unless the exponent is below
/// -6 or at least 21, then `1e+21` / `1e-7`.
pub(crate) fn json_float(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let (digits, exp) = shortest_digits(f);
    let neg = f < 0.0;
    if !(-6..21).contains(&exp) {
        let mut s = e_form(neg, &digits, exp, false);
        // Go trims the exponent's leading zero: 1e-07 → 1e-7.
        if let Some(i) = s.find("e-0") {
            s.replace_range(i..i + 3, "e-");
        } else if let Some(i) = s.find("e+0") {
            s.replace_range(i..i + 3, "e+");
        }
        s
    } else {
        f_form(neg, &digits, exp)
    }
}

/// Go's `Time.String()`: `2006-01-02 15:04:05.999999999 -0700 MST`.
pub(crate) fn go_time_string(t: &jiff::Zoned) -> String {
    let frac = t.subsec_nanosecond();
    let frac = if frac == 0 {
        String::new()
    } else {
        format!(".{:09}", frac).trim_end_matches('0').to_string()
    };
    format!(
        "{}{} {} {}",
        t.strftime("%Y-%m-%d %H:%M:%S"),
        frac,
        t.strftime("%z"),
        zone_abbreviation(t)
    )
}

/// The zone's abbreviation (`UTC`, `CET`), or Go's numeric stand-in (`+0200`).
pub(crate) fn zone_abbreviation(t: &jiff::Zoned) -> String {
    let abbr = t
        .time_zone()
        .to_offset_info(t.timestamp())
        .abbreviation()
        .to_string();
    if abbr.is_empty() {
        t.strftime("%z").to_string()
    } else {
        abbr
    }
}

/// Go's `time.RFC3339Nano` text (what `json.Marshal` writes for a time).
pub(crate) fn rfc3339_nano(t: &jiff::Zoned) -> String {
    let frac = t.subsec_nanosecond();
    let frac = if frac == 0 {
        String::new()
    } else {
        format!(".{:09}", frac).trim_end_matches('0').to_string()
    };
    let offset = if t.offset().seconds() == 0 {
        "Z".to_string()
    } else {
        t.strftime("%:z").to_string()
    };
    format!("{}{}{}", t.strftime("%Y-%m-%dT%H:%M:%S"), frac, offset)
}
