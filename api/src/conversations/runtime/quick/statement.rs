//! PostgreSQL: the one statement that writes quick turns together.
//!
//! The turns, their events and their deliveries travel as one array per column, in
//! PostgreSQL's binary format, and the statement reads them with `unnest`. They used to travel
//! as three JSON documents read with `jsonb_to_recordset`: parsing those documents (every id
//! and timestamp as text, every object's keys sorted) and building them here were a fifth of
//! PostgreSQL's time and a tenth of the server's in a profile of starts that queue a webhook.
//! Only the JSON columns (a conversation's state, a delivery's payload, an event's input) are
//! still JSON text, as their `jsonb` columns need.
use std::{collections::HashMap, sync::OnceLock};

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveEnum as _, DatabaseConnection, DbErr,
    sqlx::{self, Row as _, postgres::PgRow},
};
use uuid::Uuid;

use super::QuickWrite;
use crate::db::query_err;

/// What the statement says of one turn.
#[derive(Clone)]
pub(super) struct Said {
    /// A lifecycle event of the turn that a webhook asked for (then nothing was written).
    pub(super) blocked: Option<String>,
    /// A start's bot version is still the published one (or it is no start).
    pub(super) current: bool,
    /// Its events inserted.
    pub(super) events: i64,
    /// Its deliveries inserted.
    pub(super) deliveries: i64,
}

/// Writes `turns` with one statement; what it says of each.
///
/// The new rows are inserted, each only if its bot's published version is still the one it
/// starts on; the others are updated, each only if the row still holds what its turn expects;
/// either only if no webhook of the account asked for one of the turn's lifecycle events (as
/// the full step reads them in its transaction); the events and deliveries of the rows written
/// are inserted, and no others. The statement's text depends on the batch's [`Shape`], never
/// on its number of turns (each shape prepared once per connection).
pub(super) async fn write<'a>(
    pool: &DatabaseConnection,
    turns: impl Iterator<Item = &'a QuickWrite>,
) -> Result<HashMap<Uuid, Said>, DbErr> {
    let (columns, shape) = Columns::of(turns).map_err(|e| DbErr::Json(e.to_string()))?;
    if columns.id.is_empty() {
        // No shape writes nothing (`stored` would have no part).
        return Ok(HashMap::new());
    }
    let rows = columns
        .bind(sqlx::query(shape.sql()))
        .fetch_all(pool.get_postgres_connection_pool())
        .await
        .map_err(query_err)?;
    rows.iter().map(said).collect()
}

fn said(row: &PgRow) -> Result<(Uuid, Said), DbErr> {
    let get = || -> Result<_, sqlx::Error> {
        Ok((
            row.try_get("id")?,
            Said {
                blocked: row.try_get("blocked")?,
                current: row.try_get("current")?,
                events: row.try_get("events")?,
                deliveries: row.try_get("deliveries")?,
            },
        ))
    };
    get().map_err(query_err)
}

/// Which parts of the statement a batch needs: a part with nothing to write still costs
/// PostgreSQL its setup on every execution (each `INSERT` or `UPDATE` opens its table and
/// every index of it), so a batch of starts has no `UPDATE` and a batch of answers no
/// `INSERT` of conversations or deliveries. Each shape is its own text, prepared once per
/// connection.
#[derive(Clone, Copy)]
struct Shape {
    /// Some turns update their conversation (answers).
    moves: bool,
    /// Some turns insert theirs (starts).
    creates: bool,
    /// Some turns queue deliveries.
    queues: bool,
    /// Some turns take a sync call's result ([`crate::webhooks::delivery::Settled`]).
    settles: bool,
}

impl Shape {
    fn index(self) -> usize {
        usize::from(self.moves)
            | usize::from(self.creates) << 1
            | usize::from(self.queues) << 2
            | usize::from(self.settles) << 3
    }

