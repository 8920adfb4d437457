//! The local side of leases: slices of quota and tokens that a replica took
//! from Redis and spends without a round trip.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;

use super::{CounterKey, Decision, DecisionRequest, QuotaRule, QuotaState, ThrottleState, Verdict};
use crate::decision::CachedCounter;
use crate::model::Throttle;
use crate::prehashed::Prehashed;

/// How big and how long-lived leases are.
///
/// ```
/// use std::time::Duration;
/// use tower_usage_plans::store::LeaseConfig;
///
/// let config = LeaseConfig { max_units: 32, max_tokens: 8, ttl: Duration::from_millis(500) };
/// # drop(config);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The most quota units one lease takes. A lease asks for what the
    /// replica would spend of the key's last lease in 1.5 lifetimes, at
    /// that rate (one unit for an idle key), and Redis grants at most an eighth
    /// of what remains, so slices shrink to nothing near the limit.
    pub max_units: u64,
    /// The most throttle tokens one lease takes, sized the same way; Redis
    /// grants at most half the bucket.
    pub max_tokens: u64,
    /// How long a lease may be spent before it is given back. A lease
    /// its replica neither gives back nor reports on (the replica died)
    /// is reclaimed in Redis 250 ms later: all but the units it
    /// may have spent without reporting them are admittable again.
    pub ttl: Duration,
}

/// How long after a lease expires Redis reclaims it from a replica that
/// did not give it back (time for the replica's own give-back, every
/// 200 ms, and for clocks a little apart).
pub(crate) const RECLAIM_GRACE: Duration = Duration::from_millis(250);

/// A lease of `granted` units may have at most `granted / UNREPORTED_SHARE`
/// (rounded up) spent and not yet acknowledged by Redis: past that the
/// replica decides in Redis (and takes a new lease) until its report
/// lands. Those are the units a replica that dies takes with it; the rest
/// of its lease is reclaimed. Half: a lease is sized for 1.5 lifetimes
/// (1.5 s) at the key's rate, so half of it lasts 750 ms, and the gateway
/// reports every 200 ms: at a steady rate a report lands long before half
/// is spent and the cap costs no round trip. (Sized for half a lifetime,
/// half a lease lasted 250 ms, about one report's time plus its round trip:
/// a third of the requests went to Redis, and the leased bench fell from
/// 0.68x the in-memory store to 0.04x.) The loss stays at most 1/16 of what remained
/// per lease (a lease is at most an eighth of it). `redis.lua` grants with
/// it (the script's `share`).
pub(crate) const UNREPORTED_SHARE: u64 = 2;

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            max_units: 1 << 16,
            max_tokens: 1 << 16,
            ttl: Duration::from_secs(1),
        }
    }
}

/// What a lease still holds, to give back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Unspent {
    pub(crate) units: u64,
    pub(crate) granted: u64,
    /// Requests admitted from the lease (each spent a unit when it holds
    /// quota, a token when it holds a throttle's).
    pub(crate) admitted: u64,
    /// Of the admitted requests, how many were already reported to Redis.
    pub(crate) reported: u64,
    /// Of the reported, how many Redis acknowledged.
    pub(crate) landed: u64,
    /// The most admitted and not yet acknowledged at once (0 without units).
    pub(crate) cap: u64,
    pub(crate) tokens: u64,
    /// Tokens granted (`tokens` is what is left of them).
    pub(crate) granted_tokens: u64,
    /// The generation of this replica's leases in Redis it belongs to: a
    /// lease Redis reclaimed belongs to an older one.
    pub(crate) gen: u64,
    /// The quota period the units belong to (Unix seconds).
    pub(crate) period_start: i64,
    /// The UTC day it was granted on (days since the Unix epoch): its
    /// admitted requests are recorded there.
    pub(crate) day: i64,
    /// The counter's epoch when granted: a revocation starts a new one.
    pub(crate) epoch: u64,
    /// The id of its report on its way (0: none; one at a time). A lease
    /// given back while it is unanswered names it: Redis then knows
    /// whether that report was applied (its units no longer pending).
    pub(crate) report_call: u64,
}

impl Unspent {
    /// Requests admitted locally and not yet reported.
    pub(crate) fn unreported(&self) -> u64 {
        self.admitted.saturating_sub(self.reported)
    }

    /// Requests reported and not yet acknowledged.
    pub(crate) fn pending(&self) -> u64 {
        self.reported.saturating_sub(self.landed)
    }

    /// Whether one more unit may be spent: fewer than `cap` are spent and
    /// unacknowledged.
    fn may_spend_unit(&self) -> bool {
        self.units > 0 && self.admitted.saturating_sub(self.landed) < self.cap
    }

    /// Whether giving it back changes anything: units or tokens to return,
    /// or admitted requests to report.
    pub(crate) fn holds(&self) -> bool {
        self.granted > 0 || self.granted_tokens > 0 || self.unreported() > 0
    }
}

/// One lease, as granted.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Lease {
    pub(crate) unspent: Unspent,
    pub(crate) period_end: i64,
    /// When it was granted (Unix µs, the deciding request's clock): it is
    /// given back and reported as of then.
    pub(crate) granted_us: i64,
    pub(crate) expires_us: i64,
    /// When it expires by the wall clock (Unix µs): a replica paused since
    /// a request took its time spends it no later.
    pub(crate) wall_expires_us: i64,
    /// The shared remaining quota when granted (for the headers).
    pub(crate) shared_remaining: u64,
    /// The shared bucket's whole tokens when granted (for the headers).
    pub(crate) shared_tokens: u64,
    /// The rules it was granted under, to give it back.
    pub(crate) throttle: Option<Throttle>,
    pub(crate) quota: Option<QuotaRule>,
    /// A request took it back to renew it in Redis (what it held, on its
    /// way back): until the new lease is kept, the slot's other requests
    /// wait for it (or are decided in Redis) instead of each asking for a
    /// one-unit lease of its own (each of which then renewed again: six
    /// script calls a key a second, not one).
    pub(crate) renewing: Option<Unspent>,
    /// The number of the renewal `renewing` belongs to (see [`Renewal`]).
    pub(crate) renewal: u64,
    /// The units and tokens it had spent when its latest slice, taken
    /// ahead, was merged in: what it spends from then on sizes the next
    /// lease, and says when that one is due (see [`Leases::try_spend`]).
    pub(crate) spent_before: (u64, u64),
}

impl Lease {
    /// When it was granted.
    pub(crate) fn granted_at(&self) -> crate::UnixNanos {
        crate::UnixNanos::new(self.granted_us.saturating_mul(1_000))
    }

    /// The units and tokens of its latest slice (merged in with what was
    /// left of the ones before), and how many of them it spent.
    fn latest_slice(&self) -> ((u64, u64), (u64, u64)) {
        let unspent = &self.unspent;
        let slice = (
            unspent.granted.saturating_sub(self.spent_before.0),
            unspent.granted_tokens.saturating_sub(self.spent_before.1),
        );
        let spent = (
            slice.0.saturating_sub(unspent.units),
            slice.1.saturating_sub(unspent.tokens),
        );
        (slice, spent)
    }
}

/// How close to its end a lease takes the next one ahead: a quarter of its
/// lifetime or of its latest slice left (see [`Leases::try_spend`]).
const AHEAD_SHARE: u64 = 4;

/// The leases of one replica, per (counter, bucket).
#[derive(Debug, Default)]
pub(crate) struct Leases {
    pub(crate) config: LeaseConfig,
    /// This replica's name in the holders' records in Redis.
    holder: Box<str>,
    /// This store's id in the counter keys that remember their plan-wide
    /// lease's cell (see [`try_spend`](Self::try_spend)).
    id: u64,
    slots: DashMap<Slot, LeaseCell, SlotHashed>,
    /// Per counter, the epoch below which leases are revoked: a lease of an
    /// older epoch that arrives late (granted before the revocation, kept
    /// after it) is never spent.
    revoked_below: DashMap<CounterKey, u64, Prehashed>,
    /// Leases taken out of use (revoked or replaced) whose unspent units,
    /// tokens and unreported spending still go back to Redis.
    dropped: Mutex<Vec<(Slot, Lease)>>,
    /// Until when (Unix µs, wall clock) this replica is registered as a
    /// lease holder, listening for revocations: past it, no lease is spent
    /// or taken.
    listening_until_us: AtomicI64,
    /// Woken when the registration is renewed.
    registered: tokio::sync::Notify,
    /// What the next lease of a slot whose lease expired and went back
    /// asks for (see [`want`](Self::want)), and when that was (Unix µs):
    /// without it the key's next lease asks for one unit again.
    rates: DashMap<Slot, ((u64, u64), i64), SlotHashed>,
    /// The slots being renewed, each with what wakes the requests waiting
    /// for its new lease.
    renewals: DashMap<Slot, Arc<tokio::sync::Notify>, SlotHashed>,
    /// The slots whose lease's report is on its way with requests waiting
    /// for it, each with what wakes them once it is answered (or unsure).
    reports: DashMap<Slot, Arc<tokio::sync::Notify>, SlotHashed>,
    /// The last id given to a call on this replica's records in Redis.
    calls: AtomicU64,
    /// The last number given to a renewal.
    renewal_numbers: AtomicU64,
    /// Calls on its records that this replica stopped waiting for, to send
    /// again or settle (see [`Unsure`]).
    unsure: Mutex<Vec<Unsure>>,
    /// Give-backs, reports and settles taken out to be sent, until
    /// answered or unsure: a restore counts what they hold. (One still
    /// waiting to be sent when Redis lost its data goes out after the
    /// restore, which Redis then takes as counted by it: uncounted, its
    /// requests were admitted again, 32,768 over a quota in one test run.)
    /// Renewals are not kept here: the slot they renew counts what they
    /// gave back.
    sending: Mutex<HashMap<u64, Unsure>>,
    /// The ids of the calls sent and not yet answered (on their way, or
    /// unsure): Redis keeps its record of the calls it applied from the
    /// oldest of them on.
    open_calls: Mutex<BTreeSet<u64>>,
}

