//! The JSON Schema (draft-07) of a template document, for editors: generated from the types
//! [`Template::parse`](crate::Template::parse) reads (their doc comments are its
//! descriptions, their enums its enums), so it cannot drift from the parser.
//! `taskhook template schema` prints it; `docs/template-schema.json` is that output.
//!
//! It describes every document the server reads: taskhook's own form, and µTask's habits
//! ([`crate::utask`]) on top of it: a `null` for any field that may be left out, the µTask-only
//! fields of [`crate::utask::SCHEMA_EXTRAS`] and the step fields µTask writes at run time,
//! condition types and operators in any case, numbers and booleans as assertion values, an
//! empty `foreach_strategy`, `retry_pattern` or input `type`, a negative `max_retries`. It
//! checks the document's structure; names, references between steps, the templated strings
//! and each action's configuration are checked when the template is validated.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::Template;

/// The template schema, with `action_types` (the server's builtin actions) offered for an
/// action's `type` beside function names.
pub fn template_schema(action_types: &[&str]) -> Value {
    let mut doc = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<Template>()
        .to_value();
    let root = doc.as_object_mut().expect("a root schema is an object");
    root.insert("title".into(), json!("taskhook template"));
    let mut defs = match root.remove("definitions") {
        Some(Value::Object(d)) => d,
        _ => Map::new(),
    };

    // An action's type: a builtin action, or a function.
    if let Some(kind) = property(&mut defs, "Action", "type") {
        let description = kind.get("description").cloned();
        *kind = json!({
            "anyOf": [
                {"enum": action_types, "description": "a builtin action"},
                {
                    "type": "string",
                    "pattern": crate::name::function_pattern(),
                    "description": "a function of the template's `functions` or of the server's library",
                },
            ],
        });
        if let Some(d) = description {
            kind["description"] = d;
        }
    }
    // What a condition sets: builtin states, or a custom state of the step.
    if let Some(then) = property(&mut defs, "Condition", "then") {
        then["additionalProperties"] = json!({
            "anyOf": [
                {"enum": crate::validate::CONDITION_STATES},
                {"type": "string", "description": "a custom state of the step"},
            ],
        });
    }

    utask_habits(&mut defs, root);
    root.insert("definitions".into(), Value::Object(defs));
    // What the schema is, first.
    let mut ordered = Map::new();
    for k in ["$schema", "title", "description"] {
        if let Some(v) = root.remove(k) {
            ordered.insert(k.into(), v);
        }
    }
    ordered.append(root);
    let mut doc = Value::Object(ordered);
    unwrap_descriptions(&mut doc);
    doc
}

