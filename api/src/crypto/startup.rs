//! At start-up, after the migrations: the key is found (`PARLEY_SECRET_KEY`, else the SQLite
//! database's key file), checked against the database, and every secret the database holds in
//! plaintext (or, during a key rotation, under `PARLEY_SECRET_KEY_PREVIOUS`) is encrypted under
//! it. Idempotent: a value already in the encrypted form is recognised by its prefix.
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use entity::{server_setting, webhook, webhook_secret};
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, ConnectionTrait, EntityTrait, QueryFilter as _,
    QuerySelect as _, sea_query::OnConflict,
};
use uuid::Uuid;

use super::{
    OpenedWith, SecretBox, SecretKey, keyfile, server_setting_context, webhook_header_context,
    webhook_secret_context,
};
use crate::{
    db::Db,
    settings::{DatabaseKind, Settings},
    webhooks::service::HeaderEntry,
};

/// The `server_settings` row holding a known value sealed under the key, so that a wrong key
/// is caught at start-up rather than when a secret is first needed.
pub const CHECK_SETTING: &str = "secret_key_check";
/// What the key check holds.
const CHECK_PLAINTEXT: &str = "parley secret key check v1";
/// The `server_settings` row of the generated JWT key.
pub const JWT_SETTING: &str = "jwt_secret";

/// Where the key came from, for messages.
#[derive(Debug, Clone)]
enum KeySource {
    Env,
    File(PathBuf),
    /// An in-memory SQLite database: a key that lives as long as the process.
    Ephemeral,
}

/// The key of this database, checked; stored secrets encrypted under it.
pub async fn open(db: &Db, settings: &Settings) -> anyhow::Result<SecretBox> {
    let previous = settings.previous_secret_key.as_ref();
    let already_encrypted = server_setting::Entity::find_by_id(CHECK_SETTING.to_owned())
        .one(db.conn())
        .await
        .context("cannot read the secret key check")?
        .is_some();
    let (key, source) = resolve_key(settings, already_encrypted)?;
    let secrets = SecretBox::new(&key).with_previous(previous);
    let tx = db.write().await?;
    let rotating = check_key(&tx.tx, &secrets, &source).await?;
    let stats = seal_stored(&tx.tx, &secrets, rotating).await?;
    tx.commit().await?;
    if rotating {
        tracing::info!(
            resealed = stats.resealed,
            "re-encrypted the database's secrets under the new PARLEY_SECRET_KEY; \
             PARLEY_SECRET_KEY_PREVIOUS is no longer needed"
        );
    } else if previous.is_some() {
        tracing::info!(
            "PARLEY_SECRET_KEY_PREVIOUS is set but nothing is encrypted with it; it can be removed"
        );
    }
    if stats.encrypted > 0 {
        tracing::info!(
            encrypted = stats.encrypted,
            "encrypted secrets that were stored in plaintext"
        );
    }
    if stats.encrypted + stats.resealed > 0 {
        scrub_old_versions(db).await;
    }
    Ok(secrets)
}

/// `PARLEY_SECRET_KEY`; else, on SQLite, the key file beside the database (created on first
/// start); PostgreSQL instances must share a configured key.
fn resolve_key(
    settings: &Settings,
    already_encrypted: bool,
) -> anyhow::Result<(SecretKey, KeySource)> {
    if let Some(key) = &settings.secret_key {
        return Ok((key.clone(), KeySource::Env));
    }
    match settings.database_url.kind() {
        DatabaseKind::Postgres => bail!(
            "PARLEY_SECRET_KEY is not set. With PostgreSQL, every instance must encrypt the \
             database's secrets with the same key, so there is no key file: set \
             PARLEY_SECRET_KEY to the base64 of 32 random bytes (`openssl rand -base64 32`), \
             the same on every instance, and keep it safe: the database is of no use without it"
        ),
        DatabaseKind::Sqlite => match keyfile::path_for(settings.database_url.as_str()) {
            None => Ok((SecretKey::generate(), KeySource::Ephemeral)),
            Some(path) => match keyfile::read(&path)? {
                Some(key) => Ok((key, KeySource::File(path))),
                None if already_encrypted && settings.previous_secret_key.is_none() => bail!(
                    "this database's secrets are encrypted, but its key file {} is missing and \
                     PARLEY_SECRET_KEY is not set: restore the key file from your backup, or \
                     set PARLEY_SECRET_KEY to the key",
                    path.display()
                ),
                None => Ok((keyfile::create(&path)?, KeySource::File(path))),
            },
        },
    }
}

