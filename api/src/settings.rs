//! One typed `Settings`, read once from the environment at start-up and validated there, so
//! that a bad value stops the server with a message naming the variable and the value.
use std::{net::SocketAddr, time::Duration};

use crate::crypto::SecretKey;

/// Which database engine a `DATABASE_URL` points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

/// A database URL known to be one of the supported engines.
#[derive(Clone, Debug)]
pub struct DatabaseUrl {
    url: String,
    kind: DatabaseKind,
}

impl DatabaseUrl {
    /// Accepts `sqlite:` and `postgres://`/`postgresql://` URLs.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let kind = if url.starts_with("sqlite:") {
            DatabaseKind::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if url::Url::parse(url)
                .map(|u| u.host().is_none())
                .unwrap_or(true)
            {
                return Err(
                    "a postgres URL needs a host, as in postgres://user@host:5432/db".into(),
                );
            }
            DatabaseKind::Postgres
        } else {
            return Err("expected a sqlite:… or postgres://… URL".into());
        };
        Ok(Self {
            url: url.to_owned(),
            kind,
        })
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The engine it points at.
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }
}

/// How async webhook deliveries are retried and kept.
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    /// Delay before each retry; its length is the number of retries after the first attempt.
    pub retry_schedule: Vec<Duration>,
    /// Deadline of a synchronous webhook call.
    pub sync_timeout: Duration,
    /// Total deadline of an async attempt.
    pub async_timeout: Duration,
    /// Connect deadline of any attempt.
    pub connect_timeout: Duration,
    /// Requests in flight at once, over all webhooks.
    pub concurrency: usize,
    /// Requests in flight at once to one webhook.
    pub per_webhook_concurrency: usize,
    /// How often the worker looks for due deliveries when it was not woken.
    pub poll_interval: Duration,
    /// How long a claimed delivery stays claimed before another worker may take it.
    pub lease: Duration,
    /// Deliveries older than this are pruned.
    pub retention: Duration,
    /// A webhook whose async attempts have all failed for this long (and at least
    /// `DISABLE_MIN_FAILURES` of them) is disabled (`PARLEY_WEBHOOK_DISABLE_AFTER`).
    pub disable_after: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            retry_schedule: vec![
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600),
                minutes(600),
            ],
            sync_timeout: Duration::from_secs(10),
            async_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            concurrency: 64,
            per_webhook_concurrency: 8,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            retention: Duration::from_secs(30 * 24 * 3600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

/// What one client, one socket, one visitor or one account may take. Every limit answers a
/// refusal that says which limit it was (`RATE_LIMITED`, HTTP 429/400/413, or a close code).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Operations in one JSON-array `POST /graphql` (`PARLEY_MAX_BATCH`).
    pub max_batch: usize,
    /// How long one HTTP request may run before it is cancelled (`PARLEY_REQUEST_TIMEOUT_SECS`).
    pub request_timeout: Duration,
    /// Largest query cost; list fields multiply their children by their page size
    /// (`PARLEY_MAX_QUERY_COST`).
    pub max_query_cost: usize,
    /// Addresses whose `X-Forwarded-For` names the client (`PARLEY_TRUSTED_PROXIES`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// HTTP requests per second per client address, refused with 429 before the body is read;
    /// 0 = off (`PARLEY_REQUEST_RATE_LIMIT`).
    pub request_rate_limit: u32,
    /// How long a refusal by `request_rate_limit` or by `api_key_rate_limit` is held before
    /// it is answered, so that a client that ignores `Retry-After` cannot make the server
    /// refuse it thousands of times a second; zero answers at once
    /// (`PARLEY_RATE_LIMIT_DELAY_MS`, at most 1,000).
    pub rate_limit_delay: Duration,
    /// New conversations per minute per client address; 0 = off (`PARLEY_VISITOR_RATE_LIMIT`).
    pub visitor_rate_limit: u32,
    /// Answers per minute per conversation; 0 = off (`PARLEY_ANSWER_RATE_LIMIT`).
    pub answer_rate_limit: u32,
    /// Requests per minute per API key; 0 = off (`PARLEY_API_KEY_RATE_LIMIT`).
    pub api_key_rate_limit: u32,
    /// Events one conversation may hold; past it the conversation ends
    /// (`PARLEY_MAX_CONVERSATION_EVENTS`).
    pub max_conversation_events: i32,
    /// Log-in, sign-up and password attempts per minute per client address
    /// (`PARLEY_LOGIN_RATE_LIMIT_PER_ADDRESS`).
    pub login_per_address: u32,
    /// Log-in attempts per minute per email address (`PARLEY_LOGIN_RATE_LIMIT_PER_EMAIL`).
    pub login_per_email: u32,
    /// Password hashes waiting or running at once; more are refused at once
    /// (`PARLEY_PASSWORD_QUEUE`). Defaults to the number of cores.
    pub password_queue: usize,
    /// A socket without `connection_init` by then is closed with 4408
    /// (`PARLEY_WS_INIT_TIMEOUT_SECS`).
    pub ws_init_timeout: Duration,
    /// Largest WebSocket message; larger closes with 1009 (`PARLEY_WS_MAX_MESSAGE_BYTES`).
    pub ws_max_message_bytes: usize,
    /// Operations running at once on one socket (`PARLEY_WS_MAX_OPERATIONS`).
    pub ws_max_operations: usize,
    /// Open sockets per client address (`PARLEY_WS_MAX_SOCKETS_PER_CLIENT`).
    pub ws_max_sockets_per_client: usize,
    /// How often an idle socket is pinged; a peer silent for two intervals is dropped
    /// (`PARLEY_WS_PING_SECS`).
    pub ws_ping_interval: Duration,
    /// Bots per account (`PARLEY_MAX_BOTS_PER_ACCOUNT`).
    pub max_bots_per_account: u64,
    /// Webhooks per account (`PARLEY_MAX_WEBHOOKS_PER_ACCOUNT`).
    pub max_webhooks_per_account: u64,
    /// Blocks in one flow (`PARLEY_MAX_FLOW_BLOCKS`).
    pub max_flow_blocks: usize,
    /// Bytes of one flow as JSON (`PARLEY_MAX_FLOW_BYTES`).
    pub max_flow_bytes: usize,
    /// Sync webhook calls in flight at once for one account (`PARLEY_MAX_SYNC_CALLS_PER_ACCOUNT`).
    pub max_sync_calls_per_account: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch: 10,
            request_timeout: Duration::from_secs(30),
            max_query_cost: 20_000,
            trusted_proxies: Vec::new(),
            request_rate_limit: 100,
            rate_limit_delay: Duration::from_millis(500),
            visitor_rate_limit: 30,
            answer_rate_limit: 60,
            api_key_rate_limit: 600,
            max_conversation_events: 1000,
            login_per_address: 10,
            login_per_email: 30,
            password_queue: std::thread::available_parallelism().map_or(2, |n| n.get()),
            ws_init_timeout: Duration::from_secs(10),
            ws_max_message_bytes: 64 * 1024,
            ws_max_operations: 100,
            ws_max_sockets_per_client: 100,
            ws_ping_interval: Duration::from_secs(30),
            max_bots_per_account: 200,
            max_webhooks_per_account: 200,
            max_flow_blocks: 500,
            max_flow_bytes: 512 * 1024,
            max_sync_calls_per_account: 32,
        }
    }
}

