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
    let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
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
    let url = Url::parse(&format!("http://localhost:{}/hook", server.addr.port())).expect("url");
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
