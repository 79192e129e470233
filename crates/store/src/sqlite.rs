//! SQLite backend. One dedicated writer thread owns the only write connection and
//! commits every queued write in one transaction (run again with each write inside its own
//! savepoint when one fails, so one failure does not undo its neighbours); callers hear back
//! only after COMMIT.

mod comments;
mod keys;
mod secrets;

use std::cell::Cell;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;
use taskhook_model::{StepState, TaskState};
use tokio::sync::oneshot;

use crate::types::*;
use crate::{Result, Signal, Signals, StoreError, now_ms, stop_applies, stop_event};

mod audit;
mod tokens;

/// Why `recover_running` made a task READY (its audit entry).
pub(crate) const RECOVERED_REASON: &str = "the server stopped while the task ran";

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_functions.sql"),
    include_str!("../migrations/sqlite/0003_hooks.sql"),
    include_str!("../migrations/sqlite/0004_slots.sql"),
    include_str!("../migrations/sqlite/0005_tokens.sql"),
    include_str!("../migrations/sqlite/0006_secrets.sql"),
    include_str!("../migrations/sqlite/0009_audit.sql"),
    include_str!("../migrations/sqlite/0010_people.sql"),
    include_str!("../migrations/sqlite/0011_fires_delivery.sql"),
    include_str!("../migrations/sqlite/0012_crashes.sql"),
    include_str!("../migrations/sqlite/0013_fires_committed_at.sql"),
    include_str!("../migrations/sqlite/0014_blocked_reason.sql"),
    include_str!("../migrations/sqlite/0015_task_comments.sql"),
    include_str!("../migrations/sqlite/0016_source_cursors.sql"),
];
/// Most writes one transaction takes; beyond it the next batch starts.
const MAX_BATCH: usize = 2048;
const READERS: usize = 4;

/// One queued write: `run` performs it (and may be called again, after a rolled-back try) and
/// says whether it succeeded; `finish` answers the caller with the last run's result, given
/// the commit's error if the commit failed.
struct Job {
    run: Box<dyn FnMut(&Connection) -> bool + Send>,
    finish: Finisher,
}

type Finisher = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// A write's last result and the signals it asked for, kept between its runs and its answer.
type Outcome<T> = Arc<Mutex<Option<(Result<T>, u8)>>>;

/// Handle to an open SQLite database. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    readers: Mutex<Vec<Connection>>,
    reader_slots: Arc<tokio::sync::Semaphore>,
    path: std::path::PathBuf,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    signals: Arc<Signals>,
    keys: crate::crypto::Keys,
    stats: Arc<WriteStats>,
}

thread_local! {
    /// Signals the write running on this (writer) thread asked for; fired after its commit.
    static PENDING_SIGNALS: Cell<u8> = const { Cell::new(0) };
}

/// Asks for `s` to be fired once the current write commits (a no-op outside a write).
fn signal(s: Signal) {
    PENDING_SIGNALS.with(|p| p.set(p.get() | s as u8));
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk (WAL fsync) before anyone is told it happened.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Each write runs in a savepoint, whose journal of original pages would otherwise go to a
    // temporary file: a write system call per page changed. In memory it costs a copy.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// Creates the database file readable by its owner only, if it does not exist yet; SQLite
/// gives its `-wal` and `-shm` files the same permissions.
fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Database(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// What the writer thread has done since the store opened: the bench reports it.
#[derive(Debug, Default)]
pub struct WriteStats {
    /// Transactions committed (or tried).
    pub batches: std::sync::atomic::AtomicU64,
    /// Writes run in them.
    pub writes: std::sync::atomic::AtomicU64,
    /// Nanoseconds spent running writes (statements, savepoints).
    pub running_ns: std::sync::atomic::AtomicU64,
    /// Nanoseconds spent committing (WAL write and fsync, automatic checkpoints).
    pub committing_ns: std::sync::atomic::AtomicU64,
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, stats: Arc<WriteStats>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut finishers = Vec::with_capacity(batch.len());
        let started = std::time::Instant::now();
        stats.batches.fetch_add(1, Relaxed);
        stats.writes.fetch_add(batch.len() as u64, Relaxed);
        if let Err(e) = run_cached(&conn, "BEGIN IMMEDIATE") {
            // Dropping the jobs unanswered tells every caller the write did not happen.
            tracing::error!(error = %e, "could not begin a write transaction");
            batch.clear();
            continue;
        }
        // Optimistic pass: the writes one after another, without savepoints (a savepoint
        // copies every page it changes to its journal, about a quarter of the writer's time).
        // A failed write may have left part of its changes, so the first failure rolls the
        // whole transaction back and the batch runs again with each write in a savepoint of
        // its own: a failing write still never undoes its neighbours.
        let clean = batch.iter_mut().all(|job| (job.run)(&conn));
        if !clean {
            let again =
                run_cached(&conn, "ROLLBACK").and_then(|_| run_cached(&conn, "BEGIN IMMEDIATE"));
            if let Err(e) = again {
                tracing::error!(error = %e, "could not restart a write transaction");
                let _ = conn.execute_batch("ROLLBACK");
                batch.clear();
                continue;
            }
            for job in batch.iter_mut() {
                let _ = run_cached(&conn, "SAVEPOINT job");
                if !(job.run)(&conn) {
                    let _ = run_cached(&conn, "ROLLBACK TO job");
                }
                let _ = run_cached(&conn, "RELEASE job");
            }
        }
        finishers.extend(batch.drain(..).map(|job| job.finish));
        let ran = std::time::Instant::now();
        let commit = run_cached(&conn, "COMMIT").map_err(StoreError::from);
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        stats
            .running_ns
            .fetch_add((ran - started).as_nanos() as u64, Relaxed);
        stats
            .committing_ns
            .fetch_add(ran.elapsed().as_nanos() as u64, Relaxed);
        for f in finishers {
            f(commit.as_ref().err());
        }
    }
}

/// Runs a parameterless statement from the statement cache (no parsing per call).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute([])
}

fn json(v: &Value) -> String {
    v.to_string()
}

fn parse_json(s: String) -> rusqlite::Result<Value> {
    serde_json::from_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn parse_state(s: String) -> rusqlite::Result<TaskState> {
    s.parse::<TaskState>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

const TASK_COLUMNS: &str = "id, template, template_version, title, state, inputs, resolver_inputs, result, tags, \
     requester, parent_id, idempotency_key, run_count, run_max, due_at, lease_epoch, created_at, updated_at, people, crashes, blocked_reason";

fn task_from_row(r: &Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        id: r.get(0)?,
        template: r.get(1)?,
        template_version: r.get(2)?,
        title: r.get(3)?,
        state: parse_state(r.get(4)?)?,
        inputs: parse_json(r.get(5)?)?,
        resolver_inputs: parse_json(r.get(6)?)?,
        result: parse_json(r.get(7)?)?,
        tags: parse_json(r.get(8)?)?,
        requester: r.get(9)?,
        parent_id: r.get(10)?,
        idempotency_key: r.get(11)?,
        run_count: r.get(12)?,
        run_max: r.get(13)?,
        due_at: r.get(14)?,
        lease_epoch: r.get(15)?,
        created_at: r.get(16)?,
        updated_at: r.get(17)?,
        people: parse_people(r.get(18)?)?,
        crashes: r.get(19)?,
        blocked_reason: r.get(20)?,
    })
}

fn parse_people(s: String) -> rusqlite::Result<TaskPeople> {
    serde_json::from_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(18, rusqlite::types::Type::Text, e.into())
    })
}

const STEP_COLUMNS: &str =
    "name, state, output, metadata, error, attempts, next_retry_at, foreach_parent, item";

fn step_from_row(r: &Row<'_>) -> rusqlite::Result<StepRow> {
    let item: Option<String> = r.get(8)?;
    Ok(StepRow {
        name: r.get(0)?,
        state: StepState::parse(&r.get::<_, String>(1)?),
        output: parse_json(r.get(2)?)?,
        metadata: parse_json(r.get(3)?)?,
        error: r.get(4)?,
        attempts: r.get(5)?,
        next_retry_at: r.get(6)?,
        foreach_parent: r.get(7)?,
        item: item.map(parse_json).transpose()?,
    })
}

