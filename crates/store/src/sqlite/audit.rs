//! The audit log on SQLite: recorded API calls go through the writer thread like every write
//! (so concurrent calls share one commit); the view reads on the reader pool.

use rusqlite::params_from_iter;
use rusqlite::types::Value as SqlValue;

use super::{SqliteStore, parse_json};
use crate::audit::{Arg, AuditEntry, AuditFilter, AuditKind, Dialect, NewCall, view_query};
use crate::{Result, StoreError};

const DIALECT: Dialect = Dialect {
    placeholder: |n| format!("?{n}"),
    task_key: "printf('%020d', seq)",
    null_text: "NULL",
    null_int: "NULL",
    collate: "",
};

impl SqliteStore {
    pub async fn record_call(&self, call: NewCall) -> Result<()> {
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO audit_calls (id, at, actor, action, target, status, error, client) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(rusqlite::params![
                call.id,
                call.at,
                call.actor,
                call.action,
                call.target,
                call.status,
                call.error,
                call.client
            ])?;
            Ok(())
        })
        .await
    }

    pub async fn list_audit(&self, f: AuditFilter) -> Result<Vec<AuditEntry>> {
        self.read(move |c| {
            let (sql, args) = view_query(&f, &DIALECT);
            let args: Vec<SqlValue> = args
                .into_iter()
                .map(|a| match a {
                    Arg::Text(t) => SqlValue::Text(t),
                    Arg::Int(i) => SqlValue::Integer(i),
                })
                .collect();
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(params_from_iter(args), |r| {
                    let kind: String = r.get(0)?;
                    let detail: Option<String> = r.get(11)?;
                    Ok((
                        kind,
                        AuditEntry {
                            kind: AuditKind::Call,
                            at: r.get(1)?,
                            key: r.get(2)?,
                            actor: r.get(3)?,
                            action: r.get(4)?,
                            target: r.get(5)?,
                            status: r.get(6)?,
                            error: r.get(7)?,
                            client: r.get(8)?,
                            from_state: r.get(9)?,
                            to_state: r.get(10)?,
                            detail: detail.map(parse_json).transpose()?.unwrap_or_default(),
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|(kind, mut e)| {
                    e.kind = AuditKind::parse(&kind).ok_or_else(|| {
                        StoreError::Database(format!("unknown audit kind {kind:?}"))
                    })?;
                    Ok(e)
                })
                .collect()
        })
        .await
    }

    pub async fn prune_calls(&self, before: i64, limit: u32) -> Result<usize> {
        self.write(move |c| {
            Ok(c.prepare_cached(
                "DELETE FROM audit_calls WHERE id IN (SELECT id FROM audit_calls WHERE at < ?1 LIMIT ?2)",
            )?
            .execute(rusqlite::params![before, limit])?)
        })
        .await
    }
}
