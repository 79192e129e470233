//! The audit log on both backends: recorded calls and task events in one view, newest
//! first, filtered, paged without gaps or repeats, and pruned by age.

use std::time::Duration;

use serde_json::{Value, json};
use taskhook_model::TaskState;
use taskhook_store::testing::TestDb;
use taskhook_store::*;

taskhook_store::on_both_stores!(
    calls_and_task_events_read_as_one_view,
    pages_cover_everything_once_in_order,
    pruning_removes_only_old_calls,
);

fn call(actor: &str, action: &str, target: Option<&str>, status: u16, at: i64) -> NewCall {
    NewCall {
        id: uuid::Uuid::now_v7().to_string(),
        at,
        actor: actor.into(),
        action: action.into(),
        target: target.map(String::from),
        status,
        error: (status >= 400).then(|| "Bad Request: no".to_string()),
        client: Some("127.0.0.1".into()),
    }
}

fn new_task(id: &str) -> NewTask {
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
        idempotency_key: None,
        run_max: 10,
        due_at: None,
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

/// Waits until the clock moves, so that consecutive records have distinct times.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(3)).await;
}

fn all() -> AuditFilter {
    AuditFilter {
        limit: 100,
        ..Default::default()
    }
}

fn actions(entries: &[AuditEntry]) -> Vec<String> {
    entries.iter().map(|e| e.action.clone()).collect()
}

