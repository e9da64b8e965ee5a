//! The server under test: a fresh database, the release `parley` binary as a child process,
//! and what `/proc` says about it.
use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sea_orm::{ConnectionTrait as _, Database};
use serde_json::{Value, json};
use uuid::Uuid;

/// Which engine a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

impl DbKind {
    pub fn name(self) -> &'static str {
        match self {
            DbKind::Sqlite => "sqlite",
            DbKind::Postgres => "postgres",
        }
    }
}

/// A database made for one run, removed by [`BenchDb::drop_db`].
pub enum BenchDb {
    Sqlite {
        dir: PathBuf,
        url: String,
    },
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
}

impl BenchDb {
    /// A fresh SQLite file in a temporary directory, or a fresh PostgreSQL database.
    pub async fn create(kind: DbKind, pg_admin_url: &str) -> anyhow::Result<Self> {
        let tag = Uuid::new_v4().simple().to_string();
        match kind {
            DbKind::Sqlite => {
                let dir = std::env::temp_dir().join(format!("parley-bench-{tag}"));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let url = format!("sqlite://{}?mode=rwc", dir.join("parley.db").display());
                Ok(BenchDb::Sqlite { dir, url })
            }
            DbKind::Postgres => {
                let name = format!("parley_bench_{tag}");
                let admin = Database::connect(pg_admin_url).await.with_context(|| {
                    format!("cannot connect to PostgreSQL at {pg_admin_url} (--pg-url)")
                })?;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .context("cannot create the benchmark database")?;
                admin.close().await.ok();
                let mut url = url::Url::parse(pg_admin_url).context("--pg-url is not a URL")?;
                url.set_path(&format!("/{name}"));
                Ok(BenchDb::Postgres {
                    admin_url: pg_admin_url.to_owned(),
                    name,
                    url: url.to_string(),
                })
            }
        }
    }

    /// The row updates and inserts PostgreSQL counted on `table` (None on SQLite).
    pub async fn pg_table_writes(&self, table: &str) -> Option<(i64, i64)> {
        let BenchDb::Postgres { url, .. } = self else {
            return None;
        };
        let conn = Database::connect(url.as_str()).await.ok()?;
        // The statistics reach the shared counters within a second of each transaction.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let row = conn
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!(
                    "SELECT n_tup_upd, n_tup_ins FROM pg_stat_user_tables WHERE relname = '{table}'"
                ),
            ))
            .await
            .ok()??;
        let upd: i64 = row.try_get_by(0).ok()?;
        let ins: i64 = row.try_get_by(1).ok()?;
        let _ = conn.close().await;
        Some((upd, ins))
    }

    pub fn url(&self) -> &str {
        match self {
            BenchDb::Sqlite { url, .. } | BenchDb::Postgres { url, .. } => url,
        }
    }

    /// Removes the file or drops the database (the server must be stopped first).
    pub async fn drop_db(self) {
        match self {
            BenchDb::Sqlite { dir, .. } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            BenchDb::Postgres {
                admin_url, name, ..
            } => {
                if let Ok(admin) = Database::connect(&admin_url).await {
                    if let Err(e) = admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await
                    {
                        eprintln!("warning: could not drop database {name}: {e}");
                    }
                    let _ = admin.close().await;
                }
            }
        }
    }
}

