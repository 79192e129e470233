//! RabbitMQ (AMQP 0-9-1): one durable queue, consumed with manual acknowledgements; a
//! message is acknowledged (`basic.ack`) once its fire is committed, and given back
//! (`basic.nack` with requeue) when its fire could not be stored.
//!
//! The queue is declared durable, not exclusive and not auto-deleted, so it keeps messages
//! while no instance runs and several instances are competing consumers on it. When the
//! source names an `exchange`, that exchange must exist (a passive declare checks it: a
//! missing one is an error on the hook's status, never created here, so a typo does not
//! leave a queue bound to an exchange nobody publishes to) and the queue is bound to it with
//! each of `routing_keys`. `max_in_flight` is the channel's prefetch (`basic.qos`).
//!
//! Delivery ids: RabbitMQ gives a redelivered message a new delivery tag, so the tag cannot
//! dedupe. The id is the message's `message_id` property when the publisher set one, else
//! a hash of what a redelivery keeps: exchange, routing key, properties, headers (but those
//! RabbitMQ adds or changes when it redelivers or dead-letters: see [`UNSTABLE_HEADERS`]) and
//! body.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use sha2::{Digest, Sha256};
use taskhook_hooks::Message;
use taskhook_hooks::source::AmqpSource;

use crate::{Cx, Source};

/// How long connecting (TCP, TLS, AMQP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the queue's depth (the lag) is read.
const LAG_EVERY: Duration = Duration::from_secs(5);
/// Headers RabbitMQ adds or changes on redelivery or dead-lettering; left out of the hash
/// that identifies a message without a `message_id` (prefixes).
const UNSTABLE_HEADERS: &[&str] = &[
    "x-delivery-count",
    "x-death",
    "x-first-death-",
    "x-last-death-",
];

pub(crate) struct Amqp {
    spec: AmqpSource,
}

impl Amqp {
    pub(crate) fn new(spec: AmqpSource) -> Self {
        Amqp { spec }
    }
}

fn error(what: &str, e: lapin::Error) -> String {
    format!("{what}: {e}")
}

#[async_trait::async_trait]
impl Source for Amqp {
    async fn run(&self, cx: &Cx) -> Result<(), String> {
        // Named, so an operator can tell taskhook's connections apart (`rabbitmqctl
        // list_connections client_properties`, the management UI).
        let props = ConnectionProperties::default()
            .with_connection_name(connection_name(&cx.instance).into());
        let conn =
            tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&self.spec.url, props))
                .await
                .map_err(|_| format!("connecting: no answer within {CONNECT_TIMEOUT:?}"))?
                .map_err(|e| error("connecting", e))?;
        let outcome = self.consume(&conn, cx).await;
        // Unacknowledged deliveries go back to the queue when the connection closes.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            conn.close(200, "taskhook source stopping".into()),
        )
        .await;
        outcome
    }
}

