//! When Redis comes back empty (a restart without persistence, a failover
//! to an empty node), quotas must not reset. Each replica remembers what it
//! last saw of every counter in the current period: what it read of every
//! counter when it started ([`learn`](super::learn)), and since then what
//! its own decisions and UpdateUsage calls left. A marker key tells it
//! whether Redis still holds the data it saw: a counter it saw that is
//! gone, with the marker gone or changed, means Redis lost its data, and
//! the replica puts back what it saw before it decides again.
//!
//! Redis can also come back with older data (an AOF or RDB behind after a
//! crash, a failover to a replica that lagged): the marker is the same,
//! the counters are stale. On one server each replica counts the calls
//! Redis answered it under the marker, and Redis counts those it applied
//! (see "Rollback" in redis.lua): fewer applied than answered, and the
//! replica drops the stale data ([`Recovery::wipe`]) and puts back what
//! it saw, as after a loss.

use dashmap::DashMap;
use parking_lot::Mutex;

use std::sync::Arc;

use super::in_flight::InFlight;
use super::learn::Scan;
use super::lease::Leases;
use super::redis::Connection;
use super::CounterKey;
use crate::model::QuotaPeriod;
use crate::prehashed::Prehashed;

/// A quota period as Redis stores it: kind, start and end (Unix seconds).
pub(crate) type Period = (QuotaPeriod, i64, i64);

/// How long after putting back for a restore a replica takes that
/// restore's marker as known (see [`Recovery::put_back_under`]): the
/// restores of one loss end within seconds of each other.
const PUT_BACK_LATELY: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a restore's note (see [`Recovery::begin_restore`]) outlives
/// a replica that died while putting counters back.
const RESTORE_NOTE_SECS: u64 = 600;

/// Sets the marker (`KEYS[2]`, to `ARGV[1]` where there is none) only
/// while the restore's note (`KEYS[1]`) is there, and answers the marker;
/// nil without the note. Both keys are in the `{ctl}` slot.
const FINISH_RESTORE: &str = "if redis.call('DEL', KEYS[1]) == 0 then return false end \
redis.call('SET', KEYS[2], ARGV[1], 'NX') return redis.call('GET', KEYS[2])";

/// Deletes every key under the prefix (`ARGV[2]`, a `SCAN` pattern) while
/// the marker (`KEYS[1]`) is still `ARGV[1]`, the one Redis rolled back
/// under: once, whichever replicas found it. Answers how many it deleted
/// (-1: the marker had changed, another replica did it).
const WIPE: &str = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end \
local cursor, n = '0', 0 \
repeat local page = redis.call('SCAN', cursor, 'MATCH', ARGV[2], 'COUNT', 1000) \
cursor = page[1] for _, key in ipairs(page[2]) do redis.call('UNLINK', key) n = n + 1 end \
until cursor == '0' return n";

/// What a replica last saw of one counter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub(crate) period: Period,
    /// Used, less the units out on leases (what was admitted, reported,
    /// or written off): each replica adds its own leases' units when it
    /// restores, so a lease given back is not counted as used.
    pub(crate) used: u64,
    /// The allowance UpdateUsage set (-1: none).
    pub(crate) allow: i64,
    pub(crate) epoch: u64,
    /// The units out on the other holders' leases, as the latest answer
    /// that said them had it: put back first, this replica counts them
    /// as used (a holder that died with them may have admitted them).
    pub(crate) others: u64,
    /// A day's record of admitted requests (GetUsage's used count), as the
    /// latest answer that said it had it: (day since the epoch, count).
    pub(crate) today: (i64, u64),
}

impl Seen {
    /// Follows `day`'s record of admitted requests as an answer had it:
    /// the larger count of a day stands, a later day replaces it.
    pub(crate) fn saw_today(&mut self, day: i64, count: u64) {
        let (known_day, known_count) = self.today;
        if day > known_day || (day == known_day && count > known_count) {
            self.today = (day, count);
        }
    }
}

