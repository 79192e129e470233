//! µTask's YAML habits and validation rules: a document written for µTask (tab indentation,
//! bare empty values, `base_output`, operators in lower case, numbers as expected values,
//! skip conditions on a foreach step's parent or children) runs unchanged, and what µTask
//! refuses is refused, naming the field.

mod support;

use serde_json::json;
use support::Server;

/// Tab-indented, as some µTask templates are; `description:` left empty; the older
/// `base_output` merged under the action's output; a lower-case operator comparing a number.
const HABITS: &str = "name: habits\n\
description:\n\
auto_runnable: true\n\
inputs:\n\
\t- name: id\n\
\t  description:\n\
\t  type:\n\
steps:\n\
\tfetch:\n\
\t\tdescription:\n\
\t\tretry_pattern:\n\
\t\taction:\n\
\t\t\ttype: echo\n\
\t\t\tbase_output:\n\
\t\t\t\tsource: base\n\
\t\t\t\tid: overridden\n\
\t\t\tconfiguration:\n\
\t\t\t\toutput:\n\
\t\t\t\t\tid: '{{.input.id}}'\n\
\t\t\t\t\tcount: 3\n\
\tcheck:\n\
\t\tdependencies: [fetch]\n\
\t\taction:\n\
\t\t\ttype: echo\n\
\t\t\tconfiguration:\n\
\t\t\t\toutput: {seen: '{{.step.fetch.output.count}}'}\n\
\t\tconditions:\n\
\t\t\t- type: CHECK\n\
\t\t\t  if:\n\
\t\t\t\t- value: '{{.step.fetch.output.count}}'\n\
\t\t\t\t  operator: ge\n\
\t\t\t\t  expected: 3\n\
\t\t\t\t  message: enough\n\
\t\t\t  then:\n\
\t\t\t\t  this: PLENTY\n\
\t\tcustom_states: [PLENTY]\n";

#[tokio::test]
async fn a_utask_document_with_its_habits_runs_unchanged() {
    let s = Server::start();
    let (st, out) = s.put_template("habits", HABITS).await;
    assert_eq!(st, 201, "{out:#}");
    let (_, c) = s
        .post(
            "/api/v1/tasks",
            json!({"template": "habits", "inputs": {"id": "a1"}}),
        )
        .await;
    let id = c["id"].as_str().unwrap().to_string();
    let t = s.wait_state(&id, &["DONE", "BLOCKED"]).await;
    assert_eq!(t["state"], "DONE", "{t:#}");
    // The action's output wins over base_output's keys; the others are kept.
    assert_eq!(
        t["steps"]["fetch"]["output"],
        json!({"id": "a1", "count": 3, "source": "base"})
    );
    assert_eq!(t["steps"]["check"]["state"], "PLENTY", "{t:#}");
}

/// A foreach step's skip conditions: `foreach: parent` decides for the whole step before it
/// expands, the default (`children`) for each child with its iterator.
const FOREACH_SKIPS: &str = r#"
name: foreach-skips
auto_runnable: true
inputs:
  - name: enabled
steps:
  everyone:
    foreach: '[1, 2, 3]'
    action: {type: echo, configuration: {output: '{{.iterator}}'}}
    conditions:
      - type: skip
        foreach: parent
        if: [{value: '{{.input.enabled}}', operator: EQ, expected: 'no'}]
        then: {this: PRUNE}
      - type: skip
        if: [{value: '{{.iterator}}', operator: EQ, expected: 2}]
        then: {this: PRUNE}
"#;

