//! Caches read on every request: verified tokens, open sessions, viewers, parsed documents.
//!
//! moka records each read for its eviction policy and drains those records under a lock; in
//! a profile of `{ me { id } }` its four look-ups per request took 11 % of the server's CPU.
//! `quick_cache` reads under a shard's read lock and sets one flag (CLOCK-Pro eviction),
//! which is all these caches need: they hold small values, bounded, some for a fixed time.
use std::{
    hash::Hash,
    time::{Duration, Instant},
};

use quick_cache::{Equivalent, Weighter};

/// A bounded cache whose entries, if it has a time to live, are not returned past it.
pub struct HotCache<K, V> {
    entries: quick_cache::sync::Cache<K, Entry<V>, ByKey>,
    ttl: Option<Duration>,
}

#[derive(Clone)]
struct Entry<V> {
    value: V,
    at: Instant,
}

/// What an entry weighs against the cache's capacity: its key's [`Weight`].
#[derive(Clone, Copy)]
struct ByKey;

/// An entry's weight, by its key: a text weighs its bytes, anything else one.
pub trait Weight {
    /// The weight, at least 1.
    fn weight(&self) -> u64;
}

impl Weight for String {
    fn weight(&self) -> u64 {
        u64::try_from(self.len()).unwrap_or(u64::MAX).max(1)
    }
}

impl Weight for uuid::Uuid {
    fn weight(&self) -> u64 {
        1
    }
}

impl<K: Weight, V> Weighter<K, Entry<V>> for ByKey {
    fn weight(&self, key: &K, _: &Entry<V>) -> u64 {
        key.weight()
    }
}

/// Entries the table is first sized for; it grows up to the capacity as needed, so an idle
/// server does not hold the room for a busy one's.
const INITIAL_ENTRIES: usize = 1024;

impl<K: Eq + Hash + Weight + Clone, V: Clone> HotCache<K, V> {
    /// A cache of at most `capacity` (the sum of the keys' weights), each entry kept at most
    /// `ttl` after its insertion when given.
    pub fn new(capacity: u64, ttl: Option<Duration>) -> Self {
        let initial = usize::try_from(capacity)
            .unwrap_or(usize::MAX)
            .min(INITIAL_ENTRIES);
        Self {
            entries: quick_cache::sync::Cache::with_weighter(initial, capacity, ByKey),
            ttl,
        }
    }

    /// The value under `key`, unless absent or past its time to live.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let entry = self.entries.get(key)?;
        match self.ttl {
            Some(ttl) if entry.at.elapsed() >= ttl => {
                self.entries.remove(key);
                None
            }
            _ => Some(entry.value),
        }
    }

    /// Keeps `value` under `key`, replacing what was there.
    pub fn insert(&self, key: K, value: V) {
        self.entries.insert(
            key,
            Entry {
                value,
                at: Instant::now(),
            },
        );
    }

    /// Forgets every entry.
    pub fn clear(&self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_not_returned_past_its_time_to_live() {
        let cache = HotCache::new(10, Some(Duration::from_millis(30)));
        let key = uuid::Uuid::now_v7();
        cache.insert(key, true);
        assert_eq!(cache.get(&key), Some(true));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(&key), None);
    }

    #[test]
    fn texts_weigh_their_bytes_so_the_capacity_bounds_the_memory() {
        let cache: HotCache<String, u32> = HotCache::new(1000, None);
        for i in 0..100u32 {
            cache.insert(format!("{i:0>100}"), i);
        }
        let kept = (0..100u32)
            .filter(|i| cache.get(format!("{i:0>100}").as_str()).is_some())
            .count();
        assert!(kept <= 10, "{kept} texts of 100 bytes kept in 1,000 bytes");
        assert!(kept > 0, "the cache kept nothing");
    }

    #[test]
    fn a_cleared_cache_forgets_everything() {
        let cache: HotCache<String, u32> = HotCache::new(1000, None);
        cache.insert("a".to_owned(), 1);
        cache.clear();
        assert_eq!(cache.get("a"), None);
    }
}
