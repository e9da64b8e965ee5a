//! `abuse`: what a stranger can do to the server with its default limits. Four attacks, one
//! after the other on the same server, each with the wall time until it is answered and the
//! server's RSS growth while it runs:
//!
//! - `body`: a ~1 MiB anonymous `POST /graphql` holding a JSON array of `logIn` operations;
//! - `deep`: a bot's conversations, their bot's conversations, theirs again (100 × 100 × 100
//!   nodes asked for);
//! - `sockets`: N WebSockets that never send `connection_init`, all from one address;
//! - `flood`: `startConversation` as fast as the bench can from one address, while an honest
//!   visitor chats; its request latency against the same visitor on a quiet server.
//!
//! The server trusts 127.0.0.1 as a proxy, so the bench names each client with
//! `X-Forwarded-For`: the flooder is one address, the honest visitor another one per
//! conversation, and the set-up yet others, so that one's limit never refuses another.
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    self, Message, client::IntoClientRequest as _, http::HeaderValue,
};

use super::{RssWatch, question_flow};
use crate::{
    Opts,
    client::{Api, RawHttp, SEND_ANSWER, START_CONVERSATION, data},
    report::{Latency, Report},
    server::{Server, mb, round3},
};

/// The server's environment: the defaults but for a trusted proxy (so the bench can speak
/// for several clients) and a short init timeout (so the run need not wait 10 s for it).
pub const SERVER_ENV: &[(&str, &str)] = &[
    ("PARLEY_TRUSTED_PROXIES", "127.0.0.1/32"),
    ("PARLEY_WS_INIT_TIMEOUT_SECS", "2"),
];
/// `PARLEY_WS_INIT_TIMEOUT_SECS` above.
const INIT_TIMEOUT: Duration = Duration::from_secs(2);

pub const DEFAULT_SOCKETS: usize = 10_000;
pub const DEFAULT_CONVERSATIONS: usize = 100;
pub const DEFAULT_FLOODERS: usize = 8;

/// Goals: every attack answered within a second, the server's RSS up by less than 50 MB,
/// the honest visitor's p99 at most twice the quiet one.
const ANSWER_GOAL_MS: f64 = 1000.0;
const RSS_GOAL_MB: f64 = 50.0;
/// How often the server's RSS is read during an attack.
const RSS_POLL: Duration = Duration::from_millis(20);
const HONEST_RATIO_GOAL: f64 = 2.0;

/// How long the bench waits for one attack's answer before it calls it unanswered.
const ATTACK_TIMEOUT: Duration = Duration::from_secs(120);
/// The batch body: just under the server's 1 MiB body limit, so that the batch rule, not
/// the size rule, is what answers.
const BODY_BYTES: usize = 1024 * 1024 - 4096;
/// Page size of each level of the deep query.
const DEEP_PAGE: usize = 100;
/// Questions of the honest visitor's flow.
const QUESTIONS: usize = 5;
/// Upgrades in flight at once while the sockets open.
const OPEN_PARALLEL: usize = 64;

/// The clients the bench speaks for (documentation ranges and 10/8).
const BODY_ADDR: &str = "198.51.100.7";
const FLOOD_ADDR: &str = "203.0.113.66";
/// Set-up conversations come from 10.1.x.y, honest ones from 10.2.x.y.
const SETUP_NET: u8 = 1;
const HONEST_NET: u8 = 2;

fn addr(net: u8, i: usize) -> String {
    format!("10.{net}.{}.{}", (i >> 8) & 255, i & 255)
}

