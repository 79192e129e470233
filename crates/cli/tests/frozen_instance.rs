//! An instance frozen (SIGSTOP: a long GC pause, a VM freeze, a network partition) while it
//! writes scheduled fires keeps its transaction open and the hooks' locks with it. The other
//! instances must still fire every due time of every hook, answer the API at once, and the
//! frozen instance must come back without firing anything twice.
//! Skipped (with a message) when PostgreSQL is unreachable, unless services are required.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::Server;

/// Set on the instance to freeze: it prints [`MARKER`] after writing a scheduled fire, before
/// committing, and waits this long, so SIGSTOP lands while its transaction holds the locks.
const FAILPOINT: &str = "TASKHOOK_FAILPOINT_PAUSE_IN_FIRE_WRITE_MS";
const MARKER: &str = "failpoint: scheduled fire written, commit paused";
const HOOKS: usize = 20;
/// Longer than PostgreSQL's `idle_in_transaction_session_timeout` the store sets (10 s), so
/// the healthy instances must get past the frozen transaction while it is still frozen.
const FREEZE: Duration = Duration::from_secs(15);
/// A healthy instance's API must answer within this while the other is frozen: a bound on
/// waiting for someone else's locks, not a performance figure.
const API_BOUND: Duration = Duration::from_secs(3);

const TEMPLATE: &str = "name: tick\ninputs: [{name: at}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ input.at }}'}}}\n";

fn ring() -> String {
    let ring = support::fresh_dir().join("keys");
    let ring = ring.to_str().unwrap().to_string();
    let (code, _, err) = support::taskhook(None, &["keys", "generate", "--key-file", &ring]);
    assert_eq!(code, 0, "{err}");
    ring
}

async fn put_hook(s: &Server, id: &str, doc: &str) {
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            &format!("/api/v1/hooks/frozen/{id}"),
            Some((doc, "application/yaml")),
        )
        .await;
    assert!(st == 201 || st == 200, "{v}");
}

/// Due times (unix ms) of a hook's scheduled fires, with how many fires each has.
async fn fired(s: &Server, id: &str) -> BTreeMap<i64, usize> {
    let (code, v) = s
        .get(&format!("/api/v1/hooks/frozen/{id}/fires?limit=1000"))
        .await;
    assert_eq!(code, 200, "{v}");
    let mut out = BTreeMap::new();
    for f in v["fires"].as_array().unwrap() {
        let due: jiff::Timestamp = f["scheduled_for"].as_str().unwrap().parse().unwrap();
        *out.entry(due.as_millisecond()).or_default() += 1;
    }
    out
}

/// Creates a task on `s`, panicking if the answer takes longer than [`API_BOUND`].
async fn create_task_promptly(s: &Server, what: &str) {
    let started = Instant::now();
    let (code, v) = tokio::time::timeout(
        API_BOUND,
        s.post(
            "/api/v1/tasks",
            json!({"template": "tick", "inputs": {"at": what}}),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("POST /api/v1/tasks ({what}) took over {API_BOUND:?}"));
    assert_eq!(code, 201, "{v}");
    assert!(started.elapsed() < API_BOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_instance_holding_fire_locks_stalls_no_other_instance() {
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let ring = ring();
    let flags = [
        "--database-url",
        &db,
        "--database-pool",
        "8",
        "--key-file",
        &ring,
    ];
    let healthy: Vec<Server> = (0..2)
        .map(|_| Server::start_in(support::fresh_dir(), &flags))
        .collect();
    let (lines_to, lines) = mpsc::channel();
    let frozen = Server::start_with(
        support::fresh_dir(),
        &flags,
        &[(FAILPOINT, "1500")],
        Some(lines_to),
    );
    let (st, v) = healthy[0].put_template("tick", TEMPLATE).await;
    assert!(st == 201 || st == 200, "{v}");
    let created = jiff::Timestamp::now().as_millisecond();
    for i in 0..HOOKS {
        put_hook(
            &healthy[0],
            &format!("h{i}"),
            "template: tick\nschedule: ['* * * * * *']\nmisfire: fire_once\ninputs: {at: '{{ event.scheduled_for }}'}\n",
        )
        .await;
    }

    // Freeze the instance exactly while its transaction holds scheduled fires' locks. (Its
    // scheduler sees the hooks within a second or two; the failpoint pauses every such write.)
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the frozen instance never wrote a scheduled fire"
        );
        if lines.recv_timeout(left).is_ok_and(|l| l.contains(MARKER)) {
            break;
        }
    }
    frozen.signal("STOP");
    let frozen_at = jiff::Timestamp::now().as_millisecond();

    // The healthy instances answer at once the whole time, from either.
    let freeze_ends = Instant::now() + FREEZE;
    let mut n = 0;
    while Instant::now() < freeze_ends {
        create_task_promptly(&healthy[n % 2], &format!("during-{n}")).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every hook fired its due times up to a few seconds ago, through the frozen holder's
    // transaction being ended by PostgreSQL: checked while the instance is still frozen.
    let thawed_at = jiff::Timestamp::now().as_millisecond();
    let during = thawed_at - 2_000;
    let mut seen: BTreeMap<String, BTreeMap<i64, usize>> = BTreeMap::new();
    for i in 0..HOOKS {
        let id = format!("h{i}");
        seen.insert(id.clone(), fired(&healthy[1], &id).await);
    }
    frozen.signal("CONT");

    // The thawed instance recovers: it answers, and its scheduler goes on firing.
    let back = Instant::now();
    loop {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            frozen.get("/api/v1/hooks/frozen/h0"),
        )
        .await;
        if matches!(r, Ok((200, _))) {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "the thawed instance does not answer: {r:?}"
        );
    }
    create_task_promptly(&frozen, "after").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let end = jiff::Timestamp::now().as_millisecond() - 2_000;

    for i in 0..HOOKS {
        let id = format!("h{i}");
        let during_freeze = &seen[&id];
        let all = fired(&healthy[0], &id).await;
        // Every second from the hook's first due time to `end` fired once: none missed
        // across the freeze (whatever `misfire` says), none twice after the thaw.
        let first = *all.keys().next().unwrap();
        assert!(first <= created + 3_000, "{id} started late: {all:?}");
        let expected: BTreeSet<i64> = (0..)
            .map(|k| first + k * 1_000)
            .take_while(|t| *t <= end)
            .collect();
        let missing: Vec<_> = expected.iter().filter(|t| !all.contains_key(t)).collect();
        assert!(
            missing.is_empty(),
            "{id} never fired {missing:?} (frozen at {frozen_at}, thawed at {thawed_at})"
        );
        let twice: Vec<_> = all.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{id} fired twice: {twice:?}");
        let late: Vec<_> = expected
            .iter()
            .filter(|t| **t <= during && !during_freeze.contains_key(t))
            .collect();
        assert!(
            late.is_empty(),
            "{id} did not fire {late:?} while the instance was frozen (frozen at {frozen_at})"
        );
    }
}
