//! What an operator does to tasks that stopped for a person: set a step's state by hand,
//! rerun a task from a step, retry BLOCKED tasks in bulk (by reason, template or ids), give
//! a task more runs (`extend`), close it as won't fix, and comment on a task.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use taskhook_model::TaskState;
use utoipa::ToSchema;

use crate::api::{
    MAX_PAGE_LIMIT, blocked_reason, body, page_limit, parse_json, task_out, task_state,
};
use crate::auth::Caller;
use crate::dto::{TaskCreated, TaskOut, time};
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tasks/retry", post(retry_tasks))
        .route("/api/v1/tasks/{id}/steps/{step}/state", put(set_step_state))
        .route("/api/v1/tasks/{id}/extend", post(extend_task))
        .route("/api/v1/tasks/{id}/rerun", post(rerun_task))
        .route("/api/v1/tasks/{id}/wontfix", post(wontfix_task))
        .route(
            "/api/v1/tasks/{id}/comments",
            get(list_comments).post(add_comment),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepStateRequest {
    /// `TODO` (run it again, its retries back), `DONE`, `PRUNE`, `CLIENT_ERROR`,
    /// `FATAL_ERROR`, or one of the step's custom states.
    pub state: String,
    /// The step's output, for `DONE` and custom states (kept when absent).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub output: Option<Value>,
}

/// `PUT /api/v1/tasks/{id}/steps/{step}/state`: sets a step's state on a BLOCKED or PAUSED
/// task (409 otherwise); the task stays as it is until it is retried.
#[utoipa::path(put, path = "/api/v1/tasks/{id}/steps/{step}/state", request_body = StepStateRequest,
    responses((status = 200, body = TaskOut), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn set_step_state(
    c: Caller,
    State(s): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<TaskOut>, Problem> {
    let req: StepStateRequest = parse_json(&body(b)?)?;
    s.engine
        .set_step_state(&id, &step, &req.state, req.output, &c.name)
        .await?;
    task_out(&s, &id).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunRequest {
    /// The step to run again; the steps depending on it run again too.
    pub from: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RerunOut {
    pub id: String,
    pub state: String,
    /// The steps sent back to TODO.
    pub steps: Vec<String>,
}

/// `POST /api/v1/tasks/{id}/rerun`: runs a BLOCKED or PAUSED task again from a step (409
/// otherwise): the step and all that depend on it go back to TODO, the others keep their
/// outputs.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/rerun", request_body = RerunRequest,
    responses((status = 200, body = RerunOut), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn rerun_task(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<RerunOut>, Problem> {
    let req: RerunRequest = parse_json(&body(b)?)?;
    let steps = s.engine.rerun(&id, &req.from, &c.name).await?;
    let Json(t) = task_state(&s, &id).await?;
    Ok(Json(RerunOut {
        id: t.id,
        state: t.state,
        steps,
    }))
}

/// `POST /api/v1/tasks/{id}/wontfix`: closes a task that is TODO, BLOCKED or PAUSED as
/// WONTFIX, a final state (409 otherwise).
#[utoipa::path(post, path = "/api/v1/tasks/{id}/wontfix",
    responses((status = 200, body = TaskCreated), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn wontfix_task(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskCreated>, Problem> {
    s.engine.wontfix(&id, &c.name).await?;
    task_state(&s, &id).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// These tasks (BLOCKED or PAUSED), each reported apart; without ids, the BLOCKED tasks
    /// the filters select, newest first. At least one of ids, reason and template is given.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    /// Only BLOCKED tasks blocked for this reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Only tasks of this template.
    #[serde(default)]
    pub template: Option<String>,
    /// Most tasks a filter retries, 1-1000 (default 100); ids are all tried.
    #[serde(default)]
    #[schema(value_type = Option<u32>)]
    pub limit: Option<serde_json::Number>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetryFailure {
    pub id: String,
    pub status: u16,
    pub detail: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetryOut {
    /// Tasks now READY.
    pub retried: Vec<String>,
    /// Tasks that could not be retried, and why.
    pub failed: Vec<RetryFailure>,
}

/// `POST /api/v1/tasks/retry`: retries many tasks at once, each as `POST …/{id}/retry` would
/// (authorized and audited one by one). Named tasks are each reported; tasks a filter
/// selects that the caller may not retry are left alone.
#[utoipa::path(post, path = "/api/v1/tasks/retry", request_body = RetryRequest,
    responses((status = 200, body = RetryOut), (status = 400, body = Problem)))]
pub(crate) async fn retry_tasks(
    c: Caller,
    State(s): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<RetryOut>, Problem> {
    // A null field is an absent one, as in every request body.
    let req: RetryRequest = parse_json(&body(b)?)?;
    let reason = blocked_reason(req.reason)?;
    if let Some(t) = &req.template {
        taskhook_model::name::check(t, taskhook_model::validate::MAX_NAME_LEN)
            .map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "template", e))?;
    }
    // A JSON integer may be written `10.0`.
    let limit = match req.limit {
        None => None,
        Some(n) => Some(
            n.as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    Problem::field(
                        StatusCode::BAD_REQUEST,
                        "limit",
                        "must be an integer from 1 to 1000",
                    )
                })?,
        ),
    };
    let limit = page_limit(limit)?;
    let mut out = RetryOut {
        retried: Vec::new(),
        failed: Vec::new(),
    };
    let Some(ids) = req.ids else {
        if reason.is_none() && req.template.is_none() {
            return Err(Problem::field(
                StatusCode::BAD_REQUEST,
                "reason",
                "give ids, a reason or a template: a bulk retry of every BLOCKED task is not taken",
            ));
        }
        let tasks = s
            .engine
            .store()
            .list_tasks(taskhook_store::TaskFilter {
                state: Some(TaskState::Blocked),
                template: req.template,
                blocked_reason: reason,
                before: None,
                limit,
            })
            .await?;
        for task in tasks {
            if crate::identity::may_retry(&s, &c, &task).await {
                let id = task.id.clone();
                record(
                    &mut out,
                    id,
                    s.engine
                        .retry(&task.id, &c.name)
                        .await
                        .map_err(Problem::from),
                );
            }
        }
        return Ok(Json(out));
    };
    if ids.is_empty() || ids.len() > MAX_PAGE_LIMIT as usize {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "ids",
            format!("give 1 to {MAX_PAGE_LIMIT} task ids"),
        ));
    }
    for id in ids {
        let result = retry_one(&s, &c, &id, reason.as_deref(), req.template.as_deref()).await;
        record(&mut out, id, result);
    }
    Ok(Json(out))
}

fn record(out: &mut RetryOut, id: String, result: Result<(), Problem>) {
    match result {
        Ok(()) => out.retried.push(id),
        Err(p) => out.failed.push(RetryFailure {
            id,
            status: p.status,
            detail: p.detail,
        }),
    }
}

/// One named task: 404 when absent or not readable, 403 when readable but not retryable,
/// 409 when it does not match the filters given beside the ids.
async fn retry_one(
    s: &AppState,
    c: &Caller,
    id: &str,
    reason: Option<&str>,
    template: Option<&str>,
) -> Result<(), Problem> {
    let not_found = || Problem::not_found(format!("task {id}"));
    let task = match s.engine.store().get_task(id).await? {
        Some((t, _)) => t,
        None => return Err(not_found()),
    };
    if !crate::identity::may_retry(s, c, &task).await {
        return Err(if c.may_read_task(&task) {
            crate::identity::forbidden(&format!("tasks:resolve:{}", task.template))
        } else {
            not_found()
        });
    }
    let matches = reason.is_none_or(|r| task.blocked_reason.as_deref() == Some(r))
        && template.is_none_or(|t| task.template == t);
    if !matches {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "the task does not match the reason or template given",
        ));
    }
    s.engine.retry(id, &c.name).await?;
    Ok(())
}

/// `POST /api/v1/tasks/{id}/extend`: a task BLOCKED by `retry_max` gets as many runs again as
/// its template allows and runs (409 for any other task).
#[utoipa::path(post, path = "/api/v1/tasks/{id}/extend",
    responses((status = 200, body = TaskCreated), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn extend_task(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskCreated>, Problem> {
    s.engine.extend(&id, &c.name).await?;
    task_state(&s, &id).await
}

/// Longest comment, in characters.
pub(crate) const MAX_COMMENT_CHARS: usize = 10_000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentRequest {
    /// The comment, 1 to 10,000 characters.
    pub content: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommentOut {
    pub id: String,
    /// Who wrote it (the caller's name).
    pub author: String,
    pub content: String,
    pub created_at: String,
}

impl From<taskhook_store::Comment> for CommentOut {
    fn from(c: taskhook_store::Comment) -> Self {
        CommentOut {
            id: c.id,
            author: c.author,
            content: c.content,
            created_at: time(c.created_at),
        }
    }
}

/// `GET /api/v1/tasks/{id}/comments`: the task's comments, oldest first.
#[utoipa::path(get, path = "/api/v1/tasks/{id}/comments",
    responses((status = 200, body = Vec<CommentOut>), (status = 404, body = Problem)))]
pub(crate) async fn list_comments(
    _c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<CommentOut>>, Problem> {
    let comments = s.engine.store().comments(&id).await?;
    Ok(Json(comments.into_iter().map(CommentOut::from).collect()))
}

/// `POST /api/v1/tasks/{id}/comments`: adds a comment by the caller (at most 1,000 a task).
#[utoipa::path(post, path = "/api/v1/tasks/{id}/comments", request_body = CommentRequest,
    responses((status = 201, body = CommentOut), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn add_comment(
    c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CommentOut>), Problem> {
    let req: CommentRequest = parse_json(&body(b)?)?;
    let comment = comment_on(&s, &id, &c.name, &req.content).await?;
    Ok((StatusCode::CREATED, Json(comment.into())))
}

/// Adds a comment to a task by `author`, checking its length (1 to [`MAX_COMMENT_CHARS`]
/// characters; at most 1,000 comments a task, counted by the store).
pub(crate) async fn comment_on(
    s: &AppState,
    id: &str,
    author: &str,
    content: &str,
) -> Result<taskhook_store::Comment, Problem> {
    let chars = content.chars().count();
    if chars == 0 || chars > MAX_COMMENT_CHARS {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "content",
            format!("a comment has 1 to {MAX_COMMENT_CHARS} characters"),
        ));
    }
    Ok(s.engine.store().add_comment(id, author, content).await?)
}
