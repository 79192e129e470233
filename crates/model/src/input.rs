//! Task inputs: their declaration in a template and the check of given values.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The mask shown in place of a password input's value.
pub const SECRET_MASK: &str = "**__SECRET__**";
const MAX_INPUT_LEN: usize = 100_000;

/// One input of a template: its name, type and the values it takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Letters, digits, `_` and `-`.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, rename = "type")]
    pub kind: InputType,
    /// A regular expression the whole value must match (not with `legal_values`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// The only values allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub legal_values: Vec<Value>,
    /// The value is a list, each element checked.
    #[serde(default)]
    pub collection: bool,
    /// May be left out (it is then null).
    #[serde(default)]
    pub optional: bool,
    /// The value when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// Text (the default).
    #[default]
    String,
    Number,
    /// `true` or `false`.
    Bool,
    /// A string never shown back: masked in API output and logs.
    Password,
}

/// A value that does not fit its input declaration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("input {input}: {message}")]
pub struct InputError {
    pub input: String,
    pub message: String,
}

impl InputSpec {
    fn err(&self, message: impl Into<String>) -> InputError {
        InputError {
            input: self.name.clone(),
            message: message.into(),
        }
    }

    /// Checks the declaration itself (used by template validation).
    pub fn check_spec(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "invalid input name {:?}: use letters, digits, _ and -",
                self.name
            ));
        }
        if self.regex.is_some() && !self.legal_values.is_empty() {
            return Err("regex and legal_values cannot be used together".into());
        }
        if let Some(re) = &self.regex {
            regex::Regex::new(re).map_err(|e| format!("invalid regex: {e}"))?;
        }
        for v in &self.legal_values {
            self.check_scalar(v)
                .map_err(|e| format!("legal value {v}: {}", e.message))?;
        }
        if let Some(d) = &self.default {
            self.check_value(d)
                .map_err(|e| format!("default: {}", e.message))?;
        }
        Ok(())
    }

    fn check_scalar(&self, v: &Value) -> Result<(), InputError> {
        match (self.kind, v) {
            (InputType::String | InputType::Password, Value::String(s)) => {
                if s.len() > MAX_INPUT_LEN {
                    return Err(self.err(format!("longer than {MAX_INPUT_LEN} bytes")));
                }
            }
            (InputType::Number, Value::Number(_)) | (InputType::Bool, Value::Bool(_)) => {}
            (kind, other) => {
                let kind = match kind {
                    InputType::String => "a string",
                    InputType::Password => "a string (password)",
                    InputType::Number => "a number",
                    InputType::Bool => "a boolean",
                };
                return Err(self.err(format!("expected {kind}, got {}", type_name(other))));
            }
        }
        if !self.legal_values.is_empty() && !self.legal_values.iter().any(|l| l == v) {
            let legal: Vec<String> = self.legal_values.iter().map(|l| l.to_string()).collect();
            return Err(self.err(format!("{v} is not one of {}", legal.join(", "))));
        }
        if let (Some(re), Value::String(s)) = (&self.regex, v) {
            let anchored = format!("^(?:{re})$");
            let re = regex::Regex::new(&anchored)
                .map_err(|e| self.err(format!("invalid regex: {e}")))?;
            if !re.is_match(s) {
                return Err(self.err(format!(
                    "value does not match regex {:?}",
                    self.regex.as_deref().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    /// Checks one provided value (scalar, or list when `collection`).
    pub fn check_value(&self, v: &Value) -> Result<(), InputError> {
        if self.collection {
            let Value::Array(items) = v else {
                return Err(self.err(format!("expected a list, got {}", type_name(v))));
            };
            items.iter().try_for_each(|i| self.check_scalar(i))
        } else {
            self.check_scalar(v)
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Checks provided values against declarations, fills defaults, and rejects undeclared names.
/// Returns the complete input object a task starts with.
pub fn resolve_inputs(
    specs: &[InputSpec],
    given: &Value,
) -> Result<Map<String, Value>, InputError> {
    let empty = Map::new();
    let given = match given {
        Value::Object(m) => m,
        Value::Null => &empty,
        other => {
            return Err(InputError {
                input: String::new(),
                message: format!("inputs must be an object, got {}", type_name(other)),
            });
        }
    };
    for name in given.keys() {
        if !specs.iter().any(|s| &s.name == name) {
            return Err(InputError {
                input: name.clone(),
                message: "not declared by the template".into(),
            });
        }
    }
    let mut out = Map::new();
    for spec in specs {
        let value = match given.get(&spec.name) {
            Some(Value::Null) | None => None,
            Some(Value::String(s))
                if s.is_empty() && spec.kind != InputType::Password && spec.default.is_some() =>
            {
                None
            }
            Some(v) => Some(v.clone()),
        };
        match value.or_else(|| spec.default.clone()) {
            Some(v) => {
                spec.check_value(&v)?;
                out.insert(spec.name.clone(), v);
            }
            None if spec.optional => {
                out.insert(spec.name.clone(), Value::Null);
            }
            None => return Err(spec.err("required")),
        }
    }
    Ok(out)
}

/// Replaces the values of password inputs with [`SECRET_MASK`].
pub fn mask_passwords(specs: &[InputSpec], inputs: &mut Value) {
    if let Value::Object(m) = inputs {
        for spec in specs.iter().filter(|s| s.kind == InputType::Password) {
            if let Some(v) = m.get_mut(&spec.name)
                && !v.is_null()
            {
                *v = Value::String(SECRET_MASK.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(y: &str) -> InputSpec {
        serde_saphyr::from_str(y).unwrap()
    }

    #[test]
    fn defaults_types_and_required() {
        let specs = vec![
            spec("name: a\n"),
            spec("name: n\ntype: number\ndefault: 3\n"),
            spec("name: o\noptional: true\n"),
        ];
        let got = resolve_inputs(&specs, &json!({"a": "x"})).unwrap();
        assert_eq!(Value::Object(got), json!({"a": "x", "n": 3, "o": null}));
        let e = resolve_inputs(&specs, &json!({})).unwrap_err();
        assert_eq!((e.input.as_str(), e.message.as_str()), ("a", "required"));
        let e = resolve_inputs(&specs, &json!({"a": "x", "n": "3"})).unwrap_err();
        assert_eq!(e.input, "n");
        assert!(e.message.contains("expected a number"));
        let e = resolve_inputs(&specs, &json!({"a": "x", "zzz": 1})).unwrap_err();
        assert_eq!(e.input, "zzz");
    }

    #[test]
    fn regex_is_anchored_and_legal_values_hold() {
        let r = spec("name: env\nregex: '[a-z]+'\n");
        assert!(r.check_value(&json!("prod")).is_ok());
        assert!(r.check_value(&json!("prod1")).is_err());
        let l = spec("name: env\nlegal_values: [a, b]\ncollection: true\n");
        assert!(l.check_value(&json!(["a", "b"])).is_ok());
        assert!(l.check_value(&json!(["a", "c"])).is_err());
        assert!(l.check_value(&json!("a")).is_err());
    }

    #[test]
    fn bad_specs_are_reported() {
        assert!(spec("name: a\nregex: '('\n").check_spec().is_err());
        assert!(
            spec("name: a\nregex: 'a'\nlegal_values: [a]\n")
                .check_spec()
                .is_err()
        );
        assert!(
            spec("name: a\ntype: number\ndefault: x\n")
                .check_spec()
                .is_err()
        );
        assert!(spec("name: 'a b'\n").check_spec().is_err());
    }

    #[test]
    fn passwords_are_masked() {
        let specs = vec![spec("name: p\ntype: password\n"), spec("name: u\n")];
        let mut v = json!({"p": "hunter2", "u": "me"});
        mask_passwords(&specs, &mut v);
        assert_eq!(v, json!({"p": SECRET_MASK, "u": "me"}));
    }
}
