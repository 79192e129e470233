//! PostgreSQL backend, shared by several instances. A pool of connections; each store call
//! is one transaction on one pooled connection, most of them a single statement (data-modifying
//! CTEs), so that a call costs one round trip and one commit.
//!
//! What makes sharing safe:
//! - claims select due rows `FOR UPDATE SKIP LOCKED` and bump `lease_epoch` (the fencing
//!   token) in the same statement: two instances never claim the same task;
//! - every write a run makes locks the task row (`FOR UPDATE`) and checks `RUNNING` at its
//!   epoch in the same transaction, as SQLite's `check_lease` does;
//! - the fires of one hook, template versions, migrations and resource slots are serialised
//!   with transaction-scoped advisory locks;
//! - after their commit, writes fire this process's [`Signals`] and have the notifier
//!   ([`notify`]) send a `NOTIFY` to the others, outside their transaction; the listener
//!   ([`listener`]) turns notifications into [`Signals`].
//!
//! The hot writes go through group commit ([`batch`]): concurrent calls share one
//! transaction and one commit.
//!
//! Channels are database-wide, not per schema: each channel name carries the schema
//! (`taskhook_due_<schema>`, or a hash of it when the name would not fit in 63 bytes or is not
//! plain lower-case ASCII), so stores in different schemas of one database do not wake each
//! other. The default schema `public` uses the bare names (`taskhook_due`, …).
//!
//! Times are unix ms computed by the program ([`now_ms`]), as with SQLite.

mod audit;
mod batch;
mod comments;
mod keys;
mod listener;
mod notify;
mod ops;
mod secrets;
mod tls;
#[cfg(test)]
mod tls_tests;
mod tokens;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use serde_json::Value;
use taskhook_model::{StepState, TaskState};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, NoTls, Row};

use self::tls::PgTls;
use tokio_util::sync::CancellationToken;

use crate::types::*;
use crate::{Result, Signal, Signals, StoreError, now_ms, stop_applies};

/// How long a statement waits for a lock another connection holds before it fails (PostgreSQL
/// `lock_timeout`, set on every connection; `options` in the database URL may override it),
/// and how long a fire whose lock is busy is queued again before it fails.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long PostgreSQL lets a connection sit idle inside a transaction before ending it and
/// freeing its locks (`idle_in_transaction_session_timeout`; the URL may override it too).
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections in a store's pool unless told otherwise.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// `(version, sql)`, applied in order; `schema_migrations` remembers which ran.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (2, include_str!("../migrations/postgres/0002_functions.sql")),
    (3, include_str!("../migrations/postgres/0003_hooks.sql")),
    (4, include_str!("../migrations/postgres/0004_slots.sql")),
    (5, include_str!("../migrations/postgres/0005_tokens.sql")),
    (6, include_str!("../migrations/postgres/0006_secrets.sql")),
    (9, include_str!("../migrations/postgres/0009_audit.sql")),
    (10, include_str!("../migrations/postgres/0010_people.sql")),
    (
        11,
        include_str!("../migrations/postgres/0011_fires_delivery.sql"),
    ),
    (12, include_str!("../migrations/postgres/0012_crashes.sql")),
    (
        13,
        include_str!("../migrations/postgres/0013_fires_committed_at.sql"),
    ),
    (
        14,
        include_str!("../migrations/postgres/0014_blocked_reason.sql"),
    ),
    (
        15,
        include_str!("../migrations/postgres/0015_task_comments.sql"),
    ),
    (
        16,
        include_str!("../migrations/postgres/0016_source_cursors.sql"),
    ),
];

type Param<'a> = &'a (dyn ToSql + Sync);

/// Handle to a PostgreSQL database (one schema of it). Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    batcher: batch::Batcher,
    notifier: Arc<notify::Notifier>,
    signals: Arc<Signals>,
    /// The schema the store works in (`current_schema()` of its connections).
    schema: String,
    stop: CancellationToken,
    keys: crate::crypto::Keys,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The notification channels of one schema.
#[derive(Debug, Clone)]
pub(crate) struct Channels {
    pub due: String,
    pub hooks: String,
    pub slots: String,
    pub stops: String,
}

impl Channels {
    fn for_schema(schema: &str) -> Channels {
        // "taskhook_hooks_" is the longest prefix: 15 bytes of the 63 a name may have.
        let suffix = if schema == "public" {
            String::new()
        } else if schema.len() <= 48
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            format!("_{schema}")
        } else {
            format!("_h{:016x}", fnv1a(schema.as_bytes()))
        };
        Channels {
            due: format!("taskhook_due{suffix}"),
            hooks: format!("taskhook_hooks{suffix}"),
            slots: format!("taskhook_slots{suffix}"),
            stops: format!("taskhook_stops{suffix}"),
        }
    }

    pub(crate) fn all(&self) -> [&str; 4] {
        [&self.due, &self.hooks, &self.slots, &self.stops]
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `"name"`, with inner quotes doubled.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Schema names the store accepts: they travel in the connection's startup options.
fn check_schema_name(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Database(format!(
            "invalid schema name {schema:?}: use at most 63 ASCII letters, digits, '_' or '-'"
        )))
    }
}

fn parse_config(url: &str) -> Result<(Config, PgTls)> {
    let (mut config, tls) = tls::parse(url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_application_name().is_none() {
        config.application_name("taskhook");
    }
    Ok((config, tls))
}

/// Records one event of a task, written by a person's action outside a run.
async fn insert_event(
    tx: &impl GenericClient,
    task_id: &str,
    at: i64,
    event: &NewEvent,
) -> Result<()> {
    let detail = json(&event.detail);
    execute(
        tx,
        "INSERT INTO task_events (task_id, at, actor, kind, from_state, to_state, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &task_id,
            &at,
            &event.actor,
            &event.kind,
            &event.from_state,
            &event.to_state,
            &detail,
        ],
    )
    .await?;
    Ok(())
}

/// Opens one connection outside the pool and drives it in a task of its own.
async fn connect_one(
    config: &Config,
    tls: &PgTls,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    Ok(match tls {
        PgTls::Plain => {
            let (client, connection) = config.connect(NoTls).await?;
            (
                client,
                tokio::spawn(async move {
                    let _ = connection.await;
                }),
            )
        }
        PgTls::Rustls(t) => {
            let (client, connection) = config.connect(t.clone()).await?;
            (
                client,
                tokio::spawn(async move {
                    let _ = connection.await;
                }),
            )
        }
    })
}

// ---------------------------------------------------------------- errors

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let text = match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        };
        if let Some(code) = e.code() {
            let code = code.code();
            // Class 08: connection exceptions; 57P01-03: admin or crash shutdown, cannot connect
            // now; 53300: too many connections; 55P03: `lock_timeout` ran out waiting for
            // another connection's lock; 25P03: this connection's transaction sat idle too long (the
            // process was frozen) and was ended. All pass: the write may be tried again.
            return if code.starts_with("08")
                || matches!(
                    code,
                    "57P01" | "57P02" | "57P03" | "53300" | "55P03" | "25P03"
                ) {
                StoreError::Unavailable(text)
            } else {
                StoreError::Database(text)
            };
        }
        let io = std::error::Error::source(&e).is_some_and(|c| c.is::<std::io::Error>());
        let lost = e.is_closed()
            || io
            || matches!(
                e.to_string().as_str(),
                "error communicating with the server"
                    | "error connecting to server"
                    | "timeout waiting for server"
                    | "connection closed"
            );
        if lost {
            StoreError::Unavailable(text)
        } else {
            StoreError::Database(text)
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => e.into(),
            PoolError::Closed => StoreError::Closed,
            PoolError::Timeout(t) => {
                StoreError::Unavailable(format!("no database connection in time ({t:?})"))
            }
            PoolError::PostCreateHook(e) => StoreError::Unavailable(e.to_string()),
            PoolError::NoRuntimeSpecified => StoreError::Database(e.to_string()),
        }
    }
}

// ---------------------------------------------------------------- rows

fn parse_json(s: &str) -> Result<Value> {
    Ok(serde_json::from_str(s)?)
}

fn parse_state(s: &str) -> Result<TaskState> {
    s.parse::<TaskState>()
        .map_err(|e| StoreError::Database(format!("corrupt task state {s:?}: {e}")))
}

fn json(v: &Value) -> String {
    v.to_string()
}

fn count_u32(v: i64) -> u32 {
    v.clamp(0, i64::from(u32::MAX)) as u32
}

const TASK_COLUMNS: &str = "id, template, template_version, title, state, inputs, resolver_inputs, result, tags, \
     requester, parent_id, idempotency_key, run_count, run_max, due_at, lease_epoch, created_at, updated_at, people, crashes, blocked_reason";
const TASK_COLUMN_COUNT: usize = 21;

