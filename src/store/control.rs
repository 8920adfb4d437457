//! The replicas' control channel on Redis pub/sub: revoking leases, and
//! telling every replica that the shared registry changed — each a message
//! that the sender waits on until every live replica has acknowledged it.
//!
//! Every 100 ms each replica registers in a sorted set, scored by when the
//! registration lapses (1 s on), and publishes a beat with that time on
//! the channel it listens to. It spends leases only until the lapse time
//! of the last beat it *received*: messages arrive in the order Redis
//! took them, so by then it has acted on every revocation published
//! before that beat. A sender publishes, then reads who is registered,
//! and waits for their acknowledgements, at most 1 s: a replica that has
//! not acknowledged by then received no beat since the revocation, so its
//! leases lapsed. What revoked leases still hold goes back with the
//! store's next `give_back_expired_leases`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use super::lease::Leases;
use super::redis::Connection;
use super::retry;
use super::spent::SpentKeys;
use super::{CounterKey, StoreFuture};

/// How long a replica's registration lasts unless renewed; also the
/// longest a sender waits for one replica's acknowledgement.
const REGISTRATION: Duration = Duration::from_secs(1);
/// How often a listening replica renews its registration.
const RENEW_EVERY: Duration = Duration::from_millis(100);

/// What a replica does on another's message (the registry changed; Redis
/// lost its data): resolves once done, and the message is acknowledged.
pub(crate) type Handler = Arc<dyn Fn() -> StoreFuture<()> + Send + Sync>;

/// What a replica does when another found that Redis lost its data, with
/// the marker that replica is about to set (none from older versions).
pub(crate) type LostHandler = Arc<dyn Fn(Option<String>) -> StoreFuture<()> + Send + Sync>;

/// What a replica does when another changed a counter's allowance
/// (UpdateUsage): resolves once done, before the revocation is
/// acknowledged.
pub(crate) type CounterHandler = Arc<dyn Fn(CounterKey) -> StoreFuture<()> + Send + Sync>;

/// One store's side of the channel: its replica id, the leases it holds
/// (if any), what it does on a registry change, and the messages it waits
/// on.
pub(crate) struct Control {
    replica: String,
    members_key: String,
    channel: String,
    leases: RwLock<Option<Arc<Leases>>>,
    on_registry: RwLock<Option<Handler>>,
    on_lost: RwLock<Option<LostHandler>>,
    on_revoked: RwLock<Option<CounterHandler>>,
    on_counter_lost: RwLock<Option<CounterHandler>>,
    waiting: Mutex<HashMap<String, Waiting>>,
    /// Subscribed: acknowledgements reach us.
    listening: AtomicBool,
    /// The other replicas whose beats we heard, with their lapse time (ms):
    /// waited on too, should Redis have lost the registrations.
    heard: Mutex<HashMap<String, i64>>,
    /// When (ms) [`older_alive`](Self::older_alive) last found, asking
    /// twice a few beats apart, that no older replica is alive.
    none_older_ms: AtomicI64,
    /// The lapse time (ms) of the last beat of our own we received: until
    /// then we have acted on every message sent before it, so the registry
    /// is current ([`is_current`](Self::is_current)).
    own_until_ms: AtomicI64,
    /// Woken by each beat of our own.
    beat: Notify,
    /// Since when (ms) this replica has had no subscription; 0 while it
    /// has one.
    deaf_since_ms: AtomicI64,
    /// When (ms) a request last waited [`until_current`](Self::until_current)'s
    /// whole limit in vain, or went on without waiting since (see
    /// [`waited_out_lately`](Self::waited_out_lately)); 0 once a beat of its
    /// own came back.
    waited_out_ms: AtomicI64,
    /// The quotas this replica knows are spent: forgotten on every
    /// announcement that may have changed them.
    pub(crate) spent: SpentKeys,
}

struct Waiting {
    acked: HashSet<String>,
    /// Who must acknowledge (known once the sender read the registrations).
    pending: Option<HashSet<String>>,
    done: Arc<Notify>,
}

