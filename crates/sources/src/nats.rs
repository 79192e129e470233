//! NATS JetStream: a durable pull consumer on an existing stream; a message is acknowledged
//! (`+ACK`) once its fire is committed, and given back with a delay (`-NAK`) when its fire
//! could not be stored.
//!
//! The stream must exist: a missing one is an error on the hook's status (streams carry
//! retention, limits and subjects that are the operator's to choose). The consumer is durable
//! (named by `durable`, by default after the hook), with explicit acks, `max_ack_pending` =
//! `max_in_flight`, and the filter subjects of `subjects`; it is created when missing (then
//! `from` says where it starts) and updated when it exists, keeping its position. Several
//! instances pull from the one consumer, so each message goes to one of them. A subscription
//! that stops (the hook changed or was disabled) gives back what it received and did not fire.
//!
//! Delivery ids are `nats:<stream>:<stream created, unix ms>:<stream sequence>`, which a
//! redelivery keeps; a stream deleted and created again under its name starts its sequence
//! over, and its creation time keeps its messages apart from the old stream's.
//!
//! Credentials: `user:password` in the URL, or a token written as the password with no user
//! (`nats://:TOKEN@host`); `password_secret` supplies the password (or the token, with no
//! user in the URL). NKeys and credentials files are not supported.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use async_nats::{ConnectOptions, Event};
use futures_util::{FutureExt, StreamExt};
use taskhook_hooks::Message;
use taskhook_hooks::source::{NatsSource, StartFrom};

use taskhook_brokers::nats::split_url;

use crate::{Cx, Source};

/// How long connecting (TCP, TLS, handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the consumer's pending count (the lag) is read.
const LAG_EVERY: Duration = Duration::from_secs(5);
/// A message whose fire could not be stored is delivered again after this.
const NAK_DELAY: Duration = Duration::from_secs(1);
/// A message delivered and neither acknowledged nor given back (the instance died) is
/// delivered again after this.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long a pull waits for messages, and the heartbeats it asks for meanwhile (a missed
/// heartbeat ends the subscription, which reconnects).
const PULL_EXPIRES: Duration = Duration::from_secs(30);
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);

pub(crate) struct Nats {
    spec: NatsSource,
}

impl Nats {
    pub(crate) fn new(spec: NatsSource) -> Self {
        Nats { spec }
    }
}

