//! µTask templates, written in Go's `text/template` syntax, run unchanged: the language is
//! told from the strings (or set with `language: go`), validation checks them as Go, and a
//! template never mixes the two languages.

mod support;

use serde_json::json;
use support::Server;

/// In the manner of µTask's documentation: a skip condition on an input, a foreach over a
/// JSON list with `.iterator`, a second foreach over the first one's children through
/// `toJson`, Go's `if`/`else`, Sprig functions, and a variable read with `eval`.
const USERS: &str = r#"
name: users
description: Create users, µTask style
auto_runnable: true
inputs:
  - name: runType
    legal_values: [dry, wet]
  - name: id
  - name: nickname
    optional: true
variables:
  - name: greeting
    value: 'hello {{ .input.id }}'
title_format: 'users for {{ .input.id }}'
steps:
  createUser:
    description: Create new user
    action:
      type: echo
      configuration:
        output: {created: '{{ .input.id | upper }}'}
    conditions:
      - type: skip
        if:
          - value: '{{.input.runType}}'
            operator: EQ
            expected: dry
        then:
          this: DONE
        message: Dry run, skip user creation
  prefixStrings:
    foreach: '[{"id":"a"},{"id":"b"},{"id":"c"}]'
    action:
      type: echo
      configuration:
        output:
          prefixed: pre-{{.iterator.id}}
  again:
    dependencies: [prefixStrings]
    foreach: '{{.step.prefixStrings.children | toJson}}'
    action:
      type: echo
      configuration:
        output: '{{ .iterator.output.prefixed }}!'
  summary:
    dependencies: [createUser, again]
    action:
      type: echo
      configuration:
        output:
          mode: '{{ if eq .input.runType "dry" }}nothing done{{ else }}created {{ .step.createUser.output.created }}{{ end }}'
          greeting: '{{ eval "greeting" }}'
          fallback: '{{ .input.nickname | default "none" }}'
          hash: '{{ printf "%s-%s" .input.id .input.runType | sha1sum | trunc 8 }}'
          items: '{{ range .step.prefixStrings.children }}{{ .metadata.iterator.id }}{{ end }}'
"#;

