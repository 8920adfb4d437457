//! The edge of every listener: what a client can do wrong before or while
//! a request reaches the plane behind it, and what the gateway answers.
//!
//! - Methods a reverse proxy cannot forward (`CONNECT`) and request targets
//!   that are not a path get 405 / 400 before any metering.
//! - A URL longer than [`MAX_URI_BYTES`] gets 414, a head with more than
//!   [`MAX_HEADERS`] fields or [`MAX_HEADER_BYTES`] bytes of them 431 —
//!   below hyper's own limits, so the answer has the AWS shape.
//! - The request body is an [`EdgeBody`]: a body that sends no frame for
//!   the body read timeout fails, as does one that trickles in slower than
//!   the minimum rate (not a gRPC call's stream), and one the client framed
//!   wrongly or left unfinished; the request is then answered 408 or 400 (the proxy
//!   gives its charge back first) and the HTTP/1 connection closed. A client that
//!   went away mid-body (its connection closed or reset) reads no answer: its
//!   exchange is logged 499 ([`access::Abandoned`]).
//! - Each connection counts its requests in flight ([`ConnectionState`]),
//!   for its driver: idle connections close at once on shutdown, and an
//!   HTTP/2 connection that brings no request within the header read
//!   timeout is closed with GOAWAY.
//!
//! Every answer made here is AWS-shaped: `{"message": ...}` and
//! `x-amzn-ErrorType` ([`aws_error`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::access;

/// The longest request target (path and query) the gateway accepts, 8 KiB
/// (API Gateway takes about 10 KiB of request line and headers together);
/// hyper's own limit is 64 KiB.
pub(crate) const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header fields a request may have (hyper is told to take more).
pub(crate) const MAX_HEADERS: usize = 100;
/// Header fields hyper parses at most: above [`MAX_HEADERS`], so that
/// the gateway, not hyper, answers 431 between the two.
pub(crate) const HYPER_MAX_HEADERS: usize = 256;
/// The most bytes of header fields (names, values, 4 per line) a request
/// may have.
pub(crate) const MAX_HEADER_BYTES: usize = 32 * 1024;
/// hyper's HTTP/1 read buffer, which bounds a whole head: room for the
/// longest target and header fields the edge answers itself (414, 431).
pub(crate) const HYPER_MAX_HEAD_BYTES: usize = 2 * (MAX_URI_BYTES + MAX_HEADER_BYTES);
/// Streams of one HTTP/2 connection the gateway may reset for the
/// client's errors before it closes the connection.
pub(crate) const MAX_ERROR_RESETS: usize = 100;

/// An AWS-shaped error: `status`, `{"message": message}`, and the
/// `x-amzn-ErrorType` API Gateway uses for that status.
pub(crate) fn aws_error<B: From<Bytes>>(status: StatusCode, message: &str) -> Response<B> {
    let body = serde_json::json!({ "message": message }).to_string();
    crate::layer::aws_json_response(status, body, error_type(status))
}

/// `x-amzn-ErrorType` for a status the gateway answers itself.
pub(crate) fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BadRequestException",
        403 => "ForbiddenException",
        404 => "NotFoundException",
        405 => "MethodNotAllowedException",
        408 => "RequestTimeoutException",
        413 => "RequestEntityTooLargeException",
        414 => "RequestUriTooLongException",
        429 => "TooManyRequestsException",
        431 => "RequestHeaderFieldsTooLargeException",
        502 => "BadGatewayException",
        503 => "ServiceUnavailableException",
        504 => "GatewayTimeoutException",
        _ => "InternalServerErrorException",
    }
}

/// What went wrong with a request body, as an [`EdgeBody`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFailure {
    /// The client kept the body waiting too long ([`BodyLimits`]).
    Timeout,
    /// Malformed framing.
    Client,
    /// The client went away mid-body: its connection closed or was reset
    /// before the body came whole, or its HTTP/2 stream was reset.
    Abandoned,
}

