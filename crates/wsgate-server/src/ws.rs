//! Admitted connections of `echo` and `channel` routes: reassembly with limits, ping and idle
//! timers, and the close handshake, on top of fastwebsockets' frame codec.
//!
//! Each connection is one task running a reader and a writer side by side. Only the writer
//! touches the socket's write half, so pongs, echoes, broadcasts, pings and closes never interleave
//! inside a frame; the reader hands it work through a small bounded queue.

use crate::hub::{Broadcast, Hub};
use crate::metrics::Metrics;
use bytes::BytesMut;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{interval_at, timeout, Instant, MissedTickBehavior};

/// How long a closing side waits for the peer's close frame before dropping the TCP connection.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Undelivered broadcasts a channel member may have queued before it counts as too slow.
const MEMBER_QUEUE: usize = 256;

/// Per-connection protocol limits, copied from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest reassembled message.
    pub max_message: usize,
    /// Largest single frame.
    pub max_frame: usize,
    /// Interval between server pings.
    pub ping_interval: Duration,
    /// Silence after which the connection is closed.
    pub idle_timeout: Duration,
}

/// What an echo or channel connection does with the messages it receives.
pub enum Local {
    /// Send them back.
    Echo,
    /// Publish them to the room `room`.
    Channel {
        /// Rooms of every channel route.
        hub: Arc<Hub>,
        /// Route index and matched path: one room per distinct path.
        room: String,
        /// Whether the publisher receives its own messages.
        deliver_to_sender: bool,
    },
}

/// Frames the reader asks the writer to send.
enum Out {
    /// A frame to write as is (an echo, a pong, the reply to the client's close).
    Frame(Frame<'static>),
    /// A close frame the server starts; the writer stops after it.
    Close(u16, String),
}

/// The close code and reason for a read error, or `None` when the peer is simply gone.
pub fn close_for(e: &WebSocketError) -> Option<(u16, String)> {
    match e {
        WebSocketError::InvalidUTF8 => Some((1007, "invalid UTF-8 in a text message".into())),
        WebSocketError::FrameTooLarge => {
            Some((1009, "frame larger than the server's limit".into()))
        }
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed
        | WebSocketError::SendError(_) => None,
        other => Some((1002, format!("protocol error: {other}"))),
    }
}

/// Reassembles fragmented messages, enforcing the message size limit and UTF-8 as data arrives.
pub struct Assembler {
    max: usize,
    partial: Option<Partial>,
}

struct Partial {
    opcode: OpCode,
    buf: BytesMut,
    /// Length of the prefix of `buf` known to be valid UTF-8 (text only).
    valid: usize,
}

/// A complete message.
#[derive(Debug)]
pub struct Message {
    /// Text or binary.
    pub opcode: OpCode,
    /// Its payload; single-frame messages are passed through without a copy.
    pub payload: BytesMut,
}

impl Assembler {
    /// An assembler that refuses messages over `max` bytes.
    pub fn new(max: usize) -> Self {
        Assembler { max, partial: None }
    }

    /// Feeds a data frame; returns a message when one is complete, or the close to send.
    pub fn push(&mut self, frame: Frame<'static>) -> Result<Option<Message>, (u16, String)> {
        let too_big = |n: usize, max: usize| {
            (
                1009,
                format!("message of {n}+ bytes exceeds the limit of {max}"),
            )
        };
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err((
                        1002,
                        "a new message started before the fragmented one ended".into(),
                    ));
                }
                let payload = into_bytes(frame.payload);
                if payload.len() > self.max {
                    return Err(too_big(payload.len(), self.max));
                }
                if frame.fin {
                    // fastwebsockets has already checked UTF-8 of unfragmented text.
                    return Ok(Some(Message {
                        opcode: frame.opcode,
                        payload,
                    }));
                }
                let mut p = Partial {
                    opcode: frame.opcode,
                    buf: payload,
                    valid: 0,
                };
                p.check_utf8()?;
                self.partial = Some(p);
                Ok(None)
            }
            OpCode::Continuation => {
                let Some(p) = self.partial.as_mut() else {
                    return Err((
                        1002,
                        "a continuation frame with no message to continue".into(),
                    ));
                };
                if p.buf.len() + frame.payload.len() > self.max {
                    return Err(too_big(p.buf.len() + frame.payload.len(), self.max));
                }
                p.buf.extend_from_slice(&frame.payload);
                p.check_utf8()?;
                if !frame.fin {
                    return Ok(None);
                }
                let Some(p) = self.partial.take() else {
                    return Ok(None);
                };
                if p.opcode == OpCode::Text && p.valid != p.buf.len() {
                    return Err((1007, "text message ends inside a UTF-8 sequence".into()));
                }
                Ok(Some(Message {
                    opcode: p.opcode,
                    payload: p.buf,
                }))
            }
            _ => Ok(None),
        }
    }
}

