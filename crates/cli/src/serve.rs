//! `taskhook serve`: open the store, load templates, start the engine and the API.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use taskhook_actions::{ActionSettings, Registry};
use taskhook_engine::{Engine, EngineConfig};
use taskhook_hooks::Hook;
use taskhook_server::{AdminToken, AppState, Limits};
use taskhook_store::Store;

#[derive(Args)]
pub struct ServeArgs {
    /// Where the database and the generated admin token live.
    #[arg(long, env = "TASKHOOK_DATA_DIR", default_value = "taskhook-data")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "TASKHOOK_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Database URL: `sqlite:PATH` (the default is `taskhook.db` in the data dir) or
    /// `postgres://USER@HOST:PORT/DB`, which any number of instances can share.
    #[arg(long, env = "TASKHOOK_DATABASE_URL")]
    database_url: Option<String>,
    /// What this process does, comma-separated: `api` (HTTP API and webhooks), `worker` (runs
    /// tasks), `scheduler` (fires cron schedules), `sources` (consumes hooks' message-broker
    /// sources). API nodes and workers scale apart.
    #[arg(
        long,
        env = "TASKHOOK_ROLES",
        value_delimiter = ',',
        default_value = "api,worker,scheduler,sources"
    )]
    roles: Vec<Role>,
    /// Name of this instance in leases and audit entries (default: host name, pid and a random suffix).
    #[arg(long, env = "TASKHOOK_INSTANCE")]
    instance: Option<String>,
    /// How long a claimed task stays held without renewal; leases are renewed every third of it.
    /// A dead instance's tasks are taken over within about `lease + orphan-sweep`.
    #[arg(long, env = "TASKHOOK_LEASE", default_value = "30s", value_parser = parse_interval)]
    lease: std::time::Duration,
    /// How often to look for tasks whose lease expired.
    #[arg(long, env = "TASKHOOK_ORPHAN_SWEEP", default_value = "5s", value_parser = parse_interval)]
    orphan_sweep: std::time::Duration,
    /// On SIGTERM or Ctrl-C, how long running steps get to finish (a second signal exits at once).
    #[arg(long, env = "TASKHOOK_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_interval)]
    shutdown_grace: std::time::Duration,
    /// Connections to PostgreSQL this instance may open.
    #[arg(long, env = "TASKHOOK_DATABASE_POOL", default_value_t = 16)]
    database_pool: usize,
    /// Load every *.yaml, *.yml and *.json function in this directory at start (before templates).
    #[arg(long, env = "TASKHOOK_FUNCTIONS")]
    functions: Option<PathBuf>,
    /// Load every *.yaml, *.yml and *.json template in this directory at start.
    #[arg(long, env = "TASKHOOK_TEMPLATES")]
    templates: Option<PathBuf>,
    /// Load hooks at start (after templates) from DIR/<group>/<id>.yaml, .yml or .json.
    #[arg(long, env = "TASKHOOK_HOOKS")]
    hooks: Option<PathBuf>,
    /// Directory the `script` action may run executables from (scripts are off without it).
    #[arg(long, env = "TASKHOOK_SCRIPTS_DIR")]
    scripts_dir: Option<PathBuf>,
    /// A network the `http` and `publish` actions may reach even if a deny entry covers it (CIDR or address; repeatable).
    #[arg(long = "http-allow-network", value_parser = taskhook_actions::NetworkPolicy::parse_network)]
    http_allow_networks: Vec<taskhook_actions::IpNet>,
    /// A network the `http` and `publish` actions must not reach (CIDR or address; repeatable). Link-local and
    /// cloud metadata addresses are always denied unless --http-no-default-deny.
    #[arg(long = "http-deny-network", value_parser = taskhook_actions::NetworkPolicy::parse_network)]
    http_deny_networks: Vec<taskhook_actions::IpNet>,
    /// Drop the default deny list (link-local, cloud metadata, unspecified addresses).
    #[arg(long)]
    http_no_default_deny: bool,
    /// A server environment variable passed through to `script` steps (repeatable); scripts
    /// otherwise see only PATH and their own `env`.
    #[arg(long = "script-env-allow")]
    script_env_allow: Vec<String>,
    /// Tasks run at once.
    #[arg(long, default_value_t = 1024)]
    max_running_tasks: usize,
    /// Step attempts run at once.
    #[arg(long, default_value_t = 512)]
    max_running_steps: usize,
    /// A named resource limit, NAME=N (repeatable): at most N steps listing NAME in `resources` run at once.
    #[arg(long = "resource-limit", value_parser = parse_resource_limit)]
    resource_limits: Vec<(String, usize)>,
    /// How long finished (DONE, CANCELLED or WONTFIX) tasks are kept, with their steps and audit trail.
    #[arg(long, env = "TASKHOOK_TASK_RETENTION", default_value = "90d", value_parser = parse_retention)]
    task_retention: std::time::Duration,
    /// How long the fire ledger keeps fires, e.g. `30d`, `12h`.
    #[arg(long, env = "TASKHOOK_FIRE_RETENTION", default_value = "30d", value_parser = parse_retention)]
    fire_retention: std::time::Duration,
    /// How long the audit log keeps recorded API calls (task events go with their tasks).
    #[arg(long, env = "TASKHOOK_AUDIT_RETENTION", default_value = "365d", value_parser = parse_retention)]
    audit_retention: std::time::Duration,
    /// Requests per token other than the admin token: N/s, N/m or N/h, or `off`. Excess gets
    /// 429 with Retry-After.
    #[arg(long, env = "TASKHOOK_RATE_LIMIT", default_value = "50/s", value_parser = parse_rate)]
    rate_limit: RateFlag,
    /// Requests a caller may make at once on top of the rate (the bucket size), for every limit.
    #[arg(long, env = "TASKHOOK_RATE_LIMIT_BURST", default_value = "100", value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit_burst: u32,
    /// Requests per client address without a valid token (IPv6: per /64), or `off`.
    #[arg(long, env = "TASKHOOK_ANONYMOUS_RATE_LIMIT", default_value = "10/s", value_parser = parse_rate)]
    anonymous_rate_limit: RateFlag,
    /// Provider webhooks and secret-token triggers per client address (IPv6: per /64), or
    /// `off` (the default: providers send bursts and rarely redeliver a refused delivery).
    #[arg(long, env = "TASKHOOK_WEBHOOK_RATE_LIMIT", default_value = "off", value_parser = parse_rate)]
    webhook_rate_limit: RateFlag,
    /// Requests with the admin token, or `off` (the default).
    #[arg(long, env = "TASKHOOK_ADMIN_RATE_LIMIT", default_value = "off", value_parser = parse_rate)]
    admin_rate_limit: RateFlag,
    /// Largest accepted request body (bytes; or with a KiB, MiB or GiB suffix); larger gets 413.
    #[arg(long, env = "TASKHOOK_MAX_BODY_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    max_body_bytes: usize,
    /// Largest template document (YAML or JSON text) accepted by the API, --templates and
    /// validation; larger gets 413 naming `template`. A request body is also bounded by
    /// --max-body-bytes.
    #[arg(long, env = "TASKHOOK_MAX_TEMPLATE_BYTES", default_value = "256KiB", value_parser = parse_bytes)]
    max_template_bytes: usize,
    /// Most steps in one template; more gets 400 naming `steps`.
    #[arg(long, env = "TASKHOOK_MAX_STEPS", default_value = "500", value_parser = parse_count)]
    max_steps: usize,
    /// Most items one `foreach` may expand to; a longer list ends the step FATAL_ERROR.
    #[arg(long, env = "TASKHOOK_MAX_FOREACH_ITEMS", default_value = "10000", value_parser = parse_count)]
    max_foreach_items: usize,
    /// Largest result of one step attempt, its output and metadata as JSON. A larger one is not
    /// stored: the step ends FATAL_ERROR (a CLIENT_ERROR or SERVER_ERROR keeps its state and
    /// retries, without the output).
    #[arg(long, env = "TASKHOOK_MAX_STEP_OUTPUT_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    max_step_output_bytes: usize,
    /// Runs in a row a task may have cut off by the process stopping (crash, kill, out of
    /// memory) before it goes BLOCKED instead of running again.
    #[arg(long, env = "TASKHOOK_MAX_TASK_CRASHES", default_value = "3", value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_task_crashes: u32,
    /// Let hooks' `git` sources read `file://` repositories on this server's disk (off: a hook
    /// writer could otherwise read any repository the server's user can).
    #[arg(long)]
    git_allow_file_urls: bool,
    /// The key ring sealing stored data (`ID:BASE64KEY` per line, newest last). Default:
    /// TASKHOOK_KEYS, else `<data-dir>/keys`, generated on first start.
    #[arg(long, env = "TASKHOOK_KEY_FILE")]
    key_file: Option<PathBuf>,
    #[command(flatten)]
    proxy: crate::token_cli::ProxyArgs,
}

