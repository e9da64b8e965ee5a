//! The browser's `Origin` of a request, decided at the edge like [`super::client::ClientAddr`]:
//! domains check it against a bot's allowed origins without reading headers, and CORS answers
//! from it.
use actix_web::{
    HttpRequest, HttpResponse,
    http::header::{self, HeaderValue},
    web,
};

use crate::state::AppState;

/// Where a request comes from, as the browser says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestOrigin {
    /// The `Origin` header, normalised (`scheme://host[:port]`, lower case, default port
    /// dropped); `None` when there was none (server-to-server clients, curl). A browser always
    /// sends one on a cross-origin request and on every WebSocket.
    pub origin: Option<String>,
    /// The origin is the server's own (its `Host`): the hosted chat page, GraphiQL.
    pub same_origin: bool,
}

impl RequestOrigin {
    /// The origin of `req`. The server's own host is the `Host` header, or, when the peer is a
    /// trusted proxy (`PARLEY_TRUSTED_PROXIES`), the `X-Forwarded-Host` it set.
    pub fn of(req: &HttpRequest, trusted: &[ipnet::IpNet]) -> Self {
        let raw = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        let Some(raw) = raw else {
            return Self {
                origin: None,
                same_origin: false,
            };
        };
        // An origin that does not parse (such as "null" from a sandboxed frame) matches no
        // allowed origin.
        let origin = normalize(raw).unwrap_or_else(|_| raw.to_ascii_lowercase());
        let via_proxy = req
            .peer_addr()
            .is_some_and(|peer| trusted.iter().any(|net| net.contains(&peer.ip())));
        let forwarded = via_proxy
            .then(|| req.headers().get(header::X_FORWARDED_HOST))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        let host = forwarded
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
            })
            .map(str::to_ascii_lowercase);
        let same_origin = match (&host, url::Url::parse(&origin)) {
            (Some(host), Ok(url)) => {
                let authority = match url.port() {
                    Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
                    None => url.host_str().unwrap_or_default().to_owned(),
                };
                let default_port = match url.scheme() {
                    "https" => ":443",
                    _ => ":80",
                };
                *host == authority || *host == format!("{authority}{default_port}")
            }
            _ => false,
        };
        Self {
            origin: Some(origin),
            same_origin,
        }
    }

    /// May a visitor operation of a bot that lists `allowed` run for this request? Yes when
    /// the bot lists none, when the request is from the server's own origin (the hosted chat
    /// page), and when it carries no `Origin` at all: only browsers send one, and the list
    /// protects a bot from being embedded on other websites, which needs a browser; a
    /// non-browser client could send any `Origin` it likes, so refusing it would protect
    /// nothing.
    pub fn allows(&self, allowed: &[String]) -> bool {
        if allowed.is_empty() || !self.restricts() {
            return true;
        }
        self.origin
            .as_ref()
            .is_some_and(|origin| allowed.iter().any(|a| a == origin))
    }

    /// Whether a list of allowed origins can refuse this request (a browser's, from another
    /// website): if not, no list need be read.
    pub fn restricts(&self) -> bool {
        !self.same_origin && self.origin.is_some()
    }
}

