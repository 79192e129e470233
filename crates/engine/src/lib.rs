//! The engine runs tasks: it claims due tasks from the store, walks each task's step
//! graph, runs actions, and writes every step change before acting on it.
//!
//! It knows nothing of HTTP routes. Wake-ups are notifications, not polling: creating,
//! retrying or waking a task notifies the dispatcher, which otherwise sleeps until the
//! next due time the store reports.

mod catalog;
mod hooks;
pub use hooks::LOCAL_GIT_REFUSED;
mod render;
mod run;
mod secrets;
pub mod source_board;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use taskhook_actions::{Registry, SubtaskOptions, TaskService, TaskSnapshot};
use taskhook_model::input::resolve_inputs;
use taskhook_model::{Function, StepState, TaskState, Template};
use taskhook_store::{
    ClaimedTask, NewEvent, NewTask, StepEdit, StepRow, Store, StoreError, TaskRow, TemplateRow,
    TransitionOutcome, now_ms,
};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

pub use catalog::{
    ActionCatalog, CompiledTemplate, compile as compile_template, parse_and_validate,
};
pub use hooks::{DryRun, FireResult};
pub use secrets::template_secrets;
pub use taskhook_model::validate::{TemplateError, TemplateLimits};

/// How long a template's current version is trusted without asking the store.
const CURRENT_VERSION_TTL: Duration = Duration::from_secs(2);

/// Operator settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Name of this process in leases and audit entries.
    pub owner: String,
    /// Tasks run at once by this process.
    pub max_running_tasks: usize,
    /// Step attempts run at once by this process.
    pub max_running_steps: usize,
    /// Named resources and how many steps may hold each at once.
    pub resource_limits: HashMap<String, usize>,
    /// How long a claim holds a task without renewal. The engine renews the leases of its
    /// runs every third of this; a task whose lease expires (its instance died or lost the
    /// database) is taken over by another instance's sweep.
    pub lease: Duration,
    /// How long running steps get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// How often to look for RUNNING tasks whose lease expired (their instance died, or a run
    /// ended without recording it): they become READY again. A dead instance's tasks are taken
    /// over within `lease + orphan_sweep`.
    pub orphan_sweep: Duration,
    /// Largest template document accepted (YAML or JSON text), in bytes.
    pub max_template_bytes: usize,
    /// Most steps in one template.
    pub max_steps: usize,
    /// Most items one `foreach` may expand to; a step whose list is longer ends FATAL_ERROR.
    pub max_foreach_items: usize,
    /// Largest result of one attempt, its output and metadata serialised as JSON, in bytes. A
    /// larger result is not stored; see `run.rs` for the state the step ends in.
    pub max_step_output_bytes: usize,
    /// Runs in a row a task may have cut off by the process stopping (a crash, a kill, an
    /// out-of-memory kill, a panic) before it is not run again: it goes BLOCKED for a person,
    /// so a task that takes the process down cannot do so forever.
    pub max_task_crashes: u32,
    /// Whether hooks' `git` sources may name `file://` repositories, read from this server's
    /// own disk. Off by default: a hook writer could otherwise read any repository the
    /// server's user can.
    pub git_file_urls: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            owner: format!("taskhook-{}", std::process::id()),
            max_running_tasks: 1024,
            max_running_steps: 512,
            resource_limits: HashMap::new(),
            lease: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            orphan_sweep: Duration::from_secs(5),
            max_template_bytes: TemplateLimits::DEFAULT_MAX_TEMPLATE_BYTES,
            max_steps: TemplateLimits::DEFAULT_MAX_STEPS,
            max_foreach_items: 10_000,
            max_step_output_bytes: 1024 * 1024,
            max_task_crashes: 3,
            git_file_urls: false,
        }
    }
}

impl EngineConfig {
    /// The limits templates must fit when they are put or validated.
    pub fn template_limits(&self) -> TemplateLimits {
        TemplateLimits {
            max_template_bytes: self.max_template_bytes,
            max_steps: self.max_steps,
        }
    }
}

/// Why an engine call failed, in terms the API maps to a status.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{what} not found")]
    NotFound { what: String },
    /// Bad input: `field` names what is wrong.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The request is valid but conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what } => EngineError::NotFound { what },
            StoreError::Transition(t) => EngineError::Conflict(t.to_string()),
            StoreError::Conflict(c) => EngineError::Conflict(c),
            other => EngineError::Store(other),
        }
    }
}

/// A hook as read from the store, parsed, and when it was read.
pub(crate) type CachedHook = (
    taskhook_store::HookRow,
    Arc<taskhook_hooks::Hook>,
    std::time::Instant,
);

