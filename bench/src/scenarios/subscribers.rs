//! `subscribers`: M idle `conversationEvents` subscriptions, one WebSocket each; the server's
//! RSS per subscription, and the fan-out latency of an event to its subscriber while they
//! are all open.
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use serde_json::json;
use tokio::sync::mpsc;

use crate::{
    Opts,
    client::{Api, RawHttp, Session, Ws, send_answer, start_conversation_retrying},
    report::{Latency, Report},
    server::{Server, mb, proc_delta, proc_sample},
};

pub const DEFAULT_SUBSCRIPTIONS: usize = 10_000;
pub const DEFAULT_SAMPLE: usize = 1_000;
const SAMPLE_PARALLEL: usize = 8;

/// Sockets opened from one loopback source address before the next: well inside the
/// ephemeral port range (28,231 ports by default) that one address has towards one port.
const SOCKETS_PER_SOURCE: usize = 20_000;

/// The source address of the `i`th subscription: 127.0.0.1 for the first 20,000, then
/// 127.0.0.2, and so on.
fn source_address(i: usize) -> std::net::Ipv4Addr {
    let n = u8::try_from(1 + i / SOCKETS_PER_SOURCE).unwrap_or(u8::MAX);
    std::net::Ipv4Addr::new(127, 0, 0, n)
}

/// An event seen by one of the idle subscribers.
struct Seen {
    index: usize,
    kind: String,
    at: String,
    instant: Instant,
    wall: SystemTime,
}

/// Starts `n` conversations on `bot` over `parallel` keep-alive connections.
pub async fn start_many(
    port: u16,
    bot: &str,
    n: usize,
    parallel: usize,
    failures: Arc<AtomicU64>,
) -> anyhow::Result<Vec<Session>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel.clamp(1, n.max(1)) {
        let (next, bot, failures) = (next.clone(), bot.to_owned(), failures.clone());
        tasks.spawn(async move {
            let mut http = RawHttp::connect(port).await?;
            let mut got = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(got);
                }
                got.push((
                    i,
                    start_conversation_retrying(&mut http, &bot, &failures).await?,
                ));
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, s)| s).collect())
}

