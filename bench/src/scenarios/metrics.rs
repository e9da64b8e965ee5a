//! `metrics`: `GET /metrics` of a server whose database holds N conversations and N
//! deliveries. The stored-state gauges (conversations and deliveries by status, the outbox)
//! are counted at every scrape, and every conversation and delivery ever made stays in its
//! table, so a scrape's cost grows with them: this times scrapes one after the other and
//! checks every stored gauge against what was seeded.
//!
//! The rows are written straight into the server's database, as `export` does: the
//! conversations are `export`'s (7/10 completed, 2/10 abandoned, 1/10 active); the deliveries
//! carry a real-sized payload, one in fifty failed, one in a thousand pending but due only
//! tomorrow (so that the outbox leaves them be), the others succeeded.
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use entity::{
    conversation::ConversationStatus,
    delivery::{self, DeliveryMode, DeliveryStatus},
};
use sea_orm::ActiveValue::Set;
use serde_json::json;
use uuid::Uuid;

use super::{
    Latency,
    export::{Plan, published_plan, seed},
};
use crate::{
    Opts,
    client::Api,
    direct::insert_rows,
    report::Report,
    server::{DbKind, METRICS_TOKEN, Server, round3},
};

/// Conversations, and deliveries, seeded by default.
pub const DEFAULT_ROWS: usize = 1_000_000;
/// Scrapes timed by default (`--sample`).
const DEFAULT_SCRAPES: usize = 10;
/// Longest a scrape may take before the scenario gives up on it.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(120);

/// Delivery `i`'s status: one in fifty failed, one in a thousand pending, the rest succeeded.
fn delivery_status(i: usize) -> DeliveryStatus {
    if i.is_multiple_of(50) {
        DeliveryStatus::Failed
    } else if i % 1000 == 1 {
        DeliveryStatus::Pending
    } else {
        DeliveryStatus::Succeeded
    }
}

pub async fn run(server: &Server, opts: &Opts) -> anyhow::Result<Report> {
    let n = opts.size.unwrap_or(DEFAULT_ROWS).max(1);
    let scrapes = opts.sample.unwrap_or(DEFAULT_SCRAPES).max(1);
    let mut report = Report::new(
        "metrics",
        opts.db.name(),
        json!({ "conversations": n, "deliveries": n, "scrapes": scrapes }),
    );
    let api = Api::sign_up(&server.base).await?;
    let (_bot, plan) = published_plan(&api, "metrics", n).await?;
    // Nothing listens there: the seeded pending deliveries are not due before tomorrow.
    let webhook = api.webhook("http://127.0.0.1:9/hook").await?;
    let webhook = Uuid::parse_str(&webhook).context("the webhook id is not a UUID")?;

    eprintln!("metrics: seeding {n} conversations and {n} deliveries into the database");
    let seeding = seed(server, opts.db, &plan).await?;
    let account = Uuid::parse_str(&api.account_id).context("the account id is not a UUID")?;
    let seeding = seeding + seed_deliveries(server, opts.db, account, webhook, n).await?;
    report.metric("seeding: time", seeding.as_secs_f64(), "s");

    let client = reqwest::Client::builder().timeout(SCRAPE_TIMEOUT).build()?;
    let url = format!("{}/metrics", server.base);
    let mut latency = Latency::new();
    let before = server.sample();
    let mut last = String::new();
    eprintln!("metrics: {scrapes} scrapes, one after the other");
    for _ in 0..scrapes {
        let started = Instant::now();
        let resp = client
            .get(&url)
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .context("the scrape failed")?;
        let status = resp.status();
        let text = resp.text().await.context("the scrape's body")?;
        latency.record(started.elapsed());
        ensure!(status.is_success(), "the scrape answered {status}: {text}");
        last = text;
    }
    let after = server.sample();
    check_gauges(&last, &plan, n)?;

    let cpu_ms = (after.cpu_secs - before.cpu_secs) * 1000.0 / scrapes as f64;
    report.metric("scrape p50", latency.ms(0.5), "ms");
    report.metric("scrape max", latency.max_ms(), "ms");
    report.metric("server CPU per scrape", cpu_ms, "ms");
    report.detail(
        "scrapes",
        json!({ "count": scrapes, "latency": latency.summary(),
                "server_cpu_ms_per_scrape": round3(cpu_ms) }),
    );
    if opts.db == DbKind::Postgres {
        // Its counts run in parallel workers that end with each query: their time leaves
        // `/proc` before the next sample, and a sum over the processes there would miss it.
        report.note("PostgreSQL's CPU per scrape is not reported: see the source");
    }
    report.note(
        "a scrape = GET /metrics with the metrics token, sent after the previous one answered; \
         every stored gauge of the last one is checked against the seeded rows",
    );
    report.note(format!(
        "rows written into the database with multi-row INSERTs, then {}",
        match opts.db {
            DbKind::Sqlite => "the WAL checkpointed",
            DbKind::Postgres => "both tables VACUUMed and ANALYZEd (as autovacuum leaves them)",
        }
    ));
    Ok(report)
}

