//! One upstream connection kept for one client connection.
//!
//! A client on a keep-alive HTTP/1 connection sends its requests one after
//! another, so a connection to the upstream of its own serves them all
//! without a pool's lock, key hashing and checkout. A request that arrives
//! while that connection is busy — an HTTP/2 client's concurrent streams,
//! or one still reading an earlier response's body — is told so and goes
//! through the shared pool instead. When the client connection ends, its
//! upstream connection is kept among [`SpareConnections`] for the next
//! client connection, so clients that do not keep their connections alive
//! still reuse upstream ones.
//!
//! An upstream may close (or reset) a keep-alive connection that sat idle
//! just as a request goes out on it (Node.js closes after 5 s, say). A
//! request without a body to an idempotent method that fails before any
//! answer on a connection idle for [`REPLAY_AFTER_IDLE`] or more goes again,
//! once, on a new connection — nginx does the same — instead of a 502.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use super::body::GatewayBody;

/// The state of a client connection's own upstream connection, sending
/// request bodies of type `B`.
#[derive(Debug)]
pub(crate) struct OwnConnection<B = GatewayBody> {
    state: Mutex<State<B>>,
    spares: Arc<SpareConnections<B>>,
}

#[derive(Debug)]
enum State<B> {
    /// None yet, or the last one failed.
    Empty,
    /// Since when it has been idle.
    Idle(Link<B>, Instant),
    /// A request is using it.
    Busy,
}

/// How long a connection must have sat idle before a request that finds
/// it closed under it is replayed: below any upstream's idle timeout, and
/// long enough that a connection in steady use never pays for the copy of
/// the request's head that a replay needs.
pub(crate) const REPLAY_AFTER_IDLE: Duration = Duration::from_millis(100);

/// Why a request did not go over the own connection.
#[derive(Debug)]
pub(crate) enum OwnError<B = GatewayBody> {
    /// It is in use: send through the pool (boxed: the rare case).
    Busy(Box<Request<B>>),
    /// The upstream failed the request.
    Failed(String),
    /// The upstream could not be reached: the request was never sent.
    Unsent(String),
}

/// Upstream connections whose client connections ended, for new ones —
/// and how new ones are opened: TLS for an `https://` upstream.
#[derive(Debug)]
pub(crate) struct SpareConnections<B = GatewayBody> {
    spares: Mutex<Vec<Link<B>>>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// An upstream connection: what sends on it, and the task that drives it.
/// A request given up before its answer (the upstream timeout) ends the
/// connection: HTTP/1 cannot reuse it, and its task would otherwise go on
/// holding the request's body, and with it the client's connection, as
/// long as the upstream neither reads nor answers.
#[derive(Debug)]
struct Link<B> {
    sender: SendRequest<B>,
    task: AbortHandle,
}

impl<B> Default for SpareConnections<B> {
    fn default() -> Self {
        Self::with_tls(None)
    }
}

impl<B> SpareConnections<B> {
    /// New connections open TLS with `tls` (an `https://` upstream).
    pub(crate) fn with_tls(tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        Self {
            spares: Mutex::default(),
            tls,
        }
    }

    /// The TLS configuration of new connections, if the upstream is `https://`.
    pub(crate) fn tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tls.as_ref()
    }
}

/// What a request body must be to go upstream.
pub(crate) trait UpstreamBody:
    Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

