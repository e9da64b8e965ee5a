//! Bots, their draft flows (validated on save), and published versions.
pub mod appearance;
pub mod flow_gql;
pub mod graphql;
pub mod service;
pub mod validate;