/// Everything the server is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub database_url: DatabaseUrl,
    pub addr: SocketAddr,
    /// `None`: a key generated once and kept in the database.
    pub jwt_secret: Option<String>,
    /// Key that encrypts the secrets kept in the database (`PARLEY_SECRET_KEY`). `None`: on
    /// SQLite, a key file generated once beside the database; PostgreSQL requires it.
    pub secret_key: Option<SecretKey>,
    /// The key before a rotation (`PARLEY_SECRET_KEY_PREVIOUS`): it still decrypts, and
    /// everything it encrypted is encrypted again under `secret_key` at start-up.
    pub previous_secret_key: Option<SecretKey>,
    /// Lifetime of a login token.
    pub token_ttl: Duration,
    pub allow_private_webhooks: bool,
    pub delivery: DeliverySettings,
    /// A conversation with no activity for this long is marked abandoned.
    pub abandon_after: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// What a client, a socket, a visitor or an account may take.
    pub limits: Limits,
    /// Serve GraphiQL and answer anonymous introspection (`PARLEY_GRAPHIQL`).
    pub graphiql: bool,
    /// This instance's name in the claims it takes on deliveries (`PARLEY_INSTANCE_ID`); it
    /// must stay the same across restarts and differ between instances sharing a database.
    /// `None`: the host name and the bound address.
    pub instance_id: Option<String>,
    /// Origins of dashboards that may call every operation of `/graphql` from a browser,
    /// `Authorization` included (`PARLEY_CORS_ORIGINS`: comma-separated origins, or `*`).
    /// Other origins may call the visitor operations only.
    pub cors_origins: crate::edge::origin::CorsOrigins,
    /// The hash of the bearer token that `GET /metrics` asks for (`PARLEY_METRICS_TOKEN`);
    /// `None`: metrics are not served. Only the hash is kept, so no log of the settings
    /// shows the token.
    pub metrics_token_hash: Option<String>,
    /// Where this server is reached from outside (`PARLEY_PUBLIC_URL`), without a trailing
    /// slash: the base of callback URLs. `None`: `http://` and the bound address.
    pub public_url: Option<String>,
}

