//! What the runtime keeps in memory between steps: parsed flows, and the conversations this
//! instance stepped lately.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use entity::{bot_version, conversation};
use moka::ops::compute::Op;
use sea_orm::{ConnectionTrait, EntityTrait};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    conversations::payload,
    engine::{CompiledFlow, State},
    error::{ApiError, ApiResult},
    events::SharedEvent,
    lifecycle::AccountHooks,
};

/// Bytes of published flows (as stored JSON, a proxy for their parsed size) kept in memory.
const FLOW_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes (estimated) of conversations kept in memory.
const KNOWN_BYTES: u64 = 32 * 1024 * 1024;
/// How long a conversation stays known without a step. Visitors answer within seconds while
/// they chat; one who comes back later costs a read.
const KNOWN_IDLE: Duration = Duration::from_secs(60);

/// Parsed flows of published versions, bounded in bytes. Versions never change, so entries
/// never go stale.
pub(super) struct FlowCache(moka::sync::Cache<(Uuid, i32), (Arc<CompiledFlow>, u32)>);

impl Default for FlowCache {
    fn default() -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(FLOW_CACHE_BYTES)
                .weigher(|_, (_, bytes): &(Arc<CompiledFlow>, u32)| *bytes)
                .build(),
        )
    }
}

impl FlowCache {
    pub(super) async fn get(
        &self,
        db: &impl ConnectionTrait,
        bot_id: Uuid,
        version: i32,
    ) -> ApiResult<Arc<CompiledFlow>> {
        if let Some((flow, _)) = self.0.get(&(bot_id, version)) {
            return Ok(flow);
        }
        let row = bot_version::Entity::find_by_id((bot_id, version))
            .one(db)
            .await?
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("bot {bot_id} has no version {version}"))
            })?;
        let flow = crate::bots::service::parse_stored_flow(&row.flow)?;
        let bytes = u32::try_from(row.flow.to_string().len()).unwrap_or(u32::MAX);
        let compiled = Arc::new(CompiledFlow::new(flow));
        self.0.insert((bot_id, version), (compiled.clone(), bytes));
        Ok(compiled)
    }
}

/// A conversation as this instance's last step of it left it.
pub(super) struct Known {
    /// Its row, but for `state` (null: it is kept parsed below).
    pub conv: conversation::Model,
    pub state: State,
    /// The events of that step (its last ones: `seq` up to `conv.last_seq`), for a
    /// subscription that asks for them right after (a visitor's, after a start).
    pub last_events: Vec<crate::events::SharedEvent>,
    /// When that step was committed.
    pub at: std::time::Instant,
    /// What a webhook's payload needs of what is stored, when a step had it at hand: a step
    /// of this conversation that calls or queues a webhook then needs no read for it.
    pub transcript: Option<Arc<Transcript>>,
}

/// A conversation's latest stored events (at most [`payload::MAX_MESSAGES`], in order, as
/// [`payload::stored`] reads them) and its bot's name as last read. Kept only on PostgreSQL,
/// whose quick steps use it, and only for flows with a webhook: other conversations never
/// need it.
pub(super) struct Transcript {
    pub events: Vec<SharedEvent>,
    pub bot_name: String,
}

impl Transcript {
    /// This transcript once `new` (a step's events) are stored after it.
    pub(super) fn then(&self, new: &[SharedEvent]) -> Self {
        let all = self.events.len() + new.len();
        let skip = all.saturating_sub(payload::MAX_MESSAGES);
        Self {
            events: self.events.iter().chain(new).skip(skip).cloned().collect(),
            bot_name: self.bot_name.clone(),
        }
    }
}

impl Known {
    /// The conversation as a step leaves it (`conv` without its state, kept parsed); its
    /// events and time are the commit's, set once it is done (`Runtime::finish`).
    pub(super) fn new(conv: conversation::Model, state: State) -> Self {
        Self {
            conv,
            state,
            last_events: Vec::new(),
            at: std::time::Instant::now(),
            transcript: None,
        }
    }

