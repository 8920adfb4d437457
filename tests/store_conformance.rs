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
    let leased = leased_units(&url, &format!("{prefix}{{plan:key}}")).await;
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

    let store = redis_store("REDIS_URL", "redis://127.0.0.1:6390")
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

/// A Redis failure keeps the `redis` crate's error as its source, so a
/// caller can tell a refused connection from a timeout.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_redis_failure_keeps_its_cause() {
    use std::error::Error as _;
    let url = format!("redis://{}", support::net::closed_addr());
    let err = tower_usage_plans::store::RedisStore::connect(&url)
        .await
        .expect_err("nothing listens there");
    assert_eq!(err.kind(), tower_usage_plans::ErrorKind::Store);
    let source = err.source().expect("the cause is kept");
    let cause = source
        .downcast_ref::<redis::RedisError>()
        .expect("a redis::RedisError");
    assert!(cause.is_connection_refusal(), "{cause:?}");
}

/// A store timeout longer than the `redis` crate's own response timeout
/// (500 ms) holds: a call made while Redis is busy for a second (here
/// `CLIENT PAUSE`) answers once Redis does, within its 2 s.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_store_timeout_longer_than_half_a_second_holds() {
    use support::store_suite::{at, decide, rule, T0};
    use tower_usage_plans::store::{CounterKey, RedisStore, Verdict};
    use tower_usage_plans::QuotaPeriod;

    let redis = support::redis_server::Redis::start();
    let store = RedisStore::connect(&redis.url())
        .await
        .unwrap()
        .with_timeout(std::time::Duration::from_secs(2));
    let counter = CounterKey::new("plan", "busy");
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1_000)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let five_a_day = Some(rule(5, QuotaPeriod::Day));
    let decision = decide(&store, &counter, None, five_a_day, at(T0)).await;
    assert_eq!(decision.verdict, Verdict::Admitted);
}

/// A replica that only read the counters when it started (the replicas
/// that decided them are gone) puts them back once Redis lost them, on one
/// server and on the cluster (read on each master): 30 counters spread
/// over the slots, spent 1 to 3 of 3, one with an UpdateUsage allowance.
#[cfg(feature = "redis")]
async fn a_new_replica_puts_back_counters_it_only_read(var: &str, default: &str) {
    support::day::clear_of_midnight();
    use store_suite::{decide, rule};
    use tower_usage_plans::store::{CounterKey, CounterStore, Verdict};
    use tower_usage_plans::QuotaPeriod::Day;

    let url = std::env::var(var).unwrap_or_else(|_| default.into());
    let prefix = unique_prefix();
    let connect = || store_suite::store_at(&url, &prefix);
    let quota = rule(3, Day);
    let now = jiff::Timestamp::now;
    let counters: Vec<CounterKey> = (0..30)
        .map(|i| CounterKey::new("plan", &format!("key{i}")))
        .collect();
    let before = connect().await;
    before.recover_if_emptied().await.unwrap();
    for (i, counter) in counters.iter().enumerate() {
        for _ in 0..=i % 3 {
            let decision = decide(&before, counter, None, Some(quota), now()).await;
            assert_eq!(decision.verdict, Verdict::Admitted);
        }
    }
    // UpdateUsage: 2 remaining on key0 (it used 1 of 3).
    before
        .set_remaining(&counters[0], &quota, now(), 2)
        .await
        .unwrap();
    drop(before);

    let after = connect().await;
    assert!(
        !after.recover_if_emptied().await.unwrap(),
        "nothing lost yet"
    );
    // Redis loses the prefix's data: every counter and the marker.
    let mut keys: Vec<String> = counters
        .iter()
        .map(|c| format!("{prefix}{{{}:{}}}", c.plan_id(), c.key_id()))
        .collect();
    keys.push(format!("{prefix}{{ctl}}:marker"));
    delete(&url, &keys).await;
    for (i, counter) in counters.iter().enumerate() {
        let left: u64 = if i == 0 { 2 } else { 2 - (i % 3) as u64 };
        let decision = decide(&after, counter, None, Some(quota), now()).await;
        match left {
            0 => assert_eq!(decision.verdict, Verdict::QuotaExceeded, "key{i}"),
            _ => {
                assert_eq!(decision.verdict, Verdict::Admitted, "key{i}");
                assert_eq!(decision.quota.unwrap().remaining, left - 1, "key{i}");
            }
        }
    }
}

/// Redis loses its data; A finds it first and every replica puts back
/// what it saw (A's restore, then B's on A's message, which names the
/// marker A sets next: B does not restore again on finding it). B then
/// decides on the counter as Redis now holds it; when B later finds the
/// marker replaced all the same (a third replica's recovery raced A's)
/// and restores again, what it saw since the first restore is in Redis
/// already and counts once, not twice (it did, and lost quota).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_restore_counts_nothing_twice() {
    use store_suite::{decide, rule};
    use tower_usage_plans::store::{CounterKey, Verdict};
    use tower_usage_plans::QuotaPeriod;

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6390".into());
    let prefix = unique_prefix();
    let (a, b) = (
        store_suite::store_at(&url, &prefix).await,
        store_suite::store_at(&url, &prefix).await,
    );
    a.recover_if_emptied().await.unwrap();
    b.recover_if_emptied().await.unwrap();
    let quota = Some(rule(100, QuotaPeriod::Day));
    let counter = CounterKey::new("plan", "twice");
    let now = jiff::Timestamp::now;
    let remaining = |decision: tower_usage_plans::store::Decision| {
        assert_eq!(decision.verdict, Verdict::Admitted);
        decision.quota.unwrap().remaining
    };
    for store in [&a, &b] {
        for _ in 0..5 {
            remaining(decide(store, &counter, None, quota, now()).await);
        }
    }
    let marker = format!("{prefix}{{ctl}}:marker");
    delete(&url, &[format!("{prefix}{{plan:twice}}"), marker.clone()]).await;
    // Both restores (A's 5, B's 10): the 11th request leaves 89.
    assert_eq!(
        remaining(decide(&a, &counter, None, quota, now()).await),
        89
    );
    assert!(
        !b.recover_if_emptied().await.unwrap(),
        "B knows the marker A set"
    );
    for left in (79..89).rev() {
        assert_eq!(
            remaining(decide(&b, &counter, None, quota, now()).await),
            left
        );
    }
    // Another replica's marker: B restores what it saw (21 used).
    let mut raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("SET")
        .arg(&marker)
        .arg("another-replicas")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(b.recover_if_emptied().await.unwrap(), "B restored again");
    assert_eq!(
        remaining(decide(&a, &counter, None, quota, now()).await),
        78
    );
    assert_eq!(
        remaining(decide(&b, &counter, None, quota, now()).await),
        77
    );
}

/// Two leasing replicas spend 100 of a quota of 1,000 and give their
/// leases back; then Redis loses its data. The restore puts back the 100
/// admitted, not the units their leases held when they last looked (the
/// copies counted those as used, and 9-17% of the quota was lost). Then
/// one replica holds a lease when Redis loses its data again: its units
/// are counted as used, so never more than the quota is admitted in all
/// (what the lease did not spend before it went back is lost).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_given_back_before_a_loss_are_not_restored_as_used() {
    use store_suite::{decide, rule};
    use tower_usage_plans::store::{CounterKey, LeaseConfig, RedisStore, Verdict};
    use tower_usage_plans::QuotaPeriod;

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6390".into());
    let prefix = unique_prefix();
    let connect = || async {
        let store = store_suite::store_at(&url, &prefix)
            .await
            .with_leases(LeaseConfig::default());
        store.until_leasing().await;
        store.recover_if_emptied().await.unwrap();
        store
    };
    let (a, b) = (connect().await, connect().await);
    let quota = Some(rule(1_000, QuotaPeriod::Day));
    let counter = CounterKey::new("plan", "leased");
    let now = jiff::Timestamp::now;
    let admitted = |store: &RedisStore, n: usize| {
        let counter = counter.clone();
        let store = store.clone();
        async move {
            let mut admitted = 0;
            for _ in 0..n {
                let decision = decide(&store, &counter, None, quota, now()).await;
                admitted += u64::from(decision.verdict == Verdict::Admitted);
            }
            admitted
        }
    };
    let lose_data = || async {
        delete(
            &url,
            &[
                format!("{prefix}{{plan:leased}}"),
                format!("{prefix}{{ctl}}:marker"),
            ],
        )
        .await;
    };
    assert_eq!(admitted(&a, 50).await + admitted(&b, 50).await, 100);
    a.give_back_leases().await.unwrap();
    b.give_back_leases().await.unwrap();
    lose_data().await;
    // The first request after the loss: 899 left (a lease's slice of them
    // included).
    let decision = decide(&a, &counter, None, quota, now()).await;
    assert_eq!(decision.verdict, Verdict::Admitted);
    assert_eq!(decision.quota.unwrap().remaining, 899);

    // A holds a lease (and spent some of it) when Redis loses its data.
    assert_eq!(admitted(&a, 99).await, 99);
    let leased = leased_units(&url, &format!("{prefix}{{plan:leased}}")).await;
    assert!(leased > 0, "A holds a lease");
    lose_data().await;
    // A's lease goes out of use at the restore, and its unspent units
    // are admittable again: none lost.
    let after = admitted(&a, 1_000).await + admitted(&b, 10).await;
    assert_eq!(
        after, 800,
        "admitted of the 800 left (A's lease held {leased})"
    );
}

