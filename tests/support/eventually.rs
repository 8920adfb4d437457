//! Waiting for a state that arrives with no signal to wait on (a lease
//! given back, a counter restored): poll, with a deadline that turns a
//! regression into a failure instead of a hang.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

/// How long a state may take before the test fails: the deadline of every
/// other wait in the tests.
pub const EVENTUALLY: Duration = super::net::DEADLINE;

/// Polls `probe` every few milliseconds until it returns `Some`, and
/// returns that; panics naming `what` after [`EVENTUALLY`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still waiting, after {EVENTUALLY:?}, for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
