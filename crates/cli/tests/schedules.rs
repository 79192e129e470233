//! Schedules as a user meets them: cron hooks firing on the real server, across kill -9 and
//! restarts, with misfire and overlap policies. Schedules with a seconds field keep these short.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::Server;

async fn put_hook(s: &Server, group: &str, id: &str, doc: &str) {
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            &format!("/api/v1/hooks/{group}/{id}"),
            Some((doc, "application/yaml")),
        )
        .await;
    assert!(st == 201 || st == 200, "{v}");
}

async fn fires(s: &Server, group: &str, id: &str) -> Vec<Value> {
    let (_, v) = s
        .get(&format!("/api/v1/hooks/{group}/{id}/fires?limit=1000"))
        .await;
    let mut f = v["fires"].as_array().unwrap().clone();
    f.reverse();
    f
}

fn due_times(fires: &[Value]) -> Vec<String> {
    fires
        .iter()
        .map(|f| f["scheduled_for"].as_str().unwrap().to_string())
        .collect()
}

fn assert_unique(fires: &[Value]) {
    let due = due_times(fires);
    let set: BTreeSet<_> = due.iter().collect();
    assert_eq!(set.len(), due.len(), "a due time fired twice: {due:?}");
}

const TEMPLATE: &str = "name: tick\nauto_runnable: true\ninputs: [{name: at}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ input.at }}'}}}\n";

#[tokio::test]
async fn a_schedule_fires_each_due_time_once_with_its_due_time() {
    let s = Server::start();
    s.put_template("tick", TEMPLATE).await;
    put_hook(&s, "cron", "tick", "template: tick\nschedule: ['* * * * * *']\ntimezone: Europe/Paris\ninputs: {at: '{{ event.scheduled_for }}'}\n").await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let f = fires(&s, "cron", "tick").await;
    assert!((2..=5).contains(&f.len()), "{f:#?}");
    assert_unique(&f);
    for fire in &f {
        assert_eq!(fire["fired_by"], "schedule");
        assert_eq!(fire["result"], "created");
        let due: jiff::Timestamp = fire["scheduled_for"].as_str().unwrap().parse().unwrap();
        let got: jiff::Timestamp = fire["received_at"].as_str().unwrap().parse().unwrap();
        let late = got.as_millisecond() - due.as_millisecond();
        assert!(
            (0..1000).contains(&late),
            "fired {late} ms after its due time"
        );
        let committed: jiff::Timestamp = fire["committed_at"].as_str().unwrap().parse().unwrap();
        assert!(committed >= got, "committed after it was received: {fire}");
        let t = s
            .wait_state(fire["task_id"].as_str().unwrap(), &["DONE"])
            .await;
        assert_eq!(
            t["steps"]["a"]["output"], fire["scheduled_for"],
            "the task saw its due time"
        );
    }
    let (_, status) = s.get("/api/v1/hooks/cron/tick/status").await;
    assert_eq!(status["next_scheduled"].as_array().unwrap().len(), 5);
    assert!(status["last_fire"]["scheduled_for"].is_string());
}