/// A snapshot of a process's memory and CPU time.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub threads: u64,
    /// user + system CPU time, in seconds.
    pub cpu_secs: f64,
    /// CPU time of the whole machine (every process: server, bench, PostgreSQL), in seconds.
    pub machine_busy_secs: f64,
    /// CPU time of every `postgres` process, in seconds.
    pub postgres_secs: f64,
    pub at: Option<Instant>,
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on every mainstream Linux).
const CLOCK_TICKS: f64 = 100.0;

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat` (`pid` "self" for this process).
pub fn proc_sample(pid: &str) -> ProcSample {
    let mut s = ProcSample {
        at: Some(Instant::now()),
        ..Default::default()
    };
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let num = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("VmRSS:") {
                s.rss_kb = num(line);
            } else if line.starts_with("VmHWM:") {
                s.hwm_kb = num(line);
            } else if line.starts_with("Threads:") {
                s.threads = num(line);
            }
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/stat")
        && let Some(line) = stat.lines().find(|l| l.starts_with("cpu "))
    {
        // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let busy: u64 = v
            .iter()
            .take(8)
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4)
            .map(|(_, x)| *x)
            .sum();
        s.machine_busy_secs = busy as f64 / CLOCK_TICKS;
    }
    s.postgres_secs = postgres_cpu_secs();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
            let tick = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            s.cpu_secs = (tick(11) + tick(12)) as f64 / CLOCK_TICKS;
        }
    }
    s
}

/// VmRSS and VmHWM of a process, in kB (0 when unreadable).
pub fn memory_kb(pid: &str) -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (0, 0);
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// user + system CPU time of one `/proc/<pid>/stat` line, and its command name.
fn stat_cpu(stat: &str) -> Option<(&str, f64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((comm, (tick(11) + tick(12)) as f64 / CLOCK_TICKS))
}

/// CPU time of every process named `postgres` (the local database server).
fn postgres_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| {
            stat_cpu(&stat).and_then(|(comm, cpu)| (comm == "postgres").then_some(cpu))
        })
        .sum()
}

/// What a process did between two samples.
pub fn proc_delta(before: &ProcSample, after: &ProcSample) -> Value {
    let wall = match (before.at, after.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let cpu = after.cpu_secs - before.cpu_secs;
    json!({
        "rss_before_mb": mb(before.rss_kb),
        "rss_after_mb": mb(after.rss_kb),
        "rss_peak_mb": mb(after.hwm_kb),
        "threads": after.threads,
        "cpu_secs": round3(cpu),
        "wall_secs": round3(wall),
        "cpu_cores_used": if wall > 0.0 { round3(cpu / wall) } else { 0.0 },
        "machine_cores_busy": if wall > 0.0 {
            round3((after.machine_busy_secs - before.machine_busy_secs) / wall)
        } else {
            0.0
        },
        "postgres_cores_busy": if wall > 0.0 {
            round3((after.postgres_secs - before.postgres_secs) / wall)
        } else {
            0.0
        },
    })
}

pub fn mb(kb: u64) -> f64 {
    round3(kb as f64 / 1024.0)
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// The release `parley` binary next to this executable.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the bench executable")?;
    let bin = exe.with_file_name("parley");
    if !bin.is_file() {
        bail!(
            "the server binary {} is missing: build both binaries with `cargo build --release -p parley -p bench` \
             (with the same CARGO_TARGET_DIR as this bench), then run the bench again",
            bin.display()
        );
    }
    if !exe.components().any(|c| c.as_os_str() == "release") {
        eprintln!(
            "warning: {} is not a release build; figures of a debug build mean nothing",
            bin.display()
        );
    }
    Ok(bin)
}

/// The running server.
pub struct Server {
    child: Child,
    pub port: u16,
    pub base: String,
    pub db: Option<BenchDb>,
}

/// The fixed JWT secret of every run (40 characters).
const JWT_SECRET: &str = "parley-bench-secret-0123456789-abcdefghi";
/// The key that encrypts the database's secrets (PostgreSQL has no key file).
const SECRET_KEY: &str = "cGFybGV5LWJlbmNoLWtleS0wMTIzNDU2Nzg5YWJjZGU=";

/// The token `GET /metrics` asks for (the `metrics` scenario scrapes it).
pub const METRICS_TOKEN: &str = "parley-bench-metrics-token-0123456789";

/// The per-client limits turned off or far out of reach, for every scenario but `abuse`:
/// their visitors all come from 127.0.0.1, which the limits would take for one client.
/// Servers that do not know a variable ignore it.
pub const RELAXED_LIMITS: &[(&str, &str)] = &[
    ("PARLEY_METRICS_TOKEN", METRICS_TOKEN),
    ("PARLEY_VISITOR_RATE_LIMIT", "0"),
    ("PARLEY_ANSWER_RATE_LIMIT", "0"),
    ("PARLEY_WS_MAX_SOCKETS_PER_CLIENT", "1000000"),
    ("PARLEY_LOGIN_RATE_LIMIT_PER_ADDRESS", "1000000"),
    ("PARLEY_LOGIN_RATE_LIMIT_PER_EMAIL", "1000000"),
    ("PARLEY_MAX_CONVERSATION_EVENTS", "1000000"),
    ("PARLEY_REQUEST_RATE_LIMIT", "0"),
];

/// Starts the server binary on `db_url`, listening on `port`, with `env` added.
fn spawn_server(
    db_url: &str,
    port: u16,
    wrapper: Option<&str>,
    env: &[(&str, &str)],
) -> anyhow::Result<Child> {
    let bin = server_binary()?;
    let mut cmd = match wrapper.map(str::split_whitespace) {
        Some(mut words) => {
            let first = words.next().context("--server-wrapper is empty")?;
            let mut c = Command::new(first);
            c.args(words).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.arg("serve")
        .env("DATABASE_URL", db_url)
        .env("PARLEY_ADDR", format!("127.0.0.1:{port}"))
        .env("PARLEY_JWT_SECRET", JWT_SECRET)
        .env("PARLEY_SECRET_KEY", SECRET_KEY)
        .env("PARLEY_ALLOW_PRIVATE_WEBHOOKS", "true")
        .env("RUST_LOG", "warn")
        // As in production: no backtrace captured (and symbolised) for every error.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // The open-files limit raised in main() is inherited by the child.
    cmd.spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

impl Server {
    /// Creates a database, starts the server on it with `env` added to its environment and
    /// waits for `/readyz`. `wrapper`, when given, is a command line the server runs under (a
    /// profiler such as valgrind).
    pub async fn start(
        kind: DbKind,
        pg_admin_url: &str,
        wrapper: Option<&str>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let db = BenchDb::create(kind, pg_admin_url).await?;
        let port = free_port()?;
        let child = match spawn_server(db.url(), port, wrapper, env) {
            Ok(c) => c,
            Err(e) => {
                db.drop_db().await;
                return Err(e);
            }
        };
        let mut server = Server {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            db: Some(db),
        };
        let ready_timeout = if wrapper.is_some() {
            Duration::from_secs(300)
        } else {
            Duration::from_secs(60)
        };
        if let Err(e) = server.wait_ready(ready_timeout).await {
            server.stop().await;
            return Err(e);
        }
        Ok(server)
    }

    /// Another instance of the server on this one's database (PostgreSQL), with the same
    /// environment: it registers among the instances and listens for their events. Stopping
    /// it leaves the database.
    pub async fn start_peer(&self, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let url = self
            .db
            .as_ref()
            .context("the server has no database")?
            .url();
        let port = free_port()?;
        let child = spawn_server(url, port, None, env)?;
        let mut peer = Server {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            db: None,
        };
        if let Err(e) = peer.wait_ready(Duration::from_secs(60)).await {
            peer.stop().await;
            return Err(e);
        }
        Ok(peer)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited at start-up ({status}); see its log above");
            }
            if let Ok(resp) = client.get(format!("{}/readyz", self.base)).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the server did not answer /readyz within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Resets the server's VmHWM to its current RSS (`/proc/<pid>/clear_refs`, Linux 4.0+);
    /// false when the kernel refused.
    pub fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").is_ok()
    }

    /// RSS and CPU time of the server now.
    pub fn sample(&self) -> ProcSample {
        proc_sample(&self.pid())
    }

    /// Stops the server (SIGTERM, then SIGKILL after 15 s) and drops its database.
    pub async fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        if let Some(db) = self.db.take() {
            db.drop_db().await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A scenario that failed half-way: never leave a server running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(BenchDb::Sqlite { dir, .. }) = self.db.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