/// How long a call this replica stopped waiting for is sent again (or
/// settled): within the minute `redis.lua` keeps its record of the calls
/// it applied. One given up on is left as it is: a lease's grant stays
/// reclaimable (all but half its units come back), a give-back's units
/// come back when Redis reclaims them.
pub(crate) const UNSURE_FOR: Duration = Duration::from_secs(50);

/// A call on this replica's lease record in Redis that it stopped waiting
/// for (a timeout, or its request gone), so it cannot tell whether Redis
/// applied it, or will (a stalled Redis runs what it was sent once it
/// resumes). It is sent again with the same id, which Redis does not apply
/// twice, or, for a lease, settled: see `redis.lua`, "Calls". Without
/// this, a grant applied after the replica gave up stayed counted as spent
/// (half of it, when reclaimed), and a give-back sent again went back twice.
#[derive(Debug, Clone)]
pub(crate) struct Unsure {
    pub(crate) slot: Slot,
    /// The lease it gave back (for a lease call, what the call gave back,
    /// as of the deciding request's time and rules), or reported on.
    pub(crate) lease: Lease,
    pub(crate) call: u64,
    pub(crate) kind: CallKind,
    /// When it was first sent (Unix µs, wall clock).
    pub(crate) since_us: i64,
}

/// What an [`Unsure`] call was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// A decision that gave a lease back and asked for a new one; or,
    /// taken ahead (`decides` false), a new slice alone.
    Lease {
        /// Whether it decided a request (not taken ahead).
        decides: bool,
    },
    /// A lease given back.
    Return,
    /// A report of this many requests admitted from the lease.
    Report(u64),
}

impl Unsure {
    /// A call with a new id of `leases`, sent now.
    pub(crate) fn new(leases: &Leases, slot: Slot, lease: Lease, kind: CallKind) -> Self {
        let mut open = leases.open_calls.lock();
        let call = leases.calls.fetch_add(1, Ordering::Relaxed) + 1;
        open.insert(call);
        Self {
            slot,
            lease,
            call,
            kind,
            since_us: jiff::Timestamp::now().as_microsecond(),
        }
    }
}

/// A call on its way: unless [`answered`](Self::answered), it counts as
/// [`Unsure`] once dropped (timed out, failed, or its request gone).
#[derive(Debug)]
pub(crate) struct PendingCall {
    leases: Arc<Leases>,
    call: Option<Unsure>,
}

impl PendingCall {
    /// A give-back, a report, or a lease call settled: on its way, a
    /// restore counts what it holds.
    pub(crate) fn new(leases: &Arc<Leases>, call: Unsure) -> Self {
        leases.sending.lock().insert(call.call, call.clone());
        Self {
            leases: leases.clone(),
            call: Some(call),
        }
    }

    /// A lease call that renews a slot, which counts what it gave back.
    pub(crate) fn renewal(leases: &Arc<Leases>, call: Unsure) -> Self {
        Self {
            leases: leases.clone(),
            call: Some(call),
        }
    }

    /// Redis answered it.
    pub(crate) fn answered(mut self) {
        if let Some(call) = self.take() {
            self.leases.closed(call.call);
        }
    }

    /// The call, taken out: no longer on its way.
    fn take(&mut self) -> Option<Unsure> {
        let call = self.call.take()?;
        self.leases.sending.lock().remove(&call.call);
        Some(call)
    }

    /// The call (`None` once taken out).
    pub(crate) fn call(&self) -> Option<&Unsure> {
        self.call.as_ref()
    }

    /// Redis answered it: the call, for the caller to follow the answer
    /// (and close it).
    pub(crate) fn into_call(mut self) -> Option<Unsure> {
        self.take()
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            // Unsure before it stops being on its way: a restore between
            // the two would not count it.
            let mut unsure = self.leases.unsure.lock();
            self.leases.sending.lock().remove(&call.call);
            let report = matches!(call.kind, CallKind::Report(_)).then(|| call.slot.clone());
            unsure.push(call);
            drop(unsure);
            // Its requests waited long enough: they decide in Redis.
            if let Some(slot) = report {
                self.leases.report_over(&slot);
            }
        }
    }
}

/// A lease per counter and bucket (plan-wide or one method's).
pub(crate) type Slot = (CounterKey, BucketName);

/// Where a slot's lease lives. A plan-wide slot's cell is remembered in its
/// [`CounterKey`] and stays that slot's cell while the key lives: taken out
/// of `slots` (expired), it is emptied, and put back in when the slot is
/// leased again. A request then finds its lease without a lookup.
type LeaseCell = Arc<Mutex<Lease>>;

/// A throttle bucket's name in a [`Slot`]: a method's (`"/pets/GET"`), or
/// empty for the plan-wide bucket.
///
/// Two empty names compare equal without a `memcmp`: an empty `Box<str>`
/// points at a dangling address, and glibc's AVX-512 `memcmp` reads it
/// with a masked load that, on an unmapped page, costs a microcode assist.
/// Compared as `Box<str>`, the plan-wide bucket's names were 6% of the
/// leased bench's worker time (`perf annotate`: the masked compare).
#[derive(Debug, Clone, Default, Eq)]
pub(crate) struct BucketName(Box<str>);

impl BucketName {
    /// Whether it names the plan-wide bucket.
    fn is_plan_wide(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for BucketName {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && (self.0.is_empty() || self.0 == other.0)
    }
}

impl std::hash::Hash for BucketName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl From<&str> for BucketName {
    fn from(name: &str) -> Self {
        Self(name.into())
    }
}

impl std::fmt::Display for BucketName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hashes a [`Slot`]: the counter key's own hash (written with
/// `write_u64`) with the bucket name's bytes mixed in (FNV-1a; names come
/// from the plan's configuration, not from clients), the plan-wide
/// bucket's empty name in one step. No SipHash on a leased request.
#[derive(Default, Clone, Copy)]
pub(crate) struct SlotHasher(u64);

impl std::hash::Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 ^= hash;
    }
}

/// Maps keyed by [`Slot`].
pub(crate) type SlotHashed = std::hash::BuildHasherDefault<SlotHasher>;

pub(crate) fn slot_key(request: &DecisionRequest<'_>) -> Slot {
    let bucket = request.throttle.and_then(|t| t.method).unwrap_or("");
    (request.counter.clone(), bucket.into())
}

impl Leases {
    pub(crate) fn new(config: LeaseConfig) -> Self {
        Self {
            config,
            holder: format!("{:016x}", rand::random::<u64>()).into(),
            id: crate::decision::next_store_id(),
            ..Self::default()
        }
    }

    /// The field of the hash that records this replica's leases of `slot`
    /// (see `redis.lua`).
    pub(crate) fn record(&self, slot: &Slot) -> String {
        format!("h:{}:{}", self.holder, slot.1)
    }

    /// The field of a counter put back after a loss that says this replica
    /// put it back too (`hr:<replica>`, see "restore" in `redis.lua`).
    pub(crate) fn restored_mark(&self) -> String {
        format!("hr:{}", self.holder)
    }

    /// Whether leases may be taken and spent now: only while this replica
    /// is registered as a holder and hears revocations. The wall clock, as
    /// the registration's (a request's own clock may be a test's).
    pub(crate) fn active(&self) -> bool {
        self.active_at(jiff::Timestamp::now().as_microsecond())
    }