/// Doc comments are wrapped at 100 columns; a description is one paragraph per line.
fn unwrap_descriptions(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                match child {
                    Value::String(d) if k == "description" => {
                        *d = d
                            .split("\n\n")
                            .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// The schema of property `field` of definition `def` (`Template`: the root's).
fn property<'a>(defs: &'a mut Map<String, Value>, def: &str, field: &str) -> Option<&'a mut Value> {
    defs.get_mut(def)?.get_mut("properties")?.get_mut(field)
}

/// Widens the schema of taskhook's form to what µTask's documents write (see the module
/// documentation).
fn utask_habits(defs: &mut Map<String, Value>, root: &mut Map<String, Value>) {
    // Enums written in any case.
    for def in ["ConditionKind", "Operator"] {
        if let Some(d) = defs.get_mut(def) {
            let ci = case_insensitive(d);
            widen(d, ci);
        }
    }
    // Enums left empty: absent.
    for def in ["ForeachStrategy", "RetryPattern", "InputType"] {
        if let Some(d) = defs.get_mut(def) {
            widen(
                d,
                json!({"const": "", "description": "empty: the default (µTask)"}),
            );
        }
    }
    if let Some(p) = property(defs, "Step", "max_retries") {
        widen(
            p,
            json!({"type": "integer", "maximum": -1, "description": "negative: no limit (µTask)"}),
        );
    }
    for field in ["value", "expected"] {
        if let Some(p) = property(defs, "Assert", field) {
            widen(
                p,
                json!({"type": ["number", "boolean"], "description": "compared as its text (µTask)"}),
            );
        }
    }
    // µTask's own fields.
    let mut extras: Vec<(&str, &str, Value)> = crate::utask::SCHEMA_EXTRAS
        .iter()
        .map(|(def, field, kind, description)| {
            let mut s = json!({"description": description});
            if *kind != "any" {
                s["type"] = json!([kind, "null"]);
            }
            if *kind == "array" {
                s["items"] = json!({"type": "string"});
            }
            (*def, *field, s)
        })
        .collect();
    for field in crate::utask::STEP_RUNTIME_FIELDS {
        extras.push((
            "Step",
            field,
            json!({"description": "written by µTask while a task runs: ignored"}),
        ));
    }
    for (def, field, schema) in extras {
        let owner = if def == "Template" {
            Some(&mut *root)
        } else {
            defs.get_mut(def).and_then(Value::as_object_mut)
        };
        if let Some(Value::Object(props)) = owner.and_then(|o| o.get_mut("properties")) {
            props.entry(field).or_insert(schema);
        }
    }
    // `null` for every field that may be left out.
    nullable_optionals(root);
    for d in defs.values_mut() {
        if let Some(d) = d.as_object_mut() {
            nullable_optionals(d);
        }
    }
}

/// Lets every property of `object` that is not required be `null`.
fn nullable_optionals(object: &mut Map<String, Value>) {
    let required: Vec<String> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let Some(Value::Object(props)) = object.get_mut("properties") else {
        return;
    };
    for (name, p) in props.iter_mut() {
        if !required.contains(name) {
            nullable(p);
        }
    }
}

/// Lets `schema` also be `null`.
fn nullable(schema: &mut Value) {
    let Value::Object(s) = schema else {
        return; // `true`: anything already
    };
    // A schema of annotations only accepts anything already.
    let annotations_only = s
        .keys()
        .all(|k| matches!(k.as_str(), "description" | "default" | "title" | "examples"));
    if annotations_only || allows_null(s) {
        return;
    }
    let plain = !["enum", "const", "anyOf", "oneOf", "allOf", "$ref"]
        .iter()
        .any(|k| s.contains_key(*k));
    match s.get_mut("type") {
        Some(Value::String(t)) if plain => {
            let t = t.clone();
            s.insert("type".into(), json!([t, "null"]));
        }
        Some(Value::Array(types)) if plain => types.push(json!("null")),
        _ => widen(schema, json!({"type": "null"})),
    }
}

fn allows_null(s: &Map<String, Value>) -> bool {
    let is_null =
        |t: &Value| t == "null" || t.as_array().is_some_and(|a| a.contains(&json!("null")));
    s.get("type").is_some_and(is_null)
        || ["anyOf", "oneOf"].iter().any(|k| {
            s.get(*k)
                .and_then(Value::as_array)
                .is_some_and(|alts| alts.iter().any(|a| a.get("type").is_some_and(is_null)))
        })
}

/// Makes `schema` accept what `alternative` accepts too: `anyOf` the two, the description
/// and default kept outside, where editors show them.
fn widen(schema: &mut Value, alternative: Value) {
    let Value::Object(s) = schema else {
        return;
    };
    let mut outer = Map::new();
    for k in ["description", "default", "title"] {
        if let Some(v) = s.remove(k) {
            outer.insert(k.into(), v);
        }
    }
    let inner = std::mem::take(s);
    let mut alts = match inner.get("anyOf") {
        Some(Value::Array(a)) if inner.len() == 1 => a.clone(),
        _ => vec![Value::Object(inner)],
    };
    alts.push(alternative);
    outer.insert("anyOf".into(), Value::Array(alts));
    *s = outer;
}

/// A schema matching the string values of an enum schema in any case.
fn case_insensitive(enum_schema: &Value) -> Value {
    let mut values = Vec::new();
    collect_strings(enum_schema, &mut values);
    let alternatives: Vec<String> = values
        .iter()
        .map(|v| {
            v.chars()
                .map(|c| {
                    let (l, u) = (c.to_ascii_lowercase(), c.to_ascii_uppercase());
                    if l == u {
                        regex_escape(c)
                    } else {
                        format!("[{u}{l}]")
                    }
                })
                .collect()
        })
        .collect();
    json!({
        "type": "string",
        "pattern": format!("^(?:{})$", alternatives.join("|")),
        "description": "in any case (µTask)",
    })
}

/// The `enum` and `const` strings of a schema and its alternatives.
fn collect_strings(schema: &Value, out: &mut Vec<String>) {
    if let Some(Value::String(c)) = schema.get("const") {
        out.push(c.clone());
    }
    if let Some(Value::Array(e)) = schema.get("enum") {
        out.extend(e.iter().filter_map(|v| v.as_str().map(String::from)));
    }
    for k in ["oneOf", "anyOf"] {
        if let Some(Value::Array(alts)) = schema.get(k) {
            alts.iter().for_each(|a| collect_strings(a, out));
        }
    }
}

fn regex_escape(c: char) -> String {
    if c.is_ascii_alphanumeric() || c == '_' {
        c.to_string()
    } else {
        format!("\\{c}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> jsonschema::Validator {
        jsonschema::validator_for(&template_schema(&["echo", "http"])).unwrap()
    }

    fn errors(v: &jsonschema::Validator, yaml: &str) -> Vec<String> {
        let doc = crate::template::read_document(yaml).unwrap();
        v.iter_errors(&doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    #[test]
    fn taskhook_and_utask_forms_are_accepted() {
        let v = validator();
        let taskhook = "name: t\nlanguage: jinja\ndescription: d\ninputs: [{name: a, type: number, default: 1}]\n\
            steps:\n  s:\n    action: {type: echo, configuration: {output: 1}, output: {strategy: merge, format: {}}}\n    \
            foreach_strategy: sequence\n    retry_pattern: hours\n    max_retries: 3\n    \
            conditions: [{type: check, if: [{value: x, operator: REGEXP, expected: y}], then: {this: DONE}, foreach: parent}]\n";
        assert_eq!(errors(&v, taskhook), Vec::<String>::new());
        let utask = "name: T\ndescription:\nallowed_resolver_groups: [ops]\nallow_task_start_over: false\n\
            inputs:\n- name: a\n  description:\n  type:\n  hidden: true\n\
            steps:\n  s:\n    description:\n    name: s\n    state: TODO\n    max_retries: -1\n    foreach_strategy: ''\n    \
            tags: {k: v}\n    execution_delay: 0\n    \
            action: {type: fn-x, base_output: {a: 1}, base_configuration: '', configuration: {output: null}}\n    \
            conditions: [{type: SKIP, if: [{value: 1, operator: eq, expected: true, message: m}], then: {this: MY_STATE}}]\n";
        assert_eq!(errors(&v, utask), Vec::<String>::new());
        // The schema accepts what the parser reads.
        crate::Template::parse(utask).unwrap();
    }

    #[test]
    fn typos_and_wrong_types_are_refused_with_their_path() {
        let v = validator();
        for (yaml, path) in [
            ("name: t\nstepz: {}\n", ""),
            (
                "name: t\nsteps: {s: {action: {type: echo, configurashun: {}}}}\n",
                "/steps/s/action",
            ),
            (
                "name: t\nsteps: {s: {action: {type: echo}, retry_pattern: days}}\n",
                "/steps/s/retry_pattern",
            ),
            (
                "name: t\nsteps: {s: {action: {type: echo}, conditions: [{type: maybe, if: [], then: {}}]}}\n",
                "/steps/s/conditions/0/type",
            ),
            (
                "name: t\nsteps: {s: {action: {type: echo}, conditions: [{type: skip, if: [{value: a, operator: LIKE}], then: {}}]}}\n",
                "/steps/s/conditions/0/if/0/operator",
            ),
            (
                "name: t\nauto_runnable: yes please\nsteps: {}\n",
                "/auto_runnable",
            ),
            ("description: no name\n", ""),
        ] {
            let e = errors(&v, yaml);
            assert!(
                e.iter().any(|e| e.starts_with(&format!("{path}:"))),
                "{yaml}: {e:?}"
            );
        }
    }

    /// Each µTask-only field the schema offers is one the parser reads.
    #[test]
    fn every_utask_extra_reads() {
        for (def, field, kind, _) in crate::utask::SCHEMA_EXTRAS {
            let value = match *kind {
                "array" => "[x]",
                "boolean" => "true",
                "object" => "{k: v}",
                "number" => "1",
                _ => "x",
            };
            let yaml = match *def {
                "Template" => {
                    format!("name: t\n{field}: {value}\nsteps: {{s: {{action: {{type: echo}}}}}}\n")
                }
                "InputSpec" => format!(
                    "name: t\ninputs: [{{name: a, {field}: {value}}}]\nsteps: {{s: {{action: {{type: echo}}}}}}\n"
                ),
                "Step" => {
                    format!("name: t\nsteps: {{s: {{{field}: {value}, action: {{type: echo}}}}}}\n")
                }
                "Action" => {
                    format!("name: t\nsteps: {{s: {{action: {{type: echo, {field}: {value}}}}}}}\n")
                }
                "Assert" => format!(
                    "name: t\nsteps: {{s: {{action: {{type: echo}}, conditions: [{{type: skip, if: [{{value: a, operator: EQ, {field}: {value}}}], then: {{this: DONE}}}}]}}}}\n"
                ),
                other => panic!("no sample document for {other}"),
            };
            crate::Template::parse(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
            assert_eq!(errors(&validator(), &yaml), Vec::<String>::new(), "{yaml}");
        }
    }
}