/// Inserts `n` finished and pending deliveries of `webhook` (of `account`); how long it took.
async fn seed_deliveries(
    server: &Server,
    kind: DbKind,
    account: Uuid,
    webhook: Uuid,
    n: usize,
) -> anyhow::Result<Duration> {
    let db = crate::direct::connect(server, kind).await?;
    let started = Instant::now();
    let now = chrono::Utc::now();
    let tomorrow = now + chrono::Duration::days(1);
    insert_rows(&db, n, "deliveries", |i| {
        let status = delivery_status(i);
        let pending = status == DeliveryStatus::Pending;
        delivery::ActiveModel {
            id: Set(Uuid::now_v7()),
            account_id: Set(account),
            webhook_id: Set(webhook),
            conversation_id: Set(None),
            block_id: Set(Some("hook".to_owned())),
            mode: Set(DeliveryMode::Async),
            status: Set(status),
            payload: Set(payload(i)),
            attempt_count: Set(if pending { 0 } else { 1 }),
            next_attempt_at: Set(pending.then_some(tomorrow)),
            claimed_until: Set(None),
            claimed_by: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
    })
    .await?;
    let took = started.elapsed();
    crate::direct::settle_vacuumed(&db, kind, "conversations").await?;
    crate::direct::settle_vacuumed(&db, kind, "deliveries").await?;
    let _ = db.close().await;
    Ok(took)
}

/// A delivery's body the size of a real one of a 5-question conversation.
fn payload(i: usize) -> serde_json::Value {
    let answers: serde_json::Map<String, serde_json::Value> = (1..=5)
        .map(|q| (format!("a{q}"), json!(format!("reply {i}.{q}"))))
        .collect();
    let transcript: Vec<serde_json::Value> = (1..=5)
        .flat_map(|q| {
            [
                json!({ "from": "bot", "text": format!("Question {q}: tell us a little more, please.") }),
                json!({ "from": "visitor", "text": format!("reply {i}.{q}") }),
            ]
        })
        .collect();
    json!({ "event": "webhook", "conversation": { "id": format!("seeded-{i}") },
            "answers": answers, "transcript": transcript })
}

/// Every stored gauge of `text` against what was seeded.
fn check_gauges(text: &str, plan: &Plan, n: usize) -> anyhow::Result<()> {
    let count = |f: &dyn Fn(usize) -> bool| (0..n).filter(|&i| f(i)).count() as f64;
    let expected = [
        (
            "parley_conversations{status=\"ACTIVE\"}",
            count(&|i| plan.status(i) == ConversationStatus::Active),
        ),
        (
            "parley_conversations{status=\"COMPLETED\"}",
            count(&|i| plan.status(i) == ConversationStatus::Completed),
        ),
        (
            "parley_conversations{status=\"ABANDONED\"}",
            count(&|i| plan.status(i) == ConversationStatus::Abandoned),
        ),
        (
            "parley_deliveries{status=\"PENDING\"}",
            count(&|i| delivery_status(i) == DeliveryStatus::Pending),
        ),
        (
            "parley_deliveries{status=\"SUCCEEDED\"}",
            count(&|i| delivery_status(i) == DeliveryStatus::Succeeded),
        ),
        (
            "parley_deliveries{status=\"FAILED\"}",
            count(&|i| delivery_status(i) == DeliveryStatus::Failed),
        ),
        // Pending, but not due.
        ("parley_outbox_due", 0.0),
    ];
    for (name, want) in expected {
        let got = sample(text, name).with_context(|| format!("the scrape has no {name}"))?;
        ensure!(got == want, "{name} is {got}, not the {want} seeded");
    }
    Ok(())
}

/// The value of the sample `name` (with its labels, exactly as printed), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
