//! The delivery log as the webhooks page reads it: deliveries, their attempts, and the sample
//! payload of a test send.
use entity::Role;

use super::*;
use crate::webhooks::service::find_webhook;

/// The contract's payload shape with placeholder answers, for `testWebhook`.
pub fn sample_payload(hook: &webhook::Model) -> Value {
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let answers = json!({ "email": "jo@example.com", "phone_number": "+33 6 12 34 56 78" });
    json!({
        "email": "jo@example.com",
        "phone_number": "+33 6 12 34 56 78",
        "conversation": {
            "id": "00000000-0000-0000-0000-000000000000",
            "bot_id": "00000000-0000-0000-0000-000000000000",
            "bot_name": "Sample bot",
            "account_id": hook.account_id.to_string(),
            "started_at": now,
            "answers": answers,
            "variables": answers,
            "messages": [
                { "seq": 1, "from": "bot", "text": "Hi! What is your email?", "at": now },
                { "seq": 2, "from": "visitor", "text": "jo@example.com", "at": now }
            ],
            "test": true
        }
    })
}

/// A delivery with the viewer's role.
pub struct DeliveryView {
    pub delivery: delivery::Model,
    pub role: Role,
}

/// A delivery the viewer may see with at least `at_least`, or NOT_FOUND.
pub async fn find_delivery(
    db: &Db,
    viewer: Uuid,
    id: Uuid,
    at_least: Role,
) -> ApiResult<DeliveryView> {
    let d = delivery::Entity::find_by_id(id)
        .one(db.conn())
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    let view = find_webhook(db.conn(), viewer, d.webhook_id, at_least)
        .await
        .map_err(|e| e.not_found_as("delivery"))?;
    Ok(DeliveryView {
        delivery: d,
        role: view.role,
    })
}

/// A page of a webhook's deliveries, newest first, after the cursor `after` (a delivery id).
pub async fn list_deliveries(
    db: &Db,
    webhook_id: Uuid,
    first: u64,
    after: Option<Uuid>,
    status: Option<DeliveryStatus>,
) -> ApiResult<(Vec<delivery::Model>, bool)> {
    let mut q = delivery::Entity::find()
        .filter(delivery::Column::WebhookId.eq(webhook_id))
        .order_by_desc(delivery::Column::Id);
    if let Some(after) = after {
        q = q.filter(delivery::Column::Id.lt(after));
    }
    if let Some(status) = status {
        q = q.filter(delivery::Column::Status.eq(status));
    }
    let mut rows = q.limit(first + 1).all(db.conn()).await?;
    let more = rows.len() as u64 > first;
    rows.truncate(first as usize);
    Ok((rows, more))
}

/// The attempts of a delivery, oldest first.
pub async fn attempts(db: &Db, delivery_id: Uuid) -> ApiResult<Vec<delivery_attempt::Model>> {
    Ok(delivery_attempt::Entity::find()
        .filter(delivery_attempt::Column::DeliveryId.eq(delivery_id))
        .order_by_asc(delivery_attempt::Column::N)
        .limit(crate::pagination::MAX_LIST)
        .all(db.conn())
        .await?)
}
