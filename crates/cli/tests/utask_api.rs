//! µTask's HTTP API under `/utask`, played as a µTask client script would play it: only the
//! base URL and the credential differ from a script written for µTask.

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::{Server, TOKEN};

/// An auto-runnable template with an input, a title and a result.
const HELLO: &str = "name: hello\ndescription: Say hello\nauto_runnable: true\n\
inputs: [{name: who}, {name: secret, type: password, optional: true}]\n\
title_format: 'hello {{ input.who }}'\nresult_format: {greeting: '{{ step.greet.output.msg }}'}\n\
steps:\n  greet: {description: Greet, action: {type: echo, configuration: {output: {msg: 'hello {{ input.who }}'}}}}\n";

/// A template that waits for a resolver and asks for a resolver input.
const APPROVE: &str = "name: approve\ndescription: Needs a resolver\n\
inputs: [{name: what}]\nresolver_inputs: [{name: reason, description: Why}]\n\
steps:\n  check: {action: {type: echo, configuration: {output: {checked: '{{ input.what }}'}}}}\n  \
apply:\n    dependencies: [check]\n    action: {type: echo, configuration: {output: {applied: '{{ resolver_input.reason }}'}}}\n";

/// A template whose first step fails for the requester to fix.
const FAILING: &str = "name: failing\nauto_runnable: true\nsteps:\n  \
check: {action: {type: echo, configuration: {error_type: client, error_message: bad input}}}\n  \
after: {dependencies: [check], action: {type: echo, configuration: {output: {after: true}}}}\n";

/// A template that runs once: a retriable failure blocks it on retry_max.
const ONERUN: &str = "name: onerun\nauto_runnable: true\nretry_max: 1\nsteps:\n  \
flaky: {action: {type: echo, configuration: {output: 1, error_type: server}}}\n";

const HIDDEN: &str = "name: secretive\nhidden: true\nauto_runnable: true\nsteps:\n  \
a: {action: {type: echo, configuration: {output: {}}}}\n";

