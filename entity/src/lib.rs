//! sea-orm entities, one per table. Tenant-owned tables are read through the scoped finders
//! (`find_in_account`) defined beside them, never through a bare `find()`.
pub mod account;
pub mod invitation;
pub mod membership;
pub mod server_setting;
pub mod user;

pub use membership::Role;
