//! A client's HTTP/2 frames that carry no request: PING, SETTINGS,
//! PRIORITY, WINDOW_UPDATE, RST_STREAM, frame types unknown to HTTP/2,
//! and empty DATA frames that do not end their stream. `h2` answers or
//! ignores each of them, so a flood of them costs the gateway CPU without
//! ever breaking a rule (a client sending WINDOW_UPDATE +1 in a loop kept
//! a core busy, and a good client's p99 went from 3-8 ms to 39-166 ms).
//! A connection gets [`CONTROL_FRAMES_PER_SECOND`] of them a second, in a
//! bucket of as many, and loses the connection past that: real clients
//! send a few a second (keepalive pings, window updates as they read).
//!
//! The budget reads the client's bytes as hyper reads them: an HTTP/2
//! connection starts with the client preface, then frames of a 9-byte
//! header; a connection that does not start so (HTTP/1) is left alone.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The frames that carry no request a connection may send a second, and
/// at once.
pub(crate) const CONTROL_FRAMES_PER_SECOND: f64 = 10_000.0;

/// RFC 9113 §3.4: what an HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A frame header's length.
const HEADER: usize = 9;
/// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
/// A DATA frame's END_STREAM flag.
const END_STREAM: u8 = 0x1;

/// Where the reading is in the client's bytes.
#[derive(Debug)]
enum Reading {
    /// So many bytes of the preface matched.
    Preface(usize),
    /// In a frame header: its bytes so far.
    Header([u8; HEADER], usize),
    /// In a frame's payload: bytes left.
    Payload(usize),
    /// Not HTTP/2: nothing to count.
    Other,
}

/// A client socket whose HTTP/2 frames that carry no request are
/// counted (see the module).
#[derive(Debug)]
pub(crate) struct FrameBudget<S> {
    io: S,
    reading: Reading,
    /// Frames the connection may still send, and when that was counted.
    tokens: f64,
    counted: Instant,
}

impl<S> FrameBudget<S> {
    pub(crate) fn new(io: S) -> Self {
        Self {
            io,
            reading: Reading::Preface(0),
            tokens: CONTROL_FRAMES_PER_SECOND,
            counted: Instant::now(),
        }
    }

    /// Reads `bytes` (what the client sent next, at `now`); an error once
    /// the connection sent more frames that carry no request than it may.
    fn read(&mut self, mut bytes: &[u8], now: Instant) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.reading {
                Reading::Other => return Ok(()),
                Reading::Preface(matched) => {
                    let n = (PREFACE.len() - *matched).min(bytes.len());
                    if bytes[..n] != PREFACE[*matched..*matched + n] {
                        self.reading = Reading::Other;
                        return Ok(());
                    }
                    *matched += n;
                    if *matched == PREFACE.len() {
                        self.reading = Reading::Header([0; HEADER], 0);
                    }
                    bytes = &bytes[n..];
                }
                Reading::Header(header, filled) => {
                    let n = (HEADER - *filled).min(bytes.len());
                    header[*filled..*filled + n].copy_from_slice(&bytes[..n]);
                    *filled += n;
                    bytes = &bytes[n..];
                    if *filled == HEADER {
                        let header = *header;
                        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
                        if carries_no_request(header[3], header[4], length) {
                            self.spend(now)?;
                        }
                        self.reading = match length {
                            0 => Reading::Header([0; HEADER], 0),
                            length => Reading::Payload(length as usize),
                        };
                    }
                }
                Reading::Payload(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.reading = Reading::Header([0; HEADER], 0);
                    }
                }
            }
        }
        Ok(())
    }

    /// One frame that carries no request, at `now`, from the bucket.
    fn spend(&mut self, now: Instant) -> io::Result<()> {
        let refill = now.duration_since(self.counted).as_secs_f64() * CONTROL_FRAMES_PER_SECOND;
        self.tokens = (self.tokens + refill).min(CONTROL_FRAMES_PER_SECOND);
        self.counted = now;
        if self.tokens < 1.0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the client sent too many HTTP/2 frames that carry no request",
            ));
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

/// Whether a frame of `kind` with `flags` and a payload of `length`
/// carries no request (see the module): a request's HEADERS and
/// CONTINUATION, DATA with bytes or ending its stream, and the frames
/// that end a connection (GOAWAY) or that `h2` refuses from a client
/// (PUSH_PROMISE) are not counted.
fn carries_no_request(kind: u8, flags: u8, length: u32) -> bool {
    match kind {
        DATA => length == 0 && flags & END_STREAM == 0,
        HEADERS | CONTINUATION | PUSH_PROMISE | GOAWAY => false,
        _ => true,
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameBudget<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let this = &mut *self;
            if matches!(this.reading, Reading::Other) {
                return polled;
            }
            if let Err(e) = this.read(&buf.filled()[before..], Instant::now()) {
                tracing::debug!(error = %e, "HTTP/2 connection closed");
                return Poll::Ready(Err(e));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameBudget<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header: `length`, `kind`, `flags`, stream 0.
    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let length = (payload.len() as u32).to_be_bytes();
        let mut frame = vec![length[1], length[2], length[3], kind, flags, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        frame
    }

    const PING: u8 = 0x6;

    #[test]
    fn frames_that_carry_no_request_are_counted_however_the_bytes_are_cut() {
        let mut budget = FrameBudget::new(());
        let mut bytes = PREFACE.to_vec();
        for _ in 0..100 {
            bytes.extend(frame(PING, 0, &[0; 8]));
            bytes.extend(frame(HEADERS, 0x4, b"request"));
            bytes.extend(frame(DATA, 0, b"body"));
            bytes.extend(frame(DATA, 0, b""));
            bytes.extend(frame(0x10, 0, b"unknown"));
        }
        // Fed a byte or a few at a time, as a socket may deliver them.
        let now = budget.counted;
        for chunk in bytes.chunks(7) {
            budget.read(chunk, now).unwrap();
        }
        // PING, the empty DATA and the unknown frame: 3 of 5.
        let spent = CONTROL_FRAMES_PER_SECOND - budget.tokens;
        assert!((299.0..301.0).contains(&spent), "{spent}");
    }

    #[test]
    fn a_flood_loses_the_connection_and_http1_is_left_alone() {
        let mut budget = FrameBudget::new(());
        let now = budget.counted;
        budget.read(PREFACE, now).unwrap();
        let ping = frame(PING, 0, &[0; 8]);
        // The bucket's worth within one instant, then one more.
        for _ in 0..CONTROL_FRAMES_PER_SECOND as usize {
            budget.read(&ping, now).unwrap();
        }
        let flood = budget.read(&ping, now);
        assert_eq!(flood.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        // A second later, as many again.
        let later = now + std::time::Duration::from_secs(1);
        let mut refilled = FrameBudget::new(());
        refilled.read(PREFACE, now).unwrap();
        for at in [now, later] {
            for _ in 0..CONTROL_FRAMES_PER_SECOND as usize {
                refilled.read(&ping, at).unwrap();
            }
        }

        let mut http1 = FrameBudget::new(());
        http1.read(b"GET / HTTP/1.1\r\n\r\n", now).unwrap();
        for _ in 0..2 * CONTROL_FRAMES_PER_SECOND as usize {
            http1.read(&ping, now).unwrap();
        }
    }
}
