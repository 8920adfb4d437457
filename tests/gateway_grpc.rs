#![cfg(feature = "gateway")]
//! gRPC through the gateway (in process, `Gateway::start`): a tonic client
//! → the gateway → a tonic upstream (no layer of its own), over real
//! sockets. Admitted calls, streaming both ways, the upstream's own error
//! statuses passed through, refusals as gRPC statuses, and the bad input
//! of the issue.

mod support;
use support::gateway_config::{daily_quota, one_key};
use support::grpc::{self, client, plain_server};
use support::{net, usage, usage_grpc};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use net::{closed_addr, within};
use tokio_stream::StreamExt;
use tonic::{Code, Request};
use tower_usage_plans::gateway::{Gateway, GatewayConfig};
use usage::usage_today;
use usage_grpc::{CountReply, CountRequest, WhoAmIRequest};

const KEY: &str = "gateway-grpc-key-0123456789";

async fn gateway(upstream: SocketAddr, limit: u64) -> Gateway {
    Gateway::start(config(upstream, limit)).await.unwrap()
}

fn config(upstream: SocketAddr, limit: u64) -> GatewayConfig {
    GatewayConfig {
        upstream: Some(format!("http://{upstream}").parse().unwrap()),
        ..one_key(KEY, daily_quota(limit))
    }
}

/// A call carrying `KEY`.
fn keyed<T>(message: T) -> Request<T> {
    grpc::keyed(message, KEY)
}

/// Today's `[used, remaining]` of the gateway's one key.
async fn used(gateway: &Gateway) -> [u64; 2] {
    let plans = gateway.plans();
    let plan = &plans.usage_plans()[0];
    let key = &plans.api_keys()[0];
    usage_today(plans, &plan.id, &key.id).await
}