pub async fn run(server: &Server, opts: &Opts) -> anyhow::Result<Report> {
    let m = opts.size.unwrap_or(DEFAULT_SUBSCRIPTIONS).max(1);
    let parallel = opts.concurrency.unwrap_or(64).max(1);
    let sample = opts.sample.unwrap_or(DEFAULT_SAMPLE).clamp(1, m);
    let mut report = Report::new(
        "subscribers",
        opts.db.name(),
        json!({ "subscriptions": m, "open_parallel": parallel, "sample": sample, "sample_parallel": SAMPLE_PARALLEL }),
    );
    let api = Api::sign_up(&server.base).await?;
    let flow = json!({ "startBlockId": "q", "blocks": [
        { "id": "q", "kind": "QUESTION", "questionType": "TEXT", "text": "Anything else?", "saveAnswerTo": "said", "next": "q" } ] });
    let bot = api.published_bot("idle", flow).await?;

    let t = Instant::now();
    let start_failures = Arc::new(AtomicU64::new(0));
    let sessions = start_many(server.port, &bot, m, parallel, start_failures.clone()).await?;
    let start_rate = m as f64 / t.elapsed().as_secs_f64();
    eprintln!(
        "subscribers: {m} conversations started ({start_rate:.0}/s); opening {m} subscriptions"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.sample();
    let bench_before = proc_sample("self");

    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let t = Instant::now();
    let opened: Vec<anyhow::Result<(usize, Ws)>> =
        futures_util::stream::iter(sessions.iter().cloned().enumerate())
            .map(|(i, s)| async move {
                let mut ws = Ws::connect_from(source_address(i), server.port).await?;
                ws.subscribe(&s).await?;
                let first = ws.event().await?;
                anyhow::ensure!(
                    first.kind == "QUESTION",
                    "expected the replayed QUESTION, got {first:?}"
                );
                Ok((i, ws))
            })
            .buffer_unordered(parallel)
            .collect()
            .await;
    let open_secs = t.elapsed().as_secs_f64();
    let mut readers = tokio::task::JoinSet::new();
    let mut open_errors = 0usize;
    let mut first_error = None;
    for r in opened {
        match r {
            Ok((index, mut ws)) => {
                let tx = tx.clone();
                readers.spawn(async move {
                    while let Ok(e) = ws.next_event().await {
                        let seen = Seen {
                            index,
                            kind: e.kind,
                            at: e.at,
                            instant: Instant::now(),
                            wall: SystemTime::now(),
                        };
                        if tx.send(seen).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => {
                open_errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let open = m - open_errors;
    eprintln!("subscribers: {open} subscriptions open in {open_secs:.1}s; letting them idle");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_start = server.sample();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server.sample();
    let bench_after = proc_sample("self");
    let per_sub_kb = (after.rss_kb as f64 - before.rss_kb as f64) / open.max(1) as f64;

    // Fan-out: answer a sample spread over all conversations, a few at a time.
    let stride = (m / sample).max(1);
    let picked: Vec<usize> = (0..sample).map(|k| (k * stride).min(m - 1)).collect();
    let chunks: Vec<Vec<usize>> = picked
        .chunks(picked.len().div_ceil(SAMPLE_PARALLEL).max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let answered: Vec<anyhow::Result<Vec<(usize, Instant)>>> =
        futures_util::future::join_all(chunks.into_iter().map(|chunk| {
            let sessions = &sessions;
            async move {
                let mut http = RawHttp::connect(server.port).await?;
                let mut out = Vec::new();
                for i in chunk {
                    let at = Instant::now();
                    send_answer(&mut http, &sessions[i], "hello").await?;
                    out.push((i, at));
                }
                Ok(out)
            }
        }))
        .await;
    let mut sent: HashMap<usize, Instant> = HashMap::new();
    for r in answered {
        sent.extend(r.context("answering the sample failed")?);
    }
    let mut e2e = Latency::new();
    let mut from_at = Latency::new();
    let mut got = 0usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < sent.len() {
        let Ok(Some(seen)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else {
            break;
        };
        if seen.kind != "VISITOR_MESSAGE" {
            continue;
        }
        let Some(t0) = sent.get(&seen.index) else {
            continue;
        };
        got += 1;
        e2e.record(seen.instant.saturating_duration_since(*t0));
        if let Ok(at) = chrono::DateTime::parse_from_rfc3339(&seen.at) {
            let at: SystemTime = at.with_timezone(&chrono::Utc).into();
            from_at.record(seen.wall.duration_since(at).unwrap_or_default());
        }
    }
    drop(readers);

    report.metric("subscriptions open", open as f64, "");
    report.metric(
        "subscriptions opened/s",
        open as f64 / open_secs.max(1e-9),
        "subs/s",
    );
    report.metric("server RSS before", mb(before.rss_kb), "MB");
    if open >= DEFAULT_SUBSCRIPTIONS {
        report.target(
            "server RSS with all open",
            mb(after.rss_kb),
            "MB",
            "<=",
            300.0,
        );
    } else {
        report.metric("server RSS with all open", mb(after.rss_kb), "MB");
    }
    report.metric("server RSS per subscription", per_sub_kb, "KB");
    report.metric(
        "server CPU while idle",
        super::cores(&idle_start, &after),
        "cores",
    );
    report.metric("fan-out sampled", got as f64, "events");
    report.metric("fan-out p50 (answer sent -> event)", e2e.ms(0.5), "ms");
    report.metric("fan-out p99 (answer sent -> event)", e2e.ms(0.99), "ms");
    report.metric("fan-out p50 (event `at` -> event)", from_at.ms(0.5), "ms");
    report.metric("fan-out p99 (event `at` -> event)", from_at.ms(0.99), "ms");
    report.metric("open errors", open_errors as f64, "");
    report.metric(
        "startConversation errors (set-up, retried)",
        start_failures.load(Ordering::Relaxed) as f64,
        "",
    );
    report.metric("conversations started/s (set-up)", start_rate, "conv/s");
    report.detail("server_open_and_idle", proc_delta(&before, &after));
    report.detail(
        "bench_open_and_idle",
        proc_delta(&bench_before, &bench_after),
    );
    report.detail("fanout_answer_to_event", e2e.summary());
    report.detail("fanout_at_to_event", from_at.summary());
    if let Some(e) = first_error {
        report.note(format!("first error: {e}"));
    }
    if got < sent.len() {
        report.note(format!(
            "only {got} of {} sampled events arrived within 30 s",
            sent.len()
        ));
    }
    report.note("the RSS target (<= 300 MB) applies from 10,000 subscriptions on");
    Ok(report)
}
