//! Verification of signed webhook deliveries (GitHub, GitLab, Bitbucket, Gitea,
//! Standard Webhooks and generic HMAC), with the settings that describe them.
//! Secrets are compared in constant time, and settings can be redacted for display.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha512};
use subtle::ConstantTimeEq as _;

/// What [`WebhookSettings::redacted`] puts in place of every secret.
pub const REDACTED_SECRET: &str = "**__SECRET__**";

/// How far, in seconds, a Standard Webhooks timestamp may be from now.
pub const STANDARD_TOLERANCE_SECONDS: u64 = 300;

/// The prefix of a Standard Webhooks secret (`whsec_<base64>`).
pub const STANDARD_SECRET_PREFIX: &str = "whsec_";

const DEFAULT_HMAC_HEADER: &str = "X-Signature";
const DEFAULT_TOLERANCE_SECONDS: u64 = 300;

/// How a hook checks that an incoming webhook delivery is authentic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase", deny_unknown_fields)]
pub enum WebhookSettings {
    /// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
    Github { secret: String },
    /// GitLab: `X-Gitlab-Token: <secret>`.
    Gitlab { secret: String },
    /// Bitbucket: `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
    Bitbucket { secret: String },
    /// Gitea (and Forgejo): `X-Gitea-Signature: <hex HMAC-SHA256(secret, body)>`.
    Gitea { secret: String },
    /// [Standard Webhooks](https://www.standardwebhooks.com): `webhook-id`,
    /// `webhook-timestamp` and `webhook-signature: v1,<base64>` over
    /// `{id}.{timestamp}.{body}`, keyed by the base64 part of `whsec_<base64>`.
    Standard { secret: String },
    /// Any other sender that signs the body (or `{timestamp}.{body}`) with an HMAC.
    Hmac(HmacSettings),
}

/// A generic HMAC signature scheme.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacSettings {
    /// The shared secret, used as the HMAC key as it is (UTF-8 bytes).
    pub secret: String,
    /// The header carrying the signature.
    #[serde(default = "default_hmac_header")]
    pub header: String,
    /// The hash function of the HMAC.
    #[serde(default)]
    pub algorithm: HmacAlgorithm,
    /// How the signature is written in the header.
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// A prefix before the encoded signature, such as `sha256=` (matched ASCII
    /// case-insensitively).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A header carrying the time of sending, in unix seconds. When set, a
    /// delivery older or newer than `tolerance_seconds` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_header: Option<String>,
    /// How far the timestamp may be from now, in seconds.
    #[serde(default = "default_tolerance")]
    pub tolerance_seconds: u64,
    /// What is signed; see [`HmacSettings::effective_signed_payload`] for the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_payload: Option<SignedPayload>,
    /// A header naming the event, copied to [`Delivery::event`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_header: Option<String>,
    /// A header carrying a unique delivery id, copied to [`Delivery::delivery_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_header: Option<String>,
}

fn default_hmac_header() -> String {
    DEFAULT_HMAC_HEADER.to_owned()
}

fn default_tolerance() -> u64 {
    DEFAULT_TOLERANCE_SECONDS
}

impl HmacSettings {
    /// Settings with every default: HMAC-SHA256 of the body, hex, in `X-Signature`.
    pub fn new(secret: impl Into<String>) -> Self {
        HmacSettings {
            secret: secret.into(),
            header: default_hmac_header(),
            algorithm: HmacAlgorithm::default(),
            encoding: SignatureEncoding::default(),
            prefix: None,
            timestamp_header: None,
            tolerance_seconds: DEFAULT_TOLERANCE_SECONDS,
            signed_payload: None,
            event_header: None,
            delivery_header: None,
        }
    }

    /// What is signed: `signed_payload` if set, otherwise `{timestamp}.{body}`
    /// (as Stripe does) when a timestamp header is set, and the body alone when not.
    pub fn effective_signed_payload(&self) -> SignedPayload {
        self.signed_payload
            .unwrap_or(if self.timestamp_header.is_some() {
                SignedPayload::TimestampBody
            } else {
                SignedPayload::Body
            })
    }
}

/// The hash function of an HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    Sha1,
    #[default]
    Sha256,
    Sha512,
}

impl HmacAlgorithm {
    /// The length of the MAC in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HmacAlgorithm::Sha1 => 20,
            HmacAlgorithm::Sha256 => 32,
            HmacAlgorithm::Sha512 => 64,
        }
    }
}

