//! Test support: an in-memory [`TaskService`] and a context builder.
//! Only compiled for this crate's unit tests; it must not leak into the public API.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{ActionContext, SubtaskOptions, TaskService, TaskSnapshot};

/// Tasks kept in memory; `create_subtask` is idempotent on its key like the real store.
#[derive(Default)]
pub(crate) struct MemoryTasks {
    templates: BTreeSet<String>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    tasks: HashMap<String, (TaskSnapshot, String, Value)>,
    options: HashMap<String, SubtaskOptions>,
    by_key: HashMap<String, String>,
    next: u64,
}

impl MemoryTasks {
    pub fn with_templates(names: &[&str]) -> Self {
        MemoryTasks {
            templates: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn set(&self, id: &str, state: &str, result: Value) {
        let mut inner = self.inner.lock().unwrap();
        let task = inner.tasks.get_mut(id).expect("unknown task");
        task.0.state = state.to_string();
        task.0.result = result;
    }

    pub fn count(&self) -> usize {
        self.inner.lock().unwrap().tasks.len()
    }

    /// The options a task was created with.
    pub fn options_of(&self, id: &str) -> Option<SubtaskOptions> {
        self.inner.lock().unwrap().options.get(id).cloned()
    }

    /// Parent id and inputs a task was created with.
    pub fn created_with(&self, id: &str) -> Option<(String, Value)> {
        let inner = self.inner.lock().unwrap();
        inner
            .tasks
            .get(id)
            .map(|(_, parent, inputs)| (parent.clone(), inputs.clone()))
    }
}

#[async_trait]
impl TaskService for MemoryTasks {
    async fn create_subtask(
        &self,
        parent_id: &str,
        template: &str,
        inputs: Value,
        options: &SubtaskOptions,
        key: &str,
    ) -> Result<String, String> {
        if !self.templates.contains(template) {
            return Err(format!("unknown template {template:?}"));
        }
        if !inputs.is_object() {
            return Err("inputs must be an object".into());
        }
        let mut inner = self.inner.lock().unwrap();
        if let Some(id) = inner.by_key.get(key) {
            return Ok(id.clone());
        }
        inner.next += 1;
        let id = format!("task-{}", inner.next);
        let snapshot = TaskSnapshot {
            id: id.clone(),
            state: "TODO".into(),
            result: Value::Null,
            requester: format!("task:{parent_id}"),
            resolver: None,
        };
        inner
            .tasks
            .insert(id.clone(), (snapshot, parent_id.to_string(), inputs));
        inner.options.insert(id.clone(), options.clone());
        inner.by_key.insert(key.to_string(), id.clone());
        Ok(id)
    }

    async fn task_snapshot(&self, id: &str) -> Result<TaskSnapshot, String> {
        let inner = self.inner.lock().unwrap();
        inner
            .tasks
            .get(id)
            .map(|t| t.0.clone())
            .ok_or_else(|| format!("no task {id}"))
    }
}

/// A first-attempt context for task `t1`, step `s`.
pub(crate) fn ctx_with(tasks: Arc<dyn TaskService>) -> ActionContext {
    ActionContext {
        task_id: "t1".into(),
        step: "s".into(),
        attempt: 1,
        idempotency_key: "t1/s".into(),
        previous_metadata: None,
        cancel: CancellationToken::new(),
        tasks,
        language: taskhook_model::Language::Jinja,
    }
}

pub(crate) fn ctx() -> ActionContext {
    ctx_with(Arc::new(MemoryTasks::default()))
}

/// The context of the next attempt after a `Waiting` result that left `metadata`.
pub(crate) fn next_attempt(ctx: &ActionContext, metadata: Value) -> ActionContext {
    let mut next = ctx.clone();
    next.attempt += 1;
    next.previous_metadata = Some(metadata);
    next
}
