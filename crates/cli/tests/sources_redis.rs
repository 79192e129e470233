//! A Redis stream as a hook source, against the real Redis (TASKHOOK_TEST_REDIS_URL, default
//! redis://127.0.0.1:6379): every entry leaves one fire, is acknowledged only after its fire is
//! committed, and survives dropped connections and kill -9 without loss or a second task.

mod support;

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;
use support::{Server, fresh_dir, service_url};

const TEMPLATE: &str = "name: job\nauto_runnable: true\ninputs: [{name: n}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ input.n }}'}}}\n";

async fn redis() -> Option<(String, redis::aio::MultiplexedConnection)> {
    let url = service_url("TASKHOOK_TEST_REDIS_URL", "redis://127.0.0.1:6379").await?;
    let client = redis::Client::open(url.as_str()).unwrap();
    let con = client.get_multiplexed_async_connection().await.unwrap();
    Some((url, con))
}

fn stream() -> String {
    format!("taskhook-test-{}", uuid::Uuid::new_v4().simple())
}

/// A hook starting `job` for entries whose payload has `kind: build`.
fn hook(url: &str, stream: &str, extra: &str) -> String {
    format!(
        r#"
template: job
filter: "event.payload.kind == 'build'"
inputs: {{n: "{{{{ event.payload.n | string }}}}"}}
sources:
  - redis: {{url: "{url}", stream: {stream}, from: all{extra}}}
"#
    )
}

async fn add(con: &mut redis::aio::MultiplexedConnection, stream: &str, payload: &str) -> String {
    con.xadd(stream, "*", &[("payload", payload)])
        .await
        .unwrap()
}

