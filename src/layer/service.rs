use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response, Uri};
use tower_service::Service;

use super::decide::{Admission, Config, Next, Pending};
use super::future::ResponseFuture;
use super::{Refusal, RefusalResponse, UsageContext};
use crate::key::RequestHead;
use crate::route::canonical;

/// The middleware built by [`UsagePlanLayer`](super::UsagePlanLayer).
/// Refusals are answered in `call`, without calling the inner service.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_usage_plans::{UsagePlanLayer, UsagePlans};
///
/// let inner = service_fn(|_request: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::from("hi")))
/// });
/// let service = UsagePlanLayer::new(UsagePlans::new()).layer(inner);
/// // No key: refused in `call`, the inner service never runs.
/// let response = service.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(response.status(), 403);
/// # }
/// ```
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
    ///
    /// ```
    /// use tower::Layer;
    /// use tower_usage_plans::{UsagePlanLayer, UsagePlans};
    ///
    /// let service = UsagePlanLayer::new(UsagePlans::new()).layer("inner");
    /// assert_eq!(*service.get_ref(), "inner");
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    ///
    /// ```
    /// use tower::Layer;
    /// use tower_usage_plans::{UsagePlanLayer, UsagePlans};
    ///
    /// let mut service = UsagePlanLayer::new(UsagePlans::new()).layer(1);
    /// *service.get_mut() += 1;
    /// assert_eq!(*service.get_ref(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    ///
    /// ```
    /// use tower::Layer;
    /// use tower_usage_plans::{UsagePlanLayer, UsagePlans};
    ///
    /// let service = UsagePlanLayer::new(UsagePlans::new()).layer(String::from("inner"));
    /// assert_eq!(service.into_inner(), "inner");
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R> UsagePlanService<S, R> {
    fn refuse_bad_path<ReqBody, ResBody>(
        &self,
        request_headers: &HeaderMap,
    ) -> ResponseFuture<S, ReqBody, R>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        R: RefusalResponse<ResBody>,
    {
        ResponseFuture::refused(self.config.refuse(
            &self.refusal,
            request_headers,
            Refusal::BadPath,
            None,
        ))
    }
}

/// `uri` with its path replaced (scheme, authority and query kept).
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(query) => PathAndQuery::try_from(format!("{path}?{query}")),
        None => PathAndQuery::try_from(path),
    }
    .ok()?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
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
        // The path that is matched is the path that is passed on.
        let path = match canonical(request.uri().path()) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(path)) => Some(path),
            Err(_) => return self.refuse_bad_path(request.headers()),
        };
        if let Some(path) = path {
            match with_path(request.uri(), &path) {
                Some(uri) => *request.uri_mut() = uri,
                None => return self.refuse_bad_path(request.headers()),
            }
        }
        let head = RequestHead::of(&request);
        if self.config.is_unmetered(&head) {
            return ResponseFuture::forward(self.inner.call(request));
        }
        let Pending {
            mut decision,
            policy,
            context,
            recheck,
        } = match self.config.start(&head) {
            Ok(pending) => pending,
            Err(reason) if self.config.shadow => {
                let admission = Admission::shadowed(reason, None);
                return ResponseFuture::admitted(&mut self.inner, request, None, admission);
            }
            Err(reason) => {
                return ResponseFuture::refused(self.config.refuse(
                    &self.refusal,
                    request.headers(),
                    reason,
                    None,
                ))
            }
        };
        let Some(answer) = decision.take_ready() else {
            // The store answers later: the ready inner service goes with the
            // future, a fresh clone stays here.
            let fresh = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, fresh);
            return ResponseFuture::deciding(
                decision,
                ready,
                request,
                context,
                self.config.clone(),
                self.refusal.clone(),
                recheck,
            );
        };
        match self
            .config
            .finish(&self.refusal, request.headers(), answer, policy)
        {
            Next::Forward(admission) => {
                ResponseFuture::admitted(&mut self.inner, request, context, admission)
            }
            Next::Refuse(mut response) => {
                name_the_key(context.as_ref(), &mut response);
                ResponseFuture::refused(response)
            }
        }
    }
}

/// A refusal for a known key (throttled, quota spent, store down) names
/// it for outer layers — an access log, say — as admitted requests do: a
/// [`UsageContext`] without its charge (a clone holds none; nothing was
/// charged) in the response extensions.
#[cold]
pub(crate) fn name_the_key<C>(context: Option<&UsageContext>, response: &mut Response<C>) {
    if let Some(context) = context {
        response.extensions_mut().insert(context.clone());
    }
}
