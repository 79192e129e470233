//! Configurable limits as a user meets them: `serve` flags, the API's refusals (status and
//! field, nothing stored), `--templates` loading and offline `template validate`.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Server, fresh_dir, taskhook};

fn steps_yaml(name: &str, n: usize) -> String {
    let mut y = format!("name: {name}\nauto_runnable: true\nsteps:\n");
    for i in 0..n {
        y.push_str(&format!("  s{i}: {{action: {{type: echo}}}}\n"));
    }
    y
}

/// A template of `name` padded with a description to at least `bytes`.
fn padded_yaml(name: &str, bytes: usize) -> String {
    let base = steps_yaml(name, 1);
    format!("description: {}\n{base}", "d".repeat(bytes))
}

fn limited() -> Server {
    Server::start_in(
        fresh_dir(),
        &[
            "--max-body-bytes",
            "4KiB",
            "--max-template-bytes",
            "1000",
            "--max-steps",
            "2",
            "--max-foreach-items",
            "3",
            "--max-step-output-bytes",
            "1000",
        ],
    )
}

#[tokio::test]
async fn template_limits_refuse_with_status_and_field_and_store_nothing() {
    let s = limited();
    let put = |name: &'static str, body: String| {
        let s = &s;
        async move {
            s.req(
                reqwest::Method::PUT,
                &format!("/api/v1/templates/{name}"),
                Some((&body, "application/yaml")),
            )
            .await
        }
    };

    // Over --max-template-bytes (but under --max-body-bytes): 413 naming `template`.
    let (st, ct, v) = put("big", padded_yaml("big", 1100)).await;
    assert_eq!(st, 413, "{v}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(v["field"], "template", "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("the limit is 1000 bytes"),
        "{v}"
    );
    let (st, ct, v) = s
        .req(
            reqwest::Method::POST,
            "/api/v1/templates/validate",
            Some((&padded_yaml("big", 1100), "application/yaml")),
        )
        .await;
    assert_eq!((st, ct.as_str()), (413, "application/problem+json"), "{v}");
    assert_eq!(v["field"], "template", "{v}");

    // Over --max-body-bytes: 413 before the template is looked at.
    let (st, _, v) = put("huge", padded_yaml("huge", 5000)).await;
    assert_eq!(st, 413, "{v}");

    // Over --max-steps: 400 naming `steps`.
    let (st, ct, v) = put("many", steps_yaml("many", 3)).await;
    assert_eq!((st, ct.as_str()), (400, "application/problem+json"), "{v}");
    assert_eq!(v["field"], "steps", "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("3 steps; the limit is 2"),
        "{v}"
    );
    let (st, _, v) = s
        .req(
            reqwest::Method::POST,
            "/api/v1/templates/validate",
            Some((&steps_yaml("many", 3), "application/yaml")),
        )
        .await;
    assert_eq!((st, v["field"].as_str()), (400, Some("steps")), "{v}");

    // Nothing was stored.
    for name in ["big", "huge", "many"] {
        let (st, _) = s.get(&format!("/api/v1/templates/{name}")).await;
        assert_eq!(st, 404, "{name}");
    }
    let (_, list) = s.get("/api/v1/templates").await;
    assert_eq!(list, json!([]));

    // Within the limits, accepted.
    let (st, _, v) = put("two", steps_yaml("two", 2)).await;
    assert_eq!(st, 201, "{v}");
    let (st, _, v) = put("padded", padded_yaml("padded", 800)).await;
    assert_eq!(st, 201, "{v}");
}