#[async_trait::async_trait]
impl Source for Nats {
    async fn run(&self, cx: &Cx) -> Result<(), String> {
        let s = &self.spec;
        let (server, auth) = split_url(&s.url)?;
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let options = ConnectOptions::new()
            .name(format!("taskhook-{}", cx.instance))
            .connection_timeout(CONNECT_TIMEOUT)
            // A lost connection ends the subscription (the supervisor reconnects with its
            // pauses and shows it on the status); the client itself does not keep trying.
            .max_reconnects(1)
            .event_callback(move |event| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            });
        let client = auth
            .apply(options)
            .connect(server.as_str())
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let js = jetstream::new(client.clone());
        let stream = js.get_stream(&s.stream).await.map_err(|e| {
            if let jetstream::context::GetStreamErrorKind::JetStream(err) = e.kind()
                && err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            {
                format!(
                    "stream {:?} does not exist (taskhook does not create streams)",
                    s.stream
                )
            } else {
                format!("reading stream {:?}: {e}", s.stream)
            }
        })?;
        let created_ms = stream.cached_info().created.unix_timestamp_nanos() / 1_000_000;
        let name = s.durable_name(&cx.row.group, &cx.row.id);
        let mut config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("taskhook hook {}/{}", cx.row.group, cx.row.id)),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            deliver_policy: match s.from {
                StartFrom::New => consumer::DeliverPolicy::New,
                StartFrom::All => consumer::DeliverPolicy::All,
            },
            max_ack_pending: i64::from(s.max_in_flight),
            ..Default::default()
        };
        match s.subjects.as_slice() {
            [] => {}
            [one] => config.filter_subject = one.clone(),
            many => config.filter_subjects = many.to_vec(),
        }
        // An existing consumer keeps its position: `from` applies to a new one only.
        match stream.consumer_info(&name).await {
            Ok(info) => {
                config.deliver_policy = info.config.deliver_policy;
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(format!("reading consumer {name:?}: {e}")),
        }
        let mut consumer: consumer::PullConsumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| format!("creating consumer {name:?}: {e}"))?;
        if s.subjects.len() > 1 && consumer.cached_info().config.filter_subjects.is_empty() {
            return Err(
                "the server ignored the filter subjects: several subjects need NATS 2.10 or later"
                    .into(),
            );
        }
        let max = s.max_in_flight as usize;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(max)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| format!("pulling from consumer {name:?}: {e}"))?;
        cx.status.connected();
        let mut lag = tokio::time::interval(LAG_EVERY);
        loop {
            let first = tokio::select! {
                biased;
                _ = cx.stop.cancelled() => {
                    give_back(&client, &mut messages, Vec::new()).await;
                    return Ok(());
                }
                event = events.recv() => {
                    match event {
                        Some(Event::Disconnected) | Some(Event::Closed) | None => {
                            return Err("the connection to the server was lost".into());
                        }
                        Some(Event::ServerError(e)) => cx.status.error(&format!("server error: {e}"), false),
                        Some(Event::SlowConsumer(_)) => cx.status.error("the client fell behind (slow consumer)", false),
                        Some(_) => {}
                    }
                    continue;
                }
                _ = lag.tick() => {
                    let info = consumer
                        .info()
                        .await
                        .map_err(|e| format!("reading consumer {name:?}: {e}"))?;
                    let pending = info.num_pending;
                    cx.status.update(|st| st.lag = Some(pending));
                    continue;
                }
                m = messages.next() => m,
            };
            let mut batch = vec![delivered(first)?];
            // Whatever else has already arrived joins the batch, so the fires share commits.
            let mut failed = None;
            while batch.len() < max {
                match messages.next().now_or_never() {
                    Some(m) => match delivered(m) {
                        Ok(m) => batch.push(m),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    },
                    None => break,
                }
            }
            // Messages taken after the hook changed or was disabled are not fired: they are
            // given back, for the next subscription.
            if cx.stop.is_cancelled() {
                give_back(&client, &mut messages, batch).await;
                return Ok(());
            }
            let fired = cx
                .fire_all(
                    batch
                        .iter()
                        .map(|m| message(&s.stream, created_ms, m))
                        .collect(),
                )
                .await;
            for (m, ok) in batch.iter().zip(fired) {
                let answer = if ok {
                    m.ack().await
                } else {
                    m.ack_with(AckKind::Nak(Some(NAK_DELAY))).await
                };
                answer.map_err(|e| format!("acknowledging: {e}"))?;
            }
            client
                .flush()
                .await
                .map_err(|e| format!("acknowledging: {e}"))?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
    }
}

/// Gives `batch`, and the messages already received and not yet taken, back to the server
/// at once (`-NAK` without delay), so that the next subscription has them without waiting
/// for the ack wait. Best effort: what is not given back comes again after the ack wait.
async fn give_back(
    client: &async_nats::Client,
    messages: &mut consumer::pull::Stream,
    mut batch: Vec<jetstream::Message>,
) {
    while let Some(Some(Ok(m))) = messages.next().now_or_never() {
        batch.push(m);
    }
    for m in &batch {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
}

fn is_not_found(e: &jetstream::context::ConsumerInfoError) -> bool {
    e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound
}

/// A pull stream's next item as a message, or why the subscription ends.
fn delivered(
    item: Option<Result<jetstream::Message, consumer::pull::MessagesError>>,
) -> Result<jetstream::Message, String> {
    match item {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(format!("pulling messages: {e}")),
        None => Err("the server ended the pull".into()),
    }
}

/// A JetStream message as a message: its headers (several values of one name joined with
/// `, `) are `event.headers`, its subject `event.source`.
fn message(stream: &str, created_ms: i128, m: &jetstream::Message) -> Message {
    let headers: BTreeMap<String, String> = m
        .headers
        .as_ref()
        .map(|h| {
            h.iter()
                .map(|(k, vs)| {
                    let v: Vec<&str> = vs.iter().map(|v| v.as_str()).collect();
                    (k.to_string(), v.join(", "))
                })
                .collect()
        })
        .unwrap_or_default();
    // Every message of a pull consumer has an ack subject carrying its stream sequence.
    let sequence = m.info().map_or_else(
        |_| {
            m.reply
                .as_ref()
                .map_or_else(String::new, |r| format!("reply:{r}"))
        },
        |i| i.stream_sequence.to_string(),
    );
    Message {
        delivery_id: format!("nats:{stream}:{created_ms}:{sequence}"),
        source: m.subject.to_string(),
        headers,
        body: m.payload.to_vec(),
        first_delivery: false,
    }
}