pub async fn run(server: &Server, opts: &Opts) -> anyhow::Result<Report> {
    let sockets_wanted = opts.size.unwrap_or(DEFAULT_SOCKETS).max(1);
    let conversations = opts.size.unwrap_or(DEFAULT_CONVERSATIONS).max(1);
    let flooders = opts.concurrency.unwrap_or(DEFAULT_FLOODERS).max(1);
    let duration = opts.phase().max(Duration::from_secs(1));
    let warmup = opts.warmup();
    let mut report = Report::new(
        "abuse",
        opts.db.name(),
        json!({ "sockets": sockets_wanted, "conversations": conversations,
                "flooders": flooders, "flood_phase_secs": duration.as_secs(),
                "flood_warmup_secs": warmup.as_secs_f64(),
                "server_env": SERVER_ENV.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>() }),
    );

    let api = Api::sign_up(&server.base).await?;
    let bot = api
        .published_bot("abuse", question_flow(QUESTIONS, None))
        .await?;

    eprintln!("abuse: body, a {BODY_BYTES}-byte batch of logIn");
    body(server, &mut report).await?;

    eprintln!("abuse: deep, {conversations} conversations then the nested query");
    deep(server, &api, &bot, conversations, &mut report).await?;

    eprintln!(
        "abuse: flood, honest visitor quiet then with {flooders} flooders, {duration:?} each after {warmup:?} of warm-up"
    );
    flood(server, &bot, flooders, warmup, duration, &mut report).await?;

    eprintln!("abuse: sockets, {sockets_wanted} WebSockets without connection_init");
    sockets(server, sockets_wanted, &mut report).await?;

    report.note(format!(
        "goals: each attack answered within {ANSWER_GOAL_MS} ms, server RSS growth (peak during \
         the attack minus before it) under {RSS_GOAL_MB} MB, honest p99 under flood within \
         {HONEST_RATIO_GOAL}x of quiet"
    ));
    report.note(
        "the server trusts 127.0.0.1 as a proxy (PARLEY_TRUSTED_PROXIES) and the bench names \
         each client with X-Forwarded-For: the batch and the flood come from one address each, \
         the sockets from 127.0.0.1 itself, the honest visitor from a new address per conversation",
    );
    Ok(report)
}

/// The first `errors[].message` of a GraphQL response (or of the first item of a batch
/// answer that has one), and how many errors the whole answer holds.
fn errors_of(body: &Value) -> (Option<String>, usize) {
    let items: Vec<&Value> = match body {
        Value::Array(list) => list.iter().collect(),
        one => vec![one],
    };
    let mut first = None;
    let mut count = 0;
    for item in items {
        if let Some(errors) = item["errors"].as_array() {
            count += errors.len();
            if first.is_none() {
                first = errors
                    .first()
                    .and_then(|e| e["message"].as_str())
                    .map(str::to_owned);
            }
        }
    }
    (first, count)
}

/// The first line of a message, at most 300 characters, for the table's notes.
fn one_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_owned(),
    }
}

/// A POST with a wall-clock answer time: status, body, and seconds until the whole body came.
async fn timed_post(
    request: reqwest::RequestBuilder,
) -> (Duration, Result<(u16, Vec<u8>), String>) {
    let started = Instant::now();
    let result = async {
        let resp = request.send().await.map_err(|e| format!("{e:#}"))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| format!("{e:#}"))?;
        Ok((status, bytes.to_vec()))
    }
    .await;
    (started.elapsed(), result)
}

