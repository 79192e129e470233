//! Shared configuration checks for the builtin actions, used at template load time (where strings
//! may still be `{{ … }}` templates) and at run time (to name the faulty field in an error).
//! Checks only look at JSON values: they never touch the network, the disk or the clock.

use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde_json::{Map, Value};

use crate::duration::kind;
use crate::{ActionError, ConfigError, is_templated, parse_duration};

/// When a configuration is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Template load: templated strings stand for any value.
    Load,
    /// Run time: templating is resolved; numbers and booleans may arrive as strings.
    Run,
}

/// `prefix.key`, or `key` when the prefix is empty.
pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// An optional field: `None` when absent or `null` (serde reads both as "not set").
pub(crate) fn opt<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

/// Field-checking helpers for one stage.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Check {
    pub stage: Stage,
}

impl Check {
    pub fn new(stage: Stage) -> Self {
        Check { stage }
    }

    /// True when `v` is a template that only resolves at run time (so nothing can be checked yet).
    pub fn deferred(&self, v: &Value) -> bool {
        self.stage == Stage::Load && is_templated(v)
    }

    /// An object, or `None` when the value is still a template.
    pub fn object<'a>(
        &self,
        field: &str,
        v: &'a Value,
    ) -> Result<Option<&'a Map<String, Value>>, ConfigError> {
        match v {
            Value::Object(m) => Ok(Some(m)),
            _ if self.deferred(v) => Ok(None),
            other => Err(ConfigError::new(
                field,
                format!("expected an object, got {}", kind(other)),
            )),
        }
    }

    /// Rejects keys outside `allowed` and reports the first missing `required` key.
    pub fn keys(
        &self,
        prefix: &str,
        map: &Map<String, Value>,
        allowed: &[&str],
        required: &[&str],
    ) -> Result<(), ConfigError> {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(ConfigError::new(
                    join(prefix, key),
                    format!("unknown field; expected one of: {}", allowed.join(", ")),
                ));
            }
        }
        for key in required {
            if !map.contains_key(*key) {
                return Err(ConfigError::new(
                    join(prefix, key),
                    "missing required field",
                ));
            }
        }
        Ok(())
    }

    /// A string; `Some(text)` unless it is still a template.
    pub fn string<'a>(&self, field: &str, v: &'a Value) -> Result<Option<&'a str>, ConfigError> {
        match v {
            _ if self.deferred(v) => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(ConfigError::new(
                field,
                format!("expected a string, got {}", kind(other)),
            )),
        }
    }

    pub fn boolean(&self, field: &str, v: &Value) -> Result<(), ConfigError> {
        match v {
            Value::Bool(_) => Ok(()),
            _ if self.deferred(v) => Ok(()),
            Value::String(s) if self.stage == Stage::Run && parse_bool(s).is_some() => Ok(()),
            other => Err(ConfigError::new(
                field,
                format!("expected a boolean, got {}", kind(other)),
            )),
        }
    }

    /// A non-negative integer; `Some(n)` unless it is still a template.
    pub fn uint(&self, field: &str, v: &Value) -> Result<Option<u64>, ConfigError> {
        let n = match v {
            Value::Number(n) => n.as_u64(),
            _ if self.deferred(v) => return Ok(None),
            Value::String(s) if self.stage == Stage::Run => s.trim().parse().ok(),
            _ => None,
        };
        match n {
            Some(n) => Ok(Some(n)),
            None => Err(ConfigError::new(
                field,
                format!("expected a non-negative integer, got {}", kind(v)),
            )),
        }
    }

    /// A duration (see [`parse_duration`]); `Some(d)` unless it is still a template.
    pub fn duration(&self, field: &str, v: &Value) -> Result<Option<Duration>, ConfigError> {
        if self.deferred(v) {
            return Ok(None);
        }
        parse_duration(v)
            .map(Some)
            .map_err(|e| ConfigError::new(field, e))
    }

    /// An object whose values are all strings (or templates).
    pub fn string_map<'a>(
        &self,
        field: &str,
        v: &'a Value,
    ) -> Result<Option<&'a Map<String, Value>>, ConfigError> {
        let Some(map) = self.object(field, v)? else {
            return Ok(None);
        };
        for (key, value) in map {
            self.string(&join(field, key), value)?;
        }
        Ok(Some(map))
    }

    /// An array of strings (or a template standing for one).
    pub fn string_list(&self, field: &str, v: &Value) -> Result<(), ConfigError> {
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.string(&format!("{field}[{i}]"), item)?;
                }
                Ok(())
            }
            _ if self.deferred(v) => Ok(()),
            other => Err(ConfigError::new(
                field,
                format!("expected an array of strings, got {}", kind(other)),
            )),
        }
    }

    /// A string, number or boolean (templates are strings, so always accepted).
    pub fn scalar(&self, field: &str, v: &Value) -> Result<(), ConfigError> {
        match v {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(()),
            other => Err(ConfigError::new(
                field,
                format!("expected a string, number or boolean, got {}", kind(other)),
            )),
        }
    }

    /// A duration greater than zero (or a template).
    pub fn positive_duration(&self, field: &str, v: &Value) -> Result<(), ConfigError> {
        if let Some(d) = self.duration(field, v)?
            && d.is_zero()
        {
            return Err(ConfigError::new(field, "must be greater than zero"));
        }
        Ok(())
    }
}

/// Deserializes a run-time configuration. On failure, `check` (run at [`Stage::Run`]) names the
/// faulty field; serde's own message is the fallback.
pub(crate) fn parse<T: DeserializeOwned>(
    action: &str,
    config: &Value,
    check: impl Fn(&Value, Stage) -> Result<(), ConfigError>,
) -> Result<T, ActionError> {
    match T::deserialize(config) {
        Ok(parsed) => Ok(parsed),
        Err(serde_error) => {
            let message = match check(config, Stage::Run) {
                Err(e) => describe(&e),
                Ok(()) => serde_error.to_string(),
            };
            Err(ActionError::fatal(format!(
                "invalid {action} configuration: {message}"
            )))
        }
    }
}

/// `field: message`, or just the message for the whole configuration.
pub(crate) fn describe(e: &ConfigError) -> String {
    if e.field.is_empty() {
        e.message.clone()
    } else {
        format!("{}: {}", e.field, e.message)
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Serde helper for optional booleans: `null`, a boolean, or the string `"true"`/`"false"`
/// (templating may render strings).
pub(crate) fn de_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b)),
        Value::String(s) => parse_bool(&s)
            .map(Some)
            .ok_or_else(|| de::Error::custom(format!("expected a boolean, got {s:?}"))),
        other => Err(de::Error::custom(format!(
            "expected a boolean, got {}",
            kind(&other)
        ))),
    }
}

/// Serde helper for optional counts: `null`, a non-negative integer, or a string holding one.
pub(crate) fn de_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Value::deserialize(d)?;
    let n = match &v {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match n {
        Some(n) => Ok(Some(n)),
        None => Err(de::Error::custom(format!(
            "expected a non-negative integer, got {}",
            kind(&v)
        ))),
    }
}

/// Serde helper for optional durations: `null` or anything [`parse_duration`] accepts.
pub(crate) fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => parse_duration(&v).map(Some).map_err(de::Error::custom),
    }
}
