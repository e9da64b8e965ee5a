//! GraphQL surface of API keys.
use async_graphql::{Context, ID, Object, SimpleObject};
use entity::api_key;

use crate::{
    accounts::graphql::RoleGql,
    auth::person,
    ids::{parse_id, to_id},
    state::state,
};

/// An API key as listed: never the key itself.
#[derive(SimpleObject)]
pub struct ApiKey {
    id: ID,
    name: String,
    role: RoleGql,
    /// The key's first characters (`pk_` and 7 more), to tell keys apart.
    prefix: String,
    created_at: chrono::DateTime<chrono::Utc>,
    /// When the key was last used, to the minute.
    last_used_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<api_key::Model> for ApiKey {
    fn from(m: api_key::Model) -> Self {
        Self {
            id: to_id(m.id),
            name: m.name,
            role: m.role.into(),
            prefix: m.prefix,
            created_at: m.created_at,
            last_used_at: m.last_used_at,
        }
    }
}

/// A new API key: `key` is shown this once, keep it safe.
#[derive(SimpleObject)]
pub struct CreatedApiKey {
    /// Send it as `Authorization: Bearer pk_…`.
    key: String,
    api_key: ApiKey,
}

/// `Account.apiKeys`: the keys that are not revoked (OWNER, ADMIN; not for a key).
pub async fn account_api_keys(
    ctx: &Context<'_>,
    account_id: uuid::Uuid,
) -> async_graphql::Result<Vec<ApiKey>> {
    let st = state(ctx)?;
    let list = super::list(&st.db, person(ctx)?, account_id).await?;
    Ok(list.into_iter().map(ApiKey::from).collect())
}

/// Mutations of API keys.
#[derive(Default)]
pub struct ApiKeysMutation;

#[Object]
impl ApiKeysMutation {
    /// A new key of the account (OWNER, ADMIN), with role ADMIN or MEMBER. The key acts as a
    /// member of this account only; it never manages members or keys.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        account_id: ID,
        name: String,
        role: RoleGql,
    ) -> async_graphql::Result<CreatedApiKey> {
        let st = state(ctx)?;
        let me = person(ctx)?;
        let account_id = parse_id(&account_id, "account")?;
        let new = super::create(&st.db, me, account_id, &name, role.into()).await?;
        Ok(CreatedApiKey {
            key: new.key,
            api_key: new.model.into(),
        })
    }

    /// Revokes a key (OWNER, ADMIN): it stops working at once, on every instance (within a
    /// second), and its open subscriptions end.
    async fn revoke_api_key(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let st = state(ctx)?;
        let me = person(ctx)?;
        let id = parse_id(&id, "API key")?;
        if super::revoke(&st.db, me, id).await?.is_some() {
            st.api_keys.forget_all();
            st.sessions.forget(id);
            st.runtime.bus().publish_access(id).await;
        }
        Ok(true)
    }
}