impl Amqp {
    async fn consume(&self, conn: &Connection, cx: &Cx) -> Result<(), String> {
        let s = &self.spec;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| error("opening a channel", e))?;
        if let Some(exchange) = &s.exchange {
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    format!(
                        "exchange {exchange:?} (it must exist; taskhook does not create it): {e}"
                    )
                })?;
        }
        channel
            .queue_declare(
                s.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("declaring queue {:?}: {e}", s.queue))?;
        if let Some(exchange) = &s.exchange {
            for key in s.routing_keys() {
                channel
                    .queue_bind(
                        s.queue.as_str().into(),
                        exchange.as_str().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        format!(
                            "binding queue {:?} to {exchange:?} with {key:?}: {e}",
                            s.queue
                        )
                    })?;
            }
        }
        // max_in_flight is at most 10,000 (validated), within the u16 of basic.qos.
        let prefetch = u16::try_from(s.max_in_flight).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| error("setting the prefetch", e))?;
        let mut consumer = channel
            .basic_consume(
                s.queue.as_str().into(),
                connection_name(&cx.instance).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| error("consuming", e))?;
        // The queue's depth is read on a channel of its own: a failed passive declare (the
        // queue was deleted) closes the channel it is made on.
        let info = conn
            .create_channel()
            .await
            .map_err(|e| error("opening a channel", e))?;
        cx.status.connected();
        let mut lag = tokio::time::interval(LAG_EVERY);
        let max = s.max_in_flight as usize;
        loop {
            let first = tokio::select! {
                biased;
                _ = cx.stop.cancelled() => return Ok(()),
                _ = lag.tick() => {
                    self.read_lag(&info, cx).await?;
                    continue;
                }
                d = consumer.next() => d,
            };
            let mut batch = vec![delivered(first)?];
            // Whatever else has already arrived joins the batch, so the fires share commits.
            let mut failed = None;
            while batch.len() < max {
                match consumer.next().now_or_never() {
                    Some(d) => match delivered(d) {
                        Ok(d) => batch.push(d),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    },
                    None => break,
                }
            }
            // Deliveries taken after the hook changed or was disabled are not fired: closing
            // the connection gives them back to the queue for the next subscription.
            if cx.stop.is_cancelled() {
                return Ok(());
            }
            self.fire(cx, batch).await?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
    }

    /// Fires the deliveries; acknowledges those committed, gives the others back.
    async fn fire(&self, cx: &Cx, batch: Vec<Delivery>) -> Result<(), String> {
        let messages = batch.iter().map(|d| message(&self.spec.queue, d)).collect();
        let fired = cx.fire_all(messages).await;
        for (d, ok) in batch.iter().zip(fired) {
            if ok {
                d.acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| error("acknowledging", e))?;
            } else {
                d.acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| error("giving a message back", e))?;
            }
        }
        Ok(())
    }

    /// The messages ready in the queue, not yet delivered to any consumer.
    async fn read_lag(&self, info: &Channel, cx: &Cx) -> Result<(), String> {
        let q = info
            .queue_declare(
                self.spec.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("reading queue {:?}: {e}", self.spec.queue))?;
        cx.status
            .update(|st| st.lag = Some(u64::from(q.message_count())));
        Ok(())
    }
}

/// A consumer's next item as a delivery, or why the subscription ends.
fn delivered(item: Option<lapin::Result<Delivery>>) -> Result<Delivery, String> {
    match item {
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(error("consuming", e)),
        None => Err("the broker cancelled the consumer (was the queue deleted?)".into()),
    }
}

/// `taskhook-<instance>`, as AMQP short strings allow it (at most 255 bytes).
fn connection_name(instance: &str) -> String {
    let mut name = format!("taskhook-{instance}");
    while name.len() > 255 {
        name.pop();
    }
    name
}

/// A delivery as a message: properties and headers are `event.headers` (a property wins over
/// a header of the same name), with `exchange`; the routing key is `event.source`.
fn message(queue: &str, d: &Delivery) -> Message {
    let p = &d.properties;
    let mut headers: BTreeMap<String, String> = p
        .headers()
        .as_ref()
        .map(|t| {
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), text(v)))
                .collect()
        })
        .unwrap_or_default();
    let strings = [
        ("content_type", p.content_type()),
        ("content_encoding", p.content_encoding()),
        ("correlation_id", p.correlation_id()),
        ("reply_to", p.reply_to()),
        ("expiration", p.expiration()),
        ("message_id", p.message_id()),
        ("type", p.kind()),
        ("user_id", p.user_id()),
        ("app_id", p.app_id()),
        ("cluster_id", p.cluster_id()),
    ];
    for (name, value) in strings {
        if let Some(v) = value {
            headers.insert(name.into(), v.to_string());
        }
    }
    if let Some(v) = p.delivery_mode() {
        headers.insert("delivery_mode".into(), v.to_string());
    }
    if let Some(v) = p.priority() {
        headers.insert("priority".into(), v.to_string());
    }
    if let Some(v) = p.timestamp() {
        headers.insert("timestamp".into(), v.to_string());
    }
    headers.insert("exchange".into(), d.exchange.to_string());
    let routing_key = d.routing_key.to_string();
    let id = match p.message_id().as_ref().map(|m| m.as_str()) {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => format!("sha256:{}", content_hash(&routing_key, &headers, &d.data)),
    };
    Message {
        delivery_id: format!("amqp:{queue}:{id}"),
        source: routing_key,
        headers,
        body: d.data.clone(),
        first_delivery: false,
    }
}

