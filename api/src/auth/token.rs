//! Login tokens: HS256 JWTs with an expiry. Only HS256 is accepted, so `alg: none` and
//! algorithm-confusion tokens are refused.
use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use sea_orm::{ActiveValue::Set, EntityTrait, sea_query::OnConflict};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Viewer;
use crate::{
    crypto::{SecretBox, server_setting_context},
    db::Db,
    hot_cache::HotCache,
};

const ISSUER: &str = "parley";
const SECRET_KEY: &str = crate::crypto::startup::JWT_SETTING;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    /// The session this token belongs to; ending the session ends the token.
    sid: Uuid,
    iat: i64,
    exp: i64,
    iss: String,
}

/// Signs and checks login tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Built once: it is the same for every token, and building it showed in profiles.
    validation: Validation,
    ttl: Duration,
    /// Tokens already verified, with whom they name: a client sends the same token with every
    /// request, and the HMAC and JSON work showed in profiles. Only genuine tokens get in, and
    /// a hit is still refused past its expiry.
    verified: Arc<HotCache<String, Viewer>>,
}

/// Bytes of token text kept verified (about 40,000 tokens).
const VERIFIED_CACHE_BYTES: u64 = 8 * 1024 * 1024;

impl TokenKeys {
    /// Keys from a secret.
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
            verified: Arc::new(HotCache::new(VERIFIED_CACHE_BYTES, None)),
        }
    }

    /// Keys from `configured`, else from the key kept in the database (encrypted by
    /// `secrets`), generating and storing one on first start. Concurrent first starts agree:
    /// the first insert wins, all read it.
    pub async fn load(
        db: &Db,
        configured: Option<&str>,
        ttl: Duration,
        secrets: &SecretBox,
    ) -> anyhow::Result<Self> {
        if let Some(secret) = configured {
            return Ok(Self::new(secret.as_bytes(), ttl));
        }
        let context = server_setting_context(SECRET_KEY);
        let mut bytes = [0u8; 64];
        rand::rng().fill_bytes(&mut bytes);
        let fresh = base64::engine::general_purpose::STANDARD.encode(bytes);
        entity::server_setting::Entity::insert(entity::server_setting::ActiveModel {
            key: Set(SECRET_KEY.to_owned()),
            value: Set(secrets.encrypt(&fresh, &context)),
        })
        .on_conflict(
            OnConflict::column(entity::server_setting::Column::Key)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db.writer())
        .await
        .context("cannot store the generated JWT key")?;
        let stored = entity::server_setting::Entity::find_by_id(SECRET_KEY.to_owned())
            .one(db.conn())
            .await?
            .context("the generated JWT key is missing")?;
        let secret = secrets
            .decrypt(&stored.value, &context)
            .context("cannot decrypt the generated JWT key")?;
        // The key is the base64 text itself, as it always was, so tokens survive upgrades.
        Ok(Self::new(secret.as_bytes(), ttl))
    }

    /// How long a token lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A token for a session of `viewer`'s, valid until the session expires.
    pub fn issue(&self, viewer: &Viewer) -> anyhow::Result<String> {
        let claims = Claims {
            sub: viewer.user_id,
            sid: viewer.session_id,
            iat: chrono::Utc::now().timestamp(),
            exp: viewer.expires_at.timestamp(),
            iss: ISSUER.to_owned(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Who a token was issued to, if it is genuine and not expired (whether its session is
    /// still open is for [`super::session::Sessions`] to say).
    pub fn verify(&self, token: &str) -> Option<Viewer> {
        if let Some(viewer) = self.verified.get(token) {
            // The same test as the token's own `exp` with no leeway.
            return (viewer.expires_at.timestamp() >= chrono::Utc::now().timestamp())
                .then_some(viewer);
        }
        let viewer = self.decode(token)?;
        self.verified.insert(token.to_owned(), viewer);
        Some(viewer)
    }

    fn decode(&self, token: &str) -> Option<Viewer> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()?
            .claims;
        Some(Viewer {
            user_id: claims.sub,
            session_id: claims.sid,
            expires_at: chrono::DateTime::from_timestamp(claims.exp, 0)?,
            key: None,
        })
    }
}
