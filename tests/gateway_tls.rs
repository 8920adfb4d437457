#![cfg(feature = "gateway")]
//! TLS on both listeners and to the upstream, with certificates made at
//! run time by a test CA: ALPN h2 and http/1.1, reloading (what SIGHUP
//! does) without dropping connections, bad files stopping the start, a
//! handshake that never completes, an upstream whose certificate fails
//! verification (502, not charged), and curl as a real client.

mod support;
use support::gateway_config::{daily_quota, one_key};
use support::{net, tls, usage};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use net::{within, TempDir};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tower_usage_plans::gateway::{Gateway, GatewayConfig, TlsFiles};

const KEY: &str = "tls-test-key-0123456789";

/// `KEY` in a plan with a daily quota of 100.
fn config() -> GatewayConfig {
    one_key(KEY, daily_quota(100))
}

/// Writes `leaf` as `<name>.crt` / `<name>.key`.
fn files(dir: &TempDir, name: &str, leaf: &tls::Leaf) -> TlsFiles {
    TlsFiles {
        cert: dir.write(&format!("{name}.crt"), &leaf.cert),
        key: dir.write(&format!("{name}.key"), &leaf.key),
    }
}

/// One TLS connection: what ALPN chose, the server's certificate, and a
/// sender for requests over it.
struct Tls {
    alpn: Option<Vec<u8>>,
    peer: CertificateDer<'static>,
    sender: Sender,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn connect(addr: SocketAddr, client: Arc<rustls::ClientConfig>) -> Tls {
    let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    let stream = within(
        "the TLS handshake",
        tokio_rustls::TlsConnector::from(client)
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap();
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let peer = session.peer_certificates().unwrap()[0].clone().into_owned();
    let io = TokioIo::new(stream);
    let sender = if alpn.as_deref() == Some(b"h2") {
        let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(connection);
        Sender::H2(sender)
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        Sender::H1(sender)
    };
    Tls { alpn, peer, sender }
}

impl Tls {
    async fn get(&mut self, path: &str, key: Option<&str>) -> (StatusCode, String) {
        let mut request = Request::get(format!("https://localhost{path}"));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let response: Response<Incoming> = match &mut self.sender {
            Sender::H1(sender) => {
                let request = request
                    .header("host", "localhost")
                    .uri(path)
                    .body(Empty::new())
                    .unwrap();
                within("a response", sender.send_request(request))
                    .await
                    .unwrap()
            }
            Sender::H2(sender) => {
                let request = request.body(Empty::new()).unwrap();
                within("a response", sender.send_request(request))
                    .await
                    .unwrap()
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn both_listeners_serve_https_with_h2_and_http1_by_alpn() {
    let ca = tls::TestCa::new("listeners CA");
    let dir = TempDir::new("tls-listeners");
    let mut config = config();
    config.tls = Some(files(&dir, "data", &ca.leaf("data")));
    config.admin_tls = Some(files(&dir, "admin", &ca.leaf("admin")));
    let gateway = Gateway::start(config).await.unwrap();
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let mut data = connect(gateway.data_addr(), ca.client(&[alpn])).await;
        assert_eq!(data.alpn.as_deref(), Some(alpn));
        let (status, body) = data.get("/pets", Some(KEY)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("\"path\":\"/pets\""), "{body}");
        // The upstream learns the client came over HTTPS.
        assert!(body.contains("proto=https"), "{body}");
        let mut admin = connect(gateway.admin_addr(), ca.client(&[alpn])).await;
        assert_eq!(
            admin.get("/ping", None).await,
            (StatusCode::OK, "ok\n".into())
        );
    }
    // Plain HTTP on a TLS listener is not answered as HTTP.
    let plain = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let (answer, _) = net::until_closed(gateway.data_addr(), plain, false).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn reloading_swaps_the_certificate_for_new_connections_and_keeps_open_ones() {
    let ca = tls::TestCa::new("reload CA");
    let dir = TempDir::new("tls-reload");
    let (first, second) = (ca.leaf("first"), ca.leaf("second"));
    let mut config = config();
    config.tls = Some(files(&dir, "data", &first));
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.data_addr();
    let mut open = connect(addr, ca.client(&[b"http/1.1"])).await;
    assert_eq!(open.peer, der(&first.cert));

    files(&dir, "data", &second);
    gateway.reload_tls().unwrap();
    let mut fresh = connect(addr, ca.client(&[b"http/1.1"])).await;
    assert_eq!(fresh.peer, der(&second.cert));
    assert_eq!(fresh.get("/", Some(KEY)).await.0, StatusCode::OK);
    // The connection made before the reload goes on.
    assert_eq!(open.get("/", Some(KEY)).await.0, StatusCode::OK);

    // A bad pair: refused, named, and the second stays in use.
    let other = ca.leaf("other");
    std::fs::write(dir.join("data.key"), &other.key).unwrap();
    let error = gateway.reload_tls().unwrap_err().to_string();
    assert!(
        error.contains("data.key") && error.contains("does not match"),
        "{error}"
    );
    std::fs::write(dir.join("data.crt"), "not PEM").unwrap();
    let error = gateway.reload_tls().unwrap_err().to_string();
    assert!(error.contains("data.crt"), "{error}");
    let mut after = connect(addr, ca.client(&[b"h2"])).await;
    assert_eq!(after.peer, der(&second.cert));
    assert_eq!(after.get("/", Some(KEY)).await.0, StatusCode::OK);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn missing_unreadable_or_mismatched_files_stop_the_start_naming_the_file() {
    let ca = tls::TestCa::new("files CA");
    let dir = TempDir::new("tls-files");
    let good = files(&dir, "good", &ca.leaf("good"));
    let other = files(&dir, "other", &ca.leaf("other"));
    let cases = [
        (
            TlsFiles {
                cert: dir.join("missing.crt"),
                key: good.key.clone(),
            },
            "missing.crt",
        ),
        (
            TlsFiles {
                cert: good.cert.clone(),
                key: other.key.clone(),
            },
            "other.key",
        ),
        (
            TlsFiles {
                cert: good.cert.clone(),
                key: dir.write("empty.key", ""),
            },
            "empty.key",
        ),
        (
            TlsFiles {
                cert: dir.path().to_owned(),
                key: good.key.clone(),
            },
            dir.path().to_str().unwrap(),
        ),
    ];
    for (files, named) in cases {
        for admin in [false, true] {
            let mut config = config();
            match admin {
                true => config.admin_tls = Some(files.clone()),
                false => config.tls = Some(files.clone()),
            }
            let error = Gateway::start(config).await.unwrap_err().to_string();
            assert!(error.contains(named), "{named}: {error}");
        }
    }
}

#[tokio::test]
async fn a_handshake_that_never_completes_is_closed_within_the_header_read_timeout() {
    let ca = tls::TestCa::new("slow CA");
    let dir = TempDir::new("tls-slow");
    let mut config = config();
    config.tls = Some(files(&dir, "data", &ca.leaf("data")));
    config.header_read_timeout = Some(Duration::from_millis(300));
    let gateway = Gateway::start(config).await.unwrap();
    // The start of a ClientHello, then nothing.
    // Closed by the gateway (the test's deadline is far longer).
    let client_hello_start = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
    let _ = net::until_closed(gateway.data_addr(), &client_hello_start, false).await;
    // The gateway still serves.
    let mut client = connect(gateway.data_addr(), ca.client(&[b"h2"])).await;
    assert_eq!(client.get("/", Some(KEY)).await.0, StatusCode::OK);
    gateway.shutdown().await.unwrap();
}

/// A TLS server on an ephemeral port presenting `leaf` and offering
/// `alpn`; `serve` serves each connection once its handshake is done.
async fn https_server<F, Fut>(leaf: &tls::Leaf, alpn: &[&[u8]], serve: F) -> SocketAddr
where
    F: Fn(TlsStream<TcpStream>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let chain = vec![der(&leaf.cert)];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, serve) = (acceptor.clone(), serve.clone());
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(tcp).await {
                    serve(stream).await;
                }
            });
        }
    });
    addr
}

/// An HTTPS upstream answering "secure upstream" with `leaf`.
async fn https_upstream(leaf: &tls::Leaf) -> SocketAddr {
    https_server(leaf, &[], |stream| async move {
        let service = hyper::service::service_fn(|_request| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                b"secure upstream",
            ))))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await
}

