//! The tonic side of the gRPC tests: a listener to serve the test service
//! on, a client of it, keyed calls, and what a refusal says of retrying.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::codec::Streaming;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tonic_types::StatusExt;

use super::net::within;
use super::usage_grpc::{CountReply, UsageClient, UsageServer};

/// A listener on an ephemeral port, as `serve_with_incoming` takes it.
pub async fn incoming() -> (SocketAddr, TcpListenerStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, TcpListenerStream::new(listener))
}

/// The test service on an ephemeral port, without a layer of its own (an
/// upstream for the gateway), and its call counter.
pub async fn plain_server() -> (SocketAddr, UsageServer) {
    let (addr, incoming) = incoming().await;
    let server = UsageServer::default();
    let serving = tonic::transport::Server::builder()
        .add_service(server.clone())
        .serve_with_incoming(incoming);
    tokio::spawn(async move { serving.await.unwrap() });
    (addr, server)
}

/// A client of the test service at `addr` (HTTP/2 cleartext).
pub async fn client(addr: SocketAddr) -> UsageClient {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    UsageClient::new(channel)
}

/// A call carrying `key` in `x-api-key` metadata.
pub fn keyed<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-api-key", key.parse().unwrap());
    request
}

/// The numbers a `Count` call streamed, read to the stream's end (every
/// message a success).
pub async fn counted(response: Response<Streaming<CountReply>>) -> Vec<u32> {
    let replies = response.into_inner().map(|reply| reply.unwrap().i);
    within("the Count stream", replies.collect::<Vec<_>>()).await
}

/// The `RetryInfo` delay of a status, as tonic-types decodes it.
pub fn retry_delay(status: &Status) -> Duration {
    status
        .get_error_details()
        .retry_info()
        .unwrap_or_else(|| panic!("no RetryInfo in {status:?}"))
        .retry_delay
        .expect("RetryInfo without a delay")
}

/// The `retry-after` metadata of a status, in seconds.
pub fn retry_after(status: &Status) -> u64 {
    status
        .metadata()
        .get("retry-after")
        .unwrap_or_else(|| panic!("no retry-after in {status:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}
