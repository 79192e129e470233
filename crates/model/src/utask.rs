//! µTask's YAML habits, read as taskhook's template language: applied to every template and
//! function document before it is typed, so a µTask document needs no edit.
//!
//! µTask reads documents through Go's `encoding/json`, so it takes `null` for "absent" (a bare
//! `description:`), ignores fields it does not know and accepts some spellings taskhook would
//! refuse. What it means, taskhook does here on the raw document:
//!
//! - a `null` field of the template's own structure is an absent one (values inside
//!   `configuration`, `output`, `result_format` and the like are left as written);
//! - an action's `base_output` (µTask's older form) is `output: {strategy: merge, format: …}`;
//! - condition `type`s in any case, assertion `operator`s in any case, a number or boolean
//!   as an assertion's `value` or `expected` is its text;
//! - YAML indented with tabs (which µTask's YAML reader takes) is read with each leading tab
//!   as four spaces;
//! - an empty `foreach_strategy`, `retry_pattern`, input `type` or `base_configuration` is an
//!   absent one; a negative `max_retries` (µTask: no limit) is the largest count;
//! - fields µTask keeps on a step at run time (`name`, `state`, `output`, `children`, …) are
//!   dropped when a document carries them;
//! - a template's name is µTask's identifier for it ([`template_name`]: trimmed, in lower
//!   case), for a document read through these habits or written in Go templates (see
//!   [`crate::Template::parse_with_notes`]); taskhook's own names keep their case.
//!
//! The published template schema ([`crate::schema`]) accepts these habits too: [`SCHEMA_EXTRAS`]
//! lists the fields it adds for them.
//!
//! Fields µTask acts on and taskhook does not are accepted and reported as notes (with their
//! path), so that a check of a µTask directory says what will not take effect; the notes never
//! cover a behaviour that would silently weaken a guarantee: unknown fields anywhere else are
//! still refused.

use serde_json::{Map, Value};

/// What normalising a document found: fields accepted that have no effect in taskhook.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Notes(pub Vec<String>);

impl Notes {
    fn add(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(format!("{path}: {}", message.into()));
    }
}

/// A template's name as µTask makes it its identifier (`utils.NormalizeName`): surrounding
/// spaces trimmed, letters in lower case. `Hello-World` is `hello-world` in every URL.
pub fn template_name(name: &str) -> String {
    name.trim().to_lowercase()
}

/// The fields a µTask document may carry that taskhook's own form has not, as the template
/// schema describes them: the definition they belong to (`Template` is the document itself),
/// the field, the JSON type of its value (`any` for any value) and what taskhook does with it.
/// The normalisation in this module reads each of them (a test checks it).
pub const SCHEMA_EXTRAS: &[(&str, &str, &str, &str)] = &[
    (
        "Template",
        "allowed_resolver_groups",
        "array",
        "µTask's: taskhook has no user groups, so these groups may not resolve (a note says so)",
    ),
    (
        "Template",
        "allowed_resolver_tokens",
        "array",
        "µTask's: not taken (a note says so); give the token's user a tasks:resolve scope",
    ),
    (
        "Template",
        "allow_task_start_over",
        "boolean",
        "µTask's: not taken (a note says so); rerun a task from a step instead",
    ),
    (
        "InputSpec",
        "hidden",
        "boolean",
        "µTask's: not taken (a note says so); declare the input `type: password` to mask it",
    ),
    (
        "Step",
        "tags",
        "object",
        "µTask's step tags: not added to the task in taskhook (a note says so)",
    ),
    (
        "Step",
        "execution_delay",
        "number",
        "µTask's: not taken (a note says so)",
    ),
    (
        "Action",
        "base_output",
        "any",
        "µTask's older form of `output: {strategy: merge, format: …}`",
    ),
    (
        "Assert",
        "message",
        "string",
        "µTask's per-assertion message: ignored",
    ),
];