impl Partial {
    /// Validates the bytes added since the last call; an incomplete sequence at the end may still
    /// be completed by the next fragment.
    fn check_utf8(&mut self) -> Result<(), (u16, String)> {
        if self.opcode != OpCode::Text {
            return Ok(());
        }
        match std::str::from_utf8(&self.buf[self.valid..]) {
            Ok(_) => self.valid = self.buf.len(),
            Err(e) if e.error_len().is_none() => self.valid += e.valid_up_to(),
            Err(_) => return Err((1007, "invalid UTF-8 in a text message".into())),
        }
        Ok(())
    }
}

/// Takes a frame's payload out of the codec's hands, so the frame outlives the next read.
pub fn owned(f: Frame<'_>) -> Frame<'static> {
    Frame::new(f.fin, f.opcode, None, Payload::Bytes(into_bytes(f.payload)))
}

/// Completes once the server starts shutting down (at once if it already has).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// The answer to a client's close frame (RFC 6455 §5.5, §5.5.1, §7.4): echo a valid status code,
/// or fail with 1002/1007 when the frame itself is malformed.
fn close_reply(payload: &[u8]) -> Out {
    match payload.len() {
        0 => Out::Frame(Frame::close_raw(Payload::Owned(Vec::new()))),
        1 => Out::Close(1002, "close frame with a 1-byte payload".into()),
        n if n > 125 => Out::Close(1002, "control frame longer than 125 bytes".into()),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !fastwebsockets::CloseCode::from(code).is_allowed() {
                Out::Close(1002, format!("close code {code} may not be sent"))
            } else if std::str::from_utf8(&payload[2..]).is_err() {
                Out::Close(1007, "close reason is not UTF-8".into())
            } else {
                Out::Frame(Frame::close(code, b""))
            }
        }
    }
}

fn into_bytes(p: Payload<'_>) -> BytesMut {
    match p {
        Payload::Bytes(b) => b,
        other => BytesMut::from(&other[..]),
    }
}

/// Runs an admitted echo or channel connection until it closes or the server shuts down.
pub async fn run_local(
    upgraded: Upgraded,
    local: Local,
    conn_id: u64,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let io = TokioIo::new(upgraded);
    let (r, w) = tokio::io::split(io);
    let (mut reader, mut writer) = fastwebsockets::after_handshake_split(r, w, Role::Server);
    reader.set_max_message_size(limits.max_frame.saturating_add(1));
    // Close frames are checked here rather than echoed blindly by the codec (see `close_reply`).
    reader.set_auto_close(false);
    let (tx, mut rx) = mpsc::channel::<Out>(32);

    let (membership, mut inbox, deliver_to_sender) = match local {
        Local::Echo => (None, None, true),
        Local::Channel {
            hub,
            room,
            deliver_to_sender,
        } => {
            let (m, rx) = hub.join(room, conn_id, MEMBER_QUEUE);
            (Some(m), Some(rx), deliver_to_sender)
        }
    };

    let reader_metrics = metrics.clone();
    let reader_side = async move {
        let mut asm = Assembler::new(limits.max_message);
        let obligations = tx.clone();
        let mut send = move |f: Frame<'static>| {
            let tx = obligations.clone();
            async move {
                tx.send(Out::Frame(f))
                    .await
                    .map_err(|_| "writer gone".to_owned())
            }
        };
        loop {
            let frame = match timeout(limits.idle_timeout, reader.read_frame(&mut send)).await {
                Err(_) => {
                    let _ = tx.send(Out::Close(1000, "idle timeout".into())).await;
                    return;
                }
                Ok(Err(e)) => {
                    if let Some((code, reason)) = close_for(&e) {
                        let _ = tx.send(Out::Close(code, reason)).await;
                    }
                    return;
                }
                Ok(Ok(f)) => owned(f),
            };
            if frame.opcode == OpCode::Close {
                let _ = tx.send(close_reply(&frame.payload)).await;
                return;
            }
            let msg = match asm.push(frame) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err((code, reason)) => {
                    let _ = tx.send(Out::Close(code, reason)).await;
                    return;
                }
            };
            reader_metrics.messages_in.inc();
            reader_metrics.bytes_in.inc_by(msg.payload.len() as u64);
            match &membership {
                None => {
                    let frame = Frame::new(true, msg.opcode, None, Payload::Bytes(msg.payload));
                    if tx.send(Out::Frame(frame)).await.is_err() {
                        return;
                    }
                }
                Some(m) => m.publish(Broadcast {
                    from: conn_id,
                    opcode: msg.opcode,
                    payload: msg.payload.freeze(),
                }),
            }
        }
    };

    let writer_side = async move {
        let start = Instant::now() + limits.ping_interval;
        let mut ping = interval_at(start, limits.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => {
                    let _ = writer.write_frame(Frame::close(1001, b"server shutting down")).await;
                    return true;
                }
                out = rx.recv() => match out {
                    None => return false,
                    Some(Out::Frame(f)) => {
                        let (is_close, len, data) = (f.opcode == OpCode::Close, f.payload.len(), is_data(f.opcode));
                        if writer.write_frame(f).await.is_err() || is_close {
                            return false;
                        }
                        if data {
                            metrics.messages_out.inc();
                            metrics.bytes_out.inc_by(len as u64);
                        }
                    }
                    Some(Out::Close(code, reason)) => {
                        let _ = writer.write_frame(Frame::close(code, truncate(&reason).as_bytes())).await;
                        return true;
                    }
                },
                b = recv_broadcast(&mut inbox) => match b {
                    Some(b) => {
                        if b.from == conn_id && !deliver_to_sender {
                            continue;
                        }
                        let frame = Frame::new(true, b.opcode, None, Payload::Borrowed(&b.payload));
                        if writer.write_frame(frame).await.is_err() {
                            return false;
                        }
                        metrics.messages_out.inc();
                        metrics.bytes_out.inc_by(b.payload.len() as u64);
                    }
                    None => {
                        let _ = writer.write_frame(Frame::close(1013, b"too slow: messages for this connection were dropped")).await;
                        return true;
                    }
                },
                _ = ping.tick() => {
                    if writer.write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]))).await.is_err() {
                        return false;
                    }
                }
            }
        }
    };
    close_handshake(reader_side, writer_side).await;
}

