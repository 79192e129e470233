//! API errors as `application/problem+json` (RFC 9457), mapped in one place.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use taskhook_engine::EngineError;
use taskhook_model::validate::ValidationError;
use taskhook_store::StoreError;

/// An API error. `field` names the offending part of the request when there is one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status and `title` say what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every problem found, for template validation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub errors: Vec<ValidationError>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            errors: vec![],
        }
    }

    pub fn field(status: StatusCode, field: impl Into<String>, detail: impl Into<String>) -> Self {
        Problem {
            field: Some(field.into()),
            ..Problem::new(status, detail)
        }
    }

    pub fn unauthorized() -> Self {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer <token>)",
        )
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Problem::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let note = crate::audit::ProblemNote(match &self.field {
            Some(f) => format!("{}: {} (field: {f})", self.title, self.detail),
            None => format!("{}: {}", self.title, self.detail),
        });
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        response.extensions_mut().insert(note);
        // µTask's clients print only `error`: it names the field, when there is one.
        response
            .extensions_mut()
            .insert(ProblemMessage(match &self.field {
                Some(f) if f != "body" => format!("{f}: {}", self.detail),
                _ => self.detail.clone(),
            }));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // The database is restarting or unreachable: nothing was changed; ask for a retry.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound { what } => Problem::not_found(what),
            EngineError::Invalid { field, message } => {
                Problem::field(StatusCode::BAD_REQUEST, field, message)
            }
            EngineError::Template(t) => {
                let first = t.errors.first().map(|e| e.field.clone());
                Problem {
                    field: first,
                    errors: t.errors.clone(),
                    ..Problem::new(StatusCode::BAD_REQUEST, t.to_string())
                }
            }
            EngineError::Conflict(m) => Problem::new(StatusCode::CONFLICT, m),
            EngineError::Store(s) => s.into(),
        }
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what } => Problem::not_found(what),
            StoreError::Transition(t) => Problem::new(StatusCode::CONFLICT, t.to_string()),
            StoreError::Conflict(m) => Problem::new(StatusCode::CONFLICT, m),
            other => {
                tracing::error!(error = %other, "store failure");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unavailable; try again",
                )
            }
        }
    }
}

/// The message of a problem response, for layers that show it in another form.
#[derive(Clone, Debug)]
pub(crate) struct ProblemMessage(pub(crate) String);

/// Whether a request path is under µTask's API (`/utask`).
pub(crate) fn is_utask_path(path: &str) -> bool {
    path == crate::utask_api::PREFIX
        || path
            .strip_prefix(crate::utask_api::PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Largest problem body this layer rewrites; every problem this server writes is far smaller.
const MAX_PROBLEM_BYTES: usize = 256 * 1024;

/// The outermost layer of the router: a problem answered under `/utask` also carries µTask's
/// error member, `{"error": "<field>: <detail>"}` (the detail alone without a field), beside the problem's own members, so that µTask
/// clients reading `error` keep working. Every other response passes unchanged.
pub(crate) async fn with_utask_error(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let utask = is_utask_path(request.uri().path());
    let response = next.run(request).await;
    if !utask {
        return response;
    }
    let Some(ProblemMessage(message)) = response.extensions().get::<ProblemMessage>().cloned()
    else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_PROBLEM_BYTES).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "error body too large").into_response();
    };
    let rewritten = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut members)) => {
            members.insert("error".into(), serde_json::Value::String(message));
            serde_json::to_vec(&members).unwrap_or_else(|_| bytes.to_vec())
        }
        _ => bytes.to_vec(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(rewritten))
}
