//! The server as a user meets it: the real binary on a temp dir, driven over HTTP.

mod support;

use serde_json::{Value, json};
use support::{Server, target};

fn deploy_template(target: &str) -> String {
    format!(
        r#"
name: deploy
description: fetch items, greet each, and report
title_format: "deploy to {{{{ input.env }}}}"
auto_runnable: true
inputs:
  - name: env
    legal_values: [prod, staging]
  - name: secret
    type: password
    optional: true
steps:
  fetch:
    action:
      type: http
      configuration:
        url: "{target}/items"
  greet:
    dependencies: [fetch]
    foreach: "{{{{ step.fetch.output['items'] }}}}"
    action:
      type: http
      configuration:
        url: "{target}/echo"
        method: POST
        body: {{greeting: "hello {{{{ iterator }}}}"}}
  only_in_staging:
    dependencies: [fetch]
    conditions:
      - type: skip
        if: [{{value: "{{{{ input.env }}}}", operator: NE, expected: staging}}]
        then: {{this: PRUNE}}
    action: {{type: echo, configuration: {{output: never}}}}
  report:
    dependencies: [greet, "only_in_staging:ANY"]
    action:
      type: echo
      configuration:
        output: "{{{{ step.greet.children | map(attribute='output.greeting') | join(',') }}}}"
result_format:
  greetings: "{{{{ step.report.output }}}}"
  status: "{{{{ step.fetch.metadata.http_status }}}}"
"#
    )
}

