//! [`AdminService`]: the usage-plan and API-key subset of the Amazon API
//! Gateway REST API, wire-compatible with the AWS CLI, boto3 and the AWS
//! SDKs, over the same [`UsagePlans`] handle the layer reads.
//!
//! Every request must be signed with SigV4 (service `apigateway`, any
//! region) by one of the configured [`AdminCredentials`]. With the
//! `console` feature it also serves a web console at `/console/`: static
//! files, unsigned, whose page signs every API call itself in the browser.
//!
//! ```
//! use tower_usage_plans::admin::{AdminCredentials, AdminService};
//! use tower_usage_plans::UsagePlans;
//!
//! let plans = UsagePlans::new();
//! let admin = AdminService::new(plans.clone(), AdminCredentials::new().with_access_key("AKIDEXAMPLE", "local-secret"));
//! // Serve it on its own listener, or let an axum app hand it every route it
//! // does not serve itself. (Mount it at the root: SigV4 signs the path the
//! // client sent, so a prefix-stripping `nest_service` breaks signatures.)
//! let app: axum::Router = axum::Router::new()
//!     .route("/healthz", axum::routing::get(|| async { "ok" }))
//!     .fallback_service(admin);
//! # drop(app);
//! ```
//!
//! Then drive it with the AWS tools:
//! ```text
//! aws apigateway update-usage --usage-plan-id PLAN --key-id KEY \
//!     --patch-operations op=replace,path=/remaining,value=10 --endpoint-url http://127.0.0.1:8081
//! ```

#[cfg(feature = "console")]
mod console;
mod credentials;
mod import;
mod objects_only;
mod ops;
mod patch;
pub(crate) mod sigv4;
mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, BufMut, Bytes};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower_service::Service;

#[cfg(feature = "gateway")]
pub(crate) use credentials::comma_list;
pub use credentials::{AdminCredentials, CredentialsError};
use wire::AwsError;

use crate::UsagePlans;

/// The largest request body the admin API reads (1 MiB).
///
/// ```
/// use tower::ServiceExt;
/// use tower_usage_plans::admin::{AdminCredentials, AdminService, MAX_BODY_BYTES};
/// use tower_usage_plans::UsagePlans;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let admin = AdminService::new(UsagePlans::new(), AdminCredentials::new());
/// let request = http::Request::post("/usageplans").header("content-length", MAX_BODY_BYTES + 1);
/// let response = admin.oneshot(request.body(String::new()).unwrap()).await.unwrap();
/// assert_eq!(response.status(), 413);
/// # });
/// ```
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The admin API as a tower `Service`: parses AWS wire requests, calls
/// [`UsagePlans`], renders AWS wire responses and errors. It keeps no state
/// of its own; clones are cheap.
///
/// ```
/// use tower::ServiceExt;
/// use tower_usage_plans::admin::{AdminCredentials, AdminService};
/// use tower_usage_plans::UsagePlans;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let credentials = AdminCredentials::new().with_access_key("AKIDEXAMPLE", "secret");
/// let admin = AdminService::new(UsagePlans::new(), credentials);
/// // An unsigned request is refused, as by AWS.
/// let response = admin.oneshot(http::Request::get("/usageplans").body(String::new()).unwrap()).await.unwrap();
/// assert_eq!(response.status(), 403);
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct AdminService {
    inner: Arc<Inner>,
}

#[derive(Debug, Clone)]
struct Inner {
    plans: UsagePlans,
    credentials: AdminCredentials,
    /// The regions a credential scope may name; empty: any.
    regions: Vec<String>,
    /// UpdateUsage takes `add /remaining` (see [`AdminService::with_top_ups`]).
    top_ups: bool,
    /// A change made here that the other replicas could not be reached to
    /// confirm, not shared since: the next refusal says so.
    unconfirmed: Arc<AtomicBool>,
}

impl AdminService {
    /// The admin API over `plans`, accepting requests signed by
    /// `credentials` (none: every request is refused).
    ///
    /// ```
    /// # use tower::ServiceExt;
    /// # use tower_usage_plans::admin::{AdminCredentials, AdminService};
    /// # use tower_usage_plans::UsagePlans;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let admin = AdminService::new(UsagePlans::new(), AdminCredentials::new());
    /// let response = admin.oneshot(http::Request::get("/apikeys").body(String::new()).unwrap()).await.unwrap();
    /// assert_eq!(response.status(), 403); // no credentials: nobody gets in
    /// # });
    /// ```
    pub fn new(plans: UsagePlans, credentials: AdminCredentials) -> Self {
        Self {
            inner: Arc::new(Inner {
                plans,
                credentials,
                regions: Vec::new(),
                top_ups: false,
                unconfirmed: Arc::default(),
            }),
        }
    }

