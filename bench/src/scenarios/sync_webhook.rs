//! `sync-webhook`: the server's overhead per sync webhook call, from paired, interleaved
//! runs. Two bots with the same 5 TEXT questions, one with a sync WEBHOOK after every
//! question (the endpoint answers `{}` at once), one without. Each visitor runs one
//! conversation on each bot, alternating which goes first (ABBA), again and again, so that
//! the drift of a shared machine falls on both kinds alike. Turn `j` of a hooked
//! conversation is paired with turn `j` of the plain conversation next to it.
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Visitor, connect_visitors, one_conversation, question_flow, reconnect};
use crate::{
    Opts,
    client::Api,
    receiver::start_receiver,
    report::{Latency, Report},
    server::{Server, proc_delta, proc_sample, round3},
};

pub const DEFAULT_VISITORS: usize = 1;

/// What the visitors measured after the warm-up.
#[derive(Default)]
struct Paired {
    /// Turns of the plain flow, of the hooked flow.
    plain: Latency,
    hooked: Latency,
    /// The plain turns of even and of odd pairs: two halves of one distribution, whose
    /// difference is what the method reads when there is nothing to read (A/A).
    plain_even: Latency,
    plain_odd: Latency,
    /// hooked turn − plain turn, per pair of turns, in µs.
    diffs_us: Vec<i64>,
    pairs: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Paired {
    fn error(&mut self, e: anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }

    fn merge(&mut self, other: Paired) {
        self.plain.merge(&other.plain);
        self.hooked.merge(&other.hooked);
        self.plain_even.merge(&other.plain_even);
        self.plain_odd.merge(&other.plain_odd);
        self.diffs_us.extend(other.diffs_us);
        self.pairs += other.pairs;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// The `q` quantile (nearest rank) of sorted µs values, in ms.
fn quantile_ms(sorted_us: &[i64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    round3(sorted_us[rank - 1] as f64 / 1000.0)
}

/// One visitor: pairs of conversations (plain and hooked, the first of each pair
/// alternating, `hooked_first` for the first pair) until `deadline`; pairs started before
/// `measure_from` are the warm-up.
async fn paired_loop(
    mut v: Visitor,
    port: u16,
    plain: String,
    hooked: String,
    hooked_first: bool,
    measure_from: Instant,
    deadline: Instant,
) -> (Option<Visitor>, Paired) {
    let mut p = Paired::default();
    let mut n = 0u64;
    let mut k = 0u64;
    while Instant::now() < deadline {
        let counted = Instant::now() >= measure_from;
        let hooked_now = hooked_first ^ (k % 2 == 1);
        k += 1;
        let pair = async {
            if hooked_now {
                let h = one_conversation(&mut v, &hooked, &mut n).await?;
                let a = one_conversation(&mut v, &plain, &mut n).await?;
                Ok::<_, anyhow::Error>((a, h))
            } else {
                let a = one_conversation(&mut v, &plain, &mut n).await?;
                let h = one_conversation(&mut v, &hooked, &mut n).await?;
                Ok((a, h))
            }
        }
        .await;
        let (a, h) = match pair {
            Ok(pair) => pair,
            Err(e) => {
                p.error(e);
                match reconnect(port, deadline).await {
                    Some(fresh) => {
                        v = fresh;
                        continue;
                    }
                    None => return (None, p),
                }
            }
        };
        if !counted {
            continue;
        }
        if a.len() != h.len() {
            p.error(anyhow::anyhow!(
                "a plain conversation took {} turns and a hooked one {}",
                a.len(),
                h.len()
            ));
            continue;
        }
        p.pairs += 1;
        let half = if p.pairs % 2 == 0 {
            &mut p.plain_even
        } else {
            &mut p.plain_odd
        };
        for (ta, th) in a.iter().zip(&h) {
            p.plain.record(*ta);
            half.record(*ta);
            p.hooked.record(*th);
            let us = |d: &Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
            p.diffs_us.push(us(th) - us(ta));
        }
    }
    (Some(v), p)
}

pub async fn run(server: &Server, opts: &Opts) -> anyhow::Result<Report> {
    let visitors_n = opts.concurrency.unwrap_or(DEFAULT_VISITORS).max(1);
    let duration = opts.phase();
    let warmup = opts.warmup();
    let mut report = Report::new(
        "sync-webhook",
        opts.db.name(),
        json!({ "visitors": visitors_n, "phase_secs": duration.as_secs(),
                "warmup_secs": warmup.as_secs_f64(), "questions": 5,
                "method": "paired, interleaved: plain and hooked conversations alternate (ABBA) on each visitor" }),
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
        eprintln!(
            "sync-webhook: {visitors_n} visitors alternating plain and hooked conversations, \
             {duration:?} after {warmup:?} of warm-up"
        );
        let pid = server.pid();
        let measure_from = Instant::now() + warmup;
        let deadline = measure_from + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, v) in visitors.into_iter().enumerate() {
            tasks.spawn(paired_loop(
                v,
                server.port,
                plain.clone(),
                hooked.clone(),
                i % 2 == 1,
                measure_from,
                deadline,
            ));
        }
        tokio::time::sleep_until(measure_from.into()).await;
        let server_before = proc_sample(&pid);
        let bench_before = proc_sample("self");
        let started = Instant::now();
        let mut p = Paired::default();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, one)) => p.merge(one),
                Err(e) => p.error(anyhow::anyhow!("a visitor task failed: {e}")),
            }
        }
        let elapsed = started.elapsed();
        let (server_after, bench_after) = (proc_sample(&pid), proc_sample("self"));
        p.diffs_us.sort_unstable();
        let d = &p.diffs_us;
        let (a, b) = (&p.hooked, &p.plain);
        let turns = a.count() + b.count();