/// A task ready to insert, with the slot it will run in when it is claimed at creation.
pub(crate) struct PreparedTask {
    pub task: NewTask,
    pub event: NewEvent,
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// An input that does not fit its declaration, as a bad-input error naming
/// `<what>.<input>` (or `<what>` when the whole object is wrong).
pub(crate) fn invalid_input(what: &str, e: taskhook_model::InputError) -> EngineError {
    let field = if e.input.is_empty() {
        what.to_string()
    } else {
        format!("{what}.{}", e.input)
    };
    EngineError::Invalid {
        field,
        message: e.message,
    }
}

/// A person's edit of a task waiting for a person (µTask's `PUT /task/{id}`): each member
/// replaces what the task has.
#[derive(Debug, Clone, Default)]
pub struct EditTask {
    /// The task's whole input, checked against the template as at creation (defaults filled);
    /// a value that is the password mask keeps the task's value.
    pub inputs: Value,
    /// The task's tags; the parent tag of a subtask cannot be added, changed or removed.
    pub tags: serde_json::Map<String, Value>,
    pub watchers: Vec<String>,
}

/// A request to start a task.
#[derive(Debug, Clone, Default)]
pub struct CreateTask {
    pub template: String,
    pub inputs: Value,
    pub requester: String,
    pub tags: serde_json::Map<String, Value>,
    pub idempotency_key: Option<String>,
    /// Unix ms; the task waits until then.
    pub run_at: Option<i64>,
    pub parent_id: Option<String>,
    /// Resolvers and watchers named on this task.
    pub people: taskhook_store::TaskPeople,
}

pub(crate) struct Inner {
    pub store: Store,
    pub actions: Registry,
    pub config: EngineConfig,
    /// Wakes the dispatcher: a task became due.
    pub wake: Notify,
    /// Wakes the dispatcher: a runner finished, so there is room to claim more.
    pub room: Notify,
    pub templates: Mutex<HashMap<(String, i64), Arc<CompiledTemplate>>>,
    /// The current version of each template, as last seen, and when: saves a read per task
    /// creation. Entries are replaced on put and dropped on delete by this process, and
    /// expire after [`CURRENT_VERSION_TTL`] for changes made elsewhere.
    pub current_versions: Mutex<HashMap<String, (i64, std::time::Instant)>>,
    /// Runs in progress, with the token that stops them.
    pub running: Mutex<HashMap<String, RunControl>>,
    /// Stops asked for before the run registered itself.
    pub pending_stops: Mutex<HashMap<String, StopRequest>>,
    pub task_slots: Arc<Semaphore>,
    pub step_slots: Arc<Semaphore>,
    pub resources: HashMap<String, Arc<Semaphore>>,
    pub shutdown: CancellationToken,
    /// Recently read hooks, parsed: saves a read and a parse per webhook. Dropped on change
    /// by this process; trusted for [`CURRENT_VERSION_TTL`] otherwise.
    pub hooks: Mutex<HashMap<(String, String), CachedHook>>,
    /// Counts hook changes (created, changed or deleted): wakes the scheduler and the
    /// sources, each holding a receiver.
    pub hooks_changed: tokio::sync::watch::Sender<u64>,
    /// What each running source subscription of this process reports.
    pub source_board: Arc<crate::source_board::SourceBoard>,
    /// Set by [`Engine::start`]: only a started engine runs tasks.
    pub started: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
pub(crate) struct RunControl {
    pub stop: Arc<Mutex<Option<StopRequest>>>,
    pub token: CancellationToken,
    /// The lease epoch the run holds the task at: its fencing token.
    pub epoch: i64,
}

/// Why a run must stop early.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StopRequest {
    pub to: TaskState,
    pub actor: String,
}

/// The engine handle. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// Builtin step states a person may set by hand (`Engine::set_step_state`); a step's own
/// custom states may be set too.
/// What a person did to a task, for its audit trail (the store fills in the states moved).
fn person_event(actor: &str, kind: &str, detail: Value) -> NewEvent {
    NewEvent {
        actor: actor.into(),
        kind: kind.into(),
        from_state: None,
        to_state: None,
        detail,
    }
}

/// The task states in which a person may edit steps (set a state, rerun from a step).
const EDITABLE: &[TaskState] = &[TaskState::Blocked, TaskState::Paused];

/// The task states in which a person may edit a task's inputs, tags and watchers.
const EDITABLE_TASK: &[TaskState] = &[TaskState::Todo, TaskState::Paused];

/// Names of the foreach children among `steps` whose parent `parent` selects.
fn children_of(steps: &[StepRow], parent: impl Fn(&str) -> bool) -> Vec<String> {
    steps
        .iter()
        .filter(|s| s.foreach_parent.as_deref().is_some_and(&parent))
        .map(|s| s.name.clone())
        .collect()
}

const SETTABLE_STEP_STATES: [&str; 5] = ["TODO", "DONE", "PRUNE", "CLIENT_ERROR", "FATAL_ERROR"];

impl Engine {
    pub fn new(store: Store, actions: Registry, config: EngineConfig) -> Self {
        let resources = config
            .resource_limits
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(Semaphore::new(*v))))
            .collect();
        let inner = Arc::new(Inner {
            store,
            actions,
            task_slots: Arc::new(Semaphore::new(config.max_running_tasks.max(1))),
            step_slots: Arc::new(Semaphore::new(config.max_running_steps.max(1))),
            config,
            wake: Notify::new(),
            room: Notify::new(),
            templates: Mutex::new(HashMap::new()),
            current_versions: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            pending_stops: Mutex::new(HashMap::new()),
            resources,
            shutdown: CancellationToken::new(),
            started: std::sync::atomic::AtomicBool::new(false),
            hooks_changed: tokio::sync::watch::Sender::new(0),
            source_board: Default::default(),
            hooks: Mutex::new(HashMap::new()),
        });
        follow_changes(&inner);
        Engine { inner }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn actions(&self) -> &Registry {
        &self.inner.actions
    }

    /// The settings this engine was started with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Parses and validates a template document within the configured limits.
    pub async fn parse_template(&self, text: &str) -> Result<Template, TemplateError> {
        let limits = self.inner.config.template_limits();
        limits.check_document(text)?;
        let mut template = Template::parse(text).map_err(|e| TemplateError {
            errors: vec![taskhook_model::validate::ValidationError {
                field: "template".into(),
                message: e.message,
            }],
        })?;
        self.embed_library_functions(&mut template).await?;
        taskhook_model::validate::validate_template_with(
            &template,
            &ActionCatalog {
                actions: &self.inner.actions,
            },
            &limits,
        )?;
        Ok(template)
    }

