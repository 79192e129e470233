//! `publish` to a Redis stream: `XADD`, confirmed by the entry id Redis returns.
//!
//! ```yaml
//! redis: {url: "redis://127.0.0.1:6379", stream: results, maxlen: 10000}
//! ```
//!
//! The body is the entry's `payload` field and each header another field, the shape a
//! hook's `redis` source reads. With `maxlen`, the stream is trimmed to about that many
//! entries (`MAXLEN ~`).

use serde_json::{Map, Value, json};

use super::{Outgoing, check_address, check_name, check_url, field, uint_field};
use crate::config::{Check, join, opt};
use crate::{ActionError, ConfigError, NetworkPolicy};

const FIELDS: &[&str] = &["url", "stream", "maxlen"];

pub(super) fn check(c: &Check, target: &Map<String, Value>) -> Result<(), ConfigError> {
    c.keys("redis", target, FIELDS, &["url", "stream"])?;
    check_url(c, "redis.url", &target["url"], &["redis", "rediss"])?;
    check_name(c, "redis.stream", &target["stream"])?;
    if let Some(v) = opt(target, "maxlen")
        && c.uint(&join("redis", "maxlen"), v)? == Some(0)
    {
        return Err(ConfigError::new("redis.maxlen", "must be at least 1"));
    }
    Ok(())
}

fn failed(what: &str, e: redis::RedisError) -> ActionError {
    let message = format!("{what}: {e}");
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal() {
        ActionError::server(message)
    } else {
        ActionError::client(message)
    }
}

pub(super) async fn publish(
    policy: &NetworkPolicy,
    target: &Map<String, Value>,
    message: &Outgoing,
) -> Result<Value, ActionError> {
    let url = url::Url::parse(field(target, "url"))
        .map_err(|e| ActionError::client(format!("redis.url: {e}")))?;
    let host = url.host_str().unwrap_or_default();
    check_address(policy, host, url.port().unwrap_or(6379)).await?;
    if message.headers.contains_key("payload") {
        return Err(ActionError::client(
            "headers.payload: the body is the entry's payload field; name the header otherwise",
        ));
    }
    let stream = field(target, "stream");
    let client = redis::Client::open(url.as_str()).map_err(|e| failed("redis.url", e))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| failed("connecting", e))?;
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream);
    if let Some(n) = uint_field(target, "maxlen") {
        cmd.arg("MAXLEN").arg("~").arg(n);
    }
    cmd.arg("*").arg("payload").arg(&message.body);
    for (k, v) in &message.headers {
        cmd.arg(k).arg(v);
    }
    let id: String = cmd
        .query_async(&mut con)
        .await
        .map_err(|e| failed("adding the entry", e))?;
    Ok(json!({"stream": stream, "id": id}))
}
