//! [`UsagePlans`]: the shared handle on plans, keys, their associations and
//! their counters. The admin API and Rust callers change state only
//! through it; the layer reads its lookup view.

mod lookup;
#[cfg(feature = "gateway")]
mod merge;
mod routes;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use jiff::civil::Date;
use parking_lot::{Mutex, MutexGuard};
use rand::distr::{Alphanumeric, SampleString};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

use lookup::PlanRuntime;
pub(crate) use lookup::{digest, Binding, KeyDigest, KeyRoute, Stage};
#[cfg(feature = "gateway")]
pub(crate) use merge::MergeBase;
use routes::{RouteId, Routes};
pub use snapshot::{KeySnapshot, PlanSnapshot, RegistrySnapshot};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, ErrorKind, Result};
use crate::limit::period;
use crate::model::{
    validate_key_value, ApiKey, NewApiKey, NewUsagePlan, Usage, UsagePlan, UsagePlanKey,
};
use crate::store::{CounterKey, CounterStore, MemoryStore};

/// The longest date range GetUsage answers in one call.
///
/// ```
/// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans, Date, ErrorKind, MAX_USAGE_DAYS};
/// # let plans = UsagePlans::new();
/// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
/// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let start: Date = "2026-01-01".parse().unwrap();
/// let too_long = start + jiff::Span::new().days(MAX_USAGE_DAYS);
/// let err = plans.usage(&plan.id, None, start, too_long).await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::BadRequest);
/// assert!(plans.usage(&plan.id, None, start, too_long - jiff::Span::new().days(1)).await.is_ok());
/// # });
/// ```
pub const MAX_USAGE_DAYS: i64 = 366;

/// The shared, cheaply cloneable handle on usage plans, API keys and their
/// counters. Clones share the same state; changes are enforced by every
/// layer built from it on the very next request.
///
/// ```
/// use tower_usage_plans::{NewApiKey, NewUsagePlan, Quota, QuotaPeriod, UsagePlans};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let plans = UsagePlans::new();
/// let plan = plans
///     .create_usage_plan(NewUsagePlan::new("basic").with_quota(Quota::new(100, QuotaPeriod::Day)))
///     .unwrap();
/// let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
/// plans.add_key_to_plan(&plan.id, &key.id).unwrap();
///
/// // AWS UpdateUsage: grant 500 more requests for the current period.
/// let usage = plans.set_remaining(&plan.id, &key.id, 500).await.unwrap();
/// assert_eq!(usage.values[&key.id], vec![[0, 500]]);
/// # });
/// ```
#[derive(Clone)]
pub struct UsagePlans {
    inner: Arc<Inner>,
}

struct Inner {
    /// The admin plane's truth; only writers take it.
    control: Mutex<Control>,
    /// Bumped by every write to `control` (replicas sync on it).
    generation: AtomicU64,
    /// The data plane's view, keyed by key value (or digest).
    routes: Routes,
    store: Arc<dyn CounterStore>,
    clock: Arc<dyn Clock>,
    hash_only: bool,
    /// What makes changes reach the other replicas, if there are any.
    replication: parking_lot::RwLock<Option<Replicate>>,
    /// Counters a networked store is still dropping (in the background):
    /// [`UsagePlans::replicated`] waits for them, so an admin call that
    /// removed a key from a plan returns once its counter (and every
    /// replica's lease of it) is gone.
    forgetting: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Counters of keys that left their plans, dropped once the change
    /// reached every replica (with replication): dropped before, another
    /// replica that still had the key decided on an emptied counter and
    /// admitted a spent key anew (2 to 7 requests in 9 of 10 black-box
    /// runs deleting a key under traffic).
    to_forget: parking_lot::Mutex<Vec<CounterKey>>,
}

/// Makes the registry's changes reach every other replica; resolves once
/// each live replica enforces them. See [`UsagePlans::set_replication`].
///
/// ```
/// use std::sync::Arc;
/// use tower_usage_plans::{store::StoreFuture, Replicate, UsagePlans};
///
/// let replicate: Replicate = Arc::new(|| StoreFuture::ready(Ok(())));
/// let plans = UsagePlans::new();
/// plans.set_replication(Some(replicate));
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// assert!(plans.replicated().await.is_ok());
/// # });
/// ```
pub type Replicate = Arc<dyn Fn() -> crate::store::StoreFuture<()> + Send + Sync>;

#[derive(Default)]
struct Control {
    plans: BTreeMap<String, PlanEntry>,
    keys: BTreeMap<String, KeyEntry>,
    by_digest: HashMap<KeyDigest, String>,
}

struct PlanEntry {
    plan: UsagePlan,
    created: i64,
    keys: BTreeSet<String>,
    runtime: Arc<PlanRuntime>,
}

struct KeyEntry {
    key: ApiKey,
    digest: KeyDigest,
    plans: PlanIds,
}

impl KeyEntry {
    /// Where the data plane finds this key: by value when it is kept.
    fn route_id(&self) -> RouteId {
        match &self.key.value {
            Some(value) => RouteId::of_value(value),
            None => RouteId::of_digest(&self.digest),
        }
    }
}

/// The plans of one key: a sorted, exactly sized list. Keys are many and
/// in few plans (at most one per stage); a `BTreeSet` node costs ~300 bytes.
#[derive(Default)]
struct PlanIds(Vec<String>);

impl PlanIds {
    fn insert(&mut self, id: String) {
        if let Err(at) = self.0.binary_search(&id) {
            self.0.reserve_exact(1);
            self.0.insert(at, id);
        }
    }

    fn remove(&mut self, id: &str) {
        if let Ok(at) = self.0.binary_search_by(|p| p.as_str().cmp(id)) {
            self.0.remove(at);
        }
    }

    fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a PlanIds {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Builds a [`UsagePlans`] with a chosen store, clock or key storage.
///
/// ```
/// use std::sync::Arc;
/// use tower_usage_plans::{store::MemoryStore, ManualClock, UsagePlans};
///
/// let clock = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
/// let plans = UsagePlans::builder()
///     .with_store(Arc::new(MemoryStore::new()))
///     .with_clock(clock)
///     .with_hash_only(true)
///     .build();
/// # drop(plans);
/// ```
#[must_use]
pub struct UsagePlansBuilder {
    store: Arc<dyn CounterStore>,
    clock: Arc<dyn Clock>,
    hash_only: bool,
}

impl UsagePlansBuilder {
    /// Where counters live (default: a [`MemoryStore`]).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_usage_plans::{store::{CounterStore, MemoryStore}, UsagePlans};
    ///
    /// let store = Arc::new(MemoryStore::new());
    /// let plans = UsagePlans::builder().with_store(store.clone()).build();
    /// assert!(Arc::ptr_eq(plans.store(), &(store as Arc<dyn CounterStore>)));
    /// ```
    pub fn with_store(mut self, store: Arc<dyn CounterStore>) -> Self {
        self.store = store;
        self
    }

    /// Renamed [`with_store`](Self::with_store).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tower_usage_plans::{store::MemoryStore, UsagePlans};
    /// #[allow(deprecated)]
    /// let plans = UsagePlans::builder().store(Arc::new(MemoryStore::new())).build();
    /// assert_eq!(plans.plan_count(), 0);
    /// ```
    #[deprecated(since = "0.2.0", note = "use with_store")]
    pub fn store(self, store: Arc<dyn CounterStore>) -> Self {
        self.with_store(store)
    }

    /// Where time comes from (default: [`SystemClock`]).
    ///
    /// ```
    /// # use tower_usage_plans::{ManualClock, Timestamp, UsagePlans};
    /// let at: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    /// let plans = UsagePlans::builder().with_clock(ManualClock::new(at)).build();
    /// assert_eq!(plans.clock().now(), at);
    /// ```
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Renamed [`with_clock`](Self::with_clock).
    ///
    /// ```
    /// # use tower_usage_plans::{ManualClock, Timestamp, UsagePlans};
    /// #[allow(deprecated)]
    /// let plans = UsagePlans::builder().clock(ManualClock::new(Timestamp::UNIX_EPOCH)).build();
    /// assert_eq!(plans.clock().now(), Timestamp::UNIX_EPOCH);
    /// ```
    #[deprecated(since = "0.2.0", note = "use with_clock")]
    pub fn clock(self, clock: impl Clock) -> Self {
        self.with_clock(clock)
    }

    /// Keep only the SHA-256 digest of key values: the value is shown once,
    /// when the key is created (default: `false`, values are kept so
    /// `includeValue=true` works as in AWS).
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, UsagePlans};
    /// let plans = UsagePlans::builder().with_hash_only(true).build();
    /// let key = plans.create_api_key(NewApiKey::new("alice")).unwrap();
    /// assert!(key.value.is_some()); // shown once, at creation
    /// assert_eq!(plans.api_key(&key.id).unwrap().value, None);
    /// ```
    pub fn with_hash_only(mut self, hash_only: bool) -> Self {
        self.hash_only = hash_only;
        self
    }

    /// Renamed [`with_hash_only`](Self::with_hash_only).
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, UsagePlans};
    /// #[allow(deprecated)]
    /// let plans = UsagePlans::builder().hash_only(true).build();
    /// let key = plans.create_api_key(NewApiKey::new("alice")).unwrap();
    /// assert_eq!(plans.api_key(&key.id).unwrap().value, None);
    /// ```
    #[deprecated(since = "0.2.0", note = "use with_hash_only")]
    pub fn hash_only(self, hash_only: bool) -> Self {
        self.with_hash_only(hash_only)
    }

    /// The handle.
    ///
    /// ```
    /// # use tower_usage_plans::UsagePlans;
    /// let plans = UsagePlans::builder().build();
    /// assert_eq!((plans.plan_count(), plans.key_count()), (0, 0));
    /// ```
    pub fn build(self) -> UsagePlans {
        UsagePlans {
            inner: Arc::new(Inner {
                control: Mutex::new(Control::default()),
                generation: AtomicU64::new(0),
                routes: Routes::default(),
                store: self.store,
                clock: self.clock,
                hash_only: self.hash_only,
                replication: parking_lot::RwLock::new(None),
                forgetting: parking_lot::Mutex::new(Vec::new()),
                to_forget: parking_lot::Mutex::new(Vec::new()),
            }),
        }
    }
}

impl Default for UsagePlans {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for UsagePlans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let control = self.inner.control.lock();
        f.debug_struct("UsagePlans")
            .field("plans", &control.plans.len())
            .field("keys", &control.keys.len())
            .finish_non_exhaustive()
    }
}

