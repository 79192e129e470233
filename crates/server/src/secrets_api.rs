//! Named secrets: `PUT|GET|DELETE /api/v1/secrets/{name}` and `GET /api/v1/secrets`.
//! Values go in and never come out: every answer is metadata only.
//!
//! Scopes (for scoped tokens): `secrets:write:<name>` to put or delete, `secrets:read:<name>`
//! to read metadata (`secrets:read:*` to list); writing a template that reads a secret needs
//! `secrets:use:<name>` ([`check_template_secrets`]). Today only the admin token calls these.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use taskhook_model::Template;
use taskhook_store::SecretMeta;

use crate::api::{body, parse_json};
use crate::auth::Caller;
use crate::dto::time;
use crate::{AppState, Problem};

/// Longest secret value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest description, in characters.
pub(crate) const MAX_DESCRIPTION_CHARS: usize = 1000;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/secrets", get(list_secrets))
        .route(
            "/api/v1/secrets/{name}",
            get(get_secret).put(put_secret).delete(delete_secret),
        )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRequest {
    /// The value (never returned).
    pub value: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// A secret as the API shows it: never its value.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SecretOut {
    pub name: String,
    pub description: String,
    /// 1 when created, one more at each replacement.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<SecretMeta> for SecretOut {
    fn from(m: SecretMeta) -> Self {
        SecretOut {
            name: m.name,
            description: m.description,
            version: m.version,
            created_at: time(m.created_at),
            updated_at: time(m.updated_at),
        }
    }
}

fn check_name(name: &str) -> Result<(), Problem> {
    taskhook_model::secret::check_name(name)
        .map_err(|e| Problem::field(StatusCode::BAD_REQUEST, "name", e))
}

#[utoipa::path(put, path = "/api/v1/secrets/{name}", request_body = SecretRequest,
    responses((status = 201, body = SecretOut), (status = 200, body = SecretOut), (status = 400, body = Problem)))]
pub(crate) async fn put_secret(
    _c: Caller,
    State(s): State<AppState>,
    Path(name): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    // Scope: secrets:write:<name>.
    check_name(&name)?;
    let req: SecretRequest = parse_json(&body(b)?)?;
    if req.value.is_empty() {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "value",
            "a secret's value cannot be empty",
        ));
    }
    if req.value.len() > MAX_VALUE_BYTES {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "value",
            format!("a secret's value has at most {MAX_VALUE_BYTES} bytes"),
        ));
    }
    let description = req.description.unwrap_or_default();
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "description",
            format!("at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    let (meta, created) = s
        .engine
        .store()
        .put_secret(&name, &req.value, &description)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(SecretOut::from(meta))).into_response())
}

#[utoipa::path(get, path = "/api/v1/secrets/{name}",
    responses((status = 200, body = SecretOut), (status = 404, body = Problem)))]
pub(crate) async fn get_secret(
    _c: Caller,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SecretOut>, Problem> {
    // Scope: secrets:read:<name>.
    check_name(&name)?;
    let meta = s
        .engine
        .store()
        .get_secret(&name)
        .await?
        .ok_or_else(|| Problem::not_found(format!("secret {name:?}")))?;
    Ok(Json(meta.into()))
}

#[utoipa::path(get, path = "/api/v1/secrets", responses((status = 200, body = Vec<SecretOut>)))]
pub(crate) async fn list_secrets(
    _c: Caller,
    State(s): State<AppState>,
) -> Result<Json<Vec<SecretOut>>, Problem> {
    // Scope: secrets:read:* (or only the secrets the caller may read).
    let rows = s.engine.store().list_secrets().await?;
    Ok(Json(rows.into_iter().map(SecretOut::from).collect()))
}

#[utoipa::path(delete, path = "/api/v1/secrets/{name}", responses((status = 204), (status = 404, body = Problem)))]
pub(crate) async fn delete_secret(
    _c: Caller,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    // Scope: secrets:write:<name>.
    check_name(&name)?;
    if s.engine.store().delete_secret(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("secret {name:?}")))
    }
}

/// Checks a template about to be written (or validated) by a caller holding `held`: the caller
/// must hold `secrets:use:<name>` for every secret the template reads (403 naming the first
/// field reading one it may not use), and every such secret must exist (400 listing each
/// missing one with the first field reading it).
pub(crate) async fn check_template_secrets(
    s: &AppState,
    template: &Template,
    held: &[String],
) -> Result<(), Problem> {
    let used = taskhook_engine::template_secrets(template);
    if let Some(name) =
        taskhook_model::secret::first_unusable(held, used.keys().map(String::as_str))
    {
        return Err(Problem::field(
            StatusCode::FORBIDDEN,
            used[name].clone(),
            format!(
                "the template reads secret {name:?}, and this token lacks the scope {:?}",
                taskhook_model::secret::use_scope(name)
            ),
        ));
    }
    s.engine.check_template_secrets(template).await?;
    Ok(())
}
