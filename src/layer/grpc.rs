//! Refusing gRPC calls the way gRPC does: a trailers-only response (HTTP
//! 200, `content-type: application/grpc`, `grpc-status`, `grpc-message`)
//! and, for `RESOURCE_EXHAUSTED`, a `google.rpc.RetryInfo` in
//! `grpc-status-details-bin`, which gRPC clients read instead of
//! `Retry-After`.

use std::cell::RefCell;

use base64::Engine as _;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response};

use super::{Refusal, RefusalResponse};

pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");

/// The gRPC status codes the layer answers with.
const INVALID_ARGUMENT: i32 = 3;
const PERMISSION_DENIED: i32 = 7;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

/// Whether a request is a gRPC call: its `content-type` is
/// `application/grpc`, or `application/grpc+proto` and the like.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| has_media_prefix(v, b"application/grpc"))
}

/// Whether a media type starts with `prefix` (lowercase); media types are
/// case-insensitive (RFC 9110 §8.3.1), so `Application/GRPC` is gRPC too.
pub(crate) fn has_media_prefix(value: &http::HeaderValue, prefix: &[u8]) -> bool {
    value
        .as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

impl Refusal {
    /// The gRPC status code a gRPC call is refused with: 16
    /// `UNAUTHENTICATED` (missing or unknown key), 7 `PERMISSION_DENIED`
    /// (disabled key, no plan), 8 `RESOURCE_EXHAUSTED` (throttled, quota
    /// spent), 14 `UNAVAILABLE` (store down, fail-closed), 3
    /// `INVALID_ARGUMENT` (bad path).
    ///
    /// ```
    /// use tower_usage_plans::Refusal;
    ///
    /// assert_eq!(Refusal::MissingKey.grpc_code(), 16);
    /// assert_eq!(Refusal::QuotaExceeded.grpc_code(), 8);
    /// ```
    pub fn grpc_code(self) -> i32 {
        match self {
            Self::MissingKey | Self::InvalidKey => UNAUTHENTICATED,
            Self::DisabledKey | Self::NoPlan => PERMISSION_DENIED,
            Self::Throttled | Self::QuotaExceeded => RESOURCE_EXHAUSTED,
            Self::StoreUnavailable => UNAVAILABLE,
            Self::BadPath => INVALID_ARGUMENT,
        }
    }
}

/// Refuses every request as a gRPC call, with an empty body of any
/// `Default` type: the refusal for a tonic server, whose body type
/// (`tonic::body::Body`) cannot be built from bytes. ([`AwsRefusal`]
/// answers gRPC calls the same way, and other requests as AWS does.)
///
/// [`AwsRefusal`]: super::AwsRefusal
///
/// ```
/// use tower_usage_plans::{GrpcRefusal, Refusal, RefusalResponse};
///
/// let response: http::Response<String> = GrpcRefusal.response(Refusal::Throttled);
/// assert_eq!(response.status(), 200);
/// assert_eq!(response.headers()["content-type"], "application/grpc");
/// assert_eq!(response.headers()["grpc-status"], "8");
/// assert_eq!(response.headers()["grpc-message"], "Too Many Requests");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcRefusal;

impl<B: Default> RefusalResponse<B> for GrpcRefusal {
    fn response(&self, refusal: Refusal) -> Response<B> {
        trailers_only(refusal, B::default())
    }
}

/// A trailers-only gRPC response: the status in the headers, no message.
pub(crate) fn trailers_only<B>(refusal: Refusal, body: B) -> Response<B> {
    let mut response = Response::new(body);
    // Room for these three, the rate-limit ones, `Retry-After` and the
    // details without growing the map.
    *response.headers_mut() = HeaderMap::with_capacity(8);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        GRPC_STATUS.clone(),
        HeaderValue::from_static(code_text(refusal)),
    );
    // Spaces and other printable ASCII but `%` need no percent-encoding.
    headers.insert(
        GRPC_MESSAGE.clone(),
        HeaderValue::from_static(refusal.message()),
    );
    response
}

/// A gRPC-Web call (`application/grpc-web…`) reads its answer as the media
/// type it sent: a refusal built as `application/grpc` takes the
/// request's. (The trailers-only answer has no body to encode, so
/// `grpc-web-text` needs nothing more.)
pub(crate) fn answer_grpc_web_as_asked(request: &HeaderMap, response: &mut HeaderMap) {
    let Some(asked) = request.get(header::CONTENT_TYPE) else {
        return;
    };
    let built_as_grpc = response
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/grpc");
    if built_as_grpc && has_media_prefix(asked, b"application/grpc-web") {
        response.insert(header::CONTENT_TYPE, asked.clone());
    }
}

/// [`Refusal::grpc_code`] as the text of `grpc-status`, without formatting
/// or allocating it.
fn code_text(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::MissingKey | Refusal::InvalidKey => "16",
        Refusal::DisabledKey | Refusal::NoPlan => "7",
        Refusal::Throttled | Refusal::QuotaExceeded => "8",
        Refusal::StoreUnavailable => "14",
        Refusal::BadPath => "3",
    }
}

/// Adds the `google.rpc.RetryInfo` to a refusal answered with
/// `RESOURCE_EXHAUSTED` (unless its builder gave details of its own).
pub(crate) fn add_retry_info(headers: &mut HeaderMap, refusal: Refusal, retry_after_secs: u64) {
    let exhausted = headers
        .get(&GRPC_STATUS)
        .is_some_and(|v| v.as_bytes() == b"8");
    if exhausted && !headers.contains_key(&GRPC_STATUS_DETAILS) {
        headers.insert(
            GRPC_STATUS_DETAILS.clone(),
            status_details(refusal, retry_after_secs),
        );
    }
}

