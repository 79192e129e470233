//! Who is calling, and whether they may: API tokens, the reverse-proxy user, and the
//! authorization middleware that checks every request against the route table
//! ([`crate::scopes::ROUTES`]).
//!
//! A caller is, in this order:
//! 1. the bearer token, when the request has one (or the password of basic auth, which µTask's
//!    clients send): the admin token (scope `admin`), or an API token (its scopes; refused
//!    with 401 when unknown, revoked or expired);
//! 2. without a bearer token, the user a trusted reverse proxy names in its user header, with
//!    the scopes the proxy scopes file gives that user and its groups; the header is honoured
//!    only when the TCP peer is in the trusted networks;
//! 3. otherwise nobody: 401.
//!
//! On top of scopes, people named on a task may act on it (µTask's model): its requester may
//! read and cancel it, and edit it while it waits for a resolver (µTask's `PUT /task/{id}`);
//! its resolvers (the task's `resolver_usernames` and its template's
//! `allowed_resolver_usernames` / `allow_all_resolver_usernames`) may read, resolve and retry
//! it; its watchers (`watcher_usernames`) may read it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use taskhook_model::Template;
use taskhook_model::scope;
use taskhook_store::{TaskRow, now_ms};

use crate::scopes::{Access, RouteScope};
use crate::{AppState, Problem};

/// How often at most a token's `last_used_at` is written.
const LAST_USED_EVERY_MS: i64 = 60_000;

/// Who made the request, as the authorization middleware found them. Handlers extract it
/// (only on routes that need a caller; the middleware has already refused anyone else).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The actor name recorded in audit trails and as a task's requester: `admin`, a token's
    /// user or `token:<id>`, or the proxy's user.
    pub name: String,
    /// The person behind the call, when there is one (a token's `user`, the proxy's user):
    /// what requester, watcher and resolver grants are matched against.
    pub user: Option<String>,
    /// The API token's id, when the call came with one.
    pub token_id: Option<String>,
    /// Scopes held; `admin` grants everything.
    pub scopes: Arc<Vec<String>>,
}

impl Caller {
    pub fn admin() -> Caller {
        Caller {
            name: "admin".into(),
            user: None,
            token_id: None,
            scopes: Arc::new(vec![scope::ADMIN.to_string()]),
        }
    }

    /// Whether the caller holds `required`.
    pub fn may(&self, required: &str) -> bool {
        scope::satisfies(&self.scopes, required)
    }

    /// 403 unless the caller holds `required`.
    pub fn require(&self, required: &str) -> Result<(), Problem> {
        if self.may(required) {
            Ok(())
        } else {
            Err(forbidden(required))
        }
    }

    /// 403 unless the caller holds `admin`.
    /// Whether this is the admin token itself.
    pub fn is_admin_token(&self) -> bool {
        self.token_id.is_none() && self.user.is_none() && self.name == "admin"
    }

    /// The bucket of this caller's request-rate limit: its token, or its proxy user.
    pub fn limit_key(&self) -> String {
        match &self.token_id {
            Some(id) => format!("token:{id}"),
            None => format!("user:{}", self.name),
        }
    }

    pub fn require_admin(&self) -> Result<(), Problem> {
        self.require(scope::ADMIN)
    }

    /// Whether `name` is the caller's user.
    pub fn is_user(&self, name: &str) -> bool {
        self.user.as_deref() == Some(name)
    }

    /// Whether the caller may read `task`: `tasks:read:<template>`, or a person named on the
    /// task itself (its requester, resolvers or watchers). A template's resolvers are checked
    /// by [`people_grant`], which reads the template.
    pub fn may_read_task(&self, task: &TaskRow) -> bool {
        self.may(&format!("tasks:read:{}", task.template))
            || self.user.as_deref().is_some_and(|u| {
                task.requester == u || task.people.is_resolver(u) || task.people.is_watcher(u)
            })
    }
}

pub(crate) fn forbidden(required: &str) -> Problem {
    Problem::field(
        StatusCode::FORBIDDEN,
        "scope",
        format!("this needs the scope {required:?}, which the caller does not hold"),
    )
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Problem> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(Problem::unauthorized)
    }
}

/// Scopes for users and groups named by a trusted reverse proxy (`serve --proxy-scopes`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyScopes {
    #[serde(default)]
    pub users: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
}

