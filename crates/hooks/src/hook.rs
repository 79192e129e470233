//! A hook: the binding from triggers (API, secret token, provider webhook, schedule) to a
//! template, with a filter and an input mapping over the event. Parsing, validation and the
//! decision for one event are pure; storing fires and tasks is the engine's job.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::schedule::{Misfire, Schedule};
use crate::signature::{WebhookSettings, validate_settings};
use crate::source::{SourceSpec, validate_sources};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HookMetadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub email_on_error: bool,
}

/// What to do when a scheduled fire comes due while this hook's previous task still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Start another task anyway.
    #[default]
    Allow,
    /// Record the fire as skipped; start nothing.
    Skip,
    /// Record the fire as queued; its task starts when the previous one ends.
    Queue,
}

/// A hook document, as written by its owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    #[serde(default)]
    pub metadata: HookMetadata,
    /// The template each fire starts a task from.
    pub template: String,
    /// The task's inputs: an object whose string values are templated over `event`, or one
    /// `{{ expression }}` giving the whole object. Rendering to `null` declines the fire.
    #[serde(default = "empty_object")]
    pub inputs: Value,
    /// A MiniJinja expression over `event`; false means no task (the fire is `filtered`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// JSON Schema the payload must satisfy; a payload failing it is refused with 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_schema: Option<Value>,
    /// Cron expressions (5 or 6 fields) in `timezone`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<String>,
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default)]
    pub misfire: Misfire,
    /// Most missed due times `catch_up` fires after downtime.
    #[serde(default = "default_catch_up_max")]
    pub catch_up_max: u32,
    #[serde(default)]
    pub overlap: Overlap,
    /// Provider webhook settings (`provider` and `secret`); the secret is never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSettings>,
    /// Message-broker and repository subscriptions that fire the hook (see
    /// [`crate::source`]); passwords in their URLs are never returned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceSpec>,
    /// HTTP methods the secret-token trigger accepts (default POST).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Repeated deliveries (same delivery id) within this many seconds return the first fire.
    #[serde(default = "default_dedupe_window")]
    pub dedupe_window_seconds: u64,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// What the hook may do when it fires (the role it acts with); default
    /// `["tasks:create:<template>"]`. A fire whose scopes do not grant
    /// `tasks:create:<template>` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}
fn utc() -> String {
    "UTC".into()
}
fn default_catch_up_max() -> u32 {
    100
}
fn default_methods() -> Vec<String> {
    vec!["POST".into()]
}
fn default_dedupe_window() -> u64 {
    86_400
}
fn yes() -> bool {
    true
}

/// A problem with a hook document, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct HookError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> HookError {
    HookError {
        field: field.into(),
        message: message.into(),
    }
}

/// The longest delivery dedupe window: ten years, in seconds.
pub const MAX_DEDUPE_WINDOW_SECONDS: u64 = taskhook_model::duration::TEN_YEARS.as_secs();

/// Longest hook `group` or `id`.
pub const MAX_HOOK_PART_LEN: usize = 64;

/// `group` and `id`: names as URLs carry them ([`taskhook_model::name`]), of at most
/// [`MAX_HOOK_PART_LEN`] characters.
pub fn valid_hook_part(s: &str) -> bool {
    taskhook_model::name::is_valid(s, MAX_HOOK_PART_LEN)
}

impl Hook {
    /// Parses a YAML or JSON hook document.
    pub fn parse(text: &str) -> Result<Hook, HookError> {
        taskhook_model::template::parse_document(text).map_err(|e| err("hook", e.message))
    }