/// What a request's body did, shared between the body and those who must
/// know after it is gone (the proxy, the edge).
#[derive(Debug)]
pub(crate) struct BodyWatch {
    state: AtomicU8,
    /// When the watch began: [`passed`](Self::passed) counts from it.
    born: tokio::time::Instant,
    /// When a part of the body was last handed on (to the upstream's
    /// connection), in microseconds after `born`, plus one (0: never).
    passed: AtomicU64,
    /// Whether a whole first gRPC message went on (to the upstream): a
    /// call's messages are each of use to the upstream as they come.
    message_passed_on: AtomicBool,
    /// Whether whoever reads the body (the upstream's connection) asked for
    /// any of it yet.
    asked: AtomicBool,
    /// Whether it waits for the client: its last ask found nothing yet.
    /// (Not: it has what it asked for, and the upstream takes no more.)
    waiting_on_client: AtomicBool,
}

impl Default for BodyWatch {
    fn default() -> Self {
        Self {
            state: AtomicU8::new(RUNNING),
            born: tokio::time::Instant::now(),
            passed: AtomicU64::new(0),
            message_passed_on: AtomicBool::default(),
            asked: AtomicBool::default(),
            waiting_on_client: AtomicBool::default(),
        }
    }
}

/// [`BodyWatch`] states.
const RUNNING: u8 = 0;
const TIMED_OUT: u8 = 1;
const CLIENT_FAILED: u8 = 2;
const ENDED: u8 = 3;
const ABANDONED: u8 = 4;

impl BodyWatch {
    /// Records how the body failed (the first outcome stays).
    pub(crate) fn fail(&self, failure: BodyFailure) {
        let code = match failure {
            BodyFailure::Timeout => TIMED_OUT,
            BodyFailure::Client => CLIENT_FAILED,
            BodyFailure::Abandoned => ABANDONED,
        };
        self.settle(code);
    }

