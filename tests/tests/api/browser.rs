//! The chat widget in a real browser: headless Chromium driven through chromedriver's
//! WebDriver API (plain HTTP, so no extra crate). The tests run whenever a Chromium and a
//! chromedriver are found (`PARLEY_CHROMIUM`, `PARLEY_CHROMEDRIVER`, or on PATH); under
//! `CI=true` they must run. Screenshots go to `target/widget-screenshots/`.
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use base64::Engine as _;
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

use crate::helpers::*;

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// The browser and its driver, or `None` (the test is skipped) outside CI.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("PARLEY_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| on_path(&["chromium", "chromium-browser", "google-chrome"]));
    let driver = std::env::var_os("PARLEY_CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| on_path(&["chromedriver"]));
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but no Chromium/chromedriver found (PARLEY_CHROMIUM, PATH)")
        }
        _ => {
            eprintln!(
                "skipped: no Chromium and chromedriver (set PARLEY_CHROMIUM or install chromium chromium-driver)"
            );
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A chromedriver process and one browser session on it; both end on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session (the browser quits) even when the test failed, then stop the
        // driver we started.
        if let Some(addr) = self.base.strip_prefix("http://")
            && let Ok(mut conn) = std::net::TcpStream::connect(addr)
        {
            use std::io::{Read as _, Write as _};
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                conn,
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            let _ = conn.read(&mut [0u8; 256]);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn launch(chromium: &Path, driver: &Path) -> Self {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile =
            std::env::temp_dir().join(format!("parley-chromium-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let args = json!([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            "--hide-scrollbars",
            format!("--user-data-dir={}", profile.display()),
        ]);
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args }
        } } });
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_owned();
        Self {
            driver: child,
            base,
            session,
            http,
            _profile: TempDir(profile),
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if !body.is_null() {
            req = req.json(&body);
        }
        let r: Value = req
            .send()
            .await
            .expect("webdriver command")
            .json()
            .await
            .expect("webdriver JSON");
        if r["value"].get("error").is_some() {
            panic!("webdriver {path}: {r}");
        }
        r["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn refresh(&self) {
        self.cmd(reqwest::Method::POST, "/refresh", json!({})).await;
    }

    /// Runs `body` (a function body; `R()` is the widget's shadow root) in the page.
    async fn js(&self, body: &str, args: Value) -> Value {
        let script = format!(
            "const R = () => {{ const h = document.querySelector('[data-parley-host]'); return h && h.shadowRoot; }};\n\
             const Q = (s) => {{ const r = R(); return r ? r.querySelector(s) : null; }};\n\
             const QA = (s) => {{ const r = R(); return r ? Array.from(r.querySelectorAll(s)) : []; }};\n\
             const shown = (e) => !!e && e.getClientRects().length > 0;\n{body}"
        );
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Waits until `cond` (an expression) is truthy.
    async fn wait(&self, what: &str, cond: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.js(&format!("return !!({cond});"), json!([])).await;
            if v == json!(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let dump = self.messages().await;
                panic!("timed out waiting for {what}; messages: {dump:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The transcript as (from, text) pairs.
    async fn messages(&self) -> Vec<(String, String)> {
        let v = self
            .js(
                "return QA('[data-parley=message]').map(m => [m.dataset.from, m.textContent]);",
                json!([]),
            )
            .await;
        serde_json::from_value(v).unwrap_or_default()
    }

    async fn click(&self, selector: &str) {
        self.js(
            "const e = Q(arguments[0]); if (!e) throw new Error('no ' + arguments[0]); e.click();",
            json!([selector]),
        )
        .await;
    }

    async fn click_choice(&self, label: &str) {
        self.js(
            "const b = QA('[data-parley=choice]').find(b => b.textContent === arguments[0]); b.click();",
            json!([label]),
        )
        .await;
    }

    /// Types `text` in the answer field and presses Enter.
    async fn answer(&self, text: &str) {
        self.wait(
            "the input",
            "shown(Q('[data-parley=input]')) && !Q('[data-parley=input]').disabled",
        )
        .await;
        self.js(
            "const i = Q('[data-parley=input]'); i.focus(); i.value = arguments[0];\
             i.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));",
            json!([text]),
        )
        .await;
    }

    /// Presses keys on the real keyboard (WebDriver actions), into whatever has the focus.
    async fn keys(&self, text: &str) {
        let actions: Vec<Value> = text
            .chars()
            .flat_map(|c| {
                let c = c.to_string();
                [
                    json!({ "type": "keyDown", "value": c }),
                    json!({ "type": "keyUp", "value": c }),
                ]
            })
            .collect();
        self.cmd(
            reqwest::Method::POST,
            "/actions",
            json!({ "actions": [ { "type": "key", "id": "keyboard", "actions": actions } ] }),
        )
        .await;
    }

    async fn resize(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            json!({ "width": width, "height": height }),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) {
        let png = self
            .cmd(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("png");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/widget-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), bytes).expect("screenshot");
    }
}

/// A website on another origin that embeds the widget with one script tag, under a strict CSP.
async fn host_page(app: &TestApp, bot: String) -> (String, actix_web::dev::ServerHandle) {
    site(app.port, bot, "").await
}

/// A website embedding the widget served on `api_port`, with `attrs` on its script tag.
async fn site(
    api_port: u16,
    bot: String,
    attrs: &'static str,
) -> (String, actix_web::dev::ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let api = format!("http://127.0.0.1:{api_port}");
    let csp = format!(
        "default-src 'none'; script-src {api}; connect-src {api} ws://127.0.0.1:{api_port}; img-src *; style-src 'self'"
    );
    let server = actix_web::HttpServer::new(move || {
        let page = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>Acme shop</title></head><body><h1>Acme shop</h1>\
             <p>Our products are great.</p><div id=\"chat\"></div>\
             <script src=\"{api}/widget.js\" data-parley-bot=\"{bot}\" {attrs} async></script>\
             </body></html>"
        );
        let csp = csp.clone();
        actix_web::App::new().route(
            "/",
            actix_web::web::get().to(move || {
                let page = page.clone();
                let csp = csp.clone();
                async move {
                    actix_web::HttpResponse::Ok()
                        .content_type("text/html; charset=utf-8")
                        .insert_header(("content-security-policy", csp))
                        .body(page)
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .expect("listen")
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}/"), handle)
}

fn flow(webhook: &str) -> Value {
    json!({
        "startBlockId": "hello",
        "blocks": [
            { "id": "hello", "kind": "MESSAGE", "text": "Welcome to Acme!", "next": "topic" },
            { "id": "topic", "kind": "QUESTION", "text": "What brings you here?", "questionType": "CHOICE", "saveAnswerTo": "topic",
              "choices": [ { "label": "Sales" }, { "label": "Support" } ], "next": "email" },
            { "id": "email", "kind": "QUESTION", "text": "What is your email?", "questionType": "EMAIL", "saveAnswerTo": "email", "next": "hook" },
            { "id": "hook", "kind": "WEBHOOK", "webhookId": webhook, "async": false, "next": "note" },
            { "id": "note", "kind": "QUESTION", "text": "Anything else?", "questionType": "TEXT", "saveAnswerTo": "note", "next": "bye" },
            { "id": "bye", "kind": "END" }
        ]
    })
}

async fn widget_bot(app: &TestApp, owner: &TestUser) -> (String, MockServer) {
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(Duration::from_millis(300))
                .set_body_json(json!({ "responses": [ { "type": "text", "text": "Ticket 42 is open for you." } ] })),
        )
        .mount(&hook)
        .await;
    let webhook = app
        .new_webhook(owner, &format!("{}/hook", hook.uri()))
        .await;
    let bot = app.new_bot(owner).await;
    assert_ok(
        &app.save_flow(&owner.token, &bot, flow(&webhook), None)
            .await,
    );
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    assert_ok(
        &app.gql(
            &owner.token,
            "mutation($b: ID!, $a: AppearanceInput!) { updateBotAppearance(botId: $b, appearance: $a) { id } }",
            json!({ "b": bot, "a": { "title": "Acme support", "primaryColor": "#0f766e", "launcherText": "Questions?" } }),
        )
        .await,
    );
    (bot, hook)
}

const XSS: &str = "<img src=x onerror=\"window.__pwned=1\">";

/// Chats from the launcher to the end; `shots` names the screenshots taken on the way.
async fn chat_to_end(b: &Browser, shots: Option<&str>) {
    b.wait(
        "the first message and choices",
        "QA('[data-parley=choice]').length === 2",
    )
    .await;
    b.click_choice("Support").await;
    b.wait("the email question", "QA('[data-parley=message]').some(m => m.textContent === 'What is your email?') && !Q('[data-parley=input]').disabled")
        .await;
    b.answer("not-an-email").await;
    b.wait(
        "the invalid answer",
        "QA('[data-parley=invalid]').length === 1",
    )
    .await;
    b.answer("ada@example.com").await;
    b.wait(
        "the webhook's text",
        "QA('[data-parley=message]').some(m => m.textContent === 'Ticket 42 is open for you.')",
    )
    .await;
    b.wait("the last question", "QA('[data-parley=message]').some(m => m.textContent === 'Anything else?') && !Q('[data-parley=input]').disabled")
        .await;
    if let Some(prefix) = shots {
        b.screenshot(&format!("{prefix}-conversation")).await;
    }
    b.answer(XSS).await;
    b.wait(
        "the end",
        "shown(Q('[data-parley=ended]')) && shown(Q('[data-parley=restart]'))",
    )
    .await;
    if let Some(prefix) = shots {
        b.screenshot(&format!("{prefix}-ended")).await;
    }
}

#[tokio::test]
async fn a_visitor_chats_on_another_website_resumes_after_a_reload_and_restarts() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let (bot, _hook) = widget_bot(&app, &owner).await;
    let (page, site) = host_page(&app, bot.clone()).await;
    let b = Browser::launch(&chromium, &driver).await;
    b.goto(&page).await;

    // The launcher, with the bot's text and colour; no conversation before it is opened.
    b.wait("the launcher", "shown(Q('[data-parley=launcher]')) && Q('[data-parley=launcher]').textContent === 'Questions?'")
        .await;
    let colour = b
        .js(
            "return getComputedStyle(Q('[data-parley=launcher]')).backgroundColor;",
            json!([]),
        )
        .await;
    assert_eq!(
        colour,
        json!("rgb(15, 118, 110)"),
        "styles apply under the page's CSP"
    );
    assert_eq!(
        b.js(
            "return localStorage.getItem('parley:' + arguments[0]);",
            json!([bot])
        )
        .await,
        Value::Null
    );
    b.screenshot("desktop-launcher").await;

    // Open from the keyboard: the conversation starts; the choice, an invalid email, the sync
    // webhook's text.
    b.keys("\u{E004}").await; // Tab
    b.wait(
        "the focused launcher",
        "R().activeElement === Q('[data-parley=launcher]')",
    )
    .await;
    b.keys("\u{E007}").await; // Enter
    b.wait(
        "the first message and choices",
        "QA('[data-parley=choice]').length === 2",
    )
    .await;
    let saved = b
        .js(
            "return JSON.parse(localStorage.getItem('parley:' + arguments[0]));",
            json!([bot]),
        )
        .await;
    let first_conversation = saved["conversationId"]
        .as_str()
        .expect("saved id")
        .to_owned();
    assert!(saved["visitorToken"].is_string());
    b.click_choice("Support").await;
    b.wait("the email question", "QA('[data-parley=message]').some(m => m.textContent === 'What is your email?') && !Q('[data-parley=input]').disabled")
        .await;
    // Markup typed by a visitor is text, never HTML.
    b.answer(XSS).await;
    b.wait(
        "the invalid answer",
        "QA('[data-parley=invalid]').length === 1",
    )
    .await;
    // Typed on the keyboard into the focused field, and sent with Enter.
    b.wait("the focused input", "R().activeElement === Q('[data-parley=input]') && !Q('[data-parley=input]').disabled && Q('[data-parley=input]').type === 'email'")
        .await;
    b.keys("ada@example.com\u{E007}").await;
    // While the sync webhook works, the bot is typing.
    b.wait("the typing indicator", "shown(Q('[data-parley=typing]'))")
        .await;
    b.wait(
        "the webhook's text",
        "QA('[data-parley=message]').some(m => m.textContent === 'Ticket 42 is open for you.')",
    )
    .await;
    b.wait("the last question", "QA('[data-parley=message]').some(m => m.textContent === 'Anything else?') && !Q('[data-parley=input]').disabled")
        .await;
    let xss = b
        .js(
            "return { text: QA('[data-parley=message][data-from=visitor]').some(m => m.textContent === arguments[0]),\
                      imgs: R().querySelectorAll('img:not([alt=\"\"])').length + document.querySelectorAll('img').length,\
                      pwned: window.__pwned === 1 };",
            json!([XSS]),
        )
        .await;
    assert_eq!(xss, json!({ "text": true, "imgs": 0, "pwned": false }));
    b.screenshot("desktop-conversation").await;
    let a11y = b
        .js(
            "return { live: Q('[role=log]').getAttribute('aria-live'),\
                      input: Q('[data-parley=input]').getAttribute('aria-label'),\
                      send: Q('[data-parley=send]').textContent,\
                      expanded: Q('[data-parley=launcher]').getAttribute('aria-expanded'),\
                      typing: shown(Q('[data-parley=typing]')) };",
            json!([]),
        )
        .await;
    assert_eq!(
        a11y,
        json!({ "live": "polite", "input": "Your answer", "send": "Send", "expanded": "true", "typing": false })
    );
    let before = b.messages().await;

    // Reload: the transcript comes back once, and the pending question is live again.
    b.refresh().await;
    b.wait("the launcher", "shown(Q('[data-parley=launcher]'))")
        .await;
    b.click("[data-parley=launcher]").await;
    b.wait("the replayed transcript", "QA('[data-parley=message]').some(m => m.textContent === 'Anything else?') && !Q('[data-parley=input]').disabled")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.messages().await, before, "no gap, no repeat");

    // Finish, then restart: a new conversation.
    b.answer("That is all, thanks").await;
    b.wait("the end", "shown(Q('[data-parley=ended]')) && shown(Q('[data-parley=restart]')) && !shown(Q('[data-parley=input]'))")
        .await;
    b.screenshot("desktop-ended").await;
    b.click("[data-parley=restart]").await;
    b.wait(
        "a new conversation",
        "QA('[data-parley=choice]').length === 2 && QA('[data-parley=message]').length === 2",
    )
    .await;
    let saved = b
        .js(
            "return JSON.parse(localStorage.getItem('parley:' + arguments[0]));",
            json!([bot]),
        )
        .await;
    assert_ne!(
        saved["conversationId"].as_str(),
        Some(first_conversation.as_str())
    );

    // window.Parley closes and opens the panel.
    b.js("window.Parley.close();", json!([])).await;
    b.wait("a closed panel", "!shown(Q('[data-parley=panel]'))")
        .await;
    b.js("window.Parley.open();", json!([])).await;
    b.wait("an open panel", "shown(Q('[data-parley=panel]'))")
        .await;

    // A 360 px phone: the panel fills the screen, nothing overflows sideways.
    b.js("localStorage.clear();", json!([])).await;
    b.resize(360, 740).await;
    b.refresh().await;
    b.wait("the launcher", "shown(Q('[data-parley=launcher]'))")
        .await;
    b.screenshot("phone-launcher").await;
    b.click("[data-parley=launcher]").await;
    chat_to_end(&b, Some("phone")).await;
    let fit = b
        .js(
            "const p = Q('[data-parley=panel]').getBoundingClientRect();\
             return { overflow: document.documentElement.scrollWidth > window.innerWidth,\
                      width: Math.round(p.width), inner: window.innerWidth, left: Math.round(p.left) };",
            json!([]),
        )
        .await;
    assert_eq!(fit["overflow"], json!(false), "{fit}");
    assert_eq!(fit["width"], fit["inner"], "{fit}");
    assert_eq!(fit["left"], json!(0), "{fit}");
    site.stop(false).await;
}

#[tokio::test]
async fn a_bot_that_lists_other_origins_says_so_politely_and_the_hosted_page_works() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let (bot, _hook) = widget_bot(&app, &owner).await;
    assert_ok(
        &app.gql(
            &owner.token,
            "mutation($b: ID!) { setBotAllowedOrigins(botId: $b, origins: [\"https://shop.example\"]) { id } }",
            json!({ "b": bot }),
        )
        .await,
    );
    // data-parley-open: the panel opens at once, and says why there is no chat.
    let (page, site) = site(app.port, bot.clone(), "data-parley-open=\"true\"").await;
    let b = Browser::launch(&chromium, &driver).await;
    b.goto(&page).await;
    b.wait(
        "the polite refusal",
        "shown(Q('[data-parley=panel]')) && shown(Q('[data-parley=unavailable]'))",
    )
    .await;
    let text = b
        .js(
            "return Q('[data-parley=unavailable]').textContent;",
            json!([]),
        )
        .await;
    assert!(
        text.as_str()
            .unwrap_or_default()
            .contains("not available on this website"),
        "{text}"
    );
    assert_eq!(
        b.js(
            "return localStorage.getItem('parley:' + arguments[0]);",
            json!([bot])
        )
        .await,
        Value::Null,
        "no conversation was started"
    );

    // The hosted page is the server's own origin: always allowed, under its strict CSP.
    b.goto(&format!("{}/chat/{bot}", app.addr)).await;
    chat_to_end(&b, None).await;
    b.screenshot("hosted-page").await;
    site.stop(false).await;
}

/// A TCP proxy in front of the app that the test can cut, like a lost network.
struct Proxy {
    port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Self {
        use std::sync::{Arc, Mutex, atomic::AtomicBool};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let down = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (d, c) = (down.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut out) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().expect("conns").push(task);
            }
        });
        Self {
            port,
            down,
            conns,
            accept,
        }
    }

    /// Drops every connection and refuses new ones until `restore`.
    fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.conns.lock().expect("conns").drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test]