/// An http(s) base URL with no query or fragment, its trailing slash removed.
fn parse_public_url(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw.trim()).map_err(|e| format!("{e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("expected an http or https URL such as https://chat.example.com".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the URL must not have a query or a fragment".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A setting that could not be used; its message names the variable and the value.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?} is not valid: {reason}")]
pub struct SettingsError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

impl Settings {
    /// The default when the environment says nothing: an SQLite file in the working directory.
    pub const DEFAULT_DATABASE_URL: &'static str = "sqlite://parley.db?mode=rwc";

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// Reads settings through `lookup`, so that tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let get = |var: &'static str| lookup(var).filter(|v| !v.trim().is_empty());
        let bad = |var: &'static str, value: &str, reason: String| SettingsError {
            var,
            value: value.to_owned(),
            reason,
        };
        let database_url = match get("DATABASE_URL") {
            Some(v) => DatabaseUrl::parse(&v).map_err(|r| bad("DATABASE_URL", &redact(&v), r))?,
            None => DatabaseUrl::parse(Self::DEFAULT_DATABASE_URL)
                .map_err(|r| bad("DATABASE_URL", Self::DEFAULT_DATABASE_URL, r))?,
        };
        let addr = match get("PARLEY_ADDR") {
            Some(v) => v.trim().parse().map_err(|e| {
                bad(
                    "PARLEY_ADDR",
                    &v,
                    format!("{e}; expected host:port such as 127.0.0.1:8080"),
                )
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let jwt_secret = match get("PARLEY_JWT_SECRET") {
            Some(v) if v.len() < 32 => {
                return Err(bad(
                    "PARLEY_JWT_SECRET",
                    "<hidden>",
                    "use at least 32 characters".into(),
                ));
            }
            other => other,
        };
        // The value is never echoed: a message with it could end up in a log.
        let key = |var: &'static str| -> Result<Option<SecretKey>, SettingsError> {
            get(var)
                .map(|v| SecretKey::parse(&v).map_err(|reason| bad(var, "<hidden>", reason)))
                .transpose()
        };
        let secret_key = key("PARLEY_SECRET_KEY")?;
        let previous_secret_key = key("PARLEY_SECRET_KEY_PREVIOUS")?;
        let allow_private_webhooks = match get("PARLEY_ALLOW_PRIVATE_WEBHOOKS") {
            Some(v) => parse_bool(&v).ok_or_else(|| {
                bad(
                    "PARLEY_ALLOW_PRIVATE_WEBHOOKS",
                    &v,
                    "expected true or false".into(),
                )
            })?,
            None => false,
        };
        let secs = |var: &'static str, default: u64| -> Result<Duration, SettingsError> {
            match get(var) {
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Duration::from_secs)
                    .ok_or_else(|| bad(var, &v, "expected a positive number of seconds".into())),
                None => Ok(Duration::from_secs(default)),
            }
        };
        let mut delivery = DeliverySettings::default();
        if let Some(v) = get("PARLEY_WEBHOOK_RETRY_SCHEDULE") {
            delivery.retry_schedule =
                parse_schedule(&v).map_err(|r| bad("PARLEY_WEBHOOK_RETRY_SCHEDULE", &v, r))?;
        }
        if let Some(v) = get("PARLEY_WEBHOOK_DISABLE_AFTER") {
            delivery.disable_after = match parse_schedule(&v).as_deref() {
                Ok([one]) if !one.is_zero() => *one,
                _ => {
                    return Err(bad(
                        "PARLEY_WEBHOOK_DISABLE_AFTER",
                        &v,
                        "one positive duration such as 120h or 30m".into(),
                    ));
                }
            };
        }
        delivery.sync_timeout = secs("PARLEY_WEBHOOK_SYNC_TIMEOUT_SECS", 10)?;
        delivery.retention = secs("PARLEY_DELIVERY_RETENTION_SECS", 30 * 24 * 3600)?;
        let count =
            |var: &'static str, default: u64, zero_ok: bool| -> Result<u64, SettingsError> {
                match get(var) {
                    Some(v) => v
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| zero_ok || *n > 0)
                        .ok_or_else(|| {
                            let what = if zero_ok {
                                "a whole number (0 turns it off)"
                            } else {
                                "a positive whole number"
                            };
                            bad(var, &v, format!("expected {what}"))
                        }),
                    None => Ok(default),
                }
            };
        let d = Limits::default();
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        let trusted_proxies = match get("PARLEY_TRUSTED_PROXIES") {
            Some(v) => parse_networks(&v).map_err(|r| bad("PARLEY_TRUSTED_PROXIES", &v, r))?,
            None => Vec::new(),
        };
        let limits = Limits {
            max_batch: size(count("PARLEY_MAX_BATCH", d.max_batch as u64, false)?),
            request_timeout: secs("PARLEY_REQUEST_TIMEOUT_SECS", d.request_timeout.as_secs())?,
            max_query_cost: size(count(
                "PARLEY_MAX_QUERY_COST",
                d.max_query_cost as u64,
                false,
            )?),
            trusted_proxies,
            request_rate_limit: small(count(
                "PARLEY_REQUEST_RATE_LIMIT",
                d.request_rate_limit.into(),
                true,
            )?),
            rate_limit_delay: {
                let var = "PARLEY_RATE_LIMIT_DELAY_MS";
                let ms = count(var, d.rate_limit_delay.as_millis() as u64, true)?;
                // Longer than the `Retry-After: 1` it answers with would hold an honest
                // client past the moment it was told to come back.
                if ms > 1000 {
                    return Err(bad(
                        var,
                        &ms.to_string(),
                        "expected at most 1000 (milliseconds; 0 answers at once)".into(),
                    ));
                }
                Duration::from_millis(ms)
            },
            visitor_rate_limit: small(count(
                "PARLEY_VISITOR_RATE_LIMIT",
                d.visitor_rate_limit.into(),
                true,
            )?),
            answer_rate_limit: small(count(
                "PARLEY_ANSWER_RATE_LIMIT",
                d.answer_rate_limit.into(),
                true,
            )?),
            api_key_rate_limit: small(count(
                "PARLEY_API_KEY_RATE_LIMIT",
                d.api_key_rate_limit.into(),
                true,
            )?),
            max_conversation_events: i32::try_from(count(
                "PARLEY_MAX_CONVERSATION_EVENTS",
                d.max_conversation_events as u64,
                false,
            )?)
            .unwrap_or(i32::MAX),
            login_per_address: small(count(
                "PARLEY_LOGIN_RATE_LIMIT_PER_ADDRESS",
                d.login_per_address.into(),
                false,
            )?),
            login_per_email: small(count(
                "PARLEY_LOGIN_RATE_LIMIT_PER_EMAIL",
                d.login_per_email.into(),
                false,
            )?),
            password_queue: size(count(
                "PARLEY_PASSWORD_QUEUE",
                d.password_queue as u64,
                false,
            )?),
            ws_init_timeout: secs("PARLEY_WS_INIT_TIMEOUT_SECS", d.ws_init_timeout.as_secs())?,
            ws_max_message_bytes: size(count(
                "PARLEY_WS_MAX_MESSAGE_BYTES",
                d.ws_max_message_bytes as u64,
                false,
            )?),
            ws_max_operations: size(count(
                "PARLEY_WS_MAX_OPERATIONS",
                d.ws_max_operations as u64,
                false,
            )?),
            ws_max_sockets_per_client: size(count(
                "PARLEY_WS_MAX_SOCKETS_PER_CLIENT",
                d.ws_max_sockets_per_client as u64,
                false,
            )?),
            ws_ping_interval: secs("PARLEY_WS_PING_SECS", d.ws_ping_interval.as_secs())?,
            max_bots_per_account: count(
                "PARLEY_MAX_BOTS_PER_ACCOUNT",
                d.max_bots_per_account,
                false,
            )?,
            max_webhooks_per_account: count(
                "PARLEY_MAX_WEBHOOKS_PER_ACCOUNT",
                d.max_webhooks_per_account,
                false,
            )?,
            max_flow_blocks: size(count(
                "PARLEY_MAX_FLOW_BLOCKS",
                d.max_flow_blocks as u64,
                false,
            )?),
            max_flow_bytes: size(count(
                "PARLEY_MAX_FLOW_BYTES",
                d.max_flow_bytes as u64,
                false,
            )?),
            max_sync_calls_per_account: size(count(
                "PARLEY_MAX_SYNC_CALLS_PER_ACCOUNT",
                d.max_sync_calls_per_account as u64,
                false,
            )?),
        };
        Ok(Self {
            database_url,
            addr,
            jwt_secret,
            secret_key,
            previous_secret_key,
            token_ttl: secs("PARLEY_TOKEN_TTL_SECS", 7 * 24 * 3600)?,
            allow_private_webhooks,
            delivery,
            abandon_after: secs("PARLEY_ABANDON_AFTER_SECS", 24 * 3600)?,
            max_body_bytes: 1024 * 1024,
            limits,
            graphiql: match get("PARLEY_GRAPHIQL") {
                Some(v) => parse_bool(&v)
                    .ok_or_else(|| bad("PARLEY_GRAPHIQL", &v, "expected true or false".into()))?,
                None => true,
            },
            instance_id: get("PARLEY_INSTANCE_ID").map(|v| v.trim().to_owned()),
            cors_origins: match get("PARLEY_CORS_ORIGINS") {
                Some(v) => crate::edge::origin::CorsOrigins::parse(&v)
                    .map_err(|r| bad("PARLEY_CORS_ORIGINS", &v, r))?,
                None => crate::edge::origin::CorsOrigins::None,
            },
            metrics_token_hash: match get("PARLEY_METRICS_TOKEN") {
                Some(v) if v.trim().len() < 16 => {
                    return Err(bad(
                        "PARLEY_METRICS_TOKEN",
                        "(hidden)",
                        "use at least 16 characters".into(),
                    ));
                }
                Some(v) => Some(crate::opaque::token_hash(v.trim())),
                None => None,
            },
            public_url: match get("PARLEY_PUBLIC_URL") {
                Some(v) => Some(parse_public_url(&v).map_err(|r| bad("PARLEY_PUBLIC_URL", &v, r))?),
                None => None,
            },
        })
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A database URL safe to print: its password replaced by `***`, even when the URL does not
/// parse (a malformed URL is exactly the one that gets echoed in an error).
pub fn redact(url: &str) -> String {
    if let Ok(mut u) = url::Url::parse(url)
        && u.password().is_some()
    {
        let _ = u.set_password(Some("***"));
        return u.to_string();
    }
    // By hand: whatever sits between the scheme's `//`, a `:` and the last `@` is a password.
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let Some(at) = url[start..].rfind('@').map(|i| start + i) else {
        return url.to_owned();
    };
    match url[start..at].find(':').map(|i| start + i) {
        Some(colon) => format!("{}:***{}", &url[..colon], &url[at..]),
        None => url.to_owned(),
    }
}

