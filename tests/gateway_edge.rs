#![cfg(feature = "gateway")]
//! The gateway's edge over raw sockets: what hostile or broken clients get
//! (AWS-shaped 4xx answers, closed connections), that they are charged
//! nothing for requests the upstream never received, that they hold no
//! connection past the configured limits, and that they hold no shutdown.
//! Every wait has a deadline; none is a synchronisation.

mod support;
use net::{
    assert_aws_answer, assert_aws_response, channel_post, closed_addr, endless_upstream, get,
    h2_client, http1_server, until_closed, within, TempDir, DEADLINE,
};
use support::eventually::eventually;
use support::gateway_config::{daily_quota, one_key};
use support::{net, redis_server, usage};
use usage::usage_today;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower_usage_plans::admin::AdminCredentials;
use tower_usage_plans::gateway::{Gateway, GatewayConfig};
use tower_usage_plans::Throttle;

const KEY: &str = "edge-test-key-0123456789abc";

/// One key in one plan with a daily quota of 100 and a throttle of burst 1
/// that does not refill within a test; listeners on ephemeral ports; short
/// header and body read timeouts; the echo upstream.
fn config() -> GatewayConfig {
    GatewayConfig {
        header_read_timeout: Some(Duration::from_millis(300)),
        body_read_timeout: Some(Duration::from_millis(300)),
        admin_credentials: AdminCredentials::new().with_access_key("AKIDEDGE", "edge-secret"),
        ..one_key(
            KEY,
            daily_quota(100).with_throttle(Throttle::new(0.0001, 1).unwrap()),
        )
    }
}

/// `[used, remaining]` of `KEY` today.
async fn used_today(gateway: &Gateway) -> [u64; 2] {
    let plans = gateway.plans();
    let plan = plans.usage_plans().into_iter().next().unwrap();
    let key = plans.api_key_by_value(KEY).unwrap();
    usage_today(plans, &plan.id, &key.id).await
}

