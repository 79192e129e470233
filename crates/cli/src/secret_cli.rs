//! `taskhook secret …`: named secrets that templates read as `{{ secret.NAME }}`. A value is
//! read from a file or standard input, never from the command line (it would sit in shell
//! history and in the process list), and nothing here ever prints one.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{Client, Conn, print_json};

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Create or replace a secret. The value is read from --value-file, or else from standard
    /// input; one trailing newline is dropped.
    Put {
        /// 1 to 64 ASCII letters, digits and '_'.
        name: String,
        /// Read the value from this file.
        #[arg(long)]
        value_file: Option<PathBuf>,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List secrets (names and metadata; values are never shown).
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one secret's metadata.
    Get {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a secret. Templates reading it fail validation when written again, and steps
    /// reading it fail when they run.
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// The value as given: one trailing newline (`\n` or `\r\n`) dropped.
fn trim_newline(mut v: String) -> String {
    if v.ends_with('\n') {
        v.pop();
        if v.ends_with('\r') {
            v.pop();
        }
    }
    v
}

fn read_value(file: Option<&PathBuf>) -> anyhow::Result<String> {
    let raw = match file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("type the secret's value, then Ctrl-D:");
            }
            let mut s = String::new();
            stdin
                .lock()
                .read_to_string(&mut s)
                .context("reading the value from standard input")?;
            s
        }
    };
    let value = trim_newline(raw);
    if value.is_empty() {
        bail!("the value is empty: give it on standard input or with --value-file");
    }
    Ok(value)
}

fn summary(s: &Value) -> String {
    format!(
        "{:<32} v{:<4} {:<25} {}",
        s["name"].as_str().unwrap_or(""),
        s["version"].as_i64().unwrap_or(0),
        s["updated_at"].as_str().unwrap_or(""),
        s["description"].as_str().unwrap_or("")
    )
}

pub async fn secret(cmd: SecretCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCommand::Put {
            name,
            value_file,
            description,
            conn,
        } => {
            taskhook_model::secret::check_name(&name).map_err(anyhow::Error::msg)?;
            let json_out = conn.json;
            let c = Client::new(conn)?;
            let value = read_value(value_file.as_ref())?;
            let mut body = json!({"value": value});
            if let Some(d) = description {
                body["description"] = Value::String(d);
            }
            let out = c.put(&format!("/api/v1/secrets/{name}"), body).await?;
            if json_out {
                print_json(&out);
            } else {
                println!(
                    "{name} stored (version {})",
                    out["version"].as_i64().unwrap_or(0)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretCommand::List { conn } => {
            let json_out = conn.json;
            let out = Client::new(conn)?.get("/api/v1/secrets").await?;
            if json_out {
                print_json(&out);
            } else {
                for s in out.as_array().into_iter().flatten() {
                    println!("{}", summary(s));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretCommand::Get { name, conn } => {
            let json_out = conn.json;
            let out = Client::new(conn)?
                .get(&format!("/api/v1/secrets/{name}"))
                .await?;
            if json_out {
                print_json(&out);
            } else {
                println!("{}", summary(&out));
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretCommand::Delete { name, conn } => {
            Client::new(conn)?
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/secrets/{name}"),
                    None,
                )
                .await?;
            println!("deleted {name}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::trim_newline;

    #[test]
    fn one_trailing_newline_is_dropped() {
        assert_eq!(trim_newline("v\n".into()), "v");
        assert_eq!(trim_newline("v\r\n".into()), "v");
        assert_eq!(trim_newline("v\n\n".into()), "v\n");
        assert_eq!(trim_newline(" v ".into()), " v ");
    }
}
