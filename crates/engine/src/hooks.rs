//! The engine's side of hooks: storing them, and turning one event into a fire (and maybe a
//! task) committed in one write. Deciding (filter, mapping, signatures, schedules) is
//! `taskhook-hooks`; routes are the server's.

use std::sync::Arc;

use serde_json::Value;
use taskhook_hooks::{Decision, Event, Hook, Overlap, decide};
use taskhook_store::{FireCursor, FireOutcome, FireRow, HookRow, NewFire, TaskRow, now_ms};

use crate::{CreateTask, Engine, EngineError, Inner};

/// Largest payload kept in the fire ledger; a bigger one is recorded as truncated.
const MAX_STORED_PAYLOAD: usize = 64 * 1024;

/// Why a `file://` git source is refused (at `PUT`, and on the status of one stored before the
/// server was started without `--git-allow-file-urls`).
pub const LOCAL_GIT_REFUSED: &str = "file:// repositories are on this server's own disk; this \
    server refuses them (start it with --git-allow-file-urls to allow them)";

/// What a fire did.
#[derive(Debug, Clone)]
pub struct FireResult {
    pub fire: FireRow,
    pub task: Option<TaskRow>,
    /// The same delivery (or due time) fired before; `fire` is that first fire.
    pub duplicate: bool,
}

/// What a hook would do with an event, without doing it.
#[derive(Debug, Clone)]
pub struct DryRun {
    /// created, filtered, declined or error.
    pub result: String,
    pub inputs: Option<Value>,
    pub error: Option<String>,
}

fn stored_payload(payload: &Value) -> Value {
    match serde_json::to_string(payload) {
        Ok(s) if s.len() <= MAX_STORED_PAYLOAD => payload.clone(),
        Ok(s) => serde_json::json!({"truncated": true, "bytes": s.len()}),
        Err(_) => Value::Null,
    }
}

impl Engine {
    /// Validates and stores a hook (its template must exist). A new hook gets a fresh trigger
    /// token. A webhook secret sent back masked keeps the stored one.
    pub async fn put_hook(
        &self,
        group: &str,
        id: &str,
        mut hook: Hook,
    ) -> Result<(HookRow, bool), EngineError> {
        if self
            .inner
            .store
            .get_template(&hook.template)
            .await?
            .is_none()
        {
            return Err(EngineError::Invalid {
                field: "template".into(),
                message: format!("unknown template {:?}", hook.template),
            });
        }
        if !self.inner.config.git_file_urls
            && let Some(i) = hook.sources.iter().position(|s| s.is_local_git())
        {
            return Err(EngineError::Invalid {
                field: format!("sources[{i}].git.url"),
                message: LOCAL_GIT_REFUSED.into(),
            });
        }
        let needs_previous = hook.webhook.as_ref().is_some_and(|w| w.is_redacted())
            || hook.sources.iter().any(|s| s.is_redacted());
        let previous = if needs_previous {
            self.inner
                .store
                .get_hook(group, id)
                .await?
                .and_then(|r| serde_json::from_value::<Hook>(r.body).ok())
        } else {
            None
        };
        for (i, source) in hook.sources.iter_mut().enumerate() {
            if !source.is_redacted() {
                continue;
            }
            // The same position of the stored hook, or failing that any stored source of the
            // same kind, host and user, gives its password back.
            let old = previous.as_ref().map(|p| &p.sources[..]).unwrap_or(&[]);
            let restored = old
                .get(i)
                .and_then(|o| source.with_password_from(o))
                .or_else(|| old.iter().find_map(|o| source.with_password_from(o)));
            match restored {
                Some(s) => *source = s,
                None => {
                    return Err(EngineError::Invalid {
                        field: format!("sources[{i}].{}.url", source.kind()),
                        message: "the password is masked and no stored source of the same \
                                  kind, host and user has one; send the real password"
                            .into(),
                    });
                }
            }
        }
        if let Some(w) = &hook.webhook
            && w.is_redacted()
        {
            match previous.and_then(|p| p.webhook) {
                Some(p) => hook.webhook = Some(w.with_secret_from(&p)),
                None => {
                    return Err(EngineError::Invalid {
                        field: "webhook.secret".into(),
                        message: "a new webhook needs its secret".into(),
                    });
                }
            }
        }
        // Validated after a masked secret was restored from the stored hook.
        hook.validate().map_err(|e| EngineError::Invalid {
            field: e.field,
            message: e.message,
        })?;
        for (i, source) in hook.sources.iter().enumerate() {
            if let Some(name) = source.common().password_secret
                && self
                    .inner
                    .store
                    .secret_values(vec![name.to_string()])
                    .await?
                    .is_empty()
            {
                return Err(EngineError::Invalid {
                    field: format!("sources[{i}].{}.password_secret", source.kind()),
                    message: format!(
                        "secret {name:?} does not exist; create it first (PUT /api/v1/secrets/{name})"
                    ),
                });
            }
        }
        let body = serde_json::to_value(&hook).map_err(|e| EngineError::Invalid {
            field: "hook".into(),
            message: e.to_string(),
        })?;
        let (row, created) = self
            .inner
            .store
            .put_hook(group, id, body, &new_token())
            .await?;
        self.forget_hook(group, id);
        self.inner.hooks_changed.send_modify(|n| *n += 1);
        Ok((row, created))
    }

