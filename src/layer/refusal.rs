use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// Why the layer refused a request. Put into the refusal's response
/// extensions, so outer layers can tell the cases apart.
///
/// ```
/// use http::StatusCode;
/// use tower_usage_plans::Refusal;
///
/// assert_eq!(Refusal::QuotaExceeded.status(), StatusCode::TOO_MANY_REQUESTS);
/// assert_eq!(Refusal::QuotaExceeded.message(), "Limit Exceeded");
/// assert_eq!(Refusal::DisabledKey.status(), StatusCode::FORBIDDEN);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The request carried no API key (403).
    MissingKey,
    /// No key has this value (403).
    InvalidKey,
    /// The key is disabled (403).
    DisabledKey,
    /// The key is in no plan covering this stage (403).
    NoPlan,
    /// The throttle's bucket is empty (429 "Too Many Requests").
    Throttled,
    /// The quota of the period is used up (429 "Limit Exceeded").
    QuotaExceeded,
    /// The counter store failed and the policy is fail-closed (503).
    StoreUnavailable,
    /// The path has control characters (`%00`), `;` or `%3B`, `\` or
    /// `%5C`, or a broken `%` escape: upstreams disagree on what it names,
    /// so it is refused before any key or counter is looked at (400 "Bad
    /// Request").
    BadPath,
}

impl Refusal {
    /// The HTTP status AWS answers with.
    ///
    /// ```
    /// use tower_usage_plans::Refusal;
    ///
    /// assert_eq!(Refusal::Throttled.status(), 429);
    /// assert_eq!(Refusal::NoPlan.status(), 403);
    /// ```
    pub fn status(self) -> StatusCode {
        match self {
            Self::MissingKey | Self::InvalidKey | Self::DisabledKey | Self::NoPlan => {
                StatusCode::FORBIDDEN
            }
            Self::Throttled | Self::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadPath => StatusCode::BAD_REQUEST,
        }
    }

    /// The `message` of AWS's JSON body.
    ///
    /// ```
    /// use tower_usage_plans::Refusal;
    ///
    /// assert_eq!(Refusal::Throttled.message(), "Too Many Requests");
    /// assert_eq!(Refusal::InvalidKey.message(), "Forbidden");
    /// ```
    pub fn message(self) -> &'static str {
        match self {
            Self::MissingKey | Self::InvalidKey | Self::DisabledKey | Self::NoPlan => "Forbidden",
            Self::Throttled => "Too Many Requests",
            Self::QuotaExceeded => "Limit Exceeded",
            Self::StoreUnavailable => "Service Unavailable",
            Self::BadPath => "Bad Request",
        }
    }

    /// AWS's error type, sent as `x-amzn-ErrorType`.
    ///
    /// ```
    /// use tower_usage_plans::Refusal;
    ///
    /// assert_eq!(Refusal::QuotaExceeded.error_type(), "LimitExceededException");
    /// ```
    pub fn error_type(self) -> &'static str {
        match self {
            Self::MissingKey | Self::InvalidKey | Self::DisabledKey | Self::NoPlan => {
                "ForbiddenException"
            }
            Self::Throttled => "TooManyRequestsException",
            Self::QuotaExceeded => "LimitExceededException",
            Self::StoreUnavailable => "ServiceUnavailableException",
            Self::BadPath => "BadRequestException",
        }
    }
}

/// Builds the response for a refused request. Implemented by
/// [`AwsRefusal`] and by closures `Fn(Refusal) -> Response<B>`.
///
/// ```
/// use http::Response;
/// use tower_usage_plans::{Refusal, RefusalResponse};
///
/// /// Plain-text refusals.
/// struct Plain;
///
/// impl RefusalResponse<String> for Plain {
///     fn response(&self, refusal: Refusal) -> Response<String> {
///         let mut response = Response::new(refusal.message().to_owned());
///         *response.status_mut() = refusal.status();
///         response
///     }
/// }
///
/// let response = Plain.response(Refusal::QuotaExceeded);
/// assert_eq!(response.status(), 429);
/// assert_eq!(response.body(), "Limit Exceeded");
/// ```
pub trait RefusalResponse<B> {
    /// The response for `refusal`; the layer then adds the rate-limit
    /// headers and puts `refusal` in its extensions.
    ///
    /// ```
    /// use tower_usage_plans::{AwsRefusal, Refusal, RefusalResponse};
    ///
    /// let response: http::Response<bytes::Bytes> = AwsRefusal.response(Refusal::Throttled);
    /// assert_eq!(response.body(), r#"{"message":"Too Many Requests"}"#);
    /// ```
    fn response(&self, refusal: Refusal) -> Response<B>;

    /// The response for `refusal` of a gRPC call (a request whose
    /// `content-type` starts with `application/grpc`); by default the same
    /// as [`response`](Self::response). If it answers with
    /// `grpc-status: 8` (`RESOURCE_EXHAUSTED`) and no
    /// `grpc-status-details-bin`, the layer adds one holding a
    /// `google.rpc.RetryInfo`.
    ///
    /// ```
    /// use tower_usage_plans::{AwsRefusal, Refusal, RefusalResponse};
    ///
    /// let response: http::Response<http_body_util::Full<bytes::Bytes>> =
    ///     AwsRefusal.grpc_response(Refusal::MissingKey);
    /// assert_eq!(response.status(), 200);
    /// assert_eq!(response.headers()["grpc-status"], "16");
    /// ```
    fn grpc_response(&self, refusal: Refusal) -> Response<B> {
        self.response(refusal)
    }
}

impl<B, F> RefusalResponse<B> for F
where
    F: Fn(Refusal) -> Response<B>,
{
    fn response(&self, refusal: Refusal) -> Response<B> {
        self(refusal)
    }
}

/// The default refusal: AWS's status, JSON body (`{"message":"Forbidden"}`,
/// `{"message":"Too Many Requests"}`, `{"message":"Limit Exceeded"}`) and
/// `x-amzn-ErrorType` header; gRPC calls get a trailers-only gRPC status
/// instead ([`Refusal::grpc_code`], `grpc-message` the same message).
///
/// ```
/// use tower_usage_plans::{AwsRefusal, Refusal, RefusalResponse};
///
/// let response: http::Response<http_body_util::Full<bytes::Bytes>> =
///     AwsRefusal.response(Refusal::QuotaExceeded);
/// assert_eq!(response.status(), 429);
/// assert_eq!(response.headers()["x-amzn-errortype"], "LimitExceededException");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsRefusal;

impl<B: From<Bytes>> RefusalResponse<B> for AwsRefusal {
    fn response(&self, refusal: Refusal) -> Response<B> {
        // The fixed messages need no JSON escaping.
        let body = format!(r#"{{"message":"{}"}}"#, refusal.message());
        aws_json_response(refusal.status(), body, refusal.error_type())
    }

    fn grpc_response(&self, refusal: Refusal) -> Response<B> {
        super::grpc::trailers_only(refusal, B::from(Bytes::new()))
    }
}

/// An AWS-shaped answer: `status`, the JSON `body` (already encoded), and
/// `x-amzn-ErrorType: error_type`. The layer's refusals and the gateway's
/// own answers are both made here.
pub(crate) fn aws_json_response<B: From<Bytes>>(
    status: StatusCode,
    body: String,
    error_type: &'static str,
) -> Response<B> {
    let mut response = Response::new(B::from(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-amzn-errortype", HeaderValue::from_static(error_type));
    response
}
