//! Routes for hooks: management, the API and secret-token triggers, provider webhooks, the
//! fire ledger and dry runs. Each trigger answers 202 only after its fire and task committed.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;
use taskhook_hooks::{Event, Hook, check_payload, valid_hook_part};
use taskhook_store::{FireRow, HookRow};
use utoipa::ToSchema;

use crate::api::{body, parse_json};
use crate::auth::Caller;
use crate::dto::time;
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/hooks", get(list_groups))
        .route("/api/v1/hooks/{group}", get(list_group))
        .route(
            "/api/v1/hooks/{group}/{id}",
            get(get_hook).put(put_hook).delete(delete_hook),
        )
        .route("/api/v1/hooks/{group}/{id}/status", get(hook_status))
        .route("/api/v1/hooks/{group}/{id}/fires", get(list_fires))
        .route(
            "/api/v1/hooks/{group}/{id}/token",
            get(get_token).post(reset_token),
        )
        .route("/api/v1/hooks/{group}/{id}/trigger", post(trigger))
        .route(
            "/api/v1/hooks/{group}/{id}/trigger/{token}",
            any(trigger_with_token),
        )
        .route("/api/v1/hooks/{group}/{id}/webhook", post(webhook))
        .route("/api/v1/hooks/{group}/{id}/test", post(test_hook))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HookOut {
    pub group: String,
    pub id: String,
    /// The hook document, with webhook secrets masked.
    #[schema(value_type = Object)]
    pub hook: Value,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FireOut {
    pub id: String,
    pub fired_by: String,
    pub received_at: String,
    /// When the fire was committed (a scheduled fire's lateness is this minus
    /// `scheduled_for`); absent on fires recorded before it was kept.
    pub committed_at: Option<String>,
    pub scheduled_for: Option<String>,
    /// created, filtered, declined, rejected, error, skipped or queued.
    pub result: String,
    pub task_id: Option<String>,
    /// The created task's state now.
    pub task_state: Option<String>,
    pub error: Option<String>,
    pub delivery_id: Option<String>,
    /// The event's payload (any JSON value), when it was kept.
    pub payload: Option<Value>,
}

impl From<FireRow> for FireOut {
    fn from(f: FireRow) -> Self {
        FireOut {
            id: f.id,
            fired_by: f.fired_by,
            received_at: time(f.received_at),
            committed_at: f.committed_at.map(time),
            scheduled_for: f.scheduled_for.map(time),
            result: f.result,
            task_id: f.task_id,
            task_state: f.task_state.map(|s| s.as_str().to_string()),
            error: f.error,
            delivery_id: f.delivery_id,
            payload: f.payload,
        }
    }
}

/// The answer to a trigger.
#[derive(Debug, Serialize, ToSchema)]
pub struct Fired {
    pub fire_id: String,
    pub task_id: Option<String>,
    pub result: String,
    /// A repeated delivery: this is the first fire, nothing new was created.
    pub duplicate: bool,
}

fn check_names(group: &str, id: &str) -> Result<(), Problem> {
    for (field, part) in [("group", group), ("id", id)] {
        if !valid_hook_part(part) {
            return Err(Problem::field(
                StatusCode::BAD_REQUEST,
                field,
                taskhook_model::name::rule(taskhook_hooks::MAX_HOOK_PART_LEN),
            ));
        }
    }
    Ok(())
}

async fn load(
    s: &AppState,
    group: &str,
    id: &str,
) -> Result<(HookRow, std::sync::Arc<Hook>), Problem> {
    check_names(group, id)?;
    s.engine
        .hook(group, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("hook {group}/{id}")))
}

fn hook_out(row: HookRow, hook: &Hook) -> HookOut {
    HookOut {
        group: row.group,
        id: row.id,
        hook: serde_json::to_value(hook.redacted()).unwrap_or(Value::Null),
        created_at: time(row.created_at),
        updated_at: time(row.updated_at),
    }
}

#[utoipa::path(put, path = "/api/v1/hooks/{group}/{id}", request_body(content = String, description = "Hook as YAML or JSON"),
    responses((status = 201, body = HookOut), (status = 200, body = HookOut), (status = 400, body = Problem)))]