impl UsagePlans {
    /// In-memory counters, the system clock, key values kept.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, UsagePlans};
    /// let plans = UsagePlans::new();
    /// let key = plans.create_api_key(NewApiKey::new("alice")).unwrap();
    /// assert_eq!(plans.api_key(&key.id).unwrap().value, key.value);
    /// ```
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to choose the store, the clock and key storage.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, UsagePlans};
    /// let plans = UsagePlans::builder().with_hash_only(true).build();
    /// let key = plans.create_api_key(NewApiKey::new("alice")).unwrap();
    /// assert!(plans.api_key(&key.id).unwrap().value.is_none());
    /// ```
    pub fn builder() -> UsagePlansBuilder {
        // The system clock calibrates its counter (~1 ms) on first use:
        // here, not in the first request.
        SystemClock.now_nanos();
        UsagePlansBuilder {
            store: Arc::new(MemoryStore::new()),
            clock: Arc::new(SystemClock),
            hash_only: false,
        }
    }

    /// A number that changes whenever plans, keys or associations may have
    /// changed (counters aside): what replicas compare to know they must
    /// share their registry.
    ///
    /// ```
    /// # use tower_usage_plans::{NewUsagePlan, UsagePlans};
    /// let plans = UsagePlans::new();
    /// let before = plans.generation();
    /// plans.create_usage_plan(NewUsagePlan::new("p")).unwrap();
    /// assert_ne!(plans.generation(), before);
    /// ```
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Sets what makes changes reach other replicas (the gateway's Redis
    /// sync sets it); `None` removes it. [`replicated`](Self::replicated)
    /// runs it.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_usage_plans::{store::StoreFuture, UsagePlans};
    ///
    /// let plans = UsagePlans::new();
    /// plans.set_replication(Some(Arc::new(|| StoreFuture::ready(Ok(())))));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// plans.replicated().await.unwrap();
    /// # });
    /// ```
    pub fn set_replication(&self, replicate: Option<Replicate>) {
        *self.inner.replication.write() = replicate;
    }

    /// Resolves once the changes made so far are enforced by every live
    /// replica (at once without replication). The admin API awaits it
    /// before it answers a change, so that once a key is disabled or
    /// deleted through any replica, no replica admits it. With
    /// replication, the counters of keys that left their plans are
    /// dropped then, once no replica decides on them (kept until a call
    /// succeeds: a library that sets replication calls this after its
    /// changes; one the store failed to drop waits for the next call).
    ///
    /// # Errors
    /// `Store` when the replicas cannot be reached (e.g. Redis is down):
    /// the change holds on this replica and reaches the others later.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tower_usage_plans::{store::StoreFuture, Error, ErrorKind, UsagePlans};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let plans = UsagePlans::new();
    /// assert!(plans.replicated().await.is_ok()); // no replication: at once
    /// plans.set_replication(Some(Arc::new(|| StoreFuture::ready(Err(Error::new(ErrorKind::Store, "down"))))));
    /// assert_eq!(plans.replicated().await.unwrap_err().kind(), ErrorKind::Store);
    /// # });
    /// ```
    pub async fn replicated(&self) -> Result<()> {
        let forgetting = std::mem::take(&mut *self.inner.forgetting.lock());
        for forget in forgetting {
            let _ = forget.await;
        }
        let replicate = self.inner.replication.read().clone();
        let Some(replicate) = replicate else {
            return Ok(());
        };
        // Taken before: a key removed by then is removed in what the
        // replication shares (the removal queued its counter under the
        // registry's lock). One removed meanwhile waits for its own call.
        let removed = std::mem::take(&mut *self.inner.to_forget.lock());
        if let Err(e) = replicate().await {
            self.inner.to_forget.lock().extend(removed);
            return Err(e);
        }
        // No replica decides on them any more: dropped together.
        let dropping: Vec<_> = removed
            .into_iter()
            // Back in the plan since (another admin call): its counter
            // counts again.
            .filter(|counter| {
                self.inner
                    .control
                    .lock()
                    .membership(counter.plan_id(), counter.key_id())
                    .is_err()
            })
            .map(|counter| {
                let store = self.inner.store.clone();
                tokio::spawn(async move {
                    let Err(e) = store.forget(&counter).await else {
                        return None;
                    };
                    tracing::warn!(
                        plan_id = counter.plan_id(),
                        key_id = counter.key_id(),
                        error = %e,
                        "could not drop counter; tried again with the next change"
                    );
                    Some(counter)
                })
            })
            .collect();
        for dropped in dropping {
            // Not dropped (the store failed): queued again, for the next
            // call (kept, a key added back later started from its old count).
            if let Ok(Some(counter)) = dropped.await {
                self.inner.to_forget.lock().push(counter);
            }
        }
        Ok(())
    }

    /// Takes the control state for writing; the generation moves on when
    /// the write ends.
    fn write(&self) -> Writer<'_> {
        Writer {
            guard: self.inner.control.lock(),
            generation: &self.inner.generation,
            changed: false,
        }
    }

    /// How many usage plans exist.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// assert_eq!(plans.plan_count(), 1);
    /// plans.delete_usage_plan(&plan.id).unwrap();
    /// assert_eq!(plans.plan_count(), 0);
    /// ```
    pub fn plan_count(&self) -> usize {
        self.inner.control.lock().plans.len()
    }

    /// How many API keys exist.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// assert_eq!(plans.key_count(), 1);
    /// plans.create_api_key(NewApiKey::new("bob")).unwrap();
    /// assert_eq!(plans.key_count(), 2);
    /// ```
    pub fn key_count(&self) -> usize {
        self.inner.control.lock().keys.len()
    }

    /// The counter store.
    ///
    /// ```
    /// # use tower_usage_plans::UsagePlans;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let plans = UsagePlans::new();
    /// let counter = tower_usage_plans::store::CounterKey::new("plan", "key");
    /// let today = plans.clock().now().to_zoned(jiff::tz::TimeZone::UTC).date();
    /// let usage = plans.store().usage(&counter, None, plans.clock().now(), today, today).await.unwrap();
    /// assert_eq!(usage, vec![[0, 0]]);
    /// # });
    /// ```
    pub fn store(&self) -> &Arc<dyn CounterStore> {
        &self.inner.store
    }

    /// The clock.
    ///
    /// ```
    /// # use tower_usage_plans::{ManualClock, Timestamp, UsagePlans};
    /// let plans = UsagePlans::builder().with_clock(ManualClock::new(Timestamp::UNIX_EPOCH)).build();
    /// assert_eq!(plans.clock().now(), Timestamp::UNIX_EPOCH);
    /// ```
    pub fn clock(&self) -> &dyn Clock {
        &*self.inner.clock
    }

    pub(crate) fn now_secs(&self) -> i64 {
        self.inner.clock.now().as_second()
    }

    /// Runs `f` on the data plane's view of the key presented as `value`.
    pub(crate) fn with_route<T>(&self, value: &[u8], f: impl FnOnce(Option<&KeyRoute>) -> T) -> T {
        self.inner.routes.with(value, f)
    }

    // ---- usage plans ----------------------------------------------------

    /// Creates a plan.
    ///
    /// # Errors
    /// `BadRequest` for an empty name, a negative or NaN rate, a limit or
    /// offset above 2,147,483,647, or a malformed method-throttle key.
    ///
    /// ```
    /// # use tower_usage_plans::{ErrorKind, NewUsagePlan, UsagePlans};
    /// let plans = UsagePlans::new();
    /// let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// assert_eq!(plans.usage_plan(&plan.id).unwrap().name, "basic");
    /// assert_eq!(plans.create_usage_plan(NewUsagePlan::new(" ")).unwrap_err().kind(), ErrorKind::BadRequest);
    /// ```
    pub fn create_usage_plan(&self, input: NewUsagePlan) -> Result<UsagePlan> {
        self.create_usage_plan_as(input, None)
    }

    /// [`create_usage_plan`](Self::create_usage_plan) with the id `id` if
    /// no plan has it (the gateway's configured plans: every replica names
    /// one the same, so one re-created on an emptied Redis is the same
    /// plan, with the same counters).
    pub(crate) fn create_usage_plan_as(
        &self,
        input: NewUsagePlan,
        id: Option<&str>,
    ) -> Result<UsagePlan> {
        let mut control = self.write();
        let id = match id {
            Some(id) if !control.plans.contains_key(id) => id.to_owned(),
            _ => unique_id(|id| control.plans.contains_key(id)),
        };
        let plan = input.into_plan(id.clone());
        plan.validate()?;
        let created = self.now_secs();
        let runtime = Arc::new(PlanRuntime::new(&plan, created));
        control.plans.insert(
            id,
            PlanEntry {
                plan: plan.clone(),
                created,
                keys: BTreeSet::new(),
                runtime,
            },
        );
        Ok(plan)
    }

    /// One plan.
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// assert_eq!(plans.usage_plan(&plan.id).unwrap(), plan);
    /// assert!(plans.usage_plan("nope").is_err());
    /// ```
    pub fn usage_plan(&self, plan_id: &str) -> Result<UsagePlan> {
        let control = self.inner.control.lock();
        control.plan(plan_id).map(|p| p.plan.clone())
    }

    /// Every plan, ordered by id.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// let other = plans.create_usage_plan(NewUsagePlan::new("other")).unwrap();
    /// let ids: Vec<String> = plans.usage_plans().into_iter().map(|p| p.id).collect();
    /// let mut expected = vec![plan.id, other.id];
    /// expected.sort();
    /// assert_eq!(ids, expected);
    /// ```
    pub fn usage_plans(&self) -> Vec<UsagePlan> {
        let control = self.inner.control.lock();
        control.plans.values().map(|p| p.plan.clone()).collect()
    }

    /// The plans `key_id` belongs to, ordered by id.
    ///
    /// # Errors
    /// `NotFound` for an unknown key.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// assert!(plans.usage_plans_of_key(&key.id).unwrap().is_empty());
    /// plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    /// assert_eq!(plans.usage_plans_of_key(&key.id).unwrap(), vec![plan]);
    /// ```
    pub fn usage_plans_of_key(&self, key_id: &str) -> Result<Vec<UsagePlan>> {
        let control = self.inner.control.lock();
        let key = control.key(key_id)?;
        Ok(key
            .plans
            .iter()
            .map(|id| control.plans[id].plan.clone())
            .collect())
    }

    /// Changes a plan with `edit`, as one validated step: if `edit` fails,
    /// or the result is invalid, or it would put one of its keys in two
    /// plans covering the same stage, nothing changes.
    ///
    /// ```
    /// use tower_usage_plans::{NewUsagePlan, Throttle, UsagePlans};
    ///
    /// let plans = UsagePlans::new();
    /// let plan = plans.create_usage_plan(NewUsagePlan::new("p")).unwrap();
    /// let plan = plans
    ///     .update_usage_plan(&plan.id, |p| {
    ///         p.throttle = Some(Throttle::new(5.0, 10)?);
    ///         Ok(())
    ///     })
    ///     .unwrap();
    /// assert_eq!(plan.throttle.unwrap().burst_limit, 10);
    /// ```
    ///
    /// # Errors
    /// `NotFound`, `BadRequest` (invalid result or changed id), `Conflict`,
    /// or whatever `edit` returns.
    pub fn update_usage_plan(
        &self,
        plan_id: &str,
        edit: impl FnOnce(&mut UsagePlan) -> Result<()>,
    ) -> Result<UsagePlan> {
        let mut control = self.write();
        let entry = control.plan(plan_id)?;
        let mut plan = entry.plan.clone();
        edit(&mut plan)?;
        if plan.id != plan_id {
            return Err(Error::bad_request("The usage plan id cannot be changed"));
        }
        plan.validate()?;
        for key_id in &entry.keys {
            control.check_no_overlap(key_id, &plan)?;
        }
        let entry = control.plans.get_mut(plan_id).expect("checked above");
        entry.runtime = Arc::new(PlanRuntime::new(&plan, entry.created));
        entry.plan = plan.clone();
        let keys: Vec<String> = entry.keys.iter().cloned().collect();
        for key_id in keys {
            self.refresh_route(&control, &key_id);
        }
        Ok(plan)
    }

    /// Deletes a plan; its keys leave it and its counters are dropped.
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// plans.delete_usage_plan(&plan.id).unwrap();
    /// assert!(plans.usage_plan(&plan.id).is_err());
    /// assert!(plans.delete_usage_plan(&plan.id).is_err());
    /// ```
    pub fn delete_usage_plan(&self, plan_id: &str) -> Result<()> {
        let mut control = self.write();
        let entry = control
            .plans
            .remove(plan_id)
            .ok_or_else(Error::plan_not_found)?;
        for key_id in &entry.keys {
            if let Some(key) = control.keys.get_mut(key_id) {
                key.plans.remove(plan_id);
            }
            self.refresh_route(&control, key_id);
            self.forget_counter(plan_id, key_id);
        }
        Ok(())
    }

    // ---- API keys -------------------------------------------------------

    /// Creates a key; the result always shows the value (even in
    /// hash-only mode, where this is the only time it is shown).
    ///
    /// # Errors
    /// `BadRequest` for a value under 20 or over 128 characters or a name
    /// over 1024; `Conflict` ("API Key already exists") for a value in use.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans, ErrorKind};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// let bob = plans.create_api_key(NewApiKey::new("bob").with_value("bob-key-0123456789abcdef")).unwrap();
    /// assert!(!bob.enabled); // disabled unless asked, as in AWS
    /// let again = plans.create_api_key(NewApiKey::new("eve").with_value("bob-key-0123456789abcdef"));
    /// assert_eq!(again.unwrap_err().kind(), ErrorKind::Conflict);
    /// ```
    pub fn create_api_key(&self, input: NewApiKey) -> Result<ApiKey> {
        self.create_api_key_as(input, None)
    }

    /// [`create_api_key`](Self::create_api_key) with the id `id` if no key
    /// has it (see [`create_usage_plan_as`](Self::create_usage_plan_as)).
    pub(crate) fn create_api_key_as(&self, input: NewApiKey, id: Option<&str>) -> Result<ApiKey> {
        let mut control = self.write();
        let value = match input.value {
            Some(value) => value,
            None => Alphanumeric.sample_string(&mut rand::rng(), 40),
        };
        validate_key_value(&value)?;
        let digest = digest(value.as_bytes());
        if control.by_digest.contains_key(&digest) {
            return Err(Error::conflict("API Key already exists"));
        }
        let now = self.now_secs();
        let id = match id {
            Some(id) if !control.keys.contains_key(id) => id.to_owned(),
            _ => unique_id(|id| control.keys.contains_key(id)),
        };
        let key = ApiKey {
            id: id.clone(),
            value: Some(value),
            name: input.name,
            customer_id: input.customer_id,
            description: input.description,
            enabled: input.enabled,
            created_date: now,
            last_updated_date: now,
            stage_keys: input
                .stage_keys
                .into_iter()
                .filter_map(|s| Some(format!("{}/{}", s.rest_api_id?, s.stage_name?)))
                .collect(),
            tags: input.tags,
        };
        key.validate()?;
        let mut stored = key.clone();
        if self.inner.hash_only {
            stored.value = None;
        }
        control.by_digest.insert(digest, id.clone());
        control.keys.insert(
            id.clone(),
            KeyEntry {
                key: stored,
                digest,
                plans: PlanIds::default(),
            },
        );
        self.refresh_route(&control, &id);
        Ok(key)
    }

    /// One key, with its value where it is kept.
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// assert_eq!(plans.api_key(&key.id).unwrap().name.as_deref(), Some("alice"));
    /// assert!(plans.api_key("nope").is_err());
    /// ```
    pub fn api_key(&self, key_id: &str) -> Result<ApiKey> {
        let control = self.inner.control.lock();
        control.key(key_id).map(|k| k.key.clone())
    }

    /// The key whose value is `value`, if any.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// let value = key.value.as_deref().unwrap();
    /// assert_eq!(plans.api_key_by_value(value).unwrap().id, key.id);
    /// assert!(plans.api_key_by_value("no-such-key-0123456789").is_none());
    /// ```
    pub fn api_key_by_value(&self, value: &str) -> Option<ApiKey> {
        let control = self.inner.control.lock();
        let id = control.by_digest.get(&digest(value.as_bytes()))?;
        Some(control.keys[id].key.clone())
    }

    /// Every key, ordered by id, with values where they are kept.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// plans.create_api_key(NewApiKey::new("bob")).unwrap();
    /// let keys = plans.api_keys();
    /// assert_eq!(keys.len(), 2);
    /// assert!(keys[0].id < keys[1].id);
    /// ```
    pub fn api_keys(&self) -> Vec<ApiKey> {
        let control = self.inner.control.lock();
        control.keys.values().map(|k| k.key.clone()).collect()
    }

    /// Changes a key with `edit` as one validated step. The id, value and
    /// creation date cannot change.
    ///
    /// ```
    /// use tower_usage_plans::{NewApiKey, UsagePlans};
    ///
    /// let plans = UsagePlans::new();
    /// let key = plans.create_api_key(NewApiKey::new("k").with_enabled(true)).unwrap();
    /// let key = plans.update_api_key(&key.id, |k| { k.enabled = false; Ok(()) }).unwrap();
    /// assert!(!key.enabled);
    /// ```
    ///
    /// # Errors
    /// `NotFound`, `BadRequest`, or whatever `edit` returns.
    pub fn update_api_key(
        &self,
        key_id: &str,
        edit: impl FnOnce(&mut ApiKey) -> Result<()>,
    ) -> Result<ApiKey> {
        let mut control = self.write();
        let entry = control.key(key_id)?;
        let mut key = entry.key.clone();
        edit(&mut key)?;
        if key.id != entry.key.id
            || key.value != entry.key.value
            || key.created_date != entry.key.created_date
        {
            return Err(Error::bad_request(
                "The id, value and createdDate of an API key cannot be changed",
            ));
        }
        key.validate()?;
        if key == entry.key {
            // Nothing changed (no operation, or each set what was there):
            // nor does its lastUpdatedDate.
            return Ok(key);
        }
        key.last_updated_date = self.now_secs();
        control.keys.get_mut(key_id).expect("checked above").key = key.clone();
        self.refresh_route(&control, key_id);
        Ok(key)
    }

    /// Deletes a key: it leaves its plans and stops working at once.
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    /// plans.delete_api_key(&key.id).unwrap();
    /// assert!(plans.api_key(&key.id).is_err());
    /// assert!(plans.usage_plan_keys(&plan.id).unwrap().is_empty());
    /// ```
    pub fn delete_api_key(&self, key_id: &str) -> Result<()> {
        let mut control = self.write();
        let entry = control
            .keys
            .remove(key_id)
            .ok_or_else(Error::key_not_found)?;
        control.by_digest.remove(&entry.digest);
        self.inner.routes.remove(&entry.route_id());
        for plan_id in &entry.plans {
            if let Some(plan) = control.plans.get_mut(plan_id) {
                plan.keys.remove(key_id);
            }
            self.forget_counter(plan_id, key_id);
        }
        Ok(())
    }

    // ---- plan keys ------------------------------------------------------

    /// Puts a key in a plan.
    ///
    /// # Errors
    /// `NotFound` for an unknown plan or key; `Conflict` when the key is
    /// already in this plan or in another plan covering a common stage.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans, ErrorKind};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// let member = plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    /// assert_eq!(member.id, key.id);
    /// assert_eq!(plans.add_key_to_plan(&plan.id, &key.id).unwrap_err().kind(), ErrorKind::Conflict);
    /// ```
    pub fn add_key_to_plan(&self, plan_id: &str, key_id: &str) -> Result<UsagePlanKey> {
        let mut control = self.write();
        // The key first, as AWS does: both unknown is "Invalid API Key".
        let key = control.key(key_id)?;
        let plan = control.plan(plan_id)?;
        if plan.keys.contains(key_id) {
            return Err(Error::conflict(format!(
                "API Key {key_id} is already in usage plan {plan_id}"
            )));
        }
        let plan = plan.plan.clone();
        control.check_no_overlap(key_id, &plan)?;
        let member = UsagePlanKey::from(&key.key);
        control
            .plans
            .get_mut(plan_id)
            .expect("checked")
            .keys
            .insert(key_id.to_owned());
        control
            .keys
            .get_mut(key_id)
            .expect("checked")
            .plans
            .insert(plan_id.to_owned());
        self.refresh_route(&control, key_id);
        Ok(member)
    }

    /// Takes a key out of a plan; its counter in that plan is dropped.
    ///
    /// # Errors
    /// `NotFound` for an unknown plan or key, or a key not in the plan.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans, ErrorKind};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    /// plans.remove_key_from_plan(&plan.id, &key.id).unwrap();
    /// assert_eq!(plans.remove_key_from_plan(&plan.id, &key.id).unwrap_err().kind(), ErrorKind::NotFound);
    /// ```
    pub fn remove_key_from_plan(&self, plan_id: &str, key_id: &str) -> Result<()> {
        let mut control = self.write();
        control.membership(plan_id, key_id)?;
        control
            .plans
            .get_mut(plan_id)
            .expect("checked")
            .keys
            .remove(key_id);
        control
            .keys
            .get_mut(key_id)
            .expect("checked")
            .plans
            .remove(plan_id);
        self.refresh_route(&control, key_id);
        self.forget_counter(plan_id, key_id);
        Ok(())
    }

    /// The keys of a plan, ordered by key id.
    ///
    /// # Errors
    /// `NotFound` for an unknown plan.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    /// let members = plans.usage_plan_keys(&plan.id).unwrap();
    /// assert_eq!(members.len(), 1);
    /// assert_eq!(members[0].name.as_deref(), Some("alice"));
    /// ```
    pub fn usage_plan_keys(&self, plan_id: &str) -> Result<Vec<UsagePlanKey>> {
        let control = self.inner.control.lock();
        let plan = control.plan(plan_id)?;
        Ok(plan
            .keys
            .iter()
            .map(|id| UsagePlanKey::from(&control.keys[id].key))
            .collect())
    }

    /// One key of a plan.
    ///
    /// # Errors
    /// `NotFound` for an unknown plan or key, or a key not in the plan.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// assert!(plans.usage_plan_key(&plan.id, &key.id).is_err()); // not in the plan yet
    /// plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    /// assert_eq!(plans.usage_plan_key(&plan.id, &key.id).unwrap().key_type, "API_KEY");
    /// ```
    pub fn usage_plan_key(&self, plan_id: &str, key_id: &str) -> Result<UsagePlanKey> {
        let control = self.inner.control.lock();
        control.membership(plan_id, key_id)?;
        Ok(UsagePlanKey::from(&control.keys[key_id].key))
    }

    // ---- usage ----------------------------------------------------------

    /// Sets a key's remaining quota for the current period only — up or
    /// down, even above the limit; the next period starts from the limit
    /// again (AWS UpdateUsage). Enforced on the very next request.
    ///
    /// # Errors
    /// `NotFound` for an unknown plan or key or a key not in the plan;
    /// `BadRequest` for a plan without a quota; `Store` if the store fails.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans, Quota, QuotaPeriod};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let gold = plans.create_usage_plan(NewUsagePlan::new("gold").with_quota(Quota::new(100, QuotaPeriod::Month))).unwrap();
    /// plans.add_key_to_plan(&gold.id, &key.id).unwrap();
    /// let usage = plans.set_remaining(&gold.id, &key.id, 7).await.unwrap();
    /// assert_eq!(usage.values[&key.id], vec![[0, 7]]);
    /// # });
    /// ```
    pub async fn set_remaining(
        &self,
        plan_id: &str,
        key_id: &str,
        remaining: u64,
    ) -> Result<Usage> {
        if remaining > crate::model::MAX_COUNT {
            return Err(Error::bad_request(format!(
                "Invalid remaining {remaining}: must be at most {}",
                crate::model::MAX_COUNT
            )));
        }
        self.change_remaining(plan_id, key_id, |store, counter, rule, now| {
            store.set_remaining(counter, rule, now, remaining)
        })
        .await
    }

    /// Adds `delta` to a key's remaining quota for the current period in
    /// one atomic step in the store — a negative `delta` subtracts, and the
    /// result is floored at 0 (and capped at
    /// [`MAX_COUNT`](crate::MAX_COUNT)). Unlike reading the usage
    /// and then [`set_remaining`](Self::set_remaining), nothing that traffic
    /// spends in between is lost: "500 more this month" is exactly 500
    /// more. The next period starts from the limit again. This is the
    /// UpdateUsage extension `{"op":"add","path":"/remaining","value":"500"}`.
    ///
    /// ```
    /// use tower_usage_plans::{NewApiKey, NewUsagePlan, Quota, QuotaPeriod, UsagePlans};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let plans = UsagePlans::new();
    /// let plan = plans
    ///     .create_usage_plan(NewUsagePlan::new("gold").with_quota(Quota::new(100, QuotaPeriod::Month)))
    ///     .unwrap();
    /// let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    /// let usage = plans.add_remaining(&plan.id, &key.id, 500).await.unwrap();
    /// assert_eq!(usage.values[&key.id], vec![[0, 600]]);
    /// let usage = plans.add_remaining(&plan.id, &key.id, -1_000).await.unwrap();
    /// assert_eq!(usage.values[&key.id], vec![[0, 0]]);
    /// # });
    /// ```
    ///
    /// # Errors
    /// `NotFound` for an unknown plan or key or a key not in the plan;
    /// `BadRequest` for a plan without a quota or a `delta` larger than
    /// `MAX_COUNT` either way; `Store` if the store fails.
    pub async fn add_remaining(&self, plan_id: &str, key_id: &str, delta: i64) -> Result<Usage> {
        if delta.unsigned_abs() > crate::model::MAX_COUNT {
            return Err(Error::bad_request(format!(
                "Invalid remaining change {delta}: must be between -{max} and {max}",
                max = crate::model::MAX_COUNT
            )));
        }
        self.change_remaining(plan_id, key_id, |store, counter, rule, now| {
            store.add_remaining(counter, rule, now, delta)
        })
        .await
    }

    /// UpdateUsage's shared part: checks the membership and the quota, runs
    /// `change` on the store, and answers today's `[used, remaining]`.
    async fn change_remaining(
        &self,
        plan_id: &str,
        key_id: &str,
        change: impl FnOnce(
            &dyn CounterStore,
            &CounterKey,
            &crate::store::QuotaRule,
            jiff::Timestamp,
        ) -> crate::store::StoreFuture<crate::store::DayUsage>,
    ) -> Result<Usage> {
        let (counter, rule) = {
            let control = self.inner.control.lock();
            let plan = control.membership(plan_id, key_id)?;
            let rule = plan.runtime.quota().ok_or_else(|| {
                Error::bad_request(format!("Usage plan {plan_id} has no quota to update"))
            })?;
            (CounterKey::new(plan_id, key_id), rule)
        };
        let now = self.inner.clock.now();
        let today = change(&*self.inner.store, &counter, &rule, now).await?;
        // The key may have left the plan while the store answered: then
        // its counter must not outlive the membership.
        let still_member = self
            .inner
            .control
            .lock()
            .membership(plan_id, key_id)
            .is_ok();
        if !still_member {
            self.forget_counter(plan_id, key_id);
            // With replicas, the counter is queued: the removal was shared
            // by its own call, so this one drops it now (before: at the
            // next admin change, the key's counter back meanwhile).
            if let Err(e) = self.replicated().await {
                tracing::warn!(plan_id, key_id, error = %e, "could not drop counter");
            }
            return Err(Error::key_not_found());
        }
        let date = period::date_of_day(now.as_second().div_euclid(period::DAY_SECS)).to_string();
        Ok(Usage {
            usage_plan_id: plan_id.to_owned(),
            start_date: date.clone(),
            end_date: date,
            position: None,
            values: BTreeMap::from([(key_id.to_owned(), vec![today])]),
        })
    }

    /// `[used, remaining]` per UTC day from `start` to `end` inclusive, for
    /// one key of the plan or all of them (AWS GetUsage, unpaged).
    ///
    /// # Errors
    /// `NotFound` for an unknown plan or key or a key not in the plan;
    /// `BadRequest` when `end` is before `start` or the range is longer
    /// than [`MAX_USAGE_DAYS`]; `Store` if the store fails.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans, Quota, QuotaPeriod};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let gold = plans.create_usage_plan(NewUsagePlan::new("gold").with_quota(Quota::new(100, QuotaPeriod::Day))).unwrap();
    /// plans.add_key_to_plan(&gold.id, &key.id).unwrap();
    /// let today = plans.clock().now().to_zoned(jiff::tz::TimeZone::UTC).date();
    /// let usage = plans.usage(&gold.id, None, today, today).await.unwrap();
    /// assert_eq!(usage.values[&key.id], vec![[0, 100]]);
    /// # });
    /// ```
    pub async fn usage(
        &self,
        plan_id: &str,
        key_id: Option<&str>,
        start: Date,
        end: Date,
    ) -> Result<Usage> {
        self.usage_of(plan_id, key_id, start, end, |keys| keys)
            .await
    }

    /// [`usage`](Self::usage) for the keys `select` picks from the plan's
    /// key ids (sorted): the admin API pages before asking the store.
    pub(crate) async fn usage_of(
        &self,
        plan_id: &str,
        key_id: Option<&str>,
        start: Date,
        end: Date,
        select: impl FnOnce(Vec<String>) -> Vec<String>,
    ) -> Result<Usage> {
        let days = period::day_of_date(end) - period::day_of_date(start) + 1;
        if days < 1 {
            return Err(Error::bad_request(
                "The end date must not be before the start date",
            ));
        }
        if days > MAX_USAGE_DAYS {
            return Err(Error::bad_request(format!(
                "The date range must not exceed {MAX_USAGE_DAYS} days"
            )));
        }
        let (keys, rule) = {
            let control = self.inner.control.lock();
            let plan = match key_id {
                Some(key_id) => control.membership(plan_id, key_id)?,
                None => control.plan(plan_id)?,
            };
            let keys: Vec<String> = match key_id {
                Some(key_id) => vec![key_id.to_owned()],
                None => plan.keys.iter().cloned().collect(),
            };
            (select(keys), plan.runtime.quota())
        };
        let now = self.inner.clock.now();
        let mut values = BTreeMap::new();
        for key_id in keys {
            let counter = CounterKey::new(plan_id, &key_id);
            let days = self
                .inner
                .store
                .usage(&counter, rule.as_ref(), now, start, end)
                .await?;
            values.insert(key_id, days);
        }
        Ok(Usage {
            usage_plan_id: plan_id.to_owned(),
            start_date: start.to_string(),
            end_date: end.to_string(),
            position: None,
            values,
        })
    }

    // ---- internals ------------------------------------------------------

    /// Rebuilds the data plane's view of one key from the control state.
    fn refresh_route(&self, control: &Control, key_id: &str) {
        let Some(entry) = control.keys.get(key_id) else {
            return;
        };
        let bindings = entry
            .plans
            .iter()
            .map(|plan_id| {
                Arc::new(Binding {
                    plan: control.plans[plan_id].runtime.clone(),
                    counter: CounterKey::new(plan_id, key_id),
                    store: self.inner.store.clone(),
                })
            })
            .collect();
        self.inner.routes.insert(
            entry.route_id(),
            KeyRoute {
                enabled: entry.key.enabled,
                bindings,
            },
        );
    }

    fn forget_counter(&self, plan_id: &str, key_id: &str) {
        let counter = CounterKey::new(plan_id, key_id);
        if self.inner.replication.read().is_some() {
            // Once every replica has the change (see `to_forget`).
            self.inner.to_forget.lock().push(counter);
            return;
        }
        let store = self.inner.store.clone();
        let mut forget = store.forget(&counter);
        match forget.take_ready() {
            Some(Err(e)) => tracing::warn!(plan_id, key_id, error = %e, "could not drop counter"),
            Some(Ok(())) => {}
            // A networked store: finish in the background if a runtime runs.
            None => match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    let task = handle.spawn(async move {
                        if let Err(e) = forget.await {
                            tracing::warn!(error = %e, "could not drop counter");
                        }
                    });
                    let mut forgetting = self.inner.forgetting.lock();
                    forgetting.retain(|task| !task.is_finished());
                    forgetting.push(task);
                }
                Err(_) => tracing::warn!(plan_id, key_id, "no runtime to drop counter"),
            },
        }
    }
}

