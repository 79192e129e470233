//! `http`: sends one HTTP request and classifies the answer (2xx/3xx ok, 4xx client, 5xx server).
//! Clients are built once per TLS/redirect setting and shared; it must never retry by itself,
//! outlive its timeout or cancellation, or buffer more than `max_response_bytes`.
//!
//! Every connection honours the operator's [`NetworkPolicy`]: literal-IP URLs are checked before
//! sending, host names through a resolver that drops denied addresses (so DNS rebinding cannot
//! reach them), and redirect hops to literal addresses by the redirect policy. Proxies from the
//! environment are ignored, since a proxy would connect on our behalf unchecked.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::config::{self, Check, Stage, join, opt};
use crate::network::{self, NetworkPolicy, PolicyResolver};
use crate::{Action, ActionContext, ActionError, ActionOutput, ConfigError};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_RESPONSE_BYTES: u64 = 10 * 1024 * 1024;
const MAX_REDIRECTS: usize = 10;
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The `http` action. Holds the shared clients: create it once and reuse it.
#[derive(Debug, Default)]
pub struct Http {
    /// Index: `insecure_skip_verify as usize * 2 + follow_redirects as usize`.
    clients: [OnceLock<reqwest::Client>; 4],
    policy: Arc<NetworkPolicy>,
}

impl Http {
    /// The action under [`NetworkPolicy::default`].
    pub fn new() -> Self {
        Http::default()
    }

    /// The action connecting only where `policy` allows.
    pub fn with_policy(policy: NetworkPolicy) -> Self {
        Http {
            clients: Default::default(),
            policy: Arc::new(policy),
        }
    }

    /// The network policy every request of this action honours.
    pub fn policy(&self) -> &NetworkPolicy {
        &self.policy
    }

