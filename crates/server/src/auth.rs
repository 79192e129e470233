//! Bearer-token authentication. The admin token is kept only as a SHA-256 hash and
//! compared in constant time.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{AppState, Problem};

pub struct AdminToken {
    hash: [u8; 32],
}

impl AdminToken {
    pub fn from_token(token: &str) -> Self {
        AdminToken {
            hash: Sha256::digest(token.as_bytes()).into(),
        }
    }

    pub fn from_hash_hex(hex_hash: &str) -> Option<Self> {
        let bytes = hex::decode(hex_hash).ok()?;
        Some(AdminToken {
            hash: bytes.try_into().ok()?,
        })
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    pub fn matches(&self, token: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        h.ct_eq(&self.hash).into()
    }

    /// A fresh random token: 32 bytes, hex.
    pub fn generate() -> String {
        let bytes: [u8; 32] = rand::random();
        format!("thk_{}", hex::encode(bytes))
    }
}

/// Who made the request. Extracting it rejects unauthenticated requests with 401.
pub struct Caller {
    pub name: String,
}

impl Caller {
    /// 403 unless the caller is the admin (today the only token there is).
    pub fn require_admin(&self) -> Result<(), Problem> {
        if self.name == "admin" {
            Ok(())
        } else {
            Err(Problem::new(
                axum::http::StatusCode::FORBIDDEN,
                "only the admin token may do this",
            ))
        }
    }
}

impl Caller {
    /// The caller a request's bearer token names, if it is valid.
    pub(crate) fn from_headers(
        headers: &axum::http::HeaderMap,
        state: &AppState,
    ) -> Option<Caller> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)?;
        state.admin.matches(token).then(|| Caller {
            name: "admin".into(),
        })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        Caller::from_headers(&parts.headers, state).ok_or_else(Problem::unauthorized)
    }
}
