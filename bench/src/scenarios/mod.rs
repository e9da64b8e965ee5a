//! The scenarios, and the visitor loop that `chat` and `sync-webhook` share.
pub mod abuse;
pub mod chat;
pub mod deliveries;
pub mod export;
pub mod graphql;
pub mod metrics;
pub mod subscribers;
pub mod sync_webhook;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::{
    client::{RawHttp, Session, Ws, send_answer, start_conversation},
    report::{Latency, Report},
    server::{ProcSample, Server, mb, memory_kb, proc_delta, proc_sample},
};

/// A visitor's two connections: the WebSocket of its subscriptions and the keep-alive HTTP
/// connection of its mutations.
pub struct Visitor {
    pub ws: Ws,
    pub http: RawHttp,
}

impl Visitor {
    pub async fn connect(port: u16) -> anyhow::Result<Self> {
        Ok(Self {
            ws: Ws::connect(port).await?,
            http: RawHttp::connect(port).await?,
        })
    }
}

/// Opens `n` visitors, `parallel` at a time.
pub async fn connect_visitors(
    port: u16,
    n: usize,
    parallel: usize,
) -> anyhow::Result<Vec<Visitor>> {
    let results: Vec<anyhow::Result<Visitor>> = futures_util::stream::iter(0..n)
        .map(|_| Visitor::connect(port))
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// What the visitors of one phase did.
#[derive(Default)]
pub struct TurnStats {
    pub turns: u64,
    pub conversations: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency: Latency,
}

impl TurnStats {
    fn merge(&mut self, other: TurnStats) {
        self.turns += other.turns;
        self.conversations += other.conversations;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency.merge(&other.latency);
    }

    fn error(&mut self, e: anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }
}

/// How a phase paces its visitors.
#[derive(Clone, Copy)]
pub enum Pace {
    /// Each visitor answers as soon as the bot asked: the server's ceiling.
    Flat,
    /// Each visitor answers once per `every`, and a conversation takes `answers` of them.
    /// The visitors' schedules are offset evenly over a whole conversation (`every ×
    /// answers`), so that their answers and their conversations' starts both make even
    /// streams. Offset over one `every` only, the answers were even but every visitor
    /// started its conversations in the same `every` of each conversation's span: at 1,000
    /// turns/s, all 1,000 starts in one second of every five.
    Every { every: Duration, answers: u32 },
}

/// One visitor's loop: start a conversation, subscribe to its events, answer every
/// question over HTTP, timing each turn from the answer sent to the next QUESTION or ENDED
/// event on the subscription; again until `deadline`. Only turns and conversations that
/// start at or after `measure_from` are counted (before it is the warm-up); errors always are.
async fn visitor_loop(
    mut v: Visitor,
    port: u16,
    bot: String,
    measure_from: Instant,
    deadline: Instant,
    pace: Pace,
    offset: Duration,
) -> (Option<Visitor>, TurnStats) {
    let mut stats = TurnStats::default();
    // Paced visitors arrive one after the other, not all at once.
    tokio::time::sleep(offset).await;
    let mut next_slot = Instant::now();
    let mut n = 0u64;
    'conversations: while Instant::now() < deadline {
        let counted = Instant::now() >= measure_from;
        let session: Session = match start_conversation(&mut v.http, &bot).await {
            Ok(s) => s,
            Err(e) => {
                stats.error(e);
                match reconnect(port, deadline).await {
                    Some(fresh) => {
                        v = fresh;
                        continue;
                    }
                    None => return (None, stats),
                }
            }
        };
        let first = async {
            v.ws.subscribe(&session).await?;
            v.ws.until_bot_turn().await
        }
        .await;
        if let Err(e) = first {
            stats.error(e);
            match reconnect(port, deadline).await {
                Some(fresh) => {
                    v = fresh;
                    continue;
                }
                None => return (None, stats),
            }
        }
        if counted {
            stats.conversations += 1;
        }
        loop {
            if let Pace::Every { every, .. } = pace {
                let now = Instant::now();
                if next_slot > now {
                    if next_slot >= deadline {
                        break 'conversations;
                    }
                    tokio::time::sleep_until(next_slot.into()).await;
                }
                next_slot = (next_slot + every).max(Instant::now());
            }
            if Instant::now() >= deadline {
                break 'conversations;
            }
            n += 1;
            let text = format!("answer {n}");
            let (http, ws) = (&mut v.http, &mut v.ws);
            let sent = Instant::now();
            // try_join: a failed answer does not wait for an event that will never come.
            let turn = tokio::try_join!(send_answer(http, &session, &text), async {
                let e = ws.until_bot_turn().await?;
                Ok::<_, anyhow::Error>((e, Instant::now()))
            });
            let counted = sent >= measure_from;
            match turn {
                Ok(((), (event, at))) => {
                    if counted {
                        stats.turns += 1;
                        stats.latency.record(at.duration_since(sent));
                    }
                    if event.kind == "ENDED" {
                        continue 'conversations;
                    }
                }
                Err(e) => {
                    stats.error(e);
                    match reconnect(port, deadline).await {
                        Some(fresh) => {
                            v = fresh;
                            continue 'conversations;
                        }
                        None => return (None, stats),
                    }
                }
            }
        }
    }
    (Some(v), stats)
}