#[tokio::test]
async fn a_template_with_http_foreach_and_condition_runs_to_done() {
    let target = target().await;
    let s = Server::start();
    let (status, body) = s.put_template("deploy", &deploy_template(&target)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 1);
    let (status, created) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "deploy", "inputs": {"env": "prod", "secret": "hunter2"}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let task = s.wait_state(id, &["DONE", "BLOCKED"]).await;
    assert_eq!(task["state"], "DONE", "{task:#}");
    assert_eq!(task["title"], "deploy to prod");
    assert_eq!(
        task["result"],
        json!({"greetings": "hello a,hello b,hello c", "status": 200})
    );
    assert_eq!(task["steps"]["fetch"]["output"]["env"], "prod");
    assert_eq!(task["steps"]["fetch"]["metadata"]["http_status"], 200);
    assert_eq!(task["steps"]["greet"]["state"], "DONE");
    assert_eq!(
        task["steps"]["greet-1"]["output"],
        json!({"greeting": "hello b"})
    );
    assert_eq!(task["steps"]["only_in_staging"]["state"], "PRUNE");
    assert_eq!(
        task["inputs"]["secret"], "**__SECRET__**",
        "password inputs are masked"
    );
    let (_, events) = s.get(&format!("/api/v1/tasks/{id}/events")).await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"created"));
    assert_eq!(kinds.last(), Some(&"done"));
    let (_, page) = s.get("/api/v1/tasks?state=DONE&template=deploy").await;
    assert_eq!(page["tasks"][0]["id"], id);
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused() {
    let s = Server::start();
    let resp = s
        .http
        .get(format!("{}/api/v1/tasks", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = s
        .http
        .get(format!("{}/api/v1/tasks", s.url))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = s
        .http
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn bad_input_gets_a_problem_naming_the_field_and_changes_nothing() {
    let s = Server::start();
    let ok = "name: t\nauto_runnable: true\ninputs: [{name: n, type: number}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ input.n }}'}}}\n";
    assert_eq!(s.put_template("t", ok).await.0, 201);

    let cases: Vec<(&str, reqwest::Method, &str, String, u16, &str)> = vec![
        (
            "malformed yaml",
            reqwest::Method::PUT,
            "/api/v1/templates/x",
            "name: [".into(),
            400,
            "template",
        ),
        (
            "unknown template field",
            reqwest::Method::PUT,
            "/api/v1/templates/x",
            "name: x\nstepz: {}\n".into(),
            400,
            "template",
        ),
        (
            "name mismatch",
            reqwest::Method::PUT,
            "/api/v1/templates/y",
            ok.replace("name: t", "name: z"),
            400,
            "name",
        ),
        (
            "unknown action",
            reqwest::Method::PUT,
            "/api/v1/templates/u",
            "name: u\nsteps:\n  a: {action: {type: nope}}\n".into(),
            400,
            "steps.a.action.type",
        ),
        (
            "malformed json",
            reqwest::Method::POST,
            "/api/v1/tasks",
            "{".into(),
            400,
            "body",
        ),
        (
            "unknown body field",
            reqwest::Method::POST,
            "/api/v1/tasks",
            r#"{"template":"t","inputz":{}}"#.into(),
            400,
            "inputz",
        ),
        (
            "wrong type",
            reqwest::Method::POST,
            "/api/v1/tasks",
            r#"{"template":5}"#.into(),
            400,
            "template",
        ),
        (
            "input type",
            reqwest::Method::POST,
            "/api/v1/tasks",
            r#"{"template":"t","inputs":{"n":"x"}}"#.into(),
            400,
            "inputs.n",
        ),
        (
            "missing input",
            reqwest::Method::POST,
            "/api/v1/tasks",
            r#"{"template":"t"}"#.into(),
            400,
            "inputs.n",
        ),
        (
            "bad run_at",
            reqwest::Method::POST,
            "/api/v1/tasks",
            r#"{"template":"t","inputs":{"n":1},"run_at":"soon"}"#.into(),
            400,
            "run_at",
        ),
        (
            "unknown template",
            reqwest::Method::POST,
            "/api/v1/tasks",
            r#"{"template":"nope"}"#.into(),
            404,
            "",
        ),
        (
            "bad state filter",
            reqwest::Method::GET,
            "/api/v1/tasks?state=SLEEPY",
            String::new(),
            400,
            "state",
        ),
        (
            "bad limit",
            reqwest::Method::GET,
            "/api/v1/tasks?limit=0",
            String::new(),
            400,
            "limit",
        ),
        (
            "unknown task",
            reqwest::Method::GET,
            "/api/v1/tasks/nope",
            String::new(),
            404,
            "",
        ),
    ];
    for (what, method, path, body, status, field) in cases {
        let body = (!body.is_empty()).then_some(body);
        let (got, ct, v) = s
            .req(
                method,
                path,
                body.as_deref().map(|b| (b, "application/json")),
            )
            .await;
        assert_eq!(got, status, "{what}: {v}");
        assert_eq!(ct, "application/problem+json", "{what}");
        if !field.is_empty() {
            assert_eq!(v["field"].as_str().unwrap_or(""), field, "{what}: {v}");
        }
    }
    let big = format!(
        "name: big\ndescription: {}\nsteps:\n  a: {{action: {{type: echo}}}}\n",
        "x".repeat(2 * 1024 * 1024)
    );
    // A separate client: the server answers 413 before reading the body and drops the connection.
    let resp = reqwest::Client::new()
        .put(format!("{}/api/v1/templates/big", s.url))
        .bearer_auth(support::TOKEN)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // Nothing was created by any of it.
    let (_, page) = s.get("/api/v1/tasks").await;
    assert_eq!(page["tasks"], json!([]));
    let (_, templates) = s.get("/api/v1/templates").await;
    assert_eq!(templates.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn state_changes_that_make_no_sense_are_conflicts() {
    let s = Server::start();
    s.put_template(
        "t",
        "name: t\nauto_runnable: true\nsteps:\n  a: {action: {type: echo}}\n",
    )
    .await;
    let (_, c) = s.post("/api/v1/tasks", json!({"template": "t"})).await;
    let id = c["id"].as_str().unwrap();
    s.wait_state(id, &["DONE"]).await;
    let (status, v) = s
        .post(&format!("/api/v1/tasks/{id}/resolve"), json!({}))
        .await;
    assert_eq!(status, 409, "{v}");
    let (status, _) = s
        .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409);
    let (_, events) = s.get(&format!("/api/v1/tasks/{id}/events")).await;
    assert_eq!(
        events.as_array().unwrap().last().unwrap()["kind"],
        "done",
        "no event was added"
    );
}

#[tokio::test]
async fn idempotency_keys_and_template_versions() {
    let s = Server::start();
    let v1 = "name: t\nauto_runnable: true\nsteps:\n  a: {action: {type: sleep, configuration: {duration: 300ms}}}\n  b: {dependencies: [a], action: {type: echo, configuration: {output: one}}}\n";
    assert_eq!(s.put_template("t", v1).await.0, 201);
    assert_eq!(
        s.put_template("t", v1).await.1["version"],
        1,
        "an unchanged template keeps its version"
    );
    let (st, first) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "t", "idempotency_key": "k1"}),
        )
        .await;
    assert_eq!(st, 201);
    let (st, again) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "t", "idempotency_key": "k1"}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(first["id"], again["id"]);
    let (st, v) = s
        .put_template("t", &v1.replace("output: one", "output: two"))
        .await;
    assert_eq!((st, v["version"].clone()), (200, json!(2)));
    let id = first["id"].as_str().unwrap();
    let t = s.wait_state(id, &["DONE"]).await;
    assert_eq!(t["template_version"], 1);
    assert_eq!(
        t["steps"]["b"]["output"], "one",
        "a running task keeps its template version"
    );
}

