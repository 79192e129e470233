//! The key ring of encryption at rest: where `serve` finds it, and `taskhook keys …`.
//!
//! The ring comes from, in order: `--key-file PATH` (`TASKHOOK_KEY_FILE`), the
//! `TASKHOOK_KEYS` variable, or `<data-dir>/keys`, generated with one key (owner-only, 0600)
//! on first start. Its text form is one `ID:BASE64KEY` entry per line (or comma-separated in
//! `TASKHOOK_KEYS`), oldest first: the last key seals, every key opens.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use taskhook_store::{KeyRing, Store};

use crate::client::{Client, Conn, print_json};

/// The environment variable holding a key ring inline.
pub const KEYS_ENV: &str = "TASKHOOK_KEYS";

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Print a new random key as `ID:BASE64KEY`; with --key-file, also append it to that file
    /// (created owner-only if missing), where it becomes the newest key.
    Generate {
        /// Key id (default `k<unix seconds>`): 1 to 64 of A-Z a-z 0-9 _ . -
        #[arg(long)]
        id: Option<String>,
        /// Append the key to this key file.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Reseal all stored data with the newest key of the ring, while the server keeps serving.
    /// Every instance must already run with the new key in its ring (restart them after adding
    /// it). With --database-url, works on the database directly instead of through a server.
    Rotate {
        /// Work on this database directly (`sqlite:PATH` only while no server uses it, or
        /// `postgres://…`), with the ring from --key-file or TASKHOOK_KEYS.
        #[arg(long)]
        database_url: Option<String>,
        /// The key file (with --database-url).
        #[arg(long, env = "TASKHOOK_KEY_FILE")]
        key_file: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show the ring's key ids and how many stored values each key seals: once no value is
    /// under an old key, that key can be removed from the ring.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
}

/// Where the ring came from, as told to the operator.
pub fn load_ring(key_file: Option<&Path>, data_dir: &Path) -> anyhow::Result<(KeyRing, String)> {
    if let Some(path) = key_file {
        return Ok((read_key_file(path)?, path.display().to_string()));
    }
    if let Ok(text) = std::env::var(KEYS_ENV)
        && !text.trim().is_empty()
    {
        let ring = KeyRing::parse(&text).with_context(|| KEYS_ENV.to_string())?;
        return Ok((ring, KEYS_ENV.to_string()));
    }
    let path = data_dir.join("keys");
    if !path.exists() {
        let entry = KeyRing::generate_entry(None)?;
        append_key(&path, &entry).with_context(|| format!("writing {}", path.display()))?;
        tracing::warn!(file = %path.display(), "generated a new key ring: back it up, the data cannot be read without it");
    }
    Ok((read_key_file(&path)?, path.display().to_string()))
}

fn read_key_file(path: &Path) -> anyhow::Result<KeyRing> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(file = %path.display(), "the key file is readable by others: chmod 600 it");
    }
    KeyRing::parse(&text).with_context(|| format!("{}", path.display()))
}

/// Appends an entry to a key file, creating it owner-only.
fn append_key(path: &Path, entry: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(entry.as_bytes())?;
    f.write_all(b"\n")
}

/// Opens a store and installs its ring; refuses, naming the key the database expects, when
/// no key of the ring opens the canary.
pub async fn install(store: &Store, ring: KeyRing, source: &str) -> anyhow::Result<()> {
    let ids = ring.ids().join(", ");
    store.install_keys(ring).await.with_context(|| {
        format!(
            "refusing to start: the key ring from {source} (keys: {ids}) cannot read this database"
        )
    })
}

pub async fn keys(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Generate { id, key_file } => {
            let entry = KeyRing::generate_entry(id.as_deref())?;
            if let Some(path) = key_file {
                if path.exists() {
                    // the new entry must fit the ring already there
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    KeyRing::parse(&format!("{text}\n{entry}"))
                        .with_context(|| format!("{}", path.display()))?;
                }
                append_key(&path, &entry).with_context(|| format!("writing {}", path.display()))?;
                eprintln!(
                    "appended to {}: restart the servers, then run `taskhook keys rotate`",
                    path.display()
                );
            }
            println!("{entry}");
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Rotate {
            database_url: Some(url),
            key_file,
            conn,
        } => {
            let ring = match &key_file {
                Some(p) => read_key_file(p)?,
                None => match std::env::var(KEYS_ENV) {
                    Ok(t) if !t.trim().is_empty() => {
                        KeyRing::parse(&t).with_context(|| KEYS_ENV.to_string())?
                    }
                    _ => bail!("--database-url needs the key ring: --key-file PATH or {KEYS_ENV}"),
                },
            };
            let store = Store::connect(&url).await?;
            install(&store, ring, "the given ring").await?;
            let report = store.rotate_keys().await?;
            let status = store.key_status().await?;
            store.close();
            show_rotation(&json!({"rotation": report, "status": status}), conn.json);
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Rotate { conn, .. } => {
            let json_out = conn.json;
            let out = Client::new(conn)?
                .post("/api/v1/keys/rotate", json!({}))
                .await?;
            show_rotation(&out, json_out);
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Status { conn } => {
            let json_out = conn.json;
            let out = Client::new(conn)?.get("/api/v1/keys").await?;
            if json_out {
                print_json(&out);
            } else {
                show_status(&out);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn show_rotation(out: &Value, json_out: bool) {
    if json_out {
        print_json(out);
        return;
    }
    let r = &out["rotation"];
    println!(
        "resealed {} of {} stored values with key {} ({} changed by other writers meanwhile)",
        r["resealed"],
        r["scanned"],
        r["key_id"].as_str().unwrap_or("?"),
        r["changed_meanwhile"]
    );
    show_status(&out["status"]);
}

fn show_status(s: &Value) {
    let ring: Vec<&str> = s["ring"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "ring: {} (newest: {})",
        ring.join(", "),
        s["newest"].as_str().unwrap_or("?")
    );
    println!(
        "canary sealed with: {}",
        s["canary"].as_str().unwrap_or("(none)")
    );
    if let Some(m) = s["sealed"].as_object() {
        for (id, n) in m {
            println!("  {id}: {n} values");
        }
    }
    println!("not sealed: {}", s["clear"]);
    let old = s["under_old_keys"].as_u64().unwrap_or(0);
    if old == 0 {
        println!("no data under old keys: keys other than the newest can be removed from the ring");
    } else {
        println!("{old} values under old keys: run `taskhook keys rotate`");
    }
}
