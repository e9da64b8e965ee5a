//! Results: what visitors answered, as columns. `Bot.resultFields` names them; the CSV export
//! (`GET /bots/{botId}/results.csv`, routed in the edge) writes one row per conversation,
//! read from the database a page at a time so that memory stays flat however many there are.
use std::collections::{HashSet, VecDeque};

use chrono::{DateTime, SecondsFormat, Utc};
use entity::{
    bot_version,
    conversation::{self, ConversationStatus},
};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    bots::service::parse_stored_flow,
    db::Db,
    engine::model::Flow,
    error::{ApiError, ApiResult},
};

/// Conversations read per database round trip while exporting.
const EXPORT_PAGE: u64 = 500;
/// The columns every row starts with, before one per result field.
pub const FIXED_COLUMNS: [&str; 5] = [
    "conversation_id",
    "status",
    "started_at",
    "ended_at",
    "version",
];

/// Which conversations: started in `[from, to)`, with `status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResultsFilter {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub status: Option<ConversationStatus>,
}

impl ResultsFilter {
    /// The filter as a condition on `conversations`.
    pub fn condition(&self) -> Condition {
        let mut c = Condition::all();
        if let Some(from) = self.from {
            c = c.add(conversation::Column::StartedAt.gte(from));
        }
        if let Some(to) = self.to {
            c = c.add(conversation::Column::StartedAt.lt(to));
        }
        if let Some(status) = self.status {
            c = c.add(conversation::Column::Status.eq(status));
        }
        c
    }

    /// Refuses `from` at or after `to`.
    pub fn check(&self) -> ApiResult<()> {
        if let (Some(from), Some(to)) = (self.from, self.to)
            && from >= to
        {
            return Err(ApiError::bad_input("`from` must be before `to`"));
        }
        Ok(())
    }
}

/// The `saveAnswerTo` names of one flow in the order a visitor meets them: a walk from the
/// start block (next, then choices, then conditions), then blocks no walk reaches, in the
/// editor's order.
pub fn flow_fields(flow: &Flow) -> Vec<String> {
    let mut names = Vec::new();
    let mut taken = HashSet::new();
    for i in flow_order(flow) {
        if let Some(name) = &flow.blocks[i].save_answer_to
            && taken.insert(name.clone())
        {
            names.push(name.clone());
        }
    }
    names
}

/// The indexes of a flow's blocks in the order a visitor meets them: a walk from the start
/// block (next, then choices, then conditions), then blocks no walk reaches, in the editor's
/// order.
pub fn flow_order(flow: &Flow) -> Vec<usize> {
    let by_id: std::collections::HashMap<&str, usize> = flow
        .blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (b.id.as_str(), i))
        .collect();
    let mut order = Vec::with_capacity(flow.blocks.len());
    let mut seen = vec![false; flow.blocks.len()];
    let mut queue = VecDeque::new();
    if let Some(&start) = flow.start_block_id.as_deref().and_then(|s| by_id.get(s)) {
        queue.push_back(start);
    }
    while let Some(i) = queue.pop_front() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        order.push(i);
        let block = &flow.blocks[i];
        let nexts = block
            .next
            .iter()
            .chain(
                block
                    .choices
                    .iter()
                    .flatten()
                    .filter_map(|c| c.next.as_ref()),
            )
            .chain(block.conditions.iter().flatten().map(|c| &c.next));
        for next in nexts {
            if let Some(&j) = by_id.get(next.as_str())
                && !seen[j]
            {
                queue.push_back(j);
            }
        }
    }
    order.extend((0..flow.blocks.len()).filter(|&i| !seen[i]));
    order
}

