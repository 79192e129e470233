//! Operating several `taskhook serve` processes on one PostgreSQL database: webhooks fired at
//! two instances while one is killed, cancel and pause asked through another instance than the
//! one running the task, a resource limit held across instances, API-only and worker-only
//! roles, graceful SIGTERM, and how fast a worker picks up a task created elsewhere.
//! Skipped (with a message) when PostgreSQL is unreachable, unless services are required.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::Server;

/// What the sink saw, per `Idempotency-Key` (`{task id}/{step}`).
#[derive(Default)]
struct Seen {
    /// Calls that arrived.
    started: HashMap<String, u32>,
    /// Calls answered: the effect happened.
    completed: HashMap<String, u32>,
    /// Calls whose connection the caller dropped before the answer.
    aborted: HashMap<String, u32>,
    /// When the first call for a key arrived.
    first_start: HashMap<String, Instant>,
    inflight: usize,
    max_inflight: usize,
    /// The paths of the calls in flight.
    inflight_paths: HashMap<String, usize>,
}

/// A local HTTP service for `http` steps: `POST /hit/{ms}` answers after `ms` milliseconds and
/// records the call, whether it was answered or cut off, and how many calls were in flight.
/// `POST /order/{n}` does the same after 1.5 s when `n` is a multiple of 25, else 40 ms.
#[derive(Clone, Default)]
struct Sink {
    seen: Arc<Mutex<Seen>>,
}

/// One call in flight; settled as answered or cut off when the handler ends or is dropped.
struct Call {
    sink: Sink,
    key: String,
    path: String,
    answered: bool,
}

impl Drop for Call {
    fn drop(&mut self) {
        let mut s = self.sink.seen.lock().unwrap();
        s.inflight -= 1;
        if let Some(n) = s.inflight_paths.get_mut(&self.path) {
            *n -= 1;
            if *n == 0 {
                s.inflight_paths.remove(&self.path);
            }
        }
        let which = if self.answered {
            &mut s.completed
        } else {
            &mut s.aborted
        };
        *which.entry(self.key.clone()).or_default() += 1;
    }
}

