//! `chat`: N visitors over graphql-transport-ws, each running a 5-question TEXT flow again
//! and again. Two phases: flat out (the server's ceiling), then paced at `--rate` turns/s in
//! total (the latency a visitor sees at that load).
use std::time::Duration;

use serde_json::json;

use super::{Pace, connect_visitors, question_flow, run_phase};
use crate::{Opts, client::Api, report::Report, server::Server};

/// Questions of the flow: answers per conversation.
const QUESTIONS: usize = 5;

pub const DEFAULT_VISITORS: usize = 1_000;
pub const DEFAULT_RATE: f64 = 3_000.0;

pub async fn run(server: &Server, opts: &Opts) -> anyhow::Result<Report> {
    let visitors_n = opts.size.unwrap_or(DEFAULT_VISITORS).max(1);
    let duration = opts.phase();
    let warmup = opts.warmup();
    let rate = opts.rate.unwrap_or(DEFAULT_RATE).max(1.0);
    let mut report = Report::new(
        "chat",
        opts.db.name(),
        json!({ "visitors": visitors_n, "phase_secs": duration.as_secs(), "warmup_secs": warmup.as_secs_f64(), "paced_rate": rate, "questions": QUESTIONS, "paced_offsets": "spread over a whole conversation" }),
    );
    let api = Api::sign_up(&server.base).await?;
    let bot = api
        .published_bot("chat", question_flow(QUESTIONS, None))
        .await?;
    let visitors = connect_visitors(server.port, visitors_n, 64).await?;
    eprintln!(
        "chat: {visitors_n} visitors connected; flat-out phase for {duration:?} after {warmup:?} of warm-up"
    );

    let flat = run_phase(
        &server.pid(),
        server.port,
        visitors,
        &bot,
        warmup,
        duration,
        Pace::Flat,
    )
    .await;
    report.target(
        "flat out: turns/s",
        flat.turns_per_sec(),
        "turns/s",
        ">=",
        3000.0,
    );
    report.metric(
        "flat out: conversations/s",
        flat.conversations_per_sec(),
        "conv/s",
    );
    report.metric("flat out: turn p50", flat.stats.latency.ms(0.5), "ms");
    report.metric("flat out: turn p99", flat.stats.latency.ms(0.99), "ms");
    report.metric("flat out: server CPU", flat.server_cores(), "cores");
    report.metric("flat out: bench CPU", flat.bench_cores(), "cores");
    report.metric("flat out: machine CPU busy", flat.machine_cores(), "cores");
    report.metric("flat out: errors", flat.stats.errors as f64, "");
    report.detail("flat_out", flat.json());

    let every = Duration::from_secs_f64(flat.visitors.len().max(1) as f64 / rate);
    eprintln!(
        "chat: paced phase, {rate} turns/s in total (one answer every {every:?} per visitor) for {duration:?} after {warmup:?} of warm-up"
    );
    let paced = run_phase(
        &server.pid(),
        server.port,
        flat.visitors,
        &bot,
        warmup,
        duration,
        Pace::Every {
            every,
            answers: QUESTIONS as u32,
        },
    )
    .await;
    let lat = &paced.stats.latency;
    report.target(
        format!("paced at {rate}/s: turns/s achieved"),
        paced.turns_per_sec(),
        "turns/s",
        ">=",
        rate * 0.95,
    );
    report.metric("paced: turn p50", lat.ms(0.5), "ms");
    report.metric("paced: turn p90", lat.ms(0.9), "ms");
    report.target("paced: turn p99", lat.ms(0.99), "ms", "<=", 10.0);
    report.metric("paced: turn max", lat.max_ms(), "ms");
    report.metric("paced: server CPU", paced.server_cores(), "cores");
    report.metric("paced: bench CPU", paced.bench_cores(), "cores");
    report.metric("paced: machine CPU busy", paced.machine_cores(), "cores");
    report.metric("paced: errors", paced.stats.errors as f64, "");
    report.metric(
        "server RSS after",
        crate::server::mb(paced.server_after.rss_kb),
        "MB",
    );
    report.metric(
        "server RSS peak",
        crate::server::mb(paced.server_after.hwm_kb),
        "MB",
    );
    report.detail("paced", paced.json());
    if let Some(e) = flat
        .stats
        .first_error
        .as_ref()
        .or(paced.stats.first_error.as_ref())
    {
        report.note(format!("first error: {e}"));
    }
    report.note(
        "a turn is sendAnswer sent -> next QUESTION/ENDED event received on the subscription; \
         in the flat-out phase visitors answer at once, so latency there is queueing (Little's law: visitors / rate)",
    );
    Ok(report)
}
