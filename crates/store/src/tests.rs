//! Store tests, each run on SQLite and on PostgreSQL (`<test>::sqlite`, `<test>::postgres`;
//! the PostgreSQL variant is skipped with a message when the database is unreachable, see
//! [`crate::testing`]).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use taskhook_model::{StepState, TaskState};

use crate::testing::{Backend, TestDb};
use crate::*;

crate::on_both_stores!(
    create_claim_and_end_a_task,
    illegal_transitions_are_refused_and_change_nothing,
    many_concurrent_writes_all_commit,
    a_failed_write_does_not_undo_its_neighbours,
    recovery_makes_orphaned_running_tasks_ready,
    a_due_time_fires_once_even_when_two_schedulers_race,
    a_repeated_delivery_is_recorded_once_under_concurrency,
    a_repeated_delivery_without_overlap_policy_is_recorded_once,
    pruning_removes_only_old_finished_tasks_with_their_rows,
    concurrent_claimers_never_claim_the_same_task,
    a_stale_lease_epoch_writes_nothing,
    renewing_leases_reports_the_lost_ones,
    a_resource_limit_holds_across_handles,
    an_idempotency_key_creates_one_task_under_a_race,
    a_stop_asked_while_running_is_recorded_and_applied_at_the_end,
    writes_signal_other_handles,
    a_child_ending_wakes_its_parent,
    reopening_runs_no_migration_twice,
    a_queued_fire_waits_for_its_predecessor_or_ends_as_error,
    a_tasks_people_are_kept,
    crashes_are_counted_at_recovery_and_cleared_by_a_run_end_or_a_person,
    comments_are_sealed_kept_in_order_bounded_and_pruned_with_their_task,
    a_persons_step_edit_writes_and_deletes_rows_as_they_saw_the_task,
    a_persons_task_edit_replaces_its_inputs_tags_and_people_as_they_saw_it,
    a_child_closed_as_wontfix_wakes_its_parent,
    deleting_a_task_takes_its_rows_and_only_when_finished,
    a_second_owner_cannot_write_the_cursor_while_the_lease_is_held,
    cursor_and_fire_commit_together,
);

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

fn ended(to: TaskState) -> RunEnd {
    RunEnd {
        blocked_reason: None,
        state: to,
        due_at: None,
        result: Some(json!({"ok": true})),
        event: NewEvent::transition("engine", "ended", TaskState::Running, to, Value::Null),
    }
}

fn human(kind: &str) -> NewEvent {
    NewEvent {
        actor: "u".into(),
        kind: kind.into(),
        from_state: None,
        to_state: None,
        detail: Value::Null,
    }
}

/// Another handle on the same database: a second instance on PostgreSQL; on SQLite (one
/// process per file) the same handle.
async fn second_handle(db: &TestDb, first: &Store) -> Store {
    match db.backend() {
        Backend::Sqlite => first.clone(),
        Backend::Postgres => db.open().await,
    }
}

async fn kinds(s: &Store, id: &str) -> Vec<String> {
    s.task_events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

async fn create_claim_and_end_a_task(db: TestDb) {
    let s = db.open().await;
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
    assert_eq!(c.claimed_from, TaskState::Ready);
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
    let end = ended(TaskState::Done);
    s.end_run("t1", 1, vec![], end.clone()).await.unwrap();
    let (task, steps) = s.get_task("t1").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Done);
    assert_eq!(task.result, json!({"ok": true}));
    assert_eq!(steps[0].output, json!({"x": 1}));
    // Ending twice fails: the lease is gone.
    assert!(s.end_run("t1", 1, vec![], end).await.is_err());
    assert_eq!(kinds(&s, "t1").await, ["created", "claimed", "ended"]);
}

async fn illegal_transitions_are_refused_and_change_nothing(db: TestDb) {
    let s = db.open().await;
    s.create_task(new_task("t1", None), created())
        .await
        .unwrap();
    let err = s
        .transition(
            "t1",
            &[TaskState::Todo],
            TaskState::Ready,
            Some(0),
            None,
            human("resolve"),
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
            human("cancel"),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        TransitionOutcome::Applied(TaskState::Ready, TaskState::Cancelled)
    );
    // An illegal end of a run is refused too, and a lost lease is reported first.
    s.create_task(new_task("t2", None), created())
        .await
        .unwrap();
    s.claim_due("me", now_ms(), 10, 30_000).await.unwrap();
    let err = s
        .end_run("t2", 1, vec![], ended(TaskState::Todo))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Transition(_)), "{err}");
    let err = s
        .end_run("t2", 7, vec![], ended(TaskState::Todo))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    assert_eq!(kinds(&s, "t2").await, ["created", "claimed"]);
}

