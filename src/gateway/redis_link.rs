//! Reaching Redis, now or later. Orchestrators start processes in any
//! order: a gateway whose Redis does not answer yet still listens, serves
//! by its `--redis-failure` policy (its counter store answers with an error
//! until Redis is there), reports not ready, and tries again with backoff,
//! logging each distinct failure once. Decisions Redis fails (at start, or
//! in an outage later) are logged throttled ([`LogThrottle`]): the first at
//! once, then one line per [`FAILURE_LOG_INTERVAL`] with how many were not
//! logged, and one when Redis answers again.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Mutex};

use super::replicas::{self, JoinError, Replica};
use super::{GatewayConfig, GatewayError};
use crate::log_throttle::{LogThrottle, Logged};
use crate::store::{
    CounterKey, CounterStore, DayUsage, Decision, DecisionRequest, LeaseConfig, QuotaRule,
    RedisStore, StoreFuture,
};
use crate::{Error, ErrorKind, UsagePlans};

/// The first wait between attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between attempts: a replica whose Redis comes up
/// late is counted there (and ready) within about this long. (At 5 s, it
/// went on serving by the failure policy up to 2.6 s after Redis was up,
/// `open` admitting uncounted: 17 requests over a quota of 5 in a
/// black-box run.) One attempt a second costs a down Redis nothing.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What a gateway that has not reached Redis yet answers in its stead.
const NOT_REACHED: &str = "Redis has not been reached yet";

/// How often decisions that keep failing are logged again.
pub(crate) const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The counter store of a gateway with `--redis`: the Redis store once
/// connected; until then every call fails as an unreachable store does,
/// so the layer applies its failure policy. It logs the decisions that
/// fail, throttled.
#[derive(Debug)]
pub(crate) struct LateStore {
    redis: OnceLock<RedisStore>,
    failures: Arc<LogThrottle>,
}

impl Default for LateStore {
    fn default() -> Self {
        Self {
            redis: OnceLock::new(),
            failures: Arc::new(LogThrottle::new(FAILURE_LOG_INTERVAL)),
        }
    }
}

impl LateStore {
    /// The Redis store, once reached.
    pub(crate) fn store(&self) -> Option<&RedisStore> {
        self.redis.get()
    }

    fn get(&self) -> Result<&RedisStore, Error> {
        self.redis
            .get()
            .ok_or_else(|| Error::new(ErrorKind::Store, NOT_REACHED))
    }
}

/// The replication of a gateway that has not reached Redis yet: every
/// admin change is refused before it is made (see
/// [`UsagePlans::replicated`]), until joining the replicas sets theirs.
pub(crate) fn not_reached_yet() -> StoreFuture<()> {
    StoreFuture::ready(Err(Error::new(ErrorKind::Store, NOT_REACHED)))
}

/// Logs a failed decision, if the throttle lets it through.
fn decision_failed(failures: &LogThrottle, error: &Error) {
    match failures.failed(Instant::now()) {
        Logged::First => tracing::warn!(
            %error,
            "counter store failing: requests are served by the --redis-failure policy \
             until Redis answers again (logged again every {FAILURE_LOG_INTERVAL:?} at most)"
        ),
        Logged::Again { held_back } => tracing::warn!(
            %error,
            failures_not_logged = held_back,
            "counter store still failing"
        ),
        Logged::HeldBack => {}
    }
}

/// Logs the end of a run of failed decisions, once.
fn decision_answered(failures: &LogThrottle) {
    if let Some(failures) = failures.succeeded() {
        tracing::info!(failures, "counter store answers again");
    }
}

impl CounterStore for LateStore {
    fn decide(&self, request: &DecisionRequest<'_>) -> StoreFuture<Decision> {
        let mut decision = match self.get() {
            Ok(store) => store.decide(request),
            Err(e) => StoreFuture::ready(Err(e)),
        };
        if let Some(answer) = decision.take_ready() {
            // Answered without Redis (not reached; a leased decision): a
            // success says nothing of whether Redis answers.
            if let Err(e) = &answer {
                decision_failed(&self.failures, e);
            }
            return StoreFuture::ready(answer);
        }
        let failures = self.failures.clone();
        StoreFuture::boxed(async move {
            let answer = decision.await;
            match &answer {
                Ok(_) => decision_answered(&failures),
                Err(e) => decision_failed(&failures, e),
            }
            answer
        })
    }

    fn refund(&self, request: &DecisionRequest<'_>) -> StoreFuture<()> {
        match self.get() {
            Ok(store) => store.refund(request),
            Err(e) => StoreFuture::ready(Err(e)),
        }
    }

    fn set_remaining(
        &self,
        counter: &CounterKey,
        quota: &QuotaRule,
        now: jiff::Timestamp,
        remaining: u64,
    ) -> StoreFuture<DayUsage> {
        match self.get() {
            Ok(store) => store.set_remaining(counter, quota, now, remaining),
            Err(e) => StoreFuture::ready(Err(e)),
        }
    }

    fn add_remaining(
        &self,
        counter: &CounterKey,
        quota: &QuotaRule,
        now: jiff::Timestamp,
        delta: i64,
    ) -> StoreFuture<DayUsage> {
        match self.get() {
            Ok(store) => store.add_remaining(counter, quota, now, delta),
            Err(e) => StoreFuture::ready(Err(e)),
        }
    }

