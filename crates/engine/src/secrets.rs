//! Secrets in templates: which ones a template reads (each with the first field reading it),
//! and whether they exist when the template is written.
//!
//! A template reads a secret only as `{{ secret.NAME }}` (validation refuses any other use of
//! `secret`), so the names found here are every secret its runs can see. A run looks their
//! values up in the store at each round ([`crate::run`]), so a rotated secret reaches the
//! steps that start after it changed, and the run redacts them from whatever it writes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};
use taskhook_model::secret::Redactor;
use taskhook_model::validate::{TemplateError, ValidationError};
use taskhook_model::{Language, Template};

use crate::{Engine, EngineError};

/// The secrets a template reads: name → the first field (dotted path) reading it.
pub fn template_secrets(t: &Template) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Ok(v) = serde_json::to_value(t) {
        collect(&v, "", t.language, &mut out);
    }
    out
}

/// The names of the secrets a JSON value (a step, some arguments) of a template in `lang`
/// reads.
pub(crate) fn value_secrets(v: &Value, lang: Language) -> BTreeSet<String> {
    let mut out = BTreeMap::new();
    collect(v, "", Some(lang), &mut out);
    out.into_keys().collect()
}

/// `lang`: the template's language when known; otherwise each string's own (a secret is
/// read as `{{ secret.NAME }}` or `{{ .secret.NAME }}`, which tell the language apart).
fn collect(v: &Value, path: &str, lang: Option<Language>, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::String(s) => text_secrets(s, path, lang, out),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect(item, &format!("{path}[{i}]"), lang, out);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                text_secrets(k, path, lang, out);
                collect(item, &join(k), lang, out);
            }
        }
        _ => {}
    }
}

fn text_secrets(s: &str, path: &str, lang: Option<Language>, out: &mut BTreeMap<String, String>) {
    if !taskhook_expr::is_templated(s) {
        return;
    }
    let lang = lang
        .or_else(|| taskhook_model::language::detect(s))
        .unwrap_or_default();
    let Ok(refs) = crate::render::references(lang, s) else {
        return;
    };
    for r in refs {
        let mut parts = r.split('.');
        if matches!(parts.next(), Some("secret" | "config"))
            && let Some(name) = parts.next()
        {
            out.entry(name.to_string())
                .or_insert_with(|| path.to_string());
        }
    }
}

/// Masks password inputs in text rendered from a task's inputs (its title and tags).
pub(crate) fn mask_passwords_in(t: &Template, inputs: &Map<String, Value>, text: String) -> String {
    let mut r = Redactor::new();
    r.add_passwords(&t.inputs, &Value::Object(inputs.clone()));
    r.redact_str(&text).into_owned()
}

impl Engine {
    /// Checks that every secret `template` reads exists; the error names, for each missing
    /// one, the first field reading it.
    pub async fn check_template_secrets(&self, template: &Template) -> Result<(), EngineError> {
        let wanted = template_secrets(template);
        if wanted.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = wanted.keys().cloned().collect();
        let found: BTreeSet<String> = self
            .store()
            .secret_values(names)
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let errors: Vec<ValidationError> = wanted
            .iter()
            .filter(|(n, _)| !found.contains(*n))
            .map(|(n, field)| ValidationError {
                field: field.clone(),
                message: format!(
                    "secret {n:?} does not exist; create it first (PUT /api/v1/secrets/{n})"
                ),
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Template(TemplateError { errors }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_secrets_with_their_first_field() {
        let t = Template::parse(
            r#"
name: s
variables: [{name: v, value: "{{ secret.from_var }}"}]
steps:
  a:
    action:
      type: http
      configuration:
        url: "http://x/?k={{ secret.api_key }}"
        headers: {Authorization: "Bearer {{ secret.token }}", X: "{{ secret.api_key }}"}
  b:
    action: {type: echo, configuration: {output: "{{ input.x }} {{ step.a.output }}"}}
"#,
        )
        .unwrap();
        let found = template_secrets(&t);
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            vec![
                (
                    "api_key".to_string(),
                    "steps.a.action.configuration.url".to_string()
                ),
                ("from_var".to_string(), "variables[0].value".to_string()),
                (
                    "token".to_string(),
                    "steps.a.action.configuration.headers.Authorization".to_string()
                ),
            ]
        );
    }
}
