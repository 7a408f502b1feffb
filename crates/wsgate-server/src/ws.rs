//! Admitted connections of `echo` and `channel` routes: frames, reassembly with limits, ping and
//! idle timers, and the close handshake.
//!
//! Why our own engine rather than the codec's reader and writer: an idle connection must cost
//! almost nothing (the benchmark measured ~25 KiB per idle connection with fastwebsockets'
//! per-connection read buffer, a reader-to-writer queue and two timers). Here a connection waits
//! for read readiness holding no buffer; the bytes are read into one buffer per worker thread,
//! borrowed only while they are parsed and answered, and only an incomplete frame is carried over.
//! Answers to one read are gathered and written with one call; large payloads are written from where
//! they were read (vectored), never copied. A connection only owns an output queue while the peer
//! is not keeping up. Everything runs in one task, so pongs, echoes, broadcasts, pings and closes
//! can never interleave inside a frame, with no lock or channel hop per message.

use crate::hub::{Hub, Membership, Take};
use crate::metrics::Metrics;
use crate::out::{frame_bytes, frame_bytes_rsv1, truncate, OutQueue, CLOSE_GRACE};
use bytes::{Buf, Bytes, BytesMut};
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::task::unconstrained;
use tokio::time::{sleep_until, timeout, Instant};
use wsgate_handshake::deflate::{self, Agreement, Deflater, InflateError, Inflater, MIN_COMPRESS};
use wsgate_handshake::frame::{
    close_code_allowed, parse_client_frame, parse_client_frame_deflate, write_server_header,
    OpCode, Parsed, MAX_SERVER_HEADER,
};

/// Broadcast frames a channel member takes from its room per write (one `writev`).
const FRAMES_PER_WRITE: usize = 64;
/// Size of each worker thread's read buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Payloads at least this large are written straight from the read buffer (vectored) instead
/// of being copied into the batch of small answers.
const LARGE_PAYLOAD: usize = 2048;
/// Reads per wake-up before yielding to other connections.
const READS_PER_POLL: usize = 16;
/// A worker thread keeps its inflate and deflate buffers up to this size between messages.
const KEEP_BUFFER: usize = 1 << 20;

/// The buffers of one worker thread: connections borrow them only for one read and the
/// synchronous processing of what it brought. One thread-local, so one lookup per read.
struct Scratch {
    /// Where a read lands.
    read: Vec<u8>,
    /// Small answers produced by one read, written together with one call.
    batch: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        read: vec![0; READ_CHUNK],
        batch: Vec::with_capacity(READ_CHUNK),
    });
    /// Broadcast frames a member took from its room, held only until they are written.
    static TAKEN: RefCell<Vec<Bytes>> = RefCell::new(Vec::with_capacity(FRAMES_PER_WRITE));
    /// A compressed message inflated, held only while it is answered.
    static INFLATED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// A message compressed for sending, held only while it is written or queued.
    static DEFLATED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with one of this thread's buffers, emptied, and trims it afterwards so one huge
/// message does not pin its size for the thread's life.
fn with_buffer<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<u8>>>,
    f: impl FnOnce(&mut Vec<u8>) -> R,
) -> R {
    key.with(|b| match b.try_borrow_mut() {
        Ok(mut b) => {
            b.clear();
            let r = f(&mut b);
            if b.capacity() > KEEP_BUFFER {
                *b = Vec::new();
            } else {
                b.clear();
            }
            r
        }
        Err(_) => f(&mut Vec::new()),
    })
}

/// What fail-fast UTF-8 checking knows of an incomplete text frame: payload bytes checked, and
/// the unfinished sequence at their end.
#[derive(Default, Clone, Copy)]
struct PartialUtf8 {
    checked: usize,
    tail: [u8; 3],
    tail_len: u8,
}

/// A connection's permessage-deflate: what was agreed, and in contextual mode the compressor and
/// inflater whose windows last from message to message (boxed, made at first use).
struct Compressing {
    agreement: Agreement,
    kept: Option<Box<Kept>>,
}

#[derive(Default)]
struct Kept {
    deflater: Option<Deflater>,
    inflater: Option<Inflater>,
}

impl Compressing {
    /// Inflates a message into `out` (at most `max` bytes): with the thread's inflater when
    /// the client starts each message afresh, else with this connection's.
    fn inflate(&mut self, payload: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), End> {
        let r = if self.agreement.client_no_context_takeover {
            deflate::inflate_message(payload, max, out)
        } else {
            let kept = self.kept.get_or_insert_with(Box::default);
            kept.inflater
                .get_or_insert_with(Inflater::new)
                .inflate(payload, max, out)
        };
        r.map_err(|e| match e {
            InflateError::TooBig => End::Fail(
                1009,
                format!("compressed message inflates past the limit of {max} bytes"),
            ),
            InflateError::Corrupt(why) => End::Fail(
                1007,
                format!("compressed message is not valid deflate data: {why}"),
            ),
        })
    }

