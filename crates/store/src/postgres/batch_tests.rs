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
