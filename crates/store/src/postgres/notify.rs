//! Wake-ups for other instances, sent after the commit of the writes they announce.
//!
//! A `NOTIFY` inside a data transaction makes PostgreSQL take one database-wide lock at
//! commit and hold it through the commit's WAL flush, so every notifying write of every
//! instance would commit one after another, one flush each. Writes therefore notify nothing
//! themselves: after their commit they fire this process's [`Signals`] at once and hand the
//! channels to the [`Notifier`], whose one task sends them in a transaction of its own. Channels
//! asked for while a send is in flight are coalesced into the next send, so an instance sends at
//! most one notification transaction at a time whatever its write rate.
//!
//! That transaction writes no data, so it commits with `synchronous_commit = off` (set for it
//! alone): nothing of it needs to survive a crash, and a listener is woken without waiting for a
//! flush. The data it announces was flushed before the notification was asked for. A wake-up
//! lost with a failed send (or a crash between commit and send) costs only latency: the
//! dispatcher also wakes at the next due time it reads from the store, and a listener that
//! reconnects wakes everyone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Channels;
use crate::{Result, Signal};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Channels waiting to be sent, as a bit set of [`Signal`]s.
#[derive(Default)]
pub(crate) struct Notifier {
    pending: AtomicU8,
    wake: Notify,
}

impl Notifier {
    /// Asks for the channels in `set` to be notified (soon, after whatever is in flight).
    pub(crate) fn announce(&self, set: u8) {
        if set != 0 {
            self.pending.fetch_or(set, Ordering::AcqRel);
            self.wake.notify_one();
        }
    }
}

/// Starts the task that sends the notifications; it stops with `stop`.
pub(super) fn spawn(
    pool: Pool,
    channels: Channels,
    notifier: Arc<Notifier>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = notifier.wake.notified() => {}
            }
            loop {
                let set = notifier.pending.swap(0, Ordering::AcqRel);
                if set == 0 {
                    break;
                }
                match send(&pool, &channels, set).await {
                    Ok(()) => backoff = FIRST_BACKOFF,
                    Err(e) => {
                        // Kept for the next try; other instances meanwhile wake on their own
                        // timers.
                        notifier.pending.fetch_or(set, Ordering::AcqRel);
                        tracing::warn!(error = %e, retry_in = ?backoff, "sending a PostgreSQL notification failed");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    });
}

/// One statement, so one transaction of its own: the setting applies to it alone.
const SEND_SQL: &str = "SELECT count(*) FROM (SELECT set_config('synchronous_commit', 'off', true), \
     pg_notify(c, '') FROM unnest($1::text[]) AS c) n";

async fn send(pool: &Pool, channels: &Channels, set: u8) -> Result<()> {
    let names: Vec<&str> = [
        (Signal::Due, &channels.due),
        (Signal::Hooks, &channels.hooks),
        (Signal::Slots, &channels.slots),
        (Signal::Stops, &channels.stops),
    ]
    .into_iter()
    .filter(|(s, _)| set & (*s as u8) != 0)
    .map(|(_, name)| name.as_str())
    .collect();
    let client = pool.get().await?;
    let st = client.prepare_cached(SEND_SQL).await?;
    client.query_one(&st, &[&names]).await?;
    Ok(())
}
