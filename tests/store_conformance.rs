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