#[tokio::test]
async fn skip_conditions_apply_to_a_foreach_parent_or_to_its_children() {
    let s = Server::start();
    let (st, out) = s.put_template("foreach-skips", FOREACH_SKIPS).await;
    assert_eq!(st, 201, "{out:#}");
    let run = |enabled: &'static str| {
        let s = &s;
        async move {
            let (_, c) = s
                .post(
                    "/api/v1/tasks",
                    json!({"template": "foreach-skips", "inputs": {"enabled": enabled}}),
                )
                .await;
            s.wait_state(c["id"].as_str().unwrap(), &["DONE", "BLOCKED"])
                .await
        }
    };
    let on = run("yes").await;
    assert_eq!(on["state"], "DONE", "{on:#}");
    let states: Vec<&str> = (0..3)
        .map(|i| {
            on["steps"][format!("everyone-{i}")]["state"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(states, ["DONE", "PRUNE", "DONE"], "{on:#}");
    // Skipped as a whole: no child was made.
    let off = run("no").await;
    assert_eq!(off["steps"]["everyone"]["state"], "PRUNE", "{off:#}");
    assert!(off["steps"].get("everyone-0").is_none(), "{off:#}");
}

#[tokio::test]
async fn what_utask_refuses_is_refused_naming_the_field() {
    let s = Server::start();
    let cases = [
        // A condition may not set a step outside its dependency chain.
        (
            "name: impact\nsteps:\n  a:\n    action: {type: echo, configuration: {output: 1}}\n    \
             conditions: [{type: check, if: [{value: x, operator: EQ, expected: x}], then: {b: PRUNE}}]\n  \
             b:\n    action: {type: echo, configuration: {output: 1}}\n",
            "steps.a.conditions[0].then.b",
        ),
        // `foreach` on a condition: skip conditions of foreach steps only.
        (
            "name: checkforeach\nsteps:\n  a:\n    foreach: '[1]'\n    action: {type: echo, configuration: {output: 1}}\n    \
             conditions: [{type: check, foreach: children, if: [{value: x, operator: EQ, expected: x}], then: {this: PRUNE}}]\n",
            "steps.a.conditions[0].foreach",
        ),
        (
            "name: notforeach\nsteps:\n  a:\n    action: {type: echo, configuration: {output: 1}}\n    \
             conditions: [{type: skip, foreach: parent, if: [{value: x, operator: EQ, expected: x}], then: {this: PRUNE}}]\n",
            "steps.a.conditions[0].foreach",
        ),
        (
            "name: builtin\nsteps:\n  a:\n    action: {type: echo, configuration: {output: 1}}\n    custom_states: [SERVER_ERROR]\n",
            "steps.a.custom_states",
        ),
    ];
    for (doc, field) in cases {
        let (st, _, p) = s
            .req(
                reqwest::Method::POST,
                "/api/v1/templates/validate",
                Some((doc, "application/yaml")),
            )
            .await;
        assert_eq!(st, 400, "{doc}: {p:#}");
        let fields: Vec<&str> = p["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(|e| e["field"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            fields.contains(&field) || p["field"] == field,
            "{doc}: expected {field} in {p:#}"
        );
    }
    // A state allowed on the dependency chain, both ways, is taken.
    let ok = "name: chain\nsteps:\n  a:\n    action: {type: echo, configuration: {output: 1}}\n  \
              b:\n    dependencies: [a]\n    action: {type: echo, configuration: {output: 1}}\n    \
              conditions: [{type: check, if: [{value: x, operator: EQ, expected: x}], then: {a: TO_RETRY, c: PRUNE}}]\n  \
              c:\n    dependencies: [b]\n    action: {type: echo, configuration: {output: 1}}\n";
    let (st, out) = s.put_template("chain", ok).await;
    assert_eq!(st, 201, "{out:#}");
}

/// A step's `json_schema` describes its output: reading a property the schema does not
/// allow is refused, through `$ref` into `definitions` and `anyOf`, in the manner of µTask's
/// linting tests; a path the schema allows is taken and runs.
const LINTED: &str = r##"
name: linted
auto_runnable: true
steps:
  stepOne:
    json_schema:
      "$schema": "http://json-schema.org/draft-07/schema#"
      type: object
      definitions:
        node:
          type: object
          properties:
            child:
              anyOf:
                - "$ref": "#/definitions/node"
                - "$ref": "#/definitions/leaf"
            label:
              type: string
        leaf:
          type: string
      properties:
        tree:
          "$ref": "#/definitions/node"
        name:
          type: string
    action:
      type: echo
      configuration:
        output:
          name: root
          tree: {label: top, child: {label: below, child: leaf}}
  stepTwo:
    dependencies: [stepOne]
    action:
      type: echo
      configuration:
        output: '{{ .step.stepOne.output.tree.child.label }}/READ'
"##;

#[tokio::test]
async fn output_paths_outside_the_json_schema_are_refused() {
    let s = Server::start();
    let (st, v) = s.put_template("linted", LINTED).await;
    assert_eq!(st, 201, "{v:#}");
    let (_, c) = s.post("/api/v1/tasks", json!({"template": "linted"})).await;
    let t = s
        .wait_state(c["id"].as_str().unwrap(), &["DONE", "BLOCKED"])
        .await;
    assert_eq!(t["steps"]["stepTwo"]["output"], "below/READ", "{t:#}");

    for (read, key) in [
        (".step.stepOne.output.notfound", "notfound"),
        // A property of a definition is not a property of the output itself.
        (".step.stepOne.output.label", "label"),
        (".step.stepOne.output.tree.child.nope", "tree.child.nope"),
    ] {
        let doc = LINTED.replace(".step.stepOne.output.tree.child.label", read);
        let (st, v) = s.put_template("linted", &doc).await;
        assert_eq!(st, 400, "{read}: {v:#}");
        let e = &v["errors"][0];
        assert_eq!(
            e["field"], "steps.stepTwo.action.configuration.output",
            "{v:#}"
        );
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "reads {key:?} from the output of step \"stepOne\""
            )),
            "{read}: {message}"
        );
    }
}