    /// As [`active`](Self::active), at `wall_us` (the wall clock, Unix µs).
    pub(crate) fn active_at(&self, wall_us: i64) -> bool {
        wall_us < self.listening_until_us.load(Ordering::Acquire)
    }

    /// Registered (and listening) until `until_us`; 0 stops all spending.
    pub(crate) fn listen_until(&self, until_us: i64) {
        self.listening_until_us.store(until_us, Ordering::Release);
        if until_us > 0 {
            self.registered.notify_waiters();
        }
    }

    /// Returns once leases may be taken (the registration holds).
    pub(crate) async fn until_active(&self) {
        loop {
            let renewed = self.registered.notified();
            if self.active() {
                return;
            }
            renewed.await;
        }
    }

    /// Revokes every lease of `counter` older than `epoch`: none is spent
    /// from now on, and what they hold waits in `dropped` to go back.
    pub(crate) fn revoke(&self, counter: &CounterKey, epoch: u64) {
        {
            let mut below = self.revoked_below.entry(counter.clone()).or_default();
            *below = (*below).max(epoch);
        }
        self.drop_leases_of(counter, epoch);
    }

    /// Takes `counter`'s leases older than `epoch` out of use, into
    /// `dropped`, under its lock (see `outstanding`).
    fn drop_leases_of(&self, counter: &CounterKey, epoch: u64) {
        let mut dropped = self.dropped.lock();
        for slot in self.slots.iter() {
            if slot.key().0 == *counter {
                let mut lease = slot.value().lock();
                if lease.unspent.epoch < epoch {
                    dropped.extend(take_held(slot.key(), &mut lease));
                }
            }
        }
    }

    /// Takes every lease out of use (after a gap in listening, when a
    /// revocation may have been missed).
    pub(crate) fn revoke_all(&self) {
        // Moved under `dropped`'s lock (see `outstanding`).
        let mut dropped = self.dropped.lock();
        dropped.extend(self.drain());
    }

    /// The calls to send again or settle.
    pub(crate) fn take_unsure(&self) -> Vec<Unsure> {
        std::mem::take(&mut *self.unsure.lock())
    }

    /// Redis answered `call`, or it is given up on.
    pub(crate) fn closed(&self, call: u64) {
        self.open_calls.lock().remove(&call);
    }

    /// The oldest call sent and not yet answered (or the next one): Redis
    /// may forget the calls it applied before it.
    pub(crate) fn oldest_open_call(&self) -> u64 {
        let open = self.open_calls.lock();
        open.first()
            .copied()
            .unwrap_or_else(|| self.calls.load(Ordering::Relaxed) + 1)
    }

    /// The leases taken out of use, to give back.
    pub(crate) fn take_dropped(&self) -> Vec<(Slot, Lease)> {
        std::mem::take(&mut *self.dropped.lock())
    }

    /// Marks what live leases spent since the last report as reported,
    /// and returns the reports to make, one per lease (none for a lease
    /// whose last report is still on its way).
    pub(crate) fn take_unreported(&self) -> Vec<Unsure> {
        self.take_unreported_where(|_| true)
    }

    /// [`take_unreported`](Self::take_unreported) for `counter`'s leases
    /// only (its plan-wide bucket's and its methods').
    pub(crate) fn take_unreported_of(&self, counter: &CounterKey) -> Vec<Unsure> {
        self.take_unreported_where(|(of, _)| of == counter)
    }

    /// [`take_unreported`](Self::take_unreported) for the slots `which`
    /// picks.
    fn take_unreported_where(&self, which: impl Fn(&Slot) -> bool) -> Vec<Unsure> {
        let mut out = Vec::new();
        for slot in self.slots.iter().filter(|slot| which(slot.key())) {
            let mut lease = slot.value().lock();
            let n = lease.unspent.unreported();
            if n > 0 && lease.unspent.pending() == 0 {
                lease.unspent.reported += n;
                let mut report = Unsure::new(self, slot.key().clone(), *lease, CallKind::Report(n));
                lease.unspent.report_call = report.call;
                report.lease.unspent.report_call = report.call;
                out.push(report);
            }
        }
        out
    }

    /// A report Redis did not count (its counter was gone): its `n`
    /// requests are unreported again, if the lease is still the same one.
    /// Whether it was (else the report must go out again: nothing else
    /// carries its requests).
    pub(crate) fn unreport(&self, slot: &Slot, lease: &Lease, n: u64) -> bool {
        let mut same = false;
        self.with_same(slot, lease, |current| {
            current.unspent.reported = current.unspent.reported.saturating_sub(n);
            current.unspent.report_call = 0;
            same = true;
        });
        self.report_over(slot);
        same
    }

    /// `call` goes out again with the calls left unanswered.
    pub(crate) fn send_again(&self, call: Unsure) {
        self.unsure.lock().push(call);
    }

    /// A report Redis took: `n` more may be spent, if the lease is still
    /// the same one; one taken out of use meanwhile (in `dropped`) goes
    /// back with the report counted. (Left unacknowledged there, a loss
    /// that came before it went back counted what the report said twice:
    /// once in the copy, which followed the report's answer, once as what
    /// the lease admitted unacknowledged: 19,787 in a test run.)
    pub(crate) fn landed(&self, slot: &Slot, lease: &Lease, n: u64) {
        let mut dropped = self.dropped.lock();
        self.with_same_live_or_dropped(&mut dropped, slot, lease, |current, _| {
            current.unspent.landed += n;
            current.unspent.report_call = 0;
        });
        drop(dropped);
        self.report_over(slot);
    }

    /// Waits until the report on its way of `slot`'s lease, if any, is
    /// answered (or unsure): a request that found the lease spent (as far
    /// as it may be spent unacknowledged) or expired then spends or renews
    /// it, instead of a script call of its own while the report is out
    /// (the lease cannot be renewed then, see
    /// [`take_unspent`](Self::take_unspent)). `None` if none is on its way.
    pub(crate) fn report_under_way(
        self: &Arc<Self>,
        slot: &Slot,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        if !self.report_pending(slot) {
            return None;
        }
        let answered = self.reports.entry(slot.clone()).or_default().clone();
        let (leases, slot) = (self.clone(), slot.clone());
        Some(async move {
            let notified = answered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Answered before this waiter was registered: nothing to wait
            // for (the answer is followed before the waiters are woken).
            if leases.report_pending(&slot) {
                notified.await;
            }
        })
    }

    /// Whether `slot`'s lease has a report on its way.
    fn report_pending(&self, slot: &Slot) -> bool {
        self.slots
            .get(slot)
            .is_some_and(|lease| lease.lock().unspent.pending() > 0)
    }

    /// Wakes the requests waiting for the report of `slot`'s lease.
    fn report_over(&self, slot: &Slot) {
        if let Some((_, answered)) = self.reports.remove(slot) {
            answered.notify_waiters();
        }
    }

    /// A report Redis took for a lease it had reclaimed: the lease is
    /// spent no more, and goes back.
    pub(crate) fn reclaimed(&self, slot: &Slot, lease: &Lease) {
        // Moved under `dropped`'s lock (see `outstanding`).
        let mut dropped = self.dropped.lock();
        let mut taken = Vec::new();
        self.with_same_live_or_dropped(&mut dropped, slot, lease, |current, live| {
            // Redis counted the report: none is on its way.
            current.unspent.landed = current.unspent.reported;
            current.unspent.report_call = 0;
            if live {
                taken.extend(take_held(slot, current));
            }
        });
        dropped.extend(taken);
        drop(dropped);
        self.report_over(slot);
    }

    /// Runs `f` on the live lease of `slot` if it is (a later state of)
    /// `lease`.
    fn with_same(&self, slot: &Slot, lease: &Lease, f: impl FnOnce(&mut Lease)) {
        if let Some(current) = self.slots.get(slot) {
            let mut current = current.lock();
            if same_grant(&current, lease) {
                f(&mut current);
            }
        }
    }

    /// As [`with_same`](Self::with_same) (`f` told `true`: the lease is
    /// live), or on `lease` among `dropped` (this store's, locked by the
    /// caller) if it was taken out of use (`false`).
    fn with_same_live_or_dropped(
        &self,
        dropped: &mut [(Slot, Lease)],
        slot: &Slot,
        lease: &Lease,
        f: impl FnOnce(&mut Lease, bool),
    ) {
        let mut f = Some(f);
        self.with_same(slot, lease, |current| {
            if let Some(f) = f.take() {
                f(current, true);
            }
        });
        let Some(f) = f else { return };
        if let Some((_, taken_out)) = dropped
            .iter_mut()
            .find(|(at, taken_out)| at == slot && same_grant(taken_out, lease))
        {
            f(taken_out, false);
        }
    }

