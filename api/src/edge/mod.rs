//! The edge: everything between a socket and the schema. Routes, the client's address,
//! credentials, request limits and the WebSocket transport live here, so that domains never
//! read HTTP headers themselves.
pub mod callback;
pub mod caller;
pub mod client;
pub mod http;
pub mod origin;
pub mod results;
pub mod span;
pub mod tarpit;
pub mod upgrade;
pub mod widget;
pub mod ws;

use std::{net::TcpListener, rc::Rc, time::Duration};

use actix_http::{HttpService, KeepAlive};
use actix_service::{
    IntoServiceFactory as _, ServiceFactory as _, fn_factory, fn_service, map_config,
};
use actix_web::{
    App, HttpResponse,
    dev::{AppConfig, Server},
    guard,
    http::{Method, StatusCode},
    middleware::Compress,
    web,
};
use async_graphql::http::GraphiQLSource;
use tracing_actix_web::TracingLogger;

use crate::{
    auth::{Auth, token::TokenKeys},
    graphql::AppSchema,
    state::AppState,
};

/// The HTTP server over `listener`, not yet running.
///
/// Put together as actix-web's `HttpServer` does, with one addition: requests that ask for an
/// upgrade go to [`upgrade::serve`], which runs them through the same app and, for a WebSocket
/// the app accepts, takes the connection off actix-http's dispatcher and its buffers.
pub fn serve(listener: TcpListener, schema: AppSchema, state: AppState) -> anyhow::Result<Server> {
    let max_body = state.settings.max_body_bytes;
    let graphiql_on = state.settings.graphiql;
    let app = move || {
        let app = App::new()
            .wrap(TracingLogger::<span::RequestSpan>::new())
            .app_data(web::Data::new(schema.clone()))
            .app_data(web::Data::new(state.clone()))
            .app_data(web::PayloadConfig::new(max_body))
            .service(
                web::resource("/graphql")
                    .route(
                        web::get()
                            .guard(guard::Header("upgrade", "websocket"))
                            .to(ws::graphql_ws),
                    )
                    .route(web::post().to(http::graphql_http))
                    .route(web::method(Method::OPTIONS).to(origin::preflight)),
            )
            .service(
                web::resource("/widget.js")
                    .wrap(Compress::default())
                    .route(web::get().to(widget::widget_js)),
            )
            .service(
                web::resource("/chat/{bot_id}")
                    .wrap(Compress::default())
                    .route(web::get().to(widget::chat_page)),
            )
            .route(
                "/bots/{bot_id}/results.csv",
                web::get().to(results::results_csv),
            )
            .route("/metrics", web::get().to(metrics))
            .route("/callbacks/{token}", web::post().to(callback::callback))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz));
        if graphiql_on {
            app.route("/graphiql", web::get().to(graphiql))
        } else {
            app
        }
    };
    let local = listener.local_addr()?;
    let builder = Server::build();
    let stopping = builder.graceful_shutdown_signal();
    let server = builder
        .shutdown_timeout(10)
        // actix's default is 25,000 connections per worker; every idle WebSocket is one, so let
        // the open-files limit be the bound instead.
        .max_concurrent_connections(max_connections_per_worker())
        .listen("parley", listener, move || {
            let for_upgrades = app.clone();
            let for_sockets = stopping.clone();
            let upgrades = fn_factory(move || {
                let factory = for_upgrades().into_factory();
                let stopping = for_sockets.clone();
                async move {
                    let app = Rc::new(factory.new_service(AppConfig::default()).await?);
                    Ok::<_, ()>(fn_service(move |(req, framed)| {
                        upgrade::serve(Rc::clone(&app), req, framed, stopping.clone())
                    }))
                }
            });
            let for_connections = stopping.clone();
            // actix-web's defaults.
            HttpService::build()
                // Keep-alive connections end when the server stops, as under `HttpServer`
                // (which uses this same hidden hook).
                .graceful_shutdown_signal(move || {
                    let stopping = for_connections.clone();
                    async move { stopping.notified().await }
                })
                .keep_alive(KeepAlive::default())
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                .local_addr(local)
                // Chat events are small frames: without TCP_NODELAY, Nagle's algorithm holds
                // them back until the peer's delayed ACK, 40 ms later.
                .tcp_nodelay(true)
                .upgrade(upgrades)
                .finish(map_config(app().into_factory(), |()| AppConfig::default()))
                .tcp()
        })?
        .run();
    Ok(server)
}