    /// The first outcome stays.
    fn settle(&self, code: u8) {
        let _ = self
            .state
            .compare_exchange(RUNNING, code, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether the body came whole.
    pub(crate) fn ended(&self) -> bool {
        self.state.load(Ordering::Relaxed) == ENDED
    }

    /// Whether the body, read as a gRPC call's, passed a whole first
    /// message on (read from it).
    pub(crate) fn message_passed_on(&self) -> bool {
        self.message_passed_on.load(Ordering::Relaxed)
    }

    /// When a part of the body was last handed on to whoever reads it
    /// (the upstream's connection), if one was.
    pub(crate) fn passed(&self) -> Option<tokio::time::Instant> {
        let micros = self.passed.load(Ordering::Relaxed).checked_sub(1)?;
        Some(self.born + Duration::from_micros(micros))
    }

    fn pass(&self) {
        let micros = u64::try_from(self.born.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        self.passed.store(micros + 1, Ordering::Relaxed);
    }

    /// Whether the body was asked for at all (an HTTP/2 upstream asks as
    /// soon as the call's stream is open).
    pub(crate) fn asked(&self) -> bool {
        self.asked.load(Ordering::Relaxed)
    }

    /// Whether the body waits for the client, not for the upstream to take
    /// what came (see [`BodyWatch`]).
    pub(crate) fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Relaxed)
    }

    /// How the body failed, if it did.
    pub(crate) fn failure(&self) -> Option<BodyFailure> {
        match self.state.load(Ordering::Relaxed) {
            TIMED_OUT => Some(BodyFailure::Timeout),
            CLIENT_FAILED => Some(BodyFailure::Client),
            ABANDONED => Some(BodyFailure::Abandoned),
            _ => None,
        }
    }
}

/// The gateway's own refusal of a request: AWS-shaped JSON, or for a gRPC
/// call (`grpc`) a trailers-only gRPC status, which is all its client
/// reads.
pub(crate) fn refusal<B: From<Bytes>>(
    status: StatusCode,
    message: &str,
    grpc: bool,
) -> Response<B> {
    match grpc {
        true => super::grpc::error(status, message),
        false => aws_error(status, message),
    }
}

/// The answer to a request whose body failed: 408 or 400 (for a gRPC call,
/// `DEADLINE_EXCEEDED` or `INVALID_ARGUMENT`); for a client that went away,
/// a 400 no one reads, marked [`access::Abandoned`].
pub(crate) fn failed_body<B: From<Bytes>>(failure: BodyFailure, grpc: bool) -> Response<B> {
    match failure {
        BodyFailure::Timeout => match grpc {
            // As a call whose answer had begun ends (`grpc::broken_off`).
            true => super::grpc::error(
                StatusCode::REQUEST_TIMEOUT,
                "no data from the client within the body read timeout",
            ),
            false => aws_error(StatusCode::REQUEST_TIMEOUT, "Request Timeout"),
        },
        BodyFailure::Client => refusal(StatusCode::BAD_REQUEST, "Bad Request", grpc),
        BodyFailure::Abandoned => {
            let mut response = refusal::<B>(StatusCode::BAD_REQUEST, "Bad Request", grpc);
            response.extensions_mut().insert(access::Abandoned);
            response
        }
    }
}

/// How a failed read of the client's body failed: hyper reports a
/// connection closed (`UnexpectedEof`) or reset mid-body as an I/O error
/// under its own; malformed framing is `InvalidData` / `InvalidInput`.
fn read_failure(error: &hyper::Error) -> BodyFailure {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let abandoned = super::error::chain(error).any(|error| {
        // An HTTP/2 connection that closed, or that the client ended
        // (GOAWAY), under a stream still sending its body.
        let h2_gone = error
            .downcast_ref::<h2::Error>()
            .is_some_and(|h2| h2.is_io() || h2.is_go_away());
        let io_gone = error.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
            )
        });
        h2_gone || io_gone
    });
    if abandoned {
        BodyFailure::Abandoned
    } else {
        BodyFailure::Client
    }
}

/// How long a request body may keep the gateway waiting: no frame for
/// `idle` (the body read timeout), or, once the client has kept it waiting
/// longer than [`MinRate::grace`] in all, data slower than
/// [`MinRate::bytes_per_sec`] over the time spent waiting for it (a body
/// trickling one byte every few seconds never trips an idle timer).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BodyLimits {
    pub(crate) idle: Option<Duration>,
    pub(crate) min_rate: Option<MinRate>,
}

/// Waiting time before a body's rate is judged (`--body-min-rate`).
pub(crate) const MIN_RATE_GRACE: Duration = Duration::from_secs(5);

/// The slowest request body the gateway waits for (`--body-min-rate`).
/// Only time spent waiting for the client counts: while the upstream does
/// not read, the client is not being slow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MinRate {
    pub(crate) bytes_per_sec: std::num::NonZeroU64,
    /// Waiting time before the rate is judged (a body's first bytes may be
    /// slow: a TCP slow start, a client computing what it sends).
    pub(crate) grace: Duration,
}

impl MinRate {
    /// Waiting time `received` bytes may have taken.
    fn allowance(&self, received: u64) -> Duration {
        let earned = Duration::from_secs_f64(received as f64 / self.bytes_per_sec.get() as f64);
        earned.max(self.grace)
    }
}

/// Why an [`EdgeBody`] stopped waiting for its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stall {
    /// No frame within the body read timeout.
    Idle(Duration),
    /// Data slower than the minimum rate, in bytes per second.
    TooSlow(u64),
}

/// Why an [`EdgeBody`] ended early.
#[derive(Debug)]
pub(crate) enum EdgeBodyError {
    /// The client kept the body waiting too long.
    Stalled(Stall),
    /// The body ended short of its declared length (an HTTP/2 stream the
    /// client reset: [`BodyFailure::Abandoned`]).
    Truncated {
        /// `Content-Length`.
        declared: u64,
        /// Data bytes that came.
        received: u64,
    },
    /// hyper's error reading the client's body.
    Client(hyper::Error),
}

