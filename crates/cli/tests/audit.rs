//! The audit log and request-rate limits as a user meets them, on the real binary: write
//! calls (accepted and refused) and task state changes in `GET /api/v1/audit`, its filters
//! and pages, the `taskhook audit` command, and 429s with Retry-After.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Server, TOKEN, taskhook};

const HELLO: &str = "name: hello\nauto_runnable: true\nsteps:\n  a: {action: {type: echo, configuration: {output: hi}}}\n";
const HOOK: &str = "template: hello\nmethods: [POST]\n";

/// The calls of the audit view matching `query`, newest first.
async fn audit(s: &Server, query: &str) -> Vec<Value> {
    let (st, v) = s.get(&format!("/api/v1/audit?{query}")).await;
    assert_eq!(st, 200, "{query}: {v}");
    v["entries"].as_array().unwrap().clone()
}

fn find<'a>(entries: &'a [Value], action: &str, status: u16) -> &'a Value {
    entries
        .iter()
        .find(|e| e["action"] == action && e["status"] == status)
        .unwrap_or_else(|| panic!("no {action} answered {status} in {entries:#?}"))
}

#[tokio::test]
async fn write_calls_and_task_changes_are_in_the_audit_log() {
    let s = Server::start();
    let anon = reqwest::Client::new();
    let started = jiff::Timestamp::now();

    // Accepted writes.
    assert_eq!(s.put_template("hello", HELLO).await.0, 201);
    let (st, v) = s.post("/api/v1/tasks", json!({"template": "hello"})).await;
    assert_eq!(st, 201, "{v}");
    let task = v["id"].as_str().unwrap().to_string();
    s.wait_state(&task, &["DONE"]).await;
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/hooks/g/h",
            Some((HOOK, "application/yaml")),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (_, tok) = s.get("/api/v1/hooks/g/h/token").await;
    let secret = tok["token"].as_str().unwrap().to_string();
    let r = anon
        .post(format!("{}/api/v1/hooks/g/h/trigger/{secret}", s.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // Refused writes: a bad token, bad input, a wrong trigger token, maintenance.
    let r = anon
        .post(format!("{}/api/v1/tasks", s.url))
        .bearer_auth("not-the-token")
        .json(&json!({"template": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (st, v) = s.post("/api/v1/tasks", json!({"template": 5})).await;
    assert_eq!(st, 400, "{v}");
    let r = anon
        .post(format!("{}/api/v1/hooks/g/h/trigger/wrong-secret", s.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let maintenance = |on: bool| {
        let body = json!({"enabled": on, "message": "upgrade"}).to_string();
        let s = &s;
        async move {
            s.req(
                reqwest::Method::PUT,
                "/api/v1/maintenance",
                Some((&body, "application/json")),
            )
            .await
            .0
        }
    };
    assert_eq!(maintenance(true).await, 200);
    let (st, _) = s.post("/api/v1/tasks", json!({"template": "hello"})).await;
    assert_eq!(st, 503);
    assert_eq!(maintenance(false).await, 200);
    // Reads are not recorded.
    assert_eq!(s.get("/api/v1/tasks").await.0, 200);
    assert_eq!(s.get(&format!("/api/v1/tasks/{task}")).await.0, 200);

    let calls = audit(&s, "kind=call").await;
    assert!(calls.iter().all(|e| e["kind"] == "call"));
    assert!(
        calls
            .iter()
            .all(|e| !e["action"].as_str().unwrap().starts_with("GET ")),
        "{calls:#?}"
    );
    let put = find(&calls, "PUT /api/v1/templates/{name}", 201);
    assert_eq!(
        (&put["actor"], &put["target"], &put["outcome"]),
        (&json!("admin"), &json!("hello"), &json!("ok"))
    );
    assert_eq!(put["client"], "127.0.0.1");
    assert!(put["error"].is_null());
    let created = find(&calls, "POST /api/v1/tasks", 201);
    assert_eq!(
        (&created["actor"], &created["target"]),
        (&json!("admin"), &json!(task))
    );
    let refused = find(&calls, "POST /api/v1/tasks", 401);
    assert_eq!(
        (&refused["actor"], &refused["outcome"]),
        (&json!("anonymous"), &json!("error"))
    );
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .starts_with("Unauthorized: "),
        "{refused}"
    );
    let invalid = find(&calls, "POST /api/v1/tasks", 400);
    assert_eq!(invalid["actor"], "admin");
    assert!(
        invalid["error"]
            .as_str()
            .unwrap()
            .contains("(field: template)"),
        "{invalid}"
    );
    let closed = find(&calls, "POST /api/v1/tasks", 503);
    assert!(
        closed["error"]
            .as_str()
            .unwrap()
            .contains("read-only for maintenance"),
        "{closed}"
    );
    let fired = find(
        &calls,
        "POST /api/v1/hooks/{group}/{id}/trigger/{token}",
        202,
    );
    assert_eq!(
        (&fired["actor"], &fired["target"]),
        (&json!("hook:g/h"), &json!("g/h"))
    );
    let wrong = find(
        &calls,
        "POST /api/v1/hooks/{group}/{id}/trigger/{token}",
        401,
    );
    assert_eq!(wrong["actor"], "hook:g/h");
    assert_eq!(
        calls
            .iter()
            .filter(|e| e["action"] == "PUT /api/v1/maintenance")
            .count(),
        2
    );
    // The trigger token never reaches the log.
    let everything = audit(&s, "limit=1000")
        .await
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    assert!(!everything.contains(&secret));

    // Task state changes are in the same view.
    let trail = audit(&s, &format!("target={task}")).await;
    let kinds: Vec<&str> = trail.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"task") && kinds.contains(&"call"),
        "{trail:#?}"
    );
    let done = trail
        .iter()
        .find(|e| e["kind"] == "task" && e["to_state"] == "DONE")
        .unwrap_or_else(|| panic!("{trail:#?}"));
    assert_eq!(done["outcome"], "ok");
    assert_eq!(
        trail.last().unwrap()["action"],
        "POST /api/v1/tasks",
        "oldest last"
    );
    let times: Vec<jiff::Timestamp> = audit(&s, "")
        .await
        .iter()
        .map(|e| e["at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");

    // Filters.
    let only = audit(&s, "actor=anonymous").await;
    assert_eq!(only.len(), 1, "{only:#?}");
    assert_eq!(only[0]["status"], 401);
    let errors = audit(&s, "outcome=error").await;
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert_eq!(audit(&s, "outcome=503").await.len(), 1);
    assert_eq!(
        audit(&s, "outcome=ok&kind=call").await.len(),
        calls.len() - 4
    );
    assert!(
        audit(&s, "kind=task")
            .await
            .iter()
            .all(|e| e["kind"] == "task")
    );
    let action = "POST%20%2Fapi%2Fv1%2Ftasks";
    assert_eq!(audit(&s, &format!("action={action}")).await.len(), 4);
    assert_eq!(
        audit(&s, &format!("action=created&target={task}"))
            .await
            .len(),
        1
    );
    let since = format!("since={started}&limit=1000");
    assert_eq!(
        audit(&s, &since).await.len(),
        audit(&s, "limit=1000").await.len()
    );
    let future = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
    assert!(audit(&s, &format!("since={future}")).await.is_empty());
    assert!(audit(&s, &format!("until={started}")).await.is_empty());

    // Pages: every entry once, in order.
    let all = audit(&s, "limit=1000").await;
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let (st, v) = s.get(&format!("/api/v1/audit?limit=3{cursor}")).await;
        assert_eq!(st, 200, "{v}");
        paged.extend(v["entries"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(paged, all);

    // Bad filters name their field and change nothing.
    for (query, field) in [
        ("outcome=maybe", "outcome"),
        ("kind=fire", "kind"),
        ("since=yesterday", "since"),
        ("until=12", "until"),
        ("cursor=garbage", "cursor"),
        ("limit=5000", "limit"),
        ("who=me", "query"),
    ] {
        let (st, v) = s.get(&format!("/api/v1/audit?{query}")).await;
        assert_eq!(
            (st, v["field"].as_str()),
            (400, Some(field)),
            "{query}: {v}"
        );
    }
    // Admin only.
    let r = anon
        .get(format!("{}/api/v1/audit", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The command.
    let (code, out, err) = taskhook(Some(&s), &["audit", "--actor", "anonymous"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("POST /api/v1/tasks") && out.contains("401"),
        "{out}"
    );
    assert!(out.contains("from 127.0.0.1"), "{out}");
    let (code, out, err) = taskhook(
        Some(&s),
        &[
            "audit", "--since", "1h", "--kind", "task", "--target", &task, "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["kind"] == "task" && e["target"] == task.as_str())
    );
    assert!(!v["entries"].as_array().unwrap().is_empty());
    let (code, _, err) = taskhook(Some(&s), &["audit", "--outcome", "maybe"]);
    assert_ne!(code, 0);
    assert!(err.contains("outcome"), "{err}");
    let (code, _, err) = taskhook(Some(&s), &["audit", "--since", "last week"]);
    assert_ne!(code, 0);
    assert!(err.contains("--since"), "{err}");
}

/// Sends `n` requests as fast as possible; returns the statuses and the last Retry-After.
async fn hammer(n: usize, req: impl Fn() -> reqwest::RequestBuilder) -> (Vec<u16>, Option<u64>) {
    let mut statuses = Vec::new();
    let mut retry = None;
    for _ in 0..n {
        let r = req().send().await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert_eq!(r.headers()["content-type"], "application/problem+json");
            retry = Some(
                r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
            );
        }
    }
    (statuses, retry)
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_429_and_others_do_not() {
    let s = Server::start_in(
        support::fresh_dir(),
        &[
            "--admin-rate-limit",
            "2/s",
            "--anonymous-rate-limit",
            "1/m",
            "--rate-limit-burst",
            "5",
        ],
    );
    let http = reqwest::Client::new();
    let tasks = format!("{}/api/v1/tasks", s.url);

    // The admin token: a burst of 5, then 429 with Retry-After.
    let (statuses, retry) = hammer(8, || http.get(&tasks).bearer_auth(TOKEN)).await;
    assert_eq!(&statuses[..5], [200; 5], "{statuses:?}");
    assert!(statuses[5..].contains(&429), "{statuses:?}");
    assert_eq!(retry, Some(1));
    // Another caller (no token, its own bucket) is unaffected: 401, not 429.
    let r = http.get(&tasks).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // After the wait, the admin gets through again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = http.get(&tasks).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Calls without a valid token share their address's bucket: 4 left of the burst of 5.
    let (statuses, retry) = hammer(6, || {
        http.post(&tasks).bearer_auth("guess").json(&json!({}))
    })
    .await;
    assert_eq!(statuses, [401, 401, 401, 401, 429, 429], "{statuses:?}");
    assert!(retry.unwrap() > 1 && retry.unwrap() <= 60, "{retry:?}");
    // Refusals for the rate are not recorded; the 401s are.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, v) = s.get("/api/v1/audit?actor=anonymous").await;
    let statuses: Vec<&Value> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["status"])
        .collect();
    assert_eq!(statuses, [&json!(401); 4], "{v}");

    // Webhooks and secret-token triggers have no limit by default: a burst goes through.
    assert_eq!(s.put_template("hello", HELLO).await.0, 201);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/hooks/g/h",
            Some((HOOK, "application/yaml")),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (_, tok) = s.get("/api/v1/hooks/g/h/token").await;
    let url = format!(
        "{}/api/v1/hooks/g/h/trigger/{}",
        s.url,
        tok["token"].as_str().unwrap()
    );
    let (statuses, _) = hammer(20, || http.post(&url).json(&json!({}))).await;
    assert_eq!(statuses, [202; 20]);
}

#[tokio::test]
async fn bad_rate_flags_stop_the_start() {
    let (code, _, err) = taskhook(None, &["serve", "--rate-limit", "fast"]);
    assert_ne!(code, 0);
    assert!(err.contains("--rate-limit"), "{err}");
    let (code, _, err) = taskhook(None, &["serve", "--rate-limit-burst", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--rate-limit-burst"), "{err}");
}

/// Behind a trusted proxy, each client has its own rate-limit bucket and its own address in
/// the audit log; from any other peer the forwarding headers change nothing.
#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_keyed_and_recorded() {
    let limits = ["--anonymous-rate-limit", "1/m", "--rate-limit-burst", "1"];
    let mut flags = limits.to_vec();
    flags.extend(["--trusted-proxies", "127.0.0.1/32"]);
    let s = Server::start_in(support::fresh_dir(), &flags);
    let http = reqwest::Client::new();
    let tasks = format!("{}/api/v1/tasks", s.url);
    let call = |client: &'static str| {
        http.post(&tasks)
            .bearer_auth("guess")
            .header("X-Forwarded-For", format!("{client}, 127.0.0.1"))
            .json(&json!({}))
            .send()
    };
    assert_eq!(call("203.0.113.1").await.unwrap().status(), 401);
    assert_eq!(
        call("203.0.113.1").await.unwrap().status(),
        429,
        "its bucket is spent"
    );
    assert_eq!(
        call("203.0.113.2").await.unwrap().status(),
        401,
        "another client's is not"
    );
    let r = http
        .post(&tasks)
        .bearer_auth("guess")
        .header("Forwarded", "for=\"[2001:db8::5]:4711\"")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, v) = s.get("/api/v1/audit?actor=anonymous").await;
    let mut clients: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["client"].as_str().unwrap_or_default())
        .collect();
    clients.sort_unstable();
    assert_eq!(
        clients,
        ["2001:db8::5", "203.0.113.1", "203.0.113.2"],
        "{v}"
    );

    // Without --trusted-proxies the peer is the client, whatever the headers say.
    let s = Server::start_in(support::fresh_dir(), &limits);
    let tasks = format!("{}/api/v1/tasks", s.url);
    let call = |client: &'static str| {
        http.post(&tasks)
            .bearer_auth("guess")
            .header("X-Forwarded-For", client)
            .json(&json!({}))
            .send()
    };
    assert_eq!(call("203.0.113.1").await.unwrap().status(), 401);
    assert_eq!(call("203.0.113.2").await.unwrap().status(), 429);
}
