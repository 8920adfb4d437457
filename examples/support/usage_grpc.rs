//! A tiny gRPC service, `usage.v1.Usage`, written by hand against tonic's
//! server and client APIs (what `tonic-build` would generate), with its
//! messages declared through prost's derive: no `.proto` file, no protoc.
//!
//! ```text
//! service Usage {
//!   rpc WhoAmI(WhoAmIRequest) returns (WhoAmIReply);          // key and plan that paid
//!   rpc Count(CountRequest) returns (stream CountReply);      // 1..=n; n = 0 fails
//!   rpc Echo(stream CountReply) returns (stream CountReply);  // each as it comes
//! }
//! ```
//! Shared by `examples/grpc_service.rs` and the tests (`#[path]`).
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;
use tower::service_fn;
use tower_usage_plans::UsageContext;

/// `usage.v1.WhoAmIRequest`: nothing.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WhoAmIRequest {}

/// `usage.v1.WhoAmIReply`: who the layer counted the call for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WhoAmIReply {
    #[prost(string, tag = "1")]
    pub key_id: String,
    #[prost(string, tag = "2")]
    pub plan_id: String,
}

/// `usage.v1.CountRequest`: how many replies to stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountRequest {
    #[prost(uint32, tag = "1")]
    pub n: u32,
}

/// `usage.v1.CountReply`: one of them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountReply {
    #[prost(uint32, tag = "1")]
    pub i: u32,
}

pub const WHO_AM_I: &str = "/usage.v1.Usage/WhoAmI";
pub const COUNT: &str = "/usage.v1.Usage/Count";
pub const ECHO: &str = "/usage.v1.Usage/Echo";

/// The server: answers both methods and counts the calls that reach it.
#[derive(Clone, Default)]
pub struct UsageServer {
    calls: Arc<AtomicUsize>,
}

impl UsageServer {
    /// Calls that reached the service (refused ones never do).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl NamedService for UsageServer {
    const NAME: &'static str = "usage.v1.Usage";
}

async fn who_am_i(request: Request<WhoAmIRequest>) -> Result<Response<WhoAmIReply>, Status> {
    // The layer put the context into the request's extensions; tonic keeps
    // them. Behind the gateway (no layer here) the key's id comes as the
    // `x-api-key-id` metadata entry, which the gateway sets.
    if let Some(usage) = request.extensions().get::<UsageContext>() {
        return Ok(Response::new(WhoAmIReply {
            key_id: usage.key_id().to_owned(),
            plan_id: usage.plan_id().to_owned(),
        }));
    }
    let key_id = request
        .metadata()
        .get("x-api-key-id")
        .and_then(|id| id.to_str().ok())
        .ok_or_else(|| {
            Status::failed_precondition("neither behind UsagePlanLayer nor the gateway")
        })?;
    Ok(Response::new(WhoAmIReply {
        key_id: key_id.to_owned(),
        plan_id: String::new(),
    }))
}

type CountStream = tokio_stream::Iter<std::vec::IntoIter<Result<CountReply, Status>>>;

async fn count(request: Request<CountRequest>) -> Result<Response<CountStream>, Status> {
    let n = request.into_inner().n;
    if n == 0 {
        return Err(Status::invalid_argument("n must be at least 1"));
    }
    let replies: Vec<_> = (1..=n).map(|i| Ok(CountReply { i })).collect();
    Ok(Response::new(tokio_stream::iter(replies)))
}

type EchoStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<CountReply, Status>> + Send>>;

async fn echo(
    request: Request<tonic::Streaming<CountReply>>,
) -> Result<Response<EchoStream>, Status> {
    Ok(Response::new(Box::pin(request.into_inner())))
}

impl<B> tower::Service<http::Request<B>> for UsageServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match request.uri().path() {
            WHO_AM_I => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default());
                Ok(grpc.unary(service_fn(who_am_i), request).await)
            }),
            COUNT => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default());
                Ok(grpc.server_streaming(service_fn(count), request).await)
            }),
            ECHO => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default());
                Ok(grpc.streaming(service_fn(echo), request).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// A client of `usage.v1.Usage` over any tonic channel.
pub struct UsageClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl UsageClient {
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    pub async fn who_am_i(
        &mut self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIReply>, Status> {
        self.grpc.ready().await.map_err(not_ready)?;
        let path = http::uri::PathAndQuery::from_static(WHO_AM_I);
        self.grpc.unary(request, path, ProstCodec::default()).await
    }

    pub async fn count(
        &mut self,
        request: Request<CountRequest>,
    ) -> Result<Response<tonic::Streaming<CountReply>>, Status> {
        self.grpc.ready().await.map_err(not_ready)?;
        let path = http::uri::PathAndQuery::from_static(COUNT);
        self.grpc
            .server_streaming(request, path, ProstCodec::default())
            .await
    }

    pub async fn echo(
        &mut self,
        request: Request<impl tokio_stream::Stream<Item = CountReply> + Send + 'static>,
    ) -> Result<Response<tonic::Streaming<CountReply>>, Status> {
        self.grpc.ready().await.map_err(not_ready)?;
        let path = http::uri::PathAndQuery::from_static(ECHO);
        self.grpc
            .streaming(request, path, ProstCodec::default())
            .await
    }
}

fn not_ready(error: tonic::transport::Error) -> Status {
    Status::unavailable(format!("channel not ready: {error}"))
}
