//! The decrypted-segment cache: the plaintext of recently served media segments, shared
//! by every viewer that asks for them.
//!
//! Owns a small, byte-bounded LRU of `(session, chunk index) -> plaintext` and the rule
//! that each segment is opened once however many viewers ask at the same moment (the
//! others wait for that one decrypt instead of repeating it). A live HLS stream makes
//! every viewer fetch the same newest segment within a second of each other; without this
//! each request reads the store and runs AEAD + zstd again.
//!
//! Must not decide who may read a segment (the HTTP layer's `authorize` does) or whether
//! the session is a camera session (the engine checks before it loads). Invariant: an
//! entry never outlives the sealed bytes it came from: `evict_session` and `evict` run
//! before a delete or a redaction returns, and a load that raced with one is not kept
//! (the generation check below).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// What one cache may hold. A live viewer asks for the newest few segments; at 4 Mbit/s
/// with 1 s segments this is some 30 s of video, and it is small beside a Pi 3's 1 GB.
pub const DEFAULT_BUDGET: usize = 16 * 1024 * 1024;

type Key = (String, u64);

/// One segment: filled once by the first request, waited on by the others.
type Slot = Arc<Mutex<Option<Bytes>>>;

#[derive(Default)]
struct Lru {
    /// Slot, last use, and its length once filled (0 while loading): kept here so that
    /// eviction never waits on a slot someone is filling.
    slots: HashMap<Key, (Slot, u64, usize)>,
    /// Bytes held by filled slots.
    bytes: usize,
    tick: u64,
}

pub struct SegmentCache {
    lru: Mutex<Lru>,
    budget: usize,
    /// Bumped by every eviction; a load that started before one is served but not kept.
    generation: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SegmentCache {
    pub fn new(budget: usize) -> SegmentCache {
        SegmentCache { lru: Mutex::new(Lru::default()), budget, generation: AtomicU64::new(0) }
    }

    /// The segment if it is cached and filled; never waits and never loads, so the async
    /// request path can answer a hot segment without a blocking thread.
    pub fn peek(&self, sid: &str, index: u64) -> Option<Bytes> {
        let mut l = lock(&self.lru);
        l.tick += 1;
        let tick = l.tick;
        let (slot, used, _) = l.slots.get_mut(&(sid.to_owned(), index))?;
        *used = tick;
        let slot = slot.clone();
        drop(l);
        // `try_lock`: a slot being filled is someone else's load; do not wait here.
        slot.try_lock().ok().and_then(|g| g.clone())
    }

    /// The segment, loading it with `load` if no one has; concurrent callers for one
    /// segment run `load` once. Blocks while another caller loads: call it off the async
    /// runtime. A failed load is not cached (the next caller tries again).
    pub fn get_or_load<E>(&self, sid: &str, index: u64, load: impl FnOnce() -> Result<Bytes, E>) -> Result<Bytes, E> {
        let generation = self.generation.load(Ordering::Acquire);
        let key = (sid.to_owned(), index);
        let slot = {
            let mut l = lock(&self.lru);
            l.tick += 1;
            let tick = l.tick;
            let entry = l.slots.entry(key.clone()).or_insert_with(|| (Arc::new(Mutex::new(None)), tick, 0));
            entry.1 = tick;
            entry.0.clone()
        };
        let mut g = lock(&slot);
        if let Some(b) = g.as_ref() {
            return Ok(b.clone());
        }
        let bytes = match load() {
            Ok(v) => v,
            Err(e) => {
                drop(g);
                self.drop_if_empty(&key, &slot);
                return Err(e);
            }
        };
        if self.generation.load(Ordering::Acquire) != generation {
            // A delete or redaction ran while this loaded: serve what was read under it,
            // keep nothing.
            drop(g);
            self.drop_if_empty(&key, &slot);
            return Ok(bytes);
        }
        *g = Some(bytes.clone());
        drop(g);
        let mut l = lock(&self.lru);
        if let Some((_, _, len)) = l.slots.get_mut(&key).filter(|(s, _, _)| Arc::ptr_eq(s, &slot)) {
            *len = bytes.len();
            l.bytes += bytes.len();
            self.shrink(&mut l);
        }
        Ok(bytes)
    }

    /// Removes an unfilled slot left by a failed or discarded load.
    fn drop_if_empty(&self, key: &Key, slot: &Slot) {
        let mut l = lock(&self.lru);
        if l.slots.get(key).is_some_and(|(s, _, len)| Arc::ptr_eq(s, slot) && *len == 0) {
            l.slots.remove(key);
        }
    }

    /// Evicts the least recently used filled slots until the cache fits its budget.
    fn shrink(&self, l: &mut Lru) {
        while l.bytes > self.budget {
            let victim =
                l.slots.iter().filter(|(_, e)| e.2 > 0).map(|(k, e)| (k.clone(), e.1, e.2)).min_by_key(|(_, t, _)| *t);
            let Some((k, _, len)) = victim else { break };
            l.slots.remove(&k);
            l.bytes -= len;
        }
    }

    fn remove_where(&self, f: impl Fn(&Key) -> bool) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut l = lock(&self.lru);
        let keys: Vec<Key> = l.slots.keys().filter(|k| f(k)).cloned().collect();
        for k in keys {
            if let Some((_, _, len)) = l.slots.remove(&k) {
                l.bytes -= len;
            }
        }
    }

