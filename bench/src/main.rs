//! The load benchmark of Parley. It starts the release `parley` binary (built next to this
//! one) on a fresh database, drives it over real sockets, reads its memory and CPU time from
//! `/proc`, prints a table and writes the figures as JSON. See BENCHMARKS.md.
mod client;
mod direct;
mod receiver;
mod report;
mod scenarios;
mod server;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

use crate::{
    report::{Report, write_json},
    server::{DbKind, Server},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// N visitors chatting through a 5-question flow: turns/s and turn latency.
    Chat,
    /// M idle subscriptions: RSS per subscription and fan-out latency.
    Subscribers,
    /// K async webhook deliveries to a local receiver, against a plain reqwest loop.
    Deliveries,
    /// `{ me { id } }` and `{ __typename }` against a bare actix-web handler.
    Graphql,
    /// The overhead of a sync webhook call on a turn.
    SyncWebhook,
    /// Attacks a stranger can make (huge batch, deep query, idle sockets, conversation
    /// flood) against the default limits: time to answer, RSS growth, honest latency.
    Abuse,
    /// The results CSV of a bot with N conversations (seeded in the database): time, rows,
    /// server RSS growth; then once filtered by status and time.
    Export,
    /// `GET /metrics` with N conversations and N deliveries stored (seeded in the database):
    /// time and server CPU per scrape, every stored gauge checked.
    Metrics,
    /// Every scenario, one after the other, each on its own server and database.
    All,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Chat => "chat",
            Scenario::Subscribers => "subscribers",
            Scenario::Deliveries => "deliveries",
            Scenario::Graphql => "graphql",
            Scenario::SyncWebhook => "sync-webhook",
            Scenario::Abuse => "abuse",
            Scenario::Export => "export",
            Scenario::Metrics => "metrics",
            Scenario::All => "all",
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Load benchmark of the parley server (build with `cargo build --release -p parley -p bench`)"
)]
struct Cli {
    scenario: Scenario,
    /// Database engine of the server under test.
    #[arg(long, value_enum, default_value_t = DbKind::Sqlite)]
    db: DbKind,
    /// Visitors (chat), subscriptions (subscribers), deliveries (deliveries), sockets and
    /// conversations (abuse), conversations exported (export), or conversations and
    /// deliveries stored (metrics); defaults 1,000, 10,000, 20,000, 10,000 sockets with 100
    /// conversations, 100,000, and 1,000,000.
    #[arg(long)]
    size: Option<usize>,
    /// Clients in parallel: HTTP clients (graphql, default 64), starters (deliveries and
    /// subscribers, default 64), visitors (sync-webhook, default 1), flooder connections
    /// (abuse, default 8).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Seconds of each measured phase (chat, graphql, sync-webhook, abuse's flood); default 30.
    /// Each such phase is preceded by a warm-up that is not counted (see --warmup).
    #[arg(long)]
    duration: Option<u64>,
    /// Seconds of warm-up before each measured phase, run the same way but not counted;
    /// default a sixth of --duration, at most 5 (5 s for 30 s phases, 0.17 s for 1 s ones).
    #[arg(long)]
    warmup: Option<f64>,
    /// Where to write the JSON results; default bench-results/<scenario>-<db>.json.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Total turns/s offered by the paced phase of chat; default 3,000.
    #[arg(long)]
    rate: Option<f64>,
    /// Conversations answered to time the fan-out (subscribers), default 1,000; scrapes
    /// timed (metrics), default 10.
    #[arg(long)]
    sample: Option<usize>,
    /// Admin URL of the PostgreSQL server where a fresh database is made for each run;
    /// default $PARLEY_BENCH_PG_URL, else postgres://postgres@127.0.0.1:5432/test.
    #[arg(long)]
    pg_url: Option<String>,
    /// Seconds to wait, before each scenario, for the machine to be quiet (other processes
    /// under 0.3 cores); use 300 for full runs on a shared machine, 0 in CI.
    #[arg(long, default_value_t = 30)]
    quiet_wait: u64,
    /// More instances of the server on the same PostgreSQL database, idle: they only register
    /// and listen, so that the one under test announces its events (NOTIFY) as in a cluster.
    #[arg(long, default_value_t = 0)]
    peers: usize,
    /// A command to run the server under, such as
    /// "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out" (profiling only).
    #[arg(long)]
    server_wrapper: Option<String>,
}

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// What every scenario reads.
pub struct Opts {
    pub db: DbKind,
    pub size: Option<usize>,
    pub concurrency: Option<usize>,
    pub duration: Option<u64>,
    pub warmup: Option<f64>,
    pub rate: Option<f64>,
    pub sample: Option<usize>,
}

