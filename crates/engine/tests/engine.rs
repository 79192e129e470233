//! End-to-end tests of the engine: a real store, the builtin actions, and a local HTTP server
//! for `http` steps. Every test runs on both backends: `<test>::sqlite` (a file in a temp dir)
//! and `<test>::postgres` (a fresh schema; skipped with a message when PostgreSQL is not
//! reachable, see `taskhook_store::testing`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use serde_json::{Value, json};
use taskhook_actions::{ActionSettings, Registry};
use taskhook_engine::{CreateTask, Engine, EngineConfig, EngineError};
use taskhook_model::{StepState, TaskState};
use taskhook_store::testing::{Backend, TestDb};
use taskhook_store::{StepRow, Store, TaskRow, now_ms};

// ---------------------------------------------------------------- fixture

struct Fx {
    engine: Engine,
    /// The database (and data dir) the engine works on; dropped (removed) with the fixture.
    #[allow(dead_code)]
    db: TestDb,
}

/// A fresh database on `b`, with a `scripts` dir beside it. The PostgreSQL variant of each
/// test checks first that PostgreSQL is reachable.
async fn fresh_db(b: Backend) -> TestDb {
    let db = TestDb::new(b)
        .await
        .expect("PostgreSQL became unreachable during the test run");
    std::fs::create_dir_all(db.dir().join("scripts")).unwrap();
    db
}

async fn engine_on(db: &TestDb) -> Engine {
    engine_with(db, EngineConfig::default()).await
}

async fn engine_with(db: &TestDb, config: EngineConfig) -> Engine {
    let store = db.open().await;
    let actions = Registry::builtin(&ActionSettings {
        scripts_dir: Some(db.dir().join("scripts")),
        ..ActionSettings::default()
    });
    Engine::new(store, actions, config)
}

impl Fx {
    /// A fresh database and a started engine.
    async fn new(b: Backend) -> Fx {
        Fx::open(fresh_db(b).await).await
    }

    /// A started engine on an existing database (recovers what was left running).
    async fn open(db: TestDb) -> Fx {
        Fx::open_with(db, EngineConfig::default()).await
    }

    async fn open_with(db: TestDb, config: EngineConfig) -> Fx {
        let engine = engine_with(&db, config).await;
        engine.start().await.unwrap();
        Fx { engine, db }
    }

    fn store(&self) -> &Store {
        self.engine.store()
    }

    async fn put(&self, yaml: &str) -> i64 {
        put_on(&self.engine, yaml).await
    }

    async fn create(&self, template: &str, inputs: Value) -> String {
        create_on(&self.engine, template, inputs).await
    }

    async fn get(&self, id: &str) -> (TaskRow, Vec<StepRow>) {
        self.store()
            .get_task(id)
            .await
            .unwrap()
            .expect("task exists")
    }

    /// Polls until `pred` holds on the task and its steps (10 s deadline).
    async fn wait_for(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&TaskRow, &[StepRow]) -> bool,
    ) -> (TaskRow, Vec<StepRow>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (task, steps) = self.get(id).await;
            if pred(&task, &steps) {
                return (task, steps);
            }
            if Instant::now() > deadline {
                let events = self.store().task_events(id).await.unwrap();
                panic!(
                    "timed out waiting for {what}\ntask: {task:#?}\nsteps: {steps:#?}\nevents: {:#?}",
                    events
                        .iter()
                        .map(|e| (
                            e.kind.as_str(),
                            e.from_state.as_deref(),
                            e.to_state.as_deref(),
                            &e.detail
                        ))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the task is in one of `states`.
    async fn wait_final(&self, id: &str, states: &[TaskState]) -> (TaskRow, Vec<StepRow>) {
        self.wait_for(id, &format!("task in {states:?}"), |t, _| {
            states.contains(&t.state)
        })
        .await
    }

    async fn wait_done(&self, id: &str) -> (TaskRow, Vec<StepRow>) {
        let (task, steps) = self
            .wait_final(
                id,
                &[TaskState::Done, TaskState::Blocked, TaskState::Cancelled],
            )
            .await;
        assert_eq!(
            task.state,
            TaskState::Done,
            "task ended {:?}\nsteps: {steps:#?}",
            task.state
        );
        (task, steps)
    }

    async fn wait_step(&self, id: &str, name: &str, state: StepState) -> (TaskRow, Vec<StepRow>) {
        self.wait_for(id, &format!("step {name} in {state}"), |_, steps| {
            steps.iter().any(|s| s.name == name && s.state == state)
        })
        .await
    }

    async fn event_kinds(&self, id: &str) -> Vec<String> {
        self.store()
            .task_events(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }
}

async fn put_on(engine: &Engine, yaml: &str) -> i64 {
    let template = engine
        .parse_template(yaml)
        .await
        .unwrap_or_else(|e| panic!("template does not validate: {e}\n{yaml}"));
    engine.put_template(template).await.unwrap().0.version
}

async fn create_on(engine: &Engine, template: &str, inputs: Value) -> String {
    let req = CreateTask {
        template: template.into(),
        inputs,
        requester: "tester".into(),
        ..Default::default()
    };
    engine.create_task(req).await.unwrap().0.id
}

fn step<'a>(steps: &'a [StepRow], name: &str) -> &'a StepRow {
    steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {steps:#?}"))
}

fn state_of(steps: &[StepRow], name: &str) -> String {
    step(steps, name).state.as_str().to_string()
}

// ---------------------------------------------------------------- HTTP test server

/// A local HTTP server that counts calls per `Idempotency-Key`.
#[derive(Clone, Default)]
struct Srv {
    base: String,
    calls: Arc<Mutex<HashMap<String, u32>>>,
    /// (key, start, end) of each `/slow` call, in completion order.
    spans: Arc<Mutex<Vec<(String, Instant, Instant)>>>,
}

impl Srv {
    async fn start() -> Srv {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let srv = Srv {
            base: format!("http://{}", listener.local_addr().unwrap()),
            ..Srv::default()
        };
        let app = Router::new()
            .route("/status/{code}", any(status))
            .route("/flaky/{n}", any(flaky))
            .route("/client/{n}", any(client))
            .route("/slow/{ms}", any(slow))
            .with_state(srv.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        srv
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Calls made with this idempotency key.
    fn calls(&self, key: &str) -> u32 {
        self.calls.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    fn count(&self, headers: &HeaderMap) -> (String, u32) {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut calls = self.calls.lock().unwrap();
        let n = calls.entry(key.clone()).or_default();
        *n += 1;
        (key, *n)
    }
}

type Reply = (StatusCode, axum::Json<Value>);

async fn status(State(srv): State<Srv>, UrlPath(code): UrlPath<u16>, headers: HeaderMap) -> Reply {
    let (key, n) = srv.count(&headers);
    (
        StatusCode::from_u16(code).unwrap(),
        axum::Json(json!({"status": code, "key": key, "calls": n})),
    )
}

/// Fails the first `n` calls of each key with 500.
async fn flaky(State(srv): State<Srv>, UrlPath(fail): UrlPath<u32>, headers: HeaderMap) -> Reply {
    let (key, n) = srv.count(&headers);
    let code = if n <= fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    (code, axum::Json(json!({"key": key, "calls": n})))
}

/// Fails the first `n` calls of each key with 400.
async fn client(State(srv): State<Srv>, UrlPath(fail): UrlPath<u32>, headers: HeaderMap) -> Reply {
    let (key, n) = srv.count(&headers);
    let code = if n <= fail {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (code, axum::Json(json!({"key": key, "calls": n})))
}

async fn slow(State(srv): State<Srv>, UrlPath(ms): UrlPath<u64>, headers: HeaderMap) -> Reply {
    let (key, n) = srv.count(&headers);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(ms)).await;
    srv.spans
        .lock()
        .unwrap()
        .push((key.clone(), start, Instant::now()));
    (
        StatusCode::OK,
        axum::Json(json!({"slept": ms, "key": key, "calls": n})),
    )
}

// ---------------------------------------------------------------- graph, outputs, dependencies

/// An action with a bug: it panics.
struct Panics;

#[async_trait::async_trait]
impl taskhook_actions::Action for Panics {
    fn name(&self) -> &'static str {
        "panics"
    }
    fn validate(&self, _: &Value) -> Result<(), taskhook_actions::ConfigError> {
        Ok(())
    }
    async fn run(
        &self,
        _: Value,
        _: taskhook_actions::ActionContext,
    ) -> Result<taskhook_actions::ActionOutput, taskhook_actions::ActionError> {
        panic!("index out of bounds in a buggy action")
    }
}

/// A panic in an action is a failed attempt: the step ends FATAL_ERROR with the panic's text,
/// the task is BLOCKED for a person, the engine keeps running other tasks.
async fn a_panicking_action_fails_its_step_and_the_run_goes_on(b: Backend) {
    let db = fresh_db(b).await;
    let mut actions = Registry::builtin(&ActionSettings::default());
    actions.register(Arc::new(Panics));
    let engine = Engine::new(db.open().await, actions, EngineConfig::default());
    engine.start().await.unwrap();
    let fx = Fx { engine, db };
    fx.put("name: buggy\nauto_runnable: true\nsteps:\n  bug: {idempotent: true, action: {type: panics}}\n  other: {action: {type: echo, configuration: {output: fine}}}\n").await;
    let id = fx.create("buggy", json!({})).await;
    let (task, steps) = fx.wait_final(&id, &[TaskState::Blocked]).await;
    assert_eq!(task.state, TaskState::Blocked);
    let bug = steps.iter().find(|s| s.name == "bug").unwrap();
    assert_eq!(bug.state, StepState::FatalError);
    let error = bug.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("index out of bounds in a buggy action"),
        "{error}"
    );
    let other = steps.iter().find(|s| s.name == "other").unwrap();
    assert_eq!(other.state, StepState::Done);
    fx.put("name: fine\nauto_runnable: true\nsteps:\n  a: {action: {type: echo}}\n")
        .await;
    let id = fx.create("fine", json!({})).await;
    fx.wait_done(&id).await;
}

async fn linear_chain_passes_outputs_along(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: chain
auto_runnable: true
inputs:
  - name: n
    type: number
result_format:
  total: "{{ step.c.output.total }}"
  from_a: "{{ step.a.output.x }}"
steps:
  a:
    action:
      type: echo
      configuration:
        output: {x: "{{ input.n }}"}
  b:
    dependencies: [a]
    action:
      type: echo
      configuration:
        output: {y: "{{ step.a.output.x * 2 }}"}
  c:
    dependencies: [b]
    action:
      type: echo
      configuration:
        output:
          total: "{{ step.a.output.x + step.b.output.y }}"
          text: "a={{ step.a.output.x }} b={{ step.b.output.y }}"
"#,
    )
    .await;
    let id = fx.create("chain", json!({"n": 7})).await;
    let (task, steps) = fx.wait_done(&id).await;
    assert_eq!(step(&steps, "a").output, json!({"x": 7}));
    assert_eq!(step(&steps, "b").output, json!({"y": 14}));
    assert_eq!(
        step(&steps, "c").output,
        json!({"total": 21, "text": "a=7 b=14"})
    );
    assert!(
        steps.iter().all(|s| s.attempts == 1 && s.error.is_none()),
        "{steps:#?}"
    );
    assert_eq!(task.result, json!({"total": 21, "from_a": 7}));
    assert_eq!(task.run_count, 1);
}

async fn custom_state_and_any_dependencies(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: custom
auto_runnable: true
steps:
  review:
    custom_states: [APPROVED, REJECTED]
    action:
      type: echo
      configuration:
        output: {verdict: ok}
    conditions:
      - type: check
        if:
          - value: "{{ step.this.output.verdict }}"
            operator: EQ
            expected: ok
        then: {this: APPROVED}
      - type: check
        if:
          - value: "{{ step.this.output.verdict }}"
            operator: NE
            expected: ok
        then: {this: REJECTED}
  ship:
    dependencies: ["review:APPROVED"]
    action: {type: echo, configuration: {output: shipped}}
  apologize:
    dependencies: ["review:REJECTED"]
    action: {type: echo, configuration: {output: sorry}}
  either:
    dependencies: ["review:APPROVED,REJECTED"]
    action: {type: echo, configuration: {output: "{{ step.review.state }}"}}
  report:
    dependencies: ["apologize:ANY"]
    action: {type: echo, configuration: {output: "apologize was {{ step.apologize.state }}"}}
  after_apology:
    dependencies: [apologize]
    action: {type: echo, configuration: {output: never}}
"#,
    )
    .await;
    let id = fx.create("custom", json!({})).await;
    let (_, steps) = fx.wait_done(&id).await;
    assert_eq!(state_of(&steps, "review"), "APPROVED");
    assert_eq!(state_of(&steps, "ship"), "DONE");
    assert_eq!(state_of(&steps, "apologize"), "PRUNE");
    assert_eq!(state_of(&steps, "either"), "DONE");
    assert_eq!(step(&steps, "either").output, json!("APPROVED"));
    assert_eq!(state_of(&steps, "report"), "DONE");
    assert_eq!(step(&steps, "report").output, json!("apologize was PRUNE"));
    assert_eq!(state_of(&steps, "after_apology"), "PRUNE");
    assert_eq!(step(&steps, "after_apology").attempts, 0);
}

async fn prune_propagates_through_a_chain_but_not_to_any(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: prune
auto_runnable: true
inputs:
  - name: enabled
    type: bool
steps:
  a:
    action: {type: echo, configuration: {output: a}}
    conditions:
      - type: skip
        if:
          - value: "{{ input.enabled }}"
            operator: EQ
            expected: "false"
        then: {this: PRUNE}
        message: disabled by input
  b:
    dependencies: [a]
    action: {type: echo, configuration: {output: b}}
  c:
    dependencies: [b]
    action: {type: echo, configuration: {output: c}}
  d:
    dependencies: ["c:ANY"]
    action: {type: echo, configuration: {output: "c is {{ step.c.state }}"}}
  e:
    dependencies: [d]
    action: {type: echo, configuration: {output: e}}
"#,
    )
    .await;
    let id = fx.create("prune", json!({"enabled": false})).await;
    let (_, steps) = fx.wait_done(&id).await;
    for name in ["a", "b", "c"] {
        assert_eq!(state_of(&steps, name), "PRUNE", "{name}");
        assert_eq!(step(&steps, name).attempts, 0, "{name}");
    }
    assert_eq!(
        step(&steps, "a").error.as_deref(),
        Some("disabled by input")
    );
    assert_eq!(state_of(&steps, "d"), "DONE");
    assert_eq!(step(&steps, "d").output, json!("c is PRUNE"));
    assert_eq!(state_of(&steps, "e"), "DONE");

    // The same template with the condition false runs everything.
    let id = fx.create("prune", json!({"enabled": true})).await;
    let (_, steps) = fx.wait_done(&id).await;
    assert!(
        steps.iter().all(|s| s.state == StepState::Done),
        "{steps:#?}"
    );
    assert_eq!(step(&steps, "d").output, json!("c is DONE"));
}

