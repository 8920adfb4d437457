//! gRPC calls through the gateway: they go to the upstream over HTTP/2
//! (prior knowledge for `http://`), on a pooled client of their own, and
//! the gateway's own failures answer them as gRPC statuses.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, Error};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::GatewayBody;
use super::edge::BodyFailure;
use super::error::chain;
use super::first_frame::{is_not_http2, CheckFirstFrame, Http2Seen};
use crate::layer::is_grpc;

/// Whether a request is a gRPC call that needs HTTP/2 end to end: gRPC-Web
/// (`application/grpc-web…`) is meant for HTTP/1.1 and goes as any request.
pub(crate) fn is_call(headers: &HeaderMap) -> bool {
    is_grpc(headers)
        && !headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| crate::layer::has_media_prefix(v, b"application/grpc-web"))
}

/// A pooled HTTP/2-only client: every call to an upstream is a stream on
/// one of its connections.
#[derive(Clone, Debug)]
pub(crate) struct H2Client {
    client: Client<CheckFirstFrame<HttpsConnector<HttpConnector>>, GatewayBody>,
    /// What its connections have shown.
    upstream: Arc<Http2Seen>,
}

impl H2Client {
    /// Cleartext HTTP/2 (prior knowledge) to an `http://` upstream; TLS
    /// with ALPN `h2`, verified by `tls`, to an `https://` one.
    pub(crate) fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let connector = CheckFirstFrame::new(super::tls::upstream_connector(
            tls,
            super::tls::UpstreamHttp::Http2,
        ));
        let upstream = connector.seen();
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            // The head's bound is the proxy's (64 KiB, as for HTTP/1, a
            // 502 past it): the HTTP/2 default (16 KiB) broke off every
            // answer with a larger head (helper 82: a 16,300-byte header).
            // Twice that bound, as HTTP/2 counts 32 bytes more a field.
            .http2_max_header_list_size(2 * super::proxy::UPSTREAM_HEAD_LIMIT as u32)
            // The idle timeout is kept only with a timer.
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self { client, upstream }
    }

    /// Whether the call that failed with `error` never reached an
    /// upstream handler, so that it costs nothing: the upstream could not
    /// be reached, refused its stream, or does not speak HTTP/2 (its call
    /// failed on that, or on the connection that failed on it).
    pub(crate) fn never_processed(&self, error: &Error) -> bool {
        error.is_connect()
            || refused_unprocessed(error)
            || (self.upstream.never_spoke() && closed_under_the_call(error))
    }

    /// Sends a call (absolute URI) as HTTP/2, with `te: trailers`, which
    /// gRPC servers may require and the hop-by-hop filter took away.
    pub(crate) async fn send(
        &self,
        mut request: Request<GatewayBody>,
    ) -> Result<Response<Incoming>, Error> {
        *request.version_mut() = http::Version::HTTP_2;
        request
            .headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
        self.client.request(request).await
    }
}

/// Whether the upstream refused the call's stream with `REFUSED_STREAM`,
/// which RFC 9113 §8.7 guarantees it did not process, or never spoke
/// HTTP/2 on its connection (its first frame was not SETTINGS: see
/// [`first_frame`](super::first_frame)): the call costs nothing, as for an
/// upstream that could not be reached. (A `GOAWAY` says as much only of
/// the streams above its last id, which `h2` reports with the same error
/// as the streams below it that were cut off: those stay charged.)
fn refused_unprocessed(error: &(dyn std::error::Error + 'static)) -> bool {
    chain(error).any(|error| {
        // hyper hands on an I/O error of `h2`'s as an I/O error.
        let io = error
            .downcast_ref::<std::io::Error>()
            .or_else(|| error.downcast_ref::<h2::Error>()?.get_io());
        let refused = error
            .downcast_ref::<h2::Error>()
            .is_some_and(|h2| h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        refused || io.is_some_and(is_not_http2)
    })
}

/// Whether the call failed because its connection ended before it had an
/// answer: hyper cancelled it, or `h2` closed its stream with a generic
/// I/O error (the connection's own error, which says why, goes to neither).
fn closed_under_the_call(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
    chain(error).any(|error| {
        let cancelled = error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled);
        let cut = error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.kind(), BrokenPipe | ConnectionReset | UnexpectedEof));
        cancelled || cut
    })
}

/// The gateway's own failure (`status`: 502, 504, 408, 431…) as a
/// trailers-only gRPC status: `UNAVAILABLE` for 502/503,
/// `DEADLINE_EXCEEDED` for timeouts, `UNIMPLEMENTED` for 501 and 405,
/// `INVALID_ARGUMENT` for 400, `RESOURCE_EXHAUSTED` for a request too large
/// (413, 414, 431), `INTERNAL` otherwise.
pub(crate) fn error<B: From<Bytes>>(status: StatusCode, message: &str) -> Response<B> {
    let code: u16 = match status {
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => 14,
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => 4,
        StatusCode::NOT_IMPLEMENTED | StatusCode::METHOD_NOT_ALLOWED => 12,
        StatusCode::BAD_REQUEST => 3,
        StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::URI_TOO_LONG
        | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => 8,
        _ => 13,
    };
    let mut response = Response::new(B::from(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(crate::layer::GRPC_STATUS.clone(), code.into());
    if let Ok(message) = HeaderValue::from_str(message) {
        headers.insert("grpc-message", message);
    }
    response
}

/// The trailers that end a call whose answer broke off mid-stream: 4
/// `DEADLINE_EXCEEDED` when its client sent nothing within the body read
/// timeout, 1 `CANCELLED` when the client's own stream broke, else 14
/// `UNAVAILABLE` (the upstream's stream broke).
pub(crate) fn broken_off(request: Option<BodyFailure>) -> HeaderMap {
    let (code, message) = match request {
        Some(BodyFailure::Timeout) => {
            (4u16, "no data from the client within the body read timeout")
        }
        Some(BodyFailure::Client | BodyFailure::Abandoned) => (1, "the client's stream broke off"),
        None => (14, "the upstream's stream broke off"),
    };
    let mut trailers = HeaderMap::new();
    trailers.insert(crate::layer::GRPC_STATUS.clone(), code.into());
    trailers.insert("grpc-message", HeaderValue::from_static(message));
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_web_is_not_an_http2_call() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/grpc".parse().unwrap());
        assert!(is_call(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            "application/grpc-web+proto".parse().unwrap(),
        );
        assert!(!is_call(&headers));
    }

    #[test]
    fn gateway_failures_map_to_grpc_codes() {
        for (status, code) in [
            (StatusCode::BAD_GATEWAY, "14"),
            (StatusCode::GATEWAY_TIMEOUT, "4"),
            (StatusCode::REQUEST_TIMEOUT, "4"),
            (StatusCode::BAD_REQUEST, "3"),
            (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "8"),
            (StatusCode::URI_TOO_LONG, "8"),
            (StatusCode::INTERNAL_SERVER_ERROR, "13"),
        ] {
            let answer: Response<GatewayBody> = error(status, "why");
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.headers()["grpc-status"], code, "{status}");
            assert_eq!(answer.headers()["grpc-message"], "why");
        }
    }
}
