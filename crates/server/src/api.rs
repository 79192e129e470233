//! Routes and handlers of the JSON API under `/api/v1`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use taskhook_engine::CreateTask;
use taskhook_model::{TaskState, Template};
use utoipa::OpenApi;

use crate::auth::Caller;
use crate::dto::*;
use crate::{AppState, Problem};

#[derive(OpenApi)]
#[openapi(
    info(title = "taskhook", description = "Event-driven automation engine: templates, tasks and their steps."),
    paths(
        healthz, put_template, get_template, list_templates, delete_template, validate_template,
        put_function, get_function, list_functions, delete_function,
        crate::hooks_api::put_hook, crate::hooks_api::get_hook, crate::hooks_api::list_groups, crate::hooks_api::list_group,
        crate::hooks_api::delete_hook, crate::hooks_api::hook_status, crate::hooks_api::list_fires, crate::hooks_api::get_token,
        crate::hooks_api::reset_token, crate::hooks_api::trigger, crate::hooks_api::trigger_with_token, crate::hooks_api::webhook,
        crate::hooks_api::test_hook,
        crate::maintenance::get_maintenance, crate::maintenance::put_maintenance,
        crate::tokens_api::create_token, crate::tokens_api::list_tokens, crate::tokens_api::revoke_token,
        crate::keys::key_status, crate::keys::rotate_keys,
        create_task, get_task, list_tasks, task_events, resolve_task, cancel_task, retry_task, pause_task,
        crate::secrets_api::put_secret, crate::secrets_api::get_secret, crate::secrets_api::list_secrets, crate::secrets_api::delete_secret,
        crate::audit::list_audit, crate::task_ops::retry_tasks, crate::task_ops::set_step_state,
        crate::task_ops::extend_task, crate::task_ops::rerun_task, crate::task_ops::wontfix_task, crate::task_ops::list_comments, crate::task_ops::add_comment
    ),
    components(schemas(crate::maintenance::MaintenanceRequest, crate::maintenance::MaintenanceOut, crate::hooks_api::HookOut, crate::hooks_api::FireOut, crate::hooks_api::Fired, crate::hooks_api::TestEvent, Problem, CreateTaskRequest, ResolveRequest, TaskCreated, TemplateOut, TemplateSummary, TaskOut, StepOut, TaskPage, EventOut, crate::secrets_api::SecretRequest, crate::secrets_api::SecretOut, crate::task_ops::StepStateRequest, crate::task_ops::RerunRequest, crate::task_ops::RerunOut, crate::task_ops::RetryRequest, crate::task_ops::RetryOut, crate::task_ops::RetryFailure, crate::task_ops::CommentRequest, crate::task_ops::CommentOut)),
    modifiers(&BearerAuth)
)]
pub(crate) struct ApiDoc;

struct BearerAuth;
impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

pub fn routes(state: AppState) -> Router {
    let limit = state.limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/openapi.json", get(openapi))
        .route("/api/v1/templates", get(list_templates))
        .route("/api/v1/templates/validate", post(validate_template))
        .route(
            "/api/v1/templates/{name}",
            get(get_template).put(put_template).delete(delete_template),
        )
        .route("/api/v1/functions", get(list_functions))
        .route(
            "/api/v1/functions/{name}",
            get(get_function).put(put_function).delete(delete_function),
        )
        .route("/api/v1/tasks", get(list_tasks).post(create_task))
        .route("/api/v1/tasks/{id}", get(get_task))
        .route("/api/v1/tasks/{id}/events", get(task_events))
        .route("/api/v1/tasks/{id}/resolve", post(resolve_task))
        .route("/api/v1/tasks/{id}/cancel", post(cancel_task))
        .route("/api/v1/tasks/{id}/retry", post(retry_task))
        .route("/api/v1/tasks/{id}/pause", post(pause_task))
        .route(
            crate::maintenance::PATH,
            get(crate::maintenance::get_maintenance).put(crate::maintenance::put_maintenance),
        )
        .merge(crate::hooks_api::routes())
        .merge(crate::keys::routes())
        .merge(crate::tokens_api::routes())
        .merge(crate::secrets_api::routes())
        .merge(crate::audit::routes())
        .merge(crate::task_ops::routes())
        .merge(crate::utask_api::routes())
        // After routing, so that the gate sees which route a request is for.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::maintenance::gate,
        ))
        // Outermost: every route is authorized from the route table before anything else.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::identity::authorize,
        ))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(std::sync::Arc::new(
            crate::maintenance::Cache::default(),
        )))
        .with_state(state)
}

