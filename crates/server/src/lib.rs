//! The HTTP face of taskhook: JSON API, bearer-token auth, problem+json errors and
//! the OpenAPI document. Handlers translate between API shapes and engine calls;
//! they never run steps themselves.

mod api;
mod auth;
mod dto;
mod hooks_api;
mod keys;
pub mod identity;
mod maintenance;
mod problem;
pub mod scopes;
mod tokens_api;
mod secrets_api;

use std::sync::Arc;

use axum::Router;
use taskhook_engine::Engine;

pub use auth::AdminToken;
pub use identity::{Caller, Identity, ProxyAuth, ProxyScopes};
pub use problem::Problem;

/// Request-size limits, each configurable. Template limits (document size, steps) belong to
/// the engine (`EngineConfig`), so that every way in applies them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub admin: Arc<AdminToken>,
    pub limits: Limits,
    /// API tokens' bookkeeping and the reverse-proxy settings.
    pub identity: Arc<Identity>,
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    api::routes(state)
}
