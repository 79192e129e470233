//! The store remembers: templates, tasks, their steps and their audit trail.
//!
//! It holds no business rules beyond refusing illegal task transitions and writes
//! made under a lease the writer no longer holds. Two backends behave the same:
//!
//! - SQLite ([`SqliteStore`]), embedded: one writer thread groups concurrent writes into one
//!   transaction (group commit), and a small pool of reader connections serves queries. One
//!   process owns the file.
//! - PostgreSQL ([`PgStore`]), shared: a pool of connections, each store call one transaction
//!   (most of them one statement). Several instances may share one database: claims use
//!   `FOR UPDATE SKIP LOCKED`, every write of a run is fenced by its lease epoch, and changes
//!   other instances must hear about are announced with `NOTIFY` (see [`Signals`]).
//!
//! [`Store`] is the handle the rest of the program uses; it dispatches to the backend.

mod audit;
pub mod crypto;
mod postgres;
mod sealing;
mod secrets;
mod sqlite;
#[doc(hidden)]
pub mod testing;
mod types;

use std::path::Path;

use serde_json::Value;
use taskhook_model::TaskState;
use tokio::sync::Notify;

pub use audit::{AuditCursor, AuditEntry, AuditFilter, AuditKind, AuditOutcome, NewCall};
pub use crypto::{KeyError, KeyRing, KeyStatus, RotationReport};
pub use postgres::{DEFAULT_POOL_SIZE, PgStore};
pub use sqlite::{SqliteStore, WriteStats};
pub use types::*;

/// Current time in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error(transparent)]
    Transition(#[from] taskhook_model::TransitionError),
    /// The writer lost its lease on the task: another run owns it now.
    #[error("lease on task {task} was lost")]
    LeaseLost { task: String },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(String),
    /// The database cannot be reached right now (connection refused or lost, pool timeout,
    /// server shutting down or starting): nothing was written, or the outcome of a commit in
    /// flight is unknown.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// Transient failures worth retrying (busy database, unreachable database, closed pool
    /// during restart).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(_) | StoreError::Unavailable(_) | StoreError::Closed
        )
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Database(format!("corrupt JSON column: {e}"))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Wake-ups the store gives about changes that may have been made by another process.
///
/// Each signal is fired with `notify_waiters()` (every task waiting now) and `notify_one()`
/// (one stored permit, so a waiter that was busy at the moment still sees it once): a waiter
/// must treat a wake-up as "look again", never as proof that something changed.
///
/// - PostgreSQL: a listener connection (`LISTEN`) fires them for every committed change by any
///   instance sharing the schema, this one included, and fires all of them after it reconnects
///   (notifications may have been missed meanwhile).
/// - SQLite: the store fires them itself, after the commit of the same writes that send a
///   notification on PostgreSQL (one process owns the file, so these are all the changes).
///
/// Which writes fire which signal:
/// - `due`: a task inserted READY and not claimed; a transition to READY; `end_run` leaving
///   the task READY or WAITING with a due time, or waking its parent; `release_orphans` and
///   `recover_running` that moved a task; a queued fire started; a cancel that woke a parent.
/// - `hooks`: `put_hook`, and `delete_hook` / `set_hook_token` that changed a hook.
/// - `slots`: `release_slot`, and `end_run` of a task that held slots.
/// - `stops`: `transition` asked to pause or cancel a RUNNING task (recorded with the task,
///   see [`Store::pending_stops`]).
#[derive(Debug, Default)]
pub struct Signals {
    pub due: Notify,
    pub hooks: Notify,
    pub slots: Notify,
    pub stops: Notify,
}

/// One of the [`Signals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Due = 1,
    Hooks = 2,
    Slots = 4,
    Stops = 8,
}

impl Signals {
    fn notify(&self, s: Signal) -> &Notify {
        match s {
            Signal::Due => &self.due,
            Signal::Hooks => &self.hooks,
            Signal::Slots => &self.slots,
            Signal::Stops => &self.stops,
        }
    }

    /// Wakes whoever waits on `s` now, and the next one to wait.
    pub(crate) fn fire(&self, s: Signal) {
        let n = self.notify(s);
        n.notify_waiters();
        n.notify_one();
    }

    /// Fires every signal in a bit set of [`Signal`]s.
    pub(crate) fn fire_set(&self, set: u8) {
        for s in [Signal::Due, Signal::Hooks, Signal::Slots, Signal::Stops] {
            if set & (s as u8) != 0 {
                self.fire(s);
            }
        }
    }

