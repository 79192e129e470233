//! One run of one task: walk the step graph until nothing more can run now, then end
//! the run in the state the steps call for. Every step change is committed (in one
//! write per round) before the engine starts what follows from it.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::{Map, Value, json};
use taskhook_actions::{ActionContext, ActionError, ActionOutput};
use taskhook_model::condition::ConditionKind;
use taskhook_model::secret::Redactor;
use taskhook_model::template::{Action, DependencyStates, OutputStrategy, Step};
use taskhook_model::validate::merge_configuration;
use taskhook_model::{Language, StepState, TaskState};
use taskhook_store::{ClaimedTask, NewEvent, RunEnd, StepRow, StoreError, TaskRow, now_ms};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::catalog::CompiledTemplate;
use crate::render;
use crate::{Inner, RunControl, StopRequest};
use taskhook_expr::ExprError;

struct Run {
    inner: Arc<Inner>,
    task: TaskRow,
    compiled: Arc<CompiledTemplate>,
    steps: BTreeMap<String, StepRow>,
    /// Steps already attempted in this run (each runs at most once per run, but RETRY_NOW).
    executed: HashSet<String>,
    /// Steps changed since the last write.
    dirty: HashSet<String>,
    stop: Arc<Mutex<Option<StopRequest>>>,
    token: CancellationToken,
    /// The stop request the run ended with, if any.
    stop_honored: Option<StopRequest>,
    /// Current values of the secrets the template reads (`{{ secret.NAME }}`), read again at
    /// each round so that a rotated secret reaches the steps started after the change.
    secrets: Map<String, Value>,
    /// The same secrets as `config.NAME` reads them: parsed as JSON when they are JSON.
    configs: Map<String, Value>,
    /// Masks the task's password inputs and every secret value this run has seen in all it
    /// writes: see [`Run::take_dirty`] and [`Run::end_with`].
    redactor: Redactor,
}

/// What one attempt came back with.
struct Attempt {
    step: String,
    result: Result<ActionOutput, ActionError>,
}

/// The text a panic was raised with, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

pub(crate) async fn run_task(inner: Arc<Inner>, claimed: ClaimedTask) {
    let id = claimed.task.id.clone();
    let compiled = match inner
        .template(&claimed.task.template, claimed.task.template_version)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let end = RunEnd {
                state: TaskState::Blocked,
                due_at: None,
                result: None,
                blocked_reason: Some("template"),
                event: NewEvent::transition(
                    "engine",
                    "blocked",
                    TaskState::Running,
                    TaskState::Blocked,
                    json!({"reason": format!("template unusable: {e}"), "code": "template"}),
                ),
            };
            if let Err(e) = inner
                .store
                .end_run(&id, claimed.task.lease_epoch, vec![], end)
                .await
            {
                tracing::error!(task = %id, error = %e, "could not block a task whose template is unusable");
            }
            // A stop asked for while the task was claimed applies to the state it was left in.
            let pending = inner
                .pending_stops
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            if let Some(req) = pending {
                apply_late_stop(&inner, &id, req).await;
            }
            return;
        }
    };
    let ctl = RunControl {
        stop: Arc::new(Mutex::new(None)),
        token: CancellationToken::new(),
        epoch: claimed.task.lease_epoch,
    };
    {
        let mut running = inner.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(req) = inner
            .pending_stops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            let cancel = req.to == TaskState::Cancelled;
            *ctl.stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(req);
            if cancel {
                ctl.token.cancel();
            }
        }
        running.insert(id.clone(), ctl.clone());
    }
    let mut redactor = Redactor::new();
    redactor.add_passwords(&compiled.template.inputs, &claimed.task.inputs);
    redactor.add_passwords(
        &compiled.template.resolver_inputs,
        &claimed.task.resolver_inputs,
    );
    let mut run = Run {
        inner: inner.clone(),
        steps: claimed
            .steps
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect(),
        task: claimed.task,
        compiled,
        executed: HashSet::new(),
        dirty: HashSet::new(),
        stop: ctl.stop,
        token: ctl.token,
        stop_honored: None,
        secrets: Map::new(),
        configs: Map::new(),
        redactor,
    };
    let ended = match run.drive().await {
        Ok(()) => true,
        Err(StoreError::LeaseLost { .. }) => {
            tracing::warn!(task = %id, "lease lost; another run owns the task");
            false
        }
        Err(e) => {
            tracing::error!(task = %id, error = %e, "run aborted by a store error; the task resumes after recovery");
            false
        }
    };
    let late = {
        let mut running = inner.running.lock().unwrap_or_else(|e| e.into_inner());
        running.remove(&id);
        run.stop_request()
            .filter(|req| ended && run.stop_honored.as_ref() != Some(req))
    };
    // A stop that arrived after the run decided how to end (the API already said yes to it):
    // apply it to the state the run left the task in.
    if let Some(req) = late {
        apply_late_stop(&inner, &id, req).await;
    }
}

async fn apply_late_stop(inner: &Inner, id: &str, req: StopRequest) {
    if let Err(e) = inner.stop_task(id, req).await {
        tracing::info!(task = %id, error = %e, "a stop arrived as the run ended and no longer applies");
    }
}

impl Run {
    fn def(&self, name: &str) -> Option<&Step> {
        let steps = &self.compiled.steps;
        steps.get(name).or_else(|| {
            let parent = self.steps.get(name)?.foreach_parent.as_ref()?;
            steps.get(parent)
        })
    }

    fn set(&mut self, name: &str, f: impl FnOnce(&mut StepRow)) {
        if let Some(s) = self.steps.get_mut(name) {
            f(s);
            self.dirty.insert(name.to_string());
        }
    }

