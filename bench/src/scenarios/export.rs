//! `export`: `GET /bots/{botId}/results.csv` of a bot with N conversations (issue #13: 100,000
//! in under 5 s with the server's RSS up by under 50 MB, on SQLite), then once more filtered
//! by status and a `from`/`to` window.
//!
//! Starting 100,000 conversations over HTTP would take minutes, so the account, the bot and
//! its published version are made through the API and the conversations are written straight
//! into the server's database: multi-row INSERTs through the `entity` crate (the server's own
//! table, columns and value encodings), in transactions. Answers live in plain JSON in
//! `conversations.state` (only secrets are encrypted at rest), so the rows need no key.
//!
//! The client parses every byte of the body as strict RFC 4180 while it downloads, without
//! keeping it, and checks each row against what was seeded: the row count must match and every
//! cell must read back as written, or the scenario fails.
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use chrono::{DateTime, SubsecRound as _, Utc};
use entity::conversation::{self, ConversationStatus};
use futures_util::StreamExt as _;
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, EntityTrait as _, PaginatorTrait as _, QueryFilter as _,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{Memory, RssWatch, question_flow};
use crate::{
    Opts,
    client::{Api, data},
    direct::{ROWS_PER_INSERT, ROWS_PER_TX, insert_rows},
    report::Report,
    server::{DbKind, ProcSample, Server, mb, proc_delta, round3},
};

mod csv;

use csv::{CsvReader, Record};

pub const DEFAULT_CONVERSATIONS: usize = 100_000;

/// The goals for the whole export.
const TIME_GOAL_SECS: f64 = 5.0;
const RSS_GOAL_MB: f64 = 50.0;
/// How often the server's RSS is read while it exports: a page of rows lives for a few ms.
const RSS_POLL: Duration = Duration::from_millis(10);

/// Questions of the flow, one result field each.
const QUESTIONS: usize = 5;
/// Seconds between the starts of two seeded conversations.
const START_SPACING_SECS: i64 = 1;
/// Longest the bench waits for one export.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(600);
/// The columns every row starts with (README, "Results as CSV").
const FIXED_COLUMNS: [&str; 5] = [
    "conversation_id",
    "status",
    "started_at",
    "ended_at",
    "version",
];

/// One answer of a seeded conversation.
#[derive(Clone, Copy)]
enum Answer {
    /// Text unique to the conversation and the field.
    Plain,
    /// Text stored as is, and the cell the export must hold for it once the CSV is decoded
    /// (README, "Results as CSV": a would-be formula gets a leading `'`, a number does not).
    Awkward(&'static str, &'static str),
    /// A number, as a non-TEXT question stores it: written as JSON.
    Number,
}

/// The answers the seeded conversations draw from, so that every kind of cell the export
/// quotes or neutralises appears many times.
const ANSWERS: &[Answer] = &[
    Answer::Plain,
    Answer::Awkward("Paris, France", "Paris, France"),
    Answer::Awkward("She said \"yes\", twice", "She said \"yes\", twice"),
    Answer::Plain,
    Answer::Awkward("line one\nline two", "line one\nline two"),
    Answer::Awkward("first\r\nsecond", "first\r\nsecond"),
    Answer::Awkward("café 😀 👍🏽 日本", "café 😀 👍🏽 日本"),
    Answer::Number,
    Answer::Awkward(
        "=HYPERLINK(\"http://x\",\"y\")",
        "'=HYPERLINK(\"http://x\",\"y\")",
    ),
    Answer::Awkward("+33 6 12 34 56 78", "'+33 6 12 34 56 78"),
    Answer::Plain,
    Answer::Awkward("-12.5", "-12.5"),
    Answer::Awkward(" padded ", " padded "),
];

/// What the seeded conversations hold; each is derived from its index, but its id.
pub(super) struct Plan {
    ids: Vec<Uuid>,
    account_id: Uuid,
    bot_id: Uuid,
    version: i32,
    fields: Vec<String>,
    /// Start of conversation 0; whole seconds, so that the CSV's milliseconds are exact.
    base: DateTime<Utc>,
    /// Last activity of the conversations still active: recent, so that the server's sweeper
    /// does not mark them abandoned while the bench reads them.
    now: DateTime<Utc>,
}

