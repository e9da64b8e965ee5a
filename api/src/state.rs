//! What every request handler shares.
use std::sync::Arc;

use async_graphql::Context;

use crate::{
    accounts::service::UserCache,
    apikeys::ApiKeys,
    auth::{password::Passwords, session::Sessions, token::TokenKeys},
    conversations::runtime::Runtime,
    db::Db,
    edge::{tarpit::Tarpit, ws::SocketCounter},
    error::ApiResult,
    limits::Limiters,
    settings::Settings,
    webhooks::delivery::Deliveries,
};

/// Shared state, put into the GraphQL schema's data once at start-up.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub keys: TokenKeys,
    pub settings: Arc<Settings>,
    pub deliveries: Arc<Deliveries>,
    pub runtime: Arc<Runtime>,
    pub passwords: Arc<Passwords>,
    pub sessions: Arc<Sessions>,
    /// API keys presented by callers.
    pub api_keys: Arc<ApiKeys>,
    pub limiters: Arc<Limiters>,
    pub users: Arc<UserCache>,
    /// Open WebSockets per client address.
    pub sockets: Arc<SocketCounter>,
    /// Refusals by the per-address and per-API-key request limits, held before they are
    /// answered.
    pub tarpit: Arc<Tarpit>,
}

impl AppState {
    /// Runs `write` to its end even if the request that asked for it goes away (its client
    /// gone, its deadline passed): what must follow a commit (what caches held is forgotten)
    /// is then never cut off after the commit.
    pub async fn to_the_end<T, F, Fut>(&self, write: F) -> ApiResult<T>
    where
        F: FnOnce(AppState) -> Fut,
        Fut: Future<Output = ApiResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(write(self.clone())).await?
    }
}

/// The shared state of a GraphQL request.
pub fn state<'a>(ctx: &Context<'a>) -> ApiResult<&'a AppState> {
    ctx.data::<AppState>().map_err(|e| {
        crate::error::ApiError::Internal(anyhow::anyhow!("app state missing: {}", e.message))
    })
}
