//! `graphql`: requests/s and p99 of `{ me { id } }` and of `{ __typename }`, with C keep-alive
//! clients for D seconds each after a warm-up; then the same load against a bare actix-web
//! handler in the bench process returning the same bytes; then `me` on both in turn, in
//! interleaved slices, so that a change in the machine's speed between phases falls on both. For
//! `me`, every client is its own user with its own login token, so the server's per-token and
//! per-session caches hold C entries, as with C users, instead of one that every request hits.
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    Opts,
    client::{Api, RawHttp},
    receiver::start_bare,
    report::{Latency, Report},
    server::{ProcSample, Server, proc_delta, proc_sample},
};

pub const DEFAULT_CLIENTS: usize = 64;

/// The `me` ratio to bare actix that issue #12 asks for.
const ME_RATIO_GOAL: f64 = 0.6;
/// Slices of the interleaved `me` comparison, half on parley and half on the bare handler.
const INTERLEAVED_SLICES: usize = 6;

/// What one load run measured after its warm-up.
pub struct Load {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub warmup: Duration,
    pub latency: Latency,
    pub first_error: Option<String>,
    /// The server's samples (or the bench's own when the server is in the bench process)
    /// when the warm-up ended and when the run did.
    pub server: (ProcSample, ProcSample),
    pub bench: (ProcSample, ProcSample),
}

impl Load {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn json(&self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "first_error": self.first_error,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "warmup_secs": self.warmup.as_secs_f64(),
            "requests_per_sec": self.rate(),
            "latency": self.latency.summary(),
        })
    }
}

/// What one client counted.
#[derive(Default)]
struct Counts {
    requests: u64,
    errors: u64,
    latency: Latency,
    first_error: Option<String>,
}

/// One keep-alive connection per `(request, expect)` pair, each sending its request back to
/// back for `warmup` and then for `duration`; a response counts when it is a 200 whose body
/// is `expect` and its request was sent after the warm-up (errors count at any time).
/// `server_pid` is the process whose CPU is sampled when the warm-up ends and at the end.
pub async fn load(
    port: u16,
    clients: &[(Vec<u8>, Vec<u8>)],
    warmup: Duration,
    duration: Duration,
    server_pid: &str,
) -> anyhow::Result<Load> {
    let mut conns = Vec::with_capacity(clients.len());
    for _ in clients {
        conns.push(RawHttp::connect(port).await?);
    }
    let measure_from = Instant::now() + warmup;
    let deadline = measure_from + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (mut conn, (request, expect)) in conns.into_iter().zip(clients.iter().cloned()) {
        tasks.spawn(async move {
            let mut c = Counts::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let counted = t >= measure_from;
                match conn.send(&request).await {
                    Ok(r) if r.status == 200 && r.body == expect => {
                        if counted {
                            c.requests += 1;
                            c.latency.record(t.elapsed());
                        }
                    }
                    Ok(r) => {
                        c.errors += 1;
                        c.first_error
                            .get_or_insert_with(|| format!("{}: {}", r.status, r.text()));
                    }
                    Err(e) => {
                        c.errors += 1;
                        c.first_error.get_or_insert_with(|| format!("{e:#}"));
                        match RawHttp::connect(port).await {
                            Ok(fresh) => conn = fresh,
                            Err(_) => break,
                        }
                    }
                }
            }
            c
        });
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let server_before = proc_sample(server_pid);
    let bench_before = proc_sample("self");
    let started = Instant::now();
    let mut total = Counts::default();
    while let Some(r) = tasks.join_next().await {
        let c = r?;
        total.requests += c.requests;
        total.errors += c.errors;
        total.latency.merge(&c.latency);
        if total.first_error.is_none() {
            total.first_error = c.first_error;
        }
    }
    let elapsed = started.elapsed();
    Ok(Load {
        requests: total.requests,
        errors: total.errors,
        elapsed,
        warmup,
        latency: total.latency,
        first_error: total.first_error,
        server: (server_before, proc_sample(server_pid)),
        bench: (bench_before, proc_sample("self")),
    })
}

/// Signs up `n` users, one after the other (the server checks only a few passwords at a
/// time, `PARLEY_PASSWORD_QUEUE`, and refuses more); their login tokens.
async fn sign_up_users(base: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::with_capacity(n);
    for _ in 0..n {
        tokens.push(Api::sign_up(base).await?.token);
    }
    Ok(tokens)
}