async fn many_concurrent_writes_all_commit(db: TestDb) {
    let s = db.open().await;
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
    // Keyset pages, newest first.
    let page = s
        .list_tasks(TaskFilter {
            blocked_reason: None,
            limit: 10,
            before: Some("t0100".into()),
            state: Some(TaskState::Ready),
            template: Some("t".into()),
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 10);
    assert_eq!(page[0].id, "t0099");
    assert_eq!(s.count_tasks(TaskState::Ready).await.unwrap(), 500);
}

async fn a_failed_write_does_not_undo_its_neighbours(db: TestDb) {
    let s = db.open().await;
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

/// SQLite: at start every RUNNING task is an orphan (one process owns the file). PostgreSQL:
/// only tasks whose lease expired are; live instances hold the others.
async fn recovery_makes_orphaned_running_tasks_ready(db: TestDb) {
    let s = db.open().await;
    s.create_task(new_task("live", None), created())
        .await
        .unwrap();
    s.claim_due("me", now_ms(), 1, 30_000).await.unwrap();
    s.create_task(new_task("dead", None), created())
        .await
        .unwrap();
    s.claim_due("gone", now_ms(), 1, -1_000).await.unwrap();
    s.close();
    drop(s);

    let s = db.open().await;
    let recovered = s.recover_running().await.unwrap();
    let claimed = s.claim_due("me", now_ms(), 10, 30_000).await.unwrap();
    let mut ids: Vec<&str> = claimed.iter().map(|c| c.task.id.as_str()).collect();
    ids.sort();
    match db.backend() {
        Backend::Sqlite => {
            assert_eq!(recovered, 2);
            assert_eq!(ids, ["dead", "live"]);
        }
        Backend::Postgres => {
            assert_eq!(recovered, 1);
            assert_eq!(ids, ["dead"]);
            let (live, _) = s.get_task("live").await.unwrap().unwrap();
            assert_eq!(live.state, TaskState::Running);
            assert_eq!(live.lease_epoch, 1);
        }
    }
    for c in &claimed {
        assert_eq!(c.task.lease_epoch, 2);
        assert_eq!(c.task.run_count, 2);
        assert_eq!(c.claimed_from, TaskState::Ready);
    }
    assert_eq!(
        kinds(&s, "dead").await,
        ["created", "claimed", "recovered", "claimed"]
    );
}

fn scheduled_fire(id: &str, due: i64) -> NewFire {
    NewFire {
        id: id.into(),
        hook_group: "g".into(),
        hook_id: "h".into(),
        fired_by: "schedule".into(),
        received_at: now_ms(),
        scheduled_for: Some(due),
        result: "created".into(),
        task_id: None,
        error: None,
        delivery_id: None,
        payload: None,
        cursor: None,
    }
}

async fn a_due_time_fires_once_even_when_two_schedulers_race(db: TestDb) {
    let s = db.open().await;
    let other = second_handle(&db, &s).await;
    s.put_hook("g", "h", json!({"template": "t"}), "tok")
        .await
        .unwrap();
    let task = |id: &str| Some((new_task(id, None), created()));
    let mut racers = Vec::new();
    for i in 0..8 {
        let st = if i % 2 == 0 { s.clone() } else { other.clone() };
        let (f, t) = (format!("f{i}"), format!("t{i}"));
        let task = task(&t);
        racers.push(tokio::spawn(async move {
            st.record_fire(scheduled_fire(&f, 60_000), task, None, None)
                .await
        }));
    }
    let mut recorded = Vec::new();
    let mut duplicates = Vec::new();
    for r in racers {
        match r.await.unwrap().unwrap() {
            FireOutcome::Recorded(f, t) => recorded.push((f, t.unwrap())),
            FireOutcome::Duplicate(f) => duplicates.push(f),
        }
    }
    assert_eq!(recorded.len(), 1, "one fire per due time");
    let (first, task) = &recorded[0];
    assert_eq!(first.task_id.as_deref(), Some(task.id.as_str()));
    assert_eq!(first.task_state, Some(TaskState::Ready));
    assert!(duplicates.iter().all(|d| d.id == first.id));
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
    // An earlier due time fired late does not move the schedule position back.
    s.record_fire(scheduled_fire("f-early", 30_000), None, None, None)
        .await
        .unwrap();
    assert_eq!(
        s.get_hook("g", "h")
            .await
            .unwrap()
            .unwrap()
            .last_scheduled_for,
        Some(60_000)
    );
    let lateness = s.schedule_lateness(0).await.unwrap();
    assert_eq!(lateness.len(), 2);
    // Old fires go; tasks stay.
    assert_eq!(s.prune_fires(now_ms() + 1, 100).await.unwrap(), 2);
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

async fn a_queued_fire_waits_for_its_predecessor_or_ends_as_error(db: TestDb) {
    let s = db.open().await;
    s.put_hook("g", "h", json!({"template": "t"}), "tok")
        .await
        .unwrap();
    for (i, due) in [1_000, 2_000, 3_000].into_iter().enumerate() {
        let task = Some((new_task(&format!("t{i}"), None), created()));
        s.record_fire(
            scheduled_fire(&format!("f{i}"), due),
            task,
            None,
            Some("queued"),
        )
        .await
        .unwrap();
    }
    let oldest = s.oldest_queued_fire("g", "h").await.unwrap().unwrap();
    assert_eq!(oldest.id, "f1");
    // t0 has not ended, so f1 waits.
    let started = s
        .start_queued_fire("f1", new_task("t1", None), created())
        .await
        .unwrap();
    assert!(started.is_none());
    assert!(
        s.fail_queued_fire("f1", "the hook refuses it")
            .await
            .unwrap()
    );
    assert!(!s.fail_queued_fire("f1", "twice").await.unwrap());
    assert!(
        s.start_queued_fire("f1", new_task("t1", None), created())
            .await
            .unwrap()
            .is_none(),
        "an ended fire starts nothing"
    );
    assert_eq!(
        s.oldest_queued_fire("g", "h").await.unwrap().unwrap().id,
        "f2"
    );
    let fires = s.list_fires("g", "h", None, 10).await.unwrap();
    let f1 = fires.iter().find(|f| f.id == "f1").unwrap();
    assert_eq!(f1.result, "error");
    assert_eq!(f1.error.as_deref(), Some("the hook refuses it"));
    assert!(f1.task_id.is_none());
}

async fn a_tasks_people_are_kept(db: TestDb) {
    let s = db.open().await;
    let mut t = new_task("p", None);
    t.people = TaskPeople {
        resolvers: vec!["ana".into()],
        watchers: vec!["bo".into(), "cy".into()],
    };
    let row = s.create_task(t.clone(), created()).await.unwrap().0;
    assert_eq!(row.people, t.people);
    let (read, _) = s.get_task("p").await.unwrap().unwrap();
    assert_eq!(read.people, t.people);
    assert!(read.people.is_resolver("ana") && !read.people.is_resolver("bo"));
    assert!(read.people.is_watcher("cy"));
    let listed = s
        .list_tasks(TaskFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed[0].people, t.people);
}

/// A lease recovered from a dead holder counts a crash; one given back at shutdown does not;
/// a run that ends, or a person moving the task, clears the count.
async fn crashes_are_counted_at_recovery_and_cleared_by_a_run_end_or_a_person(db: TestDb) {
    let s = db.open().await;
    s.create_task(new_task("c", None), created()).await.unwrap();
    let crashes = |s: Store| async move { s.get_task("c").await.unwrap().unwrap().0.crashes };
    let claim = |s: Store| async move {
        let c = s.claim_due("me", now_ms(), 10, 60_000).await.unwrap();
        assert_eq!(c.len(), 1);
        c[0].task.lease_epoch
    };
    for n in 1..=3 {
        let epoch = claim(s.clone()).await;
        let moved = s
            .release_orphans(vec![("c".into(), epoch)], "lease expired", true)
            .await
            .unwrap();
        assert_eq!(moved, 1);
        assert_eq!(crashes(s.clone()).await, n);
    }
    let epoch = claim(s.clone()).await;
    s.release_orphans(vec![("c".into(), epoch)], "shut down", false)
        .await
        .unwrap();
    assert_eq!(
        crashes(s.clone()).await,
        3,
        "a clean shutdown is not a crash"
    );
    let epoch = claim(s.clone()).await;
    let again = RunEnd {
        due_at: Some(0),
        ..ended(TaskState::Ready)
    };
    s.end_run("c", epoch, vec![], again).await.unwrap();
    assert_eq!(
        crashes(s.clone()).await,
        0,
        "a run that ended clears the count"
    );
    let epoch = claim(s.clone()).await;
    s.release_orphans(vec![("c".into(), epoch)], "lease expired", true)
        .await
        .unwrap();
    s.transition(
        "c",
        &[TaskState::Ready],
        TaskState::Paused,
        None,
        None,
        human("paused"),
    )
    .await
    .unwrap();
    assert_eq!(
        crashes(s.clone()).await,
        0,
        "a person moving the task clears it"
    );
}

/// Eight copies of delivery `delivery` to hook `g/<hook>`, recorded at once through two
/// handles with `overlap`; returns the one recorded and how many were duplicates.
async fn race_one_delivery(
    s: &Store,
    other: &Store,
    hook: &str,
    delivery: &str,
    overlap: Option<&'static str>,
) -> (Option<FireRow>, usize) {
    let mut racers = Vec::new();
    for i in 0..8 {
        let st = if i % 2 == 0 { s.clone() } else { other.clone() };
        let fire = NewFire {
            id: format!("{hook}-f{i}"),
            hook_group: "g".into(),
            hook_id: hook.into(),
            fired_by: "webhook".into(),
            received_at: now_ms(),
            scheduled_for: None,
            result: "created".into(),
            task_id: None,
            error: None,
            delivery_id: Some(delivery.into()),
            payload: Some(json!({"n": i})),
            cursor: None,
        };
        let task = new_task(&format!("{hook}-t{i}"), None);
        racers.push(tokio::spawn(async move {
            st.record_fire(fire, Some((task, created())), Some(0), overlap)
                .await
        }));
    }
    let mut first = None;
    let mut dups = 0;
    for r in racers {
        match r.await.unwrap().unwrap() {
            FireOutcome::Recorded(f, t) => {
                assert!(first.is_none(), "a second delivery was recorded");
                assert!(t.is_some());
                first = Some(f);
            }
            FireOutcome::Duplicate(_) => dups += 1,
        }
    }
    (first, dups)
}

/// Without an overlap policy a fire locks only its delivery id (PostgreSQL), not its hook:
/// repeats of one delivery still see each other.
async fn a_repeated_delivery_without_overlap_policy_is_recorded_once(db: TestDb) {
    let s = db.open().await;
    let other = second_handle(&db, &s).await;
    s.put_hook("g", "free", json!({"template": "t"}), "tok")
        .await
        .unwrap();
    let (first, dups) = race_one_delivery(&s, &other, "free", "d-9", None).await;
    assert!(first.is_some(), "one delivery recorded");
    assert_eq!(dups, 7);
    assert_eq!(s.count_tasks(TaskState::Ready).await.unwrap(), 1);
}

async fn a_repeated_delivery_is_recorded_once_under_concurrency(db: TestDb) {
    let s = db.open().await;
    let other = second_handle(&db, &s).await;
    s.put_hook("g", "h", json!({"template": "t"}), "tok")
        .await
        .unwrap();
    let (first, dups) = race_one_delivery(&s, &other, "h", "d-1", Some("skipped")).await;
    let first = first.expect("one delivery recorded");
    assert_eq!(dups, 7);
    let fires = s.list_fires("g", "h", None, 100).await.unwrap();
    assert_eq!(fires.len(), 8, "repeats are in the ledger too");
    for f in &fires {
        if f.id != first.id {
            assert_eq!(f.result, "duplicate");
            assert_eq!(f.task_id, first.task_id);
        }
    }
    assert_eq!(s.count_tasks(TaskState::Ready).await.unwrap(), 1);

    // Overlap: a new delivery while the first task is unfinished is skipped.
    let mut fire = scheduled_fire("f-next", 1);
    fire.scheduled_for = None;
    fire.delivery_id = Some("d-2".into());
    let out = other
        .record_fire(
            fire,
            Some((new_task("t-next", None), created())),
            Some(0),
            Some("skipped"),
        )
        .await
        .unwrap();
    match out {
        FireOutcome::Recorded(f, t) => {
            assert_eq!(f.result, "skipped");
            assert!(t.is_none());
        }
        other => panic!("{other:?}"),
    }
}

async fn pruning_removes_only_old_finished_tasks_with_their_rows(db: TestDb) {
    let s = db.open().await;
    s.create_task(new_task("done", None), created())
        .await
        .unwrap();
    s.create_task(new_task("open", None), created())
        .await
        .unwrap();
    s.transition(
        "done",
        &[TaskState::Ready],
        TaskState::Cancelled,
        None,
        None,
        human("cancel"),
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

async fn concurrent_claimers_never_claim_the_same_task(db: TestDb) {
    let s = db.open().await;
    let other = second_handle(&db, &s).await;
    const TASKS: usize = 300;
    let mut creates = Vec::new();
    for i in 0..TASKS {
        let s = s.clone();
        creates.push(tokio::spawn(async move {
            s.create_task(new_task(&format!("t{i:04}"), None), created())
                .await
        }));
    }
    for c in creates {
        c.await.unwrap().unwrap();
    }
    let mut claimers = Vec::new();
    for i in 0..8 {
        let st = if i % 2 == 0 { s.clone() } else { other.clone() };
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = st
                    .claim_due(&format!("claimer-{i}"), now_ms(), 7, 30_000)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return mine;
                }
                for c in batch {
                    assert_eq!(c.task.lease_epoch, 1);
                    assert_eq!(c.steps.len(), 2);
                    mine.push(c.task.id);
                }
            }
        }));
    }
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "a task was claimed twice");
    assert_eq!(all.len(), TASKS);
    assert_eq!(
        s.count_tasks(TaskState::Running).await.unwrap(),
        TASKS as u64
    );
    assert_eq!(kinds(&s, "t0007").await, ["created", "claimed"]);
}