/// Step fields µTask writes while a task runs; a template that carries them (e.g. exported
/// from a resolution) means nothing by them.
pub const STEP_RUNTIME_FIELDS: &[&str] = &[
    "name",
    "state",
    "output",
    "metadata",
    "children",
    "error",
    "try_count",
    "last_run",
    "children_steps",
    "children_steps_map",
    "item",
];

/// Normalises a template document in place (see the module documentation).
pub fn template(doc: &mut Value, notes: &mut Notes) {
    let Some(root) = doc.as_object_mut() else {
        return;
    };
    drop_nulls(root);
    if let Some(groups) = root.remove("allowed_resolver_groups")
        && groups.as_array().is_some_and(|g| !g.is_empty())
    {
        notes.add(
            "allowed_resolver_groups",
            "taskhook has no user groups: these groups may not resolve; name the people in \
             allowed_resolver_usernames or give them a tasks:resolve scope",
        );
    }
    if let Some(tokens) = root.remove("allowed_resolver_tokens")
        && tokens.as_array().is_some_and(|t| !t.is_empty())
    {
        notes.add(
            "allowed_resolver_tokens",
            "not taken: give the token's user a tasks:resolve scope, or name it in allowed_resolver_usernames",
        );
    }
    if let Some(start_over) = root.remove("allow_task_start_over")
        && start_over == Value::Bool(true)
    {
        notes.add(
            "allow_task_start_over",
            "not taken: rerun a BLOCKED or PAUSED task from a step (task rerun), or create a new task",
        );
    }
    for list in ["inputs", "resolver_inputs"] {
        for (i, input) in items(root, list) {
            drop_nulls(input);
            drop_empty_string(input, "type");
            if let Some(hidden) = input.remove("hidden")
                && hidden == Value::Bool(true)
            {
                notes.add(
                    &format!("{list}[{i}].hidden"),
                    "not hidden in taskhook; declare it `type: password` to mask its value",
                );
            }
        }
    }
    for (_, variable) in items(root, "variables") {
        drop_nulls(variable);
    }
    if let Some(Value::Object(steps)) = root.get_mut("steps") {
        for (name, step) in steps.iter_mut() {
            if let Some(step) = step.as_object_mut() {
                self::step(&format!("steps.{name}"), step, notes);
            }
        }
    }
    if let Some(Value::Object(functions)) = root.get_mut("functions") {
        for (name, f) in functions.iter_mut() {
            if let Some(f) = f.as_object_mut() {
                function_body(&format!("functions.{name}"), f, notes);
            }
        }
    }
}

/// Normalises a function document in place.
pub fn function(doc: &mut Value, notes: &mut Notes) {
    if let Some(f) = doc.as_object_mut() {
        function_body("", f, notes);
    }
}

fn function_body(path: &str, f: &mut Map<String, Value>, notes: &mut Notes) {
    drop_nulls(f);
    action_fields(path, f, notes);
    conditions(f);
}

fn step(path: &str, step: &mut Map<String, Value>, notes: &mut Notes) {
    drop_nulls(step);
    for field in STEP_RUNTIME_FIELDS {
        step.remove(*field);
    }
    if let Some(tags) = step.remove("tags")
        && tags.as_object().is_some_and(|t| !t.is_empty())
    {
        notes.add(
            &format!("{path}.tags"),
            "step tags are not added to the task in taskhook",
        );
    }
    if let Some(delay) = step.remove("execution_delay")
        && !matches!(&delay, Value::Number(n) if n.as_f64() == Some(0.0))
    {
        notes.add(&format!("{path}.execution_delay"), "not taken");
    }
    drop_empty_string(step, "foreach_strategy");
    drop_empty_string(step, "retry_pattern");
    if let Some(Value::Number(n)) = step.get("max_retries")
        && n.as_i64().is_some_and(|n| n < 0)
    {
        step.insert("max_retries".into(), Value::from(u32::MAX));
    }
    action_fields(path, step, notes);
    conditions(step);
}

/// `action` and `pre_hook` of a step or a function.
fn action_fields(path: &str, owner: &mut Map<String, Value>, notes: &mut Notes) {
    for field in ["action", "pre_hook"] {
        if let Some(Value::Object(action)) = owner.get_mut(field) {
            executor(&format!("{path}.{field}"), action, notes);
        }
    }
}

