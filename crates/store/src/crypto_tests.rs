//! Sealing through the store on both backends: the canary, what backends hold, rotation.

use serde_json::{Value, json};
use taskhook_model::{StepState, TaskState};

use crate::crypto::{CellSwap, KeyRing, SEALED_TABLES};
use crate::testing::{TestDb, test_key_ring};
use crate::types::*;
use crate::{Store, StoreError};

crate::on_both_stores!(
    a_ring_that_cannot_open_the_canary_is_refused,
    backends_hold_only_sealed_values,
    rotation_reseals_everything_and_never_overwrites_a_newer_write,
);

const TEST_KEY: &str = "test:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// A handle with no ring installed.
async fn bare(db: &TestDb) -> Store {
    match db.postgres_schema() {
        None => Store::open(db.sqlite_path()).unwrap(),
        Some((url, schema)) => Store::postgres_with_pool(url, Some(schema), 2)
            .await
            .unwrap(),
    }
}

fn task(id: &str) -> NewTask {
    NewTask {
        id: id.into(),
        template: "t".into(),
        template_version: 1,
        title: format!("title of {id}"),
        state: TaskState::Ready,
        inputs: json!({"password": format!("pw-{id}")}),
        tags: json!({"who": "ada"}),
        requester: "admin".into(),
        parent_id: None,
        idempotency_key: None,
        run_max: 100,
        due_at: Some(0),
        steps: vec!["a".into()],
        people: Default::default(),
        claim: None,
    }
}

fn event(detail: Value) -> NewEvent {
    NewEvent {
        actor: "admin".into(),
        kind: "created".into(),
        from_state: None,
        to_state: Some("READY".into()),
        detail,
    }
}

async fn a_ring_that_cannot_open_the_canary_is_refused(db: TestDb) {
    let store = db.open().await; // writes the canary with key `test`
    store.close();
    let other = KeyRing::parse(&KeyRing::generate_entry(Some("other")).unwrap()).unwrap();
    let s = bare(&db).await;
    let err = s.install_keys(other).await.unwrap_err().to_string();
    assert!(
        err.contains("\"test\""),
        "names the key the database expects: {err}"
    );
    assert!(s.key_ring().is_none(), "nothing installed");
    let same_id = KeyRing::parse(&KeyRing::generate_entry(Some("test")).unwrap()).unwrap();
    let err = s.install_keys(same_id).await.unwrap_err().to_string();
    assert!(err.contains("does not open"), "{err}");
    let grown = KeyRing::parse(&format!(
        "{TEST_KEY}\n{}",
        KeyRing::generate_entry(Some("new")).unwrap()
    ))
    .unwrap();
    s.install_keys(grown).await.unwrap();
    assert_eq!(s.key_ring().unwrap().newest_id(), "new");
    s.close();
}