#[tokio::test]
async fn a_utask_template_in_go_syntax_runs_unchanged() {
    let s = Server::start();
    let (st, v) = s.put_template("users", USERS).await;
    assert_eq!(st, 201, "{v:#}");
    for (run, mode) in [("wet", "created ADA"), ("dry", "nothing done")] {
        let (st, c) = s
            .post(
                "/api/v1/tasks",
                json!({"template": "users", "inputs": {"runType": run, "id": "ada"}}),
            )
            .await;
        assert_eq!(st, 201, "{c:#}");
        let t = s
            .wait_state(c["id"].as_str().unwrap(), &["DONE", "BLOCKED"])
            .await;
        assert_eq!(t["state"], "DONE", "{t:#}");
        assert_eq!(t["title"], "users for ada");
        let out = &t["steps"]["summary"]["output"];
        assert_eq!(out["mode"], mode, "{t:#}");
        assert_eq!(out["greeting"], "hello ada");
        assert_eq!(out["fallback"], "none");
        // A foreach's children as µTask gives them: the item under `metadata.iterator`.
        assert_eq!(out["items"], "abc", "{out:#}");
        // sha1("ada-wet") / sha1("ada-dry"), first 8 hex digits.
        let hash = out["hash"].as_str().unwrap();
        assert_eq!(hash.len(), 8, "{out:#}");
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{out:#}");
        let mut again: Vec<&str> = t["steps"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(n, _)| n.starts_with("again-"))
            .map(|(_, s)| s["output"].as_str().unwrap())
            .collect();
        again.sort();
        assert_eq!(again, vec!["pre-a!", "pre-b!", "pre-c!"], "{t:#}");
        let created = &t["steps"]["createUser"];
        if run == "dry" {
            assert!(created["output"].is_null(), "skipped: {t:#}");
        } else {
            assert_eq!(created["output"], json!({"created": "ADA"}));
        }
    }
}

#[tokio::test]
async fn go_templates_are_validated_as_go_and_never_mixed_with_minijinja() {
    let s = Server::start();
    let cases = [
        // A typo in a variable, an unknown function, a Go syntax error: each names its field.
        (
            "name: t\nauto_runnable: true\ninputs: [{name: id}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ .inptu.id }}'}}}\n",
            "steps.a.action.configuration.output",
            "inptu",
        ),
        (
            "name: t\nauto_runnable: true\ninputs: [{name: id}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ .input.id | nosuchfn }}'}}}\n",
            "steps.a.action.configuration.output",
            "nosuchfn",
        ),
        (
            "name: t\nauto_runnable: true\ninputs: [{name: id}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ if .input.id }}x'}}}\n",
            "steps.a.action.configuration.output",
            "",
        ),
        (
            "name: t\nauto_runnable: true\ninputs: [{name: id}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ .input.nope }}'}}}\n",
            "steps.a.action.configuration.output",
            "nope",
        ),
        // Both languages in one template.
        (
            "name: t\nauto_runnable: true\ninputs: [{name: id}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ .input.id }}'}}}\n  b: {action: {type: echo, configuration: {output: '{{ input.id }}'}}}\n",
            "language",
            "mixes",
        ),
        // Told to be Go, a MiniJinja string is a Go error.
        (
            "name: t\nlanguage: go\nauto_runnable: true\ninputs: [{name: id}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ input.id | upper }}'}}}\n",
            "steps.a.action.configuration.output",
            "input",
        ),
    ];
    for (yaml, field, needle) in cases {
        let (st, v) = s.put_template("t", yaml).await;
        assert_eq!(st, 400, "{yaml}\n{v:#}");
        let errors = v["errors"].as_array().unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e["field"] == field && e["message"].as_str().unwrap().contains(needle)),
            "{yaml}\n{v:#}"
        );
    }
    assert_eq!(
        s.get("/api/v1/templates/t").await.0,
        404,
        "nothing was stored"
    );
    // A string neither language claims runs in the one the template names.
    let yaml = "name: t\nlanguage: go\nauto_runnable: true\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ \"plain\" | printf \"%s!\" }}'}}}\n";
    let (st, v) = s.put_template("t", yaml).await;
    assert_eq!(st, 201, "{v:#}");
    let (_, c) = s.post("/api/v1/tasks", json!({"template": "t"})).await;
    let t = s
        .wait_state(c["id"].as_str().unwrap(), &["DONE", "BLOCKED"])
        .await;
    assert_eq!(t["steps"]["a"]["output"], "plain!", "{t:#}");
    // taskhook's own templates are unchanged.
    let yaml = "name: j\nauto_runnable: true\ninputs: [{name: id}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ input.id | upper }}'}}}\n";
    assert_eq!(s.put_template("j", yaml).await.0, 201);
    let (_, c) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "j", "inputs": {"id": "x"}}),
        )
        .await;
    let t = s
        .wait_state(c["id"].as_str().unwrap(), &["DONE", "BLOCKED"])
        .await;
    assert_eq!(t["steps"]["a"]["output"], "X", "{t:#}");
}