#[tokio::test]
async fn a_task_survives_kill_9_and_finishes_after_restart() {
    let target = target().await;
    let dir = support::fresh_dir();
    let mut s = Server::start_in(dir.clone(), &[]);
    let tpl = format!(
        "name: survive\nauto_runnable: true\nsteps:\n  wait:\n    action: {{type: sleep, configuration: {{duration: 1s}}}}\n  slow:\n    idempotent: true\n    action: {{type: http, configuration: {{url: '{target}/slow'}}}}\n  after:\n    dependencies: [wait, slow]\n    action: {{type: echo, configuration: {{output: finished}}}}\n"
    );
    assert_eq!(s.put_template("survive", &tpl).await.0, 201);
    let (_, c) = s
        .post("/api/v1/tasks", json!({"template": "survive"}))
        .await;
    let id = c["id"].as_str().unwrap().to_string();
    // Kill while `slow` is in flight and `wait` holds a timer.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (_, t) = s.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(t["steps"]["slow"]["state"], "RUNNING", "{t:#}");
    s.kill9();
    let s = Server::start_in(dir, &[]);
    let t = s.wait_state(&id, &["DONE", "BLOCKED"]).await;
    assert_eq!(t["state"], "DONE", "{t:#}");
    assert_eq!(t["steps"]["after"]["output"], "finished");
    assert_eq!(
        t["steps"]["slow"]["attempts"], 2,
        "the idempotent step ran again"
    );
    let (_, events) = s.get(&format!("/api/v1/tasks/{id}/events")).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "recovered"),
        "{events:#}"
    );
}

