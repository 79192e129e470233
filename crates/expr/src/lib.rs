//! Templating and expressions over JSON: one language (MiniJinja) for values,
//! conditions and `foreach` lists; and, in [`go`], Go's `text/template` with µTask's
//! functions, for µTask templates.
//!
//! Rendering is pure: it reads a JSON context and returns JSON or text. It knows
//! nothing of storage or of the engine. It is bounded in time and memory whatever a
//! template does: MiniJinja's fuel pays for instructions and for every byte its own
//! operators and filters create, our filters check the size of what they would create
//! before creating it, and the JSON a rendering returns is measured before it is built
//! ([`MAX_RENDERED_BYTES`]).

pub mod go;
pub mod js;

use std::sync::LazyLock;

use base64::Engine as _;
use minijinja::value::Value as JValue;
use minijinja::{Environment, Error as JError, ErrorKind, State, UndefinedBehavior};
use serde_json::Value;
use sha2::Digest;

/// A templating failure, with MiniJinja's own description (line and cause).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub message: String,
}

impl From<JError> for ExprError {
    fn from(e: JError) -> Self {
        if e.kind() == ErrorKind::OutOfFuel {
            return ExprError {
                message: format!(
                    "rendering stopped: the template did more work or built more data than one \
                     rendering may (about {FUEL} steps or {} MB)",
                    FUEL * BYTES_PER_FUEL / 1_000_000
                ),
            };
        }
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        ExprError { message }
    }
}

/// Work one render may do before it is stopped. One fuel pays for one instruction or for
/// 64 bytes created, so this also caps what one rendering allocates at about 12.8 MB.
const FUEL: u64 = 200_000;

/// Bytes one fuel pays for (MiniJinja's own rate).
const BYTES_PER_FUEL: u64 = 64;

/// Most bytes one rendering may return: the text of a string, or the JSON of a value,
/// summed over every leaf of [`Renderer::render_value`].
pub const MAX_RENDERED_BYTES: usize = 8 << 20;

/// The configured templating environment. Cheap to share: build once, use everywhere.
pub struct Renderer {
    env: Environment<'static>,
    /// Names the environment itself defines (functions such as `range` and `uuid`).
    globals: std::collections::HashSet<String>,
}

/// Names a caller-side context may bind to something callable (`{{ caller() }}` in a
/// `{% call %}` block, `{{ loop.cycle() }}` is a method, not a function).
const ROOT_NAMES: [&str; 2] = ["caller", "varargs"];

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

/// The process-wide renderer.
pub fn renderer() -> &'static Renderer {
    static R: LazyLock<Renderer> = LazyLock::new(Renderer::new);
    &R
}