/// The request body, or a problem: 413 past the size limit.
pub(crate) fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, Problem> {
    b.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(status, "request body is larger than the configured limit")
        } else {
            Problem::new(status, e.body_text())
        }
    })
}

/// A template document as text: 400 unless UTF-8, 413 past the engine's `max_template_bytes`.
fn template_text<'a>(s: &AppState, bytes: &'a Bytes) -> Result<&'a str, Problem> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "body",
            "template must be UTF-8 text",
        )
    })?;
    s.engine
        .config()
        .template_limits()
        .check_document(text)
        .map_err(|e| Problem {
            errors: e.errors.clone(),
            ..Problem::field(StatusCode::PAYLOAD_TOO_LARGE, "template", e.to_string())
        })?;
    Ok(text)
}

/// The largest page a listing gives.
pub(crate) const MAX_PAGE_LIMIT: u32 = 1000;
/// The page size of a listing asked for none.
pub(crate) const DEFAULT_PAGE_LIMIT: u32 = 100;

/// The `limit` of a listing: 1 to [`MAX_PAGE_LIMIT`], default [`DEFAULT_PAGE_LIMIT`].
pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32, Problem> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_LIMIT);
    if (1..=MAX_PAGE_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "limit",
            "must be between 1 and 1000",
        ))
    }
}

/// 400 naming `name` unless the path's `name` is a template name (see [`taskhook_model::name`]).
fn check_template_name(name: &str) -> Result<(), Problem> {
    taskhook_model::name::check(name, taskhook_model::validate::MAX_NAME_LEN)
        .map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "name", e))
}

/// 400 naming `name` unless the path's `name` is a library function name.
fn check_function_name(name: &str) -> Result<(), Problem> {
    if taskhook_model::name::is_valid_function(name, taskhook_model::validate::MAX_NAME_LEN) {
        Ok(())
    } else {
        Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "name",
            "function names are names joined by '::', each of letters, digits, '_', '-' or '.', and neither '.' nor '..'",
        ))
    }
}

/// The `cursor` of a listing whose pages end at a row id (tasks, fires): the `next_cursor` a
/// previous page gave, which is a UUID. Anything else is refused with 400 naming `cursor`,
/// rather than compared with ids and answered with a silently empty page.
/// A `reason` filter: one of the store's blocked reasons, or 400 naming `reason`.
pub(crate) fn blocked_reason(reason: Option<String>) -> Result<Option<String>, Problem> {
    match reason {
        Some(r) if !taskhook_store::BLOCKED_REASONS.contains(&r.as_str()) => Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "reason",
            format!(
                "{r:?} is not a blocked reason: use one of {}",
                taskhook_store::BLOCKED_REASONS.join(", ")
            ),
        )),
        r => Ok(r),
    }
}

pub(crate) fn id_cursor(cursor: Option<String>) -> Result<Option<String>, Problem> {
    let Some(c) = cursor else { return Ok(None) };
    match uuid::Uuid::try_parse(&c) {
        // Ids are stored hyphenated and lower-case; a cursor is compared with them as text.
        Ok(id) => Ok(Some(id.hyphenated().to_string())),
        Err(_) => Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "cursor",
            "not a cursor this server gave (next_cursor of a previous page)",
        )),
    }
}

/// Parses a JSON body, naming the failing field.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" {
            "body".to_string()
        } else {
            path
        };
        Problem::field(
            StatusCode::BAD_REQUEST,
            field,
            format!("invalid JSON body: {}", e.inner()),
        )
    })
}

fn json_body_or_empty<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse_json(bytes)
    }
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The server is up")), security(()))]
async fn healthz() -> Json<Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn openapi() -> Json<&'static Value> {
    Json(crate::openapi::document())
}

// ---- templates ----

#[utoipa::path(put, path = "/api/v1/templates/{name}", request_body(content = String, description = "Template as YAML or JSON"),
    responses((status = 201, body = TemplateOut), (status = 200, body = TemplateOut), (status = 400, body = Problem),
    (status = 413, body = Problem, description = "Larger than max_template_bytes or max_body_bytes")))]
