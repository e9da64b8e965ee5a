//! `POST /graphql`: body and batch limits, the request's deadline, then the schema.
use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};

use super::{
    address_budget, authenticate_request,
    caller::Caller,
    client::ClientAddr,
    limit_refusal,
    origin::{RequestOrigin, add_cors_headers},
    read_body, request_error,
};
use crate::{auth::Auth, graphql::AppSchema, state::AppState};

/// One GraphQL request or a JSON array of them.
pub async fn graphql_http(
    schema: web::Data<AppSchema>,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let origin = RequestOrigin::of(&req, &state.settings.limits.trusted_proxies);
    let raw_origin = req
        .headers()
        .get(actix_web::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut response = execute(schema, state, req, payload, origin).await;
    add_cors_headers(&mut response, raw_origin.as_deref());
    response
}

async fn execute(
    schema: web::Data<AppSchema>,
    state: web::Data<AppState>,
    req: HttpRequest,
    mut payload: web::Payload,
    origin: RequestOrigin,
) -> HttpResponse {
    let limits = &state.settings.limits;
    let client = ClientAddr::of(&req, &limits.trusted_proxies);
    // A flood is turned away before its body is read or parsed: the cheapest refusal.
    if let Err(refused) = address_budget(&state, &client).await {
        return refused;
    }
    // Before the body is read: a held refusal holds nothing of it.
    let auth = match authenticate_request(&state, &req).await {
        Ok(auth) => auth,
        Err(refused) => return refused,
    };
    let limit = state.settings.max_body_bytes;
    let body = match read_body(&mut payload, limit, "the request body").await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let request: async_graphql::BatchRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return request_error(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &format!("the body is not a GraphQL request (JSON with a \"query\"): {e}"),
            );
        }
    };
    if let async_graphql::BatchRequest::Batch(list) = &request
        && list.len() > limits.max_batch
    {
        return request_error(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            &format!(
                "a batch may hold at most {} operations (PARLEY_MAX_BATCH); this one has {}",
                limits.max_batch,
                list.len()
            ),
        );
    }
    let mut request = request;
    if !state.settings.graphiql && matches!(auth, Auth::Anonymous) {
        // With GraphiQL off, strangers do not get the schema's map either.
        request = request.disable_introspection();
    }
    let run = schema.execute_batch(request.data(Caller {
        auth,
        client,
        origin,
    }));
    match tokio::time::timeout(limits.request_timeout, run).await {
        Ok(response) => HttpResponse::Ok().json(response),
        Err(_) => {
            tracing::warn!(client.addr = %client, "request cancelled at its deadline");
            let secs = limits.request_timeout.as_secs();
            limit_refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "the request ran longer than {secs} s (PARLEY_REQUEST_TIMEOUT_SECS) and was \
                     cancelled; nothing it had not committed was kept. Ask for less, or retry later"
                ),
                "1",
            )
        }
    }
}