/// An HTTPS upstream that speaks HTTP/2 only (ALPN `h2`) and answers every
/// call as a gRPC server would, trailers-only: `grpc-status: 0` when the
/// call came over HTTP/2 with `te: trailers`, else 13 (INTERNAL).
async fn https_grpc_upstream(leaf: &tls::Leaf) -> SocketAddr {
    https_server(leaf, &[b"h2"], |stream| async move {
        let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
            let grpc = request.version() == http::Version::HTTP_2
                && request
                    .headers()
                    .get("te")
                    .is_some_and(|te| te == "trailers");
            let response = Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", if grpc { "0" } else { "13" })
                .body(Empty::<Bytes>::new())
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await
}

/// gRPC calls go to an `https://` upstream over TLS with ALPN `h2`.
#[tokio::test]
async fn grpc_calls_reach_an_https_upstream_over_h2_by_alpn() {
    let ca = tls::TestCa::new("gRPC upstream CA");
    let dir = TempDir::new("tls-grpc-upstream");
    let upstream = https_grpc_upstream(&ca.leaf("upstream")).await;
    let mut config = config();
    config.upstream = Some(
        format!("https://localhost:{}", upstream.port())
            .parse()
            .unwrap(),
    );
    config.upstream_ca = Some(dir.write("ca.pem", &ca.pem()));
    let gateway = Gateway::start(config).await.unwrap();

    let mut sender = net::h2_client(gateway.data_addr()).await;
    let call = Request::post(format!("http://{}/pkg.Service/Call", gateway.data_addr()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-api-key", KEY)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within("the gRPC answer", sender.send_request(call))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "0", "{response:?}");
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn https_upstreams_are_verified_and_a_failed_verification_costs_nothing() {
    let ca = tls::TestCa::new("upstream CA");
    let dir = TempDir::new("tls-upstream");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let upstream = https_upstream(&ca.leaf("upstream")).await;
    let url = format!("https://localhost:{}", upstream.port());

    let mut trusted = config();
    trusted.upstream = Some(url.parse().unwrap());
    trusted.upstream_ca = Some(ca_file);
    let gateway = Gateway::start(trusted).await.unwrap();
    let (status, _, body) = net::get(gateway.data_addr(), "/x", Some(KEY)).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"secure upstream"[..])
    );
    gateway.shutdown().await.unwrap();

    // The webpki roots do not know the test CA: 502, and not charged.
    let mut untrusted = config();
    untrusted.upstream = Some(url.parse().unwrap());
    let gateway = Gateway::start(untrusted).await.unwrap();
    let (status, headers, body) = net::get(gateway.data_addr(), "/x", Some(KEY)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-amzn-errortype"], "BadGatewayException");
    assert_eq!(body, Bytes::from_static(br#"{"message":"Bad Gateway"}"#));
    let plans = gateway.plans();
    let key = plans.api_key_by_value(KEY).unwrap();
    let plan = &plans.usage_plans()[0];
    let used = usage::usage_today(plans, &plan.id, &key.id).await;
    assert_eq!(used, [0, 100], "a 502 before sending is free");
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn curl_with_the_ca_bundle_and_not_with_tls_1_1() {
    let ca = tls::TestCa::new("curl CA");
    let dir = TempDir::new("tls-curl");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let mut config = config();
    config.tls = Some(files(&dir, "data", &ca.leaf("data")));
    let gateway = Gateway::start(config).await.unwrap();
    let url = format!("https://localhost:{}/pets", gateway.data_addr().port());
    let curl = |extra: &[&str]| {
        let mut command = tokio::process::Command::new("curl");
        command
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .args(["--cacert", ca_file.to_str().unwrap()])
            .args(["-H", &format!("x-api-key: {KEY}")])
            .args(extra)
            .arg(&url);
        command.output()
    };
    let ok = within("curl", curl(&[])).await.unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "200 2");
    let ok = within("curl", curl(&["--http1.1"])).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "200 1.1");
    // A client offering at most TLS 1.1 is refused in the handshake.
    let old = within("curl", curl(&["--tlsv1.0", "--tls-max", "1.1"]))
        .await
        .unwrap();
    assert!(!old.status.success(), "{old:?}");
    // Without the CA, curl refuses the certificate.
    let mut bare = tokio::process::Command::new("curl");
    bare.args(["-s", "-o", "/dev/null", &url]);
    let bare = within("curl", bare.output()).await.unwrap();
    assert_eq!(bare.status.code(), Some(60), "{bare:?}");
    gateway.shutdown().await.unwrap();
}
