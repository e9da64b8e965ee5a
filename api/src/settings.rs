//! One typed `Settings`, read once from the environment at start-up and validated there, so
//! that a bad value stops the server with a message naming the variable and the value.
use std::{net::SocketAddr, time::Duration};

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
    /// Lifetime of a login token.
    pub token_ttl: Duration,
    pub allow_private_webhooks: bool,
    pub delivery: DeliverySettings,
    /// A conversation with no activity for this long is marked abandoned.
    pub abandon_after: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
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
            Some(v) => DatabaseUrl::parse(&v).map_err(|r| bad("DATABASE_URL", &v, r))?,
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
        delivery.sync_timeout = secs("PARLEY_WEBHOOK_SYNC_TIMEOUT_SECS", 10)?;
        delivery.retention = secs("PARLEY_DELIVERY_RETENTION_SECS", 30 * 24 * 3600)?;
        Ok(Self {
            database_url,
            addr,
            jwt_secret,
            token_ttl: secs("PARLEY_TOKEN_TTL_SECS", 7 * 24 * 3600)?,
            allow_private_webhooks,
            delivery,
            abandon_after: secs("PARLEY_ABANDON_AFTER_SECS", 24 * 3600)?,
            max_body_bytes: 1024 * 1024,
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
    fn a_bad_address_names_the_variable_and_the_value() {
        let err = settings(&[("PARLEY_ADDR", "localhost")]).expect_err("no port");
        let msg = err.to_string();
        assert!(
            msg.contains("PARLEY_ADDR") && msg.contains("localhost"),
            "{msg}"
        );
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
