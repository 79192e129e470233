//! `subtask`: starts a child task from a template and waits (without a timer) until it ends.
//! It goes through [`crate::TaskService`] only and must never poll, sleep or create a child twice.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::config::{self, Check, Stage, opt};
use crate::duration::kind;
use crate::{
    Action, ActionContext, ActionError, ActionOutput, ConfigError, SubtaskOptions, TaskSnapshot,
};
use taskhook_model::Language;

/// The `subtask` action.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subtask;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubtaskConfig {
    template: String,
    #[serde(default)]
    inputs: Option<Map<String, Value>>,
    /// µTask's name for `inputs`.
    #[serde(default)]
    input: Option<Map<String, Value>>,
    /// µTask's inputs as JSON text, merged over `input`.
    #[serde(default)]
    json_input: Option<String>,
    #[serde(default)]
    resolver_usernames: Option<Value>,
    #[serde(default)]
    watcher_usernames: Option<Value>,
    /// Only read by `check`, which refuses any group: taskhook has none.
    #[serde(default)]
    #[allow(dead_code)]
    resolver_groups: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    watcher_groups: Option<Value>,
    #[serde(default, deserialize_with = "config::de_opt_duration")]
    delay: Option<Duration>,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

const FIELDS: &[&str] = &[
    "template",
    "inputs",
    "input",
    "json_input",
    "resolver_usernames",
    "watcher_usernames",
    "resolver_groups",
    "watcher_groups",
    "delay",
    "tags",
];

/// The tag µTask puts on a subtask, naming its parent; templates may not set it.
/// The tag naming a subtask's parent task (µTask's): set by the engine, read-only to people.
pub const PARENT_TAG: &str = "_utask_parent_task_id";
/// As the API allows on a task.
const MAX_PEOPLE: usize = 100;
const MAX_USERNAME_CHARS: usize = 256;

