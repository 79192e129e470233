//! `script`: runs one executable from the operator's scripts directory, without a shell, with a
//! cleared environment (plus `PATH` and the operator's allow-listed variables), a timeout and
//! bounded output. It must never run anything outside that directory (absolute paths, `..` and
//! symlinks leading out are refused) nor outlive its attempt.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::config::{self, Check, Stage, join, opt};
use crate::{Action, ActionContext, ActionError, ActionOutput, ConfigError};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1024 * 1024;
/// PATH given to scripts when the server itself has none.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How much of stderr an error message quotes.
const STDERR_TAIL_CHARS: usize = 1000;
/// `ETXTBSY` on Linux and macOS: the file is still open for writing somewhere; worth a retry.
const ETXTBSY: i32 = 26;

/// The `script` action; `None` disables it (every run fails as fatal).
#[derive(Debug, Clone, Default)]
pub struct Script {
    dir: Option<PathBuf>,
    env_allow: Vec<String>,
}

impl Script {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Script {
            dir,
            env_allow: Vec::new(),
        }
    }

    /// Passes these server environment variables through to scripts: each run reads their
    /// current values (unset ones are skipped); a step's own `env` wins on conflict.
    pub fn with_env_allow(mut self, names: Vec<String>) -> Self {
        self.env_allow = names;
        self
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptConfig {
    file: String,
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default, deserialize_with = "config::de_opt_duration")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "config::de_opt_u64")]
    max_output_bytes: Option<u64>,
}

const FIELDS: &[&str] = &[
    "file",
    "argv",
    "env",
    "stdin",
    "timeout",
    "max_output_bytes",
];

/// A relative path with no `..`: the lexical half of the containment check.
fn check_file(file: &str) -> Result<(), String> {
    if file.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if file.contains('\0') {
        return Err("must not contain NUL bytes".into());
    }
    let path = Path::new(file);
    if path.is_absolute() || file.starts_with('/') {
        return Err(
            "must be a path relative to the scripts directory, not an absolute path".into(),
        );
    }
    for component in path.components() {
        match component {
            Component::ParentDir => return Err("must not contain `..`".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("must be a path relative to the scripts directory".into());
            }
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    Ok(())
}

pub(crate) fn check_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        Err("invalid environment variable name".into())
    } else {
        Ok(())
    }
}

fn check(config: &Value, stage: Stage) -> Result<(), ConfigError> {
    let c = Check::new(stage);
    let Some(map) = c.object("", config)? else {
        return Ok(());
    };
    c.keys("", map, FIELDS, &["file"])?;
    if let Some(v) = map.get("file")
        && let Some(file) = c.string("file", v)?
    {
        check_file(file).map_err(|e| ConfigError::new("file", e))?;
    }
    if let Some(v) = opt(map, "argv") {
        c.string_list("argv", v)?;
    }
    if let Some(v) = opt(map, "env")
        && let Some(env) = c.string_map("env", v)?
    {
        for name in env.keys() {
            check_env_name(name).map_err(|e| ConfigError::new(join("env", name), e))?;
        }
    }
    if let Some(v) = opt(map, "stdin") {
        c.string("stdin", v)?;
    }
    if let Some(v) = opt(map, "timeout") {
        c.positive_duration("timeout", v)?;
    }
    if let Some(v) = opt(map, "max_output_bytes")
        && c.uint("max_output_bytes", v)? == Some(0)
    {
        return Err(ConfigError::new(
            "max_output_bytes",
            "must be greater than zero",
        ));
    }
    Ok(())
}

fn fatal(field: &str, message: impl std::fmt::Display) -> ActionError {
    ActionError::fatal(format!("invalid script configuration: {field}: {message}"))
}

/// The last `max` bytes a stream produced, and how many it produced in all.
#[derive(Debug, Default)]
struct Captured {
    tail: Vec<u8>,
    total: u64,
}

impl Captured {
    fn truncated(&self) -> bool {
        self.total > self.tail.len() as u64
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.tail).into_owned()
    }
}

