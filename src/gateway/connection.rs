//! One upstream connection kept for one client connection.
//!
//! A client on a keep-alive HTTP/1 connection sends its requests one after
//! another, so a connection to the upstream of its own serves them all
//! without a pool's lock, key hashing and checkout. A request that arrives
//! while that connection is busy (an HTTP/2 client's concurrent streams)
//! is told so and goes through the shared pool instead.

use std::io;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;

/// The state of a client connection's own upstream connection.
#[derive(Debug, Default)]
pub(crate) struct OwnConnection(Mutex<State>);

#[derive(Debug, Default)]
enum State {
    /// None yet, or the last one failed.
    #[default]
    Empty,
    Idle(SendRequest<Incoming>),
    /// A request is using it.
    Busy,
}

/// Why a request did not go over the own connection.
#[derive(Debug)]
pub(crate) enum OwnError {
    /// It is in use: send through the pool (boxed: the rare case).
    Busy(Box<Request<Incoming>>),
    /// The upstream could not be reached or failed the request.
    Failed(String),
}

impl OwnConnection {
    /// Sends `request` (origin-form URI, `Host` set) to `authority` over
    /// this client connection's own upstream connection, connecting first
    /// if needed. A connection found closed before the request was written
    /// is replaced once.
    pub(crate) async fn send(
        &self,
        authority: &Authority,
        mut request: Request<Incoming>,
    ) -> Result<Response<Incoming>, OwnError> {
        let Some(mut checkout) = self.checkout() else {
            return Err(OwnError::Busy(Box::new(request)));
        };
        for attempt in 0..2 {
            let mut sender = match checkout.sender.take() {
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
                    // Never written: the connection had closed; try a new one.
                    Some(unsent) if attempt == 0 => request = unsent,
                    _ => return Err(OwnError::Failed(e.into_error().to_string())),
                },
            }
        }
        Err(OwnError::Failed("upstream connection closed".to_owned()))
    }

    fn checkout(&self) -> Option<Checkout<'_>> {
        let mut state = self.0.lock();
        let sender = match std::mem::replace(&mut *state, State::Busy) {
            State::Busy => return None,
            State::Empty => None,
            State::Idle(sender) => Some(sender),
        };
        Some(Checkout {
            owner: self,
            sender,
        })
    }
}

/// The own connection while a request uses it: given back when the request
/// ends, even if it ends by being dropped (a timeout).
struct Checkout<'a> {
    owner: &'a OwnConnection,
    sender: Option<SendRequest<Incoming>>,
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        *self.owner.0.lock() = match self.sender.take() {
            Some(sender) => State::Idle(sender),
            None => State::Empty,
        };
    }
}

async fn connect(authority: &Authority) -> io::Result<SendRequest<Incoming>> {
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
