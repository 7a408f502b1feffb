//! The stream an upgraded echo or channel connection runs on.
//!
//! hyper hands an upgraded connection over as `Upgraded`: a boxed, dynamically dispatched
//! stream behind a read-ahead buffer. For plain TCP we take the socket back out of it, so every
//! read and write goes straight to tokio (callgrind: ~15 % fewer instructions per small echoed
//! message) and the heap box goes away. One type for all cases keeps one copy of the engine.

use bytes::{Buf, Bytes};
use hyper::upgrade::{Parts, Upgraded};
use hyper_util::rt::TokioIo;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An upgraded connection's stream.
pub enum Stream {
    /// Plain TCP, nothing read ahead: the common case, kept small.
    Tcp(TcpStream),
    /// Plain TCP whose first bytes the HTTP parser already read (the client sent frames right
    /// behind its request): those come first. Rare, so boxed.
    ReadAhead(Box<ReadAhead>),
    /// Anything else (TLS): through hyper.
    Upgraded(TokioIo<Upgraded>),
}

/// A socket behind bytes already read from it.
pub struct ReadAhead {
    /// What the HTTP parser read past the request head; served first.
    head: Bytes,
    /// The socket.
    tcp: TcpStream,
}

impl Stream {
    /// Takes the socket out of hyper's wrapper where it can.
    pub fn new(upgraded: Upgraded) -> Self {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let Parts { io, read_buf, .. } = parts;
                if read_buf.is_empty() {
                    // Dropped here: an empty view may still hold the parser's whole buffer.
                    drop(read_buf);
                    Stream::Tcp(io.into_inner())
                } else {
                    Stream::ReadAhead(Box::new(ReadAhead {
                        head: read_buf,
                        tcp: io.into_inner(),
                    }))
                }
            }
            Err(upgraded) => Stream::Upgraded(TokioIo::new(upgraded)),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ReadAhead(b) => {
                let ReadAhead { head, tcp } = &mut **b;
                if head.is_empty() {
                    return Pin::new(tcp).poll_read(cx, buf);
                }
                let n = head.len().min(buf.remaining());
                buf.put_slice(&head[..n]);
                head.advance(n);
                Poll::Ready(Ok(()))
            }
            Stream::Upgraded(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ReadAhead(b) => Pin::new(&mut b.tcp).poll_write(cx, buf),
            Stream::Upgraded(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::ReadAhead(b) => Pin::new(&mut b.tcp).poll_write_vectored(cx, bufs),
            Stream::Upgraded(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::ReadAhead(b) => b.tcp.is_write_vectored(),
            Stream::Upgraded(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::ReadAhead(b) => Pin::new(&mut b.tcp).poll_flush(cx),
            Stream::Upgraded(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ReadAhead(b) => Pin::new(&mut b.tcp).poll_shutdown(cx),
            Stream::Upgraded(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
