//! Named secrets end to end: the API and CLI never show a value, steps read secrets when they
//! run (a rotation reaches later steps), and what a task records (step outputs and errors,
//! result, events) shows the mask instead of secret values and password inputs, while the
//! services a step calls get the real values.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, TOKEN, taskhook};

const MASK: &str = "**__SECRET__**";
const SECRET: &str = "tok-9f8e7d6c5b";
const ROTATED: &str = "tok-rotated-0a1b2c";
const PASSWORD: &str = "hunter2-pass";

/// A local service recording every request it gets (`Authorization` header and body), and
/// answering with what it received, so that a step's output holds the values it sent.
async fn sink() -> (String, Arc<Mutex<Vec<Value>>>) {
    use axum::routing::post;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    let app = axum::Router::new().route(
        "/sink",
        post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let rec = rec.clone();
                async move {
                    let got = json!({
                        "authorization": headers.get("authorization").and_then(|v| v.to_str().ok()),
                        "body": String::from_utf8_lossy(&body),
                    });
                    rec.lock().unwrap().push(got.clone());
                    axum::Json(json!({"received": got}))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

async fn put_secret(s: &Server, name: &str, body: Value) -> (u16, Value) {
    let (status, _, v) = s
        .req(
            reqwest::Method::PUT,
            &format!("/api/v1/secrets/{name}"),
            Some((&body.to_string(), "application/json")),
        )
        .await;
    (status, v)
}

fn assert_no_leak(what: &str, text: &str) {
    for v in [SECRET, ROTATED, PASSWORD] {
        assert!(!text.contains(v), "{what} shows {v:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_managed_by_name_and_never_shown() {
    let s = Server::start();
    let (st, v) = put_secret(&s, "api_token", json!({"value": SECRET})).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["version"], 1);
    let (st, v) = put_secret(
        &s,
        "api_token",
        json!({"value": ROTATED, "description": "the API's token"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["version"], 2);
    assert_eq!(v["description"], "the API's token");
    let (st, one) = s.get("/api/v1/secrets/api_token").await;
    assert_eq!(st, 200);
    assert_eq!(
        one.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["name", "description", "version", "created_at", "updated_at"]
    );
    let (_, list) = s.get("/api/v1/secrets").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_no_leak("the secret API", &format!("{one}{list}"));

    // Bad input names the field and changes nothing.
    let (st, v) = put_secret(&s, "bad-name", json!({"value": "x"})).await;
    assert_eq!((st, v["field"].as_str()), (400, Some("name")), "{v}");
    let (st, v) = put_secret(&s, "api_token", json!({"value": ""})).await;
    assert_eq!((st, v["field"].as_str()), (400, Some("value")), "{v}");
    let (st, v) = put_secret(&s, "api_token", json!({"valu": "x"})).await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = put_secret(&s, "api_token", json!({"value": 3})).await;
    assert_eq!((st, v["field"].as_str()), (400, Some("value")), "{v}");
    assert_eq!(s.get("/api/v1/secrets/api_token").await.1["version"], 2);
    assert_eq!(s.get("/api/v1/secrets/nope").await.0, 404);

    // The CLI: a value from a file or standard input, never echoed.
    let file = support::fresh_dir().join("value");
    std::fs::write(&file, "from-file-value\n").unwrap();
    let (code, out, err) = taskhook(
        Some(&s),
        &[
            "secret",
            "put",
            "db_password",
            "--value-file",
            file.to_str().unwrap(),
            "--description",
            "database",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("db_password stored (version 1)"), "{out}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskhook"))
        .args(["secret", "put", "from_stdin"])
        .env("TASKHOOK_URL", &s.url)
        .env("TASKHOOK_TOKEN", TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"stdin-value-123\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let (code, out, _) = taskhook(Some(&s), &["secret", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("api_token") && out.contains("db_password") && out.contains("from_stdin"));
    assert!(
        !out.contains("from-file-value") && !out.contains("stdin-value-123"),
        "{out}"
    );
    let (code, out, _) = taskhook(Some(&s), &["secret", "get", "db_password", "--json"]);
    assert_eq!(code, 0);
    assert!(!out.contains("from-file-value"), "{out}");
    let (code, _, err) = taskhook(
        Some(&s),
        &[
            "secret",
            "put",
            "bad-name",
            "--value-file",
            file.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("invalid secret name"), "{err}");
    let (code, out, _) = taskhook(Some(&s), &["secret", "delete", "from_stdin"]);
    assert_eq!((code, out.trim()), (0, "deleted from_stdin"));
    let (code, _, err) = taskhook(Some(&s), &["secret", "delete", "from_stdin"]);
    assert_ne!(code, 0);
    assert!(err.contains("404"), "{err}");

    // A template may only read secrets that exist, by name.
    let (st, v) = s
        .put_template(
            "unknown",
            "name: unknown\nsteps:\n  a:\n    action: {type: echo, configuration: {output: '{{ secret.nope }}'}}\n",
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["field"], "steps.a.action.configuration.output", "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("secret \"nope\" does not exist"),
        "{v}"
    );
    let (st, v) = s
        .put_template(
            "dynamic",
            "name: dynamic\nsteps:\n  a:\n    action: {type: echo, configuration: {output: '{{ secret }}'}}\n",
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(s.get("/api/v1/templates/unknown").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_use_secrets_and_record_only_the_mask() {
    let s = Server::start();
    let (sink, seen) = sink().await;
    assert_eq!(
        put_secret(&s, "api_token", json!({"value": SECRET}))
            .await
            .0,
        201
    );
    let tpl = format!(
        r#"
name: leak
auto_runnable: true
inputs: [{{name: pw, type: password}}, {{name: who}}]
result_format: {{token: "{{{{ secret.api_token }}}}", who: "{{{{ input.who }}}}"}}
steps:
  echo:
    action:
      type: echo
      configuration:
        output: {{token: "{{{{ secret.api_token }}}}", pw: "{{{{ input.pw }}}}", both: "t={{{{ secret.api_token }}}};p={{{{ input.pw }}}}"}}
  send:
    dependencies: [echo]
    action:
      type: http
      configuration:
        url: "{sink}/sink"
        method: POST
        headers: {{Authorization: "Bearer {{{{ secret.api_token }}}}"}}
        body: {{pw: "{{{{ input.pw }}}}", token: "{{{{ secret.api_token }}}}"}}
  wait:
    dependencies: [send]
    action: {{type: sleep, configuration: {{duration: 2s}}}}
  again:
    dependencies: [wait]
    action:
      type: http
      configuration:
        url: "{sink}/sink"
        method: POST
        headers: {{Authorization: "Bearer {{{{ secret.api_token }}}}"}}
"#
    );
    let (st, v) = s.put_template("leak", &tpl).await;
    assert_eq!(st, 201, "{v}");
    let (st, created) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "leak", "inputs": {"pw": PASSWORD, "who": "ada"}}),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    // Rotate the secret once the first request went out: the step after the sleep sends the
    // new value.
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the sink got nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        put_secret(&s, "api_token", json!({"value": ROTATED}))
            .await
            .0,
        200
    );
    let task = s.wait_state(&id, &["BLOCKED", "DONE"]).await;
    assert_eq!(task["state"], "DONE", "{task:#}");

    // The service got the real values.
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["authorization"], format!("Bearer {SECRET}"));
    let body: Value = serde_json::from_str(got[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"pw": PASSWORD, "token": SECRET}));
    assert_eq!(got[1]["authorization"], format!("Bearer {ROTATED}"));

    // What the task shows: the mask.
    let steps = &task["steps"];
    assert_eq!(steps["echo"]["output"]["token"], MASK);
    assert_eq!(steps["echo"]["output"]["pw"], MASK);
    assert_eq!(
        steps["echo"]["output"]["both"],
        format!("t={MASK};p={MASK}")
    );
    assert_eq!(
        steps["send"]["output"]["received"]["authorization"],
        format!("Bearer {MASK}")
    );
    assert_eq!(
        steps["again"]["output"]["received"]["authorization"],
        format!("Bearer {MASK}")
    );
    assert_eq!(task["result"], json!({"token": MASK, "who": "ada"}));
    assert_eq!(task["inputs"]["pw"], MASK);
    assert_eq!(task["inputs"]["who"], "ada");
    let text = task.to_string();
    assert_no_leak("the task", &text);
    let (_, events) = s.get(&format!("/api/v1/tasks/{id}/events")).await;
    assert_no_leak("the events", &events.to_string());
    let (_, list) = s.get("/api/v1/tasks?template=leak").await;
    assert_no_leak("the task list", &list.to_string());

    // The CLI shows what the API shows.
    for args in [vec!["task", "get", &id], vec!["task", "get", &id, "--json"]] {
        let (code, out, err) = taskhook(Some(&s), &args);
        assert_eq!(code, 0, "{err}");
        assert_no_leak("taskhook task get", &format!("{out}{err}"));
    }
    let (_, out, _) = taskhook(Some(&s), &["task", "get", &id, "--json"]);
    assert!(out.contains(MASK), "{out}");

    // A step error holding a secret and a password (a check condition's message) is masked.
    let errs = r#"
name: errs
auto_runnable: true
inputs: [{name: pw, type: password}]
steps:
  a:
    action: {type: echo, configuration: {output: ok}}
    conditions:
      - type: check
        if: [{value: "1", operator: EQ, expected: "1"}]
        then: {this: CLIENT_ERROR}
        message: "refused {{ secret.api_token }} with {{ input.pw }}"
"#;
    assert_eq!(s.put_template("errs", errs).await.0, 201);
    let (_, created) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "errs", "inputs": {"pw": PASSWORD}}),
        )
        .await;
    let id3 = created["id"].as_str().unwrap().to_string();
    let t3 = s.wait_state(&id3, &["BLOCKED"]).await;
    assert_eq!(
        t3["steps"]["a"]["error"],
        format!("refused {MASK} with {MASK}"),
        "{t3:#}"
    );

    // A deleted secret fails the step that reads it, saying so.
    assert_eq!(
        s.req(reqwest::Method::DELETE, "/api/v1/secrets/api_token", None)
            .await
            .0,
        204
    );
    let (st, created) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "leak", "inputs": {"pw": PASSWORD, "who": "ada"}}),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    let id2 = created["id"].as_str().unwrap().to_string();
    let t2 = s.wait_state(&id2, &["BLOCKED"]).await;
    let e = t2["steps"]["echo"]["error"].as_str().unwrap_or_default();
    assert!(e.contains("secret \"api_token\" does not exist"), "{t2:#}");

    // What is stored is masked too, not only what the API shows.
    let mut s = s;
    s.kill9();
    let store = taskhook_store::Store::open(s.data_dir.join("taskhook.db")).unwrap();
    let ring = std::fs::read_to_string(s.data_dir.join("keys")).unwrap();
    store
        .install_keys(taskhook_store::KeyRing::parse(&ring).unwrap())
        .await
        .unwrap();
    let (row, stored) = store.get_task(&id).await.unwrap().unwrap();
    let stored_text = serde_json::to_string(&stored).unwrap();
    assert_no_leak("the stored steps", &stored_text);
    assert!(stored_text.contains(MASK));
    assert_no_leak("the stored result", &row.result.to_string());
    let events = store.task_events(&id).await.unwrap();
    assert_no_leak(
        "the stored events",
        &serde_json::to_string(&events).unwrap(),
    );
    // The task keeps its real password input: a retry needs it.
    assert_eq!(row.inputs["pw"], PASSWORD);
    store.close();
}
