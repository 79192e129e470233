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
fn default_branches() -> Vec<String> {
    vec!["**".into()]
}
fn default_git_interval() -> Value {
    Value::String("60s".into())
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

source_struct! {
/// A git repository polled for pushes to its branches.
pub struct GitSource {
    /// `https://…`, `http://…` or `file:///…` (a password in it is the HTTP password).
    pub url: String,
    /// Branch name patterns: `*` any run of characters but `/`, `**` any run, `?` one
    /// character but `/`.
    #[serde(default = "default_branches")]
    pub branches: Vec<String>,
    /// Time between polls (`"60s"`, `"5m"`, or seconds), at least [`GIT_MIN_INTERVAL`].
    #[serde(default = "default_git_interval")]
    pub interval: Value,
}
}

source_struct! {
/// A RabbitMQ (AMQP 0-9-1) queue, declared durable, optionally bound to an exchange.
pub struct AmqpSource {
    /// `amqp://[user:password@]host[:port][/vhost]` or `amqps://…`.
    pub url: String,
    /// The queue consumed: declared durable, not exclusive, not auto-deleted (an existing
    /// queue declared otherwise is an error).
    pub queue: String,
    /// An exchange, which must already exist, the queue is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// The binding keys of the queue to `exchange` (default `#`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_keys: Option<Vec<String>>,
}
}

impl GitSource {
    /// The repository is on the server's own disk (`file://`).
    pub fn is_local(&self) -> bool {
        self.url
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("file:")
    }
}

impl AmqpSource {
    /// The binding keys in force: the written ones, else `#`.
    pub fn routing_keys(&self) -> Vec<String> {
        self.routing_keys
            .clone()
            .unwrap_or_else(|| vec!["#".to_string()])
    }
}

source_struct! {
/// A NATS JetStream stream read by a durable pull consumer.
pub struct NatsSource {
    /// `nats://[user:password@]host[:port]` or `tls://…`; a token is written as the password
    /// with no user name (`nats://:TOKEN@host`).
    pub url: String,
    /// The stream, which must already exist.
    pub stream: String,
    /// Filter subjects (default: every subject of the stream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// The durable consumer's name (default: derived from the hook's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<String>,
    /// Where a new consumer starts.
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

impl NatsSource {
    /// The durable consumer's name: the written one, else `taskhook-<group>-<id>-<hash>`,
    /// where the characters NATS refuses in names are replaced by `_` and the hash (of
    /// `group/id`, 8 hex digits) keeps names of different hooks apart.
    pub fn durable_name(&self, group: &str, id: &str) -> String {
        if let Some(d) = &self.durable {
            return d.clone();
        }
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        // FNV-1a: stable across releases and platforms, unlike the standard library's hasher.
        let hash = format!("{group}/{id}")
            .bytes()
            .fold(0x811c_9dc5u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
        format!("taskhook-{}-{}-{hash:08x}", clean(group), clean(id))
    }
}

/// One subscription of a hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceSpec {
    Redis(RedisSource),
    Git(GitSource),
    Amqp(AmqpSource),
    Nats(NatsSource),
    Mqtt(MqttSource),
    Kafka(KafkaSource),
}

impl SourceSpec {
    /// The source kind, as `event.fired_by` carries it.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Redis(_) => "redis",
            SourceSpec::Git(_) => "git",
            SourceSpec::Amqp(_) => "amqp",
            SourceSpec::Nats(_) => "nats",
            SourceSpec::Mqtt(_) => "mqtt",
            SourceSpec::Kafka(_) => "kafka",
        }
    }

    /// The broker or repository URL; empty for a kind that names its brokers otherwise
    /// (kafka: `brokers`).
    pub fn url(&self) -> &str {
        match self {
            SourceSpec::Redis(s) => &s.url,
            SourceSpec::Git(s) => &s.url,
            SourceSpec::Amqp(s) => &s.url,
            SourceSpec::Nats(s) => &s.url,
            SourceSpec::Mqtt(s) => &s.url,
            SourceSpec::Kafka(_) => "",
        }
    }

    fn url_mut(&mut self) -> &mut String {
        match self {
            SourceSpec::Redis(s) => &mut s.url,
            SourceSpec::Git(s) => &mut s.url,
            SourceSpec::Amqp(s) => &mut s.url,
            SourceSpec::Nats(s) => &mut s.url,
            SourceSpec::Mqtt(s) => &mut s.url,
            // Not a URL: nothing in it is ever masked or replaced.
            SourceSpec::Kafka(_) => unreachable!("kafka sources have no URL"),
        }
    }

    pub fn common(&self) -> Common<'_> {
        match self {
            SourceSpec::Redis(s) => s.common(),
            SourceSpec::Git(s) => s.common(),
            SourceSpec::Amqp(s) => s.common(),
            SourceSpec::Nats(s) => s.common(),
            SourceSpec::Mqtt(s) => s.common(),
            SourceSpec::Kafka(s) => s.common(),
        }
    }

    /// What it subscribes to, for status and logs (e.g. `redis stream jobs`).
    pub fn describe(&self) -> String {
        match self {
            SourceSpec::Redis(s) => format!("redis stream {} (group {})", s.stream, s.group),
            SourceSpec::Git(s) => format!(
                "git {} (branches {})",
                without_credentials(&s.url),
                s.branches.join(", ")
            ),
            SourceSpec::Amqp(s) => match &s.exchange {
                Some(x) => format!(
                    "amqp queue {} (bound to exchange {x} with {})",
                    s.queue,
                    s.routing_keys().join(", ")
                ),
                None => format!("amqp queue {}", s.queue),
            },
            SourceSpec::Nats(s) => {
                let durable = s.durable.as_deref().unwrap_or("derived from the hook");
                if s.subjects.is_empty() {
                    format!("nats stream {} (consumer {durable})", s.stream)
                } else {
                    format!(
                        "nats stream {} subjects {} (consumer {durable})",
                        s.stream,
                        s.subjects.join(", ")
                    )
                }
            }
            SourceSpec::Mqtt(s) => match &s.shared_group {
                Some(g) => format!("mqtt topic {} (qos {}, shared group {g})", s.topic, s.qos),
                None => format!("mqtt topic {} (qos {})", s.topic, s.qos),
            },
            SourceSpec::Kafka(s) => format!("kafka topic {} (group {})", s.topic, s.group),
        }
    }

    /// The hosts and ports the source connects to (none for a `file://` repository), for the
    /// network policy. Unparsable entries are left out (validation refuses them).
    pub fn endpoints(&self) -> Vec<(String, u16)> {
        if let SourceSpec::Kafka(k) = self {
            return k
                .brokers
                .iter()
                .filter_map(|b| {
                    let (host, port) = b.rsplit_once(':')?;
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    Some((host.to_string(), port.parse().ok()?))
                })
                .collect();
        }
        let Ok(url) = url::Url::parse(self.url()) else {
            return Vec::new();
        };
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Vec::new();
        };
        let default = match url.scheme() {
            "amqp" => 5672,
            "amqps" => 5671,
            "nats" | "tls" => 4222,
            "mqtt" | "tcp" => 1883,
            "mqtts" | "ssl" => 8883,
            "http" => 80,
            "https" => 443,
            _ => 6379,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        vec![(host.to_string(), url.port().unwrap_or(default))]
    }

    /// A `git` source reading a repository on the server's own disk (`file://`).
    pub fn is_local_git(&self) -> bool {
        matches!(self, SourceSpec::Git(g) if g.is_local())
    }

    /// The URL schemes the source accepts.
    fn schemes(&self) -> &'static [&'static str] {
        match self {
            SourceSpec::Redis(_) => &["redis", "rediss"],
            SourceSpec::Git(_) => &["https", "http", "file"],
            SourceSpec::Amqp(_) => &["amqp", "amqps"],
            SourceSpec::Nats(_) => &["nats", "tls"],
            SourceSpec::Mqtt(_) => &["mqtt", "mqtts", "tcp", "ssl"],
            // Brokers are `host:port`, checked with the kind's fields.
            SourceSpec::Kafka(_) => &[],
        }
    }

    fn validate(&self, field: &str) -> Result<(), HookError> {
        // Kinds without a URL (kafka) check their brokers below.
        let url = if self.schemes().is_empty() {
            None
        } else {
            let url = url::Url::parse(self.url()).map_err(|e| {
                err(
                    format!("{field}.url"),
                    format!("not a URL: {e}{}", hint(self.url(), self.kind())),
                )
            })?;
            if matches!(self, SourceSpec::Git(_)) && url.scheme() == "ssh" {
                return Err(err(
                    format!("{field}.url"),
                    "ssh is not supported (it would need keys on the server): use https, with a \
                     token in password_secret",
                ));
            }
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
            if url.scheme() != "file" && url.host_str().is_none_or(str::is_empty) {
                return Err(err(format!("{field}.url"), "the URL has no host"));
            }
            if url.password() == Some(REDACTED_SECRET) {
                return Err(err(
                    format!("{field}.url"),
                    "the password is the redaction placeholder; send the real password",
                ));
            }
            Some(url)
        };
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
            SourceSpec::Git(s) => {
                s.interval()
                    .map_err(|e| err(format!("{field}.interval"), e))?;
                if s.branches.is_empty() {
                    return Err(err(
                        format!("{field}.branches"),
                        "list at least one branch pattern (\"**\" is every branch)",
                    ));
                }
                for (j, b) in s.branches.iter().enumerate() {
                    nonempty(b, &format!("{field}.branches[{j}]"))?;
                    if b.starts_with("refs/") || b.contains(char::is_whitespace) {
                        return Err(err(
                            format!("{field}.branches[{j}]"),
                            "a branch name or pattern without refs/heads/ and without spaces",
                        ));
                    }
                }
            }
            SourceSpec::Amqp(s) => {
                amqp_name(&s.queue, &format!("{field}.queue"))?;
                if s.queue.starts_with("amq.") {
                    return Err(err(
                        format!("{field}.queue"),
                        "names starting with 'amq.' are reserved for the broker",
                    ));
                }
                if let Some(x) = &s.exchange {
                    amqp_name(x, &format!("{field}.exchange"))?;
                }
                if let Some(keys) = &s.routing_keys {
                    let at = format!("{field}.routing_keys");
                    if s.exchange.is_none() {
                        return Err(err(at, "binding keys need an exchange to bind to"));
                    }
                    if keys.is_empty() {
                        return Err(err(at, "must not be empty (leave it out for '#')"));
                    }
                    if keys.iter().any(|k| k.len() > 255) {
                        return Err(err(at, "a binding key has at most 255 bytes"));
                    }
                }
            }
            SourceSpec::Nats(s) => {
                if url
                    .as_ref()
                    .is_some_and(|u| u.password().is_none() && !u.username().is_empty())
                    && c.password_secret.is_none()
                {
                    return Err(err(
                        format!("{field}.url"),
                        "a user without a password; a token is written as the password with \
                         no user (nats://:TOKEN@host), so that it is masked",
                    ));
                }
                nats_name(&s.stream, &format!("{field}.stream"))?;
                if let Some(d) = &s.durable {
                    nats_name(d, &format!("{field}.durable"))?;
                }
                for (j, subject) in s.subjects.iter().enumerate() {
                    nats_subject(subject, &format!("{field}.subjects[{j}]"))?;
                }
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

fn hint(url: &str, kind: &str) -> String {
    if url.contains("://") {
        return String::new();
    }
    let example = match kind {
        "amqp" => "amqp://127.0.0.1:5672",
        "nats" => "nats://127.0.0.1:4222",
        "mqtt" => "mqtt://127.0.0.1:1883",
        "git" => "https://git.example.com/org/repo.git",
        _ => "redis://127.0.0.1:6379",
    };
    format!(" (write it with its scheme, e.g. {example})")
}

/// A queue or exchange name: 1 to 255 bytes.
fn amqp_name(v: &str, field: &str) -> Result<(), HookError> {
    nonempty(v, field)?;
    if v.len() > 255 {
        return Err(err(field, "has at most 255 bytes"));
    }
    Ok(())
}

/// A stream or consumer name as NATS takes it: no whitespace, `.`, `*`, `>`, path
/// separators or control characters, at most 255 bytes.
fn nats_name(v: &str, field: &str) -> Result<(), HookError> {
    nonempty(v, field)?;
    if v.len() > 255
        || v.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        })
    {
        return Err(err(
            field,
            "must be at most 255 bytes without whitespace, '.', '*', '>', '/' or '\\'",
        ));
    }
    Ok(())
}