/// `body`: one anonymous JSON array of `logIn` operations, each for another email.
async fn body(server: &Server, report: &mut Report) -> anyhow::Result<()> {
    let mut batch = String::with_capacity(BODY_BYTES + 256);
    batch.push('[');
    let mut operations = 0usize;
    loop {
        let op = json!({ "query": format!(
            "mutation{{logIn(email:\"u{operations}@example.com\",password:\"wrongpassword1\"){{token}}}}"
        ) })
        .to_string();
        if batch.len() + op.len() + 2 > BODY_BYTES {
            break;
        }
        if operations > 0 {
            batch.push(',');
        }
        batch.push_str(&op);
        operations += 1;
    }
    batch.push(']');
    let body_bytes = batch.len();
    let client = reqwest::Client::builder().timeout(ATTACK_TIMEOUT).build()?;
    let request = client
        .post(format!("{}/graphql", server.base))
        .header("content-type", "application/json")
        .header("x-forwarded-for", BODY_ADDR)
        .body(batch);
    let watch = RssWatch::start(server, RSS_POLL);
    let (elapsed, result) = timed_post(request).await;
    let memory = watch.finish().await;
    let ms = elapsed.as_secs_f64() * 1000.0;

    let mut detail = json!({
        "body_bytes": body_bytes,
        "operations": operations,
        "answer_ms": round3(ms),
        "server": memory.json(),
    });
    report.target("body: time to answer", ms, "ms", "<=", ANSWER_GOAL_MS);
    match result {
        Ok((status, bytes)) => {
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (message, errors) = errors_of(&answer);
            let tokens = answer.as_array().map_or(0, |list| {
                list.iter()
                    .filter(|r| r["data"]["logIn"]["token"].is_string())
                    .count()
            });
            report.metric("body: HTTP status", f64::from(status), "");
            report.metric("body: operations sent", operations as f64, "");
            report.metric("body: errors in the answer", errors as f64, "");
            if let Some(m) = &message {
                report.note(format!("body: answered {status}: {}", one_line(m)));
            }
            detail["status"] = json!(status);
            detail["response_bytes"] = json!(bytes.len());
            detail["errors"] = json!(errors);
            detail["first_error"] = json!(message);
            detail["tokens"] = json!(tokens);
            detail["refused_whole"] = json!(status == 400 || status == 413);
        }
        Err(e) => {
            report.metric("body: HTTP status", 0.0, "");
            report.note(format!("body: no answer: {e}"));
            detail["error"] = json!(e);
        }
    }
    memory.report("body", RSS_GOAL_MB, report);
    report.detail("body", detail);
    Ok(())
}

/// The nested query of `deep`: page × page × page conversations asked for.
fn deep_query() -> String {
    let page = DEEP_PAGE;
    format!(
        "query($b: ID!) {{ bot(id: $b) {{ conversations(first: {page}) {{ edges {{ node {{ bot {{ \
         conversations(first: {page}) {{ edges {{ node {{ bot {{ conversations(first: {page}) {{ \
         edges {{ node {{ id answers }} }} }} }} }} }} }} }} }} }} }} }} }}"
    )
}

