//! Redis Streams: a consumer group read with `XREADGROUP`, entries acknowledged with `XACK`
//! once their fires are committed.
//!
//! Each instance reads as its own consumer (named after the instance), so several instances
//! share the stream's entries. An entry delivered and not acknowledged (its fire could not be
//! stored, or the instance died) stays pending: the same consumer reads its own pending entries
//! again first (at start and after a failed batch), and entries pending on another consumer
//! for more than [`CLAIM_IDLE`] are claimed (`XAUTOCLAIM`) and fired here. A redelivered entry
//! has the same delivery id, so it never makes a second task.
//!
//! The payload is the entry's `payload` field (JSON when it parses) and the other fields are
//! headers; an entry without a `payload` field is fired with all its fields as the payload.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamInfoConsumersReply,
    StreamInfoGroupsReply, StreamReadOptions, StreamReadReply,
};
use serde_json::{Map, Value};
use taskhook_hooks::Message;
use taskhook_hooks::source::{RedisSource, StartFrom};

use crate::{Cx, Source};

/// Entries pending this long on another consumer are taken over.
const CLAIM_IDLE: Duration = Duration::from_secs(30);
/// How often pending entries of other consumers, the lag and idle consumers are looked at.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);
/// A consumer with nothing pending, idle this long, is removed from the group.
const FORGET_CONSUMER_AFTER: Duration = Duration::from_secs(3600);
/// How long one `XREADGROUP` blocks waiting for entries.
const BLOCK: Duration = Duration::from_millis(1000);

pub(crate) struct Redis {
    spec: RedisSource,
}

impl Redis {
    pub(crate) fn new(spec: RedisSource) -> Self {
        Redis { spec }
    }
}

fn error(what: &str, e: redis::RedisError) -> String {
    format!("{what}: {e}")
}

#[async_trait::async_trait]
impl Source for Redis {
    async fn run(&self, cx: &Cx) -> Result<(), String> {
        let s = &self.spec;
        let client = redis::Client::open(s.url.as_str()).map_err(|e| error("redis URL", e))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(BLOCK + Duration::from_secs(30)));
        let mut con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| error("connecting", e))?;
        // Named, so an operator can tell taskhook's connections apart (CLIENT LIST).
        let name: String = format!("taskhook-{}", cx.instance)
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        let _: () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&name)
            .query_async(&mut con)
            .await
            .map_err(|e| error("naming the connection", e))?;
        let start = match s.from {
            StartFrom::New => "$",
            StartFrom::All => "0",
        };
        let created: Result<(), _> = con.xgroup_create_mkstream(&s.stream, &s.group, start).await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(error("creating the consumer group", e));
        }
        cx.status.connected();
        let consumer = cx.instance.as_str();
        let count = s.max_in_flight as usize;
        // This consumer's own pending entries first: read from `pending` until none is left.
        let mut pending: Option<String> = Some("0".into());
        let mut housekeeping = tokio::time::Instant::now()
            .checked_sub(HOUSEKEEPING_EVERY)
            .unwrap_or_else(tokio::time::Instant::now);
        loop {
            if cx.stop.is_cancelled() {
                return Ok(());
            }
            if housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                housekeeping = tokio::time::Instant::now();
                let claimed = self.housekeeping(&mut con, cx).await?;
                if !claimed.is_empty() && !self.fire(&mut con, cx, claimed).await? {
                    pending = Some("0".into());
                }
            }
            let id = pending.as_deref().unwrap_or(">");
            let mut opts = StreamReadOptions::default()
                .group(&s.group, consumer)
                .count(count);
            if pending.is_none() {
                opts = opts.block(BLOCK.as_millis() as usize);
            }
            // Not raced against `stop`: a read blocks at most BLOCK. Entries read after the
            // hook changed or was disabled are not fired: they stay pending on this consumer,
            // which reads its pending entries first when it starts again.
            let reply: Option<StreamReadReply> = con
                .xread_options(&[&s.stream], &[id], &opts)
                .await
                .map_err(|e| error("reading the stream", e))?;
            if cx.stop.is_cancelled() {
                return Ok(());
            }
            let entries: Vec<StreamId> = reply
                .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                .unwrap_or_default();
            if let Some(from) = &mut pending {
                match entries.last() {
                    Some(last) => *from = last.id.clone(),
                    None => {
                        pending = None;
                        continue;
                    }
                }
            }
            if entries.is_empty() {
                continue;
            }
            if !self.fire(&mut con, cx, entries).await? {
                // What was not stored is pending on this consumer: read it again first.
                pending = Some("0".into());
            }
        }
    }
}