/// Runs a hook due every second, kills the server for ~4 s, restarts it, and returns the
/// sorted due times it fired over its whole life.
async fn downtime(misfire: &str) -> Vec<i64> {
    let dir = support::fresh_dir();
    let mut s = Server::start_in(dir.clone(), &[]);
    s.put_template("tick", TEMPLATE).await;
    let doc = format!(
        "template: tick\nschedule: ['* * * * * *']\nmisfire: {misfire}\ninputs: {{at: '{{{{ event.scheduled_for }}}}'}}\n"
    );
    put_hook(&s, "cron", "tick", &doc).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.kill9();
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let s = Server::start_in(dir, &[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let f = fires(&s, "cron", "tick").await;
    assert_unique(&f);
    let mut due: Vec<i64> = due_times(&f)
        .iter()
        .map(|d| d.parse::<jiff::Timestamp>().unwrap().as_millisecond())
        .collect();
    due.sort();
    due
}

/// Gaps longer than one period between consecutive fired due times, in seconds.
fn gaps(due: &[i64]) -> Vec<i64> {
    due.windows(2)
        .map(|w| (w[1] - w[0]) / 1000)
        .filter(|g| *g > 1)
        .collect()
}

#[tokio::test]
async fn after_downtime_fire_once_fires_one_missed_time() {
    let due = downtime("fire_once").await;
    // The downtime missed ~4 due times: one fire stands for all of them (the newest), so
    // exactly one gap remains, and fires go on every second after the restart.
    let g = gaps(&due);
    assert_eq!(g.len(), 1, "{due:?}");
    assert!(g[0] >= 3, "{due:?}");
}

#[tokio::test]
async fn after_downtime_catch_up_fires_every_missed_time() {
    let due = downtime("catch_up").await;
    assert_eq!(
        gaps(&due),
        Vec::<i64>::new(),
        "every second fired once: {due:?}"
    );
    assert!(due.len() >= 7, "{due:?}");
}

#[tokio::test]
async fn overlap_skip_and_queue() {
    let s = Server::start();
    s.put_template("slow", "name: slow\nauto_runnable: true\nsteps:\n  a: {action: {type: sleep, configuration: {duration: 2500ms}}}\n").await;
    put_hook(
        &s,
        "cron",
        "skip",
        "template: slow\nschedule: ['* * * * * *']\noverlap: skip\n",
    )
    .await;
    put_hook(
        &s,
        "cron",
        "queue",
        "template: slow\nschedule: ['* * * * * *']\noverlap: queue\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(3300)).await;
    // Stop both schedules, then look.
    put_hook(
        &s,
        "cron",
        "skip",
        "template: slow\nschedule: ['* * * * * *']\noverlap: skip\nenabled: false\n",
    )
    .await;
    put_hook(
        &s,
        "cron",
        "queue",
        "template: slow\nschedule: ['* * * * * *']\noverlap: queue\nenabled: false\n",
    )
    .await;
    let skip = fires(&s, "cron", "skip").await;
    let results: Vec<&str> = skip.iter().map(|f| f["result"].as_str().unwrap()).collect();
    // The first task runs 2.5 s: the fires due meanwhile are skipped, not started.
    assert_eq!(
        &results[..3],
        ["created", "skipped", "skipped"],
        "{results:?}"
    );

    let queue = fires(&s, "cron", "queue").await;
    let results: Vec<&str> = queue
        .iter()
        .map(|f| f["result"].as_str().unwrap())
        .collect();
    assert!(
        results.contains(&"queued"),
        "fires wait in line: {results:?}"
    );
    assert_eq!(results[0], "created");
    // One runs at a time: the next queued fire starts its task only after the first ended.
    let first = s
        .wait_state(queue[0]["task_id"].as_str().unwrap(), &["DONE"])
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let second = loop {
        let q = fires(&s, "cron", "queue").await;
        if let Some(id) = q.get(1).and_then(|f| f["task_id"].as_str()) {
            break s.wait_state(id, &["RUNNING", "WAITING", "DONE"]).await;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the queued fire never started: {q:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at = |t: &Value, k: &str| t[k].as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    assert!(
        at(&second, "created_at") >= at(&first, "updated_at"),
        "{first:#}\n{second:#}"
    );
}

/// A queued fire starts its task with the hook's permissions as they are when it starts: once
/// the hook no longer holds `tasks:create:<template>`, the fires waiting in line end as
/// `error` with the reason, and no task is created for them.
#[tokio::test]
async fn a_queued_fire_is_checked_again_against_the_hooks_scopes() {
    let s = Server::start();
    s.put_template("slow", "name: slow\nauto_runnable: true\nsteps:\n  a: {action: {type: sleep, configuration: {duration: 2500ms}}}\n").await;
    let doc = "template: slow\nschedule: ['* * * * * *']\noverlap: queue\n";
    put_hook(&s, "cron", "line", doc).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !fires(&s, "cron", "line")
        .await
        .iter()
        .any(|f| f["result"] == "queued")
    {
        assert!(std::time::Instant::now() < deadline, "no fire was queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The hook loses the right to create its template's tasks while fires wait.
    put_hook(
        &s,
        "cron",
        "line",
        &format!("{doc}scopes: ['tasks:create:other']\n"),
    )
    .await;
    let first = fires(&s, "cron", "line").await[0]["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    s.wait_state(&first, &["DONE"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let all = loop {
        let f = fires(&s, "cron", "line").await;
        if !f.iter().any(|f| f["result"] == "queued") {
            break f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fires stay queued: {f:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    put_hook(&s, "cron", "line", &format!("{doc}enabled: false\n")).await;
    let created: Vec<&Value> = all.iter().filter(|f| !f["task_id"].is_null()).collect();
    assert_eq!(
        created.len(),
        1,
        "only the first fire made a task: {all:#?}"
    );
    assert!(all.len() >= 2, "{all:#?}");
    for f in &all[1..] {
        assert_eq!(f["result"], "error", "{all:#?}");
        assert!(
            f["error"].as_str().unwrap().contains("tasks:create:slow"),
            "{f:#}"
        );
    }
    let (_, tasks) = s.get("/api/v1/tasks").await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 1, "{tasks:#}");
}

/// The issue's own words: a hook scheduled every minute in Europe/Paris fires once per minute
/// across a restart. The server is killed just after a due time and restarted at once: the
/// due time it already fired is not fired again, and the next minute fires once.
#[tokio::test]
async fn every_minute_in_paris_fires_once_per_minute_across_a_restart() {
    let dir = support::fresh_dir();
    // Start a few seconds before a minute boundary, so the test takes about a minute.
    let sec = jiff::Timestamp::now().as_second().rem_euclid(60);
    if sec < 55 {
        tokio::time::sleep(Duration::from_secs((55 - sec) as u64)).await;
    }
    let mut s = Server::start_in(dir.clone(), &[]);
    s.put_template("tick", TEMPLATE).await;
    put_hook(&s, "cron", "paris", "template: tick\nschedule: ['* * * * *']\ntimezone: Europe/Paris\ninputs: {at: '{{ event.scheduled_for }}'}\n").await;
    // Wait for the first due time to fire, then kill the server at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fires(&s, "cron", "paris").await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first minute never fired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.kill9();
    let s = Server::start_in(dir, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(75);
    let f = loop {
        let f = fires(&s, "cron", "paris").await;
        if f.len() >= 2 {
            break f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the next minute never fired: {f:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let f2 = fires(&s, "cron", "paris").await;
    assert_eq!(f2.len(), 2, "one fire per minute: {:#?}", due_times(&f2));
    let due: Vec<i64> = due_times(&f)
        .iter()
        .map(|d| d.parse::<jiff::Timestamp>().unwrap().as_second())
        .collect();
    assert_eq!(due[1] - due[0], 60, "{due:?}");
    assert_eq!(due[0] % 60, 0, "due on the minute");
}
