//! GraphQL surface of the webhooks page: thin resolvers over `service`.
use async_graphql::{
    Context, Enum, ID, InputObject, Object, SimpleObject,
    connection::{Connection, Edge},
};
use chrono::{DateTime, Utc};
use entity::Role;
use uuid::Uuid;

use super::{
    delivery::{self, DeliveryView},
    service::{self, HeaderEntry, WebhookSpec, WebhookView},
};
use crate::{
    accounts::AccountAccess,
    auth::viewer,
    error::{ApiError, Found as _},
    ids::{parse_id, to_id},
    lifecycle,
    state::state,
};

/// What MEMBERs see instead of header values and signing secrets.
const MASK: &str = "********";

/// A header sent with every call.
#[derive(SimpleObject)]
pub struct Header {
    name: String,
    value: String,
}

/// A header to configure.
#[derive(InputObject)]
pub struct HeaderInput {
    name: String,
    value: String,
}

/// A lifecycle event a webhook can be sent.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum EventType {
    /// `conversation.started`: a visitor started a conversation; `data` is the flow payload.
    ConversationStarted,
    /// `conversation.completed`: a conversation ended; `data` is the flow payload.
    ConversationCompleted,
    /// `conversation.abandoned`: a conversation idle for `PARLEY_ABANDON_AFTER_SECS`; `data`
    /// is the flow payload.
    ConversationAbandoned,
    /// `delivery.failed`: a delivery failed its last attempt; `data` names it.
    DeliveryFailed,
    /// `webhook.disabled`: another webhook of the account was disabled for failing; `data`
    /// has `webhook_id`, `disabled_at`, `reason`.
    WebhookDisabled,
}

impl EventType {
    /// The wire name (the body's `type`).
    pub fn wire(self) -> &'static str {
        match self {
            Self::ConversationStarted => lifecycle::CONVERSATION_STARTED,
            Self::ConversationCompleted => lifecycle::CONVERSATION_COMPLETED,
            Self::ConversationAbandoned => lifecycle::CONVERSATION_ABANDONED,
            Self::DeliveryFailed => lifecycle::DELIVERY_FAILED,
            Self::WebhookDisabled => lifecycle::WEBHOOK_DISABLED,
        }
    }

    fn from_wire(name: &str) -> Option<Self> {
        [
            Self::ConversationStarted,
            Self::ConversationCompleted,
            Self::ConversationAbandoned,
            Self::DeliveryFailed,
            Self::WebhookDisabled,
        ]
        .into_iter()
        .find(|t| t.wire() == name)
    }
}

/// A webhook's configuration.
#[derive(InputObject)]
pub struct WebhookInput {
    name: String,
    url: String,
    headers: Option<Vec<HeaderInput>>,
    /// Lifecycle events to send besides calls from flow blocks; none when absent.
    event_types: Option<Vec<EventType>>,
    /// Most deliveries the worker sends to it per second (1 to 1000, per instance); no limit
    /// when absent.
    max_per_second: Option<i32>,
}

impl From<WebhookInput> for WebhookSpec {
    fn from(i: WebhookInput) -> Self {
        Self {
            name: i.name,
            url: i.url,
            headers: i
                .headers
                .unwrap_or_default()
                .into_iter()
                .map(|h| HeaderEntry {
                    name: h.name,
                    value: h.value,
                })
                .collect(),
            event_types: i
                .event_types
                .unwrap_or_default()
                .into_iter()
                .map(EventType::wire)
                .collect(),
            max_per_second: i.max_per_second,
        }
    }
}

/// An endpoint of the webhooks page.
pub struct Webhook(pub WebhookView);

impl Webhook {
    fn can_see_secrets(&self) -> bool {
        self.0.role >= Role::Admin
    }
}

