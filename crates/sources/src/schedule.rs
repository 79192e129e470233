//! The schedule source: fires hooks at their cron due times.
//!
//! It keeps the scheduled hooks in memory (reloaded when hooks change, and every
//! [`RELOAD_EVERY`] for changes made by other processes), sleeps until the next due time,
//! and fires every hook due then concurrently, so their commits share transactions.
//! Exactly once per due time comes from the store: a fire is unique per hook and due time,
//! and each hook remembers the newest due time it fired, so a restart neither repeats nor
//! silently skips (the hook's `misfire` policy decides what missed times do).
//!
//! The loop never waits for a fire. Each hook has at most one flight (its due times being
//! fired) at a time; due times that come while it is in the air wait in the hook's line and
//! fly next, each one, whatever the `misfire` policy (which is about the scheduler not
//! running, not about a slow write). A fire that fails is tried again with a growing pause,
//! as the same due time, until it is recorded: a hook whose writes wait (on a lock held by a
//! frozen instance, say) delays only its own due times, never another hook's.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use taskhook_engine::Engine;
use taskhook_hooks::schedule::{MAX_CATCH_UP, due_times, next_due};
use taskhook_hooks::{Event, Hook, Overlap, Schedule};
use taskhook_store::{HookRow, now_ms};
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// How often the scheduler re-reads hooks even without a change notice.
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// A `skip` hook still fires a due time this late.
const SKIP_GRACE_MS: i64 = 30_000;
/// Fires in flight at once (their writes are grouped into shared commits).
const CONCURRENT_FIRES: usize = 256;
/// How often hooks with queued fires are checked for a finished predecessor.
const QUEUE_CHECK: Duration = Duration::from_secs(1);
/// The first pause before a failed fire is tried again; it doubles up to [`MAX_RETRY_PAUSE`].
const RETRY_PAUSE: Duration = Duration::from_millis(200);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

struct Scheduled {
    row: HookRow,
    hook: Hook,
    schedules: Vec<Schedule>,
    /// The next due time not yet fired; `None` when the hook has no (enabled) schedule.
    next: Option<i64>,
}

type Key = (String, String);

/// A hook's due times that are handed out but not yet recorded. Kept apart from
/// [`Scheduled`], so that re-reading a changed hook does not forget them.
#[derive(Default)]
struct Line {
    /// Due times waiting for the flight in the air to land, oldest first.
    waiting: VecDeque<i64>,
    /// The flight in the air, if any.
    flight: Option<AbortHandle>,
    /// The newest due time handed out.
    newest: i64,
}

