//! A replica answers from its registry only while it knows the registry is
//! current. A replica that was paused (SIGSTOP, a stalled VM) missed
//! changes announced meanwhile: an admin call that disabled a key waited at
//! most a second for it, then returned. When it resumes, its requests wait
//! until it has read what was announced — a beat of its own comes after
//! every earlier message — so a key disabled or deleted before it resumed
//! is refused on its very first request. Without Redis (or before it was
//! reached) there is nothing to wait for. Nor once a request waited in vain
//! (Redis frozen or out of reach) while the requests after it keep coming
//! less than a second apart: they go on by the failure policy at once. (Each
//! waited the whole second before: with Redis stopped for 4 s, 1.25 s a
//! request.) A replica that was paused itself finds that wait too old, and
//! its first requests wait again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::Request;
use tower_service::Service;

use super::redis_link::LateStore;

/// The longest a request waits for its replica to catch up: a replica that
/// hears the channel catches up within one beat (100 ms); one that no
/// longer does serves by its `--redis-failure` policy after this.
const CATCH_UP: Duration = Duration::from_secs(1);

/// Holds each request until the replica's registry is current.
#[derive(Clone, Debug)]
pub(crate) struct Current<S> {
    pub(crate) inner: S,
    /// The Redis store, once reached (`None` without `--redis`).
    pub(crate) late: Option<Arc<LateStore>>,
}

type Waiting<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<Request<B>> for Current<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Waiting<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let behind = self
            .late
            .as_deref()
            .and_then(LateStore::store)
            .filter(|store| !store.registry_current() && !store.waited_out_lately());
        let Some(store) = behind.cloned() else {
            return Either::Left(self.inner.call(request));
        };
        // The ready service goes with the request; a clone stays for the next.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            store.until_registry_current(CATCH_UP).await;
            ready.call(request).await
        }))
    }
}
