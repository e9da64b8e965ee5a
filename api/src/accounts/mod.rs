//! Users, accounts (teams), memberships and invitations.
pub mod graphql;
pub mod service;

pub use service::{AccountAccess, Email};