#[tokio::test]
async fn run_time_limits_end_the_step_fatal_with_a_clear_error() {
    let s = limited();
    let fan = "name: fan\nauto_runnable: true\ninputs: [{name: items, collection: true}]\nsteps:\n  each:\n    foreach: '{{ input.items }}'\n    action: {type: echo, configuration: {output: '{{ iterator }}'}}\n";
    let (st, v) = s.put_template("fan", fan).await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "fan", "inputs": {"items": ["a", "b", "c", "d"]}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let t = s
        .wait_state(v["id"].as_str().unwrap(), &["BLOCKED", "DONE"])
        .await;
    assert_eq!(t["state"], "BLOCKED", "{t:#}");
    assert_eq!(t["steps"]["each"]["state"], "FATAL_ERROR");
    let error = t["steps"]["each"]["error"].as_str().unwrap();
    assert!(
        error.contains("foreach gave 4 items; the limit is 3"),
        "{error}"
    );
    assert!(t["steps"].get("each-0").is_none(), "{t:#}");

    let out = "name: out\nauto_runnable: true\ninputs: [{name: n, type: number}]\nsteps:\n  big:\n    action: {type: echo, configuration: {output: \"{{ 'x' * input.n }}\"}}\n";
    let (st, v) = s.put_template("out", out).await;
    assert_eq!(st, 201, "{v}");
    let (_, v) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "out", "inputs": {"n": 2000}}),
        )
        .await;
    let t = s
        .wait_state(v["id"].as_str().unwrap(), &["BLOCKED", "DONE"])
        .await;
    assert_eq!(t["state"], "BLOCKED", "{t:#}");
    let big = &t["steps"]["big"];
    assert_eq!(big["state"], "FATAL_ERROR");
    assert!(big["output"].is_null(), "{big}");
    let error = big["error"].as_str().unwrap();
    assert!(error.contains("the limit is 1000"), "{error}");
    assert!(error.contains("--max-step-output-bytes"), "{error}");

    let (_, v) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "out", "inputs": {"n": 500}}),
        )
        .await;
    let t = s.wait_state(v["id"].as_str().unwrap(), &["DONE"]).await;
    assert_eq!(t["steps"]["big"]["output"].as_str().unwrap().len(), 500);
}