/// The counters a replica saw, and the marker it knows Redis by.
#[derive(Debug)]
pub(crate) struct Recovery {
    pub(crate) seen: DashMap<CounterKey, Seen, Prehashed>,
    pub(crate) prefix: String,
    pub(crate) marker_key: String,
    /// Redis's count of each replica's calls applied under each marker
    /// (see [`Watch`]).
    pub(crate) writes_key: String,
    /// This replica's name there.
    replica: String,
    known: Mutex<Known>,
    /// One recovery at a time on this replica.
    gate: tokio::sync::Mutex<()>,
    /// One counter put back alone at a time on this replica (see
    /// `restore_counter` in redis.rs): apart from `gate`, which a recovery
    /// holds while it waits for the other replicas, whose messages may ask
    /// this one to put a counter back.
    counter_gate: tokio::sync::Mutex<()>,
    /// How far this replica has read Redis's counters into `seen`.
    pub(crate) scan: Mutex<Scan>,
    /// Held (shared) by each call whose answer updates `seen`, from before
    /// it is sent until its answer is in `seen`; a restore holds it alone,
    /// so it puts back what every answer Redis gave before the loss said.
    pub(crate) in_flight: InFlight,
    /// This replica's leases, whose units a restore adds to `seen`.
    pub(crate) leases: Option<Arc<Leases>>,
    /// The latest epoch of each counter this replica's copy followed when
    /// it put the counter back (see `put_back` in redis.rs).
    pub(crate) restored: DashMap<CounterKey, u64, Prehashed>,
    /// Each counter as this replica last put it back itself (not only
    /// read it back), see [`RestoredByThis`].
    pub(crate) put_back: DashMap<CounterKey, RestoredByThis, Prehashed>,
    /// Every counter Redis held was read once (see `learn::some`).
    scanned_once: std::sync::atomic::AtomicBool,
    /// How many times this replica put counters back after Redis lost its
    /// data (its own finding or another replica's message).
    pub(crate) losses: std::sync::atomic::AtomicU64,
}

/// A counter as a replica put it back itself: Redis may lose it in turn,
/// before every replica saw it, and a replica that had not seen that range
/// of epochs put it back first next time with the same numbers (see
/// [`Recovery::own_range`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RestoredByThis {
    pub(crate) period: Period,
    /// Its epoch when put back: the copy followed it.
    pub(crate) epoch: u64,
    /// Its tag (`ri` in redis.lua), which tells the two apart.
    pub(crate) tag: u64,
    /// What this replica's leases had admitted that the restore added as
    /// its own: the copy counts it since, the other replica's does not.
    pub(crate) own: u64,
}

/// The marker this replica knows, and how many of its calls under it
/// Redis answered.
#[derive(Debug, Default)]
struct Known {
    marker: Option<Arc<str>>,
    /// This replica's count under the marker in the writes hash
    /// (`<replica>:<marker>`).
    field: Arc<str>,
    answered: u64,
    /// The largest count of every replica's calls applied under the
    /// marker this replica read in Redis (field `*:<marker>` of the writes
    /// hash): fewer there means Redis went back, though it lost none of
    /// this replica's own calls (see "Rollback" in redis.lua).
    all: u64,
    /// The markers of the latest restores this replica put back for (its
    /// own and those other replicas announced): of two replicas that found
    /// the same loss at once, one sets its marker, and the other replica,
    /// which took part, adopts it without putting back again. (Put back
    /// again, the counters made since the loss came back as put back
    /// first, in a new range of epochs the other replica's copy does not
    /// follow: a later UpdateUsage raced by a loss admitted 40 of 58.)
    put_back_under: std::collections::VecDeque<(Arc<str>, std::time::Instant)>,
    /// The marker this replica last read in Redis as the current one.
    read: Option<Arc<str>>,
    /// The markers it read there before that one, the latest
    /// [`RETIRED_MARKERS`]: one of them back in Redis means Redis went back
    /// to data older than a restore (an RDB saved before it, loaded again
    /// by a second restart), never a new restore. (Taken for a restore this
    /// replica had put back for, the stale counters stood: 870,000 to
    /// 1,060,000 admitted too many in 4 of 4 runs of a test.) Only markers read there: the
    /// next marker another replica announces may never be set (two restores
    /// of one loss, the other's marker set first).
    retired: std::collections::VecDeque<Arc<str>>,
}

