//! µTask's action configurations run unchanged: the `script` plugin's `file_path`,
//! `environment`, `output_mode` and `exit_codes_unrecoverable`, with its metadata; the
//! `subtask` plugin's `input`, `json_input`, `resolver_usernames`, `delay` and `tags`.

mod support;

use std::path::Path;

use serde_json::json;
use support::{Server, fresh_dir};

fn write_script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// A server whose scripts directory holds `scripts` (name, body).
fn server_with_scripts(scripts: &[(&str, &str)]) -> Server {
    let data = fresh_dir();
    let dir = data.join("scripts");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, body) in scripts {
        write_script(&dir, name, body);
    }
    Server::start_in(data, &["--scripts-dir", dir.to_str().unwrap()])
}

/// As µTask's script plugin documents it: `file_path`, `argv`, `timeout`, `output_mode`,
/// `environment` (with `eval`), and `exit_codes_unrecoverable`.
const SCRIPTS: &str = r#"
name: utask-script
description: µTask script steps
auto_runnable: true
inputs:
  - name: who
variables:
  - name: foo
    value: 'bar for {{ .input.who }}'
steps:
  hello:
    action:
      type: script
      configuration:
        file_path: hello-world.sh
        argv:
          - '{{ .input.who }}'
        timeout: "25s"
        output_mode: manual-lastline
        environment:
          FOO: '{{eval `foo`}}'
          COUNT: 3
  report:
    dependencies: [hello]
    action:
      type: echo
      configuration:
        output:
          said: '{{ .step.hello.output.dumb_string }}'
          state: '{{ .step.hello.metadata.process_state }}'
  reject:
    dependencies: [hello]
    action:
      type: script
      configuration:
        file_path: reject.sh
        exit_codes_unrecoverable:
          - "1-6"
          - "7"
          - "100"
"#;

#[tokio::test]
async fn a_utask_script_step_runs_unchanged() {
    let s = server_with_scripts(&[
        (
            "hello-world.sh",
            r#"echo "Hello world script"
echo "{\"dumb_string\":\"Hello $1!\",\"foo\":\"$FOO\",\"count\":\"$COUNT\",\"task\":\"$UTASK_TASK_ID\"}""#,
        ),
        ("reject.sh", "echo 'invalid parameters' >&2\nexit 7"),
    ]);
    let (st, v) = s.put_template("utask-script", SCRIPTS).await;
    assert_eq!(st, 201, "{v:#}");
    let (st, c) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "utask-script", "inputs": {"who": "ada"}}),
        )
        .await;
    assert_eq!(st, 201, "{c:#}");
    let id = c["id"].as_str().unwrap();
    let t = s.wait_state(id, &["BLOCKED", "DONE"]).await;
    assert_eq!(t["state"], "BLOCKED", "{t:#}");

    let hello = &t["steps"]["hello"];
    assert_eq!(hello["state"], "DONE", "{t:#}");
    // The last line of stdout, read as JSON.
    assert_eq!(
        hello["output"],
        json!({"dumb_string": "Hello ada!", "foo": "bar for ada", "count": "3", "task": id}),
        "{t:#}"
    );
    let m = &hello["metadata"];
    assert_eq!(m["process_state"], "exit status 0", "{m:#}");
    assert_eq!(m["error"], "", "{m:#}");
    assert!(
        m["output"]
            .as_str()
            .unwrap()
            .starts_with("Hello world script\n{"),
        "{m:#}"
    );
    assert!(
        m["execution_time"].as_str().unwrap().ends_with('s'),
        "{m:#}"
    );
    assert_eq!(
        t["steps"]["report"]["output"],
        json!({"said": "Hello ada!", "state": "exit status 0"}),
        "{t:#}"
    );

    // Exit code 7 is listed as unrecoverable: a client error, not retried.
    let reject = &t["steps"]["reject"];
    assert_eq!(reject["state"], "CLIENT_ERROR", "{t:#}");
    assert_eq!(
        reject["metadata"]["process_state"], "exit status 7",
        "{t:#}"
    );
    let error = reject["error"].as_str().unwrap_or_default();
    assert!(error.contains("exited with code 7"), "{t:#}");
    assert!(error.contains("invalid parameters"), "{t:#}");
}

#[tokio::test]
async fn utask_script_fields_are_checked_when_the_template_is_put() {
    let s = Server::start();
    for (config, field) in [
        ("{file_path: x.sh, output_mode: auto-result}", "output_mode"),
        (
            "{file_path: x.sh, output_manual_delimiters: [a, b]}",
            "output_manual_delimiters",
        ),
        (
            "{file_path: x.sh, exit_codes_unrecoverable: ['10-2']}",
            "exit_codes_unrecoverable[0]",
        ),
        ("{file: x.sh, file_path: x.sh}", "file_path"),
    ] {
        let yaml = format!(
            "name: bad\nsteps:\n  s:\n    action:\n      type: script\n      configuration: {config}\n"
        );
        let (st, v) = s.put_template("bad", &yaml).await;
        assert_eq!(st, 400, "{config}: {v:#}");
        assert!(v.to_string().contains(field), "{config}: {v:#}");
    }
}

const CHILD: &str = r#"
name: utask-child
description: a subtask
auto_runnable: true
inputs:
  - name: who
  - name: extra
steps:
  greet:
    action:
      type: echo
      configuration:
        output: 'hello {{ .input.who }} {{ .input.extra }}'
"#;

/// As µTask's subtask plugin documents it: `input`, `json_input`, people as JSON text,
/// `delay` and `tags`.
const PARENT: &str = r#"
name: utask-parent
description: starts a µTask-style subtask
auto_runnable: true
inputs:
  - name: who
