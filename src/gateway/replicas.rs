//! Sharing plans, keys and associations between gateway replicas through
//! Redis: the registry lives in Redis as one snapshot with a version
//! number. A replica that changed something locally publishes a new
//! snapshot; a replica that sees a newer version restores it. Counters need
//! none of this: they live in Redis already ([`RedisStore`](crate::store::RedisStore)).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Mutex;

use super::lineage::{Base, Known, LineageOnly, Removal, Shared};
use crate::registry::MergeBase;
use crate::store::redis::Connection;
use crate::store::retry;
use crate::store::{RedisStore, StoreFuture};
use crate::{Error, ErrorKind, RegistrySnapshot, UsagePlans};

// One hash tag: both keys live in one cluster slot, so they can change
// together in one transaction.
const SNAPSHOT_KEY: &str = "tup:{registry}";
const VERSION_KEY: &str = "tup:{registry}:version";
/// What every replica sharing the registry must agree on.
const META_KEY: &str = "tup:{registry}:meta";
/// Held by the replica that joins and creates its configured plans and keys,
/// so that replicas starting together create them once (each matches what
/// the one before it created) instead of twice with different ids.
const JOINING_KEY: &str = "tup:{registry}:joining";
/// How long the join lock lasts if its holder dies with it.
const JOINING_LEASE: Duration = Duration::from_secs(10);
/// The registry snapshot's format; a replica that shares another refuses
/// to start.
const FORMAT: &str = "1";

/// How often a replica compares its registry with Redis's: changes reach
/// every replica within about this long.
pub(crate) const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// The URL without its password, for logs and errors.
pub(crate) fn redacted(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (url, None),
    };
    let mut shown = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        // Not a URL (a mistyped one, say): whatever comes before an `@`
        // may still be a password.
        (_, Some(at)) => format!("***@{}", &url[at + 1..]),
        _ => url.to_owned(),
    };
    // A password may also come as a parameter (`redis+unix://...?pass=`).
    if let Some(query) = query {
        let is_secret = |name: &str| {
            ["pass", "password"]
                .iter()
                .any(|s| name.eq_ignore_ascii_case(s))
        };
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _)) if is_secret(name) => format!("{name}=***"),
                _ => param.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&params.join("&"));
    }
    shown
}

/// Publishes `snapshot` as the next version if Redis still holds
/// `expected` (0: none yet); -1 when another replica published first. A
/// first version starts at a random number (`ARGV[3]`), so that versions
/// published after Redis lost its data never repeat one a replica holds.
const PUBLISH: &str = r"
local current = redis.call('GET', KEYS[2])
if (current or '0') ~= ARGV[2] then return -1 end
if not current then redis.call('SET', KEYS[2], ARGV[3]) end
redis.call('SET', KEYS[1], ARGV[1])
return redis.call('INCRBY', KEYS[2], ARGV[4])
";

/// How much a publish moves the registry's version on: at random, so that
/// two registries published on the same one (Redis went back between
/// them) almost never share a version, which a replica takes for "nothing
/// new".
fn version_step() -> u32 {
    rand::random_range(1..=1_000_000)
}

/// The longest an admin call waits for its change to reach the replicas
/// (each live one answers within 1 s, or is taken as gone).
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(3);

/// How many times an admin call publishes and announces its change when
/// Redis lost its data meanwhile (see [`share`]).
const REPLICATE_ROUNDS: usize = 3;

/// How many times a replica merges and retries when others keep publishing.
const PUBLISH_ATTEMPTS: usize = 8;

/// Shares `replica` between the periodic sync and the two pushes: a change
/// made here is published at once and announced, and the admin call that
/// made it waits until every live replica took it in
/// ([`UsagePlans::replicated`]); an announcement from another replica is
/// taken in at once. The 200 ms sync stays, for announcements lost.
pub(crate) fn share(
    replica: Replica,
    plans: &UsagePlans,
    store: &RedisStore,
) -> Arc<Mutex<Replica>> {
    let mut replica = replica;
    replica.losses_seen = store.losses();
    replica.store = Some(store.clone());
    let replica = Arc::new(Mutex::new(replica));
    let weak = Arc::downgrade(&replica);
    store.on_registry_change(Some(Arc::new(move || {
        StoreFuture::boxed(sync(weak.clone()))
    })));
    let (weak, announcer) = (Arc::downgrade(&replica), store.clone());
    plans.set_replication(Some(Arc::new(move || {
        let (weak, announcer) = (weak.clone(), announcer.clone());
        StoreFuture::boxed(async move {
            // An unreachable Redis must not hold an admin call for long.
            let replicated = async {
                // Redis may lose its data between the publish and the
                // acknowledgements: another replica then publishes what
                // it had, and acknowledges without this change. Published
                // and announced again (merged: it holds), until what Redis
                // holds comes from it.
                let mut change = None;
                for _ in 0..REPLICATE_ROUNDS {
                    // The change is made here: a round that fails (Redis
                    // restarting) is made again.
                    let (held, carried) =
                        retry::retried("sharing the registry", retry::ANNOUNCE, || {
                            share_round(weak.clone(), announcer.clone(), change)
                        })
                        .await?;
                    if held {
                        return Ok(());
                    }
                    change = carried;
                }
                Err(Error::new(
                    ErrorKind::Store,
                    "Redis kept losing the change before every replica took it in",
                ))
            };
            tokio::time::timeout(REPLICATE_TIMEOUT, replicated)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorKind::Store,
                        format!("Redis did not answer within {REPLICATE_TIMEOUT:?}"),
                    ))
                })
        })
    })));
    replica
}

