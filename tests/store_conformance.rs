//! Every counter store passes the same suite.

#[path = "support/store_suite.rs"]
mod store_suite;

use std::sync::Arc;

use tower_usage_plans::store::MemoryStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    store_suite::run_all(Arc::new(MemoryStore::new())).await;
}

/// A prefix no other run uses, so runs never see each other's counters.
#[cfg(feature = "redis")]
fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test-{}-{nanos}:", std::process::id())
}

/// `scripts/test.sh` starts a Redis server and sets `REDIS_URL`.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_store_conforms() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let store = tower_usage_plans::store::RedisStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("no Redis at {url} (scripts/test.sh starts one): {e}"))
        .with_prefix(unique_prefix());
    store_suite::run_all(Arc::new(store)).await;
}

/// `scripts/test.sh` starts a 3-node Redis Cluster and sets `REDIS_CLUSTER_URL`.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_store_conforms() {
    let url = std::env::var("REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| "redis+cluster://127.0.0.1:7000".into());
    let store = tower_usage_plans::store::RedisStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("no Redis Cluster at {url} (scripts/test.sh starts one): {e}"))
        .with_prefix(unique_prefix());
    store_suite::run_all(Arc::new(store)).await;
}

/// A lease granted under a plan's former period kind, given back after the
/// change, leaves the new period (and an UpdateUsage made in it) alone.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_lease_given_back_after_a_period_change_leaves_the_new_period_alone() {
    use tower_usage_plans::store::{
        CounterKey, CounterStore, DecisionRequest, LeaseConfig, QuotaRule, RedisStore, Verdict,
    };
    use tower_usage_plans::{Quota, QuotaPeriod};

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let store = RedisStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("no Redis at {url} (scripts/test.sh starts one): {e}"))
        .with_prefix(unique_prefix())
        .with_leases(LeaseConfig::default());
    let counter = CounterKey::new("plan", "key");
    let rule = |period| QuotaRule {
        quota: Quota::new(100, period),
        plan_created: 0,
    };
    let now: tower_usage_plans::jiff::Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
    let decide = |period| {
        let request = DecisionRequest {
            counter: &counter,
            throttle: None,
            quota: Some(rule(period)),
            now: now.into(),
        };
        store.decide(&request)
    };
    // Under DAY: admitted, and a slice leased.
    assert_eq!(
        decide(QuotaPeriod::Day).await.unwrap().verdict,
        Verdict::Admitted
    );
    // The plan moves to WEEK; UpdateUsage leaves 50 this week.
    store
        .set_remaining(&counter, &rule(QuotaPeriod::Week), now, 50)
        .await
        .unwrap();
    // The DAY lease goes back: it must not take the counter back to DAY.
    store.give_back_leases().await.unwrap();
    let week = decide(QuotaPeriod::Week).await.unwrap();
    assert_eq!(week.verdict, Verdict::Admitted);
    assert_eq!(week.quota.unwrap().remaining, 49);
}
