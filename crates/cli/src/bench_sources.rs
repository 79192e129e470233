//! The broker figures of `taskhook bench`: a stream (queue, topic) pre-filled with messages,
//! then a hook whose source consumes it; the figure is messages per second into committed
//! fires, each with its task, acknowledged to the broker.
//!
//! MQTT brokers keep only a bounded queue per session (Mosquitto: 1,000 messages by
//! default), so for `mqtt` the messages are published while the source consumes, never more
//! than [`MQTT_BACKLOG`] ahead of the fires.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::try_join_all;
use taskhook_engine::Engine;
use tokio_util::sync::CancellationToken;

/// Messages sent to the broker per round trip while pre-filling.
const PREFILL_BATCH: usize = 1000;
/// How far an MQTT publisher runs ahead of the fires.
const MQTT_BACKLOG: u64 = 500;
const BODY: &[u8] = br#"{"kind":"bench","n":1}"#;

/// Measures one `KIND=URL` source with `n` pre-filled messages.
pub(crate) async fn bench_source(engine: &Engine, spec: &str, n: usize) -> anyhow::Result<()> {
    let Some((kind, url)) = spec.split_once('=') else {
        bail!("--source {spec:?}: write KIND=URL, e.g. redis=redis://127.0.0.1:6379");
    };
    let name = format!("taskhook-bench-{}", uuid::Uuid::new_v4().simple());
    let source = match kind {
        "redis" => {
            prefill_redis(url, &name, n).await?;
            format!("{{redis: {{url: \"{url}\", stream: \"{name}\", from: all}}}}")
        }
        "amqp" => {
            prefill_amqp(url, &name, n).await?;
            format!("{{amqp: {{url: \"{url}\", queue: \"{name}\"}}}}")
        }
        "nats" => {
            prefill_nats(url, &name, n).await?;
            format!("{{nats: {{url: \"{url}\", stream: \"{name}\", from: all}}}}")
        }
        "kafka" => {
            prefill_kafka(url, &name, n).await?;
            format!(
                "{{kafka: {{brokers: [\"{url}\"], topic: \"{name}\", group: \"{name}\", from: all}}}}"
            )
        }
        "mqtt" => format!("{{mqtt: {{url: \"{url}\", topic: \"{name}\", client_id: \"{name}\"}}}}"),
        other => bail!("--source {other}=…: the bench measures amqp, kafka, mqtt, nats and redis"),
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
        taskhook_actions::NetworkPolicy::default(),
    ));
    let fired_so_far = || {
        engine
            .source_board()
            .of("bench", &id)
            .first()
            .map_or(0, |s| s.fired)
    };
    let mut publisher = (kind == "mqtt").then(|| {
        let (engine, url, topic, id) = (engine.clone(), url.to_string(), name.clone(), id.clone());
        tokio::spawn(async move { publish_mqtt_paced(&engine, &id, &url, &topic, n).await })
    });
    // When the first fire committed: connecting (and, for Kafka, the consumer group's first
    // join, which brokers delay by seconds on purpose) comes before it.
    let mut first_fire = None;
    let outcome = loop {
        let fired = fired_so_far();
        if fired > 0 && first_fire.is_none() {
            first_fire = Some((start.elapsed(), fired));
        }
        if fired >= n as u64 {
            break Ok(fired);
        }
        if publisher.as_ref().is_some_and(|p| p.is_finished())
            && let Some(p) = publisher.take()
            && let Err(e) = p.await.map_err(anyhow::Error::from).and_then(|r| r)
        {
            break Err(e);
        }
        if start.elapsed() > Duration::from_secs(600) {
            break Err(anyhow::anyhow!(
                "{kind} source: only {fired} of {n} messages fired within 600 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = start.elapsed();
    stop.cancel();
    let _ = supervisor.await;
    if let Some(p) = publisher {
        p.await??;
    }
    let made = match &outcome {
        Ok(_) => created_fires(engine, &id).await,
        Err(_) => Ok(0),
    };
    engine.delete_hook("bench", &id).await?;
    cleanup(kind, url, &name).await;
    let fired = outcome?;
    // Every message must have made its task: a figure of duplicates would measure nothing.
    let made = made?;
    if made != fired {
        bail!("{kind} source: {fired} fires committed but {made} of them created a task");
    }
    println!(
        "{kind} source: {fired} {} messages into committed fires with tasks, acknowledged, in {:.2}s = {:.0}/s",
        if kind == "mqtt" {
            "paced"
        } else {
            "pre-filled"
        },
        elapsed.as_secs_f64(),
        fired as f64 / elapsed.as_secs_f64()
    );
    if let Some((at, before)) = first_fire {
        let rest = elapsed.saturating_sub(at).as_secs_f64();
        println!(
            "  first fire after {:.2}s (connecting, subscribing); from then on {:.0}/s",
            at.as_secs_f64(),
            (fired - before) as f64 / rest.max(1e-3)
        );
    }
    Ok(())
}

/// How many of the bench hook's fires created a task.
async fn created_fires(engine: &Engine, hook: &str) -> anyhow::Result<u64> {
    let (mut made, mut before) = (0, None);
    loop {
        let page = engine
            .store()
            .list_fires("bench", hook, before.clone(), 1000)
            .await?;
        made += page.iter().filter(|f| f.result == "created").count() as u64;
        match page.last() {
            Some(last) if page.len() == 1000 => before = Some(last.id.clone()),
            _ => return Ok(made),
        }
    }
}

/// Removes what the bench made on the broker (best effort: the names are unique).
async fn cleanup(kind: &str, url: &str, name: &str) {
    match kind {
        "redis" => {
            if let Ok(client) = redis::Client::open(url)
                && let Ok(mut con) = client.get_multiplexed_async_connection().await
            {
                let _: Result<(), _> = redis::cmd("DEL").arg(name).query_async(&mut con).await;
            }
        }
        "amqp" => {
            if let Ok(conn) =
                lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await
                && let Ok(ch) = conn.create_channel().await
            {
                let _ = ch
                    .queue_delete(name.into(), lapin::options::QueueDeleteOptions::default())
                    .await;
            }
        }
        "nats" => {
            if let Ok(client) = async_nats::connect(url).await {
                let _ = async_nats::jetstream::new(client).delete_stream(name).await;
            }
        }
        "kafka" => {
            use rdkafka::admin::{AdminClient, AdminOptions};
            if let Ok(admin) = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", url)
                .create::<AdminClient<_>>()
            {
                let _ = admin.delete_topics(&[name], &AdminOptions::new()).await;
            }
        }
        _ => {}
    }
}

async fn prefill_redis(url: &str, stream: &str, n: usize) -> anyhow::Result<()> {
    let client = redis::Client::open(url).with_context(|| format!("redis URL {url:?}"))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    for k in batches(n) {
        let mut pipe = redis::pipe();
        for _ in 0..k {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("payload")
                .arg(BODY)
                .ignore();
        }
        let _: () = pipe.query_async(&mut con).await?;
    }
    Ok(())
}

async fn prefill_amqp(url: &str, queue: &str, n: usize) -> anyhow::Result<()> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await?;
    let mut sent = 0;
    for k in batches(n) {
        let mut confirms = Vec::with_capacity(k);
        for _ in 0..k {
            sent += 1;
            // Each message its own id: identical messages without one are one message to
            // the source (see the amqp source's delivery ids).
            let props = lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(format!("bench-{sent}").into());
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    BODY,
                    props,
                )
                .await?,
            );
        }
        try_join_all(confirms).await?;
    }
    conn.close(200, "prefilled".into()).await?;
    Ok(())
}