/// `scheme://host[:port]` of an http(s) origin, lower case, without a default port; an error
/// says what is wrong.
pub fn normalize(value: &str) -> Result<String, String> {
    let value = value.trim();
    let url = url::Url::parse(value)
        .map_err(|e| format!("{value:?} is not an origin (scheme://host[:port]): {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{value:?} is not an http or https origin"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{value:?} has no host"));
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
        || url.path() != "/"
    {
        return Err(format!(
            "{value:?} is not just an origin: write scheme://host[:port], without a path"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// The dashboards' origins (`PARLEY_CORS_ORIGINS`) allowed to call every operation of
/// `/graphql` with credentials (`Authorization`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// None: only visitor operations from browsers on other origins.
    #[default]
    None,
    /// `*`: any origin.
    Any,
    /// These origins, normalised.
    List(Vec<String>),
}

impl CorsOrigins {
    /// A comma-separated list of origins, or `*`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(Self::None);
        }
        if value == "*" {
            return Ok(Self::Any);
        }
        let list = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(normalize)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::List(list))
    }

    /// Is `origin` a dashboard's?
    pub fn contains(&self, origin: &str) -> bool {
        match self {
            Self::None => false,
            Self::Any => true,
            Self::List(list) => list.iter().any(|o| o == origin),
        }
    }
}

const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
const VISITOR_HEADERS: &str = "content-type";
const DASHBOARD_HEADERS: &str = "authorization, content-type";

/// The CORS headers of an answer on `/graphql` to a request from `origin`. Any origin may call
/// it (every resolver checks the caller and the bot's allowed origins itself); only the
/// dashboards of `PARLEY_CORS_ORIGINS` may send `Authorization`. No cookies are used, so
/// credentials mode is never allowed.
pub fn add_cors_headers(response: &mut HttpResponse, origin: Option<&str>) {
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(value) = origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
}

/// `OPTIONS /graphql`: the preflight. Dashboards may send `Authorization`, other origins only
/// `Content-Type`.
pub async fn preflight(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut response = HttpResponse::NoContent().finish();
    let Some(origin) = origin else {
        return response;
    };
    let dashboard = normalize(&origin).is_ok_and(|o| state.settings.cors_origins.contains(&o));
    add_cors_headers(&mut response, Some(&origin));
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(if dashboard {
            DASHBOARD_HEADERS
        } else {
            VISITOR_HEADERS
        }),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised() {
        assert_eq!(
            normalize("HTTPS://Shop.Example.com:443/").as_deref(),
            Ok("https://shop.example.com")
        );
        assert_eq!(
            normalize("http://localhost:8080").as_deref(),
            Ok("http://localhost:8080")
        );
        assert!(normalize("https://shop.example.com/page").is_err());
        assert!(normalize("ftp://shop.example.com").is_err());
        assert!(normalize("shop.example.com").is_err());
        assert!(normalize("https://user@shop.example.com").is_err());
        assert!(normalize("https://shop.example.com?x=1").is_err());
    }

    fn behind(peer: &str, headers: &[(&str, &str)]) -> HttpRequest {
        let mut req = actix_web::test::TestRequest::default()
            .peer_addr(peer.parse().expect("socket address"));
        for (name, value) in headers {
            req = req.insert_header((*name, *value));
        }
        req.to_http_request()
    }

    #[test]
    fn a_trusted_proxys_forwarded_host_decides_what_is_same_origin_and_a_strangers_does_not() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let headers = [
            ("origin", "https://chat.example.com"),
            ("host", "10.0.0.7:8080"),
            ("x-forwarded-host", "chat.example.com"),
        ];
        let via_proxy = RequestOrigin::of(&behind("10.0.0.2:5000", &headers), &trusted);
        assert_eq!(
            via_proxy.origin.as_deref(),
            Some("https://chat.example.com")
        );
        assert!(via_proxy.same_origin);
        // The same header from a peer that is no proxy of ours is the client's claim.
        let stranger = RequestOrigin::of(&behind("203.0.113.9:5000", &headers), &trusted);
        assert!(!stranger.same_origin);
    }

    #[test]
    fn cors_origins_parse() {
        assert_eq!(CorsOrigins::parse("*"), Ok(CorsOrigins::Any));
        assert_eq!(CorsOrigins::parse(""), Ok(CorsOrigins::None));
        let list = CorsOrigins::parse("https://a.example, http://localhost:3000").expect("list");
        assert!(list.contains("https://a.example"));
        assert!(list.contains("http://localhost:3000"));
        assert!(!list.contains("https://b.example"));
        assert!(CorsOrigins::parse("https://a.example/x").is_err());
    }

    #[test]
    fn allowed_origins_decide() {
        let from = |o: Option<&str>, same| RequestOrigin {
            origin: o.map(str::to_owned),
            same_origin: same,
        };
        let list = vec!["https://shop.example".to_owned()];
        assert!(from(Some("https://shop.example"), false).allows(&list));
        assert!(!from(Some("https://evil.example"), false).allows(&list));
        assert!(from(Some("https://parley.example"), true).allows(&list));
        assert!(from(None, false).allows(&list));
        assert!(from(Some("https://evil.example"), false).allows(&[]));
        assert!(from(Some("https://evil.example"), false).restricts());
        assert!(!from(Some("https://parley.example"), true).restricts());
        assert!(!from(None, false).restricts());
    }
}
