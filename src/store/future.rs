use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::Result;

/// The answer of a [`CounterStore`](super::CounterStore) call: ready at
/// once (the in-memory store, no allocation) or a boxed future (a store
/// that goes over the network).
///
/// ```
/// use tower_usage_plans::store::StoreFuture;
///
/// # tokio_test_block_on(async {
/// assert_eq!(StoreFuture::ready(Ok(7)).await.unwrap(), 7);
/// assert_eq!(StoreFuture::boxed(async { Ok(8) }).await.unwrap(), 8);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
pub struct StoreFuture<T>(Inner<T>);

enum Inner<T> {
    Ready(Option<Result<T>>),
    Boxed(Pin<Box<dyn Future<Output = Result<T>> + Send>>),
}

impl<T> StoreFuture<T> {
    /// An answer known now.
    ///
    /// ```
    /// # use tower_usage_plans::store::StoreFuture;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// assert_eq!(StoreFuture::ready(Ok("now")).await.unwrap(), "now");
    /// # });
    /// ```
    pub fn ready(result: Result<T>) -> Self {
        Self(Inner::Ready(Some(result)))
    }

    /// An answer that has to be waited for.
    ///
    /// ```
    /// # use tower_usage_plans::store::StoreFuture;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let later = StoreFuture::boxed(async { tokio::task::yield_now().await; Ok(8) });
    /// assert_eq!(later.await.unwrap(), 8);
    /// # });
    /// ```
    pub fn boxed(future: impl Future<Output = Result<T>> + Send + 'static) -> Self {
        Self(Inner::Boxed(Box::pin(future)))
    }

    /// The answer if it was known at once and is a success, left in place.
    pub(crate) fn peek_ready(&self) -> Option<&T> {
        match &self.0 {
            Inner::Ready(Some(Ok(value))) => Some(value),
            _ => None,
        }
    }

    /// Takes the answer if it was known at once.
    pub(crate) fn take_ready(&mut self) -> Option<Result<T>> {
        match &mut self.0 {
            Inner::Ready(result) => result.take(),
            Inner::Boxed(_) => None,
        }
    }
}

// Never pins `T`: the ready value is moved out, the boxed future is pinned on the heap.
impl<T> Unpin for StoreFuture<T> {}

impl<T> Future for StoreFuture<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Inner::Ready(result) => {
                Poll::Ready(result.take().expect("StoreFuture polled after completion"))
            }
            Inner::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for StoreFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Inner::Ready(_) => "StoreFuture::Ready",
            Inner::Boxed(_) => "StoreFuture::Boxed",
        })
    }
}
