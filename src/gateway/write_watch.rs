//! The client socket's side of the response write timeout: a write the
//! socket would not take (it returned `Pending`) waits for the client,
//! until a later write goes through. The connection's driver judges that
//! wait as it judges a response's (see
//! [`ConnectionState::end_write_period`]): a client that took nothing for
//! a whole timeout loses its connection, whatever hyper still holds for it
//! (the tail of an HTTP/1 response whose body has ended, pipelined
//! answers, an HTTP/2 connection's frames).
//!
//! The kernel takes more of a socket's data as the client takes what it
//! holds only if its unsent data is bounded: [`bound_unsent`] sets
//! `TCP_NOTSENT_LOWAT`, so a write goes through once the client has taken
//! [`UNSENT_BYTES`] or so, not after it drained megabytes of an autotuned
//! send buffer (a client reading 800 KB/s was cut with a 2 s timeout).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::edge::{ConnectionState, Waiting};

/// The most unsent bytes a client socket holds (`TCP_NOTSENT_LOWAT`): a
/// client keeps its connection while it takes this much per response
/// write timeout.
pub(crate) const UNSENT_BYTES: u32 = 16 * 1024;

/// Bounds the unsent data `socket` holds to [`UNSENT_BYTES`] (Linux;
/// elsewhere the kernel's own buffering stands).
pub(crate) fn bound_unsent(socket: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(socket).set_tcp_notsent_lowat(UNSENT_BYTES) {
        tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT not set");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = socket;
}

/// A client connection's socket whose refused writes wait for the client.
#[derive(Debug)]
pub(crate) struct WriteWatched<S> {
    io: S,
    waiting: Waiting,
}

impl<S> WriteWatched<S> {
    pub(crate) fn new(io: S, connection: Arc<ConnectionState>) -> Self {
        Self {
            io,
            waiting: Waiting::new(connection),
        }
    }

    /// Follows a write's outcome: refused, the client's turn; through (or
    /// failed: the connection ends anyway), not.
    fn wrote<T>(&mut self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match &polled {
            Poll::Pending => self.waiting.wait_for_client(),
            Poll::Ready(_) => self.waiting.client_took_it(),
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteWatched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteWatched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.wrote(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.wrote(polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A write the other end does not take waits for the client: the
    /// connection is found stalled at the end of the period after the one
    /// it began in; once the other end reads, it is not.
    #[tokio::test]
    async fn a_refused_write_waits_for_the_client_until_one_goes_through() {
        let connection = Arc::new(ConnectionState::default());
        let (ours, mut client) = tokio::io::duplex(64);
        let mut watched = WriteWatched::new(ours, connection.clone());
        watched.write_all(&[1; 64]).await.unwrap();
        let refused = watched.write(&[2; 64]);
        tokio::pin!(refused);
        assert!(futures_util::poll!(refused.as_mut()).is_pending());
        assert!(connection.end_write_period(), "judged in its own period");
        let mut taken = [0; 64];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut taken)
            .await
            .unwrap();
        assert_eq!(refused.await.unwrap(), 64);
        assert!(connection.end_write_period(), "the client took it");
        // Refused again, and nothing taken for a whole period.
        let refused = watched.write(&[3; 64]);
        tokio::pin!(refused);
        assert!(futures_util::poll!(refused.as_mut()).is_pending());
        assert!(connection.end_write_period());
        assert!(!connection.end_write_period(), "a whole period waited");
    }
}
