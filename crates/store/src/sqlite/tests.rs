use super::*;
use serde_json::json;

fn temp_store() -> (SqliteStore, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("taskhook-store-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    (SqliteStore::open(dir.join("db.sqlite")).unwrap(), dir)
}

fn new_task(id: &str, key: Option<&str>) -> NewTask {
    NewTask {
        id: id.into(),
        template: "t".into(),
        template_version: 1,
        title: "title".into(),
        state: TaskState::Ready,
        inputs: json!({"a": 1}),
        tags: json!({}),
        requester: "admin".into(),
        parent_id: None,
        idempotency_key: key.map(String::from),
        run_max: 100,
        due_at: Some(0),
        steps: vec!["a".into(), "b".into()],
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

#[tokio::test]
async fn create_claim_and_end_a_task() {
    let (s, _dir) = temp_store();
    let (row, fresh) = s
        .create_task(new_task("t1", Some("k")), created())
        .await
        .unwrap();
    assert!(fresh);
    assert_eq!(row.state, TaskState::Ready);
    let (again, fresh) = s
        .create_task(new_task("t2", Some("k")), created())
        .await
        .unwrap();
    assert!(!fresh);
    assert_eq!(again.id, "t1");

    let claimed = s.claim_due("me", now_ms(), 10, 30_000).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!(c.task.state, TaskState::Running);
    assert_eq!(c.task.lease_epoch, 1);
    assert_eq!(c.steps.len(), 2);
    assert!(
        s.claim_due("me", now_ms(), 10, 30_000)
            .await
            .unwrap()
            .is_empty()
    );

    let mut step = c.steps[0].clone();
    step.state = StepState::Done;
    step.output = json!({"x": 1});
    // A stale epoch cannot write.
    let stale = s.save_steps("t1", 0, vec![step.clone()]).await.unwrap_err();
    assert!(matches!(stale, StoreError::LeaseLost { .. }));
    s.save_steps("t1", 1, vec![step]).await.unwrap();
    let end = RunEnd {
        state: TaskState::Done,
        due_at: None,
        result: Some(json!({"ok": true})),
        event: NewEvent::transition(
            "engine",
            "ended",
            TaskState::Running,
            TaskState::Done,
            Value::Null,
        ),
    };
    s.end_run("t1", 1, vec![], end.clone()).await.unwrap();
    let (task, steps) = s.get_task("t1").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Done);
    assert_eq!(task.result, json!({"ok": true}));
    assert_eq!(steps[0].output, json!({"x": 1}));
    // Ending twice fails: the lease is gone.
    assert!(s.end_run("t1", 1, vec![], end).await.is_err());
    let events = s.task_events("t1").await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["created", "claimed", "ended"]);
}

#[tokio::test]
async fn illegal_transitions_are_refused_and_change_nothing() {
    let (s, _dir) = temp_store();
    s.create_task(new_task("t1", None), created())
        .await
        .unwrap();
    let ev = NewEvent {
        actor: "u".into(),
        kind: "resolve".into(),
        from_state: None,
        to_state: None,
        detail: Value::Null,
    };
    let err = s
        .transition(
            "t1",
            &[TaskState::Todo],
            TaskState::Ready,
            Some(0),
            None,
            ev.clone(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Transition(_)), "{err}");
    assert_eq!(s.task_events("t1").await.unwrap().len(), 1);
    let out = s
        .transition(
            "t1",
            &[TaskState::Ready],
            TaskState::Cancelled,
            None,
            None,
            ev,
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        TransitionOutcome::Applied(TaskState::Ready, TaskState::Cancelled)
    );
}

#[tokio::test]
async fn many_concurrent_writes_all_commit() {
    let (s, _dir) = temp_store();
    let mut handles = Vec::new();
    for i in 0..500 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            s.create_task(new_task(&format!("t{i:04}"), None), created())
                .await
        }));
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    let all = s
        .list_tasks(TaskFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 500);
    assert_eq!(all[0].id, "t0499");
}

