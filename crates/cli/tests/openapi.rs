//! The OpenAPI document describes the API exactly: schemathesis (every check) drives the real
//! server from the document alone and finds no answer the document does not allow. The server
//! runs as a user starts it, on a fresh data directory seeded with a template, a function, a
//! task, a hook, a secret and a token that path parameters name (see `schemathesis.toml`).
//!
//! Needs `schemathesis` (`.ci/run` installs it); without it the test says so and passes,
//! unless TASKHOOK_TEST_REQUIRE_SERVICES=1.

mod support;

use std::process::Command;
use std::time::Instant;

use serde_json::json;
use support::{Server, TOKEN};

/// Test cases per operation, and the time budget of the run over every operation but
/// maintenance mode, in seconds.
const MAX_EXAMPLES: &str = "25";
const MAX_SECONDS: &str = "150";

fn services_required() -> bool {
    std::env::var("TASKHOOK_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// schemathesis as `.ci/run` installs it: a module of the `python3` that pip installed it for.
fn schemathesis() -> Command {
    let mut command = Command::new("python3");
    command.args(["-m", "schemathesis.cli"]);
    command
}

/// Whether schemathesis is installed; says so when it is not.
fn schemathesis_installed() -> bool {
    let found = schemathesis()
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !services_required(),
            "schemathesis is required (TASKHOOK_TEST_REQUIRE_SERVICES=1) but not installed"
        );
        eprintln!("SKIPPED: schemathesis is not installed (python3 -m pip install schemathesis)");
    }
    found
}

const TEMPLATE: &str = "name: alpha\nauto_runnable: true\nsteps:\n  a: {action: {type: echo, configuration: {output: {x: 1}}}}\n";

#[tokio::test]
async fn the_api_keeps_to_its_openapi_document() {
    if !schemathesis_installed() {
        return;
    }
    let s = Server::start();
    // The seeded objects.
    assert_eq!(s.put_template("alpha", TEMPLATE).await.0, 201);
    let function = "name: fa\naction: {type: echo, configuration: {output: {}}}\n";
    let (code, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/functions/fa",
            Some((function, "application/yaml")),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let (code, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/hooks/g/h",
            Some(("template: alpha\n", "application/yaml")),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let (code, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/secrets/s1",
            Some((r#"{"value": "v"}"#, "application/json")),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let (code, task) = s.post("/api/v1/tasks", json!({"template": "alpha"})).await;
    assert_eq!(code, 201, "{task}");
    let (code, token) = s
        .post("/api/v1/tokens", json!({"scopes": ["tasks:read:alpha"]}))
        .await;
    assert_eq!(code, 201, "{token}");
    let (_, trigger) = s.get("/api/v1/hooks/g/h/token").await;

    let config = include_str!("schemathesis.toml")
        .replace("{task}", task["id"].as_str().unwrap())
        .replace("{token_id}", token["id"].as_str().unwrap())
        .replace("{trigger_token}", trigger["token"].as_str().unwrap());
    let config_file = s.data_dir.join("schemathesis.toml");
    std::fs::write(&config_file, config).unwrap();
    let started = Instant::now();
    // Maintenance mode last and alone: once turned on, it answers every write with 503.
    let everything_else = fuzz(
        &s,
        &config_file,
        &["--exclude-operation-id", "put_maintenance"],
        MAX_SECONDS,
    );
    let maintenance = fuzz(
        &s,
        &config_file,
        &["--include-operation-id", "put_maintenance"],
        "30",
    );
    eprintln!(
        "schemathesis ran for {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        everything_else && maintenance,
        "schemathesis found answers the OpenAPI document does not allow (above)"
    );
}

/// Runs schemathesis over the operations `filter` selects; whether it found nothing wrong.
fn fuzz(s: &Server, config_file: &std::path::Path, filter: &[&str], max_seconds: &str) -> bool {
    let out = schemathesis()
        .current_dir(&s.data_dir)
        .args(["--no-color", "--config-file"])
        .arg(config_file)
        .args(["run", &format!("{}/api/openapi.json", s.url)])
        .args(filter)
        // Every check runs unless schemathesis.toml turns one off for an operation (an
        // explicit `--checks all` would override those).
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--max-time", max_seconds, "--seed", "1"])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .output()
        .expect("run schemathesis");
    eprintln!(
        "schemathesis {filter:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success()
}
