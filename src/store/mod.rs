//! The counter-store seam: every admitted or refused request is one
//! [`CounterStore::decide`] call, so a store can make the whole decision —
//! throttle and quota together — atomically, in memory or in one server
//! round trip.
//!
//! Every store keeps the same rules, however many requests race: a quota
//! never admits more than its remaining count, a throttle never more than
//! `burst + rate × elapsed`, and refused requests cost nothing (a request
//! the throttle refuses spends no quota, one the quota refuses spends no
//! token).

#[cfg(feature = "redis")]
mod control;
mod future;
#[cfg(feature = "redis")]
mod in_flight;
#[cfg(feature = "redis")]
mod learn;
#[cfg(feature = "redis")]
mod lease;
mod memory;
#[cfg(feature = "redis")]
mod recovery;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(feature = "redis")]
pub(crate) mod retry;
#[cfg(feature = "redis")]
mod spent;

use jiff::civil::Date;
use jiff::Timestamp;

#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use future::StoreFuture;
#[cfg(feature = "redis")]
pub use lease::LeaseConfig;
pub use memory::{CounterSnapshot, MemoryStore};

pub use crate::decision::{
    CounterKey, DayUsage, Decision, DecisionRequest, QuotaRule, QuotaState, ThrottleRule,
    ThrottleState, Verdict,
};