/// How a signature is written in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// Hexadecimal, either case.
    #[default]
    Hex,
    /// Base64, standard or URL-safe alphabet, padded or not.
    Base64,
}

/// What a generic HMAC signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignedPayload {
    /// The raw request body.
    #[serde(rename = "body")]
    Body,
    /// `{timestamp}.{body}`, the timestamp as sent in the timestamp header.
    #[serde(rename = "timestamp.body")]
    TimestampBody,
}

/// What a verified delivery says about itself, taken from the provider's headers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Delivery {
    /// The event name (e.g. `push`), when the provider sends one.
    pub event: Option<String>,
    /// The provider's unique id of this delivery, usable to drop duplicates.
    pub delivery_id: Option<String>,
}

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header the scheme needs is absent or empty.
    #[error("missing header `{0}`")]
    MissingHeader(String),
    /// A header is present but cannot be read.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// The signature (or token) does not match the secret and body.
    #[error("signature does not match")]
    Mismatch,
    /// The signature matches, but the delivery's timestamp is too far from now.
    #[error("timestamp {timestamp} is more than {tolerance_seconds} seconds away from now ({now})")]
    TimestampOutOfTolerance {
        timestamp: i64,
        now: i64,
        tolerance_seconds: u64,
    },
    /// The settings themselves are unusable; [`validate_settings`] would have said so.
    #[error("invalid webhook settings: {0}")]
    InvalidSettings(#[from] SettingsError),
}

/// A problem with webhook settings, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {message}")]
pub struct SettingsError {
    /// The field at fault, e.g. `secret` or `timestamp_header`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl SettingsError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        SettingsError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl WebhookSettings {
    /// The provider name, as in the `provider` tag of the serialized form.
    pub fn provider(&self) -> &'static str {
        match self {
            WebhookSettings::Github { .. } => "github",
            WebhookSettings::Gitlab { .. } => "gitlab",
            WebhookSettings::Bitbucket { .. } => "bitbucket",
            WebhookSettings::Gitea { .. } => "gitea",
            WebhookSettings::Standard { .. } => "standard",
            WebhookSettings::Hmac(_) => "hmac",
        }
    }

    /// The secret, in clear.
    pub fn secret(&self) -> &str {
        match self {
            WebhookSettings::Github { secret }
            | WebhookSettings::Gitlab { secret }
            | WebhookSettings::Bitbucket { secret }
            | WebhookSettings::Gitea { secret }
            | WebhookSettings::Standard { secret } => secret,
            WebhookSettings::Hmac(settings) => &settings.secret,
        }
    }

    fn secret_mut(&mut self) -> &mut String {
        match self {
            WebhookSettings::Github { secret }
            | WebhookSettings::Gitlab { secret }
            | WebhookSettings::Bitbucket { secret }
            | WebhookSettings::Gitea { secret }
            | WebhookSettings::Standard { secret } => secret,
            WebhookSettings::Hmac(settings) => &mut settings.secret,
        }
    }

    /// A copy with the secret replaced by [`REDACTED_SECRET`], fit to be shown.
    pub fn redacted(&self) -> WebhookSettings {
        let mut copy = self.clone();
        *copy.secret_mut() = REDACTED_SECRET.to_owned();
        copy
    }

    /// Whether the secret is the [`REDACTED_SECRET`] placeholder.
    pub fn is_redacted(&self) -> bool {
        self.secret() == REDACTED_SECRET
    }

    /// For an update that sent back redacted settings: a copy whose placeholder
    /// secret is replaced by `previous`'s secret, when both use the same provider.
    /// Settings with a real secret, or for another provider, are returned as they are.
    pub fn with_secret_from(&self, previous: &WebhookSettings) -> WebhookSettings {
        let mut copy = self.clone();
        if copy.is_redacted() && copy.provider() == previous.provider() {
            *copy.secret_mut() = previous.secret().to_owned();
        }
        copy
    }
}

/// Checks settings before they are stored: a usable secret (not empty, not the
/// redaction placeholder; for `standard`, `whsec_` and base64), valid header names,
/// and coherent HMAC options.
pub fn validate_settings(settings: &WebhookSettings) -> Result<(), SettingsError> {
    let secret = settings.secret();
    if secret.trim().is_empty() {
        return Err(SettingsError::new("secret", "must not be empty"));
    }
    if secret == REDACTED_SECRET {
        return Err(SettingsError::new(
            "secret",
            format!("is the redaction placeholder `{REDACTED_SECRET}`; send the real secret"),
        ));
    }
    match settings {
        WebhookSettings::Github { .. }
        | WebhookSettings::Gitlab { .. }
        | WebhookSettings::Bitbucket { .. }
        | WebhookSettings::Gitea { .. } => Ok(()),
        WebhookSettings::Standard { secret } => standard_key(secret).map(drop),
        WebhookSettings::Hmac(hmac) => validate_hmac(hmac),
    }
}