impl Sink {
    async fn start() -> (Sink, String) {
        async fn answer(
            sink: Sink,
            path: String,
            ms: u64,
            headers: HeaderMap,
        ) -> axum::Json<Value> {
            let key = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let mut call = {
                let mut s = sink.seen.lock().unwrap();
                *s.started.entry(key.clone()).or_default() += 1;
                s.first_start
                    .entry(key.clone())
                    .or_insert_with(Instant::now);
                s.inflight += 1;
                s.max_inflight = s.max_inflight.max(s.inflight);
                *s.inflight_paths.entry(path.clone()).or_default() += 1;
                Call {
                    sink: sink.clone(),
                    key,
                    path,
                    answered: false,
                }
            };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            call.answered = true;
            drop(call);
            axum::Json(json!({"ok": true}))
        }
        async fn hit(
            State(sink): State<Sink>,
            UrlPath(ms): UrlPath<u64>,
            headers: HeaderMap,
        ) -> axum::Json<Value> {
            answer(sink, format!("hit/{ms}"), ms, headers).await
        }
        async fn order(
            State(sink): State<Sink>,
            UrlPath(n): UrlPath<u64>,
            headers: HeaderMap,
        ) -> axum::Json<Value> {
            let ms = if n % 25 == 0 { 1500 } else { 40 };
            answer(sink, format!("order/{n}"), ms, headers).await
        }
        let sink = Sink::default();
        let app = axum::Router::new()
            .route("/hit/{ms}", axum::routing::post(hit))
            .route("/order/{n}", axum::routing::post(order))
            .with_state(sink.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (sink, url)
    }

    fn count(map: &HashMap<String, u32>, key: &str) -> u32 {
        map.get(key).copied().unwrap_or_default()
    }

    fn started(&self, key: &str) -> u32 {
        Sink::count(&self.seen.lock().unwrap().started, key)
    }

    fn completed(&self, key: &str) -> u32 {
        Sink::count(&self.seen.lock().unwrap().completed, key)
    }

    fn aborted(&self, key: &str) -> u32 {
        Sink::count(&self.seen.lock().unwrap().aborted, key)
    }

    fn first_start(&self, key: &str) -> Option<Instant> {
        self.seen.lock().unwrap().first_start.get(key).copied()
    }

    /// Polls until `cond` holds on what the sink saw; panics with `what` after `limit`.
    async fn wait(&self, what: &str, limit: Duration, cond: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + limit;
        while !cond(&self.seen.lock().unwrap()) {
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The key ring every instance of these tests shares, as the instances of a cluster must.
fn ring() -> &'static str {
    static RING: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RING.get_or_init(|| {
        let path = support::fresh_dir().join("keys");
        std::fs::write(
            &path,
            "cluster-test:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    })
}

fn with_ring<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = extra.to_vec();
    flags.extend(["--key-file", ring()]);
    flags
}

fn start_in(dir: std::path::PathBuf, extra: &[&str]) -> Server {
    Server::start_in(dir, &with_ring(extra))
}

fn start_without_api(dir: std::path::PathBuf, extra: &[&str]) -> Server {
    Server::start_without_api(dir, &with_ring(extra))
}

/// Starts instances on `db`, named by `names`, each with `extra` flags.
fn start_named(db: &str, names: &[&str], extra: &[&str]) -> Vec<Server> {
    names
        .iter()
        .map(|name| {
            let mut flags = vec![
                "--database-url",
                db,
                "--database-pool",
                "6",
                "--instance",
                name,
            ];
            flags.extend_from_slice(extra);
            start_in(support::fresh_dir(), &flags)
        })
        .collect()
}

async fn put_template(s: &Server, name: &str, yaml: &str) {
    let (st, v) = s.put_template(name, yaml).await;
    assert!(st == 201 || st == 200, "{v}");
}

/// Creates a task from `template` through `s`; returns its id.
async fn create(s: &Server, template: &str, inputs: Value) -> String {
    let (st, v) = s
        .post(
            "/api/v1/tasks",
            json!({"template": template, "inputs": inputs}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn events_text(s: &Server, id: &str) -> String {
    s.get(&format!("/api/v1/tasks/{id}/events"))
        .await
        .1
        .to_string()
}

/// Every task of `template`, through `s`.
async fn all_tasks(s: &Server, template: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let (code, page) = s
            .get(&format!(
                "/api/v1/tasks?template={template}&limit=1000{cursor}"
            ))
            .await;
        assert_eq!(code, 200, "{page}");
        out.extend(page["tasks"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

const SECRET: &str = "cluster-webhook-secret";

fn github_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The scenario: 1,000 webhooks, signed GitHub deliveries and secret-token triggers in
/// turn, fired alternately at two instances; one is killed with SIGKILL halfway. Every webhook
/// answered 202 has exactly one task; every task ends, its non-idempotent step run at most
/// once; the survivor finishes the killed instance's work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_at_two_instances_survive_a_kill_with_one_task_each_and_no_step_twice() {
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let (sink, sink_url) = Sink::start().await;
    let mut cluster = start_named(
        &db,
        &["hook-a", "hook-b"],
        &["--lease", "2s", "--orphan-sweep", "500ms"],
    );
    put_template(
        &cluster[0],
        "order",
        &format!(
            "name: order\nauto_runnable: true\ninputs: [{{name: n}}]\nsteps:\n  charge:\n    action: {{type: http, configuration: {{method: POST, url: '{sink_url}/order/{{{{ input.n }}}}'}}}}\n"
        ),
    )
    .await;
    let hook = format!(
        "template: order\ninputs: {{n: '{{{{ event.payload.n }}}}'}}\nwebhook: {{provider: github, secret: '{SECRET}'}}\n"
    );
    let (st, _, v) = cluster[0]
        .req(
            reqwest::Method::PUT,
            "/api/v1/hooks/shop/order",
            Some((&hook, "application/yaml")),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (_, tok) = cluster[1].get("/api/v1/hooks/shop/order/token").await;
    let token = tok["token"].as_str().unwrap().to_string();

    const HOOKS: usize = 1000;
    // n -> the task id its 202 named.
    let accepted: Arc<Mutex<BTreeMap<usize, String>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let urls: Vec<String> = cluster.iter().map(|s| s.url.clone()).collect();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (accepted, refused, next, urls, token) = (
            accepted.clone(),
            refused.clone(),
            next.clone(),
            urls.clone(),
            token.clone(),
        );
        senders.spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= HOOKS {
                    return;
                }
                let url = &urls[i % 2];
                let body = json!({"n": i.to_string()}).to_string();
                let request = if (i / 2) % 2 == 0 {
                    http.post(format!("{url}/api/v1/hooks/shop/order/webhook"))
                        .header("x-github-event", "push")
                        .header("x-github-delivery", format!("delivery-{i}"))
                        .header("x-hub-signature-256", github_signature(body.as_bytes()))
                } else {
                    http.post(format!("{url}/api/v1/hooks/shop/order/trigger/{token}"))
                };
                let resp = request
                    .header("content-type", "application/json")
                    .body(body)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                // A webhook sent to the killed instance fails: it was not accepted, and the
                // sender would deliver it again.
                let Ok(r) = resp else {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                };
                let status = r.status().as_u16();
                let Ok(v) = r.json::<Value>().await else {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                };
                assert_eq!(status, 202, "webhook {i}: {v}");
                assert_eq!(v["result"], "created", "webhook {i}: {v}");
                assert_eq!(v["duplicate"], false, "webhook {i}: {v}");
                let id = v["task_id"].as_str().unwrap().to_string();
                assert!(accepted.lock().unwrap().insert(i, id).is_none());
            }
        });
    }
    // Halfway, kill hook-b while it runs a slow step: one of an odd-numbered webhook, which
    // went to hook-b, and ran there (an instance runs the tasks it accepts when it has room).
    while next.load(std::sync::atomic::Ordering::Relaxed) < HOOKS / 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sink.wait(
        "a slow step in flight on hook-b",
        Duration::from_secs(20),
        |s| {
            s.inflight_paths.keys().any(|p| {
                p.strip_prefix("order/")
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n % 2 == 1 && n % 25 == 0)
            })
        },
    )
    .await;
    cluster[1].kill9();
    while let Some(r) = senders.join_next().await {
        r.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        accepted.len() > HOOKS / 2,
        "only {} accepted",
        accepted.len()
    );
    assert!(refused >= HOOKS / 5, "only {refused} webhooks were refused");
    let ids: HashSet<&String> = accepted.values().collect();
    assert_eq!(ids.len(), accepted.len(), "two webhooks named one task");

    // Every task in the database, accepted or cut off with the kill, belongs to one webhook,
    // and each accepted webhook has exactly the task its 202 named.
    let survivor = &cluster[0];
    let tasks = all_tasks(survivor, "order").await;
    let mut by_n: HashMap<usize, Vec<String>> = HashMap::new();
    for t in &tasks {
        let n: usize = t["inputs"]["n"].as_str().unwrap().parse().unwrap();
        by_n.entry(n)
            .or_default()
            .push(t["id"].as_str().unwrap().to_string());
    }
    for (n, ids) in &by_n {
        assert_eq!(ids.len(), 1, "webhook {n} has several tasks: {ids:?}");
    }
    for (n, id) in &accepted {
        assert_eq!(
            by_n.get(n),
            Some(&vec![id.clone()]),
            "webhook {n} answered 202 with task {id}"
        );
    }

    // Every task ends. A task whose non-idempotent step was in flight on the killed instance
    // waits for a human (BLOCKED) instead of running it again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut states: BTreeMap<String, String> = BTreeMap::new();
    for t in &tasks {
        let id = t["id"].as_str().unwrap();
        loop {
            let (_, t) = survivor.get(&format!("/api/v1/tasks/{id}")).await;
            let state = t["state"].as_str().unwrap().to_string();
            if state == "DONE" || state == "BLOCKED" {
                states.insert(id.to_string(), state);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} is stuck in {state}: {t:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (mut taken_over, mut retried, mut left_blocked) = (0, 0, 0);
    for (id, state) in &states {
        let key = format!("{id}/charge");
        let claims = survivor.claimed_by(id).await;
        assert!(!claims.is_empty(), "task {id} was never claimed");
        if claims.first().map(String::as_str) == Some("hook-b") && claims.len() > 1 {
            taken_over += 1;
            // After the kill, only the survivor can have run it.
            assert!(
                claims[1..].iter().all(|c| c == "hook-a"),
                "task {id}: {claims:?}"
            );
        }
        if state == "DONE" {
            assert_eq!(
                (sink.started(&key), sink.completed(&key)),
                (1, 1),
                "task {id} is DONE: its step must have run exactly once"
            );
            continue;
        }
        // BLOCKED: the step was cut by the kill; it ran at most once.
        let (_, t) = survivor.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(t["steps"]["charge"]["state"], "CRASHED", "{t:#}");
        assert!(
            events_text(survivor, id)
                .await
                .contains("interrupted by a crash")
        );
        assert_eq!(claims.first().map(String::as_str), Some("hook-b"), "{id}");
        assert!(sink.started(&key) <= 1, "task {id}: step ran twice");
        // The operator checks the effect: a call the kill cut off did nothing, so the task is
        // retried; one that was answered did its work, and stays for a human to settle.
        if sink.completed(&key) == 0 {
            let (st, v) = survivor
                .post(&format!("/api/v1/tasks/{id}/retry"), json!({}))
                .await;
            assert_eq!(st, 200, "{v}");
            survivor
                .wait_state_within(id, &["DONE"], Duration::from_secs(20))
                .await;
            assert_eq!(sink.completed(&key), 1, "task {id}");
            retried += 1;
        } else {
            // Answered, but the instance died before recording it: done once, never again.
            assert_eq!(sink.completed(&key), 1, "task {id}");
            left_blocked += 1;
        }
    }
    assert!(
        taken_over > 0,
        "no task of the killed instance was taken over"
    );
    assert!(
        retried > 0,
        "the slow step cut off by the kill was not found"
    );
    // Only the steps in flight on the killed instance can be cut off.
    assert!(retried + left_blocked <= 64, "{retried} + {left_blocked}");
    eprintln!(
        "{} webhooks accepted, {refused} refused by the killed instance, {} tasks; {taken_over} taken over by the survivor, {retried} cut off by the kill and retried, {left_blocked} left blocked with their effect done",
        accepted.len(),
        tasks.len()
    );
}

/// Cancel and pause asked through instance B reach the run on instance A: a cancel stops the
/// action in flight at once; a pause lets it finish and starts nothing more, and a retry through
/// B resumes the task where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_and_pause_through_another_instance_stop_the_run() {
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let (sink, sink_url) = Sink::start().await;
    let cluster = start_named(
        &db,
        &["stop-a", "stop-b"],
        &["--lease", "3s", "--orphan-sweep", "500ms"],
    );
    let (a, b) = (&cluster[0], &cluster[1]);
    put_template(
        a,
        "long",
        &format!(
            "name: long\nauto_runnable: true\nsteps:\n  wait:\n    action: {{type: http, configuration: {{method: POST, url: '{sink_url}/hit/25000', timeout: 60s}}}}\n"
        ),
    )
    .await;
    put_template(
        a,
        "two",
        &format!(
            "name: two\nauto_runnable: true\nsteps:\n  first:\n    action: {{type: http, configuration: {{method: POST, url: '{sink_url}/hit/1500'}}}}\n  second:\n    dependencies: [first]\n    action: {{type: http, configuration: {{method: POST, url: '{sink_url}/hit/10'}}}}\n"
        ),
    )
    .await;

    // Cancel.
    let id = create(a, "long", json!({})).await;
    let key = format!("{id}/wait");
    sink.wait("the long step started", Duration::from_secs(10), |s| {
        s.started.contains_key(&key)
    })
    .await;
    assert_eq!(a.claimed_by(&id).await, ["stop-a"]);
    let asked = Instant::now();
    let (st, v) = b
        .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(st, 200, "{v}");
    let t = b
        .wait_state_within(&id, &["CANCELLED"], Duration::from_secs(10))
        .await;
    let to_cancelled = asked.elapsed();
    sink.wait("the action on A was stopped", Duration::from_secs(5), |s| {
        s.aborted.contains_key(&key)
    })
    .await;
    assert_eq!(sink.completed(&key), 0, "the cancelled action finished");
    assert_ne!(t["steps"]["wait"]["state"], "DONE", "{t:#}");
    assert!(events_text(b, &id).await.contains("\"cancelled\""));
    assert_eq!(a.claimed_by(&id).await, ["stop-a"], "no one ran it again");

    // Pause, then retry.
    let id = create(a, "two", json!({})).await;
    let (first, second) = (format!("{id}/first"), format!("{id}/second"));
    sink.wait("the first step started", Duration::from_secs(10), |s| {
        s.started.contains_key(&first)
    })
    .await;
    assert_eq!(a.claimed_by(&id).await, ["stop-a"]);
    let asked = Instant::now();
    let (st, v) = b
        .post(&format!("/api/v1/tasks/{id}/pause"), json!({}))
        .await;
    assert_eq!(st, 200, "{v}");
    let t = b
        .wait_state_within(&id, &["PAUSED"], Duration::from_secs(10))
        .await;
    let to_paused = asked.elapsed();
    assert_eq!(t["steps"]["first"]["state"], "DONE", "{t:#}");
    assert_eq!(t["steps"]["second"]["state"], "TODO", "{t:#}");
    assert_eq!(
        (sink.completed(&first), sink.aborted(&first)),
        (1, 0),
        "pause lets the step in flight finish"
    );
    assert_eq!(sink.started(&second), 0, "nothing starts after a pause");
    let (st, v) = b
        .post(&format!("/api/v1/tasks/{id}/retry"), json!({}))
        .await;
    assert_eq!(st, 200, "{v}");
    b.wait_state_within(&id, &["DONE"], Duration::from_secs(10))
        .await;
    assert_eq!(
        (sink.started(&first), sink.started(&second)),
        (1, 1),
        "the retry resumed where the pause stopped"
    );
    eprintln!(
        "cancel through the other instance took {to_cancelled:?}; pause {to_paused:?} (the step in flight had up to 1.5 s left)"
    );
}

/// `--resource-limit x=2` on three instances: at most two steps holding `x` run at once across
/// the cluster, while the tasks are spread over all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resource_limit_holds_across_instances() {
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let (sink, sink_url) = Sink::start().await;
    let cluster = start_named(
        &db,
        &["res-a", "res-b", "res-c"],
        &[
            "--lease",
            "5s",
            "--orphan-sweep",
            "500ms",
            "--resource-limit",
            "x=2",
        ],
    );
    put_template(
        &cluster[0],
        "limited",
        &format!(
            "name: limited\nauto_runnable: true\ninputs: [{{name: n}}]\nsteps:\n  use:\n    resources: [x]\n    action: {{type: http, configuration: {{method: POST, url: '{sink_url}/hit/250'}}}}\n"
        ),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(create(&cluster[i % 3], "limited", json!({"n": i.to_string()})).await);
    }
    let mut instances = HashSet::new();
    for id in &ids {
        cluster[0]
            .wait_state_within(id, &["DONE"], Duration::from_secs(45))
            .await;
        instances.extend(cluster[0].claimed_by(id).await);
        assert_eq!(sink.completed(&format!("{id}/use")), 1, "task {id}");
    }
    let max = sink.seen.lock().unwrap().max_inflight;
    assert!(max <= 2, "{max} steps held resource x at once");
    assert!(
        instances.len() >= 2,
        "the tasks ran on {instances:?} only: the limit was not tested across instances"
    );
    eprintln!("at most {max} steps held x at once; tasks ran on {instances:?}");
}

/// An API-only instance never runs a step: tasks created there wait for a worker, and run on
/// the worker-only instance, which serves no API.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_node_creates_and_a_worker_node_runs() {
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let (sink, sink_url) = Sink::start().await;
    let common = ["--database-url", db.as_str(), "--database-pool", "6"];
    let mut flags = common.to_vec();
    flags.extend(["--instance", "front", "--roles", "api"]);
    let api = start_in(support::fresh_dir(), &flags);
    put_template(
        &api,
        "job",
        &format!(
            "name: job\nauto_runnable: true\ninputs: [{{name: n}}]\nsteps:\n  work:\n    action: {{type: http, configuration: {{method: POST, url: '{sink_url}/hit/10'}}}}\n"
        ),
    )
    .await;
    // No worker yet: the task waits, READY and unclaimed.
    let early = create(&api, "job", json!({"n": "early"})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, t) = api.get(&format!("/api/v1/tasks/{early}")).await;
    assert_eq!(t["state"], "READY", "{t:#}");
    assert!(api.claimed_by(&early).await.is_empty());

    // The worker asks for a port it must not serve.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut flags = common.to_vec();
    flags.extend([
        "--instance",
        "back",
        "--roles",
        "worker",
        "--listen",
        listen.as_str(),
    ]);
    let _worker = start_without_api(support::fresh_dir(), &flags);
    api.wait_state_within(&early, &["DONE"], Duration::from_secs(10))
        .await;
    let mut ids = vec![early];
    for i in 0..10 {
        ids.push(create(&api, "job", json!({"n": i.to_string()})).await);
    }
    for id in &ids {
        api.wait_state_within(id, &["DONE"], Duration::from_secs(20))
            .await;
        assert_eq!(api.claimed_by(id).await, ["back"], "task {id}");
        assert_eq!(sink.completed(&format!("{id}/work")), 1);
        let (_, events) = api.get(&format!("/api/v1/tasks/{id}/events")).await;
        assert_eq!(events[0]["kind"], "created", "{events}");
        assert_eq!(
            events[0]["to"], "READY",
            "the API node claimed it: {events}"
        );
    }
    // The worker serves nothing, not even on the address it was given.
    assert!(
        std::net::TcpStream::connect(&listen).is_err(),
        "the worker-only instance listens on {listen}"
    );
}

/// SIGTERM: the instance stops serving and claiming, lets the running step finish, and exits
/// 0 within the grace; the task is DONE and a task created meanwhile waits for another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_the_running_step_finish_and_claims_nothing_more() {
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let (sink, sink_url) = Sink::start().await;
    let mut cluster = start_named(
        &db,
        &["drain-a"],
        &["--lease", "3s", "--shutdown-grace", "15s"],
    );
    let front = start_named(&db, &["drain-front"], &["--roles", "api"]).remove(0);
    put_template(
        &front,
        "slow",
        &format!(
            "name: slow\nauto_runnable: true\ninputs: [{{name: n}}]\nsteps:\n  work:\n    action: {{type: http, configuration: {{method: POST, url: '{sink_url}/hit/2000'}}}}\n"
        ),
    )
    .await;
    let a = &mut cluster[0];
    let running = create(a, "slow", json!({"n": "1"})).await;
    let key = format!("{running}/work");
    sink.wait("the step started", Duration::from_secs(10), |s| {
        s.started.contains_key(&key)
    })
    .await;
    let signalled = Instant::now();
    a.sigterm();
    // It stops serving the API at once.
    let fresh = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while fresh
        .get(format!("{}/healthz", a.url))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "the API still answers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A task created now elsewhere is not claimed by the instance shutting down.
    let waiting = create(&front, "slow", json!({"n": "2"})).await;
    let status = a
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the instance did not exit within its grace");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(
        (sink.completed(&key), sink.aborted(&key)),
        (1, 0),
        "the running step was not let finish"
    );
    let t = front
        .wait_state_within(&running, &["DONE"], Duration::from_secs(5))
        .await;
    assert_eq!(t["steps"]["work"]["state"], "DONE");
    let (_, t) = front.get(&format!("/api/v1/tasks/{waiting}")).await;
    assert_eq!(t["state"], "READY", "{t:#}");
    assert!(front.claimed_by(&waiting).await.is_empty());
    // Another worker takes it.
    let _next = start_named(&db, &["drain-b"], &[]);
    front
        .wait_state_within(&waiting, &["DONE"], Duration::from_secs(10))
        .await;
    assert_eq!(front.claimed_by(&waiting).await, ["drain-b"]);
    eprintln!("exited 0 {took:?} after SIGTERM, its 2 s step finished");
}

/// A grace shorter than the step: the step is cut off, the lease given back as the instance
/// exits, and another instance takes the task over at once, not after the lease (30 s) expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grace_shorter_than_the_step_hands_the_task_over_at_once() {
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let (sink, sink_url) = Sink::start().await;
    let mut cluster = start_named(
        &db,
        &["short-a", "short-b"],
        &[
            "--lease",
            "30s",
            "--orphan-sweep",
            "30s",
            "--shutdown-grace",
            "300ms",
        ],
    );
    put_template(
        &cluster[0],
        "slow",
        &format!(
            "name: slow\nauto_runnable: true\nsteps:\n  work:\n    idempotent: true\n    action: {{type: http, configuration: {{method: POST, url: '{sink_url}/hit/3000'}}}}\n"
        ),
    )
    .await;
    let id = create(&cluster[0], "slow", json!({})).await;
    let key = format!("{id}/work");
    sink.wait("the step started", Duration::from_secs(10), |s| {
        s.started.contains_key(&key)
    })
    .await;
    cluster[0].sigterm();
    let status = cluster[0]
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the instance did not exit after its grace");
    assert_eq!(status.code(), Some(0), "{status}");
    let exited = Instant::now();
    assert_eq!(sink.aborted(&key), 1, "the step was not cut off");
    let b = &cluster[1];
    b.wait_state_within(&id, &["DONE"], Duration::from_secs(15))
        .await;
    let took = exited.elapsed();
    assert!(took < Duration::from_secs(20), "taken over after {took:?}");
    assert_eq!(b.claimed_by(&id).await, ["short-a", "short-b"]);
    assert_eq!((sink.started(&key), sink.completed(&key)), (2, 1));
    assert!(events_text(b, &id).await.contains("server shutting down"));
    eprintln!("taken over and finished {took:?} after the first instance exited");
}

/// A second SIGTERM during the grace exits at once with 130; the lease then expires and
/// another instance takes the task over (a non-idempotent step cut off waits for a human).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_sigterm_exits_at_once_with_130() {
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let (sink, sink_url) = Sink::start().await;
    let mut cluster = start_named(
        &db,
        &["twice-a", "twice-b"],
        &[
            "--lease",
            "2s",
            "--orphan-sweep",
            "500ms",
            "--shutdown-grace",
            "30s",
        ],
    );
    put_template(
        &cluster[0],
        "slow",
        &format!(
            "name: slow\nauto_runnable: true\nsteps:\n  work:\n    action: {{type: http, configuration: {{method: POST, url: '{sink_url}/hit/20000', timeout: 60s}}}}\n"
        ),
    )
    .await;
    let id = create(&cluster[0], "slow", json!({})).await;
    let key = format!("{id}/work");
    sink.wait("the step started", Duration::from_secs(10), |s| {
        s.started.contains_key(&key)
    })
    .await;
    cluster[0].sigterm();
    // The first signal is taken: the API closes.
    let fresh = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while fresh
        .get(format!("{}/healthz", cluster[0].url))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "the API still answers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        cluster[0].child.try_wait().unwrap().is_none(),
        "exited early"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = Instant::now();
    cluster[0].sigterm();
    let status = cluster[0]
        .wait_exit(Duration::from_secs(3))
        .await
        .expect("a second SIGTERM did not exit at once");
    assert_eq!(status.code(), Some(130), "{status}");
    let took = second.elapsed();
    let b = &cluster[1];
    let t = b
        .wait_state_within(&id, &["BLOCKED"], Duration::from_secs(20))
        .await;
    assert_eq!(t["steps"]["work"]["state"], "CRASHED", "{t:#}");
    assert_eq!(sink.started(&key), 1, "the step ran again");
    assert_eq!(b.claimed_by(&id).await, ["twice-a", "twice-b"]);
    eprintln!("exited 130 {took:?} after the second SIGTERM");
}

/// A task created on an API-only instance is claimed by a worker woken by LISTEN/NOTIFY, not by
/// polling: with sweeps and leases at 30 s, each step starts well within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_is_woken_at_once_for_a_task_created_elsewhere() {
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let (sink, sink_url) = Sink::start().await;
    let slow_polling = ["--lease", "30s", "--orphan-sweep", "30s"];
    let mut api_flags = slow_polling.to_vec();
    api_flags.extend(["--roles", "api"]);
    let api = start_named(&db, &["wake-front"], &api_flags).remove(0);
    let mut worker_flags = slow_polling.to_vec();
    worker_flags.extend([
        "--database-url",
        db.as_str(),
        "--database-pool",
        "6",
        "--instance",
        "wake-worker",
        "--roles",
        "worker",
    ]);
    let _worker = start_without_api(support::fresh_dir(), &worker_flags);
    put_template(
        &api,
        "ping",
        &format!(
            "name: ping\nauto_runnable: true\ninputs: [{{name: n}}]\nsteps:\n  go:\n    action: {{type: http, configuration: {{method: POST, url: '{sink_url}/hit/0'}}}}\n"
        ),
    )
    .await;
    let mut latencies = Vec::new();
    for i in 0..50 {
        let sent = Instant::now();
        let id = create(&api, "ping", json!({"n": i.to_string()})).await;
        let key = format!("{id}/go");
        sink.wait("the step started", Duration::from_secs(10), |s| {
            s.first_start.contains_key(&key)
        })
        .await;
        let latency = sink.first_start(&key).unwrap() - sent;
        latencies.push(latency);
        api.wait_state_within(&id, &["DONE"], Duration::from_secs(10))
            .await;
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = *latencies.last().unwrap();
    eprintln!(
        "create request to step start over LISTEN/NOTIFY: p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    assert!(
        max < Duration::from_secs(1),
        "a step started {max:?} after its task was created"
    );
}
