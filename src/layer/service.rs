use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::decide::{Config, Next, Pending};
use super::future::ResponseFuture;
use super::{RefusalResponse, UsageContext};
use crate::key::RequestHead;

/// The middleware built by [`UsagePlanLayer`](super::UsagePlanLayer).
/// Refusals are answered in `call`, without calling the inner service.
#[derive(Debug, Clone)]
pub struct UsagePlanService<S, R> {
    inner: S,
    config: Arc<Config>,
    refusal: R,
}

impl<S, R> UsagePlanService<S, R> {
    pub(crate) fn new(inner: S, config: Arc<Config>, refusal: R) -> Self {
        Self {
            inner,
            config,
            refusal,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for UsagePlanService<S, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    R: RefusalResponse<ResBody> + Clone,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let head = RequestHead::of(&request);
        if self.config.is_unmetered(&head) {
            return ResponseFuture::forward(self.inner.call(request), None);
        }
        let Pending {
            mut decision,
            context,
        } = match self.config.start(&head) {
            Ok(pending) => pending,
            Err(reason) => {
                return ResponseFuture::refused(self.config.refuse(&self.refusal, reason, None))
            }
        };
        if let Some(context) = context {
            request.extensions_mut().insert(context);
        }
        let Some(answer) = decision.take_ready() else {
            // The store answers later: the ready inner service goes with the
            // future, a fresh clone stays here.
            let fresh = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, fresh);
            return ResponseFuture::deciding(
                decision,
                ready,
                request,
                self.config.clone(),
                self.refusal.clone(),
            );
        };
        match self.config.finish(&self.refusal, answer) {
            Next::Forward { headers, counted } => {
                if !counted {
                    uncharged(&mut request);
                }
                ResponseFuture::forward(self.inner.call(request), headers)
            }
            Next::Refuse(response) => ResponseFuture::refused(response),
        }
    }
}

/// The request was not counted: its context has no charge to give back.
#[cold]
pub(crate) fn uncharged<B>(request: &mut Request<B>) {
    if let Some(context) = request.extensions_mut().get_mut::<UsageContext>() {
        context.uncharged();
    }
}
