//! The key ring of encryption at rest: how much data each key seals, and online rotation to
//! the newest key (admin only). See `taskhook_store::crypto`.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/keys", get(key_status))
        .route("/api/v1/keys/rotate", post(rotate_keys))
}

/// `GET /api/v1/keys`: the ring's key ids (never the keys), the key the canary is sealed
/// with, and how many stored values each key seals (a full scan of the sealed columns).
#[utoipa::path(get, path = "/api/v1/keys", responses((status = 200, description = "Key ids, the canary's key and values per key"), (status = 403, body = Problem)))]
pub(crate) async fn key_status(
    c: Caller,
    State(s): State<AppState>,
) -> Result<Json<Value>, Problem> {
    c.require_admin()?;
    let status = s.engine.store().key_status().await?;
    Ok(Json(json!(status)))
}

/// `POST /api/v1/keys/rotate`: reseals every value held under an older key (or stored before
/// sealing) with the newest key, in short batches while the server keeps serving; answers
/// with the counts and the status after.
#[utoipa::path(post, path = "/api/v1/keys/rotate", responses((status = 200, description = "Rotation counts and the status after"), (status = 403, body = Problem)))]
pub(crate) async fn rotate_keys(
    c: Caller,
    State(s): State<AppState>,
) -> Result<Json<Value>, Problem> {
    c.require_admin()?;
    let store = s.engine.store();
    tracing::warn!(by = %c.name, "key rotation started");
    let report = store.rotate_keys().await?;
    tracing::warn!(
        by = %c.name,
        key = %report.key_id,
        resealed = report.resealed,
        changed_meanwhile = report.changed_meanwhile,
        "key rotation finished"
    );
    let status = store.key_status().await?;
    Ok(Json(json!({"rotation": report, "status": status})))
}