/// The check condition of µTask's documentation: a 404 read from `HTTPStatus` puts the step
/// in a custom state, and the step waiting for that state runs.
#[tokio::test]
async fn a_check_condition_reads_utask_http_metadata() {
    let target = support::target().await;
    let s = Server::start();
    let tpl = format!(
        r#"
name: lookup
auto_runnable: true
inputs: [{{name: id}}]
steps:
  getUser:
    description: Get user
    custom_states: [NOT_FOUND]
    action:
      type: http
      configuration:
        url: {target}/missing?user={{{{.input.id}}}}
        method: GET
    conditions:
    - type: check
      if:
      - value: '{{{{.step.getUser.metadata.HTTPStatus}}}}'
        operator: EQ
        expected: '404'
      then:
        this: NOT_FOUND
      message: User {{{{.input.id}}}} not found
  createUser:
    description: Create the user
    dependencies: ["getUser:NOT_FOUND"]
    action:
      type: echo
      configuration:
        output: 'created {{{{.input.id}}}}'
"#
    );
    let (st, v) = s.put_template("lookup", &tpl).await;
    assert_eq!(st, 201, "{v:#}");
    let (_, c) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "lookup", "inputs": {"id": "ada"}}),
        )
        .await;
    let t = s
        .wait_state(c["id"].as_str().unwrap(), &["DONE", "BLOCKED"])
        .await;
    assert_eq!(t["state"], "DONE", "{t:#}");
    assert_eq!(t["steps"]["getUser"]["state"], "NOT_FOUND", "{t:#}");
    assert_eq!(t["steps"]["createUser"]["output"], "created ada");
}

/// µTask's `.config.NAME` reads a named secret, as JSON when it is JSON; what it holds is
/// masked in whatever the task shows, like any secret.
#[tokio::test]
async fn config_reads_a_secret_as_json() {
    let s = Server::start();
    let (st, _, v) = s
        .req(
            reqwest::Method::PUT,
            "/api/v1/secrets/apiovh",
            Some((
                &json!({"value": r#"{"basePath": "https://api.example.net/1.0", "consumerKey": "ck-very-secret"}"#}).to_string(),
                "application/json",
            )),
        )
        .await;
    assert!(st == 201 || st == 200, "{st} {v:#}");
    let tpl = r#"
name: ovh
auto_runnable: true
steps:
  call:
    custom_states: [CONFIGURED]
    action:
      type: echo
      configuration:
        output:
          url: '{{ .config.apiovh.basePath }}/me'
          key: 'key={{ .config.apiovh.consumerKey }}'
    conditions:
      - type: check
        if:
          - value: '{{ .config.apiovh.basePath }}|{{ .config.apiovh.consumerKey }}'
            operator: EQ
            expected: 'https://api.example.net/1.0|ck-very-secret'
        then:
          this: CONFIGURED
"#;
    let (st, v) = s.put_template("ovh", tpl).await;
    assert_eq!(st, 201, "{v:#}");
    let (_, c) = s.post("/api/v1/tasks", json!({"template": "ovh"})).await;
    let t = s
        .wait_state(c["id"].as_str().unwrap(), &["DONE", "BLOCKED"])
        .await;
    assert_eq!(t["state"], "DONE", "{t:#}");
    // The step saw the values; what it shows has every text of the secret masked.
    assert_eq!(t["steps"]["call"]["state"], "CONFIGURED", "{t:#}");
    let out = &t["steps"]["call"]["output"];
    assert_eq!(out["url"], "**__SECRET__**/me", "{out:#}");
    assert_eq!(out["key"], "key=**__SECRET__**", "{out:#}");
    // A config that does not exist is refused when the template is put.
    let tpl = tpl
        .replace("apiovh.consumerKey", "nosuch.consumerKey")
        .replace("name: ovh", "name: ovh2");
    let (st, v) = s.put_template("ovh2", &tpl).await;
    assert_eq!(st, 400, "{v:#}");
    assert!(v.to_string().contains("nosuch"), "{v:#}");
}

/// µTask's variables with a JavaScript `expression`: templated, then run in a sandbox with a
/// time limit; read with `eval` in Go templates and as `var.NAME` in MiniJinja ones.
#[tokio::test]
async fn expression_variables_run_as_javascript_within_their_time() {
    let s = Server::start();
    let go = r#"
name: js
auto_runnable: true
inputs: [{name: n, type: number}]
variables:
  - name: doubled
    expression: '{{ .input.n }} * 2'
  - name: spin
    expression: 'while (true) {}'
    expression_timeout: 100ms
steps:
  a:
    action: {type: echo, configuration: {output: '{{ eval "doubled" }}'}}
  b:
    action: {type: echo, configuration: {output: '{{ eval "spin" }}'}}
"#;
    let (st, v) = s.put_template("js", go).await;
    assert_eq!(st, 201, "{v:#}");
    let (_, c) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "js", "inputs": {"n": 21}}),
        )
        .await;
    let t = s
        .wait_state(c["id"].as_str().unwrap(), &["DONE", "BLOCKED"])
        .await;
    assert_eq!(t["steps"]["a"]["output"], "42", "{t:#}");
    assert_eq!(t["steps"]["b"]["state"], "FATAL_ERROR", "{t:#}");
    let error = t["steps"]["b"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("stopped after 100ms"), "{t:#}");

    let jinja = r#"