#[tokio::test]
async fn admitted_calls_stream_both_ways_and_upstream_statuses_pass_through() {
    let (up, server) = plain_server().await;
    let gateway = gateway(up, 10).await;
    let mut client = client(gateway.data_addr()).await;

    // Server streaming: five messages, one unit.
    let response = within("Count", client.count(keyed(CountRequest { n: 5 })))
        .await
        .unwrap();
    assert!(response.metadata().contains_key("ratelimit"));
    assert_eq!(grpc::counted(response).await, [1, 2, 3, 4, 5]);
    assert_eq!(used(&gateway).await, [1, 9]);

    // Both ways, interleaved: each message comes back before the next is
    // sent, so neither direction is buffered to its end.
    let (send, receive) = tokio::sync::mpsc::channel(1);
    let outgoing = tokio_stream::wrappers::ReceiverStream::new(receive);
    send.send(CountReply { i: 1 }).await.unwrap();
    let mut incoming = within("Echo", client.echo(keyed(outgoing)))
        .await
        .unwrap()
        .into_inner();
    for i in 1..=3 {
        let echoed = within("an echo", incoming.next()).await.unwrap().unwrap();
        assert_eq!(echoed.i, i);
        if i < 3 {
            send.send(CountReply { i: i + 1 }).await.unwrap();
        }
    }
    drop(send);
    assert!(within("the echo's end", incoming.next()).await.is_none());
    assert_eq!(used(&gateway).await, [2, 8]);

    // The upstream's own statuses (in its trailers, or trailers-only),
    // unchanged: code and message.
    let invalid = within("Count(0)", client.count(keyed(CountRequest { n: 0 })))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(invalid.message(), "n must be at least 1");
    // A unary call: the upstream (no layer of its own) names the key the
    // gateway counted it for, from the `x-api-key-id` the gateway sets.
    let who = within("WhoAmI", client.who_am_i(keyed(WhoAmIRequest {})))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.key_id, gateway.plans().api_keys()[0].id);
    assert_eq!(server.calls(), 4);
    assert_eq!(used(&gateway).await, [4, 6]);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn refusals_are_grpc_statuses_and_never_reach_the_upstream() {
    let (up, server) = plain_server().await;
    let gateway = gateway(up, 1).await;
    let mut client = client(gateway.data_addr()).await;

    let missing = within("no key", client.count(Request::new(CountRequest { n: 1 })))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert_eq!(missing.message(), "Forbidden");
    within("Count", client.count(keyed(CountRequest { n: 1 })))
        .await
        .unwrap();
    let spent = within("spent", client.count(keyed(CountRequest { n: 1 })))
        .await
        .unwrap_err();
    assert_eq!(spent.code(), Code::ResourceExhausted);
    assert_eq!(spent.message(), "Limit Exceeded");
    assert_eq!(
        grpc::retry_delay(&spent),
        Duration::from_secs(grpc::retry_after(&spent))
    );
    assert_eq!(server.calls(), 1);
    assert_eq!(used(&gateway).await, [1, 0]);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_upstream_is_unavailable_and_costs_nothing() {
    let gateway = gateway(closed_addr(), 5).await;
    let mut client = client(gateway.data_addr()).await;
    let down = within("Count", client.count(keyed(CountRequest { n: 1 })))
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    assert_eq!(down.message(), "Bad Gateway");
    assert_eq!(used(&gateway).await, [0, 5]);
    gateway.shutdown().await.unwrap();
}

/// An HTTP/2 upstream that refuses every stream with RST_STREAM
/// REFUSED_STREAM, which RFC 9113 guarantees it did not process.
async fn refusing_upstream() -> SocketAddr {
    h2_upstream(|mut respond| respond.send_reset(h2::Reason::REFUSED_STREAM)).await
}

/// An HTTP/2 upstream (the `h2` crate's server) that hands every stream's
/// `respond` to `answer`.
async fn h2_upstream(
    answer: impl Fn(h2::server::SendResponse<Bytes>) + Clone + Send + 'static,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_, respond))) = connection.accept().await {
                    answer(respond);
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_stream_the_upstream_refused_unprocessed_costs_nothing() {
    let gateway = gateway(refusing_upstream().await, 5).await;
    let mut client = client(gateway.data_addr()).await;
    let refused = within("Count", client.count(keyed(CountRequest { n: 1 })))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(used(&gateway).await, [0, 5]);
    gateway.shutdown().await.unwrap();
}

/// An HTTP/2 upstream that answers every call with a head carrying an
/// `x-big` header of `size` bytes, then `grpc-status: 0` in trailers.
async fn big_head_upstream(size: usize) -> SocketAddr {
    h2_upstream(move |mut respond| {
        let head = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("x-big", "b".repeat(size))
            .body(())
            .unwrap();
        if let Ok(mut body) = respond.send_response(head, false) {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let _ = body.send_trailers(trailers);
        }
    })
    .await
}

/// An upstream's answer with a head over HTTP/2's default bound (16 KiB)
/// and within the gateway's (64 KiB, as for HTTP/1) passes; one past the
/// gateway's is a charged `UNAVAILABLE` (a 502). (Before: every head over
/// 16 KiB broke off, helper 82.)
#[tokio::test]
async fn an_upstream_head_up_to_64_kib_passes() {
    let passing = gateway(big_head_upstream(30_000).await, 5).await;
    let (status, headers) = raw_h2_with_metadata(passing.data_addr(), 0).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-big"].len(), 30_000);
    assert_eq!(headers["grpc-status"], "0");
    assert_eq!(used(&passing).await, [1, 4]);
    passing.shutdown().await.unwrap();

    let too_big = gateway(big_head_upstream(100_000).await, 5).await;
    let (_, headers) = raw_h2_with_metadata(too_big.data_addr(), 0).await;
    assert!(!headers.contains_key("x-big"));
    assert_eq!(headers["grpc-status"], "14", "{headers:?}");
    assert_eq!(used(&too_big).await, [1, 4], "charged: the upstream had it");
    too_big.shutdown().await.unwrap();
}

/// An HTTP/2 upstream that takes one stream at a time
/// (`max_concurrent_streams` 1), answers each with a response head and
/// nothing more, holds it open, and says when one came.
async fn one_stream_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (came, streams) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let came = came.clone();
            tokio::spawn(async move {
                let mut builder = h2::server::Builder::new();
                builder.max_concurrent_streams(1);
                let Ok(mut connection) = builder.handshake::<_, Bytes>(stream).await else {
                    return;
                };
                let mut held = Vec::new();
                while let Some(Ok((_, mut respond))) = connection.accept().await {
                    let head = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    held.push(respond.send_response(head, false));
                    let _ = came.send(());
                }
            });
        }
    });
    (addr, streams)
}