#[tokio::test]
async fn a_non_idempotent_step_interrupted_by_a_crash_blocks_the_task() {
    let target = target().await;
    let dir = support::fresh_dir();
    let mut s = Server::start_in(dir.clone(), &[]);
    let tpl = format!(
        "name: once\nauto_runnable: true\nsteps:\n  pay:\n    action: {{type: http, configuration: {{url: '{target}/slow'}}}}\n"
    );
    s.put_template("once", &tpl).await;
    let (_, c) = s.post("/api/v1/tasks", json!({"template": "once"})).await;
    let id = c["id"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    s.kill9();
    let s = Server::start_in(dir, &[]);
    let t = s.wait_state(&id, &["BLOCKED", "DONE"]).await;
    assert_eq!(t["state"], "BLOCKED");
    assert_eq!(t["steps"]["pay"]["state"], "CRASHED");
    // A human checks, then retries: the step runs again and the task finishes.
    let (st, _) = s
        .post(&format!("/api/v1/tasks/{id}/retry"), json!({}))
        .await;
    assert_eq!(st, 200);
    let t = s.wait_state(&id, &["DONE"]).await;
    assert_eq!(t["steps"]["pay"]["output"], json!({"slow": true}));
}

#[tokio::test]
async fn resolver_flow_and_cancel() {
    let s = Server::start();
    let tpl = "name: manual\nresolver_inputs: [{name: ok, type: bool}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ resolver_input.ok }}'}}}\n";
    assert_eq!(s.put_template("manual", tpl).await.0, 201);
    let (_, c) = s.post("/api/v1/tasks", json!({"template": "manual"})).await;
    assert_eq!(c["state"], "TODO");
    let id = c["id"].as_str().unwrap();
    let (st, v) = s
        .post(
            &format!("/api/v1/tasks/{id}/resolve"),
            json!({"resolver_inputs": {"ok": "yes"}}),
        )
        .await;
    assert_eq!((st, v["field"].clone()), (400, json!("resolver_inputs.ok")));
    let (st, _) = s
        .post(
            &format!("/api/v1/tasks/{id}/resolve"),
            json!({"resolver_inputs": {"ok": true}}),
        )
        .await;
    assert_eq!(st, 200);
    let t = s.wait_state(id, &["DONE"]).await;
    assert_eq!(t["steps"]["a"]["output"], true);

    let (_, c) = s.post("/api/v1/tasks", json!({"template": "manual"})).await;
    let id = c["id"].as_str().unwrap();
    let (st, v) = s
        .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!((st, v["state"].clone()), (200, json!("CANCELLED")));
}

#[tokio::test]
async fn the_openapi_document_lists_the_routes() {
    let s = Server::start();
    let (st, doc) = s.get("/api/openapi.json").await;
    assert_eq!(st, 200);
    for path in [
        "/api/v1/tasks",
        "/api/v1/tasks/{id}",
        "/api/v1/templates/{name}",
        "/api/v1/tasks/{id}/events",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    // Fields that may be null say so (they were declared as objects).
    let schemas = &doc["components"]["schemas"];
    for (schema, field) in [
        ("TaskOut", "result"),
        ("StepOut", "metadata"),
        ("StepOut", "output"),
        ("EventOut", "detail"),
    ] {
        let declared = &schemas[schema]["properties"][field];
        assert!(
            declared.get("type").is_none() || declared["type"].to_string().contains("null"),
            "{schema}.{field} must allow null: {declared}"
        );
    }
    // Errors are problem+json, on every operation that can give them.
    let get_task = &doc["paths"]["/api/v1/tasks/{id}"]["get"];
    for status in ["401", "403", "404", "429"] {
        assert!(
            get_task["responses"][status]["content"]
                .get("application/problem+json")
                .is_some(),
            "GET /api/v1/tasks/{{id}} {status}: {get_task}"
        );
    }
    // Names and page sizes are declared as the server checks them.
    let params = |path: &str, method: &str| doc["paths"][path][method]["parameters"].clone();
    let param = |list: &Value, name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    let limit = param(&params("/api/v1/tasks", "get"), "limit");
    assert_eq!(
        (
            limit["schema"]["minimum"].clone(),
            limit["schema"]["maximum"].clone()
        ),
        (json!(1), json!(1000))
    );
    let name = param(&params("/api/v1/templates/{name}", "get"), "name");
    assert!(name["schema"]["pattern"].is_string(), "{name}");
}

#[tokio::test]
async fn a_method_a_path_does_not_have_is_405_naming_those_it_has() {
    let s = Server::start();
    for (method, path, allowed) in [
        ("TRACE", "/healthz", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("PATCH", "/api/v1/templates/x", "GET, PUT, DELETE, HEAD"),
        (
            "TRACE",
            "/api/v1/hooks/g/h/trigger/t",
            "GET, POST, PUT, PATCH, DELETE",
        ),
    ] {
        let resp = s
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", s.url),
            )
            .bearer_auth(support::TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{method} {path}");
        let allow = resp.headers()["allow"].to_str().unwrap().to_string();
        assert_eq!(allow, allowed, "{method} {path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(ct, "application/problem+json", "{method} {path}");
    }
}

#[tokio::test]
async fn names_a_url_would_normalise_away_are_refused() {
    let s = Server::start();
    let template = |name: &str| {
        format!(
            "name: {name}\nsteps:\n  a: {{action: {{type: echo, configuration: {{output: {{}}}}}}}}\n"
        )
    };
    let function = |name: &str| {
        format!("name: {name}\naction: {{type: echo, configuration: {{output: {{}}}}}}\n")
    };
    let secret = r#"{"value": "v"}"#.to_string();
    for dots in [".", ".."] {
        let cases = [
            (format!("/api/v1/templates/{dots}"), template(dots), "name"),
            (format!("/api/v1/functions/{dots}"), function(dots), "name"),
            (
                format!("/api/v1/hooks/{dots}/h"),
                "template: t\n".to_string(),
                "group",
            ),
            (
                format!("/api/v1/hooks/g/{dots}"),
                "template: t\n".to_string(),
                "id",
            ),
            (format!("/api/v1/secrets/{dots}"), secret.clone(), "name"),
        ];
        for (path, body, field) in cases {
            let (st, v) = s.raw("PUT", &path, &body).await;
            assert_eq!(
                (st, v["field"].as_str()),
                (400, Some(field)),
                "PUT {path}: {v}"
            );
            let (st, v) = s.raw("GET", &path, "").await;
            assert_eq!(st, 400, "GET {path}: {v}");
        }
    }
    // Nothing was stored; names with dots that are not dot segments still work.
    let (_, listed) = s.get("/api/v1/templates?hidden=true").await;
    assert_eq!(listed, json!([]));
    let (_, groups) = s.get("/api/v1/hooks").await;
    assert_eq!(groups["groups"], json!([]));
    assert_eq!(s.put_template("...", &template("...")).await.0, 201);
    assert_eq!(s.put_template("v1.2", &template("v1.2")).await.0, 201);
    // A function name's `::` parts follow the same rule.
    let (st, v) = s
        .raw("PUT", "/api/v1/functions/ns::..", &function("ns::.."))
        .await;
    assert_eq!((st, v["field"].as_str()), (400, Some("name")), "{v}");
}

#[tokio::test]
async fn a_cursor_the_server_did_not_give_is_refused() {
    let s = Server::start();
    s.put_template(
        "t",
        "name: t\nsteps:\n  a: {action: {type: echo, configuration: {output: {}}}}\n",
    )
    .await;
    let (st, _, _) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/hooks/g/h",
            Some(("template: t\n", "application/yaml")),
        )
        .await;
    assert_eq!(st, 201);
    for listing in ["/api/v1/tasks", "/api/v1/hooks/g/h/fires", "/api/v1/audit"] {
        for cursor in ["garbage", "", "0193a000-0000-7000-8000", "1%27%20OR%201=1"] {
            let (st, v) = s.get(&format!("{listing}?cursor={cursor}")).await;
            assert_eq!(
                (st, v["field"].as_str()),
                (400, Some("cursor")),
                "{listing}?cursor={cursor}: {v}"
            );
        }
        // A cursor of the right form is a page (empty: nothing is older).
        let (st, v) = s
            .get(&format!(
                "{listing}?cursor=00000000-0000-7000-8000-000000000000"
            ))
            .await;
        if listing != "/api/v1/audit" {
            assert_eq!(st, 200, "{listing}: {v}");
        }
    }
}
