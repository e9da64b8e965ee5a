//! SQLite: a quick answer's write as statements prepared in full.
//!
//! The writer sends such a write with its BEGIN and COMMIT in one call when nothing else
//! waits (see `crate::db::Db::write_counted`): one hop to SQLite's thread, where the same
//! write as a job of the writer takes one for each statement and two for the transaction.
use chrono::{DateTime, Utc};
use entity::{conversation, conversation_event};
use sea_orm::{DbBackend, DbErr, QueryTrait as _, Statement};

use super::super::turn::{events_insert, row_update};

/// The statements of an answer that updates `row` if the stored row still holds `expect`
/// (`last_seq`, `updated_at`) and appends `events`. The update returns the row's id only if
/// it applied, and the insert writes only if it did, so the rows returned say whether the
/// turn was written (one) or found its row changed (none: nothing written).
pub(super) fn answer(
    mut row: conversation::Model,
    expect: (i32, DateTime<Utc>),
    events: &[conversation_event::Model],
) -> Result<Vec<Statement>, DbErr> {
    let mut update = row_update(&mut row, false, Some(expect));
    update.query().returning_col(conversation::Column::Id);
    let mut statements = vec![update.build(DbBackend::Sqlite)];
    if !events.is_empty() {
        statements.push(if_changed(events_insert(events).build(DbBackend::Sqlite))?);
    }
    Ok(statements)
}

/// `insert` (`INSERT INTO … (…) VALUES (…), …`) as an insert of the same rows that writes
/// them only if the statement before it changed one row: `changes()` is the count of the
/// last statement that completed, and an `INSERT … SELECT` has not completed while it
/// filters its rows.
fn if_changed(insert: Statement) -> Result<Statement, DbErr> {
    let Some((into, rows)) = insert.sql.split_once(" VALUES ") else {
        return Err(DbErr::Custom(format!(
            "an insert without VALUES cannot be made conditional: {}",
            insert.sql
        )));
    };
    Ok(Statement {
        sql: format!("{into} SELECT * FROM (VALUES {rows}) WHERE changes() = 1"),
        ..insert
    })
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, SubsecRound as _, Utc};
    use entity::{bot, conversation, conversation_event};
    use sea_orm::{
        ActiveModelTrait as _, EntityTrait as _, IntoActiveModel as _, PaginatorTrait as _,
    };
    use uuid::Uuid;

    use crate::{
        conversations::payload::kind,
        db::{Db, testing::migrated},
        settings::DatabaseKind,
    };

    #[test]
    fn the_insert_keeps_its_rows_and_values_and_writes_only_after_a_change() {
        let values = sea_orm::Values(vec![1.into(), 2.into(), 3.into(), 4.into()]);
        let insert = sea_orm::Statement {
            sql: r#"INSERT INTO "t" ("a", "b") VALUES (?, ?), (?, ?)"#.to_owned(),
            values: Some(values.clone()),
            db_backend: sea_orm::DbBackend::Sqlite,
        };
        let guarded = super::if_changed(insert).expect("guarded");
        assert_eq!(
            guarded.sql,
            r#"INSERT INTO "t" ("a", "b") SELECT * FROM (VALUES (?, ?), (?, ?)) WHERE changes() = 1"#
        );
        assert_eq!(guarded.values, Some(values));
    }

    /// A conversation stored at `last_seq` 2, as of `at`.
    async fn stored_conversation(db: &Db, at: DateTime<Utc>) -> conversation::Model {
        let account = crate::db::testing::account(db, at).await;
        let bot = bot::Model {
            id: Uuid::now_v7(),
            account_id: account.id,
            name: "bot".into(),
            draft_flow: serde_json::json!({}),
            revision: 1,
            published_version: Some(1),
            appearance: None,
            allowed_origins: None,
            typing_delay_ms: 0,
            created_at: at,
            updated_at: at,
        };
        bot.clone()
            .into_active_model()
            .insert(db.conn())
            .await
            .expect("bot");
        let conversation = conversation::Model {
            id: Uuid::now_v7(),
            account_id: account.id,
            bot_id: bot.id,
            version: 1,
            status: conversation::ConversationStatus::Active,
            state: serde_json::json!({}),
            last_seq: 2,
            visitor_token_hash: "hash".into(),
            started_at: at,
            ended_at: None,
            updated_at: at,
            resume_at: None,
            resume_claimed_by: None,
            resume_claimed_until: None,
            callback_token_hash: None,
        };
        conversation
            .clone()
            .into_active_model()
            .insert(db.conn())
            .await
            .expect("conversation")
    }

    /// Runs an answer's statements through the writer as the quick path does: on a row that
    /// holds what the answer expects, then again, on the row the first write left.
    #[tokio::test]
    async fn an_answer_is_written_only_while_its_row_holds_what_it_expects() {
        let (db, cleanup) = migrated().await;
        if db.kind() != DatabaseKind::Sqlite {
            cleanup().await;
            return;
        }
        let now = Utc::now().trunc_subsecs(6);
        let stored = stored_conversation(&db, now).await;
        let later = now + chrono::Duration::seconds(1);
        let moved = conversation::Model {
            last_seq: 4,
            updated_at: later,
            ..stored.clone()
        };
        let events: Vec<_> = (3..=4)
            .map(|seq| conversation_event::Model {
                conversation_id: stored.id,
                seq,
                account_id: stored.account_id,
                kind: kind::BOT_MESSAGE.into(),
                text: Some(format!("message {seq}")),
                input: None,
                at: later,
                block_id: None,
            })
            .collect();
        let statements = super::answer(moved, (2, now), &events).expect("statements");
        let first = db.write_counted(statements.clone()).await.expect("sqlite");
        let second = db.write_counted(statements).await.expect("sqlite");
        let row = conversation::Entity::find_by_id(stored.id)
            .one(db.conn())
            .await
            .expect("read")
            .expect("row");
        let appended = conversation_event::Entity::find()
            .count(db.conn())
            .await
            .expect("count");
        cleanup().await;
        assert_eq!(first.expect("the first write"), 1, "written");
        assert_eq!(
            second.expect("the second write"),
            0,
            "found its row changed"
        );
        assert_eq!((row.last_seq, row.updated_at), (4, later));
        assert_eq!(appended, 2, "the second write appended nothing");
    }
}