    /// A hook and its stored row, from a short-lived cache or the store.
    pub async fn hook(
        &self,
        group: &str,
        id: &str,
    ) -> Result<Option<(HookRow, Arc<Hook>)>, EngineError> {
        let key = (group.to_string(), id.to_string());
        if let Some((row, hook, seen)) = self
            .inner
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && seen.elapsed() < crate::CURRENT_VERSION_TTL
        {
            return Ok(Some((row.clone(), hook.clone())));
        }
        let Some(row) = self.inner.store.get_hook(group, id).await? else {
            return Ok(None);
        };
        let hook: Hook =
            serde_json::from_value(row.body.clone()).map_err(|e| EngineError::Invalid {
                field: "hook".into(),
                message: format!("stored hook is unreadable: {e}"),
            })?;
        let hook = Arc::new(hook);
        self.inner
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (row.clone(), hook.clone(), std::time::Instant::now()));
        Ok(Some((row, hook)))
    }

    fn forget_hook(&self, group: &str, id: &str) {
        self.inner
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(group.to_string(), id.to_string()));
    }

    pub async fn delete_hook(&self, group: &str, id: &str) -> Result<bool, EngineError> {
        self.forget_hook(group, id);
        let deleted = self.inner.store.delete_hook(group, id).await?;
        self.inner.hooks_changed.send_modify(|n| *n += 1);
        Ok(deleted)
    }

    /// Replaces a hook's trigger token; returns the new one.
    pub async fn reset_hook_token(&self, group: &str, id: &str) -> Result<String, EngineError> {
        let token = new_token();
        let changed = self.inner.store.set_hook_token(group, id, &token).await?;
        self.forget_hook(group, id);
        if !changed {
            return Err(EngineError::NotFound {
                what: format!("hook {group}/{id}"),
            });
        }
        Ok(token)
    }

    /// One event meets a hook: filter, map, validate the task's inputs, and commit the fire
    /// with its task in one write. Answers only after that write committed.
    pub async fn fire(
        &self,
        row: &HookRow,
        hook: &Hook,
        event: Event,
        scheduled_for: Option<i64>,
    ) -> Result<FireResult, EngineError> {
        self.inner
            .fire(row, hook, event, scheduled_for, None, None)
            .await
    }

    /// Records an event the hook cannot take (e.g. a message over its source's size limit)
    /// as a fire `error` with `reason`, deduplicated by delivery id like any fire.
    pub async fn fire_error(
        &self,
        row: &HookRow,
        hook: &Hook,
        event: Event,
        reason: String,
    ) -> Result<FireResult, EngineError> {
        self.inner
            .fire(row, hook, event, None, Some(reason), None)
            .await
    }

    /// Fires `event` from a polling source and moves the source's cursor in the same write
    /// (on a repeated delivery too); fails with `Conflict`, writing nothing, when
    /// `cursor.owner` no longer holds the source's lease (see `Store::lease_source`). With
    /// `refusal`, the fire is recorded as `error` with that reason, as [`Engine::fire_error`].
    pub async fn fire_at_cursor(
        &self,
        row: &HookRow,
        hook: &Hook,
        event: Event,
        refusal: Option<String>,
        cursor: FireCursor,
    ) -> Result<FireResult, EngineError> {
        self.inner
            .fire(row, hook, event, None, refusal, Some(cursor))
            .await
    }

    /// Records an event that failed authentication, without its body.
    pub async fn record_rejected(
        &self,
        row: &HookRow,
        event: &Event,
        reason: &str,
    ) -> Result<FireRow, EngineError> {
        let fire = NewFire {
            error: Some(reason.to_string()),
            ..new_fire(row, event, "rejected", None)
        };
        match self.inner.store.record_fire(fire, None, None, None).await? {
            FireOutcome::Recorded(f, _) | FireOutcome::Duplicate(f) => Ok(f),
        }
    }

    /// Changes whenever hooks are created, changed or deleted through this engine (or, on a
    /// shared store, through another instance).
    pub fn hooks_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.hooks_changed.subscribe()
    }

    /// What this process's source subscriptions report.
    pub fn source_board(&self) -> &std::sync::Arc<crate::source_board::SourceBoard> {
        &self.inner.source_board
    }

    /// For a hook with `overlap: queue`: once its previous task has ended, starts the task of
    /// its oldest queued fire. Returns the task started, if any.
    ///
    /// The fire is checked again against the hook as it is now: its filter and mapping, its
    /// scopes (the hook role) and the template's inputs. A fire the hook now refuses ends as
    /// `error` with the reason, and the next queued fire is tried.
    pub async fn start_queued_fire(
        &self,
        row: &HookRow,
        hook: &Hook,
    ) -> Result<Option<TaskRow>, EngineError> {
        loop {
            let Some(fire) = self
                .inner
                .store
                .oldest_queued_fire(&row.group, &row.id)
                .await?
            else {
                return Ok(None);
            };
            let event = Event {
                fired_by: fire.fired_by.clone(),
                payload: fire.payload.clone().unwrap_or(Value::Null),
                scheduled_for: fire
                    .scheduled_for
                    .and_then(|t| jiff::Timestamp::from_millisecond(t).ok())
                    .map(|t| t.to_string()),
                source: "schedule".into(),
                method: "SCHEDULE".into(),
                ..Default::default()
            };
            let inputs = match decide(hook, &event) {
                Ok(Decision::Create(_)) if hook.scope_error().is_some() => {
                    Err(hook.scope_error().unwrap_or_default())
                }
                Ok(Decision::Create(inputs)) => Ok(inputs),
                Ok(Decision::Filtered | Decision::Declined) => Err(
                    "the hook, as changed since this fire was queued, no longer accepts it".into(),
                ),
                Err(e) => Err(e),
            };
            let prepared = match inputs {
                Ok(inputs) => {
                    let req = CreateTask {
                        template: hook.template.clone(),
                        inputs,
                        requester: format!("hook:{}/{}", row.group, row.id),
                        ..Default::default()
                    };
                    match self.inner.prepare_task(req).await {
                        Ok(p) => Ok(p),
                        Err(
                            e @ (EngineError::Invalid { .. }
                            | EngineError::NotFound { .. }
                            | EngineError::Conflict(_)),
                        ) => Err(e.to_string()),
                        Err(e) => return Err(e),
                    }
                }
                Err(reason) => Err(reason),
            };
            let prepared = match prepared {
                Ok(p) => p,
                Err(reason) => {
                    self.inner.store.fail_queued_fire(&fire.id, &reason).await?;
                    continue;
                }
            };
            let started = self
                .inner
                .store
                .start_queued_fire(&fire.id, prepared.task.clone(), prepared.event.clone())
                .await?;
            if let Some(t) = &started {
                self.inner.start_created(prepared, t, true);
            }
            return Ok(started);
        }
    }

    /// Evaluates filter, mapping and the template's input checks for a sample event.
    pub async fn dry_run(&self, hook: &Hook, event: &Event) -> Result<DryRun, EngineError> {
        let inputs = match decide(hook, event) {
            Ok(Decision::Create(inputs)) => inputs,
            Ok(Decision::Filtered) => {
                return Ok(DryRun {
                    result: "filtered".into(),
                    inputs: None,
                    error: None,
                });
            }
            Ok(Decision::Declined) => {
                return Ok(DryRun {
                    result: "declined".into(),
                    inputs: None,
                    error: None,
                });
            }
            Err(e) => {
                return Ok(DryRun {
                    result: "error".into(),
                    inputs: None,
                    error: Some(e),
                });
            }
        };
        match self.inner.check_inputs(&hook.template, &inputs).await {
            Ok(resolved) => Ok(DryRun {
                result: "created".into(),
                inputs: Some(resolved),
                error: None,
            }),
            Err(EngineError::Invalid { field, message }) => Ok(DryRun {
                result: "error".into(),
                inputs: Some(inputs),
                error: Some(format!("{field}: {message}")),
            }),
            Err(e) => Err(e),
        }
    }
}

