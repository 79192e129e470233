//! µTask's shapes of templates, tasks, resolutions, steps and comments, and how taskhook's
//! states read as µTask's. Pure conversions from the store's rows; `utask_api` does the I/O.
//!
//! A taskhook task is both µTask's task and its resolution: the resolution's id is the task's
//! id, and a task has a resolution once it left `TODO` (resolved, or auto-runnable).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};
use taskhook_model::{StepState, TaskState, Template};
use taskhook_store::{Comment, StepRow, TaskEvent, TaskRow, TemplateRow};

use crate::dto::time;

/// µTask's task states, as `GET /utask/task?state=` accepts them.
pub const TASK_STATES: [&str; 8] = [
    "TODO",
    "DELAYED",
    "RUNNING",
    "WAITING",
    "BLOCKED",
    "DONE",
    "CANCELLED",
    "WONTFIX",
];

/// A task's state as µTask names it (see `docs/utask-api.md`).
pub fn task_state(t: &TaskRow, now: i64) -> &'static str {
    match t.state {
        TaskState::Ready if t.run_count == 0 && t.due_at.is_some_and(|d| d > now) => "DELAYED",
        st => state_name(st),
    }
}

/// The µTask task state a taskhook state counts as (a READY task due later shows `DELAYED`
/// in [`task_state`]).
pub fn state_name(st: TaskState) -> &'static str {
    match st {
        TaskState::Todo => "TODO",
        TaskState::Ready | TaskState::Running => "RUNNING",
        TaskState::Waiting => "WAITING",
        // A paused task waits for a person, as a blocked one does; its resolution says PAUSED.
        TaskState::Paused | TaskState::Blocked => "BLOCKED",
        TaskState::Done => "DONE",
        TaskState::Cancelled => "CANCELLED",
        TaskState::Wontfix => "WONTFIX",
    }
}

/// The one taskhook state a µTask task state stands for, when there is exactly one (then the
/// store filters by it); `None` when the listing must test each row.
pub fn store_state(utask: &str) -> Option<TaskState> {
    match utask {
        "TODO" => Some(TaskState::Todo),
        "WAITING" => Some(TaskState::Waiting),
        "DONE" => Some(TaskState::Done),
        "CANCELLED" => Some(TaskState::Cancelled),
        "WONTFIX" => Some(TaskState::Wontfix),
        _ => None,
    }
}

/// A task's resolution state as µTask names it; `None` while the task has no resolution
/// (`TODO`: waiting for a resolver).
pub fn resolution_state(t: &TaskRow, steps: &[StepRow], now: i64) -> Option<&'static str> {
    Some(match t.state {
        TaskState::Todo => return None,
        TaskState::Ready => match t.due_at {
            Some(d) if d > now && t.run_count == 0 => "TO_AUTORUN_DELAYED",
            // A run ended with steps to retry later.
            Some(d) if d > now => "ERROR",
            _ => "TO_AUTORUN",
        },
        TaskState::Running => "RUNNING",
        TaskState::Waiting => "WAITING",
        TaskState::Paused => "PAUSED",
        TaskState::Blocked => match t.blocked_reason.as_deref() {
            Some("crashed" | "crash_loop") => "BLOCKED_TOCHECK",
            Some("retry_max") => "BLOCKED_MAXRETRIES",
            Some("deadlock") => "BLOCKED_DEADLOCK",
            Some("template") => "BLOCKED_FATAL",
            _ if steps.iter().any(|s| s.state == StepState::FatalError) => "BLOCKED_FATAL",
            _ => "BLOCKED_BADREQUEST",
        },
        TaskState::Done => "DONE",
        TaskState::Cancelled => "CANCELLED",
        // Closed before it was resolved: no resolution, as in µTask; closed after a run
        // stopped for a person: its resolution ended without finishing.
        TaskState::Wontfix if t.run_count == 0 => return None,
        TaskState::Wontfix => "CANCELLED",
    })
}

