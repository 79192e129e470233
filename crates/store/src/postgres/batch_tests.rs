//! Group commit on PostgreSQL: many concurrent writes share transactions, and one failing
//! write fails alone.

use std::collections::HashSet;

use serde_json::{Value, json};
use taskhook_model::TaskState;

use crate::testing::TestDb;
use crate::types::*;
use crate::{Store, StoreError};

fn task(id: &str, key: Option<&str>) -> NewTask {
    NewTask {
        id: id.into(),
        template: "t".into(),
        template_version: 1,
        title: "title".into(),
        state: TaskState::Ready,
        inputs: json!({}),
        tags: json!({}),
        requester: "admin".into(),
        parent_id: None,
        idempotency_key: key.map(String::from),
        run_max: 1,
        due_at: Some(i64::MAX),
        steps: vec!["a".into()],
        people: Default::default(),
        claim: None,
    }
}

fn created() -> NewEvent {
    NewEvent {
        actor: "admin".into(),
        kind: "created".into(),
        from_state: None,
        to_state: Some("READY".into()),
        detail: Value::Null,
    }
}

async fn count(store: &Store) -> u64 {
    store.count_tasks(TaskState::Ready).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_write_fails_alone_and_keyed_writes_see_each_other() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = db.open_with_pool(4).await;
    store
        .create_task(task("taken", None), created())
        .await
        .unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..400 {
        let store = store.clone();
        set.spawn(async move {
            // Every 40th repeats an existing id (a unique violation that aborts its batch's
            // transaction); every 10th shares one of five idempotency keys.
            let (id, key) = if i % 40 == 0 {
                ("taken".to_string(), None)
            } else if i % 10 == 0 {
                (format!("k{i}"), Some(format!("key-{}", i % 50)))
            } else {
                (format!("t{i}"), None)
            };
            let r = store
                .create_task(task(&id, key.as_deref()), created())
                .await;
            (i, id, key, r)
        });
    }
    let mut by_key: std::collections::HashMap<String, HashSet<String>> = Default::default();
    let mut created_new = 0;
    while let Some(r) = set.join_next().await {
        let (i, id, key, r) = r.unwrap();
        match (id.as_str(), r) {
            ("taken", Err(StoreError::Database(_))) => {}
            ("taken", other) => panic!("write {i} repeating an id: {other:?}"),
            (_, Ok((row, new))) => {
                if new {
                    created_new += 1;
                }
                if let Some(k) = key {
                    by_key.entry(k).or_default().insert(row.id);
                } else {
                    assert_eq!(row.id, id);
                    assert!(new);
                }
            }
            (_, Err(e)) => panic!("write {i} failed: {e}"),
        }
    }
    // 10 ids repeated, 30 keyed writes on 5 keys, 360 plain ones.
    assert_eq!(by_key.len(), 5);
    for (key, ids) in &by_key {
        assert_eq!(ids.len(), 1, "key {key} gave tasks {ids:?}");
    }
    assert_eq!(created_new, 360 + 5);
    assert_eq!(count(&store).await, 1 + 360 + 5);
}

fn scheduled_fire(id: &str, hook: &str, due: i64) -> NewFire {
    NewFire {
        id: id.into(),
        hook_group: "locked".into(),
        hook_id: hook.into(),
        fired_by: "schedule".into(),
        received_at: crate::now_ms(),
        scheduled_for: Some(due),
        result: "created".into(),
        task_id: None,
        error: None,
        delivery_id: None,
        payload: None,
        cursor: None,
    }
}