async fn skip_condition_sets_a_custom_state_and_can_target_other_steps(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: skip
auto_runnable: true
inputs:
  - name: env
    type: string
steps:
  deploy:
    custom_states: [SKIPPED]
    action: {type: echo, configuration: {output: deployed}}
    conditions:
      - type: skip
        if:
          - value: "{{ input.env }}"
            operator: IN
            expected: "dev, test"
        then: {this: SKIPPED, notify: PRUNE}
        message: "not deploying to {{ input.env }}"
  notify:
    dependencies: [deploy]
    action: {type: echo, configuration: {output: notified}}
  cleanup:
    dependencies: ["deploy:SKIPPED"]
    action: {type: echo, configuration: {output: "{{ step.deploy.error }}"}}
"#,
    )
    .await;
    let id = fx.create("skip", json!({"env": "test"})).await;
    let (_, steps) = fx.wait_done(&id).await;
    assert_eq!(state_of(&steps, "deploy"), "SKIPPED");
    assert_eq!(
        step(&steps, "deploy").attempts,
        0,
        "a skipped step does not run"
    );
    assert_eq!(
        step(&steps, "deploy").error.as_deref(),
        Some("not deploying to test")
    );
    assert_eq!(state_of(&steps, "notify"), "PRUNE");
    assert_eq!(state_of(&steps, "cleanup"), "DONE");
    assert_eq!(
        step(&steps, "cleanup").output,
        json!("not deploying to test")
    );

    let id = fx.create("skip", json!({"env": "prod"})).await;
    let (_, steps) = fx.wait_done(&id).await;
    assert_eq!(state_of(&steps, "deploy"), "DONE");
    assert_eq!(state_of(&steps, "notify"), "DONE");
    assert_eq!(state_of(&steps, "cleanup"), "PRUNE");
}

async fn check_condition_turns_a_404_into_done_or_a_custom_state(b: Backend) {
    let srv = Srv::start().await;
    let fx = Fx::new(b).await;
    fx.put(&format!(
        r#"
name: check404
auto_runnable: true
steps:
  lookup:
    action:
      type: http
      configuration: {{url: "{u404}"}}
    conditions:
      - type: check
        if:
          - value: "{{{{ step.this.metadata.http_status }}}}"
            operator: EQ
            expected: "404"
        then: {{this: DONE}}
  exists:
    custom_states: [ABSENT]
    action:
      type: http
      configuration: {{url: "{u404}"}}
    conditions:
      - type: check
        if:
          - value: "{{{{ step.this.metadata.http_status }}}}"
            operator: EQ
            expected: "404"
        then: {{this: ABSENT}}
        message: "resource is absent"
  create:
    dependencies: ["exists:ABSENT"]
    action:
      type: echo
      configuration: {{output: "creating after {{{{ step.exists.metadata.http_status }}}}"}}
  teapot:
    action:
      type: http
      configuration: {{url: "{u418}"}}
    conditions:
      - type: check
        if:
          - value: "{{{{ step.this.metadata.http_status }}}}"
            operator: EQ
            expected: "404"
        then: {{this: DONE}}
"#,
        u404 = srv.url("/status/404"),
        u418 = srv.url("/status/418"),
    ))
    .await;
    let id = fx.create("check404", json!({})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    // The 418 is not covered by the check: it stays a client error and blocks the task.
    assert_eq!(task.state, TaskState::Blocked);
    assert_eq!(state_of(&steps, "teapot"), "CLIENT_ERROR");
    assert!(
        step(&steps, "teapot")
            .error
            .as_deref()
            .unwrap()
            .contains("418"),
        "{steps:#?}"
    );
    assert_eq!(state_of(&steps, "lookup"), "DONE");
    assert_eq!(step(&steps, "lookup").output["status"], json!(404));
    assert_eq!(state_of(&steps, "exists"), "ABSENT");
    assert_eq!(
        step(&steps, "exists").error.as_deref(),
        Some("resource is absent")
    );
    assert_eq!(state_of(&steps, "create"), "DONE");
    assert_eq!(step(&steps, "create").output, json!("creating after 404"));
    assert_eq!(srv.calls(&format!("{id}/lookup")), 1);
    assert_eq!(srv.calls(&format!("{id}/exists")), 1);
}

async fn retry_now_loops_until_a_counter_is_reached(b: Backend) {
    let srv = Srv::start().await;
    let fx = Fx::new(b).await;
    fx.put(&format!(
        r#"
name: loop
auto_runnable: true
steps:
  count:
    action:
      type: echo
      configuration:
        output: {{n: "{{{{ step.this.attempts }}}}"}}
    conditions:
      - type: check
        if:
          - value: "{{{{ step.this.output.n }}}}"
            operator: LT
            expected: "4"
        then: {{this: RETRY_NOW}}
  poll:
    action:
      type: http
      configuration: {{url: "{url}"}}
    conditions:
      - type: check
        if:
          - value: "{{{{ step.this.output.calls }}}}"
            operator: LT
            expected: "3"
        then: {{this: RETRY_NOW}}
"#,
        url = srv.url("/status/200"),
    ))
    .await;
    let id = fx.create("loop", json!({})).await;
    let (task, steps) = fx.wait_done(&id).await;
    assert_eq!(step(&steps, "count").attempts, 4);
    assert_eq!(step(&steps, "count").output, json!({"n": 4}));
    assert_eq!(step(&steps, "poll").attempts, 3);
    assert_eq!(step(&steps, "poll").output["calls"], json!(3));
    assert_eq!(srv.calls(&format!("{id}/poll")), 3);
    assert_eq!(task.run_count, 1, "RETRY_NOW loops inside one run");
}

async fn retry_now_is_bounded_by_max_retries(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: endless
auto_runnable: true
steps:
  spin:
    max_retries: 5
    action: {type: echo, configuration: {output: 1}}
    conditions:
      - type: check
        if: [{value: "1", operator: EQ, expected: "1"}]
        then: {this: RETRY_NOW}
"#,
    )
    .await;
    let id = fx.create("endless", json!({})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Blocked);
    let s = step(&steps, "spin");
    assert_eq!(s.state, StepState::FatalError);
    assert_eq!(s.attempts, 6);
    assert!(
        s.error.as_deref().unwrap().contains("max_retries 5"),
        "{s:?}"
    );
}

