//! [`RedisStore`]: counters shared by every replica through Redis (or a
//! Redis Cluster), each decision one atomic server-side script.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::civil::Date;
use jiff::Timestamp;

use crate::UnixNanos;
use futures_util::{StreamExt, TryStreamExt};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, Script, ScriptInvocation};

use super::control::{self, Control, Handler};
use super::learn;
use super::lease::{
    self, CallKind, Lease, LeaseConfig, Leases, PendingCall, Renewal, Unspent, Unsure,
};
use super::recovery::{Marker, Period, Recovery, RestoredByThis, Seen, Watch};
use super::retry::{self, retried};
use super::spent::Spent;
use super::{
    CounterKey, CounterStore, DayUsage, Decision, DecisionRequest, QuotaRule, StoreFuture,
    ThrottleRule, Verdict,
};
use crate::clock::{to_nanos, Clock, SystemClock};
use crate::error::{Error, ErrorKind, Result};
use crate::limit::period::{self, DAY_SECS};
use crate::limit::{quota_state, Bucket, Counter};
use crate::model::{QuotaPeriod, Throttle};

#[path = "redis_decides.rs"]
mod decides;
#[path = "redis_reports.rs"]
mod reports;

const SCRIPT: &str = include_str!("redis.lua");
/// The script's answer to a decision: verdict (3: the counter vanished),
/// tokens, remaining, leased units and tokens, epoch, used, allowance, the
/// lease's generation, the most of its units spent unacknowledged, the
/// units out on every replica's leases, and of those the ones kept from
/// reclaimed leases (their holders may have admitted them) with, for a
/// lease, the units out on the other holders' leases (-1: not said), and
/// the admitted requests today's record holds (-1: not said).
type Answer = (
    u8,
    String,
    u64,
    u64,
    u64,
    u64,
    u64,
    i64,
    u64,
    u64,
    u64,
    (u64, i64, i64),
);
/// History GetUsage may read, plus a margin: a counter untouched this long expires.
const TTL_SECS: i64 = 101 * DAY_SECS;

/// A connection to one server (reconnecting) or to a cluster.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Counters in Redis: a whole decision — throttle and quota, refused
/// requests free — is made by one server-side script, atomic on the
/// server, so any number of replicas stay exact. On one server, decisions
/// made at the same moment go to Redis together, in one script call.
/// Keys are hash-tagged per (plan, key) (`tup:{plan:key}`), so they work on
/// Redis Cluster, and expire 100 to 101 days after their last use (the
/// usage history GetUsage reads: the lifetime is set by the first call of
/// each day).
///
/// Replicas pass their own clock to the script: keep them in sync (NTP).
///
/// ```no_run
/// use std::sync::Arc;
/// use tower_usage_plans::store::RedisStore;
/// use tower_usage_plans::UsagePlans;
///
/// # async fn run() -> tower_usage_plans::Result<()> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let plans = UsagePlans::builder().with_store(Arc::new(store)).build();
/// # drop(plans); Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    script: Arc<Script>,
    prefix: String,
    timeout: Duration,
    leases: Option<Arc<Leases>>,
    control: Arc<Control>,
    recovery: Arc<Recovery>,
    url: String,
    /// Decisions waiting to go together (see [`decides`]).
    decides: Arc<decides::Decides>,
}

/// A [`RedisStore`] that does not keep its control listener alive (see
/// [`RedisStore::downgrade`]), with the timeout the store had when its
/// listener started (what the listener's own calls wait for).
struct WeakStore {
    connection: Connection,
    script: Arc<Script>,
    prefix: String,
    timeout: Duration,
    leases: Option<Arc<Leases>>,
    control: std::sync::Weak<Control>,
    recovery: std::sync::Weak<Recovery>,
    url: String,
    decides: Arc<decides::Decides>,
}

impl WeakStore {
    /// The store, while it is in use.
    fn upgrade(&self) -> Option<RedisStore> {
        Some(RedisStore {
            connection: self.connection.clone(),
            script: self.script.clone(),
            prefix: self.prefix.clone(),
            timeout: self.timeout,
            leases: self.leases.clone(),
            control: self.control.upgrade()?,
            recovery: self.recovery.upgrade()?,
            url: self.url.clone(),
            decides: self.decides.clone(),
        })
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The longest any one command waits for its answer on one server.
const RESPONSE_CEILING: Duration = Duration::from_secs(3);

/// A store error saying what failed, with `e` as its source.
fn store_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Store, format!("Redis {what}: {e}")).with_source(e)
}

/// The nodes of a `redis+cluster://host:port,host:port,…` URL, each as
/// `redis://host:port`; `None` for a URL of one server.
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let nodes = url.strip_prefix("redis+cluster://")?;
    Some(
        nodes
            .split(',')
            .map(|n| format!("redis://{}", n.trim()))
            .collect(),
    )
}

impl RedisStore {
    /// Whether [`connect`](Self::connect) can take `url`, checked without
    /// connecting: a start can refuse a mistyped URL at once, rather than
    /// try it forever. The reason never repeats the URL (it may hold a
    /// password).
    ///
    /// ```
    /// use tower_usage_plans::store::RedisStore;
    ///
    /// assert!(RedisStore::check_url("redis://:secret@127.0.0.1:6379/0").is_ok());
    /// assert!(RedisStore::check_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7000").is_ok());
    /// assert!(RedisStore::check_url("redis//127.0.0.1:6379").is_err());
    /// assert!(RedisStore::check_url("redis+cluster://10.0.0.1:7000,").is_err());
    /// ```
    ///
    /// # Errors
    /// Why the URL is not one (Redis's words).
    pub fn check_url(url: &str) -> std::result::Result<(), String> {
        let urls = cluster_nodes(url).unwrap_or_else(|| vec![url.to_owned()]);
        for url in &urls {
            redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Connects to `redis://host:port[/db]`, or to a cluster with
    /// `redis+cluster://host1:port1,host2:port2,...`. Reconnects on its own
    /// after a connection is lost.
    ///
    /// # Errors
    /// `Store` if the URL is invalid or the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let mut connection = Connection::open(url).await?;
        warn_if_evicting(&mut connection).await;
        let mut store = Self {
            connection,
            script: Arc::new(Script::new(SCRIPT)),
            prefix: String::new(),
            timeout: Duration::from_millis(250),
            leases: None,
            control: Arc::new(Control::new("")),
            recovery: Arc::new(Recovery::new("")),
            url: url.to_owned(),
            decides: Arc::default(),
        };
        store = store.with_prefix("tup:");
        Ok(store)
    }

    /// A new control-channel listener for the current prefix (and leases).
    fn listen(&mut self) {
        self.recovery = Arc::new(Recovery::new(&self.prefix).holding(self.leases.clone()));
        self.control = Arc::new(Control::new(&self.prefix));
        // Another replica found Redis emptied: put back what this one saw.
        let (recovery, connection, script) = (
            Arc::downgrade(&self.recovery),
            self.connection.clone(),
            self.script.clone(),
        );
        self.control.on_lost(Some(Arc::new(move |marker| {
            let (recovery, connection, script) =
                (recovery.clone(), connection.clone(), script.clone());
            StoreFuture::boxed(async move {
                if let Some(recovery) = recovery.upgrade() {
                    let restored = retried("putting counters back", retry::RESTORE, || {
                        let (recovery, mut connection, script) =
                            (recovery.clone(), connection.clone(), script.clone());
                        async move {
                            if recovery.holds_known_marker(&mut connection).await? {
                                return Ok(false);
                            }
                            restore_seen(&recovery, &mut connection, &script).await?;
                            redis::RedisResult::Ok(true)
                        }
                    })
                    .await
                    .map_err(|e| store_error("restore", e))?;
                    // The sender's next marker: not news when it is set.
                    // (A late sender's is never set: Redis holds one.)
                    if let Some(marker) = marker.filter(|_| restored) {
                        recovery.put_back_under(&marker);
                        recovery.adopt(marker);
                    }
                }
                Ok(())
            })
        })));
        // Another replica changed a counter by UpdateUsage: this replica's
        // copy follows (so that a loss puts back the new allowance even
        // if that replica is gone by then).
        // Its revoked leases go back first, with what they admitted, and
        // the counter's live ones report: the UpdateUsage that announced it
        // answers today's used count with all of it.
        let store = self.downgrade();
        self.control.on_revoked(Some(Arc::new(move |counter| {
            let store = store.upgrade();
            StoreFuture::boxed(async move {
                if let Some(store) = store {
                    store.report_for_update(counter.clone()).await;
                    let mut connection = store.connection.clone();
                    learn::refresh(&store.recovery, &mut connection, counter)
                        .await
                        .map_err(|e| store_error("copy", e))?;
                }
                Ok(())
            })
        })));
        // Another replica found that Redis lost one counter alone: put
        // back what this one saw of it.
        let (recovery, connection, script) = (
            Arc::downgrade(&self.recovery),
            self.connection.clone(),
            self.script.clone(),
        );
        self.control.on_counter_lost(Some(Arc::new(move |counter| {
            let (recovery, connection, script) =
                (recovery.clone(), connection.clone(), script.clone());
            StoreFuture::boxed(async move {
                if let Some(recovery) = recovery.upgrade() {
                    retried("putting counters back", retry::RESTORE, || {
                        let (recovery, mut connection, script) =
                            (recovery.clone(), connection.clone(), script.clone());
                        let counter = counter.clone();
                        async move {
                            restore_counter(&recovery, &mut connection, &script, &counter).await
                        }
                    })
                    .await
                    .map_err(|e| store_error("restore", e))?;
                }
                Ok(())
            })
        })));
        if let Some(leases) = &self.leases {
            self.control.hold(leases.clone());
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(control::listen(
                    control::subscribe_url(&self.url),
                    self.connection.clone(),
                    Arc::downgrade(&self.control),
                ));
            }
            Err(_) => tracing::warn!(
                "RedisStore configured outside a Tokio runtime: no control channel \
                 (no leases, no revocations heard)"
            ),
        }
    }

    /// Runs `handler` whenever another replica announces (with
    /// [`registry_changed`](Self::registry_changed)) that the registry it
    /// shares through Redis changed, and acknowledges once it resolved.
    /// `None` removes it.
    pub fn on_registry_change(
        &self,
        handler: Option<Arc<dyn Fn() -> StoreFuture<()> + Send + Sync>>,
    ) {
        let handler: Option<Handler> = handler;
        self.control.on_registry(handler);
    }

