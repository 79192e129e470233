//! `publish`: sends one message to a message broker and ends DONE only once the broker
//! confirmed it (stored it, or acknowledged it). The broker is named by the one key of the
//! configuration that is a broker kind, as in a hook's `sources`:
//!
//! ```yaml
//! action:
//!   type: publish
//!   configuration:
//!     redis: {url: "redis://127.0.0.1:6379", stream: results}
//!     body: {task: "{{ task.id }}", ok: true}     # a string is sent as is, anything else as JSON
//!     headers: {kind: build}
//! ```
//!
//! Brokers: `amqp` (RabbitMQ), `kafka`, `mqtt`, `nats` (JetStream, or a plain subject),
//! `redis` (a stream). One file per broker under `publish/`, each saying what confirms a
//! message there. A broker that cannot be reached, or times out, is a
//! server error (the step is retried); a broker refusing the message is a client error.
//! The broker's address is checked against the same network policy as `http` steps.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::config::{Check, Stage, opt};
use crate::{Action, ActionContext, ActionError, ActionOutput, ConfigError, NetworkPolicy};

mod amqp;
mod kafka;
mod mqtt;
mod nats;
mod redis;

/// How long connecting and publishing may take together, unless `timeout` says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The broker kinds, as configuration keys.
const KINDS: &[&str] = &["amqp", "kafka", "mqtt", "nats", "redis"];
const COMMON: &[&str] = &["body", "headers", "timeout"];

/// The `publish` action.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    policy: NetworkPolicy,
}

impl Publish {
    /// A publish action whose brokers must be allowed by `policy`.
    pub fn with_policy(policy: NetworkPolicy) -> Self {
        Publish { policy }
    }
}

/// One message to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    /// The body was written as JSON (anything but a string).
    pub json: bool,
}

impl Outgoing {
    /// A body as configured: a string as its bytes, any other value as JSON.
    pub fn new(body: &Value, headers: BTreeMap<String, String>) -> Outgoing {
        let json = !matches!(body, Value::String(_) | Value::Null);
        let body = match body {
            Value::String(s) => s.clone().into_bytes(),
            Value::Null => Vec::new(),
            other => other.to_string().into_bytes(),
        };
        Outgoing {
            body,
            headers,
            json,
        }
    }
}

fn check(config: &Value, stage: Stage) -> Result<(), ConfigError> {
    let c = Check::new(stage);
    let Some(map) = c.object("", config)? else {
        return Ok(());
    };
    let allowed: Vec<&str> = KINDS.iter().chain(COMMON).copied().collect();
    c.keys("", map, &allowed, &[])?;
    let kinds: Vec<&str> = KINDS
        .iter()
        .copied()
        .filter(|k| map.contains_key(*k))
        .collect();
    let kind = match kinds[..] {
        [k] => k,
        [] => {
            return Err(ConfigError::new(
                "",
                format!("name the broker: one of {}", KINDS.join(", ")),
            ));
        }
        _ => {
            return Err(ConfigError::new(
                kinds[1],
                format!("one broker per step; {} is already given", kinds[0]),
            ));
        }
    };
    if let Some(v) = opt(map, "headers") {
        c.string_map("headers", v)?;
    }
    if let Some(v) = opt(map, "timeout") {
        c.positive_duration("timeout", v)?;
    }
    let Some(target) = c.object(kind, &map[kind])? else {
        return Ok(());
    };
    match kind {
        "amqp" => amqp::check(&c, target),
        "kafka" => kafka::check(&c, target),
        "mqtt" => mqtt::check(&c, target),
        "nats" => nats::check(&c, target),
        _ => redis::check(&c, target),
    }
}

fn parse_error(e: ConfigError) -> ActionError {
    ActionError::client(format!("invalid configuration: {e}"))
}