/// How many of its former markers a replica remembers (see
/// [`Known::retired`]): one a loss, and losses are rare.
const RETIRED_MARKERS: usize = 64;

/// What a call (on one server) tells Redis, so that Redis rolled back is
/// found: the marker the replica knew when it sent the call, its count's
/// field, how many of its calls Redis had answered under it, and how many
/// of every replica's calls it had read applied there.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    pub(crate) marker: Arc<str>,
    pub(crate) field: Arc<str>,
    pub(crate) answered: u64,
    /// Every replica's calls Redis had applied under the marker when this
    /// replica last read their count.
    pub(crate) all: u64,
}

impl Watch {
    /// The field of the count of every replica's calls under the marker.
    pub(crate) fn all_field(&self) -> String {
        format!("*:{}", self.marker)
    }

    /// The call's `ARGV[40]`: `<answered>:<all>`.
    pub(crate) fn counts(&self) -> String {
        format!("{}:{}", self.answered, self.all)
    }
}

/// What the marker says.
pub(crate) enum Marker {
    /// The one this replica knows (or the first it sees): nothing lost.
    Known,
    /// None, and this replica never knew one: a first start, nothing to
    /// put back (a replica that decided before setting one would only
    /// count twice).
    Unset,
    /// Gone: Redis lost its data and no replica finished putting it back.
    Missing,
    /// Another one: Redis lost its data and a replica put a new one.
    Replaced(String),
    /// The one this replica knows, but Redis applied fewer of its calls
    /// under it than it answered; or one this replica read there before
    /// the one it read last (see `Known::retired`): Redis came back with
    /// older data.
    RolledBack(String),
}

