//! A tonic gRPC server wearing `UsagePlanLayer`: the API key comes from the
//! `x-api-key` metadata entry, the handler reads the `UsageContext`, and
//! refusals are gRPC statuses (`UNAUTHENTICATED`, `PERMISSION_DENIED`,
//! `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo`).
//!
//! ```text
//! cargo run --example grpc_service
//! grpcurl -plaintext -H 'x-api-key: demo-key-0123456789abcdef' \
//!     127.0.0.1:50051 usage.v1.Usage/WhoAmI     # needs the service's .proto
//! ```
//! The demo plan allows 2 calls per second (burst 5) and 100 per day; a
//! server-streaming call costs one unit, however many messages it streams.
//!
//! With `--plain` it serves the same service without the layer: an
//! upstream for the gateway, which meters the calls and takes the key off
//! them (`WhoAmI` then answers with the `x-api-key-id` the gateway sets):
//!
//! ```text
//! ADDR=127.0.0.1:50051 cargo run --example grpc_service -- --plain
//! cargo run --release --example gateway -- --config examples/gateway.toml \
//!     --upstream http://127.0.0.1:50051
//! ```

#[path = "support/usage_grpc.rs"]
mod usage_grpc;

#[path = "support/demo.rs"]
mod demo;

use demo::demo_plans;
use tower_usage_plans::{GrpcRefusal, UsagePlanLayer};
use usage_grpc::UsageServer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|arg| arg == "--help" || arg == "-h") {
        println!("usage: [ADDR=HOST:PORT] grpc_service [--plain]  (default 127.0.0.1:50051)");
        return Ok(());
    }
    // The demo plan with the demo key in it (`support/demo.rs`).
    let plans = demo_plans()?;

    // tonic's body cannot be built from bytes: `GrpcRefusal` answers every
    // refusal as a gRPC status with an empty body.
    let layer = UsagePlanLayer::new(plans).with_refusal_response(GrpcRefusal);

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:50051".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    if std::env::args().any(|arg| arg == "--plain") {
        tonic::transport::Server::builder()
            .add_service(UsageServer::default())
            .serve_with_incoming(incoming)
            .await?;
    } else {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(UsageServer::default())
            .serve_with_incoming(incoming)
            .await?;
    }
    Ok(())
}