    /// Copies the library functions a template calls into its `functions`, and the
    /// functions those call, and so on, so that the stored version carries every function
    /// its steps run through and later library changes do not reach its tasks.
    async fn embed_library_functions(&self, template: &mut Template) -> Result<(), TemplateError> {
        let mut tried = std::collections::BTreeSet::new();
        loop {
            let wanted: Vec<String> = template
                .missing_functions(|k| self.inner.actions.get(k).is_some())
                .into_iter()
                .filter(|k| !tried.contains(k))
                .collect();
            if wanted.is_empty() {
                return Ok(());
            }
            for name in wanted {
                if let Some(f) = self.library_function(&name).await? {
                    template.functions.insert(name.clone(), f);
                }
                tried.insert(name);
            }
        }
    }

    /// A function of the library, by name.
    async fn library_function(&self, name: &str) -> Result<Option<Function>, TemplateError> {
        let body = self
            .inner
            .store
            .get_function(name)
            .await
            .map_err(|e| TemplateError {
                errors: vec![taskhook_model::validate::ValidationError {
                    field: "functions".into(),
                    message: e.to_string(),
                }],
            })?;
        Ok(body.and_then(|b| serde_json::from_value::<Function>(b).ok()))
    }

    /// Parses and validates a library function document; the functions it calls are looked
    /// up in the library.
    pub async fn parse_function(&self, text: &str) -> Result<Function, TemplateError> {
        let f = Function::parse(text).map_err(|e| TemplateError {
            errors: vec![taskhook_model::validate::ValidationError {
                field: "function".into(),
                message: e.message,
            }],
        })?;
        self.check_function(&f, &Default::default()).await?;
        Ok(f)
    }

    /// Validates a library function. The functions it calls (and those call, and so on) are
    /// taken from `others` (say, the rest of a directory being loaded), else the library.
    pub async fn check_function(
        &self,
        f: &Function,
        others: &std::collections::BTreeMap<String, Function>,
    ) -> Result<(), TemplateError> {
        // The functions it may reach, gathered as a template would embed them.
        let mut holder = Template {
            functions: others.clone(),
            ..Template::default()
        };
        holder.functions.insert(f.name.clone(), f.clone());
        self.embed_library_functions(&mut holder).await?;
        taskhook_model::validate::validate_function(
            f,
            &holder.functions,
            &ActionCatalog {
                actions: &self.inner.actions,
            },
        )
    }

    /// Stores a library function; returns whether it is new. Templates already stored keep
    /// the copy they took; templates stored from now on take this one.
    pub async fn put_function(&self, f: Function) -> Result<bool, EngineError> {
        let body = serde_json::to_value(&f).map_err(|e| EngineError::Invalid {
            field: "function".into(),
            message: e.to_string(),
        })?;
        Ok(self.inner.store.put_function(&f.name, body).await?)
    }

    /// Validates and stores a template; a changed body becomes a new version, and running
    /// tasks keep the version they started with.
    pub async fn put_template(
        &self,
        template: Template,
    ) -> Result<(TemplateRow, bool), EngineError> {
        let mut template = template;
        self.embed_library_functions(&mut template).await?;
        catalog::compile(
            template.clone(),
            &self.inner.actions,
            &self.inner.config.template_limits(),
        )?;
        let body = serde_json::to_value(&template).map_err(|e| EngineError::Invalid {
            field: "template".into(),
            message: e.to_string(),
        })?;
        let (row, created) = self.inner.store.put_template(&template.name, body).await?;
        self.inner.remember_version(&row.name, row.version);
        Ok((row, created))
    }

    /// Removes a template from the catalogue; tasks already created from it still finish.
    pub async fn delete_template(&self, name: &str) -> Result<bool, EngineError> {
        let deleted = self.inner.store.delete_template(name).await?;
        self.inner
            .current_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(deleted)
    }

    /// Creates a task; with an idempotency key already used, returns the first task and `false`.
    pub async fn create_task(&self, req: CreateTask) -> Result<(TaskRow, bool), EngineError> {
        self.inner.create_task(req).await
    }