/// Takes in what the others published, and publishes what this replica
/// changed (see [`Replica::sync`]); nothing once the replica is gone.
async fn sync(replica: Weak<Mutex<Replica>>) -> Result<(), Error> {
    match replica.upgrade() {
        Some(replica) => replica.lock().await.sync().await,
        None => Ok(()),
    }
}

/// One round of sharing a change made here: published (merged with what
/// Redis holds), announced, then whether what Redis holds now carries it;
/// with the registry that carries it (`change`, found by the first round
/// and named by later ones' merges).
async fn share_round(
    weak: Weak<Mutex<Replica>>,
    announcer: RedisStore,
    change: Option<Option<u64>>,
) -> Result<(bool, Option<Option<u64>>), Error> {
    sync(weak.clone()).await?;
    announcer.registry_changed().await?;
    let Some(replica) = weak.upgrade() else {
        return Ok((true, change));
    };
    let mut replica = replica.lock().await;
    // The registry that carries the change: published by the first round
    // (or taken in, without a change); a later round's merge names it.
    let change = change.unwrap_or_else(|| replica.base.lineage.first().copied());
    Ok((replica.held_by_redis(change).await?, Some(change)))
}

/// Makes a failed step's error a store error that names the step and
/// keeps its cause as its source.
pub(crate) fn failed<E>(step: impl std::fmt::Display) -> impl FnOnce(E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| Error::new(ErrorKind::Store, format!("{step}: {e}")).with_source(e)
}

/// Why a replica could not join.
#[derive(Debug)]
pub(crate) enum JoinError {
    /// Redis did not answer (yet): worth trying again.
    Unreachable(Error),
    /// The replicas there serve another stage or format: a configuration
    /// error, which trying again does not fix.
    Mismatch(String),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(e) => e.fmt(f),
            Self::Mismatch(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for JoinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unreachable(e) => e.source(),
            Self::Mismatch(_) => None,
        }
    }
}

/// One replica's view of the shared registry.
pub(crate) struct Replica {
    /// The join lock's token while this replica holds it.
    joining: Option<String>,
    connection: Connection,
    plans: UsagePlans,
    publish: redis::Script,
    /// The local generation last published or restored.
    generation: u64,
    /// A merge brought in local changes that are not published yet.
    pending: bool,
    /// The Redis version last published or restored.
    version: i64,
    /// The registry as of `version`: the base of three-way merges.
    base: Base,
    /// The registries this replica held lately: after Redis lost its data,
    /// the base of a merge with what Redis holds is the latest of them
    /// that registry comes from.
    known: Known,
    /// Redis lost its data since this replica last published or took in a
    /// registry: what it holds now is not a later version of `base`.
    lost: bool,
    /// The stage this replica serves (`api:stage`).
    stage: String,
    /// The counters' store: how many times it found that Redis lost its
    /// data, and the marker it knows Redis by (see `pull`).
    store: Option<RedisStore>,
    /// How many of the store's losses this registry has taken in.
    losses_seen: u64,
    /// The marker last found moved (see `pull`), taken in once.
    marker_moved_to: Option<Option<String>>,
}