    /// Compresses a message into `out`.
    fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let bits = self.agreement.compressor_bits();
        if self.agreement.server_no_context_takeover {
            deflate::compress_message(payload, bits, out);
        } else {
            let kept = self.kept.get_or_insert_with(Box::default);
            kept.deflater
                .get_or_insert_with(|| Deflater::new(bits))
                .compress(payload, out);
        }
    }
}

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
    /// Queued output above which the connection stops reading (and stops taking broadcasts)
    /// until the peer catches up: backpressure instead of unbounded memory.
    pub max_output: usize,
    /// Queued output that makes no progress for this long closes the connection (1013).
    pub send_timeout: Duration,
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

/// Reassembles fragmented messages, enforcing the message size limit and UTF-8 as data arrives.
/// Unfragmented messages never pass through it (they are answered from the read buffer).
pub struct Assembler {
    /// Largest message, in bytes.
    pub max: usize,
    /// Boxed: it exists only while a fragmented message arrives, and every idle connection
    /// would otherwise carry its size.
    partial: Option<Box<Partial>>,
}

struct Partial {
    opcode: OpCode,
    /// permessage-deflate: the message is compressed (RSV1 on its first frame); UTF-8 is
    /// checked once it is inflated.
    compressed: bool,
    buf: BytesMut,
    /// Length of the prefix of `buf` known to be valid UTF-8 (text only).
    valid: usize,
}

/// A complete reassembled message.
#[derive(Debug)]
pub struct Message {
    /// Text or binary.
    pub opcode: OpCode,
    /// Its payload.
    pub payload: BytesMut,
    /// Whether the payload is still compressed (permessage-deflate).
    pub compressed: bool,
}

impl Assembler {
    /// An assembler that refuses messages over `max` bytes.
    pub fn new(max: usize) -> Self {
        Assembler { max, partial: None }
    }

    /// Whether a fragmented message is in progress.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// For an uncompressed text message in progress, the end of what it holds that is not a
    /// whole UTF-8 sequence yet (at most 3 bytes); `None` when no such message is in progress.
    pub fn text_tail(&self) -> Option<&[u8]> {
        match &self.partial {
            Some(p) if p.opcode == OpCode::Text && !p.compressed => p.buf.get(p.valid..),
            _ => None,
        }
    }

    /// Feeds a data frame; returns a message when one is complete, or the close to send.
    pub fn push(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: &[u8],
    ) -> Result<Option<Message>, (u16, String)> {
        self.push_frame(fin, opcode, false, payload)
    }

    /// [`Assembler::push`] for a frame whose RSV1 says its message is compressed.
    pub fn push_frame(
        &mut self,
        fin: bool,
        opcode: OpCode,
        compressed: bool,
        payload: &[u8],
    ) -> Result<Option<Message>, (u16, String)> {
        let too_big = |n: usize, max: usize| {
            (
                1009,
                format!("message of {n}+ bytes exceeds the limit of {max}"),
            )
        };
        match opcode {
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err((
                        1002,
                        "a new message started before the fragmented one ended".into(),
                    ));
                }
                if payload.len() > self.max {
                    return Err(too_big(payload.len(), self.max));
                }
                let mut p = Box::new(Partial {
                    opcode,
                    compressed,
                    buf: BytesMut::from(payload),
                    valid: 0,
                });
                p.check_utf8()?;
                if fin {
                    return p.finish().map(Some);
                }
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
                if p.buf.len() + payload.len() > self.max {
                    return Err(too_big(p.buf.len() + payload.len(), self.max));
                }
                p.buf.extend_from_slice(payload);
                p.check_utf8()?;
                if !fin {
                    return Ok(None);
                }
                match self.partial.take() {
                    Some(p) => p.finish().map(Some),
                    None => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }
}

impl Partial {
    /// Validates the bytes added since the last call; an incomplete sequence at the end may still
    /// be completed by the next fragment.
    fn check_utf8(&mut self) -> Result<(), (u16, String)> {
        if self.opcode != OpCode::Text || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.buf[self.valid..]) {
            Ok(_) => self.valid = self.buf.len(),
            Err(e) if e.error_len().is_none() => self.valid += e.valid_up_to(),
            Err(_) => return Err((1007, "invalid UTF-8 in a text message".into())),
        }
        Ok(())
    }

    fn finish(self) -> Result<Message, (u16, String)> {
        if self.opcode == OpCode::Text && !self.compressed && self.valid != self.buf.len() {
            return Err((1007, "text message ends inside a UTF-8 sequence".into()));
        }
        Ok(Message {
            opcode: self.opcode,
            payload: self.buf,
            compressed: self.compressed,
        })
    }
}

/// The answer to a client's close frame (RFC 6455 §5.5, §5.5.1, §7.4): `Ok` with the code to
/// echo (none for an empty close), or the 1002/1007 to fail with when the frame is malformed.
fn close_reply(payload: &[u8]) -> Result<Option<u16>, (u16, String)> {
    match payload.len() {
        0 => Ok(None),
        1 => Err((1002, "close frame with a 1-byte payload".into())),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code_allowed(code) {
                Err((1002, format!("close code {code} may not be sent")))
            } else if simdutf8::basic::from_utf8(&payload[2..]).is_err() {
                Err((1007, "close reason is not UTF-8".into()))
            } else {
                Ok(Some(code))
            }
        }
    }
}