/// Replica B spends a counter that replica A (started before it) never
/// decides; A reads Redis's counters on (each `recover_if_emptied` reads a
/// round), so when B is gone and Redis loses its data, A puts the count
/// back: the key stays spent. (A read the counters only once, when it
/// started, and B's count was lost with B.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_another_replica_created_later_is_copied_too() {
    use store_suite::{decide, rule};
    use tower_usage_plans::store::{CounterKey, Verdict};
    use tower_usage_plans::QuotaPeriod;

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6390".into());
    let prefix = unique_prefix();
    let a = store_suite::store_at(&url, &prefix).await;
    a.recover_if_emptied().await.unwrap();
    let counter = CounterKey::new("plan", "bs");
    let quota = Some(rule(3, QuotaPeriod::Day));
    let now = jiff::Timestamp::now;
    {
        let b = store_suite::store_at(&url, &prefix).await;
        b.recover_if_emptied().await.unwrap();
        for _ in 0..3 {
            let decision = decide(&b, &counter, None, quota, now()).await;
            assert_eq!(decision.verdict, Verdict::Admitted);
        }
    }
    a.recover_if_emptied().await.unwrap();
    delete(
        &url,
        &[
            format!("{prefix}{{plan:bs}}"),
            format!("{prefix}{{ctl}}:marker"),
        ],
    )
    .await;
    let decision = decide(&a, &counter, None, quota, now()).await;
    assert_eq!(decision.verdict, Verdict::QuotaExceeded);
}

/// A lease near its end takes the next one ahead, in the background, and
/// the key's requests that find the lease spent before it lands wait for it
/// and spend it: one script call for the next lease in all, not one each
/// (they each took a one-unit lease of their own, which each renewed). The
/// call taken ahead decides no request of its own: GetUsage counts each
/// admitted request once.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_a_spent_lease_spend_the_one_taken_ahead_and_count_once() {
    use store_suite::rule;
    use support::redis_server::Redis;
    use tower_usage_plans::store::CounterKey;
    use tower_usage_plans::QuotaPeriod;

    let redis = Redis::start();
    let store = leasing_store(&redis.url(), &unique_prefix()).await;
    let counter = CounterKey::new("plan", "renewed");
    let rule = rule(1_000_000, QuotaPeriod::Day);
    let start = jiff::Timestamp::now();
    // A first lease of one unit (the first request's call), spent by the
    // second, which takes the next ahead: sized for the rate of one unit
    // in a millisecond (at least), 1,500 units.
    let (store, counter) = (&store, &counter);
    let admitted = |now| admitted_at(store, counter, rule, now);
    admitted(start).await;
    let before = redis.script_calls().await;
    admitted(start).await;
    // Polled in turn, before or after the lease taken ahead lands: each
    // spends it, waiting for it if it has not landed yet.
    let later = start + jiff::SignedDuration::from_millis(1);
    futures_util::future::join_all((0..20).map(|_| admitted(later))).await;
    assert_eq!(
        redis.script_calls().await - before,
        1,
        "the lease taken ahead alone"
    );
    store.give_back_leases().await.unwrap();
    assert_eq!(
        today_usage(store, counter, &rule).await,
        [22, 999_978],
        "every admitted request once, and none for the lease taken ahead"
    );
}

/// Leases given back on shutdown include one taken ahead and still on its
/// way: landed after the others went back, it stayed out until Redis
/// reclaimed it, and half of it counted as spent.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_ahead_goes_back_with_the_others() {
    use store_suite::rule;
    use support::redis_server::Redis;
    use tower_usage_plans::store::CounterKey;
    use tower_usage_plans::QuotaPeriod;

    let redis = Redis::start();
    let prefix = unique_prefix();
    let store = leasing_store(&redis.url(), &prefix).await;
    let counter = CounterKey::new("plan", "ahead");
    let rule = rule(1_000_000, QuotaPeriod::Day);
    let now = jiff::Timestamp::now();
    // The second request spends the first lease's one unit and takes the
    // next ahead; the leases go back at once.
    for _ in 0..2 {
        admitted_at(&store, &counter, rule, now).await;
    }
    store.give_back_leases().await.unwrap();
    let hash = format!("{prefix}{{plan:ahead}}");
    assert_eq!(leased_units(&redis.url(), &hash).await, 0, "none left out");
    assert_eq!(today_usage(&store, &counter, &rule).await, [2, 999_998]);
}

/// A slice taken ahead joins the lease still being spent: what the replica
/// may have spent and not reported, which Redis keeps as spent should the
/// replica die, is the larger of the two halves, not their sum. (Summed, a
/// replica killed with `kill -9` cost twice a lease's share.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_taken_ahead_keeps_one_share_for_a_replica_that_dies() {
    use store_suite::rule;
    use support::redis_server::Redis;
    use tower_usage_plans::store::CounterKey;
    use tower_usage_plans::QuotaPeriod;

    let redis = Redis::start();
    let prefix = unique_prefix();
    let store = leasing_store(&redis.url(), &prefix).await;
    let counter = CounterKey::new("plan", "share");
    let rule = rule(10_000_000, QuotaPeriod::Day);
    let start = jiff::Timestamp::now();
    let (store, counter) = (&store, &counter);
    let admitted = |now| admitted_at(store, counter, rule, now);
    // A one-unit lease, spent: the next, taken ahead, is 1,500 units (one
    // unit a millisecond, for 1.5 s), of which 750 may go unreported.
    admitted(start).await;
    admitted(start).await;
    for _ in 0..700 {
        admitted(start + jiff::SignedDuration::from_millis(1)).await;
    }
    // A fifth of its lifetime left: the next is taken ahead, sized for 701
    // in 0.8 s (1,314 units, 657 of which may go unreported).
    admitted(start + jiff::SignedDuration::from_millis(800)).await;
    let (url, hash) = (redis.url(), format!("{prefix}{{plan:share}}"));
    // Units held, then the most kept should the replica die.
    let kept = support::eventually::eventually("the slice taken ahead to land", || async {
        let record = holder_record(&url, &hash).await;
        (record.first().copied().unwrap_or(0) >= 1 + 1_500 + 1_314).then(|| record[1])
    })
    .await;
    assert_eq!(kept, 750, "the larger share, not 750 + 657");
}

/// `store` admits a request of `counter` under `rule` at `now`.
#[cfg(feature = "redis")]
async fn admitted_at(
    store: &tower_usage_plans::store::RedisStore,
    counter: &tower_usage_plans::store::CounterKey,
    rule: tower_usage_plans::store::QuotaRule,
    now: jiff::Timestamp,
) {
    let decision = store_suite::decide(store, counter, None, Some(rule), now).await;
    assert_eq!(
        decision.verdict,
        tower_usage_plans::store::Verdict::Admitted
    );
}

/// The numbers of the (one) lease holder's record in the counter hash
/// `hash`: units held, the most kept should the holder die, and on (see
/// `rec_get` in redis.lua); none without one.
#[cfg(feature = "redis")]
async fn holder_record(url: &str, hash: &str) -> Vec<u64> {
    let mut raw = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(hash)
        .query_async(&mut raw)
        .await
        .unwrap();
    fields
        .iter()
        .find(|(name, _)| name.starts_with("h:"))
        .map(|(_, record)| record.split(',').map(|n| n.parse().unwrap_or(0)).collect())
        .unwrap_or_default()
}

/// The units out on leases of the counter hash `hash` (its `leased` field).
#[cfg(feature = "redis")]
async fn leased_units(url: &str, hash: &str) -> u64 {
    let mut raw = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("HGET")
        .arg(hash)
        .arg("leased")
        .query_async(&mut raw)
        .await
        .unwrap()
}

