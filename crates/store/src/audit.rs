//! The audit log: one row per API call that could change something (`audit_calls`, written by
//! the server for every such call, refused ones included), read together with the task
//! events (`task_events`) in one time-ordered view, newest first.
//!
//! The view is a `UNION ALL` of one query per kind, each walking its `at` index backwards from
//! the cursor with its own `LIMIT`, merged and cut to the page: a page costs about `limit`
//! index entries per kind, however long the log.

use std::fmt;

use serde_json::Value;

use crate::{Result, Store};

/// An API call to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCall {
    /// UUIDv7.
    pub id: String,
    /// Unix ms.
    pub at: i64,
    /// Who called: `admin`, a token's name, `hook:<group>/<id>` or `anonymous`.
    pub actor: String,
    /// The method and route pattern: `POST /api/v1/tasks`.
    pub action: String,
    /// What the call was about: a template name, a task id, `group/id`…
    pub target: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// For failures: the problem's title and detail.
    pub error: Option<String>,
    /// The client's address.
    pub client: Option<String>,
}

/// Which record an audit entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuditKind {
    /// An API call (`audit_calls`).
    Call,
    /// A task state change or human action (`task_events`).
    Task,
}

impl AuditKind {
    pub const ALL: [AuditKind; 2] = [AuditKind::Call, AuditKind::Task];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Call => "call",
            AuditKind::Task => "task",
        }
    }

    pub fn parse(s: &str) -> Option<AuditKind> {
        AuditKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Which outcomes to keep. Task events count as successful (`Ok`) and have no status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    /// Status below 400, and task events.
    Ok,
    /// Status 400 or above.
    Error,
    /// Exactly this status.
    Status(u16),
}

/// Where a page of the audit view starts: strictly after (older than) this entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCursor {
    pub at: i64,
    pub kind: AuditKind,
    pub key: String,
}

impl fmt::Display for AuditCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.at, self.kind.as_str(), self.key)
    }
}

impl AuditCursor {
    /// The form of a cursor, as a regular expression (the OpenAPI document declares it):
    /// exactly what [`AuditCursor::from_str`](std::str::FromStr) accepts.
    pub const PATTERN: &'static str =
        r"^-?[0-9]{1,18}\.(call\.[0-9A-Fa-f-]{1,64}|task\.[0-9]{20})$";
}

impl std::str::FromStr for AuditCursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || "not a cursor this server gave (next_cursor of a previous page)".to_string();
        let mut parts = s.splitn(3, '.');
        // At most 18 digits and no '+': the form PATTERN declares (always an i64).
        let at = parts
            .next()
            .filter(|p| {
                let digits = p.strip_prefix('-').unwrap_or(p);
                (1..=18).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
            })
            .and_then(|p| p.parse::<i64>().ok())
            .ok_or_else(bad)?;
        let kind = parts.next().and_then(AuditKind::parse).ok_or_else(bad)?;
        let key = parts
            .next()
            .filter(|k| valid_key(kind, k))
            .ok_or_else(bad)?;
        Ok(AuditCursor {
            at,
            kind,
            key: key.to_string(),
        })
    }
}

fn valid_key(kind: AuditKind, key: &str) -> bool {
    match kind {
        AuditKind::Call => {
            !key.is_empty()
                && key.len() <= 64
                && key.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        }
        AuditKind::Task => key.len() == TASK_KEY_DIGITS && key.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// A task event's key: its sequence number, zero-padded so that keys sort as numbers.
pub(crate) const TASK_KEY_DIGITS: usize = 20;

/// Filters of the audit view. Every filter given must match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only these kinds (empty: all).
    pub kinds: Vec<AuditKind>,
    pub actor: Option<String>,
    /// A call's `METHOD /route`, or a task event's kind (`created`, `cancelled`…).
    pub action: Option<String>,
    /// A call's target, or a task event's task id.
    pub target: Option<String>,
    pub outcome: Option<AuditOutcome>,
    /// Entries at or after this time (unix ms).
    pub since: Option<i64>,
    /// Entries before this time (unix ms).
    pub until: Option<i64>,
    /// Entries older than this one (keyset pagination).
    pub before: Option<AuditCursor>,
    pub limit: u32,
}

/// One entry of the audit view.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub kind: AuditKind,
    /// The call's id, or the task event's zero-padded sequence number.
    pub key: String,
    pub at: i64,
    pub actor: String,
    /// A call's `METHOD /route`, or a task event's kind.
    pub action: String,
    /// A call's target, or the task event's task id.
    pub target: Option<String>,
    /// Calls: the HTTP status answered.
    pub status: Option<u16>,
    /// Calls: the problem, for failures.
    pub error: Option<String>,
    /// Calls: the client's address.
    pub client: Option<String>,
    /// Task events: the states before and after.
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    /// Task events: what else was recorded.
    pub detail: Value,
}

