//! OVH µTask's HTTP API under `/utask`, on taskhook's engine and authorization: a script
//! written for µTask works after changing its base URL and credentials. Every route is
//! authorized from the route table like its taskhook equivalent (`crate::scopes`) and runs the
//! same engine and store calls; only the shapes (`crate::utask_dto`), µTask's query
//! parameters and its status codes are µTask's. Errors stay problem+json with µTask's `error`
//! member added (`crate::problem::with_utask_error`). See `docs/utask-api.md`.
//!
//! A task and its run are one object here: the resolution of a task has the task's id.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use taskhook_engine::CreateTask;
use taskhook_model::{StepState, TaskState, Template};
use taskhook_store::{StepRow, TaskRow, now_ms};

use crate::api::{body, parse_json, template_of, usernames};
use crate::auth::Caller;
use crate::utask_dto::{self as dto, ResolutionOut, RunTimes, TaskOut};
use crate::{AppState, Problem};

/// Where µTask's API is served.
pub const PREFIX: &str = "/utask";

/// µTask's page sizes: 0 or absent means the default, smaller is raised to the minimum, larger
/// lowered to the maximum (taskhook's largest page; µTask's is 10,000).
const MIN_PAGE_SIZE: u64 = 10;
const DEFAULT_PAGE_SIZE: u64 = crate::api::MAX_PAGE_LIMIT as u64;
const MAX_PAGE_SIZE: u64 = crate::api::MAX_PAGE_LIMIT as u64;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/utask/template", get(list_templates))
        .route("/utask/template/{name}", get(get_template))
        .route("/utask/task", get(list_tasks).post(create_task))
        .route(
            "/utask/task/{id}",
            get(get_task).put(update_task).delete(delete_task),
        )
        .route("/utask/task/{id}/wontfix", post(wontfix_task))
        .route(
            "/utask/task/{id}/comment",
            get(list_comments).post(add_comment),
        )
        .route("/utask/task/{id}/comment/{commentid}", get(get_comment))
        .route("/utask/resolution", post(create_resolution))
        .route("/utask/resolution/{id}", get(get_resolution))
        .route("/utask/resolution/{id}/run", post(run_resolution))
        .route("/utask/resolution/{id}/pause", post(pause_resolution))
        .route("/utask/resolution/{id}/cancel", post(cancel_resolution))
        .route("/utask/resolution/{id}/extend", post(extend_resolution))
        .route(
            "/utask/resolution/{id}/step/{step}",
            get(get_step).put(put_step),
        )
        .route(
            "/utask/resolution/{id}/step/{step}/state",
            put(put_step_state),
        )
        .route("/utask/unsecured/mon/ping", get(ping))
        .route("/utask/unsecured/stats", get(stats))
        .route("/utask/meta", get(meta))
}

// ---- query strings ----

/// A query string as its pairs, repeated keys kept (µTask's `tag=k=v&tag=…`). Parameters this
/// API does not know are ignored, as µTask ignores them.
fn query_pairs(q: Option<String>) -> Result<Vec<(String, String)>, Problem> {
    serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "query", e.to_string()))
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// µTask's `page_size`, normalised as µTask does.
fn page_size(pairs: &[(String, String)]) -> Result<u64, Problem> {
    let size = match param(pairs, "page_size") {
        None | Some("") => 0,
        Some(v) => v.parse::<u64>().map_err(|_| {
            Problem::field(
                StatusCode::BAD_REQUEST,
                "page_size",
                "must be a non-negative integer",
            )
        })?,
    };
    Ok(match size {
        0 => DEFAULT_PAGE_SIZE,
        s => s.clamp(MIN_PAGE_SIZE, MAX_PAGE_SIZE),
    })
}

/// µTask's `tag=key=value` filters.
fn tags(pairs: &[(String, String)]) -> Result<Vec<(String, String)>, Problem> {
    pairs
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| match v.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() && !v.contains('=') => {
                Ok((k.to_string(), v.to_string()))
            }
            _ => Err(Problem::field(
                StatusCode::BAD_REQUEST,
                "tag",
                format!("invalid tag {v}: write key=value"),
            )),
        })
        .collect()
}

