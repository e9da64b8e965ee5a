//! The schema: one query, mutation and subscription struct per domain, merged; plus the
//! limits, and the one extension that caches parsed documents and their validation and
//! gives every error a contract code.
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_graphql::dataloader::DataLoader;
use async_graphql::{
    MergedObject, MergedSubscription, Name, Request, Response, Schema, ServerError, ServerResult,
    ValidationResult, Value as ConstValue, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
        NextRequest, NextSubscribe, NextValidation,
    },
    futures_util::stream::BoxStream,
    parser::{
        Positioned,
        types::{Directive, DocumentOperations, ExecutableDocument, Selection, SelectionSet},
    },
};
use async_graphql_value::Value as GqlValue;
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
    .extension(Hooks::new(max_cost));
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

/// Memory, about (see [`DocumentText`]), that the kept documents may take.
const PARSED_CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Longer queries are parsed every time: they are rare, and would crowd out the rest.
const MAX_CACHED_QUERY: usize = 16 * 1024;

/// The schema's one extension. It keeps parsed documents by query text: clients send the same
/// few operations again and again (every visitor's `sendAnswer` is one text), and parsing is
/// the largest part of a small request's cost; a clone of the parsed document is far cheaper.
/// Only documents that parsed and passed the parse-time limits are kept, so a cached text
/// passes them again unchanged.
///
/// Validation depends on the variables (their values are checked against the arguments they
/// fill, and a page size from a variable counts in the query's cost), on the operation named
/// (another operation's variables are not checked) and on nothing else but the text: so a
/// document of one operation keeps its last successful validation with the variables it had,
/// and a request with the same text and equal variables that names no operation, or the
/// document's, takes it as its own. A request that names another operation is validated in
/// full and fails anyway ("unknown operation"); nothing of it is kept. A document that
/// declares no variable validates once for good (in a profile of `{ me { id } }` validation
/// was 8 % of the server's CPU); one with variables skips it when they repeat, as every
/// visitor's `startConversation` of a bot does (4 % of the server's CPU in a profile of
/// starts).
///
/// The same extension puts `extensions.code` on errors raised by async-graphql itself, and
/// makes its refusals of costly queries name the limit. It is one extension, not one per
/// concern: async-graphql creates and drops each of them per request. It does not wrap the
/// resolution of fields ([`Extension::wraps_resolve`], patched into `vendor/async-graphql`), so
/// fields are resolved directly, not each through a chain of boxed futures.
struct Hooks {
    documents: Arc<HotCache<DocumentText, Parsed>>,
    /// The cost limit that a refusal names (`PARLEY_MAX_QUERY_COST`).
    max_cost: usize,
}

/// A cached document, and its last successful validation (documents of one operation only,
/// named or not).
#[derive(Clone)]
struct Parsed {
    document: ExecutableDocument,
    validated: Option<Arc<Mutex<Option<Validated>>>>,
    /// The name of its one operation, if it has one.
    name: Option<Name>,
    /// It declares variables: without, a request's variables play no part in its validation.
    declares: bool,
}

/// A successful validation and the variables it had.
struct Validated {
    variables: Variables,
    result: ValidationResult,
}

impl Parsed {
    fn new(document: ExecutableDocument) -> Self {
        let (only, name) = match &document.operations {
            DocumentOperations::Single(op) => (Some(op), None),
            DocumentOperations::Multiple(ops) if ops.len() == 1 => ops
                .iter()
                .next()
                .map_or((None, None), |(name, op)| (Some(op), Some(name.clone()))),
            DocumentOperations::Multiple(_) => (None, None),
        };
        let declares = only.is_none_or(|op| !op.node.variable_definitions.is_empty());
        Self {
            validated: only.is_some().then(Default::default),
            name,
            declares,
            document,
        }
    }
}

/// Variables kept with a document's validation take at most about this much memory (see
/// [`small`]), so that what the cache of documents holds stays bounded by its capacity (see
/// [`DocumentText`]). Larger ones are validated every time. A start's `{ b: <id>, v: null }`
/// takes about 1.3 KiB.
const KEPT_VARIABLES: usize = 2048;

