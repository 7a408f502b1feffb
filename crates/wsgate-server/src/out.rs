//! The output plumbing both connection engines share (the echo/channel engine in `ws` and the
//! proxy relay): frames serialised into their own buffers, the queue that exists only while a
//! peer lags, close reasons cut to size, and the waits of a closing connection.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::sync::watch;
use wsgate_handshake::frame::{write_server_header, OpCode, MAX_SERVER_HEADER};

/// How long a closing side waits for the peer's close frame before dropping the TCP connection.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Completes once the server starts shutting down (at once if it already has).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Operator closes remembered by [`Stop`]: enough for any burst of clicks, since a connection
/// reads the channel as soon as it changes.
const CLOSES_KEPT: usize = 64;

/// What open connections are told to stop for: the server shutting down, or an operator closing
/// some of them (by connection id; ids are never reused, so an old entry is harmless). One
/// channel for every connection costs nothing per idle connection; a close wakes them all once.
#[derive(Debug, Default)]
pub struct Stop {
    shutting_down: bool,
    closed: VecDeque<u64>,
}

impl Stop {
    /// Every connection stops.
    pub fn shut_down(&mut self) {
        self.shutting_down = true;
    }

    /// The connection `id` stops.
    pub fn close(&mut self, id: u64) {
        if self.closed.len() == CLOSES_KEPT {
            self.closed.pop_front();
        }
        self.closed.push_back(id);
    }

    fn for_conn(&self, id: u64) -> Option<Stopping> {
        if self.shutting_down {
            Some(Stopping::Shutdown)
        } else if self.closed.contains(&id) {
            Some(Stopping::Operator)
        } else {
            None
        }
    }
}

/// Why a connection was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopping {
    /// The server shuts down (close 1001).
    Shutdown,
    /// An operator closed it from the admin page (close 1008).
    Operator,
}

impl Stopping {
    /// The close code and reason the peer (both peers, on a proxy route) is sent.
    pub fn close(self) -> (u16, &'static str) {
        match self {
            Stopping::Shutdown => (1001, "server shutting down"),
            Stopping::Operator => (1008, "closed by an operator"),
        }
    }
}

/// Completes once connection `id` is told to stop (at once if it already was).
pub async fn stop_of(stop: &mut watch::Receiver<Stop>, id: u64) -> Stopping {
    match stop.wait_for(|s| s.for_conn(id).is_some()).await {
        Ok(s) => s.for_conn(id).unwrap_or(Stopping::Shutdown),
        // The sender went with the server.
        Err(_) => Stopping::Shutdown,
    }
}

/// Writes one slice with a plain write (`send`) and several with `writev`: on Linux the vectored
/// call costs the kernel an iovec import and VFS checks that a single buffer does not need (perf:
/// about 4 % of the CPU of a small-message echo went there).
pub(crate) fn poll_write_slices<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    cx: &mut Context<'_>,
    slices: &[IoSlice<'_>],
) -> Poll<std::io::Result<usize>> {
    match slices {
        [one] => Pin::new(io).poll_write(cx, one),
        _ => Pin::new(io).poll_write_vectored(cx, slices),
    }
}

/// One complete, unmasked server frame in its own buffer: for queued output and broadcasts,
/// which outlive the read they came from.
pub fn frame_bytes(opcode: OpCode, payload: &[u8]) -> Bytes {
    frame_bytes_rsv1(opcode, payload, false)
}

/// [`frame_bytes`] with RSV1 set when `compressed` (permessage-deflate).
pub fn frame_bytes_rsv1(opcode: OpCode, payload: &[u8], compressed: bool) -> Bytes {
    let mut header = [0u8; MAX_SERVER_HEADER];
    let n = write_server_header(&mut header, opcode, payload.len());
    if compressed {
        header[0] |= 0x40;
    }
    let mut b = BytesMut::with_capacity(n + payload.len());
    b.extend_from_slice(&header[..n]);
    b.extend_from_slice(payload);
    b.freeze()
}

/// Close reasons are limited to 123 bytes (RFC 6455 §5.5); cut on a character boundary.
pub fn truncate(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Output waiting for the peer, owned only while the peer is not keeping up. Broadcast frames
/// are queued by reference, never copied.
#[derive(Default)]
pub(crate) struct OutQueue {
    bufs: VecDeque<Bytes>,
    /// Bytes waiting.
    pub(crate) bytes: usize,
    /// Bytes written from the queue so far: the timers compare it to see a peer that stopped
    /// reading (a counter, not a clock read per write).
    pub(crate) flushed: u64,
}

impl OutQueue {
    pub(crate) fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    pub(crate) fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.bytes += b.len();
            self.bufs.push_back(b);
        }
    }

    /// Writes `parts` in order (the queue must be empty); what the socket does not take is
    /// queued. `Err` means the peer is gone.
    pub(crate) fn write_now<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        parts: &[&[u8]],
    ) -> Result<(), ()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut done = 0;
        while done < total {
            let mut slices = [IoSlice::new(&[]); 3];
            let mut n = 0;
            let mut skip = done;
            for p in parts {
                // `<=`: empty parts (no batch before a large payload) are left out.
                if p.len() <= skip {
                    skip -= p.len();
                    continue;
                }
                slices[n] = IoSlice::new(&p[skip..]);
                skip = 0;
                n += 1;
            }
            match poll_write_slices(io, cx, &slices[..n]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(()),
                Poll::Ready(Ok(w)) => done += w,
                Poll::Pending => break,
            }
        }
        if done < total {
            let mut rest = BytesMut::with_capacity(total - done);
            let mut skip = done;
            for p in parts {
                if skip >= p.len() {
                    skip -= p.len();
                    continue;
                }
                rest.extend_from_slice(&p[skip..]);
                skip = 0;
            }
            self.push(rest.freeze());
        }
        Ok(())
    }

    /// Writes until empty or the socket is full. `Ready(Err)` means the peer is gone.
    pub(crate) fn poll_flush<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ()>> {
        while !self.bufs.is_empty() {
            let mut slices = [IoSlice::new(&[]); 64];
            let mut n = 0;
            for (slot, b) in slices.iter_mut().zip(self.bufs.iter()) {
                *slot = IoSlice::new(b);
                n += 1;
            }
            let written = match poll_write_slices(io, cx, &slices[..n]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Ready(Ok(w)) => w,
            };
            self.bytes -= written;
            self.flushed += written as u64;
            let mut left = written;
            while left > 0 {
                let Some(front) = self.bufs.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    self.bufs.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        // Give the queue's memory back: an idle connection owns no buffers.
        self.bufs = VecDeque::new();
        Poll::Ready(Ok(()))
    }
}