/// Default length of a measured phase: long enough that a second of machine noise moves a
/// figure by a few percent at most.
pub const DEFAULT_PHASE_SECS: u64 = 30;

impl Opts {
    /// The length of each measured phase (`--duration`, default 30 s).
    pub fn phase(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.duration.unwrap_or(DEFAULT_PHASE_SECS))
    }

    /// The warm-up before each measured phase: `--warmup`, else a sixth of the phase, at most
    /// 5 s. Connections, caches, the allocator, SQLite's page cache and the server's worker
    /// threads settle during it; nothing it does is counted.
    pub fn warmup(&self) -> std::time::Duration {
        match self.warmup {
            Some(secs) => std::time::Duration::from_secs_f64(secs.max(0.0)),
            None => (self.phase() / 6).min(std::time::Duration::from_secs(5)),
        }
    }
}

/// Raises this process's open-files limit as far as allowed; the server inherits it.
fn raise_open_files() -> u64 {
    use rlimit::Resource;
    let wanted: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1_048_576)
        .min(262_144);
    if Resource::NOFILE.set(wanted, wanted).is_err() {
        // Not root: the soft limit can still go up to the hard one.
        let _ = rlimit::increase_nofile_limit(wanted);
    }
    Resource::NOFILE.get().map(|(soft, _)| soft).unwrap_or(0)
}

/// Waits (up to `patience`) until the machine is quiet: the bench shares 2 cores with
/// whatever else runs (builds, tests), which would skew every figure. Returns the cores
/// busy in the last 2-second window.
async fn wait_quiet(patience: std::time::Duration) -> f64 {
    let started = std::time::Instant::now();
    loop {
        let a = server::proc_sample("self");
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let b = server::proc_sample("self");
        let busy = scenarios::machine_cores(&a, &b);
        if busy < QUIET_CORES || started.elapsed() >= patience {
            if busy >= QUIET_CORES {
                eprintln!(
                    "warning: the machine is busy ({busy:.2} cores) before the run; the figures will be skewed"
                );
            }
            return busy;
        }
        eprintln!(
            "the machine is busy ({busy:.2} cores used by other processes); waiting for it to be quiet"
        );
    }
}

/// Cores that other processes may use before a run starts.
const QUIET_CORES: f64 = 0.3;

async fn run_one(scenario: Scenario, cli: &Cli, opts: &Opts) -> anyhow::Result<Report> {
    let busy_before = wait_quiet(std::time::Duration::from_secs(cli.quiet_wait)).await;
    eprintln!(
        "== {} on {}: starting the server",
        scenario.name(),
        opts.db.name()
    );
    let pg_url = cli
        .pg_url
        .clone()
        .or_else(|| std::env::var("PARLEY_BENCH_PG_URL").ok())
        .unwrap_or_else(|| DEFAULT_PG_URL.to_owned());
    // `abuse` meets the default limits; the others turn the per-client limits off, since all
    // their visitors come from 127.0.0.1.
    let env = match scenario {
        Scenario::Abuse => scenarios::abuse::SERVER_ENV,
        _ => server::RELAXED_LIMITS,
    };
    let mut server = Server::start(cli.db, &pg_url, cli.server_wrapper.as_deref(), env).await?;
    let mut peers = Vec::new();
    if cli.peers > 0 {
        if cli.db != DbKind::Postgres {
            server.stop().await;
            anyhow::bail!("--peers needs --db postgres: SQLite serves one instance");
        }
        for _ in 0..cli.peers {
            match server.start_peer(env).await {
                Ok(peer) => peers.push(peer),
                Err(e) => {
                    for mut peer in peers {
                        peer.stop().await;
                    }
                    server.stop().await;
                    return Err(e.context("cannot start a peer instance"));
                }
            }
        }
    }
    let result = match scenario {
        Scenario::Chat => scenarios::chat::run(&server, opts).await,
        Scenario::Subscribers => scenarios::subscribers::run(&server, opts).await,
        Scenario::Deliveries => scenarios::deliveries::run(&server, opts).await,
        Scenario::Graphql => scenarios::graphql::run(&server, opts).await,
        Scenario::SyncWebhook => scenarios::sync_webhook::run(&server, opts).await,
        Scenario::Abuse => scenarios::abuse::run(&server, opts).await,
        Scenario::Export => scenarios::export::run(&server, opts).await,
        Scenario::Metrics => scenarios::metrics::run(&server, opts).await,
        Scenario::All => Err(anyhow::anyhow!("`all` is not a single scenario")),
    };
    for mut peer in peers {
        peer.stop().await;
    }
    server.stop().await;
    let mut report = result.with_context(|| format!("scenario {} failed", scenario.name()))?;
    report.detail("machine_cores_busy_before_run", json!(busy_before));
    report.detail("peer_instances", json!(cli.peers));
    if busy_before >= QUIET_CORES {
        report.note(format!(
            "other processes used {busy_before:.2} cores just before the run: figures skewed"
        ));
    }
    Ok(report)
}

