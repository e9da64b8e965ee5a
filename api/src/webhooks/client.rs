//! The one HTTP client that makes every webhook delivery attempt.
//!
//! It wraps a single pooled `reqwest::Client` (rustls, HTTP/1.1 and HTTP/2
//! by ALPN) that never follows redirects, never uses a proxy and resolves
//! names through [`GuardedResolver`], so the SSRF guard also holds at
//! connect time. [`DeliveryClient::send`] never panics and never returns an
//! error: every failure becomes an [`AttemptOutcome`] with a message fit for
//! the delivery log, and [`disposition`] turns that into retry or give up.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::redirect;
use url::Url;

use super::ssrf::{self, ALLOW_PRIVATE_SETTING, GuardedResolver, UrlError};

/// The default cap on how much of a response body is kept.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// Headers a webhook's configuration may not set, because they describe the
/// connection or the framing that the client itself controls; a wrong
/// `content-length` or `transfer-encoding` would corrupt the request.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Errors the client produces before sending anything start with this; they
/// are configuration problems, and retrying would only repeat them.
const INVALID_REQUEST_PREFIX: &str = "invalid request: ";

/// How the delivery client is built.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Allow loopback and private destinations (`PARLEY_ALLOW_PRIVATE_WEBHOOKS`,
    /// local development only).
    pub allow_private: bool,
    /// The bound on establishing a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// How much of a response body is kept; the rest is not read.
    pub max_body_bytes: usize,
    /// The `User-Agent` sent with every delivery.
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            allow_private: false,
            connect_timeout: Duration::from_secs(5),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            user_agent: format!(
                "Parley-Webhooks/{} (+https://parley.dev)",
                env!("CARGO_PKG_VERSION")
            ),
        }
    }
}

/// One webhook delivery attempt, ready to send.
///
/// `Debug` shows header names only: configured values often carry
/// credentials.
#[derive(Clone)]
pub struct OutgoingRequest {
    /// Where to POST.
    pub url: Url,
    /// The webhook's configured headers, sent first; the Standard Webhooks
    /// headers and `content-type` override any of the same name.
    pub headers: Vec<(String, String)>,
    /// The JSON payload.
    pub body: Vec<u8>,
    /// The `webhook-id` header: the same for every attempt of one message.
    pub msg_id: String,
    /// The `webhook-timestamp` header, in Unix seconds.
    pub timestamp: i64,
    /// The `webhook-signature` header, from
    /// [`signature_header`](super::signing::signature_header).
    pub signature: String,
}

impl std::fmt::Debug for OutgoingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("OutgoingRequest")
            .field("url", &self.url.as_str())
            .field("header_names", &header_names)
            .field("body_len", &self.body.len())
            .field("msg_id", &self.msg_id)
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

/// What happened in one delivery attempt.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// The HTTP status, if a response head arrived.
    pub status: Option<u16>,
    /// Wall time of the attempt.
    pub duration: Duration,
    /// Why the attempt did not fully succeed, if it did not.
    pub error: Option<String>,
    /// The start of the response body, at most `max_body_bytes`.
    pub body: Vec<u8>,
    /// Whether the response body was longer than what is kept.
    pub body_truncated: bool,
    /// The receiver's `Retry-After`, if it sent a valid one.
    pub retry_after: Option<Duration>,
}

impl AttemptOutcome {
    /// An attempt refused before anything was sent (a deleted webhook, an unreadable secret):
    /// `disposition` never retries it.
    pub fn refused(reason: String) -> Self {
        Self::failed(format!("invalid request: {reason}"))
    }

    /// An attempt that ended without a response.
    fn failed(error: String) -> Self {
        Self::with_status(None, Some(error))
    }

    fn with_status(status: Option<u16>, error: Option<String>) -> Self {
        Self {
            status,
            duration: Duration::ZERO,
            error,
            body: Vec::new(),
            body_truncated: false,
            retry_after: None,
        }
    }