    /// Tells every other replica on this Redis (and prefix) that the shared
    /// registry changed; returns once each live replica's
    /// [`on_registry_change`](Self::on_registry_change) handler resolved,
    /// or after 1 s for one that does not answer (its registration lapsed).
    ///
    /// # Errors
    /// `Store` if Redis cannot be reached.
    pub async fn registry_changed(&self) -> Result<()> {
        let mut connection = self.connection.clone();
        self.control
            .registry_changed(&mut connection)
            .await
            .map_err(|e| store_error("registry change", e))
    }

    /// Spends leased slices of quota and tokens locally: a round trip only
    /// when a lease runs out or expires. Still exact: leased units count as
    /// used in Redis until given back, slices shrink to nothing near the
    /// limit, and UpdateUsage revokes every replica's leases of the counter
    /// before it returns (each replica listens for revocations on Redis
    /// pub/sub and spends leases only while it does). GetUsage counts
    /// requests admitted, not units leased: call
    /// [`give_back_expired_leases`](Self::give_back_leases) every 200 ms or
    /// so (the gateway does), which also reports what leases spent.
    ///
    /// Call it inside a Tokio runtime: it starts the revocation listener.
    pub fn with_leases(mut self, config: LeaseConfig) -> Self {
        self.leases = Some(Arc::new(Leases::new(config)));
        self.listen();
        self
    }