/// A second call while the upstream, which takes one stream at a time,
/// holds the first open: past `--upstream-timeout` it is
/// `DEADLINE_EXCEEDED`, and, having waited for a stream and never left,
/// costs nothing (it was charged, or called the client's stall); the
/// first reached the upstream and is charged.
#[tokio::test]
async fn a_call_that_waited_for_a_stream_of_the_upstream_costs_nothing() {
    let (up, mut streams) = one_stream_upstream().await;
    let gateway = Gateway::start(GatewayConfig {
        upstream_timeout: Duration::from_millis(500),
        body_read_timeout: None,
        ..config(up, 10)
    })
    .await
    .unwrap();
    let (mut one, mut two) = (
        client(gateway.data_addr()).await,
        client(gateway.data_addr()).await,
    );
    let first = tokio::spawn(async move { one.count(keyed(CountRequest { n: 1 })).await });
    within("the first call upstream", streams.recv())
        .await
        .unwrap();
    let second = within("the second call", two.count(keyed(CountRequest { n: 2 }))).await;
    let status = second.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "Endpoint request timed out");
    assert!(
        streams.try_recv().is_err(),
        "the second never reached the upstream"
    );
    assert_eq!(used(&gateway).await, [1, 9]);
    // The first call's client goes: its stream with it.
    first.abort();
    let _ = first.await;
    gateway.shutdown().await.unwrap();
}

/// An upstream that speaks only HTTP/1: whatever comes, it answers
/// `400 Bad Request` (as an HTTP/1 server answers HTTP/2's preface) and
/// closes. It never processes a call.
async fn http1_only_upstream() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut first = [0u8; 24];
                let _ = stream.read(&mut first).await;
                let answer =
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = stream.write_all(answer).await;
            });
        }
    });
    addr
}

/// Calls to an upstream that does not speak HTTP/2 (an HTTP/1-only server
/// given as the upstream, say) are `UNAVAILABLE` and cost nothing: its
/// first bytes are no SETTINGS frame, so it processed no stream. Several
/// at once: the first to fail takes the cause, the others see the
/// connection close under them, and those are free too.
#[tokio::test]
async fn calls_to_an_upstream_that_is_not_http2_cost_nothing() {
    let gateway = gateway(http1_only_upstream().await, 50).await;
    let calls = (0..8).map(|_| {
        let addr = gateway.data_addr();
        async move {
            let mut client = client(addr).await;
            within("Count", client.count(keyed(CountRequest { n: 1 })))
                .await
                .unwrap_err()
        }
    });
    for failed in futures_util::future::join_all(calls).await {
        assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    }
    assert_eq!(used(&gateway).await, [0, 50]);
    gateway.shutdown().await.unwrap();
}

/// One gRPC frame of `CountRequest { n }` (uncompressed).
fn frame(n: u32) -> Bytes {
    let message = prost::Message::encode_to_vec(&CountRequest { n });
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed.into()
}

/// A raw HTTP/2 call with `headers`, answered with status, headers and
/// trailers merged (trailers-only answers have no trailers).
async fn raw_h2(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, http::HeaderMap) {
    let mut sender = net::h2_client(addr).await;
    let mut request = http::Request::post(format!("http://{addr}{}", usage_grpc::COUNT));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(frame(2))).unwrap();
    let response = within("a raw call", sender.send_request(request))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let collected = within("its body", body.collect()).await.unwrap();
    let mut all = parts.headers;
    if let Some(trailers) = collected.trailers() {
        all.extend(trailers.clone());
    }
    (status, all)
}

/// A raw keyed call with `extra` metadata entries besides its
/// `content-type` and key.
async fn raw_h2_with_metadata(addr: SocketAddr, extra: usize) -> (u16, http::HeaderMap) {
    let headers: Vec<(String, String)> = (0..extra)
        .map(|i| (format!("x-meta-{i}"), "v".to_owned()))
        .chain([
            ("content-type".to_owned(), "application/grpc".to_owned()),
            ("x-api-key".to_owned(), KEY.to_owned()),
        ])
        .collect();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    raw_h2(addr, &headers).await
}

