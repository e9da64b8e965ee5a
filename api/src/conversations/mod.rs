//! Conversations: the runtime that drives the engine, the queries, and live subscriptions.
pub mod graphql;
pub mod payload;
pub mod runtime;
pub mod watch;
