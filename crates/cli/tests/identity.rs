//! Identities against the real binary: scoped API tokens, the hook role, people named on a
//! task, and reverse-proxy users.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Server, TOKEN, taskhook};

const TPL: &str = "name: deploy\nauto_runnable: true\nsteps:\n  a: {action: {type: echo, configuration: {output: {x: 1}}}}\n";
const OTHER: &str = "name: other\nauto_runnable: true\nsteps:\n  a: {action: {type: echo, configuration: {output: {x: 1}}}}\n";

async fn as_token(
    s: &Server,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = s
        .http
        .request(method, format!("{}{}", s.url, path))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let st = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The status of a call made with `token`.
async fn code(s: &Server, token: &str, method: Method, path: &str) -> u16 {
    as_token(s, token, method, path, None).await.0
}

async fn put_yaml(s: &Server, token: &str, path: &str, yaml: &str) -> (u16, Value) {
    let resp = s
        .http
        .put(format!("{}{}", s.url, path))
        .bearer_auth(token)
        .header("content-type", "application/yaml")
        .body(yaml.to_string())
        .send()
        .await
        .unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap_or(Value::Null))
}

async fn mint(s: &Server, body: Value) -> (String, String) {
    let (st, v) = s.post("/api/v1/tokens", body).await;
    assert_eq!(st, 201, "{v}");
    (
        v["id"].as_str().unwrap().into(),
        v["token"].as_str().unwrap().into(),
    )
}

/// The promise of scoped tokens: a token holding exactly `hooks:trigger:g/h` and
/// `tasks:read:deploy` triggers that hook and reads its task, and nothing else.
#[tokio::test]
async fn a_trigger_token_triggers_its_hook_and_reads_its_task_only() {
    let s = Server::start();
    assert_eq!(s.put_template("deploy", TPL).await.0, 201);
    assert_eq!(s.put_template("other", OTHER).await.0, 201);
    assert_eq!(
        put_yaml(&s, TOKEN, "/api/v1/hooks/g/h", "template: deploy\n")
            .await
            .0,
        201
    );
    assert_eq!(
        put_yaml(&s, TOKEN, "/api/v1/hooks/g/x", "template: other\n")
            .await
            .0,
        201
    );
    let (_, other_task) = s
        .post("/api/v1/tasks", json!({"template": "other", "inputs": {}}))
        .await;
    let other_task = other_task["id"].as_str().unwrap().to_string();

    let (st, _, out) = {
        let (c, o, e) = taskhook(
            Some(&s),
            &[
                "token",
                "create",
                "--scope",
                "hooks:trigger:g/h",
                "--scope",
                "tasks:read:deploy",
                "--description",
                "ci",
                "--json",
            ],
        );
        (c, e, o)
    };
    assert_eq!(st, 0);
    let created: Value = serde_json::from_str(&out).unwrap();
    let tok = created["token"].as_str().unwrap().to_string();

    let (st, fired) = as_token(
        &s,
        &tok,
        Method::POST,
        "/api/v1/hooks/g/h/trigger",
        Some(json!({})),
    )
    .await;
    assert_eq!(st, 202, "{fired}");
    let task = fired["task_id"].as_str().unwrap().to_string();
    let (st, t) = as_token(
        &s,
        &tok,
        Method::GET,
        &format!("/api/v1/tasks/{task}"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["template"], "deploy");
    let (st, list) = as_token(&s, &tok, Method::GET, "/api/v1/tasks", None).await;
    assert_eq!(st, 200);
    let ids: Vec<&str> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert!(
        ids.contains(&task.as_str()) && !ids.contains(&other_task.as_str()),
        "{list}"
    );

    let refused: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/api/v1/hooks/g/x/trigger".into(),
            Some(json!({})),
        ),
        (Method::GET, format!("/api/v1/tasks/{other_task}"), None),
        (Method::GET, format!("/api/v1/tasks/{task}/events"), None),
        (
            Method::POST,
            "/api/v1/tasks".into(),
            Some(json!({"template": "deploy", "inputs": {}})),
        ),
        (Method::POST, format!("/api/v1/tasks/{task}/cancel"), None),
        (Method::GET, "/api/v1/hooks/g/h".into(), None),
        (Method::DELETE, "/api/v1/hooks/g/h".into(), None),
        (Method::GET, "/api/v1/hooks/g/h/token".into(), None),
        (Method::GET, "/api/v1/templates/deploy".into(), None),
        (Method::GET, "/api/v1/tokens".into(), None),
        (
            Method::POST,
            "/api/v1/tokens".into(),
            Some(json!({"scopes": ["hooks:trigger:g/h"]})),
        ),
        (Method::GET, "/api/v1/maintenance".into(), None),
    ];
    for (m, p, b) in refused {
        let (st, v) = as_token(&s, &tok, m.clone(), &p, b).await;
        // Events are readable with tasks:read, so that one is allowed.
        if p.ends_with("/events") {
            assert_eq!(st, 200, "{m} {p}: {v}");
            continue;
        }
        assert_eq!(st, 403, "{m} {p}: {v}");
        assert_eq!(v["field"], "scope", "{m} {p}: {v}");
    }
    let (st, v) = put_yaml(&s, &tok, "/api/v1/hooks/g/h", "template: deploy\n").await;
    assert_eq!(st, 403, "{v}");
    // The admin token still does everything.
    assert_eq!(s.get("/api/v1/tokens").await.0, 200);
}

