//! Runs the `sources` subscriptions of every enabled hook.
//!
//! It reads the hooks when they change (this process's writes, or another instance's on a
//! shared store) and every [`RELOAD_EVERY`], and makes the running subscriptions match: a new
//! source starts, a changed hook's sources restart (the old subscription finishes its batch
//! and acknowledges it first), a deleted or disabled hook's sources stop. A subscription that
//! loses its connection reconnects after a pause growing from 1 s to 60 s, and says so on the
//! hook's status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use taskhook_actions::{AddressError, NetworkPolicy};
use taskhook_engine::Engine;
use taskhook_engine::source_board::SourceStatus;
use taskhook_hooks::source::reconnect_pause;
use taskhook_hooks::{Hook, SourceSpec};
use taskhook_store::HookRow;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Cx, Source};

/// How often hooks are re-read even without a change notice.
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// A connection that lasted this long starts the reconnect pauses over from 1 s.
const STABLE_AFTER: Duration = Duration::from_secs(60);

type Key = (String, String, usize);

struct Running {
    /// The hook document the subscription runs with; another one restarts it.
    body: Value,
    stop: CancellationToken,
    done: JoinHandle<()>,
}

/// Runs every hook's sources until `stop` is cancelled; then stops them, letting each finish
/// (and acknowledge) the batch it holds.
pub async fn run(engine: Engine, stop: CancellationToken, policy: NetworkPolicy) {
    let mut running: HashMap<Key, Running> = HashMap::new();
    let mut changed = engine.hooks_changed();
    loop {
        match engine.store().list_hooks(None).await {
            Ok(rows) => reconcile(&engine, &policy, rows, &mut running),
            Err(e) => tracing::error!(error = %e, "sources could not load hooks; retrying"),
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(RELOAD_EVERY) => {}
            _ = stop.cancelled() => break,
        }
    }
    for r in running.values() {
        r.stop.cancel();
    }
    for (_, r) in running {
        let _ = r.done.await;
    }
}

fn reconcile(
    engine: &Engine,
    policy: &NetworkPolicy,
    rows: Vec<HookRow>,
    running: &mut HashMap<Key, Running>,
) {
    let mut wanted: HashMap<Key, (HookRow, Arc<Hook>)> = HashMap::new();
    for row in rows {
        let hook = match serde_json::from_value::<Hook>(row.body.clone()) {
            Ok(h) if h.enabled && !h.sources.is_empty() => Arc::new(h),
            Ok(_) => continue,
            Err(e) => {
                tracing::error!(hook = %format!("{}/{}", row.group, row.id), error = %e, "stored hook is unreadable; its sources do not run");
                continue;
            }
        };
        for i in 0..hook.sources.len() {
            wanted.insert(
                (row.group.clone(), row.id.clone(), i),
                (row.clone(), hook.clone()),
            );
        }
    }
    // Stop what is gone or changed; a changed one's successor waits for it to finish.
    let mut previous: HashMap<Key, JoinHandle<()>> = HashMap::new();
    let keys: Vec<Key> = running.keys().cloned().collect();
    for key in keys {
        let keep = wanted
            .get(&key)
            .is_some_and(|(row, _)| running[&key].body == row.body);
        if !keep && let Some(r) = running.remove(&key) {
            r.stop.cancel();
            previous.insert(key, r.done);
        }
    }
    for (key, (row, hook)) in wanted {
        if running.contains_key(&key) {
            continue;
        }
        let stop = CancellationToken::new();
        let body = row.body.clone();
        let done = tokio::spawn(subscription(
            engine.clone(),
            policy.clone(),
            row,
            hook,
            key.2,
            stop.clone(),
            previous.remove(&key),
        ));
        running.insert(key, Running { body, stop, done });
    }
    // Stopped ones without a successor end on their own; nothing waits for them here.
}

/// One source of one hook, reconnecting until stopped.
async fn subscription(
    engine: Engine,
    policy: NetworkPolicy,
    row: HookRow,
    hook: Arc<Hook>,
    index: usize,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
) {
    if let Some(p) = previous {
        let _ = p.await;
    }
    let spec = hook.sources[index].clone();
    let name = format!("{}/{}", row.group, row.id);
    let instance = engine.config().owner.clone();
    let status = engine.source_board().register(
        &row.group,
        &row.id,
        SourceStatus {
            index,
            kind: spec.kind().into(),
            subscription: spec.describe(),
            instance: instance.clone(),
            ..Default::default()
        },
    );
    let mut cx = Cx {
        engine: engine.clone(),
        row,
        hook: hook.clone(),
        kind: spec.kind(),
        max_message_bytes: spec.common().max_message_bytes,
        status,
        stop: stop.clone(),
        instance,
        failures: Default::default(),
    };
    let mut attempt = 0u32;
    while !stop.is_cancelled() {
        let started = tokio::time::Instant::now();
        let outcome = match allowed(&policy, &spec).await {
            Err(e) => Err(e),
            Ok(()) => with_password(&engine, &spec).await,
        };
        let outcome = match outcome {
            Ok(spec) => {
                tracing::info!(hook = %name, source = %spec.describe(), "source connecting");
                make(&spec).run(&cx).await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(hook = %name, source = %spec.describe(), error = %e, "source disconnected; reconnecting");
                cx.status.error(&e, true);
            }
        }
        if started.elapsed() >= STABLE_AFTER {
            attempt = 0;
        }
        tokio::select! {
            _ = tokio::time::sleep(reconnect_pause(attempt)) => {}
            _ = stop.cancelled() => break,
        }
        attempt = attempt.saturating_add(1);
        cx.failures = Default::default();
    }
    cx.status.update(|s| s.connected = false);
}

/// Every address the source connects to is allowed by the network policy of `http` steps
/// (checked before each connection attempt: a name may move).
async fn allowed(policy: &NetworkPolicy, spec: &SourceSpec) -> Result<(), String> {
    for (host, port) in spec.endpoints() {
        if let Err(e @ AddressError::Denied(_)) = policy.check_host(&host, port).await {
            return Err(e.to_string());
        }
    }
    Ok(())
}

/// The source as it connects: the password of its `password_secret`, when it has one, put in
/// its URL.
async fn with_password(engine: &Engine, spec: &SourceSpec) -> Result<SourceSpec, String> {
    let Some(name) = spec.common().password_secret else {
        return Ok(spec.clone());
    };
    let values = engine
        .store()
        .secret_values(vec![name.to_string()])
        .await
        .map_err(|e| format!("reading secret {name:?}: {e}"))?;
    let Some((_, password)) = values.into_iter().next() else {
        return Err(format!("secret {name:?} does not exist"));
    };
    spec.with_password(&password)
        .ok_or_else(|| "the URL cannot carry a password".to_string())
}

fn make(spec: &SourceSpec) -> Box<dyn Source> {
    match spec {
        SourceSpec::Redis(s) => Box::new(crate::redis::Redis::new(s.clone())),
        SourceSpec::Git(s) => Box::new(crate::git::Git::new(s.clone())),
        SourceSpec::Amqp(s) => Box::new(crate::amqp::Amqp::new(s.clone())),
        SourceSpec::Nats(s) => Box::new(crate::nats::Nats::new(s.clone())),
        SourceSpec::Mqtt(s) => Box::new(crate::mqtt::Mqtt::new(s.clone())),
        SourceSpec::Kafka(s) => Box::new(crate::kafka::Kafka::new(s.clone())),
    }
}