impl<B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static> UpstreamBody for B {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Spare connections kept at most (as nginx's `keepalive 64`); the pool
/// keeps as many idle ones.
pub(crate) const MAX_SPARES: usize = 64;

impl<B> SpareConnections<B> {
    fn put(&self, link: Link<B>) {
        let mut spares = self.spares.lock();
        spares.retain(|s| !s.sender.is_closed());
        if spares.len() < MAX_SPARES {
            spares.push(link);
        }
    }

    /// A spare connection ready for a request, if any.
    fn take(&self) -> Option<Link<B>> {
        let mut spares = self.spares.lock();
        while let Some(link) = spares.pop() {
            if link.sender.is_ready() {
                return Some(link);
            }
        }
        None
    }
}

impl<B: UpstreamBody + Default> OwnConnection<B> {
    pub(crate) fn new(spares: Arc<SpareConnections<B>>) -> Self {
        Self {
            state: Mutex::new(State::Empty),
            spares,
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) to `authority` over
    /// this client connection's own upstream connection — or a spare one,
    /// or a new one. A connection found closed before the request was
    /// written is replaced once.
    pub(crate) async fn send(
        &self,
        authority: &Authority,
        mut request: Request<B>,
    ) -> Result<Response<Incoming>, OwnError<B>> {
        let Some(mut checkout) = self.checkout() else {
            return Err(OwnError::Busy(Box::new(request)));
        };
        for attempt in 0..2 {
            let (reused, idle) = match checkout.link.take() {
                Some(link) => (Some(link), checkout.idle_since.elapsed()),
                // A spare has sat idle since its client connection ended.
                None if attempt == 0 => (self.spares.take(), REPLAY_AFTER_IDLE),
                // The second attempt: a new connection, not another stale one.
                None => (None, Duration::ZERO),
            };
            let (mut link, long_idle) = match reused {
                Some(link) if !link.sender.is_closed() => (link, idle >= REPLAY_AFTER_IDLE),
                _ => (
                    connect(authority, self.spares.tls.as_ref())
                        .await
                        .map_err(|e| OwnError::Unsent(e.to_string()))?,
                    false,
                ),
            };
            // HTTP/1: ready once the previous response's body is through.
            if link.sender.ready().await.is_err() {
                continue;
            }
            let replay = (long_idle && attempt == 0)
                .then(|| Replay::of(&request))
                .flatten();
            // Out on it until the answer comes: a drop meanwhile ends it.
            let link = checkout.link.insert(link);
            checkout.in_flight = true;
            let sent = link.sender.try_send_request(request).await;
            checkout.in_flight = false;
            let mut e = match sent {
                Ok(response) => return Ok(response),
                Err(e) => e,
            };
            // The connection failed the request: it is not used again.
            checkout.link = None;
            match (e.take_message(), replay) {
                // Never written: the connection had closed; try another.
                (Some(unsent), _) if attempt == 0 => request = unsent,
                // Written, but the idle connection closed (FIN) or was
                // reset (RST) before any answer: an idempotent request
                // may go again, as nginx sends it to the next upstream.
                (None, Some(replay)) => request = replay.request(),
                _ => return Err(OwnError::Failed(super::error::with_causes(&e.into_error()))),
            }
        }
        Err(OwnError::Failed("upstream connection closed".to_owned()))
    }

    fn checkout(&self) -> Option<Checkout<'_, B>> {
        let mut state = self.state.lock();
        let (link, idle_since) = match std::mem::replace(&mut *state, State::Busy) {
            State::Busy => return None,
            State::Empty => (None, Instant::now()),
            // Still carrying an earlier response's body (HTTP/2 streams):
            // waiting for it could take as long as that body.
            State::Idle(link, since) if !link.sender.is_ready() && !link.sender.is_closed() => {
                *state = State::Idle(link, since);
                return None;
            }
            State::Idle(link, since) => (Some(link), since),
        };
        Some(Checkout {
            owner: self,
            link,
            idle_since,
            in_flight: false,
        })
    }
}

/// What it takes to send a request again: its head. Only for requests
/// without a body to idempotent methods (RFC 9110 §9.2.2).
struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Replay {
    fn of<B: Body>(request: &Request<B>) -> Option<Self> {
        let idempotent = request.method().is_idempotent();
        (idempotent && request.body().is_end_stream()).then(|| Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        })
    }

    fn request<B: Default>(self) -> Request<B> {
        let mut request = Request::new(B::default());
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        request
    }
}

impl<B> Drop for OwnConnection<B> {
    fn drop(&mut self) {
        if let State::Idle(link, _) = std::mem::replace(self.state.get_mut(), State::Empty) {
            if !link.sender.is_closed() {
                self.spares.put(link);
            }
        }
    }
}

/// The own connection while a request uses it: given back when the request
/// ends, even if it ends by being dropped (a timeout).
struct Checkout<'a, B> {
    owner: &'a OwnConnection<B>,
    link: Option<Link<B>>,
    /// When the checked-out connection last went idle — roughly: it is
    /// stamped when a response's head arrives, so a long response body
    /// counts as idle time too (a head copied for nothing, never a wrong
    /// replay: a replay needs a close before any answer).
    idle_since: Instant,
    /// Whether a request is out on `link`, its answer not yet come: a
    /// drop then ends the connection ([`Link`]).
    in_flight: bool,
}

impl<B> Drop for Checkout<'_, B> {
    fn drop(&mut self) {
        if self.in_flight {
            if let Some(link) = self.link.take() {
                link.task.abort();
            }
        }
        *self.owner.state.lock() = match self.link.take() {
            Some(link) => State::Idle(link, Instant::now()),
            None => State::Empty,
        };
    }
}