    /// Where `counter` remembers its plan-wide lease's cell, if that is this
    /// store's: the cell is in `slots`, or was taken out of it (then empty,
    /// and not live).
    fn remembered<'k>(&self, counter: &'k CounterKey) -> Option<&'k CachedCounter> {
        counter
            .cached_lease()
            .get()
            .filter(|cached| cached.store == self.id)
    }

    /// Remembers `cell`, the plan-wide slot's cell in `slots`, in its key
    /// (unless the key remembers one already).
    fn remember(&self, counter: &CounterKey, cell: &LeaseCell) {
        let cached = counter.cached_lease();
        if cached.get().is_none() {
            let _ = cached.set(CachedCounter {
                store: self.id,
                cell: cell.clone(),
            });
        }
    }

    /// The slot's entry, created if missing: a plan-wide slot's with the
    /// cell its key remembers (emptied when it was taken out, and nothing
    /// spends or fills a cell out of `slots`), so that the key's cell is
    /// always the one in `slots`.
    fn slot_entry(&self, slot: &Slot) -> dashmap::mapref::one::RefMut<'_, Slot, LeaseCell> {
        self.slots.entry(slot.clone()).or_insert_with(|| {
            slot.1
                .is_plan_wide()
                .then(|| self.remembered(&slot.0))
                .flatten()
                .and_then(|cached| cached.cell.clone().downcast::<Mutex<Lease>>().ok())
                .unwrap_or_default()
        })
    }

    /// Spends one unit and one token of a live lease, if it has them. The
    /// caller checked that leases are [`active_at`](Self::active_at)
    /// `wall_us`, the wall clock now (Unix µs), read once per decision.
    ///
    /// With the decision comes a [`Renewal`] when the lease nears its end
    /// (a quarter of its lifetime, or of its latest slice, left) and none
    /// is under way: the caller then takes the next lease ahead, in the
    /// background, while this one is still spent. (Renewed only once spent
    /// or expired, every request of a key waited for its renewal's round
    /// trip, and keys leased together came due together: each second the
    /// bench's 1,000 keys renewed within ~200 ms, at half its throughput.)
    pub(crate) fn try_spend(
        self: &Arc<Self>,
        request: &DecisionRequest<'_>,
        now_us: i64,
        wall_us: i64,
    ) -> Option<(Decision, Option<Renewal>)> {
        let plan_wide = request.throttle.and_then(|t| t.method).is_none();
        let remembered = plan_wide
            .then(|| self.remembered(request.counter))
            .flatten()
            .and_then(|cached| cached.cell.downcast_ref::<Mutex<Lease>>());
        let found;
        let cell = match remembered {
            Some(cell) => cell,
            None => {
                found = self.slots.get(&slot_key(request))?;
                if plan_wide {
                    self.remember(request.counter, found.value());
                }
                found.value()
            }
        };
        let mut lease = cell.lock();
        let now = now_us.div_euclid(1_000_000);
        let live = now_us < lease.expires_us
            && request.quota.is_none_or(|_| {
                // Units belong to the period they were granted in.
                lease.unspent.may_spend_unit()
                    && (lease.unspent.period_start..lease.period_end).contains(&now)
            })
            && request.throttle.is_none_or(|_| lease.unspent.tokens > 0)
            // Only under the rules it was granted for: a plan whose
            // throttle or quota changed decides anew.
            && lease.throttle == request.throttle.map(|rule| rule.throttle)
            && lease.quota == request.quota
            // Redis reclaims it a grace after it expires: never spent then,
            // whatever time the request took before a pause.
            && wall_us < lease.wall_expires_us;
        if !live {
            return None;
        }
        if request.quota.is_some() {
            lease.unspent.units -= 1;
        }
        if request.throttle.is_some() {
            lease.unspent.tokens -= 1;
        }
        lease.unspent.admitted += 1;
        let ahead = self.due_ahead(&lease, now_us).then(|| {
            lease.renewing = Some(Unspent::default());
            let joins = lease.unspent.cap;
            self.renewal_of(&mut lease, &slot_key(request), true, Some(joins))
        });
        let decision = Decision {
            verdict: Verdict::Admitted,
            throttle: request.throttle.map(|rule| {
                let burst = rule.throttle.burst_limit;
                // The shared bucket as of the last refresh, with this
                // replica's unspent slice: never more than it holds.
                let tokens = u32::try_from(lease.shared_tokens + lease.unspent.tokens)
                    .unwrap_or(u32::MAX)
                    .min(burst);
                ThrottleState {
                    burst_limit: burst,
                    tokens,
                    // A whole token away at most (the lease holds no fractions).
                    next_token_secs: if tokens >= burst {
                        0
                    } else {
                        crate::limit::secs_until(1.0, rule.throttle.rate_limit)
                    },
                    retry_after_secs: 0,
                }
            }),
            quota: request.quota.map(|rule| QuotaState {
                limit: rule.quota.limit,
                remaining: lease.shared_remaining + lease.unspent.units,
                period_secs: u64::try_from(lease.period_end - lease.unspent.period_start)
                    .unwrap_or(0),
                reset_secs: u64::try_from(lease.period_end - now).unwrap_or(0).max(1),
            }),
        };
        Some((decision, ahead))
    }

    /// Whether `lease`, just spent at `now_us`, takes its next lease ahead:
    /// none is under way, and a quarter of its lifetime or of its latest
    /// slice (of units, or of tokens) is left.
    ///
    /// A lease of a throttle takes the next slice ahead only while all it
    /// was granted, that slice included, stays within half the burst. Its
    /// tokens count against the shared bucket until the lease goes back,
    /// spent or not (Redis cannot tell which), and a slice taken ahead
    /// joins the lease: a busy key's lease held ever more of the bucket,
    /// whose refill stopped at what was left, and the requests decided in
    /// Redis meanwhile (this replica's own, when the lease ran out) were
    /// refused `Too Many Requests` far under the rate (rate 10,000/s, burst
    /// 5,000, 4,000 requests/s: the lease held 4,960 of the 5,000, and 3 to
    /// 14 requests a run were refused). Beyond half, the lease runs out and
    /// goes back whole, its tokens with it, when the next one is taken.
    fn due_ahead(&self, lease: &Lease, now_us: i64) -> bool {
        let ttl_us = i64::try_from(self.config.ttl.as_micros()).unwrap_or(i64::MAX);
        let (slice, _) = lease.latest_slice();
        let low = |left: u64, of: u64| of > 0 && left.saturating_mul(AHEAD_SHARE) <= of;
        let within_half_the_burst = lease.throttle.is_none_or(|throttle| {
            let held = lease.unspent.granted_tokens.saturating_add(slice.1);
            held.saturating_mul(2) <= u64::from(throttle.burst_limit)
        });
        lease.renewing.is_none()
            && within_half_the_burst
            && (lease.expires_us.saturating_sub(now_us) <= ttl_us / AHEAD_SHARE as i64
                || low(lease.unspent.units, slice.0)
                || low(lease.unspent.tokens, slice.1))
    }

    /// Starts a renewal of `slot`, whose lease is `lease` (locked, marked
    /// renewing): the slot's requests that find it spent wait for it if
    /// `waited_for`.
    fn renewal_of(
        self: &Arc<Self>,
        lease: &mut Lease,
        slot: &Slot,
        waited_for: bool,
        ahead: Option<u64>,
    ) -> Renewal {
        let number = self.renewal_numbers.fetch_add(1, Ordering::Relaxed) + 1;
        lease.renewal = number;
        let waited_for = waited_for.then(|| {
            let renewed = Arc::new(tokio::sync::Notify::new());
            self.renewals.insert(slot.clone(), renewed.clone());
            renewed
        });
        Renewal {
            leases: self.clone(),
            slot: slot.clone(),
            number,
            waited_for,
            ahead,
        }
    }

    /// Takes back, into this replica's lease, the charge of a metered
    /// request it admitted and the upstream never saw, while the lease
    /// holds admissions not yet reported (of the request's day, under the
    /// same rules): the request is then never reported, and its unit and
    /// token go back with the lease. `false`: Redis takes the refund. Refunded
    /// in Redis instead, the lease would report the request later, and
    /// GetUsage count it.
    pub(crate) fn try_refund(&self, request: &DecisionRequest<'_>) -> bool {
        let Some(slot) = self.slots.get(&slot_key(request)) else {
            return false;
        };
        let mut lease = slot.lock();
        let then = request.now.get().div_euclid(1_000_000_000);
        // A request without quota is counted all the same (its refund
        // gives back only its token): Redis takes it.
        let ours = request.quota.is_some()
            && lease.unspent.unreported() > 0
            && lease.unspent.day == then.div_euclid(crate::limit::period::DAY_SECS)
            && (lease.unspent.period_start..lease.period_end).contains(&then)
            && lease.throttle == request.throttle.map(|rule| rule.throttle)
            && lease.quota == request.quota
            && request
                .throttle
                .is_none_or(|_| lease.unspent.tokens < lease.unspent.granted_tokens);
        if !ours {
            return false;
        }
        lease.unspent.admitted -= 1;
        lease.unspent.units += 1;
        if request.throttle.is_some() {
            lease.unspent.tokens += 1;
        }
        true
    }

    /// What the next lease of this slot asks for (units, tokens): what the
    /// last one's spending rate spends in 1.5 lease lifetimes, at least
    /// one and at most the configured most. A key's first lease asks for
    /// one of each; a hot key's grow with every lease it spends out fast.
    pub(crate) fn want(&self, slot: &Slot, now_us: i64) -> (u64, u64) {
        let Some(last) = self.slots.get(slot).map(|lease| *lease.lock()) else {
            // The rate of a lease that expired lately, if any.
            return self
                .rates
                .remove(slot)
                .filter(|(_, (_, at))| now_us.saturating_sub(*at) < self.rate_kept_us())
                .map_or((1, 1), |(_, (want, _))| want);
        };
        self.size(&last, now_us)
    }

    /// How long the rate of an expired lease is kept: two lifetimes.
    fn rate_kept_us(&self) -> i64 {
        i64::try_from(self.config.ttl.as_micros() * 2).unwrap_or(i64::MAX)
    }

    /// What a lease asks for after `last`, at `now_us`.
    fn size(&self, last: &Lease, now_us: i64) -> (u64, u64) {
        let ttl_us = u64::try_from(self.config.ttl.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let granted_us = last.expires_us.saturating_sub_unsigned(ttl_us);
        // From a millisecond up: a burst spent at once is no infinite rate.
        let since_us = u64::try_from(now_us.saturating_sub(granted_us))
            .unwrap_or(0)
            .max(1_000);
        let size = |spent: u64, most: u64| {
            let at_rate = u128::from(spent) * u128::from(ttl_us * 3 / 2) / u128::from(since_us);
            u64::try_from(at_rate)
                .unwrap_or(u64::MAX)
                .clamp(1, most.max(1))
        };
        let (_, spent) = last.latest_slice();
        (
            size(spent.0, self.config.max_units),
            size(spent.1, self.config.max_tokens),
        )
    }

    /// Takes what the lease of this slot still holds (the lease as it
    /// was, with what it holds).
    ///
    /// `None` while a report of it is on its way: given back now, the
    /// report would land after it and Redis could not tell that the units
    /// it reports were the lease's (the periodic give-back, which reports
    /// too, takes it back once the report landed).
    ///
    /// `None` too while another request renews it (see [`Renewal`]). The
    /// slot's other requests wait for a renewal that asks for `want` only
    /// if it asks for more than one unit and token: a key's first lease, or
    /// one near the end of the quota (Redis grants none), is not worth a
    /// round trip's wait before their own.
    pub(crate) fn take_unspent(
        self: &Arc<Self>,
        slot: &Slot,
        want: (u64, u64),
    ) -> Option<(Lease, Renewal)> {
        let entry = self.slot_entry(slot);
        let mut lease = entry.lock();
        if lease.renewing.is_some() || lease.unspent.pending() > 0 {
            return None;
        }
        let taken = Lease {
            unspent: std::mem::take(&mut lease.unspent),
            ..*lease
        };
        lease.renewing = Some(taken.unspent);
        lease.spent_before = (0, 0);
        let renewal = self.renewal_of(&mut lease, slot, want != (1, 1), None);
        Some((taken, renewal))
    }

    /// Keeps a new lease; one granted to a concurrent request in the same
    /// period and epoch is merged in, as is one taken `ahead` (which then
    /// lives as long as the new one: Redis keeps the holder's leases, one
    /// record, until the latest expires). A lease of a revoked epoch is
    /// never kept, and one it replaces goes back.
    pub(crate) fn keep(&self, key: Slot, lease: Lease, ahead: bool) {
        let mut out = Vec::new();
        {
            let slot = self.slot_entry(&key);
            let mut current = slot.lock();
            if current.unspent.granted > 0
                && current.unspent.period_start == lease.unspent.period_start
                && current.unspent.day == lease.unspent.day
                && current.unspent.epoch == lease.unspent.epoch
                && current.unspent.gen == lease.unspent.gen
                && current.throttle == lease.throttle
                && current.quota == lease.quota
            {
                if ahead {
                    current.spent_before = (
                        current.unspent.granted - current.unspent.units,
                        current.unspent.granted_tokens - current.unspent.tokens,
                    );
                    current.expires_us = lease.expires_us;
                    current.wall_expires_us = lease.wall_expires_us;
                } else {
                    current.expires_us = current.expires_us.min(lease.expires_us);
                    current.wall_expires_us = current.wall_expires_us.min(lease.wall_expires_us);
                }
                current.unspent.units += lease.unspent.units;
                current.unspent.granted += lease.unspent.granted;
                current.unspent.admitted += lease.unspent.admitted;
                current.unspent.tokens += lease.unspent.tokens;
                current.unspent.granted_tokens += lease.unspent.granted_tokens;
                current.unspent.cap += lease.unspent.cap;
                current.shared_remaining = lease.shared_remaining;
                current.shared_tokens = lease.shared_tokens;
            } else {
                let replaced = std::mem::replace(&mut *current, lease);
                if replaced.unspent.holds() {
                    out.push((key.clone(), replaced));
                }
            }
            // Checked after the lease is in place, under its lock: a
            // revocation either is seen here or finds the lease in `slots`.
            let revoked = self
                .revoked_below
                .get(&key.0)
                .is_some_and(|below| current.unspent.epoch < *below);
            if revoked {
                out.extend(take_held(&key, &mut current));
            }
        }
        if !out.is_empty() {
            self.dropped.lock().extend(out);
        }
    }

    /// A lease given back after its counter vanished: kept to go back
    /// again (and to be counted by the restore that puts the counter back)
    /// while it is recent; one older than 10 s (its counter expired, or
    /// was never restored) is forgotten.
    pub(crate) fn lost_with_counter(&self, slot: Slot, lease: Lease) {
        let now_us = jiff::Timestamp::now().as_microsecond();
        if lease.unspent.holds() && now_us < lease.wall_expires_us.saturating_add(10_000_000) {
            self.dropped.lock().push((slot, lease));
        }
    }

    /// Redis lost its data and the counters are being put back: every
    /// live lease is taken out of use (its epoch ended with the data; it
    /// goes back, adding nothing), and what this replica's leases admitted
    /// that Redis did not acknowledge is returned (in the leases just
    /// taken, those on their way back or being renewed, and in calls left
    /// unanswered), for the restore to add to what the copy says was
    /// admitted. Their unspent units are spent by no one and counted by
    /// no one: admittable again. (Counted as used, they were lost: 157–433
    /// of 5,000 in a black-box run with a lease out at each loss.)
    pub(crate) fn spent_at_loss(&self) -> Outstanding {
        self.revoke_all();
        self.outstanding()
    }

    /// As [`spent_at_loss`](Self::spent_at_loss), when Redis lost
    /// `counter` alone (deleted, evicted, or on a cluster node that lost
    /// its data): only its leases end.
    pub(crate) fn spent_at_loss_of(&self, counter: &CounterKey) -> Outstanding {
        // Every epoch's, with no revocation recorded: leases of the
        // counter put back are taken as before.
        self.drop_leases_of(counter, u64::MAX);
        self.outstanding()
    }

    /// What the leases taken out of use, on their way back, being renewed,
    /// or in calls left unanswered admitted that Redis did not acknowledge.
    ///
    /// `dropped` is locked first and held throughout: a lease taken out of
    /// its slot into `dropped` (revoked by a message on the channel, or
    /// reclaimed) moves under that lock, so this finds it in one place or
    /// the other: a revocation between this scan's slots and `dropped`
    /// (on the channel, not held up by a restore) would hide the lease
    /// from both, and what it admitted would not be put back. Lock order:
    /// `dropped`, then a slot.
    fn outstanding(&self) -> Outstanding {
        let mut out = Outstanding::default();
        let dropped = self.dropped.lock();
        for slot in self.slots.iter() {
            let lease = slot.value().lock();
            out.add(&slot.key().0, &lease, &lease.unspent);
            if let Some(taken) = &lease.renewing {
                out.add(&slot.key().0, &lease, taken);
            }
        }
        for ((counter, _), lease) in dropped.iter() {
            out.add(counter, lease, &lease.unspent);
        }
        let unsure = self.unsure.lock();
        let sending = self.sending.lock();
        let calls = || unsure.iter().chain(sending.values());
        for call in calls() {
            if !matches!(call.kind, CallKind::Report(_)) {
                out.add(&call.slot.0, &call.lease, &call.lease.unspent);
            }
        }
        // A report left unanswered (or not sent yet) is counted by its
        // lease while this replica has it (above); one whose lease went
        // back before the loss (Redis counted its units as pending, not as
        // admitted) alone.
        for call in calls() {
            if let CallKind::Report(n) = call.kind {
                out.add_report(&call.slot.0, &call.lease, call.call, n);
            }
        }
        out
    }

    /// The requests live leases admitted that were not reported yet.
    #[cfg(test)]
    pub(crate) fn unreported(&self) -> u64 {
        self.slots
            .iter()
            .map(|slot| slot.value().lock().unspent.unreported())
            .sum()
    }

    /// Takes every lease that still holds something, to give it all back.
    pub(crate) fn drain(&self) -> Vec<(Slot, Lease)> {
        let mut taken = Vec::new();
        self.slots.retain(|slot, lease| {
            taken.extend(take_held(slot, &mut lease.lock()));
            true
        });
        taken
    }

    /// Takes the leases that expired by `now_us` and still hold something
    /// (a replica that stops deciding for a key would otherwise keep its
    /// units counted as used until the period ends), and forgets them.
    pub(crate) fn drain_expired(&self, now_us: i64) -> Vec<(Slot, Lease)> {
        let mut taken = Vec::new();
        let kept_us = self.rate_kept_us();
        self.rates
            .retain(|_, (_, at)| now_us.saturating_sub(*at) < kept_us);
        self.slots.retain(|slot, cell| {
            let mut lease = cell.lock();
            if now_us < lease.expires_us {
                return true;
            }
            let want = self.size(&lease, now_us);
            if want != (1, 1) {
                self.rates.insert(slot.clone(), (want, now_us));
            }
            taken.extend(take_held(slot, &mut lease));
            // A slot being renewed stays: it counts what the renewal gave
            // back until the renewal is over. (Forgotten, a renewal held
            // up by a restore went uncounted by it, and its requests were
            // admitted again: 32,768 over a quota in a test run.)
            let stays = lease.renewing.is_some();
            if !stays {
                // Its key may still find it: nothing to spend.
                *lease = Lease::default();
            }
            stays
        });
        taken
    }
}

