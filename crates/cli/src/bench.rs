//! `taskhook bench`: runs the engine in-process, on SQLite in a temporary directory or in a
//! fresh PostgreSQL schema (optionally several engines sharing it), and prints its setup and numbers: one-step tasks per second end to end, create-to-start
//! latency, per-step overhead in a 50-step chain, and peak memory; with several engines on
//! PostgreSQL also the cross-instance claim latency (created on one, claimed by another).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use clap::Args;
use serde_json::{Value, json};
use taskhook_actions::{
    Action, ActionContext, ActionError, ActionOutput, ActionSettings, ConfigError, Registry,
};
use taskhook_engine::{CreateTask, Engine, EngineConfig};
use taskhook_model::TaskState;
use taskhook_store::Store;

#[derive(Args)]
pub struct BenchArgs {
    /// One-step tasks to run for the throughput figure.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Concurrent task creators.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Tasks created one at a time for the latency figure.
    #[arg(long, default_value_t = 500)]
    latency_samples: usize,
    /// 50-step chain tasks run for the per-step overhead figure.
    #[arg(long, default_value_t = 20)]
    chains: usize,
    /// Signed GitHub webhooks sent over HTTP per client count for the ingest figure (0: skip).
    #[arg(long, default_value_t = 20_000)]
    webhooks: usize,
    /// Cron hooks for the lateness figure (0: skip).
    #[arg(long, default_value_t = 10_000)]
    schedules: usize,
    /// How long the cron hooks run, in seconds.
    #[arg(long, default_value_t = 10)]
    schedule_seconds: u64,
    /// Run on this PostgreSQL database (`postgres://USER@HOST:PORT/DB`), in a fresh schema
    /// that is dropped afterwards, instead of SQLite in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// A broker to measure, `KIND=URL` (e.g. `redis=redis://127.0.0.1:6379`); repeatable.
    /// Each gets a fresh stream pre-filled with --source-messages messages, then a hook whose
    /// source consumes it: messages per second into committed fires with their tasks.
    #[arg(long = "source", value_name = "KIND=URL")]
    sources: Vec<String>,
    /// Messages pre-filled per --source.
    #[arg(long, default_value_t = 20_000)]
    source_messages: usize,
    /// Engines sharing the database, each with its own connection pool, as separate
    /// instances would (PostgreSQL only). Work is spread over them round-robin.
    #[arg(long, default_value_t = 1)]
    instances: usize,
}

/// Records when each task's step starts.
#[derive(Default)]
struct Probe {
    started: Mutex<HashMap<String, Instant>>,
    notify: tokio::sync::Notify,
}

#[async_trait]
impl Action for ProbeAction {
    fn name(&self) -> &'static str {
        "bench_probe"
    }
    fn validate(&self, _config: &Value) -> Result<(), ConfigError> {
        Ok(())
    }
    async fn run(&self, _config: Value, ctx: ActionContext) -> Result<ActionOutput, ActionError> {
        self.0
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ctx.task_id, Instant::now());
        self.0.notify.notify_one();
        Ok(ActionOutput {
            output: json!({"ok": true}),
            metadata: Value::Null,
        })
    }
}

struct ProbeAction(Arc<Probe>);

fn memory_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The SQLite writer's work since the last report: transactions, writes per transaction, and
/// time per transaction running writes and committing them.
struct WriterReport {
    last: [u64; 4],
}

impl WriterReport {
    fn new(store: &Store) -> Self {
        let mut r = WriterReport { last: [0; 4] };
        r.take(store);
        r
    }

    fn take(&mut self, store: &Store) -> Option<[u64; 4]> {
        use std::sync::atomic::Ordering::Relaxed;
        let Store::Sqlite(s) = store else {
            return None;
        };
        let w = s.write_stats();
        let now = [
            w.batches.load(Relaxed),
            w.writes.load(Relaxed),
            w.running_ns.load(Relaxed),
            w.committing_ns.load(Relaxed),
        ];
        let delta = std::array::from_fn(|i| now[i] - self.last[i]);
        self.last = now;
        Some(delta)
    }

