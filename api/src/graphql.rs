//! The schema: one query, mutation and subscription struct per domain, merged; plus the
//! limits and the extension that gives every error a contract code.
use std::sync::{Arc, OnceLock};

use async_graphql::dataloader::DataLoader;
use async_graphql::{
    MergedObject, MergedSubscription, Response, Schema, ServerError, ServerResult,
    ValidationResult, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest, NextSubscribe,
        NextValidation,
    },
    futures_util::stream::BoxStream,
    parser::types::{DocumentOperations, ExecutableDocument},
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
/// and passed the parse-time limits are kept, so a cached text passes them again unchanged.
///
/// Validation depends on the variables (their values are checked against the arguments they
/// fill, and a page size from a variable counts in the query's cost), so it runs on every
/// request, except for a document of one operation that declares no variable: then nothing
/// but the text decides, and the first successful validation stands for the text (in a
/// profile of `{ me { id } }` validation was 8 % of the server's CPU).
#[derive(Clone)]
struct ParsedDocuments(Arc<HotCache<String, Parsed>>);

/// A cached document, and its validation once one succeeded (variable-free documents only).
#[derive(Clone)]
struct Parsed {
    document: ExecutableDocument,
    validated: Option<Arc<OnceLock<ValidationResult>>>,
}

impl Parsed {
    fn new(document: ExecutableDocument) -> Self {
        let variable_free = matches!(
            &document.operations,
            DocumentOperations::Single(op) if op.node.variable_definitions.is_empty()
        );
        Self {
            validated: variable_free.then(Default::default),
            document,
        }
    }
}

impl Default for ParsedDocuments {
    fn default() -> Self {
        Self(Arc::new(HotCache::new(PARSED_CACHE_BYTES, None)))
    }
}

impl ExtensionFactory for ParsedDocuments {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ParsedFor {
            cache: self.0.clone(),
            validated: OnceLock::new(),
        })
    }
}

/// [`ParsedDocuments`] for one request: where its document's validation is kept, if it may be.
struct ParsedFor {
    cache: Arc<HotCache<String, Parsed>>,
    validated: OnceLock<Arc<OnceLock<ValidationResult>>>,
}

#[async_graphql::async_trait::async_trait]
impl Extension for ParsedFor {
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
        let parsed = match self.cache.get(query) {
            Some(parsed) => parsed,
            None => {
                let parsed = Parsed::new(next.run(ctx, query, variables).await?);
                self.cache.insert(query.to_owned(), parsed.clone());
                parsed
            }
        };
        if let Some(validated) = parsed.validated {
            let _ = self.validated.set(validated);
        }
        Ok(parsed.document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let Some(validated) = self.validated.get() else {
            return next.run(ctx).await;
        };
        if let Some(result) = validated.get() {
            return Ok(*result);
        }
        // Only a success is kept: a refusal is rare, and answered again in full.
        let result = next.run(ctx).await?;
        let _ = validated.set(result);
        Ok(result)
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