    /// Forgets every segment of a session (it is being deleted).
    pub fn evict_session(&self, sid: &str) {
        self.remove_where(|(s, _)| s == sid);
    }

    /// Forgets one segment (it is being redacted).
    pub fn evict(&self, sid: &str, index: u64) {
        self.remove_where(|(s, i)| s == sid && *i == index);
    }

    /// (entries, bytes) held now, for metrics and tests.
    pub fn usage(&self) -> (usize, usize) {
        let l = lock(&self.lru);
        (l.slots.len(), l.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn one_load_for_many_concurrent_readers() {
        let cache = Arc::new(SegmentCache::new(1 << 20));
        let loads = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (cache, loads) = (cache.clone(), loads.clone());
                std::thread::spawn(move || {
                    cache
                        .get_or_load::<()>("s", 7, || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok(Bytes::from(vec![7u8; 1000]))
                        })
                        .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().len(), 1000);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.peek("s", 7).unwrap().len(), 1000);
    }

    #[test]
    fn stays_within_budget_and_drops_the_least_recent() {
        let cache = SegmentCache::new(3000);
        for i in 0..3 {
            cache.get_or_load::<()>("s", i, || Ok(Bytes::from(vec![0; 1000]))).unwrap();
        }
        cache.peek("s", 0); // 0 is now more recent than 1
        cache.get_or_load::<()>("s", 3, || Ok(Bytes::from(vec![0; 1000]))).unwrap();
        assert_eq!(cache.usage(), (3, 3000));
        assert!(cache.peek("s", 1).is_none());
        assert!(cache.peek("s", 0).is_some());
    }

    #[test]
    fn failed_loads_are_not_kept_and_evictions_win_races() {
        let cache = SegmentCache::new(1 << 20);
        assert!(cache.get_or_load("s", 1, || Err("io")).is_err());
        assert_eq!(cache.usage(), (0, 0));
        // A load that overlaps a delete of its session is served but not cached.
        let b = cache
            .get_or_load::<()>("s", 2, || {
                cache.evict_session("s");
                Ok(Bytes::from(vec![1; 10]))
            })
            .unwrap();
        assert_eq!(b.len(), 10);
        assert!(cache.peek("s", 2).is_none());
        cache.get_or_load::<()>("s", 3, || Ok(Bytes::from(vec![1; 10]))).unwrap();
        cache.get_or_load::<()>("t", 3, || Ok(Bytes::from(vec![1; 10]))).unwrap();
        cache.evict("s", 3);
        assert!(cache.peek("s", 3).is_none() && cache.peek("t", 3).is_some());
        assert_eq!(cache.usage(), (1, 10));
    }
}