    /// Prints what the writer did since the last call (SQLite only).
    fn print(&mut self, store: &Store, phase: &str) {
        let Some([batches, writes, run, commit]) = self.take(store) else {
            return;
        };
        if batches == 0 {
            return;
        }
        println!(
            "  sqlite writer during {phase}: {batches} transactions, {:.1} writes each, {:.3} ms running + {:.3} ms committing each",
            writes as f64 / batches as f64,
            run as f64 / batches as f64 / 1e6,
            commit as f64 / batches as f64 / 1e6,
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn wait_done(store: &Store, expected: u64, deadline: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let done = store.count_tasks(TaskState::Done).await?;
        if done >= expected {
            return Ok(());
        }
        if start.elapsed() > deadline {
            bail!("only {done} of {expected} tasks finished within {deadline:?}");
        }
        // Counting is a scan of every finished task: asked too often, it takes the CPU the
        // engine is being measured on (most of a core on PostgreSQL at 5 ms). 20 ms is under
        // 1% of a run of a few seconds.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When the probe step of `task` started (waits up to 10 s).
async fn wait_started(probe: &Probe, task: &str) -> anyhow::Result<Instant> {
    loop {
        let notified = probe.notify.notified();
        tokio::pin!(notified);
        // Registered before looking, so a start between the look and the wait is not missed.
        notified.as_mut().enable();
        if let Some(t) = probe
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(task)
        {
            return Ok(*t);
        }
        tokio::time::timeout(Duration::from_secs(10), notified)
            .await
            .context("a probe task never started")?;
    }
}

/// Where the bench runs: a temporary SQLite file, or a fresh schema in PostgreSQL.
enum BenchDb {
    Sqlite(std::path::PathBuf),
    Postgres { url: String, schema: String },
}

impl BenchDb {
    async fn open(&self) -> anyhow::Result<Store> {
        match self {
            BenchDb::Sqlite(dir) => {
                Store::open(dir.join("taskhook.db")).context("opening the bench database")
            }
            BenchDb::Postgres { url, schema } => Store::postgres(url, Some(schema))
                .await
                .context("connecting to PostgreSQL"),
        }
    }

    fn describe(&self) -> String {
        match self {
            BenchDb::Sqlite(dir) => format!("SQLite (WAL, synchronous=FULL) in {}", dir.display()),
            BenchDb::Postgres { schema, .. } => {
                format!("PostgreSQL (synchronous_commit as configured), schema {schema}")
            }
        }
    }

    async fn remove(&self) {
        match self {
            BenchDb::Sqlite(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            BenchDb::Postgres { url, schema } => {
                if let Err(e) = Store::drop_postgres_schema(url, schema).await {
                    eprintln!("could not drop the bench schema {schema}: {e}");
                }
            }
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let db = match &args.database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            BenchDb::Postgres {
                url: url.clone(),
                schema: format!("bench_{}", uuid::Uuid::new_v4().simple()),
            }
        }
        Some(url) => bail!(
            "--database-url {url:?}: the bench takes a postgres:// URL (SQLite is the default)"
        ),
        None => {
            let dir = std::env::temp_dir().join(format!("taskhook-bench-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir)?;
            BenchDb::Sqlite(dir)
        }
    };
    if args.instances == 0 || (args.instances > 1 && matches!(db, BenchDb::Sqlite(_))) {
        bail!("--instances: use 1 on SQLite, or 1 or more with --database-url postgres://…");
    }
    let probe = Arc::new(Probe::default());
    let mut engines = Vec::new();
    let mut stores = Vec::new();
    // Stored data is sealed as `serve` seals it, with a ring of one fresh key.
    let ring = taskhook_store::KeyRing::generate_entry(Some("bench"))?;
    for i in 0..args.instances {
        let store = db.open().await?;
        store
            .install_keys(taskhook_store::KeyRing::parse(&ring)?)
            .await?;
        let mut registry = Registry::builtin(&ActionSettings::default());
        registry.register(Arc::new(ProbeAction(probe.clone())));
        let config = EngineConfig {
            owner: format!("bench-{i}"),
            ..EngineConfig::default()
        };
        let engine = Engine::new(store.clone(), registry, config);
        engine.start().await?;
        engines.push(engine);
        stores.push(store);
    }
    let engine = engines[0].clone();
    let store = stores[0].clone();

    let one_step = "name: bench-one\nauto_runnable: true\nsteps:\n  only:\n    action:\n      type: echo\n      configuration: {output: {ok: true}}\n";
    let probe_step = "name: bench-probe\nauto_runnable: true\nsteps:\n  only:\n    action:\n      type: bench_probe\n";
    let mut chain = String::from("name: bench-chain\nauto_runnable: true\nsteps:\n");
    for i in 0..50 {
        chain.push_str(&format!(
            "  s{i:02}:\n    action: {{type: echo, configuration: {{output: {i}}}}}\n"
        ));
        if i > 0 {
            chain.push_str(&format!("    dependencies: [s{:02}]\n", i - 1));
        }
    }
    for t in [one_step, probe_step, chain.as_str()] {
        engine.put_template(engine.parse_template(t).await?).await?;
    }

    println!(
        "taskhook bench: {} engine(s) in-process, {}",
        engines.len(),
        db.describe()
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    // 1. Throughput: N one-step echo tasks, created by C concurrent clients, until all are DONE.
    let mut writer = WriterReport::new(&store);
    let start = Instant::now();
    let per_worker = args.tasks.div_ceil(args.concurrency.max(1));
    let mut workers = Vec::new();
    for w in 0..args.concurrency.max(1) {
        let engine = engines[w % engines.len()].clone();
        let n = per_worker.min(args.tasks.saturating_sub(w * per_worker));
        workers.push(tokio::spawn(async move {
            for _ in 0..n {
                let req = CreateTask {
                    template: "bench-one".into(),
                    requester: "bench".into(),
                    ..Default::default()
                };
                engine.create_task(req).await?;
            }
            Ok::<_, taskhook_engine::EngineError>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let created = start.elapsed();
    wait_done(&store, args.tasks as u64, Duration::from_secs(600)).await?;
    let total = start.elapsed();
    println!(
        "one-step tasks: {} in {:.2}s = {:.0} tasks/s end to end (created in {:.2}s = {:.0}/s; {} creators)",
        args.tasks,
        total.as_secs_f64(),
        args.tasks as f64 / total.as_secs_f64(),
        created.as_secs_f64(),
        args.tasks as f64 / created.as_secs_f64(),
        args.concurrency
    );
    writer.print(&store, "one-step tasks");

    // 2. Start latency: create one task, wait until its step starts; repeat.
    let mut latencies = Vec::with_capacity(args.latency_samples);
    for _ in 0..args.latency_samples {
        let t0 = Instant::now();
        let req = CreateTask {
            template: "bench-probe".into(),
            requester: "bench".into(),
            ..Default::default()
        };
        let (task, _) = engine.create_task(req).await?;
        let started = wait_started(&probe, &task.id).await?;
        latencies.push(started.duration_since(t0));
    }
    latencies.sort();
    println!(
        "create -> first step start ({} tasks, one at a time): p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );

    // 2b. Cross-instance claim latency: tasks created through an instance that runs no tasks
    // (as one serving only the API) are claimed by another, woken by its NOTIFY.
    if engines.len() >= 2 {
        let creator_store = db.open().await?;
        let mut registry = Registry::builtin(&ActionSettings::default());
        registry.register(Arc::new(ProbeAction(probe.clone())));
        let config = EngineConfig {
            owner: "bench-creator".into(),
            ..EngineConfig::default()
        };
        // Never started: it creates tasks but claims none.
        let creator = Engine::new(creator_store.clone(), registry, config);
        let mut claims = Vec::with_capacity(args.latency_samples);
        for _ in 0..args.latency_samples {
            let req = CreateTask {
                template: "bench-probe".into(),
                requester: "bench".into(),
                ..Default::default()
            };
            let (task, _) = creator.create_task(req).await?;
            let committed = Instant::now();
            let started = wait_started(&probe, &task.id).await?;
            claims.push(started.saturating_duration_since(committed));
        }
        claims.sort();
        println!(
            "cross-instance claim latency ({} tasks, one at a time, created on an instance that runs none, claimed by one of {} others woken by NOTIFY): create commit -> step start p50 {:.2} ms, p99 {:.2} ms",
            claims.len(),
            engines.len(),
            percentile(&claims, 0.50).as_secs_f64() * 1e3,
            percentile(&claims, 0.99).as_secs_f64() * 1e3
        );
        creator_store.close();
    }

    // 3. Per-step overhead: 50 echo steps in a chain, one task at a time.
    let mut per_step = Vec::new();
    for _ in 0..args.chains {
        let t0 = Instant::now();
        let req = CreateTask {
            template: "bench-chain".into(),
            requester: "bench".into(),
            ..Default::default()
        };
        let (task, _) = engine.create_task(req).await?;
        loop {
            let (t, _) = store
                .get_task(&task.id)
                .await?
                .context("chain task vanished")?;
            if t.state == TaskState::Done {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) || t.state == TaskState::Blocked {
                bail!("chain task {} did not finish: {}", t.id, t.state);
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        per_step.push(t0.elapsed() / 50);
    }
    per_step.sort();
    println!(
        "50-step chain: per-step overhead p50 {:.3} ms, p99 {:.3} ms ({} chains)",
        percentile(&per_step, 0.50).as_secs_f64() * 1e3,
        percentile(&per_step, 0.99).as_secs_f64() * 1e3,
        args.chains
    );
    println!(
        "memory: peak RSS {} MB, current RSS {} MB",
        memory_kb("VmHWM:").unwrap_or(0) / 1024,
        memory_kb("VmRSS:").unwrap_or(0) / 1024
    );
    writer.take(&store);
    if args.webhooks > 0 {
        bench_webhooks(&engines, args.webhooks).await?;
        writer.print(&store, "webhooks");
        println!(
            "memory after webhooks: peak RSS {} MB, current RSS {} MB",
            memory_kb("VmHWM:").unwrap_or(0) / 1024,
            memory_kb("VmRSS:").unwrap_or(0) / 1024
        );
    }
    if args.schedules > 0 {
        bench_schedules(&engine, args.schedules, args.schedule_seconds).await?;
    }
    for source in &args.sources {
        crate::bench_sources::bench_source(&engine, source, args.source_messages).await?;
        writer.print(&store, "source");
    }
    println!(
        "memory at the end: peak RSS {} MB, current RSS {} MB",
        memory_kb("VmHWM:").unwrap_or(0) / 1024,
        memory_kb("VmRSS:").unwrap_or(0) / 1024
    );
    for (engine, store) in engines.iter().zip(&stores) {
        engine.shutdown().await;
        store.close();
    }
    db.remove().await;
    Ok(ExitCode::SUCCESS)
}

const WEBHOOK_SECRET: &str = "bench-secret";

/// Durable webhook ingest: signed GitHub push deliveries over HTTP to the real router; each
/// 202 means the fire and its task were committed.
async fn bench_webhooks(engines: &[Engine], total: usize) -> anyhow::Result<()> {
    let engine = &engines[0];
    use hmac::Mac;
    let hook = taskhook_hooks::Hook::parse(&format!(
        "template: bench-one\nfilter: \"event.event == 'push'\"\nwebhook: {{provider: github, secret: {WEBHOOK_SECRET}}}\n"
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    engine.put_hook("bench", "push", hook).await?;
    // One API server per engine, as one per instance; clients are spread over them.
    let mut addrs = Vec::new();
    let mut servers = Vec::new();
    for engine in engines {
        let state = taskhook_server::AppState {
            engine: engine.clone(),
            admin: Arc::new(taskhook_server::AdminToken::from_token(
                &taskhook_server::AdminToken::generate(),
            )),
            limits: taskhook_server::Limits::default(),
            identity: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        servers.push(tokio::spawn(async move {
            let app = taskhook_server::router(state)
                .into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app).await
        }));
    }
    let body =
        json!({"ref": "refs/heads/main", "after": "0123abcd", "repository": {"name": "bench"}})
            .to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes())?;
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    for clients in [16usize, 64] {
        let start = Instant::now();
        let mut workers = Vec::new();
        for w in 0..clients {
            let (body, signature) = (body.clone(), signature.clone());
            let n = total / clients + usize::from(w < total % clients);
            let addr = addrs[w % addrs.len()];
            workers.push(tokio::spawn(async move {
                // A minimal keep-alive HTTP/1.1 client, as load generators use: the figure
                // should be the server's cost, not a full-featured client's.
                let mut conn = tokio::io::BufStream::new(tokio::net::TcpStream::connect(addr).await?);
                let mut latencies = Vec::with_capacity(n);
                for i in 0..n {
                    let t0 = Instant::now();
                    let request = format!(
                        "POST /api/v1/hooks/bench/push/webhook HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
                         x-github-event: push\r\nx-github-delivery: {clients}-{w}-{i}\r\nx-hub-signature-256: {signature}\r\n\
                         content-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let (status, answer) = http_exchange(&mut conn, request.as_bytes()).await?;
                    if status != 202 {
                        anyhow::bail!("webhook answered {status}: {answer}");
                    }
                    latencies.push(t0.elapsed());
                }
                Ok(latencies)
            }));
        }
        let mut latencies = Vec::with_capacity(total);
        for w in workers {
            latencies.extend(w.await??);
        }
        let elapsed = start.elapsed();
        latencies.sort();
        println!(
            "webhook ingest, {clients} clients: {} accepted in {:.2}s = {:.0}/s (each fire and task committed before 202); latency p50 {:.2} ms, p99 {:.2} ms",
            latencies.len(),
            elapsed.as_secs_f64(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        );
    }
    for server in servers {
        server.abort();
    }
    Ok(())
}

/// Cron lateness: `count` hooks due once a minute each, spread over the seconds of the
/// minute, fired by the real scheduler; lateness is fire commit time minus due time.
async fn bench_schedules(engine: &Engine, count: usize, seconds: u64) -> anyhow::Result<()> {
    let created = Instant::now();
    let mut puts = tokio::task::JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..count {
        let (engine, slots) = (engine.clone(), slots.clone());
        puts.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let hook = taskhook_hooks::Hook::parse(&format!(
                "template: bench-one\nschedule: ['{} * * * * *']\n",
                i % 60
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            engine
                .put_hook("bench-cron", &format!("h{i}"), hook)
                .await?;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = puts.join_next().await {
        r??;
    }
    let setup = created.elapsed();
    let stop = tokio_util::sync::CancellationToken::new();
    let since = taskhook_store::now_ms();
    let scheduler = tokio::spawn(taskhook_sources::schedule::run(
        engine.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.cancel();
    let _ = scheduler.await;
    let fired = engine.store().schedule_lateness(since).await?;
    // Due times from before the scheduler started are misfires of the setup, not lateness;
    // the first second also carries the scheduler's initial load of every hook.
    for (label, from) in [("all", since), ("after the first second", since + 1000)] {
        let mut late: Vec<Duration> = fired
            .iter()
            .filter(|(due, _)| *due >= from)
            .map(|(due, got)| Duration::from_millis((got - due).max(0) as u64))
            .collect();
        late.sort();
        println!(
            "cron: {count} hooks (created in {:.1}s), {} fires in {seconds}s ({label}); lateness p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            setup.as_secs_f64(),
            late.len(),
            percentile(&late, 0.50).as_secs_f64() * 1e3,
            percentile(&late, 0.99).as_secs_f64() * 1e3,
            late.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    Ok(())
}

/// Writes one request and reads one response (status and body) on a keep-alive connection.
async fn http_exchange(
    conn: &mut tokio::io::BufStream<tokio::net::TcpStream>,
    request: &[u8],
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    conn.write_all(request).await?;
    conn.flush().await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    let mut length = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).await?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().context("bad content-length")?;
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