#[Object]
impl Webhook {
    /// When the webhook was disabled for failing (its deliveries are held until
    /// `enableWebhook`); null while enabled.
    async fn disabled_at(&self) -> Option<DateTime<Utc>> {
        self.0.webhook.disabled_at
    }
    /// Most deliveries sent to it per second (per instance); null: no limit.
    async fn max_per_second(&self) -> Option<i32> {
        self.0.webhook.max_per_second
    }
    /// Why it was disabled.
    async fn disabled_reason(&self) -> Option<&str> {
        self.0.webhook.disabled_reason.as_deref()
    }
    /// Lifecycle events sent to this webhook besides calls from flow blocks.
    async fn event_types(&self) -> Vec<EventType> {
        self.0
            .webhook
            .event_types
            .as_ref()
            .and_then(|v| v.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|t| t.as_str().and_then(EventType::from_wire))
                    .collect()
            })
            .unwrap_or_default()
    }
    async fn id(&self) -> ID {
        to_id(self.0.webhook.id)
    }
    async fn name(&self) -> &str {
        &self.0.webhook.name
    }
    /// The endpoint; MEMBERs see only its scheme, host and port (Slack- or Zapier-style URLs
    /// carry their secret in the path).
    async fn url(&self) -> String {
        if self.can_see_secrets() {
            self.0.webhook.url.clone()
        } else {
            origin_only(&self.0.webhook.url)
        }
    }
    /// Sent with every call; values are masked for MEMBERs.
    async fn headers(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Header>> {
        if !self.can_see_secrets() {
            return Ok(self
                .0
                .header_names()
                .into_iter()
                .map(|name| Header {
                    name,
                    value: MASK.into(),
                })
                .collect());
        }
        let st = state(ctx)?;
        Ok(self
            .0
            .headers(st.deliveries.secrets())?
            .into_iter()
            .map(|h| Header {
                name: h.name,
                value: h.value,
            })
            .collect())
    }
    /// The current Standard Webhooks secret (`whsec_…`); masked for MEMBERs.
    async fn signing_secret(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        if !self.can_see_secrets() {
            return Ok(MASK.into());
        }
        let st = state(ctx)?;
        let secrets =
            service::active_secrets(st.db.conn(), st.deliveries.secrets(), self.0.webhook.id)
                .await?;
        let current = secrets.first().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "webhook {} has no secret",
                self.0.webhook.id
            ))
        })?;
        Ok(current.as_str().to_owned())
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.webhook.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.webhook.updated_at
    }
    /// The delivery log, newest first.
    #[graphql(complexity = "crate::pagination::page_cost(first, child_complexity)")]
    async fn deliveries(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<DeliveryStatusGql>,
    ) -> async_graphql::Result<Connection<String, Delivery>> {
        let st = state(ctx)?;
        let first = crate::pagination::page_size(first)?;
        let after = crate::pagination::parse_cursor(after.as_deref())?;
        let (rows, more) = delivery::list_deliveries(
            &st.db,
            self.0.webhook.id,
            first,
            after,
            status.map(Into::into),
        )
        .await?;
        let mut page = Connection::new(after.is_some(), more);
        page.edges.extend(rows.into_iter().map(|d| {
            Edge::new(
                d.id.to_string(),
                Delivery(DeliveryView {
                    delivery: d,
                    role: self.0.role,
                }),
            )
        }));
        Ok(page)
    }
}

/// The webhooks of an account for `Account.webhooks`.
pub async fn account_webhooks(
    ctx: &Context<'_>,
    account_id: Uuid,
) -> async_graphql::Result<Vec<Webhook>> {
    let st = state(ctx)?;
    let role = AccountAccess::require(st.db.conn(), viewer(ctx)?, account_id, Role::Member).await?;
    let list = service::list_webhooks(&st.db, account_id).await?;
    Ok(list
        .into_iter()
        .map(|webhook| Webhook(WebhookView { webhook, role }))
        .collect())
}

/// Queries of the webhooks page.
#[derive(Default)]
pub struct WebhooksQuery;