pub async fn run(server: &Server, opts: &Opts) -> anyhow::Result<Report> {
    let clients = opts.concurrency.unwrap_or(DEFAULT_CLIENTS).max(1);
    let duration = opts.phase();
    let warmup = opts.warmup();
    let mut report = Report::new(
        "graphql",
        opts.db.name(),
        json!({ "clients": clients, "secs_per_run": duration.as_secs(),
                "warmup_secs": warmup.as_secs_f64(), "me_tokens": "one user and token per client" }),
    );
    eprintln!("graphql: signing up {clients} users, one per client");
    let tokens = sign_up_users(&server.base, clients).await?;
    let me_body = json!({ "query": "{ me { id } }" }).to_string();
    let typename_body = json!({ "query": "{ __typename }" }).to_string();
    let typename_req =
        RawHttp::post_request(server.port, "/graphql", None, typename_body.as_bytes());
    let mut probe = RawHttp::connect(server.port).await?;
    // Each client's `me` request and the answer it must get: its own user's id.
    let mut me_clients = Vec::with_capacity(clients);
    for token in &tokens {
        let req = RawHttp::post_request(server.port, "/graphql", Some(token), me_body.as_bytes());
        let answer = probe.send(&req).await?;
        anyhow::ensure!(answer.is_ok_graphql(), "me failed: {}", answer.text());
        me_clients.push((req, answer.body));
    }
    let distinct: std::collections::HashSet<&[u8]> =
        me_clients.iter().map(|(_, a)| a.as_slice()).collect();
    anyhow::ensure!(
        distinct.len() == clients,
        "the {clients} users' `me` answers are not all different"
    );
    let typename_answer = probe.send(&typename_req).await?;
    anyhow::ensure!(
        typename_answer.is_ok_graphql(),
        "__typename failed: {}",
        typename_answer.text()
    );
    let typename_clients = vec![(typename_req, typename_answer.body.clone()); clients];

    let mut runs = Vec::new();
    for (name, reqs) in [("me", &me_clients), ("__typename", &typename_clients)] {
        eprintln!(
            "graphql: {name} on parley, {clients} clients for {duration:?} after {warmup:?} of warm-up"
        );
        let l = load(server.port, reqs, warmup, duration, &server.pid()).await?;
        report.detail(
            &format!("parley_{name}"),
            json!({ "load": l.json(), "server": proc_delta(&l.server.0, &l.server.1),
                    "bench_process": proc_delta(&l.bench.0, &l.bench.1) }),
        );
        runs.push((name, l));
    }

    // The bare handler answers every `me` with the first user's bytes (all are the same
    // length); each client still sends its own token, so the requests are the same bytes too.
    let bare_me = me_clients[0].1.clone();
    let bare = start_bare(bare_me.clone(), typename_answer.body.clone())?;
    let mut bare_runs = Vec::new();
    let mut interleaved = None;
    let bare_result = async {
        let me_reqs: Vec<(Vec<u8>, Vec<u8>)> = tokens
            .iter()
            .map(|t| {
                let req =
                    RawHttp::post_request(bare.port, "/graphql", Some(t), me_body.as_bytes());
                (req, bare_me.clone())
            })
            .collect();
        let typename_reqs = vec![
            (
                RawHttp::post_request(bare.port, "/graphql", None, typename_body.as_bytes()),
                typename_answer.body.clone(),
            );
            clients
        ];
        for (name, reqs) in [("me", &me_reqs), ("__typename", &typename_reqs)] {
            eprintln!("graphql: {name} on the bare actix handler");
            let l = load(bare.port, reqs, warmup, duration, "self").await?;
            report.detail(
                &format!("bare_{name}"),
                json!({ "load": l.json(), "bench_process_with_bare_server": proc_delta(&l.bench.0, &l.bench.1) }),
            );
            bare_runs.push(l);
        }
        interleaved = Some(interleave(server, &me_clients, bare.port, &me_reqs, opts).await?);
        Ok::<_, anyhow::Error>(())
    }
    .await;
    bare.stop().await;
    bare_result?;

    for ((name, l), b) in runs.iter().zip(&bare_runs) {
        let ratio = l.rate() / b.rate().max(1e-9);
        if *name == "me" {
            report.target(
                format!("{name}: requests/s"),
                l.rate(),
                "req/s",
                ">=",
                b.rate() * ME_RATIO_GOAL,
            );
        } else {
            report.metric(format!("{name}: requests/s"), l.rate(), "req/s");
        }
        report.metric(format!("{name}: p50"), l.latency.ms(0.5), "ms");
        report.metric(format!("{name}: p99"), l.latency.ms(0.99), "ms");
        report.metric(
            format!("{name}: server CPU"),
            super::cores(&l.server.0, &l.server.1),
            "cores",
        );
        report.metric(
            format!("{name}: machine CPU busy"),
            super::machine_cores(&l.server.0, &l.server.1),
            "cores",
        );
        report.metric(format!("{name}: errors"), l.errors as f64, "");
        report.metric(format!("{name}: bare actix requests/s"), b.rate(), "req/s");
        report.metric(format!("{name}: bare actix p99"), b.latency.ms(0.99), "ms");
        if *name == "me" {
            report.target(
                format!("{name}: ratio to bare actix"),
                ratio,
                "x",
                ">=",
                ME_RATIO_GOAL,
            );
        } else {
            report.metric(format!("{name}: ratio to bare actix"), ratio, "x");
        }
        if let Some(e) = &l.first_error {
            report.note(format!("{name}: first error: {e}"));
        }
    }
    if let Some((parley, bare)) = interleaved {
        let (p, b) = (parley.rate(), bare.rate());
        report.detail(
            "interleaved_me",
            json!({ "slices": INTERLEAVED_SLICES, "parley": parley.json(), "bare": bare.json() }),
        );
        report.metric("me, interleaved: requests/s", p, "req/s");
        report.metric("me, interleaved: bare actix requests/s", b, "req/s");
        report.metric(
            "me, interleaved: errors",
            (parley.errors + bare.errors) as f64,
            "",
        );
        report.target(
            "me, interleaved: ratio to bare actix",
            p / b.max(1e-9),
            "x",
            ">=",
            ME_RATIO_GOAL,
        );
        report.note(format!(
            "me, interleaved: {INTERLEAVED_SLICES} slices of a sixth of the phase each, parley and \
             the bare handler in turn (P B B P P B), each after a warm-up of a tenth of a slice; \
             a change in the machine's speed between phases falls on both sides (the spread \
             within a slice remains)"
        ));
    }
    report.note(format!(
        "me: {clients} users, one login token per client; the bare handler gets the same \
         requests (same tokens) and answers with the first user's bytes"
    ));
    report.note(
        "the bare handler runs in the bench process (2 actix workers, like the server) \
         and shares the 2 cores with the load driver, as the server does",
    );
    Ok(report)
}

