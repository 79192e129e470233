//! `publish` to RabbitMQ (AMQP 0-9-1): `basic.publish` on a channel in confirm mode, DONE once
//! the broker confirmed the message (`basic.ack`).
//!
//! ```yaml
//! amqp: {url: "amqp://guest:guest@127.0.0.1:5672/%2f", exchange: builds, routing_key: build.42.failed}
//! ```
//!
//! `exchange` defaults to the default exchange (`""`, where the routing key names a queue). The
//! message is published `mandatory` unless `mandatory: false`: a message no queue is bound to
//! receive is returned by the broker and the step fails with a client error, instead of being
//! confirmed and dropped. Messages are persistent (`delivery_mode` 2) unless
//! `persistent: false`. Headers become the message's header table; `message_id` sets the
//! property a hook's `amqp` source dedupes by (`"{{ task.id }}"` makes a retried step's
//! message a duplicate rather than a second event). The content type is `application/json`
//! for a body that is not a string, `text/plain` otherwise.

use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ErrorKind};
use serde_json::{Map, Value, json};

use super::{Outgoing, check_address, check_name, check_url, field, flag};
use crate::config::{Check, opt};
use crate::{ActionError, ConfigError, NetworkPolicy};

const FIELDS: &[&str] = &[
    "url",
    "exchange",
    "routing_key",
    "mandatory",
    "persistent",
    "message_id",
];

pub(super) fn check(c: &Check, target: &Map<String, Value>) -> Result<(), ConfigError> {
    c.keys("amqp", target, FIELDS, &["url", "routing_key"])?;
    check_url(c, "amqp.url", &target["url"], &["amqp", "amqps"])?;
    if let Some(v) = opt(target, "exchange") {
        c.string("amqp.exchange", v)?;
    }
    c.string("amqp.routing_key", &target["routing_key"])?;
    for key in ["mandatory", "persistent"] {
        if let Some(v) = opt(target, key) {
            c.boolean(&format!("amqp.{key}"), v)?;
        }
    }
    if let Some(v) = opt(target, "message_id") {
        check_name(c, "amqp.message_id", v)?;
    }
    Ok(())
}

fn failed(what: &str, e: lapin::Error) -> ActionError {
    let message = format!("{what}: {e}");
    match e.kind() {
        // The broker refused this message or this channel's request (no such exchange, access
        // refused, a precondition): sending it again changes nothing.
        ErrorKind::ProtocolError(_) if e.is_amqp_soft_error() => ActionError::client(message),
        ErrorKind::AuthProviderError(_) => ActionError::client(message),
        _ => ActionError::server(message),
    }
}

pub(super) async fn publish(
    policy: &NetworkPolicy,
    target: &Map<String, Value>,
    message: &Outgoing,
) -> Result<Value, ActionError> {
    let raw = field(target, "url");
    let url = url::Url::parse(raw).map_err(|e| ActionError::client(format!("amqp.url: {e}")))?;
    let secure = url.scheme() == "amqps";
    check_address(
        policy,
        url.host_str().unwrap_or_default(),
        url.port().unwrap_or(if secure { 5671 } else { 5672 }),
    )
    .await?;
    let exchange = field(target, "exchange");
    let routing_key = field(target, "routing_key");
    let mandatory = flag(target, "mandatory", true);
    let persistent = flag(target, "persistent", true);

    let conn = Connection::connect(
        raw,
        ConnectionProperties::default().with_connection_name("taskhook publish".into()),
    )
    .await
    .map_err(|e| failed("connecting", e))?;
    let outcome = async {
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| failed("opening a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| failed("asking for publisher confirms", e))?;
        let mut headers = FieldTable::default();
        for (k, v) in &message.headers {
            headers.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
        }
        let mut props = BasicProperties::default()
            .with_headers(headers)
            .with_delivery_mode(if persistent { 2 } else { 1 })
            .with_content_type(
                if message.json {
                    "application/json"
                } else {
                    "text/plain"
                }
                .into(),
            );
        if let Some(id) = target.get("message_id").and_then(Value::as_str) {
            props = props.with_message_id(id.into());
        }
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                &message.body,
                props,
            )
            .await
            .map_err(|e| failed("publishing", e))?
            .await
            .map_err(|e| failed("waiting for the broker's confirm", e))?;
        match confirm {
            Confirmation::Ack(None) => {
                Ok(json!({"exchange": exchange, "routing_key": routing_key}))
            }
            Confirmation::Ack(Some(returned)) => Err(ActionError::client(format!(
                "no queue receives routing key {routing_key:?} from exchange {exchange:?}: the broker returned the message ({} {}); bind a queue, or set mandatory: false to let it be dropped",
                returned.reply_code, returned.reply_text
            ))),
            Confirmation::Nack(_) => Err(ActionError::server(
                "the broker did not take the message (basic.nack)",
            )),
            Confirmation::NotRequested => Err(ActionError::server(
                "the broker gave no confirm for the message",
            )),
        }
    }
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "published".into())).await;
    outcome
}
