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
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use super::access::Exchange;
use super::body::GatewayBody;
use super::connection::{OwnConnection, OwnError, SpareConnections};
use super::edge::{self, BodyWatch, EdgeBody};
use super::grpc;
use super::websocket;
use crate::{Charge, Refunded, UsageContext};

/// The largest request body the echo upstream reads back.
const ECHO_MAX_BODY: usize = 1024 * 1024;

/// The upstream of admitted requests.
#[derive(Clone, Debug)]
pub(crate) enum Upstream {
    Echo,
    Http(Box<HttpUpstream>),
}

/// A pooled client and what every forwarded request shares, computed once.
#[derive(Clone, Debug)]
pub(crate) struct HttpUpstream {
    client: Client<HttpsConnector<HttpConnector>, GatewayBody>,
    scheme: Scheme,
    authority: Authority,
    /// The base URL's path without its trailing `/` (often empty).
    prefix: Box<str>,
    /// `Host` for the upstream: its authority.
    host: HeaderValue,
    timeout: Duration,
    /// Upstream connections of ended client connections.
    spares: Arc<SpareConnections>,
    /// gRPC calls' client: HTTP/2.
    h2: grpc::H2Client,
}

impl Upstream {
    /// The echo without `base`; else `base` (an `http(s)://host:port[/path]`
    /// URL, as the configuration checks) with a pooled client; `tls` for
    /// an `https://` base.
    pub(crate) fn new(
        base: Option<Uri>,
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let Some(base) = base else {
            return Self::Echo;
        };
        // A burst of concurrent requests opens as many connections; once
        // idle, all but `MAX_SPARES` close (a client could otherwise leave
        // the gateway holding thousands, and its file descriptors).
        let client = Client::builder(TokioExecutor::new())
            // The idle timeout is kept only with a timer.
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(super::connection::MAX_SPARES)
            .build(super::tls::upstream_connector(
                tls.clone(),
                super::tls::UpstreamHttp::Http1,
            ));
        let parts = base.into_parts();
        let scheme = parts.scheme.unwrap_or(Scheme::HTTP);
        let authority = parts
            .authority
            .unwrap_or_else(|| Authority::from_static("localhost"));
        let prefix = parts
            .path_and_query
            .as_ref()
            .map_or("", |pq| pq.path().trim_end_matches('/'))
            .into();
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Self::Http(Box::new(HttpUpstream {
            client,
            scheme,
            authority,
            prefix,
            host,
            timeout,
            spares: Arc::new(SpareConnections::with_tls(tls.clone())),
            h2: grpc::H2Client::new(tls),
        }))
    }
}

/// Forwards one connection's admitted requests.
#[derive(Clone, Debug)]
pub(crate) struct Proxy {
    upstream: Arc<Upstream>,
    key_header: HeaderName,
    client: Arc<ClientAddress>,
    own: Arc<OwnConnection>,
}

/// The client of one connection, as the forwarding headers name it.
#[derive(Debug)]
struct ClientAddress {
    ip: HeaderValue,
    /// `for=…;proto=http` (or `https`), a `forwarded` element without its
    /// host.
    forwarded: String,
}

