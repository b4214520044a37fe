//! What the fuzz targets share: the plaintext frame stream's deframing (as the sealed
//! transport's `Opener::next_frame` does it inside the opened records), an in-memory
//! stream over the input, and a poll that must complete at once.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use rallypoint::membership::seal::OpenError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest frame the targets accept: the default `max_frame` (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;

/// Cuts a plaintext frame stream (each frame a 4-byte big-endian length and that many
/// bytes) as `seal::Opener::next_frame` does: a length above `max_frame` is an error
/// (and ends the stream) before any of the frame is looked at; a frame cut short by the
/// end of the input is not returned (the connection closes).
pub struct PlainFrames<'a> {
    rest: &'a [u8],
    max_frame: usize,
    done: bool,
}

impl<'a> PlainFrames<'a> {
    /// The frames of `stream`.
    pub fn new(stream: &'a [u8], max_frame: usize) -> Self {
        PlainFrames {
            rest: stream,
            max_frame,
            done: false,
        }
    }
}

impl<'a> Iterator for PlainFrames<'a> {
    type Item = Result<&'a [u8], OpenError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.rest.len() < 4 {
            return None;
        }
        let len =
            u32::from_be_bytes([self.rest[0], self.rest[1], self.rest[2], self.rest[3]]) as usize;
        if len > self.max_frame {
            self.done = true;
            return Some(Err(OpenError::TooLarge {
                len,
                max: self.max_frame,
            }));
        }
        if self.rest.len() < 4 + len {
            self.done = true;
            return None;
        }
        let frame = &self.rest[4..4 + len];
        self.rest = &self.rest[4 + len..];
        Some(Ok(frame))
    }
}

/// A connection whose peer sent `input` and then closed: reads give the input, then end
/// of stream; writes are kept (and must not come after a shutdown).
pub struct Pipe<'a> {
    input: &'a [u8],
    /// How many bytes of the input were read.
    pub read: usize,
    /// Everything written.
    pub written: Vec<u8>,
    /// Whether the writer shut its side down.
    pub shut: bool,
}

impl<'a> Pipe<'a> {
    /// A connection over `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Pipe {
            input,
            read: 0,
            written: Vec::new(),
            shut: false,
        }
    }
}

impl AsyncRead for Pipe<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let rest = &self.input[self.read..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.read += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Pipe<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        assert!(!self.shut, "wrote after shutting the connection down");
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut = true;
        Poll::Ready(Ok(()))
    }
}

/// Runs a future that waits on nothing but a [`Pipe`]: it must complete on its first
/// poll (a `Pending` would be a handshake that hangs on a peer that closed).
pub fn complete<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("waited although the input had ended"),
    }
}
