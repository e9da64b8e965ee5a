//! Parley: a multi-tenant chatbot builder backend.
pub mod accounts;
pub mod app;
pub mod auth;
pub mod db;
pub mod error;
pub mod graphql;
pub mod ids;
pub mod settings;
pub mod state;
pub mod telemetry;
