//! Helpers of the gateway tests: deadlines, temporary directories, HTTP/1.1
//! and HTTP/2 client connections, a body the test feeds chunk by chunk, and
//! upstreams made of one request handler.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A hang guard, not a timing assertion: far longer than anything takes.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// `future`, or a panic naming `what` if it never completes.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A unique, empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "tower-usage-plans-{tag}-{}-{nanos}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An address nothing listens on: a port that was free a moment ago.
pub fn closed_addr() -> SocketAddr {
    ([127, 0, 0, 1], super::redis_server::free_port()).into()
}

/// Writes `sent` on a new connection to `addr`, then (if `then_close`)
/// shuts the write half, and reads until the other side closes the
/// connection (a panic if it never does): what came, and how the read
/// ended (an error if the close was a reset; what came before it is kept).
pub async fn until_closed(
    addr: SocketAddr,
    sent: &[u8],
    then_close: bool,
) -> (Vec<u8>, std::io::Result<usize>) {
    let mut stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    stream.write_all(sent).await.unwrap();
    if then_close {
        stream.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    let read = within(
        "the other side to close the connection",
        stream.read_to_end(&mut answer),
    )
    .await;
    (answer, read)
}

/// A fresh HTTP/1.1 connection to `addr` (driven by a task of its own).
pub async fn h1_client<B>(addr: SocketAddr) -> http1::SendRequest<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

/// A fresh HTTP/2 (prior knowledge) connection to `addr` (driven by a task
/// of its own). It takes answers' heads up to 256 KiB, as Chromium does
/// (hyper's default, 16 KiB, would refuse heads the gateway passes on).
pub async fn h2_client<B>(addr: SocketAddr) -> http2::SendRequest<B>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(256 << 10)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// Sends one request on a fresh HTTP/1.1 connection.
pub async fn send<B>(addr: SocketAddr, request: Request<B>) -> Response<Incoming>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut sender = h1_client(addr).await;
    within("the response head", sender.send_request(request))
        .await
        .unwrap()
}

/// `GET path` with `key` in `x-api-key`: status, headers, whole body.
pub async fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> Answer {
    let mut request = Request::get(path).header("host", addr.to_string());
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = send(addr, request.body(Empty::<Bytes>::new()).unwrap()).await;
    let (parts, body) = response.into_parts();
    let body = within("the response body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    (parts.status, parts.headers, body)
}

/// Status, headers and whole body, as [`get`] returns them.
pub type Answer = (StatusCode, HeaderMap, Bytes);

/// Asserts an AWS-shaped answer: `want` is `(status, message, error type)`;
/// `x-amzn-errortype` is the error type, the content type JSON, the body
/// exactly `{"message": message}`. `what` names the request in a failure.
#[track_caller]
pub fn assert_aws_answer(got: &Answer, want: (u16, &str, &str), what: &str) {
    let (status, headers, body) = got;
    let (want_status, message, error_type) = want;
    let text = String::from_utf8_lossy(body);
    assert_eq!(status.as_u16(), want_status, "{what}: {text}");
    assert_eq!(headers["x-amzn-errortype"], error_type, "{what}: {text}");
    assert_eq!(headers["content-type"], "application/json", "{what}");
    let json: serde_json::Value =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    assert_eq!(json, serde_json::json!({ "message": message }), "{what}");
}

/// [`assert_aws_answer`] of `response`, once its body is read.
pub async fn assert_aws_response(
    response: Response<Incoming>,
    want: (u16, &str, &str),
    what: &str,
) {
    let (parts, body) = response.into_parts();
    let body = within("the response body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert_aws_answer(&(parts.status, parts.headers, body), want, what);
}

/// A body whose chunks the test sends one by one on the sender of
/// [`channel_body`]; it ends when that sender is dropped.
pub struct ChannelBody(mpsc::Receiver<Bytes>);

/// A [`ChannelBody`] and its sender, which holds up to `capacity` chunks
/// not yet read.
pub fn channel_body(capacity: usize) -> (mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody(rx))
}

/// `POST path` to `addr` with the API key `key`, its body the chunks sent
/// on the returned sender (a channel of one: a send waits until the last
/// was read).
pub fn channel_post(
    addr: SocketAddr,
    path: &str,
    key: &str,
) -> (mpsc::Sender<Bytes>, Request<ChannelBody>) {
    let (tx, body) = channel_body(1);
    let request = Request::post(format!("http://{addr}{path}"))
        .header("x-api-key", key)
        .body(body)
        .unwrap();
    (tx, request)
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// A hyper HTTP/1.1 server on an ephemeral port answering each request
/// with `handler`.
pub async fn http1_server<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An upstream whose answers never end: 64 KiB chunks, as fast as they are
/// taken. It reports when an answer is dropped under it (the gateway let
/// go of the exchange).
pub async fn endless_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    use http_body_util::StreamBody;
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let addr = http1_server(move |_request: Request<Incoming>| {
        let dropped_tx = dropped_tx.clone();
        async move {
            let (chunks, taken) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                while chunks.send(Ok(Frame::data(chunk.clone()))).await.is_ok() {}
                let _ = dropped_tx.send(());
            });
            Response::new(StreamBody::new(
                tokio_stream::wrappers::ReceiverStream::new(taken),
            ))
        }
    })
    .await;
    (addr, dropped)
}
