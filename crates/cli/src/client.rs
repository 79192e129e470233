//! Client subcommands: talk to a running server over its HTTP API, reading
//! TASKHOOK_URL and TASKHOOK_TOKEN; human output by default, `--json` for scripts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Args, Clone)]
pub struct Conn {
    /// Server URL.
    #[arg(
        long,
        env = "TASKHOOK_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub(crate) url: String,
    /// API token.
    #[arg(long, env = "TASKHOOK_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// Print the server's JSON instead of a summary.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Subcommand)]
pub enum TemplateCommand {
    /// Check template files without a server; prints every problem with its step and field.
    Validate {
        files: Vec<PathBuf>,
        /// Function files (or directories of them) the templates may call.
        #[arg(long = "functions")]
        functions: Vec<PathBuf>,
    },
    /// Check a directory of µTask templates (µTask's `--templates` directory): for each file,
    /// whether taskhook runs it unchanged, what of it does not take effect, or why it is
    /// refused. Offline, like `validate`; exit code 1 when one is refused.
    ImportUtask {
        dir: PathBuf,
        /// µTask's functions directory, for templates that call functions.
        #[arg(long)]
        functions: Option<PathBuf>,
    },
    /// Print the JSON Schema (draft-07) of a template document, for editors: taskhook's own
    /// form and µTask's habits (docs/template-schema.json is this output).
    Schema,
    /// Create or replace templates from files (YAML or JSON).
    Put {
        files: Vec<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List templates.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one template.
    Get {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a template (tasks already created from it still finish).
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum FunctionCommand {
    /// Create or replace library functions from files (YAML or JSON). Templates stored
    /// afterwards take the new version; templates already stored keep theirs.
    Put {
        files: Vec<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List library functions.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one function.
    Get {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a function from the library.
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn function(cmd: FunctionCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        FunctionCommand::Put { files, conn } => {
            let c = Client::new(conn)?;
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                let function = taskhook_model::Function::parse(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", f.display(), e.message))?;
                let content_type = if text.trim_start().starts_with('{') {
                    "application/json"
                } else {
                    "application/yaml"
                };
                c.call(
                    reqwest::Method::PUT,
                    &format!("/api/v1/functions/{}", function.name),
                    Some((text, content_type)),
                )
                .await
                .with_context(|| f.display().to_string())?;
                println!("{}", function.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        FunctionCommand::List { conn } => {
            let json_out = conn.json;
            let out = Client::new(conn)?.get("/api/v1/functions").await?;
            if json_out {
                print_json(&out);
            } else {
                for f in out.as_array().into_iter().flatten() {
                    println!(
                        "{:<32} {}",
                        f["name"].as_str().unwrap_or(""),
                        f["description"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        FunctionCommand::Get { name, conn } => {
            print_json(
                &Client::new(conn)?
                    .get(&format!("/api/v1/functions/{name}"))
                    .await?,
            );
            Ok(ExitCode::SUCCESS)
        }
        FunctionCommand::Delete { name, conn } => {
            Client::new(conn)?
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/functions/{name}"),
                    None,
                )
                .await?;
            println!("deleted {name}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Subcommand)]
pub enum TaskCommand {
    /// Create a task from a template.
    Create {
        template: String,
        /// An input, NAME=VALUE (repeatable); VALUE is parsed as JSON when it can be, else kept as text.
        #[arg(short, long = "input", value_parser = parse_kv)]
        inputs: Vec<(String, Value)>,
        /// All inputs as one JSON object.
        #[arg(long, conflicts_with = "inputs")]
        inputs_json: Option<String>,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Start no earlier than this RFC 3339 time.
        #[arg(long)]
        run_at: Option<String>,
        /// A user who may read, resolve and retry this task (repeatable).
        #[arg(long = "resolver")]
        resolvers: Vec<String>,
        /// A user who may read this task (repeatable).
        #[arg(long = "watcher")]
        watchers: Vec<String>,
        /// Watch the task until it stops.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a task with its steps.
    Get {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List tasks, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        template: Option<String>,
        /// Only BLOCKED tasks blocked for this reason: crashed, crash_loop, failed_steps,
        /// retry_max, deadlock, template.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Follow a task, printing each step change, until it stops (DONE, BLOCKED, CANCELLED, WONTFIX, PAUSED, TODO).
    Watch {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a task's audit trail.
    Events {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Start a task that waits for a resolver.
    Resolve {
        id: String,
        #[arg(short, long = "input", value_parser = parse_kv)]
        inputs: Vec<(String, Value)>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel a task.
    Cancel {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Run blocked or paused tasks again: the tasks named, or the BLOCKED tasks a filter
    /// selects (--reason and/or --template).
    Retry {
        #[arg(required_unless_present_any = ["reason", "template"], conflicts_with_all = ["reason", "template", "limit"])]
        ids: Vec<String>,
        /// Retry the BLOCKED tasks blocked for this reason (crashed, crash_loop,
        /// failed_steps, retry_max, deadlock, template).
        #[arg(long)]
        reason: Option<String>,
        /// Retry the BLOCKED tasks of this template.
        #[arg(long)]
        template: Option<String>,
        /// Most tasks a filter retries (1-1000, default 100), newest first.
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Give a task BLOCKED by retry_max as many runs again as its template allows, and run it.
    Extend {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Run a BLOCKED or PAUSED task again from a step: the step and every step depending on
    /// it go back to TODO; the steps before keep their outputs.
    Rerun {
        id: String,
        /// The step to run again.
        #[arg(long)]
        from: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Close a task that is TODO, BLOCKED or PAUSED as WONTFIX: it will not run (on).
    Wontfix {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Leave a comment on a task.
    Comment {
        id: String,
        /// The comment (1 to 10,000 characters).
        text: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a task's comments, oldest first.
    Comments {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Set a step's state by hand on a BLOCKED or PAUSED task (e.g. mark a CRASHED step DONE
    /// after checking its effect, or send it back to TODO); then `retry` runs the task on.
    SetStep {
        id: String,
        step: String,
        /// TODO, DONE, PRUNE, CLIENT_ERROR, FATAL_ERROR or one of the step's custom states.
        state: String,
        /// The step's output as JSON (DONE and custom states).
        #[arg(long)]
        output: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Pause a task.
    Pause {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum MaintenanceCommand {
    /// Make the API read-only: every call that could change something (and every trigger and
    /// webhook) answers 503 with Retry-After until `off`. Running tasks keep running.
    On {
        /// Told to refused callers.
        #[arg(short, long)]
        message: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Accept changes again.
    Off {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show whether maintenance mode is on.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn maintenance(cmd: MaintenanceCommand) -> anyhow::Result<ExitCode> {
    let (conn, body) = match cmd {
        MaintenanceCommand::On { message, conn } => {
            (conn, Some(json!({"enabled": true, "message": message})))
        }
        MaintenanceCommand::Off { conn } => (conn, Some(json!({"enabled": false}))),
        MaintenanceCommand::Status { conn } => (conn, None),
    };
    let json_out = conn.json;
    let c = Client::new(conn)?;
    let out = match body {
        Some(b) => {
            c.call(
                reqwest::Method::PUT,
                "/api/v1/maintenance",
                Some((b.to_string(), "application/json")),
            )
            .await?
        }
        None => c.get("/api/v1/maintenance").await?,
    };
    if json_out {
        print_json(&out);
        return Ok(ExitCode::SUCCESS);
    }
    let mut line = if out["enabled"].as_bool() == Some(true) {
        "maintenance mode: on (the API is read-only)".to_string()
    } else {
        "maintenance mode: off".to_string()
    };
    if let Some(at) = out["changed_at"].as_str() {
        line.push_str(&format!(
            ", since {at} by {}",
            out["changed_by"].as_str().unwrap_or("?")
        ));
    }
    println!("{line}");
    if out["enabled"].as_bool() == Some(true)
        && let Some(m) = out["message"].as_str()
    {
        println!("message: {m}");
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_kv(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
    Ok((k.to_string(), value))
}

pub(crate) struct Client {
    http: reqwest::Client,
    conn: Conn,
}

impl Client {
    pub(crate) fn new(conn: Conn) -> anyhow::Result<Self> {
        if conn.token.is_none() {
            bail!(
                "no API token: set TASKHOOK_TOKEN (the server prints its admin token at start) or pass --token"
            );
        }
        Ok(Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            conn,
        })
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(String, &str)>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.conn.url.trim_end_matches('/'), path);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(self.conn.token.as_deref().unwrap_or_default());
        if let Some((b, content_type)) = body {
            req = req.header("content-type", content_type).body(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            bail!("{}", describe_problem(status.as_u16(), &value));
        }
        Ok(value)
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::POST,
            path,
            Some((body.to_string(), "application/json")),
        )
        .await
    }

    pub(crate) async fn put(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::PUT,
            path,
            Some((body.to_string(), "application/json")),
        )
        .await
    }
}

/// A problem+json error as one readable paragraph.
pub(crate) fn describe_problem(status: u16, v: &Value) -> String {
    let detail = v
        .get("detail")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| v.to_string());
    let mut out = format!("{status}: {detail}");
    if let Some(errors) = v.get("errors").and_then(Value::as_array) {
        out = format!("{status}: the server rejected it:");
        for e in errors {
            out.push_str(&format!(
                "\n  {}: {}",
                e["field"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            ));
        }
    } else if let Some(f) = v.get("field").and_then(Value::as_str) {
        out.push_str(&format!(" (field: {f})"));
    }
    out
}

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub async fn template(cmd: TemplateCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TemplateCommand::Validate { files, functions } => validate_files(&files, &functions),
        TemplateCommand::ImportUtask { dir, functions } => import_utask(&dir, functions.as_deref()),
        TemplateCommand::Schema => {
            let actions =
                taskhook_actions::Registry::builtin(&taskhook_actions::ActionSettings::default());
            let names: Vec<&str> = actions.names().collect();
            print_json(&taskhook_model::schema::template_schema(&names));
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Put { files, conn } => {
            let json_out = conn.json;
            let c = Client::new(conn)?;
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                let t = taskhook_model::Template::parse(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", f.display(), e.message))?;
                let content_type = if text.trim_start().starts_with('{') {
                    "application/json"
                } else {
                    "application/yaml"
                };
                let out = c
                    .call(
                        reqwest::Method::PUT,
                        &format!("/api/v1/templates/{}", t.name),
                        Some((text, content_type)),
                    )
                    .await
                    .with_context(|| f.display().to_string())?;
                if json_out {
                    print_json(&out);
                } else {
                    println!(
                        "{} version {}",
                        out["name"].as_str().unwrap_or(""),
                        out["version"]
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::List { conn } => {
            let json_out = conn.json;
            let out = Client::new(conn)?.get("/api/v1/templates").await?;
            if json_out {
                print_json(&out);
            } else {
                for t in out.as_array().into_iter().flatten() {
                    println!(
                        "{:<32} v{:<4} {}",
                        t["name"].as_str().unwrap_or(""),
                        t["version"],
                        t["description"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Get { name, conn } => {
            let out = Client::new(conn)?
                .get(&format!("/api/v1/templates/{name}"))
                .await?;
            print_json(&out);
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Delete { name, conn } => {
            Client::new(conn)?
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/templates/{name}"),
                    None,
                )
                .await?;
            println!("deleted {name}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `*.yaml`, `*.yml` and `*.json` files of each directory given, and each file given.
pub fn document_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    matches!(
                        f.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Templates checked offline as the server checks them: the builtin actions and a library
/// of functions read from files.
struct OfflineChecker {
    registry: taskhook_actions::Registry,
    library: BTreeMap<String, taskhook_model::Function>,
}

/// What checking one template document found.
struct Checked {
    template: taskhook_model::Template,
    language: taskhook_model::Language,
    notes: taskhook_model::utask::Notes,
}

impl OfflineChecker {
    fn new(function_paths: &[PathBuf]) -> anyhow::Result<Self> {
        let registry =
            taskhook_actions::Registry::builtin(&taskhook_actions::ActionSettings::default());
        let mut library = BTreeMap::new();
        {
            let catalog = taskhook_engine::ActionCatalog { actions: &registry };
            let mut files = Vec::new();
            for f in document_files(function_paths)? {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                let function = taskhook_model::Function::parse(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", f.display(), e.message))?;
                library.insert(function.name.clone(), function.clone());
                files.push((f, function));
            }
            // Functions may call each other: each is checked with all of them at hand.
            for (f, function) in &files {
                if let Err(e) =
                    taskhook_model::validate::validate_function(function, &library, &catalog)
                {
                    bail!("{}: {e}", f.display());
                }
            }
        }
        Ok(OfflineChecker { registry, library })
    }

    /// Parses and validates one document with the server's default limits (a server started
    /// with other limits may differ), calling library functions as the server embeds them.
    fn check(&self, text: &str) -> Result<Checked, taskhook_model::validate::TemplateError> {
        let limits = taskhook_model::TemplateLimits::default();
        limits.check_document(text)?;
        let (mut template, notes) =
            taskhook_model::Template::parse_with_notes(text).map_err(|e| {
                taskhook_model::validate::TemplateError {
                    errors: vec![taskhook_model::validate::ValidationError {
                        field: "template".into(),
                        message: e.message,
                    }],
                }
            })?;
        // The functions the steps call, and those they call, as the server embeds them.
        loop {
            let wanted: Vec<taskhook_model::Function> = template
                .missing_functions(|k| self.registry.get(k).is_some())
                .iter()
                .filter_map(|k| self.library.get(k).cloned())
                .collect();
            if wanted.is_empty() {
                break;
            }
            for f in wanted {
                template.functions.insert(f.name.clone(), f);
            }
        }
        let catalog = taskhook_engine::ActionCatalog {
            actions: &self.registry,
        };
        let language =
            taskhook_model::validate::validate_template_with(&template, &catalog, &limits)?;
        Ok(Checked {
            template,
            language,
            notes,
        })
    }
}

fn validate_files(files: &[PathBuf], function_paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    if files.is_empty() {
        bail!("give at least one template file");
    }
    let checker = OfflineChecker::new(function_paths)?;
    let mut failed = false;
    for f in files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                println!("{}: cannot read: {e}", f.display());
                failed = true;
                continue;
            }
        };
        match checker.check(&text) {
            Ok(c) => println!(
                "{}: ok ({}, {} steps)",
                f.display(),
                c.template.name,
                c.template.steps.len()
            ),
            Err(e) => {
                failed = true;
                for err in e.errors {
                    println!("{}: {}: {}", f.display(), err.field, err.message);
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `template import-utask DIR`: each µTask template of a directory checked as taskhook will
/// run it, with what will not take effect; exit 1 when one would be refused.
fn import_utask(dir: &Path, functions: Option<&Path>) -> anyhow::Result<ExitCode> {
    if !dir.is_dir() {
        bail!("{} is not a directory of µTask templates", dir.display());
    }
    let checker = OfflineChecker::new(
        &functions
            .map(Path::to_path_buf)
            .into_iter()
            .collect::<Vec<_>>(),
    )?;
    let files = document_files(&[dir.to_path_buf()])?;
    if files.is_empty() {
        bail!("{} holds no .yaml, .yml or .json file", dir.display());
    }
    let (mut unchanged, mut refused) = (0, 0);
    for f in &files {
        let name = f.file_name().map_or_else(
            || f.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                println!("{name}: cannot read: {e}");
                refused += 1;
                continue;
            }
        };
        match checker.check(&text) {
            Ok(c) => {
                unchanged += 1;
                let language = match c.language {
                    taskhook_model::Language::Go => "Go templates",
                    taskhook_model::Language::Jinja => "MiniJinja",
                };
                println!(
                    "{name}: runs unchanged as {:?} ({language}, {} steps)",
                    c.template.name,
                    c.template.steps.len()
                );
                for note in &c.notes.0 {
                    println!("  not taken: {note}");
                }
            }
            Err(e) => {
                refused += 1;
                println!("{name}: refused");
                for err in e.errors {
                    println!("  {}: {}", err.field, err.message);
                }
            }
        }
    }
    println!(
        "{unchanged} of {} templates run unchanged; {refused} refused",
        files.len()
    );
    Ok(if refused > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn inputs_object(inputs: Vec<(String, Value)>) -> Value {
    Value::Object(inputs.into_iter().collect())
}

fn summarize_task(t: &Value) {
    println!(
        "{}  {}  {}  ({})",
        t["id"].as_str().unwrap_or(""),
        t["state"].as_str().unwrap_or(""),
        t["title"].as_str().unwrap_or(""),
        t["template"].as_str().unwrap_or("")
    );
}

fn print_steps(t: &Value) {
    if let Some(steps) = t["steps"].as_object() {
        for (name, s) in steps {
            let err = s["error"]
                .as_str()
                .map(|e| format!("  {e}"))
                .unwrap_or_default();
            println!(
                "  {:<28} {:<13} attempts {}{}",
                name,
                s["state"].as_str().unwrap_or(""),
                s["attempts"],
                err
            );
        }
    }
    if !t["result"].is_null() {
        println!("  result: {}", t["result"]);
    }
}

pub async fn task(cmd: TaskCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TaskCommand::Create {
            template,
            inputs,
            inputs_json,
            idempotency_key,
            run_at,
            resolvers,
            watchers,
            watch: follow,
            conn,
        } => {
            let inputs = match inputs_json {
                Some(j) => serde_json::from_str(&j).context("--inputs-json is not valid JSON")?,
                None => inputs_object(inputs),
            };
            let json_out = conn.json;
            let c = Client::new(conn)?;
            let mut body = json!({"template": template, "inputs": inputs});
            if let Some(k) = idempotency_key {
                body["idempotency_key"] = json!(k);
            }
            if let Some(r) = run_at {
                body["run_at"] = json!(r);
            }
            if !resolvers.is_empty() {
                body["resolver_usernames"] = json!(resolvers);
            }
            if !watchers.is_empty() {
                body["watcher_usernames"] = json!(watchers);
            }
            let out = c.post("/api/v1/tasks", body).await?;
            let id = out["id"].as_str().unwrap_or_default().to_string();
            if json_out && !follow {
                print_json(&out);
            } else {
                println!("{id} {}", out["state"].as_str().unwrap_or(""));
            }
            if follow {
                watch(&c, &id).await
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        TaskCommand::Get { id, conn } => {
            let json_out = conn.json;
            let t = Client::new(conn)?
                .get(&format!("/api/v1/tasks/{id}"))
                .await?;
            if json_out {
                print_json(&t);
            } else {
                summarize_task(&t);
                print_steps(&t);
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::List {
            state,
            template,
            reason,
            limit,
            conn,
        } => {
            let json_out = conn.json;
            let mut q = vec![format!("limit={limit}")];
            if let Some(s) = state {
                q.push(format!("state={s}"));
            }
            if let Some(r) = reason {
                q.push(format!("reason={r}"));
            }
            if let Some(t) = template {
                q.push(format!("template={t}"));
            }
            let out = Client::new(conn)?
                .get(&format!("/api/v1/tasks?{}", q.join("&")))
                .await?;
            if json_out {
                print_json(&out);
            } else {
                for t in out["tasks"].as_array().into_iter().flatten() {
                    summarize_task(t);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Watch { id, conn } => {
            let c = Client::new(conn)?;
            watch(&c, &id).await
        }
        TaskCommand::Events { id, conn } => {
            let json_out = conn.json;
            let out = Client::new(conn)?
                .get(&format!("/api/v1/tasks/{id}/events"))
                .await?;
            if json_out {
                print_json(&out);
            } else {
                for e in out.as_array().into_iter().flatten() {
                    let arrow = match (e["from"].as_str(), e["to"].as_str()) {
                        (Some(f), Some(t)) => format!("{f} -> {t}"),
                        (None, Some(t)) => format!("-> {t}"),
                        _ => String::new(),
                    };
                    let detail = if e["detail"].is_null() {
                        String::new()
                    } else {
                        e["detail"].to_string()
                    };
                    println!(
                        "{}  {:<10} {:<16} {:<22} {}",
                        e["at"].as_str().unwrap_or(""),
                        e["actor"].as_str().unwrap_or(""),
                        e["kind"].as_str().unwrap_or(""),
                        arrow,
                        detail
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Resolve { id, inputs, conn } => {
            action(
                conn,
                &id,
                "resolve",
                json!({"resolver_inputs": inputs_object(inputs)}),
            )
            .await
        }
        TaskCommand::Cancel { id, conn } => action(conn, &id, "cancel", Value::Null).await,
        TaskCommand::Retry {
            ids,
            reason,
            template,
            limit,
            conn,
        } => {
            if let [id] = ids.as_slice() {
                return action(conn, id, "retry", Value::Null).await;
            }
            let body = if ids.is_empty() {
                json!({"reason": reason, "template": template, "limit": limit})
            } else {
                json!({ "ids": ids })
            };
            let body = Value::Object(
                body.as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
            let json_out = conn.json;
            let out = Client::new(conn)?.post("/api/v1/tasks/retry", body).await?;
            if json_out {
                print_json(&out);
            } else {
                for id in out["retried"].as_array().into_iter().flatten() {
                    println!("{} READY", id.as_str().unwrap_or(""));
                }
                for f in out["failed"].as_array().into_iter().flatten() {
                    eprintln!(
                        "{} not retried: {}",
                        f["id"].as_str().unwrap_or(""),
                        f["detail"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(if out["failed"].as_array().is_some_and(|f| !f.is_empty()) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        TaskCommand::Extend { id, conn } => action(conn, &id, "extend", Value::Null).await,
        TaskCommand::Wontfix { id, conn } => action(conn, &id, "wontfix", Value::Null).await,
        TaskCommand::Rerun { id, from, conn } => {
            let json_out = conn.json;
            let out = Client::new(conn)?
                .post(
                    &format!("/api/v1/tasks/{id}/rerun"),
                    json!({ "from": from }),
                )
                .await?;
            if json_out {
                print_json(&out);
            } else {
                let steps: Vec<&str> = out["steps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str())
                    .collect();
                println!(
                    "{id} {} (again: {})",
                    out["state"].as_str().unwrap_or(""),
                    steps.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Comment { id, text, conn } => {
            let json_out = conn.json;
            let out = Client::new(conn)?
                .post(
                    &format!("/api/v1/tasks/{id}/comments"),
                    json!({ "content": text }),
                )
                .await?;
            if json_out {
                print_json(&out);
            } else {
                println!("{}", out["id"].as_str().unwrap_or(""));
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Comments { id, conn } => {
            let json_out = conn.json;
            let out = Client::new(conn)?
                .get(&format!("/api/v1/tasks/{id}/comments"))
                .await?;
            if json_out {
                print_json(&out);
            } else {
                for c in out.as_array().into_iter().flatten() {
                    println!(
                        "{} {}: {}",
                        c["created_at"].as_str().unwrap_or(""),
                        c["author"].as_str().unwrap_or(""),
                        c["content"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::SetStep {
            id,
            step,
            state,
            output,
            conn,
        } => {
            let mut body = json!({ "state": state });
            if let Some(o) = output {
                let v: Value = serde_json::from_str(&o)
                    .map_err(|e| anyhow::anyhow!("--output is not JSON: {e}"))?;
                body["output"] = v;
            }
            let json_out = conn.json;
            let out = Client::new(conn)?
                .put(&format!("/api/v1/tasks/{id}/steps/{step}/state"), body)
                .await?;
            if json_out {
                print_json(&out);
            } else {
                println!(
                    "{id} {step} {} (task {})",
                    out["steps"][&step]["state"].as_str().unwrap_or(""),
                    out["state"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Pause { id, conn } => action(conn, &id, "pause", Value::Null).await,
    }
}

async fn action(conn: Conn, id: &str, verb: &str, body: Value) -> anyhow::Result<ExitCode> {
    let json_out = conn.json;
    let body = if body.is_null() { json!({}) } else { body };
    let c = Client::new(conn)?;
    let path = format!("/api/v1/tasks/{id}/{verb}");
    let out = if verb == "resolve" {
        c.post(&path, body).await?
    } else {
        c.call(reqwest::Method::POST, &path, None).await?
    };
    if json_out {
        print_json(&out);
    } else {
        println!("{id} {}", out["state"].as_str().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints step changes until the task stops; exit code 0 only for DONE.
async fn watch(c: &Client, id: &str) -> anyhow::Result<ExitCode> {
    let mut seen: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut last_state = String::new();
    loop {
        let t = c.get(&format!("/api/v1/tasks/{id}")).await?;
        let state = t["state"].as_str().unwrap_or("").to_string();
        if let Some(steps) = t["steps"].as_object() {
            for (name, s) in steps {
                let now = (
                    s["state"].as_str().unwrap_or("").to_string(),
                    s["attempts"].as_u64().unwrap_or(0),
                );
                if seen.get(name) != Some(&now) {
                    let err = s["error"]
                        .as_str()
                        .map(|e| format!("  {e}"))
                        .unwrap_or_default();
                    println!("step {:<28} {:<13} attempt {}{}", name, now.0, now.1, err);
                    seen.insert(name.clone(), now);
                }
            }
        }
        if state != last_state {
            println!("task {id} {state}");
            last_state = state.clone();
        }
        match state.as_str() {
            "DONE" => {
                if !t["result"].is_null() {
                    println!("result: {}", t["result"]);
                }
                return Ok(ExitCode::SUCCESS);
            }
            "BLOCKED" | "CANCELLED" | "WONTFIX" | "PAUSED" | "TODO" => {
                return Ok(ExitCode::from(2));
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
