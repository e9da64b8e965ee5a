//! `Application::build(settings)` binds the listener, connects and migrates the database,
//! starts the background workers; `run_until_stopped()` serves until SIGTERM or ctrl-c.
use std::{net::TcpListener, sync::Arc};

use actix_web::dev::Server;
use anyhow::Context as _;

use crate::{
    auth::{password::Passwords, token::TokenKeys},
    conversations::runtime::Runtime,
    db::Db,
    edge::tarpit::Tarpit,
    events::{EventBus, LocalBus, PgBus},
    graphql::build_schema,
    limits::Limiters,
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
        // Before anything is counted: what is recorded without a recorder is lost.
        crate::metrics::handle();
        let db = Db::connect(&settings.database_url).await?;
        db.migrate().await?;
        // After the migrations: the key check and the encryption of stored secrets need them.
        let secrets = crate::crypto::startup::open(&db, &settings).await?;
        let keys = TokenKeys::load(
            &db,
            settings.jwt_secret.as_deref(),
            settings.token_ttl,
            &secrets,
        )
        .await?;
        let listener = TcpListener::bind(settings.addr)
            .with_context(|| format!("cannot listen on PARLEY_ADDR={}", settings.addr))?;
        let port = listener.local_addr()?.port();
        let instance_id = settings.instance_id.clone().unwrap_or_else(|| {
            format!(
                "{}@{}",
                host_name(),
                listener
                    .local_addr()
                    .map_or_else(|_| settings.addr.to_string(), |a| a.to_string())
            )
        });
        // Callback URLs need an address the customer's system can reach: without
        // PARLEY_PUBLIC_URL, the bound address (loopback when bound to every interface).
        let public_url = settings.public_url.clone().unwrap_or_else(|| {
            let bound = listener.local_addr().unwrap_or(settings.addr);
            let host = if bound.ip().is_unspecified() {
                std::net::SocketAddr::from(([127, 0, 0, 1], bound.port()))
            } else {
                bound
            };
            format!("http://{host}")
        });
        let deliveries = Deliveries::new(
            db.clone(),
            settings.delivery.clone(),
            settings.limits.max_sync_calls_per_account,
            settings.allow_private_webhooks,
            instance_id.clone(),
            secrets,
        )?;
        // What this instance was sending when it last stopped is sent again now, not when
        // the leases lapse.
        deliveries
            .release_stale_claims()
            .await
            .map_err(|e| anyhow::anyhow!("cannot release stale delivery claims: {e:?}"))?;
        // One instance on SQLite; on PostgreSQL, instances share events through NOTIFY.
        let (bus, pg_bus): (Arc<dyn EventBus>, Option<Arc<PgBus>>) = match db.kind() {
            DatabaseKind::Sqlite => (Arc::new(LocalBus::default()), None),
            DatabaseKind::Postgres => {
                let bus = PgBus::new(db.clone());
                bus.listen_early(settings.database_url.as_str()).await;
                bus.join().await;
                (bus.clone(), Some(bus))
            }
        };
        let passwords = Arc::new(Passwords::new(settings.limits.password_queue));
        let limiters = Limiters::new(&settings.limits);
        let runtime = Runtime::new(
            db.clone(),
            deliveries.clone(),
            bus,
            limiters.clone(),
            &settings,
            instance_id,
            public_url,
        );
        let tarpit = Arc::new(Tarpit::new(
            settings.limits.rate_limit_delay,
            crate::edge::tarpit::MAX_HELD,
        ));
        let state = AppState {
            db,
            keys,
            settings: Arc::new(settings),
            deliveries,
            runtime,
            passwords,
            sessions: Arc::default(),
            api_keys: Arc::default(),
            limiters,
            users: Arc::default(),
            sockets: Arc::default(),
            tarpit,
        };
        let schema = build_schema(Some(state.clone()));
        let server = crate::edge::serve(listener, schema, state.clone())?;
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
            AbortOnDrop(tokio::spawn(self.state.runtime.clone().run_scheduler())),
            AbortOnDrop(tokio::spawn(self.state.limiters.clone().run_pruner())),
            AbortOnDrop(tokio::spawn(self.state.db.clone().run_checkpointer())),
        ];
        if let Some(bus) = &self.pg_bus {
            let url = self.state.settings.database_url.as_str().to_owned();
            workers.push(AbortOnDrop(tokio::spawn(bus.clone().run_listener(url))));
            workers.push(AbortOnDrop(tokio::spawn(bus.clone().run_heartbeat())));
        }
        let result = self.server.await;
        drop(workers);
        result
    }
}

/// The machine's name, for the default instance id.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Aborts a background task when dropped, so that a dropped app leaves nothing running.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