/// A filter subject: tokens separated by `.`, none empty, no whitespace; `>` only last.
fn nats_subject(v: &str, field: &str) -> Result<(), HookError> {
    let tokens: Vec<&str> = v.split('.').collect();
    let bad = v.is_empty()
        || v.chars().any(|c| c.is_whitespace() || c.is_control())
        || tokens.iter().any(|t| t.is_empty())
        || tokens
            .iter()
            .enumerate()
            .any(|(i, t)| t.contains('>') && (*t != ">" || i + 1 != tokens.len()))
        || tokens.iter().any(|t| t.contains('*') && *t != "*");
    if bad {
        return Err(err(
            field,
            "not a subject: tokens separated by '.', none empty, no whitespace, '*' a whole \
             token, '>' only the last one",
        ));
    }
    Ok(())
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
        // A git source's cursor is keyed by its repository: one source per repository.
        if let SourceSpec::Git(g) = s
            && sources[..i]
                .iter()
                .any(|o| matches!(o, SourceSpec::Git(p) if p.key() == g.key()))
        {
            return Err(err(
                format!("sources[{i}].git.url"),
                "another git source of this hook polls this repository: list all its \
                 branches in one",
            ));
        }
    }
    // Two NATS sources sharing a durable consumer would split the stream's messages between
    // them; each must have its own.
    for (j, s) in sources.iter().enumerate() {
        let SourceSpec::Nats(b) = s else { continue };
        for (i, earlier) in sources[..j].iter().enumerate() {
            if let SourceSpec::Nats(a) = earlier
                && a.stream == b.stream
                && a.durable == b.durable
            {
                return Err(err(
                    format!("sources[{j}].nats.durable"),
                    format!(
                        "sources[{i}] reads stream {:?} with the same durable consumer; give \
                         one of them a durable name of its own",
                        b.stream
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Fewest time between two polls of a git source.
pub const GIT_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Most time between two polls of a git source.
pub const GIT_MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

impl GitSource {
    /// The time between polls.
    pub fn interval(&self) -> Result<Duration, String> {
        let d = taskhook_model::duration::parse_duration(&self.interval)?;
        if !(GIT_MIN_INTERVAL..=GIT_MAX_INTERVAL).contains(&d) {
            return Err(format!(
                "must be between {}s and {}h",
                GIT_MIN_INTERVAL.as_secs(),
                GIT_MAX_INTERVAL.as_secs() / 3600
            ));
        }
        Ok(d)
    }

    /// Whether branch `name` (without `refs/heads/`) is watched.
    pub fn watches(&self, name: &str) -> bool {
        self.branches.iter().any(|p| branch_matches(p, name))
    }

    /// The source's key among its hook's polling sources (its cursor's key in the store):
    /// `git:` and a digest of the URL without credentials, so a new password keeps the
    /// cursor and another repository starts afresh.
    pub fn key(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(without_credentials(&self.url).as_bytes());
        format!("git:{}", &hex::encode(digest)[..16])
    }

    /// The URL to hand to `git` (without credentials) and, when the URL carries a user or
    /// password, the `Authorization` header value that carries them instead (HTTP basic; a
    /// password without a user goes with the user name `git`).
    pub fn remote(&self) -> (String, Option<String>) {
        use base64::Engine as _;
        let plain = without_credentials(&self.url);
        let Ok(url) = url::Url::parse(&self.url) else {
            return (plain, None);
        };
        // Percent-decoding (`+` stays itself, as in a URL's user part).
        let decode = |s: &str| {
            let b = s.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
                match (b[i], hex) {
                    (b'%', Some(v)) => {
                        out.push(v);
                        i += 3;
                    }
                    (c, _) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        let user = decode(url.username());
        let password = url.password().map(decode).unwrap_or_default();
        if user.is_empty() && password.is_empty() {
            return (plain, None);
        }
        let user = if user.is_empty() { "git".into() } else { user };
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        (plain, Some(format!("Basic {token}")))
    }
}

/// A URL without its user and password (as shown in events and logs).
pub fn without_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => url.to_string(),
    }
}

/// Glob match of a branch name: `**` any run of characters, `*` any run without `/`, `?` one
/// character but `/`; anything else matches itself.
pub fn branch_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p {
            [] => n.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=n.len()).any(|i| go(rest, &n[i..])),
            [b'*', rest @ ..] => {
                let stop = n.iter().position(|&c| c == b'/').unwrap_or(n.len());
                (0..=stop).any(|i| go(rest, &n[i..]))
            }
            [b'?', rest @ ..] => matches!(n, [c, tail @ ..] if *c != b'/' && go(rest, tail)),
            [c, rest @ ..] => matches!(n, [d, tail @ ..] if d == c && go(rest, tail)),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
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
    /// The broker says this is the first delivery (see [`crate::Event::first_delivery`]).
    pub first_delivery: bool,
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
            first_delivery: self.first_delivery,
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

    fn parse(v: serde_json::Value) -> Vec<SourceSpec> {
        serde_json::from_value(v).unwrap()
    }

    fn refused_field(v: serde_json::Value) -> String {
        validate_sources(&parse(v)).unwrap_err().field
    }

    #[test]
    fn amqp_sources_bind_only_to_a_named_exchange() {
        let v = parse(serde_json::json!([
            {"amqp": {"url": "amqp://h", "queue": "q", "exchange": "x"}}
        ]));
        validate_sources(&v).unwrap();
        let SourceSpec::Amqp(a) = &v[0] else { panic!() };
        assert_eq!(a.routing_keys(), ["#"]);
        assert_eq!(v[0].kind(), "amqp");
        assert!(
            v[0].describe().contains("exchange x with #"),
            "{}",
            v[0].describe()
        );
        // Nothing written, nothing shown.
        assert_eq!(
            serde_json::to_value(&v[0]).unwrap()["amqp"].get("routing_keys"),
            None
        );
        for (source, field) in [
            (serde_json::json!({"url": "amqp://h", "queue": ""}), "queue"),
            (
                serde_json::json!({"url": "amqp://h", "queue": "amq.x"}),
                "queue",
            ),
            (
                serde_json::json!({"url": "amqp://h", "queue": "q", "exchange": ""}),
                "exchange",
            ),
            (
                serde_json::json!({"url": "amqp://h", "queue": "q", "routing_keys": ["a"]}),
                "routing_keys",
            ),
            (
                serde_json::json!({"url": "amqp://h", "queue": "q", "exchange": "x", "routing_keys": []}),
                "routing_keys",
            ),
            (serde_json::json!({"url": "nats://h", "queue": "q"}), "url"),
        ] {
            assert_eq!(
                refused_field(serde_json::json!([{ "amqp": source }])),
                format!("sources[0].amqp.{field}")
            );
        }
    }

    #[test]
    fn nats_sources_name_streams_consumers_and_subjects_as_nats_does() {
        let ok = serde_json::json!([
            {"nats": {"url": "nats://h", "stream": "s", "subjects": ["a.*.c", "b.>"]}},
            {"nats": {"url": "tls://:tok@h", "stream": "s", "durable": "other"}}
        ]);
        validate_sources(&parse(ok)).unwrap();
        for (source, field) in [
            (
                serde_json::json!({"url": "nats://h", "stream": "a.b"}),
                "stream",
            ),
            (
                serde_json::json!({"url": "nats://h", "stream": "s", "durable": "a*"}),
                "durable",
            ),
            (
                serde_json::json!({"url": "nats://h", "stream": "s", "subjects": ["a.>.b"]}),
                "subjects[0]",
            ),
            (
                serde_json::json!({"url": "nats://h", "stream": "s", "subjects": ["a.b*"]}),
                "subjects[0]",
            ),
            (
                serde_json::json!({"url": "nats://h", "stream": "s", "subjects": [""]}),
                "subjects[0]",
            ),
            (
                serde_json::json!({"url": "nats://token@h", "stream": "s"}),
                "url",
            ),
        ] {
            assert_eq!(
                refused_field(serde_json::json!([{ "nats": source }])),
                format!("sources[0].nats.{field}")
            );
        }
        // A user with its password in a secret is fine.
        validate_sources(&parse(serde_json::json!([
            {"nats": {"url": "nats://app@h", "stream": "s", "password_secret": "pw"}}
        ])))
        .unwrap();
        // Two sources on one stream need consumers of their own.
        assert_eq!(
            refused_field(serde_json::json!([
                {"nats": {"url": "nats://h", "stream": "s"}},
                {"nats": {"url": "nats://other", "stream": "s"}}
            ])),
            "sources[1].nats.durable"
        );
    }

    #[test]
    fn a_nats_consumer_is_named_after_its_hook_unless_named() {
        let v = parse(serde_json::json!([{"nats": {"url": "nats://h", "stream": "s"}}]));
        let SourceSpec::Nats(n) = &v[0] else { panic!() };
        let name = n.durable_name("ci.eu", "build");
        assert!(name.starts_with("taskhook-ci_eu-build-"), "{name}");
        assert!(!name.contains('.'));
        // Names that clean to the same text stay apart; the same hook always gets one name.
        assert_ne!(name, n.durable_name("ci_eu", "build"));
        assert_ne!(n.durable_name("a-b", "c"), n.durable_name("a", "b-c"));
        assert_eq!(name, n.durable_name("ci.eu", "build"));
        let named = NatsSource {
            durable: Some("mine".into()),
            ..n.clone()
        };
        assert_eq!(named.durable_name("g", "h"), "mine");
    }

    #[test]
    fn a_token_is_masked_like_a_password() {
        let v =
            parse(serde_json::json!([{"nats": {"url": "nats://:t0ken@h:4222", "stream": "s"}}]));
        let shown = v[0].redacted();
        assert!(!shown.url().contains("t0ken"), "{}", shown.url());
        assert_eq!(shown.with_password_from(&v[0]), Some(v[0].clone()));
        let bare = parse(serde_json::json!([{"nats": {"url": "nats://h:4222", "stream": "s"}}]));
        assert_eq!(
            bare[0].with_password("t0ken").unwrap().url(),
            "nats://:t0ken@h:4222"
        );
        let amqp =
            parse(serde_json::json!([{"amqp": {"url": "amqp://guest:guest@h/%2f", "queue": "q"}}]));
        assert!(!amqp[0].redacted().url().contains(":guest@"));
    }

    #[test]
    fn endpoints_are_what_the_clients_connect_to() {
        let all = parse(serde_json::json!([
            {"redis": {"url": "redis://h1", "stream": "s"}},
            {"amqp": {"url": "amqps://u:p@h2/%2f", "queue": "q"}},
            {"mqtt": {"url": "mqtt://[::1]:1884", "topic": "t"}},
            {"kafka": {"brokers": ["k1:9092", "k2:9093"], "topic": "t"}},
            {"git": {"url": "https://git.example/r.git"}},
            {"git": {"url": "file:///srv/r.git"}},
        ]));
        let ends: Vec<Vec<(String, u16)>> = all.iter().map(SourceSpec::endpoints).collect();
        let e = |h: &str, p: u16| (h.to_string(), p);
        assert_eq!(ends[0], [e("h1", 6379)]);
        assert_eq!(ends[1], [e("h2", 5671)]);
        assert_eq!(ends[2], [e("::1", 1884)]);
        assert_eq!(ends[3], [e("k1", 9092), e("k2", 9093)]);
        assert_eq!(ends[4], [e("git.example", 443)]);
        assert!(ends[5].is_empty());
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

    fn git(v: Value) -> Result<(), HookError> {
        let s: SourceSpec = serde_json::from_value(serde_json::json!({ "git": v })).unwrap();
        validate_sources(&[s])
    }

    #[test]
    fn git_sources_are_checked() {
        git(serde_json::json!({"url": "https://host/org/repo.git", "branches": ["main", "release/*"], "interval": "60s"})).unwrap();
        git(serde_json::json!({"url": "file:///srv/repo.git", "interval": 5})).unwrap();
        let e = git(serde_json::json!({"url": "ssh://git@host/org/repo.git"})).unwrap_err();
        assert_eq!(e.field, "sources[0].git.url");
        assert!(e.message.contains("ssh is not supported"), "{e}");
        let e = git(serde_json::json!({"url": "https://h/r", "interval": "500ms"})).unwrap_err();
        assert_eq!(e.field, "sources[0].git.interval");
        let e = git(serde_json::json!({"url": "https://h/r", "branches": []})).unwrap_err();
        assert_eq!(e.field, "sources[0].git.branches");
        let e = git(serde_json::json!({"url": "https://h/r", "branches": ["refs/heads/main"]}))
            .unwrap_err();
        assert_eq!(e.field, "sources[0].git.branches[0]");
        let two: Vec<SourceSpec> = serde_json::from_value(serde_json::json!([
            {"git": {"url": "https://h/r", "branches": ["a"]}},
            {"git": {"url": "https://u:p@h/r", "branches": ["b"]}}
        ]))
        .unwrap();
        assert_eq!(
            validate_sources(&two).unwrap_err().field,
            "sources[1].git.url"
        );
    }

    #[test]
    fn git_credentials_leave_the_url_for_a_header() {
        let s: SourceSpec = serde_json::from_value(serde_json::json!(
            {"git": {"url": "https://bot:t%40k@host/org/repo.git"}}
        ))
        .unwrap();
        let SourceSpec::Git(g) = &s else { panic!() };
        let (url, header) = g.remote();
        assert_eq!(url, "https://host/org/repo.git");
        // base64("bot:t@k")
        assert_eq!(header.as_deref(), Some("Basic Ym90OnRAaw=="));
        assert!(!s.describe().contains("t%40k"));
        let SourceSpec::Git(bare) = s.redacted() else {
            panic!()
        };
        assert_eq!(bare.key(), g.key());
        let (_, none) = GitSource {
            url: "https://host/r".into(),
            ..g.clone()
        }
        .remote();
        assert_eq!(none, None);
    }

    #[test]
    fn branch_patterns() {
        assert!(branch_matches("main", "main"));
        assert!(!branch_matches("main", "main2"));
        assert!(branch_matches("release/*", "release/1.2"));
        assert!(!branch_matches("release/*", "release/1/hotfix"));
        assert!(branch_matches("release/**", "release/1/hotfix"));
        assert!(branch_matches("**", "a/b/c"));
        assert!(branch_matches("v?", "v1"));
        assert!(!branch_matches("*", "a/b"));
    }

    #[test]
    fn reconnect_pauses_grow_to_a_minute() {
        assert_eq!(reconnect_pause(0), Duration::from_secs(1));
        assert_eq!(reconnect_pause(3), Duration::from_secs(8));
        assert_eq!(reconnect_pause(40), Duration::from_secs(60));
    }
}