impl std::fmt::Display for EdgeBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stalled(Stall::Idle(limit)) => {
                write!(f, "no request body data within {limit:?}")
            }
            Self::Stalled(Stall::TooSlow(rate)) => {
                write!(f, "request body data slower than {rate} bytes/s")
            }
            Self::Truncated { declared, received } => write!(
                f,
                "the request body ended after {received} of its {declared} bytes"
            ),
            Self::Client(e) => write!(f, "reading the request body: {e}"),
        }
    }
}

impl std::error::Error for EdgeBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Stalled(_) | Self::Truncated { .. } => None,
            Self::Client(e) => Some(e),
        }
    }
}

pin_project! {
    /// A client's request body: hyper's, held to [`BodyLimits`], with a
    /// [`BodyWatch`] that records how it failed. A body that is empty from
    /// the start has neither (the hot path of bodiless requests).
    pub(crate) struct EdgeBody {
        #[pin]
        inner: Incoming,
        watched: Option<Box<Watched>>,
    }
}

struct Watched {
    watch: Arc<BodyWatch>,
    /// Where the access log counts bytes in, if it is on.
    exchange: Option<Arc<super::access::Exchange>>,
    limits: BodyLimits,
    /// The length the request declared (`Content-Length`), if it did.
    declared: Option<u64>,
    /// Data bytes received so far.
    received: u64,
    /// Time spent waiting for the client before `waiting_since`.
    waited: Duration,
    /// Since when the body waits for the client (`None`: not waiting).
    waiting_since: Option<tokio::time::Instant>,
    /// Fires at the earlier of the two limits' deadlines.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: Option<Stall>,
    first_message: FirstMessage,
}

/// How much of a gRPC call's first message has passed: its 5-byte prefix
/// (a compression flag, then the message's length, big-endian), then that
/// many bytes. Any body is read so; only a gRPC call's reading counts.
#[derive(Debug, Default)]
struct FirstMessage {
    prefix: [u8; 5],
    /// Bytes passed so far.
    seen: u64,
}

impl FirstMessage {
    /// Takes `data`, passed on next; `true` once the whole first message has
    /// passed.
    fn passed(&mut self, data: &[u8]) -> bool {
        let filled = self.seen.min(5) as usize;
        let take = (5 - filled).min(data.len());
        self.prefix[filled..filled + take].copy_from_slice(&data[..take]);
        self.seen = self.seen.saturating_add(data.len() as u64);
        let [_, length @ ..] = self.prefix;
        self.seen >= 5 && self.seen - 5 >= u64::from(u32::from_be_bytes(length))
    }
}

impl Watched {
    /// The stall that ends the current wait first, and when.
    fn next_stall(&self, since: tokio::time::Instant) -> Option<(tokio::time::Instant, Stall)> {
        let idle = self
            .limits
            .idle
            .map(|limit| (since + limit, Stall::Idle(limit)));
        let slow = self.limits.min_rate.map(|rate| {
            let left = rate.allowance(self.received).saturating_sub(self.waited);
            (since + left, Stall::TooSlow(rate.bytes_per_sec.get()))
        });
        match (idle, slow) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    fn frame_came(&mut self, len: usize) {
        self.received += len as u64;
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
    }

    /// Waits for the client; `Some` once it kept the body waiting too long.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Option<Stall> {
        let since = *self
            .waiting_since
            .get_or_insert_with(tokio::time::Instant::now);
        let (deadline, stall) = self.next_stall(since)?;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready().then(|| {
            self.watch.fail(BodyFailure::Timeout);
            self.stalled = Some(stall);
            stall
        })
    }
}