    /// Whether this replica has taken in every registry change announced
    /// to it (see `Control::is_current`): the gateway holds requests while
    /// it has not, e.g. after a pause.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn registry_current(&self) -> bool {
        self.control.is_current()
    }

    /// Returns once [`registry_current`](Self::registry_current), or after
    /// `limit`.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) async fn until_registry_current(&self, limit: Duration) {
        self.control.until_current(limit).await;
    }

    /// Whether a wait [`until_registry_current`](Self::until_registry_current)
    /// ran out less than a second ago, with the replica running since: the
    /// next request need not wait again.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn waited_out_lately(&self) -> bool {
        self.control.waited_out_lately()
    }

    /// Gives every lease's unspent units and tokens back (call it on
    /// shutdown).
    ///
    /// # Errors
    /// `Store` if Redis cannot be reached; what was not given back is kept,
    /// to go back with the next call or the key's next decision.
    pub async fn give_back_leases(&self) -> Result<()> {
        match &self.leases {
            Some(leases) => {
                // Leases taken ahead, on their way, go back too.
                let _ = tokio::time::timeout(self.timeout, leases.renewals_over()).await;
                self.send_unsure_again(leases).await?;
                let calls = self
                    .calls_to_send(|| {
                        let mut taken = leases.take_dropped();
                        taken.extend(leases.drain());
                        give_backs(leases, taken)
                    })
                    .await;
                self.take_back(leases, calls).await
            }
            None => Ok(()),
        }
    }

    /// Gives back what expired leases still hold. Call it about as often
    /// as leases expire (the gateway does, every 200 ms): a lease is
    /// otherwise given back only by the next decision of its key on this
    /// replica, and until then its units count as used for every replica.
    ///
    /// # Errors
    /// `Store` if Redis cannot be reached; what was not given back is kept,
    /// to go back with the next call or the key's next decision.
    pub async fn give_back_expired_leases(&self) -> Result<()> {
        match &self.leases {
            Some(leases) => {
                self.send_unsure_again(leases).await?;
                let calls = self
                    .calls_to_send(|| {
                        let now_us = jiff::Timestamp::now().as_microsecond();
                        let mut taken = leases.take_dropped();
                        taken.extend(leases.drain_expired(now_us));
                        give_backs(leases, taken)
                    })
                    .await;
                self.take_back(leases, calls).await?;
                self.report_spent(leases).await
            }
            None => Ok(()),
        }
    }

    /// Detects a Redis that came back empty (a restart without
    /// persistence, a failover to an empty node) and puts back the
    /// counters this replica saw in their current period, so quotas do
    /// not reset; `true` when it did. The gateway calls it every 200 ms; a
    /// decision on a counter this replica saw detects it by itself.
    ///
    /// A replica sees every counter it decides and, over its first calls
    /// (5,000 counters a call), every counter Redis held when it started:
    /// so a loss after every replica restarted resets nothing either. Until
    /// then, only what it decided is put back.
    ///
    /// # Errors
    /// `Store` if Redis cannot be reached.
    pub async fn recover_if_emptied(&self) -> Result<bool> {
        let (recovery, control, script) = (
            self.recovery.clone(),
            self.control.clone(),
            self.script.clone(),
        );
        self.run_unbounded(move |mut connection| async move {
            let lost = recover(&recovery, &control, &mut connection, &script, None).await?;
            // With the marker known: what this replica reads of the
            // counters from now on is put back should Redis lose it.
            let _one = recovery.one_at_a_time().await;
            learn::some(&recovery, &mut connection).await?;
            Ok(lost)
        })
        .await
    }

    /// How many times this replica put counters back after Redis lost its
    /// data.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn losses(&self) -> u64 {
        self.recovery
            .losses
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The marker Redis holds now, when it is not the one this replica
    /// knows: Redis lost its data (or another replica put it back) and
    /// this replica may not have found it yet. `None` while they agree, or
    /// before this replica knows one.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) async fn marker_moved(&self) -> redis::RedisResult<Option<Option<String>>> {
        let Some(known) = self.recovery.known_marker() else {
            return Ok(None);
        };
        let mut connection = self.connection.clone();
        let current: Option<String> = connection
            .query(redis::cmd("GET").arg(&self.recovery.marker_key))
            .await?;
        Ok((current.as_deref() != Some(&*known)).then_some(current))
    }

    /// Whether a replica on this Redis that started before this one is
    /// alive (registered, or heard on the channel lately).
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) async fn older_alive(&self) -> bool {
        let mut connection = self.connection.clone();
        self.control
            .older_alive(&mut connection)
            .await
            .unwrap_or(false)
    }

    /// Returns once this replica may take leases: it is registered as a
    /// lease holder and listens for revocations, normally within
    /// milliseconds of [`with_leases`](Self::with_leases). Until then (and
    /// whenever Redis pub/sub is lost) each decision takes one round trip.
    /// Returns at once without leases.
    ///
    /// ```no_run
    /// # async fn run() -> tower_usage_plans::Result<()> {
    /// use tower_usage_plans::store::{LeaseConfig, RedisStore};
    ///
    /// let store = RedisStore::connect("redis://127.0.0.1:6379")
    ///     .await?
    ///     .with_leases(LeaseConfig::default());
    /// store.until_leasing().await;
    /// # Ok(()) }
    /// ```
    pub async fn until_leasing(&self) {
        if let Some(leases) = &self.leases {
            leases.until_active().await;
        }
    }

    /// Tells Redis what live leases spent since the last report, so that
    /// GetUsage counts it as admitted.
    async fn report_spent(&self, leases: &Arc<Leases>) -> Result<()> {
        let calls = self.calls_to_send(|| leases.take_unreported()).await;
        self.take_back(leases, calls).await
    }

    /// The calls `take` takes out of `leases`, each on its way from then
    /// on: no restore runs in between (it would count neither what was
    /// taken out nor, once it is sent, what Redis then takes as counted).
    async fn calls_to_send(&self, take: impl FnOnce() -> Vec<Unsure>) -> Vec<PendingCall> {
        let Some(leases) = &self.leases else {
            return Vec::new();
        };
        let _no_restore = self.recovery.in_flight.read().await;
        take()
            .into_iter()
            .map(|call| PendingCall::new(leases, call))
            .collect()
    }

    /// Makes `calls` (give-backs and reports), `REPORTS_IN_FLIGHT` at a
    /// time: a lease whose report is on its way cannot be renewed inline
    /// (its requests go to Redis meanwhile), so the reports of every key
    /// must land within a round trip or so, not one round trip after
    /// another. Every call is a [`PendingCall`] from the start: one that
    /// fails, is not tried (once one failed, the rest wait for the next
    /// round) or is dropped unanswered (the gateway gives a round 3 s) is
    /// sent again later, with its id. (Dropped, a round's leases were lost:
    /// their units stayed counted, or uncounted after Redis lost its data.)
    async fn take_back(&self, leases: &Arc<Leases>, calls: Vec<PendingCall>) -> Result<()> {
        let failed = std::sync::atomic::AtomicBool::new(false);
        let sent = futures_util::stream::iter(self.batched(calls)).map(|calls| {
            let failed = &failed;
            async move {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    // Dropped: sent again with the next round.
                    return Ok(());
                }
                let result = match calls {
                    reports::Batched::Alone(call) => self.send(leases, *call).await,
                    reports::Batched::Reports(batch) => self.send_reports(leases, batch).await,
                };
                if result.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                result
            }
        });
        let results: Vec<Result<()>> = sent.buffer_unordered(REPORTS_IN_FLIGHT).collect().await;
        results.into_iter().collect()
    }

    /// Sends `pending` (its script call) and follows the answer.
    async fn send(&self, leases: &Arc<Leases>, pending: PendingCall) -> Result<()> {
        let Some((op, mut args, counter)) = pending.call().map(|call| {
            let (op, args) = call_args(leases, call);
            (op, args, call.slot.0.clone())
        }) else {
            return Ok(());
        };
        args.seen = self.recovery.copy_in(&counter, args.stored_period());
        let (key, mut connection) = (self.key(&counter), self.connection.clone());
        let watch = self.recovery.watch_on(&connection);
        let rolled_back = {
            // Until the answer is in the copy: a restore waits for it.
            let _in_flight = self.recovery.in_flight.read().await;
            let call = connection.run_watched(
                &self.recovery,
                &self.script,
                &key,
                &args,
                op,
                watch.as_ref(),
            );
            let call = self.recovery.in_flight.unless_restoring(call);
            let answer: Vec<i64> = within(self.timeout, call)
                .await
                .map_err(|e| store_error("error", e))?;
            match (&watch, &answer[..]) {
                (Some(watch), [ROLLED_BACK]) => Some((watch, pending)),
                _ => {
                    if let Some(call) = pending.into_call() {
                        self.answered(leases, call, &answer);
                    }
                    None
                }
            }
        };
        if let Some((watch, pending)) = rolled_back {
            // Redis went back to older data (or lost it): the call was
            // not applied (kept, as for a counter gone).
            self.rolled_back(&mut connection, watch, leases, [pending])
                .await?;
        }
        Ok(())
    }

    /// Give-backs or reports (`calls`) found Redis gone back to older
    /// data under `watch`'s marker, which refused them (`ROLLED_BACK`):
    /// what every replica saw goes back first, then the calls are
    /// followed. A report among them whose lease went back in the restore
    /// is then sent again (see [`answered`](Self::answered)). Followed
    /// before the restore, such a report was of a counter this replica had
    /// not put back yet, and was dropped: the restore counted its requests
    /// as used, and none reached today's record (GetUsage's used 103-600
    /// low in 5 of 38 runs of a black-box test restarting Redis under three
    /// leasing replicas). A restore that fails leaves them unanswered, to
    /// be sent again.
    async fn rolled_back(
        &self,
        connection: &mut Connection,
        watch: &Watch,
        leases: &Leases,
        calls: impl IntoIterator<Item = PendingCall>,
    ) -> Result<()> {
        recover(
            &self.recovery,
            &self.control,
            connection,
            &self.script,
            Some(&watch.marker),
        )
        .await
        .map_err(|e| store_error("restore", e))?;
        for call in calls.into_iter().filter_map(PendingCall::into_call) {
            self.answered(leases, call, &[ROLLED_BACK]);
        }
        Ok(())
    }

    /// Revokes `counter`'s leases older than `epoch` on every replica (and
    /// has each forget what it knew of the counter); returns once every
    /// live replica acknowledged.
    async fn revoke_everywhere(&self, counter: &CounterKey, epoch: u64) -> Result<()> {
        let mut connection = self.connection.clone();
        self.control
            .revoke(&mut connection, counter, epoch)
            .await
            .map_err(|e| store_error("revoke", e))
    }

    /// Prefixes every key (default `tup:`), e.g. to share one Redis
    /// between deployments or tests.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self.listen();
        self
    }

    /// How long a call may take before it counts as a store failure
    /// (default 250 ms, at most 3 s on one server); the layer's
    /// `StoreFailure` policy then decides.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// This store, held by its control listener's handlers: they must not
    /// keep it (and so the listener) alive.
    fn downgrade(&self) -> WeakStore {
        WeakStore {
            connection: self.connection.clone(),
            script: self.script.clone(),
            prefix: self.prefix.clone(),
            timeout: self.timeout,
            leases: self.leases.clone(),
            control: Arc::downgrade(&self.control),
            recovery: Arc::downgrade(&self.recovery),
            url: self.url.clone(),
            decides: self.decides.clone(),
        }
    }

    /// Gives back the leases taken out of use (revoked), with what they
    /// admitted, and reports what `counter`'s live ones spent (for
    /// UpdateUsage's answer; other counters' report with the next round);
    /// waits for it at most the store's timeout. The work runs in a task
    /// of its own, never cancelled midway (a restore a call of it finds
    /// needed finishes), and what does not go now goes with the next round.
    async fn report_for_update(&self, counter: CounterKey) {
        let Some(leases) = self.leases.clone() else {
            return;
        };
        let store = self.clone();
        let reporting = tokio::spawn(async move {
            let calls = store
                .calls_to_send(|| {
                    let mut calls = give_backs(&leases, leases.take_dropped());
                    calls.extend(leases.take_unreported_of(&counter));
                    calls
                })
                .await;
            store.take_back(&leases, calls).await
        });
        match tokio::time::timeout(self.timeout, reporting).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::debug!(error = %e, "leases report with the next round"),
            Ok(Err(e)) => tracing::warn!(error = %e, "a lease report task failed"),
            Err(_) => tracing::debug!("leases report with the next round (waited out)"),
        }
    }

    fn key(&self, counter: &CounterKey) -> String {
        counter_key(&self.prefix, counter)
    }

    /// Sends again (or settles) the calls on this replica's records that
    /// it stopped waiting for, `REPORTS_IN_FLIGHT` at a time; one that
    /// fails again is kept, for [`UNSURE_FOR`](lease::UNSURE_FOR).
    async fn send_unsure_again(&self, leases: &Arc<Leases>) -> Result<()> {
        let now_us = Timestamp::now().as_microsecond();
        let calls = self
            .calls_to_send(|| {
                let (again, given_up): (Vec<_>, Vec<_>) =
                    leases.take_unsure().into_iter().partition(|call| {
                        now_us.saturating_sub(call.since_us) < micros(lease::UNSURE_FOR)
                    });
                for call in given_up {
                    leases.closed(call.call);
                    tracing::warn!(
                        call = call.call,
                        "a lease call Redis did not answer for {:?} is given up on",
                        lease::UNSURE_FOR
                    );
                }
                again
            })
            .await;
        self.send_each(leases, calls).await
    }

    /// Follows Redis's `answer` to `call`: the copy, and the lease's
    /// state. A give-back (or a settled lease call) that found its counter
    /// gone is kept: Redis lost its data (a restore counts the lease's
    /// units), or the counter expired.
    fn answered(&self, leases: &Leases, call: Unsure, answer: &[i64]) {
        // A report that found its counter gone (Redis lost its data, and no
        // replica put it back yet) counted nothing: its requests are
        // reported again by its lease, or, the lease gone (given back when
        // this replica put the counter back, its give-back not carrying
        // them), by the report sent again. (Dropped, they were counted as
        // used by the restore but never on today's record: GetUsage's used
        // 21-60 low after Redis restarted three times under leases.) A
        // counter forgotten (its key left the plan) is not reported again.
        if let CallKind::Report(n) = call.kind {
            if answer.len() <= 1
                && !leases.unreport(&call.slot, &call.lease, n)
                && self.recovery.restored.contains_key(&call.slot.0)
            {
                leases.send_again(call);
                return;
            }
        }
        leases.closed(call.call);
        let Unsure {
            slot, lease, kind, ..
        } = call;
        // A settle's answer too: what the lease it gave back admitted is
        // counted in Redis from then on, and no longer this replica's to
        // put back (followed only at the next decision, a loss in between
        // lost it).
        self.saw_spent(&slot.0, &lease, answer);
        match kind {
            // Unreported above (a restore before it is reported again
            // counts its requests).
            CallKind::Report(_) if answer.len() <= 1 => {}
            CallKind::Report(n) => match answer.first() {
                Some(1) => leases.reclaimed(&slot, &lease),
                _ => leases.landed(&slot, &lease, n),
            },
            CallKind::Lease { .. } | CallKind::Return => {
                if answer.len() <= 1 && lease.unspent.holds() {
                    leases.lost_with_counter(slot, lease);
                } else if kind == (CallKind::Lease { decides: true }) && answer.get(8) == Some(&0) {
                    // A settle that found its call applied, and the
                    // request that call decided admitted.
                    self.refund_late(&slot, &lease);
                }
            }
        }
    }

    /// What a call that runs in a task of its own needs of the store.
    fn parts(&self) -> StoreParts {
        StoreParts {
            script: self.script.clone(),
            recovery: self.recovery.clone(),
            control: self.control.clone(),
        }
    }

    /// The request a lease call decided, admitted by Redis after the
    /// request stopped waiting (the call went unanswered and its settle
    /// found it applied): its token and unit of quota given back, as for a
    /// decision alone (see `redis_decides.rs`). `lease` is what the call
    /// gave back, as of the request.
    fn refund_late(&self, slot: &lease::Slot, lease: &Lease) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let late = vec![(
            self.key(&slot.0),
            slot.0.clone(),
            Args::as_granted(slot, lease),
        )];
        runtime.spawn(decides::give_back(
            self.connection.clone(),
            self.parts(),
            late,
        ));
    }

    /// The copy follows a report's or give-back's `answer` (the script's
    /// `[answer, used, leased, epoch, period start, kept, others' units,
    /// admitted on the lease's day]`) about `lease`'s counter, in the
    /// lease's quota period.
    fn saw_spent(&self, counter: &CounterKey, lease: &Lease, answer: &[i64]) {
        let (Some(rule), [_, used, leased, epoch, start, rest @ ..]) = (lease.quota, answer) else {
            return;
        };
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let kept = count(rest.first().copied().unwrap_or(0));
        let others = rest.get(1).and_then(|n| u64::try_from(*n).ok());
        if let Some(on_day) = rest.get(2).and_then(|n| u64::try_from(*n).ok()) {
            self.recovery.saw_today(counter, lease.unspent.day, on_day);
        }
        if *start != lease.unspent.period_start {
            return;
        }
        let period = (
            rule.quota.period,
            lease.unspent.period_start,
            lease.period_end,
        );
        let admitted = copied(count(*used), count(*leased), kept);
        let epoch = u64::try_from(*epoch).unwrap_or(0);
        self.recovery
            .saw_spent(counter, period, epoch, admitted, others);
    }

    /// As [`run`](Self::run), without the timeout (a restore may take
    /// longer than one decision).
    fn run_unbounded<T, F, Fut>(&self, command: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        let connection = self.connection.clone();
        StoreFuture::boxed(async move {
            command(connection)
                .await
                .map_err(|e| store_error("error", e))
        })
    }

    /// Runs `command` with the store's timeout on a clone of the connection.
    fn run<T, F, Fut>(&self, command: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + Send,
    {
        self.run_for(self.timeout, command)
    }

    /// Runs `command` within `timeout` on a clone of the connection.
    fn run_for<T, F, Fut>(&self, timeout: Duration, command: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + Send,
    {
        let connection = self.connection.clone();
        StoreFuture::boxed(async move {
            match tokio::time::timeout(timeout, command(connection)).await {
                Ok(result) => result.map_err(|e| store_error("error", e)),
                Err(elapsed) => Err(Error::new(
                    ErrorKind::Store,
                    format!("Redis timeout: no answer within {timeout:?}"),
                )
                .with_source(elapsed)),
            }
        })
    }
}

impl Connection {
    /// Runs the script's `op` with `args` on `key`, watched for a Redis
    /// rolled back on one server (see [`Watch`]).
    async fn run_script<T: FromRedisValue>(
        &mut self,
        recovery: &Recovery,
        script: &Script,
        key: &str,
        args: &Args,
        op: &str,
    ) -> redis::RedisResult<T> {
        let watch = recovery.watch_on(self);
        self.run_watched(recovery, script, key, args, op, watch.as_ref())
            .await
    }

    /// As [`run_script`](Self::run_script), with `watch` taken by the
    /// caller (`None` on a cluster).
    async fn run_watched<T: FromRedisValue>(
        &mut self,
        recovery: &Recovery,
        script: &Script,
        key: &str,
        args: &Args,
        op: &str,
        watch: Option<&Watch>,
    ) -> redis::RedisResult<T> {
        let watched = watch.map(|watch| (recovery, watch));
        let answer = self
            .invoke(args.invocation(script, key, watched, op))
            .await?;
        if let Some(watch) = watch {
            recovery.answered(watch);
        }
        Ok(answer)
    }

    /// `redis://…` (one server) or `redis+cluster://host:port,host:port,…`.
    pub(crate) async fn open(url: &str) -> Result<Self> {
        Ok(match cluster_nodes(url) {
            Some(nodes) => {
                let client = redis::cluster::ClusterClient::new(nodes)
                    .map_err(|e| store_error("cluster URL", e))?;
                Self::Cluster(
                    client
                        .get_async_connection()
                        .await
                        .map_err(|e| store_error("connect", e))?,
                )
            }
            None => {
                let client = redis::Client::open(url).map_err(|e| store_error("URL", e))?;
                // A refused connection fails within a second, not after the
                // six retries' backoff (3 s and more): the caller decides
                // when to try again (the gateway retries with its own
                // backoff, and serves meanwhile). A command's failure still
                // has the connection re-established for the next one.
                // Its own response timeout (redis-rs: 500 ms by default)
                // is only a ceiling: a call's bound is the store's timeout
                // (`with_timeout`), which may be longer than 500 ms.
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(RESPONSE_CEILING));
                Self::Single(
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(|e| store_error("connect", e))?,
                )
            }
        })
    }

    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) async fn pipeline<T: FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        match self {
            Self::Single(c) => pipe.query_async(c).await,
            Self::Cluster(c) => pipe.query_async(c).await,
        }
    }

    /// `command` on one node: `None`, the one server; on a cluster, the
    /// master at that address (a `SCAN` goes on where its cursor began).
    pub(crate) async fn on_node<T: FromRedisValue>(
        &mut self,
        node: Option<&(String, u16)>,
        command: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        match (self, node) {
            (Self::Cluster(c), Some((host, port))) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                Ok(redis::from_redis_value(
                    c.route_command(command.clone(), routing).await?,
                )?)
            }
            (connection, _) => connection.query(command).await,
        }
    }

    /// The masters of a cluster (`CLUSTER SLOTS`: each slot range's first
    /// node); none on one server.
    pub(crate) async fn masters(&mut self) -> redis::RedisResult<Vec<(String, u16)>> {
        if let Self::Single(_) = self {
            return Ok(Vec::new());
        }
        let ranges: Vec<Vec<redis::Value>> = self.query(redis::cmd("CLUSTER").arg("SLOTS")).await?;
        let mut masters = Vec::new();
        for range in ranges {
            let Some(node) = range.into_iter().nth(2) else {
                continue;
            };
            let (host, port): (String, u16) =
                match redis::from_redis_value::<Vec<redis::Value>>(node)?
                    .into_iter()
                    .take(2)
                    .collect::<Vec<_>>()
                    .as_slice()
                {
                    [host, port] => (
                        redis::from_redis_value_ref(host)?,
                        redis::from_redis_value_ref(port)?,
                    ),
                    _ => continue,
                };
            if !masters.contains(&(host.clone(), port)) {
                masters.push((host, port));
            }
        }
        Ok(masters)
    }

    pub(crate) async fn invoke<T: FromRedisValue>(
        &mut self,
        invocation: ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        match self {
            Self::Single(c) => invocation.invoke_async(c).await,
            Self::Cluster(c) => invocation.invoke_async(c).await,
        }
    }

    pub(crate) async fn query<T: FromRedisValue>(
        &mut self,
        command: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Self::Single(c) => command.query_async(c).await,
            Self::Cluster(c) => command.query_async(c).await,
        }
    }
}