/// Whether `variables` take at most [`KEPT_VARIABLES`] of memory, counted as they are held:
/// the map's first node, each value and each key in its own allocation, and their bytes.
fn small(variables: &Variables) -> bool {
    /// The map of variables' first node.
    const MAP: usize = 1024;
    /// A value as held (`ConstValue`), or a key (an `Arc<str>`) besides its bytes.
    const VALUE: usize = 80;
    const KEY: usize = 40;
    /// Takes `n` from what is `left`, if there is that much.
    fn take(left: &mut usize, n: usize) -> bool {
        left.checked_sub(n).map(|rest| *left = rest).is_some()
    }
    fn fits(value: &ConstValue, left: &mut usize) -> bool {
        take(left, VALUE)
            && match value {
                ConstValue::String(s) => take(left, s.len()),
                ConstValue::Binary(b) => take(left, b.len()),
                ConstValue::Enum(n) => take(left, KEY + n.len()),
                ConstValue::List(items) => items.iter().all(|v| fits(v, left)),
                ConstValue::Object(fields) => fields
                    .iter()
                    .all(|(k, v)| take(left, KEY + k.len()) && fits(v, left)),
                ConstValue::Null | ConstValue::Number(_) | ConstValue::Boolean(_) => true,
            }
    }
    let mut left = KEPT_VARIABLES;
    take(&mut left, MAP)
        && variables
            .iter()
            .all(|(k, v)| take(&mut left, KEY + k.len()) && fits(v, &mut left))
}

/// A document's text, as the cache's key, with what its entry weighs: about the memory it
/// takes (see [`parsed_size`]) and the room for the variables its validation may keep. A
/// parsed document takes far more than its text (a field selection, two bytes of text, is
/// held in about two hundred), so weighing the text alone let small texts hold a hundred
/// times the cache's capacity.
#[derive(Clone)]
struct DocumentText {
    text: String,
    weight: u64,
}

impl DocumentText {
    fn new(text: &str, document: &ExecutableDocument) -> Self {
        let size = parsed_size(text.len(), document).saturating_add(KEPT_VARIABLES);
        Self {
            text: text.to_owned(),
            weight: u64::try_from(size).unwrap_or(u64::MAX),
        }
    }
}

// Equal and hashed as the text alone, as `Borrow<str>` requires: entries are looked up by it.
impl PartialEq for DocumentText {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for DocumentText {}

impl std::hash::Hash for DocumentText {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl std::borrow::Borrow<str> for DocumentText {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl Weight for DocumentText {
    fn weight(&self) -> u64 {
        self.weight
    }
}

/// What one node of a parsed document (a selection, an argument, a value, a directive, a
/// variable's definition) takes in memory, at most about: a field selection is held in about
/// 190 bytes, and its name in an allocation of its own.
const NODE_BYTES: usize = 256;

/// Walks every node of a document: `node` once for each operation, fragment, selection,
/// directive, argument and variable definition, and `value` for each argument's value and
/// variable's default (whose items are `value`'s to walk). The size estimate and the NUL
/// check both read a document whole, once, when it is parsed.
struct Walk<'a> {
    node: &'a mut dyn FnMut(),
    value: &'a mut dyn FnMut(&GqlValue),
}

impl Walk<'_> {
    fn arguments(&mut self, args: &[(Positioned<Name>, Positioned<GqlValue>)]) {
        for (_, v) in args {
            (self.node)();
            (self.value)(&v.node);
        }
    }

    fn directives(&mut self, ds: &[Positioned<Directive>]) {
        for d in ds {
            (self.node)();
            self.arguments(&d.node.arguments);
        }
    }

    fn set(&mut self, s: &SelectionSet) {
        for item in &s.items {
            (self.node)();
            match &item.node {
                Selection::Field(f) => {
                    self.arguments(&f.node.arguments);
                    self.directives(&f.node.directives);
                    self.set(&f.node.selection_set.node);
                }
                Selection::FragmentSpread(f) => self.directives(&f.node.directives),
                Selection::InlineFragment(f) => {
                    self.directives(&f.node.directives);
                    self.set(&f.node.selection_set.node);
                }
            }
        }
    }

