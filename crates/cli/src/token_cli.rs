//! `taskhook token create|list|revoke`, and the `serve` flags of reverse-proxy mode.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::{Client, Conn, print_json};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token; prints it once (only its hash is kept).
    Create {
        /// A scope the token holds (repeat); the caller must hold each one.
        #[arg(long = "scope", short = 's', required = true)]
        scopes: Vec<String>,
        /// What the token is for.
        #[arg(long, short = 'd', default_value = "")]
        description: String,
        /// Lifetime from now, such as 30d or 12h.
        #[arg(long, conflicts_with = "expires_at")]
        expires_in: Option<String>,
        /// RFC 3339 time after which the token is refused.
        #[arg(long)]
        expires_at: Option<String>,
        /// The user the token acts as (requester and resolver grants).
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a token: it is refused from now on.
    Revoke {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            scopes,
            description,
            expires_in,
            expires_at,
            user,
            conn,
        } => {
            let json_out = conn.json;
            let c = Client::new(conn)?;
            let mut body = json!({"scopes": scopes, "description": description});
            if let Some(e) = expires_in {
                body["expires_in"] = json!(e);
            }
            if let Some(e) = expires_at {
                body["expires_at"] = json!(e);
            }
            if let Some(u) = user {
                body["user"] = json!(u);
            }
            let out = c.post("/api/v1/tokens", body).await?;
            if json_out {
                print_json(&out);
            } else {
                println!("id: {}", out["id"].as_str().unwrap_or(""));
                println!("token: {}", out["token"].as_str().unwrap_or(""));
                if let Some(e) = out["expires_at"].as_str() {
                    println!("expires: {e}");
                }
                eprintln!("the token is shown only now: keep it somewhere safe");
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List { conn } => {
            let json_out = conn.json;
            let c = Client::new(conn)?;
            let out = c.get("/api/v1/tokens").await?;
            if json_out {
                print_json(&out);
                return Ok(ExitCode::SUCCESS);
            }
            for t in out.as_array().into_iter().flatten() {
                let scopes: Vec<&str> = t["scopes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let status = if t["revoked"].as_bool() == Some(true) {
                    "revoked".to_string()
                } else {
                    match t["expires_at"].as_str() {
                        Some(e) => format!("expires {e}"),
                        None => "no expiry".to_string(),
                    }
                };
                println!(
                    "{}  {}  [{}]  user={}  {}  last used {}",
                    t["id"].as_str().unwrap_or(""),
                    t["description"].as_str().unwrap_or(""),
                    scopes.join(" "),
                    t["user"].as_str().unwrap_or("-"),
                    status,
                    t["last_used_at"].as_str().unwrap_or("never"),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { id, conn } => {
            let c = Client::new(conn)?;
            c.call(
                reqwest::Method::DELETE,
                &format!("/api/v1/tokens/{id}"),
                None,
            )
            .await?;
            println!("revoked {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reverse-proxy mode: a proxy in front of the server authenticates people and names them
/// in a header.
#[derive(Args, Clone, Default)]
pub struct ProxyArgs {
    /// Header naming the user a trusted proxy authenticated (e.g. X-Remote-User).
    #[arg(long, env = "TASKHOOK_PROXY_USER_HEADER", requires_all = ["trusted_proxies", "proxy_scopes"])]
    pub proxy_user_header: Option<String>,
    /// Header with the user's groups, comma-separated (e.g. X-Remote-Groups).
    #[arg(
        long,
        env = "TASKHOOK_PROXY_GROUPS_HEADER",
        requires = "proxy_user_header"
    )]
    pub proxy_groups_header: Option<String>,
    /// Networks reverse proxies connect from (comma-separated CIDRs or addresses). From these
    /// peers only, the client address is taken from `Forwarded`/`X-Forwarded-For` (for rate
    /// limits and the audit log), and the proxy user headers are honoured.
    #[arg(long, env = "TASKHOOK_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// YAML file mapping `users:` and `groups:` to lists of scopes.
    #[arg(long, env = "TASKHOOK_PROXY_SCOPES", requires = "proxy_user_header")]
    pub proxy_scopes: Option<PathBuf>,
}

impl ProxyArgs {
    /// The networks of `--trusted-proxies`.
    pub fn trusted_networks(&self) -> anyhow::Result<Vec<taskhook_actions::IpNet>> {
        self.trusted_proxies
            .iter()
            .filter(|t| !t.trim().is_empty())
            .map(|t| {
                taskhook_actions::NetworkPolicy::parse_network(t)
                    .map_err(|e| anyhow::anyhow!("--trusted-proxies: {e}"))
            })
            .collect()
    }

    /// The proxy settings, or `None` when the mode is off.
    pub fn load(&self) -> anyhow::Result<Option<taskhook_server::ProxyAuth>> {
        let Some(user_header) = &self.proxy_user_header else {
            return Ok(None);
        };
        let header = |name: &str, flag: &str| {
            axum::http::HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("{flag}: {name:?} is not a header name"))
        };
        let trusted = self.trusted_networks()?;
        if trusted.is_empty() {
            bail!("--trusted-proxies: name at least one network the proxy connects from");
        }
        let Some(file) = &self.proxy_scopes else {
            bail!("--proxy-scopes: a file mapping users and groups to scopes is required");
        };
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("--proxy-scopes: reading {}", file.display()))?;
        let scopes = taskhook_server::ProxyScopes::parse(&text)
            .map_err(|e| anyhow::anyhow!("--proxy-scopes {}: {e}", file.display()))?;
        Ok(Some(taskhook_server::ProxyAuth {
            user_header: header(user_header, "--proxy-user-header")?,
            groups_header: self
                .proxy_groups_header
                .as_deref()
                .map(|h| header(h, "--proxy-groups-header"))
                .transpose()?,
            trusted,
            scopes,
        }))
    }
}