impl AuditEntry {
    /// The cursor of the page that follows this entry.
    pub fn cursor(&self) -> AuditCursor {
        AuditCursor {
            at: self.at,
            kind: self.kind,
            key: self.key.clone(),
        }
    }
}

/// A bound parameter of the audit query.
pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

/// The SQL dialect's bits that differ.
pub(crate) struct Dialect {
    /// The `n`th placeholder (1-based).
    pub placeholder: fn(usize) -> String,
    /// A task event's key from `seq`.
    pub task_key: &'static str,
    /// Typed NULLs for the columns the other kind lacks.
    pub null_text: &'static str,
    pub null_int: &'static str,
    /// Appended to key comparisons and ordering (byte order on both backends).
    pub collate: &'static str,
}

/// The audit view query and its parameters. Columns: kind, at, key, actor, action, target,
/// status, error, client, from_state, to_state, detail.
pub(crate) fn view_query(f: &AuditFilter, d: &Dialect) -> (String, Vec<Arg>) {
    let mut args: Vec<Arg> = Vec::new();
    let arg = |a: Arg, args: &mut Vec<Arg>| {
        args.push(a);
        (d.placeholder)(args.len())
    };
    let limit = i64::from(f.limit.clamp(1, 1000));
    let wanted = |k: AuditKind| f.kinds.is_empty() || f.kinds.contains(&k);
    let mut branches = Vec::new();
    for kind in AuditKind::ALL {
        if !wanted(kind) {
            continue;
        }
        // Task events have no status and count as successful.
        if kind == AuditKind::Task
            && matches!(
                f.outcome,
                Some(AuditOutcome::Error) | Some(AuditOutcome::Status(_))
            )
        {
            continue;
        }
        let (table, key, actor, action, target) = match kind {
            AuditKind::Call => ("audit_calls", "id", "actor", "action", "target"),
            AuditKind::Task => ("task_events", d.task_key, "actor", "kind", "task_id"),
        };
        let mut conds: Vec<String> = Vec::new();
        if let Some(a) = &f.actor {
            conds.push(format!(
                "{actor} = {}",
                arg(Arg::Text(a.clone()), &mut args)
            ));
        }
        if let Some(a) = &f.action {
            conds.push(format!(
                "{action} = {}",
                arg(Arg::Text(a.clone()), &mut args)
            ));
        }
        if let Some(t) = &f.target {
            conds.push(format!(
                "{target} = {}",
                arg(Arg::Text(t.clone()), &mut args)
            ));
        }
        if kind == AuditKind::Call {
            match f.outcome {
                Some(AuditOutcome::Ok) => conds.push("status < 400".into()),
                Some(AuditOutcome::Error) => conds.push("status >= 400".into()),
                Some(AuditOutcome::Status(s)) => conds.push(format!(
                    "status = CAST({} AS BIGINT)",
                    arg(Arg::Int(i64::from(s)), &mut args)
                )),
                None => {}
            }
        }
        if let Some(s) = f.since {
            conds.push(format!("at >= {}", arg(Arg::Int(s), &mut args)));
        }
        if let Some(u) = f.until {
            conds.push(format!("at < {}", arg(Arg::Int(u), &mut args)));
        }
        if let Some(c) = &f.before {
            let at = arg(Arg::Int(c.at), &mut args);
            // Newest first, and at one time `task` before `call`, then keys descending.
            conds.push(match kind.cmp(&c.kind) {
                std::cmp::Ordering::Less => format!("at <= {at}"),
                std::cmp::Ordering::Greater => format!("at < {at}"),
                std::cmp::Ordering::Equal => {
                    let k = arg(Arg::Text(c.key.clone()), &mut args);
                    format!(
                        "(at < {at} OR (at = {at} AND {key}{} < {k}{}))",
                        d.collate, d.collate
                    )
                }
            });
        }
        let where_ = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        let columns = match kind {
            AuditKind::Call => format!(
                "'call' AS kind, at, id AS key, actor, action, target, status, error, client, \
                 {nt} AS from_state, {nt} AS to_state, {nt} AS detail",
                nt = d.null_text
            ),
            AuditKind::Task => format!(
                "'task' AS kind, at, {key} AS key, actor, kind AS action, task_id AS target, \
                 {ni} AS status, {nt} AS error, {nt} AS client, from_state, to_state, detail",
                ni = d.null_int,
                nt = d.null_text
            ),
        };
        let lim = arg(Arg::Int(limit), &mut args);
        let order_key = match kind {
            AuditKind::Call => "id",
            AuditKind::Task => "seq",
        };
        branches.push(format!(
            "SELECT * FROM (SELECT {columns} FROM {table}{where_} ORDER BY at DESC, {order_key} DESC LIMIT {lim}) AS {}_rows",
            kind.as_str()
        ));
    }
    if branches.is_empty() {
        // Nothing can match (e.g. only task events, with an error outcome).
        return (
            format!(
                "SELECT 'call', 0, '', '', '', {nt}, {ni}, {nt}, {nt}, {nt}, {nt}, {nt} WHERE 1 = 0",
                nt = d.null_text,
                ni = d.null_int
            ),
            Vec::new(),
        );
    }
    let lim = arg(Arg::Int(limit), &mut args);
    (
        format!(
            "SELECT kind, at, key, actor, action, target, status, error, client, from_state, to_state, detail \
             FROM ({}) AS v ORDER BY at DESC, kind DESC, key{} DESC LIMIT {lim}",
            branches.join(" UNION ALL "),
            d.collate
        ),
        args,
    )
}

