//! Secrets in runs, on both backends: values are read when a step starts (a rotation reaches
//! later steps), a deleted secret fails its step clearly, and what the run stores is masked.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use taskhook_actions::{ActionSettings, Registry};
use taskhook_engine::{CreateTask, Engine, EngineConfig};
use taskhook_model::{StepState, TaskState};
use taskhook_store::testing::{Backend, TestDb};
use taskhook_store::{StepRow, TaskRow};

const MASK: &str = taskhook_model::secret::MASK;

taskhook_store::on_both_backends!(
    a_rotated_secret_reaches_later_steps_and_stored_results_are_masked,
    a_deleted_secret_fails_its_step_with_a_clear_error,
);

async fn start(b: Backend) -> (Engine, TestDb) {
    let db = TestDb::new(b)
        .await
        .expect("PostgreSQL became unreachable during the test run");
    let store = db.open_with_pool(4).await;
    let engine = Engine::new(
        store,
        Registry::builtin(&ActionSettings::default()),
        EngineConfig::default(),
    );
    engine.start().await.unwrap();
    (engine, db)
}

async fn put(engine: &Engine, yaml: &str) {
    let t = engine.parse_template(yaml).await.unwrap();
    engine.check_template_secrets(&t).await.unwrap();
    engine.put_template(t).await.unwrap();
}

async fn create(engine: &Engine, template: &str, inputs: Value) -> String {
    let req = CreateTask {
        template: template.into(),
        inputs,
        requester: "tester".into(),
        ..Default::default()
    };
    engine.create_task(req).await.unwrap().0.id
}

async fn wait(
    engine: &Engine,
    id: &str,
    pred: impl Fn(&TaskRow, &[StepRow]) -> bool,
) -> (TaskRow, Vec<StepRow>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (t, s) = engine.store().get_task(id).await.unwrap().unwrap();
        if pred(&t, &s) {
            return (t, s);
        }
        assert!(Instant::now() < deadline, "timed out: {t:#?} {s:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn step<'a>(steps: &'a [StepRow], name: &str) -> &'a StepRow {
    steps.iter().find(|s| s.name == name).unwrap()
}

async fn a_rotated_secret_reaches_later_steps_and_stored_results_are_masked(b: Backend) {
    let (engine, _db) = start(b).await;
    engine
        .store()
        .put_secret("key", "first-value", "")
        .await
        .unwrap();
    put(
        &engine,
        r#"
name: rot
auto_runnable: true
inputs: [{name: pw, type: password}]
result_format: {key: "{{ secret.key }}", pw: "{{ input.pw }}"}
steps:
  before:
    action: {type: echo, configuration: {output: {plain: "{{ secret.key }}", upper: "{{ secret.key | upper }}", pw: "x{{ input.pw }}x"}}}
  wait:
    dependencies: [before]
    action: {type: sleep, configuration: {duration: 1s}}
  after:
    dependencies: [wait]
    action: {type: echo, configuration: {output: {plain: "{{ secret.key }}", upper: "{{ secret.key | upper }}", earlier: "{{ step.before.output.plain }}"}}}
"#,
    )
    .await;
    let id = create(&engine, "rot", json!({"pw": "pass-word-1"})).await;
    wait(&engine, &id, |_, s| {
        step(s, "before").state == StepState::Done
    })
    .await;
    engine
        .store()
        .put_secret("key", "second-value", "")
        .await
        .unwrap();
    let (task, steps) = wait(&engine, &id, |t, _| {
        matches!(t.state, TaskState::Done | TaskState::Blocked)
    })
    .await;
    assert_eq!(task.state, TaskState::Done, "{steps:#?}");
    let before = &step(&steps, "before").output;
    let after = &step(&steps, "after").output;
    assert_eq!(before["plain"], MASK);
    assert_eq!(before["pw"], format!("x{MASK}x"));
    assert_eq!(after["plain"], MASK);
    assert_eq!(after["earlier"], MASK);
    // A transformed value is not masked (documented): here it shows which value each step got.
    assert_eq!(before["upper"], "FIRST-VALUE");
    assert_eq!(after["upper"], "SECOND-VALUE");
    assert_eq!(task.result, json!({"key": MASK, "pw": MASK}));
    let stored = serde_json::to_string(&steps).unwrap();
    for v in ["first-value", "second-value", "pass-word-1"] {
        assert!(!stored.contains(v), "{stored}");
    }
    engine.shutdown().await;
}

async fn a_deleted_secret_fails_its_step_with_a_clear_error(b: Backend) {
    let (engine, _db) = start(b).await;
    engine
        .store()
        .put_secret("gone", "soon-gone", "")
        .await
        .unwrap();
    put(
        &engine,
        "name: del\nauto_runnable: true\nsteps:\n  a:\n    action: {type: echo, configuration: {output: '{{ secret.gone }}'}}\n",
    )
    .await;
    engine.store().delete_secret("gone").await.unwrap();
    let t = engine.parse_template("name: del2\nsteps:\n  a:\n    action: {type: echo, configuration: {output: '{{ secret.gone }}'}}\n").await.unwrap();
    let e = engine
        .check_template_secrets(&t)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("steps.a.action.configuration.output"), "{e}");
    let id = create(&engine, "del", json!({})).await;
    let (task, steps) = wait(&engine, &id, |t, _| t.state == TaskState::Blocked).await;
    let a = step(&steps, "a");
    assert_eq!(a.state, StepState::FatalError);
    assert!(
        a.error
            .as_deref()
            .unwrap_or_default()
            .starts_with("secret \"gone\" does not exist"),
        "{a:#?}"
    );
    assert_eq!(task.state, TaskState::Blocked);
    engine.shutdown().await;
}