    /// Whether the receiver answered 2xx and the whole attempt went through.
    pub fn is_success(&self) -> bool {
        self.error.is_none() && self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// The kept body as text (invalid UTF-8 and NUL bytes replaced), ending in
    /// `…[truncated]` when the body was longer; `None` when there was none.
    pub fn body_excerpt(&self) -> Option<String> {
        if self.body.is_empty() && !self.body_truncated {
            return None;
        }
        let mut text = String::from_utf8_lossy(&self.body).into_owned();
        // PostgreSQL's text refuses NUL: the attempt could never be recorded, and its
        // delivery would be sent again each time its claim ran down.
        if text.contains('\0') {
            text = text.replace('\0', "\u{fffd}");
        }
        if self.body_truncated {
            text.push_str("…[truncated]");
        }
        Some(text)
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Delivered; stop.
    Succeeded,
    /// Try again later; `after` is the receiver's `Retry-After`, if any.
    Retry {
        /// The receiver's requested delay (429 and 503 only).
        after: Option<Duration>,
    },
    /// Give up: retrying cannot help.
    Failed,
}

/// Decides what follows an attempt.
///
/// 2xx succeeds. Timeouts, connection and DNS errors, 408, 429 and 5xx are
/// retried (429 and 503 with the receiver's `Retry-After`). Redirects (which
/// are never followed), other 4xx, SSRF refusals and invalid requests fail
/// for good. A 2xx whose body could not be read is retried: the receiver
/// may not have finished, and Standard Webhooks receivers de-duplicate on
/// `webhook-id`.
pub fn disposition(o: &AttemptOutcome) -> Disposition {
    let retry = Disposition::Retry { after: None };
    match o.status {
        None => match o.error.as_deref() {
            Some(e) if is_permanent_error(e) => Disposition::Failed,
            _ => retry,
        },
        Some(200..=299) if o.error.is_none() => Disposition::Succeeded,
        Some(200..=299) => retry,
        Some(429 | 503) => Disposition::Retry {
            after: o.retry_after,
        },
        Some(408 | 500..=599) => retry,
        Some(_) => Disposition::Failed,
    }
}

/// Whether an error without a response is one that retrying cannot fix. The
/// outcome carries only text (it is what the delivery log stores), so the
/// client's own refusals are recognised by wording it controls: SSRF
/// refusals always name the setting, invalid requests share a prefix.
fn is_permanent_error(error: &str) -> bool {
    error.contains(ALLOW_PRIVATE_SETTING) || error.starts_with(INVALID_REQUEST_PREFIX)
}

/// The HTTP client for webhook deliveries. Cheap to clone; clones share the
/// connection pool.
#[derive(Debug, Clone)]
pub struct DeliveryClient {
    http: reqwest::Client,
    allow_private: bool,
    max_body_bytes: usize,
    connect_timeout: Duration,
}

impl DeliveryClient {
    /// Builds the client. Fails only if the TLS backend cannot start or the
    /// user agent is not a valid header value.
    pub fn new(cfg: ClientConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            // A redirect could lead anywhere, including inside; receivers
            // must be configured with their final URL.
            .redirect(redirect::Policy::none())
            // A proxy would resolve names itself, past the guard.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(cfg.allow_private)))
            .connect_timeout(cfg.connect_timeout)
            .user_agent(cfg.user_agent)
            .build()?;
        Ok(Self {
            http,
            allow_private: cfg.allow_private,
            max_body_bytes: cfg.max_body_bytes,
            connect_timeout: cfg.connect_timeout,
        })
    }

    /// Makes one delivery attempt: `POST` the body with the configured and
    /// Standard Webhooks headers. Connecting, the response head and reading
    /// the (capped) body together take at most `timeout`.
    pub async fn send(&self, req: &OutgoingRequest, timeout: Duration) -> AttemptOutcome {
        let started = Instant::now();
        let mut outcome = self.attempt(req, timeout).await;
        outcome.duration = started.elapsed();
        tracing::debug!(
            url = %req.url,
            msg_id = %req.msg_id,
            status = ?outcome.status,
            duration_ms = outcome.duration.as_millis(),
            error = ?outcome.error,
            "webhook delivery attempt"
        );
        outcome
    }

    async fn attempt(&self, req: &OutgoingRequest, timeout: Duration) -> AttemptOutcome {
        if !matches!(req.url.scheme(), "http" | "https") {
            return AttemptOutcome::failed(format!(
                "{INVALID_REQUEST_PREFIX}the URL scheme must be http or https, not {}",
                req.url.scheme()
            ));
        }
        // reqwest connects to IP literals without asking the resolver, so the
        // guard for them has to be here.
        if let Err(e) = ssrf::check_ip_host(&req.url, self.allow_private) {
            return AttemptOutcome::failed(e.to_string());
        }
        let headers = match build_headers(req) {
            Ok(h) => h,
            Err(e) => return AttemptOutcome::failed(format!("{INVALID_REQUEST_PREFIX}{e}")),
        };
        let request = self
            .http
            .post(req.url.clone())
            .headers(headers)
            .body(req.body.clone());

        // One deadline for every stage instead of one timeout around all of
        // it, so that a response head that did arrive is still reported.
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || format!("timed out after {}", format_duration(timeout));

        let mut response = match tokio::time::timeout_at(deadline, request.send()).await {
            Err(_) => return AttemptOutcome::failed(timed_out()),
            Ok(Err(e)) => return AttemptOutcome::failed(describe_error(&e, self.connect_timeout)),
            Ok(Ok(r)) => r,
        };

        let status = response.status();
        let mut outcome = AttemptOutcome::with_status(Some(status.as_u16()), None);
        outcome.retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        if status.is_redirection() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            outcome.error = Some(match location {
                Some(loc) => format!("redirect to {} not followed", clip(&loc, 512)),
                None => "redirect (without a Location) not followed".to_owned(),
            });
        }

        // Read before reading the body: hyper counts the hint down as data
        // arrives.
        let declared_len = response.content_length();
        let max = self.max_body_bytes;
        loop {
            let chunk = match tokio::time::timeout_at(deadline, response.chunk()).await {
                Err(_) => {
                    set_body_error(&mut outcome, timed_out());
                    break;
                }
                Ok(Err(e)) => {
                    set_body_error(&mut outcome, describe_error(&e, self.connect_timeout));
                    break;
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            let room = max - outcome.body.len();
            if chunk.len() > room {
                // Stop here: the rest is never read, and dropping the
                // response closes the connection rather than draining it.
                outcome.body.extend_from_slice(&chunk[..room]);
                outcome.body_truncated = true;
                break;
            }
            outcome.body.extend_from_slice(&chunk);
            // With an unknown length the next chunk (or the end) tells
            // whether there was more.
            if outcome.body.len() == max
                && let Some(len) = declared_len
            {
                outcome.body_truncated = len > max as u64;
                break;
            }
        }
        outcome
    }
}

/// Keeps the first error (a redirect's) and appends a body-read failure.
fn set_body_error(outcome: &mut AttemptOutcome, error: String) {
    let error = format!("reading the response body failed: {error}");
    outcome.error = Some(match outcome.error.take() {
        Some(first) => format!("{first}; {error}"),
        None => error,
    });
}

fn build_headers(req: &OutgoingRequest) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in &req.headers {
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("configured header name {name:?} is not a valid header name"))?;
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(format!(
                "configured header {name} cannot be set by a webhook"
            ));
        }
        // The value is left out of the message: configured headers often
        // carry credentials.
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| format!("configured header {name} has an invalid value"))?;
        value.set_sensitive(true);
        map.append(name, value);
    }
    // `insert` replaces every configured value of the same name.
    map.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let webhook_header = |name: &str, value: &str| {
        HeaderValue::from_str(value).map_err(|_| format!("{name} {value:?} is not a valid header"))
    };
    map.insert(
        HeaderName::from_static("webhook-id"),
        webhook_header("webhook-id", &req.msg_id)?,
    );
    map.insert(
        HeaderName::from_static("webhook-timestamp"),
        HeaderValue::from(req.timestamp),
    );
    let mut signature = webhook_header("webhook-signature", &req.signature)?;
    signature.set_sensitive(true);
    map.insert(HeaderName::from_static("webhook-signature"), signature);
    Ok(map)
}

