//! API shapes, separate from the store's rows: conversions happen here, at the boundary.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use taskhook_model::Template;
use taskhook_store::{StepRow, TaskEvent, TaskRow, TemplateRow};
use utoipa::ToSchema;

/// Unix milliseconds as RFC 3339.
pub fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskRequest {
    pub template: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub inputs: Value,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Same key and template: the existing task is returned with 200.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Start no earlier than this time (RFC 3339).
    #[serde(default)]
    pub run_at: Option<String>,
    /// Users who may read, resolve and retry this task, besides the template's resolvers.
    #[serde(default)]
    pub resolver_usernames: Vec<String>,
    /// Users who may read this task.
    #[serde(default)]
    pub watcher_usernames: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    #[serde(default)]
    #[schema(value_type = Object)]
    pub resolver_inputs: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskCreated {
    pub id: String,
    pub state: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateOut {
    pub name: String,
    pub version: i64,
    pub updated_at: String,
    #[schema(value_type = Object)]
    pub template: Value,
}

impl From<TemplateRow> for TemplateOut {
    fn from(r: TemplateRow) -> Self {
        TemplateOut {
            name: r.name,
            version: r.version,
            updated_at: time(r.created_at),
            template: r.body,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateSummary {
    pub name: String,
    pub version: i64,
    pub description: String,
    pub auto_runnable: bool,
    pub blocked: bool,
}

impl TemplateSummary {
    pub fn from_row(r: &TemplateRow) -> Option<(Self, bool)> {
        let t: Template = serde_json::from_value(r.body.clone()).ok()?;
        Some((
            TemplateSummary {
                name: r.name.clone(),
                version: r.version,
                description: t.description,
                auto_runnable: t.auto_runnable,
                blocked: t.blocked,
            },
            t.hidden,
        ))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepOut {
    pub state: String,
    /// Any JSON value, `null` when there is none.
    pub output: Value,
    /// Any JSON value, `null` when there is none.
    pub metadata: Value,
    pub error: Option<String>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreach_parent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Any JSON value, `null` when there is none.
    pub item: Option<Value>,
}

impl From<StepRow> for StepOut {
    fn from(s: StepRow) -> Self {
        StepOut {
            state: s.state.as_str().to_string(),
            output: s.output,
            metadata: s.metadata,
            error: s.error,
            attempts: s.attempts,
            next_retry_at: s.next_retry_at.map(time),
            foreach_parent: s.foreach_parent,
            item: s.item,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskOut {
    pub id: String,
    pub template: String,
    pub template_version: i64,
    pub title: String,
    pub state: String,
    /// Why a BLOCKED task is blocked: `crashed`, `crash_loop`, `failed_steps`, `retry_max`,
    /// `deadlock` or `template` (the full reason is in its events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_reason: Option<String>,
    #[schema(value_type = Object)]
    pub inputs: Value,
    #[schema(value_type = Object)]
    pub resolver_inputs: Value,
    /// Any JSON value, `null` when there is none.
    pub result: Value,
    #[schema(value_type = Object)]
    pub tags: Value,
    pub requester: String,
    /// Users named on this task who may read, resolve and retry it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resolver_usernames: Vec<String>,
    /// Users named on this task who may read it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub watcher_usernames: Vec<String>,
    pub parent_id: Option<String>,
    pub run_count: u32,
    pub run_max: u32,
    pub next_run_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<BTreeMap<String, StepOut>>,
}

impl TaskOut {
    /// `template` (when still readable) tells which inputs are passwords, to mask them.
    pub fn new(t: TaskRow, steps: Option<Vec<StepRow>>, template: Option<&Template>) -> Self {
        let mut inputs = t.inputs;
        let mut resolver_inputs = t.resolver_inputs;
        if let Some(tpl) = template {
            taskhook_model::input::mask_passwords(&tpl.inputs, &mut inputs);
            taskhook_model::input::mask_passwords(&tpl.resolver_inputs, &mut resolver_inputs);
        }
        TaskOut {
            id: t.id,
            template: t.template,
            template_version: t.template_version,
            title: t.title,
            state: t.state.as_str().to_string(),
            blocked_reason: t.blocked_reason,
            inputs,
            resolver_inputs,
            result: t.result,
            tags: t.tags,
            requester: t.requester,
            resolver_usernames: t.people.resolvers,
            watcher_usernames: t.people.watchers,
            parent_id: t.parent_id,
            run_count: t.run_count,
            run_max: t.run_max,
            next_run_at: t.due_at.map(time),
            created_at: time(t.created_at),
            updated_at: time(t.updated_at),
            steps: steps.map(|s| {
                s.into_iter()
                    .map(|s| (s.name.clone(), StepOut::from(s)))
                    .collect()
            }),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskPage {
    pub tasks: Vec<TaskOut>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventOut {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub kind: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Any JSON value, `null` when there is none.
    pub detail: Value,
}

impl From<TaskEvent> for EventOut {
    fn from(e: TaskEvent) -> Self {
        EventOut {
            seq: e.seq,
            at: time(e.at),
            actor: e.actor,
            kind: e.kind,
            from: e.from_state,
            to: e.to_state,
            detail: e.detail,
        }
    }
}
