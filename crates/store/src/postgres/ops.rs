//! The writes that go through group commit ([`super::batch`]), each run inside a transaction
//! it is given (shared with the other writes of its batch, or its own). None of them notifies:
//! they report the signals their commit must fire in [`Effects`]. Task creation, step saves
//! and run ends are single statements (a lease check or key lookup aside) and may also run
//! outside a transaction, each statement committing itself.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use serde_json::Value;
use taskhook_model::TaskState;

use super::batch::Effects;
use super::*;
use crate::Signal;

pub(super) async fn create_task(
    tx: &impl GenericClient,
    t: &NewTask,
    event: &NewEvent,
    fx: &mut Effects,
) -> Result<(TaskRow, bool)> {
    if t.claim.is_some()
        && let Err(e) = t.state.check_transition(TaskState::Running)
    {
        // As SQLite: an existing task for the key wins over a refused claim.
        return match find_by_idempotency_key(tx, t).await? {
            Some(existing) => Ok((existing, false)),
            None => Err(e.into()),
        };
    }
    // Two instances racing with one key: the loser's insert does nothing (it waits for the
    // winner's commit), then reads the winner's task. A task deleted in between is retried.
    for _ in 0..3 {
        if let Some(row) = insert_task(tx, t, event, true, fx).await? {
            return Ok((row, true));
        }
        if let Some(existing) = find_by_idempotency_key(tx, t).await? {
            return Ok((existing, false));
        }
    }
    Err(StoreError::Conflict(format!(
        "idempotency key {:?} of template {} keeps changing",
        t.idempotency_key, t.template
    )))
}

pub(super) async fn record_fire(
    tx: &Transaction<'_>,
    fire: &NewFire,
    task: Option<&(NewTask, NewEvent)>,
    dedupe_since: Option<i64>,
    overlap: Option<&'static str>,
    fx: &mut Effects,
) -> Result<FireOutcome> {
    // Fires that decide by looking at other fires are serialised across instances, as
    // SQLite's one writer does: delivery dedupe, due-time dedupe and the overlap policy then
    // see every earlier fire they depend on. (Within one transaction the lock is taken again
    // at no cost.) The lock is only tried: a lock another transaction holds (another batch, or
    // an instance that froze mid-write) must not stall a shared batch writer, so the fire
    // reports itself busy, writes nothing, and the writer queues it again.
    let key = fire_lock_key(fire, dedupe_since, overlap);
    let (lock, by_delivery, by_schedule) = (
        tx.prepare_cached(TRY_LOCK_SQL).await?,
        tx.prepare_cached(&first_delivery_sql()).await?,
        tx.prepare_cached(&fire_by_schedule_sql()).await?,
    );
    let delivery = fire.delivery_id.as_ref().zip(dedupe_since);
    let (l, first_delivery, first_schedule) = tokio::join!(
        biased;
        async {
            match &key {
                Some(key) => tx
                    .query_one(&lock, &[key])
                    .await
                    .and_then(|r| r.try_get::<_, Option<bool>>(0))
                    .map(|got| got.unwrap_or(true)),
                None => Ok(true),
            }
        },
        async {
            match delivery {
                Some((d, since)) => {
                    tx.query_opt(&by_delivery, &[&fire.hook_group, &fire.hook_id, d, &since])
                        .await
                }
                None => Ok(None),
            }
        },
        async {
            match fire.scheduled_for {
                Some(due) => {
                    tx.query_opt(&by_schedule, &[&fire.hook_group, &fire.hook_id, &due])
                        .await
                }
                None => Ok(None),
            }
        },
    );
    if !l? {
        fx.busy = true;
        return Err(StoreError::Conflict(format!(
            "the fires of hook {}/{} are locked by another transaction",
            fire.hook_group, fire.hook_id
        )));
    }
    // Before anything is written: a source whose lease another instance took writes
    // nothing (its refusal leaves the batch usable).
    if let Some(cursor) = &fire.cursor {
        write_cursor(tx, &fire.hook_group, &fire.hook_id, cursor).await?;
    }
    if let Some(first) = first_delivery? {
        let first = fire_from(&first)?;
        // The repeat is in the ledger too, pointing at the first fire's task.
        let repeat = NewFire {
            result: "duplicate".into(),
            task_id: first.task_id.clone(),
            error: Some(format!("repeated delivery: first fire {}", first.id)),
            payload: None,
            ..fire.clone()
        };
        insert_fire(tx, &repeat, false).await?;
        return Ok(FireOutcome::Duplicate(first));
    }
    if let Some(first) = first_schedule? {
        return Ok(FireOutcome::Duplicate(fire_from(&first)?));
    }
    let mut fire = fire.clone();
    let mut task = task;
    if let Some(word) = overlap
        && task.is_some()
    {
        let (unfinished, queued) = (
            tx.prepare_cached(UNFINISHED_SQL).await?,
            tx.prepare_cached(QUEUED_SQL).await?,
        );
        let (u, q) = tokio::join!(
            async {
                tx.query_one(&unfinished, &[&fire.hook_group, &fire.hook_id])
                    .await
            },
            async {
                if word == "queued" {
                    tx.query_one(&queued, &[&fire.hook_group, &fire.hook_id])
                        .await
                        .map(Some)
                } else {
                    Ok(None)
                }
            },
        );
        let busy = u?.try_get::<_, bool>(0)?
            || match q? {
                Some(r) => r.try_get::<_, bool>(0)?,
                None => false,
            };
        if busy {
            fire.result = word.to_string();
            task = None;
        }
    }
    let row = match task {
        Some((t, ev)) => {
            let row = insert_task(tx, t, ev, false, fx)
                .await?
                .ok_or_else(|| StoreError::Database("task insert returned nothing".into()))?;
            fire.task_id = Some(row.id.clone());
            Some(row)
        }
        None => None,
    };
    if !insert_fire(tx, &fire, true).await? {
        // Another fire took this due time between our look and our insert: it fired. Our
        // task goes with the rollback.
        let due = fire.scheduled_for;
        let first = query_opt(
            tx,
            &fire_by_schedule_sql(),
            &[&fire.hook_group, &fire.hook_id, &due],
        )
        .await?
        .ok_or_else(|| StoreError::Database("a conflicting fire vanished".into()))?;
        fx.undo = true;
        fx.signals = 0;
        return Ok(FireOutcome::Duplicate(fire_from(&first)?));
    }
    if let Some(due) = fire.scheduled_for {
        execute(
            tx,
            "UPDATE hooks SET last_scheduled_for = GREATEST(COALESCE(last_scheduled_for, $3), $3) \
             WHERE hook_group = $1 AND hook_id = $2",
            &[&fire.hook_group, &fire.hook_id, &due],
        )
        .await?;
    }
    let state = row.as_ref().map(|t| t.state);
    Ok(FireOutcome::Recorded(
        FireRow::from_new(fire, state),
        row.map(Box::new),
    ))
}

