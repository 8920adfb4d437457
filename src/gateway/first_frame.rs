//! Whether a gRPC upstream speaks HTTP/2 at all: its first bytes must be
//! a frame header of type SETTINGS (RFC 9113 §3.4: the server's preface).
//! An upstream that answers with anything else (`HTTP/1.1 400`, say: an
//! HTTP/1-only server, or a TLS one whose ALPN did not pick `h2`), or ends
//! the connection before that header (an HTTP/1 server closing with our
//! frames unread resets it), never processed a stream on that connection:
//! HTTP/2 servers send their SETTINGS before they take a stream. Its calls
//! cost nothing, as for an upstream that could not be reached.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tower_service::Service;

/// The start of the error a connection's reads fail with when its first
/// bytes are not an HTTP/2 frame header of type SETTINGS, or it ended
/// before them. `h2` keeps an I/O error's kind and text only, so the text
/// is what marks it.
const NOT_HTTP2: &str = "the upstream sent no HTTP/2 SETTINGS frame first";

/// The frame header's type byte: the 4th (a 24-bit length comes first).
const TYPE_AT: usize = 3;

/// SETTINGS.
const SETTINGS: u8 = 0x4;

/// Whether `error` (an `h2` I/O error's kind and text) says the upstream
/// did not speak HTTP/2 on its connection.
pub(crate) fn is_not_http2(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::InvalidData
        && error
            .get_ref()
            .is_some_and(|e| e.to_string().starts_with(NOT_HTTP2))
}

/// What an upstream's connections have shown: whether it ever spoke
/// HTTP/2 (sent its SETTINGS), and if not, whether one failed before.
#[derive(Debug, Default)]
pub(crate) struct Http2Seen(AtomicU8);

const UNKNOWN: u8 = 0;
const SPOKE: u8 = 1;
const NEVER_SPOKE: u8 = 2;

impl Http2Seen {
    /// Whether no connection ever spoke HTTP/2 and one failed before its
    /// first frame: an upstream that does not speak it (an HTTP/1 server,
    /// say). A call whose connection closed under it there (hyper: a
    /// cancel; h2: a generic broken pipe, as it gives the connection's
    /// cause to none of its streams) was never processed. Once any
    /// connection spoke HTTP/2 this stays false: a broken connection then
    /// may have had its calls processed, and they stay charged.
    pub(crate) fn never_spoke(&self) -> bool {
        self.0.load(Ordering::Acquire) == NEVER_SPOKE
    }

    fn spoke(&self) {
        self.0.store(SPOKE, Ordering::Release);
    }

    fn failed_before_its_first_frame(&self) {
        let _ = self
            .0
            .compare_exchange(UNKNOWN, NEVER_SPOKE, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// A connector whose connections check the upstream's first frame.
#[derive(Debug, Clone)]
pub(crate) struct CheckFirstFrame<C> {
    connector: C,
    seen: Arc<Http2Seen>,
}

impl<C> CheckFirstFrame<C> {
    pub(crate) fn new(connector: C) -> Self {
        Self {
            connector,
            seen: Arc::default(),
        }
    }

    /// What its connections have shown.
    pub(crate) fn seen(&self) -> Arc<Http2Seen> {
        self.seen.clone()
    }
}

impl<C> Service<Uri> for CheckFirstFrame<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
{
    type Response = FirstFrame<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.connector.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.connector.call(uri);
        let upstream = self.seen.clone();
        Box::pin(async move {
            Ok(FirstFrame {
                io: connecting.await?,
                seen: 0,
                upstream,
            })
        })
    }
}

/// A connection that fails its reads if the upstream's first frame is
/// not SETTINGS; after the type byte, a plain pass-through.
#[derive(Debug)]
pub(crate) struct FirstFrame<T> {
    io: T,
    /// How many of the first `TYPE_AT + 1` bytes have been read.
    seen: usize,
    /// Told what this connection shows.
    upstream: Arc<Http2Seen>,
}

impl<T: Read + Unpin> Read for FirstFrame<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if self.seen > TYPE_AT {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        // Up to the type byte, read into a small buffer to see the bytes.
        let mut head = [MaybeUninit::<u8>::uninit(); TYPE_AT + 1];
        let want = (TYPE_AT + 1 - self.seen).min(buf.remaining());
        let mut small = ReadBuf::uninit(&mut head[..want]);
        if let Err(e) = ready!(Pin::new(&mut self.io).poll_read(cx, small.unfilled())) {
            return Poll::Ready(Err(self.not_http2(&format!("it failed: {e}"))));
        }
        let read = small.filled();
        if read.is_empty() && want > 0 {
            return Poll::Ready(Err(self.not_http2("it closed the connection")));
        }
        if let Some(&kind) = read.get(TYPE_AT - self.seen) {
            if kind != SETTINGS {
                return Poll::Ready(Err(self.not_http2("its first bytes are no frame of it")));
            }
            self.upstream.spoke();
        }
        self.seen += read.len();
        buf.put_slice(read);
        Poll::Ready(Ok(()))
    }
}

impl<T> FirstFrame<T> {
    /// The verdict, told to the connector, and the read's error.
    fn not_http2(&self, why: &str) -> io::Error {
        self.upstream.failed_before_its_first_frame();
        io::Error::new(io::ErrorKind::InvalidData, format!("{NOT_HTTP2} ({why})"))
    }