fn default_path(scenario: Scenario, db: DbKind) -> PathBuf {
    PathBuf::from(format!(
        "bench-results/{}-{}.json",
        scenario.name(),
        db.name()
    ))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    json!({ "cpu": cpu, "cores": cores, "kernel": kernel })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let nofile = raise_open_files();
    let opts = Opts {
        db: cli.db,
        size: cli.size,
        concurrency: cli.concurrency,
        duration: cli.duration,
        warmup: cli.warmup,
        rate: cli.rate,
        sample: cli.sample,
    };
    // Fail before any work when the server binary is missing.
    server::server_binary()?;
    let list: Vec<Scenario> = match cli.scenario {
        Scenario::All => vec![
            Scenario::Chat,
            Scenario::Subscribers,
            Scenario::Deliveries,
            Scenario::Graphql,
            Scenario::SyncWebhook,
            Scenario::Abuse,
            Scenario::Export,
            Scenario::Metrics,
        ],
        one => vec![one],
    };
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for scenario in list {
        match run_one(scenario, &cli, &opts).await {
            Ok(mut report) => {
                report.detail("machine", machine());
                report.detail("open_files_limit", json!(nofile));
                report.print();
                let path = match &cli.json {
                    Some(p) if cli.scenario != Scenario::All => p.clone(),
                    _ => default_path(scenario, cli.db),
                };
                report.write(&path)?;
                eprintln!("results written to {}", path.display());
                reports.push(report.to_json());
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                failures.push(format!("{e:#}"));
            }
        }
    }
    if cli.scenario == Scenario::All {
        let path = cli
            .json
            .clone()
            .unwrap_or_else(|| default_path(Scenario::All, cli.db));
        write_json(&path, &json!({ "machine": machine(), "results": reports }))?;
        eprintln!("all results written to {}", path.display());
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "{} scenario(s) failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Opts, server::DbKind};

    fn opts(duration: Option<u64>, warmup: Option<f64>) -> Opts {
        Opts {
            db: DbKind::Sqlite,
            size: None,
            concurrency: None,
            duration,
            warmup,
            rate: None,
            sample: None,
        }
    }

    #[test]
    fn phases_default_to_30_s_after_a_5_s_warm_up() {
        let o = opts(None, None);
        assert_eq!(o.phase(), Duration::from_secs(30));
        assert_eq!(o.warmup(), Duration::from_secs(5));
    }

    #[test]
    fn the_warm_up_shrinks_with_the_phase() {
        assert!(opts(Some(1), None).warmup() < Duration::from_millis(200));
        assert_eq!(opts(Some(600), None).warmup(), Duration::from_secs(5));
        assert_eq!(opts(Some(1), Some(0.0)).warmup(), Duration::ZERO);
        assert_eq!(
            opts(Some(1), Some(2.5)).warmup(),
            Duration::from_millis(2500)
        );
    }
}