fn mismatch(source: &KeySource) -> anyhow::Error {
    let rotation = "(to change keys, give the new key as PARLEY_SECRET_KEY and the old one as \
                    PARLEY_SECRET_KEY_PREVIOUS)";
    match source {
        KeySource::Env => anyhow::anyhow!(
            "PARLEY_SECRET_KEY does not match the key this database was encrypted with: start \
             with the key used before {rotation}"
        ),
        KeySource::File(path) => anyhow::anyhow!(
            "the key file {} does not match the key this database was encrypted with \
             (PARLEY_SECRET_KEY is not set, so the key file is used): restore the key file \
             from the backup of this database, or set PARLEY_SECRET_KEY to the key it was \
             encrypted with {rotation}",
            path.display()
        ),
        KeySource::Ephemeral => {
            anyhow::anyhow!(
                "the generated key does not match the key this database was encrypted with"
            )
        }
    }
}

/// Checks the key against the key check, storing the check on first start; `true` when the
/// check opened only with the previous key (a rotation is due). Holds the check's row lock
/// (PostgreSQL) until the transaction ends, so instances starting at once take turns.
async fn check_key(
    tx: &impl ConnectionTrait,
    secrets: &SecretBox,
    source: &KeySource,
) -> anyhow::Result<bool> {
    let ctx = server_setting_context(CHECK_SETTING);
    let read = || async {
        server_setting::Entity::find_by_id(CHECK_SETTING.to_owned())
            .lock_exclusive()
            .one(tx)
            .await
            .context("cannot read the secret key check")
    };
    let stored = match read().await? {
        Some(row) => row,
        None => {
            server_setting::Entity::insert(server_setting::ActiveModel {
                key: Set(CHECK_SETTING.to_owned()),
                value: Set(secrets.encrypt(CHECK_PLAINTEXT, &ctx)),
            })
            .on_conflict(
                OnConflict::column(server_setting::Column::Key)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(tx)
            .await
            .context("cannot store the secret key check")?;
            // Another instance may have stored its own first.
            read().await?.context("the secret key check is missing")?
        }
    };
    match secrets.open(&stored.value, &ctx) {
        Ok((text, OpenedWith::Current)) if text == CHECK_PLAINTEXT => Ok(false),
        Ok((text, OpenedWith::Previous)) if text == CHECK_PLAINTEXT => {
            set_setting(tx, CHECK_SETTING, secrets.encrypt(CHECK_PLAINTEXT, &ctx)).await?;
            Ok(true)
        }
        _ => Err(mismatch(source)),
    }
}

async fn set_setting(tx: &impl ConnectionTrait, key: &str, value: String) -> anyhow::Result<()> {
    server_setting::Entity::update(server_setting::ActiveModel {
        key: Set(key.to_owned()),
        value: Set(value),
    })
    .exec(tx)
    .await
    .with_context(|| format!("cannot update server setting {key}"))?;
    Ok(())
}

#[derive(Default)]
struct Stats {
    /// Plaintext values encrypted.
    encrypted: usize,
    /// Values sealed again under the new key.
    resealed: usize,
}

impl Stats {
    /// The value to store in place of `stored`, if it must change: plaintext is sealed; during
    /// a rotation, a value sealed with the previous key is sealed again with the current one.
    fn reseal(
        &mut self,
        secrets: &SecretBox,
        rotating: bool,
        stored: &str,
        ctx: &str,
        what: &dyn Fn() -> String,
    ) -> anyhow::Result<Option<String>> {
        if !SecretBox::is_encrypted(stored) {
            self.encrypted += 1;
            return Ok(Some(secrets.encrypt(stored, ctx)));
        }
        if !rotating {
            return Ok(None);
        }
        match secrets.open(stored, ctx) {
            Ok((_, OpenedWith::Current)) => Ok(None),
            Ok((plain, OpenedWith::Previous)) => {
                self.resealed += 1;
                Ok(Some(secrets.encrypt(&plain, ctx)))
            }
            Err(e) => bail!(
                "{} does not open with PARLEY_SECRET_KEY nor PARLEY_SECRET_KEY_PREVIOUS: {e}",
                what()
            ),
        }
    }
}

/// Encrypts what is stored in plaintext; re-encrypts what the previous key sealed.
async fn seal_stored(
    tx: &impl ConnectionTrait,
    secrets: &SecretBox,
    rotating: bool,
) -> anyhow::Result<Stats> {
    let mut stats = Stats::default();
    if let Some(row) = server_setting::Entity::find_by_id(JWT_SETTING.to_owned())
        .one(tx)
        .await?
    {
        let ctx = server_setting_context(JWT_SETTING);
        let what = || "the generated JWT key".to_owned();
        if let Some(value) = stats.reseal(secrets, rotating, &row.value, &ctx, &what)? {
            set_setting(tx, JWT_SETTING, value).await?;
        }
    }
    let rows: Vec<(Uuid, String)> = webhook_secret::Entity::find()
        .select_only()
        .column(webhook_secret::Column::Id)
        .column(webhook_secret::Column::Secret)
        .into_tuple()
        .all(tx)
        .await
        .context("cannot read webhook secrets")?;
    for (id, stored) in rows {
        let what = || format!("the webhook signing secret {id}");
        if let Some(value) = stats.reseal(
            secrets,
            rotating,
            &stored,
            &webhook_secret_context(id),
            &what,
        )? {
            webhook_secret::Entity::update_many()
                .col_expr(webhook_secret::Column::Secret, value.into())
                .filter(webhook_secret::Column::Id.eq(id))
                .exec(tx)
                .await
                .context("cannot update a webhook secret")?;
        }
    }
    let hooks: Vec<(Uuid, serde_json::Value)> = webhook::Entity::find()
        .select_only()
        .column(webhook::Column::Id)
        .column(webhook::Column::Headers)
        .into_tuple()
        .all(tx)
        .await
        .context("cannot read webhook headers")?;
    for (id, json) in hooks {
        let mut headers: Vec<HeaderEntry> = serde_json::from_value(json)
            .with_context(|| format!("the headers of webhook {id} are not a list of headers"))?;
        let mut changed = false;
        for h in &mut headers {
            let what = || format!("the value of header {} of webhook {id}", h.name);
            let ctx = webhook_header_context(id, &h.name);
            if let Some(value) = stats.reseal(secrets, rotating, &h.value, &ctx, &what)? {
                h.value = value;
                changed = true;
            }
        }
        if changed {
            webhook::Entity::update(webhook::ActiveModel {
                id: Set(id),
                headers: Set(serde_json::to_value(&headers)?),
                ..Default::default()
            })
            .exec(tx)
            .await
            .context("cannot update webhook headers")?;
        }
    }
    Ok(stats)
}

/// After plaintext (or old-key) values were replaced: on SQLite, rebuild the file and empty
/// the write-ahead log so that the replaced values do not linger in free pages. PostgreSQL
/// keeps old row versions until it vacuums; that is left to its autovacuum.
async fn scrub_old_versions(db: &Db) {
    match db.kind() {
        DatabaseKind::Sqlite => {
            for sql in ["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"] {
                if let Err(e) = db.writer().execute_unprepared(sql).await {
                    tracing::warn!(error = %e, sql, "could not scrub replaced secrets from the database file");
                }
            }
        }
        DatabaseKind::Postgres => tracing::info!(
            "replaced secrets stay in old row versions until PostgreSQL vacuums \
             server_settings, webhook_secrets and webhooks"
        ),
    }
}
