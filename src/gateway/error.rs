//! The gateway's error: why it could not start, or did not stop cleanly.

use std::net::SocketAddr;

/// Why the gateway could not start, or did not stop cleanly. Every
/// message names the field, file, address or service at fault.
///
/// ```
/// use tower_usage_plans::gateway::{GatewayConfig, GatewayError, Stage};
///
/// let mut config = GatewayConfig::default();
/// config.stage = Stage::new("", "prod");
/// let error = config.validate().unwrap_err();
/// assert!(matches!(error, GatewayError::Config(_)));
/// assert!(error.to_string().starts_with("stage:"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The configuration (file, flags, environment, or a hand-built
    /// [`GatewayConfig`](super::GatewayConfig)) is invalid; the message
    /// starts with the field.
    #[error("{0}")]
    Config(String),
    /// The state file cannot be read, is corrupt or inconsistent, or
    /// cannot be written; the message names the file.
    #[error("{0}")]
    StateFile(String),
    /// A listener could not bind its address.
    #[error("{listener} {addr}: {source}")]
    Bind {
        /// The flag of the listener (`listen`, `admin-listen`, ...).
        listener: &'static str,
        /// The address it was given.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Redis could not be reached, or did not answer in time.
    #[error("{message}")]
    Redis {
        /// What was being done, with the (redacted) URL where it helps.
        message: String,
        /// The store's error, where there is one.
        #[source]
        source: Option<crate::Error>,
    },
    /// An operating-system resource (a signal handler, a socket address)
    /// could not be set up.
    #[error("{context}: {source}")]
    Io {
        /// What was being set up.
        context: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A TLS certificate or key is missing, unreadable, not PEM, or the
    /// two do not match; the message names the file.
    #[error("{0}")]
    Tls(String),
    /// The gateway's own serving task failed.
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    /// A configuration error for `field`.
    pub(crate) fn config(field: &str, message: impl std::fmt::Display) -> Self {
        Self::Config(format!("{field}: {message}"))
    }

    /// A Redis error with no underlying store error.
    pub(crate) fn redis(message: impl Into<String>) -> Self {
        Self::Redis {
            message: message.into(),
            source: None,
        }
    }
}

/// `error`, then its cause, that one's cause, and so on.
pub(crate) fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |error| error.source())
}

/// `error` and its causes, `outer: inner: ...` (hyper's own message, e.g.
/// "client error (SendRequest)", names no cause).
pub(crate) fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    chain(error)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