impl Proxy {
    /// The proxy of one client connection from `remote`, which came in over
    /// `proto` (`"http"` or `"https"`).
    pub(crate) fn new(
        upstream: Arc<Upstream>,
        key_header: HeaderName,
        remote: SocketAddr,
        proto: &'static str,
    ) -> Self {
        let ip = remote.ip().to_string();
        let node = if remote.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.clone()
        };
        let client = ClientAddress {
            ip: HeaderValue::from_str(&ip).expect("an IP address is a valid header value"),
            forwarded: format!("for={node};proto={proto}"),
        };
        let spares = match &*upstream {
            Upstream::Http(http) => http.spares.clone(),
            Upstream::Echo => Arc::default(),
        };
        Self {
            upstream,
            key_header,
            client: Arc::new(client),
            own: Arc::new(OwnConnection::new(spares)),
        }
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<GatewayBody>, Infallible>> + Send>>;

/// The proxy's work on one request. Dropped before it is done — the client
/// reset its HTTP/2 stream, or closed its connection — it goes on by
/// itself: an admitted request is delivered to the upstream as if the
/// client had stayed, so it is charged exactly when the upstream had it
/// (one the upstream cannot be reached for, or whose body fails, is given
/// back as ever). Cut off instead, a request could be charged and never
/// written (hyper drops a cancelled request before writing it), or have
/// reached the upstream unknown to the gateway.
pub(crate) struct Forwarding(Option<Answer>);

impl Future for Forwarding {
    type Output = Result<Response<GatewayBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = self.0.as_mut().expect("Forwarding polled after completion");
        let output = std::task::ready!(answer.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(output)
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        if let (Some(answer), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(answer);
        }
    }
}

impl Service<Request<EdgeBody>> for Proxy {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = Forwarding;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<EdgeBody>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        super::metrics::admitted(parts.extensions.get::<crate::ShadowRefusal>());
        let websocket = websocket::is_upgrade(&parts);
        self.prepare(&mut parts);
        if let (true, Upstream::Http(_)) = (websocket, &*self.upstream) {
            websocket::keep_upgrade(&mut parts.headers);
            let exchange = logged(&parts);
            let charge = parts
                .extensions
                .get_mut::<UsageContext>()
                .and_then(UsageContext::take_charge);
            let upstream = self.upstream.clone();
            return Forwarding(Some(Box::pin(async move {
                let Upstream::Http(http) = &*upstream else {
                    unreachable!("checked above")
                };
                let (mut response, sent) = http.upgrade(Request::from_parts(parts, body)).await;
                match (&exchange, sent) {
                    (Some(exchange), true) if upstream_answered(&response) => {
                        exchange.upstream_answered(response.status());
                    }
                    // Never reached the upstream: it costs nothing.
                    (_, false) => give_back(charge, &mut response).await,
                    _ => {}
                }
                Ok(response)
            })));
        }
        // A body that can still fail: what the request was charged, to give
        // back if the client's own framing keeps it from the upstream.
        let charge = parts
            .extensions
            .get_mut::<UsageContext>()
            .and_then(UsageContext::take_charge);
        let grpc_call = grpc::is_call(&parts.headers);
        let (mut refund, mut bodyless_charge) = match body.watch() {
            Some(watch) => (
                Some(Refund {
                    charge,
                    watch,
                    answered: false,
                    grpc: grpc_call,
                }),
                None,
            ),
            None => (None, charge),
        };
        let exchange = logged(&parts);
        let request = Request::from_parts(parts, body);
        let upstream = self.upstream.clone();
        let own = self.own.clone();
        Forwarding(Some(Box::pin(async move {
            let (mut response, sent) = match &*upstream {
                // A gRPC call the echo cannot answer costs nothing.
                Upstream::Echo => (echo(request).await, !grpc_call),
                Upstream::Http(http) => forward(http, &own, request).await,
            };
            if let (Some(exchange), true) = (&exchange, sent && upstream_answered(&response)) {
                exchange.upstream_answered(response.status());
            }
            if !sent {
                // The upstream could not be reached: it never had the request.
                let charge = match refund.as_mut() {
                    Some(refund) => refund.charge.take(),
                    None => bodyless_charge.take(),
                };
                give_back(charge, &mut response).await;
                return Ok(response);
            }
            let Some(refund) = refund.as_mut() else {
                return Ok(response);
            };
            refund.answered = true;
            let Some(failure) = refund.watch.failure() else {
                return Ok(response);
            };
            let mut response = edge::failed_body(failure, grpc_call);
            if !refund.had_use() {
                // The body failed: the upstream never got the request whole.
                give_back(refund.charge.take(), &mut response).await;
            }
            Ok(response)
        })))
    }
}

/// The log line of a charge the store did not take back.
const NOT_REFUNDED: &str = "could not refund a request the upstream never received";

/// Gives back what a request the upstream never received was charged, and
/// marks its answer [`Refunded`] (its `RateLimit` headers then show the
/// charge unspent) once the store has taken it back.
async fn give_back<B>(charge: Option<Charge>, response: &mut Response<B>) {
    let Some(charge) = charge else { return };
    match charge.refund().await {
        Ok(()) => {
            response.extensions_mut().insert(Refunded);
        }
        Err(error) => tracing::warn!(%error, "{NOT_REFUNDED}"),
    }
}