async fn put_template(
    c: Caller,
    State(s): State<AppState>,
    Path(name): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    check_template_name(&name)?;
    let bytes = body(b)?;
    let text = template_text(&s, &bytes)?;
    let template = s
        .engine
        .parse_template(text)
        .await
        .map_err(|e| Problem::from(taskhook_engine::EngineError::Template(e)))?;
    if template.name != name {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "name",
            if template.name == taskhook_model::utask::template_name(&name) {
                format!(
                    "this µTask template is named {:?}, as µTask names it (in lower case): put it at that URL",
                    template.name
                )
            } else {
                format!(
                    "the template is named {:?} but the URL says {name:?}",
                    template.name
                )
            },
        ));
    }
    crate::secrets_api::check_template_secrets(&s, &template, &c.scopes).await?;
    let (row, created) = s.engine.put_template(template).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(TemplateOut::from(row))).into_response())
}

#[utoipa::path(post, path = "/api/v1/templates/validate", request_body(content = String, description = "Template as YAML or JSON"),
    responses((status = 200, description = "Valid"), (status = 400, body = Problem),
    (status = 413, body = Problem, description = "Larger than max_template_bytes or max_body_bytes")))]
async fn validate_template(
    c: Caller,
    State(s): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, Problem> {
    let bytes = body(b)?;
    let text = template_text(&s, &bytes)?;
    let t = s
        .engine
        .parse_template(text)
        .await
        .map_err(|e| Problem::from(taskhook_engine::EngineError::Template(e)))?;
    crate::secrets_api::check_template_secrets(&s, &t, &c.scopes).await?;
    Ok(Json(serde_json::json!({"valid": true, "name": t.name})))
}

#[utoipa::path(get, path = "/api/v1/templates/{name}", responses((status = 200, body = TemplateOut), (status = 404, body = Problem)))]
async fn get_template(
    _c: Caller,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TemplateOut>, Problem> {
    check_template_name(&name)?;
    let row = s
        .engine
        .store()
        .get_template(&name)
        .await?
        .ok_or_else(|| Problem::not_found(format!("template {name:?}")))?;
    Ok(Json(row.into()))
}

#[derive(Deserialize)]
struct TemplateListQuery {
    #[serde(default)]
    hidden: bool,
}

#[utoipa::path(get, path = "/api/v1/templates", params(("hidden" = Option<bool>, Query, description = "Include hidden templates")),
    responses((status = 200, body = Vec<TemplateSummary>)))]
async fn list_templates(
    c: Caller,
    State(s): State<AppState>,
    q: Result<Query<TemplateListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<TemplateSummary>>, Problem> {
    let Query(q) =
        q.map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "query", e.body_text()))?;
    let rows = s.engine.store().list_templates().await?;
    Ok(Json(
        rows.iter()
            .filter_map(TemplateSummary::from_row)
            .filter(|(_, hidden)| q.hidden || !hidden)
            .map(|(t, _)| t)
            .filter(|t| c.may(&format!("templates:read:{}", t.name)))
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/templates/{name}", responses((status = 204), (status = 404, body = Problem)))]
async fn delete_template(
    _c: Caller,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    check_template_name(&name)?;
    if s.engine.delete_template(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("template {name:?}")))
    }
}

// ---- functions ----

#[utoipa::path(put, path = "/api/v1/functions/{name}", request_body(content = String, description = "Function as YAML or JSON"),
    responses((status = 201, description = "Created"), (status = 200, description = "Replaced"), (status = 400, body = Problem)))]
async fn put_function(
    _c: Caller,
    State(s): State<AppState>,
    Path(name): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    check_function_name(&name)?;
    let bytes = body(b)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "body",
            "function must be UTF-8 text",
        )
    })?;
    let function = s
        .engine
        .parse_function(text)
        .await
        .map_err(|e| Problem::from(taskhook_engine::EngineError::Template(e)))?;
    if function.name != name {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "name",
            format!(
                "the function is named {:?} but the URL says {name:?}",
                function.name
            ),
        ));
    }
    let created = s.engine.put_function(function.clone()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(function)).into_response())
}