fn timestamp(pairs: &[(String, String)], key: &str) -> Result<Option<i64>, Problem> {
    param(pairs, key)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<jiff::Timestamp>()
                .map(|t| t.as_millisecond())
                .map_err(|e| {
                    Problem::field(
                        StatusCode::BAD_REQUEST,
                        key,
                        format!("not an RFC 3339 time: {e}"),
                    )
                })
        })
        .transpose()
}

/// The headers of a µTask listing: its page size, and a `link` to the next page when there
/// is one.
fn paging_headers(size: u64, next: Option<String>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("X-Paging-PageSize", HeaderValue::from(size));
    if let Some(link) = next.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LINK, link);
    }
    h
}

fn next_link(path: &str, pairs: Vec<(&str, String)>) -> String {
    let query = serde_urlencoded::to_string(pairs).unwrap_or_default();
    format!("<{PREFIX}{path}?{query}>; rel=next")
}

// ---- templates ----

/// `GET /utask/template`: templates the caller may read, by name, without their steps;
/// hidden ones only for admin callers (µTask's rule). `page_size` and `last` (a name) page.
async fn list_templates(
    c: Caller,
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, Problem> {
    let pairs = query_pairs(q)?;
    let size = page_size(&pairs)?;
    let last = param(&pairs, "last").map(String::from);
    let admin = c.may(taskhook_model::scope::ADMIN);
    let mut rows = s.engine.store().list_templates().await?;
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    for row in rows {
        if last.as_deref().is_some_and(|l| row.name.as_str() <= l)
            || !c.may(&format!("templates:read:{}", row.name))
        {
            continue;
        }
        let hidden = row.body.get("hidden").and_then(Value::as_bool) == Some(true);
        if hidden && !admin {
            continue;
        }
        out.push(dto::template(&row, false));
        if out.len() as u64 == size {
            break;
        }
    }
    let next = (out.len() as u64 == size).then(|| {
        let last = out
            .last()
            .and_then(|t| t["name"].as_str())
            .unwrap_or_default();
        next_link(
            "/template",
            vec![("page_size", size.to_string()), ("last", last.to_string())],
        )
    });
    Ok((paging_headers(size, next), Json(out)).into_response())
}

/// `GET /utask/template/{name}`: the template with its steps.
async fn get_template(
    _c: Caller,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    let row = s
        .engine
        .store()
        .get_template(&name)
        .await?
        .ok_or_else(|| Problem::not_found(format!("template {name:?}")))?;
    Ok(Json(dto::template(&row, true)))
}

// ---- tasks ----

#[derive(Deserialize)]
struct CreateTaskIn {
    template_name: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    watcher_usernames: Option<Vec<String>>,
    #[serde(default)]
    watcher_groups: Option<Vec<String>>,
    #[serde(default)]
    resolver_usernames: Option<Vec<String>>,
    #[serde(default)]
    resolver_groups: Option<Vec<String>>,
    /// A Go duration (`"1h30m"`): the task starts no earlier than this after its creation.
    #[serde(default)]
    delay: Option<String>,
    #[serde(default)]
    tags: Option<std::collections::BTreeMap<String, String>>,
}

/// Groups are not named on taskhook tasks: an empty list is accepted, anything else refused.
fn no_groups(field: &str, groups: &Option<Vec<String>>) -> Result<(), Problem> {
    match groups {
        Some(g) if !g.is_empty() => Err(Problem::field(
            StatusCode::BAD_REQUEST,
            field,
            "taskhook names users on a task, not groups: use resolver_usernames or watcher_usernames",
        )),
        _ => Ok(()),
    }
}

/// `POST /utask/task`: creates a task as `POST /api/v1/tasks` does; 201 with the task.
async fn create_task(
    c: Caller,
    State(s): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let req: CreateTaskIn = parse_json(&body(b)?)?;
    taskhook_model::name::check(&req.template_name, taskhook_model::validate::MAX_NAME_LEN)
        .map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "template_name", e))?;
    no_groups("watcher_groups", &req.watcher_groups)?;
    no_groups("resolver_groups", &req.resolver_groups)?;
    let run_at = match req.delay.as_deref().filter(|d| !d.trim().is_empty()) {
        Some(d) => {
            let d = taskhook_model::duration::parse_duration_at_most(
                d,
                taskhook_model::duration::TEN_YEARS,
            )
            .map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "delay", e))?;
            Some(now_ms() + taskhook_model::duration::as_millis_i64(d))
        }
        None => None,
    };
    if let Some(comment) = &req.comment
        && comment.chars().count() > crate::task_ops::MAX_COMMENT_CHARS
    {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "comment",
            format!(
                "a comment has 1 to {} characters",
                crate::task_ops::MAX_COMMENT_CHARS
            ),
        ));
    }
    let people = taskhook_store::TaskPeople {
        resolvers: usernames(
            "resolver_usernames",
            req.resolver_usernames.unwrap_or_default(),
        )?,
        watchers: usernames(
            "watcher_usernames",
            req.watcher_usernames.unwrap_or_default(),
        )?,
    };
    let inputs = match req.input {
        Value::Null => json!({}),
        other => other,
    };
    let (task, _) = s
        .engine
        .create_task(CreateTask {
            template: req.template_name,
            inputs,
            requester: c.name.clone(),
            tags: req
                .tags
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
            idempotency_key: None,
            run_at,
            parent_id: None,
            people,
        })
        .await?;
    if let Some(comment) = req.comment.filter(|c| !c.is_empty()) {
        crate::task_ops::comment_on(&s, &task.id, &c.name, &comment).await?;
    }
    let out = task_out(&s, &task.id).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("{PREFIX}/task/{}", task.id))],
        Json(out),
    )
        .into_response())
}