/// Deletes `keys` one by one (they lie in different cluster slots).
#[cfg(feature = "redis")]
async fn delete(url: &str, keys: &[String]) {
    use redis::AsyncCommands;
    match url.strip_prefix("redis+cluster://") {
        Some(nodes) => {
            let nodes: Vec<String> = nodes.split(',').map(|n| format!("redis://{n}")).collect();
            let client = redis::cluster::ClusterClient::new(nodes).unwrap();
            let mut connection = client.get_async_connection().await.unwrap();
            for key in keys {
                let _: i64 = connection.del(key).await.unwrap();
            }
        }
        None => {
            let client = redis::Client::open(url).unwrap();
            let mut connection = client.get_multiplexed_async_connection().await.unwrap();
            for key in keys {
                let _: i64 = connection.del(key).await.unwrap();
            }
        }
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_puts_back_counters_it_only_read_on_one_server() {
    a_new_replica_puts_back_counters_it_only_read("REDIS_URL", "redis://127.0.0.1:6390").await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_puts_back_counters_it_only_read_on_the_cluster() {
    a_new_replica_puts_back_counters_it_only_read(
        "REDIS_CLUSTER_URL",
        "redis+cluster://127.0.0.1:6391,127.0.0.1:6392,127.0.0.1:6393",
    )
    .await;
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
    let connect = || store_suite::store_at(&url, &prefix);
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

/// Redis stalls (SIGSTOP: 400 ms twice, then 1.5 s) while a replica leases
/// a busy key. Lease calls, give-backs and reports time out on the replica
/// (100 ms) and Redis applies them after it stopped waiting; rounds of
/// give-backs are dropped unfinished; the long stall outlasts the leases. Once every
/// lease is back, Redis counts as used exactly what was admitted, give or
/// take the requests that failed (each may have been charged its own
/// unit): no grant the replica never received stays counted as spent, and
/// nothing goes back twice.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_stall_while_leasing_loses_no_quota() {
    support::day::clear_of_midnight();
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;
    use store_suite::rule;
    use support::redis_server::Redis;
    use tower_usage_plans::store::{
        CounterKey, CounterStore, DecisionRequest, LeaseConfig, Verdict,
    };
    use tower_usage_plans::QuotaPeriod;

    const QUOTA: u64 = 10_000_000;
    let redis = Redis::start();
    let store = impatient_store(&redis, &unique_prefix())
        .await
        .with_leases(LeaseConfig {
            ttl: Duration::from_millis(300),
            ..LeaseConfig::default()
        });
    store.until_leasing().await;
    let counter = CounterKey::new("plan", "stalled");
    let quota = rule(QUOTA, QuotaPeriod::Day);
    let mut deciders = Deciders::default();
    deciders.spawn(&store, &counter, quota, 16);
    let stop = deciders.stop.clone();
    // What the gateway does every 200 ms: expired leases and reports go
    // back, within a time limit (the gateway's is 3 s): a round that Redis
    // holds up is dropped.
    let upkeep = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let round = store.give_back_expired_leases();
                let _ = tokio::time::timeout(Duration::from_millis(60), round).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // The last stall outlasts the leases and Redis's grace: Redis reclaims
    // them as it resumes, before they come back.
    for stall_ms in [400, 400, 1_500] {
        deciders.until_admitted(20_000).await;
        redis.pause();
        tokio::time::sleep(Duration::from_millis(stall_ms)).await;
        redis.resume();
    }
    deciders.until_admitted(20_000).await;
    let (mut admitted, failed, _) = deciders.stop().await;
    upkeep.await.unwrap();
    store.give_back_leases().await.unwrap();
    // Past every lease's lifetime and Redis's grace: a decision reclaims
    // what no give-back came for (a grant that never reached the replica
    // keeps half its units as possibly spent).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let request = DecisionRequest {
        counter: &counter,
        throttle: None,
        quota: Some(quota),
        now: jiff::Timestamp::now().into(),
    };
    assert_eq!(
        store.decide(&request).await.unwrap().verdict,
        Verdict::Admitted
    );
    admitted += 1;
    store.give_back_leases().await.unwrap();
    let [used, remaining] = today_usage(&store, &counter, &quota).await;
    assert!(failed > 0, "the stalls failed some requests");
    assert!(
        (QUOTA - admitted - failed..=QUOTA - admitted).contains(&remaining),
        "{remaining} remaining after {admitted} admitted and {failed} failed: {} lost",
        (QUOTA - admitted).saturating_sub(remaining)
    );
    assert!(
        (admitted..=admitted + failed).contains(&used),
        "GetUsage says {used} used after {admitted} admitted and {failed} failed"
    );
}

/// Redis stalls (SIGSTOP) while requests wait for their decisions: each
/// fails at the store's timeout (100 ms), so the layer answers it by the
/// failure policy, uncounted (503, or admitted uncounted). The decisions
/// sent before the stall are applied once Redis resumes: each admitted
/// one is given back, so GetUsage counts what was admitted, and the quota
/// left is the one before the stall (the black-box finding: 300 used where
/// 288-299 were served). So is a decision sent alone (a throttle's), its
/// token back.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_redis_admits_after_its_request_gave_up_is_given_back() {
    use store_suite::{decide, rule};
    use support::eventually::eventually;
    use support::redis_server::Redis;
    use tower_usage_plans::store::{
        CounterKey, CounterStore, DecisionRequest, ThrottleRule, Verdict,
    };
    use tower_usage_plans::{QuotaPeriod, Throttle};

    let redis = Redis::start();
    let prefix = unique_prefix();
    let store = impatient_store(&redis, &prefix).await;
    let counter = CounterKey::new("plan", "stalled");
    let quota_rule = rule(100, QuotaPeriod::Day);
    let quota = Some(quota_rule);
    // The counter's first decision goes alone; the second is the common
    // one, which decisions made together take.
    for _ in 0..2 {
        let decision = decide(&store, &counter, None, quota, jiff::Timestamp::now()).await;
        assert_eq!(decision.verdict, Verdict::Admitted);
    }
    // A throttle alone is decided alone: a token of 3 (one a day).
    let throttled = CounterKey::new("plan", "throttled");
    let throttle = Throttle::new(1.0 / 86_400.0, 3).unwrap();
    decide(
        &store,
        &throttled,
        Some(throttle),
        None,
        jiff::Timestamp::now(),
    )
    .await;
    redis.pause();
    let waiting: Vec<_> = (0..9)
        .map(|i| {
            let (store, counter) = (store.clone(), counter.clone());
            let throttled = throttled.clone();
            tokio::spawn(async move {
                let (counter, throttle, quota) = match i {
                    0 => (
                        &throttled,
                        Some(ThrottleRule {
                            method: None,
                            throttle,
                        }),
                        None,
                    ),
                    _ => (&counter, None, quota),
                };
                let request = DecisionRequest {
                    counter,
                    throttle,
                    quota,
                    now: jiff::Timestamp::now().into(),
                };
                store.decide(&request).await.is_err()
            })
        })
        .collect();
    for request in waiting {
        assert!(
            request.await.unwrap(),
            "a decision while Redis stalls fails"
        );
    }
    redis.resume();
    // GetUsage goes after the stalled calls on the same connection: it sees
    // the late admissions (8 more used without their refunds), or their
    // refunds too.
    eventually("the late admissions given back", || async {
        let usage = today_usage(&store, &counter, &quota_rule).await;
        (usage == [2, 98]).then_some(())
    })
    .await;
    // Read after that GetUsage: the late decision of the throttle was
    // applied (a token spent, 1 left).
    let tokens = || async {
        let mut raw = redis.connection().await;
        let tokens: String = redis::cmd("HGET")
            .arg(format!("{prefix}{{plan:throttled}}"))
            .arg("b::t")
            .query_async(&mut raw)
            .await
            .unwrap();
        tokens.parse::<f64>().unwrap().floor()
    };
    eventually("the late token given back", || async {
        (tokens().await == 2.0).then_some(())
    })
    .await;
    let decision = decide(&store, &counter, None, quota, jiff::Timestamp::now()).await;
    assert_eq!(decision.quota.unwrap().remaining, 97);
}

/// A decision whose call Redis applied but whose answer was lost (its
/// connection died on the way back) was answered by the failure policy,
/// uncounted, yet stayed counted: 1-5 a key of 1,000 in a black-box run
/// that killed the replicas' connections every 0.2 s. The replica settles
/// the unanswered call: Redis says which decisions it admitted, and they
/// are given back.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_whose_answer_was_lost_is_given_back() {
    use store_suite::{decide, rule};
    use support::eventually::eventually;
    use support::redis_server::{AnswerCutter, Redis};
    use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, Verdict};
    use tower_usage_plans::QuotaPeriod;

    let redis = Redis::start();
    let cutter = AnswerCutter::start(&redis).await;
    let store = tower_usage_plans::store::RedisStore::connect(&cutter.url())
        .await
        .unwrap()
        .with_prefix(unique_prefix());
    let counter = CounterKey::new("plan", "cut");
    let quota_rule = rule(100, QuotaPeriod::Day);
    let quota = Some(quota_rule);
    // The counter's first decision goes alone; the second is the common
    // one, which decisions made together take.
    for _ in 0..2 {
        let decision = decide(&store, &counter, None, quota, jiff::Timestamp::now()).await;
        assert_eq!(decision.verdict, Verdict::Admitted);
    }
    cutter.cut_the_answer_to("decides");
    let request = DecisionRequest {
        counter: &counter,
        throttle: None,
        quota,
        now: jiff::Timestamp::now().into(),
    };
    assert!(
        store.decide(&request).await.is_err(),
        "a decision whose answer was lost fails"
    );
    eventually("the decision Redis admitted given back", || async {
        let usage = today_usage(&store, &counter, &quota_rule).await;
        (usage == [2, 98]).then_some(())
    })
    .await;
    let decision = decide(&store, &counter, None, quota, jiff::Timestamp::now()).await;
    assert_eq!(decision.quota.unwrap().remaining, 97);
}