/// A template as µTask shows it; `full` keeps its steps (`GET /utask/template/{name}`), a
/// listing leaves them out.
pub fn template(row: &TemplateRow, full: bool) -> Value {
    let mut out = match &row.body {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    if !full {
        for key in ["steps", "functions", "variables", "base_configurations"] {
            out.remove(key);
        }
    }
    // Members µTask always writes, even empty.
    for (key, empty) in [
        ("description", Value::String(String::new())),
        ("allowed_resolver_usernames", Value::Array(vec![])),
        ("allowed_resolver_groups", Value::Array(vec![])),
        ("allow_all_resolver_usernames", Value::Bool(false)),
        ("auto_runnable", Value::Bool(false)),
        ("blocked", Value::Bool(false)),
        ("hidden", Value::Bool(false)),
        ("allow_task_start_over", Value::Bool(false)),
    ] {
        out.entry(key).or_insert(empty);
    }
    if full {
        out.entry("base_configurations")
            .or_insert(Value::Object(Map::new()));
    }
    Value::Object(out)
}

/// µTask's comment.
#[derive(Debug, Serialize)]
pub struct CommentOut {
    pub id: String,
    pub username: String,
    pub created: String,
    pub updated: String,
    pub content: String,
}

impl From<Comment> for CommentOut {
    fn from(c: Comment) -> Self {
        CommentOut {
            id: c.id,
            username: c.author,
            created: time(c.created_at),
            updated: time(c.created_at),
            content: c.content,
        }
    }
}

/// A step that failed for the requester to fix (µTask's `errors` of a BLOCKED task).
#[derive(Debug, Serialize)]
pub struct StepError {
    pub step: String,
    pub error: String,
}

/// What a task's audit trail tells about its resolution.
#[derive(Debug, Default)]
pub struct RunTimes {
    /// Who resolved it (`resolved` event).
    pub resolver: Option<String>,
    /// When it was resolved.
    pub resolved_at: Option<i64>,
    /// When it last went RUNNING.
    pub last_start: Option<i64>,
    /// When it last left RUNNING.
    pub last_stop: Option<i64>,
}

impl RunTimes {
    pub fn from_events(events: &[TaskEvent]) -> RunTimes {
        let mut out = RunTimes::default();
        for e in events {
            if e.kind == "resolved" {
                out.resolver = Some(e.actor.clone());
                out.resolved_at = Some(e.at);
            }
            if e.to_state.as_deref() == Some("RUNNING") {
                out.last_start = Some(e.at);
            }
            if e.from_state.as_deref() == Some("RUNNING") {
                out.last_stop = Some(e.at);
            }
        }
        out
    }
}

/// µTask's task.
#[derive(Debug, Serialize)]
pub struct TaskOut {
    pub id: String,
    pub title: String,
    pub requester_username: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub watcher_usernames: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resolver_usernames: Vec<String>,
    pub created: String,
    pub state: &'static str,
    pub steps_done: usize,
    pub steps_total: usize,
    pub last_activity: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, Value>,
    pub template_name: String,
    pub input: Value,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub result: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_stop: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolver_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comments: Option<Vec<CommentOut>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<StepError>,
    /// The template's resolver inputs: what `POST /utask/resolution` asks for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resolver_inputs: Vec<Value>,
}

impl TaskOut {
    /// `template` (when still readable) masks password inputs and gives the resolver inputs;
    /// `times` and `comments` come from the task's trail (a single task's answer).
    pub fn new(
        t: TaskRow,
        steps: &[StepRow],
        template: Option<&Template>,
        times: Option<&RunTimes>,
        comments: Option<Vec<Comment>>,
        now: i64,
    ) -> TaskOut {
        let state = task_state(&t, now);
        let resolution = (t.state != TaskState::Todo).then(|| t.id.clone());
        let mut input = t.inputs.clone();
        let mut resolver_inputs = Vec::new();
        if let Some(tpl) = template {
            taskhook_model::input::mask_passwords(&tpl.inputs, &mut input);
            resolver_inputs = tpl
                .resolver_inputs
                .iter()
                .filter_map(|i| serde_json::to_value(i).ok())
                .collect();
        }
        let errors = if t.state == TaskState::Blocked {
            steps
                .iter()
                .filter(|s| s.state == StepState::ClientError)
                .map(|s| StepError {
                    step: s.name.clone(),
                    error: s.error.clone().unwrap_or_default(),
                })
                .collect()
        } else {
            vec![]
        };
        let tags = match &t.tags {
            Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            _ => BTreeMap::new(),
        };
        TaskOut {
            state,
            resolution,
            title: t.title,
            requester_username: t.requester,
            watcher_usernames: t.people.watchers,
            resolver_usernames: t.people.resolvers,
            created: time(t.created_at),
            steps_done: steps.iter().filter(|s| s.state == StepState::Done).count(),
            steps_total: steps.len(),
            last_activity: time(t.updated_at),
            tags,
            template_name: t.template,
            input,
            result: t.result,
            last_start: times.and_then(|r| r.last_start).map(time),
            last_stop: times.and_then(|r| r.last_stop).map(time),
            resolver_username: times.and_then(|r| r.resolver.clone()),
            comments: comments.map(|c| c.into_iter().map(CommentOut::from).collect()),
            errors,
            resolver_inputs,
            id: t.id,
        }
    }
}

/// µTask's step of a resolution: the template's step definition with the run's state,
/// output, metadata, error and tries.
pub fn step(row: &StepRow, template: Option<&Template>) -> Value {
    let declared = row.foreach_parent.as_deref().unwrap_or(&row.name);
    let mut out = template
        .and_then(|t| t.steps.get(declared))
        .and_then(|d| serde_json::to_value(d).ok())
        .and_then(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default();
    if row.foreach_parent.is_some() {
        // A child of a foreach is one of its items, not a loop itself.
        out.remove("foreach");
    }
    out.insert("name".into(), Value::String(row.name.clone()));
    out.entry("description")
        .or_insert(Value::String(String::new()));
    out.entry("idempotent").or_insert(Value::Bool(false));
    out.insert(
        "state".into(),
        Value::String(row.state.as_str().to_string()),
    );
    out.insert(
        "try_count".into(),
        Value::Number(serde_json::Number::from(row.attempts)),
    );
    for (key, value) in [("output", &row.output), ("metadata", &row.metadata)] {
        if !value.is_null() {
            out.insert(key.into(), value.clone());
        }
    }
    if let Some(e) = row.error.as_ref().filter(|e| !e.is_empty()) {
        out.insert("error".into(), Value::String(e.clone()));
    }
    if let Some(item) = &row.item {
        out.insert("item".into(), item.clone());
    }
    if let Some(at) = row.next_retry_at {
        out.insert("next_retry".into(), Value::String(time(at)));
    }
    Value::Object(out)
}

/// µTask's resolution of a task that has one.
#[derive(Debug, Serialize)]
pub struct ResolutionOut {
    pub id: String,
    pub task_id: String,
    pub task_title: String,
    pub resolver_username: String,
    pub state: &'static str,
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_stop: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<String>,
    pub run_count: u32,
    pub run_max: u32,
    pub base_configurations: Value,
    pub steps: BTreeMap<String, Value>,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub resolver_inputs: Value,
}

impl ResolutionOut {
    /// `None` when the task has no resolution yet.
    pub fn new(
        t: TaskRow,
        steps: &[StepRow],
        template: Option<&Template>,
        times: &RunTimes,
        now: i64,
    ) -> Option<ResolutionOut> {
        let state = resolution_state(&t, steps, now)?;
        let mut resolver_inputs = t.resolver_inputs.clone();
        if let Some(tpl) = template {
            taskhook_model::input::mask_passwords(&tpl.resolver_inputs, &mut resolver_inputs);
        }
        let base_configurations = template
            .and_then(|tpl| serde_json::to_value(&tpl.base_configurations).ok())
            .unwrap_or_else(|| Value::Object(Map::new()));
        Some(ResolutionOut {
            id: t.id.clone(),
            task_id: t.id,
            task_title: t.title,
            // An auto-runnable task is resolved by its requester, as in µTask.
            resolver_username: times.resolver.clone().unwrap_or(t.requester),
            state,
            created: time(times.resolved_at.unwrap_or(t.created_at)),
            last_start: times.last_start.map(time),
            last_stop: times.last_stop.map(time),
            next_retry: (t.state == TaskState::Ready)
                .then_some(t.due_at)
                .flatten()
                .filter(|d| *d > now)
                .map(time),
            run_count: t.run_count,
            run_max: t.run_max,
            base_configurations,
            steps: steps
                .iter()
                .map(|s| (s.name.clone(), step(s, template)))
                .collect(),
            resolver_inputs: if resolver_inputs.as_object().is_some_and(Map::is_empty) {
                Value::Null
            } else {
                resolver_inputs
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: TaskState) -> TaskRow {
        TaskRow {
            id: "t".into(),
            template: "tpl".into(),
            template_version: 1,
            title: "title".into(),
            state,
            inputs: Value::Null,
            resolver_inputs: Value::Null,
            result: Value::Null,
            tags: Value::Null,
            requester: "alice".into(),
            parent_id: None,
            idempotency_key: None,
            run_count: 0,
            run_max: 10,
            due_at: None,
            lease_epoch: 0,
            created_at: 0,
            updated_at: 0,
            people: Default::default(),
            crashes: 0,
            blocked_reason: None,
        }
    }

    #[test]
    fn states_read_as_utask_names_them() {
        let now = 1_000;
        let cases = [
            (TaskState::Todo, "TODO", None),
            (TaskState::Ready, "RUNNING", Some("TO_AUTORUN")),
            (TaskState::Running, "RUNNING", Some("RUNNING")),
            (TaskState::Waiting, "WAITING", Some("WAITING")),
            (TaskState::Paused, "BLOCKED", Some("PAUSED")),
            (TaskState::Blocked, "BLOCKED", Some("BLOCKED_BADREQUEST")),
            (TaskState::Done, "DONE", Some("DONE")),
            (TaskState::Cancelled, "CANCELLED", Some("CANCELLED")),
        ];
        for (state, utask, resolution) in cases {
            let t = task(state);
            assert_eq!(task_state(&t, now), utask, "{state}");
            assert_eq!(resolution_state(&t, &[], now), resolution, "{state}");
            assert!(TASK_STATES.contains(&utask));
        }
        let mut later = task(TaskState::Ready);
        later.due_at = Some(now + 1);
        assert_eq!(task_state(&later, now), "DELAYED");
        assert_eq!(
            resolution_state(&later, &[], now),
            Some("TO_AUTORUN_DELAYED")
        );
        later.run_count = 1;
        assert_eq!(task_state(&later, now), "RUNNING");
        assert_eq!(resolution_state(&later, &[], now), Some("ERROR"));
        let mut blocked = task(TaskState::Blocked);
        for (reason, state) in [
            ("crashed", "BLOCKED_TOCHECK"),
            ("crash_loop", "BLOCKED_TOCHECK"),
            ("retry_max", "BLOCKED_MAXRETRIES"),
            ("deadlock", "BLOCKED_DEADLOCK"),
            ("template", "BLOCKED_FATAL"),
            ("failed_steps", "BLOCKED_BADREQUEST"),
        ] {
            blocked.blocked_reason = Some(reason.into());
            assert_eq!(
                resolution_state(&blocked, &[], now),
                Some(state),
                "{reason}"
            );
        }
        let mut fatal = StepRow::new("s");
        fatal.state = StepState::FatalError;
        assert_eq!(
            resolution_state(&blocked, &[fatal], now),
            Some("BLOCKED_FATAL")
        );
        for s in ["TODO", "WAITING", "DONE", "CANCELLED"] {
            assert_eq!(store_state(s).map(|st| st.as_str()), Some(s));
        }
        assert_eq!(store_state("RUNNING"), None);
    }
}