fn executor(_path: &str, action: &mut Map<String, Value>, _notes: &mut Notes) {
    drop_nulls(action);
    drop_empty_string(action, "base_configuration");
    if let Some(base) = action.remove("base_output")
        && !action.contains_key("output")
    {
        action.insert(
            "output".into(),
            serde_json::json!({"strategy": "merge", "format": base}),
        );
    }
}

fn conditions(owner: &mut Map<String, Value>) {
    for (_, condition) in items(owner, "conditions") {
        drop_nulls(condition);
        if let Some(Value::String(kind)) = condition.get_mut("type") {
            *kind = kind.to_ascii_lowercase();
        }
        if let Some(Value::Array(asserts)) = condition.get_mut("if") {
            for assert in asserts.iter_mut().filter_map(Value::as_object_mut) {
                drop_nulls(assert);
                if let Some(Value::String(op)) = assert.get_mut("operator") {
                    *op = op.to_ascii_uppercase();
                }
                // `expected: 1` is the text "1", as µTask compares it.
                for field in ["value", "expected"] {
                    if let Some(v @ (Value::Number(_) | Value::Bool(_))) = assert.get_mut(field) {
                        *v = Value::String(v.to_string());
                    }
                }
                // µTask's per-assertion message only reaches its logs.
                assert.remove("message");
            }
        }
    }
}

/// The objects of the list `field` of `owner`, with their index.
fn items<'a>(
    owner: &'a mut Map<String, Value>,
    field: &str,
) -> impl Iterator<Item = (usize, &'a mut Map<String, Value>)> + 'a {
    owner
        .get_mut(field)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
        .enumerate()
}

fn drop_nulls(map: &mut Map<String, Value>) {
    map.retain(|_, v| !v.is_null());
}

fn drop_empty_string(map: &mut Map<String, Value>, field: &str) {
    if map.get(field).and_then(Value::as_str) == Some("") {
        map.remove(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_utask_document_is_read_as_taskhook_means_it() {
        let mut doc = json!({
            "name": "t", "description": null, "allowed_resolver_groups": ["ops"],
            "allow_task_start_over": false,
            "inputs": [{"name": "a", "type": "", "hidden": true, "regex": null}],
            "steps": {"s": {
                "description": null, "name": "s", "state": "TODO", "max_retries": -1,
                "foreach_strategy": "", "tags": {"k": "v"},
                "action": {"type": "echo", "configuration": {"output": null}, "base_output": {"x": 1}},
                "conditions": [{"type": "SKIP", "if": [{"value": 1, "operator": "eq", "expected": true, "message": "m"}], "then": {"this": "PRUNE"}}],
            }},
        });
        let mut notes = Notes::default();
        template(&mut doc, &mut notes);
        assert_eq!(
            doc,
            json!({
                "name": "t",
                "inputs": [{"name": "a"}],
                "steps": {"s": {
                    "max_retries": u32::MAX,
                    "action": {"type": "echo", "configuration": {"output": null},
                               "output": {"strategy": "merge", "format": {"x": 1}}},
                    "conditions": [{"type": "skip", "if": [{"value": "1", "operator": "EQ", "expected": "true"}], "then": {"this": "PRUNE"}}],
                }},
            })
        );
        let paths: Vec<&str> = notes
            .0
            .iter()
            .map(|n| n.split(':').next().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "allowed_resolver_groups",
                "inputs[0].hidden",
                "steps.s.tags"
            ]
        );
    }

    #[test]
    fn an_explicit_output_wins_over_base_output() {
        let mut doc = json!({"action": {"type": "echo", "base_output": {"a": 1},
                                         "output": {"strategy": "template", "format": {}}}});
        function(&mut doc, &mut Notes::default());
        assert_eq!(
            doc["action"],
            json!({"type": "echo", "output": {"strategy": "template", "format": {}}})
        );
    }
}
