//! What a decision is about and what it says: the counter's identity, the
//! throttle and quota that apply, and the verdict with the counters' state
//! after it. Below both the counting rules (`limit`) and the stores
//! (`store`), which share these types; `store` re-exports them.

use std::any::Any;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

pub(crate) mod ratelimit;

use crate::clock::UnixNanos;
use crate::model::{Quota, Throttle};

/// A counter a store found for a [`CounterKey`], remembered in the key:
/// which store (an id from [`next_store_id`]) and its own cell, opaque here.
#[derive(Debug)]
pub(crate) struct CachedCounter {
    pub(crate) store: u64,
    pub(crate) cell: Arc<dyn Any + Send + Sync>,
}

/// A process-unique id for a store that caches counters in keys.
pub(crate) fn next_store_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Identifies one (plan, key) counter. Cheap to clone (one `Arc`) and to
/// look up (its hash is computed once, at creation); a store may remember
/// in it where the counter lives (the
/// [`MemoryStore`](crate::store::MemoryStore) does), so the next decision
/// on this key needs no lookup at all.
///
/// ```
/// use tower_usage_plans::store::CounterKey;
///
/// let key = CounterKey::new("plan", "key");
/// assert_eq!((key.plan_id(), key.key_id()), ("plan", "key"));
/// assert_eq!(key, CounterKey::new("plan", "key"));
/// ```
#[derive(Clone)]
pub struct CounterKey(Arc<CounterIds>);

struct CounterIds {
    plan_id: Box<str>,
    key_id: Box<str>,
    hash: u64,
    /// Where a store found this key's counter last time.
    cached: OnceLock<CachedCounter>,
    /// Where a leasing store keeps this key's plan-wide lease.
    lease: OnceLock<CachedCounter>,
}

impl CounterKey {
    /// The counter of `key_id` in `plan_id`.
    ///
    /// ```
    /// # use tower_usage_plans::store::CounterKey;
    /// assert_ne!(CounterKey::new("plan", "a"), CounterKey::new("plan", "b"));
    /// ```
    pub fn new(plan_id: &str, key_id: &str) -> Self {
        let mut hasher = std::hash::DefaultHasher::new();
        (plan_id, key_id).hash(&mut hasher);
        Self(Arc::new(CounterIds {
            plan_id: plan_id.into(),
            key_id: key_id.into(),
            hash: hasher.finish(),
            cached: OnceLock::new(),
            lease: OnceLock::new(),
        }))
    }

    /// Where a store remembers this key's counter (the first store to
    /// decide for the key keeps the slot).
    pub(crate) fn cached(&self) -> &OnceLock<CachedCounter> {
        &self.0.cached
    }

    /// Where a leasing store keeps this key's plan-wide lease (the first
    /// such store to lease for the key keeps the slot).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn cached_lease(&self) -> &OnceLock<CachedCounter> {
        &self.0.lease
    }

    /// The usage plan's id.
    ///
    /// ```
    /// # use tower_usage_plans::store::CounterKey;
    /// assert_eq!(CounterKey::new("plan", "key").plan_id(), "plan");
    /// ```
    pub fn plan_id(&self) -> &str {
        &self.0.plan_id
    }

    /// The API key's id.
    ///
    /// ```
    /// # use tower_usage_plans::store::CounterKey;
    /// assert_eq!(CounterKey::new("plan", "key").key_id(), "key");
    /// ```
    pub fn key_id(&self) -> &str {
        &self.0.key_id
    }
}

impl PartialEq for CounterKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash
                && self.0.plan_id == other.0.plan_id
                && self.0.key_id == other.0.key_id)
    }
}

impl Eq for CounterKey {}

impl Hash for CounterKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl fmt::Debug for CounterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CounterKey({}/{})", self.0.plan_id, self.0.key_id)
    }
}

