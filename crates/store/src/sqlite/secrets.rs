//! Named secrets on SQLite.

use rusqlite::{OptionalExtension, Row, params};

use super::SqliteStore;
use crate::secrets::{open_secret, seal_secret};
use crate::types::SecretMeta;
use crate::{Result, now_ms};

const COLUMNS: &str = "name, description, version, created_at, updated_at";

fn meta_from_row(r: &Row<'_>) -> rusqlite::Result<SecretMeta> {
    Ok(SecretMeta {
        name: r.get(0)?,
        description: r.get(1)?,
        version: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

impl SqliteStore {
    pub async fn put_secret(
        &self,
        name: &str,
        value: &str,
        description: &str,
    ) -> Result<(SecretMeta, bool)> {
        let sealed = seal_secret(name, value)?;
        let (name, description) = (name.to_string(), description.to_string());
        self.write(move |c| {
            let now = now_ms();
            let existed = c
                .prepare_cached("SELECT 1 FROM secrets WHERE name = ?1")?
                .query_row([&name], |_| Ok(()))
                .optional()?
                .is_some();
            let meta = c
                .prepare_cached(&format!(
                    "INSERT INTO secrets (name, value, description, version, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, 1, ?4, ?4) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value, \
                     description = excluded.description, version = secrets.version + 1, \
                     updated_at = excluded.updated_at \
                     RETURNING {COLUMNS}"
                ))?
                .query_row(params![name, sealed, description, now], meta_from_row)?;
            Ok((meta, !existed))
        })
        .await
    }

    pub async fn get_secret(&self, name: &str) -> Result<Option<SecretMeta>> {
        let name = name.to_string();
        self.read(move |c| {
            Ok(
                c.prepare_cached(&format!("SELECT {COLUMNS} FROM secrets WHERE name = ?1"))?
                    .query_row([name], meta_from_row)
                    .optional()?,
            )
        })
        .await
    }

    pub async fn list_secrets(&self) -> Result<Vec<SecretMeta>> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {COLUMNS} FROM secrets ORDER BY name"))?;
            let rows = stmt
                .query_map([], meta_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    pub async fn delete_secret(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.write(move |c| {
            Ok(c.prepare_cached("DELETE FROM secrets WHERE name = ?1")?
                .execute([&name])?
                > 0)
        })
        .await
    }

    pub async fn secret_values(&self, names: Vec<String>) -> Result<Vec<(String, String)>> {
        let rows: Vec<(String, String)> = self
            .read(move |c| {
                let mut stmt =
                    c.prepare_cached("SELECT name, value FROM secrets WHERE name = ?1")?;
                let mut out = Vec::with_capacity(names.len());
                for n in &names {
                    if let Some(row) = stmt
                        .query_row([n], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?
                    {
                        out.push(row);
                    }
                }
                Ok(out)
            })
            .await?;
        rows.into_iter()
            .map(|(n, sealed)| {
                let value = open_secret(&n, &sealed)?;
                Ok((n, value))
            })
            .collect()
    }
}