/// Whether `current` is (a later state of) `lease`: the same grant
/// (merged ones keep the first's time); a lease taken out and replaced
/// meanwhile is another.
fn same_grant(current: &Lease, lease: &Lease) -> bool {
    current.granted_us == lease.granted_us
        && current.unspent.epoch == lease.unspent.epoch
        && current.unspent.gen == lease.unspent.gen
        && current.unspent.period_start == lease.unspent.period_start
        && current.unspent.granted >= lease.unspent.granted
}

/// Quota units a replica's leases admitted that Redis did not acknowledge,
/// per counter, epoch and period start (see [`Leases::spent_at_loss`]).
#[derive(Debug, Default)]
// A `CounterKey`'s cell (interior mutability) plays no part in its hash or
// equality.
#[allow(clippy::mutable_key_type)]
pub(crate) struct Outstanding {
    units: HashMap<(CounterKey, u64, i64), u64>,
    /// The reports on their way that the leases added count.
    reports: HashSet<u64>,
}

impl Outstanding {
    fn add(&mut self, counter: &CounterKey, lease: &Lease, unspent: &Unspent) {
        if lease.quota.is_some() && unspent.granted > 0 {
            self.count(
                counter,
                unspent,
                unspent.admitted.saturating_sub(unspent.landed),
            );
            if unspent.pending() > 0 && unspent.report_call != 0 {
                self.reports.insert(unspent.report_call);
            }
        }
    }

