//! Gateway replicas sharing one real Redis: exact quotas across replicas,
//! admin changes on one enforced by the other, and the failure policies
//! while Redis is down. Each test runs its own `redis-server`.
#![cfg(all(feature = "gateway", feature = "redis"))]

mod support;
use eventually::eventually;
use support::{aws, eventually, redis_server, usage};
use usage::usage_today;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis_server::Redis;
use tower_usage_plans::gateway::{FilePlan, Gateway, GatewayConfig, Stage};
use tower_usage_plans::{NewApiKey, NewUsagePlan, Quota, QuotaPeriod, StoreFailure};

const KEY: &str = "replica-key-0123456789abcdef";

fn config(redis: &str, quota: u64, failure: StoreFailure) -> GatewayConfig {
    config_with(redis, quota, failure, false)
}

fn config_with(
    redis: &str,
    quota: u64,
    failure: StoreFailure,
    redis_leases: bool,
) -> GatewayConfig {
    GatewayConfig {
        redis_leases,
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        redis: Some(redis.to_owned()),
        redis_failure: failure,
        keys: vec![NewApiKey::new("replica").with_value(KEY).with_enabled(true)],
        plans: vec![FilePlan {
            plan: NewUsagePlan::new("shared").with_quota(Quota::new(quota, QuotaPeriod::Day)),
            keys: vec!["replica".into()],
        }],
        ..GatewayConfig::default()
    }
}

