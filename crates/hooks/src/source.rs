//! Message-broker and repository subscriptions of a hook (`sources:`), as data: what a user
//! writes, its validation, and how passwords in broker URLs are masked for display. The
//! connections themselves live in `taskhook-sources`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hook::HookError;
use crate::signature::REDACTED_SECRET;

/// Most subscriptions one hook may have.
pub const MAX_SOURCES: usize = 16;
/// Default for `max_in_flight`: messages received and not yet acknowledged, per source.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 256;
/// Upper bound of `max_in_flight`.
pub const MAX_MAX_IN_FLIGHT: u32 = 10_000;
/// Default largest message body a source accepts; a bigger one becomes a fire `error`.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 1024 * 1024;
/// Upper bound of `max_message_bytes`.
pub const MAX_MAX_MESSAGE_BYTES: u64 = 16 * 1024 * 1024;

/// Where a subscription starts when it is created (the broker remembers the position after).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// Only messages that arrive after the subscription was created.
    #[default]
    New,
    /// Everything the broker still holds.
    All,
}

/// Settings every source has (each source struct carries them as its own fields, so that
/// unknown fields are refused; [`SourceSpec::common`] gathers them).
#[derive(Debug, Clone, PartialEq)]
pub struct Common<'a> {
    /// Messages received and not yet acknowledged, at most (the broker's prefetch).
    pub max_in_flight: u32,
    /// A message body larger than this is not fired: its fire is recorded as `error`.
    pub max_message_bytes: u64,
    /// A named secret whose value is the password (or token) to connect with, in place of
    /// one written in the URL.
    pub password_secret: Option<&'a str>,
}

/// Declares a source's settings struct with the fields every source has appended.
macro_rules! source_struct {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
            /// Messages received and not yet acknowledged, at most (the broker's prefetch).
            #[serde(default = "default_max_in_flight")]
            pub max_in_flight: u32,
            /// A message body larger than this is not fired: its fire is recorded as `error`.
            #[serde(default = "default_max_message_bytes")]
            pub max_message_bytes: u64,
            /// A named secret whose value is the password (or token) to connect with, in
            /// place of one written in the URL.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub password_secret: Option<String>,
        }
        impl $name {
            fn common(&self) -> Common<'_> {
                Common {
                    max_in_flight: self.max_in_flight,
                    max_message_bytes: self.max_message_bytes,
                    password_secret: self.password_secret.as_deref(),
                }
            }
        }
    };
}

fn default_max_in_flight() -> u32 {
    DEFAULT_MAX_IN_FLIGHT
}
fn default_max_message_bytes() -> u64 {
    DEFAULT_MAX_MESSAGE_BYTES
}
fn default_group() -> String {
    "taskhook".into()
}

source_struct! {
/// A Redis stream read by a consumer group.
pub struct RedisSource {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://…`.
    pub url: String,
    /// The stream's key.
    pub stream: String,
    /// The consumer group (created, with the stream, when missing).
    #[serde(default = "default_group")]
    pub group: String,
    /// Where a new group starts.
    #[serde(default)]
    pub from: StartFrom,
}
}

fn default_qos() -> u8 {
    1
}

source_struct! {
/// An MQTT (3.1.1) topic filter. With QoS 1 the session persists (clean session off), so what
/// is published while taskhook is away is delivered when it is back, and each message is
/// acknowledged (PUBACK) only after its fire is committed.
pub struct MqttSource {
    /// `mqtt://[user:password@]host[:port]` (port 1883) or `mqtts://…` (TLS, 8883); `tcp://`
    /// and `ssl://` are the same.
    pub url: String,
    /// The topic filter (`+` one level, `#` every level below).
    pub topic: String,
    /// 1: at least once, acknowledged after the fire is committed. 0: at most once, nothing to
    /// acknowledge: a message whose fire could not be stored is lost.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// The MQTT client id, naming the broker's session; default `taskhook-<group>-<id>-<hash>`
    /// from the hook and the subscription, the same across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Subscribe as `$share/<shared_group>/<topic>`: instances share the messages (each
    /// instance then has its own session, its client id ending in the instance name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_group: Option<String>,
}
}

source_struct! {
/// A Kafka topic read by a consumer group; offsets are committed only up to messages whose
/// fires are committed.
pub struct KafkaSource {
    /// Bootstrap brokers, `host:port` each (plaintext, no authentication).
    pub brokers: Vec<String>,
    /// The topic.
    pub topic: String,
    /// The consumer group.
    #[serde(default = "default_group")]
    pub group: String,
    /// Where a new group starts (`auto.offset.reset`).
    #[serde(default)]
    pub from: StartFrom,
}
}

