//! Named secrets: their names, the scopes that guard them, and redaction of their values
//! (and of password inputs) from everything a task records.
//!
//! A template reads a secret as `{{ secret.NAME }}`. The value is looked up when a step
//! runs, never copied into the task. Whatever a run writes (step outputs, metadata, errors,
//! foreach items, the task result, audit entries) first goes through a [`Redactor`] holding
//! the run's secret values and password inputs, which replaces them by [`MASK`].

use std::borrow::Cow;

use serde_json::Value;

use crate::input::{InputSpec, InputType, SECRET_MASK};

/// What a redacted value is replaced by (the same mask as password inputs).
pub const MASK: &str = SECRET_MASK;

/// Values shorter than this (in characters) are masked only where a whole string equals
/// them, never as a part of a longer string: masking `ab` inside every word would make
/// outputs unreadable and tell which letters the secret has.
pub const MIN_SUBSTRING_CHARS: usize = 4;

/// Longest secret name.
pub const MAX_NAME_LEN: usize = 64;

/// A secret's name as a regular expression, as the OpenAPI document declares it.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_]+$";

/// Checks a secret's name: 1 to 64 ASCII letters, digits and `_`, so that
/// `{{ secret.NAME }}` reads it. Stricter than [`crate::name::is_valid`] (no dots), so a
/// secret's URL is never normalised either.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!(
            "invalid secret name {name:?}: use 1 to {MAX_NAME_LEN} ASCII letters, digits and '_'"
        ));
    }
    Ok(())
}

/// The scope a template's writer needs to make the template read secret `name`.
pub fn use_scope(name: &str) -> String {
    format!("secrets:use:{name}")
}

/// The scope needed to read a secret's metadata (`secrets:read:*` to list them all).
pub fn read_scope(name: &str) -> String {
    format!("secrets:read:{name}")
}

/// The scope needed to create, replace or delete a secret.
pub fn write_scope(name: &str) -> String {
    format!("secrets:write:{name}")
}

/// The first of `names` that a writer holding `held` may not use in a template
/// (`secrets:use:<name>` missing), or `None` when every one is allowed.
pub fn first_unusable<'a, I>(held: &[String], names: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    names
        .into_iter()
        .find(|n| !crate::scope::satisfies(held, &use_scope(n)))
}

