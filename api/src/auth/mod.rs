//! Who is asking: passwords, login tokens, and the viewer of a request.
pub mod password;
pub mod session;
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
    /// A team member with a valid token of an open session.
    User(Viewer),
    /// Credentials that did not verify; kept apart from `Anonymous` so the error can say so.
    Invalid(&'static str),
}

impl Auth {
    /// The logged-in user, or `UNAUTHENTICATED` (also once the token has expired, which a
    /// socket can outlive).
    pub fn user_id(&self) -> ApiResult<Uuid> {
        self.viewer().map(|v| v.user_id)
    }

    /// The logged-in user's session, or `UNAUTHENTICATED`.
    pub fn viewer(&self) -> ApiResult<&Viewer> {
        match self {
            Self::User(v) if v.expires_at <= chrono::Utc::now() => Err(ApiError::Unauthenticated(
                "the token has expired; log in again".into(),
            )),
            Self::User(v) => Ok(v),
            Self::Anonymous => Err(ApiError::Unauthenticated(
                "log in first: send Authorization: Bearer <token>".into(),
            )),
            Self::Invalid(why) => Err(ApiError::Unauthenticated((*why).to_owned())),
        }
    }
}

/// A logged-in user's session, as a verified token names it; or an API key, which acts as a
/// member of its one account: then `user_id` and `session_id` are both the key's id, and
/// `key` says which account and role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Viewer {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub key: Option<KeyScope>,
}

/// What an API key may reach: one account, with one role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyScope {
    pub account_id: Uuid,
    pub role: entity::Role,
}

/// The logged-in person (not an API key) of a GraphQL request: `FORBIDDEN` for a key, which
/// never manages members, keys or anyone's login.
pub fn person(ctx: &Context<'_>) -> ApiResult<Uuid> {
    let viewer = viewer_session(ctx)?;
    if viewer.key.is_some() {
        return Err(ApiError::Forbidden(
            "an API key cannot do this: it never manages members, keys or logins; use a \
             team member's login token"
                .into(),
        ));
    }
    Ok(viewer.user_id)
}

/// The logged-in user's session of a GraphQL request, or `UNAUTHENTICATED`.
pub fn viewer_session(ctx: &Context<'_>) -> ApiResult<Viewer> {
    crate::edge::caller::auth(ctx).viewer().copied()
}

/// The logged-in user of a GraphQL request, or `UNAUTHENTICATED`.
pub fn viewer(ctx: &Context<'_>) -> ApiResult<Uuid> {
    crate::edge::caller::auth(ctx).user_id()
}