async fn skip_condition_setting_retry_now_on_its_own_step_does_not_hang(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: skiploop
auto_runnable: true
steps:
  a:
    action: {type: echo, configuration: {output: 1}}
    conditions:
      - type: skip
        if: [{value: "1", operator: EQ, expected: "1"}]
        then: {this: RETRY_NOW}
  b:
    action: {type: echo, configuration: {output: 2}}
"#,
    )
    .await;
    let id = fx.create("skiploop", json!({})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Blocked);
    assert_eq!(state_of(&steps, "a"), "FATAL_ERROR");
    assert!(
        step(&steps, "a")
            .error
            .as_deref()
            .unwrap()
            .contains("RETRY_NOW"),
        "{steps:#?}"
    );
    assert_eq!(state_of(&steps, "b"), "DONE");
}

async fn a_step_that_can_never_run_is_a_deadlock(b: Backend) {
    // A skip condition that holds but sets only another step leaves its own step TODO and
    // already considered in this run: nothing can run it, and the task says so.
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: deadlock
auto_runnable: true
steps:
  a:
    action: {type: echo, configuration: {output: 1}}
    conditions:
      - type: skip
        if: [{value: "x", operator: EQ, expected: "x"}]
        then: {b: DONE}
  b:
    dependencies: [a]
    action: {type: echo, configuration: {output: 2}}
  c:
    dependencies: [a]
    action: {type: echo, configuration: {output: 3}}
"#,
    )
    .await;
    let id = fx.create("deadlock", json!({})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Blocked);
    assert_eq!(state_of(&steps, "a"), "TODO");
    assert_eq!(state_of(&steps, "b"), "DONE");
    assert_eq!(step(&steps, "b").attempts, 0);
    assert_eq!(state_of(&steps, "c"), "TODO");
    let events = fx.store().task_events(&id).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.kind, "blocked");
    assert!(
        last.detail["reason"].as_str().unwrap().contains("deadlock"),
        "{last:?}"
    );
    assert_eq!(last.detail["steps"], json!(["a", "c"]));
}

// ---------------------------------------------------------------- foreach and outputs

async fn foreach_parallel_children_and_their_outputs(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: fanout
auto_runnable: true
inputs:
  - name: items
    type: number
    collection: true
result_format:
  outputs: "{{ step.square.children | map(attribute='output') | list }}"
  items: "{{ step.square.children | map(attribute='item') | list }}"
  sum: "{{ step.total.output }}"
steps:
  square:
    foreach: "{{ input.items }}"
    action:
      type: echo
      configuration:
        output: "{{ iterator * iterator }}"
  total:
    dependencies: [square]
    action:
      type: echo
      configuration:
        output: "{{ step.square.children | map(attribute='output') | sum }}"
"#,
    )
    .await;
    let id = fx.create("fanout", json!({"items": [1, 2, 3, 4]})).await;
    let (task, steps) = fx.wait_done(&id).await;
    assert_eq!(
        task.result,
        json!({"outputs": [1, 4, 9, 16], "items": [1, 2, 3, 4], "sum": 30})
    );
    assert_eq!(state_of(&steps, "square"), "DONE");
    for i in 0..4 {
        let child = step(&steps, &format!("square-{i}"));
        assert_eq!(child.foreach_parent.as_deref(), Some("square"));
        assert_eq!(child.state, StepState::Done);
        assert_eq!(child.item, Some(json!(i + 1)));
    }

    // An empty list expands to nothing and the parent is DONE at once.
    let id = fx.create("fanout", json!({"items": []})).await;
    let (task, steps) = fx.wait_done(&id).await;
    assert_eq!(task.result, json!({"outputs": [], "items": [], "sum": 0}));
    assert_eq!(steps.len(), 2);
}

async fn foreach_sequence_runs_children_one_after_another(b: Backend) {
    let srv = Srv::start().await;
    let fx = Fx::new(b).await;
    fx.put(&format!(
        r#"
name: seq
auto_runnable: true
result_format: "{{{{ step.call.children | map(attribute='output') | map(attribute='key') | list }}}}"
steps:
  call:
    foreach: '["a", "b", "c"]'
    foreach_strategy: sequence
    action:
      type: http
      configuration: {{url: "{url}"}}
  par:
    foreach: '[1, 2, 3]'
    action:
      type: http
      configuration: {{url: "{url}"}}
"#,
        url = srv.url("/slow/100"),
    ))
    .await;
    let id = fx.create("seq", json!({})).await;
    let (task, steps) = fx.wait_done(&id).await;
    assert_eq!(
        task.result,
        json!([
            format!("{id}/call-0"),
            format!("{id}/call-1"),
            format!("{id}/call-2")
        ])
    );
    let spans = srv.spans.lock().unwrap().clone();
    let span = |key: String| {
        spans
            .iter()
            .find(|s| s.0 == key)
            .cloned()
            .unwrap_or_else(|| panic!("no call {key}"))
    };
    for i in 1..3 {
        let prev = span(format!("{id}/call-{}", i - 1));
        let next = span(format!("{id}/call-{i}"));
        assert!(
            next.1 >= prev.2,
            "call-{i} started before call-{} ended",
            i - 1
        );
    }
    // The parallel ones overlap.
    let p: Vec<_> = (0..3).map(|i| span(format!("{id}/par-{i}"))).collect();
    let latest_start = p.iter().map(|s| s.1).max().unwrap();
    let earliest_end = p.iter().map(|s| s.2).min().unwrap();
    assert!(
        latest_start < earliest_end,
        "parallel children did not overlap"
    );
    assert!(
        steps
            .iter()
            .filter(|s| s.foreach_parent.is_some())
            .all(|s| s.state == StepState::Done && s.attempts == 1)
    );
}

async fn foreach_that_is_not_a_list_is_fatal(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: badlist
auto_runnable: true
inputs:
  - name: x
steps:
  each:
    foreach: "{{ input.x }}"
    action: {type: echo, configuration: {output: "{{ iterator }}"}}
"#,
    )
    .await;
    let id = fx.create("badlist", json!({"x": "nope"})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Blocked);
    assert_eq!(state_of(&steps, "each"), "FATAL_ERROR");
    assert!(
        step(&steps, "each")
            .error
            .as_deref()
            .unwrap()
            .contains("list"),
        "{steps:#?}"
    );
}

async fn output_strategies_template_and_merge(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: outputs
auto_runnable: true
steps:
  tpl:
    action:
      type: echo
      configuration:
        output: {id: 42, noise: [1, 2, 3]}
      output:
        strategy: template
        format:
          the_id: "{{ step.this.output.id }}"
          label: "item-{{ step.this.output.id }}"
  merged:
    action:
      type: echo
      configuration:
        output: {id: 7, nested: {a: 1}}
      output:
        strategy: merge
        format:
          extra: "{{ step.this.output.id + 1 }}"
          nested: {b: 2}
  user:
    dependencies: [tpl, merged]
    action:
      type: echo
      configuration:
        output: "{{ step.tpl.output.label }}/{{ step.merged.output.extra }}"
"#,
    )
    .await;
    let id = fx.create("outputs", json!({})).await;
    let (_, steps) = fx.wait_done(&id).await;
    assert_eq!(
        step(&steps, "tpl").output,
        json!({"the_id": 42, "label": "item-42"})
    );
    assert_eq!(
        step(&steps, "merged").output,
        json!({"id": 7, "nested": {"a": 1, "b": 2}, "extra": 8})
    );
    assert_eq!(step(&steps, "user").output, json!("item-42/8"));
}

async fn json_schema_failure_is_fatal_and_blocks_the_task(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: schema
auto_runnable: true
inputs:
  - name: count
    type: number
steps:
  produce:
    json_schema:
      type: object
      required: [count]
      properties:
        count: {type: integer, minimum: 1}
    action:
      type: echo
      configuration:
        output: {count: "{{ input.count }}"}
  consume:
    dependencies: [produce]
    action: {type: echo, configuration: {output: ok}}
"#,
    )
    .await;
    let id = fx.create("schema", json!({"count": 0})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Blocked);
    let s = step(&steps, "produce");
    assert_eq!(s.state, StepState::FatalError);
    assert!(s.error.as_deref().unwrap().contains("json_schema"), "{s:?}");
    assert!(s.error.as_deref().unwrap().contains("/count"), "{s:?}");
    assert_eq!(state_of(&steps, "consume"), "TODO");

    let id = fx.create("schema", json!({"count": 3})).await;
    fx.wait_done(&id).await;
}

// ---------------------------------------------------------------- errors and retries

async fn client_error_blocks_the_task_and_retry_runs_it_again(b: Backend) {
    let srv = Srv::start().await;
    let fx = Fx::new(b).await;
    fx.put(&format!(
        r#"
name: client
auto_runnable: true
result_format: "{{{{ step.call.output.calls }}}}"
steps:
  first:
    action: {{type: echo, configuration: {{output: 1}}}}
  call:
    dependencies: [first]
    action:
      type: http
      configuration: {{url: "{url}", method: POST, body: {{a: 1}}}}
  after:
    dependencies: [call]
    action: {{type: echo, configuration: {{output: 2}}}}
"#,
        url = srv.url("/client/1"),
    ))
    .await;
    let id = fx.create("client", json!({})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Blocked);
    let s = step(&steps, "call");
    assert_eq!(s.state, StepState::ClientError);
    assert_eq!(s.attempts, 1);
    assert!(s.error.as_deref().unwrap().contains("400"), "{s:?}");
    assert_eq!(s.metadata["http_status"], json!(400));
    assert_eq!(state_of(&steps, "after"), "TODO");
    assert!(fx.event_kinds(&id).await.contains(&"blocked".to_string()));

    fx.engine.retry(&id, "operator").await.unwrap();
    // Only a BLOCKED or PAUSED task can be retried.
    assert!(matches!(
        fx.engine.retry(&id, "operator").await,
        Err(EngineError::Conflict(_))
    ));

    let (task, steps) = fx.wait_done(&id).await;
    assert_eq!(task.result, json!(2));
    assert_eq!(task.run_count, 2);
    assert_eq!(step(&steps, "call").attempts, 2);
    assert_eq!(step(&steps, "call").error, None);
    assert_eq!(
        step(&steps, "first").attempts,
        1,
        "DONE steps are not run again"
    );
    assert_eq!(
        srv.calls(&format!("{id}/call")),
        2,
        "both attempts used the same idempotency key"
    );
    let events = fx.store().task_events(&id).await.unwrap();
    let retried = events
        .iter()
        .find(|e| e.kind == "retried")
        .expect("retried event");
    assert_eq!(retried.actor, "operator");
    assert_eq!(retried.from_state.as_deref(), Some("BLOCKED"));
    assert_eq!(retried.to_state.as_deref(), Some("READY"));
    assert!(matches!(
        fx.engine.retry(&id, "operator").await,
        Err(EngineError::Conflict(_))
    ));
}

