//! Helpers of the gateway tests: deadlines, temporary directories, one
//! request on a fresh HTTP/1.1 connection.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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

/// Sends one request on a fresh HTTP/1.1 connection.
pub async fn send<B>(addr: SocketAddr, request: Request<B>) -> Response<Incoming>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, B>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    within("the response head", sender.send_request(request))
        .await
        .unwrap()
}

/// `GET path` with `key` in `x-api-key`: status, headers, whole body.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    key: Option<&str>,
) -> (StatusCode, HeaderMap, Bytes) {
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