/// A list of names: a JSON list, or µTask's JSON list in a string (`'["ada"]'`); `null` and
/// `""` are none. `None` when it is still a template.
fn name_list(c: &Check, field: &str, v: &Value) -> Result<Option<Vec<String>>, ConfigError> {
    let expected = "expected a list of user names, or one as JSON text such as '[\"ada\"]'";
    let items = match v {
        Value::Null => return Ok(Some(Vec::new())),
        _ if c.deferred(v) => return Ok(None),
        Value::String(s) if s.trim().is_empty() => return Ok(Some(Vec::new())),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(items)) => items,
            Ok(Value::Null) => return Ok(Some(Vec::new())),
            _ => {
                return Err(ConfigError::new(field, format!("{expected}, got {s:?}")));
            }
        },
        Value::Array(items) => items.clone(),
        other => {
            return Err(ConfigError::new(
                field,
                format!("{expected}, got {}", kind(other)),
            ));
        }
    };
    let mut names: Vec<String> = Vec::with_capacity(items.len());
    let mut deferred = false;
    for (i, item) in items.iter().enumerate() {
        let item_field = format!("{field}[{i}]");
        let Some(name) = c.string(&item_field, item)? else {
            deferred = true;
            continue;
        };
        if name.is_empty()
            || name.chars().count() > MAX_USERNAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(ConfigError::new(
                item_field,
                format!("{name:?} is not a user name: 1-256 characters, no control characters"),
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    if names.len() > MAX_PEOPLE {
        return Err(ConfigError::new(
            field,
            format!("at most {MAX_PEOPLE} users"),
        ));
    }
    Ok((!deferred).then_some(names))
}

fn check(config: &Value, stage: Stage) -> Result<(), ConfigError> {
    let c = Check::new(stage);
    let Some(map) = c.object("", config)? else {
        return Ok(());
    };
    c.keys("", map, FIELDS, &["template"])?;
    if let Some(template) = map.get("template")
        && let Some(t) = c.string("template", template)?
        && t.trim().is_empty()
    {
        return Err(ConfigError::new("template", "must not be empty"));
    }
    if opt(map, "inputs").is_some() && opt(map, "input").is_some() {
        return Err(ConfigError::new(
            "input",
            "give either inputs or input (µTask's name), not both",
        ));
    }
    for field in ["inputs", "input"] {
        if let Some(inputs) = opt(map, field) {
            c.object(field, inputs)?;
        }
    }
    if let Some(v) = opt(map, "json_input")
        && let Some(text) = c.string("json_input", v)?
    {
        json_input(text).map_err(|e| ConfigError::new("json_input", e))?;
    }
    for field in ["resolver_usernames", "watcher_usernames"] {
        if let Some(v) = map.get(field) {
            name_list(&c, field, v)?;
        }
    }
    for (field, instead) in [
        ("resolver_groups", "resolver_usernames"),
        ("watcher_groups", "watcher_usernames"),
    ] {
        if let Some(v) = map.get(field)
            && let Some(groups) = name_list(&c, field, v)?
            && !groups.is_empty()
        {
            return Err(ConfigError::new(
                field,
                format!(
                    "taskhook has no user groups, so groups cannot be given access: \
                     name the users in {instead}"
                ),
            ));
        }
    }
    if let Some(v) = opt(map, "delay") {
        c.duration("delay", v)?;
    }
    if let Some(v) = opt(map, "tags")
        && let Some(tags) = c.string_map("tags", v)?
    {
        for name in tags.keys() {
            if name.is_empty() {
                return Err(ConfigError::new("tags", "a tag name must not be empty"));
            }
            if name == PARENT_TAG {
                return Err(ConfigError::new(
                    config::join("tags", name),
                    "set on every subtask to its parent's id; templates may not set it",
                ));
            }
        }
    }
    Ok(())
}

/// µTask's `json_input`: a JSON object as text (`null` or nothing is no inputs).
fn json_input(text: &str) -> Result<Map<String, Value>, String> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(other) => Err(format!("expected a JSON object, got {}", kind(&other))),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// The step's output once the child has ended: in taskhook's templates, the child's result;
/// in µTask's (Go) templates, µTask's summary of the child, its result under `result` (`{}`
/// when it has none, as a µTask task's result is never null).
fn step_output(child: &TaskSnapshot, language: Language) -> Value {
    match language {
        Language::Jinja => child.result.clone(),
        Language::Go => json!({
            "id": child.id,
            "state": child.state,
            "result": if child.result.is_null() { json!({}) } else { child.result.clone() },
            "resolver_username": child.resolver.clone().unwrap_or_default(),
            "requester_username": child.requester,
        }),
    }
}

fn waiting(metadata: Value) -> ActionError {
    ActionError::Waiting {
        metadata,
        wake_at: None,
    }
}

#[async_trait]
impl Action for Subtask {
    fn name(&self) -> &'static str {
        "subtask"
    }

    fn validate(&self, config: &Value) -> Result<(), ConfigError> {
        check(config, Stage::Load)
    }

    async fn run(&self, config: Value, ctx: ActionContext) -> Result<ActionOutput, ActionError> {
        let cfg: SubtaskConfig = config::parse("subtask", &config, check)?;
        // Serde does not see rules across fields: the checks do.
        check(&config, Stage::Run).map_err(|e| {
            ActionError::fatal(format!(
                "invalid subtask configuration: {}",
                config::describe(&e)
            ))
        })?;
        let previous = ctx
            .previous_metadata
            .as_ref()
            .and_then(|m| m.get("task_id"))
            .and_then(Value::as_str);
        let Some(id) = previous else {
            let mut inputs = cfg.inputs.or(cfg.input).unwrap_or_default();
            // As in µTask, `json_input` is read over `input`: its keys win.
            if let Some(text) = &cfg.json_input {
                let extra = json_input(text).map_err(|e| {
                    ActionError::fatal(format!("invalid subtask configuration: json_input: {e}"))
                })?;
                inputs.extend(extra);
            }
            let people = |field: &str, v: &Option<Value>| -> Result<Vec<String>, ActionError> {
                let c = Check::new(Stage::Run);
                let names =
                    name_list(&c, field, v.as_ref().unwrap_or(&Value::Null)).map_err(|e| {
                        ActionError::fatal(format!(
                            "invalid subtask configuration: {}",
                            config::describe(&e)
                        ))
                    })?;
                Ok(names.unwrap_or_default())
            };
            let mut tags = cfg.tags.unwrap_or_default();
            tags.insert(PARENT_TAG.to_string(), ctx.task_id.clone());
            let options = SubtaskOptions {
                resolvers: people("resolver_usernames", &cfg.resolver_usernames)?,
                watchers: people("watcher_usernames", &cfg.watcher_usernames)?,
                tags,
                delay: cfg.delay,
            };
            let id = ctx
                .tasks
                .create_subtask(
                    &ctx.task_id,
                    &cfg.template,
                    Value::Object(inputs),
                    &options,
                    &ctx.idempotency_key,
                )
                .await
                .map_err(|e| {
                    ActionError::client(format!(
                        "cannot create subtask from template {:?}: {e}",
                        cfg.template
                    ))
                })?;
            return Err(waiting(json!({ "task_id": id })));
        };
        let snapshot = ctx
            .tasks
            .task_snapshot(id)
            .await
            .map_err(|e| ActionError::server(format!("cannot read subtask {id}: {e}")))?;
        let output = step_output(&snapshot, ctx.language);
        match snapshot.state.as_str() {
            "DONE" => Ok(ActionOutput {
                output,
                metadata: json!({ "task_id": id, "state": "DONE" }),
            }),
            state @ ("CANCELLED" | "WONTFIX") => Err(ActionError::Client {
                message: format!(
                    "subtask {id} was {}",
                    if state == "WONTFIX" {
                        "closed as won't fix"
                    } else {
                        "cancelled"
                    }
                ),
                output: Some(ActionOutput {
                    output,
                    metadata: json!({ "task_id": id, "state": state }),
                }),
            }),
            // A human may unblock the child: keep waiting, but show why.
            "BLOCKED" => Err(waiting(json!({ "task_id": id, "state": "BLOCKED" }))),
            _ => Err(waiting(json!({ "task_id": id }))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testing::{MemoryTasks, ctx_with, next_attempt};

    fn task_id(r: Result<ActionOutput, ActionError>) -> String {
        match r {
            Err(ActionError::Waiting {
                metadata,
                wake_at: None,
            }) => metadata["task_id"].as_str().expect("task_id").to_string(),
            other => panic!("expected Waiting without wake_at, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn creates_waits_and_finishes() {
        let tasks = Arc::new(MemoryTasks::with_templates(&["child"]));
        let ctx = ctx_with(tasks.clone());
        let config = json!({"template": "child", "inputs": {"n": 1}});

        let id = task_id(Subtask.run(config.clone(), ctx.clone()).await);
        assert_eq!(
            tasks.created_with(&id),
            Some(("t1".to_string(), json!({"n": 1})))
        );
        // A crash before the engine committed WAITING re-runs the first attempt: no duplicate.
        assert_eq!(task_id(Subtask.run(config.clone(), ctx.clone()).await), id);
        assert_eq!(tasks.count(), 1);

        let next = next_attempt(&ctx, json!({"task_id": id}));
        let r = Subtask.run(config.clone(), next.clone()).await;
        assert_eq!(r, Err(waiting(json!({"task_id": id}))));

        tasks.set(&id, "RUNNING", Value::Null);
        let r = Subtask.run(config.clone(), next.clone()).await;
        assert_eq!(r, Err(waiting(json!({"task_id": id}))));

        tasks.set(&id, "BLOCKED", Value::Null);
        let r = Subtask.run(config.clone(), next.clone()).await;
        assert_eq!(r, Err(waiting(json!({"task_id": id, "state": "BLOCKED"}))));

        tasks.set(&id, "DONE", json!({"answer": 42}));
        let r = Subtask.run(config.clone(), next).await;
        assert_eq!(
            r,
            Ok(ActionOutput {
                output: json!({"answer": 42}),
                metadata: json!({"task_id": id, "state": "DONE"}),
            })
        );
        assert_eq!(tasks.count(), 1);
    }

    #[tokio::test]
    async fn utask_templates_get_utasks_summary_of_the_child() {
        let tasks = Arc::new(MemoryTasks::with_templates(&["child"]));
        let mut ctx = ctx_with(tasks.clone());
        ctx.language = Language::Go;
        let config = json!({"template": "child"});
        let id = task_id(Subtask.run(config.clone(), ctx.clone()).await);
        let next = next_attempt(&ctx, json!({"task_id": id}));
        tasks.set(&id, "DONE", json!({"answer": 42}));
        let r = Subtask.run(config.clone(), next.clone()).await.unwrap();
        assert_eq!(
            r.output,
            json!({
                "id": id,
                "state": "DONE",
                "result": {"answer": 42},
                "resolver_username": "",
                "requester_username": "task:t1",
            })
        );
        assert_eq!(r.metadata, json!({"task_id": id, "state": "DONE"}));
        // A child without a result gives an empty one, as µTask's tasks have.
        tasks.set(&id, "DONE", Value::Null);
        let r = Subtask.run(config.clone(), next.clone()).await.unwrap();
        assert_eq!(r.output["result"], json!({}));
        // A cancelled child: the same summary beside the client error.
        tasks.set(&id, "CANCELLED", Value::Null);
        let Err(ActionError::Client {
            output: Some(out), ..
        }) = Subtask.run(config, next).await
        else {
            panic!("expected a client error")
        };
        assert_eq!(out.output["state"], "CANCELLED");
        assert_eq!(out.output["id"], json!(id));
    }

    #[tokio::test]
    async fn inputs_default_to_empty_object() {
        let tasks = Arc::new(MemoryTasks::with_templates(&["child"]));
        let id = task_id(
            Subtask
                .run(json!({"template": "child"}), ctx_with(tasks.clone()))
                .await,
        );
        assert_eq!(tasks.created_with(&id), Some(("t1".to_string(), json!({}))));
    }

    #[tokio::test]
    async fn cancelled_child_is_a_client_error() {
        let tasks = Arc::new(MemoryTasks::with_templates(&["child"]));
        let ctx = ctx_with(tasks.clone());
        let id = task_id(Subtask.run(json!({"template": "child"}), ctx.clone()).await);
        tasks.set(&id, "CANCELLED", Value::Null);
        let r = Subtask
            .run(
                json!({"template": "child"}),
                next_attempt(&ctx, json!({"task_id": id})),
            )
            .await;
        let Err(ActionError::Client {
            message,
            output: Some(out),
        }) = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(message, format!("subtask {id} was cancelled"));
        assert_eq!(out.metadata, json!({"task_id": id, "state": "CANCELLED"}));
    }

    #[tokio::test]
    async fn creation_failure_is_a_client_error() {
        let tasks = Arc::new(MemoryTasks::with_templates(&["child"]));
        let r = Subtask
            .run(json!({"template": "nope"}), ctx_with(tasks.clone()))
            .await;
        let Err(ActionError::Client {
            message,
            output: None,
        }) = r
        else {
            panic!("{r:?}")
        };
        assert!(message.contains("unknown template"), "{message}");
        assert_eq!(tasks.count(), 0);
    }

    #[tokio::test]
    async fn unreadable_child_is_a_server_error() {
        let tasks = Arc::new(MemoryTasks::with_templates(&["child"]));
        let ctx = next_attempt(&ctx_with(tasks), json!({"task_id": "missing"}));
        let r = Subtask.run(json!({"template": "child"}), ctx).await;
        assert!(matches!(r, Err(ActionError::Server { .. })), "{r:?}");
    }

    #[tokio::test]
    async fn bad_run_config_is_fatal() {
        let tasks = Arc::new(MemoryTasks::with_templates(&["child"]));
        for (config, field) in [
            (json!({}), "template"),
            (json!({"template": 3}), "template"),
            (json!({"template": " "}), "template"),
            (json!({"template": "child", "inputs": [1]}), "inputs"),
            (json!({"template": "child", "extra": 1}), "extra"),
        ] {
            let r = Subtask.run(config.clone(), ctx_with(tasks.clone())).await;
            let Err(ActionError::Fatal { message }) = r else {
                panic!("{config}: {r:?}")
            };
            assert!(message.contains(field), "{config}: {message}");
        }
        assert_eq!(tasks.count(), 0);
    }

    #[tokio::test]
    async fn utask_fields_reach_the_child() {
        let tasks = Arc::new(MemoryTasks::with_templates(&["child"]));
        let config = json!({
            "template": "child",
            "input": {"a": 1, "b": "from input"},
            "json_input": r#"{"b": "from json_input", "c": [1, 2]}"#,
            "resolver_usernames": r#"["ada", "bob", "ada"]"#,
            "watcher_usernames": ["carol"],
            "resolver_groups": "",
            "watcher_groups": "[]",
            "delay": "10m",
            "tags": {"team": "core"},
        });
        let id = task_id(Subtask.run(config, ctx_with(tasks.clone())).await);
        assert_eq!(
            tasks.created_with(&id),
            Some((
                "t1".to_string(),
                json!({"a": 1, "b": "from json_input", "c": [1, 2]})
            ))
        );
        let options = tasks.options_of(&id).unwrap();
        assert_eq!(options.resolvers, vec!["ada", "bob"]);
        assert_eq!(options.watchers, vec!["carol"]);
        assert_eq!(options.delay, Some(std::time::Duration::from_secs(600)));
        assert_eq!(
            options.tags,
            BTreeMap::from([
                ("team".to_string(), "core".to_string()),
                (PARENT_TAG.to_string(), "t1".to_string()),
            ])
        );

        // Without them: no people, no delay, only the parent tag.
        let tasks = Arc::new(MemoryTasks::with_templates(&["child"]));
        let id = task_id(
            Subtask
                .run(
                    json!({"template": "child", "json_input": r#"{"x": true}"#}),
                    ctx_with(tasks.clone()),
                )
                .await,
        );
        assert_eq!(tasks.created_with(&id).unwrap().1, json!({"x": true}));
        let options = tasks.options_of(&id).unwrap();
        assert!(options.resolvers.is_empty() && options.watchers.is_empty());
        assert_eq!(options.delay, None);
        assert_eq!(options.tags.len(), 1);
    }

    #[tokio::test]
    async fn utask_fields_are_checked_at_run_time() {
        let tasks = Arc::new(MemoryTasks::with_templates(&["child"]));
        for (config, field) in [
            (
                json!({"template": "child", "json_input": "[1]"}),
                "json_input",
            ),
            (
                json!({"template": "child", "json_input": "{nope"}),
                "json_input",
            ),
            (
                json!({"template": "child", "resolver_usernames": "ada"}),
                "resolver_usernames",
            ),
            (
                json!({"template": "child", "watcher_groups": r#"["ops"]"#}),
                "watcher_groups",
            ),
            (json!({"template": "child", "delay": "soon"}), "delay"),
            (
                json!({"template": "child", "input": {}, "inputs": {}}),
                "input",
            ),
        ] {
            let r = Subtask.run(config.clone(), ctx_with(tasks.clone())).await;
            let Err(ActionError::Fatal { message }) = r else {
                panic!("{config}: {r:?}")
            };
            assert!(message.contains(field), "{config}: {message}");
        }
        assert_eq!(tasks.count(), 0);
    }

    #[test]
    fn validate_utask_fields() {
        for config in [
            json!({"template": "c", "input": {"a": 1}, "json_input": "{\"b\": 2}"}),
            json!({"template": "c", "json_input": "{{ .step.x.output | toJson }}"}),
            json!({"template": "c", "resolver_usernames": "[\"ada\"]", "watcher_usernames": ["b", "{{ x }}"]}),
            json!({"template": "c", "resolver_usernames": "{{ .input.users }}"}),
            json!({"template": "c", "resolver_groups": "[]", "watcher_groups": null}),
            json!({"template": "c", "resolver_groups": "{{ .input.groups }}"}),
            json!({"template": "c", "delay": "10m", "tags": {"k": "{{ v }}"}}),
            json!({"template": "c", "delay": "{{ .input.delay }}"}),
        ] {
            assert_eq!(Subtask.validate(&config), Ok(()), "{config}");
        }
        for (config, field, says) in [
            (
                json!({"template": "c", "json_input": "[1]"}),
                "json_input",
                "object",
            ),
            (
                json!({"template": "c", "json_input": {"a": 1}}),
                "json_input",
                "string",
            ),
            (
                json!({"template": "c", "resolver_usernames": "ada"}),
                "resolver_usernames",
                "JSON",
            ),
            (
                json!({"template": "c", "resolver_usernames": 5}),
                "resolver_usernames",
                "list",
            ),
            (
                json!({"template": "c", "watcher_usernames": [""]}),
                "watcher_usernames[0]",
                "user name",
            ),
            (
                json!({"template": "c", "resolver_groups": "[\"ops\"]"}),
                "resolver_groups",
                "no user groups",
            ),
            (
                json!({"template": "c", "watcher_groups": ["ops"]}),
                "watcher_groups",
                "watcher_usernames",
            ),
            (
                json!({"template": "c", "delay": "later"}),
                "delay",
                "duration",
            ),
            (
                json!({"template": "c", "tags": {"k": 1}}),
                "tags.k",
                "string",
            ),
            (
                json!({"template": "c", "tags": {PARENT_TAG: "x"}}),
                "tags._utask_parent_task_id",
                "parent",
            ),
            (
                json!({"template": "c", "input": {}, "inputs": {}}),
                "input",
                "not both",
            ),
            (json!({"template": "c", "input": []}), "input", "object"),
        ] {
            let e = Subtask.validate(&config).expect_err(&config.to_string());
            assert_eq!(e.field, field, "{config}: {e}");
            assert!(e.message.contains(says), "{config}: {e}");
        }
    }

    #[test]
    fn validate() {
        assert_eq!(Subtask.validate(&json!({"template": "child"})), Ok(()));
        assert_eq!(
            Subtask.validate(&json!({"template": "{{ inputs.t }}", "inputs": "{{ inputs }}"})),
            Ok(())
        );
        assert_eq!(
            Subtask.validate(&json!({"template": "c", "inputs": {"a": "{{ x }}"}})),
            Ok(())
        );
        assert_eq!(Subtask.validate(&json!({})).unwrap_err().field, "template");
        assert_eq!(
            Subtask
                .validate(&json!({"template": ""}))
                .unwrap_err()
                .field,
            "template"
        );
        assert_eq!(
            Subtask
                .validate(&json!({"template": "c", "inputs": 5}))
                .unwrap_err()
                .field,
            "inputs"
        );
        assert_eq!(
            Subtask
                .validate(&json!({"template": "c", "input": {}, "inputs": {}}))
                .unwrap_err()
                .field,
            "input"
        );
    }
}
