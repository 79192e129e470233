//! The audit log of write calls: one middleware records every API call that could change
//! something (every method but GET, HEAD and OPTIONS, and every trigger and webhook, as
//! maintenance mode counts them), refused ones included, with who made it, the method and
//! route, its target, the status answered (and the problem, for failures), the time and the
//! client's address. The record is committed before the response leaves: the handler and
//! the record run in a task of their own, so a client hanging up mid-call cannot leave a
//! committed change unrecorded.
//!
//! `GET /api/v1/audit` reads these records together with the task events (every task state
//! change), newest first.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use taskhook_store::{
    AuditCursor, AuditEntry, AuditFilter, AuditKind, AuditOutcome, NewCall, now_ms,
};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::dto::time;
use crate::{AppState, Problem};

/// The longest problem text kept with a failed call.
const MAX_ERROR_CHARS: usize = 500;

/// Who made a request, as [`actor_of`] found it; set once by the outermost middleware.
#[derive(Debug, Clone)]
pub(crate) struct Actor(pub String);

/// What a problem said, attached to its response for the audit record.
#[derive(Debug, Clone)]
pub(crate) struct ProblemNote(pub String);

/// Who is calling, before authorization has run:
/// - provider webhooks and secret-token triggers: `hook:<group>/<id>` (the hook's sender; a
///   bad signature or token shows as the call's 401);
/// - the caller `caller` authenticated (`admin`, a token's user or `token:<id>`, a proxy user);
/// - anything else (no token, or one that does not authenticate): `anonymous`.
///
/// The rate limits key on it; the audit record takes the caller authorization found.
pub(crate) fn actor_of(req: &Request, caller: Option<&Caller>) -> String {
    if let Some(route) = req.extensions().get::<MatchedPath>()
        && is_hook_sender(route.as_str())
    {
        let params = path_params(route.as_str(), req.uri().path());
        let find = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        if let (Some(g), Some(i)) = (find("group"), find("id")) {
            return format!("hook:{g}/{i}");
        }
    }
    match caller {
        Some(c) => c.name.clone(),
        None => "anonymous".to_string(),
    }
}

/// Routes whose callers authenticate as a hook's sender (signature or secret token), not
/// with a bearer token.
pub(crate) fn is_hook_sender(route: &str) -> bool {
    route.starts_with("/api/v1/hooks/")
        && (route.ends_with("/webhook") || route.ends_with("/trigger/{token}"))
}