    /// The step rows changed since the last write, redacted (in memory too, so later steps
    /// read what is stored): every step row a run writes passes here. Secret values and
    /// password inputs in outputs, metadata, errors and foreach items become the mask.
    fn take_dirty(&mut self) -> Vec<StepRow> {
        let (steps, redactor) = (&mut self.steps, &self.redactor);
        let mut out: Vec<StepRow> = self
            .dirty
            .drain()
            .filter_map(|n| {
                let row = steps.get_mut(&n)?;
                redact_row(redactor, row);
                Some(row.clone())
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn stop_request(&self) -> Option<StopRequest> {
        self.stop.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn drive(&mut self) -> Result<(), StoreError> {
        // A task whose runs keep being cut off by the process stopping may be what stops it
        // (a template exhausting memory, an action crashing): it is not run again until a
        // person has looked. Its steps left RUNNING become CRASHED, idempotent or not.
        let crashes = self.task.crashes;
        if crashes >= self.inner.config.max_task_crashes {
            let reason = format!(
                "the process stopped {crashes} times in a row while this task ran; it may be \
                 what stops it, so it is not run again automatically"
            );
            let steps = self.settle_interrupted(&reason, true);
            tracing::error!(task = %self.task.id, crashes, "blocked: {reason}");
            let detail = json!({"reason": reason, "crashes": crashes, "steps": steps});
            return self.block("crash_loop", detail).await;
        }
        // Steps left RUNNING by a process that died: re-run if idempotent, else a human decides.
        let crashed = self.settle_interrupted("the server stopped while this step ran", false);
        if !crashed.is_empty() {
            let detail = json!({"reason": "non-idempotent steps were interrupted by a crash", "steps": crashed});
            return self.block("crashed", detail).await;
        }

        let mut inflight: JoinSet<Attempt> = JoinSet::new();
        loop {
            let stopping = self.stop_request().is_some() || self.inner.shutdown.is_cancelled();
            if !stopping {
                self.load_secrets().await?;
            }
            let to_start = if stopping { Vec::new() } else { self.advance() };
            if to_start.is_empty() && inflight.is_empty() && (stopping || !self.has_eligible()) {
                // The run ends: its last step results ride in the end's write.
                break;
            }
            if !self.dirty.is_empty() {
                let rows = self.take_dirty();
                let (store, id, epoch) = (&self.inner.store, &self.task.id, self.task.lease_epoch);
                persist(&self.inner, || store.save_steps(id, epoch, rows.clone())).await?;
            }
            for name in to_start {
                self.spawn_attempt(&mut inflight, name);
            }
            if inflight.is_empty() {
                if stopping || !self.has_eligible() {
                    break;
                }
                continue;
            }
            let done = tokio::select! {
                r = inflight.join_next() => r,
                _ = self.token.cancelled(), if !self.token.is_cancelled() => None,
            };
            if let Some(joined) = done {
                self.absorb(joined);
                while let Some(joined) = inflight.try_join_next() {
                    self.absorb(joined);
                }
            }
        }
        self.finish().await
    }

    /// Reads the current values of the secrets the template uses (nothing when it uses none).
    async fn load_secrets(&mut self) -> Result<(), StoreError> {
        if self.compiled.secrets.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = self.compiled.secrets.iter().cloned().collect();
        let store = &self.inner.store;
        let values = persist(&self.inner, || store.secret_values(names.clone())).await?;
        self.secrets = Map::new();
        self.configs = Map::new();
        for (name, value) in values {
            // Old values stay masked too: they may sit in outputs written before a rotation.
            self.redactor.add(&value);
            // `config.NAME` (µTask's configstore) reads the same secret as JSON when it is
            // JSON; each text inside it is masked as well.
            let parsed =
                serde_json::from_str::<Value>(&value).unwrap_or(Value::String(value.clone()));
            mask_texts(&mut self.redactor, &parsed);
            self.configs.insert(name.clone(), parsed);
            self.secrets.insert(name, Value::String(value));
        }
        Ok(())
    }

    /// The first secret step `name` reads that does not exist (deleted since the template
    /// was written).
    fn missing_secret(&self, name: &str) -> Option<String> {
        let parent = self
            .steps
            .get(name)?
            .foreach_parent
            .as_deref()
            .unwrap_or(name);
        self.compiled
            .step_secrets
            .get(parent)?
            .iter()
            .find(|s| !self.secrets.contains_key(*s))
            .cloned()
    }

    /// Steps still RUNNING whose attempt was cut off (a crash, or shutdown's grace running
    /// out): an idempotent one goes back to TODO, any other becomes CRASHED for a human to check.
    /// Returns the crashed ones.
    /// With `all`, idempotent steps become CRASHED too (the task is not to run again).
    fn settle_interrupted(&mut self, why: &str, all: bool) -> Vec<String> {
        let interrupted: Vec<String> = self
            .steps
            .values()
            .filter(|s| s.state == StepState::Running)
            .map(|s| s.name.clone())
            .collect();
        let mut crashed = Vec::new();
        for name in interrupted {
            let idempotent = self.def(&name).is_some_and(|d| d.idempotent);
            if idempotent && !all {
                self.set(&name, |s| s.state = StepState::Todo);
            } else {
                crashed.push(name.clone());
                let message = if all {
                    format!("{why}: check its effect, then retry the task")
                } else {
                    format!(
                        "{why}, and it is not idempotent: check its effect, then retry the task"
                    )
                };
                self.set(&name, |s| {
                    s.state = StepState::Crashed;
                    s.error = Some(message);
                });
            }
        }
        crashed
    }

    /// The shutdown grace ran out and cancelled the attempts in flight (not a person's cancel).
    fn cut_by_shutdown(&self) -> bool {
        self.inner.shutdown.is_cancelled()
            && self.token.is_cancelled()
            && self.stop_request().is_none()
    }

    fn absorb(&mut self, joined: Result<Attempt, tokio::task::JoinError>) {
        match joined {
            Ok(a) => self.apply_result(a),
            Err(e) => tracing::error!(task = %self.task.id, error = %e, "a step attempt panicked"),
        }
    }

    fn has_eligible(&self) -> bool {
        self.steps
            .keys()
            .any(|n| self.eligibility(n) == Eligibility::Ready)
    }

    /// Applies skip conditions, pruning and foreach expansion; marks runnable steps RUNNING
    /// and returns them (to start after the write commits).
    fn advance(&mut self) -> Vec<String> {
        let mut start = Vec::new();
        loop {
            let mut changed = false;
            let names: Vec<String> = self.steps.keys().cloned().collect();
            for name in names {
                match self.eligibility(&name) {
                    Eligibility::Prune => {
                        self.set(&name, |s| s.state = StepState::Prune);
                        changed = true;
                    }
                    Eligibility::Contract => {
                        self.set(&name, |s| {
                            s.state = StepState::Done;
                            s.error = None;
                        });
                        changed = true;
                    }
                    Eligibility::Ready => {
                        changed = true;
                        self.executed.insert(name.clone());
                        if let Some(missing) = self.missing_secret(&name) {
                            self.set(&name, |s| {
                                s.state = StepState::FatalError;
                                s.error = Some(format!(
                                    "secret {missing:?} does not exist (it was deleted after the template was written): create it, then retry the task"
                                ));
                            });
                            continue;
                        }
                        let is_child = self.steps[&name].foreach_parent.is_some();
                        let foreach = if is_child {
                            None
                        } else {
                            self.def(&name).and_then(|d| d.foreach.clone())
                        };
                        // A foreach step's skip conditions apply to each child (µTask's default
                        // `foreach: children`: they may read `{{ iterator }}`, which the parent
                        // lacks), but for those marked `foreach: parent`, which apply before it
                        // expands.
                        if self.apply_skip_conditions(&name, foreach.is_some()) {
                            continue;
                        }
                        if let Some(expr) = foreach {
                            self.expand(&name, &expr);
                            continue;
                        }
                        self.set(&name, |s| {
                            s.state = StepState::Running;
                            s.attempts += 1;
                        });
                        start.push(name);
                    }
                    Eligibility::No => {}
                }
            }
            if !changed {
                return start;
            }
        }
    }

    fn eligibility(&self, name: &str) -> Eligibility {
        let Some(row) = self.steps.get(name) else {
            return Eligibility::No;
        };
        let now = now_ms();
        if row.state == StepState::Expanded {
            let children_final = self
                .steps
                .values()
                .filter(|c| c.foreach_parent.as_deref() == Some(name))
                .all(|c| c.state.is_final());
            return if children_final {
                Eligibility::Contract
            } else {
                Eligibility::No
            };
        }
        let runnable = match &row.state {
            StepState::Todo | StepState::RetryNow => true,
            StepState::ServerError | StepState::ToRetry | StepState::Waiting => {
                row.next_retry_at.is_none_or(|t| t <= now)
            }
            StepState::ClientError | StepState::FatalError | StepState::Crashed => true,
            _ => false,
        };
        if !runnable || (self.executed.contains(name) && row.state != StepState::RetryNow) {
            return Eligibility::No;
        }
        // Deps: a foreach child's come from its parent (already met) plus, in sequence, its predecessor.
        if let Some(parent) = &row.foreach_parent {
            return match self.sequence_predecessor(parent, name) {
                Some(prev) if !self.steps.get(&prev).is_some_and(|p| p.state.is_final()) => {
                    Eligibility::No
                }
                _ => Eligibility::Ready,
            };
        }
        let Some(def) = self.def(name) else {
            return Eligibility::No;
        };
        let mut ready = true;
        for dep in def.parsed_dependencies() {
            let Some(target) = self.steps.get(&dep.step) else {
                return Eligibility::No;
            };
            match dep.states {
                DependencyStates::Any => {
                    if !(target.state.is_final() && self.ancestors_final(&dep.step)) {
                        ready = false;
                    }
                }
                DependencyStates::OneOf(states) => {
                    if states.iter().any(|s| s == target.state.as_str()) {
                        continue;
                    }
                    if target.state.is_final() {
                        return if row.state == StepState::Todo {
                            Eligibility::Prune
                        } else {
                            Eligibility::No
                        };
                    }
                    ready = false;
                }
            }
        }
        if ready {
            Eligibility::Ready
        } else {
            Eligibility::No
        }
    }

    fn ancestors_final(&self, name: &str) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![name.to_string()];
        while let Some(n) = stack.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            if !self.steps.get(&n).is_some_and(|s| s.state.is_final()) {
                return false;
            }
            if let Some(d) = self.compiled.steps.get(&n) {
                stack.extend(d.parsed_dependencies().into_iter().map(|d| d.step));
            }
        }
        true
    }

    fn sequence_predecessor(&self, parent: &str, child: &str) -> Option<String> {
        let def = self.compiled.steps.get(parent)?;
        if def.foreach_strategy != Some(taskhook_model::ForeachStrategy::Sequence) {
            return None;
        }
        let idx: usize = child.rsplit('-').next()?.parse().ok()?;
        (idx > 0).then(|| format!("{parent}-{}", idx - 1))
    }

    /// The templating context for a step: inputs, variables, every step's results.
    fn context(&self, current: Option<&str>, pre_hook: Option<&ActionOutput>) -> Value {
        let mut steps = Map::new();
        for (name, s) in &self.steps {
            if s.foreach_parent.is_some() {
                continue;
            }
            let mut v = json!({
                "state": s.state.as_str(),
                "output": s.output,
                "metadata": s.metadata,
                "error": s.error,
                "attempts": s.attempts,
            });
            if self
                .compiled
                .template
                .steps
                .get(name)
                .is_some_and(|d| d.foreach.is_some())
            {
                let mut children: Vec<&StepRow> = self
                    .steps
                    .values()
                    .filter(|c| c.foreach_parent.as_deref() == Some(name.as_str()))
                    .collect();
                children.sort_by_key(|c| child_index(&c.name));
                let go = self.compiled.language == Language::Go;
                v["children"] = Value::Array(
                    children
                        .iter()
                        .filter(|c| c.state != StepState::Prune)
                        .map(|c| {
                            let mut child = json!({"item": c.item, "output": c.output, "metadata": c.metadata, "state": c.state.as_str(), "error": c.error});
                            if go {
                                // µTask's shape: the child's item is `metadata.iterator`.
                                let mut m = c.metadata.as_object().cloned().unwrap_or_default();
                                m.insert("iterator".into(), c.item.clone().unwrap_or(Value::Null));
                                child["metadata"] = Value::Object(m);
                            }
                            child
                        })
                        .collect(),
                );
            }
            steps.insert(name.clone(), v);
        }
        let mut ctx = json!({
            "input": self.task.inputs,
            "resolver_input": self.task.resolver_inputs,
            "task": {
                "id": self.task.id,
                "template": self.task.template,
                "title": self.task.title,
                "requester": self.task.requester,
                "created_at": self.task.created_at,
                "run_count": self.task.run_count,
                "tags": self.task.tags,
            },
            "var": {},
            "step": Value::Object(steps),
            "secret": Value::Object(self.secrets.clone()),
            "config": Value::Object(self.configs.clone()),
        });
        if let Some(cur) = current {
            let row = &self.steps[cur];
            let this_key = row
                .foreach_parent
                .clone()
                .unwrap_or_else(|| cur.to_string());
            let mut this = ctx["step"].get(&this_key).cloned().unwrap_or(Value::Null);
            if row.foreach_parent.is_some() {
                this = json!({"state": row.state.as_str(), "output": row.output, "metadata": row.metadata, "error": row.error, "attempts": row.attempts});
            }
            ctx["step"]["this"] = this;
            if let Some(item) = &row.item {
                ctx["iterator"] = item.clone();
            }
        }
        if let Some(p) = pre_hook {
            ctx["pre_hook"] = json!({"output": p.output, "metadata": p.metadata});
        }
        // Variables see everything above, and the variables declared before them.
        for var in &self.compiled.template.variables {
            let v = render::variable(&self.compiled.template, self.compiled.language, var, &ctx)
                .unwrap_or_else(|e| Value::String(format!("<error: {e}>")));
            ctx["var"][&var.name] = v;
        }
        // A step calling a function: its arguments, rendered in the step's context.
        let called = current.map(|c| {
            self.steps[c]
                .foreach_parent
                .clone()
                .unwrap_or_else(|| c.to_string())
        });
        if let Some(call) = called.and_then(|c| self.compiled.calls.get(&c)) {
            match self.render_value(&call.args[0], &ctx) {
                Ok(v) => ctx["function_args"] = v,
                // Left undefined: the function's configuration then fails naming `function_args`.
                Err(e) => {
                    tracing::debug!(task = %self.task.id, error = %e, "function arguments failed to render")
                }
            }
        }
        ctx
    }

    /// The function call a step (or a foreach child's parent) makes, if any.
    fn call_of(&self, name: &str) -> Option<&crate::catalog::FunctionCall> {
        let parent = self
            .steps
            .get(name)
            .and_then(|s| s.foreach_parent.as_deref())
            .unwrap_or(name);
        self.compiled.calls.get(parent)
    }

    /// `ctx`, a step's context (whose `function_args` are its first function's), with the
    /// arguments of function `level` of its call instead: each function's arguments are the
    /// configuration of the one calling it, rendered with that one's arguments.
    fn with_call_args(&self, name: &str, mut ctx: Value, level: usize) -> Result<Value, String> {
        let Some(call) = self.call_of(name) else {
            return Ok(ctx);
        };
        for i in 1..=level.min(call.args.len() - 1) {
            let args = self
                .render_value(&call.args[i], &ctx)
                .map_err(|e| format!("arguments of function {:?}: {e}", call.names[i]))?;
            ctx["function_args"] = args;
        }
        Ok(ctx)
    }

    /// The context a part of a step reads: the arguments of function `level` of its call.
    fn context_at(&self, name: &str, level: usize) -> Result<Value, String> {
        self.with_call_args(name, self.context(Some(name), None), level)
    }

    /// The index of the function arguments condition `i` of a step reads.
    fn condition_level(&self, name: &str, i: usize) -> usize {
        self.call_of(name)
            .and_then(|c| c.condition_args.get(i).copied())
            .unwrap_or(0)
    }

    /// Evaluates skip conditions; true when one held (the step does not run). On a foreach
    /// step before it expands (`parent`), only those marked `foreach: parent`; on any other
    /// step or child, the others.
    fn apply_skip_conditions(&mut self, name: &str, parent: bool) -> bool {
        let Some(def) = self.def(name).cloned() else {
            return false;
        };
        let skips: Vec<_> = def
            .conditions
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.kind == ConditionKind::Skip
                    && (c.foreach == Some(taskhook_model::ConditionForeach::Parent)) == parent
            })
            .map(|(i, c)| (self.condition_level(name, i), c.clone()))
            .collect();
        if skips.is_empty() {
            return false;
        }
        let mut held = false;
        for (level, cond) in &skips {
            let ctx = self.context_at(name, *level);
            match ctx.and_then(|ctx| evaluate(&self.compiled, cond, &ctx).map(|r| (r, ctx))) {
                Ok((true, ctx)) => {
                    held = true;
                    let message = cond
                        .message
                        .as_ref()
                        .map(|m| self.render_text(m, &ctx).unwrap_or_else(|e| e.message));
                    self.apply_then(name, &cond.then, message);
                    if self
                        .steps
                        .get(name)
                        .is_some_and(|s| s.state == StepState::RetryNow)
                    {
                        // RETRY_NOW would make the step eligible again at once, so the same skip
                        // condition would be evaluated again, forever, without anything running.
                        self.set(name, |s| {
                            s.state = StepState::FatalError;
                            s.error = Some("a skip condition set its own step to RETRY_NOW, which would re-evaluate it forever; use TO_RETRY to check again later".into());
                        });
                        return true;
                    }
                    if cond.r#final {
                        break;
                    }
                }
                Ok((false, _)) => {}
                Err(e) => {
                    self.set(name, |s| {
                        s.state = StepState::FatalError;
                        s.error = Some(format!("skip condition: {e}"));
                    });
                    return true;
                }
            }
        }
        held
    }

    fn apply_then(
        &mut self,
        current: &str,
        then: &BTreeMap<String, String>,
        message: Option<String>,
    ) {
        let now = now_ms();
        for (target, state) in then {
            let target = if target == "this" {
                current.to_string()
            } else {
                target.clone()
            };
            let state = StepState::parse(state);
            let retry_at = (state == StepState::ToRetry).then(|| {
                let tries = self.steps.get(&target).map(|s| s.attempts).unwrap_or(1);
                let pattern = self
                    .def(&target)
                    .and_then(|d| d.retry_pattern)
                    .unwrap_or_default();
                now + jittered(pattern.delay_ms(tries))
            });
            let message = message.clone();
            self.set(&target, |s| {
                s.state = state;
                s.next_retry_at = retry_at;
                if message.is_some() {
                    s.error = message;
                }
            });
        }
    }

    fn expand(&mut self, name: &str, expr: &str) {
        let ctx = self.context(Some(name), None);
        let items = match render::items(&self.compiled.template, self.compiled.language, expr, &ctx)
        {
            Ok(Value::Array(items)) => items,
            Ok(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
                Ok(Value::Array(items)) => items,
                _ => {
                    return self.fail_expand(
                        name,
                        format!("foreach must give a list, got the text {s:?}"),
                    );
                }
            },
            Ok(other) => {
                return self.fail_expand(name, format!("foreach must give a list, got {other}"));
            }
            Err(e) => return self.fail_expand(name, format!("foreach: {e}")),
        };
        let max = self.inner.config.max_foreach_items;
        if items.len() > max {
            return self.fail_expand(
                name,
                format!(
                    "foreach gave {} items; the limit is {max} (server option --max-foreach-items)",
                    items.len()
                ),
            );
        }
        // Old children from an earlier expansion are replaced.
        let old: Vec<String> = self
            .steps
            .values()
            .filter(|c| c.foreach_parent.as_deref() == Some(name))
            .map(|c| c.name.clone())
            .collect();
        for o in old {
            self.steps.remove(&o);
            self.dirty.remove(&o);
        }
        for (i, item) in items.into_iter().enumerate() {
            let child = format!("{name}-{i}");
            let mut row = StepRow::new(child.clone());
            row.foreach_parent = Some(name.to_string());
            row.item = Some(item);
            self.steps.insert(child.clone(), row);
            self.dirty.insert(child);
        }
        self.set(name, |s| {
            s.state = StepState::Expanded;
            s.error = None;
        });
    }

    fn fail_expand(&mut self, name: &str, message: String) {
        self.set(name, |s| {
            s.state = StepState::FatalError;
            s.error = Some(message);
        });
    }

    fn spawn_attempt(&self, set: &mut JoinSet<Attempt>, name: String) {
        let Some(def) = self.def(&name).cloned() else {
            return;
        };
        let row = self.steps[&name].clone();
        let parent_name = row.foreach_parent.clone().unwrap_or_else(|| name.clone());
        let timeout = self.compiled.timeouts.get(&parent_name).copied();
        let inner = self.inner.clone();
        let compiled = self.compiled.clone();
        let call = self.compiled.calls.get(&parent_name);
        let needs_ctx = def.pre_hook.is_some()
            || call.is_some()
            || taskhook_expr::Renderer::value_is_templated(&def.action.configuration)
            || def.action.base_configuration.is_some()
            || def.action.output.is_some();
        let ctx = needs_ctx.then(|| self.context(Some(&name), None));
        // In a function call, the pre-hook and the action read the arguments of the
        // functions that bring them.
        let ctxs: Result<(Option<Value>, Option<Value>), String> = match (ctx, call) {
            (Some(ctx), Some(call)) => self
                .with_call_args(&name, ctx.clone(), call.pre_hook_args)
                .and_then(|pre| {
                    let action = self.with_call_args(&name, ctx, call.action_args())?;
                    Ok((Some(pre), Some(action)))
                }),
            (ctx, _) => Ok((ctx.clone(), ctx)),
        };
        let base = def
            .action
            .base_configuration
            .as_ref()
            .and_then(|b| self.compiled.template.base_configurations.get(b))
            .cloned();
        let pre_base = def
            .pre_hook
            .as_ref()
            .and_then(|p| p.base_configuration.as_ref())
            .and_then(|b| self.compiled.template.base_configurations.get(b))
            .cloned();
        let token = self.token.child_token();
        let action_ctx = ActionContext {
            task_id: self.task.id.clone(),
            step: name.clone(),
            attempt: row.attempts,
            idempotency_key: format!("{}/{}", self.task.id, name),
            previous_metadata: (row.state == StepState::Waiting || !row.metadata.is_null())
                .then(|| row.metadata.clone()),
            cancel: token.clone(),
            tasks: crate::Engine {
                inner: inner.clone(),
            }
            .task_service(),
            language: self.compiled.language,
        };
        let step_name = name.clone();
        let (task_id, epoch) = (self.task.id.clone(), self.task.lease_epoch);
        set.spawn(async move {
            let _slot = inner.step_slots.clone().acquire_owned().await;
            let mut held = Vec::new();
            let mut resources = def.resources.clone();
            resources.sort();
            for r in &resources {
                if let Some(sem) = inner.resources.get(r) {
                    held.push(sem.clone().acquire_owned().await);
                }
            }
            // With several instances on one database, a named resource's limit holds across
            // all of them: each attempt also takes a slot in the store.
            let cluster = ClusterSlots {
                inner: &inner,
                task_id: &task_id,
                step: &step_name,
                epoch,
            };
            let mut taken = Vec::new();
            if inner.store.is_shared() {
                for r in &resources {
                    let Some(&limit) = inner.config.resource_limits.get(r) else {
                        continue;
                    };
                    if let Err(e) = cluster.acquire(r, limit, &token).await {
                        cluster.release(&taken).await;
                        return Attempt {
                            step: step_name,
                            result: Err(e),
                        };
                    }
                    taken.push(r.clone());
                }
            }
            // A panicking action is a failed attempt, not a dead run: the step ends
            // FATAL_ERROR with the panic's message and the task waits for a person.
            let work = async {
                use futures_util::FutureExt as _;
                let (pre_ctx, ctx) = ctxs.map_err(|e| {
                    ActionError::fatal(format!("templating error in configuration: {e}"))
                })?;
                let caught = std::panic::AssertUnwindSafe(attempt(
                    &inner, &compiled, &def, base, pre_base, pre_ctx, ctx, action_ctx,
                ))
                .catch_unwind()
                .await;
                match caught {
                    Ok(result) => result,
                    Err(panic) => Err(ActionError::fatal(format!(
                        "the action failed unexpectedly (panic: {})",
                        panic_message(panic.as_ref())
                    ))),
                }
            };
            let result = match timeout {
                Some(d) => match tokio::time::timeout(d, work).await {
                    Ok(r) => r,
                    Err(_) => {
                        token.cancel();
                        Err(ActionError::server(format!(
                            "timed out after {}",
                            humantime(d)
                        )))
                    }
                },
                None => work.await,
            };
            cluster.release(&taken).await;
            Attempt {
                step: step_name,
                result,
            }
        });
    }

    /// Maps an attempt's result to the step's next state, with check conditions,
    /// output shaping, schema validation and retry scheduling.
    fn apply_result(&mut self, a: Attempt) {
        let Some(def) = self.def(&a.step).cloned() else {
            return;
        };
        if a.result.is_err() && self.cut_by_shutdown() {
            // The error says only that the attempt was cut off: its effect is unknown. The step
            // stays RUNNING and is settled like a crash when the run ends.
            return;
        }
        let name = a.step;
        let now = now_ms();
        let (mut state, output, metadata, error, wake) = match a.result {
            Ok(out) => (StepState::Done, out.output, out.metadata, None, None),
            Err(ActionError::Client { message, output }) => {
                let o = output.unwrap_or_default();
                (
                    StepState::ClientError,
                    o.output,
                    o.metadata,
                    Some(message),
                    None,
                )
            }
            Err(ActionError::Server { message, output }) => {
                let o = output.unwrap_or_default();
                (
                    StepState::ServerError,
                    o.output,
                    o.metadata,
                    Some(message),
                    None,
                )
            }
            Err(ActionError::Fatal { message }) => (
                StepState::FatalError,
                Value::Null,
                Value::Null,
                Some(message),
                None,
            ),
            Err(ActionError::Waiting { metadata, wake_at }) => {
                (StepState::Waiting, Value::Null, metadata, None, wake_at)
            }
        };
        let mut output = output;
        let mut error = error;
        if state == StepState::Done {
            // The output shapes: a function call's, each with its function's arguments (the
            // innermost function's first), else the step's own.
            let shapes: Vec<(taskhook_model::OutputSpec, usize)> = match self.call_of(&name) {
                Some(call) => call.outputs.clone(),
                None => def.action.output.iter().map(|o| (o.clone(), 0)).collect(),
            };
            for (spec, level) in &shapes {
                self.set(&name, |s| s.output = output.clone());
                let formatted = self.context_at(&name, *level).and_then(|ctx| {
                    self.render_value(&spec.format, &ctx)
                        .map_err(|e| e.to_string())
                });
                match formatted {
                    Ok(formatted) => {
                        output = match spec.strategy {
                            OutputStrategy::Template => formatted,
                            // µTask's merge: the format is the base, the action's output
                            // keys replace its keys (one level), as `base_output` always did.
                            OutputStrategy::Merge if self.compiled.language == Language::Go => {
                                utask_merge(formatted, output)
                            }
                            OutputStrategy::Merge => merge_configuration(&output, &formatted),
                        }
                    }
                    Err(e) => {
                        state = StepState::FatalError;
                        error = Some(format!("output format: {e}"));
                        break;
                    }
                }
            }
            let parent = self
                .steps
                .get(&name)
                .and_then(|s| s.foreach_parent.clone())
                .unwrap_or_else(|| name.clone());
            if state == StepState::Done
                && let Some(schema) = self.compiled.schemas.get(&parent)
            {
                let problems: Vec<String> = schema
                    .iter_errors(&output)
                    .map(|e| format!("{}: {}", e.instance_path(), e))
                    .collect();
                if !problems.is_empty() {
                    state = StepState::FatalError;
                    error = Some(format!(
                        "output does not match json_schema: {}",
                        problems.join("; ")
                    ));
                }
            }
        }
        // A result too large to store is dropped. A step that succeeded (or waits) ends
        // FATAL_ERROR: running it again would produce the same output. A step that already
        // failed keeps its error state, so its retries still apply to a failure that may pass.
        let (mut metadata, mut wake) = (metadata, wake);
        let size = json_size(&output).saturating_add(json_size(&metadata));
        let max = self.inner.config.max_step_output_bytes;
        if size > max {
            let note = format!(
                "the step's output and metadata are {size} bytes as JSON; the limit is {max} (server option --max-step-output-bytes), so they were not stored"
            );
            error = Some(match (&state, error) {
                (StepState::ClientError | StepState::ServerError, Some(e)) => {
                    format!("{e}; {note}")
                }
                (_, Some(e)) => format!("{note}; {e}"),
                (_, None) => note,
            });
            if !matches!(state, StepState::ClientError | StepState::ServerError) {
                state = StepState::FatalError;
                wake = None;
            }
            output = Value::Null;
            metadata = Value::Null;
        }
        self.set(&name, |s| {
            s.state = state.clone();
            s.output = output;
            s.metadata = metadata;
            s.error = error;
            s.next_retry_at = wake;
        });
        // Check conditions run after DONE or CLIENT_ERROR, and may change any state.
        if matches!(state, StepState::Done | StepState::ClientError) {
            let checks: Vec<_> = def
                .conditions
                .iter()
                .enumerate()
                .filter(|(_, c)| c.kind == ConditionKind::Check)
                .map(|(i, c)| (self.condition_level(&name, i), c.clone()))
                .collect();
            for (level, cond) in &checks {
                let ctx = self.context_at(&name, *level);
                match ctx.and_then(|ctx| evaluate(&self.compiled, cond, &ctx).map(|r| (r, ctx))) {
                    Ok((true, ctx)) => {
                        let message = cond
                            .message
                            .as_ref()
                            .map(|m| self.render_text(m, &ctx).unwrap_or_else(|e| e.message));
                        self.apply_then(&name, &cond.then, message);
                        if cond.r#final {
                            break;
                        }
                    }
                    Ok((false, _)) => {}
                    Err(e) => {
                        self.set(&name, |s| {
                            s.state = StepState::FatalError;
                            s.error = Some(format!("check condition: {e}"));
                        });
                        break;
                    }
                }
            }
        }
        // Retry scheduling and the per-step retry limit.
        let row = &self.steps[&name];
        if row.state.is_retriable() || row.state == StepState::RetryNow {
            let attempts = row.attempts;
            if attempts > def.max_retries() {
                self.set(&name, |s| {
                    s.state = StepState::FatalError;
                    s.error = Some(format!(
                        "gave up after {attempts} attempts (max_retries {}): {}",
                        def.max_retries(),
                        s.error.clone().unwrap_or_default()
                    ));
                });
            } else if row.state.is_retriable() && row.next_retry_at.is_none() {
                let delay = jittered(def.retry_pattern.unwrap_or_default().delay_ms(attempts));
                self.set(&name, |s| s.next_retry_at = Some(now + delay));
            }
        }
    }

    /// Decides the task's state from its steps and ends the run.
    async fn finish(&mut self) -> Result<(), StoreError> {
        if let Some(stop) = self.stop_request() {
            self.stop_honored = Some(stop.clone());
            if stop.to == TaskState::Paused {
                // Pause cuts no attempt; one still RUNNING was cut by shutdown's grace running out.
                self.settle_interrupted("the server shut down while this step ran", false);
            }
            // Attempts interrupted by a cancel go back to TODO.
            let interrupted: Vec<String> = self
                .steps
                .values()
                .filter(|s| s.state == StepState::Running)
                .map(|s| s.name.clone())
                .collect();
            for n in interrupted {
                self.set(&n, |s| {
                    s.state = StepState::Todo;
                    s.error = Some(format!(
                        "interrupted: task {}",
                        stop.to.as_str().to_lowercase()
                    ));
                });
            }
            let kind = if stop.to == TaskState::Cancelled {
                "cancelled"
            } else {
                "paused"
            };
            let mut end = self.end_event(stop.to, kind, Value::Null);
            end.actor = stop.actor;
            return self.end_with(stop.to, None, None, end, None).await;
        }
        let shutting_down = self.inner.shutdown.is_cancelled();
        if shutting_down {
            self.settle_interrupted("the server shut down while this step ran", false);
        }
        let steps: Vec<&StepRow> = self.steps.values().collect();
        if steps.iter().all(|s| s.state.is_final()) {
            let result = self.render_result();
            return self
                .end(TaskState::Done, None, Some(result), "done", Value::Null)
                .await;
        }
        let blocking: Vec<String> = steps
            .iter()
            .filter(|s| s.state.is_blocking())
            .map(|s| s.name.clone())
            .collect();
        if !blocking.is_empty() {
            return self
                .block(
                    "failed_steps",
                    json!({"reason": "steps failed and need a human", "steps": blocking}),
                )
                .await;
        }
        // Steps left unstarted because of the shutdown: the next process takes the task at once.
        // (Only now, after blocking steps: a CLIENT_ERROR must not be re-run by a released task.)
        if shutting_down
            && steps
                .iter()
                .any(|s| matches!(s.state, StepState::Todo | StepState::RetryNow))
        {
            return self
                .end(
                    TaskState::Ready,
                    Some(now_ms()),
                    None,
                    "released",
                    json!({"reason": "server shutting down"}),
                )
                .await;
        }
        let retry_at = steps
            .iter()
            .filter(|s| s.state.is_retriable())
            .filter_map(|s| s.next_retry_at)
            .min();
        let waits: Vec<&&StepRow> = steps
            .iter()
            .filter(|s| s.state == StepState::Waiting)
            .collect();
        let wake_at = waits.iter().filter_map(|s| s.next_retry_at).min();
        if let Some(at) = retry_at {
            if self.task.run_count >= self.task.run_max {
                let detail = json!({"reason": format!("retry_max reached: the task ran {} times", self.task.run_count)});
                return self.block("retry_max", detail).await;
            }
            let due = wake_at.map_or(at, |w| w.min(at));
            return self
                .end(
                    TaskState::Ready,
                    Some(due),
                    None,
                    "retry_scheduled",
                    json!({"due_at": due}),
                )
                .await;
        }
        if !waits.is_empty() {
            return self
                .end(
                    TaskState::Waiting,
                    wake_at,
                    None,
                    "waiting",
                    json!({"wake_at": wake_at}),
                )
                .await;
        }
        let stuck: Vec<String> = steps
            .iter()
            .filter(|s| s.state == StepState::Todo)
            .map(|s| s.name.clone())
            .collect();
        self.block(
            "deadlock",
            json!({"reason": "deadlock: steps can never run", "steps": stuck}),
        )
        .await
    }

    fn render_result(&self) -> Value {
        let Some(format) = &self.compiled.template.result_format else {
            return Value::Null;
        };
        let ctx = self.context(None, None);
        self.render_value(format, &ctx)
            .unwrap_or_else(|e| json!({"error": format!("result_format: {e}")}))
    }

    /// Renders in the template's language (see [`crate::render`]).
    fn render_value(&self, v: &Value, ctx: &Value) -> Result<Value, ExprError> {
        render::value(&self.compiled.template, self.compiled.language, v, ctx)
    }

    fn render_text(&self, s: &str, ctx: &Value) -> Result<String, ExprError> {
        render::text(&self.compiled.template, self.compiled.language, s, ctx)
    }

    fn end_event(&self, to: TaskState, kind: &str, detail: Value) -> NewEvent {
        NewEvent::transition("engine", kind, TaskState::Running, to, detail)
    }

    /// Ends the run BLOCKED for `code` (one of the store's `BLOCKED_REASONS`), which the
    /// event's detail repeats beside the reason.
    async fn block(&mut self, code: &'static str, mut detail: Value) -> Result<(), StoreError> {
        if let Some(d) = detail.as_object_mut() {
            d.insert("code".into(), code.into());
        }
        let event = self.end_event(TaskState::Blocked, "blocked", detail);
        self.end_with(TaskState::Blocked, None, None, event, Some(code))
            .await
    }

    async fn end(
        &mut self,
        to: TaskState,
        due_at: Option<i64>,
        result: Option<Value>,
        kind: &str,
        detail: Value,
    ) -> Result<(), StoreError> {
        let event = self.end_event(to, kind, detail);
        self.end_with(to, due_at, result, event, None).await
    }

    async fn end_with(
        &mut self,
        to: TaskState,
        due_at: Option<i64>,
        result: Option<Value>,
        event: NewEvent,
        blocked_reason: Option<&'static str>,
    ) -> Result<(), StoreError> {
        let rows = self.take_dirty();
        let (mut result, mut event) = (result, event);
        if let Some(r) = result.as_mut() {
            self.redactor.redact_value(r);
        }
        self.redactor.redact_value(&mut event.detail);
        let end = RunEnd {
            state: to,
            due_at,
            result,
            event,
            blocked_reason,
        };
        let (store, id, epoch) = (&self.inner.store, &self.task.id, self.task.lease_epoch);
        let woke = persist(&self.inner, || {
            store.end_run(id, epoch, rows.clone(), end.clone())
        })
        .await?;
        // READY and WAITING ends may be due at once even without `due_at`: a subtask that ended
        // during this run set the task's due time, and end_run kept it. The dispatcher last looked
        // while the task was RUNNING (not due), so it must look again.
        if woke.is_some() || due_at.is_some() || matches!(to, TaskState::Ready | TaskState::Waiting)
        {
            self.inner.wake.notify_one();
        }
        Ok(())
    }
}

