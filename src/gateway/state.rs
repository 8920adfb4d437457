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

    /// Takes the snapshot here, then serializes and writes it on a
    /// blocking thread: fsync must not stall the data plane's runtime.
    pub(crate) async fn save(
        &mut self,
        plans: &UsagePlans,
        store: &MemoryStore,
    ) -> std::io::Result<()> {
        let state = StateFile {
            version: VERSION,
            registry: plans.snapshot(),
            counters: store.snapshot(),
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