/// A lease call to make with a decision: the slot's lease given back
/// (`taken`) and the next one asked for (`want`), or, with a renewal taken
/// ahead, only the next one.
struct LeaseCall<'a> {
    leases: &'a Arc<Leases>,
    key: lease::Slot,
    want: (u64, u64),
    taken: Lease,
    renewal: Renewal,
}

/// The script's arguments after the operation name.
#[derive(Clone)]
struct Args {
    now_us: i64,
    now: i64,
    day: i64,
    bucket: String,
    rate: f64,
    burst: u32,
    period: Option<(QuotaPeriod, i64, i64, u64)>,
    set_to: i64,
    unspent: Unspent,
    want: (u64, u64),
    /// This replica saw the counter before.
    known: bool,
    /// For "restore": what it saw.
    seen: Option<Seen>,
    /// The holder's record of the lease given back or taken ("": none).
    record: String,
    /// A new lease's lifetime (µs).
    lease_us: i64,
    /// For "restore": what this replica's leases admitted unacknowledged.
    own_leased: u64,
    /// For "restore": the latest epoch this replica's copy held.
    epoch_floor: u64,
    /// For "restore": the tag of the counter as this replica last put it
    /// back itself, when the copy's epochs are of that range (0: none), a
    /// fresh tag should this restore be the first, and what that restore
    /// added as the leases' own (see `redis.lua`).
    tags: (u64, u64, u64),
    /// The id of a call on the holder's record (0: none; see `Unsure`),
    /// and the oldest of the holder's calls still open.
    call: u64,
    oldest_open_call: u64,
}

impl Args {
    fn new(now: UnixNanos, quota: Option<&QuotaRule>) -> Self {
        let now_us = now.get() / 1_000;
        let secs = now_us.div_euclid(1_000_000);
        Self {
            now_us,
            now: secs,
            day: secs.div_euclid(DAY_SECS),
            bucket: String::new(),
            rate: 0.0,
            burst: 0,
            period: quota.map(|rule| {
                let (start, end) = period::bounds(rule.quota.period, secs);
                (rule.quota.period, start, end, rule.limit_for_period(start))
            }),
            set_to: 0,
            unspent: Unspent::default(),
            want: (0, 0),
            known: false,
            seen: None,
            epoch_floor: 0,
            tags: (0, 0, 0),
            record: String::new(),
            lease_us: 0,
            own_leased: 0,
            call: 0,
            oldest_open_call: 0,
        }
    }

    /// The arguments that give `lease` of `slot` back, report on it, or
    /// settle the lease call that gave it back: as of when it was granted
    /// (its units belong to that period, what it admitted to that day,
    /// however late it comes back).
    fn of_lease(leases: &Leases, slot: &lease::Slot, lease: &Lease) -> Self {
        let mut args = Self::as_granted(slot, lease);
        args.unspent = lease.unspent;
        args.record = leases.record(slot);
        args.oldest_open_call = leases.oldest_open_call();
        args
    }

    /// As [`of_lease`](Self::of_lease), for a report of the `n` requests
    /// it admitted (and no units back).
    fn of_report(leases: &Leases, slot: &lease::Slot, lease: &Lease, n: u64) -> Self {
        let mut args = Self::of_lease(leases, slot, lease);
        args.unspent = Unspent {
            units: 0,
            admitted: n,
            reported: 0,
            ..lease.unspent
        };
        args
    }

    /// The time, quota and bucket of `lease` of `slot` when it was granted
    /// (a lease call's: those of the request it decided).
    fn as_granted(slot: &lease::Slot, lease: &Lease) -> Self {
        let mut args = Self::new(lease.granted_at(), lease.quota.as_ref());
        if let Some(throttle) = lease.throttle {
            args.set_bucket(&slot.1, throttle);
        }
        args
    }

    /// The bucket of `throttle` for requests of `method` ("": the plan's).
    fn set_bucket(&mut self, method: impl std::fmt::Display, throttle: Throttle) {
        self.bucket = format!("b:{method}");
        self.rate = throttle.rate_limit;
        self.burst = throttle.burst_limit;
    }

    /// The quota period as the script takes it: kind ("": no quota),
    /// start, end, limit.
    fn period_args(&self) -> (&'static str, i64, i64, u64) {
        match self.period {
            Some((kind, start, end, limit)) => (kind.as_str(), start, end, limit),
            None => ("", 0, 0, 0),
        }
    }

    /// The quota period as the script stores it (kind, start, end).
    fn stored_period(&self) -> Option<Period> {
        self.period.map(|(kind, start, end, _)| (kind, start, end))
    }

    /// The id of the report on its way of the lease given back (0: none).
    fn report_on_its_way(&self) -> u64 {
        match self.unspent.pending() {
            0 => 0,
            _ => self.unspent.report_call,
        }
    }

    /// The script call; `watched` (one server only: a cluster cannot take
    /// keys of two slots in one script) makes a decision refuse to decide
    /// while Redis has no marker (4) or rolled back (6).
    fn invocation<'a>(
        &self,
        script: &'a Script,
        key: &str,
        watched: Option<(&Recovery, &Watch)>,
        op: &str,
    ) -> ScriptInvocation<'a> {
        let mut invocation = script.key(key);
        if let Some((recovery, _)) = watched {
            invocation
                .key(&recovery.marker_key)
                .key(&recovery.writes_key);
        }
        let (kind, start, end, limit) = self.period_args();
        // A restore gives no lease back: 27 to 29 carry its tags.
        let (gen, cap, granted_tokens) = match op {
            "restore" => self.tags,
            _ => (
                self.unspent.gen,
                self.unspent.cap,
                self.unspent.granted_tokens,
            ),
        };
        invocation
            .arg(op)
            .arg(self.now_us)
            .arg(self.now)
            .arg(self.day)
            .arg(&self.bucket)
            .arg(self.rate)
            .arg(self.burst)
            .arg(kind)
            .arg(start)
            .arg(end)
            .arg(limit)
            .arg(self.set_to)
            .arg(TTL_SECS)
            .arg(self.unspent.units)
            .arg(self.unspent.unreported())
            .arg(self.unspent.tokens)
            .arg(self.unspent.day)
            .arg(self.want.0)
            .arg(self.want.1)
            .arg(self.unspent.epoch)
            .arg(if self.unspent.granted > 0 { "1" } else { "0" })
            .arg(if self.known { "1" } else { "0" })
            .arg(self.seen.map_or(0, |s| s.used))
            .arg(self.seen.map_or(-1, |s| s.allow))
            .arg(self.seen.map_or(0, |s| s.epoch))
            .arg(&self.record)
            .arg(gen)
            .arg(cap)
            .arg(granted_tokens)
            .arg(self.unspent.pending())
            .arg(self.lease_us)
            .arg(micros(lease::RECLAIM_GRACE))
            .arg(lease::UNREPORTED_SHARE)
            .arg(self.own_leased)
            .arg(self.call)
            .arg(self.oldest_open_call)
            .arg(self.report_on_its_way())
            .arg(self.epoch_floor);
        if let Some((_, watch)) = watched {
            invocation.arg(&*watch.field).arg(watch.counts());
        }
        invocation
    }
}

