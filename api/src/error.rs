//! `ApiError`: the one boundary error. Each variant maps to a contract `extensions.code`;
//! internal causes are logged once, here, and never sent to clients.
use async_graphql::{ErrorExtensions, ServerError};
use sea_orm::DbErr;
use serde::Serialize;

/// One problem of a rejected input, such as a flow block's bad field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub block_id: Option<String>,
    pub field: String,
    pub message: String,
}

/// The error every resolver returns. It deliberately does not implement `Display`, so that
/// async-graphql's blanket `From<Display>` cannot turn it into an error without a code.
#[derive(Debug)]
pub enum ApiError {
    Unauthenticated(String),
    Forbidden(String),
    NotFound(String),
    BadUserInput {
        message: String,
        problems: Vec<Problem>,
    },
    Conflict(String),
    RateLimited(String),
    Internal(anyhow::Error),
}

/// Results of the service layer.
pub type ApiResult<T> = Result<T, ApiError>;

/// For queries such as `bot(id)` that answer null, not an error, for what the viewer cannot see.
pub trait Found<T> {
    /// NOT_FOUND as `None`; other errors stay errors.
    fn found(self) -> ApiResult<Option<T>>;
}

impl<T> Found<T> for ApiResult<T> {
    fn found(self) -> ApiResult<Option<T>> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(ApiError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl ApiError {
    /// A bad input with one message and no per-field problems.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::BadUserInput {
            message: message.into(),
            problems: Vec::new(),
        }
    }

    /// A resource that does not exist or is not visible to the viewer.
    pub fn not_found(what: &str) -> Self {
        Self::NotFound(format!("{what} not found"))
    }

    /// A NOT_FOUND about some inner lookup (the viewer's membership, a parent resource)
    /// reported as about `what`, so that the answer names what was asked for and reveals
    /// nothing about why; any other error as is.
    pub fn not_found_as(self, what: &str) -> Self {
        match self {
            Self::NotFound(_) => Self::not_found(what),
            other => other,
        }
    }

    /// The contract's `extensions.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::NotFound(_) => "NOT_FOUND",
            Self::BadUserInput { .. } => "BAD_USER_INPUT",
            Self::Conflict(_) => "CONFLICT",
            Self::RateLimited(_) => "RATE_LIMITED",
            Self::Internal(_) => "INTERNAL_SERVER_ERROR",
        }
    }

    /// The text clients see.
    pub fn message(&self) -> &str {
        match self {
            Self::Unauthenticated(m)
            | Self::Forbidden(m)
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::RateLimited(m)
            | Self::BadUserInput { message: m, .. } => m,
            Self::Internal(_) => "internal server error",
        }
    }
}

impl From<DbErr> for ApiError {
    fn from(e: DbErr) -> Self {
        Self::Internal(e.into())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self::Internal(e)
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Internal(e.into())
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        if let Self::Internal(cause) = self {
            tracing::error!(error.cause = ?cause, "internal error");
        }
        async_graphql::Error::new(self.message()).extend_with(|_, e| {
            e.set("code", self.code());
            if let Self::BadUserInput { problems, .. } = self
                && !problems.is_empty()
            {
                let value = serde_json::to_value(problems).unwrap_or_default();
                if let Ok(value) = async_graphql::Value::from_json(value) {
                    e.set("problems", value);
                }
            }
        })
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        e.extend()
    }
}

/// Gives every error that lacks one a code: errors raised by async-graphql itself (parse,
/// validation, argument coercion) are the client's fault, so `BAD_USER_INPUT`.
pub fn ensure_code(mut error: ServerError) -> ServerError {
    let has_code = error
        .extensions
        .as_ref()
        .is_some_and(|ext| ext.get("code").is_some());
    if !has_code {
        error
            .extensions
            .get_or_insert_with(Default::default)
            .set("code", "BAD_USER_INPUT");
    }
    error
}
