use std::sync::Arc;

use dashmap::DashMap;
use jiff::civil::Date;
use jiff::Timestamp;
use parking_lot::Mutex;

use super::{
    CounterKey, CounterStore, DayUsage, Decision, DecisionRequest, QuotaRule, StoreFuture,
};
use crate::clock::to_nanos;
use crate::decision::{next_store_id, CachedCounter};
use crate::limit::Counter;

/// Counters in this process: a sharded map of per-(plan, key) counters,
/// each behind its own short lock, so requests for different keys never
/// wait on each other and a decision is exact without a global lock.
///
/// ```
/// use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, Verdict};
/// use tower_usage_plans::{Quota, QuotaPeriod, Timestamp};
///
/// let store = MemoryStore::new();
/// let counter = CounterKey::new("plan", "key");
/// let request = DecisionRequest {
///     counter: &counter,
///     throttle: None,
///     quota: Some(QuotaRule { quota: Quota::new(1, QuotaPeriod::Day), plan_created: 0 }),
///     now: Timestamp::now().into(),
/// };
/// let first = futures_now(store.decide(&request));
/// let second = futures_now(store.decide(&request));
/// assert_eq!(first.verdict, Verdict::Admitted);
/// assert_eq!(second.verdict, Verdict::QuotaExceeded);
/// # fn futures_now<T>(f: tower_usage_plans::store::StoreFuture<T>) -> T {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f).unwrap()
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    /// Tells this store's cells from another's in a [`CounterKey`].
    id: u64,
    // Behind an `Arc`: the map's tables stay small (a 16-byte slot, often
    // half empty after a resize), the counter lives in an exact-size
    // allocation, and a `CounterKey` can keep a handle to it.
    counters: DashMap<CounterKey, Arc<Cell>, crate::prehashed::Prehashed>,
}

/// One counter, and whether the store has let go of it (a [`CounterKey`]
/// may still hold it; a decision that finds it forgotten looks again).
type Cell = Mutex<Slot>;

#[derive(Debug, Default)]
struct Slot {
    counter: Counter,
    forgotten: bool,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            id: next_store_id(),
            counters: DashMap::default(),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    ///
    /// ```
    /// # use tower_usage_plans::store::MemoryStore;
    /// let store = MemoryStore::new();
    /// assert_eq!(store.len(), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// How many (plan, key) counters exist.
    ///
    /// ```
    /// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore};
    /// # fn block_on<T>(f: tower_usage_plans::store::StoreFuture<T>) -> tower_usage_plans::Result<T> { tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f) }
    /// # let counter = CounterKey::new("plan", "key");
    /// # let request = DecisionRequest { counter: &counter, throttle: None, quota: None, now: tower_usage_plans::Timestamp::now().into() };
    /// let store = MemoryStore::new();
    /// block_on(store.decide(&request)).unwrap();
    /// assert_eq!(store.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// Whether no counter exists.
    ///
    /// ```
    /// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore};
    /// # fn block_on<T>(f: tower_usage_plans::store::StoreFuture<T>) -> tower_usage_plans::Result<T> { tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f) }
    /// # let counter = CounterKey::new("plan", "key");
    /// # let request = DecisionRequest { counter: &counter, throttle: None, quota: None, now: tower_usage_plans::Timestamp::now().into() };
    /// let store = MemoryStore::new();
    /// assert!(store.is_empty());
    /// block_on(store.decide(&request)).unwrap();
    /// block_on(store.forget(&counter)).unwrap();
    /// assert!(store.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// Runs `f` on the key's counter, creating it if needed. The hot path
    /// is the cell the key remembers: no map lookup, one lock.
    fn with_counter<T>(&self, key: &CounterKey, f: impl FnOnce(&mut Counter) -> T) -> T {
        let cached = key.cached().get().filter(|cached| cached.store == self.id);
        if let Some(cell) = cached.and_then(|cached| cached.cell.downcast_ref::<Cell>()) {
            let mut slot = cell.lock();
            if !slot.forgotten {
                return f(&mut slot.counter);
            }
        }
        loop {
            let cell = match self.counters.get(key) {
                Some(cell) => cell.clone(),
                None => self.counters.entry(key.clone()).or_default().clone(),
            };
            let _ = key.cached().set(CachedCounter {
                store: self.id,
                cell: cell.clone(),
            });
            let mut slot = cell.lock();
            // Forgotten between the lookup and the lock: look again.
            if !slot.forgotten {
                return f(&mut slot.counter);
            }
        }
    }
}