async fn connect<B: UpstreamBody>(
    authority: &Authority,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> io::Result<Link<B>> {
    let port = authority
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    match tls {
        // A certificate that fails verification fails here: never sent.
        Some(config) => handshake(super::tls::connect(config, host, stream).await?).await,
        None => handshake(stream).await,
    }
}

async fn handshake<B, I>(io: I) -> io::Result<Link<B>>
where
    B: UpstreamBody,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(Link {
        sender,
        task: task.abort_handle(),
    })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Either, Empty, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// A response body that never ends.
    struct Endless;

    impl Body for Endless {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
            std::task::Poll::Pending
        }
    }

    /// An upstream answering every request with its connection's number,
    /// but `/endless` with a body that never ends.
    async fn numbering_upstream() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut number = 0u32;
            while let Ok((stream, _)) = listener.accept().await {
                number += 1;
                let service = service_fn(move |request: Request<Incoming>| async move {
                    let body = match request.uri().path() {
                        "/endless" => Either::Right(Endless),
                        _ => Either::Left(Full::new(Bytes::from(number.to_string()))),
                    };
                    Ok::<_, Infallible>(Response::new(body))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    async fn get(own: &OwnConnection<Empty<Bytes>>, authority: &Authority) -> String {
        let request = Request::get("/").body(Empty::new()).unwrap();
        let response = own.send(authority, request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn an_ended_client_connection_leaves_its_upstream_connection_to_the_next() {
        let authority: Authority = numbering_upstream().await.to_string().parse().unwrap();
        let spares = Arc::new(SpareConnections::default());

        let first = OwnConnection::new(spares.clone());
        assert_eq!(get(&first, &authority).await, "1");
        assert_eq!(get(&first, &authority).await, "1", "kept for its client");
        // Another client connection while the first lives: a new one.
        let second = OwnConnection::new(spares.clone());
        assert_eq!(get(&second, &authority).await, "2");
        // The first client leaves: the next client connection takes over its
        // upstream connection.
        drop(first);
        let third = OwnConnection::new(spares.clone());
        assert_eq!(get(&third, &authority).await, "1");
        drop((second, third));
        assert_eq!(spares.spares.lock().len(), 2);
    }

    /// An upstream that answers the first request of each connection with
    /// the connection's number, and closes the connection when the second
    /// request has come in (its idle timeout firing as the request came):
    /// with a reset (RST) if `reset`, else a close (FIN).
    async fn one_request_per_connection_upstream(reset: bool) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut number = 0u32;
            while let Ok((mut stream, _)) = listener.accept().await {
                number += 1;
                tokio::spawn(async move {
                    let mut read = Vec::new();
                    let mut buf = [0u8; 1024];
                    let heads = |read: &[u8]| read.windows(4).filter(|w| w == b"\r\n\r\n").count();
                    let mut answered = false;
                    while heads(&read) < 2 {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        read.extend_from_slice(&buf[..n]);
                        if heads(&read) == 1 && !answered {
                            answered = true;
                            let body = number.to_string();
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                                body.len()
                            );
                            stream.write_all(head.as_bytes()).await.unwrap();
                            stream.write_all(body.as_bytes()).await.unwrap();
                        }
                    }
                    // The second request: closed without an answer.
                    if reset {
                        let _ = stream.set_zero_linger();
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_bodiless_idempotent_request_on_a_long_idle_connection_closed_under_it_goes_again() {
        for reset in [false, true] {
            let authority: Authority = one_request_per_connection_upstream(reset)
                .await
                .to_string()
                .parse()
                .unwrap();
            let own = OwnConnection::new(Arc::default());
            assert_eq!(get(&own, &authority).await, "1");
            // The connection sits idle long enough to be worth a replay.
            tokio::time::sleep(REPLAY_AFTER_IDLE + Duration::from_millis(20)).await;
            assert_eq!(
                get(&own, &authority).await,
                "2",
                "replayed (reset: {reset})"
            );

            // The same for a POST: not idempotent, so not sent again.
            tokio::time::sleep(REPLAY_AFTER_IDLE + Duration::from_millis(20)).await;
            let post = Request::post("/").body(Empty::<Bytes>::new()).unwrap();
            match own.send(&authority, post).await {
                Err(OwnError::Failed(_)) => {}
                other => panic!("a POST must not be replayed (reset: {reset}): {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_request_finding_the_connection_busy_is_handed_back() {
        let authority: Authority = numbering_upstream().await.to_string().parse().unwrap();
        let own = OwnConnection::new(Arc::default());
        assert_eq!(get(&own, &authority).await, "1");
        // A response whose body has not ended keeps the connection busy.
        let request = Request::get("/endless")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let unread = own.send(&authority, request).await.unwrap();
        let request = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            own.send(&authority, request),
        );
        match waited.await.expect("waited behind a body that never ends") {
            Err(OwnError::Busy(_)) => {}
            other => panic!("expected Busy, got {other:?}"),
        }
        drop(unread);
    }
}