    /// The shared client for one combination of settings, built on first use.
    fn client(
        &self,
        insecure: bool,
        follow_redirects: bool,
    ) -> Result<&reqwest::Client, ActionError> {
        let slot = &self.clients[usize::from(insecure) * 2 + usize::from(follow_redirects)];
        if let Some(client) = slot.get() {
            return Ok(client);
        }
        let redirect = if follow_redirects {
            network::redirect_policy(Arc::clone(&self.policy), MAX_REDIRECTS)
        } else {
            reqwest::redirect::Policy::none()
        };
        let client = reqwest::Client::builder()
            .user_agent(concat!("taskhook/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect)
            .no_proxy()
            .dns_resolver(PolicyResolver {
                policy: Arc::clone(&self.policy),
            })
            .tls_danger_accept_invalid_certs(insecure)
            .tls_danger_accept_invalid_hostnames(insecure)
            .build()
            .map_err(|e| ActionError::server(format!("cannot build HTTP client: {}", chain(&e))))?;
        // A concurrent first use may have won the race: keep whichever client landed first.
        Ok(slot.get_or_init(|| client))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpConfig {
    #[serde(default)]
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    query: Option<Map<String, Value>>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default, deserialize_with = "config::de_opt_duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    auth: Option<Auth>,
    #[serde(default, deserialize_with = "config::de_opt_bool")]
    insecure_skip_verify: Option<bool>,
    #[serde(default, deserialize_with = "config::de_opt_bool")]
    follow_redirects: Option<bool>,
    #[serde(default, deserialize_with = "config::de_opt_u64")]
    max_response_bytes: Option<u64>,
    /// µTask's `trim_prefix`: removed from the start of the body (when there) before it is
    /// read as JSON, e.g. an anti-JSON-hijacking `)]}',`.
    #[serde(default)]
    trim_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Auth {
    Basic(BasicAuth),
    Bearer(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicAuth {
    user: String,
    #[serde(default)]
    password: Option<String>,
}

const FIELDS: &[&str] = &[
    "method",
    "url",
    "headers",
    "query",
    "body",
    "timeout",
    "auth",
    "insecure_skip_verify",
    "follow_redirects",
    "max_response_bytes",
    "trim_prefix",
];

/// µTask's http fields taskhook does not implement, and why: refused by name rather than as
/// unknown fields.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "root_ca",
        "µTask's root_ca is not supported: the server trusts the system's certificate store",
    ),
    (
        "auth.digest",
        "µTask's digest authentication is not supported: use basic or bearer",
    ),
    (
        "auth.mutual_tls",
        "µTask's mutual_tls (client certificates) is not supported",
    ),
];

fn unsupported(field: &str) -> ConfigError {
    let message = UNSUPPORTED
        .iter()
        .find(|(f, _)| *f == field)
        .map_or("not supported", |(_, m)| m);
    ConfigError::new(field, message)
}

fn parse_method(m: &str) -> Result<Method, String> {
    let upper = m.trim().to_ascii_uppercase();
    if upper.is_empty() {
        return Err("must not be empty".into());
    }
    Method::from_bytes(upper.as_bytes()).map_err(|_| format!("invalid HTTP method {m:?}"))
}

fn parse_url(u: &str) -> Result<Url, String> {
    let url = Url::parse(u.trim()).map_err(|e| format!("invalid URL {u:?}: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("unsupported scheme {other:?}: use http or https")),
    }
}

fn check_auth(c: &Check, v: &Value) -> Result<(), ConfigError> {
    let Some(auth) = c.object("auth", v)? else {
        return Ok(());
    };
    for name in ["digest", "mutual_tls"] {
        if auth.contains_key(name) {
            return Err(unsupported(&join("auth", name)));
        }
    }
    c.keys("auth", auth, &["basic", "bearer"], &[])?;
    match (auth.get("basic"), auth.get("bearer")) {
        (None, None) => Err(ConfigError::new("auth", "expected `basic` or `bearer`")),
        (Some(_), Some(_)) => Err(ConfigError::new(
            "auth",
            "set either `basic` or `bearer`, not both",
        )),
        (Some(basic), None) => {
            let Some(basic) = c.object("auth.basic", basic)? else {
                return Ok(());
            };
            c.keys("auth.basic", basic, &["user", "password"], &["user"])?;
            if let Some(user) = basic.get("user") {
                c.string("auth.basic.user", user)?;
            }
            if let Some(password) = opt(basic, "password") {
                c.string("auth.basic.password", password)?;
            }
            Ok(())
        }
        (None, Some(token)) => c.string("auth.bearer", token).map(|_| ()),
    }
}

fn check(config: &Value, stage: Stage) -> Result<(), ConfigError> {
    let c = Check::new(stage);
    let Some(map) = c.object("", config)? else {
        return Ok(());
    };
    if map.contains_key("root_ca") {
        return Err(unsupported("root_ca"));
    }
    c.keys("", map, FIELDS, &["url"])?;
    if let Some(v) = opt(map, "method")
        && let Some(m) = c.string("method", v)?
    {
        parse_method(m).map_err(|e| ConfigError::new("method", e))?;
    }
    if let Some(v) = map.get("url")
        && let Some(u) = c.string("url", v)?
    {
        parse_url(u).map_err(|e| ConfigError::new("url", e))?;
    }
    if let Some(v) = opt(map, "headers")
        && let Some(headers) = c.string_map("headers", v)?
    {
        for (name, value) in headers {
            let field = join("headers", name);
            let templated_name = name.contains("{{") || name.contains("{%");
            if !templated_name && HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::new(field, "invalid header name"));
            }
            if let Some(text) = c.string(&field, value)?
                && HeaderValue::from_str(text).is_err()
            {
                return Err(ConfigError::new(field, "invalid header value"));
            }
        }
    }
    if let Some(v) = opt(map, "query")
        && let Some(query) = c.object("query", v)?
    {
        for (name, value) in query {
            c.scalar(&join("query", name), value)?;
        }
    }
    if let Some(v) = opt(map, "timeout") {
        c.positive_duration("timeout", v)?;
    }
    if let Some(v) = opt(map, "trim_prefix") {
        c.string("trim_prefix", v)?;
    }
    if let Some(v) = opt(map, "auth") {
        check_auth(&c, v)?;
    }
    for flag in ["insecure_skip_verify", "follow_redirects"] {
        if let Some(v) = opt(map, flag) {
            c.boolean(flag, v)?;
        }
    }
    if let Some(v) = opt(map, "max_response_bytes")
        && c.uint("max_response_bytes", v)? == Some(0)
    {
        return Err(ConfigError::new(
            "max_response_bytes",
            "must be greater than zero",
        ));
    }
    Ok(())
}

/// µTask's forms of the configuration, written as ours: `headers` as a list of
/// `{name, value}`, `query_parameters` (a list of `{name, value}`) for `query`,
/// `follow_redirect` for `follow_redirects`, and `host` + `path` for `url`.
fn from_utask(config: &Value) -> Result<std::borrow::Cow<'_, Value>, ConfigError> {
    use std::borrow::Cow;
    let Some(map) = config.as_object() else {
        return Ok(Cow::Borrowed(config));
    };
    let utask = map.get("headers").is_some_and(Value::is_array)
        || ["query_parameters", "follow_redirect", "host", "path"]
            .iter()
            .any(|k| map.contains_key(*k));
    if !utask {
        return Ok(Cow::Borrowed(config));
    }
    let mut m = map.clone();
    if let Some(Value::Array(list)) = m.get("headers") {
        let headers = name_value_pairs("headers", list)?;
        m.insert("headers".into(), headers);
    }
    if let Some(v) = m.remove("query_parameters") {
        if m.contains_key("query") {
            return Err(ConfigError::new(
                "query_parameters",
                "give query or query_parameters, not both",
            ));
        }
        let Value::Array(list) = v else {
            return Err(ConfigError::new(
                "query_parameters",
                "expected a list of {name, value}",
            ));
        };
        m.insert("query".into(), name_value_pairs("query_parameters", &list)?);
    }
    if let Some(v) = m.remove("follow_redirect") {
        if m.contains_key("follow_redirects") {
            return Err(ConfigError::new(
                "follow_redirect",
                "give follow_redirect or follow_redirects, not both",
            ));
        }
        // µTask writes it as text: "true" or "false".
        let v = match v.as_str().map(str::trim) {
            Some("true") => Value::Bool(true),
            Some("false") => Value::Bool(false),
            _ => v,
        };
        m.insert("follow_redirects".into(), v);
    }
    if m.contains_key("host") || m.contains_key("path") {
        if m.contains_key("url") {
            return Err(ConfigError::new("url", "url conflicts with host and path"));
        }
        let text = |field: &str, v: Option<Value>| match v {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(ConfigError::new(field, "expected a string")),
        };
        let host = text("host", m.remove("host"))?;
        let path = text("path", m.remove("path"))?;
        if host.is_empty() {
            return Err(ConfigError::new("host", "give url, or host (and path)"));
        }
        m.insert("url".into(), Value::String(format!("{host}{path}")));
    }
    Ok(Cow::Owned(Value::Object(m)))
}

/// A list of `{name, value}` as a map; a name given twice keeps every value, `, `-joined
/// (as HTTP allows for a repeated header).
fn name_value_pairs(field: &str, list: &[Value]) -> Result<Value, ConfigError> {
    let mut out = Map::new();
    for (i, item) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let (Some(name), Some(value)) =
            (item.get("name").and_then(Value::as_str), item.get("value"))
        else {
            return Err(ConfigError::new(at, "expected {name, value}"));
        };
        if name.is_empty() {
            return Err(ConfigError::new(format!("{at}.name"), "must not be empty"));
        }
        if item.as_object().is_some_and(|o| o.len() > 2) {
            return Err(ConfigError::new(at, "only name and value are allowed"));
        }
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            _ => {
                return Err(ConfigError::new(
                    format!("{at}.value"),
                    "expected a string, number or boolean",
                ));
            }
        };
        match out.get_mut(name) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                out.insert(name.to_string(), Value::String(value));
            }
        }
    }
    Ok(Value::Object(out))
}

