//! Group commit: the hot writes (task creation, fires, claims, step saves, run ends,
//! transitions) queue to a few batch writers. A writer takes everything waiting, runs it in
//! one transaction, commits once and only then answers each caller, so concurrent writes
//! share one commit and one WAL flush instead of paying one each.
//!
//! Inside a batch the writes are ordered by key (stable, so writes with one key keep their
//! arrival order). Writes sharing a key run one after another: two fires of one hook or two
//! creations with one idempotency key see each other as they would in separate transactions.
//! Writes with different keys are pipelined on the batch's connection (sent without waiting
//! for each other's answers), first statements in key order.
//!
//! A write whose error leaves the transaction unusable (any database error: a constraint, a
//! deadlock, a lost connection), or that must undo its own changes, makes the writer roll the
//! batch back and run each of its writes again in a transaction of its own: one failing write
//! never fails the others. Refusals (lost lease, illegal transition, not found) write nothing
//! and do not abort the batch.
//!
//! A fire whose lock another transaction holds (another writer's batch, or an instance frozen
//! mid-write, which keeps its locks until PostgreSQL ends its connection) does not wait in the
//! batch: it only tries the lock, reports itself busy, the rest of the batch commits, and the
//! fire goes back to the queue after a short pause ([`Writer::defer`]), for at most
//! [`LOCK_TIMEOUT`]. So one locked hook never holds the writers every other write queues for,
//! and no batch waits on another's locks (no deadlock between batches over fires either).

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{GenericClient, Object, Pool, Transaction};
use serde_json::Value;
use taskhook_model::TaskState;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::notify::Notifier;
use super::{LOCK_TIMEOUT, fire_lock_key, ops};
use crate::types::*;
use crate::{Result, Signals, StoreError};

/// Writers per store: each holds a pooled connection while it runs a batch.
pub(super) const WRITERS: usize = 4;
/// Most writes in one transaction.
const MAX_BATCH: usize = 512;
/// Times a write that hit a deadlock or serialization failure on its own is tried.
const TRIES: usize = 3;
/// The first pause before a busy write is queued again; it grows up to [`MAX_BUSY_PAUSE`].
const BUSY_PAUSE: Duration = Duration::from_millis(2);
const MAX_BUSY_PAUSE: Duration = Duration::from_millis(100);
/// Test failpoint: when set (milliseconds), a writer that has written a scheduled fire prints
/// [`PAUSE_MARKER`] on stdout and sleeps this long before committing, so a test can freeze the
/// process while its transaction holds the fire's locks. Read once, when the store starts.
pub const FAILPOINT_PAUSE_IN_FIRE_WRITE: &str = "TASKHOOK_FAILPOINT_PAUSE_IN_FIRE_WRITE_MS";
/// The line the failpoint prints before it sleeps.
pub const PAUSE_MARKER: &str = "failpoint: scheduled fire written, commit paused";

/// One queued write. (Short-lived in the queue: its size does not matter.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Op {
    CreateTask {
        task: NewTask,
        event: NewEvent,
    },
    RecordFire {
        fire: NewFire,
        task: Option<(NewTask, NewEvent)>,
        dedupe_since: Option<i64>,
        overlap: Option<&'static str>,
    },
    ClaimDue {
        owner: String,
        /// The `claimed` audit entries' detail, as stored (JSON text, sealed or not).
        detail: String,
        now: i64,
        limit: usize,
        lease_ms: i64,
    },
    SaveSteps {
        task_id: String,
        epoch: i64,
        steps: Vec<StepRow>,
    },
    EndRun {
        task_id: String,
        epoch: i64,
        steps: Vec<StepRow>,
        end: RunEnd,
    },
    Transition {
        task_id: String,
        allowed_from: &'static [TaskState],
        to: TaskState,
        due_at: Option<i64>,
        resolver_inputs: Option<Value>,
        event: NewEvent,
    },
}

/// What a write answers. (Short-lived too.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Reply {
    Created(TaskRow, bool),
    Fire(FireOutcome),
    Claimed(Vec<ClaimedTask>),
    Saved,
    Ended(Option<String>),
    Moved(TransitionOutcome),
}

/// What a write asks of its transaction besides its answer.
#[derive(Default)]
pub(super) struct Effects {
    /// Signals to fire after the commit (a bit set of [`crate::Signal`]).
    pub signals: u8,
    /// The write's changes must be rolled back (its answer stands).
    pub undo: bool,
    /// The write found its lock held by another transaction and wrote nothing: it must run
    /// again where it may wait (its answer does not stand).
    pub busy: bool,
}

