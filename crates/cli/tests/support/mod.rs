//! One way to start the real server for tests: the `taskhook` binary on a fresh data
//! directory and a free port, talked to over HTTP like a user would.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "test-admin-token";

pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub http: reqwest::Client,
}

/// The binary under test: `TASKHOOK_TEST_BIN` when set (a copy taken right after building,
/// safe from other builds sharing the target directory), else the one cargo built.
pub fn bin() -> PathBuf {
    std::env::var_os("TASKHOOK_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_taskhook")))
}

pub fn fresh_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("taskhook-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Server {
    pub fn start() -> Server {
        Server::start_in(fresh_dir(), &[])
    }

    /// Starts `taskhook serve` on `data_dir` (reused across restarts) with extra flags.
    pub fn start_in(data_dir: PathBuf, extra: &[&str]) -> Server {
        Server::start_with(data_dir, extra, &[], None)
    }

    /// [`Server::start_in`] with environment variables (test failpoints), and, when `lines`
    /// is given, every line the server prints on stdout after it listens sent there.
    pub fn start_with(
        data_dir: PathBuf,
        extra: &[&str],
        env: &[(&str, &str)],
        lines_to: Option<std::sync::mpsc::Sender<String>>,
    ) -> Server {
        let mut child = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .env("TASKHOOK_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start taskhook serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            if let Some(rest) = line.strip_prefix("taskhook is listening on ") {
                break rest.trim().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(to) = &lines_to {
                    let _ = to.send(line);
                }
            }
        });
        Server {
            child,
            url,
            data_dir,
            http: reqwest::Client::new(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, &str)>,
    ) -> (u16, String, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{}", self.url, path))
            .bearer_auth(TOKEN);
        if let Some((b, ct)) = body {
            r = r.header("content-type", ct).body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, ct, v)
    }

    /// Sends `path` exactly as written, over a plain TCP connection with the admin token: an
    /// HTTP client normalises dot segments (`/a/..`) away, a hand-written one may not.
    pub async fn raw(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = self.url.trim_start_matches("http://");
        let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let text = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (
            status,
            serde_json::from_str(text).unwrap_or(Value::String(text.into())),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (s, _, v) = self.req(reqwest::Method::GET, path, None).await;
        (s, v)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, _, v) = self
            .req(
                reqwest::Method::POST,
                path,
                Some((&body.to_string(), "application/json")),
            )
            .await;
        (s, v)
    }

    /// Puts a template; every template the server accepts must be accepted by the published
    /// template schema too (`docs/template-schema.json`), so each test's templates check it.
    pub async fn put_template(&self, name: &str, yaml: &str) -> (u16, Value) {
        let (s, _, v) = self
            .req(
                reqwest::Method::PUT,
                &format!("/api/v1/templates/{name}"),
                Some((yaml, "application/yaml")),
            )
            .await;
        if s == 200 || s == 201 {
            assert_schema_accepts(yaml);
        }
        (s, v)
    }

    /// Polls a task until it is in one of `states`; panics with the task after 15 s.
    pub async fn wait_state(&self, id: &str, states: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, t) = self.get(&format!("/api/v1/tasks/{id}")).await;
            if states.contains(&t["state"].as_str().unwrap_or("")) {
                return t;
            }
            if Instant::now() > deadline {
                panic!("task {id} never reached {states:?}: {t:#}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A local HTTP service for `http` steps: `/items` lists items, `/echo` echoes JSON,
/// `/slow` answers after 1.5 s, `/missing` is a 404.
pub async fn target() -> String {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route(
            "/items",
            get(|| async {
                axum::Json(serde_json::json!({"items": ["a", "b", "c"], "env": "prod"}))
            }),
        )
        .route(
            "/echo",
            post(|body: axum::Json<Value>| async move { axum::Json(body.0) }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                axum::Json(serde_json::json!({"slow": true}))
            }),
        )
        .route(
            "/missing",
            get(|| async { (axum::http::StatusCode::NOT_FOUND, "nope") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The published template schema, `docs/template-schema.json`, compiled once. The
/// `jsonschema` crate is built without its HTTP resolver: the schema's only references are
/// its own definitions, and nothing is fetched.
pub fn template_schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/template-schema.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let schema: Value = serde_json::from_str(&text).unwrap();
        jsonschema::draft7::new(&schema).unwrap()
    })
}

/// Panics with every error when the published template schema refuses the document `text`
/// (YAML or JSON, read as the server reads it).
pub fn assert_schema_accepts(text: &str) {
    let doc = taskhook_model::template::read_document(text).unwrap();
    let errors: Vec<String> = template_schema()
        .iter_errors(&doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "docs/template-schema.json refuses a template the server accepts:\n{text}\n{errors:#?}"
    );
}

/// Runs the `taskhook` binary with `args`, pointed at `server` (or at nothing: no URL, no
/// token); returns the exit code, stdout and stderr.
pub fn taskhook(server: Option<&Server>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("TASKHOOK_TOKEN")
        .env_remove("TASKHOOK_URL");
    if let Some(s) = server {
        cmd.env("TASKHOOK_URL", &s.url).env("TASKHOOK_TOKEN", TOKEN);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A PostgreSQL URL whose connections use a fresh, empty schema (`options=-c search_path=…`),
/// or `None` after a visible message when PostgreSQL is unreachable (a failure when
/// TASKHOOK_TEST_REQUIRE_SERVICES=1).
pub async fn postgres_url() -> Option<String> {
    taskhook_store::testing::fresh_schema_url().await
}

impl Server {
    /// Starts `taskhook serve` without the `api` role: it serves nothing, so it is ready once it
    /// says it runs without an API. `url` is empty; `extra` may give a `--listen`.
    pub fn start_without_api(data_dir: PathBuf, extra: &[&str]) -> Server {
        let mut child = Command::new(bin())
            .args(["serve", "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .env("TASKHOOK_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start taskhook serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines
                .next()
                .expect("server exited before starting")
                .unwrap();
            if line.starts_with("taskhook is running without an API") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            url: String::new(),
            data_dir,
            http: reqwest::Client::new(),
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`…) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Sends SIGTERM, as a service manager stopping the instance does.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `limit` for the process to exit; its status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls a task until it is in one of `states`; panics with the task after `limit`.
    pub async fn wait_state_within(&self, id: &str, states: &[&str], limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let (_, t) = self.get(&format!("/api/v1/tasks/{id}")).await;
            if states.contains(&t["state"].as_str().unwrap_or("")) {
                return t;
            }
            if Instant::now() > deadline {
                panic!("task {id} never reached {states:?} within {limit:?}: {t:#}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The instance names that claimed a task, in order, from its audit trail.
    pub async fn claimed_by(&self, id: &str) -> Vec<String> {
        let (code, events) = self.get(&format!("/api/v1/tasks/{id}/events")).await;
        assert_eq!(code, 200, "{events}");
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "claimed")
            .map(|e| e["detail"]["instance"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

/// The URL of an external service (a message broker) from environment variable `var`, or
/// `default`; `None` after a visible message when nothing listens there (a failure when
/// TASKHOOK_TEST_REQUIRE_SERVICES=1).
pub async fn service_url(var: &str, default: &str) -> Option<String> {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let parsed = reqwest::Url::parse(&url).unwrap_or_else(|e| panic!("{var}={url}: {e}"));
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_string();
    let port = parsed.port_or_known_default().unwrap_or(0);
    let reachable = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .is_ok_and(|c| c.is_ok());
    if reachable {
        return Some(url);
    }
    let required = std::env::var("TASKHOOK_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{url} ({var}) is required (TASKHOOK_TEST_REQUIRE_SERVICES=1) but not reachable"
    );
    eprintln!("SKIPPED: nothing listens at {url} (set {var} to a reachable one)");
    None
}

impl Server {
    /// Puts a hook from YAML; returns the status and the answer.
    pub async fn put_hook(&self, group: &str, id: &str, yaml: &str) -> (u16, Value) {
        let (st, _, v) = self
            .req(
                reqwest::Method::PUT,
                &format!("/api/v1/hooks/{group}/{id}"),
                Some((yaml, "application/yaml")),
            )
            .await;
        (st, v)
    }

    /// Every fire of a hook, oldest first.
    pub async fn fires(&self, group: &str, id: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/hooks/{group}/{id}/fires?limit=1000");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (st, v) = self.get(&path).await;
            assert_eq!(st, 200, "{v}");
            all.extend(v["fires"].as_array().cloned().unwrap_or_default());
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        all.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        all
    }

    /// Waits until a hook has at least `n` fires; panics with them after `limit`.
    pub async fn wait_fires(&self, group: &str, id: &str, n: usize, limit: Duration) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let fires = self.fires(group, id).await;
            if fires.len() >= n {
                return fires;
            }
            if Instant::now() > deadline {
                panic!(
                    "hook {group}/{id} has {} fires, not {n}, after {limit:?}: {:#}",
                    fires.len(),
                    Value::Array(fires)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `sources` of a hook's status.
    pub async fn source_status(&self, group: &str, id: &str) -> Vec<Value> {
        let (st, v) = self
            .get(&format!("/api/v1/hooks/{group}/{id}/status"))
            .await;
        assert_eq!(st, 200, "{v}");
        v["sources"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `check` holds for source `index` of a hook's status.
    pub async fn wait_source(
        &self,
        group: &str,
        id: &str,
        index: usize,
        limit: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.source_status(group, id).await;
            if let Some(v) = s.get(index)
                && check(v)
            {
                return v.clone();
            }
            if Instant::now() > deadline {
                panic!("source {index} of hook {group}/{id} never got there: {s:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a hook's first source is connected; its status.
    pub async fn wait_connected(&self, group: &str, id: &str, limit: Duration) -> Value {
        self.wait_source(group, id, 0, limit, |v| v["connected"] == true)
            .await
    }
}

/// Starts `n` instances sharing the PostgreSQL database `url` and one key ring, as every
/// instance of a cluster must, each with `extra` flags.
pub fn start_cluster(url: &str, n: usize, extra: &[&str]) -> Vec<Server> {
    // The instances share one key ring, as every instance of a cluster must.
    let ring = fresh_dir().join("keys");
    let ring = ring.to_str().unwrap();
    let (code, _, err) = taskhook(None, &["keys", "generate", "--key-file", ring]);
    assert_eq!(code, 0, "{err}");
    let mut flags = vec![
        "--database-url",
        url,
        "--database-pool",
        "8",
        "--key-file",
        ring,
    ];
    flags.extend_from_slice(extra);
    (0..n)
        .map(|_| Server::start_in(fresh_dir(), &flags))
        .collect()
}

/// The fires of a ledger that created a task.
pub fn created(fires: &[Value]) -> Vec<&Value> {
    fires.iter().filter(|f| f["result"] == "created").collect()
}

/// Every message made exactly one task: `n` created fires, each with its own delivery id
/// starting with `id_prefix` (and its own `payload.n` when payloads carry one); a repeated
/// delivery only ever shows as a `duplicate` fire.
pub fn assert_once_each(fires: &[Value], id_prefix: &str, n: usize) {
    let made = created(fires);
    let ids: std::collections::BTreeSet<&str> = made
        .iter()
        .map(|f| f["delivery_id"].as_str().unwrap())
        .collect();
    assert_eq!(made.len(), n, "one created fire per message");
    assert_eq!(ids.len(), n, "no message made two tasks");
    assert!(
        ids.iter().all(|i| i.starts_with(id_prefix)),
        "delivery ids not starting with {id_prefix}: {ids:?}"
    );
    if made.iter().all(|f| f["payload"]["n"].is_number()) {
        let ns: std::collections::BTreeSet<String> =
            made.iter().map(|f| f["payload"]["n"].to_string()).collect();
        assert_eq!(ns.len(), n, "every message made its task");
    }
    for f in fires {
        assert!(
            matches!(f["result"].as_str(), Some("created" | "duplicate")),
            "{f}"
        );
    }
}

impl Server {
    /// Waits until a hook's ledger has at least `n` created fires; returns every fire.
    pub async fn wait_created(
        &self,
        group: &str,
        id: &str,
        n: usize,
        limit: Duration,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let fires = self.fires(group, id).await;
            if created(&fires).len() >= n {
                return fires;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} created fires of {group}/{id}, not {n}: {:#}",
                    created(&fires).len(),
                    Value::Array(fires)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Two instances on the PostgreSQL database `db` with template `job` (from `template`) and
/// hook `bus/jobs` (from `hook`), once the hook's first source is connected on both.
pub async fn cluster_with_hook(db: &str, template: &str, hook: &str) -> Vec<Server> {
    let cluster = start_cluster(db, 2, &[]);
    assert_eq!(cluster[0].put_template("job", template).await.0, 201);
    let (st, v) = cluster[0].put_hook("bus", "jobs", hook).await;
    assert_eq!(st, 201, "{v}");
    // The other instance learns of the hook through the database.
    for s in &cluster {
        s.wait_connected("bus", "jobs", Duration::from_secs(40))
            .await;
    }
    cluster
}

/// Every one of `n` messages made one task across the cluster (see [`assert_once_each`]);
/// prints how many each instance fired.
pub async fn assert_cluster_once_each(cluster: &[Server], id_prefix: &str, n: usize) {
    let fires = cluster[0]
        .wait_created("bus", "jobs", n, Duration::from_secs(90))
        .await;
    assert_once_each(&fires, id_prefix, n);
    let mut per_instance = Vec::new();
    for s in cluster {
        let st = s.source_status("bus", "jobs").await;
        per_instance.push(st[0]["fired"].as_u64().unwrap());
    }
    eprintln!("messages fired per instance: {per_instance:?}");
}

/// Puts hook `bus/jobs` from `doc(url)`, `url` holding `password`: the answer and the hook as
/// shown never contain the password, and the shown (masked) URL sent back keeps it (200).
pub async fn put_masked_round_trip(
    s: &Server,
    kind: &str,
    url: &str,
    password: &str,
    doc: impl Fn(&str) -> String,
) {
    let (st, v) = s.put_hook("bus", "jobs", &doc(url)).await;
    assert_eq!(st, 201, "{v}");
    assert!(!v.to_string().contains(password), "{v}");
    let (_, got) = s.get("/api/v1/hooks/bus/jobs").await;
    assert!(!got.to_string().contains(password), "{got}");
    let masked = got["hook"]["sources"][0][kind]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, v) = s.put_hook("bus", "jobs", &doc(&masked)).await;
    assert_eq!(st, 200, "{v}");
}