/// `deep`: `conversations` conversations on the bot, then the nested query with the owner's
/// token.
async fn deep(
    server: &Server,
    api: &Api,
    bot: &str,
    conversations: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut http = RawHttp::connect(server.port).await?;
    let mut started = 0usize;
    let mut first_failure = None;
    for i in 0..conversations {
        let from = addr(SETUP_NET, i);
        let resp = http
            .graphql_as(Some(&from), None, START_CONVERSATION, json!({ "b": bot }))
            .await?;
        match resp.json().and_then(|b| data(&b, "startConversation")) {
            Ok(_) => started += 1,
            Err(e) => {
                first_failure.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    if let Some(e) = &first_failure {
        report.note(format!(
            "deep: {} of {conversations} conversations could not be started: {e}",
            conversations - started
        ));
    }
    let client = reqwest::Client::builder().timeout(ATTACK_TIMEOUT).build()?;
    let request = client
        .post(format!("{}/graphql", server.base))
        .bearer_auth(&api.token)
        .json(&json!({ "query": deep_query(), "variables": { "b": bot } }));
    let watch = RssWatch::start(server, RSS_POLL);
    let (elapsed, result) = timed_post(request).await;
    let memory = watch.finish().await;
    let ms = elapsed.as_secs_f64() * 1000.0;
    let page = started.min(DEEP_PAGE);
    let mut detail = json!({
        "conversations": started,
        "nodes_asked_for": DEEP_PAGE.pow(3),
        "nodes_if_served": page.pow(3),
        "answer_ms": round3(ms),
        "server": memory.json(),
    });
    report.target("deep: time to answer", ms, "ms", "<=", ANSWER_GOAL_MS);
    match result {
        Ok((status, bytes)) => {
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (message, errors) = errors_of(&answer);
            // Every innermost node carries one "answers" key.
            let needle = b"\"answers\"";
            let nodes = bytes.windows(needle.len()).filter(|w| w == needle).count();
            let refused = errors > 0 && nodes == 0;
            report.metric("deep: HTTP status", f64::from(status), "");
            report.metric("deep: response size", bytes.len() as f64 / 1024.0, "KiB");
            report.metric("deep: innermost nodes served", nodes as f64, "");
            report.metric("deep: refused (1 = yes)", f64::from(u8::from(refused)), "");
            if let Some(m) = &message {
                report.note(format!("deep: answered {status}: {}", one_line(m)));
            }
            detail["status"] = json!(status);
            detail["response_bytes"] = json!(bytes.len());
            detail["nodes_served"] = json!(nodes);
            detail["refused"] = json!(refused);
            detail["errors"] = json!(errors);
            detail["first_error"] = json!(message);
        }
        Err(e) => {
            report.metric("deep: HTTP status", 0.0, "");
            report.note(format!("deep: no answer: {e}"));
            detail["error"] = json!(e);
        }
    }
    memory.report("deep", RSS_GOAL_MB, report);
    report.detail("deep", detail);
    Ok(())
}

/// What the honest visitor saw in one phase: the latency of each of its requests.
#[derive(Default)]
struct Honest {
    latency: Latency,
    conversations: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Honest {
    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }

    fn json(&self) -> Value {
        json!({
            "requests": self.latency.count(),
            "conversations": self.conversations,
            "errors": self.errors,
            "first_error": self.first_error,
            "latency": self.latency.summary(),
        })
    }
}

/// The honest visitor: one conversation after the other, each from a new address,
/// `startConversation` then an answer to each question, sequentially over one keep-alive
/// connection, for `warmup` (its requests not timed) and then for `duration`.
/// `next_conversation` numbers its addresses across phases.
async fn honest_visitor(
    port: u16,
    bot: &str,
    warmup: Duration,
    duration: Duration,
    next_conversation: &mut usize,
) -> anyhow::Result<Honest> {
    let mut http = RawHttp::connect(port).await?;
    let mut h = Honest::default();
    let measure_from = Instant::now() + warmup;
    let deadline = measure_from + duration;
    'conversations: while Instant::now() < deadline {
        let from = addr(HONEST_NET, *next_conversation);
        *next_conversation += 1;
        let t = Instant::now();
        let resp = match http
            .graphql_as(Some(&from), None, START_CONVERSATION, json!({ "b": bot }))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                h.error(format!("{e:#}"));
                http = RawHttp::connect(port).await?;
                continue;
            }
        };
        if t >= measure_from {
            h.latency.record(t.elapsed());
        }
        let session = match resp.json().and_then(|b| data(&b, "startConversation")) {
            Ok(s) => s,
            Err(e) => {
                h.error(format!("{e:#}"));
                continue;
            }
        };
        if t >= measure_from {
            h.conversations += 1;
        }
        for n in 1..=QUESTIONS {
            if Instant::now() >= deadline {
                break 'conversations;
            }
            let vars = json!({ "c": session["conversationId"], "t": session["visitorToken"],
                               "x": format!("answer {n}") });
            let t = Instant::now();
            let counted = t >= measure_from;
            match http.graphql_as(Some(&from), None, SEND_ANSWER, vars).await {
                Ok(r) if r.is_ok_graphql() => {
                    if counted {
                        h.latency.record(t.elapsed());
                    }
                }
                Ok(r) => {
                    if counted {
                        h.latency.record(t.elapsed());
                    }
                    h.error(format!("sendAnswer: {}", r.text()));
                    continue 'conversations;
                }
                Err(e) => {
                    h.error(format!("{e:#}"));
                    http = RawHttp::connect(port).await?;
                    continue 'conversations;
                }
            }
        }
    }
    Ok(h)
}

