//! Servers inside the bench process, each on its own thread and actix runtime: the webhook
//! receiver that answers at once, and the bare actix handler that the GraphQL figures are
//! compared with.
use std::{
    net::TcpListener,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use actix_web::{App, HttpResponse, HttpServer, dev::ServerHandle, web};
use anyhow::Context as _;
use serde::Deserialize;
use tokio::sync::mpsc;

/// An actix server running on its own thread.
pub struct ThreadServer {
    pub port: u16,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl ThreadServer {
    fn spawn<F>(name: &str, build: F) -> anyhow::Result<Self>
    where
        F: FnOnce(TcpListener) -> std::io::Result<actix_web::dev::Server> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a local port")?;
        let port = listener.local_addr()?.port();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let system = actix_web::rt::System::new();
                system.block_on(async move {
                    match build(listener) {
                        Ok(server) => {
                            let _ = tx.send(Ok(server.handle()));
                            let _ = server.await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })?;
        let handle = rx
            .recv()
            .context("the server thread died")?
            .context("the server did not start")?;
        Ok(Self {
            port,
            handle,
            thread: Some(thread),
        })
    }

    /// Stops the server and waits for its thread.
    pub async fn stop(mut self) {
        self.handle.stop(false).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// A webhook delivery as the receiver saw it.
pub struct Arrival {
    pub conversation_id: String,
    pub at: Instant,
}

/// What the receiver shares with the bench.
pub struct HookState {
    tx: mpsc::UnboundedSender<Arrival>,
    first_body: Mutex<Option<web::Bytes>>,
    pub count: AtomicU64,
}

impl HookState {
    /// The first body received, to replay in the plain-client comparison.
    pub fn first_body(&self) -> Option<web::Bytes> {
        self.first_body
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[derive(Deserialize)]
struct HookBody {
    conversation: HookConversation,
}

#[derive(Deserialize)]
struct HookConversation {
    id: String,
}

async fn hook(state: web::Data<Arc<HookState>>, body: web::Bytes) -> HttpResponse {
    let at = Instant::now();
    state.count.fetch_add(1, Ordering::Relaxed);
    if let Ok(b) = serde_json::from_slice::<HookBody>(&body) {
        let _ = state.tx.send(Arrival {
            conversation_id: b.conversation.id,
            at,
        });
    }
    {
        let mut first = state.first_body.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(body);
        }
    }
    HttpResponse::NoContent().finish()
}

async fn sync_reply() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body("{}")
}

/// The webhook receiver: `POST /hook` answers 204 at once and reports the conversation id
/// of the body; `POST /sync` answers `{}` at once. One worker thread.
pub fn start_receiver() -> anyhow::Result<(
    ThreadServer,
    Arc<HookState>,
    mpsc::UnboundedReceiver<Arrival>,
)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Arc::new(HookState {
        tx,
        first_body: Mutex::new(None),
        count: AtomicU64::new(0),
    });
    let shared = state.clone();
    let server = ThreadServer::spawn("bench-receiver", move |listener| {
        Ok(HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(shared.clone()))
                .app_data(web::PayloadConfig::new(4 * 1024 * 1024))
                .route("/hook", web::post().to(hook))
                .route("/sync", web::post().to(sync_reply))
        })
        .workers(1)
        .tcp_nodelay(true)
        .backlog(4096)
        .max_connection_rate(4096)
        .listen(listener)?
        .run())
    })?;
    Ok((server, state, rx))
}

/// Fixed answers of the bare handler.
#[derive(Clone)]
struct Canned {
    me: web::Bytes,
    typename: web::Bytes,
}

async fn canned(answers: web::Data<Canned>, body: web::Bytes) -> HttpResponse {
    let wants_me = body.windows(4).any(|w| w == b"me {");
    HttpResponse::Ok()
        .content_type("application/json")
        .body(if wants_me {
            answers.me.clone()
        } else {
            answers.typename.clone()
        })
}

/// A bare actix-web server (default workers, like the server under test) whose `POST
/// /graphql` returns `me` for a body asking for `me {`, else `typename`.
pub fn start_bare(me: Vec<u8>, typename: Vec<u8>) -> anyhow::Result<ThreadServer> {
    let answers = Canned {
        me: me.into(),
        typename: typename.into(),
    };
    ThreadServer::spawn("bench-bare-actix", move |listener| {
        Ok(HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(answers.clone()))
                .route("/graphql", web::post().to(canned))
        })
        .backlog(4096)
        .listen(listener)?
        .run())
    })
}
