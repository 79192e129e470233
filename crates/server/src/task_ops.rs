//! What an operator does to tasks that stopped for a person: set a step's state by hand,
//! and retry BLOCKED tasks in bulk (by reason, template or ids).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use taskhook_model::TaskState;
use utoipa::ToSchema;

use crate::api::{blocked_reason, body, page_limit, parse_json, template_of};
use crate::auth::Caller;
use crate::dto::TaskOut;
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tasks/retry", post(retry_tasks))
        .route("/api/v1/tasks/{id}/steps/{step}/state", put(set_step_state))
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
    let (task, steps) = s
        .engine
        .store()
        .get_task(&id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("task {id}")))?;
    let template = template_of(&s, &task.template, task.template_version).await;
    Ok(Json(TaskOut::new(task, Some(steps), template.as_ref())))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// These tasks (BLOCKED or PAUSED), each reported apart.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    /// Or the BLOCKED tasks blocked for this reason (`crashed`, `crash_loop`,
    /// `failed_steps`, `retry_max`, `deadlock`, `template`)…
    #[serde(default)]
    pub reason: Option<String>,
    /// …and/or of this template.
    #[serde(default)]
    pub template: Option<String>,
    /// Most tasks retried by a filter, 1-1000 (default 100), newest first.
    #[serde(default)]
    pub limit: Option<u32>,
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

/// Most ids one bulk retry names.
const MAX_IDS: usize = 1000;

/// `POST /api/v1/tasks/retry`: retries many tasks at once, each as `POST …/{id}/retry` would
/// (authorized and audited one by one). A filter retries only tasks the caller may retry.
#[utoipa::path(post, path = "/api/v1/tasks/retry", request_body = RetryRequest,
    responses((status = 200, body = RetryOut), (status = 400, body = Problem)))]
pub(crate) async fn retry_tasks(
    c: Caller,
    State(s): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<RetryOut>, Problem> {
    let req: RetryRequest = parse_json(&body(b)?)?;
    let mut out = RetryOut {
        retried: Vec::new(),
        failed: Vec::new(),
    };
    if let Some(ids) = req.ids {
        if req.reason.is_some() || req.template.is_some() || req.limit.is_some() {
            return Err(Problem::field(
                StatusCode::BAD_REQUEST,
                "ids",
                "give ids, or a filter (reason, template, limit), not both",
            ));
        }
        if ids.is_empty() || ids.len() > MAX_IDS {
            return Err(Problem::field(
                StatusCode::BAD_REQUEST,
                "ids",
                format!("give 1 to {MAX_IDS} task ids"),
            ));
        }
        for id in ids {
            match retry_one(&s, &c, &id).await {
                Ok(()) => out.retried.push(id),
                Err(p) => out.failed.push(RetryFailure {
                    id,
                    status: p.status,
                    detail: p.detail,
                }),
            }
        }
        return Ok(Json(out));
    }
    let reason = blocked_reason(req.reason)?;
    if reason.is_none() && req.template.is_none() {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "reason",
            "give ids, a reason or a template: a bulk retry of every BLOCKED task is not taken",
        ));
    }
    if let Some(t) = &req.template {
        taskhook_model::name::check(t, taskhook_model::validate::MAX_NAME_LEN)
            .map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "template", e))?;
    }
    let limit = page_limit(req.limit)?;
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
        if !crate::identity::may_retry(&s, &c, &task).await {
            continue;
        }
        match s.engine.retry(&task.id, &c.name).await {
            Ok(()) => out.retried.push(task.id),
            Err(e) => {
                let p = Problem::from(e);
                out.failed.push(RetryFailure {
                    id: task.id,
                    status: p.status,
                    detail: p.detail,
                })
            }
        }
    }
    Ok(Json(out))
}

/// One named task: 404 when absent or not readable, 403 when readable but not retryable.
async fn retry_one(s: &AppState, c: &Caller, id: &str) -> Result<(), Problem> {
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
    s.engine.retry(id, &c.name).await?;
    Ok(())
}