impl Op {
    /// Writes that touch the same rows or locks share a key.
    fn key(&self) -> String {
        match self {
            Op::CreateTask { task, .. } => match &task.idempotency_key {
                Some(k) => format!("k:{}:{}:{k}", task.template.len(), task.template),
                None => format!("t:{}", task.id),
            },
            Op::RecordFire {
                fire,
                dedupe_since,
                overlap,
                ..
            } => fire_lock_key(fire, *dedupe_since, *overlap)
                .unwrap_or_else(|| format!("f:{}", fire.id)),
            Op::ClaimDue { .. } => String::new(),
            Op::SaveSteps { task_id, .. }
            | Op::EndRun { task_id, .. }
            | Op::Transition { task_id, .. } => format!("t:{task_id}"),
        }
    }

    /// The writes that are one statement each: alone, without `BEGIN` and `COMMIT` (two round
    /// trips fewer), or inside a batch's transaction. `None` for a write that needs a
    /// transaction.
    async fn run_autocommit(
        &self,
        c: &impl GenericClient,
        fx: &mut Effects,
    ) -> Option<Result<Reply>> {
        Some(match self {
            Op::CreateTask { task, event } => ops::create_task(c, task, event, fx)
                .await
                .map(|(row, created)| Reply::Created(row, created)),
            Op::SaveSteps {
                task_id,
                epoch,
                steps,
            } => ops::save_steps(c, task_id, *epoch, steps)
                .await
                .map(|()| Reply::Saved),
            Op::EndRun {
                task_id,
                epoch,
                steps,
                end,
            } => ops::end_run(c, task_id, *epoch, steps, end, fx)
                .await
                .map(Reply::Ended),
            _ => return None,
        })
    }

    async fn run(&self, tx: &Transaction<'_>, fx: &mut Effects) -> Result<Reply> {
        if let Some(r) = self.run_autocommit(tx, fx).await {
            return r;
        }
        match self {
            Op::RecordFire {
                fire,
                task,
                dedupe_since,
                overlap,
            } => ops::record_fire(tx, fire, task.as_ref(), *dedupe_since, *overlap, fx)
                .await
                .map(Reply::Fire),
            Op::ClaimDue {
                owner,
                detail,
                now,
                limit,
                lease_ms,
            } => ops::claim_due(tx, owner, detail, *now, *limit, *lease_ms)
                .await
                .map(Reply::Claimed),
            Op::Transition {
                task_id,
                allowed_from,
                to,
                due_at,
                resolver_inputs,
                event,
            } => ops::transition(
                tx,
                task_id,
                allowed_from,
                *to,
                *due_at,
                resolver_inputs.as_ref(),
                event,
                fx,
            )
            .await
            .map(Reply::Moved),
            Op::CreateTask { .. } | Op::SaveSteps { .. } | Op::EndRun { .. } => {
                unreachable!("run_autocommit runs these")
            }
        }
    }
}

/// A refusal writes nothing and leaves the transaction usable; anything else may not.
fn aborts(e: &StoreError) -> bool {
    !matches!(
        e,
        StoreError::LeaseLost { .. }
            | StoreError::Transition(_)
            | StoreError::NotFound { .. }
            | StoreError::Conflict(_)
    )
}

/// Deadlocks and serialization failures: worth trying again on their own.
fn is_conflict(e: &StoreError) -> bool {
    match e {
        StoreError::Database(text) => {
            text.contains("deadlock detected") || text.contains("could not serialize")
        }
        _ => false,
    }
}

/// A write, who waits for its answer, and since when it has found its lock busy.
type Job = (Op, oneshot::Sender<Result<Reply>>, Option<Instant>);

/// The queue the store's writes go to.
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Starts `writers` writers on `pool`; they stop with `stop` or when the batcher is dropped.
    pub(super) fn start(
        pool: Pool,
        writers: usize,
        signals: Arc<Signals>,
        notifier: Arc<Notifier>,
        stop: CancellationToken,
    ) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        let pause = std::env::var(FAILPOINT_PAUSE_IN_FIRE_WRITE)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis);
        for _ in 0..writers.max(1) {
            let w = Writer {
                pool: pool.clone(),
                rx: rx.clone(),
                signals: signals.clone(),
                notifier: notifier.clone(),
                queue: tx.downgrade(),
                pause,
                stop: stop.clone(),
            };
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = w.run() => {}
                }
            });
        }
        Batcher { tx }
    }

    /// Queues a write and waits for its answer, given after its commit.
    pub(super) async fn submit(&self, op: Op) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((op, tx, None))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

