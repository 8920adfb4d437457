//! The state file: plans, keys, associations and counters, written
//! atomically (temp file, fsync, rename) and restored at start.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::UsagePlan;
use crate::store::{CounterSnapshot, MemoryStore};
use crate::{RegistrySnapshot, UsagePlans};

const VERSION: u32 = 1;

/// How far beyond the clock a saved time may lie (a clock stepped back a
/// little since the file was written): 5 minutes.
const CLOCK_TOLERANCE_NANOS: i64 = 300 * 1_000_000_000;

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    registry: RegistrySnapshot,
    counters: Vec<CounterSnapshot>,
}

/// Restores `path` into `plans` and `store`. A missing file is a first
/// start (`Ok(false)`); an unreadable or corrupt one is an error — never a
/// silent empty start.
pub(crate) fn load(path: &Path, plans: &UsagePlans, store: &MemoryStore) -> Result<bool, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("state file {}: cannot read: {e}", path.display())),
    };
    let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "state file {}: corrupt ({e}); move it away to start empty",
            path.display()
        )
    })?;
    if state.version != VERSION {
        return Err(format!(
            "state file {}: version {} is not supported (expected {VERSION})",
            path.display(),
            state.version
        ));
    }
    let latest = plans
        .clock()
        .now_nanos()
        .get()
        .saturating_add(CLOCK_TOLERANCE_NANOS);
    check(&state, latest).map_err(|e| {
        format!(
            "state file {}: {e}; fix or remove the value to start",
            path.display()
        )
    })?;
    plans
        .restore(state.registry)
        .map_err(|e| format!("state file {}: inconsistent: {e}", path.display()))?;
    store.restore(state.counters);
    Ok(true)
}

/// Refuses values the model cannot produce — a state file edited by hand,
/// or damaged — naming the field as the file spells it: a plan created in
/// the future, a counter of a plan or key that does not exist (or of a key
/// not in that plan: removing a key drops its counter), two counters for
/// one (plan, key), and whatever [`CounterSnapshot::check`] refuses.
/// `latest` is the clock plus its tolerance, in Unix nanoseconds.
fn check(state: &StateFile, latest: i64) -> Result<(), String> {
    let latest_secs = latest.div_euclid(1_000_000_000);
    for (i, p) in state.registry.plans.iter().enumerate() {
        if p.created > latest_secs {
            return Err(format!(
                "registry.plans[{i}].created {} (Unix seconds) is in the future",
                p.created
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, c) in state.counters.iter().enumerate() {
        let plan = state
            .registry
            .plans
            .iter()
            .find(|p| p.plan.id == c.plan_id)
            .ok_or_else(|| format!("counters[{i}].plan_id '{}' names no plan", c.plan_id))?;
        if !state.registry.keys.iter().any(|k| k.key.id == c.key_id) {
            return Err(format!("counters[{i}].key_id '{}' names no key", c.key_id));
        }
        if !plan.keys.contains(&c.key_id) {
            return Err(format!(
                "counters[{i}]: key '{}' is not in plan '{}'",
                c.key_id, c.plan_id
            ));
        }
        if !seen.insert((&c.plan_id, &c.key_id)) {
            return Err(format!(
                "counters[{i}]: a second counter for plan '{}' and key '{}'",
                c.plan_id, c.key_id
            ));
        }
        c.state
            .check(burst_of(&plan.plan), latest)
            .map_err(|e| format!("counters[{i}].state.{e}"))?;
    }
    Ok(())
}

/// The burst limit of a plan's bucket (`None`) or of a method's bucket
/// (the largest among the plan's stages that throttle that method).
fn burst_of(plan: &UsagePlan) -> impl Fn(Option<&str>) -> Option<u32> + '_ {
    move |method| match method {
        None => plan.throttle.map(|t| t.burst_limit),
        Some(method) => plan
            .api_stages
            .iter()
            .filter_map(|s| s.throttle.get(method))
            .map(|t| t.burst_limit)
            .max(),
    }
}

/// What [`load`] accepts, from what runs: counters of plans and keys that
/// the registry snapshot holds (one taken a moment earlier may miss a key
/// added since; its counter is saved next time), buckets capped at their
/// current burst (lowered since the bucket was last used).
fn consistent(
    registry: &RegistrySnapshot,
    mut counters: Vec<CounterSnapshot>,
) -> Vec<CounterSnapshot> {
    counters.retain_mut(|c| {
        let Some(plan) = registry.plans.iter().find(|p| p.plan.id == c.plan_id) else {
            return false;
        };
        if !plan.keys.contains(&c.key_id) {
            return false;
        }
        c.clamp_buckets(burst_of(&plan.plan));
        true
    });
    counters
}

/// Writes the state when it changed since the last write.
pub(crate) struct StateWriter {
    path: PathBuf,
    last: Option<Vec<u8>>,
}

impl StateWriter {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path, last: None }
    }

    /// Takes the snapshot here, then serializes and writes it on a
    /// blocking thread: fsync must not stall the data plane's runtime.
    pub(crate) async fn save(
        &mut self,
        plans: &UsagePlans,
        store: &MemoryStore,
    ) -> std::io::Result<()> {
        let registry = plans.snapshot();
        let counters = consistent(&registry, store.snapshot());
        let state = StateFile {
            version: VERSION,
            registry,
            counters,
        };
        let path = self.path.clone();
        let last = self.last.take();
        let (result, last) = tokio::task::spawn_blocking(move || {
            let bytes = match serde_json::to_vec(&state) {
                Ok(bytes) => bytes,
                Err(e) => return (Err(std::io::Error::other(e)), last),
            };
            if last.as_deref() == Some(&bytes[..]) {
                return (Ok(()), last);
            }
            match write_atomically(&path, &bytes) {
                Ok(()) => (Ok(()), Some(bytes)),
                Err(e) => (Err(e), last),
            }
        })
        .await
        .map_err(std::io::Error::other)?;
        self.last = last;
        result
    }
}

/// Temp file beside the target, fsync, rename over, fsync the directory:
/// a reader (or a crash) sees the old file or the new one, never half.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // The file holds API key values: readable by the gateway's user only.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}
