//! `taskhook hook …`: manage hooks, trigger and dry-run them, and read their fire ledger,
//! over the server's hooks API. Every hook is named `GROUP/ID`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::{Client, Conn, print_json};

#[derive(Subcommand)]
pub enum HookCommand {
    /// Create or replace a hook from a file (YAML or JSON).
    Put {
        /// The hook, as GROUP/ID.
        hook: String,
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// List hook groups, or the hooks of one group with their template and name.
    List {
        group: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one hook (webhook secrets masked).
    Get {
        /// The hook, as GROUP/ID.
        hook: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a hook (tasks it already started still finish).
    Delete {
        /// The hook, as GROUP/ID.
        hook: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show whether a hook is enabled, its next scheduled times and its last fire.
    Status {
        /// The hook, as GROUP/ID.
        hook: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a hook's fire ledger, newest first.
    Fires {
        /// The hook, as GROUP/ID.
        hook: String,
        /// Fires to show (1-1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Start after this fire (the cursor a previous page printed).
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Fire a hook through the API with a JSON payload (default `{}`).
    Trigger {
        /// The hook, as GROUP/ID.
        hook: String,
        #[command(flatten)]
        payload: PayloadArgs,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a hook's secret trigger token, or replace it with --reset.
    Token {
        /// The hook, as GROUP/ID.
        hook: String,
        /// Make a new token; the old one stops working.
        #[arg(long)]
        reset: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Dry run: what the hook would do with an event (filter, inputs); creates nothing.
    Test {
        /// The hook, as GROUP/ID.
        hook: String,
        #[command(flatten)]
        payload: PayloadArgs,
        /// The event's type (as a provider's event header would give it).
        #[arg(long)]
        event: Option<String>,
        /// A request header, NAME=VALUE (repeatable).
        #[arg(long = "header", value_parser = parse_pair)]
        headers: Vec<(String, String)>,
        /// A query parameter, NAME=VALUE (repeatable).
        #[arg(long = "query", value_parser = parse_pair)]
        query: Vec<(String, String)>,
        /// How the event arrived: api, token, webhook, schedule (default test).
        #[arg(long)]
        fired_by: Option<String>,
        #[arg(long)]
        delivery_id: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args)]
pub struct PayloadArgs {
    /// The payload as JSON text.
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// A file holding the JSON payload (`-` for standard input).
    #[arg(long)]
    payload_file: Option<PathBuf>,
}

impl PayloadArgs {
    /// The payload given, checked to be JSON; `None` when neither flag is given.
    fn read(&self) -> anyhow::Result<Option<Value>> {
        if let Some(text) = &self.payload {
            return serde_json::from_str(text)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("--payload is not valid JSON: {e}"));
        }
        let Some(path) = &self.payload_file else {
            return Ok(None);
        };
        let (text, source) = if path == Path::new("-") {
            let text = std::io::read_to_string(std::io::stdin())
                .context("reading the payload from standard input")?;
            (text, "standard input".to_string())
        } else {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            (text, path.display().to_string())
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{source}: not valid JSON: {e}"))
    }
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    if k.is_empty() {
        return Err("expected NAME=VALUE with a name".into());
    }
    Ok((k.to_string(), v.to_string()))
}

fn part_rule() -> String {
    taskhook_model::name::rule(taskhook_hooks::MAX_HOOK_PART_LEN)
}

/// `GROUP/ID` split and checked, so it can go into a URL as it is.
fn hook_ref(s: &str) -> anyhow::Result<(String, String)> {
    let Some((group, id)) = s.split_once('/') else {
        bail!("{s:?} is not a hook: name it GROUP/ID (for example ci/deploy)");
    };
    if !taskhook_hooks::valid_hook_part(group) {
        bail!("{s:?}: bad group {group:?}: {}", part_rule());
    }
    if !taskhook_hooks::valid_hook_part(id) {
        bail!("{s:?}: bad id {id:?}: {}", part_rule());
    }
    Ok((group.to_string(), id.to_string()))
}

fn path_of(group: &str, id: &str, rest: &str) -> String {
    format!("/api/v1/hooks/{group}/{id}{rest}")
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

pub async fn hook(cmd: HookCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        HookCommand::Put { hook, file, conn } => put(&hook, &file, conn).await,
        HookCommand::List { group, conn } => list(group, conn).await,
        HookCommand::Get { hook, conn } => {
            let (group, id) = hook_ref(&hook)?;
            let json_out = conn.json;
            let out = Client::new(conn)?.get(&path_of(&group, &id, "")).await?;
            if json_out {
                print_json(&out);
            } else {
                println!(
                    "{group}/{id}  created {}  updated {}",
                    text(&out["created_at"]),
                    text(&out["updated_at"])
                );
                print_json(&out["hook"]);
            }
            Ok(ExitCode::SUCCESS)
        }
        HookCommand::Delete { hook, conn } => {
            let (group, id) = hook_ref(&hook)?;
            Client::new(conn)?
                .call(reqwest::Method::DELETE, &path_of(&group, &id, ""), None)
                .await?;
            println!("deleted {group}/{id}");
            Ok(ExitCode::SUCCESS)
        }
        HookCommand::Status { hook, conn } => {
            let (group, id) = hook_ref(&hook)?;
            let json_out = conn.json;
            let out = Client::new(conn)?
                .get(&path_of(&group, &id, "/status"))
                .await?;
            if json_out {
                print_json(&out);
            } else {
                print_status(&out);
            }
            Ok(ExitCode::SUCCESS)
        }
        HookCommand::Fires {
            hook,
            limit,
            cursor,
            conn,
        } => {
            let (group, id) = hook_ref(&hook)?;
            let json_out = conn.json;
            let mut query = format!("?limit={limit}");
            if let Some(c) = cursor {
                let c: String = url_safe(&c)?;
                query.push_str(&format!("&cursor={c}"));
            }
            let out = Client::new(conn)?
                .get(&path_of(&group, &id, &format!("/fires{query}")))
                .await?;
            if json_out {
                print_json(&out);
            } else {
                print_fires(&out);
                if let Some(next) = out["next_cursor"].as_str() {
                    eprintln!(
                        "more: taskhook hook fires {group}/{id} --limit {limit} --cursor {next}"
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        HookCommand::Trigger {
            hook,
            payload,
            conn,
        } => {
            let (group, id) = hook_ref(&hook)?;
            let payload = payload.read()?.unwrap_or_else(|| json!({}));
            let json_out = conn.json;
            let out = Client::new(conn)?
                .post(&path_of(&group, &id, "/trigger"), payload)
                .await?;
            if json_out {
                print_json(&out);
            } else {
                println!("fire    {}", text(&out["fire_id"]));
                println!("result  {}", text(&out["result"]));
                println!("task    {}", text(&out["task_id"]));
                if out["duplicate"] == json!(true) {
                    println!(
                        "(a repeated delivery: this is the first fire; nothing new was created)"
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        HookCommand::Token { hook, reset, conn } => {
            let (group, id) = hook_ref(&hook)?;
            let json_out = conn.json;
            let c = Client::new(conn)?;
            let path = path_of(&group, &id, "/token");
            let out = if reset {
                c.call(reqwest::Method::POST, &path, None).await?
            } else {
                c.get(&path).await?
            };
            if json_out {
                print_json(&out);
            } else {
                println!("{}", text(&out["token"]));
            }
            Ok(ExitCode::SUCCESS)
        }
        HookCommand::Test {
            hook,
            payload,
            event,
            headers,
            query,
            fired_by,
            delivery_id,
            conn,
        } => {
            let (group, id) = hook_ref(&hook)?;
            let mut body = json!({
                "payload": payload.read()?.unwrap_or_else(|| json!({})),
                "headers": headers.into_iter().collect::<BTreeMap<_, _>>(),
                "query": query.into_iter().collect::<BTreeMap<_, _>>(),
            });
            if let Some(e) = event {
                body["event"] = json!(e);
            }
            if let Some(f) = fired_by {
                body["fired_by"] = json!(f);
            }
            if let Some(d) = delivery_id {
                body["delivery_id"] = json!(d);
            }
            let json_out = conn.json;
            let out = Client::new(conn)?
                .post(&path_of(&group, &id, "/test"), body)
                .await?;
            if json_out {
                print_json(&out);
            } else {
                print_dry_run(&out);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A fire-ledger cursor (a fire id) is put into the query string as it is; refuse anything
/// that would need escaping rather than send a different query.
fn url_safe(s: &str) -> anyhow::Result<String> {
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("--cursor {s:?} is not a cursor this command printed");
    }
    Ok(s.to_string())
}

async fn put(hook: &str, file: &Path, conn: Conn) -> anyhow::Result<ExitCode> {
    let (group, id) = hook_ref(hook)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    // A document that does not even parse is reported without the server, naming the file;
    // validation (which needs the stored templates, and a stored secret) is the server's.
    taskhook_hooks::Hook::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}: {}", file.display(), e.field, e.message))?;
    let content_type = if text.trim_start().starts_with('{') {
        "application/json"
    } else {
        "application/yaml"
    };
    let json_out = conn.json;
    let out = Client::new(conn)?
        .call(
            reqwest::Method::PUT,
            &path_of(&group, &id, ""),
            Some((text, content_type)),
        )
        .await
        .with_context(|| file.display().to_string())?;
    if json_out {
        print_json(&out);
    } else {
        let verb = if out["created_at"] == out["updated_at"] {
            "created"
        } else {
            "updated"
        };
        println!("{verb} {group}/{id}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(group: Option<String>, conn: Conn) -> anyhow::Result<ExitCode> {
    let json_out = conn.json;
    let c = Client::new(conn)?;
    let Some(group) = group else {
        let out = c.get("/api/v1/hooks").await?;
        if json_out {
            print_json(&out);
        } else {
            for g in out["groups"].as_array().into_iter().flatten() {
                println!("{}", text(g));
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    if !taskhook_hooks::valid_hook_part(&group) {
        bail!("bad group {group:?}: {}", part_rule());
    }
    let out = c.get(&format!("/api/v1/hooks/{group}")).await?;
    if json_out {
        print_json(&out);
    } else {
        for h in out["hooks"].as_array().into_iter().flatten() {
            let name = format!("{}/{}", text(&h["group"]), text(&h["id"]));
            println!(
                "{:<40} {:<28} {}",
                name,
                text(&h["template"]),
                h["metadata"]["name"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(out: &Value) {
    let enabled = if out["enabled"] == json!(false) {
        "no"
    } else {
        "yes"
    };
    println!("enabled: {enabled}");
    match out["next_scheduled"].as_array() {
        Some(next) if !next.is_empty() => {
            println!("next scheduled:");
            for t in next {
                println!("  {}", text(t));
            }
        }
        _ => println!("next scheduled: none (no schedule)"),
    }
    if let Some(t) = out["last_scheduled_for"].as_str() {
        println!("last scheduled for: {t}");
    }
    let f = &out["last_fire"];
    if f.is_null() {
        println!("last fire: none");
    } else {
        let mut line = format!(
            "last fire: {}  {}  {}",
            text(&f["received_at"]),
            text(&f["fired_by"]),
            text(&f["result"])
        );
        if let Some(task) = f["task_id"].as_str() {
            line.push_str(&format!("  task {task} ({})", text(&f["task_state"])));
        }
        if let Some(e) = f["error"].as_str() {
            line.push_str(&format!("  error: {e}"));
        }
        println!("{line}");
    }
    print_sources(out["sources"].as_array().map(Vec::as_slice).unwrap_or(&[]));
}

/// A time in milliseconds since the epoch, as RFC 3339.
fn at_ms(v: &Value) -> String {
    v.as_i64()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| "-".to_string(), |t| t.to_string())
}

/// Each source of the hook as this instance runs it (brokers' subscriptions, git pollers).
fn print_sources(sources: &[Value]) {
    if sources.is_empty() {
        return;
    }
    println!("sources (on the instance answering):");
    for src in sources {
        let head = format!(
            "  [{}] {}",
            src["index"].as_u64().unwrap_or(0),
            text(&src["subscription"])
        );
        if src["running_here"] == json!(false) {
            println!("{head}: not running on this instance");
            continue;
        }
        let mut line = if src["standby"] == json!(true) {
            format!(
                "{head}: standby (lease held by {})",
                text(&src["lease_holder"])
            )
        } else if src["connected"] == json!(true) {
            format!("{head}: connected since {}", at_ms(&src["since"]))
        } else {
            format!("{head}: not connected since {}", at_ms(&src["since"]))
        };
        line.push_str(&format!(
            "; received {}, fired {}",
            src["received"].as_u64().unwrap_or(0),
            src["fired"].as_u64().unwrap_or(0)
        ));
        if let Some(lag) = src["lag"].as_u64() {
            line.push_str(&format!(", lag {lag}"));
        }
        if let Some(d) = src["last_delivery_id"].as_str() {
            line.push_str(&format!(", last delivery {d}"));
        }
        println!("{line}");
        if let Some(e) = src["last_error"].as_str() {
            println!("      last error at {}: {e}", at_ms(&src["last_error_at"]));
        }
    }
}

fn print_fires(out: &Value) {
    let fires = out["fires"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if fires.is_empty() {
        println!("no fires");
        return;
    }
    println!(
        "{:<24} {:<9} {:<9} {:<36} {:<10} ERROR",
        "RECEIVED_AT", "FIRED_BY", "RESULT", "TASK_ID", "TASK_STATE"
    );
    for f in fires {
        let line = format!(
            "{:<24} {:<9} {:<9} {:<36} {:<10} {}",
            text(&f["received_at"]),
            text(&f["fired_by"]),
            text(&f["result"]),
            text(&f["task_id"]),
            text(&f["task_state"]),
            f["error"].as_str().unwrap_or("")
        );
        println!("{}", line.trim_end());
    }
}

fn print_dry_run(out: &Value) {
    println!("result: {}", text(&out["result"]));
    if let Some(t) = out["template"].as_str() {
        println!("template: {t}");
    }
    if !out["inputs"].is_null() {
        println!("inputs: {}", out["inputs"]);
    }
    if let Some(f) = out["field"].as_str() {
        println!("field: {f}");
    }
    if let Some(e) = out["error"].as_str() {
        println!("error: {e}");
    }
}