/// As above, with leases: a request decided by a lease call (the lease
/// given back and a new one asked for) that Redis ran after the request
/// stopped waiting. The call's settle finds it applied, and its request
/// admitted: that request is given back too (it stayed counted: GetUsage
/// 4 to 9 above the requests served after a 1 s stall, black-box).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_call_redis_applies_after_its_request_gave_up_gives_its_request_back() {
    use store_suite::{decide, rule};
    use support::eventually::eventually;
    use support::redis_server::Redis;
    use tower_usage_plans::store::{
        CounterKey, CounterStore, DecisionRequest, LeaseConfig, Verdict,
    };
    use tower_usage_plans::QuotaPeriod;

    let redis = Redis::start();
    let store = impatient_store(&redis, &unique_prefix())
        .await
        .with_leases(LeaseConfig::default());
    store.until_leasing().await;
    let counter = CounterKey::new("plan", "stalled");
    let quota = rule(1_000, QuotaPeriod::Day);
    let admitted = decide(&store, &counter, None, Some(quota), jiff::Timestamp::now()).await;
    assert_eq!(admitted.verdict, Verdict::Admitted);
    store.give_back_leases().await.unwrap();
    // No lease held: the next decision is a lease call.
    redis.pause();
    let request = DecisionRequest {
        counter: &counter,
        throttle: None,
        quota: Some(quota),
        now: jiff::Timestamp::now().into(),
    };
    assert!(store.decide(&request).await.is_err(), "Redis stalls");
    redis.resume();
    // The call goes unanswered: settled with the next give-back round.
    eventually("the late request given back", || async {
        store.give_back_leases().await.ok()?;
        (today_usage(&store, &counter, &quota).await == [1, 999]).then_some(())
    })
    .await;
}

/// Redis loses its data (FLUSHALL, three times, 200,000 admissions apart)
/// while two replicas lease one busy key, each lease at its unacknowledged
/// cap much of the time. Each replica puts back what it saw and what its
/// own leases admitted that Redis did not acknowledge; once every lease is
/// back, Redis counts as used exactly what the two admitted: nothing twice
/// (its restore mark wiped by the day's first record, a replica's leases
/// of the counter as it was counted again: 32,768–170,000 short), nothing
/// left out (a give-back waiting to be sent, or a renewal whose slot
/// expired, at the restore: 32,768 over).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leasing_replicas_lose_nothing_when_redis_loses_its_data() {
    lose_data_while_leasing(2, 3, 200_000, "FLUSHALL").await;
}

/// As above, Redis losing one counter alone (deleted, as eviction or an
/// operator would; the marker stays): the replica that finds it gone puts
/// it back and has the other do so too. (Taken as a counter dropped on
/// purpose, it started over from a full quota: 5,000-6,000 of 20,000
/// admitted too many in a black-box run.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leasing_replicas_lose_nothing_when_redis_loses_one_counter() {
    lose_data_while_leasing(2, 3, 200_000, "DEL").await;
}

/// One replica leasing a busy key, Redis emptied eight times 20,000
/// admissions apart: often again while the replica puts the counters back
/// (before it sets a new marker). It puts them back again, once: Redis
/// then counts exactly what was admitted. (A marker set on the emptied
/// Redis vouched for it: the counter started over, 180,000-360,000 admitted
/// too many; put back twice, a lease's admissions counted twice.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_puts_back_again_when_redis_loses_its_data_while_it_restores() {
    lose_data_while_leasing(1, 8, 20_000, "FLUSHALL").await;
}

/// `replicas` replicas lease one busy key while Redis loses its data
/// `losses` times, `apart` admissions apart (`how`: "FLUSHALL", "DEL"
/// of the counter alone, "RESTART" empty, "ROLLBACK" to older data,
/// "RESTART-ROLLBACK" both, or "BACK-PAST-A-RESTORE"); then every lease
/// goes back and Redis must count exactly what was admitted.
#[cfg(feature = "redis")]
async fn lose_data_while_leasing(replicas: usize, losses: usize, apart: u64, how: &str) {
    support::day::clear_of_midnight();
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;
    use store_suite::rule;
    use support::redis_server::Redis;
    use tower_usage_plans::store::{CounterKey, LeaseConfig, RedisStore};
    use tower_usage_plans::QuotaPeriod;

    const QUOTA: u64 = 10_000_000;
    let rollback = how.contains("ROLLBACK") || how == "BACK-PAST-A-RESTORE";
    let redis = match rollback {
        true => Redis::start_rollbackable(),
        false => Redis::start(),
    };
    let prefix = unique_prefix();
    let mut stores = Vec::new();
    for _ in 0..replicas {
        let store = RedisStore::connect(&redis.url())
            .await
            .unwrap()
            .with_prefix(prefix.clone())
            .with_timeout(Duration::from_secs(5))
            .with_leases(LeaseConfig::default());
        store.until_leasing().await;
        store.recover_if_emptied().await.unwrap();
        stores.push(store);
    }
    let counter = CounterKey::new("plan", "flushed");
    let quota = rule(QUOTA, QuotaPeriod::Day);
    let mut deciders = Deciders::default();
    let mut upkeep = Vec::new();
    for store in &stores {
        deciders.spawn(store, &counter, quota, 8);
        // What the gateway does every 200 ms: reports and expired leases
        // go back, and a loss is looked for.
        let (store, stop) = (store.clone(), deciders.stop.clone());
        upkeep.push(tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let _ = store.give_back_expired_leases().await;
                let _ = store.recover_if_emptied().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    for _ in 0..losses {
        deciders.until_admitted(apart).await;
        let mut raw = redis.connection().await;
        if how == "BACK-PAST-A-RESTORE" {
            // Put back after a loss, saved, put back after another: then
            // Redis loads the save (an RDB-only Redis restarted twice
            // within its save interval does), whose marker the replicas
            // moved on from.
            let marker = put_back_after_a_loss(&mut raw, &prefix, None).await;
            redis.snapshot().await;
            deciders.until_admitted(apart).await;
            put_back_after_a_loss(&mut raw, &prefix, Some(marker)).await;
            deciders.until_admitted(apart).await;
            redis.roll_back(false).await;
            continue;
        }
        if rollback {
            // Redis goes back to what it held `apart` admissions ago.
            redis.snapshot().await;
            deciders.until_admitted(apart).await;
            redis.roll_back(how == "RESTART-ROLLBACK").await;
            continue;
        }
        if how == "RESTART" {
            restart_empty(&mut raw).await;
            continue;
        }
        let mut loss = redis::cmd(how);
        if how == "DEL" {
            loss.arg(format!("{prefix}{{plan:flushed}}"));
        }
        let _: redis::Value = loss.query_async(&mut raw).await.unwrap();
    }
    deciders.until_admitted(apart).await;
    let (admitted, failed, first_error) = deciders.stop().await;
    for task in upkeep {
        task.await.unwrap();
    }
    for store in &stores {
        store.give_back_leases().await.unwrap();
    }
    let [_, remaining] = today_usage(&stores[0], &counter, &quota).await;
    if how.contains("RESTART") || how == "BACK-PAST-A-RESTORE" {
        // A decision in flight when its connection dropped failed, and
        // may have used its unit. And a lease's share spent unacknowledged
        // (half a lease: 32,768 units here) may be counted twice at a
        // restart (1 run in 10 or so): under-admission, not yet found.
        // Never one admission too many.
        const SHARE: u64 = 32_768;
        // Three losses each time round, going back past a restore.
        let per_round = if how == "BACK-PAST-A-RESTORE" { 3 } else { 1 };
        let least = QUOTA - admitted - failed - SHARE * per_round * losses as u64;
        assert!(
            (least..=QUOTA - admitted).contains(&remaining),
            "{admitted} admitted, {failed} failed: {} counted twice",
            (QUOTA - admitted) as i64 - remaining as i64
        );
        return;
    }
    // Losses tens of milliseconds apart (a real restart takes longer) may
    // fail a decision that found Redis lost again each time it was put
    // back ("kept losing its data"): about 1 run in 50 on a busy machine.
    // It admitted nothing, and may have used its unit. (Left: 2 runs in
    // 3,000 of the eight-losses test on a loaded machine counted a few
    // thousand twice; none admitted too many, since a renewal's end stopped
    // clearing the next renewal's mark.)
    assert!(
        (QUOTA - admitted - failed..=QUOTA - admitted).contains(&remaining),
        "{admitted} admitted, {failed} failed (the first: {first_error}): {} counted twice",
        (QUOTA - admitted) as i64 - remaining as i64
    );
}

/// Redis goes back to older data three times (as after a crash, from an
/// RDB or AOF behind, or a failover to a replica that lagged), 200,000
/// admissions behind each time, while two replicas lease: no marker goes,
/// and the counters are there, only stale. (Before the replicas counted
/// their calls Redis applied: over by about 200,000 a rollback.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leasing_replicas_lose_nothing_when_redis_rolls_back() {
    lose_data_while_leasing(2, 3, 200_000, "ROLLBACK").await;
}

/// Redis restarts empty three times, 200,000 admissions apart, while two
/// replicas lease: every connection drops with the data, so calls in
/// flight go unanswered. (Before session 12's fixes: about 1,000,000 over
/// in every run.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leasing_replicas_lose_nothing_when_redis_restarts_empty() {
    lose_data_while_leasing(2, 3, 200_000, "RESTART").await;
}

/// As [`leasing_replicas_lose_nothing_when_redis_rolls_back`], with
/// every connection dropped at each rollback, as a restart (from an RDB or
/// AOF behind) or a failover drops them: calls in flight go unanswered.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leasing_replicas_lose_nothing_when_redis_restarts_with_older_data() {
    lose_data_while_leasing(2, 3, 200_000, "RESTART-ROLLBACK").await;
}

