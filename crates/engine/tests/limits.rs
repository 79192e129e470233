//! The engine's configurable limits: template size and step count at intake, foreach
//! fan-out and step output size at run time. Each refusal names its field and stores nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use taskhook_actions::{ActionSettings, Registry};
use taskhook_engine::{CreateTask, Engine, EngineConfig, EngineError, TemplateError};
use taskhook_model::{StepState, TaskState};
use taskhook_store::{StepRow, Store, TaskRow};

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("taskhook-limits-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn engine(dir: &Path, config: EngineConfig) -> Engine {
    let store = Store::open(dir.join("taskhook.db")).unwrap();
    let engine = Engine::new(store, Registry::builtin(&ActionSettings::default()), config);
    engine.start().await.unwrap();
    engine
}

fn steps_yaml(name: &str, n: usize) -> String {
    let mut y = format!("name: {name}\nauto_runnable: true\nsteps:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  s{i}: {{action: {{type: echo, configuration: {{output: {i}}}}}}}\n"
        ));
    }
    y
}

fn only_error(e: &TemplateError) -> (&str, &str) {
    assert_eq!(e.errors.len(), 1, "{e}");
    (&e.errors[0].field, &e.errors[0].message)
}

async fn put(engine: &Engine, yaml: &str) {
    let t = engine
        .parse_template(yaml)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
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

async fn wait_end(engine: &Engine, id: &str) -> (TaskRow, Vec<StepRow>) {
    wait_for(engine, id, |t, _| {
        matches!(t.state, TaskState::Done | TaskState::Blocked)
    })
    .await
}

async fn wait_for(
    engine: &Engine,
    id: &str,
    pred: impl Fn(&TaskRow, &[StepRow]) -> bool,
) -> (TaskRow, Vec<StepRow>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (t, steps) = engine.store().get_task(id).await.unwrap().unwrap();
        if pred(&t, &steps) {
            return (t, steps);
        }
        assert!(Instant::now() < deadline, "{t:#?}\n{steps:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn step<'a>(steps: &'a [StepRow], name: &str) -> &'a StepRow {
    steps.iter().find(|s| s.name == name).unwrap()
}

#[test]
fn the_defaults() {
    let c = EngineConfig::default();
    assert_eq!(c.max_template_bytes, 256 * 1024);
    assert_eq!(c.max_steps, 500);
    // The fan-out limit was a hard-coded 10,000 before it became configurable; it stays.
    assert_eq!(c.max_foreach_items, 10_000);
    assert_eq!(c.max_step_output_bytes, 1024 * 1024);
}

#[tokio::test]
async fn a_template_document_over_the_size_limit_is_refused_naming_template() {
    let dir = temp_dir();
    let yaml = steps_yaml("big", 3);
    let config = EngineConfig {
        max_template_bytes: yaml.len() - 1,
        ..EngineConfig::default()
    };
    let e = engine(&dir, config).await;
    let err = e.parse_template(&yaml).await.unwrap_err();
    let (field, message) = only_error(&err);
    assert_eq!(field, "template");
    assert!(
        message.contains(&format!("the limit is {} bytes", yaml.len() - 1)),
        "{message}"
    );
    assert!(e.store().list_templates().await.unwrap().is_empty());

    // At the limit exactly, it is accepted.
    let config = EngineConfig {
        max_template_bytes: yaml.len(),
        ..EngineConfig::default()
    };
    let e = engine(&temp_dir(), config).await;
    put(&e, &yaml).await;
}

#[tokio::test]
async fn a_template_with_too_many_steps_is_refused_naming_steps() {
    let dir = temp_dir();
    let config = EngineConfig {
        max_steps: 2,
        ..EngineConfig::default()
    };
    let e = engine(&dir, config).await;
    let err = e.parse_template(&steps_yaml("many", 3)).await.unwrap_err();
    let (field, message) = only_error(&err);
    assert_eq!(field, "steps");
    assert!(message.contains("3 steps; the limit is 2"), "{message}");

    // put_template checks too, for callers that built the template themselves.
    let t = taskhook_model::Template::parse(&steps_yaml("many", 3)).unwrap();
    match e.put_template(t).await {
        Err(EngineError::Template(err)) => assert_eq!(only_error(&err).0, "steps"),
        other => panic!("expected a template error, got {:?}", other.map(|r| r.1)),
    }
    assert!(e.store().get_template("many").await.unwrap().is_none());
    put(&e, &steps_yaml("two", 2)).await;
}

#[tokio::test]
async fn a_lowered_step_limit_does_not_strand_stored_templates() {
    let dir = temp_dir();
    let e = engine(&dir, EngineConfig::default()).await;
    put(&e, &steps_yaml("three", 3)).await;
    e.shutdown().await;
    e.store().close();
    drop(e);
    let config = EngineConfig {
        max_steps: 2,
        ..EngineConfig::default()
    };
    let e = engine(&dir, config).await;
    let id = create(&e, "three", json!({})).await;
    let (t, _) = wait_end(&e, &id).await;
    assert_eq!(t.state, TaskState::Done);
}

const FOREACH: &str = "name: fan\nauto_runnable: true\ninputs: [{name: items, collection: true}]\nsteps:\n  each:\n    foreach: '{{ input.items }}'\n    action: {type: echo, configuration: {output: '{{ iterator }}'}}\n";

#[tokio::test]
async fn foreach_over_the_item_limit_ends_fatal_without_children() {
    let config = EngineConfig {
        max_foreach_items: 3,
        ..EngineConfig::default()
    };
    let e = engine(&temp_dir(), config).await;
    put(&e, FOREACH).await;

    let id = create(&e, "fan", json!({"items": ["a", "b", "c", "d"]})).await;
    let (t, steps) = wait_end(&e, &id).await;
    assert_eq!(t.state, TaskState::Blocked);
    let each = step(&steps, "each");
    assert_eq!(each.state, StepState::FatalError);
    let error = each.error.as_deref().unwrap();
    assert!(
        error.contains("foreach gave 4 items; the limit is 3"),
        "{error}"
    );
    assert!(error.contains("--max-foreach-items"), "{error}");
    assert_eq!(steps.len(), 1, "no children were created: {steps:#?}");

    let id = create(&e, "fan", json!({"items": ["a", "b", "c"]})).await;
    let (t, steps) = wait_end(&e, &id).await;
    assert_eq!(t.state, TaskState::Done, "{steps:#?}");
    assert_eq!(step(&steps, "each-2").output, json!("c"));
}

#[tokio::test]
async fn a_step_output_over_the_limit_is_not_stored_and_ends_fatal() {
    let config = EngineConfig {
        max_step_output_bytes: 1000,
        ..EngineConfig::default()
    };
    let e = engine(&temp_dir(), config).await;
    put(
        &e,
        "name: out\nauto_runnable: true\ninputs: [{name: n, type: number}]\nsteps:\n  big:\n    action: {type: echo, configuration: {output: \"{{ 'x' * input.n }}\", metadata: {note: small}}}\n",
    )
    .await;

    // Output and metadata together: 990 x's plus quotes plus {"note":"small"} is over 1000.
    let id = create(&e, "out", json!({"n": 990})).await;
    let (t, steps) = wait_end(&e, &id).await;
    assert_eq!(t.state, TaskState::Blocked);
    let big = step(&steps, "big");
    assert_eq!(big.state, StepState::FatalError);
    assert_eq!(big.output, Value::Null);
    assert_eq!(big.metadata, Value::Null);
    let error = big.error.as_deref().unwrap();
    assert!(error.contains("the limit is 1000"), "{error}");
    assert!(error.contains("--max-step-output-bytes"), "{error}");
    assert!(error.contains("not stored"), "{error}");

    let id = create(&e, "out", json!({"n": 900})).await;
    let (t, steps) = wait_end(&e, &id).await;
    assert_eq!(t.state, TaskState::Done);
    assert_eq!(step(&steps, "big").output.as_str().unwrap().len(), 900);
}

#[tokio::test]
async fn a_failed_step_with_a_large_output_keeps_its_error_state_and_retries() {
    let config = EngineConfig {
        max_step_output_bytes: 100,
        ..EngineConfig::default()
    };
    let e = engine(&temp_dir(), config).await;
    let big = "y".repeat(200);
    put(
        &e,
        &format!("name: flaky\nauto_runnable: true\nsteps:\n  call:\n    max_retries: 5\n    action: {{type: echo, configuration: {{output: {big}, error_type: server, error_message: upstream down}}}}\n"),
    )
    .await;
    let id = create(&e, "flaky", json!({})).await;
    let (t, steps) = wait_for(&e, &id, |t, _| t.state == TaskState::Ready).await;
    assert!(t.due_at.is_some(), "a retry is scheduled: {t:#?}");
    let call = step(&steps, "call");
    assert_eq!(call.state, StepState::ServerError);
    assert_eq!(call.output, Value::Null);
    let error = call.error.as_deref().unwrap();
    assert!(error.starts_with("upstream down; "), "{error}");
    assert!(error.contains("the limit is 100"), "{error}");
}
