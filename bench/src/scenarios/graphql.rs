//! `graphql`: requests/s and p99 of `{ me { id } }` (with a bearer token) and of
//! `{ __typename }`, with C keep-alive clients for D seconds; then the same load against a
//! bare actix-web handler in the bench process returning the same bytes.
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    Opts,
    client::{Api, RawHttp},
    receiver::start_bare,
    report::{Latency, Report},
    server::{Server, proc_delta, proc_sample},
};

pub const DEFAULT_CLIENTS: usize = 64;

/// What one load run measured.
pub struct Load {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Latency,
    pub first_error: Option<String>,
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
            "requests_per_sec": self.rate(),
            "latency": self.latency.summary(),
        })
    }
}

/// `clients` keep-alive connections sending `request` back to back for `duration`; a
/// response counts when it is a 200 whose body is `expect`.
pub async fn load(
    port: u16,
    request: &[u8],
    expect: &[u8],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Load> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(RawHttp::connect(port).await?);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let (request, expect) = (request.to_vec(), expect.to_vec());
        tasks.spawn(async move {
            let mut l = Load {
                requests: 0,
                errors: 0,
                elapsed: Duration::ZERO,
                latency: Latency::new(),
                first_error: None,
            };
            while Instant::now() < deadline {
                let t = Instant::now();
                match conn.send(&request).await {
                    Ok(r) if r.status == 200 && r.body == expect => {
                        l.requests += 1;
                        l.latency.record(t.elapsed());
                    }
                    Ok(r) => {
                        l.errors += 1;
                        l.first_error
                            .get_or_insert_with(|| format!("{}: {}", r.status, r.text()));
                    }
                    Err(e) => {
                        l.errors += 1;
                        l.first_error.get_or_insert_with(|| format!("{e:#}"));
                        match RawHttp::connect(port).await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            l
        });
    }
    let mut total = Load {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: Latency::new(),
        first_error: None,
    };
    while let Some(r) = tasks.join_next().await {
        let l = r?;
        total.requests += l.requests;
        total.errors += l.errors;
        total.latency.merge(&l.latency);
        if total.first_error.is_none() {
            total.first_error = l.first_error;
        }
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

pub async fn run(server: &Server, opts: &Opts) -> anyhow::Result<Report> {
    let clients = opts.concurrency.unwrap_or(DEFAULT_CLIENTS).max(1);
    let duration = opts.phase();
    let mut report = Report::new(
        "graphql",
        opts.db.name(),
        json!({ "clients": clients, "secs_per_run": duration.as_secs() }),
    );
    let api = Api::sign_up(&server.base).await?;
    let me_body = json!({ "query": "{ me { id } }" }).to_string();
    let typename_body = json!({ "query": "{ __typename }" }).to_string();
    let me_req = RawHttp::post_request(
        server.port,
        "/graphql",
        Some(&api.token),
        me_body.as_bytes(),
    );
    let typename_req =
        RawHttp::post_request(server.port, "/graphql", None, typename_body.as_bytes());
    let mut probe = RawHttp::connect(server.port).await?;
    let me_answer = probe.send(&me_req).await?;
    anyhow::ensure!(me_answer.is_ok_graphql(), "me failed: {}", me_answer.text());
    let typename_answer = probe.send(&typename_req).await?;
    anyhow::ensure!(
        typename_answer.is_ok_graphql(),
        "__typename failed: {}",
        typename_answer.text()
    );

    let mut runs = Vec::new();
    for (name, req, expect) in [
        ("me", &me_req, &me_answer.body),
        ("__typename", &typename_req, &typename_answer.body),
    ] {
        eprintln!("graphql: {name} on parley, {clients} clients for {duration:?}");
        let before = server.sample();
        let bench_before = proc_sample("self");
        let l = load(server.port, req, expect, clients, duration).await?;
        let after = server.sample();
        let bench_after = proc_sample("self");
        report.detail(
            &format!("parley_{name}"),
            json!({ "load": l.json(), "server": proc_delta(&before, &after),
                    "bench_process": proc_delta(&bench_before, &bench_after) }),
        );
        runs.push((
            name,
            l,
            super::cores(&before, &after),
            super::machine_cores(&before, &after),
        ));
    }

    let bare = start_bare(me_answer.body.clone(), typename_answer.body.clone())?;
    let mut bare_runs = Vec::new();
    let bare_result = async {
        for (name, body, bearer, expect) in [
            ("me", &me_body, Some(api.token.as_str()), &me_answer.body),
            ("__typename", &typename_body, None, &typename_answer.body),
        ] {
            eprintln!("graphql: {name} on the bare actix handler");
            let req = RawHttp::post_request(bare.port, "/graphql", bearer, body.as_bytes());
            let before = proc_sample("self");
            let l = load(bare.port, &req, expect, clients, duration).await?;
            let after = proc_sample("self");
            report.detail(
                &format!("bare_{name}"),
                json!({ "load": l.json(), "bench_process_with_bare_server": proc_delta(&before, &after) }),
            );
            bare_runs.push(l);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    bare.stop().await;
    bare_result?;

    for ((name, l, cores, machine), b) in runs.iter().zip(&bare_runs) {
        let ratio = l.rate() / b.rate().max(1e-9);
        if *name == "me" {
            report.target(
                format!("{name}: requests/s"),
                l.rate(),
                "req/s",
                ">=",
                b.rate() * 0.5,
            );
        } else {
            report.metric(format!("{name}: requests/s"), l.rate(), "req/s");
        }
        report.metric(format!("{name}: p50"), l.latency.ms(0.5), "ms");
        report.metric(format!("{name}: p99"), l.latency.ms(0.99), "ms");
        report.metric(format!("{name}: server CPU"), *cores, "cores");
        report.metric(format!("{name}: machine CPU busy"), *machine, "cores");
        report.metric(format!("{name}: errors"), l.errors as f64, "");
        report.metric(format!("{name}: bare actix requests/s"), b.rate(), "req/s");
        report.metric(format!("{name}: bare actix p99"), b.latency.ms(0.99), "ms");
        if *name == "me" {
            report.target(
                format!("{name}: ratio to bare actix"),
                ratio,
                "x",
                ">=",
                0.5,
            );
        } else {
            report.metric(format!("{name}: ratio to bare actix"), ratio, "x");
        }
        if let Some(e) = &l.first_error {
            report.note(format!("{name}: first error: {e}"));
        }
    }
    report.note(
        "the bare handler runs in the bench process (2 actix workers, like the server) \
         and shares the 2 cores with the load driver, as the server does",
    );
    Ok(report)
}
