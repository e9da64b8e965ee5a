//! Parley: a multi-tenant chatbot builder backend.
pub mod accounts;
pub mod app;
pub mod auth;
pub mod bots;
pub mod conversations;
pub mod db;
pub mod edge;
pub mod engine;
pub mod error;
pub mod events;
pub mod graphql;
pub mod ids;
pub mod settings;
pub mod state;
pub mod telemetry;
pub mod webhooks;