/// Waits until `KEY` has used `n` today: a count or a refund has no other
/// signal to wait on.
async fn until_used(gateway: &Gateway, n: u64, what: &str) {
    eventually(what, || async {
        (used_today(gateway).await[0] == n).then_some(())
    })
    .await;
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Sends `sent` on a new connection, then (if `then_close`) shuts the
/// write half, and reads everything until the gateway closes.
async fn exchange(addr: SocketAddr, sent: &[u8], then_close: bool) -> String {
    // A reset after the answer is as good as a close here.
    let (answer, _) = until_closed(addr, sent, then_close).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status, lower-cased head and body of a raw HTTP/1.1 answer.
fn parse(answer: &str) -> (u16, String, String) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer head: {answer:?}"));
    let status = head[9..12].parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// An AWS-shaped answer: `status`, the JSON message, the error type and a
/// request id.
#[track_caller]
fn assert_aws(answer: &str, status: u16, message: &str, error_type: &str) {
    let (got, head, body) = parse(answer);
    assert_eq!(got, status, "{answer}");
    assert!(
        head.contains(&format!(
            "x-amzn-errortype: {}",
            error_type.to_ascii_lowercase()
        )),
        "{answer}"
    );
    assert!(head.contains("content-type: application/json"), "{answer}");
    // On either listener, as every AWS answer does.
    assert!(head.contains("\r\nx-amzn-requestid: "), "{answer}");
    // A chunked or sized body: the JSON is in it.
    let start = body
        .find('{')
        .unwrap_or_else(|| panic!("no JSON: {answer}"));
    let end = body.rfind('}').unwrap() + 1;
    assert_eq!(
        json(&body.as_bytes()[start..end]),
        serde_json::json!({ "message": message }),
        "{answer}"
    );
}

/// A hyper HTTP/1.1 upstream that reports each request whose body it read
/// whole, and answers 200.
async fn reporting_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Bytes>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = http1_server(move |request: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            if let Ok(body) = request.into_body().collect().await {
                let _ = tx.send(body.to_bytes());
            }
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await;
    (addr, rx)
}

fn post_head(length: &str) -> String {
    format!("POST /things HTTP/1.1\r\nhost: gateway\r\nx-api-key: {KEY}\r\n{length}\r\n\r\n")
}

#[tokio::test]
async fn framing_errors_cost_nothing_and_get_400() {
    let (upstream, mut received) = reporting_upstream().await;
    for base in [None, Some(format!("http://{upstream}"))] {
        let mut config = config();
        config.upstream = base.as_deref().map(|b| b.parse().unwrap());
        // The body timer is not what ends these requests.
        config.body_read_timeout = None;
        let gateway = Gateway::start(config).await.unwrap();
        let addr = gateway.data_addr();
        let chunked = post_head("transfer-encoding: chunked");
        let cases: [(&str, String, bool); 4] = [
            (
                "a chunk size that is not hex",
                format!("{chunked}ZZ\r\nhello\r\n0\r\n\r\n"),
                false,
            ),
            (
                "an overflowing chunk size",
                format!("{chunked}FFFFFFFFFFFFFFFFF\r\nhello\r\n"),
                false,
            ),
            (
                "a body shorter than its length",
                format!("{}hello", post_head("content-length: 100")),
                true,
            ),
            (
                "a chunked body cut short",
                format!("{chunked}a\r\nhello"),
                true,
            ),
        ];
        for (what, sent, then_close) in cases {
            let answer = exchange(addr, sent.as_bytes(), then_close).await;
            if !then_close {
                assert_aws(&answer, 400, "Bad Request", "BadRequestException");
            }
            // The throttle (burst 1) has its token back, the quota its unit.
            let (status, _, _) = get(addr, "/", Some(KEY)).await;
            assert_eq!(status, StatusCode::OK, "after {what} ({base:?}): {answer}");
            assert_eq!(
                used_today(&gateway).await[0],
                1,
                "{what} ({base:?}) was charged"
            );
            gateway
                .plans()
                .store()
                .forget(&tower_usage_plans::store::CounterKey::new(
                    &gateway.plans().usage_plans()[0].id,
                    &gateway.plans().api_key_by_value(KEY).unwrap().id,
                ))
                .await
                .unwrap();
        }
        // A client that resets its connection mid-body, once the request
        // was counted: the count goes back (no other signal of either).
        let sent = format!("{}hello", post_head("content-length: 100"));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(sent.as_bytes()).await.unwrap();
        until_used(&gateway, 1, "the request to be counted").await;
        stream.set_zero_linger().unwrap();
        drop(stream);
        until_used(&gateway, 0, "the refund after the reset").await;
        gateway.shutdown().await.unwrap();
    }
    // The upstream got only the gateway's own GETs, whole.
    while let Ok(body) = received.try_recv() {
        assert!(
            body.is_empty(),
            "a broken body reached the upstream: {body:?}"
        );
    }
}

/// With the counters in Redis (leased or not), a broken body costs nothing
/// either: the refund is exact there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_errors_cost_nothing_with_redis() {
    for leases in [false, true] {
        let redis = redis_server::Redis::start();
        let mut config = config();
        config.redis = Some(format!("redis://127.0.0.1:{}", redis.port));
        config.redis_leases = leases;
        let gateway = Gateway::start(config).await.unwrap();
        let addr = gateway.data_addr();
        let sent = format!(
            "{}ZZ\r\nhello\r\n0\r\n\r\n",
            post_head("transfer-encoding: chunked")
        );
        let answer = exchange(addr, sent.as_bytes(), false).await;
        assert_aws(&answer, 400, "Bad Request", "BadRequestException");
        let (status, _, _) = get(addr, "/", Some(KEY)).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the token is back (leases: {leases})"
        );
        let (status, _, _) = get(addr, "/", Some(KEY)).await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "only one (leases: {leases})"
        );
        gateway.shutdown().await.unwrap();
        // After the stop, every lease given back: exactly one request used.
        let fresh = Gateway::start({
            let mut config = self::config();
            config.redis = Some(format!("redis://127.0.0.1:{}", redis.port));
            config
        })
        .await
        .unwrap();
        assert_eq!(used_today(&fresh).await[0], 1, "leases: {leases}");
        fresh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn connect_and_asterisk_targets_are_refused_before_metering() {
    let gateway = Gateway::start(config()).await.unwrap();
    let connect = format!(
        "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\nx-api-key: {KEY}\r\n\r\n"
    );
    let answer = exchange(gateway.data_addr(), connect.as_bytes(), true).await;
    assert_aws(
        &answer,
        405,
        "Method Not Allowed",
        "MethodNotAllowedException",
    );
    let options = format!("OPTIONS * HTTP/1.1\r\nhost: gateway\r\nx-api-key: {KEY}\r\n\r\n");
    let answer = exchange(gateway.data_addr(), options.as_bytes(), true).await;
    assert_aws(&answer, 400, "Bad Request", "BadRequestException");
    let two_hosts =
        format!("GET / HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\nx-api-key: {KEY}\r\n\r\n");
    let answer = exchange(gateway.data_addr(), two_hosts.as_bytes(), true).await;
    assert_aws(&answer, 400, "Bad Request", "BadRequestException");
    assert_eq!(used_today(&gateway).await[0], 0);
    // The admin listener answers the same way.
    let answer = exchange(gateway.admin_addr(), connect.as_bytes(), true).await;
    assert_aws(
        &answer,
        405,
        "Method Not Allowed",
        "MethodNotAllowedException",
    );
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stalled_body_gets_408_closes_the_connection_and_costs_nothing() {
    let (upstream, _received) = reporting_upstream().await;
    for base in [None, Some(format!("http://{upstream}"))] {
        let mut config = config();
        config.upstream = base.as_deref().map(|b| b.parse().unwrap());
        let gateway = Gateway::start(config).await.unwrap();
        // Ten bytes of a thousand, then nothing: answered, and closed
        // (`exchange` reads until the gateway closes).
        let sent = format!("{}0123456789", post_head("content-length: 1000"));
        let answer = exchange(gateway.data_addr(), sent.as_bytes(), false).await;
        assert_aws(&answer, 408, "Request Timeout", "RequestTimeoutException");
        assert!(parse(&answer).1.contains("connection: close"), "{answer}");
        let (status, _, _) = get(gateway.data_addr(), "/", Some(KEY)).await;
        assert_eq!(status, StatusCode::OK, "the token is back ({base:?})");
        assert_eq!(used_today(&gateway).await[0], 1, "{base:?}");

        // Stalled past the upstream timeout (before the body timeout): still
        // the client's stall, and free.
        if base.is_some() {
            let mut config = self::config();
            config.upstream = base.as_deref().map(|b| b.parse().unwrap());
            config.body_read_timeout = None;
            config.upstream_timeout = Duration::from_millis(300);
            let stalled = Gateway::start(config).await.unwrap();
            let sent = format!("{}0123456789", post_head("content-length: 1000"));
            let answer = exchange(stalled.data_addr(), sent.as_bytes(), false).await;
            assert_aws(&answer, 408, "Request Timeout", "RequestTimeoutException");
            let (status, _, _) = get(stalled.data_addr(), "/", Some(KEY)).await;
            assert_eq!(status, StatusCode::OK, "the token is back");
            stalled.shutdown().await.unwrap();
        }

        // The admin API too: a body that never comes.
        let sent = "POST /usageplans HTTP/1.1\r\nhost: admin\r\ncontent-type: application/json\r\ncontent-length: 50\r\n\r\n{";
        let answer = exchange(gateway.admin_addr(), sent.as_bytes(), false).await;
        assert_aws(&answer, 408, "Request Timeout", "RequestTimeoutException");
        gateway.shutdown().await.unwrap();
    }
}

/// An upload that keeps coming, over a longer time than
/// `--upstream-timeout`, reaches the upstream whole and gets its answer:
/// the timeout counts from the body's last part, not from the request's
/// start. (Before: 408 at the timeout, however steadily the body came.)
#[tokio::test]
async fn an_upload_that_keeps_coming_outlasts_the_upstream_timeout() {
    let (upstream, mut received) = reporting_upstream().await;
    let mut config = config();
    config.upstream = Some(format!("http://{upstream}").parse().unwrap());
    config.body_read_timeout = None;
    config.body_min_rate = None;
    config.upstream_timeout = Duration::from_millis(500);
    let gateway = Gateway::start(config).await.unwrap();
    // 30 parts 50 ms apart: three times the upstream timeout in all.
    const PARTS: usize = 30;
    let part = b"0123456789";
    let length = format!(
        "connection: close\r\ncontent-length: {}",
        PARTS * part.len()
    );
    let head = post_head(&length);
    let mut stream = TcpStream::connect(gateway.data_addr()).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..PARTS {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.write_all(part).await.unwrap();
    }
    let mut answer = Vec::new();
    within("the answer", stream.read_to_end(&mut answer))
        .await
        .unwrap();
    let (status, _, body) = parse(&String::from_utf8_lossy(&answer));
    assert_eq!((status, body.as_str()), (200, "ok"));
    let body = within("the upstream's body", received.recv())
        .await
        .unwrap();
    assert_eq!(body.len(), PARTS * part.len(), "the whole body went on");
    gateway.shutdown().await.unwrap();
}

/// An upstream that read the request's head and stopped taking its body
/// (busy, or pushing back) had the request: past `--upstream-timeout` the
/// client, who sent all of it, gets 504 and is charged, not 408 "your
/// body stalled" for free (as before, when an unfinished body was always
/// the client's stall).
#[tokio::test]
async fn an_upstream_that_stops_reading_the_body_times_out_with_504_and_is_charged() {
    // Reads no more, answers nothing.
    let (upstream_addr, mut head_came) = head_taking_upstream("").await;
    let mut config = config();
    config.upstream = Some(format!("http://{upstream_addr}").parse().unwrap());
    config.body_read_timeout = None;
    config.body_min_rate = None;
    config.upstream_timeout = Duration::from_millis(300);
    // Not what ends the connection here.
    config.header_read_timeout = Some(DEADLINE * 2);
    let gateway = Gateway::start(config).await.unwrap();
    // All of a body larger than every buffer between the client and the
    // upstream: the client is never the one that stalls.
    const LENGTH: usize = 32 << 20;
    let stream = TcpStream::connect(gateway.data_addr()).await.unwrap();
    let (mut reading, mut writing) = stream.into_split();
    let sender = tokio::spawn(async move {
        let head = post_head(&format!("content-length: {LENGTH}"));
        writing.write_all(head.as_bytes()).await?;
        writing.write_all(&vec![b'x'; LENGTH]).await
    });
    within("the head upstream", head_came.recv()).await.unwrap();
    let mut answer = Vec::new();
    let _ = within("the answer", reading.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert_aws(
        &answer,
        504,
        "Endpoint request timed out",
        "GatewayTimeoutException",
    );
    // The connection ends rather than holding the rest of the body (and
    // the client) while the upstream neither reads nor answers.
    let sent = within("the connection to end", sender).await.unwrap();
    assert!(sent.is_err(), "the whole body was taken: {sent:?}");
    assert_eq!(
        used_today(&gateway).await[0],
        1,
        "charged: the upstream had it"
    );
    gateway.shutdown().await.unwrap();
}

/// An upstream whose response head is larger than the gateway takes
/// (64 KiB) gets its client a 502, not a header line no client is bound to
/// read (before: a 200,000-byte header passed on); the upstream had the
/// request, so it is charged.
#[tokio::test]
async fn an_upstream_response_head_too_large_is_a_bad_gateway() {
    let huge = format!(
        "HTTP/1.1 200 OK\r\nx-huge: {}\r\ncontent-length: 0\r\n\r\n",
        "h".repeat(100_000)
    );
    let reply = Box::leak(huge.into_boxed_str());
    is_a_charged_bad_gateway(reply, "a 100 KB response head").await;
}

/// An upstream that answers a plain request `101 Switching Protocols`
/// (no upgrade was asked for) gets its client a 502, not a connection
/// switched to a protocol the client never asked for; the upstream had
/// the request, so it is charged.
#[tokio::test]
async fn an_unasked_switch_of_protocols_is_a_bad_gateway() {
    let switch =
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: other\r\n\r\n";
    is_a_charged_bad_gateway(switch, "an unasked 101").await;
}

/// A GET to an upstream that answers `reply` gets its client a 502 (AWS
/// shaped), and is charged: the upstream had the request.
async fn is_a_charged_bad_gateway(reply: &'static str, what: &str) {
    let (upstream_addr, _) = head_taking_upstream(reply).await;
    let mut config = config();
    config.upstream = Some(format!("http://{upstream_addr}").parse().unwrap());
    let gateway = Gateway::start(config).await.unwrap();
    let answer = get(gateway.data_addr(), "/things", Some(KEY)).await;
    assert_aws_answer(&answer, (502, "Bad Gateway", "BadGatewayException"), what);
    assert_eq!(
        used_today(&gateway).await[0],
        1,
        "charged: the upstream had it"
    );
    gateway.shutdown().await.unwrap();
}

/// An upstream that takes one connection, reads (up to 1 KiB of) the
/// request's head, reports it, writes `reply`, and holds the socket,
/// reading no more.
async fn head_taking_upstream(reply: &'static str) -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    let (head_read, head_came) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut socket, _) = upstream.accept().await.unwrap();
        let mut head = [0u8; 1024];
        let _ = socket.read(&mut head).await;
        let _ = head_read.send(());
        socket.write_all(reply.as_bytes()).await.unwrap();
        std::future::pending::<()>().await;
        drop(socket);
    });
    (addr, head_came)
}

/// A body that trickles in (a byte every 100 ms: never idle for the 300 ms
/// body read timeout) holds its connection only until the minimum rate is
/// judged, 5 s into waiting for it: 408, closed, never reaching the
/// upstream whole, and free.
#[tokio::test]
async fn a_trickling_body_gets_408_at_the_minimum_rate_and_costs_nothing() {
    let (upstream, mut received) = reporting_upstream().await;
    let mut config = config();
    config.upstream = Some(format!("http://{upstream}").parse().unwrap());
    assert_eq!(
        config.body_min_rate.map(|r| r.get()),
        Some(240),
        "the default"
    );
    let gateway = Gateway::start(config).await.unwrap();

    let mut stream = TcpStream::connect(gateway.data_addr()).await.unwrap();
    stream
        .write_all(post_head("content-length: 1000").as_bytes())
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        let mut sent = 0;
        // Until the gateway closes (or far past the 5 s it should take).
        while sent < 200 && writer.write_all(b"x").await.is_ok() {
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent
    });
    // What was read stays in `answer` if the close ends in a reset (the
    // trickle goes on writing to a closed socket).
    let mut answer = Vec::new();
    let _ = within(
        "the gateway to close the connection",
        reader.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert_aws(&answer, 408, "Request Timeout", "RequestTimeoutException");
    assert!(parse(&answer).1.contains("connection: close"), "{answer}");
    let sent = trickle.await.unwrap();
    assert!(sent < 200, "the gateway waited for all {sent} bytes");
    assert!(
        received.try_recv().is_err(),
        "the upstream got the body whole"
    );

    let (status, _, _) = get(gateway.data_addr(), "/", Some(KEY)).await;
    assert_eq!(status, StatusCode::OK, "the token is back");
    assert_eq!(used_today(&gateway).await[0], 1);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_gateway_answers_too_long_urls_and_too_many_or_large_headers_itself() {
    let gateway = Gateway::start(config()).await.unwrap();
    let too_large = (
        431,
        "Request Header Fields Too Large",
        "RequestHeaderFieldsTooLargeException",
    );
    let many: String = (0..150).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    let cases = [
        // A 9 KiB request target.
        (
            format!(
                "GET /{} HTTP/1.1\r\nhost: gateway\r\nx-api-key: {KEY}\r\n\r\n",
                "a".repeat(9 * 1024)
            ),
            (414, "Request-URI Too Long", "RequestUriTooLongException"),
        ),
        // 150 headers.
        (
            format!("GET / HTTP/1.1\r\nhost: gateway\r\nx-api-key: {KEY}\r\n{many}\r\n"),
            too_large,
        ),
        // A 100 KiB header.
        (
            format!(
                "GET / HTTP/1.1\r\nhost: gateway\r\nx-api-key: {}\r\n\r\n",
                "k".repeat(100 * 1024)
            ),
            too_large,
        ),
    ];
    for addr in [gateway.data_addr(), gateway.admin_addr()] {
        for (sent, (status, message, error_type)) in &cases {
            let answer = exchange(addr, sent.as_bytes(), true).await;
            assert_aws(&answer, *status, message, error_type);
        }
    }
    assert_eq!(used_today(&gateway).await[0], 0);
    // The limit is on the client's own fields: 100 pass (the request id
    // the gateway stamps made them 101, refused), 101 do not.
    for (fields, passes) in [(100, true), (101, false)] {
        let more: String = (0..fields - 2)
            .map(|i| format!("x-h{i}: {i}\r\n"))
            .collect();
        let sent = format!("GET / HTTP/1.1\r\nhost: gateway\r\nx-api-key: {KEY}\r\n{more}\r\n");
        let answer = exchange(gateway.data_addr(), sent.as_bytes(), true).await;
        let status = parse(&answer).0;
        assert_eq!(status == 200, passes, "{fields} fields: {answer}");
    }
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn upstream_failures_carry_the_aws_error_type() {
    // A port nothing listens on: bind it, note it, free it.
    let closed = closed_addr();
    let mut config = config();
    config.upstream = Some(format!("http://{closed}").parse().unwrap());
    let gateway = Gateway::start(config).await.unwrap();
    assert_aws_answer(
        &get(gateway.data_addr(), "/", Some(KEY)).await,
        (502, "Bad Gateway", "BadGatewayException"),
        "a closed upstream",
    );
    gateway.shutdown().await.unwrap();

    // An upstream that takes the request and never answers: 504.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let mut config = self::config();
    config.upstream = Some(format!("http://{silent}").parse().unwrap());
    config.upstream_timeout = Duration::from_millis(200);
    let gateway = Gateway::start(config).await.unwrap();
    assert_aws_answer(
        &get(gateway.data_addr(), "/", Some(KEY)).await,
        (504, "Endpoint request timed out", "GatewayTimeoutException"),
        "a silent upstream",
    );
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_body_too_large_for_the_echo_is_413_with_the_aws_shape() {
    let gateway = Gateway::start(config()).await.unwrap();
    let request = Request::post("/big")
        .header("host", "gateway")
        .header("x-api-key", KEY)
        .body(Full::new(Bytes::from(vec![b'x'; 2 * 1024 * 1024])))
        .unwrap();
    let response = net::send(gateway.data_addr(), request).await;
    assert_aws_response(
        response,
        (413, "Request Too Long", "RequestEntityTooLargeException"),
        "the answer",
    )
    .await;
    gateway.shutdown().await.unwrap();
}

// ---- HTTP/2 -----------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame: `kind`, `flags`, `stream`, `payload`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The types of the frames in `bytes` (whole frames only).
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = (usize::from(bytes[at]) << 16)
            | (usize::from(bytes[at + 1]) << 8)
            | usize::from(bytes[at + 2]);
        types.push(bytes[at + 3]);
        at += 9 + len;
    }
    types
}

const GOAWAY: u8 = 0x7;

/// Opens an HTTP/2 connection that sends the preface and then `then`
/// (PINGs, if `ping`, until it is closed); returns the frame types the
/// gateway sent before it closed the connection.
async fn h2_until_closed(addr: SocketAddr, then: &[u8], ping: bool) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    hello.extend_from_slice(then);
    write.write_all(&hello).await.unwrap();
    // The write half stays open (dropping it would send a FIN) until the
    // gateway has closed the connection.
    let pinger = tokio::spawn(async move {
        if !ping {
            std::future::pending::<()>().await;
        }
        // Keeps the connection busy with PINGs only (the behaviour under
        // test, not a synchronisation).
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if write.write_all(&frame(0x6, 0, 0, &[0; 8])).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    within(
        "the gateway to close the HTTP/2 connection",
        read.read_to_end(&mut got),
    )
    .await
    .unwrap_or_default();
    pinger.abort();
    frame_types(&got[..])
}

#[tokio::test]
async fn http2_connections_without_a_request_are_closed_with_goaway() {
    let mut config = config();
    // Far below the 30 s deadline of `within`, far above a scheduler's noise.
    config.header_read_timeout = Some(Duration::from_millis(500));
    let gateway = Gateway::start(config).await.unwrap();
    // HEADERS without END_HEADERS (and never a CONTINUATION): `:method GET`.
    let unfinished = frame(0x1, 0x0, 1, &[0x82]);
    for addr in [gateway.data_addr(), gateway.admin_addr()] {
        for (what, then, ping) in [
            ("the preface only", &[][..], false),
            ("an unfinished HEADERS frame", &unfinished[..], false),
            ("PINGs only", &[][..], true),
        ] {
            let frames = h2_until_closed(addr, then, ping).await;
            assert!(
                frames.contains(&GOAWAY),
                "{what} on {addr}: frames {frames:?}"
            );
        }
    }
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn http2_requests_still_get_answers_after_the_header_timeout() {
    let mut config = config();
    config.header_read_timeout = Some(Duration::from_millis(300));
    let gateway = Gateway::start(config).await.unwrap();
    let mut sender = h2_client(gateway.data_addr()).await;
    // A request that takes longer than the header timeout to answer (its
    // body is slow) keeps its connection: it is in flight.
    let (tx, request) = channel_post(gateway.data_addr(), "/slow", KEY);
    let response = sender.send_request(request);
    let sending = tokio::spawn(async move {
        for _ in 0..4 {
            // Slower than the header timeout in all, each part well within
            // the body timeout: the behaviour under test.
            tokio::time::sleep(Duration::from_millis(150)).await;
            tx.send(Bytes::from_static(b"x")).await.unwrap();
        }
    });
    let response = within("the answer", response).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    sending.await.unwrap();
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stalled_http2_request_body_gets_408_and_costs_nothing() {
    let gateway = Gateway::start(config()).await.unwrap();
    let mut sender = h2_client(gateway.data_addr()).await;
    let (tx, request) = channel_post(gateway.data_addr(), "/upload", KEY);
    tx.send(Bytes::from_static(b"a start")).await.unwrap();
    // The rest of the body never comes (`tx` is held, not dropped).
    let response = within("the answer", sender.send_request(request))
        .await
        .unwrap();
    assert_aws_response(
        response,
        (408, "Request Timeout", "RequestTimeoutException"),
        "the answer",
    )
    .await;
    drop(tx);
    let (status, _, _) = get(gateway.data_addr(), "/", Some(KEY)).await;
    assert_eq!(status, StatusCode::OK, "the token is back");
    assert_eq!(used_today(&gateway).await[0], 1);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_http2_stream_reset_mid_body_costs_nothing() {
    let mut config = config();
    config.body_read_timeout = None;
    let gateway = Gateway::start(config).await.unwrap();
    let mut sender = h2_client(gateway.data_addr()).await;
    let (tx, request) = channel_post(gateway.data_addr(), "/upload", KEY);
    tx.send(Bytes::from_static(b"a start")).await.unwrap();
    let pending = tokio::spawn(sender.send_request(request));
    until_used(&gateway, 1, "the request to be counted").await;
    // Dropping the response future resets the stream (RST_STREAM): the
    // gateway drops the request's future with it.
    pending.abort();
    until_used(&gateway, 0, "the refund after the reset").await;
    drop(tx);
    gateway.shutdown().await.unwrap();
}

/// hyper ends an HTTP/2 request body whose stream the client reset with
/// NO_ERROR or CANCEL as if it had come whole. One that declared its
/// length and came short is not whole: it never reaches the upstream (here
/// the echo, which would answer it at once) as a complete request, and
/// costs nothing.
#[tokio::test]
async fn an_http2_body_reset_short_of_its_content_length_costs_nothing() {
    let mut config = config();
    config.body_read_timeout = None;
    let gateway = Gateway::start(config).await.unwrap();
    let mut client = raw_h2_client(gateway.data_addr()).await;
    for reason in [h2::Reason::NO_ERROR, h2::Reason::CANCEL] {
        let request = Request::post(format!("http://{}/upload", gateway.data_addr()))
            .header("x-api-key", KEY)
            .header("content-length", "100")
            .body(())
            .unwrap();
        let (answer, mut body) = client.send_request(request, false).unwrap();
        body.send_data(Bytes::from_static(b"abc"), false).unwrap();
        until_used(&gateway, 1, "the request to be counted").await;
        body.send_reset(reason);
        until_used(
            &gateway,
            0,
            &format!("the refund after a reset with {reason:?}"),
        )
        .await;
        // If an answer comes, it is not the echo's 200.
        if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_millis(100), answer).await {
            assert_ne!(response.status(), StatusCode::OK, "{reason:?}");
        }
    }
    gateway.shutdown().await.unwrap();
}

/// An admin request whose body is over the 1 MiB limit, sent whole by a
/// client that reads only after it has written (as SDKs do): it reads the
/// 413, and the connection closes after it. (Before: the gateway answered
/// and closed mid-body, the client's writes failed with EPIPE and it never
/// read the 413; or, read, the connection looked reusable and the next
/// request failed.)
#[tokio::test]
async fn an_admin_body_too_large_is_read_to_its_end_answered_413_and_closed() {
    let gateway = Gateway::start(config()).await.unwrap();
    for (length, chunked) in [(3 << 20, false), (3 << 20, true), ((1 << 20) + 1, false)] {
        let mut sent = format!(
            "POST /usageplans HTTP/1.1\r\nhost: admin\r\ncontent-type: application/json\r\n{}\r\n\r\n",
            match chunked {
                true => "transfer-encoding: chunked".to_owned(),
                false => format!("content-length: {length}"),
            }
        )
        .into_bytes();
        let body = vec![b'x'; length];
        if chunked {
            for chunk in body.chunks(64 << 10) {
                sent.extend(format!("{:x}\r\n", chunk.len()).bytes());
                sent.extend(chunk);
                sent.extend(b"\r\n");
            }
            sent.extend(b"0\r\n\r\n");
        } else {
            sent.extend(&body);
        }
        let (answer, read) = until_closed(gateway.admin_addr(), &sent, false).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(read.is_ok(), "closed by a reset: {read:?}, {answer}");
        assert_aws(
            &answer,
            413,
            "Request body is larger than 1048576 bytes",
            "RequestEntityTooLargeException",
        );
        assert!(
            parse(&answer).1.contains("\r\nconnection: close"),
            "{answer}"
        );
    }
    gateway.shutdown().await.unwrap();
}

// ---- clients that leave ----------------------------------------------

/// One key in one daily plan of 100, no throttle, in front of `upstream`.
fn config_for(upstream: SocketAddr) -> GatewayConfig {
    GatewayConfig {
        upstream: Some(format!("http://{upstream}").parse().unwrap()),
        ..one_key(KEY, daily_quota(100))
    }
}

/// A client that sends a whole request and shuts its writing side (`nc
/// -N`) gets its answer, and the upstream has the request it was charged
/// for. (Before: no answer, and charged for a request never sent.)
#[tokio::test]
async fn a_half_closed_http1_client_gets_its_answer_and_is_charged_once() {
    let (upstream, mut seen) = reporting_upstream().await;
    let gateway = Gateway::start(config_for(upstream)).await.unwrap();
    for n in 1..=3 {
        let request = format!("GET /things HTTP/1.1\r\nhost: gateway\r\nx-api-key: {KEY}\r\n\r\n");
        let answer = exchange(gateway.data_addr(), request.as_bytes(), true).await;
        let (status, _, body) = parse(&answer);
        assert_eq!((status, body.as_str()), (200, "ok"), "{answer}");
        within("the upstream to have it", seen.recv())
            .await
            .unwrap();
        assert_eq!(used_today(&gateway).await[0], n);
    }
    gateway.shutdown().await.unwrap();
}

/// HTTP/2 streams the client resets right after their request (HEADERS
/// with END_STREAM, then RST_STREAM): each admitted request still goes to
/// the upstream, so every unit charged is one the upstream had. (Before:
/// the request's future was dropped with the stream, after the charge and
/// before the upstream had it: 10 charged, 0 seen.)
#[tokio::test]
async fn an_http2_request_reset_after_it_was_sent_is_charged_only_as_the_upstream_had_it() {
    let (upstream, mut seen) = reporting_upstream().await;
    let gateway = Gateway::start(config_for(upstream)).await.unwrap();
    let mut client = raw_h2_client(gateway.data_addr()).await;
    const RESETS: u64 = 10;
    for _ in 0..RESETS {
        let request = Request::get(format!("http://{}/things", gateway.data_addr()))
            .header("x-api-key", KEY)
            .body(())
            .unwrap();
        client = client.ready().await.unwrap();
        let (answer, _) = client.send_request(request, true).unwrap();
        // Dropping the answer's future resets the stream (CANCEL).
        drop(answer);
    }
    for n in 1..=RESETS {
        within(&format!("request {n} at the upstream"), seen.recv())
            .await
            .unwrap();
    }
    until_used(&gateway, RESETS, "every request charged").await;
    gateway.shutdown().await.unwrap();
}

/// An HTTP/2 upstream that reports when a request's first data frame
/// arrives, and when its body breaks off; it answers only at the body's
/// end (a client-streaming gRPC call's server).
async fn streaming_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<&'static str>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let mut body = request.into_body();
                        let mut first = true;
                        loop {
                            match body.frame().await {
                                Some(Ok(frame)) if frame.is_data() && first => {
                                    first = false;
                                    let _ = tx.send("message");
                                }
                                Some(Ok(_)) => {}
                                Some(Err(_)) => {
                                    let _ = tx.send("broke off");
                                    break;
                                }
                                None => break,
                            }
                        }
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("content-type", "application/grpc")
                                .header("grpc-status", "0")
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// Opens a client-streaming gRPC call on `client` with `KEY`: its answer,
/// and the stream to send its messages on.
fn open_grpc_call(
    client: &mut h2::client::SendRequest<Bytes>,
    gateway: SocketAddr,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let request = Request::post(format!("http://{gateway}/t.T/Stream"))
        .header("x-api-key", KEY)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    client.send_request(request, false).unwrap()
}

/// A client-streaming gRPC call the client cancels after its first
/// message reached the upstream stays charged: the upstream handles each
/// message as it comes. (Before: given back, so a client could stream and
/// cancel without end, for free.) One cancelled before its first message
/// went on whole is given back.
#[tokio::test]
async fn a_grpc_stream_cancelled_after_a_message_reached_the_upstream_stays_charged() {
    let (upstream, mut events) = streaming_upstream().await;
    let gateway = Gateway::start(config_for(upstream)).await.unwrap();
    let mut client = raw_h2_client(gateway.data_addr()).await;
    let (_answer, mut body) = open_grpc_call(&mut client, gateway.data_addr());
    // One gRPC message: uncompressed, 3 bytes.
    body.send_data(Bytes::from_static(b"\0\0\0\0\x03abc"), false)
        .unwrap();
    assert_eq!(
        within("the message at the upstream", events.recv()).await,
        Some("message")
    );
    body.send_reset(h2::Reason::CANCEL);
    // A refund would have come before the upstream heard of the reset
    // (the gateway hears it first).
    assert_eq!(
        within("the reset at the upstream", events.recv()).await,
        Some("broke off")
    );
    assert_eq!(used_today(&gateway).await[0], 1);
    // A call cancelled before its first message went on whole costs
    // nothing (3 of its 8 bytes sent).
    let (_answer, mut body) = open_grpc_call(&mut client, gateway.data_addr());
    body.send_data(Bytes::from_static(b"\0\0\0"), false)
        .unwrap();
    until_used(&gateway, 2, "the second call to be counted").await;
    body.send_reset(h2::Reason::CANCEL);
    until_used(&gateway, 1, "the refund of the second call").await;
    gateway.shutdown().await.unwrap();
}

/// An HTTP/2 connection to `addr` with h2's own client, which can reset a
/// stream or send a body frame by frame (its connection driven by a task).
async fn raw_h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    client
}

// ---- shutdown ---------------------------------------------------------

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once_and_flushes_every_count() {
    let dir = TempDir::new("edge-shutdown");
    let mut config = config();
    // Neither limit may be what ends the connections below.
    config.header_read_timeout = None;
    config.body_read_timeout = None;
    config.shutdown_grace = Duration::from_secs(300);
    config.state_file = Some(dir.join("state.json"));
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.data_addr();

    // An idle keep-alive connection, after one admitted request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET / HTTP/1.1\r\nhost: gateway\r\nx-api-key: {KEY}\r\n\r\n");
    idle.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // A request whose head never ends.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nhost: gate")
        .await
        .unwrap();
    // An HTTP/2 connection with nothing in flight.
    let mut h2 = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    h2.write_all(&hello).await.unwrap();

    within("the shutdown (the grace is 300 s)", gateway.shutdown())
        .await
        .unwrap();
    for (what, mut stream) in [("idle", idle), ("half", half), ("h2", h2)] {
        let mut rest = Vec::new();
        within(what, stream.read_to_end(&mut rest))
            .await
            .unwrap_or_default();
    }
    // The count was flushed.
    let saved = std::fs::read_to_string(dir.join("state.json")).unwrap();
    assert!(saved.contains("\"used\":1"), "{saved}");
}

#[tokio::test]
async fn shutdown_gives_in_flight_requests_the_grace_then_drops_them() {
    // An upstream that takes requests and never answers.
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<()>();
    let upstream = http1_server(move |_request: Request<Incoming>| {
        let _ = arrived_tx.send(());
        std::future::pending::<Response<Full<Bytes>>>()
    })
    .await;
    let dir = TempDir::new("edge-grace");
    let mut config = config();
    config.upstream = Some(format!("http://{upstream}").parse().unwrap());
    config.upstream_timeout = Duration::from_secs(300);
    config.shutdown_grace = Duration::from_millis(300);
    config.state_file = Some(dir.join("state.json"));
    let gateway = Gateway::start(config).await.unwrap();
    let mut client = TcpStream::connect(gateway.data_addr()).await.unwrap();
    let request = format!("GET /held HTTP/1.1\r\nhost: gateway\r\nx-api-key: {KEY}\r\n\r\n");
    client.write_all(request.as_bytes()).await.unwrap();
    within("the upstream to get the request", arrived.recv())
        .await
        .unwrap();
    within("the shutdown after the grace", gateway.shutdown())
        .await
        .unwrap();
    let mut rest = Vec::new();
    within("the dropped connection", client.read_to_end(&mut rest))
        .await
        .unwrap_or_default();
    let saved = std::fs::read_to_string(dir.join("state.json")).unwrap();
    assert!(saved.contains("\"used\":1"), "{saved}");
}

// ---- clients that take no answer ----------------------------------------

/// Config for `upstream` with a short response write timeout.
fn impatient_config(upstream: SocketAddr) -> GatewayConfig {
    GatewayConfig {
        response_write_timeout: Some(Duration::from_millis(300)),
        ..config_for(upstream)
    }
}

/// An HTTP/1 client that sends its request and reads nothing of the
/// answer held its connection, and the upstream's answer, for as long as
/// it liked. Now the connection is dropped once the answer has waited the
/// response write timeout, and the upstream's answer with it; the request
/// reached the upstream, so it stays charged.
#[tokio::test]
async fn an_http1_client_that_reads_nothing_loses_its_connection() {
    let (upstream, mut dropped) = endless_upstream().await;
    let gateway = Gateway::start(impatient_config(upstream)).await.unwrap();
    let mut client = TcpStream::connect(gateway.data_addr()).await.unwrap();
    let request = format!("GET /big HTTP/1.1\r\nhost: gateway\r\nx-api-key: {KEY}\r\n\r\n");
    client.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(
        within("the upstream's answer let go", dropped.recv()).await,
        Some(())
    );
    // What was sent before the drop is there to read, then the end.
    let mut answer = Vec::new();
    let _ = within("the connection's end", client.read_to_end(&mut answer)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &answer[..answer.len().min(64)]
    );
    assert_eq!(used_today(&gateway).await, [1, 99]);
    gateway.shutdown().await.unwrap();
}

/// The same for an HTTP/2 client that opens no window for its stream: it
/// gets the answer's head, and no data can be sent to it.
#[tokio::test]
async fn an_http2_client_that_opens_no_window_loses_its_connection() {
    let (upstream, mut dropped) = endless_upstream().await;
    let gateway = Gateway::start(impatient_config(upstream)).await.unwrap();
    let stream = TcpStream::connect(gateway.data_addr()).await.unwrap();
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(stream)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = Request::get(format!("http://{}/big", gateway.data_addr()))
        .header("x-api-key", KEY)
        .body(())
        .unwrap();
    let (answer, _) = client.send_request(request, true).unwrap();
    let answer = within("the answer's head", answer).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        within("the upstream's answer let go", dropped.recv()).await,
        Some(())
    );
    let _ = within("the connection's end", connection).await;
    assert_eq!(used_today(&gateway).await, [1, 99]);
    drop(answer);
    gateway.shutdown().await.unwrap();
}

/// An answer larger than the pieces the gateway hands over (16 KiB) comes
/// whole and unchanged to a client that reads it, over HTTP/1 and HTTP/2.
#[tokio::test]
async fn a_large_answer_comes_whole_in_pieces() {
    let body: Bytes = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
    let sent = body.clone();
    let upstream = http1_server(move |_request: Request<Incoming>| {
        let body = sent.clone();
        async move { Response::new(Full::new(body)) }
    })
    .await;
    let gateway = Gateway::start(config_for(upstream)).await.unwrap();
    let (status, _, got) = get(gateway.data_addr(), "/big", Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, body);
    let request = || {
        Request::get(format!("http://{}/big", gateway.data_addr()))
            .header("x-api-key", KEY)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut h2 = h2_client(gateway.data_addr()).await;
    let answer = within("the HTTP/2 answer", h2.send_request(request()))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.into_body().collect().await.unwrap().to_bytes(), body);
    gateway.shutdown().await.unwrap();
}

/// A burst of concurrent requests (an HTTP/2 client's streams) opens as
/// many upstream connections; once they are idle the gateway keeps at most
/// 64 of them (and its client connection's own), not all of them for a
/// minute: a client could otherwise make it hold thousands of sockets.
#[tokio::test]
async fn a_burst_leaves_at_most_64_idle_upstream_connections() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const BURST: usize = 100;
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (open, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // Every request waits for all of the burst: each has a connection.
    let all_in = Arc::new(tokio::sync::Barrier::new(BURST));
    let (counted, peaked) = (open.clone(), peak.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = upstream.accept().await {
            let (open, all_in) = (counted.clone(), all_in.clone());
            peaked.fetch_max(open.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let all_in = all_in.clone();
                    async move {
                        all_in.wait().await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let mut config = one_key(KEY, daily_quota(1_000));
    config.upstream = Some(format!("http://{upstream_addr}").parse().unwrap());
    let gateway = Gateway::start(config).await.unwrap();
    let data = gateway.data_addr();
    let client = h2_client::<Full<Bytes>>(data).await;
    let requests = (0..BURST).map(|_| {
        let mut client = client.clone();
        async move {
            let request = Request::get(format!("http://{data}/burst"))
                .header("x-api-key", KEY)
                .body(Full::new(Bytes::new()))
                .unwrap();
            client.send_request(request).await.unwrap().status()
        }
    });
    let statuses = within("the burst", futures_util::future::join_all(requests)).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(
        peak.load(Ordering::SeqCst),
        BURST,
        "one connection a request"
    );
    eventually("the idle connections beyond 64 to close", || async {
        (open.load(Ordering::SeqCst) <= 64 + 1).then_some(())
    })
    .await;
    gateway.shutdown().await.unwrap();
}

/// A head that never ends holds at most the 80 KiB hyper is told to buffer:
/// past them the client gets hyper's `431` and the connection closes at
/// once, not at the header read timeout (with hyper's default ~400 KiB
/// buffer, 1,500 such connections held 800 MB).
#[tokio::test]
async fn a_head_that_never_ends_is_cut_at_80_kib() {
    let mut config = config();
    // Not what ends the connection here.
    config.header_read_timeout = Some(DEADLINE * 2);
    let gateway = Gateway::start(config).await.unwrap();
    let mut head = format!("GET / HTTP/1.1\r\nhost: gateway\r\nx-api-key: {KEY}\r\n");
    while head.len() < 100 * 1024 {
        head.push_str(&format!(
            "x-filler-{}: {}\r\n",
            head.len(),
            "f".repeat(1000)
        ));
    }
    let (answer, _) = until_closed(gateway.data_addr(), head.as_bytes(), false).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    gateway.shutdown().await.unwrap();
}

/// "MadeYouReset": streams whose client makes the gateway reset them (a
/// stream WINDOW_UPDATE past 2^31-1) free their slot under the stream
/// limit while their requests go on upstream. A connection that causes
/// 100 such resets is closed (GOAWAY `ENHANCE_YOUR_CALM`), not after
/// hyper's default 1,024.
#[tokio::test]
async fn a_connection_that_makes_the_gateway_reset_100_streams_is_closed() {
    const STREAMS: u32 = 400;
    let (upstream, _dropped) = endless_upstream().await;
    let mut config = one_key(KEY, daily_quota(10_000));
    config.upstream = Some(format!("http://{upstream}").parse().unwrap());
    let gateway = Gateway::start(config).await.unwrap();
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        frame
    };
    // HPACK literals without indexing, lengths below 127.
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/reset"),
        (":authority", "gateway"),
        ("x-api-key", KEY),
    ] {
        block.push(0);
        block.push(name.len() as u8);
        block.extend(name.as_bytes());
        block.push(value.len() as u8);
        block.extend(value.as_bytes());
    }
    let mut sent = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    sent.extend(frame(0x4, 0, 0, &[]));
    for stream in (1..).step_by(2).take(STREAMS as usize) {
        // HEADERS (END_STREAM, END_HEADERS), then an overflowing window.
        sent.extend(frame(0x1, 0x5, stream, &block));
        sent.extend(frame(0x8, 0, stream, &0x7fff_ffffu32.to_be_bytes()));
    }
    let stream = TcpStream::connect(gateway.data_addr()).await.unwrap();
    let (mut reading, mut writing) = stream.into_split();
    tokio::spawn(async move {
        let _ = writing.write_all(&sent).await;
        // Held open: only the gateway ends the connection.
        std::future::pending::<()>().await;
        drop(writing);
    });
    let mut goaway = None;
    let mut head = [0u8; 9];
    while goaway.is_none() {
        within("the next frame", reading.read_exact(&mut head))
            .await
            .unwrap();
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; length];
        within("the frame's payload", reading.read_exact(&mut payload))
            .await
            .unwrap();
        if head[3] == 0x7 {
            goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
    }
    // Before 400 such streams (hyper's default limit closes after 1,024).
    assert_eq!(goaway, Some(0xb), "ENHANCE_YOUR_CALM");
    gateway.shutdown().await.unwrap();
}
