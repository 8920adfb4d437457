//! gRPC load through the gateway against the same load straight to the
//! upstream, in one run: a tonic upstream (`usage.v1.Usage`, no layer), the
//! gateway in process in front of it, and a tonic client making unary-ish
//! calls (`Count(1)`: one message back) from `CONCURRENCY` tasks on one
//! HTTP/2 connection each way. Prints calls/s of both and their ratio.
//!
//! `cargo bench --bench grpc_load` (`-- --test`: a short round that only
//! checks it runs).

#[path = "../examples/support/usage_grpc.rs"]
mod usage_grpc;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::transport::{Channel, Server};
use tower_usage_plans::gateway::{FilePlan, Gateway, GatewayConfig};
use tower_usage_plans::{NewApiKey, NewUsagePlan, Quota, QuotaPeriod};
use usage_grpc::{CountRequest, UsageClient, UsageServer};

const KEY: &str = "grpc-load-key-0123456789abcdef";
const CONCURRENCY: usize = 32;
const ROUNDS: u32 = 5;

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(UsageServer::default())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// Calls per second from `CONCURRENCY` tasks for `duration`.
async fn load(addr: SocketAddr, duration: Duration) -> f64 {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let mut client = UsageClient::new(channel.clone());
            let (calls, stop) = (calls.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut request = tonic::Request::new(CountRequest { n: 1 });
                    request
                        .metadata_mut()
                        .insert("x-api-key", KEY.parse().unwrap());
                    let mut stream = client.count(request).await.unwrap().into_inner();
                    while let Some(reply) = stream.next().await {
                        reply.unwrap();
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    calls.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let short = std::env::args().any(|a| a == "--test");
    let duration = Duration::from_millis(if short { 500 } else { 10_000 });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let upstream = upstream().await;
        let gateway = Gateway::start(GatewayConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            admin_listen: ([127, 0, 0, 1], 0).into(),
            upstream: Some(format!("http://{upstream}").parse().unwrap()),
            keys: vec![NewApiKey::new("load").with_value(KEY).with_enabled(true)],
            plans: vec![FilePlan {
                plan: NewUsagePlan::new("load")
                    .with_quota(Quota::new(1_000_000_000, QuotaPeriod::Day)),
                keys: vec!["load".into()],
            }],
            ..GatewayConfig::default()
        })
        .await
        .unwrap();
        // Warm both paths (connections, pools), then alternate short
        // rounds, so that a neighbour's load on a shared machine falls on
        // both alike; medians of each.
        load(upstream, duration / 4).await;
        load(gateway.data_addr(), duration / 4).await;
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            direct.push(load(upstream, duration / ROUNDS).await);
            through.push(load(gateway.data_addr(), duration / ROUNDS).await);
        }
        let (direct, through) = (median(direct), median(through));
        println!(
            "grpc_load: {CONCURRENCY} concurrent calls, medians of {ROUNDS} alternating rounds; \
             direct {direct:.0} calls/s, through the gateway {through:.0} calls/s, ratio {:.2}",
            through / direct
        );
        gateway.shutdown().await.unwrap();
    });
}
