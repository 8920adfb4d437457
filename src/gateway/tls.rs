//! TLS with rustls on the `ring` crypto provider — one provider for the
//! whole binary, chosen because it builds with a C compiler alone
//! (aws-lc-rs needs cmake, and NASM on some targets, which a fresh CI
//! machine does not have). TLS 1.2 and 1.3 only: a client offering only
//! TLS 1.0 or 1.1 fails its handshake.
//!
//! - Listeners: a certificate chain and key from PEM files, ALPN `h2` and
//!   `http/1.1`. [`ServerCert::reload`] (SIGHUP) reads the files again;
//!   connections made before keep going, new ones get the new certificate;
//!   a bad new pair is logged and the old one stays.
//! - Upstreams: `https://` verified against the webpki roots, or only
//!   against the certificates of `--upstream-ca`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The one crypto provider.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes `ring` the process's default provider, for what builds its own
/// rustls configuration (the Redis client). Idempotent.
pub(crate) fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A listener's certificate and key, reloadable.
#[derive(Debug)]
pub(crate) struct ServerCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    /// Reads and checks the pair; the error names the file at fault.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, String> {
        let current = certified_key(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// Reads the files again; on an error the old pair stays in use.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let fresh = certified_key(&self.cert, &self.key)?;
        *self.current.write() = Arc::new(fresh);
        Ok(())
    }

    /// The certificate file, for logs.
    pub(crate) fn cert_path(&self) -> &Path {
        &self.cert
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// The chain in `cert` with the key in `key`, checked to belong together.
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = certificates(cert, "TLS certificate")?;
    let der = PrivateKeyDer::from_pem_slice(&read(key, "TLS key")?)
        .map_err(|e| format!("TLS key {}: no private key in PEM: {e}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("TLS key {}: {e}", key.display()))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| {
        format!(
            "TLS key {} does not match the certificate {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(pair)
}

/// Every certificate in a PEM file (at least one).
fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(&read(path, what)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{what} {}: no certificate in PEM", path.display()));
    }
    Ok(chain)
}

/// A listener's rustls configuration: TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1, the certificate from `cert` (reloadable).
pub(crate) fn acceptor(cert: Arc<ServerCert>) -> tokio_rustls::TlsAcceptor {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// The client configuration for `https://` upstreams: the certificates in
/// `ca` as the only roots, else the webpki roots. ALPN http/1.1.
pub(crate) fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certificates(path, "upstream CA")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("upstream CA {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Which HTTP an upstream connector speaks: the pool's HTTP/1.1, or the
/// gRPC client's HTTP/2 (ALPN `h2` over TLS, prior knowledge in the clear).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamHttp {
    Http1,
    Http2,
}

/// An upstream connector: `https://` verified with `tls` (if any), `http://`
/// plain, speaking `http`.
pub(crate) fn upstream_connector(
    tls: Option<Arc<ClientConfig>>,
    http: UpstreamHttp,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let mut config = tls.map_or_else(no_roots, |c| (*c).clone());
    // hyper-rustls sets ALPN itself, from the protocol enabled below.
    config.alpn_protocols.clear();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    match http {
        UpstreamHttp::Http1 => builder.enable_http1().wrap_connector(tcp),
        UpstreamHttp::Http2 => builder.enable_http2().wrap_connector(tcp),
    }
}

/// For an `http://` upstream's pool, which never opens TLS: no roots.
fn no_roots() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}

/// Opens TLS to `host` over `stream` (an `https://` upstream).
pub(crate) async fn connect(
    config: &Arc<ClientConfig>,
    host: &str,
    stream: tokio::net::TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, stream)
        .await
}
