#![cfg(feature = "gateway")]
//! The gateway in process (`Gateway::start`), over real sockets, in front of
//! a real hyper upstream started by each test: what is forwarded, what is
//! stripped, streaming both ways, upstream errors, and restarts with a
//! state file. Synchronisation is by channels only; every wait has a
//! deadline so a regression fails instead of hanging.

mod support;
use net::{
    channel_body, closed_addr, get, h1_client, h2_client, http1_server, send, until_closed, within,
    TempDir,
};
use support::gateway_config::{daily_quota, one_key};
use support::{net, usage};
use usage::usage_today;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tower_usage_plans::gateway::{Gateway, GatewayConfig, Stage};

const KEY: &str = "gateway-test-key-0123456789";

/// One key (`KEY`, named "tester") in one plan ("testing") with a daily
/// quota of `limit`; listeners on ephemeral ports; the echo upstream.
fn config(limit: u64) -> GatewayConfig {
    one_key(KEY, daily_quota(limit))
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn with_upstream(mut config: GatewayConfig, base: &str) -> GatewayConfig {
    config.upstream = Some(base.parse().unwrap());
    config
}

/// Reads `body` until `len` bytes came (the transport may split chunks).
async fn read_exactly(body: &mut Incoming, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < len {
        let frame = within("a body frame", body.frame())
            .await
            .expect("the body ended early")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
        }
    }
    out
}