pub(super) async fn claim_due(
    tx: &Transaction<'_>,
    owner: &str,
    detail: &str,
    now: i64,
    limit: usize,
    lease_ms: i64,
) -> Result<Vec<ClaimedTask>> {
    let sql = format!(
        "WITH picked AS ( \
           SELECT id, state, due_at FROM tasks \
           WHERE due_at IS NOT NULL AND due_at <= $1 AND state IN ('READY', 'WAITING') \
           ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
         upd AS ( \
           UPDATE tasks t SET state = 'RUNNING', due_at = NULL, lease_owner = $3, lease_epoch = t.lease_epoch + 1, \
             lease_until = $4, run_count = t.run_count + 1, updated_at = $1 \
           FROM picked WHERE t.id = picked.id \
           RETURNING {}, picked.state AS claimed_from, picked.due_at AS was_due), \
         ev AS ( \
           INSERT INTO task_events (task_id, at, actor, kind, from_state, to_state, detail) \
           SELECT id, $1, 'engine', 'claimed', claimed_from, 'RUNNING', $5::text \
           FROM upd ORDER BY was_due, id) \
         SELECT * FROM upd ORDER BY was_due, id",
        task_columns("t")
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let until = now + lease_ms;
    let rows = query(tx, &sql, &[&now, &limit, &owner, &until, &detail]).await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut claimed = Vec::with_capacity(rows.len());
    for r in &rows {
        let task = task_from(r, 0)?;
        let from = parse_state(r.try_get(TASK_COLUMN_COUNT)?)?;
        claimed.push((task, from));
    }
    let ids: Vec<&str> = claimed.iter().map(|(t, _)| t.id.as_str()).collect();
    let steps_sql = format!(
        "SELECT task_id, {STEP_COLUMNS} FROM steps WHERE task_id = ANY($1::text[]) ORDER BY task_id, name"
    );
    let mut steps: HashMap<String, Vec<StepRow>> = HashMap::with_capacity(ids.len());
    for r in query(tx, &steps_sql, &[&ids]).await? {
        let task_id: String = r.try_get(0)?;
        steps.entry(task_id).or_default().push(step_from(&r, 1)?);
    }
    Ok(claimed
        .into_iter()
        .map(|(task, from)| {
            let steps = steps.remove(&task.id).unwrap_or_default();
            ClaimedTask {
                task,
                claimed_from: from,
                steps,
            }
        })
        .collect())
}

pub(super) async fn save_steps(
    tx: &impl GenericClient,
    task_id: &str,
    epoch: i64,
    steps: &[StepRow],
) -> Result<()> {
    let a = StepArrays::new(steps);
    let now = now_ms();
    let mut params: Vec<Param<'_>> = vec![&task_id, &epoch, &now];
    params.extend(a.params());
    let row = query_one(tx, &save_steps_sql(), &params).await?;
    if row.try_get::<_, i64>(0)? == 0 {
        return Err(StoreError::LeaseLost {
            task: task_id.to_string(),
        });
    }
    Ok(())
}

pub(super) async fn end_run(
    tx: &impl GenericClient,
    task_id: &str,
    epoch: i64,
    steps: &[StepRow],
    end: &RunEnd,
    fx: &mut Effects,
) -> Result<Option<String>> {
    if let Err(e) = TaskState::Running.check_transition(end.state) {
        // As SQLite: a lost lease is reported before an illegal end.
        lease_error(tx, task_id, epoch).await?;
        return Err(e.into());
    }
    let a = StepArrays::new(steps);
    let now = now_ms();
    let state = end.state.as_str();
    let result = end.result.as_ref().map(json);
    let detail = json(&end.event.detail);
    let cancel_applies = stop_applies(TaskState::Cancelled, end.state);
    let pause_applies = stop_applies(TaskState::Paused, end.state);
    let finals: Vec<&str> = taskhook_model::state::TASK_STATES
        .into_iter()
        .filter(|s| s.is_final())
        .map(|s| s.as_str())
        .collect();
    let mut params: Vec<Param<'_>> = vec![
        &task_id,
        &epoch,
        &state,
        &end.due_at,
        &result,
        &now,
        &end.event.actor,
        &end.event.kind,
        &end.event.from_state,
        &end.event.to_state,
        &detail,
        &cancel_applies,
        &pause_applies,
        &finals,
    ];
    params.extend(a.params());
    params.push(&end.blocked_reason);
    let row = query_one(tx, &end_run_sql(), &params).await?;
    if row.try_get::<_, i64>(0)? == 0 {
        return Err(StoreError::LeaseLost {
            task: task_id.to_string(),
        });
    }
    if row.try_get::<_, bool>(2)? {
        fx.signals |= Signal::Due as u8;
    }
    if row.try_get::<_, bool>(3)? {
        fx.signals |= Signal::Slots as u8;
    }
    Ok(row.try_get(1)?)
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn transition(
    tx: &Transaction<'_>,
    task_id: &str,
    allowed_from: &[TaskState],
    to: TaskState,
    due_at: Option<i64>,
    resolver_inputs: Option<&Value>,
    event: &NewEvent,
    fx: &mut Effects,
) -> Result<TransitionOutcome> {
    let current = query_opt(
        tx,
        "SELECT state FROM tasks WHERE id = $1 FOR UPDATE",
        &[&task_id],
    )
    .await?
    .ok_or_else(|| StoreError::NotFound {
        what: format!("task {task_id}"),
    })?;
    let from = parse_state(current.try_get(0)?)?;
    if from == TaskState::Running && matches!(to, TaskState::Paused | TaskState::Cancelled) {
        // The holder of the run (maybe another instance) stops it; a cancel asked before
        // is not replaced by a pause.
        execute(
            tx,
            "UPDATE tasks SET \
               stop_actor = CASE WHEN stop_to = 'CANCELLED' THEN stop_actor ELSE $3 END, \
               stop_to = CASE WHEN stop_to = 'CANCELLED' THEN stop_to ELSE $2 END \
             WHERE id = $1",
            &[&task_id, &to.as_str(), &event.actor],
        )
        .await?;
        fx.signals |= Signal::Stops as u8;
        return Ok(TransitionOutcome::Running);
    }
    if !allowed_from.contains(&from) {
        return Err(taskhook_model::TransitionError { from, to }.into());
    }
    from.check_transition(to)?;
    let now = now_ms();
    let (update, insert, wake) = (
        tx.prepare_cached(
            "UPDATE tasks SET state = $2, due_at = $3, resolver_inputs = COALESCE($4, resolver_inputs), \
             stop_to = NULL, stop_actor = NULL, crashes = 0, blocked_reason = NULL, updated_at = $5 WHERE id = $1",
        )
        .await?,
        tx.prepare_cached(
            "INSERT INTO task_events (task_id, at, actor, kind, from_state, to_state, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?,
        tx.prepare_cached(
            // A task that became due (READY), or a closed child that woke its parent.
            "WITH p AS ( \
               UPDATE tasks SET due_at = $2, updated_at = $2 \
               WHERE $3::bool AND id = (SELECT parent_id FROM tasks WHERE id = $1) AND state IN ('WAITING', 'RUNNING') \
               RETURNING 1) \
             SELECT $4::bool OR EXISTS (SELECT 1 FROM p)",
        )
        .await?,
    );
    let resolver = resolver_inputs.map(json);
    let detail = json(&event.detail);
    let (from_s, to_s) = (from.as_str(), to.as_str());
    // A child that ended (cancelled or closed) wakes its waiting parent.
    let cancelled = to.is_final();
    let ready = to == TaskState::Ready;
    let (a, b, w) = tokio::join!(
        biased;
        async { tx.execute(&update, &[&task_id, &to_s, &due_at, &resolver, &now]).await },
        async { tx.execute(
            &insert,
            &[&task_id, &now, &event.actor, &event.kind, &from_s, &to_s, &detail],
        ).await },
        async { tx.query_one(&wake, &[&task_id, &now, &cancelled, &ready]).await },
    );
    a?;
    b?;
    if w?.try_get::<_, bool>(0)? {
        fx.signals |= Signal::Due as u8;
    }
    Ok(TransitionOutcome::Applied(from, to))
}