    fn usage(
        &self,
        counter: &CounterKey,
        quota: Option<&QuotaRule>,
        now: jiff::Timestamp,
        first: jiff::civil::Date,
        last: jiff::civil::Date,
    ) -> StoreFuture<Vec<DayUsage>> {
        match self.get() {
            Ok(store) => store.usage(counter, quota, now, first, last),
            Err(e) => StoreFuture::ready(Err(e)),
        }
    }

    fn forget(&self, counter: &CounterKey) -> StoreFuture<()> {
        match self.get() {
            Ok(store) => store.forget(counter),
            Err(e) => StoreFuture::ready(Err(e)),
        }
    }
}

/// A gateway joined to Redis: its counters there, its registry shared.
pub(crate) struct Link {
    pub(crate) replica: Arc<Mutex<Replica>>,
    pub(crate) store: RedisStore,
}

/// Connects, joins the replicas (the registry becomes Redis's), creates the
/// configured plans and keys that are not there yet, and makes `late` the
/// Redis store.
pub(crate) async fn connect(
    config: &GatewayConfig,
    plans: &UsagePlans,
    late: &LateStore,
) -> Result<Link, JoinError> {
    let url = config.redis.as_deref().unwrap_or_default();
    let shown = replicas::redacted(url);
    // An attempt that timed out after the store was set goes on with it:
    // the layer already decides through it (and its leases).
    let store = match late.store() {
        Some(store) => store.clone(),
        None => {
            let store = RedisStore::connect(url)
                .await
                .map_err(replicas::failed(format!("--redis {shown}")))
                .map_err(JoinError::Unreachable)?;
            if config.redis_leases {
                store.with_leases(LeaseConfig::default())
            } else {
                store
            }
        }
    };
    let stage = config.stage.to_string();
    // Replica::join takes the join lock: replicas starting together create
    // the configured plans and keys one after the other.
    let replica = Replica::join(url, plans.clone(), &stage).await?;
    let replica = replicas::share(replica, plans, &store);
    // The registry is the replicas' now: its keys are counted in Redis from
    // the next request on, never admitted uncounted by the failure policy
    // while this replica finishes joining.
    let _ = late.redis.set(store.clone());
    await_registry(plans, &replica, &store).await;
    super::provision(plans, config).map_err(|e| JoinError::Mismatch(e.to_string()))?;
    // Provisioning published what it created (each change is replicated
    // before it returns); the next replica may join.
    replica
        .lock()
        .await
        .joined()
        .await
        .map_err(replicas::failed(format!("--redis {shown}")))
        .map_err(JoinError::Unreachable)?;
    tracing::info!(url = %shown, "sharing counters and the registry through Redis");
    Ok(Link { replica, store })
}

/// How long a joining replica waits for the others to publish the registry
/// again when Redis holds none while they are alive.
const REGISTRY_WAIT: Duration = Duration::from_millis(1_500);

/// Redis holds no registry while replicas older than this one are alive:
/// it lost its data since they started, and they publish theirs again
/// within a beat or so. Waits for it (up to [`REGISTRY_WAIT`]): serving
/// before would refuse every key but the configured ones, as if this
/// replica were the first.
async fn await_registry(plans: &UsagePlans, replica: &Arc<Mutex<Replica>>, store: &RedisStore) {
    let empty = || plans.api_keys().is_empty() && plans.usage_plans().is_empty();
    if !empty() || !store.older_alive().await {
        return;
    }
    let deadline = tokio::time::Instant::now() + REGISTRY_WAIT;
    while empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A failed pull is tried again on the next round.
        let _ = replica.lock().await.sync().await;
    }
}

/// The first attempt, bounded by `limit`: `Ok(None)` when Redis did not
/// answer (the caller serves on and retries); an error for a mismatch.
pub(crate) async fn first_attempt(
    config: &GatewayConfig,
    plans: &UsagePlans,
    late: &LateStore,
    limit: Duration,
) -> Result<Result<Link, String>, GatewayError> {
    match tokio::time::timeout(limit, connect(config, plans, late)).await {
        Ok(Ok(link)) => Ok(Ok(link)),
        Ok(Err(JoinError::Mismatch(message))) => Err(GatewayError::redis(message)),
        Ok(Err(JoinError::Unreachable(error))) => Ok(Err(error.to_string())),
        Err(_) => Ok(Err(format!(
            "--redis {}: no answer within {limit:?}",
            replicas::redacted(config.redis.as_deref().unwrap_or_default())
        ))),
    }
}

/// Tries again with backoff until connected; the link comes through the
/// returned receiver. A failure is logged when it differs from the last one
/// logged (one line for a Redis that stays down, not one per attempt).
pub(crate) fn retry(
    config: GatewayConfig,
    plans: UsagePlans,
    late: Arc<LateStore>,
    attempt_limit: Duration,
    mut last_logged: String,
) -> (oneshot::Receiver<Link>, tokio::task::JoinHandle<()>) {
    let (send, receive) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let message =
                match tokio::time::timeout(attempt_limit, connect(&config, &plans, &late)).await {
                    Ok(Ok(link)) => {
                        tracing::info!("Redis answers: ready");
                        let _ = send.send(link);
                        return;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {attempt_limit:?}"),
                };
            if message != last_logged {
                tracing::warn!(error = %message, "Redis not reachable yet; trying again with backoff (up to {MAX_BACKOFF:?})");
                last_logged = message;
            }
        }
    });
    (receive, task)
}