pub async fn put_hook(
    c: Caller,
    State(s): State<AppState>,
    Path((group, id)): Path<(String, String)>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    check_names(&group, &id)?;
    let bytes = body(b)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Problem::field(StatusCode::BAD_REQUEST, "body", "hook must be UTF-8 text"))?;
    let hook = Hook::parse(text)
        .map_err(|e| Problem::field(StatusCode::BAD_REQUEST, e.field, e.message))?;
    // A hook acts with its scopes: only a caller holding all of them may write it.
    if let Some(missing) = taskhook_model::scope::first_missing(&c.scopes, &hook.effective_scopes())
    {
        return Err(Problem::field(
            StatusCode::FORBIDDEN,
            "scopes",
            format!("the hook would hold {missing:?}, which the caller does not hold"),
        ));
    }
    // A source connecting with a named secret's password: the writer must be allowed to use it.
    for (i, source) in hook.sources.iter().enumerate() {
        if let Some(name) = source.common().password_secret
            && taskhook_model::secret::first_unusable(&c.scopes, [name]).is_some()
        {
            return Err(Problem::field(
                StatusCode::FORBIDDEN,
                format!("sources[{i}].{}.password_secret", source.kind()),
                format!(
                    "this token lacks the scope {:?}",
                    taskhook_model::secret::use_scope(name)
                ),
            ));
        }
    }
    let (row, created) = s.engine.put_hook(&group, &id, hook).await?;
    let stored: Hook = serde_json::from_value(row.body.clone())
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(hook_out(row, &stored))).into_response())
}

#[utoipa::path(get, path = "/api/v1/hooks", responses((status = 200, description = "Hook groups: {\"groups\": [...]}")))]
pub async fn list_groups(c: Caller, State(s): State<AppState>) -> Result<Json<Value>, Problem> {
    let mut groups: Vec<String> = s
        .engine
        .store()
        .list_hooks(None)
        .await?
        .into_iter()
        .filter(|h| c.may(&format!("hooks:read:{}/{}", h.group, h.id)))
        .map(|h| h.group)
        .collect();
    groups.dedup();
    Ok(Json(json!({"groups": groups})))
}

#[utoipa::path(get, path = "/api/v1/hooks/{group}", responses((status = 200, description = "Hooks of a group: {\"hooks\": [...]}")))]
pub async fn list_group(
    c: Caller,
    State(s): State<AppState>,
    Path(group): Path<String>,
) -> Result<Json<Value>, Problem> {
    if !valid_hook_part(&group) {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "group",
            taskhook_model::name::rule(taskhook_hooks::MAX_HOOK_PART_LEN),
        ));
    }
    let rows = s.engine.store().list_hooks(Some(&group)).await?;
    let hooks: Vec<Value> = rows
        .into_iter()
        .filter(|h| c.may(&format!("hooks:read:{}/{}", h.group, h.id)))
        .map(|r| {
            let meta = r.body.get("metadata").cloned().unwrap_or(Value::Null);
            json!({"group": r.group, "id": r.id, "metadata": meta, "template": r.body.get("template")})
        })
        .collect();
    Ok(Json(json!({"hooks": hooks})))
}

#[utoipa::path(get, path = "/api/v1/hooks/{group}/{id}", responses((status = 200, body = HookOut), (status = 404, body = Problem)))]
pub async fn get_hook(
    _c: Caller,
    State(s): State<AppState>,
    Path((group, id)): Path<(String, String)>,
) -> Result<Json<HookOut>, Problem> {
    let (row, hook) = load(&s, &group, &id).await?;
    Ok(Json(hook_out(row, &hook)))
}

#[utoipa::path(delete, path = "/api/v1/hooks/{group}/{id}", responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete_hook(
    _c: Caller,
    State(s): State<AppState>,
    Path((group, id)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    check_names(&group, &id)?;
    if s.engine.delete_hook(&group, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("hook {group}/{id}")))
    }
}

