//! The calls in flight whose answers a replica's copy of the counters
//! follows, and the restore that waits for them.
//!
//! Each such call holds [`InFlight::read`] from before it is sent until
//! its answer is in the copy; a restore holds [`InFlight::write`] alone,
//! so it puts back what every answer Redis gave before the loss said.
//!
//! A restore does not wait out a call Redis will never answer: Redis
//! that restarted dropped the connection, and a call sent on it as it went
//! may stay unanswered, neither failed nor answered, until its timeout
//! (seen: a replica's restore waited 3 s behind one while the other replica
//! put back two more losses alone, and what it had seen of the first came
//! back too late to be counted). A call made through
//! [`InFlight::unless_restoring`] ends, as one timed out does, once a
//! restore waits for it and a call sent after it found its connection
//! dropped: its answer, had Redis applied it, is settled as any unanswered
//! call's is. Where no connection dropped (Redis emptied by `FLUSHALL`,
//! gone back to older data without a restart), answers still come, and the
//! restore waits for them: given up, what they said was counted twice.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Notify, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// See the [module](self).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    lock: RwLock<()>,
    /// Restores waiting for the calls in flight.
    restores_waiting: AtomicUsize,
    /// Calls that found their connection dropped (or refused).
    drops: AtomicU64,
    /// Wakes the calls in flight when a restore starts waiting, or a call
    /// finds its connection dropped.
    wakes: Notify,
}

impl InFlight {
    /// Held by a call from before it is sent until its answer is in the
    /// copy; waits while a restore runs or waits.
    pub(crate) async fn read(&self) -> RwLockReadGuard<'_, ()> {
        self.lock.read().await
    }

    /// Held by a restore: every call in flight has its answer in the copy,
    /// or was given up (see [`InFlight::unless_restoring`]).
    pub(crate) async fn write(&self) -> RwLockWriteGuard<'_, ()> {
        self.restores_waiting.fetch_add(1, Ordering::SeqCst);
        self.wakes.notify_waiters();
        let quiet = self.lock.write().await;
        self.restores_waiting.fetch_sub(1, Ordering::SeqCst);
        quiet
    }

    /// `call` (made under [`InFlight::read`]), given up as unanswered once
    /// a restore waits for it and a call sent after it found its
    /// connection dropped.
    pub(crate) async fn unless_restoring<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        let drops_before = self.drops.load(Ordering::SeqCst);
        tokio::pin!(call);
        loop {
            let woken = self.wakes.notified();
            tokio::pin!(woken);
            // Registered before the counts are read: a change after this
            // read wakes it.
            woken.as_mut().enable();
            if self.restores_waiting.load(Ordering::SeqCst) > 0
                && self.drops.load(Ordering::SeqCst) > drops_before
            {
                return Err(given_up());
            }
            tokio::select! {
                biased;
                answer = &mut call => {
                    if answer.as_ref().is_err_and(dropped) {
                        self.drops.fetch_add(1, Ordering::SeqCst);
                        self.wakes.notify_waiters();
                    }
                    return answer;
                }
                () = woken => {}
            }
        }
    }
}

/// Whether `error` says the call's connection dropped (or a new one was
/// refused): no answer comes on it any more.
fn dropped(error: &redis::RedisError) -> bool {
    error.is_connection_dropped()
        || error.is_connection_refusal()
        || (error.is_io_error() && !error.is_timeout())
}

/// A call given up for a restore: as one timed out, its answer may have
/// been applied (see `answer_lost` in redis_decides.rs).
fn given_up() -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "given up: Redis dropped the connection, and a restore waits for the calls in flight",
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn broken_pipe() -> redis::RedisError {
        std::io::Error::from(std::io::ErrorKind::BrokenPipe).into()
    }

    /// A call on its way (`answer`, in a task of its own) and, after
    /// `meanwhile`, a restore that waits for it: what the call ended with,
    /// once the restore had its turn.
    async fn a_restore_behind(
        in_flight: Arc<InFlight>,
        answer: impl Future<Output = redis::RedisResult<u8>> + Send + 'static,
        meanwhile: impl Future<Output = ()>,
    ) -> redis::RedisResult<u8> {
        let (sent, is_sent) = tokio::sync::oneshot::channel();
        let call = tokio::spawn({
            let in_flight = in_flight.clone();
            async move {
                let _held = in_flight.read().await;
                let _ = sent.send(());
                in_flight.unless_restoring(answer).await
            }
        });
        is_sent.await.unwrap();
        meanwhile.await;
        // A guard against a hang, not a measure.
        let quiet = tokio::time::timeout(Duration::from_secs(30), in_flight.write())
            .await
            .expect("the restore waited out a call that never ends");
        drop(quiet);
        call.await.unwrap()
    }

    /// A task that answers `value` on `answer` once a restore waits.
    fn answer_once_a_restore_waits(
        in_flight: &Arc<InFlight>,
        answer: tokio::sync::oneshot::Sender<u8>,
        value: u8,
    ) -> impl Future<Output = ()> {
        let waiting = in_flight.clone();
        async move {
            tokio::spawn(async move {
                while waiting.restores_waiting.load(Ordering::SeqCst) == 0 {
                    tokio::task::yield_now().await;
                }
                let _ = answer.send(value);
            });
        }
    }

    /// A call that never ends is given up once a restore waits and a call
    /// sent after it found the connection dropped; the restore then runs.
    #[tokio::test]
    async fn a_restore_does_not_wait_out_a_call_on_a_dropped_connection() {
        let in_flight = Arc::new(InFlight::default());
        let other = in_flight.clone();
        let drop_seen = async move {
            let _held = other.read().await;
            let failed = other.unless_restoring(async { Err::<u8, _>(broken_pipe()) });
            assert!(failed.await.is_err());
        };
        let given_up = a_restore_behind(in_flight.clone(), std::future::pending(), drop_seen)
            .await
            .unwrap_err();
        assert!(given_up.is_timeout(), "{given_up}");
        let _held = in_flight.read().await;
        let after = in_flight.unless_restoring(async { Ok(8) }).await;
        assert_eq!(after.unwrap(), 8, "a call after the restore is answered");
    }

    /// No connection dropped (Redis emptied by FLUSHALL): the restore
    /// waits for the answer, which comes after it started waiting.
    #[tokio::test]
    async fn a_restore_waits_for_an_answer_on_a_live_connection() {
        let in_flight = Arc::new(InFlight::default());
        let (answer, answered) = tokio::sync::oneshot::channel();
        let meanwhile = answer_once_a_restore_waits(&in_flight, answer, 5);
        let call = async move { Ok(answered.await.unwrap()) };
        let got = a_restore_behind(in_flight, call, meanwhile).await;
        assert_eq!(got.unwrap(), 5);
    }

    /// A dropped connection found before the call was sent gives it up
    /// for no restore: it went on a new connection.
    #[tokio::test]
    async fn an_earlier_drop_gives_up_no_call() {
        let in_flight = Arc::new(InFlight::default());
        in_flight.drops.fetch_add(1, Ordering::SeqCst);
        let (answer, answered) = tokio::sync::oneshot::channel();
        let meanwhile = answer_once_a_restore_waits(&in_flight, answer, 6);
        let call = async move { Ok(answered.await.unwrap()) };
        let got = a_restore_behind(in_flight, call, meanwhile).await;
        assert_eq!(got.unwrap(), 6);
    }
}
