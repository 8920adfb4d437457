//! Prometheus metrics: requests by outcome, decision and upstream latency,
//! keys and plans.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{Refusal, ShadowRefusal};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once; `None` if another
/// recorder was installed first.
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01,
                    0.05, 0.1, 0.5, 1.0, 5.0,
                ])
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Whether a recorder is installed (a metrics listener is configured):
/// without one, the data path reads no clocks for metrics.
pub(crate) fn enabled() -> bool {
    HANDLE.get().is_some_and(Option::is_some)
}

/// The label of a refusal.
fn reason(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::Throttled => "throttled",
        Refusal::QuotaExceeded => "quota_exceeded",
        Refusal::StoreUnavailable => "store_unavailable",
        Refusal::BadPath => "bad_path",
        _ => "forbidden",
    }
}

/// Counts outcomes and times decisions around the layered service.
#[derive(Clone, Debug)]
pub(crate) struct Metered<S> {
    pub(crate) inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Metered<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if !enabled() {
            return MeteredFuture {
                future: self.inner.call(request),
                enabled: false,
            };
        }
        let started = Instant::now();
        // With the in-memory store the layer decides inside `call`.
        let future = self.inner.call(request);
        metrics::histogram!("usage_plans_decision_seconds").record(started.elapsed().as_secs_f64());
        MeteredFuture {
            future,
            enabled: true,
        }
    }
}

pin_project! {
    pub(crate) struct MeteredFuture<F> {
        #[pin]
        future: F,
        enabled: bool,
    }
}

/// Counts a refusal when it is answered. Admitted requests are counted by
/// [`admitted`] as they are forwarded: a client that leaves before the
/// answer (an HTTP/2 stream reset) drops this future, and its request,
/// charged and on its way upstream, would go uncounted.
impl<F, B, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.future.poll(cx));
        if let (true, Ok(response)) = (*this.enabled, &result) {
            if let Some(refusal) = response.extensions().get::<Refusal>() {
                metrics::counter!("usage_plans_requests_total", "outcome" => reason(*refusal))
                    .increment(1);
            }
        }
        Poll::Ready(result)
    }
}

/// Counts a request the layer let through (admitted, unmetered, or let
/// through by fail-open or shadow mode), with the refusal it escaped in
/// shadow mode, when it is forwarded.
pub(crate) fn admitted(shadow: Option<&ShadowRefusal>) {
    if !enabled() {
        return;
    }
    metrics::counter!("usage_plans_requests_total", "outcome" => "admitted").increment(1);
    if let Some(shadow) = shadow {
        metrics::counter!("usage_plans_shadow_refusals_total", "reason" => reason(shadow.refusal()))
            .increment(1);
    }
}
