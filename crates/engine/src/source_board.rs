//! What each source subscription of this process reports (connected, last error, counts,
//! lag), for `GET /api/v1/hooks/{group}/{id}/status`. Subscriptions write their own entry;
//! the API reads a copy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use taskhook_store::now_ms;

/// One subscription's state, as the status route shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct SourceStatus {
    /// The position in the hook's `sources`.
    pub index: usize,
    /// `redis`, `amqp`, `kafka`, `nats`, `mqtt`, `git`.
    pub kind: String,
    /// What it subscribes to.
    pub subscription: String,
    /// The instance running it.
    pub instance: String,
    pub connected: bool,
    /// When `connected` last changed (ms since the epoch).
    pub since: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<i64>,
    /// Messages received since the subscription started.
    pub received: u64,
    /// Messages whose fire was committed (then acknowledged).
    pub fired: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_delivery_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message_at: Option<i64>,
    /// Messages the broker holds for this subscription that it has not delivered yet, when
    /// the broker tells.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// For a source polled by one instance at a time (`git`): true while another instance
    /// holds its lease and this one waits to take over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby: Option<bool>,
    /// The instance holding the lease, when it is not this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_holder: Option<String>,
}

type Key = (String, String);
/// A hook's entries, by position in its `sources`.
type Entries = BTreeMap<usize, Arc<Mutex<SourceStatus>>>;

/// Every running subscription's [`SourceStatus`], by hook.
#[derive(Default)]
pub struct SourceBoard {
    entries: Mutex<BTreeMap<Key, Entries>>,
}

/// A subscription's own entry on the board; removed when dropped.
pub struct StatusHandle {
    entry: Arc<Mutex<SourceStatus>>,
    remove: Box<dyn Fn() + Send + Sync>,
}

impl StatusHandle {
    /// Changes the entry.
    pub fn update(&self, f: impl FnOnce(&mut SourceStatus)) {
        f(&mut self.entry.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn connected(&self) {
        self.update(|s| {
            if !s.connected {
                s.connected = true;
                s.since = now_ms();
            }
        });
    }

    /// Records an error; `disconnected` when the connection is gone with it.
    pub fn error(&self, error: &str, disconnected: bool) {
        self.update(|s| {
            s.last_error = Some(error.to_string());
            s.last_error_at = Some(now_ms());
            if disconnected && s.connected {
                s.connected = false;
                s.since = now_ms();
            }
        });
    }

    pub fn snapshot(&self) -> SourceStatus {
        self.entry.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for StatusHandle {
    fn drop(&mut self) {
        // Only the handle that put the entry there removes it (a restarted subscription may
        // already have replaced it).
        (self.remove)();
    }
}

impl SourceBoard {
    /// Puts a fresh entry for source `index` of hook `group/id`, replacing any previous one.
    pub fn register(self: &Arc<Self>, group: &str, id: &str, status: SourceStatus) -> StatusHandle {
        let index = status.index;
        let entry = Arc::new(Mutex::new(SourceStatus {
            since: now_ms(),
            ..status
        }));
        let key = (group.to_string(), id.to_string());
        self.lock()
            .entry(key.clone())
            .or_default()
            .insert(index, entry.clone());
        let board = Arc::downgrade(self);
        let mine = Arc::downgrade(&entry);
        StatusHandle {
            entry,
            remove: Box::new(move || {
                let Some(board) = board.upgrade() else {
                    return;
                };
                let mut entries = board.lock();
                if let Some(hook) = entries.get_mut(&key) {
                    if hook
                        .get(&index)
                        .is_some_and(|e| std::ptr::eq(Arc::as_ptr(e), mine.as_ptr()))
                    {
                        hook.remove(&index);
                    }
                    if hook.is_empty() {
                        entries.remove(&key);
                    }
                }
            }),
        }
    }

    /// The statuses of a hook's running subscriptions, by position.
    pub fn of(&self, group: &str, id: &str) -> Vec<SourceStatus> {
        self.lock()
            .get(&(group.to_string(), id.to_string()))
            .map(|m| {
                m.values()
                    .map(|e| e.lock().unwrap_or_else(|e| e.into_inner()).clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Entries>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_as_long_as_its_handle() {
        let board = Arc::new(SourceBoard::default());
        let h = board.register(
            "g",
            "h",
            SourceStatus {
                index: 0,
                kind: "redis".into(),
                ..Default::default()
            },
        );
        h.connected();
        h.update(|s| s.received += 2);
        let seen = board.of("g", "h");
        assert_eq!(seen.len(), 1);
        assert!(seen[0].connected);
        assert_eq!(seen[0].received, 2);
        h.error("gone", true);
        assert!(!board.of("g", "h")[0].connected);
        // A restarted subscription replaces the entry; the old handle's drop leaves it.
        let newer = board.register(
            "g",
            "h",
            SourceStatus {
                index: 0,
                ..Default::default()
            },
        );
        drop(h);
        assert_eq!(board.of("g", "h").len(), 1);
        drop(newer);
        assert!(board.of("g", "h").is_empty());
    }
}