/// [`TASK_COLUMNS`] qualified with a table alias.
fn task_columns(alias: &str) -> String {
    TASK_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A task from the columns of [`TASK_COLUMNS`] starting at `at`.
fn task_from(r: &Row, at: usize) -> Result<TaskRow> {
    Ok(TaskRow {
        id: r.try_get(at)?,
        template: r.try_get(at + 1)?,
        template_version: r.try_get(at + 2)?,
        title: r.try_get(at + 3)?,
        state: parse_state(r.try_get(at + 4)?)?,
        inputs: parse_json(r.try_get(at + 5)?)?,
        resolver_inputs: parse_json(r.try_get(at + 6)?)?,
        result: parse_json(r.try_get(at + 7)?)?,
        tags: parse_json(r.try_get(at + 8)?)?,
        requester: r.try_get(at + 9)?,
        parent_id: r.try_get(at + 10)?,
        idempotency_key: r.try_get(at + 11)?,
        run_count: count_u32(r.try_get(at + 12)?),
        run_max: count_u32(r.try_get(at + 13)?),
        due_at: r.try_get(at + 14)?,
        lease_epoch: r.try_get(at + 15)?,
        created_at: r.try_get(at + 16)?,
        updated_at: r.try_get(at + 17)?,
        people: serde_json::from_str(r.try_get::<_, &str>(at + 18)?)?,
        crashes: count_u32(i64::from(r.try_get::<_, i32>(at + 19)?)),
        blocked_reason: r.try_get(at + 20)?,
    })
}

const STEP_COLUMNS: &str =
    "name, state, output, metadata, error, attempts, next_retry_at, foreach_parent, item";

fn step_from(r: &Row, at: usize) -> Result<StepRow> {
    let item: Option<&str> = r.try_get(at + 8)?;
    Ok(StepRow {
        name: r.try_get(at)?,
        state: StepState::parse(r.try_get(at + 1)?),
        output: parse_json(r.try_get(at + 2)?)?,
        metadata: parse_json(r.try_get(at + 3)?)?,
        error: r.try_get(at + 4)?,
        attempts: count_u32(r.try_get(at + 5)?),
        next_retry_at: r.try_get(at + 6)?,
        foreach_parent: r.try_get(at + 7)?,
        item: item.map(parse_json).transpose()?,
    })
}

fn template_from(r: &Row) -> Result<TemplateRow> {
    Ok(TemplateRow {
        name: r.try_get(0)?,
        version: r.try_get(1)?,
        body: parse_json(r.try_get(2)?)?,
        created_at: r.try_get(3)?,
    })
}

const HOOK_COLUMNS: &str =
    "hook_group, hook_id, body, trigger_token, last_scheduled_for, created_at, updated_at";

fn hook_from(r: &Row) -> Result<HookRow> {
    Ok(HookRow {
        group: r.try_get(0)?,
        id: r.try_get(1)?,
        body: parse_json(r.try_get(2)?)?,
        trigger_token: r.try_get(3)?,
        last_scheduled_for: r.try_get(4)?,
        created_at: r.try_get(5)?,
        updated_at: r.try_get(6)?,
    })
}

const FIRE_COLUMNS: &str = "f.id, f.hook_group, f.hook_id, f.fired_by, f.received_at, f.scheduled_for, f.result, f.task_id, \
     f.error, f.delivery_id, f.payload, t.state, f.committed_at";

fn fire_from(r: &Row) -> Result<FireRow> {
    let payload: Option<&str> = r.try_get(10)?;
    let state: Option<&str> = r.try_get(11)?;
    Ok(FireRow {
        id: r.try_get(0)?,
        hook_group: r.try_get(1)?,
        hook_id: r.try_get(2)?,
        fired_by: r.try_get(3)?,
        received_at: r.try_get(4)?,
        scheduled_for: r.try_get(5)?,
        result: r.try_get(6)?,
        task_id: r.try_get(7)?,
        error: r.try_get(8)?,
        delivery_id: r.try_get(9)?,
        payload: payload.map(parse_json).transpose()?,
        task_state: state.map(parse_state).transpose()?,
        committed_at: r.try_get(12)?,
    })
}

/// Step rows as parallel arrays for `unnest`, one entry per name (the last row of a name
/// wins, as when SQLite writes them one after another).
struct StepArrays {
    name: Vec<String>,
    state: Vec<String>,
    output: Vec<String>,
    metadata: Vec<String>,
    error: Vec<Option<String>>,
    attempts: Vec<i64>,
    next_retry_at: Vec<Option<i64>>,
    foreach_parent: Vec<Option<String>>,
    item: Vec<Option<String>>,
}

impl StepArrays {
    fn new(steps: &[StepRow]) -> StepArrays {
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(steps.len());
        for (i, s) in steps.iter().enumerate() {
            last.insert(&s.name, i);
        }
        let rows = steps
            .iter()
            .enumerate()
            .filter(|(i, s)| last.get(s.name.as_str()) == Some(i))
            .map(|(_, s)| s);
        let mut a = StepArrays {
            name: Vec::with_capacity(steps.len()),
            state: Vec::with_capacity(steps.len()),
            output: Vec::with_capacity(steps.len()),
            metadata: Vec::with_capacity(steps.len()),
            error: Vec::with_capacity(steps.len()),
            attempts: Vec::with_capacity(steps.len()),
            next_retry_at: Vec::with_capacity(steps.len()),
            foreach_parent: Vec::with_capacity(steps.len()),
            item: Vec::with_capacity(steps.len()),
        };
        for s in rows {
            a.name.push(s.name.clone());
            a.state.push(s.state.as_str().to_string());
            a.output.push(json(&s.output));
            a.metadata.push(json(&s.metadata));
            a.error.push(s.error.clone());
            a.attempts.push(i64::from(s.attempts));
            a.next_retry_at.push(s.next_retry_at);
            a.foreach_parent.push(s.foreach_parent.clone());
            a.item.push(s.item.as_ref().map(json));
        }
        a
    }
}

/// Upserts steps of the task(s) that the CTE `{from}` yields as `id`, from `StepArrays` given
/// as parameters `$p`..`$p+8`, at time `$now`.
fn upsert_steps_cte(from: &str, p: usize, now: usize) -> String {
    format!(
        "INSERT INTO steps (task_id, name, state, output, metadata, error, attempts, next_retry_at, foreach_parent, item, updated_at) \
         SELECT {from}.id, u.name, u.state, u.output, u.metadata, u.error, u.attempts, u.next_retry_at, u.foreach_parent, u.item, ${now} \
         FROM {from}, unnest(${p}::text[], ${}::text[], ${}::text[], ${}::text[], ${}::text[], ${}::bigint[], ${}::bigint[], ${}::text[], ${}::text[]) \
           AS u(name, state, output, metadata, error, attempts, next_retry_at, foreach_parent, item) \
         ON CONFLICT (task_id, name) DO UPDATE SET state = excluded.state, output = excluded.output, \
         metadata = excluded.metadata, error = excluded.error, attempts = excluded.attempts, \
         next_retry_at = excluded.next_retry_at, foreach_parent = excluded.foreach_parent, item = excluded.item, \
         updated_at = excluded.updated_at",
        p + 1,
        p + 2,
        p + 3,
        p + 4,
        p + 5,
        p + 6,
        p + 7,
        p + 8,
    )
}

impl StepArrays {
    fn params(&self) -> [Param<'_>; 9] {
        [
            &self.name,
            &self.state,
            &self.output,
            &self.metadata,
            &self.error,
            &self.attempts,
            &self.next_retry_at,
            &self.foreach_parent,
            &self.item,
        ]
    }
}

/// Merges a cursor's patch into the stored cursor, when its owner holds the lease (else
/// `Conflict`, having written nothing). Holds the cursor's row until the commit.
async fn write_cursor(
    c: &impl GenericClient,
    group: &str,
    id: &str,
    cursor: &FireCursor,
) -> Result<()> {
    let patch = json(&cursor.patch);
    let rows = query(
        c,
        "UPDATE source_cursors SET \
           cursor = jsonb_strip_nulls(COALESCE(cursor::jsonb, '{}'::jsonb) || $4::text::jsonb)::text, updated_at = $5 \
         WHERE hook_group = $1 AND hook_id = $2 AND source_key = $3 AND owner = $6 RETURNING 1",
        &[&group, &id, &cursor.key, &patch, &now_ms(), &cursor.owner],
    )
    .await?;
    if rows.is_empty() {
        return Err(crate::sqlite::lease_taken(
            group,
            id,
            &cursor.key,
            &cursor.owner,
        ));
    }
    Ok(())
}

/// Key of the advisory lock that serialises the fires of one hook.
fn hook_lock_key(group: &str, id: &str) -> String {
    format!("taskhook-hook:{}:{group}/{id}", group.len())
}

/// The lock a fire must hold while it decides, if any: the whole hook when the overlap policy
/// or a due time makes it look at the hook's other fires and tasks; only its delivery id when
/// it just dedupes deliveries (so the fires of one busy webhook do not wait for each other);
/// none otherwise.
fn fire_lock_key(
    fire: &NewFire,
    dedupe_since: Option<i64>,
    overlap: Option<&str>,
) -> Option<String> {
    if overlap.is_some() || fire.scheduled_for.is_some() {
        return Some(hook_lock_key(&fire.hook_group, &fire.hook_id));
    }
    // The fires of one polling source write its cursor: one at a time. (Their delivery ids
    // are the source's own, so this covers their dedupe too.)
    if let Some(c) = &fire.cursor {
        return Some(format!(
            "taskhook-cursor:{}:{}/{}:{}:{}",
            fire.hook_group.len(),
            fire.hook_group,
            fire.hook_id.len(),
            fire.hook_id,
            c.key
        ));
    }
    let delivery = fire
        .delivery_id
        .as_ref()
        .filter(|_| dedupe_since.is_some())?;
    Some(format!(
        "taskhook-delivery:{}:{}/{}:{}:{delivery}",
        fire.hook_group.len(),
        fire.hook_group,
        fire.hook_id.len(),
        fire.hook_id
    ))
}

const LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
/// The same lock, taken only if no other transaction holds it (true when taken).
const TRY_LOCK_SQL: &str = "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))";

async fn query(c: &impl GenericClient, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query(&st, params).await?)
}