/// A task and its steps, or 404.
async fn load(s: &AppState, id: &str) -> Result<(TaskRow, Vec<StepRow>), Problem> {
    s.engine
        .store()
        .get_task(id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("task {id}")))
}

/// One task in µTask's shape, with its comments and run times.
async fn task_out(s: &AppState, id: &str) -> Result<TaskOut, Problem> {
    let (task, steps) = load(s, id).await?;
    let template = template_of(s, &task.template, task.template_version).await;
    let times = RunTimes::from_events(&s.engine.store().task_events(id).await?);
    let comments = s.engine.store().comments(id).await?;
    Ok(TaskOut::new(
        task,
        &steps,
        template.as_ref(),
        Some(&times),
        Some(comments),
        now_ms(),
    ))
}

/// `GET /utask/task/{id}`.
async fn get_task(
    _c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskOut>, Problem> {
    Ok(Json(task_out(&s, &id).await?))
}

/// Body of `PUT /utask/task/{id}`: what µTask's task update takes. Each member replaces the
/// task's (an absent one is empty, as in µTask); others are ignored.
#[derive(Deserialize)]
struct UpdateTaskIn {
    #[serde(default)]
    input: Value,
    #[serde(default)]
    watcher_usernames: Option<Vec<String>>,
    #[serde(default)]
    watcher_groups: Option<Vec<String>>,
    #[serde(default)]
    tags: Option<std::collections::BTreeMap<String, String>>,
}

/// `PUT /utask/task/{id}`: µTask's task update, on a task still waiting for a resolver
/// (TODO) or paused (409 otherwise): its input (checked against the template, the title
/// rendered again; a masked password keeps its value), watchers and tags are replaced. 200
/// with the task.
async fn update_task(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<TaskOut>, Problem> {
    let req: UpdateTaskIn = parse_json(&body(b)?)?;
    no_groups("watcher_groups", &req.watcher_groups)?;
    let watchers = usernames(
        "watcher_usernames",
        req.watcher_usernames.unwrap_or_default(),
    )?;
    if !matches!(req.input, Value::Object(_) | Value::Null) {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "input",
            "must be an object of the task's inputs",
        ));
    }
    let edit = taskhook_engine::EditTask {
        inputs: req.input,
        tags: req
            .tags
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
        watchers,
    };
    s.engine.edit_task(&id, edit, &c.name).await?;
    Ok(Json(task_out(&s, &id).await?))
}

/// `DELETE /utask/task/{id}`: removes a DONE or CANCELLED task with its steps, trail and
/// comments (409 for any other; µTask refuses only RUNNING and BLOCKED ones). Admin only, as
/// in µTask. 204.
async fn delete_task(
    _c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    if s.engine.store().delete_task(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("task {id}")))
    }
}