async fn server_error_schedules_a_retry_with_backoff(b: Backend) {
    let srv = Srv::start().await;
    let fx = Fx::new(b).await;
    fx.put(&format!(
        r#"
name: server
auto_runnable: true
steps:
  call:
    action:
      type: http
      configuration: {{url: "{url}"}}
"#,
        url = srv.url("/flaky/100"),
    ))
    .await;
    let before = now_ms();
    let id = fx.create("server", json!({})).await;
    let (task, steps) = fx
        .wait_for(&id, "a scheduled retry", |t, s| {
            t.state == TaskState::Ready && s[0].state == StepState::ServerError
        })
        .await;
    let s = step(&steps, "call");
    assert_eq!(s.attempts, 1);
    assert!(s.error.as_deref().unwrap().contains("500"), "{s:?}");
    let next = s.next_retry_at.expect("next_retry_at");
    // ~10 s with ±10 % jitter.
    assert!(
        next >= before + 8_500 && next <= now_ms() + 11_500,
        "next retry in {} ms",
        next - before
    );
    assert_eq!(task.due_at, Some(next));
    assert_eq!(task.run_count, 1);
    let kinds = fx.event_kinds(&id).await;
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("retry_scheduled"),
        "{kinds:?}"
    );
    // Nothing runs it before it is due.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(srv.calls(&format!("{id}/call")), 1);
    assert_eq!(fx.get(&id).await.0.state, TaskState::Ready);
}

async fn max_retries_and_retry_max_are_enforced(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: noretry
auto_runnable: true
steps:
  flaky:
    max_retries: 0
    action: {type: echo, configuration: {output: 1, error_type: server, error_message: "boom"}}
"#,
    )
    .await;
    let id = fx.create("noretry", json!({})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Blocked);
    let s = step(&steps, "flaky");
    assert_eq!(s.state, StepState::FatalError);
    assert_eq!(s.attempts, 1);
    let err = s.error.as_deref().unwrap();
    assert!(
        err.contains("gave up after 1 attempts") && err.contains("boom"),
        "{err}"
    );
    assert!(s.next_retry_at.is_none(), "{s:?}");

    // The task-level limit: with retry_max 1 the first retriable failure blocks the task.
    fx.put(
        r#"
name: onerun
auto_runnable: true
retry_max: 1
steps:
  flaky:
    action: {type: echo, configuration: {output: 1, error_type: server}}
"#,
    )
    .await;
    let id = fx.create("onerun", json!({})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Blocked);
    assert_eq!(state_of(&steps, "flaky"), "SERVER_ERROR");
    let events = fx.store().task_events(&id).await.unwrap();
    assert!(
        events.last().unwrap().detail["reason"]
            .as_str()
            .unwrap()
            .contains("retry_max"),
        "{events:?}"
    );
}

async fn step_timeout_is_a_server_error(b: Backend) {
    let srv = Srv::start().await;
    let fx = Fx::new(b).await;
    fx.put(&format!(
        r#"
name: timeout
auto_runnable: true
steps:
  slow:
    timeout: 200ms
    action:
      type: http
      configuration: {{url: "{url}"}}
"#,
        url = srv.url("/slow/3000"),
    ))
    .await;
    let started = Instant::now();
    let id = fx.create("timeout", json!({})).await;
    let (_, steps) = fx
        .wait_for(&id, "the timeout", |t, s| {
            t.state == TaskState::Ready && s[0].state == StepState::ServerError
        })
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let s = step(&steps, "slow");
    assert!(
        s.error
            .as_deref()
            .unwrap()
            .contains("timed out after 200ms"),
        "{s:?}"
    );
    assert!(s.next_retry_at.is_some());
    assert_eq!(s.attempts, 1);
}

async fn templating_error_in_configuration_is_fatal(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: badtpl
auto_runnable: true
steps:
  a:
    action: {type: echo, configuration: {output: {x: 1}}}
  b:
    dependencies: [a]
    action: {type: echo, configuration: {output: "{{ step.a.output.missing.deeper }}"}}
"#,
    )
    .await;
    let id = fx.create("badtpl", json!({})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Blocked);
    let s = step(&steps, "b");
    assert_eq!(s.state, StepState::FatalError);
    let err = s.error.as_deref().unwrap();
    assert!(
        err.contains("templating error in configuration") && err.contains("undefined"),
        "{err}"
    );
    assert_eq!(s.attempts, 1);
}

// ---------------------------------------------------------------- task lifecycle

async fn non_auto_runnable_task_waits_for_a_resolver(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: manual
inputs:
  - name: who
resolver_inputs:
  - name: ticket
    type: number
result_format: "{{ step.greet.output }}"
steps:
  greet:
    action: {type: echo, configuration: {output: "hello {{ input.who }} for #{{ resolver_input.ticket }}"}}
"#,
    )
    .await;
    let id = fx.create("manual", json!({"who": "bob"})).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (task, steps) = fx.get(&id).await;
    assert_eq!(task.state, TaskState::Todo);
    assert_eq!(task.due_at, None);
    assert_eq!(step(&steps, "greet").state, StepState::Todo);

    match fx
        .engine
        .resolve(&id, "alice", json!({"ticket": "x"}))
        .await
    {
        Err(EngineError::Invalid { field, .. }) => assert_eq!(field, "resolver_inputs.ticket"),
        other => panic!("{other:?}"),
    }
    fx.engine
        .resolve(&id, "alice", json!({"ticket": 12}))
        .await
        .unwrap();
    let (task, _) = fx.wait_done(&id).await;
    assert_eq!(task.result, json!("hello bob for #12"));
    assert_eq!(task.resolver_inputs, json!({"ticket": 12}));
    let events = fx.store().task_events(&id).await.unwrap();
    let resolved = events.iter().find(|e| e.kind == "resolved").unwrap();
    assert_eq!(resolved.actor, "alice");
    // Resolving twice is a conflict.
    assert!(matches!(
        fx.engine.resolve(&id, "alice", json!({"ticket": 1})).await,
        Err(EngineError::Conflict(_))
    ));
    assert!(matches!(
        fx.engine.resolve("nope", "alice", json!({})).await,
        Err(EngineError::NotFound { .. })
    ));
}

async fn cancel_stops_a_running_task(b: Backend) {
    let srv = Srv::start().await;
    let fx = Fx::new(b).await;
    fx.put(&format!(
        r#"
name: cancelme
auto_runnable: true
steps:
  slow:
    action:
      type: http
      configuration: {{url: "{url}"}}
  next:
    dependencies: [slow]
    action: {{type: echo, configuration: {{output: 1}}}}
"#,
        url = srv.url("/slow/5000"),
    ))
    .await;
    let id = fx.create("cancelme", json!({})).await;
    fx.wait_step(&id, "slow", StepState::Running).await;
    // Let the request reach the server.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    fx.engine.cancel(&id, "operator").await.unwrap();
    let (task, steps) = fx
        .wait_final(
            &id,
            &[TaskState::Cancelled, TaskState::Done, TaskState::Blocked],
        )
        .await;
    assert_eq!(task.state, TaskState::Cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cancel took {:?}",
        started.elapsed()
    );
    assert_eq!(state_of(&steps, "next"), "TODO");
    assert_ne!(state_of(&steps, "slow"), "DONE");
    let events = fx.store().task_events(&id).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.actor.as_str()),
        ("cancelled", "operator")
    );
    assert!(!taskhook_engine::running_ids(&fx.engine).contains(&id));
    // Final: nothing moves it again.
    assert!(matches!(
        fx.engine.retry(&id, "operator").await,
        Err(EngineError::Conflict(_))
    ));
    assert!(matches!(
        fx.engine.cancel(&id, "operator").await,
        Err(EngineError::Conflict(_))
    ));
}

async fn cancel_a_waiting_task(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: longsleep
auto_runnable: true
steps:
  nap:
    action: {type: sleep, configuration: {duration: 1h}}
"#,
    )
    .await;
    let id = fx.create("longsleep", json!({})).await;
    fx.wait_final(&id, &[TaskState::Waiting]).await;
    fx.engine.cancel(&id, "operator").await.unwrap();
    let (task, _) = fx.get(&id).await;
    assert_eq!(task.state, TaskState::Cancelled);
    let kinds = fx.event_kinds(&id).await;
    assert_eq!(kinds.last().map(String::as_str), Some("cancelled"));
}

async fn pause_lets_the_attempt_in_flight_finish_then_retry_resumes(b: Backend) {
    let srv = Srv::start().await;
    let fx = Fx::new(b).await;
    fx.put(&format!(
        r#"
name: pauseme
auto_runnable: true
steps:
  slow:
    action:
      type: http
      configuration: {{url: "{url}"}}
  next:
    dependencies: [slow]
    action: {{type: echo, configuration: {{output: "after {{{{ step.slow.output.slept }}}}"}}}}
"#,
        url = srv.url("/slow/400"),
    ))
    .await;
    let id = fx.create("pauseme", json!({})).await;
    fx.wait_step(&id, "slow", StepState::Running).await;
    fx.engine.pause(&id, "operator").await.unwrap();
    let (task, steps) = fx
        .wait_final(
            &id,
            &[
                TaskState::Paused,
                TaskState::Done,
                TaskState::Blocked,
                TaskState::Ready,
            ],
        )
        .await;
    assert_eq!(task.state, TaskState::Paused, "{steps:#?}");
    assert_eq!(
        state_of(&steps, "slow"),
        "DONE",
        "the attempt in flight finishes"
    );
    assert_eq!(
        state_of(&steps, "next"),
        "TODO",
        "no new attempt starts once paused"
    );
    // A paused task stays paused.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fx.get(&id).await.0.state, TaskState::Paused);

    fx.engine.retry(&id, "operator").await.unwrap();
    let (_, steps) = fx.wait_done(&id).await;
    assert_eq!(step(&steps, "next").output, json!("after 400"));
    assert_eq!(srv.calls(&format!("{id}/slow")), 1);
    let kinds = fx.event_kinds(&id).await;
    assert!(
        kinds.contains(&"paused".to_string()) && kinds.contains(&"retried".to_string()),
        "{kinds:?}"
    );
}

