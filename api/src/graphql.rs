//! The schema: one query, mutation and subscription struct per domain, merged; plus the
//! limits and the extension that gives every error a contract code.
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_graphql::dataloader::DataLoader;
use async_graphql::{
    MergedObject, MergedSubscription, Request, Response, Schema, ServerError, ServerResult,
    ValidationResult, Value as ConstValue, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
        NextRequest, NextSubscribe, NextValidation,
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
    hot_cache::{HotCache, Weight},
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
/// fill, and a page size from a variable counts in the query's cost), and on nothing else but
/// the text: so a document of one operation keeps its last successful validation with the
/// variables it had, and a request with the same text and equal variables takes it as its
/// own. A document that declares no variable validates once for good (in a profile of
/// `{ me { id } }` validation was 8 % of the server's CPU); one with variables skips it when
/// they repeat, as every visitor's `startConversation` of a bot does (4 % of the server's CPU
/// in a profile of starts).
#[derive(Clone)]
struct ParsedDocuments(Arc<HotCache<DocumentText, Parsed>>);

/// A cached document, and its last successful validation (documents of one operation only,
/// named or not).
#[derive(Clone)]
struct Parsed {
    document: ExecutableDocument,
    validated: Option<Arc<Mutex<Option<Validated>>>>,
    /// It declares variables: without, a request's variables play no part in its validation.
    declares: bool,
}

/// A successful validation, and the operation name and variables it had: the name decides
/// whether a named operation's variables are checked at all.
struct Validated {
    operation: Option<String>,
    variables: Variables,
    result: ValidationResult,
}

impl Parsed {
    fn new(document: ExecutableDocument) -> Self {
        let only = match &document.operations {
            DocumentOperations::Single(op) => Some(op),
            DocumentOperations::Multiple(ops) if ops.len() == 1 => ops.values().next(),
            DocumentOperations::Multiple(_) => None,
        };
        let single = only.is_some();
        let declares = only.is_none_or(|op| !op.node.variable_definitions.is_empty());
        Self {
            validated: single.then(Default::default),
            declares,
            document,
        }
    }
}

/// Variables kept with a document's validation weigh at most this much (their text, about),
/// so that what the cache of documents holds stays bounded by its capacity in text (see
/// [`DocumentText`]). Larger ones are validated every time.
const KEPT_VARIABLES: usize = 256;

/// Whether `variables` weigh at most [`KEPT_VARIABLES`].
fn small(variables: &Variables) -> bool {
    /// Takes `n` from what is `left`, if there is that much.
    fn take(left: &mut usize, n: usize) -> bool {
        left.checked_sub(n).map(|rest| *left = rest).is_some()
    }
    fn fits(value: &ConstValue, left: &mut usize) -> bool {
        match value {
            ConstValue::String(s) => take(left, s.len()),
            ConstValue::Binary(b) => take(left, b.len()),
            ConstValue::Enum(n) => take(left, n.len()),
            ConstValue::List(items) => take(left, 8) && items.iter().all(|v| fits(v, left)),
            ConstValue::Object(fields) => {
                take(left, 8)
                    && fields
                        .iter()
                        .all(|(k, v)| take(left, k.len()) && fits(v, left))
            }
            ConstValue::Null | ConstValue::Number(_) | ConstValue::Boolean(_) => take(left, 8),
        }
    }
    let mut left = KEPT_VARIABLES;
    variables
        .iter()
        .all(|(k, v)| take(&mut left, k.len()) && fits(v, &mut left))
}

/// A document's text, as the cache's key: it weighs its bytes and the room for the
/// variables its validation may keep.
#[derive(Clone, PartialEq, Eq, Hash)]
struct DocumentText(String);

impl std::borrow::Borrow<str> for DocumentText {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Weight for DocumentText {
    fn weight(&self) -> u64 {
        u64::try_from(self.0.len() + KEPT_VARIABLES).unwrap_or(u64::MAX)
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
            operation: Mutex::new(None),
            validation: Mutex::new(None),
        })
    }
}

/// [`ParsedDocuments`] for one request: its document's validation, if known, or where to keep
/// it.
struct ParsedFor {
    cache: Arc<HotCache<DocumentText, Parsed>>,
    /// The operation the request names.
    operation: Mutex<Option<String>>,
    validation: Mutex<Option<Validation>>,
}

/// What one request knows of its document's validation.
enum Validation {
    /// Its text and variables passed before.
    Known(ValidationResult),
    /// To run, and to keep with this operation name and these variables if it passes.
    Keep(Arc<Mutex<Option<Validated>>>, Option<String>, Variables),
}

/// Locks `m`; a panic elsewhere while it was held leaves nothing half-written in these slots
/// (each is replaced whole), so a poisoned lock is taken as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_graphql::async_trait::async_trait]
impl Extension for ParsedFor {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        lock(&self.operation).clone_from(&request.operation_name);
        next.run(ctx, request).await
    }

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
                self.cache
                    .insert(DocumentText(query.to_owned()), parsed.clone());
                parsed
            }
        };
        if let Some(slot) = parsed.validated {
            let none = Variables::default();
            let variables = if parsed.declares { variables } else { &none };
            let operation = lock(&self.operation).take();
            let known = lock(&slot)
                .as_ref()
                .filter(|last| last.operation == operation && last.variables == *variables)
                .map(|last| last.result);
            *lock(&self.validation) = match known {
                Some(result) => Some(Validation::Known(result)),
                None if small(variables) => {
                    Some(Validation::Keep(slot, operation, variables.clone()))
                }
                None => None,
            };
        }
        Ok(parsed.document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let validation = lock(&self.validation).take();
        match validation {
            Some(Validation::Known(result)) => Ok(result),
            Some(Validation::Keep(slot, operation, variables)) => {
                // Only a success is kept: a refusal is rare, and answered again in full.
                let result = next.run(ctx).await?;
                *lock(&slot) = Some(Validated {
                    operation,
                    variables,
                    result,
                });
                Ok(result)
            }
            None => next.run(ctx).await,
        }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn variables_are_kept_up_to_their_weight_limit_and_no_further() {
        // "b" (1) + a string (KEPT_VARIABLES - 1) is exactly the limit.
        let at = Variables::from_json(json!({ "b": "x".repeat(KEPT_VARIABLES - 1) }));
        assert!(small(&at));
        let past = Variables::from_json(json!({ "b": "x".repeat(KEPT_VARIABLES) }));
        assert!(!small(&past));
        // Nested lists and objects count their contents, keys included.
        let nested = Variables::from_json(
            json!({ "b": [{ "k": "x".repeat(KEPT_VARIABLES / 2) }, { "k": "x".repeat(KEPT_VARIABLES / 2) }] }),
        );
        assert!(!small(&nested));
        assert!(small(&Variables::default()));
        assert!(small(&Variables::from_json(
            json!({ "botId": "0190b8a4-2c1e-7a3b-9f00-000000000000" })
        )));
    }
}