#[tokio::test]
async fn tokens_mint_only_what_they_hold_and_stop_when_revoked_or_expired() {
    let s = Server::start();
    let (mid, manager) = mint(
        &s,
        json!({"scopes": ["tokens:manage", "tasks:*"], "description": "ops"}),
    )
    .await;
    // A subset, wildcard included, may be minted; anything more is 403 naming the scope.
    let (st, v) = as_token(
        &s,
        &manager,
        Method::POST,
        "/api/v1/tokens",
        Some(json!({"scopes": ["tasks:read:*"], "expires_in": "1h"})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = as_token(
        &s,
        &manager,
        Method::POST,
        "/api/v1/tokens",
        Some(json!({"scopes": ["tasks:read:*", "hooks:trigger:g/h"]})),
    )
    .await;
    assert_eq!(st, 403, "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("hooks:trigger:g/h"),
        "{v}"
    );
    let (st, v) = as_token(
        &s,
        &manager,
        Method::POST,
        "/api/v1/tokens",
        Some(json!({"scopes": ["tasks:read:*"], "user": "mallory"})),
    )
    .await;
    assert_eq!(st, 403, "only admin names another user: {v}");
    // Bad input names its field and creates nothing.
    for (body, field) in [
        (json!({"scopes": []}), "scopes"),
        (json!({"scopes": ["a b"]}), "scopes[0]"),
        (json!({"scopes": ["x"], "expires_in": "soon"}), "expires_in"),
        (
            json!({"scopes": ["x"], "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"scopes": ["x"], "expires_at": "2999-01-01T00:00:00Z", "expires_in": "1d"}),
            "expires_in",
        ),
        (json!({"scopes": ["x"], "colour": 1}), "body"),
    ] {
        let (st, v) = s.post("/api/v1/tokens", body.clone()).await;
        assert_eq!(st, 400, "{body}: {v}");
        if field != "body" {
            assert_eq!(v["field"], field, "{body}: {v}");
        }
    }
    let (_, list) = s.get("/api/v1/tokens").await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(
        list.to_string().find("thk_").is_none(),
        "secrets are never listed: {list}"
    );

    // Used: last_used_at is recorded.
    assert_eq!(code(&s, &manager, Method::GET, "/api/v1/tokens").await, 200);
    let mut used = Value::Null;
    for _ in 0..100 {
        let (_, list) = s.get("/api/v1/tokens").await;
        used = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == mid.as_str())
            .unwrap()["last_used_at"]
            .clone();
        if !used.is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(used.is_string(), "last_used_at was not recorded");

    // Expired: 401.
    let (_, short) = mint(&s, json!({"scopes": ["tasks:read:*"], "expires_in": "1s"})).await;
    assert_eq!(code(&s, &short, Method::GET, "/api/v1/tasks").await, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (st, v) = as_token(&s, &short, Method::GET, "/api/v1/tasks", None).await;
    assert_eq!(st, 401, "{v}");

    // Revoked (by the CLI): 401 at once.
    let (code, out, err) = taskhook(Some(&s), &["token", "revoke", &mid]);
    assert_eq!(code, 0, "{out}{err}");
    let (st, v) = as_token(&s, &manager, Method::GET, "/api/v1/tokens", None).await;
    assert_eq!(st, 401, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("revoked"));
    let (code, out, _) = taskhook(Some(&s), &["token", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains(&mid) && out.contains("revoked"), "{out}");
    assert_eq!(
        s.req(Method::DELETE, "/api/v1/tokens/nope", None).await.0,
        404
    );
    assert_eq!(
        as_token(&s, "thk_unknown", Method::GET, "/api/v1/tasks", None)
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn a_hook_acts_with_its_scopes() {
    let s = Server::start();
    assert_eq!(s.put_template("deploy", TPL).await.0, 201);
    assert_eq!(s.put_template("other", OTHER).await.0, 201);
    // A hook whose scopes do not grant its template: every fire is refused, in the ledger.
    let (st, v) = put_yaml(
        &s,
        TOKEN,
        "/api/v1/hooks/g/narrow",
        "template: deploy\nscopes: ['tasks:create:other']\n",
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["hook"]["scopes"], json!(["tasks:create:other"]));
    let (st, fired) = s.post("/api/v1/hooks/g/narrow/trigger", json!({})).await;
    assert_eq!(st, 202, "{fired}");
    assert_eq!(fired["result"], "error");
    assert!(fired["task_id"].is_null());
    let (_, fires) = s.get("/api/v1/hooks/g/narrow/fires").await;
    let err = fires["fires"][0]["error"].as_str().unwrap();
    assert!(err.contains("tasks:create:deploy"), "{err}");
    let (_, tasks) = s.get("/api/v1/tasks").await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 0);

    // Writing a hook needs every scope it will hold (by default tasks:create:<template>).
    let (_, writer) = mint(
        &s,
        json!({"scopes": ["hooks:write:g/*", "tasks:create:deploy"]}),
    )
    .await;
    let (st, v) = put_yaml(&s, &writer, "/api/v1/hooks/g/mine", "template: deploy\n").await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = put_yaml(&s, &writer, "/api/v1/hooks/g/mine", "template: other\n").await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["field"], "scopes");
    let (st, v) = put_yaml(
        &s,
        &writer,
        "/api/v1/hooks/g/mine",
        "template: deploy\nscopes: ['tasks:create:*']\n",
    )
    .await;
    assert_eq!(st, 403, "{v}");
    let (st, v) = put_yaml(
        &s,
        TOKEN,
        "/api/v1/hooks/g/bad",
        "template: deploy\nscopes: ['a*b']\n",
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["field"], "scopes[0]");
}

#[tokio::test]
async fn requesters_and_resolvers_act_on_their_tasks() {
    let s = Server::start();
    let tpl = "name: approve\nallowed_resolver_usernames: [rita]\nsteps:\n  a: {action: {type: echo, configuration: {output: {x: 1}}}}\n";
    assert_eq!(s.put_template("approve", tpl).await.0, 201);
    let (_, ann) = mint(
        &s,
        json!({"scopes": ["tasks:create:approve"], "user": "ann"}),
    )
    .await;
    let (_, rita) = mint(&s, json!({"scopes": ["nothing"], "user": "rita"})).await;
    let (_, bob) = mint(&s, json!({"scopes": ["nothing"], "user": "bob"})).await;
    let (st, t) = as_token(
        &s,
        &ann,
        Method::POST,
        "/api/v1/tasks",
        Some(json!({"template": "approve", "inputs": {}})),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    // The requester reads it (and sees it listed); others without scopes do not.
    let (st, v) = as_token(&s, &ann, Method::GET, &format!("/api/v1/tasks/{id}"), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["requester"], "ann");
    let (_, list) = as_token(&s, &ann, Method::GET, "/api/v1/tasks", None).await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(
        code(&s, &bob, Method::GET, &format!("/api/v1/tasks/{id}")).await,
        403
    );
    // A resolver named by the template reads and resolves; the requester may not resolve.
    assert_eq!(
        code(&s, &rita, Method::GET, &format!("/api/v1/tasks/{id}")).await,
        200
    );
    assert_eq!(
        code(
            &s,
            &ann,
            Method::POST,
            &format!("/api/v1/tasks/{id}/resolve")
        )
        .await,
        403
    );
    assert_eq!(
        code(
            &s,
            &bob,
            Method::POST,
            &format!("/api/v1/tasks/{id}/resolve")
        )
        .await,
        403
    );
    let (st, v) = as_token(
        &s,
        &rita,
        Method::POST,
        &format!("/api/v1/tasks/{id}/resolve"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    s.wait_state(&id, &["DONE"]).await;

    // The requester cancels their own task; someone else may not.
    let (_, t) = as_token(
        &s,
        &ann,
        Method::POST,
        "/api/v1/tasks",
        Some(json!({"template": "approve", "inputs": {}})),
    )
    .await;
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(
        code(
            &s,
            &bob,
            Method::POST,
            &format!("/api/v1/tasks/{id}/cancel")
        )
        .await,
        403
    );
    assert_eq!(
        code(&s, &ann, Method::POST, &format!("/api/v1/tasks/{id}/pause")).await,
        403
    );
    let (st, v) = as_token(
        &s,
        &ann,
        Method::POST,
        &format!("/api/v1/tasks/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "CANCELLED");
}

#[tokio::test]
async fn a_tasks_own_resolvers_and_watchers_act_on_that_task_only() {
    let s = Server::start();
    let tpl = "name: gate\nsteps:\n  a: {action: {type: echo, configuration: {output: {x: 1}}}}\n";
    assert_eq!(s.put_template("gate", tpl).await.0, 201);
    let (_, ann) = mint(&s, json!({"scopes": ["tasks:create:gate"], "user": "ann"})).await;
    let (_, vic) = mint(&s, json!({"scopes": ["nothing"], "user": "vic"})).await;
    let (_, wes) = mint(&s, json!({"scopes": ["nothing"], "user": "wes"})).await;
    let create = |body: Value| as_token(&s, &ann, Method::POST, "/api/v1/tasks", Some(body));
    let (st, t) = create(
        json!({"template": "gate", "resolver_usernames": ["vic", "vic"],
        "watcher_usernames": ["wes"]}),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    let named = format!("/api/v1/tasks/{}", t["id"].as_str().unwrap());
    let (st, t) = create(json!({"template": "gate"})).await;
    assert_eq!(st, 201, "{t}");
    let other = format!("/api/v1/tasks/{}", t["id"].as_str().unwrap());

    // Both read the task that names them, and it is the only one they see listed.
    let (st, v) = as_token(&s, &wes, Method::GET, &named, None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["resolver_usernames"], json!(["vic"]));
    assert_eq!(v["watcher_usernames"], json!(["wes"]));
    assert_eq!(code(&s, &vic, Method::GET, &named).await, 200);
    assert_eq!(
        code(&s, &vic, Method::GET, &format!("{named}/events")).await,
        200
    );
    for who in [&vic, &wes] {
        assert_eq!(code(&s, who, Method::GET, &other).await, 403);
        let (_, list) = as_token(&s, who, Method::GET, "/api/v1/tasks", None).await;
        let ids: Vec<&str> = list["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [named.rsplit('/').next().unwrap()], "{list}");
    }
    // A watcher only reads; a resolver resolves this task and no other.
    assert_eq!(
        code(&s, &wes, Method::POST, &format!("{named}/resolve")).await,
        403
    );
    assert_eq!(
        code(&s, &wes, Method::POST, &format!("{named}/cancel")).await,
        403
    );
    assert_eq!(
        code(&s, &vic, Method::POST, &format!("{other}/resolve")).await,
        403
    );
    assert_eq!(
        code(&s, &vic, Method::POST, &format!("{named}/cancel")).await,
        403
    );
    assert_eq!(
        code(&s, &vic, Method::POST, &format!("{named}/resolve")).await,
        200
    );
    s.wait_state(named.rsplit('/').next().unwrap(), &["DONE"])
        .await;

    // Bad lists are refused with the failing field, and nothing is created.
    let (st, v) = create(json!({"template": "gate", "watcher_usernames": [""]})).await;
    assert_eq!(
        (st, v["field"].as_str()),
        (400, Some("watcher_usernames")),
        "{v}"
    );
    let (st, v) = create(json!({"template": "gate", "resolver_usernames": "vic"})).await;
    assert_eq!(st, 400, "{v}");
    let (_, list) = s.get("/api/v1/tasks").await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 2, "{list}");

    // The CLI names them too.
    let (c, out, err) = taskhook(
        Some(&s),
        &[
            "task",
            "create",
            "gate",
            "--resolver",
            "vic",
            "--watcher",
            "wes",
            "--json",
        ],
    );
    assert_eq!(c, 0, "{out}{err}");
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        code(&s, &wes, Method::GET, &format!("/api/v1/tasks/{id}")).await,
        200
    );
}

#[tokio::test]
async fn a_proxy_user_is_trusted_only_from_the_proxy() {
    let dir = support::fresh_dir();
    let scopes = dir.join("proxy-scopes.yaml");
    std::fs::write(
        &scopes,
        "users:\n  ada: ['templates:read:*']\ngroups:\n  ops: ['tokens:manage']\n",
    )
    .unwrap();
    let scopes = scopes.to_str().unwrap().to_string();
    let header = |s: &Server, path: &str, user: &str, groups: &str| {
        s.http
            .get(format!("{}{}", s.url, path))
            .header("X-Remote-User", user)
            .header("X-Remote-Groups", groups)
            .send()
    };
    {
        let s = Server::start_in(
            dir.join("trusted"),
            &[
                "--proxy-user-header",
                "X-Remote-User",
                "--proxy-groups-header",
                "X-Remote-Groups",
                "--trusted-proxies",
                "10.0.0.0/8,127.0.0.1/32",
                "--proxy-scopes",
                &scopes,
            ],
        );
        assert_eq!(s.put_template("deploy", TPL).await.0, 201);
        let r = header(&s, "/api/v1/templates/deploy", "ada", "")
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = header(&s, "/api/v1/tokens", "ada", "").await.unwrap();
        assert_eq!(r.status().as_u16(), 403);
        let r = header(&s, "/api/v1/tokens", "ada", "ops, dev")
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = header(&s, "/api/v1/templates/deploy", "eve", "")
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            403,
            "a user the file does not name holds nothing"
        );
        // Without the header: a token is needed.
        let r = s
            .http
            .get(format!("{}/api/v1/templates/deploy", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    // Loopback is not a trusted proxy here: the header is ignored.
    let s = Server::start_in(
        dir.join("untrusted"),
        &[
            "--proxy-user-header",
            "X-Remote-User",
            "--trusted-proxies",
            "10.0.0.0/8",
            "--proxy-scopes",
            &scopes,
        ],
    );
    assert_eq!(s.put_template("deploy", TPL).await.0, 201);
    let r = header(&s, "/api/v1/templates/deploy", "ada", "ops")
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // A bad scopes file stops the start with a message.
    std::fs::write(dir.join("bad.yaml"), "users:\n  ada: ['a b']\n").unwrap();
    let (code, _, err) = taskhook(
        None,
        &[
            "serve",
            "--data-dir",
            dir.join("bad").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--proxy-user-header",
            "X-Remote-User",
            "--trusted-proxies",
            "127.0.0.1",
            "--proxy-scopes",
            dir.join("bad.yaml").to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("users.ada[0]"), "{err}");
}

#[tokio::test]
async fn a_token_lifetime_past_ten_years_is_refused() {
    let s = Server::start();
    for (body, field) in [
        (
            json!({"scopes": ["x"], "expires_in": "99999999999999d"}),
            "expires_in",
        ),
        (
            json!({"scopes": ["x"], "expires_in": "3651d"}),
            "expires_in",
        ),
        (json!({"scopes": ["x"], "expires_in": "0s"}), "expires_in"),
        (
            json!({"scopes": ["x"], "expires_at": "9999-12-31T23:59:59Z"}),
            "expires_at",
        ),
        (
            json!({"scopes": ["x"], "expires_at": "99999-01-01T00:00:00Z"}),
            "expires_at",
        ),
    ] {
        let (st, v) = s.post("/api/v1/tokens", body.clone()).await;
        assert_eq!((st, v["field"].as_str()), (400, Some(field)), "{body}: {v}");
    }
    let (_, list) = s.get("/api/v1/tokens").await;
    assert_eq!(list, json!([]), "nothing was created");
    // Up to ten years is fine, and says when.
    let (st, v) = s
        .post(
            "/api/v1/tokens",
            json!({"scopes": ["x"], "expires_in": "3650d"}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert!(
        v["expires_at"].as_str().is_some_and(|e| e.len() > 10),
        "{v}"
    );
    // The CLI says the same.
    let (code, _, err) = support::taskhook(
        Some(&s),
        &[
            "token",
            "create",
            "--scope",
            "x",
            "--expires-in",
            "99999999999999d",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("expires_in"), "{err}");
}
