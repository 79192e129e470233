//! Kafka: a topic read by a consumer group (librdkafka), offsets committed by hand, and only up
//! to messages whose fires are committed.
//!
//! Automatic commits are off. After each batch, every partition's offset is committed up to
//! the highest offset below which every fire is committed; a partition where a fire could not
//! be stored is sought back to that message (after [`Cx::fire_all`]'s backoff), so it is read
//! again, and the messages after it too: those already fired come back as `duplicate` fires.
//! Instances share the topic's partitions through the one consumer group. A message delivered
//! twice (after a crash, a rebalance or a seek) has the same delivery id,
//! `kafka:<topic>:<partition>:<offset>`, so it never makes a second task.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message as _, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use taskhook_hooks::Message;
use taskhook_hooks::source::{KafkaSource, StartFrom};

use crate::{Cx, Source};

/// How often the connection is checked and the lag read.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);
/// How long a broker request of ours (metadata, watermarks, commit, seek) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one wait for a message lasts before housekeeping gets its turn.
const WAIT: Duration = Duration::from_secs(1);

pub(crate) struct Kafka {
    spec: KafkaSource,
}

impl Kafka {
    pub(crate) fn new(spec: KafkaSource) -> Self {
        Kafka { spec }
    }
}

/// Keeps librdkafka's last global error (all brokers down, a refused connection…) for the
/// status.
#[derive(Default)]
struct Context {
    error: Mutex<Option<String>>,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka client error");
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for Context {}

type Kc = StreamConsumer<Context>;

/// Closes the consumer (leaving the group) on a blocking thread: librdkafka's close waits
/// for the broker.
struct Closing(Option<Arc<Kc>>);

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            tokio::task::spawn_blocking(move || drop(c));
        }
    }
}

/// Runs a blocking librdkafka call off the runtime's threads.
async fn blocking<T: Send + 'static>(
    consumer: &Arc<Kc>,
    f: impl FnOnce(&Kc) -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, String> {
    let c = consumer.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// A record as a message: its value is the body, its headers (and key, as `kafka_key`) the
/// headers.
fn message(m: &OwnedMessage) -> Message {
    let mut headers = BTreeMap::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
            headers.insert(h.key.to_string(), value.into_owned());
        }
    }
    if let Some(key) = m.key() {
        headers.insert(
            "kafka_key".to_string(),
            String::from_utf8_lossy(key).into_owned(),
        );
    }
    Message {
        delivery_id: format!("kafka:{}:{}:{}", m.topic(), m.partition(), m.offset()),
        source: m.topic().to_string(),
        headers,
        body: m.payload().unwrap_or_default().to_vec(),
        first_delivery: false,
    }
}

/// Per partition of a fired batch (offsets in the order received, so increasing): the offset
/// to commit (one past the last message of the unbroken run of committed fires) and the first
/// offset whose fire could not be stored.
fn outcome(batch: &[(i32, i64)], fired: &[bool]) -> BTreeMap<i32, (Option<i64>, Option<i64>)> {
    let mut by: BTreeMap<i32, (Option<i64>, Option<i64>)> = BTreeMap::new();
    for (&(partition, offset), &ok) in batch.iter().zip(fired) {
        let (commit, failed) = by.entry(partition).or_default();
        if failed.is_some() {
            continue;
        }
        if ok {
            *commit = Some(offset + 1);
        } else {
            *failed = Some(offset);
        }
    }
    by
}

impl Kafka {
    fn consumer(&self, cx: &Cx) -> Result<Kc, String> {
        let s = &self.spec;
        ClientConfig::new()
            .set("bootstrap.servers", s.brokers.join(","))
            .set("group.id", &s.group)
            .set("client.id", format!("taskhook-{}", cx.instance))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.offset.reset",
                match s.from {
                    StartFrom::New => "latest",
                    StartFrom::All => "earliest",
                },
            )
            // A member that died (kill -9) is noticed after 10 s, not librdkafka's 45 s, so its
            // partitions go to the others (or to it, restarted) sooner.
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "3000")
            .set("socket.connection.setup.timeout.ms", "10000")
            .set("reconnect.backoff.max.ms", "5000")
            // At most about max_in_flight messages wait in librdkafka's queue per partition.
            .set(
                "queued.min.messages",
                s.max_in_flight.clamp(1, 100_000).to_string(),
            )
            .create_with_context(Context::default())
            .map_err(|e| format!("creating the kafka consumer: {e}"))
    }
}

