//! A NATS JetStream stream as a hook source, against the real server (TASKHOOK_TEST_NATS_URL,
//! default nats://127.0.0.1:4222): every message leaves one fire, is acknowledged only after
//! its fire is committed, and survives a server restart and kill -9 without loss or a second
//! task. Tests that need credentials or a restart run a private `nats-server` of their own
//! (TASKHOOK_TEST_NATS_SERVER, default `nats-server` on the PATH) on a free port.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use serde_json::{Value, json};
use support::{Server, fresh_dir, service_url};

const TEMPLATE: &str = "name: job\nauto_runnable: true\ninputs: [{name: n}, {name: via}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ input.n }} {{ input.via }}'}}}\n";

fn name() -> String {
    format!("taskhook-test-{}", uuid::Uuid::new_v4().simple())
}

async fn nats() -> Option<(String, jetstream::Context)> {
    let url = service_url("TASKHOOK_TEST_NATS_URL", "nats://127.0.0.1:4222").await?;
    let client = async_nats::connect(url.as_str()).await.unwrap();
    Some((url, jetstream::new(client)))
}

/// A stream `name` taking subjects `name.>`.
async fn create_stream(js: &jetstream::Context, name: &str) {
    js.create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![format!("{name}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Publishes and waits for the stream's acknowledgement; `id` becomes `Nats-Msg-Id`, which
/// makes the stream drop a repeated publish.
async fn publish(js: &jetstream::Context, subject: &str, body: Value, id: Option<&str>) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("App", "ci");
    if let Some(id) = id {
        headers.insert("Nats-Msg-Id", id);
    }
    js.publish_with_headers(subject.to_string(), headers, body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn publish_raw(js: &jetstream::Context, subject: &str, body: Vec<u8>) {
    js.publish(subject.to_string(), body.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A hook starting `job` for messages whose payload has `kind: build`.
fn hook(url: &str, stream: &str, extra: &str) -> String {
    format!(
        r#"
template: job
filter: "event.payload.kind == 'build'"
inputs:
  n: "{{{{ event.payload.n | string }}}}"
  via: "{{{{ event.source }}}} {{{{ event.headers.App | default('-') }}}}"
sources:
  - nats: {{url: "{url}", stream: {stream}, from: all{extra}}}
"#
    )
}

/// A `nats-server` of this test's own, with JetStream, on a free port.
struct PrivateNats {
    child: Child,
    port: u16,
    dir: PathBuf,
    auth: Vec<String>,
}

impl PrivateNats {
    /// Started with `auth` flags (`--user u --pass p`, `--auth TOKEN`); `None`, visibly, when
    /// there is no `nats-server` to run (a failure when TASKHOOK_TEST_REQUIRE_SERVICES=1).
    async fn start(auth: &[&str]) -> Option<PrivateNats> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut n = PrivateNats {
            child: Command::new("true").spawn().unwrap(),
            port,
            dir: fresh_dir(),
            auth: auth.iter().map(|s| s.to_string()).collect(),
        };
        if !n.spawn() {
            let required = std::env::var("TASKHOOK_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
            assert!(!required, "nats-server is required but cannot be run");
            eprintln!("SKIPPED: no nats-server to run (set TASKHOOK_TEST_NATS_SERVER)");
            return None;
        }
        n.wait_listening().await;
        Some(n)
    }

    fn spawn(&mut self) -> bool {
        let bin = std::env::var("TASKHOOK_TEST_NATS_SERVER").unwrap_or("nats-server".into());
        let child = Command::new(bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .args(&self.auth)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.child = c;
                true
            }
            Err(_) => false,
        }
    }

    async fn wait_listening(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server (SIGTERM: it closes every client connection) and starts it again on
    /// the same port and store after `down`.
    async fn restart(&mut self, down: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        tokio::time::sleep(down).await;
        assert!(self.spawn());
        self.wait_listening().await;
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_fire_the_hook_once_each_and_are_acknowledged() {
    let Some((url, js)) = nats().await else {
        return;
    };
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let stream = name();
    create_stream(&js, &stream).await;
    let durable = format!("c-{}", uuid::Uuid::new_v4().simple());
    let (st, v) = s
        .put_hook(
            "bus",
            "jobs",
            &hook(
                &url,
                &stream,
                &format!(
                    ", subjects: ['{stream}.build.>'], durable: {durable}, max_message_bytes: 1024"
                ),
            ),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let status = s
        .wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    assert_eq!(status["kind"], "nats");

    // Three builds and one message the filter refuses on the consumer's subjects, and one on
    // a subject of the stream the consumer does not take.
    for i in 1..=3 {
        publish(
            &js,
            &format!("{stream}.build.{i}"),
            json!({"kind": "build", "n": i}),
            None,
        )
        .await;
        if i == 2 {
            publish(
                &js,
                &format!("{stream}.build.x"),
                json!({"kind": "other"}),
                None,
            )
            .await;
        }
    }
    publish(
        &js,
        &format!("{stream}.deploy.1"),
        json!({"kind": "build", "n": 99}),
        None,
    )
    .await;
    let fires = s
        .wait_fires("bus", "jobs", 4, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.fires("bus", "jobs").await.len(), 4, "{fires:#?}");
    assert_eq!(support::created(&fires).len(), 3, "{fires:#?}");
    assert_eq!(
        fires.iter().filter(|f| f["result"] == "filtered").count(),
        1
    );
    let ids: Vec<&str> = fires
        .iter()
        .map(|f| f["delivery_id"].as_str().unwrap())
        .collect();
    for f in &fires {
        assert_eq!(f["fired_by"], "nats");
    }
    // Stream sequences 1 to 4 (the fifth message is not on the consumer's subjects).
    let created = js.get_stream(&stream).await.unwrap().cached_info().created;
    let created = created.unix_timestamp_nanos() / 1_000_000;
    let expected: Vec<String> = (1..=4)
        .map(|i| format!("nats:{stream}:{created}:{i}"))
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, expected);
    let mut outputs = BTreeSet::new();
    for f in support::created(&fires) {
        let t = s
            .wait_state(f["task_id"].as_str().unwrap(), &["DONE"])
            .await;
        outputs.insert(t["steps"]["a"]["output"].as_str().unwrap().to_string());
    }
    // event.source is the subject, event.headers the NATS headers.
    let expected: BTreeSet<String> = (1..=3)
        .map(|i| format!("{i} {stream}.build.{i} ci"))
        .collect();
    assert_eq!(outputs, expected);

    // Text that is not JSON is a string payload (the filter then fails on it); a message over
    // max_message_bytes is a fire `error` saying why. Both are acknowledged.
    publish_raw(&js, &format!("{stream}.build.t"), b"plain text".to_vec()).await;
    publish_raw(&js, &format!("{stream}.build.t"), vec![b'x'; 2000]).await;
    let fires = s
        .wait_fires("bus", "jobs", 6, Duration::from_secs(10))
        .await;
    assert_eq!(fires[4]["result"], "error");
    assert!(
        fires[4]["error"].as_str().unwrap().contains("filter"),
        "{}",
        fires[4]
    );
    assert_eq!(fires[4]["payload"], "plain text");
    assert_eq!(fires[5]["result"], "error");
    assert!(
        fires[5]["error"]
            .as_str()
            .unwrap()
            .contains("max_message_bytes"),
        "{}",
        fires[5]
    );
    let mut st = js.get_stream(&stream).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = st.consumer_info(&durable).await.unwrap();
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            assert_eq!(info.config.max_ack_pending, 256);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "messages left unacknowledged: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(st.info().await.unwrap().state.messages, 7);
    let status = s
        .wait_source("bus", "jobs", 0, Duration::from_secs(10), |v| v["lag"] == 0)
        .await;
    assert_eq!(status["received"], 6, "{status:?}");
    assert_eq!(status["fired"], 6, "{status:?}");

    // A disabled hook consumes nothing; enabled again, it takes what came meanwhile, without
    // waiting for an ack wait.
    let doc = hook(
        &url,
        &stream,
        &format!(", subjects: ['{stream}.build.>'], durable: {durable}"),
    );
    let off = format!("{doc}enabled: false\n");
    assert_eq!(s.put_hook("bus", "jobs", &off).await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(
        &js,
        &format!("{stream}.build.4"),
        json!({"kind": "build", "n": 4}),
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        s.fires("bus", "jobs").await.len(),
        6,
        "a disabled hook fired"
    );
    assert_eq!(s.put_hook("bus", "jobs", &doc).await.0, 200);
    let fires = s
        .wait_fires("bus", "jobs", 7, Duration::from_secs(10))
        .await;
    assert_eq!(fires[6]["result"], "created");
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sources_are_refused_naming_the_field() {
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    for (doc, field) in [
        (
            "[{nats: {url: '127.0.0.1:4222', stream: s}}]",
            "sources[0].nats.url",
        ),
        (
            "[{nats: {url: 'amqp://h', stream: s}}]",
            "sources[0].nats.url",
        ),
        // A user with no password: a token goes in the password's place, to be masked.
        (
            "[{nats: {url: 'nats://tok3n@h', stream: s}}]",
            "sources[0].nats.url",
        ),
        (
            "[{nats: {url: 'nats://h', stream: 'a.b'}}]",
            "sources[0].nats.stream",
        ),
        (
            "[{nats: {url: 'nats://h', stream: s, durable: 'a b'}}]",
            "sources[0].nats.durable",
        ),
        (
            "[{nats: {url: 'nats://h', stream: s, subjects: ['a.>.b']}}]",
            "sources[0].nats.subjects[0]",
        ),
        (
            "[{nats: {url: 'nats://h', stream: s, subjects: ['a', 'b..c']}}]",
            "sources[0].nats.subjects[1]",
        ),
        (
            "[{nats: {url: 'nats://h', stream: s}}, {nats: {url: 'nats://h', stream: s}}]",
            "sources[1].nats.durable",
        ),
    ] {
        let doc = format!("template: job\nsources: {doc}");
        let (st, v) = s.put_hook("bus", "bad", &doc).await;
        assert_eq!(st, 400, "{doc}: {v}");
        assert_eq!(v["field"], field, "{doc}: {v}");
    }
    let (st, v) = s
        .put_hook(
            "bus",
            "bad",
            "template: job\nsources: [{nats: {url: 'nats://h', stream: s, from: start}}]",
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(s.get("/api/v1/hooks/bus/bad").await.0, 404);
    // Two sources on one stream with durable names of their own are fine.
    let (st, v) = s
        .put_hook(
            "bus",
            "two",
            "template: job\nenabled: false\nsources: [{nats: {url: 'nats://h', stream: s, durable: a}}, {nats: {url: 'nats://h', stream: s, durable: b}}]",
        )
        .await;
    assert_eq!(st, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_shows_on_the_status() {
    let Some((url, js)) = nats().await else {
        return;
    };
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let stream = name();
    assert_eq!(
        s.put_hook("bus", "jobs", &hook(&url, &stream, "")).await.0,
        201
    );
    let status = s
        .wait_source("bus", "jobs", 0, Duration::from_secs(10), |v| {
            v["connected"] == false && v["last_error"].is_string()
        })
        .await;
    let error = status["last_error"].as_str().unwrap();
    assert!(
        error.contains(&stream) && error.contains("does not exist"),
        "{error}"
    );
    // Not created by taskhook.
    assert!(js.get_stream(&stream).await.is_err());
    // Created by its owner, it is picked up at the next attempt (the pauses grow from 1 s).
    create_stream(&js, &stream).await;
    publish(
        &js,
        &format!("{stream}.a"),
        json!({"kind": "build", "n": 1}),
        None,
    )
    .await;
    s.wait_created("bus", "jobs", 1, Duration::from_secs(20))
        .await;
    // Deleted and created again under its name, the stream starts its sequence over: its
    // first message is a new event, not a duplicate of the old stream's first.
    js.delete_stream(&stream).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    create_stream(&js, &stream).await;
    publish(
        &js,
        &format!("{stream}.a"),
        json!({"kind": "build", "n": 2}),
        None,
    )
    .await;
    let fires = s
        .wait_created("bus", "jobs", 2, Duration::from_secs(30))
        .await;
    assert!(
        fires.iter().all(|f| f["result"] != "duplicate"),
        "{fires:#?}"
    );

    // tls:// to a server without TLS: a TLS failure on the status (the process has its one
    // rustls crypto provider), not a crash.
    let tls = url.replacen("nats://", "tls://", 1);
    assert_eq!(
        s.put_hook("bus", "jobs", &hook(&tls, &stream, "")).await.0,
        200
    );
    s.wait_source("bus", "jobs", 0, Duration::from_secs(15), |v| {
        v["connected"] == false
            && v["last_error"]
                .as_str()
                .is_some_and(|e| e.starts_with("connecting"))
    })
    .await;
    assert_eq!(s.get("/api/v1/hooks/bus/jobs").await.0, 200);
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_tokens_are_masked_and_a_refused_login_shows_on_the_status() {
    let password = "s3cret-pw";
    let Some(server) = PrivateNats::start(&["--user", "app", "--pass", password]).await else {
        return;
    };
    let client = async_nats::ConnectOptions::with_user_and_password("app".into(), password.into())
        .connect(server.address())
        .await
        .unwrap();
    let js = jetstream::new(client);
    let stream = name();
    create_stream(&js, &stream).await;
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);

    let with_password = format!("nats://app:{password}@{}", server.address());
    // Sending the masked document back keeps the password.
    support::put_masked_round_trip(&s, "nats", &with_password, password, |url| {
        hook(url, &stream, ", max_in_flight: 10")
    })
    .await;
    s.wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    publish(
        &js,
        &format!("{stream}.a"),
        json!({"kind": "build", "n": 1}),
        None,
    )
    .await;
    s.wait_created("bus", "jobs", 1, Duration::from_secs(10))
        .await;

    // A wrong password: not connected, and the reason is on the status.
    let wrong = format!("nats://app:wrong@{}", server.address());
    assert_eq!(
        s.put_hook("bus", "jobs", &hook(&wrong, &stream, ""))
            .await
            .0,
        200
    );
    let status = s
        .wait_source("bus", "jobs", 0, Duration::from_secs(10), |v| {
            v["connected"] == false && v["last_error"].is_string()
        })
        .await;
    let error = status["last_error"].as_str().unwrap().to_lowercase();
    assert!(error.contains("authorization"), "{error}");

    // The password from a named secret.
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/secrets/nats_pw",
            Some((&json!({"value": password}).to_string(), "application/json")),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let user_only = format!("nats://app@{}", server.address());
    assert_eq!(
        s.put_hook(
            "bus",
            "jobs",
            &hook(&user_only, &stream, ", password_secret: nats_pw")
        )
        .await
        .0,
        200
    );
    s.wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    publish(
        &js,
        &format!("{stream}.a"),
        json!({"kind": "build", "n": 2}),
        None,
    )
    .await;
    s.wait_created("bus", "jobs", 2, Duration::from_secs(10))
        .await;

    // A token: the password with no user, masked the same way; here from a secret.
    let token = "t0ken-value";
    let Some(tokened) = PrivateNats::start(&["--auth", token]).await else {
        return;
    };
    let client = async_nats::ConnectOptions::with_token(token.into())
        .connect(tokened.address())
        .await
        .unwrap();
    let js = jetstream::new(client);
    // Another stream name: a stream's sequence numbers start over, and delivery ids are
    // `nats:<stream>:<sequence>`.
    let stream = name();
    create_stream(&js, &stream).await;
    let shown_token = format!("nats://:{token}@{}", tokened.address());
    let (st, v) = s
        .put_hook("bus", "jobs", &hook(&shown_token, &stream, ""))
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(!v.to_string().contains(token), "{v}");
    s.req(
        reqwest::Method::PUT,
        "/api/v1/secrets/nats_token",
        Some((&json!({"value": token}).to_string(), "application/json")),
    )
    .await;
    let bare = format!("nats://{}", tokened.address());
    assert_eq!(
        s.put_hook(
            "bus",
            "jobs",
            &hook(&bare, &stream, ", password_secret: nats_token")
        )
        .await
        .0,
        200
    );
    s.wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    publish(
        &js,
        &format!("{stream}.a"),
        json!({"kind": "build", "n": 3}),
        None,
    )
    .await;
    s.wait_created("bus", "jobs", 3, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_stream_loses_nothing() {
    let Some(mut server) = PrivateNats::start(&[]).await else {
        return;
    };
    let url = format!("nats://{}", server.address());
    let stream = name();
    {
        let client = async_nats::connect(server.address()).await.unwrap();
        create_stream(&jetstream::new(client), &stream).await;
    }
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    assert_eq!(
        s.put_hook("bus", "jobs", &hook(&url, &stream, ", max_in_flight: 8"))
            .await
            .0,
        201
    );
    s.wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    let n = 300;
    let mut sent = 0;
    for round in 0..3 {
        // A third of the messages, then the server goes down while they are being fired.
        let client = async_nats::connect(server.address()).await.unwrap();
        let js = jetstream::new(client);
        while sent < n * (round + 1) / 3 {
            publish(
                &js,
                &format!("{stream}.m"),
                json!({"kind": "build", "n": sent}),
                Some(&format!("m-{sent}")),
            )
            .await;
            sent += 1;
        }
        drop(js);
        s.wait_fires("bus", "jobs", sent - n / 3 + 1, Duration::from_secs(30))
            .await;
        server.restart(Duration::from_millis(300)).await;
    }
    let fires = s
        .wait_created("bus", "jobs", n, Duration::from_secs(120))
        .await;
    support::assert_once_each(&fires, &format!("nats:{stream}:"), n);
    let status = s
        .wait_connected("bus", "jobs", Duration::from_secs(30))
        .await;
    assert!(status["last_error"].is_string(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_repeats_nothing() {
    let Some((url, js)) = nats().await else {
        return;
    };
    let dir = fresh_dir();
    let mut s = Server::start_in(dir.clone(), &[]);
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let stream = name();
    create_stream(&js, &stream).await;
    assert_eq!(
        s.put_hook("bus", "jobs", &hook(&url, &stream, ", max_in_flight: 32"))
            .await
            .0,
        201
    );
    s.wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    let n = 400;
    for i in 0..n {
        publish(
            &js,
            &format!("{stream}.m"),
            json!({"kind": "build", "n": i}),
            None,
        )
        .await;
        if i == n / 4 {
            // Killed while messages are arriving and being fired.
            s.wait_fires("bus", "jobs", 1, Duration::from_secs(10))
                .await;
            s.kill9();
        }
    }
    // Messages the dead process held unacknowledged come back after the ack wait (30 s).
    let s = Server::start_in(dir, &[]);
    let fires = s
        .wait_created("bus", "jobs", n, Duration::from_secs(90))
        .await;
    support::assert_once_each(&fires, &format!("nats:{stream}:"), n);
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_postgresql_fire_each_message_once() {
    let Some((url, js)) = nats().await else {
        return;
    };
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let stream = name();
    create_stream(&js, &stream).await;
    let cluster =
        support::cluster_with_hook(&db, TEMPLATE, &hook(&url, &stream, ", max_in_flight: 16"))
            .await;
    let n = 300;
    for i in 0..n {
        publish(
            &js,
            &format!("{stream}.build"),
            json!({"kind": "build", "n": i}),
            None,
        )
        .await;
    }
    support::assert_cluster_once_each(&cluster, &format!("nats:{stream}:"), n).await;
    js.delete_stream(&stream).await.unwrap();
}
