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
mod tests;