impl Waiting {
    fn complete(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|pending| pending.is_subset(&self.acked))
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

impl Control {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            // Ordered by when the replica started (hex milliseconds), then
            // at random: the oldest replica alive is the least id.
            replica: format!("{:012x}{:08x}", now_us() / 1_000, rand::random::<u32>()),
            members_key: format!("{prefix}{{ctl}}:replicas"),
            channel: format!("{prefix}{{ctl}}"),
            leases: RwLock::new(None),
            on_registry: RwLock::new(None),
            on_lost: RwLock::new(None),
            on_revoked: RwLock::new(None),
            on_counter_lost: RwLock::new(None),
            waiting: Mutex::new(HashMap::new()),
            listening: AtomicBool::new(false),
            heard: Mutex::new(HashMap::new()),
            none_older_ms: AtomicI64::new(i64::MIN / 2),
            own_until_ms: AtomicI64::new(0),
            beat: Notify::new(),
            deaf_since_ms: AtomicI64::new(now_us() / 1_000),
            waited_out_ms: AtomicI64::new(0),
            spent: SpentKeys::default(),
        }
    }

    /// Whether this replica knows it has taken in every change announced on
    /// the channel: it received a beat of its own that has not lapsed. A
    /// replica that was paused (SIGSTOP, a long stall) is not current until
    /// it has read what was announced meanwhile. One that lost its
    /// subscription is not current for a registration's length (a change
    /// announced meanwhile waited that long for it), then is taken as
    /// current: Redis is likely unreachable, and the failure policy
    /// applies to what it decides.
    pub(crate) fn is_current(&self) -> bool {
        let now_ms = now_us() / 1_000;
        match self.deaf_since_ms.load(Ordering::Acquire) {
            0 => now_ms < self.own_until_ms.load(Ordering::Acquire),
            deaf_since => now_ms - deaf_since > REGISTRATION.as_millis() as i64,
        }
    }

    /// Returns once this replica [`is_current`](Self::is_current), or after
    /// `limit`.
    pub(crate) async fn until_current(&self, limit: Duration) {
        let waited = tokio::time::timeout(limit, async {
            loop {
                let beat = self.beat.notified();
                if self.is_current() {
                    return;
                }
                beat.await;
            }
        })
        .await;
        if waited.is_err() && !self.is_current() {
            self.waited_out_ms
                .store(now_us() / 1_000, Ordering::Release);
        }
    }

    /// Whether a request of this replica waited for it to be current in
    /// vain less than a registration's length ago (or went on without
    /// waiting since, which keeps it so): Redis is frozen or unreachable,
    /// and the replica, running all along, has been deciding by its failure
    /// policy. The next request need not wait a whole limit again. A
    /// replica that was paused itself finds the last one too old and waits
    /// (a beat of its own comes back within 100 ms when Redis is fine).
    pub(crate) fn waited_out_lately(&self) -> bool {
        let now_ms = now_us() / 1_000;
        let at = self.waited_out_ms.load(Ordering::Acquire);
        let lately = at != 0 && (0..REGISTRATION.as_millis() as i64).contains(&(now_ms - at));
        if lately {
            let _ = self.waited_out_ms.compare_exchange(
                at,
                now_ms,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        lately
    }

    /// The leases this replica holds from now on.
    pub(crate) fn hold(&self, leases: Arc<Leases>) {
        *self.leases.write() = Some(leases);
    }

    /// What this replica does when another one changed the registry.
    pub(crate) fn on_registry(&self, handler: Option<Handler>) {
        *self.on_registry.write() = handler;
    }

    /// What this replica does when another found that Redis lost its data.
    pub(crate) fn on_lost(&self, handler: Option<LostHandler>) {
        *self.on_lost.write() = handler;
    }

    /// What this replica does when another changed a counter by
    /// UpdateUsage (and revoked its leases).
    pub(crate) fn on_revoked(&self, handler: Option<CounterHandler>) {
        *self.on_revoked.write() = handler;
    }

    /// What this replica does when another found that Redis lost one
    /// counter (and put it back).
    pub(crate) fn on_counter_lost(&self, handler: Option<CounterHandler>) {
        *self.on_counter_lost.write() = handler;
    }

    /// Has every other replica put back what it saw of `counter`, which
    /// Redis lost alone (deleted, evicted, or on a cluster node that lost
    /// its data) and this one put back; returns once each live one did.
    pub(crate) async fn counter_lost(
        &self,
        connection: &mut Connection,
        counter: &CounterKey,
    ) -> redis::RedisResult<()> {
        self.spent.forget(counter);
        self.broadcast(connection, |id| {
            format!(
                "counter-lost {id} {} {}",
                counter.plan_id(),
                counter.key_id()
            )
        })
        .await
    }

    /// Has every other replica put back what it saw of the counters, after
    /// Redis lost its data, and adopt `marker`, which this one sets next
    /// (so that none of them finds it new and restores again); returns
    /// once each live one did.
    pub(crate) async fn lost(
        &self,
        connection: &mut Connection,
        marker: &str,
    ) -> redis::RedisResult<()> {
        self.spent.forget_all();
        self.broadcast(connection, |id| format!("lost {id} {marker}"))
            .await
    }

    /// Whether a replica that started before this one is alive
    /// (registered in Redis, or heard lately on the channel). Asked again
    /// after a few beats when none is: Redis may just have lost the
    /// registrations (a beat puts them back). Not asked again within a
    /// second of an answer asked twice: a replica starting alone on a new
    /// Redis asks once for the registry and once for the marker, and
    /// waited for both.
    pub(crate) async fn older_alive(
        &self,
        connection: &mut Connection,
    ) -> redis::RedisResult<bool> {
        if self.older_alive_now(connection).await? {
            return Ok(true);
        }
        let asked_ms = self.none_older_ms.load(Ordering::Acquire);
        if now_us() / 1_000 - asked_ms < 1_000 {
            return Ok(false);
        }
        tokio::time::sleep(RENEW_EVERY * 5 / 2).await;
        let alive = self.older_alive_now(connection).await?;
        if !alive {
            self.none_older_ms
                .store(now_us() / 1_000, Ordering::Release);
        }
        Ok(alive)
    }

    async fn older_alive_now(&self, connection: &mut Connection) -> redis::RedisResult<bool> {
        let now_ms = now_us() / 1_000;
        let older = |replica: &str| replica < self.replica.as_str();
        let heard = self
            .heard
            .lock()
            .iter()
            .any(|(replica, until_ms)| *until_ms > now_ms && older(replica));
        if heard {
            return Ok(true);
        }
        let members: Vec<String> = connection
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&self.members_key)
                    .arg(now_ms)
                    .arg("+inf"),
            )
            .await?;
        Ok(members.iter().any(|member| older(member)))
    }

    fn leases(&self) -> Option<Arc<Leases>> {
        self.leases.read().clone()
    }

    /// Revokes the leases of `counter` older than `epoch` on every replica
    /// (this one at once); returns once every live replica acknowledged.
    pub(crate) async fn revoke(
        &self,
        connection: &mut Connection,
        counter: &CounterKey,
        epoch: u64,
    ) -> redis::RedisResult<()> {
        if let Some(leases) = self.leases() {
            leases.revoke(counter, epoch);
        }
        self.spent.forget(counter);
        self.broadcast(connection, |id| {
            format!(
                "revoke {id} {epoch} {} {}",
                counter.plan_id(),
                counter.key_id()
            )
        })
        .await
    }

    /// Tells every other replica that the shared registry changed; returns
    /// once every live replica enforces it.
    pub(crate) async fn registry_changed(
        &self,
        connection: &mut Connection,
    ) -> redis::RedisResult<()> {
        self.spent.forget_all();
        self.broadcast(connection, |id| format!("registry {id}"))
            .await
    }

    /// Publishes `message(id)`, then waits for the acknowledgements of the
    /// replicas registered after it went out (at most `REGISTRATION`).
    async fn broadcast(
        &self,
        connection: &mut Connection,
        message: impl FnOnce(&str) -> String,
    ) -> redis::RedisResult<()> {
        // The id starts with ours: replicas never act on their own messages.
        let id = format!("{}-{:016x}", self.replica, rand::random::<u64>());
        let done = Arc::new(Notify::new());
        self.waiting.lock().insert(
            id.clone(),
            Waiting {
                acked: HashSet::new(),
                pending: None,
                done: done.clone(),
            },
        );
        let message = message(&id);
        let result = async {
            // Published again (the same id) while Redis restarts: the
            // change it follows is made.
            let members: Vec<String> = retry::retried("an announcement", retry::ANNOUNCE, || {
                let (mut connection, message) = (connection.clone(), message.as_str());
                async move {
                    connection
                        .query::<i64>(redis::cmd("PUBLISH").arg(&self.channel).arg(message))
                        .await?;
                    // Read after publishing: a replica registered later
                    // received the message before any beat that lets it
                    // spend again.
                    connection
                        .query(
                            redis::cmd("ZRANGEBYSCORE")
                                .arg(&self.members_key)
                                .arg(now_us() / 1_000)
                                .arg("+inf"),
                        )
                        .await
                }
            })
            .await?;
            let now_ms = now_us() / 1_000;
            let mut pending: HashSet<String> = members.into_iter().collect();
            pending.extend(
                self.heard
                    .lock()
                    .iter()
                    .filter(|(_, until_ms)| **until_ms > now_ms)
                    .map(|(replica, _)| replica.clone()),
            );
            pending.remove(&self.replica);
            let complete = {
                let mut waiting = self.waiting.lock();
                let entry = waiting.get_mut(&id).expect("removed only below");
                entry.pending = Some(pending);
                entry.complete()
            };
            if !complete {
                if self.listening.load(Ordering::Acquire) {
                    let _ = tokio::time::timeout(REGISTRATION, done.notified()).await;
                } else {
                    // No acknowledgement can reach us: wait out the beats.
                    tokio::time::sleep(REGISTRATION).await;
                }
            }
            Ok(())
        }
        .await;
        self.waiting.lock().remove(&id);
        result
    }

    fn acknowledged(&self, id: &str, replica: &str) {
        let mut waiting = self.waiting.lock();
        if let Some(entry) = waiting.get_mut(id) {
            entry.acked.insert(replica.to_owned());
            if entry.complete() {
                entry.done.notify_one();
            }
        }
    }

    /// Acts on one message from another replica; `true` to acknowledge.
    async fn handle(&self, message: Message<'_>) -> bool {
        match message {
            Message::Ack { id, replica } => {
                self.acknowledged(id, replica);
                false
            }
            Message::Beat { replica, until_ms } => {
                if replica != self.replica {
                    let mut heard = self.heard.lock();
                    let now_ms = now_us() / 1_000;
                    heard.retain(|_, until| *until > now_ms);
                    heard.insert(replica.to_owned(), until_ms);
                    return false;
                }
                // Only our own beat proves that we hear the channel.
                let lapsed = now_us() / 1_000 >= self.own_until_ms.load(Ordering::Acquire);
                if lapsed && !self.caught_up().await {
                    return false;
                }
                self.own_until_ms.store(until_ms, Ordering::Release);
                self.waited_out_ms.store(0, Ordering::Release);
                self.beat.notify_waiters();
                {
                    if let Some(leases) = self.leases() {
                        if !leases.active() {
                            // A gap: a revocation may have gone by unheard.
                            leases.revoke_all();
                        }
                        leases.listen_until(until_ms.saturating_mul(1_000));
                    }
                }
                false
            }
            Message::Revoke {
                epoch, plan, key, ..
            } => {
                let counter = CounterKey::new(plan, key);
                if let Some(leases) = self.leases() {
                    leases.revoke(&counter, epoch);
                }
                self.spent.forget(&counter);
                let handler = self.on_revoked.read().clone();
                if let Some(handler) = handler {
                    // Acknowledged all the same: the leases are revoked.
                    if let Err(e) = handler(counter).await {
                        tracing::warn!(error = %e, "could not update a counter's copy");
                    }
                }
                true
            }
            Message::CounterLost { plan, key, .. } => {
                let counter = CounterKey::new(plan, key);
                self.spent.forget(&counter);
                let handler = self.on_counter_lost.read().clone();
                if let Some(handler) = handler {
                    if let Err(e) = handler(counter).await {
                        tracing::warn!(error = %e, "could not put a lost counter back");
                        return false;
                    }
                }
                true
            }
            Message::Registry { .. } | Message::Lost { .. } => {
                self.spent.forget_all();
                let done = match message {
                    Message::Lost { marker, .. } => {
                        let handler = self.on_lost.read().clone();
                        match handler {
                            Some(handler) => handler(marker.map(str::to_owned)).await,
                            None => Ok(()),
                        }
                    }
                    _ => {
                        let handler = self.on_registry.read().clone();
                        match handler {
                            Some(handler) => handler().await,
                            None => Ok(()),
                        }
                    }
                };
                if let Err(e) = done {
                    tracing::warn!(error = %e, "could not act on a replica message");
                    return false;
                }
                true
            }
        }
    }

    /// Renews this replica's registration and publishes its beat (the
    /// registration first: a replica whose beat was heard is listed).
    async fn renew(&self, connection: &mut Connection) {
        let ttl_ms = i64::try_from(REGISTRATION.as_millis()).unwrap_or(i64::MAX);
        let now_ms = now_us() / 1_000;
        let until_ms = now_ms + ttl_ms;
        let renewed = connection
            .pipeline::<()>(
                redis::pipe()
                    .cmd("ZADD")
                    .arg(&self.members_key)
                    .arg(until_ms)
                    .arg(&self.replica)
                    .ignore()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&self.members_key)
                    .arg("-inf")
                    .arg(now_ms)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(&self.channel)
                    .arg(format!("beat {} {until_ms}", self.replica))
                    .ignore(),
            )
            .await;
        if let Err(e) = renewed {
            tracing::debug!(error = %e, "replica registration failed");
        }
    }

    /// After a gap in what this replica heard (a first beat, a pause, a
    /// lost subscription), an announced registry change may have gone by
    /// unheard: takes the registry in again. `false` if that failed.
    async fn caught_up(&self) -> bool {
        let handler = self.on_registry.read().clone();
        match handler {
            Some(handler) => match handler().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "could not take the registry in after a gap");
                    false
                }
            },
            None => true,
        }
    }

    fn stopped_listening(&self) {
        self.listening.store(false, Ordering::Release);
        let _ = self.deaf_since_ms.compare_exchange(
            0,
            now_us() / 1_000,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.beat.notify_waiters();
        if let Some(leases) = self.leases() {
            leases.listen_until(0);
        }
        // Announcements may go by unheard from now on.
        self.spent.forget_all();
    }
}