impl RedisStore {
    /// UpdateUsage in the script: `"set"` (`value` remaining) or `"add"`
    /// (`value` more, or less); then, when the script started a new epoch,
    /// every replica's older leases are revoked (and given back, with what
    /// they admitted; the live ones report) before the answer, today's
    /// usage read after.
    fn change_remaining(
        &self,
        counter: &CounterKey,
        quota: &QuotaRule,
        now: Timestamp,
        op: &'static str,
        value: i64,
    ) -> StoreFuture<DayUsage> {
        let mut args = Args::new(now.into(), Some(quota));
        args.set_to = value;
        args.known = self.recovery.seen.contains_key(counter);
        let (key, script) = (self.key(counter), self.script.clone());
        let (store, counter, quota) = (self.clone(), counter.clone(), *quota);
        StoreFuture::boxed(async move {
            let (recovery, control) = (store.recovery.clone(), store.control.clone());
            let period = args.stored_period();
            let saw = counter.clone();
            // As a decision, it waits for a restore it found needed.
            let timeout = store.timeout + RECOVERY_WAIT;
            let (today, remaining, epoch) = store
                .run_for(timeout, move |mut connection| async move {
                    let change = Change {
                        recovery: &recovery,
                        control: &control,
                        script: &script,
                        key: &key,
                        counter: &saw,
                    };
                    let (answer, _in_flight) = change.made(&mut connection, &mut args, op).await?;
                    let answer: Vec<i64> = redis::from_redis_value(answer)?;
                    let [today, remaining, used, allow, epoch, leased, kept] = answer[..] else {
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::Client,
                            "UpdateUsage: an answer of an unknown shape",
                        )));
                    };
                    let number = |n: i64| u64::try_from(n).unwrap_or(0);
                    if let Some(period) = period {
                        let admitted = copied(number(used), number(leased), number(kept));
                        recovery.saw(saw.clone(), period, (admitted, allow, number(epoch)));
                    }
                    Ok((number(today), number(remaining), number(epoch)))
                })
                .await?;
            // A new epoch ("set", or an "add" into leased units): once
            // every replica dropped its older leases, only `remaining` is
            // admitted from now on, on every replica. An "add" that keeps
            // the epoch is announced all the same (revoking nothing): every
            // replica forgets the quota it remembered as spent, and its
            // copy for a restore follows, before the call returns.
            // Failed, the change holds (here, and in this replica's copy
            // should Redis have lost it): the error says so.
            store
                .revoke_everywhere(&counter, epoch)
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Store,
                        format!(
                            "The change was made, but the other replicas could not be told to \
                         enforce it: {e}"
                        ),
                    )
                    .with_source(e)
                })?;
            // Every replica gave its revoked leases back with what they
            // admitted, and reported what its live ones spent (this one
            // now): today's used count has all of it.
            store.report_for_update(counter.clone()).await;
            let day = period::date_of_day(now.as_second().div_euclid(DAY_SECS));
            match store.usage(&counter, Some(&quota), now, day, day).await {
                Ok(read) if !read.is_empty() => Ok(read[0]),
                // Made all the same: answered as the change found it.
                _ => Ok([today, remaining]),
            }
        })
    }
}

/// What a decision whose key's lease is spent (or expired) may still wait
/// for before it calls the script itself: the lease's report on its way to
/// land (after which the lease may be spent again, or renewed), then the
/// lease's renewal by another request; each once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MayWait {
    ForReportOrRenewal,
    ForRenewal,
    No,
}

impl RedisStore {
    /// A decision; a request that finds its key's lease spent waits, as
    /// `may_wait` allows, for the lease's report to land or for another
    /// request's renewal, rather than call the script itself.
    fn decide_or_wait(
        &self,
        request: &DecisionRequest<'_>,
        may_wait: MayWait,
    ) -> StoreFuture<Decision> {
        // A quota Redis refused as spent: refused here, until a change.
        if let Some(refusal) = self.control.spent.refusal(request) {
            if self.control.is_current() {
                return StoreFuture::ready(Ok(refusal));
            }
        }
        if request.quota.is_none() {
            // Spends a token a remembered refusal would not know of.
            self.control.spent.forget_if_remembered(request.counter);
        }
        // The wall clock, once: whether this replica hears revocations, and
        // whether a lease outlived its time whatever the request's clock.
        // The layer's own wall clock (the CPU's counter, set by the system
        // clock every 250 ms), not a system call's worth per request.
        let wall_us = SystemClock.now_nanos().get() / 1_000;
        let leases = self.leases.as_ref().filter(|l| l.active_at(wall_us));
        if let Some(leases) = leases {
            if let Some((decision, ahead)) =
                leases.try_spend(request, request.now.get() / 1_000, wall_us)
            {
                if let Some(renewal) = ahead {
                    self.lease_ahead(request, leases, renewal);
                }
                return StoreFuture::ready(Ok(decision));
            }
        }
        // The lease's slot, once: this request goes on without a lease.
        let leased = leases.map(|leases| (leases, lease::slot_key(request)));
        if let (Some((leases, key)), false) = (&leased, may_wait == MayWait::No) {
            if let Some(renewed) = leases.renewal_under_way(key) {
                return self.decide_after(request, renewed, MayWait::No);
            }
            if may_wait == MayWait::ForReportOrRenewal {
                if let Some(answered) = leases.report_under_way(key) {
                    return self.decide_after(request, answered, MayWait::ForRenewal);
                }
            }
        }
        // A lease with a report on its way is not given back here: this
        // request is decided without one.
        let renewal = leased.and_then(|(leases, key)| {
            let want = leases.want(&key, request.now.get() / 1_000);
            let (taken, renewal) = leases.take_unspent(&key, want)?;
            Some(LeaseCall {
                leases,
                key,
                want,
                taken,
                renewal,
            })
        });
        self.script_decision(request, renewal)
    }

    /// Takes the next lease of the slot whose `renewal` (ahead) started,
    /// in the background: the slot's lease is still spent meanwhile, and
    /// the call gives nothing back and decides no request (`redis.lua`,
    /// ARGV[12]). Without a runtime to run it on, it is not taken.
    fn lease_ahead(&self, request: &DecisionRequest<'_>, leases: &Arc<Leases>, renewal: Renewal) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = renewal.slot().clone();
        let want = leases.want(&key, request.now.get() / 1_000);
        // Nothing is given back: a settle of the call, should it go
        // unanswered, gives back nothing either.
        let call = LeaseCall {
            leases,
            key,
            want,
            taken: Lease::default(),
            renewal,
        };
        runtime.spawn(self.script_decision(request, Some(call)));
    }

    /// `request` decided by the script: with `lease` (the slot's lease
    /// given back, or taken ahead), a lease call that also takes the next
    /// lease; without, one decision.
    fn script_decision(
        &self,
        request: &DecisionRequest<'_>,
        lease: Option<LeaseCall<'_>>,
    ) -> StoreFuture<Decision> {
        let mut args = Args::new(request.now, request.quota.as_ref());
        let mut op = "decide";
        let (mut slot, mut pending) = (None, None);
        if let Some(call) = lease {
            let LeaseCall {
                leases,
                key,
                want,
                taken,
                renewal,
            } = call;
            args.want = want;
            let unspent = taken.unspent;
            args.unspent = unspent;
            if let Some(held_cap) = renewal.ahead() {
                // Nothing goes back: ARGV[28] carries the cap of the
                // lease the new slice joins (see redis.lua).
                args.set_to = 1;
                args.unspent.cap = held_cap;
            }
            args.record = leases.record(&key);
            args.lease_us = micros(leases.config.ttl);
            // Settled if it goes unanswered: what it gave back, as of
            // this request (the call's own throttle and quota, which a
            // settle sends again), with the lease's period end (an
            // answer to the settle is one the copy follows) and expiry
            // (one refused because Redis lost its data keeps what it
            // admitted for the restore to count).
            let gave_back = Lease {
                unspent,
                period_end: taken.period_end,
                expires_us: taken.expires_us,
                wall_expires_us: taken.wall_expires_us,
                granted_us: args.now_us,
                throttle: request.throttle.map(|rule| rule.throttle),
                quota: request.quota,
                ..Lease::default()
            };
            let decides = renewal.ahead().is_none();
            let call = Unsure::new(leases, key, gave_back, CallKind::Lease { decides });
            args.call = call.call;
            args.oldest_open_call = leases.oldest_open_call();
            pending = Some(PendingCall::renewal(leases, call));
            slot = Some(renewal);
            op = "lease";
        }
        if let Some(rule) = &request.throttle {
            args.set_bucket(rule.method.unwrap_or(""), rule.throttle);
        }
        let (key, script) = (self.key(request.counter), self.script.clone());
        let (throttle, quota) = (request.throttle.map(|t| t.throttle), request.quota);
        args.known = quota.is_some() && self.recovery.seen.contains_key(request.counter);
        args.seen = self.recovery.copy_in(request.counter, args.stored_period());
        let (recovery, control) = (self.recovery.clone(), self.control.clone());
        let counter = request.counter.clone();
        let timeout = self.timeout;
        let generation = control.spent.generation();
        let method = request.throttle.and_then(|t| t.method).map(str::to_owned);
        let decides = self.decides.clone();
        // Each script call has the store's timeout; a decision that finds
        // Redis emptied waits for the restore (up to RECOVERY_WAIT more)
        // rather than fail by the failure policy (fail-open would admit
        // on an empty Redis).
        self.run_for(timeout + RECOVERY_WAIT, move |mut connection| async move {
            // Until the answer is in the copy: a restore waits for it.
            // Declared in this order, these go in the reverse one on every
            // way out (an error, or this future dropped): the lease call
            // becomes unsure before the slot stops counting the lease it
            // gave back, and both before a restore may run (one between
            // them would count that lease nowhere: Redis lost what it
            // admitted).
            let mut in_flight;
            let slot = slot;
            let pending = pending;
            in_flight = Some(recovery.in_flight.read().await);
            let call = DecideCall {
                decides: &decides,
                script: &script,
                recovery: &recovery,
                control: &control,
                counter: &counter,
                key: &key,
                op,
                timeout,
            };
            let mut watch = None;
            let mut answer = call.run(&mut connection, &args, &mut watch).await?;
            // The marker is gone (4), or a counter this replica saw is (3):
            // Redis lost its data — put back what every replica saw, then
            // decide — or the counter was dropped. Lost again meanwhile (a
            // second restart), it is put back again. Redis came back with
            // older data (6): it goes first, then as after a loss.
            for _ in 0..RECOVERIES_PER_DECISION {
                if answer.0 < 3 {
                    break;
                }
                drop(in_flight.take());
                let found = Found {
                    code: answer.0,
                    watch: watch.as_ref(),
                    counter: &counter,
                };
                if !put_back_for(&recovery, &control, &mut connection, &script, found).await? {
                    args.known = false;
                }
                in_flight = Some(recovery.in_flight.read().await);
                answer = call.run(&mut connection, &args, &mut watch).await?;
            }
            if answer.0 >= 3 {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "Redis kept losing its data while it was put back",
                )));
            }
            if answer.0 == 5 {
                // Settled as unanswered already: it was not applied.
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "a lease call settled before it ran",
                )));
            }
            if let Some(pending) = pending {
                pending.answered();
            }
            let (
                verdict,
                tokens,
                remaining,
                units,
                leased_tokens,
                epoch,
                used,
                allow,
                gen,
                cap,
                leased_out,
                (kept, others, today),
            ) = answer;
            if let (true, Some(period), false) =
                (quota.is_some(), args.stored_period(), verdict == 3)
            {
                // Leased units are counted by their holders when they restore.
                let admitted = copied(used, leased_out, kept);
                recovery.saw(counter.clone(), period, (admitted, allow, epoch));
                if let Ok(others) = u64::try_from(others) {
                    recovery.saw_spent(&counter, period, epoch, admitted, Some(others));
                }
            }
            if let Ok(today) = u64::try_from(today) {
                recovery.saw_today(&counter, args.day, today);
            }
            let tokens: f64 = tokens.parse().unwrap_or(0.0);
            // Spent, and no unit out on a lease that could come back.
            if let (2, 0, Some(rule), Some((_, start, end, _))) =
                (verdict, leased_out, quota, args.period)
            {
                let spent = Spent {
                    rule,
                    period: (start, end),
                    at_us: args.now_us,
                    method,
                    tokens,
                };
                control.spent.remember(&counter, spent, generation);
            }
            if let (Some(renewal), true) = (slot, units > 0 || leased_tokens > 0) {
                let period = args
                    .period
                    .map_or((0, 0), |(_, start, end, _)| (start, end));
                renewal.keep(Lease {
                    unspent: Unspent {
                        units,
                        granted: units,
                        admitted: 0,
                        reported: 0,
                        landed: 0,
                        cap,
                        tokens: leased_tokens,
                        granted_tokens: leased_tokens,
                        gen,
                        period_start: period.0,
                        day: args.day,
                        epoch,
                        report_call: 0,
                    },
                    period_end: period.1,
                    granted_us: args.now_us,
                    expires_us: args.now_us.saturating_add(args.lease_us),
                    wall_expires_us: Timestamp::now()
                        .as_microsecond()
                        .saturating_add(args.lease_us),
                    shared_remaining: remaining,
                    shared_tokens: tokens.max(0.0) as u64,
                    throttle,
                    quota,
                    renewing: None,
                    renewal: 0,
                    spent_before: (0, 0),
                });
            }
            // A new lease is kept before a restore may run: it counts it.
            drop(in_flight);
            Ok(Decision {
                verdict: match verdict {
                    0 => Verdict::Admitted,
                    1 => Verdict::Throttled,
                    _ => Verdict::QuotaExceeded,
                },
                // The shared bucket and quota, with this replica's own new
                // slice (it is spendable here), as the headers report them.
                throttle: throttle.map(|t| {
                    Bucket::with_tokens(tokens + leased_tokens as f64, args.now_us * 1_000)
                        .state(&t)
                }),
                quota: quota
                    .as_ref()
                    .zip(args.period)
                    .map(|(rule, (_, start, end, _))| {
                        quota_state(rule, remaining + units, (start, end), args.now)
                    }),
            })
        })
    }
}