/// A throttle to apply: the plan's (`method: None`) or one method's bucket.
///
/// ```
/// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, ThrottleRule, Verdict};
/// # use tower_usage_plans::{Quota, QuotaPeriod, Throttle, Timestamp};
/// # let block_on = |f| tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f);
/// # let (store, counter) = (MemoryStore::new(), CounterKey::new("plan", "key"));
/// # let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
/// let rule = ThrottleRule { method: None, throttle: Throttle::new(1.0, 1).unwrap() };
/// let request = DecisionRequest { counter: &counter, throttle: Some(rule), quota: None, now: now.into() };
/// assert_eq!(block_on(store.decide(&request)).unwrap().verdict, Verdict::Admitted);
/// assert_eq!(block_on(store.decide(&request)).unwrap().verdict, Verdict::Throttled);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleRule<'a> {
    /// The method-throttle key (`"/pets/GET"`) whose bucket applies; `None`
    /// for the plan-wide bucket.
    pub method: Option<&'a str>,
    /// Rate and burst.
    pub throttle: Throttle,
}

/// A quota to apply, with the plan's creation time (its offset applies in
/// the period that contains it).
///
/// ```
/// use tower_usage_plans::store::QuotaRule;
/// use tower_usage_plans::{Quota, QuotaPeriod};
///
/// let quota = Quota::new(100, QuotaPeriod::Day).with_offset(30).unwrap();
/// let rule = QuotaRule { quota, plan_created: 1_000 };
/// assert_eq!(rule.limit_for_period(0), 70);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaRule {
    /// Limit, offset and period.
    pub quota: Quota,
    /// When the plan was created, Unix seconds.
    pub plan_created: i64,
}

impl QuotaRule {
    /// The requests allowed in the period starting at `period_start`
    /// (Unix seconds): the limit, less the offset in the initial period.
    ///
    /// ```
    /// # use tower_usage_plans::store::QuotaRule;
    /// # use tower_usage_plans::{Quota, QuotaPeriod};
    /// let rule = QuotaRule { quota: Quota::new(100, QuotaPeriod::Day).with_offset(30).unwrap(), plan_created: 1_000 };
    /// assert_eq!(rule.limit_for_period(0), 70); // the period the plan was created in
    /// assert_eq!(rule.limit_for_period(86_400), 100); // every later one
    /// ```
    pub fn limit_for_period(&self, period_start: i64) -> u64 {
        if period_start <= self.plan_created {
            self.quota.limit.saturating_sub(self.quota.offset)
        } else {
            self.quota.limit
        }
    }
}

/// One request to decide.
///
/// ```
/// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, ThrottleRule, Verdict};
/// # use tower_usage_plans::{Quota, QuotaPeriod, Throttle, Timestamp};
/// # let block_on = |f| tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f);
/// # let (store, counter) = (MemoryStore::new(), CounterKey::new("plan", "key"));
/// # let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
/// let quota = QuotaRule { quota: Quota::new(2, QuotaPeriod::Day), plan_created: 0 };
/// let request = DecisionRequest { counter: &counter, throttle: None, quota: Some(quota), now: now.into() };
/// let decision = block_on(store.decide(&request)).unwrap();
/// assert_eq!(decision.quota.unwrap().remaining, 1);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct DecisionRequest<'a> {
    /// Whose counter.
    pub counter: &'a CounterKey,
    /// The throttle that applies, if any.
    pub throttle: Option<ThrottleRule<'a>>,
    /// The quota that applies, if any.
    pub quota: Option<QuotaRule>,
    /// The time of the request.
    pub now: UnixNanos,
}

/// The outcome of a decision.
///
/// ```
/// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, ThrottleRule, Verdict};
/// # use tower_usage_plans::{Quota, QuotaPeriod, Throttle, Timestamp};
/// # let block_on = |f| tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f);
/// # let (store, counter) = (MemoryStore::new(), CounterKey::new("plan", "key"));
/// # let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
/// let quota = QuotaRule { quota: Quota::new(0, QuotaPeriod::Day), plan_created: 0 };
/// let request = DecisionRequest { counter: &counter, throttle: None, quota: Some(quota), now: now.into() };
/// assert_eq!(block_on(store.decide(&request)).unwrap().verdict, Verdict::QuotaExceeded);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted: one token and one unit of quota spent.
    Admitted,
    /// The bucket is empty; nothing was spent.
    Throttled,
    /// The quota is exhausted; nothing was spent.
    QuotaExceeded,
}

