//! The [`Store`] calls that carry sealed values: each seals what it hands the backend and opens
//! what comes back (see [`crate::crypto`]), so no plaintext of a sealed field reaches a backend.
//!
//! Sealed: task title, inputs, resolver inputs, result and tags; step output, metadata, error
//! and foreach item; audit event details; a fire's payload and error; a hook's body and
//! trigger token. Rows the store builds from what was just written get the caller's plaintext
//! back instead of being opened again.

use serde_json::Value;
use taskhook_model::TaskState;

use crate::crypto::{KeyError, Sealer};
use crate::types::*;
use crate::{Result, Store};

/// Calls `$method` on the backend of `$store`.
macro_rules! backend {
    ($store:expr, $method:ident($($arg:expr),* $(,)?)) => {
        match $store {
            Store::Sqlite(s) => s.$method($($arg),*).await,
            Store::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

impl Sealer {
    /// A sealed copy of a value (the original is left as it is).
    fn sealed(&self, v: &Value) -> Result<Value, KeyError> {
        match &self.0 {
            Some(r) if !v.is_null() => {
                let bytes = serde_json::to_vec(v).map_err(|e| KeyError::Corrupt(e.to_string()))?;
                Ok(Value::String(r.seal(&bytes)?))
            }
            _ => Ok(v.clone()),
        }
    }

    fn sealed_text(&self, s: &str) -> Result<String, KeyError> {
        match &self.0 {
            Some(r) => r.seal(s.as_bytes()),
            None => Ok(s.to_string()),
        }
    }

    fn event(&self, e: &mut NewEvent) -> Result<(), KeyError> {
        self.value(&mut e.detail)
    }

    fn step(&self, s: &mut StepRow) -> Result<(), KeyError> {
        self.value(&mut s.output)?;
        self.value(&mut s.metadata)?;
        self.opt_text(&mut s.error)?;
        self.opt_value(&mut s.item)
    }

    fn open_step(&self, s: &mut StepRow) -> Result<(), KeyError> {
        self.open_value(&mut s.output)?;
        self.open_value(&mut s.metadata)?;
        self.open_opt_text(&mut s.error)?;
        self.open_opt_value(&mut s.item)
    }

    fn open_task(&self, t: &mut TaskRow) -> Result<(), KeyError> {
        self.open_text(&mut t.title)?;
        self.open_value(&mut t.inputs)?;
        self.open_value(&mut t.resolver_inputs)?;
        self.open_value(&mut t.result)?;
        self.open_value(&mut t.tags)
    }

    fn open_fire(&self, f: &mut FireRow) -> Result<(), KeyError> {
        self.open_opt_text(&mut f.error)?;
        self.open_opt_value(&mut f.payload)
    }

    fn open_hook(&self, h: &mut HookRow) -> Result<(), KeyError> {
        self.open_value(&mut h.body)?;
        self.open_text(&mut h.trigger_token)
    }

    /// Seals a new task in place; returns its plaintext `(title, inputs, tags)`.
    fn new_task(&self, t: &mut NewTask) -> Result<(String, Value, Value), KeyError> {
        if let Some(claim) = &mut t.claim {
            self.value(&mut claim.detail)?;
        }
        let sealed = (
            self.sealed_text(&t.title)?,
            self.sealed(&t.inputs)?,
            self.sealed(&t.tags)?,
        );
        let title = std::mem::replace(&mut t.title, sealed.0);
        let inputs = std::mem::replace(&mut t.inputs, sealed.1);
        let tags = std::mem::replace(&mut t.tags, sealed.2);
        Ok((title, inputs, tags))
    }

    /// The row of a task this call inserted: its plaintext put back, the rest opened.
    fn inserted_task(
        &self,
        row: &mut TaskRow,
        (title, inputs, tags): (String, Value, Value),
    ) -> Result<(), KeyError> {
        row.title = title;
        row.inputs = inputs;
        row.tags = tags;
        self.open_value(&mut row.resolver_inputs)?;
        self.open_value(&mut row.result)
    }
}

impl Store {
    // ---- hooks ----

    /// Creates or replaces a hook. A new hook gets `new_token` as its trigger token; a replaced
    /// one keeps its token and schedule position. Returns the row and whether it is new.
    pub async fn put_hook(
        &self,
        group: &str,
        id: &str,
        body: Value,
        new_token: &str,
    ) -> Result<(HookRow, bool)> {
        let s = self.sealer();
        let sealed = s.sealed(&body)?;
        let token = s.sealed_text(new_token)?;
        let (mut row, new) = backend!(self, put_hook(group, id, sealed, &token))?;
        row.body = body;
        s.open_text(&mut row.trigger_token)?;
        Ok((row, new))
    }

    pub async fn get_hook(&self, group: &str, id: &str) -> Result<Option<HookRow>> {
        let mut row = backend!(self, get_hook(group, id))?;
        if let Some(h) = &mut row {
            self.sealer().open_hook(h)?;
        }
        Ok(row)
    }

    /// Every hook, or those of one group, ordered by group and id.
    pub async fn list_hooks(&self, group: Option<&str>) -> Result<Vec<HookRow>> {
        let mut rows = backend!(self, list_hooks(group))?;
        let s = self.sealer();
        for h in &mut rows {
            s.open_hook(h)?;
        }
        Ok(rows)
    }

    /// Replaces a hook's trigger token; false when there is no such hook.
    pub async fn set_hook_token(&self, group: &str, id: &str, token: &str) -> Result<bool> {
        let token = self.sealer().sealed_text(token)?;
        backend!(self, set_hook_token(group, id, &token))
    }

    /// Records one event meeting a hook, with the task it creates, in one transaction.
    ///
    /// A delivery id already seen since `dedupe_since`, or a due time already fired, returns
    /// the first fire instead ([`FireOutcome::Duplicate`]). With `overlap` set and an
    /// unfinished task from this hook, no task is created and the fire's result is the
    /// given word (`skipped` or `queued`). All of this holds under any concurrency, across
    /// instances too (PostgreSQL serialises the fires of one hook).
    pub async fn record_fire(
        &self,
        mut fire: NewFire,
        task: Option<(NewTask, NewEvent)>,
        dedupe_since: Option<i64>,
        overlap: Option<&'static str>,
    ) -> Result<FireOutcome> {
        let s = self.sealer();
        let fire_id = fire.id.clone();
        let payload = fire.payload.take();
        if let Some(p) = &payload {
            fire.payload = Some(s.sealed(p)?);
        }
        let error = fire.error.take();
        if let Some(e) = &error {
            fire.error = Some(s.sealed_text(e)?);
        }
        let mut plain_task = None;
        let task = match task {
            Some((mut t, mut e)) => {
                plain_task = Some((t.id.clone(), s.new_task(&mut t)?));
                s.event(&mut e)?;
                Some((t, e))
            }
            None => None,
        };
        let mut out = backend!(self, record_fire(fire, task, dedupe_since, overlap))?;
        match &mut out {
            FireOutcome::Recorded(f, t) => {
                if f.id == fire_id {
                    f.payload = payload;
                    f.error = error;
                } else {
                    s.open_fire(f)?;
                }
                if let Some(t) = t {
                    match plain_task {
                        Some((id, plain)) if id == t.id => s.inserted_task(t, plain)?,
                        _ => s.open_task(t)?,
                    }
                }
            }
            FireOutcome::Duplicate(f) => s.open_fire(f)?,
        }
        Ok(out)
    }

    /// The oldest fire of a hook still waiting for its predecessor to finish.
    pub async fn oldest_queued_fire(&self, group: &str, id: &str) -> Result<Option<FireRow>> {
        let mut row = backend!(self, oldest_queued_fire(group, id))?;
        if let Some(f) = &mut row {
            self.sealer().open_fire(f)?;
        }
        Ok(row)
    }

    /// Starts the task of a queued fire, if the fire is still queued and no task of its hook is
    /// unfinished; otherwise does nothing and returns `None`.
    pub async fn start_queued_fire(
        &self,
        fire_id: &str,
        mut task: NewTask,
        mut event: NewEvent,
    ) -> Result<Option<TaskRow>> {
        let s = self.sealer();
        let plain = s.new_task(&mut task)?;
        s.event(&mut event)?;
        let mut row = backend!(self, start_queued_fire(fire_id, task, event))?;
        if let Some(t) = &mut row {
            s.inserted_task(t, plain)?;
        }
        Ok(row)
    }

    /// Ends a queued fire that can no longer start a task (its hook now refuses it) as
    /// `error` with `reason`; false when it was no longer queued.
    pub async fn fail_queued_fire(&self, fire_id: &str, reason: &str) -> Result<bool> {
        let mut reason = Some(reason.to_string());
        self.sealer().opt_text(&mut reason)?;
        let reason = reason.unwrap_or_default();
        backend!(self, fail_queued_fire(fire_id, &reason))
    }

    /// Fires of a hook, newest first, with the current state of each created task.
    pub async fn list_fires(
        &self,
        group: &str,
        id: &str,
        before: Option<String>,
        limit: u32,
    ) -> Result<Vec<FireRow>> {
        let mut rows = backend!(self, list_fires(group, id, before, limit))?;
        let s = self.sealer();
        for f in &mut rows {
            s.open_fire(f)?;
        }
        Ok(rows)
    }

    // ---- tasks ----

    /// Inserts a task and its steps. With an idempotency key already used for this template,
    /// returns the existing task and `false` (also when two callers race with the same key).
    pub async fn create_task(
        &self,
        mut t: NewTask,
        mut event: NewEvent,
    ) -> Result<(TaskRow, bool)> {
        let s = self.sealer();
        let plain = s.new_task(&mut t)?;
        s.event(&mut event)?;
        let (mut row, new) = backend!(self, create_task(t, event))?;
        if new {
            s.inserted_task(&mut row, plain)?;
        } else {
            s.open_task(&mut row)?;
        }
        Ok((row, new))
    }

    /// A task and its steps (ordered by name).
    pub async fn get_task(&self, id: &str) -> Result<Option<(TaskRow, Vec<StepRow>)>> {
        let mut found = backend!(self, get_task(id))?;
        if let Some((t, steps)) = &mut found {
            let s = self.sealer();
            s.open_task(t)?;
            for step in steps {
                s.open_step(step)?;
            }
        }
        Ok(found)
    }

    /// Tasks matching a filter, newest first.
    pub async fn list_tasks(&self, f: TaskFilter) -> Result<Vec<TaskRow>> {
        let mut rows = backend!(self, list_tasks(f))?;
        let s = self.sealer();
        for t in &mut rows {
            s.open_task(t)?;
        }
        Ok(rows)
    }

    /// A task's audit trail, oldest first.
    pub async fn task_events(&self, id: &str) -> Result<Vec<TaskEvent>> {
        let mut rows = backend!(self, task_events(id))?;
        let s = self.sealer();
        for e in &mut rows {
            s.open_value(&mut e.detail)?;
        }
        Ok(rows)
    }

    // ---- the engine's side ----

    /// At start: tasks left RUNNING by a process that is gone become READY now (audit
    /// `recovered`), each counting one more crash; the engine then sorts out their RUNNING
    /// steps. SQLite: every RUNNING task (one process owns the file). PostgreSQL: only those
    /// whose lease has expired, since live instances hold the others.
    pub async fn recover_running(&self) -> Result<usize> {
        let detail = self
            .sealer()
            .sealed(&serde_json::json!({"reason": crate::sqlite::RECOVERED_REASON}))?;
        backend!(self, recover_running(detail))
    }

    /// Makes READY the given RUNNING tasks that are still held at the given epoch (a task
    /// claimed again since is left alone), recording `reason`. `crashed`: the holder is
    /// presumed dead (an expired lease), which counts toward the task's crash limit; a holder
    /// shutting down cleanly does not. Returns how many moved.
    pub async fn release_orphans(
        &self,
        tasks: Vec<(String, i64)>,
        reason: &str,
        crashed: bool,
    ) -> Result<usize> {
        let detail = self
            .sealer()
            .sealed(&serde_json::json!({ "reason": reason }))?;
        backend!(self, release_orphans(tasks, detail, crashed))
    }

    /// Claims up to `limit` tasks due at `now` (READY, or WAITING on a timer that fired):
    /// sets them RUNNING under a new lease epoch (one more than the last: the fencing token)
    /// and returns them with their steps. Concurrent claimers never claim the same task.
    pub async fn claim_due(
        &self,
        owner: &str,
        now: i64,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedTask>> {
        let s = self.sealer();
        let detail = s.sealed(&claim_detail(owner))?;
        let mut claimed = backend!(self, claim_due(owner, detail, now, limit, lease_ms))?;
        for c in &mut claimed {
            s.open_task(&mut c.task)?;
            for step in &mut c.steps {
                s.open_step(step)?;
            }
        }
        Ok(claimed)
    }

    /// Writes step rows of a task held at `epoch`.
    pub async fn save_steps(
        &self,
        task_id: &str,
        epoch: i64,
        mut steps: Vec<StepRow>,
    ) -> Result<()> {
        let s = self.sealer();
        for step in &mut steps {
            s.step(step)?;
        }
        backend!(self, save_steps(task_id, epoch, steps))
    }

    /// Ends a run: writes the last step rows, moves the task to its next state, releases the
    /// lease and the task's resource slots, and records why. A stop recorded with the task
    /// (pause or cancel asked while it ran, see [`Store::pending_stops`]) that the run did not
    /// apply is applied to the state the run leaves, with its own audit entry. When the task
    /// ends and its parent waits on it, wakes the parent (returns its id so the caller can
    /// notify the engine).
    pub async fn end_run(
        &self,
        task_id: &str,
        epoch: i64,
        mut steps: Vec<StepRow>,
        mut end: RunEnd,
    ) -> Result<Option<String>> {
        let s = self.sealer();
        for step in &mut steps {
            s.step(step)?;
        }
        s.opt_value(&mut end.result)?;
        s.event(&mut end.event)?;
        backend!(self, end_run(task_id, epoch, steps, end))
    }

    /// A human or the API changes a task's state (resolve, retry, pause, cancel).
    /// `due_at` is set when the task becomes READY. A RUNNING task is left alone for
    /// PAUSED and CANCELLED: the engine must stop its run, and [`TransitionOutcome::Running`]
    /// says so. The request is then recorded with the task (a cancel is not replaced by a
    /// later pause) for the instance that holds the run ([`Store::pending_stops`]).
    pub async fn transition(
        &self,
        task_id: &str,
        allowed_from: &'static [TaskState],
        to: TaskState,
        due_at: Option<i64>,
        mut resolver_inputs: Option<Value>,
        mut event: NewEvent,
    ) -> Result<TransitionOutcome> {
        let s = self.sealer();
        s.opt_value(&mut resolver_inputs)?;
        s.event(&mut event)?;
        backend!(
            self,
            transition(task_id, allowed_from, to, due_at, resolver_inputs, event)
        )
    }

    /// Adds a comment to a task, its content sealed ([`StoreError::NotFound`] without the
    /// task, [`StoreError::Conflict`] past [`MAX_COMMENTS_PER_TASK`]).
    pub async fn add_comment(&self, task_id: &str, author: &str, content: &str) -> Result<Comment> {
        let mut comment = Comment {
            id: uuid::Uuid::now_v7().to_string(),
            task_id: task_id.to_string(),
            author: author.to_string(),
            content: content.to_string(),
            created_at: crate::now_ms(),
        };
        let mut sealed = comment.clone();
        self.sealer().text(&mut sealed.content)?;
        backend!(self, add_comment(sealed))?;
        comment.content = content.to_string();
        Ok(comment)
    }

    /// A task's comments, oldest first.
    pub async fn comments(&self, task_id: &str) -> Result<Vec<Comment>> {
        let mut comments = backend!(self, comments(task_id))?;
        let s = self.sealer();
        for c in &mut comments {
            s.open_text(&mut c.content)?;
        }
        Ok(comments)
    }

    /// Gives a task BLOCKED by `retry_max` `more` runs; it stays BLOCKED until retried.
    /// [`StoreError::Conflict`] when it is not blocked so.
    pub async fn extend_run_max(
        &self,
        task_id: &str,
        more: u32,
        mut event: NewEvent,
    ) -> Result<()> {
        self.sealer().event(&mut event)?;
        backend!(self, extend_run_max(task_id, more, event))
    }

    /// A person edits a task that waits for a person (its state is one of `allowed`), as they
    /// saw it: [`StoreError::Conflict`] when it is in another state or changed after
    /// `seen_updated_at`. Title, inputs, tags and people are replaced; the state stays;
    /// `event` records the edit.
    pub async fn edit_task(
        &self,
        task_id: &str,
        seen_updated_at: i64,
        allowed: &'static [TaskState],
        mut edit: crate::TaskEdit,
        mut event: NewEvent,
    ) -> Result<()> {
        let s = self.sealer();
        edit.title = s.sealed_text(&edit.title)?;
        edit.inputs = s.sealed(&edit.inputs)?;
        edit.tags = s.sealed(&edit.tags)?;
        s.event(&mut event)?;
        backend!(
            self,
            edit_task(task_id, seen_updated_at, allowed, edit, event)
        )
    }

    /// A person writes steps of a task that is not running (its state is one of `allowed`),
    /// as they saw it: the write fails with [`StoreError::Conflict`] when the task changed
    /// after `seen_updated_at`. The task keeps its state; `event` records the edit.
    pub async fn put_steps(
        &self,
        task_id: &str,
        seen_updated_at: i64,
        allowed: &'static [TaskState],
        mut edit: crate::StepEdit,
        mut event: NewEvent,
    ) -> Result<()> {
        let s = self.sealer();
        for step in &mut edit.put {
            s.step(step)?;
        }
        s.event(&mut event)?;
        backend!(
            self,
            put_steps(task_id, seen_updated_at, allowed, edit, event)
        )
    }
}
