//! The store remembers: templates, tasks, their steps and their audit trail.
//!
//! It holds no business rules beyond refusing illegal task transitions and writes
//! made under a lease the writer no longer holds. SQLite is the embedded backend:
//! one writer thread groups concurrent writes into one transaction (group commit),
//! and a small pool of reader connections serves queries.

mod sqlite;
mod types;

pub use sqlite::SqliteStore as Store;
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
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// Transient failures worth retrying (busy database, closed pool during restart).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Database(_) | StoreError::Closed)
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
