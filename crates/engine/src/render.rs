//! Rendering in a template's language: MiniJinja for taskhook's own templates, Go
//! `text/template` for µTask's (see `taskhook_model::language`). Every place the engine
//! renders goes through here, so one template is never rendered in the other language.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use taskhook_expr::{ExprError, go, js};
use taskhook_model::template::Variable;
use taskhook_model::{Language, Template};

/// The variables Go's `eval` and `evalCache` read: the template's `variables`, those with
/// an `expression` run as JavaScript.
fn variables(t: &Template) -> go::Variables {
    let timeouts: HashMap<String, Duration> = t
        .variables
        .iter()
        .map(|v| (v.name.clone(), expression_timeout(v)))
        .collect();
    go::Variables::new(t.variables.iter().map(|v| go::Variable {
        name: v.name.clone(),
        value: v.expression.is_none().then(|| v.value.clone()),
        expression: v.expression.clone(),
    }))
    .with_expression_evaluator(move |name, source| {
        let timeout = timeouts.get(name).copied().unwrap_or(js::DEFAULT_TIMEOUT);
        js::eval(source, timeout)
    })
}

/// How long a variable's expression may run.
pub(crate) fn expression_timeout(v: &Variable) -> Duration {
    v.expression_timeout
        .as_deref()
        .and_then(|t| taskhook_model::duration::parse_duration_str(t).ok())
        .unwrap_or(js::DEFAULT_TIMEOUT)
}

/// A variable's value for `var.NAME`: its value rendered, or its expression rendered and run.
pub(crate) fn variable(
    t: &Template,
    lang: Language,
    v: &Variable,
    ctx: &Value,
) -> Result<Value, ExprError> {
    match &v.expression {
        Some(e) => {
            let source = text(t, lang, e, ctx)?;
            Ok(Value::String(js::eval(&source, expression_timeout(v))?))
        }
        None => value(t, lang, &v.value, ctx),
    }
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
