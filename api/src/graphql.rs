//! The schema: one query, mutation and subscription struct per domain, merged; plus the
//! limits and the extension that gives every error a contract code.
use std::sync::Arc;

use async_graphql::dataloader::DataLoader;
use async_graphql::{
    MergedObject, MergedSubscription, Response, Schema, ServerError, ServerResult,
    ValidationResult, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest, NextSubscribe,
        NextValidation,
    },
    futures_util::stream::BoxStream,
    parser::types::ExecutableDocument,
};
use futures_util::StreamExt as _;

use crate::{
    accounts::{
        graphql::{AccountsMutation, AccountsQuery},
        loader::UserLoader,
    },
    apikeys::graphql::ApiKeysMutation,
    bots::graphql::{BotsMutation, BotsQuery},
    conversations::graphql::{
        ConversationsMutation, ConversationsQuery, ConversationsSubscription,
    },
    error::ensure_code,
    hot_cache::HotCache,
    state::AppState,
    webhooks::graphql::{DeliveriesQuery, WebhooksMutation, WebhooksQuery},
};

/// How deeply a query may nest its selections.
const MAX_DEPTH: usize = 16;

/// Every query of every domain.
#[derive(MergedObject, Default)]
pub struct Query(
    AccountsQuery,
    BotsQuery,
    WebhooksQuery,
    DeliveriesQuery,
    ConversationsQuery,
);

/// Every mutation of every domain.
#[derive(MergedObject, Default)]
pub struct Mutation(
    AccountsMutation,
    ApiKeysMutation,
    BotsMutation,
    WebhooksMutation,
    ConversationsMutation,
);

/// Every subscription of every domain.
#[derive(MergedSubscription, Default)]
pub struct Subscription(ConversationsSubscription);

/// The executable schema.
pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// Builds the schema; `state` is `None` only to print the SDL.
pub fn build_schema(state: Option<AppState>) -> AppSchema {
    let max_cost = state.as_ref().map_or_else(
        || crate::settings::Limits::default().max_query_cost,
        |s| s.settings.limits.max_query_cost,
    );
    let mut builder = Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_depth(MAX_DEPTH)
    .limit_complexity(max_cost)
    .limit_recursive_depth(64)
    .limit_directives(16)
    .extension(ParsedDocuments::default())
    .extension(ErrorCodes { max_cost });
    if let Some(state) = state {
        builder = builder
            .data(DataLoader::new(UserLoader(state.db.clone()), tokio::spawn))
            .data(state);
    }
    builder.finish()
}

/// The SDL that `schema.graphql` must equal.
pub fn sdl() -> String {
    build_schema(None).sdl()
}

/// Bytes of query text (a proxy for their parsed size) whose documents are kept.
const PARSED_CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Longer queries are parsed every time: they are rare, and would crowd out the rest.
const MAX_CACHED_QUERY: usize = 16 * 1024;

/// Parsed documents by query text. Clients send the same few operations again and again
/// (every visitor's `sendAnswer` is one text), and parsing is the largest part of a small
/// request's cost; a clone of the parsed document is far cheaper. Only documents that parsed
/// and passed the parse-time limits are kept, so a cached text passes them again unchanged;
/// validation still runs on every request, since it depends on the variables.
#[derive(Clone)]
struct ParsedDocuments(Arc<HotCache<String, ExecutableDocument>>);

impl Default for ParsedDocuments {
    fn default() -> Self {
        Self(Arc::new(HotCache::new(PARSED_CACHE_BYTES, None)))
    }
}

impl ExtensionFactory for ParsedDocuments {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(self.clone())
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for ParsedDocuments {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        if query.len() > MAX_CACHED_QUERY {
            return next.run(ctx, query, variables).await;
        }
        if let Some(document) = self.0.get(query) {
            return Ok(document);
        }
        let document = next.run(ctx, query, variables).await?;
        self.0.insert(query.to_owned(), document.clone());
        Ok(document)
    }
}

/// Puts `extensions.code` on errors raised by async-graphql itself, and makes its refusals
/// of costly queries name the limit.
struct ErrorCodes {
    max_cost: usize,
}

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes {
            max_cost: self.max_cost,
        })
    }
}

impl ErrorCodes {
    fn explain(&self, mut error: ServerError) -> ServerError {
        match error.message.as_str() {
            "Query is too complex." => {
                error.message = format!(
                    "the query costs more than the limit of {} (PARLEY_MAX_QUERY_COST): every \
                     field costs 1 and a list multiplies its fields by its page size (`first`); \
                     ask for smaller pages or fewer nested lists",
                    self.max_cost
                );
            }
            "Query is nested too deep." => {
                error.message =
                    format!("the query is nested deeper than the limit of {MAX_DEPTH} levels");
            }
            _ => {}
        }
        ensure_code(error)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        response.errors = response.errors.into_iter().map(ensure_code).collect();
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream)
            .map(|mut response| {
                response.errors = response.errors.into_iter().map(ensure_code).collect();
                response
            })
            .boxed()
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        next.run(ctx, query, variables).await.map_err(ensure_code)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx)
            .await
            .map_err(|errors| errors.into_iter().map(|e| self.explain(e)).collect())
    }
}
