//! An operator's tools for tasks that stopped for a person: BLOCKED tasks listed by reason,
//! a step's state set by hand, and retries in bulk; over the API and the CLI.

mod support;

use serde_json::{Value, json};
use support::{Server, target, taskhook};

async fn put_state(s: &Server, id: &str, step: &str, body: Value) -> (u16, Value) {
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            &format!("/api/v1/tasks/{id}/steps/{step}/state"),
            Some((&body.to_string(), "application/json")),
        )
        .await;
    (st, v)
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    let mut out: Vec<String> = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {v:#}"))
        .iter()
        .map(|t| t.as_str().map_or_else(|| t["id"].to_string(), String::from))
        .collect();
    out.sort();
    out
}

fn listed(page: &Value) -> Vec<String> {
    let mut out: Vec<String> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn blocked_tasks_are_listed_by_reason_fixed_by_hand_and_retried_in_bulk() {
    let target = target().await;
    let dir = support::fresh_dir();
    let mut s = Server::start_in(dir.clone(), &[]);
    // `pay` is not idempotent: a crash while it runs blocks the task. `after` reads its output.
    let tpl = format!(
        "name: once\nauto_runnable: true\nsteps:\n  pay:\n    action: {{type: http, configuration: {{url: '{target}/slow'}}}}\n  \
         after:\n    dependencies: [pay]\n    action: {{type: echo, configuration: {{output: '{{{{ step.pay.output }}}}'}}}}\n"
    );
    assert_eq!(s.put_template("once", &tpl).await.0, 201);
    let failing = "name: failing\nauto_runnable: true\nsteps:\n  check:\n    action: {type: echo, configuration: {error_type: client, error_message: nope}}\n  \
                   next:\n    dependencies: [check]\n    action: {type: echo, configuration: {output: '{{ step.check.output.verdict }}'}}\n";
    assert_eq!(s.put_template("failing", failing).await.0, 201);
    let mut crashed = Vec::new();
    for _ in 0..2 {
        let (_, c) = s.post("/api/v1/tasks", json!({"template": "once"})).await;
        crashed.push(c["id"].as_str().unwrap().to_string());
    }
    crashed.sort();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    s.kill9();
    let s = Server::start_in(dir, &[]);
    for id in &crashed {
        let t = s.wait_state(id, &["BLOCKED", "DONE"]).await;
        assert_eq!(t["state"], "BLOCKED", "{t:#}");
        assert_eq!(t["blocked_reason"], "crashed", "{t:#}");
        assert_eq!(t["steps"]["pay"]["state"], "CRASHED");
    }
    let (_, c) = s
        .post("/api/v1/tasks", json!({"template": "failing"}))
        .await;
    let failed = c["id"].as_str().unwrap().to_string();
    let t = s.wait_state(&failed, &["BLOCKED", "DONE"]).await;
    assert_eq!(t["blocked_reason"], "failed_steps", "{t:#}");

    // Listed by reason; a reason that does not exist is refused by name.
    let (st, page) = s.get("/api/v1/tasks?reason=crashed").await;
    assert_eq!((st, listed(&page)), (200, crashed.clone()), "{page:#}");
    let (_, page) = s
        .get("/api/v1/tasks?state=BLOCKED&reason=failed_steps")
        .await;
    assert_eq!(listed(&page), vec![failed.clone()]);
    let (st, p) = s.get("/api/v1/tasks?reason=tired").await;
    assert_eq!((st, p["field"].clone()), (400, json!("reason")), "{p:#}");

    // The operator checked that the first payment went through: its step is marked DONE with
    // the output it should have had; the task stays BLOCKED until retried.
    let (a, b) = (&crashed[0], &crashed[1]);
    let (st, t) = put_state(
        &s,
        a,
        "pay",
        json!({"state": "DONE", "output": {"paid": "by hand"}}),
    )
    .await;
    assert_eq!(st, 200, "{t:#}");
    assert_eq!(t["steps"]["pay"]["state"], "DONE");
    assert_eq!(t["state"], "BLOCKED");
    // Bad edits change nothing.
    for (step, body, status, field) in [
        ("pay", json!({"state": "RUNNING"}), 400, json!("state")),
        (
            "pay",
            json!({"state": "TODO", "output": 1}),
            400,
            json!("output"),
        ),
        (
            "pay",
            json!({"state": "DONE", "extra": 1}),
            400,
            Value::Null,
        ),
        ("nope", json!({"state": "DONE"}), 404, Value::Null),
    ] {
        let (st, p) = put_state(&s, b, step, body.clone()).await;
        assert_eq!(st, status, "{body}: {p:#}");
        if !field.is_null() {
            assert_eq!(p["field"], field, "{p:#}");
        }
    }
    let (_, t) = s.get(&format!("/api/v1/tasks/{b}")).await;
    assert_eq!(t["steps"]["pay"]["state"], "CRASHED", "{t:#}");

    // A filter needs a reason, ids or a template; a bulk retry reports each task.
    let (st, p) = s.post("/api/v1/tasks/retry", json!({})).await;
    assert_eq!((st, p["field"].clone()), (400, json!("reason")), "{p:#}");
    let (st, out) = s
        .post("/api/v1/tasks/retry", json!({"reason": "crashed"}))
        .await;
    assert_eq!(st, 200, "{out:#}");
    assert_eq!(ids(&out, "retried"), crashed);
    let t = s.wait_state(a, &["DONE"]).await;
    assert_eq!(t["steps"]["pay"]["output"], json!({"paid": "by hand"}));
    assert_eq!(
        t["steps"]["pay"]["attempts"], 1,
        "the step marked DONE did not run again"
    );
    assert_eq!(t["steps"]["after"]["output"], json!({"paid": "by hand"}));
    let t = s.wait_state(b, &["DONE"]).await;
    assert_eq!(t["steps"]["pay"]["output"], json!({"slow": true}));
    assert!(t.get("blocked_reason").is_none(), "{t:#}");

    // The edit is in the task's audit trail, by whom; a task that is not stopped cannot be
    // edited.
    let (_, events) = s.get(&format!("/api/v1/tasks/{a}/events")).await;
    let set = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "step_set")
        .unwrap_or_else(|| panic!("{events:#}"));
    assert_eq!(set["actor"], "admin", "{set:#}");
    assert_eq!(
        set["detail"],
        json!({"step": "pay", "from": "CRASHED", "to": "DONE"})
    );
    let (st, p) = put_state(&s, a, "pay", json!({"state": "TODO"})).await;
    assert_eq!(st, 409, "{p:#}");

    // Named ids: each reported apart.
    let (st, out) = s
        .post(
            "/api/v1/tasks/retry",
            json!({"ids": [a, "0190aaaa-0000-7000-8000-000000000000"]}),
        )
        .await;
    assert_eq!(st, 200);
    assert!(out["retried"].as_array().unwrap().is_empty(), "{out:#}");
    let statuses: Vec<u64> = out["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![409, 404], "{out:#}");

    // The same from the CLI: list by reason, set the failed step DONE, retry by reason.
    let (code, out, err) = taskhook(
        Some(&s),
        &[
            "task",
            "list",
            "--state",
            "BLOCKED",
            "--reason",
            "failed_steps",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&failed), "{out}");
    let (code, out, err) = taskhook(
        Some(&s),
        &[
            "task",
            "set-step",
            &failed,
            "check",
            "DONE",
            "--output",
            r#"{"verdict": "fine"}"#,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("check DONE (task BLOCKED)"), "{out}");
    let (code, _, err) = taskhook(
        Some(&s),
        &[
            "task", "set-step", &failed, "check", "DONE", "--output", "{",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("--output is not JSON"), "{err}");
    let (code, out, err) = taskhook(Some(&s), &["task", "retry", "--reason", "failed_steps"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("{failed} READY"));
    let t = s.wait_state(&failed, &["DONE"]).await;
    assert_eq!(t["steps"]["next"]["output"], "fine");
}

#[tokio::test]
async fn bulk_retry_retries_only_what_the_caller_may_retry() {
    let s = Server::start();
    let failing = "name: failing\nauto_runnable: true\nsteps:\n  check:\n    action: {type: echo, configuration: {error_type: client}}\n";
    assert_eq!(s.put_template("failing", failing).await.0, 201);
    let (_, c) = s
        .post("/api/v1/tasks", json!({"template": "failing"}))
        .await;
    let id = c["id"].as_str().unwrap().to_string();
    s.wait_state(&id, &["BLOCKED"]).await;
    let (st, tok) = s
        .post(
            "/api/v1/tokens",
            json!({"scopes": ["tasks:read:*"], "description": "reader"}),
        )
        .await;
    assert_eq!(st, 201, "{tok:#}");
    let reader = tok["token"].as_str().unwrap();
    let http = reqwest::Client::new();
    let send = |body: Value| {
        http.post(format!("{}/api/v1/tasks/retry", s.url))
            .bearer_auth(reader)
            .json(&body)
            .send()
    };
    let out: Value = send(json!({"reason": "failed_steps"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(out, json!({"retried": [], "failed": []}));
    let out: Value = send(json!({"ids": [id]}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(out["failed"][0]["status"], 403, "{out:#}");
    let (_, t) = s.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(t["state"], "BLOCKED");
    let (st, _, p) = s
        .req(
            reqwest::Method::PUT,
            &format!("/api/v1/tasks/{id}/steps/check/state"),
            None,
        )
        .await;
    assert_eq!(st, 400, "{p:#}");
    let resp = http
        .put(format!("{}/api/v1/tasks/{id}/steps/check/state", s.url))
        .bearer_auth(reader)
        .json(&json!({"state": "DONE"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
}

#[tokio::test]
async fn a_task_out_of_runs_is_extended_and_tasks_take_comments() {
    let s = Server::start();
    // One run allowed: a server error on the first run leaves it BLOCKED by retry_max.
    let tpl = "name: flaky\nauto_runnable: true\nretry_max: 1\nsteps:\n  call:\n    action: {type: echo, configuration: {error_type: server, error_message: down}}\n";
    assert_eq!(s.put_template("flaky", tpl).await.0, 201);
    let (_, c) = s.post("/api/v1/tasks", json!({"template": "flaky"})).await;
    let id = c["id"].as_str().unwrap().to_string();
    let t = s.wait_state(&id, &["BLOCKED"]).await;
    assert_eq!(t["blocked_reason"], "retry_max", "{t:#}");
    assert_eq!(t["run_max"], 1);

    let (st, out) = s
        .post(&format!("/api/v1/tasks/{id}/extend"), json!({}))
        .await;
    assert_eq!(st, 200, "{out:#}");
    // It ran once more, and is out of runs again.
    let t = s
        .wait_state_within(&id, &["BLOCKED"], std::time::Duration::from_secs(20))
        .await;
    assert_eq!(
        (t["run_max"].clone(), t["run_count"].clone()),
        (json!(2), json!(2)),
        "{t:#}"
    );
    let (_, events) = s.get(&format!("/api/v1/tasks/{id}/events")).await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    let extended = kinds
        .iter()
        .position(|k| *k == "extended")
        .expect("extended");
    assert_eq!(kinds[extended + 1], "retried", "{kinds:?}");

    // Only a task out of runs can be extended.
    let failing = "name: failing\nauto_runnable: true\nsteps:\n  check:\n    action: {type: echo, configuration: {error_type: client}}\n";
    assert_eq!(s.put_template("failing", failing).await.0, 201);
    let (_, c) = s
        .post("/api/v1/tasks", json!({"template": "failing"}))
        .await;
    let other = c["id"].as_str().unwrap().to_string();
    let before = s.wait_state(&other, &["BLOCKED"]).await;
    let (st, p) = s
        .post(&format!("/api/v1/tasks/{other}/extend"), json!({}))
        .await;
    assert_eq!(st, 409, "{p:#}");
    assert!(
        p["detail"].as_str().unwrap().contains("failed_steps"),
        "{p:#}"
    );
    let (_, t) = s.get(&format!("/api/v1/tasks/{other}")).await;
    assert_eq!(t["run_max"], before["run_max"], "{t:#}");

    // Comments: by the caller, oldest first; bad ones change nothing.
    let (st, c1) = s
        .post(
            &format!("/api/v1/tasks/{id}/comments"),
            json!({"content": "the backend is down until noon"}),
        )
        .await;
    assert_eq!(st, 201, "{c1:#}");
    assert_eq!(c1["author"], "admin");
    let (code, out, err) = taskhook(
        Some(&s),
        &["task", "comment", &id, "extended twice, giving up"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.trim().is_empty());
    for (body, status) in [
        (json!({"content": ""}), 400),
        (json!({"content": "x".repeat(10_001)}), 400),
        (json!({"text": "hi"}), 400),
    ] {
        let (st, p) = s.post(&format!("/api/v1/tasks/{id}/comments"), body).await;
        assert_eq!(st, status, "{p:#}");
    }
    let (st, _) = s
        .post(
            "/api/v1/tasks/0190aaaa-0000-7000-8000-000000000000/comments",
            json!({"content": "lost"}),
        )
        .await;
    assert_eq!(st, 404);
    let (st, list) = s.get(&format!("/api/v1/tasks/{id}/comments")).await;
    assert_eq!(st, 200);
    let contents: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        vec![
            "the backend is down until noon",
            "extended twice, giving up"
        ]
    );
    let (code, out, err) = taskhook(Some(&s), &["task", "comments", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("admin: extended twice, giving up"), "{out}");
}

fn steps_named(t: &Value, prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = t["steps"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with(prefix))
        .cloned()
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_blocked_task_reruns_from_a_step_and_the_steps_before_keep_their_outputs() {
    let s = Server::start();
    let put_items = |v: &'static str| {
        let s = &s;
        async move {
            let (st, _, p) = s
                .req(
                    reqwest::Method::PUT,
                    "/api/v1/secrets/items",
                    Some((&json!({ "value": v }).to_string(), "application/json")),
                )
                .await;
            assert!(st == 200 || st == 201, "{p:#}");
        }
    };
    put_items("[1, 2, 3]").await;
    // `first` and `each` print a fresh id every time they run; `check` always fails.
    let tpl = "name: chain\nauto_runnable: true\nsteps:\n  \
               first:\n    action: {type: echo, configuration: {output: {id: '{{ uuid() }}'}}}\n  \
               each:\n    dependencies: [first]\n    foreach: '{{ secret.items }}'\n    \
               action: {type: echo, configuration: {output: {id: '{{ uuid() }}', item: '{{ iterator }}'}}}\n  \
               check:\n    dependencies: [each]\n    action: {type: echo, configuration: {error_type: client, error_message: no}}\n  \
               aside:\n    action: {type: echo, configuration: {output: {id: '{{ uuid() }}'}}}\n";
    assert_eq!(s.put_template("chain", tpl).await.0, 201);
    let (_, c) = s.post("/api/v1/tasks", json!({"template": "chain"})).await;
    let id = c["id"].as_str().unwrap().to_string();
    let before = s.wait_state(&id, &["BLOCKED"]).await;
    assert_eq!(
        steps_named(&before, "each-"),
        ["each-0", "each-1", "each-2"]
    );

    // The list is now shorter: `each` expands again to one child, the others are gone.
    put_items("[7]").await;
    let (st, out) = s
        .post(
            &format!("/api/v1/tasks/{id}/rerun"),
            json!({"from": "each"}),
        )
        .await;
    assert_eq!(st, 200, "{out:#}");
    assert_eq!(out["steps"], json!(["check", "each"]), "{out:#}");
    let after = s.wait_state(&id, &["BLOCKED"]).await;
    assert_eq!(steps_named(&after, "each-"), ["each-0"], "{after:#}");
    assert_eq!(after["steps"]["each-0"]["output"]["item"], 7);
    // Steps before and beside it kept their outputs; the ones from it ran again.
    for kept in ["first", "aside"] {
        assert_eq!(after["steps"][kept], before["steps"][kept], "{kept}");
    }
    assert_ne!(
        after["steps"]["each-0"]["output"]["id"],
        before["steps"]["each-0"]["output"]["id"]
    );
    let (_, events) = s.get(&format!("/api/v1/tasks/{id}/events")).await;
    let rerun = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "rerun")
        .expect("a rerun event");
    assert_eq!(rerun["detail"]["from"], "each", "{rerun:#}");

    // From the CLI; bad requests change nothing.
    let (code, out, err) = taskhook(Some(&s), &["task", "rerun", &id, "--from", "check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("again: check"), "{out}");
    let t = s.wait_state(&id, &["BLOCKED"]).await;
    for (body, status, field) in [
        (json!({"from": "nope"}), 404, Value::Null),
        (json!({"from": "each-0"}), 400, json!("from")),
        (json!({}), 400, Value::Null),
    ] {
        let (st, p) = s
            .post(&format!("/api/v1/tasks/{id}/rerun"), body.clone())
            .await;
        assert_eq!(st, status, "{body}: {p:#}");
        if !field.is_null() {
            assert_eq!(p["field"], field, "{p:#}");
        }
    }
    assert!(
        s.post(
            &format!("/api/v1/tasks/{id}/rerun"),
            json!({"from": "each-0"})
        )
        .await
        .1["detail"]
            .as_str()
            .unwrap()
            .contains("rerun from \"each\""),
    );
    let (_, unchanged) = s.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(unchanged["steps"], t["steps"]);
    // A finished task is a record: it is not rerun.
    let done = "name: done\nauto_runnable: true\nsteps:\n  one:\n    action: {type: echo, configuration: {output: 1}}\n";
    assert_eq!(s.put_template("done", done).await.0, 201);
    let (_, c) = s.post("/api/v1/tasks", json!({"template": "done"})).await;
    let finished = c["id"].as_str().unwrap().to_string();
    s.wait_state(&finished, &["DONE"]).await;
    let (st, p) = s
        .post(
            &format!("/api/v1/tasks/{finished}/rerun"),
            json!({"from": "one"}),
        )
        .await;
    assert_eq!(st, 409, "{p:#}");
}

#[tokio::test]
async fn wontfix_closes_tasks_that_wait_for_a_person_and_ends_the_parent_s_subtask() {
    let s = Server::start();
    let manual =
        "name: manual\nsteps:\n  one:\n    action: {type: echo, configuration: {output: 1}}\n";
    assert_eq!(s.put_template("manual", manual).await.0, 201);
    let failing = "name: failing\nauto_runnable: true\nsteps:\n  check:\n    action: {type: echo, configuration: {error_type: client}}\n";
    assert_eq!(s.put_template("failing", failing).await.0, 201);
    let parent = "name: parent\nauto_runnable: true\nsteps:\n  child:\n    action: {type: subtask, configuration: {template: manual}}\n";
    assert_eq!(s.put_template("parent", parent).await.0, 201);

    // Waiting for a resolver (TODO), as µTask allows.
    let (_, c) = s.post("/api/v1/tasks", json!({"template": "manual"})).await;
    let todo = c["id"].as_str().unwrap().to_string();
    let (st, out) = s
        .post(&format!("/api/v1/tasks/{todo}/wontfix"), json!({}))
        .await;
    assert_eq!(
        (st, out["state"].clone()),
        (200, json!("WONTFIX")),
        "{out:#}"
    );
    // Final: nothing moves it again.
    for verb in ["wontfix", "retry", "resolve", "cancel"] {
        let (st, p) = s
            .post(&format!("/api/v1/tasks/{todo}/{verb}"), json!({}))
            .await;
        assert_eq!(st, 409, "{verb}: {p:#}");
    }
    // BLOCKED, from the CLI.
    let (_, c) = s
        .post("/api/v1/tasks", json!({"template": "failing"}))
        .await;
    let blocked = c["id"].as_str().unwrap().to_string();
    s.wait_state(&blocked, &["BLOCKED"]).await;
    let (code, out, err) = taskhook(Some(&s), &["task", "wontfix", &blocked]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("{blocked} WONTFIX"));
    let (_, page) = s.get("/api/v1/tasks?state=WONTFIX").await;
    let mut both = vec![todo.clone(), blocked.clone()];
    both.sort();
    assert_eq!(listed(&page), both);
    // A DONE task is not closed.
    let (_, c) = s.post("/api/v1/tasks", json!({"template": "parent"})).await;
    let p_id = c["id"].as_str().unwrap().to_string();
    let t = s.wait_state(&p_id, &["WAITING"]).await;
    let child = t["steps"]["child"]["metadata"]["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{t:#}"))
        .to_string();
    let (st, _) = s
        .post(&format!("/api/v1/tasks/{child}/wontfix"), json!({}))
        .await;
    assert_eq!(st, 200);
    // The parent wakes: its subtask step ends as a client error naming the state.
    let t = s.wait_state(&p_id, &["BLOCKED"]).await;
    assert_eq!(t["steps"]["child"]["state"], "CLIENT_ERROR", "{t:#}");
    assert_eq!(t["steps"]["child"]["metadata"]["state"], "WONTFIX", "{t:#}");
    let (_, c) = s.post("/api/v1/tasks", json!({"template": "manual"})).await;
    let other = c["id"].as_str().unwrap().to_string();
    s.post(&format!("/api/v1/tasks/{other}/resolve"), json!({}))
        .await;
    s.wait_state(&other, &["DONE"]).await;
    let (st, p) = s
        .post(&format!("/api/v1/tasks/{other}/wontfix"), json!({}))
        .await;
    assert_eq!(st, 409, "{p:#}");
}
