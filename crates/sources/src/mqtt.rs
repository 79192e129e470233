//! MQTT 3.1.1: one topic filter subscribed on a persistent session, each QoS 1 message
//! acknowledged (PUBACK, manual acks) only after its fire is committed.
//!
//! With QoS 1 the session is kept (clean session off, a client id stable across restarts), so
//! the broker queues what is published while taskhook is away and sends again, with their
//! original packet ids, the messages it delivered and never saw acknowledged. MQTT redelivers
//! only on a new connection: when fires could not be stored, the source acknowledges what was
//! stored, disconnects, and the supervisor reconnects, which brings the rest back.
//!
//! Delivery ids (MQTT messages carry no id of their own): a QoS 1 message is
//! `mqtt:<topic>:<hash>` of the session's client id, the topic, the packet id and the body,
//! which a redelivery repeats exactly; a retained message (sent again on every subscription)
//! hashes the topic and body only, so the same retained value fires once per dedupe window;
//! a QoS 0 message is never redelivered and gets a fresh id. Packet ids are reused once
//! acknowledged, so two messages may share an id: only a redelivery (the broker sets DUP on
//! every one) is checked against earlier fires; a message without DUP always fires.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeReasonCode,
};
use sha2::{Digest, Sha256};
use taskhook_hooks::Message;
use taskhook_hooks::source::MqttSource;

use tokio::sync::mpsc;

use crate::{Cx, Source};

const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// The largest packet MQTT can carry: every message is read, so that one over
/// `max_message_bytes` becomes an `error` fire instead of breaking the connection forever.
const MAX_PACKET: usize = 268_435_455;
/// How long a closing connection may take to send its last acknowledgements.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub(crate) struct Mqtt {
    spec: MqttSource,
}

impl Mqtt {
    pub(crate) fn new(spec: MqttSource) -> Self {
        Mqtt { spec }
    }
}

/// The client id: the one given, or `taskhook-<group>-<id>-<hash of topic and group>`, the same
/// across restarts so the session outlives them; with a shared group each instance has its own
/// session, so the instance name is appended.
pub(crate) fn client_id(spec: &MqttSource, group: &str, id: &str, instance: &str) -> String {
    let base = spec.client_id.clone().unwrap_or_else(|| {
        let h = digest(&[
            spec.topic.as_bytes(),
            spec.shared_group.as_deref().unwrap_or("").as_bytes(),
        ]);
        format!("taskhook-{group}-{id}-{}", &h[..8])
    });
    match &spec.shared_group {
        Some(_) => format!("{base}-{instance}"),
        None => base,
    }
}