/// One message on the channel.
enum Message<'a> {
    Ack {
        id: &'a str,
        replica: &'a str,
    },
    Beat {
        replica: &'a str,
        until_ms: i64,
    },
    Revoke {
        id: &'a str,
        epoch: u64,
        plan: &'a str,
        key: &'a str,
    },
    Registry {
        id: &'a str,
    },
    Lost {
        id: &'a str,
        /// The marker the sender sets once every replica restored.
        marker: Option<&'a str>,
    },
    CounterLost {
        id: &'a str,
        plan: &'a str,
        key: &'a str,
    },
}

impl<'a> Message<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let mut parts = text.split(' ');
        Some(match parts.next()? {
            "ack" => Self::Ack {
                id: parts.next()?,
                replica: parts.next()?,
            },
            "revoke" => Self::Revoke {
                id: parts.next()?,
                epoch: parts.next()?.parse().ok()?,
                plan: parts.next()?,
                key: parts.next()?,
            },
            "registry" => Self::Registry { id: parts.next()? },
            "counter-lost" => Self::CounterLost {
                id: parts.next()?,
                plan: parts.next()?,
                key: parts.next()?,
            },
            "lost" => Self::Lost {
                id: parts.next()?,
                marker: parts.next(),
            },
            "beat" => Self::Beat {
                replica: parts.next()?,
                until_ms: parts.next()?.parse().ok()?,
            },
            _ => return None,
        })
    }

    /// The id of a message to act on and acknowledge; `None` for acks and
    /// beats.
    fn id(&self) -> Option<&'a str> {
        match self {
            Self::Revoke { id, .. }
            | Self::Registry { id }
            | Self::Lost { id, .. }
            | Self::CounterLost { id, .. } => Some(id),
            Self::Ack { .. } | Self::Beat { .. } => None,
        }
    }
}