/// actix's own default per worker.
const DEFAULT_MAX_CONNECTIONS: usize = 25_000;

/// Connections one worker accepts: the open-files limit (each is a descriptor), at least
/// actix's default.
fn max_connections_per_worker() -> usize {
    let soft = rlimit::Resource::NOFILE
        .get()
        .map_or(0, |(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX));
    soft.max(DEFAULT_MAX_CONNECTIONS)
}

/// Raises this process's soft open-files limit to the hard one: every connection (each idle
/// WebSocket included) is a descriptor, and the usual soft limit of 1,024 would cap the
/// server far below what its memory allows. Logs the limit it runs with.
pub fn raise_open_files_limit() {
    let before = rlimit::Resource::NOFILE.get().ok();
    match before {
        Some((soft, hard)) if soft < hard => match rlimit::Resource::NOFILE.set(hard, hard) {
            Ok(()) => tracing::info!(
                nofile.from = soft,
                nofile.to = hard,
                "open-files limit raised to the hard limit"
            ),
            Err(e) => tracing::warn!(
                nofile.soft = soft,
                nofile.hard = hard,
                error = %e,
                "cannot raise the open-files limit; it caps open connections"
            ),
        },
        Some((soft, _)) => tracing::info!(nofile = soft, "open-files limit"),
        None => {}
    }
}

/// The token of an `Authorization: Bearer <token>` value (`Bearer` or `bearer`), trimmed.
fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim();
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

/// The refusal of an `Authorization` header that holds no bearer token.
const NOT_BEARER: &str = "the Authorization header must be \"Bearer <token>\"";

/// The caller named by an `Authorization` header value.
pub fn auth_from_header(keys: &TokenKeys, value: Option<&str>) -> Auth {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Auth::Anonymous;
    };
    let Some(token) = bearer_token(value) else {
        return Auth::Invalid(NOT_BEARER);
    };
    match keys.verify(token) {
        Some(user) => Auth::User(user),
        None => Auth::Invalid("the token is invalid or has expired; log in again"),
    }
}

/// The caller named by an `Authorization` header value, with its session checked: a token
/// of an ended session (log-out, password change) is refused like an invalid one.
///
/// An API key (`Bearer pk_…`) is looked up by its hash instead, and acts as a member of its
/// account (see [`crate::apikeys`]).
pub async fn authenticate(state: &AppState, value: Option<&str>) -> Auth {
    if let Some(key) = value
        .and_then(bearer_token)
        .filter(|k| crate::apikeys::is_api_key(k))
    {
        return match state.api_keys.authenticate(&state.db, key).await {
            Ok(Some(viewer)) => Auth::User(viewer),
            Ok(None) => Auth::Invalid("this API key is unknown or has been revoked"),
            Err(e) => {
                tracing::error!(error.cause = ?e, "cannot check an API key");
                Auth::Invalid("the API key could not be checked just now; retry in a moment")
            }
        };
    }
    let auth = auth_from_header(&state.keys, value);
    let Auth::User(viewer) = &auth else {
        return auth;
    };
    match state.sessions.is_open(&state.db, viewer).await {
        Ok(true) => auth,
        Ok(false) => Auth::Invalid(crate::auth::session::ENDED),
        Err(e) => {
            tracing::error!(error.cause = ?e, user.id = %viewer.user_id, "cannot check a session");
            Auth::Invalid("the session could not be checked just now; retry in a moment")
        }
    }
}

/// Spends one request of an API key's budget (`PARLEY_API_KEY_RATE_LIMIT`); login tokens
/// and anonymous callers pass.
pub fn api_key_budget(state: &AppState, auth: &Auth) -> crate::error::ApiResult<()> {
    match auth {
        Auth::User(viewer) if viewer.key.is_some() => {
            state.limiters.requests_by_api_key.check(&viewer.session_id)
        }
        _ => Ok(()),
    }
}

/// The caller of an HTTP request, from its `Authorization` header, with one request of an API
/// key's budget spent; else the held refusal to answer with.
pub async fn authenticate_request(
    state: &AppState,
    req: &actix_web::HttpRequest,
) -> Result<Auth, HttpResponse> {
    let auth = match authorization(req) {
        Ok(header) => authenticate(state, header).await,
        Err(not_text) => not_text,
    };
    match api_key_budget(state, &auth) {
        Ok(()) => Ok(auth),
        Err(e) => Err(request_rate_refusal(state, e.message()).await),
    }
}

