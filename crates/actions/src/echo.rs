//! `echo`: returns its configured `output` and `metadata`, or raises the error `error_type` names.
//! Meant for wiring and testing templates; it must have no side effects of any kind.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{self, Check, Stage, opt};
use crate::{Action, ActionContext, ActionError, ActionOutput, ConfigError};

/// The `echo` action.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoConfig {
    #[serde(default)]
    output: Value,
    #[serde(default)]
    metadata: Value,
    #[serde(default)]
    error_type: Option<ErrorType>,
    #[serde(default)]
    error_message: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ErrorType {
    Client,
    Server,
    Fatal,
}

const FIELDS: &[&str] = &["output", "metadata", "error_type", "error_message"];
const ERROR_TYPES: &[&str] = &["client", "server", "fatal"];

fn check(config: &Value, stage: Stage) -> Result<(), ConfigError> {
    let c = Check::new(stage);
    let Some(map) = c.object("", config)? else {
        return Ok(());
    };
    c.keys("", map, FIELDS, &[])?;
    if let Some(v) = opt(map, "error_type")
        && let Some(s) = c.string("error_type", v)?
        && !ERROR_TYPES.contains(&s)
    {
        return Err(ConfigError::new(
            "error_type",
            format!(
                "unknown error type {s:?}; expected one of: {}",
                ERROR_TYPES.join(", ")
            ),
        ));
    }
    if let Some(v) = opt(map, "error_message") {
        c.string("error_message", v)?;
    }
    Ok(())
}

#[async_trait]
impl Action for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn validate(&self, config: &Value) -> Result<(), ConfigError> {
        check(config, Stage::Load)
    }

    async fn run(&self, config: Value, _ctx: ActionContext) -> Result<ActionOutput, ActionError> {
        let cfg: EchoConfig = config::parse("echo", &config, check)?;
        let out = ActionOutput {
            output: cfg.output,
            metadata: cfg.metadata,
        };
        let Some(kind) = cfg.error_type else {
            return Ok(out);
        };
        let message = |default: &str| {
            cfg.error_message
                .clone()
                .unwrap_or_else(|| default.to_string())
        };
        Err(match kind {
            ErrorType::Client => ActionError::Client {
                message: message("echo: client error"),
                output: Some(out),
            },
            ErrorType::Server => ActionError::Server {
                message: message("echo: server error"),
                output: Some(out),
            },
            ErrorType::Fatal => ActionError::Fatal {
                message: message("echo: fatal error"),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ctx;
    use serde_json::json;

    #[tokio::test]
    async fn returns_output_and_metadata() {
        let r = Echo
            .run(json!({"output": {"a": 1}, "metadata": [1, 2]}), ctx())
            .await;
        assert_eq!(
            r,
            Ok(ActionOutput {
                output: json!({"a": 1}),
                metadata: json!([1, 2])
            })
        );
        let r = Echo.run(json!({"output": "x"}), ctx()).await.unwrap();
        assert_eq!(r.metadata, Value::Null);
    }

    #[tokio::test]
    async fn raises_errors_with_output() {
        let r = Echo
            .run(
                json!({"output": 1, "error_type": "client", "error_message": "nope"}),
                ctx(),
            )
            .await;
        assert_eq!(
            r,
            Err(ActionError::Client {
                message: "nope".into(),
                output: Some(ActionOutput {
                    output: json!(1),
                    metadata: Value::Null
                }),
            })
        );
        let r = Echo
            .run(
                json!({"output": 2, "metadata": 3, "error_type": "server"}),
                ctx(),
            )
            .await;
        assert_eq!(
            r,
            Err(ActionError::Server {
                message: "echo: server error".into(),
                output: Some(ActionOutput {
                    output: json!(2),
                    metadata: json!(3)
                }),
            })
        );
        let r = Echo
            .run(json!({"output": 2, "error_type": "fatal"}), ctx())
            .await;
        assert_eq!(r, Err(ActionError::fatal("echo: fatal error")));
    }

    #[tokio::test]
    async fn bad_run_config_is_fatal_naming_the_field() {
        let r = Echo
            .run(json!({"output": 1, "error_type": "weird"}), ctx())
            .await;
        let Err(ActionError::Fatal { message }) = r else {
            panic!("{r:?}")
        };
        assert!(message.contains("error_type"), "{message}");
        let r = Echo.run(json!({"output": 1, "extra": 1}), ctx()).await;
        let Err(ActionError::Fatal { message }) = r else {
            panic!("{r:?}")
        };
        assert!(message.contains("extra"), "{message}");
        // `output` is optional: an echo without one outputs null.
        let r = Echo.run(json!({}), ctx()).await;
        assert_eq!(r, Ok(ActionOutput::default()));
        let r = Echo.run(json!("nope"), ctx()).await;
        assert!(matches!(r, Err(ActionError::Fatal { .. })), "{r:?}");
    }

    #[test]
    fn validate() {
        assert_eq!(Echo.validate(&json!({"output": null})), Ok(()));
        assert_eq!(
            Echo.validate(&json!({"output": "{{ inputs.x }}", "error_type": "{{ x }}"})),
            Ok(())
        );
        assert_eq!(Echo.validate(&json!("{{ inputs.config }}")), Ok(()));
        assert_eq!(Echo.validate(&json!({})), Ok(()));
        assert_eq!(
            Echo.validate(&json!({"output": 1, "oops": 1}))
                .unwrap_err()
                .field,
            "oops"
        );
        assert_eq!(
            Echo.validate(&json!({"output": 1, "error_type": "bad"}))
                .unwrap_err()
                .field,
            "error_type"
        );
        assert_eq!(
            Echo.validate(&json!({"output": 1, "error_message": 5}))
                .unwrap_err()
                .field,
            "error_message"
        );
        assert_eq!(Echo.validate(&json!([1])).unwrap_err().field, "");
    }
}