thread_local! {
    /// The last details this thread built: the refusals of a flood, in the
    /// same second, share one value (a clone) instead of encoding each.
    static LAST_DETAILS: RefCell<Option<(Refusal, u64, HeaderValue)>> = const { RefCell::new(None) };
}

/// `grpc-status-details-bin`: a `google.rpc.Status` whose details hold one
/// `google.rpc.RetryInfo`, base64 without padding (as gRPC writes binary
/// metadata; readers accept either).
fn status_details(refusal: Refusal, retry_after_secs: u64) -> HeaderValue {
    LAST_DETAILS.with_borrow_mut(|last| match last {
        Some((r, secs, value)) if *r == refusal && *secs == retry_after_secs => value.clone(),
        _ => {
            let value = encode_status_details(refusal, retry_after_secs);
            *last = Some((refusal, retry_after_secs, value.clone()));
            value
        }
    })
}

fn encode_status_details(refusal: Refusal, retry_after_secs: u64) -> HeaderValue {
    use prost::Message as _;
    let retry_info = proto::RetryInfo {
        retry_delay: Some(proto::Duration {
            seconds: i64::try_from(retry_after_secs).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    };
    let status = proto::Status {
        code: refusal.grpc_code(),
        message: refusal.message().to_owned(),
        details: vec![proto::Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".to_owned(),
            value: retry_info.encode_to_vec(),
        }],
    };
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.encode_to_vec());
    HeaderValue::try_from(encoded).expect("base64 is a valid header value")
}

/// The messages of `google/rpc/status.proto`, `google/rpc/error_details.proto`
/// and the two well-known types they use, declared for prost's derive (no
/// protoc): only the fields the layer writes.
mod proto {
    /// `google.rpc.Status`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Status {
        #[prost(int32, tag = "1")]
        pub(super) code: i32,
        #[prost(string, tag = "2")]
        pub(super) message: String,
        #[prost(message, repeated, tag = "3")]
        pub(super) details: Vec<Any>,
    }

    /// `google.protobuf.Any`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Any {
        #[prost(string, tag = "1")]
        pub(super) type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub(super) value: Vec<u8>,
    }

    /// `google.rpc.RetryInfo`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        pub(super) retry_delay: Option<Duration>,
    }

    /// `google.protobuf.Duration`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Duration {
        #[prost(int64, tag = "1")]
        pub(super) seconds: i64,
        #[prost(int32, tag = "2")]
        pub(super) nanos: i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn details_decode_as_status_with_retry_info() {
        let value = status_details(Refusal::QuotaExceeded, 3600);
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(value.as_bytes())
            .unwrap();
        let status = proto::Status::decode(bytes.as_slice()).unwrap();
        assert_eq!(status.code, 8);
        assert_eq!(status.message, "Limit Exceeded");
        assert_eq!(
            status.details[0].type_url,
            "type.googleapis.com/google.rpc.RetryInfo"
        );
        let info = proto::RetryInfo::decode(status.details[0].value.as_slice()).unwrap();
        assert_eq!(info.retry_delay.unwrap().seconds, 3600);
    }

    #[test]
    fn a_repeated_refusal_shares_its_details_and_a_new_delay_gets_its_own() {
        let first = status_details(Refusal::Throttled, 2);
        assert_eq!(status_details(Refusal::Throttled, 2), first);
        assert_ne!(status_details(Refusal::Throttled, 3), first);
        assert_ne!(
            status_details(Refusal::QuotaExceeded, 3),
            status_details(Refusal::Throttled, 3)
        );
    }

    #[test]
    fn only_resource_exhausted_gets_details() {
        let mut forbidden = trailers_only(Refusal::InvalidKey, ())
            .into_parts()
            .0
            .headers;
        add_retry_info(&mut forbidden, Refusal::InvalidKey, 1);
        assert!(!forbidden.contains_key("grpc-status-details-bin"));
        let mut throttled = trailers_only(Refusal::Throttled, ()).into_parts().0.headers;
        add_retry_info(&mut throttled, Refusal::Throttled, 1);
        assert!(throttled.contains_key("grpc-status-details-bin"));
    }

    #[test]
    fn code_texts_are_the_codes() {
        for refusal in [
            Refusal::MissingKey,
            Refusal::InvalidKey,
            Refusal::DisabledKey,
            Refusal::NoPlan,
            Refusal::Throttled,
            Refusal::QuotaExceeded,
            Refusal::StoreUnavailable,
            Refusal::BadPath,
        ] {
            assert_eq!(code_text(refusal), refusal.grpc_code().to_string());
        }
    }

    #[test]
    fn content_types() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            "application/grpc+proto".parse().unwrap(),
        );
        assert!(is_grpc(&headers));
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(!is_grpc(&headers));
    }

    #[test]
    fn a_grpc_web_refusal_answers_in_the_media_type_asked() {
        let refused = |asked: &str| {
            let mut request = HeaderMap::new();
            request.insert(header::CONTENT_TYPE, asked.parse().unwrap());
            let mut response = trailers_only(Refusal::Throttled, ()).into_parts().0.headers;
            answer_grpc_web_as_asked(&request, &mut response);
            response[header::CONTENT_TYPE].clone()
        };
        assert_eq!(refused("application/grpc"), "application/grpc");
        assert_eq!(refused("application/grpc+proto"), "application/grpc");
        assert_eq!(
            refused("application/grpc-web+proto"),
            "application/grpc-web+proto"
        );
        assert_eq!(
            refused("application/grpc-web-text"),
            "application/grpc-web-text"
        );
    }
}