async fn an_inline_chat_reconnects_after_a_network_loss_without_gap_or_repeat() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let (bot, _hook) = widget_bot(&app, &owner).await;
    let proxy = Proxy::start(app.port).await;
    let (page, site) = site(proxy.port, bot.clone(), "data-parley-target=\"#chat\"").await;
    let b = Browser::launch(&chromium, &driver).await;
    b.goto(&page).await;

    // Inline: no launcher, the panel is in the page and the conversation has started.
    b.wait(
        "the inline chat",
        "QA('[data-parley=choice]').length === 2 && !Q('[data-parley=launcher]')",
    )
    .await;
    let inside = b
        .js("return document.getElementById('chat').contains(document.querySelector('[data-parley-host]'));", json!([]))
        .await;
    assert_eq!(inside, json!(true));
    b.click_choice("Sales").await;
    b.wait("the email question", "QA('[data-parley=message]').some(m => m.textContent === 'What is your email?') && !Q('[data-parley=input]').disabled")
        .await;

    // The network goes away; meanwhile the conversation moves on (the visitor answers from
    // another tab, say). When the network is back, the widget catches up from its last seq.
    proxy.cut();
    let saved = b
        .js(
            "return JSON.parse(localStorage.getItem('parley:' + arguments[0]));",
            json!([bot]),
        )
        .await;
    let conv = saved["conversationId"].as_str().expect("id");
    let token = saved["visitorToken"].as_str().expect("token");
    assert_ok(&app.send_answer(conv, token, "grace@example.com").await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let offline = b.messages().await;
    assert_eq!(offline.len(), 4, "the socket was cut: {offline:?}");
    proxy.restore();
    b.wait("the events missed while offline", "QA('[data-parley=message]').some(m => m.textContent === 'Anything else?') && !Q('[data-parley=input]').disabled")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let texts: Vec<String> = b.messages().await.into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        texts,
        [
            "Welcome to Acme!",
            "What brings you here?",
            "Sales",
            "What is your email?",
            "grace@example.com",
            "Ticket 42 is open for you.",
            "Anything else?"
        ],
        "no gap, no repeat"
    );
    b.answer("Bye").await;
    b.wait("the end", "shown(Q('[data-parley=ended]'))").await;

    // window.Parley.init for pages that drive the widget themselves, with prefilled variables.
    b.js(
        "localStorage.clear(); window.Parley.init({ bot: arguments[0], target: '#chat', variables: { plan: 'pro' } });",
        json!([bot]),
    )
    .await;
    b.wait("a new inline chat", "QA('[data-parley=choice]').length === 2 && QA('[data-parley-host]').length === 0 && document.querySelectorAll('[data-parley-host]').length === 1")
        .await;
    let saved = b
        .js(
            "return JSON.parse(localStorage.getItem('parley:' + arguments[0]));",
            json!([bot]),
        )
        .await;
    let conv = app
        .conversation(
            Some(&owner.token),
            saved["conversationId"].as_str().expect("id"),
            None,
        )
        .await;
    assert_eq!(
        conv["data"]["conversation"]["variables"]["visitor"]["plan"],
        json!("pro"),
        "{conv}"
    );
    site.stop(false).await;
}
