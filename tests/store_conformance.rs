//! Every counter store passes the same suite.

#[path = "support/store_suite.rs"]
mod store_suite;

use std::sync::Arc;

use tower_usage_plans::store::MemoryStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    store_suite::run_all(Arc::new(MemoryStore::new())).await;
}