fn fatal(field: &str, message: impl std::fmt::Display) -> ActionError {
    ActionError::fatal(format!("invalid http configuration: {field}: {message}"))
}

/// The error and its sources, `: `-separated (reqwest's top-level message alone is vague).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn classify(e: reqwest::Error) -> ActionError {
    // A refusal by the network policy, from the resolver or the redirect policy: only its own
    // message, since reqwest's would quote the URL (credentials, tokens).
    if let Some(denied) = network::find_denied(&e) {
        return ActionError::client(denied.to_string());
    }
    if e.is_builder() {
        ActionError::fatal(format!("invalid http request: {}", chain(&e)))
    } else if e.is_timeout() {
        ActionError::server(format!("timed out: {}", chain(&e)))
    } else if e.is_connect() {
        ActionError::server(format!("cannot connect: {}", chain(&e)))
    } else {
        ActionError::server(format!("request failed: {}", chain(&e)))
    }
}

fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// The request as configured, ready to send.
struct Prepared {
    request: reqwest::Request,
    timeout: Duration,
    max_bytes: u64,
    trim_prefix: Option<String>,
    insecure: bool,
    follow_redirects: bool,
}

fn prepare<'a>(
    http: &'a Http,
    cfg: HttpConfig,
    ctx: &ActionContext,
) -> Result<(Prepared, &'a reqwest::Client), ActionError> {
    let method = match &cfg.method {
        Some(m) => parse_method(m).map_err(|e| fatal("method", e))?,
        None => Method::GET,
    };
    let url = parse_url(&cfg.url).map_err(|e| fatal("url", e))?;
    let timeout = cfg.timeout.unwrap_or(DEFAULT_TIMEOUT);
    if timeout.is_zero() {
        return Err(fatal("timeout", "must be greater than zero"));
    }
    let max_bytes = cfg.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE_BYTES);
    if max_bytes == 0 {
        return Err(fatal("max_response_bytes", "must be greater than zero"));
    }
    let insecure = cfg.insecure_skip_verify.unwrap_or(false);
    let follow_redirects = cfg.follow_redirects.unwrap_or(true);

    let mut headers = HeaderMap::new();
    for (name, value) in cfg.headers.unwrap_or_default() {
        let field = join("headers", &name);
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| fatal(&field, "invalid header name"))?;
        let value =
            HeaderValue::from_str(&value).map_err(|_| fatal(&field, "invalid header value"))?;
        headers.append(header, value);
    }
    if !headers.contains_key(IDEMPOTENCY_KEY)
        && let Ok(key) = HeaderValue::from_bytes(ctx.idempotency_key.as_bytes())
    {
        headers.insert(HeaderName::from_static(IDEMPOTENCY_KEY), key);
    }
    if let Some(auth) = cfg.auth {
        let credentials = match auth {
            Auth::Basic(BasicAuth { user, password }) => {
                let raw = format!("{user}:{}", password.unwrap_or_default());
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            }
            Auth::Bearer(token) => format!("Bearer {token}"),
        };
        let mut value = HeaderValue::from_str(&credentials)
            .map_err(|_| fatal("auth", "credentials are not a valid header value"))?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    let body = match cfg.body {
        None => None,
        Some(Value::String(text)) => Some(text.into_bytes()),
        Some(json) => {
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Some(serde_json::to_vec(&json).map_err(|e| fatal("body", e))?)
        }
    };
    let mut query = Vec::new();
    for (name, value) in cfg.query.unwrap_or_default() {
        let text = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(fatal(
                    &join("query", &name),
                    format!(
                        "expected a string, number or boolean, got {}",
                        crate::duration::kind(&other)
                    ),
                ));
            }
        };
        query.push((name, text));
    }

    let client = http.client(insecure, follow_redirects)?;
    let mut builder = client.request(method, url).headers(headers);
    if !query.is_empty() {
        builder = builder.query(&query);
    }
    if let Some(body) = body {
        builder = builder.body(body);
    }
    let request = builder.build().map_err(classify)?;
    Ok((
        Prepared {
            request,
            timeout,
            max_bytes,
            trim_prefix: cfg.trim_prefix,
            insecure,
            follow_redirects,
        },
        client,
    ))
}

/// Reads the whole response (bounded by `max_bytes`) and classifies it by status.
async fn receive(
    mut response: reqwest::Response,
    max_bytes: u64,
    trim_prefix: Option<&str>,
) -> Result<ActionOutput, ActionError> {
    let status = response.status();
    let mut headers = Map::new();
    for (name, value) in response.headers() {
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        // Header names are already lowercase; repeated headers are joined as HTTP allows.
        match headers.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&text);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(text));
            }
        }
    }
    // µTask's names beside ours, so that its templates read them unchanged: `HTTPStatus`,
    // `HTTPHeaders` (Go's canonical names, first value), `HTTPCookies` (name → value).
    let mut utask_headers = serde_json::Map::new();
    let mut cookies = serde_json::Map::new();
    for (name, value) in response.headers() {
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == reqwest::header::SET_COOKIE
            && let Some((cookie, v)) = text.split(';').next().and_then(|c| c.split_once('='))
        {
            cookies.insert(
                cookie.trim().to_string(),
                Value::String(v.trim().to_string()),
            );
        }
        utask_headers
            .entry(canonical_header_name(name.as_str()))
            .or_insert(Value::String(text));
    }
    let metadata = json!({
        "http_status": status.as_u16(),
        "headers": headers,
        "HTTPStatus": status.as_u16(),
        "HTTPHeaders": utask_headers,
        "HTTPCookies": cookies,
    });
    let too_large = |metadata: Value| ActionError::Server {
        message: format!(
            "{}: response body larger than {max_bytes} bytes",
            status_line(status)
        ),
        output: Some(ActionOutput {
            output: Value::Null,
            metadata,
        }),
    };
    if response.content_length().is_some_and(|len| len > max_bytes) {
        return Err(too_large(metadata));
    }
    let mut body: Vec<u8> = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if (body.len() as u64).saturating_add(chunk.len() as u64) > max_bytes {
                    return Err(too_large(metadata));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                let mut err = classify(e);
                if let ActionError::Server { output, .. } = &mut err {
                    *output = Some(ActionOutput {
                        output: Value::Null,
                        metadata,
                    });
                }
                return Err(err);
            }
        }
    }
    let body = match trim_prefix {
        Some(prefix) => body
            .strip_prefix(prefix.as_bytes())
            .map(<[u8]>::to_vec)
            .unwrap_or(body),
        None => body,
    };
    let output = serde_json::from_slice::<Value>(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let result = ActionOutput { output, metadata };
    if status.is_client_error() {
        Err(ActionError::Client {
            message: status_line(status),
            output: Some(result),
        })
    } else if status.is_server_error() || status.as_u16() >= 600 {
        Err(ActionError::Server {
            message: status_line(status),
            output: Some(result),
        })
    } else {
        Ok(result)
    }
}

