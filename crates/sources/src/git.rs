//! git: a repository polled for pushes, one fire per push per watched branch.
//!
//! One instance at a time polls a hook's git source: each poll starts by taking (or keeping)
//! the source's lease in the store (`Store::lease_source`), which answers the cursor, the
//! heads last seen. Others stand by and take over when the lease runs out. A poll lists the
//! heads (`git ls-remote`); every watched branch whose head moved is fired with the cursor's
//! move for that branch in the same write (`Engine::fire_at_cursor`), so after a failover
//! the next poll neither misses nor repeats a push. The first poll only records the heads.
//!
//! For the `commits` of an event, a bare repository per source under the system's temporary
//! directory (`taskhook-git/<instance>/…`, a cache that may be deleted at any time) fetches
//! the watched branches without trees or blobs (`--filter=tree:0`, at most 21 commits deep),
//! then `git log before..after` lists at most [`MAX_COMMITS`] (from a dumb HTTP server, which
//! sends whole history only, everything is fetched). A failed fetch still fires,
//! with `commits: []`, and says so in the status.
//!
//! `git` runs with `GIT_TERMINAL_PROMPT=0`, no credential helper, only the http, https and
//! file protocols, a timeout, and is killed when dropped. A password (or token) in the URL is
//! sent as an `Authorization` header through `GIT_CONFIG_*` variables, never in arguments.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};
use taskhook_hooks::Message;
use taskhook_hooks::source::{GitSource, branch_matches};
use taskhook_store::{FireCursor, SourceLease};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::{Cx, Source};

/// Most time one `git` command may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Most commits an event lists (the newest ones).
const MAX_COMMITS: usize = 20;
/// A commit message longer than this is cut.
const MAX_MESSAGE_CHARS: usize = 16 * 1024;
/// `before` of a new branch.
const ZEROS: &str = "0000000000000000000000000000000000000000";
/// The cursor's entry holding the branch patterns it was kept for (the others are refs).
const WATCH: &str = "watch";
/// Where fetched branches live in the cache.
const CACHE_REFS: &str = "refs/taskhook/heads/";

pub(crate) struct Git {
    spec: GitSource,
}

impl Git {
    pub(crate) fn new(spec: GitSource) -> Self {
        Git { spec }
    }
}

/// How long a poller's lease lasts: two intervals and 10 s, renewed at every poll.
fn lease_ttl(interval: Duration) -> Duration {
    interval * 2 + Duration::from_secs(10)
}

#[async_trait::async_trait]
impl Source for Git {
    async fn run(&self, cx: &Cx) -> Result<(), String> {
        if !cx.engine.config().git_file_urls && self.spec.is_local() {
            return Err(taskhook_engine::LOCAL_GIT_REFUSED.into());
        }
        let interval = self.spec.interval()?;
        let key = self.spec.key();
        let (url, auth) = self.spec.remote();
        // On SQLite one process owns the database: the lease is the process's, so a restart
        // takes its sources over at once rather than after the dead one's lease.
        let owner = if cx.engine.store().is_shared() {
            cx.instance.clone()
        } else {
            "local".to_string()
        };
        let runner = Runner {
            auth,
            cache: cache_dir(&cx.instance, &cx.row.group, &cx.row.id, &key),
            dumb: AtomicBool::new(false),
        };
        let ttl_ms = lease_ttl(interval).as_millis() as i64;
        let store = cx.engine.store();
        loop {
            if cx.stop.is_cancelled() {
                break;
            }
            match store
                .lease_source(&cx.row.group, &cx.row.id, &key, &owner, ttl_ms)
                .await
            {
                Ok(SourceLease::Held(cursor)) => {
                    cx.status.update(|s| {
                        s.standby = Some(false);
                        s.lease_holder = None;
                    });
                    let poller = Poll {
                        spec: &self.spec,
                        cx,
                        key: &key,
                        owner: &owner,
                        url: &url,
                        git: &runner,
                    };
                    poller.poll(cursor).await?;
                    cx.status.connected();
                }
                Ok(SourceLease::Elsewhere { owner, .. }) => {
                    cx.status.update(|s| {
                        s.standby = Some(true);
                        s.lease_holder = Some(owner);
                    });
                    cx.status.connected();
                }
                Err(e) => return Err(format!("taking the source's lease: {e}")),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = cx.stop.cancelled() => break,
            }
        }
        // Stopped: another instance may take the source over at once.
        let _ = store
            .release_source(&cx.row.group, &cx.row.id, &key, &owner)
            .await;
        // No poll runs now. The cache goes with the subscription, so a deleted, disabled or
        // changed hook leaves nothing behind; a restarted one fetches again.
        let _ = tokio::fs::remove_dir_all(&runner.cache).await;
        Ok(())
    }
}