/// What a request with a body was charged, and how its body fares: given
/// back if the body fails — by the request's future, or, if the future is
/// dropped first (the client's connection went away with it), on drop: then
/// also if the body had not come whole (the upstream request, dropped with
/// the future, never had it all).
struct Refund {
    charge: Option<Charge>,
    watch: Arc<BodyWatch>,
    /// Whether the future ran to its answer.
    answered: bool,
    /// A gRPC call: see [`had_use`](Self::had_use).
    grpc: bool,
}

impl Refund {
    /// Whether the upstream had use of the request although its body
    /// failed: a gRPC call whose first message went on whole (a streaming
    /// call's messages are each handled as they come; refunded, a client
    /// could stream and cancel for free).
    fn had_use(&self) -> bool {
        self.grpc && self.watch.message_passed_on()
    }
}

impl Drop for Refund {
    fn drop(&mut self) {
        let undelivered = (self.watch.failure().is_some()
            || !(self.answered || self.watch.ended()))
            && !self.had_use();
        if let (Some(charge), true) = (self.charge.take(), undelivered) {
            charge.refund_in_background(NOT_REFUNDED);
        }
    }
}

impl Proxy {
    /// What every upstream sees: no hop-by-hop headers, no API key, the key
    /// id instead, and the client in `x-forwarded-for` / `forwarded`.
    fn prepare(&self, parts: &mut http::request::Parts) {
        // HTTP/2 carries the host in the URI's authority, not in `Host`.
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            let authority = parts.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        prepare_headers(
            &mut parts.headers,
            &self.key_header,
            &self.client,
            original_host,
        );
        if let Some(usage) = parts.extensions.get::<UsageContext>() {
            if let Ok(id) = HeaderValue::from_str(usage.key_id()) {
                parts.headers.insert(X_API_KEY_ID.clone(), id);
            }
        }
    }
}

/// The access log's record of this request, told who it was counted for.
fn logged(parts: &http::request::Parts) -> Option<Arc<Exchange>> {
    let exchange = parts.extensions.get::<Arc<Exchange>>()?;
    if let Some(usage) = parts.extensions.get::<UsageContext>() {
        exchange.counted_for(usage);
    }
    Some(exchange.clone())
}

/// Whether the upstream (or the echo) made `response`, not the gateway
/// (whose own answers carry `x-amzn-ErrorType`).
fn upstream_answered(response: &Response<GatewayBody>) -> bool {
    response.extensions().get::<GatewayAnswer>().is_none()
}

/// Marks the proxy's own answers (502, 504, 408, 400, 413).
#[derive(Clone, Copy)]
struct GatewayAnswer;