/// Redis put back after a loss is saved; the replicas lease on, Redis
/// loses its data and is put back again, then loads the save (three
/// times): its marker is one the replicas moved on from, never a new
/// restore's. (Taken for the latest restore they had put back for, the
/// stale counters stood: 870,000-1,060,000 admitted too many in 4 of 4
/// runs.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leasing_replicas_lose_nothing_when_redis_goes_back_past_a_restore() {
    lose_data_while_leasing(2, 3, 100_000, "BACK-PAST-A-RESTORE").await;
}

/// Empties Redis and returns the marker the replicas set once they put
/// back what they saw (another than `before`, or than the one Redis held).
#[cfg(feature = "redis")]
async fn put_back_after_a_loss(
    raw: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    before: Option<String>,
) -> String {
    let mut read = redis::cmd("GET");
    read.arg(format!("{prefix}{{ctl}}:marker"));
    let before = match before {
        Some(before) => Some(before),
        None => read.query_async(raw).await.unwrap(),
    };
    let _: redis::Value = redis::cmd("FLUSHALL").query_async(raw).await.unwrap();
    let put_back = async {
        loop {
            let marker: Option<String> = read.query_async(raw).await.unwrap();
            match marker {
                Some(marker) if Some(&marker) != before.as_ref() => return marker,
                _ => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), put_back)
        .await
        .expect("the replicas put back what they saw and set a new marker")
}

/// Without leases: one replica's decisions are lost in a rollback, the
/// other's are not. The first finds it (on its next call, or its next
/// check), the stale data goes, and both put back what they saw: the quota
/// admits exactly its limit. (Before: 1,300 of 1,000.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_admit_no_more_than_the_quota_when_redis_rolls_back() {
    use store_suite::rule;
    use tower_usage_plans::store::CounterKey;
    use tower_usage_plans::QuotaPeriod;

    const QUOTA: u64 = 1_000;
    let (redis, first, second) = two_replicas_on_a_rollbackable_redis().await;
    let counter = CounterKey::new("plan", "rolled-back");
    let quota = Some(rule(QUOTA, QuotaPeriod::Day));
    let admit = |store, n| admit_n(store, &counter, quota, n);
    let mut admitted = admit(&first, 300).await + admit(&second, 300).await;
    redis.snapshot().await;
    admitted += admit(&second, 300).await;
    redis.roll_back(false).await;
    // The second replica's check (the gateway's, every 200 ms) finds it.
    assert!(
        second.recover_if_emptied().await.unwrap(),
        "the rollback is found"
    );
    admitted += admit(&first, 2 * QUOTA).await + admit(&second, 2 * QUOTA).await;
    assert_eq!(admitted, QUOTA);
}

/// A replica whose own calls Redis did not lose (it only read the counter
/// since the snapshot) finds the rollback by its copy of the counter: its
/// first decision after it refuses, and what the other replica admitted
/// is put back. (Before: it admitted 1,300 of 1,000.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_nothing_finds_redis_rolled_back_by_its_copy() {
    support::day::clear_of_midnight();
    use store_suite::rule;
    use tower_usage_plans::store::CounterKey;
    use tower_usage_plans::QuotaPeriod;

    const QUOTA: u64 = 1_000;
    let (redis, first, second) = two_replicas_on_a_rollbackable_redis().await;
    let counter = CounterKey::new("plan", "rolled-back");
    let quota = Some(rule(QUOTA, QuotaPeriod::Day));
    let admit = |store, n| admit_n(store, &counter, quota, n);
    let mut admitted = admit(&first, 300).await;
    redis.snapshot().await;
    admitted += admit(&first, 300).await;
    // The second replica reads the counter (the gateway's round does,
    // 1,000 counters every 200 ms): its copy holds 600.
    second.recover_if_emptied().await.unwrap();
    redis.roll_back(false).await;
    admitted += admit(&second, 2 * QUOTA).await + admit(&first, 2 * QUOTA).await;
    assert_eq!(admitted, QUOTA);
}

/// A Redis that can be rolled back, and two replicas on it (one prefix),
/// each past its first check.
#[cfg(feature = "redis")]
async fn two_replicas_on_a_rollbackable_redis() -> (
    support::redis_server::Redis,
    tower_usage_plans::store::RedisStore,
    tower_usage_plans::store::RedisStore,
) {
    two_replicas_on(support::redis_server::Redis::start_rollbackable()).await
}

/// Two replicas on `redis` (one prefix, no leases), each past its first
/// check.
#[cfg(feature = "redis")]
async fn two_replicas_on(
    redis: support::redis_server::Redis,
) -> (
    support::redis_server::Redis,
    tower_usage_plans::store::RedisStore,
    tower_usage_plans::store::RedisStore,
) {
    let prefix = unique_prefix();
    let first = store_suite::store_at(&redis.url(), &prefix).await;
    let second = store_suite::store_at(&redis.url(), &prefix).await;
    for store in [&first, &second] {
        store.recover_if_emptied().await.unwrap();
    }
    (redis, first, second)
}

/// Decides `n` times on `store`; how many were admitted.
#[cfg(feature = "redis")]
async fn admit_n(
    store: &tower_usage_plans::store::RedisStore,
    counter: &tower_usage_plans::store::CounterKey,
    quota: Option<tower_usage_plans::store::QuotaRule>,
    n: u64,
) -> u64 {
    let mut admitted = 0;
    for _ in 0..n {
        let decision =
            store_suite::decide(store, counter, None, quota, jiff::Timestamp::now()).await;
        admitted += u64::from(decision.verdict == tower_usage_plans::store::Verdict::Admitted);
    }
    admitted
}

/// A replica's decision finds Redis rolled back by itself: its next call
/// after the rollback refuses, and it puts back what it saw before it
/// decides. (Before: 140 admitted of 100.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_finds_redis_rolled_back() {
    use store_suite::{decide, rule};
    use support::redis_server::Redis;
    use tower_usage_plans::store::{CounterKey, Verdict};
    use tower_usage_plans::QuotaPeriod;

    const QUOTA: u64 = 100;
    let redis = Redis::start_rollbackable();
    let store = store_suite::store_at(&redis.url(), &unique_prefix()).await;
    store.recover_if_emptied().await.unwrap();
    let counter = CounterKey::new("plan", "rolled-back");
    let quota = Some(rule(QUOTA, QuotaPeriod::Day));
    let now = jiff::Timestamp::now;
    let mut admitted = 0;
    for _ in 0..3 * QUOTA {
        // The counter is there after the rollback, with 10 used.
        if admitted == 10 {
            redis.snapshot().await;
        } else if admitted == QUOTA / 2 {
            redis.roll_back(false).await;
        }
        let decision = decide(&store, &counter, None, quota, now()).await;
        admitted += u64::from(decision.verdict == Verdict::Admitted);
    }
    assert_eq!(admitted, QUOTA);
}

/// A replica reports what its lease admitted just after Redis lost its
/// data (before it noticed): the report finds its counter gone and counts
/// nothing, so the requests stay unreported, and the restore that follows
/// counts them. (Taken as counted, the restore left them out: admitted
/// beyond the quota.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_finds_its_counter_gone_is_counted_by_the_restore() {
    use store_suite::{decide, rule};
    use support::redis_server::Redis;
    use tower_usage_plans::store::{CounterKey, LeaseConfig, Verdict};
    use tower_usage_plans::QuotaPeriod;

    const QUOTA: u64 = 1_000;
    let redis = Redis::start();
    let prefix = unique_prefix();
    let store = store_suite::store_at(&redis.url(), &prefix)
        .await
        .with_leases(LeaseConfig::default());
    store.until_leasing().await;
    store.recover_if_emptied().await.unwrap();
    let counter = CounterKey::new("plan", "reported");
    let quota = Some(rule(QUOTA, QuotaPeriod::Day));
    let now = jiff::Timestamp::now;
    let mut admitted = 0;
    for _ in 0..50 {
        let decision = decide(&store, &counter, None, quota, now()).await;
        admitted += u64::from(decision.verdict == Verdict::Admitted);
    }
    assert_eq!(admitted, 50);
    delete(
        &redis.url(),
        &[
            format!("{prefix}{{plan:reported}}"),
            format!("{prefix}{{ctl}}:marker"),
        ],
    )
    .await;
    // The round's report reaches the emptied Redis first.
    store.give_back_expired_leases().await.unwrap();
    assert!(
        store.recover_if_emptied().await.unwrap(),
        "the loss is found"
    );
    for _ in 0..2 * QUOTA {
        let decision = decide(&store, &counter, None, quota, now()).await;
        admitted += u64::from(decision.verdict == Verdict::Admitted);
    }
    assert_eq!(admitted, QUOTA, "admitted in all");
}