impl Plan {
    pub(super) fn new(
        n: usize,
        account_id: Uuid,
        bot_id: Uuid,
        version: i32,
        fields: Vec<String>,
    ) -> Self {
        let now = Utc::now().trunc_subsecs(0);
        let span = chrono::Duration::seconds(n as i64 * START_SPACING_SECS);
        Self {
            ids: (0..n).map(|_| Uuid::now_v7()).collect(),
            account_id,
            bot_id,
            version,
            fields,
            base: now - span - chrono::Duration::days(1),
            now,
        }
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    /// Seven in ten completed, two abandoned, one still active.
    pub(super) fn status(&self, i: usize) -> ConversationStatus {
        match i % 10 {
            0..=6 => ConversationStatus::Completed,
            7 | 8 => ConversationStatus::Abandoned,
            _ => ConversationStatus::Active,
        }
    }

    /// How many questions conversation `i` answered.
    fn answered(&self, i: usize) -> usize {
        match self.status(i) {
            ConversationStatus::Completed => self.fields.len(),
            _ => (i / 10) % self.fields.len().max(1),
        }
    }

    fn started(&self, i: usize) -> DateTime<Utc> {
        self.base + chrono::Duration::seconds(i as i64 * START_SPACING_SECS)
    }

    fn ended(&self, i: usize) -> Option<DateTime<Utc>> {
        match self.status(i) {
            ConversationStatus::Completed => Some(self.started(i) + chrono::Duration::seconds(95)),
            ConversationStatus::Abandoned => Some(self.started(i) + chrono::Duration::hours(24)),
            ConversationStatus::Active => None,
        }
    }

    /// Which of [`ANSWERS`] answer `j` of conversation `i` is: 7 and 3 are prime to its
    /// length, so each field goes through all of them.
    fn answer_index(i: usize, j: usize) -> usize {
        (i * 7 + j * 3) % ANSWERS.len()
    }

    fn answer(i: usize, j: usize) -> Answer {
        ANSWERS[Self::answer_index(i, j)]
    }

    /// The stored value of answer `j` of conversation `i`.
    fn stored(&self, i: usize, j: usize) -> Value {
        match Self::answer(i, j) {
            Answer::Plain => Value::String(format!("reply {i}.{j}")),
            Answer::Awkward(text, _) => Value::String(text.to_owned()),
            Answer::Number => json!(i * 10 + j),
        }
    }

    /// The decoded CSV cell of field `j` of conversation `i`.
    fn cell(&self, i: usize, j: usize) -> String {
        if j >= self.answered(i) {
            return String::new();
        }
        match Self::answer(i, j) {
            Answer::Plain => format!("reply {i}.{j}"),
            Answer::Awkward(_, cell) => cell.to_owned(),
            Answer::Number => (i * 10 + j).to_string(),
        }
    }

    /// The engine's state: its position, the answers, and the answers again among the
    /// variables (as the engine keeps them), so that rows are as big as real ones.
    fn state(&self, i: usize) -> Value {
        let mut answers = Map::new();
        for j in 0..self.answered(i) {
            answers.insert(self.fields[j].clone(), self.stored(i, j));
        }
        let mut variables = answers.clone();
        variables.insert("visitor".to_owned(), json!({}));
        let position = match self.status(i) {
            ConversationStatus::Active => {
                json!({ "type": "awaitingAnswer", "blockId": format!("q{}", self.answered(i) + 1) })
            }
            _ => json!({ "type": "ended" }),
        };
        json!({ "position": position, "answers": answers, "variables": variables,
                "seed": i as u64 * 2_654_435_761 + 1 })
    }

    fn row(&self, i: usize) -> conversation::ActiveModel {
        let started = self.started(i);
        let ended = self.ended(i);
        conversation::ActiveModel {
            id: Set(self.ids[i]),
            account_id: Set(self.account_id),
            bot_id: Set(self.bot_id),
            version: Set(self.version),
            status: Set(self.status(i)),
            state: Set(self.state(i)),
            // The export does not read these two: values of the right shape do.
            last_seq: Set(2 * self.answered(i) as i32 + 2),
            visitor_token_hash: Set(format!("{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15)),
            started_at: Set(started),
            ended_at: Set(ended),
            updated_at: Set(ended.unwrap_or(self.now)),
            // Not pausing, no callback given out.
            resume_at: Set(None),
            resume_claimed_by: Set(None),
            resume_claimed_until: Set(None),
            callback_token_hash: Set(None),
        }
    }
}

/// A bot named `name` with the 5-question flow, published, and the plan of `n` conversations
/// of it (`Plan::new`): its id and the plan.
pub(super) async fn published_plan(
    api: &Api,
    name: &str,
    n: usize,
) -> anyhow::Result<(String, Plan)> {
    let bot = api
        .published_bot(name, question_flow(QUESTIONS, None))
        .await?;
    let body = api
        .gql(
            "query($b: ID!) { bot(id: $b) { published { version } resultFields } }",
            json!({ "b": bot }),
        )
        .await?;
    let found = data(&body, "bot")?;
    let version = found["published"]["version"]
        .as_i64()
        .context("the bot has no published version")?;
    let fields: Vec<String> = serde_json::from_value(found["resultFields"].clone())
        .context("resultFields is not a list of names")?;
    let flow_fields: Vec<String> = (1..=QUESTIONS).map(|i| format!("a{i}")).collect();
    ensure!(
        fields == flow_fields,
        "resultFields are {fields:?}, not the flow's {flow_fields:?}"
    );
    let plan = Plan::new(
        n,
        Uuid::parse_str(&api.account_id).context("the account id is not a UUID")?,
        Uuid::parse_str(&bot).context("the bot id is not a UUID")?,
        i32::try_from(version).context("version out of range")?,
        fields,
    );
    Ok((bot, plan))
}

pub async fn run(server: &Server, opts: &Opts) -> anyhow::Result<Report> {
    let n = opts.size.unwrap_or(DEFAULT_CONVERSATIONS).max(1);
    let mut report = Report::new(
        "export",
        opts.db.name(),
        json!({ "conversations": n, "questions": QUESTIONS, "rows_per_insert": ROWS_PER_INSERT,
                "rows_per_transaction": ROWS_PER_TX, "rss_poll_ms": RSS_POLL.as_millis() as u64 }),
    );
    let api = Api::sign_up(&server.base).await?;
    let (bot, plan) = published_plan(&api, "export", n).await?;

    eprintln!("export: seeding {n} conversations into the database");
    let seeding = seed(server, opts.db, &plan).await?;
    let seed_rate = n as f64 / seeding.as_secs_f64().max(1e-9);
    report.metric("seeding: conversations/s", seed_rate, "conv/s");
    report.metric("seeding: time", seeding.as_secs_f64(), "s");
    report.detail(
        "seeding",
        json!({ "conversations": n, "secs": round3(seeding.as_secs_f64()),
                "conversations_per_sec": round3(seed_rate) }),
    );

    let client = reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build()?;
    let url = format!("{}/bots/{bot}/results.csv", server.base);

    eprintln!("export: all {n} conversations");
    let all = download(server, &client, &url, &[], &api.token, &plan, 0..n).await?;
    report.target(
        "export: time to the last byte",
        all.elapsed.as_secs_f64(),
        "s",
        "<=",
        TIME_GOAL_SECS,
    );
    report.metric("export: time to the first byte", all.first_byte_ms(), "ms");
    report.metric("export: rows", all.rows as f64, "");
    report.metric("export: size", all.bytes as f64 / 1_048_576.0, "MB");
    report.metric("export: rows/s", all.rows_per_sec(), "rows/s");
    all.memory.report("export", RSS_GOAL_MB, &mut report);
    report.metric("export: server RSS peak", mb(all.memory.peak_kb), "MB");
    report.metric("export: server CPU time", all.server_cpu_secs(), "s");
    report.metric("export: server CPU", all.server_cores(), "cores");
    report.metric("export: machine CPU busy", all.machine_cores(), "cores");
    report.detail("export", all.json());

    // The middle half of the conversations, completed ones only.
    let lo = n / 4;
    let hi = (3 * n / 4).max(lo + 1);
    let (from, to) = (plan.started(lo), plan.started(hi));
    let expected: Vec<usize> = (lo..hi.min(n))
        .filter(|&i| plan.status(i) == ConversationStatus::Completed)
        .collect();
    let query = [
        ("status", "COMPLETED".to_owned()),
        ("from", rfc3339(from)),
        ("to", rfc3339(to)),
    ];
    eprintln!(
        "export: filtered, {} completed conversations of [{lo}, {hi})",
        expected.len()
    );
    let filtered = download(
        server,
        &client,
        &url,
        &query,
        &api.token,
        &plan,
        expected.into_iter(),
    )
    .await?;
    report.metric(
        "filtered export: time to the last byte",
        filtered.elapsed.as_secs_f64() * 1000.0,
        "ms",
    );
    report.metric("filtered export: rows", filtered.rows as f64, "");
    report.metric(
        "filtered export: server RSS growth (peak)",
        filtered.memory.growth_mb(),
        "MB",
    );
    report.metric(
        "filtered export: server CPU time",
        filtered.server_cpu_secs(),
        "s",
    );
    let mut filtered_json = filtered.json();
    filtered_json["query"] = json!(
        query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    );
    report.detail("filtered_export", filtered_json);

    report.note(format!(
        "goals (issue #13, SQLite): all {n} conversations exported within {TIME_GOAL_SECS} s, \
         server RSS growth (VmHWM reset, VmRSS polled every {} ms; peak minus before) under \
         {RSS_GOAL_MB} MB",
        RSS_POLL.as_millis()
    ));
    report.note(
        "time = request sent -> last byte read, by a reqwest client that parses every record \
         (strict RFC 4180) and checks every cell against what was seeded; the body is never held",
    );
    report.note(format!(
        "the account, bot and version are made through GraphQL; the conversations are written \
         into the database with multi-row INSERTs ({ROWS_PER_INSERT} rows each, \
         {ROWS_PER_TX} per transaction; 7/10 completed, 2/10 abandoned, 1/10 active), with \
         answers holding commas, quotes, line breaks, emoji, would-be formulas, numbers; then \
         {}",
        match opts.db {
            DbKind::Sqlite => "the WAL is checkpointed (as a long-lived database would be)",
            DbKind::Postgres => "conversations is ANALYZEd (as autovacuum would have done)",
        }
    ));
    Ok(report)
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Writes the planned conversations into the server's database; how long it took.
pub(super) async fn seed(server: &Server, kind: DbKind, plan: &Plan) -> anyhow::Result<Duration> {
    let db = crate::direct::connect(server, kind).await?;
    let started = Instant::now();
    let result = insert_rows(&db, plan.len(), "conversations", |i| plan.row(i)).await;
    let elapsed = started.elapsed();
    let settled = async {
        result?;
        let stored = conversation::Entity::find()
            .filter(conversation::Column::BotId.eq(plan.bot_id))
            .count(&db)
            .await?;
        ensure!(
            stored == plan.len() as u64,
            "{stored} conversations stored, not the {} seeded",
            plan.len()
        );
        crate::direct::settle(&db, kind, "conversations").await
    }
    .await;
    let _ = db.close().await;
    settled.map(|()| elapsed)
}

/// One export as the client saw it.
struct Download {
    elapsed: Duration,
    first_byte: Duration,
    bytes: u64,
    rows: u64,
    memory: Memory,
    server_before: ProcSample,
    server_after: ProcSample,
}

impl Download {
    fn first_byte_ms(&self) -> f64 {
        self.first_byte.as_secs_f64() * 1000.0
    }

    fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn server_cpu_secs(&self) -> f64 {
        self.server_after.cpu_secs - self.server_before.cpu_secs
    }

    fn server_cores(&self) -> f64 {
        super::cores(&self.server_before, &self.server_after)
    }

    fn machine_cores(&self) -> f64 {
        super::machine_cores(&self.server_before, &self.server_after)
    }

    fn json(&self) -> Value {
        json!({
            "rows": self.rows,
            "bytes": self.bytes,
            "elapsed_secs": round3(self.elapsed.as_secs_f64()),
            "first_byte_ms": round3(self.first_byte_ms()),
            "rows_per_sec": round3(self.rows_per_sec()),
            "server_memory": self.memory.json(),
            "server": proc_delta(&self.server_before, &self.server_after),
        })
    }
}

/// Downloads the export with `query`, parsing and checking it on the fly: the header, then
/// exactly the conversations `expected` (their indexes in the plan), in that order.
async fn download(
    server: &Server,
    client: &reqwest::Client,
    url: &str,
    query: &[(&str, String)],
    token: &str,
    plan: &Plan,
    expected: impl Iterator<Item = usize>,
) -> anyhow::Result<Download> {
    let mut reader = CsvReader::default();
    let mut check = Check::new(plan, expected);
    let watch = RssWatch::start(server, RSS_POLL);
    let server_before = server.sample();
    let started = Instant::now();
    let streamed = async {
        let url = url::Url::parse_with_params(url, query).context("a bad export URL")?;
        let resp = client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .context("the export request failed")?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            bail!("the export answered {status}: {body}");
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        ensure!(
            content_type.starts_with("text/csv"),
            "the export's content-type is {content_type:?}"
        );
        let mut first_byte = None;
        let mut bytes = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the export's body was cut short")?;
            first_byte.get_or_insert_with(|| started.elapsed());
            bytes += chunk.len() as u64;
            reader.feed(&chunk, |record| check.record(record))?;
        }
        reader.finish()?;
        Ok((first_byte.unwrap_or_default(), bytes))
    }
    .await;
    let elapsed = started.elapsed();
    let server_after = server.sample();
    let memory = watch.finish().await;
    let (first_byte, bytes) = streamed?;
    let rows = check.finish()?;
    Ok(Download {
        elapsed,
        first_byte,
        bytes,
        rows,
        memory,
        server_before,
        server_after,
    })
}

/// Checks the records of an export against the plan.
struct Check<'a, I> {
    plan: &'a Plan,
    expected: I,
    header_seen: bool,
    rows: u64,
    extra: u64,
    mismatches: u64,
    first_mismatch: Option<String>,
}

impl<'a, I: Iterator<Item = usize>> Check<'a, I> {
    fn new(plan: &'a Plan, expected: I) -> Self {
        Self {
            plan,
            expected,
            header_seen: false,
            rows: 0,
            extra: 0,
            mismatches: 0,
            first_mismatch: None,
        }
    }

    fn record(&mut self, record: Record<'_>) {
        let verdict = if !self.header_seen {
            self.header_seen = true;
            self.header(&record)
        } else {
            self.rows += 1;
            match self.expected.next() {
                Some(i) => self.row(i, &record),
                None => {
                    self.extra += 1;
                    Err(format!("row {} is one more than seeded", self.rows))
                }
            }
        };
        if let Err(e) = verdict {
            self.mismatches += 1;
            self.first_mismatch.get_or_insert(e);
        }
    }

    fn header(&self, record: &Record<'_>) -> Result<(), String> {
        let want: Vec<&str> = FIXED_COLUMNS
            .iter()
            .copied()
            .chain(self.plan.fields.iter().map(String::as_str))
            .collect();
        let got: Vec<String> = (0..record.len())
            .map(|k| String::from_utf8_lossy(record.field(k)).into_owned())
            .collect();
        if got != want {
            return Err(format!("the header is {got:?}, not {want:?}"));
        }
        Ok(())
    }

    fn row(&self, i: usize, record: &Record<'_>) -> Result<(), String> {
        let plan = self.plan;
        let n = self.rows;
        let want_len = FIXED_COLUMNS.len() + plan.fields.len();
        if record.len() != want_len {
            return Err(format!(
                "row {n} has {} fields, not {want_len}",
                record.len()
            ));
        }
        let text = |k: usize| {
            std::str::from_utf8(record.field(k))
                .map_err(|_| format!("row {n}, field {k} is not UTF-8"))
        };
        let time = |k: usize| -> Result<Option<DateTime<Utc>>, String> {
            let t = text(k)?;
            if t.is_empty() {
                return Ok(None);
            }
            DateTime::parse_from_rfc3339(t)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|_| format!("row {n}, field {k} is not an RFC 3339 time: {t:?}"))
        };
        let expect = |what: &str, got: String, want: String| {
            if got == want {
                Ok(())
            } else {
                Err(format!(
                    "row {n} (conversation {i}): {what} is {got:?}, not {want:?}"
                ))
            }
        };
        expect("id", text(0)?.to_owned(), plan.ids[i].to_string())?;
        expect(
            "status",
            text(1)?.to_owned(),
            status_name(plan.status(i)).to_owned(),
        )?;
        // Times are compared as instants: RFC 3339 has several spellings of one.
        expect(
            "started_at",
            format!("{:?}", time(2)?),
            format!("{:?}", Some(plan.started(i))),
        )?;
        expect(
            "ended_at",
            format!("{:?}", time(3)?),
            format!("{:?}", plan.ended(i)),
        )?;
        expect("version", text(4)?.to_owned(), plan.version.to_string())?;
        for j in 0..plan.fields.len() {
            expect(
                &plan.fields[j],
                text(FIXED_COLUMNS.len() + j)?.to_owned(),
                plan.cell(i, j),
            )?;
        }
        Ok(())
    }

    /// The data rows read; fails unless they are exactly the expected ones.
    fn finish(mut self) -> anyhow::Result<u64> {
        let missing = self.expected.by_ref().count() as u64;
        let wanted = self.rows - self.extra + missing;
        ensure!(
            self.header_seen,
            "the export has no header line (0 records)"
        );
        ensure!(
            missing == 0 && self.extra == 0,
            "the export has {} rows, not {wanted} ({missing} missing, {} extra)",
            self.rows,
            self.extra
        );
        if let Some(first) = self.first_mismatch {
            bail!(
                "{} of {} records of the export differ from what was seeded; the first: {first}",
                self.mismatches,
                self.rows + 1
            );
        }
        Ok(self.rows)
    }
}

fn status_name(status: ConversationStatus) -> &'static str {
    match status {
        ConversationStatus::Active => "ACTIVE",
        ConversationStatus::Completed => "COMPLETED",
        ConversationStatus::Abandoned => "ABANDONED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: usize) -> Plan {
        Plan::new(
            n,
            Uuid::nil(),
            Uuid::nil(),
            1,
            (1..=QUESTIONS).map(|i| format!("a{i}")).collect(),
        )
    }