/// A connection of its own to the test database, standing for another instance.
async fn other_connection(url: &str) -> tokio_postgres::Client {
    let (client, connection) = url
        .parse::<tokio_postgres::Config>()
        .unwrap()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Regression: a hook lock held by another connection (an instance frozen mid-write) held up
/// every batch writer, so task creations and other hooks' fires waited as long as the lock.
/// Now the locked fire is queued again while the rest of its batch commits at once, and the
/// fire's `committed_at` is its commit, not its write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hook_locked_elsewhere_holds_up_only_its_own_fire() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (url, _) = db.postgres_schema().unwrap();
    let store = db.open_with_pool(4).await;
    for hook in ["stuck", "free"] {
        store
            .put_hook("locked", hook, json!({"template": "t"}), "tok")
            .await
            .unwrap();
    }
    // Another connection takes the hook's lock and keeps its transaction open.
    let mut holder = other_connection(url).await;
    let held = holder.transaction().await.unwrap();
    held.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&super::super::hook_lock_key("locked", "stuck")],
    )
    .await
    .unwrap();

    // One locked fire per writer and more (two writers on a pool of four): before, each held
    // a writer for as long as the lock was held.
    let mut stuck = Vec::new();
    for due in [1_000, 2_000, 3_000] {
        let store = store.clone();
        stuck.push(tokio::spawn(async move {
            store
                .record_fire(
                    scheduled_fire(&format!("f-stuck-{due}"), "stuck", due),
                    None,
                    None,
                    None,
                )
                .await
        }));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Everything else goes through the writers as if nothing were locked.
    let started = std::time::Instant::now();
    let mut others = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = store.clone();
        others.spawn(async move {
            if i % 2 == 0 {
                store
                    .create_task(task(&format!("t{i}"), None), created())
                    .await
                    .map(|_| ())
            } else {
                store
                    .record_fire(
                        scheduled_fire(&format!("f{i}"), "free", i),
                        None,
                        None,
                        None,
                    )
                    .await
                    .map(|_| ())
            }
        });
    }
    while let Some(r) = others.join_next().await {
        r.unwrap().unwrap();
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "other writes waited {:?} for a lock they do not need",
        started.elapsed()
    );
    assert!(
        stuck.iter().all(|f| !f.is_finished()),
        "a locked fire did not wait for its lock"
    );

    let released_at = crate::now_ms();
    held.commit().await.unwrap();
    for f in stuck {
        match f.await.unwrap().unwrap() {
            FireOutcome::Recorded(..) => {}
            other => panic!("a locked fire was not recorded: {other:?}"),
        }
    }
    let fires = store.list_fires("locked", "stuck", None, 10).await.unwrap();
    assert_eq!(fires.len(), 3);
    for f in &fires {
        let committed = f.committed_at.expect("a scheduled fire has committed_at");
        assert!(
            committed >= released_at - 20,
            "committed_at {committed} is before the lock was released ({released_at})"
        );
    }
    // The first was written 300 ms and more before its commit: `received_at` does not show it,
    // `committed_at` does.
    let first = fires
        .iter()
        .find(|f| f.scheduled_for == Some(1_000))
        .unwrap();
    assert!(
        first.committed_at.unwrap() - first.received_at >= 250,
        "{first:?}"
    );
    let lateness = store.schedule_lateness(0).await.unwrap();
    let first = fires
        .iter()
        .find(|f| f.scheduled_for == Some(1_000))
        .unwrap();
    assert!(
        lateness.contains(&(1_000, first.committed_at.unwrap())),
        "{lateness:?}"
    );
}

/// A lock held by another connection is waited for at most `lock_timeout`; the write then fails
/// as `Unavailable`, which callers retry, instead of waiting as long as the holder lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_another_connections_lock_is_bounded_and_retryable() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (url, schema) = db.postgres_schema().unwrap();
    let store = db.open().await;
    let mut holder = other_connection(url).await;
    let name = format!("bounded-{schema}");
    let held = holder.transaction().await.unwrap();
    held.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("taskhook-template:{name}")],
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let err = store
        .put_template(&name, json!({"name": name, "steps": {}}))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let waited = started.elapsed();
    assert!(
        waited >= super::super::LOCK_TIMEOUT - std::time::Duration::from_millis(100)
            && waited < super::super::LOCK_TIMEOUT * 2,
        "waited {waited:?}"
    );
    held.rollback().await.unwrap();
}
