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