async fn a_stale_lease_epoch_writes_nothing(db: TestDb) {
    let s = db.open().await;
    let other = second_handle(&db, &s).await;
    s.create_task(new_task("t1", None), created())
        .await
        .unwrap();
    // Claimed at epoch 1 by a run whose lease then expires.
    let first = s.claim_due("a", now_ms(), 10, -1).await.unwrap();
    assert_eq!(first[0].task.lease_epoch, 1);
    let expired = other.expired_leases(now_ms() + 1).await.unwrap();
    assert_eq!(expired, [("t1".to_string(), 1)]);
    assert_eq!(
        other
            .release_orphans(expired.clone(), "lease expired", true)
            .await
            .unwrap(),
        1
    );
    // Releasing again at the same epoch does nothing.
    assert_eq!(
        other.release_orphans(expired, "again", true).await.unwrap(),
        0
    );
    let second = other.claim_due("b", now_ms(), 10, 30_000).await.unwrap();
    assert_eq!(second[0].task.lease_epoch, 2);

    let mut step = StepRow::new("a");
    step.state = StepState::Done;
    step.output = json!("stale");
    let err = s.save_steps("t1", 1, vec![step.clone()]).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    let err = s
        .end_run("t1", 1, vec![step], ended(TaskState::Done))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    let (task, steps) = s.get_task("t1").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Running);
    assert_eq!(task.lease_epoch, 2);
    assert_eq!(task.result, Value::Null);
    assert!(
        steps.iter().all(|s| s.state == StepState::Todo),
        "{steps:?}"
    );
    assert_eq!(
        kinds(&s, "t1").await,
        ["created", "claimed", "recovered", "claimed"]
    );
    // The current holder writes.
    other
        .end_run("t1", 2, vec![], ended(TaskState::Done))
        .await
        .unwrap();
    assert_eq!(
        s.get_task("t1").await.unwrap().unwrap().0.state,
        TaskState::Done
    );
}