/// Why a connection's main loop ended.
enum End {
    /// The peer is gone (EOF, reset, write error): nothing more to send.
    Gone,
    /// The peer closed and our reply is queued: flush it, then drop the connection.
    PeerClosed,
    /// We close: send this code and reason, then wait briefly for the peer's close.
    Close(u16, String),
    /// The peer broke the protocol (or already sent its close): send this close and drop the
    /// connection at once (RFC 6455 §7.1.7, "fail the WebSocket connection").
    Fail(u16, String),
}

/// Messages and bytes counted during one wake-up, added to the shared counters once.
#[derive(Default)]
struct Counts {
    messages_in: u64,
    bytes_in: u64,
    messages_out: u64,
    bytes_out: u64,
}

/// What a channel connection holds.
struct Channel {
    membership: Membership,
    deliver_to_sender: bool,
}

/// One admitted echo or channel connection.
struct Conn<IO> {
    io: IO,
    /// An incomplete frame carried to the next read; empty (no allocation) between frames.
    carry: BytesMut,
    asm: Assembler,
    out: OutQueue,
    channel: Option<Channel>,
    /// permessage-deflate, when negotiated.
    compressing: Option<Compressing>,
    /// How much of an incomplete text frame's payload was already found to be valid UTF-8.
    partial_utf8: PartialUtf8,
    conn_id: u64,
    /// Largest frame accepted (the message limit lives in `asm`).
    max_frame: usize,
    /// Queued output above which reading stops, the timers and the send timeout.
    limits: Arc<Limits>,
    /// We sent a close and only wait for the peer's.
    closing: bool,
    /// Whether the peer sent anything since the timer last fired: a flag, not a clock read
    /// per message (the timer reads the clock when it fires).
    active: bool,
    counts: Counts,
    metrics: Arc<Metrics>,
}

