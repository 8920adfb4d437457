use dashmap::DashMap;
use jiff::civil::Date;
use jiff::Timestamp;
use parking_lot::Mutex;

use super::{
    CounterKey, CounterStore, DayUsage, Decision, DecisionRequest, QuotaRule, StoreFuture,
};
use crate::clock::to_nanos;
use crate::limit::Counter;

/// Counters in this process: a sharded map of per-(plan, key) counters,
/// each behind its own short lock, so requests for different keys never
/// wait on each other and a decision is exact without a global lock.
///
/// ```
/// use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, Verdict};
/// use tower_usage_plans::{Quota, QuotaPeriod};
///
/// let store = MemoryStore::new();
/// let counter = CounterKey::new("plan", "key");
/// let request = DecisionRequest {
///     counter: &counter,
///     throttle: None,
///     quota: Some(QuotaRule { quota: Quota::new(1, QuotaPeriod::Day), plan_created: 0 }),
///     now: jiff::Timestamp::now(),
/// };
/// let first = futures_now(store.decide(&request));
/// let second = futures_now(store.decide(&request));
/// assert_eq!(first.verdict, Verdict::Admitted);
/// assert_eq!(second.verdict, Verdict::QuotaExceeded);
/// # fn futures_now<T>(f: tower_usage_plans::store::StoreFuture<T>) -> T {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f).unwrap()
/// # }
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    // Boxed: the map's tables stay small (a 16-byte slot, often half
    // empty after a resize), the counter lives in an exact-size allocation.
    counters: DashMap<CounterKey, Box<Mutex<Counter>>, crate::prehashed::Prehashed>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many (plan, key) counters exist.
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// Whether no counter exists.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    fn with_counter<T>(&self, key: &CounterKey, f: impl FnOnce(&mut Counter) -> T) -> T {
        if let Some(counter) = self.counters.get(key) {
            return f(&mut counter.lock());
        }
        let counter = self.counters.entry(key.clone()).or_default();
        let result = f(&mut counter.lock());
        result
    }
}

/// One counter's saved state (opaque), for persistence.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CounterSnapshot {
    /// The plan's id.
    pub plan_id: String,
    /// The key's id.
    pub key_id: String,
    state: Counter,
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
                state: entry.value().lock().clone(),
            })
            .collect()
    }

    /// Replaces every counter with the snapshot's.
    pub fn restore(&self, counters: Vec<CounterSnapshot>) {
        self.counters.clear();
        for c in counters {
            self.counters.insert(
                CounterKey::new(&c.plan_id, &c.key_id),
                Box::new(Mutex::new(c.state)),
            );
        }
    }
}

impl CounterStore for MemoryStore {
    fn decide(&self, request: &DecisionRequest<'_>) -> StoreFuture<Decision> {
        StoreFuture::ready(Ok(self.with_counter(request.counter, |c| c.decide(request))))
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

    fn usage(
        &self,
        counter: &CounterKey,
        quota: Option<&QuotaRule>,
        now: Timestamp,
        first: Date,
        last: Date,
    ) -> StoreFuture<Vec<DayUsage>> {
        let days = match self.counters.get(counter) {
            Some(c) => c.lock().usage(quota, to_nanos(now), first, last),
            None => Counter::default().usage(quota, to_nanos(now), first, last),
        };
        StoreFuture::ready(Ok(days))
    }

    fn forget(&self, counter: &CounterKey) -> StoreFuture<()> {
        self.counters.remove(counter);
        StoreFuture::ready(Ok(()))
    }
}