    /// Starts a task waiting for a resolver (TODO), with the resolver's inputs.
    pub async fn resolve(
        &self,
        id: &str,
        actor: &str,
        resolver_inputs: Value,
    ) -> Result<(), EngineError> {
        let (task, _) = self.task_with_steps(id).await?;
        let compiled = self
            .inner
            .template(&task.template, task.template_version)
            .await?;
        let inputs = resolve_inputs(&compiled.template.resolver_inputs, &resolver_inputs)
            .map_err(|e| invalid_input("resolver_inputs", e))?;
        let ev = person_event(actor, "resolved", Value::Null);
        self.inner
            .store
            .transition(
                id,
                &[TaskState::Todo],
                TaskState::Ready,
                Some(now_ms()),
                Some(Value::Object(inputs)),
                ev,
            )
            .await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// A task and its steps, or NotFound.
    async fn task_with_steps(&self, id: &str) -> Result<(TaskRow, Vec<StepRow>), EngineError> {
        self.inner
            .store
            .get_task(id)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                what: format!("task {id}"),
            })
    }

    /// Sets one step's state by hand on a task that is not running (BLOCKED or PAUSED), e.g.
    /// a CRASHED step marked DONE after a person checked its effect, or sent back to TODO to
    /// run again. `output` replaces the step's output (DONE and custom states only). The
    /// task keeps its state: [`Engine::retry`] runs it on. Recorded as a `step_set` event.
    pub async fn set_step_state(
        &self,
        id: &str,
        step: &str,
        state: &str,
        output: Option<Value>,
        actor: &str,
    ) -> Result<(), EngineError> {
        let (task, steps) = self.task_with_steps(id).await?;
        let Some(mut row) = steps.iter().find(|s| s.name == step).cloned() else {
            return Err(EngineError::NotFound {
                what: format!("step {step:?} of task {id}"),
            });
        };
        let compiled = self
            .inner
            .template(&task.template, task.template_version)
            .await?;
        let tpl = &compiled.template;
        let declared = row.foreach_parent.as_deref().unwrap_or(&row.name);
        let custom: Vec<&String> = tpl
            .steps
            .get(declared)
            .map(|s| tpl.custom_states_of(s).collect())
            .unwrap_or_default();
        if !SETTABLE_STEP_STATES.contains(&state) && !custom.iter().any(|c| *c == state) {
            let mut allowed = SETTABLE_STEP_STATES.to_vec();
            allowed.extend(custom.iter().map(|c| c.as_str()));
            return Err(EngineError::Invalid {
                field: "state".into(),
                message: format!(
                    "{state:?} cannot be set by hand: use one of {}",
                    allowed.join(", ")
                ),
            });
        }
        // A custom state never takes a builtin's name (validation refuses it).
        let to = StepState::parse(state);
        if output.is_some() && !matches!(to, StepState::Done | StepState::Custom(_)) {
            return Err(EngineError::Invalid {
                field: "output".into(),
                message: format!(
                    "only a DONE or custom state takes an output, not {}",
                    to.as_str()
                ),
            });
        }
        let from = row.state.as_str().to_string();
        let mut edit = StepEdit::default();
        if to == StepState::Todo {
            // A foreach step expands again: its children from before go.
            edit.delete = children_of(&steps, |p| p == row.name);
        }
        row.state = to.clone();
        row.next_retry_at = None;
        match &to {
            StepState::Todo => {
                // Runs again from scratch, with its retries back.
                row.output = Value::Null;
                row.metadata = Value::Null;
                row.error = None;
                row.attempts = 0;
            }
            StepState::Done | StepState::Custom(_) | StepState::Prune => {
                row.error = None;
                if let Some(o) = output {
                    row.output = o;
                }
            }
            _ => {}
        }
        let ev = person_event(
            actor,
            "step_set",
            json!({"step": step, "from": from, "to": to.as_str()}),
        );
        edit.put.push(row);
        self.inner
            .store
            .put_steps(id, task.updated_at, EDITABLE, edit, ev)
            .await?;
        Ok(())
    }

    /// Runs a BLOCKED or PAUSED task again from step `from`: that step and every step that
    /// depends on it, directly or not, go back to TODO (outputs cleared, retries back, foreach
    /// children dropped to expand again); the steps before keep their states and outputs.
    /// Recorded as a `rerun` event naming the steps, then `retried`. Returns those steps.
    pub async fn rerun(
        &self,
        id: &str,
        from: &str,
        actor: &str,
    ) -> Result<Vec<String>, EngineError> {
        let (task, steps) = self.task_with_steps(id).await?;
        let compiled = self
            .inner
            .template(&task.template, task.template_version)
            .await?;
        let tpl = &compiled.template;
        if !tpl.steps.contains_key(from) {
            return Err(match steps.iter().find(|s| s.name == from) {
                Some(StepRow {
                    foreach_parent: Some(parent),
                    ..
                }) => EngineError::Invalid {
                    field: "from".into(),
                    message: format!(
                        "{from:?} is one item of the foreach step {parent:?}: rerun from {parent:?}"
                    ),
                },
                // As for setting a step's state: a step the task does not have is not found.
                _ => EngineError::NotFound {
                    what: format!("step {from:?} of task {id}"),
                },
            });
        }
        let mut again: std::collections::BTreeSet<&str> = [from].into();
        loop {
            let before = again.len();
            for (name, step) in &tpl.steps {
                if !again.contains(name.as_str())
                    && step
                        .parsed_dependencies()
                        .iter()
                        .any(|d| again.contains(d.step.as_str()))
                {
                    again.insert(name);
                }
            }
            if again.len() == before {
                break;
            }
        }
        let names: Vec<String> = again.iter().map(|n| n.to_string()).collect();
        let edit = StepEdit {
            delete: children_of(&steps, |p| again.contains(p)),
            put: names.iter().map(StepRow::new).collect(),
        };
        let ev = person_event(actor, "rerun", json!({"from": from, "steps": names}));
        self.inner
            .store
            .put_steps(id, task.updated_at, EDITABLE, edit, ev)
            .await?;
        self.retry(id, actor).await?;
        Ok(names)
    }

    /// Closes a task that will not be run (on): one still waiting for a resolver (TODO, as
    /// µTask allows), or one a person stopped on (BLOCKED, PAUSED). WONTFIX is final; a
    /// parent waiting on it as a subtask sees it end.
    pub async fn wontfix(&self, id: &str, actor: &str) -> Result<(), EngineError> {
        let ev = person_event(actor, "wontfix", Value::Null);
        self.inner
            .store
            .transition(
                id,
                &[TaskState::Todo, TaskState::Blocked, TaskState::Paused],
                TaskState::Wontfix,
                None,
                None,
                ev,
            )
            .await?;
        Ok(())
    }

    /// Edits a task that waits for a person: one still waiting for a resolver (TODO), or one
    /// paused (µTask allows a task without a resolution, or with a paused one). Its inputs,
    /// tags and watchers are replaced, and its title rendered again from the new inputs; its
    /// state, steps and resolvers stay. Recorded as an `edited` event naming what changed.
    pub async fn edit_task(
        &self,
        id: &str,
        edit: EditTask,
        actor: &str,
    ) -> Result<(), EngineError> {
        let (task, _) = self.task_with_steps(id).await?;
        if !EDITABLE_TASK.contains(&task.state) {
            return Err(EngineError::Conflict(format!(
                "the task is {}: it can be edited only when it is TODO or PAUSED",
                task.state.as_str()
            )));
        }
        let compiled = self
            .inner
            .template(&task.template, task.template_version)
            .await?;
        let t = &compiled.template;
        // A masked password sent back as it was shown keeps its value.
        let mut given = match edit.inputs {
            Value::Null => Value::Object(Default::default()),
            other => other,
        };
        if let (Value::Object(given), Value::Object(old)) = (&mut given, &task.inputs) {
            for (k, v) in given.iter_mut() {
                if v.as_str() == Some(taskhook_model::input::SECRET_MASK)
                    && let Some(o) = old.get(k)
                {
                    *v = o.clone();
                }
            }
        }
        let inputs = resolve_inputs(&t.inputs, &given).map_err(|e| invalid_input("input", e))?;
        let parent_tag = taskhook_actions::PARENT_TAG;
        if edit.tags.get(parent_tag) != task.tags.get(parent_tag) {
            return Err(EngineError::Invalid {
                field: format!("tags.{parent_tag}"),
                message: "names the parent of a subtask: it cannot be added, changed or removed"
                    .into(),
            });
        }
        let ctx = json!({"input": inputs, "task": {"id": task.id, "template": t.name, "requester": task.requester}});
        let title = match &t.title_format {
            Some(f) => {
                render::text(t, compiled.language, f, &ctx).map_err(|e| EngineError::Invalid {
                    field: "template.title_format".into(),
                    message: e.message,
                })?
            }
            None => t.name.clone(),
        };
        let title = secrets::mask_passwords_in(t, &inputs, title);
        let inputs = Value::Object(inputs);
        let tags = Value::Object(edit.tags);
        let people = taskhook_store::TaskPeople {
            resolvers: task.people.resolvers.clone(),
            watchers: edit.watchers,
        };
        let changed: Vec<&str> = [
            ("input", inputs != task.inputs),
            ("title", title != task.title),
            ("tags", tags != task.tags),
            ("watcher_usernames", people.watchers != task.people.watchers),
        ]
        .into_iter()
        .filter_map(|(f, c)| c.then_some(f))
        .collect();
        let ev = person_event(actor, "edited", json!({ "changed": changed }));
        let edit = taskhook_store::TaskEdit {
            title,
            inputs,
            tags,
            people,
        };
        self.inner
            .store
            .edit_task(id, task.updated_at, EDITABLE_TASK, edit, ev)
            .await?;
        Ok(())
    }

    /// Gives a task BLOCKED by `retry_max` as many runs again as its template allows
    /// (µTask's `extend`), then runs it: an `extended` event, then `retried`.
    pub async fn extend(&self, id: &str, actor: &str) -> Result<(), EngineError> {
        let (task, _) = self.task_with_steps(id).await?;
        let more = self
            .inner
            .template(&task.template, task.template_version)
            .await?
            .template
            .retry_max()
            .max(1);
        let ev = person_event(
            actor,
            "extended",
            json!({"run_max": task.run_max.saturating_add(more)}),
        );
        self.inner.store.extend_run_max(id, more, ev).await?;
        self.retry(id, actor).await
    }

    /// Runs a BLOCKED or PAUSED task again.
    pub async fn retry(&self, id: &str, actor: &str) -> Result<(), EngineError> {
        let ev = person_event(actor, "retried", Value::Null);
        self.inner
            .store
            .transition(
                id,
                &[TaskState::Blocked, TaskState::Paused],
                TaskState::Ready,
                Some(now_ms()),
                None,
                ev,
            )
            .await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Cancels a task; a running one is stopped (its actions see the cancellation).
    pub async fn cancel(&self, id: &str, actor: &str) -> Result<(), EngineError> {
        self.inner
            .stop_task(
                id,
                StopRequest {
                    to: TaskState::Cancelled,
                    actor: actor.to_string(),
                },
            )
            .await
    }

    /// Pauses a task; a running one finishes the attempts in flight and starts no more.
    pub async fn pause(&self, id: &str, actor: &str) -> Result<(), EngineError> {
        self.inner
            .stop_task(
                id,
                StopRequest {
                    to: TaskState::Paused,
                    actor: actor.to_string(),
                },
            )
            .await
    }

    /// Recovers tasks a previous process left running, then runs the dispatcher until shutdown.
    pub async fn start(&self) -> Result<tokio::task::JoinHandle<()>, EngineError> {
        let recovered = self.inner.store.recover_running().await?;
        if recovered > 0 {
            tracing::info!(
                recovered,
                "resuming tasks that were running when the server stopped"
            );
        }
        self.inner
            .started
            .store(true, std::sync::atomic::Ordering::Release);
        tokio::spawn(self.inner.clone().sweep_orphans());
        tokio::spawn(self.inner.clone().renew_leases());
        if self.inner.store.is_shared() {
            tokio::spawn(self.inner.clone().follow_remote_stops());
        }
        let inner = self.inner.clone();
        Ok(tokio::spawn(async move { inner.dispatch().await }))
    }

    /// Stops claiming, lets running steps finish within the grace period, then cuts off what
    /// is left (those steps are settled like a crash) and returns once the runs have ended.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let running = || {
            !self
                .inner
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        };
        let deadline = tokio::time::Instant::now() + self.inner.config.shutdown_grace;
        while running() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !running() {
            return;
        }
        for ctl in self
            .inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            ctl.token.cancel();
        }
        // Cancelled actions return promptly; give the runs a moment to record how they ended.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while running() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A run that did not make it gives its task back now rather than when its lease
        // expires: another instance (or the next start) settles its interrupted steps.
        let held = self.inner.held_leases();
        if !held.is_empty() {
            match self
                .inner
                .store
                .release_orphans(held, "the instance running the task shut down", false)
                .await
            {
                Ok(n) => tracing::info!(tasks = n, "released the leases of unfinished runs"),
                Err(e) => {
                    tracing::warn!(error = %e, "releasing leases at shutdown failed; they will expire")
                }
            }
        }
    }

    /// A service actions use to start and watch subtasks.
    pub fn task_service(&self) -> Arc<dyn TaskService> {
        Arc::new(Tasks {
            inner: Arc::downgrade(&self.inner),
        })
    }
}

