//! Maintenance mode as a user meets it: a read-only API (503 with Retry-After for every
//! write, trigger and webhook, nothing recorded), reads still served, accepted tasks still
//! running, and the CLI's on/off/status.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, TOKEN, taskhook};

const HELLO: &str = "name: hello\nauto_runnable: true\nsteps:\n  a: {action: {type: echo, configuration: {output: hi}}}\n";
const HOOK: &str =
    "template: hello\nmethods: [GET, POST]\nwebhook: {provider: github, secret: s3cret}\n";

async fn put_maintenance(s: &Server, body: Value) -> (u16, Value) {
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/maintenance",
            Some((&body.to_string(), "application/json")),
        )
        .await;
    (st, v)
}

/// Asserts a 503 maintenance answer: problem+json, the message, Retry-After.
async fn assert_refused(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 503, "{what}");
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/problem+json", "{what}");
    assert_eq!(h["retry-after"], "60", "{what}");
    let v: Value = resp.json().await.unwrap();
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains("read-only for maintenance: database upgrade"),
        "{what}: {v}"
    );
}

#[tokio::test]
async fn maintenance_makes_the_api_read_only_until_turned_off() {
    let s = Server::start();
    assert_eq!(s.put_template("hello", HELLO).await.0, 201);
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/hooks/g/h",
            Some((HOOK, "application/yaml")),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (_, tok) = s.get("/api/v1/hooks/g/h/token").await;
    let token = tok["token"].as_str().unwrap().to_string();
    // A task accepted before: it sleeps across the maintenance window and still finishes.
    let sleepy = "name: sleepy\nauto_runnable: true\nsteps:\n  nap: {action: {type: sleep, configuration: {duration: 1s}}}\n  after: {dependencies: [nap], action: {type: echo, configuration: {output: woke}}}\n";
    assert_eq!(s.put_template("sleepy", sleepy).await.0, 201);
    let (st, v) = s.post("/api/v1/tasks", json!({"template": "sleepy"})).await;
    assert_eq!(st, 201, "{v}");
    let sleeping = v["id"].as_str().unwrap().to_string();

    let (st, v) = s.get("/api/v1/maintenance").await;
    assert_eq!((st, &v["enabled"]), (200, &json!(false)), "{v}");

    // Bad input changes nothing.
    let (st, v) = put_maintenance(&s, json!({"enabled": "yes"})).await;
    assert_eq!((st, v["field"].as_str()), (400, Some("enabled")), "{v}");
    let (st, v) = put_maintenance(&s, json!({"enabled": true, "message": "x".repeat(1001)})).await;
    assert_eq!((st, v["field"].as_str()), (400, Some("message")), "{v}");
    let (st, v) = put_maintenance(&s, json!({"enabled": true, "why": "no"})).await;
    assert_eq!(st, 400, "{v}");
    let r = s
        .http
        .put(format!("{}/api/v1/maintenance", s.url))
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "only the admin turns it on");
    assert_eq!(s.get("/api/v1/maintenance").await.1["enabled"], false);

    let (st, v) =
        put_maintenance(&s, json!({"enabled": true, "message": "database upgrade"})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["enabled"], true);
    assert_eq!(v["message"], "database upgrade");
    assert_eq!(v["changed_by"], "admin");
    assert!(v["changed_at"].is_string(), "{v}");

    // Every kind of write is refused.
    let url = |p: &str| format!("{}{p}", s.url);
    let h = &s.http;
    let refused = [
        (
            "create task",
            h.post(url("/api/v1/tasks"))
                .bearer_auth(TOKEN)
                .json(&json!({"template": "hello"})),
        ),
        (
            "put template",
            h.put(url("/api/v1/templates/hello"))
                .bearer_auth(TOKEN)
                .body(HELLO.replace("output: hi", "output: changed")),
        ),
        (
            "delete template",
            h.delete(url("/api/v1/templates/hello")).bearer_auth(TOKEN),
        ),
        (
            "cancel task",
            h.post(url(&format!("/api/v1/tasks/{sleeping}/cancel")))
                .bearer_auth(TOKEN),
        ),
        (
            "delete hook",
            h.delete(url("/api/v1/hooks/g/h")).bearer_auth(TOKEN),
        ),
        (
            "api trigger",
            h.post(url("/api/v1/hooks/g/h/trigger"))
                .bearer_auth(TOKEN)
                .json(&json!({})),
        ),
        (
            "token trigger (POST)",
            h.post(url(&format!("/api/v1/hooks/g/h/trigger/{token}")))
                .json(&json!({})),
        ),
        (
            "token trigger (GET)",
            h.get(url(&format!("/api/v1/hooks/g/h/trigger/{token}"))),
        ),
        (
            "webhook",
            h.post(url("/api/v1/hooks/g/h/webhook"))
                .header("x-github-event", "push")
                .body("{}"),
        ),
    ];
    for (what, req) in refused {
        assert_refused(req.send().await.unwrap(), what).await;
    }

    // Nothing changed, nothing recorded; reads still work.
    let (st, page) = s.get("/api/v1/tasks").await;
    assert_eq!(st, 200);
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "{page}");
    let (st, t) = s.get("/api/v1/templates/hello").await;
    assert_eq!((st, &t["version"]), (200, &json!(1)), "{t}");
    let (st, hook) = s.get("/api/v1/hooks/g/h").await;
    assert_eq!(st, 200, "{hook}");
    let (_, fires) = s.get("/api/v1/hooks/g/h/fires").await;
    assert_eq!(fires["fires"], json!([]), "{fires}");
    assert_eq!(s.get("/healthz").await.0, 200);
    let (st, v) = s.get("/api/v1/maintenance").await;
    assert_eq!((st, &v["enabled"]), (200, &json!(true)));

    // The engine keeps running what it accepted.
    let t = s.wait_state(&sleeping, &["DONE", "BLOCKED"]).await;
    assert_eq!(t["state"], "DONE", "{t:#}");

    // Off: writes work again, at once on this instance.
    let (st, v) = put_maintenance(&s, json!({"enabled": false})).await;
    assert_eq!((st, &v["enabled"]), (200, &json!(false)), "{v}");
    let (st, v) = s.post("/api/v1/tasks", json!({"template": "hello"})).await;
    assert_eq!(st, 201, "{v}");
    s.wait_state(v["id"].as_str().unwrap(), &["DONE"]).await;
    let (st, v) = s.post("/api/v1/hooks/g/h/trigger", json!({})).await;
    assert_eq!((st, v["result"].as_str()), (202, Some("created")), "{v}");
}