impl ProxyScopes {
    /// Parses the YAML (or JSON) file, checking every scope's spelling.
    pub fn parse(text: &str) -> Result<ProxyScopes, String> {
        let p: ProxyScopes =
            taskhook_model::template::parse_document(text).map_err(|e| e.message)?;
        for (kind, map) in [("users", &p.users), ("groups", &p.groups)] {
            for (who, scopes) in map {
                for (i, s) in scopes.iter().enumerate() {
                    scope::check(s).map_err(|e| format!("{kind}.{who}[{i}]: {e}"))?;
                }
            }
        }
        Ok(p)
    }

    fn scopes_of(&self, user: &str, groups: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = self.users.get(user).cloned().unwrap_or_default();
        for g in groups {
            if let Some(s) = self.groups.get(*g) {
                out.extend(s.iter().cloned());
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Reverse-proxy mode: the user (and groups) a proxy in front of the server authenticated.
#[derive(Debug, Clone)]
pub struct ProxyAuth {
    pub user_header: HeaderName,
    pub groups_header: Option<HeaderName>,
    /// Only requests whose TCP peer is in one of these networks may name a user.
    pub trusted: Vec<IpNet>,
    pub scopes: ProxyScopes,
}

impl ProxyAuth {
    fn trusts(&self, peer: IpAddr) -> bool {
        crate::forwarded::is_trusted(&self.trusted, peer)
    }
}

/// Authentication settings and bookkeeping shared by every request.
#[derive(Debug, Default)]
pub struct Identity {
    pub proxy: Option<ProxyAuth>,
    /// Peers whose forwarding headers name the client (`--trusted-proxies`): the address rate
    /// limits and the audit log use (see `crate::forwarded`).
    pub trusted_proxies: Vec<IpNet>,
    /// When each token's `last_used_at` was last written by this process.
    last_used: Mutex<HashMap<String, i64>>,
}

impl Identity {
    pub fn new(proxy: Option<ProxyAuth>, trusted_proxies: Vec<IpNet>) -> Identity {
        Identity {
            proxy,
            trusted_proxies,
            last_used: Mutex::default(),
        }
    }

    /// Whether this use of a token should be written (at most once a minute per token).
    fn should_touch(&self, id: &str, now: i64) -> bool {
        let mut map = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(t) if now - t < LAST_USED_EVERY_MS => false,
            _ => {
                map.insert(id.to_string(), now);
                true
            }
        }
    }
}

/// Hex SHA-256 of a token, as stored.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The token a request presents: `Authorization: Bearer <token>`, or, for clients written
/// for µTask, `Authorization: Basic` whose password is the token (the user name is not
/// read: the token says who the caller is). Another scheme, or an empty token, is 401.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| Problem::unauthorized())?;
    let token = if let Some(t) = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
    {
        Some(t.trim().to_string())
    } else if let Some(b) = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))
    {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|d| d.split_once(':').map(|(_, password)| password.to_string()))
    } else {
        None
    };
    token
        .filter(|t| !t.is_empty())
        .map(Some)
        .ok_or_else(Problem::unauthorized)
}

/// The caller of a request, or 401.
async fn authenticate(
    s: &AppState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<Caller, Problem> {
    if let Some(token) = bearer(headers)? {
        let token = token.as_str();
        if s.admin.matches(token) {
            return Ok(Caller::admin());
        }
        let row = s
            .engine
            .store()
            .token_by_hash(&token_hash(token))
            .await?
            .ok_or_else(Problem::unauthorized)?;
        let now = now_ms();
        if row.revoked_at.is_some() {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "this token has been revoked",
            ));
        }
        if !row.is_valid_at(now) {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "this token has expired",
            ));
        }
        if s.identity.should_touch(&row.id, now) {
            let store = s.engine.store().clone();
            let id = row.id.clone();
            tokio::spawn(async move {
                if let Err(e) = store.touch_token(&id, now).await {
                    tracing::warn!(token = %id, "recording a token's last use failed: {e}");
                }
            });
        }
        return Ok(Caller {
            name: row
                .user
                .clone()
                .unwrap_or_else(|| format!("token:{}", row.id)),
            user: row.user,
            token_id: Some(row.id),
            scopes: Arc::new(row.scopes),
        });
    }
    if let Some(proxy) = &s.identity.proxy
        && let Some(peer) = peer
        && proxy.trusts(peer.ip())
        && let Some(user) = headers
            .get(&proxy.user_header)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|u| !u.is_empty())
    {
        let groups: Vec<&str> = proxy
            .groups_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split([',', ' '])
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        return Ok(Caller {
            name: user.to_string(),
            user: Some(user.to_string()),
            token_id: None,
            scopes: Arc::new(proxy.scopes.scopes_of(user, &groups)),
        });
    }
    Err(Problem::unauthorized())
}

