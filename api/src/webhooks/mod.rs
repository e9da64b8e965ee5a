//! The account's webhooks page, and the delivery of webhook calls.
pub mod client;
pub mod delivery;
pub mod graphql;
pub mod service;
pub mod signing;
pub mod ssrf;