        report.metric("without webhook: turn p50", b.ms(0.5), "ms");
        report.metric("without webhook: turn p90", b.ms(0.9), "ms");
        report.metric("without webhook: turn p99", b.ms(0.99), "ms");
        report.metric("with sync webhook: turn p50", a.ms(0.5), "ms");
        report.metric("with sync webhook: turn p90", a.ms(0.9), "ms");
        report.metric("with sync webhook: turn p99", a.ms(0.99), "ms");
        // The figures of the goal: difference of the quantiles of the two interleaved
        // distributions (see BENCHMARKS.md, Method).
        report.metric("overhead per sync call p50", a.ms(0.5) - b.ms(0.5), "ms");
        report.metric("overhead per sync call p90", a.ms(0.9) - b.ms(0.9), "ms");
        report.target(
            "overhead per sync call p99",
            a.ms(0.99) - b.ms(0.99),
            "ms",
            "<=",
            2.0,
        );
        // The quantiles of the paired differences themselves.
        report.metric("paired difference p50", quantile_ms(d, 0.5), "ms");
        report.metric("paired difference p90", quantile_ms(d, 0.9), "ms");
        report.metric("paired difference p99", quantile_ms(d, 0.99), "ms");
        report.metric(
            "A/A: plain p99, even pairs - odd pairs",
            p.plain_even.ms(0.99) - p.plain_odd.ms(0.99),
            "ms",
        );
        report.metric("pairs of turns", d.len() as f64, "");
        report.metric(
            "turns/s, both kinds",
            turns as f64 / elapsed.as_secs_f64().max(1e-9),
            "turns/s",
        );
        report.metric(
            "server CPU",
            super::cores(&server_before, &server_after),
            "cores",
        );
        report.metric(
            "machine CPU busy",
            super::machine_cores(&server_before, &server_after),
            "cores",
        );
        report.metric("errors", p.errors as f64, "");
        let diff_summary = |d: &[i64]| -> Value {
            json!({
                "count": d.len(),
                "p01_ms": quantile_ms(d, 0.01),
                "p50_ms": quantile_ms(d, 0.5),
                "p90_ms": quantile_ms(d, 0.9),
                "p99_ms": quantile_ms(d, 0.99),
                "mean_ms": if d.is_empty() { 0.0 } else {
                    round3(d.iter().sum::<i64>() as f64 / d.len() as f64 / 1000.0) },
            })
        };
        report.detail(
            "without_webhook",
            json!({ "turns": b.count(), "turn_latency": b.summary() }),
        );
        report.detail(
            "with_webhook",
            json!({ "turns": a.count(), "turn_latency": a.summary() }),
        );
        report.detail("paired_difference", diff_summary(d));
        report.detail(
            "aa_plain_halves",
            json!({ "even_pairs": p.plain_even.summary(), "odd_pairs": p.plain_odd.summary() }),
        );
        report.detail(
            "phase",
            json!({ "pairs_of_conversations": p.pairs, "errors": p.errors,
                    "first_error": p.first_error, "elapsed_secs": elapsed.as_secs_f64(),
                    "warmup_secs": warmup.as_secs_f64(),
                    "server": proc_delta(&server_before, &server_after),
                    "bench_process": proc_delta(&bench_before, &bench_after) }),
        );
        if let Some(e) = &p.first_error {
            report.note(format!("first error: {e}"));
        }
        if a.ms(0.99) >= 40.0 || b.ms(0.99) >= 40.0 {
            report.note(
                "a p99 sits on the ~40 ms plateau of Nagle + delayed ACK (the server does not set \
                 TCP_NODELAY): the p99 difference is not a measure of the sync call",
            );
        }
        report.note(
            "each of the 5 turns of the hooked flow makes one sync call; plain and hooked \
             conversations alternate on each visitor (ABBA). `overhead per sync call` is the \
             difference of the two interleaved distributions' quantiles (the target); \
             `paired difference` the quantiles of hooked − plain per pair of turns; `A/A` the \
             same p99 difference between two halves of the plain turns (the method's noise)",
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    receiver.stop().await;
    result?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::quantile_ms;

    #[test]
    fn quantiles_are_nearest_rank_and_signed() {
        let us: Vec<i64> = (1..=100).map(|i| i * 1000 - 50_000).collect();
        assert_eq!(quantile_ms(&us, 0.5), 0.0);
        assert_eq!(quantile_ms(&us, 0.99), 49.0);
        assert_eq!(quantile_ms(&us, 0.01), -49.0);
        assert_eq!(quantile_ms(&us, 1.0), 50.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
        assert_eq!(quantile_ms(&[-1500], 0.99), -1.5);
    }
}
