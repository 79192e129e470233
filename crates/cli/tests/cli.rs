//! The CLI as a user types it: offline validation, and client commands against a real server.

mod support;

use support::{Server, taskhook};

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn template_validate_reports_every_problem_with_step_and_field() {
    let dir = support::fresh_dir();
    let good = write(
        &dir,
        "good.yaml",
        "name: good\nsteps:\n  a: {action: {type: echo, configuration: {output: 1}}}\n",
    );
    let bad = write(
        &dir,
        "bad.yaml",
        "name: bad\nsteps:\n  a: {dependencies: [ghost], action: {type: echo}}\n  b: {action: {type: http, configuration: {method: GET}}}\n",
    );
    let (code, out, _) = taskhook(None, &["template", "validate", &good]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("good.yaml: ok (good, 1 steps)"), "{out}");
    let (code, out, _) = taskhook(None, &["template", "validate", &good, &bad]);
    assert_eq!(code, 1);
    assert!(
        out.contains("bad.yaml: steps.a.dependencies[0]: unknown step \"ghost\""),
        "{out}"
    );
    assert!(
        out.contains("bad.yaml: steps.b.action.configuration"),
        "{out}"
    );
    assert!(out.contains("url"), "{out}");

    // A template calling a library function validates once the function is given.
    let f = write(
        &dir,
        "notify.yaml",
        "name: notify\naction: {type: echo, configuration: {output: '{{ function_args.msg }}'}}\n",
    );
    let uses = write(
        &dir,
        "uses.yaml",
        "name: uses\nsteps:\n  a: {action: {type: notify, configuration: {msg: hi}}}\n",
    );
    let (code, _, _) = taskhook(None, &["template", "validate", &uses]);
    assert_eq!(code, 1);
    let (code, out, _) = taskhook(None, &["template", "validate", "--functions", &f, &uses]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn client_commands_without_a_token_say_how_to_get_one() {
    let (code, _, err) = taskhook(None, &["task", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("TASKHOOK_TOKEN"), "{err}");
}

#[test]
fn retentions_past_a_century_are_refused_before_serving() {
    // Wrapped into a cut-off in the future: pruning would have deleted everything.
    let dir = support::fresh_dir();
    for flag in ["--task-retention", "--fire-retention", "--audit-retention"] {
        let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_taskhook"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .args([flag, "99999999999999d"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A server that accepted the flag would serve until killed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(status) = serve.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = serve.kill();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{flag}: {err}");
        assert!(
            err.contains(flag) && err.contains("36500d"),
            "{flag}: {err}"
        );
    }
}

#[tokio::test]
async fn put_create_watch_and_inspect_from_the_cli() {
    let s = Server::start();
    let dir = support::fresh_dir();
    let func = write(
        &dir,
        "shout.yaml",
        "name: shout\naction: {type: echo, configuration: {output: \"{{ function_args.text | upper }}\"}}\n",
    );
    let tpl = write(
        &dir,
        "hello.yaml",
        "name: hello\nauto_runnable: true\ninputs: [{name: names, collection: true}]\nsteps:\n  greet:\n    foreach: '{{ input.names }}'\n    action: {type: shout, configuration: {text: 'hello {{ iterator }}'}}\nresult_format: {greetings: \"{{ step.greet.children | map(attribute='output') | list }}\"}\n",
    );
    let (code, out, err) = taskhook(Some(&s), &["function", "put", &func]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = taskhook(Some(&s), &["template", "put", &tpl]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hello version 1"), "{out}");
    let (code, out, err) = taskhook(
        Some(&s),
        &[
            "task",
            "create",
            "hello",
            "--input",
            r#"names=["ada","bob"]"#,
            "--watch",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("step greet-1"), "{out}");
    assert!(out.contains("DONE"), "{out}");
    assert!(
        out.contains(r#"result: {"greetings":["HELLO ADA","HELLO BOB"]}"#),
        "{out}"
    );
    let id = out.split_whitespace().next().unwrap().to_string();

    let (code, out, _) = taskhook(Some(&s), &["task", "get", &id, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "DONE");
    let (_, out, _) = taskhook(Some(&s), &["task", "list"]);
    assert!(out.contains(&id), "{out}");
    let (_, out, _) = taskhook(Some(&s), &["task", "events", &id]);
    assert!(
        out.contains("created") && out.contains("RUNNING -> DONE"),
        "{out}"
    );

    // Bad input is a readable message and a failing exit code.
    let (code, _, err) = taskhook(
        Some(&s),
        &["task", "create", "hello", "--input", "names=notalist"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("400") && err.contains("inputs.names"), "{err}");
    let (code, _, err) = taskhook(Some(&s), &["task", "cancel", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("409"), "{err}");
}
