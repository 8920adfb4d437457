//! Request ids and the access log of the data plane.
//!
//! Every data-plane response — admitted, refused by the layer, or answered
//! by the edge — carries `x-amzn-RequestId`, a fresh UUID v4, as API
//! Gateway's do; the same id goes upstream (replacing one a client sent)
//! and into the access log, so "a 429 at 10:02" can be looked up.
//!
//! The access log has one line per request, written when its response
//! body has been sent (or dropped): time, request id, client address,
//! method, path (never the query, which may hold a key), status, key id
//! (never the key's value), plan id, decision, upstream status, latency in
//! µs, bytes in and out. Lines go through a bounded queue to a writer
//! thread: the request path never waits on stderr; when the queue is full
//! a line is dropped and counted, and the count is written with the next
//! line that gets through.

use std::fmt::Write as _;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{Refusal, ShadowRefusal, UsageContext};

/// The request id's header, on responses and upstream requests.
pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-amzn-requestid");

/// Lines queued for the writer at most; beyond, lines are dropped (and
/// counted) rather than slowing requests down.
const QUEUE: usize = 16 * 1024;

/// The access log's format (`--access-log`).
///
/// ```
/// use tower_usage_plans::gateway::AccessLogFormat;
///
/// assert_eq!("json".parse::<AccessLogFormat>(), Ok(AccessLogFormat::Json));
/// assert!("xml".parse::<AccessLogFormat>().is_err());
/// assert_eq!(AccessLogFormat::default(), AccessLogFormat::Text);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    /// No access log.
    Off,
    /// One `key=value` line per request on stderr.
    #[default]
    Text,
    /// One JSON object per line on stderr.
    Json,
}

impl std::str::FromStr for AccessLogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("'{other}' must be off, text or json")),
        }
    }
}

/// What the gateway learns about a request after the edge has let it in:
/// shared by the edge's body (bytes in), the proxy (who it was counted
/// for, the upstream's status) and the log line.
#[derive(Debug, Default)]
pub(crate) struct Exchange {
    bytes_in: AtomicU64,
    usage: OnceLock<UsageContext>,
    /// 0: no upstream answered.
    upstream_status: AtomicU16,
}