    /// Accepts only signatures whose credential scope names one of
    /// `regions` (compared exactly: `us-east-1`, not `US-EAST-1`); any
    /// other gets 403 `InvalidSignatureException` "Credential should be
    /// scoped to a valid region, not '`<region>`'.". Without regions (the
    /// default) any region is accepted.
    ///
    /// ```
    /// use tower_usage_plans::admin::{AdminCredentials, AdminService};
    /// use tower_usage_plans::UsagePlans;
    ///
    /// let admin = AdminService::new(UsagePlans::new(), AdminCredentials::new())
    ///     .with_regions(["us-east-1", "eu-west-1"]);
    /// # drop(admin);
    /// ```
    pub fn with_regions<I, R>(mut self, regions: I) -> Self
    where
        I: IntoIterator<Item = R>,
        R: Into<String>,
    {
        Arc::make_mut(&mut self.inner).regions = regions.into_iter().map(Into::into).collect();
        self
    }

    /// Takes `add /remaining` in UpdateUsage (`PATCH
    /// /usageplans/{id}/keys/{keyId}/usage`), this crate's extension: the
    /// key's remaining quota moves by the signed value in one atomic step
    /// ([`UsagePlans::add_remaining`]), floored at 0, and `add` must be the
    /// only operation. Off by default: as AWS, UpdateUsage then takes
    /// `replace /remaining` only, and any other op is 400
    /// `BadRequestException`. The console offers its "Add to remaining"
    /// form only when this is on.
    ///
    /// ```
    /// use tower_usage_plans::admin::{AdminCredentials, AdminService};
    /// use tower_usage_plans::UsagePlans;
    ///
    /// let admin = AdminService::new(UsagePlans::new(), AdminCredentials::new()).with_top_ups(true);
    /// # drop(admin);
    /// ```
    pub fn with_top_ups(mut self, enabled: bool) -> Self {
        Arc::make_mut(&mut self.inner).top_ups = enabled;
        self
    }

    /// The handle this service changes.
    ///
    /// ```
    /// # use tower_usage_plans::admin::{AdminCredentials, AdminService};
    /// # use tower_usage_plans::{NewUsagePlan, UsagePlans};
    /// let plans = UsagePlans::new();
    /// let admin = AdminService::new(plans.clone(), AdminCredentials::new());
    /// plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// assert_eq!(admin.plans().plan_count(), 1); // the same registry
    /// ```
    pub fn plans(&self) -> &UsagePlans {
        &self.inner.plans
    }
}

impl<B> Service<Request<B>> for AdminService
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        #[cfg(feature = "console")]
        if let Some(page) = console::serve(
            request.method(),
            request.uri().path(),
            &inner.regions,
            inner.top_ups,
        ) {
            return Box::pin(std::future::ready(Ok(page)));
        }
        Box::pin(async move {
            let request_id = uuid::Uuid::new_v4().to_string();
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let mut response = inner
                .handle(request)
                .await
                .unwrap_or_else(AwsError::into_response);
            if let Ok(id) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert("x-amzn-requestid", id);
            }
            tracing::info!(%method, %path, status = response.status().as_u16(), request_id, "admin request");
            Ok(response)
        })
    }
}

