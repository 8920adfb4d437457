//! When Redis comes back empty (a restart without persistence, a failover
//! to an empty node), quotas must not reset. Each replica remembers what it
//! last saw of every counter it decided in the current period, and a marker
//! key tells it whether Redis still holds the data it saw: a counter it saw
//! that is gone, with the marker gone or changed, means Redis lost its
//! data, and the replica puts back what it saw before it decides again.

use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;

use super::redis::Connection;
use super::{CounterKey, QuotaRule};

/// What a replica last saw of one counter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub(crate) rule: QuotaRule,
    pub(crate) period_start: i64,
    pub(crate) used: u64,
    /// The allowance UpdateUsage set (-1: none).
    pub(crate) allow: i64,
    pub(crate) epoch: u64,
}

/// The counters a replica saw, and the marker it knows Redis by.
#[derive(Debug)]
pub(crate) struct Recovery {
    pub(crate) seen: DashMap<CounterKey, Seen>,
    marker_key: String,
    marker: Mutex<Option<String>>,
    /// A loss was seen and what this replica saw is not all back yet.
    restoring: AtomicBool,
}

impl Recovery {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            seen: DashMap::new(),
            marker_key: format!("{prefix}{{ctl}}:marker"),
            marker: Mutex::new(None),
            restoring: AtomicBool::new(false),
        }
    }

    /// Whether Redis lost the data this replica saw (the marker it knew is
    /// gone, or another one replaced it) and it has not all been restored
    /// yet. Sets a marker where there is none, and adopts the one Redis
    /// holds.
    pub(crate) async fn data_lost(&self, connection: &mut Connection) -> redis::RedisResult<bool> {
        let fresh = format!("{:016x}", rand::random::<u64>());
        let (current,): (String,) = connection
            .pipeline(
                redis::pipe()
                    .cmd("SET")
                    .arg(&self.marker_key)
                    .arg(&fresh)
                    .arg("NX")
                    .ignore()
                    .cmd("GET")
                    .arg(&self.marker_key),
            )
            .await?;
        let mut known = self.marker.lock();
        if known.as_ref().is_some_and(|known| *known != current) {
            self.restoring.store(true, Ordering::Release);
        }
        *known = Some(current);
        Ok(self.restoring.load(Ordering::Acquire))
    }

    /// Remembers a counter's state as a decision (or UpdateUsage) left it:
    /// `(used, allowance or -1, epoch)` in the period starting at `start`.
    pub(crate) fn saw(
        &self,
        counter: CounterKey,
        rule: QuotaRule,
        start: i64,
        (used, allow, epoch): (u64, i64, u64),
    ) {
        self.seen.insert(
            counter,
            Seen {
                rule,
                period_start: start,
                used,
                allow,
                epoch,
            },
        );
    }

    /// Everything this replica saw is back in Redis.
    pub(crate) fn restored(&self) {
        self.restoring.store(false, Ordering::Release);
    }
}
