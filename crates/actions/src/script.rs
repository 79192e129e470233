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
    #[serde(default)]
    file: Option<String>,
    /// µTask's name for `file`.
    #[serde(default)]
    file_path: Option<String>,
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    /// µTask's `environment`: like `env`, with any JSON value rendered to text.
    #[serde(default)]
    environment: Option<Map<String, Value>>,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default, deserialize_with = "config::de_opt_duration")]
    timeout: Option<Duration>,
    /// An older µTask form of `timeout`: whole seconds, as a number or its text.
    #[serde(default)]
    timeout_seconds: Option<Value>,
    #[serde(default, deserialize_with = "config::de_opt_u64")]
    max_output_bytes: Option<u64>,
    #[serde(default)]
    output_mode: Option<String>,
    #[serde(default)]
    output_manual_delimiters: Option<Vec<String>>,
    #[serde(default)]
    exit_codes_unrecoverable: Option<Vec<Value>>,
}

const FIELDS: &[&str] = &[
    "file",
    "file_path",
    "argv",
    "env",
    "environment",
    "stdin",
    "timeout",
    "timeout_seconds",
    "max_output_bytes",
    "output_mode",
    "output_manual_delimiters",
    "exit_codes_unrecoverable",
];

/// µTask's `output_mode` values for its script plugin (`auto-result` is its ssh plugin's only).
const MANUAL_LASTLINE: &str = "manual-lastline";
const MANUAL_DELIMITERS: &str = "manual-delimiters";
const DISABLED: &str = "disabled";
const OUTPUT_MODES: &[&str] = &[MANUAL_LASTLINE, MANUAL_DELIMITERS, DISABLED];

/// How the step's output is read from what the script printed on stdout.
#[derive(Debug)]
enum OutputMode {
    /// No `output_mode`: the last non-empty line if it is JSON, else `{"stdout": …}`.
    Default,
    /// µTask's `manual-lastline`: the last line (or the one before a final empty line) must
    /// be a JSON object when the script succeeds; an empty line gives `{}`.
    LastLine,
    /// µTask's `manual-delimiters`: the JSON object between the two delimiters (regular
    /// expressions; the last match of the first one, then as far as the second one goes).
    Delimiters(regex::Regex),
    /// µTask's `disabled`: the output is `{}`.
    Disabled,
}

fn output_mode_error(mode: &str) -> String {
    let mut message = format!(
        "invalid value {mode:?}; expected one of: {}",
        OUTPUT_MODES.join(", ")
    );
    if mode == "auto-result" {
        message.push_str(" (auto-result is for µTask's ssh plugin; scripts use manual-lastline)");
    }
    message
}

/// µTask's delimiter pattern: the text between the last `start` and the last `end` after it.
fn delimiters_regex(start: &str, end: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("(?s)^.*{start}(.*){end}.*$"))
        .map_err(|e| format!("cannot compile the delimiters as regular expressions: {e}"))
}

/// An inclusive range of exit codes from `exit_codes_unrecoverable`: `"3"` or `"10-20"`.
fn exit_code_range(v: &Value) -> Result<(u64, u64), String> {
    let text = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) if n.is_u64() => n.to_string(),
        other => {
            return Err(format!(
                "expected an exit code or a range such as \"10-20\", got {}",
                crate::duration::kind(other)
            ));
        }
    };
    let bad =
        || format!("invalid value {text:?}: expected an exit code or a range such as \"10-20\"");
    let number = |s: &str| -> Result<u64, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u64>()
            .map_err(|_| format!("invalid value {text:?}: exit code out of range"))
    };
    match text.split_once('-') {
        None => {
            let n = number(&text)?;
            Ok((n, n))
        }
        Some((start, end)) => {
            let (start, end) = (number(start)?, number(end)?);
            if end <= start {
                return Err(format!(
                    "invalid range {text:?}: the end must be greater than the start"
                ));
            }
            if start == 0 {
                return Err(format!(
                    "invalid range {text:?}: exit code 0 is a success, it cannot be unrecoverable"
                ));
            }
            Ok((start, end))
        }
    }
}

