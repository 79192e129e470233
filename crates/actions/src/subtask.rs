//! `subtask`: starts a child task from a template and waits (without a timer) until it ends.
//! It goes through [`crate::TaskService`] only and must never poll, sleep or create a child twice.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::config::{self, Check, Stage, opt};
use crate::{Action, ActionContext, ActionError, ActionOutput, ConfigError};

/// The `subtask` action.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subtask;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubtaskConfig {
    template: String,
    #[serde(default)]
    inputs: Option<Map<String, Value>>,
}

fn check(config: &Value, stage: Stage) -> Result<(), ConfigError> {
    let c = Check::new(stage);
    let Some(map) = c.object("", config)? else {
        return Ok(());
    };
    c.keys("", map, &["template", "inputs"], &["template"])?;
    if let Some(template) = map.get("template")
        && let Some(t) = c.string("template", template)?
        && t.trim().is_empty()
    {
        return Err(ConfigError::new("template", "must not be empty"));
    }
    if let Some(inputs) = opt(map, "inputs") {
        c.object("inputs", inputs)?;
    }
    Ok(())
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
        if cfg.template.trim().is_empty() {
            return Err(ActionError::fatal(
                "invalid subtask configuration: template: must not be empty",
            ));
        }
        let previous = ctx
            .previous_metadata
            .as_ref()
            .and_then(|m| m.get("task_id"))
            .and_then(Value::as_str);
        let Some(id) = previous else {
            let inputs = Value::Object(cfg.inputs.unwrap_or_default());
            let id = ctx
                .tasks
                .create_subtask(&ctx.task_id, &cfg.template, inputs, &ctx.idempotency_key)
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
        match snapshot.state.as_str() {
            "DONE" => Ok(ActionOutput {
                output: snapshot.result,
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
                    output: snapshot.result,
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
                .validate(&json!({"template": "c", "input": {}}))
                .unwrap_err()
                .field,
            "input"
        );
    }
}