/// Hex SHA-256 of the parts, each length-prefixed.
fn digest(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// A received PUBLISH as a message (see the module's note on delivery ids).
fn message(p: &Publish, client_id: &str) -> Message {
    let id = if p.retain {
        digest(&[b"retained", p.topic.as_bytes(), &p.payload])[..16].to_string()
    } else if p.qos == QoS::AtMostOnce {
        uuid::Uuid::now_v7().simple().to_string()
    } else {
        digest(&[
            client_id.as_bytes(),
            p.topic.as_bytes(),
            &p.pkid.to_be_bytes(),
            &p.payload,
        ])[..16]
            .to_string()
    };
    let qos = match p.qos {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    };
    Message {
        delivery_id: format!("mqtt:{}:{id}", p.topic),
        source: p.topic.clone(),
        headers: BTreeMap::from([
            ("mqtt_qos".to_string(), qos.to_string()),
            ("mqtt_retain".to_string(), p.retain.to_string()),
        ]),
        body: p.payload.to_vec(),
        // The broker sets DUP on every redelivery, so a QoS 1 or 2 message without it is new,
        // even when it shares its packet id, topic and body (and so its id) with an earlier
        // one: packet ids are reused once acknowledged. A retained value keeps its dedupe.
        first_delivery: p.qos != QoS::AtMostOnce && !p.dup && !p.retain,
    }
}

impl Mqtt {
    /// Connection options, and where it connects (for messages: no password in it).
    fn options(&self, client_id: String) -> Result<(MqttOptions, String), String> {
        let s = &self.spec;
        let (mut o, at) = taskhook_brokers::mqtt::options(&s.url, client_id)?;
        o.set_keep_alive(KEEP_ALIVE)
            // QoS 0 has nothing to redeliver: no session to keep.
            .set_clean_session(s.qos == 0)
            .set_manual_acks(true)
            .set_max_packet_size(MAX_PACKET, 64 * 1024);
        Ok((o, at))
    }
}

/// What the connection's task hands the subscription.
enum Item {
    Publish(Publish),
    Subscribed,
}

/// Polls the event loop on a task of its own: `poll` is not cancel-safe for what it sends (an
/// acknowledgement taken from the client's queue could be lost), so it is never raced. It
/// never waits for the subscription either (its channel is unbounded): acknowledgements are
/// sent only while it polls, so a task blocked on a full channel would hold them back while
/// the subscription waits for room to acknowledge. What arrives unacknowledged is bounded by
/// the broker (mosquitto's `max_inflight_messages`, its queue). It stops at the first error,
/// or once the DISCONNECT is sent.
fn drive(mut events: EventLoop, filter: String, tx: mpsc::UnboundedSender<Result<Item, String>>) {
    tokio::spawn(async move {
        loop {
            let item = match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => Ok(Item::Publish(p)),
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                        Err(format!("the broker refused the subscription to {filter:?}"))
                    } else {
                        Ok(Item::Subscribed)
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => continue,
                Err(e) => Err(e.to_string()),
            };
            let last = item.is_err();
            if tx.send(item).is_err() || last {
                return;
            }
        }
    });
}

/// Sends what the client queued (acknowledgements) and a DISCONNECT, waiting at most
/// [`CLOSE_WAIT`]; the broker keeps the session. Messages still arriving are not
/// acknowledged: the session delivers them again.
async fn close(client: &AsyncClient, rx: &mut mpsc::UnboundedReceiver<Result<Item, String>>) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if client.disconnect().await.is_ok() {
            while rx.recv().await.is_some() {}
        }
    })
    .await;
}

type Firing<'a> = BoxFuture<'a, (Vec<Publish>, Vec<bool>)>;