/// The text an `environment` value gives the script: strings as they are, `null` as nothing,
/// anything else as compact JSON.
fn env_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// µTask's `timeout_seconds`: a positive whole number of seconds, or its text.
fn seconds(v: &Value) -> Option<Duration> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }?;
    (n > 0).then(|| Duration::from_secs(n))
}

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
    c.keys("", map, FIELDS, &[])?;
    let (file_field, file) = match (map.get("file"), map.get("file_path")) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "file_path",
                "give either file or file_path (µTask's name), not both",
            ));
        }
        (None, None) => {
            return Err(ConfigError::new(
                "file",
                "missing required field (or µTask's file_path)",
            ));
        }
        (Some(v), None) => ("file", v),
        (None, Some(v)) => ("file_path", v),
    };
    if let Some(file) = c.string(file_field, file)? {
        check_file(file).map_err(|e| ConfigError::new(file_field, e))?;
    }
    if let Some(v) = opt(map, "argv") {
        c.string_list("argv", v)?;
    }
    let mut env_names = Vec::new();
    if let Some(v) = opt(map, "env")
        && let Some(env) = c.string_map("env", v)?
    {
        for name in env.keys() {
            check_env_name(name).map_err(|e| ConfigError::new(join("env", name), e))?;
            env_names.push(name);
        }
    }
    if let Some(v) = opt(map, "environment")
        && let Some(environment) = c.object("environment", v)?
    {
        for name in environment.keys() {
            let field = join("environment", name);
            check_env_name(name).map_err(|e| ConfigError::new(&field, e))?;
            if env_names.contains(&name) {
                return Err(ConfigError::new(
                    field,
                    "also set in env: give each variable once",
                ));
            }
        }
    }
    if let Some(v) = opt(map, "stdin") {
        c.string("stdin", v)?;
    }
    if let Some(v) = opt(map, "timeout") {
        c.positive_duration("timeout", v)?;
    }
    if let Some(v) = opt(map, "timeout_seconds") {
        if opt(map, "timeout").is_some() {
            return Err(ConfigError::new(
                "timeout_seconds",
                "also given as timeout: give one of them",
            ));
        }
        let templated = v.as_str().is_some_and(|t| t.contains("{{"));
        if !(templated && stage == Stage::Load) && seconds(v).is_none() {
            return Err(ConfigError::new(
                "timeout_seconds",
                "must be a whole number of seconds greater than zero",
            ));
        }
    }
    if let Some(v) = opt(map, "max_output_bytes")
        && c.uint("max_output_bytes", v)? == Some(0)
    {
        return Err(ConfigError::new(
            "max_output_bytes",
            "must be greater than zero",
        ));
    }
    check_output_mode(&c, map)?;
    if let Some(v) = opt(map, "exit_codes_unrecoverable") {
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !c.deferred(item) {
                        exit_code_range(item).map_err(|e| {
                            ConfigError::new(format!("exit_codes_unrecoverable[{i}]"), e)
                        })?;
                    }
                }
            }
            _ if c.deferred(v) => {}
            other => {
                return Err(ConfigError::new(
                    "exit_codes_unrecoverable",
                    format!(
                        "expected a list of exit codes or ranges such as \"10-20\", got {}",
                        crate::duration::kind(other)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `output_mode` and `output_manual_delimiters`, checked together as µTask does.
fn check_output_mode(c: &Check, map: &Map<String, Value>) -> Result<(), ConfigError> {
    // `None`: not given; `Some(None)`: still a template.
    let mode = match opt(map, "output_mode") {
        None => None,
        Some(v) => Some(c.string("output_mode", v)?),
    };
    if let Some(Some(mode)) = mode
        && !OUTPUT_MODES.contains(&mode)
    {
        return Err(ConfigError::new("output_mode", output_mode_error(mode)));
    }
    let Some(delimiters) = opt(map, "output_manual_delimiters") else {
        if let Some(Some(MANUAL_DELIMITERS)) = mode {
            return Err(ConfigError::new(
                "output_manual_delimiters",
                "missing: output_mode manual-delimiters needs two delimiters",
            ));
        }
        return Ok(());
    };
    match mode {
        Some(None) | Some(Some(MANUAL_DELIMITERS)) => {}
        Some(Some(other)) => {
            return Err(ConfigError::new(
                "output_manual_delimiters",
                format!("only used with output_mode manual-delimiters, not {other}"),
            ));
        }
        None => {
            return Err(ConfigError::new(
                "output_manual_delimiters",
                "only used with output_mode manual-delimiters",
            ));
        }
    }
    c.string_list("output_manual_delimiters", delimiters)?;
    if let Value::Array(items) = delimiters {
        if items.len() != 2 {
            return Err(ConfigError::new(
                "output_manual_delimiters",
                format!("expected 2 delimiters, found {}", items.len()),
            ));
        }
        if let [Value::String(start), Value::String(end)] = items.as_slice()
            && !c.deferred(&items[0])
            && !c.deferred(&items[1])
        {
            delimiters_regex(start, end)
                .map_err(|e| ConfigError::new("output_manual_delimiters", e))?;
        }
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
    /// Appends `bytes`, trimming now and then rather than on every read: amortised O(1) a byte.
    fn push(&mut self, bytes: &[u8], max: usize) {
        self.total = self.total.saturating_add(bytes.len() as u64);
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > max.saturating_mul(2).max(64 * 1024) {
            self.trim(max);
        }
    }
    fn trim(&mut self, max: usize) {
        if self.tail.len() > max {
            let excess = self.tail.len() - max;
            self.tail.drain(..excess);
        }
    }
}

/// Drains `reader` to its end (so the child never blocks on a full pipe), keeping the tail, and
/// appends what it reads to `combined` too (stdout and stderr in the order they were read).
async fn capture<R: AsyncRead + Unpin>(
    reader: Option<R>,
    max: usize,
    combined: &std::sync::Mutex<Captured>,
) -> Captured {
    let mut captured = Captured::default();
    let Some(mut reader) = reader else {
        return captured;
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let bytes = buf.get(..n).unwrap_or_default();
                captured.push(bytes, max);
                if let Ok(mut combined) = combined.lock() {
                    combined.push(bytes, max);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    captured.trim(max);
    captured
}

/// µTask's `manual-lastline` line: the text after the last newline, or, when that is empty,
/// the line before it.
fn last_line(text: &str) -> &str {
    let Some(i) = text.rfind('\n') else {
        return text.trim();
    };
    let line = text.get(i..).unwrap_or_default().trim();
    if !line.is_empty() {
        return line;
    }
    let before = text.get(..i).unwrap_or_default();
    match before.rfind('\n') {
        Some(j) => before.get(j..).unwrap_or_default().trim(),
        None => before.trim(),
    }
}

/// The JSON object µTask's output modes expect; nothing (or `null`) gives `{}`.
fn json_object(text: &str) -> Result<Value, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(Value::Object(map)),
        Ok(Value::Null) => Ok(Value::Object(Map::new())),
        Ok(other) => Err(format!(
            "expected a JSON object, got {}",
            crate::duration::kind(&other)
        )),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

impl OutputMode {
    fn from_config(
        mode: Option<&str>,
        delimiters: Option<&[String]>,
    ) -> Result<OutputMode, ActionError> {
        match mode {
            None => Ok(OutputMode::Default),
            Some(MANUAL_LASTLINE) => Ok(OutputMode::LastLine),
            Some(DISABLED) => Ok(OutputMode::Disabled),
            Some(MANUAL_DELIMITERS) => match delimiters {
                Some([start, end]) => delimiters_regex(start, end)
                    .map(OutputMode::Delimiters)
                    .map_err(|e| fatal("output_manual_delimiters", e)),
                _ => Err(fatal("output_manual_delimiters", "expected 2 delimiters")),
            },
            Some(other) => Err(fatal("output_mode", output_mode_error(other))),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            OutputMode::Default => "default",
            OutputMode::LastLine => MANUAL_LASTLINE,
            OutputMode::Delimiters(_) => MANUAL_DELIMITERS,
            OutputMode::Disabled => DISABLED,
        }
    }

    /// The step's output from stdout, or why it cannot be read.
    fn read(&self, stdout: &str) -> Result<Value, String> {
        match self {
            OutputMode::Default => Ok(script_output(stdout)),
            OutputMode::LastLine => json_object(last_line(stdout)),
            OutputMode::Delimiters(re) => match re.captures(stdout).and_then(|c| c.get(1)) {
                Some(m) => json_object(m.as_str()),
                None => Ok(Value::Object(Map::new())),
            },
            OutputMode::Disabled => Ok(Value::Object(Map::new())),
        }
    }
}

/// Go's names for the common signals, as µTask's `process_state` shows them.
fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "hangup",
        2 => "interrupt",
        3 => "quit",
        4 => "illegal instruction",
        5 => "trace/breakpoint trap",
        6 => "aborted",
        7 => "bus error",
        8 => "floating point exception",
        9 => "killed",
        10 => "user defined signal 1",
        11 => "segmentation fault",
        12 => "user defined signal 2",
        13 => "broken pipe",
        14 => "alarm clock",
        15 => "terminated",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

/// µTask's `process_state`: Go's `ProcessState.String()` (`exit status 3`, `signal: killed`).
fn process_state(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let core = if status.core_dumped() {
                " (core dumped)"
            } else {
                ""
            };
            return format!("signal: {}{core}", signal_name(signal));
        }
    }
    status.to_string()
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
        // Serde does not see rules across fields (file or file_path, output_mode and its
        // delimiters, exit code ranges): the checks do.
        check(&config, Stage::Run).map_err(|e| {
            ActionError::fatal(format!(
                "invalid script configuration: {}",
                config::describe(&e)
            ))
        })?;
        let Some(dir) = &self.dir else {
            return Err(ActionError::fatal(
                "scripts are disabled: start the server with --scripts-dir",
            ));
        };
        let timeout = cfg
            .timeout
            .or_else(|| cfg.timeout_seconds.as_ref().and_then(seconds))
            .unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(fatal("timeout", "must be greater than zero"));
        }
        let max = cfg.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES);
        if max == 0 {
            return Err(fatal("max_output_bytes", "must be greater than zero"));
        }
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let mode = OutputMode::from_config(
            cfg.output_mode.as_deref(),
            cfg.output_manual_delimiters.as_deref(),
        )?;
        let mut unrecoverable = Vec::new();
        for (i, item) in cfg.exit_codes_unrecoverable.iter().flatten().enumerate() {
            unrecoverable.push(
                exit_code_range(item)
                    .map_err(|e| fatal(&format!("exit_codes_unrecoverable[{i}]"), e))?,
            );
        }
        let mut env = cfg.env.unwrap_or_default();
        for (name, value) in cfg.environment.unwrap_or_default() {
            if env.contains_key(&name) {
                return Err(fatal(
                    &join("environment", &name),
                    "also set in env: give each variable once",
                ));
            }
            env.insert(name, env_text(&value));
        }
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
        let Some(file) = cfg.file.or(cfg.file_path) else {
            return Err(fatal(
                "file",
                "missing required field (or µTask's file_path)",
            ));
        };
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
            // µTask's variables; taskhook has no resolutions apart from tasks.
            .env("UTASK_TASK_ID", &ctx.task_id)
            .env("UTASK_RESOLUTION_ID", &ctx.task_id)
            .env("UTASK_STEP_NAME", &ctx.step)
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
        let started = std::time::Instant::now();
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
        let combined = std::sync::Mutex::new(Captured::default());
        let outcome = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Outcome::Cancelled,
            _ = tokio::time::sleep(timeout) => Outcome::TimedOut,
            (_, out, err, status) = async {
                tokio::join!(
                    feed,
                    capture(stdout, max, &combined),
                    capture(stderr, max, &combined),
                    child.wait()
                )
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
        let elapsed = started.elapsed();
        let status = status.map_err(|e| ActionError::server(format!("script {file:?}: {e}")))?;
        let mut combined = combined.into_inner().unwrap_or_default();
        combined.trim(max);

        let stdout = out.text();
        let stderr = err.text();
        let state = process_state(&status);
        let mut metadata = Map::new();
        metadata.insert(
            "exit_code".into(),
            status.code().map_or(Value::Null, Value::from),
        );
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(signal) = status.signal() {
                metadata.insert("exit_signal".into(), Value::from(signal));
            }
        }
        metadata.insert("process_state".into(), Value::String(state.clone()));
        metadata.insert(
            "error".into(),
            Value::String(if status.success() {
                String::new()
            } else {
                state
            }),
        );
        metadata.insert(
            "execution_time".into(),
            Value::String(taskhook_model::duration::go_duration(
                elapsed.as_nanos() as i128
            )),
        );
        metadata.insert("output".into(), Value::String(combined.text()));
        metadata.insert("stdout".into(), Value::String(stdout.clone()));
        metadata.insert("stderr".into(), Value::String(stderr.clone()));
        if combined.truncated() {
            metadata.insert("output_truncated".into(), Value::Bool(true));
        }
        if out.truncated() {
            metadata.insert("stdout_truncated".into(), Value::Bool(true));
        }
        if err.truncated() {
            metadata.insert("stderr_truncated".into(), Value::Bool(true));
        }
        let metadata = Value::Object(metadata);
        let read = mode.read(&stdout);
        if status.success() {
            return match read {
                Ok(output) => Ok(ActionOutput { output, metadata }),
                // As in µTask: a script that succeeds must print the output it announces.
                Err(e) => Err(ActionError::Server {
                    message: format!(
                        "script {file:?} succeeded but its output cannot be read \
                         (output_mode {}): {e}",
                        mode.name()
                    ),
                    output: Some(ActionOutput {
                        output: Value::Object(Map::new()),
                        metadata,
                    }),
                }),
            };
        }
        let result = ActionOutput {
            output: read.unwrap_or_else(|_| Value::Object(Map::new())),
            metadata,
        };
        let unrecoverable = status
            .code()
            .and_then(|code| u64::try_from(code).ok())
            .is_some_and(|code| {
                unrecoverable
                    .iter()
                    .any(|(start, end)| (*start..=*end).contains(&code))
            });
        let mut message = format!("script {file:?} {}", exit_description(&status));
        if unrecoverable {
            message.push_str(" (listed in exit_codes_unrecoverable)");
        }
        let stderr_tail = tail(&stderr);
        if !stderr_tail.is_empty() {
            message.push_str(": ");
            message.push_str(stderr_tail);
        }
        if unrecoverable {
            return Err(ActionError::Client {
                message,
                output: Some(result),
            });
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
            script("notjson.sh", "echo 'just text'");
            script("trailing.sh", r#"echo noise; echo '{"a": 1}'; echo"#);
            script(
                "delims.sh",
                r#"echo before; echo 'START {"d": 1} END'; echo 'START {"d": 2} END trailing'; echo after"#,
            );
            script("exit5.sh", r#"echo '{"partial": true}'; echo 'bad input' >&2; exit 5"#);
            script("mixed.sh", "echo out; sleep 0.1; echo err >&2");
            script("array.sh", "echo '[1, 2]'");
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
    async fn utask_timeout_seconds_bounds_the_script() {
        let r = script()
            .run(json!({"file": "slow.sh", "timeout_seconds": "1"}), ctx())
            .await;
        assert_eq!(
            r,
            Err(ActionError::server("script \"slow.sh\" timed out after 1s"))
        );
        for bad in [
            json!({"file": "x.sh", "timeout_seconds": "soon"}),
            json!({"file": "x.sh", "timeout_seconds": 0}),
            json!({"file": "x.sh", "timeout_seconds": 5, "timeout": "5s"}),
        ] {
            assert_eq!(
                check(&bad, Stage::Load).map_err(|e| e.field),
                Err("timeout_seconds".to_string()),
                "{bad}"
            );
        }
        assert!(
            check(
                &json!({"file": "x.sh", "timeout_seconds": "{{ .input.t }}"}),
                Stage::Load
            )
            .is_ok()
        );
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

    #[tokio::test]
    async fn utask_file_path_and_environment() {
        let out = script()
            .run(
                json!({
                    "file_path": "env.sh",
                    "environment": {"S": "text", "N": 42, "B": true, "O": {"a": [1]}, "Z": null},
                    "env": {"E": "from env"},
                }),
                ctx(),
            )
            .await
            .unwrap();
        let stdout = out.metadata["stdout"].as_str().unwrap();
        for line in [
            "S=text",
            "N=42",
            "B=true",
            r#"O={"a":[1]}"#,
            "Z=",
            "E=from env",
            "UTASK_TASK_ID=t1",
            "UTASK_RESOLUTION_ID=t1",
            "UTASK_STEP_NAME=s",
        ] {
            assert!(
                stdout.lines().any(|l| l == line),
                "{line} missing:\n{stdout}"
            );
        }
    }

    #[tokio::test]
    async fn utask_metadata() {
        let out = script()
            .run(json!({"file_path": "mixed.sh"}), ctx())
            .await
            .unwrap();
        let m = &out.metadata;
        assert_eq!(m["exit_code"], 0);
        assert_eq!(m["process_state"], "exit status 0");
        assert_eq!(m["error"], "");
        assert_eq!(m["output"], "out\nerr\n");
        assert_eq!(m["stdout"], "out\n");
        assert_eq!(m["stderr"], "err\n");
        assert!(m.get("exit_signal").is_none());
        let time = m["execution_time"].as_str().unwrap();
        assert!(time.ends_with("ms") || time.ends_with('s'), "{time}");

        let r = script().run(json!({"file": "signal.sh"}), ctx()).await;
        let Err(ActionError::Server {
            output: Some(out), ..
        }) = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(out.metadata["process_state"], "signal: killed");
        assert_eq!(out.metadata["error"], "signal: killed");
        assert_eq!(out.metadata["exit_signal"], 9);
        assert_eq!(out.metadata["exit_code"], Value::Null);
    }

    #[tokio::test]
    async fn output_modes() {
        let run = |config: Value| async move { script().run(config, ctx()).await };
        let ok = |r: Result<ActionOutput, ActionError>| r.unwrap().output;
        // manual-lastline: the last line, past the final newline; as in µTask, an empty line
        // printed last (two newlines) gives `{}`.
        assert_eq!(
            ok(run(json!({"file": "json.sh", "output_mode": "manual-lastline"})).await),
            json!({"args": "|", "count": 0})
        );
        assert_eq!(
            ok(run(json!({"file": "trailing.sh", "output_mode": "manual-lastline"})).await),
            json!({})
        );
        assert_eq!(
            ok(run(json!({"file": "trailing.sh"})).await),
            json!({"a": 1})
        );
        // A script that succeeds without the JSON object it announces is a server error.
        for file in ["notjson.sh", "array.sh"] {
            let r = run(json!({"file": file, "output_mode": "manual-lastline"})).await;
            let Err(ActionError::Server {
                message,
                output: Some(out),
            }) = r
            else {
                panic!("{r:?}")
            };
            assert!(message.contains("manual-lastline"), "{message}");
            assert_eq!(out.output, json!({}));
            assert_eq!(out.metadata["exit_code"], 0);
        }
        // Without output_mode, taskhook's rule: such output is wrapped.
        assert_eq!(
            ok(run(json!({"file": "notjson.sh"})).await),
            json!({"stdout": "just text\n"})
        );
        assert_eq!(ok(run(json!({"file": "array.sh"})).await), json!([1, 2]));
        assert_eq!(
            ok(run(json!({
                "file": "delims.sh",
                "output_mode": "manual-delimiters",
                "output_manual_delimiters": ["START", "END"],
            }))
            .await),
            json!({"d": 2})
        );
        assert_eq!(
            ok(run(json!({
                "file": "plain.sh",
                "output_mode": "manual-delimiters",
                "output_manual_delimiters": ["START", "END"],
            }))
            .await),
            json!({})
        );
        assert_eq!(
            ok(run(json!({"file": "notjson.sh", "output_mode": "disabled"})).await),
            json!({})
        );
    }

    #[tokio::test]
    async fn unrecoverable_exit_codes_are_client_errors() {
        for (codes, client) in [
            (json!(["5"]), true),
            (json!(["1-4", "6"]), false),
            (json!(["3-10"]), true),
            (json!([5]), true),
            (json!([]), false),
        ] {
            let r = script()
                .run(
                    json!({"file_path": "exit5.sh", "output_mode": "manual-lastline",
                           "exit_codes_unrecoverable": codes}),
                    ctx(),
                )
                .await;
            let (message, out) = match r {
                Err(ActionError::Client {
                    message,
                    output: Some(out),
                }) if client => (message, out),
                Err(ActionError::Server {
                    message,
                    output: Some(out),
                }) if !client => (message, out),
                other => panic!("{codes}: {other:?}"),
            };
            assert!(message.contains("exited with code 5"), "{message}");
            assert!(message.contains("bad input"), "{message}");
            assert_eq!(
                message.contains("exit_codes_unrecoverable"),
                client,
                "{message}"
            );
            assert_eq!(out.output, json!({"partial": true}));
            assert_eq!(out.metadata["process_state"], "exit status 5");
            assert_eq!(out.metadata["error"], "exit status 5");
        }
        // A signal has no exit code: never unrecoverable.
        let r = script()
            .run(
                json!({"file": "signal.sh", "exit_codes_unrecoverable": ["1-255"]}),
                ctx(),
            )
            .await;
        assert!(matches!(r, Err(ActionError::Server { .. })), "{r:?}");
    }

    #[test]
    fn validate_utask_fields() {
        let s = Script::new(None);
        for config in [
            json!({"file_path": "x.sh", "environment": {"A": 1, "B": "{{ x }}", "C": null}}),
            json!({"file_path": "x.sh", "output_mode": "manual-lastline"}),
            json!({"file_path": "x.sh", "output_mode": "disabled", "output_manual_delimiters": null}),
            json!({"file_path": "x.sh", "output_mode": "manual-delimiters",
                   "output_manual_delimiters": ["<<", ">>"]}),
            json!({"file_path": "x.sh", "output_mode": "{{ m }}",
                   "output_manual_delimiters": ["a", "b"]}),
            json!({"file_path": "x.sh", "exit_codes_unrecoverable": ["1-10", "100", 110, "{{ c }}"]}),
            json!({"file_path": "x.sh", "exit_codes_unrecoverable": "{{ codes }}"}),
            json!({"file_path": "x.sh", "exit_codes_unrecoverable": ["0"]}),
        ] {
            assert_eq!(s.validate(&config), Ok(()), "{config}");
        }
        for (config, field, says) in [
            (
                json!({"file": "x", "file_path": "x"}),
                "file_path",
                "not both",
            ),
            (json!({"file_path": "../x"}), "file_path", ".."),
            (json!({"file_path": 1}), "file_path", "string"),
            (
                json!({"file_path": "x", "environment": ["A"]}),
                "environment",
                "object",
            ),
            (
                json!({"file_path": "x", "environment": {"A=B": "1"}}),
                "environment.A=B",
                "name",
            ),
            (
                json!({"file_path": "x", "env": {"A": "1"}, "environment": {"A": "2"}}),
                "environment.A",
                "also set in env",
            ),
            (
                json!({"file_path": "x", "output_mode": "lines"}),
                "output_mode",
                "manual-lastline",
            ),
            (
                json!({"file_path": "x", "output_mode": "auto-result"}),
                "output_mode",
                "ssh",
            ),
            (
                json!({"file_path": "x", "output_mode": 1}),
                "output_mode",
                "string",
            ),
            (
                json!({"file_path": "x", "output_mode": "manual-delimiters"}),
                "output_manual_delimiters",
                "missing",
            ),
            (
                json!({"file_path": "x", "output_manual_delimiters": ["a", "b"]}),
                "output_manual_delimiters",
                "only used",
            ),
            (
                json!({"file_path": "x", "output_mode": "disabled", "output_manual_delimiters": []}),
                "output_manual_delimiters",
                "only used",
            ),
            (
                json!({"file_path": "x", "output_mode": "manual-delimiters",
                       "output_manual_delimiters": ["a"]}),
                "output_manual_delimiters",
                "2 delimiters",
            ),
            (
                json!({"file_path": "x", "output_mode": "manual-delimiters",
                       "output_manual_delimiters": ["(", "b"]}),
                "output_manual_delimiters",
                "regular expressions",
            ),
            (
                json!({"file_path": "x", "exit_codes_unrecoverable": "1"}),
                "exit_codes_unrecoverable",
                "list",
            ),
            (
                json!({"file_path": "x", "exit_codes_unrecoverable": ["1", "x"]}),
                "exit_codes_unrecoverable[1]",
                "range",
            ),
            (
                json!({"file_path": "x", "exit_codes_unrecoverable": ["10-5"]}),
                "exit_codes_unrecoverable[0]",
                "greater",
            ),
            (
                json!({"file_path": "x", "exit_codes_unrecoverable": ["0-5"]}),
                "exit_codes_unrecoverable[0]",
                "success",
            ),
            (
                json!({"file_path": "x", "exit_codes_unrecoverable": ["-1"]}),
                "exit_codes_unrecoverable[0]",
                "range",
            ),
            (
                json!({"file_path": "x", "exit_codes_unrecoverable": ["99999999999999999999"]}),
                "exit_codes_unrecoverable[0]",
                "out of range",
            ),
        ] {
            let e = s.validate(&config).expect_err(&config.to_string());
            assert_eq!(e.field, field, "{config}: {e}");
            assert!(e.message.contains(says), "{config}: {e}");
        }
    }

    #[tokio::test]
    async fn utask_fields_are_checked_at_run_time_too() {
        for (config, field) in [
            (
                json!({"file": "json.sh", "file_path": "json.sh"}),
                "file_path",
            ),
            (
                json!({"file": "json.sh", "output_manual_delimiters": ["a", "b"]}),
                "output_manual_delimiters",
            ),
            (
                json!({"file": "json.sh", "exit_codes_unrecoverable": ["{{ x }}"]}),
                "exit_codes_unrecoverable[0]",
            ),
            (
                json!({"file": "json.sh", "output_mode": "auto-result"}),
                "output_mode",
            ),
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