    /// The statement for this shape. `$1`–`$15`: the turns; `$16`–`$23`: their events;
    /// `$24`–`$37`: their deliveries; `$38`–`$49`: the sync calls' results they take (bound,
    /// if empty, also where the shape leaves them out). A turn's lifecycle events (`unless`)
    /// are their names joined by commas (none has one).
    fn sql(self) -> &'static str {
        static TEXTS: [OnceLock<String>; 16] = [const { OnceLock::new() }; 16];
        TEXTS[self.index()].get_or_init(|| self.text())
    }

    fn text(self) -> String {
        let mut sql = String::from(
            "WITH turns AS (\
               SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int4[], $5::text[], \
                 $6::int4[], $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[], \
                 $11::timestamptz[], $12::int4[], $13::timestamptz[], $14::text[], $15::text[]) \
                 AS t(id, account_id, bot_id, version, state, last_seq, status, \
                   visitor_token_hash, started_at, ended_at, updated_at, expect_seq, expect_at, \
                   unless, bot_name)), \
             said AS (\
               SELECT t.*, \
                 (SELECT u.event FROM unnest(string_to_array(t.unless, ',')) AS u(event) \
                   WHERE EXISTS (\
                     SELECT 1 FROM webhooks w WHERE w.account_id = t.account_id \
                       AND w.event_types IS NOT NULL \
                       AND w.event_types::jsonb @> jsonb_build_array(u.event)) \
                   LIMIT 1) AS blocked, \
                 ((t.expect_seq IS NOT NULL AND t.bot_name IS NULL) OR EXISTS (\
                   SELECT 1 FROM bots b WHERE b.id = t.bot_id AND b.account_id = t.account_id \
                     AND (t.expect_seq IS NOT NULL OR b.published_version = t.version) \
                     AND (t.bot_name IS NULL OR b.name = t.bot_name))) AS current \
               FROM turns t), \
             ready AS (SELECT * FROM said WHERE blocked IS NULL AND current), ",
        );
        let mut stored = Vec::new();
        if self.moves {
            sql.push_str(
                "moved AS (\
                   UPDATE conversations c SET state = t.state::jsonb, last_seq = t.last_seq, \
                     status = t.status, ended_at = t.ended_at, updated_at = t.updated_at, \
                     resume_at = NULL, resume_claimed_by = NULL, resume_claimed_until = NULL \
                   FROM ready t WHERE t.expect_seq IS NOT NULL AND c.id = t.id \
                     AND c.last_seq = t.expect_seq AND c.updated_at = t.expect_at \
                   RETURNING c.id), ",
            );
            stored.push("SELECT id FROM moved");
        }
        if self.creates {
            sql.push_str(
                "created AS (\
                   INSERT INTO conversations (id, account_id, bot_id, version, status, state, \
                     last_seq, visitor_token_hash, started_at, ended_at, updated_at) \
                   SELECT id, account_id, bot_id, version, status, state::jsonb, last_seq, \
                     visitor_token_hash, started_at, ended_at, updated_at \
                   FROM ready WHERE expect_seq IS NULL \
                   RETURNING id), ",
            );
            stored.push("SELECT id FROM created");
        }
        sql.push_str("stored AS (");
        sql.push_str(&stored.join(" UNION ALL "));
        sql.push_str(
            "), \
             written AS (\
               INSERT INTO conversation_events (conversation_id, seq, account_id, kind, text, \
                 input, at, block_id) \
               SELECT e.conversation_id, e.seq, e.account_id, e.kind, e.text, e.input::jsonb, \
                 e.at, e.block_id \
               FROM unnest($16::uuid[], $17::int4[], $18::uuid[], $19::text[], $20::text[], \
                 $21::text[], $22::timestamptz[], $23::text[]) \
                 AS e(conversation_id, seq, account_id, kind, text, input, at, block_id) \
               JOIN stored ON stored.id = e.conversation_id \
               RETURNING conversation_id)",
        );
        if self.queues {
            sql.push_str(
                ", queued AS (\
                   INSERT INTO deliveries (id, account_id, webhook_id, conversation_id, \
                     block_id, mode, status, payload, attempt_count, next_attempt_at, \
                     claimed_until, claimed_by, created_at, updated_at) \
                   SELECT d.id, d.account_id, d.webhook_id, d.conversation_id, d.block_id, \
                     d.mode, d.status, d.payload::jsonb, d.attempt_count, d.next_attempt_at, \
                     d.claimed_until, d.claimed_by, d.created_at, d.updated_at \
                   FROM unnest($24::uuid[], $25::uuid[], $26::uuid[], $27::uuid[], \
                     $28::text[], $29::text[], $30::text[], $31::text[], $32::int4[], \
                     $33::timestamptz[], $34::timestamptz[], $35::text[], $36::timestamptz[], \
                     $37::timestamptz[]) \
                     AS d(id, account_id, webhook_id, conversation_id, block_id, mode, status, \
                       payload, attempt_count, next_attempt_at, claimed_until, claimed_by, \
                       created_at, updated_at) \
                   JOIN stored ON stored.id = d.conversation_id \
                   RETURNING conversation_id)",
            );
        }
        if self.settles {
            // As `Settled::write`: only a delivery still there and not settled yet; its
            // attempt only with it.
            sql.push_str(
                ", settled AS (\
                   UPDATE deliveries d SET status = r.status, attempt_count = r.n, \
                     next_attempt_at = NULL, claimed_until = NULL, claimed_by = NULL, \
                     updated_at = r.at \
                   FROM (SELECT r.* FROM unnest($38::uuid[], $39::uuid[], $40::text[], \
                       $41::int4[], $42::timestamptz[], $43::uuid[], $44::timestamptz[], \
                       $45::int4[], $46::int4[], $47::text[], $48::text[], $49::text[]) \
                       AS r(conversation_id, delivery_id, status, n, at, attempt_id, \
                         attempt_at, response_status, duration_ms, error, response_body, \
                         notes) \
                     JOIN stored ON stored.id = r.conversation_id) r \
                   WHERE d.id = r.delivery_id AND d.attempt_count < r.n \
                   RETURNING r.attempt_id, r.delivery_id, r.n, r.attempt_at, \
                     r.response_status, r.duration_ms, r.error, r.response_body, r.notes), \
                 attempted AS (\
                   INSERT INTO delivery_attempts (id, delivery_id, n, at, response_status, \
                     duration_ms, error, response_body, notes) \
                   SELECT * FROM settled)",
            );
        }
        sql.push_str(" SELECT s.id, s.blocked, s.current, coalesce(w.n, 0) AS events, ");
        sql.push_str(if self.queues {
            "coalesce(q.n, 0) AS deliveries "
        } else {
            "0::int8 AS deliveries "
        });
        sql.push_str(
            "FROM said s \
             LEFT JOIN (SELECT conversation_id, count(*) AS n FROM written GROUP BY 1) w \
               ON w.conversation_id = s.id",
        );
        if self.queues {
            sql.push_str(
                " LEFT JOIN (SELECT conversation_id, count(*) AS n FROM queued GROUP BY 1) q \
                   ON q.conversation_id = s.id",
            );
        }
        sql
    }
}