impl Exchange {
    /// Counts request body bytes.
    pub(crate) fn received(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Who the request was counted for (a clone: no charge).
    pub(crate) fn counted_for(&self, usage: &UsageContext) {
        let _ = self.usage.set(usage.clone());
    }

    /// The upstream's status (the built-in echo's too).
    pub(crate) fn upstream_answered(&self, status: http::StatusCode) {
        self.upstream_status
            .store(status.as_u16(), Ordering::Relaxed);
    }
}

/// The sending end of the access log; the writer thread ends once every
/// clone is gone.
#[derive(Debug, Clone)]
pub(crate) struct AccessLog {
    lines: SyncSender<Line>,
    format: AccessLogFormat,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the writer (on stderr), or `None` for [`AccessLogFormat::Off`].
    /// The receiver is told once every line is written: when every clone
    /// of the log is gone (the listeners and connections have ended).
    pub(crate) fn start(
        format: AccessLogFormat,
    ) -> Option<(Self, tokio::sync::oneshot::Receiver<()>)> {
        if format == AccessLogFormat::Off {
            return None;
        }
        let (lines, receiver) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        let (written, all_written) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                write_lines(receiver, Box::new(std::io::stderr()), counted);
                let _ = written.send(());
            })
            .ok()?;
        let log = Self {
            lines,
            format,
            dropped,
        };
        Some((log, all_written))
    }

    fn send(&self, line: Line) {
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// One request's line, formatted by the writer.
struct Line {
    format: AccessLogFormat,
    time: jiff::Timestamp,
    id: uuid::Uuid,
    client: SocketAddr,
    method: Method,
    uri: Uri,
    status: u16,
    /// Who it was counted for (a shared handle: no copy of the ids).
    usage: Option<UsageContext>,
    decision: &'static str,
    upstream_status: u16,
    latency_us: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// A gRPC call's `grpc-status` (trailers-only answers carry it in
    /// their head, others in their trailers); `None` for other requests.
    grpc_status: Option<u16>,
}

/// How often the writer looks for lines. It never blocks on the queue: a
/// blocked receiver would have every request wake it (a context switch per
/// request, on the request's core); polling batches them.
const POLL: std::time::Duration = std::time::Duration::from_millis(20);

fn write_lines(
    receiver: Receiver<Line>,
    out: Box<dyn std::io::Write + Send>,
    dropped: Arc<AtomicU64>,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut text = String::with_capacity(512);
    loop {
        let ended = loop {
            match receiver.try_recv() {
                Ok(line) => {
                    text.clear();
                    line.render(&mut text);
                    let _ = out.write_all(text.as_bytes());
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break false,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break true,
            }
        };
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let _ = writeln!(
                out,
                "access log: {lost} lines dropped (the writer could not keep up)"
            );
        }
        let _ = out.flush();
        if ended {
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// The most of a path a line shows: a 414's target (up to 8 KiB) would
/// otherwise let anyone, without a key, write kilobytes a request.
const PATH_SHOWN: usize = 1024;

/// `path` as a line shows it: at most [`PATH_SHOWN`] bytes (cut on a
/// character boundary, then `...`), and `-` for none (`CONNECT`'s target),
/// so that the text line's fields stay in place.
fn shown_path(path: &str) -> std::borrow::Cow<'_, str> {
    if path.is_empty() {
        return "-".into();
    }
    if path.len() <= PATH_SHOWN {
        return path.into();
    }
    let mut end = PATH_SHOWN;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &path[..end]).into()
}

impl Line {
    fn render(&self, out: &mut String) {
        let key_id = self.usage.as_ref().map(UsageContext::key_id);
        let path = shown_path(self.uri.path());
        let plan_id = self.usage.as_ref().map(UsageContext::plan_id);
        let upstream = match self.upstream_status {
            0 => "-".to_owned(),
            s => s.to_string(),
        };
        match self.format {
            AccessLogFormat::Json => {
                let value = serde_json::json!({
                    "time": format!("{:.6}", self.time),
                    "requestId": self.id.to_string(),
                    "client": self.client.to_string(),
                    "method": self.method.as_str(),
                    "path": path,
                    "status": self.status,
                    "keyId": key_id,
                    "usagePlanId": plan_id,
                    "decision": self.decision,
                    "upstreamStatus": (self.upstream_status != 0).then_some(self.upstream_status),
                    "latencyUs": self.latency_us,
                    "bytesIn": self.bytes_in,
                    "bytesOut": self.bytes_out,
                    "grpcStatus": self.grpc_status,
                });
                let _ = writeln!(out, "{value}");
            }
            _ => {
                // The path is printed with `{:?}`-style escaping of nothing
                // but spaces and quotes cannot appear in it (a URI has none).
                let _ = write!(
                    out,
                    "{:.6} {} {} {} {} {} key={} plan={} decision={} upstream={} latency_us={} in={} out={}",
                    self.time,
                    self.id,
                    self.client,
                    self.method,
                    path,
                    self.status,
                    key_id.unwrap_or("-"),
                    plan_id.unwrap_or("-"),
                    self.decision,
                    upstream,
                    self.latency_us,
                    self.bytes_in,
                    self.bytes_out,
                );
                // Only a gRPC call's line has it: other lines keep their
                // shape.
                if let Some(code) = self.grpc_status {
                    let _ = write!(out, " grpc={code}");
                }
                out.push('\n');
            }
        }
    }
}

/// gRPC's `CANCELLED`, logged for a call whose answer ended before its
/// status did.
const GRPC_CANCELLED: u16 = 1;

/// The `grpc-status` in `headers` (a head or trailers), if any.
fn grpc_status(headers: &http::HeaderMap) -> Option<u16> {
    headers
        .get(&crate::layer::GRPC_STATUS)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// What the layer (or the edge) decided, for the log.
fn decision<B>(response: &Response<B>, exchange: &Exchange) -> &'static str {
    if response.extensions().get::<ShadowRefusal>().is_some() {
        // Admitted in shadow mode; it would have been refused.
        return "shadow";
    }
    match response.extensions().get::<Refusal>() {
        Some(Refusal::Throttled) => "throttled",
        Some(Refusal::QuotaExceeded) => "limit",
        Some(Refusal::StoreUnavailable) => "unavailable",
        Some(Refusal::BadPath) => "rejected",
        Some(_) => "forbidden",
        // Forwarded (or answered by the proxy: 502, 504, 408).
        None if exchange.usage.get().is_some() => "admitted",
        None if exchange.upstream_status.load(Ordering::Relaxed) != 0 => "admitted",
        // The edge answered before any decision (405, 414, 431, 400).
        None => "rejected",
    }
}

/// Stamps request ids on one connection's exchanges (every one on the data
/// plane, answers without one on the admin listener), and logs them.
#[derive(Debug, Clone)]
pub(crate) struct Stamped<S> {
    pub(crate) inner: S,
    pub(crate) log: Option<AccessLog>,
    pub(crate) client: SocketAddr,
    /// Which answers get an id of the gateway's.
    pub(crate) ids: RequestIds,
}

/// Where [`Stamped`] puts `x-amzn-RequestId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestIds {
    /// Every request and every response (the data plane): one id per
    /// exchange, whatever the upstream said.
    Every,
    /// Responses that have none: the admin API stamps its own answers,
    /// so only what the edge answers itself (a 405, a 408, ...) gets one.
    Missing,
}

/// A fresh v4 UUID from the thread's generator (no system call).
fn request_id() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

fn header_value(id: &uuid::Uuid) -> HeaderValue {
    let mut buffer = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buffer))
        .expect("a UUID is a valid header value")
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Stamped<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<Logged<ResBody>>;
    type Error = S::Error;
    type Future = StampedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let id = request_id();
        let value = header_value(&id);
        if self.ids == RequestIds::Missing {
            return StampedFuture {
                future: self.inner.call(request),
                id: Some(value),
                keep_existing: true,
                pending: None,
            };
        }
        request
            .headers_mut()
            .insert(REQUEST_ID.clone(), value.clone());
        let pending = self.log.clone().map(|log| {
            let exchange = Arc::new(Exchange::default());
            request.extensions_mut().insert(exchange.clone());
            Box::new(Pending {
                log,
                exchange,
                started: Instant::now(),
                time: jiff::Timestamp::now(),
                id,
                client: self.client,
                method: request.method().clone(),
                uri: request.uri().clone(),
                grpc: crate::layer::is_grpc(request.headers()),
            })
        });
        StampedFuture {
            future: self.inner.call(request),
            id: Some(value),
            keep_existing: false,
            pending,
        }
    }
}