/// Comma-separated CIDRs or single addresses.
fn parse_networks(v: &str) -> Result<Vec<ipnet::IpNet>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            part.parse::<ipnet::IpNet>()
                .or_else(|_| part.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{part:?} is not an address or CIDR such as 10.0.0.0/8"))
        })
        .collect()
}

/// `5s,5m,30m,2h` (units ms, s, m, h) into durations.
fn parse_schedule(v: &str) -> Result<Vec<Duration>, String> {
    v.split(',')
        .map(|part| {
            let part = part.trim();
            let split = part
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len());
            let (n, unit) = part.split_at(split);
            let n: u64 = n
                .parse()
                .map_err(|_| format!("{part:?} does not start with a number"))?;
            Ok(match unit {
                "ms" => Duration::from_millis(n),
                "s" | "" => Duration::from_secs(n),
                "m" => Duration::from_secs(n * 60),
                "h" => Duration::from_secs(n * 3600),
                _ => return Err(format!("{part:?} has an unknown unit (use ms, s, m or h)")),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn no_environment_means_sqlite_in_the_working_directory_on_port_8080() {
        let s = settings(&[]).expect("defaults are valid");
        assert_eq!(s.database_url.kind(), DatabaseKind::Sqlite);
        assert_eq!(s.addr.to_string(), "127.0.0.1:8080");
        assert!(!s.allow_private_webhooks);
    }

    #[test]
    fn a_bad_database_url_names_the_variable_and_the_value() {
        let err = settings(&[("DATABASE_URL", "mysql://x")]).expect_err("mysql is refused");
        let msg = err.to_string();
        assert!(
            msg.contains("DATABASE_URL") && msg.contains("mysql://x"),
            "{msg}"
        );
    }

    #[test]
    fn a_database_url_that_does_not_parse_is_echoed_without_its_password() {
        let err = settings(&[("DATABASE_URL", "postgres://jo:s3cret@db:notaport/x")])
            .expect_err("bad port");
        let msg = err.to_string();
        assert!(
            msg.contains("DATABASE_URL") && msg.contains("jo:***@db"),
            "{msg}"
        );
        assert!(!msg.contains("s3cret"), "{msg}");
        assert_eq!(
            redact("postgres://jo:pw@host:5432/db"),
            "postgres://jo:***@host:5432/db"
        );
        assert_eq!(redact("sqlite://parley.db"), "sqlite://parley.db");
    }

    #[test]
    fn a_bad_address_names_the_variable_and_the_value() {
        let err = settings(&[("PARLEY_ADDR", "localhost")]).expect_err("no port");
        let msg = err.to_string();
        assert!(
            msg.contains("PARLEY_ADDR") && msg.contains("localhost"),
            "{msg}"
        );
    }

    #[test]
    fn a_bad_secret_key_names_the_variable_but_never_shows_the_value() {
        for (var, value) in [
            ("PARLEY_SECRET_KEY", "correct-horse-battery-staple"),
            ("PARLEY_SECRET_KEY_PREVIOUS", "c2hvcnQta2V5"),
        ] {
            let err = settings(&[(var, value)]).expect_err("refused");
            let msg = err.to_string();
            assert!(msg.contains(var) && !msg.contains(value), "{msg}");
            assert!(!format!("{err:?}").contains(value), "{err:?}");
        }
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let s = settings(&[("PARLEY_SECRET_KEY", key)]).expect("valid");
        assert!(s.secret_key.is_some() && s.previous_secret_key.is_none());
        assert!(!format!("{s:?}").contains(key));
    }

    #[test]
    fn limits_read_their_variables_and_refuse_nonsense() {
        let s = settings(&[
            ("PARLEY_MAX_BATCH", "3"),
            ("PARLEY_VISITOR_RATE_LIMIT", "0"),
            ("PARLEY_TRUSTED_PROXIES", "10.0.0.0/8, ::1"),
        ])
        .expect("valid");
        assert_eq!(s.limits.max_batch, 3);
        assert_eq!(s.limits.visitor_rate_limit, 0);
        assert_eq!(s.limits.trusted_proxies.len(), 2);
        let err = settings(&[("PARLEY_MAX_BATCH", "0")]).expect_err("zero batch");
        assert!(err.to_string().contains("PARLEY_MAX_BATCH"), "{err}");
        let err = settings(&[("PARLEY_TRUSTED_PROXIES", "10.0.0.0/99")]).expect_err("bad CIDR");
        assert!(err.to_string().contains("PARLEY_TRUSTED_PROXIES"), "{err}");
    }

    #[test]
    fn a_rate_limit_delay_is_milliseconds_up_to_a_second_and_zero_turns_it_off() {
        let delay = |v: &str| settings(&[("PARLEY_RATE_LIMIT_DELAY_MS", v)]);
        assert_eq!(
            settings(&[]).expect("valid").limits.rate_limit_delay,
            Duration::from_millis(500)
        );
        assert_eq!(
            delay("250").expect("valid").limits.rate_limit_delay,
            Duration::from_millis(250)
        );
        assert_eq!(
            delay("0").expect("valid").limits.rate_limit_delay,
            Duration::ZERO
        );
        for nonsense in ["1001", "-1", "half a second"] {
            let err = delay(nonsense).expect_err(nonsense);
            assert!(
                err.to_string().contains("PARLEY_RATE_LIMIT_DELAY_MS"),
                "{err}"
            );
        }
    }

    #[test]
    fn cors_origins_are_origins_or_a_star() {
        use crate::edge::origin::CorsOrigins;
        assert_eq!(
            settings(&[]).expect("valid").cors_origins,
            CorsOrigins::None
        );
        let s = settings(&[(
            "PARLEY_CORS_ORIGINS",
            "https://dash.example, http://localhost:3000",
        )])
        .expect("valid");
        assert!(s.cors_origins.contains("https://dash.example"));
        assert!(s.cors_origins.contains("http://localhost:3000"));
        let s = settings(&[("PARLEY_CORS_ORIGINS", "*")]).expect("valid");
        assert_eq!(s.cors_origins, CorsOrigins::Any);
        let err = settings(&[("PARLEY_CORS_ORIGINS", "dash.example/app")]).expect_err("refused");
        assert!(err.to_string().contains("PARLEY_CORS_ORIGINS"), "{err}");
    }

    #[test]
    fn a_retry_schedule_reads_units() {
        let s = settings(&[("PARLEY_WEBHOOK_RETRY_SCHEDULE", "10ms, 2s,1m,1h")]).expect("valid");
        assert_eq!(
            s.delivery.retry_schedule,
            vec![
                Duration::from_millis(10),
                Duration::from_secs(2),
                Duration::from_secs(60),
                Duration::from_secs(3600)
            ]
        );
        assert!(settings(&[("PARLEY_WEBHOOK_RETRY_SCHEDULE", "5x")]).is_err());
    }
}