#[async_trait]
impl Action for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn validate(&self, config: &Value) -> Result<(), ConfigError> {
        check(from_utask(config)?.as_ref(), Stage::Load)
    }

    async fn run(&self, config: Value, ctx: ActionContext) -> Result<ActionOutput, ActionError> {
        let config = from_utask(&config).map_err(|e| {
            ActionError::fatal(format!(
                "invalid http configuration: {}",
                config::describe(&e)
            ))
        })?;
        let cfg: HttpConfig = config::parse("http", &config, check)?;
        let (prepared, client) = prepare(self, cfg, &ctx)?;
        let Prepared {
            request,
            timeout,
            max_bytes,
            trim_prefix,
            insecure,
            follow_redirects,
        } = prepared;
        // Only the host: a path or query may carry a secret, and logs are not redacted.
        tracing::debug!(
            method = %request.method(),
            host = request.url().host_str().unwrap_or_default(),
            insecure,
            follow_redirects,
            "http action: sending request"
        );
        // Literal addresses never meet the resolver: judge them here, before any connection.
        network::check_url(&self.policy, request.url())
            .map_err(|denied| ActionError::client(denied.to_string()))?;
        let exchange = async {
            let response = client.execute(request).await.map_err(classify)?;
            receive(response, max_bytes, trim_prefix.as_deref()).await
        };
        // Dropping `exchange` (on cancel or timeout) aborts the request and closes the connection.
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Err(ActionError::server("cancelled")),
            result = tokio::time::timeout(timeout, exchange) => match result {
                Ok(result) => result,
                Err(_) => Err(ActionError::server(format!("timed out after {timeout:?}"))),
            },
        }
    }
}

