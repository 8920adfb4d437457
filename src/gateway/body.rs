//! The gateway's bodies: a buffered one (refusals, echo, errors, a replayed
//! request's empty body) or a streamed one passed through (the upstream's
//! response, the client's request).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::edge::{BodyWatch, EdgeBody};
use super::grpc;

/// Errors of a streamed body.
///
/// ```
/// use tower_usage_plans::gateway::BoxError;
///
/// let error: BoxError = "upstream reset".into();
/// assert_eq!(error.to_string(), "upstream reset");
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// A buffered body or a streamed one passed through.
    ///
    /// ```
    /// use http_body_util::BodyExt;
    /// use tower_usage_plans::gateway::GatewayBody;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let body = GatewayBody::from(String::from("hello"));
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    /// # });
    /// ```
    pub struct GatewayBody {
        #[pin]
        inner: Inner,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner {
        Full { #[pin] body: Full<Bytes> },
        Streamed { #[pin] body: Incoming },
        Client { #[pin] body: EdgeBody },
        // A gRPC call's answer from the upstream: if its stream breaks off,
        // the call ends with a gRPC status in trailers, not a reset.
        Grpc {
            #[pin] body: Incoming,
            request: Option<Arc<BodyWatch>>,
            ended: bool,
        },
    }
}

impl GatewayBody {
    /// A client's request body, passed through to the upstream.
    pub(crate) fn client(body: EdgeBody) -> Self {
        Self {
            inner: Inner::Client { body },
        }
    }
}

impl GatewayBody {
    /// The upstream's answer to a gRPC call; `request` watches the call's
    /// request stream, to tell why the answer broke off.
    pub(crate) fn grpc(body: Incoming, request: Option<Arc<BodyWatch>>) -> Self {
        Self {
            inner: Inner::Grpc {
                body,
                request,
                ended: false,
            },
        }
    }
}

impl From<Bytes> for GatewayBody {
    fn from(bytes: Bytes) -> Self {
        Self {
            inner: Inner::Full {
                body: Full::new(bytes),
            },
        }
    }
}

impl std::fmt::Debug for GatewayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            Inner::Full { .. } => "GatewayBody::Full",
            Inner::Streamed { .. } => "GatewayBody::Streamed",
            Inner::Client { .. } => "GatewayBody::Client",
            Inner::Grpc { .. } => "GatewayBody::Grpc",
        })
    }
}

impl Default for GatewayBody {
    /// Empty.
    fn default() -> Self {
        Bytes::new().into()
    }
}

impl From<String> for GatewayBody {
    fn from(text: String) -> Self {
        Bytes::from(text).into()
    }
}

impl From<Incoming> for GatewayBody {
    fn from(body: Incoming) -> Self {
        Self {
            inner: Inner::Streamed { body },
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().inner.project() {
            InnerProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
            InnerProj::Streamed { body } => body.poll_frame(cx).map_err(Into::into),
            InnerProj::Client { body } => body.poll_frame(cx).map_err(Into::into),
            InnerProj::Grpc {
                body,
                request,
                ended,
            } => {
                if *ended {
                    return Poll::Ready(None);
                }
                match ready!(body.poll_frame(cx)) {
                    Some(Err(error)) => {
                        *ended = true;
                        let failure = request.as_ref().and_then(|w| w.failure());
                        tracing::debug!(%error, ?failure, "a gRPC call's stream broke off");
                        Poll::Ready(Some(Ok(Frame::trailers(grpc::broken_off(failure)))))
                    }
                    frame => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full { body } => body.is_end_stream(),
            Inner::Streamed { body } => body.is_end_stream(),
            Inner::Client { body } => body.is_end_stream(),
            Inner::Grpc { body, ended, .. } => *ended || body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full { body } => body.size_hint(),
            Inner::Streamed { body } => body.size_hint(),
            Inner::Client { body } => body.size_hint(),
            Inner::Grpc { body, .. } => body.size_hint(),
        }
    }
}
