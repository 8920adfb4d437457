//! Revoking leases across replicas. A replica that holds leases registers
//! as a holder (a sorted set scored by when its registration lapses) and
//! listens on a pub/sub channel. A control-plane change (UpdateUsage, say)
//! starts a new epoch of the counter in Redis, publishes a revocation, and
//! waits until every registered holder has acknowledged it — or until a
//! lease lifetime has passed, after which a silent holder's leases have
//! expired anyway. A holder spends leases only while its registration
//! holds and it listens, so a holder that misses a message (or is not
//! listed) cannot spend a revoked lease. What revoked leases still hold
//! goes back with the store's next `give_back_expired_leases`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use super::lease::Leases;
use super::redis::Connection;
use super::CounterKey;

/// The pub/sub side of one store: its replica id, the leases it holds (if
/// any), and the revocations it waits on.
pub(crate) struct Revocations {
    replica: String,
    holders_key: String,
    revoke_channel: String,
    ack_channel: String,
    leases: RwLock<Option<Arc<Leases>>>,
    waiting: Mutex<HashMap<String, Waiting>>,
    /// Whether the listener is subscribed (acknowledgements reach us).
    listening: std::sync::atomic::AtomicBool,
}

struct Waiting {
    pending: HashSet<String>,
    done: Arc<Notify>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

impl Revocations {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            replica: format!("{:016x}", rand::random::<u64>()),
            holders_key: format!("{prefix}{{ctl}}:holders"),
            revoke_channel: format!("{prefix}{{ctl}}:revoke"),
            ack_channel: format!("{prefix}{{ctl}}:ack"),
            leases: RwLock::new(None),
            waiting: Mutex::new(HashMap::new()),
            listening: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The leases this replica holds from now on.
    pub(crate) fn hold(&self, leases: Arc<Leases>) {
        *self.leases.write() = Some(leases);
    }

    fn leases(&self) -> Option<Arc<Leases>> {
        self.leases.read().clone()
    }