#[derive(Args)]
pub struct MigrateArgs {
    /// Database URL: `sqlite:PATH` or `postgres://USER@HOST:PORT/DB`.
    #[arg(long, env = "TASKHOOK_DATABASE_URL")]
    database_url: String,
}

/// `taskhook migrate`: brings the schema up to date; safe while other instances run.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let db = Database::from_url(Some(&args.database_url), Path::new("."))?;
    let store = db.open(1).await?;
    store.close();
    println!("{}: schema is up to date", db.display());
    Ok(ExitCode::SUCCESS)
}

/// What a `serve` process does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Api,
    Worker,
    Scheduler,
    /// Runs hooks' `sources` subscriptions (message brokers, repositories).
    Sources,
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = taskhook_model::duration::parse_duration_str(s)?;
    if d < std::time::Duration::from_millis(100) {
        return Err("use at least 100ms".into());
    }
    Ok(d)
}

/// A name unique to this process across hosts: host name, pid and a random suffix.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "taskhook".into());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{host}-{}-{suffix}", std::process::id())
}

/// A size in bytes: `1048576`, `1024KiB`, `1MiB`, `1GiB` (also `k`, `m`, `g`, binary).
fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size: use bytes, or a KiB, MiB or GiB suffix"))?;
    let factor: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit; use KiB, MiB or GiB")),
    };
    match n.checked_mul(factor) {
        Some(0) => Err("must be at least 1 byte".into()),
        Some(b) => Ok(b),
        None => Err(format!("{s:?} is too large")),
    }
}