#[utoipa::path(get, path = "/api/v1/hooks/{group}/{id}/status", responses((status = 200, description = "Next due times, the last fire, and each source's connection state on this instance")))]
pub async fn hook_status(
    _c: Caller,
    State(s): State<AppState>,
    Path((group, id)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    let (_, hook) = load(&s, &group, &id).await?;
    // The stored row, not the cached one: `last_scheduled_for` moves with every scheduled fire.
    let row = s
        .engine
        .store()
        .get_hook(&group, &id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("hook {group}/{id}")))?;
    let schedules = hook.schedules();
    let mut next = Vec::new();
    let mut after = taskhook_store::now_ms();
    while next.len() < 5 {
        match taskhook_hooks::schedule::next_due(&schedules, after) {
            Some(t) => {
                next.push(time(t));
                after = t;
            }
            None => break,
        }
    }
    let last = s
        .engine
        .store()
        .list_fires(&group, &id, None, 1)
        .await?
        .into_iter()
        .next()
        .map(FireOut::from);
    let running = s.engine.source_board().of(&group, &id);
    let sources: Vec<Value> = hook
        .sources
        .iter()
        .enumerate()
        .map(|(i, spec)| match running.iter().find(|r| r.index == i) {
            Some(r) => {
                let mut v = json!(r);
                v["running_here"] = Value::Bool(true);
                v
            }
            None => json!({
                "index": i,
                "kind": spec.kind(),
                "subscription": spec.describe(),
                "connected": false,
                "running_here": false,
            }),
        })
        .collect();
    Ok(Json(json!({
        "enabled": hook.enabled,
        "sources": sources,
        "next_scheduled": next,
        "last_scheduled_for": row.last_scheduled_for.map(time),
        "last_fire": last,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FireQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/hooks/{group}/{id}/fires", params(
        ("limit" = Option<u32>, Query, description = "Page size, 1-1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, description = "{\"fires\": [FireOut], \"next_cursor\": ...}")))]
pub async fn list_fires(
    _c: Caller,
    State(s): State<AppState>,
    Path((group, id)): Path<(String, String)>,
    q: Result<Query<FireQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let Query(q) =
        q.map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "query", e.body_text()))?;
    load(&s, &group, &id).await?;
    let limit = crate::api::page_limit(q.limit)?;
    let cursor = crate::api::id_cursor(q.cursor)?;
    let rows = s
        .engine
        .store()
        .list_fires(&group, &id, cursor, limit)
        .await?;
    let next_cursor = (rows.len() == limit as usize)
        .then(|| rows.last().map(|f| f.id.clone()))
        .flatten();
    let fires: Vec<FireOut> = rows.into_iter().map(FireOut::from).collect();
    Ok(Json(json!({"fires": fires, "next_cursor": next_cursor})))
}

#[utoipa::path(get, path = "/api/v1/hooks/{group}/{id}/token", responses((status = 200, description = "{\"token\": ...}")))]
pub async fn get_token(
    _c: Caller,
    State(s): State<AppState>,
    Path((group, id)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    let (row, _) = load(&s, &group, &id).await?;
    Ok(Json(json!({"token": row.trigger_token})))
}

#[utoipa::path(post, path = "/api/v1/hooks/{group}/{id}/token", responses((status = 200, description = "{\"token\": ...} (the new one)")))]
pub async fn reset_token(
    _c: Caller,
    State(s): State<AppState>,
    Path((group, id)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    check_names(&group, &id)?;
    let token = s.engine.reset_hook_token(&group, &id).await?;
    Ok(Json(json!({"token": token})))
}

/// Headers as the event shows them: lower-case names, credentials left out.
fn event_headers(h: &HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "authorization" | "cookie" | "proxy-authorization"
            )
        })
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// The body as JSON when it is JSON (or a form with a `payload` field, as GitHub can send),
/// else as text; an empty body is null.
fn payload_of(headers: &HeaderMap, bytes: &[u8]) -> Result<Value, Problem> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/x-www-form-urlencoded") {
        let form: BTreeMap<String, String> = serde_urlencoded::from_bytes(bytes).map_err(|e| {
            Problem::field(
                StatusCode::BAD_REQUEST,
                "body",
                format!("invalid form body: {e}"),
            )
        })?;
        if let Some(p) = form.get("payload") {
            return serde_json::from_str(p).map_err(|e| {
                Problem::field(StatusCode::BAD_REQUEST, "payload", format!("not JSON: {e}"))
            });
        }
        return Ok(serde_json::to_value(form).unwrap_or(Value::Null));
    }
    if ct.contains("json") {
        return serde_json::from_slice(bytes).map_err(|e| {
            Problem::field(
                StatusCode::BAD_REQUEST,
                "body",
                format!("invalid JSON body: {e}"),
            )
        });
    }
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(_) => Ok(Value::String(String::from_utf8_lossy(bytes).into_owned())),
    }
}

async fn fire_and_answer(
    s: &AppState,
    row: &HookRow,
    hook: &Hook,
    event: Event,
) -> Result<Response, Problem> {
    if !hook.enabled {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("hook {}/{} is disabled", row.group, row.id),
        ));
    }
    if let Err((field, message)) = check_payload(hook, &event.payload) {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            field,
            format!("payload does not match trigger_schema: {message}"),
        ));
    }
    let r = s.engine.fire(row, hook, event, None).await?;
    let out = Fired {
        fire_id: r.fire.id,
        task_id: r.fire.task_id,
        result: r.fire.result,
        duplicate: r.duplicate,
    };
    Ok((StatusCode::ACCEPTED, Json(out)).into_response())
}

#[utoipa::path(post, path = "/api/v1/hooks/{group}/{id}/trigger", request_body(content = Object, description = "The event payload (JSON)"),
    responses((status = 202, body = Fired), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn trigger(
    c: Caller,
    State(s): State<AppState>,
    Path((group, id)): Path<(String, String)>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let bytes = body(b)?;
    let (row, hook) = load(&s, &group, &id).await?;
    // An object, as documented: `null` or a bare value is no event (an empty body is `{}`).
    let payload: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_json::<Map<String, Value>>(&bytes).map(Value::Object)?
    };
    let event = Event {
        fired_by: "api".into(),
        payload,
        headers: event_headers(&headers),
        method: "POST".into(),
        source: c.name,
        ..Default::default()
    };
    fire_and_answer(&s, &row, &hook, event).await
}