async fn query_opt(c: &impl GenericClient, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&st, params).await?)
}

async fn query_one(c: &impl GenericClient, sql: &str, params: &[Param<'_>]) -> Result<Row> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query_one(&st, params).await?)
}

async fn execute(c: &impl GenericClient, sql: &str, params: &[Param<'_>]) -> Result<u64> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.execute(&st, params).await?)
}

// ---------------------------------------------------------------- connecting

impl PgStore {
    /// Connects, creates `schema` when given (and works in it), runs migrations and starts
    /// listening for notifications.
    pub async fn connect(url: &str, schema: Option<&str>, pool_size: usize) -> Result<PgStore> {
        let (mut config, tls) = parse_config(url)?;
        // Every statement is prepared once per connection and planned once: the store's
        // statements are point reads and writes whose best plan does not depend on the
        // values, and re-planning the write CTEs on each call costs more than running them.
        // Options given in the URL come after, so they may override it.
        //
        // No wait on another connection is unbounded: a lock wait gives up after `lock_timeout`
        // (the write fails and its caller may try again), and a transaction left idle (an
        // instance frozen or cut off mid-write) is ended by PostgreSQL after
        // `idle_in_transaction_session_timeout`, which frees its locks. The store itself never
        // leaves a transaction idle: its transactions run statement after statement.
        let mut options = format!(
            "-c plan_cache_mode=force_generic_plan -c lock_timeout={} \
             -c idle_in_transaction_session_timeout={}",
            LOCK_TIMEOUT.as_millis(),
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        );
        if let Some(o) = config.get_options().filter(|o| !o.trim().is_empty()) {
            options.push(' ');
            options.push_str(o);
        }
        if let Some(schema) = schema {
            check_schema_name(schema)?;
            options.push_str(&format!(" -c search_path={}", quote_ident(schema)));
        }
        config.options(options);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            PgTls::Plain => Manager::from_config(config.clone(), NoTls, manager_config),
            PgTls::Rustls(t) => Manager::from_config(config.clone(), t.clone(), manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Database(format!("cannot build the connection pool: {e}")))?;
        let current = {
            let mut client = pool.get().await?;
            migrate(&mut client, schema).await?;
            let row = client.query_one("SELECT current_schema()", &[]).await?;
            row.try_get::<_, Option<String>>(0)?
                .unwrap_or_else(|| "public".to_string())
        };
        let ch = Channels::for_schema(&current);
        let signals = Arc::new(Signals::default());
        let stop = CancellationToken::new();
        let ready = listener::spawn(config, tls, ch.clone(), signals.clone(), stop.clone());
        match ready.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                pool.close();
                return Err(e);
            }
            Err(_) => {
                pool.close();
                return Err(StoreError::Unavailable(
                    "the notification listener stopped".into(),
                ));
            }
        }
        let notifier = Arc::new(notify::Notifier::default());
        notify::spawn(pool.clone(), ch.clone(), notifier.clone(), stop.clone());
        // Writers hold a connection each while they run a batch: leave some to the reads.
        let writers = (pool_size / 2).clamp(1, batch::WRITERS);
        let batcher = batch::Batcher::start(
            pool.clone(),
            writers,
            signals.clone(),
            notifier.clone(),
            stop.clone(),
        );
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                batcher,
                notifier,
                signals,
                schema: current,
                stop,
                keys: Default::default(),
            }),
        })
    }

    /// Closes the pool (calls in flight finish) and stops listening.
    pub fn close(&self) {
        self.inner.stop.cancel();
        self.inner.pool.close();
    }

    /// Wake-ups from notifications of every instance sharing the schema (see [`Signals`]).
    pub fn signals(&self) -> &Signals {
        &self.inner.signals
    }

    /// The schema the store works in.
    pub fn schema_label(&self) -> &str {
        &self.inner.schema
    }

    async fn client(&self) -> Result<Object> {
        Ok(self.inner.pool.get().await?)
    }

    /// After a commit: wakes this process at once and the other instances through `NOTIFY`.
    fn announce(&self, signals: u8) {
        if signals != 0 {
            self.inner.signals.fire_set(signals);
            self.inner.notifier.announce(signals);
        }
    }

    /// Runs a write through group commit; answers after its commit.
    async fn submit(&self, op: batch::Op) -> Result<batch::Reply> {
        self.inner.batcher.submit(op).await
    }
}