static X_API_KEY_ID: HeaderName = HeaderName::from_static("x-api-key-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The upstream's answer, or the gateway's; `false` when the request was
/// never sent (the upstream could not be reached), so it costs nothing.
async fn forward(
    upstream: &HttpUpstream,
    own: &OwnConnection,
    request: Request<EdgeBody>,
) -> (Response<GatewayBody>, bool) {
    let (mut parts, body) = request.into_parts();
    // A gRPC call goes over HTTP/2 and hears the gateway's own failures as
    // gRPC statuses.
    let grpc = grpc::is_call(&parts.headers);
    let error = |status, message: &str| match grpc {
        true => gateway_answer(grpc::error(status, message)),
        false => error(status, message),
    };
    parts.uri = match upstream.path_and_query_for(&parts.uri) {
        Some(path_and_query) => Uri::from(path_and_query),
        None => return (error(StatusCode::BAD_GATEWAY, "Bad Gateway"), false),
    };
    parts.headers.insert(header::HOST, upstream.host.clone());
    parts.version = http::Version::HTTP_11;
    let started = super::metrics::enabled().then(Instant::now);
    let timeout = upstream.timeout;
    let watch = body.watch();
    let request_watch = grpc.then(|| watch.clone()).flatten();
    let request = Request::from_parts(parts, GatewayBody::client(body));
    let sending = async {
        match grpc {
            true => upstream.send_h2(request).await,
            false => upstream.send(own, request).await,
        }
    };
    let result = given_up_when_idle(timeout, watch.as_deref(), sending).await;
    if let Some(started) = started {
        metrics::histogram!("usage_plans_upstream_duration_seconds")
            .record(started.elapsed().as_secs_f64());
    }
    match result {
        // Only an upgrade (a WebSocket's, sent on its own path) may switch
        // protocols: passed on, it would leave the client's connection in
        // a protocol it never asked for.
        Ok(Ok(response)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            tracing::warn!(
                "the upstream switched protocols on a request that asked for no upgrade"
            );
            (error(StatusCode::BAD_GATEWAY, "Bad Gateway"), true)
        }
        Ok(Ok(response)) if head_size(&response) > UPSTREAM_HEAD_LIMIT => {
            tracing::warn!(
                limit = UPSTREAM_HEAD_LIMIT,
                "the upstream's response head is too large"
            );
            (error(StatusCode::BAD_GATEWAY, "Bad Gateway"), true)
        }
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let body = match grpc {
                true => GatewayBody::grpc(body, request_watch),
                false => GatewayBody::from(body),
            };
            (Response::from_parts(parts, body), true)
        }
        Ok(Err(e)) => {
            // A body the client broke off (its answer is the edge's 400 or
            // 408, and the access log's line) is no upstream failure, and a
            // client could otherwise write one WARN line a request.
            match watch.as_ref().and_then(|w| w.failure()) {
                Some(failure) => {
                    tracing::debug!(error = %e.message, ?failure, "request body failed")
                }
                None => tracing::warn!(error = %e.message, "upstream request failed"),
            }
            (error(StatusCode::BAD_GATEWAY, "Bad Gateway"), e.sent)
        }
        Err(_) => {
            let unfinished = watch.filter(|w| !w.ended());
            // The body has not come whole in all that time, and waits for
            // the client: the client stalled (the upstream never had the
            // request whole), not the upstream.
            if let Some(watch) = unfinished.as_ref().filter(|w| w.waiting_on_client()) {
                watch.fail(edge::BodyFailure::Timeout);
                return (error(StatusCode::REQUEST_TIMEOUT, "Request Timeout"), true);
            }
            tracing::warn!(?timeout, "upstream timed out");
            // A call whose body the upstream never asked for waited for a
            // stream of the upstream's (all of its concurrent streams
            // taken): it never left, and costs nothing. Any other request
            // reached the upstream, which took too long (or stopped
            // reading its body).
            let never_left = grpc && unfinished.is_some_and(|w| !w.asked());
            (
                error(StatusCode::GATEWAY_TIMEOUT, "Endpoint request timed out"),
                !never_left,
            )
        }
    }
}

/// The most an upstream's response head may take (its headers, as HTTP/1
/// writes them): one larger is a 502, not passed on to a client that may
/// not take it (Python's `http.client` gives up past 64 KiB a line, and
/// nginx refuses "too big a header" from an upstream).
pub(super) const UPSTREAM_HEAD_LIMIT: usize = 64 << 10;

/// The size of `response`'s headers, as HTTP/1 writes them.
fn head_size<B>(response: &Response<B>) -> usize {
    let headers = response.headers().iter();
    headers
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// `sending`, or `Err` once `timeout` went by with no part of the request's
/// body handed on to the upstream (`watch`; none: a request without one):
/// an upload that keeps coming is not cut however long it takes (the body
/// timeouts bound a slow client), and the upstream has `timeout` from the
/// body's last part to answer. (Counted from the request's start, every
/// upload longer than `--upstream-timeout` got a 408 at its 30th second,
/// however fast it came.)
async fn given_up_when_idle<T>(
    timeout: Duration,
    watch: Option<&BodyWatch>,
    sending: impl std::future::Future<Output = T>,
) -> Result<T, ()> {
    let mut sending = std::pin::pin!(sending);
    let mut deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(answer) = tokio::time::timeout_at(deadline, sending.as_mut()).await {
            return Ok(answer);
        }
        let since_passed = watch.and_then(BodyWatch::passed).map(|at| at + timeout);
        match since_passed.filter(|next| *next > deadline) {
            Some(next) => deadline = next,
            None => return Err(()),
        }
    }
}

/// Why the upstream gave no answer.
struct SendError {
    message: String,
    /// Whether the request may have reached it (else it costs nothing).
    sent: bool,
}

