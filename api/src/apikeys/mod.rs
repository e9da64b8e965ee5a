//! API keys: credentials of an account for its own systems (CRM, spreadsheets, alerts). A key
//! acts as a member of its one account with its role (ADMIN or MEMBER); it never manages
//! members or keys. Only its hash is stored; it is shown once, as `pk_…`.
pub mod graphql;

use std::time::Duration;

use chrono::Utc;
use entity::{Role, api_key};
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::Expr,
};
use uuid::Uuid;

use crate::{
    accounts::{
        AccountAccess,
        service::{parse_name, role_name},
    },
    audit,
    auth::{KeyScope, Viewer},
    db::Db,
    error::{ApiError, ApiResult},
    opaque::{random_token, token_hash},
};

/// What every key starts with, so that it is told apart from a login token (and found by
/// secret scanners).
pub const KEY_PREFIX: &str = "pk_";
/// Characters of a key kept in clear to tell keys apart in lists.
const SHOWN_CHARS: usize = 10;
/// Keys one account may hold (revoked ones do not count).
pub const MAX_KEYS_PER_ACCOUNT: u64 = 100;
/// How long a key's state is trusted without asking the database again: a revocation takes
/// effect on every instance within it.
const CACHE_TTL: Duration = Duration::from_secs(1);
/// `lastUsedAt` is written at most this often per key.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Whether a bearer credential is an API key rather than a login token.
pub fn is_api_key(credential: &str) -> bool {
    credential.starts_with(KEY_PREFIX)
}

/// Checks keys presented by callers, from a cache that forgets within a second.
pub struct ApiKeys {
    /// Key hash → (key id, account id, role), `None` for an unknown or revoked key.
    by_hash: moka::sync::Cache<String, Option<(Uuid, Uuid, Role)>>,
    /// Keys whose `lastUsedAt` this instance wrote within the last minute.
    touched: moka::sync::Cache<Uuid, ()>,
}

impl Default for ApiKeys {
    fn default() -> Self {
        Self {
            by_hash: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(CACHE_TTL)
                .build(),
            touched: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(TOUCH_EVERY)
                .build(),
        }
    }
}

impl ApiKeys {
    /// The viewer a key stands for, or `None` when it is unknown or revoked. Notes its use.
    pub async fn authenticate(&self, db: &Db, key: &str) -> ApiResult<Option<Viewer>> {
        let hash = token_hash(key);
        let found = match self.by_hash.get(&hash) {
            Some(found) => found,
            None => {
                let found = api_key::Entity::find()
                    .filter(api_key::Column::TokenHash.eq(hash.as_str()))
                    .filter(api_key::Column::RevokedAt.is_null())
                    .one(db.conn())
                    .await?
                    .map(|k| (k.id, k.account_id, k.role));
                self.by_hash.insert(hash, found);
                found
            }
        };
        let Some((id, account_id, role)) = found else {
            return Ok(None);
        };
        self.touch(db, id);
        Ok(Some(Viewer {
            user_id: id,
            session_id: id,
            // A key does not expire; it is revoked.
            expires_at: Utc::now() + chrono::Duration::days(3650),
            key: Some(KeyScope { account_id, role }),
        }))
    }

    /// Forgets every cached key on this instance (after a revocation here).
    pub fn forget_all(&self) {
        self.by_hash.invalidate_all();
    }

    /// Records that key `id` was used now, at most once a minute per key and instance, in the
    /// background; the update itself skips a key used within the minute on another instance.
    fn touch(&self, db: &Db, id: Uuid) {
        if self.touched.contains_key(&id) {
            return;
        }
        self.touched.insert(id, ());
        let db = db.clone();
        tokio::spawn(async move {
            let now = Utc::now();
            let since = now - chrono::Duration::from_std(TOUCH_EVERY).unwrap_or_default();
            let result = api_key::Entity::update_many()
                .col_expr(api_key::Column::LastUsedAt, Expr::value(now))
                .filter(api_key::Column::Id.eq(id))
                .filter(
                    Condition::any()
                        .add(api_key::Column::LastUsedAt.is_null())
                        .add(api_key::Column::LastUsedAt.lt(since)),
                )
                .exec(db.writer())
                .await;
            if let Err(e) = result {
                tracing::warn!(error.cause = ?e, api_key.id = %id, "cannot note an API key's use");
            }
        });
    }
}

