//! sea-orm entities, one per table. Tenant-owned tables are read through the scoped finders
//! (`find_in_account`) defined beside them, never through a bare `find()`.
pub mod account;
pub mod api_key;
pub mod audit_log;
pub mod bot;
pub mod bot_version;
pub mod conversation;
pub mod conversation_event;
pub mod delivery;
pub mod delivery_attempt;
pub mod invitation;
pub mod membership;
pub mod server_setting;
pub mod session;
pub mod user;
pub mod webhook;
pub mod webhook_secret;

pub use membership::Role;