impl SendError {
    fn sent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            sent: true,
        }
    }
}

impl HttpUpstream {
    /// A WebSocket upgrade: on a connection of its own, tunnelled on 101.
    async fn upgrade(&self, request: Request<EdgeBody>) -> (Response<GatewayBody>, bool) {
        let (mut parts, body) = request.into_parts();
        parts.uri = match self.path_and_query_for(&parts.uri) {
            Some(path_and_query) => Uri::from(path_and_query),
            None => return (error(StatusCode::BAD_GATEWAY, "Bad Gateway"), false),
        };
        parts.headers.insert(header::HOST, self.host.clone());
        let target = websocket::Target {
            authority: &self.authority,
            tls: self.spares.tls(),
            timeout: self.timeout,
        };
        websocket::tunnel(target, Request::from_parts(parts, body)).await
    }

    /// Sends `request` (origin-form) over the client connection's own
    /// upstream connection, or through the pool when that one is busy.
    async fn send(
        &self,
        own: &OwnConnection,
        request: Request<GatewayBody>,
    ) -> Result<Response<Incoming>, SendError> {
        match own.send(&self.authority, request).await {
            Ok(response) => Ok(response),
            Err(OwnError::Failed(e)) => Err(SendError::sent(e)),
            Err(OwnError::Unsent(message)) => Err(SendError {
                message,
                sent: false,
            }),
            Err(OwnError::Busy(mut request)) => {
                // The pool wants the absolute form.
                let path_and_query = request.uri().path_and_query().cloned();
                *request.uri_mut() = self.absolute(path_and_query).ok_or_else(|| SendError {
                    message: "no upstream URI for the request".into(),
                    sent: false,
                })?;
                self.client.request(*request).await.map_err(|e| SendError {
                    sent: !e.is_connect(),
                    message: super::error::with_causes(&e),
                })
            }
        }
    }

    /// Sends a gRPC call (origin-form) over HTTP/2.
    async fn send_h2(
        &self,
        mut request: Request<GatewayBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let path_and_query = request.uri().path_and_query().cloned();
        *request.uri_mut() = self.absolute(path_and_query).ok_or_else(|| SendError {
            message: "no upstream URI for the request".into(),
            sent: false,
        })?;
        self.h2.send(request).await.map_err(|e| SendError {
            sent: !self.h2.never_processed(&e),
            message: super::error::with_causes(&e),
        })
    }

    /// The base URL's path + the request's path and query. Without a base
    /// path the request's own are shared, not copied or parsed again.
    fn path_and_query_for(&self, request: &Uri) -> Option<PathAndQuery> {
        match (request.path_and_query(), self.prefix.is_empty()) {
            (Some(pq), true) => Some(pq.clone()),
            (pq, _) => {
                let pq = pq.map_or("/", PathAndQuery::as_str);
                PathAndQuery::try_from(format!("{}{pq}", self.prefix)).ok()
            }
        }
    }

    /// `http://authority` + `path_and_query`.
    fn absolute(&self, path_and_query: Option<PathAndQuery>) -> Option<Uri> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = path_and_query;
        Uri::from_parts(parts).ok()
    }
}

/// Removes hop-by-hop headers and the client's API key; records the client
/// in `x-forwarded-for` and `forwarded`.
fn prepare_headers(
    headers: &mut HeaderMap,
    key_header: &HeaderName,
    client: &ClientAddress,
    host: Option<HeaderValue>,
) {
    strip_hop_by_hop(headers);
    headers.remove(key_header);
    headers.remove(&X_API_KEY_ID);
    let forwarded_for = match joined(headers, &X_FORWARDED_FOR) {
        Some(previous) => {
            HeaderValue::from_str(&format!("{previous}, {}", client.forwarded_ip())).ok()
        }
        None => Some(client.ip.clone()),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    let mut element = String::with_capacity(client.forwarded.len() + 64);
    if let Some(previous) = joined(headers, &header::FORWARDED) {
        element.push_str(&previous);
        element.push_str(", ");
    }
    element.push_str(&client.forwarded);
    if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
        // A quoted-string (RFC 7239 §4): the client's Host cannot close it
        // and add parameters of its own.
        element.push_str(";host=\"");
        for c in host.chars() {
            if c == '"' || c == '\\' {
                element.push('\\');
            }
            element.push(c);
        }
        element.push('"');
    }
    if let Ok(value) = HeaderValue::from_str(&element) {
        headers.insert(header::FORWARDED, value);
    }
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

/// Every field line of `name`, as one comma-separated list (RFC 9110 §5.3);
/// `None` if there is none (lines that are not text are left out).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut lines = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = lines.next()?;
    Some(lines.fold(first.to_owned(), |list, line| list + ", " + line))
}