/// The template a task was created from, as a template document.
async fn template_of_task(s: &AppState, task: &TaskRow) -> Option<Template> {
    let row = s
        .engine
        .store()
        .get_template_version(&task.template, task.template_version)
        .await
        .ok()??;
    serde_json::from_value(row.body).ok()
}

/// Whether the caller may retry `task` (`POST /api/v1/tasks/{id}/retry`): its scope, or a
/// resolver of the task or its template.
pub(crate) async fn may_retry(s: &AppState, caller: &Caller, task: &TaskRow) -> bool {
    let Some(route) = crate::scopes::lookup("POST", "/api/v1/tasks/{id}/retry") else {
        return false;
    };
    let required = format!("tasks:resolve:{}", task.template);
    caller.may(&required) || people_grant(s, caller, task, route).await
}

/// What people named on a task may do on top of scopes, for the route `route`.
async fn people_grant(s: &AppState, caller: &Caller, task: &TaskRow, route: &RouteScope) -> bool {
    let Some(user) = caller.user.as_deref() else {
        return false;
    };
    let verb = route.scope.split(':').nth(1).unwrap_or("");
    let requester = task.requester == user;
    let resolver = || async {
        task.people.is_resolver(user)
            || template_of_task(s, task).await.is_some_and(|t| {
                t.allow_all_resolver_usernames
                    || t.allowed_resolver_usernames.iter().any(|u| u == user)
            })
    };
    match verb {
        "read" | "comment" => requester || task.people.is_watcher(user) || resolver().await,
        "cancel" => requester && route.path.ends_with("/cancel"),
        // µTask lets the requester edit a task that has no resolution yet.
        "resolve" if route.method == "PUT" && route.path == "/utask/task/{id}" => {
            (requester && task.state == taskhook_model::TaskState::Todo) || resolver().await
        }
        "resolve" => resolver().await,
        _ => false,
    }
}

/// The authorization middleware: finds the request's route in the table, authenticates the
/// caller when the route needs one, fills the scope and checks it. The caller is handed to
/// the handler as a request extension.
pub(crate) async fn authorize(State(s): State<AppState>, request: Request, next: Next) -> Response {
    let Some(matched) = request.extensions().get::<MatchedPath>().cloned() else {
        return next.run(request).await;
    };
    let Some(route) = crate::scopes::lookup(request.method().as_str(), matched.as_str()) else {
        let allowed = crate::scopes::methods_of(matched.as_str());
        if !allowed.is_empty() {
            // The path exists, this method does not: say which do, as the router would.
            return method_not_allowed(&allowed).into_response();
        }
        return Problem::new(
            StatusCode::FORBIDDEN,
            "no scope is defined for this route, so nobody may call it",
        )
        .into_response();
    };
    match route.access {
        Access::Public | Access::OwnCredential(_) => return next.run(request).await,
        Access::Scope | Access::Filtered | Access::Authenticated => {}
    }
    let (mut parts, body) = request.into_parts();
    let caller = match parts.extensions.remove::<Authenticated>() {
        Some(Authenticated(c)) => c,
        None => match authenticate(&s, &parts.headers, peer_of(&parts.extensions)).await {
            Ok(c) => c,
            Err(p) => return p.into_response(),
        },
    };
    let mut body = axum::body::Body::new(body);
    if route.access == Access::Scope {
        match check(&s, &mut parts, body, &caller, route).await {
            Ok(b) => body = b,
            Err(p) => return p.into_response(),
        }
    }
    let actor = crate::audit::Actor(caller.name.clone());
    parts.extensions.insert(caller);
    let mut response = next.run(Request::from_parts(parts, body)).await;
    response.extensions_mut().insert(actor);
    response
}

/// 405 with the `Allow` header listing `allowed`.
pub(crate) fn method_not_allowed(allowed: &[&str]) -> Response {
    let list = allowed.join(", ");
    let mut response = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this path accepts {list}"),
    )
    .into_response();
    if let Ok(v) = header::HeaderValue::from_str(&list) {
        response.headers_mut().insert(header::ALLOW, v);
    }
    response
}

/// A caller already authenticated by an outer layer (the rate limits), so that a request's
/// credentials are checked once.
#[derive(Clone)]
pub(crate) struct Authenticated(pub(crate) Caller);