async fn prefill_nats(url: &str, stream: &str, n: usize) -> anyhow::Result<()> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.to_string(),
        subjects: vec![format!("{stream}.>")],
        ..Default::default()
    })
    .await?;
    let subject = format!("{stream}.bench");
    for k in batches(n) {
        let mut acks = Vec::with_capacity(k);
        for _ in 0..k {
            acks.push(std::future::IntoFuture::into_future(
                js.publish(subject.clone(), BODY.into()).await?,
            ));
        }
        try_join_all(acks).await?;
    }
    Ok(())
}

async fn prefill_kafka(brokers: &str, topic: &str, n: usize) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let config = {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", brokers);
        c
    };
    let admin: AdminClient<_> = config.create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .with_context(|| format!("creating topic {topic} on {brokers}"))?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    let producer: FutureProducer = config.clone().set("linger.ms", "5").create()?;
    for k in batches(n) {
        let sends = (0..k).map(|_| {
            producer.send(
                FutureRecord::<(), [u8]>::to(topic).payload(BODY),
                Duration::from_secs(30),
            )
        });
        for r in futures_util::future::join_all(sends).await {
            r.map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
        }
    }
    Ok(())
}

/// Publishes `n` messages with QoS 1 once the source's session exists, staying at most
/// [`MQTT_BACKLOG`] messages ahead of the fires.
async fn publish_mqtt_paced(
    engine: &Engine,
    hook: &str,
    url: &str,
    topic: &str,
    n: usize,
) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, Packet, QoS};
    let fired = || {
        engine
            .source_board()
            .of("bench", hook)
            .first()
            .map_or(0, |s| if s.connected { s.fired } else { 0 })
    };
    let connected = || {
        engine
            .source_board()
            .of("bench", hook)
            .first()
            .is_some_and(|s| s.connected)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !connected() {
        if Instant::now() > deadline {
            bail!("the mqtt source did not connect within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut options, _) = taskhook_brokers::mqtt::options(url, format!("{topic}-publisher"))
        .map_err(anyhow::Error::msg)?;
    options.set_inflight(100);
    let (client, mut events) = AsyncClient::new(options, 200);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = acked.clone();
    let poller = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("mqtt publisher: {e}")),
            }
        }
    });
    for sent in 0..n as u64 {
        while sent >= fired() + MQTT_BACKLOG {
            if poller.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        client
            .publish(topic, QoS::AtLeastOnce, false, BODY.to_vec())
            .await?;
    }
    while acked.load(std::sync::atomic::Ordering::Relaxed) < n as u64 {
        if poller.is_finished() {
            return poller.await?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    poller.abort();
    Ok(())
}

/// `n` split into batches of at most [`PREFILL_BATCH`].
fn batches(n: usize) -> impl Iterator<Item = usize> {
    (0..n.div_ceil(PREFILL_BATCH)).map(move |i| (n - i * PREFILL_BATCH).min(PREFILL_BATCH))
}