    fn document(&mut self, document: &ExecutableDocument) {
        for (_, op) in document.operations.iter() {
            let op = &op.node;
            (self.node)();
            for d in &op.variable_definitions {
                (self.node)();
                self.directives(&d.node.directives);
                if let Some(default) = &d.node.default_value {
                    // A copy, once per document parsed: the parser's two value types are
                    // walked alike.
                    (self.value)(&default.node.clone().into_value());
                }
            }
            self.directives(&op.directives);
            self.set(&op.selection_set.node);
        }
        for f in document.fragments.values() {
            (self.node)();
            self.directives(&f.node.directives);
            self.set(&f.node.selection_set.node);
        }
    }
}

/// About how much memory `document`, parsed from `text_len` bytes, takes.
fn parsed_size(text_len: usize, document: &ExecutableDocument) -> usize {
    fn value(v: &GqlValue) -> usize {
        1 + match v {
            GqlValue::List(items) => items.iter().map(value).sum(),
            GqlValue::Object(fields) => fields.values().map(value).sum(),
            _ => 0,
        }
    }
    let (mut nodes, mut values) = (0usize, 0usize);
    Walk {
        node: &mut || nodes += 1,
        value: &mut |v| values += value(v),
    }
    .document(document);
    text_len.saturating_add(NODE_BYTES.saturating_mul(nodes + values))
}

/// Whether a string literal of `document` holds the NUL character (see [`crate::nul`]).
fn document_holds_nul(document: &ExecutableDocument) -> bool {
    fn value(v: &GqlValue) -> bool {
        match v {
            GqlValue::String(s) => s.contains('\0'),
            GqlValue::List(items) => items.iter().any(value),
            GqlValue::Object(fields) => fields.values().any(value),
            _ => false,
        }
    }
    let mut found = false;
    Walk {
        node: &mut || {},
        value: &mut |v| found = found || value(v),
    }
    .document(document);
    found
}

/// Whether a string or a key of `v`, a request's variable, holds the NUL character.
fn variable_holds_nul(v: &ConstValue) -> bool {
    match v {
        ConstValue::String(s) => s.contains('\0'),
        ConstValue::List(items) => items.iter().any(variable_holds_nul),
        ConstValue::Object(fields) => fields
            .iter()
            .any(|(name, v)| name.contains('\0') || variable_holds_nul(v)),
        _ => false,
    }
}

/// The refusal of a request holding the NUL character in `place`.
fn nul_refused(place: &str) -> ServerError {
    ensure_code(ServerError::new(
        format!("{place} must not contain the NUL character (U+0000)"),
        None,
    ))
}

impl Hooks {
    fn new(max_cost: usize) -> Self {
        Self {
            documents: Arc::new(HotCache::new(PARSED_CACHE_BYTES, None)),
            max_cost,
        }
    }
}

impl ExtensionFactory for Hooks {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(HooksFor {
            cache: self.documents.clone(),
            max_cost: self.max_cost,
            named: Mutex::new(None),
            validation: Mutex::new(None),
        })
    }
}

/// [`Hooks`] for one request: its document's validation, if known, or where to keep it; and
/// the cost limit its refusals name.
struct HooksFor {
    cache: Arc<HotCache<DocumentText, Parsed>>,
    max_cost: usize,
    /// The operation the request names, if it names one.
    named: Mutex<Option<String>>,
    validation: Mutex<Option<Validation>>,
}

/// What one request knows of its document's validation.
enum Validation {
    /// Its text and variables passed before.
    Known(ValidationResult),
    /// To run, and to keep with these variables if it passes.
    Keep(Arc<Mutex<Option<Validated>>>, Variables),
}

/// Locks `m`; a panic elsewhere while it was held leaves nothing half-written in these slots
/// (each is replaced whole), so a poisoned lock is taken as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HooksFor {
    /// `error` with its contract code, and a refusal by a limit naming the limit.
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

    /// Validates the request's document, each error explained.
    async fn validate(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx)
            .await
            .map_err(|errors| errors.into_iter().map(|e| self.explain(e)).collect())
    }
}

/// `response` with a contract code on each of its errors.
fn with_codes(mut response: Response) -> Response {
    response.errors = response.errors.into_iter().map(ensure_code).collect();
    response
}