/// Drains `reader` to its end (so the child never blocks on a full pipe), keeping the tail.
async fn capture<R: AsyncRead + Unpin>(reader: Option<R>, max: usize) -> Captured {
    let mut captured = Captured::default();
    let Some(mut reader) = reader else {
        return captured;
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                captured.total = captured.total.saturating_add(n as u64);
                captured
                    .tail
                    .extend_from_slice(buf.get(..n).unwrap_or_default());
                // Trim now and then rather than on every read: amortised O(1) per byte.
                if captured.tail.len() > max.saturating_mul(2).max(64 * 1024) {
                    let excess = captured.tail.len() - max;
                    captured.tail.drain(..excess);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if captured.tail.len() > max {
        let excess = captured.tail.len() - max;
        captured.tail.drain(..excess);
    }
    captured
}

/// The output convention: the last non-empty stdout line if it is JSON, else `{"stdout": …}`.
fn script_output(stdout: &str) -> Value {
    let last = stdout.lines().map(str::trim).rfind(|line| !line.is_empty());
    if let Some(line) = last
        && let Ok(value) = serde_json::from_str::<Value>(line)
    {
        return value;
    }
    json!({ "stdout": stdout })
}

/// The end of `text`, at most [`STDERR_TAIL_CHARS`] characters, trimmed.
fn tail(text: &str) -> &str {
    let text = text.trim();
    match text.char_indices().rev().nth(STDERR_TAIL_CHARS) {
        Some((i, _)) => text.get(i..).unwrap_or(text),
        None => text,
    }
}

fn exit_description(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("was killed by signal {signal}");
        }
    }
    format!("ended abnormally ({status})")
}

