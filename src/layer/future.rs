use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::decide::{Admission, Config, Next, Recheck};
use super::headers::RateLimitHeaders;
use super::{Refunded, Refusal, RefusalResponse, ShadowRefusal, UsageContext};
use crate::key::RequestHead;
use crate::store::{Decision, StoreFuture};

pin_project! {
    /// The response future of [`UsagePlanService`](super::UsagePlanService).
    pub struct ResponseFuture<S, ReqBody, R>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody, R>,
    }
}

/// What a request waiting on a networked store keeps.
struct Waiting<S, ReqBody, R> {
    inner: S,
    request: Request<ReqBody>,
    context: Option<UsageContext>,
    config: Arc<Config>,
    refusal: R,
    recheck: Option<Recheck>,
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, R>
    where
        S: Service<Request<ReqBody>>,
    {
        Deciding {
            decision: StoreFuture<Decision>,
            // Boxed: only a networked store needs it, and it keeps the
            // future small for the in-memory path.
            waiting: Option<Box<Waiting<S, ReqBody, R>>>,
        },
        Forwarding {
            #[pin]
            future: S::Future,
            headers: Option<RateLimitHeaders>,
            shadow: Option<Refusal>,
        },
        Refused {
            response: Option<S::Response>,
        },
    }
}

impl<S: Service<Request<ReqBody>>, ReqBody, R> ResponseFuture<S, ReqBody, R> {
    /// An unmetered request.
    pub(crate) fn forward(future: S::Future) -> Self {
        Self {
            state: State::Forwarding {
                future,
                headers: None,
                shadow: None,
            },
        }
    }

    /// A request the decision admitted: its context (if any) completed and
    /// in its extensions, then on to `inner`. Inlined, with [`admit`], so
    /// the request is moved once into `inner.call`, not through two frames.
    #[inline(always)]
    pub(crate) fn admitted(
        inner: &mut S,
        request: Request<ReqBody>,
        context: Option<UsageContext>,
        admission: Admission,
    ) -> Self {
        Self {
            state: admit(inner, request, context, admission),
        }
    }

    pub(crate) fn refused(response: S::Response) -> Self {
        Self {
            state: State::Refused {
                response: Some(response),
            },
        }
    }

    pub(crate) fn deciding(
        decision: StoreFuture<Decision>,
        inner: S,
        request: Request<ReqBody>,
        context: Option<UsageContext>,
        config: Arc<Config>,
        refusal: R,
        recheck: Option<Recheck>,
    ) -> Self {
        Self {
            state: State::Deciding {
                decision,
                waiting: Some(Box::new(Waiting {
                    inner,
                    request,
                    context,
                    config,
                    refusal,
                    recheck,
                })),
            },
        }
    }
}

impl<S, ReqBody, ResBody, R> Future for ResponseFuture<S, ReqBody, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: RefusalResponse<ResBody>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Deciding { decision, waiting } => {
                    let answer = ready!(Pin::new(decision).poll(cx));
                    let Waiting {
                        mut inner,
                        request,
                        context,
                        config,
                        refusal,
                        recheck,
                    } = *waiting
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let mut next = config.finish(&refusal, request.headers(), answer, None);
                    if let (Next::Forward(admission), Some(recheck)) = (&next, recheck) {
                        if admission.counted {
                            let head = RequestHead::of(&request);
                            if let Err(reason) = config.recheck(&head, recheck) {
                                let headers = request.headers();
                                next = Next::Refuse(config.refuse(&refusal, headers, reason, None));
                            }
                        }
                    }
                    let next = match next {
                        Next::Forward(admission) => admit(&mut inner, request, context, admission),
                        Next::Refuse(mut response) => {
                            super::service::name_the_key(context.as_ref(), &mut response);
                            State::Refused {
                                response: Some(response),
                            }
                        }
                    };
                    this.state.set(next);
                }
                StateProj::Forwarding {
                    future,
                    headers,
                    shadow,
                } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(headers) = headers.take() {
                        let refunded = response.extensions().get::<Refunded>().is_some();
                        let headers = if refunded {
                            headers.refunded()
                        } else {
                            headers
                        };
                        headers.apply(response.headers_mut());
                    }
                    if let Some(reason) = shadow.take() {
                        response.extensions_mut().insert(ShadowRefusal(reason));
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Refused { response } => {
                    return Poll::Ready(Ok(response
                        .take()
                        .expect("ResponseFuture polled after completion")));
                }
            }
        }
    }
}

/// Completes the context (what the quota has left; no charge if nothing
/// was counted; the escaped refusal in shadow mode), puts it and any
/// shadow mark into the request, and calls `inner`.
#[inline(always)]
fn admit<S, ReqBody, R>(
    inner: &mut S,
    mut request: Request<ReqBody>,
    context: Option<UsageContext>,
    admission: Admission,
) -> State<S, ReqBody, R>
where
    S: Service<Request<ReqBody>>,
{
    if let Some(mut context) = context {
        context.admitted(&admission);
        request.extensions_mut().insert(context);
    }
    if let Some(reason) = admission.shadow {
        request.extensions_mut().insert(ShadowRefusal(reason));
    }
    State::Forwarding {
        future: inner.call(request),
        headers: admission.headers,
        shadow: admission.shadow,
    }
}