/// A header name as Go writes it (`content-type` → `Content-Type`).
fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::{Path, Query};
    use axum::http::{HeaderMap as AxHeaders, Method as AxMethod, StatusCode as AxStatus, Uri};
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::{any, get};

    use super::*;
    use crate::network::IpNet;
    use crate::testing::ctx;

    async fn echo(
        method: AxMethod,
        uri: Uri,
        headers: AxHeaders,
        body: Bytes,
    ) -> axum::Json<Value> {
        let mut h = Map::new();
        for (name, value) in &headers {
            let entry = h
                .entry(name.as_str().to_string())
                .or_insert_with(|| json!([]));
            if let Value::Array(values) = entry {
                values.push(json!(value.to_str().unwrap_or("<bin>")));
            }
        }
        axum::Json(json!({
            "method": method.as_str(),
            "path": uri.path(),
            "query": uri.query(),
            "headers": h,
            "body": String::from_utf8_lossy(&body),
        }))
    }

    async fn server() -> String {
        let app = Router::new()
            .route("/echo", any(echo))
            .route(
                "/status/{code}",
                get(|Path(code): Path<u16>| async move {
                    let status = AxStatus::from_u16(code).unwrap_or(AxStatus::IM_A_TEAPOT);
                    (status, axum::Json(json!({"code": code})))
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    "late"
                }),
            )
            .route("/text", get(|| async { "hello world" }))
            .route("/number-text", get(|| async { "42" }))
            .route("/guarded", get(|| async { ")]}',\n{\"safe\": true}" }))
            .route(
                "/bad-json",
                get(|| async {
                    ([("content-type", "application/json")], "{not json").into_response()
                }),
            )
            .route("/big", get(|| async { "x".repeat(5000) }))
            .route("/empty", get(|| async { AxStatus::NO_CONTENT }))
            .route(
                "/redirect",
                get(|| async { Redirect::temporary("/echo?from=redirect") }),
            )
            .route(
                "/go",
                get(|Query(q): Query<BTreeMap<String, String>>| async move {
                    Redirect::temporary(q.get("to").map_or("/echo", String::as_str))
                }),
            )
            .route("/loop", get(|| async { Redirect::temporary("/loop") }))
            .route(
                "/cookie",
                get(|| async {
                    (
                        [
                            ("set-cookie", "session=s3cr3t; Path=/; HttpOnly"),
                            ("x-request-id", "r-1"),
                        ],
                        "ok",
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn utask_trim_prefix_is_removed_before_reading_json() {
        let base = server().await;
        let http = Http::new();
        let run = |config: Value| http.run(config, ctx());
        let out = run(json!({"url": format!("{base}/guarded"), "trim_prefix": ")]}',"}))
            .await
            .unwrap();
        assert_eq!(out.output, json!({"safe": true}));
        // Without it, or when the body does not start with it, the body is kept as text.
        let out = run(json!({"url": format!("{base}/guarded")}))
            .await
            .unwrap();
        assert_eq!(out.output, json!(")]}',\n{\"safe\": true}"));
        let out = run(json!({"url": format!("{base}/text"), "trim_prefix": "world"}))
            .await
            .unwrap();
        assert_eq!(out.output, json!("hello world"));
    }

    #[test]
    fn utask_fields_without_support_are_refused_by_name() {
        let http = Http::new();
        for (config, field, says) in [
            (
                json!({"url": "http://x/", "root_ca": "PEM"}),
                "root_ca",
                "not supported",
            ),
            (
                json!({"url": "http://x/", "auth": {"digest": {"user": "u", "password": "p"}}}),
                "auth.digest",
                "basic or bearer",
            ),
            (
                json!({"url": "http://x/", "auth": {"mutual_tls": {"client_cert": "c", "client_key": "k"}}}),
                "auth.mutual_tls",
                "not supported",
            ),
            (
                json!({"url": "http://x/", "trim_prefix": 5}),
                "trim_prefix",
                "string",
            ),
        ] {
            let e = http.validate(&config).expect_err(&config.to_string());
            assert_eq!(e.field, field, "{config}: {e}");
            assert!(e.message.contains(says), "{config}: {e}");
        }
        assert_eq!(
            http.validate(&json!({"host": "http://x", "path": "/a", "trim_prefix": ")]}'"})),
            Ok(())
        );
    }

    fn header<'a>(out: &'a ActionOutput, name: &str) -> &'a Value {
        &out.output["headers"][name]
    }

    #[tokio::test]
    async fn get_with_query_headers_and_idempotency_key() {
        let base = server().await;
        let http = Http::new();
        let out = http
            .run(
                json!({
                    "url": format!("{base}/echo?fixed=1"),
                    "headers": {"X-Token": "abc"},
                    "query": {"a": "x y", "n": 5, "b": true},
                }),
                ctx(),
            )
            .await
            .unwrap();
        assert_eq!(out.output["method"], "GET");
        assert_eq!(out.output["query"], "fixed=1&a=x+y&n=5&b=true");
        assert_eq!(header(&out, "x-token"), &json!(["abc"]));
        assert_eq!(header(&out, "idempotency-key"), &json!(["t1/s"]));
        assert_eq!(out.metadata["http_status"], 200);
        assert_eq!(out.metadata["headers"]["content-type"], "application/json");
        assert!(out.metadata["headers"]["content-length"].is_string());
    }

    #[tokio::test]
    async fn utask_forms_of_the_configuration_are_accepted() {
        let base = server().await;
        let http = Http::new();
        let config = json!({
            "host": base,
            "path": "/echo",
            "method": "POST",
            "headers": [{"name": "X-Token", "value": "abc"}, {"name": "X-Many", "value": "1"}, {"name": "X-Many", "value": 2}],
            "query_parameters": [{"name": "a", "value": "x y"}],
            "follow_redirect": "false",
            "body": "{\"user_id\": \"ada\"}",
        });
        http.validate(&config).unwrap();
        let out = http.run(config, ctx()).await.unwrap();
        assert_eq!(out.output["path"], "/echo");
        assert_eq!(out.output["query"], "a=x+y");
        assert_eq!(header(&out, "x-token"), &json!(["abc"]));
        assert_eq!(header(&out, "x-many"), &json!(["1, 2"]));
        assert_eq!(out.output["body"], "{\"user_id\": \"ada\"}");
        for (config, field) in [
            (json!({"url": "http://x", "host": "http://y"}), "url"),
            (json!({"path": "/p"}), "host"),
            (
                json!({"url": "http://x", "headers": [{"name": "", "value": "v"}]}),
                "headers[0].name",
            ),
            (
                json!({"url": "http://x", "headers": [{"value": "v"}]}),
                "headers[0]",
            ),
            (
                json!({"url": "http://x", "headers": [{"name": "X-A", "value": {}}]}),
                "headers[0].value",
            ),
            (
                json!({"url": "http://x", "query": {}, "query_parameters": []}),
                "query_parameters",
            ),
            (
                json!({"url": "http://x", "follow_redirect": "maybe"}),
                "follow_redirects",
            ),
        ] {
            let e = http.validate(&config).unwrap_err();
            assert_eq!(e.field, field, "{config}: {e:?}");
        }
    }

    #[tokio::test]
    async fn metadata_also_has_utask_names() {
        let base = server().await;
        let out = Http::new()
            .run(json!({"url": format!("{base}/cookie")}), ctx())
            .await
            .unwrap();
        assert_eq!(out.metadata["HTTPStatus"], 200);
        assert_eq!(out.metadata["HTTPHeaders"]["X-Request-Id"], "r-1");
        assert_eq!(
            out.metadata["HTTPHeaders"]["Content-Type"],
            "text/plain; charset=utf-8"
        );
        assert_eq!(out.metadata["HTTPCookies"], json!({"session": "s3cr3t"}));
        assert_eq!(out.metadata["http_status"], 200);
        assert_eq!(canonical_header_name("x-REQUEST-id"), "X-Request-Id");
    }

    #[tokio::test]
    async fn json_and_string_bodies() {
        let base = server().await;
        let http = Http::new();
        let out = http
            .run(
                json!({"method": "post", "url": format!("{base}/echo"), "body": {"k": [1, "two"]}}),
                ctx(),
            )
            .await
            .unwrap();
        assert_eq!(out.output["method"], "POST");
        assert_eq!(out.output["body"], r#"{"k":[1,"two"]}"#);
        assert_eq!(header(&out, "content-type"), &json!(["application/json"]));

        let out = http
            .run(
                json!({
                    "method": "PUT",
                    "url": format!("{base}/echo"),
                    "body": "raw <text>",
                    "headers": {"Content-Type": "text/plain"},
                }),
                ctx(),
            )
            .await
            .unwrap();
        assert_eq!(out.output["method"], "PUT");
        assert_eq!(out.output["body"], "raw <text>");
        assert_eq!(header(&out, "content-type"), &json!(["text/plain"]));
    }

    #[tokio::test]
    async fn user_idempotency_key_wins() {
        let base = server().await;
        let out = Http::new()
            .run(
                json!({"url": format!("{base}/echo"), "headers": {"Idempotency-Key": "mine"}}),
                ctx(),
            )
            .await
            .unwrap();
        assert_eq!(header(&out, "idempotency-key"), &json!(["mine"]));
    }

    #[tokio::test]
    async fn basic_and_bearer_auth() {
        let base = server().await;
        let http = Http::new();
        let out = http
            .run(
                json!({"url": format!("{base}/echo"), "auth": {"basic": {"user": "alice", "password": "s3cret"}}}),
                ctx(),
            )
            .await
            .unwrap();
        assert_eq!(
            header(&out, "authorization"),
            &json!(["Basic YWxpY2U6czNjcmV0"])
        );
        let out = http
            .run(
                json!({"url": format!("{base}/echo"), "auth": {"bearer": "tok-123"}}),
                ctx(),
            )
            .await
            .unwrap();
        assert_eq!(header(&out, "authorization"), &json!(["Bearer tok-123"]));
    }

    #[tokio::test]
    async fn status_classes() {
        let base = server().await;
        let http = Http::new();
        let r = http
            .run(json!({"url": format!("{base}/status/404")}), ctx())
            .await;
        let Err(ActionError::Client {
            message,
            output: Some(out),
        }) = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(message, "HTTP 404 Not Found");
        assert_eq!(out.output, json!({"code": 404}));
        assert_eq!(out.metadata["http_status"], 404);

        let r = http
            .run(json!({"url": format!("{base}/status/503")}), ctx())
            .await;
        let Err(ActionError::Server {
            message,
            output: Some(out),
        }) = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(message, "HTTP 503 Service Unavailable");
        assert_eq!(out.metadata["http_status"], 503);

        let out = http
            .run(json!({"url": format!("{base}/status/201")}), ctx())
            .await
            .unwrap();
        assert_eq!(out.metadata["http_status"], 201);
        let out = http
            .run(json!({"url": format!("{base}/empty")}), ctx())
            .await
            .unwrap();
        assert_eq!(out.metadata["http_status"], 204);
        assert_eq!(out.output, "");
    }

    #[tokio::test]
    async fn non_json_bodies_are_strings() {
        let base = server().await;
        let http = Http::new();
        let out = http
            .run(json!({"url": format!("{base}/text")}), ctx())
            .await
            .unwrap();
        assert_eq!(out.output, "hello world");
        assert!(
            out.metadata["headers"]["content-type"]
                .as_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let out = http
            .run(json!({"url": format!("{base}/number-text")}), ctx())
            .await
            .unwrap();
        assert_eq!(out.output, 42);
        let out = http
            .run(json!({"url": format!("{base}/bad-json")}), ctx())
            .await
            .unwrap();
        assert_eq!(out.output, "{not json");
    }

    #[tokio::test]
    async fn redirects() {
        let base = server().await;
        let http = Http::new();
        let out = http
            .run(json!({"url": format!("{base}/redirect")}), ctx())
            .await
            .unwrap();
        assert_eq!(out.metadata["http_status"], 200);
        assert_eq!(out.output["query"], "from=redirect");
        // Run-time booleans may come out of templating as strings.
        let out = http
            .run(
                json!({"url": format!("{base}/redirect"), "follow_redirects": "false"}),
                ctx(),
            )
            .await
            .unwrap();
        assert_eq!(out.metadata["http_status"], 307);
        assert_eq!(out.metadata["headers"]["location"], "/echo?from=redirect");
    }

    #[tokio::test]
    async fn timeout_is_a_server_error() {
        let base = server().await;
        let started = Instant::now();
        let r = Http::new()
            .run(
                json!({"url": format!("{base}/slow"), "timeout": "200ms"}),
                ctx(),
            )
            .await;
        let Err(ActionError::Server { message, .. }) = r else {
            panic!("{r:?}")
        };
        assert!(message.contains("timed out"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn cancellation_aborts_the_request() {
        let base = server().await;
        let ctx = ctx();
        let cancel = ctx.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        let r = Http::new()
            .run(json!({"url": format!("{base}/slow")}), ctx)
            .await;
        assert_eq!(r, Err(ActionError::server("cancelled")));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn oversize_response_is_a_server_error() {
        let base = server().await;
        let r = Http::new()
            .run(
                json!({"url": format!("{base}/big"), "max_response_bytes": 100}),
                ctx(),
            )
            .await;
        let Err(ActionError::Server { message, .. }) = r else {
            panic!("{r:?}")
        };
        assert!(message.contains("larger than 100 bytes"), "{message}");
        let out = Http::new()
            .run(
                json!({"url": format!("{base}/big"), "max_response_bytes": 5000}),
                ctx(),
            )
            .await
            .unwrap();
        assert_eq!(out.output.as_str().map(str::len), Some(5000));
    }

    /// An `Http` with the default policy plus these entries.
    fn with_networks(allow: &[&str], deny: &[&str]) -> Http {
        let parse = |list: &[&str]| -> Vec<IpNet> {
            list.iter()
                .map(|s| NetworkPolicy::parse_network(s).unwrap())
                .collect()
        };
        Http::with_policy(NetworkPolicy::new(parse(allow), parse(deny), false))
    }

    /// A listener that never accepts: a connection attempt would sit in its backlog.
    fn watcher(ip: &str) -> (std::net::TcpListener, std::net::SocketAddr) {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    fn assert_no_connection(listener: &std::net::TcpListener) {
        match listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the denied address was connected to: {other:?}"),
        }
    }

    fn refusal(r: Result<ActionOutput, ActionError>) -> String {
        match r {
            Err(ActionError::Client {
                message,
                output: None,
            }) => message,
            other => panic!("expected a client error without output, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn literal_denied_address_is_refused_without_connecting() {
        let (listener, addr) = watcher("127.0.0.2");
        let http = with_networks(&[], &["127.0.0.2/32"]);
        for follow_redirects in [true, false] {
            let message = refusal(
                http.run(
                    json!({
                        "url": format!("http://user:s3cret@{addr}/private?token=t0ken"),
                        "auth": {"bearer": "b3arer"},
                        "follow_redirects": follow_redirects,
                    }),
                    ctx(),
                )
                .await,
            );
            // Nothing of the URL or credentials, only the address and the network.
            assert_eq!(
                message,
                "http: 127.0.0.2 is in a denied network (127.0.0.2/32); see --http-allow-network"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_no_connection(&listener);
    }

    #[tokio::test]
    async fn default_policy_denies_metadata_and_allows_loopback() {
        let http = Http::new();
        assert_eq!(http.policy(), &NetworkPolicy::default());
        for url in [
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "http://2852039166/latest/meta-data/",
        ] {
            let message = refusal(http.run(json!({ "url": url }), ctx()).await);
            assert_eq!(
                message,
                "http: 169.254.169.254 is in a denied network (169.254.0.0/16); see --http-allow-network",
                "{url}"
            );
        }
        let message = refusal(
            http.run(
                json!({"url": "http://100.100.100.200/latest/meta-data/"}),
                ctx(),
            )
            .await,
        );
        assert!(message.contains("100.100.100.200/32"), "{message}");
        let base = server().await;
        assert!(base.starts_with("http://127.0.0.1:"));
        let out = http
            .run(json!({"url": format!("{base}/echo")}), ctx())
            .await
            .unwrap();
        assert_eq!(out.metadata["http_status"], 200);
    }

    #[tokio::test]
    async fn hostname_resolving_to_a_denied_address_is_refused() {
        let base = server().await;
        let port = base.rsplit(':').next().unwrap();
        let http = with_networks(&[], &["127.0.0.0/8", "::1"]);
        let message = refusal(
            http.run(
                json!({"url": format!("http://localhost:{port}/echo?token=t0ken")}),
                ctx(),
            )
            .await,
        );
        assert!(
            message.starts_with("http: localhost resolves only to denied addresses ("),
            "{message}"
        );
        assert!(message.ends_with("; see --http-allow-network"), "{message}");
        assert!(!message.contains("t0ken"), "{message}");
        // The literal address of the same server is refused before connecting, too.
        let message = refusal(
            http.run(json!({"url": format!("{base}/echo")}), ctx())
                .await,
        );
        assert!(message.contains("(127.0.0.0/8)"), "{message}");
    }

    #[tokio::test]
    async fn redirect_to_a_denied_address_is_refused() {
        let base = server().await;
        let (listener, addr) = watcher("127.0.0.2");
        let http = with_networks(&[], &["127.0.0.2/32"]);
        for target in [
            format!("http://{addr}/x?token=t0ken"),
            format!("http://[::ffff:127.0.0.2]:{}/x", addr.port()),
        ] {
            let message = refusal(
                http.run(
                    json!({
                        "url": format!("{base}/go"),
                        "query": {"to": target},
                    }),
                    ctx(),
                )
                .await,
            );
            assert!(
                message.contains("127.0.0.2 is in a denied network (127.0.0.2/32)"),
                "{target}: {message}"
            );
            assert!(!message.contains("t0ken"), "{message}");
        }
        // Not following redirects, the answer itself is the result.
        let out = http
            .run(
                json!({
                    "url": format!("{base}/go"),
                    "query": {"to": format!("http://{addr}/x")},
                    "follow_redirects": false,
                }),
                ctx(),
            )
            .await
            .unwrap();
        assert_eq!(out.metadata["http_status"], 307);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_no_connection(&listener);
        // Allowed hops are still followed, and loops still end.
        let out = http
            .run(
                json!({"url": format!("{base}/go"), "query": {"to": "/echo?hop=1"}}),
                ctx(),
            )
            .await
            .unwrap();
        assert_eq!(out.output["query"], "hop=1");
        let r = http
            .run(json!({"url": format!("{base}/loop")}), ctx())
            .await;
        let Err(ActionError::Server { message, .. }) = r else {
            panic!("{r:?}")
        };
        assert!(message.contains("too many redirects"), "{message}");
    }

    #[tokio::test]
    async fn allow_overrides_deny() {
        let base = server().await;
        let port = base.rsplit(':').next().unwrap();
        let http = with_networks(&["127.0.0.1"], &["127.0.0.0/8", "::1"]);
        let out = http
            .run(json!({"url": format!("{base}/echo")}), ctx())
            .await
            .unwrap();
        assert_eq!(out.metadata["http_status"], 200);
        // `localhost` keeps its allowed address (127.0.0.1) and loses the denied ones (::1).
        let out = http
            .run(
                json!({"url": format!("http://localhost:{port}/echo")}),
                ctx(),
            )
            .await
            .unwrap();
        assert_eq!(out.metadata["http_status"], 200);
        let message = refusal(http.run(json!({"url": "http://127.0.0.3/"}), ctx()).await);
        assert!(message.contains("(127.0.0.0/8)"), "{message}");
    }

    #[tokio::test]
    async fn ipv4_mapped_ipv6_is_judged_as_ipv4() {
        let (listener, addr) = watcher("127.0.0.2");
        let http = with_networks(&[], &["127.0.0.2/32"]);
        let message = refusal(
            http.run(
                json!({"url": format!("http://[::ffff:127.0.0.2]:{}/", addr.port())}),
                ctx(),
            )
            .await,
        );
        assert_eq!(
            message,
            "http: ::ffff:127.0.0.2 is in a denied network (127.0.0.2/32); see --http-allow-network"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_no_connection(&listener);
        for url in [
            "http://[::ffff:169.254.169.254]/latest/meta-data/",
            "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
        ] {
            let message = refusal(Http::new().run(json!({ "url": url }), ctx()).await);
            assert!(message.contains("(169.254.0.0/16)"), "{url}: {message}");
        }
    }

    #[tokio::test]
    async fn connection_refused_is_a_server_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let r = Http::new()
            .run(json!({"url": format!("http://{addr}/")}), ctx())
            .await;
        assert!(matches!(r, Err(ActionError::Server { .. })), "{r:?}");
    }

    #[tokio::test]
    async fn clients_are_reused() {
        let base = server().await;
        let http = Http::new();
        for _ in 0..3 {
            http.run(json!({"url": format!("{base}/echo")}), ctx())
                .await
                .unwrap();
        }
        let a: *const reqwest::Client = http.client(false, true).unwrap();
        let b: *const reqwest::Client = http.client(false, true).unwrap();
        assert!(std::ptr::eq(a, b));
        assert!(
            http.clients[2].get().is_none(),
            "insecure client built without being asked"
        );
        let c: *const reqwest::Client = http.client(true, true).unwrap();
        assert!(!std::ptr::eq(a, c));
    }

    #[tokio::test]
    async fn bad_run_config_is_fatal_naming_the_field() {
        let http = Http::new();
        for (config, field) in [
            (json!({}), "url"),
            (json!({"url": "not a url"}), "url"),
            (json!({"url": "ftp://example.com/"}), "url"),
            (json!({"url": "http://x/", "method": "GE T"}), "method"),
            (
                json!({"url": "http://x/", "headers": {"bad name": "v"}}),
                "headers.bad name",
            ),
            (
                json!({"url": "http://x/", "headers": {"X": "a\nb"}}),
                "headers.X",
            ),
            (
                json!({"url": "http://x/", "headers": {"X": 1}}),
                "headers.X",
            ),
            (json!({"url": "http://x/", "query": {"q": [1]}}), "query.q"),
            (json!({"url": "http://x/", "timeout": "soon"}), "timeout"),
            (json!({"url": "http://x/", "timeout": 0}), "timeout"),
            (
                json!({"url": "http://x/", "insecure_skip_verify": "yes"}),
                "insecure_skip_verify",
            ),
            (
                json!({"url": "http://x/", "max_response_bytes": -1}),
                "max_response_bytes",
            ),
            (
                json!({"url": "http://x/", "auth": {"digest": {}}}),
                "auth.digest",
            ),
            (
                json!({"url": "http://x/", "auth": {"basic": {"password": "p"}}}),
                "auth.basic.user",
            ),
            (json!({"url": "http://x/", "surprise": 1}), "surprise"),
        ] {
            let r = http.run(config.clone(), ctx()).await;
            let Err(ActionError::Fatal { message }) = r else {
                panic!("{config}: {r:?}")
            };
            assert!(message.contains(field), "{config}: {message}");
        }
    }

    #[test]
    fn validate() {
        let http = Http::new();
        let ok = [
            json!({"url": "https://example.com/x"}),
            json!({"url": "{{ inputs.url }}"}),
            json!({"url": "https://{{ inputs.host }}/x", "method": "{{ inputs.method }}"}),
            json!({
                "url": "http://example.com",
                "method": "delete",
                "headers": {"X-A": "{{ secrets.a }}"},
                "query": {"a": 1, "b": true, "c": "{{ x }}"},
                "body": {"anything": ["goes"]},
                "timeout": "{{ inputs.timeout }}",
                "auth": {"bearer": "{{ secrets.token }}"},
                "insecure_skip_verify": "{{ inputs.insecure }}",
                "follow_redirects": false,
                "max_response_bytes": "{{ inputs.max }}",
            }),
            json!({"url": "http://x", "auth": "{{ inputs.auth }}", "headers": "{{ inputs.headers }}"}),
            json!({"url": "http://x", "auth": {"basic": {"user": "u"}}, "timeout": 2.5}),
            json!("{{ inputs.request }}"),
        ];
        for config in ok {
            assert_eq!(http.validate(&config), Ok(()), "{config}");
        }
        let bad = [
            (json!({}), "url"),
            (json!({"method": "GET"}), "url"),
            (json!({"url": 5}), "url"),
            (json!({"url": "no scheme"}), "url"),
            (json!({"url": "http://x", "methd": "GET"}), "methd"),
            (json!({"url": "http://x", "method": 1}), "method"),
            (json!({"url": "http://x", "headers": {"X": 1}}), "headers.X"),
            (json!({"url": "http://x", "headers": ["X"]}), "headers[0]"),
            (
                json!({"url": "http://x", "query": {"q": {"a": 1}}}),
                "query.q",
            ),
            (json!({"url": "http://x", "timeout": "fast"}), "timeout"),
            (json!({"url": "http://x", "timeout": true}), "timeout"),
            (
                json!({"url": "http://x", "insecure_skip_verify": "true"}),
                "insecure_skip_verify",
            ),
            (
                json!({"url": "http://x", "follow_redirects": 1}),
                "follow_redirects",
            ),
            (
                json!({"url": "http://x", "max_response_bytes": 0}),
                "max_response_bytes",
            ),
            (
                json!({"url": "http://x", "max_response_bytes": 1.5}),
                "max_response_bytes",
            ),
            (json!({"url": "http://x", "auth": {}}), "auth"),
            (
                json!({"url": "http://x", "auth": {"bearer": "a", "basic": {"user": "u"}}}),
                "auth",
            ),
            (
                json!({"url": "http://x", "auth": {"basic": {"user": "u", "pass": "p"}}}),
                "auth.basic.pass",
            ),
            (
                json!({"url": "http://x", "auth": {"bearer": 5}}),
                "auth.bearer",
            ),
            (json!(null), ""),
        ];
        for (config, field) in bad {
            let e = http.validate(&config).expect_err(&config.to_string());
            assert_eq!(e.field, field, "{config}: {e}");
        }
    }
}