async fn status(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>>,
    addr: SocketAddr,
) -> u16 {
    let request = http::Request::get(format!("http://{addr}/x"))
        .header("x-api-key", KEY)
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    response.into_body().collect().await.unwrap();
    status
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// 32 clients over two replicas, 900 requests; how many were admitted.
async fn admitted_across_two_replicas(a: &Gateway, b: &Gateway) -> u64 {
    let client = client();
    let next = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..32)
        .map(|i| {
            let addr = if i % 2 == 0 {
                a.data_addr()
            } else {
                b.data_addr()
            };
            let (client, next, admitted) = (client.clone(), next.clone(), admitted.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < 900 {
                    match status(&client, addr).await {
                        200 => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {}
                        other => panic!("unexpected {other}"),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leased_replicas_admit_exactly_the_quota_and_honour_update_usage() {
    let redis = Redis::start();
    let a = Gateway::start(config_with(&redis.url(), 300, StoreFailure::FailOpen, true))
        .await
        .unwrap();
    let b = Gateway::start(config_with(&redis.url(), 300, StoreFailure::FailOpen, true))
        .await
        .unwrap();
    assert_eq!(
        admitted_across_two_replicas(&a, &b).await,
        300,
        "exact with leases too"
    );

    // Leases out on both replicas, then UpdateUsage sets 10: no more than 10
    // are admitted across both.
    let plan = a.plans().usage_plans()[0].clone();
    let key_id = a.plans().api_key_by_value(KEY).unwrap().id;
    a.plans()
        .set_remaining(&plan.id, &key_id, 200)
        .await
        .unwrap();
    let client = client();
    for _ in 0..20 {
        assert_eq!(status(&client, a.data_addr()).await, 200);
        assert_eq!(status(&client, b.data_addr()).await, 200);
    }
    b.plans()
        .set_remaining(&plan.id, &key_id, 10)
        .await
        .unwrap();
    let mut after = 0;
    for i in 0..100 {
        let addr = if i % 2 == 0 {
            a.data_addr()
        } else {
            b.data_addr()
        };
        after += u32::from(status(&client, addr).await == 200);
    }
    assert!(after <= 10, "UpdateUsage to 10 admitted {after}");
    // Given back on shutdown: the shared counter holds only what was admitted.
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let c = Gateway::start(config(&redis.url(), 300, StoreFailure::FailOpen))
        .await
        .unwrap();
    assert_eq!(
        usage_today(c.plans(), &plan.id, &key_id).await[0],
        300 + 40 + u64::from(after),
        "used counts admitted requests only"
    );
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_gives_its_expired_lease_back() {
    let redis = Redis::start();
    let a = Gateway::start(config_with(&redis.url(), 300, StoreFailure::FailOpen, true))
        .await
        .unwrap();
    let plan = a.plans().usage_plans()[0].clone();
    let key_id = a.plans().api_key_by_value(KEY).unwrap().id;
    assert_eq!(status(&client(), a.data_addr()).await, 200);
    // GetUsage counts the one admitted request, never the slice leased
    // with it.
    assert_eq!(usage_today(a.plans(), &plan.id, &key_id).await, [1, 299]);
    let raw = raw_connection(&redis).await;
    let hash = format!("tup:{{{}:{}}}", plan.id, key_id);
    let leased = move || {
        let command = redis::cmd("HGET").arg(&hash).arg("leased").clone();
        let mut raw = raw.clone();
        async move {
            let value: Option<u64> = command.query_async(&mut raw).await.unwrap();
            value.unwrap_or(0)
        }
    };
    let first = leased().await;
    assert!(first > 0, "the first request leased a slice ({first})");
    // No more requests: the lease expires (1 s) and the gateway gives it
    // back on its own, so the shared counter holds no reservation.
    eventually("the expired lease to be given back", || async {
        (leased().await == 0).then_some(())
    })
    .await;
    assert_eq!(usage_today(a.plans(), &plan.id, &key_id).await, [1, 299]);
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_admit_exactly_the_quota_and_share_admin_changes() {
    support::day::clear_of_midnight();
    let redis = Redis::start();
    let a = Gateway::start(config(&redis.url(), 300, StoreFailure::FailOpen))
        .await
        .unwrap();
    let b = Gateway::start(config(&redis.url(), 300, StoreFailure::FailOpen))
        .await
        .unwrap();
    let plan = a.plans().usage_plans()[0].clone();
    assert_eq!(
        b.plans().usage_plans(),
        vec![plan.clone()],
        "B joined A's registry, created nothing"
    );
    let key_id = a.plans().api_key_by_value(KEY).unwrap().id;

    assert_eq!(
        admitted_across_two_replicas(&a, &b).await,
        300,
        "exactly the quota across both replicas"
    );
    let client = client();

    // UpdateUsage through A is enforced by B at once: counters live in Redis.
    a.plans().set_remaining(&plan.id, &key_id, 2).await.unwrap();
    assert_eq!(status(&client, b.data_addr()).await, 200);
    assert_eq!(status(&client, b.data_addr()).await, 200);
    assert_eq!(status(&client, b.data_addr()).await, 429);
    assert_eq!(usage_today(b.plans(), &plan.id, &key_id).await, [302, 0]);

    // A registry change on A reaches B within the sync interval.
    a.plans()
        .update_api_key(&key_id, |k| {
            k.enabled = false;
            Ok(())
        })
        .unwrap();
    let started = Instant::now();
    while status(&client, b.data_addr()).await != 403 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B never saw the key disabled"
        );
        tokio::task::yield_now().await;
    }
    println!(
        "key disabled on A was enforced by B after {:?}",
        started.elapsed()
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_or_closed_and_enforcement_resumes() {
    let mut redis = Redis::start();
    let port = redis.port;
    let open = Gateway::start(config(&redis.url(), 2, StoreFailure::FailOpen))
        .await
        .unwrap();
    let closed = Gateway::start(config(&redis.url(), 2, StoreFailure::FailClosed))
        .await
        .unwrap();
    let client = client();
    assert_eq!(status(&client, open.data_addr()).await, 200);
    assert_eq!(status(&client, closed.data_addr()).await, 200);
    assert_eq!(
        status(&client, open.data_addr()).await,
        429,
        "the shared quota of 2 is spent"
    );

    redis.stop();
    // The open replica remembers Redis's refusal for up to a second (or
    // until it sees its subscription go): then it fails open.
    eventually("fail-open to admit while Redis is down", || async {
        (status(&client, open.data_addr()).await == 200).then_some(())
    })
    .await;
    assert_eq!(
        status(&client, closed.data_addr()).await,
        503,
        "fail-closed answers 503"
    );

    // A new, empty Redis on the same port (a restart without persistence):
    // the replicas put back what they saw, so the spent quota stays spent.
    let _redis = Redis::start_on(port);
    let first = eventually("the fail-closed replica to reconnect", || async {
        Some(status(&client, closed.data_addr()).await).filter(|&status| status != 503)
    })
    .await;
    assert_eq!(first, 429, "the spent quota survived the empty Redis");
    assert_eq!(
        status(&client, open.data_addr()).await,
        429,
        "enforcement resumed"
    );
    open.shutdown().await.unwrap();
    closed.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_while_redis_is_down_says_so_and_does_not_hang() {
    let mut redis = Redis::start();
    let gateway = Gateway::start(config_with(&redis.url(), 100, StoreFailure::FailOpen, true))
        .await
        .unwrap();
    assert_eq!(status(&client(), gateway.data_addr()).await, 200);
    redis.stop();
    // The registry cannot be synced: an error naming Redis, not a hang (a
    // Redis round gives up after 3 s) or a silent success.
    let stopped = tokio::time::timeout(Duration::from_secs(30), gateway.shutdown())
        .await
        .expect("shutdown hung on the unreachable Redis");
    let error = stopped.unwrap_err();
    assert!(
        matches!(
            error,
            tower_usage_plans::gateway::GatewayError::Redis { .. }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("Redis"), "{error}");
}

/// `scripts/test.sh` starts a 3-node Redis Cluster and sets `REDIS_CLUSTER_URL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_redis_cluster() {
    let url = std::env::var("REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| "redis+cluster://127.0.0.1:6391".into());
    // The cluster outlives the test: names and values of this run only.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let value = format!("cluster-key-{run}");
    let config = || GatewayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        redis: Some(url.clone()),
        keys: vec![NewApiKey::new(format!("k{run}"))
            .with_value(&value)
            .with_enabled(true)],
        plans: vec![FilePlan {
            plan: NewUsagePlan::new(format!("cluster-{run}"))
                .with_quota(Quota::new(20, QuotaPeriod::Day)),
            keys: vec![format!("k{run}")],
        }],
        ..GatewayConfig::default()
    };
    let a = Gateway::start(config())
        .await
        .unwrap_or_else(|e| panic!("no Redis Cluster at {url}: {e}"));
    // A gateway starts without its Redis too, but is not ready then.
    assert!(a.is_ready(), "no Redis Cluster at {url}");
    let b = Gateway::start(config()).await.unwrap();
    let plan_name = format!("cluster-{run}");
    assert_eq!(
        b.plans()
            .usage_plans()
            .iter()
            .filter(|p| p.name == plan_name)
            .count(),
        1
    );
    let client = client();
    let mut admitted = 0;
    for i in 0..60 {
        let addr = if i % 2 == 0 {
            a.data_addr()
        } else {
            b.data_addr()
        };
        let request = http::Request::get(format!("http://{addr}/x"))
            .header("x-api-key", &value)
            .body(Empty::new())
            .unwrap();
        let response = client.request(request).await.unwrap();
        admitted += u32::from(response.status() == 200);
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(admitted, 20);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registry_changes_on_two_replicas_are_both_kept() {
    let redis = Redis::start();
    let a = Gateway::start(config(&redis.url(), 10, StoreFailure::FailOpen))
        .await
        .unwrap();
    let b = Gateway::start(config(&redis.url(), 10, StoreFailure::FailOpen))
        .await
        .unwrap();
    // Within one sync interval: neither has seen the other's key yet.
    let on_a = a
        .plans()
        .create_api_key(NewApiKey::new("made-on-a"))
        .unwrap();
    let on_b = b
        .plans()
        .create_api_key(NewApiKey::new("made-on-b"))
        .unwrap();
    let started = Instant::now();
    while [&a, &b]
        .iter()
        .any(|g| g.plans().api_key(&on_a.id).is_err() || g.plans().api_key(&on_b.id).is_err())
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a change was lost"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(a.plans().api_keys().len(), 3);
    assert_eq!(b.plans().api_keys().len(), 3);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// UpdateUsage to 0 while both replicas hold leases of the key: once the
/// call has returned, neither replica admits one more request — with
/// leases (they are revoked before the call returns) and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_usage_to_zero_stops_every_replica_at_once() {
    for leases in [true, false] {
        let redis = Redis::start();
        let (a, b, plan_id, key_id, client) = warm_pair(&redis, 1_000, leases).await;
        a.plans().set_remaining(&plan_id, &key_id, 0).await.unwrap();
        for i in 0..40 {
            let addr = [a.data_addr(), b.data_addr()][i % 2];
            assert_eq!(
                status(&client, addr).await,
                429,
                "request {i} admitted after UpdateUsage 0 (leases: {leases})"
            );
        }
        // What the revoked leases spent reaches GetUsage with their give-back.
        usage_becomes(&b, &plan_id, &key_id, [10, 0]).await;
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

/// GetUsage counts requests admitted, never units merely leased: after 10
/// of 1,000 it reads [10, 990] on either replica (leases report what they
/// spent every 200 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_usage_counts_admitted_requests_not_leased_units() {
    for leases in [true, false] {
        let redis = Redis::start();
        let (a, b, plan_id, key_id, _) = warm_pair(&redis, 1_000, leases).await;
        usage_becomes(&b, &plan_id, &key_id, [10, 990]).await;
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

/// Polls GetUsage on `gateway` until today reads `want` (10 s at most);
/// it must never count more than `want` admitted on the way.
async fn usage_becomes(gateway: &Gateway, plan_id: &str, key_id: &str, want: [u64; 2]) {
    eventually(&format!("GetUsage to read {want:?}"), || async {
        let seen = usage_today(gateway.plans(), plan_id, key_id).await;
        assert!(seen[0] <= want[0], "more than admitted: {seen:?}");
        (seen == want).then_some(())
    })
    .await;
}

/// A change made through one replica binds the other on its very next
/// request once the call has returned: a lowered throttle, then a disabled
/// key — with leases and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_through_one_replica_binds_the_other_on_its_next_request() {
    for leases in [true, false] {
        let redis = Redis::start();
        let (a, b, plan_id, key_id, client) = warm_pair(&redis, 1_000, leases).await;

        a.plans()
            .update_usage_plan(&plan_id, |plan| {
                plan.throttle = Some(tower_usage_plans::Throttle::new(0.001, 1).unwrap());
                Ok(())
            })
            .unwrap();
        a.plans().replicated().await.unwrap();
        let admitted = admitted_in_turn(&client, &[&b, &a], 10).await;
        assert!(
            admitted <= 1,
            "burst 1 admitted {admitted} of 10 (leases: {leases})"
        );

        a.plans()
            .update_api_key(&key_id, |key| {
                key.enabled = false;
                Ok(())
            })
            .unwrap();
        a.plans().replicated().await.unwrap();
        assert_eq!(
            status(&client, b.data_addr()).await,
            403,
            "B admitted a key A disabled (leases: {leases})"
        );
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

/// Redis loses its data mid-run (FLUSHALL, as a restart without
/// persistence would): a key whose quota was spent through one replica
/// stays spent on both, even on the first request to the other, which
/// never saw it; a key created afterwards works on both — with leases and
/// without.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_losing_its_data_resets_no_quota() {
    for leases in [true, false] {
        let redis = Redis::start();
        let start = || {
            Gateway::start(config_with(
                &redis.url(),
                100,
                StoreFailure::FailOpen,
                leases,
            ))
        };
        let a = start().await.unwrap();
        let b = start().await.unwrap();
        let client = client();
        // Spent through A alone: B never saw the counter.
        let mut admitted = 0;
        for _ in 0..110 {
            admitted += u32::from(status(&client, a.data_addr()).await == 200);
        }
        assert_eq!(admitted, 100, "leases: {leases}");

        flushall(&redis).await;
        for i in 0..10 {
            let addr = [b.data_addr(), a.data_addr()][i % 2];
            assert_eq!(
                status(&client, addr).await,
                429,
                "request {i} after FLUSHALL (leases: {leases})"
            );
        }
        // The registry is back too: a key created through A after the loss
        // is admitted by B as soon as the call returned.
        let plan = a.plans().usage_plans()[0].clone();
        let value = format!("after-the-loss-{leases}-0123456789");
        let fresh = a
            .plans()
            .create_api_key(
                NewApiKey::new("fresh")
                    .with_value(&value)
                    .with_enabled(true),
            )
            .unwrap();
        a.plans().add_key_to_plan(&plan.id, &fresh.id).unwrap();
        a.plans().replicated().await.unwrap();
        let request = http::Request::get(format!("http://{}/", b.data_addr()))
            .header("x-api-key", &value)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let answer = client.request(request).await.unwrap();
        assert_eq!(answer.status(), 200, "leases: {leases}");
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

/// With leases, the RateLimit header reports the shared bucket and quota
/// as of the last lease (with this replica's own unspent slice), not the
/// replica's slice alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_headers_report_the_shared_bucket_and_quota() {
    let redis = Redis::start();
    let mut config = config_with(&redis.url(), 1_000, StoreFailure::FailOpen, true);
    config.plans[0].plan = config.plans[0]
        .plan
        .clone()
        .with_throttle(tower_usage_plans::Throttle::new(0.001, 100).unwrap());
    let a = Gateway::start(config).await.unwrap();
    let client = client();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let request = http::Request::get(format!("http://{}/x", a.data_addr()))
            .header("x-api-key", KEY)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        seen.push(response.headers()["ratelimit"].to_str().unwrap().to_owned());
    }
    // Each request takes one token and one unit of the shared 100 and
    // 1,000; the first took a lease (16 tokens, 64 units), the others spent
    // from it.
    let wanted = [
        "\"throttle\";r=99;t=1000, \"quota\";r=999;t=",
        "\"throttle\";r=98;t=1000, \"quota\";r=998;t=",
        "\"throttle\";r=97;t=1000, \"quota\";r=997;t=",
    ];
    for (header, want) in seen.iter().zip(wanted) {
        assert!(header.starts_with(want), "{header:?}, expected {want:?}…");
    }
    a.shutdown().await.unwrap();
}

/// Replicas sharing a Redis serve one stage: one started with another
/// stage refuses to start, with a message naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_another_stage_refuses_to_start() {
    let redis = Redis::start();
    let a = Gateway::start(config(&redis.url(), 10, StoreFailure::FailOpen))
        .await
        .unwrap();
    let other = || {
        let mut other = config(&redis.url(), 10, StoreFailure::FailOpen);
        other.stage = Stage::new("other", "beta");
        other
    };
    let error = Gateway::start(other()).await.unwrap_err().to_string();
    assert!(
        error.contains("other:beta") && error.contains("gateway:prod"),
        "{error}"
    );
    // Redis loses its data: the running replica claims its stage again.
    let mut raw = raw_connection(&redis).await;
    let () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    let stage: String = eventually("the stage to be claimed again", || {
        let mut raw = raw.clone();
        async move {
            redis::cmd("HGET")
                .arg("tup:{registry}:meta")
                .arg("stage")
                .query_async::<Option<String>>(&mut raw)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(stage, "gateway:prod");
    assert!(Gateway::start(other()).await.is_err());
    a.shutdown().await.unwrap();
}

/// Two gateway replicas on `redis`, sharing one key in one plan of a daily
/// `quota`, each having admitted 5 requests (so each holds a lease, when
/// `leases`).
/// Replicas A and B, the plan's and the key's ids, and an HTTP client.
type Pair = (
    Gateway,
    Gateway,
    String,
    String,
    Client<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>>,
);

async fn warm_pair(redis: &Redis, quota: u64, leases: bool) -> Pair {
    let start = || {
        Gateway::start(config_with(
            &redis.url(),
            quota,
            StoreFailure::FailOpen,
            leases,
        ))
    };
    let a = start().await.unwrap();
    let b = start().await.unwrap();
    let plan_id = a.plans().usage_plans()[0].id.clone();
    let key_id = a.plans().api_key_by_value(KEY).unwrap().id;
    let client = client();
    for _ in 0..5 {
        assert_eq!(status(&client, a.data_addr()).await, 200);
        assert_eq!(status(&client, b.data_addr()).await, 200);
    }
    (a, b, plan_id, key_id, client)
}

/// UpdateUsage to 0 while clients keep both replicas busy (and leasing):
/// no request that starts after the call returned is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_usage_while_traffic_flows_binds_every_request_after_it() {
    for leases in [true, false] {
        let redis = Redis::start();
        let (a, b, plan_id, key_id, client) = warm_pair(&redis, 1_000_000, leases).await;
        let returned = Arc::new(std::sync::OnceLock::<Instant>::new());
        let late = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..6)
            .map(|w| {
                let addr = [a.data_addr(), b.data_addr()][w % 2];
                let (client, returned, late) = (client.clone(), returned.clone(), late.clone());
                tokio::spawn(async move {
                    // Until 200 requests after the call returned.
                    let mut after = 0;
                    while after < 200 {
                        let started = Instant::now();
                        let admitted = status(&client, addr).await == 200;
                        if let Some(at) = returned.get() {
                            if started > *at {
                                after += 1;
                                late.fetch_add(u64::from(admitted), Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        // Let the workers lease under load first.
        usage_becomes_at_least(&a, &plan_id, &key_id, 200).await;
        a.plans().set_remaining(&plan_id, &key_id, 0).await.unwrap();
        returned.set(Instant::now()).unwrap();
        for worker in workers {
            worker.await.unwrap();
        }
        assert_eq!(
            late.load(Ordering::Relaxed),
            0,
            "admitted after UpdateUsage 0 returned (leases: {leases})"
        );
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

/// Polls GetUsage on `gateway` until today's used count reaches `at_least`.
async fn usage_becomes_at_least(gateway: &Gateway, plan_id: &str, key_id: &str, at_least: u64) {
    eventually(&format!("traffic to reach {at_least}"), || async {
        (usage_today(gateway.plans(), plan_id, key_id).await[0] >= at_least).then_some(())
    })
    .await;
}

/// Keys created at the same time through two replicas (each call waiting
/// for the others to take it in) are all kept, on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creations_through_two_replicas_are_all_kept() {
    let redis = Redis::start();
    let (a, b, ..) = warm_pair(&redis, 1_000, false).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let gateway = [a.clone(), b.clone()][w % 2].clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..25 {
                    let key = gateway
                        .plans()
                        .create_api_key(NewApiKey::new(format!("w{w}-{i}")))
                        .unwrap();
                    gateway.plans().replicated().await.unwrap();
                    ids.push(key.id);
                }
                ids
            })
        })
        .collect();
    let mut created = Vec::new();
    for writer in writers {
        created.extend(writer.await.unwrap());
    }
    for (name, gateway) in [("A", &a), ("B", &b)] {
        let missing: Vec<_> = created
            .iter()
            .filter(|id| gateway.plans().api_key(id).is_err())
            .collect();
        assert!(missing.is_empty(), "{name} lost {missing:?}");
    }
}

/// A signed CreateUsagePlan of a plan named `name`.
fn create_plan(admin: &aws::Admin, name: &str) -> aws::Req {
    let body = format!(r#"{{"name":"{name}"}}"#);
    admin.signed(
        "POST",
        "/usageplans",
        Some("application/json"),
        body.as_bytes(),
    )
}

/// With Redis down, an admin change is refused with 503 and changes
/// nothing, so an SDK's retry of it (botocore retries 503s) cannot create a
/// plan twice; once Redis is back, the same call is made once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_change_refused_while_redis_is_down_changes_nothing() {
    let mut redis = Redis::start();
    let port = redis.port;
    let gateway = Gateway::start(config(&redis.url(), 2, StoreFailure::FailOpen))
        .await
        .unwrap();
    let env = aws::env_with(gateway.plans().clone()).await;
    let plans_before = gateway.plans().usage_plans().len();
    let create = || create_plan(&env.admin, "made-while-down");

    redis.stop();
    let refused = env.admin.send(create()).await;
    let message = aws::assert_error(&refused, 503, "ServiceUnavailableException");
    assert!(message.contains("nothing was changed"), "{message}");
    assert_eq!(
        refused.1["retry-after"], "1",
        "the SDKs' retry may come a second later"
    );
    assert_eq!(gateway.plans().usage_plans().len(), plans_before);

    let _redis = Redis::start_on(port);
    let made = eventually("the admin API to reach Redis again", || async {
        Some(env.admin.send(create()).await).filter(|(status, _, _)| status.as_u16() != 503)
    })
    .await;
    assert_eq!(made.0.as_u16(), 201, "{}", made.2);
    assert_eq!(gateway.plans().usage_plans().len(), plans_before + 1);
    gateway.shutdown().await.unwrap();
}

/// A gateway started before its Redis refuses admin changes with 503 and
/// makes none until it has joined the replicas: joining, its registry
/// becomes theirs, so a plan it made alone was acknowledged (201), then
/// lost on every replica. Once Redis is there, the same call is made, and
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_change_before_redis_is_first_reached_changes_nothing() {
    let port = redis_server::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    // Nothing listens on the port: the gateway starts anyway, not ready.
    let gateway = Gateway::start(config(&url, 2, StoreFailure::FailOpen))
        .await
        .unwrap();
    let env = aws::env_with(gateway.plans().clone()).await;
    let create = || create_plan(&env.admin, "made-before-redis");
    let named = || {
        gateway
            .plans()
            .usage_plans()
            .into_iter()
            .filter(|plan| plan.name == "made-before-redis")
            .count()
    };

    let refused = env.admin.send(create()).await;
    let message = aws::assert_error(&refused, 503, "ServiceUnavailableException");
    assert!(message.contains("nothing was changed"), "{message}");
    assert_eq!(named(), 0);

    let _redis = Redis::start_on(port);
    let made = eventually("the gateway to reach Redis", || async {
        Some(env.admin.send(create()).await).filter(|(status, _, _)| status.as_u16() != 503)
    })
    .await;
    assert_eq!(made.0.as_u16(), 201, "{}", made.2);
    assert_eq!(named(), 1, "made once, and kept");
    gateway.shutdown().await.unwrap();
}

/// Redis loses its data after two UpdateUsage calls, the replica that
/// restores first having seen only the older one: the newer allowance
/// still wins (it is of a later epoch), so a remaining count set to 3
/// admits 3 more, not the 500 the older call allowed — with leases and
/// without.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_latest_update_usage_survives_redis_losing_its_data() {
    for leases in [true, false] {
        let redis = Redis::start();
        let (a, b, plan_id, key_id, client) = warm_pair(&redis, 1_000, leases).await;
        a.plans()
            .set_remaining(&plan_id, &key_id, 500)
            .await
            .unwrap();
        // B decides under the older allowance (and remembers it) ...
        assert_eq!(status(&client, b.data_addr()).await, 200);
        a.plans().set_remaining(&plan_id, &key_id, 3).await.unwrap();
        // ... and A under the newer one.
        assert_eq!(status(&client, a.data_addr()).await, 200);

        flushall(&redis).await;
        // B notices first, so its older view is restored first.
        let admitted = admitted_in_turn(&client, &[&b, &a], 10).await;
        assert_eq!(admitted, 2, "2 of the 3 left (leases: {leases})");
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

/// Replicas started at the same moment on an empty Redis each create the
/// configured plan and key "if absent": they take turns, so the second
/// finds what the first created (one key, one plan) instead of creating
/// its own copy with another id, which made one of them exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_create_the_configured_plan_and_key_once() {
    for _ in 0..4 {
        let redis = Redis::start();
        let config = || config(&redis.url(), 10, StoreFailure::FailOpen);
        let (a, b) = tokio::join!(Gateway::start(config()), Gateway::start(config()));
        let (a, b) = (a.unwrap(), b.unwrap());
        for (name, gateway) in [("A", &a), ("B", &b)] {
            let plans = gateway.plans();
            assert_eq!(plans.api_keys().len(), 1, "{name}: {:?}", plans.api_keys());
            assert_eq!(plans.usage_plans().len(), 1, "{name}");
            let plan = &plans.usage_plans()[0];
            assert_eq!(plans.usage_plan_keys(&plan.id).unwrap().len(), 1, "{name}");
        }
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

/// Redis loses its data just as replica B restarts; A keeps running. The
/// new B finds no registry and no marker while A (older) is alive: it
/// waits for A to put them back rather than serve as if it were the first
/// replica, so it re-creates no configured key with a fresh quota, and
/// a spent key stays spent from B's very first request. With leases and
/// without.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_restarted_as_redis_loses_its_data_waits_for_the_others() {
    support::day::clear_of_midnight();
    for leases in [false, true] {
        let redis = Redis::start();
        let config = || config_with(&redis.url(), 3, StoreFailure::FailOpen, leases);
        let a = Gateway::start(config()).await.unwrap();
        let b = Gateway::start(config()).await.unwrap();
        let client = client();
        let key_id = a.plans().api_key_by_value(KEY).unwrap().id;
        assert_eq!(admitted_in_turn(&client, &[&a, &b], 5).await, 3);
        b.shutdown().await.unwrap();
        flushall(&redis).await;
        let b = Gateway::start(config()).await.unwrap();
        assert_eq!(
            b.plans().api_key_by_value(KEY).unwrap().id,
            key_id,
            "the same key (leases: {leases})"
        );
        for i in 0..4 {
            let addr = [b.data_addr(), a.data_addr()][i % 2];
            assert_eq!(
                status(&client, addr).await,
                429,
                "request {i} after the loss (leases: {leases})"
            );
        }
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

/// What Redis shares of the registry: the registry and its meta.
async fn shared_registry(
    raw: &mut redis::aio::MultiplexedConnection,
) -> (String, std::collections::HashMap<String, String>) {
    redis::pipe()
        .cmd("GET")
        .arg("tup:{registry}")
        .cmd("HGETALL")
        .arg("tup:{registry}:meta")
        .query_async(raw)
        .await
        .unwrap()
}

/// Redis loses its data and, at once, another replica publishes
/// `registry` (as version 7) over the loss.
async fn lose_data_under(
    raw: &mut redis::aio::MultiplexedConnection,
    (registry, meta): &(String, std::collections::HashMap<String, String>),
) {
    let () = redis::pipe()
        .atomic()
        .cmd("FLUSHALL")
        .ignore()
        .cmd("SET")
        .arg("tup:{registry}")
        .arg(registry)
        .ignore()
        .cmd("SET")
        .arg("tup:{registry}:version")
        .arg(7)
        .ignore()
        .cmd("HSET")
        .arg("tup:{registry}:meta")
        .arg(meta)
        .ignore()
        .query_async(raw)
        .await
        .unwrap();
}

/// The registry Redis holds once a replica published over version 7.
async fn republished(raw: &redis::aio::MultiplexedConnection) -> String {
    eventually("a replica to publish over the registry put there", || {
        let mut raw = raw.clone();
        async move {
            let (registry, version): (Option<String>, Option<i64>) = redis::pipe()
                .cmd("GET")
                .arg("tup:{registry}")
                .cmd("GET")
                .arg("tup:{registry}:version")
                .query_async(&mut raw)
                .await
                .unwrap();
            registry.filter(|_| version.is_some_and(|v| v != 7))
        }
    })
    .await
}

/// Redis loses its data and, before replica A notices, another replica
/// publishes a registry without what A created through the admin API (one
/// that started alone meanwhile, while A was paused). A merges the two
/// rather than take Redis's as a later version of its own: the key it
/// created survives, and is shared again (it was dropped everywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registry_published_over_a_loss_is_merged_not_adopted() {
    let redis = Redis::start();
    let a = Gateway::start(config(&redis.url(), 10, StoreFailure::FailOpen))
        .await
        .unwrap();
    let mut raw = raw_connection(&redis).await;
    // The registry of a replica that knows the configuration alone.
    let config_only = shared_registry(&mut raw).await;
    let plan_id = a.plans().usage_plans()[0].id.clone();
    let created = a
        .plans()
        .create_api_key(
            NewApiKey::new("created")
                .with_value("created-through-the-admin-api-0123")
                .with_enabled(true),
        )
        .unwrap();
    a.plans().add_key_to_plan(&plan_id, &created.id).unwrap();
    a.plans().replicated().await.unwrap();
    lose_data_under(&mut raw, &config_only).await;
    let shared = republished(&raw).await;
    assert!(shared.contains(&created.id), "shared again: {shared}");
    assert!(a.plans().api_key(&created.id).is_ok(), "A kept the key");
    a.shutdown().await.unwrap();
}

/// An admin change through A races a loss: another replica that had not
/// taken the change in yet publishes its registry from before the change
/// over the loss. The change stays made, on A and in what A shares again:
/// a deleted key stays deleted, a key taken out of its plan stays out, a
/// disabled key stays disabled (merged as if nothing came before the loss,
/// each came back from the other's older copy, and was admitted again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_change_raced_by_a_loss_stays_made() {
    type Change = fn(&tower_usage_plans::UsagePlans, &str, &str);
    let changes: [(&str, Change); 3] = [
        ("delete the key", |plans, _, key| {
            plans.delete_api_key(key).unwrap();
        }),
        ("take it out of its plan", |plans, plan, key| {
            plans.remove_key_from_plan(plan, key).unwrap();
        }),
        ("disable it", |plans, _, key| {
            plans
                .update_api_key(key, |k| {
                    k.enabled = false;
                    Ok(())
                })
                .unwrap();
        }),
    ];
    let client = client();
    for (change, make) in changes {
        let redis = Redis::start();
        let a = Gateway::start(config(&redis.url(), 100, StoreFailure::FailOpen))
            .await
            .unwrap();
        assert_eq!(status(&client, a.data_addr()).await, 200, "{change}");
        let mut raw = raw_connection(&redis).await;
        let before = shared_registry(&mut raw).await;
        let plan_id = a.plans().usage_plans()[0].id.clone();
        let key_id = a.plans().api_keys()[0].id.clone();
        make(a.plans(), &plan_id, &key_id);
        a.plans().replicated().await.unwrap();
        assert_eq!(status(&client, a.data_addr()).await, 403, "{change}");

        lose_data_under(&mut raw, &before).await;
        let shared: serde_json::Value = serde_json::from_str(&republished(&raw).await).unwrap();
        let admitted = |registry: &serde_json::Value| {
            let keys = registry["keys"].as_array().unwrap();
            let enabled = keys
                .iter()
                .any(|k| k["key"]["id"] == key_id.as_str() && k["key"]["enabled"] == true);
            let plans = registry["plans"].as_array().unwrap();
            let member = plans.iter().any(|p| {
                p["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k == key_id.as_str())
            });
            enabled && member
        };
        assert!(!admitted(&shared), "{change}: undone in Redis: {shared}");
        assert_eq!(
            status(&client, a.data_addr()).await,
            403,
            "{change}: undone on A"
        );
        a.shutdown().await.unwrap();
    }
}

/// The other side of the race above: replica A deleted (or disabled) a
/// key, Redis lost its data, and A published again (its registry built on
/// one this replica never took in) before this replica, B, found the loss.
/// B takes the change in: merged as if nothing came before the loss, B
/// kept its own copy and shared it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_published_over_a_loss_by_another_replica_is_taken_in() {
    type Change = fn(&mut serde_json::Value);
    let changes: [(&str, Change); 2] = [
        ("deleted", |registry| {
            registry["keys"] = serde_json::json!([]);
            registry["plans"][0]["keys"] = serde_json::json!([]);
        }),
        ("disabled", |registry| {
            registry["keys"][0]["key"]["enabled"] = false.into();
        }),
    ];
    let client = client();
    for (change, make) in changes {
        let redis = Redis::start();
        let b = Gateway::start(config(&redis.url(), 100, StoreFailure::FailOpen))
            .await
            .unwrap();
        assert_eq!(status(&client, b.data_addr()).await, 200);
        let mut raw = raw_connection(&redis).await;
        let (registry, meta) = shared_registry(&mut raw).await;
        let key_id = b.plans().api_keys()[0].id.clone();
        // A's registry after the change, published twice since what B holds.
        let mut changed: serde_json::Value = serde_json::from_str(&registry).unwrap();
        make(&mut changed);
        let mut lineage = vec![serde_json::json!(1u64), serde_json::json!(2u64)];
        lineage.extend(changed["lineage"].as_array().unwrap().iter().cloned());
        changed["lineage"] = lineage.into();
        lose_data_under(&mut raw, &(changed.to_string(), meta)).await;
        let shared = republished(&raw).await;
        let usable = b.plans().api_key(&key_id).is_ok_and(|k| k.enabled);
        assert!(!usable, "{change}: B did not take the change in: {shared}");
        assert!(
            !shared.contains(r#""enabled":true"#),
            "{change}: shared again as before: {shared}"
        );
        assert_eq!(status(&client, b.data_addr()).await, 403, "{change}");
        b.shutdown().await.unwrap();
    }
}

/// Stops `gateways` and starts as many new ones on `redis` (new processes
/// as far as the store knows: nothing of the old ones' memory is left).
async fn restart(redis: &Redis, gateways: Vec<Gateway>, quota: u64, leases: bool) -> Vec<Gateway> {
    let count = gateways.len();
    for gateway in gateways {
        gateway.shutdown().await.unwrap();
    }
    let mut restarted = Vec::new();
    for _ in 0..count {
        let config = config_with(&redis.url(), quota, StoreFailure::FailOpen, leases);
        restarted.push(Gateway::start(config).await.unwrap());
    }
    restarted
}

/// How many of `requests` requests, sent to `gateways` in turn, were
/// admitted.
async fn admitted_in_turn(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>>,
    gateways: &[&Gateway],
    requests: usize,
) -> u32 {
    let mut admitted = 0;
    for i in 0..requests {
        let addr = gateways[i % gateways.len()].data_addr();
        admitted += u32::from(status(client, addr).await == 200);
    }
    admitted
}

async fn flushall(redis: &Redis) {
    let mut raw = raw_connection(redis).await;
    let () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
}

/// A key's quota spent, then every replica restarted (none of them decided
/// the key since), then Redis loses its data: the key stays spent. The
/// replicas read every counter when they start — two replicas or one,
/// with leases and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spent_quota_survives_every_replica_restarting_before_redis_loses_its_data() {
    for (leases, replicas) in [(false, 2), (true, 2), (false, 1), (true, 1)] {
        let case = format!("leases: {leases}, replicas: {replicas}");
        let redis = Redis::start();
        let mut gateways = Vec::new();
        for _ in 0..replicas {
            let config = config_with(&redis.url(), 3, StoreFailure::FailOpen, leases);
            gateways.push(Gateway::start(config).await.unwrap());
        }
        let client = client();
        let serving: Vec<&Gateway> = gateways.iter().collect();
        assert_eq!(admitted_in_turn(&client, &serving, 5).await, 3, "{case}");

        let gateways = restart(&redis, gateways, 3, leases).await;
        flushall(&redis).await;
        for i in 0..4 {
            let addr = gateways[i % replicas].data_addr();
            assert_eq!(
                status(&client, addr).await,
                429,
                "request {i} after the restart and FLUSHALL ({case})"
            );
        }
        for gateway in gateways {
            gateway.shutdown().await.unwrap();
        }
    }
}

/// UpdateUsage (`replace /remaining 2`) on a key, then both replicas
/// restart, then Redis loses its data: GetUsage reads 2 remaining on both
/// replicas, and the data plane admits exactly 2 more — with leases and
/// without.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_usage_survives_every_replica_restarting_before_redis_loses_its_data() {
    for leases in [true, false] {
        let redis = Redis::start();
        let (a, b, plan_id, key_id, client) = warm_pair(&redis, 1_000, leases).await;
        a.plans().set_remaining(&plan_id, &key_id, 2).await.unwrap();
        let mut gateways = restart(&redis, vec![a, b], 1_000, leases).await;
        let (b, a) = (gateways.pop().unwrap(), gateways.pop().unwrap());
        flushall(&redis).await;
        // GetUsage, the very first call after the loss, finds the counter
        // gone and has it put back as every replica read it: the
        // allowance, not the plan's 1,000 (today's count of requests went
        // with Redis's data).
        for (name, gateway) in [("B", &b), ("A", &a)] {
            let usage = usage_today(gateway.plans(), &plan_id, &key_id).await;
            assert_eq!(usage[1], 2, "{name}: {usage:?} (leases: {leases})");
        }
        let admitted = admitted_in_turn(&client, &[&b, &a], 10).await;
        assert_eq!(admitted, 2, "leases: {leases}");
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

/// A replica that stopped answering (paused: its last beat said it would
/// be back) holds a recovery up for a second while the others wait for its
/// acknowledgement. A decision that found Redis emptied waits for the
/// restore rather than fail by the failure policy: fail-open admitted a
/// spent key on the empty Redis — with leases and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_restore_admits_nothing_even_failing_open() {
    for leases in [true, false] {
        let redis = Redis::start();
        let (a, b, plan_id, key_id, client) = warm_pair(&redis, 20, leases).await;
        a.plans().set_remaining(&plan_id, &key_id, 0).await.unwrap();
        let mut raw = raw_connection(&redis).await;
        // The paused replica's last beat, heard by A and B ...
        let until_ms = jiff::Timestamp::now().as_millisecond() + 60_000;
        let _: i64 = redis::cmd("PUBLISH")
            .arg("tup:{ctl}")
            .arg(format!("beat paused-replica {until_ms}"))
            .query_async(&mut raw)
            .await
            .unwrap();
        // ... before this change, which A acknowledges after it (in order).
        b.plans()
            .create_api_key(NewApiKey::new("after-the-beat"))
            .unwrap();
        b.plans().replicated().await.unwrap();

        flushall(&redis).await;
        assert_eq!(
            status(&client, a.data_addr()).await,
            429,
            "leases: {leases}"
        );
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

/// UpdateUsage through B (`replace /remaining 0`), then B is gone, then
/// Redis loses its data: A's copy followed the change (A decided the key
/// only before it), so the key stays spent — with leases and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_usage_through_a_replica_now_gone_survives_redis_losing_its_data() {
    support::day::clear_of_midnight();
    for leases in [true, false] {
        let redis = Redis::start();
        let (a, b, plan_id, key_id, client) = warm_pair(&redis, 1_000, leases).await;
        b.plans().set_remaining(&plan_id, &key_id, 0).await.unwrap();
        b.shutdown().await.unwrap();
        flushall(&redis).await;
        let usage = usage_today(a.plans(), &plan_id, &key_id).await;
        assert_eq!(usage[1], 0, "GetUsage: {usage:?} (leases: {leases})");
        for i in 0..3 {
            assert_eq!(
                status(&client, a.data_addr()).await,
                429,
                "request {i} (leases: {leases})"
            );
        }
        a.shutdown().await.unwrap();
    }
}

/// How many script calls (decisions, leases, reports) Redis has run.
/// A key over its quota costs Redis nothing per request: the replica
/// remembers Redis's refusal (at most a second). UpdateUsage through the
/// other replica ("add", "set") and a plan change each bind the very next
/// request all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spent_key_costs_redis_nothing_until_an_admin_change() {
    for leases in [false, true] {
        let redis = Redis::start();
        // 10 requests in all: the quota is spent.
        let (a, b, plan_id, key_id, client) = warm_pair(&redis, 10, leases).await;
        assert_eq!(status(&client, a.data_addr()).await, 429);
        let (before, started) = (redis.script_calls().await, Instant::now());
        for _ in 0..100 {
            assert_eq!(status(&client, a.data_addr()).await, 429);
        }
        // A refusal is asked again once a second at most (and a leased
        // replica reports and gives back on its 200 ms beat).
        let most = (started.elapsed().as_millis() as u64 / 200 + 1) * 2;
        let calls = redis.script_calls().await - before;
        assert!(
            calls <= most,
            "{calls} script calls for 100 refusals (leases: {leases})"
        );

        // The plan's quota raised by one (before any UpdateUsage, whose
        // allowance would stand for the rest of the period).
        b.plans()
            .update_usage_plan(&plan_id, |plan| {
                plan.quota = Some(Quota::new(11, QuotaPeriod::Day));
                Ok(())
            })
            .unwrap();
        b.plans().replicated().await.unwrap();
        assert_eq!(
            status(&client, a.data_addr()).await,
            200,
            "plan, leases: {leases}"
        );
        assert_eq!(status(&client, a.data_addr()).await, 429);
        b.plans().add_remaining(&plan_id, &key_id, 1).await.unwrap();
        assert_eq!(
            status(&client, a.data_addr()).await,
            200,
            "add, leases: {leases}"
        );
        assert_eq!(status(&client, a.data_addr()).await, 429);
        b.plans().set_remaining(&plan_id, &key_id, 1).await.unwrap();
        assert_eq!(
            status(&client, a.data_addr()).await,
            200,
            "set, leases: {leases}"
        );
        assert_eq!(status(&client, a.data_addr()).await, 429);
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

/// A plain connection to `redis`, for what the tests ask it directly.
async fn raw_connection(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A key removed from its plan and added back starts from its full quota
/// on every replica: the leases a replica held of its counter as it was
/// are revoked before the removal returns, and never spent into the new
/// one (the counter's epoch moves on).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_removed_and_added_back_spends_no_old_lease() {
    for leases in [true, false] {
        let redis = Redis::start();
        let (a, b, plan_id, key_id, client) = warm_pair(&redis, 100, leases).await;
        // A leases more as it goes.
        for _ in 0..40 {
            assert_eq!(status(&client, a.data_addr()).await, 200);
        }
        b.plans().remove_key_from_plan(&plan_id, &key_id).unwrap();
        b.plans().replicated().await.unwrap();
        assert_eq!(status(&client, a.data_addr()).await, 403);
        b.plans().add_key_to_plan(&plan_id, &key_id).unwrap();
        b.plans().replicated().await.unwrap();
        let mut admitted = 0;
        for _ in 0..130 {
            admitted += u32::from(status(&client, a.data_addr()).await == 200);
        }
        assert_eq!(admitted, 100, "leases: {leases}");
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

/// A gateway that reaches Redis while another replica holds the join lock
/// waits for it, and meanwhile serves its configured key by the failure
/// policy (here: 503), never 403 as an unknown key: its configuration is
/// set aside only once it holds the lock. (Set aside before, the key was
/// refused with 403 for as long as the replicas ahead of it took to join.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_waiting_to_join_serves_its_configured_key_by_the_failure_policy() {
    let redis = Redis::start();
    let mut raw = raw_connection(&redis).await;
    // Another replica is joining: it holds the lock (for a minute).
    let () = redis::cmd("SET")
        .arg("tup:{registry}:joining")
        .arg("another-replica")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut raw)
        .await
        .unwrap();
    // Its first attempt gives up after 3 s; it serves, and tries again.
    let gateway = Gateway::start(config(&redis.url(), 5, StoreFailure::FailClosed))
        .await
        .unwrap();
    let client = client();
    assert!(!gateway.is_ready());
    // Its next attempt is under way once it asks for the lock again.
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut raw)
        .await
        .unwrap();
    eventually("the gateway to ask for the join lock again", || {
        let mut raw = raw.clone();
        async move {
            let stats: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut raw)
                .await
                .unwrap();
            stats.contains("cmdstat_set:").then_some(())
        }
    })
    .await;
    for _ in 0..5 {
        assert_eq!(status(&client, gateway.data_addr()).await, 503);
    }
    // The other replica is done: this one joins, and counts in Redis.
    let () = redis::cmd("DEL")
        .arg("tup:{registry}:joining")
        .query_async(&mut raw)
        .await
        .unwrap();
    eventually("the gateway to join", || async {
        gateway.is_ready().then_some(())
    })
    .await;
    assert_eq!(status(&client, gateway.data_addr()).await, 200);
    gateway.shutdown().await.unwrap();
}