impl Recovery {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            seen: DashMap::default(),
            prefix: prefix.to_owned(),
            marker_key: format!("{prefix}{{ctl}}:marker"),
            writes_key: format!("{prefix}{{ctl}}:writes"),
            replica: Self::fresh_marker(),
            known: Mutex::new(Known::default()),
            gate: tokio::sync::Mutex::new(()),
            counter_gate: tokio::sync::Mutex::new(()),
            scan: Mutex::new(Scan::default()),
            in_flight: InFlight::default(),
            leases: None,
            restored: DashMap::default(),
            put_back: DashMap::default(),
            scanned_once: std::sync::atomic::AtomicBool::new(false),
            losses: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether every counter Redis held was read once.
    pub(crate) fn scanned_once(&self) -> bool {
        self.scanned_once.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn mark_scanned_once(&self) {
        self.scanned_once
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Restores count the units of `leases` too.
    pub(crate) fn holding(mut self, leases: Option<Arc<Leases>>) -> Self {
        self.leases = leases;
        self
    }

    /// Whether Redis holds the marker this replica knows it by (or one it
    /// put back for lately): then it lost nothing since this replica's
    /// copies were put back, and a message that it did is late (a replica
    /// that finishes putting back a loss the others put back since).
    /// Put back again on it, this replica's live leases ended with what
    /// they admitted counted by no one, as the counters had been put back
    /// under another tag: GetUsage read 5 low in a test run (1 in ~100).
    pub(crate) async fn holds_known_marker(
        &self,
        connection: &mut Connection,
    ) -> redis::RedisResult<bool> {
        let current: Option<String> = connection
            .query(redis::cmd("GET").arg(&self.marker_key))
            .await?;
        let known = self.known.lock();
        Ok(current.is_some_and(|current| {
            known.marker.as_deref() == Some(current.as_str()) || known.put_back_lately(&current)
        }))
    }

    /// The marker this replica knows Redis by (none before the first).
    pub(crate) fn known_marker(&self) -> Option<Arc<str>> {
        self.known.lock().marker.clone()
    }

    /// Reads the marker, and how many of this replica's calls Redis
    /// applied under it; a first one seen is adopted.
    pub(crate) async fn marker(&self, connection: &mut Connection) -> redis::RedisResult<Marker> {
        // Answered before the read: Redis applied at least as many.
        let watch = self.watch();
        let (current, applied, all): (Option<String>, Option<u64>, Option<u64>) = connection
            .pipeline(
                redis::pipe()
                    .cmd("GET")
                    .arg(&self.marker_key)
                    .cmd("HGET")
                    .arg(&self.writes_key)
                    .arg(&*watch.field)
                    .cmd("HGET")
                    .arg(&self.writes_key)
                    .arg(watch.all_field()),
            )
            .await?;
        let mut known = self.known.lock();
        Ok(match (known.marker.as_deref(), current) {
            (None, None) => Marker::Unset,
            (Some(_), None) => Marker::Missing,
            (None, Some(current)) => {
                known.adopt_read(&self.replica, current);
                Marker::Known
            }
            (Some(marker), Some(current)) if marker == current => {
                let all = all.unwrap_or(0);
                if *watch.marker == current
                    && (applied.unwrap_or(0) < watch.answered || all < watch.all)
                {
                    Marker::RolledBack(current)
                } else {
                    if *watch.marker == current {
                        known.all = known.all.max(all);
                    }
                    known.adopt_read(&self.replica, current);
                    Marker::Known
                }
            }
            (Some(_), Some(current)) if known.retired(&current) => Marker::RolledBack(current),
            (Some(_), Some(current)) if known.put_back_lately(&current) => {
                known.adopt_read(&self.replica, current);
                Marker::Known
            }
            (Some(_), Some(current)) => Marker::Replaced(current),
        })
    }

    /// This replica's copy of `counter` in `period`, if it has one: a
    /// call on one server sends it, and Redis refuses the call when it
    /// holds less (see "Rollback" in redis.lua).
    pub(crate) fn copy_in(&self, counter: &CounterKey, period: Option<Period>) -> Option<Seen> {
        let seen = *self.seen.get(counter)?;
        (Some(seen.period) == period).then_some(seen)
    }

    /// What a call on `connection` tells Redis (see [`Watch`]): nothing
    /// on a cluster (a script there takes keys of one slot only).
    pub(crate) fn watch_on(&self, connection: &Connection) -> Option<Watch> {
        matches!(connection, Connection::Single(_)).then(|| self.watch())
    }

    /// What a call on one server tells Redis (see [`Watch`]).
    pub(crate) fn watch(&self) -> Watch {
        let known = self.known.lock();
        Watch {
            marker: known.marker.clone().unwrap_or_else(|| Arc::from("")),
            field: known.field.clone(),
            answered: known.answered,
            all: known.all,
        }
    }

    /// Redis answered a call sent with `watch`: counted, if the marker is
    /// still the one it was sent under.
    pub(crate) fn answered(&self, watch: &Watch) {
        let mut known = self.known.lock();
        if known.marker.as_deref() == Some(&*watch.marker) {
            known.answered += 1;
        }
    }

    /// Redis came back with older data under `marker`: deletes every key
    /// under the prefix, once (while the marker is still `marker`), so
    /// that the replicas put back what they saw onto an empty Redis, as
    /// after a loss, rather than add it to the stale counts.
    pub(crate) async fn wipe(
        &self,
        connection: &mut Connection,
        marker: &str,
    ) -> redis::RedisResult<()> {
        let pattern = format!("{}*", super::learn::escape_glob(&self.prefix));
        let deleted: i64 = connection
            .query(
                redis::cmd("EVAL")
                    .arg(WIPE)
                    .arg(1)
                    .arg(&self.marker_key)
                    .arg(marker)
                    .arg(pattern),
            )
            .await?;
        if deleted >= 0 {
            tracing::warn!(
                keys = deleted,
                "Redis came back with older data (it applied fewer of this replica's calls than \
                 it answered): dropped it; every replica puts back what it saw"
            );
        }
        Ok(())
    }

    /// A tag for a counter put back (see `ri` in redis.lua): never 0,
    /// below 2^53 (Lua's numbers are exact there).
    pub(crate) fn fresh_tag() -> u64 {
        rand::random::<u64>() >> 12 | 1
    }

    /// `counter` as this replica last put it back itself, when its copy
    /// `seen` holds epochs of that range.
    pub(crate) fn own_range(&self, counter: &CounterKey, seen: &Seen) -> Option<RestoredByThis> {
        self.put_back
            .get(counter)
            .filter(|put| put.period == seen.period && put.epoch >> 32 == seen.epoch >> 32)
            .map(|put| *put)
    }

    /// A marker no replica used before.
    pub(crate) fn fresh_marker() -> String {
        format!("{:016x}", rand::random::<u64>())
    }

    /// Sets `fresh` as the marker where there is none, and adopts the one
    /// there.
    pub(crate) async fn put_marker(
        &self,
        connection: &mut Connection,
        fresh: &str,
    ) -> redis::RedisResult<()> {
        let (current,): (String,) = connection
            .pipeline(
                redis::pipe()
                    .cmd("SET")
                    .arg(&self.marker_key)
                    .arg(fresh)
                    .arg("NX")
                    .ignore()
                    .cmd("GET")
                    .arg(&self.marker_key),
            )
            .await?;
        self.known.lock().adopt_read(&self.replica, current);
        Ok(())
    }

    /// Notes in Redis that this replica is putting counters back: a key
    /// that goes if Redis loses its data again meanwhile (see
    /// [`finish_restore`](Self::finish_restore)). Returns its name.
    pub(crate) async fn begin_restore(
        &self,
        connection: &mut Connection,
    ) -> redis::RedisResult<String> {
        let note = format!("{}{{ctl}}:restoring:{}", self.prefix, Self::fresh_marker());
        let () = connection
            .query(
                redis::cmd("SET")
                    .arg(&note)
                    .arg(1)
                    .arg("EX")
                    .arg(RESTORE_NOTE_SECS),
            )
            .await?;
        Ok(note)
    }

    /// As [`put_marker`](Self::put_marker), if Redis still holds `note`
    /// (from [`begin_restore`](Self::begin_restore)), in one step; `false`
    /// if Redis lost its data again since the restore began. (A marker set
    /// then would vouch for an empty Redis: no replica would put back what
    /// it saw, only counters a decision finds gone, one by one.)
    pub(crate) async fn finish_restore(
        &self,
        connection: &mut Connection,
        note: &str,
        fresh: &str,
    ) -> redis::RedisResult<bool> {
        let current: Option<String> = connection
            .query(
                redis::cmd("EVAL")
                    .arg(FINISH_RESTORE)
                    .arg(2)
                    .arg(note)
                    .arg(&self.marker_key)
                    .arg(fresh),
            )
            .await?;
        let finished = current.is_some();
        if let Some(current) = current {
            self.adopt_read(current);
        }
        Ok(finished)
    }

    /// Waits up to `limit` for a marker to appear (another replica's, set
    /// once it put back what it saw) and adopts it; `false` if none came.
    pub(crate) async fn await_marker(
        &self,
        connection: &mut Connection,
        limit: std::time::Duration,
    ) -> redis::RedisResult<bool> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let current: Option<String> = connection
                .query(redis::cmd("GET").arg(&self.marker_key))
                .await?;
            if let Some(current) = current {
                self.adopt_read(current);
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Adopts `marker`, the one another replica announced it sets once
    /// it finished a recovery.
    pub(crate) fn adopt(&self, marker: String) {
        self.known.lock().adopt(&self.replica, marker);
    }

    /// Adopts `marker`, read in Redis as the current one.
    pub(crate) fn adopt_read(&self, marker: String) {
        self.known.lock().adopt_read(&self.replica, marker);
    }

    /// This replica put back what it saw for the restore that sets
    /// `marker` (unless another restore of the same loss sets its own).
    pub(crate) fn put_back_under(&self, marker: &str) {
        let mut known = self.known.lock();
        let now = std::time::Instant::now();
        known
            .put_back_under
            .retain(|(_, at)| now.duration_since(*at) < PUT_BACK_LATELY);
        known.put_back_under.push_back((marker.into(), now));
    }

    /// Holds other recoveries of this replica off.
    pub(crate) async fn one_at_a_time(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    /// Held while this replica puts one counter back alone.
    pub(crate) async fn one_counter_at_a_time(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.counter_gate.lock().await
    }

    /// Remembers a counter's state as a decision (or UpdateUsage) left it:
    /// `(used less leased, allowance or -1, epoch)` in `period`. Answers arrive out of
    /// order: within one period and epoch the larger used count stands (a
    /// refund's smaller one too, which only ever restores too much as
    /// used); a later epoch or another period replaces it.
    pub(crate) fn saw(
        &self,
        counter: CounterKey,
        period: Period,
        (used, allow, epoch): (u64, i64, u64),
    ) {
        let seen = Seen {
            period,
            used,
            allow,
            epoch,
            others: 0,
            today: (0, 0),
        };
        self.seen
            .entry(counter)
            .and_modify(|known| {
                let later_period = period.1 > known.period.1
                    || (period.1 == known.period.1 && period != known.period);
                if known.period == period && epoch >> 32 > known.epoch >> 32 {
                    // Put back by another replica after Redis lost its
                    // data (a new range of epochs): this replica's copy of
                    // the counter as it was stays until it puts it back
                    // too. (Replaced, the restore found a copy of the new
                    // range and added nothing: what this replica saw
                    // admitted last, beyond the other's copy, was lost.)
                    return;
                }
                if known.period == period && known.epoch == epoch {
                    known.used = known.used.max(used);
                    known.allow = allow;
                } else if later_period || (known.period == period && known.epoch < epoch) {
                    *known = Seen {
                        today: known.today,
                        ..seen
                    };
                }
            })
            .or_insert(seen);
    }
}

impl Known {
    /// Whether this replica put back for a restore that sets `marker`,
    /// lately: one of the same loss. (Any earlier one: Redis back with
    /// older data under an old marker would be taken for known.)
    fn put_back_lately(&self, marker: &str) -> bool {
        self.put_back_under
            .iter()
            .any(|(put, at)| **put == *marker && at.elapsed() < PUT_BACK_LATELY)
    }

    /// Whether this replica read `marker` in Redis before the one it read
    /// there last.
    fn retired(&self, marker: &str) -> bool {
        self.retired.iter().any(|retired| **retired == *marker)
    }

    /// Knows `marker` from now on: a new one counts answers anew, in a
    /// field of its own (`replica`'s). A retired marker is not taken
    /// again: Redis holding it went back to older data, which the next
    /// call finds (see [`Recovery::marker`]).
    fn adopt(&mut self, replica: &str, marker: String) {
        if self.marker.as_deref() == Some(marker.as_str()) || self.retired(&marker) {
            return;
        }
        self.field = format!("{replica}:{marker}").into();
        self.marker = Some(marker.into());
        self.answered = 0;
        self.all = 0;
    }

    /// As [`adopt`](Self::adopt), `marker` read in Redis as the current
    /// one: the one read there before retires.
    fn adopt_read(&mut self, replica: &str, marker: String) {
        self.adopt(replica, marker);
        let Some(current) = self.marker.clone() else {
            return;
        };
        if let Some(former) = self.read.replace(current.clone()) {
            if former != current {
                if self.retired.len() == RETIRED_MARKERS {
                    self.retired.pop_front();
                }
                self.retired.push_back(former);
            }
        }
    }
}

impl Recovery {
    /// Remembers what an answer in `period` and `epoch` (a lease's report
    /// or give-back, or a decision already in the copy by [`saw`]) left of
    /// a counter: `used` (less leased) raises the count of the period and
    /// epoch the copy knows; the units out on the other holders' leases,
    /// when the answer says them, replace the copy's (they go up and
    /// down). Nothing else changes (the answer does not say the allowance).
    ///
    /// [`saw`]: Self::saw
    pub(crate) fn saw_spent(
        &self,
        counter: &CounterKey,
        period: Period,
        epoch: u64,
        used: u64,
        others: Option<u64>,
    ) {
        if let Some(mut known) = self.seen.get_mut(counter) {
            if known.period == period && known.epoch == epoch {
                known.used = known.used.max(used);
                if let Some(others) = others {
                    known.others = others;
                }
            }
        }
    }

    /// Remembers `day`'s record of admitted requests of a counter as an
    /// answer had it: the larger count of a day stands, a later day
    /// replaces it.
    pub(crate) fn saw_today(&self, counter: &CounterKey, day: i64, count: u64) {
        if let Some(mut known) = self.seen.get_mut(counter) {
            known.saw_today(day, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Period = (QuotaPeriod::Day, 86_400, 172_800);

    #[test]
    fn a_new_marker_counts_answers_anew_under_a_field_of_its_own() {
        let recovery = Recovery::new("t:");
        recovery.adopt("m1".to_owned());
        let first = recovery.watch();
        assert_eq!(
            (&*first.field, first.answered),
            (&*format!("{}:m1", recovery.replica), 0)
        );
        recovery.answered(&first);
        recovery.answered(&first);
        assert_eq!(recovery.watch().answered, 2);
        // The same marker again changes nothing.
        recovery.adopt("m1".to_owned());
        assert_eq!(recovery.watch().answered, 2);
        recovery.adopt("m2".to_owned());
        let second = recovery.watch();
        assert_eq!(second.answered, 0);
        assert!(second.field.ends_with(":m2"));
        // An answer to a call sent under the old marker counts no more.
        recovery.answered(&first);
        assert_eq!(recovery.watch().answered, 0);
        // A marker read in Redis, then another: the first is not taken
        // again (Redis holding it went back to older data).
        recovery.adopt_read("m3".to_owned());
        recovery.adopt_read("m4".to_owned());
        recovery.adopt("m3".to_owned());
        assert_eq!(recovery.known_marker().as_deref(), Some("m4"));
        // An announced one was not read there: it does not retire.
        recovery.adopt("m5".to_owned());
        recovery.adopt_read("m6".to_owned());
        recovery.adopt("m5".to_owned());
        assert_eq!(recovery.known_marker().as_deref(), Some("m5"));
    }

    #[test]
    fn answers_out_of_order_leave_the_largest_count_of_a_period_and_epoch() {
        let recovery = Recovery::new("t:");
        let counter = CounterKey::new("p", "k");
        let used = |recovery: &Recovery| recovery.seen.get(&counter).map(|s| (s.used, s.epoch));
        recovery.saw(counter.clone(), DAY, (7, -1, 1));
        // An earlier decision's answer, handled later.
        recovery.saw(counter.clone(), DAY, (6, -1, 1));
        assert_eq!(used(&recovery), Some((7, 1)));
        // UpdateUsage started a new epoch: its count stands, and an older
        // epoch's late answer does not replace it.
        recovery.saw(counter.clone(), DAY, (2, 9, 2));
        recovery.saw(counter.clone(), DAY, (8, -1, 1));
        assert_eq!(used(&recovery), Some((2, 2)));
        // A new period replaces; a late answer of the one before does not.
        let next = (QuotaPeriod::Day, 172_800, 259_200);
        recovery.saw(counter.clone(), next, (1, -1, 3));
        recovery.saw(counter.clone(), DAY, (3, 9, 2));
        assert_eq!(used(&recovery), Some((1, 3)));
    }
}