#[utoipa::path(get, path = "/api/v1/functions/{name}", responses((status = 200, description = "The function"), (status = 404, body = Problem)))]
async fn get_function(
    _c: Caller,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    check_function_name(&name)?;
    Ok(Json(
        s.engine
            .store()
            .get_function(&name)
            .await?
            .ok_or_else(|| Problem::not_found(format!("function {name:?}")))?,
    ))
}

#[utoipa::path(get, path = "/api/v1/functions", responses((status = 200, description = "Every library function")))]
async fn list_functions(c: Caller, State(s): State<AppState>) -> Result<Json<Vec<Value>>, Problem> {
    let mut all = s.engine.store().list_functions().await?;
    all.retain(|f| {
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        c.may(&format!("functions:read:{name}"))
    });
    Ok(Json(all))
}

#[utoipa::path(delete, path = "/api/v1/functions/{name}", responses((status = 204), (status = 404, body = Problem)))]
async fn delete_function(
    _c: Caller,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    check_function_name(&name)?;
    if s.engine.store().delete_function(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("function {name:?}")))
    }
}

// ---- tasks ----

#[utoipa::path(post, path = "/api/v1/tasks", request_body = CreateTaskRequest,
    responses((status = 201, body = TaskCreated), (status = 200, body = TaskCreated, description = "Existing task for this idempotency key"),
    (status = 400, body = Problem), (status = 404, body = Problem)))]
async fn create_task(
    c: Caller,
    State(s): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let req: CreateTaskRequest = parse_json(&body(b)?)?;
    let run_at = match &req.run_at {
        Some(t) => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|e| {
                    Problem::field(
                        StatusCode::BAD_REQUEST,
                        "run_at",
                        format!("not an RFC 3339 time: {e}"),
                    )
                })?
                .as_millisecond(),
        ),
        None => None,
    };
    taskhook_model::name::check(&req.template, taskhook_model::validate::MAX_NAME_LEN)
        .map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "template", e))?;
    if let Some(k) = &req.idempotency_key
        && (k.is_empty() || k.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS)
    {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "idempotency_key",
            "must be 1-256 characters",
        ));
    }
    let people = taskhook_store::TaskPeople {
        resolvers: usernames("resolver_usernames", req.resolver_usernames)?,
        watchers: usernames("watcher_usernames", req.watcher_usernames)?,
    };
    let create = CreateTask {
        template: req.template,
        inputs: req.inputs,
        requester: c.name,
        tags: req
            .tags
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
        idempotency_key: req.idempotency_key,
        run_at,
        parent_id: None,
        people,
    };
    let (task, created) = s.engine.create_task(create).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/api/v1/tasks/{}", task.id);
    Ok((
        status,
        [(header::LOCATION, location)],
        Json(TaskCreated {
            id: task.id,
            state: task.state.as_str().into(),
        }),
    )
        .into_response())
}

pub(crate) async fn template_of(s: &AppState, name: &str, version: i64) -> Option<Template> {
    let row = s
        .engine
        .store()
        .get_template_version(name, version)
        .await
        .ok()??;
    serde_json::from_value(row.body).ok()
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}", responses((status = 200, body = TaskOut), (status = 404, body = Problem)))]
async fn get_task(
    _c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskOut>, Problem> {
    task_out(&s, &id).await
}

/// A task with its steps as the API shows it, or 404.
pub(crate) async fn task_out(s: &AppState, id: &str) -> Result<Json<TaskOut>, Problem> {
    let (task, steps) = s
        .engine
        .store()
        .get_task(id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("task {id}")))?;
    let template = template_of(s, &task.template, task.template_version).await;
    Ok(Json(TaskOut::new(task, Some(steps), template.as_ref())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskListQuery {
    state: Option<String>,
    template: Option<String>,
    reason: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/tasks", params(
        ("state" = Option<String>, Query, description = "Only tasks in this state"),
        ("template" = Option<String>, Query, description = "Only tasks of this template"),
        ("reason" = Option<String>, Query, description = "Only BLOCKED tasks blocked for this reason: crashed, crash_loop, failed_steps, retry_max, deadlock, template"),
        ("limit" = Option<u32>, Query, description = "Page size, 1-1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = TaskPage), (status = 400, body = Problem)))]
async fn list_tasks(
    c: Caller,
    State(s): State<AppState>,
    q: Result<Query<TaskListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskPage>, Problem> {
    let Query(q) =
        q.map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "query", e.body_text()))?;
    let state = match &q.state {
        Some(st) => Some(
            st.parse::<TaskState>()
                .map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "state", e))?,
        ),
        None => None,
    };
    if let Some(t) = &q.template {
        taskhook_model::name::check(t, taskhook_model::validate::MAX_NAME_LEN)
            .map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "template", e))?;
    }
    let reason = blocked_reason(q.reason)?;
    let limit = page_limit(q.limit)?;
    let cursor = id_cursor(q.cursor)?;
    let filter = taskhook_store::TaskFilter {
        state,
        template: q.template,
        blocked_reason: reason,
        before: cursor,
        limit,
    };
    let (rows, next_cursor) = crate::identity::readable_tasks(&s, &c, filter).await?;
    let mut templates: std::collections::HashMap<(String, i64), Option<Template>> =
        Default::default();
    let mut tasks = Vec::with_capacity(rows.len());
    for t in rows {
        let key = (t.template.clone(), t.template_version);
        if !templates.contains_key(&key) {
            let tpl = template_of(&s, &key.0, key.1).await;
            templates.insert(key.clone(), tpl);
        }
        tasks.push(TaskOut::new(t, None, templates[&key].as_ref()));
    }
    Ok(Json(TaskPage { tasks, next_cursor }))
}