    #[test]
    fn the_plan_covers_every_kind_of_answer_in_every_field() {
        let plan = plan(200);
        for j in 0..QUESTIONS {
            for (k, kind) in ANSWERS.iter().enumerate() {
                let used = (0..plan.len()).any(|i| {
                    plan.answered(i) > j
                        && Plan::answer_index(i, j) == k
                        && !plan.cell(i, j).is_empty()
                });
                let name = match kind {
                    Answer::Plain => "plain",
                    Answer::Awkward(text, _) => text,
                    Answer::Number => "number",
                };
                assert!(used, "field {j} never holds {name:?}");
            }
        }
    }

    #[test]
    fn a_misplaced_or_altered_row_is_a_mismatch() -> anyhow::Result<()> {
        let plan = plan(3);
        let line = |i: usize| {
            let mut cells = vec![
                plan.ids[i].to_string(),
                status_name(plan.status(i)).to_owned(),
                rfc3339(plan.started(i)),
                plan.ended(i).map(rfc3339).unwrap_or_default(),
                "1".to_owned(),
            ];
            cells.extend((0..QUESTIONS).map(|j| plan.cell(i, j)));
            cells
                .iter()
                .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(",")
                + "\r\n"
        };
        let header = FIXED_COLUMNS
            .iter()
            .map(|c| c.to_string())
            .chain((1..=QUESTIONS).map(|i| format!("a{i}")))
            .collect::<Vec<_>>()
            .join(",")
            + "\r\n";
        let run = |body: String| -> anyhow::Result<u64> {
            let mut reader = CsvReader::default();
            let mut check = Check::new(&plan, 0..3);
            reader.feed(body.as_bytes(), |r| check.record(r))?;
            reader.finish()?;
            check.finish()
        };
        assert_eq!(
            run(format!("{header}{}{}{}", line(0), line(1), line(2)))?,
            3
        );
        assert!(
            run(format!("{header}{}{}", line(0), line(1))).is_err(),
            "a row missing"
        );
        assert!(
            run(format!(
                "{header}{}{}{}{}",
                line(0),
                line(1),
                line(2),
                line(2)
            ))
            .is_err(),
            "a row too many"
        );
        assert!(
            run(format!("{header}{}{}{}", line(1), line(0), line(2))).is_err(),
            "rows out of order"
        );
        let altered = line(2).replacen("reply", "Reply", 1);
        assert!(
            line(2).contains("reply"),
            "conversation 2 holds a plain answer"
        );
        assert!(
            run(format!("{header}{}{}{altered}", line(0), line(1))).is_err(),
            "an answer altered"
        );
        Ok(())
    }
}