/// One counter's saved state (opaque), for persistence.
///
/// ```
/// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore};
/// # fn block_on<T>(f: tower_usage_plans::store::StoreFuture<T>) -> tower_usage_plans::Result<T> { tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f) }
/// # let counter = CounterKey::new("plan", "key");
/// # let request = DecisionRequest { counter: &counter, throttle: None, quota: None, now: tower_usage_plans::Timestamp::now().into() };
/// let store = MemoryStore::new();
/// block_on(store.decide(&request)).unwrap();
/// let saved = store.snapshot();
/// assert_eq!((saved[0].plan_id.as_str(), saved[0].key_id.as_str()), ("plan", "key"));
/// ```
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CounterSnapshot {
    /// The plan's id.
    pub plan_id: String,
    /// The key's id.
    pub key_id: String,
    /// The counter: checked against the model on a restore
    /// ([`Counter::check`]).
    pub(crate) state: Counter,
}

impl CounterSnapshot {
    /// Caps every bucket at its throttle's current burst limit.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn clamp_buckets(&mut self, burst: impl Fn(Option<&str>) -> Option<u32>) {
        self.state.clamp_buckets(burst);
    }
}

impl MemoryStore {
    /// A copy of every counter.
    ///
    /// ```
    /// use tower_usage_plans::store::MemoryStore;
    ///
    /// let store = MemoryStore::new();
    /// let copy = MemoryStore::new();
    /// copy.restore(store.snapshot());
    /// assert!(copy.is_empty());
    /// ```
    pub fn snapshot(&self) -> Vec<CounterSnapshot> {
        self.counters
            .iter()
            .map(|entry| CounterSnapshot {
                plan_id: entry.key().plan_id().to_owned(),
                key_id: entry.key().key_id().to_owned(),
                state: entry.value().lock().counter.clone(),
            })
            .collect()
    }

    /// Replaces every counter with the snapshot's.
    ///
    /// ```
    /// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule};
    /// # use tower_usage_plans::{Quota, QuotaPeriod, Timestamp};
    /// # fn block_on<T>(f: tower_usage_plans::store::StoreFuture<T>) -> tower_usage_plans::Result<T> { tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f) }
    /// # let counter = CounterKey::new("plan", "key");
    /// let quota = QuotaRule { quota: Quota::new(10, QuotaPeriod::Day), plan_created: 0 };
    /// let request = DecisionRequest { counter: &counter, throttle: None, quota: Some(quota), now: Timestamp::now().into() };
    /// let store = MemoryStore::new();
    /// block_on(store.decide(&request)).unwrap();
    /// let copy = MemoryStore::new();
    /// copy.restore(store.snapshot());
    /// assert_eq!(block_on(copy.decide(&request)).unwrap().quota.unwrap().remaining, 8);
    /// ```
    pub fn restore(&self, counters: Vec<CounterSnapshot>) {
        self.counters.retain(|_, cell| {
            cell.lock().forgotten = true;
            false
        });
        for c in counters {
            let slot = Slot {
                counter: c.state,
                forgotten: false,
            };
            // A decision between the clearing and now may have made (and a
            // key remembered) a fresh cell: mark it, so that key looks again.
            let replaced = self.counters.insert(
                CounterKey::new(&c.plan_id, &c.key_id),
                Arc::new(Mutex::new(slot)),
            );
            if let Some(replaced) = replaced {
                replaced.lock().forgotten = true;
            }
        }
    }
}