/// Where the answers of one read go: small ones into the thread's batch, large ones written
/// directly together with it.
struct Sink<'a> {
    batch: &'a mut Vec<u8>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    /// Sends one frame: queued when output is already waiting (order matters), batched when
    /// small, written at once together with the batch when large.
    fn emit(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut Sink<'_>,
        opcode: OpCode,
        payload: &[u8],
    ) -> Result<(), End> {
        self.emit_frame(cx, sink, opcode, false, payload)
    }

    /// A data message, compressed first when permessage-deflate was agreed and it is not tiny.
    fn emit_message(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut Sink<'_>,
        opcode: OpCode,
        payload: &[u8],
    ) -> Result<(), End> {
        if self.compressing.is_none() || payload.len() < MIN_COMPRESS {
            return self.emit_frame(cx, sink, opcode, false, payload);
        }
        with_buffer(&DEFLATED, |packed| {
            if let Some(c) = self.compressing.as_mut() {
                c.compress(payload, packed);
            }
            self.emit_frame(cx, sink, opcode, true, packed)
        })
    }

    fn emit_frame(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut Sink<'_>,
        opcode: OpCode,
        compressed: bool,
        payload: &[u8],
    ) -> Result<(), End> {
        let mut header = [0u8; MAX_SERVER_HEADER];
        let n = write_server_header(&mut header, opcode, payload.len());
        if compressed {
            header[0] |= 0x40;
        }
        if !self.out.is_empty() {
            self.out.push(frame_bytes_rsv1(opcode, payload, compressed));
            return Ok(());
        }
        if payload.len() < LARGE_PAYLOAD {
            sink.batch.extend_from_slice(&header[..n]);
            sink.batch.extend_from_slice(payload);
            if sink.batch.len() >= READ_CHUNK {
                self.write_now(cx, &[&sink.batch[..]])?;
                sink.batch.clear();
            }
            return Ok(());
        }
        self.write_now(cx, &[&sink.batch[..], &header[..n], payload])?;
        sink.batch.clear();
        Ok(())
    }

    /// Writes `parts` in order (the queue is empty); what the socket does not take is queued.
    fn write_now(&mut self, cx: &mut Context<'_>, parts: &[&[u8]]) -> Result<(), End> {
        self.out
            .write_now(&mut self.io, cx, parts)
            .map_err(|()| End::Gone)
    }

    /// Writes shared broadcast frames with one call, without copying them; what the socket
    /// does not take is queued by reference.
    fn write_shared(&mut self, cx: &mut Context<'_>, frames: &mut [Bytes]) -> Result<(), End> {
        let mut first = 0;
        if self.out.is_empty() {
            while first < frames.len() {
                let mut slices = [IoSlice::new(&[]); FRAMES_PER_WRITE];
                let n = slices.len().min(frames.len() - first);
                for (slot, f) in slices.iter_mut().zip(&frames[first..first + n]) {
                    *slot = IoSlice::new(f);
                }
                let mut written =
                    match crate::out::poll_write_slices(&mut self.io, cx, &slices[..n]) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(End::Gone),
                        Poll::Ready(Ok(w)) => w,
                        Poll::Pending => break,
                    };
                while written > 0 {
                    let f = &mut frames[first];
                    if f.len() <= written {
                        written -= f.len();
                        first += 1;
                    } else {
                        f.advance(written);
                        written = 0;
                    }
                }
            }
        }
        for f in &mut frames[first..] {
            self.out.push(std::mem::take(f));
        }
        Ok(())
    }

    /// Parses and answers every complete frame at the start of `buf`; returns the bytes used.
    fn process(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut Sink<'_>,
        buf: &mut [u8],
    ) -> Result<usize, End> {
        let mut pos = 0;
        // A branch, not a function pointer: the parser stays inlined on the echo path.
        let deflate = self.compressing.is_some();
        loop {
            let rest = &buf[pos..];
            let parsed = if deflate {
                parse_client_frame_deflate(rest, self.max_frame)
            } else {
                parse_client_frame(rest, self.max_frame)
            };
            let h = match parsed {
                Parsed::Incomplete => return Ok(pos),
                Parsed::Invalid(code, why) => return Err(End::Fail(code, why.into())),
                Parsed::Header(h) => h,
            };
            if buf.len() - pos < h.frame_len() {
                if let Some(arrived) = buf.get(pos + h.header_len..) {
                    self.fail_fast_utf8(&h, arrived)?;
                }
                return Ok(pos);
            }
            let payload = &mut buf[pos + h.header_len..pos + h.frame_len()];
            if let Some(mask) = h.mask {
                fastwebsockets::unmask(payload, mask);
            }
            pos += h.frame_len();
            if self.partial_utf8.checked != 0 {
                self.partial_utf8 = PartialUtf8::default();
            }
            self.on_frame(cx, sink, h.fin, h.opcode, h.rsv1, payload)?;
        }
    }

    /// Checks the part of an incomplete text frame that has arrived, so invalid UTF-8 fails the
    /// connection at once rather than when the frame (maybe megabytes) is complete (RFC 6455
    /// §8.1 "fail fast"). Only what arrived since the last check is read: each byte once.
    fn fail_fast_utf8(
        &mut self,
        h: &wsgate_handshake::frame::Header,
        arrived: &[u8],
    ) -> Result<(), End> {
        if h.rsv1 {
            return Ok(());
        }
        let carried: &[u8] = match h.opcode {
            OpCode::Text => &[],
            OpCode::Continuation => match self.asm.text_tail() {
                Some(t) => t,
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
        let p = &mut self.partial_utf8;
        let start = p.checked;
        if arrived.len() <= start {
            return Ok(());
        }
        let mask = h.mask.unwrap_or([0; 4]);
        // At most 3 bytes of an unfinished sequence, then a chunk of unmasked payload.
        let mut chunk = [0u8; 1027];
        let mut held = if start == 0 {
            chunk[..carried.len().min(3)].copy_from_slice(&carried[..carried.len().min(3)]);
            carried.len().min(3)
        } else {
            chunk[..p.tail_len as usize].copy_from_slice(&p.tail[..p.tail_len as usize]);
            p.tail_len as usize
        };
        let mut at = start;
        while at < arrived.len() {
            let n = (arrived.len() - at).min(1024);
            for (i, b) in arrived[at..at + n].iter().enumerate() {
                chunk[held + i] = b ^ mask[(at + i) % 4];
            }
            at += n;
            let filled = held + n;
            held = match std::str::from_utf8(&chunk[..filled]) {
                Ok(_) => 0,
                Err(e) if e.error_len().is_none() => {
                    let rest = filled - e.valid_up_to();
                    chunk.copy_within(e.valid_up_to()..filled, 0);
                    rest
                }
                Err(_) => return Err(End::Fail(1007, "invalid UTF-8 in a text message".into())),
            };
        }
        p.checked = arrived.len();
        p.tail[..held].copy_from_slice(&chunk[..held]);
        p.tail_len = held as u8;
        Ok(())
    }

    fn on_frame(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut Sink<'_>,
        fin: bool,
        opcode: OpCode,
        compressed: bool,
        payload: &[u8],
    ) -> Result<(), End> {
        if self.closing {
            // Waiting for the peer's close: everything else is discarded.
            return match opcode {
                OpCode::Close => Err(End::Gone),
                _ => Ok(()),
            };
        }
        match opcode {
            OpCode::Ping => self.emit(cx, sink, OpCode::Pong, payload),
            OpCode::Pong => Ok(()),
            OpCode::Close => match close_reply(payload) {
                Ok(code) => {
                    let echoed = code.map(u16::to_be_bytes);
                    let body: &[u8] = match &echoed {
                        Some(c) => c,
                        None => &[],
                    };
                    self.emit(cx, sink, OpCode::Close, body)?;
                    Err(End::PeerClosed)
                }
                Err((code, reason)) => Err(End::Fail(code, reason)),
            },
            OpCode::Text | OpCode::Binary if fin && !self.asm.in_progress() => {
                // The common case: a whole message in one frame, answered from the read buffer.
                if payload.len() > self.asm.max {
                    return Err(End::Fail(
                        1009,
                        format!(
                            "message of {} bytes exceeds the limit of {}",
                            payload.len(),
                            self.asm.max
                        ),
                    ));
                }
                if compressed {
                    return self.deliver_compressed(cx, sink, opcode, payload);
                }
                if opcode == OpCode::Text && simdutf8::basic::from_utf8(payload).is_err() {
                    return Err(End::Fail(1007, "invalid UTF-8 in a text message".into()));
                }
                self.deliver(cx, sink, opcode, payload)
            }
            _ => match self.asm.push_frame(fin, opcode, compressed, payload) {
                Ok(Some(m)) if m.compressed => {
                    self.deliver_compressed(cx, sink, m.opcode, &m.payload)
                }
                Ok(Some(m)) => self.deliver(cx, sink, m.opcode, &m.payload),
                Ok(None) => Ok(()),
                Err((code, reason)) => Err(End::Fail(code, reason)),
            },
        }
    }

    /// A complete compressed message: inflated (bounded by the message limit), checked, then
    /// delivered like any other.
    fn deliver_compressed(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut Sink<'_>,
        opcode: OpCode,
        payload: &[u8],
    ) -> Result<(), End> {
        let max = self.asm.max;
        with_buffer(&INFLATED, |plain| {
            match self.compressing.as_mut() {
                Some(c) => c.inflate(payload, max, plain)?,
                None => return Err(End::Fail(1002, "RSV1 without permessage-deflate".into())),
            }
            if opcode == OpCode::Text && simdutf8::basic::from_utf8(plain).is_err() {
                return Err(End::Fail(1007, "invalid UTF-8 in a text message".into()));
            }
            self.deliver(cx, sink, opcode, plain)
        })
    }

    /// A complete message: echoed, or published to the room.
    fn deliver(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut Sink<'_>,
        opcode: OpCode,
        payload: &[u8],
    ) -> Result<(), End> {
        self.counts.messages_in += 1;
        self.counts.bytes_in += payload.len() as u64;
        match &self.channel {
            None => {
                self.emit_message(cx, sink, opcode, payload)?;
                self.counts.messages_out += 1;
                self.counts.bytes_out += payload.len() as u64;
            }
            // Appended to the room with the rest of this read's messages (see poll_read_with).
            Some(ch) => ch.membership.stage(opcode, payload),
        }
        Ok(())
    }

    /// Reads once into this thread's buffer and answers what arrived.
    fn poll_read_once(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        SCRATCH.with(|scratch| {
            // Borrowed only inside this synchronous call; nothing re-enters it.
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return self.poll_read_with(cx, &mut vec![0; READ_CHUNK], &mut Vec::new());
            };
            let Scratch { read, batch } = &mut *scratch;
            batch.clear();
            self.poll_read_with(cx, read, batch)
        })
    }

    fn poll_read_with(
        &mut self,
        cx: &mut Context<'_>,
        read_buf: &mut [u8],
        batch: &mut Vec<u8>,
    ) -> Poll<Result<(), End>> {
        let mut rb = ReadBuf::new(read_buf);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Err(End::Gone)),
            Poll::Ready(Ok(())) => {}
        }
        let n = rb.filled().len();
        if n == 0 {
            return Poll::Ready(Err(End::Gone));
        }
        self.active = true;
        let mut sink = Sink { batch };
        let result = if self.carry.is_empty() {
            let data = &mut read_buf[..n];
            self.process(cx, &mut sink, data).map(|used| {
                if used < n {
                    self.keep(&data[used..]);
                }
            })
        } else {
            let mut carry = std::mem::take(&mut self.carry);
            carry.extend_from_slice(&read_buf[..n]);
            let r = self.process(cx, &mut sink, &mut carry);
            if let Ok(used) = r {
                carry.advance(used);
                if !carry.is_empty() {
                    self.carry = carry;
                }
            }
            r.map(|_| ())
        };
        // What this read published goes to the room as one entry, even if the read then failed.
        if let Some(ch) = &self.channel {
            ch.membership.flush();
        }
        // Answers produced before an error (a pong, the close reply) still go out first.
        if !sink.batch.is_empty() {
            let batch = std::mem::take(sink.batch);
            let flushed = self.write_now(cx, &[&batch[..]]);
            *sink.batch = batch;
            sink.batch.clear();
            if let Err(e) = flushed {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(result)
    }

    /// Keeps the start of an incomplete frame, with room for all of it when its size is known.
    fn keep(&mut self, tail: &[u8]) {
        let parse = if self.compressing.is_some() {
            parse_client_frame_deflate
        } else {
            parse_client_frame
        };
        let need = match parse(tail, self.max_frame) {
            Parsed::Header(h) => h.frame_len(),
            _ => tail.len(),
        };
        let mut carry = BytesMut::with_capacity(need.max(tail.len()));
        carry.extend_from_slice(tail);
        self.carry = carry;
    }

    /// Flushes, takes broadcasts and reads until there is nothing to do; `Ready` ends the loop.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let r = self.poll_io_inner(cx);
        self.publish_counts();
        r
    }

    fn poll_io_inner(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        for _ in 0..READS_PER_POLL {
            if !self.out.is_empty() {
                if let Poll::Ready(Err(())) = self.out.poll_flush(&mut self.io, cx) {
                    return Poll::Ready(End::Gone);
                }
                if self.out.bytes > self.limits.max_output {
                    // The socket's write readiness wakes us; no reading until then.
                    return Poll::Pending;
                }
            }
            if !self.closing && self.channel.is_some() {
                if let Poll::Ready(end) = self.poll_inbox(cx) {
                    return Poll::Ready(end);
                }
            }
            match self.poll_read_once(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(end)) => return Poll::Ready(end),
                Poll::Ready(Ok(())) => {}
            }
        }
        // Busy: let other connections run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes what was published in the room since this member last took: everything pending
    /// goes out together, up to [`FRAMES_PER_WRITE`] frames per call.
    fn poll_inbox(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        TAKEN.with(|taken| {
            let mut spare = Vec::new();
            let mut taken = taken.try_borrow_mut();
            let frames = match &mut taken {
                Ok(v) => &mut **v,
                Err(_) => &mut spare,
            };
            let r = self.poll_inbox_with(cx, frames);
            frames.clear();
            r
        })
    }

    fn poll_inbox_with(&mut self, cx: &mut Context<'_>, frames: &mut Vec<Bytes>) -> Poll<End> {
        loop {
            if self.out.bytes > self.limits.max_output {
                // The socket's write readiness wakes us; the room keeps the rest meanwhile.
                return Poll::Pending;
            }
            let Some(ch) = self.channel.as_ref() else {
                return Poll::Pending;
            };
            frames.clear();
            let caught_up =
                match ch
                    .membership
                    .take(cx.waker(), frames, FRAMES_PER_WRITE, ch.deliver_to_sender)
                {
                    Take::TooSlow => {
                        return Poll::Ready(End::Close(
                            1013,
                            "too slow: messages for this connection were dropped".into(),
                        ))
                    }
                    Take::Frames {
                        messages,
                        bytes,
                        caught_up,
                    } => {
                        self.counts.messages_out += messages;
                        self.counts.bytes_out += bytes;
                        caught_up
                    }
                };
            if let Err(end) = self.write_shared(cx, frames) {
                return Poll::Ready(end);
            }
            if caught_up {
                // Registered with the room: the next publish wakes this task.
                return Poll::Pending;
            }
        }
    }

    fn publish_counts(&mut self) {
        let c = std::mem::take(&mut self.counts);
        if c.messages_in > 0 {
            self.metrics.messages_in.inc_by(c.messages_in);
            self.metrics.bytes_in.inc_by(c.bytes_in);
        }
        if c.messages_out > 0 {
            self.metrics.messages_out.inc_by(c.messages_out);
            self.metrics.bytes_out.inc_by(c.bytes_out);
        }
    }

    /// Queues a frame outside a read (pings, our close) and flushes what it can.
    fn send_control(&mut self, cx: &mut Context<'_>, opcode: OpCode, payload: &[u8]) -> bool {
        self.out.push(frame_bytes(opcode, payload));
        !matches!(self.out.poll_flush(&mut self.io, cx), Poll::Ready(Err(())))
    }
}

