//! Event sources: where events come from besides HTTP. Each source turns what it sees into
//! [`taskhook_hooks::Event`]s and hands them to the engine's `fire`, which commits the fire
//! and its task before anything is acknowledged. Sources never decide what a task is.
//!
//! - `schedule.rs`: cron schedules.
//! - `supervisor.rs`: runs every hook's `sources` subscriptions, starting, restarting and
//!   stopping them as hooks change, reconnecting with backoff.
//! - one file per source behind the [`Source`] trait: `redis.rs` (Redis Streams), `amqp.rs`
//!   (RabbitMQ queues), `nats.rs` (NATS JetStream), `mqtt.rs` (MQTT 3.1.1), `kafka.rs` (Kafka
//!   consumer groups), `git.rs` (a repository polled by one instance at a time, its position
//!   kept in the store).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use taskhook_engine::Engine;
use taskhook_engine::source_board::StatusHandle;
use taskhook_hooks::{Hook, Message};
use taskhook_store::{HookRow, now_ms};
use tokio_util::sync::CancellationToken;

mod amqp;
mod git;
mod kafka;
mod mqtt;
mod nats;
mod redis;
pub mod schedule;
pub mod supervisor;

/// One subscription to a broker or repository. `run` connects, consumes, and hands each
/// message to [`Cx::fire_all`], acknowledging only the messages whose fire committed.
#[async_trait::async_trait]
pub(crate) trait Source: Send + Sync {
    /// Runs until `cx.stop` is cancelled (then returns `Ok`) or the connection fails (`Err`
    /// with a readable reason; the supervisor reconnects after a pause).
    async fn run(&self, cx: &Cx) -> Result<(), String>;
}

/// What a running subscription needs: the hook it fires, its status entry, its stop signal.
pub(crate) struct Cx {
    pub engine: Engine,
    pub row: HookRow,
    pub hook: Arc<Hook>,
    /// The source kind (`event.fired_by`).
    pub kind: &'static str,
    pub max_message_bytes: u64,
    pub status: StatusHandle,
    pub stop: CancellationToken,
    /// This process, as brokers see it (consumer names).
    pub instance: String,
    /// Fire batches in a row that could not all be stored.
    failures: AtomicU32,
}

/// The first pause after a batch that could not be stored; doubles up to [`MAX_STORE_PAUSE`].
const STORE_PAUSE: Duration = Duration::from_millis(200);
const MAX_STORE_PAUSE: Duration = Duration::from_secs(5);

impl Cx {
    /// Fires every message (concurrently, so their writes share commits) and says, for each,
    /// whether its fire is committed (a new fire, or a duplicate of a committed one): acknowledge
    /// those. A message whose fire could not be stored (database down) is `false`: leave it
    /// unacknowledged or give it back, so the broker delivers it again. After such a batch this
    /// waits a growing pause before returning, so a source backs off while the store is down.
    pub async fn fire_all(&self, messages: Vec<Message>) -> Vec<bool> {
        let n = messages.len() as u64;
        let last = messages.last().map(|m| m.delivery_id.clone());
        self.status.update(|s| {
            s.received += n;
            s.last_message_at = Some(now_ms());
            if last.is_some() {
                s.last_delivery_id.clone_from(&last);
            }
        });
        let fires = messages.into_iter().map(|m| async move {
            let (event, too_big) = m.event(self.kind, self.max_message_bytes);
            let result = match too_big {
                Some(reason) => {
                    self.engine
                        .fire_error(&self.row, &self.hook, event, reason)
                        .await
                }
                None => self.engine.fire(&self.row, &self.hook, event, None).await,
            };
            result.map_err(|e| e.to_string())
        });
        let results = futures_util::future::join_all(fires).await;
        let fired = results.iter().filter(|r| r.is_ok()).count() as u64;
        self.status.update(|s| s.fired += fired);
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            let k = self.failures.fetch_add(1, Ordering::Relaxed);
            let reason = format!("fires could not be stored; messages left for redelivery: {e}");
            tracing::warn!(hook = %format!("{}/{}", self.row.group, self.row.id), source = self.kind, error = %e, "source backs off: fires could not be stored");
            self.status.error(&reason, false);
            let pause = STORE_PAUSE
                .saturating_mul(1u32 << k.min(5))
                .min(MAX_STORE_PAUSE);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.stop.cancelled() => {}
            }
        } else {
            self.failures.store(0, Ordering::Relaxed);
        }
        results.iter().map(Result::is_ok).collect()
    }
}