#[async_trait]
impl Action for Publish {
    fn name(&self) -> &'static str {
        "publish"
    }

    fn validate(&self, config: &Value) -> Result<(), ConfigError> {
        check(config, Stage::Load)
    }

    async fn run(&self, config: Value, ctx: ActionContext) -> Result<ActionOutput, ActionError> {
        check(&config, Stage::Run).map_err(parse_error)?;
        let map = config.as_object().cloned().unwrap_or_default();
        let headers: BTreeMap<String, String> = opt(&map, "headers")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let message = Outgoing::new(opt(&map, "body").unwrap_or(&Value::Null), headers);
        let timeout = match opt(&map, "timeout") {
            Some(v) => crate::parse_duration(v).map_err(ActionError::client)?,
            None => DEFAULT_TIMEOUT,
        };
        let send = async {
            let Some((kind, target)) = KINDS
                .iter()
                .find_map(|k| Some((*k, map.get(*k)?.as_object()?)))
            else {
                return Err(ActionError::client("no broker named"));
            };
            let policy = &self.policy;
            match kind {
                "amqp" => amqp::publish(policy, target, &message).await,
                "kafka" => kafka::publish(policy, target, &message, timeout).await,
                "mqtt" => mqtt::publish(policy, target, &message).await,
                "nats" => nats::publish(policy, target, &message).await,
                _ => redis::publish(policy, target, &message).await,
            }
        };
        tokio::select! {
            r = tokio::time::timeout(timeout, send) => match r {
                Ok(out) => out.map(|output| ActionOutput { output, metadata: Value::Null }),
                Err(_) => Err(ActionError::server(format!(
                    "the broker did not confirm the message within {timeout:?}"
                ))),
            },
            _ = ctx.cancel.cancelled() => Err(ActionError::server("cancelled before the broker confirmed the message")),
        }
    }
}

/// Checks a broker's address against the network policy: a name that does not resolve is a
/// server error (retried), one in a denied network a client error.
pub(crate) async fn check_address(
    policy: &NetworkPolicy,
    host: &str,
    port: u16,
) -> Result<(), ActionError> {
    policy.check_host(host, port).await.map_err(|e| match e {
        crate::AddressError::Unresolved(m) => ActionError::server(m),
        crate::AddressError::Denied(m) => ActionError::client(m),
    })
}

/// A string field of a broker's configuration (checked already), `""` when absent.
pub(crate) fn field<'a>(target: &'a Map<String, Value>, key: &str) -> &'a str {
    target.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// A boolean field (checked already: a boolean, or `"true"`/`"false"` from a template).
pub(crate) fn flag(target: &Map<String, Value>, key: &str, default: bool) -> bool {
    match target.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.trim() == "true",
        _ => default,
    }
}

/// A count field (checked already: a number, or one rendered as a string).
pub(crate) fn uint_field(target: &Map<String, Value>, key: &str) -> Option<u64> {
    match target.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A URL with one of `schemes`, when it is known (not a template).
pub(crate) fn check_url(
    c: &Check,
    field: &str,
    v: &Value,
    schemes: &[&str],
) -> Result<(), ConfigError> {
    let Some(text) = c.string(field, v)? else {
        return Ok(());
    };
    let url =
        url::Url::parse(text).map_err(|e| ConfigError::new(field, format!("not a URL: {e}")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(ConfigError::new(
            field,
            format!(
                "scheme {:?} is not one of {}",
                url.scheme(),
                schemes.join(", ")
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(field, "the URL names no host"));
    }
    Ok(())
}

/// A non-empty name (a stream, subject, topic), when it is known.
pub(crate) fn check_name<'a>(
    c: &Check,
    field: &str,
    v: &'a Value,
) -> Result<Option<&'a str>, ConfigError> {
    let name = c.string(field, v)?;
    if name.is_some_and(|s| s.trim().is_empty()) {
        return Err(ConfigError::new(field, "must not be empty"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configurations_name_their_faulty_field() {
        let ok = json!({"redis": {"url": "redis://h", "stream": "s"}, "body": {"a": 1}});
        assert!(check(&ok, Stage::Load).is_ok());
        let cases = [
            (json!({"body": "x"}), ""),
            (
                json!({"redis": {"url": "redis://h", "stream": "s"}, "bogus": 1}),
                "bogus",
            ),
            (json!({"redis": {"url": "redis://h"}}), "redis.stream"),
            (
                json!({"redis": {"url": "amqp://h", "stream": "s"}}),
                "redis.url",
            ),
            (
                json!({"redis": {"url": "redis://h", "stream": "s"}, "headers": {"a": 1}}),
                "headers.a",
            ),
            (
                json!({"redis": {"url": "redis://h", "stream": "s"}, "timeout": "0s"}),
                "timeout",
            ),
        ];
        for (config, field) in cases {
            let e = check(&config, Stage::Load).unwrap_err();
            assert_eq!(e.field, field, "{config}: {e}");
        }
        // Templated values are checked when they are known.
        let templated =
            json!({"redis": {"url": "{{ secret.redis_url }}", "stream": "{{ input.s }}"}});
        assert!(check(&templated, Stage::Load).is_ok());
    }

    #[test]
    fn bodies_are_sent_as_written() {
        assert_eq!(Outgoing::new(&json!("text"), BTreeMap::new()).body, b"text");
        assert_eq!(
            Outgoing::new(&json!({"a": 1}), BTreeMap::new()).body,
            b"{\"a\":1}"
        );
    }
}