#[test]
fn import_utask_reports_per_file_what_runs_unchanged_and_what_does_not() {
    let dir = support::fresh_dir();
    let templates = dir.join("templates");
    let functions = dir.join("functions");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::create_dir_all(&functions).unwrap();
    std::fs::write(templates.join("habits.yaml"), HABITS).unwrap();
    std::fs::write(
        templates.join("groups.yaml"),
        "name: groups\nallowed_resolver_groups: [ops]\nsteps:\n  a:\n    \
         action: {type: say::hello, configuration: {who: '{{.input.who}}'}}\n\
         inputs: [{name: who}]\n",
    )
    .unwrap();
    std::fs::write(
        templates.join("cycle.yaml"),
        "name: cycle\nsteps:\n  a:\n    dependencies: [b]\n    action: {type: echo, configuration: {output: 1}}\n  \
         b:\n    dependencies: [a]\n    action: {type: echo, configuration: {output: 1}}\n",
    )
    .unwrap();
    std::fs::write(
        functions.join("hello.yaml"),
        "name: say::hello\naction:\n  type: echo\n  configuration: {output: {greeting: 'hello {{.function_args.who}}'}}\n",
    )
    .unwrap();
    let (code, out, err) = support::taskhook(
        None,
        &[
            "template",
            "import-utask",
            templates.to_str().unwrap(),
            "--functions",
            functions.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("habits.yaml: runs unchanged as \"habits\" (Go templates, 2 steps)"),
        "{out}"
    );
    assert!(out.contains("groups.yaml: runs unchanged"), "{out}");
    assert!(
        out.contains("  not taken: allowed_resolver_groups: taskhook has no user groups"),
        "{out}"
    );
    assert!(out.contains("cycle.yaml: refused\n  steps."), "{out}");
    assert!(
        out.contains("2 of 3 templates run unchanged; 1 refused"),
        "{out}"
    );
    // Without the functions, the template calling one is refused, naming the step.
    let (code, out, _) = support::taskhook(
        None,
        &["template", "import-utask", templates.to_str().unwrap()],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "groups.yaml: refused\n  steps.a.action.type: unknown action type \"say::hello\""
        ),
        "{out}"
    );
}
