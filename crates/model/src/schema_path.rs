//! Whether a path read below a step's output (`step.X.output.a.b`) names properties the
//! step's `json_schema` lets its output have, so that a typo is refused when the template is
//! put rather than found when a task reads nothing there.
//!
//! As µTask's linting: a name is allowed where an object schema declares it in `properties`,
//! through `$ref` (local pointers: `#/definitions/x`, `#/$defs/x`) and through `allOf`,
//! `anyOf`, `oneOf`, `not`, `if`/`then`/`else` (any branch may give it); an object listing
//! `properties` without `additionalProperties` allows only those. Unlike µTask, where the
//! schema cannot tell, the path is let through: an object schema without `properties`, one
//! whose `additionalProperties` is anything but `false`, `patternProperties`, a `$ref` outside
//! the document; and each name is looked up where the path is, not wherever a property of
//! the same name is declared. So this refuses only what µTask refuses too.

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

/// A name the schema does not allow: its index in the path, and the names allowed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub at: usize,
    pub allowed: Vec<String>,
}

/// Most schema nodes looked at for one name of a path (a schema of many cross references
/// is let through past it).
const MAX_NODES: usize = 10_000;

/// Checks the names of `path` one after another against `schema`.
pub fn check(schema: &Value, path: &[&str]) -> Result<(), Refused> {
    let mut here: Vec<&Value> = vec![schema];
    for (i, name) in path.iter().enumerate() {
        let Some(nodes) = expand(schema, &here) else {
            return Ok(());
        };
        let mut allowed = BTreeSet::new();
        let mut next = Vec::new();
        for node in &nodes {
            match allows(node) {
                Allows::Anything => return Ok(()),
                Allows::Nothing => {}
                Allows::Properties(props) => {
                    allowed.extend(props.keys().map(String::as_str));
                    if let Some(sub) = props.get(*name) {
                        next.push(sub);
                    }
                }
            }
        }
        if next.is_empty() {
            return Err(Refused {
                at: i,
                allowed: allowed.into_iter().map(str::to_string).collect(),
            });
        }
        here = next;
    }
    Ok(())
}

enum Allows<'a> {
    Anything,
    Nothing,
    Properties(&'a serde_json::Map<String, Value>),
}

/// What names one schema node (its branches aside) lets an object have.
fn allows(node: &Value) -> Allows<'_> {
    let Value::Object(m) = node else {
        // `true` allows anything, `false` nothing; anything else is not a schema.
        return match node {
            Value::Bool(false) => Allows::Nothing,
            _ => Allows::Anything,
        };
    };
    if m.contains_key("patternProperties")
        || m.get("additionalProperties")
            .is_some_and(|a| a != &Value::Bool(false))
    {
        return Allows::Anything;
    }
    if let Some(Value::Object(props)) = m.get("properties") {
        return Allows::Properties(props);
    }
    const BRANCHES: [&str; 8] = [
        "$ref", "allOf", "anyOf", "oneOf", "not", "if", "then", "else",
    ];
    if BRANCHES.iter().any(|k| m.contains_key(*k)) {
        // Its branches speak for it.
        return Allows::Nothing;
    }
    let object_type = match m.get("type") {
        None => true,
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
        Some(_) => true,
    };
    if object_type {
        // An object, or anything, without properties listed.
        Allows::Anything
    } else {
        Allows::Nothing
    }
}

/// The nodes `here` stand for: each with the targets of its `$ref` and its branches,
/// recursively. `None` when a reference cannot be followed or there are too many nodes.
fn expand<'a>(root: &'a Value, here: &[&'a Value]) -> Option<Vec<&'a Value>> {
    let mut seen: HashSet<*const Value> = HashSet::new();
    let mut out = Vec::new();
    let mut todo: Vec<&Value> = here.to_vec();
    while let Some(node) = todo.pop() {
        if !seen.insert(node as *const Value) {
            continue;
        }
        if out.len() >= MAX_NODES {
            return None;
        }
        out.push(node);
        let Value::Object(m) = node else { continue };
        if let Some(r) = m.get("$ref") {
            todo.push(resolve(root, r.as_str()?)?);
        }
        for k in ["allOf", "anyOf", "oneOf"] {
            if let Some(Value::Array(items)) = m.get(k) {
                todo.extend(items.iter());
            }
        }
        for k in ["not", "if", "then", "else"] {
            if let Some(v) = m.get(k) {
                todo.push(v);
            }
        }
    }
    Some(out)
}

/// A local reference (`#`, `#/definitions/a`), as a JSON pointer into the document.
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    if !pointer.starts_with('/') {
        return None;
    }
    let decoded = percent_decode(pointer)?;
    root.pointer(&decoded)
}

fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// µTask's `lintingError.yaml` schema: recursive references, `anyOf`, nested definitions.
    fn recursive() -> Value {
        json!({
            "$id": "randomeone.schema.json",
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "definitions": {
                "foo": {
                    "type": "object",
                    "properties": {"bar": {"anyOf": [
                        {"$ref": "#/definitions/foo"},
                        {"$ref": "#/definitions/foo/definitions/baz"}
                    ]}},
                    "definitions": {"baz": {"type": "string", "minLength": 15}}
                },
                "value": {"type": "string", "maxLength": 10}
            },
            "properties": {
                "value": {"$ref": "#/definitions/value"},
                "foo": {"$ref": "#/definitions/foo"}
            }
        })
    }

    #[test]
    fn root_names_must_be_declared() {
        let s = recursive();
        assert_eq!(
            check(&s, &["notfound"]),
            Err(Refused {
                at: 0,
                allowed: vec!["foo".into(), "value".into()]
            })
        );
        assert_eq!(check(&s, &["foo"]), Ok(()));
        assert_eq!(check(&s, &["foo", "bar", "bar", "bar"]), Ok(()));
        // `bar` is a `foo` again or a string: neither has `nope`.
        assert_eq!(
            check(&s, &["foo", "bar", "nope"]),
            Err(Refused {
                at: 2,
                allowed: vec!["bar".into()]
            })
        );
        assert_eq!(
            check(&s, &["foo", "nope"]),
            Err(Refused {
                at: 1,
                allowed: vec!["bar".into()]
            })
        );
        // A string has no properties.
        assert_eq!(check(&s, &["value", "x"]).unwrap_err().at, 1);
    }

    #[test]
    fn nested_names_are_not_root_names() {
        // µTask's `lintingRootKey.yaml`: `grault` is only a property of `foo`.
        let s = json!({
            "type": "object",
            "definitions": {"foo": {"type": "object", "properties": {"grault": {"type": "string"}}}},
            "properties": {
                "foo": {"$ref": "#/definitions/foo"},
                "bar": {"type": "object", "properties": {"baz": {"type": "string"}}}
            }
        });
        assert_eq!(check(&s, &["grault"]).unwrap_err().at, 0);
        assert_eq!(check(&s, &["foo", "grault"]), Ok(()));
        assert_eq!(check(&s, &["bar", "grault"]).unwrap_err().at, 1);
    }

    #[test]
    fn open_objects_and_unknown_references_let_the_path_through() {
        for s in [
            json!({"type": "object"}),
            json!({}),
            json!(true),
            json!({"properties": {"a": {}}, "additionalProperties": true}),
            json!({"properties": {"a": {}}, "additionalProperties": {"type": "string"}}),
            json!({"properties": {"a": {}}, "patternProperties": {"^x": {}}}),
            json!({"$ref": "other.json#/definitions/a"}),
            json!({"allOf": [{"properties": {"a": {}}}, {"type": "object"}]}),
        ] {
            assert_eq!(check(&s, &["x", "y"]), Ok(()), "{s}");
        }
        for s in [
            json!({"properties": {"a": {}}, "additionalProperties": false}),
            json!({"type": "string"}),
            json!(false),
            json!({"$ref": "#/$defs/a", "$defs": {"a": {"properties": {"a": {}}}}}),
            json!({"oneOf": [{"properties": {"a": {}}}, {"type": "integer"}]}),
        ] {
            assert_eq!(check(&s, &["x"]).unwrap_err().at, 0, "{s}");
            assert_eq!(check(&s, &[]), Ok(()), "{s}");
        }
        // A reference to itself ends.
        let s = json!({"$ref": "#"});
        assert_eq!(check(&s, &["x"]).unwrap_err().at, 0);
        // Escaped pointers.
        let s = json!({"definitions": {"a/b c": {"properties": {"k": {}}}}, "$ref": "#/definitions/a~1b%20c"});
        assert_eq!(check(&s, &["k"]), Ok(()));
        assert_eq!(
            check(&s, &["j"]).unwrap_err().allowed,
            vec!["k".to_string()]
        );
    }
}