async fn pause_a_waiting_task_then_retry(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: napper
auto_runnable: true
steps:
  nap:
    action: {type: sleep, configuration: {duration: 300ms}}
"#,
    )
    .await;
    let id = fx.create("napper", json!({})).await;
    fx.wait_final(&id, &[TaskState::Waiting]).await;
    fx.engine.pause(&id, "operator").await.unwrap();
    assert_eq!(fx.get(&id).await.0.state, TaskState::Paused);
    // The timer fires while paused: nothing happens.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(fx.get(&id).await.0.state, TaskState::Paused);
    fx.engine.retry(&id, "operator").await.unwrap();
    let (_, steps) = fx.wait_done(&id).await;
    assert_eq!(state_of(&steps, "nap"), "DONE");
}

async fn sleep_step_waits_without_holding_a_run(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: sleeper
auto_runnable: true
steps:
  nap:
    action: {type: sleep, configuration: {duration: 1s}}
  after:
    dependencies: [nap]
    action: {type: echo, configuration: {output: "woke at {{ step.nap.output.slept_until }}"}}
"#,
    )
    .await;
    let started = Instant::now();
    let id = fx.create("sleeper", json!({})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Waiting, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Waiting);
    let nap = step(&steps, "nap");
    assert_eq!(nap.state, StepState::Waiting);
    assert_eq!(task.due_at, nap.next_retry_at);
    // The run lets go of the task just after committing WAITING: well before the nap ends.
    let deadline = Instant::now() + Duration::from_millis(500);
    while taskhook_engine::running_ids(&fx.engine).contains(&id) {
        assert!(Instant::now() < deadline, "a waiting task holds no run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, steps) = fx.wait_done(&id).await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(step(&steps, "nap").attempts, 2);
    assert!(
        step(&steps, "after")
            .output
            .as_str()
            .unwrap()
            .starts_with("woke at ")
    );
    let kinds = fx.event_kinds(&id).await;
    assert_eq!(kinds, ["created", "claimed", "waiting", "claimed", "done"]);
}

// ---------------------------------------------------------------- subtasks

const CHILD: &str = r#"
name: kid
auto_runnable: true
inputs:
  - name: n
    type: number
  - name: nap
    optional: true
    default: 0s
result_format:
  doubled: "{{ step.double.output }}"
steps:
  nap:
    action: {type: sleep, configuration: {duration: "{{ input.nap }}"}}
  double:
    dependencies: [nap]
    action: {type: echo, configuration: {output: "{{ input.n * 2 }}"}}
"#;

async fn subtask_parent_waits_for_the_child_result(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(CHILD).await;
    fx.put(
        r#"
name: parent
auto_runnable: true
result_format: "{{ step.use.output }}"
steps:
  child:
    action:
      type: subtask
      configuration:
        template: kid
        inputs: {n: 21, nap: 200ms}
  use:
    dependencies: [child]
    action: {type: echo, configuration: {output: "{{ step.child.output.doubled }}"}}
"#,
    )
    .await;
    let id = fx.create("parent", json!({})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Waiting, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Waiting);
    assert_eq!(task.due_at, None, "a subtask wait has no timer");
    let child_id = step(&steps, "child").metadata["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (task, steps) = fx.wait_done(&id).await;
    assert_eq!(task.result, json!(42));
    assert_eq!(step(&steps, "child").metadata["state"], json!("DONE"));
    let (child, _) = fx.get(&child_id).await;
    assert_eq!(child.state, TaskState::Done);
    assert_eq!(child.parent_id.as_deref(), Some(id.as_str()));
    assert_eq!(child.requester, format!("task:{id}"));
    assert_eq!(
        child.idempotency_key.as_deref(),
        Some(format!("{id}/child").as_str())
    );
}

async fn subtask_that_ends_before_the_parent_run_ends_still_wakes_it(b: Backend) {
    // `slow` keeps the parent's run going while the child is claimed and finishes: the child's
    // wake-up lands while the parent is RUNNING, and the parent's WAITING end must honour it.
    let srv = Srv::start().await;
    let fx = Fx::new(b).await;
    fx.put(CHILD).await;
    fx.put(&format!(
        r#"
name: racer
auto_runnable: true
result_format: "{{{{ step.child.output.doubled }}}}"
steps:
  child:
    action:
      type: subtask
      configuration: {{template: kid, inputs: {{n: 5}}}}
  slow:
    action:
      type: http
      configuration: {{url: "{url}"}}
"#,
        url = srv.url("/slow/300"),
    ))
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(fx.create("racer", json!({})).await);
    }
    for id in &ids {
        let started = Instant::now();
        let (task, _) = fx.wait_done(id).await;
        assert_eq!(task.result, json!(10));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }

    // And with nothing else in the parent: many at once.
    fx.put(
        r#"
name: quick
auto_runnable: true
result_format: "{{ step.child.output.doubled }}"
steps:
  child:
    action:
      type: subtask
      configuration: {template: kid, inputs: {n: 1}}
"#,
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(fx.create("quick", json!({})).await);
    }
    for id in &ids {
        let (task, _) = fx.wait_done(id).await;
        assert_eq!(task.result, json!(2));
    }
}

// ---------------------------------------------------------------- crash recovery

const RECOVER: &str = r#"
name: recover
auto_runnable: true
inputs:
  - name: idem
    type: bool
steps:
  a:
    idempotent: true
    action: {type: echo, configuration: {output: a}}
  b:
    action: {type: echo, configuration: {output: b}}
  c:
    dependencies: [a, b]
    action: {type: echo, configuration: {output: c}}
"#;

/// Creates a task and leaves it as a process that died mid-step would: claimed, with `step`
/// RUNNING (attempt 1). Returns the database and the task id.
///
/// SQLite belongs to one process, so the next start takes over whatever is RUNNING. On
/// PostgreSQL other instances may be alive, and a dead one is known by its expired lease:
/// there the dead process's lease has already run out when the next engine starts.
async fn crashed_task(b: Backend, running_step: &str) -> (TestDb, String) {
    let db = fresh_db(b).await;
    let engine = engine_on(&db).await;
    put_on(&engine, RECOVER).await;
    let id = create_on(&engine, "recover", json!({"idem": true})).await;
    let store = engine.store().clone();
    let lease_ms = match b {
        Backend::Sqlite => 60_000,
        Backend::Postgres => -1,
    };
    let claimed = store
        .claim_due("dead-process", now_ms(), 10, lease_ms)
        .await
        .unwrap();
    let c = claimed
        .into_iter()
        .find(|c| c.task.id == id)
        .expect("claimed");
    let mut s = c
        .steps
        .iter()
        .find(|s| s.name == running_step)
        .unwrap()
        .clone();
    s.state = StepState::Running;
    s.attempts = 1;
    store
        .save_steps(&id, c.task.lease_epoch, vec![s])
        .await
        .unwrap();
    store.close();
    drop(engine);
    (db, id)
}

async fn crash_recovery_reruns_an_idempotent_step(b: Backend) {
    let (db, id) = crashed_task(b, "a").await;
    let fx = Fx::open(db).await;
    let (task, steps) = fx.wait_done(&id).await;
    assert_eq!(step(&steps, "a").attempts, 2);
    assert_eq!(step(&steps, "b").attempts, 1);
    assert!(steps.iter().all(|s| s.state == StepState::Done));
    assert_eq!(task.run_count, 2);
    let kinds = fx.event_kinds(&id).await;
    assert_eq!(
        kinds,
        ["created", "claimed", "recovered", "claimed", "done"]
    );
}

async fn crash_recovery_blocks_on_a_non_idempotent_step(b: Backend) {
    let (db, id) = crashed_task(b, "b").await;
    let fx = Fx::open(db).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Blocked);
    let b = step(&steps, "b");
    assert_eq!(b.state, StepState::Crashed);
    assert!(
        b.error.as_deref().unwrap().contains("not idempotent"),
        "{b:?}"
    );
    let events = fx.store().task_events(&id).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.kind, "blocked");
    assert_eq!(last.detail["steps"], json!(["b"]));
    assert!(events.iter().any(|e| e.kind == "recovered"));

    // A human checked: retry runs it again.
    fx.engine.retry(&id, "operator").await.unwrap();
    let (_, steps) = fx.wait_done(&id).await;
    assert_eq!(step(&steps, "b").attempts, 2);
    assert_eq!(step(&steps, "b").error, None);
}

// ---------------------------------------------------------------- creation

async fn tasks_keep_the_template_version_they_started_with(b: Backend) {
    let fx = Fx::new(b).await;
    let v1 = fx.put("name: pinned\nresult_format: \"{{ step.a.output }}\"\nsteps:\n  a:\n    action: {type: echo, configuration: {output: v1}}\n").await;
    let first = fx.create("pinned", json!({})).await;
    let v2 = fx.put("name: pinned\nresult_format: \"{{ step.a.output }}\"\nsteps:\n  a:\n    action: {type: echo, configuration: {output: v2}}\n").await;
    assert_eq!((v1, v2), (1, 2));
    // The same body again is not a new version.
    let again = fx.put("name: pinned\nresult_format: \"{{ step.a.output }}\"\nsteps:\n  a:\n    action: {type: echo, configuration: {output: v2}}\n").await;
    assert_eq!(again, 2);
    let second = fx.create("pinned", json!({})).await;
    fx.engine.resolve(&first, "u", json!({})).await.unwrap();
    fx.engine.resolve(&second, "u", json!({})).await.unwrap();
    let (t1, _) = fx.wait_done(&first).await;
    let (t2, _) = fx.wait_done(&second).await;
    assert_eq!((t1.template_version, t1.result), (1, json!("v1")));
    assert_eq!((t2.template_version, t2.result), (2, json!("v2")));
}

