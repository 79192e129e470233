//! Named secrets on PostgreSQL.

use tokio_postgres::Row;

use super::{PgStore, execute, query, query_one, query_opt};
use crate::secrets::{open_secret, seal_secret};
use crate::types::SecretMeta;
use crate::{Result, now_ms};

const COLUMNS: &str = "name, description, version, created_at, updated_at";

fn meta_from_row(r: &Row) -> Result<SecretMeta> {
    Ok(SecretMeta {
        name: r.try_get(0)?,
        description: r.try_get(1)?,
        version: r.try_get(2)?,
        created_at: r.try_get(3)?,
        updated_at: r.try_get(4)?,
    })
}

impl PgStore {
    pub async fn put_secret(
        &self,
        name: &str,
        value: &str,
        description: &str,
    ) -> Result<(SecretMeta, bool)> {
        let sealed = seal_secret(name, value)?;
        let c = self.client().await?;
        let row = query_one(
            &c,
            &format!(
                "INSERT INTO secrets (name, value, description, version, created_at, updated_at) \
                 VALUES ($1, $2, $3, 1, $4, $4) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, \
                 description = excluded.description, version = secrets.version + 1, \
                 updated_at = excluded.updated_at \
                 RETURNING {COLUMNS}, (xmax = 0)"
            ),
            &[&name, &sealed, &description, &now_ms()],
        )
        .await?;
        Ok((meta_from_row(&row)?, row.try_get(5)?))
    }

    pub async fn get_secret(&self, name: &str) -> Result<Option<SecretMeta>> {
        let c = self.client().await?;
        query_opt(
            &c,
            &format!("SELECT {COLUMNS} FROM secrets WHERE name = $1"),
            &[&name],
        )
        .await?
        .map(|r| meta_from_row(&r))
        .transpose()
    }

    pub async fn list_secrets(&self) -> Result<Vec<SecretMeta>> {
        let c = self.client().await?;
        query(
            &c,
            &format!("SELECT {COLUMNS} FROM secrets ORDER BY name"),
            &[],
        )
        .await?
        .iter()
        .map(meta_from_row)
        .collect()
    }

    pub async fn delete_secret(&self, name: &str) -> Result<bool> {
        let c = self.client().await?;
        Ok(execute(&c, "DELETE FROM secrets WHERE name = $1", &[&name]).await? > 0)
    }

    pub async fn secret_values(&self, names: Vec<String>) -> Result<Vec<(String, String)>> {
        let c = self.client().await?;
        query(
            &c,
            "SELECT name, value FROM secrets WHERE name = ANY($1) ORDER BY name",
            &[&names],
        )
        .await?
        .iter()
        .map(|r| {
            let name: String = r.try_get(0)?;
            let sealed: String = r.try_get(1)?;
            let value = open_secret(&name, &sealed)?;
            Ok((name, value))
        })
        .collect()
    }
}