impl Inner {
    fn remember_version(&self, name: &str, version: i64) {
        self.current_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), (version, std::time::Instant::now()));
    }

    /// The current version of a template, from the short-lived cache or the store.
    async fn current_version(&self, name: &str) -> Result<i64, EngineError> {
        let cached = self
            .current_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied();
        if let Some((version, seen)) = cached
            && seen.elapsed() < CURRENT_VERSION_TTL
        {
            return Ok(version);
        }
        let row = self
            .store
            .get_template(name)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                what: format!("template {name:?}"),
            })?;
        self.remember_version(name, row.version);
        Ok(row.version)
    }

    pub(crate) async fn template(
        &self,
        name: &str,
        version: i64,
    ) -> Result<Arc<CompiledTemplate>, EngineError> {
        let key = (name.to_string(), version);
        if let Some(t) = self
            .templates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(t.clone());
        }
        let row = self
            .store
            .get_template_version(name, version)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                what: format!("template {name} version {version}"),
            })?;
        let template: Template =
            serde_json::from_value(row.body).map_err(|e| EngineError::Invalid {
                field: "template".into(),
                message: format!("stored template is unreadable: {e}"),
            })?;
        let compiled = catalog::compile(template, &self.actions, &TemplateLimits::UNLIMITED)?;
        self.templates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, compiled.clone());
        Ok(compiled)
    }

    async fn create_task(
        self: &Arc<Self>,
        req: CreateTask,
    ) -> Result<(TaskRow, bool), EngineError> {
        let prepared = self.prepare_task(req).await?;
        let (task, created) = self
            .store
            .create_task(prepared.task.clone(), prepared.event.clone())
            .await?;
        self.start_created(prepared, &task, created);
        Ok((task, created))
    }

    /// Checks a creation request against its template and builds the rows to insert. When the
    /// task is due now and a slot is free, it will be claimed in its creation write.
    pub(crate) async fn prepare_task(
        self: &Arc<Self>,
        req: CreateTask,
    ) -> Result<PreparedTask, EngineError> {
        let version = self.current_version(&req.template).await?;
        let compiled = self.template(&req.template, version).await?;
        let t = &compiled.template;
        if t.blocked {
            return Err(EngineError::Conflict(format!(
                "template {:?} is blocked: no task can be created from it",
                t.name
            )));
        }
        let inputs =
            resolve_inputs(&t.inputs, &req.inputs).map_err(|e| invalid_input("inputs", e))?;
        let id = uuid::Uuid::now_v7().to_string();
        let ctx = json!({"input": inputs, "task": {"id": id, "template": t.name, "requester": req.requester}});
        let title = match &t.title_format {
            Some(f) => {
                render::text(t, compiled.language, f, &ctx).map_err(|e| EngineError::Invalid {
                    field: "template.title_format".into(),
                    message: e.message,
                })?
            }
            None => t.name.clone(),
        };
        let title = secrets::mask_passwords_in(t, &inputs, title);
        let mut tags = serde_json::Map::new();
        for (k, v) in &t.tags {
            let v =
                render::text(t, compiled.language, v, &ctx).map_err(|e| EngineError::Invalid {
                    field: format!("template.tags.{k}"),
                    message: e.message,
                })?;
            tags.insert(k.clone(), Value::String(v));
        }
        tags.extend(req.tags);
        let state = if t.auto_runnable {
            TaskState::Ready
        } else {
            TaskState::Todo
        };
        let now = now_ms();
        let due_at = (state == TaskState::Ready).then(|| req.run_at.unwrap_or(now));
        // A task due now, with a free slot, is claimed in the same write and started at once:
        // no second commit, no dispatcher hop.
        let permit = (self.started.load(std::sync::atomic::Ordering::Acquire)
            && !self.shutdown.is_cancelled()
            && due_at.is_some_and(|d| d <= now))
        .then(|| self.task_slots.clone().try_acquire_owned().ok())
        .flatten();
        let claim = permit.as_ref().map(|_| {
            taskhook_store::Claim::new(
                &self.config.owner,
                now + self.config.lease.as_millis() as i64,
            )
        });
        let new = NewTask {
            id,
            template: req.template.clone(),
            template_version: version,
            title,
            state,
            inputs: Value::Object(inputs),
            tags: Value::Object(tags),
            requester: req.requester.clone(),
            parent_id: req.parent_id,
            idempotency_key: req.idempotency_key,
            run_max: t.retry_max(),
            due_at,
            steps: t.steps.keys().cloned().collect(),
            people: req.people,
            claim,
        };
        let event = NewEvent {
            actor: req.requester,
            kind: "created".into(),
            from_state: None,
            to_state: Some(state.as_str().into()),
            detail: Value::Null,
        };
        Ok(PreparedTask {
            task: new,
            event,
            permit,
        })
    }

    /// After the creation write: starts a task claimed with it, or wakes the dispatcher.
    pub(crate) fn start_created(
        self: &Arc<Self>,
        prepared: PreparedTask,
        task: &TaskRow,
        created: bool,
    ) {
        let ready = prepared.task.state == TaskState::Ready;
        match prepared.permit {
            Some(permit) if created && task.state == TaskState::Running => {
                let steps = prepared.task.steps.iter().map(StepRow::new).collect();
                self.spawn_run(
                    ClaimedTask {
                        task: task.clone(),
                        claimed_from: TaskState::Ready,
                        steps,
                    },
                    permit,
                );
            }
            _ if created && ready => self.wake.notify_one(),
            _ => {}
        }
    }

    /// Cancels or pauses a task: at once when no run holds it, else by asking the run to stop.
    pub(crate) async fn stop_task(&self, id: &str, req: StopRequest) -> Result<(), EngineError> {
        use TaskState::*;
        let from: &'static [TaskState] = if req.to == Cancelled {
            &[Todo, Ready, Waiting, Paused, Blocked]
        } else {
            &[Todo, Ready, Waiting, Blocked]
        };
        let kind = if req.to == Cancelled {
            "cancelled"
        } else {
            "paused"
        };
        let event = || NewEvent {
            actor: req.actor.clone(),
            kind: kind.into(),
            from_state: None,
            to_state: None,
            detail: Value::Null,
        };
        match self
            .store
            .transition(id, from, req.to, None, None, event())
            .await?
        {
            TransitionOutcome::Applied(..) => {
                self.wake.notify_one();
                Ok(())
            }
            TransitionOutcome::Running => {
                if self.request_stop(id, req.clone()) {
                    return Ok(());
                }
                if self.store.is_shared() {
                    // Another instance may hold the run. The store recorded the request with the
                    // task and signalled every instance; the holder stops the run, and a run that
                    // ends without seeing it has it applied as it ends.
                    self.pending_stops
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(id);
                    return Ok(());
                }
                // The store says RUNNING but no run of ours is registered: either a claim is about
                // to register (it takes the pending stop), or a run just ended and unregistered, in
                // which case the pending stop would wait for a next run that may never come. Look again.
                match self
                    .store
                    .transition(id, from, req.to, None, None, event())
                    .await
                {
                    Ok(TransitionOutcome::Applied(..)) => {
                        self.pending_stops
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(id);
                        self.wake.notify_one();
                        Ok(())
                    }
                    Ok(TransitionOutcome::Running) => Ok(()),
                    // A run took the pending stop in between and ended the task: that is the stop.
                    Err(e) => match self
                        .pending_stops
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(id)
                    {
                        Some(_) => Err(e.into()),
                        None => Ok(()),
                    },
                }
            }
        }
    }

    /// Hands a stop to the run holding the task; true when one did. Otherwise the stop waits
    /// for the run about to start, which takes it as it registers.
    fn request_stop(&self, id: &str, req: StopRequest) -> bool {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match running.get(id) {
            Some(ctl) => {
                let cancel = req.to == TaskState::Cancelled;
                *ctl.stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(req);
                // Cancel interrupts the attempts in flight. Pause only starts no new ones: the run
                // notices when its next attempt ends, so the token is left alone.
                if cancel {
                    ctl.token.cancel();
                }
                true
            }
            None => {
                self.pending_stops
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_string(), req);
                false
            }
        }
    }

    /// Runs a claimed task in its own tokio task, holding a task slot until it ends.
    fn spawn_run(
        self: &Arc<Self>,
        claimed: ClaimedTask,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let inner = self.clone();
        tokio::spawn(async move {
            run::run_task(inner.clone(), claimed).await;
            drop(permit);
            inner.room.notify_one();
        });
    }

    /// The tasks this process runs, with the epoch each is held at.
    fn held_leases(&self) -> Vec<(String, i64)> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, ctl)| (id.clone(), ctl.epoch))
            .collect()
    }

    /// Keeps the leases of this process's runs alive: every third of the lease, one write renews
    /// them all. A run whose lease was lost (this process paused or lost the database for longer
    /// than the lease, and another instance took the task over) is cancelled at once: its writes
    /// would be refused anyway, and its actions must not keep running beside the new owner's.
    async fn renew_leases(self: Arc<Self>) {
        let every = (self.config.lease / 3).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(every).await;
            let held = self.held_leases();
            if held.is_empty() {
                // Runs still finishing during a graceful shutdown keep their leases alive.
                if self.shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            let until = now_ms() + self.config.lease.as_millis() as i64;
            match self
                .store
                .renew_leases(&self.config.owner, held, until)
                .await
            {
                Ok(lost) => {
                    let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                    for id in lost {
                        // A run that just ended is no longer held; only live runs are cut.
                        if let Some(ctl) = running.get(&id) {
                            tracing::warn!(task = %id, "lease lost to another instance; stopping this run");
                            ctl.token.cancel();
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "renewing leases failed; retrying"),
            }
            // A stop asked through another instance whose signal was missed is found here.
            self.take_remote_stops().await;
        }
    }

    /// Stops asked through other instances for runs this process holds (shared store only).
    async fn take_remote_stops(&self) {
        if !self.store.is_shared() {
            return;
        }
        let ids: Vec<String> = self.held_leases().into_iter().map(|(id, _)| id).collect();
        if ids.is_empty() {
            return;
        }
        match self.store.pending_stops(ids).await {
            Ok(stops) => {
                for (id, to, actor) in stops {
                    let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(ctl) = running.get(&id) {
                        let mut stop = ctl.stop.lock().unwrap_or_else(|e| e.into_inner());
                        if stop.is_none() {
                            *stop = Some(StopRequest { to, actor });
                            if to == TaskState::Cancelled {
                                ctl.token.cancel();
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading stop requests failed"),
        }
    }

    /// Applies stops asked through other instances as soon as their signal arrives.
    async fn follow_remote_stops(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.store.signals().stops.notified() => {}
                _ = self.shutdown.cancelled() => return,
            }
            self.take_remote_stops().await;
        }
    }

    /// Tasks this process no longer runs but that are still RUNNING in the store (their run
    /// failed to record its end) are made READY once their lease expires. Only tasks absent
    /// from this process's runs are touched, so a long run is never taken away from itself.
    async fn sweep_orphans(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.orphan_sweep) => {}
                _ = self.shutdown.cancelled() => return,
            }
            let expired = match self.store.expired_leases(now_ms()).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "looking for orphaned tasks failed");
                    continue;
                }
            };
            let orphans: Vec<(String, i64)> = {
                let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                expired
                    .into_iter()
                    .filter(|(id, _)| !running.contains_key(id))
                    .collect()
            };
            if orphans.is_empty() {
                continue;
            }
            match self
                .store
                .release_orphans(
                    orphans,
                    "the run holding the task ended without recording it",
                    true,
                )
                .await
            {
                Ok(n) if n > 0 => {
                    tracing::warn!(tasks = n, "orphaned tasks made ready again");
                    self.wake.notify_one();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "releasing orphaned tasks failed"),
            }
        }
    }

    /// Claims due tasks while there is room, then sleeps until woken or the next due time.
    async fn dispatch(self: Arc<Self>) {
        const MAX_CLAIM: usize = 256;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let room = self.task_slots.available_permits().min(MAX_CLAIM);
            if room == 0 {
                tokio::select! {
                    _ = self.room.notified() => continue,
                    _ = self.shutdown.cancelled() => return,
                }
            }
            // Take the slots first: a task is claimed only with a slot to run it in, even when
            // task creation claims tasks concurrently.
            let Ok(mut permits) = self.task_slots.clone().try_acquire_many_owned(room as u32)
            else {
                continue;
            };
            let now = now_ms();
            let claimed = match self
                .store
                .claim_due(
                    &self.config.owner,
                    now,
                    room,
                    self.config.lease.as_millis() as i64,
                )
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "claiming tasks failed; retrying");
                    drop(permits);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let full_batch = claimed.len() == room;
            for c in claimed {
                let permit = permits
                    .split(1)
                    .expect("one permit was taken per claimable task");
                self.spawn_run(c, permit);
            }
            drop(permits);
            if full_batch {
                continue;
            }
            let next = match self.store.next_due_at().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "reading the next due time failed");
                    Some(now_ms() + 1000)
                }
            };
            let sleep = match next {
                Some(t) => Duration::from_millis((t - now_ms()).clamp(0, 60_000) as u64),
                None => Duration::from_secs(60),
            };
            if sleep.is_zero() {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                // Another instance made a task due (PostgreSQL NOTIFY).
                _ = self.store.signals().due.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}