name: jsj
auto_runnable: true
inputs: [{name: n, type: number}]
variables:
  - name: doubled
    expression: '{{ input.n }} * 2'
steps:
  a:
    action: {type: echo, configuration: {output: '{{ var.doubled }}'}}
"#;
    assert_eq!(s.put_template("jsj", jinja).await.0, 201);
    let (_, c) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "jsj", "inputs": {"n": 4}}),
        )
        .await;
    let t = s
        .wait_state(c["id"].as_str().unwrap(), &["DONE", "BLOCKED"])
        .await;
    assert_eq!(t["steps"]["a"]["output"], "8", "{t:#}");

    for (bad, field) in [
        (
            "variables: [{name: v, value: 1, expression: '1'}]",
            "variables[0]",
        ),
        (
            "variables: [{name: v, expression: '1', expression_timeout: 2m}]",
            "variables[0].expression_timeout",
        ),
        (
            "variables: [{name: v, value: 1, expression_timeout: 1s}]",
            "variables[0].expression_timeout",
        ),
    ] {
        let yaml = format!("name: bad\n{bad}\nsteps:\n  a: {{action: {{type: echo}}}}\n");
        let (st, v) = s.put_template("bad", &yaml).await;
        assert_eq!(st, 400, "{yaml}\n{v:#}");
        assert!(
            v["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"] == field),
            "{yaml}\n{v:#}"
        );
    }
}

/// µTask's nested functions: a function whose action is another function. Each level's
/// `configuration`, rendered with that level's arguments, is the next one's arguments; the
/// `base_output`s merge under the action's output, innermost first; conditions run innermost
/// first, so the outer ones see the states the inner ones set.
const GREET_HELLO: &str = r#"
name: greet::hello
action:
  type: echo
  configuration:
    output:
      value: 'Hello {{ .function_args.name }} !'
"#;

const GREET_INNER: &str = r#"
name: greet::inner
action:
  type: greet::hello
  base_output:
    level: inner
    inner: 'yes'
    value: never shown
  configuration:
    name: '{{ .function_args.who }}'
custom_states: [INNER_ONE, INNER_TWO]
conditions:
  - type: check
    if:
      - value: '{{.step.this.output.value}}'
        operator: EQ
        expected: 'Hello grace !'
    then:
      this: INNER_ONE
  - type: check
    if:
      - value: '{{.step.this.state}}'
        operator: EQ
        expected: INNER_ONE
    then:
      this: INNER_TWO
"#;

const GREET_OUTER: &str = r#"
name: greet::outer
action:
  type: greet::inner
  base_output:
    level: outer
    outer: '{{ .function_args.name }}'
  configuration:
    who: '{{ .function_args.name | lower }}'
custom_states: [OUTER]
conditions:
  - type: check
    if:
      - value: '{{.step.this.state}}'
        operator: EQ
        expected: INNER_TWO
    then:
      this: OUTER
"#;

const NESTED: &str = r#"
name: nested-greeting
auto_runnable: true
inputs:
  - name: name