async fn backends_hold_only_sealed_values(db: TestDb) {
    let store = db.open().await;
    let (row, new) = store
        .create_task(task("t1"), event(json!({"why": "pw-t1"})))
        .await
        .unwrap();
    assert!(new);
    assert_eq!(
        row.title, "title of t1",
        "the caller gets its plaintext back"
    );
    assert_eq!(row.inputs["password"], "pw-t1");
    let claimed = store
        .claim_due("me", crate::now_ms(), 10, 60_000)
        .await
        .unwrap();
    assert_eq!(claimed[0].task.inputs["password"], "pw-t1");
    let mut step = StepRow::new("a");
    step.state = StepState::Done;
    step.output = json!({"echo": "pw-t1"});
    step.error = Some("pw-t1 failed once".into());
    store
        .end_run(
            "t1",
            claimed[0].task.lease_epoch,
            vec![step],
            RunEnd {
                blocked_reason: None,
                state: TaskState::Done,
                due_at: None,
                result: Some(json!({"final": "pw-t1"})),
                event: NewEvent::transition(
                    "engine",
                    "done",
                    TaskState::Running,
                    TaskState::Done,
                    json!({"x": "pw-t1"}),
                ),
            },
        )
        .await
        .unwrap();
    let (t, steps) = store.get_task("t1").await.unwrap().unwrap();
    assert_eq!(t.result["final"], "pw-t1");
    assert_eq!(steps[0].output["echo"], "pw-t1");
    assert_eq!(steps[0].error.as_deref(), Some("pw-t1 failed once"));
    let events = store.task_events("t1").await.unwrap();
    assert!(events.iter().any(|e| e.detail["why"] == "pw-t1"));
    // what the backend holds, read without a ring
    let raw = bare(&db).await;
    let mut cells = 0;
    for table in SEALED_TABLES {
        for row in raw.sealed_page(table, None, 1000).await.unwrap() {
            for c in row.cells.into_iter().flatten() {
                assert!(
                    !c.contains("pw-t1") && !c.contains("title of"),
                    "{}: {c}",
                    table.name
                );
                cells += 1;
            }
        }
    }
    assert!(cells >= 8, "{cells}");
    let err = raw.get_task("t1").await.unwrap_err();
    assert!(
        matches!(err, StoreError::Database(ref m) if m.contains("no key ring")),
        "{err}"
    );
    // Entries the store writes on its own are sealed from their first write, and every
    // reader opens them: a claim in the creation write, a lease given back.
    let mut t2 = task("t2");
    t2.claim = Some(Claim::new("me", crate::now_ms() + 60_000));
    let (row, _) = store.create_task(t2, event(Value::Null)).await.unwrap();
    assert_eq!(row.state, TaskState::Running);
    let moved = store
        .release_orphans(vec![("t2".into(), row.lease_epoch)], "gone", true)
        .await
        .unwrap();
    assert_eq!(moved, 1);
    let status = store.key_status().await.unwrap();
    assert_eq!(status.under_old_keys, 0);
    assert_eq!(status.clear, 0, "{status:?}");
    assert!(status.sealed["test"] >= 8, "{status:?}");
    let audit = store
        .list_audit(crate::AuditFilter {
            kinds: vec![crate::AuditKind::Task],
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let detail = |task: &str, kind: &str| {
        audit
            .iter()
            .find(|e| e.target.as_deref() == Some(task) && e.action == kind)
            .map(|e| e.detail.clone())
            .unwrap_or_else(|| panic!("no {kind} entry for {task}: {audit:?}"))
    };
    assert_eq!(detail("t1", "claimed"), json!({"instance": "me"}));
    assert_eq!(detail("t2", "claimed"), json!({"instance": "me"}));
    assert_eq!(detail("t2", "recovered"), json!({"reason": "gone"}));
    assert_eq!(detail("t1", "created"), json!({"why": "pw-t1"}));
    raw.close();
    store.close();
}

async fn rotation_reseals_everything_and_never_overwrites_a_newer_write(db: TestDb) {
    let store = db.open().await;
    for i in 0..300 {
        store
            .create_task(task(&format!("t{i:03}")), event(json!({"n": i})))
            .await
            .unwrap();
    }
    store.close();
    let new_entry = KeyRing::generate_entry(Some("new")).unwrap();
    let s = bare(&db).await;
    s.install_keys(KeyRing::parse(&format!("{TEST_KEY}\n{new_entry}")).unwrap())
        .await
        .unwrap();
    assert_eq!(s.key_status().await.unwrap().under_old_keys, 300 * 4);

    // A stale swap (the cell was rewritten after it was read) changes nothing.
    let tasks = &SEALED_TABLES[0];
    let page = s.sealed_page(tasks, None, 1).await.unwrap();
    let old_inputs = page[0].cells[1].clone().unwrap();
    s.transition(
        "t000",
        &[TaskState::Ready],
        TaskState::Paused,
        None,
        Some(json!({"r": 1})),
        event(Value::Null),
    )
    .await
    .unwrap();
    let (stale, _) = s.get_task("t000").await.unwrap().unwrap();
    let done = s
        .swap_sealed(
            tasks,
            vec![
                CellSwap {
                    key: page[0].key.clone(),
                    column: 2, // resolver_inputs, rewritten by the transition
                    old: "{}".into(),
                    new: "\"stale\"".into(),
                },
                CellSwap {
                    key: page[0].key.clone(),
                    column: 1,
                    old: old_inputs.clone(),
                    new: old_inputs.clone(),
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(done, 1, "only the unchanged cell is swapped");
    assert_eq!(s.get_task("t000").await.unwrap().unwrap().0, stale);

    // Rotation while another writer keeps changing tasks.
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 1..300 {
                let id = format!("t{i:03}");
                s.transition(
                    &id,
                    &[TaskState::Ready],
                    TaskState::Paused,
                    None,
                    Some(json!({"by": id})),
                    event(json!({"i": i})),
                )
                .await
                .unwrap();
            }
            for i in 300..400 {
                s.create_task(task(&format!("t{i:03}")), event(Value::Null))
                    .await
                    .unwrap();
            }
        })
    };
    let report = s.rotate_keys().await.unwrap();
    writer.await.unwrap();
    assert_eq!(report.key_id, "new");
    assert!(report.resealed > 0);
    let report2 = s.rotate_keys().await.unwrap();
    let status = s.key_status().await.unwrap();
    assert_eq!(
        status.under_old_keys, 0,
        "{status:?} after {report:?} and {report2:?}"
    );
    assert_eq!(status.canary.as_deref(), Some("new"));
    s.close();

    // The old key can go.
    let only_new = bare(&db).await;
    only_new
        .install_keys(KeyRing::parse(&new_entry).unwrap())
        .await
        .unwrap();
    for i in 0..400 {
        let id = format!("t{i:03}");
        let (t, _) = only_new.get_task(&id).await.unwrap().unwrap();
        assert_eq!(t.inputs["password"], format!("pw-{id}"));
        assert_eq!(t.title, format!("title of {id}"));
        if i == 0 {
            assert_eq!(t.resolver_inputs["r"], 1);
        } else if i < 300 {
            assert_eq!(t.state, TaskState::Paused);
            assert_eq!(t.resolver_inputs["by"], id);
        }
        only_new.task_events(&id).await.unwrap();
    }
    only_new.close();
    let _ = test_key_ring();
}