/// One subscription of a hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceSpec {
    Redis(RedisSource),
    Mqtt(MqttSource),
    Kafka(KafkaSource),
}

impl SourceSpec {
    /// The source kind, as `event.fired_by` carries it.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Redis(_) => "redis",
            SourceSpec::Mqtt(_) => "mqtt",
            SourceSpec::Kafka(_) => "kafka",
        }
    }

    /// The broker or repository URL; empty for a kind that names its brokers otherwise
    /// (kafka: `brokers`).
    pub fn url(&self) -> &str {
        match self {
            SourceSpec::Redis(s) => &s.url,
            SourceSpec::Mqtt(s) => &s.url,
            SourceSpec::Kafka(_) => "",
        }
    }

    fn url_mut(&mut self) -> &mut String {
        match self {
            SourceSpec::Redis(s) => &mut s.url,
            SourceSpec::Mqtt(s) => &mut s.url,
            // Not a URL: nothing in it is ever masked or replaced.
            SourceSpec::Kafka(_) => unreachable!("kafka sources have no URL"),
        }
    }

    pub fn common(&self) -> Common<'_> {
        match self {
            SourceSpec::Redis(s) => s.common(),
            SourceSpec::Mqtt(s) => s.common(),
            SourceSpec::Kafka(s) => s.common(),
        }
    }

    /// What it subscribes to, for status and logs (e.g. `redis stream jobs`).
    pub fn describe(&self) -> String {
        match self {
            SourceSpec::Redis(s) => format!("redis stream {} (group {})", s.stream, s.group),
            SourceSpec::Mqtt(s) => match &s.shared_group {
                Some(g) => format!("mqtt topic {} (qos {}, shared group {g})", s.topic, s.qos),
                None => format!("mqtt topic {} (qos {})", s.topic, s.qos),
            },
            SourceSpec::Kafka(s) => format!("kafka topic {} (group {})", s.topic, s.group),
        }
    }

    /// The URL schemes the source accepts.
    fn schemes(&self) -> &'static [&'static str] {
        match self {
            SourceSpec::Redis(_) => &["redis", "rediss"],
            SourceSpec::Mqtt(_) => &["mqtt", "mqtts", "tcp", "ssl"],
            // Brokers are `host:port`, checked with the kind's fields.
            SourceSpec::Kafka(_) => &[],
        }
    }

    fn validate(&self, field: &str) -> Result<(), HookError> {
        // Kinds without a URL (kafka) check their brokers below.
        if !self.schemes().is_empty() {
            let url = url::Url::parse(self.url()).map_err(|e| {
                err(
                    format!("{field}.url"),
                    format!("not a URL: {e}{}", hint(self.url())),
                )
            })?;
            if !self.schemes().contains(&url.scheme()) {
                return Err(err(
                    format!("{field}.url"),
                    format!(
                        "scheme {:?} is not one of {}",
                        url.scheme(),
                        self.schemes().join(", ")
                    ),
                ));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(err(format!("{field}.url"), "the URL has no host"));
            }
            if url.password() == Some(REDACTED_SECRET) {
                return Err(err(
                    format!("{field}.url"),
                    "the password is the redaction placeholder; send the real password",
                ));
            }
        }
        let c = self.common();
        if c.max_in_flight == 0 || c.max_in_flight > MAX_MAX_IN_FLIGHT {
            return Err(err(
                format!("{field}.max_in_flight"),
                format!("must be between 1 and {MAX_MAX_IN_FLIGHT}"),
            ));
        }
        if c.max_message_bytes == 0 || c.max_message_bytes > MAX_MAX_MESSAGE_BYTES {
            return Err(err(
                format!("{field}.max_message_bytes"),
                format!("must be between 1 and {MAX_MAX_MESSAGE_BYTES}"),
            ));
        }
        if let Some(name) = c.password_secret {
            taskhook_model::secret::check_name(name)
                .map_err(|e| err(format!("{field}.password_secret"), e))?;
        }
        match self {
            SourceSpec::Redis(s) => {
                nonempty(&s.stream, &format!("{field}.stream"))?;
                nonempty(&s.group, &format!("{field}.group"))?;
            }
            SourceSpec::Mqtt(s) => validate_mqtt(s, field)?,
            SourceSpec::Kafka(s) => validate_kafka(s, field)?,
        }
        Ok(())
    }

    /// A copy fit to be shown: a password in the URL is masked.
    pub fn redacted(&self) -> SourceSpec {
        let mut copy = self.clone();
        if let Ok(mut url) = url::Url::parse(copy.url())
            && url.password().is_some()
            && url.set_password(Some(REDACTED_SECRET)).is_ok()
        {
            *copy.url_mut() = url.to_string();
        }
        copy
    }

    /// Whether the URL carries the masked password of [`SourceSpec::redacted`].
    pub fn is_redacted(&self) -> bool {
        url::Url::parse(self.url()).is_ok_and(|u| u.password() == Some(REDACTED_SECRET))
    }

    /// A copy whose URL carries `password` (a named secret's value); `None` when the URL
    /// cannot carry one.
    pub fn with_password(&self, password: &str) -> Option<SourceSpec> {
        let mut url = url::Url::parse(self.url()).ok()?;
        url.set_password(Some(password)).ok()?;
        let mut copy = self.clone();
        *copy.url_mut() = url.to_string();
        Some(copy)
    }

    /// For an update that sent back a masked URL: the password of `previous` restored, when
    /// `previous` is the same source (kind, host and user). `None` when it is not.
    pub fn with_password_from(&self, previous: &SourceSpec) -> Option<SourceSpec> {
        if self.kind() != previous.kind() {
            return None;
        }
        let mut url = url::Url::parse(self.url()).ok()?;
        let old = url::Url::parse(previous.url()).ok()?;
        if (url.scheme(), url.host_str(), url.port(), url.username())
            != (old.scheme(), old.host_str(), old.port(), old.username())
        {
            return None;
        }
        url.set_password(old.password()).ok()?;
        let mut copy = self.clone();
        *copy.url_mut() = url.to_string();
        Some(copy)
    }
}

