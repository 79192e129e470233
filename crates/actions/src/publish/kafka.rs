//! `publish` to Kafka: one record, produced with `acks=all` (idempotent producer), DONE once
//! the partition leader and its in-sync replicas stored it (its partition and offset are the
//! step's output).
//!
//! ```yaml
//! kafka: {brokers: ["127.0.0.1:9092"], topic: events, key: "{{ input.order }}"}
//! ```
//!
//! `key` picks the partition (records with one key stay in order); `partition` names one.
//! Headers become record headers.
//!
//! The brokers' addresses are checked against the network policy; the cluster's other
//! brokers, which the client learns from the first one, are not.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Map, Value, json};

use super::{Outgoing, check_address, check_name, uint_field};
use crate::config::{Check, opt};
use crate::{ActionError, ConfigError, NetworkPolicy};

const FIELDS: &[&str] = &["brokers", "topic", "key", "partition"];

/// `host:port`, or why not.
fn host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: write host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{s:?}: {port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?}: no host"));
    }
    Ok((host, port))
}

pub(super) fn check(c: &Check, target: &Map<String, Value>) -> Result<(), ConfigError> {
    c.keys("kafka", target, FIELDS, &["brokers", "topic"])?;
    match &target["brokers"] {
        Value::Array(list) if list.is_empty() => {
            return Err(ConfigError::new(
                "kafka.brokers",
                "name at least one broker",
            ));
        }
        Value::Array(list) => {
            for (i, b) in list.iter().enumerate() {
                let at = format!("kafka.brokers[{i}]");
                if let Some(s) = c.string(&at, b)? {
                    host_port(s).map_err(|e| ConfigError::new(&at, e))?;
                }
            }
        }
        v if c.deferred(v) => {}
        _ => {
            return Err(ConfigError::new(
                "kafka.brokers",
                "expected a list of host:port",
            ));
        }
    }
    check_name(c, "kafka.topic", &target["topic"])?;
    if let Some(v) = opt(target, "key") {
        c.string("kafka.key", v)?;
    }
    if let Some(v) = opt(target, "partition")
        && c.uint("kafka.partition", v)?
            .is_some_and(|p| p > i32::MAX as u64)
    {
        return Err(ConfigError::new("kafka.partition", "too large"));
    }
    Ok(())
}

/// Whether sending the record again could succeed.
fn failed(topic: &str, e: KafkaError) -> ActionError {
    let message = format!("producing to {topic:?}: {e}");
    let refused = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidRecord
        )
    );
    if refused {
        ActionError::client(message)
    } else {
        ActionError::server(message)
    }
}

pub(super) async fn publish(
    policy: &NetworkPolicy,
    target: &Map<String, Value>,
    message: &Outgoing,
    timeout: Duration,
) -> Result<Value, ActionError> {
    let brokers: Vec<&str> = target
        .get("brokers")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for b in &brokers {
        let (host, port) =
            host_port(b).map_err(|e| ActionError::client(format!("kafka.brokers: {e}")))?;
        check_address(policy, host, port).await?;
    }
    let topic = super::field(target, "topic");
    // The client gives up on the record a little before the step's timeout, so a record the
    // step reported as failed is not sent afterwards.
    let give_up = timeout
        .saturating_sub(Duration::from_secs(1))
        .max(Duration::from_secs(1));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers.join(","))
        .set("client.id", "taskhook-publish")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", give_up.as_millis().to_string())
        .create()
        .map_err(|e| ActionError::client(format!("kafka: {e}")))?;
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
    for (k, v) in &message.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let mut record = FutureRecord::<str, [u8]>::to(topic)
        .payload(&message.body)
        .headers(headers);
    if let Some(key) = target.get("key").and_then(Value::as_str) {
        record = record.key(key);
    }
    if let Some(p) = uint_field(target, "partition") {
        record = record.partition(p as i32);
    }
    let delivery = producer
        .send(record, Duration::from_secs(0))
        .await
        .map_err(|(e, _)| failed(topic, e))?;
    Ok(json!({
        "topic": topic,
        "partition": delivery.partition,
        "offset": delivery.offset,
    }))
}