    pub(crate) fn fire_all(&self) {
        self.fire_set(0xff);
    }
}

/// The states a stop request may be applied from, as [`Store::transition`] callers (the
/// engine's pause and cancel) allow them.
pub(crate) fn stop_applies(stop: TaskState, from: TaskState) -> bool {
    use TaskState::*;
    let allowed: &[TaskState] = match stop {
        Cancelled => &[Todo, Ready, Waiting, Paused, Blocked],
        Paused => &[Todo, Ready, Waiting, Blocked],
        _ => &[],
    };
    allowed.contains(&from) && from.check_transition(stop).is_ok()
}

/// The audit entry of a stop applied by the store (as the engine's stop writes it).
pub(crate) fn stop_event(actor: &str, from: TaskState, to: TaskState) -> NewEvent {
    NewEvent {
        actor: actor.to_string(),
        kind: if to == TaskState::Cancelled {
            "cancelled"
        } else {
            "paused"
        }
        .into(),
        from_state: Some(from.as_str().to_string()),
        to_state: Some(to.as_str().to_string()),
        detail: Value::Null,
    }
}

/// Handle to the store, on either backend. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Sqlite(_) => f.write_str("Store::Sqlite"),
            Store::Postgres(p) => write!(f, "Store::Postgres({})", p.schema_label()),
        }
    }
}

impl Store {
    /// Opens (creating if needed) an SQLite database file and runs migrations.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Ok(Store::Sqlite(SqliteStore::open(path)?))
    }

    /// Opens the database a URL names, running migrations: `sqlite:PATH` (or `sqlite://PATH`)
    /// for SQLite, `postgres://…` or `postgresql://…` for PostgreSQL (its default schema, a
    /// pool of [`DEFAULT_POOL_SIZE`] connections). `taskhook migrate` is this and nothing else.
    pub async fn connect(url: &str) -> Result<Store> {
        if is_postgres_url(url) {
            return Store::postgres(url, None).await;
        }
        match url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            Some(path) if !path.is_empty() => {
                let path = path.to_string();
                tokio::task::spawn_blocking(move || Store::open(path))
                    .await
                    .map_err(|e| StoreError::Database(format!("opening SQLite failed: {e}")))?
            }
            _ => Err(StoreError::Database(format!(
                "unsupported database URL {url:?}: use sqlite:PATH or postgres://USER@HOST:PORT/DATABASE"
            ))),
        }
    }

    /// Connects to PostgreSQL with a pool of [`DEFAULT_POOL_SIZE`] connections and runs
    /// migrations. With `schema`, the schema is created if missing and every connection works
    /// in it (`search_path`), so several stores can live in one database side by side.
    pub async fn postgres(url: &str, schema: Option<&str>) -> Result<Store> {
        Store::postgres_with_pool(url, schema, DEFAULT_POOL_SIZE).await
    }

    /// [`Store::postgres`] with a pool of `pool_size` connections (at least 1), plus the one
    /// connection that listens for notifications.
    pub async fn postgres_with_pool(
        url: &str,
        schema: Option<&str>,
        pool_size: usize,
    ) -> Result<Store> {
        Ok(Store::Postgres(
            PgStore::connect(url, schema, pool_size).await?,
        ))
    }

    /// Drops a PostgreSQL schema and everything in it (tests and benches clean up with it).
    pub async fn drop_postgres_schema(url: &str, schema: &str) -> Result<()> {
        postgres::drop_schema(url, schema).await
    }

    /// Whether several processes may share this store (PostgreSQL), so that the engine must
    /// coordinate through it (leases, slots, signals) rather than in memory.
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// Wake-ups about changes, see [`Signals`].
    pub fn signals(&self) -> &Signals {
        match self {
            Store::Sqlite(s) => s.signals(),
            Store::Postgres(s) => s.signals(),
        }
    }

    /// Stops accepting writes: SQLite waits for the writer to commit what it has; PostgreSQL
    /// closes the pool (calls in flight finish) and stops listening.
    pub fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close(),
            Store::Postgres(s) => s.close(),
        }
    }
}