/// 100 KiB covering every byte value, so nothing can pass as text.
fn big_chunk() -> Bytes {
    (0..100 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// What the upstream reports to the test while it handles one request.
enum Seen {
    Head(http::request::Parts),
    Data(Bytes),
    End,
    Responding(mpsc::Sender<Bytes>),
}

#[tokio::test]
async fn forwards_request_and_response_streaming_both_ways() {
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Seen>();
    let upstream_addr = http1_server(move |request: Request<Incoming>| {
        let seen_tx = seen_tx.clone();
        async move {
            let (parts, mut body) = request.into_parts();
            seen_tx.send(Seen::Head(parts)).unwrap();
            // Report every piece of the request body the moment it arrives.
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    seen_tx.send(Seen::Data(data)).unwrap();
                }
            }
            seen_tx.send(Seen::End).unwrap();
            // Answer with a body the test feeds chunk by chunk.
            let (sender, body) = channel_body(4);
            seen_tx.send(Seen::Responding(sender)).unwrap();
            Response::builder()
                .status(StatusCode::CREATED)
                .header("x-upstream", "yes")
                .header("connection", "x-upstream-hop")
                .header("x-upstream-hop", "secret")
                .header("keep-alive", "timeout=5")
                .body(body)
                .unwrap()
        }
    })
    .await;
    let gateway = Gateway::start(with_upstream(
        config(100),
        &format!("http://{upstream_addr}/v1"),
    ))
    .await
    .unwrap();
    let key_id = gateway.plans().api_key_by_value(KEY).unwrap().id;

    let (request_body, body) = channel_body(4);
    let request = Request::put("/a/b%20c?x=1&y=two&y=3")
        .header("host", "gateway.test")
        .header("x-api-key", KEY)
        .header("x-api-key-id", "spoofed-by-the-client")
        .header("x-custom-end", "kept")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("x-forwarded-for", "203.0.113.7")
        .header("connection", "x-custom")
        .header("x-custom", "hop-only")
        .header("te", "trailers")
        .header("upgrade", "websocket")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .body(body)
        .unwrap();
    let gateway_addr = gateway.data_addr();
    let response = tokio::spawn(async move { send(gateway_addr, request).await });

    // The request body streams: the upstream sees the first chunk while the
    // client still holds the rest.
    let first = Bytes::from_static(b"first\x00\xff chunk");
    request_body.send(first.clone()).await.unwrap();
    let Seen::Head(head) = within("the upstream request", seen.recv()).await.unwrap() else {
        panic!("the upstream did not see the head first");
    };
    let mut received = Vec::new();
    while received.len() < first.len() {
        match within("the first request chunk", seen.recv())
            .await
            .unwrap()
        {
            Seen::Data(data) => received.extend_from_slice(&data),
            _ => panic!("the request body ended before the client finished it"),
        }
    }
    assert_eq!(received, first);
    let rest = big_chunk();
    request_body.send(rest.clone()).await.unwrap();
    drop(request_body);
    loop {
        match within("the rest of the request body", seen.recv())
            .await
            .unwrap()
        {
            Seen::Data(data) => received.extend_from_slice(&data),
            Seen::End => break,
            _ => panic!("unexpected report"),
        }
    }
    assert_eq!(received, [&first[..], &rest[..]].concat(), "request body");

    // Method, path (under the base prefix), query, headers.
    assert_eq!(head.method, http::Method::PUT);
    assert_eq!(head.uri.path(), "/v1/a/b%20c");
    assert_eq!(head.uri.query(), Some("x=1&y=two&y=3"));
    let h = &head.headers;
    assert_eq!(h["x-custom-end"], "kept");
    let multi: Vec<_> = h.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);
    assert!(
        h.get("x-api-key").is_none(),
        "the client's key leaked upstream"
    );
    let ids: Vec<_> = h.get_all("x-api-key-id").iter().collect();
    assert_eq!(ids, [key_id.as_str()], "the key id, and only ours");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    let forwarded = h["forwarded"].to_str().unwrap();
    assert!(
        forwarded.contains("for=127.0.0.1"),
        "forwarded: {forwarded}"
    );
    assert_eq!(h["host"], upstream_addr.to_string().as_str());
    for hop in [
        "connection",
        "x-custom",
        "te",
        "upgrade",
        "keep-alive",
        "proxy-connection",
    ] {
        assert!(
            h.get(hop).is_none(),
            "hop-by-hop {hop} was forwarded: {h:?}"
        );
    }

    // The response body streams: the client reads the first chunk while the
    // upstream still holds the rest.
    let Seen::Responding(response_body) =
        within("the upstream response", seen.recv()).await.unwrap()
    else {
        panic!("the upstream did not answer");
    };
    let first = Bytes::from_static(b"\xfe\x00first response chunk");
    response_body.send(first.clone()).await.unwrap();
    let response = within("the gateway response", response).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["x-upstream"], "yes");
    assert!(response.headers().get("x-upstream-hop").is_none());
    assert!(response.headers().get("keep-alive").is_none());
    let mut body = response.into_body();
    assert_eq!(read_exactly(&mut body, first.len()).await, first);
    let rest = big_chunk();
    response_body.send(rest.clone()).await.unwrap();
    response_body
        .send(Bytes::from_static(b"last"))
        .await
        .unwrap();
    drop(response_body);
    let tail = within("the rest of the response", body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(tail, [&rest[..], b"last"].concat(), "response body");

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn echo_upstream_describes_the_request_without_the_key() {
    let gateway = Gateway::start(config(100)).await.unwrap();
    let key_id = gateway.plans().api_key_by_value(KEY).unwrap().id;

    let (status, _, body) = get(gateway.data_addr(), "/pets/1?kind=cat", Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    let echo = json(&body);
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/pets/1");
    assert_eq!(echo["query"], "kind=cat");
    assert_eq!(echo["keyId"], key_id.as_str());
    assert_eq!(echo["headers"]["x-api-key-id"], key_id.as_str());
    assert!(echo["headers"].get("x-api-key").is_none(), "{echo}");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");

    let (status, headers, body) = get(gateway.data_addr(), "/pets/1", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["x-amzn-errortype"], "ForbiddenException");
    assert_eq!(json(&body), serde_json::json!({"message": "Forbidden"}));

    gateway.shutdown().await.unwrap();
}

/// The `x-amzn-requestid` of a response: a v4 UUID.
fn request_id(headers: &http::HeaderMap) -> String {
    let id = headers
        .get("x-amzn-requestid")
        .unwrap_or_else(|| panic!("no x-amzn-RequestId in {headers:?}"))
        .to_str()
        .unwrap()
        .to_owned();
    let bytes = id.as_bytes();
    assert_eq!(bytes.len(), 36, "{id}");
    assert_eq!(
        (bytes[8], bytes[13], bytes[14], bytes[18]),
        (b'-', b'-', b'4', b'-'),
        "{id}"
    );
    assert!(
        matches!(bytes[19], b'8' | b'9' | b'a' | b'b'),
        "variant: {id}"
    );
    id
}

#[tokio::test]
async fn every_data_plane_response_has_a_fresh_request_id_which_the_upstream_sees() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let upstream = http1_server(move |request: Request<Incoming>| {
        let recorded = recorded.clone();
        async move {
            let id = request.headers()["x-amzn-requestid"]
                .to_str()
                .unwrap()
                .to_owned();
            recorded.lock().unwrap().push(id);
            let mut response = Response::new(Full::new(Bytes::from_static(b"up")));
            // The upstream's own id does not replace the gateway's.
            response
                .headers_mut()
                .insert("x-amzn-requestid", "upstream-id".parse().unwrap());
            response
        }
    })
    .await;
    let gateway = Gateway::start(with_upstream(config(1), &format!("http://{upstream}")))
        .await
        .unwrap();
    let addr = gateway.data_addr();
    let mut ids = std::collections::HashSet::new();
    // Admitted: the client's own id is replaced, the upstream gets the new one.
    let request = Request::get("/a")
        .header("host", "gateway")
        .header("x-api-key", KEY)
        .header("x-amzn-requestid", "client-chosen")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = send(addr, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let admitted = request_id(response.headers());
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        std::slice::from_ref(&admitted)
    );
    ids.insert(admitted);
    // Refused by the layer (quota spent, no key) and by the edge (CONNECT).
    for (key, status) in [
        (Some(KEY), StatusCode::TOO_MANY_REQUESTS),
        (None, StatusCode::FORBIDDEN),
    ] {
        let (got, headers, _) = get(addr, "/a", key).await;
        assert_eq!(got, status);
        assert!(ids.insert(request_id(&headers)));
    }
    let answer = answer_before_close(
        addr,
        b"CONNECT gateway:443 HTTP/1.1\r\nhost: gateway:443\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    let line = answer
        .lines()
        .find(|l| l.starts_with("x-amzn-requestid: "))
        .unwrap_or_else(|| panic!("no request id in {answer}"));
    assert!(ids.insert(line["x-amzn-requestid: ".len()..].to_owned()));
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "refusals never reach the upstream"
    );
    gateway.shutdown().await.unwrap();
}

/// Connects to `addr`, sends `sent`, and reads what comes back until the
/// gateway closes the connection — well within the default header read
/// timeout (30 s), so only the test's own short timeout can have closed it.
async fn answer_before_close(addr: SocketAddr, sent: &[u8]) -> String {
    let (answer, read) = until_closed(addr, sent, false).await;
    read.unwrap_or_else(|e| panic!("the connection after {sent:?} was reset: {e}"));
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_client_that_stalls_in_its_headers_loses_the_connection() {
    let mut config = config(100);
    config.header_read_timeout = Some(Duration::from_millis(300));
    let gateway = Gateway::start(config).await.unwrap();
    // Closed (after answering 408, or not) mid-headers.
    let stalled = answer_before_close(
        gateway.data_addr(),
        b"GET /slow HTTP/1.1\r\nhost: gateway\r\nx-api-key: ",
    )
    .await;
    assert!(
        stalled.is_empty() || stalled.starts_with("HTTP/1.1 408"),
        "{stalled}"
    );
    // A connection that sends nothing at all is closed too.
    assert_eq!(answer_before_close(gateway.data_addr(), b"").await, "");
    // The gateway still serves; only that request was counted.
    let (status, _, _) = get(gateway.data_addr(), "/", Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(used_today(&gateway).await[0], 1);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn upstream_down_is_502_json() {
    // A port nothing listens on: bind it, note it, free it.
    let closed = closed_addr();
    let gateway = Gateway::start(with_upstream(config(100), &format!("http://{closed}")))
        .await
        .unwrap();

    let (status, headers, body) = get(gateway.data_addr(), "/anything", Some(KEY)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "application/json");
    let body = json(&body);
    assert!(body["message"].is_string(), "{body}");
    // The upstream refused the connection: it never had the request, which
    // costs nothing, and the RateLimit header says so.
    assert_eq!(used_today(&gateway).await, [0, 100]);
    let state = headers["ratelimit"].to_str().unwrap();
    assert!(state.starts_with("\"quota\";r=100;t="), "{state}");

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn slow_upstream_is_504_json() {
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<()>();
    // The upstream takes the request and never answers: it waits on a
    // notification nobody sends.
    let hold = Arc::new(Notify::new());
    let held = hold.clone();
    let upstream_addr = http1_server(move |_request: Request<Incoming>| {
        let arrived_tx = arrived_tx.clone();
        let held = held.clone();
        async move {
            arrived_tx.send(()).unwrap();
            held.notified().await;
            Response::new(Full::new(Bytes::from_static(b"too late")))
        }
    })
    .await;
    let mut config = with_upstream(config(100), &format!("http://{upstream_addr}"));
    config.upstream_timeout = Duration::from_millis(100);
    let gateway = Gateway::start(config).await.unwrap();

    let (status, headers, body) = get(gateway.data_addr(), "/slow", Some(KEY)).await;
    within("the upstream to have been reached", arrived.recv())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["content-type"], "application/json");
    let body = json(&body);
    assert!(body["message"].is_string(), "{body}");

    gateway.shutdown().await.unwrap();
    drop(hold);
}

/// `[used, remaining]` of `KEY` today, as GetUsage reports it.
async fn used_today(gateway: &Gateway) -> [u64; 2] {
    let plans = gateway.plans();
    let plan = plans
        .usage_plans()
        .into_iter()
        .find(|p| p.name == "testing")
        .unwrap();
    let key = plans.api_key_by_value(KEY).unwrap();
    usage_today(plans, &plan.id, &key.id).await
}

#[tokio::test]
async fn restart_with_a_state_file_keeps_used_exactly() {
    const LIMIT: u64 = 7;
    const N: u64 = 4;
    let dir = TempDir::new("restart");
    let mut config = config(LIMIT);
    config.state_file = Some(dir.0.join("state.json"));

    let gateway = Gateway::start(config.clone()).await.unwrap();
    let ids = (
        gateway.plans().usage_plans()[0].id.clone(),
        gateway.plans().api_key_by_value(KEY).unwrap().id,
    );
    for _ in 0..N {
        let (status, _, _) = get(gateway.data_addr(), "/", Some(KEY)).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(used_today(&gateway).await, [N, LIMIT - N]);
    gateway.shutdown().await.unwrap();

    // Same configuration, same state file: nothing provisioned twice, the
    // same ids, and the counter exactly where it was.
    let gateway = Gateway::start(config.clone()).await.unwrap();
    assert_eq!(gateway.plans().usage_plans().len(), 1);
    assert_eq!(gateway.plans().api_keys().len(), 1);
    assert_eq!(gateway.plans().usage_plans()[0].id, ids.0);
    assert_eq!(gateway.plans().api_key_by_value(KEY).unwrap().id, ids.1);
    assert_eq!(used_today(&gateway).await, [N, LIMIT - N]);

    // The quota continues from there: exactly LIMIT - N more.
    for _ in N..LIMIT {
        let (status, _, _) = get(gateway.data_addr(), "/", Some(KEY)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, headers, body) = get(gateway.data_addr(), "/", Some(KEY)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["x-amzn-errortype"], "LimitExceededException");
    assert_eq!(
        json(&body),
        serde_json::json!({"message": "Limit Exceeded"})
    );
    assert_eq!(used_today(&gateway).await, [LIMIT, 0]);
    gateway.shutdown().await.unwrap();

    // And once more: the refusal cost nothing and was not lost.
    let gateway = Gateway::start(config).await.unwrap();
    assert_eq!(used_today(&gateway).await, [LIMIT, 0]);
    gateway.shutdown().await.unwrap();
}

/// An upstream that numbers its connections and answers each request with
/// its connection's number; `/close` also closes that connection, `/slow`
/// never answers, `/pair` answers once two `/pair` requests are in.
async fn numbering_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pair = Arc::new(tokio::sync::Barrier::new(2));
    tokio::spawn(async move {
        let mut number = 0u32;
        while let Ok((stream, _)) = listener.accept().await {
            number += 1;
            let pair = pair.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let pair = pair.clone();
                    async move {
                        let mut response =
                            Response::new(Full::new(Bytes::from(number.to_string())));
                        match request.uri().path() {
                            "/close" => {
                                response
                                    .headers_mut()
                                    .insert("connection", "close".parse().unwrap());
                            }
                            "/slow" => std::future::pending::<()>().await,
                            "/pair" => {
                                pair.wait().await;
                            }
                            _ => {}
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// `GET path` on an open client connection: status and body.
async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
    path: &str,
) -> (StatusCode, String) {
    let request = Request::get(path)
        .header("x-api-key", KEY)
        .body(http_body_util::Empty::new())
        .unwrap();
    within("ready", sender.ready()).await.unwrap();
    let response = within("the response", sender.send_request(request))
        .await
        .unwrap();
    let status = response.status();
    let body = within("the body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn a_client_connection_keeps_its_own_upstream_connection_and_replaces_it_when_it_ends() {
    let upstream_addr = numbering_upstream().await;
    let mut config = with_upstream(config(100), &format!("http://{upstream_addr}"));
    config.upstream_timeout = Duration::from_millis(200);
    let gateway = Gateway::start(config).await.unwrap();
    let mut client = h1_client(gateway.data_addr()).await;

    // One upstream connection (the upstream numbers them) serves the client
    // connection's requests; when the upstream closes it after `/close`,
    // the next request gets a new one, not a 502.
    for (path, upstream_connection) in [("/a", "1"), ("/b", "1"), ("/close", "1"), ("/c", "2")] {
        assert_eq!(
            get_on(&mut client, path).await,
            (StatusCode::OK, upstream_connection.to_owned()),
            "{path}"
        );
    }
    // A timed-out request gives its connection up; the next one connects anew.
    let (status, _) = get_on(&mut client, "/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        get_on(&mut client, "/d").await,
        (StatusCode::OK, "3".into())
    );

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_http2_streams_of_one_connection_are_all_forwarded() {
    let upstream_addr = numbering_upstream().await;
    let gateway = Gateway::start(with_upstream(
        config(100),
        &format!("http://{upstream_addr}"),
    ))
    .await
    .unwrap();
    let client = h2_client(gateway.data_addr()).await;

    // The upstream answers `/pair` only once both are in: the second must
    // not wait for the first's connection.
    let pair = || {
        let mut client = client.clone();
        async move {
            let request = Request::get("http://gateway.test/pair")
                .header("x-api-key", KEY)
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            client.send_request(request).await.unwrap().status()
        }
    };
    let (first, second) = within("both streams", async { tokio::join!(pair(), pair()) }).await;
    assert_eq!((first, second), (StatusCode::OK, StatusCode::OK));

    gateway.shutdown().await.unwrap();
}

/// A hand-built configuration is validated as the flags are: an error that
/// names the field, never a panic, and nothing starts listening.
#[tokio::test]
async fn start_refuses_a_hand_built_config_it_cannot_honour() {
    use tower_usage_plans::gateway::GatewayError;
    let mut missing_key = config(10);
    missing_key.plans[0].keys.push("nobody".into());
    let mut state_and_redis = config(10);
    state_and_redis.state_file = Some("state.json".into());
    state_and_redis.redis = Some("redis://127.0.0.1:1".into());
    let mut leases_alone = config(10);
    leases_alone.redis_leases = true;
    let mut empty_stage = config(10);
    empty_stage.stage = Stage::new("gateway", "");
    for (config, field) in [
        (missing_key, "plans.keys"),
        (state_and_redis, "state_file"),
        (leases_alone, "redis_leases"),
        (empty_stage, "stage"),
    ] {
        let error = Gateway::start(config).await.unwrap_err();
        assert!(matches!(error, GatewayError::Config(_)), "{error:?}");
        assert!(error.to_string().starts_with(field), "{field}: {error}");
    }
}

/// Two gateways started apart from each other on the same configuration
/// give its plan and key the same ids: a replica that creates them again
/// (on a Redis that lost its data, before the others put the registry
/// back) creates the same plan and key, with the same counters, not a
/// key with a fresh quota beside the old one.
#[tokio::test]
async fn configured_plans_and_keys_have_the_same_ids_in_every_gateway() {
    let ids = |gateway: &Gateway| {
        let plan = gateway.plans().usage_plans()[0].id.clone();
        let key = gateway.plans().api_key_by_value(KEY).unwrap().id;
        (plan, key)
    };
    let one = Gateway::start(config(5)).await.unwrap();
    let other = Gateway::start(config(5)).await.unwrap();
    assert_eq!(ids(&one), ids(&other));
    // An id created through the admin API is still random.
    let created = |gateway: &Gateway| {
        gateway
            .plans()
            .create_usage_plan(tower_usage_plans::NewUsagePlan::new("testing"))
            .unwrap()
            .id
    };
    assert_ne!(created(&one), created(&other));
    one.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
}