/// One whole conversation on `bot`, flat out: start it, subscribe, answer every question
/// (`n` numbers the answers); each turn's latency, answer sent -> next QUESTION or ENDED
/// event, in order.
pub async fn one_conversation(
    v: &mut Visitor,
    bot: &str,
    n: &mut u64,
) -> anyhow::Result<Vec<Duration>> {
    let session = start_conversation(&mut v.http, bot).await?;
    v.ws.subscribe(&session).await?;
    v.ws.until_bot_turn().await?;
    let mut turns = Vec::new();
    loop {
        anyhow::ensure!(turns.len() < 1_000, "the conversation does not end");
        *n += 1;
        let text = format!("answer {n}");
        let (http, ws) = (&mut v.http, &mut v.ws);
        let sent = Instant::now();
        let ((), event) = tokio::try_join!(send_answer(http, &session, &text), async {
            let e = ws.until_bot_turn().await?;
            Ok::<_, anyhow::Error>((e, Instant::now()))
        })?;
        turns.push(event.1.duration_since(sent));
        if event.0.kind == "ENDED" {
            return Ok(turns);
        }
    }
}

pub async fn reconnect(port: u16, deadline: Instant) -> Option<Visitor> {
    while Instant::now() < deadline {
        if let Ok(v) = Visitor::connect(port).await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The result of a phase: the visitors back, what they did after the warm-up, how long that
/// took, and the server's and the bench's samples around it (taken when the warm-up ends and
/// when the phase does).
pub struct Phase {
    pub visitors: Vec<Visitor>,
    pub stats: TurnStats,
    pub elapsed: Duration,
    pub warmup: Duration,
    pub server_before: ProcSample,
    pub server_after: ProcSample,
    pub bench_before: ProcSample,
    pub bench_after: ProcSample,
}

impl Phase {
    pub fn turns_per_sec(&self) -> f64 {
        self.stats.turns as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn conversations_per_sec(&self) -> f64 {
        self.stats.conversations as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn json(&self) -> Value {
        json!({
            "turns": self.stats.turns,
            "conversations": self.stats.conversations,
            "errors": self.stats.errors,
            "first_error": self.stats.first_error,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "warmup_secs": self.warmup.as_secs_f64(),
            "turns_per_sec": self.turns_per_sec(),
            "turn_latency": self.stats.latency.summary(),
            "server": proc_delta(&self.server_before, &self.server_after),
            "bench_process": proc_delta(&self.bench_before, &self.bench_after),
        })
    }

    pub fn server_cores(&self) -> f64 {
        cores(&self.server_before, &self.server_after)
    }

    pub fn bench_cores(&self) -> f64 {
        cores(&self.bench_before, &self.bench_after)
    }

    pub fn machine_cores(&self) -> f64 {
        machine_cores(&self.server_before, &self.server_after)
    }
}

pub fn cores(before: &ProcSample, after: &ProcSample) -> f64 {
    match (before.at, after.at) {
        (Some(a), Some(b)) => {
            (after.cpu_secs - before.cpu_secs) / b.duration_since(a).as_secs_f64().max(1e-9)
        }
        _ => 0.0,
    }
}

/// Cores busy on the whole machine between two samples (of any process).
pub fn machine_cores(before: &ProcSample, after: &ProcSample) -> f64 {
    match (before.at, after.at) {
        (Some(a), Some(b)) => {
            (after.machine_busy_secs - before.machine_busy_secs)
                / b.duration_since(a).as_secs_f64().max(1e-9)
        }
        _ => 0.0,
    }
}

/// Runs every visitor's loop on `bot` for `warmup` (not counted), then for `duration`. Paced,
/// the warm-up lasts at least until the last visitor has begun: before, the stream is thinner
/// than the rate offered.
pub async fn run_phase(
    server_pid: &str,
    port: u16,
    visitors: Vec<Visitor>,
    bot: &str,
    warmup: Duration,
    duration: Duration,
    pace: Pace,
) -> Phase {
    let n = visitors.len().max(1);
    // What the visitors' starts are spread over.
    let span = match pace {
        Pace::Flat => Duration::ZERO,
        Pace::Every { every, answers } => every * answers,
    };
    let warmup = warmup.max(span);
    let measure_from = Instant::now() + warmup;
    let deadline = measure_from + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, v) in visitors.into_iter().enumerate() {
        let offset = span.mul_f64(i as f64 / n as f64);
        tasks.spawn(visitor_loop(
            v,
            port,
            bot.to_owned(),
            measure_from,
            deadline,
            pace,
            offset,
        ));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let server_before = proc_sample(server_pid);
    let bench_before = proc_sample("self");
    let started = Instant::now();
    let mut back = Vec::new();
    let mut stats = TurnStats::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((v, s)) => {
                back.extend(v);
                stats.merge(s);
            }
            Err(e) => stats.error(anyhow::anyhow!("a visitor task failed: {e}")),
        }
    }
    let elapsed = started.elapsed();
    Phase {
        visitors: back,
        stats,
        elapsed,
        warmup,
        server_before,
        server_after: proc_sample(server_pid),
        bench_before,
        bench_after: proc_sample("self"),
    }
}

/// A flow of `questions` TEXT questions, each followed by a sync webhook call when
/// `webhook` is given, then the end.
pub fn question_flow(questions: usize, webhook: Option<&str>) -> Value {
    let mut blocks = Vec::new();
    for i in 1..=questions {
        let after = if i == questions {
            "end".to_owned()
        } else {
            format!("q{}", i + 1)
        };
        match webhook {
            Some(id) => {
                blocks.push(json!({ "id": format!("q{i}"), "kind": "QUESTION", "questionType": "TEXT",
                    "text": format!("Question {i} of {questions}?"), "saveAnswerTo": format!("a{i}"), "next": format!("h{i}") }));
                blocks.push(json!({ "id": format!("h{i}"), "kind": "WEBHOOK", "webhookId": id, "async": false, "next": after }));
            }
            None => blocks.push(json!({ "id": format!("q{i}"), "kind": "QUESTION", "questionType": "TEXT",
                "text": format!("Question {i} of {questions}?"), "saveAnswerTo": format!("a{i}"), "next": after })),
        }
    }
    blocks.push(json!({ "id": "end", "kind": "END" }));
    json!({ "startBlockId": "q1", "blocks": blocks })
}

/// The server's RSS over one operation (an attack, an export): VmHWM reset before it (when
/// the kernel allows) and VmRSS polled meanwhile, so that the peak is the operation's own.
pub struct RssWatch {
    pid: String,
    before_kb: u64,
    hwm_reset: bool,
    stop: Arc<AtomicBool>,
    max_kb: Arc<AtomicU64>,
    polls: Arc<AtomicU64>,
    poller: tokio::task::JoinHandle<()>,
}

/// What [`RssWatch`] saw.
pub struct Memory {
    pub before_kb: u64,
    pub after_kb: u64,
    pub peak_kb: u64,
    pub hwm_reset: bool,
    /// How many times VmRSS was read.
    pub polls: u64,
}

impl RssWatch {
    /// Starts polling the server's VmRSS every `every`.
    pub fn start(server: &Server, every: Duration) -> Self {
        let hwm_reset = server.reset_peak();
        let pid = server.pid();
        let (before_kb, _) = memory_kb(&pid);
        let stop = Arc::new(AtomicBool::new(false));
        let max_kb = Arc::new(AtomicU64::new(before_kb));
        let polls = Arc::new(AtomicU64::new(0));
        let poller = tokio::spawn({
            let (pid, stop, max_kb, polls) =
                (pid.clone(), stop.clone(), max_kb.clone(), polls.clone());
            async move {
                // A tick missed while the runtime was busy is taken late, not twice.
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    max_kb.fetch_max(memory_kb(&pid).0, Ordering::Relaxed);
                    polls.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Self {
            pid,
            before_kb,
            hwm_reset,
            stop,
            max_kb,
            polls,
            poller,
        }
    }

    /// RSS now, during the operation.
    pub fn now_kb(&self) -> u64 {
        memory_kb(&self.pid).0
    }

    pub async fn finish(self) -> Memory {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.poller.await;
        let (after_kb, hwm_kb) = memory_kb(&self.pid);
        let polled = self.max_kb.load(Ordering::Relaxed);
        let peak_kb = if self.hwm_reset {
            polled.max(hwm_kb)
        } else {
            polled
        }
        .max(after_kb);
        Memory {
            before_kb: self.before_kb,
            after_kb,
            peak_kb,
            hwm_reset: self.hwm_reset,
            polls: self.polls.load(Ordering::Relaxed),
        }
    }
}

impl Memory {
    pub fn growth_mb(&self) -> f64 {
        mb(self.peak_kb.saturating_sub(self.before_kb))
    }

    pub fn retained_mb(&self) -> f64 {
        mb(self.after_kb.saturating_sub(self.before_kb))
    }

    pub fn json(&self) -> Value {
        json!({
            "rss_before_mb": mb(self.before_kb),
            "rss_after_mb": mb(self.after_kb),
            "rss_peak_mb": mb(self.peak_kb),
            "rss_growth_mb": self.growth_mb(),
            "rss_retained_mb": self.retained_mb(),
            "peak_from_vmhwm_reset": self.hwm_reset,
            "rss_polls": self.polls,
        })
    }

    /// The two memory lines of an operation in the table: the growth against `goal_mb`, and
    /// what stayed after.
    pub fn report(&self, what: &str, goal_mb: f64, report: &mut Report) {
        report.target(
            format!("{what}: server RSS growth (peak)"),
            self.growth_mb(),
            "MB",
            "<=",
            goal_mb,
        );
        report.metric(
            format!("{what}: server RSS retained after"),
            self.retained_mb(),
            "MB",
        );
    }
}