/// A fire of `event` on the hook in `row`, received now, without payload, task or error.
fn new_fire(row: &HookRow, event: &Event, result: &str, scheduled_for: Option<i64>) -> NewFire {
    NewFire {
        id: uuid::Uuid::now_v7().to_string(),
        hook_group: row.group.clone(),
        hook_id: row.id.clone(),
        fired_by: event.fired_by.clone(),
        received_at: now_ms(),
        scheduled_for,
        result: result.to_string(),
        task_id: None,
        error: None,
        delivery_id: event.delivery_id.clone(),
        payload: None,
        cursor: None,
    }
}

pub(crate) fn new_token() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Inner {
    async fn fire(
        self: &Arc<Self>,
        row: &HookRow,
        hook: &Hook,
        event: Event,
        scheduled_for: Option<i64>,
        refusal: Option<String>,
        cursor: Option<FireCursor>,
    ) -> Result<FireResult, EngineError> {
        let mut fire = NewFire {
            payload: Some(stored_payload(&event.payload)),
            cursor,
            ..new_fire(row, &event, "created", scheduled_for)
        };
        let mut prepared = None;
        let decision = match refusal {
            Some(reason) => Err(reason),
            None => decide(hook, &event),
        };
        match decision {
            Ok(Decision::Create(_)) if hook.scope_error().is_some() => {
                fire.result = "error".into();
                fire.error = hook.scope_error();
            }
            Ok(Decision::Create(inputs)) => {
                let req = CreateTask {
                    template: hook.template.clone(),
                    inputs,
                    requester: format!("hook:{}/{}", row.group, row.id),
                    ..Default::default()
                };
                match self.prepare_task(req).await {
                    Ok(p) => prepared = Some(p),
                    Err(
                        e @ (EngineError::Invalid { .. }
                        | EngineError::NotFound { .. }
                        | EngineError::Conflict(_)),
                    ) => {
                        fire.result = "error".into();
                        fire.error = Some(e.to_string());
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(Decision::Filtered) => fire.result = "filtered".into(),
            Ok(Decision::Declined) => fire.result = "declined".into(),
            Err(e) => {
                fire.result = "error".into();
                fire.error = Some(e);
            }
        }
        // A first delivery is not a repeat of anything, whatever its id (see
        // `Event::first_delivery`).
        let dedupe_since = event
            .delivery_id
            .as_ref()
            .filter(|_| !event.first_delivery)
            .map(|_| {
                let window_ms = i64::try_from(hook.dedupe_window_seconds)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000);
                now_ms().saturating_sub(window_ms)
            });
        let overlap = match (scheduled_for, hook.overlap) {
            (Some(_), Overlap::Skip) => Some("skipped"),
            (Some(_), Overlap::Queue) => Some("queued"),
            _ => None,
        };
        let task = prepared.as_ref().map(|p| (p.task.clone(), p.event.clone()));
        let outcome = self
            .store
            .record_fire(fire, task, dedupe_since, overlap)
            .await?;
        match outcome {
            FireOutcome::Recorded(fire, task) => {
                if let (Some(p), Some(t)) = (prepared, task.as_ref()) {
                    self.start_created(p, t, true);
                }
                Ok(FireResult {
                    fire,
                    task: task.map(|t| *t),
                    duplicate: false,
                })
            }
            FireOutcome::Duplicate(fire) => Ok(FireResult {
                fire,
                task: None,
                duplicate: true,
            }),
        }
    }

    /// The inputs a task of `template` would start with, or the input error.
    async fn check_inputs(&self, template: &str, inputs: &Value) -> Result<Value, EngineError> {
        let version = self.current_version(template).await?;
        let compiled = self.template(template, version).await?;
        let resolved = taskhook_model::input::resolve_inputs(&compiled.template.inputs, inputs)
            .map_err(|e| crate::invalid_input("inputs", e))?;
        Ok(Value::Object(resolved))
    }
}
