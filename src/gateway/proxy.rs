//! Where admitted requests go: a pooled HTTP client to the upstream, or a
//! built-in echo that describes the request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

use super::body::GatewayBody;
use crate::UsageContext;

/// The largest request body the echo upstream reads back.
const ECHO_MAX_BODY: usize = 1024 * 1024;

/// The upstream of admitted requests.
#[derive(Clone, Debug)]
pub(crate) enum Upstream {
    Echo,
    Http {
        client: Box<Client<HttpConnector, Incoming>>,
        base: Uri,
        timeout: Duration,
    },
}

impl Upstream {
    pub(crate) fn new(base: Option<Uri>, timeout: Duration) -> Self {
        match base {
            None => Self::Echo,
            Some(base) => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                let client = Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .build(connector);
                Self::Http {
                    client: Box::new(client),
                    base,
                    timeout,
                }
            }
        }
    }
}

/// Forwards one connection's admitted requests.
#[derive(Clone, Debug)]
pub(crate) struct Proxy {
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) key_header: HeaderName,
    pub(crate) remote: SocketAddr,
}

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GatewayBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        self.prepare(&mut parts);
        let request = Request::from_parts(parts, body);
        let upstream = self.upstream.clone();
        Box::pin(async move {
            Ok(match &*upstream {
                Upstream::Echo => echo(request).await,
                Upstream::Http {
                    client,
                    base,
                    timeout,
                } => forward(client, base, *timeout, request).await,
            })
        })
    }
}

impl Proxy {
    /// What every upstream sees: no hop-by-hop headers, no API key, the key
    /// id instead, and the client in `x-forwarded-for` / `forwarded`.
    fn prepare(&self, parts: &mut http::request::Parts) {
        let original_host = parts.headers.get(header::HOST).cloned();
        prepare_headers(
            &mut parts.headers,
            &self.key_header,
            self.remote,
            original_host,
        );
        if let Some(usage) = parts.extensions.get::<UsageContext>() {
            if let Ok(id) = HeaderValue::from_str(usage.key_id()) {
                parts.headers.insert("x-api-key-id", id);
            }
        }
    }
}

async fn forward(
    client: &Client<HttpConnector, Incoming>,
    base: &Uri,
    timeout: Duration,
    request: Request<Incoming>,
) -> Response<GatewayBody> {
    let (mut parts, body) = request.into_parts();
    parts.uri = match upstream_uri(base, &parts.uri) {
        Some(uri) => uri,
        None => return error(StatusCode::BAD_GATEWAY, "Bad Gateway"),
    };
    if let Some(authority) = base
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, authority);
    }
    parts.version = http::Version::HTTP_11;
    let started = super::metrics::enabled().then(Instant::now);
    let result =
        tokio::time::timeout(timeout, client.request(Request::from_parts(parts, body))).await;
    if let Some(started) = started {
        metrics::histogram!("usage_plans_upstream_duration_seconds")
            .record(started.elapsed().as_secs_f64());
    }
    match result {
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, GatewayBody::from(body))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "upstream request failed");
            error(StatusCode::BAD_GATEWAY, "Bad Gateway")
        }
        Err(_) => {
            tracing::warn!(?timeout, "upstream timed out");
            error(StatusCode::GATEWAY_TIMEOUT, "Endpoint request timed out")
        }
    }
}

/// `base` + the request's path and query.
fn upstream_uri(base: &Uri, request: &Uri) -> Option<Uri> {
    let prefix = base.path().trim_end_matches('/');
    let path_and_query = request.path_and_query().map_or("/", |pq| pq.as_str());
    Uri::builder()
        .scheme(base.scheme_str()?)
        .authority(base.authority()?.as_str())
        .path_and_query(format!("{prefix}{path_and_query}"))
        .build()
        .ok()
}

/// Removes hop-by-hop headers and the client's API key; records the client
/// in `x-forwarded-for` and `forwarded`.
fn prepare_headers(
    headers: &mut HeaderMap,
    key_header: &HeaderName,
    remote: SocketAddr,
    host: Option<HeaderValue>,
) {
    strip_hop_by_hop(headers);
    headers.remove(key_header);
    headers.remove("x-api-key-id");
    let ip = remote.ip().to_string();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {ip}"),
        None => ip.clone(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    let node = if remote.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip
    };
    let mut element = format!("for={node};proto=http");
    if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
        element.push_str(&format!(";host=\"{host}\""));
    }
    let forwarded = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {element}"),
        None => element,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, value);
    }
    if let Some(host) = host {
        headers.insert("x-forwarded-host", host);
    }
}

/// RFC 9110 §7.6.1: headers meant for one connection only.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

/// An AWS-style JSON error from the gateway itself.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<GatewayBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = Response::new(GatewayBody::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// 200 with a JSON description of the request.
async fn echo(request: Request<Incoming>) -> Response<GatewayBody> {
    let (parts, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, ECHO_MAX_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "Request Too Long"),
    };
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            )
        })
        .collect();
    let description = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "keyId": parts.extensions.get::<UsageContext>().map(UsageContext::key_id),
        "usagePlanId": parts.extensions.get::<UsageContext>().map(UsageContext::plan_id),
    });
    let mut response = Response::new(GatewayBody::from(Bytes::from(description.to_string())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