async fn next(firing: &mut Option<Firing<'_>>) -> (Vec<Publish>, Vec<bool>) {
    match firing {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

#[async_trait::async_trait]
impl Source for Mqtt {
    async fn run(&self, cx: &Cx) -> Result<(), String> {
        let s = &self.spec;
        let client_id = client_id(s, &cx.row.group, &cx.row.id, &cx.instance);
        let (options, at) = self.options(client_id.clone())?;
        let max = s.max_in_flight as usize;
        // Room for every acknowledgement the subscription can owe at once.
        let (client, mut events) = AsyncClient::new(options, 2 * max + 16);
        let filter = match &s.shared_group {
            Some(g) => format!("$share/{g}/{}", s.topic),
            None => s.topic.clone(),
        };
        let qos = if s.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        // The first poll connects.
        let connected = tokio::select! {
            e = events.poll() => e,
            _ = cx.stop.cancelled() => return Ok(()),
        };
        match connected {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {}
            Ok(other) => return Err(format!("connecting to {at}: unexpected {other:?}")),
            Err(e) => return Err(format!("connecting to {at}: {e}")),
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        drive(events, filter.clone(), tx);
        // Subscribed on every connection: a session the broker lost gets it back.
        client
            .subscribe(filter, qos)
            .await
            .map_err(|e| format!("subscribing: {e}"))?;

        let mut buffer: Vec<Publish> = Vec::new();
        let mut firing: Option<Firing<'_>> = None;
        let mut firing_len = 0usize;
        let mut lost: Option<String> = None;
        loop {
            if firing.is_none() {
                if let Some(e) = lost {
                    return Err(e);
                }
                if cx.stop.is_cancelled() {
                    // What is buffered is not acknowledged: the session delivers it again.
                    close(&client, &mut rx).await;
                    return Ok(());
                }
                if !buffer.is_empty() {
                    let batch = std::mem::take(&mut buffer);
                    firing_len = batch.len();
                    let id = client_id.clone();
                    firing = Some(Box::pin(async move {
                        let messages = batch.iter().map(|p| message(p, &id)).collect();
                        let fired = cx.fire_all(messages).await;
                        (batch, fired)
                    }));
                }
            }
            let room = lost.is_none() && buffer.len() + firing_len < max;
            tokio::select! {
                (batch, fired) = next(&mut firing) => {
                    firing = None;
                    firing_len = 0;
                    for (p, ok) in batch.iter().zip(&fired) {
                        if *ok && p.qos != QoS::AtMostOnce {
                            client.ack(p).await.map_err(|e| format!("acknowledging: {e}"))?;
                        }
                    }
                    if fired.iter().any(|ok| !ok) {
                        // MQTT sends unacknowledged messages again only on a new connection.
                        close(&client, &mut rx).await;
                        return Err("fires could not be stored; reconnecting so that the broker \
                                    delivers the messages again".into());
                    }
                }
                item = rx.recv(), if room => match item {
                    Some(Ok(Item::Publish(p))) => buffer.push(p),
                    Some(Ok(Item::Subscribed)) => cx.status.connected(),
                    Some(Err(e)) => lost = Some(format!("connection to {at} lost: {e}")),
                    None => lost = Some(format!("connection to {at} closed")),
                },
                _ = cx.stop.cancelled(), if firing.is_none() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, pkid: u16, body: &str, retain: bool) -> Publish {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, body);
        p.pkid = pkid;
        p.retain = retain;
        p
    }

    #[test]
    fn redeliveries_keep_their_id_and_other_messages_do_not_share_it() {
        let a = message(&publish("t/1", 7, "{}", false), "c");
        let mut again = publish("t/1", 7, "{}", false);
        again.dup = true;
        assert_eq!(message(&again, "c").delivery_id, a.delivery_id);
        assert!(a.delivery_id.starts_with("mqtt:t/1:"));
        // Another packet id, topic, body or session is another message.
        for other in [
            message(&publish("t/1", 8, "{}", false), "c"),
            message(&publish("t/2", 7, "{}", false), "c"),
            message(&publish("t/1", 7, "{ }", false), "c"),
            message(&publish("t/1", 7, "{}", false), "d"),
        ] {
            assert_ne!(other.delivery_id, a.delivery_id);
        }
        // A retained value is the same message whatever packet id carries it.
        assert_eq!(
            message(&publish("t/1", 1, "on", true), "c").delivery_id,
            message(&publish("t/1", 9, "on", true), "d").delivery_id
        );
        // QoS 0 is never redelivered: every message is new.
        let q0 = Publish::new("t", QoS::AtMostOnce, "x");
        assert_ne!(message(&q0, "c").delivery_id, message(&q0, "c").delivery_id);
        assert_eq!(a.headers["mqtt_qos"], "1");
        // A message without DUP is a first delivery: a reused packet id with the same topic
        // and body must not make it a duplicate. A redelivery (DUP) is checked.
        assert!(a.first_delivery);
        assert!(!message(&again, "c").first_delivery);
        assert!(!message(&publish("t/1", 1, "on", true), "c").first_delivery);
        assert_eq!(a.source, "t/1");
    }

    #[test]
    fn client_ids_are_stable_and_per_instance_when_shared() {
        let mut s: MqttSource = serde_json::from_value(serde_json::json!(
            {"url": "mqtt://h", "topic": "a/#"}
        ))
        .unwrap();
        let id = client_id(&s, "g", "h", "i1");
        assert!(id.starts_with("taskhook-g-h-"), "{id}");
        assert_eq!(id, client_id(&s, "g", "h", "i2"));
        s.shared_group = Some("workers".into());
        assert!(client_id(&s, "g", "h", "i1").ends_with("-i1"));
        s.client_id = Some("mine".into());
        assert_eq!(client_id(&s, "g", "h", "i1"), "mine-i1");
    }
}
