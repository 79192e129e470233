//! Actions: the work a step does. One trait, one file per builtin action (`publish` keeps
//! one file per broker in `publish/`).
//!
//! An action receives its configuration already templated (plain JSON) and an
//! [`ActionContext`]; it returns an output and metadata or a classified error.
//! Actions never touch the store: what they need from the engine (subtasks)
//! comes through [`TaskService`] in the context.

// `ActionError` carries the attempt's output by value (it is this crate's API), so every helper
// returning it trips this size lint.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

mod config;
mod duration;
mod echo;
mod http;
mod network;
mod publish;
mod script;
mod sleep;
mod subtask;
#[cfg(test)]
mod testing;

pub use duration::parse_duration;
pub use echo::Echo;
pub use http::Http;
pub use network::{AddressError, IpNet, NetworkPolicy};
pub use publish::{Outgoing, Publish};
pub use script::Script;
pub use sleep::Sleep;
pub use subtask::{PARENT_TAG, Subtask};

/// What one successful attempt produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActionOutput {
    pub output: Value,
    pub metadata: Value,
}

/// How an attempt failed (or paused). The engine maps each kind to a step state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    /// The request was wrong (HTTP 4xx, bad arguments): step becomes CLIENT_ERROR; a human must look.
    #[error("{message}")]
    Client {
        message: String,
        output: Option<ActionOutput>,
    },
    /// A transient failure (HTTP 5xx, network, non-zero exit): step becomes SERVER_ERROR and is retried.
    #[error("{message}")]
    Server {
        message: String,
        output: Option<ActionOutput>,
    },
    /// Retrying cannot help: step becomes FATAL_ERROR.
    #[error("{message}")]
    Fatal { message: String },
    /// Not finished yet: step becomes WAITING with `metadata` kept for the next attempt.
    /// With `wake_at` (unix milliseconds) the engine re-runs the step at that time; without it the
    /// step waits for an external wake-up (a subtask ending).
    #[error("waiting")]
    Waiting {
        metadata: Value,
        wake_at: Option<i64>,
    },
}

impl ActionError {
    pub fn client(message: impl Into<String>) -> Self {
        ActionError::Client {
            message: message.into(),
            output: None,
        }
    }
    pub fn server(message: impl Into<String>) -> Self {
        ActionError::Server {
            message: message.into(),
            output: None,
        }
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        ActionError::Fatal {
            message: message.into(),
        }
    }
}

/// A configuration problem found when a template is loaded, before any task runs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Path inside `configuration`, e.g. `method` or `headers.X-Token`; empty for the whole object.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The state of another task, as the subtask action sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSnapshot {
    pub id: String,
    /// Task state name (`TODO`, `RUNNING`, `WAITING`, `BLOCKED`, `DONE`, `CANCELLED`, `WONTFIX`).
    pub state: String,
    pub result: Value,
    /// Who asked for it (a subtask's is `task:<parent id>`).
    pub requester: String,
    /// Who resolved it, when a person did.
    pub resolver: Option<String>,
}

/// What a subtask is created with besides its template and inputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubtaskOptions {
    /// Users who may resolve the child, besides its template's.
    pub resolvers: Vec<String>,
    /// Users who may watch the child.
    pub watchers: Vec<String>,
    /// Tags added to the child's (after its template's).
    pub tags: BTreeMap<String, String>,
    /// The child starts this long after its creation.
    pub delay: Option<std::time::Duration>,
}

/// What the engine offers actions that need other tasks.
#[async_trait]
pub trait TaskService: Send + Sync {
    /// Create a child task of `parent_id` from `template` with `options`, idempotent on `key`: calling it again
    /// with the same key returns the task created the first time.
    async fn create_subtask(
        &self,
        parent_id: &str,
        template: &str,
        inputs: Value,
        options: &SubtaskOptions,
        key: &str,
    ) -> Result<String, String>;
    /// Current state and result of a task.
    async fn task_snapshot(&self, id: &str) -> Result<TaskSnapshot, String>;
}

/// Everything an attempt knows besides its configuration.
#[derive(Clone)]
pub struct ActionContext {
    pub task_id: String,
    pub step: String,
    /// 1 for the first attempt of this step.
    pub attempt: u32,
    /// Stable across retries of the same step of the same task: `<task id>/<step>`.
    pub idempotency_key: String,
    /// Metadata the previous attempt of this step left when it returned [`ActionError::Waiting`].
    pub previous_metadata: Option<Value>,
    /// Cancelled when the task is cancelled or the step times out; long actions must watch it.
    pub cancel: CancellationToken,
    pub tasks: Arc<dyn TaskService>,
    /// The templating language of the task's template: actions whose output µTask shapes
    /// differently give µTask's shape to Go (µTask) templates.
    pub language: taskhook_model::Language,
}

#[async_trait]
pub trait Action: Send + Sync {
    /// The `action.type` that selects this action in a template.
    fn name(&self) -> &'static str;
    /// Checks a configuration at template load time. String values may still contain
    /// `{{ … }}` templating, which only resolves at run time: accept those wherever a string,
    /// number or bool is expected.
    fn validate(&self, config: &Value) -> Result<(), ConfigError>;
    /// Runs one attempt with the templated configuration.
    async fn run(&self, config: Value, ctx: ActionContext) -> Result<ActionOutput, ActionError>;
}

/// Settings shared by the builtin actions, chosen by the operator at start.
///
/// Build it with `..ActionSettings::default()` so that new settings keep their defaults.
#[derive(Debug, Clone, Default)]
pub struct ActionSettings {
    /// Directory the `script` action may run executables from; `None` disables scripts.
    pub scripts_dir: Option<std::path::PathBuf>,
    /// Networks the `http` action may connect to (see [`NetworkPolicy`]); the default denies
    /// cloud metadata endpoints, link-local and unspecified addresses.
    pub http_networks: NetworkPolicy,
    /// Names of server environment variables passed through to scripts (read at run time; unset
    /// ones are skipped; a step's own `env` wins). Empty by default: scripts see only `PATH`.
    pub script_env_allow: Vec<String>,
}

impl ActionSettings {
    /// Checks the operator's settings, to report mistakes at start rather than on every run.
    pub fn validate(&self) -> Result<(), String> {
        for name in &self.script_env_allow {
            script::check_env_name(name)
                .map_err(|e| format!("script environment allow-list: {name:?}: {e}"))?;
        }
        Ok(())
    }
}

/// The set of actions a server knows, by name.
#[derive(Clone, Default)]
pub struct Registry {
    actions: BTreeMap<&'static str, Arc<dyn Action>>,
}

impl Registry {
    /// Every builtin action.
    pub fn builtin(settings: &ActionSettings) -> Self {
        let mut r = Registry::default();
        r.register(Arc::new(Echo));
        r.register(Arc::new(Http::with_policy(settings.http_networks.clone())));
        r.register(Arc::new(
            Script::new(settings.scripts_dir.clone())
                .with_env_allow(settings.script_env_allow.clone()),
        ));
        r.register(Arc::new(Publish::with_policy(
            settings.http_networks.clone(),
        )));
        r.register(Arc::new(Sleep));
        r.register(Arc::new(Subtask));
        r
    }

    pub fn register(&mut self, action: Arc<dyn Action>) {
        self.actions.insert(action.name(), action);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Action>> {
        self.actions.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.actions.keys().copied()
    }
}

/// True when a JSON value is a string that still holds templating to resolve at run time.
pub fn is_templated(v: &Value) -> bool {
    matches!(v, Value::String(s) if s.contains("{{") || s.contains("{%"))
}