impl EdgeBody {
    pub(crate) fn new(
        inner: Incoming,
        limits: BodyLimits,
        exchange: Option<&Arc<super::access::Exchange>>,
    ) -> Self {
        let watched = (!inner.is_end_stream()).then(|| {
            Box::new(Watched {
                watch: Arc::default(),
                exchange: exchange.cloned(),
                limits,
                declared: inner.size_hint().exact(),
                received: 0,
                waited: Duration::ZERO,
                waiting_since: None,
                timer: None,
                stalled: None,
                first_message: FirstMessage::default(),
            })
        });
        Self { inner, watched }
    }

    /// The body's watch, to learn after it is gone how it failed; `None`
    /// for a body that was empty from the start.
    pub(crate) fn watch(&self) -> Option<Arc<BodyWatch>> {
        self.watched.as_ref().map(|w| w.watch.clone())
    }
}

impl std::fmt::Debug for EdgeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EdgeBody")
    }
}

impl Body for EdgeBody {
    type Data = Bytes;
    type Error = EdgeBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, EdgeBodyError>>> {
        let this = self.project();
        let Some(watched) = this.watched.as_deref_mut() else {
            return this.inner.poll_frame(cx).map_err(EdgeBodyError::Client);
        };
        if let Some(stall) = watched.stalled {
            return Poll::Ready(Some(Err(EdgeBodyError::Stalled(stall))));
        }
        let mut inner = this.inner;
        let polled = inner.as_mut().poll_frame(cx);
        let watch = &watched.watch;
        watch.asked.store(true, Ordering::Relaxed);
        watch
            .waiting_on_client
            .store(polled.is_pending(), Ordering::Relaxed);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                watched.frame_came(len);
                watched.watch.pass();
                if let Some(data) = frame.data_ref() {
                    if watched.first_message.passed(data) {
                        watched
                            .watch
                            .message_passed_on
                            .store(true, Ordering::Relaxed);
                    }
                }
                if let (Some(exchange), Some(data)) = (&watched.exchange, frame.data_ref()) {
                    exchange.received(data.len());
                }
                if inner.is_end_stream() {
                    watched.watch.settle(ENDED);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                watched.watch.fail(read_failure(&e));
                Poll::Ready(Some(Err(EdgeBodyError::Client(e))))
            }
            Poll::Ready(None) => {
                if watched
                    .declared
                    .is_some_and(|declared| declared != watched.received)
                {
                    // hyper ends an HTTP/2 body the client reset (CANCEL,
                    // NO_ERROR) as if it were whole: short of its declared
                    // length, it is not, and must not reach the upstream so.
                    watched.watch.fail(BodyFailure::Abandoned);
                    return Poll::Ready(Some(Err(EdgeBodyError::Truncated {
                        declared: watched.declared.unwrap_or_default(),
                        received: watched.received,
                    })));
                }
                watched.watch.settle(ENDED);
                Poll::Ready(None)
            }
            Poll::Pending => match watched.poll_wait(cx) {
                Some(stall) => Poll::Ready(Some(Err(EdgeBodyError::Stalled(stall)))),
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One client connection, as its requests and its driver share it.
#[derive(Debug, Default)]
pub(crate) struct ConnectionState {
    /// Requests whose response has not been sent whole.
    in_flight: AtomicUsize,
    /// Requests so far (a driver tells activity by it changing).
    requests: AtomicU64,
    /// The response write timeout's clock: the number of the current
    /// period, which the driver ends every timeout.
    write_period: AtomicU64,
    /// What waits for the client to take what it was handed (HTTP/2
    /// responses, the socket's refused writes), by the parity of the
    /// period in which the wait began.
    waiting: [AtomicUsize; 2],
}

impl ConnectionState {
    /// Requests in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Requests so far.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Acquire)
    }

    /// A request begins; `http2`: its response's waits for the client are
    /// judged (an HTTP/1 response's are its socket's, see
    /// [`write_watch`](super::write_watch): hyper buffers what it writes).
    pub(crate) fn start(self: &Arc<Self>, http2: bool) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        InFlight {
            waiting: Waiting::new(self.clone()),
            judged: http2,
        }
    }

    /// Ends a period of the response write timeout (the driver calls it
    /// every timeout): `false` if a response has waited for the client
    /// since before this period began, a whole period or more, so the
    /// client took nothing of it for that long; the connection should
    /// close. Else the next period begins. A response that begins to wait
    /// is judged at the end of the period after its own: it is never
    /// found stalled before one timeout, always by two.
    pub(crate) fn end_write_period(&self) -> bool {
        let period = self.write_period.load(Ordering::Acquire);
        let previous = (period.wrapping_add(1) & 1) as usize;
        if self.waiting[previous].load(Ordering::Acquire) > 0 {
            return false;
        }
        self.write_period
            .store(period.wrapping_add(1), Ordering::Release);
        true
    }
}

/// The most bytes of a response handed to the connection at once: a
/// larger frame goes in pieces, so that the time a response waits for its
/// client to take a piece is bounded by the client's pace, not by how
/// much the upstream sent in one read (the response write timeout judges
/// that wait). HTTP/2's default frame size.
pub(crate) const MAX_RESPONSE_PIECE: usize = 16 * 1024;

/// Whether something of a connection (a response, its socket) waits for
/// the client to take what it was handed, and since which write period;
/// the wait ends when dropped.
#[derive(Debug)]
pub(crate) struct Waiting {
    connection: Arc<ConnectionState>,
    /// The parity of the write period in which the wait began.
    since: Option<usize>,
}

impl Waiting {
    pub(crate) fn new(connection: Arc<ConnectionState>) -> Self {
        Self {
            connection,
            since: None,
        }
    }