#[async_trait::async_trait]
impl Source for Kafka {
    async fn run(&self, cx: &Cx) -> Result<(), String> {
        let s = &self.spec;
        let consumer = Arc::new(self.consumer(cx)?);
        let _close = Closing(Some(consumer.clone()));
        let topic = s.topic.clone();
        let t = topic.clone();
        let metadata = blocking(&consumer, move |c| {
            c.fetch_metadata(Some(&t), REQUEST_TIMEOUT)
        });
        let brokers = tokio::select! {
            m = metadata => m.map_err(|e| format!("connecting to {}: {e}", s.brokers.join(",")))?,
            _ = cx.stop.cancelled() => return Ok(()),
        };
        if brokers.brokers().is_empty() {
            return Err(format!("no broker answered at {}", s.brokers.join(",")));
        }
        consumer
            .subscribe(&[&topic])
            .map_err(|e| format!("subscribing to {topic}: {e}"))?;
        cx.status.connected();
        let max = s.max_in_flight as usize;
        let mut housekeeping = tokio::time::Instant::now();
        loop {
            if cx.stop.is_cancelled() {
                return Ok(());
            }
            if housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                housekeeping = tokio::time::Instant::now();
                self.housekeeping(&consumer, cx).await;
            }
            let first = tokio::select! {
                m = consumer.recv() => m.map(|m| m.detach()),
                _ = tokio::time::sleep(WAIT) => continue,
                _ = cx.stop.cancelled() => return Ok(()),
            };
            let first = match first {
                Ok(m) => m,
                Err(e) => {
                    // Errors of one partition or fetch; the client retries by itself.
                    cx.status.error(&format!("consuming {topic}: {e}"), false);
                    tokio::time::sleep(WAIT).await;
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < max {
                match consumer.recv().now_or_never() {
                    Some(Ok(m)) => batch.push(m.detach()),
                    _ => break,
                }
            }
            let positions: Vec<(i32, i64)> =
                batch.iter().map(|m| (m.partition(), m.offset())).collect();
            let fired = cx.fire_all(batch.iter().map(message).collect()).await;
            let by = outcome(&positions, &fired);
            let mut commit = TopicPartitionList::new();
            for (&p, &(upto, _)) in &by {
                if let Some(o) = upto {
                    commit
                        .add_partition_offset(&topic, p, Offset::Offset(o))
                        .map_err(|e| e.to_string())?;
                }
            }
            if commit.count() > 0 {
                // A commit refused (the partition went to another instance meanwhile) leaves
                // the messages to be read again there: their fires dedupe them.
                if let Err(e) =
                    blocking(&consumer, move |c| c.commit(&commit, CommitMode::Sync)).await
                {
                    cx.status
                        .error(&format!("committing offsets of {topic}: {e}"), false);
                }
            }
            for (&p, &(_, failed)) in &by {
                if let Some(o) = failed {
                    let t = topic.clone();
                    blocking(&consumer, move |c| {
                        c.seek(&t, p, Offset::Offset(o), REQUEST_TIMEOUT)
                    })
                    .await
                    .map_err(|e| {
                        format!("seeking partition {p} back to offset {o} after a failed fire: {e}")
                    })?;
                }
            }
        }
    }
}

impl Kafka {
    /// Checks the connection (a metadata request) and reads the lag: for every partition
    /// assigned here, the high watermark less the position.
    async fn housekeeping(&self, consumer: &Arc<Kc>, cx: &Cx) {
        let topic = self.spec.topic.clone();
        let reached = blocking(consumer, move |c| {
            let metadata = c.fetch_metadata(Some(&topic), REQUEST_TIMEOUT)?;
            let positions: HashMap<i32, i64> = c
                .position()?
                .elements_for_topic(&topic)
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect();
            let mut lag = 0u64;
            for (p, pos) in positions {
                let (_, high) = c.fetch_watermarks(&topic, p, REQUEST_TIMEOUT)?;
                lag += (high - pos).max(0) as u64;
            }
            Ok((metadata.brokers().len(), lag))
        })
        .await;
        // What librdkafka reported meanwhile (a connection lost and made again).
        let global = consumer
            .context()
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match reached {
            Ok((brokers, lag)) if brokers > 0 => {
                if let Some(g) = global {
                    cx.status.error(&g, false);
                }
                cx.status.connected();
                cx.status.update(|s| s.lag = Some(lag));
            }
            Ok(_) => cx.status.error("no broker answered", true),
            Err(e) => {
                let reason = global.map_or(e.clone(), |g| format!("{e} ({g})"));
                cx.status.error(&reason, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_committed_up_to_the_first_fire_not_stored() {
        let batch = [(0, 10), (1, 5), (0, 11), (0, 12), (1, 6), (0, 13)];
        let fired = [true, true, false, true, true, true];
        let by = outcome(&batch, &fired);
        // Partition 0: 10 fired, 11 not: commit 11, seek back to 11 (12 and 13 are read again).
        assert_eq!(by[&0], (Some(11), Some(11)));
        assert_eq!(by[&1], (Some(7), None));
        let by = outcome(&[(2, 0)], &[false]);
        assert_eq!(by[&2], (None, Some(0)));
    }

    #[test]
    fn records_become_messages() {
        use rdkafka::Timestamp;
        use rdkafka::message::{Header, OwnedHeaders};
        let headers = OwnedHeaders::new().insert(Header {
            key: "kind",
            value: Some("build"),
        });
        let m = OwnedMessage::new(
            Some(b"{\"a\":1}".to_vec()),
            Some(b"k1".to_vec()),
            "events".into(),
            Timestamp::NotAvailable,
            3,
            42,
            Some(headers),
        );
        let msg = message(&m);
        assert_eq!(msg.delivery_id, "kafka:events:3:42");
        assert_eq!(msg.source, "events");
        assert_eq!(msg.headers["kind"], "build");
        assert_eq!(msg.headers["kafka_key"], "k1");
        assert_eq!(msg.body, b"{\"a\":1}");
    }
}