async fn renewing_leases_reports_the_lost_ones(db: TestDb) {
    let s = db.open().await;
    let other = second_handle(&db, &s).await;
    for id in ["t1", "t2"] {
        s.create_task(new_task(id, None), created()).await.unwrap();
    }
    let claimed = s.claim_due("a", now_ms(), 10, 1_000).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let far = now_ms() + 3_600_000;
    let lost = s
        .renew_leases(
            "a",
            vec![("t1".into(), 1), ("t2".into(), 1), ("nope".into(), 1)],
            far,
        )
        .await
        .unwrap();
    assert_eq!(lost, ["nope"]);
    assert!(
        s.expired_leases(now_ms() + 60_000)
            .await
            .unwrap()
            .is_empty(),
        "renewed leases run until {far}"
    );
    // Another owner cannot renew; a wrong epoch is lost.
    let lost = other
        .renew_leases("b", vec![("t1".into(), 1)], far)
        .await
        .unwrap();
    assert_eq!(lost, ["t1"]);
    let lost = s
        .renew_leases("a", vec![("t1".into(), 2)], far)
        .await
        .unwrap();
    assert_eq!(lost, ["t1"]);
    // t2 is taken over: its old holder's renewal reports it lost.
    other
        .release_orphans(vec![("t2".into(), 1)], "taken over", true)
        .await
        .unwrap();
    other.claim_due("b", now_ms(), 10, 30_000).await.unwrap();
    let lost = s
        .renew_leases("a", vec![("t1".into(), 1), ("t2".into(), 1)], far)
        .await
        .unwrap();
    assert_eq!(lost, ["t2"]);
    assert!(s.renew_leases("a", vec![], far).await.unwrap().is_empty());

    // Renewal extends the slots the run holds.
    let soon = now_ms() + 50;
    assert!(s.acquire_slot("db", 1, "t1", "a", 1, soon).await.unwrap());
    assert!(
        s.renew_leases("a", vec![("t1".into(), 1)], far)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !other
            .acquire_slot("db", 1, "t2", "a", 2, far)
            .await
            .unwrap(),
        "the renewed slot is still held"
    );
}

async fn a_resource_limit_holds_across_handles(db: TestDb) {
    let s = db.open().await;
    let other = second_handle(&db, &s).await;
    const TASKS: usize = 10;
    for i in 0..TASKS {
        s.create_task(new_task(&format!("t{i}"), None), created())
            .await
            .unwrap();
    }
    assert_eq!(
        s.claim_due("a", now_ms(), 100, 30_000).await.unwrap().len(),
        TASKS
    );
    let until = now_ms() + 60_000;
    for round in 0..3 {
        let mut racers = Vec::new();
        for i in 0..TASKS {
            let st = if i % 2 == 0 { s.clone() } else { other.clone() };
            racers.push(tokio::spawn(async move {
                let task = format!("t{i}");
                let got = st
                    .acquire_slot("db", 2, &task, "step", 1, until)
                    .await
                    .unwrap();
                (task, got)
            }));
        }
        let mut holders = Vec::new();
        for r in racers {
            let (task, got) = r.await.unwrap();
            if got {
                holders.push(task);
            }
        }
        assert_eq!(holders.len(), 2, "round {round}: {holders:?}");
        // A holder asking again keeps its slot.
        assert!(
            s.acquire_slot("db", 2, &holders[0], "step", 1, until)
                .await
                .unwrap()
        );
        for h in &holders {
            other.release_slot("db", h, "step").await.unwrap();
        }
    }
    // A fence: a task not held at that epoch takes no slot.
    let err = s
        .acquire_slot("db", 2, "t0", "step", 9, until)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    // A run's end gives its slots back.
    assert!(
        s.acquire_slot("db", 1, "t0", "step", 1, until)
            .await
            .unwrap()
    );
    assert!(
        !s.acquire_slot("db", 1, "t1", "step", 1, until)
            .await
            .unwrap()
    );
    s.end_run("t0", 1, vec![], ended(TaskState::Done))
        .await
        .unwrap();
    assert!(
        s.acquire_slot("db", 1, "t1", "step", 1, until)
            .await
            .unwrap()
    );
    // An expired slot frees itself.
    assert!(
        s.acquire_slot("mq", 1, "t2", "step", 1, now_ms() - 1)
            .await
            .unwrap()
    );
    assert!(
        other
            .acquire_slot("mq", 1, "t3", "step", 1, until)
            .await
            .unwrap()
    );
    // Other resources are counted apart.
    assert!(
        s.acquire_slot("cache", 1, "t4", "step", 1, until)
            .await
            .unwrap()
    );
    // A slot of a task no longer running (released orphan) is freed.
    s.release_orphans(vec![("t3".into(), 1)], "gone", true)
        .await
        .unwrap();
    assert!(
        s.acquire_slot("mq", 1, "t5", "step", 1, until)
            .await
            .unwrap()
    );
}

async fn an_idempotency_key_creates_one_task_under_a_race(db: TestDb) {
    let s = db.open().await;
    let other = second_handle(&db, &s).await;
    let mut racers = Vec::new();
    for i in 0..10 {
        let st = if i % 2 == 0 { s.clone() } else { other.clone() };
        racers.push(tokio::spawn(async move {
            st.create_task(new_task(&format!("t{i}"), Some("same")), created())
                .await
        }));
    }
    let mut ids = HashSet::new();
    let mut fresh = 0;
    for r in racers {
        let (row, new) = r.await.unwrap().unwrap();
        ids.insert(row.id);
        fresh += usize::from(new);
    }
    assert_eq!(fresh, 1);
    assert_eq!(ids.len(), 1, "every caller gets the first task");
    assert_eq!(s.count_tasks(TaskState::Ready).await.unwrap(), 1);
    // The same key on another template is another task.
    let mut t = new_task("other-template", Some("same"));
    t.template = "u".into();
    assert!(s.create_task(t, created()).await.unwrap().1);
}