    /// The client's turn to take what it was handed.
    pub(crate) fn wait_for_client(&mut self) {
        if self.since.is_none() {
            let period = self.connection.write_period.load(Ordering::Acquire);
            let parity = (period & 1) as usize;
            self.connection.waiting[parity].fetch_add(1, Ordering::AcqRel);
            self.since = Some(parity);
        }
    }

    /// The client took it (or it is no longer waited on).
    pub(crate) fn client_took_it(&mut self) {
        if let Some(parity) = self.since.take() {
            self.connection.waiting[parity].fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.client_took_it();
    }
}

/// One request in flight: until its response body is sent (or dropped).
/// On HTTP/2 it also marks when its response waits for the client: from
/// when the connection is handed the response's head or a piece of its
/// body until the connection asks for the next one (a stream the client
/// opens no window for).
#[derive(Debug)]
pub(crate) struct InFlight {
    waiting: Waiting,
    /// Whether the response's waits are judged (HTTP/2).
    judged: bool,
}

impl InFlight {
    /// The connection has what the response gave it so far: the client's
    /// turn to take it.
    pub(crate) fn wait_for_client(&mut self) {
        if self.judged {
            self.waiting.wait_for_client();
        }
    }

    /// The connection asks for more: the client took what it had.
    pub(crate) fn client_took_it(&mut self) {
        self.waiting.client_took_it();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.waiting
            .connection
            .in_flight
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// The edge around one connection's service.
#[derive(Debug, Clone)]
pub(crate) struct Edge<S> {
    pub(crate) inner: S,
    pub(crate) connection: Arc<ConnectionState>,
    pub(crate) body_limits: BodyLimits,
}

/// Why the edge refuses a request's head, if it does.
fn refuse_head<B>(request: &Request<B>) -> Option<(StatusCode, &'static str)> {
    if request.method() == Method::CONNECT {
        return Some((StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"));
    }
    let target = request.uri().path_and_query().map_or("", |pq| pq.as_str());
    if target.len() > MAX_URI_BYTES {
        return Some((StatusCode::URI_TOO_LONG, "Request-URI Too Long"));
    }
    if !request.uri().path().starts_with('/') {
        // `OPTIONS *` and the like: nothing a resource path can match.
        return Some((StatusCode::BAD_REQUEST, "Bad Request"));
    }
    let headers = request.headers();
    if request.version() < http::Version::HTTP_2 && super::grpc::is_call(headers) {
        // gRPC needs HTTP/2 (its status comes in trailers): refused before
        // it is metered, so it costs nothing.
        return Some((StatusCode::BAD_REQUEST, "gRPC calls need HTTP/2"));
    }
    if headers.get_all(header::HOST).iter().nth(1).is_some() {
        // Which host is meant? (RFC 9112 §3.2: a 400.)
        return Some((StatusCode::BAD_REQUEST, "Bad Request"));
    }
    // The client's fields: not the request id the gateway stamped (it
    // replaces any the client sent), which made 100 fields 101; and on
    // HTTP/2, `:authority`, which hyper keeps in the URI (HTTP/1's `Host`
    // counts), so that the limit is the same on both.
    let own_id = usize::from(headers.contains_key(&super::access::REQUEST_ID));
    let authority = usize::from(
        request.version() >= http::Version::HTTP_2
            && request.uri().authority().is_some()
            && !headers.contains_key(header::HOST),
    );
    if headers.len() + authority - own_id > MAX_HEADERS {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request Header Fields Too Large",
        ));
    }
    let bytes: usize = headers
        .iter()
        .filter(|(name, _)| **name != super::access::REQUEST_ID)
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request Header Fields Too Large",
        ));
    }
    None
}

impl<S, B> Service<Request<Incoming>> for Edge<S>
where
    S: Service<Request<EdgeBody>, Response = Response<B>>,
    B: Body + From<Bytes>,
{
    type Response = Response<Tracked<B>>;
    type Error = S::Error;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let http1 = request.version() < http::Version::HTTP_2;
        // hyper leaves out the body of an answer to HEAD on HTTP/1 only.
        let bodiless = !http1 && request.method() == Method::HEAD;
        let in_flight = self.connection.start(!http1);
        let grpc = !http1 && super::grpc::is_call(request.headers());
        if let Some((status, message)) = refuse_head(&request) {
            let mut response = refusal(status, message, grpc);
            if http1 && !request.body().is_end_stream() {
                // Its body is never read: the connection cannot go on.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return EdgeFuture {
                state: EdgeState::Answered {
                    response: Some(response),
                },
                in_flight: Some(in_flight),
                bodiless,
            };
        }
        let (parts, body) = request.into_parts();
        let mut limits = self.body_limits;
        if grpc {
            // A call's request stream goes at its application's pace
            // (one message a minute is a fine stream): only idle is judged.
            limits.min_rate = None;
        }
        let body = EdgeBody::new(
            body,
            limits,
            parts.extensions.get::<Arc<super::access::Exchange>>(),
        );
        let watch = body.watch();
        EdgeFuture {
            state: EdgeState::Inner {
                future: self.inner.call(Request::from_parts(parts, body)),
                watch,
                http1,
                grpc,
            },
            in_flight: Some(in_flight),
            bodiless,
        }
    }
}