/// Redis records the lease calls each replica made of a counter, so that
/// one sent again is not applied twice; a replica that is gone leaves its
/// record behind, until the counter's next day clears records a minute
/// old (a counter lives 101 days: one record per replica process that
/// ever leased it would pile up).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_replicas_record_of_calls_goes_with_the_next_day() {
    use store_suite::{at, decide, rule, T0};
    use support::redis_server::Redis;
    use tower_usage_plans::store::{CounterKey, LeaseConfig, Verdict};
    use tower_usage_plans::QuotaPeriod;

    let redis = Redis::start();
    let prefix = unique_prefix();
    let counter = CounterKey::new("plan", "calls");
    let quota = Some(rule(1_000_000, QuotaPeriod::Month));
    let records = || async {
        let mut raw = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(format!("{prefix}{{plan:calls}}"))
            .query_async(&mut raw)
            .await
            .unwrap();
        fields.into_iter().filter(|f| f.starts_with("hd:")).count()
    };
    {
        let gone = store_suite::store_at(&redis.url(), &prefix)
            .await
            .with_leases(LeaseConfig::default());
        gone.until_leasing().await;
        for _ in 0..10 {
            let decision = decide(&gone, &counter, None, quota, at(T0)).await;
            assert_eq!(decision.verdict, Verdict::Admitted);
        }
        gone.give_back_leases().await.unwrap();
    }
    assert_eq!(records().await, 1, "the gone replica's record");
    let other = store_suite::store_at(&redis.url(), &prefix).await;
    let next_day = at(T0) + jiff::SignedDuration::from_hours(24);
    let decision = decide(&other, &counter, None, quota, next_day).await;
    assert_eq!(decision.verdict, Verdict::Admitted);
    assert_eq!(records().await, 0, "cleared on the next day");
}

/// Tasks that decide one counter as fast as they can until stopped,
/// counting the requests admitted and those that failed (a refusal fails
/// the test: the quotas here are never reached).
#[cfg(feature = "redis")]
#[derive(Default)]
struct Deciders {
    admitted: Arc<std::sync::atomic::AtomicU64>,
    failed: Arc<std::sync::atomic::AtomicU64>,
    /// The first failure's error, for the test's message.
    first_error: Arc<std::sync::Mutex<Option<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[cfg(feature = "redis")]
impl Deciders {
    /// `tasks` more, deciding `counter` on `store` under `quota`.
    fn spawn(
        &mut self,
        store: &tower_usage_plans::store::RedisStore,
        counter: &tower_usage_plans::store::CounterKey,
        quota: tower_usage_plans::store::QuotaRule,
        tasks: usize,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        use tower_usage_plans::store::{CounterStore, DecisionRequest, Verdict};
        for _ in 0..tasks {
            let (store, counter) = (store.clone(), counter.clone());
            let (admitted, failed) = (self.admitted.clone(), self.failed.clone());
            let (stop, first_error) = (self.stop.clone(), self.first_error.clone());
            self.tasks.push(tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    let request = DecisionRequest {
                        counter: &counter,
                        throttle: None,
                        quota: Some(quota),
                        now: jiff::Timestamp::now().into(),
                    };
                    match store.decide(&request).await {
                        Ok(decision) if decision.verdict == Verdict::Admitted => {
                            admitted.fetch_add(1, Relaxed);
                        }
                        Ok(decision) => panic!("refused below the quota: {decision:?}"),
                        Err(e) => {
                            failed.fetch_add(1, Relaxed);
                            first_error.lock().unwrap().get_or_insert(e.to_string());
                        }
                    }
                }
            }));
        }
    }

    /// Returns once `more` requests more than now were admitted.
    async fn until_admitted(&self, more: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let target = self.admitted.load(Relaxed) + more;
        while self.admitted.load(Relaxed) < target {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Stops every task: how many requests were admitted, and how many
    /// failed (with the first failure's error).
    async fn stop(self) -> (u64, u64, String) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stop.store(true, Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let first_error = self.first_error.lock().unwrap().take().unwrap_or_default();
        (
            self.admitted.load(Relaxed),
            self.failed.load(Relaxed),
            first_error,
        )
    }
}

/// UpdateUsage `add` of a negative amount that reaches into the units out
/// on leases, while a replica spends them: the requests admitted before
/// the call began and those begun after it returned add up to at most the
/// quota less that amount (requests during the call may go either way).
/// (The leased units counted as remaining, though the replica had spent
/// some without telling Redis yet: 1,000-8,000 too many.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_negative_add_into_leased_units_admits_none_too_many() {
    support::day::clear_of_midnight();
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::Duration;
    use store_suite::rule;
    use support::redis_server::Redis;
    use tower_usage_plans::store::{CounterKey, CounterStore, DecisionRequest, Verdict};
    use tower_usage_plans::QuotaPeriod;

    const QUOTA: u64 = 40_000;
    const LESS: i64 = 33_000;
    // Before the call, during it, after it.
    const BEFORE: u8 = 0;
    const AFTER: u8 = 2;
    let redis = Redis::start();
    let store = leasing_store(&redis.url(), &unique_prefix()).await;
    let counter = CounterKey::new("plan", "added");
    let quota = rule(QUOTA, QuotaPeriod::Day);
    let phase = Arc::new(AtomicU8::new(BEFORE));
    let [admitted, before, after] = [(); 3].map(|()| Arc::new(AtomicU64::new(0)));
    let spent = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, counter, phase, spent) =
            (store.clone(), counter.clone(), phase.clone(), spent.clone());
        let (admitted, before, after) = (admitted.clone(), before.clone(), after.clone());
        tasks.push(tokio::spawn(async move {
            let mut refused = 0;
            while refused < 200 {
                let request = DecisionRequest {
                    counter: &counter,
                    throttle: None,
                    quota: Some(quota),
                    now: jiff::Timestamp::now().into(),
                };
                // A few thousand requests a second, as through a gateway:
                // leases of thousands of units, reported every 50 ms.
                tokio::time::sleep(Duration::from_micros(500)).await;
                let began = phase.load(SeqCst);
                let verdict = store.decide(&request).await.unwrap().verdict;
                let ended = phase.load(SeqCst);
                if verdict == Verdict::Admitted {
                    admitted.fetch_add(1, SeqCst);
                    if ended == BEFORE {
                        before.fetch_add(1, SeqCst);
                    } else if began == AFTER {
                        after.fetch_add(1, SeqCst);
                    }
                } else {
                    refused += 1;
                    spent.store(true, SeqCst);
                }
            }
        }));
    }
    // What the gateway does every 200 ms: reports and expired leases go back.
    let upkeep = {
        let (store, spent) = (store.clone(), spent.clone());
        tokio::spawn(async move {
            while !spent.load(SeqCst) {
                let _ = store.give_back_expired_leases().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    while admitted.load(SeqCst) < 5_000 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    phase.store(1, SeqCst);
    let answer = store
        .add_remaining(&counter, &quota, jiff::Timestamp::now(), -LESS)
        .await
        .unwrap();
    phase.store(AFTER, SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    upkeep.await.unwrap();
    let (before, after) = (before.load(SeqCst), after.load(SeqCst));
    // Every lease back: what they did not spend is remaining again, so
    // that nothing is lost either.
    store.give_back_leases().await.unwrap();
    let admitted = admitted.load(SeqCst);
    let [used, remaining] = today_usage(&store, &counter, &quota).await;
    assert!(
        before < QUOTA - LESS as u64,
        "{before} admitted before the call: the test would prove nothing"
    );
    assert!(
        before + after <= QUOTA - LESS as u64,
        "{before} admitted before the call and {after} after it, of {}: the add answered {answer:?}",
        QUOTA - LESS as u64
    );
    assert_eq!(
        (used, remaining),
        (admitted, QUOTA - LESS as u64 - admitted),
        "GetUsage after {admitted} admitted"
    );
}

/// A replica killed while it holds a lease (as by `kill -9`: it never
/// gives it back or reports it), then Redis losing its data: what the dead
/// replica may have admitted (the units Redis kept when it reclaimed its
/// lease) is put back with the other replica's copy, not admitted again.
/// (The copies counted `used` less every leased unit, kept ones included:
/// 59-313 over 50,000 in black-box runs, 1,018 of 1,000 here.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_a_dead_replica_may_have_admitted_survives_a_loss() {
    a_replica_dies_then_redis_loses_its_data(true).await;
}

/// As above, Redis losing its data before the dead replica's leases are
/// reclaimed (within their lifetime and grace of the kill, or while Redis
/// is down): their units are out on its leases, in no copy. The live
/// replica heard what the other holders' leases held (its lease's answer)
/// and, putting the counter back first, counts it as used: what the dead
/// one admitted unreported is not admitted again. (Before: 1,018 of 1,000.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_a_dead_replica_admitted_before_its_leases_were_reclaimed_survives_a_loss() {
    a_replica_dies_then_redis_loses_its_data(false).await;
}

/// One replica admits 300 from its leases and dies; the other takes a
/// lease (whose answer says what the dead one's hold), then, if
/// `reclaimed`, decides past the dead one's leases' expiry and grace (Redis
/// reclaims them). Redis loses its data; the live replica puts the counter
/// back and decides on: no more than the quota is admitted in all.
#[cfg(feature = "redis")]
async fn a_replica_dies_then_redis_loses_its_data(reclaimed: bool) {
    support::day::clear_of_midnight();
    use store_suite::{decide, rule};
    use tower_usage_plans::store::{CounterKey, Decision, Verdict};
    use tower_usage_plans::QuotaPeriod::Day;

    const QUOTA: u64 = 1_000;
    let (redis, live, dead) = two_leasing_replicas().await;
    let counter = CounterKey::new("plan", "dead");
    let quota = Some(rule(QUOTA, Day));
    let admitted = |d: &Decision| u64::from(d.verdict == Verdict::Admitted);
    // The dying replica's lease grows with its rate (all at one instant);
    // what it admits from its last lease it never reports.
    let now = jiff::Timestamp::now();
    let mut total = 0;
    for _ in 0..300 {
        total += admitted(&decide(&dead, &counter, None, quota, now).await);
    }
    assert_eq!(total, 300);
    total += admitted(&decide(&live, &counter, None, quota, now).await);
    drop(dead);
    // Past its lease's expiry and grace by the live replica's requests:
    // Redis reclaims it, keeping what it may have admitted.
    let later = match reclaimed {
        true => now + jiff::SignedDuration::from_secs(3),
        false => now,
    };
    total += admitted(&decide(&live, &counter, None, quota, later).await);
    flushall(&redis).await;
    // The loss is found here, or first by the report of the live
    // replica's lease (`false` here, 3 runs in 100 under a CPU hog): the
    // counter is put back before the next decision either way.
    live.recover_if_emptied().await.unwrap();
    for _ in 0..2 * QUOTA {
        total += admitted(&decide(&live, &counter, None, quota, later).await);
    }
    live.give_back_leases().await.unwrap();
    assert!(total <= QUOTA, "{total} admitted of {QUOTA}");
}

/// Both replicas alive when Redis loses its data: the first to put the
/// counter back counts the other's leased units as used (it cannot tell a
/// live holder from a dead one), and the other, putting it back too, takes
/// them off again. The quota then admits exactly its limit. (Left counted:
/// 884 of 1,000.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_holder_putting_a_counter_back_takes_off_what_was_counted_for_it() {
    use store_suite::rule;
    use tower_usage_plans::store::CounterKey;
    use tower_usage_plans::QuotaPeriod::Day;

    const QUOTA: u64 = 1_000;
    let (redis, first, second) = two_leasing_replicas().await;
    let counter = CounterKey::new("plan", "both-alive");
    let quota = Some(rule(QUOTA, Day));
    // Both hold leases; the second's answers say what the first's hold.
    let mut admitted = admit_n(&first, &counter, quota, 100).await;
    admitted += admit_n(&second, &counter, quota, 100).await;
    flushall(&redis).await;
    // The second puts it back first (the first may then be told on the
    // channel, or find it at its next call).
    assert!(
        second.recover_if_emptied().await.unwrap(),
        "the loss is found"
    );
    first.recover_if_emptied().await.unwrap();
    admitted += admit_n(&first, &counter, quota, 2 * QUOTA).await;
    admitted += admit_n(&second, &counter, quota, 2 * QUOTA).await;
    assert_eq!(admitted, QUOTA);
}

/// UpdateUsage (`replace /remaining`) made after Redis lost its data and
/// before any replica put back what it saw: it is made on what is put
/// back, and exactly the remaining it set is admitted, on every replica.
/// (Made on the emptied counter, it answered `[0, 10]`, and GetUsage read
/// `[110, 0]` after 210 admitted: the copies put back after it were merged
/// into a counter that had started anew.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_usage_made_before_a_loss_is_put_back_sets_what_it_says() {
    use store_suite::rule;
    use tower_usage_plans::store::{CounterKey, CounterStore};
    use tower_usage_plans::QuotaPeriod::Day;

    let (redis, first, second) = two_replicas_on(support::redis_server::Redis::start()).await;
    let (first, second) = (&first, &second);
    let counter = CounterKey::new("plan", "updated-while-lost");
    let quota = rule(1_000, Day);
    admit_n(first, &counter, Some(quota), 100).await;
    admit_n(second, &counter, Some(quota), 100).await;
    flushall(&redis).await;
    let answer = first
        .set_remaining(&counter, &quota, jiff::Timestamp::now(), 10)
        .await
        .unwrap();
    assert_eq!(
        answer,
        [200, 10],
        "UpdateUsage's answer: today's used count put back"
    );
    let mut admitted = admit_n(second, &counter, Some(quota), 5).await;
    admitted += admit_n(first, &counter, Some(quota), 100).await;
    admitted += admit_n(second, &counter, Some(quota), 100).await;
    assert_eq!(admitted, 10);
    assert_eq!(today_usage(second, &counter, &quota).await, [210, 0]);
}