impl Renderer {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        // Booleans print as JSON spells them (`true`, not Python's `True`): conditions compare
        // rendered text, inputs and outputs are JSON, and actions parse "true"/"false".
        env.set_formatter(|out, state, value| match value.kind() {
            minijinja::value::ValueKind::Bool => out
                .write_str(if value.is_true() { "true" } else { "false" })
                .map_err(JError::from),
            _ => minijinja::escape_formatter(out, state, value),
        });
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(python_methods);
        add_filters(&mut env);
        let globals = env.globals().map(|(name, _)| name.to_string()).collect();
        Renderer { env, globals }
    }

    /// Renders a template string to text.
    pub fn render_str(&self, text: &str, ctx: &Value) -> Result<String, ExprError> {
        if !is_templated(text) {
            return Ok(text.to_string());
        }
        let out = self
            .env
            .render_str(text, JValue::from(minijinja::value::Serde(ctx)))?;
        if out.len() > MAX_RENDERED_BYTES {
            return Err(too_large());
        }
        Ok(out)
    }

    /// Evaluates a bare expression (`input.count > 3`) to JSON.
    pub fn eval(&self, expr: &str, ctx: &Value) -> Result<Value, ExprError> {
        let compiled = self.env.compile_expression(expr)?;
        let v = compiled.eval(JValue::from(minijinja::value::Serde(ctx)))?;
        if v.is_undefined() {
            return Err(ExprError {
                message: format!("{} is undefined", expr.trim()),
            });
        }
        json_size(&v, MAX_RENDERED_BYTES)?;
        to_json(&v)
    }

    /// Checks the syntax of a bare expression.
    pub fn check_expression(&self, expr: &str) -> Result<(), ExprError> {
        self.env.compile_expression(expr)?;
        Ok(())
    }

    /// Renders every string leaf of a JSON value. A leaf that is exactly one `{{ expression }}`
    /// keeps the expression's JSON type (a list stays a list); other leaves become text.
    /// The rendered leaves together may hold at most [`MAX_RENDERED_BYTES`].
    pub fn render_value(&self, v: &Value, ctx: &Value) -> Result<Value, ExprError> {
        let mut budget = MAX_RENDERED_BYTES;
        self.render_value_within(v, ctx, &mut budget)
    }

    fn render_value_within(
        &self,
        v: &Value,
        ctx: &Value,
        budget: &mut usize,
    ) -> Result<Value, ExprError> {
        match v {
            Value::String(s) => self.render_leaf(s, ctx, budget),
            Value::Array(items) => items
                .iter()
                .map(|i| self.render_value_within(i, ctx, budget))
                .collect::<Result<_, _>>()
                .map(Value::Array),
            Value::Object(m) => {
                let mut out = serde_json::Map::with_capacity(m.len());
                for (k, item) in m {
                    let key = self.render_str(k, ctx)?;
                    spend(budget, key.len())?;
                    out.insert(key, self.render_value_within(item, ctx, budget)?);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    fn render_leaf(&self, s: &str, ctx: &Value, budget: &mut usize) -> Result<Value, ExprError> {
        if !is_templated(s) {
            return Ok(Value::String(s.to_string()));
        }
        if let Some(expr) = single_expression(s) {
            let compiled = self.env.compile_expression(expr)?;
            let v = compiled.eval(JValue::from(minijinja::value::Serde(ctx)))?;
            if v.is_undefined() {
                return Err(ExprError {
                    message: format!("{} is undefined", expr.trim()),
                });
            }
            // The value may hold one large string many times over (lists share their items):
            // measure the JSON it would become before building it.
            spend(budget, json_size(&v, *budget)?)?;
            return to_json(&v);
        }
        let text = self.render_str(s, ctx)?;
        spend(budget, text.len())?;
        Ok(Value::String(text))
    }

    /// Whether any string in `v` holds templating (to skip work on plain values).
    pub fn value_is_templated(v: &Value) -> bool {
        match v {
            Value::String(s) => is_templated(s),
            Value::Array(items) => items.iter().any(Self::value_is_templated),
            Value::Object(m) => m
                .iter()
                .any(|(k, v)| is_templated(k) || Self::value_is_templated(v)),
            _ => false,
        }
    }

    /// Checks syntax and returns the free variables a template reads, as dotted paths
    /// (`step.fetch.output.id`).
    ///
    /// Functions the environment provides (`uuid()`, `range()`) are not variables and are left
    /// out; a filter, test or function it does not provide is an error, so that what validates
    /// also renders.
    pub fn references(&self, text: &str) -> Result<Vec<String>, ExprError> {
        let t = self.env.template_from_str(text)?;
        self.check_callables(&t)?;
        let mut refs: Vec<String> = t
            .undeclared_variables(true)
            .into_iter()
            .filter(|r| {
                !self
                    .globals
                    .contains(r.split('.').next().unwrap_or_default())
            })
            .collect();
        refs.sort();
        Ok(refs)
    }

    /// Refuses a filter, test or function this environment does not have.
    fn check_callables(&self, t: &minijinja::Template<'_, '_>) -> Result<(), ExprError> {
        use minijinja::machinery::{Instruction, get_compiled_template};
        let compiled = get_compiled_template(t);
        let streams = std::iter::once(&compiled.instructions).chain(compiled.blocks.values());
        let mut state = self.env.empty_state();
        for instructions in streams {
            let all = || (0..).map_while(|pc| instructions.get(pc));
            // Names the template binds itself (macros, `{% set %}`), wherever they are bound.
            let defined: std::collections::HashSet<&str> = all()
                .filter_map(|i| match i {
                    Instruction::StoreLocal(name) => Some(*name),
                    _ => None,
                })
                .collect();
            for instr in all() {
                match instr {
                    Instruction::ApplyFilter(name, ..) => {
                        if let Err(e) = state.apply_filter(name, &[JValue::UNDEFINED])
                            && e.kind() == ErrorKind::UnknownFilter
                        {
                            return Err(ExprError {
                                message: format!("unknown filter {name:?}"),
                            });
                        }
                    }
                    Instruction::PerformTest(name, ..) => {
                        if let Err(e) = state.perform_test(name, &[JValue::UNDEFINED])
                            && e.kind() == ErrorKind::UnknownTest
                        {
                            return Err(ExprError {
                                message: format!("unknown test {name:?}"),
                            });
                        }
                    }
                    Instruction::CallFunction(name, _)
                        if !self.globals.contains(*name)
                            && !defined.contains(name)
                            && !ROOT_NAMES.contains(name) =>
                    {
                        return Err(ExprError {
                            message: format!(
                                "unknown function {name:?}; functions: {}",
                                self.function_names()
                            ),
                        });
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn function_names(&self) -> String {
        let mut names: Vec<&str> = self.globals.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.join(", ")
    }
}

/// True when a string contains template syntax.
pub fn is_templated(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// `"{{ expr }}"` (and nothing else) → `Some("expr")`.
fn single_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner)
}

/// Takes `n` bytes from what a rendering may still return.
fn spend(budget: &mut usize, n: usize) -> Result<(), ExprError> {
    *budget = budget.checked_sub(n).ok_or_else(too_large)?;
    Ok(())
}

fn too_large() -> ExprError {
    ExprError {
        message: format!(
            "the rendered value is larger than {} MiB",
            MAX_RENDERED_BYTES >> 20
        ),
    }
}

/// About how many bytes of JSON `v` becomes, or an error once that passes `limit`. Walks the
/// value without building anything, counting a shared item every time it appears.
fn json_size(v: &JValue, limit: usize) -> Result<usize, ExprError> {
    fn walk(v: &JValue, left: &mut usize) -> Result<(), ()> {
        use minijinja::value::ValueKind as K;
        let own = match v.kind() {
            K::String => v.as_str().map_or(0, str::len) + 2,
            K::Bytes => v.as_bytes().map_or(0, <[u8]>::len) * 4,
            K::Seq | K::Iterable => {
                *left = left.checked_sub(2).ok_or(())?;
                for item in v.try_iter().map_err(|_| ())? {
                    *left = left.checked_sub(1).ok_or(())?;
                    walk(&item, left)?;
                }
                return Ok(());
            }
            K::Map => {
                *left = left.checked_sub(2).ok_or(())?;
                for key in v.try_iter().map_err(|_| ())? {
                    let item = v.get_item(&key).map_err(|_| ())?;
                    *left = left.checked_sub(2).ok_or(())?;
                    walk(&key, left)?;
                    walk(&item, left)?;
                }
                return Ok(());
            }
            _ => 24,
        };
        *left = left.checked_sub(own).ok_or(())?;
        Ok(())
    }
    let mut left = limit;
    walk(v, &mut left).map_err(|()| too_large())?;
    Ok(limit - left)
}

fn to_json(v: &JValue) -> Result<Value, ExprError> {
    serde_json::to_value(v).map_err(|e| ExprError {
        message: format!("result is not JSON: {e}"),
    })
}

/// Bytes a filter may still create in this rendering: what the remaining fuel pays for.
fn bytes_left(state: &State) -> usize {
    state
        .fuel_levels()
        .map_or(MAX_RENDERED_BYTES, |(_, left)| {
            usize::try_from(left.saturating_mul(BYTES_PER_FUEL)).unwrap_or(usize::MAX)
        })
        .min(MAX_RENDERED_BYTES)
}

fn out_of_fuel() -> JError {
    JError::from(ErrorKind::OutOfFuel)
}

/// A `Write` that refuses to grow past a cap (so serializing a value that repeats one large
/// item fails instead of allocating gigabytes).
struct CappedBuffer {
    bytes: Vec<u8>,
    cap: usize,
}

impl std::io::Write for CappedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.cap {
            return Err(std::io::Error::other("over the rendering budget"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `regex_replace`'s replacement, which stops appending once the result would pass `cap`.
struct CappedReplacer<'a> {
    with: &'a str,
    cap: usize,
    over: bool,
}

impl regex::Replacer for &mut CappedReplacer<'_> {
    fn replace_append(&mut self, caps: &regex::Captures<'_>, dst: &mut String) {
        if self.over {
            return;
        }
        let mut piece = String::new();
        caps.expand(self.with, &mut piece);
        if dst.len() + piece.len() > self.cap {
            self.over = true;
            return;
        }
        dst.push_str(&piece);
    }
}

/// `json` (and `tojson`, which MiniJinja's builtin serialised without a bound): a value as
/// JSON text, pretty-printed with `indent` spaces when given.
fn json_filter(
    state: &State,
    v: JValue,
    indent: Option<usize>,
    kwargs: minijinja::value::Kwargs,
) -> Result<String, JError> {
    use serde::Serialize as _;
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    kwargs.assert_all_used()?;
    let mut out = CappedBuffer {
        bytes: Vec::new(),
        cap: bytes_left(state),
    };
    let written = match indent {
        None => serde_json::to_writer(&mut out, &v),
        Some(n) => {
            let spaces = " ".repeat(n.min(16));
            let pretty = serde_json::ser::PrettyFormatter::with_indent(spaces.as_bytes());
            v.serialize(&mut serde_json::Serializer::with_formatter(
                &mut out, pretty,
            ))
        }
    };
    match written {
        Ok(()) => String::from_utf8(out.bytes)
            .map_err(|e| JError::new(ErrorKind::InvalidOperation, e.to_string())),
        Err(e) if e.is_io() => Err(out_of_fuel()),
        Err(e) => Err(JError::new(ErrorKind::InvalidOperation, e.to_string())),
    }
}

/// A value as text (a string as it is; anything else as it prints), refused once the text
/// would pass what this rendering may still create: a list can hold one large string many
/// times over at little cost, and printing it would not be.
fn text_of(state: &State, v: &JValue) -> Result<String, JError> {
    use std::fmt::Write as _;
    if let Some(s) = v.as_str() {
        return Ok(s.to_string());
    }
    let mut out = CappedString {
        text: String::new(),
        cap: bytes_left(state),
    };
    write!(out, "{v}").map_err(|_| out_of_fuel())?;
    Ok(out.text)
}

/// A `fmt::Write` into a string that refuses to grow past a cap.
struct CappedString {
    text: String,
    cap: usize,
}

impl std::fmt::Write for CappedString {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.text.len() + s.len() > self.cap {
            return Err(std::fmt::Error);
        }
        self.text.push_str(s);
        Ok(())
    }
}

/// `join` as MiniJinja's, but bounded: its builtin checks the result's size only between
/// items joined by a non-empty separator, so `[big] * n | join` grew without limit.
fn join(
    state: &State,
    value: &JValue,
    d: Option<String>,
    attribute: Option<String>,
    kwargs: minijinja::value::Kwargs,
) -> Result<String, JError> {
    use std::fmt::Write as _;
    let d = match d {
        Some(d) => d,
        None => kwargs.get::<Option<String>>("d")?.unwrap_or_default(),
    };
    let attribute = match attribute {
        Some(a) => Some(a),
        None => kwargs.get::<Option<String>>("attribute")?,
    };
    kwargs.assert_all_used()?;
    let items = value.try_iter().map_err(|e| {
        JError::new(
            ErrorKind::InvalidOperation,
            format!("cannot join value of type {}", value.kind()),
        )
        .with_source(e)
    })?;
    let mut out = CappedString {
        text: String::new(),
        cap: bytes_left(state),
    };
    for (i, item) in items.enumerate() {
        let item = match &attribute {
            Some(path) => attribute_at(item, path),
            None => item,
        };
        if i > 0 {
            out.write_str(&d).map_err(|_| out_of_fuel())?;
        }
        match item.as_str() {
            Some(s) => out.write_str(s),
            None => write!(out, "{item}"),
        }
        .map_err(|_| out_of_fuel())?;
    }
    Ok(out.text)
}

/// `item.a.0.b` for the path `a.0.b`; undefined where a part is missing (as MiniJinja's
/// `attribute=` arguments read it).
fn attribute_at(item: JValue, path: &str) -> JValue {
    let mut v = item;
    for part in path.split('.') {
        let next = match part.parse::<usize>() {
            Ok(i) => v.get_item_by_index(i),
            Err(_) => v.get_attr(part),
        };
        match next {
            Ok(n) if !n.is_undefined() => v = n,
            _ => return JValue::UNDEFINED,
        }
    }
    v
}

/// Python's string methods (`'a-b'.split('-')`), from minijinja-contrib, with the two that
/// could grow without bound made bounded: `sep.join(items)` (items are not charged there)
/// and `'{:>999999999}'.format(x)` (a width is not charged before it is filled).
fn python_methods(
    state: &mut State,
    value: &JValue,
    method: &str,
    args: &[JValue],
) -> Result<JValue, JError> {
    if let Some(s) = value.as_str() {
        match method {
            "join" => {
                let [items] = args else {
                    return Err(JError::new(
                        ErrorKind::InvalidOperation,
                        "join takes one argument",
                    ));
                };
                let no_kwargs =
                    minijinja::value::Kwargs::from_iter(std::iter::empty::<(&str, JValue)>());
                return join(state, items, Some(s.to_string()), None, no_kwargs).map(JValue::from);
            }
            "format" => {
                let cap = bytes_left(state);
                if widths_in(s).any(|w| w > cap) {
                    return Err(out_of_fuel());
                }
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Every number written inside `{…}` in a format string (widths and precisions among them).
fn widths_in(format: &str) -> impl Iterator<Item = usize> + '_ {
    let mut depth = 0usize;
    let mut digits = String::new();
    let mut found = Vec::new();
    for c in format.chars().chain(std::iter::once(' ')) {
        if depth > 0 && c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if !digits.is_empty() {
            found.push(digits.parse::<usize>().unwrap_or(usize::MAX));
            digits.clear();
        }
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    found.into_iter()
}

fn add_filters(env: &mut Environment<'static>) {
    env.add_filter("join", join);
    env.add_filter("json", json_filter);
    env.add_filter("tojson", json_filter);
    env.add_filter("string", |state: &State, v: &JValue| text_of(state, v));
    env.add_filter("pprint", |state: &State, v: &JValue| {
        use std::fmt::Write as _;
        let mut out = CappedString {
            text: String::new(),
            cap: bytes_left(state),
        };
        write!(out, "{v:#?}").map_err(|_| out_of_fuel())?;
        Ok::<_, JError>(out.text)
    });
    env.add_filter(
        "fromjson",
        |state: &State, v: &JValue| -> Result<JValue, JError> {
            let s = text_of(state, v)?;
            let v: Value = serde_json::from_str(&s)
                .map_err(|e| JError::new(ErrorKind::InvalidOperation, format!("not JSON: {e}")))?;
            Ok(JValue::from(minijinja::value::Serde(&v)))
        },
    );
    env.add_filter("b64encode", |state: &State, v: &JValue| {
        Ok::<_, JError>(base64::engine::general_purpose::STANDARD.encode(text_of(state, v)?))
    });
    env.add_filter(
        "b64decode",
        |state: &State, v: &JValue| -> Result<String, JError> {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text_of(state, v)?.trim())
                .map_err(|e| {
                    JError::new(ErrorKind::InvalidOperation, format!("not base64: {e}"))
                })?;
            String::from_utf8(bytes).map_err(|_| {
                JError::new(ErrorKind::InvalidOperation, "decoded bytes are not UTF-8")
            })
        },
    );
    env.add_filter("sha256", |state: &State, v: &JValue| {
        Ok::<_, JError>(hex::encode(sha2::Sha256::digest(
            text_of(state, v)?.as_bytes(),
        )))
    });
    env.add_filter("sha512", |state: &State, v: &JValue| {
        Ok::<_, JError>(hex::encode(sha2::Sha512::digest(
            text_of(state, v)?.as_bytes(),
        )))
    });
    env.add_filter(
        "regex_match",
        |state: &State, v: &JValue, re: String| -> Result<bool, JError> {
            let re = regex::Regex::new(&re)
                .map_err(|e| JError::new(ErrorKind::InvalidOperation, e.to_string()))?;
            Ok(re.is_match(&text_of(state, v)?))
        },
    );
    env.add_filter(
        "regex_replace",
        |state: &State, v: &JValue, re: String, with: String| -> Result<String, JError> {
            let s = text_of(state, v)?;
            let re = regex::Regex::new(&re)
                .map_err(|e| JError::new(ErrorKind::InvalidOperation, e.to_string()))?;
            // Each match may be replaced by a long text: stop before the result outgrows
            // what this rendering may still create, not after.
            let mut replacer = CappedReplacer {
                with: &with,
                cap: bytes_left(state),
                over: false,
            };
            let out = re.replace_all(&s, &mut replacer).into_owned();
            if replacer.over || out.len() > replacer.cap {
                return Err(out_of_fuel());
            }
            Ok(out)
        },
    );
    env.add_function("uuid", || uuid::Uuid::new_v4().to_string());
    env.add_function("now_unix", || jiff::Timestamp::now().as_second());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Value {
        json!({
            "input": {"who": "world", "n": 3, "items": ["a", "b"]},
            "step": {"get": {"output": {"id": 42, "list": [1, 2]}, "metadata": {"http_status": 200}}},
        })
    }

    #[test]
    fn renders_text_and_keeps_types_of_single_expressions() {
        let r = Renderer::new();
        assert_eq!(
            r.render_str("hello {{ input.who }}", &ctx()).unwrap(),
            "hello world"
        );
        assert_eq!(
            r.render_value(&json!("{{ step.get.output.list }}"), &ctx())
                .unwrap(),
            json!([1, 2])
        );
        assert_eq!(
            r.render_value(&json!(" {{ input.n + 1 }} "), &ctx())
                .unwrap(),
            json!(4)
        );
        assert_eq!(
            r.render_value(&json!("{{ input.n }}-{{ input.n }}"), &ctx())
                .unwrap(),
            json!("3-3")
        );
        assert_eq!(
            r.render_value(
                &json!({"a": ["{{ step.get.metadata.http_status }}", 1, null]}),
                &ctx()
            )
            .unwrap(),
            json!({"a": [200, 1, null]})
        );
        assert_eq!(
            r.render_value(&json!("plain"), &ctx()).unwrap(),
            json!("plain")
        );
        assert_eq!(
            r.render_str("{{ input.n > 1 }}/{{ false }}", &ctx())
                .unwrap(),
            "true/false"
        );
        assert_eq!(
            r.render_value(&json!("{{ input.n > 1 }}"), &ctx()).unwrap(),
            json!(true)
        );
    }

    #[test]
    fn undefined_and_syntax_errors_are_reported() {
        let r = Renderer::new();
        let e = r.render_str("{{ input.nope.deeper }}", &ctx()).unwrap_err();
        assert!(e.message.contains("undefined"), "{}", e.message);
        assert!(r.render_value(&json!("{{ input.nope }}"), &ctx()).is_err());
        let e = r.render_str("{{ input.who ", &ctx()).unwrap_err();
        assert!(e.message.contains("syntax error"), "{}", e.message);
        assert_eq!(
            r.render_str("{{ input.nope | default('x') }}", &ctx())
                .unwrap(),
            "x"
        );
        assert_eq!(
            r.render_str(
                "{% if input.nope is defined %}a{% else %}b{% endif %}",
                &ctx()
            )
            .unwrap(),
            "b"
        );
    }

    #[test]
    fn filters() {
        let r = Renderer::new();
        let c = ctx();
        assert_eq!(
            r.render_str("{{ step.get.output | json }}", &c).unwrap(),
            r#"{"id":42,"list":[1,2]}"#
        );
        assert_eq!(
            r.render_value(&json!("{{ '{\"a\":1}' | fromjson }}"), &c)
                .unwrap(),
            json!({"a": 1})
        );
        assert_eq!(r.render_str("{{ 'hi' | b64encode }}", &c).unwrap(), "aGk=");
        assert_eq!(r.render_str("{{ 'aGk=' | b64decode }}", &c).unwrap(), "hi");
        assert_eq!(
            r.render_str("{{ 'abc' | sha256 }}", &c).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            r.render_str("{{ 'a-b' | regex_replace('-', '+') }}", &c)
                .unwrap(),
            "a+b"
        );
        assert_eq!(r.render_str("{{ uuid() | length }}", &c).unwrap(), "36");
        assert_eq!(r.render_str("{{ 'Hi'.upper() }}", &c).unwrap(), "HI");
        assert_eq!(
            r.render_str("{{ 0 | datetimeformat(format='iso') }}", &c)
                .unwrap(),
            "1970-01-01T00:00:00+00:00"
        );
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let r = Renderer::new();
        let e = r.render_str(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            &ctx(),
        );
        assert!(e.is_err());
    }

    /// Every way a template could grow its input, fed 100 KB: each either fails or stays
    /// within the budget. Without the bounds, several of these allocate tens of gigabytes.
    #[test]
    fn no_template_can_allocate_without_bound() {
        let r = Renderer::new();
        let c = json!({"input": {"s": "x".repeat(100_000)}});
        let attacks = [
            "{{ input.s | regex_replace('x', input.s) | length }}",
            "{{ input.s | regex_replace('(x)', '$1$1$1$1$1$1$1$1$1$1$1$1$1$1$1$1$1$1') | regex_replace('(x)', input.s) | length }}",
            "{{ input.s | replace('x', input.s) | length }}",
            "{{ input.s.replace('x', input.s) | length }}",
            "{{ (input.s * 100000) | length }}",
            "{{ ([input.s] * 100000) | join('') | length }}",
            "{{ ([input.s] * 100000) | json | length }}",
            "{{ ([input.s] * 100000) | tojson | length }}",
            "{{ ([input.s] * 100000) | string | length }}",
            "{{ ([input.s] * 100000) | pprint | length }}",
            "{{ ([input.s] * 100000) | sha256 }}",
            "{{ ([input.s] * 100000) | b64encode | length }}",
            "{{ ([input.s] * 100000) | regex_match('y') }}",
            "{{ ([input.s] * 100000) | regex_replace('y', 'z') | length }}",
            "{{ ([input.s] * 100000) | fromjson }}",
            "{{ ([[input.s] * 1000] * 1000) | join(',') | length }}",
            "{{ ''.join([input.s] * 100000) | length }}",
            "{{ '{:>999999999}{}'.format('a', 'b') | length }}",
            "{{ '{0:{1}}'.format('a', 999999999) | length }}",
            "{% set ns = namespace(s=input.s) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
            "{% macro d(s, n) %}{% if n > 0 %}{{ d(s ~ s, n - 1) }}{% else %}{{ s | length }}{% endif %}{% endmacro %}{{ d(input.s, 40) }}",
            "{{ '%999999999s' | format('a') | length }}",
            "{{ '{:>999999999}'.format('a') | length }}",
            "{{ input.s.center(999999999) | length }}",
            "{{ input.s.ljust(999999999) | length }}",
            "{{ input.s | indent(99999999) | length }}",
            "{{ range(100000000) | list | length }}",
            "{{ ([input.s] * 100000) | sort | length }}",
            "{{ dict(a=[input.s] * 100000) | json | length }}",
            "{{ input.s | b64encode | b64encode | b64encode | b64encode | b64encode | b64encode | b64encode | b64encode | length }}",
            "{{ ((input.s ~ input.s) * 10000) | length }}",
            "{% for i in range(100) %}{{ input.s }}{% endfor %}",
        ];
        for attack in attacks {
            if let Ok(out) = r.render_str(attack, &c) {
                assert!(out.len() <= MAX_RENDERED_BYTES, "{attack}");
            }
        }
        // As values, a leaf that is one expression keeps its JSON type: measured before it is built.
        for attack in [
            "{{ [input.s] * 100000 }}",
            "{{ dict(a=[input.s] * 100000) }}",
            "{{ [[input.s] * 1000] * 1000 }}",
        ] {
            let e = r.render_value(&json!(attack), &c).unwrap_err();
            assert!(e.message.contains("larger than"), "{attack}: {}", e.message);
        }
        // Many leaves within the fuel each, too large together.
        let many: Vec<Value> = (0..20).map(|_| json!("{{ input.s * 50 }}")).collect();
        let e = r.render_value(&Value::Array(many), &c).unwrap_err();
        assert!(e.message.contains("larger than"), "{}", e.message);
        // The issue's own case fails with a message a person can act on.
        let e = r
            .render_str("{{ input.s | regex_replace('x', input.s) | length }}", &c)
            .unwrap_err();
        assert!(e.message.contains("rendering stopped"), "{}", e.message);
        // Ordinary work on the same input is untouched.
        assert_eq!(
            r.render_str("{{ input.s | regex_replace('x', 'yy') | length }}", &c)
                .unwrap(),
            "200000"
        );
        assert_eq!(
            r.render_value(&json!("{{ [input.s] * 3 }}"), &c)
                .unwrap()
                .as_array()
                .map(Vec::len),
            Some(3)
        );
    }

    /// What validates renders, and what renders validates: the environment's functions are
    /// not variables; unknown filters, tests and functions are refused up front.
    #[test]
    fn references_know_the_environments_functions_filters_and_tests() {
        let r = Renderer::new();
        for ok in [
            "{{ uuid() }}",
            "{{ now_unix() }}",
            "{% for i in range(3) %}{{ i }}{% endfor %}",
            "{{ dict(a=1) | json }}",
            "{{ input.x | default('a') | upper }}",
            "{% macro m(x) %}{{ x }}{% endmacro %}{{ m(input.y) }}",
            "{{ input.x is defined }}",
            "{{ 'a-b'.split('-') | join(',') }}",
        ] {
            let refs = r
                .references(ok)
                .unwrap_or_else(|e| panic!("{ok}: {}", e.message));
            assert!(
                refs.iter().all(|v| v.starts_with("input.")),
                "{ok}: {refs:?}"
            );
            r.render_str(ok, &json!({"input": {"x": "a", "y": 1}}))
                .unwrap_or_else(|e| panic!("{ok}: {}", e.message));
        }
        for (bad, says) in [
            (
                "{{ 1 | no_such_filter }}",
                "unknown filter \"no_such_filter\"",
            ),
            ("{{ 1 is no_such_test }}", "unknown test \"no_such_test\""),
            (
                "{{ no_such_function() }}",
                "unknown function \"no_such_function\"",
            ),
        ] {
            let e = r.references(bad).unwrap_err();
            assert!(e.message.contains(says), "{bad}: {}", e.message);
            assert!(r.render_str(bad, &json!({})).is_err(), "{bad}");
        }
    }

    #[test]
    fn references_are_dotted_paths() {
        let r = Renderer::new();
        let refs = r
            .references("{{ step.get.output.id }} {% for x in input.items %}{{ x }}{% endfor %}")
            .unwrap();
        assert_eq!(
            refs,
            vec!["input.items".to_string(), "step.get.output.id".to_string()]
        );
        assert!(r.references("{{ oops").is_err());
    }
}