/// A new key and its secret, which is shown only now.
pub struct NewApiKey {
    pub key: String,
    pub model: api_key::Model,
}

/// A new key of `account_id` (OWNER, ADMIN), with role ADMIN or MEMBER.
pub async fn create(
    db: &Db,
    person: Uuid,
    account_id: Uuid,
    name: &str,
    role: Role,
) -> ApiResult<NewApiKey> {
    AccountAccess::require_person(db.conn(), person, account_id, Role::Admin).await?;
    if role == Role::Owner {
        return Err(ApiError::bad_input(
            "an API key's role is ADMIN or MEMBER: a key never manages members or keys",
        ));
    }
    let name = parse_name("name", name)?;
    let held = api_key::Entity::find_in_account(account_id)
        .filter(api_key::Column::RevokedAt.is_null())
        .count(db.conn())
        .await?;
    if held >= MAX_KEYS_PER_ACCOUNT {
        return Err(ApiError::Conflict(format!(
            "this account holds {MAX_KEYS_PER_ACCOUNT} API keys already; revoke one first"
        )));
    }
    let key = format!("{KEY_PREFIX}{}", random_token());
    let model = api_key::Model {
        id: Uuid::now_v7(),
        account_id,
        name,
        role,
        prefix: key.chars().take(SHOWN_CHARS).collect(),
        token_hash: token_hash(&key),
        created_by: Some(person),
        created_at: Utc::now(),
        last_used_at: None,
        revoked_at: None,
    };
    let tx = db.write().await?;
    api_key::Entity::insert(api_key::ActiveModel::from(model.clone()))
        .exec_without_returning(&tx.tx)
        .await?;
    audit::record(
        &tx.tx,
        audit::Entry {
            account_id,
            actor_id: Some(person),
            action: audit::action::API_KEY_CREATED,
            target_type: "apiKey",
            target_id: model.id.to_string(),
            details: Some(serde_json::json!({
                "name": model.name,
                "role": role_name(role),
                "prefix": model.prefix,
            })),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(NewApiKey { key, model })
}

/// The account's keys that are not revoked (OWNER, ADMIN), oldest first.
pub async fn list(db: &Db, person: Uuid, account_id: Uuid) -> ApiResult<Vec<api_key::Model>> {
    AccountAccess::require_person(db.conn(), person, account_id, Role::Admin).await?;
    Ok(api_key::Entity::find_in_account(account_id)
        .filter(api_key::Column::RevokedAt.is_null())
        .order_by_asc(api_key::Column::CreatedAt)
        .limit(crate::pagination::MAX_LIST)
        .all(db.conn())
        .await?)
}

/// Revokes a key (OWNER, ADMIN): it stops working at once here, within a second elsewhere.
/// Returns the key's account, or `None` when it was revoked already.
pub async fn revoke(db: &Db, person: Uuid, id: Uuid) -> ApiResult<Option<Uuid>> {
    let key = api_key::Entity::find_by_id(id)
        .one(db.conn())
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    AccountAccess::require_person(db.conn(), person, key.account_id, Role::Admin)
        .await
        .map_err(|e| e.not_found_as("API key"))?;
    let tx = db.write().await?;
    let done = api_key::Entity::update_many()
        .col_expr(api_key::Column::RevokedAt, Expr::value(Utc::now()))
        .filter(api_key::Column::Id.eq(id))
        .filter(api_key::Column::RevokedAt.is_null())
        .exec(&tx.tx)
        .await?;
    if done.rows_affected == 0 {
        return Ok(None);
    }
    audit::record(
        &tx.tx,
        audit::Entry {
            account_id: key.account_id,
            actor_id: Some(person),
            action: audit::action::API_KEY_REVOKED,
            target_type: "apiKey",
            target_id: key.id.to_string(),
            details: Some(serde_json::json!({ "name": key.name, "prefix": key.prefix })),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Some(key.account_id))
}
