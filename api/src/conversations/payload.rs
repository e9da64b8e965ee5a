//! The webhook body, exactly as the contract shows it: each answer at the top level, and a
//! `conversation` object with ids, times, answers, variables and the transcript.
use std::borrow::Borrow;

use chrono::SecondsFormat;
use entity::{bot, conversation, conversation_event};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::{Map, Value, json};

use crate::engine::State;

/// Event kinds, as stored and as sent.
pub mod kind {
    pub const BOT_MESSAGE: &str = "BOT_MESSAGE";
    pub const QUESTION: &str = "QUESTION";
    pub const VISITOR_MESSAGE: &str = "VISITOR_MESSAGE";
    pub const INVALID_ANSWER: &str = "INVALID_ANSWER";
    pub const ENDED: &str = "ENDED";
    pub const REDIRECT: &str = "REDIRECT";
}

/// Messages a payload carries at most: the latest ones. Whole transcripts would make stored
/// payloads grow with the square of a conversation's length.
pub const MAX_MESSAGES: usize = 100;

/// What a payload needs from the database besides the step's own events: the conversation's
/// latest stored events, in order (no more than a payload can hold), and its bot's name.
pub async fn stored(
    db: &impl ConnectionTrait,
    conv: &conversation::Model,
) -> Result<(Vec<conversation_event::Model>, String), DbErr> {
    // A conversation whose first step this is has nothing stored yet.
    let mut recent = if conv.last_seq == 0 {
        Vec::new()
    } else {
        conversation_event::Entity::find()
            .filter(conversation_event::Column::ConversationId.eq(conv.id))
            .order_by_desc(conversation_event::Column::Seq)
            .limit(MAX_MESSAGES as u64)
            .all(db)
            .await?
    };
    recent.reverse();
    let bot_name = crate::db::by_key(bot::Entity::find_by_id(conv.bot_id), db)
        .await?
        .map(|b| b.name)
        .unwrap_or_default();
    Ok((recent, bot_name))
}

/// The body of a webhook call made at this point of the conversation. Its transcript is
/// `stored` (the conversation's latest stored events in order, as [`stored`] reads them: it
/// may start after seq 1) followed by `new_events` (the step's own, not stored yet); the
/// payload keeps the last `MAX_MESSAGES` messages and says with `messages_truncated` whether
/// earlier ones exist.
pub fn build<S: Borrow<conversation_event::Model>>(
    conv: &conversation::Model,
    bot_name: &str,
    state: &State,
    stored: &[S],
    new_events: &[conversation_event::Model],
    callback_url: Option<&str>,
) -> Value {
    let mut messages: Vec<Value> = stored
        .iter()
        .map(Borrow::borrow)
        .chain(new_events)
        .filter_map(|e| {
            let from = match e.kind.as_str() {
                kind::VISITOR_MESSAGE => "visitor",
                kind::ENDED => return None,
                _ => "bot",
            };
            Some(json!({
                "seq": e.seq,
                "from": from,
                "text": e.text.clone().unwrap_or_default(),
                "at": e.at.to_rfc3339_opts(SecondsFormat::Millis, true),
            }))
        })
        .collect();
    let mut truncated = stored
        .first()
        .map(Borrow::borrow)
        .or(new_events.first())
        .is_some_and(|e| e.seq > 1);
    if messages.len() > MAX_MESSAGES {
        messages.drain(..messages.len() - MAX_MESSAGES);
        truncated = true;
    }
    let mut body: Map<String, Value> = state.answers.clone();
    body.insert(
        "conversation".into(),
        json!({
            "id": conv.id.to_string(),
            "bot_id": conv.bot_id.to_string(),
            "bot_name": bot_name,
            "account_id": conv.account_id.to_string(),
            "version": conv.version,
            "started_at": conv.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "answers": Value::Object(state.answers.clone()),
            "variables": Value::Object(state.variables.clone()),
            "messages": messages,
            "messages_truncated": truncated,
        }),
    );
    if let (Some(url), Some(Value::Object(conversation))) =
        (callback_url, body.get_mut("conversation"))
    {
        conversation.insert("callback_url".into(), Value::String(url.to_owned()));
    }
    Value::Object(body)
}