impl RedisStore {
    /// `request` decided once `waited` is over (at most the store's
    /// timeout, as a script call), waiting then as `may_wait` allows.
    fn decide_after(
        &self,
        request: &DecisionRequest<'_>,
        waited: impl std::future::Future<Output = ()> + Send + 'static,
        may_wait: MayWait,
    ) -> StoreFuture<Decision> {
        let store = self.clone();
        let (counter, quota, now) = (request.counter.clone(), request.quota, request.now);
        let throttle = request
            .throttle
            .map(|rule| (rule.method.map(str::to_owned), rule.throttle));
        StoreFuture::boxed(async move {
            let _ = tokio::time::timeout(store.timeout, waited).await;
            let request = DecisionRequest {
                counter: &counter,
                throttle: throttle.as_ref().map(|(method, throttle)| ThrottleRule {
                    method: method.as_deref(),
                    throttle: *throttle,
                }),
                quota,
                now,
            };
            store.decide_or_wait(&request, may_wait).await
        })
    }
}

impl CounterStore for RedisStore {
    fn decide(&self, request: &DecisionRequest<'_>) -> StoreFuture<Decision> {
        self.decide_or_wait(request, MayWait::ForReportOrRenewal)
    }

    fn refund(&self, request: &DecisionRequest<'_>) -> StoreFuture<()> {
        if self.leases.as_ref().is_some_and(|l| l.try_refund(request)) {
            return StoreFuture::ready(Ok(()));
        }
        let mut args = Args::new(request.now, request.quota.as_ref());
        if let Some(rule) = &request.throttle {
            args.set_bucket(rule.method.unwrap_or(""), rule.throttle);
        }
        let parts = self.parts();
        let (key, counter) = (self.key(request.counter), request.counter.clone());
        self.run(move |mut connection| async move {
            parts.refund(&mut connection, &key, &counter, &args).await
        })
    }

    fn set_remaining(
        &self,
        counter: &CounterKey,
        quota: &QuotaRule,
        now: Timestamp,
        remaining: u64,
    ) -> StoreFuture<DayUsage> {
        let remaining = i64::try_from(remaining).unwrap_or(i64::MAX);
        self.change_remaining(counter, quota, now, "set", remaining)
    }

    fn add_remaining(
        &self,
        counter: &CounterKey,
        quota: &QuotaRule,
        now: Timestamp,
        delta: i64,
    ) -> StoreFuture<DayUsage> {
        self.change_remaining(counter, quota, now, "add", delta)
    }

    fn usage(
        &self,
        counter: &CounterKey,
        quota: Option<&QuotaRule>,
        now: Timestamp,
        first: Date,
        last: Date,
    ) -> StoreFuture<Vec<DayUsage>> {
        let key = self.key(counter);
        let quota = quota.copied();
        let known = self.recovery.seen.contains_key(counter);
        let (recovery, control, script) = (
            self.recovery.clone(),
            self.control.clone(),
            self.script.clone(),
        );
        let timeout = self.timeout;
        // As a decision, GetUsage waits for a restore it started.
        self.run_for(timeout + RECOVERY_WAIT, move |mut connection| async move {
            let read = redis::cmd("HGETALL").arg(&key).clone();
            let mut fields: HashMap<String, String> =
                within(timeout, connection.query(&read)).await?;
            // A counter this replica saw that is gone: Redis may have lost
            // its data, and GetUsage tells what was put back, as the next
            // decision would (read again even if another task of this
            // replica did the restore meanwhile).
            if fields.is_empty() && known {
                recover(&recovery, &control, &mut connection, &script, None).await?;
                fields = within(timeout, connection.query(&read)).await?;
            }
            let mut counter = restore(&fields, now.as_microsecond());
            Ok(counter.usage(quota.as_ref(), to_nanos(now), first, last))
        })
    }

    fn forget(&self, counter: &CounterKey) -> StoreFuture<()> {
        self.recovery.seen.remove(counter);
        self.control.spent.forget(counter);
        let (store, counter) = (self.clone(), counter.clone());
        StoreFuture::boxed(async move {
            // A new epoch, and every replica's leases of the old ones
            // revoked before this returns: a key added back to the plan
            // starts from its full quota, with no old lease spent into it.
            let (recovery, control) = (store.recovery.clone(), store.control.clone());
            let (script, key) = (store.script.clone(), store.key(&counter));
            let forgotten = counter.clone();
            let epoch: u64 = store
                .run_for(
                    store.timeout + RECOVERY_WAIT,
                    move |mut connection| async move {
                        let change = Change {
                            recovery: &recovery,
                            control: &control,
                            script: &script,
                            key: &key,
                            counter: &forgotten,
                        };
                        let mut args = Args::new(UnixNanos::new(0), None);
                        let (answer, _) = change.made(&mut connection, &mut args, "forget").await?;
                        Ok(redis::from_redis_value(answer)?)
                    },
                )
                .await?;
            store.revoke_everywhere(&counter, epoch).await
        })
    }
}

/// Warns when Redis may evict keys (a `maxmemory` with a policy other
/// than `noeviction`): a counter evicted is put back from the replicas'
/// copies, but what was admitted since they last saw it is lost, and quotas
/// are exact only with `noeviction`. Best effort: a Redis that does not
/// say (a cluster, `INFO` disabled) goes unchecked.
async fn warn_if_evicting(connection: &mut Connection) {
    let Ok(info) = connection
        .query::<String>(redis::cmd("INFO").arg("memory"))
        .await
    else {
        return;
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let limit = field("maxmemory").and_then(|v| v.parse::<u64>().ok());
    let policy = field("maxmemory_policy");
    if let (Some(limit), Some(policy)) = (limit, policy) {
        if limit > 0 && policy != "noeviction" {
            tracing::warn!(
                maxmemory = limit,
                policy,
                "Redis may evict counters when full: quotas are exact only with \
                 maxmemory-policy noeviction"
            );
        }
    }
}

/// What a call that runs in a task of its own needs of the store.
#[derive(Clone)]
struct StoreParts {
    script: Arc<Script>,
    recovery: Arc<Recovery>,
    control: Arc<Control>,
}

impl StoreParts {
    /// Gives a charged request's token and unit of quota back: the
    /// script's `"refund"` of `counter` (its hash `key`) with the arguments
    /// of the request's decision ([`CounterStore::refund`], and a decision
    /// Redis admitted after its request stopped waiting).
    async fn refund(
        &self,
        connection: &mut Connection,
        key: &str,
        counter: &CounterKey,
        decided: &Args,
    ) -> redis::RedisResult<()> {
        let args = Args {
            known: false,
            seen: None,
            ..decided.clone()
        };
        let _: i64 = connection
            .run_script(&self.recovery, &self.script, key, &args, "refund")
            .await?;
        // A unit back: a spent quota may not be spent any more.
        self.control.spent.forget(counter);
        Ok(())
    }
}

/// A decision's script call: `op` on `key`, within `timeout`.
struct DecideCall<'a> {
    decides: &'a Arc<decides::Decides>,
    script: &'a Arc<Script>,
    recovery: &'a Arc<Recovery>,
    control: &'a Arc<Control>,
    counter: &'a CounterKey,
    key: &'a str,
    op: &'a str,
    timeout: Duration,
}

