//! Lifecycle events: conversation started, completed, abandoned, and a delivery failed. Each
//! is written to the outbox in the transaction of the change it reports, once per webhook of
//! the account that asked for its type, and then signed and retried like any delivery.
use chrono::{SecondsFormat, Utc};
use entity::{conversation, conversation_event, webhook};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait as _, QueryFilter, QuerySelect};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{conversations::payload, engine::state::State, error::ApiResult, webhooks::delivery};

/// Wire names of the event types (the body's `type`).
pub const CONVERSATION_STARTED: &str = "conversation.started";
pub const CONVERSATION_COMPLETED: &str = "conversation.completed";
pub const CONVERSATION_ABANDONED: &str = "conversation.abandoned";
pub const DELIVERY_FAILED: &str = "delivery.failed";
pub const WEBHOOK_DISABLED: &str = "webhook.disabled";

/// The webhooks of `account_id` that asked for `event`.
pub async fn subscribers(
    tx: &impl ConnectionTrait,
    account_id: Uuid,
    event: &str,
) -> ApiResult<Vec<Uuid>> {
    Ok(AccountHooks::query(tx, account_id, true)
        .await?
        .subscribers(event))
}

/// Whether a webhook of `account_id` asked for `event`.
pub async fn subscribed(
    tx: &impl ConnectionTrait,
    account_id: Uuid,
    event: &str,
) -> Result<bool, sea_orm::DbErr> {
    Ok(!AccountHooks::query(tx, account_id, true)
        .await?
        .subscribers(event)
        .is_empty())
}

/// Every webhook of an account, with the event types each asked for. A step reads them once
/// and learns from them both whether the webhooks its flow names still exist and which
/// webhooks take its lifecycle events: on SQLite every read in a step waits in the one
/// writer's line, so two or three lookups cost two or three times one.
pub struct AccountHooks(Vec<(Uuid, Option<Value>)>);

impl AccountHooks {
    /// Reads the webhooks of `account_id`.
    pub async fn read(tx: &impl ConnectionTrait, account_id: Uuid) -> ApiResult<Self> {
        Ok(Self::query(tx, account_id, false).await?)
    }

    /// The webhooks of `account_id`: all, or only those that asked for a lifecycle event.
    async fn query(
        tx: &impl ConnectionTrait,
        account_id: Uuid,
        subscribers_only: bool,
    ) -> Result<Self, sea_orm::DbErr> {
        let mut hooks = webhook::Entity::find_in_account(account_id);
        if subscribers_only {
            hooks = hooks.filter(webhook::Column::EventTypes.is_not_null());
        }
        Ok(Self(
            hooks
                .select_only()
                .column(webhook::Column::Id)
                .column(webhook::Column::EventTypes)
                .into_tuple()
                .all(tx)
                .await?,
        ))
    }

    /// Whether the account has the webhook `id`.
    pub fn contains(&self, id: Uuid) -> bool {
        self.0.iter().any(|(hook, _)| *hook == id)
    }

    /// Those that asked for `event`.
    pub fn subscribers(&self, event: &str) -> Vec<Uuid> {
        self.0
            .iter()
            .filter(|(_, types)| {
                types
                    .as_ref()
                    .and_then(Value::as_array)
                    .is_some_and(|list| list.iter().any(|t| t.as_str() == Some(event)))
            })
            .map(|(id, _)| *id)
            .collect()
    }
}

/// The body of an event.
pub fn body(event: &str, data: Value) -> Value {
    json!({
        "type": event,
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": data,
    })
}

/// Queues `event` for every webhook in `hooks`, inside the caller's transaction. Whether any
/// was queued (then wake the worker after the commit).
pub async fn enqueue(
    tx: &impl ConnectionTrait,
    account_id: Uuid,
    hooks: &[Uuid],
    conversation_id: Option<Uuid>,
    event: &str,
    data: Value,
) -> ApiResult<bool> {
    let rows = rows(account_id, hooks, conversation_id, event, data);
    for d in &rows {
        entity::delivery::Entity::insert(entity::delivery::ActiveModel::from(d.clone()))
            .exec_without_returning(tx)
            .await?;
    }
    Ok(!rows.is_empty())
}

/// The rows [`enqueue`] inserts, for a caller that inserts them with other writes (then wake
/// the worker after the commit when there are any).
pub fn rows(
    account_id: Uuid,
    hooks: &[Uuid],
    conversation_id: Option<Uuid>,
    event: &str,
    data: Value,
) -> Vec<entity::delivery::Model> {
    if hooks.is_empty() {
        return Vec::new();
    }
    let body = body(event, data);
    hooks
        .iter()
        .map(|&hook| delivery::unclaimed_row(account_id, hook, conversation_id, None, body.clone()))
        .collect()
}

/// The flow payload of a conversation (as a webhook block sends it), from what is stored plus
/// `new_events` not stored yet.
pub async fn conversation_data(
    tx: &impl ConnectionTrait,
    conv: &conversation::Model,
    state: &State,
    new_events: &[conversation_event::Model],
) -> ApiResult<Value> {
    let (stored, bot_name) = payload::stored(tx, conv).await?;
    Ok(payload::build(
        conv, &bot_name, state, &stored, new_events, None,
    ))
}
