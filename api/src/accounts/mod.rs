//! Users, accounts (teams), memberships and invitations.
pub mod graphql;
pub mod loader;
pub mod service;

pub use service::{AccountAccess, Email};