    /// Whether this is the conversation as stored, not only as this instance last left it:
    /// this instance has been the only one since before that step (`alone_since`), so no
    /// other took a step after it. (A step of this instance still being committed may have
    /// changed it; its events reach subscribers once it is.)
    pub(super) fn is_current(&self, alone_since: Option<std::time::Instant>) -> bool {
        alone_since.is_some_and(|since| self.at >= since)
    }
}

/// Conversations this instance stepped lately, as their last step left them, so that the next
/// step neither reads the row nor parses its state. Never trusted blindly: the step's UPDATE
/// matches the row's `last_seq` and `updated_at` as known here, and a row changed meanwhile
/// (another instance, a sweep, a deletion) makes the step start again from the row itself.
pub(super) struct Recent(moka::sync::Cache<Uuid, Arc<Known>>);

impl Default for Recent {
    fn default() -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(KNOWN_BYTES)
                .weigher(|_, known: &Arc<Known>| known_bytes(known))
                .time_to_idle(KNOWN_IDLE)
                .support_invalidation_closures()
                .build(),
        )
    }
}

impl Recent {
    pub(super) fn get(&self, id: &Uuid) -> Option<Arc<Known>> {
        self.0.get(id)
    }

    /// Keeps `known` unless a later step of the same conversation is kept already: two steps
    /// of one conversation may finish here in either order.
    pub(super) fn remember(&self, known: Known) {
        let rank = (known.conv.last_seq, known.conv.updated_at);
        self.0
            .entry(known.conv.id)
            .and_compute_with(|kept| match kept {
                Some(kept) if (kept.value().conv.last_seq, kept.value().conv.updated_at) > rank => {
                    Op::Nop
                }
                _ => Op::Put(Arc::new(known)),
            });
    }

    pub(super) fn forget(&self, id: &Uuid) {
        self.0.invalidate(id);
    }

    /// Forgets every conversation of `bot_id`.
    pub(super) fn forget_bot(&self, bot_id: Uuid) {
        // Only fails if the cache was built without closures, which `default` enables.
        if let Err(e) = self
            .0
            .invalidate_entries_if(move |_, known| known.conv.bot_id == bot_id)
        {
            tracing::error!(error.cause = %e, "cannot forget a deleted bot's conversations");
        }
    }
}

/// About what a known conversation takes in memory: the row's fixed part and the state's
/// values (a webhook may have set large ones).
fn known_bytes(known: &Known) -> u32 {
    let state = &known.state;
    let values: usize = state
        .answers
        .iter()
        .chain(state.variables.iter())
        .map(|(k, v)| k.len() + value_bytes(v))
        .sum();
    // The last events are the transcript's last ones (shared), when there is one.
    let events = match &known.transcript {
        Some(t) => &t.events,
        None => &known.last_events,
    };
    let events: usize = events
        .iter()
        .map(|e| 256 + e.text.as_ref().map_or(0, String::len))
        .sum();
    u32::try_from(512 + values + events).unwrap_or(u32::MAX)
}

fn value_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => 24 + s.len(),
        Value::Array(items) => 24 + items.iter().map(value_bytes).sum::<usize>(),
        Value::Object(map) => {
            48 + map
                .iter()
                .map(|(k, v)| k.len() + value_bytes(v))
                .sum::<usize>()
        }
        _ => 16,
    }
}

/// When a read kept in a [`Stamped`] cache began: the generation of that cache then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp(u64);

/// What this instance read lately, each entry with when its read began ([`Stamp`]). An entry
/// counts only while no change was announced ([`Self::changed`]) since its read began, so a
/// read that raced with a change is never taken for current, whenever it is stored.
pub(super) struct Stamped<K, V> {
    entries: moka::sync::Cache<K, (Stamp, V)>,
    generation: AtomicU64,
}