struct Writer<'a> {
    guard: MutexGuard<'a, Control>,
    generation: &'a AtomicU64,
    /// Set by the first mutable access: a refused operation (which only
    /// reads before failing) does not move the generation.
    changed: bool,
}

impl Deref for Writer<'_> {
    type Target = Control;

    fn deref(&self) -> &Control {
        &self.guard
    }
}

impl DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Control {
        self.changed = true;
        &mut self.guard
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if self.changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Control {
    fn plan(&self, plan_id: &str) -> Result<&PlanEntry> {
        self.plans.get(plan_id).ok_or_else(Error::plan_not_found)
    }

    fn key(&self, key_id: &str) -> Result<&KeyEntry> {
        self.keys.get(key_id).ok_or_else(Error::key_not_found)
    }

    /// The plan, if the key exists and is in it.
    fn membership(&self, plan_id: &str, key_id: &str) -> Result<&PlanEntry> {
        let plan = self.plan(plan_id)?;
        self.key(key_id)?;
        if !plan.keys.contains(key_id) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "Invalid API Key identifier specified: {key_id} is not in usage plan {plan_id}"
                ),
            ));
        }
        Ok(plan)
    }

    /// A key may be in at most one plan per stage.
    fn check_no_overlap(&self, key_id: &str, plan: &UsagePlan) -> Result<()> {
        let Some(key) = self.keys.get(key_id) else {
            return Ok(());
        };
        for other_id in key.plans.iter().filter(|id| **id != plan.id) {
            if self.plans[other_id].plan.overlaps(plan) {
                return Err(Error::conflict(format!(
                    "API Key {key_id} is already in usage plan {other_id}, which covers a stage of usage plan {}",
                    plan.id
                )));
            }
        }
        Ok(())
    }
}

/// A fresh 10-character lower-case alphanumeric id, like AWS's.
/// The characters of an id, as AWS's.
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// An id derived from `name` (its SHA-256, 10 characters of
/// [`ID_ALPHABET`]): the same in every process and version.
#[cfg(feature = "gateway")]
pub(crate) fn derived_id(name: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(name.as_bytes())
        .iter()
        .take(10)
        .map(|byte| ID_ALPHABET[usize::from(*byte) % ID_ALPHABET.len()] as char)
        .collect()
}

fn unique_id(taken: impl Fn(&str) -> bool) -> String {
    const ALPHABET: &[u8] = ID_ALPHABET;
    loop {
        let id: String = (0..10)
            .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
            .collect();
        if !taken(&id) {
            return id;
        }
    }
}
