//! `publish` to NATS: into a JetStream stream, DONE once the stream acknowledged the message
//! (its stream sequence is the step's output); or, with `jetstream: false`, to a plain
//! subject, DONE once the server answered a flush (it has the message; no one may be
//! listening).
//!
//! ```yaml
//! nats: {url: "nats://127.0.0.1:4222", subject: orders.created}
//! ```
//!
//! A subject no stream captures is a client error (JetStream has nowhere to store it). Headers
//! become NATS headers; `Nats-Msg-Id: "{{ task.id }}"` lets JetStream drop a retried step's
//! second copy within the stream's duplicate window.

use std::str::FromStr;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{ConnectOptions, HeaderMap, HeaderName};
use serde_json::{Map, Value, json};
use taskhook_brokers::nats::split_url;

use super::{Outgoing, check_address, check_name, check_url, field, flag};
use crate::config::{Check, opt};
use crate::{ActionError, ConfigError, NetworkPolicy};

const FIELDS: &[&str] = &["url", "subject", "jetstream"];
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn check(c: &Check, target: &Map<String, Value>) -> Result<(), ConfigError> {
    c.keys("nats", target, FIELDS, &["url", "subject"])?;
    check_url(c, "nats.url", &target["url"], &["nats", "tls"])?;
    check_name(c, "nats.subject", &target["subject"])?;
    if let Some(v) = opt(target, "jetstream") {
        c.boolean("nats.jetstream", v)?;
    }
    Ok(())
}

pub(super) async fn publish(
    policy: &NetworkPolicy,
    target: &Map<String, Value>,
    message: &Outgoing,
) -> Result<Value, ActionError> {
    let (server, auth) = split_url(field(target, "url"))
        .map_err(|e| ActionError::client(format!("nats.url: {e}")))?;
    let url =
        url::Url::parse(&server).map_err(|e| ActionError::client(format!("nats.url: {e}")))?;
    check_address(
        policy,
        url.host_str().unwrap_or_default(),
        url.port().unwrap_or(4222),
    )
    .await?;
    let subject = field(target, "subject").to_string();
    let mut headers = HeaderMap::new();
    for (k, v) in &message.headers {
        let name = HeaderName::from_str(k).map_err(|e| {
            ActionError::client(format!("headers.{k}: not a NATS header name: {e}"))
        })?;
        headers.insert(name, v.as_str());
    }
    let client = auth
        .apply(ConnectOptions::new().name("taskhook publish"))
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(1)
        .connect(server.as_str())
        .await
        .map_err(|e| ActionError::server(format!("connecting: {e}")))?;
    let body = message.body.clone().into();
    if !flag(target, "jetstream", true) {
        client
            .publish_with_headers(subject.clone(), headers, body)
            .await
            .map_err(|e| ActionError::server(format!("publishing: {e}")))?;
        client
            .flush()
            .await
            .map_err(|e| ActionError::server(format!("flushing: {e}")))?;
        return Ok(json!({"subject": subject}));
    }
    let js = jetstream::new(client);
    let ack = js
        .publish_with_headers(subject.clone(), headers, body)
        .await
        .map_err(|e| ActionError::server(format!("publishing: {e}")))?
        .await
        .map_err(|e| {
            let message = format!("publishing to {subject:?}: {e}");
            match e.kind() {
                PublishErrorKind::StreamNotFound => ActionError::client(format!(
                    "{message} (no JetStream stream captures the subject; create one, or set jetstream: false)"
                )),
                PublishErrorKind::MaxPayloadExceeded
                | PublishErrorKind::WrongLastMessageId
                | PublishErrorKind::WrongLastSequence => ActionError::client(message),
                _ => ActionError::server(message),
            }
        })?;
    Ok(json!({
        "subject": subject,
        "stream": ack.stream,
        "sequence": ack.sequence,
        "duplicate": ack.duplicate,
    }))
}
