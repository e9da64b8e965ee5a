//! Parley: a multi-tenant chatbot builder backend.
pub mod accounts;
pub mod app;
pub mod auth;
pub mod bots;
pub mod db;
pub mod engine;
pub mod error;
pub mod graphql;
pub mod ids;
pub mod settings;
pub mod state;
pub mod telemetry;
pub mod webhooks;