#[tokio::test]
async fn the_cli_turns_maintenance_on_and_off() {
    let s = Server::start();
    assert_eq!(s.put_template("hello", HELLO).await.0, 201);

    let (code, out, err) = taskhook(Some(&s), &["maintenance", "status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("maintenance mode: off"), "{out}");

    let (code, out, err) = taskhook(
        Some(&s),
        &["maintenance", "on", "--message", "database upgrade"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("maintenance mode: on"), "{out}");
    let (code, out, _) = taskhook(Some(&s), &["maintenance", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("maintenance mode: on"), "{out}");
    assert!(out.contains("by admin"), "{out}");
    assert!(out.contains("message: database upgrade"), "{out}");
    let (code, out, _) = taskhook(Some(&s), &["maintenance", "status", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["enabled"], true);

    let (code, _, err) = taskhook(Some(&s), &["task", "create", "hello"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("503: the API is read-only for maintenance: database upgrade"),
        "{err}"
    );
    let (code, out, err) = taskhook(Some(&s), &["template", "list"]);
    assert_eq!(code, 0, "reads work: {out}{err}");
    assert!(out.contains("hello"), "{out}");

    let (code, out, err) = taskhook(Some(&s), &["maintenance", "off"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("maintenance mode: off"), "{out}");
    let (code, out, err) = taskhook(Some(&s), &["task", "create", "hello"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// The mode lives in the database: a change made by another instance (here, a write to the
/// same SQLite file from this process) reaches the server within its 1 s cache.
#[tokio::test]
async fn a_change_in_the_database_reaches_the_server_within_a_second() {
    let s = Server::start();
    assert_eq!(s.put_template("hello", HELLO).await.0, 201);
    // Read once so that the server has cached "off".
    assert_eq!(
        s.post("/api/v1/tasks", json!({"template": "hello"}))
            .await
            .0,
        201
    );
    let other = taskhook_store::Store::open(s.data_dir.join("taskhook.db")).unwrap();
    other
        .set_setting(
            "maintenance",
            &json!({"enabled": true, "message": "database upgrade"}).to_string(),
        )
        .await
        .unwrap();
    let changed = Instant::now();
    loop {
        let (st, v) = s.post("/api/v1/tasks", json!({"template": "hello"})).await;
        if st == 503 {
            assert!(v["detail"].as_str().unwrap().contains("database upgrade"));
            break;
        }
        assert_eq!(st, 201, "{v}");
        assert!(
            changed.elapsed() < Duration::from_millis(1500),
            "still accepting writes {:?} after the change",
            changed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    other
        .set_setting("maintenance", &json!({"enabled": false}).to_string())
        .await
        .unwrap();
    let changed = Instant::now();
    loop {
        let (st, _) = s.post("/api/v1/tasks", json!({"template": "hello"})).await;
        if st == 201 {
            break;
        }
        assert!(changed.elapsed() < Duration::from_millis(1500));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    other.close();
}

#[tokio::test]
async fn the_openapi_document_lists_the_maintenance_routes() {
    let s = Server::start();
    let (st, doc) = s.get("/api/openapi.json").await;
    assert_eq!(st, 200);
    let m = &doc["paths"]["/api/v1/maintenance"];
    assert!(m.get("get").is_some() && m.get("put").is_some(), "{m:#}");
    for schema in ["MaintenanceRequest", "MaintenanceOut"] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "{schema} missing"
        );
    }
}