impl CounterStore for MemoryStore {
    fn decide(&self, request: &DecisionRequest<'_>) -> StoreFuture<Decision> {
        // Counted under the cell's lock, described (the headers' arithmetic)
        // after it is released.
        let counted = self.with_counter(request.counter, |c| c.count(request));
        StoreFuture::ready(Ok(counted.describe(request)))
    }

    fn refund(&self, request: &DecisionRequest<'_>) -> StoreFuture<()> {
        self.with_counter(request.counter, |c| c.refund(request));
        StoreFuture::ready(Ok(()))
    }

    fn set_remaining(
        &self,
        counter: &CounterKey,
        quota: &QuotaRule,
        now: Timestamp,
        remaining: u64,
    ) -> StoreFuture<DayUsage> {
        StoreFuture::ready(Ok(self.with_counter(counter, |c| {
            c.set_remaining(quota, to_nanos(now), remaining)
        })))
    }

    fn add_remaining(
        &self,
        counter: &CounterKey,
        quota: &QuotaRule,
        now: Timestamp,
        delta: i64,
    ) -> StoreFuture<DayUsage> {
        StoreFuture::ready(Ok(
            self.with_counter(counter, |c| c.add_remaining(quota, to_nanos(now), delta))
        ))
    }

    fn usage(
        &self,
        counter: &CounterKey,
        quota: Option<&QuotaRule>,
        now: Timestamp,
        first: Date,
        last: Date,
    ) -> StoreFuture<Vec<DayUsage>> {
        let days = match self.counters.get(counter) {
            Some(c) => c.lock().counter.usage(quota, to_nanos(now), first, last),
            None => Counter::default().usage(quota, to_nanos(now), first, last),
        };
        StoreFuture::ready(Ok(days))
    }

    fn forget(&self, counter: &CounterKey) -> StoreFuture<()> {
        if let Some((_, cell)) = self.counters.remove(counter) {
            cell.lock().forgotten = true;
        }
        StoreFuture::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Quota, QuotaPeriod};
    use crate::store::Verdict;

    fn decide(store: &MemoryStore, counter: &CounterKey) -> Verdict {
        let request = DecisionRequest {
            counter,
            throttle: None,
            quota: Some(QuotaRule {
                quota: Quota::new(1, QuotaPeriod::Day),
                plan_created: 0,
            }),
            now: Timestamp::UNIX_EPOCH.into(),
        };
        let mut answer = store.decide(&request);
        answer.take_ready().unwrap().unwrap().verdict
    }

    #[test]
    fn a_key_that_remembers_its_counter_sees_it_forgotten() {
        let store = MemoryStore::new();
        let key = CounterKey::new("plan", "key");
        assert_eq!(decide(&store, &key), Verdict::Admitted);
        assert_eq!(decide(&store, &key), Verdict::QuotaExceeded);
        store.forget(&key).take_ready().unwrap().unwrap();
        assert_eq!(decide(&store, &key), Verdict::Admitted, "a fresh counter");
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn restore_replaces_the_counters_keys_remember() {
        let store = MemoryStore::new();
        let key = CounterKey::new("plan", "key");
        assert_eq!(decide(&store, &key), Verdict::Admitted);
        let spent = store.snapshot();
        store.restore(Vec::new());
        assert_eq!(decide(&store, &key), Verdict::Admitted);
        store.restore(spent);
        assert_eq!(decide(&store, &key), Verdict::QuotaExceeded);
    }

    #[test]
    fn one_key_in_two_stores_counts_in_each() {
        let (first, second) = (MemoryStore::new(), MemoryStore::new());
        let key = CounterKey::new("plan", "key");
        assert_eq!(decide(&first, &key), Verdict::Admitted);
        assert_eq!(decide(&second, &key), Verdict::Admitted);
        assert_eq!(decide(&second, &key), Verdict::QuotaExceeded);
        assert_eq!(decide(&first, &key), Verdict::QuotaExceeded);
    }
}
