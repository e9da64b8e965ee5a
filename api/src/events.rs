//! Live fan-out of conversation events to subscribers. The in-process implementation serves
//! one instance; a PostgreSQL LISTEN/NOTIFY implementation can sit behind the same trait.
use std::{collections::HashMap, sync::Arc};

use entity::conversation_event;
use tokio::sync::broadcast;
use uuid::Uuid;

/// An event as stored, shared between subscribers.
pub type SharedEvent = Arc<conversation_event::Model>;

/// How many events a slow subscriber may lag before it must re-read from the database.
const CHANNEL_CAPACITY: usize = 256;

/// Publishes committed events and hands out live subscriptions.
pub trait EventBus: Send + Sync {
    /// Announces events that were just committed, in `seq` order.
    fn publish(&self, events: &[SharedEvent]);
    /// New events of one conversation from now on.
    fn subscribe_conversation(&self, conversation_id: Uuid) -> broadcast::Receiver<SharedEvent>;
    /// New events of every conversation of an account from now on.
    fn subscribe_account(&self, account_id: Uuid) -> broadcast::Receiver<SharedEvent>;
}

/// Channels keyed by conversation and by account, created on first subscription and dropped
/// when their last subscriber leaves, so idle keys cost nothing.
#[derive(Default)]
pub struct LocalBus {
    conversations: std::sync::Mutex<HashMap<Uuid, broadcast::Sender<SharedEvent>>>,
    accounts: std::sync::Mutex<HashMap<Uuid, broadcast::Sender<SharedEvent>>>,
}

fn subscribe(
    map: &std::sync::Mutex<HashMap<Uuid, broadcast::Sender<SharedEvent>>>,
    key: Uuid,
) -> broadcast::Receiver<SharedEvent> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(key)
        .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
        .subscribe()
}

fn send(
    map: &std::sync::Mutex<HashMap<Uuid, broadcast::Sender<SharedEvent>>>,
    key: Uuid,
    event: &SharedEvent,
) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    // A failed send means nobody listens any more.
    if let Some(tx) = map.get(&key)
        && tx.send(event.clone()).is_err()
    {
        map.remove(&key);
    }
}

impl EventBus for LocalBus {
    fn publish(&self, events: &[SharedEvent]) {
        for event in events {
            send(&self.conversations, event.conversation_id, event);
            send(&self.accounts, event.account_id, event);
        }
    }

    fn subscribe_conversation(&self, conversation_id: Uuid) -> broadcast::Receiver<SharedEvent> {
        subscribe(&self.conversations, conversation_id)
    }

    fn subscribe_account(&self, account_id: Uuid) -> broadcast::Receiver<SharedEvent> {
        subscribe(&self.accounts, account_id)
    }
}