fn validate_hmac(settings: &HmacSettings) -> Result<(), SettingsError> {
    validate_header_name("header", &settings.header)?;
    for (field, value) in [
        ("timestamp_header", &settings.timestamp_header),
        ("event_header", &settings.event_header),
        ("delivery_header", &settings.delivery_header),
    ] {
        if let Some(name) = value {
            validate_header_name(field, name)?;
        }
    }
    if let Some(prefix) = &settings.prefix {
        if prefix.is_empty() {
            return Err(SettingsError::new(
                "prefix",
                "must not be empty (leave it out instead)",
            ));
        }
        if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SettingsError::new(
                "prefix",
                "must be printable ASCII without spaces",
            ));
        }
    }
    if settings.tolerance_seconds == 0 {
        return Err(SettingsError::new(
            "tolerance_seconds",
            "must be greater than 0",
        ));
    }
    if settings.effective_signed_payload() == SignedPayload::TimestampBody
        && settings.timestamp_header.is_none()
    {
        return Err(SettingsError::new(
            "signed_payload",
            "`timestamp.body` needs `timestamp_header` to be set",
        ));
    }
    Ok(())
}

/// An HTTP header name is a non-empty RFC 9110 token.
fn validate_header_name(field: &str, name: &str) -> Result<(), SettingsError> {
    if name.is_empty() {
        return Err(SettingsError::new(field, "must not be empty"));
    }
    let is_token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if let Some(bad) = name
        .chars()
        .find(|c| !c.is_ascii() || !is_token_char(*c as u8))
    {
        return Err(SettingsError::new(
            field,
            format!("is not a valid header name: `{name}` contains {bad:?}"),
        ));
    }
    Ok(())
}

/// The HMAC key of a Standard Webhooks secret: the base64 after `whsec_`
/// (the prefix may be left out, as the reference libraries allow).
fn standard_key(secret: &str) -> Result<Vec<u8>, SettingsError> {
    let encoded = secret
        .strip_prefix(STANDARD_SECRET_PREFIX)
        .unwrap_or(secret);
    match STANDARD.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(key),
        Ok(_) => Err(SettingsError::new(
            "secret",
            "must be `whsec_` followed by a non-empty base64 key",
        )),
        Err(e) => Err(SettingsError::new(
            "secret",
            format!("must be `whsec_` followed by a base64 key: {e}"),
        )),
    }
}

/// Verifies a delivery against `settings` and returns what its headers say about it.
///
/// `headers` looks a header up by name and must do so ASCII case-insensitively,
/// as HTTP header names are (an `http::HeaderMap` does; see [`header_lookup`] for
/// a list of pairs). `body` is the raw request body, before any parsing, and
/// `now_unix` the current time in unix seconds, for schemes with a timestamp.
///
/// The MAC or token is compared in constant time. A timestamp is checked only
/// once the signature matched, so [`SignatureError::TimestampOutOfTolerance`]
/// means an authentic but stale (or replayed) delivery.
pub fn verify(
    settings: &WebhookSettings,
    headers: &impl Fn(&str) -> Option<String>,
    body: &[u8],
    now_unix: i64,
) -> Result<Delivery, SignatureError> {
    match settings {
        WebhookSettings::Github { secret } => {
            let signature = prefixed_hex(headers, "X-Hub-Signature-256", "sha256=")?;
            check_mac(
                HmacAlgorithm::Sha256,
                secret.as_bytes(),
                &[body],
                &signature,
            )?;
            Ok(delivery(
                headers,
                &["X-GitHub-Event"],
                &["X-GitHub-Delivery"],
            ))
        }
        WebhookSettings::Gitlab { secret } => {
            let token = required(headers, "X-Gitlab-Token")?;
            // Comparing digests keeps the time independent of where the
            // strings differ and of the secret's length.
            let matches =
                Sha256::digest(token.as_bytes()).ct_eq(&Sha256::digest(secret.as_bytes()));
            if !bool::from(matches) {
                return Err(SignatureError::Mismatch);
            }
            // GitLab keeps `Idempotency-Key` across every retry of one delivery, automatic
            // or from its "Resend request" button, while a resend gets a new
            // `X-Gitlab-Event-UUID`: the key is the delivery id; the event UUID stands in
            // only for GitLab versions that send no key.
            Ok(delivery(
                headers,
                &["X-Gitlab-Event"],
                &["Idempotency-Key", "X-Gitlab-Event-UUID"],
            ))
        }
        WebhookSettings::Bitbucket { secret } => {
            let signature = prefixed_hex(headers, "X-Hub-Signature", "sha256=")?;
            check_mac(
                HmacAlgorithm::Sha256,
                secret.as_bytes(),
                &[body],
                &signature,
            )?;
            Ok(delivery(headers, &["X-Event-Key"], &["X-Request-UUID"]))
        }
        WebhookSettings::Gitea { secret } => {
            let value = required(headers, "X-Gitea-Signature")?;
            let signature = decode_hex("X-Gitea-Signature", &value)?;
            check_mac(
                HmacAlgorithm::Sha256,
                secret.as_bytes(),
                &[body],
                &signature,
            )?;
            Ok(delivery(headers, &["X-Gitea-Event"], &["X-Gitea-Delivery"]))
        }
        WebhookSettings::Standard { secret } => verify_standard(secret, headers, body, now_unix),
        WebhookSettings::Hmac(settings) => verify_hmac(settings, headers, body, now_unix),
    }
}

