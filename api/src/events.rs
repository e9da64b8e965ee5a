//! Live fan-out of conversation events to subscribers. `LocalBus` serves one instance;
//! `PgBus` adds PostgreSQL LISTEN/NOTIFY so that several instances on one database see each
//! other's events. Notices carry ids and `seq`s only; a subscriber that sees a gap, or is told
//! to resync, reads what it missed from the database.
use std::{collections::HashMap, sync::Arc, time::Duration};

use async_graphql::async_trait::async_trait;
use entity::conversation_event;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Statement,
    sqlx::postgres::PgListener,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::db::Db;

mod peers;

/// An event as stored, shared between subscribers.
pub type SharedEvent = Arc<conversation_event::Model>;

/// What a subscriber receives.
#[derive(Clone, Debug)]
pub enum Notice {
    /// A new event.
    Event(SharedEvent),
    /// Events may have been missed (a listener reconnected): re-read from the database.
    Resync,
}

/// How many notices a slow conversation subscriber may lag before it re-reads from the
/// database. Small on purpose: a turn emits a handful of events, every idle subscription
/// pays for its channel's slots, and lagging only costs a read.
const CONVERSATION_CAPACITY: usize = 16;
/// The same for account subscribers, which see every conversation of the account.
const ACCOUNT_CAPACITY: usize = 1024;
/// The PostgreSQL channel that instances notify each other on.
const PG_CHANNEL: &str = "parley_events";
/// The PostgreSQL channel of access changes (sessions ended, memberships changed).
const PG_ACCESS_CHANNEL: &str = "parley_access";
/// Access changes a slow subscriber may lag before it re-checks anyway.
const ACCESS_CAPACITY: usize = 1024;

/// Whose access changed: their open subscriptions re-check it. `Uuid::nil()` means anyone's
/// (after notices may have been missed).
pub type AccessChange = Uuid;

/// Publishes committed events and hands out live subscriptions.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// A statement that tells the other instances of `events`, to run in the transaction that
    /// commits them: PostgreSQL delivers a NOTIFY at commit, so the announcement costs no
    /// round trip or commit of its own and never announces what was rolled back. `None` when
    /// there are no other instances to tell.
    fn announcement(&self, events: &[conversation_event::Model]) -> Option<Statement>;
    /// Since when this instance has been the only one without a break, if it is (as far as it
    /// knows: the same knowledge that decides [`Self::announcement`]): every step of a
    /// conversation since then was taken here.
    fn alone_since(&self) -> Option<std::time::Instant>;
    /// Hands events that were just committed, in `seq` order, to this instance's subscribers.
    fn publish(&self, events: &[SharedEvent]);
    /// Notices of one conversation from now on.
    fn subscribe_conversation(&self, conversation_id: Uuid) -> Subscription;
    /// Notices of every conversation of an account from now on.
    fn subscribe_account(&self, account_id: Uuid) -> Subscription;
    /// Announces, on every instance, that `user_id`'s sessions or memberships changed.
    async fn publish_access(&self, user_id: Uuid);
    /// Access changes from now on.
    fn subscribe_access(&self) -> broadcast::Receiver<AccessChange>;
}

type Channels = Arc<std::sync::Mutex<HashMap<Uuid, broadcast::Sender<Notice>>>>;

/// Channels keyed by conversation and by account, created on first subscription and dropped
/// with their last subscriber, so that ended conversations cost nothing.
pub struct LocalBus {
    conversations: Channels,
    accounts: Channels,
    access: broadcast::Sender<AccessChange>,
    created: std::time::Instant,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self {
            conversations: Channels::default(),
            accounts: Channels::default(),
            access: broadcast::channel(ACCESS_CAPACITY).0,
            created: std::time::Instant::now(),
        }
    }
}

/// A live subscription to one key's notices; dropping the last one of a key drops its channel.
pub struct Subscription {
    rx: broadcast::Receiver<Notice>,
    map: Channels,
    key: Uuid,
}

impl Subscription {
    /// The next notice; see [`broadcast::Receiver::recv`].
    pub async fn recv(&mut self) -> Result<Notice, broadcast::error::RecvError> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Under the lock no one can subscribe meanwhile; this receiver is still counted.
        if map
            .get(&self.key)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            map.remove(&self.key);
        }
    }
}

fn subscribe(map: &Channels, key: Uuid, capacity: usize) -> Subscription {
    let rx = {
        let mut channels = map.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .entry(key)
            .or_insert_with(|| broadcast::channel(capacity).0)
            .subscribe()
    };
    Subscription {
        rx,
        map: map.clone(),
        key,
    }
}

fn send(map: &Channels, key: Uuid, notice: Notice) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    // A failed send means nobody listens any more.
    if let Some(tx) = map.get(&key)
        && tx.send(notice).is_err()
    {
        map.remove(&key);
    }
}

fn listened(map: &Channels, key: Uuid) -> bool {
    map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .is_some_and(|tx| tx.receiver_count() > 0)
}

