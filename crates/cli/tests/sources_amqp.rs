//! A RabbitMQ queue as a hook source, against the real broker (TASKHOOK_TEST_AMQP_URL, default
//! amqp://guest:guest@127.0.0.1:5672/%2f): every message leaves one fire, is acknowledged only
//! after its fire is committed, and survives connections closed by the broker and kill -9
//! without loss or a second task. Closing connections uses `rabbitmqctl` on this machine.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};
use support::{Server, fresh_dir, service_url};

const TEMPLATE: &str = "name: job\nauto_runnable: true\ninputs: [{name: n}, {name: via}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ input.n }} {{ input.via }}'}}}\n";

struct Broker {
    url: String,
    _conn: Connection,
    channel: Channel,
}

async fn amqp() -> Option<Broker> {
    let url = service_url(
        "TASKHOOK_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
    .await?;
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    Some(Broker {
        url,
        _conn: conn,
        channel,
    })
}

fn name(what: &str) -> String {
    format!("taskhook-test-{what}-{}", uuid::Uuid::new_v4().simple())
}

impl Broker {
    async fn exchange(&self, name: &str) {
        self.channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Publishes and waits for the broker's confirmation.
    async fn publish(&self, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
        self.channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn cleanup(&self, queue: &str, exchange: Option<&str>) {
        let _ = self
            .channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
        if let Some(x) = exchange {
            let _ = self
                .channel
                .exchange_delete(x.into(), ExchangeDeleteOptions::default())
                .await;
        }
    }

    /// (ready, unacknowledged) messages of a queue.
    async fn depth(&self, queue: &str) -> (u64, u64) {
        let ready = self
            .channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count();
        let out = rabbitmqctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_unacknowledged",
        ]);
        let unacked = out
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(queue)).then(|| f.next().unwrap_or("0").parse().unwrap_or(0))
            })
            .unwrap_or(0);
        (u64::from(ready), unacked)
    }
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl (RabbitMQ's command line) must be installed beside the broker");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Closes, from the broker's side, the connections named `taskhook-<instance>`.
fn close_connections(instance: &str) -> usize {
    let out = rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ]);
    let wanted = format!("\"taskhook-{instance}\"");
    let mut closed = 0;
    for line in out.lines().filter(|l| l.contains(&wanted)) {
        let Some(pid) = line.split_whitespace().next() else {
            continue;
        };
        let done = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "closed by the test"])
            .output()
            .unwrap();
        if done.status.success() {
            closed += 1;
        }
    }
    closed
}

/// A hook starting `job` for messages whose payload has `kind: build`.
fn hook(url: &str, queue: &str, binding: &str, extra: &str) -> String {
    format!(
        r#"
template: job
filter: "event.payload.kind == 'build'"
inputs:
  n: "{{{{ event.payload.n | string }}}}"
  via: "{{{{ event.source }}}} {{{{ event.headers.app_id | default('-') }}}}"
sources:
  - amqp: {{url: "{url}", queue: {queue}{binding}{extra}}}
"#
    )
}

fn bound(exchange: &str, keys: &str) -> String {
    format!(", exchange: {exchange}, routing_keys: {keys}")
}