#[tokio::test]
async fn a_failed_write_does_not_undo_its_neighbours() {
    let (s, _dir) = temp_store();
    let a = s.clone();
    let b = s.clone();
    let (ok, bad) = tokio::join!(
        a.create_task(new_task("good", None), created()),
        b.save_steps("missing", 1, vec![StepRow::new("x")]),
    );
    ok.unwrap();
    assert!(bad.is_err());
    assert!(s.get_task("good").await.unwrap().is_some());
}

#[tokio::test]
async fn recovery_makes_running_tasks_ready() {
    let (s, dir) = temp_store();
    s.create_task(new_task("t1", None), created())
        .await
        .unwrap();
    s.claim_due("me", now_ms(), 10, 30_000).await.unwrap();
    s.close();
    let s = SqliteStore::open(dir.join("db.sqlite")).unwrap();
    assert_eq!(s.recover_running().await.unwrap(), 1);
    let claimed = s.claim_due("me", now_ms(), 10, 30_000).await.unwrap();
    assert_eq!(claimed[0].task.lease_epoch, 2);
    assert_eq!(claimed[0].task.run_count, 2);
}

#[tokio::test]
async fn a_due_time_fires_once_even_when_two_schedulers_race() {
    let (s, _dir) = temp_store();
    s.put_hook("g", "h", json!({"template": "t"}), "tok")
        .await
        .unwrap();
    let fire = |id: &str| NewFire {
        id: id.into(),
        hook_group: "g".into(),
        hook_id: "h".into(),
        fired_by: "schedule".into(),
        received_at: now_ms(),
        scheduled_for: Some(60_000),
        result: "created".into(),
        task_id: None,
        error: None,
        delivery_id: None,
        payload: None,
    };
    let task = |id: &str| Some((new_task(id, None), created()));
    let (a, b) = tokio::join!(
        s.record_fire(fire("f1"), task("t1"), None, None),
        s.record_fire(fire("f2"), task("t2"), None, None)
    );
    let recorded = [a.unwrap(), b.unwrap()]
        .into_iter()
        .filter(|o| matches!(o, FireOutcome::Recorded(..)))
        .count();
    assert_eq!(recorded, 1, "one fire per due time");
    assert_eq!(
        s.list_tasks(TaskFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        1,
        "and one task"
    );
    assert_eq!(
        s.get_hook("g", "h")
            .await
            .unwrap()
            .unwrap()
            .last_scheduled_for,
        Some(60_000)
    );
    // Old fires go; tasks stay.
    assert_eq!(s.prune_fires(now_ms() + 1, 100).await.unwrap(), 1);
    assert!(s.list_fires("g", "h", None, 10).await.unwrap().is_empty());
    assert_eq!(
        s.list_tasks(TaskFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        1
    );
}

#[tokio::test]
async fn the_database_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let (s, dir) = temp_store();
    s.create_task(new_task("t1", None), created())
        .await
        .unwrap();
    for name in ["db.sqlite", "db.sqlite-wal", "db.sqlite-shm"] {
        let mode = std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
}

#[tokio::test]
async fn pruning_removes_only_old_finished_tasks_with_their_rows() {
    let (s, _dir) = temp_store();
    s.create_task(new_task("done", None), created())
        .await
        .unwrap();
    s.create_task(new_task("open", None), created())
        .await
        .unwrap();
    let ev = NewEvent {
        actor: "u".into(),
        kind: "cancel".into(),
        from_state: None,
        to_state: None,
        detail: Value::Null,
    };
    s.transition(
        "done",
        &[TaskState::Ready],
        TaskState::Cancelled,
        None,
        None,
        ev,
    )
    .await
    .unwrap();
    assert_eq!(
        s.prune_tasks(now_ms() - 60_000, 100).await.unwrap(),
        0,
        "too recent"
    );
    assert_eq!(s.prune_tasks(now_ms() + 1, 100).await.unwrap(), 1);
    assert!(s.get_task("done").await.unwrap().is_none());
    assert!(s.task_events("done").await.unwrap().is_empty());
    assert!(
        s.get_task("open").await.unwrap().is_some(),
        "unfinished tasks stay"
    );
}