/// One branch whose head moved.
struct Push {
    refname: String,
    before: String,
    after: String,
    created: bool,
}

struct Poll<'a> {
    spec: &'a GitSource,
    cx: &'a Cx,
    key: &'a str,
    owner: &'a str,
    url: &'a str,
    git: &'a Runner,
}

impl Poll<'_> {
    fn cursor(&self, patch: Map<String, Value>) -> FireCursor {
        FireCursor {
            key: self.key.to_string(),
            owner: self.owner.to_string(),
            patch: Value::Object(patch),
        }
    }

    async fn set_cursor(&self, patch: Map<String, Value>) -> Result<(), String> {
        self.cx
            .engine
            .store()
            .set_source_cursor(&self.cx.row.group, &self.cx.row.id, self.cursor(patch))
            .await
            .map_err(|e| format!("recording the heads: {e}"))
    }

    async fn poll(&self, cursor: Option<Value>) -> Result<(), String> {
        let heads = self.git.ls_remote(self.url).await?;
        let watched: BTreeMap<&str, &str> = heads
            .iter()
            .filter(|(r, _)| {
                r.strip_prefix("refs/heads/")
                    .is_some_and(|b| self.spec.watches(b))
            })
            .map(|(r, s)| (r.as_str(), s.as_str()))
            .collect();
        let patterns = json!(self.spec.branches);
        let Some(Value::Object(cursor)) = cursor else {
            // The first poll: remember the heads, fire nothing.
            let mut patch: Map<String, Value> = watched
                .iter()
                .map(|(r, s)| (r.to_string(), json!(s)))
                .collect();
            patch.insert(WATCH.into(), patterns);
            return self.set_cursor(patch).await;
        };
        let old_patterns: Option<Vec<&str>> = cursor
            .get(WATCH)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect());
        let mut patch = Map::new();
        if cursor.get(WATCH) != Some(&patterns) {
            patch.insert(WATCH.into(), patterns);
        }
        // A branch gone (or no longer watched) leaves the cursor, without a fire.
        for r in cursor.keys() {
            if r.starts_with("refs/") && !watched.contains_key(r.as_str()) {
                patch.insert(r.clone(), Value::Null);
            }
        }
        let mut pushes = Vec::new();
        for (r, after) in &watched {
            match cursor.get(*r).and_then(Value::as_str) {
                Some(before) if before == *after => {}
                Some(before) => pushes.push(Push {
                    refname: r.to_string(),
                    before: before.to_string(),
                    after: after.to_string(),
                    created: false,
                }),
                None => {
                    let name = r.trim_start_matches("refs/heads/");
                    let watched_before = old_patterns
                        .as_ref()
                        .is_none_or(|ps| ps.iter().any(|p| branch_matches(p, name)));
                    if watched_before {
                        pushes.push(Push {
                            refname: r.to_string(),
                            before: ZEROS.into(),
                            after: after.to_string(),
                            created: true,
                        });
                    } else {
                        // Newly watched (the patterns changed): its head is the baseline.
                        patch.insert(r.to_string(), json!(after));
                    }
                }
            }
        }
        if !patch.is_empty() {
            self.set_cursor(patch).await?;
        }
        if pushes.is_empty() {
            return Ok(());
        }
        let n = pushes.len() as u64;
        self.cx.status.update(|s| {
            s.received += n;
            s.last_message_at = Some(taskhook_store::now_ms());
        });
        let wanted: Vec<&str> = watched.keys().copied().collect();
        let mut problems = Vec::new();
        let fetched = match self.git.fetch(self.url, &wanted).await {
            Ok(()) => true,
            Err(e) => {
                problems.push(format!(
                    "fetching commits failed, fired with commits: []: {e}"
                ));
                false
            }
        };
        let mut events = Vec::new();
        for p in &pushes {
            let commits = if fetched {
                match self.git.commits(p, &watched).await {
                    Ok(c) => c,
                    Err(e) => {
                        problems.push(format!(
                            "listing the commits of {} failed, fired with commits: []: {e}",
                            p.refname
                        ));
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            events.push((p, commits));
        }
        let max = self.spec.max_message_bytes;
        let fires = events.into_iter().map(|(p, commits)| async move {
            let head = commits.last().cloned().unwrap_or(Value::Null);
            let payload = json!({
                "ref": p.refname,
                "before": p.before,
                "after": p.after,
                "created": p.created,
                "deleted": false,
                "commits": commits,
                "head_commit": head,
                "repository": {"url": self.url},
            });
            let delivery_id = format!("{}:{}@{}", self.key, p.refname, p.after);
            let message = Message {
                delivery_id: delivery_id.clone(),
                source: p.refname.clone(),
                headers: Default::default(),
                body: serde_json::to_vec(&payload).unwrap_or_default(),
                first_delivery: false,
            };
            let (event, too_big) = message.event("git", max);
            let mut moved = Map::new();
            moved.insert(p.refname.clone(), json!(p.after));
            let r = self
                .cx
                .engine
                .fire_at_cursor(
                    &self.cx.row,
                    &self.cx.hook,
                    event,
                    too_big,
                    self.cursor(moved),
                )
                .await;
            (delivery_id, r)
        });
        let results = futures_util::future::join_all(fires).await;
        let mut failed = None;
        for (id, r) in results {
            match r {
                Ok(_) => self.cx.status.update(|s| {
                    s.fired += 1;
                    s.last_delivery_id = Some(id);
                }),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            // Not committed: the cursor did not move for those branches, so the next poll
            // (ours, or the new lease holder's) fires them.
            return Err(format!("fires could not be stored: {e}"));
        }
        if !problems.is_empty() {
            self.cx.status.error(&problems.join("; "), false);
        }
        Ok(())
    }
}

/// The cache repository of one source on this instance.
fn cache_dir(instance: &str, group: &str, id: &str, key: &str) -> PathBuf {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (group, id).hash(&mut h);
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect()
    };
    std::env::temp_dir()
        .join("taskhook-git")
        .join(safe(instance))
        .join(format!(
            "{}-{}-{:016x}-{}",
            safe(group),
            safe(id),
            h.finish(),
            safe(key)
        ))
}

/// Runs `git` for one source.
struct Runner {
    /// The `Authorization` header value, when the URL carried credentials.
    auth: Option<String>,
    cache: PathBuf,
    /// The server sends only whole history (dumb HTTP): fetch without filter or depth.
    dumb: AtomicBool,
}

impl Runner {
    fn command(&self) -> Command {
        let mut c = Command::new("git");
        c.args(["-c", "credential.helper=", "-c", "core.askPass="])
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ALLOW_PROTOCOL", "http:https:file")
            .env("LC_ALL", "C")
            .env_remove("GIT_ASKPASS")
            .env_remove("SSH_ASKPASS")
            .env_remove("GIT_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match &self.auth {
            Some(auth) => {
                c.env("GIT_CONFIG_COUNT", "1")
                    .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                    .env("GIT_CONFIG_VALUE_0", format!("Authorization: {auth}"));
            }
            None => {
                c.env_remove("GIT_CONFIG_COUNT");
            }
        }
        c
    }

    /// Runs `git args…` (with `input` on its standard input) and returns its standard output.
    async fn run(&self, args: &[&str], input: Option<String>) -> Result<String, String> {
        let mut c = self.command();
        c.args(args);
        if input.is_some() {
            c.stdin(Stdio::piped());
        }
        let what = args
            .iter()
            .find(|a| !a.starts_with('-'))
            .copied()
            .unwrap_or("git");
        let work = async {
            let mut child = c.spawn().map_err(|e| format!("running git: {e}"))?;
            if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
                stdin
                    .write_all(text.as_bytes())
                    .await
                    .map_err(|e| format!("git {what}: {e}"))?;
            }
            child
                .wait_with_output()
                .await
                .map_err(|e| format!("git {what}: {e}"))
        };
        let out = tokio::time::timeout(GIT_TIMEOUT, work)
            .await
            .map_err(|_| format!("git {what} took more than {}s", GIT_TIMEOUT.as_secs()))??;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err: String = err.trim().chars().take(500).collect();
            return Err(format!("git {what} failed ({}): {err}", out.status));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The repository's branches: `refs/heads/…` → commit.
    async fn ls_remote(&self, url: &str) -> Result<BTreeMap<String, String>, String> {
        let out = self.run(&["ls-remote", "--heads", url], None).await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(sha, r)| sha.len() >= 40 && r.starts_with("refs/heads/"))
            .map(|(sha, r)| (r.to_string(), sha.to_string()))
            .collect())
    }

    fn cache(&self) -> Result<String, String> {
        self.cache
            .to_str()
            .map(String::from)
            .ok_or_else(|| "the cache directory is not UTF-8".to_string())
    }

    /// Fetches the given branches into the cache (created when missing), commits only; from
    /// a server that cannot send partial history (dumb HTTP), everything, into a new cache
    /// (a refused partial fetch leaves the cache expecting a promisor remote).
    async fn fetch(&self, url: &str, refs: &[&str]) -> Result<(), String> {
        match self.fetch_once(url, refs).await {
            Err(e) if e.contains("shallow") && !self.dumb.swap(true, Ordering::Relaxed) => {
                let _ = std::fs::remove_dir_all(&self.cache);
                self.fetch_once(url, refs).await
            }
            r => r,
        }
    }

    async fn fetch_once(&self, url: &str, refs: &[&str]) -> Result<(), String> {
        let cache = self.cache()?;
        if !self.cache.join("HEAD").exists() {
            std::fs::create_dir_all(&self.cache)
                .map_err(|e| format!("creating the cache {cache}: {e}"))?;
            self.run(&["init", "--bare", "--quiet", &cache], None)
                .await?;
        }
        let specs: String = refs
            .iter()
            .map(|r| format!("+{r}:{CACHE_REFS}{}\n", r.trim_start_matches("refs/heads/")))
            .collect();
        let depth = format!("--depth={}", MAX_COMMITS + 1);
        let mut args = vec![
            "-C",
            &cache,
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--stdin",
        ];
        if !self.dumb.load(Ordering::Relaxed) {
            args.extend(["--filter=tree:0", depth.as_str()]);
        }
        args.push(url);
        self.run(&args, Some(specs)).await.map(|_| ())
    }

    /// The commits a push brought, oldest first, at most [`MAX_COMMITS`]: those of `after`
    /// not in `before` (or, for a new branch, not in the other watched branches).
    async fn commits(&self, p: &Push, heads: &BTreeMap<&str, &str>) -> Result<Vec<Value>, String> {
        let cache = self.cache()?;
        let exclude: Vec<&str> = if p.created {
            heads
                .iter()
                .filter(|(r, _)| **r != p.refname)
                .map(|(_, s)| *s)
                .collect()
        } else {
            vec![p.before.as_str()]
        };
        // Only commits the cache holds can be walked.
        let mut ask = p.after.clone() + "\n";
        for s in &exclude {
            ask.push_str(s);
            ask.push('\n');
        }
        let present = self
            .run(&["-C", &cache, "cat-file", "--batch-check"], Some(ask))
            .await?;
        let have = |sha: &str| {
            present
                .lines()
                .any(|l| l.starts_with(sha) && l.contains(" commit "))
        };
        if !have(&p.after) {
            return Err(format!("commit {} was not fetched", p.after));
        }
        let mut revs = p.after.clone() + "\n";
        for s in exclude.iter().filter(|s| have(s)) {
            revs.push('^');
            revs.push_str(s);
            revs.push('\n');
        }
        let max = format!("--max-count={MAX_COMMITS}");
        let out = self
            .run(
                &[
                    "-C",
                    &cache,
                    "log",
                    &max,
                    "--format=%H%x1f%an%x1f%ae%x1f%aI%x1f%B%x1e",
                    "--stdin",
                ],
                Some(revs),
            )
            .await?;
        let mut commits: Vec<Value> = out
            .split('\x1e')
            .filter_map(|rec| {
                let mut f = rec.trim_start_matches('\n').splitn(5, '\x1f');
                let (id, name, email, at, message) =
                    (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
                let message: String = message.trim_end().chars().take(MAX_MESSAGE_CHARS).collect();
                Some(json!({
                    "id": id,
                    "message": message,
                    "author": {"name": name, "email": email},
                    "timestamp": at,
                }))
            })
            .collect();
        commits.reverse();
        Ok(commits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dirs_differ_per_instance_and_source() {
        let a = cache_dir("i1", "g", "h", "git:ab");
        assert_ne!(a, cache_dir("i2", "g", "h", "git:ab"));
        assert_ne!(a, cache_dir("i1", "g", "h", "git:cd"));
        assert_ne!(a, cache_dir("i1", "g.h", "", "git:ab"));
        assert!(a.starts_with(std::env::temp_dir()));
    }

    #[test]
    fn a_lease_outlives_two_polls() {
        assert_eq!(lease_ttl(Duration::from_secs(1)), Duration::from_secs(12));
        assert!(lease_ttl(Duration::from_secs(60)) > Duration::from_secs(120));
    }
}
