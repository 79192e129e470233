//! API tokens as the store keeps them: metadata and scopes, with only the SHA-256 of the
//! secret (hex), looked up by that hash.

use serde::Serialize;

use crate::{Result, Store};

/// A token to insert.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    pub description: String,
    pub scopes: Vec<String>,
    /// The user the token acts as, if any.
    pub user: Option<String>,
    /// The actor who created it.
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenRow {
    pub id: String,
    pub description: String,
    pub scopes: Vec<String>,
    pub user: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl TokenRow {
    /// Whether the token may be used at `now` (unix ms): not revoked, not expired.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

pub(crate) const TOKEN_COLUMNS: &str = "id, description, scopes, user_name, created_by, created_at, expires_at, last_used_at, revoked_at";

#[cfg(test)]
#[path = "tokens_tests.rs"]
mod tests;

delegate! {
    // ---- API tokens ----

    /// Inserts a token (its id and hash must be new).
    pub async fn create_token(&self, t: NewToken) -> Result<()>;

    /// The token whose secret hashes to `hash` (hex SHA-256), revoked and expired ones too.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>>;

    /// Every token, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>>;

    /// Revokes a token at `at`; false when there is no such token. Revoking twice keeps the
    /// first time.
    pub async fn revoke_token(&self, id: &str, at: i64) -> Result<bool>;

    /// Records that a token was used at `at`.
    pub async fn touch_token(&self, id: &str, at: i64) -> Result<()>;
}