type At = DateTime<Utc>;

/// The statement's parameters: one array per column, borrowed from the writes where the
/// column is text already.
#[derive(Default)]
struct Columns<'a> {
    // Turns.
    id: Vec<Uuid>,
    account_id: Vec<Uuid>,
    bot_id: Vec<Uuid>,
    version: Vec<i32>,
    state: Vec<String>,
    last_seq: Vec<i32>,
    status: Vec<String>,
    visitor_token_hash: Vec<&'a str>,
    started_at: Vec<At>,
    ended_at: Vec<Option<At>>,
    updated_at: Vec<At>,
    expect_seq: Vec<Option<i32>>,
    expect_at: Vec<Option<At>>,
    unless: Vec<String>,
    bot_name: Vec<Option<&'a str>>,
    // Events.
    e_conversation_id: Vec<Uuid>,
    e_seq: Vec<i32>,
    e_account_id: Vec<Uuid>,
    e_kind: Vec<&'a str>,
    e_text: Vec<Option<&'a str>>,
    e_input: Vec<Option<String>>,
    e_at: Vec<At>,
    e_block_id: Vec<Option<&'a str>>,
    // Deliveries.
    d_id: Vec<Uuid>,
    d_account_id: Vec<Uuid>,
    d_webhook_id: Vec<Uuid>,
    d_conversation_id: Vec<Option<Uuid>>,
    d_block_id: Vec<Option<&'a str>>,
    d_mode: Vec<String>,
    d_status: Vec<String>,
    d_payload: Vec<String>,
    d_attempt_count: Vec<i32>,
    d_next_attempt_at: Vec<Option<At>>,
    d_claimed_until: Vec<Option<At>>,
    d_claimed_by: Vec<Option<&'a str>>,
    d_created_at: Vec<At>,
    d_updated_at: Vec<At>,
    // Sync calls' results.
    s_conversation_id: Vec<Uuid>,
    s_delivery_id: Vec<Uuid>,
    s_status: Vec<String>,
    s_n: Vec<i32>,
    s_at: Vec<At>,
    s_attempt_id: Vec<Uuid>,
    s_attempt_at: Vec<At>,
    s_response_status: Vec<Option<i32>>,
    s_duration_ms: Vec<i32>,
    s_error: Vec<Option<&'a str>>,
    s_response_body: Vec<Option<&'a str>>,
    s_notes: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    /// The writes' columns, and the statement's shape they need.
    fn of(
        writes: impl Iterator<Item = &'a QuickWrite>,
    ) -> Result<(Self, Shape), serde_json::Error> {
        let mut c = Self::default();
        let mut shape = Shape {
            moves: false,
            creates: false,
            queues: false,
            settles: false,
        };
        for write in writes {
            shape.moves |= write.expect.is_some();
            shape.creates |= write.expect.is_none();
            shape.queues |= !write.deliveries.is_empty();
            shape.settles |= write.settle.is_some();
            let row = &write.row;
            c.id.push(row.id);
            c.account_id.push(row.account_id);
            c.bot_id.push(row.bot_id);
            c.version.push(row.version);
            c.state.push(serde_json::to_string(&row.state)?);
            c.last_seq.push(row.last_seq);
            c.status.push(row.status.to_value());
            c.visitor_token_hash.push(&row.visitor_token_hash);
            c.started_at.push(row.started_at);
            c.ended_at.push(row.ended_at);
            c.updated_at.push(row.updated_at);
            c.expect_seq.push(write.expect.map(|e| e.0));
            c.expect_at.push(write.expect.map(|e| e.1));
            c.unless.push(write.unless.join(","));
            c.bot_name.push(write.bot_name.as_deref());
            for e in &write.events {
                c.e_conversation_id.push(e.conversation_id);
                c.e_seq.push(e.seq);
                c.e_account_id.push(e.account_id);
                c.e_kind.push(&e.kind);
                c.e_text.push(e.text.as_deref());
                c.e_input
                    .push(e.input.as_ref().map(serde_json::to_string).transpose()?);
                c.e_at.push(e.at);
                c.e_block_id.push(e.block_id.as_deref());
            }
            for d in &write.deliveries {
                c.d_id.push(d.id);
                c.d_account_id.push(d.account_id);
                c.d_webhook_id.push(d.webhook_id);
                c.d_conversation_id.push(d.conversation_id);
                c.d_block_id.push(d.block_id.as_deref());
                c.d_mode.push(d.mode.to_value());
                c.d_status.push(d.status.to_value());
                c.d_payload.push(serde_json::to_string(&d.payload)?);
                c.d_attempt_count.push(d.attempt_count);
                c.d_next_attempt_at.push(d.next_attempt_at);
                c.d_claimed_until.push(d.claimed_until);
                c.d_claimed_by.push(d.claimed_by.as_deref());
                c.d_created_at.push(d.created_at);
                c.d_updated_at.push(d.updated_at);
            }
            if let Some(settled) = &write.settle {
                let a = settled.attempt();
                c.s_conversation_id.push(row.id);
                c.s_delivery_id.push(a.delivery_id);
                c.s_status.push(settled.status().to_value());
                c.s_n.push(a.n);
                c.s_at.push(settled.at());
                c.s_attempt_id.push(a.id);
                c.s_attempt_at.push(a.at);
                c.s_response_status.push(a.response_status);
                c.s_duration_ms.push(a.duration_ms);
                c.s_error.push(a.error.as_deref());
                c.s_response_body.push(a.response_body.as_deref());
                c.s_notes.push(a.notes.as_deref());
            }
        }
        Ok((c, shape))
    }

    /// Binds the columns in the statement's order.
    fn bind(
        self,
        q: sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments> {
        q.bind(self.id)
            .bind(self.account_id)
            .bind(self.bot_id)
            .bind(self.version)
            .bind(self.state)
            .bind(self.last_seq)
            .bind(self.status)
            .bind(self.visitor_token_hash)
            .bind(self.started_at)
            .bind(self.ended_at)
            .bind(self.updated_at)
            .bind(self.expect_seq)
            .bind(self.expect_at)
            .bind(self.unless)
            .bind(self.bot_name)
            .bind(self.e_conversation_id)
            .bind(self.e_seq)
            .bind(self.e_account_id)
            .bind(self.e_kind)
            .bind(self.e_text)
            .bind(self.e_input)
            .bind(self.e_at)
            .bind(self.e_block_id)
            .bind(self.d_id)
            .bind(self.d_account_id)
            .bind(self.d_webhook_id)
            .bind(self.d_conversation_id)
            .bind(self.d_block_id)
            .bind(self.d_mode)
            .bind(self.d_status)
            .bind(self.d_payload)
            .bind(self.d_attempt_count)
            .bind(self.d_next_attempt_at)
            .bind(self.d_claimed_until)
            .bind(self.d_claimed_by)
            .bind(self.d_created_at)
            .bind(self.d_updated_at)
            .bind(self.s_conversation_id)
            .bind(self.s_delivery_id)
            .bind(self.s_status)
            .bind(self.s_n)
            .bind(self.s_at)
            .bind(self.s_attempt_id)
            .bind(self.s_attempt_at)
            .bind(self.s_response_status)
            .bind(self.s_duration_ms)
            .bind(self.s_error)
            .bind(self.s_response_body)
            .bind(self.s_notes)
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::sqlx;

    use super::{Columns, Shape};
    use crate::{db::testing::migrated, settings::DatabaseKind};

    /// Every shape a batch can have: some turns update or insert their conversation (or both),
    /// with or without deliveries, with or without sync calls' results.
    fn shapes() -> Vec<Shape> {
        let mut shapes = Vec::new();
        for (moves, creates) in [(true, false), (false, true), (true, true)] {
            for queues in [false, true] {
                for settles in [false, true] {
                    shapes.push(Shape {
                        moves,
                        creates,
                        queues,
                        settles,
                    });
                }
            }
        }
        shapes
    }

    #[test]
    fn each_shape_has_its_own_text() {
        let texts: std::collections::HashSet<&str> = shapes().into_iter().map(Shape::sql).collect();
        assert_eq!(texts.len(), shapes().len());
    }

    /// PostgreSQL parses, plans and runs every shape against the migrated schema, bound as the
    /// writer binds it (typed arrays; here empty, so nothing is written). A shape that leaves
    /// out some parameters between others relies on those types: an untyped prepare could not
    /// tell them. (The statement is PostgreSQL's only: on SQLite there is nothing to check.)
    #[tokio::test]
    async fn postgresql_runs_every_shape_of_the_statement() {
        let (db, cleanup) = migrated().await;
        let mut refused = Vec::new();
        if db.kind() == DatabaseKind::Postgres {
            let pool = db.conn().get_postgres_connection_pool();
            for shape in shapes() {
                let query = Columns::default().bind(sqlx::query(shape.sql()));
                match query.fetch_all(pool).await {
                    Ok(rows) if rows.is_empty() => {}
                    Ok(rows) => refused.push(format!("{}: {} rows", shape.sql(), rows.len())),
                    Err(e) => refused.push(format!("{}: {e}", shape.sql())),
                }
            }
        }
        cleanup().await;
        assert!(refused.is_empty(), "{}", refused.join("\n"));
    }
}