fn json_msg(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_fire_the_hook_once_each_and_are_acknowledged() {
    let Some(b) = amqp().await else {
        return;
    };
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let (queue, exchange) = (name("q"), name("x"));
    b.exchange(&exchange).await;
    let (st, v) = s
        .put_hook(
            "bus",
            "jobs",
            &hook(
                &b.url,
                &queue,
                &bound(&exchange, "['build.#', 'release.*']"),
                ", max_message_bytes: 1024",
            ),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let status = s
        .wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    assert_eq!(status["kind"], "amqp");
    assert!(
        status["subscription"].as_str().unwrap().contains(&exchange),
        "{status}"
    );

    // Three builds, one message the filter refuses (all four match the binding), and one the
    // binding keeps out of the queue.
    let app = BasicProperties::default().with_app_id("ci".into());
    for (i, key) in [(1, "build.eu.done"), (2, "release.v1"), (3, "build.us")] {
        b.publish(
            &exchange,
            key,
            &json_msg(json!({"kind": "build", "n": i})),
            app.clone(),
        )
        .await;
        if i == 2 {
            b.publish(
                &exchange,
                "build.eu.done",
                &json_msg(json!({"kind": "other"})),
                BasicProperties::default(),
            )
            .await;
        }
    }
    b.publish(
        &exchange,
        "deploy.eu",
        &json_msg(json!({"kind": "build", "n": 99})),
        BasicProperties::default(),
    )
    .await;
    let fires = s
        .wait_fires("bus", "jobs", 4, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fires_now = s.fires("bus", "jobs").await;
    assert_eq!(fires_now.len(), 4, "{fires:#?}");
    assert_eq!(support::created(&fires).len(), 3, "{fires:#?}");
    assert_eq!(
        fires.iter().filter(|f| f["result"] == "filtered").count(),
        1
    );
    for f in &fires {
        assert_eq!(f["fired_by"], "amqp");
        assert!(
            f["delivery_id"]
                .as_str()
                .unwrap()
                .starts_with(&format!("amqp:{queue}:sha256:")),
            "{f}"
        );
    }
    let mut outputs = BTreeSet::new();
    for f in support::created(&fires) {
        let t = s
            .wait_state(f["task_id"].as_str().unwrap(), &["DONE"])
            .await;
        outputs.insert(t["steps"]["a"]["output"].as_str().unwrap().to_string());
    }
    // event.source is the routing key, event.headers carries the properties.
    let expected: BTreeSet<String> = ["1 build.eu.done ci", "2 release.v1 ci", "3 build.us ci"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(outputs, expected);

    // A message_id is the delivery id: the same id published again is a duplicate.
    let once = BasicProperties::default().with_message_id("build-42".into());
    for _ in 0..2 {
        b.publish(
            &exchange,
            "build.eu",
            &json_msg(json!({"kind": "build", "n": 42})),
            once.clone(),
        )
        .await;
    }
    let fires = s
        .wait_fires("bus", "jobs", 6, Duration::from_secs(10))
        .await;
    assert_eq!(fires[4]["result"], "created", "{fires:#?}");
    assert_eq!(fires[4]["delivery_id"], format!("amqp:{queue}:build-42"));
    assert_eq!(fires[5]["result"], "duplicate", "{fires:#?}");
    assert_eq!(fires[5]["task_id"], fires[4]["task_id"]);

    // Text that is not JSON is a string payload (the filter then fails on it: an error fire
    // with the payload); a message over max_message_bytes is a fire `error` saying why. Both
    // are acknowledged.
    b.publish(
        &exchange,
        "build.x",
        b"plain text",
        BasicProperties::default(),
    )
    .await;
    b.publish(
        &exchange,
        "build.x",
        "x".repeat(2000).as_bytes(),
        BasicProperties::default(),
    )
    .await;
    let fires = s
        .wait_fires("bus", "jobs", 8, Duration::from_secs(10))
        .await;
    assert_eq!(fires[6]["result"], "error");
    assert!(
        fires[6]["error"].as_str().unwrap().contains("filter"),
        "{}",
        fires[6]
    );
    assert_eq!(fires[6]["payload"], "plain text");
    assert_eq!(fires[7]["result"], "error");
    assert!(
        fires[7]["error"]
            .as_str()
            .unwrap()
            .contains("max_message_bytes"),
        "{}",
        fires[7]
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let depth = b.depth(&queue).await;
        if depth == (0, 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "messages left in the queue: {depth:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = s
        .wait_source("bus", "jobs", 0, Duration::from_secs(10), |v| v["lag"] == 0)
        .await;
    assert_eq!(status["received"], 8, "{status:?}");
    assert_eq!(status["fired"], 8, "{status:?}");

    // A disabled hook consumes nothing (its queue keeps the messages); enabled again, it
    // takes what came meanwhile.
    let doc = hook(
        &b.url,
        &queue,
        &bound(&exchange, "['build.#', 'release.*']"),
        "",
    );
    let off = format!("{doc}enabled: false\n");
    assert_eq!(s.put_hook("bus", "jobs", &off).await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.publish(
        &exchange,
        "build.eu",
        &json_msg(json!({"kind": "build", "n": 5})),
        BasicProperties::default(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        s.fires("bus", "jobs").await.len(),
        8,
        "a disabled hook fired"
    );
    assert_eq!(b.depth(&queue).await, (1, 0));
    assert_eq!(s.put_hook("bus", "jobs", &doc).await.0, 200);
    let fires = s
        .wait_fires("bus", "jobs", 9, Duration::from_secs(10))
        .await;
    assert_eq!(fires[8]["result"], "created");
    b.cleanup(&queue, Some(&exchange)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sources_are_refused_naming_the_field() {
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    for (doc, field) in [
        ("{url: '127.0.0.1:5672', queue: q}", "sources[0].amqp.url"),
        ("{url: 'redis://h', queue: q}", "sources[0].amqp.url"),
        ("{url: 'amqp://h', queue: ''}", "sources[0].amqp.queue"),
        (
            "{url: 'amqp://h', queue: amq.gen-1}",
            "sources[0].amqp.queue",
        ),
        (
            "{url: 'amqp://h', queue: q, routing_keys: ['a.#']}",
            "sources[0].amqp.routing_keys",
        ),
        (
            "{url: 'amqp://h', queue: q, exchange: x, routing_keys: []}",
            "sources[0].amqp.routing_keys",
        ),
        (
            "{url: 'amqp://h', queue: q, max_in_flight: 10001}",
            "sources[0].amqp.max_in_flight",
        ),
    ] {
        let doc = format!("template: job\nsources: [{{amqp: {doc}}}]");
        let (st, v) = s.put_hook("bus", "bad", &doc).await;
        assert_eq!(st, 400, "{doc}: {v}");
        assert_eq!(v["field"], field, "{doc}: {v}");
    }
    let (st, v) = s
        .put_hook(
            "bus",
            "bad",
            "template: job\nsources: [{amqp: {url: 'amqp://h', queue: q, routing_key: x}}]",
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("routing_key"), "{v}");
    assert_eq!(s.get("/api/v1/hooks/bus/bad").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_masked_and_a_missing_exchange_or_refused_login_shows_on_the_status() {
    let Some(b) = amqp().await else {
        return;
    };
    let parsed = reqwest::Url::parse(&b.url).unwrap();
    let (user, password) = (
        parsed.username().to_string(),
        parsed.password().unwrap_or("").to_string(),
    );
    assert!(!password.is_empty(), "the test URL must carry a password");
    let mut no_password = parsed.clone();
    no_password.set_password(None).unwrap();
    let no_password = no_password.to_string();
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let (queue, exchange) = (name("q"), name("x"));

    // The exchange does not exist: not created, and the reason is on the status.
    let (st, v) = s
        .put_hook(
            "bus",
            "jobs",
            &hook(&b.url, &queue, &bound(&exchange, "['#']"), ""),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let shown = v.to_string();
    assert!(!shown.contains(&format!(":{password}@")), "{shown}");
    let (_, got) = s.get("/api/v1/hooks/bus/jobs").await;
    assert!(!got.to_string().contains(&format!(":{password}@")), "{got}");
    let status = s
        .wait_source("bus", "jobs", 0, Duration::from_secs(10), |v| {
            v["connected"] == false && v["last_error"].is_string()
        })
        .await;
    let error = status["last_error"].as_str().unwrap();
    assert!(
        error.contains(&exchange) && error.contains("NOT_FOUND"),
        "{error}"
    );

    // Once the exchange exists, the masked document sent back (its password kept) connects.
    b.exchange(&exchange).await;
    let masked = got["hook"]["sources"][0]["amqp"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(masked, b.url);
    let (st, v) = s
        .put_hook(
            "bus",
            "jobs",
            &hook(
                &masked,
                &queue,
                &bound(&exchange, "['#']"),
                ", max_in_flight: 10",
            ),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    s.wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    b.publish(
        &exchange,
        "a",
        &json_msg(json!({"kind": "build", "n": 1})),
        BasicProperties::default(),
    )
    .await;
    s.wait_created("bus", "jobs", 1, Duration::from_secs(10))
        .await;

    // A wrong password: not connected, and the reason is on the status.
    let mut wrong = parsed.clone();
    wrong.set_password(Some("wrong-password")).unwrap();
    assert_eq!(
        s.put_hook(
            "bus",
            "jobs",
            &hook(wrong.as_str(), &queue, &bound(&exchange, "['#']"), "")
        )
        .await
        .0,
        200
    );
    let status = s
        .wait_source("bus", "jobs", 0, Duration::from_secs(10), |v| {
            v["connected"] == false && v["last_error"].is_string()
        })
        .await;
    let error = status["last_error"].as_str().unwrap();
    assert!(
        error.contains("ACCESS_REFUSED") || error.to_lowercase().contains("auth"),
        "{error}"
    );
    assert!(!error.contains("wrong-password"), "{error}");

    // The password from a named secret.
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/secrets/amqp_pw",
            Some((&json!({"value": password}).to_string(), "application/json")),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert!(no_password.contains(&format!("{user}@")), "{no_password}");
    assert_eq!(
        s.put_hook(
            "bus",
            "jobs",
            &hook(
                &no_password,
                &queue,
                &bound(&exchange, "['#']"),
                ", password_secret: amqp_pw"
            )
        )
        .await
        .0,
        200
    );
    s.wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    b.publish(
        &exchange,
        "a",
        &json_msg(json!({"kind": "build", "n": 2})),
        BasicProperties::default(),
    )
    .await;
    s.wait_created("bus", "jobs", 2, Duration::from_secs(10))
        .await;

    // amqps to a listener without TLS: a TLS failure on the status (the process has its one
    // rustls crypto provider), not a crash.
    let mut tls = parsed.clone();
    tls.set_scheme("amqps").unwrap();
    assert_eq!(
        s.put_hook("bus", "jobs", &hook(tls.as_str(), &queue, "", ""))
            .await
            .0,
        200
    );
    let status = s
        .wait_source("bus", "jobs", 0, Duration::from_secs(15), |v| {
            v["connected"] == false
                && v["last_error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("connecting"))
        })
        .await;
    assert!(
        !status["last_error"].as_str().unwrap().contains(&password),
        "{status}"
    );
    b.cleanup(&queue, Some(&exchange)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_the_broker_lose_nothing() {
    let Some(b) = amqp().await else {
        return;
    };
    let instance = format!("amqp-drop-{}", uuid::Uuid::new_v4().simple());
    let s = Server::start_in(fresh_dir(), &["--instance", &instance]);
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let queue = name("q");
    assert_eq!(
        s.put_hook(
            "bus",
            "jobs",
            &hook(&b.url, &queue, "", ", max_in_flight: 16")
        )
        .await
        .0,
        201
    );
    s.wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    let n = 300;
    let publisher = {
        let url = b.url.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            let conn = Connection::connect(&url, ConnectionProperties::default())
                .await
                .unwrap();
            let ch = conn.create_channel().await.unwrap();
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            // No message_id: the delivery id is the content hash, distinct per message.
            for i in 0..n {
                ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &json_msg(json!({"kind": "build", "n": i})),
                    BasicProperties::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            }
        })
    };
    let mut closed = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let instance = instance.clone();
        closed += tokio::task::spawn_blocking(move || close_connections(&instance))
            .await
            .unwrap();
    }
    publisher.await.unwrap();
    assert!(
        closed > 0,
        "no connection of this instance was found to close"
    );
    let fires = s
        .wait_created("bus", "jobs", n, Duration::from_secs(90))
        .await;
    support::assert_once_each(&fires, &format!("amqp:{queue}:"), n);
    let status = s
        .wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    assert!(status["last_error"].is_string(), "{status}");
    b.cleanup(&queue, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_repeats_nothing() {
    let Some(b) = amqp().await else {
        return;
    };
    let dir = fresh_dir();
    let mut s = Server::start_in(dir.clone(), &[]);
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let queue = name("q");
    assert_eq!(
        s.put_hook(
            "bus",
            "jobs",
            &hook(&b.url, &queue, "", ", max_in_flight: 32")
        )
        .await
        .0,
        201
    );
    s.wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    let n = 400;
    for i in 0..n {
        // Half with a message_id, half identified by their content.
        let props = if i % 2 == 0 {
            BasicProperties::default().with_message_id(format!("m-{i}").into())
        } else {
            BasicProperties::default()
        };
        b.publish(
            "",
            &queue,
            &json_msg(json!({"kind": "build", "n": i})),
            props,
        )
        .await;
        if i == n / 4 {
            // Killed while messages are arriving and being fired.
            s.wait_fires("bus", "jobs", 1, Duration::from_secs(10))
                .await;
            s.kill9();
        }
    }
    // The broker gave the dead connection's unacknowledged messages back to the queue.
    let s = Server::start_in(dir, &[]);
    let fires = s
        .wait_created("bus", "jobs", n, Duration::from_secs(60))
        .await;
    support::assert_once_each(&fires, &format!("amqp:{queue}:"), n);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while b.depth(&queue).await != (0, 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "messages left in the queue"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.cleanup(&queue, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_postgresql_fire_each_message_once() {
    let Some(b) = amqp().await else {
        return;
    };
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let queue = name("q");
    let cluster = support::cluster_with_hook(
        &db,
        TEMPLATE,
        &hook(&b.url, &queue, "", ", max_in_flight: 16"),
    )
    .await;
    let n = 300;
    for i in 0..n {
        let props = BasicProperties::default().with_message_id(format!("m{i}").into());
        b.publish(
            "",
            &queue,
            &json_msg(json!({"kind": "build", "n": i})),
            props,
        )
        .await;
    }
    support::assert_cluster_once_each(&cluster, &format!("amqp:{queue}:m"), n).await;
    b.cleanup(&queue, None).await;
}