    /// Checks everything that can be checked without the template: expressions, schedules,
    /// the time zone, the schema and the webhook settings.
    pub fn validate(&self) -> Result<(), HookError> {
        let r = taskhook_expr::renderer();
        if self.template.trim().is_empty() {
            return Err(err("template", "a hook must name the template it starts"));
        }
        if let Some(f) = &self.filter {
            r.check_expression(f)
                .map_err(|e| err("filter", format!("invalid expression: {e}")))?;
        }
        check_templates(&self.inputs, "inputs")?;
        if let Some(schema) = &self.trigger_schema {
            jsonschema::validator_for(schema)
                .map_err(|e| err("trigger_schema", format!("invalid JSON Schema: {e}")))?;
        }
        for (i, expr) in self.schedule.iter().enumerate() {
            Schedule::parse(expr, &self.timezone).map_err(|e| {
                let field = if e.to_string().contains("time zone") {
                    "timezone".to_string()
                } else {
                    format!("schedule[{i}]")
                };
                err(field, e.to_string())
            })?;
        }
        if self.schedule.is_empty() {
            // The time zone is only used by schedules, but a typo should still be caught.
            Schedule::parse("0 0 * * *", &self.timezone)
                .map_err(|e| err("timezone", e.to_string()))?;
        }
        if self.dedupe_window_seconds > MAX_DEDUPE_WINDOW_SECONDS {
            return Err(err(
                "dedupe_window_seconds",
                format!("at most {MAX_DEDUPE_WINDOW_SECONDS} (10 years)"),
            ));
        }
        if self.catch_up_max == 0 || self.catch_up_max > 10_000 {
            return Err(err("catch_up_max", "must be between 1 and 10000"));
        }
        if let Some(w) = &self.webhook {
            validate_settings(w).map_err(|e| err(format!("webhook.{}", e.field), e.message))?;
        }
        validate_sources(&self.sources)?;
        for (i, s) in self.scopes.iter().flatten().enumerate() {
            taskhook_model::scope::check(s).map_err(|e| err(format!("scopes[{i}]"), e))?;
        }
        for (i, m) in self.methods.iter().enumerate() {
            if !matches!(m.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
                return Err(err(
                    format!("methods[{i}]"),
                    format!("{m:?} is not one of GET, POST, PUT, PATCH, DELETE"),
                ));
            }
        }
        Ok(())
    }

    /// The parsed schedules (valid after [`Hook::validate`]).
    pub fn schedules(&self) -> Vec<Schedule> {
        self.schedule
            .iter()
            .filter_map(|e| Schedule::parse(e, &self.timezone).ok())
            .collect()
    }

    /// The scopes the hook acts with: its `scopes`, or `tasks:create:<template>`.
    pub fn effective_scopes(&self) -> Vec<String> {
        self.scopes
            .clone()
            .unwrap_or_else(|| vec![format!("tasks:create:{}", self.template)])
    }

    /// The error of a fire the hook's scopes do not allow, if they do not.
    pub fn scope_error(&self) -> Option<String> {
        let needed = format!("tasks:create:{}", self.template);
        (!taskhook_model::scope::satisfies(&self.effective_scopes(), &needed)).then(|| {
            format!("the hook's scopes do not grant {needed:?}, so it may not create the task")
        })
    }

    /// The hook as the API shows it: webhook secrets and passwords in source URLs masked.
    pub fn redacted(&self) -> Hook {
        Hook {
            webhook: self.webhook.as_ref().map(|w| w.redacted()),
            sources: self.sources.iter().map(SourceSpec::redacted).collect(),
            ..self.clone()
        }
    }
}

fn check_templates(v: &Value, field: &str) -> Result<(), HookError> {
    match v {
        Value::String(s) if taskhook_expr::is_templated(s) => taskhook_expr::renderer()
            .references(s)
            .map(|_| ())
            .map_err(|e| err(field, format!("templating error: {e}"))),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| check_templates(x, &format!("{field}[{i}]"))),
        Value::Object(m) => m
            .iter()
            .try_for_each(|(k, x)| check_templates(x, &format!("{field}.{k}"))),
        _ => Ok(()),
    }
}

/// One occurrence that reached a hook.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Event {
    /// `api`, `token`, `webhook`, `schedule`, `test`.
    pub fired_by: String,
    pub payload: Value,
    pub headers: BTreeMap<String, String>,
    pub query: BTreeMap<String, String>,
    pub method: String,
    /// For schedules: the due time (RFC 3339).
    pub scheduled_for: Option<String>,
    /// Who or what sent it: the caller, the provider, `schedule`.
    pub source: String,
    /// The provider's event name (e.g. `push`), for webhooks.
    pub event: Option<String>,
    /// The provider's delivery id, for webhooks.
    pub delivery_id: Option<String>,
    /// The sender vouches that this is the message's first delivery (MQTT's DUP flag is
    /// clear): its delivery id is recorded, so a later redelivery finds it, but it is not
    /// checked against earlier fires (MQTT packet ids are reused, so two different messages
    /// may share one).
    #[serde(skip)]
    pub first_delivery: bool,
}

/// What one event does to a hook.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start a task with these inputs.
    Create(Value),
    /// The filter said no.
    Filtered,
    /// The mapping rendered to null.
    Declined,
}