/// Runs the scheduler until `stop` is cancelled.
pub async fn run(engine: Engine, stop: CancellationToken) {
    let mut hooks: Hooks = HashMap::new();
    let mut lines: HashMap<Key, Line> = HashMap::new();
    let mut flights: JoinSet<()> = JoinSet::new();
    let mut flying: HashMap<tokio::task::Id, Key> = HashMap::new();
    let mut queue_check: Option<tokio::task::JoinHandle<()>> = None;
    let mut loaded_at = None::<tokio::time::Instant>;
    let slots = Arc::new(Semaphore::new(CONCURRENT_FIRES));
    let mut changed = engine.hooks_changed();
    loop {
        if loaded_at.is_none_or(|t| t.elapsed() >= RELOAD_EVERY) {
            match refresh(&engine, std::mem::take(&mut hooks)).await {
                Ok(h) => {
                    hooks = h;
                    loaded_at = Some(tokio::time::Instant::now());
                }
                Err((h, e)) => {
                    hooks = h;
                    tracing::error!(error = %e, "scheduler could not load hooks; retrying");
                }
            }
            keep_lines(&mut hooks, &mut lines);
        }
        let now = now_ms();
        // Only hooks whose next due time has come are looked at: the work per wake-up is
        // proportional to what is due, not to how many hooks exist.
        for (key, s) in hooks
            .iter_mut()
            .filter(|(_, s)| s.next.is_some_and(|n| n <= now))
        {
            let missed = due_times(
                &s.schedules,
                s.row.last_scheduled_for,
                s.row.created_at,
                now,
                s.hook.misfire,
                SKIP_GRACE_MS,
                s.hook.catch_up_max as usize,
            );
            let line = lines.entry(key.clone()).or_default();
            for due in missed {
                s.row.last_scheduled_for = Some(due);
                line.waiting.push_back(due);
                line.newest = line.newest.max(due);
            }
            if line.waiting.len() > MAX_CATCH_UP {
                let dropped = line.waiting.len() - MAX_CATCH_UP;
                line.waiting.drain(..dropped);
                tracing::error!(hook = %format!("{}/{}", key.0, key.1), dropped, "too many due times waiting for the hook's writes; the oldest are dropped");
            }
            s.next = next_due(
                &s.schedules,
                now.max(s.row.last_scheduled_for.unwrap_or(now)),
            );
        }
        // Every hook with due times waiting and nothing in the air takes off now.
        for (key, line) in lines
            .iter_mut()
            .filter(|(_, l)| l.flight.is_none() && !l.waiting.is_empty())
        {
            let Some(s) = hooks.get(key) else { continue };
            let dues: Vec<i64> = line.waiting.drain(..).collect();
            let (engine, row, hook, slots, stop) = (
                engine.clone(),
                s.row.clone(),
                s.hook.clone(),
                slots.clone(),
                stop.clone(),
            );
            let handle = flights.spawn(async move {
                // The due times of one flight go together, so they share commits.
                futures_util::future::join_all(
                    dues.into_iter()
                        .map(|due| fire_until_recorded(&engine, &row, &hook, due, &slots, &stop)),
                )
                .await;
            });
            flying.insert(handle.id(), key.clone());
            line.flight = Some(handle);
        }
        lines.retain(|_, l| l.flight.is_some() || !l.waiting.is_empty());
        let queued = hooks.values().any(|s| s.hook.overlap == Overlap::Queue);
        if queued && queue_check.as_ref().is_none_or(|h| h.is_finished()) {
            let queued: Vec<(HookRow, Hook)> = hooks
                .values()
                .filter(|s| s.hook.overlap == Overlap::Queue)
                .map(|s| (s.row.clone(), s.hook.clone()))
                .collect();
            let engine = engine.clone();
            // Apart from the loop, so that a slow check holds up no due time.
            queue_check = Some(tokio::spawn(async move {
                for (row, hook) in queued {
                    if let Err(e) = engine.start_queued_fire(&row, &hook).await {
                        tracing::warn!(hook = %format!("{}/{}", row.group, row.id), error = %e, "could not start a queued fire");
                    }
                }
            }));
        }
        let next = hooks.values().filter_map(|s| s.next).min();
        let mut sleep = next
            .map_or(RELOAD_EVERY, |t| {
                Duration::from_millis((t - now_ms()).max(0) as u64)
            })
            .min(RELOAD_EVERY);
        if queued {
            sleep = sleep.min(QUEUE_CHECK);
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            Some(landed) = flights.join_next_with_id(), if !flights.is_empty() => {
                let id = match &landed {
                    Ok((id, ())) => *id,
                    Err(e) => e.id(),
                };
                if let Some(key) = flying.remove(&id)
                    && let Some(line) = lines.get_mut(&key)
                    && line.flight.as_ref().is_some_and(|h| h.id() == id)
                {
                    line.flight = None;
                }
            }
            _ = changed.changed() => loaded_at = None,
            _ = stop.cancelled() => {
                if let Some(h) = queue_check {
                    h.abort();
                }
                return;
            }
        }
    }
}

/// After a reload: a hook re-read from the store may not yet show the due times handed out
/// but not yet recorded (they are in the air or waiting), so it resumes after them; the lines
/// of hooks that are gone or no longer scheduled are dropped.
fn keep_lines(hooks: &mut Hooks, lines: &mut HashMap<Key, Line>) {
    lines.retain(|key, line| {
        let Some(s) = hooks.get_mut(key).filter(|s| !s.schedules.is_empty()) else {
            if let Some(f) = line.flight.take() {
                f.abort();
            }
            return false;
        };
        if s.row.last_scheduled_for.is_none_or(|l| l < line.newest) {
            s.row.last_scheduled_for = Some(line.newest);
            s.next = next_due(&s.schedules, line.newest);
        }
        true
    });
}

type Hooks = HashMap<(String, String), Scheduled>;