    /// The report `call` of `n` requests `lease` admitted, unless a lease
    /// added counts it.
    fn add_report(&mut self, counter: &CounterKey, lease: &Lease, call: u64, n: u64) {
        if lease.quota.is_some() && !self.reports.contains(&call) {
            self.count(counter, &lease.unspent, n);
        }
    }

    /// `units` more of `counter` in the epoch and period of `unspent`.
    fn count(&mut self, counter: &CounterKey, unspent: &Unspent, units: u64) {
        *self
            .units
            .entry((counter.clone(), unspent.epoch, unspent.period_start))
            .or_default() += units;
    }

    /// The units out on leases of `counter` in `epoch`, in the period
    /// that starts at `start`.
    pub(crate) fn of(&self, counter: &CounterKey, epoch: u64, start: i64) -> u64 {
        self.units
            .get(&(counter.clone(), epoch, start))
            .copied()
            .unwrap_or(0)
    }
}

/// A slot's lease taken back to be renewed: the slot counts as renewing
/// until this is kept or dropped (the renewal failed, or granted nothing).
#[derive(Debug)]
pub(crate) struct Renewal {
    leases: Arc<Leases>,
    slot: Slot,
    /// Its number in the slot ([`Lease::renewal`]).
    number: u64,
    /// What wakes the requests waiting for it, if they wait.
    waited_for: Option<Arc<tokio::sync::Notify>>,
    /// Taken ahead, joining the slot's lease whose cap this is: that
    /// lease is still spent meanwhile, and gave nothing back.
    ahead: Option<u64>,
}

impl Renewal {
    /// Keeps the new lease (see [`Leases::keep`]).
    pub(crate) fn keep(self, lease: Lease) {
        self.leases
            .keep(self.slot.clone(), lease, self.ahead.is_some());
    }

    /// The slot it renews.
    pub(crate) fn slot(&self) -> &Slot {
        &self.slot
    }

    /// Taken ahead (see [`Leases::try_spend`]): the cap of the lease the
    /// new slice joins.
    pub(crate) fn ahead(&self) -> Option<u64> {
        self.ahead
    }
}

impl Drop for Renewal {
    /// Ends this renewal, and only this one: a request may have started
    /// the slot's next renewal once the new lease was kept (before this
    /// drop). Ended too, that one's lease counted nowhere while its call
    /// was out (a restore then left out what it admitted: 32,768 and
    /// 14,877 over a quota in a test run), and a third renewal could start.
    fn drop(&mut self) {
        if let Some(slot) = self.leases.slots.get(&self.slot) {
            let mut lease = slot.lock();
            if lease.renewal == self.number {
                lease.renewing = None;
            }
        }
        if let Some(renewed) = &self.waited_for {
            self.leases
                .renewals
                .remove_if(&self.slot, |_, current| Arc::ptr_eq(current, renewed));
            renewed.notify_waiters();
        }
    }
}

impl Leases {
    /// Waits until the renewal of `slot` under way now, if any, is over
    /// (its lease kept, or none granted): a request that found the slot
    /// spent then spends the new lease instead of a script call of its
    /// own. `None` if none is under way.
    pub(crate) fn renewal_under_way(
        self: &Arc<Self>,
        slot: &Slot,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let renewed = self.renewals.get(slot)?.clone();
        let (leases, slot) = (self.clone(), slot.clone());
        Some(async move {
            let notified = renewed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Over before this waiter was registered: nothing to wait for.
            let still = leases
                .renewals
                .get(&slot)
                .is_some_and(|current| Arc::ptr_eq(&current, &renewed));
            if still {
                notified.await;
            }
        })
    }

    /// Waits until the renewals that requests may wait for, under way now,
    /// are over: every lease taken ahead among them (see
    /// [`try_spend`](Self::try_spend)). One that lands after the leases
    /// went back on shutdown is reclaimed instead, and Redis keeps half of
    /// it as spent.
    pub(crate) async fn renewals_over(self: &Arc<Self>) {
        let slots: Vec<Slot> = self.renewals.iter().map(|r| r.key().clone()).collect();
        for slot in slots {
            if let Some(over) = self.renewal_under_way(&slot) {
                over.await;
            }
        }
    }
}

