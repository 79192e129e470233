//! Several `taskhook serve` processes sharing one PostgreSQL database, as an operator runs
//! them: tasks spread over the instances, one instance is killed with SIGKILL mid-load, and
//! the others finish its work; cron schedules fire exactly once per due time across them.
//! Skipped (with a message) when PostgreSQL is unreachable, unless services are required.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

/// Counts calls per `Idempotency-Key`, answering after `/{ms}` milliseconds.
#[derive(Clone, Default)]
struct Sink {
    calls: Arc<Mutex<HashMap<String, u32>>>,
}

impl Sink {
    async fn start() -> (Sink, String) {
        async fn hit(
            State(sink): State<Sink>,
            UrlPath(ms): UrlPath<u64>,
            headers: HeaderMap,
        ) -> axum::Json<Value> {
            let key = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            *sink.calls.lock().unwrap().entry(key).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            axum::Json(json!({"ok": true}))
        }
        let sink = Sink::default();
        let app = axum::Router::new()
            .route("/hit/{ms}", axum::routing::post(hit))
            .with_state(sink.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (sink, url)
    }

    fn calls(&self) -> HashMap<String, u32> {
        self.calls.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instance_loses_no_task_and_runs_no_step_twice() {
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let (sink, sink_url) = Sink::start().await;
    let mut cluster = support::start_cluster(&db, 3, &["--lease", "2s", "--orphan-sweep", "500ms"]);
    // `prepare` may run again after a crash; `charge` must never run twice.
    let template = format!(
        "name: order\nauto_runnable: true\ninputs: [{{name: n}}]\nsteps:\n  prepare:\n    idempotent: true\n    action: {{type: http, configuration: {{method: POST, url: '{sink_url}/hit/150'}}}}\n  charge:\n    dependencies: [prepare]\n    action: {{type: http, configuration: {{method: POST, url: '{sink_url}/hit/50'}}}}\n"
    );
    let (st, v) = cluster[0].put_template("order", &template).await;
    assert!(st == 201 || st == 200, "{v}");
    // The other instances see the template through the shared database.

    const TASKS: usize = 1500;
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let urls: Vec<String> = cluster.iter().map(|s| s.url.clone()).collect();
    let mut creators = tokio::task::JoinSet::new();
    for c in 0..24 {
        let (accepted, next, urls) = (accepted.clone(), next.clone(), urls.clone());
        creators.spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= TASKS {
                    return;
                }
                let url = &urls[(i + c) % urls.len()];
                let resp = http
                    .post(format!("{url}/api/v1/tasks"))
                    .bearer_auth(support::TOKEN)
                    .json(&json!({"template": "order", "inputs": {"n": i.to_string()}}))
                    .send()
                    .await;
                // A request to the killed instance fails: that task was never accepted.
                if let Ok(r) = resp
                    && r.status().as_u16() == 201
                {
                    let v: Value = r.json().await.unwrap();
                    accepted
                        .lock()
                        .unwrap()
                        .push(v["id"].as_str().unwrap().to_string());
                }
            }
        });
    }
    // Kill instance 1 once a third of the tasks are in, while it holds running tasks.
    while next.load(std::sync::atomic::Ordering::Relaxed) < TASKS / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster[1].kill9();
    while creators.join_next().await.is_some() {}
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() > TASKS / 2,
        "only {} accepted",
        accepted.len()
    );

    // Every accepted task reaches an end; a task whose `charge` was cut by the kill waits
    // for a human (BLOCKED) instead of charging again.
    let survivor = &cluster[0];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut states: BTreeMap<String, String> = BTreeMap::new();
    for id in &accepted {
        loop {
            let (code, t) = survivor.get(&format!("/api/v1/tasks/{id}")).await;
            assert_eq!(code, 200, "accepted task {id} is missing: {t}");
            let state = t["state"].as_str().unwrap().to_string();
            if state == "DONE" || state == "BLOCKED" {
                states.insert(id.clone(), state);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} is stuck in {state}: {t:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let calls = sink.calls();
    let mut blocked = 0;
    for (id, state) in &states {
        let charged = calls
            .get(&format!("{id}/charge"))
            .copied()
            .unwrap_or_default();
        assert!(charged <= 1, "task {id}: charge ran {charged} times");
        if state == "DONE" {
            assert_eq!(
                charged, 1,
                "task {id} is DONE but was charged {charged} times"
            );
        } else {
            blocked += 1;
            let (_, t) = survivor.get(&format!("/api/v1/tasks/{id}")).await;
            assert_eq!(t["steps"]["charge"]["state"], "CRASHED", "{t:#}");
            let (_, events) = survivor.get(&format!("/api/v1/tasks/{id}/events")).await;
            let text = events.to_string();
            assert!(text.contains("interrupted by a crash"), "{text}");
        }
    }
    // Only the charges in flight on the killed instance can be left for a human.
    assert!(blocked <= 64, "{blocked} tasks blocked");
    // The killed instance's tasks were taken over: some tasks were claimed twice.
    let retaken: HashSet<&String> = calls
        .iter()
        .filter(|(k, n)| k.ends_with("/prepare") && **n > 1)
        .map(|(k, _)| k)
        .collect();
    eprintln!(
        "{} accepted, {} blocked by the kill, {} prepare steps re-run after takeover",
        accepted.len(),
        blocked,
        retaken.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedules_fire_once_per_due_time_across_instances() {
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let mut cluster = support::start_cluster(&db, 3, &["--lease", "2s", "--orphan-sweep", "500ms"]);
    let s = &cluster[0];
    let (st, v) = s
        .put_template(
            "tick",
            "name: tick\nauto_runnable: true\ninputs: [{name: at}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ input.at }}'}}}\n",
        )
        .await;
    assert!(st == 201 || st == 200, "{v}");
    const HOOKS: usize = 20;
    for i in 0..HOOKS {
        let (st, _, v) = s
            .req(
                reqwest::Method::PUT,
                &format!("/api/v1/hooks/cron/h{i}"),
                Some((
                    "template: tick\nschedule: ['*/2 * * * * *']\nmisfire: catch_up\ninputs: {at: '{{ event.scheduled_for }}'}\n",
                    "application/yaml",
                )),
            )
            .await;
        assert!(st == 201 || st == 200, "{v}");
    }
    let started = Instant::now();
    // Halfway, one instance dies; the other two keep every schedule going.
    tokio::time::sleep(Duration::from_secs(45)).await;
    cluster[2].kill9();
    tokio::time::sleep(Duration::from_secs(45)).await;
    let elapsed = started.elapsed().as_secs() as i64;
    let s = &cluster[0];
    for i in 0..HOOKS {
        let (_, v) = s
            .get(&format!("/api/v1/hooks/cron/h{i}/fires?limit=1000"))
            .await;
        let fires = v["fires"].as_array().unwrap();
        let mut due: Vec<i64> = fires
            .iter()
            .map(|f| {
                assert_eq!(f["result"], "created", "{f}");
                f["scheduled_for"]
                    .as_str()
                    .unwrap()
                    .parse::<jiff::Timestamp>()
                    .unwrap()
                    .as_millisecond()
            })
            .collect();
        due.sort();
        let unique: HashSet<i64> = due.iter().copied().collect();
        assert_eq!(unique.len(), due.len(), "hook h{i}: a due time fired twice");
        for w in due.windows(2) {
            assert_eq!(
                w[1] - w[0],
                2000,
                "hook h{i}: a due time was missed: {due:?}"
            );
        }
        // Due every 2 s for `elapsed` seconds, counted from the first due time after creation.
        let expected = elapsed / 2;
        assert!(
            (due.len() as i64 - expected).abs() <= 2,
            "hook h{i}: {} fires in {elapsed} s",
            due.len()
        );
    }
}

/// A TCP proxy in front of PostgreSQL that the test can cut: every open connection is
/// dropped and new ones are refused, as when the database restarts or the network fails.
struct Proxy {
    addr: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let (upstream, cut) = (upstream.clone(), cut2.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Proxy { addr, up, cut }
    }

    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_costs_retries_not_data() {
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let mut url = reqwest::Url::parse(&db).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = Proxy::start(upstream).await;
    url.set_port(Some(proxy.addr.port())).unwrap();
    let cluster = support::start_cluster(url.as_str(), 1, &[]);
    let s = &cluster[0];
    let (st, v) = s
        .put_template(
            "t",
            "name: t\nauto_runnable: true\ninputs: [{name: n}]\nsteps:\n  a: {action: {type: sleep, configuration: {duration: 300ms}}}\n  b: {dependencies: [a], action: {type: echo, configuration: {output: '{{ input.n }}'}}}\n",
        )
        .await;
    assert!(st == 201 || st == 200, "{v}");

    let mut accepted = Vec::new();
    let mut unavailable = 0;
    let started = Instant::now();
    let mut cut_at = None;
    let mut i = 0;
    // Create tasks for 6 s; the database is away from 2 s to 4 s.
    while started.elapsed() < Duration::from_secs(6) {
        let t = started.elapsed();
        if cut_at.is_none() && t > Duration::from_secs(2) {
            proxy.down();
            cut_at = Some(Instant::now());
        }
        if cut_at.is_some_and(|c| c.elapsed() > Duration::from_secs(2)) {
            proxy.restore();
        }
        let resp = s
            .http
            .post(format!("{}/api/v1/tasks", s.url))
            .bearer_auth(support::TOKEN)
            .json(&json!({"template": "t", "inputs": {"n": i.to_string()}}))
            .send()
            .await
            .unwrap();
        i += 1;
        match resp.status().as_u16() {
            201 => {
                let v: Value = resp.json().await.unwrap();
                accepted.push(v["id"].as_str().unwrap().to_string());
            }
            503 => {
                assert_eq!(resp.headers()["retry-after"], "1");
                let v: Value = resp.json().await.unwrap();
                assert_eq!(v["status"], 503, "{v}");
                unavailable += 1;
            }
            other => panic!(
                "while the database was away the API answered {other}: {}",
                resp.text().await.unwrap()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(unavailable > 0, "the outage was never seen");
    assert!(accepted.len() > 20, "{} accepted", accepted.len());
    // Every accepted task finishes once the database is back.
    for id in &accepted {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, t) = s.get(&format!("/api/v1/tasks/{id}")).await;
            if code == 200 && t["state"] == "DONE" {
                break;
            }
            assert!(Instant::now() < deadline, "task {id} did not finish: {t:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "{} accepted, {unavailable} answered 503 during the outage",
        accepted.len()
    );
}
