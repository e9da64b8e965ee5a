//! `POST /callbacks/{token}`: the customer's system continues a conversation that waits at a
//! CALLBACK block. The token is the only credential (one-time, stored hashed); the body is a
//! JSON object whose keys become context variables.
use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use serde_json::{Value, json};

use super::{client::ClientAddr, read_body, request_error};
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
    req: HttpRequest,
    state: web::Data<AppState>,
    token: web::Path<String>,
    mut payload: web::Payload,
) -> HttpResponse {
    // Tokens are guessed at no cost: a stranger's guesses are counted like any request.
    let client = ClientAddr::of(&req, &state.settings.limits.trusted_proxies);
    if let Err(refused) = super::address_budget(&state, &client).await {
        return refused;
    }
    let body = match read_body(&mut payload, MAX_CALLBACK_BYTES, "a callback body").await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
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