/// Which tasks a listing's `type` selects among those the caller may read.
#[derive(Clone, Copy, PartialEq)]
enum ListType {
    /// The caller requested them.
    Own,
    /// The caller may read and resolve them (`tasks:resolve:<template>`, or named as a
    /// resolver on the task or its template).
    Resolvable,
    /// Every task the caller may read.
    All,
}

/// `GET /utask/task`: µTask's listing, newest first. `type` (own, resolvable, all; default
/// own), `state` (µTask's task states), `template`, `tag=key=value`, `before`/`after` (last
/// activity), `page_size` and `last` (the id of the previous page's last task).
async fn list_tasks(
    c: Caller,
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, Problem> {
    let pairs = query_pairs(q)?;
    let kind = match param(&pairs, "type").unwrap_or("own") {
        "own" | "" => ListType::Own,
        "resolvable" => ListType::Resolvable,
        "all" => ListType::All,
        other => {
            return Err(Problem::field(
                StatusCode::BAD_REQUEST,
                "type",
                format!(
                    "Unknown type for listing: '{other}'. Was expecting 'own', 'resolvable' or 'all'"
                ),
            ));
        }
    };
    let state = param(&pairs, "state").filter(|v| !v.is_empty());
    if let Some(st) = state
        && !dto::TASK_STATES.contains(&st)
    {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "state",
            format!(
                "unknown task state {st:?}: use one of {}",
                dto::TASK_STATES.join(", ")
            ),
        ));
    }
    let template = param(&pairs, "template")
        .filter(|v| !v.is_empty())
        .map(String::from);
    if let Some(t) = &template {
        taskhook_model::name::check(t, taskhook_model::validate::MAX_NAME_LEN)
            .map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "template", e))?;
    }
    let tags = tags(&pairs)?;
    let (before, after) = (timestamp(&pairs, "before")?, timestamp(&pairs, "after")?);
    let size = page_size(&pairs)?;
    let last = match param(&pairs, "last").filter(|v| !v.is_empty()) {
        Some(l) => Some(
            uuid::Uuid::try_parse(l)
                .map_err(|_| {
                    Problem::field(StatusCode::BAD_REQUEST, "last", "not the id of a task")
                })?
                .hyphenated()
                .to_string(),
        ),
        None => None,
    };
    let now = now_ms();
    let filter = taskhook_store::TaskFilter {
        state: state.and_then(dto::store_state),
        template: template.clone(),
        blocked_reason: None,
        before: last,
        limit: size as u32,
    };
    // Who may resolve the tasks of each template besides scopes and the task's own resolvers
    // (the templates' current versions): read once for `type=resolvable`.
    let template_resolvers: HashMap<String, (bool, Vec<String>)> = if kind == ListType::Resolvable {
        s.engine
            .store()
            .list_templates()
            .await?
            .into_iter()
            .filter_map(|row| {
                let t: Template = serde_json::from_value(row.body).ok()?;
                Some((
                    row.name,
                    (t.allow_all_resolver_usernames, t.allowed_resolver_usernames),
                ))
            })
            .collect()
    } else {
        HashMap::new()
    };
    let may_resolve = |t: &TaskRow| {
        c.may(&format!("tasks:resolve:{}", t.template))
            || c.user.as_deref().is_some_and(|u| {
                t.people.is_resolver(u)
                    || template_resolvers
                        .get(&t.template)
                        .is_some_and(|(all, users)| *all || users.iter().any(|x| x == u))
            })
    };
    let (rows, cursor) = crate::identity::tasks_where(&s, filter, |t| {
        let selected = c.may_read_task(t)
            && match kind {
                ListType::Own => t.requester == c.name,
                ListType::Resolvable => may_resolve(t),
                ListType::All => true,
            };
        selected
            && state.is_none_or(|st| dto::task_state(t, now) == st)
            && tags
                .iter()
                .all(|(k, v)| t.tags.get(k).and_then(Value::as_str) == Some(v.as_str()))
            && before.is_none_or(|b| t.updated_at < b)
            && after.is_none_or(|a| t.updated_at > a)
    })
    .await?;
    let mut templates: HashMap<(String, i64), Option<Template>> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let key = (row.template.clone(), row.template_version);
        if !templates.contains_key(&key) {
            let tpl = template_of(&s, &key.0, key.1).await;
            templates.insert(key.clone(), tpl);
        }
        // Steps give steps_done and steps_total; a task gone meanwhile is left out.
        let Some((task, steps)) = s.engine.store().get_task(&row.id).await? else {
            continue;
        };
        out.push(TaskOut::new(
            task,
            &steps,
            templates[&key].as_ref(),
            None,
            None,
            now,
        ));
    }
    let next = cursor.map(|last| {
        let mut q = vec![("type", param(&pairs, "type").unwrap_or("own").to_string())];
        if let Some(st) = state {
            q.push(("state", st.to_string()));
        }
        if let Some(t) = &template {
            q.push(("template", t.clone()));
        }
        q.push(("page_size", size.to_string()));
        q.push(("last", last));
        next_link("/task", q)
    });
    Ok((paging_headers(size, next), Json(out)).into_response())
}