impl DecideCall<'_> {
    /// The call with `args`: a `"decide"` (of a quota, a throttle or both)
    /// goes in a `"decides"` call on one server, or alone when the script
    /// hands it back (not the common decision); `watch` becomes
    /// the one the answer came under (`None` on a cluster).
    async fn run(
        &self,
        connection: &mut Connection,
        args: &Args,
        watch: &mut Option<Watch>,
    ) -> redis::RedisResult<Answer> {
        let (recovery, key, op) = (self.recovery, self.key, self.op);
        // What a call in a task of its own needs.
        let sender = |connection: &Connection| decides::Sender {
            connection: connection.clone(),
            parts: StoreParts {
                script: self.script.clone(),
                recovery: recovery.clone(),
                control: self.control.clone(),
            },
            timeout: self.timeout,
        };
        let limited = args.period.is_some() || !args.bucket.is_empty();
        let together = op == "decide" && limited && matches!(connection, Connection::Single(_));
        within(self.timeout, async {
            if together {
                let decided = self.decides.decide(
                    || sender(connection),
                    key.to_owned(),
                    self.counter.clone(),
                    args.clone(),
                );
                if let Some((answer, sent_under)) = decided.await? {
                    *watch = Some(sent_under);
                    return Ok(answer);
                }
            }
            *watch = recovery.watch_on(connection);
            if op == "decide" {
                let (key, counter) = (key.to_owned(), self.counter.clone());
                let alone = sender(connection).decide_alone(key, counter, args.clone(), watch);
                return alone.await;
            }
            connection
                .run_watched(recovery, self.script, key, args, op, watch.as_ref())
                .await
        })
        .await
    }
}

/// `call` within `limit`; a timeout is an I/O error.
async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {limit:?}"),
        )
        .into())
    })
}

/// The hash of `counter` under `prefix`: hash-tagged per (plan, key).
pub(crate) fn counter_key(prefix: &str, counter: &CounterKey) -> String {
    format!("{prefix}{{{}:{}}}", counter.plan_id(), counter.key_id())
}

/// How much longer than the store's timeout a decision that finds Redis
/// emptied waits for the counters to be put back (every live replica's
/// restore, acknowledged within 1 s each).
const RECOVERY_WAIT: Duration = Duration::from_secs(5);
/// How many times one decision puts counters back when Redis keeps losing
/// its data; after that it fails (by the store's failure policy), rather
/// than answer from an emptied counter.
const RECOVERIES_PER_DECISION: usize = 3;
/// How many times a replica puts counters back for one loss found when
/// Redis loses its data again meanwhile.
const RESTORES_PER_LOSS: usize = 5;
/// How long a replica that knows no marker waits for the other replicas'
/// when Redis has none (they restore, then set one) before it sets one.
const UNSET_MARKER_WAIT: Duration = Duration::from_secs(3);
/// Lease reports (and give-backs) one replica keeps in flight.
const REPORTS_IN_FLIGHT: usize = 64;
/// The script's answer to a call Redis refused because it applied fewer of
/// this replica's calls than it answered (see "Rollback" in redis.lua).
const ROLLED_BACK: i64 = 6;
/// Restores one replica keeps in flight after Redis lost its data.
const RESTORES_IN_FLIGHT: usize = 64;

/// After Redis lost its data: puts back what this replica saw and, when
/// the marker is missing, has every other replica do the same before it
/// sets a new one (decisions on one server wait for it); `true` when Redis
/// had lost its data.
async fn recover(
    recovery: &Recovery,
    control: &Control,
    connection: &mut Connection,
    script: &Script,
    rolled_back: Option<&str>,
) -> redis::RedisResult<bool> {
    let _one = recovery.one_at_a_time().await;
    let mut marker = recovery.marker(connection).await?;
    // Found by the count read just now, or by a call (the count may hide
    // it: calls applied and not answered yet count there).
    let stale = match &marker {
        Marker::RolledBack(stale) => Some(stale.clone()),
        _ => rolled_back.map(str::to_owned),
    };
    if let Some(stale) = stale {
        recovery.wipe(connection, &stale).await?;
        marker = recovery.marker(connection).await?;
    }
    match marker {
        Marker::Known | Marker::RolledBack(_) => Ok(false),
        Marker::Unset => {
            // No marker, and a replica older than this one alive: Redis
            // lost its data since that one started (it set a marker at its
            // start); it puts back what it saw, then sets a new one.
            // Deciding before that would count from an empty counter. (The
            // oldest sets one at once: replicas started together on a new
            // Redis wait for it, not for each other.)
            if control.older_alive(connection).await? {
                tracing::info!(
                    "Redis holds no marker while older replicas are alive: waiting for theirs"
                );
                if recovery.await_marker(connection, UNSET_MARKER_WAIT).await? {
                    return Ok(false);
                }
            }
            recovery
                .put_marker(connection, &Recovery::fresh_marker())
                .await?;
            Ok(false)
        }
        Marker::Replaced(marker) => {
            restore_seen(recovery, connection, script).await?;
            recovery.adopt_read(marker);
            Ok(true)
        }
        Marker::Missing => {
            // Should Redis lose its data again before the marker is set,
            // what was put back is gone: each attempt puts back what the
            // first one took, the copy as it was and what the leases had
            // admitted (the copy followed the counters put back, which are
            // gone again, and the leases ended).
            let mut taken = None;
            for _ in 0..RESTORES_PER_LOSS {
                let note = recovery.begin_restore(connection).await?;
                let _quiet = recovery.in_flight.write().await;
                let lost = taken.get_or_insert_with(|| Lost::take(recovery, None));
                put_back(recovery, connection, script, lost).await?;
                drop(_quiet);
                let fresh = Recovery::fresh_marker();
                recovery.put_back_under(&fresh);
                control.lost(connection, &fresh).await?;
                if recovery.finish_restore(connection, &note, &fresh).await? {
                    return Ok(true);
                }
                tracing::warn!("Redis lost its data again while counters were put back");
            }
            Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "Redis kept losing its data while counters were put back",
            )))
        }
    }
}

/// Puts back every counter `recovery` saw in its current period.
async fn restore_seen(
    recovery: &Recovery,
    connection: &mut Connection,
    script: &Script,
) -> redis::RedisResult<()> {
    // Every answer Redis gave before the loss is in the copy first.
    let _quiet = recovery.in_flight.write().await;
    let lost = Lost::take(recovery, None);
    put_back(recovery, connection, script, &lost).await
}

/// A change of a counter by the control plane (UpdateUsage, a key leaving
/// its plan), made on the counter as the replicas put it back: Redis
/// refuses it on an emptied (or rolled back) Redis, as it refuses a
/// decision. (Made on the emptied counter, it was lost under what the
/// replicas put back after it.)
struct Change<'a> {
    recovery: &'a Recovery,
    control: &'a Control,
    script: &'a Script,
    key: &'a str,
    counter: &'a CounterKey,
}

impl Change<'_> {
    /// Sends `op`; when Redis refuses it (a one-number answer, see
    /// [`Found`]), puts back what was lost and sends it again. The answer,
    /// and the hold that keeps a restore off until the caller has it in
    /// the copy.
    async fn made(
        &self,
        connection: &mut Connection,
        args: &mut Args,
        op: &str,
    ) -> redis::RedisResult<(redis::Value, tokio::sync::RwLockReadGuard<'_, ()>)> {
        for attempt in 0..=RECOVERIES_PER_DECISION {
            let in_flight = self.recovery.in_flight.read().await;
            let watch = self.recovery.watch_on(connection);
            let answer: redis::Value = connection
                .run_watched(
                    self.recovery,
                    self.script,
                    self.key,
                    args,
                    op,
                    watch.as_ref(),
                )
                .await?;
            let refused = match &answer {
                redis::Value::Array(items) if items.len() == 1 => {
                    redis::from_redis_value_ref::<u8>(&items[0]).ok()
                }
                _ => None,
            };
            let code = match refused {
                None => return Ok((answer, in_flight)),
                Some(code @ (3 | 4)) => code,
                Some(code) if code == ROLLED_BACK as u8 => code,
                Some(code) => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "an answer of an unknown shape",
                        format!("{op}: {code}"),
                    )))
                }
            };
            drop(in_flight);
            if attempt == RECOVERIES_PER_DECISION {
                break;
            }
            let found = Found {
                code,
                watch: watch.as_ref(),
                counter: self.counter,
            };
            if !put_back_for(self.recovery, self.control, connection, self.script, found).await? {
                args.known = false;
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "Redis kept losing its data while it was put back",
        )))
    }
}

/// What a call found that it could not be applied to: Redis lost its data
/// (`code` 4: the marker is gone; 3: the counter the call was for is),
/// or came back with older data (6, found by `watch`).
struct Found<'a> {
    code: u8,
    watch: Option<&'a Watch>,
    counter: &'a CounterKey,
}

