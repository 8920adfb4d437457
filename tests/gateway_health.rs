#![cfg(feature = "gateway")]
//! `/ping` and `/ready` on the admin listener, and a gateway that starts
//! before its Redis: it listens, reports not ready, answers by its failure
//! policy, and becomes ready once a real `redis-server` comes up on the
//! port; not ready again while that server is stopped, ready once it is
//! back. Waits are polls of `/ready` (the signal) under a deadline.

mod support;
use support::eventually::eventually;
use support::gateway_config::{daily_quota, one_key};
use support::{net, redis_server};

use std::net::SocketAddr;

use http::StatusCode;
use net::get;
use tower_usage_plans::gateway::{Gateway, GatewayConfig};
use tower_usage_plans::StoreFailure;

const KEY: &str = "health-test-key-0123456789";

/// `KEY` in a plan with a daily quota of 100.
fn config() -> GatewayConfig {
    one_key(KEY, daily_quota(100))
}

/// `/ready`'s status once it is `want` (polled: the probe is the signal).
async fn ready_becomes(admin: SocketAddr, want: StatusCode) {
    eventually(&format!("/ready to answer {want}"), || async move {
        (get(admin, "/ready", None).await.0 == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn ping_and_ready_answer_without_sigv4_and_say_nothing_else() {
    let gateway = Gateway::start(config()).await.unwrap();
    let admin = gateway.admin_addr();
    let (status, headers, body) = get(admin, "/ping", None).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok\n"[..]));
    assert_eq!(headers["cache-control"], "no-store");
    let (status, _, body) = get(admin, "/ready", None).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ready\n"[..]));
    // Nothing else is open: the admin API still wants SigV4.
    for path in ["/pingx", "/ready/x", "/usageplans", "/"] {
        let (status, headers, _) = get(admin, path, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            headers["x-amzn-errortype"],
            "MissingAuthenticationTokenException"
        );
    }
    // Not on the data plane: there, /ping is an API path like any other.
    let (status, _, _) = get(gateway.data_addr(), "/ping", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    gateway.shutdown().await.unwrap();
}

/// An answer to `HEAD` over HTTP/2 ends with its headers, whoever made it:
/// `/ping` and `/ready`, the admin API's refusal, the data plane's 403 and
/// the built-in echo's 200. (A DATA frame after it is a protocol error to
/// curl: `curl --http2-prior-knowledge -I` failed on every one of them.)
#[tokio::test]
async fn head_over_http2_is_answered_without_a_body() {
    let gateway = Gateway::start(config()).await.unwrap();
    let (admin, data) = (gateway.admin_addr(), gateway.data_addr());
    for (addr, path, key, want) in [
        (admin, "/ping", None, StatusCode::OK),
        (admin, "/ready", None, StatusCode::OK),
        (admin, "/usageplans", None, StatusCode::FORBIDDEN),
        (data, "/pets", None, StatusCode::FORBIDDEN),
        (data, "/pets", Some(KEY), StatusCode::OK),
    ] {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut client, connection) = h2::client::handshake(stream).await.unwrap();
        tokio::spawn(connection);
        let mut request = http::Request::head(format!("http://{addr}{path}"));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let (answer, _) = client
            .send_request(request.body(()).unwrap(), true)
            .unwrap();
        let response = answer.await.unwrap();
        assert_eq!(response.status(), want, "HEAD {path}");
        let mut body = response.into_body();
        assert!(
            body.is_end_stream(),
            "HEAD {path}: the headers end the stream"
        );
        assert!(body.data().await.is_none(), "HEAD {path}: no data");
    }
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_before_its_redis_serves_by_policy_and_follows_redis() {
    for policy in [StoreFailure::FailClosed, StoreFailure::FailOpen] {
        let port = redis_server::free_port();
        let mut config = config();
        config.redis = Some(format!("redis://127.0.0.1:{port}"));
        config.redis_failure = policy;
        // Nothing listens on the port: the gateway starts anyway.
        let gateway = Gateway::start(config).await.unwrap();
        let (admin, data) = (gateway.admin_addr(), gateway.data_addr());
        let (status, _, _) = get(admin, "/ping", None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, body) = get(admin, "/ready", None).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::SERVICE_UNAVAILABLE, &b"not ready\n"[..])
        );
        // The configured key is known; its counter is not reachable.
        let while_down = match policy {
            StoreFailure::FailClosed => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::OK,
        };
        let (status, headers, _) = get(data, "/", Some(KEY)).await;
        assert_eq!(status, while_down, "{policy:?}");
        if while_down == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(headers["retry-after"], "1", "{headers:?}");
        }
        let (status, _, _) = get(data, "/", Some("nobody-has-this-key")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{policy:?}");

        // Redis comes up: ready, and requests are counted there.
        let mut redis = redis_server::Redis::start_on(port);
        ready_becomes(admin, StatusCode::OK).await;
        let (status, headers, _) = get(data, "/", Some(KEY)).await;
        assert_eq!(status, StatusCode::OK, "{policy:?}");
        assert!(headers.contains_key("ratelimit"), "{headers:?}");
        let key = gateway.plans().api_key_by_value(KEY).unwrap();
        assert!(key.enabled);

        // Redis goes away: not ready, and the policy answers again.
        redis.stop();
        ready_becomes(admin, StatusCode::SERVICE_UNAVAILABLE).await;
        let (status, _, _) = get(data, "/", Some(KEY)).await;
        assert_eq!(status, while_down, "{policy:?} with Redis stopped");

        // And back (empty: `--save ''`): ready again, counting again.
        let _redis = redis_server::Redis::start_on(port);
        ready_becomes(admin, StatusCode::OK).await;
        let (status, headers, _) = get(data, "/", Some(KEY)).await;
        assert_eq!(status, StatusCode::OK, "{policy:?} after the restart");
        assert!(headers.contains_key("ratelimit"), "{headers:?}");
        gateway.shutdown().await.unwrap();
    }
}