fn load_task(conn: &Connection, id: &str) -> Result<Option<TaskRow>> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], task_from_row)
        .optional()?)
}

fn load_steps(conn: &Connection, id: &str) -> Result<Vec<StepRow>> {
    let sql = format!("SELECT {STEP_COLUMNS} FROM steps WHERE task_id = ?1 ORDER BY name");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map([id], step_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

fn insert_event(conn: &Connection, task_id: &str, at: i64, e: &NewEvent) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO task_events (task_id, at, actor, kind, from_state, to_state, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![task_id, at, e.actor, e.kind, e.from_state, e.to_state, json(&e.detail)])?;
    Ok(())
}

fn upsert_steps(conn: &Connection, task_id: &str, steps: &[StepRow], now: i64) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO steps (task_id, name, state, output, metadata, error, attempts, next_retry_at, foreach_parent, item, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
         ON CONFLICT (task_id, name) DO UPDATE SET state = excluded.state, output = excluded.output, \
         metadata = excluded.metadata, error = excluded.error, attempts = excluded.attempts, \
         next_retry_at = excluded.next_retry_at, foreach_parent = excluded.foreach_parent, item = excluded.item, \
         updated_at = excluded.updated_at",
    )?;
    for s in steps {
        stmt.execute(params![
            task_id,
            s.name,
            s.state.as_str(),
            json(&s.output),
            json(&s.metadata),
            s.error,
            s.attempts,
            s.next_retry_at,
            s.foreach_parent,
            s.item.as_ref().map(json),
            now
        ])?;
    }
    Ok(())
}

