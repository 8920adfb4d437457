//! The calls in flight whose answers a replica's copy of the counters
//! follows, and the restore that waits for them.
//!
//! Each such call holds [`InFlight::read`] from before it is sent until
//! its answer is in the copy; a restore holds [`InFlight::write`] alone,
//! so it puts back what every answer Redis gave before the loss said.
//!
//! A restore does not wait out a call Redis will never answer: Redis
//! that lost its data dropped the connection, and a call sent on it as it
//! went may stay unanswered, neither failed nor answered, until its
//! timeout (seen: a replica's restore waited 3 s behind one while the
//! other replica put back two more losses alone, and what it had seen of
//! the first came back too late to be counted). A call made through
//! [`InFlight::unless_restoring`] ends, as one timed out does, once a
//! restore waits for it: its answer, had Redis sent one, is settled as
//! any unanswered call's is.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// See the [module](self).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    lock: RwLock<()>,
    /// Restores waiting for the calls in flight.
    restores_waiting: AtomicUsize,
    /// Wakes the calls in flight when a restore starts waiting.
    restore_waits: Notify,
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
        self.restore_waits.notify_waiters();
        let quiet = self.lock.write().await;
        self.restores_waiting.fetch_sub(1, Ordering::SeqCst);
        quiet
    }

    /// `call` (made under [`InFlight::read`]), given up as unanswered
    /// once a restore waits for it.
    pub(crate) async fn unless_restoring<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        let restore = self.restore_waits.notified();
        tokio::pin!(restore);
        // Registered before the count is read: a restore that starts
        // waiting after this read wakes it.
        restore.as_mut().enable();
        if self.restores_waiting.load(Ordering::SeqCst) > 0 {
            return Err(given_up());
        }
        tokio::select! {
            biased;
            answer = call => answer,
            () = restore => Err(given_up()),
        }
    }
}

/// A call given up for a restore: as one timed out, its answer may have
/// been applied (see `answer_lost` in redis_decides.rs).
fn given_up() -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "given up: Redis lost its data, and a restore waits for the calls in flight",
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A call that never ends is given up once a restore waits, and the
    /// restore then runs; a call made while none waits is answered.
    #[tokio::test]
    async fn a_restore_does_not_wait_out_an_unanswered_call() {
        let in_flight = Arc::new(InFlight::default());
        let answered = {
            let _held = in_flight.read().await;
            in_flight.unless_restoring(async { Ok(7) }).await
        };
        assert_eq!(answered.unwrap(), 7);

        let (sent, is_sent) = tokio::sync::oneshot::channel();
        let call = tokio::spawn({
            let in_flight = in_flight.clone();
            async move {
                let _held = in_flight.read().await;
                let _ = sent.send(());
                in_flight
                    .unless_restoring(std::future::pending::<redis::RedisResult<()>>())
                    .await
            }
        });
        is_sent.await.unwrap();
        // A guard against a hang, not a measure: the call never ends.
        let quiet = tokio::time::timeout(std::time::Duration::from_secs(30), in_flight.write())
            .await
            .expect("the restore waited out a call that never ends");
        let given_up = call.await.unwrap().unwrap_err();
        assert!(given_up.is_timeout(), "{given_up}");
        drop(quiet);
        let after = {
            let _held = in_flight.read().await;
            in_flight.unless_restoring(async { Ok(8) }).await
        };
        assert_eq!(after.unwrap(), 8, "a call after the restore is answered");
    }

    /// A call that takes its hold just as a restore starts waiting (past
    /// the wake-up) is given up at once.
    #[tokio::test]
    async fn a_call_that_starts_while_a_restore_waits_is_given_up() {
        let in_flight = InFlight::default();
        in_flight.restores_waiting.fetch_add(1, Ordering::SeqCst);
        let given_up = in_flight
            .unless_restoring(std::future::pending::<redis::RedisResult<()>>())
            .await
            .unwrap_err();
        assert!(given_up.is_timeout(), "{given_up}");
    }
}
