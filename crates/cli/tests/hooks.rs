//! Hooks as a user meets them: a GitHub webhook with real signatures, replays, filters,
//! tokens, schemas and the fire ledger, against the real binary.

mod support;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::Server;

const SECRET: &str = "It's a Secret to Everybody";

fn github_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn setup(s: &Server) {
    let tpl = "name: deploy\nauto_runnable: true\ninputs: [{name: repo}, {name: sha}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ input.repo }}@{{ input.sha }}'}}}\n";
    assert_eq!(s.put_template("deploy", tpl).await.0, 201);
    let hook = format!(
        r#"
metadata: {{name: deploy on push, owner: ops}}
template: deploy
filter: "event.event == 'push' and event.payload.ref == 'refs/heads/main'"
inputs:
  repo: "{{{{ event.payload.repository.name }}}}"
  sha: "{{{{ event.payload.after }}}}"
webhook: {{provider: github, secret: "{SECRET}"}}
"#
    );
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/hooks/ci/deploy",
            Some((&hook, "application/yaml")),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        v["hook"]["webhook"]["secret"], "**__SECRET__**",
        "the secret is never returned"
    );
}

async fn deliver(
    s: &Server,
    body: &str,
    signature: &str,
    delivery: &str,
    event: &str,
) -> (u16, Value) {
    let resp = s
        .http
        .post(format!("{}/api/v1/hooks/ci/deploy/webhook", s.url))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn push(r: &str) -> String {
    json!({"ref": r, "after": "abc123", "repository": {"name": "app", "full_name": "acme/app"}, "pusher": {"name": "ada"}}).to_string()
}

#[tokio::test]
async fn github_push_webhooks_are_verified_filtered_deduplicated_and_recorded() {
    let s = Server::start();
    setup(&s).await;
    let body = push("refs/heads/main");

    let (st, v) = deliver(&s, &body, &github_signature(body.as_bytes()), "d-1", "push").await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["result"], "created");
    let task_id = v["task_id"].as_str().unwrap().to_string();
    let t = s.wait_state(&task_id, &["DONE"]).await;
    assert_eq!(t["steps"]["a"]["output"], "app@abc123");
    assert_eq!(t["requester"], "hook:ci/deploy");

    // The same delivery again: the first fire, no second task.
    let (st, again) = deliver(&s, &body, &github_signature(body.as_bytes()), "d-1", "push").await;
    assert_eq!(st, 202);
    assert_eq!(
        (again["fire_id"].clone(), again["duplicate"].clone()),
        (v["fire_id"].clone(), json!(true))
    );

    // A wrong signature is refused and recorded without its body.
    let (st, problem) = deliver(&s, &body, "sha256=0000", "d-2", "push").await;
    assert_eq!(st, 401, "{problem}");
    let tampered = body.replace("abc123", "evil99");
    let (st, _) = deliver(
        &s,
        &tampered,
        &github_signature(body.as_bytes()),
        "d-3",
        "push",
    )
    .await;
    assert_eq!(st, 401);

    // Filtered: another branch.
    let dev = push("refs/heads/dev");
    let (st, f) = deliver(&s, &dev, &github_signature(dev.as_bytes()), "d-4", "push").await;
    assert_eq!(
        (st, f["result"].clone(), f["task_id"].clone()),
        (202, json!("filtered"), Value::Null)
    );

    let (_, ledger) = s.get("/api/v1/hooks/ci/deploy/fires").await;
    let fires = ledger["fires"].as_array().unwrap();
    let results: Vec<&str> = fires
        .iter()
        .map(|f| f["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        ["filtered", "rejected", "rejected", "duplicate", "created"],
        "newest first: {ledger:#}"
    );
    assert_eq!(
        fires[4]["task_state"], "DONE",
        "the ledger shows the task's state now"
    );
    assert_eq!(fires[4]["delivery_id"], "d-1");
    assert_eq!(
        fires[3]["task_id"], fires[4]["task_id"],
        "the repeat points at the first task"
    );
    assert_eq!(
        fires[1]["payload"],
        Value::Null,
        "rejected bodies are not stored"
    );
    assert_eq!(fires[4]["payload"]["ref"], "refs/heads/main");
    let (_, tasks) = s.get("/api/v1/tasks?template=deploy").await;
    assert_eq!(
        tasks["tasks"].as_array().unwrap().len(),
        1,
        "one task in all"
    );
}

#[tokio::test]
async fn api_and_token_triggers_schema_mapping_and_dry_run() {
    let s = Server::start();
    s.put_template("echo", "name: echo\nauto_runnable: true\ninputs: [{name: n, type: number}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ input.n }}'}}}\n").await;
    let hook = r#"
template: echo
trigger_schema: {type: object, required: [n], properties: {n: {type: number}}}
inputs: "{{ none if event.payload.n < 0 else {'n': event.payload.n} }}"
methods: [POST, PUT]
"#;
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/hooks/g/h",
            Some((hook, "application/yaml")),
        )
        .await;
    assert_eq!(st, 201, "{v}");

    let (st, v) = s.post("/api/v1/hooks/g/h/trigger", json!({"n": 5})).await;
    assert_eq!((st, v["result"].clone()), (202, json!("created")), "{v}");
    let t = s
        .wait_state(v["task_id"].as_str().unwrap(), &["DONE"])
        .await;
    assert_eq!(t["steps"]["a"]["output"], 5);
    let (_, v) = s.post("/api/v1/hooks/g/h/trigger", json!({"n": -1})).await;
    assert_eq!(v["result"], "declined");
    let (st, v) = s
        .post("/api/v1/hooks/g/h/trigger", json!({"n": "five"}))
        .await;
    assert_eq!((st, v["field"].clone()), (400, json!("payload.n")), "{v}");

    // The secret-token trigger: no bearer token, any allowed method.
    let (_, tok) = s.get("/api/v1/hooks/g/h/token").await;
    let token = tok["token"].as_str().unwrap();
    let url = |t: &str| format!("{}/api/v1/hooks/g/h/trigger/{t}", s.url);
    let r = s
        .http
        .put(url(token))
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = s
        .http
        .post(url("wrong"))
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = s.http.delete(url(token)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let (_, fresh) = s.post("/api/v1/hooks/g/h/token", json!({})).await;
    assert_ne!(fresh["token"], tok["token"]);
    let r = s
        .http
        .post(url(token))
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the old token no longer works");

    // A mapping that fails at run time is a fire with result `error`, never a 500.
    let (st, v) = s
        .post("/api/v1/hooks/g/h/trigger", json!({"n": 1, "x": null}))
        .await;
    assert_eq!(st, 202, "{v}");
    let bad = "template: echo\ninputs: {n: '{{ event.payload.missing.deeper }}'}\n";
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/hooks/g/bad",
            Some((bad, "application/yaml")),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = s.post("/api/v1/hooks/g/bad/trigger", json!({})).await;
    assert_eq!(
        (st, v["result"].clone(), v["task_id"].clone()),
        (202, json!("error"), Value::Null),
        "{v}"
    );
    let (_, f) = s.get("/api/v1/hooks/g/bad/fires").await;
    assert!(
        f["fires"][0]["error"]
            .as_str()
            .unwrap()
            .contains("undefined"),
        "{f}"
    );

    // Dry run: shows what would happen and creates nothing.
    let before = s.get("/api/v1/hooks/g/h/fires").await.1["fires"]
        .as_array()
        .unwrap()
        .len();
    let (st, dry) = s
        .post("/api/v1/hooks/g/h/test", json!({"payload": {"n": 7}}))
        .await;
    assert_eq!(
        (st, dry["result"].clone(), dry["inputs"].clone()),
        (200, json!("created"), json!({"n": 7})),
        "{dry}"
    );
    let (_, dry) = s
        .post("/api/v1/hooks/g/h/test", json!({"payload": {"n": -7}}))
        .await;
    assert_eq!(dry["result"], "declined");
    let after = s.get("/api/v1/hooks/g/h/fires").await.1["fires"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);
}

#[tokio::test]
async fn bad_hooks_are_refused_naming_the_field() {
    let s = Server::start();
    s.put_template("t", "name: t\nsteps:\n  a: {action: {type: echo}}\n")
        .await;
    let cases = [
        ("template: nope\n", "template"),
        ("template: t\nschedule: ['*/5 * * *']\n", "schedule[0]"),
        (
            "template: t\nschedule: ['0 * * * *']\ntimezone: Europe/Atlantis\n",
            "timezone",
        ),
        (
            "template: t\nwebhook: {provider: github, secret: ''}\n",
            "webhook.secret",
        ),
        ("template: t\nfilter: 'event =='\n", "filter"),
        ("template: t\nbogus: 1\n", "hook"),
        // Overflowed the dedupe cut-off in the fire path.
        (
            "template: t\ndedupe_window_seconds: 18446744073709551615\n",
            "dedupe_window_seconds",
        ),
    ];
    for (doc, field) in cases {
        let (st, ct, v) = s
            .req(
                reqwest::Method::PUT,
                "/api/v1/hooks/g/bad",
                Some((doc, "application/yaml")),
            )
            .await;
        assert_eq!(
            (st, ct.as_str()),
            (400, "application/problem+json"),
            "{doc}: {v}"
        );
        assert_eq!(v["field"], field, "{doc}: {v}");
    }
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/hooks/bad%20group/x",
            Some(("template: t\n", "application/yaml")),
        )
        .await;
    assert_eq!((st, v["field"].clone()), (400, json!("group")));
    assert_eq!(s.get("/api/v1/hooks/g/missing").await.0, 404);
    assert_eq!(
        s.post("/api/v1/hooks/g/missing/trigger", json!({})).await.0,
        404
    );
    let (_, groups) = s.get("/api/v1/hooks").await;
    assert_eq!(groups["groups"], json!([]));
}