/// Applies the filter and the input mapping to an event. An `Err` is a fire with result
/// `error` (a bad expression at run time, a mapping that is not an object).
pub fn decide(hook: &Hook, event: &Event) -> Result<Decision, String> {
    let r = taskhook_expr::renderer();
    let ctx = json!({"event": event});
    if let Some(f) = &hook.filter {
        let v = r.eval(f, &ctx).map_err(|e| format!("filter: {e}"))?;
        if !truthy(&v) {
            return Ok(Decision::Filtered);
        }
    }
    let inputs = r
        .render_value(&hook.inputs, &ctx)
        .map_err(|e| format!("inputs: {e}"))?;
    match inputs {
        Value::Null => Ok(Decision::Declined),
        Value::Object(_) => Ok(Decision::Create(inputs)),
        other => Err(format!(
            "inputs must render to an object (or null to decline), got {other}"
        )),
    }
}

/// Jinja truthiness over JSON.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Checks a payload against the hook's `trigger_schema`: `Err((path, message))` names the
/// first failing place.
pub fn check_payload(hook: &Hook, payload: &Value) -> Result<(), (String, String)> {
    let Some(schema) = &hook.trigger_schema else {
        return Ok(());
    };
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| ("trigger_schema".to_string(), e.to_string()))?;
    match validator.iter_errors(payload).next() {
        None => Ok(()),
        Some(e) => {
            let path = e.instance_path().to_string();
            Err((
                if path.is_empty() {
                    "payload".into()
                } else {
                    format!("payload{}", path.replace('/', "."))
                },
                e.to_string(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(y: &str) -> Hook {
        let h = Hook::parse(y).unwrap();
        h.validate().unwrap();
        h
    }

    fn push(r: &str) -> Event {
        Event {
            fired_by: "webhook".into(),
            payload: json!({"ref": r, "repository": {"name": "app"}}),
            event: Some("push".into()),
            ..Default::default()
        }
    }

    #[test]
    fn filter_and_mapping() {
        let h = hook(
            "template: deploy\nfilter: \"event.event == 'push' and event.payload.ref == 'refs/heads/main'\"\ninputs:\n  repo: \"{{ event.payload.repository.name }}\"\n",
        );
        assert_eq!(
            decide(&h, &push("refs/heads/main")),
            Ok(Decision::Create(json!({"repo": "app"})))
        );
        assert_eq!(decide(&h, &push("refs/heads/dev")), Ok(Decision::Filtered));
    }

    #[test]
    fn a_mapping_rendering_null_declines() {
        let h = hook(
            "template: t\ninputs: \"{{ none if event.payload.ref == 'skip' else {'r': event.payload.ref} }}\"\n",
        );
        assert_eq!(decide(&h, &push("skip")), Ok(Decision::Declined));
        assert_eq!(
            decide(&h, &push("x")),
            Ok(Decision::Create(json!({"r": "x"})))
        );
    }

    #[test]
    fn run_time_errors_are_errors_not_panics() {
        let h = hook("template: t\ninputs: {x: \"{{ event.payload.missing.deeper }}\"}\n");
        assert!(decide(&h, &push("a")).unwrap_err().starts_with("inputs:"));
        let h = hook("template: t\ninputs: \"{{ event.payload.ref }}\"\n");
        assert!(
            decide(&h, &push("a"))
                .unwrap_err()
                .contains("must render to an object")
        );
    }

    #[test]
    fn invalid_documents_name_the_field() {
        let bad = |y: &str| Hook::parse(y).and_then(|h| h.validate()).unwrap_err().field;
        assert_eq!(
            bad("template: t\nschedule: ['61 * * * *']\n"),
            "schedule[0]"
        );
        assert_eq!(
            bad("template: t\nschedule: ['0 * * * *']\ntimezone: Mars/Olympus\n"),
            "timezone"
        );
        assert_eq!(bad("template: t\nfilter: 'a ==='\n"), "filter");
        assert_eq!(bad("template: t\ninputs: {a: '{{ x'}\n"), "inputs.a");
        assert_eq!(bad("template: t\nmethods: [TRACE]\n"), "methods[0]");
        assert_eq!(
            bad("template: t\ntrigger_schema: {type: 5}\n"),
            "trigger_schema"
        );
        assert_eq!(bad("template: t\nunknown: 1\n"), "hook");
    }

    #[test]
    fn payloads_are_checked_against_the_trigger_schema() {
        let h = hook(
            "template: t\ntrigger_schema: {type: object, required: [ref], properties: {ref: {type: string}}}\n",
        );
        assert_eq!(check_payload(&h, &json!({"ref": "x"})), Ok(()));
        let (path, _) = check_payload(&h, &json!({"ref": 5})).unwrap_err();
        assert_eq!(path, "payload.ref");
        assert!(check_payload(&h, &json!({})).is_err());
    }
}
