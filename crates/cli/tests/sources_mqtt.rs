//! An MQTT topic as a hook source, against the real broker (TASKHOOK_TEST_MQTT_URL, default
//! mqtt://127.0.0.1:1883, anonymous): every QoS 1 message leaves one fire, is acknowledged only
//! after its fire is committed, and survives a session taken over mid-stream and kill -9
//! without loss or a second task.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use support::{Server, fresh_dir, service_url};

const TEMPLATE: &str = "name: job\nauto_runnable: true\ninputs: [{name: n}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ input.n }}'}}}\n";

async fn broker() -> Option<String> {
    service_url("TASKHOOK_TEST_MQTT_URL", "mqtt://127.0.0.1:1883").await
}

fn host_port(url: &str) -> (String, u16) {
    let u = reqwest::Url::parse(url).unwrap();
    (u.host_str().unwrap().to_string(), u.port().unwrap_or(1883))
}

/// A unique topic prefix for one test.
fn base() -> String {
    format!("taskhook-test/{}", uuid::Uuid::new_v4().simple())
}

/// A hook starting `job` for messages under `base` whose payload has `kind: build`.
fn hook(url: &str, base: &str, extra: &str) -> String {
    format!(
        r#"
template: job
filter: "event.payload.kind == 'build'"
inputs: {{n: "{{{{ event.payload.n | string }}}}"}}
sources:
  - mqtt: {{url: "{url}", topic: "{base}/+"{extra}}}
"#
    )
}

/// A test client publishing with QoS 1; counts the broker's PUBACKs.
struct Publisher {
    client: AsyncClient,
    acked: Arc<AtomicUsize>,
}