fn verify_standard(
    secret: &str,
    headers: &impl Fn(&str) -> Option<String>,
    body: &[u8],
    now_unix: i64,
) -> Result<Delivery, SignatureError> {
    let key = standard_key(secret)?;
    let id = required(headers, "webhook-id")?;
    let timestamp_text = required(headers, "webhook-timestamp")?;
    let timestamp = parse_timestamp("webhook-timestamp", &timestamp_text)?;
    let signatures = required(headers, "webhook-signature")?;

    let mut mac = new_mac::<Hmac<Sha256>>(&key)?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_text.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac.finalize().into_bytes();

    // `v1,<base64>` entries separated by spaces; other versions (such as the
    // asymmetric `v1a`) are not ours to check and are passed over.
    let mut candidates = 0;
    let mut matched = false;
    for entry in signatures.split_ascii_whitespace() {
        let Some((version, encoded)) = entry.split_once(',') else {
            continue;
        };
        if version != "v1" {
            continue;
        }
        candidates += 1;
        if let Some(signature) = decode_base64(encoded) {
            // Every candidate is compared, so the time does not tell which matched.
            matched |= bool::from(expected.as_slice().ct_eq(&signature));
        }
    }
    if candidates == 0 {
        return Err(SignatureError::Malformed(
            "header `webhook-signature` has no `v1,<base64>` signature".to_owned(),
        ));
    }
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    check_timestamp(timestamp, now_unix, STANDARD_TOLERANCE_SECONDS)?;
    Ok(Delivery {
        event: None,
        delivery_id: Some(id),
    })
}

fn verify_hmac(
    settings: &HmacSettings,
    headers: &impl Fn(&str) -> Option<String>,
    body: &[u8],
    now_unix: i64,
) -> Result<Delivery, SignatureError> {
    let payload = settings.effective_signed_payload();
    if payload == SignedPayload::TimestampBody && settings.timestamp_header.is_none() {
        return Err(SettingsError::new(
            "signed_payload",
            "`timestamp.body` needs `timestamp_header` to be set",
        )
        .into());
    }
    let header = settings.header.as_str();
    let value = required(headers, header)?;
    let encoded = match &settings.prefix {
        Some(prefix) => strip_prefix_ignore_case(&value, prefix).ok_or_else(|| {
            SignatureError::Malformed(format!("header `{header}` must start with `{prefix}`"))
        })?,
        None => value.as_str(),
    };
    let signature = match settings.encoding {
        SignatureEncoding::Hex => decode_hex(header, encoded)?,
        SignatureEncoding::Base64 => decode_base64(encoded).ok_or_else(|| {
            SignatureError::Malformed(format!("header `{header}` is not valid base64"))
        })?,
    };
    if signature.len() != settings.algorithm.output_len() {
        return Err(SignatureError::Malformed(format!(
            "header `{header}` holds {} bytes; a {:?} HMAC has {}",
            signature.len(),
            settings.algorithm,
            settings.algorithm.output_len()
        )));
    }

    let timestamp = match &settings.timestamp_header {
        Some(name) => {
            let text = required(headers, name)?;
            let value = parse_timestamp(name, &text)?;
            Some((text, value))
        }
        None => None,
    };
    let parts: Vec<&[u8]> = match (payload, &timestamp) {
        (SignedPayload::TimestampBody, Some((text, _))) => vec![text.as_bytes(), b".", body],
        _ => vec![body],
    };
    check_mac(
        settings.algorithm,
        settings.secret.as_bytes(),
        &parts,
        &signature,
    )?;
    if let Some((_, value)) = timestamp {
        check_timestamp(value, now_unix, settings.tolerance_seconds)?;
    }
    Ok(Delivery {
        event: settings
            .event_header
            .as_deref()
            .and_then(|name| optional(headers, name)),
        delivery_id: settings
            .delivery_header
            .as_deref()
            .and_then(|name| optional(headers, name)),
    })
}

