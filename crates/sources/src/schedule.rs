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
}

/// Runs the scheduler until `stop` is cancelled.
pub async fn run(engine: Engine, stop: CancellationToken) {
    let mut hooks: HashMap<(String, String), Scheduled> = HashMap::new();
    let mut loaded_at = None::<tokio::time::Instant>;
    let slots = Arc::new(Semaphore::new(CONCURRENT_FIRES));
    loop {
        if loaded_at.is_none_or(|t| t.elapsed() >= RELOAD_EVERY) {
            match engine.store().list_hooks(None).await {
                Ok(rows) => {
                    hooks = rows.into_iter().filter_map(scheduled).collect();
                    loaded_at = Some(tokio::time::Instant::now());
                }
                Err(e) => tracing::error!(error = %e, "scheduler could not load hooks; retrying"),
            }
        }
        let now = now_ms();
        let mut fires = tokio::task::JoinSet::new();
        for s in hooks.values_mut() {
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
        let next = hooks
            .values()
            .filter_map(|s| next_due(&s.schedules, now_ms()))
            .min();
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

/// Hooks the scheduler watches: enabled ones with schedules, and any with `overlap: queue`
/// (fires already queued still start after the hook is disabled).
fn scheduled(row: HookRow) -> Option<((String, String), Scheduled)> {
    let hook: Hook = serde_json::from_value(row.body.clone()).ok()?;
    let schedules = if hook.enabled {
        hook.schedules()
    } else {
        Vec::new()
    };
    if schedules.is_empty() && hook.overlap != Overlap::Queue {
        return None;
    }
    Some((
        (row.group.clone(), row.id.clone()),
        Scheduled {
            row,
            hook,
            schedules,
        },
    ))
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
