//! `Application::build(settings)` binds the listener, connects and migrates the database,
//! starts the background workers; `run_until_stopped()` serves until SIGTERM or ctrl-c.
use std::{net::TcpListener, sync::Arc};

use actix_web::{
    App, HttpRequest, HttpResponse, HttpServer, dev::Server, guard, http::StatusCode, web,
};
use anyhow::Context as _;
use async_graphql::{Data, http::GraphiQLSource};
use async_graphql_actix_web::GraphQLSubscription;
use futures_util::StreamExt as _;
use tracing_actix_web::TracingLogger;

use crate::{
    auth::{Auth, token::TokenKeys},
    conversations::runtime::Runtime,
    db::Db,
    events::{EventBus, LocalBus, PgBus},
    graphql::{AppSchema, build_schema},
    settings::DatabaseKind,
    settings::Settings,
    state::AppState,
    webhooks::delivery::Deliveries,
};

/// A built, listening server, not yet running.
pub struct Application {
    port: u16,
    server: Server,
    state: AppState,
    /// The PostgreSQL event bus, whose listener runs with the server.
    pg_bus: Option<Arc<PgBus>>,
}

impl Application {
    /// Connects to and migrates the database, binds `settings.addr` (port 0 picks a free port)
    /// and prepares the server.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = Db::connect(&settings.database_url).await?;
        db.migrate().await?;
        let keys = TokenKeys::load(&db, settings.jwt_secret.as_deref(), settings.token_ttl).await?;
        let listener = TcpListener::bind(settings.addr)
            .with_context(|| format!("cannot listen on PARLEY_ADDR={}", settings.addr))?;
        let port = listener.local_addr()?.port();
        let deliveries = Deliveries::new(
            db.clone(),
            settings.delivery.clone(),
            settings.allow_private_webhooks,
        )?;
        // One instance on SQLite; on PostgreSQL, instances share events through NOTIFY.
        let (bus, pg_bus): (Arc<dyn EventBus>, Option<Arc<PgBus>>) = match db.kind() {
            DatabaseKind::Sqlite => (Arc::new(LocalBus::default()), None),
            DatabaseKind::Postgres => {
                let bus = PgBus::new(db.clone());
                (bus.clone(), Some(bus))
            }
        };
        let runtime = Runtime::new(db.clone(), deliveries.clone(), bus, &settings);
        let state = AppState {
            db,
            keys,
            settings: Arc::new(settings),
            deliveries,
            runtime,
            login_throttle: Arc::default(),
            users: Arc::default(),
        };
        let schema = build_schema(Some(state.clone()));
        let server = serve(listener, schema, state.clone())?;
        Ok(Self {
            port,
            server,
            state,
            pg_bus,
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state (database handle and settings), for tools and tests.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// A handle that stops the server.
    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves, and runs the background workers, until the server is stopped (SIGTERM or
    /// ctrl-c stop it gracefully). Dropping this future stops the workers too.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let mut workers = vec![
            AbortOnDrop(tokio::spawn(self.state.deliveries.clone().run_worker())),
            AbortOnDrop(tokio::spawn(self.state.runtime.clone().run_sweeper())),
        ];
        if let Some(bus) = self.pg_bus {
            let url = self.state.settings.database_url.as_str().to_owned();
            workers.push(AbortOnDrop(tokio::spawn(bus.run_listener(url))));
        }
        let result = self.server.await;
        drop(workers);
        result
    }
}

/// Aborts a background task when dropped, so that a dropped app leaves nothing running.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn serve(listener: TcpListener, schema: AppSchema, state: AppState) -> anyhow::Result<Server> {
    let max_body = state.settings.max_body_bytes;
    let server = HttpServer::new(move || {
        App::new()
            .wrap(TracingLogger::default())
            .app_data(web::Data::new(schema.clone()))
            .app_data(web::Data::new(state.clone()))
            .app_data(web::PayloadConfig::new(max_body))
            .service(
                web::resource("/graphql")
                    .route(
                        web::get()
                            .guard(guard::Header("upgrade", "websocket"))
                            .to(graphql_ws),
                    )
                    .route(web::post().to(graphql_http)),
            )
            .route("/graphiql", web::get().to(graphiql))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
    })
    .shutdown_timeout(10)
    // Chat events are small frames: without TCP_NODELAY, Nagle's algorithm holds them back
    // until the peer's delayed ACK, 40 ms later.
    .tcp_nodelay(true)
    .listen(listener)?
    .run();
    Ok(server)
}

/// The caller named by an `Authorization` header value.
fn auth_from_header(keys: &TokenKeys, value: Option<&str>) -> Auth {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Auth::Anonymous;
    };
    let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Auth::Invalid("the Authorization header must be \"Bearer <token>\"");
    };
    match keys.verify(token.trim()) {
        Some(user) => Auth::User(user),
        None => Auth::Invalid("the token is invalid or has expired; log in again"),
    }
}

/// A GraphQL-shaped error body for requests that never reached the executor.
fn request_error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({
        "errors": [{ "message": message, "extensions": { "code": "BAD_USER_INPUT" } }]
    }))
}

async fn graphql_http(
    schema: web::Data<AppSchema>,
    state: web::Data<AppState>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> HttpResponse {
    let limit = state.settings.max_body_bytes;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            return request_error(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        };
        if body.len() + chunk.len() > limit {
            return request_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is larger than {limit} bytes"),
            );
        }
        body.extend_from_slice(&chunk);
    }
    let request: async_graphql::BatchRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return request_error(
                StatusCode::BAD_REQUEST,
                &format!("the body is not a GraphQL request (JSON with a \"query\"): {e}"),
            );
        }
    };
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let auth = auth_from_header(&state.keys, header);
    let response = schema.execute_batch(request.data(auth)).await;
    HttpResponse::Ok().json(response)
}

async fn graphql_ws(
    schema: web::Data<AppSchema>,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> actix_web::Result<HttpResponse> {
    let keys = state.keys.clone();
    GraphQLSubscription::new(AppSchema::clone(&schema))
        .on_connection_init(move |value| async move {
            let header = value
                .get("Authorization")
                .or_else(|| value.get("authorization"))
                .and_then(|v| v.as_str());
            let auth = auth_from_header(&keys, header);
            if let Auth::Invalid(why) = auth {
                return Err(async_graphql::Error::new(why));
            }
            let mut data = Data::default();
            data.insert(auth);
            Ok(data)
        })
        .start(&req, payload)
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

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.db.ping().await {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "database unreachable" }))
    }
}
