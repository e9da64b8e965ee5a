//! The webhooks page service: configuration, validation and signing secrets. Header values and
//! signing secrets are stored encrypted (see [`crate::crypto`]): sealed here when written,
//! opened here when read.
use chrono::{Duration, Utc};
use entity::{Role, webhook, webhook_secret};
use reqwest::header::{HeaderName, HeaderValue};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{signing::SigningSecret, ssrf};
use crate::{
    accounts::{AccountAccess, service::parse_name},
    audit,
    bots::service::bots_using_webhook,
    crypto::{SecretBox, webhook_header_context, webhook_secret_context},
    db::Db,
    error::{ApiError, ApiResult, Problem},
    settings::{DatabaseKind, Settings},
};

/// How long a rotated-out secret still signs deliveries, so receivers can switch over.
pub const ROTATION_OVERLAP_HOURS: i64 = 24;
/// Most headers on one webhook.
const MAX_HEADERS: usize = 30;
/// Longest header value.
const MAX_HEADER_VALUE: usize = 4096;

/// A header sent with every call of a webhook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderEntry {
    pub name: String,
    pub value: String,
}

/// What the webhooks page saves.
#[derive(Clone, Debug)]
pub struct WebhookSpec {
    pub name: String,
    pub url: String,
    pub headers: Vec<HeaderEntry>,
    /// Lifecycle events to send, by wire name.
    pub event_types: Vec<&'static str>,
    /// Most deliveries per second, if limited.
    pub max_per_second: Option<i32>,
}

/// Most `maxPerSecond` a webhook may ask for.
pub const MAX_PER_SECOND: i32 = 1000;

fn check_rate(rate: Option<i32>) -> ApiResult<Option<i32>> {
    match rate {
        Some(n) if !(1..=MAX_PER_SECOND).contains(&n) => Err(ApiError::bad_input(format!(
            "maxPerSecond must be between 1 and {MAX_PER_SECOND}, not {n}"
        ))),
        other => Ok(other),
    }
}