/// A bucket's state after a decision, for the rate-limit headers.
///
/// ```
/// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, ThrottleRule, Verdict};
/// # use tower_usage_plans::{Quota, QuotaPeriod, Throttle, Timestamp};
/// # let block_on = |f| tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f);
/// # let (store, counter) = (MemoryStore::new(), CounterKey::new("plan", "key"));
/// # let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
/// let rule = ThrottleRule { method: None, throttle: Throttle::new(1.0, 3).unwrap() };
/// let request = DecisionRequest { counter: &counter, throttle: Some(rule), quota: None, now: now.into() };
/// let bucket = block_on(store.decide(&request)).unwrap().throttle.unwrap();
/// assert_eq!((bucket.burst_limit, bucket.tokens, bucket.retry_after_secs), (3, 2, 0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleState {
    /// Bucket capacity.
    pub burst_limit: u32,
    /// Whole tokens left.
    pub tokens: u32,
    /// Seconds until one more token (0 when full).
    pub next_token_secs: u64,
    /// Seconds until a request can be admitted (0 when one can be now).
    pub retry_after_secs: u64,
}

/// A quota's state after a decision, for the rate-limit headers.
///
/// ```
/// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, ThrottleRule, Verdict};
/// # use tower_usage_plans::{Quota, QuotaPeriod, Throttle, Timestamp};
/// # let block_on = |f| tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f);
/// # let (store, counter) = (MemoryStore::new(), CounterKey::new("plan", "key"));
/// # let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
/// let quota = QuotaRule { quota: Quota::new(10, QuotaPeriod::Day), plan_created: 0 };
/// let request = DecisionRequest { counter: &counter, throttle: None, quota: Some(quota), now: now.into() };
/// let state = block_on(store.decide(&request)).unwrap().quota.unwrap();
/// assert_eq!((state.limit, state.remaining), (10, 9));
/// assert_eq!((state.period_secs, state.reset_secs), (86_400, 43_200)); // it is noon UTC
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    /// The plan's limit per period.
    pub limit: u64,
    /// Requests left in this period.
    pub remaining: u64,
    /// Length of the current period in seconds.
    pub period_secs: u64,
    /// Seconds until the period ends.
    pub reset_secs: u64,
}

/// A decision and the counters' state after it.
///
/// ```
/// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, ThrottleRule, Verdict};
/// # use tower_usage_plans::{Quota, QuotaPeriod, Throttle, Timestamp};
/// # let block_on = |f| tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f);
/// # let (store, counter) = (MemoryStore::new(), CounterKey::new("plan", "key"));
/// # let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
/// let request = DecisionRequest { counter: &counter, throttle: None, quota: None, now: now.into() };
/// let decision = block_on(store.decide(&request)).unwrap();
/// assert_eq!(decision.verdict, Verdict::Admitted);
/// assert!(decision.throttle.is_none() && decision.quota.is_none()); // no rule applied
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Admitted or why not.
    pub verdict: Verdict,
    /// The bucket, when a throttle applied.
    pub throttle: Option<ThrottleState>,
    /// The quota, when one applied.
    pub quota: Option<QuotaState>,
}

/// One day's `[used, remaining]`.
///
/// ```
/// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, ThrottleRule, Verdict};
/// # use tower_usage_plans::{Quota, QuotaPeriod, Throttle, Timestamp};
/// # let block_on = |f| tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f);
/// # let (store, counter) = (MemoryStore::new(), CounterKey::new("plan", "key"));
/// # let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
/// let quota = QuotaRule { quota: Quota::new(10, QuotaPeriod::Day), plan_created: 0 };
/// let [used, remaining] = block_on(store.set_remaining(&counter, &quota, now, 4)).unwrap();
/// assert_eq!((used, remaining), (0, 4));
/// ```
pub type DayUsage = [u64; 2];