/// A key taken out of its plan after Redis lost its data and before any
/// replica put back what it saw: its count goes with what is put back, and
/// added back, the key starts from its full quota. (Made on the emptied
/// counter, the other replica's copy put back after it brought the old
/// count back: `[201, 799]` after one more.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_out_of_its_plan_before_a_loss_is_put_back_starts_anew() {
    use store_suite::rule;
    use tower_usage_plans::store::{CounterKey, CounterStore};
    use tower_usage_plans::QuotaPeriod::Day;

    let (redis, first, second) = two_replicas_on(support::redis_server::Redis::start()).await;
    let counter = CounterKey::new("plan", "unplanned-while-lost");
    let quota = rule(1_000, Day);
    admit_n(&first, &counter, Some(quota), 100).await;
    admit_n(&second, &counter, Some(quota), 100).await;
    flushall(&redis).await;
    first.forget(&counter).await.unwrap();
    admit_n(&second, &counter, Some(quota), 1).await;
    assert_eq!(today_usage(&first, &counter, &quota).await, [1, 999]);
}

/// GetUsage after Redis lost its data: today's used count is put back from
/// the replicas' copies with the counter, so used and remaining still add
/// up to the quota. (Before: used read only what was admitted since,
/// [[5, 395]] after 600 of 1,000 and 5 more.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn todays_used_count_survives_redis_losing_its_data() {
    use store_suite::rule;
    use tower_usage_plans::store::CounterKey;
    use tower_usage_plans::QuotaPeriod::Day;

    const QUOTA: u64 = 1_000;
    let (redis, first, second) = two_leasing_replicas().await;
    let counter = CounterKey::new("plan", "used-today");
    let rule = rule(QUOTA, Day);
    let quota = Some(rule);
    let mut admitted = 0;
    for _ in 0..3 {
        admitted += admit_n(&first, &counter, quota, 100).await;
        admitted += admit_n(&second, &counter, quota, 100).await;
        // The gateway's 200 ms round: what leases spent is reported.
        for store in [&first, &second] {
            store.give_back_expired_leases().await.unwrap();
        }
    }
    assert_eq!(admitted, 600);
    flushall(&redis).await;
    assert!(
        second.recover_if_emptied().await.unwrap(),
        "the loss is found"
    );
    first.recover_if_emptied().await.unwrap();
    admitted += admit_n(&first, &counter, quota, 5).await;
    for store in [&first, &second] {
        store.give_back_leases().await.unwrap();
    }
    assert_eq!(
        today_usage(&first, &counter, &rule).await,
        [admitted, QUOTA - admitted]
    );
}

/// UpdateUsage's answer while both replicas hold leases: today's used
/// count includes what their leases admitted and had not reported yet
/// (each replica gives its revoked leases back, and reports what its live
/// ones spent, before it acknowledges). (Before: `[565, 10]` after 600
/// admitted from leases, and an `add`, which revokes nothing, answered
/// what the last 200 ms round had reported; GetUsage read it right only
/// after the next round.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_usage_answers_what_leases_admitted() {
    use store_suite::rule;
    use tower_usage_plans::store::{CounterKey, CounterStore};
    use tower_usage_plans::QuotaPeriod::Day;

    let (_redis, first, second) = two_leasing_replicas().await;
    let counter = CounterKey::new("plan", "updated-under-leases");
    let quota = rule(1_000, Day);
    let mut admitted = admit_n(&first, &counter, Some(quota), 300).await;
    admitted += admit_n(&second, &counter, Some(quota), 300).await;
    assert_eq!(admitted, 600);
    let answer = second
        .add_remaining(&counter, &quota, jiff::Timestamp::now(), 5)
        .await
        .unwrap();
    assert_eq!(answer, [600, 405], "an add's answer");
    admitted += admit_n(&first, &counter, Some(quota), 100).await;
    admitted += admit_n(&second, &counter, Some(quota), 100).await;
    assert_eq!(admitted, 800);
    let answer = first
        .set_remaining(&counter, &quota, jiff::Timestamp::now(), 10)
        .await
        .unwrap();
    assert_eq!(answer, [800, 10], "a replace's answer");
    assert_eq!(today_usage(&second, &counter, &quota).await, [800, 10]);
}

/// GetUsage after a replica is gone and Redis lost its data: today's used
/// count keeps what the gone replica admitted and reported, which the
/// other replica read in its rounds (it never decided the key). (Before:
/// [[0, 0]] after 10 of 10 admitted through the replica now gone; found by
/// a black-box pass.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn todays_used_count_of_a_gone_replica_survives_redis_losing_its_data() {
    support::day::clear_of_midnight();
    use store_suite::rule;
    use tower_usage_plans::store::CounterKey;
    use tower_usage_plans::QuotaPeriod::Day;

    const QUOTA: u64 = 10;
    let (redis, first, second) = two_leasing_replicas().await;
    let counter = CounterKey::new("plan", "gone-today");
    let rule = rule(QUOTA, Day);
    assert_eq!(admit_n(&first, &counter, Some(rule), QUOTA).await, QUOTA);
    // Stopped as the gateway stops: everything reported and given back.
    first.give_back_leases().await.unwrap();
    drop(first);
    // The other replica's round (the gateway's, every 200 ms) reads the
    // counter.
    second.recover_if_emptied().await.unwrap();
    flushall(&redis).await;
    assert!(
        second.recover_if_emptied().await.unwrap(),
        "the loss is found"
    );
    assert_eq!(today_usage(&second, &counter, &rule).await, [QUOTA, 0]);
}