#[Object]
impl WebhooksQuery {
    /// A webhook of an account the viewer belongs to; null for any other id.
    async fn webhook(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Webhook>> {
        let st = state(ctx)?;
        let me = viewer(ctx)?;
        let Ok(id) = parse_id(&id, "webhook") else {
            return Ok(None);
        };
        let view = service::find_webhook(st.db.conn(), me, id, Role::Member)
            .await
            .found()?;
        Ok(view.map(Webhook))
    }
}

/// Queries of the delivery log.
#[derive(Default)]
pub struct DeliveriesQuery;

#[Object]
impl DeliveriesQuery {
    /// A delivery of a webhook of an account the viewer belongs to; null for any other id.
    async fn delivery(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Delivery>> {
        let st = state(ctx)?;
        let me = viewer(ctx)?;
        let Ok(id) = parse_id(&id, "delivery") else {
            return Ok(None);
        };
        let view = delivery::find_delivery(&st.db, me, id, Role::Member)
            .await
            .found()?;
        Ok(view.map(Delivery))
    }
}

/// Mutations of the webhooks page.
#[derive(Default)]
pub struct WebhooksMutation;

#[Object]
impl WebhooksMutation {
    /// A new webhook with its own signing secret (ADMIN).
    async fn create_webhook(
        &self,
        ctx: &Context<'_>,
        account_id: ID,
        input: WebhookInput,
    ) -> async_graphql::Result<Webhook> {
        let st = state(ctx)?;
        let account_id = parse_id(&account_id, "account")?;
        let (viewer, input) = (viewer(ctx)?, input.into());
        let view = st
            .to_the_end(move |st| async move {
                let view = service::create_webhook(
                    &st.db,
                    &st.settings,
                    st.deliveries.secrets(),
                    viewer,
                    account_id,
                    input,
                )
                .await?;
                st.runtime.forget_webhooks();
                Ok(view)
            })
            .await?;
        Ok(Webhook(view))
    }

    /// Replaces a webhook's name, URL and headers (ADMIN).
    async fn update_webhook(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: WebhookInput,
    ) -> async_graphql::Result<Webhook> {
        let st = state(ctx)?;
        let id = parse_id(&id, "webhook")?;
        let allow = st.settings.allow_private_webhooks;
        let (viewer, input) = (viewer(ctx)?, input.into());
        let view = st
            .to_the_end(move |st| async move {
                let view = service::update_webhook(
                    &st.db,
                    st.deliveries.secrets(),
                    allow,
                    viewer,
                    id,
                    input,
                )
                .await?;
                st.deliveries.forget_endpoint(id);
                st.runtime.forget_webhooks();
                Ok(view)
            })
            .await?;
        Ok(Webhook(view))
    }

    /// Deletes a webhook (ADMIN); CONFLICT while a draft or published flow uses it.
    async fn delete_webhook(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let st = state(ctx)?;
        let id = parse_id(&id, "webhook")?;
        let viewer = viewer(ctx)?;
        let deleted = st
            .to_the_end(move |st| async move {
                let deleted = service::delete_webhook(&st.db, viewer, id).await?;
                st.deliveries.forget_endpoint(id);
                st.runtime.forget_webhooks();
                Ok(deleted)
            })
            .await?;
        Ok(deleted)
    }

