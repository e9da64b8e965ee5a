//! What a request to a webhook needs (its URL, headers, signing secrets, whether it is held
//! and its pace), cached briefly: the worker would otherwise read the same rows for every
//! round of deliveries.
use super::*;

/// How long an endpoint is served from the cache. Changes made on this instance are seen at
/// once ([`Deliveries::forget_endpoint`]); those made on another instance within this time.
const ENDPOINT_TTL: Duration = Duration::from_secs(1);

/// Most endpoints cached.
const ENDPOINT_CACHE_SIZE: u64 = 10_000;

/// What is needed to call a webhook: its URL, headers and signing secrets; and whether its
/// deliveries are held (disabled for failing) or paced (`maxPerSecond`).
pub struct Endpoint {
    url: url::Url,
    headers: Vec<(String, String)>,
    secrets: Vec<signing::SigningSecret>,
    pub(super) disabled: bool,
    pub(super) max_per_second: Option<i32>,
}

impl Endpoint {
    /// The signed request of a delivery, stamped now.
    pub(super) fn request(&self, d: &delivery::Model) -> Result<OutgoingRequest, String> {
        let body = serde_json::to_vec(&d.payload).map_err(|e| e.to_string())?;
        let msg_id = message_id(d.id);
        let timestamp = Utc::now().timestamp();
        let signature = signing::signature_header(&self.secrets, &msg_id, timestamp, &body);
        Ok(OutgoingRequest {
            url: self.url.clone(),
            headers: self.headers.clone(),
            body,
            msg_id,
            timestamp,
            signature,
        })
    }
}

/// The cache of endpoints by webhook id.
pub(super) fn cache() -> moka::sync::Cache<Uuid, Arc<Endpoint>> {
    moka::sync::Cache::builder()
        .max_capacity(ENDPOINT_CACHE_SIZE)
        .time_to_live(ENDPOINT_TTL)
        .build()
}

/// The endpoints of some webhooks, in two queries whatever their number; a webhook that no
/// longer exists is absent.
async fn load(
    db: &Db,
    secrets: &SecretBox,
    ids: &[Uuid],
) -> ApiResult<HashMap<Uuid, Arc<Endpoint>>> {
    let hooks = webhook::Entity::find()
        .filter(webhook::Column::Id.is_in(ids.iter().copied()))
        .all(db.conn())
        .await?;
    let mut signing = active_secrets_of(db.conn(), secrets, ids).await?;
    let mut out = HashMap::new();
    for hook in hooks {
        let url = url::Url::parse(&hook.url).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!("stored webhook URL is invalid: {e}"))
        })?;
        let headers = open_headers(hook.id, &hook.headers, secrets)?
            .into_iter()
            .map(|h| (h.name, h.value))
            .collect();
        let secrets = signing.remove(&hook.id).unwrap_or_default();
        out.insert(
            hook.id,
            Arc::new(Endpoint {
                url,
                headers,
                secrets,
                disabled: hook.disabled_at.is_some(),
                max_per_second: hook.max_per_second,
            }),
        );
    }
    Ok(out)
}

impl Deliveries {
    /// The endpoints of `ids`, from the cache where it has them; a webhook that no longer
    /// exists is absent.
    pub(super) async fn endpoints(&self, ids: &[Uuid]) -> ApiResult<HashMap<Uuid, Arc<Endpoint>>> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match self.endpoints.get(id) {
                Some(endpoint) => {
                    out.insert(*id, endpoint);
                }
                None => missing.push(*id),
            }
        }
        if !missing.is_empty() {
            for (id, endpoint) in load(&self.db, &self.secrets, &missing).await? {
                self.endpoints.insert(id, endpoint.clone());
                out.insert(id, endpoint);
            }
        }
        Ok(out)
    }

    /// The endpoint of one webhook, or why there is none (as an attempt's error).
    pub(super) async fn endpoint(&self, id: Uuid) -> Result<Arc<Endpoint>, String> {
        match self.endpoints(&[id]).await {
            Ok(mut found) => found
                .remove(&id)
                .ok_or_else(|| "the webhook was deleted".to_owned()),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    /// Drops what is cached of a webhook that changed (URL, headers, secrets, enabled,
    /// pace, or deleted), so that the next request uses what is stored.
    pub fn forget_endpoint(&self, webhook_id: Uuid) {
        self.endpoints.invalidate(&webhook_id);
    }
}
