//! `publish` to MQTT (3.1.1): one PUBLISH on a fresh clean session, DONE once the broker
//! acknowledged it: PUBACK for QoS 1 (the default), PUBCOMP for QoS 2; for QoS 0, once the
//! packet is written (QoS 0 has no acknowledgement).
//!
//! ```yaml
//! mqtt: {url: "mqtt://127.0.0.1:1883", topic: "alarms/line-4", qos: 1, retain: false}
//! ```
//!
//! MQTT 3.1.1 messages have no headers: a step that gives `headers` is refused.

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, Outgoing as Sent, Packet, QoS,
};
use serde_json::{Map, Value, json};

use super::{Outgoing, check_address, check_name, check_url, field, flag, uint_field};
use crate::config::{Check, opt};
use crate::{ActionError, ConfigError, NetworkPolicy};

const FIELDS: &[&str] = &["url", "topic", "qos", "retain"];
/// The largest packet MQTT can carry.
const MAX_PACKET: usize = 268_435_455;

pub(super) fn check(c: &Check, target: &Map<String, Value>) -> Result<(), ConfigError> {
    c.keys("mqtt", target, FIELDS, &["url", "topic"])?;
    check_url(
        c,
        "mqtt.url",
        &target["url"],
        &["mqtt", "mqtts", "tcp", "ssl"],
    )?;
    if let Some(topic) = check_name(c, "mqtt.topic", &target["topic"])?
        && topic.contains(['+', '#'])
    {
        return Err(ConfigError::new(
            "mqtt.topic",
            "a message is published to one topic: + and # are for subscriptions",
        ));
    }
    if let Some(v) = opt(target, "qos")
        && let Some(q) = c.uint("mqtt.qos", v)?
        && q > 2
    {
        return Err(ConfigError::new("mqtt.qos", "must be 0, 1 or 2"));
    }
    if let Some(v) = opt(target, "retain") {
        c.boolean("mqtt.retain", v)?;
    }
    Ok(())
}

fn failed(e: ConnectionError) -> ActionError {
    match e {
        ConnectionError::ConnectionRefused(
            code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
        ) => ActionError::client(format!("the broker refused the connection: {code:?}")),
        other => ActionError::server(format!("connection: {other}")),
    }
}

pub(super) async fn publish(
    policy: &NetworkPolicy,
    target: &Map<String, Value>,
    message: &Outgoing,
) -> Result<Value, ActionError> {
    if let Some(name) = message.headers.keys().next() {
        return Err(ActionError::client(format!(
            "headers.{name}: MQTT 3.1.1 messages have no headers"
        )));
    }
    let client_id = format!("taskhook-publish-{}", uuid::Uuid::new_v4().simple());
    let (mut options, at) = taskhook_brokers::mqtt::options(field(target, "url"), client_id)
        .map_err(|e| ActionError::client(format!("mqtt.url: {e}")))?;
    let (host, port) = options.broker_address();
    check_address(policy, &host, port).await?;
    options
        .set_clean_session(true)
        .set_max_packet_size(64 * 1024, MAX_PACKET);
    let topic = field(target, "topic").to_string();
    let qos = match uint_field(target, "qos").unwrap_or(1) {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let retain = flag(target, "retain", false);
    let (client, mut events) = AsyncClient::new(options, 4);
    client
        .publish(topic.as_str(), qos, retain, message.body.clone())
        .await
        .map_err(|e| ActionError::client(format!("mqtt.topic: {e}")))?;
    loop {
        let event = events.poll().await.map_err(failed)?;
        let done = matches!(
            (qos, event),
            (QoS::AtMostOnce, Event::Outgoing(Sent::Publish(_)))
                | (QoS::AtLeastOnce, Event::Incoming(Packet::PubAck(_)))
                | (QoS::ExactlyOnce, Event::Incoming(Packet::PubComp(_)))
        );
        if done {
            break;
        }
    }
    // The message is the broker's now; a clean goodbye is a courtesy.
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while !matches!(
            events.poll().await,
            Err(_) | Ok(Event::Outgoing(Sent::Disconnect))
        ) {}
    })
    .await;
    Ok(json!({"broker": at, "topic": topic, "qos": qos as u8, "retain": retain}))
}