/// Every `saveAnswerTo` name across the bot's published versions, oldest version first and in
/// flow order within one, each once: a new version's new fields come last, so the columns of
/// an export are stable as the bot changes.
pub async fn result_fields(db: &Db, bot_id: Uuid) -> ApiResult<Vec<String>> {
    let versions = bot_version::Entity::find()
        .filter(bot_version::Column::BotId.eq(bot_id))
        .order_by_asc(bot_version::Column::Version)
        .all(db.conn())
        .await?;
    let mut names = Vec::new();
    let mut taken = HashSet::new();
    for v in versions {
        for name in flow_fields(&parse_stored_flow(&v.flow)?) {
            if taken.insert(name.clone()) {
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// The contract's name of a status.
pub fn status_name(status: ConversationStatus) -> &'static str {
    match status {
        ConversationStatus::Active => "ACTIVE",
        ConversationStatus::Completed => "COMPLETED",
        ConversationStatus::Abandoned => "ABANDONED",
    }
}

/// A status from its contract name (any case).
pub fn parse_status(raw: &str) -> Option<ConversationStatus> {
    match raw.trim().to_ascii_uppercase().as_str() {
        "ACTIVE" => Some(ConversationStatus::Active),
        "COMPLETED" => Some(ConversationStatus::Completed),
        "ABANDONED" => Some(ConversationStatus::Abandoned),
        _ => None,
    }
}

/// Appends `cell` to `out` as one RFC 4180 field: quoted when it holds a comma, a quote, a
/// line break or edge spaces, quotes doubled.
fn push_field(out: &mut String, cell: &str) {
    let quote =
        cell.contains([',', '"', '\r', '\n']) || cell.starts_with(' ') || cell.ends_with(' ');
    if quote {
        out.push('"');
        out.push_str(&cell.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(cell);
    }
}

/// Appends one record (fields and CRLF).
fn push_record<'a>(out: &mut String, cells: impl IntoIterator<Item = &'a str>) {
    for (i, cell) in cells.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_field(out, cell);
    }
    out.push_str("\r\n");
}

/// What a visitor typed, made safe to open in a spreadsheet: a cell that a spreadsheet would
/// run as a formula (starting `=`, `+`, `-`, `@`, a tab or a carriage return) gets a leading
/// `'`, unless it is a plain number such as `-12.5`.
pub fn neutralise(cell: &str) -> std::borrow::Cow<'_, str> {
    let risky = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if risky && cell.parse::<f64>().is_err() {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

/// The text of an answer: a string as is, anything else as JSON, nothing when absent.
fn answer_text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The header line.
pub fn header(fields: &[String]) -> String {
    let mut out = String::new();
    push_record(
        &mut out,
        FIXED_COLUMNS
            .iter()
            .copied()
            .chain(fields.iter().map(String::as_str)),
    );
    out
}

/// One conversation's line.
pub fn row(conv: &conversation::Model, fields: &[String]) -> String {
    let answers = conv.state.get("answers");
    let mut cells = vec![
        conv.id.to_string(),
        status_name(conv.status).to_owned(),
        time(conv.started_at),
        conv.ended_at.map(time).unwrap_or_default(),
        conv.version.to_string(),
    ];
    for field in fields {
        let text = answer_text(answers.and_then(|a| a.get(field)));
        cells.push(neutralise(&text).into_owned());
    }
    let mut out = String::new();
    push_record(&mut out, cells.iter().map(String::as_str));
    out
}

/// One page of the export: conversations of `bot_id` matching `filter`, oldest first, after
/// the `(started_at, id)` of the last row of the previous page.
pub async fn export_page(
    db: &Db,
    bot_id: Uuid,
    filter: &ResultsFilter,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> ApiResult<Vec<conversation::Model>> {
    let mut q = conversation::Entity::find()
        .filter(conversation::Column::BotId.eq(bot_id))
        .filter(filter.condition());
    if let Some((at, id)) = after {
        // The `>=` bound repeats what the disjunction implies so that PostgreSQL starts the
        // page at `at` in the (bot_id, started_at) index: with the disjunction alone it walks
        // the bot's index from its first entry on every page (a filter, not an index bound),
        // and the export grows as n² (SQLite finds the bound either way).
        q = q.filter(conversation::Column::StartedAt.gte(at)).filter(
            Condition::any()
                .add(conversation::Column::StartedAt.gt(at))
                .add(
                    Condition::all()
                        .add(conversation::Column::StartedAt.eq(at))
                        .add(conversation::Column::Id.gt(id)),
                ),
        );
    }
    Ok(q.order_by_asc(conversation::Column::StartedAt)
        .order_by_asc(conversation::Column::Id)
        .limit(EXPORT_PAGE)
        .all(db.conn())
        .await?)
}

/// The whole export as a stream of chunks (the header, then a page of rows at a time). An
/// error after the first chunk can only cut the body short, so it is logged.
pub fn export(
    db: Db,
    bot_id: Uuid,
    fields: Vec<String>,
    filter: ResultsFilter,
) -> impl futures_util::Stream<Item = Result<actix_web::web::Bytes, ApiError>> + 'static {
    async_stream::try_stream! {
        yield actix_web::web::Bytes::from(header(&fields));
        let mut after = None;
        loop {
            let page = export_page(&db, bot_id, &filter, after).await.inspect_err(|e| {
                tracing::error!(error.cause = ?e, bot.id = %bot_id, "results export cut short");
            })?;
            let Some(last) = page.last() else { break };
            after = Some((last.started_at, last.id));
            let full = page.len() as u64 == EXPORT_PAGE;
            let mut chunk = String::with_capacity(page.len() * 128);
            for conv in &page {
                chunk.push_str(&row(conv, &fields));
            }
            yield actix_web::web::Bytes::from(chunk);
            if !full {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_needed() {
        let mut out = String::new();
        push_record(
            &mut out,
            ["plain", "a,b", "say \"hi\"", "two\nlines", " edge", "é🙂"],
        );
        assert_eq!(
            out,
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\" edge\",é🙂\r\n"
        );
    }

    #[test]
    fn formulas_are_neutralised_but_numbers_are_not() {
        assert_eq!(neutralise("=1+1"), "'=1+1");
        assert_eq!(neutralise("+33 6 12"), "'+33 6 12");
        assert_eq!(neutralise("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(neutralise("-2+3"), "'-2+3");
        assert_eq!(neutralise("-12.5"), "-12.5");
        assert_eq!(neutralise("hello"), "hello");
    }
}