pin_project! {
    /// The response future of [`Edge`].
    pub(crate) struct EdgeFuture<F> {
        #[pin]
        state: EdgeState<F>,
        in_flight: Option<InFlight>,
        // An answer to HEAD on HTTP/2: sent without its body (RFC 9113
        // 8.1.1; a DATA frame after it is a protocol error to the client),
        // whoever made it (the edge, the plane, the admin API, the echo).
        bodiless: bool,
    }
}

pin_project! {
    #[project = EdgeStateProj]
    enum EdgeState<F> {
        Inner {
            #[pin]
            future: F,
            watch: Option<Arc<BodyWatch>>,
            http1: bool,
            // A gRPC call: the edge's answers are gRPC statuses.
            grpc: bool,
        },
        // The edge's own answer; its body becomes the service's body type
        // when returned.
        Answered {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<F, B, E> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body + From<Bytes>,
{
    type Output = Result<Response<Tracked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.state.project() {
            EdgeStateProj::Answered { response } => response
                .take()
                .expect("EdgeFuture polled after completion")
                .map(B::from),
            EdgeStateProj::Inner {
                future,
                watch,
                http1,
                grpc,
            } => {
                let response = std::task::ready!(future.poll(cx))?;
                // The body failed before the answer: the request never got
                // through whole; whatever the plane made of it, the client
                // gets 408 or 400, and an HTTP/1 connection closes (the rest
                // of the body, if any, is not read).
                match watch.as_ref().and_then(|w| w.failure()) {
                    Some(failure) => {
                        let mut response = failed_body::<B>(failure, *grpc);
                        if *http1 {
                            response
                                .headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        response
                    }
                    None => response,
                }
            }
        };
        let response = match *this.bodiless {
            true => response.map(|_| B::from(Bytes::new())),
            false => response,
        };
        let mut in_flight = this.in_flight.take();
        if let Some(in_flight) = &mut in_flight {
            in_flight.wait_for_client();
        }
        Poll::Ready(Ok(response.map(|body| Tracked {
            inner: body,
            rest: Bytes::new(),
            in_flight,
        })))
    }
}

pin_project! {
    /// A response body that keeps its request in flight until it is sent,
    /// hands the connection at most [`MAX_RESPONSE_PIECE`] bytes at a time,
    /// and marks when it waits for the client.
    pub(crate) struct Tracked<B> {
        #[pin]
        inner: B,
        // What is left of a frame larger than a piece.
        rest: Bytes,
        in_flight: Option<InFlight>,
    }
}

impl<B> Tracked<B> {
    /// The next piece of `data`, the rest kept for the next poll.
    fn piece(rest: &mut Bytes, mut data: Bytes) -> Bytes {
        if data.len() > MAX_RESPONSE_PIECE {
            *rest = data.split_off(MAX_RESPONSE_PIECE);
        }
        data
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(in_flight) = this.in_flight.as_mut() {
            in_flight.client_took_it();
        }
        let polled = if this.rest.is_empty() {
            match this.inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(Self::piece(this.rest, data))))),
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                other => other,
            }
        } else {
            let rest = std::mem::take(this.rest);
            Poll::Ready(Some(Ok(Frame::data(Self::piece(this.rest, rest)))))
        };
        if let (Poll::Ready(Some(Ok(_))), Some(in_flight)) = (&polled, this.in_flight.as_mut()) {
            in_flight.wait_for_client();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_earns_waiting_time_by_its_bytes_after_the_grace() {
        let rate = MinRate {
            bytes_per_sec: std::num::NonZeroU64::new(240).unwrap(),
            grace: Duration::from_secs(5),
        };
        assert_eq!(rate.allowance(0), Duration::from_secs(5));
        assert_eq!(rate.allowance(1_200), Duration::from_secs(5));
        assert_eq!(rate.allowance(2_400), Duration::from_secs(10));
        assert_eq!(rate.allowance(240_000), Duration::from_secs(1_000));
    }

    /// A first gRPC message passes once its prefix and all the bytes it
    /// says have, however the frames cut them; an empty one with its prefix.
    #[test]
    fn a_first_message_passes_whole_or_not_at_all() {
        let message = b"\0\0\0\0\x03abc";
        for cut in 0..message.len() {
            let mut first = FirstMessage::default();
            let (a, b) = message.split_at(cut);
            assert!(!first.passed(a), "cut at {cut}");
            assert!(first.passed(b), "cut at {cut}");
        }
        let mut first = FirstMessage::default();
        assert!(!first.passed(b"\0\0\0\0"));
        assert!(first.passed(b"\0"));
        let mut first = FirstMessage::default();
        assert!(!first.passed(b"\0\0\0\x01\0abc"), "256 bytes said, 3 came");
    }
}