pub(crate) fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Generates the methods of [`Store`] that hand the call to the backend.
macro_rules! delegate {
    ($(
        $(#[$meta:meta])*
        pub async fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
    )*) => {
        impl Store {
            $(
                $(#[$meta])*
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Store::Sqlite(s) => s.$name($($arg),*).await,
                        Store::Postgres(s) => s.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

delegate! {
    // Calls carrying sealed values (tasks, steps, events, fires, hooks) are in `sealing.rs`.
    // ---- templates ----

    /// Stores a template body as a new version when it differs from the current one.
    /// Returns the current row and whether the template did not exist before.
    pub async fn put_template(&self, name: &str, body: Value) -> Result<(TemplateRow, bool)>;

    /// The current version of a template.
    pub async fn get_template(&self, name: &str) -> Result<Option<TemplateRow>>;

    /// One version of a template (current or not).
    pub async fn get_template_version(&self, name: &str, version: i64) -> Result<Option<TemplateRow>>;

    /// The current version of every template, by name.
    pub async fn list_templates(&self) -> Result<Vec<TemplateRow>>;

    /// Removes a template from the catalogue. Its versions stay, so tasks pinned to them finish.
    pub async fn delete_template(&self, name: &str) -> Result<bool>;

    // ---- functions ----

    /// Creates or replaces a library function; returns whether it is new.
    pub async fn put_function(&self, name: &str, body: Value) -> Result<bool>;

    pub async fn get_function(&self, name: &str) -> Result<Option<Value>>;

    /// Every library function, by name.
    pub async fn list_functions(&self) -> Result<Vec<Value>>;

    pub async fn delete_function(&self, name: &str) -> Result<bool>;

    // ---- hooks ----

    /// `(group, id, updated_at)` of every hook: lets a watcher re-read only what changed.
    pub async fn hook_versions(&self) -> Result<Vec<(String, String, i64)>>;

    pub async fn delete_hook(&self, group: &str, id: &str) -> Result<bool>;

    /// Takes (or keeps) the lease on a polling source of a hook (its `key` among the hook's
    /// sources) for `owner`, until `ttl_ms` from now: when no one holds it, its holder's lease
    /// ran out, or `owner` holds it already. Then it answers the cursor as last committed
    /// (by a fire's [`FireCursor`] or [`Store::set_source_cursor`]); else who holds it.
    /// `NotFound` when the hook does not exist. Deleting the hook deletes its cursors.
    pub async fn lease_source(&self, group: &str, id: &str, key: &str, owner: &str, ttl_ms: i64) -> Result<SourceLease>;

    /// Moves a polling source's cursor without a fire (a baseline, a branch gone): merges
    /// `cursor.patch` into it. `Conflict` when `cursor.owner` does not hold the lease.
    pub async fn set_source_cursor(&self, group: &str, id: &str, cursor: FireCursor) -> Result<()>;

    /// Gives up `owner`'s lease on a polling source, so another instance may take it at once.
    pub async fn release_source(&self, group: &str, id: &str, key: &str, owner: &str) -> Result<()>;

    /// `(scheduled_for, received_at)` of every scheduled fire received since `since` (unix ms):
    /// how late schedules fire.
    pub async fn schedule_lateness(&self, since: i64) -> Result<Vec<(i64, i64)>>;

    /// Deletes fires received before `before` (unix ms), at most `limit` at a time; returns how
    /// many went. Tasks are kept.
    pub async fn prune_fires(&self, before: i64, limit: u32) -> Result<usize>;

    // ---- tasks ----

    // ---- the engine's side ----

    /// When the next READY or timer-WAITING task becomes due, if any.
    pub async fn next_due_at(&self) -> Result<Option<i64>>;

    /// RUNNING tasks whose lease ran out before `now`, with the epoch they were claimed at.
    pub async fn expired_leases(&self, now: i64) -> Result<Vec<(String, i64)>>;

    /// Extends to `until` the leases `owner` holds on the given `(task, epoch)`s, and the
    /// resource slots those runs hold, in one write. Returns the ids whose lease is lost (the
    /// task is no longer RUNNING at that epoch for that owner).
    pub async fn renew_leases(&self, owner: &str, held: Vec<(String, i64)>, until: i64) -> Result<Vec<String>>;

    /// Takes one of `limit` slots of a named resource for a step of a task held at `epoch`,
    /// until `until` (renewed with the lease). True when taken (or already held by this
    /// step), false when all slots are taken. Slots whose holder's lease expired or whose task
    /// no longer runs at that epoch are freed first. `LeaseLost` when the task is not held at
    /// `epoch`. The limit holds across every instance sharing the store.
    pub async fn acquire_slot(&self, resource: &str, limit: usize, task_id: &str, step: &str, epoch: i64, until: i64) -> Result<bool>;

    /// Gives a resource slot back (signals `slots`).
    pub async fn release_slot(&self, resource: &str, task_id: &str, step: &str) -> Result<()>;

    /// Stops (pause or cancel) recorded for the given tasks while they run:
    /// `(task id, PAUSED or CANCELLED, actor)`. Only tasks still RUNNING are returned.
    pub async fn pending_stops(&self, ids: Vec<String>) -> Result<Vec<(String, TaskState, String)>>;

    /// Deletes finished (DONE, CANCELLED or WONTFIX) tasks last changed before `before`, with their
    /// steps and audit trail, at most `limit` at a time; returns how many went.
    pub async fn prune_tasks(&self, before: i64, limit: u32) -> Result<usize>;

    /// Deletes one finished (DONE or CANCELLED) task with its steps, audit trail and comments,
    /// as pruning would; `false` when there is no such task, `Conflict` when it is not
    /// finished.
    pub async fn delete_task(&self, id: &str) -> Result<bool>;

    /// How many tasks are in `state`.
    pub async fn count_tasks(&self, state: TaskState) -> Result<u64>;

    // ---- secrets ----

    /// A secret's metadata; never its value.
    pub async fn get_secret(&self, name: &str) -> Result<Option<SecretMeta>>;

    /// Every secret's metadata, by name.
    pub async fn list_secrets(&self) -> Result<Vec<SecretMeta>>;

    pub async fn delete_secret(&self, name: &str) -> Result<bool>;

    // ---- settings ----

    pub async fn get_setting(&self, key: &str) -> Result<Option<String>>;

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()>;
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod crypto_tests;
mod tokens;
pub use tokens::{NewToken, TokenRow};

/// Secret values are sealed with the key ring here, above the backends, like every other
/// sealed field (see `sealing.rs`).
impl Store {
    /// Creates or replaces a named secret, its value sealed; returns its metadata and whether
    /// it is new.
    pub async fn put_secret(
        &self,
        name: &str,
        value: &str,
        description: &str,
    ) -> Result<(SecretMeta, bool)> {
        let sealed = self.seal_text(value)?;
        match self {
            Store::Sqlite(s) => s.put_secret(name, &sealed, description).await,
            Store::Postgres(s) => s.put_secret(name, &sealed, description).await,
        }
    }

    /// The current values of those of `names` that exist: `(name, value)`, for a run.
    pub async fn secret_values(&self, names: Vec<String>) -> Result<Vec<(String, String)>> {
        let stored = match self {
            Store::Sqlite(s) => s.secret_values(names).await?,
            Store::Postgres(s) => s.secret_values(names).await?,
        };
        stored
            .into_iter()
            .map(|(name, v)| Ok((name, self.open_text(&v)?)))
            .collect()
    }
}

/// Whether a person may write a step of a task now in `state`, last changed at `updated_at`,
/// which they read at `seen`.
pub(crate) fn check_step_edit(
    state: &taskhook_model::TaskState,
    updated_at: i64,
    seen: i64,
    allowed: &[taskhook_model::TaskState],
) -> Result<()> {
    if !allowed.contains(state) {
        let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        return Err(StoreError::Conflict(format!(
            "the task is {}: its steps can be changed only when it is {}",
            state.as_str(),
            allowed.join(" or ")
        )));
    }
    if updated_at != seen {
        return Err(StoreError::Conflict(
            "the task changed since it was read: read it again".into(),
        ));
    }
    Ok(())
}

/// Whether a person may edit a task in `state`, as last changed at `updated_at`, having seen it
/// changed at `seen`: its state is one of `allowed` and it did not change since.
pub(crate) fn check_task_edit(
    state: &taskhook_model::TaskState,
    updated_at: i64,
    seen: i64,
    allowed: &[taskhook_model::TaskState],
) -> Result<()> {
    if !allowed.contains(state) {
        let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        return Err(StoreError::Conflict(format!(
            "the task is {}: it can be edited only when it is {}",
            state.as_str(),
            allowed.join(" or ")
        )));
    }
    if updated_at != seen {
        return Err(StoreError::Conflict(
            "the task changed since it was read: read it again".into(),
        ));
    }
    Ok(())
}

/// Whether `task` may be given more runs: it is BLOCKED because it ran `run_max` times.
pub(crate) fn check_extend(task: &TaskRow) -> Result<()> {
    if task.state != taskhook_model::TaskState::Blocked
        || task.blocked_reason.as_deref() != Some("retry_max")
    {
        return Err(StoreError::Conflict(format!(
            "only a task BLOCKED by retry_max can be extended; this one is {}{}",
            task.state.as_str(),
            task.blocked_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )));
    }
    Ok(())
}
