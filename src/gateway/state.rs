//! The state file: plans, keys, associations and counters, written
//! atomically (temp file, fsync, rename) and restored at start.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::{CounterSnapshot, MemoryStore};
use crate::{RegistrySnapshot, UsagePlans};

const VERSION: u32 = 1;

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
    plans
        .restore(state.registry)
        .map_err(|e| format!("state file {}: inconsistent: {e}", path.display()))?;
    store.restore(state.counters);
    Ok(true)
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

    pub(crate) fn save(&mut self, plans: &UsagePlans, store: &MemoryStore) -> std::io::Result<()> {
        let state = StateFile {
            version: VERSION,
            registry: plans.snapshot(),
            counters: store.snapshot(),
        };
        let bytes = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
        if self.last.as_deref() == Some(&bytes[..]) {
            return Ok(());
        }
        write_atomically(&self.path, &bytes)?;
        self.last = Some(bytes);
        Ok(())
    }
}

/// Temp file beside the target, fsync, rename over, fsync the directory:
/// a reader (or a crash) sees the old file or the new one, never half.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
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