/// A short, log-friendly description of a reqwest error, found by walking
/// its source chain: the top message only repeats the URL, the cause is at
/// the bottom.
fn describe_error(err: &reqwest::Error, connect_timeout: Duration) -> String {
    let mut causes: Vec<String> = Vec::new();
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(e) = source {
        // The guard's own message carries the PARLEY_ALLOW_PRIVATE_WEBHOOKS
        // hint, and "cannot resolve host …" for names that do not resolve.
        if let Some(url_err) = e.downcast_ref::<UrlError>() {
            return url_err.to_string();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            let known = match io.kind() {
                ErrorKind::ConnectionRefused => Some("connection refused"),
                ErrorKind::ConnectionReset => Some("connection reset by the receiver"),
                ErrorKind::ConnectionAborted => Some("connection aborted"),
                ErrorKind::HostUnreachable => Some("host unreachable"),
                ErrorKind::NetworkUnreachable => Some("network unreachable"),
                _ => None,
            };
            if let Some(known) = known {
                return known.to_owned();
            }
        }
        let text = e.to_string();
        if causes.last() != Some(&text) {
            causes.push(text);
        }
        source = e.source();
    }
    if err.is_timeout() {
        // Only the connect timeout (TCP and TLS handshake) gets here; the
        // overall one is ours.
        return format!(
            "connect timed out after {}",
            format_duration(connect_timeout)
        );
    }
    // hyper's "client error (Connect)" says nothing the rest does not.
    causes.retain(|c| !c.starts_with("client error ("));
    let detail = if causes.is_empty() {
        err.to_string()
    } else {
        causes.join(": ")
    };
    if err.is_connect() {
        format!("connection failed: {detail}")
    } else {
        detail
    }
}