/// Fails unless the task is still held at `epoch` (fencing: a stale runner cannot write).
fn check_lease(conn: &Connection, task_id: &str, epoch: i64) -> Result<()> {
    let held: Option<(String, i64)> = conn
        .prepare_cached("SELECT state, lease_epoch FROM tasks WHERE id = ?1")?
        .query_row([task_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match held {
        Some((state, e)) if e == epoch && state == "RUNNING" => Ok(()),
        _ => Err(StoreError::LeaseLost {
            task: task_id.to_string(),
        }),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs migrations.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        create_private(&path)?;
        let mut conn = open_connection(&path)?;
        migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let stats = Arc::new(WriteStats::default());
        let writer_stats = stats.clone();
        let handle = std::thread::Builder::new()
            .name("taskhook-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, writer_stats))
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_connection(&path)?);
        }
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(Some(tx)),
                readers: Mutex::new(readers),
                reader_slots: Arc::new(tokio::sync::Semaphore::new(READERS)),
                path,
                writer_thread: Mutex::new(Some(handle)),
                signals: Arc::new(Signals::default()),
                keys: Default::default(),
                stats,
            }),
        })
    }

    /// What the writer thread has done so far.
    pub fn write_stats(&self) -> &WriteStats {
        &self.inner.stats
    }

    /// Stops accepting writes and waits for the writer to commit what it has.
    pub fn close(&self) {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = self
            .inner
            .writer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = h.join();
        }
    }

    /// Wake-ups this store fires after its own commits (see [`Signals`]).
    pub fn signals(&self) -> &Signals {
        &self.inner.signals
    }

    /// Runs `f` inside the shared write transaction; resolves after COMMIT. The signals `f`
    /// asked for ([`signal`]) fire after a successful commit.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnMut(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let signals = self.inner.signals.clone();
        // The last run's result and the signals it asked for.
        let outcome: Outcome<T> = Arc::new(Mutex::new(None));
        let slot = outcome.clone();
        let mut f = f;
        let run = Box::new(move |conn: &Connection| {
            PENDING_SIGNALS.with(|p| p.set(0));
            let res = f(conn);
            let wanted = PENDING_SIGNALS.with(|p| p.replace(0));
            let ok = res.is_ok();
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((res, wanted));
            ok
        });
        let finish: Finisher = Box::new(move |commit_err: Option<&StoreError>| {
            let Some((res, wanted)) = outcome.lock().unwrap_or_else(|e| e.into_inner()).take()
            else {
                return;
            };
            let out = match commit_err {
                Some(e) if res.is_ok() => Err(StoreError::Database(format!("commit failed: {e}"))),
                _ => res,
            };
            if out.is_ok() && wanted != 0 {
                signals.fire_set(wanted);
            }
            let _ = tx.send(out);
        });
        let job = Job { run, finish };
        {
            let guard = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
            guard
                .as_ref()
                .ok_or(StoreError::Closed)?
                .send(job)
                .map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a reader connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        // One permit per pooled connection: readers wait their turn instead of opening
        // connections (and blocking threads) without bound under load.
        let permit = self
            .inner
            .reader_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner
                .readers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop();
            let conn = match conn {
                Some(c) => c,
                None => open_connection(&inner.path)?,
            };
            let out = f(&conn);
            inner
                .readers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
            drop(permit);
            out
        })
        .await
        .map_err(|e| StoreError::Database(format!("reader failed: {e}")))?
    }

    // ---- templates ----

    /// Stores a template body as a new version when it differs from the current one.
    /// Returns the current row and whether the template did not exist before.
    pub async fn put_template(&self, name: &str, body: Value) -> Result<(TemplateRow, bool)> {
        let name = name.to_string();
        self.write(move |c| {
            let now = now_ms();
            let current: Option<i64> =
                c.prepare_cached("SELECT version FROM templates WHERE name = ?1")?.query_row([&name], |r| r.get(0)).optional()?;
            if let Some(v) = current {
                let existing: String = c
                    .prepare_cached("SELECT body FROM template_versions WHERE name = ?1 AND version = ?2")?
                    .query_row(params![name, v], |r| r.get(0))?;
                if parse_json(existing)? == body {
                    let created_at = now;
                    return Ok((TemplateRow { name: name.clone(), version: v, body: body.clone(), created_at }, false));
                }
            }
            let last: Option<i64> = c
                .prepare_cached("SELECT MAX(version) FROM template_versions WHERE name = ?1")?
                .query_row([&name], |r| r.get(0))?;
            let version = last.unwrap_or(0) + 1;
            c.prepare_cached("INSERT INTO template_versions (name, version, body, created_at) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![name, version, json(&body), now])?;
            c.prepare_cached(
                "INSERT INTO templates (name, version, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
            )?
            .execute(params![name, version, now])?;
            Ok((TemplateRow { name: name.clone(), version, body: body.clone(), created_at: now }, current.is_none()))
        })
        .await
    }

    pub async fn get_template(&self, name: &str) -> Result<Option<TemplateRow>> {
        let name = name.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT v.name, v.version, v.body, v.created_at FROM templates t \
                 JOIN template_versions v ON v.name = t.name AND v.version = t.version WHERE t.name = ?1",
            )?
            .query_row([name], |r| Ok(TemplateRow { name: r.get(0)?, version: r.get(1)?, body: parse_json(r.get(2)?)?, created_at: r.get(3)? }))
            .optional()?)
        })
        .await
    }

    pub async fn get_template_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<Option<TemplateRow>> {
        let name = name.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached("SELECT name, version, body, created_at FROM template_versions WHERE name = ?1 AND version = ?2")?
                .query_row(params![name, version], |r| {
                    Ok(TemplateRow { name: r.get(0)?, version: r.get(1)?, body: parse_json(r.get(2)?)?, created_at: r.get(3)? })
                })
                .optional()?)
        })
        .await
    }

    pub async fn list_templates(&self) -> Result<Vec<TemplateRow>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT v.name, v.version, v.body, v.created_at FROM templates t \
                 JOIN template_versions v ON v.name = t.name AND v.version = t.version ORDER BY t.name",
            )?;
            let rows = stmt
                .query_map([], |r| Ok(TemplateRow { name: r.get(0)?, version: r.get(1)?, body: parse_json(r.get(2)?)?, created_at: r.get(3)? }))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Removes a template from the catalogue. Its versions stay, so tasks pinned to them finish.
    pub async fn delete_template(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.write(move |c| {
            Ok(c.prepare_cached("DELETE FROM templates WHERE name = ?1")?
                .execute([&name])?
                > 0)
        })
        .await
    }

    // ---- functions ----

    /// Creates or replaces a library function; returns whether it is new.
    pub async fn put_function(&self, name: &str, body: Value) -> Result<bool> {
        let name = name.to_string();
        self.write(move |c| {
            let existed: bool =
                c.prepare_cached("SELECT 1 FROM functions WHERE name = ?1")?.query_row([&name], |_| Ok(true)).optional()?.unwrap_or(false);
            c.prepare_cached(
                "INSERT INTO functions (name, body, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            )?
            .execute(params![name, json(&body), now_ms()])?;
            Ok(!existed)
        })
        .await
    }

    pub async fn get_function(&self, name: &str) -> Result<Option<Value>> {
        let name = name.to_string();
        self.read(move |c| {
            let body: Option<String> = c
                .prepare_cached("SELECT body FROM functions WHERE name = ?1")?
                .query_row([name], |r| r.get(0))
                .optional()?;
            Ok(body.map(parse_json).transpose()?)
        })
        .await
    }

    pub async fn list_functions(&self) -> Result<Vec<Value>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT body FROM functions ORDER BY name")?;
            let rows = stmt
                .query_map([], |r| parse_json(r.get(0)?))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    pub async fn delete_function(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.write(move |c| {
            Ok(c.prepare_cached("DELETE FROM functions WHERE name = ?1")?
                .execute([&name])?
                > 0)
        })
        .await
    }

    // ---- hooks ----

    /// Creates or replaces a hook. A new hook gets `new_token` as its trigger token; a replaced
    /// one keeps its token and schedule position. Returns the row and whether it is new.
    pub async fn put_hook(
        &self,
        group: &str,
        id: &str,
        body: Value,
        new_token: &str,
    ) -> Result<(HookRow, bool)> {
        let (group, id, token) = (group.to_string(), id.to_string(), new_token.to_string());
        self.write(move |c| {
            let now = now_ms();
            let existed = load_hook(c, &group, &id)?.is_some();
            c.prepare_cached(
                "INSERT INTO hooks (hook_group, hook_id, body, trigger_token, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
                 ON CONFLICT (hook_group, hook_id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            )?
            .execute(params![group, id, json(&body), token, now])?;
            signal(Signal::Hooks);
            let row = load_hook(c, &group, &id)?.ok_or_else(|| StoreError::NotFound { what: format!("hook {group}/{id}") })?;
            Ok((row, !existed))
        })
        .await
    }

    pub async fn get_hook(&self, group: &str, id: &str) -> Result<Option<HookRow>> {
        let (group, id) = (group.to_string(), id.to_string());
        self.read(move |c| load_hook(c, &group, &id)).await
    }

    /// Every hook, or those of one group, ordered by group and id.
    pub async fn list_hooks(&self, group: Option<&str>) -> Result<Vec<HookRow>> {
        let group = group.map(String::from);
        self.read(move |c| {
            let sql = format!("SELECT {HOOK_COLUMNS} FROM hooks WHERE ?1 IS NULL OR hook_group = ?1 ORDER BY hook_group, hook_id");
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map([group], hook_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// `(group, id, updated_at)` of every hook: lets a watcher re-read only what changed.
    pub async fn hook_versions(&self) -> Result<Vec<(String, String, i64)>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT hook_group, hook_id, updated_at FROM hooks")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    pub async fn delete_hook(&self, group: &str, id: &str) -> Result<bool> {
        let (group, id) = (group.to_string(), id.to_string());
        self.write(move |c| {
            let deleted = c
                .prepare_cached("DELETE FROM hooks WHERE hook_group = ?1 AND hook_id = ?2")?
                .execute([&group, &id])?
                > 0;
            if deleted {
                signal(Signal::Hooks);
            }
            Ok(deleted)
        })
        .await
    }

    pub async fn set_hook_token(&self, group: &str, id: &str, token: &str) -> Result<bool> {
        let (group, id, token) = (group.to_string(), id.to_string(), token.to_string());
        self.write(move |c| {
            let changed = c
                .prepare_cached("UPDATE hooks SET trigger_token = ?3, updated_at = ?4 WHERE hook_group = ?1 AND hook_id = ?2")?
                .execute(params![group, id, token, now_ms()])?
                > 0;
            if changed {
                signal(Signal::Hooks);
            }
            Ok(changed)
        })
        .await
    }

    /// Records one event meeting a hook, with the task it creates, in one transaction.
    ///
    /// A delivery id already seen since `dedupe_since`, or a due time already fired, returns
    /// the first fire instead ([`FireOutcome::Duplicate`]). With `overlap` set and an
    /// unfinished task from this hook, no task is created and the fire's result is the
    /// given word (`skipped` or `queued`).
    pub async fn record_fire(
        &self,
        fire: NewFire,
        task: Option<(NewTask, NewEvent)>,
        dedupe_since: Option<i64>,
        overlap: Option<&'static str>,
    ) -> Result<FireOutcome> {
        self.write(move |c| {
            // First, so that a source whose lease another instance took writes nothing.
            if let Some(cursor) = &fire.cursor {
                write_cursor(c, &fire.hook_group, &fire.hook_id, cursor)?;
            }
            if let (Some(delivery), Some(since)) = (&fire.delivery_id, dedupe_since)
                && let Some(first) = first_delivery(c, &fire.hook_group, &fire.hook_id, delivery, since)?
            {
                    // The repeat is in the ledger too, pointing at the first fire's task.
                    insert_fire(
                        c,
                        &NewFire {
                            result: "duplicate".into(),
                            task_id: first.task_id.clone(),
                            error: Some(format!("repeated delivery: first fire {}", first.id)),
                            payload: None,
                            ..fire.clone()
                        },
                    )?;
                    return Ok(FireOutcome::Duplicate(first));
            }
            if let Some(due) = fire.scheduled_for {
                // No join in the lookup, as in `first_delivery`.
                let found: Option<String> = c
                    .prepare_cached(
                        "SELECT id FROM fires \
                         WHERE hook_group = ?1 AND hook_id = ?2 AND scheduled_for IS NOT NULL AND scheduled_for = ?3",
                    )?
                    .query_row(params![fire.hook_group, fire.hook_id, due], |r| r.get(0))
                    .optional()?;
                if let Some(first) = found.map(|id| fire_by_id(c, &id)).transpose()?.flatten() {
                    return Ok(FireOutcome::Duplicate(first));
                }
            }
            let mut fire = fire.clone();
            let mut task = task.clone();
            // Busy: a task of this hook is unfinished, or (for queueing) fires already wait in
            // line, which keeps the queue first-in, first-out.
            if let Some(word) = overlap
                && task.is_some()
                && (hook_has_unfinished_task(c, &fire.hook_group, &fire.hook_id)?
                    || (word == "queued" && hook_has_queued_fire(c, &fire.hook_group, &fire.hook_id)?))
            {
                fire.result = word.to_string();
                task = None;
            }
            let row = match &task {
                Some((t, ev)) => {
                    let row = insert_task(c, t, ev)?;
                    fire.task_id = Some(row.id.clone());
                    Some(row)
                }
                None => None,
            };
            insert_fire(c, &fire)?;
            if let Some(due) = fire.scheduled_for {
                c.prepare_cached(
                    "UPDATE hooks SET last_scheduled_for = MAX(COALESCE(last_scheduled_for, ?3), ?3) WHERE hook_group = ?1 AND hook_id = ?2",
                )?
                .execute(params![fire.hook_group, fire.hook_id, due])?;
            }
            let state = row.as_ref().map(|t| t.state);
            Ok(FireOutcome::Recorded(FireRow::from_new(fire, state), row.map(Box::new)))
        })
        .await
    }

    /// Takes (or keeps) the lease on a polling source of a hook for `owner`, until
    /// `ttl_ms` from now: when no one holds it, its holder's lease ran out, or `owner` holds
    /// it already. `NotFound` when the hook does not exist.
    pub async fn lease_source(
        &self,
        group: &str,
        id: &str,
        key: &str,
        owner: &str,
        ttl_ms: i64,
    ) -> Result<SourceLease> {
        let (group, id, key, owner) = (
            group.to_string(),
            id.to_string(),
            key.to_string(),
            owner.to_string(),
        );
        self.write(move |c| {
            let now = now_ms();
            c.prepare_cached(
                "INSERT INTO source_cursors (hook_group, hook_id, source_key, owner, lease_until, cursor, updated_at) \
                 SELECT ?1, ?2, ?3, ?4, ?5, NULL, ?6 WHERE EXISTS (SELECT 1 FROM hooks WHERE hook_group = ?1 AND hook_id = ?2) \
                 ON CONFLICT (hook_group, hook_id, source_key) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until \
                 WHERE source_cursors.owner = excluded.owner OR source_cursors.lease_until <= ?6",
            )?
            .execute(params![group, id, key, owner, now.saturating_add(ttl_ms), now])?;
            let row: Option<(String, i64, Option<String>)> = c
                .prepare_cached(
                    "SELECT owner, lease_until, cursor FROM source_cursors WHERE hook_group = ?1 AND hook_id = ?2 AND source_key = ?3",
                )?
                .query_row(params![group, id, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            match row {
                None => Err(StoreError::NotFound { what: format!("hook {group}/{id}") }),
                Some((holder, _, cursor)) if holder == owner => {
                    Ok(SourceLease::Held(cursor.map(parse_json).transpose()?))
                }
                Some((holder, until, _)) => Ok(SourceLease::Elsewhere { owner: holder, until }),
            }
        })
        .await
    }

    /// Moves a polling source's cursor without a fire (merging `patch` into it); `Conflict`
    /// when `owner` does not hold the source's lease.
    pub async fn set_source_cursor(&self, group: &str, id: &str, cursor: FireCursor) -> Result<()> {
        let (group, id) = (group.to_string(), id.to_string());
        self.write(move |c| write_cursor(c, &group, &id, &cursor))
            .await
    }

    /// Gives up `owner`'s lease on a polling source (another instance may take it at once).
    pub async fn release_source(
        &self,
        group: &str,
        id: &str,
        key: &str,
        owner: &str,
    ) -> Result<()> {
        let (group, id, key, owner) = (
            group.to_string(),
            id.to_string(),
            key.to_string(),
            owner.to_string(),
        );
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE source_cursors SET lease_until = 0 WHERE hook_group = ?1 AND hook_id = ?2 AND source_key = ?3 AND owner = ?4",
            )?
            .execute(params![group, id, key, owner])?;
            Ok(())
        })
        .await
    }

    /// The oldest fire of a hook still waiting for its predecessor to finish.
    pub async fn oldest_queued_fire(&self, group: &str, id: &str) -> Result<Option<FireRow>> {
        let (group, id) = (group.to_string(), id.to_string());
        self.read(move |c| {
            let sql = format!(
                "SELECT {FIRE_COLUMNS} FROM fires f LEFT JOIN tasks t ON t.id = f.task_id \
                 WHERE f.hook_group = ?1 AND f.hook_id = ?2 AND f.result = 'queued' ORDER BY f.id LIMIT 1"
            );
            Ok(c.prepare_cached(&sql)?.query_row([group, id], fire_from_row).optional()?)
        })
        .await
    }

    /// Starts the task of a queued fire, if the fire is still queued and no task of its hook is
    /// unfinished; otherwise does nothing and returns `None`.
    pub async fn start_queued_fire(
        &self,
        fire_id: &str,
        task: NewTask,
        event: NewEvent,
    ) -> Result<Option<TaskRow>> {
        let fire_id = fire_id.to_string();
        self.write(move |c| {
            let hook: Option<(String, String)> = c
                .prepare_cached(
                    "SELECT hook_group, hook_id FROM fires WHERE id = ?1 AND result = 'queued'",
                )?
                .query_row([&fire_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((group, id)) = hook else {
                return Ok(None);
            };
            if hook_has_unfinished_task(c, &group, &id)? {
                return Ok(None);
            }
            let row = insert_task(c, &task, &event)?;
            c.prepare_cached("UPDATE fires SET result = 'created', task_id = ?2 WHERE id = ?1")?
                .execute(params![fire_id, row.id])?;
            Ok(Some(row))
        })
        .await
    }

    /// Ends a queued fire as `error` with `reason` (already sealed); false when it was no
    /// longer queued.
    pub async fn fail_queued_fire(&self, fire_id: &str, reason: &str) -> Result<bool> {
        let (fire_id, reason) = (fire_id.to_string(), reason.to_string());
        self.write(move |c| {
            Ok(c.prepare_cached(
                "UPDATE fires SET result = 'error', error = ?2 WHERE id = ?1 AND result = 'queued'",
            )?
            .execute(params![fire_id, reason])?
                == 1)
        })
        .await
    }

    /// `(scheduled_for, committed_at)` of every scheduled fire received since `since` (unix
    /// ms; `received_at` for fires older than `committed_at`): how late schedules fire.
    pub async fn schedule_lateness(&self, since: i64) -> Result<Vec<(i64, i64)>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT scheduled_for, COALESCE(committed_at, received_at) FROM fires WHERE scheduled_for IS NOT NULL AND received_at >= ?1",
            )?;
            let rows = stmt.query_map([since], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Deletes fires received before `before` (unix ms), at most `limit` at a time; returns how
    /// many went. Tasks are kept.
    pub async fn prune_fires(&self, before: i64, limit: u32) -> Result<usize> {
        self.write(move |c| {
            Ok(c.prepare_cached(
                "DELETE FROM fires WHERE id IN (SELECT id FROM fires WHERE received_at < ?1 AND result != 'queued' LIMIT ?2)",
            )?
            .execute(params![before, limit])?)
        })
        .await
    }

    /// Fires of a hook, newest first, with the current state of each created task.
    pub async fn list_fires(
        &self,
        group: &str,
        id: &str,
        before: Option<String>,
        limit: u32,
    ) -> Result<Vec<FireRow>> {
        let (group, id) = (group.to_string(), id.to_string());
        self.read(move |c| {
            let sql = format!(
                "SELECT {FIRE_COLUMNS} FROM fires f LEFT JOIN tasks t ON t.id = f.task_id \
                 WHERE f.hook_group = ?1 AND f.hook_id = ?2 AND (?3 IS NULL OR f.id < ?3) ORDER BY f.id DESC LIMIT ?4"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(params![group, id, before, limit.clamp(1, 1000)], fire_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    // ---- tasks ----

    /// Inserts a task and its steps. With an idempotency key already used for this template,
    /// returns the existing task and `false`.
    pub async fn create_task(&self, t: NewTask, event: NewEvent) -> Result<(TaskRow, bool)> {
        self.write(move |c| {
            if let Some(existing) = find_by_idempotency_key(c, &t)? {
                return Ok((existing, false));
            }
            Ok((insert_task(c, &t, &event)?, true))
        })
        .await
    }

    pub async fn get_task(&self, id: &str) -> Result<Option<(TaskRow, Vec<StepRow>)>> {
        let id = id.to_string();
        self.read(move |c| {
            let Some(task) = load_task(c, &id)? else {
                return Ok(None);
            };
            let steps = load_steps(c, &id)?;
            Ok(Some((task, steps)))
        })
        .await
    }

    pub async fn list_tasks(&self, f: TaskFilter) -> Result<Vec<TaskRow>> {
        self.read(move |c| {
            let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE 1=1");
            let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
            if let Some(s) = f.state {
                args.push(Box::new(s.as_str()));
                sql.push_str(&format!(" AND state = ?{}", args.len()));
            }
            if let Some(t) = f.template {
                args.push(Box::new(t));
                sql.push_str(&format!(" AND template = ?{}", args.len()));
            }
            if let Some(r) = f.blocked_reason {
                args.push(Box::new(r));
                sql.push_str(&format!(
                    " AND state = 'BLOCKED' AND blocked_reason = ?{}",
                    args.len()
                ));
            }
            if let Some(b) = f.before {
                args.push(Box::new(b));
                sql.push_str(&format!(" AND id < ?{}", args.len()));
            }
            args.push(Box::new(f.limit.clamp(1, 1000)));
            sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(
                    rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())),
                    task_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    pub async fn task_events(&self, id: &str) -> Result<Vec<TaskEvent>> {
        let id = id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, task_id, at, actor, kind, from_state, to_state, detail FROM task_events WHERE task_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt
                .query_map([id], |r| {
                    Ok(TaskEvent {
                        seq: r.get(0)?,
                        task_id: r.get(1)?,
                        at: r.get(2)?,
                        actor: r.get(3)?,
                        kind: r.get(4)?,
                        from_state: r.get(5)?,
                        to_state: r.get(6)?,
                        detail: parse_json(r.get(7)?)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    // ---- the engine's side ----

    /// Claims up to `limit` tasks due at `now` (READY, or WAITING on a timer that fired):
    /// sets them RUNNING under a new lease epoch and returns them with their steps.
    pub async fn claim_due(
        &self,
        owner: &str,
        detail: Value,
        now: i64,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedTask>> {
        let owner = owner.to_string();
        self.write(move |c| {
            let mut pick = c.prepare_cached(
                // `due_at IS NOT NULL` lets the planner use the partial index without looking at ?1,
                // so the cached statement is not re-prepared on every call.
                "SELECT id, state FROM tasks WHERE due_at IS NOT NULL AND due_at <= ?1 AND state IN ('READY', 'WAITING') \
                 ORDER BY due_at LIMIT ?2",
            )?;
            let picked = pick
                .query_map(params![now, limit as i64], |r| Ok((r.get::<_, String>(0)?, parse_state(r.get(1)?)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut claimed = Vec::with_capacity(picked.len());
            let mut update = c.prepare_cached(
                "UPDATE tasks SET state = 'RUNNING', due_at = NULL, lease_owner = ?2, lease_epoch = lease_epoch + 1, \
                 lease_until = ?3, run_count = run_count + 1, updated_at = ?4 WHERE id = ?1",
            )?;
            for (id, from) in picked {
                update.execute(params![id, owner, now + lease_ms, now])?;
                insert_event(c, &id, now, &NewEvent::transition("engine", "claimed", from, TaskState::Running, detail.clone()))?;
                let task = load_task(c, &id)?.ok_or_else(|| StoreError::NotFound { what: format!("task {id}") })?;
                let steps = load_steps(c, &id)?;
                claimed.push(ClaimedTask { task, claimed_from: from, steps });
            }
            Ok(claimed)
        })
        .await
    }

    /// When the next READY or timer-WAITING task becomes due, if any.
    pub async fn next_due_at(&self) -> Result<Option<i64>> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT MIN(due_at) FROM tasks WHERE due_at IS NOT NULL AND state IN ('READY', 'WAITING')")?
                .query_row([], |r| r.get(0))?)
        })
        .await
    }

    /// Writes step rows of a task held at `epoch`.
    pub async fn save_steps(&self, task_id: &str, epoch: i64, steps: Vec<StepRow>) -> Result<()> {
        let task_id = task_id.to_string();
        self.write(move |c| {
            check_lease(c, &task_id, epoch)?;
            upsert_steps(c, &task_id, &steps, now_ms())
        })
        .await
    }

    /// Ends a run: writes the last step rows, moves the task to its next state, releases the
    /// lease and the task's resource slots, and records why. A stop recorded with the task
    /// that applies to that state is applied too. When the task ends and its parent waits on
    /// it, wakes the parent (returns its id so the caller can notify the engine).
    pub async fn end_run(
        &self,
        task_id: &str,
        epoch: i64,
        steps: Vec<StepRow>,
        end: RunEnd,
    ) -> Result<Option<String>> {
        let task_id = task_id.to_string();
        self.write(move |c| {
            check_lease(c, &task_id, epoch)?;
            TaskState::Running.check_transition(end.state)?;
            let now = now_ms();
            upsert_steps(c, &task_id, &steps, now)?;
            let (stop_to, stop_actor): (Option<String>, Option<String>) = c
                .prepare_cached("SELECT stop_to, stop_actor FROM tasks WHERE id = ?1")?
                .query_row([&task_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let stop = stop_to
                .and_then(|s| s.parse::<TaskState>().ok())
                .filter(|s| stop_applies(*s, end.state));
            c.prepare_cached(
                // A child that ended during this run set due_at to wake us: a WAITING end keeps it.
                "UPDATE tasks SET state = ?2, \
                 due_at = CASE WHEN ?2 = 'WAITING' AND due_at IS NOT NULL THEN MIN(due_at, COALESCE(?3, due_at)) ELSE ?3 END, \
                 result = COALESCE(?4, result), lease_owner = NULL, lease_until = NULL, stop_to = NULL, stop_actor = NULL, \
                 crashes = 0, blocked_reason = CASE WHEN ?2 = 'BLOCKED' THEN ?6 END, updated_at = ?5 WHERE id = ?1",
            )?
            .execute(params![task_id, end.state.as_str(), end.due_at, end.result.as_ref().map(json), now, end.blocked_reason])?;
            insert_event(c, &task_id, now, &end.event)?;
            let state = match stop {
                Some(to) => {
                    c.prepare_cached("UPDATE tasks SET state = ?2, due_at = NULL, blocked_reason = NULL WHERE id = ?1")?
                        .execute(params![task_id, to.as_str()])?;
                    let actor = stop_actor.unwrap_or_default();
                    insert_event(c, &task_id, now, &stop_event(&actor, end.state, to))?;
                    to
                }
                None => end.state,
            };
            if matches!(state, TaskState::Ready | TaskState::Waiting) {
                let due: Option<i64> = c
                    .prepare_cached("SELECT due_at FROM tasks WHERE id = ?1")?
                    .query_row([&task_id], |r| r.get(0))?;
                if due.is_some() {
                    signal(Signal::Due);
                }
            }
            if c.prepare_cached("DELETE FROM resource_slots WHERE task_id = ?1")?.execute([&task_id])? > 0 {
                signal(Signal::Slots);
            }
            wake_parent_if_ended(c, &task_id, state, now)
        })
        .await
    }

    /// A human or the API changes a task's state (resolve, retry, pause, cancel).
    /// `due_at` is set when the task becomes READY. A RUNNING task is left alone for
    /// PAUSED and CANCELLED: the engine must stop its run, and [`TransitionOutcome::Running`] says so
    /// (the request is recorded with the task, see [`SqliteStore::pending_stops`]).
    pub async fn transition(
        &self,
        task_id: &str,
        allowed_from: &'static [TaskState],
        to: TaskState,
        due_at: Option<i64>,
        resolver_inputs: Option<Value>,
        event: NewEvent,
    ) -> Result<TransitionOutcome> {
        let task_id = task_id.to_string();
        self.write(move |c| {
            let task = load_task(c, &task_id)?.ok_or_else(|| StoreError::NotFound { what: format!("task {task_id}") })?;
            if task.state == TaskState::Running && matches!(to, TaskState::Paused | TaskState::Cancelled) {
                // A cancel asked before is not replaced by a pause.
                c.prepare_cached(
                    "UPDATE tasks SET stop_actor = CASE WHEN stop_to = 'CANCELLED' THEN stop_actor ELSE ?3 END, \
                     stop_to = CASE WHEN stop_to = 'CANCELLED' THEN stop_to ELSE ?2 END WHERE id = ?1",
                )?
                .execute(params![task_id, to.as_str(), event.actor])?;
                signal(Signal::Stops);
                return Ok(TransitionOutcome::Running);
            }
            if !allowed_from.contains(&task.state) {
                return Err(taskhook_model::TransitionError { from: task.state, to }.into());
            }
            task.state.check_transition(to)?;
            let now = now_ms();
            c.prepare_cached(
                "UPDATE tasks SET state = ?2, due_at = ?3, resolver_inputs = COALESCE(?4, resolver_inputs), \
                 stop_to = NULL, stop_actor = NULL, crashes = 0, blocked_reason = NULL, updated_at = ?5 WHERE id = ?1",
            )?
            .execute(params![task_id, to.as_str(), due_at, resolver_inputs.as_ref().map(json), now])?;
            let mut event = event.clone();
            event.from_state = Some(task.state.as_str().to_string());
            event.to_state = Some(to.as_str().to_string());
            insert_event(c, &task_id, now, &event)?;
            if to == TaskState::Ready {
                signal(Signal::Due);
            }
            if to.is_final() {
                wake_parent_if_ended(c, &task_id, to, now)?;
            }
            Ok(TransitionOutcome::Applied(task.state, to))
        })
        .await
    }

    pub async fn put_steps(
        &self,
        task_id: &str,
        seen_updated_at: i64,
        allowed: &'static [TaskState],
        edit: crate::StepEdit,
        event: NewEvent,
    ) -> Result<()> {
        let task_id = task_id.to_string();
        self.write(move |c| {
            let task = load_task(c, &task_id)?.ok_or_else(|| StoreError::NotFound {
                what: format!("task {task_id}"),
            })?;
            crate::check_step_edit(&task.state, task.updated_at, seen_updated_at, allowed)?;
            let now = now_ms().max(task.updated_at + 1);
            let mut delete =
                c.prepare_cached("DELETE FROM steps WHERE task_id = ?1 AND name = ?2")?;
            for name in &edit.delete {
                delete.execute(params![task_id, name])?;
            }
            upsert_steps(c, &task_id, &edit.put, now)?;
            c.prepare_cached("UPDATE tasks SET updated_at = ?2 WHERE id = ?1")?
                .execute(params![task_id, now])?;
            insert_event(c, &task_id, now, &event)
        })
        .await
    }

    pub async fn edit_task(
        &self,
        task_id: &str,
        seen_updated_at: i64,
        allowed: &'static [TaskState],
        edit: crate::TaskEdit,
        event: NewEvent,
    ) -> Result<()> {
        let task_id = task_id.to_string();
        self.write(move |c| {
            let task = load_task(c, &task_id)?.ok_or_else(|| StoreError::NotFound {
                what: format!("task {task_id}"),
            })?;
            crate::check_task_edit(&task.state, task.updated_at, seen_updated_at, allowed)?;
            let now = now_ms().max(task.updated_at + 1);
            c.prepare_cached(
                "UPDATE tasks SET title = ?2, inputs = ?3, tags = ?4, people = ?5, updated_at = ?6 WHERE id = ?1",
            )?
            .execute(params![
                task_id,
                edit.title,
                json(&edit.inputs),
                json(&edit.tags),
                edit.people.to_json(),
                now
            ])?;
            insert_event(c, &task_id, now, &event)
        })
        .await
    }

    pub async fn extend_run_max(&self, task_id: &str, more: u32, event: NewEvent) -> Result<()> {
        let task_id = task_id.to_string();
        self.write(move |c| {
            let task = load_task(c, &task_id)?.ok_or_else(|| StoreError::NotFound {
                what: format!("task {task_id}"),
            })?;
            crate::check_extend(&task)?;
            let now = now_ms().max(task.updated_at + 1);
            c.prepare_cached(
                "UPDATE tasks SET run_max = run_max + ?2, updated_at = ?3 WHERE id = ?1",
            )?
            .execute(params![task_id, more, now])?;
            insert_event(c, &task_id, now, &event)
        })
        .await
    }

    /// After a restart: tasks left RUNNING by a process that is gone become READY now.
    /// The engine then sorts out their RUNNING steps (re-run if idempotent, else block).
    /// One process owns the file, so every RUNNING task is an orphan at start.
    pub async fn recover_running(&self, detail: Value) -> Result<usize> {
        self.write(move |c| {
            let now = now_ms();
            let ids = c
                .prepare_cached("SELECT id FROM tasks WHERE state = 'RUNNING'")?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for id in &ids {
                c.prepare_cached(
                    "UPDATE tasks SET state = 'READY', due_at = ?2, lease_owner = NULL, lease_until = NULL, updated_at = ?2, \
                     crashes = crashes + 1 WHERE id = ?1",
                )?
                .execute(params![id, now])?;
                insert_event(
                    c,
                    id,
                    now,
                    &NewEvent::transition("engine", "recovered", TaskState::Running, TaskState::Ready, detail.clone()),
                )?;
            }
            if !ids.is_empty() {
                signal(Signal::Due);
            }
            Ok(ids.len())
        })
        .await
    }

    /// RUNNING tasks whose lease ran out before `now`, with the epoch they were claimed at.
    pub async fn expired_leases(&self, now: i64) -> Result<Vec<(String, i64)>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, lease_epoch FROM tasks WHERE state = 'RUNNING' AND lease_until IS NOT NULL AND lease_until < ?1",
            )?;
            let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Makes READY the given RUNNING tasks that are still held at the given epoch (a task
    /// claimed again since is left alone), with `detail` in each audit entry; `crashed` counts
    /// one more crash for each. Returns how many moved.
    pub async fn release_orphans(
        &self,
        tasks: Vec<(String, i64)>,
        detail: Value,
        crashed: bool,
    ) -> Result<usize> {
        self.write(move |c| {
            let now = now_ms();
            let mut moved = 0;
            for (id, epoch) in &tasks {
                let n = c
                    .prepare_cached(
                        "UPDATE tasks SET state = 'READY', due_at = ?3, lease_owner = NULL, lease_until = NULL, updated_at = ?3, \
                         crashes = crashes + ?4 WHERE id = ?1 AND state = 'RUNNING' AND lease_epoch = ?2",
                    )?
                    .execute(params![id, epoch, now, i64::from(crashed)])?;
                if n > 0 {
                    moved += 1;
                    let ev = NewEvent::transition("engine", "recovered", TaskState::Running, TaskState::Ready, detail.clone());
                    insert_event(c, id, now, &ev)?;
                }
            }
            if moved > 0 {
                signal(Signal::Due);
            }
            Ok(moved)
        })
        .await
    }

    /// Extends to `until` the leases `owner` holds on the given `(task, epoch)`s, and the
    /// resource slots those runs hold. Returns the ids whose lease is lost.
    pub async fn renew_leases(
        &self,
        owner: &str,
        held: Vec<(String, i64)>,
        until: i64,
    ) -> Result<Vec<String>> {
        let owner = owner.to_string();
        self.write(move |c| {
            let mut lost = Vec::new();
            for (id, epoch) in &held {
                let n = c
                    .prepare_cached(
                        "UPDATE tasks SET lease_until = ?4 \
                         WHERE id = ?1 AND state = 'RUNNING' AND lease_epoch = ?2 AND lease_owner = ?3",
                    )?
                    .execute(params![id, epoch, owner, until])?;
                if n == 0 {
                    lost.push(id.clone());
                    continue;
                }
                c.prepare_cached("UPDATE resource_slots SET until = ?3 WHERE task_id = ?1 AND epoch = ?2")?
                    .execute(params![id, epoch, until])?;
            }
            Ok(lost)
        })
        .await
    }

    /// Takes one of `limit` slots of a named resource for a step of a task held at `epoch`.
    pub async fn acquire_slot(
        &self,
        resource: &str,
        limit: usize,
        task_id: &str,
        step: &str,
        epoch: i64,
        until: i64,
    ) -> Result<bool> {
        let (resource, task_id, step) =
            (resource.to_string(), task_id.to_string(), step.to_string());
        self.write(move |c| {
            check_lease(c, &task_id, epoch)?;
            c.prepare_cached(
                "DELETE FROM resource_slots WHERE resource = ?1 AND (until < ?2 OR NOT EXISTS \
                 (SELECT 1 FROM tasks t WHERE t.id = resource_slots.task_id AND t.state = 'RUNNING' AND t.lease_epoch = resource_slots.epoch))",
            )?
            .execute(params![resource, now_ms()])?;
            let refreshed = c
                .prepare_cached(
                    "UPDATE resource_slots SET epoch = ?4, until = ?5 WHERE resource = ?1 AND task_id = ?2 AND step = ?3",
                )?
                .execute(params![resource, task_id, step, epoch, until])?;
            if refreshed > 0 {
                return Ok(true);
            }
            let taken: i64 = c
                .prepare_cached("SELECT COUNT(*) FROM resource_slots WHERE resource = ?1")?
                .query_row([&resource], |r| r.get(0))?;
            if taken as u64 >= limit as u64 {
                return Ok(false);
            }
            c.prepare_cached(
                "INSERT INTO resource_slots (resource, task_id, step, epoch, until) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![resource, task_id, step, epoch, until])?;
            Ok(true)
        })
        .await
    }

    /// Gives a resource slot back.
    pub async fn release_slot(&self, resource: &str, task_id: &str, step: &str) -> Result<()> {
        let (resource, task_id, step) =
            (resource.to_string(), task_id.to_string(), step.to_string());
        self.write(move |c| {
            c.prepare_cached(
                "DELETE FROM resource_slots WHERE resource = ?1 AND task_id = ?2 AND step = ?3",
            )?
            .execute(params![resource, task_id, step])?;
            signal(Signal::Slots);
            Ok(())
        })
        .await
    }

    /// Stops recorded for the given RUNNING tasks: `(task id, PAUSED or CANCELLED, actor)`.
    pub async fn pending_stops(
        &self,
        ids: Vec<String>,
    ) -> Result<Vec<(String, TaskState, String)>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT stop_to, stop_actor FROM tasks WHERE id = ?1 AND state = 'RUNNING' AND stop_to IS NOT NULL",
            )?;
            let mut out = Vec::new();
            for id in ids {
                let found: Option<(String, Option<String>)> =
                    stmt.query_row([&id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
                if let Some((to, actor)) = found {
                    out.push((id, parse_state(to)?, actor.unwrap_or_default()));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Deletes finished (DONE, CANCELLED or WONTFIX) tasks last changed before `before`, with their
    /// steps and audit trail, at most `limit` at a time; returns how many went.
    pub async fn prune_tasks(&self, before: i64, limit: u32) -> Result<usize> {
        self.write(move |c| {
            let ids = c
                .prepare_cached(
                    "SELECT id FROM tasks WHERE state IN ('DONE', 'CANCELLED', 'WONTFIX') AND updated_at < ?1 LIMIT ?2",
                )?
                .query_map(params![before, limit], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for id in &ids {
                c.prepare_cached("DELETE FROM steps WHERE task_id = ?1")?.execute([id])?;
                c.prepare_cached("DELETE FROM task_events WHERE task_id = ?1")?.execute([id])?;
                c.prepare_cached("DELETE FROM task_comments WHERE task_id = ?1")?.execute([id])?;
                c.prepare_cached("DELETE FROM tasks WHERE id = ?1")?.execute([id])?;
            }
            Ok(ids.len())
        })
        .await
    }

    pub async fn delete_task(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.write(move |c| {
            let state: Option<String> = c
                .prepare_cached("SELECT state FROM tasks WHERE id = ?1")?
                .query_row([&id], |r| r.get(0))
                .optional()?;
            match state.as_deref() {
                None => Ok(false),
                Some("DONE" | "CANCELLED" | "WONTFIX") => {
                    c.prepare_cached("DELETE FROM steps WHERE task_id = ?1")?
                        .execute([&id])?;
                    c.prepare_cached("DELETE FROM task_events WHERE task_id = ?1")?
                        .execute([&id])?;
                    c.prepare_cached("DELETE FROM task_comments WHERE task_id = ?1")?
                        .execute([&id])?;
                    c.prepare_cached("DELETE FROM tasks WHERE id = ?1")?
                        .execute([&id])?;
                    Ok(true)
                }
                Some(other) => Err(StoreError::Conflict(format!(
                    "only a DONE, CANCELLED or WONTFIX task can be deleted; this one is {other}"
                ))),
            }
        })
        .await
    }

    /// How many tasks are in `state`.
    pub async fn count_tasks(&self, state: TaskState) -> Result<u64> {
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT COUNT(*) FROM tasks WHERE state = ?1")?
                    .query_row([state.as_str()], |r| r.get::<_, i64>(0))? as u64,
            )
        })
        .await
    }

    // ---- settings ----

    pub async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_string();
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT value FROM settings WHERE key = ?1")?
                    .query_row([key], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_string(), value.to_string());
        self.write(move |c| {
            c.prepare_cached("INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")?
                .execute(params![key, value])?;
            Ok(())
        })
        .await
    }
}

const HOOK_COLUMNS: &str =
    "hook_group, hook_id, body, trigger_token, last_scheduled_for, created_at, updated_at";

fn hook_from_row(r: &Row<'_>) -> rusqlite::Result<HookRow> {
    Ok(HookRow {
        group: r.get(0)?,
        id: r.get(1)?,
        body: parse_json(r.get(2)?)?,
        trigger_token: r.get(3)?,
        last_scheduled_for: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

fn load_hook(c: &Connection, group: &str, id: &str) -> Result<Option<HookRow>> {
    let sql = format!("SELECT {HOOK_COLUMNS} FROM hooks WHERE hook_group = ?1 AND hook_id = ?2");
    Ok(c.prepare_cached(&sql)?
        .query_row([group, id], hook_from_row)
        .optional()?)
}

const FIRE_COLUMNS: &str = "f.id, f.hook_group, f.hook_id, f.fired_by, f.received_at, f.scheduled_for, f.result, f.task_id, \
     f.error, f.delivery_id, f.payload, t.state, f.committed_at";

fn fire_from_row(r: &Row<'_>) -> rusqlite::Result<FireRow> {
    let payload: Option<String> = r.get(10)?;
    let state: Option<String> = r.get(11)?;
    Ok(FireRow {
        id: r.get(0)?,
        hook_group: r.get(1)?,
        hook_id: r.get(2)?,
        fired_by: r.get(3)?,
        received_at: r.get(4)?,
        scheduled_for: r.get(5)?,
        result: r.get(6)?,
        task_id: r.get(7)?,
        error: r.get(8)?,
        delivery_id: r.get(9)?,
        payload: payload.map(parse_json).transpose()?,
        task_state: state.map(parse_state).transpose()?,
        committed_at: r.get(12)?,
    })
}

fn insert_fire(c: &Connection, fire: &NewFire) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO fires (id, hook_group, hook_id, fired_by, received_at, scheduled_for, result, task_id, error, delivery_id, payload, committed_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        fire.id,
        fire.hook_group,
        fire.hook_id,
        fire.fired_by,
        fire.received_at,
        fire.scheduled_for,
        fire.result,
        fire.task_id,
        fire.error,
        fire.delivery_id,
        fire.payload.as_ref().map(json),
        // The writer commits its batch right after running it.
        now_ms()
    ])?;
    Ok(())
}

/// Merges a cursor's patch into the stored cursor, when its owner holds the lease.
fn write_cursor(c: &Connection, group: &str, id: &str, cursor: &FireCursor) -> Result<()> {
    let n = c
        .prepare_cached(
            "UPDATE source_cursors SET cursor = json_patch(COALESCE(cursor, '{}'), ?4), updated_at = ?5 \
             WHERE hook_group = ?1 AND hook_id = ?2 AND source_key = ?3 AND owner = ?6",
        )?
        .execute(params![group, id, cursor.key, json(&cursor.patch), now_ms(), cursor.owner])?;
    if n == 0 {
        return Err(lease_taken(group, id, &cursor.key, &cursor.owner));
    }
    Ok(())
}

/// The refusal of a cursor write by an instance that does not hold the source's lease.
pub(crate) fn lease_taken(group: &str, id: &str, key: &str, owner: &str) -> StoreError {
    StoreError::Conflict(format!(
        "source {key} of hook {group}/{id} is not leased to {owner}: another instance polls it"
    ))
}

fn hook_has_queued_fire(c: &Connection, group: &str, id: &str) -> Result<bool> {
    Ok(c.prepare_cached("SELECT EXISTS (SELECT 1 FROM fires WHERE hook_group = ?1 AND hook_id = ?2 AND result = 'queued')")?
        .query_row([group, id], |r| r.get(0))?)
}

fn hook_has_unfinished_task(c: &Connection, group: &str, id: &str) -> Result<bool> {
    Ok(c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM fires f JOIN tasks t ON t.id = f.task_id \
         WHERE f.hook_group = ?1 AND f.hook_id = ?2 AND t.state NOT IN ('DONE', 'CANCELLED', 'WONTFIX'))",
    )?
    .query_row([group, id], |r| r.get(0))?)
}

/// The first fire of a delivery id within the dedupe window (a seek on `fires_delivery`).
///
/// Within one window there is at most one such fire (a repeat inside it is recorded as
/// `duplicate`, and a delivery is new again only once its first fire has left the window),
/// so the seek needs no `ORDER BY`. The lookup has neither `ORDER BY` nor a join: with
/// either, SQLite's planner marks the bound values as plan inputs and prepares the cached
/// statement again on every call, on the writer thread. The fire's row, with its task's
/// state, is read only when a repeat is found.
fn first_delivery(
    c: &Connection,
    group: &str,
    id: &str,
    delivery: &str,
    since: i64,
) -> Result<Option<FireRow>> {
    let found: Option<String> = c
        .prepare_cached(
            "SELECT id FROM fires WHERE hook_group = ?1 AND hook_id = ?2 AND delivery_id IS NOT NULL \
             AND delivery_id = ?3 AND received_at >= ?4 AND result NOT IN ('rejected', 'duplicate') LIMIT 1",
        )?
        .query_row(params![group, id, delivery, since], |r| r.get(0))
        .optional()?;
    match found {
        Some(fire_id) => fire_by_id(c, &fire_id),
        None => Ok(None),
    }
}

/// A fire with its task's current state.
fn fire_by_id(c: &Connection, fire_id: &str) -> Result<Option<FireRow>> {
    let sql = format!(
        "SELECT {FIRE_COLUMNS} FROM fires f LEFT JOIN tasks t ON t.id = f.task_id WHERE f.id = ?1"
    );
    Ok(c.prepare_cached(&sql)?
        .query_row([fire_id], fire_from_row)
        .optional()?)
}

/// The task an idempotency key already created for this template, if any.
fn find_by_idempotency_key(c: &Connection, t: &NewTask) -> Result<Option<TaskRow>> {
    let Some(key) = &t.idempotency_key else {
        return Ok(None);
    };
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE template = ?1 AND idempotency_key IS NOT NULL AND idempotency_key = ?2"
    );
    Ok(c.prepare_cached(&sql)?
        .query_row(params![t.template, key], task_from_row)
        .optional()?)
}

/// Inserts a task, its steps and its first audit entries (and claims it when asked).
fn insert_task(c: &Connection, t: &NewTask, event: &NewEvent) -> Result<TaskRow> {
    let now = now_ms();
    // A task claimed at creation is inserted RUNNING under its first lease: one row write,
    // with both transitions in the audit trail.
    let claimed = match &t.claim {
        Some(claim) => {
            t.state.check_transition(TaskState::Running)?;
            Some(claim)
        }
        None => None,
    };
    let state = if claimed.is_some() {
        TaskState::Running
    } else {
        t.state
    };
    let due_at = if claimed.is_some() { None } else { t.due_at };
    let lease_epoch = i64::from(claimed.is_some());
    let run_count = u32::from(claimed.is_some());
    c.prepare_cached(
        "INSERT INTO tasks (id, template, template_version, title, state, inputs, tags, requester, parent_id, \
         idempotency_key, run_count, run_max, due_at, lease_owner, lease_epoch, lease_until, created_at, updated_at, people) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?17, ?18)",
    )?
    .execute(params![
        t.id,
        t.template,
        t.template_version,
        t.title,
        state.as_str(),
        json(&t.inputs),
        json(&t.tags),
        t.requester,
        t.parent_id,
        t.idempotency_key,
        run_count,
        t.run_max,
        due_at,
        claimed.map(|c| &c.owner),
        lease_epoch,
        claimed.map(|c| c.until),
        now,
        t.people.to_json(),
    ])?;
    let steps: Vec<StepRow> = t.steps.iter().map(StepRow::new).collect();
    upsert_steps(c, &t.id, &steps, now)?;
    if state == TaskState::Ready {
        signal(Signal::Due);
    }
    insert_event(c, &t.id, now, event)?;
    if let Some(claim) = claimed {
        insert_event(
            c,
            &t.id,
            now,
            &NewEvent::transition(
                "engine",
                "claimed",
                t.state,
                TaskState::Running,
                claim.detail.clone(),
            ),
        )?;
    }
    Ok(TaskRow {
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
        run_count,
        run_max: t.run_max,
        due_at,
        lease_epoch,
        created_at: now,
        updated_at: now,
        people: t.people.clone(),
        crashes: 0,
    })
}

/// When a child task reaches a final state and its parent is WAITING, the parent becomes due now.
fn wake_parent_if_ended(
    c: &Connection,
    task_id: &str,
    state: TaskState,
    now: i64,
) -> Result<Option<String>> {
    if !state.is_final() {
        return Ok(None);
    }
    let parent: Option<String> = c
        .prepare_cached("SELECT parent_id FROM tasks WHERE id = ?1")?
        .query_row([task_id], |r| r.get(0))
        .optional()?
        .flatten();
    let Some(parent) = parent else {
        return Ok(None);
    };
    let woke = c
        .prepare_cached("UPDATE tasks SET due_at = ?2, updated_at = ?2 WHERE id = ?1 AND state IN ('WAITING', 'RUNNING')")?
        .execute(params![parent, now])?;
    if woke > 0 {
        signal(Signal::Due);
    }
    Ok((woke > 0).then_some(parent))
}

#[cfg(test)]
mod writer_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn put(c: &Connection, key: &str) -> Result<()> {
        c.execute("INSERT INTO settings (key, value) VALUES (?1, 'v')", [key])?;
        Ok(())
    }

    fn has(c: &Connection, key: &str) -> bool {
        c.query_row("SELECT 1 FROM settings WHERE key = ?1", [key], |_| Ok(()))
            .optional()
            .unwrap()
            .is_some()
    }

    /// Writes queued together share a transaction that first runs without savepoints. A
    /// write that fails after changing something sends the batch round again with a
    /// savepoint per write: its own change is undone, its neighbours' stay, and each caller
    /// gets the answer of its write's last run.
    #[tokio::test]
    async fn a_write_failing_halfway_is_undone_alone_in_its_batch() {
        let dir = std::env::temp_dir().join(format!("taskhook-writer-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = SqliteStore::open(dir.join("db")).unwrap();
        // Hold the writer (alone in its batch) so the next writes queue and are taken as one.
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let hold = tokio::spawn({
            let s = s.clone();
            async move {
                s.write(move |_| {
                    let _ = started_tx.send(());
                    let _ = held_rx.recv_timeout(std::time::Duration::from_secs(5));
                    Ok(())
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let good = |key: &'static str| {
            let (s, runs) = (s.clone(), runs.clone());
            tokio::spawn(async move {
                s.write(move |c| {
                    put(c, key)?;
                    Ok(runs.fetch_add(1, Ordering::SeqCst))
                })
                .await
            })
        };
        let (a, b) = (good("a"), good("b"));
        let bad = tokio::spawn({
            let s = s.clone();
            async move {
                s.write(|c| {
                    put(c, "half")?;
                    Err::<(), _>(StoreError::Conflict("fails after a change".into()))
                })
                .await
            }
        });
        // Let the three queue behind the held writer, then let it go.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        held_tx.send(()).unwrap();
        hold.await.unwrap().unwrap();
        let (a, b, bad) = (a.await.unwrap(), b.await.unwrap(), bad.await.unwrap());
        assert!(matches!(bad, Err(StoreError::Conflict(_))), "{bad:?}");
        // Both good writes ran twice (the optimistic pass, then the savepoint pass); each
        // answer is its second run's.
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a >= 2 && b >= 2, "answers come from the last run: {a} {b}");
        let (ha, hb, hh) = s
            .read(|c| Ok((has(c, "a"), has(c, "b"), has(c, "half"))))
            .await
            .unwrap();
        assert!(ha && hb, "neighbours of a failed write are kept");
        assert!(!hh, "the failed write's own change is undone");
        s.close();
        let _ = std::fs::remove_dir_all(dir);
    }
}