impl LocalBus {
    /// Hands events to this instance's subscribers.
    pub fn dispatch(&self, events: &[SharedEvent]) {
        for event in events {
            send(
                &self.conversations,
                event.conversation_id,
                Notice::Event(event.clone()),
            );
            send(
                &self.accounts,
                event.account_id,
                Notice::Event(event.clone()),
            );
        }
    }

    /// Tells every subscriber to re-read what it may have missed, and to re-check access.
    pub fn resync_all(&self) {
        for map in [&self.conversations, &self.accounts] {
            let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, tx| tx.send(Notice::Resync).is_ok());
        }
        let _ = self.access.send(Uuid::nil());
    }

    /// Channels held now (conversations and accounts), for tests and metrics.
    pub fn channel_count(&self) -> usize {
        [&self.conversations, &self.accounts]
            .iter()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether anyone here listens to this conversation or account.
    pub fn is_listened(&self, conversation_id: Uuid, account_id: Uuid) -> bool {
        listened(&self.conversations, conversation_id) || listened(&self.accounts, account_id)
    }
}

#[async_trait]
impl EventBus for LocalBus {
    fn announcement(&self, _: &[conversation_event::Model]) -> Option<Statement> {
        None
    }

    fn alone_since(&self) -> Option<std::time::Instant> {
        // The database is this process's own.
        Some(self.created)
    }

    fn publish(&self, events: &[SharedEvent]) {
        self.dispatch(events);
    }

    fn subscribe_conversation(&self, conversation_id: Uuid) -> Subscription {
        subscribe(&self.conversations, conversation_id, CONVERSATION_CAPACITY)
    }

    fn subscribe_account(&self, account_id: Uuid) -> Subscription {
        subscribe(&self.accounts, account_id, ACCOUNT_CAPACITY)
    }

    async fn publish_access(&self, user_id: Uuid) {
        // No receiver means no open team subscription here: nothing to re-check.
        let _ = self.access.send(user_id);
    }

    fn subscribe_access(&self) -> broadcast::Receiver<AccessChange> {
        self.access.subscribe()
    }
}

/// The NOTIFY payload: which events of which conversation, and who sent it.
#[derive(Serialize, Deserialize)]
struct Announcement {
    /// Conversation.
    c: Uuid,
    /// Account.
    a: Uuid,
    /// First and last `seq`.
    f: i32,
    t: i32,
    /// The announcing instance, which has already served its own subscribers.
    i: Uuid,
}

/// LISTEN/NOTIFY across instances sharing one PostgreSQL database.
pub struct PgBus {
    local: LocalBus,
    db: Db,
    instance: Uuid,
    /// The other instances: whether anyone is there to notify.
    peers: peers::Peers,
    /// The listener connected before serving, for [`PgBus::run_listener`] to take.
    ready: std::sync::Mutex<Option<PgListener>>,
}

impl PgBus {
    /// The bus; call [`PgBus::run_listener`] to receive other instances' events.
    pub fn new(db: Db) -> Arc<Self> {
        let instance = Uuid::new_v4();
        Arc::new(Self {
            local: LocalBus::default(),
            peers: peers::Peers::new(db.clone(), instance),
            ready: std::sync::Mutex::new(None),
            db,
            instance,
        })
    }

    /// LISTENs before this instance serves, so that its first subscribers miss nothing
    /// announced once it is up. On failure, [`PgBus::run_listener`] keeps trying.
    pub async fn listen_early(&self, url: &str) {
        match Self::connect_listener(url).await {
            Ok(listener) => {
                *self.ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
            }
            Err(e) => tracing::warn!(error = %e, "cannot LISTEN yet; retrying in the background"),
        }
    }

    async fn connect_listener(url: &str) -> Result<PgListener, sea_orm::sqlx::Error> {
        let mut listener = PgListener::connect(url).await?;
        listener.listen_all([PG_CHANNEL, PG_ACCESS_CHANNEL]).await?;
        Ok(listener)
    }

    /// Registers this instance among those sharing the database, before it serves. When
    /// others are live, waits until they have surely seen it and announce their events.
    pub async fn join(&self) {
        match self.peers.beat().await {
            Ok(beat) if beat.others_recent => {
                tokio::time::sleep(peers::JOIN_WAIT).await;
                // The wait aged this instance's own heartbeat: renew it before serving.
                if let Err(e) = self.peers.beat().await {
                    tracing::warn!(error.cause = %e, "cannot renew this instance's heartbeat");
                }
            }
            Ok(_) => {}
            // Until a heartbeat works, this instance announces everything.
            Err(e) => tracing::warn!(error.cause = %e, "cannot register this instance"),
        }
    }

    /// Keeps this instance's heartbeat until dropped.
    pub async fn run_heartbeat(self: Arc<Self>) {
        self.peers.run(&self.local).await;
    }

