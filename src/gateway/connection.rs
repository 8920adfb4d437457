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

use std::io;
use std::sync::Arc;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;

/// The state of a client connection's own upstream connection, sending
/// request bodies of type `B`.
#[derive(Debug)]
pub(crate) struct OwnConnection<B = Incoming> {
    state: Mutex<State<B>>,
    spares: Arc<SpareConnections<B>>,
}

#[derive(Debug)]
enum State<B> {
    /// None yet, or the last one failed.
    Empty,
    Idle(SendRequest<B>),
    /// A request is using it.
    Busy,
}

/// Why a request did not go over the own connection.
#[derive(Debug)]
pub(crate) enum OwnError<B = Incoming> {
    /// It is in use: send through the pool (boxed: the rare case).
    Busy(Box<Request<B>>),
    /// The upstream could not be reached or failed the request.
    Failed(String),
}

/// Upstream connections whose client connections ended, for new ones.
#[derive(Debug)]
pub(crate) struct SpareConnections<B = Incoming>(Mutex<Vec<SendRequest<B>>>);

impl<B> Default for SpareConnections<B> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

/// What a request body must be to go upstream.
pub(crate) trait UpstreamBody:
    Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

impl<B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static> UpstreamBody for B {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Spare connections kept at most (as nginx's `keepalive 64`).
const MAX_SPARES: usize = 64;

impl<B> SpareConnections<B> {
    fn put(&self, sender: SendRequest<B>) {
        let mut spares = self.0.lock();
        spares.retain(|s| !s.is_closed());
        if spares.len() < MAX_SPARES {
            spares.push(sender);
        }
    }

    /// A spare connection ready for a request, if any.
    fn take(&self) -> Option<SendRequest<B>> {
        let mut spares = self.0.lock();
        while let Some(sender) = spares.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }
}

impl<B: UpstreamBody> OwnConnection<B> {
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
            let reused = checkout.sender.take().or_else(|| self.spares.take());
            let mut sender = match reused {
                Some(sender) if !sender.is_closed() => sender,
                _ => connect(authority)
                    .await
                    .map_err(|e| OwnError::Failed(e.to_string()))?,
            };
            // HTTP/1: ready once the previous response's body is through.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    checkout.sender = Some(sender);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection had closed; try another.
                    Some(unsent) if attempt == 0 => request = unsent,
                    _ => return Err(OwnError::Failed(e.into_error().to_string())),
                },
            }
        }
        Err(OwnError::Failed("upstream connection closed".to_owned()))
    }

    fn checkout(&self) -> Option<Checkout<'_, B>> {
        let mut state = self.state.lock();
        let sender = match std::mem::replace(&mut *state, State::Busy) {
            State::Busy => return None,
            State::Empty => None,
            // Still carrying an earlier response's body (HTTP/2 streams):
            // waiting for it could take as long as that body.
            State::Idle(sender) if !sender.is_ready() && !sender.is_closed() => {
                *state = State::Idle(sender);
                return None;
            }
            State::Idle(sender) => Some(sender),
        };
        Some(Checkout {
            owner: self,
            sender,
        })
    }
}

impl<B> Drop for OwnConnection<B> {
    fn drop(&mut self) {
        if let State::Idle(sender) = std::mem::replace(self.state.get_mut(), State::Empty) {
            if !sender.is_closed() {
                self.spares.put(sender);
            }
        }
    }
}

/// The own connection while a request uses it: given back when the request
/// ends, even if it ends by being dropped (a timeout).
struct Checkout<'a, B> {
    owner: &'a OwnConnection<B>,
    sender: Option<SendRequest<B>>,
}

impl<B> Drop for Checkout<'_, B> {
    fn drop(&mut self) {
        *self.owner.state.lock() = match self.sender.take() {
            Some(sender) => State::Idle(sender),
            None => State::Empty,
        };
    }
}

async fn connect<B: UpstreamBody>(authority: &Authority) -> io::Result<SendRequest<B>> {
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
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
        assert_eq!(spares.0.lock().len(), 2);
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