/// The caller of a request, when its credentials authenticate one.
pub(crate) async fn authenticate_request(
    s: &AppState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Option<Caller> {
    if !headers.contains_key(header::AUTHORIZATION) && s.identity.proxy.is_none() {
        return None;
    }
    authenticate(s, headers, peer).await.ok()
}

fn peer_of(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

/// Checks the route's scope for this request; gives the body back (read when the scope
/// depends on it).
async fn check(
    s: &AppState,
    parts: &mut Parts,
    body: axum::body::Body,
    caller: &Caller,
    route: &RouteScope,
) -> Result<axum::body::Body, Problem> {
    let params: Vec<(String, String)> = match RawPathParams::from_request_parts(parts, s).await {
        Ok(p) => p
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        Err(e) => return Err(Problem::new(StatusCode::BAD_REQUEST, e.body_text())),
    };
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    // A scope that names a field of the JSON body reads the body first (and gives it back).
    let mut body = body;
    let mut fields: Option<serde_json::Value> = None;
    if route.scope.contains("{body.")
        || (route.scope.contains("{template}") && param("id").is_none())
    {
        let bytes = axum::body::to_bytes(body, s.limits.max_body_bytes)
            .await
            .map_err(|_| {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body is larger than the configured limit",
                )
            })?;
        fields = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
        body = axum::body::Body::from(bytes);
    }
    let body_field = |k: &str| {
        fields
            .as_ref()
            .and_then(|v| v.get(k)?.as_str().map(String::from))
    };
    if route.scope.contains("{template}") {
        // The task named by the path's `{id}`, or, on a route without one (µTask's
        // `POST /utask/resolution`), by the body's `task_id`.
        let Some(id) = param("id").or_else(|| body_field("task_id")) else {
            // Without a task id the handler answers 400 and changes nothing.
            return Ok(body);
        };
        let task = match s.engine.store().get_task(&id).await? {
            Some((t, _)) => t,
            None => return Err(Problem::not_found(format!("task {id}"))),
        };
        let required = crate::scopes::fill(route.scope, |k| match k {
            "template" => Some(task.template.clone()),
            other => param(other),
        })
        .unwrap_or_else(|| route.scope.to_string());
        if caller.may(&required) || people_grant(s, caller, &task, route).await {
            return Ok(body);
        }
        return Err(forbidden(&required));
    }
    if route.scope.contains("{body.") {
        // Without the field the handler answers 400 and changes nothing.
        if let Some(required) =
            crate::scopes::fill(route.scope, |k| match k.strip_prefix("body.") {
                Some(field) => body_field(field),
                None => param(k),
            })
        {
            caller.require(&required)?;
        }
        return Ok(body);
    }
    let required =
        crate::scopes::fill(route.scope, param).unwrap_or_else(|| route.scope.to_string());
    caller.require(&required)?;
    Ok(body)
}

/// Most task rows one listing reads while looking for rows the caller may read.
const MAX_SCANNED: usize = 10_000;

/// A page of tasks the caller may read, newest first, and the cursor of the next page. Rows
/// the caller may not read are skipped (reading further pages) so a page is full when it can
/// be; at most [`MAX_SCANNED`] rows are read per call, after which the page ends early with a
/// cursor.
pub(crate) async fn readable_tasks(
    s: &AppState,
    caller: &Caller,
    filter: taskhook_store::TaskFilter,
) -> Result<(Vec<TaskRow>, Option<String>), Problem> {
    tasks_where(s, filter, |t| caller.may_read_task(t)).await
}

/// [`readable_tasks`] with any test of a row: a page of the tasks `keep` accepts, scanned the
/// same way (full pages when they can be, at most [`MAX_SCANNED`] rows a call).
pub(crate) async fn tasks_where(
    s: &AppState,
    mut filter: taskhook_store::TaskFilter,
    mut keep: impl FnMut(&TaskRow) -> bool,
) -> Result<(Vec<TaskRow>, Option<String>), Problem> {
    let limit = filter.limit;
    let mut cursor = filter.before.take();
    let mut out = Vec::new();
    let mut scanned = 0usize;
    loop {
        let rows = s
            .engine
            .store()
            .list_tasks(taskhook_store::TaskFilter {
                before: cursor.clone(),
                ..filter.clone()
            })
            .await?;
        let full_page = rows.len() == limit as usize;
        for t in rows {
            scanned += 1;
            cursor = Some(t.id.clone());
            if keep(&t) {
                out.push(t);
                if out.len() == limit as usize {
                    return Ok((out, cursor));
                }
            }
        }
        if !full_page {
            return Ok((out, None));
        }
        if scanned >= MAX_SCANNED {
            return Ok((out, cursor));
        }
    }
}