impl Redis {
    /// Fires the entries and acknowledges those committed; false when some were not.
    async fn fire(
        &self,
        con: &mut redis::aio::MultiplexedConnection,
        cx: &Cx,
        entries: Vec<StreamId>,
    ) -> Result<bool, String> {
        let s = &self.spec;
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let messages = entries.into_iter().map(|e| message(&s.stream, e)).collect();
        let fired = cx.fire_all(messages).await;
        let done: Vec<&String> = ids
            .iter()
            .zip(&fired)
            .filter(|(_, ok)| **ok)
            .map(|(id, _)| id)
            .collect();
        if !done.is_empty() {
            let _: usize = con
                .xack(&s.stream, &s.group, &done)
                .await
                .map_err(|e| error("acknowledging", e))?;
        }
        Ok(done.len() == ids.len())
    }

    /// Claims entries left pending by other consumers, reads the group's lag, and forgets
    /// consumers long idle with nothing pending. Returns the claimed entries.
    async fn housekeeping(
        &self,
        con: &mut redis::aio::MultiplexedConnection,
        cx: &Cx,
    ) -> Result<Vec<StreamId>, String> {
        let s = &self.spec;
        let groups: StreamInfoGroupsReply = con
            .xinfo_groups(&s.stream)
            .await
            .map_err(|e| error("reading the group's state", e))?;
        let Some(group) = groups.groups.into_iter().find(|g| g.name == s.group) else {
            return Err(format!(
                "the consumer group {:?} of stream {:?} is gone",
                s.group, s.stream
            ));
        };
        cx.status.update(|st| st.lag = group.lag.map(|l| l as u64));
        let consumers: StreamInfoConsumersReply = con
            .xinfo_consumers(&s.stream, &s.group)
            .await
            .map_err(|e| error("reading the group's consumers", e))?;
        for c in consumers.consumers {
            if c.name != cx.instance
                && c.pending == 0
                && c.idle as u128 >= FORGET_CONSUMER_AFTER.as_millis()
            {
                let _: Result<usize, _> =
                    con.xgroup_delconsumer(&s.stream, &s.group, &c.name).await;
            }
        }
        if group.pending == 0 {
            return Ok(Vec::new());
        }
        let opts = StreamAutoClaimOptions::default().count(s.max_in_flight as usize);
        let claimed: StreamAutoClaimReply = con
            .xautoclaim_options(
                &s.stream,
                &s.group,
                &cx.instance,
                CLAIM_IDLE.as_millis() as u64,
                "0-0",
                opts,
            )
            .await
            .map_err(|e| error("claiming entries of other consumers", e))?;
        Ok(claimed.claimed)
    }
}

/// A stream entry as a message: its `payload` field is the body, the other fields headers;
/// without a `payload` field, all fields make a JSON object body.
fn message(stream: &str, entry: StreamId) -> Message {
    let mut fields: BTreeMap<String, String> = entry
        .map
        .iter()
        .map(|(k, v)| (k.clone(), text(v)))
        .collect();
    let body = match fields.remove("payload") {
        Some(p) => p.into_bytes(),
        None => {
            let object: Map<String, Value> = std::mem::take(&mut fields)
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            serde_json::to_vec(&object).unwrap_or_default()
        }
    };
    Message {
        delivery_id: format!("redis:{stream}:{}", entry.id),
        source: stream.to_string(),
        headers: fields,
        body,
        first_delivery: false,
    }
}

fn text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        redis::Value::BulkString(v.as_bytes().to_vec()),
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_payload_field_is_the_body_and_the_rest_headers() {
        let m = message(
            "jobs",
            entry(&[("payload", "{\"a\":1}"), ("kind", "build")]),
        );
        assert_eq!(m.delivery_id, "redis:jobs:1-0");
        assert_eq!(m.body, b"{\"a\":1}");
        assert_eq!(m.headers["kind"], "build");
        let m = message("jobs", entry(&[("kind", "build")]));
        assert_eq!(m.body, b"{\"kind\":\"build\"}");
        assert!(m.headers.is_empty());
    }
}
