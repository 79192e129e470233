//! The `taskhook` binary: `serve` runs the server; the other subcommands are
//! clients of its HTTP API (plus offline template validation and the benchmark).

mod audit_cli;
mod bench;
mod bench_sources;
mod client;
mod hooks_cli;
mod keys_cli;
mod secret_cli;
mod serve;
mod token_cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "taskhook",
    version,
    about = "Event-driven automation engine: templates become durable, audited tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: API, engine and scheduler, on embedded SQLite or a shared PostgreSQL.
    Serve(Box<serve::ServeArgs>),
    /// Create or upgrade the database schema, then exit (`serve` also does this at start).
    Migrate(serve::MigrateArgs),
    /// Manage templates.
    #[command(subcommand)]
    Template(client::TemplateCommand),
    /// Manage the function library (reusable named actions templates call by name).
    #[command(subcommand)]
    Function(client::FunctionCommand),
    /// Create, inspect and steer tasks.
    #[command(subcommand)]
    Task(client::TaskCommand),
    /// Manage hooks (webhook, token, API and schedule triggers), fire them and read their fire ledger.
    #[command(subcommand)]
    Hook(hooks_cli::HookCommand),
    /// Turn maintenance mode (a read-only API) on or off, or show it.
    #[command(subcommand)]
    Maintenance(client::MaintenanceCommand),
    /// Encryption at rest: generate keys, reseal stored data with the newest key, show status.
    #[command(subcommand)]
    Keys(keys_cli::KeysCommand),
    /// Create, list and revoke API tokens (scoped bearer tokens).
    #[command(subcommand)]
    Token(token_cli::TokenCommand),
    /// Manage named secrets (values are never shown back).
    #[command(subcommand)]
    Secret(secret_cli::SecretCommand),
    /// Read the audit log: API calls that changed (or tried to change) something, and task state changes.
    Audit(audit_cli::AuditArgs),
    /// Measure the engine on this machine (in-process; SQLite in a temporary directory, or PostgreSQL).
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Migrate(args) => serve::migrate(args).await,
            Command::Template(cmd) => client::template(cmd).await,
            Command::Task(cmd) => client::task(cmd).await,
            Command::Function(cmd) => client::function(cmd).await,
            Command::Hook(cmd) => hooks_cli::hook(cmd).await,
            Command::Maintenance(cmd) => client::maintenance(cmd).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Keys(cmd) => keys_cli::keys(cmd).await,
            Command::Token(cmd) => token_cli::token(cmd).await,
            Command::Secret(cmd) => secret_cli::secret(cmd).await,
            Command::Audit(args) => audit_cli::audit(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
