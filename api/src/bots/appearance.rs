//! How a bot looks in the chat widget, which websites may embed it, and what a stranger may
//! read of it (`publicBot`).
use chrono::Utc;
use entity::{Role, bot};
use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::service::{BotView, find_bot};
use crate::{
    db::Db,
    edge::origin::{RequestOrigin, normalize},
    error::{ApiError, ApiResult},
};

/// A bot's look; every field optional (the widget has defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Appearance {
    pub title: Option<String>,
    pub primary_color: Option<String>,
    pub avatar_url: Option<String>,
    pub launcher_text: Option<String>,
}

/// Origins allowed at most per bot.
pub const MAX_ALLOWED_ORIGINS: usize = 50;

impl Appearance {
    /// The stored appearance of `bot`.
    pub fn of(bot: &bot::Model) -> Self {
        bot.appearance
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// Checks and tidies a new appearance: blank fields become null, `primaryColor` is a hex
    /// colour, `avatarUrl` an http(s) URL.
    pub fn validated(self) -> ApiResult<Self> {
        fn tidy(field: &str, v: Option<String>, max: usize) -> ApiResult<Option<String>> {
            let Some(v) = v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) else {
                return Ok(None);
            };
            if v.chars().count() > max {
                return Err(ApiError::bad_input(format!(
                    "{field} is longer than {max} characters"
                )));
            }
            Ok(Some(v))
        }
        let title = tidy("title", self.title, 80)?;
        let launcher_text = tidy("launcherText", self.launcher_text, 40)?;
        let primary_color = tidy("primaryColor", self.primary_color, 7)?;
        if let Some(c) = &primary_color {
            let hex = c.strip_prefix('#').unwrap_or("");
            if !matches!(hex.len(), 3 | 6) || !hex.chars().all(|ch| ch.is_ascii_hexdigit()) {
                return Err(ApiError::bad_input(format!(
                    "primaryColor must be a hex colour such as #2563eb, not {c:?}"
                )));
            }
        }
        let avatar_url = tidy("avatarUrl", self.avatar_url, 2000)?;
        if let Some(u) = &avatar_url {
            let ok = url::Url::parse(u).is_ok_and(|url| matches!(url.scheme(), "http" | "https"));
            if !ok {
                return Err(ApiError::bad_input(format!(
                    "avatarUrl must be an http or https URL, not {u:?}"
                )));
            }
        }
        Ok(Self {
            title,
            primary_color: primary_color.map(|c| c.to_ascii_lowercase()),
            avatar_url,
            launcher_text,
        })
    }
}

/// The origins `bot` may be embedded on; empty = any.
pub fn allowed_origins(bot: &bot::Model) -> Vec<String> {
    bot.allowed_origins
        .as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// Replaces the appearance (ADMIN).
pub async fn update_appearance(
    db: &Db,
    viewer: Uuid,
    bot_id: Uuid,
    appearance: Appearance,
) -> ApiResult<BotView> {
    let mut view = find_bot(db.conn(), viewer, bot_id, Role::Admin).await?;
    let appearance = appearance.validated()?;
    let json = serde_json::to_value(&appearance).map_err(anyhow::Error::from)?;
    let now = Utc::now();
    bot::Entity::update(bot::ActiveModel {
        id: Set(bot_id),
        appearance: Set(Some(json.clone())),
        updated_at: Set(now),
        ..Default::default()
    })
    .exec(db.writer())
    .await?;
    view.bot.appearance = Some(json);
    view.bot.updated_at = now;
    Ok(view)
}

/// Replaces the allowed origins (ADMIN); each must be `scheme://host[:port]`.
pub async fn set_allowed_origins(
    db: &Db,
    viewer: Uuid,
    bot_id: Uuid,
    origins: &[String],
) -> ApiResult<BotView> {
    let mut view = find_bot(db.conn(), viewer, bot_id, Role::Admin).await?;
    if origins.len() > MAX_ALLOWED_ORIGINS {
        return Err(ApiError::bad_input(format!(
            "a bot may list at most {MAX_ALLOWED_ORIGINS} origins, not {}",
            origins.len()
        )));
    }
    let mut list: Vec<String> = Vec::with_capacity(origins.len());
    for o in origins {
        let o = normalize(o).map_err(ApiError::bad_input)?;
        if !list.contains(&o) {
            list.push(o);
        }
    }
    let json = serde_json::to_value(&list).map_err(anyhow::Error::from)?;
    let now = Utc::now();
    bot::Entity::update(bot::ActiveModel {
        id: Set(bot_id),
        allowed_origins: Set(Some(json.clone())),
        updated_at: Set(now),
        ..Default::default()
    })
    .exec(db.writer())
    .await?;
    view.bot.allowed_origins = Some(json);
    view.bot.updated_at = now;
    Ok(view)
}

/// Longest pause the widget may make between two bot messages: longer reads as a broken bot.
pub const MAX_TYPING_DELAY_MS: i32 = 10_000;

/// Sets the widget's pause between consecutive bot messages (ADMIN), 0 to
/// [`MAX_TYPING_DELAY_MS`].
pub async fn set_typing_delay(
    db: &Db,
    viewer: Uuid,
    bot_id: Uuid,
    typing_delay_ms: i32,
) -> ApiResult<BotView> {
    let mut view = find_bot(db.conn(), viewer, bot_id, Role::Admin).await?;
    if !(0..=MAX_TYPING_DELAY_MS).contains(&typing_delay_ms) {
        return Err(ApiError::bad_input(format!(
            "typingDelayMs must be from 0 to {MAX_TYPING_DELAY_MS} (milliseconds), not \
             {typing_delay_ms}"
        )));
    }
    let now = Utc::now();
    bot::Entity::update(bot::ActiveModel {
        id: Set(bot_id),
        typing_delay_ms: Set(typing_delay_ms),
        updated_at: Set(now),
        ..Default::default()
    })
    .exec(db.writer())
    .await?;
    view.bot.typing_delay_ms = typing_delay_ms;
    view.bot.updated_at = now;
    Ok(view)
}

/// `FORBIDDEN` unless `bot` may be used from the request's origin (absent = not a browser).
pub fn check_origin(bot: &bot::Model, origin: Option<&RequestOrigin>) -> ApiResult<()> {
    let allowed = allowed_origins(bot);
    let ok = match origin {
        Some(origin) => origin.allows(&allowed),
        None => true,
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "this bot cannot be used from this website: its origin is not among the bot's \
             allowed origins"
                .into(),
        ))
    }
}

/// A bot by id for a visitor: its origin checked; `NOT_FOUND` when missing.
pub async fn bot_for_visitor(
    db: &impl ConnectionTrait,
    bot_id: Uuid,
    origin: Option<&RequestOrigin>,
) -> ApiResult<bot::Model> {
    let bot = bot::Entity::find_by_id(bot_id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("bot"))?;
    check_origin(&bot, origin)?;
    Ok(bot)
}

/// A published bot for `publicBot`; `None` when missing or not published.
pub async fn public_bot(
    db: &impl ConnectionTrait,
    bot_id: Uuid,
    origin: Option<&RequestOrigin>,
) -> ApiResult<Option<bot::Model>> {
    let Some(bot) = bot::Entity::find_by_id(bot_id).one(db).await? else {
        return Ok(None);
    };
    if bot.published_version.is_none() {
        return Ok(None);
    }
    check_origin(&bot, origin)?;
    Ok(Some(bot))
}
