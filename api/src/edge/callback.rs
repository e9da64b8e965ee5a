//! `POST /callbacks/{token}`: the customer's system continues a conversation that waits at a
//! CALLBACK block. The token is the only credential (one-time, stored hashed); the body is a
//! JSON object whose keys become context variables.
use actix_web::{HttpResponse, http::StatusCode, web};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use super::request_error;
use crate::{error::ApiError, state::AppState};

/// Largest callback body: enough for a handful of variables, not a way to grow a
/// conversation's state without bound.
pub const MAX_CALLBACK_BYTES: usize = 64 * 1024;

fn error_response(e: &ApiError) -> HttpResponse {
    let status = match e.code() {
        "NOT_FOUND" => StatusCode::NOT_FOUND,
        "CONFLICT" => StatusCode::CONFLICT,
        "BAD_USER_INPUT" => StatusCode::BAD_REQUEST,
        "RATE_LIMITED" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    request_error(status, e.code(), e.message())
}

/// Takes one callback.
pub async fn callback(
    state: web::Data<AppState>,
    token: web::Path<String>,
    mut payload: web::Payload,
) -> HttpResponse {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            return request_error(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "the request body could not be read",
            );
        };
        if body.len() + chunk.len() > MAX_CALLBACK_BYTES {
            return request_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BAD_USER_INPUT",
                &format!("a callback body must be at most {MAX_CALLBACK_BYTES} bytes"),
            );
        }
        body.extend_from_slice(&chunk);
    }
    let posted = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => map,
            _ => {
                return request_error(
                    StatusCode::BAD_REQUEST,
                    "BAD_USER_INPUT",
                    "a callback body must be a JSON object (its keys become variables)",
                );
            }
        }
    };
    match state.runtime.callback(&token, posted).await {
        Ok(conversation_id) => {
            HttpResponse::Ok().json(json!({ "ok": true, "conversationId": conversation_id }))
        }
        Err(e) => {
            if let ApiError::Internal(cause) = &e {
                tracing::error!(error.cause = ?cause, "callback failed");
            }
            error_response(&e)
        }
    }
}
