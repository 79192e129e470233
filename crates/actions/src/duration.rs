//! Durations in action configurations are parsed by the model's one parser
//! (`taskhook_model::duration`); this module adds the JSON type names used in messages.

use serde_json::Value;

pub use taskhook_model::duration::parse_duration;

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