/// What an admitted echo or channel connection runs with. Boxed on the way in, so the task that
/// waits for the upgrade and the connection itself do not both carry a copy while idle.
pub struct Params {
    /// Echo or channel.
    pub local: Local,
    /// permessage-deflate, when the handshake agreed it.
    pub deflate: Option<Agreement>,
    /// Identifies the connection within its room.
    pub conn_id: u64,
    /// Size limits and timers, shared by every connection (a pointer, not a copy per
    /// connection: idle connections must stay small).
    pub limits: Arc<Limits>,
    /// Where messages and bytes are counted.
    pub metrics: Arc<Metrics>,
    /// Says when the server shuts down, or an operator closes this connection.
    pub shutdown: watch::Receiver<crate::out::Stop>,
}

/// Runs an admitted echo or channel connection until it closes or the server shuts down.
pub async fn run_local<IO>(io: IO, params: Box<Params>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let Params {
        local,
        deflate,
        conn_id,
        limits,
        metrics,
        mut shutdown,
    } = *params;
    let channel = match local {
        Local::Echo => None,
        Local::Channel {
            hub,
            room,
            deliver_to_sender,
        } => Some(Channel {
            // A member shares the room's compressed frames when it agreed to what they are:
            // each message on its own, with a 15-bit window. Others get the plain frames.
            membership: hub.join_with(
                room,
                conn_id,
                deflate.is_some_and(|a| a.server_no_context_takeover && a.compressor_bits() == 15),
            ),
            deliver_to_sender,
        }),
    };
    let now = Instant::now();
    let mut conn = Conn {
        io,
        carry: BytesMut::new(),
        asm: Assembler::new(limits.max_message),
        out: OutQueue::default(),
        channel,
        partial_utf8: PartialUtf8::default(),
        compressing: deflate.map(|agreement| Compressing {
            agreement,
            kept: None,
        }),
        conn_id,
        max_frame: limits.max_frame,
        limits,
        closing: false,
        active: false,
        counts: Counts::default(),
        metrics,
    };
    // In a block of its own, so the timer and the shutdown wait are gone while closing.
    let end = {
        let ping_every = |l: &Limits| l.ping_interval.max(Duration::from_millis(10));
        let idle = |l: &Limits| l.idle_timeout.max(Duration::from_millis(10));
        let mut next_ping = now + ping_every(&conn.limits);
        // One timer for pings, the idle timeout and the send timeout, moved only when it fires
        // (not per message).
        let mut last_active = now;
        // While output waits: when it was last seen to move, and how far it had got then.
        let mut stall: Option<(Instant, u64)> = None;
        let timer = sleep_until(next_ping.min(now + idle(&conn.limits)));
        // The timer is polled to register (at first, and after each reset) and then only once it
        // has fired: polling it on every wake-up re-registered the same waker (~4 % of a small
        // echo's instructions). Like the shutdown wait, this relies on the connection being
        // polled by one task, whose waker does not change.
        let mut armed = false;
        // The shutdown wait registers once; later wake-ups only look at the channel's version
        // (one atomic load) instead of polling it.
        let probe = shutdown.clone();
        let mut registered = false;
        let stop = crate::out::stop_of(&mut shutdown, conn_id);
        tokio::pin!(timer, stop);

        poll_fn(|cx| {
            if !registered || !matches!(probe.has_changed(), Ok(false)) {
                registered = true;
                // Unconstrained: with the task's budget spent, a poll would return without
                // registering, and this wait is not polled again.
                if let Poll::Ready(why) = Pin::new(&mut unconstrained(stop.as_mut())).poll(cx) {
                    let (code, reason) = why.close();
                    return Poll::Ready(End::Close(code, reason.into()));
                }
            }
            if let Poll::Ready(end) = conn.poll_io(cx) {
                return Poll::Ready(end);
            }
            if armed && !timer.is_elapsed() {
                return Poll::Pending;
            }
            armed = true;
            // Unconstrained, for the same reason as the shutdown wait.
            while Pin::new(&mut unconstrained(timer.as_mut()))
                .poll(cx)
                .is_ready()
            {
                let now = Instant::now();
                let send_timeout = conn.limits.send_timeout;
                let (ping_every, idle) = (ping_every(&conn.limits), idle(&conn.limits));
                if std::mem::take(&mut conn.active) {
                    // Activity since the last firing counts from now: the idle close comes at
                    // most one timer period late, never early.
                    last_active = now;
                }
                // A peer that stopped reading: its output has not moved since the last look.
                stall = match stall {
                    _ if conn.out.is_empty() => None,
                    Some((since, flushed)) if flushed == conn.out.flushed => {
                        if now >= since + send_timeout {
                            return Poll::Ready(End::Close(
                                1013,
                                format!(
                                    "too slow: the peer read nothing of {} queued bytes for {:?}",
                                    conn.out.bytes, send_timeout
                                ),
                            ));
                        }
                        Some((since, flushed))
                    }
                    _ => Some((now, conn.out.flushed)),
                };
                if now >= last_active + idle {
                    return Poll::Ready(End::Close(1000, "idle timeout".into()));
                }
                if now >= next_ping {
                    if !conn.send_control(cx, OpCode::Ping, &[]) {
                        return Poll::Ready(End::Gone);
                    }
                    next_ping = now + ping_every;
                }
                let mut wake = next_ping.min(last_active + idle);
                if let Some((since, _)) = stall {
                    wake = wake.min(since + send_timeout);
                }
                timer.as_mut().reset(wake);
            }
            Poll::Pending
        })
        .await
    };

    // Leave the room first, so publishers stop queueing for a connection that is closing.
    conn.channel = None;
    // The closing futures are boxed: they run once, and inline they would enlarge every idle
    // connection's task by their timers.
    match end {
        End::Gone => {}
        End::PeerClosed => {
            let flush = poll_fn(|cx| conn.out.poll_flush(&mut conn.io, cx));
            let _ = Box::pin(timeout(CLOSE_GRACE, flush)).await;
        }
        End::Fail(code, reason) => Box::pin(conn.close(code, &reason, false)).await,
        End::Close(code, reason) => {
            if code == 1013 {
                conn.metrics.slow_closes.inc();
                tracing::info!(conn = conn.conn_id, %reason, "closing a connection whose peer fell behind (1013)");
            }
            Box::pin(conn.close(code, &reason, true)).await
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    /// Sends our close frame; with `wait_for_peer`, then waits (within [`CLOSE_GRACE`]) for the
    /// peer's close or its going away, discarding anything else it sends.
    async fn close(&mut self, code: u16, reason: &str, wait_for_peer: bool) {
        self.closing = true;
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(truncate(reason).as_bytes());
        let mut sent = false;
        let _ = timeout(
            CLOSE_GRACE,
            poll_fn(|cx| {
                if !sent {
                    sent = true;
                    if !self.send_control(cx, OpCode::Close, &payload) {
                        return Poll::Ready(());
                    }
                }
                if wait_for_peer {
                    self.poll_io(cx).map(|_| ())
                } else {
                    self.out.poll_flush(&mut self.io, cx).map(|_| ())
                }
            }),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_reassemble_and_respect_the_limit() {
        let mut a = Assembler::new(10);
        assert!(a.push(false, OpCode::Binary, b"abcd").unwrap().is_none());
        let m = a.push(true, OpCode::Continuation, b"efg").unwrap().unwrap();
        assert_eq!(&m.payload[..], b"abcdefg");
        assert!(a.push(false, OpCode::Binary, b"abcdef").unwrap().is_none());
        assert_eq!(
            a.push(true, OpCode::Continuation, b"ghijk").unwrap_err().0,
            1009
        );
        let mut a = Assembler::new(10);
        assert_eq!(
            a.push(true, OpCode::Text, b"0123456789a").unwrap_err().0,
            1009
        );
    }

    #[test]
    fn utf8_split_across_fragments_is_fine_and_invalid_fails_fast() {
        let euro = "€".as_bytes(); // 3 bytes
        let mut a = Assembler::new(100);
        assert!(a.push(false, OpCode::Text, &euro[..1]).unwrap().is_none());
        assert!(a
            .push(false, OpCode::Continuation, &euro[1..2])
            .unwrap()
            .is_none());
        let m = a
            .push(true, OpCode::Continuation, &euro[2..])
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], euro);
        let mut a = Assembler::new(100);
        assert_eq!(a.push(false, OpCode::Text, b"ok\xff").unwrap_err().0, 1007);
        let mut a = Assembler::new(100);
        assert!(a.push(false, OpCode::Text, &euro[..2]).unwrap().is_none());
        assert_eq!(a.push(true, OpCode::Continuation, b"").unwrap_err().0, 1007);
    }

    #[test]
    fn continuation_rules() {
        let mut a = Assembler::new(100);
        assert_eq!(
            a.push(true, OpCode::Continuation, b"x").unwrap_err().0,
            1002
        );
        assert!(a.push(false, OpCode::Binary, b"x").unwrap().is_none());
        assert_eq!(a.push(true, OpCode::Binary, b"y").unwrap_err().0, 1002);
    }

    #[test]
    fn close_replies() {
        assert_eq!(close_reply(b""), Ok(None));
        assert_eq!(close_reply(&[0x03, 0xE8]), Ok(Some(1000)));
        assert_eq!(close_reply(&[0x03]).unwrap_err().0, 1002);
        assert_eq!(close_reply(&[0x03, 0xED]).unwrap_err().0, 1002); // 1005
        assert_eq!(close_reply(&[0x03, 0xE8, 0xFF]).unwrap_err().0, 1007);
    }

    #[test]
    fn reasons_are_cut_to_123_bytes() {
        let long = "é".repeat(100);
        let t = truncate(&long);
        assert!(t.len() <= 123 && t.is_char_boundary(t.len()));
    }

    /// The engine end to end over an in-memory pipe: echo, ping, fragments, and the close
    /// handshake, without sockets.
    #[tokio::test]
    async fn echo_over_a_pipe() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(1 << 20);
        let (_tx, rx) = watch::channel(crate::out::Stop::default());
        let limits = Limits {
            max_message: 1 << 20,
            max_frame: 1 << 20,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_output: 256 * 1024,
            send_timeout: Duration::from_secs(30),
        };
        let metrics = Arc::new(Metrics::default());
        let params = Box::new(Params {
            deflate: None,
            local: Local::Echo,
            conn_id: 1,
            limits: Arc::new(limits),
            metrics,
            shutdown: rx,
        });
        let task = tokio::spawn(run_local(server, params));
        let (mut r, mut w) = tokio::io::split(client);
        let masked = |fin_op: u8, payload: &[u8]| {
            let mut f = vec![fin_op];
            if payload.len() < 126 {
                f.push(0x80 | payload.len() as u8);
            } else {
                f.push(0x80 | 126);
                f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            let mask = [7, 1, 200, 33];
            f.extend_from_slice(&mask);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            f
        };
        let big = vec![b'x'; 5000];
        let mut input = masked(0x81, b"hello");
        input.extend(masked(0x89, b"p"));
        input.extend(masked(0x02, b"ab"));
        input.extend(masked(0x80, b"cd"));
        input.extend(masked(0x82, &big));
        input.extend(masked(0x88, &[0x03, 0xE8]));
        // Byte by byte: every frame arrives split across reads.
        for b in &input {
            w.write_all(&[*b]).await.unwrap();
        }
        let mut expected = b"\x81\x05hello\x8a\x01p\x82\x04abcd\x82\x7e\x13\x88".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"\x88\x02\x03\xe8");
        let mut got = vec![0; expected.len()];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        task.await.unwrap();
    }
}
