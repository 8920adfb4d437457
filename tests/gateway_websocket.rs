#![cfg(feature = "gateway")]
//! WebSocket through the gateway: a real client (tokio-tungstenite) to a
//! real WebSocket upstream; the upgrade costs one unit, frames nothing;
//! refused upgrades get the usual AWS refusals.

mod support;
use support::{net, usage};

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use net::within;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error, Message};
use tower_usage_plans::gateway::{FilePlan, Gateway, GatewayConfig};
use tower_usage_plans::{NewApiKey, NewUsagePlan, Quota, QuotaPeriod};

const KEY: &str = "websocket-test-key-0123456789";

/// A WebSocket server that echoes every text message, upper-cased.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Text(text) = message {
                        let reply = Message::text(text.to_uppercase());
                        if socket.send(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn open(
    gateway: SocketAddr,
    key: Option<&str>,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, Error> {
    let mut request = format!("ws://{gateway}/chat")
        .into_client_request()
        .unwrap();
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("x-api-key", key.parse().unwrap());
    }
    let stream = TcpStream::connect(gateway).await.unwrap();
    tokio_tungstenite::client_async(request, stream)
        .await
        .map(|(socket, response)| {
            assert!(response.headers().contains_key("x-amzn-requestid"));
            socket
        })
}

#[tokio::test]
async fn an_admitted_upgrade_is_tunnelled_and_costs_one_unit_whatever_its_frames() {
    let upstream = echo_upstream().await;
    let gateway = Gateway::start(GatewayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        upstream: Some(format!("http://{upstream}").parse().unwrap()),
        keys: vec![NewApiKey::new("tester").with_value(KEY).with_enabled(true)],
        plans: vec![FilePlan {
            plan: NewUsagePlan::new("testing").with_quota(Quota::new(1, QuotaPeriod::Day)),
            keys: vec!["tester".into()],
        }],
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let addr = gateway.data_addr();
    let mut socket = within("the upgrade", open(addr, Some(KEY))).await.unwrap();
    for word in ["one", "two", "three", "four"] {
        socket.send(Message::text(word)).await.unwrap();
        let reply = within("a reply", socket.next()).await.unwrap().unwrap();
        assert_eq!(reply, Message::text(word.to_uppercase()));
    }
    // One unit for the upgrade, none for the frames.
    let plans = gateway.plans();
    let key = plans.api_key_by_value(KEY).unwrap();
    let plan = &plans.usage_plans()[0];
    assert_eq!(usage::usage_today(plans, &plan.id, &key.id).await, [1, 0]);
    // The quota is spent: the next upgrade is refused as any request is.
    match within("a refused upgrade", open(addr, Some(KEY))).await {
        Err(Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert_eq!(
                response.headers()["x-amzn-errortype"],
                "LimitExceededException"
            );
            let body = response.body().as_deref().unwrap_or_default();
            assert_eq!(body, br#"{"message":"Limit Exceeded"}"#);
        }
        other => panic!("expected a 429, got {:?}", other.map(|_| ())),
    }
    match within("an upgrade without a key", open(addr, None)).await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected a 403, got {:?}", other.map(|_| ())),
    }
    // The open tunnel still works after the refusals.
    socket.send(Message::text("still")).await.unwrap();
    let reply = within("a reply", socket.next()).await.unwrap().unwrap();
    assert_eq!(reply, Message::text("STILL"));
    socket.close(None).await.unwrap();
    gateway.shutdown().await.unwrap();
}
