//! The HTTP face of taskhook: JSON API, bearer-token auth, problem+json errors and
//! the OpenAPI document. Handlers translate between API shapes and engine calls;
//! they never run steps themselves.

mod api;
mod audit;
mod auth;
mod dto;
mod forwarded;
mod hooks_api;
pub mod identity;
mod keys;
mod maintenance;
pub mod openapi;
mod problem;
mod ratelimit;
pub mod scopes;
mod secrets_api;
mod task_ops;
mod tokens_api;
mod utask_api;
mod utask_dto;

use std::sync::Arc;

use axum::Router;
use taskhook_engine::Engine;

pub use auth::AdminToken;
pub use identity::{Caller, Identity, ProxyAuth, ProxyScopes};
pub use problem::Problem;
pub use ratelimit::{Rate, RateLimits};

/// Request-size limits, each configurable. Template limits (document size, steps) belong to
/// the engine (`EngineConfig`), so that every way in applies them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Request-rate limits (see `ratelimit`).
    pub rate: RateLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            rate: RateLimits::default(),
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
///
/// Around every route, outermost first: µTask's `error` member on problems under `/utask`, the rate limit (which also finds the caller, see
/// `audit::actor_of`), the audit record of write calls, maintenance mode, then the handler
/// (which authenticates with `Caller`). Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so that client addresses are known.
pub fn router(state: AppState) -> Router {
    let limiters = ratelimit::Limiters::new(&state.limits.rate);
    api::routes(state.clone())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            (state, limiters),
            ratelimit::limit,
        ))
        // Outside everything: problems answered under /utask carry µTask's `error` member.
        .layer(axum::middleware::from_fn(problem::with_utask_error))
}