async fn pending(con: &mut redis::aio::MultiplexedConnection, stream: &str) -> usize {
    let info: redis::streams::StreamInfoGroupsReply = con.xinfo_groups(stream).await.unwrap();
    info.groups.iter().map(|g| g.pending).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_fire_the_hook_once_each_and_are_acknowledged() {
    let Some((url, mut con)) = redis().await else {
        return;
    };
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let stream = stream();
    let (st, v) = s
        .put_hook(
            "bus",
            "jobs",
            &hook(&url, &stream, ", max_message_bytes: 1024"),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let status = s
        .wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    assert_eq!(status["kind"], "redis");
    assert!(status["running_here"] == true, "{status}");

    for i in 1..=3 {
        add(
            &mut con,
            &stream,
            &json!({"kind": "build", "n": i}).to_string(),
        )
        .await;
        if i == 2 {
            add(&mut con, &stream, r#"{"kind": "other"}"#).await;
        }
    }
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
        assert_eq!(f["fired_by"], "redis");
    }
    for f in support::created(&fires) {
        let t = s
            .wait_state(f["task_id"].as_str().unwrap(), &["DONE"])
            .await;
        assert!(["1", "2", "3"].contains(&t["steps"]["a"]["output"].as_str().unwrap()));
    }
    // The CLI shows the subscription's state too.
    let (code, out, err) = support::taskhook(Some(&s), &["hook", "status", "bus/jobs"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("[0] redis stream {stream}"))
            && out.contains(": connected since ")
            && out.contains("received 4, fired 4")
            && out.contains(&format!("last delivery redis:{stream}:")),
        "{out}"
    );

    // Text that is not JSON is a string payload; an entry over max_message_bytes is a fire
    // `error` saying why. Both are acknowledged.
    add(&mut con, &stream, "plain text").await;
    add(&mut con, &stream, &"x".repeat(2000)).await;
    let fires = s
        .wait_fires("bus", "jobs", 6, Duration::from_secs(10))
        .await;
    // The filter reads `kind` of a text payload: an error the ledger shows with the payload.
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
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pending(&mut con, &stream).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "entries left unacknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = s
        .wait_source("bus", "jobs", 0, Duration::from_secs(10), |v| v["lag"] == 0)
        .await;
    assert_eq!(status["received"], 6, "{status:?}");
    assert_eq!(status["fired"], 6, "{status:?}");
    assert!(
        status["last_delivery_id"]
            .as_str()
            .unwrap()
            .starts_with("redis:")
    );

    // A disabled hook consumes nothing; enabled again, it takes what came meanwhile.
    let off = format!("{}enabled: false\n", hook(&url, &stream, ""));
    assert_eq!(s.put_hook("bus", "jobs", &off).await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    add(&mut con, &stream, r#"{"kind": "build", "n": 4}"#).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        s.fires("bus", "jobs").await.len(),
        6,
        "a disabled hook fired"
    );
    assert_eq!(
        s.put_hook("bus", "jobs", &hook(&url, &stream, "")).await.0,
        200
    );
    let fires = s
        .wait_fires("bus", "jobs", 7, Duration::from_secs(10))
        .await;
    assert_eq!(fires[6]["result"], "created");
    let _: () = con.del(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sources_are_refused_naming_the_field() {
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    for (doc, field) in [
        (
            "template: job\nsources: [{redis: {url: '127.0.0.1:6379', stream: s}}]",
            "sources[0].redis.url",
        ),
        (
            "template: job\nsources: [{redis: {url: 'amqp://h', stream: s}}]",
            "sources[0].redis.url",
        ),
        (
            "template: job\nsources: [{redis: {url: 'redis://h', stream: ''}}]",
            "sources[0].redis.stream",
        ),
        (
            "template: job\nsources: [{redis: {url: 'redis://h', stream: s, max_in_flight: 0}}]",
            "sources[0].redis.max_in_flight",
        ),
        (
            "template: job\nsources: [{redis: {url: 'redis://h', stream: s, password_secret: missing}}]",
            "sources[0].redis.password_secret",
        ),
    ] {
        let (st, v) = s.put_hook("bus", "bad", doc).await;
        assert_eq!(st, 400, "{doc}: {v}");
        assert_eq!(v["field"], field, "{doc}: {v}");
    }
    let (st, v) = s
        .put_hook(
            "bus",
            "bad",
            "template: job\nsources: [{redis: {url: 'redis://h', strem: s}}]",
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("strem"), "{v}");
    assert_eq!(s.get("/api/v1/hooks/bus/bad").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_never_shown_and_a_refused_login_shows_on_the_status() {
    let Some((url, mut con)) = redis().await else {
        return;
    };
    let user = format!("th{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let password = "s3cret-pw";
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("+@all")
        .query_async(&mut con)
        .await
        .unwrap();
    let host = url.trim_start_matches("redis://");
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let stream = stream();

    let with_password = format!("redis://{user}:{password}@{host}");
    // Sending the masked document back keeps the password.
    support::put_masked_round_trip(&s, "redis", &with_password, password, |url| {
        hook(url, &stream, ", max_in_flight: 10")
    })
    .await;
    s.wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    add(&mut con, &stream, r#"{"kind": "build", "n": 1}"#).await;
    s.wait_created("bus", "jobs", 1, Duration::from_secs(10))
        .await;

    // A wrong password: not connected, and the reason is on the status.
    let wrong = format!("redis://{user}:wrong@{host}");
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
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains("authentication failed"), "{error}");

    // The password from a named secret.
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/secrets/redis_pw",
            Some((&json!({"value": password}).to_string(), "application/json")),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let no_password = format!("redis://{user}@{host}");
    assert_eq!(
        s.put_hook(
            "bus",
            "jobs",
            &hook(&no_password, &stream, ", password_secret: redis_pw")
        )
        .await
        .0,
        200
    );
    s.wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    add(&mut con, &stream, r#"{"kind": "build", "n": 2}"#).await;
    s.wait_created("bus", "jobs", 2, Duration::from_secs(10))
        .await;
    let _: () = con.del(&stream).await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut con)
        .await
        .unwrap();
}

/// Closes the connections of the consumer of instance `instance` from the server side.
async fn kill_consumers(con: &mut redis::aio::MultiplexedConnection, instance: &str) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(con)
        .await
        .unwrap();
    let mut killed = 0;
    for line in list.lines() {
        let field = |k: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_string()
        };
        if field("name") == format!("taskhook-{instance}") {
            let _: Result<(), _> = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(field("id"))
                .query_async(con)
                .await;
            killed += 1;
        }
    }
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_lose_nothing() {
    let Some((url, mut con)) = redis().await else {
        return;
    };
    let instance = format!("redis-drop-{}", uuid::Uuid::new_v4().simple());
    let s = Server::start_in(fresh_dir(), &["--instance", &instance]);
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let stream = stream();
    assert_eq!(
        s.put_hook("bus", "jobs", &hook(&url, &stream, ", max_in_flight: 16"))
            .await
            .0,
        201
    );
    s.wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    let n = 300;
    let publisher = {
        let mut con = con.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            for i in 0..n {
                add(
                    &mut con,
                    &stream,
                    &json!({"kind": "build", "n": i}).to_string(),
                )
                .await;
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };
    let mut kills = 0;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        kills += kill_consumers(&mut con, &instance).await;
    }
    publisher.await.unwrap();
    assert!(kills > 0, "no consumer connection was found to close");
    let fires = s
        .wait_created("bus", "jobs", n, Duration::from_secs(60))
        .await;
    support::assert_once_each(&fires, &format!("redis:{stream}:"), n);
    let status = s
        .wait_connected("bus", "jobs", Duration::from_secs(10))
        .await;
    assert!(status["last_error"].is_string(), "{status}");
    let _: () = con.del(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_repeats_nothing() {
    let Some((url, mut con)) = redis().await else {
        return;
    };
    let dir = fresh_dir();
    // A stable instance name: the restarted process reads its own unacknowledged entries.
    let instance = format!("redis-kill-{}", uuid::Uuid::new_v4().simple());
    let args = ["--instance", instance.as_str()];
    let mut s = Server::start_in(dir.clone(), &args);
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let stream = stream();
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
        add(
            &mut con,
            &stream,
            &json!({"kind": "build", "n": i}).to_string(),
        )
        .await;
        if i == n / 4 {
            // Killed while entries are arriving and being fired.
            s.wait_fires("bus", "jobs", 1, Duration::from_secs(10))
                .await;
            s.kill9();
        }
    }
    let s = Server::start_in(dir, &args);
    let fires = s
        .wait_created("bus", "jobs", n, Duration::from_secs(60))
        .await;
    support::assert_once_each(&fires, &format!("redis:{stream}:"), n);
    let _: () = con.del(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_postgresql_fire_each_entry_once() {
    let Some((url, mut con)) = redis().await else {
        return;
    };
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let cluster = support::start_cluster(&db, 2, &[]);
    assert_eq!(cluster[0].put_template("job", TEMPLATE).await.0, 201);
    let stream = stream();
    assert_eq!(
        cluster[0]
            .put_hook("bus", "jobs", &hook(&url, &stream, ", max_in_flight: 16"))
            .await
            .0,
        201
    );
    // The other instance learns of the hook through the database.
    for s in &cluster {
        s.wait_connected("bus", "jobs", Duration::from_secs(40))
            .await;
    }
    let n = 500;
    for i in 0..n {
        add(
            &mut con,
            &stream,
            &json!({"kind": "build", "n": i}).to_string(),
        )
        .await;
    }
    let fires = cluster[0]
        .wait_created("bus", "jobs", n, Duration::from_secs(60))
        .await;
    support::assert_once_each(&fires, &format!("redis:{stream}:"), n);
    let mut per_instance = Vec::new();
    for s in &cluster {
        let st = s.source_status("bus", "jobs").await;
        per_instance.push(st[0]["fired"].as_u64().unwrap());
    }
    // Both consumers of the group took entries, none twice.
    assert!(
        per_instance.iter().sum::<u64>() >= n as u64,
        "{per_instance:?}"
    );
    eprintln!("entries fired per instance: {per_instance:?}");
    let _: () = con.del(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_in_a_denied_network_is_not_connected_to() {
    let s = Server::start();
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    // The cloud metadata address is denied by default, for sources as for http steps.
    let doc = hook("redis://169.254.169.254:6379", "jobs", "");
    assert_eq!(s.put_hook("bus", "meta", &doc).await.0, 201);
    let status = s
        .wait_source("bus", "meta", 0, Duration::from_secs(10), |v| {
            v["last_error"].is_string()
        })
        .await;
    let error = status["last_error"].as_str().unwrap();
    assert!(
        error.contains("denied network 169.254.0.0/16") && error.contains("--http-allow-network"),
        "{error}"
    );
    assert_eq!(status["connected"], false);
}