async fn idempotency_key_returns_the_same_task(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put("name: once\nauto_runnable: true\nsteps:\n  a:\n    action: {type: echo, configuration: {output: 1}}\n").await;
    let req = CreateTask {
        template: "once".into(),
        requester: "hook".into(),
        idempotency_key: Some("delivery-1".into()),
        ..Default::default()
    };
    let (t1, created1) = fx.engine.create_task(req.clone()).await.unwrap();
    let (t2, created2) = fx.engine.create_task(req.clone()).await.unwrap();
    assert!(created1 && !created2);
    assert_eq!(t1.id, t2.id);
    let (t3, created3) = fx
        .engine
        .create_task(CreateTask {
            idempotency_key: Some("delivery-2".into()),
            ..req
        })
        .await
        .unwrap();
    assert!(created3);
    assert_ne!(t3.id, t1.id);
    fx.wait_done(&t1.id).await;
    fx.wait_done(&t3.id).await;
    let events = fx.store().task_events(&t1.id).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "created").count(), 1);
}

async fn input_errors_name_the_input(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: typed
auto_runnable: true
title_format: "deploy {{ input.x }}"
inputs:
  - name: x
    type: number
  - name: env
    legal_values: [dev, prod]
    default: dev
steps:
  a:
    action: {type: echo, configuration: {output: "{{ input.x }} {{ input.env }}"}}
"#,
    )
    .await;
    let invalid = |r: Result<_, EngineError>| match r {
        Err(EngineError::Invalid { field, message }) => (field, message),
        Err(other) => panic!("expected Invalid, got {other:?}"),
        Ok(_) => panic!("expected Invalid, got Ok"),
    };
    let req = |inputs: Value| CreateTask {
        template: "typed".into(),
        inputs,
        requester: "u".into(),
        ..Default::default()
    };
    let (field, message) = invalid(fx.engine.create_task(req(json!({"x": "abc"}))).await);
    assert_eq!(field, "inputs.x");
    assert!(message.contains("number"), "{message}");
    let (field, message) = invalid(fx.engine.create_task(req(json!({}))).await);
    assert_eq!((field.as_str(), message.as_str()), ("inputs.x", "required"));
    let (field, _) = invalid(
        fx.engine
            .create_task(req(json!({"x": 1, "env": "qa"})))
            .await,
    );
    assert_eq!(field, "inputs.env");
    let (field, _) = invalid(fx.engine.create_task(req(json!({"x": 1, "y": 2}))).await);
    assert_eq!(field, "inputs.y");
    let (field, _) = invalid(fx.engine.create_task(req(json!([1]))).await);
    assert_eq!(field, "inputs");
    match fx
        .engine
        .create_task(CreateTask {
            template: "missing".into(),
            ..req(json!({}))
        })
        .await
    {
        Err(EngineError::NotFound { what }) => assert!(what.contains("missing"), "{what}"),
        other => panic!("{other:?}"),
    }
    let (task, _) = fx.engine.create_task(req(json!({"x": 3}))).await.unwrap();
    assert_eq!(task.title, "deploy 3");
    assert_eq!(task.inputs, json!({"x": 3, "env": "dev"}));
    let (_, steps) = fx.wait_done(&task.id).await;
    assert_eq!(step(&steps, "a").output, json!("3 dev"));
}

async fn invalid_templates_are_refused_with_the_field(b: Backend) {
    let fx = Fx::new(b).await;
    let err = fx
        .engine
        .parse_template("name: bad\nsteps:\n  a:\n    dependencies: [nope]\n    action: {type: echo, configuration: {output: 1}}\n")
        .await
        .unwrap_err();
    assert_eq!(err.errors[0].field, "steps.a.dependencies[0]");
    let err = fx
        .engine
        .parse_template("name: bad\nsteps:\n  a:\n    action: {type: nope}\n")
        .await
        .unwrap_err();
    assert_eq!(err.errors[0].field, "steps.a.action.type");
    // A blocked template creates no tasks.
    fx.put("name: frozen\nblocked: true\nsteps:\n  a:\n    action: {type: echo, configuration: {output: 1}}\n").await;
    let r = fx
        .engine
        .create_task(CreateTask {
            template: "frozen".into(),
            ..Default::default()
        })
        .await;
    assert!(matches!(r, Err(EngineError::Conflict(_))), "{r:?}");
}

async fn audit_trail_records_each_transition(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put("name: audited\nauto_runnable: true\nsteps:\n  a:\n    action: {type: echo, configuration: {output: 1}}\n").await;
    let id = fx.create("audited", json!({})).await;
    fx.wait_done(&id).await;
    let events = fx.store().task_events(&id).await.unwrap();
    let rows: Vec<(&str, &str, Option<&str>, Option<&str>)> = events
        .iter()
        .map(|e| {
            (
                e.kind.as_str(),
                e.actor.as_str(),
                e.from_state.as_deref(),
                e.to_state.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("created", "tester", None, Some("READY")),
            ("claimed", "engine", Some("READY"), Some("RUNNING")),
            ("done", "engine", Some("RUNNING"), Some("DONE")),
        ]
    );
    let owner = &fx.engine.config().owner;
    assert_eq!(events[1].detail, json!({"instance": owner}));
    assert!(
        events
            .windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].at <= w[1].at)
    );
}

async fn run_at_delays_the_start(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put("name: later\nauto_runnable: true\nsteps:\n  a:\n    action: {type: echo, configuration: {output: 1}}\n").await;
    let at = now_ms() + 300;
    let req = CreateTask {
        template: "later".into(),
        run_at: Some(at),
        ..Default::default()
    };
    let (task, _) = fx.engine.create_task(req).await.unwrap();
    assert_eq!(task.due_at, Some(at));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fx.get(&task.id).await.0.state, TaskState::Ready);
    fx.wait_done(&task.id).await;
    assert!(now_ms() >= at);
    // Claimed by the dispatcher, which names this instance in the audit trail.
    let events = fx.store().task_events(&task.id).await.unwrap();
    let claimed = events.iter().find(|e| e.kind == "claimed").unwrap();
    assert_eq!(
        claimed.detail,
        json!({"instance": fx.engine.config().owner})
    );
}

// ---------------------------------------------------------------- more template features

async fn foreach_conditions_apply_to_each_child(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: fecond
auto_runnable: true
result_format: "{{ step.each.children | map(attribute='output') | list }}"
steps:
  each:
    foreach: "[1, 2, 3, 4]"
    custom_states: [BIG]
    action: {type: echo, configuration: {output: "{{ iterator * 10 }}"}}
    conditions:
      - type: skip
        if: [{value: "{{ iterator }}", operator: EQ, expected: "2"}]
        then: {this: PRUNE}
      - type: check
        if: [{value: "{{ step.this.output }}", operator: GE, expected: "40"}]
        then: {this: BIG}
"#,
    )
    .await;
    let id = fx.create("fecond", json!({})).await;
    let (task, steps) = fx.wait_done(&id).await;
    assert_eq!(state_of(&steps, "each-0"), "DONE");
    assert_eq!(state_of(&steps, "each-1"), "PRUNE");
    assert_eq!(state_of(&steps, "each-2"), "DONE");
    assert_eq!(state_of(&steps, "each-3"), "BIG");
    assert_eq!(state_of(&steps, "each"), "DONE");
    assert_eq!(
        task.result,
        json!([10, 30, 40]),
        "pruned children are left out"
    );
}

async fn a_failed_foreach_child_blocks_and_retry_reruns_only_it(b: Backend) {
    let srv = Srv::start().await;
    let fx = Fx::new(b).await;
    fx.put(&format!(
        r#"
name: fefail
auto_runnable: true
result_format: "{{{{ step.each.children | map(attribute='state') | list }}}}"
steps:
  each:
    foreach: '["ok", "client/1", "ok"]'
    action:
      type: http
      configuration: {{url: "{base}/{{{{ 'status/200' if iterator == 'ok' else iterator }}}}"}}
  after:
    dependencies: [each]
    action: {{type: echo, configuration: {{output: "{{{{ step.each.children | length }}}}"}}}}
"#,
        base = srv.base,
    ))
    .await;
    let id = fx.create("fefail", json!({})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Blocked);
    assert_eq!(state_of(&steps, "each"), "EXPANDED");
    assert_eq!(state_of(&steps, "each-1"), "CLIENT_ERROR");
    assert_eq!(state_of(&steps, "after"), "TODO");
    fx.engine.retry(&id, "operator").await.unwrap();
    let (task, steps) = fx.wait_done(&id).await;
    assert_eq!(task.result, json!(["DONE", "DONE", "DONE"]));
    assert_eq!(step(&steps, "each-0").attempts, 1);
    assert_eq!(step(&steps, "each-1").attempts, 2);
    assert_eq!(step(&steps, "after").output, json!(3));
    assert_eq!(srv.calls(&format!("{id}/each-0")), 1);
    assert_eq!(srv.calls(&format!("{id}/each-1")), 2);
}