/// Applies the missing migrations in one transaction, serialised with other migrators of the
/// same schema by an advisory lock (several instances may start at once).
async fn migrate(client: &mut Object, schema: Option<&str>) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('taskhook-migrate:' || COALESCE($1::text, current_schema(), ''), 0))",
        &[&schema],
    )
    .await?;
    if let Some(schema) = schema {
        let q = quote_ident(schema);
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {q}; SET LOCAL search_path TO {q}"
        ))
        .await?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Database(format!(
                "migration {version} failed: {}",
                StoreError::from(e)
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[version, &now_ms()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Drops a schema with everything in it.
pub(crate) async fn drop_schema(url: &str, schema: &str) -> Result<()> {
    check_schema_name(schema)?;
    let (config, tls) = parse_config(url)?;
    let (client, driver) = connect_one(&config, &tls).await?;
    let out = client
        .batch_execute(&format!(
            "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {} CASCADE",
            quote_ident(schema)
        ))
        .await;
    drop(client);
    let _ = driver.await;
    Ok(out?)
}

// ---------------------------------------------------------------- SQL of the hot paths

/// Inserts a task, its steps and its first audit entries in one statement. Parameters: $1-$17
/// the task row (with $17 = now), $18 step names, $19-$23 the events as arrays. Returns
/// `(inserted rows)`.
fn insert_task_sql(on_conflict: bool) -> String {
    let conflict = if on_conflict {
        "ON CONFLICT (template, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
    } else {
        ""
    };
    format!(
        "WITH ins AS ( \
           INSERT INTO tasks (id, template, template_version, title, state, inputs, tags, requester, parent_id, \
             idempotency_key, run_count, run_max, due_at, lease_owner, lease_epoch, lease_until, created_at, updated_at, people) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17, $24) \
           {conflict} RETURNING id), \
         st AS ( \
           INSERT INTO steps (task_id, name, state, updated_at) \
           SELECT ins.id, n.name, 'TODO', $17 FROM ins, unnest($18::text[]) AS n(name) \
           ON CONFLICT (task_id, name) DO NOTHING), \
         ev AS ( \
           INSERT INTO task_events (task_id, at, actor, kind, from_state, to_state, detail) \
           SELECT ins.id, $17, e.actor, e.kind, e.from_state, e.to_state, e.detail \
           FROM ins, unnest($19::text[], $20::text[], $21::text[], $22::text[], $23::text[]) \
             WITH ORDINALITY AS e(actor, kind, from_state, to_state, detail, ord) \
           ORDER BY e.ord) \
         SELECT (SELECT count(*) FROM ins)"
    )
}

/// Inserts a task as SQLite's `insert_task` does; `None` when an idempotency conflict left it
/// out (only with `on_conflict`). A task inserted READY asks for the `due` signal.
async fn insert_task(
    c: &impl GenericClient,
    t: &NewTask,
    event: &NewEvent,
    on_conflict: bool,
    fx: &mut batch::Effects,
) -> Result<Option<TaskRow>> {
    let now = now_ms();
    // A task claimed at creation is inserted RUNNING under its first lease: one row write,
    // with both transitions in the audit trail.
    if t.claim.is_some() {
        t.state.check_transition(TaskState::Running)?;
    }
    let claimed = t.claim.as_ref();
    let state = if claimed.is_some() {
        TaskState::Running
    } else {
        t.state
    };
    let due_at = if claimed.is_some() { None } else { t.due_at };
    let lease_epoch = i64::from(claimed.is_some());
    let run_count = i64::from(claimed.is_some());
    let mut events = vec![event.clone()];
    if let Some(claim) = claimed {
        events.push(NewEvent::transition(
            "engine",
            "claimed",
            t.state,
            TaskState::Running,
            claim.detail.clone(),
        ));
    }
    let actors: Vec<&str> = events.iter().map(|e| e.actor.as_str()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let froms: Vec<Option<&str>> = events.iter().map(|e| e.from_state.as_deref()).collect();
    let tos: Vec<Option<&str>> = events.iter().map(|e| e.to_state.as_deref()).collect();
    let details: Vec<String> = events.iter().map(|e| json(&e.detail)).collect();
    let (inputs, tags, people) = (json(&t.inputs), json(&t.tags), t.people.to_json());
    let run_max = i64::from(t.run_max);
    let owner = claimed.map(|c| c.owner.as_str());
    let until = claimed.map(|c| c.until);
    let row = query_one(
        c,
        &insert_task_sql(on_conflict),
        &[
            &t.id,
            &t.template,
            &t.template_version,
            &t.title,
            &state.as_str(),
            &inputs,
            &tags,
            &t.requester,
            &t.parent_id,
            &t.idempotency_key,
            &run_count,
            &run_max,
            &due_at,
            &owner,
            &lease_epoch,
            &until,
            &now,
            &t.steps,
            &actors,
            &kinds,
            &froms,
            &tos,
            &details,
            &people,
        ],
    )
    .await?;
    let inserted: i64 = row.try_get(0)?;
    if inserted == 0 {
        return Ok(None);
    }
    if state == TaskState::Ready {
        fx.signals |= Signal::Due as u8;
    }
    Ok(Some(TaskRow {
        blocked_reason: None,
        id: t.id.clone(),
        template: t.template.clone(),
        template_version: t.template_version,
        title: t.title.clone(),
        state,
        inputs: t.inputs.clone(),
        resolver_inputs: serde_json::json!({}),
        result: Value::Null,
        tags: t.tags.clone(),
        requester: t.requester.clone(),
        parent_id: t.parent_id.clone(),
        idempotency_key: t.idempotency_key.clone(),
        run_count: run_count as u32,
        run_max: t.run_max,
        due_at,
        lease_epoch,
        created_at: now,
        updated_at: now,
        people: t.people.clone(),
        crashes: 0,
    }))
}

async fn find_by_idempotency_key(c: &impl GenericClient, t: &NewTask) -> Result<Option<TaskRow>> {
    let Some(key) = &t.idempotency_key else {
        return Ok(None);
    };
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE template = $1 AND idempotency_key IS NOT NULL AND idempotency_key = $2"
    );
    query_opt(c, &sql, &[&t.template, key])
        .await?
        .map(|r| task_from(&r, 0))
        .transpose()
}

/// `LeaseLost` unless the task is RUNNING at `epoch` (a read; used only to pick the error).
async fn lease_error(c: &impl GenericClient, task_id: &str, epoch: i64) -> Result<()> {
    let held = query_opt(
        c,
        "SELECT 1 FROM tasks WHERE id = $1 AND state = 'RUNNING' AND lease_epoch = $2",
        &[&task_id, &epoch],
    )
    .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(StoreError::LeaseLost {
            task: task_id.to_string(),
        }),
    }
}

/// The database's clock in unix ms. A fire's `committed_at` starts as the time of its write;
/// for a scheduled fire the deferred trigger of migration 0013 moves it to the commit.
const COMMITTED_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

fn insert_fire_sql(on_schedule_conflict: bool) -> String {
    let conflict = if on_schedule_conflict {
        "ON CONFLICT (hook_group, hook_id, scheduled_for) WHERE scheduled_for IS NOT NULL DO NOTHING"
    } else {
        ""
    };
    format!(
        "INSERT INTO fires (id, hook_group, hook_id, fired_by, received_at, scheduled_for, result, task_id, error, delivery_id, payload, committed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, {COMMITTED_NOW}) {conflict} RETURNING 1"
    )
}

/// Inserts a fire; false when the unique index on its due time already holds one.
async fn insert_fire(
    c: &impl GenericClient,
    fire: &NewFire,
    on_schedule_conflict: bool,
) -> Result<bool> {
    let payload = fire.payload.as_ref().map(json);
    let rows = query(
        c,
        &insert_fire_sql(on_schedule_conflict),
        &[
            &fire.id,
            &fire.hook_group,
            &fire.hook_id,
            &fire.fired_by,
            &fire.received_at,
            &fire.scheduled_for,
            &fire.result,
            &fire.task_id,
            &fire.error,
            &fire.delivery_id,
            &payload,
        ],
    )
    .await?;
    Ok(!rows.is_empty())
}

const UNFINISHED_SQL: &str = "SELECT EXISTS (SELECT 1 FROM fires f JOIN tasks t ON t.id = f.task_id \
     WHERE f.hook_group = $1 AND f.hook_id = $2 AND t.state NOT IN ('DONE', 'CANCELLED', 'WONTFIX'))";
const QUEUED_SQL: &str = "SELECT EXISTS (SELECT 1 FROM fires WHERE hook_group = $1 AND hook_id = $2 AND result = 'queued')";

fn fire_by_schedule_sql() -> String {
    format!(
        "SELECT {FIRE_COLUMNS} FROM fires f LEFT JOIN tasks t ON t.id = f.task_id \
         WHERE f.hook_group = $1 AND f.hook_id = $2 AND f.scheduled_for IS NOT NULL AND f.scheduled_for = $3"
    )
}

/// The first fire of a delivery id within the dedupe window.
fn first_delivery_sql() -> String {
    format!(
        "SELECT {FIRE_COLUMNS} FROM fires f LEFT JOIN tasks t ON t.id = f.task_id \
         WHERE f.hook_group = $1 AND f.hook_id = $2 AND f.delivery_id IS NOT NULL AND f.delivery_id = $3 \
         AND f.received_at >= $4 AND f.result NOT IN ('rejected', 'duplicate') ORDER BY f.id LIMIT 1"
    )
}

/// Saves steps of a task held at `$2` in one statement; returns whether the lease held.
fn save_steps_sql() -> String {
    format!(
        "WITH t AS (SELECT id FROM tasks WHERE id = $1 AND state = 'RUNNING' AND lease_epoch = $2 FOR UPDATE), \
         s AS ({}) \
         SELECT count(*) FROM t",
        upsert_steps_cte("t", 4, 3)
    )
}

/// Ends a run in one statement. $1 id, $2 epoch, $3 end state, $4 end due_at, $5 result,
/// $6 now, $7-$11 end event (actor, kind, from, to, detail), $12 whether a recorded cancel
/// applies to the end state, $13 whether a recorded pause does, $14 final states, $15-$23
/// steps, $24 why the task is blocked (for a BLOCKED end). Returns whether the lease held, the parent woken, and whether to signal `due` and
/// `slots`.
fn end_run_sql() -> String {
    format!(
        "WITH t AS ( \
           SELECT id, parent_id, due_at, stop_to, stop_actor FROM tasks \
           WHERE id = $1 AND state = 'RUNNING' AND lease_epoch = $2 FOR UPDATE), \
         f AS ( \
           SELECT t.id, t.parent_id, t.stop_actor, \
             CASE WHEN t.stop_to = 'CANCELLED' AND $12::bool THEN 'CANCELLED' \
                  WHEN t.stop_to = 'PAUSED' AND $13::bool THEN 'PAUSED' END AS stop_state, \
             CASE WHEN $3::text = 'WAITING' AND t.due_at IS NOT NULL THEN LEAST(t.due_at, COALESCE($4::bigint, t.due_at)) \
                  ELSE $4::bigint END AS due_at \
           FROM t), \
         s AS ({steps}), \
         up AS ( \
           UPDATE tasks SET state = COALESCE(f.stop_state, $3::text), \
             due_at = CASE WHEN f.stop_state IS NULL THEN f.due_at END, \
             result = COALESCE($5::text, tasks.result), lease_owner = NULL, lease_until = NULL, \
             stop_to = NULL, stop_actor = NULL, crashes = 0, updated_at = $6, \
             blocked_reason = CASE WHEN COALESCE(f.stop_state, $3::text) = 'BLOCKED' THEN $24::text END \
           FROM f WHERE tasks.id = f.id \
           RETURNING tasks.state, tasks.due_at, f.parent_id), \
         ev AS ( \
           INSERT INTO task_events (task_id, at, actor, kind, from_state, to_state, detail) \
           SELECT f.id, $6, e.actor, e.kind, e.from_state, e.to_state, e.detail \
           FROM f, LATERAL (VALUES \
               (1, $7::text, $8::text, $9::text, $10::text, $11::text), \
               (2, COALESCE(f.stop_actor, ''), lower(f.stop_state), $3::text, f.stop_state, 'null')) \
             AS e(ord, actor, kind, from_state, to_state, detail) \
           WHERE e.ord = 1 OR f.stop_state IS NOT NULL \
           ORDER BY e.ord), \
         p AS ( \
           UPDATE tasks SET due_at = $6, updated_at = $6 \
           WHERE tasks.id = (SELECT up.parent_id FROM up WHERE up.state = ANY($14::text[])) \
             AND tasks.state IN ('WAITING', 'RUNNING') \
           RETURNING tasks.id), \
         sl AS (DELETE FROM resource_slots WHERE task_id IN (SELECT id FROM f) RETURNING 1) \
         SELECT (SELECT count(*) FROM t), (SELECT id FROM p), \
           EXISTS (SELECT 1 FROM up \
              WHERE EXISTS (SELECT 1 FROM p) OR (up.due_at IS NOT NULL AND up.state IN ('READY', 'WAITING'))), \
           EXISTS (SELECT 1 FROM sl)",
        steps = upsert_steps_cte("f", 15, 6)
    )
}

fn unexpected_reply() -> StoreError {
    StoreError::Database("the batch writer answered another kind of write".into())
}

// ---------------------------------------------------------------- the store's calls

impl PgStore {
    pub async fn extend_run_max(&self, task_id: &str, more: u32, event: NewEvent) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let row = query_opt(
            &tx,
            &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 FOR UPDATE"),
            &[&task_id],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("task {task_id}"),
        })?;
        let task = task_from(&row, 0)?;
        crate::check_extend(&task)?;
        let now = now_ms().max(task.updated_at + 1);
        execute(
            &tx,
            "UPDATE tasks SET run_max = run_max + $2, updated_at = $3 WHERE id = $1",
            &[&task_id, &i64::from(more), &now],
        )
        .await?;
        insert_event(&tx, task_id, now, &event).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn edit_task(
        &self,
        task_id: &str,
        seen_updated_at: i64,
        allowed: &'static [TaskState],
        edit: crate::TaskEdit,
        event: NewEvent,
    ) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let row = query_opt(
            &tx,
            "SELECT state, updated_at FROM tasks WHERE id = $1 FOR UPDATE",
            &[&task_id],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("task {task_id}"),
        })?;
        let state = parse_state(row.try_get(0)?)?;
        let updated_at: i64 = row.try_get(1)?;
        crate::check_task_edit(&state, updated_at, seen_updated_at, allowed)?;
        let now = now_ms().max(updated_at + 1);
        let (inputs, tags, people) = (json(&edit.inputs), json(&edit.tags), edit.people.to_json());
        execute(
            &tx,
            "UPDATE tasks SET title = $2, inputs = $3, tags = $4, people = $5, updated_at = $6 WHERE id = $1",
            &[&task_id, &edit.title, &inputs, &tags, &people, &now],
        )
        .await?;
        insert_event(&tx, task_id, now, &event).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn put_steps(
        &self,
        task_id: &str,
        seen_updated_at: i64,
        allowed: &'static [TaskState],
        edit: crate::StepEdit,
        event: NewEvent,
    ) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let row = query_opt(
            &tx,
            "SELECT state, updated_at FROM tasks WHERE id = $1 FOR UPDATE",
            &[&task_id],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("task {task_id}"),
        })?;
        let state = parse_state(row.try_get(0)?)?;
        let updated_at: i64 = row.try_get(1)?;
        crate::check_step_edit(&state, updated_at, seen_updated_at, allowed)?;
        let now = now_ms().max(updated_at + 1);
        if !edit.delete.is_empty() {
            execute(
                &tx,
                "DELETE FROM steps WHERE task_id = $1 AND name = ANY($2)",
                &[&task_id, &edit.delete],
            )
            .await?;
        }
        let a = StepArrays::new(&edit.put);
        let mut params: Vec<Param<'_>> = vec![&task_id, &now];
        params.extend(a.params());
        execute(
            &tx,
            &format!(
                "WITH t AS (SELECT $1::text AS id) {}",
                upsert_steps_cte("t", 3, 2)
            ),
            &params,
        )
        .await?;
        execute(
            &tx,
            "UPDATE tasks SET updated_at = $2 WHERE id = $1",
            &[&task_id, &now],
        )
        .await?;
        insert_event(&tx, task_id, now, &event).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- templates ----

    pub async fn put_template(&self, name: &str, body: Value) -> Result<(TemplateRow, bool)> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let key = format!("taskhook-template:{name}");
        let (lock, current) = (
            tx.prepare_cached(LOCK_SQL).await?,
            tx.prepare_cached(
                "SELECT t.version, v.body, (SELECT COALESCE(MAX(version), 0) FROM template_versions WHERE name = $1) \
                 FROM templates t JOIN template_versions v ON v.name = t.name AND v.version = t.version WHERE t.name = $1",
            )
            .await?,
        );
        let last = tx
            .prepare_cached(
                "SELECT COALESCE(MAX(version), 0) FROM template_versions WHERE name = $1",
            )
            .await?;
        let (l, cur, max) = tokio::join!(
            biased;
            async { tx.execute(&lock, &[&key]).await },
            async { tx.query_opt(&current, &[&name]).await },
            async { tx.query_one(&last, &[&name]).await },
        );
        l?;
        let cur = cur?;
        let now = now_ms();
        if let Some(r) = &cur {
            let version: i64 = r.try_get(0)?;
            if parse_json(r.try_get(1)?)? == body {
                drop(tx);
                let row = TemplateRow {
                    name: name.to_string(),
                    version,
                    body,
                    created_at: now,
                };
                return Ok((row, false));
            }
        }
        let version = max?.try_get::<_, i64>(0)? + 1;
        let body_text = json(&body);
        let (ins, up) = (
            tx.prepare_cached(
                "INSERT INTO template_versions (name, version, body, created_at) VALUES ($1, $2, $3, $4)",
            )
            .await?,
            tx.prepare_cached(
                "INSERT INTO templates (name, version, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
            )
            .await?,
        );
        let (a, b) = tokio::join!(
            biased;
            async { tx.execute(&ins, &[&name, &version, &body_text, &now]).await },
            async { tx.execute(&up, &[&name, &version, &now]).await },
        );
        a?;
        b?;
        tx.commit().await?;
        let row = TemplateRow {
            name: name.to_string(),
            version,
            body,
            created_at: now,
        };
        Ok((row, cur.is_none()))
    }

    pub async fn get_template(&self, name: &str) -> Result<Option<TemplateRow>> {
        let c = self.client().await?;
        query_opt(
            &c,
            "SELECT v.name, v.version, v.body, v.created_at FROM templates t \
             JOIN template_versions v ON v.name = t.name AND v.version = t.version WHERE t.name = $1",
            &[&name],
        )
        .await?
        .map(|r| template_from(&r))
        .transpose()
    }

    pub async fn get_template_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<Option<TemplateRow>> {
        let c = self.client().await?;
        query_opt(
            &c,
            "SELECT name, version, body, created_at FROM template_versions WHERE name = $1 AND version = $2",
            &[&name, &version],
        )
        .await?
        .map(|r| template_from(&r))
        .transpose()
    }

    pub async fn list_templates(&self) -> Result<Vec<TemplateRow>> {
        let c = self.client().await?;
        query(
            &c,
            "SELECT v.name, v.version, v.body, v.created_at FROM templates t \
             JOIN template_versions v ON v.name = t.name AND v.version = t.version ORDER BY t.name",
            &[],
        )
        .await?
        .iter()
        .map(template_from)
        .collect()
    }

    pub async fn delete_template(&self, name: &str) -> Result<bool> {
        let c = self.client().await?;
        Ok(execute(&c, "DELETE FROM templates WHERE name = $1", &[&name]).await? > 0)
    }

    // ---- functions ----

    pub async fn put_function(&self, name: &str, body: Value) -> Result<bool> {
        let c = self.client().await?;
        let row = query_one(
            &c,
            "INSERT INTO functions (name, body, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at \
             RETURNING (xmax = 0)",
            &[&name, &json(&body), &now_ms()],
        )
        .await?;
        Ok(row.try_get(0)?)
    }

    pub async fn get_function(&self, name: &str) -> Result<Option<Value>> {
        let c = self.client().await?;
        query_opt(&c, "SELECT body FROM functions WHERE name = $1", &[&name])
            .await?
            .map(|r| parse_json(r.try_get(0)?))
            .transpose()
    }

    pub async fn list_functions(&self) -> Result<Vec<Value>> {
        let c = self.client().await?;
        query(&c, "SELECT body FROM functions ORDER BY name", &[])
            .await?
            .iter()
            .map(|r| parse_json(r.try_get(0)?))
            .collect()
    }

    pub async fn delete_function(&self, name: &str) -> Result<bool> {
        let c = self.client().await?;
        Ok(execute(&c, "DELETE FROM functions WHERE name = $1", &[&name]).await? > 0)
    }

    // ---- hooks ----

    pub async fn put_hook(
        &self,
        group: &str,
        id: &str,
        body: Value,
        new_token: &str,
    ) -> Result<(HookRow, bool)> {
        let c = self.client().await?;
        let sql = format!(
            "WITH u AS ( \
               INSERT INTO hooks (hook_group, hook_id, body, trigger_token, created_at, updated_at) \
               VALUES ($1, $2, $3, $4, $5, $5) \
               ON CONFLICT (hook_group, hook_id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at \
               RETURNING {HOOK_COLUMNS}, (xmax = 0) AS inserted) \
             SELECT u.* FROM u"
        );
        let row = query_one(
            &c,
            &sql,
            &[&group, &id, &json(&body), &new_token, &now_ms()],
        )
        .await?;
        self.announce(Signal::Hooks as u8);
        Ok((hook_from(&row)?, row.try_get(7)?))
    }

    pub async fn get_hook(&self, group: &str, id: &str) -> Result<Option<HookRow>> {
        let c = self.client().await?;
        let sql =
            format!("SELECT {HOOK_COLUMNS} FROM hooks WHERE hook_group = $1 AND hook_id = $2");
        query_opt(&c, &sql, &[&group, &id])
            .await?
            .map(|r| hook_from(&r))
            .transpose()
    }

    pub async fn list_hooks(&self, group: Option<&str>) -> Result<Vec<HookRow>> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT {HOOK_COLUMNS} FROM hooks WHERE $1::text IS NULL OR hook_group = $1 ORDER BY hook_group, hook_id"
        );
        query(&c, &sql, &[&group])
            .await?
            .iter()
            .map(hook_from)
            .collect()
    }

    pub async fn hook_versions(&self) -> Result<Vec<(String, String, i64)>> {
        let c = self.client().await?;
        query(&c, "SELECT hook_group, hook_id, updated_at FROM hooks", &[])
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    pub async fn delete_hook(&self, group: &str, id: &str) -> Result<bool> {
        let c = self.client().await?;
        let row = query_one(
            &c,
            "WITH d AS (DELETE FROM hooks WHERE hook_group = $1 AND hook_id = $2 RETURNING 1) \
             SELECT count(*) FROM d",
            &[&group, &id],
        )
        .await?;
        let deleted = row.try_get::<_, i64>(0)? > 0;
        if deleted {
            self.announce(Signal::Hooks as u8);
        }
        Ok(deleted)
    }

    pub async fn lease_source(
        &self,
        group: &str,
        id: &str,
        key: &str,
        owner: &str,
        ttl_ms: i64,
    ) -> Result<SourceLease> {
        let c = self.client().await?;
        let now = now_ms();
        let until = now.saturating_add(ttl_ms);
        // The upsert waits for a fire committing the cursor (it holds the row), so the cursor
        // it returns is the latest committed.
        let taken = query_opt(
            &c,
            "INSERT INTO source_cursors (hook_group, hook_id, source_key, owner, lease_until, cursor, updated_at) \
             SELECT $1, $2, $3, $4, $5, NULL, $6 WHERE EXISTS (SELECT 1 FROM hooks WHERE hook_group = $1 AND hook_id = $2) \
             ON CONFLICT (hook_group, hook_id, source_key) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until \
             WHERE source_cursors.owner = excluded.owner OR source_cursors.lease_until <= $6 \
             RETURNING cursor",
            &[&group, &id, &key, &owner, &until, &now],
        )
        .await?;
        if let Some(row) = taken {
            let cursor: Option<String> = row.try_get(0)?;
            return Ok(SourceLease::Held(
                cursor.as_deref().map(parse_json).transpose()?,
            ));
        }
        let holder = query_opt(
            &c,
            "SELECT owner, lease_until FROM source_cursors WHERE hook_group = $1 AND hook_id = $2 AND source_key = $3",
            &[&group, &id, &key],
        )
        .await?;
        match holder {
            Some(r) => Ok(SourceLease::Elsewhere {
                owner: r.try_get(0)?,
                until: r.try_get(1)?,
            }),
            None => Err(StoreError::NotFound {
                what: format!("hook {group}/{id}"),
            }),
        }
    }

    pub async fn set_source_cursor(&self, group: &str, id: &str, cursor: FireCursor) -> Result<()> {
        let c = self.client().await?;
        write_cursor(&c, group, id, &cursor).await
    }

    pub async fn release_source(
        &self,
        group: &str,
        id: &str,
        key: &str,
        owner: &str,
    ) -> Result<()> {
        let c = self.client().await?;
        execute(
            &c,
            "UPDATE source_cursors SET lease_until = 0 \
             WHERE hook_group = $1 AND hook_id = $2 AND source_key = $3 AND owner = $4",
            &[&group, &id, &key, &owner],
        )
        .await?;
        Ok(())
    }

    pub async fn set_hook_token(&self, group: &str, id: &str, token: &str) -> Result<bool> {
        let c = self.client().await?;
        let row = query_one(
            &c,
            "WITH u AS (UPDATE hooks SET trigger_token = $3, updated_at = $4 \
               WHERE hook_group = $1 AND hook_id = $2 RETURNING 1) \
             SELECT count(*) FROM u",
            &[&group, &id, &token, &now_ms()],
        )
        .await?;
        let changed = row.try_get::<_, i64>(0)? > 0;
        if changed {
            self.announce(Signal::Hooks as u8);
        }
        Ok(changed)
    }

    pub async fn record_fire(
        &self,
        fire: NewFire,
        task: Option<(NewTask, NewEvent)>,
        dedupe_since: Option<i64>,
        overlap: Option<&'static str>,
    ) -> Result<FireOutcome> {
        let op = batch::Op::RecordFire {
            fire,
            task,
            dedupe_since,
            overlap,
        };
        match self.submit(op).await? {
            batch::Reply::Fire(outcome) => Ok(outcome),
            _ => Err(unexpected_reply()),
        }
    }

    pub async fn oldest_queued_fire(&self, group: &str, id: &str) -> Result<Option<FireRow>> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT {FIRE_COLUMNS} FROM fires f LEFT JOIN tasks t ON t.id = f.task_id \
             WHERE f.hook_group = $1 AND f.hook_id = $2 AND f.result = 'queued' ORDER BY f.id LIMIT 1"
        );
        query_opt(&c, &sql, &[&group, &id])
            .await?
            .map(|r| fire_from(&r))
            .transpose()
    }

    /// Ends a queued fire as `error` with `reason` (already sealed); false when it was no
    /// longer queued.
    pub async fn fail_queued_fire(&self, fire_id: &str, reason: &str) -> Result<bool> {
        let c = self.client().await?;
        let n = execute(
            &c,
            "UPDATE fires SET result = 'error', error = $2 WHERE id = $1 AND result = 'queued'",
            &[&fire_id, &reason],
        )
        .await?;
        Ok(n == 1)
    }

    pub async fn start_queued_fire(
        &self,
        fire_id: &str,
        task: NewTask,
        event: NewEvent,
    ) -> Result<Option<TaskRow>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let hook = query_opt(
            &tx,
            "SELECT hook_group, hook_id FROM fires WHERE id = $1 AND result = 'queued' FOR UPDATE",
            &[&fire_id],
        )
        .await?;
        let Some(hook) = hook else {
            return Ok(None);
        };
        let (group, id): (String, String) = (hook.try_get(0)?, hook.try_get(1)?);
        let (lock, unfinished) = (
            tx.prepare_cached(LOCK_SQL).await?,
            tx.prepare_cached(UNFINISHED_SQL).await?,
        );
        let key = hook_lock_key(&group, &id);
        let (l, busy) = tokio::join!(
            biased;
            async { tx.execute(&lock, &[&key]).await },
            async { tx.query_one(&unfinished, &[&group, &id]).await },
        );
        l?;
        if busy?.try_get::<_, bool>(0)? {
            return Ok(None);
        }
        let mut fx = batch::Effects::default();
        let row = insert_task(&tx, &task, &event, false, &mut fx)
            .await?
            .ok_or_else(|| StoreError::Database("task insert returned nothing".into()))?;
        execute(
            &tx,
            "UPDATE fires SET result = 'created', task_id = $2 WHERE id = $1",
            &[&fire_id, &row.id],
        )
        .await?;
        tx.commit().await?;
        self.announce(fx.signals);
        Ok(Some(row))
    }

    pub async fn schedule_lateness(&self, since: i64) -> Result<Vec<(i64, i64)>> {
        let c = self.client().await?;
        query(
            &c,
            "SELECT scheduled_for, COALESCE(committed_at, received_at) FROM fires WHERE scheduled_for IS NOT NULL AND received_at >= $1",
            &[&since],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
    }

    pub async fn prune_fires(&self, before: i64, limit: u32) -> Result<usize> {
        let c = self.client().await?;
        let n = execute(
            &c,
            "DELETE FROM fires WHERE id IN \
             (SELECT id FROM fires WHERE received_at < $1 AND result <> 'queued' LIMIT $2)",
            &[&before, &i64::from(limit)],
        )
        .await?;
        Ok(n as usize)
    }

    pub async fn list_fires(
        &self,
        group: &str,
        id: &str,
        before: Option<String>,
        limit: u32,
    ) -> Result<Vec<FireRow>> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT {FIRE_COLUMNS} FROM fires f LEFT JOIN tasks t ON t.id = f.task_id \
             WHERE f.hook_group = $1 AND f.hook_id = $2 AND ($3::text IS NULL OR f.id < $3) \
             ORDER BY f.id DESC LIMIT $4"
        );
        let limit = i64::from(limit.clamp(1, 1000));
        query(&c, &sql, &[&group, &id, &before, &limit])
            .await?
            .iter()
            .map(fire_from)
            .collect()
    }

    // ---- tasks ----

    pub async fn create_task(&self, t: NewTask, event: NewEvent) -> Result<(TaskRow, bool)> {
        match self
            .submit(batch::Op::CreateTask { task: t, event })
            .await?
        {
            batch::Reply::Created(row, created) => Ok((row, created)),
            _ => Err(unexpected_reply()),
        }
    }

    pub async fn get_task(&self, id: &str) -> Result<Option<(TaskRow, Vec<StepRow>)>> {
        let c = self.client().await?;
        let (ts, ss) = (
            c.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"))
                .await?,
            c.prepare_cached(&format!(
                "SELECT {STEP_COLUMNS} FROM steps WHERE task_id = $1 ORDER BY name"
            ))
            .await?,
        );
        let (task, steps) = tokio::join!(async { c.query_opt(&ts, &[&id]).await }, async {
            c.query(&ss, &[&id]).await
        });
        let Some(task) = task? else {
            return Ok(None);
        };
        let steps = steps?
            .iter()
            .map(|r| step_from(r, 0))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((task_from(&task, 0)?, steps)))
    }

    pub async fn list_tasks(&self, f: TaskFilter) -> Result<Vec<TaskRow>> {
        let c = self.client().await?;
        let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE true");
        let state = f.state.map(|s| s.as_str().to_string());
        let mut params: Vec<Param<'_>> = Vec::new();
        if let Some(s) = &state {
            params.push(s);
            sql.push_str(&format!(" AND state = ${}", params.len()));
        }
        if let Some(t) = &f.template {
            params.push(t);
            sql.push_str(&format!(" AND template = ${}", params.len()));
        }
        if let Some(r) = &f.blocked_reason {
            params.push(r);
            sql.push_str(&format!(
                " AND state = 'BLOCKED' AND blocked_reason = ${}",
                params.len()
            ));
        }
        if let Some(b) = &f.before {
            params.push(b);
            sql.push_str(&format!(" AND id < ${}", params.len()));
        }
        let limit = i64::from(f.limit.clamp(1, 1000));
        params.push(&limit);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        query(&c, &sql, &params)
            .await?
            .iter()
            .map(|r| task_from(r, 0))
            .collect()
    }

    pub async fn task_events(&self, id: &str) -> Result<Vec<TaskEvent>> {
        let c = self.client().await?;
        query(
            &c,
            "SELECT seq, task_id, at, actor, kind, from_state, to_state, detail FROM task_events \
             WHERE task_id = $1 ORDER BY seq",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(TaskEvent {
                seq: r.try_get(0)?,
                task_id: r.try_get(1)?,
                at: r.try_get(2)?,
                actor: r.try_get(3)?,
                kind: r.try_get(4)?,
                from_state: r.try_get(5)?,
                to_state: r.try_get(6)?,
                detail: parse_json(r.try_get(7)?)?,
            })
        })
        .collect()
    }

    // ---- the engine's side ----

    pub async fn claim_due(
        &self,
        owner: &str,
        detail: Value,
        now: i64,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedTask>> {
        let op = batch::Op::ClaimDue {
            owner: owner.to_string(),
            detail: json(&detail),
            now,
            limit,
            lease_ms,
        };
        match self.submit(op).await? {
            batch::Reply::Claimed(claimed) => Ok(claimed),
            _ => Err(unexpected_reply()),
        }
    }

    pub async fn next_due_at(&self) -> Result<Option<i64>> {
        let c = self.client().await?;
        let row = query_one(
            &c,
            "SELECT MIN(due_at) FROM tasks WHERE due_at IS NOT NULL AND state IN ('READY', 'WAITING')",
            &[],
        )
        .await?;
        Ok(row.try_get(0)?)
    }

    pub async fn save_steps(&self, task_id: &str, epoch: i64, steps: Vec<StepRow>) -> Result<()> {
        let op = batch::Op::SaveSteps {
            task_id: task_id.to_string(),
            epoch,
            steps,
        };
        match self.submit(op).await? {
            batch::Reply::Saved => Ok(()),
            _ => Err(unexpected_reply()),
        }
    }

    pub async fn end_run(
        &self,
        task_id: &str,
        epoch: i64,
        steps: Vec<StepRow>,
        end: RunEnd,
    ) -> Result<Option<String>> {
        let op = batch::Op::EndRun {
            task_id: task_id.to_string(),
            epoch,
            steps,
            end,
        };
        match self.submit(op).await? {
            batch::Reply::Ended(parent) => Ok(parent),
            _ => Err(unexpected_reply()),
        }
    }

    pub async fn transition(
        &self,
        task_id: &str,
        allowed_from: &'static [TaskState],
        to: TaskState,
        due_at: Option<i64>,
        resolver_inputs: Option<Value>,
        event: NewEvent,
    ) -> Result<TransitionOutcome> {
        let op = batch::Op::Transition {
            task_id: task_id.to_string(),
            allowed_from,
            to,
            due_at,
            resolver_inputs,
            event,
        };
        match self.submit(op).await? {
            batch::Reply::Moved(outcome) => Ok(outcome),
            _ => Err(unexpected_reply()),
        }
    }

    /// At start: RUNNING tasks whose lease has expired (their instance is gone) become READY.
    /// Tasks under a live lease belong to running instances and are left alone.
    pub async fn recover_running(&self, detail: Value) -> Result<usize> {
        let c = self.client().await?;
        let now = now_ms();
        let detail = json(&detail);
        let row = query_one(
            &c,
            "WITH r AS ( \
               UPDATE tasks SET state = 'READY', due_at = $1, lease_owner = NULL, lease_until = NULL, updated_at = $1, \
                 crashes = crashes + 1 \
               WHERE state = 'RUNNING' AND (lease_until IS NULL OR lease_until < $1) RETURNING id), \
             e AS ( \
               INSERT INTO task_events (task_id, at, actor, kind, from_state, to_state, detail) \
               SELECT id, $1, 'engine', 'recovered', 'RUNNING', 'READY', $2 FROM r ORDER BY id) \
             SELECT count(*) FROM r",
            &[&now, &detail],
        )
        .await?;
        let n = row.try_get::<_, i64>(0)? as usize;
        if n > 0 {
            self.announce(Signal::Due as u8);
        }
        Ok(n)
    }

    pub async fn expired_leases(&self, now: i64) -> Result<Vec<(String, i64)>> {
        let c = self.client().await?;
        query(
            &c,
            "SELECT id, lease_epoch FROM tasks WHERE state = 'RUNNING' AND lease_until IS NOT NULL AND lease_until < $1",
            &[&now],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
    }

    pub async fn release_orphans(
        &self,
        tasks: Vec<(String, i64)>,
        detail: Value,
        crashed: bool,
    ) -> Result<usize> {
        if tasks.is_empty() {
            return Ok(0);
        }
        let c = self.client().await?;
        let now = now_ms();
        let ids: Vec<&str> = tasks.iter().map(|(id, _)| id.as_str()).collect();
        let epochs: Vec<i64> = tasks.iter().map(|(_, e)| *e).collect();
        let detail = json(&detail);
        let crashes = i32::from(crashed);
        let row = query_one(
            &c,
            // Locked in id order, skipping rows being written (a later sweep sees them).
            "WITH l AS ( \
               SELECT t.id FROM tasks t JOIN unnest($1::text[], $2::bigint[]) AS u(id, epoch) \
                 ON t.id = u.id AND t.lease_epoch = u.epoch \
               WHERE t.state = 'RUNNING' ORDER BY t.id FOR UPDATE OF t SKIP LOCKED), \
             r AS ( \
               UPDATE tasks t SET state = 'READY', due_at = $3, lease_owner = NULL, lease_until = NULL, updated_at = $3, \
                 crashes = t.crashes + $5 \
               FROM l WHERE t.id = l.id RETURNING t.id), \
             e AS ( \
               INSERT INTO task_events (task_id, at, actor, kind, from_state, to_state, detail) \
               SELECT id, $3, 'engine', 'recovered', 'RUNNING', 'READY', $4 FROM r ORDER BY id) \
             SELECT count(*) FROM r",
            &[&ids, &epochs, &now, &detail, &crashes],
        )
        .await?;
        let n = row.try_get::<_, i64>(0)? as usize;
        if n > 0 {
            self.announce(Signal::Due as u8);
        }
        Ok(n)
    }

    pub async fn renew_leases(
        &self,
        owner: &str,
        held: Vec<(String, i64)>,
        until: i64,
    ) -> Result<Vec<String>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
        let epochs: Vec<i64> = held.iter().map(|(_, e)| *e).collect();
        let rows = query(
            &c,
            // Rows are locked in id order and a row another transaction holds is skipped (its
            // writer is this instance's own run write, or a takeover that the next renewal
            // sees), so a renewal never waits in a lock cycle with a write batch. A task is
            // lost when it is no longer RUNNING under this owner and epoch.
            "WITH u AS (SELECT * FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS u(id, epoch, ord)), \
             l AS ( \
               SELECT t.id FROM tasks t JOIN u ON t.id = u.id AND t.lease_epoch = u.epoch \
               WHERE t.state = 'RUNNING' AND t.lease_owner = $3 \
               ORDER BY t.id FOR UPDATE OF t SKIP LOCKED), \
             r AS ( \
               UPDATE tasks t SET lease_until = $4 FROM l WHERE t.id = l.id \
               RETURNING t.id, t.lease_epoch), \
             s AS ( \
               UPDATE resource_slots rs SET until = $4 FROM r \
               WHERE rs.task_id = r.id AND rs.epoch = r.lease_epoch) \
             SELECT u.id FROM u WHERE NOT EXISTS ( \
               SELECT 1 FROM tasks t WHERE t.id = u.id AND t.state = 'RUNNING' \
               AND t.lease_epoch = u.epoch AND t.lease_owner = $3) \
             ORDER BY u.ord",
            &[&ids, &epochs, &owner, &until],
        )
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    pub async fn acquire_slot(
        &self,
        resource: &str,
        limit: usize,
        task_id: &str,
        step: &str,
        epoch: i64,
        until: i64,
    ) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let key = format!("taskhook-slot:{resource}");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let now = now_ms();
        let (lock, fence, clean, refresh, take) = (
            tx.prepare_cached(LOCK_SQL).await?,
            tx.prepare_cached(
                "SELECT 1 FROM tasks WHERE id = $1 AND state = 'RUNNING' AND lease_epoch = $2 FOR SHARE",
            )
            .await?,
            tx.prepare_cached(
                "DELETE FROM resource_slots rs WHERE rs.resource = $1 AND (rs.until < $2 OR NOT EXISTS \
                 (SELECT 1 FROM tasks t WHERE t.id = rs.task_id AND t.state = 'RUNNING' AND t.lease_epoch = rs.epoch))",
            )
            .await?,
            tx.prepare_cached(
                "UPDATE resource_slots SET epoch = $4, until = $5 WHERE resource = $1 AND task_id = $2 AND step = $3",
            )
            .await?,
            tx.prepare_cached(
                "INSERT INTO resource_slots (resource, task_id, step, epoch, until) \
                 SELECT $1, $2, $3, $4, $5 \
                 WHERE NOT EXISTS (SELECT 1 FROM resource_slots WHERE resource = $1 AND task_id = $2 AND step = $3) \
                 AND (SELECT count(*) FROM resource_slots WHERE resource = $1) < $6",
            )
            .await?,
        );
        // One round trip: the statements run in this order, after the lock (a fence that fails
        // rolls the rest back).
        let (l, held, cleaned, refreshed, taken) = tokio::join!(
            biased;
            async { tx.execute(&lock, &[&key]).await },
            async { tx.query_opt(&fence, &[&task_id, &epoch]).await },
            async { tx.execute(&clean, &[&resource, &now]).await },
            async { tx.execute(&refresh, &[&resource, &task_id, &step, &epoch, &until]).await },
            async { tx.execute(&take, &[&resource, &task_id, &step, &epoch, &until, &limit]).await },
        );
        l?;
        if held?.is_none() {
            return Err(StoreError::LeaseLost {
                task: task_id.to_string(),
            });
        }
        cleaned?;
        let got = refreshed? > 0 || taken? > 0;
        tx.commit().await?;
        Ok(got)
    }

    pub async fn release_slot(&self, resource: &str, task_id: &str, step: &str) -> Result<()> {
        let c = self.client().await?;
        execute(
            &c,
            "DELETE FROM resource_slots WHERE resource = $1 AND task_id = $2 AND step = $3",
            &[&resource, &task_id, &step],
        )
        .await?;
        self.announce(Signal::Slots as u8);
        Ok(())
    }

    pub async fn pending_stops(
        &self,
        ids: Vec<String>,
    ) -> Result<Vec<(String, TaskState, String)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        query(
            &c,
            "SELECT id, stop_to, COALESCE(stop_actor, '') FROM tasks \
             WHERE id = ANY($1::text[]) AND state = 'RUNNING' AND stop_to IS NOT NULL",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, parse_state(r.try_get(1)?)?, r.try_get(2)?)))
        .collect()
    }

    pub async fn prune_tasks(&self, before: i64, limit: u32) -> Result<usize> {
        let c = self.client().await?;
        let row = query_one(
            &c,
            "WITH ids AS ( \
               SELECT id FROM tasks WHERE state IN ('DONE', 'CANCELLED', 'WONTFIX') AND updated_at < $1 \
               LIMIT $2 FOR UPDATE SKIP LOCKED), \
             s AS (DELETE FROM steps WHERE task_id IN (SELECT id FROM ids)), \
             e AS (DELETE FROM task_events WHERE task_id IN (SELECT id FROM ids)), \
             c AS (DELETE FROM task_comments WHERE task_id IN (SELECT id FROM ids)), \
             d AS (DELETE FROM tasks WHERE id IN (SELECT id FROM ids) RETURNING 1) \
             SELECT count(*) FROM d",
            &[&before, &i64::from(limit)],
        )
        .await?;
        Ok(row.try_get::<_, i64>(0)? as usize)
    }

    pub async fn delete_task(&self, id: &str) -> Result<bool> {
        let c = self.client().await?;
        // One statement: the row is locked while its rows go, so a task that changes state
        // meanwhile (it cannot leave a final state) is never half deleted.
        let row = query_one(
            &c,
            "WITH t AS (SELECT id, state FROM tasks WHERE id = $1 FOR UPDATE), \
             ids AS (SELECT id FROM t WHERE state IN ('DONE', 'CANCELLED', 'WONTFIX')), \
             s AS (DELETE FROM steps WHERE task_id IN (SELECT id FROM ids)), \
             e AS (DELETE FROM task_events WHERE task_id IN (SELECT id FROM ids)), \
             c AS (DELETE FROM task_comments WHERE task_id IN (SELECT id FROM ids)), \
             d AS (DELETE FROM tasks WHERE id IN (SELECT id FROM ids) RETURNING 1) \
             SELECT (SELECT state FROM t), (SELECT count(*) FROM d)",
            &[&id],
        )
        .await?;
        let state: Option<String> = row.try_get(0)?;
        let deleted: i64 = row.try_get(1)?;
        match state {
            None => Ok(false),
            Some(_) if deleted > 0 => Ok(true),
            Some(other) => Err(StoreError::Conflict(format!(
                "only a DONE, CANCELLED or WONTFIX task can be deleted; this one is {other}"
            ))),
        }
    }

    pub async fn count_tasks(&self, state: TaskState) -> Result<u64> {
        let c = self.client().await?;
        let row = query_one(
            &c,
            "SELECT COUNT(*) FROM tasks WHERE state = $1",
            &[&state.as_str()],
        )
        .await?;
        Ok(row.try_get::<_, i64>(0)? as u64)
    }

    // ---- settings ----

    pub async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        let c = self.client().await?;
        Ok(
            query_opt(&c, "SELECT value FROM settings WHERE key = $1", &[&key])
                .await?
                .map(|r| r.try_get(0))
                .transpose()?,
        )
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        let c = self.client().await?;
        execute(
            &c,
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )
        .await?;
        Ok(())
    }
}