/// A logged request, until its line is complete.
struct Pending {
    log: AccessLog,
    exchange: Arc<Exchange>,
    started: Instant,
    time: jiff::Timestamp,
    id: uuid::Uuid,
    client: SocketAddr,
    method: Method,
    uri: Uri,
    /// A gRPC call (by its request): one its client cancels before the
    /// answer's head is logged with `CANCELLED`.
    grpc: bool,
}

/// The line, once the response head is known; sent when its body ends.
struct Answered {
    pending: Box<Pending>,
    status: u16,
    decision: &'static str,
    bytes_out: u64,
    grpc_status: Option<u16>,
    /// A gRPC call's answer: its status comes in trailers.
    grpc: bool,
}

impl Answered {
    fn send(self) {
        let Pending {
            log,
            exchange,
            started,
            time,
            id,
            client,
            method,
            uri,
            grpc: _,
        } = *self.pending;
        let usage = exchange.usage.get().cloned();
        log.send(Line {
            format: log.format,
            time,
            id,
            client,
            method,
            uri,
            status: self.status,
            usage,
            decision: self.decision,
            upstream_status: exchange.upstream_status.load(Ordering::Relaxed),
            latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            bytes_in: exchange.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out,
            grpc_status: self.grpc_status,
        });
    }
}

/// The status logged for an exchange whose client went away before it
/// was answered (an HTTP/2 stream reset, a closed connection), as nginx
/// logs it: no response was sent.
const CLIENT_CLOSED: u16 = 499;

/// Marks an answer made for a client that had gone away before it (its
/// connection closed mid-body): nothing reads it, so its exchange is
/// logged as one the client abandoned, 499, whatever its status.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Abandoned;

pin_project! {
    /// The future of [`Stamped`]; dropped before the answer (the client
    /// went away), it still logs the exchange, as status 499.
    pub(crate) struct StampedFuture<F> {
        #[pin]
        future: F,
        id: Option<HeaderValue>,
        // An id the response already has stays (RequestIds::Missing).
        keep_existing: bool,
        pending: Option<Box<Pending>>,
    }

    impl<F> PinnedDrop for StampedFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(pending) = this.project().pending.take() {
                let decision = if pending.exchange.usage.get().is_some() {
                    "admitted"
                } else {
                    "rejected"
                };
                // A gRPC call the client cancelled (its stream reset, or its
                // deadline passed) before the answer's head.
                let grpc = pending.grpc;
                Answered {
                    status: CLIENT_CLOSED,
                    decision,
                    pending,
                    bytes_out: 0,
                    grpc_status: grpc.then_some(GRPC_CANCELLED),
                    grpc,
                }
                .send();
            }
        }
    }
}

impl<F, B, E> Future for StampedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Logged<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.future.poll(cx))?;
        if let Some(id) = this.id.take() {
            if !(*this.keep_existing && response.headers().contains_key(&REQUEST_ID)) {
                response.headers_mut().insert(REQUEST_ID.clone(), id);
            }
        }
        let answered = this.pending.take().map(|pending| {
            // A refusal for a known key names it (the layer puts it there).
            if let Some(usage) = response.extensions().get::<UsageContext>() {
                pending.exchange.counted_for(usage);
            }
            let status = match response.extensions().get::<Abandoned>() {
                Some(Abandoned) => CLIENT_CLOSED,
                None => response.status().as_u16(),
            };
            Answered {
                status,
                decision: decision(&response, &pending.exchange),
                pending,
                bytes_out: 0,
                grpc_status: grpc_status(response.headers()),
                grpc: crate::layer::is_grpc(response.headers()),
            }
        });
        Poll::Ready(Ok(response.map(|inner| Logged { inner, answered })))
    }
}

