//! Templating and expressions over JSON: one language (MiniJinja) for values,
//! conditions and `foreach` lists.
//!
//! Rendering is pure: it reads a JSON context and returns JSON or text. It knows
//! nothing of storage or of the engine; it bounds work with fuel so a template
//! cannot loop forever.

use std::sync::LazyLock;

use base64::Engine as _;
use minijinja::value::Value as JValue;
use minijinja::{Environment, Error as JError, ErrorKind, UndefinedBehavior};
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
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        ExprError { message }
    }
}

/// Work one render may do before it is stopped.
const FUEL: u64 = 200_000;

/// The configured templating environment. Cheap to share: build once, use everywhere.
pub struct Renderer {
    env: Environment<'static>,
}

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
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        add_filters(&mut env);
        Renderer { env }
    }

    /// Renders a template string to text.
    pub fn render_str(&self, text: &str, ctx: &Value) -> Result<String, ExprError> {
        if !is_templated(text) {
            return Ok(text.to_string());
        }
        Ok(self
            .env
            .render_str(text, JValue::from(minijinja::value::Serde(ctx)))?)
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
        to_json(&v)
    }

    /// Checks the syntax of a bare expression.
    pub fn check_expression(&self, expr: &str) -> Result<(), ExprError> {
        self.env.compile_expression(expr)?;
        Ok(())
    }

    /// Renders every string leaf of a JSON value. A leaf that is exactly one `{{ expression }}`
    /// keeps the expression's JSON type (a list stays a list); other leaves become text.
    pub fn render_value(&self, v: &Value, ctx: &Value) -> Result<Value, ExprError> {
        match v {
            Value::String(s) => self.render_leaf(s, ctx),
            Value::Array(items) => items
                .iter()
                .map(|i| self.render_value(i, ctx))
                .collect::<Result<_, _>>()
                .map(Value::Array),
            Value::Object(m) => {
                let mut out = serde_json::Map::with_capacity(m.len());
                for (k, item) in m {
                    out.insert(self.render_str(k, ctx)?, self.render_value(item, ctx)?);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    fn render_leaf(&self, s: &str, ctx: &Value) -> Result<Value, ExprError> {
        if !is_templated(s) {
            return Ok(Value::String(s.to_string()));
        }
        if let Some(expr) = single_expression(s) {
            return self.eval(expr, ctx);
        }
        self.render_str(s, ctx).map(Value::String)
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
    pub fn references(&self, text: &str) -> Result<Vec<String>, ExprError> {
        let t = self.env.template_from_str(text)?;
        let mut refs: Vec<String> = t.undeclared_variables(true).into_iter().collect();
        refs.sort();
        Ok(refs)
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

fn to_json(v: &JValue) -> Result<Value, ExprError> {
    serde_json::to_value(v).map_err(|e| ExprError {
        message: format!("result is not JSON: {e}"),
    })
}

fn add_filters(env: &mut Environment<'static>) {
    env.add_filter("json", |v: JValue| -> Result<String, JError> {
        serde_json::to_string(&v)
            .map_err(|e| JError::new(ErrorKind::InvalidOperation, e.to_string()))
    });
    env.add_filter("fromjson", |s: String| -> Result<JValue, JError> {
        let v: Value = serde_json::from_str(&s)
            .map_err(|e| JError::new(ErrorKind::InvalidOperation, format!("not JSON: {e}")))?;
        Ok(JValue::from(minijinja::value::Serde(&v)))
    });
    env.add_filter("b64encode", |s: String| {
        base64::engine::general_purpose::STANDARD.encode(s)
    });
    env.add_filter("b64decode", |s: String| -> Result<String, JError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| JError::new(ErrorKind::InvalidOperation, format!("not base64: {e}")))?;
        String::from_utf8(bytes)
            .map_err(|_| JError::new(ErrorKind::InvalidOperation, "decoded bytes are not UTF-8"))
    });
    env.add_filter("sha256", |s: String| {
        hex::encode(sha2::Sha256::digest(s.as_bytes()))
    });
    env.add_filter("sha512", |s: String| {
        hex::encode(sha2::Sha512::digest(s.as_bytes()))
    });
    env.add_filter(
        "regex_match",
        |s: String, re: String| -> Result<bool, JError> {
            let re = regex::Regex::new(&re)
                .map_err(|e| JError::new(ErrorKind::InvalidOperation, e.to_string()))?;
            Ok(re.is_match(&s))
        },
    );
    env.add_filter(
        "regex_replace",
        |s: String, re: String, with: String| -> Result<String, JError> {
            let re = regex::Regex::new(&re)
                .map_err(|e| JError::new(ErrorKind::InvalidOperation, e.to_string()))?;
            Ok(re.replace_all(&s, with.as_str()).into_owned())
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