/// Replaces known sensitive values by [`MASK`] in text and JSON.
///
/// The rule: a value of at least [`MIN_SUBSTRING_CHARS`] characters is masked wherever it
/// appears, also inside longer strings and in its JSON-escaped spelling (as it appears in a
/// JSON document held in a string); a shorter value is masked only where a whole string is
/// exactly that value. Object keys are treated like strings. Numbers and booleans are left
/// alone. Empty values are ignored.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Longest first, so a value containing another is masked whole.
    values: Vec<String>,
}

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value to mask.
    pub fn add(&mut self, value: &str) {
        if value.is_empty() || value == MASK {
            return;
        }
        let mut forms = vec![value.to_string()];
        if let Ok(quoted) = serde_json::to_string(value) {
            let escaped = &quoted[1..quoted.len() - 1];
            if escaped != value {
                forms.push(escaped.to_string());
            }
        }
        for f in forms {
            if !self.values.contains(&f) {
                self.values.push(f);
            }
        }
        self.values
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    }

    /// Adds the values of the password inputs among `inputs` (declared by `specs`).
    pub fn add_passwords(&mut self, specs: &[InputSpec], inputs: &Value) {
        for spec in specs.iter().filter(|s| s.kind == InputType::Password) {
            match inputs.get(&spec.name) {
                Some(Value::String(s)) => self.add(s),
                Some(Value::Array(items)) => {
                    for s in items.iter().filter_map(Value::as_str) {
                        self.add(s);
                    }
                }
                _ => {}
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `s` with every sensitive value masked (borrowed when nothing was).
    pub fn redact_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        if self.values.is_empty() || s.is_empty() {
            return Cow::Borrowed(s);
        }
        if self.values.iter().any(|v| v == s) {
            return Cow::Owned(MASK.to_string());
        }
        let mut out = Cow::Borrowed(s);
        for v in &self.values {
            if v.chars().count() >= MIN_SUBSTRING_CHARS && out.contains(v.as_str()) {
                out = Cow::Owned(out.replace(v.as_str(), MASK));
            }
        }
        out
    }

    /// Masks in place; returns whether anything changed.
    pub fn redact_string(&self, s: &mut String) -> bool {
        match self.redact_str(s) {
            Cow::Borrowed(_) => false,
            Cow::Owned(o) => {
                *s = o;
                true
            }
        }
    }

    /// Masks every string (and object key) of a JSON value in place; returns whether
    /// anything changed.
    pub fn redact_value(&self, v: &mut Value) -> bool {
        if self.values.is_empty() {
            return false;
        }
        match v {
            Value::String(s) => self.redact_string(s),
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, i| self.redact_value(i) | changed),
            Value::Object(m) => {
                let mut changed = false;
                let keys: Vec<String> = m.keys().cloned().collect();
                for k in keys {
                    let new_key = self.redact_str(&k).into_owned();
                    let Some(mut item) = m.remove(&k) else {
                        continue;
                    };
                    changed |= self.redact_value(&mut item);
                    changed |= new_key != k;
                    m.insert(new_key, item);
                }
                changed
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn held(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names() {
        assert!(check_name("db_password").is_ok());
        assert!(check_name("A1").is_ok());
        assert!(check_name(&"a".repeat(64)).is_ok());
        assert!(check_name(&"a".repeat(65)).is_err());
        assert!(check_name("").is_err());
        assert!(check_name("db-password").is_err());
        assert!(check_name("db.password").is_err());
        assert!(check_name("é").is_err());
    }

    #[test]
    fn using_secrets_needs_their_use_scope() {
        let names = ["db", "api_key"];
        assert_eq!(first_unusable(&held(&["admin"]), names), None);
        assert_eq!(first_unusable(&held(&["*"]), names), None);
        assert_eq!(first_unusable(&held(&["secrets:*"]), names), None);
        assert_eq!(first_unusable(&held(&["secrets:use:*"]), names), None);
        assert_eq!(
            first_unusable(&held(&["secrets:use:db", "secrets:use:api_key"]), names),
            None
        );
        assert_eq!(
            first_unusable(&held(&["secrets:use:db"]), names),
            Some("api_key")
        );
        assert_eq!(
            first_unusable(&held(&["secrets:use:api*"]), names),
            Some("db")
        );
        // Reading or writing a secret does not allow using it.
        assert_eq!(
            first_unusable(&held(&["secrets:read:*", "secrets:write:*"]), names),
            Some("db")
        );
        assert_eq!(first_unusable(&held(&[]), names), Some("db"));
        assert_eq!(first_unusable(&held(&[]), []), None);
        // No prefix match without a `*`.
        assert_eq!(
            first_unusable(&held(&["secrets:use:d"]), ["db"]),
            Some("db")
        );
    }

    #[test]
    fn masks_values_inside_strings_keys_and_escaped_json() {
        let mut r = Redactor::new();
        r.add("s3cr3t-value");
        r.add("a\"b\\c\nd");
        let mut v = json!({
            "echo": "token=s3cr3t-value&x=1",
            "s3cr3t-value": [1, "s3cr3t-value", true],
            "body": "{\"t\":\"a\\\"b\\\\c\\nd\"}",
            "raw": "a\"b\\c\nd",
            "n": 42,
        });
        assert!(r.redact_value(&mut v));
        assert_eq!(
            v,
            json!({
                "echo": "token=**__SECRET__**&x=1",
                "**__SECRET__**": [1, MASK, true],
                "body": "{\"t\":\"**__SECRET__**\"}",
                "raw": MASK,
                "n": 42,
            })
        );
        let mut clean = json!({"a": "nothing here"});
        assert!(!r.redact_value(&mut clean));
    }

    #[test]
    fn short_values_are_masked_only_whole() {
        let mut r = Redactor::new();
        r.add("abc");
        assert_eq!(r.redact_str("abc"), MASK);
        assert_eq!(r.redact_str("abcdef"), "abcdef");
        r.add("");
        assert_eq!(r.redact_str(""), "");
        r.add("abcd");
        assert_eq!(r.redact_str("xabcdx"), "x**__SECRET__**x");
    }

    #[test]
    fn a_longer_value_containing_another_is_masked_whole() {
        let mut r = Redactor::new();
        r.add("pass");
        r.add("password123");
        assert_eq!(r.redact_str("it is password123"), "it is **__SECRET__**");
    }

    #[test]
    fn password_inputs_are_collected() {
        let specs: Vec<InputSpec> = vec![
            serde_saphyr::from_str("name: p\ntype: password\n").unwrap(),
            serde_saphyr::from_str("name: many\ntype: password\ncollection: true\n").unwrap(),
            serde_saphyr::from_str("name: u\n").unwrap(),
        ];
        let mut r = Redactor::new();
        r.add_passwords(
            &specs,
            &json!({"p": "hunter22", "many": ["one-pass", "two-pass"], "u": "visible"}),
        );
        assert_eq!(
            r.redact_str("hunter22 one-pass two-pass visible"),
            "**__SECRET__** **__SECRET__** **__SECRET__** visible"
        );
    }
}