/// The `Authorization` header's value, if there is one; `Auth::Invalid` if it is not text.
///
/// Read as UTF-8, which checks ASCII a word at a time: `HeaderValue::to_str` checks a byte at a
/// time, and on a login token's 250 bytes that was 5 % of the server's instructions for a
/// `me` request. A value that is UTF-8 but not visible ASCII reaches the token's check and
/// fails it there; one that is not UTF-8 is refused, not taken for no credentials.
fn authorization(req: &actix_web::HttpRequest) -> Result<Option<&str>, Auth> {
    match req.headers().get(actix_web::http::header::AUTHORIZATION) {
        None => Ok(None),
        Some(value) => std::str::from_utf8(value.as_bytes())
            .map(Some)
            .map_err(|_| Auth::Invalid(NOT_BEARER)),
    }
}

/// A refusal by a limit where no GraphQL response can be made: `RATE_LIMITED` with `status`,
/// and `Retry-After` seconds.
pub fn limit_refusal(status: StatusCode, message: &str, retry_after: &'static str) -> HttpResponse {
    let mut response = request_error(status, "RATE_LIMITED", message);
    response.headers_mut().insert(
        actix_web::http::header::RETRY_AFTER,
        actix_web::http::header::HeaderValue::from_static(retry_after),
    );
    response
}

/// Spends one request of the client address's budget (`PARLEY_REQUEST_RATE_LIMIT`), before
/// anything of the request is read; else the held refusal to answer with.
pub async fn address_budget(
    state: &AppState,
    client: &client::ClientAddr,
) -> Result<(), HttpResponse> {
    match state
        .limiters
        .requests_by_address
        .check(&client.limit_key())
    {
        Ok(()) => Ok(()),
        Err(refused) => Err(request_rate_refusal(state, refused.message()).await),
    }
}

/// A request refused by a per-client request budget (`PARLEY_REQUEST_RATE_LIMIT`, an API
/// key's): 429 with `Retry-After: 1`, answered after [`tarpit`]'s delay.
pub async fn request_rate_refusal(state: &AppState, message: &str) -> HttpResponse {
    let refusal = limit_refusal(StatusCode::TOO_MANY_REQUESTS, message, "1");
    state.tarpit.hold(refusal).await
}

/// A request's body, refused (with the answer to send) past `limit` bytes; `what` names the
/// body in the refusal.
pub async fn read_body(
    payload: &mut web::Payload,
    limit: usize,
    what: &str,
) -> Result<web::BytesMut, HttpResponse> {
    use futures_util::StreamExt as _;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            return Err(request_error(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "the request body could not be read",
            ));
        };
        if body.len() + chunk.len() > limit {
            return Err(request_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BAD_USER_INPUT",
                &format!("{what} must be at most {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A GraphQL-shaped error body for requests that never reached the executor.
pub fn request_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({
        "errors": [{ "message": message, "extensions": { "code": code } }]
    }))
}

async fn graphiql() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(
            GraphiQLSource::build()
                .endpoint("/graphql")
                .subscription_endpoint("/graphql")
                .finish(),
        )
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Prometheus metrics, for a scraper that holds `PARLEY_METRICS_TOKEN`: they count every
/// tenant's traffic, which is nobody else's business.
async fn metrics(req: actix_web::HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(expected) = &state.settings.metrics_token_hash else {
        return request_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "metrics are off: set PARLEY_METRICS_TOKEN and scrape with \
             `Authorization: Bearer <that token>`",
        );
    };
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(crate::opaque::token_hash);
    if given.as_ref() != Some(expected) {
        return request_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "metrics need `Authorization: Bearer <PARLEY_METRICS_TOKEN>`",
        );
    }
    match crate::metrics::render(&state.db).await {
        Ok(text) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text),
        Err(e) => {
            tracing::error!(error = e.message(), "cannot read the metrics");
            request_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "INTERNAL_SERVER_ERROR",
                "the metrics could not be read just now",
            )
        }
    }
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.db.ping().await {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "database unreachable" }))
    }
}