// ---- comments ----

#[derive(Deserialize)]
struct CommentIn {
    #[serde(default)]
    content: String,
}

/// `GET /utask/task/{id}/comment`: the task's comments, oldest first.
async fn list_comments(
    _c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<dto::CommentOut>>, Problem> {
    let comments = s.engine.store().comments(&id).await?;
    Ok(Json(
        comments.into_iter().map(dto::CommentOut::from).collect(),
    ))
}

/// `POST /utask/task/{id}/comment`: 201 with the comment.
async fn add_comment(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<dto::CommentOut>), Problem> {
    let req: CommentIn = parse_json(&body(b)?)?;
    let comment = crate::task_ops::comment_on(&s, &id, &c.name, &req.content).await?;
    Ok((StatusCode::CREATED, Json(comment.into())))
}

/// `GET /utask/task/{id}/comment/{commentid}`.
async fn get_comment(
    _c: Caller,
    State(s): State<AppState>,
    Path((id, comment)): Path<(String, String)>,
) -> Result<Json<dto::CommentOut>, Problem> {
    s.engine
        .store()
        .comments(&id)
        .await?
        .into_iter()
        .find(|c| c.id == comment)
        .map(|c| Json(c.into()))
        .ok_or_else(|| Problem::not_found(format!("comment {comment} of task {id}")))
}

// ---- resolutions ----

#[derive(Deserialize)]
struct CreateResolutionIn {
    task_id: String,
    #[serde(default)]
    resolver_inputs: Value,
    #[serde(default)]
    start_over: bool,
}

/// `POST /utask/resolution`: resolves a TODO task as `POST /api/v1/tasks/{id}/resolve` does
/// (it then runs at once); 201 with the resolution, whose id is the task's.
async fn create_resolution(
    c: Caller,
    State(s): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let req: CreateResolutionIn = parse_json(&body(b)?)?;
    if req.start_over {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "start_over",
            "taskhook does not start a resolution over; retry the task, or set its steps' states",
        ));
    }
    s.engine
        .resolve(&req.task_id, &c.name, req.resolver_inputs)
        .await?;
    let out = resolution_out(&s, &req.task_id).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("{PREFIX}/resolution/{}", out.id))],
        Json(out),
    )
        .into_response())
}

/// The task of a resolution id, 404 while it has none (the task waits for a resolver).
async fn resolved(s: &AppState, id: &str) -> Result<(TaskRow, Vec<StepRow>), Problem> {
    let (task, steps) = load(s, id).await?;
    if task.state == TaskState::Todo {
        return Err(Problem::not_found(format!("resolution {id}")));
    }
    Ok((task, steps))
}

async fn resolution_out(s: &AppState, id: &str) -> Result<ResolutionOut, Problem> {
    let (task, steps) = resolved(s, id).await?;
    let template = template_of(s, &task.template, task.template_version).await;
    let times = RunTimes::from_events(&s.engine.store().task_events(id).await?);
    ResolutionOut::new(task, &steps, template.as_ref(), &times, now_ms())
        .ok_or_else(|| Problem::not_found(format!("resolution {id}")))
}