async fn publisher(url: &str) -> Publisher {
    let (host, port) = host_port(url);
    let id = format!("taskhook-test-pub-{}", uuid::Uuid::new_v4().simple());
    let mut o = MqttOptions::new(id, host, port);
    o.set_max_packet_size(1 << 20, 1 << 20).set_inflight(100);
    let (client, mut events) = AsyncClient::new(o, 1000);
    let acked = Arc::new(AtomicUsize::new(0));
    let a = acked.clone();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    a.fetch_add(1, Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    Publisher { client, acked }
}

impl Publisher {
    async fn send(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }

    /// Waits until the broker acknowledged `n` messages.
    async fn flushed(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.acked.load(Ordering::SeqCst) < n {
            assert!(std::time::Instant::now() < deadline, "publishes not acked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_fire_the_hook_once_each_and_are_acknowledged() {
    let Some(url) = broker().await else {
        return;
    };
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let base = base();
    // The input also shows the topic (event.source) and a header.
    let doc = hook(&url, &base, ", max_message_bytes: 1024").replace(
        "event.payload.n | string }}",
        "event.payload.n | string }} {{ event.source }} {{ event.headers.mqtt_qos }}",
    );
    let (st, v) = s.put_hook("bus", "jobs", &doc).await;
    assert_eq!(st, 201, "{v}");
    let status = s
        .wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    assert_eq!(status["kind"], "mqtt");
    let p = publisher(&url).await;
    for i in 1..=3 {
        p.send(
            &format!("{base}/a"),
            &json!({"kind": "build", "n": i}).to_string(),
        )
        .await;
        if i == 2 {
            p.send(&format!("{base}/b"), r#"{"kind": "other"}"#).await;
        }
    }
    // Not under the filter: never seen.
    p.send(&format!("{base}/a/deeper"), r#"{"kind": "build", "n": 9}"#)
        .await;
    let fires = s
        .wait_fires("bus", "jobs", 4, Duration::from_secs(10))
        .await;
    assert_eq!(fires.len(), 4, "{fires:#?}");
    assert_eq!(support::created(&fires).len(), 3, "{fires:#?}");
    assert_eq!(
        fires.iter().filter(|f| f["result"] == "filtered").count(),
        1
    );
    for f in &fires {
        assert_eq!(f["fired_by"], "mqtt");
    }
    for f in support::created(&fires) {
        let t = s
            .wait_state(f["task_id"].as_str().unwrap(), &["DONE"])
            .await;
        let out = t["steps"]["a"]["output"].as_str().unwrap().to_string();
        let n = out.split(' ').next().unwrap();
        assert!(["1", "2", "3"].contains(&n), "{out}");
        assert!(out.ends_with(&format!(" {base}/a 1")), "{out}");
    }

    // Text that is not JSON is a string payload; a message over max_message_bytes is a fire
    // `error` saying why. Both are acknowledged.
    p.send(&format!("{base}/a"), "plain text").await;
    p.send(&format!("{base}/a"), &"x".repeat(2000)).await;
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
    let status = s
        .wait_source("bus", "jobs", 0, Duration::from_secs(10), |v| {
            v["fired"] == 6
        })
        .await;
    assert_eq!(status["received"], 6, "{status:?}");

    // Disabled, the subscription disconnects; the session keeps what is published meanwhile,
    // and nothing acknowledged comes back: enabled again, exactly the one new message fires.
    let off = format!("{}enabled: false\n", hook(&url, &base, ""));
    assert_eq!(s.put_hook("bus", "jobs", &off).await.0, 200);
    s.wait_source("bus", "jobs", 0, Duration::from_secs(10), |v| {
        v["running_here"] == false
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.send(&format!("{base}/a"), r#"{"kind": "build", "n": 4}"#)
        .await;
    p.flushed(8).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        s.fires("bus", "jobs").await.len(),
        6,
        "a disabled hook fired"
    );
    // Same topic (so the same session), back on.
    assert_eq!(
        s.put_hook(
            "bus",
            "jobs",
            &hook(&url, &base, ", max_message_bytes: 1024")
        )
        .await
        .0,
        200
    );
    let fires = s
        .wait_fires("bus", "jobs", 7, Duration::from_secs(10))
        .await;
    assert_eq!(fires[6]["result"], "created");
    assert_eq!(fires[6]["payload"]["n"], 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        s.fires("bus", "jobs").await.len(),
        7,
        "an acknowledged message came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mqtt_sources_are_refused_naming_the_field() {
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    for (doc, field) in [
        (
            "template: job\nsources: [{mqtt: {url: 'amqp://h', topic: t}}]",
            "sources[0].mqtt.url",
        ),
        (
            "template: job\nsources: [{mqtt: {url: 'mqtt://h', topic: 'a/#/b'}}]",
            "sources[0].mqtt.topic",
        ),
        (
            "template: job\nsources: [{mqtt: {url: 'mqtt://h', topic: t, qos: 2}}]",
            "sources[0].mqtt.qos",
        ),
    ] {
        let (st, v) = s.put_hook("bus", "bad", doc).await;
        assert_eq!(st, 400, "{doc}: {v}");
        assert_eq!(v["field"], field, "{doc}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_shows_on_the_status() {
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("mqtt://u:pw-not-shown@127.0.0.1:{port}");
    assert_eq!(
        s.put_hook("bus", "jobs", &hook(&url, &base(), "")).await.0,
        201
    );
    let status = s
        .wait_source("bus", "jobs", 0, Duration::from_secs(10), |v| {
            v["connected"] == false && v["last_error"].is_string()
        })
        .await;
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(!status.to_string().contains("pw-not-shown"), "{status}");
}

/// Connects as `client_id` (taking the session over: the broker drops the connection that had
/// it), receives for a moment without acknowledging anything, and goes away.
async fn take_session(url: &str, client_id: &str) -> usize {
    let (host, port) = host_port(url);
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_clean_session(false).set_manual_acks(true);
    let (client, mut events) = AsyncClient::new(o, 10);
    let mut seen = 0;
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => seen += 1,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    // Closed without a DISCONNECT, as a crash would.
    drop(client);
    drop(events);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_taken_over_mid_stream_loses_nothing() {
    let Some(url) = broker().await else {
        return;
    };
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let base = base();
    let client_id = format!("taskhook-test-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(
        s.put_hook(
            "bus",
            "jobs",
            &hook(
                &url,
                &base,
                &format!(", client_id: {client_id}, max_in_flight: 16")
            )
        )
        .await
        .0,
        201
    );
    s.wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    let n = 300;
    let p = publisher(&url).await;
    let topic = format!("{base}/a");
    let sending = {
        let client = p.client.clone();
        tokio::spawn(async move {
            for i in 0..n {
                client
                    .publish(
                        &topic,
                        QoS::AtLeastOnce,
                        false,
                        json!({"kind": "build", "n": i}).to_string(),
                    )
                    .await
                    .unwrap();
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };
    let mut stolen = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stolen += take_session(&url, &client_id).await;
    }
    sending.await.unwrap();
    p.flushed(n).await;
    eprintln!("{stolen} deliveries went to the client that took the session");
    let fires = s
        .wait_created("bus", "jobs", n, Duration::from_secs(60))
        .await;
    support::assert_once_each(&fires, "mqtt:", n);
    let status = s
        .wait_connected("bus", "jobs", Duration::from_secs(20))
        .await;
    assert!(status["last_error"].is_string(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_repeats_nothing() {
    let Some(url) = broker().await else {
        return;
    };
    let dir = fresh_dir();
    let mut s = Server::start_in(dir.clone(), &[]);
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let base = base();
    // The default client id: the same after the restart, so the session (and what it holds)
    // is taken up again.
    assert_eq!(
        s.put_hook("bus", "jobs", &hook(&url, &base, ", max_in_flight: 32"))
            .await
            .0,
        201
    );
    s.wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    let n = 400;
    let p = publisher(&url).await;
    for i in 0..n {
        p.send(
            &format!("{base}/a"),
            &json!({"kind": "build", "n": i}).to_string(),
        )
        .await;
        if i == n / 4 {
            // Killed while messages are arriving and being fired.
            s.wait_fires("bus", "jobs", 1, Duration::from_secs(10))
                .await;
            s.kill9();
        }
    }
    p.flushed(n).await;
    let s = Server::start_in(dir, &[]);
    let fires = s
        .wait_created("bus", "jobs", n, Duration::from_secs(60))
        .await;
    support::assert_once_each(&fires, "mqtt:", n);
    let _ = p.client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_postgresql_share_a_topic_and_fire_each_message_once() {
    let Some(url) = broker().await else {
        return;
    };
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let base = base();
    let group = format!("g{}", uuid::Uuid::new_v4().simple());
    let cluster = support::cluster_with_hook(
        &db,
        TEMPLATE,
        &hook(&url, &base, &format!(", shared_group: {group}")),
    )
    .await;
    let p = publisher(&url).await;
    let n = 300;
    for i in 0..n {
        p.send(
            &format!("{base}/x"),
            &json!({"kind": "build", "n": i}).to_string(),
        )
        .await;
    }
    p.flushed(n).await;
    support::assert_cluster_once_each(&cluster, &format!("mqtt:{base}/x:"), n).await;
}
