//! `GET /ping` and `GET /ready` on the admin listener, without SigV4, for
//! load balancers and orchestrators. They answer a fixed word and nothing
//! else (no version, no reason, no address): liveness is "the process
//! serves"; readiness is "plans are loaded and, with `--redis`, Redis
//! answers, and the gateway is not stopping".

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_service::Service;

/// What `/ready` reports, shared by the gateway's tasks.
#[derive(Debug)]
pub(crate) struct Readiness {
    /// Plans and keys are loaded (from the state file, the config, or Redis).
    loaded: AtomicBool,
    /// Redis answered its last round (always true without Redis).
    store_up: AtomicBool,
    /// The gateway is shutting down: take no new traffic.
    stopping: AtomicBool,
}

impl Readiness {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            loaded: AtomicBool::new(false),
            store_up: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
        })
    }

    pub(crate) fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    /// Records whether the store answered; returns whether that changed.
    pub(crate) fn set_store_up(&self, up: bool) -> bool {
        self.store_up.swap(up, Ordering::AcqRel) != up
    }

    pub(crate) fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
            && self.store_up.load(Ordering::Acquire)
            && !self.stopping.load(Ordering::Acquire)
    }
}

/// The admin service with `/ping` and `/ready` in front of it.
#[derive(Debug, Clone)]
pub(crate) struct Health<S> {
    pub(crate) inner: S,
    pub(crate) readiness: Arc<Readiness>,
}

/// The probe a request is, if any: `GET` or `HEAD` of `/ping` or `/ready`
/// (a query is ignored, as probes sometimes add one).
fn probe<B>(request: &Request<B>) -> Option<bool> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return None;
    }
    match request.uri().path() {
        "/ping" => Some(false),
        "/ready" => Some(true),
        _ => None,
    }
}

fn answer<B: From<Bytes>>(status: StatusCode, word: &'static str) -> Response<B> {
    let mut response = Response::new(B::from(Bytes::from_static(word.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Health<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = Infallible>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = HealthFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let response = match probe(&request) {
            None => {
                return HealthFuture::Inner {
                    future: self.inner.call(request),
                }
            }
            Some(false) => answer(StatusCode::OK, "ok\n"),
            Some(true) if self.readiness.is_ready() => answer(StatusCode::OK, "ready\n"),
            Some(true) => answer(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        };
        HealthFuture::Answered {
            response: Some(response),
        }
    }
}

pin_project! {
    #[project = HealthFutureProj]
    pub(crate) enum HealthFuture<F, B> {
        Inner { #[pin] future: F },
        Answered { response: Option<Response<B>> },
    }
}

impl<F, B> Future for HealthFuture<F, B>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            HealthFutureProj::Inner { future } => future.poll(cx),
            HealthFutureProj::Answered { response } => Poll::Ready(Ok(response
                .take()
                .expect("HealthFuture polled after completion"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn call(readiness: &Arc<Readiness>, method: Method, path: &str) -> (StatusCode, bool) {
        let inner = tower_service_fn();
        let mut health = Health {
            inner,
            readiness: readiness.clone(),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        let future = health.call(request);
        let response = futures_now(future).unwrap();
        let from_inner = response.headers().contains_key("x-inner");
        (response.status(), from_inner)
    }

    #[derive(Clone)]
    struct Inner;

    impl Service<Request<()>> for Inner {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            let mut response = Response::new(Full::default());
            *response.status_mut() = StatusCode::FORBIDDEN;
            response
                .headers_mut()
                .insert("x-inner", HeaderValue::from_static("1"));
            std::future::ready(Ok(response))
        }
    }

    fn tower_service_fn() -> Inner {
        Inner
    }

    fn futures_now<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        match future.as_mut().poll(&mut Context::from_waker(waker)) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("not ready at once"),
        }
    }

    #[test]
    fn probes_answer_by_state_and_everything_else_goes_to_the_admin_api() {
        let readiness = Readiness::new();
        assert_eq!(
            call(&readiness, Method::GET, "/ping"),
            (StatusCode::OK, false)
        );
        assert_eq!(
            call(&readiness, Method::GET, "/ready"),
            (StatusCode::SERVICE_UNAVAILABLE, false)
        );
        readiness.set_loaded();
        assert_eq!(
            call(&readiness, Method::HEAD, "/ready?x=1"),
            (StatusCode::OK, false)
        );
        assert!(readiness.set_store_up(false));
        assert!(!readiness.set_store_up(false));
        assert_eq!(
            call(&readiness, Method::GET, "/ready"),
            (StatusCode::SERVICE_UNAVAILABLE, false)
        );
        readiness.set_store_up(true);
        readiness.set_stopping();
        assert_eq!(
            call(&readiness, Method::GET, "/ready"),
            (StatusCode::SERVICE_UNAVAILABLE, false)
        );
        // Anything else needs SigV4: the admin API answers.
        for (method, path) in [
            (Method::POST, "/ping"),
            (Method::GET, "/ping/x"),
            (Method::GET, "/readyz"),
            (Method::GET, "/restapis"),
        ] {
            assert_eq!(
                call(&readiness, method, path),
                (StatusCode::FORBIDDEN, true)
            );
        }
    }
}
