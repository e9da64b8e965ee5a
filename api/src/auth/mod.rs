//! Who is asking: passwords, login tokens, and the viewer of a request.
pub mod password;
pub mod token;

use async_graphql::Context;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

/// The caller of a request, decided once from its `Authorization` header (HTTP) or its
/// `connection_init` payload (WebSocket).
#[derive(Clone, Debug)]
pub enum Auth {
    /// No credentials: only public operations (sign-up, log-in, visitors' chat).
    Anonymous,
    /// A team member with a valid token.
    User(Uuid),
    /// Credentials that did not verify; kept apart from `Anonymous` so the error can say so.
    Invalid(&'static str),
}

impl Auth {
    /// The logged-in user, or `UNAUTHENTICATED`.
    pub fn user_id(&self) -> ApiResult<Uuid> {
        match self {
            Self::User(id) => Ok(*id),
            Self::Anonymous => Err(ApiError::Unauthenticated(
                "log in first: send Authorization: Bearer <token>".into(),
            )),
            Self::Invalid(why) => Err(ApiError::Unauthenticated((*why).to_owned())),
        }
    }
}

/// The logged-in user of a GraphQL request, or `UNAUTHENTICATED`.
pub fn viewer(ctx: &Context<'_>) -> ApiResult<Uuid> {
    ctx.data_opt::<Auth>().unwrap_or(&Auth::Anonymous).user_id()
}
