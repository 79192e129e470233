//! `taskhook hook …` and `taskhook serve --hooks DIR` as a user types them, against the real binary.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, TOKEN, taskhook};

/// Runs a command that must succeed and returns its stdout.
fn ok(server: &Server, args: &[&str]) -> String {
    let (code, out, err) = taskhook(Some(server), args);
    assert_eq!(code, 0, "taskhook {args:?}\nstdout: {out}\nstderr: {err}");
    out
}

/// Runs a command that must fail with exit code 1 (not a panic) and returns its stderr.
fn fails(server: Option<&Server>, args: &[&str]) -> String {
    let (code, out, err) = taskhook(server, args);
    assert_eq!(code, 1, "taskhook {args:?}\nstdout: {out}\nstderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

const GREET: &str = "name: greet\nauto_runnable: true\ninputs: [{name: who}]\nsteps:\n  a: {action: {type: echo, configuration: {output: 'hello {{ input.who }}'}}}\n";

const SECRET: &str = "It's a Secret to Everybody";

fn greet_hook() -> String {
    format!(
        r#"
metadata: {{name: greet on push, owner: ops}}
template: greet
filter: "event.payload.who != 'nobody'"
inputs:
  who: "{{{{ event.payload.who }}}}"
webhook: {{provider: github, secret: "{SECRET}"}}
"#
    )
}

#[tokio::test]
async fn put_list_get_trigger_fires_test_and_token_from_the_cli() {
    let s = Server::start();
    let dir = support::fresh_dir();
    let tpl = write(&dir, "greet.yaml", GREET);
    let hook = write(&dir, "push.yaml", &greet_hook());
    ok(&s, &["template", "put", &tpl]);

    let out = ok(&s, &["hook", "put", "ci/push", &hook]);
    assert_eq!(out.trim(), "created ci/push");
    let out = ok(&s, &["hook", "put", "ci/push", &hook]);
    assert_eq!(out.trim(), "updated ci/push");
    // JSON works too, sent as JSON.
    let json_hook = write(
        &dir,
        "plain.json",
        r#"{"template": "greet", "inputs": {"who": "{{ event.payload.who }}"}}"#,
    );
    ok(&s, &["hook", "put", "ci/plain", &json_hook]);

    let out = ok(&s, &["hook", "list"]);
    assert_eq!(out.trim(), "ci");
    let out = ok(&s, &["hook", "list", "ci"]);
    let line = out
        .lines()
        .find(|l| l.starts_with("ci/push"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("greet") && line.contains("greet on push"),
        "{out}"
    );
    assert!(out.contains("ci/plain"), "{out}");
    let v: Value = serde_json::from_str(&ok(&s, &["hook", "list", "ci", "--json"])).unwrap();
    assert_eq!(v["hooks"].as_array().unwrap().len(), 2, "{v}");

    // The secret never comes back, in either output.
    let out = ok(&s, &["hook", "get", "ci/push"]);
    assert!(out.starts_with("ci/push  created "), "{out}");
    assert!(
        out.contains("**__SECRET__**") && !out.contains(SECRET),
        "{out}"
    );
    let v: Value = serde_json::from_str(&ok(&s, &["hook", "get", "ci/push", "--json"])).unwrap();
    assert_eq!(
        (v["group"].clone(), v["id"].clone()),
        (json!("ci"), json!("push"))
    );
    assert_eq!(v["hook"]["webhook"]["secret"], "**__SECRET__**");
    assert_eq!(v["hook"]["template"], "greet");

    // Trigger: a fire and a task, which runs to DONE.
    let out = ok(
        &s,
        &[
            "hook",
            "trigger",
            "ci/push",
            "--payload",
            r#"{"who": "ada"}"#,
        ],
    );
    assert!(out.contains("result  created"), "{out}");
    let fire_id = out
        .lines()
        .find_map(|l| l.strip_prefix("fire"))
        .unwrap()
        .trim()
        .to_string();
    let task_id = out
        .lines()
        .find_map(|l| l.strip_prefix("task"))
        .unwrap()
        .trim()
        .to_string();
    assert!(!fire_id.is_empty() && !task_id.is_empty(), "{out}");
    let out = ok(&s, &["task", "watch", &task_id]);
    assert!(out.contains(&format!("task {task_id} DONE")), "{out}");
    let t: Value = serde_json::from_str(&ok(&s, &["task", "get", &task_id, "--json"])).unwrap();
    assert_eq!(t["steps"]["a"]["output"], "hello ada", "{t}");

    // A payload from a file, and one the filter drops.
    let payload = write(&dir, "payload.json", r#"{"who": "nobody"}"#);
    let v: Value = serde_json::from_str(&ok(
        &s,
        &[
            "hook",
            "trigger",
            "ci/push",
            "--payload-file",
            &payload,
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(
        (v["result"].clone(), v["task_id"].clone()),
        (json!("filtered"), Value::Null),
        "{v}"
    );

    // The ledger: newest first, with the task's state now.
    let out = ok(&s, &["hook", "fires", "ci/push"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("RECEIVED_AT") && lines[0].contains("TASK_STATE"),
        "{out}"
    );
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[1].contains(" api ") && lines[1].contains("filtered"),
        "{out}"
    );
    assert!(
        lines[2].contains("created") && lines[2].contains(&task_id) && lines[2].contains("DONE"),
        "{out}"
    );
    let (code, out, err) = taskhook(Some(&s), &["hook", "fires", "ci/push", "--limit", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("filtered"), "{out}");
    assert!(err.contains("--cursor "), "the next page is offered: {err}");
    let next = err.split("--cursor ").nth(1).unwrap().trim();
    let out = ok(
        &s,
        &["hook", "fires", "ci/push", "--limit", "1", "--cursor", next],
    );
    assert!(out.contains(&task_id), "{out}");
    let v: Value = serde_json::from_str(&ok(&s, &["hook", "fires", "ci/push", "--json"])).unwrap();
    assert_eq!(v["fires"][1]["id"], json!(fire_id));
    assert_eq!(v["fires"][1]["task_state"], "DONE");

    // Status: enabled, no schedule, the last fire.
    let out = ok(&s, &["hook", "status", "ci/push"]);
    assert!(out.contains("enabled: yes"), "{out}");
    assert!(out.contains("next scheduled: none"), "{out}");
    assert!(
        out.contains("last fire: ") && out.contains("filtered"),
        "{out}"
    );

    // Dry run: the result and inputs, and nothing recorded.
    let out = ok(
        &s,
        &["hook", "test", "ci/push", "--payload", r#"{"who": "bob"}"#],
    );
    assert!(out.contains("result: created"), "{out}");
    assert!(out.contains("template: greet"), "{out}");
    assert!(out.contains(r#"inputs: {"who":"bob"}"#), "{out}");
    let v: Value = serde_json::from_str(&ok(
        &s,
        &[
            "hook",
            "test",
            "ci/push",
            "--payload",
            r#"{"who": "nobody"}"#,
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(v["result"], "filtered", "{v}");
    let v: Value = serde_json::from_str(&ok(&s, &["hook", "fires", "ci/push", "--json"])).unwrap();
    assert_eq!(
        v["fires"].as_array().unwrap().len(),
        2,
        "dry runs are not fires"
    );

    // The trigger token: stable until reset.
    let token = ok(&s, &["hook", "token", "ci/push"]).trim().to_string();
    assert!(!token.is_empty());
    assert_eq!(ok(&s, &["hook", "token", "ci/push"]).trim(), token);
    let fresh = ok(&s, &["hook", "token", "ci/push", "--reset"])
        .trim()
        .to_string();
    assert!(!fresh.is_empty());
    assert_ne!(fresh, token);
    let v: Value = serde_json::from_str(&ok(&s, &["hook", "token", "ci/push", "--json"])).unwrap();
    assert_eq!(v["token"], json!(fresh));

    // Delete.
    assert_eq!(
        ok(&s, &["hook", "delete", "ci/plain"]).trim(),
        "deleted ci/plain"
    );
    let err = fails(Some(&s), &["hook", "get", "ci/plain"]);
    assert!(err.contains("404"), "{err}");
}

#[tokio::test]
async fn bad_names_payloads_and_files_are_a_message_and_exit_1() {
    let s = Server::start();
    let dir = support::fresh_dir();
    let tpl = write(&dir, "greet.yaml", GREET);
    ok(&s, &["template", "put", &tpl]);
    let hook = write(&dir, "push.yaml", &greet_hook());
    ok(&s, &["hook", "put", "ci/push", &hook]);

    let err = fails(Some(&s), &["hook", "get", "ci-push"]);
    assert!(err.contains("GROUP/ID"), "{err}");
    let err = fails(Some(&s), &["hook", "status", "ci/push/x"]);
    assert!(err.contains("bad id"), "{err}");
    let err = fails(Some(&s), &["hook", "trigger", "bad group/push"]);
    assert!(err.contains("bad group"), "{err}");
    let err = fails(Some(&s), &["hook", "fires", "/push"]);
    assert!(err.contains("bad group"), "{err}");
    let err = fails(Some(&s), &["hook", "list", "no/such"]);
    assert!(err.contains("bad group"), "{err}");

    let err = fails(
        Some(&s),
        &["hook", "trigger", "ci/push", "--payload", "{who: ada"],
    );
    assert!(err.contains("--payload is not valid JSON"), "{err}");
    let err = fails(
        Some(&s),
        &["hook", "test", "ci/push", "--payload", "not json"],
    );
    assert!(err.contains("--payload is not valid JSON"), "{err}");
    let broken = write(&dir, "broken.json", "{\"who\": ");
    let err = fails(
        Some(&s),
        &["hook", "trigger", "ci/push", "--payload-file", &broken],
    );
    assert!(
        err.contains("broken.json") && err.contains("not valid JSON"),
        "{err}"
    );
    let err = fails(
        Some(&s),
        &[
            "hook",
            "trigger",
            "ci/push",
            "--payload-file",
            "/no/such/payload.json",
        ],
    );
    assert!(err.contains("reading /no/such/payload.json"), "{err}");

    let err = fails(Some(&s), &["hook", "put", "ci/other", "/no/such/hook.yaml"]);
    assert!(err.contains("reading /no/such/hook.yaml"), "{err}");
    let bogus = write(&dir, "bogus.yaml", "template: greet\nbogus: 1\n");
    let err = fails(Some(&s), &["hook", "put", "ci/other", &bogus]);
    assert!(err.contains("bogus.yaml: hook:"), "{err}");
    let unknown = write(&dir, "unknown.yaml", "template: nope\n");
    let err = fails(Some(&s), &["hook", "put", "ci/other", &unknown]);
    assert!(
        err.contains("unknown.yaml") && err.contains("400") && err.contains("template"),
        "{err}"
    );

    // The server's refusals read the same way.
    let err = fails(Some(&s), &["hook", "trigger", "ci/missing"]);
    assert!(err.contains("404"), "{err}");
    let err = fails(Some(&s), &["hook", "fires", "ci/push", "--limit", "0"]);
    assert!(err.contains("400") && err.contains("limit"), "{err}");

    // No token: says how to get one.
    let err = fails(None, &["hook", "list"]);
    assert!(err.contains("TASKHOOK_TOKEN"), "{err}");
}

#[tokio::test]
async fn serve_loads_hooks_from_a_directory_at_start() {
    let dir = support::fresh_dir();
    let templates = dir.join("templates");
    let hooks = dir.join("hooks");
    write(&templates, "greet.yaml", GREET);
    write(&hooks, "ci/push.yaml", &greet_hook());
    write(
        &hooks,
        "ops/nightly.yml",
        "metadata: {name: nightly}\ntemplate: greet\nschedule: ['0 3 * * *']\ninputs: {who: night}\n",
    );
    write(
        &hooks,
        "ops/plain.json",
        r#"{"template": "greet", "inputs": {"who": "{{ event.payload.who }}"}}"#,
    );
    write(&hooks, "ops/README.md", "not a hook");
    let s = Server::start_in(
        dir.join("data"),
        &[
            "--templates",
            templates.to_str().unwrap(),
            "--hooks",
            hooks.to_str().unwrap(),
        ],
    );

    let out = ok(&s, &["hook", "list"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["ci", "ops"], "{out}");
    let out = ok(&s, &["hook", "list", "ci"]);
    assert!(
        out.contains("ci/push") && out.contains("greet on push"),
        "{out}"
    );
    let out = ok(&s, &["hook", "list", "ops"]);
    assert!(
        out.contains("ops/nightly") && out.contains("ops/plain"),
        "{out}"
    );
    let out = ok(&s, &["hook", "get", "ci/push"]);
    assert!(!out.contains(SECRET), "{out}");

    let out = ok(&s, &["hook", "status", "ops/nightly"]);
    assert!(out.contains("enabled: yes"), "{out}");
    let due: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  ") && l.contains("T03:00:00"))
        .collect();
    assert_eq!(due.len(), 5, "the next five due times: {out}");
    assert!(out.contains("last fire: none"), "{out}");

    let out = ok(
        &s,
        &[
            "hook",
            "trigger",
            "ops/plain",
            "--payload",
            r#"{"who": "cy"}"#,
        ],
    );
    let task_id = out
        .lines()
        .find_map(|l| l.strip_prefix("task"))
        .unwrap()
        .trim()
        .to_string();
    let t = s.wait_state(&task_id, &["DONE"]).await;
    assert_eq!(t["steps"]["a"]["output"], "hello cy");
}

/// Runs `taskhook serve` expecting it to refuse to start; returns its stderr.
fn serve_must_fail(data: &Path, extra: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskhook"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .env("TASKHOOK_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .env_remove("TASKHOOK_HOOKS")
        .env_remove("TASKHOOK_TEMPLATES")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start taskhook serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "serve started despite bad hooks:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!status.success(), "{stdout}{stderr}");
    assert!(
        !stdout.contains("listening"),
        "it must not listen: {stdout}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[tokio::test]
async fn serve_refuses_to_start_on_bad_hook_files_naming_path_and_field() {
    let dir = support::fresh_dir();
    let data = dir.join("data");
    let templates = dir.join("templates");
    let hooks = dir.join("hooks");
    write(&templates, "greet.yaml", GREET);
    let args = [
        "--templates",
        templates.to_str().unwrap(),
        "--hooks",
        hooks.to_str().unwrap(),
    ];
    let good = write(&hooks, "ci/good.yaml", "template: greet\n");
    let cron = write(
        &hooks,
        "ci/cron.yaml",
        "template: greet\nschedule: ['*/5 * * *']\n",
    );
    let unknown = write(&hooks, "ops/unknown.yaml", "template: nope\n");
    let bogus = write(
        &hooks,
        "ops/bogus.json",
        r#"{"template": "greet", "bogus": 1}"#,
    );
    let stray = write(&hooks, "stray.yaml", "template: greet\n");
    let bad_id = write(&hooks, "ops/bad id.yaml", "template: greet\n");

    let err = serve_must_fail(&data, &args);
    assert!(err.contains("invalid hooks"), "{err}");
    for expected in [
        format!("{cron}: schedule[0]: "),
        format!("{unknown}: template: unknown template \"nope\""),
        format!("{bogus}: hook: "),
        format!("{stray}: group: "),
        format!("{bad_id}: id: "),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
    assert!(!err.contains(&good), "the good file is not blamed: {err}");

    // One bad file is enough, and its message names it.
    for f in [&cron, &unknown, &bogus, &stray, &bad_id] {
        std::fs::remove_file(f).unwrap();
    }
    let bad_secret = write(
        &hooks,
        "ci/secret.yaml",
        "template: greet\nwebhook: {provider: github, secret: ''}\n",
    );
    let err = serve_must_fail(&data, &args);
    assert!(
        err.contains(&format!("{bad_secret}: webhook.secret: ")),
        "{err}"
    );

    // All or none: the good hook was not stored by the failed starts.
    let s = Server::start_in(data, &[]);
    let out = ok(&s, &["hook", "list"]);
    assert_eq!(out.trim(), "", "{out}");
}