impl Store {
    /// Records one API call in the audit log.
    pub async fn record_call(&self, call: NewCall) -> Result<()> {
        match self {
            Store::Sqlite(s) => s.record_call(call).await,
            Store::Postgres(s) => s.record_call(call).await,
        }
    }

    /// The audit view: API calls and task events (their details opened), newest first.
    pub async fn list_audit(&self, f: AuditFilter) -> Result<Vec<AuditEntry>> {
        let mut entries = match self {
            Store::Sqlite(s) => s.list_audit(f).await,
            Store::Postgres(s) => s.list_audit(f).await,
        }?;
        let s = self.sealer();
        for e in &mut entries {
            s.open_value(&mut e.detail)?;
        }
        Ok(entries)
    }

    /// Deletes recorded API calls older than `before` (unix ms), at most `limit` at a time;
    /// returns how many went. Task events go with their tasks ([`Store::prune_tasks`]).
    pub async fn prune_calls(&self, before: i64, limit: u32) -> Result<usize> {
        match self {
            Store::Sqlite(s) => s.prune_calls(before, limit).await,
            Store::Postgres(s) => s.prune_calls(before, limit).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_and_refuse_garbage() {
        for c in [
            AuditCursor {
                at: 1_700_000_000_000,
                kind: AuditKind::Call,
                key: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            },
            AuditCursor {
                at: 5,
                kind: AuditKind::Task,
                key: format!("{:020}", 42),
            },
        ] {
            assert_eq!(c.to_string().parse::<AuditCursor>(), Ok(c));
        }
        for bad in [
            "",
            "x.call.ab",
            "1.fire.ab",
            "1.call.",
            "1.call.a'b",
            "1.task.42",
            "1.task.0000000000000000004x",
            "+1.call.ab",
            "1234567890123456789.call.ab",
        ] {
            assert!(bad.parse::<AuditCursor>().is_err(), "{bad}");
        }
        // The declared pattern names the same task key length.
        assert!(AuditCursor::PATTERN.contains(&format!("task\\.[0-9]{{{TASK_KEY_DIGITS}}}")));
    }
}