/// With a database shared by several instances, hooks changed by another instance reach this
/// one through the store's change signal: the parsed-hook cache is dropped and the scheduler
/// reloads, instead of waiting for the cache to expire.
fn follow_changes(inner: &Arc<Inner>) {
    if !inner.store.is_shared() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(inner);
    let store = inner.store.clone();
    runtime.spawn(async move {
        loop {
            store.signals().hooks.notified().await;
            let Some(inner) = weak.upgrade() else {
                return;
            };
            inner
                .hooks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            inner.hooks_changed.send_modify(|n| *n += 1);
        }
    });
}

/// The engine as seen by actions (subtasks). Holds a weak reference so actions never keep
/// a stopped engine alive.
struct Tasks {
    inner: std::sync::Weak<Inner>,
}

#[async_trait]
impl TaskService for Tasks {
    async fn create_subtask(
        &self,
        parent_id: &str,
        template: &str,
        inputs: Value,
        options: &SubtaskOptions,
        key: &str,
    ) -> Result<String, String> {
        let inner = self.inner.upgrade().ok_or("the engine is stopping")?;
        let run_at = options
            .delay
            .map(|d| now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
        let req = CreateTask {
            template: template.to_string(),
            inputs,
            requester: format!("task:{parent_id}"),
            tags: options
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
            idempotency_key: Some(key.to_string()),
            run_at,
            parent_id: Some(parent_id.to_string()),
            people: taskhook_store::TaskPeople {
                resolvers: options.resolvers.clone(),
                watchers: options.watchers.clone(),
            },
        };
        inner
            .create_task(req)
            .await
            .map(|(t, _)| t.id)
            .map_err(|e| e.to_string())
    }

    async fn task_snapshot(&self, id: &str) -> Result<TaskSnapshot, String> {
        let inner = self.inner.upgrade().ok_or("the engine is stopping")?;
        let (t, _) = inner
            .store
            .get_task(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("task {id} not found"))?;
        // Who resolved it is read from its events, and only once it has ended: the parent
        // reads it then (µTask's subtask output carries it).
        let resolver = if t.state.is_final() {
            inner
                .store
                .task_events(id)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .rev()
                .find(|e| e.kind == "resolved")
                .map(|e| e.actor)
        } else {
            None
        };
        Ok(TaskSnapshot {
            id: t.id,
            state: t.state.as_str().to_string(),
            result: t.result,
            requester: t.requester,
            resolver,
        })
    }
}

/// Ids of tasks currently run by this process (for tests and metrics).
pub fn running_ids(engine: &Engine) -> HashSet<String> {
    engine
        .inner
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect()
}
