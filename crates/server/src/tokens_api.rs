//! API tokens: create (the secret is shown once and kept only as its SHA-256), list, revoke.
//! A caller may only give a new token scopes it holds itself.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use taskhook_model::scope;
use taskhook_store::{NewToken, TokenRow, now_ms};
use utoipa::ToSchema;

use crate::api::{body, parse_json};
use crate::auth::{AdminToken, Caller};
use crate::dto::time;
use crate::identity::token_hash;
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Scopes the token holds; the caller must hold every one of them.
    pub scopes: Vec<String>,
    #[serde(default)]
    pub description: String,
    /// RFC 3339 time after which the token is refused.
    pub expires_at: Option<String>,
    /// Or a lifetime from now, such as `30d` or `12h`.
    pub expires_in: Option<String>,
    /// The user the token acts as (requester, resolver and watcher grants). Only a caller
    /// holding `admin` may name another user than its own.
    pub user: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenCreated {
    pub id: String,
    /// The secret: shown only in this answer.
    pub token: String,
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenOut {
    pub id: String,
    pub description: String,
    pub scopes: Vec<String>,
    pub user: Option<String>,
    pub created_by: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub revoked: bool,
    pub revoked_at: Option<String>,
}

impl From<TokenRow> for TokenOut {
    fn from(t: TokenRow) -> Self {
        TokenOut {
            id: t.id,
            description: t.description,
            scopes: t.scopes,
            user: t.user,
            created_by: t.created_by,
            created_at: time(t.created_at),
            expires_at: t.expires_at.map(time),
            last_used_at: t.last_used_at.map(time),
            revoked: t.revoked_at.is_some(),
            revoked_at: t.revoked_at.map(time),
        }
    }
}

fn bad(field: &str, detail: impl Into<String>) -> Problem {
    Problem::field(StatusCode::BAD_REQUEST, field, detail)
}

/// The longest a token may live: a longer lifetime is no expiry in practice, and an unbounded
/// one overflowed into none at all.
const MAX_TOKEN_LIFETIME: std::time::Duration = taskhook_model::duration::TEN_YEARS;

/// When a token asked for now expires (Unix ms), or `None` for never: in the future, and at
/// most [`MAX_TOKEN_LIFETIME`] away, whichever field gives it.
fn expiry(req: &CreateTokenRequest, now: i64) -> Result<Option<i64>, Problem> {
    let max_ms = taskhook_model::duration::as_millis_i64(MAX_TOKEN_LIFETIME);
    let too_far = || "a token lives at most 3650 days (10 years)".to_string();
    match (&req.expires_at, &req.expires_in) {
        (Some(_), Some(_)) => Err(bad("expires_in", "give expires_at or expires_in, not both")),
        (Some(at), None) => {
            let at = at
                .parse::<jiff::Timestamp>()
                .map_err(|e| bad("expires_at", format!("not an RFC 3339 time: {e}")))?
                .as_millisecond();
            if at <= now {
                return Err(bad("expires_at", "must be in the future"));
            }
            if at - now > max_ms {
                return Err(bad("expires_at", too_far()));
            }
            Ok(Some(at))
        }
        (None, Some(d)) => {
            let d = taskhook_model::duration::parse_duration_at_most(d, MAX_TOKEN_LIFETIME)
                .map_err(|e| bad("expires_in", format!("{e}: {}", too_far())))?;
            if d.is_zero() {
                return Err(bad("expires_in", "must be more than zero"));
            }
            Ok(Some(now + taskhook_model::duration::as_millis_i64(d)))
        }
        (None, None) => Ok(None),
    }
}

/// Most scopes one token holds.
pub(crate) const MAX_SCOPES: usize = 100;
/// Longest token description, in characters.
pub(crate) const MAX_DESCRIPTION_CHARS: usize = 500;
/// Longest token user name (printable ASCII).
pub(crate) const MAX_USER_LEN: usize = 128;

fn valid_user(u: &str) -> bool {
    (1..=MAX_USER_LEN).contains(&u.len())
        && u.chars().all(|c| c.is_ascii_graphic())
        && !u.contains(':')
}

#[utoipa::path(post, path = "/api/v1/tokens", request_body = CreateTokenRequest,
    description = "Creates an API token holding the given scopes (each held by the caller). The token is in this answer only.",
    responses((status = 201, body = TokenCreated), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn create_token(
    c: Caller,
    State(s): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let req: CreateTokenRequest = parse_json(&body(b)?)?;
    if req.scopes.is_empty() {
        return Err(bad("scopes", "a token needs at least one scope"));
    }
    if req.scopes.len() > MAX_SCOPES {
        return Err(bad("scopes", format!("at most {MAX_SCOPES} scopes")));
    }
    for (i, sc) in req.scopes.iter().enumerate() {
        scope::check(sc).map_err(|e| bad(&format!("scopes[{i}]"), format!("{sc:?}: {e}")))?;
    }
    if let Some(missing) = scope::first_missing(&c.scopes, &req.scopes) {
        return Err(Problem::field(
            StatusCode::FORBIDDEN,
            "scopes",
            format!("the caller does not hold {missing:?}, so it cannot give it to a token"),
        ));
    }
    if req.description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(bad(
            "description",
            format!("at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    let now = now_ms();
    let expires_at = expiry(&req, now)?;
    let user = match req.user {
        Some(u) => {
            if !valid_user(&u) {
                return Err(bad(
                    "user",
                    "1-128 printable characters, without spaces or ':'",
                ));
            }
            if !c.is_user(&u) && !c.may(scope::ADMIN) {
                return Err(Problem::field(
                    StatusCode::FORBIDDEN,
                    "user",
                    "only a caller holding \"admin\" may create a token for another user",
                ));
            }
            Some(u)
        }
        None => c.user.clone(),
    };
    let secret = AdminToken::generate();
    let id = uuid::Uuid::now_v7().to_string();
    s.engine
        .store()
        .create_token(NewToken {
            id: id.clone(),
            hash: token_hash(&secret),
            description: req.description,
            scopes: req.scopes,
            user,
            created_by: c.name.clone(),
            created_at: now,
            expires_at,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id,
            token: secret,
            expires_at: expires_at.map(time),
        }),
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/tokens", responses((status = 200, body = Vec<TokenOut>)))]
pub async fn list_tokens(
    _c: Caller,
    State(s): State<AppState>,
) -> Result<Json<Vec<TokenOut>>, Problem> {
    Ok(Json(
        s.engine
            .store()
            .list_tokens()
            .await?
            .into_iter()
            .map(TokenOut::from)
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", responses((status = 204), (status = 404, body = Problem)))]
pub async fn revoke_token(
    _c: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    if s.engine.store().revoke_token(&id, now_ms()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("token {id}")))
    }
}