/// `taskhook serve` on `dir` with `args`, its stdout dropped and its stderr as given.
fn spawn_serve(dir: &std::path::Path, args: &[&str], stderr: Stdio) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_taskhook"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("TASKHOOK_ADMIN_TOKEN", support::TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Runs `taskhook serve` expecting it to stop by itself within 20 s; returns its exit code
/// and stderr.
fn serve_expecting_exit(args: &[&str]) -> (i32, String) {
    let mut child = spawn_serve(&fresh_dir(), args, Stdio::piped());
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("taskhook serve {args:?} kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn templates_dir_loading_applies_the_limits() {
    let dir = fresh_dir();
    std::fs::write(dir.join("many.yaml"), steps_yaml("many", 3)).unwrap();
    std::fs::write(dir.join("big.yaml"), padded_yaml("big", 2000)).unwrap();
    let templates = dir.to_string_lossy().into_owned();
    let (code, err) = serve_expecting_exit(&[
        "--templates",
        &templates,
        "--max-steps",
        "2",
        "--max-template-bytes",
        "1KiB",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("many.yaml: steps: the template has 3 steps; the limit is 2"),
        "{err}"
    );
    assert!(
        err.contains("big.yaml: template: the template document is"),
        "{err}"
    );
}

#[test]
fn bad_limit_values_are_refused_naming_the_flag() {
    for (flag, value) in [
        ("--max-steps", "0"),
        ("--max-foreach-items", "many"),
        ("--max-template-bytes", "1MB"),
        ("--max-step-output-bytes", "0"),
        ("--max-body-bytes", "-5"),
    ] {
        let (code, err) = serve_expecting_exit(&[&format!("{flag}={value}")]);
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
    // The environment variables are read the same way.
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskhook"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(fresh_dir())
        .env("TASKHOOK_MAX_STEPS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve kept running");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-steps"));
}

#[test]
fn serve_help_lists_every_limit_with_its_default_and_env() {
    let (code, out, _) = taskhook(None, &["serve", "--help"]);
    assert_eq!(code, 0);
    for (flag, env, default) in [
        ("--max-body-bytes", "TASKHOOK_MAX_BODY_BYTES", "1MiB"),
        (
            "--max-template-bytes",
            "TASKHOOK_MAX_TEMPLATE_BYTES",
            "256KiB",
        ),
        ("--max-steps", "TASKHOOK_MAX_STEPS", "500"),
        ("--max-foreach-items", "TASKHOOK_MAX_FOREACH_ITEMS", "10000"),
        (
            "--max-step-output-bytes",
            "TASKHOOK_MAX_STEP_OUTPUT_BYTES",
            "1MiB",
        ),
    ] {
        let at = out
            .find(flag)
            .unwrap_or_else(|| panic!("{flag} missing:\n{out}"));
        // Up to the next option's line.
        let rest = &out[at..];
        let next = rest
            .match_indices('\n')
            .find(|(i, _)| rest[i + 1..].trim_start().starts_with('-'))
            .map_or(out.len(), |(i, _)| at + i);
        let section = &out[at..next];
        assert!(section.contains(env), "{section}");
        assert!(
            section.contains(&format!("[default: {default}]")),
            "{section}"
        );
    }
}

#[test]
fn offline_validate_applies_the_default_limits() {
    let dir = fresh_dir();
    let many = dir.join("many.yaml");
    std::fs::write(&many, steps_yaml("many", 501)).unwrap();
    let big = dir.join("big.yaml");
    std::fs::write(&big, padded_yaml("big", 300 * 1024)).unwrap();
    let ok = dir.join("ok.yaml");
    std::fs::write(&ok, steps_yaml("ok", 500)).unwrap();
    let (code, out, _) = taskhook(
        None,
        &[
            "template",
            "validate",
            &many.to_string_lossy(),
            &big.to_string_lossy(),
            &ok.to_string_lossy(),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("many.yaml: steps: the template has 501 steps; the limit is 500"),
        "{out}"
    );
    assert!(
        out.contains("big.yaml: template: the template document is"),
        "{out}"
    );
    assert!(out.contains("ok.yaml: ok (ok, 500 steps)"), "{out}");
}

/// The template that used to grow to tens of gigabytes (and, being idempotent, crash the
/// server again at every restart) now fails its step with a clear error; the server stays up.
#[tokio::test]
async fn a_template_growing_its_input_without_bound_fails_its_step_not_the_server() {
    let s = Server::start();
    let grow = "name: grow\nauto_runnable: true\ninputs: [{name: s}]\nsteps:\n  big:\n    idempotent: true\n    action: {type: echo, configuration: {output: \"{{ input.s | regex_replace('x', input.s) | length }}\"}}\n";
    let (st, v) = s.put_template("grow", grow).await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "grow", "inputs": {"s": "x".repeat(100_000)}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let t = s
        .wait_state(v["id"].as_str().unwrap(), &["BLOCKED", "DONE"])
        .await;
    assert_eq!(t["state"], "BLOCKED", "{t:#}");
    let error = t["steps"]["big"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("rendering stopped"), "{t:#}");
    let (st, _) = s.get("/api/v1/tasks").await;
    assert_eq!(st, 200, "the server is still up");
}

/// A task whose runs keep taking the process down (here a step kills the server) runs at most
/// `--max-task-crashes` times; then it is BLOCKED with the reason and the server stays up.
#[tokio::test]
async fn a_task_that_keeps_crashing_the_server_is_blocked_after_the_limit() {
    let dir = fresh_dir();
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let script = scripts.join("crash.sh");
    // Gives the API time to answer the creation, then kills the server running it.
    std::fs::write(&script, "#!/bin/sh\nsleep 1\nkill -9 $PPID\nsleep 5\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let flags = [
        "--scripts-dir",
        scripts.to_str().unwrap(),
        "--max-task-crashes",
        "2",
    ];
    let poison = "name: poison\nauto_runnable: true\nsteps:\n  crash:\n    idempotent: true\n    action: {type: script, configuration: {file: crash.sh}}\n";
    let mut s = Server::start_in(dir.clone(), &flags);
    assert_eq!(s.put_template("poison", poison).await.0, 201);
    let (st, v) = s.post("/api/v1/tasks", json!({"template": "poison"})).await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert!(
        s.wait_exit(Duration::from_secs(20)).await.is_some(),
        "the step killed the server"
    );
    // Each start recovers the task and runs it again, until it has crashed the server twice.
    let mut crashes = 1;
    loop {
        let mut child = spawn_serve(&dir, &flags, Stdio::null());
        let deadline = Instant::now() + Duration::from_secs(6);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        crashes += 1;
        assert!(crashes <= 2, "the task crashed the server {crashes} times");
    }
    assert_eq!(crashes, 2);
    let s = Server::start_in(dir, &flags);
    let t = s.wait_state(&id, &["BLOCKED"]).await;
    let step = &t["steps"]["crash"];
    assert_eq!(step["state"], "CRASHED", "{t:#}");
    let error = step["error"].as_str().unwrap();
    assert!(error.contains("stopped 2 times in a row"), "{error}");
    let (st, ev) = s.get(&format!("/api/v1/tasks/{id}/events")).await;
    assert_eq!(st, 200);
    let blocked = ev
        .as_array()
        .and_then(|a| a.iter().find(|e| e["kind"] == "blocked"))
        .cloned()
        .unwrap_or_else(|| panic!("no blocked entry: {ev:#}"));
    assert_eq!(blocked["detail"]["crashes"], 2, "{blocked}");
}