/// The stored form of a webhook's event types: null for none.
fn event_types_json(types: &[&'static str]) -> Option<serde_json::Value> {
    let mut list: Vec<&str> = types.to_vec();
    list.sort_unstable();
    list.dedup();
    (!list.is_empty()).then(|| serde_json::json!(list))
}

/// A webhook with the viewer's role (which decides what is masked).
#[derive(Clone, Debug)]
pub struct WebhookView {
    pub webhook: webhook::Model,
    pub role: Role,
}

impl WebhookView {
    /// The configured headers' names, without their values.
    pub fn header_names(&self) -> Vec<String> {
        parse_headers(&self.webhook.headers)
            .into_iter()
            .map(|h| h.name)
            .collect()
    }

    /// The configured headers, values decrypted.
    pub fn headers(&self, secrets: &SecretBox) -> ApiResult<Vec<HeaderEntry>> {
        open_headers(self.webhook.id, &self.webhook.headers, secrets)
    }
}

/// Stored headers back as entries, values as stored (encrypted); the column is always written
/// by [`seal_headers`].
pub fn parse_headers(json: &serde_json::Value) -> Vec<HeaderEntry> {
    serde_json::from_value(json.clone()).unwrap_or_default()
}

/// Stored headers back as entries, values decrypted.
pub fn open_headers(
    webhook_id: Uuid,
    json: &serde_json::Value,
    secrets: &SecretBox,
) -> ApiResult<Vec<HeaderEntry>> {
    parse_headers(json)
        .into_iter()
        .map(|h| {
            let value = secrets
                .decrypt(&h.value, &webhook_header_context(webhook_id, &h.name))
                .map_err(|e| {
                    ApiError::Internal(anyhow::anyhow!(
                        "header {} of webhook {webhook_id} cannot be decrypted: {e}",
                        h.name
                    ))
                })?;
            Ok(HeaderEntry {
                name: h.name,
                value,
            })
        })
        .collect()
}

/// Headers as stored: each value encrypted, bound to its webhook and header name.
fn seal_headers(
    webhook_id: Uuid,
    headers: Vec<HeaderEntry>,
    secrets: &SecretBox,
) -> ApiResult<serde_json::Value> {
    let sealed: Vec<HeaderEntry> = headers
        .into_iter()
        .map(|h| HeaderEntry {
            value: secrets.encrypt(&h.value, &webhook_header_context(webhook_id, &h.name)),
            name: h.name,
        })
        .collect();
    Ok(serde_json::to_value(sealed).map_err(anyhow::Error::from)?)
}

/// Headers that the delivery sets itself, or that belong to the connection, not the message.
fn reserved_header(name: &str) -> bool {
    const RESERVED: &[&str] = &[
        "content-type",
        "content-length",
        "host",
        "user-agent",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "proxy-connection",
    ];
    RESERVED.contains(&name) || name.starts_with("webhook-")
}

/// Checks name, URL (including the SSRF guard) and headers; every problem at once.
async fn validate(
    spec: &WebhookSpec,
    allow_private: bool,
) -> ApiResult<(String, String, Vec<HeaderEntry>)> {
    let mut problems = Vec::new();
    let problem = |field: String, message: String| Problem {
        block_id: None,
        field,
        message,
    };
    let name = match parse_name("name", &spec.name) {
        Ok(n) => Some(n),
        Err(e) => {
            problems.push(problem("name".into(), e.message().to_owned()));
            None
        }
    };
    let url = match ssrf::parse_webhook_url(&spec.url) {
        Ok(url) => match ssrf::check_url(&url, allow_private).await {
            Ok(()) => Some(url.to_string()),
            Err(e) => {
                problems.push(problem("url".into(), e.to_string()));
                None
            }
        },
        Err(e) => {
            problems.push(problem("url".into(), e.to_string()));
            None
        }
    };
    if spec.headers.len() > MAX_HEADERS {
        problems.push(problem(
            "headers".into(),
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    let mut headers = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, h) in spec.headers.iter().enumerate() {
        let name = h.name.trim();
        let lower = name.to_ascii_lowercase();
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(problem(
                format!("headers[{i}].name"),
                format!("{name:?} is not a valid HTTP header name"),
            ));
        } else if reserved_header(&lower) {
            problems.push(problem(
                format!("headers[{i}].name"),
                format!("{name} is set by Parley on every call and cannot be configured"),
            ));
        } else if !seen.insert(lower) {
            problems.push(problem(
                format!("headers[{i}].name"),
                format!("{name} is given twice"),
            ));
        }
        if h.value.len() > MAX_HEADER_VALUE {
            problems.push(problem(
                format!("headers[{i}].value"),
                format!("at most {MAX_HEADER_VALUE} bytes"),
            ));
        } else if HeaderValue::from_str(&h.value).is_err() {
            problems.push(problem(
                format!("headers[{i}].value"),
                "is not a valid HTTP header value (visible ASCII, no line breaks)".into(),
            ));
        }
        headers.push(HeaderEntry {
            name: name.to_owned(),
            value: h.value.clone(),
        });
    }
    match (name, url) {
        (Some(name), Some(url)) if problems.is_empty() => Ok((name, url, headers)),
        _ => {
            let message = problems
                .iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect::<Vec<_>>()
                .join("; ");
            Err(ApiError::BadUserInput { message, problems })
        }
    }
}

/// A webhook the viewer may see with at least `at_least`, or NOT_FOUND.
pub async fn find_webhook(
    db: &impl ConnectionTrait,
    viewer: Uuid,
    id: Uuid,
    at_least: Role,
) -> ApiResult<WebhookView> {
    let webhook = webhook::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    let role = AccountAccess::require(db, viewer, webhook.account_id, at_least)
        .await
        .map_err(|e| e.not_found_as("webhook"))?;
    Ok(WebhookView { webhook, role })
}

/// The webhooks of an account, oldest first.
pub async fn list_webhooks(db: &Db, account_id: Uuid) -> ApiResult<Vec<webhook::Model>> {
    Ok(webhook::Entity::find_in_account(account_id)
        .order_by_asc(webhook::Column::CreatedAt)
        .limit(crate::pagination::MAX_LIST)
        .all(db.conn())
        .await?)
}

/// A new webhook with a fresh signing secret (ADMIN).
pub async fn create_webhook(
    db: &Db,
    settings: &Settings,
    secrets: &SecretBox,
    viewer: Uuid,
    account_id: Uuid,
    spec: WebhookSpec,
) -> ApiResult<WebhookView> {
    let allow_private = settings.allow_private_webhooks;
    let role = AccountAccess::require(db.conn(), viewer, account_id, Role::Admin).await?;
    let count = webhook::Entity::find_in_account(account_id)
        .count(db.conn())
        .await?;
    crate::limits::check_quota(
        "webhooks",
        count,
        settings.limits.max_webhooks_per_account,
        "PARLEY_MAX_WEBHOOKS_PER_ACCOUNT",
    )?;
    let (name, url, headers) = validate(&spec, allow_private).await?;
    let now = Utc::now();
    let id = Uuid::now_v7();
    let webhook = webhook::Model {
        id,
        account_id,
        name,
        url,
        headers: seal_headers(id, headers, secrets)?,
        created_at: now,
        updated_at: now,
        event_types: event_types_json(&spec.event_types),
        failing_since: None,
        failed_attempts: 0,
        disabled_at: None,
        disabled_reason: None,
        max_per_second: check_rate(spec.max_per_second)?,
    };
    let tx = db.write().await?;
    webhook::Entity::insert(webhook::ActiveModel::from(webhook.clone()))
        .exec_without_returning(&tx.tx)
        .await?;
    insert_secret(&tx.tx, secrets, webhook.id).await?;
    audit_webhook(&tx.tx, &webhook, viewer, audit::action::WEBHOOK_CREATED).await?;
    tx.commit().await?;
    Ok(WebhookView { webhook, role })
}

async fn insert_secret(
    tx: &impl ConnectionTrait,
    secrets: &SecretBox,
    webhook_id: Uuid,
) -> ApiResult<()> {
    let id = Uuid::now_v7();
    let secret = SigningSecret::generate();
    webhook_secret::Entity::insert(webhook_secret::ActiveModel {
        id: Set(id),
        webhook_id: Set(webhook_id),
        secret: Set(secrets.encrypt(secret.as_str(), &webhook_secret_context(id))),
        created_at: Set(Utc::now()),
        expires_at: Set(None),
    })
    .exec_without_returning(tx)
    .await?;
    Ok(())
}

/// Turns a disabled webhook back on (ADMIN): its held deliveries are sent again. A webhook
/// that is not disabled is left as it is.
pub async fn enable_webhook(db: &Db, viewer: Uuid, id: Uuid) -> ApiResult<WebhookView> {
    let view = find_webhook(db.conn(), viewer, id, Role::Admin).await?;
    if view.webhook.disabled_at.is_none() {
        return Ok(view);
    }
    let now = Utc::now();
    webhook::Entity::update(webhook::ActiveModel {
        id: Set(id),
        disabled_at: Set(None),
        disabled_reason: Set(None),
        failing_since: Set(None),
        failed_attempts: Set(0),
        updated_at: Set(now),
        ..Default::default()
    })
    .exec(db.writer())
    .await?;
    Ok(WebhookView {
        webhook: webhook::Model {
            disabled_at: None,
            disabled_reason: None,
            failing_since: None,
            failed_attempts: 0,
            updated_at: now,
            ..view.webhook
        },
        role: view.role,
    })
}

/// Replaces a webhook's name, URL and headers (ADMIN).
pub async fn update_webhook(
    db: &Db,
    secrets: &SecretBox,
    allow_private: bool,
    viewer: Uuid,
    id: Uuid,
    spec: WebhookSpec,
) -> ApiResult<WebhookView> {
    let view = find_webhook(db.conn(), viewer, id, Role::Admin).await?;
    let (name, url, headers) = validate(&spec, allow_private).await?;
    let headers = seal_headers(id, headers, secrets)?;
    let now = Utc::now();
    let event_types = event_types_json(&spec.event_types);
    let max_per_second = check_rate(spec.max_per_second)?;
    let tx = db.write().await?;
    webhook::Entity::update(webhook::ActiveModel {
        id: Set(id),
        name: Set(name.clone()),
        url: Set(url.clone()),
        headers: Set(headers.clone()),
        updated_at: Set(now),
        event_types: Set(event_types.clone()),
        max_per_second: Set(max_per_second),
        ..Default::default()
    })
    .exec(&tx.tx)
    .await?;
    let webhook = webhook::Model {
        name,
        url,
        headers,
        updated_at: now,
        event_types,
        max_per_second,
        ..view.webhook
    };
    audit_webhook(&tx.tx, &webhook, viewer, audit::action::WEBHOOK_UPDATED).await?;
    tx.commit().await?;
    Ok(WebhookView {
        webhook,
        role: view.role,
    })
}

/// Deletes a webhook (ADMIN); CONFLICT, naming the bots, while any flow uses it.
pub async fn delete_webhook(db: &Db, viewer: Uuid, id: Uuid) -> ApiResult<bool> {
    let view = find_webhook(db.conn(), viewer, id, Role::Admin).await?;
    let tx = db.write().await?;
    if db.kind() == DatabaseKind::Postgres {
        // Waits for any publish that share-locked this webhook, so that the look for users
        // below sees its version (and a concurrent publish waits for this delete, then finds
        // the webhook gone). SQLite's single writer already serialises them.
        let found = webhook::Entity::find_by_id(id)
            .select_only()
            .column(webhook::Column::Id)
            .lock_exclusive()
            .into_tuple::<Uuid>()
            .all(&tx.tx)
            .await?;
        if found.is_empty() {
            return Err(ApiError::not_found("webhook"));
        }
    }
    let users = bots_using_webhook(&tx.tx, view.webhook.account_id, id).await?;
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "the webhook is used by the flow of {}: remove its webhook blocks first",
            users
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    webhook::Entity::delete_by_id(id).exec(&tx.tx).await?;
    audit_webhook(
        &tx.tx,
        &view.webhook,
        viewer,
        audit::action::WEBHOOK_DELETED,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// A new current secret; the previous ones keep signing for 24 hours (ADMIN).
pub async fn rotate_secret(
    db: &Db,
    secrets: &SecretBox,
    viewer: Uuid,
    id: Uuid,
) -> ApiResult<WebhookView> {
    let view = find_webhook(db.conn(), viewer, id, Role::Admin).await?;
    let tx = db.write().await?;
    webhook_secret::Entity::update_many()
        .col_expr(
            webhook_secret::Column::ExpiresAt,
            (Utc::now() + Duration::hours(ROTATION_OVERLAP_HOURS)).into(),
        )
        .filter(webhook_secret::Column::WebhookId.eq(id))
        .filter(webhook_secret::Column::ExpiresAt.is_null())
        .exec(&tx.tx)
        .await?;
    insert_secret(&tx.tx, secrets, id).await?;
    audit_webhook(
        &tx.tx,
        &view.webhook,
        viewer,
        audit::action::WEBHOOK_SECRET_ROTATED,
    )
    .await?;
    tx.commit().await?;
    Ok(view)
}

/// An audit entry about `webhook`, naming it (never its URL, which may be a secret).
async fn audit_webhook(
    tx: &impl ConnectionTrait,
    webhook: &webhook::Model,
    viewer: Uuid,
    action: &str,
) -> ApiResult<()> {
    audit::record(
        tx,
        audit::Entry {
            account_id: webhook.account_id,
            actor_id: Some(viewer),
            action,
            target_type: "webhook",
            target_id: webhook.id.to_string(),
            details: Some(serde_json::json!({ "name": webhook.name })),
        },
    )
    .await
}

/// The secrets that sign a call now, per webhook: the current one first, then unexpired
/// previous ones.
pub async fn active_secrets_of(
    db: &impl ConnectionTrait,
    secrets: &SecretBox,
    webhook_ids: &[Uuid],
) -> ApiResult<std::collections::HashMap<Uuid, Vec<SigningSecret>>> {
    let now = Utc::now();
    let rows = webhook_secret::Entity::find()
        .filter(webhook_secret::Column::WebhookId.is_in(webhook_ids.iter().copied()))
        .filter(
            Condition::any()
                .add(webhook_secret::Column::ExpiresAt.is_null())
                .add(webhook_secret::Column::ExpiresAt.gt(now)),
        )
        // Current (no expiry) first, then the newest: a receiver that knows only the newest
        // secret finds its signature first.
        .order_by_asc(webhook_secret::Column::ExpiresAt.is_not_null())
        .order_by_desc(webhook_secret::Column::CreatedAt)
        .all(db)
        .await?;
    let mut out: std::collections::HashMap<Uuid, Vec<SigningSecret>> = Default::default();
    for r in rows {
        let text = secrets
            .decrypt(&r.secret, &webhook_secret_context(r.id))
            .map_err(|e| {
                ApiError::Internal(anyhow::anyhow!(
                    "signing secret {} cannot be decrypted: {e}",
                    r.id
                ))
            })?;
        let secret = SigningSecret::parse(&text).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!("stored signing secret is invalid: {e}"))
        })?;
        out.entry(r.webhook_id).or_default().push(secret);
    }
    Ok(out)
}

/// The secrets that sign a call of one webhook now, current first.
pub async fn active_secrets(
    db: &impl ConnectionTrait,
    secrets: &SecretBox,
    webhook_id: Uuid,
) -> ApiResult<Vec<SigningSecret>> {
    Ok(active_secrets_of(db, secrets, &[webhook_id])
        .await?
        .remove(&webhook_id)
        .unwrap_or_default())
}