async fn a_stop_asked_while_running_is_recorded_and_applied_at_the_end(db: TestDb) {
    let s = db.open().await;
    let other = second_handle(&db, &s).await;
    for id in ["t1", "t2"] {
        s.create_task(new_task(id, None), created()).await.unwrap();
    }
    s.claim_due("a", now_ms(), 10, 30_000).await.unwrap();
    let stops = s.signals().stops.notified();
    tokio::pin!(stops);
    stops.as_mut().enable();
    use TaskState::*;
    let pause = |id: &'static str| {
        let other = other.clone();
        async move {
            other
                .transition(
                    id,
                    &[Todo, Ready, Waiting, Blocked],
                    Paused,
                    None,
                    None,
                    human("paused"),
                )
                .await
                .unwrap()
        }
    };
    let cancel = |id: &'static str| {
        let other = other.clone();
        async move {
            other
                .transition(
                    id,
                    &[Todo, Ready, Waiting, Paused, Blocked],
                    Cancelled,
                    None,
                    None,
                    human("cancelled"),
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(pause("t1").await, TransitionOutcome::Running);
    tokio::time::timeout(Duration::from_secs(5), stops)
        .await
        .expect("the stop is signalled");
    assert_eq!(
        s.pending_stops(vec!["t1".into(), "t2".into()])
            .await
            .unwrap(),
        [("t1".to_string(), Paused, "u".to_string())]
    );
    assert_eq!(cancel("t1").await, TransitionOutcome::Running);
    // A pause does not replace a cancel.
    assert_eq!(pause("t1").await, TransitionOutcome::Running);
    assert_eq!(
        s.pending_stops(vec!["t1".into()]).await.unwrap(),
        [("t1".to_string(), Cancelled, "u".to_string())]
    );
    // The run ends READY without having seen the stop: the store applies it.
    let release = RunEnd {
        blocked_reason: None,
        state: Ready,
        due_at: Some(now_ms()),
        result: None,
        event: NewEvent::transition("engine", "released", Running, Ready, Value::Null),
    };
    s.end_run("t1", 1, vec![], release.clone()).await.unwrap();
    let (t1, _) = s.get_task("t1").await.unwrap().unwrap();
    assert_eq!(t1.state, Cancelled);
    assert_eq!(t1.due_at, None);
    let events = s.task_events("t1").await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.actor.as_str()),
        ("cancelled", "u")
    );
    assert_eq!(last.from_state.as_deref(), Some("READY"));
    assert_eq!(
        kinds(&s, "t1").await,
        ["created", "claimed", "released", "cancelled"]
    );
    assert!(s.pending_stops(vec!["t1".into()]).await.unwrap().is_empty());

    // A run that honoured the stop itself ends in its state; nothing more is applied.
    assert_eq!(pause("t2").await, TransitionOutcome::Running);
    let paused = RunEnd {
        blocked_reason: None,
        state: Paused,
        due_at: None,
        result: None,
        event: NewEvent::transition("u", "paused", Running, Paused, Value::Null),
    };
    s.end_run("t2", 1, vec![], paused).await.unwrap();
    assert_eq!(s.get_task("t2").await.unwrap().unwrap().0.state, Paused);
    assert_eq!(kinds(&s, "t2").await, ["created", "claimed", "paused"]);
    // Resumed, claimed again: the old request is gone.
    s.transition("t2", &[Paused], Ready, Some(0), None, human("resumed"))
        .await
        .unwrap();
    s.claim_due("a", now_ms(), 10, 30_000).await.unwrap();
    assert!(s.pending_stops(vec!["t2".into()]).await.unwrap().is_empty());
}

/// Wake-ups: on PostgreSQL a write through one handle reaches the signals of another (and
/// not those of a store in another schema); on SQLite the store fires them itself.
async fn writes_signal_other_handles(db: TestDb) {
    let s = db.open().await;
    let other = second_handle(&db, &s).await;
    // Anything stored before counts for nothing.
    let drain = |st: &Store| {
        use futures_util::FutureExt;
        let sig = st.signals();
        for n in [&sig.due, &sig.hooks, &sig.slots, &sig.stops] {
            let _ = n.notified().now_or_never();
        }
    };
    drain(&other);
    let stranger = match db.backend() {
        Backend::Postgres => {
            let elsewhere = TestDb::postgres().await.unwrap();
            let st = elsewhere.open().await;
            Some((elsewhere, st))
        }
        Backend::Sqlite => None,
    };
    let within = Duration::from_secs(5);

    let due = other.signals().due.notified();
    tokio::pin!(due);
    due.as_mut().enable();
    s.create_task(new_task("t1", None), created())
        .await
        .unwrap();
    tokio::time::timeout(within, due)
        .await
        .expect("a READY task signals due");

    let hooks = other.signals().hooks.notified();
    tokio::pin!(hooks);
    hooks.as_mut().enable();
    s.put_hook("g", "h", json!({}), "tok").await.unwrap();
    tokio::time::timeout(within, hooks)
        .await
        .expect("put_hook signals hooks");

    s.claim_due("a", now_ms(), 10, 30_000).await.unwrap();
    let slots = other.signals().slots.notified();
    tokio::pin!(slots);
    slots.as_mut().enable();
    s.acquire_slot("db", 1, "t1", "a", 1, now_ms() + 60_000)
        .await
        .unwrap();
    s.release_slot("db", "t1", "a").await.unwrap();
    tokio::time::timeout(within, slots)
        .await
        .expect("release_slot signals slots");

    let due = other.signals().due.notified();
    tokio::pin!(due);
    due.as_mut().enable();
    let retry = RunEnd {
        blocked_reason: None,
        state: TaskState::Ready,
        due_at: Some(now_ms() + 60_000),
        result: None,
        event: NewEvent::transition(
            "engine",
            "retry",
            TaskState::Running,
            TaskState::Ready,
            Value::Null,
        ),
    };
    s.end_run("t1", 1, vec![], retry).await.unwrap();
    tokio::time::timeout(within, due)
        .await
        .expect("a run ending READY with a due time signals due");

    if let Some((_keep, stranger)) = stranger {
        let sig = stranger.signals();
        for (what, n) in [
            ("due", &sig.due),
            ("hooks", &sig.hooks),
            ("slots", &sig.slots),
        ] {
            assert!(
                tokio::time::timeout(Duration::from_millis(300), n.notified())
                    .await
                    .is_err(),
                "a store in another schema was woken ({what})"
            );
        }
    }
}

async fn a_child_ending_wakes_its_parent(db: TestDb) {
    let s = db.open().await;
    s.create_task(new_task("parent", None), created())
        .await
        .unwrap();
    s.claim_due("a", now_ms(), 10, 30_000).await.unwrap();
    let mut child = new_task("child", None);
    child.parent_id = Some("parent".into());
    child.due_at = Some(now_ms() + 3_600_000);
    s.create_task(child, created()).await.unwrap();
    // The parent waits for its child (no due time of its own).
    let wait = RunEnd {
        blocked_reason: None,
        state: TaskState::Waiting,
        due_at: None,
        result: None,
        event: NewEvent::transition(
            "engine",
            "waiting",
            TaskState::Running,
            TaskState::Waiting,
            Value::Null,
        ),
    };
    s.end_run("parent", 1, vec![], wait).await.unwrap();
    assert_eq!(s.get_task("parent").await.unwrap().unwrap().0.due_at, None);
    // The child is cancelled: the parent becomes due now.
    s.transition(
        "child",
        &[TaskState::Ready],
        TaskState::Cancelled,
        None,
        None,
        human("cancelled"),
    )
    .await
    .unwrap();
    let (parent, _) = s.get_task("parent").await.unwrap().unwrap();
    assert!(parent.due_at.is_some_and(|d| d <= now_ms()));
    let claimed = s.claim_due("a", now_ms(), 10, 30_000).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].claimed_from, TaskState::Waiting);
    assert_eq!(claimed[0].task.lease_epoch, 2);

    // A second child ends DONE while the parent runs: end_run of the child names the parent,
    // and the parent's WAITING end keeps the due time the child set.
    let mut child = new_task("child2", None);
    child.parent_id = Some("parent".into());
    s.create_task(child, created()).await.unwrap();
    let c2 = s.claim_due("a", now_ms(), 10, 30_000).await.unwrap();
    assert_eq!(c2[0].task.id, "child2");
    let woke = s
        .end_run("child2", 1, vec![], ended(TaskState::Done))
        .await
        .unwrap();
    assert_eq!(woke.as_deref(), Some("parent"));
    let later = now_ms() + 3_600_000;
    let wait = RunEnd {
        blocked_reason: None,
        state: TaskState::Waiting,
        due_at: Some(later),
        result: None,
        event: NewEvent::transition(
            "engine",
            "waiting",
            TaskState::Running,
            TaskState::Waiting,
            Value::Null,
        ),
    };
    s.end_run("parent", 2, vec![], wait).await.unwrap();
    let (parent, _) = s.get_task("parent").await.unwrap().unwrap();
    assert!(parent.due_at.is_some_and(|d| d < later), "{parent:?}");
    assert_eq!(s.next_due_at().await.unwrap(), parent.due_at);
}