async fn calls_and_task_events_read_as_one_view(db: TestDb) {
    let s = db.open().await;
    let t0 = now_ms();
    s.record_call(call(
        "admin",
        "PUT /api/v1/templates/{name}",
        Some("t"),
        201,
        now_ms(),
    ))
    .await
    .unwrap();
    tick().await;
    s.create_task(new_task("task-1"), created()).await.unwrap();
    tick().await;
    s.record_call(call(
        "admin",
        "POST /api/v1/tasks",
        Some("task-1"),
        201,
        now_ms(),
    ))
    .await
    .unwrap();
    tick().await;
    s.record_call(call("anonymous", "POST /api/v1/tasks", None, 401, now_ms()))
        .await
        .unwrap();
    tick().await;
    let out = s
        .transition(
            "task-1",
            &[TaskState::Ready],
            TaskState::Cancelled,
            None,
            None,
            NewEvent::transition(
                "admin",
                "cancelled",
                TaskState::Ready,
                TaskState::Cancelled,
                Value::Null,
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        TransitionOutcome::Applied(TaskState::Ready, TaskState::Cancelled)
    );
    tick().await;
    s.record_call(call(
        "hook:g/h",
        "POST /api/v1/hooks/{group}/{id}/webhook",
        Some("g/h"),
        400,
        now_ms(),
    ))
    .await
    .unwrap();

    let every = s.list_audit(all()).await.unwrap();
    assert_eq!(
        actions(&every),
        [
            "POST /api/v1/hooks/{group}/{id}/webhook",
            "cancelled",
            "POST /api/v1/tasks",
            "POST /api/v1/tasks",
            "created",
            "PUT /api/v1/templates/{name}",
        ]
    );
    let cancelled = &every[1];
    assert_eq!(cancelled.kind, AuditKind::Task);
    assert_eq!(cancelled.target.as_deref(), Some("task-1"));
    assert_eq!(cancelled.from_state.as_deref(), Some("READY"));
    assert_eq!(cancelled.to_state.as_deref(), Some("CANCELLED"));
    assert_eq!(cancelled.status, None);
    let refused = &every[2];
    assert_eq!(
        (
            refused.kind,
            refused.actor.as_str(),
            refused.status,
            refused.target.as_deref()
        ),
        (AuditKind::Call, "anonymous", Some(401), None)
    );
    assert_eq!(refused.error.as_deref(), Some("Bad Request: no"));
    assert_eq!(refused.client.as_deref(), Some("127.0.0.1"));
    assert!(every.iter().all(|e| e.at >= t0));

    let with = |f: AuditFilter| {
        let s = s.clone();
        async move { actions(&s.list_audit(f).await.unwrap()) }
    };
    assert_eq!(
        with(AuditFilter {
            actor: Some("anonymous".into()),
            ..all()
        })
        .await,
        ["POST /api/v1/tasks"]
    );
    assert_eq!(
        with(AuditFilter {
            target: Some("task-1".into()),
            ..all()
        })
        .await,
        ["cancelled", "POST /api/v1/tasks", "created"]
    );
    assert_eq!(
        with(AuditFilter {
            action: Some("created".into()),
            ..all()
        })
        .await,
        ["created"]
    );
    assert_eq!(
        with(AuditFilter {
            kinds: vec![AuditKind::Task],
            ..all()
        })
        .await,
        ["cancelled", "created"]
    );
    assert_eq!(
        with(AuditFilter {
            kinds: vec![AuditKind::Call],
            outcome: Some(AuditOutcome::Ok),
            ..all()
        })
        .await,
        ["POST /api/v1/tasks", "PUT /api/v1/templates/{name}"]
    );
    assert_eq!(
        with(AuditFilter {
            outcome: Some(AuditOutcome::Error),
            ..all()
        })
        .await,
        [
            "POST /api/v1/hooks/{group}/{id}/webhook",
            "POST /api/v1/tasks"
        ]
    );
    assert_eq!(
        with(AuditFilter {
            outcome: Some(AuditOutcome::Status(401)),
            ..all()
        })
        .await,
        ["POST /api/v1/tasks"]
    );
    assert!(
        with(AuditFilter {
            kinds: vec![AuditKind::Task],
            outcome: Some(AuditOutcome::Error),
            ..all()
        })
        .await
        .is_empty()
    );
    // Since is inclusive, until exclusive.
    let (newest, oldest) = (every[0].at, every[5].at);
    assert_eq!(
        with(AuditFilter {
            since: Some(newest),
            ..all()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        with(AuditFilter {
            until: Some(oldest + 1),
            ..all()
        })
        .await,
        ["PUT /api/v1/templates/{name}"]
    );
    assert!(
        with(AuditFilter {
            since: Some(newest + 1),
            ..all()
        })
        .await
        .is_empty()
    );
    // Values are compared as given: no pattern characters.
    assert!(
        with(AuditFilter {
            actor: Some("%".into()),
            ..all()
        })
        .await
        .is_empty()
    );
    assert!(
        with(AuditFilter {
            action: Some("POST /api/v1/tasks' OR '1'='1".into()),
            ..all()
        })
        .await
        .is_empty()
    );
}

async fn pages_cover_everything_once_in_order(db: TestDb) {
    let s = db.open().await;
    // Many entries share one millisecond, across both kinds.
    let at = now_ms();
    let mut expected = 0;
    for i in 0..7 {
        s.record_call(call("admin", "POST /api/v1/tasks", None, 201, at))
            .await
            .unwrap();
        s.create_task(new_task(&format!("t{i}")), created())
            .await
            .unwrap();
        expected += 2;
    }
    for i in 0..5 {
        s.record_call(call("admin", "DELETE /x", None, 204, at - 1 - i))
            .await
            .unwrap();
        expected += 1;
    }
    let every = s.list_audit(all()).await.unwrap();
    assert_eq!(every.len(), expected);
    for w in every.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        assert!(
            (a.at, a.kind, a.key.as_str()) > (b.at, b.kind, b.key.as_str()),
            "{a:?} before {b:?}"
        );
    }
    for size in [1, 2, 3, 5] {
        let mut paged = Vec::new();
        let mut before = None;
        loop {
            let page = s
                .list_audit(AuditFilter {
                    before: before.clone(),
                    limit: size,
                    ..all()
                })
                .await
                .unwrap();
            assert!(page.len() <= size as usize);
            let Some(last) = page.last() else { break };
            before = Some(last.cursor().to_string().parse().unwrap());
            paged.extend(page);
        }
        assert_eq!(paged, every, "pages of {size}");
    }
}

async fn pruning_removes_only_old_calls(db: TestDb) {
    let s = db.open().await;
    let now = now_ms();
    for i in 0..5 {
        s.record_call(call("admin", "POST /old", None, 200, now - 100_000 - i))
            .await
            .unwrap();
    }
    s.record_call(call("admin", "POST /new", None, 200, now))
        .await
        .unwrap();
    s.create_task(new_task("kept"), created()).await.unwrap();
    assert_eq!(s.prune_calls(now - 50_000, 2).await.unwrap(), 2);
    assert_eq!(s.prune_calls(now - 50_000, 1000).await.unwrap(), 3);
    assert_eq!(s.prune_calls(now - 50_000, 1000).await.unwrap(), 0);
    assert_eq!(
        actions(&s.list_audit(all()).await.unwrap()),
        ["created", "POST /new"]
    );
}