/// Puts back what was lost, as `found` says, before the call is sent
/// again: every replica's copies after a loss, the counter alone when only
/// it went (deleted, evicted, or on a cluster node that lost its data).
/// `false` when this replica has no copy of the counter (dropped since):
/// it starts anew.
async fn put_back_for(
    recovery: &Recovery,
    control: &Control,
    connection: &mut Connection,
    script: &Script,
    found: Found<'_>,
) -> redis::RedisResult<bool> {
    let stale = found.watch.filter(|_| found.code == ROLLED_BACK as u8);
    let stale = stale.map(|watch| &*watch.marker);
    let recovered = recover(recovery, control, connection, script, stale).await?;
    if found.code == 3 && !recovered {
        match restore_counter(recovery, connection, script, found.counter).await? {
            PutBack::Now => control.counter_lost(connection, found.counter).await?,
            PutBack::Already => {}
            PutBack::NoCopy => {
                recovery.seen.remove(found.counter);
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// What [`restore_counter`] did.
enum PutBack {
    /// Put the counter back (the other replicas are to do so too).
    Now,
    /// Nothing: this replica put it back since it was lost.
    Already,
    /// Nothing: this replica has no copy of it in its current period.
    NoCopy,
}

/// Puts back `counter` alone, from this replica's copy of it in its
/// current period: Redis lost it, not its other data.
///
/// Once a loss: every decision that found the counter gone comes here, and
/// so does the other replicas' message. Put back again, its leases of the
/// counter as put back would end with nothing counting what they admitted
/// (Redis takes a replica's restore once): over 32,000 a loss admitted too
/// many in about 1 run in 10 of a test.
async fn restore_counter(
    recovery: &Recovery,
    connection: &mut Connection,
    script: &Script,
    counter: &CounterKey,
) -> redis::RedisResult<PutBack> {
    let _one = recovery.one_counter_at_a_time().await;
    if let Some(leases) = &recovery.leases {
        let put_back_already: bool = connection
            .query(
                redis::cmd("HEXISTS")
                    .arg(counter_key(&recovery.prefix, counter))
                    .arg(leases.restored_mark()),
            )
            .await?;
        if put_back_already {
            return Ok(PutBack::Already);
        }
    }
    let _quiet = recovery.in_flight.write().await;
    let lost = Lost::take(recovery, Some(counter));
    if lost.current.is_empty() {
        return Ok(PutBack::NoCopy);
    }
    put_back(recovery, connection, script, &lost).await?;
    Ok(PutBack::Now)
}

/// What a replica puts back after Redis lost its data: its copy of the
/// counters of their current period, and what its leases (ended here)
/// admitted that Redis did not acknowledge.
struct Lost {
    current: Vec<(CounterKey, Seen)>,
    outstanding: lease::Outstanding,
}

impl Lost {
    /// Takes it, of every counter or `only` one (with every answer of
    /// before the loss in the copy: the caller holds `in_flight`).
    fn take(recovery: &Recovery, only: Option<&CounterKey>) -> Self {
        let secs = jiff::Timestamp::now().as_second();
        let seen: Vec<(CounterKey, Seen)> = match only {
            Some(counter) => recovery
                .seen
                .get(counter)
                .map(|seen| (counter.clone(), *seen))
                .into_iter()
                .collect(),
            None => recovery
                .seen
                .iter()
                .map(|entry| (entry.key().clone(), *entry.value()))
                .collect(),
        };
        let mut current = Vec::with_capacity(seen.len());
        for (counter, seen) in seen {
            if secs >= seen.period.2 {
                // Its period is over: nothing of it carries into the next.
                recovery.seen.remove(&counter);
                recovery.restored.remove(&counter);
                recovery.put_back.remove(&counter);
            } else {
                current.push((counter, seen));
            }
        }
        let outstanding = recovery
            .leases
            .as_ref()
            .map(|leases| match only {
                Some(counter) => leases.spent_at_loss_of(counter),
                None => leases.spent_at_loss(),
            })
            .unwrap_or_default();
        Self {
            current,
            outstanding,
        }
    }
}

/// Puts `lost` back.
async fn put_back(
    recovery: &Recovery,
    connection: &mut Connection,
    script: &Script,
    lost: &Lost,
) -> redis::RedisResult<()> {
    let now = jiff::Timestamp::now();
    let restored = lost.current.len();
    let outstanding = &lost.outstanding;
    // Every counter of the current period (all of Redis's, for a replica
    // that read them when it started): many restores in flight at once.
    futures_util::stream::iter(lost.current.iter().cloned())
        .map(|(counter, seen)| {
            let mut connection = connection.clone();
            let (kind, start, end) = seen.period;
            let mut args = Args::new(now.into(), None);
            let day = args.day;
            // The limit plays no part in a restore.
            args.period = Some((kind, start, end, 0));
            args.seen = Some(seen);
            args.own_leased = outstanding.of(&counter, seen.epoch, start);
            // Past every epoch this replica's copy held: a counter it put
            // back before, lost again, then put back by another replica
            // from an older copy, starts a range of epochs past the one
            // this copy followed (taken as read from Redis as it is now,
            // the copy would add nothing).
            args.epoch_floor = recovery
                .restored
                .get(&counter)
                .map_or(seen.epoch, |followed| seen.epoch.max(*followed));
            let own_range = recovery.own_range(&counter, &seen);
            args.tags = (
                own_range.map_or(0, |put| put.tag),
                Recovery::fresh_tag(),
                own_range.map_or(0, |put| put.own),
            );
            // This replica as a lease holder: Redis then knows its leases
            // of the counter as it was are counted, and, put back first, it
            // counts the other holders' (one may have died with them).
            if let Some(leases) = &recovery.leases {
                args.record = leases.record(&(counter.clone(), "".into()));
                args.want.0 = seen.others;
            }
            // Today's record of admitted requests, as the copy last heard it.
            (args.unspent.day, args.want.1) = seen.today;
            let key = counter_key(&recovery.prefix, &counter);
            async move {
                let answer: Vec<u64> = connection
                    .run_script(recovery, script, &key, &args, "restore")
                    .await?;
                // The copy follows the counter as put back (its new range of
                // epochs): answers of that range are this replica's again.
                if let [epoch, used, leased, kept, tag, put, own, today] = answer[..] {
                    if let Some(mut known) = recovery.seen.get_mut(&counter) {
                        if known.period == seen.period && epoch > 0 {
                            (known.epoch, known.used) = (epoch, copied(used, leased, kept));
                            known.saw_today(day, today);
                            if put == 1 {
                                let put = RestoredByThis {
                                    period: seen.period,
                                    epoch,
                                    tag,
                                    own,
                                };
                                recovery.put_back.insert(counter.clone(), put);
                            }
                            let mut followed = recovery.restored.entry(counter).or_default();
                            *followed = (*followed).max(epoch);
                        }
                    }
                }
                Ok::<_, redis::RedisError>(())
            }
        })
        .buffer_unordered(RESTORES_IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    recovery
        .losses
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    tracing::warn!(
        counters = restored,
        "Redis lost its data: restored the counters this replica saw"
    );
    Ok(())
}

/// The script's op and arguments for `call`, with its id: a lease call is
/// settled, a give-back or report sent (again) as it was.
fn call_args(leases: &Leases, call: &Unsure) -> (&'static str, Args) {
    let (op, mut args) = match call.kind {
        CallKind::Lease { .. } => ("settle", Args::of_lease(leases, &call.slot, &call.lease)),
        CallKind::Return => ("return", Args::of_lease(leases, &call.slot, &call.lease)),
        CallKind::Report(n) => (
            "report",
            Args::of_report(leases, &call.slot, &call.lease, n),
        ),
    };
    args.call = call.call;
    (op, args)
}

/// Give-backs of `taken` (drained from `leases`).
fn give_backs(leases: &Leases, taken: Vec<(lease::Slot, Lease)>) -> Vec<Unsure> {
    taken
        .into_iter()
        .map(|(slot, lease)| Unsure::new(leases, slot, lease, CallKind::Return))
        .collect()
}

/// A duration in whole microseconds, as the script takes them.
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// What a replica's copy counts of a counter that holds `used` units,
/// `leased` of them out on leases, `kept` of those kept from reclaimed
/// leases: what was admitted, reported or written off, and what the holders
/// of reclaimed leases may have admitted (each replica adds its own live
/// leases' units when it restores; a dead replica's would be lost).
pub(crate) fn copied(used: u64, leased: u64, kept: u64) -> u64 {
    used.saturating_sub(leased.saturating_sub(kept))
}

/// Of the leased units, those no replica can spend any more that may have
/// been spent (not reported) by one that stopped reporting: kept by
/// reclaimed leases, or to be kept by expired ones the script has not
/// reclaimed yet (as it will when the counter is next touched), or
/// counted for a holder that may have died with them. GetUsage counts them
/// as used: no request can be admitted with them.
fn lost_units(fields: &HashMap<String, String>, now_us: i64) -> i64 {
    let epoch = fields.get("ep").map_or("0", String::as_str);
    let grace = micros(lease::RECLAIM_GRACE);
    // Units counted for the leases of holders that may have died with them
    // when Redis lost its data ('su' in redis.lua).
    let suspected = fields
        .get("su")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    suspected
        + fields
            .iter()
            .filter(|(name, _)| name.starts_with("h:"))
            .map(|(_, record)| {
                // o, u, t, e, g, kept, pc, p, ep (see `rec_get` in redis.lua).
                let parts: Vec<&str> = record.split(',').collect();
                let number = |i: usize| {
                    parts
                        .get(i)
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0)
                };
                if parts.get(8).copied() != Some(epoch) {
                    return 0;
                }
                let expired = number(3).saturating_add(grace) <= now_us;
                number(5) + if expired { number(0).min(number(1)) } else { 0 }
            })
            .sum::<i64>()
}

/// The counter a hash describes (period, used, allowance, daily records),
/// as of `now_us`.
fn restore(fields: &HashMap<String, String>, now_us: i64) -> Counter {
    let number = |name: &str| fields.get(name).and_then(|v| v.parse::<i64>().ok());
    let period = fields
        .get("pk")
        .and_then(|kind| kind.parse::<QuotaPeriod>().ok())
        .zip(number("ps").zip(number("pe")))
        .map(|(kind, (start, end))| (kind, start, end));
    let mut days: HashMap<i64, (u64, u64)> = HashMap::new();
    for (name, value) in fields {
        let Some(rest) = name.strip_prefix("d:") else {
            continue;
        };
        let Some((day, which)) = rest.split_once(':') else {
            continue;
        };
        let (Ok(day), Ok(value)) = (day.parse::<i64>(), value.parse::<u64>()) else {
            continue;
        };
        let entry = days.entry(day).or_default();
        match which {
            "u" => entry.0 = value,
            "r" => entry.1 = value,
            _ => {}
        }
    }
    // Units leased out and not yet spent are not admitted requests; units
    // a replica that stopped reporting may have spent count as used.
    let leased = (number("leased").unwrap_or(0) - lost_units(fields, now_us)).max(0);
    Counter::restored(
        period,
        number("used").map_or(0, |u| (u - leased).max(0) as u64),
        number("allow").map(|a| a.max(0) as u64),
        days.into_iter()
            .map(|(day, (used, remaining))| (day, used, remaining))
            .collect(),
    )
}

// A test support file, written for the integration tests.
#[cfg(test)]
#[allow(unreachable_pub)]
#[path = "../../tests/support/redis_server.rs"]
pub(crate) mod redis_server;

// A test support file, written for the integration tests.
#[cfg(test)]
#[allow(unreachable_pub)]
#[path = "../../tests/support/day.rs"]
pub(crate) mod day;

#[cfg(test)]
#[path = "redis_script_tests.rs"]
mod script_tests;

#[cfg(test)]
#[path = "redis_control_tests.rs"]
mod control_tests;

#[cfg(test)]
#[path = "redis_restore_tests.rs"]
mod restore_tests;