fn validate_mqtt(s: &MqttSource, field: &str) -> Result<(), HookError> {
    let topic = format!("{field}.topic");
    nonempty(&s.topic, &topic)?;
    if s.topic.starts_with("$share/") {
        return Err(err(
            topic,
            "write the topic without $share/…: set shared_group for a shared subscription",
        ));
    }
    for (i, level) in s.topic.split('/').enumerate() {
        let last = i == s.topic.split('/').count() - 1;
        if (level.contains('+') && level != "+") || (level.contains('#') && (level != "#" || !last))
        {
            return Err(err(
                topic,
                "+ must stand alone in a level, # alone in the last level",
            ));
        }
    }
    if s.topic.contains('\0') || s.topic.len() > 65_535 {
        return Err(err(topic, "not a valid MQTT topic filter"));
    }
    if s.qos > 1 {
        return Err(err(
            format!("{field}.qos"),
            "0 (at most once) or 1 (at least once, acknowledged after the fire is committed)",
        ));
    }
    if let Some(id) = &s.client_id {
        nonempty(id, &format!("{field}.client_id"))?;
        if id.len() > 128 || id.chars().any(|c| c.is_control()) {
            return Err(err(
                format!("{field}.client_id"),
                "at most 128 characters, none a control character",
            ));
        }
    }
    if let Some(g) = &s.shared_group
        && (g.is_empty() || g.contains(['/', '+', '#']))
    {
        return Err(err(
            format!("{field}.shared_group"),
            "a name without /, + or #",
        ));
    }
    Ok(())
}

fn validate_kafka(s: &KafkaSource, field: &str) -> Result<(), HookError> {
    if s.brokers.is_empty() {
        return Err(err(format!("{field}.brokers"), "name at least one broker"));
    }
    for (i, b) in s.brokers.iter().enumerate() {
        let ok = b.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(['/', '@', ',', ' '])
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(err(
                format!("{field}.brokers[{i}]"),
                "host:port, e.g. 127.0.0.1:9092 (without a scheme)",
            ));
        }
    }
    let topic_ok = !s.topic.is_empty()
        && s.topic.len() <= 249
        && s.topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !topic_ok {
        return Err(err(
            format!("{field}.topic"),
            "1 to 249 characters: letters, digits, '.', '_' and '-'",
        ));
    }
    nonempty(&s.group, &format!("{field}.group"))?;
    if s.password_secret.is_some() {
        return Err(err(
            format!("{field}.password_secret"),
            "kafka sources connect without authentication or TLS",
        ));
    }
    Ok(())
}