/// `me` on parley and on the bare handler in turn, [`INTERLEAVED_SLICES`] slices in all
/// (P B B P P B), each a sixth of the phase after a warm-up of a tenth of a slice; the
/// requests and time of each side's slices, summed. The two sides run minutes apart in the
/// main runs, and this machine's speed moved by a tenth within a minute. In turn, such a drift
/// falls on both; it did not remove the spread of the ratio (0.583–0.683 for one binary,
/// BENCHMARKS.md).
async fn interleave(
    server: &Server,
    parley: &[(Vec<u8>, Vec<u8>)],
    bare_port: u16,
    bare: &[(Vec<u8>, Vec<u8>)],
    opts: &Opts,
) -> anyhow::Result<(Slices, Slices)> {
    let slice = opts.phase() / INTERLEAVED_SLICES as u32;
    let warmup = slice / 10;
    eprintln!(
        "graphql: me on parley and the bare handler in turn, {INTERLEAVED_SLICES} slices of {slice:?}"
    );
    let (mut on_parley, mut on_bare) = (Slices::default(), Slices::default());
    for pair in 0..INTERLEAVED_SLICES / 2 {
        // P B, B P, P B: each side first as often as can be.
        let parley_first = pair % 2 == 0;
        for side_is_parley in [parley_first, !parley_first] {
            if side_is_parley {
                let l = load(server.port, parley, warmup, slice, &server.pid()).await?;
                on_parley.add(&l);
            } else {
                let l = load(bare_port, bare, warmup, slice, "self").await?;
                on_bare.add(&l);
            }
        }
    }
    Ok((on_parley, on_bare))
}

/// Requests and time summed over slices.
#[derive(Default)]
struct Slices {
    requests: u64,
    errors: u64,
    elapsed: Duration,
}

impl Slices {
    fn add(&mut self, l: &Load) {
        self.requests += l.requests;
        self.errors += l.errors;
        self.elapsed += l.elapsed;
    }

    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn json(&self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "requests_per_sec": self.rate(),
        })
    }
}
