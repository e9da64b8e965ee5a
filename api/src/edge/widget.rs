//! The chat widget's routes: `GET /widget.js` (the script, embedded in the binary) and
//! `GET /chat/{botId}` (the hosted chat page, a shareable link).
use std::sync::LazyLock;

use actix_web::{
    HttpRequest, HttpResponse,
    http::header::{self, HeaderValue},
    web,
};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// The widget's source: plain JavaScript, no build step.
pub const WIDGET_JS: &str = include_str!("../../assets/widget.js");

/// The script's ETag: a hash of its content, so that a new build revalidates at once.
static ETAG: LazyLock<String> = LazyLock::new(|| {
    let digest = Sha256::digest(WIDGET_JS.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"w-{hex}\"")
});

/// `GET /widget.js`: cacheable for five minutes, then revalidated by ETag (the URL is not
/// versioned, so a long lifetime would keep old widgets on pages after an upgrade).
pub async fn widget_js(req: HttpRequest) -> HttpResponse {
    let etag = ETAG.as_str();
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        HttpResponse::NotModified().finish()
    } else {
        HttpResponse::Ok()
            .content_type("text/javascript; charset=utf-8")
            .body(WIDGET_JS)
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(etag).unwrap_or(HeaderValue::from_static("\"w\"")),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300, stale-while-revalidate=86400"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Any page may load the script, also with `crossorigin`.
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// The hosted page's policy: nothing but our own script, our own API and avatars.
pub const CHAT_PAGE_CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
     img-src 'self' https: http: data:; style-src 'self'; base-uri 'none'; form-action 'none'";

/// `GET /chat/{botId}`: the widget, full page. The bot id is checked to be a UUID before it
/// is written into the page.
pub async fn chat_page(path: web::Path<String>) -> HttpResponse {
    let Ok(bot) = Uuid::parse_str(path.trim()) else {
        return HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("no such chat");
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n<title>Chat</title>\n</head>\n<body>\n\
         <main id=\"parley-chat\"></main>\n\
         <script src=\"/widget.js\" data-parley-bot=\"{bot}\" data-parley-target=\"#parley-chat\" \
         data-parley-page=\"true\" async></script>\n\
         <noscript>This chat needs JavaScript.</noscript>\n</body>\n</html>\n"
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CHAT_PAGE_CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(html)
}