async fn reopening_runs_no_migration_twice(db: TestDb) {
    // Several instances starting at once on a fresh database migrate it once.
    let (a, b, c) = tokio::join!(db.open(), db.open(), db.open());
    a.put_template("x", json!({"v": 1})).await.unwrap();
    let (row, new) = b.put_template("x", json!({"v": 1})).await.unwrap();
    assert!(!new);
    assert_eq!(row.version, 1);
    let (row, new) = c.put_template("x", json!({"v": 2})).await.unwrap();
    assert!(!new);
    assert_eq!(row.version, 2);
    assert_eq!(
        a.get_template_version("x", 1).await.unwrap().unwrap().body,
        json!({"v": 1})
    );
    assert_eq!(a.list_templates().await.unwrap().len(), 1);
    assert!(a.delete_template("x").await.unwrap());
    assert!(a.get_template("x").await.unwrap().is_none());
    assert!(a.put_function("f", json!({"name": "f"})).await.unwrap());
    assert!(
        !b.put_function("f", json!({"name": "f", "v": 2}))
            .await
            .unwrap()
    );
    assert_eq!(c.list_functions().await.unwrap().len(), 1);
    a.set_setting("k", "v1").await.unwrap();
    b.set_setting("k", "v2").await.unwrap();
    assert_eq!(c.get_setting("k").await.unwrap().as_deref(), Some("v2"));
    for s in [a, b, c] {
        s.close();
    }
    let d = db.open().await;
    assert_eq!(d.get_setting("k").await.unwrap().as_deref(), Some("v2"));
}

/// Terminates the backends of connections named `application_name` (as an administrator or
/// a server restart would); returns how many.
async fn terminate(application_name: &str) -> i64 {
    let url = crate::testing::database_url();
    let config: tokio_postgres::Config = url.parse().unwrap();
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .get(0)
}