/// Drives reader and writer together; when the writer has sent a close of its own, the reader
/// gets [`CLOSE_GRACE`] to receive the peer's reply before the connection is dropped.
async fn close_handshake(reader: impl Future<Output = ()>, writer: impl Future<Output = bool>) {
    tokio::pin!(reader, writer);
    tokio::select! {
        _ = &mut reader => { let _ = timeout(CLOSE_GRACE, writer).await; }
        server_closed = &mut writer => {
            if server_closed {
                let _ = timeout(CLOSE_GRACE, reader).await;
            }
        }
    }
}

async fn recv_broadcast(
    inbox: &mut Option<mpsc::Receiver<Arc<Broadcast>>>,
) -> Option<Arc<Broadcast>> {
    match inbox {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn is_data(op: OpCode) -> bool {
    matches!(op, OpCode::Text | OpCode::Binary | OpCode::Continuation)
}

/// Close reasons are limited to 123 bytes (RFC 6455 §5.5); cut on a character boundary.
pub fn truncate(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, op: OpCode, data: &[u8]) -> Frame<'static> {
        Frame::new(fin, op, None, Payload::Owned(data.to_vec()))
    }

    #[test]
    fn fragments_reassemble_and_respect_the_limit() {
        let mut a = Assembler::new(10);
        assert!(a
            .push(frame(false, OpCode::Binary, b"abcd"))
            .unwrap()
            .is_none());
        let m = a
            .push(frame(true, OpCode::Continuation, b"efg"))
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], b"abcdefg");
        assert!(a
            .push(frame(false, OpCode::Binary, b"abcdef"))
            .unwrap()
            .is_none());
        assert_eq!(
            a.push(frame(true, OpCode::Continuation, b"ghijk"))
                .unwrap_err()
                .0,
            1009
        );
        let mut a = Assembler::new(10);
        assert_eq!(
            a.push(frame(true, OpCode::Text, b"0123456789a"))
                .unwrap_err()
                .0,
            1009
        );
    }

    #[test]
    fn utf8_split_across_fragments_is_fine_and_invalid_fails_fast() {
        let euro = "€".as_bytes(); // 3 bytes
        let mut a = Assembler::new(100);
        assert!(a
            .push(frame(false, OpCode::Text, &euro[..1]))
            .unwrap()
            .is_none());
        assert!(a
            .push(frame(false, OpCode::Continuation, &euro[1..2]))
            .unwrap()
            .is_none());
        let m = a
            .push(frame(true, OpCode::Continuation, &euro[2..]))
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], euro);
        let mut a = Assembler::new(100);
        assert_eq!(
            a.push(frame(false, OpCode::Text, b"ok\xff")).unwrap_err().0,
            1007
        );
        let mut a = Assembler::new(100);
        assert!(a
            .push(frame(false, OpCode::Text, &euro[..2]))
            .unwrap()
            .is_none());
        assert_eq!(
            a.push(frame(true, OpCode::Continuation, b""))
                .unwrap_err()
                .0,
            1007
        );
    }

    #[test]
    fn continuation_rules() {
        let mut a = Assembler::new(100);
        assert_eq!(
            a.push(frame(true, OpCode::Continuation, b"x"))
                .unwrap_err()
                .0,
            1002
        );
        assert!(a
            .push(frame(false, OpCode::Binary, b"x"))
            .unwrap()
            .is_none());
        assert_eq!(
            a.push(frame(true, OpCode::Binary, b"y")).unwrap_err().0,
            1002
        );
    }

    #[test]
    fn reasons_are_cut_to_123_bytes() {
        let long = "é".repeat(100);
        let t = truncate(&long);
        assert!(t.len() <= 123 && t.is_char_boundary(t.len()));
    }
}