/// What identifies a message without a `message_id`: its routing key, its headers (with its
/// properties and exchange) but the unstable ones, and its body; 128 bits in hex.
fn content_hash(routing_key: &str, headers: &BTreeMap<String, String>, body: &[u8]) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    field(routing_key.as_bytes());
    for (k, v) in headers {
        if UNSTABLE_HEADERS.iter().any(|u| k.starts_with(u)) {
            continue;
        }
        field(k.as_bytes());
        field(v.as_bytes());
    }
    field(body);
    hex::encode(&h.finalize()[..16])
}

/// A header value as text: strings as they are, other values as JSON.
fn text(v: &AMQPValue) -> String {
    match json(v) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => (*i).into(),
        AMQPValue::ShortShortUInt(i) => (*i).into(),
        AMQPValue::ShortInt(i) => (*i).into(),
        AMQPValue::ShortUInt(i) => (*i).into(),
        AMQPValue::LongInt(i) => (*i).into(),
        AMQPValue::LongUInt(i) => (*i).into(),
        AMQPValue::LongLongInt(i) => (*i).into(),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::Float(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        AMQPValue::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            let value = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ByteArray(b) => Value::String(hex::encode(b.as_slice())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), json(v)))
                .collect(),
        ),
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use lapin::types::ShortString;

    fn delivery(props: BasicProperties, tag: u64, redelivered: bool) -> Delivery {
        let mut d = Delivery::mock(
            tag,
            ShortString::from("builds"),
            ShortString::from("build.eu.done"),
            redelivered,
            b"{\"a\":1}".to_vec(),
        );
        d.properties = props;
        d
    }

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn the_message_id_is_the_delivery_id() {
        let props = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_content_type("application/json".into())
            .with_headers(table(&[
                ("kind", AMQPValue::LongString("build".into())),
                ("n", AMQPValue::LongInt(3)),
            ]));
        let m = message("q", &delivery(props, 1, false));
        assert_eq!(m.delivery_id, "amqp:q:m-1");
        assert_eq!(m.source, "build.eu.done");
        assert_eq!(m.headers["kind"], "build");
        assert_eq!(m.headers["n"], "3");
        assert_eq!(m.headers["content_type"], "application/json");
        assert_eq!(m.headers["message_id"], "m-1");
        assert_eq!(m.headers["exchange"], "builds");
        assert_eq!(m.body, b"{\"a\":1}");
    }

    #[test]
    fn without_a_message_id_a_redelivery_has_the_same_id() {
        let props = |extra: &[(&str, AMQPValue)]| {
            let mut pairs = vec![("kind", AMQPValue::LongString("build".into()))];
            pairs.extend_from_slice(extra);
            BasicProperties::default()
                .with_timestamp(1_700_000_000)
                .with_headers(table(&pairs))
        };
        let first = message("q", &delivery(props(&[]), 1, false));
        assert!(
            first.delivery_id.starts_with("amqp:q:sha256:"),
            "{}",
            first.delivery_id
        );
        // Another delivery tag, the redelivered flag and the count a quorum queue adds: the
        // same message.
        let again = message(
            "q",
            &delivery(
                props(&[("x-delivery-count", AMQPValue::LongLongInt(1))]),
                7,
                true,
            ),
        );
        assert_eq!(first.delivery_id, again.delivery_id);
        // Another timestamp or header: another message.
        let other = message(
            "q",
            &delivery(props(&[("attempt", AMQPValue::LongInt(2))]), 1, false),
        );
        assert_ne!(first.delivery_id, other.delivery_id);
        let later = BasicProperties::default()
            .with_timestamp(1_700_000_001)
            .with_headers(table(&[("kind", AMQPValue::LongString("build".into()))]));
        assert_ne!(
            first.delivery_id,
            message("q", &delivery(later, 1, false)).delivery_id
        );
    }

    #[test]
    fn nested_header_values_read_as_json() {
        let v = AMQPValue::FieldTable(table(&[
            ("ok", AMQPValue::Boolean(true)),
            (
                "list",
                AMQPValue::FieldArray(vec![AMQPValue::ShortInt(1), AMQPValue::Void].into()),
            ),
        ]));
        assert_eq!(text(&v), r#"{"list":[1,null],"ok":true}"#);
        assert_eq!(text(&AMQPValue::LongString("plain".into())), "plain");
    }
}
