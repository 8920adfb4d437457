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
mod lease;
mod memory;
#[cfg(feature = "redis")]
mod recovery;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use jiff::civil::Date;
use jiff::Timestamp;

#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use future::StoreFuture;
#[cfg(feature = "redis")]
pub use lease::LeaseConfig;
pub use memory::{CounterSnapshot, MemoryStore};

use crate::model::{Quota, Throttle};
use crate::UnixNanos;

/// Identifies one (plan, key) counter. Cheap to clone (one `Arc`) and to
/// look up (its hash is computed once, at creation); a [`MemoryStore`]
/// remembers in it where the counter lives, so the next decision on this
/// key needs no lookup at all.
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
    /// The counter a [`MemoryStore`] found for this key last time.
    cell: OnceLock<memory::CachedCell>,
}

impl CounterKey {
    /// The counter of `key_id` in `plan_id`.
    pub fn new(plan_id: &str, key_id: &str) -> Self {
        let mut hasher = std::hash::DefaultHasher::new();
        (plan_id, key_id).hash(&mut hasher);
        Self(Arc::new(CounterIds {
            plan_id: plan_id.into(),
            key_id: key_id.into(),
            hash: hasher.finish(),
            cell: OnceLock::new(),
        }))
    }

    pub(crate) fn cell(&self) -> &OnceLock<memory::CachedCell> {
        &self.0.cell
    }

    /// The usage plan's id.
    pub fn plan_id(&self) -> &str {
        &self.0.plan_id
    }

    /// The API key's id.
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
    pub fn limit_for_period(&self, period_start: i64) -> u64 {
        if period_start <= self.plan_created {
            self.quota.limit.saturating_sub(self.quota.offset)
        } else {
            self.quota.limit
        }
    }
}

/// One request to decide.
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
pub type DayUsage = [u64; 2];

/// Where counters live. Implemented in memory by [`MemoryStore`]; shaped
/// so a networked store can answer each call in one round trip.
///
/// Implementations must pass the crate's store conformance suite
/// (`tests/store_conformance.rs`).
pub trait CounterStore: Send + Sync + 'static {
    /// Decides one request: refill, check the throttle, then the quota;
    /// spend a token and a unit of quota only if both allow it.
    fn decide(&self, request: &DecisionRequest<'_>) -> StoreFuture<Decision>;

    /// Gives back what an admitted [`decide`](Self::decide) of the same
    /// `request` (same counter, rules and `now`) spent: its throttle token
    /// (up to the burst) and, if the decision's quota period is still the
    /// current one, its unit of quota (today's usage counts it no more).
    /// For a request that never reached the service — the client's own
    /// framing failed, say — and so must cost nothing. Call it at most once
    /// per admitted decision; it never starts a period.
    fn refund(&self, request: &DecisionRequest<'_>) -> StoreFuture<()>;

    /// Sets the remaining quota of the current period (AWS UpdateUsage);
    /// returns today's `[used, remaining]`.
    fn set_remaining(
        &self,
        counter: &CounterKey,
        quota: &QuotaRule,
        now: Timestamp,
        remaining: u64,
    ) -> StoreFuture<DayUsage>;

    /// Adds `delta` to the remaining quota of the current period in one
    /// atomic step (negative subtracts; the result is floored at 0 and
    /// capped at [`MAX_COUNT`](crate::model::MAX_COUNT)); returns today's
    /// `[used, remaining]`. Unlike a read followed by
    /// [`set_remaining`](Self::set_remaining), no admission racing with it
    /// is lost: 1,000 concurrent `+1`s leave exactly 1,000 more.
    fn add_remaining(
        &self,
        counter: &CounterKey,
        quota: &QuotaRule,
        now: Timestamp,
        delta: i64,
    ) -> StoreFuture<DayUsage>;

    /// `[used, remaining]` per UTC day from `first` to `last` inclusive.
    /// `remaining` is 0 when no quota applies.
    fn usage(
        &self,
        counter: &CounterKey,
        quota: Option<&QuotaRule>,
        now: Timestamp,
        first: Date,
        last: Date,
    ) -> StoreFuture<Vec<DayUsage>>;

    /// Drops a counter (its key left the plan, or the plan is gone).
    fn forget(&self, counter: &CounterKey) -> StoreFuture<()>;
}