/// The methods a secret-token trigger may accept (a hook's `methods` chooses among them).
const TRIGGER_METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

#[utoipa::path(method(get, post, put, patch, delete), path = "/api/v1/hooks/{group}/{id}/trigger/{token}",
    request_body(content = Value, description = "The event payload: any JSON value, a form (with a JSON `payload` field, as GitHub sends), or text"),
    responses((status = 202, body = Fired), (status = 401, body = Problem),
    (status = 405, body = Problem, description = "The hook does not accept this method; Allow lists those it does"),
    (status = 409, body = Problem, description = "The hook is disabled")), security(()))]
pub async fn trigger_with_token(
    State(s): State<AppState>,
    Path((group, id, token)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    if !TRIGGER_METHODS.contains(&method.as_str()) {
        return Ok(crate::identity::method_not_allowed(&TRIGGER_METHODS));
    }
    let Query(query) =
        query.map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "query", e.body_text()))?;
    let bytes = body(b)?;
    let (row, hook) = load(&s, &group, &id).await?;
    let ok: bool = row.trigger_token.as_bytes().ct_eq(token.as_bytes()).into();
    if !ok {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "wrong trigger token",
        ));
    }
    if !hook.methods.iter().any(|m| m == method.as_str()) {
        let accepted: Vec<&str> = hook.methods.iter().map(String::as_str).collect();
        return Ok(crate::identity::method_not_allowed(&accepted));
    }
    let event = Event {
        fired_by: "token".into(),
        payload: payload_of(&headers, &bytes)?,
        headers: event_headers(&headers),
        query,
        method: method.to_string(),
        source: "token".into(),
        ..Default::default()
    };
    fire_and_answer(&s, &row, &hook, event).await
}

#[utoipa::path(post, path = "/api/v1/hooks/{group}/{id}/webhook", request_body(content = Value, description = "The provider's delivery, as the provider signed it: JSON, a form or text"),
    responses((status = 202, body = Fired), (status = 401, body = Problem)), security(()))]
pub async fn webhook(
    State(s): State<AppState>,
    Path((group, id)): Path<(String, String)>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let bytes = body(b)?;
    let (row, hook) = load(&s, &group, &id).await?;
    let Some(settings) = &hook.webhook else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("hook {group}/{id} has no webhook settings"),
        ));
    };
    let pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let lookup = taskhook_hooks::signature::header_lookup(&pairs);
    let now = taskhook_store::now_ms() / 1000;
    let delivery = match taskhook_hooks::signature::verify(settings, &lookup, &bytes, now) {
        Ok(d) => d,
        Err(e) => {
            let event = Event {
                fired_by: "webhook".into(),
                source: settings.provider().into(),
                ..Default::default()
            };
            s.engine
                .record_rejected(&row, &event, &e.to_string())
                .await?;
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                format!("webhook signature check failed: {e}"),
            ));
        }
    };
    let event = Event {
        fired_by: "webhook".into(),
        payload: payload_of(&headers, &bytes)?,
        headers: event_headers(&headers),
        method: "POST".into(),
        source: settings.provider().into(),
        event: delivery.event,
        delivery_id: delivery.delivery_id,
        ..Default::default()
    };
    fire_and_answer(&s, &row, &hook, event).await
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TestEvent {
    /// The sample event's payload: any JSON value.
    #[serde(default)]
    pub payload: Value,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub fired_by: Option<String>,
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub delivery_id: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/hooks/{group}/{id}/test", request_body = TestEvent,
    responses((status = 200, description = "What the hook would do; nothing is created"), (status = 400, body = Problem)))]
pub async fn test_hook(
    _c: Caller,
    State(s): State<AppState>,
    Path((group, id)): Path<(String, String)>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, Problem> {
    let bytes = body(b)?;
    let (_, hook) = load(&s, &group, &id).await?;
    let t: TestEvent = if bytes.iter().all(u8::is_ascii_whitespace) {
        TestEvent::default()
    } else {
        parse_json(&bytes)?
    };
    if let Err((field, message)) = check_payload(&hook, &t.payload) {
        return Ok(Json(
            json!({"result": "rejected", "field": field, "error": format!("payload does not match trigger_schema: {message}")}),
        ));
    }
    let event = Event {
        fired_by: t.fired_by.unwrap_or_else(|| "test".into()),
        payload: t.payload,
        headers: t
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_lowercase(), v))
            .collect(),
        query: t.query,
        method: "POST".into(),
        source: "test".into(),
        event: t.event,
        delivery_id: t.delivery_id,
        ..Default::default()
    };
    let dry = s.engine.dry_run(&hook, &event).await?;
    Ok(Json(
        json!({"result": dry.result, "template": hook.template, "inputs": dry.inputs, "error": dry.error}),
    ))
}
