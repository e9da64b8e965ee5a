//! Funnel stats of a bot: how many conversations started, completed and were abandoned, and
//! per block how many reached it and how many stopped there. Computed by SQL over the
//! conversations' `(bot_id, started_at)` index and the events' primary key.
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use entity::bot_version;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, Statement, Value,
};
use uuid::Uuid;

use crate::{
    bots::service::parse_stored_flow,
    db::Db,
    error::{ApiError, ApiResult},
    results::flow_order,
};

/// One block's funnel numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockCount {
    pub block_id: String,
    /// Conversations with at least one event from this block.
    pub reached: i64,
    /// Conversations not completed whose last event came from this block.
    pub dropped_off: i64,
}

/// A bot's funnel over conversations started in `[from, to)`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub started: i64,
    pub completed: i64,
    pub abandoned: i64,
    /// Conversations not completed whose events predate block tracking.
    pub dropped_off_unknown: i64,
    pub blocks: Vec<BlockCount>,
}

/// `sql` with `?` placeholders, numbered for PostgreSQL.
fn statement(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = if backend == DbBackend::Postgres {
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for ch in sql.chars() {
            if ch == '?' {
                n += 1;
                out.push_str(&format!("${n}"));
            } else {
                out.push(ch);
            }
        }
        out
    } else {
        sql.to_owned()
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// The funnel of `bot_id`; the caller has checked the viewer's access.
pub async fn bot_stats(
    db: &Db,
    bot_id: Uuid,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> ApiResult<Stats> {
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(ApiError::bad_input("`from` must be before `to`"));
    }
    let conn = db.conn();
    let backend = conn.get_database_backend();
    let mut cond = String::from("c.bot_id = ?");
    let mut values: Vec<Value> = vec![bot_id.into()];
    if let Some(from) = from {
        cond.push_str(" AND c.started_at >= ?");
        values.push(from.into());
    }
    if let Some(to) = to {
        cond.push_str(" AND c.started_at < ?");
        values.push(to.into());
    }
    let mut stats = Stats::default();

    let by_status = conn
        .query_all_raw(statement(
            backend,
            &format!(
                "SELECT c.status AS status, COUNT(*) AS n FROM conversations c WHERE {cond} \
                 GROUP BY c.status"
            ),
            values.clone(),
        ))
        .await?;
    for row in by_status {
        let status: String = row.try_get("", "status")?;
        let n: i64 = row.try_get("", "n")?;
        stats.started += n;
        match status.as_str() {
            "COMPLETED" => stats.completed += n,
            "ABANDONED" => stats.abandoned += n,
            _ => {}
        }
    }

    let reached = conn
        .query_all_raw(statement(
            backend,
            &format!(
                "SELECT e.block_id AS block_id, COUNT(DISTINCT e.conversation_id) AS n \
                 FROM conversations c JOIN conversation_events e ON e.conversation_id = c.id \
                 WHERE {cond} AND e.block_id IS NOT NULL GROUP BY e.block_id"
            ),
            values.clone(),
        ))
        .await?;
    let mut counts: HashMap<String, (i64, i64)> = HashMap::new();
    for row in reached {
        let block: String = row.try_get("", "block_id")?;
        let n: i64 = row.try_get("", "n")?;
        counts.entry(block).or_default().0 = n;
    }

    let dropped = conn
        .query_all_raw(statement(
            backend,
            &format!(
                "SELECT e.block_id AS block_id, COUNT(*) AS n FROM conversations c \
                 LEFT JOIN conversation_events e ON e.conversation_id = c.id AND e.seq = \
                 (SELECT MAX(e2.seq) FROM conversation_events e2 \
                  WHERE e2.conversation_id = c.id AND e2.block_id IS NOT NULL) \
                 WHERE {cond} AND c.status <> 'COMPLETED' GROUP BY e.block_id"
            ),
            values,
        ))
        .await?;
    for row in dropped {
        let block: Option<String> = row.try_get("", "block_id")?;
        let n: i64 = row.try_get("", "n")?;
        match block {
            Some(block) => counts.entry(block).or_default().1 = n,
            None => stats.dropped_off_unknown += n,
        }
    }

    // The latest published version's blocks first, in flow order (with zeros), then blocks
    // only older versions had.
    let latest = bot_version::Entity::find()
        .filter(bot_version::Column::BotId.eq(bot_id))
        .order_by_desc(bot_version::Column::Version)
        .one(conn)
        .await?;
    if let Some(latest) = latest {
        let flow = parse_stored_flow(&latest.flow)?;
        for i in flow_order(&flow) {
            let id = &flow.blocks[i].id;
            let (reached, dropped_off) = counts.remove(id).unwrap_or_default();
            stats.blocks.push(BlockCount {
                block_id: id.clone(),
                reached,
                dropped_off,
            });
        }
    }
    let mut rest: Vec<_> = counts.into_iter().collect();
    rest.sort();
    stats.blocks.extend(
        rest.into_iter()
            .map(|(block_id, (reached, dropped_off))| BlockCount {
                block_id,
                reached,
                dropped_off,
            }),
    );
    Ok(stats)
}