steps:
  prepare:
    action:
      type: echo
      configuration:
        output: {extra: 'from json_input'}
  child:
    dependencies: [prepare]
    action:
      type: subtask
      configuration:
        template: utask-child
        input:
          who: '{{ .input.who }}'
        json_input: '{{ .step.prepare.output | toJson }}'
        resolver_usernames: '["ada", "bob"]'
        watcher_usernames: '["carol"]'
        resolver_groups: '[]'
        delay: 2s
        tags:
          team: core
"#;

#[tokio::test]
async fn a_utask_subtask_step_runs_unchanged() {
    let s = Server::start();
    for (name, yaml) in [("utask-child", CHILD), ("utask-parent", PARENT)] {
        let (st, v) = s.put_template(name, yaml).await;
        assert_eq!(st, 201, "{name}: {v:#}");
    }
    let (st, c) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "utask-parent", "inputs": {"who": "ada"}}),
        )
        .await;
    assert_eq!(st, 201, "{c:#}");
    let parent_id = c["id"].as_str().unwrap();
    let parent = s
        .wait_state(parent_id, &["WAITING", "BLOCKED", "DONE"])
        .await;
    assert_eq!(parent["state"], "WAITING", "{parent:#}");
    let child_id = parent["steps"]["child"]["metadata"]["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{parent:#}"))
        .to_string();

    let (_, child) = s.get(&format!("/api/v1/tasks/{child_id}")).await;
    assert_eq!(child["parent_id"], parent_id, "{child:#}");
    assert_eq!(
        child["inputs"],
        json!({"who": "ada", "extra": "from json_input"}),
        "{child:#}"
    );
    assert_eq!(
        child["resolver_usernames"],
        json!(["ada", "bob"]),
        "{child:#}"
    );
    assert_eq!(child["watcher_usernames"], json!(["carol"]), "{child:#}");
    assert_eq!(child["tags"]["team"], "core", "{child:#}");
    assert_eq!(
        child["tags"]["_utask_parent_task_id"], parent_id,
        "{child:#}"
    );
    // Delayed: due two seconds after its creation, not run before.
    assert_eq!(child["state"], "READY", "{child:#}");
    let at = |field: &str| -> jiff::Timestamp { child[field].as_str().unwrap().parse().unwrap() };
    let wait = at("next_run_at").duration_since(at("created_at"));
    assert!(
        wait >= jiff::SignedDuration::from_millis(1900),
        "{wait:?}: {child:#}"
    );

    let parent = s.wait_state(parent_id, &["DONE", "BLOCKED"]).await;
    assert_eq!(parent["state"], "DONE", "{parent:#}");
    let (_, child) = s.get(&format!("/api/v1/tasks/{child_id}")).await;
    assert_eq!(child["state"], "DONE", "{child:#}");
    assert_eq!(
        child["steps"]["greet"]["output"], "hello ada from json_input",
        "{child:#}"
    );
}

#[tokio::test]
async fn utask_subtask_groups_are_refused_when_the_template_is_put() {
    let s = Server::start();
    let yaml = "name: bad\nsteps:\n  s:\n    action:\n      type: subtask\n      configuration:\n        template: c\n        resolver_groups: '[\"ops\"]'\n";
    let (st, v) = s.put_template("bad", yaml).await;
    assert_eq!(st, 400, "{v:#}");
    assert!(v.to_string().contains("resolver_groups"), "{v:#}");
    assert!(v.to_string().contains("no user groups"), "{v:#}");
}

/// µTask's `subtask` output is its summary of the child: `id`, `state`, `result`,
/// `resolver_username`, `requester_username`; a µTask template reads the child's result as
/// `.step.X.output.result`.
#[tokio::test]
async fn a_utask_subtask_output_is_utasks_summary_of_the_child() {
    let s = Server::start();
    let child = r#"
name: summary-child
auto_runnable: true
inputs:
  - name: who
steps:
  greet:
    action:
      type: echo
      configuration:
        output: {greeting: 'hello {{ .input.who }}'}
result_format:
  greeting: '{{ .step.greet.output.greeting }}'
"#;
    let parent = r#"
name: summary-parent
auto_runnable: true
steps:
  child:
    action:
      type: subtask
      configuration:
        template: summary-child
        input: {who: ada}
  after:
    dependencies: [child]
    action:
      type: echo
      configuration:
        output: '{{ .step.child.output.result.greeting }} ({{ .step.child.output.state }}, {{ .step.child.output.id | len }})'
"#;
    for (name, yaml) in [("summary-child", child), ("summary-parent", parent)] {
        let (st, v) = s.put_template(name, yaml).await;
        assert_eq!(st, 201, "{name}: {v:#}");
    }
    let (_, c) = s
        .post("/api/v1/tasks", json!({"template": "summary-parent"}))
        .await;
    let t = s
        .wait_state(c["id"].as_str().unwrap(), &["DONE", "BLOCKED"])
        .await;
    assert_eq!(t["state"], "DONE", "{t:#}");
    let out = &t["steps"]["child"]["output"];
    let child_id = t["steps"]["child"]["metadata"]["task_id"].as_str().unwrap();
    assert_eq!(
        out,
        &json!({
            "id": child_id,
            "state": "DONE",
            "result": {"greeting": "hello ada"},
            "resolver_username": "",
            "requester_username": format!("task:{}", c["id"].as_str().unwrap()),
        }),
        "{t:#}"
    );
    assert_eq!(
        t["steps"]["after"]["output"],
        format!("hello ada (DONE, {})", child_id.len()),
        "{t:#}"
    );
}