/// What the flooders got.
#[derive(Default)]
struct Flood {
    accepted: u64,
    rate_limited: u64,
    other: u64,
    first_other: Option<String>,
    latency: Latency,
}

/// One flooder: `startConversation` from [`FLOOD_ADDR`] back to back until `stop`.
async fn flooder(port: u16, bot: String, stop: Arc<AtomicBool>) -> Flood {
    let mut f = Flood::default();
    let body = json!({ "query": START_CONVERSATION, "variables": { "b": bot } }).to_string();
    let request =
        RawHttp::post_request_as(port, "/graphql", None, Some(FLOOD_ADDR), body.as_bytes());
    let Ok(mut http) = RawHttp::connect(port).await else {
        f.other += 1;
        f.first_other = Some("cannot connect".into());
        return f;
    };
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        match http.send(&request).await {
            Ok(r) => {
                f.latency.record(t.elapsed());
                let text = r.text();
                if r.status == 429 || text.contains("RATE_LIMITED") {
                    f.rate_limited += 1;
                } else if r.is_ok_graphql() {
                    f.accepted += 1;
                } else {
                    f.other += 1;
                    f.first_other
                        .get_or_insert_with(|| format!("{}: {text}", r.status));
                }
            }
            Err(e) => {
                f.other += 1;
                f.first_other.get_or_insert_with(|| format!("{e:#}"));
                match RawHttp::connect(port).await {
                    Ok(c) => http = c,
                    Err(_) => break,
                }
            }
        }
    }
    f
}

