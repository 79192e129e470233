//! Encryption at rest as an operator meets it: no plaintext of sealed fields in the database
//! files or tables, a server that refuses a key ring that cannot read its database, and key
//! rotation while tasks are created and run.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, TOKEN, fresh_dir, postgres_url, taskhook};

/// Sealed data must never show these.
const SECRET: &str = "s3cr3t-4c2e9b1f-marker";
const HOOK_SECRET: &str = "hooksecret-77d1a0e3-marker";

const ECHO: &str = "name: echo\nauto_runnable: true\ntitle_format: 'for {{ input.who }}'\ninputs: [{name: who}]\ntags: {who: '{{ input.who }}'}\nsteps:\n  a: {action: {type: echo, configuration: {output: {said: '{{ input.who }}'}}}}\n  b:\n    dependencies: [a]\n    action: {type: echo, configuration: {output: {again: '{{ step.a.output.said }}'}}}\nresult_format: {final: '{{ step.b.output.again }}'}\n";

const SLOW: &str = "name: slow\nauto_runnable: true\ninputs: [{name: who}]\nsteps:\n  wait: {idempotent: true, action: {type: sleep, configuration: {duration: 200ms}}}\n  a:\n    idempotent: true\n    dependencies: [wait]\n    action: {type: echo, configuration: {output: {said: '{{ input.who }}'}}}\nresult_format: {final: '{{ step.a.output.said }}'}\n";

async fn create(s: &Server, template: &str, who: &str) -> String {
    let (st, v) = s
        .post(
            "/api/v1/tasks",
            json!({"template": template, "inputs": {"who": who}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// Tasks, a hook with a webhook secret and a fire whose payload carries the secret, all run to
/// the end; the API shows the plaintext back.
async fn store_secrets(s: &Server) -> String {
    assert_eq!(s.put_template("echo", ECHO).await.0, 201);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(create(s, "echo", &format!("{SECRET}-{i}")).await);
    }
    let hook = format!(
        "template: echo\ninputs: {{who: '{{{{ event.payload.who }}}}'}}\nwebhook: {{provider: github, secret: '{HOOK_SECRET}'}}\n"
    );
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/hooks/ops/echo",
            Some((&hook, "application/yaml")),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, fired) = s
        .post(
            "/api/v1/hooks/ops/echo/trigger",
            json!({"who": format!("{SECRET}-fired")}),
        )
        .await;
    assert_eq!(st, 202, "{fired}");
    let (st, token) = s.get("/api/v1/hooks/ops/echo/token").await;
    assert_eq!(st, 200, "{token}");
    let token = token["token"].as_str().unwrap().to_string();
    if let Some(id) = fired["task_id"].as_str() {
        ids.push(id.to_string());
    }
    for id in &ids {
        let t = s.wait_state(id, &["DONE"]).await;
        assert!(
            t["result"]["final"].as_str().unwrap().starts_with(SECRET),
            "the API shows the plaintext: {t}"
        );
        assert!(t["title"].as_str().unwrap().contains(SECRET), "{t}");
    }
    let (_, fires) = s.get("/api/v1/hooks/ops/echo/fires").await;
    assert!(fires.to_string().contains(SECRET), "{fires}");
    token
}

fn assert_absent(haystack: &[u8], needles: &[&str], place: &str) {
    for n in needles {
        assert!(
            !haystack.windows(n.len()).any(|w| w == n.as_bytes()),
            "{n:?} found in plaintext in {place}"
        );
    }
}

#[tokio::test]
async fn sqlite_files_hold_no_plaintext_of_sealed_data() {
    let dir = fresh_dir();
    let mut s = Server::start_in(dir.clone(), &[]);
    let token = store_secrets(&s).await;
    let needles = [SECRET, HOOK_SECRET, token.as_str()];
    // while running (data in the WAL) and after the server stopped
    for round in ["running", "stopped"] {
        for file in ["taskhook.db", "taskhook.db-wal", "taskhook.db-shm"] {
            if let Ok(bytes) = std::fs::read(dir.join(file)) {
                assert_absent(&bytes, &needles, &format!("{file} ({round})"));
            }
        }
        s.kill9();
    }
    let keys = std::fs::metadata(dir.join("keys")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        keys.permissions().mode() & 0o777,
        0o600,
        "the generated key file is owner-only"
    );
}

#[tokio::test]
async fn postgres_tables_hold_no_plaintext_of_sealed_data() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let mut s = Server::start_in(fresh_dir(), &["--database-url", &url]);
    let token = store_secrets(&s).await;
    s.kill9();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.iter().any(|t| t == "tasks"), "{tables:?}");
    let mut rows = 0;
    for t in &tables {
        for r in client
            .query(&format!("SELECT x::text FROM \"{t}\" x"), &[])
            .await
            .unwrap()
        {
            let text: String = r.get(0);
            rows += 1;
            assert_absent(
                text.as_bytes(),
                &[SECRET, HOOK_SECRET, token.as_str()],
                &format!("table {t}"),
            );
        }
    }
    assert!(rows > 10, "the tables were scanned ({rows} rows)");
}

