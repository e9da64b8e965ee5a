//! GraphQL surface of the webhooks page: thin resolvers over `service`.
use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};
use entity::Role;
use uuid::Uuid;

use super::service::{self, HeaderEntry, WebhookSpec, WebhookView};
use crate::{
    accounts::AccountAccess,
    auth::viewer,
    error::ApiError,
    ids::{parse_id, to_id},
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

/// A webhook's configuration.
#[derive(InputObject)]
pub struct WebhookInput {
    name: String,
    url: String,
    headers: Option<Vec<HeaderInput>>,
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
    async fn id(&self) -> ID {
        to_id(self.0.webhook.id)
    }
    async fn name(&self) -> &str {
        &self.0.webhook.name
    }
    async fn url(&self) -> &str {
        &self.0.webhook.url
    }
    /// Sent with every call; values are masked for MEMBERs.
    async fn headers(&self) -> Vec<Header> {
        let show = self.can_see_secrets();
        self.0
            .headers()
            .into_iter()
            .map(|h| Header {
                name: h.name,
                value: if show { h.value } else { MASK.into() },
            })
            .collect()
    }
    /// The current Standard Webhooks secret (`whsec_…`); masked for MEMBERs.
    async fn signing_secret(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        if !self.can_see_secrets() {
            return Ok(MASK.into());
        }
        let st = state(ctx)?;
        let secrets = service::active_secrets(st.db.conn(), self.0.webhook.id).await?;
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
        match service::find_webhook(st.db.conn(), me, id, Role::Member).await {
            Ok(view) => Ok(Some(Webhook(view))),
            Err(ApiError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
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
        let allow = st.settings.allow_private_webhooks;
        Ok(Webhook(
            service::create_webhook(&st.db, allow, viewer(ctx)?, account_id, input.into()).await?,
        ))
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
        Ok(Webhook(
            service::update_webhook(&st.db, allow, viewer(ctx)?, id, input.into()).await?,
        ))
    }

    /// Deletes a webhook (ADMIN); CONFLICT while a draft or published flow uses it.
    async fn delete_webhook(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let st = state(ctx)?;
        let id = parse_id(&id, "webhook")?;
        Ok(service::delete_webhook(&st.db, viewer(ctx)?, id).await?)
    }

    /// A new signing secret; the previous one keeps signing for 24 hours (ADMIN).
    async fn rotate_webhook_secret(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Webhook> {
        let st = state(ctx)?;
        let id = parse_id(&id, "webhook")?;
        Ok(Webhook(
            service::rotate_secret(&st.db, viewer(ctx)?, id).await?,
        ))
    }
}