/// `flood`: the honest visitor alone, then with `flooders` connections flooding.
async fn flood(
    server: &Server,
    bot: &str,
    flooders: usize,
    warmup: Duration,
    duration: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut next_conversation = 0usize;
    let quiet = honest_visitor(server.port, bot, warmup, duration, &mut next_conversation).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..flooders {
        tasks.spawn(flooder(server.port, bot.to_owned(), stop.clone()));
    }
    let watch = RssWatch::start(server, RSS_POLL);
    let before = server.sample();
    let loaded = honest_visitor(server.port, bot, warmup, duration, &mut next_conversation).await;
    stop.store(true, Ordering::Relaxed);
    let mut f = Flood::default();
    while let Some(joined) = tasks.join_next().await {
        let one = joined.context("a flooder task failed")?;
        f.accepted += one.accepted;
        f.rate_limited += one.rate_limited;
        f.other += one.other;
        if f.first_other.is_none() {
            f.first_other = one.first_other;
        }
        f.latency.merge(&one.latency);
    }
    let after = server.sample();
    let memory = watch.finish().await;
    let loaded = loaded?;

    let (q50, q99) = (quiet.latency.ms(0.5), quiet.latency.ms(0.99));
    let (l50, l99) = (loaded.latency.ms(0.5), loaded.latency.ms(0.99));
    let ratio = l99 / q99.max(1e-3);
    report.metric("flood: honest p50 quiet", q50, "ms");
    report.metric("flood: honest p99 quiet", q99, "ms");
    report.metric("flood: honest p50 under flood", l50, "ms");
    report.metric("flood: honest p99 under flood", l99, "ms");
    report.target(
        "flood: honest p99 ratio flood/quiet",
        ratio,
        "x",
        "<=",
        HONEST_RATIO_GOAL,
    );
    report.metric(
        "flood: honest requests quiet",
        quiet.latency.count() as f64,
        "",
    );
    report.metric(
        "flood: honest requests under flood",
        loaded.latency.count() as f64,
        "",
    );
    report.metric(
        "flood: honest errors",
        (quiet.errors + loaded.errors) as f64,
        "",
    );
    report.metric("flood: flood requests accepted", f.accepted as f64, "");
    report.metric(
        "flood: flood requests refused (RATE_LIMITED)",
        f.rate_limited as f64,
        "",
    );
    report.metric("flood: flood requests failed otherwise", f.other as f64, "");
    report.target(
        "flood: flood request p99 (time to answer)",
        f.latency.ms(0.99),
        "ms",
        "<=",
        ANSWER_GOAL_MS,
    );
    report.metric(
        "flood: server CPU under flood",
        super::cores(&before, &after),
        "cores",
    );
    memory.report("flood", RSS_GOAL_MB, report);
    if let Some(e) = quiet.first_error.as_ref().or(loaded.first_error.as_ref()) {
        report.note(format!("flood: honest visitor's first error: {e}"));
    }
    if let Some(e) = &f.first_other {
        report.note(format!(
            "flood: first flood failure other than RATE_LIMITED: {e}"
        ));
    }
    report.note(
        "flood: an honest request is one startConversation or sendAnswer answered over HTTP; the \
         flooders run in the bench process and share the 2 cores with the server and the visitor",
    );
    report.detail(
        "flood",
        json!({
            "honest_quiet": quiet.json(),
            "honest_under_flood": loaded.json(),
            "p99_ratio": round3(ratio),
            "flood": {
                "connections": flooders,
                "address": FLOOD_ADDR,
                "accepted": f.accepted,
                "rate_limited": f.rate_limited,
                "other_failures": f.other,
                "first_other_failure": f.first_other,
                "latency": f.latency.summary(),
            },
            "server": memory.json(),
            "server_cpu": crate::server::proc_delta(&before, &after),
        }),
    );
    Ok(())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How one upgrade went.
enum Upgrade {
    Open(Box<Socket>),
    Refused(u16),
    Failed(String),
}

/// Opens a `graphql-transport-ws` socket and sends nothing on it.
async fn open_idle(port: u16) -> (Upgrade, Duration, Instant) {
    let started = Instant::now();
    let outcome = async {
        let mut req = format!("ws://127.0.0.1:{port}/graphql")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        match tokio::time::timeout(
            ATTACK_TIMEOUT,
            tokio_tungstenite::connect_async_with_config(req, None, true),
        )
        .await
        {
            Err(_) => Err("no answer to the upgrade".to_owned()),
            Ok(Ok((ws, _))) => Ok(Upgrade::Open(Box::new(ws))),
            Ok(Err(tungstenite::Error::Http(resp))) => Ok(Upgrade::Refused(resp.status().as_u16())),
            Ok(Err(e)) => Err(e.to_string()),
        }
    }
    .await
    .unwrap_or_else(Upgrade::Failed);
    (outcome, started.elapsed(), started)
}

/// How a held socket ended: the server's close code (0 when it closed without a frame), and
/// when, since it opened; None when it was still open at the deadline.
async fn await_close(
    mut ws: Box<Socket>,
    opened: Instant,
    deadline: Instant,
) -> Option<(u16, Duration)> {
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map_or(1005, |f| u16::from(f.code));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return 0,
            }
        }
    };
    let code = tokio::time::timeout_at(deadline.into(), wait).await.ok()?;
    Some((code, opened.elapsed()))
}

