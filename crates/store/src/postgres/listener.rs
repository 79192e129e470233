//! The notification listener: one dedicated connection `LISTEN`s on the store's channels and
//! turns each notification into a wake-up of the matching [`Signals`] member.
//!
//! When the connection drops it reconnects with backoff (0.1 s doubling to 5 s) and, once it
//! listens again, fires every signal: notifications sent meanwhile are lost, so waiters must
//! look again. It stops when the store is closed or its last handle is dropped.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Config, NoTls, Socket};
use tokio_util::sync::CancellationToken;

use super::tls::PgTls;
use super::{Channels, quote_ident};
use crate::{Result, Signal, Signals, StoreError};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts the listener; the receiver answers once it listens (or could not connect at first).
pub(super) fn spawn(
    config: Config,
    tls: PgTls,
    channels: Channels,
    signals: Arc<Signals>,
    stop: CancellationToken,
) -> oneshot::Receiver<Result<()>> {
    let (ready_tx, ready_rx) = oneshot::channel();
    tokio::spawn(run(config, tls, channels, signals, stop, ready_tx));
    ready_rx
}

async fn run(
    mut config: Config,
    tls: PgTls,
    channels: Channels,
    signals: Arc<Signals>,
    stop: CancellationToken,
    ready: oneshot::Sender<Result<()>>,
) {
    // Named apart from the pool's connections in pg_stat_activity.
    let name = format!(
        "{}-listener",
        config.get_application_name().unwrap_or("taskhook")
    );
    config.application_name(name);
    // A half-open connection (no RST from a vanished server) is noticed by TCP keepalives.
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    let mut ready = Some(ready);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let (error, listened) = tokio::select! {
            _ = stop.cancelled() => return,
            r = async {
                match &tls {
                    PgTls::Plain => session(&config, NoTls, &channels, &signals, &mut ready).await,
                    PgTls::Rustls(t) => {
                        session(&config, t.clone(), &channels, &signals, &mut ready).await
                    }
                }
            } => r,
        };
        if let Some(tx) = ready.take() {
            // The first connection failed: the store is not opened.
            let _ = tx.send(Err(error));
            return;
        }
        if listened {
            backoff = FIRST_BACKOFF;
        }
        tracing::warn!(error = %error, retry_in = ?backoff, "lost the PostgreSQL notification connection; reconnecting");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: connect, LISTEN, then dispatch notifications until it fails.
/// Returns why it ended and whether it got to listen.
async fn session<T>(
    config: &Config,
    tls: T,
    channels: &Channels,
    signals: &Signals,
    ready: &mut Option<oneshot::Sender<Result<()>>>,
) -> (StoreError, bool)
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = match config.connect(tls).await {
        Ok(c) => c,
        Err(e) => return (e.into(), false),
    };
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listen_sql = channels
        .all()
        .iter()
        .map(|c| format!("LISTEN {};", quote_ident(c)))
        .collect::<String>();
    let listen = client.batch_execute(&listen_sql);
    tokio::pin!(listen);
    // The connection only makes progress while its messages are polled.
    loop {
        tokio::select! {
            r = &mut listen => match r {
                Ok(()) => break,
                Err(e) => return (e.into(), false),
            },
            m = messages.next() => match m {
                Some(Ok(msg)) => dispatch(channels, signals, msg),
                Some(Err(e)) => return (e.into(), false),
                None => return (closed(), false),
            },
        }
    }
    match ready.take() {
        Some(tx) => {
            let _ = tx.send(Ok(()));
        }
        // Reconnected: whatever was notified meanwhile is lost, so everyone looks again.
        None => signals.fire_all(),
    }
    loop {
        match messages.next().await {
            Some(Ok(msg)) => dispatch(channels, signals, msg),
            Some(Err(e)) => return (e.into(), true),
            None => return (closed(), true),
        }
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the notification connection was closed".into())
}

fn dispatch(channels: &Channels, signals: &Signals, msg: AsyncMessage) {
    match msg {
        AsyncMessage::Notification(n) => {
            let ch = n.channel();
            let signal = if ch == channels.due {
                Signal::Due
            } else if ch == channels.hooks {
                Signal::Hooks
            } else if ch == channels.slots {
                Signal::Slots
            } else if ch == channels.stops {
                Signal::Stops
            } else {
                return;
            };
            signals.fire(signal);
        }
        AsyncMessage::Notice(n) => tracing::debug!(notice = %n, "PostgreSQL notice"),
        _ => {}
    }
}