/// A case-insensitive header lookup over name/value pairs, for callers that do
/// not hold an `http::HeaderMap`. The first pair with the name wins.
pub fn header_lookup<K, V>(pairs: &[(K, V)]) -> impl Fn(&str) -> Option<String> + '_
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    move |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| key.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_ref().to_owned())
    }
}

/// A header's trimmed value, if present and not empty.
fn optional(headers: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    let value = headers(name)?;
    let trimmed = value.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

fn required(
    headers: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<String, SignatureError> {
    optional(headers, name).ok_or_else(|| SignatureError::MissingHeader(name.to_owned()))
}

fn delivery(headers: &impl Fn(&str) -> Option<String>, event: &[&str], id: &[&str]) -> Delivery {
    let first = |names: &[&str]| names.iter().find_map(|name| optional(headers, name));
    Delivery {
        event: first(event),
        delivery_id: first(id),
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

fn prefixed_hex(
    headers: &impl Fn(&str) -> Option<String>,
    header: &str,
    prefix: &str,
) -> Result<Vec<u8>, SignatureError> {
    let value = required(headers, header)?;
    let encoded = strip_prefix_ignore_case(&value, prefix).ok_or_else(|| {
        SignatureError::Malformed(format!("header `{header}` must start with `{prefix}`"))
    })?;
    decode_hex(header, encoded)
}

fn decode_hex(header: &str, encoded: &str) -> Result<Vec<u8>, SignatureError> {
    hex::decode(encoded.trim())
        .map_err(|e| SignatureError::Malformed(format!("header `{header}` is not valid hex: {e}")))
}

fn decode_base64(encoded: &str) -> Option<Vec<u8>> {
    let encoded = encoded.trim();
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(encoded).ok())
}

fn parse_timestamp(header: &str, text: &str) -> Result<i64, SignatureError> {
    text.parse::<i64>().map_err(|_| {
        SignatureError::Malformed(format!(
            "header `{header}` must be a unix time in whole seconds, got `{}`",
            text.chars().take(40).collect::<String>()
        ))
    })
}

fn check_timestamp(timestamp: i64, now: i64, tolerance_seconds: u64) -> Result<(), SignatureError> {
    if timestamp.abs_diff(now) > tolerance_seconds {
        return Err(SignatureError::TimestampOutOfTolerance {
            timestamp,
            now,
            tolerance_seconds,
        });
    }
    Ok(())
}

fn new_mac<M: Mac + KeyInit>(key: &[u8]) -> Result<M, SignatureError> {
    // HMAC takes keys of any length, so this never fails; still, no panic.
    <M as KeyInit>::new_from_slice(key).map_err(|_| {
        SignatureError::InvalidSettings(SettingsError::new(
            "secret",
            "cannot be used as an HMAC key",
        ))
    })
}

/// Computes the MAC of the concatenated `parts` and compares it with
/// `signature` in constant time.
fn check_mac(
    algorithm: HmacAlgorithm,
    key: &[u8],
    parts: &[&[u8]],
    signature: &[u8],
) -> Result<(), SignatureError> {
    fn run<M: Mac + KeyInit>(
        key: &[u8],
        parts: &[&[u8]],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let mut mac = new_mac::<M>(key)?;
        for part in parts {
            mac.update(part);
        }
        mac.verify_slice(signature)
            .map_err(|_| SignatureError::Mismatch)
    }
    match algorithm {
        HmacAlgorithm::Sha1 => run::<Hmac<Sha1>>(key, parts, signature),
        HmacAlgorithm::Sha256 => run::<Hmac<Sha256>>(key, parts, signature),
        HmacAlgorithm::Sha512 => run::<Hmac<Sha512>>(key, parts, signature),
    }
}

#[cfg(test)]
mod tests;