    /// Sends a sample payload now and returns the recorded delivery (ADMIN).
    async fn test_webhook(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Delivery> {
        let st = state(ctx)?;
        let id = parse_id(&id, "webhook")?;
        let d = st.deliveries.test_webhook(viewer(ctx)?, id).await?;
        Ok(Delivery(DeliveryView {
            delivery: d,
            role: Role::Admin,
        }))
    }

    /// Turns a disabled webhook back on (ADMIN): the deliveries held meanwhile are sent.
    async fn enable_webhook(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Webhook> {
        let st = state(ctx)?;
        let id = parse_id(&id, "webhook")?;
        let view = service::enable_webhook(&st.db, viewer(ctx)?, id).await?;
        st.deliveries.forget_endpoint(id);
        st.deliveries.wake();
        Ok(Webhook(view))
    }

    /// Sends again every FAILED delivery of the webhook created at or after `since` (ADMIN);
    /// how many were queued. One already pending is not doubled.
    async fn recover_deliveries(
        &self,
        ctx: &Context<'_>,
        webhook_id: ID,
        since: DateTime<Utc>,
    ) -> async_graphql::Result<i32> {
        let st = state(ctx)?;
        let id = parse_id(&webhook_id, "webhook")?;
        let n = st.deliveries.recover(viewer(ctx)?, id, since).await?;
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    }

    /// Sends a delivery again now, as a new attempt (ADMIN).
    async fn redeliver(
        &self,
        ctx: &Context<'_>,
        delivery_id: ID,
    ) -> async_graphql::Result<Delivery> {
        let st = state(ctx)?;
        let id = parse_id(&delivery_id, "delivery")?;
        let d = st.deliveries.redeliver(viewer(ctx)?, id).await?;
        Ok(Delivery(DeliveryView {
            delivery: d,
            role: Role::Admin,
        }))
    }

    /// A new signing secret; the previous one keeps signing for 24 hours (ADMIN).
    async fn rotate_webhook_secret(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Webhook> {
        let st = state(ctx)?;
        let id = parse_id(&id, "webhook")?;
        let view =
            service::rotate_secret(&st.db, st.deliveries.secrets(), viewer(ctx)?, id).await?;
        st.deliveries.forget_endpoint(id);
        Ok(Webhook(view))
    }
}

/// How a webhook call was made.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "DeliveryMode", remote = "entity::delivery::DeliveryMode")]
pub enum DeliveryModeGql {
    Async,
    Sync,
    Test,
}

/// Where a delivery stands.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "DeliveryStatus", remote = "entity::delivery::DeliveryStatus")]
pub enum DeliveryStatusGql {
    Pending,
    Succeeded,
    Failed,
}

/// One HTTP attempt of a delivery.
#[derive(SimpleObject)]
pub struct DeliveryAttempt {
    at: DateTime<Utc>,
    response_status: Option<i32>,
    duration_ms: i32,
    error: Option<String>,
    /// The start of the response body (64 KiB at most).
    response_body: Option<String>,
    /// Attempt number, 1 for the first.
    n: i32,
    /// What the reply held that was skipped, such as unknown instructions, or why a 2xx reply
    /// of a sync call was not used at all (not a JSON object, or holding a NUL character).
    notes: Option<String>,
}

/// A webhook call: its payload, its state and every attempt.
pub struct Delivery(pub DeliveryView);

#[Object]
impl Delivery {
    async fn id(&self) -> ID {
        to_id(self.0.delivery.id)
    }
    async fn webhook(&self, ctx: &Context<'_>) -> async_graphql::Result<Webhook> {
        let st = state(ctx)?;
        let view = service::find_webhook(
            st.db.conn(),
            viewer(ctx)?,
            self.0.delivery.webhook_id,
            Role::Member,
        )
        .await?;
        Ok(Webhook(view))
    }
    async fn mode(&self) -> DeliveryModeGql {
        self.0.delivery.mode.into()
    }
    async fn status(&self) -> DeliveryStatusGql {
        self.0.delivery.status.into()
    }
    async fn conversation_id(&self) -> Option<ID> {
        self.0.delivery.conversation_id.map(to_id)
    }
    /// The JSON body sent on every attempt.
    async fn payload(&self) -> async_graphql::Json<serde_json::Value> {
        async_graphql::Json(self.0.delivery.payload.clone())
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.delivery.created_at
    }
    /// When a pending delivery is tried next.
    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.0.delivery.next_attempt_at
    }
    async fn attempt_count(&self) -> i32 {
        self.0.delivery.attempt_count
    }
    /// The `webhook-id` header of every attempt.
    async fn message_id(&self) -> String {
        delivery::message_id(self.0.delivery.id)
    }
    /// Oldest first (at most 1000).
    #[graphql(complexity = "crate::pagination::list_cost(10, child_complexity)")]
    async fn attempts(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<DeliveryAttempt>> {
        let st = state(ctx)?;
        Ok(delivery::attempts(&st.db, self.0.delivery.id)
            .await?
            .into_iter()
            .map(|a| DeliveryAttempt {
                at: a.at,
                response_status: a.response_status,
                duration_ms: a.duration_ms,
                error: a.error,
                response_body: a.response_body,
                n: a.n,
                notes: a.notes,
            })
            .collect())
    }
}

/// `scheme://host[:port]` of a URL, without path, query or credentials.
fn origin_only(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            match u.port() {
                Some(port) => format!("{}://{host}:{port}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            }
        }
        Err(_) => MASK.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::origin_only;

    #[test]
    fn a_masked_url_keeps_only_scheme_host_and_port() {
        assert_eq!(
            origin_only("https://hooks.slack.com/services/T0/B0/secret?x=1"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            origin_only("http://user:pw@10.0.0.1:8080/p"),
            "http://10.0.0.1:8080"
        );
    }
}