/// The listener reconnects when its connection is killed and then wakes every waiter (what
/// was notified meanwhile is lost); pool connections killed under a call fail it with a
/// retryable `Unavailable`, and the next call gets a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_survives_killed_connections() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (url, schema) = db.postgres_schema().unwrap();
    let app = format!("th-{schema}");
    let sep = if url.contains('?') { '&' } else { '?' };
    let s = Store::postgres(&format!("{url}{sep}application_name={app}"), Some(schema))
        .await
        .unwrap();
    s.create_task(new_task("t1", None), created())
        .await
        .unwrap();
    // Whatever the write above signalled is consumed first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        use futures_util::FutureExt;
        let sig = s.signals();
        for n in [&sig.due, &sig.hooks, &sig.slots, &sig.stops] {
            let _ = n.notified().now_or_never();
        }
    }
    let sig = s.signals();
    let (due, hooks, slots, stops) = (
        sig.due.notified(),
        sig.hooks.notified(),
        sig.slots.notified(),
        sig.stops.notified(),
    );
    assert_eq!(terminate(&format!("{app}-listener")).await, 1);
    let all = async { tokio::join!(due, hooks, slots, stops) };
    tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .expect("every signal fires after the listener reconnects");
    // It listens again: another instance's write reaches it.
    let other = db.open().await;
    let due = s.signals().due.notified();
    tokio::pin!(due);
    due.as_mut().enable();
    other
        .create_task(new_task("t2", None), created())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), due)
        .await
        .expect("notifications arrive after the reconnect");

    // The pool's connections die; calls fail retryably, then work again.
    assert!(terminate(&app).await >= 1);
    let mut ok = false;
    for _ in 0..5 {
        match s.get_task("t1").await {
            Ok(t) => {
                assert!(t.is_some());
                ok = true;
                break;
            }
            Err(e) => {
                assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
                assert!(e.is_retryable());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(ok, "the store never recovered its connections");
    s.close();
    assert!(matches!(
        s.get_task("t1").await.unwrap_err(),
        StoreError::Closed
    ));
}

#[tokio::test]
async fn the_sqlite_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::sqlite();
    let s = db.open().await;
    s.create_task(new_task("t1", None), created())
        .await
        .unwrap();
    let path = db.sqlite_path();
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
}

#[tokio::test]
async fn an_unreachable_postgres_is_unavailable_and_retryable() {
    // Nothing listens on port 1.
    let err = Store::postgres("postgres://postgres@127.0.0.1:1/test", None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn database_urls_choose_the_backend() {
    let db = TestDb::sqlite();
    let url = format!("sqlite:{}", db.sqlite_path().display());
    let s = Store::connect(&url).await.unwrap();
    assert!(!s.is_shared());
    assert!(matches!(
        Store::connect("mysql://x").await.unwrap_err(),
        StoreError::Database(_)
    ));
    if let Some(url) = crate::testing::fresh_schema_url().await {
        let s = Store::connect(&url).await.unwrap();
        assert!(s.is_shared());
        s.put_template("x", json!({})).await.unwrap();
        let schema = match &s {
            Store::Postgres(p) => p.schema_label().to_string(),
            Store::Sqlite(_) => unreachable!(),
        };
        assert!(schema.starts_with("t_"), "{schema}");
        s.close();
        let base = crate::testing::database_url();
        Store::drop_postgres_schema(&base, &schema).await.unwrap();
    }
}

async fn comments_are_sealed_kept_in_order_bounded_and_pruned_with_their_task(db: TestDb) {
    let s = db.open().await;
    s.create_task(new_task("t", None), created()).await.unwrap();
    let first = s.add_comment("t", "ann", "first").await.unwrap();
    assert_eq!(
        (first.author.as_str(), first.content.as_str()),
        ("ann", "first")
    );
    for i in 1..crate::MAX_COMMENTS_PER_TASK {
        s.add_comment("t", "bob", &format!("note {i}"))
            .await
            .unwrap();
    }
    let Err(StoreError::Conflict(_)) = s.add_comment("t", "bob", "one too many").await else {
        panic!("more comments than a task keeps were accepted")
    };
    let comments = s.comments("t").await.unwrap();
    assert_eq!(comments.len() as i64, crate::MAX_COMMENTS_PER_TASK);
    assert_eq!(comments[0], first);
    assert_eq!(comments[1].content, "note 1");
    let Err(StoreError::NotFound { .. }) = s.add_comment("nope", "ann", "x").await else {
        panic!("a comment on no task was accepted")
    };
    // Sealed from the first write: no value of the store is in clear.
    assert_eq!(s.key_status().await.unwrap().clear, 0);
    s.transition(
        "t",
        &[TaskState::Ready],
        TaskState::Cancelled,
        None,
        None,
        human("cancel"),
    )
    .await
    .unwrap();
    assert_eq!(s.prune_tasks(now_ms() + 1, 100).await.unwrap(), 1);
    assert!(s.comments("t").await.unwrap().is_empty());
}

async fn a_persons_step_edit_writes_and_deletes_rows_as_they_saw_the_task(db: TestDb) {
    let s = db.open().await;
    s.create_task(new_task("t", None), created()).await.unwrap();
    s.claim_due("a", now_ms(), 10, 30_000).await.unwrap();
    let mut a = StepRow::new("a");
    a.state = StepState::Done;
    a.output = json!({"secret": "kept sealed"});
    let mut children = vec![a];
    for i in 0..3 {
        let mut c = StepRow::new(format!("b-{i}"));
        c.foreach_parent = Some("b".into());
        c.item = Some(json!(i));
        children.push(c);
    }
    let mut end = ended(TaskState::Blocked);
    end.blocked_reason = Some("failed_steps");
    s.end_run("t", 1, children, end).await.unwrap();
    let (task, _) = s.get_task("t").await.unwrap().unwrap();
    let edit = StepEdit {
        put: vec![StepRow::new("b")],
        delete: vec!["b-1".into(), "b-2".into()],
    };
    // Seen before a change: refused, nothing written.
    let stale = s
        .put_steps(
            "t",
            task.updated_at - 1,
            &[TaskState::Blocked],
            edit.clone(),
            human("rerun"),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    let names = |steps: &[StepRow]| steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&s.get_task("t").await.unwrap().unwrap().1),
        ["a", "b", "b-0", "b-1", "b-2"]
    );
    // Not in an allowed state: refused.
    let wrong = s
        .put_steps(
            "t",
            task.updated_at,
            &[TaskState::Paused],
            edit.clone(),
            human("rerun"),
        )
        .await;
    assert!(matches!(wrong, Err(StoreError::Conflict(_))), "{wrong:?}");
    s.put_steps(
        "t",
        task.updated_at,
        &[TaskState::Blocked],
        edit,
        human("rerun"),
    )
    .await
    .unwrap();
    let (after, steps) = s.get_task("t").await.unwrap().unwrap();
    assert_eq!(names(&steps), ["a", "b", "b-0"]);
    assert_eq!(steps[0].output, json!({"secret": "kept sealed"}));
    assert!(after.updated_at > task.updated_at);
    assert_eq!(
        kinds(&s, "t").await.last().map(String::as_str),
        Some("rerun")
    );
}

async fn a_persons_task_edit_replaces_its_inputs_tags_and_people_as_they_saw_it(db: TestDb) {
    let s = db.open().await;
    let mut todo = new_task("t", None);
    todo.state = TaskState::Todo;
    todo.due_at = None;
    s.create_task(todo, created()).await.unwrap();
    let (task, _) = s.get_task("t").await.unwrap().unwrap();
    let edit = TaskEdit {
        title: "new title".into(),
        inputs: json!({"a": 2}),
        tags: json!({"k": "v"}),
        people: TaskPeople {
            resolvers: vec![],
            watchers: vec!["wendy".into()],
        },
    };
    let todo_only: &[TaskState] = &[TaskState::Todo];
    // Seen before a change, or in a state it may not be edited in: refused, nothing written.
    let stale = s
        .edit_task(
            "t",
            task.updated_at - 1,
            todo_only,
            edit.clone(),
            human("edited"),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    let wrong = s
        .edit_task(
            "t",
            task.updated_at,
            &[TaskState::Paused],
            edit.clone(),
            human("edited"),
        )
        .await;
    assert!(matches!(wrong, Err(StoreError::Conflict(_))), "{wrong:?}");
    assert_eq!(s.get_task("t").await.unwrap().unwrap().0, task);
    let missing = s
        .edit_task("nope", 0, todo_only, edit.clone(), human("edited"))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
    s.edit_task("t", task.updated_at, todo_only, edit, human("edited"))
        .await
        .unwrap();
    let (after, _) = s.get_task("t").await.unwrap().unwrap();
    assert_eq!(after.title, "new title");
    assert_eq!(after.inputs, json!({"a": 2}));
    assert_eq!(after.tags, json!({"k": "v"}));
    assert_eq!(after.people.watchers, ["wendy"]);
    assert_eq!(after.state, TaskState::Todo);
    assert!(after.updated_at > task.updated_at);
    assert_eq!(
        kinds(&s, "t").await.last().map(String::as_str),
        Some("edited")
    );
}

async fn a_child_closed_as_wontfix_wakes_its_parent(db: TestDb) {
    let s = db.open().await;
    s.create_task(new_task("parent", None), created())
        .await
        .unwrap();
    s.claim_due("a", now_ms(), 10, 30_000).await.unwrap();
    let mut child = new_task("child", None);
    child.parent_id = Some("parent".into());
    child.state = TaskState::Todo;
    child.due_at = None;
    s.create_task(child, created()).await.unwrap();
    let wait = RunEnd {
        blocked_reason: None,
        state: TaskState::Waiting,
        due_at: None,
        result: None,
        event: NewEvent::transition(
            "engine",
            "waiting",
            TaskState::Running,
            TaskState::Waiting,
            Value::Null,
        ),
    };
    s.end_run("parent", 1, vec![], wait).await.unwrap();
    s.transition(
        "child",
        &[TaskState::Todo],
        TaskState::Wontfix,
        None,
        None,
        human("wontfix"),
    )
    .await
    .unwrap();
    let (parent, _) = s.get_task("parent").await.unwrap().unwrap();
    assert!(parent.due_at.is_some_and(|d| d <= now_ms()), "{parent:?}");
    // Final: nothing moves it on.
    let again = s
        .transition(
            "child",
            &[TaskState::Wontfix],
            TaskState::Ready,
            None,
            None,
            human("retried"),
        )
        .await;
    assert!(again.is_err());
}

async fn deleting_a_task_takes_its_rows_and_only_when_finished(db: TestDb) {
    let s = db.open().await;
    s.create_task(new_task("done", None), created())
        .await
        .unwrap();
    s.create_task(new_task("open", None), created())
        .await
        .unwrap();
    s.add_comment("done", "alice", "bye").await.unwrap();
    let refused = s.delete_task("done").await;
    assert!(
        matches!(&refused, Err(StoreError::Conflict(m)) if m.contains("READY")),
        "{refused:?}"
    );
    assert!(s.get_task("done").await.unwrap().is_some());
    s.transition(
        "done",
        &[TaskState::Ready],
        TaskState::Cancelled,
        None,
        None,
        human("cancel"),
    )
    .await
    .unwrap();
    assert!(s.delete_task("done").await.unwrap());
    assert!(s.get_task("done").await.unwrap().is_none());
    assert!(s.task_events("done").await.unwrap().is_empty());
    assert!(s.comments("done").await.unwrap().is_empty());
    assert!(!s.delete_task("done").await.unwrap(), "already gone");
    assert!(s.get_task("open").await.unwrap().is_some());
}

fn cursor_fire(id: &str, delivery: &str, owner: &str, patch: Value) -> NewFire {
    NewFire {
        id: id.into(),
        hook_group: "g".into(),
        hook_id: "h".into(),
        fired_by: "git".into(),
        received_at: now_ms(),
        scheduled_for: None,
        result: "created".into(),
        task_id: None,
        error: None,
        delivery_id: Some(delivery.into()),
        payload: Some(json!({"d": delivery})),
        cursor: Some(FireCursor {
            key: "git:k".into(),
            owner: owner.into(),
            patch,
        }),
    }
}

fn cursor_patch(owner: &str, patch: Value) -> FireCursor {
    FireCursor {
        key: "git:k".into(),
        owner: owner.into(),
        patch,
    }
}

async fn a_second_owner_cannot_write_the_cursor_while_the_lease_is_held(db: TestDb) {
    let s = db.open().await;
    let other = second_handle(&db, &s).await;
    // No hook, no lease.
    assert!(matches!(
        s.lease_source("g", "h", "git:k", "a", 60_000).await,
        Err(StoreError::NotFound { .. })
    ));
    s.put_hook("g", "h", json!({"template": "t"}), "tok")
        .await
        .unwrap();
    assert_eq!(
        s.lease_source("g", "h", "git:k", "a", 60_000)
            .await
            .unwrap(),
        SourceLease::Held(None)
    );
    // Held by a: b is told who holds it, and can write nothing.
    match other
        .lease_source("g", "h", "git:k", "b", 60_000)
        .await
        .unwrap()
    {
        SourceLease::Elsewhere { owner, until } => {
            assert_eq!(owner, "a");
            assert!(until > now_ms());
        }
        held => panic!("b took a held lease: {held:?}"),
    }
    let refused = other
        .set_source_cursor("g", "h", cursor_patch("b", json!({"main": "b1"})))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    let refused = other
        .record_fire(
            cursor_fire("f-b", "d-b", "b", json!({"main": "b2"})),
            Some((new_task("t-b", None), created())),
            Some(0),
            None,
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    assert!(s.list_fires("g", "h", None, 10).await.unwrap().is_empty());
    assert_eq!(s.count_tasks(TaskState::Ready).await.unwrap(), 0);
    // a renews and writes.
    assert_eq!(
        s.lease_source("g", "h", "git:k", "a", 60_000)
            .await
            .unwrap(),
        SourceLease::Held(None)
    );
    s.set_source_cursor("g", "h", cursor_patch("a", json!({"main": "a1"})))
        .await
        .unwrap();
    // Released (or run out), the lease goes to b with the cursor a committed; then a's
    // writes are refused.
    s.release_source("g", "h", "git:k", "a").await.unwrap();
    assert_eq!(
        other.lease_source("g", "h", "git:k", "b", 1).await.unwrap(),
        SourceLease::Held(Some(json!({"main": "a1"})))
    );
    let refused = s
        .record_fire(
            cursor_fire("f-a", "d-a", "a", json!({"main": "a2"})),
            None,
            Some(0),
            None,
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    // b's lease ran out: a takes it back.
    assert_eq!(
        s.lease_source("g", "h", "git:k", "a", 60_000)
            .await
            .unwrap(),
        SourceLease::Held(Some(json!({"main": "a1"})))
    );
    // Deleting the hook deletes its cursors.
    assert!(s.delete_hook("g", "h").await.unwrap());
    s.put_hook("g", "h", json!({"template": "t"}), "tok")
        .await
        .unwrap();
    assert_eq!(
        other
            .lease_source("g", "h", "git:k", "b", 60_000)
            .await
            .unwrap(),
        SourceLease::Held(None)
    );
}

async fn cursor_and_fire_commit_together(db: TestDb) {
    let s = db.open().await;
    let other = second_handle(&db, &s).await;
    s.put_hook("g", "h", json!({"template": "t"}), "tok")
        .await
        .unwrap();
    s.lease_source("g", "h", "git:k", "a", 60_000)
        .await
        .unwrap();
    s.set_source_cursor(
        "g",
        "h",
        cursor_patch("a", json!({"main": "s0", "gone": "s0"})),
    )
    .await
    .unwrap();
    let out = s
        .record_fire(
            cursor_fire("f1", "d1", "a", json!({"main": "s1", "gone": null})),
            Some((new_task("t1", None), created())),
            Some(0),
            None,
        )
        .await
        .unwrap();
    assert!(matches!(out, FireOutcome::Recorded(_, Some(_))));
    let cursor = |s: Store| async move {
        match s
            .lease_source("g", "h", "git:k", "a", 60_000)
            .await
            .unwrap()
        {
            SourceLease::Held(c) => c.unwrap(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(cursor(s.clone()).await, json!({"main": "s1"}));
    // A repeated delivery moves the cursor too (its first fire committed it, or another
    // instance's did).
    let out = s
        .record_fire(
            cursor_fire("f1-again", "d1", "a", json!({"dev": "s2"})),
            Some((new_task("t1-again", None), created())),
            Some(0),
            None,
        )
        .await
        .unwrap();
    assert!(matches!(out, FireOutcome::Duplicate(_)));
    assert_eq!(cursor(s.clone()).await, json!({"main": "s1", "dev": "s2"}));
    // Many fires of one source at once, from two handles: every one is recorded with its
    // task, and every cursor key it carried is kept.
    let mut racers = Vec::new();
    for i in 0..8 {
        let st = if i % 2 == 0 { s.clone() } else { other.clone() };
        let fire = cursor_fire(
            &format!("r{i}"),
            &format!("dr{i}"),
            "a",
            json!({ format!("b{i}"): format!("x{i}") }),
        );
        let task = new_task(&format!("tr{i}"), None);
        racers.push(tokio::spawn(async move {
            st.record_fire(fire, Some((task, created())), Some(0), None)
                .await
        }));
    }
    for r in racers {
        assert!(matches!(
            r.await.unwrap().unwrap(),
            FireOutcome::Recorded(_, Some(_))
        ));
    }
    let c = cursor(s.clone()).await;
    for i in 0..8 {
        assert_eq!(c[format!("b{i}")], json!(format!("x{i}")), "{c}");
    }
    assert_eq!(s.count_tasks(TaskState::Ready).await.unwrap(), 9);
    // A fire whose task cannot be written (its id is taken) rolls its cursor back with it.
    let failed = s
        .record_fire(
            cursor_fire("f-bad", "d-bad", "a", json!({"main": "bad"})),
            Some((new_task("t1", None), created())),
            Some(0),
            None,
        )
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(cursor(s.clone()).await["main"], "s1");
}