/// `10s`, `1500ms`: whole seconds where possible, as people write them.
fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{d:?}")
    }
}

/// At most `max` characters of a value the receiver controls.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Parses `Retry-After`: delay-seconds, or an HTTP-date in any of the three forms RFC 9110
/// asks recipients to accept (IMF-fixdate, RFC 850, asctime), counted from `now`; a date in
/// the past means zero. Anything else yields `None`, which leaves the retry schedule to the
/// caller.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::webhooks::signing::{SigningSecret, signature_header};

    const UA: &str = "Parley-Webhooks/0.1.0 (+https://parley.dev)";
    const TIMEOUT: Duration = Duration::from_secs(5);

    /// What the test server received.
    #[derive(Debug, Clone)]
    struct Seen {
        path: String,
        method: String,
        /// Lower-case names; every value of repeated headers.
        headers: HashMap<String, Vec<String>>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Vec<String> {
            self.headers.get(name).cloned().unwrap_or_default()
        }
    }

    /// What the test server does after reading a request.
    #[derive(Clone)]
    enum Reply {
        /// Writes this head (status line and headers, no blank line) and
        /// body, then closes.
        Raw { head: String, body: Vec<u8> },
        /// Says nothing for this long.
        Stall(Duration),
    }

    impl Reply {
        fn status(status: &str, extra_headers: &str, body: &[u8]) -> Self {
            Self::Raw {
                head: format!(
                    "HTTP/1.1 {status}\r\n{extra_headers}content-length: {}\r\nconnection: close\r\n",
                    body.len()
                ),
                body: body.to_vec(),
            }
        }
    }

    /// A one-reply-fits-all HTTP/1.1 server on 127.0.0.1 that records
    /// every request; enough for a client that sends one POST per connection.
    struct TestServer {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl TestServer {
        async fn start(reply: Reply) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let seen = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&seen);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(handle(stream, reply.clone(), Arc::clone(&log)));
                }
            });
            Self { addr, seen }
        }

        fn url(&self, path: &str) -> Url {
            Url::parse(&format!("http://{}{path}", self.addr)).expect("server URL")
        }

        fn requests(&self) -> Vec<Seen> {
            self.seen.lock().expect("lock").clone()
        }
    }

    async fn handle(mut stream: TcpStream, reply: Reply, log: Arc<Mutex<Vec<Seen>>>) {
        let Some(seen) = read_request(&mut stream).await else {
            return;
        };
        log.lock().expect("lock").push(seen);
        match reply {
            Reply::Raw { head, body } => {
                // Write errors are expected: the client may stop reading.
                let _ = stream.write_all(format!("{head}\r\n").as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            }
            Reply::Stall(d) => tokio::time::sleep(d).await,
        }
    }

    async fn read_request(stream: &mut TcpStream) -> Option<Seen> {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next()?.split(' ');
        let method = request_line.next()?.to_owned();
        let path = request_line.next()?.to_owned();
        let mut headers: HashMap<String, Vec<String>> = HashMap::new();
        for line in lines {
            let (name, value) = line.split_once(':')?;
            headers
                .entry(name.trim().to_ascii_lowercase())
                .or_default()
                .push(value.trim().to_owned());
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.first())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Some(Seen {
            path,
            method,
            headers,
            body,
        })
    }

    fn client(allow_private: bool) -> DeliveryClient {
        DeliveryClient::new(ClientConfig {
            allow_private,
            connect_timeout: Duration::from_secs(2),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            user_agent: UA.to_owned(),
        })
        .expect("client builds")
    }

    fn request(url: Url) -> OutgoingRequest {
        let body = br#"{"type":"message.created","data":{"id":1}}"#.to_vec();
        let secret =
            SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let msg_id = "msg_2mXvWk5h7vGkP2cVn3sB".to_owned();
        let timestamp = 1_700_000_000;
        OutgoingRequest {
            signature: signature_header(&[secret], &msg_id, timestamp, &body),
            url,
            headers: vec![
                ("X-Api-Key".to_owned(), "k-123".to_owned()),
                ("X-Team".to_owned(), "a".to_owned()),
                ("X-Team".to_owned(), "b".to_owned()),
                ("Webhook-Id".to_owned(), "spoofed".to_owned()),
                ("Content-Type".to_owned(), "text/plain".to_owned()),
            ],
            body,
            msg_id,
            timestamp,
        }
    }

    async fn send_to(reply: Reply) -> (AttemptOutcome, TestServer) {
        let server = TestServer::start(reply).await;
        let outcome = client(true)
            .send(&request(server.url("/hook")), TIMEOUT)
            .await;
        (outcome, server)
    }

    #[tokio::test]
    async fn a_delivery_carries_configured_standard_webhook_and_agent_headers() {
        let (outcome, server) = send_to(Reply::status("200 OK", "", b"ok")).await;
        assert!(outcome.is_success(), "{outcome:?}");
        let sent = request(server.url("/hook"));
        let seen = server.requests();
        assert_eq!(seen.len(), 1);
        let r = &seen[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hook");
        assert_eq!(r.body, sent.body);
        assert_eq!(r.header("x-api-key"), ["k-123"]);
        assert_eq!(r.header("x-team"), ["a", "b"]);
        assert_eq!(r.header("content-type"), ["application/json"]);
        assert_eq!(r.header("webhook-id"), [sent.msg_id.as_str()]);
        assert_eq!(r.header("webhook-timestamp"), ["1700000000"]);
        assert_eq!(r.header("webhook-signature"), [sent.signature.as_str()]);
        assert_eq!(r.header("user-agent"), [UA]);
    }

    #[tokio::test]
    async fn a_200_succeeds_and_keeps_the_body() {
        let (outcome, _server) = send_to(Reply::status("200 OK", "", b"thanks")).await;
        assert_eq!(outcome.status, Some(200));
        assert_eq!(outcome.error, None);
        assert_eq!(outcome.body_excerpt().as_deref(), Some("thanks"));
        assert_eq!(disposition(&outcome), Disposition::Succeeded);
    }

    #[tokio::test]
    async fn a_500_is_retried() {
        let (outcome, _server) = send_to(Reply::status("500 Internal Server Error", "", b"")).await;
        assert_eq!(outcome.status, Some(500));
        assert!(!outcome.is_success());
        assert_eq!(outcome.body_excerpt(), None);
        assert_eq!(disposition(&outcome), Disposition::Retry { after: None });
    }

    #[tokio::test]
    async fn a_429_is_retried_after_the_receivers_retry_after() {
        let (outcome, _server) = send_to(Reply::status(
            "429 Too Many Requests",
            "retry-after: 2\r\n",
            b"",
        ))
        .await;
        assert_eq!(outcome.status, Some(429));
        assert_eq!(
            disposition(&outcome),
            Disposition::Retry {
                after: Some(Duration::from_secs(2))
            }
        );
    }

    #[tokio::test]
    async fn a_400_fails_without_retry() {
        let (outcome, _server) = send_to(Reply::status("400 Bad Request", "", b"bad")).await;
        assert_eq!(outcome.status, Some(400));
        assert_eq!(disposition(&outcome), Disposition::Failed);
    }

    #[tokio::test]
    async fn a_redirect_is_reported_and_not_followed() {
        let server = TestServer::start(Reply::Raw {
            head: String::new(),
            body: Vec::new(),
        })
        .await;
        // The Location points back at the same server, so a followed
        // redirect would show up as a second request.
        let elsewhere = server.url("/elsewhere");
        let redirecting = TestServer::start(Reply::status(
            "302 Found",
            &format!("location: {elsewhere}\r\n"),
            b"",
        ))
        .await;
        let outcome = client(true)
            .send(&request(redirecting.url("/hook")), TIMEOUT)
            .await;
        assert_eq!(outcome.status, Some(302));
        assert_eq!(
            outcome.error.as_deref(),
            Some(format!("redirect to {elsewhere} not followed").as_str())
        );
        assert_eq!(disposition(&outcome), Disposition::Failed);
        assert_eq!(redirecting.requests().len(), 1);
        assert!(server.requests().is_empty(), "the Location was requested");
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_with_a_clear_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let url = Url::parse(&format!("http://{addr}/hook")).expect("url");
        let outcome = client(true).send(&request(url), TIMEOUT).await;
        assert_eq!(outcome.status, None);
        assert_eq!(outcome.error.as_deref(), Some("connection refused"));
        assert_eq!(disposition(&outcome), Disposition::Retry { after: None });
    }

    #[tokio::test]
    async fn a_receiver_slower_than_the_timeout_is_cut_off_and_retried() {
        let server = TestServer::start(Reply::Stall(Duration::from_secs(10))).await;
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let outcome = client(true)
            .send(&request(server.url("/hook")), timeout)
            .await;
        let took = started.elapsed();
        assert!(took < timeout + Duration::from_millis(500), "took {took:?}");
        assert!(took >= timeout, "took {took:?}");
        assert_eq!(outcome.error.as_deref(), Some("timed out after 300ms"));
        assert_eq!(disposition(&outcome), Disposition::Retry { after: None });
    }

    #[tokio::test]
    async fn a_body_cut_short_after_the_head_keeps_the_status_and_is_retried() {
        let server = TestServer::start(Reply::Raw {
            head: "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n".to_owned(),
            body: b"partial".to_vec(),
        })
        .await;
        // The server closes after "partial"; hyper reports the short body.
        let outcome = client(true).send(&request(server.url("/")), TIMEOUT).await;
        assert_eq!(outcome.status, Some(200));
        let error = outcome.error.clone().expect("short body is an error");
        assert!(
            error.starts_with("reading the response body failed"),
            "{error}"
        );
        assert!(!outcome.is_success());
        assert_eq!(disposition(&outcome), Disposition::Retry { after: None });
    }

    #[tokio::test]
    async fn a_one_mebibyte_body_is_cut_to_the_limit() {
        let big = vec![b'x'; 1024 * 1024];
        let (outcome, _server) = send_to(Reply::status("200 OK", "", &big)).await;
        assert_eq!(outcome.body.len(), DEFAULT_MAX_BODY_BYTES);
        assert!(outcome.body_truncated);
        assert!(outcome.is_success(), "{outcome:?}");
        let excerpt = outcome.body_excerpt().expect("excerpt");
        assert!(excerpt.ends_with("…[truncated]"));
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_limit_without_a_length_is_not_truncated() {
        // No content-length: the body runs until the server closes.
        let server = TestServer::start(Reply::Raw {
            head: "HTTP/1.1 200 OK\r\nconnection: close\r\n".to_owned(),
            body: vec![b'y'; DEFAULT_MAX_BODY_BYTES],
        })
        .await;
        let outcome = client(true).send(&request(server.url("/")), TIMEOUT).await;
        assert!(outcome.is_success(), "{outcome:?}");
        assert_eq!(outcome.body.len(), DEFAULT_MAX_BODY_BYTES);
        assert!(!outcome.body_truncated);
    }

    #[tokio::test]
    async fn a_local_name_is_refused_at_connect_time_without_a_request() {
        let server = TestServer::start(Reply::status("200 OK", "", b"")).await;
        let url =
            Url::parse(&format!("http://localhost:{}/hook", server.addr.port())).expect("url");
        let outcome = client(false).send(&request(url), TIMEOUT).await;
        let error = outcome.error.clone().expect("refused");
        assert!(error.contains(ALLOW_PRIVATE_SETTING), "{error}");
        assert!(error.contains("localhost"), "{error}");
        assert_eq!(outcome.status, None);
        assert_eq!(disposition(&outcome), Disposition::Failed);
        assert!(server.requests().is_empty());
    }

    #[tokio::test]
    async fn a_loopback_literal_is_refused_before_connecting() {
        let server = TestServer::start(Reply::status("200 OK", "", b"")).await;
        let outcome = client(false)
            .send(&request(server.url("/hook")), TIMEOUT)
            .await;
        let error = outcome.error.clone().expect("refused");
        assert!(error.contains(ALLOW_PRIVATE_SETTING), "{error}");
        assert!(error.contains("127.0.0.1"), "{error}");
        assert_eq!(disposition(&outcome), Disposition::Failed);
        assert!(server.requests().is_empty());
    }

    #[tokio::test]
    async fn an_unresolvable_name_is_retried_with_a_clear_error() {
        let url = Url::parse("http://no-such-host.invalid/hook").expect("url");
        let outcome = client(false).send(&request(url), TIMEOUT).await;
        let error = outcome.error.clone().expect("error");
        assert!(
            error.starts_with("cannot resolve host no-such-host.invalid"),
            "{error}"
        );
        assert_eq!(disposition(&outcome), Disposition::Retry { after: None });
    }

    /// A server that answers every connection with `bytes` right away,
    /// without reading, then (if `hold`) keeps it open.
    async fn raw_server(bytes: &'static [u8], hold: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = stream.write_all(bytes).await;
                    if hold {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn https_to_a_plain_http_server_fails_with_a_tls_error() {
        let addr = raw_server(b"HTTP/1.1 400 Bad Request\r\n\r\n", false).await;
        let url = Url::parse(&format!("https://{addr}/hook")).expect("url");
        let outcome = client(true).send(&request(url), TIMEOUT).await;
        let error = outcome.error.clone().expect("error");
        assert!(error.starts_with("connection failed: "), "{error}");
        assert_eq!(disposition(&outcome), Disposition::Retry { after: None });
    }

    #[tokio::test]
    async fn a_tls_handshake_that_never_completes_hits_the_connect_timeout() {
        let addr = raw_server(b"", true).await;
        let url = Url::parse(&format!("https://{addr}/hook")).expect("url");
        let client = DeliveryClient::new(ClientConfig {
            allow_private: true,
            connect_timeout: Duration::from_millis(200),
            ..ClientConfig::default()
        })
        .expect("client");
        let outcome = client.send(&request(url), TIMEOUT).await;
        assert_eq!(
            outcome.error.as_deref(),
            Some("connect timed out after 200ms")
        );
        assert!(outcome.duration < Duration::from_secs(2), "{outcome:?}");
        assert_eq!(disposition(&outcome), Disposition::Retry { after: None });
    }

    #[tokio::test]
    async fn reserved_or_invalid_configured_headers_fail_without_sending() {
        let server = TestServer::start(Reply::status("200 OK", "", b"")).await;
        for (name, value) in [
            ("Content-Length", "5"),
            ("Host", "internal"),
            ("Bad Name", "x"),
            ("X-Ok", "line\nbreak"),
        ] {
            let mut req = request(server.url("/"));
            req.headers = vec![(name.to_owned(), value.to_owned())];
            let outcome = client(true).send(&req, TIMEOUT).await;
            let error = outcome.error.clone().expect("refused");
            assert!(error.starts_with(INVALID_REQUEST_PREFIX), "{error}");
            assert!(!error.contains("line\nbreak"), "values stay out of logs");
            assert_eq!(disposition(&outcome), Disposition::Failed);
        }
        assert!(server.requests().is_empty());
    }

    fn outcome(status: Option<u16>, error: Option<&str>) -> AttemptOutcome {
        AttemptOutcome {
            status,
            duration: Duration::ZERO,
            error: error.map(str::to_owned),
            body: Vec::new(),
            body_truncated: false,
            retry_after: Some(Duration::from_secs(7)),
        }
    }

    #[test]
    fn dispositions_follow_the_status_classes() {
        let retry = Disposition::Retry { after: None };
        let retry_after = Disposition::Retry {
            after: Some(Duration::from_secs(7)),
        };
        for (status, expected) in [
            (200, Disposition::Succeeded),
            (204, Disposition::Succeeded),
            (301, Disposition::Failed),
            (400, Disposition::Failed),
            (401, Disposition::Failed),
            (404, Disposition::Failed),
            (408, retry),
            (410, Disposition::Failed),
            (429, retry_after),
            (500, retry),
            (502, retry),
            (503, retry_after),
        ] {
            assert_eq!(
                disposition(&outcome(Some(status), None)),
                expected,
                "{status}"
            );
        }
        assert_eq!(
            disposition(&outcome(None, Some("timed out after 10s"))),
            retry
        );
        assert_eq!(
            disposition(&outcome(
                None,
                Some("the URL's host 10.0.0.1 is ...; set PARLEY_ALLOW_PRIVATE_WEBHOOKS=true")
            )),
            Disposition::Failed
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:50:37 GMT", now),
            Some(Duration::from_secs(60)),
            "the obsolete RFC 850 form"
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:51:37 1994", now),
            Some(Duration::from_secs(120)),
            "the obsolete asctime form"
        );
        for bad in ["", "-1", "1.5", "soon", "Sun, 06 Nov 1994 08:49:37 CET"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn excerpts_mark_truncation_and_survive_bad_utf8() {
        let mut o = outcome(Some(200), None);
        o.body = vec![b'h', b'i', 0xff];
        assert_eq!(o.body_excerpt().as_deref(), Some("hi\u{fffd}"));
        o.body_truncated = true;
        assert_eq!(o.body_excerpt().as_deref(), Some("hi\u{fffd}…[truncated]"));
    }

    #[test]
    fn excerpts_replace_nul_bytes_which_postgresql_text_refuses() {
        let mut o = outcome(Some(200), None);
        o.body = b"{\"ok\":\0true}".to_vec();
        assert_eq!(o.body_excerpt().as_deref(), Some("{\"ok\":\u{fffd}true}"));
    }

    #[test]
    fn debug_output_of_a_request_hides_header_values_and_the_signature() {
        let req = request(Url::parse("http://example.com/").expect("url"));
        let shown = format!("{req:?}");
        assert!(shown.contains("X-Api-Key"), "{shown}");
        assert!(!shown.contains("k-123"), "{shown}");
        assert!(!shown.contains("v1,"), "{shown}");
    }

    #[test]
    fn durations_are_written_as_people_write_them() {
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
