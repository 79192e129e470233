//! Maintenance mode: while it is on, the API is read-only. One middleware answers every
//! request that could change something (any method but GET, HEAD and OPTIONS, and every
//! trigger and webhook whatever its method) with 503 and `Retry-After`, before any handler
//! runs: nothing is recorded, not even a fire. `/api/v1/maintenance` itself stays open so
//! that the mode can be turned off. Tasks already accepted keep running.
//!
//! The mode is a store setting (`maintenance`), so every instance sharing a database sees
//! it; each instance caches what it read for at most [`CACHE_FOR`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use taskhook_store::{Store, now_ms};
use utoipa::ToSchema;

use crate::api::{body, parse_json};
use crate::auth::Caller;
use crate::dto::time;
use crate::{AppState, Problem};

/// The store setting holding the mode.
pub(crate) const SETTING: &str = "maintenance";
/// How long an instance trusts what it read: another instance's change reaches it within this.
pub(crate) const CACHE_FOR: Duration = Duration::from_secs(1);
/// What refused requests are told to wait, in seconds.
pub(crate) const RETRY_AFTER_SECS: u32 = 60;
/// The API path of the mode itself, never refused.
pub(crate) const PATH: &str = "/api/v1/maintenance";
pub(crate) const MAX_MESSAGE_CHARS: usize = 1000;

/// The mode as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Stored {
    enabled: bool,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    changed_at: Option<i64>,
    #[serde(default)]
    changed_by: Option<String>,
}

/// `PUT /api/v1/maintenance`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    /// On: every call that could change something answers 503 until it is turned off.
    pub enabled: bool,
    /// Told to refused callers (at most 1000 characters).
    #[serde(default)]
    pub message: Option<String>,
}

/// The maintenance mode.
#[derive(Debug, Serialize, ToSchema)]
pub struct MaintenanceOut {
    pub enabled: bool,
    pub message: Option<String>,
    /// When the mode was last changed (RFC 3339).
    pub changed_at: Option<String>,
    pub changed_by: Option<String>,
}

impl From<Stored> for MaintenanceOut {
    fn from(s: Stored) -> Self {
        MaintenanceOut {
            enabled: s.enabled,
            message: s.message,
            changed_at: s.changed_at.map(time),
            changed_by: s.changed_by,
        }
    }
}

/// What this instance last read, and when.
#[derive(Default)]
pub(crate) struct Cache {
    last: Mutex<Option<(Stored, Instant)>>,
    /// One read of the store at a time; the others wait for its answer.
    refresh: tokio::sync::Mutex<()>,
}

impl Cache {
    fn fresh(&self) -> Option<Stored> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(_, at)| at.elapsed() < CACHE_FOR)
            .map(|(s, _)| s.clone())
    }

    fn remember(&self, s: Stored) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((s, Instant::now()));
    }

    /// The mode, read from the store at most once per [`CACHE_FOR`]. When the store cannot be
    /// read, the last known mode (off if none) holds for another [`CACHE_FOR`]: the calls let
    /// through then meet the store's own error.
    async fn current(&self, store: &Store) -> Stored {
        if let Some(s) = self.fresh() {
            return s;
        }
        let _one = self.refresh.lock().await;
        if let Some(s) = self.fresh() {
            return s;
        }
        let s = match read(store).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reading the maintenance mode failed; keeping the last known");
                let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
                last.as_ref().map(|(s, _)| s.clone()).unwrap_or_default()
            }
        };
        self.remember(s.clone());
        s
    }
}

async fn read(store: &Store) -> Result<Stored, taskhook_store::StoreError> {
    Ok(match store.get_setting(SETTING).await? {
        Some(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the stored maintenance mode is unreadable; treating it as off");
            Stored::default()
        }),
        None => Stored::default(),
    })
}

/// Whether a request may change something: any method but GET, HEAD and OPTIONS, and every
/// trigger (a token trigger answers any method the hook allows, GET included).
pub(crate) fn may_write(method: &Method, route: Option<&str>) -> bool {
    if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    route.is_some_and(|r| r.starts_with("/api/v1/hooks/") && r.contains("/trigger"))
}