/// The TCP peer of the connection (behind a trusted proxy, the client is
/// [`crate::forwarded::client_ip`]).
pub(crate) fn client_of(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// `(name, value)` of each `{name}` segment of `route` in `path`, percent-decoded.
pub(crate) fn path_params(route: &str, path: &str) -> Vec<(String, String)> {
    route
        .split('/')
        .zip(path.split('/'))
        .filter_map(|(r, p)| {
            let name = r.strip_prefix('{')?.strip_suffix('}')?;
            Some((name.to_string(), percent_decode(p)))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let pair = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        match pair {
            Some((hi, lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a call was about: its path parameters but secrets (`/`-joined: a template name, a
/// task id, `group/id`), else the resource a creation answered with (`Location`).
fn target_of(route: &str, path: &str, response: &Response) -> Option<String> {
    let values: Vec<String> = path_params(route, path)
        .into_iter()
        .filter(|(k, _)| k != "token")
        .map(|(_, v)| v)
        .collect();
    if !values.is_empty() {
        return Some(values.join("/"));
    }
    let location = response.headers().get(header::LOCATION)?.to_str().ok()?;
    location
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .map(percent_decode)
}

/// The middleware: records write calls (see the module documentation); other calls pass.
pub(crate) async fn record(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(route) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
    else {
        return next.run(req).await;
    };
    if !crate::maintenance::may_write(req.method(), Some(&route)) {
        return next.run(req).await;
    }
    let guess = match req.extensions().get::<Actor>() {
        Some(a) => a.0.clone(),
        None => actor_of(&req, req.extensions().get::<Caller>()),
    };
    let action = format!("{} {route}", req.method());
    let path = req.uri().path().to_string();
    let client = crate::forwarded::client_ip(&s, &req).map(|ip| ip.to_string());
    let at = now_ms();
    // The handler and the record run to the end even when the client hangs up.
    let done = tokio::spawn(async move {
        let response = next.run(req).await;
        let status = response.status();
        // The caller authorization found, when it found one.
        let actor = match response.extensions().get::<Actor>() {
            Some(a) => a.0.clone(),
            None => guess,
        };
        let error = (status.as_u16() >= 400).then(|| {
            let text = match response.extensions().get::<ProblemNote>() {
                Some(n) => n.0.clone(),
                None => status.canonical_reason().unwrap_or("Error").to_string(),
            };
            truncate(text, MAX_ERROR_CHARS)
        });
        let call = NewCall {
            id: uuid::Uuid::now_v7().to_string(),
            at,
            actor,
            target: target_of(&route, &path, &response),
            action,
            status: status.as_u16(),
            error,
            client,
        };
        if let Err(e) = s.engine.store().record_call(call.clone()).await {
            // The call's own outcome stands (a change it made is committed); the record is lost.
            tracing::error!(error = %e, actor = %call.actor, action = %call.action,
                target = ?call.target, status = call.status, "recording an API call in the audit log failed");
        }
        response
    });
    match done.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "a request task failed");
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "the request failed").into_response()
        }
    }
}

fn truncate(mut s: String, max_chars: usize) -> String {
    if let Some((i, _)) = s.char_indices().nth(max_chars) {
        s.truncate(i);
        s.push('…');
    }
    s
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/audit", get(list_audit))
}

/// `GET /api/v1/audit` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    outcome: Option<String>,
    since: Option<String>,
    until: Option<String>,
    kind: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// One audit entry: an API call (`kind` `call`) or a task event (`kind` `task`).
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryOut {
    /// `call` or `task`.
    pub kind: String,
    /// RFC 3339.
    pub at: String,
    /// `admin`, a token's name, `hook:<group>/<id>`, `anonymous`; for task events also
    /// `engine` or the instance that acted.
    pub actor: String,
    /// Calls: method and route (`POST /api/v1/tasks`); task events: what happened
    /// (`created`, `claimed`, `cancelled`…).
    pub action: String,
    /// Calls: the template name, task id, `group/id`… the call was about; task events: the task id.
    pub target: Option<String>,
    /// `ok` or `error`.
    pub outcome: String,
    /// Calls: the HTTP status answered.
    pub status: Option<u16>,
    /// Calls that failed: the problem's title and detail.
    pub error: Option<String>,
    /// Calls: the client's address.
    pub client: Option<String>,
    /// Task events: the state before.
    pub from_state: Option<String>,
    /// Task events: the state after.
    pub to_state: Option<String>,
    /// Task events: what else was recorded (any JSON value).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

impl From<AuditEntry> for AuditEntryOut {
    fn from(e: AuditEntry) -> Self {
        AuditEntryOut {
            kind: e.kind.as_str().to_string(),
            at: time(e.at),
            actor: e.actor,
            action: e.action,
            target: e.target,
            outcome: if e.status.is_some_and(|s| s >= 400) {
                "error"
            } else {
                "ok"
            }
            .to_string(),
            status: e.status,
            error: e.error,
            client: e.client,
            from_state: e.from_state,
            to_state: e.to_state,
            detail: e.detail,
        }
    }
}

/// A page of the audit view.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntryOut>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn bad(field: &str, detail: impl Into<String>) -> Problem {
    Problem::field(StatusCode::BAD_REQUEST, field, detail)
}

fn parse_time(field: &str, v: &str) -> Result<i64, Problem> {
    v.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| bad(field, format!("not an RFC 3339 time: {e}")))
}

/// Longest `actor`, `action` or `target` filter, in characters.
pub(crate) const MAX_FILTER_CHARS: usize = 1000;

/// The form of `outcome`, as the OpenAPI document declares it.
pub(crate) const OUTCOME_PATTERN: &str = "^(ok|error|[1-5][0-9][0-9])$";
/// The form of `kind`, as the OpenAPI document declares it.
pub(crate) const KIND_PATTERN: &str = "^(call|task)(,(call|task))*$";

fn nonempty(field: &str, v: Option<String>) -> Result<Option<String>, Problem> {
    match v {
        Some(v) if v.is_empty() || v.chars().count() > MAX_FILTER_CHARS => Err(bad(
            field,
            format!("must be 1-{MAX_FILTER_CHARS} characters"),
        )),
        other => Ok(other),
    }
}

/// The filter a query asks for, or a problem naming the bad parameter.
fn filter_of(q: AuditQuery) -> Result<AuditFilter, Problem> {
    let outcome = match q.outcome.as_deref() {
        None => None,
        Some("ok") => Some(AuditOutcome::Ok),
        Some("error") => Some(AuditOutcome::Error),
        // Three digits exactly (OUTCOME_PATTERN): no sign, no leading zero.
        Some(s) => match s.parse::<u16>() {
            Ok(n) if s.len() == 3 && (100..=599).contains(&n) => Some(AuditOutcome::Status(n)),
            _ => return Err(bad("outcome", "use ok, error or an HTTP status (100-599)")),
        },
    };
    let kinds = match q.kind.as_deref() {
        None => vec![],
        Some(k) => k
            .split(',')
            .map(|k| AuditKind::parse(k).ok_or_else(|| bad("kind", "use call, task or call,task")))
            .collect::<Result<_, _>>()?,
    };
    let since = q
        .since
        .as_deref()
        .map(|v| parse_time("since", v))
        .transpose()?;
    let until = q
        .until
        .as_deref()
        .map(|v| parse_time("until", v))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && s >= u
    {
        return Err(bad("until", "must be later than since"));
    }
    let before = q
        .cursor
        .as_deref()
        .map(|c| c.parse::<AuditCursor>().map_err(|e| bad("cursor", e)))
        .transpose()?;
    Ok(AuditFilter {
        kinds,
        actor: nonempty("actor", q.actor)?,
        action: nonempty("action", q.action)?,
        target: nonempty("target", q.target)?,
        outcome,
        since,
        until,
        before,
        limit: crate::api::page_limit(q.limit)?,
    })
}

#[utoipa::path(get, path = "/api/v1/audit", params(
        ("actor" = Option<String>, Query, description = "Only entries by this actor (admin, a token's name, hook:<group>/<id>, anonymous, engine…)"),
        ("action" = Option<String>, Query, description = "Only this action: a call's `METHOD /route` (POST /api/v1/tasks) or a task event's kind (created, cancelled…)"),
        ("target" = Option<String>, Query, description = "Only entries about this target: a template name, task id, group/id…"),
        ("outcome" = Option<String>, Query, description = "ok, error, or an HTTP status (task events count as ok)"),
        ("since" = Option<String>, Query, description = "Entries at or after this time (RFC 3339)"),
        ("until" = Option<String>, Query, description = "Entries before this time (RFC 3339)"),
        ("kind" = Option<String>, Query, description = "call, task, or call,task (default)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1-1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    description = "The audit log (admin only): every API call that could change something, refused ones included, and every task state change, newest first.",
    responses((status = 200, body = AuditPage), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub(crate) async fn list_audit(
    _c: Caller,
    State(s): State<AppState>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, Problem> {
    let Query(q) = q.map_err(|e| bad("query", e.body_text()))?;
    let filter = filter_of(q)?;
    let limit = filter.limit as usize;
    let rows = s.engine.store().list_audit(filter).await?;
    let next_cursor = (rows.len() == limit)
        .then(|| rows.last().map(|e| e.cursor().to_string()))
        .flatten();
    Ok(Json(AuditPage {
        entries: rows.into_iter().map(AuditEntryOut::from).collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_params_follow_the_route() {
        assert_eq!(
            path_params(
                "/api/v1/hooks/{group}/{id}/trigger/{token}",
                "/api/v1/hooks/ci/de%2Fploy/trigger/s3cr3t"
            ),
            [
                ("group".to_string(), "ci".to_string()),
                ("id".to_string(), "de/ploy".to_string()),
                ("token".to_string(), "s3cr3t".to_string())
            ]
        );
        assert!(path_params("/api/v1/tasks", "/api/v1/tasks").is_empty());
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert!(is_hook_sender("/api/v1/hooks/{group}/{id}/webhook"));
        assert!(is_hook_sender("/api/v1/hooks/{group}/{id}/trigger/{token}"));
        assert!(!is_hook_sender("/api/v1/hooks/{group}/{id}/trigger"));
    }

    #[test]
    fn targets_leave_secrets_out() {
        let r = Response::new(axum::body::Body::empty());
        assert_eq!(
            target_of(
                "/api/v1/hooks/{group}/{id}/trigger/{token}",
                "/api/v1/hooks/g/h/trigger/secret",
                &r
            ),
            Some("g/h".into())
        );
        let mut created = Response::new(axum::body::Body::empty());
        created
            .headers_mut()
            .insert(header::LOCATION, "/api/v1/tasks/0190-ab".parse().unwrap());
        assert_eq!(
            target_of("/api/v1/tasks", "/api/v1/tasks", &created),
            Some("0190-ab".into())
        );
        assert_eq!(
            target_of("/api/v1/maintenance", "/api/v1/maintenance", &r),
            None
        );
    }

    #[test]
    fn bad_filters_name_their_field() {
        let q = |f: &str| -> AuditQuery { serde_urlencoded::from_str(f).unwrap() };
        for (query, field) in [
            ("outcome=bad", "outcome"),
            ("outcome=99", "outcome"),
            ("kind=fire", "kind"),
            ("since=yesterday", "since"),
            ("until=2026-01-01", "until"),
            (
                "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
                "until",
            ),
            ("cursor=nope", "cursor"),
            ("limit=0", "limit"),
            ("actor=", "actor"),
        ] {
            let e = filter_of(q(query)).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{query}");
        }
        let f = filter_of(q("outcome=404&kind=call,task&since=2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(f.outcome, Some(AuditOutcome::Status(404)));
        assert_eq!(f.kinds, [AuditKind::Call, AuditKind::Task]);
        assert_eq!(f.since, Some(1_767_225_600_000));
    }
}