/// Two leasing replicas on a Redis of their own, each knowing its marker.
#[cfg(feature = "redis")]
async fn two_leasing_replicas() -> (
    support::redis_server::Redis,
    tower_usage_plans::store::RedisStore,
    tower_usage_plans::store::RedisStore,
) {
    let redis = support::redis_server::Redis::start();
    let prefix = unique_prefix();
    let (first, second) = (
        leasing_store(&redis.url(), &prefix).await,
        leasing_store(&redis.url(), &prefix).await,
    );
    for store in [&first, &second] {
        store.recover_if_emptied().await.unwrap();
    }
    (redis, first, second)
}

/// Redis loses all its data.
#[cfg(feature = "redis")]
async fn flushall(redis: &support::redis_server::Redis) {
    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
}

/// A replica's store on `url` under `prefix`, leasing (5 s a call).
#[cfg(feature = "redis")]
async fn leasing_store(url: &str, prefix: &str) -> tower_usage_plans::store::RedisStore {
    use tower_usage_plans::store::{LeaseConfig, RedisStore};
    let store = RedisStore::connect(url)
        .await
        .unwrap()
        .with_prefix(prefix.to_owned())
        .with_timeout(std::time::Duration::from_secs(5))
        .with_leases(LeaseConfig::default());
    store.until_leasing().await;
    store
}

/// A store on `redis` under `prefix` that waits 100 ms for Redis (the
/// stall tests pause Redis longer).
#[cfg(feature = "redis")]
async fn impatient_store(
    redis: &support::redis_server::Redis,
    prefix: &str,
) -> tower_usage_plans::store::RedisStore {
    tower_usage_plans::store::RedisStore::connect(&redis.url())
        .await
        .unwrap()
        .with_prefix(prefix)
        .with_timeout(std::time::Duration::from_millis(100))
}

/// `[used, remaining]` of `counter` today, as GetUsage reads it.
#[cfg(feature = "redis")]
async fn today_usage(
    store: &tower_usage_plans::store::RedisStore,
    counter: &tower_usage_plans::store::CounterKey,
    quota: &tower_usage_plans::store::QuotaRule,
) -> [u64; 2] {
    use tower_usage_plans::store::CounterStore;
    let now = jiff::Timestamp::now();
    let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    store
        .usage(counter, Some(quota), now, today, today)
        .await
        .unwrap()[0]
}

/// A round's reports go to Redis together on one server: one script call
/// carries up to 32 keys' reports (a report alone cost Redis a whole
/// call), and GetUsage then counts every request each key admitted.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rounds_reports_go_to_redis_together() {
    use std::time::Duration;
    use store_suite::{decide, rule};
    use support::redis_server::Redis;
    use tower_usage_plans::store::{CounterKey, CounterStore, LeaseConfig, Verdict};
    use tower_usage_plans::QuotaPeriod;

    const KEYS: usize = 40;
    const REQUESTS: u64 = 20;
    const QUOTA: u64 = 1_000_000;
    let redis = Redis::start();
    let prefix = unique_prefix();
    // Leases that outlive the test: the round reports, it gives nothing back.
    let config = LeaseConfig {
        ttl: Duration::from_secs(60),
        ..LeaseConfig::default()
    };
    let store = store_suite::store_at(&redis.url(), &prefix)
        .await
        .with_leases(config);
    store.until_leasing().await;
    store.recover_if_emptied().await.unwrap();
    let quota = rule(QUOTA, QuotaPeriod::Day);
    let now = jiff::Timestamp::now;
    let counters: Vec<CounterKey> = (0..KEYS)
        .map(|i| CounterKey::new("plan", &format!("key-{i}")))
        .collect();
    for counter in &counters {
        for _ in 0..REQUESTS {
            let decision = decide(&store, counter, None, Some(quota), now()).await;
            assert_eq!(decision.verdict, Verdict::Admitted);
        }
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut connection)
        .await
        .unwrap();
    store.give_back_expired_leases().await.unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await
        .unwrap();
    let calls: usize = stats
        .split("cmdstat_evalsha:calls=")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap());
    assert!(
        (1..=KEYS.div_ceil(32)).contains(&calls),
        "{KEYS} keys' reports in {calls} script calls"
    );
    let today = now().to_zoned(jiff::tz::TimeZone::UTC).date();
    for counter in &counters {
        let days = store
            .usage(counter, Some(&quota), now(), today, today)
            .await
            .unwrap();
        assert_eq!(days, vec![[REQUESTS, QUOTA - REQUESTS]], "{counter:?}");
    }
}

/// Another replica's message to put the counters back arrives as Redis
/// drops every connection with its data (a restart): this replica's first
/// call, on its dropped connection, fails. It tries again on a new one,
/// and its share is back by the time the sender goes on. (It did not
/// acknowledge: the sender waited its whole second, then set the marker
/// without that share, and decided on a count that lacked it.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_put_counters_back_that_comes_with_a_restart_is_acted_on() {
    use store_suite::{decide, rule};
    use support::redis_server::Redis;
    use tower_usage_plans::store::{CounterKey, Verdict};
    use tower_usage_plans::QuotaPeriod;

    let redis = Redis::start();
    let prefix = unique_prefix();
    let (a, b) = (
        store_suite::store_at(&redis.url(), &prefix).await,
        store_suite::store_at(&redis.url(), &prefix).await,
    );
    for store in [&a, &b] {
        store.recover_if_emptied().await.unwrap();
    }
    let counter = CounterKey::new("plan", "restarted");
    let quota = Some(rule(100, QuotaPeriod::Day));
    for _ in 0..5 {
        let decision = decide(&b, &counter, None, quota, jiff::Timestamp::now()).await;
        assert_eq!(decision.verdict, Verdict::Admitted);
    }
    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    restart_empty(&mut raw).await;
    // A finds the loss (its own first call may fail on its dropped
    // connection, as the gateway's next check would find it again).
    let mut tries = 0;
    while !a.recover_if_emptied().await.unwrap_or(false) {
        tries += 1;
        assert!(tries < 3, "A never found the loss");
    }
    let used: Option<u64> = redis::cmd("HGET")
        .arg(format!("{prefix}{{plan:restarted}}"))
        .arg("used")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(used, Some(5), "B's five are back once A went on");
}

/// Empties Redis and drops every connection (but `raw`'s own and the
/// replicas' subscriptions) in the same step, as a restart without
/// persistence does.
#[cfg(feature = "redis")]
async fn restart_empty(raw: &mut redis::aio::MultiplexedConnection) {
    let _: redis::Value = redis::pipe()
        .atomic()
        .cmd("FLUSHALL")
        .cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(raw)
        .await
        .unwrap();
}

/// Decisions of many keys made at once go to Redis together (a few script
/// calls, each deciding many), and stay exact: each key's quota of 3 admits
/// 3 of its 5 requests (its bucket of 4 tokens would take a fourth), and
/// GetUsage counts what was admitted.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_made_at_once_go_together_and_stay_exact() {
    use store_suite::rule;
    use support::redis_server::Redis;
    use tower_usage_plans::store::{CounterKey, Verdict};
    use tower_usage_plans::{QuotaPeriod, Throttle};

    let redis = Redis::start();
    let store = store_suite::store_at(&redis.url(), &unique_prefix()).await;
    let rule = rule(3, QuotaPeriod::Day);
    let throttle = Some(Throttle::new(0.001, 4).unwrap());
    let counters: Vec<_> = (0..40)
        .map(|i| CounterKey::new("plan", &format!("together-{i}")))
        .collect();
    let now = jiff::Timestamp::now();
    // Each counter's first decision alone: it starts the counter (a new
    // period and day, which the script's common decision leaves to the
    // call alone).
    for counter in &counters {
        let decision = store_suite::decide(&store, counter, throttle, Some(rule), now).await;
        assert_eq!(decision.verdict, Verdict::Admitted);
    }
    let before = redis.script_calls().await;
    let verdicts = futures_util::future::join_all(
        (0..4)
            .flat_map(|_| &counters)
            .map(|counter| store_suite::decide(&store, counter, throttle, Some(rule), now)),
    )
    .await;
    let calls = redis.script_calls().await - before;
    assert!(calls < 40, "160 decisions in {calls} script calls");
    for counter in &counters {
        assert_eq!(today_usage(&store, counter, &rule).await, [3, 0]);
    }
    let count = |verdict| verdicts.iter().filter(|d| d.verdict == verdict).count();
    assert_eq!(
        (count(Verdict::Admitted), count(Verdict::QuotaExceeded)),
        (80, 80),
        "per key: 2 more admitted, then the quota spent"
    );
}