/// Where to subscribe: the server itself, or a cluster's first node (a
/// cluster delivers every PUBLISH to every node's subscribers).
pub(crate) fn subscribe_url(url: &str) -> String {
    match url.strip_prefix("redis+cluster://") {
        Some(nodes) => format!("redis://{}", nodes.split(',').next().unwrap_or("").trim()),
        None => url.to_owned(),
    }
}

/// Listens on the channel and keeps this replica registered while it
/// does; resubscribes when the subscription is lost. Ends when the store
/// is dropped.
pub(crate) async fn listen(url: String, mut connection: Connection, control: Weak<Control>) {
    let mut backoff = Duration::from_millis(50);
    // A Redis that stays down is one line, not one per attempt; none for a
    // first attempt alone (a store that failed to start, which its caller
    // reports and makes anew: one line per retry, as with a wrong password).
    let mut last_failure = String::new();
    let mut failed_before = false;
    loop {
        let Some(this) = control.upgrade() else {
            return;
        };
        let subscribed = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(this.channel.as_str()).await?;
            redis::RedisResult::Ok(pubsub)
        }
        .await;
        let pubsub = match subscribed {
            Ok(pubsub) => pubsub,
            Err(e) => {
                let failure = e.to_string();
                if !std::mem::replace(&mut failed_before, true) {
                    tracing::debug!(error = %failure, "replica control channel: cannot subscribe; retrying");
                } else if failure != last_failure {
                    tracing::warn!(error = %failure, "replica control channel: cannot subscribe; retrying");
                    last_failure = failure;
                }
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        failed_before = false;
        if !std::mem::take(&mut last_failure).is_empty() {
            tracing::info!("replica control channel: subscribed again");
        }
        this.listening.store(true, Ordering::Release);
        this.deaf_since_ms.store(0, Ordering::Release);
        drop(this);
        let mut messages = pubsub.into_on_message();
        let mut renew = tokio::time::interval(RENEW_EVERY);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let Some(this) = control.upgrade() else { return };
                    let Ok(text) = message.get_payload::<String>() else { continue };
                    let Some(parsed) = Message::parse(&text) else { continue };
                    let id = parsed.id();
                    if id.is_some_and(|id| id.starts_with(&this.replica)) {
                        continue;
                    }
                    if let (true, Some(id)) = (this.handle(parsed).await, id) {
                        let ack = format!("ack {id} {}", this.replica);
                        if let Err(e) = connection
                            .query::<i64>(redis::cmd("PUBLISH").arg(&this.channel).arg(ack))
                            .await
                        {
                            tracing::warn!(error = %e, "replica control channel: cannot acknowledge");
                        }
                    }
                }
                _ = renew.tick() => {
                    let Some(this) = control.upgrade() else { return };
                    this.renew(&mut connection).await;
                }
            }
        }
        if let Some(this) = control.upgrade() {
            this.stopped_listening();
        }
        tracing::warn!("replica control channel: subscription lost; resubscribing");
    }
}