    /// Revokes the leases of `counter` older than `epoch` on every replica
    /// (this one at once), and returns once every registered holder has
    /// acknowledged, or a lease lifetime has passed.
    pub(crate) async fn revoke(
        &self,
        connection: &mut Connection,
        counter: &CounterKey,
        epoch: u64,
    ) -> redis::RedisResult<()> {
        if let Some(leases) = self.leases() {
            leases.revoke(counter, epoch);
        }
        let now_ms = now_us() / 1_000;
        let holders: Vec<String> = connection
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&self.holders_key)
                    .arg(now_ms)
                    .arg("+inf"),
            )
            .await?;
        let mut wait = Duration::ZERO;
        let pending: HashSet<String> = holders
            .into_iter()
            .filter_map(|member| {
                let (id, ttl_ms) = member.split_once('/')?;
                let ttl = Duration::from_millis(ttl_ms.parse().ok()?);
                (id != self.replica).then(|| {
                    wait = wait.max(ttl);
                    id.to_owned()
                })
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let id = format!("{}-{:016x}", self.replica, rand::random::<u64>());
        let done = Arc::new(Notify::new());
        self.waiting.lock().insert(
            id.clone(),
            Waiting {
                pending,
                done: done.clone(),
            },
        );
        let message = format!(
            "{id} {} {epoch} {} {}",
            self.replica,
            counter.plan_id(),
            counter.key_id()
        );
        let published = connection
            .query::<i64>(redis::cmd("PUBLISH").arg(&self.revoke_channel).arg(message))
            .await;
        if published.is_ok() {
            if !self.listening.load(std::sync::atomic::Ordering::Acquire) {
                // No acknowledgement can reach us: the leases expire.
                tokio::time::sleep(wait).await;
            } else {
                let _ = tokio::time::timeout(wait, done.notified()).await;
            }
        }
        self.waiting.lock().remove(&id);
        published.map(drop)
    }

    fn acknowledged(&self, id: &str, replica: &str) {
        let mut waiting = self.waiting.lock();
        if let Some(entry) = waiting.get_mut(id) {
            entry.pending.remove(replica);
            if entry.pending.is_empty() {
                entry.done.notify_one();
            }
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

/// Listens for revocations and acknowledgements, and keeps this replica
/// registered as a lease holder while it listens. Ends when the store is
/// dropped.
pub(crate) async fn listen(
    url: String,
    mut connection: Connection,
    revocations: Weak<Revocations>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(this) = revocations.upgrade() else {
            return;
        };
        let subscribed = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub
                .subscribe(&[this.revoke_channel.as_str(), this.ack_channel.as_str()])
                .await?;
            redis::RedisResult::Ok(pubsub)
        }
        .await;
        let pubsub = match subscribed {
            Ok(pubsub) => pubsub,
            Err(e) => {
                tracing::warn!(error = %e, "lease revocations: cannot subscribe; retrying");
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        this.listening
            .store(true, std::sync::atomic::Ordering::Release);
        // A revocation may have gone by while we did not listen.
        if let Some(leases) = this.leases() {
            leases.revoke_all();
        }
        drop(this);
        let mut messages = pubsub.into_on_message();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let Some(this) = revocations.upgrade() else { return };
                    let channel = message.get_channel_name().to_owned();
                    let Ok(text) = message.get_payload::<String>() else { continue };
                    if channel == this.ack_channel {
                        if let Some((id, replica)) = text.split_once(' ') {
                            this.acknowledged(id, replica);
                        }
                    } else if let Some(revoked) = Revoked::parse(&text) {
                        if revoked.origin == this.replica {
                            continue;
                        }
                        if let Some(leases) = this.leases() {
                            leases.revoke(&CounterKey::new(revoked.plan, revoked.key), revoked.epoch);
                            let ack = format!("{} {}", revoked.id, this.replica);
                            if let Err(e) = connection
                                .query::<i64>(redis::cmd("PUBLISH").arg(&this.ack_channel).arg(ack))
                                .await
                            {
                                tracing::warn!(error = %e, "lease revocations: cannot acknowledge");
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    let Some(this) = revocations.upgrade() else { return };
                    let Some(leases) = this.leases() else { continue };
                    let ttl_ms = i64::try_from(leases.config.ttl.as_millis()).unwrap_or(i64::MAX);
                    let now = now_us();
                    let until_ms = now / 1_000 + ttl_ms;
                    let registered = connection
                        .pipeline::<()>(
                            redis::pipe()
                                .cmd("ZADD")
                                .arg(&this.holders_key)
                                .arg(until_ms)
                                .arg(format!("{}/{ttl_ms}", this.replica))
                                .ignore()
                                .cmd("ZREMRANGEBYSCORE")
                                .arg(&this.holders_key)
                                .arg("-inf")
                                .arg(now / 1_000)
                                .ignore(),
                        )
                        .await;
                    match registered {
                        Ok(()) => {
                            if !leases.active() {
                                // A gap: revocations may have been missed.
                                leases.revoke_all();
                            }
                            leases.listen_until(until_ms * 1_000);
                        }
                        Err(e) => tracing::debug!(error = %e, "lease holder registration failed"),
                    }
                }
            }
        }
        if let Some(this) = revocations.upgrade() {
            this.listening
                .store(false, std::sync::atomic::Ordering::Release);
            if let Some(leases) = this.leases() {
                leases.listen_until(0);
            }
        }
        tracing::warn!("lease revocations: subscription lost; resubscribing");
    }
}

/// One revocation message: `id origin epoch plan key`.
struct Revoked<'a> {
    id: &'a str,
    origin: &'a str,
    epoch: u64,
    plan: &'a str,
    key: &'a str,
}

impl<'a> Revoked<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let mut parts = text.split(' ');
        Some(Self {
            id: parts.next()?,
            origin: parts.next()?,
            epoch: parts.next()?.parse().ok()?,
            plan: parts.next()?,
            key: parts.next()?,
        })
    }
}