/// Masks secret values and password inputs in what a step row shows.
fn redact_row(r: &Redactor, row: &mut StepRow) {
    if r.is_empty() {
        return;
    }
    r.redact_value(&mut row.output);
    r.redact_value(&mut row.metadata);
    if let Some(e) = row.error.as_mut() {
        r.redact_string(e);
    }
    if let Some(item) = row.item.as_mut() {
        r.redact_value(item);
    }
}

#[derive(Debug, PartialEq)]
enum Eligibility {
    No,
    Ready,
    Prune,
    Contract,
}

fn child_index(name: &str) -> usize {
    name.rsplit('-')
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap_or(0)
}

/// The length of a value serialised as JSON, counted without building the text.
fn json_size(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

fn jittered(ms: u64) -> i64 {
    let spread = (ms / 10).max(1);
    (ms - spread + rand::rng().random_range(0..=2 * spread)) as i64
}

/// Masks every text inside a secret's JSON value.
fn mask_texts(r: &mut Redactor, v: &Value) {
    match v {
        Value::String(s) => r.add(s),
        Value::Array(items) => items.iter().for_each(|i| mask_texts(r, i)),
        Value::Object(m) => m.values().for_each(|i| mask_texts(r, i)),
        _ => {}
    }
}

fn humantime(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn evaluate(
    compiled: &CompiledTemplate,
    cond: &taskhook_model::Condition,
    ctx: &Value,
) -> Result<bool, String> {
    let text = |s: &str| render::text(&compiled.template, compiled.language, s, ctx);
    for a in &cond.asserts {
        let value = text(&a.value).map_err(|e| format!("value: {e}"))?;
        let expected = text(&a.expected).map_err(|e| format!("expected: {e}"))?;
        if !a
            .operator
            .holds(&value, &expected, a.list_separator.as_deref())?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Runs the pre-hook (if any) and the action of one attempt with templated configuration:
/// the pre-hook in `pre_ctx`, the action in `ctx` with the pre-hook's result.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    inner: &Inner,
    compiled: &CompiledTemplate,
    def: &Step,
    base: Option<Value>,
    pre_base: Option<Value>,
    pre_ctx: Option<Value>,
    ctx: Option<Value>,
    actx: ActionContext,
) -> Result<ActionOutput, ActionError> {
    let mut ctx = ctx;
    if let Some(pre) = &def.pre_hook {
        let out = run_action(
            inner,
            compiled,
            pre,
            pre_base,
            pre_ctx.as_ref(),
            actx.clone(),
        )
        .await
        .map_err(|e| ActionError::fatal(format!("pre_hook failed: {e}")))?;
        if let Some(c) = ctx.as_mut() {
            c["pre_hook"] = json!({"output": out.output, "metadata": out.metadata});
        }
    }
    run_action(inner, compiled, &def.action, base, ctx.as_ref(), actx).await
}

async fn run_action(
    inner: &Inner,
    compiled: &CompiledTemplate,
    action: &Action,
    base: Option<Value>,
    ctx: Option<&Value>,
    actx: ActionContext,
) -> Result<ActionOutput, ActionError> {
    let Some(imp) = inner.actions.get(&action.kind) else {
        return Err(ActionError::fatal(format!(
            "unknown action type {:?}",
            action.kind
        )));
    };
    let config = match base {
        Some(b) => merge_configuration(&b, &action.configuration),
        None => action.configuration.clone(),
    };
    let config = match ctx {
        Some(ctx) => render::value(&compiled.template, compiled.language, &config, ctx)
            .map_err(|e| ActionError::fatal(format!("templating error in configuration: {e}")))?,
        None => config,
    };
    imp.run(config, actx).await
}

/// How long a run keeps retrying a write the database could not take (it restarted, or the
/// network dropped) before giving the task up to lease expiry and recovery.
const PERSIST_FOR: Duration = Duration::from_secs(300);

/// Runs a write of the run, retrying transient failures with backoff: a database restart
/// costs the run time, not its results. Every write is fenced by the lease epoch, so a retry
/// after another instance took the task over fails with `LeaseLost` and writes nothing;
/// a retry of a write that did commit (its answer was lost) is refused the same way or
/// rewrites the same rows.
async fn persist<T, F, Fut>(inner: &Inner, mut write: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + PERSIST_FOR;
    let mut backoff = Duration::from_millis(100);
    loop {
        match write().await {
            Err(e)
                if e.is_retryable()
                    && tokio::time::Instant::now() < deadline
                    && !inner.shutdown.is_cancelled() =>
            {
                tracing::warn!(error = %e, "a run's write failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// An attempt's slots of named resources in the store, shared by every instance.
struct ClusterSlots<'a> {
    inner: &'a Inner,
    task_id: &'a str,
    step: &'a str,
    epoch: i64,
}

impl ClusterSlots<'_> {
    /// Waits for a slot of `resource`: woken when any instance releases one, and at least
    /// every second (a slot whose holder died frees itself when its lease runs out).
    async fn acquire(
        &self,
        resource: &str,
        limit: usize,
        cancel: &CancellationToken,
    ) -> Result<(), ActionError> {
        let store = &self.inner.store;
        loop {
            let released = store.signals().slots.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let until = now_ms() + self.inner.config.lease.as_millis() as i64;
            let wait = match store
                .acquire_slot(resource, limit, self.task_id, self.step, self.epoch, until)
                .await
            {
                Ok(true) => return Ok(()),
                Ok(false) => Duration::from_secs(1),
                Err(StoreError::LeaseLost { .. }) => {
                    cancel.cancel();
                    return Err(ActionError::server(
                        "the task was taken over by another instance",
                    ));
                }
                Err(e) => {
                    tracing::warn!(resource, error = %e, "taking a resource slot failed; retrying");
                    Duration::from_millis(500)
                }
            };
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => {
                    return Err(ActionError::server(format!("stopped while waiting for resource {resource:?}")));
                }
            }
        }
    }

    /// Gives slots back; one that cannot be released expires with the task's lease.
    async fn release(&self, resources: &[String]) {
        for r in resources {
            if let Err(e) = self
                .inner
                .store
                .release_slot(r, self.task_id, self.step)
                .await
            {
                tracing::warn!(resource = %r, error = %e, "releasing a resource slot failed");
            }
        }
    }
}

/// µTask's `merge` output strategy: the action's output keys over the format's (one level);
/// an output that is not an object leaves the format as it is.
fn utask_merge(format: Value, output: Value) -> Value {
    match (format, output) {
        (Value::Object(mut base), Value::Object(over)) => {
            base.extend(over);
            Value::Object(base)
        }
        (format, _) => format,
    }
}