#[tokio::test]
async fn the_ledger_keeps_large_payloads_only_as_a_note_of_their_size() {
    let s = Server::start();
    s.put_template(
        "t",
        "name: t\nauto_runnable: true\nsteps:\n  a: {action: {type: echo}}\n",
    )
    .await;
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/hooks/g/big",
            Some(("template: t\n", "application/yaml")),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let big = json!({"blob": "x".repeat(100 * 1024)});
    let (st, v) = s.post("/api/v1/hooks/g/big/trigger", big).await;
    assert_eq!((st, v["result"].clone()), (202, json!("created")), "{v}");
    let (_, small) = s
        .post("/api/v1/hooks/g/big/trigger", json!({"blob": "x"}))
        .await;
    assert_eq!(small["result"], "created");
    let (_, f) = s.get("/api/v1/hooks/g/big/fires").await;
    assert_eq!(f["fires"][0]["payload"], json!({"blob": "x"}));
    assert_eq!(
        f["fires"][1]["payload"]["truncated"], true,
        "{}",
        f["fires"][1]["payload"]
    );
}

#[tokio::test]
async fn a_trigger_payload_is_a_json_object() {
    let s = Server::start();
    s.put_template(
        "t",
        "name: t\nsteps:\n  a: {action: {type: echo, configuration: {output: {}}}}\n",
    )
    .await;
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/hooks/g/h",
            Some(("template: t\n", "application/yaml")),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    for body in ["null", "5", "\"x\"", "[1]"] {
        let (st, _, v) = s
            .req(
                reqwest::Method::POST,
                "/api/v1/hooks/g/h/trigger",
                Some((body, "application/json")),
            )
            .await;
        assert_eq!(
            (st, v["field"].as_str()),
            (400, Some("body")),
            "{body}: {v}"
        );
    }
    let (_, fires) = s.get("/api/v1/hooks/g/h/fires").await;
    assert_eq!(fires["fires"], json!([]), "nothing was fired");
    let (st, v) = s.post("/api/v1/hooks/g/h/trigger", json!({})).await;
    assert_eq!(st, 202, "{v}");
}