/// A count of at least 1.
fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// The longest retention: a century. Longer is keeping forever, and an unbounded one
/// overflowed the cut-off time (pruning everything instead of nothing).
const MAX_RETENTION: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);

fn parse_retention(s: &str) -> Result<std::time::Duration, String> {
    let d = taskhook_model::duration::parse_duration_at_most(s, MAX_RETENTION)?;
    if d < std::time::Duration::from_secs(60) {
        return Err("keep fires at least a minute".into());
    }
    Ok(d)
}

/// Once an hour, deletes fires, finished tasks and recorded API calls past their retention,
/// in small batches.
async fn prune_history(
    store: Store,
    fires: std::time::Duration,
    tasks: std::time::Duration,
    calls: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let now = taskhook_store::now_ms();
        let before = |keep| now.saturating_sub(taskhook_model::duration::as_millis_i64(keep));
        let (fires_before, tasks_before, calls_before) =
            (before(fires), before(tasks), before(calls));
        for what in ["fires", "tasks", "audit calls"] {
            loop {
                let pruned = match what {
                    "fires" => store.prune_fires(fires_before, 1000).await,
                    "audit calls" => store.prune_calls(calls_before, 1000).await,
                    _ => store.prune_tasks(tasks_before, 1000).await,
                };
                match pruned {
                    Ok(1000) => continue,
                    Ok(0) => break,
                    Ok(n) => {
                        tracing::info!(deleted = n, what, "pruned history");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, what, "pruning history failed");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// A rate limit flag: a rate, or `off`.
#[derive(Debug, Clone, Copy)]
struct RateFlag(Option<taskhook_server::Rate>);

fn parse_rate(s: &str) -> Result<RateFlag, String> {
    taskhook_server::Rate::parse_optional(s).map(RateFlag)
}

fn parse_resource_limit(s: &str) -> Result<(String, usize), String> {
    let (name, n) = s.split_once('=').ok_or("expected NAME=N")?;
    let n: usize = n.parse().map_err(|_| format!("{n:?} is not a number"))?;
    if name.is_empty() || n == 0 {
        return Err("expected NAME=N with a name and N > 0".into());
    }
    Ok((name.to_string(), n))
}

/// Where the data lives, as told to the operator (a PostgreSQL URL without its password).
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Database {
    pub fn from_url(url: Option<&str>, data_dir: &Path) -> anyhow::Result<Database> {
        let Some(url) = url else {
            return Ok(Database::Sqlite(data_dir.join("taskhook.db")));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres(url.to_string()));
        }
        match url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            Some(path) if !path.is_empty() => Ok(Database::Sqlite(PathBuf::from(path))),
            _ => bail!(
                "unsupported --database-url {url:?}: use sqlite:PATH or postgres://USER@HOST:PORT/DATABASE"
            ),
        }
    }

    /// Opens the store, running its migrations.
    pub async fn open(&self, pool: usize) -> anyhow::Result<Store> {
        match self {
            Database::Sqlite(path) => {
                Store::open(path).with_context(|| format!("opening {}", path.display()))
            }
            Database::Postgres(url) => Store::postgres_with_pool(url, None, pool)
                .await
                .with_context(|| format!("connecting to {}", self.display())),
        }
    }

    pub fn display(&self) -> String {
        match self {
            Database::Sqlite(p) => p.display().to_string(),
            Database::Postgres(url) => redact_password(url),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// The admin token: from TASKHOOK_ADMIN_TOKEN, or generated once and kept in the data dir.
async fn admin_token(store: &Store, data_dir: &Path) -> anyhow::Result<(AdminToken, String)> {
    let file = data_dir.join("admin-token");
    if let Ok(token) = std::env::var("TASKHOOK_ADMIN_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok((
            AdminToken::from_token(token.trim()),
            "from TASKHOOK_ADMIN_TOKEN".into(),
        ));
    }
    if let Some(hash) = store.get_setting("admin_token_sha256").await? {
        let admin =
            AdminToken::from_hash_hex(&hash).context("stored admin token hash is corrupt")?;
        let shown = match std::fs::read_to_string(&file) {
            Ok(t) if admin.matches(t.trim()) => t.trim().to_string(),
            _ => format!("(not shown: {} is missing or changed)", file.display()),
        };
        return Ok((admin, shown));
    }
    let token = AdminToken::generate();
    write_private(&file, &token).with_context(|| format!("writing {}", file.display()))?;
    let admin = AdminToken::from_token(&token);
    store
        .set_setting("admin_token_sha256", &admin.hash_hex())
        .await?;
    Ok((admin, token))
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")
}

async fn load_templates(engine: &Engine, dir: &Path) -> anyhow::Result<usize> {
    let files = crate::client::document_files(&[dir.to_path_buf()])?;
    let mut problems = Vec::new();
    let mut parsed = Vec::new();
    for f in &files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        match engine.parse_template(&text).await {
            Ok(t) => parsed.push(t),
            Err(e) => problems.extend(
                e.errors
                    .iter()
                    .map(|e| format!("{}: {}: {}", f.display(), e.field, e.message)),
            ),
        }
    }
    if !problems.is_empty() {
        bail!("invalid templates:\n  {}", problems.join("\n  "));
    }
    for t in parsed {
        engine.put_template(t).await?;
    }
    Ok(files.len())
}

/// One hook file: `<dir>/<group>/<id>.yaml|.yml|.json`.
struct HookFile {
    group: String,
    id: String,
    path: PathBuf,
}

/// Hook files under `dir` (one subdirectory per group), sorted, and the problems found in
/// the layout (files outside a group directory, invalid names, one id defined twice).
fn hook_files(dir: &Path) -> anyhow::Result<(Vec<HookFile>, Vec<String>)> {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort();
    let is_document = |p: &Path| {
        matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
    };
    let hidden = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
    };
    for group_dir in entries {
        if hidden(&group_dir) {
            continue;
        }
        if !group_dir.is_dir() {
            if is_document(&group_dir) {
                problems.push(format!(
                    "{}: group: a hook file must be in a directory named after its group ({}/<group>/<id>.yaml)",
                    group_dir.display(),
                    dir.display()
                ));
            }
            continue;
        }
        let group = group_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        let mut ids: BTreeMap<String, PathBuf> = BTreeMap::new();
        for f in crate::client::document_files(std::slice::from_ref(&group_dir))? {
            if hidden(&f) {
                continue;
            }
            if !taskhook_hooks::valid_hook_part(&group) {
                problems.push(format!(
                    "{}: group: {group:?} is not a valid group name: {}",
                    f.display(),
                    taskhook_model::name::rule(taskhook_hooks::MAX_HOOK_PART_LEN)
                ));
                continue;
            }
            let id = f
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string();
            if !taskhook_hooks::valid_hook_part(&id) {
                problems.push(format!(
                    "{}: id: {id:?} (the file name) is not a valid hook id: {}",
                    f.display(),
                    taskhook_model::name::rule(taskhook_hooks::MAX_HOOK_PART_LEN)
                ));
                continue;
            }
            if let Some(other) = ids.get(&id) {
                problems.push(format!(
                    "{}: id: hook {group}/{id} is also defined by {}",
                    f.display(),
                    other.display()
                ));
                continue;
            }
            ids.insert(id.clone(), f.clone());
            found.push(HookFile {
                group: group.clone(),
                id,
                path: f,
            });
        }
    }
    Ok((found, problems))
}

/// Loads every hook under `dir`, all or none: each file is parsed and validated (including
/// that its template exists) before any is stored.
async fn load_hooks(engine: &Engine, dir: &Path) -> anyhow::Result<usize> {
    let (files, mut problems) = hook_files(dir)?;
    let mut parsed = Vec::new();
    for HookFile { group, id, path: f } in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: hook: cannot read: {e}", f.display()));
                continue;
            }
        };
        let hook = match Hook::parse(&text).and_then(|h| h.validate().map(|()| h)) {
            Ok(h) => h,
            Err(e) => {
                problems.push(format!("{}: {}: {}", f.display(), e.field, e.message));
                continue;
            }
        };
        if engine.store().get_template(&hook.template).await?.is_none() {
            problems.push(format!(
                "{}: template: unknown template {:?}",
                f.display(),
                hook.template
            ));
            continue;
        }
        parsed.push((group, id, f, hook));
    }
    if !problems.is_empty() {
        bail!("invalid hooks:\n  {}", problems.join("\n  "));
    }
    let n = parsed.len();
    for (group, id, f, hook) in parsed {
        engine
            .put_hook(&group, &id, hook)
            .await
            .map_err(|e| anyhow::anyhow!("invalid hooks:\n  {}: {e}", f.display()))?;
    }
    Ok(n)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let db = Database::from_url(args.database_url.as_deref(), &args.data_dir)?;
    let store = db.open(args.database_pool).await?;
    let (ring, ring_source) = crate::keys_cli::load_ring(args.key_file.as_deref(), &args.data_dir)?;
    crate::keys_cli::install(&store, ring, &ring_source).await?;
    let roles = &args.roles;
    let settings = ActionSettings {
        scripts_dir: args.scripts_dir.clone(),
        http_networks: taskhook_actions::NetworkPolicy::new(
            args.http_allow_networks.clone(),
            args.http_deny_networks.clone(),
            args.http_no_default_deny,
        ),
        script_env_allow: args.script_env_allow.clone(),
    };
    settings
        .validate()
        .map_err(|e| anyhow::anyhow!("--script-env-allow: {e}"))?;
    let config = EngineConfig {
        owner: args.instance.clone().unwrap_or_else(instance_name),
        lease: args.lease,
        orphan_sweep: args.orphan_sweep,
        shutdown_grace: args.shutdown_grace,
        max_running_tasks: args.max_running_tasks,
        max_running_steps: args.max_running_steps,
        resource_limits: args
            .resource_limits
            .iter()
            .cloned()
            .collect::<HashMap<_, _>>(),
        max_template_bytes: args.max_template_bytes,
        max_steps: args.max_steps,
        max_foreach_items: args.max_foreach_items,
        max_step_output_bytes: args.max_step_output_bytes,
        max_task_crashes: args.max_task_crashes,
        git_file_urls: args.git_allow_file_urls,
    };
    let engine = Engine::new(store.clone(), Registry::builtin(&settings), config);
    if let Some(dir) = &args.functions {
        let mut problems = Vec::new();
        let mut parsed = Vec::new();
        for f in crate::client::document_files(std::slice::from_ref(dir))? {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            match taskhook_model::Function::parse(&text) {
                Ok(func) => parsed.push((f, func)),
                Err(e) => problems.push(format!("{}: function: {}", f.display(), e.message)),
            }
        }
        // Functions may call each other: each is checked with the whole directory at hand.
        let dir_set: std::collections::BTreeMap<String, taskhook_model::Function> = parsed
            .iter()
            .map(|(_, func)| (func.name.clone(), func.clone()))
            .collect();
        for (f, func) in &parsed {
            if let Err(e) = engine.check_function(func, &dir_set).await {
                problems.extend(
                    e.errors
                        .iter()
                        .map(|e| format!("{}: {}: {}", f.display(), e.field, e.message)),
                );
            }
        }
        let parsed: Vec<taskhook_model::Function> = parsed.into_iter().map(|(_, f)| f).collect();
        if !problems.is_empty() {
            bail!("invalid functions:\n  {}", problems.join("\n  "));
        }
        let n = parsed.len();
        for func in parsed {
            engine.put_function(func).await?;
        }
        tracing::info!(count = n, dir = %dir.display(), "functions loaded");
    }
    if let Some(dir) = &args.templates {
        let n = load_templates(&engine, dir).await?;
        tracing::info!(count = n, dir = %dir.display(), "templates loaded");
    }
    if let Some(dir) = &args.hooks {
        let n = load_hooks(&engine, dir).await?;
        tracing::info!(count = n, dir = %dir.display(), "hooks loaded");
    }
    let (admin, shown) = admin_token(&store, &args.data_dir).await?;
    let proxy = args.proxy.load()?;
    let engine_task = if roles.contains(&Role::Worker) {
        Some(engine.start().await?)
    } else {
        None
    };
    let stop_sources = tokio_util::sync::CancellationToken::new();
    let scheduler = roles.contains(&Role::Scheduler).then(|| {
        tokio::spawn(taskhook_sources::schedule::run(
            engine.clone(),
            stop_sources.clone(),
        ))
    });
    let sources = roles.contains(&Role::Sources).then(|| {
        tokio::spawn(taskhook_sources::supervisor::run(
            engine.clone(),
            stop_sources.clone(),
            settings.http_networks.clone(),
        ))
    });
    tokio::spawn(prune_history(
        store.clone(),
        args.fire_retention,
        args.task_retention,
        args.audit_retention,
        stop_sources.clone(),
    ));
    let names: Vec<&str> = roles
        .iter()
        .map(|r| match r {
            Role::Api => "api",
            Role::Worker => "worker",
            Role::Scheduler => "scheduler",
            Role::Sources => "sources",
        })
        .collect();
    let first_signal = tokio_util::sync::CancellationToken::new();
    tokio::spawn(watch_signals(first_signal.clone()));
    if roles.contains(&Role::Api) {
        let state = AppState {
            engine: engine.clone(),
            admin: Arc::new(admin),
            limits: Limits {
                max_body_bytes: args.max_body_bytes,
                rate: taskhook_server::RateLimits {
                    token: args.rate_limit.0,
                    admin: args.admin_rate_limit.0,
                    anonymous: args.anonymous_rate_limit.0,
                    webhook: args.webhook_rate_limit.0,
                    burst: args.rate_limit_burst,
                },
            },
            identity: Arc::new(taskhook_server::Identity::new(
                proxy,
                args.proxy.trusted_networks()?,
            )),
        };
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        println!("taskhook is listening on http://{addr}");
        println!("admin token: {shown}");
        println!("data: {}", db.display());
        println!("roles: {}", names.join(","));
        println!(
            "try: export TASKHOOK_URL=http://{addr} TASKHOOK_TOKEN=$(cat {})",
            args.data_dir.join("admin-token").display()
        );
        let stop = first_signal.clone();
        let app =
            taskhook_server::router(state).into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await?;
    } else {
        println!("taskhook is running without an API");
        println!("data: {}", db.display());
        println!("roles: {}", names.join(","));
        first_signal.cancelled().await;
    }
    tracing::info!("shutting down: letting running steps finish (a second signal exits at once)");
    stop_sources.cancel();
    if let Some(s) = scheduler {
        let _ = s.await;
    }
    if let Some(s) = sources {
        let _ = s.await;
    }
    engine.shutdown().await;
    if let Some(t) = engine_task {
        t.abort();
    }
    store.close();
    Ok(ExitCode::SUCCESS)
}

/// The first SIGTERM or Ctrl-C starts a graceful shutdown; a second one exits at once (the
/// leases of unfinished runs then expire and other instances take their tasks over).
async fn watch_signals(first: tokio_util::sync::CancellationToken) {
    shutdown_signal().await;
    first.cancel();
    shutdown_signal().await;
    eprintln!("second signal: exiting now");
    std::process::exit(130);
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_zero() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("256KiB"), Ok(256 << 10));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("2m"), Ok(2 << 20));
        assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1MB").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_count("500"), Ok(500));
        assert!(parse_count("0").is_err());
        assert!(parse_count("1.5").is_err());
    }
}
