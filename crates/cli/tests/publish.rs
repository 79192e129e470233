//! The `publish` action against real brokers: a step ends DONE only once the broker
//! confirmed the message, and a hook's source and a step's publish chain two systems.

mod support;

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};
use support::{Server, service_url};

async fn redis() -> Option<(String, redis::aio::MultiplexedConnection)> {
    let url = service_url("TASKHOOK_TEST_REDIS_URL", "redis://127.0.0.1:6379").await?;
    let client = redis::Client::open(url.as_str()).unwrap();
    let con = client.get_multiplexed_async_connection().await.unwrap();
    Some((url, con))
}

fn name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn run(s: &Server, template: &str, inputs: Value) -> Value {
    let (st, v) = s
        .post(
            "/api/v1/tasks",
            json!({"template": template, "inputs": inputs}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    s.wait_state(v["id"].as_str().unwrap(), &["DONE", "BLOCKED"])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_publishes_to_a_redis_stream_and_a_source_carries_it_on() {
    let Some((url, mut con)) = redis().await else {
        return;
    };
    let s = Server::start();
    let (outbox, inbox) = (name("taskhook-test-out"), name("taskhook-test-in"));
    let tpl = format!(
        r#"
name: announce
auto_runnable: true
inputs: [{{name: sha}}]
steps:
  tell:
    action:
      type: publish
      configuration:
        redis: {{url: "{url}", stream: "{outbox}"}}
        body: {{sha: "{{{{ input.sha }}}}", task: "{{{{ task.id }}}}"}}
        headers: {{kind: build}}
"#
    );
    assert_eq!(s.put_template("announce", &tpl).await.0, 201);
    let t = run(&s, "announce", json!({"sha": "abc123"})).await;
    assert_eq!(t["state"], "DONE", "{t:#}");
    let out = &t["steps"]["tell"]["output"];
    assert_eq!(out["stream"], outbox.as_str());
    // The broker has the entry the step reports, with body and headers.
    let entries: redis::streams::StreamRangeReply = con.xrange_all(&outbox).await.unwrap();
    assert_eq!(entries.ids.len(), 1);
    let e = &entries.ids[0];
    assert_eq!(out["id"], e.id.as_str());
    let payload: String = e.get("payload").unwrap();
    let payload: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(payload["sha"], "abc123");
    assert_eq!(payload["task"], t["id"]);
    assert_eq!(e.get::<String>("kind").as_deref(), Some("build"));

    // A hook reading `inbox` starts `announce`, which publishes to `outbox`: one message in
    // makes one task and one message out.
    let hook = format!(
        "template: announce\ninputs: {{sha: \"{{{{ event.payload.sha }}}}\"}}\nsources:\n  - redis: {{url: \"{url}\", stream: \"{inbox}\", from: all}}\n"
    );
    assert_eq!(s.put_hook("bus", "relay", &hook).await.0, 201);
    let _: String = con
        .xadd(&inbox, "*", &[("payload", r#"{"sha": "def456"}"#)])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let entries: redis::streams::StreamRangeReply = con.xrange_all(&outbox).await.unwrap();
        if entries.ids.len() == 2 {
            let payload: String = entries.ids[1].get("payload").unwrap();
            assert!(payload.contains("def456"), "{payload}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "nothing relayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _: () = con.del(&[&outbox, &inbox]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_is_a_client_error_and_an_unreachable_broker_is_retried() {
    let Some((url, mut con)) = redis().await else {
        return;
    };
    let s = Server::start();
    // The key is a string, not a stream: Redis refuses the entry (WRONGTYPE).
    let key = name("taskhook-test-string");
    let _: () = con.set(&key, "not a stream").await.unwrap();
    let tpl = format!(
        "name: refused\nauto_runnable: true\nsteps:\n  tell:\n    action: {{type: publish, configuration: {{redis: {{url: \"{url}\", stream: \"{key}\"}}, body: x}}}}\n"
    );
    assert_eq!(s.put_template("refused", &tpl).await.0, 201);
    let t = run(&s, "refused", json!({})).await;
    assert_eq!(t["state"], "BLOCKED", "{t:#}");
    assert_eq!(t["steps"]["tell"]["state"], "CLIENT_ERROR", "{t:#}");
    assert!(
        t["steps"]["tell"]["error"]
            .as_str()
            .unwrap()
            .contains("WRONGTYPE"),
        "{t:#}"
    );

    // Nothing listens on this port: a server error, retried until max_retries is spent.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tpl = format!(
        "name: unreachable\nauto_runnable: true\nsteps:\n  tell:\n    max_retries: 1\n    retry_pattern: seconds\n    action: {{type: publish, configuration: {{redis: {{url: \"redis://127.0.0.1:{closed}\", stream: s}}, body: x}}}}\n"
    );
    assert_eq!(s.put_template("unreachable", &tpl).await.0, 201);
    let t = run(&s, "unreachable", json!({})).await;
    assert_eq!(t["state"], "BLOCKED", "{t:#}");
    let error = t["steps"]["tell"]["error"].as_str().unwrap();
    assert!(
        error.contains("gave up after 2 attempts") && error.contains("connecting"),
        "{t:#}"
    );

    // A bad configuration is refused when the template is put, naming step and field.
    let (st, v) = s
        .put_template(
            "bad",
            "name: bad\nsteps:\n  tell:\n    action: {type: publish, configuration: {redis: {url: 'redis://h'}}}\n",
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("redis.stream"), "{v}");
    let _: () = con.del(&key).await.unwrap();
}

/// A template `name` whose step `tell` publishes with `target` (YAML flow mapping, the
/// broker's key and settings), the body `{n: input.n, task: task.id}`, and `extra` keys.
fn publisher(name: &str, target: &str, extra: &str) -> String {
    format!(
        "name: {name}\nauto_runnable: true\ninputs: [{{name: n, optional: true}}]\nsteps:\n  tell:\n    max_retries: 0\n    action:\n      type: publish\n      configuration: {{{target}, body: {{n: \"{{{{ input.n }}}}\", task: \"{{{{ task.id }}}}\"}}{extra}}}\n"
    )
}

/// Puts the template and runs it to its end; the task.
async fn put_and_run(s: &Server, name: &str, template: &str) -> Value {
    let (st, v) = s.put_template(name, template).await;
    assert_eq!(st, 201, "{v}");
    run(s, name, json!({"n": "7"})).await
}

fn step_error(t: &Value) -> String {
    assert_eq!(t["state"], "BLOCKED", "{t:#}");
    assert_eq!(t["steps"]["tell"]["state"], "CLIENT_ERROR", "{t:#}");
    t["steps"]["tell"]["error"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_publishes_to_a_rabbitmq_exchange_once_confirmed() {
    use lapin::options::{
        BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    let Some(url) = service_url(
        "TASKHOOK_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
    .await
    else {
        return;
    };
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let (exchange, queue) = (name("taskhook-test-x"), name("taskhook-test-q"));
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "build.#".into(),
        QueueBindOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let s = Server::start();
    let t = put_and_run(
        &s,
        "to-rabbit",
        &publisher(
            "to-rabbit",
            &format!(
                "amqp: {{url: \"{url}\", exchange: {exchange}, routing_key: build.7.failed, message_id: \"{{{{ task.id }}}}\"}}"
            ),
            ", headers: {kind: build}",
        ),
    )
    .await;
    assert_eq!(t["state"], "DONE", "{t:#}");
    assert_eq!(
        t["steps"]["tell"]["output"]["routing_key"],
        "build.7.failed"
    );
    // The queue bound to the exchange holds the message, as the step described it.
    let got = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the confirmed message is in the queue");
    let body: Value = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(body, json!({"n": "7", "task": t["id"]}));
    let props = &got.delivery.properties;
    assert_eq!(
        props.message_id().as_ref().map(|m| m.to_string()),
        t["id"].as_str().map(String::from)
    );
    assert_eq!(props.delivery_mode(), &Some(2));
    assert_eq!(
        props
            .content_type()
            .as_ref()
            .map(|c| c.to_string())
            .as_deref(),
        Some("application/json")
    );
    let headers = props.headers().as_ref().unwrap();
    match headers.inner().get("kind") {
        Some(lapin::types::AMQPValue::LongString(v)) => assert_eq!(v.as_bytes(), b"build"),
        other => panic!("header kind: {other:?}"),
    }

    // A routing key no queue is bound for: the broker returns the message, the step says so.
    let e = step_error(
        &put_and_run(
            &s,
            "unroutable",
            &publisher(
                "unroutable",
                &format!("amqp: {{url: \"{url}\", exchange: {exchange}, routing_key: deploy.1}}"),
                "",
            ),
        )
        .await,
    );
    assert!(e.contains("no queue receives"), "{e}");
    // With mandatory: false the broker confirms it and drops it: that is what was asked.
    let t = put_and_run(
        &s,
        "droppable",
        &publisher(
            "droppable",
            &format!(
                "amqp: {{url: \"{url}\", exchange: {exchange}, routing_key: deploy.1, mandatory: false}}"
            ),
            "",
        ),
    )
    .await;
    assert_eq!(t["state"], "DONE", "{t:#}");
    // An exchange that does not exist: refused by the broker (404), not retried.
    let e = step_error(
        &put_and_run(
            &s,
            "no-exchange",
            &publisher(
                "no-exchange",
                &format!("amqp: {{url: \"{url}\", exchange: {exchange}-missing, routing_key: a}}"),
                "",
            ),
        )
        .await,
    );
    assert!(e.contains("NOT_FOUND") || e.contains("404"), "{e}");
    // A wrong password is refused, and the step is not retried.
    let wrong = url.replacen("guest:guest@", "guest:wrong@", 1);
    let e = step_error(
        &put_and_run(
            &s,
            "wrong-password",
            &publisher(
                "wrong-password",
                &format!("amqp: {{url: \"{wrong}\", routing_key: {queue}}}"),
                "",
            ),
        )
        .await,
    );
    assert!(e.contains("connecting"), "{e}");
    // A bad configuration is refused when the template is put, naming the field.
    let (st, v) = s
        .put_template(
            "bad-amqp",
            &publisher("bad-amqp", "amqp: {url: \"http://h\", routing_key: a}", ""),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("amqp.url"), "{v}");
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_publishes_to_a_jetstream_stream_or_a_plain_nats_subject() {
    use futures_util::StreamExt;
    let Some(url) = service_url("TASKHOOK_TEST_NATS_URL", "nats://127.0.0.1:4222").await else {
        return;
    };
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let stream_name = name("TASKHOOK_TEST").replace('-', "_");
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{stream_name}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    let s = Server::start();
    let t = put_and_run(
        &s,
        "to-nats",
        &publisher(
            "to-nats",
            &format!("nats: {{url: \"{url}\", subject: {stream_name}.orders}}"),
            ", headers: {Nats-Msg-Id: \"{{ task.id }}\", App: ci}",
        ),
    )
    .await;
    assert_eq!(t["state"], "DONE", "{t:#}");
    let out = &t["steps"]["tell"]["output"];
    assert_eq!(out["stream"], stream_name.as_str());
    assert_eq!(out["duplicate"], false);
    let m = stream
        .get_raw_message(out["sequence"].as_u64().unwrap())
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body["task"], t["id"]);
    assert_eq!(m.headers.get("App").map(|v| v.as_str()), Some("ci"));

    // A subject no stream captures: nowhere to store it, a client error.
    let e = step_error(
        &put_and_run(
            &s,
            "uncaptured",
            &publisher(
                "uncaptured",
                &format!("nats: {{url: \"{url}\", subject: nowhere.{stream_name}}}"),
                "",
            ),
        )
        .await,
    );
    assert!(e.contains("no JetStream stream captures"), "{e}");
    // A plain subject: a subscriber gets it.
    let subject = format!("plain.{stream_name}");
    let mut sub = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let t = put_and_run(
        &s,
        "plain",
        &publisher(
            "plain",
            &format!("nats: {{url: \"{url}\", subject: {subject}, jetstream: false}}"),
            "",
        ),
    )
    .await;
    assert_eq!(t["state"], "DONE", "{t:#}");
    let got = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&got.payload).contains(t["id"].as_str().unwrap()));
    // A header name NATS cannot carry is refused, not a crash.
    let e = step_error(
        &put_and_run(
            &s,
            "bad-header",
            &publisher(
                "bad-header",
                &format!("nats: {{url: \"{url}\", subject: {stream_name}.x}}"),
                ", headers: {\"a:b\": c}",
            ),
        )
        .await,
    );
    assert!(e.contains("headers.a:b"), "{e}");
    js.delete_stream(&stream_name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_publishes_to_an_mqtt_topic_once_acknowledged() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let Some(url) = service_url("TASKHOOK_TEST_MQTT_URL", "mqtt://127.0.0.1:1883").await else {
        return;
    };
    let parsed = reqwest::Url::parse(&url).unwrap();
    let topic = format!("taskhook-test/{}", uuid::Uuid::new_v4().simple());
    let mut o = MqttOptions::new(
        name("taskhook-test-sub"),
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(1883),
    );
    o.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(o, 10);
    client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let poll = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(None);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Some(p));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    assert!(rx.recv().await.unwrap().is_none(), "subscribed first");
    let s = Server::start();
    for qos in [0, 1, 2] {
        let tpl = format!("mq{qos}");
        let t = put_and_run(
            &s,
            &tpl,
            &publisher(
                &tpl,
                &format!("mqtt: {{url: \"{url}\", topic: \"{topic}\", qos: {qos}}}"),
                "",
            ),
        )
        .await;
        assert_eq!(t["state"], "DONE", "{t:#}");
        assert_eq!(t["steps"]["tell"]["output"]["qos"], qos);
        let p = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(p.topic, topic);
        let body: Value = serde_json::from_slice(&p.payload).unwrap();
        assert_eq!(body["task"], t["id"]);
    }
    // MQTT 3.1.1 has no headers: asking for some is refused rather than silently dropped.
    let e = step_error(
        &put_and_run(
            &s,
            "mq-headers",
            &publisher(
                "mq-headers",
                &format!("mqtt: {{url: \"{url}\", topic: \"{topic}\"}}"),
                ", headers: {a: b}",
            ),
        )
        .await,
    );
    assert!(e.contains("no headers"), "{e}");
    // A wildcard topic is refused when the template is put.
    let (st, v) = s
        .put_template(
            "mq-wild",
            &publisher(
                "mq-wild",
                &format!("mqtt: {{url: \"{url}\", topic: \"a/+\"}}"),
                "",
            ),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("mqtt.topic"), "{v}");
    poll.abort();
}