/// `sockets`: `wanted` WebSockets from 127.0.0.1 that never send `connection_init`.
async fn sockets(server: &Server, wanted: usize, report: &mut Report) -> anyhow::Result<()> {
    // Each socket is a descriptor here and one in the server, which inherits this limit.
    let nofile = rlimit::Resource::NOFILE
        .get()
        .map_or(1024, |(soft, _)| soft);
    let n = wanted.min(usize::try_from(nofile.saturating_sub(256)).unwrap_or(usize::MAX));
    if n < wanted {
        report.note(format!(
            "sockets: {n} opened instead of {wanted}: the open-files limit is {nofile}"
        ));
    }
    let watch = RssWatch::start(server, RSS_POLL);
    let started = Instant::now();
    let upgrades: Vec<(Upgrade, Duration, Instant)> = futures_util::stream::iter(0..n)
        .map(|_| open_idle(server.port))
        .buffer_unordered(OPEN_PARALLEL)
        .collect()
        .await;
    let open_secs = started.elapsed().as_secs_f64();
    let held_kb = watch.now_kb();

    let mut latency = Latency::new();
    let mut refused: BTreeMap<u16, u64> = BTreeMap::new();
    let mut failed = 0u64;
    let mut first_failure = None;
    let mut held = Vec::new();
    for (outcome, took, at) in upgrades {
        latency.record(took);
        match outcome {
            Upgrade::Open(ws) => held.push((ws, at)),
            Upgrade::Refused(status) => *refused.entry(status).or_default() += 1,
            Upgrade::Failed(e) => {
                failed += 1;
                first_failure.get_or_insert(e);
            }
        }
    }
    let opened = held.len();
    // Every socket should be closed INIT_TIMEOUT after it opened; give it 2 s more.
    let deadline = Instant::now() + INIT_TIMEOUT + Duration::from_secs(2);
    let mut waits = tokio::task::JoinSet::new();
    for (ws, at) in held {
        waits.spawn(await_close(ws, at, deadline));
    }
    let mut codes: BTreeMap<u16, u64> = BTreeMap::new();
    let mut still_open = 0u64;
    let mut closed_after = Latency::new();
    while let Some(joined) = waits.join_next().await {
        match joined.context("a socket task failed")? {
            Some((code, after)) => {
                *codes.entry(code).or_default() += 1;
                closed_after.record(after);
            }
            None => still_open += 1,
        }
    }
    let memory = watch.finish().await;
    let refused_429 = refused.get(&429).copied().unwrap_or(0);
    let refused_all: u64 = refused.values().sum();
    let closed_4408 = codes.get(&4408).copied().unwrap_or(0);
    let closed_all: u64 = codes.values().sum();
    let held_growth = mb(held_kb.saturating_sub(memory.before_kb));

    report.metric(
        "sockets: time to answer every upgrade",
        open_secs * 1000.0,
        "ms",
    );
    report.target(
        "sockets: upgrade answer p99",
        latency.ms(0.99),
        "ms",
        "<=",
        ANSWER_GOAL_MS,
    );
    report.metric("sockets: opened", opened as f64, "");
    report.metric("sockets: refused with 429", refused_429 as f64, "");
    report.metric(
        "sockets: refused otherwise / failed",
        (refused_all - refused_429 + failed) as f64,
        "",
    );
    report.metric("sockets: server RSS growth while held", held_growth, "MB");
    memory.report("sockets", RSS_GOAL_MB, report);
    report.metric(
        "sockets: closed by the server with 4408",
        closed_4408 as f64,
        "",
    );
    report.target(
        format!(
            "sockets: still open {} s after the init timeout",
            (deadline - started)
                .as_secs()
                .saturating_sub(INIT_TIMEOUT.as_secs())
        ),
        still_open as f64,
        "",
        "<=",
        0.0,
    );
    if let Some(e) = &first_failure {
        report.note(format!("sockets: first failed upgrade: {e}"));
    }
    report.note(format!(
        "sockets: all from 127.0.0.1, {OPEN_PARALLEL} upgrades in flight at once; the server \
         ran with PARLEY_WS_INIT_TIMEOUT_SECS={}",
        INIT_TIMEOUT.as_secs()
    ));
    report.detail(
        "sockets",
        json!({
            "wanted": wanted,
            "attempted": n,
            "open_files_limit": nofile,
            "open_all_ms": round3(open_secs * 1000.0),
            "upgrade_latency": latency.summary(),
            "opened": opened,
            "refused_by_status": refused.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "failed": failed,
            "first_failure": first_failure,
            "rss_while_held_mb": mb(held_kb),
            "rss_growth_while_held_mb": held_growth,
            "closed_by_code": codes.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "closed": closed_all,
            "closed_after_open": closed_after.summary(),
            "still_open_at_deadline": still_open,
            "server": memory.json(),
        }),
    );
    Ok(())
}