/// Where counters live. Implemented in memory by [`MemoryStore`]; shaped
/// so a networked store can answer each call in one round trip.
///
/// Implementations must pass the crate's store conformance suite
/// (`tests/store_conformance.rs`).
///
/// ```
/// use std::sync::Arc;
/// use tower_usage_plans::store::{CounterKey, CounterStore, MemoryStore, QuotaRule};
/// use tower_usage_plans::{Quota, QuotaPeriod, Timestamp, UsagePlans};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store: Arc<dyn CounterStore> = Arc::new(MemoryStore::new());
/// let plans = UsagePlans::builder().with_store(store.clone()).build();
/// let (counter, now) = (CounterKey::new("plan", "key"), Timestamp::now());
/// let quota = QuotaRule { quota: Quota::new(10, QuotaPeriod::Day), plan_created: 0 };
/// assert_eq!(store.add_remaining(&counter, &quota, now, -3).await.unwrap(), [0, 7]);
/// assert!(Arc::ptr_eq(plans.store(), &store));
/// # });
/// ```
pub trait CounterStore: Send + Sync + 'static {
    /// Decides one request: refill, check the throttle, then the quota;
    /// spend a token and a unit of quota only if both allow it.
    ///
    /// ```
    /// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, Verdict};
    /// # use tower_usage_plans::{Quota, QuotaPeriod, Timestamp};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let (store, counter) = (MemoryStore::new(), CounterKey::new("plan", "key"));
    /// # let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
    /// # let quota = QuotaRule { quota: Quota::new(10, QuotaPeriod::Day), plan_created: 0 };
    /// let request = DecisionRequest { counter: &counter, throttle: None, quota: Some(quota), now: now.into() };
    /// let decision = store.decide(&request).await.unwrap();
    /// assert_eq!(decision.verdict, Verdict::Admitted);
    /// assert_eq!(decision.quota.unwrap().remaining, 9);
    /// # });
    /// ```
    fn decide(&self, request: &DecisionRequest<'_>) -> StoreFuture<Decision>;

    /// Gives back what an admitted [`decide`](Self::decide) of the same
    /// `request` (same counter, rules and `now`) spent: its throttle token
    /// (up to the burst) and, if the decision's quota period is still the
    /// current one, its unit of quota (today's usage counts it no more).
    /// For a request that never reached the service — the client's own
    /// framing failed, say — and so must cost nothing. Call it at most once
    /// per admitted decision; it never starts a period.
    ///
    /// ```
    /// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, Verdict};
    /// # use tower_usage_plans::{Quota, QuotaPeriod, Timestamp};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let (store, counter) = (MemoryStore::new(), CounterKey::new("plan", "key"));
    /// # let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
    /// # let quota = QuotaRule { quota: Quota::new(10, QuotaPeriod::Day), plan_created: 0 };
    /// let request = DecisionRequest { counter: &counter, throttle: None, quota: Some(quota), now: now.into() };
    /// store.decide(&request).await.unwrap();
    /// store.refund(&request).await.unwrap();
    /// assert_eq!(store.decide(&request).await.unwrap().quota.unwrap().remaining, 9);
    /// # });
    /// ```
    fn refund(&self, request: &DecisionRequest<'_>) -> StoreFuture<()>;

    /// Sets the remaining quota of the current period (AWS UpdateUsage);
    /// returns today's `[used, remaining]`.
    ///
    /// ```
    /// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, Verdict};
    /// # use tower_usage_plans::{Quota, QuotaPeriod, Timestamp};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let (store, counter) = (MemoryStore::new(), CounterKey::new("plan", "key"));
    /// # let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
    /// # let quota = QuotaRule { quota: Quota::new(10, QuotaPeriod::Day), plan_created: 0 };
    /// assert_eq!(store.set_remaining(&counter, &quota, now, 3).await.unwrap(), [0, 3]);
    /// # });
    /// ```
    fn set_remaining(
        &self,
        counter: &CounterKey,
        quota: &QuotaRule,
        now: Timestamp,
        remaining: u64,
    ) -> StoreFuture<DayUsage>;

    /// Adds `delta` to the remaining quota of the current period in one
    /// atomic step (negative subtracts; the result is floored at 0 and
    /// capped at [`MAX_COUNT`](crate::MAX_COUNT)); returns today's
    /// `[used, remaining]`. Unlike a read followed by
    /// [`set_remaining`](Self::set_remaining), no admission racing with it
    /// is lost: 1,000 concurrent `+1`s leave exactly 1,000 more.
    ///
    /// ```
    /// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, Verdict};
    /// # use tower_usage_plans::{Quota, QuotaPeriod, Timestamp};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let (store, counter) = (MemoryStore::new(), CounterKey::new("plan", "key"));
    /// # let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
    /// # let quota = QuotaRule { quota: Quota::new(10, QuotaPeriod::Day), plan_created: 0 };
    /// store.set_remaining(&counter, &quota, now, 3).await.unwrap();
    /// assert_eq!(store.add_remaining(&counter, &quota, now, 2).await.unwrap(), [0, 5]);
    /// assert_eq!(store.add_remaining(&counter, &quota, now, -9).await.unwrap(), [0, 0]);
    /// # });
    /// ```
    fn add_remaining(
        &self,
        counter: &CounterKey,
        quota: &QuotaRule,
        now: Timestamp,
        delta: i64,
    ) -> StoreFuture<DayUsage>;

    /// `[used, remaining]` per UTC day from `first` to `last` inclusive.
    /// `remaining` is 0 when no quota applies.
    ///
    /// ```
    /// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, Verdict};
    /// # use tower_usage_plans::{Quota, QuotaPeriod, Timestamp};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let (store, counter) = (MemoryStore::new(), CounterKey::new("plan", "key"));
    /// # let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
    /// # let quota = QuotaRule { quota: Quota::new(10, QuotaPeriod::Day), plan_created: 0 };
    /// let request = DecisionRequest { counter: &counter, throttle: None, quota: Some(quota), now: now.into() };
    /// store.decide(&request).await.unwrap();
    /// let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    /// let days = store.usage(&counter, Some(&quota), now, today, today).await.unwrap();
    /// assert_eq!(days, vec![[1, 9]]);
    /// # });
    /// ```
    fn usage(
        &self,
        counter: &CounterKey,
        quota: Option<&QuotaRule>,
        now: Timestamp,
        first: Date,
        last: Date,
    ) -> StoreFuture<Vec<DayUsage>>;

    /// Drops a counter (its key left the plan, or the plan is gone).
    ///
    /// ```
    /// # use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, Verdict};
    /// # use tower_usage_plans::{Quota, QuotaPeriod, Timestamp};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let (store, counter) = (MemoryStore::new(), CounterKey::new("plan", "key"));
    /// # let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
    /// # let quota = QuotaRule { quota: Quota::new(10, QuotaPeriod::Day), plan_created: 0 };
    /// let request = DecisionRequest { counter: &counter, throttle: None, quota: Some(quota), now: now.into() };
    /// store.decide(&request).await.unwrap();
    /// store.forget(&counter).await.unwrap();
    /// assert!(store.is_empty());
    /// # });
    /// ```
    fn forget(&self, counter: &CounterKey) -> StoreFuture<()>;
}