async fn variables_pre_hooks_and_base_configurations(b: Backend) {
    let srv = Srv::start().await;
    let fx = Fx::new(b).await;
    fx.put(&format!(
        r#"
name: features
auto_runnable: true
inputs:
  - name: who
variables:
  - name: greeting
    value: "hello {{{{ input.who }}}}"
  - name: shout
    value: "{{{{ var.greeting | upper }}}}"
base_configurations:
  api:
    url: "{base}/status/200"
    method: GET
steps:
  greet:
    action: {{type: echo, configuration: {{output: "{{{{ var.shout }}}}"}}}}
  hooked:
    pre_hook:
      type: echo
      configuration: {{output: {{token: "t-{{{{ input.who }}}}"}}}}
    action: {{type: echo, configuration: {{output: "got {{{{ pre_hook.output.token }}}}"}}}}
  call:
    action:
      type: http
      base_configuration: api
      configuration: {{method: POST}}
  badhook:
    pre_hook:
      type: echo
      configuration: {{output: 1, error_type: server, error_message: "hook down"}}
    action: {{type: echo, configuration: {{output: never}}}}
"#,
        base = srv.base,
    ))
    .await;
    let id = fx.create("features", json!({"who": "ann"})).await;
    let (_, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(step(&steps, "greet").output, json!("HELLO ANN"));
    assert_eq!(step(&steps, "hooked").output, json!("got t-ann"));
    assert_eq!(state_of(&steps, "call"), "DONE");
    assert_eq!(step(&steps, "call").output["status"], json!(200));
    let bad = step(&steps, "badhook");
    assert_eq!(bad.state, StepState::FatalError);
    assert!(
        bad.error
            .as_deref()
            .unwrap()
            .contains("pre_hook failed: hook down"),
        "{bad:?}"
    );
}

async fn condition_and_output_errors_are_fatal(b: Backend) {
    let fx = Fx::new(b).await;
    fx.put(
        r#"
name: errs
auto_runnable: true
steps:
  badcheck:
    action: {type: echo, configuration: {output: {a: 1}}}
    conditions:
      - type: check
        if: [{value: "{{ step.this.output.nope.deeper }}", operator: EQ, expected: "x"}]
        then: {this: DONE}
  badformat:
    action:
      type: echo
      configuration: {output: {a: 1}}
      output:
        strategy: template
        format: "{{ step.this.output.nope.deeper }}"
  badnumber:
    action: {type: echo, configuration: {output: abc}}
    conditions:
      - type: check
        if: [{value: "{{ step.this.output }}", operator: GT, expected: "1"}]
        then: {this: DONE}
"#,
    )
    .await;
    let id = fx.create("errs", json!({})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Blocked);
    for (name, text) in [
        ("badcheck", "check condition"),
        ("badformat", "output format"),
        ("badnumber", "not a number"),
    ] {
        let s = step(&steps, name);
        assert_eq!(s.state, StepState::FatalError, "{s:?}");
        assert!(s.error.as_deref().unwrap().contains(text), "{s:?}");
    }
}

async fn resource_limits_serialize_steps(b: Backend) {
    let srv = Srv::start().await;
    let config = EngineConfig {
        resource_limits: HashMap::from([("db".to_string(), 1)]),
        ..EngineConfig::default()
    };
    let fx = Fx::open_with(fresh_db(b).await, config).await;
    fx.put(&format!(
        r#"
name: limited
auto_runnable: true
steps:
  one:
    resources: [db]
    action: {{type: http, configuration: {{url: "{url}"}}}}
  two:
    resources: [db]
    action: {{type: http, configuration: {{url: "{url}"}}}}
  free:
    action: {{type: http, configuration: {{url: "{url}"}}}}
"#,
        url = srv.url("/slow/100"),
    ))
    .await;
    let id = fx.create("limited", json!({})).await;
    fx.wait_done(&id).await;
    let spans = srv.spans.lock().unwrap().clone();
    let span = |n: &str| {
        spans
            .iter()
            .find(|s| s.0 == format!("{id}/{n}"))
            .cloned()
            .unwrap()
    };
    let (one, two, free) = (span("one"), span("two"), span("free"));
    assert!(
        one.2 <= two.1 || two.2 <= one.1,
        "steps holding the same resource overlapped"
    );
    assert!(
        free.1 < one.1.max(two.1),
        "a step without the resource waited for it"
    );
}

// ---------------------------------------------------------------- shutdown

const SHUTDOWN: &str = r#"
name: shut
auto_runnable: true
inputs:
  - name: ms
    type: number
  - name: idem
    type: bool
steps:
  slow:
    idempotent: false
    action:
      type: http
      configuration: {url: "{{ input.url }}"}
  next:
    dependencies: [slow]
    action: {type: echo, configuration: {output: after}}
"#;

fn shutdown_template(srv: &Srv, ms: u64, idempotent: bool) -> String {
    SHUTDOWN
        .replace("{{ input.url }}", &srv.url(&format!("/slow/{ms}")))
        .replace("idempotent: false", &format!("idempotent: {idempotent}"))
}

/// Starts `shut` and shuts the engine down while `slow` runs; returns the database and the
/// task id.
async fn shut_down_mid_step(
    b: Backend,
    srv: &Srv,
    ms: u64,
    idempotent: bool,
    grace: Duration,
) -> (TestDb, String) {
    let db = fresh_db(b).await;
    let config = EngineConfig {
        shutdown_grace: grace,
        ..EngineConfig::default()
    };
    let engine = engine_with(&db, config).await;
    engine.start().await.unwrap();
    put_on(&engine, &shutdown_template(srv, ms, idempotent)).await;
    let id = create_on(&engine, "shut", json!({"ms": ms, "idem": idempotent})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, steps) = engine.store().get_task(&id).await.unwrap().unwrap();
        if step(&steps, "slow").state == StepState::Running {
            break;
        }
        assert!(Instant::now() < deadline, "slow never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    engine.shutdown().await;
    assert!(
        taskhook_engine::running_ids(&engine).is_empty(),
        "shutdown returned with runs in progress"
    );
    engine.store().close();
    drop(engine);
    (db, id)
}

async fn graceful_shutdown_lets_steps_finish_and_releases_the_task(b: Backend) {
    let srv = Srv::start().await;
    let (db, id) = shut_down_mid_step(b, &srv, 300, false, Duration::from_secs(5)).await;
    let store: Store = db.open().await;
    let (task, steps) = store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Ready, "{steps:#?}");
    assert_eq!(state_of(&steps, "slow"), "DONE");
    assert_eq!(state_of(&steps, "next"), "TODO");
    let events = store.task_events(&id).await.unwrap();
    assert_eq!(events.last().unwrap().kind, "released");
    store.close();
    drop(store);

    let fx = Fx::open(db).await;
    let (_, steps) = fx.wait_done(&id).await;
    assert_eq!(
        srv.calls(&format!("{id}/slow")),
        1,
        "the finished step is not run again"
    );
    assert_eq!(step(&steps, "next").output, json!("after"));
}

async fn shutdown_past_its_grace_treats_cut_attempts_like_a_crash(b: Backend) {
    let srv = Srv::start().await;
    // Idempotent: the cut attempt runs again on the next start.
    let (db, id) = shut_down_mid_step(b, &srv, 2_000, true, Duration::from_millis(100)).await;
    let fx = Fx::open(db).await;
    let (_, steps) = fx.wait_done(&id).await;
    assert_eq!(step(&steps, "slow").output["slept"], json!(2000));
    assert_eq!(srv.calls(&format!("{id}/slow")), 2);
    drop(fx);

    // Not idempotent: a human must check what the cut attempt did.
    let (db, id) = shut_down_mid_step(b, &srv, 2_000, false, Duration::from_millis(100)).await;
    let fx = Fx::open(db).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Blocked);
    assert_eq!(state_of(&steps, "slow"), "CRASHED");
    assert_eq!(
        srv.calls(&format!("{id}/slow")),
        1,
        "not run again by itself"
    );
}

async fn subtask_child_blocked_then_retried_and_child_cancelled(b: Backend) {
    let srv = Srv::start().await;
    let fx = Fx::new(b).await;
    fx.put(&format!(
        r#"
name: fragile
auto_runnable: true
inputs:
  - name: path
result_format: "{{{{ step.call.output.calls }}}}"
steps:
  call:
    action: {{type: http, configuration: {{url: "{base}{{{{ input.path }}}}"}}}}
"#,
        base = srv.base,
    ))
    .await;
    fx.put(
        r#"
name: boss
auto_runnable: true
inputs:
  - name: path
result_format: "{{ step.child.output }}"
steps:
  child:
    action:
      type: subtask
      configuration: {template: fragile, inputs: {path: "{{ input.path }}"}}
"#,
    )
    .await;

    // The child blocks: the parent keeps waiting; once the child is retried and done, the parent ends.
    let id = fx.create("boss", json!({"path": "/client/1"})).await;
    let (_, steps) = fx
        .wait_for(&id, "the child to start", |t, s| {
            t.state == TaskState::Waiting && s[0].metadata["task_id"].is_string()
        })
        .await;
    let child = step(&steps, "child").metadata["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    fx.wait_final(&child, &[TaskState::Blocked]).await;
    assert_eq!(fx.get(&id).await.0.state, TaskState::Waiting);
    fx.engine.retry(&child, "operator").await.unwrap();
    let (task, _) = fx.wait_done(&id).await;
    assert_eq!(task.result, json!(2));

    // The child is cancelled: the parent's step is a client error and the parent blocks.
    let id = fx.create("boss", json!({"path": "/slow/5000"})).await;
    let (_, steps) = fx
        .wait_for(&id, "the child to start", |_, s| {
            s[0].metadata["task_id"].is_string()
        })
        .await;
    let child = step(&steps, "child").metadata["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    fx.wait_step(&child, "call", StepState::Running).await;
    fx.engine.cancel(&child, "operator").await.unwrap();
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Blocked, TaskState::Done])
        .await;
    assert_eq!(task.state, TaskState::Blocked);
    let s = step(&steps, "child");
    assert_eq!(s.state, StepState::ClientError);
    assert!(s.error.as_deref().unwrap().contains("cancelled"), "{s:?}");
    assert_eq!(fx.get(&child).await.0.state, TaskState::Cancelled);
}

async fn functions_inline_and_from_the_library_run_with_their_arguments(b: Backend) {
    let fx = Fx::new(b).await;
    let lib = fx
        .engine
        .parse_function(
            "name: greet\ncustom_states: [GREETED]\naction:\n  type: echo\n  configuration:\n    output: \"hello {{ function_args.who }} from {{ task.template }}\"\nconditions:\n  - type: check\n    if: [{value: \"{{ function_args.mark }}\", operator: EQ, expected: \"yes\"}]\n    then: {this: GREETED}\n",
        )
        .await
        .unwrap();
    assert!(fx.engine.put_function(lib).await.unwrap());
    fx.put(
        r#"
name: uses-functions
auto_runnable: true
inputs: [{name: who}]
functions:
  shout:
    action: {type: echo, configuration: {output: "{{ function_args.text | upper }}"}}
steps:
  a:
    action: {type: greet, configuration: {who: "{{ input.who }}", mark: "no"}}
  b:
    action: {type: greet, configuration: {who: b, mark: "yes"}}
  c:
    dependencies: ["b:GREETED"]
    action: {type: shout, configuration: {text: "{{ step.a.output }}"}}
"#,
    )
    .await;
    let id = fx.create("uses-functions", json!({"who": "ada"})).await;
    let (task, steps) = fx.wait_done(&id).await;
    let by_name: std::collections::HashMap<_, _> =
        steps.iter().map(|s| (s.name.as_str(), s)).collect();
    assert_eq!(by_name["a"].output, json!("hello ada from uses-functions"));
    assert_eq!(by_name["b"].state, StepState::Custom("GREETED".into()));
    assert_eq!(by_name["c"].output, json!("HELLO ADA FROM USES-FUNCTIONS"));

    // Changing the library function does not change the stored template's copy.
    let changed = fx
        .engine
        .parse_function("name: greet\naction: {type: echo, configuration: {output: \"changed {{ function_args.who }}\"}}\n")
        .await
        .unwrap();
    assert!(!fx.engine.put_function(changed).await.unwrap());
    let id2 = fx.create("uses-functions", json!({"who": "bob"})).await;
    let (_, steps) = fx
        .wait_final(&id2, &[TaskState::Done, TaskState::Blocked])
        .await;
    let a = steps.iter().find(|s| s.name == "a").unwrap();
    assert_eq!(a.output, json!("hello bob from uses-functions"), "{task:?}");

    // A missing argument is caught when the template is loaded.
    let err = fx
        .engine
        .parse_template(
            "name: bad\nsteps:\n  a: {action: {type: greet, configuration: {mark: x}}}\n",
        )
        .await
        .unwrap_err();
    assert_eq!(err.errors[0].field, "steps.a.action.configuration");
    assert!(err.errors[0].message.contains("who"), "{err}");
    // A bad function document names the field.
    let err = fx
        .engine
        .parse_function("name: f\naction: {type: nope}\n")
        .await
        .unwrap_err();
    assert_eq!(err.errors[0].field, "functions.f.action.type");
}