fn hint(url: &str) -> &'static str {
    if url.contains("://") {
        ""
    } else {
        " (write it with its scheme, e.g. redis://127.0.0.1:6379)"
    }
}

fn nonempty(v: &str, field: &str) -> Result<(), HookError> {
    if v.trim().is_empty() {
        return Err(err(field, "must not be empty"));
    }
    Ok(())
}

fn err(field: impl Into<String>, message: impl Into<String>) -> HookError {
    HookError {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a hook's `sources` list.
pub fn validate_sources(sources: &[SourceSpec]) -> Result<(), HookError> {
    if sources.len() > MAX_SOURCES {
        return Err(err("sources", format!("at most {MAX_SOURCES} sources")));
    }
    for (i, s) in sources.iter().enumerate() {
        s.validate(&format!("sources[{i}].{}", s.kind()))?;
    }
    Ok(())
}

/// A message body as `event.payload`: JSON when it parses as JSON, else text (invalid UTF-8
/// replaced).
pub fn payload_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// One message a source received, before it meets the hook.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// Stable across redeliveries of the same message; dedupes them.
    pub delivery_id: String,
    /// Topic, subject, routing key, stream or ref.
    pub source: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Message {
    /// The event a hook sees for this message: `fired_by` is the source kind. A body over
    /// `max_bytes` is left out and reported as the `Err` (the fire records it as `error`).
    pub fn event(self, kind: &str, max_bytes: u64) -> (crate::Event, Option<String>) {
        let too_big = self.body.len() as u64 > max_bytes;
        let payload = if too_big {
            Value::Null
        } else {
            payload_of(&self.body)
        };
        let event = crate::Event {
            fired_by: kind.to_string(),
            payload,
            headers: self.headers,
            source: self.source,
            delivery_id: Some(self.delivery_id),
            ..Default::default()
        };
        let error = too_big.then(|| {
            format!(
                "the message has {} bytes, more than the source's max_message_bytes ({max_bytes})",
                self.body.len()
            )
        });
        (event, error)
    }
}

/// Pause before reconnect attempt `n` (0-based): 1 s doubling to 60 s.
pub fn reconnect_pause(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(6)).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(url: &str) -> SourceSpec {
        SourceSpec::Redis(RedisSource {
            url: url.into(),
            stream: "jobs".into(),
            group: "taskhook".into(),
            from: StartFrom::New,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            password_secret: None,
        })
    }

    #[test]
    fn a_source_reads_as_users_write_it() {
        let v: Vec<SourceSpec> = serde_json::from_value(serde_json::json!([
            {"redis": {"url": "redis://127.0.0.1:6379", "stream": "jobs"}}
        ]))
        .unwrap();
        assert_eq!(v[0], redis("redis://127.0.0.1:6379"));
        let bad = serde_json::from_value::<Vec<SourceSpec>>(serde_json::json!([
            {"redis": {"url": "redis://h", "stream": "jobs", "stram": 1}}
        ]));
        assert!(bad.unwrap_err().to_string().contains("stram"));
    }

    #[test]
    fn bad_sources_name_their_field() {
        let e = validate_sources(&[redis("127.0.0.1:6379")]).unwrap_err();
        assert_eq!(e.field, "sources[0].redis.url");
        let e = validate_sources(&[redis("amqp://h")]).unwrap_err();
        assert!(e.message.contains("redis, rediss"), "{e}");
        let s: SourceSpec = serde_json::from_value(serde_json::json!(
            {"redis": {"url": "redis://h", "stream": " "}}
        ))
        .unwrap();
        assert_eq!(
            validate_sources(&[s]).unwrap_err().field,
            "sources[0].redis.stream"
        );
        let s: SourceSpec = serde_json::from_value(serde_json::json!(
            {"redis": {"url": "redis://h", "stream": "s", "max_in_flight": 0}}
        ))
        .unwrap();
        assert_eq!(
            validate_sources(&[s]).unwrap_err().field,
            "sources[0].redis.max_in_flight"
        );
    }

    fn field_of(v: serde_json::Value) -> String {
        let s: SourceSpec = serde_json::from_value(v).unwrap();
        validate_sources(&[s]).map_or_else(|e| e.field, |()| "ok".into())
    }

    #[test]
    fn mqtt_sources_are_checked() {
        use serde_json::json;
        let ok = json!({"mqtt": {"url": "mqtt://u:p@h", "topic": "a/+/c/#"}});
        assert_eq!(field_of(ok.clone()), "ok");
        let s: SourceSpec = serde_json::from_value(ok).unwrap();
        let SourceSpec::Mqtt(m) = &s else { panic!() };
        assert_eq!((m.qos, &m.client_id, &m.shared_group), (1, &None, &None));
        assert!(!s.redacted().url().contains(":p@"));
        for (v, field) in [
            (json!({"url": "http://h", "topic": "t"}), "url"),
            (json!({"url": "mqtt://h", "topic": "a/b#"}), "topic"),
            (json!({"url": "mqtt://h", "topic": "a/#/b"}), "topic"),
            (json!({"url": "mqtt://h", "topic": "a+/b"}), "topic"),
            (json!({"url": "mqtt://h", "topic": "$share/g/t"}), "topic"),
            (json!({"url": "mqtt://h", "topic": "t", "qos": 2}), "qos"),
            (
                json!({"url": "mqtt://h", "topic": "t", "client_id": ""}),
                "client_id",
            ),
            (
                json!({"url": "mqtt://h", "topic": "t", "shared_group": "a/b"}),
                "shared_group",
            ),
        ] {
            assert_eq!(
                field_of(json!({ "mqtt": v })),
                format!("sources[0].mqtt.{field}"),
                "{v}"
            );
        }
    }

    #[test]
    fn kafka_sources_name_brokers_not_a_url() {
        use serde_json::json;
        let ok = json!({"kafka": {"brokers": ["127.0.0.1:9092", "k2:9093"], "topic": "ev.1"}});
        assert_eq!(field_of(ok.clone()), "ok");
        let s: SourceSpec = serde_json::from_value(ok).unwrap();
        assert_eq!(s.url(), "");
        assert_eq!(s.redacted(), s);
        assert!(!s.is_redacted());
        assert_eq!(s.with_password("pw"), None);
        assert_eq!(s.describe(), "kafka topic ev.1 (group taskhook)");
        for (v, field) in [
            (json!({"brokers": [], "topic": "t"}), "brokers"),
            (
                json!({"brokers": ["kafka://h:9092"], "topic": "t"}),
                "brokers[0]",
            ),
            (json!({"brokers": ["h"], "topic": "t"}), "brokers[0]"),
            (json!({"brokers": ["h:1"], "topic": "a b"}), "topic"),
            (
                json!({"brokers": ["h:1"], "topic": "t", "group": ""}),
                "group",
            ),
            (
                json!({"brokers": ["h:1"], "topic": "t", "password_secret": "pw"}),
                "password_secret",
            ),
        ] {
            assert_eq!(
                field_of(json!({ "kafka": v })),
                format!("sources[0].kafka.{field}"),
                "{v}"
            );
        }
        let bad = serde_json::from_value::<SourceSpec>(
            json!({"kafka": {"url": "kafka://h", "brokers": ["h:1"], "topic": "t"}}),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn passwords_are_masked_and_restored() {
        let s = redis("redis://app:s3cr%2Ft@127.0.0.1:6379/2");
        let shown = s.redacted();
        assert!(!shown.url().contains("s3cr"), "{}", shown.url());
        assert!(shown.is_redacted());
        assert!(validate_sources(std::slice::from_ref(&shown)).is_err());
        assert_eq!(shown.with_password_from(&s), Some(s.clone()));
        // Another host does not inherit the password.
        let elsewhere = redis("redis://app:**__SECRET__**@10.0.0.1:6379/2");
        assert!(elsewhere.is_redacted());
        assert_eq!(elsewhere.with_password_from(&s), None);
        // No password: nothing to mask.
        assert_eq!(redis("redis://h").redacted(), redis("redis://h"));
    }

    #[test]
    fn oversized_messages_are_reported_not_parsed() {
        let m = Message {
            delivery_id: "d".into(),
            body: b"{\"a\":1}".to_vec(),
            ..Default::default()
        };
        let (e, error) = m.clone().event("redis", 100);
        assert_eq!(e.payload["a"], 1);
        assert!(error.is_none());
        let (e, error) = m.event("redis", 3);
        assert!(e.payload.is_null());
        assert!(error.unwrap().contains("max_message_bytes"));
        assert_eq!(payload_of(b"plain"), Value::String("plain".into()));
    }

    #[test]
    fn reconnect_pauses_grow_to_a_minute() {
        assert_eq!(reconnect_pause(0), Duration::from_secs(1));
        assert_eq!(reconnect_pause(3), Duration::from_secs(8));
        assert_eq!(reconnect_pause(40), Duration::from_secs(60));
    }
}
