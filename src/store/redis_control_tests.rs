//! A replica whose Redis is frozen (SIGSTOP) waits for its registry to be
//! current once, not on every request: the gateway's requests ask
//! [`RedisStore::waited_out_lately`] before they wait.

use std::time::{Duration, Instant};

use super::*;

use super::redis_server;

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