/// A library function whose action is another function: the arguments chain (the outer
/// function's configuration, rendered with its arguments, is the inner one's), each level's
/// output shape and conditions apply with its own arguments, innermost first, and the
/// template keeps the whole chain as it was when it was put.
async fn functions_calling_functions_chain_their_arguments(b: Backend) {
    let fx = Fx::new(b).await;
    let inner = "name: hello::world\ncustom_states: [GREETED]\naction:\n  type: echo\n  configuration:\n    output: {value: \"Hello {{ function_args.name }} !\"}\nconditions:\n  - type: check\n    if: [{value: \"{{ step.this.output.value }}\", operator: EQ, expected: \"Hello ada lovelace !\"}]\n    then: {this: GREETED}\n";
    let outer = "name: hello::full\ncustom_states: [FULL]\naction:\n  type: hello::world\n  configuration: {name: \"{{ function_args.first }} {{ function_args.last }}\"}\n  output: {strategy: merge, format: {by: \"{{ function_args.first }}\"}}\nconditions:\n  - type: check\n    if:\n      - {value: \"{{ step.this.state }}\", operator: EQ, expected: GREETED}\n      - {value: \"{{ function_args.first }}\", operator: EQ, expected: ada}\n    then: {this: FULL}\n";
    // The outer one cannot be stored before the one it calls.
    let err = fx.engine.parse_function(outer).await.unwrap_err();
    assert_eq!(
        err.errors[0].field, "functions.hello::full.action.type",
        "{err}"
    );
    for text in [inner, outer] {
        let f = fx.engine.parse_function(text).await.unwrap();
        assert!(fx.engine.put_function(f).await.unwrap());
    }
    fx.put(
        r#"
name: nested
auto_runnable: true
inputs: [{name: first}]
steps:
  a:
    action:
      type: hello::full
      configuration: {first: "{{ input.first }}", last: lovelace}
      output: {strategy: merge, format: {from_step: "yes"}}
  b:
    dependencies: ["a:FULL"]
    action: {type: echo, configuration: {output: "{{ step.a.output.by }}"}}
"#,
    )
    .await;
    // Changed later, the inner function does not reach the stored template.
    let changed = fx
        .engine
        .parse_function("name: hello::world\naction: {type: echo, configuration: {output: {value: \"changed {{ function_args.name }}\"}}}\n")
        .await
        .unwrap();
    assert!(!fx.engine.put_function(changed).await.unwrap());
    let id = fx.create("nested", json!({"first": "ada"})).await;
    let (task, steps) = fx
        .wait_final(&id, &[TaskState::Done, TaskState::Blocked])
        .await;
    let by_name: std::collections::HashMap<_, _> =
        steps.iter().map(|s| (s.name.as_str(), s)).collect();
    assert_eq!(
        by_name["a"].output,
        json!({"value": "Hello ada lovelace !", "by": "ada", "from_step": "yes"}),
        "{task:?} {steps:#?}"
    );
    assert_eq!(by_name["a"].state, StepState::Custom("FULL".into()));
    assert_eq!(by_name["b"].output, json!("ada"));

    // A library function changed to call its caller would make a cycle: refused by name.
    let looping =
        "name: hello::world\naction: {type: hello::full, configuration: {first: a, last: b}}\n";
    let err = fx.engine.parse_function(looping).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("hello::world -> hello::full -> hello::world"),
        "{err}"
    );
}

/// Regression: a task whose run ended without recording it (a store error mid-run) stayed
/// RUNNING until the next restart. Once its lease expires, the engine makes it READY again.
async fn a_task_left_running_by_a_failed_run_is_picked_up_again(b: Backend) {
    let config = EngineConfig {
        orphan_sweep: std::time::Duration::from_millis(50),
        ..EngineConfig::default()
    };
    let fx = Fx::open_with(fresh_db(b).await, config).await;
    fx.put("name: orphan\nauto_runnable: true\nsteps:\n  a: {action: {type: echo, configuration: {output: done}}}\n")
        .await;
    // Due in an hour, so the engine leaves it alone for now.
    let in_an_hour = taskhook_store::now_ms() + 3_600_000;
    let req = taskhook_engine::CreateTask {
        template: "orphan".into(),
        requester: "test".into(),
        run_at: Some(in_an_hour),
        ..Default::default()
    };
    let (task, _) = fx.engine.create_task(req).await.unwrap();
    // A run that claims it and dies without a word: its lease is already over.
    let claimed = fx
        .store()
        .claim_due("ghost", in_an_hour, 10, -7_200_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(fx.get(&task.id).await.0.state, TaskState::Running);
    let (done, _) = fx.wait_done(&task.id).await;
    assert_eq!(done.run_count, 2, "claimed by the dead run, then run again");
    assert!(
        fx.event_kinds(&task.id)
            .await
            .contains(&"recovered".to_string())
    );
}

// ---------------------------------------------------------------- both backends

/// A fire whose sender vouches it is a first delivery (MQTT without DUP) is not checked
/// against earlier fires with its delivery id, which such a sender may reuse; a redelivery
/// (any other fire with the id) still is.
async fn a_first_delivery_fires_whatever_its_id_and_a_redelivery_dedupes(b: Backend) {
    let fx = Fx::new(b).await;
    let e = &fx.engine;
    put_on(
        e,
        "name: job\nauto_runnable: true\nsteps:\n  a: {action: {type: echo, configuration: {output: x}}}\n",
    )
    .await;
    let hook = taskhook_hooks::Hook::parse("template: job\n").unwrap();
    let (row, _) = e.put_hook("bus", "jobs", hook.clone()).await.unwrap();
    let event = |first_delivery| taskhook_hooks::Event {
        fired_by: "mqtt".into(),
        delivery_id: Some("mqtt:t:reused".into()),
        first_delivery,
        ..Default::default()
    };
    let one = e.fire(&row, &hook, event(true), None).await.unwrap();
    let two = e.fire(&row, &hook, event(true), None).await.unwrap();
    assert!(!one.duplicate && !two.duplicate);
    assert_ne!(one.fire.task_id, two.fire.task_id);
    assert!(one.fire.task_id.is_some() && two.fire.task_id.is_some());
    let again = e.fire(&row, &hook, event(false), None).await.unwrap();
    assert!(again.duplicate, "{again:?}");
}

/// For each test `async fn <name>(b: Backend)`, generates `mod <name>` with the tests
/// `sqlite` and `postgres` (which skips, with a visible message, when PostgreSQL is not
/// reachable; it fails instead with TASKHOOK_TEST_REQUIRE_SERVICES=1).
macro_rules! on_both {
    (#[$attr:meta] => $($name:ident),* $(,)?) => {$(
        mod $name {
            #[$attr]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }

            #[$attr]
            async fn postgres() {
                if taskhook_store::testing::postgres_available().await {
                    super::$name(super::Backend::Postgres).await
                }
            }
        }
    )*};
}

on_both!(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] =>
    linear_chain_passes_outputs_along,
    custom_state_and_any_dependencies,
    prune_propagates_through_a_chain_but_not_to_any,
    skip_condition_sets_a_custom_state_and_can_target_other_steps,
    check_condition_turns_a_404_into_done_or_a_custom_state,
    retry_now_loops_until_a_counter_is_reached,
    retry_now_is_bounded_by_max_retries,
    skip_condition_setting_retry_now_on_its_own_step_does_not_hang,
    a_step_that_can_never_run_is_a_deadlock,
    foreach_parallel_children_and_their_outputs,
    foreach_sequence_runs_children_one_after_another,
    foreach_that_is_not_a_list_is_fatal,
    output_strategies_template_and_merge,
    json_schema_failure_is_fatal_and_blocks_the_task,
    client_error_blocks_the_task_and_retry_runs_it_again,
    server_error_schedules_a_retry_with_backoff,
    max_retries_and_retry_max_are_enforced,
    step_timeout_is_a_server_error,
    templating_error_in_configuration_is_fatal,
    non_auto_runnable_task_waits_for_a_resolver,
    cancel_stops_a_running_task,
    cancel_a_waiting_task,
    pause_lets_the_attempt_in_flight_finish_then_retry_resumes,
    pause_a_waiting_task_then_retry,
    sleep_step_waits_without_holding_a_run,
    subtask_parent_waits_for_the_child_result,
    subtask_that_ends_before_the_parent_run_ends_still_wakes_it,
    crash_recovery_reruns_an_idempotent_step,
    crash_recovery_blocks_on_a_non_idempotent_step,
    tasks_keep_the_template_version_they_started_with,
    idempotency_key_returns_the_same_task,
    input_errors_name_the_input,
    invalid_templates_are_refused_with_the_field,
    audit_trail_records_each_transition,
    run_at_delays_the_start,
    foreach_conditions_apply_to_each_child,
    a_failed_foreach_child_blocks_and_retry_reruns_only_it,
    variables_pre_hooks_and_base_configurations,
    condition_and_output_errors_are_fatal,
    resource_limits_serialize_steps,
    graceful_shutdown_lets_steps_finish_and_releases_the_task,
    shutdown_past_its_grace_treats_cut_attempts_like_a_crash,
    subtask_child_blocked_then_retried_and_child_cancelled,
);

on_both!(#[tokio::test] =>
    a_panicking_action_fails_its_step_and_the_run_goes_on,
    functions_inline_and_from_the_library_run_with_their_arguments,
    functions_calling_functions_chain_their_arguments,
    a_task_left_running_by_a_failed_run_is_picked_up_again,
    a_first_delivery_fires_whatever_its_id_and_a_redelivery_dedupes,
);