#[tokio::test]
async fn a_key_ring_that_cannot_read_the_database_is_refused_at_start() {
    let dir = fresh_dir();
    let mut s = Server::start_in(dir.clone(), &[]);
    assert_eq!(s.put_template("echo", ECHO).await.0, 201);
    let id = create(&s, "echo", "x").await;
    s.wait_state(&id, &["DONE"]).await;
    s.kill9();
    let expected = std::fs::read_to_string(dir.join("keys")).unwrap();
    let expected_id = expected.trim().split(':').next().unwrap().to_string();
    let other = taskhook(None, &["keys", "generate", "--id", "other"]).1;
    let out = Command::new(env!("CARGO_BIN_EXE_taskhook"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("TASKHOOK_KEYS", other.trim())
        .env("TASKHOOK_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the server must not start: {stderr}");
    assert!(
        stderr.contains("refusing to start") && stderr.contains(&format!("key \"{expected_id}\"")),
        "the message names the key the database expects: {stderr}"
    );
    // the right ring (from the file, as before) still starts
    let s = Server::start_in(dir, &[]);
    assert_eq!(s.get("/healthz").await.0, 200);
}

/// Rotation to a new key while tasks are created and running: every task finishes, no value
/// stays under the old key, and the data reads with the new key alone.
async fn rotation_under_load(extra: &[&str]) {
    let dir = fresh_dir();
    let mut s = Server::start_in(dir.clone(), extra);
    assert_eq!(s.put_template("slow", SLOW).await.0, 201);
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(create(&s, "slow", &format!("before-{i}")).await);
    }
    s.kill9();
    let old = std::fs::read_to_string(dir.join("keys")).unwrap();
    let old_id = old.trim().split(':').next().unwrap().to_string();
    let key_file = dir.join("keys");
    let (code, new_entry, err) = taskhook(
        None,
        &[
            "keys",
            "generate",
            "--id",
            "new",
            "--key-file",
            key_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let mut s = Server::start_in(dir.clone(), extra);
    // load: tasks keep being created while the older ones run
    let creator = {
        let (url, http) = (s.url.clone(), s.http.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..60 {
                let v: Value = http
                    .post(format!("{url}/api/v1/tasks"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"template": "slow", "inputs": {"who": format!("during-{i}")}}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                ids.push(v["id"].as_str().unwrap().to_string());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ids
        })
    };
    let mut rounds = 0;
    while !creator.is_finished() || rounds == 0 {
        let (code, out, err) = taskhook(Some(&s), &["keys", "rotate", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["rotation"]["key_id"], "new", "{v}");
        rounds += 1;
    }
    ids.extend(creator.await.unwrap());
    for id in &ids {
        s.wait_state(id, &["DONE"]).await;
    }
    let (code, out, err) = taskhook(Some(&s), &["keys", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["under_old_keys"], 0, "{status}");
    assert_eq!(
        status["clear"], 0,
        "every sealed value is sealed from its first write: {status}"
    );
    assert_eq!(status["canary"], "new", "{status}");
    // The audit view opens what it reads: after rotations, no sealed text shows.
    let (st, audit) = s.get("/api/v1/audit?kind=task&limit=1000").await;
    assert_eq!(st, 200, "{audit}");
    let text = audit.to_string();
    assert!(!text.contains("thk1:"), "{text}");
    assert!(
        text.contains("\"instance\""),
        "claimed entries name the instance: {text}"
    );
    assert!(status["sealed"]["new"].as_u64().unwrap() > 100, "{status}");
    let (_, human, _) = taskhook(Some(&s), &["keys", "status"]);
    assert!(human.contains("no data under old keys"), "{human}");
    s.kill9();

    // the old key leaves the ring: everything still reads
    std::fs::write(dir.join("keys"), new_entry).unwrap();
    let s = Server::start_in(dir, extra);
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        let (st, t) = s.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(st, 200, "{t}");
        assert_eq!(t["state"], "DONE", "{t}");
        assert_eq!(t["result"]["final"], t["inputs"]["who"], "{t}");
        let (st, ev) = s.get(&format!("/api/v1/tasks/{id}/events")).await;
        assert_eq!(st, 200, "{ev}");
        assert!(Instant::now() < deadline);
    }
    assert!(!old_id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_sqlite() {
    rotation_under_load(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_postgres() {
    let Some(url) = postgres_url().await else {
        return;
    };
    // a short lease: tasks the killed first server held are taken over soon after restart
    rotation_under_load(&[
        "--database-url",
        &url,
        "--lease",
        "2s",
        "--orphan-sweep",
        "1s",
    ])
    .await;
}

#[test]
fn generated_keys_append_to_a_ring_file() {
    let dir = fresh_dir();
    let file = dir.join("ring");
    let f = file.to_str().unwrap();
    let (code, first, err) = taskhook(None, &["keys", "generate", "--id", "one", "--key-file", f]);
    assert_eq!(code, 0, "{err}");
    assert!(first.starts_with("one:"), "{first}");
    let (code, _, _) = taskhook(None, &["keys", "generate", "--id", "two", "--key-file", f]);
    assert_eq!(code, 0);
    let text = std::fs::read_to_string(&file).unwrap();
    let ids: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(ids, ["one", "two"]);
    let (code, _, err) = taskhook(None, &["keys", "generate", "--id", "one", "--key-file", f]);
    assert_ne!(code, 0);
    assert!(err.contains("appears twice"), "{err}");
    let (code, _, err) = taskhook(None, &["keys", "generate", "--id", "bad id"]);
    assert_ne!(code, 0);
    assert!(err.contains("key id"), "{err}");
    assert!(Path::new(&file).exists());
}
