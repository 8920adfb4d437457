//! Every counter store passes the same suite.

mod support;

use support::store_suite;
#[cfg(feature = "redis")]
use support::store_suite::{redis_store, unique_prefix};

use std::sync::Arc;

use tower_usage_plans::store::MemoryStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    store_suite::run_all(Arc::new(MemoryStore::new())).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_store_conforms() {
    let store = redis_store("REDIS_URL", "redis://127.0.0.1:6390").await;
    store_suite::run_all(Arc::new(store)).await;
}

/// A 3-node Redis Cluster.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_store_conforms() {
    let store = redis_store(
        "REDIS_CLUSTER_URL",
        "redis+cluster://127.0.0.1:6391,127.0.0.1:6392,127.0.0.1:6393",
    )
    .await;
    store_suite::run_all(Arc::new(store)).await;
}

/// A lease granted under a plan's former period kind, given back after the
/// change, leaves the new period (and an UpdateUsage made in it) alone.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_lease_given_back_after_a_period_change_leaves_the_new_period_alone() {
    use store_suite::{at, decide, rule, T0};
    use tower_usage_plans::store::{CounterKey, CounterStore, LeaseConfig, Verdict};
    use tower_usage_plans::QuotaPeriod::{Day, Week};

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6390".into());
    let prefix = unique_prefix();
    let store = tower_usage_plans::store::RedisStore::connect(&url)
        .await
        .unwrap()
        .with_prefix(prefix.clone())
        .with_leases(LeaseConfig::default());
    store.until_leasing().await;
    let counter = CounterKey::new("plan", "key");
    let now = at(T0);
    // Under DAY: admitted, and a slice leased (the shared remaining count
    // is lower than what the decision reports, which includes the slice).
    let day = decide(&store, &counter, None, Some(rule(100, Day)), now).await;
    assert_eq!(day.verdict, Verdict::Admitted);
    let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let usage = store
        .usage(&counter, Some(&rule(100, Day)), now, today, today)
        .await
        .unwrap()[0];
    assert_eq!(usage, [1, 99], "GetUsage counts the admitted request only");
    let mut raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let leased: u64 = redis::cmd("HGET")
        .arg(format!("{prefix}{{plan:key}}"))
        .arg("leased")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(leased > 0, "a slice was leased ({leased})");
    // The plan moves to WEEK; UpdateUsage leaves 50 this week.
    store
        .set_remaining(&counter, &rule(100, Week), now, 50)
        .await
        .unwrap();
    // The DAY lease goes back: it must not take the counter back to DAY.
    store.give_back_leases().await.unwrap();
    let week = decide(&store, &counter, None, Some(rule(100, Week)), now).await;
    assert_eq!(week.verdict, Verdict::Admitted);
    assert_eq!(week.quota.unwrap().remaining, 49);
}

/// Top-ups stay exact while a replica leases: 1,000 concurrent `+1`s racing
/// 2,000 requests admit exactly 1,000, and once the leases are given back
/// today's usage says so.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn top_ups_are_exact_while_leasing() {
    use tower_usage_plans::store::{CounterKey, CounterStore, LeaseConfig};

    let store = redis_store("REDIS_URL", "redis://127.0.0.1:6379")
        .await
        .with_leases(LeaseConfig::default());
    store.until_leasing().await;
    let store = Arc::new(store);
    let admitted = store_suite::concurrent_top_ups(store.clone(), "leased-top-ups").await;
    assert_eq!(admitted, 1_000);
    store.give_back_leases().await.unwrap();
    let day = "2026-11-28".parse().unwrap();
    let usage = store
        .usage(
            &CounterKey::new("suite-plan", "leased-top-ups"),
            Some(&store_suite::rule(0, tower_usage_plans::QuotaPeriod::Day)),
            store_suite::at(store_suite::T0),
            day,
            day,
        )
        .await
        .unwrap();
    assert_eq!(usage, vec![[1_000, 0]]);
}

/// A replica that is only slow (paused, its requests' time taken before
/// the pause) while Redis reclaims its lease: another replica admits the
/// reclaimed units, the slow one spends at most the share of its lease it
/// may spend unacknowledged, and its late give-back adds nothing back, so
/// across both exactly the quota is admitted, never one more. On the
/// server and on the cluster.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reclaimed_lease_given_back_late_adds_nothing_back() {
    for (var, default) in [
        ("REDIS_URL", "redis://127.0.0.1:6390"),
        (
            "REDIS_CLUSTER_URL",
            "redis+cluster://127.0.0.1:6391,127.0.0.1:6392,127.0.0.1:6393",
        ),
    ] {
        slow_replica_loses_its_lease(var, default).await;
    }
}

#[cfg(feature = "redis")]
async fn slow_replica_loses_its_lease(var: &str, default: &str) {
    use store_suite::{at, decide, rule, T0};
    use tower_usage_plans::store::{CounterKey, LeaseConfig, Verdict};
    use tower_usage_plans::QuotaPeriod::Day;

    const QUOTA: u64 = 100;
    let url = std::env::var(var).unwrap_or_else(|_| default.into());
    let prefix = unique_prefix();
    let connect = || async {
        tower_usage_plans::store::RedisStore::connect(&url)
            .await
            .unwrap()
            .with_prefix(prefix.clone())
    };
    let slow = connect().await.with_leases(LeaseConfig::default());
    slow.until_leasing().await;
    let other = connect().await;
    let counter = CounterKey::new("plan", "slow");
    let quota = Some(rule(QUOTA, Day));
    let admitted =
        |d: &tower_usage_plans::store::Decision| u64::from(d.verdict == Verdict::Admitted);
    // The slow replica's lease grows with its rate (all at one instant).
    let then = at(T0);
    let mut total = 0;
    for _ in 0..13 {
        total += admitted(&decide(&slow, &counter, None, quota, then).await);
    }
    assert_eq!(total, 13);
    // Its lease expired a second ago by the other replica's clock: Redis
    // reclaims it on the next decision, and the other replica admits all
    // it can.
    let later = then + jiff::SignedDuration::from_secs(2);
    for _ in 0..QUOTA {
        total += admitted(&decide(&other, &counter, None, quota, later).await);
    }
    // The slow replica resumes with requests timed before the pause: its
    // lease is still live by that time.
    for _ in 0..QUOTA {
        total += admitted(&decide(&slow, &counter, None, quota, then).await);
    }
    assert!(
        total <= QUOTA,
        "{var}: {total} admitted, the quota is {QUOTA}"
    );
    slow.give_back_leases().await.unwrap();
    for _ in 0..QUOTA {
        total += admitted(&decide(&other, &counter, None, quota, later).await);
    }
    assert_eq!(total, QUOTA, "{var}: admitted across both replicas");
}