/// Takes the join lock, waiting while another replica holds it (at most
/// [`JOINING_LEASE`], after which its lock lapses).
async fn wait_for_join_lock(connection: &mut Connection, token: &str) -> redis::RedisResult<()> {
    let mut set = redis::cmd("SET");
    set.arg(JOINING_KEY)
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(JOINING_LEASE.as_millis() as u64);
    loop {
        let taken: Option<String> = connection.query(&set).await?;
        if taken.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sets the stage and registry format where Redis has none (a first
/// replica, or Redis lost its data); returns what Redis holds.
async fn claim_meta(
    connection: &mut Connection,
    stage: &str,
) -> redis::RedisResult<(Option<String>, Option<String>)> {
    connection
        .pipeline(
            redis::pipe()
                .cmd("HSETNX")
                .arg(META_KEY)
                .arg("format")
                .arg(FORMAT)
                .ignore()
                .cmd("HSETNX")
                .arg(META_KEY)
                .arg("stage")
                .arg(stage)
                .ignore()
                .cmd("HGET")
                .arg(META_KEY)
                .arg("format")
                .cmd("HGET")
                .arg(META_KEY)
                .arg("stage"),
        )
        .await
}

/// Releases the join lock if `token` still holds it (one that lapsed is
/// its new holder's).
async fn release_join_lock(connection: &mut Connection, token: String) -> redis::RedisResult<()> {
    let release = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
         return redis.call('DEL', KEYS[1]) end return 0",
    );
    let mut invocation = release.key(JOINING_KEY);
    invocation.arg(token);
    let _: i64 = connection.invoke(invocation).await?;
    Ok(())
}

/// A join given up before it finished (its attempt timed out) lets the
/// next replica join at once, not after [`JOINING_LEASE`]: replicas
/// started together waited 10 s for a lock its holder had dropped.
impl Drop for Replica {
    fn drop(&mut self) {
        let Some(token) = self.joining.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut connection = self.connection.clone();
            runtime.spawn(async move {
                let _ = release_join_lock(&mut connection, token).await;
            });
        }
    }
}

impl Replica {
    /// Connects; restores the shared registry if there is one.
    pub(crate) async fn join(url: &str, plans: UsagePlans, stage: &str) -> Result<Self, JoinError> {
        let url_shown = redacted(url);
        let at = format!("--redis {url_shown}");
        let mut connection = Connection::open(url)
            .await
            .map_err(failed(&at))
            .map_err(JoinError::Unreachable)?;
        // The first replica sets the stage and format; the others must match.
        let (format, shared_stage) = claim_meta(&mut connection, stage)
            .await
            .map_err(failed(&at))
            .map_err(JoinError::Unreachable)?;
        if format.as_deref() != Some(FORMAT) {
            return Err(JoinError::Mismatch(format!(
                "--redis {url_shown}: the replicas there share their registry in format {}, \
                 this version in format {FORMAT}: run one version per Redis (or prefix)",
                format.unwrap_or_default()
            )));
        }
        if shared_stage.as_deref() != Some(stage) {
            return Err(JoinError::Mismatch(format!(
                "--stage {stage}: the replicas on --redis {url_shown} serve stage {}; \
                 replicas sharing a Redis serve one stage (to move it to another, stop \
                 every replica, then HDEL {META_KEY} stage)",
                shared_stage.unwrap_or_default()
            )));
        }
        let token = rand::random::<u64>().to_string();
        wait_for_join_lock(&mut connection, &token)
            .await
            .map_err(failed(&at))
            .map_err(JoinError::Unreachable)?;
        // What the configuration created while Redis was away is created
        // again over what the replicas share (matched by value or name),
        // not merged as if it were a change of this replica's. Cleared only
        // now, holding the lock: while this replica waited for it, its
        // configured keys were still served by the failure policy (cleared
        // before, they were refused with 403 for as long as the replicas
        // ahead of it took to join: up to 1.7 s in a black-box run).
        if let Err(e) = plans.restore(RegistrySnapshot::default()) {
            let _ = release_join_lock(&mut connection, token).await;
            return Err(JoinError::Mismatch(e.to_string()));
        }
        let mut replica = Self {
            joining: Some(token),
            connection,
            stage: stage.to_owned(),
            generation: plans.generation(),
            pending: false,
            base: Base {
                lineage: Vec::new(),
                merge: MergeBase::of(&plans.snapshot()).into(),
                removed: Vec::new(),
                anchors: Vec::new(),
                undone: Vec::new(),
                depth: 0,
            },
            known: Known::default(),
            lost: false,
            plans,
            publish: redis::Script::new(PUBLISH),
            version: 0,
            store: None,
            losses_seen: 0,
            marker_moved_to: None,
        };
        replica
            .sync()
            .await
            .map_err(failed(&at))
            .map_err(JoinError::Unreachable)?;
        Ok(replica)
    }

    /// Publishes this replica's configured plans and keys, then lets the
    /// next replica join. A lock that lapsed (held past [`JOINING_LEASE`]) is left
    /// to its new holder.
    pub(crate) async fn joined(&mut self) -> Result<(), Error> {
        if self.joining.is_none() {
            return Ok(());
        }
        self.sync().await?;
        let Some(token) = self.joining.take() else {
            return Ok(());
        };
        release_join_lock(&mut self.connection, token)
            .await
            .map_err(failed("releasing the join lock"))
    }

    /// Restores what other replicas published and publishes local changes.
    /// Changes made on two replicas at once are merged (three-way, per plan
    /// and key; a plan's members set-wise), never lost.
    pub(crate) async fn sync(&mut self) -> Result<(), Error> {
        // The connection reconnects after a failed command: one retry
        // covers a Redis that came back since the last sync.
        match self.sync_once().await {
            Ok(()) => Ok(()),
            Err(_) => self.sync_once().await,
        }
    }

    async fn sync_once(&mut self) -> Result<(), Error> {
        for _ in 0..PUBLISH_ATTEMPTS {
            self.pull().await?;
            if !self.changed() {
                return Ok(());
            }
            if self.publish().await? {
                return Ok(());
            }
        }
        Err(Error::new(
            ErrorKind::Store,
            "the shared registry kept changing; will retry",
        ))
    }

    /// Publishes the local registry unless another replica published
    /// since the last pull; `false` then.
    async fn publish(&mut self) -> Result<bool, Error> {
        let generation = self.plans.generation();
        // Published right after a loss: its lineage is anchored (a replica
        // holding one of those registries takes what comes from it,
        // however many publishes later).
        let (shared, published) =
            Shared::published_on(&self.base, self.plans.snapshot(), self.lost);
        let json = serde_json::to_string(&shared).map_err(failed("encoding the registry"))?;
        let mut invocation = self.publish.key(SNAPSHOT_KEY);
        invocation
            .key(VERSION_KEY)
            .arg(json)
            .arg(self.version.to_string())
            .arg(rand::random::<u32>())
            .arg(version_step());
        let version: i64 = self
            .connection
            .invoke(invocation)
            .await
            .map_err(failed("publishing the registry"))?;
        if version < 0 {
            return Ok(false);
        }
        self.generation = generation;
        self.pending = false;
        self.version = version;
        self.took_in_base(published);
        Ok(true)
    }

    /// The shared registry and its version, as Redis holds them now.
    async fn read_shared(&mut self) -> Result<(Option<String>, Option<i64>), Error> {
        self.connection
            .pipeline(redis::pipe().atomic().get(SNAPSHOT_KEY).get(VERSION_KEY))
            .await
            .map_err(failed("reading the shared registry"))
    }

    /// Whether Redis's marker moved away from the one the store knows, to
    /// a value this registry has not taken in yet.
    async fn marker_newly_moved(&mut self) -> Result<bool, Error> {
        let Some(store) = &self.store else {
            return Ok(false);
        };
        let moved = store
            .marker_moved()
            .await
            .map_err(failed("reading the marker"))?;
        let new = moved.is_some() && moved != self.marker_moved_to;
        self.marker_moved_to = moved;
        Ok(new)
    }

    /// What Redis holds is not a later version of what this replica has:
    /// the next pull merges both against the latest registry both come
    /// from (against none, keeping each side's plans and keys, if there is
    /// none this replica knows), and this replica publishes the result.
    fn forget_base(&mut self) {
        self.version = 0;
        self.lost = true;
        self.pending = true;
    }

    /// Whether `remote` (at `version`) is the registry this replica holds
    /// or comes from it, as a later publish does. Not when its version is
    /// smaller (versions only grow while Redis keeps its data), nor when it
    /// comes from a registry this replica held before the one it holds, or
    /// that its own registry comes from (a publish on an older registry
    /// Redis went back to). A lineage that names none of them is taken as
    /// coming from the held registry by way of more publishes than a
    /// lineage names; one without lineage (an older version's) too.
    fn descends_from_held(&self, remote: &Shared, version: i64) -> bool {
        if version < self.version {
            return false;
        }
        let Some(held) = self.base.lineage.first() else {
            return true;
        };
        let ancestry_known = self.known.common_ancestor(&remote.lineage).is_some()
            || remote
                .lineage
                .iter()
                .any(|id| self.base.lineage.contains(id));
        remote.lineage.is_empty()
            || remote.lineage.contains(held)
            || remote.anchors.contains(held)
            || !ancestry_known
    }

    /// What `remote` and this replica's registry are merged against once
    /// Redis lost its data or went back: `remote` itself when this
    /// replica's registry comes from it (its lineage names it, however
    /// long ago it was held), else the latest registry both come from that
    /// this replica keeps; `None` when it knows neither.
    fn base_after_loss(&self, remote: &Shared) -> Option<Cow<'_, MergeBase>> {
        let ours = remote
            .lineage
            .first()
            .is_some_and(|id| self.base.lineage.contains(id));
        if ours {
            return Some(Cow::Owned(MergeBase::of(&remote.registry)));
        }
        // It comes from the registry this one holds, however long ago.
        let held = self.base.lineage.first();
        if held.is_some_and(|held| remote.anchors.contains(held)) {
            return Some(Cow::Borrowed(&self.base.merge));
        }
        self.known
            .common_ancestor(&remote.lineage)
            .map(Cow::Borrowed)
    }

    /// `shared` is what Redis holds now, and the base of the next merge.
    fn took_in(&mut self, shared: &Shared) {
        self.took_in_base(Base::of(shared));
    }

    /// [`took_in`](Self::took_in), the registry already made a base.
    fn took_in_base(&mut self, base: Base) {
        self.base = base;
        self.known.held(&self.base);
        self.lost = false;
    }

    /// Whether the registry Redis holds is `change` (a registry this
    /// replica published or took in), or comes from it. Without an id (a
    /// registry from a version without lineages) it cannot tell: taken as
    /// held.
    async fn held_by_redis(&mut self, change: Option<u64>) -> Result<bool, Error> {
        let Some(change) = change else {
            return Ok(true);
        };
        let (json, _) = self.read_shared().await?;
        let Some(json) = json else {
            return Ok(false);
        };
        let shared: LineageOnly =
            serde_json::from_str(&json).map_err(failed("shared registry is corrupt"))?;
        Ok(shared.lineage.is_empty() || shared.lineage.contains(&change))
    }

    /// Whether this replica holds changes the others have not seen.
    fn changed(&self) -> bool {
        self.pending || self.plans.generation() != self.generation
    }

    /// Takes in what other replicas published since the last sync, merged
    /// with local changes not yet published.
    async fn pull(&mut self) -> Result<(), Error> {
        // Redis lost its data since the last pull: what it holds now is
        // not a later version of what this replica has (another replica
        // may have published its configuration alone meanwhile), so the
        // two are merged, both sides kept, as after finding none.
        let losses = self.store.as_ref().map_or(0, RedisStore::losses);
        if losses > self.losses_seen {
            self.losses_seen = losses;
            self.forget_base();
        }
        let mut shared = self.read_shared().await?;
        // The store finds a loss only when it next calls Redis. The marker,
        // read after the registry, tells now whether Redis lost its data
        // (or another replica put it back): then what was just read may come
        // from before the loss or after it, and is read again, to be merged
        // with what this replica has, both sides kept. Once for each marker
        // found.
        if self.marker_newly_moved().await? {
            tracing::info!("Redis's marker moved: the shared registry is merged with this one");
            self.forget_base();
            shared = self.read_shared().await?;
        }
        let (json, version) = shared;
        let (Some(json), Some(version)) = (json, version) else {
            // Nothing shared yet (or Redis lost it): what we have is new,
            // and so are the stage and format a replica must match.
            claim_meta(&mut self.connection, &self.stage)
                .await
                .map_err(failed("claiming the stage and format"))?;
            if self.version != 0 {
                self.forget_base();
            }
            return Ok(());
        };
        if version == self.version {
            return Ok(());
        }
        let remote: Shared =
            serde_json::from_str(&json).map_err(failed("shared registry is corrupt"))?;
        if !self.lost && !self.descends_from_held(&remote, version) {
            // Redis went back to an older registry (an RDB or AOF behind),
            // perhaps with another replica's changes published on it since:
            // taken in, changes every replica took in were gone (a key
            // disabled through any replica was enabled again on all).
            // Merged against the registry both come from, they stay.
            tracing::warn!(
                version,
                held = self.version,
                "Redis holds a registry that does not come from this replica's: merged"
            );
            self.lost = true;
            self.pending = true;
        }
        let (base, from_nothing) = match self.lost {
            false => (Cow::Borrowed(&*self.base.merge), false),
            true => match self.base_after_loss(&remote) {
                Some(base) => (base, false),
                None => (Cow::Owned(MergeBase::default()), true),
            },
        };
        // Merged against nothing, what either side names as removed lately
        // stays removed (else it came back from the other side's copy),
        // unless the side holding it had the removal and added it back
        // since. Not against a real base: there an item the other side
        // holds that the base lacks was added (back) since, and stays.
        let removed: [HashSet<u64>; 2] = match from_nothing {
            true => {
                // Removals not published yet: named by a registry no one
                // descends from.
                let unpublished = rand::random::<u64>();
                let local = MergeBase::of(&self.plans.snapshot());
                let here = self.base.named_by(&local, unpublished);
                [
                    Removal::unseen_by(&here.removed, &remote.lineage, &remote.undone),
                    Removal::unseen_by(&remote.removed, &self.base.lineage, &here.undone),
                ]
            }
            false => Default::default(),
        };
        // An admin write here while merging would be overwritten by the
        // restore: then merge again, with it.
        let (changed_here, generation) = loop {
            let generation = self.plans.generation();
            let changed_here = self.pending || generation != self.generation;
            let next = if changed_here {
                let local = self.plans.snapshot();
                let [here, there] = &removed;
                match from_nothing {
                    true => {
                        let base = base
                            .with_removed(here, &local, &remote.registry)
                            .with_removed(there, &remote.registry, &local);
                        // What both sides changed: the side that has seen
                        // more publishes wins (a replica paused through
                        // many changes and a loss holds older copies).
                        match remote.depth > self.base.depth {
                            true => RegistrySnapshot::merge(&base, &remote.registry, &local),
                            false => RegistrySnapshot::merge(&base, &local, &remote.registry),
                        }
                    }
                    false => RegistrySnapshot::merge(&base, &local, &remote.registry),
                }
            } else {
                remote.registry.clone()
            };
            if let Some(after) = self
                .plans
                .restore_if_unchanged(next, generation)
                .map_err(failed("shared registry is inconsistent"))?
            {
                break (changed_here, after);
            }
        };
        self.generation = generation;
        self.pending = changed_here;
        self.version = version;
        // Merged, what is published next comes from both sides.
        let remote = match changed_here {
            true => remote.merged_with(&self.base, self.lost),
            false => remote,
        };
        self.took_in(&remote);
        tracing::info!(
            version,
            merged = changed_here,
            "registry restored from Redis"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis::redis_server::Redis;

    #[tokio::test]
    async fn a_join_given_up_lets_the_next_replica_join_at_once() {
        let redis = Redis::start();
        let plans = UsagePlans::builder().build();
        let first = Replica::join(&redis.url(), plans.clone(), "gateway:prod")
            .await
            .unwrap();
        assert!(first.joining.is_some(), "the first holds the join lock");
        // Its attempt timed out: dropped, not joined.
        drop(first);
        // The lock it took lapses only after JOINING_LEASE: the next replica
        // joins well before, so it was released.
        let second = tokio::time::timeout(
            JOINING_LEASE / 2,
            Replica::join(&redis.url(), plans, "gateway:prod"),
        )
        .await
        .expect("joined before the dropped lock could lapse")
        .unwrap();
        assert!(second.joining.is_some());
    }

    /// A replica joined on a new Redis, and the key it created and
    /// published.
    async fn a_replica_that_published_a_key() -> (Redis, UsagePlans, Replica, crate::ApiKey) {
        let redis = Redis::start();
        let (plans, mut replica) = a_replica_on(&redis).await;
        let key = plans.create_api_key(crate::NewApiKey::new("k")).unwrap();
        replica.sync().await.unwrap();
        (redis, plans, replica, key)
    }

    /// A replica on `redis`, holding what Redis holds.
    async fn a_replica_on(redis: &Redis) -> (UsagePlans, Replica) {
        let plans = UsagePlans::builder().build();
        let mut replica = Replica::join(&redis.url(), plans.clone(), "gateway:prod")
            .await
            .unwrap();
        replica.joined().await.unwrap();
        replica.sync().await.unwrap();
        (plans, replica)
    }

    /// Redis loses its data after replica A published a change, and
    /// another replica publishes what it had before the change: what Redis
    /// holds no longer comes from A's change (the admin call publishes and
    /// announces it again), until A, finding the loss, merges and
    /// publishes again, the change kept.
    #[tokio::test]
    async fn a_change_lost_under_an_older_registry_is_not_held_until_published_again() {
        let (redis, plans, mut a, key) = a_replica_that_published_a_key().await;
        let mut raw = redis.connection().await;
        let before: String = redis::cmd("GET")
            .arg(SNAPSHOT_KEY)
            .query_async(&mut raw)
            .await
            .unwrap();
        plans.delete_api_key(&key.id).unwrap();
        a.sync().await.unwrap();
        let change = a.base.lineage.first().copied();
        assert!(a.held_by_redis(change).await.unwrap());

        let () = redis::pipe()
            .atomic()
            .cmd("FLUSHALL")
            .ignore()
            .cmd("SET")
            .arg(SNAPSHOT_KEY)
            .arg(&before)
            .ignore()
            .cmd("SET")
            .arg(VERSION_KEY)
            .arg(7)
            .ignore()
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(
            !a.held_by_redis(change).await.unwrap(),
            "the change is not held"
        );
        // A finds the loss (the store's marker, which this test has not).
        a.forget_base();
        a.sync().await.unwrap();
        assert!(a.held_by_redis(change).await.unwrap(), "published again");
        let shared: String = redis::cmd("GET")
            .arg(SNAPSHOT_KEY)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(!shared.contains(&key.id), "the deletion holds: {shared}");
        assert!(plans.api_key(&key.id).is_err());
    }

    /// The shared registry and its version as Redis holds them now.
    async fn saved_registry(raw: &mut redis::aio::MultiplexedConnection) -> (String, i64) {
        redis::pipe()
            .get(SNAPSHOT_KEY)
            .get(VERSION_KEY)
            .query_async(raw)
            .await
            .unwrap()
    }

    /// Redis back at `saved` (as after a restart from a save).
    async fn put_back_registry(
        raw: &mut redis::aio::MultiplexedConnection,
        (registry, version): &(String, i64),
    ) {
        let () = redis::pipe()
            .set(SNAPSHOT_KEY, registry)
            .ignore()
            .set(VERSION_KEY, version)
            .ignore()
            .query_async(raw)
            .await
            .unwrap();
    }

    /// Redis goes back to a registry older than one every replica took in
    /// (an RDB saved before a key was deleted, loaded by a restart), under
    /// the same marker: the version went down, and the replica merges
    /// rather than takes the older registry in. (Taken in, a key disabled
    /// or deleted came back on every replica, and one created since was
    /// gone.)
    #[tokio::test]
    async fn an_older_registry_back_in_redis_takes_no_change_away() {
        let (redis, plans, mut a, deleted) = a_replica_that_published_a_key().await;
        let mut raw = redis.connection().await;
        let saved = saved_registry(&mut raw).await;
        plans.delete_api_key(&deleted.id).unwrap();
        let created = plans.create_api_key(crate::NewApiKey::new("new")).unwrap();
        a.sync().await.unwrap();

        put_back_registry(&mut raw, &saved).await;
        a.sync().await.unwrap();
        assert!(plans.api_key(&deleted.id).is_err(), "the deletion holds");
        assert!(plans.api_key(&created.id).is_ok(), "the new key stays");
        let shared: String = redis::cmd("GET")
            .arg(SNAPSHOT_KEY)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(
            !shared.contains(&deleted.id) && shared.contains(&created.id),
            "published again: {shared}"
        );
    }

    /// `a` deletes `deleted` and then creates `creates` keys, each change
    /// published: past 7, it keeps no merge base of the registry before
    /// the deletion.
    async fn changes_since(
        plans: &UsagePlans,
        a: &mut Replica,
        deleted: &crate::ApiKey,
        creates: usize,
    ) -> Vec<crate::ApiKey> {
        plans.delete_api_key(&deleted.id).unwrap();
        a.sync().await.unwrap();
        let mut created = Vec::new();
        for n in 0..creates {
            let name = format!("later {n}");
            created.push(plans.create_api_key(crate::NewApiKey::new(name)).unwrap());
            a.sync().await.unwrap();
        }
        created
    }

    /// Redis goes back to a registry older than every one this replica
    /// still keeps as a merge's base (21 changes ago), though its own
    /// registry's lineage names it: everything Redis holds is in this
    /// replica's registry, which is kept whole. (Merged against nothing,
    /// the deleted key came back from the older registry; also with 16
    /// changes or more and lineages of 16.)
    #[tokio::test]
    async fn a_registry_older_than_the_bases_kept_takes_no_change_away() {
        let (redis, plans, mut a, deleted) = a_replica_that_published_a_key().await;
        let mut raw = redis.connection().await;
        let saved = saved_registry(&mut raw).await;
        let created = changes_since(&plans, &mut a, &deleted, 20).await;

        put_back_registry(&mut raw, &saved).await;
        a.sync().await.unwrap();
        assert!(plans.api_key(&deleted.id).is_err(), "the deletion holds");
        for key in &created {
            assert!(plans.api_key(&key.id).is_ok(), "the later keys stay");
        }
        let shared: String = redis::cmd("GET")
            .arg(SNAPSHOT_KEY)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(!shared.contains(&deleted.id), "published again: {shared}");
    }

    /// As above, and B, which held only the older registry, publishes on
    /// it under a larger version than A's: A merges, both sides kept
    /// (taken in as a later registry, its nine changes were gone), and
    /// A's deletion stands though A keeps no base of the registry both
    /// come from: A's registry names it removed. (Merged against nothing,
    /// B's older copy of the key brought it back.)
    #[tokio::test]
    async fn a_registry_published_on_one_older_than_the_bases_kept_is_merged() {
        let (redis, plans, mut a, deleted) = a_replica_that_published_a_key().await;
        let (other, mut b) = a_replica_on(&redis).await;
        let mut raw = redis.connection().await;
        let saved = saved_registry(&mut raw).await;
        let created = changes_since(&plans, &mut a, &deleted, 8).await;

        put_back_registry(&mut raw, &saved).await;
        let bs = other.create_api_key(crate::NewApiKey::new("b's")).unwrap();
        b.sync().await.unwrap();
        let (registry, _) = saved_registry(&mut raw).await;
        put_back_registry(&mut raw, &(registry, a.version + 1)).await;
        a.sync().await.unwrap();
        assert!(plans.api_key(&bs.id).is_ok(), "B's key is taken in");
        for key in &created {
            assert!(plans.api_key(&key.id).is_ok(), "A's later keys stay");
        }
        assert!(plans.api_key(&deleted.id).is_err(), "A's deletion holds");
        b.sync().await.unwrap();
        assert!(other.api_key(&deleted.id).is_err(), "on B too");
    }

    /// Two replicas; a key put in a plan through A, both holding it, then
    /// taken out through A, both holding that.
    struct TakenOut {
        redis: Redis,
        plans: UsagePlans,
        a: Replica,
        other: UsagePlans,
        b: Replica,
        key: crate::ApiKey,
        plan: crate::UsagePlan,
    }

    async fn a_key_taken_out_of_its_plan() -> TakenOut {
        let (redis, plans, mut a, key) = a_replica_that_published_a_key().await;
        let plan = plans
            .create_usage_plan(crate::NewUsagePlan::new("p"))
            .unwrap();
        plans.add_key_to_plan(&plan.id, &key.id).unwrap();
        a.sync().await.unwrap();
        let (other, mut b) = a_replica_on(&redis).await;
        plans.remove_key_from_plan(&plan.id, &key.id).unwrap();
        a.sync().await.unwrap();
        b.sync().await.unwrap();
        TakenOut {
            redis,
            plans,
            a,
            other,
            b,
            key,
            plan,
        }
    }

    /// After a loss, merged against a registry both come from, a key the
    /// other replica added back to its plan since stays in it, though this
    /// replica's registry names the membership removed (that applies only
    /// to a merge against nothing).
    #[tokio::test]
    async fn a_membership_added_back_elsewhere_stays_after_a_loss() {
        let TakenOut {
            redis: _redis,
            plans,
            mut a,
            other,
            mut b,
            key,
            plan,
        } = a_key_taken_out_of_its_plan().await;
        other.add_key_to_plan(&plan.id, &key.id).unwrap();
        b.sync().await.unwrap();

        // A finds a loss (the store's marker, which this test has not).
        a.forget_base();
        a.sync().await.unwrap();
        let members = plans.usage_plan_keys(&plan.id).unwrap();
        assert_eq!(members.len(), 1, "B's add stays");
    }

    /// A takes a key out of its plan; B takes that in and puts the key
    /// back; Redis goes back to the registry of the removal, past every
    /// base A keeps, and B publishes its add on it. A merges against
    /// nothing: its registry names the membership removed, but B's comes
    /// from the registry that named it, so B's add was made after the
    /// removal, and stays. (Untagged, the removal won.)
    #[tokio::test]
    async fn a_named_removal_gives_way_to_an_add_made_after_it() {
        let TakenOut {
            redis,
            plans,
            mut a,
            other,
            mut b,
            key,
            plan,
        } = a_key_taken_out_of_its_plan().await;
        let mut raw = redis.connection().await;
        let removal = saved_registry(&mut raw).await;
        let mut created = Vec::new();
        for n in 0..KEPT_BY_A {
            let name = format!("later {n}");
            created.push(plans.create_api_key(crate::NewApiKey::new(name)).unwrap());
            a.sync().await.unwrap();
        }

        put_back_registry(&mut raw, &removal).await;
        other.add_key_to_plan(&plan.id, &key.id).unwrap();
        b.sync().await.unwrap();
        let (registry, _) = saved_registry(&mut raw).await;
        put_back_registry(&mut raw, &(registry, a.version + 1)).await;
        a.sync().await.unwrap();
        let members = plans.usage_plan_keys(&plan.id).unwrap();
        assert_eq!(members.len(), 1, "B's add stays");
        for key in &created {
            assert!(plans.api_key(&key.id).is_ok(), "A's later keys stay");
        }
        b.sync().await.unwrap();
        assert_eq!(other.usage_plan_keys(&plan.id).unwrap().len(), 1);
    }

    /// How Redis loses A's change (a key enabled) while B is paused.
    #[derive(PartialEq)]
    enum Loss {
        /// Emptied before the change (A puts its registry back first).
        FlushBefore,
        /// Emptied after the change and 5 more (B behind A at the loss).
        FlushAfter,
        /// Emptied after the change and more than a lineage names: A's
        /// registry names nothing B holds, but has seen more publishes.
        FlushLongAfter,
        /// Back at B's registry after the change and more than a lineage
        /// names (A merges against nothing, and publishes).
        Rollback,
    }

    /// `count` keys created through `a`, each change published.
    async fn published_changes(plans: &UsagePlans, a: &mut Replica, label: &str, count: usize) {
        for n in 0..count {
            let name = format!("{label} {n}");
            plans.create_api_key(crate::NewApiKey::new(name)).unwrap();
            a.sync().await.unwrap();
        }
    }

    /// Redis emptied, and `a` finds it (the store's marker, which these
    /// tests have not) and puts its registry back.
    async fn flushed(raw: &mut redis::aio::MultiplexedConnection, a: &mut Replica) {
        let () = redis::cmd("FLUSHALL").query_async(raw).await.unwrap();
        a.forget_base();
        a.sync().await.unwrap();
    }

    /// B is paused while A enables a key (created disabled, as AWS does),
    /// Redis loses data as `loss` says, and A makes more changes than a
    /// lineage names. B, resuming, finds the loss: A's registry comes from
    /// the one B holds (it was in A's lineage, or was the registry A
    /// merged with, when A published after the loss: an anchor), so A's
    /// changes win the merge. (Merged against nothing, B's older copy won:
    /// a key disabled through A was enabled again on both, for good, in
    /// black-box runs; a quota lowered came back.)
    async fn a_replica_paused_through(loss: Loss) {
        let (redis, plans, mut a, key) = a_replica_that_published_a_key().await;
        let (other, mut b) = a_replica_on(&redis).await;
        assert!(!other.api_key(&key.id).unwrap().enabled);
        let mut raw = redis.connection().await;
        let saved = saved_registry(&mut raw).await;
        if loss == Loss::FlushBefore {
            flushed(&mut raw, &mut a).await;
        }
        plans
            .update_api_key(&key.id, |k| {
                k.enabled = true;
                Ok(())
            })
            .unwrap();
        a.sync().await.unwrap();
        match loss {
            Loss::FlushBefore => {}
            Loss::FlushAfter => {
                published_changes(&plans, &mut a, "before", 5).await;
                flushed(&mut raw, &mut a).await;
            }
            Loss::FlushLongAfter => {
                published_changes(&plans, &mut a, "before", PAST_A_LINEAGE).await;
                flushed(&mut raw, &mut a).await;
            }
            Loss::Rollback => {
                published_changes(&plans, &mut a, "before", PAST_A_LINEAGE).await;
                put_back_registry(&mut raw, &saved).await;
                a.sync().await.unwrap();
                assert!(plans.api_key(&key.id).unwrap().enabled, "A merged");
            }
        }
        published_changes(&plans, &mut a, "after", PAST_A_LINEAGE).await;

        b.forget_base();
        b.sync().await.unwrap();
        assert!(other.api_key(&key.id).unwrap().enabled, "enabled on B");
        assert_eq!(other.api_keys().len(), plans.api_keys().len());
        a.sync().await.unwrap();
        assert!(plans.api_key(&key.id).unwrap().enabled, "and on A");
    }

    #[tokio::test]
    async fn a_replica_paused_across_a_loss_takes_the_changes_made_since() {
        a_replica_paused_through(Loss::FlushBefore).await;
    }

    #[tokio::test]
    async fn a_replica_paused_behind_at_a_loss_takes_the_changes_it_missed() {
        a_replica_paused_through(Loss::FlushAfter).await;
    }

    #[tokio::test]
    async fn a_replica_paused_far_behind_at_a_loss_takes_the_changes_it_missed() {
        a_replica_paused_through(Loss::FlushLongAfter).await;
    }

    #[tokio::test]
    async fn a_replica_paused_across_a_rollback_merged_elsewhere_takes_the_merge() {
        a_replica_paused_through(Loss::Rollback).await;
    }

    /// More admin changes than a registry's lineage names.
    const PAST_A_LINEAGE: usize = 70;

    /// As above, with more changes than a lineage names after the removal
    /// and after the add: Redis goes back to the registry before the add,
    /// and A's registry, which no longer names the registry of the
    /// removal, names the removal undone. The add stays. (Before, the
    /// removal won: 7 of 9 black-box runs with 70 changes.)
    #[tokio::test]
    async fn an_add_made_after_a_removal_stays_past_the_lineage() {
        let TakenOut {
            redis,
            plans,
            mut a,
            other,
            mut b,
            key,
            plan,
        } = a_key_taken_out_of_its_plan().await;
        let creates = |on: &UsagePlans, side: &'static str| {
            let on = on.clone();
            move |n: usize| {
                let name = format!("{side} {n}");
                on.create_api_key(crate::NewApiKey::new(name)).unwrap();
            }
        };
        let on_a = creates(&plans, "a");
        for n in 0..PAST_A_LINEAGE {
            on_a(n);
            a.sync().await.unwrap();
        }
        let mut raw = redis.connection().await;
        let saved = saved_registry(&mut raw).await;
        b.sync().await.unwrap();
        other.add_key_to_plan(&plan.id, &key.id).unwrap();
        b.sync().await.unwrap();
        let on_b = creates(&other, "b");
        for n in 0..PAST_A_LINEAGE {
            on_b(n);
            b.sync().await.unwrap();
            // A follows: it keeps no base from before the add.
            a.sync().await.unwrap();
        }
        assert_eq!(plans.usage_plan_keys(&plan.id).unwrap().len(), 1);

        put_back_registry(&mut raw, &saved).await;
        a.sync().await.unwrap();
        let members = plans.usage_plan_keys(&plan.id).unwrap();
        assert_eq!(members.len(), 1, "B's add stays");
        assert_eq!(plans.api_keys().len(), 1 + 2 * PAST_A_LINEAGE);
    }

    /// How many changes take a replica past every merge base it keeps.
    const KEPT_BY_A: usize = 9;

    /// Redis goes back to the registry before A's change, and B, which
    /// had not taken the change in, publishes its own on the older one:
    /// A merges both (its change was gone from Redis, and with versions
    /// moved on by one, B's took A's version and A saw nothing new).
    #[tokio::test]
    async fn a_registry_published_on_an_older_one_is_merged_with_this_one() {
        let (redis, plans, mut a, deleted) = a_replica_that_published_a_key().await;
        let (other, mut b) = a_replica_on(&redis).await;
        assert!(other.api_key(&deleted.id).is_ok());
        let mut raw = redis.connection().await;
        let saved = saved_registry(&mut raw).await;
        plans.delete_api_key(&deleted.id).unwrap();
        a.sync().await.unwrap();

        put_back_registry(&mut raw, &saved).await;
        let created = other.create_api_key(crate::NewApiKey::new("b's")).unwrap();
        b.sync().await.unwrap();
        a.sync().await.unwrap();
        assert!(plans.api_key(&deleted.id).is_err(), "A's deletion holds");
        assert!(plans.api_key(&created.id).is_ok(), "B's key is taken in");
        b.sync().await.unwrap();
        assert!(other.api_key(&deleted.id).is_err(), "B takes the merge in");
        assert!(other.api_key(&created.id).is_ok());
    }

    #[test]
    fn a_password_is_hidden_in_a_url_and_in_what_only_looks_like_one() {
        assert_eq!(redacted("redis://:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redacted("rediss://user:pw@h:1"), "rediss://***@h:1");
        assert_eq!(redacted("redis//:pw@h:1"), "***@h:1");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
        assert_eq!(
            redacted("redis+unix:///tmp/r.sock?db=1&pass=pw"),
            "redis+unix:///tmp/r.sock?db=1&pass=***"
        );
        assert_eq!(
            redacted("redis://h:1/0?Password=pw"),
            "redis://h:1/0?Password=***"
        );
    }

    #[test]
    fn a_failed_step_names_itself_and_keeps_its_cause() {
        let cause =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let error = failed("publishing the registry")(cause);
        assert_eq!(error.kind(), ErrorKind::Store);
        assert!(
            error.message().starts_with("publishing the registry: "),
            "{error}"
        );
        let source = std::error::Error::source(&error).expect("the cause is kept");
        let redis = source
            .downcast_ref::<redis::RedisError>()
            .expect("the redis crate's error");
        assert!(redis.is_connection_refusal(), "{redis}");
    }
}
