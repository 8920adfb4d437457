//! Sharing plans, keys and associations between gateway replicas through
//! Redis: the registry lives in Redis as one snapshot with a version
//! number. A replica that changed something locally publishes a new
//! snapshot; a replica that sees a newer version restores it. Counters need
//! none of this: they live in Redis already ([`RedisStore`](crate::store::RedisStore)).

use std::time::Duration;

use crate::store::redis::Connection;

use crate::{RegistrySnapshot, UsagePlans};

// One hash tag: both keys live in one cluster slot, so they can change
// together in one transaction.
const SNAPSHOT_KEY: &str = "tup:{registry}";
const VERSION_KEY: &str = "tup:{registry}:version";

/// How often a replica compares its registry with Redis's: changes reach
/// every replica within about this long.
pub(crate) const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// The URL without its password, for logs and errors.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// One replica's view of the shared registry.
pub(crate) struct Replica {
    connection: Connection,
    plans: UsagePlans,
    /// The local generation last published or restored.
    generation: u64,
    /// The Redis version last published or restored.
    version: i64,
}

impl Replica {
    /// Connects; restores the shared registry if there is one.
    pub(crate) async fn join(url: &str, plans: UsagePlans) -> Result<Self, String> {
        let url_shown = redacted(url);
        let connection = Connection::open(url)
            .await
            .map_err(|e| format!("--redis {url_shown}: {e}"))?;
        let mut replica = Self {
            connection,
            generation: plans.generation(),
            plans,
            version: 0,
        };
        replica
            .pull()
            .await
            .map_err(|e| format!("--redis {url}: {e}"))?;
        Ok(replica)
    }

    /// Publishes local changes, or restores a newer shared registry; puts
    /// the registry back if Redis lost it (a restart without persistence).
    pub(crate) async fn sync(&mut self) -> Result<(), String> {
        // The connection reconnects after a failed command: one retry
        // covers a Redis that came back since the last sync.
        match self.sync_once().await {
            Ok(()) => Ok(()),
            Err(_) => self.sync_once().await,
        }
    }

    async fn sync_once(&mut self) -> Result<(), String> {
        if self.plans.generation() != self.generation || !self.pull().await? {
            self.push().await?;
        }
        Ok(())
    }

    async fn push(&mut self) -> Result<(), String> {
        let generation = self.plans.generation();
        let json = serde_json::to_string(&self.plans.snapshot()).map_err(|e| e.to_string())?;
        let (version,): (i64,) = self
            .connection
            .pipeline(
                redis::pipe()
                    .atomic()
                    .set(SNAPSHOT_KEY, json)
                    .ignore()
                    .incr(VERSION_KEY, 1),
            )
            .await
            .map_err(|e| e.to_string())?;
        self.generation = generation;
        self.version = version;
        Ok(())
    }

    /// Restores the shared registry if it is newer; `false` if Redis has none.
    async fn pull(&mut self) -> Result<bool, String> {
        let version: Option<i64> = self
            .connection
            .query(redis::cmd("GET").arg(VERSION_KEY))
            .await
            .map_err(|e| e.to_string())?;
        let Some(version) = version else {
            return Ok(false);
        };
        if version == self.version {
            return Ok(true);
        }
        let (json, latest): (Option<String>, Option<i64>) = self
            .connection
            .pipeline(redis::pipe().atomic().get(SNAPSHOT_KEY).get(VERSION_KEY))
            .await
            .map_err(|e| e.to_string())?;
        let (Some(json), Some(version)) = (json, latest.or(Some(version))) else {
            return Ok(false);
        };
        let snapshot: RegistrySnapshot =
            serde_json::from_str(&json).map_err(|e| format!("shared registry is corrupt: {e}"))?;
        self.plans
            .restore(snapshot)
            .map_err(|e| format!("shared registry is inconsistent: {e}"))?;
        self.generation = self.plans.generation();
        self.version = version;
        tracing::info!(version, "registry restored from Redis");
        Ok(true)
    }
}
