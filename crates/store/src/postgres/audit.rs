//! The audit log on PostgreSQL: one INSERT per recorded API call; the view is one query.

use super::{Param, PgStore, execute, parse_json, query};
use crate::audit::{Arg, AuditEntry, AuditFilter, AuditKind, Dialect, NewCall, view_query};
use crate::{Result, StoreError};

const DIALECT: Dialect = Dialect {
    placeholder: |n| format!("${n}"),
    task_key: "lpad(seq::text, 20, '0')",
    null_text: "NULL::text",
    null_int: "NULL::integer",
    collate: " COLLATE \"C\"",
};

impl PgStore {
    pub async fn record_call(&self, call: NewCall) -> Result<()> {
        let c = self.client().await?;
        let status = i32::from(call.status);
        execute(
            &c,
            "INSERT INTO audit_calls (id, at, actor, action, target, status, error, client) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &call.id,
                &call.at,
                &call.actor,
                &call.action,
                &call.target,
                &status,
                &call.error,
                &call.client,
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn list_audit(&self, f: AuditFilter) -> Result<Vec<AuditEntry>> {
        let c = self.client().await?;
        let (sql, args) = view_query(&f, &DIALECT);
        let params: Vec<Param<'_>> = args
            .iter()
            .map(|a| match a {
                Arg::Text(t) => t as Param<'_>,
                Arg::Int(i) => i as Param<'_>,
            })
            .collect();
        query(&c, &sql, &params)
            .await?
            .iter()
            .map(|r| {
                let kind: &str = r.try_get(0)?;
                let status: Option<i32> = r.try_get(6)?;
                let detail: Option<&str> = r.try_get(11)?;
                Ok(AuditEntry {
                    kind: AuditKind::parse(kind).ok_or_else(|| {
                        StoreError::Database(format!("unknown audit kind {kind:?}"))
                    })?,
                    at: r.try_get(1)?,
                    key: r.try_get(2)?,
                    actor: r.try_get(3)?,
                    action: r.try_get(4)?,
                    target: r.try_get(5)?,
                    status: status.and_then(|s| u16::try_from(s).ok()),
                    error: r.try_get(7)?,
                    client: r.try_get(8)?,
                    from_state: r.try_get(9)?,
                    to_state: r.try_get(10)?,
                    detail: detail.map(parse_json).transpose()?.unwrap_or_default(),
                })
            })
            .collect()
    }

    pub async fn prune_calls(&self, before: i64, limit: u32) -> Result<usize> {
        let c = self.client().await?;
        let n = execute(
            &c,
            "DELETE FROM audit_calls WHERE id IN (SELECT id FROM audit_calls WHERE at < $1 LIMIT $2)",
            &[&before, &i64::from(limit)],
        )
        .await?;
        Ok(n as usize)
    }
}
