//! `taskhook audit`: read the audit log (API calls that changed or tried to change something,
//! and task state changes), newest first, with the server's filters.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use crate::client::{Client, Conn, print_json};

#[derive(Args)]
pub struct AuditArgs {
    /// Only entries by this actor: admin, a token's name, hook:GROUP/ID, anonymous, engine…
    #[arg(long)]
    actor: Option<String>,
    /// Only this action: a call's "METHOD /route" (e.g. "POST /api/v1/tasks") or a task
    /// event's kind (created, claimed, cancelled…).
    #[arg(long)]
    action: Option<String>,
    /// Only entries about this target: a template name, a task id, GROUP/ID…
    #[arg(long)]
    target: Option<String>,
    /// ok, error, or an HTTP status (e.g. 401).
    #[arg(long)]
    outcome: Option<String>,
    /// Entries at or after this time: RFC 3339, or a duration ago (30m, 12h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Entries before this time: RFC 3339, or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// call (API calls) or task (task state changes); both by default.
    #[arg(long)]
    kind: Option<String>,
    /// Entries to show (1-1000).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Start after this entry (the cursor a previous page printed).
    #[arg(long)]
    cursor: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

/// An RFC 3339 time as given, or `now - duration` for a duration.
fn when(flag: &str, v: &str) -> anyhow::Result<String> {
    if let Ok(t) = v.parse::<jiff::Timestamp>() {
        return Ok(t.to_string());
    }
    let d = taskhook_model::duration::parse_duration_str(v).map_err(|e| {
        anyhow::anyhow!("--{flag} {v:?}: not an RFC 3339 time nor a duration ago ({e})")
    })?;
    let ms = taskhook_store::now_ms().saturating_sub(taskhook_model::duration::as_millis_i64(d));
    Ok(jiff::Timestamp::from_millisecond(ms)
        .with_context(|| format!("--{flag} {v:?} is too far back"))?
        .to_string())
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let mut params: Vec<(&str, String)> = Vec::new();
    for (name, v) in [
        ("actor", args.actor),
        ("action", args.action),
        ("target", args.target),
        ("outcome", args.outcome),
        ("kind", args.kind),
        ("cursor", args.cursor),
    ] {
        if let Some(v) = v {
            params.push((name, v));
        }
    }
    if let Some(v) = &args.since {
        params.push(("since", when("since", v)?));
    }
    if let Some(v) = &args.until {
        params.push(("until", when("until", v)?));
    }
    if !(1..=1000).contains(&args.limit) {
        bail!("--limit must be between 1 and 1000");
    }
    params.push(("limit", args.limit.to_string()));
    let url = reqwest::Url::parse_with_params("http://x/api/v1/audit", &params)?;
    let path = format!("/api/v1/audit?{}", url.query().unwrap_or(""));
    let json_out = args.conn.json;
    let out = Client::new(args.conn)?.get(&path).await?;
    if json_out {
        print_json(&out);
        return Ok(ExitCode::SUCCESS);
    }
    print_entries(&out);
    if let Some(next) = out["next_cursor"].as_str() {
        eprintln!("more: add --cursor {next}");
    }
    Ok(ExitCode::SUCCESS)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_entries(out: &Value) {
    let entries = out["entries"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if entries.is_empty() {
        println!("no entries");
        return;
    }
    println!(
        "{:<24} {:<4} {:<20} {:<6} {:<44} {:<36} DETAIL",
        "AT", "KIND", "ACTOR", "STATUS", "ACTION", "TARGET"
    );
    for e in entries {
        let (status, detail) = if e["kind"] == "task" {
            let change = match (e["from_state"].as_str(), e["to_state"].as_str()) {
                (Some(f), Some(t)) => format!("{f} -> {t}"),
                (None, Some(t)) => format!("-> {t}"),
                _ => String::new(),
            };
            ("-".to_string(), change)
        } else {
            (
                text(&e["status"]),
                format!(
                    "{}{}",
                    e["client"]
                        .as_str()
                        .map(|c| format!("from {c}"))
                        .unwrap_or_default(),
                    e["error"]
                        .as_str()
                        .map(|m| format!("  {m}"))
                        .unwrap_or_default()
                ),
            )
        };
        let line = format!(
            "{:<24} {:<4} {:<20} {:<6} {:<44} {:<36} {}",
            text(&e["at"]),
            text(&e["kind"]),
            text(&e["actor"]),
            status,
            text(&e["action"]),
            text(&e["target"]),
            detail
        );
        println!("{}", line.trim_end());
    }
}