/// A µTask client: the base URL and an `Authorization` header value.
struct Client<'a> {
    s: &'a Server,
    auth: Option<String>,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Client<'_> {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut r = self
            .s
            .http
            .request(method, format!("{}/utask{}", self.s.url, path));
        if let Some(a) = &self.auth {
            r = r.header("authorization", a);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> Answer {
        self.call(Method::PUT, path, Some(body)).await
    }

    /// Polls a resolution until its state is one of `states`.
    async fn wait_resolution(&self, id: &str, states: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let a = self.get(&format!("/resolution/{id}")).await;
            if a.status == 200 && states.contains(&a.body["state"].as_str().unwrap_or("")) {
                return a.body;
            }
            assert!(
                Instant::now() < deadline,
                "resolution {id} never reached {states:?}: {} {:#}",
                a.status,
                a.body
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A µTask error: problem+json with µTask's `error` member beside `detail`.
fn assert_error(a: &Answer, status: u16) {
    assert_eq!(a.status, status, "{:#}", a.body);
    assert_eq!(
        a.headers["content-type"], "application/problem+json",
        "{:#}",
        a.body
    );
    let error = a.body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{:#}", a.body));
    assert!(!error.is_empty());
    assert!(
        error.ends_with(a.body["detail"].as_str().unwrap()),
        "{:#}",
        a.body
    );
    assert_eq!(a.body["status"], status);
}

async fn setup() -> Server {
    let s = Server::start();
    for (name, yaml) in [
        ("hello", HELLO),
        ("approve", APPROVE),
        ("failing", FAILING),
        ("onerun", ONERUN),
        ("secretive", HIDDEN),
    ] {
        let (st, v) = s.put_template(name, yaml).await;
        assert_eq!(st, 201, "{name}: {v:#}");
    }
    s
}

async fn token(s: &Server, user: &str, scopes: &[&str]) -> String {
    let (st, v) = s
        .post("/api/v1/tokens", json!({"scopes": scopes, "user": user}))
        .await;
    assert_eq!(st, 201, "{v}");
    v["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_utask_script_runs_against_taskhook() {
    let s = setup().await;
    // The script's credential: µTask clients send basic auth; the password is the token.
    let alice = token(&s, "alice", &["tasks:*", "templates:read:*"]).await;
    let c = Client {
        s: &s,
        auth: Some(basic("alice", &alice)),
    };

    // Service routes.
    let ping = Client { s: &s, auth: None }
        .get("/unsecured/mon/ping")
        .await;
    assert_eq!((ping.status, ping.body), (200, json!("pong")));
    let meta = c.get("/meta").await;
    assert_eq!(meta.status, 200, "{:#}", meta.body);
    assert_eq!(meta.body["username"], "alice");
    assert_eq!(meta.body["user_is_admin"], false);

    // Templates: listed without steps, hidden ones only for admins; one in full.
    let list = c.get("/template").await;
    assert_eq!(list.status, 200, "{:#}", list.body);
    let names: Vec<&str> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["approve", "failing", "hello", "onerun"]);
    assert!(list.body[0].get("steps").is_none(), "{:#}", list.body);
    assert_eq!(list.body[2]["auto_runnable"], true);
    assert_eq!(list.headers["x-paging-pagesize"], "1000");
    let admin = Client {
        s: &s,
        auth: Some(format!("Bearer {TOKEN}")),
    };
    let all = admin.get("/template?page_size=10").await;
    assert_eq!(all.body.as_array().unwrap().len(), 5, "{:#}", all.body);
    let tpl = c.get("/template/approve").await;
    assert_eq!(tpl.status, 200);
    assert_eq!(tpl.body["resolver_inputs"][0]["name"], "reason");
    assert!(tpl.body["steps"]["apply"]["dependencies"].is_array());
    assert_error(&c.get("/template/nope").await, 404);

    // An auto-runnable task: created with µTask's body, read in µTask's shape.
    let created = c
        .post(
            "/task",
            json!({"template_name": "hello", "input": {"who": "world", "secret": "s3cr3t"},
                   "comment": "from a script", "tags": {"team": "blue"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{:#}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(created.body["template_name"], "hello");
    assert_eq!(created.body["title"], "hello world");
    assert_eq!(created.body["requester_username"], "alice");
    assert_eq!(created.body["input"]["who"], "world");
    assert_ne!(created.body["input"]["secret"], "s3cr3t");
    assert_eq!(created.body["steps_total"], 1);
    assert_eq!(created.body["tags"]["team"], "blue");
    // The resolution of a task has the task's id.
    assert_eq!(created.body["resolution"], json!(id));
    let done = c.wait_resolution(&id, &["DONE"]).await;
    assert_eq!(done["task_id"], json!(id));
    assert_eq!(
        done["steps"]["greet"]["output"],
        json!({"msg": "hello world"})
    );
    assert_eq!(done["steps"]["greet"]["state"], "DONE");
    assert_eq!(done["steps"]["greet"]["action"]["type"], "echo");
    let t = c.get(&format!("/task/{id}")).await;
    assert_eq!(t.status, 200);
    assert_eq!(t.body["state"], "DONE");
    assert_eq!(t.body["steps_done"], 1);
    assert_eq!(t.body["result"], json!({"greeting": "hello world"}));
    assert_eq!(t.body["comments"][0]["content"], "from a script");
    assert_eq!(t.body["comments"][0]["username"], "alice");
    for key in ["created", "last_activity", "last_start", "last_stop"] {
        assert!(t.body[key].is_string(), "{key}: {:#}", t.body);
    }
    let step = c.get(&format!("/resolution/{id}/step/greet")).await;
    assert_eq!(step.status, 200);
    assert_eq!(step.body["output"]["msg"], "hello world");
    assert_eq!(step.body["try_count"], 1);
    assert_error(&c.get(&format!("/resolution/{id}/step/nope")).await, 404);

    // A task for a resolver: TODO without a resolution, then resolved with resolver inputs.
    let todo = c
        .post(
            "/task",
            json!({"template_name": "approve", "input": {"what": "door"}}),
        )
        .await;
    assert_eq!(todo.status, 201, "{:#}", todo.body);
    let tid = todo.body["id"].as_str().unwrap().to_string();
    assert_eq!(todo.body["state"], "TODO");
    assert!(todo.body.get("resolution").is_none(), "{:#}", todo.body);
    assert_eq!(todo.body["resolver_inputs"][0]["name"], "reason");
    assert_error(&c.get(&format!("/resolution/{tid}")).await, 404);
    let bad = c
        .post("/resolution", json!({"task_id": tid, "start_over": true}))
        .await;
    assert_error(&bad, 400);
    let res = c
        .post(
            "/resolution",
            json!({"task_id": tid, "resolver_inputs": {"reason": "approved"}}),
        )
        .await;
    assert_eq!(res.status, 201, "{:#}", res.body);
    assert_eq!(res.body["id"], json!(tid));
    assert_eq!(res.body["resolver_username"], "alice");
    let run = c.post(&format!("/resolution/{tid}/run"), json!({})).await;
    assert!(
        run.status == 204 || run.status == 409,
        "{} {:#}",
        run.status,
        run.body
    );
    let done = c.wait_resolution(&tid, &["DONE"]).await;
    assert_eq!(
        done["steps"]["apply"]["output"],
        json!({"applied": "approved"})
    );
    assert_eq!(done["resolver_inputs"], json!({"reason": "approved"}));
    // Resolving twice is refused.
    assert_error(
        &c.post(
            "/resolution",
            json!({"task_id": tid, "resolver_inputs": {"reason": "again"}}),
        )
        .await,
        409,
    );

    // A failing step blocks the task: its error shows on the task; a person sets the step's
    // state and runs the resolution again.
    let f = c
        .post("/task", json!({"template_name": "failing", "input": {}}))
        .await;
    let fid = f.body["id"].as_str().unwrap().to_string();
    let blocked = c.wait_resolution(&fid, &["BLOCKED_BADREQUEST"]).await;
    assert_eq!(blocked["steps"]["check"]["state"], "CLIENT_ERROR");
    let ft = c.get(&format!("/task/{fid}")).await;
    assert_eq!(ft.body["state"], "BLOCKED");
    assert_eq!(ft.body["errors"][0]["step"], "check", "{:#}", ft.body);
    assert_eq!(ft.body["errors"][0]["error"], json!("bad input"));
    assert_error(
        &c.put(
            &format!("/resolution/{fid}/step/check/state"),
            json!({"state": "RUNNING"}),
        )
        .await,
        400,
    );
    let set = c
        .put(
            &format!("/resolution/{fid}/step/check/state"),
            json!({"state": "DONE"}),
        )
        .await;
    assert_eq!(set.status, 204, "{:#}", set.body);
    let run = c.post(&format!("/resolution/{fid}/run"), json!({})).await;
    assert_eq!(run.status, 204, "{:#}", run.body);
    let done = c.wait_resolution(&fid, &["DONE"]).await;
    assert_eq!(done["steps"]["after"]["output"], json!({"after": true}));
    // µTask's whole-step edit: state and output.
    let f2 = c
        .post("/task", json!({"template_name": "failing", "input": {}}))
        .await;
    let f2 = f2.body["id"].as_str().unwrap().to_string();
    c.wait_resolution(&f2, &["BLOCKED_BADREQUEST"]).await;
    let mut step = c.get(&format!("/resolution/{f2}/step/check")).await.body;
    step["state"] = json!("DONE");
    step["output"] = json!({"fixed": "by hand"});
    let put = c.put(&format!("/resolution/{f2}/step/check"), step).await;
    assert_eq!(put.status, 204, "{:#}", put.body);
    c.post(&format!("/resolution/{f2}/run"), json!({})).await;
    let done = c.wait_resolution(&f2, &["DONE"]).await;
    assert_eq!(
        done["steps"]["check"]["output"],
        json!({"fixed": "by hand"})
    );

    // retry_max reached: extend gives it more runs.
    let o = c
        .post("/task", json!({"template_name": "onerun", "input": {}}))
        .await;
    let oid = o.body["id"].as_str().unwrap().to_string();
    let r = c.wait_resolution(&oid, &["BLOCKED_MAXRETRIES"]).await;
    assert_eq!(r["run_max"], 1);
    let ext = c
        .post(&format!("/resolution/{oid}/extend"), json!({}))
        .await;
    assert_eq!(ext.status, 204, "{:#}", ext.body);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c.get(&format!("/resolution/{oid}")).await.body;
        if r["run_count"] == 2 && r["state"] == "BLOCKED_MAXRETRIES" {
            assert_eq!(r["run_max"], 2);
            break;
        }
        assert!(Instant::now() < deadline, "{r:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Extending a task that is not blocked on retries is refused.
    assert_error(
        &c.post(&format!("/resolution/{id}/extend"), json!({})).await,
        409,
    );

    // A delayed task: paused, then cancelled.
    let d = c
        .post(
            "/task",
            json!({"template_name": "hello", "input": {"who": "later"}, "delay": "1h"}),
        )
        .await;
    assert_eq!(d.status, 201, "{:#}", d.body);
    let did = d.body["id"].as_str().unwrap().to_string();
    assert_eq!(d.body["state"], "DELAYED");
    let r = c.get(&format!("/resolution/{did}")).await;
    assert_eq!(r.body["state"], "TO_AUTORUN_DELAYED", "{:#}", r.body);
    let p = c.post(&format!("/resolution/{did}/pause"), json!({})).await;
    assert_eq!(p.status, 204, "{:#}", p.body);
    assert_eq!(
        c.get(&format!("/resolution/{did}")).await.body["state"],
        "PAUSED"
    );
    assert_eq!(
        c.get(&format!("/task/{did}")).await.body["state"],
        "BLOCKED"
    );
    let x = c
        .post(&format!("/resolution/{did}/cancel"), json!({}))
        .await;
    assert_eq!(x.status, 204, "{:#}", x.body);
    assert_eq!(
        c.get(&format!("/task/{did}")).await.body["state"],
        "CANCELLED"
    );
    assert_eq!(
        c.get(&format!("/resolution/{did}")).await.body["state"],
        "CANCELLED"
    );
    assert_error(
        &c.post(&format!("/resolution/{did}/cancel"), json!({}))
            .await,
        409,
    );
    assert_error(
        &c.post("/task", json!({"template_name": "hello", "delay": "soon"}))
            .await,
        400,
    );

    // Comments.
    let cm = c
        .post(
            &format!("/task/{tid}/comment"),
            json!({"content": "looks good"}),
        )
        .await;
    assert_eq!(cm.status, 201, "{:#}", cm.body);
    let cid = cm.body["id"].as_str().unwrap().to_string();
    assert_eq!(cm.body["username"], "alice");
    let one = c.get(&format!("/task/{tid}/comment/{cid}")).await;
    assert_eq!(
        (one.status, one.body["content"].clone()),
        (200, json!("looks good"))
    );
    let all = c.get(&format!("/task/{tid}/comment")).await;
    assert_eq!(all.body.as_array().unwrap().len(), 1, "{:#}", all.body);
    assert_error(
        &c.post(&format!("/task/{tid}/comment"), json!({"content": ""}))
            .await,
        400,
    );
    assert_error(
        &c.get(&format!(
            "/task/{tid}/comment/0190aaaa-0000-7000-8000-000000000000"
        ))
        .await,
        404,
    );

    // Listings: own tasks by default, filtered by state and template, paged with `last`.
    let other = token(&s, "bob", &["tasks:*", "templates:read:*"]).await;
    let bob = Client {
        s: &s,
        auth: Some(format!("Bearer {other}")),
    };
    let b = bob
        .post(
            "/task",
            json!({"template_name": "approve", "input": {"what": "bob"}}),
        )
        .await;
    let bid = b.body["id"].as_str().unwrap().to_string();
    let ids = |a: &Answer| -> Vec<String> {
        a.body
            .as_array()
            .unwrap_or_else(|| panic!("{:#}", a.body))
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    let own = c.get("/task").await;
    assert_eq!(own.status, 200, "{:#}", own.body);
    assert_eq!(ids(&own).len(), 6, "{:#}", own.body);
    assert!(!ids(&own).contains(&bid));
    let all = c.get("/task?type=all").await;
    assert!(ids(&all).contains(&bid));
    let resolvable = c.get("/task?type=resolvable&state=TODO").await;
    assert_eq!(ids(&resolvable), vec![bid.clone()]);
    let done = c.get("/task?state=DONE&template=hello").await;
    assert_eq!(ids(&done), vec![id.clone()]);
    let cancelled = c.get("/task?state=CANCELLED").await;
    assert_eq!(ids(&cancelled), vec![did.clone()]);
    let blocked = c.get("/task?state=BLOCKED").await;
    assert_eq!(ids(&blocked), vec![oid.clone()]);
    let tagged = c.get("/task?tag=team=blue").await;
    assert_eq!(ids(&tagged), vec![id.clone()]);
    let page = c.get("/task?page_size=1").await;
    assert_eq!(
        ids(&page).len(),
        6,
        "page_size is raised to µTask's minimum, 10"
    );
    let page = c.get("/task?type=all&page_size=10").await;
    assert_eq!(ids(&page).len(), 7);
    let first = c.get("/task?type=all&page_size=10&state=DONE").await;
    assert_eq!(ids(&first).len(), 4, "{:#}", first.body);
    let last = &ids(&first)[0];
    let after = c
        .get(&format!("/task?type=all&state=DONE&last={last}"))
        .await;
    assert_eq!(ids(&after), ids(&first)[1..].to_vec());
    assert_error(&c.get("/task?type=mine").await, 400);
    assert_error(&c.get("/task?state=READY").await, 400);
    assert_error(&c.get("/task?last=nope").await, 400);

    // Stats: counts per µTask task state, public.
    let stats = Client { s: &s, auth: None }.get("/unsecured/stats").await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.body["task_states"]["DONE"], 4, "{:#}", stats.body);
    assert_eq!(stats.body["task_states"]["TODO"], 1);
    assert_eq!(stats.body["task_states"]["BLOCKED"], 1);
    assert_eq!(stats.body["task_states"]["CANCELLED"], 1);

    // wontfix: bob's TODO task is closed by a resolver; it has no resolution, and stays closed.
    let closed = c.post(&format!("/task/{bid}/wontfix"), json!({})).await;
    assert_eq!(closed.status, 204, "{:#}", closed.body);
    assert_eq!(
        c.get(&format!("/task/{bid}")).await.body["state"],
        "WONTFIX"
    );
    assert_error(&c.get(&format!("/resolution/{bid}")).await, 404);
    assert_error(
        &c.post(&format!("/task/{bid}/wontfix"), json!({})).await,
        409,
    );
    assert_error(
        &c.post(&format!("/task/{id}/wontfix"), json!({})).await,
        409,
    );
    let closed = c.get("/task?type=all&state=WONTFIX").await;
    assert_eq!(ids(&closed), vec![bid.clone()]);
    let stats = Client { s: &s, auth: None }.get("/unsecured/stats").await;
    assert_eq!(stats.body["task_states"]["WONTFIX"], 1, "{:#}", stats.body);
    assert_eq!(stats.body["task_states"]["TODO"], 0, "{:#}", stats.body);

    // Errors of the compatibility layer carry `error`; others do not.
    assert_error(
        &c.get("/task/0190aaaa-0000-7000-8000-000000000000").await,
        404,
    );
    assert_error(&c.post("/task", json!({"input": {}})).await, 400);
    assert_error(&c.get("/no/such/route").await, 404);
    let (st, plain) = s
        .get("/api/v1/tasks/0190aaaa-0000-7000-8000-000000000000")
        .await;
    assert_eq!(st, 404);
    assert!(plain.get("error").is_none(), "{plain:#}");

    // Deleting a task is for admins, and only once it is finished.
    assert_error(
        &c.call(Method::DELETE, &format!("/task/{id}"), None).await,
        403,
    );
    assert_error(
        &admin
            .call(Method::DELETE, &format!("/task/{oid}"), None)
            .await,
        409,
    );
    let del = admin
        .call(Method::DELETE, &format!("/task/{id}"), None)
        .await;
    assert_eq!(del.status, 204, "{:#}", del.body);
    assert_error(&c.get(&format!("/task/{id}")).await, 404);
    assert_error(
        &admin
            .call(Method::DELETE, &format!("/task/{id}"), None)
            .await,
        404,
    );

    // Pages: a full page links to the next one, as µTask's `link` header does.
    for n in 0..6 {
        let t = c
            .post(
                "/task",
                json!({"template_name": "approve", "input": {"what": n.to_string()}}),
            )
            .await;
        assert_eq!(t.status, 201, "{:#}", t.body);
    }
    let first = c.get("/task?page_size=10").await;
    assert_eq!(ids(&first).len(), 10);
    let link = first.headers["link"].to_str().unwrap().to_string();
    let next = link
        .strip_prefix("</utask")
        .and_then(|l| l.strip_suffix(">; rel=next"))
        .unwrap_or_else(|| panic!("{link}"));
    assert!(next.contains(&format!("last={}", ids(&first)[9])), "{link}");
    let second = c.get(next).await;
    assert_eq!(ids(&second).len(), 1, "{link}: {:#}", second.body);
    assert!(second.headers.get("link").is_none());
    let names = c.get("/template?page_size=10&last=failing").await;
    let names: Vec<&str> = names
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello", "onerun"]);

    // Maintenance mode refuses writes here too, with µTask's error member.
    let (st, _, v) = s
        .req(
            Method::PUT,
            "/api/v1/maintenance",
            Some((r#"{"enabled": true}"#, "application/json")),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_error(
        &c.post(&format!("/task/{tid}/comment"), json!({"content": "x"}))
            .await,
        503,
    );
}

#[tokio::test]
async fn utask_routes_are_authorized_as_their_taskhook_equivalents() {
    let s = setup().await;
    let (st, v) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "approve", "inputs": {"what": "x"}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let nobody = Client { s: &s, auth: None };
    assert_error(&nobody.get("/task").await, 401);
    assert_error(&nobody.get("/meta").await, 401);
    let wrong = Client {
        s: &s,
        auth: Some(basic("alice", "not-a-token")),
    };
    assert_error(&wrong.get("/task").await, 401);
    // A reader of `hello` only: may not create `approve` tasks, nor resolve or read this one.
    let reader = token(&s, "carol", &["tasks:read:hello", "tasks:create:hello"]).await;
    let c = Client {
        s: &s,
        auth: Some(format!("Bearer {reader}")),
    };
    assert_error(
        &c.post(
            "/task",
            json!({"template_name": "approve", "input": {"what": "y"}}),
        )
        .await,
        403,
    );
    assert_error(&c.post("/resolution", json!({"task_id": id})).await, 403);
    assert_error(&c.get(&format!("/task/{id}")).await, 403);
    assert_error(
        &c.post(&format!("/resolution/{id}/cancel"), json!({})).await,
        403,
    );
    let list = c.get("/task?type=all").await;
    assert_eq!((list.status, list.body.clone()), (200, json!([])));
    // The templates listing holds only what the caller may read.
    let t = c.get("/template").await;
    assert_eq!((t.status, t.body.clone()), (200, json!([])));
    // A resolver of `approve` resolves; the refusal and the resolution are both audited.
    let resolver = token(&s, "dave", &["tasks:resolve:approve", "tasks:read:approve"]).await;
    let r = Client {
        s: &s,
        auth: Some(format!("Bearer {resolver}")),
    };
    let res = r
        .post(
            "/resolution",
            json!({"task_id": id, "resolver_inputs": {"reason": "ok"}}),
        )
        .await;
    assert_eq!(res.status, 201, "{:#}", res.body);
    let (st, audit) = s.get("/api/v1/audit?kind=call").await;
    assert_eq!(st, 200, "{audit:#}");
    let entries: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "POST /utask/resolution")
        .collect();
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == "dave" && e["status"] == 201 && e["target"] == json!(id)),
        "{audit:#}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == "carol" && e["status"] == 403),
        "{audit:#}"
    );
}

/// A µTask template named `Hello-World` is `hello-world` to µTask and its clients: stored so,
/// read and used by that name on µTask's routes; a taskhook template keeps its case.
#[tokio::test]
async fn a_utask_template_is_named_as_utask_names_it() {
    let s = Server::start();
    // µTask's form (a bare `description:`), written in Go templates.
    let yaml = "name: Hello-World\ndescription:\nauto_runnable: true\ninputs: [{name: who}]\n\
        steps:\n  greet:\n    description:\n    action: {type: echo, configuration: {output: 'hello {{ .input.who }}'}}\n";
    let (st, v) = s.put_template("Hello-World", yaml).await;
    assert_eq!(st, 400, "{v:#}");
    assert_eq!(v["field"], "name", "{v:#}");
    assert!(
        v["detail"].as_str().unwrap().contains("\"hello-world\""),
        "{v:#}"
    );
    let (st, v) = s.put_template("hello-world", yaml).await;
    assert_eq!(st, 201, "{v:#}");
    assert_eq!(v["name"], "hello-world", "{v:#}");
    // The CLI puts it at its µTask name too.
    let dir = support::fresh_dir();
    let file = dir.join("hello.yaml");
    std::fs::write(&file, yaml.replace("hello {{", "hi {{")).unwrap();
    let (code, out, err) =
        support::taskhook(Some(&s), &["template", "put", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");

    let c = Client {
        s: &s,
        auth: Some(basic("admin", TOKEN)),
    };
    let t = c.get("/template/hello-world").await;
    assert_eq!(t.status, 200, "{:#}", t.body);
    assert_eq!(t.body["name"], "hello-world");
    let listed = c.get("/template").await;
    assert!(
        listed
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "hello-world"),
        "{:#}",
        listed.body
    );
    let task = c
        .post(
            "/task",
            json!({"template_name": "hello-world", "input": {"who": "ada"}}),
        )
        .await;
    assert_eq!(task.status, 201, "{:#}", task.body);
    assert_eq!(task.body["template_name"], "hello-world");
    let id = task.body["id"].as_str().unwrap();
    let r = c.wait_resolution(id, &["DONE", "BLOCKED_BADREQUEST"]).await;
    assert_eq!(r["state"], "DONE", "{r:#}");
    // As in µTask, the name is looked up as given: the name as written is not µTask's.
    assert_error(&c.get("/template/Hello-World").await, 404);
    assert_error(
        &c.post(
            "/task",
            json!({"template_name": "Hello-World", "input": {"who": "x"}}),
        )
        .await,
        404,
    );
    // taskhook's own form keeps the name's case.
    let own = "name: Mixed-Case\nauto_runnable: true\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ task.id }}'}}}\n";
    let (st, v) = s.put_template("Mixed-Case", own).await;
    assert_eq!(st, 201, "{v:#}");
    assert_eq!(c.get("/template/Mixed-Case").await.status, 200);
}

/// µTask's task edit, as a µTask client plays it: the requester reads a task waiting for a
/// resolver, changes its input, watchers and tags and sends them back (the masked password
/// as it was shown), then a resolver runs it with the new input.
#[tokio::test]
async fn a_todo_task_is_edited_then_run() {
    let s = Server::start();
    let yaml = "name: editable\ndescription: Waits for a resolver\n\
        inputs: [{name: what}, {name: count, type: number, default: 1}, {name: secret, type: password}]\n\
        title_format: 'edit {{ input.what }}'\n\
        steps:\n  show: {action: {type: echo, configuration: {output: {what: '{{ input.what }}', count: '{{ input.count }}', long: '{{ input.secret | length }}'}}}}\n";
    let (st, v) = s.put_template("editable", yaml).await;
    assert_eq!(st, 201, "{v:#}");
    let alice = token(
        &s,
        "alice",
        &["tasks:create:editable", "tasks:read:editable"],
    )
    .await;
    let a = Client {
        s: &s,
        auth: Some(basic("alice", &alice)),
    };
    let created = a
        .post(
            "/task",
            json!({"template_name": "editable", "input": {"what": "a", "secret": "s3cret"},
                   "watcher_usernames": ["bob"], "tags": {"env": "dev"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{:#}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    let path = format!("/task/{id}");

    // Read, change, send back: the password comes back masked and keeps its value.
    let mut shown = a.get(&path).await.body;
    assert_eq!(shown["input"]["secret"], "**__SECRET__**", "{shown:#}");
    shown["input"]["what"] = json!("b");
    shown["input"]["count"] = json!(3);
    let body =
        json!({"input": shown["input"], "watcher_usernames": ["carol"], "tags": {"env": "prod"}});
    let edited = a.call(Method::PUT, &path, Some(body.clone())).await;
    assert_eq!(edited.status, 200, "{:#}", edited.body);
    let t = &edited.body;
    assert_eq!(t["title"], "edit b", "{t:#}");
    assert_eq!(t["input"]["what"], "b");
    assert_eq!(t["input"]["count"], 3);
    assert_eq!(t["input"]["secret"], "**__SECRET__**");
    assert_eq!(t["watcher_usernames"], json!(["carol"]));
    assert_eq!(t["tags"], json!({"env": "prod"}));
    assert_eq!(t["state"], "TODO");
    assert_eq!(a.get(&path).await.body["title"], "edit b");

    // Bad edits are refused naming the field, and change nothing.
    for (bad, field) in [
        (json!({"input": {"what": 1, "secret": "x"}}), "input.what"),
        (json!({"input": {"what": "c"}}), "input.secret"),
        (
            json!({"input": {"what": "c", "secret": "x", "nope": 1}}),
            "input.nope",
        ),
        (json!({"input": "what=c"}), "input"),
        (
            json!({"input": body["input"], "watcher_groups": ["ops"]}),
            "watcher_groups",
        ),
        (
            json!({"input": body["input"], "watcher_usernames": [""]}),
            "watcher_usernames",
        ),
        (json!({"input": body["input"], "tags": {"k": 1}}), "tags.k"),
        (
            json!({"input": body["input"], "tags": {"_utask_parent_task_id": "x"}}),
            "tags._utask_parent_task_id",
        ),
    ] {
        let r = a.call(Method::PUT, &path, Some(bad.clone())).await;
        assert_error(&r, 400);
        assert_eq!(r.body["field"], field, "{bad}: {:#}", r.body);
    }
    assert_error(&a.call(Method::PUT, &path, None).await, 400);
    assert_eq!(a.get(&path).await.body["title"], "edit b");
    // Someone who may only read it may not edit it.
    let reader = token(&s, "dave", &["tasks:read:editable"]).await;
    let d = Client {
        s: &s,
        auth: Some(basic("dave", &reader)),
    };
    assert_error(&d.call(Method::PUT, &path, Some(body.clone())).await, 403);
    assert_error(
        &a.call(
            Method::PUT,
            "/task/00000000-0000-0000-0000-000000000000",
            Some(body.clone()),
        )
        .await,
        404,
    );

    // A resolver runs it: the steps see the new input and the kept password.
    let admin = Client {
        s: &s,
        auth: Some(basic("admin", TOKEN)),
    };
    let res = admin.post("/resolution", json!({"task_id": id})).await;
    assert_eq!(res.status, 201, "{:#}", res.body);
    let r = admin
        .wait_resolution(&id, &["DONE", "BLOCKED_BADREQUEST", "BLOCKED_FATAL"])
        .await;
    assert_eq!(r["state"], "DONE", "{r:#}");
    let step = admin.get(&format!("/resolution/{id}/step/show")).await.body;
    assert_eq!(
        step["output"],
        json!({"what": "b", "count": 3, "long": 6}),
        "{step:#}"
    );
    // Once it ran, it is no longer the requester's to edit, nor anyone's.
    assert_error(&a.call(Method::PUT, &path, Some(body.clone())).await, 403);
    assert_error(&admin.call(Method::PUT, &path, Some(body)).await, 409);

    // The edit is in the task's trail, naming what changed and no value.
    let (_, events) = s.get(&format!("/api/v1/tasks/{id}/events")).await;
    let edit = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "edited")
        .unwrap_or_else(|| panic!("{events:#}"));
    assert_eq!(edit["actor"], "alice");
    assert_eq!(
        edit["detail"]["changed"],
        json!(["input", "title", "tags", "watcher_usernames"])
    );
    assert!(!events.to_string().contains("s3cret"), "{events:#}");
}