    /// Listens for other instances' announcements until dropped, reconnecting after a lost
    /// connection and then telling subscribers to back-fill from the database.
    pub async fn run_listener(self: Arc<Self>, url: String) {
        let mut first = true;
        loop {
            let early = self.ready.lock().unwrap_or_else(|p| p.into_inner()).take();
            let connected = match early {
                Some(listener) => Ok(listener),
                None => Self::connect_listener(&url).await,
            };
            match connected {
                Ok(mut listener) => {
                    if !first {
                        // Whatever was announced while disconnected is lost: re-read it.
                        self.local.resync_all();
                    }
                    first = false;
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(n)) if n.channel() == PG_ACCESS_CHANNEL => {
                                self.receive_access(n.payload());
                            }
                            Ok(Some(n)) => self.receive(n.payload()).await,
                            Ok(None) => {
                                // The connection dropped. Reconnect here rather than let
                                // sqlx do it, so that subscribers resync only once LISTEN
                                // is back and nothing can fall between the two.
                                tracing::warn!("event listener lost its connection; reconnecting");
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "event listener failed; reconnecting");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot LISTEN for events; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn receive_access(&self, payload: &str) {
        // `<instance> <user>`: this instance's own changes were already dispatched.
        let mut parts = payload.split(' ');
        let (Some(Ok(from)), Some(Ok(user))) = (
            parts.next().map(Uuid::parse_str),
            parts.next().map(Uuid::parse_str),
        ) else {
            tracing::warn!(payload, "unreadable access announcement");
            return;
        };
        if from != self.instance {
            let _ = self.local.access.send(user);
        }
    }

    async fn receive(&self, payload: &str) {
        let Ok(a) = serde_json::from_str::<Announcement>(payload) else {
            tracing::warn!(payload, "unreadable event announcement");
            return;
        };
        if a.i == self.instance || !self.local.is_listened(a.c, a.a) {
            return;
        }
        let events = conversation_event::Entity::find()
            .filter(conversation_event::Column::ConversationId.eq(a.c))
            .filter(conversation_event::Column::Seq.between(a.f, a.t))
            .order_by_asc(conversation_event::Column::Seq)
            .all(self.db.conn())
            .await;
        match events {
            Ok(events) => {
                let shared: Vec<SharedEvent> = events.into_iter().map(Arc::new).collect();
                self.local.dispatch(&shared);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read announced events; resyncing");
                self.local.resync_all();
            }
        }
    }
}

impl PgBus {
    /// Channels held now, for tests and metrics.
    pub fn channel_count(&self) -> usize {
        self.local.channel_count()
    }
}

#[async_trait]
impl EventBus for PgBus {
    fn alone_since(&self) -> Option<std::time::Instant> {
        self.peers.alone_since()
    }

    fn announcement(&self, events: &[conversation_event::Model]) -> Option<Statement> {
        if !self.peers.others_may_listen() {
            return None;
        }
        let (first, last) = (events.first()?, events.last()?);
        let announcement = Announcement {
            c: first.conversation_id,
            a: first.account_id,
            f: first.seq,
            t: last.seq,
            i: self.instance,
        };
        let payload = serde_json::to_string(&announcement).ok()?;
        Some(Statement::from_sql_and_values(
            self.db.conn().get_database_backend(),
            "SELECT pg_notify($1, $2)",
            [PG_CHANNEL.into(), payload.into()],
        ))
    }

    fn publish(&self, events: &[SharedEvent]) {
        self.local.dispatch(events);
    }

    fn subscribe_conversation(&self, conversation_id: Uuid) -> Subscription {
        self.local.subscribe_conversation(conversation_id)
    }

    fn subscribe_account(&self, account_id: Uuid) -> Subscription {
        self.local.subscribe_account(account_id)
    }

    async fn publish_access(&self, user_id: Uuid) {
        self.local.publish_access(user_id).await;
        let statement = Statement::from_sql_and_values(
            self.db.conn().get_database_backend(),
            "SELECT pg_notify($1, $2)",
            [
                PG_ACCESS_CHANNEL.into(),
                format!("{} {user_id}", self.instance).into(),
            ],
        );
        if let Err(e) = self.db.conn().execute_raw(statement).await {
            // Other instances' caches still forget the session within a second, and their
            // subscriptions end at the token's expiry at the latest.
            tracing::warn!(error = %e, user.id = %user_id, "access NOTIFY failed");
        }
    }

    fn subscribe_access(&self) -> broadcast::Receiver<AccessChange> {
        self.local.subscribe_access()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_channel_goes_with_its_last_subscriber() {
        let bus = LocalBus::default();
        let id = Uuid::new_v4();
        let first = bus.subscribe_conversation(id);
        let second = bus.subscribe_conversation(id);
        assert_eq!(bus.channel_count(), 1);
        drop(first);
        assert_eq!(bus.channel_count(), 1, "one subscriber is left");
        drop(second);
        assert_eq!(bus.channel_count(), 0);
    }
}