steps:
  greet:
    action:
      type: greet::outer
      base_output:
        from_step: '{{ .input.name }}'
      configuration:
        name: '{{ .input.name }}'
    custom_states: [GREETED]
    conditions:
      - type: check
        if:
          - value: '{{.step.this.state}}'
            operator: EQ
            expected: OUTER
        then:
          this: GREETED
  after:
    dependencies: ['greet:GREETED,INNER_TWO']
    action:
      type: echo
      configuration:
        output: '{{ .step.greet.output.outer }}/{{ .step.greet.output.level }}'
"#;

#[tokio::test]
async fn nested_functions_chain_their_arguments_outputs_and_states() {
    let functions = support::fresh_dir();
    for (file, text) in [
        ("hello.yaml", GREET_HELLO),
        ("inner.yaml", GREET_INNER),
        ("outer.yaml", GREET_OUTER),
    ] {
        std::fs::write(functions.join(file), text).unwrap();
    }
    let s = Server::start_in(
        support::fresh_dir(),
        &["--functions", functions.to_str().unwrap()],
    );
    let (st, v) = s.put_template("nested-greeting", NESTED).await;
    assert_eq!(st, 201, "{v:#}");
    // The stored version carries the whole chain, not only the function the step names.
    let (_, stored) = s.get("/api/v1/templates/nested-greeting").await;
    let embedded = stored["template"]["functions"]
        .as_object()
        .unwrap_or_else(|| panic!("{stored:#}"));
    let mut names: Vec<&str> = embedded.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["greet::hello", "greet::inner", "greet::outer"]);

    let (st, c) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "nested-greeting", "inputs": {"name": "Grace"}}),
        )
        .await;
    assert_eq!(st, 201, "{c:#}");
    let t = s
        .wait_state(c["id"].as_str().unwrap(), &["DONE", "BLOCKED"])
        .await;
    assert_eq!(t["state"], "DONE", "{t:#}");
    let greet = &t["steps"]["greet"];
    assert_eq!(greet["state"], "GREETED", "{t:#}");
    assert_eq!(
        greet["output"],
        json!({
            "value": "Hello grace !",
            "level": "inner",
            "inner": "yes",
            "outer": "Grace",
            "from_step": "Grace",
        }),
        "{t:#}"
    );
    assert_eq!(t["steps"]["after"]["output"], "Grace/inner", "{t:#}");
}

#[tokio::test]
async fn functions_calling_themselves_are_refused_at_load() {
    // In a template's own functions: the API names each function of the cycle.
    let s = Server::start();
    let yaml = "name: loops\nsteps:\n  a:\n    action: {type: ping::one, configuration: {}}\nfunctions:\n  ping::one:\n    action: {type: ping::two, configuration: {}}\n  ping::two:\n    action: {type: ping::one, configuration: {}}\n";
    let (st, v) = s.put_template("loops", yaml).await;
    assert_eq!(st, 400, "{v:#}");
    let errors = v["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["field"] == "functions.ping::one.action.type"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("ping::one -> ping::two -> ping::one")),
        "{v:#}"
    );

    // In the server's functions directory: the server does not start, and says which.
    let functions = support::fresh_dir();
    std::fs::write(functions.join("hello.yaml"), GREET_HELLO).unwrap();
    std::fs::write(
        functions.join("a.yaml"),
        "name: loop::a\naction:\n  type: loop::b\n  configuration: {}\n",
    )
    .unwrap();
    std::fs::write(
        functions.join("b.yaml"),
        "name: loop::b\naction:\n  type: loop::a\n  configuration: {}\n",
    )
    .unwrap();
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_taskhook"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(support::fresh_dir())
        .arg("--functions")
        .arg(&functions)
        .env("TASKHOOK_ADMIN_TOKEN", support::TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
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
    assert!(status.is_some_and(|s| !s.success()), "{status:?}: {err}");
    assert!(
        err.contains("a.yaml: functions.loop::a.action.type"),
        "{err}"
    );
    assert!(err.contains("loop::a -> loop::b -> loop::a"), "{err}");
    assert!(
        err.contains("b.yaml: functions.loop::b.action.type"),
        "{err}"
    );
}
