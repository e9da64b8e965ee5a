//! Opaque GraphQL ids are UUIDs; an id that does not parse names nothing that exists.
use async_graphql::ID;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

/// The UUID behind an id, or NOT_FOUND naming `what`.
pub fn parse_id(id: &ID, what: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id.as_str()).map_err(|_| ApiError::not_found(what))
}

/// The GraphQL id of a UUID.
pub fn to_id(id: Uuid) -> ID {
    ID(id.to_string())
}
