//! The replicas' control channel: a replica whose Redis is frozen
//! (SIGSTOP) waits for its registry to be current once, not on every
//! request (the gateway's requests ask [`RedisStore::waited_out_lately`]
//! before they wait); a replica's late message that Redis lost its data
//! changes nothing where Redis lost nothing since.

use std::time::{Duration, Instant};

use super::*;
use crate::model::Quota;

use super::{day, redis_server};

/// Longer than any wait these steps need on a quiet machine: a wait that
/// returns sooner returns on the event it waits for.
const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_replica_waits_out_a_frozen_redis_once_until_its_beat_is_back() {
    let server = redis_server::Redis::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    store.until_registry_current(LONG).await;
    assert!(store.registry_current(), "it hears its own beat");
    assert!(!store.waited_out_lately(), "it never waited in vain");

    server.pause();
    // Its last beat lapses a registration (1 s) after it came back: no
    // event says so, the clock does.
    let frozen = Instant::now();
    while store.registry_current() {
        assert!(frozen.elapsed() < LONG, "its beat never lapsed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!store.waited_out_lately(), "no request waited yet");
    store
        .until_registry_current(Duration::from_millis(300))
        .await;
    assert!(!store.registry_current(), "Redis is frozen: behind");
    assert!(store.waited_out_lately(), "the next request need not wait");

    server.resume();
    store.until_registry_current(LONG).await;
    assert!(store.registry_current(), "its beat is back");
    assert!(!store.waited_out_lately(), "forgotten once it is current");
}

/// A replica that finishes putting back a loss long after the others did
/// (it stalled) tells them Redis lost its data: Redis holds the marker they
/// know, they put back nothing and keep their leases. (Put back again, a
/// counter never lost counted its copy twice, and the sender's marker, never
/// set, was taken: the next give-back was refused as of a rolled-back Redis.
/// In a test run of two leasing replicas, GetUsage read 5 low.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_message_that_redis_lost_its_data_changes_nothing() {
    day::clear_of_midnight();
    let server = redis_server::Redis::start();
    let connect = || async {
        let store = RedisStore::connect(&server.url())
            .await
            .unwrap()
            .with_leases(LeaseConfig::default());
        store.until_leasing().await;
        store.recover_if_emptied().await.unwrap();
        store
    };
    let (late, holder) = (connect().await, connect().await);
    let counter = CounterKey::new("plan", "held");
    let quota = QuotaRule {
        quota: Quota::new(1_000, QuotaPeriod::Day),
        plan_created: 0,
    };
    let admit = |store: &RedisStore, n: u64| {
        let (store, counter) = (store.clone(), counter.clone());
        async move {
            let mut admitted = 0;
            for _ in 0..n {
                let request = DecisionRequest {
                    counter: &counter,
                    throttle: None,
                    quota: Some(quota),
                    now: Timestamp::now().into(),
                };
                let decision = store.decide(&request).await.unwrap();
                admitted += u64::from(decision.verdict == Verdict::Admitted);
            }
            admitted
        }
    };
    let mut admitted = admit(&holder, 100).await + admit(&late, 20).await;
    let marker = holder.recovery.known_marker();
    assert!(
        marker.is_some(),
        "the replicas set a marker when they start"
    );

    let mut connection = late.connection.clone();
    late.control
        .lost(&mut connection, &Recovery::fresh_marker())
        .await
        .unwrap();
    assert_eq!(
        holder.recovery.known_marker(),
        marker,
        "the late sender's marker is never set: not taken"
    );

    admitted += admit(&holder, 100).await;
    assert_eq!(admitted, 220);
    holder.give_back_leases().await.unwrap();
    late.give_back_leases().await.unwrap();
    let now = Timestamp::now();
    let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let usage = holder
        .usage(&counter, Some(&quota), now, today, today)
        .await
        .unwrap();
    assert_eq!(
        usage,
        vec![[220, 780]],
        "each admitted request counted once"
    );
}

/// UpdateUsage's revocation (as any announcement that follows a change)
/// sent while Redis restarts goes out once Redis is back: the call that
/// made the change does not fail after making it. (Before: "Redis revoke:
/// broken pipe", a 503 for a change made; the SDK sent the call again and
/// made it twice, 13-20 admitted of 10, in a black-box run restarting Redis
/// under UpdateUsage.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_sent_while_redis_restarts_goes_out_once_it_is_back() {
    let port = redis_server::free_port();
    let mut server = redis_server::Redis::start_on(port);
    let store = RedisStore::connect(&server.url())
        .await
        .unwrap()
        .with_leases(LeaseConfig::default());
    store.until_leasing().await;
    server.stop();
    let revoking = tokio::spawn({
        let store = store.clone();
        async move {
            let counter = CounterKey::new("plan", "key");
            store.revoke_everywhere(&counter, 1).await
        }
    });
    let _back = redis_server::Redis::start_on(port);
    let announced = tokio::time::timeout(LONG, revoking).await.expect("ends");
    announced.unwrap().expect("announced once Redis is back");
}
