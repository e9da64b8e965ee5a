//! `sync-webhook`: turn latency through a sync webhook (QUESTION -> sync WEBHOOK -> QUESTION
//! ...) whose endpoint answers `{}` at once, minus the same flow without it: the server's
//! overhead per sync call.
use serde_json::json;

use super::{Pace, connect_visitors, question_flow, run_phase};
use crate::{Opts, client::Api, receiver::start_receiver, report::Report, server::Server};

pub const DEFAULT_VISITORS: usize = 1;

pub async fn run(server: &Server, opts: &Opts) -> anyhow::Result<Report> {
    let visitors_n = opts.concurrency.unwrap_or(DEFAULT_VISITORS).max(1);
    let duration = opts.phase();
    let warmup = opts.warmup();
    let mut report = Report::new(
        "sync-webhook",
        opts.db.name(),
        json!({ "visitors": visitors_n, "phase_secs": duration.as_secs(), "questions": 5 }),
    );
    let (receiver, _state, arrivals) = start_receiver()?;
    // The /sync route does not report arrivals.
    drop(arrivals);
    let result = async {
        let api = Api::sign_up(&server.base).await?;
        let webhook = api
            .webhook(&format!("http://127.0.0.1:{}/sync", receiver.port))
            .await?;
        let plain = api.published_bot("plain", question_flow(5, None)).await?;
        let hooked = api
            .published_bot("hooked", question_flow(5, Some(&webhook)))
            .await?;
        let visitors = connect_visitors(server.port, visitors_n, 64).await?;
        eprintln!("sync-webhook: {visitors_n} visitors, {duration:?} without the webhook");
        let mut without = run_phase(
            &server.pid(),
            server.port,
            visitors,
            &plain,
            warmup,
            duration,
            Pace::Flat,
        )
        .await;
        eprintln!("sync-webhook: {duration:?} through the sync webhook");
        let with = run_phase(
            &server.pid(),
            server.port,
            std::mem::take(&mut without.visitors),
            &hooked,
            warmup,
            duration,
            Pace::Flat,
        )
        .await;
        let (a, b) = (&with.stats.latency, &without.stats.latency);
        report.metric("without webhook: turn p50", b.ms(0.5), "ms");
        report.metric("without webhook: turn p99", b.ms(0.99), "ms");
        report.metric(
            "without webhook: turns/s",
            without.turns_per_sec(),
            "turns/s",
        );
        report.metric("with sync webhook: turn p50", a.ms(0.5), "ms");
        report.metric("with sync webhook: turn p99", a.ms(0.99), "ms");
        report.metric(
            "with sync webhook: turns/s",
            with.turns_per_sec(),
            "turns/s",
        );
        report.metric("without webhook: turn p90", b.ms(0.9), "ms");
        report.metric("with sync webhook: turn p90", a.ms(0.9), "ms");
        report.metric("overhead per sync call p50", a.ms(0.5) - b.ms(0.5), "ms");
        report.metric("overhead per sync call p90", a.ms(0.9) - b.ms(0.9), "ms");
        report.target(
            "overhead per sync call p99",
            a.ms(0.99) - b.ms(0.99),
            "ms",
            "<=",
            2.0,
        );
        report.metric("server CPU with webhook", with.server_cores(), "cores");
        report.metric(
            "machine CPU busy with webhook",
            with.machine_cores(),
            "cores",
        );
        report.metric(
            "errors",
            (with.stats.errors + without.stats.errors) as f64,
            "",
        );
        report.detail("without_webhook", without.json());
        report.detail("with_webhook", with.json());
        if let Some(e) = with
            .stats
            .first_error
            .as_ref()
            .or(without.stats.first_error.as_ref())
        {
            report.note(format!("first error: {e}"));
        }
        if a.ms(0.99) >= 40.0 || b.ms(0.99) >= 40.0 {
            report.note(
                "a p99 sits on the ~40 ms plateau of Nagle + delayed ACK (the server does not set \
                 TCP_NODELAY): the p99 difference is not a measure of the sync call",
            );
        }
        report.note(
            "each of the 5 turns of the hooked flow makes one sync call; the overhead is the \
             difference of the two flows' turn-latency percentiles",
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    receiver.stop().await;
    result?;
    Ok(report)
}