/// A gateway in front of `up` whose body read timeout is 300 ms.
async fn impatient_gateway(up: SocketAddr) -> Gateway {
    Gateway::start(GatewayConfig {
        body_read_timeout: Some(Duration::from_millis(300)),
        ..config(up, 10)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer_never_a_hang_or_a_5xx() {
    let (up, _server) = plain_server().await;
    let gateway = gateway(up, 10).await;
    let addr = gateway.data_addr();

    // No `te: trailers`: the gateway sends it to the upstream itself.
    let (status, headers) = raw_h2(
        addr,
        &[("content-type", "application/grpc"), ("x-api-key", KEY)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "0");
    assert_eq!(used(&gateway).await, [1, 9]);

    // A malformed `grpc-timeout`: a gRPC status, whatever the upstream
    // makes of it.
    let (status, headers) = raw_h2(
        addr,
        &[
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", "soon"),
            ("x-api-key", KEY),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers.contains_key("grpc-status"), "{headers:?}");

    // HTTP/1.1 claiming gRPC, in any letter case (media types are
    // case-insensitive): a 400, before metering.
    let before = used(&gateway).await;
    for content_type in ["application/grpc", "Application/GRPC+proto"] {
        let request = http::Request::post(usage_grpc::COUNT)
            .header("host", addr.to_string())
            .header("content-type", content_type)
            .header("x-api-key", KEY)
            .body(Full::new(frame(1)))
            .unwrap();
        let response = within("an HTTP/1.1 call", net::send(addr, request)).await;
        assert_eq!(response.status(), 400, "{content_type}");
    }
    assert_eq!(used(&gateway).await, before, "refused before metering");

    // More metadata than the edge takes: RESOURCE_EXHAUSTED, as gRPC
    // refuses it (it was an HTTP 431 with a JSON body, which a gRPC client
    // reads as UNKNOWN), before metering.
    let (status, headers) = raw_h2_with_metadata(addr, 101).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(headers["grpc-status"], "8", "{headers:?}");
    assert_eq!(used(&gateway).await, before, "refused before metering");
    // The limit is HTTP/1's: 100 fields pass, `:authority` counted as
    // `Host` (it let 101 through); the client sends `content-length` too.
    for (fields, code) in [(100, "0"), (101, "8")] {
        let (_, headers) = raw_h2_with_metadata(addr, fields - 4).await;
        assert_eq!(headers["grpc-status"], code, "{fields} fields");
    }
    gateway.shutdown().await.unwrap();
}

/// A unary call whose request never ends: the upstream has not answered
/// (it waits for the whole message), so the gateway does, with
/// DEADLINE_EXCEEDED at the body read timeout (it was a 408 with a JSON
/// body, read by gRPC clients as UNKNOWN), and the call costs nothing.
#[tokio::test]
async fn a_request_that_never_ends_is_deadline_exceeded_and_free() {
    let (up, _server) = plain_server().await;
    let gateway = impatient_gateway(up).await;
    let addr = gateway.data_addr();
    let (feed, frames) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(frames));
    let mut sender = net::h2_client(addr).await;
    let request = http::Request::post(format!("http://{addr}{}", usage_grpc::COUNT))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-api-key", KEY)
        .body(body)
        .unwrap();
    let response = within("the answer", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    assert_eq!(response.headers()["grpc-status"], "4", "{response:?}");
    assert_eq!(used(&gateway).await, [0, 10]);
    drop(feed);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_idle_request_stream_ends_at_the_body_read_timeout() {
    let (up, _server) = plain_server().await;
    let gateway = impatient_gateway(up).await;
    let mut client = client(gateway.data_addr()).await;
    let (send, receive) = tokio::sync::mpsc::channel(1);
    send.send(CountReply { i: 1 }).await.unwrap();
    let mut incoming = within(
        "Echo",
        client.echo(keyed(tokio_stream::wrappers::ReceiverStream::new(receive))),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        within("an echo", incoming.next()).await.unwrap().unwrap().i,
        1
    );
    // The client keeps its stream open and sends nothing: the call ends
    // with a gRPC status, not a reset stream.
    let ended = within("the stream's end", incoming.next()).await;
    let status = ended.expect("a status ends the call").unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.message(),
        "no data from the client within the body read timeout"
    );
    drop(send);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_an_upstream_a_call_is_unimplemented_not_json() {
    let gateway = Gateway::start(GatewayConfig {
        upstream: None,
        ..config(([127, 0, 0, 1], 9).into(), 10)
    })
    .await
    .unwrap();
    let mut client = client(gateway.data_addr()).await;
    let status = within("Count", client.count(keyed(CountRequest { n: 1 })))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(
        status.message(),
        "no upstream: the built-in echo answers HTTP only"
    );
    gateway.shutdown().await.unwrap();
}
