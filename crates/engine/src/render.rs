//! Rendering in a template's language: MiniJinja for taskhook's own templates, Go
//! `text/template` for µTask's (see `taskhook_model::language`). Every place the engine
//! renders goes through here, so one template is never rendered in the other language.

use serde_json::Value;
use taskhook_expr::ExprError;
use taskhook_expr::go;
use taskhook_model::{Language, Template};

/// The variables Go's `eval` and `evalCache` read: the template's `variables`.
fn variables(t: &Template) -> go::Variables {
    go::Variables::new(t.variables.iter().map(|v| go::Variable {
        name: v.name.clone(),
        value: Some(v.value.clone()),
        expression: None,
    }))
}

/// Renders every templated string inside `v`.
pub(crate) fn value(
    t: &Template,
    lang: Language,
    v: &Value,
    ctx: &Value,
) -> Result<Value, ExprError> {
    match lang {
        Language::Jinja => taskhook_expr::renderer().render_value(v, ctx),
        Language::Go => go::render_value_with(v, ctx, &variables(t)),
    }
}

/// Renders one templated string to text.
pub(crate) fn text(
    t: &Template,
    lang: Language,
    s: &str,
    ctx: &Value,
) -> Result<String, ExprError> {
    match lang {
        Language::Jinja => taskhook_expr::renderer().render_str(s, ctx),
        Language::Go => go::render_str_with(s, ctx, &variables(t)),
    }
}

/// A `foreach`: a MiniJinja expression yields its value; a Go template renders text, read as
/// JSON when it is JSON (µTask's `'{{ .step.x.children | toJson }}'`, or a literal list).
pub(crate) fn items(
    t: &Template,
    lang: Language,
    expr: &str,
    ctx: &Value,
) -> Result<Value, ExprError> {
    match lang {
        Language::Jinja => value(t, lang, &Value::String(expr.to_string()), ctx),
        Language::Go => {
            let text = text(t, lang, expr, ctx)?;
            Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }
    }
}

/// The dotted paths a templated string reads (`input.name`, `secret.TOKEN`).
pub(crate) fn references(lang: Language, s: &str) -> Result<Vec<String>, ExprError> {
    match lang {
        Language::Jinja => taskhook_expr::renderer().references(s),
        Language::Go => Ok(go::parse(s)?.field_paths().into_iter().collect()),
    }
}