#[async_graphql::async_trait::async_trait]
impl Extension for HooksFor {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        with_codes(next.run(ctx).await)
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream).map(with_codes).boxed()
    }

    /// Fields are not wrapped: each is resolved directly, not through a chain that passes it on.
    fn wraps_resolve(&self) -> bool {
        false
    }

    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        lock(&self.named).clone_from(&request.operation_name);
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let named = lock(&self.named).take();
        let nul = |(name, v): &(&Name, &ConstValue)| name.contains('\0') || variable_holds_nul(v);
        if let Some((name, _)) = variables.iter().find(nul) {
            return Err(nul_refused(&format!("the variable `${name}`")));
        }
        let parse = |document: ServerResult<ExecutableDocument>| {
            let document = document.map_err(ensure_code)?;
            if document_holds_nul(&document) {
                return Err(nul_refused("a string of the query"));
            }
            Ok(document)
        };
        if query.len() > MAX_CACHED_QUERY {
            return parse(next.run(ctx, query, variables).await);
        }
        let parsed = match self.cache.get(query) {
            Some(parsed) => parsed,
            None => {
                // A refused document is not kept: its text is refused again, parsed again.
                let document = parse(next.run(ctx, query, variables).await)?;
                let key = DocumentText::new(query, &document);
                let parsed = Parsed::new(document);
                self.cache.insert(key, parsed.clone());
                parsed
            }
        };
        // Naming the document's own operation validates as naming none (only another
        // operation's variables go unchecked); naming another is refused after validation.
        let other = named.is_some_and(|named| parsed.name.as_deref() != Some(named.as_str()));
        if let Some(slot) = parsed.validated.filter(|_| !other) {
            let none = Variables::default();
            let variables = if parsed.declares { variables } else { &none };
            let known = lock(&slot)
                .as_ref()
                .filter(|last| last.variables == *variables)
                .map(|last| last.result);
            *lock(&self.validation) = match known {
                Some(result) => Some(Validation::Known(result)),
                None if small(variables) => Some(Validation::Keep(slot, variables.clone())),
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
            Some(Validation::Keep(slot, variables)) => {
                // Only a success is kept: a refusal is rare, and answered again in full.
                let result = self.validate(ctx, next).await?;
                *lock(&slot) = Some(Validated { variables, result });
                Ok(result)
            }
            None => self.validate(ctx, next).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn size_of(text: &str) -> usize {
        let document = async_graphql::parser::parse_query(text).expect("parses");
        parsed_size(text.len(), &document)
    }

    #[test]
    fn a_parsed_document_weighs_each_of_its_nodes_not_just_its_text() {
        // One operation and one selection.
        assert_eq!(size_of("{ __typename }"), 14 + 2 * NODE_BYTES);
        // Two bytes of text per node must not mean two bytes of weight: selections,
        // argument values and variables' default values all count.
        let many = |item: &str| vec![item; 1000].join(" ");
        let fields = format!("{{ {} }}", many("a"));
        assert!(size_of(&fields) > 1000 * NODE_BYTES);
        let list = format!("{{ f(a: [{}]) }}", many("1"));
        assert!(size_of(&list) > 1000 * NODE_BYTES);
        let object = format!(
            "{{ f(a: {{ {} }}) }}",
            (0..1000)
                .map(|i| format!("k{i}: 1"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        assert!(size_of(&object) > 1000 * NODE_BYTES);
        let defaults = format!("query($a: [Int] = [{}]) {{ f }}", many("1"));
        assert!(size_of(&defaults) > 1000 * NODE_BYTES);
        let fragments = format!("{{ ...F }} fragment F on Query {{ {} }}", many("a"));
        assert!(size_of(&fragments) > 1000 * NODE_BYTES);
    }

    #[test]
    fn a_nul_is_found_in_a_string_literal_anywhere_but_not_in_escaped_text() {
        let holds = |text: &str| {
            document_holds_nul(&async_graphql::parser::parse_query(text).expect("parses"))
        };
        assert!(holds(
            r#"mutation { createBot(input: { name: "a\u0000b" }) { id } }"#
        ));
        assert!(holds(
            r#"query ($v: [String] = ["x", "\u0000"]) { me { id } }"#
        ));
        assert!(holds(
            r#"{ me @include(if: true) { ...F } } fragment F on User { id(a: {b: ["\u0000"]}) }"#
        ));
        assert!(!holds(
            r#"mutation { createBot(input: { name: "a\\u0000b" }) { id } }"#
        ));
        assert!(!holds(r#"query ($v: String = "x") { me { id } }"#));
    }

    #[test]
    fn variables_are_kept_up_to_their_weight_limit_and_no_further() {
        // The map (1024), the key "b" (40 + 1), the string (80 + its bytes): 2048 at 903.
        let at = Variables::from_json(json!({ "b": "x".repeat(903) }));
        assert!(small(&at));
        let past = Variables::from_json(json!({ "b": "x".repeat(904) }));
        assert!(!small(&past));
        // Each value counts as held, however small: twenty nulls in a list are too many.
        let nulls = Variables::from_json(json!({ "b": vec![serde_json::Value::Null; 20] }));
        assert!(!small(&nulls));
        assert!(small(&Variables::default()));
        // What every visitor's start of a bot sends.
        assert!(small(&Variables::from_json(
            json!({ "b": "0190b8a4-2c1e-7a3b-9f00-000000000000", "v": null })
        )));
    }
}
