//! Rows as the store reads and writes them. The server converts these to API shapes.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use taskhook_model::{StepState, TaskState};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateRow {
    pub name: String,
    pub version: i64,
    pub body: Value,
    pub created_at: i64,
}

/// A task to insert, with its initial steps.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub template: String,
    pub template_version: i64,
    pub title: String,
    pub state: TaskState,
    pub inputs: Value,
    pub tags: Value,
    pub requester: String,
    pub parent_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub run_max: u32,
    pub due_at: Option<i64>,
    pub steps: Vec<String>,
    /// People named on this task beyond its template's.
    pub people: TaskPeople,
    /// Claim the task in the same write, for a runner that starts it at once. Only for a
    /// READY task due now.
    pub claim: Option<Claim>,
}

/// A claim made in a task's creation write.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The lease owner (the instance).
    pub owner: String,
    /// Lease expiry, unix ms.
    pub until: i64,
    /// The `claimed` audit entry's detail (sealed by the store like every event detail).
    pub detail: Value,
}

impl Claim {
    pub fn new(owner: &str, until: i64) -> Claim {
        Claim {
            owner: owner.to_string(),
            until,
            detail: claim_detail(owner),
        }
    }
}

/// What a `claimed` audit entry records: the instance that claimed.
pub fn claim_detail(owner: &str) -> Value {
    serde_json::json!({ "instance": owner })
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    pub id: String,
    pub template: String,
    pub template_version: i64,
    pub title: String,
    pub state: TaskState,
    pub inputs: Value,
    pub resolver_inputs: Value,
    pub result: Value,
    pub tags: Value,
    pub requester: String,
    pub parent_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub run_count: u32,
    pub run_max: u32,
    pub due_at: Option<i64>,
    pub lease_epoch: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub people: TaskPeople,
    /// Runs in a row cut off by the process stopping (counted at recovery, cleared when a run
    /// ends or a person moves the task).
    pub crashes: u32,
    /// Why a BLOCKED task is blocked: one of [`BLOCKED_REASONS`]; `None` in other states.
    pub blocked_reason: Option<String>,
}

/// People named on one task (µTask's task-level resolvers and watchers), on top of its
/// requester and its template's resolvers. Resolvers may read, resolve and retry the task;
/// watchers may read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskPeople {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolvers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watchers: Vec<String>,
}

impl TaskPeople {
    pub fn is_resolver(&self, user: &str) -> bool {
        self.resolvers.iter().any(|u| u == user)
    }

    pub fn is_watcher(&self, user: &str) -> bool {
        self.watchers.iter().any(|u| u == user)
    }

    /// The stored form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// A person's edit of a task waiting for a person (µTask's task update): its inputs, the title
/// rendered from them, its tags and its people, each written as given.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEdit {
    pub title: String,
    pub inputs: Value,
    pub tags: Value,
    pub people: TaskPeople,
}

/// A person's edit of a task's steps: rows written as given, rows deleted by name (e.g. the
/// children of a foreach step sent back to TODO, which expands again).
#[derive(Debug, Clone, Default)]
pub struct StepEdit {
    pub put: Vec<StepRow>,
    pub delete: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub name: String,
    pub state: StepState,
    pub output: Value,
    pub metadata: Value,
    pub error: Option<String>,
    pub attempts: u32,
    pub next_retry_at: Option<i64>,
    /// For a foreach child: the step it was expanded from.
    pub foreach_parent: Option<String>,
    /// For a foreach child: its item (`{{ iterator }}`).
    pub item: Option<Value>,
}

impl StepRow {
    pub fn new(name: impl Into<String>) -> Self {
        StepRow {
            name: name.into(),
            state: StepState::Todo,
            output: Value::Null,
            metadata: Value::Null,
            error: None,
            attempts: 0,
            next_retry_at: None,
            foreach_parent: None,
            item: None,
        }
    }
}

/// One entry of a task's audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskEvent {
    pub seq: i64,
    pub task_id: String,
    pub at: i64,
    pub actor: String,
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub detail: Value,
}

/// An audit entry to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub actor: String,
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub detail: Value,
}

impl NewEvent {
    pub fn transition(
        actor: &str,
        kind: &str,
        from: TaskState,
        to: TaskState,
        detail: Value,
    ) -> Self {
        NewEvent {
            actor: actor.to_string(),
            kind: kind.to_string(),
            from_state: Some(from.as_str().to_string()),
            to_state: Some(to.as_str().to_string()),
            detail,
        }
    }
}

/// A task the engine now holds under a lease, with its steps.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub task: TaskRow,
    /// The state it was claimed from (READY or WAITING).
    pub claimed_from: TaskState,
    pub steps: Vec<StepRow>,
}