/// `GET /utask/resolution/{id}`: the resolution with every step's state and output.
async fn get_resolution(
    _c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ResolutionOut>, Problem> {
    Ok(Json(resolution_out(&s, &id).await?))
}

/// `POST /utask/resolution/{id}/run`: runs a BLOCKED or PAUSED task again, as
/// `POST /api/v1/tasks/{id}/retry` does; a task already queued to run is left as it is.
/// 204.
async fn run_resolution(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let (task, _) = resolved(&s, &id).await?;
    if task.state != TaskState::Ready {
        s.engine.retry(&id, &c.name).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /utask/resolution/{id}/pause`: as `POST /api/v1/tasks/{id}/pause`; 204.
async fn pause_resolution(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    resolved(&s, &id).await?;
    s.engine.pause(&id, &c.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /utask/task/{id}/wontfix`: as `POST /api/v1/tasks/{id}/wontfix`; 204.
async fn wontfix_task(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    s.engine.wontfix(&id, &c.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /utask/resolution/{id}/cancel`: as `POST /api/v1/tasks/{id}/cancel`; 204.
async fn cancel_resolution(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    resolved(&s, &id).await?;
    s.engine.cancel(&id, &c.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /utask/resolution/{id}/extend`: as `POST /api/v1/tasks/{id}/extend`; 204.
async fn extend_resolution(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    resolved(&s, &id).await?;
    s.engine.extend(&id, &c.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /utask/resolution/{id}/step/{step}`.
async fn get_step(
    _c: Caller,
    State(s): State<AppState>,
    Path((id, step)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    let (task, steps) = resolved(&s, &id).await?;
    let row = steps
        .iter()
        .find(|r| r.name == step)
        .ok_or_else(|| Problem::not_found(format!("step {step:?} of resolution {id}")))?;
    let template = template_of(&s, &task.template, task.template_version).await;
    Ok(Json(dto::step(row, template.as_ref())))
}

#[derive(Deserialize)]
struct StepIn {
    state: String,
    #[serde(default)]
    output: Option<Value>,
}

/// `PUT /utask/resolution/{id}/step/{step}`: µTask's whole step; its `state` and `output` are
/// set as `PUT /api/v1/tasks/{id}/steps/{step}/state` sets them (the output only for DONE and
/// custom states; the step's definition is the template's and is not changed). 204.
async fn put_step(
    c: Caller,
    State(s): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    b: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, Problem> {
    let req: StepIn = parse_json(&body(b)?)?;
    resolved(&s, &id).await?;
    let output = req.output.filter(|_| {
        matches!(
            StepState::parse(&req.state),
            StepState::Done | StepState::Custom(_)
        )
    });
    s.engine
        .set_step_state(&id, &step, &req.state, output, &c.name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct StepStateIn {
    state: String,
}

/// `PUT /utask/resolution/{id}/step/{step}/state`: as
/// `PUT /api/v1/tasks/{id}/steps/{step}/state` without an output; 204.
async fn put_step_state(
    c: Caller,
    State(s): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    b: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, Problem> {
    let req: StepStateIn = parse_json(&body(b)?)?;
    resolved(&s, &id).await?;
    s.engine
        .set_step_state(&id, &step, &req.state, None, &c.name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- service ----

/// `GET /utask/unsecured/mon/ping`: `pong` when the database answers (503 otherwise).
async fn ping(State(s): State<AppState>) -> Result<&'static str, Problem> {
    s.engine.store().count_tasks(TaskState::Running).await?;
    Ok("pong")
}

/// `GET /utask/unsecured/stats`: how many tasks are in each of µTask's task states (READY
/// tasks count as RUNNING, PAUSED as BLOCKED).
async fn stats(State(s): State<AppState>) -> Result<Json<Value>, Problem> {
    let mut states: std::collections::BTreeMap<&'static str, u64> = Default::default();
    for st in taskhook_model::state::TASK_STATES {
        let n = s.engine.store().count_tasks(st).await?;
        let name = crate::utask_dto::state_name(st);
        *states.entry(name).or_default() += n;
    }
    Ok(Json(json!({ "task_states": states })))
}

/// `GET /utask/meta`: who the caller is.
async fn meta(c: Caller) -> Json<Value> {
    Json(json!({
        "application_name": "taskhook",
        "user_is_admin": c.may(taskhook_model::scope::ADMIN),
        "username": c.name,
        "user_groups": [],
        "version": env!("CARGO_PKG_VERSION"),
        "commit": "",
    }))
}