impl Inner {
    async fn handle<B>(&self, request: Request<B>) -> wire::WireResult
    where
        B: http_body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let http1 = parts.version <= http::Version::HTTP_11;
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large(body, http1).await);
        }
        let mut body = std::pin::pin!(body);
        let mut read = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                AwsError::bad_request(format!("Could not read the request body: {e}"))
            })?;
            if let Ok(data) = frame.into_data() {
                if read.len() + data.remaining() > MAX_BODY_BYTES {
                    return Err(too_large(body, http1).await);
                }
                read.put(data);
            }
        }
        let body = Bytes::from(read);
        sigv4::verify(
            &parts,
            &body,
            &self.credentials,
            &self.regions,
            SystemTime::now(),
        )
        .map_err(|e| AwsError::new(StatusCode::FORBIDDEN, e.code(), e.message()))?;
        let segments = path_segments(parts.uri.path())?;
        let call = ops::Call {
            plans: &self.plans,
            top_ups: self.top_ups,
            query: wire::Query::parse(parts.uri.query()),
            body: &body,
        };
        let changes = parts.method != http::Method::GET;
        if changes {
            // With replicas, a change is made only while they can be
            // reached: a 503 then changed nothing, so an SDK's retry of it
            // (botocore retries 503s) cannot create a plan or key twice.
            // That retry's answer is the one the caller sees: it says
            // whether an earlier attempt's change holds here unconfirmed.
            if let Err(e) = self.plans.replicated().await {
                // Bad input is told as such all the same (not as a 503 that
                // a retry cannot mend): the call is tried on a copy of the
                // registry, and a 4xx it gets is the answer.
                let query = wire::Query::parse(parts.uri.query());
                if let Some(refused) = self
                    .refusal_of(&parts.method, &segments, query, &body)
                    .await
                {
                    return Err(refused);
                }
                let earlier = match self.unconfirmed.load(Ordering::Acquire) {
                    true => {
                        "; a change an earlier request made (this one's first attempt, or \
                         another caller's) holds on this replica, not yet confirmed by the \
                         others"
                    }
                    false => "",
                };
                return Err(AwsError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailableException",
                    format!(
                        "The other replicas could not be reached; nothing was changed by this \
                         request{earlier}: {e}"
                    ),
                ));
            }
            self.unconfirmed.store(false, Ordering::Release);
        }
        let answer = ops::dispatch(&parts.method, &segments, call)
            .await
            .inspect_err(|e| {
                // A change that failed on the way (a 5xx) may hold in part.
                if changes && e.status.is_server_error() {
                    self.unconfirmed.store(true, Ordering::Release);
                }
            })?;
        if changes {
            // A change is answered once every replica enforces it.
            self.plans.replicated().await.map_err(|e| {
                self.unconfirmed.store(true, Ordering::Release);
                AwsError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailableException",
                    format!(
                        "The change holds on this replica, but the other replicas could not \
                         be reached to confirm it: {e}"
                    ),
                )
            })?;
        }
        Ok(answer)
    }

    /// The 4xx a change would get (bad input, an unknown id, a conflict),
    /// found by making it on a copy of the registry, which is then
    /// dropped; `None` if it would be made.
    async fn refusal_of(
        &self,
        method: &http::Method,
        segments: &[String],
        query: wire::Query,
        body: &[u8],
    ) -> Option<AwsError> {
        let copy = self.plans.detached_copy().ok()?;
        let call = ops::Call {
            plans: &copy,
            top_ups: self.top_ups,
            query,
            body,
        };
        match ops::dispatch(method, segments, call).await {
            Err(refused) if refused.status.is_client_error() => Some(refused),
            _ => None,
        }
    }
}

/// The most of a body too large that is read (and dropped) before the 413.
const DRAINED_AT_MOST: u64 = 16 * MAX_BODY_BYTES as u64;

/// The 413 for a body over [`MAX_BODY_BYTES`]. On HTTP/1 the rest of the
/// body is read first, and dropped (up to [`DRAINED_AT_MOST`]), and the
/// connection then closes: closed on a client still sending, the socket's
/// reset can destroy the 413 before the client reads it (an SDK saw
/// `EPIPE` on bodies of 2 MB and more), and a connection left open would
/// fail the client's next request.
async fn too_large<B: http_body::Body>(body: B, http1: bool) -> AwsError {
    if http1 {
        let mut body = std::pin::pin!(body);
        let mut drained = 0u64;
        while drained <= DRAINED_AT_MOST {
            match body.frame().await {
                Some(Ok(frame)) => {
                    drained += frame.data_ref().map_or(0, |d| d.remaining() as u64);
                }
                _ => break,
            }
        }
    }
    AwsError {
        close: http1,
        ..AwsError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            format!("Request body is larger than {MAX_BODY_BYTES} bytes"),
        )
    }
}

/// Splits the raw path on `/`, then percent-decodes each segment (a `%2F`
/// inside an id stays part of the id). An empty segment is an id left
/// empty (`get_api_key(apiKey='')` asks for `/apikeys/`): no resource, not
/// the one beside it.
fn path_segments(path: &str) -> Result<Vec<String>, AwsError> {
    let path = path.strip_prefix('/').unwrap_or(path);
    if path.split('/').any(str::is_empty) {
        return Err(AwsError::not_found(format!(
            "Invalid path /{path}: an empty segment (an id left empty?)"
        )));
    }
    path.split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| AwsError::bad_request("Invalid path: segments must be UTF-8"))
        })
        .collect()
}