#[derive(Clone)]
struct Writer {
    pool: Pool,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>,
    signals: Arc<Signals>,
    notifier: Arc<Notifier>,
    /// The queue again, for busy writes ([`Writer::defer`]); weak, so that dropping the
    /// batcher still closes it.
    queue: mpsc::WeakUnboundedSender<Job>,
    /// The test failpoint [`FAILPOINT_PAUSE_IN_FIRE_WRITE`], when set.
    pause: Option<Duration>,
    stop: CancellationToken,
}

impl Writer {
    async fn run(self) {
        loop {
            let mut jobs = {
                let mut rx = self.rx.lock().await;
                let Some(first) = rx.recv().await else {
                    return;
                };
                let mut jobs = vec![first];
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                jobs
            };
            // Callers that gave up (dropped their future) need no write.
            jobs.retain(|(_, reply, _)| !reply.is_closed());
            if jobs.is_empty() {
                continue;
            }
            jobs.sort_by_cached_key(|(op, _, _)| op.key());
            let mut client = match self.pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    let e = StoreError::from(e);
                    for (_, reply, _) in jobs {
                        let _ = reply.send(Err(copy_error(&e)));
                    }
                    continue;
                }
            };
            if jobs.len() > 1 {
                match self.together(&mut client, &jobs).await {
                    Together::Committed(results, signals) => {
                        self.announce(signals);
                        for (job, r) in jobs.into_iter().zip(results) {
                            match r {
                                Some(r) => {
                                    let _ = job.1.send(r);
                                }
                                None => self.defer(job),
                            }
                        }
                        continue;
                    }
                    Together::Failed(e) => {
                        for (_, reply, _) in jobs {
                            let _ = reply.send(Err(copy_error(&e)));
                        }
                        continue;
                    }
                    Together::OneByOne => {}
                }
            }
            for (op, reply, busy_since) in jobs {
                if client.is_closed() {
                    match self.pool.get().await {
                        Ok(c) => client = c,
                        Err(e) => {
                            let _ = reply.send(Err(e.into()));
                            continue;
                        }
                    }
                }
                match self.alone(&mut client, &op).await {
                    Some(r) => {
                        let _ = reply.send(r);
                    }
                    None => self.defer((op, reply, busy_since)),
                }
            }
        }
    }

    /// Queues again, after a pause, a write that found its lock held by another transaction
    /// and wrote nothing; after [`LOCK_TIMEOUT`] of that, it fails (its caller may try again).
    /// The lock is only ever tried, so no batch waits on another's locks.
    fn defer(&self, (op, reply, busy_since): Job) {
        let since = busy_since.unwrap_or_else(Instant::now);
        let busy_for = since.elapsed();
        if busy_for >= LOCK_TIMEOUT {
            let _ = reply.send(Err(StoreError::Unavailable(format!(
                "a lock this write needs stayed held by another transaction for {} ms",
                busy_for.as_millis()
            ))));
            return;
        }
        let pause = (busy_for / 4).clamp(BUSY_PAUSE, MAX_BUSY_PAUSE);
        let (queue, stop) = (self.queue.clone(), self.stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(pause) => {
                    if let Some(queue) = queue.upgrade() {
                        let _ = queue.send((op, reply, Some(since)));
                    }
                }
            }
        });
    }

    /// The test failpoint: after a scheduled fire was written (`wrote`), before its commit.
    async fn pause_if_asked(&self, wrote: bool) {
        let Some(pause) = self.pause else { return };
        if wrote {
            {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{PAUSE_MARKER}");
                let _ = out.flush();
            }
            tokio::time::sleep(pause).await;
        }
    }

    fn announce(&self, signals: u8) {
        if signals != 0 {
            self.signals.fire_set(signals);
            self.notifier.announce(signals);
        }
    }

    /// The whole batch in one transaction. Writes with different keys touch different rows,
    /// so they are sent together, pipelined on the one connection: the batch costs about one
    /// round trip per write of its longest key, not one per write. Writes sharing a key run
    /// one after another, in arrival order.
    async fn together(&self, client: &mut Object, jobs: &[Job]) -> Together {
        let tx = match client.transaction().await {
            Ok(tx) => tx,
            Err(e) => return Together::Failed(e.into()),
        };
        let keys: Vec<String> = jobs.iter().map(|(op, _, _)| op.key()).collect();
        let mut groups: Vec<&[Job]> = Vec::new();
        let mut start = 0;
        for i in 1..=jobs.len() {
            if i == jobs.len() || keys[i] != keys[start] {
                groups.push(&jobs[start..i]);
                start = i;
            }
        }
        let sizes: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        let tx_ref = &tx;
        let outcomes = futures_util::future::join_all(groups.into_iter().map(|group| async move {
            let mut out = Vec::with_capacity(group.len());
            for (op, _, _) in group {
                let mut fx = Effects::default();
                let r = op.run(tx_ref, &mut fx).await;
                // A busy write leaves the rest of its key for later too, keeping their order.
                let stop = fx.undo || fx.busy || r.as_ref().is_err_and(aborts);
                out.push((r, fx));
                if stop {
                    break;
                }
            }
            out
        }))
        .await;
        // `None`: not run (or busy) here, to run again where it may wait.
        let mut results: Vec<Option<Result<Reply>>> = Vec::with_capacity(jobs.len());
        let mut signals = 0u8;
        for (group, outs) in sizes.into_iter().zip(outcomes) {
            let ran = outs.len();
            let mut busy = false;
            for (r, fx) in outs {
                if fx.busy {
                    busy = true;
                    break;
                }
                if fx.undo || r.as_ref().is_err_and(aborts) {
                    let _ = tx.rollback().await;
                    return Together::OneByOne;
                }
                signals |= fx.signals;
                results.push(Some(r));
            }
            if busy {
                results.extend((ran - 1..group).map(|_| None));
            }
        }
        let wrote = results.iter().flatten().any(wrote_scheduled_fire);
        self.pause_if_asked(wrote).await;
        match tx.commit().await {
            Ok(()) => Together::Committed(results, signals),
            Err(e) => Together::Failed(e.into()),
        }
    }

    /// One write in a transaction of its own; `None` when it found its lock held elsewhere (it
    /// wrote nothing).
    async fn alone(&self, client: &mut Object, op: &Op) -> Option<Result<Reply>> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut fx = Effects::default();
            if let Some(r) = op.run_autocommit(client, &mut fx).await {
                match r {
                    Ok(reply) => {
                        self.announce(fx.signals);
                        return Some(Ok(reply));
                    }
                    Err(e) if is_conflict(&e) && tries < TRIES => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            let tx = match client.transaction().await {
                Ok(tx) => tx,
                Err(e) => return Some(Err(e.into())),
            };
            let r = op.run(&tx, &mut fx).await;
            if fx.busy {
                let _ = tx.rollback().await;
                return None;
            }
            if !fx.undo {
                self.pause_if_asked(wrote_scheduled_fire(&r)).await;
            }
            let r = match r {
                Ok(reply) if !fx.undo => match tx.commit().await {
                    Ok(()) => {
                        self.announce(fx.signals);
                        return Some(Ok(reply));
                    }
                    Err(e) => Err(e.into()),
                },
                other => {
                    let _ = tx.rollback().await;
                    other
                }
            };
            match r {
                Err(e) if is_conflict(&e) && tries < TRIES => continue,
                r => return Some(r),
            }
        }
    }
}

enum Together {
    /// Each write's answer, `None` for those to run again where they may wait.
    Committed(Vec<Option<Result<Reply>>>, u8),
    Failed(StoreError),
    OneByOne,
}

fn wrote_scheduled_fire(r: &Result<Reply>) -> bool {
    matches!(r, Ok(Reply::Fire(FireOutcome::Recorded(f, _))) if f.scheduled_for.is_some())
}

/// The same error for every caller of a failed batch.
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound { what } => StoreError::NotFound { what: what.clone() },
        StoreError::Transition(t) => StoreError::Transition(t.clone()),
        StoreError::LeaseLost { task } => StoreError::LeaseLost { task: task.clone() },
        StoreError::Conflict(s) => StoreError::Conflict(s.clone()),
        StoreError::Database(s) => StoreError::Database(s.clone()),
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        StoreError::Closed => StoreError::Closed,
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