    /// A write's `result`, its failure marked while no frame has come.
    fn before_the_first_frame<R>(&self, result: io::Result<R>) -> io::Result<R> {
        match result {
            Err(e) if self.seen <= TYPE_AT => Err(self.not_http2(&format!("a write failed: {e}"))),
            other => other,
        }
    }
}

/// Writes fail as reads do while the first frame has not come: an
/// upstream that closes at once (an HTTP/1 server with our frames unread)
/// breaks our writes before we read a byte.
impl<T: Write + Unpin> Write for FirstFrame<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.io).poll_write(cx, buf));
        Poll::Ready(self.before_the_first_frame(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = ready!(Pin::new(&mut self.io).poll_flush(cx));
        Poll::Ready(self.before_the_first_frame(flushed))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs));
        Poll::Ready(self.before_the_first_frame(written))
    }
}

impl<T: Connection> Connection for FirstFrame<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncWriteExt;

    /// Reads all of `sent` through the check, `chunk` bytes a write; and
    /// what the check found.
    async fn read_through(sent: &[u8], chunk: usize) -> (io::Result<Vec<u8>>, bool) {
        let upstream = Arc::new(Http2Seen::default());
        let read = read_all(sent, chunk, upstream.clone()).await;
        (read, upstream.never_spoke())
    }

    async fn read_all(sent: &[u8], chunk: usize, upstream: Arc<Http2Seen>) -> io::Result<Vec<u8>> {
        let (client, mut server) = tokio::io::duplex(64);
        let sent = sent.to_vec();
        tokio::spawn(async move {
            for part in sent.chunks(chunk) {
                server.write_all(part).await.unwrap();
                server.flush().await.unwrap();
            }
        });
        let mut io = TokioIo::new(FirstFrame {
            io: TokioIo::new(client),
            seen: 0,
            upstream,
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 32];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut io, &mut buf).await?;
            if n == 0 {
                return Ok(got);
            }
            got.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn a_settings_frame_passes_whole_an_http1_answer_fails() {
        // An empty SETTINGS frame, then a SETTINGS ack, however it is cut.
        let settings = [0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
        for chunk in [1, 2, 3, 4, 5, 18] {
            let (read, not_http2) = read_through(&settings, chunk).await;
            assert_eq!((read.unwrap(), not_http2), (settings.to_vec(), false));
            let (read, not_http2) = read_through(b"HTTP/1.1 400 Bad Request\r\n\r\n", chunk).await;
            let error = read.unwrap_err();
            assert!(is_not_http2(&error) && not_http2, "{error}");
        }
        // An end before the type byte: no stream was taken.
        for sent in [&b""[..], &[0, 0, 0][..]] {
            let (read, not_http2) = read_through(sent, 1).await;
            assert!(is_not_http2(&read.unwrap_err()) && not_http2);
        }
    }

    /// Once a connection spoke HTTP/2, a later one that fails before its
    /// first frame (an upstream restarting, say) makes no call free.
    #[test]
    fn an_upstream_that_spoke_http2_once_stays_one() {
        let upstream = Http2Seen::default();
        assert!(!upstream.never_spoke());
        upstream.failed_before_its_first_frame();
        assert!(upstream.never_spoke());
        upstream.spoke();
        upstream.failed_before_its_first_frame();
        assert!(!upstream.never_spoke());
    }

    #[test]
    fn only_its_own_error_says_not_http2() {
        let as_h2_keeps_it = io::Error::new(io::ErrorKind::InvalidData, format!("{NOT_HTTP2} (x)"));
        assert!(is_not_http2(&as_h2_keeps_it));
        assert!(!is_not_http2(&io::Error::new(
            io::ErrorKind::InvalidData,
            "other"
        )));
        assert!(!is_not_http2(&io::Error::from(io::ErrorKind::InvalidData)));
    }
}