/// The middleware: refuses writes while the mode is on.
pub(crate) async fn gate(
    State(s): State<AppState>,
    Extension(cache): Extension<Arc<Cache>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let path = route.as_deref().unwrap_or(request.uri().path());
    if path == PATH || !may_write(request.method(), route.as_deref()) {
        return next.run(request).await;
    }
    let mode = cache.current(s.engine.store()).await;
    if !mode.enabled {
        return next.run(request).await;
    }
    let detail = match mode.message.as_deref().map(str::trim) {
        Some(m) if !m.is_empty() => format!("the API is read-only for maintenance: {m}"),
        _ => "the API is read-only for maintenance; try again later".to_string(),
    };
    let mut response = Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

#[utoipa::path(get, path = "/api/v1/maintenance",
    responses((status = 200, body = MaintenanceOut, description = "The maintenance mode, as stored")))]
pub(crate) async fn get_maintenance(
    _c: Caller,
    State(s): State<AppState>,
) -> Result<Json<MaintenanceOut>, Problem> {
    Ok(Json(read(s.engine.store()).await?.into()))
}

#[utoipa::path(put, path = "/api/v1/maintenance", request_body = MaintenanceRequest,
    description = "Turns maintenance mode on or off (admin only). While it is on, every call that could change something (any method but GET, and every trigger and webhook) answers 503 with Retry-After; this endpoint stays open. Every instance sharing the database follows within a second.",
    responses((status = 200, body = MaintenanceOut), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub(crate) async fn put_maintenance(
    c: Caller,
    State(s): State<AppState>,
    Extension(cache): Extension<Arc<Cache>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<MaintenanceOut>, Problem> {
    c.require("maintenance")?;
    let req: MaintenanceRequest = parse_json(&body(b)?)?;
    // Counted as sent, before trimming: the limit the OpenAPI document declares.
    if req
        .message
        .as_ref()
        .is_some_and(|m| m.chars().count() > MAX_MESSAGE_CHARS)
    {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "message",
            format!("at most {MAX_MESSAGE_CHARS} characters"),
        ));
    }
    let message = req
        .message
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty());
    let stored = Stored {
        enabled: req.enabled,
        message,
        changed_at: Some(now_ms()),
        changed_by: Some(c.name.clone()),
    };
    let text = serde_json::to_string(&stored)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    s.engine.store().set_setting(SETTING, &text).await?;
    // This instance follows at once; the others within CACHE_FOR.
    cache.remember(stored.clone());
    tracing::warn!(
        enabled = stored.enabled,
        by = %c.name,
        text = stored.message.as_deref().unwrap_or(""),
        "maintenance mode changed"
    );
    Ok(Json(stored.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_every_trigger_are_gated() {
        let hooks = Some("/api/v1/hooks/{group}/{id}");
        assert!(!may_write(&Method::GET, hooks));
        assert!(!may_write(&Method::HEAD, Some("/api/v1/tasks")));
        assert!(!may_write(&Method::OPTIONS, None));
        assert!(may_write(&Method::POST, Some("/api/v1/tasks")));
        assert!(may_write(&Method::PUT, hooks));
        assert!(may_write(&Method::DELETE, hooks));
        assert!(may_write(&Method::PATCH, None));
        assert!(may_write(
            &Method::GET,
            Some("/api/v1/hooks/{group}/{id}/trigger/{token}")
        ));
        assert!(!may_write(
            &Method::GET,
            Some("/api/v1/hooks/{group}/{id}/token")
        ));
    }

    #[test]
    fn a_stored_mode_reads_back() {
        let s = Stored {
            enabled: true,
            message: Some("db upgrade".into()),
            changed_at: Some(1),
            changed_by: Some("admin".into()),
        };
        let back: Stored = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let old: Stored = serde_json::from_str(r#"{"enabled": false}"#).unwrap();
        assert_eq!(old, Stored::default());
    }
}