/// Why a task went BLOCKED, as stored and listed: `crashed` (non-idempotent steps were cut
/// off by a crash), `crash_loop` (the process stopped too many times in a row while the task
/// ran), `failed_steps` (steps failed and need a person), `retry_max` (the task ran as many
/// times as it may), `deadlock` (steps can never run), `template` (its template cannot be
/// used).
pub const BLOCKED_REASONS: &[&str] = &[
    "crashed",
    "crash_loop",
    "failed_steps",
    "retry_max",
    "deadlock",
    "template",
];

/// A comment a person left on a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub id: String,
    pub task_id: String,
    pub author: String,
    pub content: String,
    pub created_at: i64,
}

/// Most comments one task keeps.
pub const MAX_COMMENTS_PER_TASK: i64 = 1000;

/// How a run ends: the task's next state and what changed.
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub state: TaskState,
    pub due_at: Option<i64>,
    pub result: Option<Value>,
    pub event: NewEvent,
    /// For a BLOCKED end: why, one of [`BLOCKED_REASONS`].
    pub blocked_reason: Option<&'static str>,
}

/// Filters for listing tasks, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub template: Option<String>,
    /// Only BLOCKED tasks blocked for this reason.
    pub blocked_reason: Option<String>,
    /// Only tasks older than this id (keyset pagination).
    pub before: Option<String>,
    pub limit: u32,
}

/// What happened to a requested state change.
#[derive(Debug, Clone, PartialEq)]
pub enum TransitionOutcome {
    /// Applied: the task went from the first state to the second.
    Applied(TaskState, TaskState),
    /// The task is running right now; the engine must stop it.
    Running,
}

/// A stored hook.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HookRow {
    pub group: String,
    pub id: String,
    pub body: Value,
    pub trigger_token: String,
    pub last_scheduled_for: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A fire to record.
#[derive(Debug, Clone)]
pub struct NewFire {
    pub id: String,
    pub hook_group: String,
    pub hook_id: String,
    pub fired_by: String,
    pub received_at: i64,
    pub scheduled_for: Option<i64>,
    /// created, filtered, declined, rejected, error (skipped and queued are set by the store).
    pub result: String,
    pub task_id: Option<String>,
    pub error: Option<String>,
    pub delivery_id: Option<String>,
    pub payload: Option<Value>,
    /// A polling source's position, written in the same transaction as the fire (on the
    /// duplicate path too), by the holder of the source's lease only.
    pub cursor: Option<FireCursor>,
}

/// The position a fire moves its polling source's cursor to (see [`crate::Store::lease_source`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FireCursor {
    /// The source, among the hook's polling sources.
    pub key: String,
    /// The instance that must hold the source's lease; the fire fails with `Conflict` (and
    /// writes nothing) when another one does.
    pub owner: String,
    /// A JSON object merged into the stored cursor (RFC 7396 merge patch, one level: a key
    /// set to `null` is removed).
    pub patch: Value,
}

/// The answer to [`crate::Store::lease_source`].
#[derive(Debug, Clone, PartialEq)]
pub enum SourceLease {
    /// This instance holds the lease; the cursor as last committed (`None` before any).
    Held(Option<Value>),
    /// Another instance holds it until `until` (unix ms).
    Elsewhere { owner: String, until: i64 },
}

/// One entry of the fire ledger, with the current state of the task it created.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FireRow {
    pub id: String,
    pub hook_group: String,
    pub hook_id: String,
    pub fired_by: String,
    pub received_at: i64,
    pub scheduled_for: Option<i64>,
    pub result: String,
    pub task_id: Option<String>,
    pub error: Option<String>,
    pub delivery_id: Option<String>,
    pub payload: Option<Value>,
    pub task_state: Option<TaskState>,
    /// When the fire's transaction committed (unix ms); `None` in the answer to the write
    /// itself (given once it committed) and for fires recorded before it was kept.
    pub committed_at: Option<i64>,
}

impl FireRow {
    pub fn from_new(f: NewFire, task_state: Option<TaskState>) -> Self {
        FireRow {
            id: f.id,
            hook_group: f.hook_group,
            hook_id: f.hook_id,
            fired_by: f.fired_by,
            received_at: f.received_at,
            scheduled_for: f.scheduled_for,
            result: f.result,
            task_id: f.task_id,
            error: f.error,
            delivery_id: f.delivery_id,
            payload: f.payload,
            task_state,
            committed_at: None,
        }
    }
}

/// What recording a fire did.
#[derive(Debug, Clone)]
pub enum FireOutcome {
    /// A new fire, and the task it created (if any).
    Recorded(FireRow, Option<Box<TaskRow>>),
    /// The same delivery or due time fired before: the first fire.
    Duplicate(FireRow),
}

/// What is known of a secret besides its value: all the API ever shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecretMeta {
    pub name: String,
    pub description: String,
    /// 1 when created, one more each time the value or description is replaced.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}
