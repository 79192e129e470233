//! API tokens on PostgreSQL.

use tokio_postgres::Row;

use super::{PgStore, execute, query, query_opt};
use crate::tokens::TOKEN_COLUMNS;
use crate::{NewToken, Result, TokenRow};

fn token_from(r: &Row) -> Result<TokenRow> {
    let scopes: String = r.try_get(2)?;
    Ok(TokenRow {
        id: r.try_get(0)?,
        description: r.try_get(1)?,
        scopes: serde_json::from_str(&scopes)?,
        user: r.try_get(3)?,
        created_by: r.try_get(4)?,
        created_at: r.try_get(5)?,
        expires_at: r.try_get(6)?,
        last_used_at: r.try_get(7)?,
        revoked_at: r.try_get(8)?,
    })
}

impl PgStore {
    pub async fn create_token(&self, t: NewToken) -> Result<()> {
        let scopes = serde_json::to_string(&t.scopes)?;
        let c = self.client().await?;
        execute(
            &c,
            "INSERT INTO api_tokens (id, hash, description, scopes, user_name, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&t.id, &t.hash, &t.description, &scopes, &t.user, &t.created_by, &t.created_at, &t.expires_at],
        )
        .await?;
        Ok(())
    }

    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        let c = self.client().await?;
        query_opt(
            &c,
            &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = $1"),
            &[&hash],
        )
        .await?
        .as_ref()
        .map(token_from)
        .transpose()
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>> {
        let c = self.client().await?;
        query(
            &c,
            &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"),
            &[],
        )
        .await?
        .iter()
        .map(token_from)
        .collect()
    }

    pub async fn revoke_token(&self, id: &str, at: i64) -> Result<bool> {
        let c = self.client().await?;
        let n = execute(
            &c,
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
            &[&id, &at],
        )
        .await?;
        Ok(n > 0)
    }

    pub async fn touch_token(&self, id: &str, at: i64) -> Result<()> {
        let c = self.client().await?;
        execute(
            &c,
            "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
            &[&id, &at],
        )
        .await?;
        Ok(())
    }
}
