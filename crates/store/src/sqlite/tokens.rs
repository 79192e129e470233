//! API tokens on SQLite.

use rusqlite::{OptionalExtension, Row, params};

use super::SqliteStore;
use crate::tokens::TOKEN_COLUMNS;
use crate::{NewToken, Result, TokenRow};

fn token_from_row(r: &Row<'_>) -> rusqlite::Result<TokenRow> {
    let scopes: String = r.get(2)?;
    Ok(TokenRow {
        id: r.get(0)?,
        description: r.get(1)?,
        scopes: serde_json::from_str(&scopes).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
        })?,
        user: r.get(3)?,
        created_by: r.get(4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        last_used_at: r.get(7)?,
        revoked_at: r.get(8)?,
    })
}

impl SqliteStore {
    pub async fn create_token(&self, t: NewToken) -> Result<()> {
        let scopes = serde_json::to_string(&t.scopes)?;
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO api_tokens (id, hash, description, scopes, user_name, created_by, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![t.id, t.hash, t.description, scopes, t.user, t.created_by, t.created_at, t.expires_at])?;
            Ok(())
        })
        .await
    }

    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        let hash = hash.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = ?1"
            ))?
            .query_row([hash], token_from_row)
            .optional()?)
        })
        .await
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
            ))?;
            let rows = stmt
                .query_map([], token_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    pub async fn revoke_token(&self, id: &str, at: i64) -> Result<bool> {
        let id = id.to_string();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                )?
                .execute(params![id, at])?;
            Ok(n > 0)
        })
        .await
    }

    pub async fn touch_token(&self, id: &str, at: i64) -> Result<()> {
        let id = id.to_string();
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
            )?
            .execute(params![id, at])?;
            Ok(())
        })
        .await
    }
}