/// Kills the script and everything it started (it leads its own process group), then reaps it.
async fn kill_tree(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        // Best effort: without a libc binding, `kill` is the portable way to signal a group.
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{pid}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Finds the script: inside the canonical scripts directory, a regular executable file.
async fn resolve(dir: &Path, file: &str) -> Result<(PathBuf, PathBuf), ActionError> {
    check_file(file).map_err(|e| fatal("file", e))?;
    let root = tokio::fs::canonicalize(dir).await.map_err(|e| {
        ActionError::fatal(format!(
            "scripts directory {} is not usable: {e}",
            dir.display()
        ))
    })?;
    let path = match tokio::fs::canonicalize(root.join(file)).await {
        Ok(path) => path,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ActionError::fatal(format!(
                "script {file:?} not found in the scripts directory"
            )));
        }
        Err(e) => return Err(ActionError::fatal(format!("script {file:?}: {e}"))),
    };
    if !path.starts_with(&root) {
        return Err(fatal(
            "file",
            format!("{file:?} resolves outside the scripts directory"),
        ));
    }
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|e| ActionError::fatal(format!("script {file:?}: {e}")))?;
    if !meta.is_file() {
        return Err(ActionError::fatal(format!(
            "script {file:?} is not a regular file"
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(ActionError::fatal(format!(
                "script {file:?} is not executable"
            )));
        }
    }
    Ok((root, path))
}

enum Outcome {
    Exited(io::Result<ExitStatus>, Captured, Captured),
    TimedOut,
    Cancelled,
}

#[async_trait]
impl Action for Script {
    fn name(&self) -> &'static str {
        "script"
    }

    fn validate(&self, config: &Value) -> Result<(), ConfigError> {
        check(config, Stage::Load)
    }

    async fn run(&self, config: Value, ctx: ActionContext) -> Result<ActionOutput, ActionError> {
        let cfg: ScriptConfig = config::parse("script", &config, check)?;
        let Some(dir) = &self.dir else {
            return Err(ActionError::fatal(
                "scripts are disabled: start the server with --scripts-dir",
            ));
        };
        let timeout = cfg.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(fatal("timeout", "must be greater than zero"));
        }
        let max = cfg.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES);
        if max == 0 {
            return Err(fatal("max_output_bytes", "must be greater than zero"));
        }
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let env = cfg.env.unwrap_or_default();
        for name in env.keys() {
            check_env_name(name).map_err(|e| fatal(&join("env", name), e))?;
        }
        let mut passed = Vec::with_capacity(self.env_allow.len());
        for name in &self.env_allow {
            check_env_name(name).map_err(|e| {
                ActionError::fatal(format!(
                    "script environment allow-list: {name:?}: {e} (see --script-env-allow)"
                ))
            })?;
            if let Some(value) = std::env::var_os(name) {
                passed.push((name.as_str(), value));
            }
        }
        let file = cfg.file;
        let (root, path) = resolve(dir, &file).await?;

        let mut command = Command::new(&path);
        command
            .args(cfg.argv.unwrap_or_default())
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| FALLBACK_PATH.into()),
            )
            .envs(passed)
            .envs(&env)
            .current_dir(&root)
            .stdin(if cfg.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command.spawn().map_err(|e| {
            let message = format!("cannot start script {file:?}: {e}");
            match e.kind() {
                _ if e.raw_os_error() == Some(ETXTBSY) => ActionError::server(message),
                io::ErrorKind::NotFound
                | io::ErrorKind::PermissionDenied
                | io::ErrorKind::InvalidInput => ActionError::fatal(message),
                _ => ActionError::server(message),
            }
        })?;
        tracing::debug!(script = %path.display(), pid = child.id(), "script action: started");

        let stdin_pipe = child.stdin.take();
        let stdin_data = cfg.stdin;
        let feed = async move {
            if let (Some(mut pipe), Some(data)) = (stdin_pipe, stdin_data) {
                // The script may exit without reading: a broken pipe is not an error here.
                let _ = pipe.write_all(data.as_bytes()).await;
                let _ = pipe.shutdown().await;
            }
        };
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let outcome = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Outcome::Cancelled,
            _ = tokio::time::sleep(timeout) => Outcome::TimedOut,
            (_, out, err, status) = async {
                tokio::join!(feed, capture(stdout, max), capture(stderr, max), child.wait())
            } => Outcome::Exited(status, out, err),
        };
        let (status, out, err) = match outcome {
            Outcome::Exited(status, out, err) => (status, out, err),
            Outcome::TimedOut => {
                kill_tree(&mut child).await;
                return Err(ActionError::server(format!(
                    "script {file:?} timed out after {timeout:?}"
                )));
            }
            Outcome::Cancelled => {
                kill_tree(&mut child).await;
                return Err(ActionError::server("cancelled"));
            }
        };
        let status = status.map_err(|e| ActionError::server(format!("script {file:?}: {e}")))?;

        let stdout = out.text();
        let stderr = err.text();
        let mut metadata = Map::new();
        metadata.insert(
            "exit_code".into(),
            status.code().map_or(Value::Null, Value::from),
        );
        metadata.insert("stdout".into(), Value::String(stdout.clone()));
        metadata.insert("stderr".into(), Value::String(stderr.clone()));
        if out.truncated() {
            metadata.insert("stdout_truncated".into(), Value::Bool(true));
        }
        if err.truncated() {
            metadata.insert("stderr_truncated".into(), Value::Bool(true));
        }
        let result = ActionOutput {
            output: script_output(&stdout),
            metadata: Value::Object(metadata),
        };
        if status.success() {
            return Ok(result);
        }
        let mut message = format!("script {file:?} {}", exit_description(&status));
        let stderr_tail = tail(&stderr);
        if !stderr_tail.is_empty() {
            message.push_str(": ");
            message.push_str(stderr_tail);
        }
        Err(ActionError::Server {
            message,
            output: Some(result),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::OnceLock;
    use std::time::Instant;

    use super::*;
    use crate::testing::ctx;

    /// Writes every test script once, before any test spawns a process: a script file still open
    /// for writing in one thread while another thread forks would make exec fail with ETXTBSY.
    fn scripts_dir() -> &'static Path {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            const PREFIX: &str = "taskhook-actions-test-";
            let tmp = std::env::temp_dir();
            // Remove what earlier runs left behind (their process is gone).
            for entry in fs::read_dir(&tmp).into_iter().flatten().flatten() {
                let name = entry.file_name();
                if let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX))
                    && !Path::new("/proc").join(pid).exists()
                    && Path::new("/proc/self").exists()
                {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
            let base = tmp.join(format!("{PREFIX}{}", std::process::id()));
            let _ = fs::remove_dir_all(&base);
            let dir = base.join("scripts");
            fs::create_dir_all(dir.join("sub")).unwrap();
            fs::create_dir_all(base.join("outside")).unwrap();
            let write = |path: PathBuf, body: &str, mode: u32| {
                fs::write(&path, body).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            };
            let script = |name: &str, body: &str| write(dir.join(name), &format!("#!/bin/sh\n{body}\n"), 0o755);
            script("json.sh", r#"echo "working on it"; echo "{\"args\": \"$1|$2\", \"count\": $#}""#);
            script("plain.sh", "echo hello; echo world");
            script("fail.sh", "echo partial; echo 'boom happened' >&2; exit 3");
            script("slow.sh", "sleep 30");
            script("env.sh", "env");
            script("stdin.sh", "cat");
            script("pwd.sh", "pwd");
            script("signal.sh", "kill -9 $$");
            script(
                "big.sh",
                r#"i=0; while [ $i -lt 2000 ]; do echo "line $i of noise"; i=$((i+1)); done; echo '{"done": true}'"#,
            );
            script("sub/nested.sh", r#"echo '{"nested": true}'"#);
            write(dir.join("noexec.sh"), "#!/bin/sh\necho no\n", 0o644);
            write(base.join("outside/secret.sh"), "#!/bin/sh\necho '{\"escaped\": true}'\n", 0o755);
            std::os::unix::fs::symlink(base.join("outside/secret.sh"), dir.join("link.sh")).unwrap();
            dir
        })
    }

    fn script() -> Script {
        Script::new(Some(scripts_dir().to_path_buf()))
    }

    fn fatal_message(r: Result<ActionOutput, ActionError>) -> String {
        match r {
            Err(ActionError::Fatal { message }) => message,
            other => panic!("expected Fatal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn json_last_line_is_the_output() {
        let out = script()
            .run(json!({"file": "json.sh", "argv": ["a", "b c"]}), ctx())
            .await
            .unwrap();
        assert_eq!(out.output, json!({"args": "a|b c", "count": 2}));
        assert_eq!(out.metadata["exit_code"], 0);
        assert_eq!(out.metadata["stderr"], "");
        assert!(
            out.metadata["stdout"]
                .as_str()
                .unwrap()
                .starts_with("working on it\n")
        );
    }

    #[tokio::test]
    async fn plain_output_is_wrapped() {
        let out = script()
            .run(json!({"file": "plain.sh"}), ctx())
            .await
            .unwrap();
        assert_eq!(out.output, json!({"stdout": "hello\nworld\n"}));
        let out = script()
            .run(json!({"file": "./sub/nested.sh"}), ctx())
            .await
            .unwrap();
        assert_eq!(out.output, json!({"nested": true}));
    }

    #[tokio::test]
    async fn stdin_and_working_directory() {
        let out = script()
            .run(
                json!({"file": "stdin.sh", "stdin": "first\n{\"from\": \"stdin\"}\n"}),
                ctx(),
            )
            .await
            .unwrap();
        assert_eq!(out.output, json!({"from": "stdin"}));
        let out = script()
            .run(json!({"file": "pwd.sh"}), ctx())
            .await
            .unwrap();
        let root = fs::canonicalize(scripts_dir()).unwrap();
        assert_eq!(out.output["stdout"].as_str().map(str::trim), root.to_str());
    }

    #[tokio::test]
    async fn non_zero_exit_is_a_server_error() {
        let r = script().run(json!({"file": "fail.sh"}), ctx()).await;
        let Err(ActionError::Server {
            message,
            output: Some(out),
        }) = r
        else {
            panic!("{r:?}")
        };
        assert!(message.contains("exited with code 3"), "{message}");
        assert!(message.contains("boom happened"), "{message}");
        assert_eq!(out.metadata["exit_code"], 3);
        assert_eq!(out.metadata["stdout"], "partial\n");
        assert_eq!(out.metadata["stderr"], "boom happened\n");

        let r = script().run(json!({"file": "signal.sh"}), ctx()).await;
        let Err(ActionError::Server {
            message,
            output: Some(out),
        }) = r
        else {
            panic!("{r:?}")
        };
        assert!(message.contains("signal 9"), "{message}");
        assert_eq!(out.metadata["exit_code"], Value::Null);
    }

    #[tokio::test]
    async fn timeout_kills_the_script() {
        let started = Instant::now();
        let r = script()
            .run(json!({"file": "slow.sh", "timeout": "300ms"}), ctx())
            .await;
        assert_eq!(
            r,
            Err(ActionError::server(
                "script \"slow.sh\" timed out after 300ms"
            ))
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn cancellation_kills_the_script() {
        let ctx = ctx();
        let cancel = ctx.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        let r = script().run(json!({"file": "slow.sh"}), ctx).await;
        assert_eq!(r, Err(ActionError::server("cancelled")));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn environment_is_cleared() {
        let out = script()
            .run(
                json!({"file": "env.sh", "env": {"GIVEN": "yes it is"}}),
                ctx(),
            )
            .await
            .unwrap();
        let stdout = out.metadata["stdout"].as_str().unwrap();
        let names: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        assert!(stdout.lines().any(|l| l == "GIVEN=yes it is"), "{stdout}");
        assert!(names.contains(&"PATH"), "{stdout}");
        // Variables a shell sets by itself are fine; nothing else of ours may leak through.
        let shell_own = ["PWD", "OLDPWD", "SHLVL", "_"];
        let mut checked = 0;
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if name == "PATH" || shell_own.contains(&name) {
                continue;
            }
            checked += 1;
            assert!(
                !names.contains(&name),
                "{name} leaked into the script's environment:\n{stdout}"
            );
        }
        assert!(checked > 0, "the test process has no variable to check");
    }

    /// Variables of the test process usable in an `env` listing: not ones a shell sets by
    /// itself, and with single-line UTF-8 values.
    fn inherited_vars() -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, v)| {
                !["PATH", "PWD", "OLDPWD", "SHLVL", "_"].contains(&k.as_str()) && !v.contains('\n')
            })
            .collect();
        vars.sort();
        vars
    }

    #[tokio::test]
    async fn allow_listed_server_variables_reach_the_script() {
        let vars = inherited_vars();
        let [(passed, passed_value), (overridden, _), (kept_out, _), ..] = vars.as_slice() else {
            panic!("the test process needs three environment variables, has {vars:?}");
        };
        let unset = "TASKHOOK_TEST_SURELY_UNSET_VARIABLE";
        assert!(std::env::var_os(unset).is_none());
        let action =
            script().with_env_allow(vec![passed.clone(), overridden.clone(), unset.to_string()]);
        let out = action
            .run(
                json!({"file": "env.sh", "env": {overridden.as_str(): "from the step"}}),
                ctx(),
            )
            .await
            .unwrap();
        let stdout = out.metadata["stdout"].as_str().unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        let named = |name: &str| {
            lines
                .iter()
                .filter(|l| l.split_once('=').is_some_and(|(k, _)| k == name))
                .count()
        };
        assert!(
            lines.contains(&format!("{passed}={passed_value}").as_str()),
            "{passed} missing:\n{stdout}"
        );
        // The step's own `env` wins over the server's value.
        assert!(
            lines.contains(&format!("{overridden}=from the step").as_str()),
            "{stdout}"
        );
        assert_eq!(named(overridden), 1, "{stdout}");
        assert_eq!(named(kept_out), 0, "{kept_out} leaked:\n{stdout}");
        assert_eq!(named(unset), 0, "{stdout}");

        // Without the allow-list, none of them gets through.
        let out = script()
            .run(json!({"file": "env.sh"}), ctx())
            .await
            .unwrap();
        let stdout = out.metadata["stdout"].as_str().unwrap();
        assert!(
            !stdout.lines().any(|l| l.starts_with(&format!("{passed}="))),
            "{stdout}"
        );
    }

    #[tokio::test]
    async fn invalid_allow_listed_names_are_fatal() {
        for name in ["", "A=B", "A\0B"] {
            let message = fatal_message(
                script()
                    .with_env_allow(vec![name.to_string()])
                    .run(json!({"file": "env.sh"}), ctx())
                    .await,
            );
            assert!(message.contains("--script-env-allow"), "{message}");
            let settings = crate::ActionSettings {
                script_env_allow: vec!["OK".into(), name.to_string()],
                ..Default::default()
            };
            assert!(settings.validate().is_err(), "{name:?}");
        }
        assert_eq!(crate::ActionSettings::default().validate(), Ok(()));
    }

    #[tokio::test]
    async fn output_is_bounded_keeping_the_tail() {
        let out = script()
            .run(json!({"file": "big.sh", "max_output_bytes": 1000}), ctx())
            .await
            .unwrap();
        assert_eq!(out.output, json!({"done": true}));
        assert!(out.metadata["stdout"].as_str().unwrap().len() <= 1000);
        assert_eq!(out.metadata["stdout_truncated"], true);
        let out = script()
            .run(json!({"file": "big.sh"}), ctx())
            .await
            .unwrap();
        assert!(
            out.metadata["stdout"]
                .as_str()
                .unwrap()
                .starts_with("line 0 of noise\n")
        );
        assert!(out.metadata.get("stdout_truncated").is_none());
    }

    #[tokio::test]
    async fn paths_cannot_escape() {
        for file in [
            "../outside/secret.sh",
            "sub/../../outside/secret.sh",
            "/bin/sh",
            "",
        ] {
            let message = fatal_message(script().run(json!({"file": file}), ctx()).await);
            assert!(message.contains("file"), "{file}: {message}");
        }
        let message = fatal_message(script().run(json!({"file": "link.sh"}), ctx()).await);
        assert!(
            message.contains("outside the scripts directory"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn missing_or_unrunnable_scripts_are_fatal() {
        let message = fatal_message(script().run(json!({"file": "missing.sh"}), ctx()).await);
        assert!(message.contains("not found"), "{message}");
        let message = fatal_message(script().run(json!({"file": "noexec.sh"}), ctx()).await);
        assert!(message.contains("not executable"), "{message}");
        let message = fatal_message(script().run(json!({"file": "sub"}), ctx()).await);
        assert!(message.contains("not a regular file"), "{message}");
    }

    #[tokio::test]
    async fn disabled_without_a_scripts_dir() {
        let r = Script::new(None)
            .run(json!({"file": "json.sh"}), ctx())
            .await;
        assert_eq!(
            r,
            Err(ActionError::fatal(
                "scripts are disabled: start the server with --scripts-dir"
            ))
        );
    }

    #[tokio::test]
    async fn bad_run_config_is_fatal_naming_the_field() {
        for (config, field) in [
            (json!({}), "file"),
            (json!({"file": "json.sh", "argv": [1]}), "argv[0]"),
            (json!({"file": "json.sh", "env": {"A=B": "x"}}), "env.A=B"),
            (json!({"file": "json.sh", "env": {"A": 1}}), "env.A"),
            (json!({"file": "json.sh", "timeout": "never"}), "timeout"),
            (
                json!({"file": "json.sh", "max_output_bytes": "lots"}),
                "max_output_bytes",
            ),
            (json!({"file": "json.sh", "shell": true}), "shell"),
        ] {
            let message = fatal_message(script().run(config.clone(), ctx()).await);
            assert!(message.contains(field), "{config}: {message}");
        }
    }

    #[test]
    fn validate() {
        let s = Script::new(None);
        for config in [
            json!({"file": "x.sh"}),
            json!({"file": "{{ inputs.script }}"}),
            json!({"file": "a/b.sh", "argv": ["{{ x }}", "y"], "env": {"K": "{{ v }}"}, "stdin": "{{ s }}"}),
            json!({"file": "x.sh", "argv": "{{ inputs.args }}", "timeout": 5, "max_output_bytes": 10}),
        ] {
            assert_eq!(s.validate(&config), Ok(()), "{config}");
        }
        for (config, field) in [
            (json!({}), "file"),
            (json!({"file": "../x"}), "file"),
            (json!({"file": "a/../../x"}), "file"),
            (json!({"file": "/abs/x.sh"}), "file"),
            (json!({"file": 5}), "file"),
            (json!({"file": "x", "argv": "one string"}), "argv"),
            (json!({"file": "x", "argv": [true]}), "argv[0]"),
            (json!({"file": "x", "env": {"A": 1}}), "env.A"),
            (json!({"file": "x", "env": {"": "v"}}), "env."),
            (json!({"file": "x", "stdin": {}}), "stdin"),
            (json!({"file": "x", "timeout": "0s"}), "timeout"),
            (
                json!({"file": "x", "max_output_bytes": 0}),
                "max_output_bytes",
            ),
            (json!({"file": "x", "cwd": "/"}), "cwd"),
        ] {
            let e = s.validate(&config).expect_err(&config.to_string());
            assert_eq!(e.field, field, "{config}: {e}");
        }
    }
}
