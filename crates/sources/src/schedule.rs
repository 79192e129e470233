//! The schedule source: fires hooks at their cron due times.
//!
//! It keeps the scheduled hooks in memory (reloaded when hooks change, and every
//! [`RELOAD_EVERY`] for changes made by other processes), sleeps until the next due time,
//! and fires every hook due then concurrently, so their commits share transactions.
//! Exactly once per due time comes from the store: a fire is unique per hook and due time,
//! and each hook remembers the newest due time it fired, so a restart neither repeats nor
//! silently skips (the hook's `misfire` policy decides what missed times do).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use taskhook_engine::Engine;
use taskhook_hooks::schedule::{due_times, next_due};
use taskhook_hooks::{Event, Hook, Overlap, Schedule};
use taskhook_store::{HookRow, now_ms};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How often the scheduler re-reads hooks even without a change notice.
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// A `skip` hook still fires a due time this late.
const SKIP_GRACE_MS: i64 = 30_000;
/// Fires in flight at once (their writes are grouped into shared commits).
const CONCURRENT_FIRES: usize = 256;
/// How often hooks with queued fires are checked for a finished predecessor.
const QUEUE_CHECK: Duration = Duration::from_secs(1);

struct Scheduled {
    row: HookRow,
    hook: Hook,
    schedules: Vec<Schedule>,
    /// The next due time not yet fired; `None` when the hook has no (enabled) schedule.
    next: Option<i64>,
}

/// Runs the scheduler until `stop` is cancelled.
pub async fn run(engine: Engine, stop: CancellationToken) {
    let mut hooks: HashMap<(String, String), Scheduled> = HashMap::new();
    let mut loaded_at = None::<tokio::time::Instant>;
    let slots = Arc::new(Semaphore::new(CONCURRENT_FIRES));
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
        }
        let now = now_ms();
        let mut fires = tokio::task::JoinSet::new();
        // Only hooks whose next due time has come are looked at: the work per wake-up is
        // proportional to what is due, not to how many hooks exist.
        for s in hooks
            .values_mut()
            .filter(|s| s.next.is_some_and(|n| n <= now))
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
            for due in missed {
                s.row.last_scheduled_for = Some(due);
                let (engine, row, hook, slots) =
                    (engine.clone(), s.row.clone(), s.hook.clone(), slots.clone());
                fires.spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    fire_once(&engine, &row, &hook, due).await;
                });
            }
            s.next = next_due(
                &s.schedules,
                now.max(s.row.last_scheduled_for.unwrap_or(now)),
            );
        }
        while fires.join_next().await.is_some() {}
        let queued = hooks.values().any(|s| s.hook.overlap == Overlap::Queue);
        if queued {
            for s in hooks.values().filter(|s| s.hook.overlap == Overlap::Queue) {
                if let Err(e) = engine.start_queued_fire(&s.row, &s.hook).await {
                    tracing::warn!(hook = %format!("{}/{}", s.row.group, s.row.id), error = %e, "could not start a queued fire");
                }
            }
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
            _ = engine.hooks_changed().notified() => loaded_at = None,
            _ = stop.cancelled() => return,
        }
    }
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

async fn fire_once(engine: &Engine, row: &HookRow, hook: &Hook, due: i64) {
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
            tracing::debug!(hook = %format!("{}/{}", row.group, row.id), due, "already fired")
        }
        Ok(r) => {
            tracing::debug!(hook = %format!("{}/{}", row.group, row.id), due, result = %r.fire.result, "scheduled fire")
        }
        Err(e) => {
            tracing::error!(hook = %format!("{}/{}", row.group, row.id), due, error = %e, "scheduled fire failed")
        }
    }
}
