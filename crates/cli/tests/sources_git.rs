//! A git repository as a hook source: polled over `file://` and (dumb) HTTP with a token, one
//! fire per push per watched branch, nothing on the first poll or for other branches, no push
//! missed or repeated across kill -9, and one poller at a time among instances sharing
//! PostgreSQL.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Server, fresh_dir};

/// Lets the server read `file://` repositories, which these tests serve.
const LOCAL: &[&str] = &["--git-allow-file-urls"];
const TEMPLATE: &str = "name: job\nauto_runnable: true\ninputs: [{name: after}]\nsteps:\n  a: {action: {type: echo, configuration: {output: '{{ input.after }}'}}}\n";

/// Runs git in `dir`, as a fixed author; its standard output, trimmed.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Ada Lovelace")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada Lovelace")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository (`repo.git`) and a work tree pushing to it.
struct Repo {
    bare: PathBuf,
    work: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        let dir = fresh_dir();
        let (bare, work) = (dir.join("repo.git"), dir.join("work"));
        git(&dir, &["init", "-q", "--bare", "-b", "main", "repo.git"]);
        git(&dir, &["init", "-q", "-b", "main", "work"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Repo { bare, work }
    }

    fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Commits on the work tree's HEAD; returns the commit.
    fn commit(&self, message: &str) -> String {
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Pushes HEAD to each branch (or deletes it, for `:name`).
    fn push(&self, branches: &[&str]) {
        let specs: Vec<String> = branches
            .iter()
            .map(|b| match b.strip_prefix(':') {
                Some(gone) => format!(":refs/heads/{gone}"),
                None => format!("HEAD:refs/heads/{b}"),
            })
            .collect();
        let mut args = vec!["push", "-q", "--force", "origin"];
        args.extend(specs.iter().map(String::as_str));
        git(&self.work, &args);
        git(&self.bare, &["update-server-info"]);
    }
}

fn hook(url: &str, extra: &str) -> String {
    format!(
        r#"
template: job
inputs: {{after: "{{{{ event.payload.after }}}}"}}
sources:
  - git: {{url: "{url}", branches: [main, "release/*"], interval: 1s{extra}}}
"#
    )
}

/// Waits `polls` polls' worth and checks the fires are still exactly these `n`, each push once.
async fn settle(s: &Server, id: &str, n: usize) -> Vec<Value> {
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let fires = s.fires("repo", id).await;
    assert_eq!(fires.len(), n, "{:#}", Value::Array(fires.clone()));
    assert_eq!(support::created(&fires).len(), n, "{fires:#?}");
    let ids: BTreeSet<&str> = fires
        .iter()
        .map(|f| f["delivery_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), n, "one fire per push");
    fires
}

fn ids(commits: &Value) -> Vec<&str> {
    commits
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect()
}

async fn start_polling(s: &Server, id: &str, url: &str, extra: &str) {
    assert_eq!(s.put_template("job", TEMPLATE).await.0, 201);
    let (st, v) = s.put_hook("repo", id, &hook(url, extra)).await;
    assert_eq!(st, 201, "{v}");
    // Connected once its first poll (the baseline) is done.
    s.wait_source("repo", id, 0, Duration::from_secs(15), |v| {
        v["connected"] == true && v["standby"] == false
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_push_to_a_watched_branch_fires_once_even_across_kill_9() {
    let repo = Repo::new();
    let c0 = repo.commit("first");
    repo.push(&["main", "release/0"]);
    let data = fresh_dir();
    let mut s = Server::start_in(data.clone(), LOCAL);
    start_polling(&s, "file", &repo.url(), "").await;
    // The first poll fired nothing.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(s.fires("repo", "file").await.is_empty());

    let c1 = repo.commit("one\n\nwith a body");
    repo.push(&["main"]);
    let fires = s
        .wait_created("repo", "file", 1, Duration::from_secs(10))
        .await;
    let p = &fires[0]["payload"];
    assert_eq!(fires[0]["fired_by"], "git");
    assert_eq!(p["ref"], "refs/heads/main");
    assert_eq!(p["before"], c0.as_str());
    assert_eq!(p["after"], c1.as_str());
    assert_eq!(p["created"], false);
    assert_eq!(p["repository"]["url"], repo.url().as_str());
    assert_eq!(ids(&p["commits"]), [c1.as_str()]);
    assert_eq!(p["commits"][0]["message"], "one\n\nwith a body");
    assert_eq!(p["commits"][0]["author"]["name"], "Ada Lovelace");
    assert_eq!(p["commits"][0]["author"]["email"], "ada@example.com");
    assert!(p["commits"][0]["timestamp"].as_str().unwrap().contains('T'));
    assert!(
        fires[0]["delivery_id"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":refs/heads/main@{c1}"))
    );

    // Two commits in one push: one fire listing both, oldest first.
    let c2 = repo.commit("two");
    let c3 = repo.commit("three");
    repo.push(&["main"]);
    // A branch nobody watches, and a new watched one with a commit of its own.
    repo.push(&["feature"]);
    let c4 = repo.commit("four");
    repo.push(&["release/1"]);
    s.wait_created("repo", "file", 3, Duration::from_secs(10))
        .await;
    let fires = settle(&s, "file", 3).await;
    let main = fires
        .iter()
        .find(|f| f["payload"]["after"] == c3.as_str())
        .expect("the push of two commits fired");
    assert_eq!(ids(&main["payload"]["commits"]), [c2.as_str(), c3.as_str()]);
    let new = fires
        .iter()
        .find(|f| f["payload"]["ref"] == "refs/heads/release/1")
        .expect("the new branch fired");
    assert_eq!(new["payload"]["created"], true);
    assert_eq!(new["payload"]["before"], "0".repeat(40));
    // Its commits are those not on the other watched branches.
    assert_eq!(ids(&new["payload"]["commits"]), [c4.as_str()]);
    let status = &s.source_status("repo", "file").await[0];
    assert_eq!(status["kind"], "git");
    assert!(status["last_error"].is_null(), "{status}");
    assert_eq!(status["fired"], 3);

    // A branch deleted fires nothing.
    repo.push(&[":release/1", ":release/0"]);
    settle(&s, "file", 3).await;

    // Killed, a push meanwhile: fired once after the restart, nothing fired again.
    s.kill9();
    let c5 = repo.commit("five");
    repo.push(&["main"]);
    let s = Server::start_in(data, LOCAL);
    let fires = s
        .wait_created("repo", "file", 4, Duration::from_secs(15))
        .await;
    let last = fires.last().unwrap();
    assert_eq!(last["payload"]["before"], c3.as_str());
    assert_eq!(last["payload"]["after"], c5.as_str());
    assert_eq!(ids(&last["payload"]["commits"]), [c4.as_str(), c5.as_str()]);
    settle(&s, "file", 4).await;
}

/// Serves the bare repository's files (dumb HTTP) to a request carrying `user:password`.
async fn dumb_http(bare: PathBuf, user: &str, password: &str) -> String {
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let app = axum::Router::new().route(
        "/repo.git/{*path}",
        axum::routing::get(
            move |axum::extract::Path(path): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap| {
                let (bare, expected) = (bare.clone(), expected.clone());
                async move {
                    use axum::http::StatusCode;
                    use axum::response::IntoResponse;
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                    if auth != Some(expected.as_str()) {
                        return (
                            StatusCode::UNAUTHORIZED,
                            [("www-authenticate", "Basic realm=\"git\"")],
                            Vec::new(),
                        )
                            .into_response();
                    }
                    if path.split('/').any(|p| p == ".." || p.is_empty()) {
                        return StatusCode::BAD_REQUEST.into_response();
                    }
                    match std::fs::read(bare.join(&path)) {
                        Ok(bytes) => bytes.into_response(),
                        Err(_) => StatusCode::NOT_FOUND.into_response(),
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/repo.git", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_over_http_with_a_token() {
    let repo = Repo::new();
    let c0 = repo.commit("first");
    repo.push(&["main"]);
    let base = dumb_http(repo.bare.clone(), "bot", "s3cret").await;
    let s = Server::start();
    let with_token = base.replacen("http://", "http://bot:s3cret@", 1);
    start_polling(&s, "http", &with_token, "").await;
    // This server was started without --git-allow-file-urls: a repository on its own disk is
    // refused when the hook is put.
    let (st, v) = s
        .put_hook(
            "repo",
            "local",
            &format!(
                "template: job\nsources: [{{git: {{url: \"{}\"}}}}]\n",
                repo.url()
            ),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let text = v.to_string();
    assert!(
        text.contains("sources[0].git.url") && text.contains("--git-allow-file-urls"),
        "{v}"
    );
    // The password is masked when the hook is shown.
    let (_, shown) = s.get("/api/v1/hooks/repo/http").await;
    assert!(!shown.to_string().contains("s3cret"), "{shown}");

    let c1 = repo.commit("over http");
    repo.push(&["main"]);
    let fires = s
        .wait_created("repo", "http", 1, Duration::from_secs(10))
        .await;
    let p = &fires[0]["payload"];
    assert_eq!(p["before"], c0.as_str());
    assert_eq!(p["after"], c1.as_str());
    assert_eq!(ids(&p["commits"]), [c1.as_str()]);
    assert_eq!(p["repository"]["url"], base.as_str());
    let status = &s.source_status("repo", "http").await[0];
    assert!(status["last_error"].is_null(), "{status}");
    // The fetched commits live in a cache of the instance's, removed with the subscription.
    let instance: String = status["instance"]
        .as_str()
        .unwrap()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let caches = std::env::temp_dir().join("taskhook-git").join(instance);
    let cached = || {
        std::fs::read_dir(&caches).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("repo-http-"))
            })
            .count()
        })
    };
    assert_eq!(cached(), 1, "{}", caches.display());

    // A wrong token: the status says the poll fails.
    let wrong = base.replacen("http://", "http://bot:wrong@", 1);
    let (st, v) = s.put_hook("repo", "refused", &hook(&wrong, "")).await;
    assert_eq!(st, 201, "{v}");
    let status = s
        .wait_source("repo", "refused", 0, Duration::from_secs(10), |v| {
            !v["last_error"].is_null()
        })
        .await;
    assert_eq!(status["connected"], false, "{status}");
    assert!(!status.to_string().contains("wrong"), "{status}");

    // Deleting the hook stops its poller, which removes its cache.
    let deleted = s
        .req(reqwest::Method::DELETE, "/api/v1/hooks/repo/http", None)
        .await;
    assert_eq!(deleted.0, 204, "{:?}", deleted.1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cached() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the cache is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_postgres_fire_each_push_once() {
    let Some(db) = support::postgres_url().await else {
        return;
    };
    let ring = fresh_dir().join("keys");
    let ring = ring.to_str().unwrap();
    let (code, _, err) = support::taskhook(None, &["keys", "generate", "--key-file", ring]);
    assert_eq!(code, 0, "{err}");
    let flags = ["--database-url", db.as_str(), "--key-file", ring, LOCAL[0]];
    let mut servers = [
        Server::start_in(fresh_dir(), &flags),
        Server::start_in(fresh_dir(), &flags),
    ];
    let repo = Repo::new();
    let c0 = repo.commit("first");
    repo.push(&["main"]);
    // Either instance may take the lease first: no waiting for servers[0] to poll.
    assert_eq!(servers[0].put_template("job", TEMPLATE).await.0, 201);
    let (st, v) = servers[0]
        .put_hook("repo", "pg", &hook(&repo.url(), ""))
        .await;
    assert_eq!(st, 201, "{v}");
    // One polls, the other stands by.
    let mut holder = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while holder.is_none() {
        let mut standby = 0;
        for (i, s) in servers.iter().enumerate() {
            let st = &s.source_status("repo", "pg").await[0];
            if st["connected"] == true && st["standby"] == false {
                holder = Some(i);
            } else if st["standby"] == true {
                standby += 1;
            }
        }
        if standby != 1 {
            holder = None;
        }
        assert!(Instant::now() < deadline, "no poller and stand-by pair");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let holder = holder.unwrap();
    let other = 1 - holder;

    let mut pushed = vec![c0];
    for i in 1..=3 {
        pushed.push(repo.commit(&format!("c{i}")));
        repo.push(&["main"]);
        servers[other]
            .wait_created("repo", "pg", i, Duration::from_secs(10))
            .await;
    }
    // The poller dies; a push meanwhile is fired once by the other after its lease runs out.
    servers[holder].kill9();
    pushed.push(repo.commit("c4"));
    repo.push(&["main"]);
    let fires = servers[other]
        .wait_created("repo", "pg", 4, Duration::from_secs(30))
        .await;
    let st = &servers[other].source_status("repo", "pg").await[0];
    assert_eq!(st["standby"], false, "{st}");
    let fires = if fires.len() == 4 {
        settle(&servers[other], "pg", 4).await
    } else {
        fires
    };
    for (i, f) in fires.iter().enumerate() {
        assert_eq!(f["result"], "created", "{f}");
        assert_eq!(f["payload"]["before"], pushed[i].as_str());
        assert_eq!(f["payload"]["after"], pushed[i + 1].as_str());
    }
    assert_eq!(fires.len(), 4);
}
