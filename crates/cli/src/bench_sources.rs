//! The broker figures of `taskhook bench`: a stream (queue, topic) pre-filled with messages,
//! then a hook whose source consumes it; the figure is messages per second into committed
//! fires, each with its task, acknowledged to the broker.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use taskhook_engine::Engine;
use tokio_util::sync::CancellationToken;

/// Messages sent to the broker per round trip while pre-filling.
const PREFILL_BATCH: usize = 1000;

/// Measures one `KIND=URL` source with `n` pre-filled messages.
pub(crate) async fn bench_source(engine: &Engine, spec: &str, n: usize) -> anyhow::Result<()> {
    let Some((kind, url)) = spec.split_once('=') else {
        bail!("--source {spec:?}: write KIND=URL, e.g. redis=redis://127.0.0.1:6379");
    };
    let name = format!("taskhook-bench-{}", uuid::Uuid::new_v4().simple());
    let body = br#"{"kind":"bench","n":1}"#;
    let source = match kind {
        "redis" => {
            prefill_redis(url, &name, body, n).await?;
            format!("{{redis: {{url: \"{url}\", stream: \"{name}\", from: all}}}}")
        }
        other => bail!("--source {other}=…: the bench measures redis"),
    };
    let hook = taskhook_hooks::Hook::parse(&format!("template: bench-one\nsources: [{source}]\n"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let id = format!("source-{kind}");
    engine.put_hook("bench", &id, hook).await?;
    let stop = CancellationToken::new();
    let start = Instant::now();
    let supervisor = tokio::spawn(taskhook_sources::supervisor::run(
        engine.clone(),
        stop.clone(),
    ));
    let fired = loop {
        let fired = engine
            .source_board()
            .of("bench", &id)
            .first()
            .map_or(0, |s| s.fired);
        if fired >= n as u64 {
            break fired;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("{kind} source: only {fired} of {n} messages fired within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = start.elapsed();
    stop.cancel();
    let _ = supervisor.await;
    engine.delete_hook("bench", &id).await?;
    println!(
        "{kind} source: {fired} pre-filled messages into committed fires with tasks, acknowledged, in {:.2}s = {:.0}/s",
        elapsed.as_secs_f64(),
        fired as f64 / elapsed.as_secs_f64()
    );
    if kind == "redis" {
        let client = redis::Client::open(url)?;
        let mut con = client.get_multiplexed_async_connection().await?;
        let _: () = redis::cmd("DEL").arg(&name).query_async(&mut con).await?;
    }
    Ok(())
}

async fn prefill_redis(url: &str, stream: &str, body: &[u8], n: usize) -> anyhow::Result<()> {
    let client = redis::Client::open(url).with_context(|| format!("redis URL {url:?}"))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let mut left = n;
    while left > 0 {
        let k = left.min(PREFILL_BATCH);
        let mut pipe = redis::pipe();
        for _ in 0..k {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("payload")
                .arg(body)
                .ignore();
        }
        let _: () = pipe.query_async(&mut con).await?;
        left -= k;
    }
    Ok(())
}