pin_project! {
    /// A response body that counts what it sends and logs its exchange when
    /// it ends or is dropped.
    pub(crate) struct Logged<B> {
        #[pin]
        inner: B,
        answered: Option<Answered>,
    }

    impl<B> PinnedDrop for Logged<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(mut answered) = this.project().answered.take() {
                // Dropped before its end: a gRPC call the client cancelled
                // (its stream reset) before the status trailers.
                if answered.grpc && answered.grpc_status.is_none() {
                    answered.grpc_status = Some(GRPC_CANCELLED);
                }
                answered.send();
            }
        }
    }
}

impl<B: Body<Data = bytes::Bytes>> Body for Logged<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let (Some(answered), Some(Ok(frame))) = (this.answered.as_mut(), frame.as_ref()) {
            if let Some(data) = frame.data_ref() {
                answered.bytes_out += data.len() as u64;
            }
            if let Some(trailers) = frame.trailers_ref() {
                answered.grpc_status = grpc_status(trailers).or(answered.grpc_status);
            }
        }
        if frame.is_none() {
            if let Some(answered) = this.answered.take() {
                answered.send();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context for key k1 in plan p1, as the layer makes them.
    fn usage() -> UsageContext {
        UsageContext::new(crate::registry::Binding::unlimited("p1", "k1"), None)
    }

    /// A throttled `POST /pets?api_key=secret` of k1's.
    fn sample(format: AccessLogFormat) -> Line {
        Line {
            format,
            time: "2026-12-04T10:02:00Z".parse().unwrap(),
            id: uuid::Uuid::nil(),
            client: ([10, 0, 0, 7], 4321).into(),
            method: Method::POST,
            uri: "/pets?api_key=secret".parse().unwrap(),
            status: 429,
            usage: Some(usage()),
            decision: "throttled",
            upstream_status: 0,
            latency_us: 12,
            bytes_in: 3,
            bytes_out: 4,
            grpc_status: None,
        }
    }

    fn rendered(line: &Line) -> String {
        let mut out = String::new();
        line.render(&mut out);
        out
    }

    fn line(format: AccessLogFormat) -> String {
        rendered(&sample(format))
    }

    #[test]
    fn lines_name_everything_but_the_query_and_the_key_value() {
        assert_eq!(
            line(AccessLogFormat::Text),
            "2026-12-04T10:02:00.000000Z 00000000-0000-0000-0000-000000000000 10.0.0.7:4321 POST /pets \
             429 key=k1 plan=p1 decision=throttled upstream=- latency_us=12 in=3 out=4\n"
        );
        let json: serde_json::Value = serde_json::from_str(&line(AccessLogFormat::Json)).unwrap();
        assert_eq!(json["path"], "/pets");
        assert_eq!(json["keyId"], "k1");
        assert_eq!(json["upstreamStatus"], serde_json::Value::Null);
        assert_eq!(json["decision"], "throttled");
        assert_eq!(json["grpcStatus"], serde_json::Value::Null);
        assert!(!line(AccessLogFormat::Json).contains("secret"));
    }

    /// A gRPC call's line ends with its status, and its JSON names it.
    #[test]
    fn a_grpc_calls_line_has_its_grpc_status() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some(14));
        headers.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(grpc_status(&headers), None);
        let render = |format| {
            rendered(&Line {
                uri: "/pkg.Svc/Call".parse().unwrap(),
                grpc_status: Some(14),
                ..sample(format)
            })
        };
        assert!(render(AccessLogFormat::Text).ends_with(" out=4 grpc=14\n"));
        let json: serde_json::Value = serde_json::from_str(&render(AccessLogFormat::Json)).unwrap();
        assert_eq!(json["grpcStatus"], 14);
    }

    /// Fields stay in place (`-` for CONNECT's empty path), a long path is
    /// cut, and the time always has six fractional digits.
    #[test]
    fn paths_are_shown_in_one_field_of_bounded_length() {
        assert_eq!(shown_path(""), "-");
        assert_eq!(shown_path("/pets"), "/pets");
        let long = format!("/{}", "é".repeat(3000));
        let shown = shown_path(&long);
        assert!(
            shown.len() <= PATH_SHOWN + 3 && shown.ends_with("..."),
            "{shown}"
        );
        let time: jiff::Timestamp = "2026-12-04T10:02:00.00013Z".parse().unwrap();
        assert_eq!(format!("{time:.6}"), "2026-12-04T10:02:00.000130Z");
    }

    #[test]
    fn request_ids_are_version_4() {
        let (a, b) = (request_id(), request_id());
        assert_ne!(a, b);
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(header_value(&a).len(), 36);
    }
}
