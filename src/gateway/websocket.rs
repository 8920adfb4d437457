//! WebSocket: an admitted `Upgrade: websocket` request goes to the upstream
//! on a connection of its own (an upgraded connection is never reused),
//! with its `Upgrade` and `Connection` headers; when the upstream answers
//! `101 Switching Protocols`, both sides are upgraded and their bytes
//! copied both ways until either closes. The upgrade request is metered
//! like any request (one unit); frames are not. A refused upgrade never
//! gets here: the layer answers it as any refusal.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::GatewayBody;
use super::edge::EdgeBody;

/// Whether `parts` asks for a WebSocket upgrade (RFC 6455 §4.1: an
/// HTTP/1.1 GET with `Upgrade: websocket` and `Connection: upgrade`).
pub(crate) fn is_upgrade(parts: &http::request::Parts) -> bool {
    let lists = |name: header::HeaderName, token: &str| {
        parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    parts.version == Version::HTTP_11
        && parts.method == Method::GET
        && lists(header::UPGRADE, "websocket")
        && lists(header::CONNECTION, "upgrade")
}

/// Puts back what the proxy strips as hop-by-hop, for the upstream.
pub(crate) fn keep_upgrade(headers: &mut http::HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Where the upgrade goes.
pub(crate) struct Target<'a> {
    pub(crate) authority: &'a Authority,
    pub(crate) tls: Option<&'a Arc<rustls::ClientConfig>>,
    pub(crate) timeout: Duration,
}

/// Sends the upgrade request (origin-form, `Host` set) and, on 101,
/// tunnels the two connections. The answer, and whether the request was
/// sent (else it costs nothing).
pub(crate) async fn tunnel(
    target: Target<'_>,
    mut request: Request<EdgeBody>,
) -> (Response<GatewayBody>, bool) {
    let client = hyper::upgrade::on(&mut request);
    let sender = match tokio::time::timeout(target.timeout, open(&target)).await {
        Ok(Ok(sender)) => sender,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "WebSocket upstream could not be reached");
            return (
                super::proxy::error(StatusCode::BAD_GATEWAY, "Bad Gateway"),
                false,
            );
        }
        Err(_) => {
            return (
                super::proxy::error(StatusCode::GATEWAY_TIMEOUT, "Endpoint request timed out"),
                false,
            )
        }
    };
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts, GatewayBody::client(body));
    let mut sender = sender;
    let mut response =
        match tokio::time::timeout(target.timeout, sender.send_request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "WebSocket upgrade request failed");
                return (
                    super::proxy::error(StatusCode::BAD_GATEWAY, "Bad Gateway"),
                    true,
                );
            }
            Err(_) => {
                return (
                    super::proxy::error(StatusCode::GATEWAY_TIMEOUT, "Endpoint request timed out"),
                    true,
                )
            }
        };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket upgrade did not complete");
                    return;
                }
            };
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(error = %e, "WebSocket tunnel ended with an error");
            }
        });
    }
    (response.map(GatewayBody::from), true)
}

/// A fresh HTTP/1.1 connection to the upstream that can be upgraded.
async fn open(
    target: &Target<'_>,
) -> std::io::Result<hyper::client::conn::http1::SendRequest<GatewayBody>> {
    let port = target
        .authority
        .port_u16()
        .unwrap_or(if target.tls.is_some() { 443 } else { 80 });
    let host = target
        .authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    match target.tls {
        Some(config) => handshake(super::tls::connect(config, host, stream).await?).await,
        None => handshake(stream).await,
    }
}

async fn handshake<I>(
    io: I,
) -> std::io::Result<hyper::client::conn::http1::SendRequest<GatewayBody>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "WebSocket upstream connection ended with an error");
        }
    });
    Ok(sender)
}