/// What `lease` holds, taken out of it; `None` if nothing.
fn take_held(slot: &Slot, lease: &mut Lease) -> Option<(Slot, Lease)> {
    let taken = *lease;
    lease.unspent = Unspent {
        epoch: taken.unspent.epoch,
        ..Unspent::default()
    };
    taken.unspent.holds().then(|| (slot.clone(), taken))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL_US: i64 = 1_000_000;

    fn slot() -> Slot {
        (CounterKey::new("plan", "key"), "".into())
    }

    #[test]
    fn a_slot_hash_tells_counters_and_buckets_apart() {
        use std::hash::BuildHasher;
        let hash = |counter: &CounterKey, bucket: &str| {
            SlotHashed::default().hash_one((counter.clone(), Box::<str>::from(bucket)))
        };
        let (a, b) = (CounterKey::new("plan", "a"), CounterKey::new("plan", "b"));
        assert_eq!(hash(&a, ""), hash(&CounterKey::new("plan", "a"), ""));
        assert_ne!(hash(&a, ""), hash(&b, ""));
        assert_ne!(hash(&a, ""), hash(&a, "/pets/GET"));
        assert_ne!(hash(&a, "/pets/GET"), hash(&a, "/pets/PUT"));
        assert_ne!(hash(&a, "/pets/GET"), hash(&b, "/pets/GET"));
    }

    /// A lease of `units` and `tokens` granted at `granted_us`.
    fn grant(leases: &Leases, granted_us: i64, units: u64, tokens: u64) {
        grant_to(slot(), leases, granted_us, units, tokens);
    }

    fn grant_to(slot: Slot, leases: &Leases, granted_us: i64, units: u64, tokens: u64) {
        leases.keep(
            slot,
            Lease {
                unspent: Unspent {
                    units,
                    granted: units,
                    cap: units.div_ceil(UNREPORTED_SHARE),
                    tokens,
                    granted_tokens: tokens,
                    ..Unspent::default()
                },
                expires_us: granted_us + TTL_US,
                wall_expires_us: i64::MAX,
                ..Lease::default()
            },
            false,
        );
    }

    fn spend(leases: &Leases, units: u64, tokens: u64) {
        let slot = leases.slots.get(&slot()).unwrap();
        let mut lease = slot.lock();
        lease.unspent.units -= units;
        lease.unspent.tokens -= tokens;
    }

    #[test]
    fn a_first_lease_asks_for_one_of_each() {
        assert_eq!(Leases::new(LeaseConfig::default()).want(&slot(), 0), (1, 1));
    }

    #[test]
    fn a_lease_spent_out_fast_asks_for_one_and_a_half_lifetimes_at_that_rate() {
        let leases = Leases::new(LeaseConfig::default());
        grant(&leases, 0, 8, 8);
        spend(&leases, 8, 8);
        // 8 spent in 2 ms: 4,000/s, so 6,000 in 1.5 s.
        assert_eq!(leases.want(&slot(), 2_000), (6_000, 6_000));
        // Spent at once: counted as over a millisecond, not an infinite rate.
        assert_eq!(leases.want(&slot(), 0), (12_000, 12_000));
    }

    #[test]
    fn a_lease_that_expired_and_went_back_leaves_its_rate() {
        let leases = Leases::new(LeaseConfig::default());
        grant(&leases, 0, 8_000, 8_000);
        spend(&leases, 4_000, 4_000);
        // Spent 4,000 over its second: 6,000 in 1.5 s.
        assert_eq!(leases.drain_expired(TTL_US).len(), 1);
        assert_eq!(leases.want(&slot(), TTL_US + 10), (6_000, 6_000));
        // Once: then the next lease's own spending counts.
        assert_eq!(leases.want(&slot(), TTL_US + 20), (1, 1));
        // Not after two lifetimes.
        grant(&leases, 0, 8_000, 8_000);
        spend(&leases, 4_000, 4_000);
        leases.drain_expired(TTL_US);
        assert_eq!(leases.want(&slot(), 3 * TTL_US), (1, 1));
    }

    #[test]
    fn an_idle_key_asks_for_one_and_no_lease_asks_for_more_than_the_most() {
        let leases = Leases::new(LeaseConfig {
            max_units: 100,
            max_tokens: 10,
            ttl: Duration::from_micros(TTL_US as u64),
        });
        grant(&leases, 0, 4, 4);
        spend(&leases, 1, 1);
        assert_eq!(leases.want(&slot(), 3 * TTL_US), (1, 1));
        assert_eq!(leases.want(&slot(), 1_000), (100, 10));
    }

    #[test]
    fn a_lease_taken_ahead_merges_in_lives_as_long_and_sizes_from_its_own_spending() {
        let leases = Arc::new(Leases::new(LeaseConfig::default()));
        grant(&leases, 0, 100, 0);
        spend(&leases, 70, 0);
        let lease = |leases: &Leases| *leases.slots.get(&slot()).unwrap().lock();
        assert!(!leases.due_ahead(&lease(&leases), 0), "30 of 100 left");
        spend(&leases, 5, 0);
        assert!(leases.due_ahead(&lease(&leases), 0), "a quarter left");
        assert!(
            leases.due_ahead(&lease(&leases), TTL_US * 3 / 4),
            "a quarter of its lifetime left"
        );
        // The next lease, taken ahead at 0.5 s: 100 more units.
        leases.keep(
            slot(),
            Lease {
                unspent: Unspent {
                    units: 100,
                    granted: 100,
                    cap: 50,
                    ..Unspent::default()
                },
                expires_us: 500_000 + TTL_US,
                wall_expires_us: i64::MAX,
                ..Lease::default()
            },
            true,
        );
        let merged = lease(&leases);
        assert_eq!(
            (merged.unspent.units, merged.expires_us),
            (125, 500_000 + TTL_US)
        );
        assert!(!leases.due_ahead(&merged, 500_000), "125 of 125 left");
        // 30 spent in the 0.1 s since: 450 in 1.5 lifetimes, whatever the
        // first slice spent before.
        spend(&leases, 30, 0);
        assert_eq!(leases.want(&slot(), 600_000).0, 450);
    }

    #[test]
    fn a_lease_of_a_throttle_takes_no_slice_ahead_beyond_half_the_burst() {
        let leases = Arc::new(Leases::new(LeaseConfig::default()));
        let with_burst = |burst: u32| {
            let mut lease = *leases.slots.get(&slot()).unwrap().lock();
            lease.throttle = Some(crate::Throttle::new(10_000.0, burst).unwrap());
            lease
        };
        grant(&leases, 0, 100, 40);
        spend(&leases, 0, 31);
        // 9 of 40 tokens left: due, if 40 more (80 in all) stay within half.
        assert!(leases.due_ahead(&with_burst(160), 0));
        assert!(!leases.due_ahead(&with_burst(159), 0));
        // Nor near its end: it goes back whole.
        assert!(!leases.due_ahead(&with_burst(159), TTL_US * 3 / 4));
        // A lease of a quota alone (no throttle) is not bound by it.
        let mut quota_only = with_burst(1);
        quota_only.throttle = None;
        assert!(leases.due_ahead(&quota_only, 0));
    }

    /// A request of `counter` under a quota of 100 a day, at time 0, and
    /// its rule.
    fn quota_request(counter: &CounterKey) -> (QuotaRule, DecisionRequest<'_>) {
        let rule = QuotaRule {
            quota: crate::Quota::new(100, crate::QuotaPeriod::Day),
            plan_created: 0,
        };
        let request = DecisionRequest {
            counter,
            throttle: None,
            quota: Some(rule),
            now: crate::UnixNanos::new(0),
        };
        (rule, request)
    }

    /// Leases with one lease of `units` under [`quota_request`]'s quota.
    fn quota_leased(units: u64) -> Arc<Leases> {
        let leases = Arc::new(Leases::new(LeaseConfig::default()));
        grant(&leases, 0, units, 0);
        let (rule, _) = quota_request(&slot().0);
        let slot = leases.slots.get(&slot()).unwrap();
        let mut lease = slot.lock();
        lease.quota = Some(rule);
        lease.period_end = 86_400;
        drop(lease);
        drop(slot);
        leases
    }

    #[test]
    fn a_lease_has_at_most_its_cap_spent_unacknowledged() {
        // 4 units: at most 2 spent and not yet acknowledged.
        let leases = quota_leased(4);
        let counter = slot().0;
        let (_, request) = quota_request(&counter);
        let spend = || {
            let wall_us = jiff::Timestamp::now().as_microsecond();
            leases.try_spend(&request, 0, wall_us).is_some()
        };
        assert!(spend() && spend());
        assert!(!spend(), "a third waits for the report");
        let report = leases.take_unreported().pop().unwrap();
        assert_eq!(report.kind, CallKind::Report(2));
        assert!(!spend(), "sent is not acknowledged");
        leases.landed(&report.slot, &report.lease, 2);
        assert!(spend() && spend() && !spend());
    }

    /// A report answered after its lease was taken out of use (revoked,
    /// replaced) counts as landed there too: a loss then counts none of
    /// what it said as admitted unacknowledged (the copy followed its
    /// answer). Without: the report's requests counted twice.
    #[test]
    fn a_report_that_lands_after_its_lease_was_dropped_is_not_counted_again() {
        let leases = quota_leased(10);
        let counter = slot().0;
        let (_, request) = quota_request(&counter);
        let wall_us = jiff::Timestamp::now().as_microsecond();
        for _ in 0..3 {
            assert!(leases.try_spend(&request, 0, wall_us).is_some());
        }
        let report = leases.take_unreported().pop().unwrap();
        assert_eq!(report.kind, CallKind::Report(3));
        leases.revoke_all();
        leases.landed(&report.slot, &report.lease, 3);
        let outstanding = leases.outstanding();
        assert_eq!(
            outstanding.units.values().sum::<u64>(),
            0,
            "{outstanding:?}"
        );
        assert!(outstanding.reports.is_empty(), "{outstanding:?}");
        // It goes back with the report counted.
        let dropped = leases.take_dropped();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].1.unspent.landed, 3);
    }

    /// UpdateUsage on one counter has each replica report that counter's
    /// leases at once; the others' report with the next round.
    #[test]
    fn one_counters_leases_report_alone() {
        let leases = Arc::new(Leases::new(LeaseConfig::default()));
        let other: Slot = (CounterKey::new("plan", "other"), "".into());
        let method: Slot = (slot().0, "/pets/GET".into());
        for to in [slot(), other.clone(), method] {
            grant_to(to.clone(), &leases, 0, 10, 0);
            leases.slots.get(&to).unwrap().lock().unspent.admitted = 3;
        }
        let reported = leases.take_unreported_of(&slot().0);
        let mut of: Vec<_> = reported
            .iter()
            .map(|r| (r.slot.1.to_string(), r.kind))
            .collect();
        of.sort_by(|a, b| a.0.cmp(&b.0));
        let bucket = |name: &str, n| (name.to_string(), CallKind::Report(n));
        assert_eq!(of, [bucket("", 3), bucket("/pets/GET", 3)]);
        assert!(reported.iter().all(|r| r.slot.0 == slot().0));
        let rest = leases.take_unreported();
        assert_eq!(rest.len(), 1, "the other counter's, left for the round");
        assert_eq!((&rest[0].slot, rest[0].kind), (&other, CallKind::Report(3)));
    }

    /// A key remembers its plan-wide lease's cell: an expired lease taken
    /// out of `slots` is not spent through it, and the slot leased again
    /// lives in that same cell (found without a lookup again).
    #[test]
    fn a_key_finds_its_lease_without_a_lookup_and_never_one_taken_out() {
        let leases = Arc::new(Leases::new(LeaseConfig::default()));
        let slot: Slot = (CounterKey::new("plan", "key"), "".into());
        let counter = slot.0.clone();
        let (rule, request) = quota_request(&counter);
        let lease = |units| Lease {
            unspent: Unspent {
                units,
                granted: units,
                cap: units,
                ..Unspent::default()
            },
            expires_us: TTL_US,
            wall_expires_us: i64::MAX,
            period_end: 86_400,
            quota: Some(rule),
            ..Lease::default()
        };
        let spend = |now_us| leases.try_spend(&request, now_us, 0).is_some();
        assert!(!spend(0), "no lease yet");
        leases.keep(slot.clone(), lease(8), false);
        assert!(spend(0), "found in slots");
        let cell = leases
            .remembered(&counter)
            .and_then(|cached| cached.cell.downcast_ref::<Mutex<Lease>>())
            .expect("remembered");
        assert_eq!(cell.lock().unspent.units, 7);
        assert!(spend(0), "found through the key");
        assert_eq!(cell.lock().unspent.units, 6);

        assert_eq!(leases.drain_expired(TTL_US).len(), 1);
        assert!(leases.slots.is_empty());
        assert!(!spend(0), "taken out: nothing to spend, whatever the time");
        leases.keep(slot.clone(), lease(2), false);
        let kept = leases.slots.get(&slot).unwrap().value().clone();
        assert!(
            std::ptr::eq(&*kept, cell),
            "the key's cell is back in slots"
        );
        assert!(spend(0) && spend(0) && !spend(0), "the new lease's 2 units");
    }

    #[test]
    fn what_was_taken_back_no_longer_counts_as_spent() {
        let leases = Arc::new(Leases::new(LeaseConfig::default()));
        grant(&leases, 0, 8, 8);
        let (taken, _renewal) = leases.take_unspent(&slot(), (1, 1)).unwrap();
        assert_eq!((taken.unspent.units, taken.unspent.tokens), (8, 8));
        assert_eq!(leases.want(&slot(), 2_000), (1, 1));
    }

    #[test]
    fn one_request_at_a_time_renews_a_slot() {
        let leases = Arc::new(Leases::new(LeaseConfig::default()));
        // A key's first lease too (one unit: not waited for).
        let (_, first) = leases.take_unspent(&slot(), (1, 1)).unwrap();
        assert!(leases.renewal_under_way(&slot()).is_none());
        assert!(
            leases.take_unspent(&slot(), (1, 1)).is_none(),
            "one renewal at a time"
        );
        drop(first);
        let (_, renewal) = leases
            .take_unspent(&slot(), (8, 8))
            .expect("the failed one is over");
        assert!(
            leases.renewal_under_way(&slot()).is_some(),
            "8 units: waited for"
        );
        renewal.keep(Lease {
            unspent: Unspent {
                units: 8,
                granted: 8,
                ..Unspent::default()
            },
            expires_us: TTL_US,
            ..Lease::default()
        });
        assert!(leases.renewal_under_way(&slot()).is_none(), "over");
        let (taken, _) = leases
            .take_unspent(&slot(), (1, 1))
            .expect("kept: renewable again");
        assert_eq!(taken.unspent.units, 8);
    }

    /// Requests admitted from the slot's lease, `n` more.
    fn admit(leases: &Leases, n: u64) {
        leases.slots.get(&slot()).unwrap().lock().unspent.admitted += n;
    }

    /// A request that finds the lease spent while its report is on its
    /// way (the lease cannot be renewed then) waits for the report's
    /// answer, or for the report to become unsure, instead of a script
    /// call of its own.
    #[tokio::test]
    async fn a_request_waits_for_the_report_on_its_way() {
        let guard = Duration::from_secs(30);
        let leases = Arc::new(Leases::new(LeaseConfig::default()));
        grant(&leases, 0, 8, 8);
        assert!(leases.report_under_way(&slot()).is_none(), "none out");
        admit(&leases, 4);
        let report = leases.take_unreported().pop().expect("a report");
        assert!(leases.take_unspent(&slot(), (8, 8)).is_none(), "out");
        let waiter = tokio::spawn(leases.report_under_way(&slot()).expect("out"));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits while the report is out");
        leases.landed(&report.slot, &report.lease, 4);
        tokio::time::timeout(guard, waiter)
            .await
            .expect("woken once it landed")
            .unwrap();
        assert!(leases.report_under_way(&slot()).is_none(), "none out");

        // One that fails (unsure from then on) wakes them too.
        admit(&leases, 2);
        let report = leases.take_unreported().pop().expect("a report");
        let on_its_way = PendingCall::new(&leases, report);
        let waiter = tokio::spawn(leases.report_under_way(&slot()).expect("out"));
        tokio::task::yield_now().await;
        drop(on_its_way);
        tokio::time::timeout(guard, waiter)
            .await
            .expect("woken once unsure")
            .unwrap();
    }

    /// A renewal's new lease is kept, and before the renewal is dropped
    /// (`Renewal::keep` keeps, then drops) another request starts the
    /// next one: that one stays under way, and its lease stays counted.
    #[test]
    fn a_renewal_ends_only_itself() {
        let leases = Arc::new(Leases::new(LeaseConfig::default()));
        grant(&leases, 0, 8, 8);
        let (_, first) = leases.take_unspent(&slot(), (8, 8)).unwrap();
        grant(&leases, 0, 8, 8);
        let quota = QuotaRule {
            quota: crate::model::Quota::new(100, crate::model::QuotaPeriod::Day),
            plan_created: 0,
        };
        {
            let lease = leases.slots.get(&slot()).unwrap();
            let mut lease = lease.lock();
            lease.unspent.units -= 5;
            lease.unspent.admitted = 5;
            lease.quota = Some(quota);
        }
        let (taken, second) = leases
            .take_unspent(&slot(), (8, 8))
            .expect("the first lease is kept");
        assert_eq!(taken.unspent.admitted, 5);
        drop(first);
        assert!(
            leases.take_unspent(&slot(), (1, 1)).is_none(),
            "the second renewal is still under way"
        );
        assert!(leases.renewal_under_way(&slot()).is_some());
        let outstanding = leases.outstanding();
        assert_eq!(outstanding.of(&slot().0, 0, 0), 5, "{outstanding:?}");
        drop(second);
        assert!(leases.take_unspent(&slot(), (1, 1)).is_some());
    }
}
