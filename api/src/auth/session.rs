//! Login sessions. Every token names a session; log-out, log-out everywhere and a password
//! change end sessions, and with them their tokens, before they expire. Whether a session is
//! open is checked on every request, from a cache that forgets within a second, so another
//! instance's log-out takes effect here within a second too.
use std::time::Duration;

use chrono::Utc;
use entity::{api_key, session};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, sea_query::Expr,
};
use uuid::Uuid;

use super::Viewer;
use crate::{
    db::Db,
    error::{ApiError, ApiResult},
    hot_cache::HotCache,
};

/// How long a session's state is trusted without asking the database again.
const CACHE_TTL: Duration = Duration::from_secs(1);

/// What the holder of a token of an ended session is told.
pub const ENDED: &str =
    "this session has ended (logged out, or the password changed); log in again";

/// Opens, checks and ends sessions.
pub struct Sessions {
    /// Session id → open.
    open: HotCache<Uuid, bool>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            open: HotCache::new(100_000, Some(CACHE_TTL)),
        }
    }
}

impl Sessions {
    /// A new session of `user_id` for `ttl`, within `tx` when given.
    pub async fn open(
        &self,
        db: &impl ConnectionTrait,
        user_id: Uuid,
        ttl: Duration,
    ) -> ApiResult<Viewer> {
        let now = Utc::now();
        // Whole seconds: the token's `exp` is in seconds and must not outlive the session.
        let expires_at = chrono::DateTime::from_timestamp(
            now.timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 4),
            0,
        )
        .unwrap_or(now);
        let id = Uuid::now_v7();
        session::Entity::insert(session::ActiveModel {
            id: Set(id),
            user_id: Set(user_id),
            created_at: Set(now),
            expires_at: Set(expires_at),
            revoked_at: Set(None),
        })
        .exec_without_returning(db)
        .await?;
        self.open.insert(id, true);
        Ok(Viewer {
            user_id,
            session_id: id,
            expires_at,
            key: None,
        })
    }

    /// Whether `viewer`'s session is still open (cached for up to a second).
    pub async fn is_open(&self, db: &Db, viewer: &Viewer) -> ApiResult<bool> {
        if let Some(open) = self.open.get(&viewer.session_id) {
            return Ok(open);
        }
        self.is_open_now(db, viewer).await
    }

    /// `UNAUTHENTICATED` unless `viewer`'s session is open; `fresh` asks the database rather
    /// than the cache.
    pub async fn require_open(&self, db: &Db, viewer: &Viewer, fresh: bool) -> ApiResult<()> {
        let open = if fresh {
            self.is_open_now(db, viewer).await?
        } else {
            self.is_open(db, viewer).await?
        };
        if open {
            Ok(())
        } else {
            Err(ApiError::Unauthenticated(ENDED.to_owned()))
        }
    }

    /// Whether `viewer`'s session is still open, asking the database. An API key's "session"
    /// is the key itself: open until revoked.
    pub async fn is_open_now(&self, db: &Db, viewer: &Viewer) -> ApiResult<bool> {
        if let Some(scope) = viewer.key {
            let open = crate::db::by_key(
                api_key::Entity::find_by_id(viewer.session_id)
                    .filter(api_key::Column::AccountId.eq(scope.account_id))
                    .filter(api_key::Column::RevokedAt.is_null()),
                db.conn(),
            )
            .await?
            .is_some();
            self.open.insert(viewer.session_id, open);
            return Ok(open);
        }
        let open = crate::db::by_key(
            session::Entity::find_by_id(viewer.session_id)
                .filter(session::Column::UserId.eq(viewer.user_id))
                .filter(session::Column::RevokedAt.is_null())
                .filter(session::Column::ExpiresAt.gt(Utc::now())),
            db.conn(),
        )
        .await?
        .is_some();
        self.open.insert(viewer.session_id, open);
        Ok(open)
    }

    /// Ends one session.
    pub async fn end(&self, db: &impl ConnectionTrait, viewer: &Viewer) -> ApiResult<()> {
        session::Entity::update_many()
            .col_expr(session::Column::RevokedAt, Expr::value(Utc::now()))
            .filter(session::Column::Id.eq(viewer.session_id))
            .filter(session::Column::RevokedAt.is_null())
            .exec(db)
            .await?;
        self.open.insert(viewer.session_id, false);
        Ok(())
    }

    /// Forgets what this instance knows of a session or key, so the next check asks the
    /// database.
    pub fn forget(&self, session_id: Uuid) {
        self.open.insert(session_id, false);
    }

    /// Ends every open session of `user_id`.
    pub async fn end_all(&self, db: &impl ConnectionTrait, user_id: Uuid) -> ApiResult<()> {
        session::Entity::update_many()
            .col_expr(session::Column::RevokedAt, Expr::value(Utc::now()))
            .filter(session::Column::UserId.eq(user_id))
            .filter(session::Column::RevokedAt.is_null())
            .exec(db)
            .await?;
        // This instance forgets them at once; others within the cache's second.
        self.open.clear();
        Ok(())
    }
}