impl ClientAddress {
    fn forwarded_ip(&self) -> &str {
        self.ip.to_str().unwrap_or_default()
    }
}

/// RFC 9110 §7.6.1: headers meant for one connection only.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of a
    // lookup for each of the nine.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
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
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// An AWS-style JSON error from the gateway itself.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<GatewayBody> {
    gateway_answer(edge::aws_error(status, message))
}

/// `response`, marked as the gateway's own (no upstream answered it: the
/// access log's upstream status is `-`).
fn gateway_answer(mut response: Response<GatewayBody>) -> Response<GatewayBody> {
    response.extensions_mut().insert(GatewayAnswer);
    response
}

/// 200 with a JSON description of the request.
async fn echo(request: Request<EdgeBody>) -> Response<GatewayBody> {
    if grpc::is_call(request.headers()) {
        // A JSON answer would only confuse a gRPC client.
        return gateway_answer(grpc::error(
            StatusCode::NOT_IMPLEMENTED,
            "no upstream: the built-in echo answers HTTP only",
        ));
    }
    let (parts, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, ECHO_MAX_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "Request Too Long")
        }
        // The client's body failed: the caller answers.
        Err(_) => return error(StatusCode::BAD_REQUEST, "Bad Request"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn http(base: &str) -> HttpUpstream {
        match Upstream::new(Some(base.parse().unwrap()), Duration::from_secs(1), None) {
            Upstream::Http(http) => *http,
            Upstream::Echo => unreachable!(),
        }
    }

    #[tokio::test]
    async fn upstream_uri_joins_the_base_path_and_the_request() {
        let request: Uri = "/pets/1?limit=2".parse().unwrap();
        let cases = [
            ("http://127.0.0.1:9", "http://127.0.0.1:9/pets/1?limit=2"),
            ("http://127.0.0.1:9/", "http://127.0.0.1:9/pets/1?limit=2"),
            ("http://up:80/api/", "http://up:80/api/pets/1?limit=2"),
            ("http://up:80/api", "http://up:80/api/pets/1?limit=2"),
        ];
        for (base, expected) in cases {
            let upstream = http(base);
            let path_and_query = upstream.path_and_query_for(&request);
            assert_eq!(
                upstream.absolute(path_and_query).unwrap().to_string(),
                expected
            );
        }
        assert_eq!(http("http://up:80/api").host, "up:80");
    }

    fn prepared(lines: &[(&str, &str)], host: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let proxy = Proxy::new(
            Arc::new(Upstream::Echo),
            HeaderName::from_static("x-api-key"),
            ([10, 0, 0, 7], 4321).into(),
            "http",
        );
        let host = host.map(|h| HeaderValue::from_str(h).unwrap());
        prepare_headers(&mut headers, &proxy.key_header, &proxy.client, host);
        headers
    }

    #[test]
    fn forwarding_headers_keep_every_earlier_line_and_quote_the_host() {
        let headers = prepared(
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
                ("forwarded", "for=1.1.1.1"),
                ("forwarded", "for=2.2.2.2"),
            ],
            Some(r#"a";for=6.6.6.6;x="\"#),
        );
        assert_eq!(headers["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.7");
        assert_eq!(
            headers["forwarded"],
            r#"for=1.1.1.1, for=2.2.2.2, for=10.0.0.7;proto=http;host="a\";for=6.6.6.6;x=\"\\""#
        );
        let plain = prepared(&[], Some("example.com:8080"));
        assert_eq!(plain["x-forwarded-for"], "10.0.0.7");
        assert_eq!(
            plain["forwarded"],
            r#"for=10.0.0.7;proto=http;host="example.com:8080""#
        );
        assert_eq!(plain["x-forwarded-host"], "example.com:8080");
    }
}