impl<K, V> Stamped<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// At most `capacity` entries, each read again at least every `ttl`.
    pub(super) fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            generation: AtomicU64::new(0),
        }
    }

    /// Now, for a read about to begin.
    pub(super) fn stamp(&self) -> Stamp {
        Stamp(self.generation.load(Ordering::Acquire))
    }

    /// `key`'s entry, if no change was announced since its read began.
    pub(super) fn get(&self, key: &K) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(read_at, _)| *read_at == self.stamp())
            .map(|(_, value)| value)
    }

    /// Keeps `value`, read from a read that began at `read_at`.
    pub(super) fn insert(&self, key: K, read_at: Stamp, value: V) {
        self.entries.insert(key, (read_at, value));
    }

    /// Drops `key`'s entry.
    pub(super) fn invalidate(&self, key: &K) {
        self.entries.invalidate(key);
    }

    /// Something read here changed (and that is committed): every entry read before now
    /// stops counting.
    pub(super) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops every entry.
    pub(super) fn clear(&self) {
        self.entries.invalidate_all();
    }
}

/// Accounts whose webhooks are kept.
const HOOKS_ACCOUNTS: u64 = 10_000;
/// A backstop: webhooks changed other than through this instance's API (by hand in the
/// database) are seen within this time.
const HOOKS_TTL: Duration = Duration::from_secs(60);

/// Each account's webhooks, as its starts read them ahead: on SQLite every start's (see
/// `Runtime::start_step`), on PostgreSQL those of quick starts that queue webhooks (see
/// `Runtime::quick_start`). A change made through this instance's API forgets them all
/// ([`Self::forget`]) once it is committed. On SQLite this instance is the only one; on
/// PostgreSQL a change made on another instance is not seen here until [`HOOKS_TTL`], and
/// what uses them must not depend on them being current: a quick start's statement checks
/// the lifecycle subscribers itself, and a webhook deleted elsewhere fails its delivery's
/// foreign key.
pub(super) struct HooksCache(Stamped<Uuid, Arc<AccountHooks>>);

impl Default for HooksCache {
    fn default() -> Self {
        Self(Stamped::new(HOOKS_ACCOUNTS, HOOKS_TTL))
    }
}

impl HooksCache {
    /// The webhooks of `account_id`, kept or read on `db`.
    pub(super) async fn get(
        &self,
        db: &impl ConnectionTrait,
        account_id: Uuid,
    ) -> ApiResult<Arc<AccountHooks>> {
        if let Some(hooks) = self.0.get(&account_id) {
            return Ok(hooks);
        }
        let read_at = self.0.stamp();
        let hooks = Arc::new(AccountHooks::read(db, account_id).await?);
        self.0.insert(account_id, read_at, hooks.clone());
        Ok(hooks)
    }

    /// Forgets every account's webhooks: one of them changed.
    pub(super) fn forget(&self) {
        self.0.changed();
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use entity::conversation_event;
    use serde_json::json;

    use super::{Transcript, value_bytes};
    use crate::conversations::payload::MAX_MESSAGES;

    fn event(seq: i32) -> crate::events::SharedEvent {
        Arc::new(conversation_event::Model {
            conversation_id: uuid::Uuid::nil(),
            seq,
            account_id: uuid::Uuid::nil(),
            kind: "BOT_MESSAGE".into(),
            text: Some(format!("m{seq}")),
            input: None,
            at: chrono::Utc::now(),
            block_id: None,
        })
    }

    #[test]
    fn a_transcript_keeps_the_latest_events_a_payload_can_hold_in_order() {
        let start = Transcript {
            events: Vec::new(),
            bot_name: "Bot".into(),
        };
        let first: Vec<_> = (1..=3).map(event).collect();
        let short = start.then(&first);
        let seqs = |t: &Transcript| t.events.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&short), [1, 2, 3]);
        assert_eq!(short.bot_name, "Bot");
        let rest: Vec<_> = (4..=MAX_MESSAGES as i32 + 5).map(event).collect();
        let long = short.then(&rest);
        assert_eq!(long.events.len(), MAX_MESSAGES);
        let expected: Vec<i32> = (6..=MAX_MESSAGES as i32 + 5).collect();
        assert_eq!(seqs(&long), expected);
    }

    #[test]
    fn a_value_weighs_at_least_its_text() {
        let big = "x".repeat(10_000);
        let v = json!({ "a": [big.clone(), { "b": big }], "n": 1 });
        assert!(value_bytes(&v) > 20_000, "{}", value_bytes(&v));
        assert!(value_bytes(&json!(1)) < 64);
    }
}