/// Brings the scheduled set up to date with the store, reading in full only the hooks that
/// are new or changed (a periodic check of 10,000 unchanged hooks reads 10,000 small rows).
/// What is known of unchanged hooks (next due time, newest due time fired) is kept.
async fn refresh(
    engine: &Engine,
    mut old: Hooks,
) -> Result<Hooks, (Hooks, taskhook_store::StoreError)> {
    let versions = match engine.store().hook_versions().await {
        Ok(v) => v,
        Err(e) => return Err((old, e)),
    };
    let changed = versions
        .iter()
        .filter(|(g, i, u)| {
            old.get(&(g.clone(), i.clone()))
                .is_none_or(|s| s.row.updated_at != *u)
        })
        .count();
    // Many changes: one full read beats a read per hook.
    let full = if changed > 64 {
        match engine.store().list_hooks(None).await {
            Ok(rows) => Some(
                rows.into_iter()
                    .map(|r| ((r.group.clone(), r.id.clone()), r))
                    .collect::<HashMap<_, _>>(),
            ),
            Err(e) => return Err((old, e)),
        }
    } else {
        None
    };
    let now = now_ms();
    let mut out = HashMap::with_capacity(versions.len());
    for (group, id, updated_at) in versions {
        let key = (group, id);
        if let Some(prev) = old.remove(&key)
            && prev.row.updated_at == updated_at
        {
            out.insert(key, prev);
            continue;
        }
        let row = match &full {
            Some(rows) => rows.get(&key).cloned(),
            None => engine.store().get_hook(&key.0, &key.1).await.ok().flatten(),
        };
        if let Some(s) = row.and_then(|r| scheduled(r, now)) {
            out.insert(key, s);
        }
    }
    Ok(out)
}

fn scheduled(mut row: HookRow, now: i64) -> Option<Scheduled> {
    // The parsed hook is all that is needed from here on; the JSON body is dropped to keep
    // thousands of scheduled hooks small.
    let hook: Hook = serde_json::from_value(std::mem::take(&mut row.body)).ok()?;
    let schedules = if hook.enabled {
        hook.schedules()
    } else {
        Vec::new()
    };
    // Hooks with `overlap: queue` stay watched even without schedules: fires already
    // queued still start after the hook is disabled.
    if schedules.is_empty() && hook.overlap != Overlap::Queue {
        return None;
    }
    // Due at once if anything was missed since the last fire (or since creation).
    let after = row.last_scheduled_for.unwrap_or(row.created_at).min(now);
    let next = next_due(&schedules, after);
    Some(Scheduled {
        row,
        hook,
        schedules,
        next,
    })
}

/// Fires `due` until the store has recorded it (or found it fired already), pausing longer
/// after each failure; a due time is never given up while the hook is scheduled.
async fn fire_until_recorded(
    engine: &Engine,
    row: &HookRow,
    hook: &Hook,
    due: i64,
    slots: &Semaphore,
    stop: &CancellationToken,
) {
    let mut pause = RETRY_PAUSE;
    loop {
        let recorded = {
            let Ok(_slot) = slots.acquire().await else {
                return;
            };
            fire_once(engine, row, hook, due).await
        };
        if recorded {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
        pause = (pause * 2).min(MAX_RETRY_PAUSE);
    }
}

/// One try; whether the due time is recorded now.
async fn fire_once(engine: &Engine, row: &HookRow, hook: &Hook, due: i64) -> bool {
    let scheduled_for = jiff::Timestamp::from_millisecond(due)
        .map(|t| t.to_string())
        .ok();
    let event = Event {
        fired_by: "schedule".into(),
        payload: json!({}),
        method: "SCHEDULE".into(),
        scheduled_for,
        source: "schedule".into(),
        ..Default::default()
    };
    match engine.fire(row, hook, event, Some(due)).await {
        Ok(r) if r.duplicate => {
            tracing::debug!(hook = %format!("{}/{}", row.group, row.id), due, "already fired");
            true
        }
        Ok(r) => {
            tracing::debug!(hook = %format!("{}/{}", row.group, row.id), due, result = %r.fire.result, "scheduled fire");
            true
        }
        Err(e) => {
            tracing::warn!(hook = %format!("{}/{}", row.group, row.id), due, error = %e, "scheduled fire failed; trying again");
            false
        }
    }
}
