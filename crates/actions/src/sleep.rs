//! `sleep`: a durable delay. The first attempt records `wake_at` and returns `Waiting`; the engine
//! runs the step again at that time. It never blocks a worker: it must not sleep in-process.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{self, Check, Stage, opt};
use crate::{Action, ActionContext, ActionError, ActionOutput, ConfigError, parse_duration};

/// The `sleep` action.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sleep;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepConfig {
    #[serde(default)]
    duration: Option<Value>,
    #[serde(default)]
    until: Option<String>,
}

fn parse_until(s: &str) -> Result<jiff::Timestamp, ConfigError> {
    s.trim().parse::<jiff::Timestamp>().map_err(|e| {
        ConfigError::new(
            "until",
            format!("expected an RFC 3339 timestamp like \"2030-01-02T03:04:05Z\": {e}"),
        )
    })
}

fn check(config: &Value, stage: Stage) -> Result<(), ConfigError> {
    let c = Check::new(stage);
    let Some(map) = c.object("", config)? else {
        return Ok(());
    };
    c.keys("", map, &["duration", "until"], &[])?;
    match (opt(map, "duration"), opt(map, "until")) {
        (None, None) => Err(ConfigError::new(
            "duration",
            "missing required field: set `duration` or `until`",
        )),
        (Some(_), Some(_)) => Err(ConfigError::new(
            "until",
            "set either `duration` or `until`, not both",
        )),
        (Some(d), None) => c.duration("duration", d).map(|_| ()),
        (None, Some(u)) => match c.string("until", u)? {
            Some(s) => parse_until(s).map(|_| ()),
            None => Ok(()),
        },
    }
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// `now + d` in unix milliseconds, rounding sub-millisecond remainders up.
fn after(now: i64, d: Duration) -> Option<i64> {
    let ms = i64::try_from(d.as_nanos().div_ceil(1_000_000)).ok()?;
    now.checked_add(ms)
}

fn done(wake_at: i64) -> ActionOutput {
    ActionOutput {
        output: json!({ "slept_until": wake_at }),
        metadata: json!({ "wake_at": wake_at }),
    }
}

fn waiting(wake_at: i64) -> ActionError {
    ActionError::Waiting {
        metadata: json!({ "wake_at": wake_at }),
        wake_at: Some(wake_at),
    }
}

#[async_trait]
impl Action for Sleep {
    fn name(&self) -> &'static str {
        "sleep"
    }

    fn validate(&self, config: &Value) -> Result<(), ConfigError> {
        check(config, Stage::Load)
    }

    async fn run(&self, config: Value, ctx: ActionContext) -> Result<ActionOutput, ActionError> {
        let cfg: SleepConfig = config::parse("sleep", &config, check)?;
        let now = now_ms();
        let previous = ctx
            .previous_metadata
            .as_ref()
            .and_then(|m| m.get("wake_at"))
            .and_then(Value::as_i64);
        let wake_at = match previous {
            Some(wake_at) => wake_at,
            None => match (cfg.duration, cfg.until) {
                (Some(d), None) => {
                    let d = parse_duration(&d).map_err(|e| {
                        ActionError::fatal(format!("invalid sleep configuration: duration: {e}"))
                    })?;
                    after(now, d).ok_or_else(|| {
                        ActionError::fatal("invalid sleep configuration: duration: too large")
                    })?
                }
                (None, Some(u)) => parse_until(&u)
                    .map_err(|e| {
                        ActionError::fatal(format!(
                            "invalid sleep configuration: {}",
                            config::describe(&e)
                        ))
                    })?
                    .as_millisecond(),
                _ => {
                    let e = check(&config, Stage::Run).err().unwrap_or_else(|| {
                        ConfigError::new("duration", "set either `duration` or `until`")
                    });
                    return Err(ActionError::fatal(format!(
                        "invalid sleep configuration: {}",
                        config::describe(&e)
                    )));
                }
            },
        };
        if wake_at <= now {
            Ok(done(wake_at))
        } else {
            Err(waiting(wake_at))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ctx, next_attempt};

    fn wake_at_of(r: &Result<ActionOutput, ActionError>) -> i64 {
        match r {
            Err(ActionError::Waiting {
                metadata,
                wake_at: Some(w),
            }) => {
                assert_eq!(metadata, &json!({ "wake_at": w }));
                *w
            }
            other => panic!("expected Waiting, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn waits_then_wakes() {
        let ctx = ctx();
        let before = now_ms();
        let first = Sleep.run(json!({"duration": "10s"}), ctx.clone()).await;
        let w = wake_at_of(&first);
        assert!(w >= before + 10_000 && w <= now_ms() + 10_000, "{w}");

        // Re-run too early: same wake_at.
        let again = Sleep
            .run(
                json!({"duration": "10s"}),
                next_attempt(&ctx, json!({"wake_at": w})),
            )
            .await;
        assert_eq!(wake_at_of(&again), w);

        // Re-run after the deadline: done.
        let past = now_ms() - 5;
        let r = Sleep
            .run(
                json!({"duration": "10s"}),
                next_attempt(&ctx, json!({"wake_at": past})),
            )
            .await;
        assert_eq!(r, Ok(done(past)));
        assert_eq!(r.unwrap().output, json!({"slept_until": past}));
    }

    #[tokio::test]
    async fn short_sleep_progression_in_real_time() {
        let ctx = ctx();
        let first = Sleep.run(json!({"duration": 0.05}), ctx.clone()).await;
        let w = wake_at_of(&first);
        let metadata = json!({"wake_at": w});
        tokio::time::sleep(Duration::from_millis(80)).await;
        let r = Sleep
            .run(json!({"duration": 0.05}), next_attempt(&ctx, metadata))
            .await;
        assert_eq!(r, Ok(done(w)));
    }

    #[tokio::test]
    async fn zero_or_past_deadline_finishes_at_once() {
        let r = Sleep.run(json!({"duration": "0s"}), ctx()).await.unwrap();
        assert!(r.output["slept_until"].is_i64());
        let r = Sleep
            .run(json!({"until": "2001-02-03T04:05:06Z"}), ctx())
            .await;
        assert_eq!(r, Ok(done(981_173_106_000)));
    }

    #[tokio::test]
    async fn until_in_the_future() {
        let r = Sleep
            .run(json!({"until": "2999-01-01T00:00:00+01:00"}), ctx())
            .await;
        assert_eq!(wake_at_of(&r), 32_472_140_400_000);
    }

    #[tokio::test]
    async fn bad_config_is_fatal() {
        for (config, field) in [
            (json!({}), "duration"),
            (json!({"duration": "soon"}), "duration"),
            (
                json!({"duration": "1s", "until": "2030-01-01T00:00:00Z"}),
                "until",
            ),
            (json!({"until": "tomorrow"}), "until"),
            (json!({"duration": "1s", "x": 1}), "x"),
            (json!({"duration": "99999999999999999999d"}), "duration"),
            (json!({"duration": 1e300}), "duration"),
        ] {
            let r = Sleep.run(config.clone(), ctx()).await;
            let Err(ActionError::Fatal { message }) = r else {
                panic!("{config}: {r:?}")
            };
            assert!(message.contains(field), "{config}: {message}");
        }
        // A duration too large to add to now (but valid on its own).
        let r = Sleep.run(json!({"duration": 1.0e16}), ctx()).await;
        assert!(matches!(r, Err(ActionError::Fatal { .. })), "{r:?}");
    }

    #[test]
    fn validate() {
        assert_eq!(Sleep.validate(&json!({"duration": "1h30m"})), Ok(()));
        assert_eq!(Sleep.validate(&json!({"duration": 5})), Ok(()));
        assert_eq!(
            Sleep.validate(&json!({"duration": "{{ inputs.delay }}"})),
            Ok(())
        );
        assert_eq!(
            Sleep.validate(&json!({"until": "{{ inputs.when }}"})),
            Ok(())
        );
        assert_eq!(
            Sleep.validate(&json!({"until": "2030-01-01T00:00:00Z"})),
            Ok(())
        );
        assert_eq!(Sleep.validate(&json!({})).unwrap_err().field, "duration");
        assert_eq!(
            Sleep.validate(&json!({"duration": "x"})).unwrap_err().field,
            "duration"
        );
        assert_eq!(
            Sleep
                .validate(&json!({"duration": true}))
                .unwrap_err()
                .field,
            "duration"
        );
        assert_eq!(
            Sleep.validate(&json!({"until": 5})).unwrap_err().field,
            "until"
        );
        assert_eq!(
            Sleep.validate(&json!({"until": "nope"})).unwrap_err().field,
            "until"
        );
        assert_eq!(
            Sleep
                .validate(&json!({"duration": "1s", "until": "{{ x }}"}))
                .unwrap_err()
                .field,
            "until"
        );
        assert_eq!(
            Sleep
                .validate(&json!({"duration": "1s", "y": 1}))
                .unwrap_err()
                .field,
            "y"
        );
    }
}