/// Most users one list of a task's people may name.
pub(crate) const MAX_PEOPLE: usize = 100;
/// Longest user name on a task, in characters.
pub(crate) const MAX_USERNAME_CHARS: usize = 256;
/// Longest idempotency key, in characters.
pub(crate) const MAX_IDEMPOTENCY_KEY_CHARS: usize = 256;

/// A task's list of resolvers or watchers, checked: 1-256 characters each, at most
/// [`MAX_PEOPLE`], duplicates dropped.
pub(crate) fn usernames(field: &str, names: Vec<String>) -> Result<Vec<String>, Problem> {
    if names.len() > MAX_PEOPLE {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            field,
            format!("at most {MAX_PEOPLE} users"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for n in names {
        if n.is_empty() || n.chars().count() > MAX_USERNAME_CHARS || n.chars().any(char::is_control)
        {
            return Err(Problem::field(
                StatusCode::BAD_REQUEST,
                field,
                format!("{n:?} is not a user name: 1-256 characters, no control characters"),
            ));
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}/events", responses((status = 200, body = Vec<EventOut>), (status = 404, body = Problem)))]
async fn task_events(
    _c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<EventOut>>, Problem> {
    if s.engine.store().get_task(&id).await?.is_none() {
        return Err(Problem::not_found(format!("task {id}")));
    }
    Ok(Json(
        s.engine
            .store()
            .task_events(&id)
            .await?
            .into_iter()
            .map(EventOut::from)
            .collect(),
    ))
}

pub(crate) async fn task_state(s: &AppState, id: &str) -> Result<Json<TaskCreated>, Problem> {
    let (task, _) = s
        .engine
        .store()
        .get_task(id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("task {id}")))?;
    Ok(Json(TaskCreated {
        id: task.id,
        state: task.state.as_str().into(),
    }))
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/resolve", request_body = ResolveRequest,
    responses((status = 200, body = TaskCreated), (status = 400, body = Problem), (status = 409, body = Problem)))]
async fn resolve_task(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<TaskCreated>, Problem> {
    let req: ResolveRequest = json_body_or_empty(&body(b)?)?;
    s.engine.resolve(&id, &c.name, req.resolver_inputs).await?;
    task_state(&s, &id).await
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", responses((status = 200, body = TaskCreated), (status = 409, body = Problem)))]
async fn cancel_task(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskCreated>, Problem> {
    s.engine.cancel(&id, &c.name).await?;
    task_state(&s, &id).await
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/retry", responses((status = 200, body = TaskCreated), (status = 409, body = Problem)))]
async fn retry_task(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskCreated>, Problem> {
    s.engine.retry(&id, &c.name).await?;
    task_state(&s, &id).await
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/pause", responses((status = 200, body = TaskCreated), (status = 409, body = Problem)))]
async fn pause_task(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskCreated>, Problem> {
    s.engine.pause(&id, &c.name).await?;
    task_state(&s, &id).await
}
