//! Calls to Redis made again while they fail: a restart drops every
//! connection, and the first call on a dropped one fails while the next,
//! on a new one (the connection reconnects), goes through.

use std::future::Future;
use std::time::Duration;

/// A replica's message to put counters back: twice more, 50 ms apart. Not
/// done, it was not acknowledged: the sender waited its whole second for
/// it, then went on as if it had been, with this replica's share not put
/// back.
pub(crate) const RESTORE: &[Duration] = &[Duration::from_millis(50), Duration::from_millis(50)];

/// An announcement that follows a change already made (UpdateUsage's
/// revocation, a registry change): for 1.55 s, the pauses doubling from
/// 50 ms, long enough for a restart of Redis. Failed, the change holds
/// while the admin call answers an error (and an SDK sends it again: a
/// `replace /remaining 10` so made twice admitted 13-20 of 10 in a
/// black-box run restarting Redis under the call).
pub(crate) const ANNOUNCE: &[Duration] = &[
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

/// `attempt`, made again after each of `pauses` while it fails; the last
/// failure if every attempt failed. `what` names the call in the debug
/// line each failure but the last logs.
pub(crate) async fn retried<T, E, Fut>(
    what: &str,
    pauses: &[Duration],
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, E>
where
    E: std::fmt::Display,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pauses = pauses.iter();
    loop {
        match attempt().await {
            Err(e) => match pauses.next() {
                Some(pause) => {
                    tracing::debug!(error = %e, "{what} failed; once more");
                    tokio::time::sleep(*pause).await;
                }
                None => return Err(e),
            },
            done => return done,
        }
    }
}
