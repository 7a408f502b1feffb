//! The `proxy` route's relay: frames pass through byte for byte.
//!
//! Why verbatim: a gateway in front of a WebSocket backend should cost about what a TCP proxy
//! costs. The relay parses every frame header (to enforce the frame limit and the protocol's
//! rules, and to count messages) but never copies, unmasks or re-masks a payload: what one read
//! brings is written on to the other side from the worker's buffer, with one write. Frames from
//! the client keep the client's masking key (chosen by the client, so as unpredictable to the
//! upstream as one of ours would be, RFC 6455 §10.3); frames from the upstream are unmasked, as a
//! server's must be. Like the echo engine: one task, no buffer while idle, output queued only
//! while a side lags, and reading from a side stops while the other is that far behind.
//!
//! The relay holds both sides to the rules the endpoints keep: text is valid UTF-8 (checked on
//! an unmasked copy in a small stack buffer, as it passes, even across fragments and reads) and
//! close frames carry a valid code and a UTF-8 reason; a frame that breaks them is held back when
//! it began in the same read. It pings a quiet side, closes a side silent for the idle timeout,
//! and closes a side that stops reading for the send timeout.

use crate::metrics::Metrics;
use crate::out::{frame_bytes, truncate, OutQueue, CLOSE_GRACE};
use crate::stream::Stream;
use bytes::{BufMut, Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant, Sleep};
use wsgate_handshake::frame::{
    client_frame, close_code_allowed, parse_client_frame, parse_client_frame_deflate,
    parse_server_frame, parse_server_frame_deflate, OpCode, Parsed,
};

const READ_CHUNK: usize = 64 * 1024;
/// Reads per wake-up before letting other connections run.
const READS_PER_POLL: usize = 16;
/// The longest frame header: two bytes, a 64-bit length and a masking key.
const MAX_HEADER: usize = 14;

thread_local! {
    /// The read buffer of this worker thread, borrowed for one read and its forwarding.
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Incremental UTF-8 validation of a text message that arrives in pieces: only an incomplete
/// character (at most three bytes) is carried between pieces.
#[derive(Default)]
struct Utf8 {
    pending: [u8; 4],
    len: usize,
}

impl Utf8 {
    /// Checks the next bytes of the message.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), ()> {
        // Complete a character that the previous piece cut.
        while self.len > 0 {
            let Some((&b, rest)) = data.split_first() else {
                return Ok(());
            };
            self.pending[self.len] = b;
            self.len += 1;
            data = rest;
            match std::str::from_utf8(&self.pending[..self.len]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_some() || self.len == 4 => return Err(()),
                Err(_) => {}
            }
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(()),
            Err(e) => {
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.len = tail.len();
                Ok(())
            }
        }
    }

    /// The message ended: a character still incomplete is invalid.
    fn finish(&mut self) -> Result<(), ()> {
        let complete = self.len == 0;
        self.len = 0;
        if complete {
            Ok(())
        } else {
            Err(())
        }
    }
}

/// What the payload of the frame passing now is checked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Binary data, pings and pongs: nothing.
    Nothing,
    /// Part of a text message; `fin` ends the message.
    Text { fin: bool },
    /// A close frame: its payload is gathered and checked when complete.
    Close,
}

/// Frame boundaries in one direction's byte stream.
struct Frames {
    /// Client to upstream (frames must be masked) or upstream to client (must not be).
    from_client: bool,
    /// Both ends agreed permessage-deflate: RSV1 marks a compressed message, which passes as
    /// it is (its text is checked by the endpoint that inflates it).
    deflate: bool,
    max_frame: usize,
    /// Payload bytes of the current frame still to pass.
    left: u64,
    /// Header bytes held back until the header is complete (and found valid).
    head: [u8; MAX_HEADER],
    head_len: usize,
    /// Inside a fragmented data message.
    fragmented: bool,
    /// A close frame has started to pass.
    closed: bool,
    /// What the current frame's payload is checked for, its masking key and how much of it
    /// has passed (the mask's phase).
    check: Check,
    mask: Option<[u8; 4]>,
    seen: u64,
    /// The data message in progress is text.
    text: bool,
    /// The data message in progress is compressed (RSV1 on its first frame).
    compressed: bool,
    utf8: Utf8,
    /// A close frame's payload (at most 125 bytes), unmasked.
    close: [u8; 125],
    close_len: usize,
}

/// What one read's bytes come to.
#[derive(Debug, PartialEq)]
struct Scan {
    /// Header bytes held back from earlier reads, to write before this read's.
    prefix: [u8; MAX_HEADER],
    prefix_len: usize,
    /// How many bytes of this read to write on.
    forward: usize,
    /// Data messages completed, and payload bytes of data frames that started here.
    messages: u64,
    bytes: u64,
    /// A protocol violation: the close code and why. Nothing from the bad header on passes.
    error: Option<(u16, &'static str)>,
}

impl Frames {
    #[cfg(test)]
    fn new(from_client: bool, max_frame: usize) -> Self {
        Frames::with_deflate(from_client, max_frame, false)
    }

    fn with_deflate(from_client: bool, max_frame: usize, deflate: bool) -> Self {
        Frames {
            from_client,
            deflate,
            max_frame,
            left: 0,
            head: [0; MAX_HEADER],
            head_len: 0,
            fragmented: false,
            closed: false,
            check: Check::Nothing,
            mask: None,
            seen: 0,
            text: false,
            compressed: false,
            utf8: Utf8::default(),
            close: [0; 125],
            close_len: 0,
        }
    }

    /// Checks the next payload bytes of the current frame (unmasked on a copy: what passes on
    /// is the bytes as they came).
    fn check_payload(&mut self, masked: &[u8]) -> Result<(), (u16, &'static str)> {
        if self.check == Check::Nothing {
            self.seen += masked.len() as u64;
            return Ok(());
        }
        let mut plain = [0u8; 1024];
        for piece in masked.chunks(plain.len()) {
            let plain = &mut plain[..piece.len()];
            plain.copy_from_slice(piece);
            if let Some(key) = self.mask {
                for (i, b) in plain.iter_mut().enumerate() {
                    *b ^= key[(self.seen as usize + i) % 4];
                }
            }
            self.seen += piece.len() as u64;
            match self.check {
                Check::Text { .. } => self
                    .utf8
                    .feed(plain)
                    .map_err(|()| (1007, "invalid UTF-8 in a text message"))?,
                Check::Close => {
                    let end = (self.close_len + plain.len()).min(self.close.len());
                    let n = end - self.close_len;
                    self.close[self.close_len..end].copy_from_slice(&plain[..n]);
                    self.close_len = end;
                }
                Check::Nothing => {}
            }
        }
        Ok(())
    }

    /// The current frame has passed whole: the checks that need all of it.
    fn end_frame(&mut self) -> Result<(), (u16, &'static str)> {
        match self.check {
            Check::Text { fin: true } => self
                .utf8
                .finish()
                .map_err(|()| (1007, "invalid UTF-8 in a text message")),
            Check::Close => match self.close_len {
                0 => Ok(()),
                1 => Err((1002, "a close frame with a 1-byte payload")),
                _ => {
                    let code = u16::from_be_bytes([self.close[0], self.close[1]]);
                    if !close_code_allowed(code) {
                        Err((1002, "a close code that may not be sent"))
                    } else if simdutf8::basic::from_utf8(&self.close[2..self.close_len]).is_err() {
                        Err((1007, "a close reason that is not UTF-8"))
                    } else {
                        Ok(())
                    }
                }
            },
            _ => Ok(()),
        }
    }

    /// Between frames, with nothing held back: a frame of our own may be sent this way.
    fn at_boundary(&self) -> bool {
        self.left == 0 && self.head_len == 0
    }

    /// Walks the frames in `chunk`, the next bytes of this direction.
    fn scan(&mut self, chunk: &[u8]) -> Scan {
        let mut out = Scan {
            prefix: [0; MAX_HEADER],
            prefix_len: 0,
            forward: 0,
            messages: 0,
            bytes: 0,
            error: None,
        };
        let mut pos = 0;
        // Where the frame passing now began in this chunk (`None`: in an earlier read), and
        // whether its first bytes are the held-back prefix.
        let mut start: Option<usize> = None;
        let mut uses_prefix = false;
        loop {
            if self.left > 0 {
                let k = self.left.min((chunk.len() - pos) as u64) as usize;
                let checked = self.check_payload(&chunk[pos..pos + k]);
                let checked = checked.and_then(|()| {
                    if self.left == k as u64 {
                        self.end_frame()
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = checked {
                    self.reject(&mut out, start, uses_prefix, pos, e);
                    break;
                }
                self.left -= k as u64;
                pos += k;
                out.forward = pos;
                if self.left > 0 {
                    break;
                }
            }
            if pos == chunk.len() {
                break;
            }
            let held = self.head_len;
            let take = (MAX_HEADER - held).min(chunk.len() - pos);
            self.head[held..held + take].copy_from_slice(&chunk[pos..pos + take]);
            let head = &self.head[..held + take];
            let parsed = match (self.from_client, self.deflate) {
                (true, false) => parse_client_frame(head, self.max_frame),
                (true, true) => parse_client_frame_deflate(head, self.max_frame),
                (false, false) => parse_server_frame(head, self.max_frame),
                (false, true) => parse_server_frame_deflate(head, self.max_frame),
            };
            let h = match parsed {
                Parsed::Incomplete => {
                    // Fewer than MAX_HEADER bytes were there: all of them are header.
                    self.head_len = held + take;
                    break;
                }
                Parsed::Invalid(code, why) => {
                    self.head_len = 0;
                    out.error = Some((code, why));
                    break;
                }
                Parsed::Header(h) => h,
            };
            let violation = match h.opcode {
                OpCode::Continuation if !self.fragmented => {
                    Some("a continuation frame without a message to continue")
                }
                OpCode::Text | OpCode::Binary if self.fragmented => {
                    Some("a new message inside a fragmented one")
                }
                _ => None,
            };
            if let Some(why) = violation {
                self.head_len = 0;
                out.error = Some((1002, why));
                break;
            }
            if held > 0 {
                out.prefix[..held].copy_from_slice(&self.head[..held]);
                out.prefix_len = held;
            }
            uses_prefix = held > 0;
            start = Some(pos);
            self.head_len = 0;
            pos += h.header_len - held;
            out.forward = pos;
            self.left = h.payload_len as u64;
            self.mask = h.mask;
            self.seen = 0;
            self.check = match h.opcode {
                OpCode::Close => {
                    self.close_len = 0;
                    Check::Close
                }
                OpCode::Ping | OpCode::Pong => Check::Nothing,
                OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                    if h.opcode != OpCode::Continuation {
                        self.text = h.opcode == OpCode::Text;
                        self.compressed = h.rsv1;
                    }
                    if self.text && !self.compressed {
                        Check::Text { fin: h.fin }
                    } else {
                        Check::Nothing
                    }
                }
            };
            match h.opcode {
                OpCode::Close => self.closed = true,
                OpCode::Ping | OpCode::Pong => {}
                _ => {
                    self.fragmented = !h.fin;
                    out.bytes += h.payload_len as u64;
                    if h.fin {
                        out.messages += 1;
                    }
                }
            }
            if self.left == 0 {
                if let Err(e) = self.end_frame() {
                    self.reject(&mut out, start, uses_prefix, pos, e);
                    break;
                }
            }
        }
        out
    }

    /// A frame failed a payload check: nothing of it passes if it began in this read (the
    /// other side stays between frames and can be told with a close frame); otherwise what
    /// passed before the bad bytes stays passed.
    fn reject(
        &mut self,
        out: &mut Scan,
        start: Option<usize>,
        uses_prefix: bool,
        pos: usize,
        error: (u16, &'static str),
    ) {
        match start {
            Some(at) => {
                out.forward = at;
                if uses_prefix {
                    out.prefix_len = 0;
                }
                self.left = 0;
            }
            None => out.forward = pos,
        }
        if self.check == Check::Close {
            self.closed = false;
        }
        out.error = Some(error);
    }
}

/// How the relaying ended.
enum Ending {
    /// Both close frames passed, or the grace after the first ran out.
    Closed,
    /// The server is shutting down, or an operator closed the connection.
    Stopped(crate::out::Stopping),
    /// A side's connection ended (EOF, reset) without the close handshake.
    Gone { client: bool },
    /// A side broke the protocol: the close code and why.
    Broke {
        client: bool,
        code: u16,
        why: &'static str,
    },
    /// A side sent nothing, not even a pong to our pings, for the idle timeout.
    Idle { client: bool },
    /// A side read nothing of what waited for it for the send timeout.
    Stalled { client: bool },
}

/// The relay's limits and timers, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct RelayLimits {
    /// Largest client frame.
    pub max_frame: usize,
    /// Output queued toward a side above which the other side is no longer read.
    pub max_output: usize,
    /// A side quiet for this long is pinged.
    pub ping_interval: Duration,
    /// A side silent for this long is closed.
    pub idle_timeout: Duration,
    /// Queued output that makes no progress for this long closes that side.
    pub send_timeout: Duration,
}

/// The two connections and their directions' state.
struct Relay {
    client: Stream,
    upstream: Stream,
    /// Client to upstream.
    up: Frames,
    /// Upstream to client.
    down: Frames,
    to_upstream: OutQueue,
    to_client: OutQueue,
    metrics: Arc<Metrics>,
    max_output: usize,
    /// Bytes arrived from the client / the upstream since the timer last looked (flags, not a
    /// clock read per read).
    client_active: bool,
    upstream_active: bool,
}

/// One direction's part of a `Relay`, borrowed for one step.
struct Pass<'a> {
    from: &'a mut Stream,
    to: &'a mut Stream,
    frames: &'a mut Frames,
    queue: &'a mut OutQueue,
    max_output: usize,
    active: &'a mut bool,
}

/// What one read in one direction did.
enum Step {
    /// Nothing to read now (or the other side is too far behind).
    Idle,
    /// Bytes passed.
    Moved,
    End(Ending),
}

impl Pass<'_> {
    fn step(&mut self, cx: &mut Context<'_>, metrics: &Metrics) -> Step {
        if self.queue.bytes > self.max_output {
            // The destination's write readiness wakes us; no reading until then.
            return Step::Idle;
        }
        BUF.with(|buf| match buf.try_borrow_mut() {
            Ok(mut buf) => self.step_with(cx, metrics, &mut buf),
            // Borrowed only inside this synchronous call; this never happens.
            Err(_) => self.step_with(cx, metrics, &mut vec![0; READ_CHUNK]),
        })
    }

    fn step_with(&mut self, cx: &mut Context<'_>, metrics: &Metrics, buf: &mut [u8]) -> Step {
        let client = self.frames.from_client;
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.from).poll_read(cx, &mut rb) {
            Poll::Pending => return Step::Idle,
            Poll::Ready(Err(_)) => return Step::End(Ending::Gone { client }),
            Poll::Ready(Ok(())) => {}
        }
        let data = rb.filled();
        if data.is_empty() {
            return Step::End(Ending::Gone { client });
        }
        *self.active = true;
        let scan = self.frames.scan(data);
        if scan.messages > 0 || scan.bytes > 0 {
            let (m, b) = if client {
                (&metrics.messages_in, &metrics.bytes_in)
            } else {
                (&metrics.messages_out, &metrics.bytes_out)
            };
            m.inc_by(scan.messages);
            b.inc_by(scan.bytes);
        }
        let parts = [&scan.prefix[..scan.prefix_len], &data[..scan.forward]];
        let sent = if self.queue.is_empty() {
            self.queue.write_now(&mut *self.to, cx, &parts)
        } else {
            // Behind what is already waiting: order matters.
            let mut rest = BytesMut::with_capacity(scan.prefix_len + scan.forward);
            rest.put_slice(parts[0]);
            rest.put_slice(parts[1]);
            self.queue.push(rest.freeze());
            Ok(())
        };
        if sent.is_err() {
            return Step::End(Ending::Gone { client: !client });
        }
        match scan.error {
            Some((code, why)) => Step::End(Ending::Broke { client, code, why }),
            None => Step::Moved,
        }
    }
}

impl Relay {
    /// Flushes both ways; `Some` when a side is gone.
    fn flush(&mut self, cx: &mut Context<'_>) -> Option<Ending> {
        if !self.to_upstream.is_empty()
            && matches!(
                self.to_upstream.poll_flush(&mut self.upstream, cx),
                Poll::Ready(Err(()))
            )
        {
            return Some(Ending::Gone { client: false });
        }
        if !self.to_client.is_empty()
            && matches!(
                self.to_client.poll_flush(&mut self.client, cx),
                Poll::Ready(Err(()))
            )
        {
            return Some(Ending::Gone { client: true });
        }
        None
    }

    /// Relays until something ends it; `Ready` ends the loop.
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Ending> {
        for _ in 0..READS_PER_POLL {
            if let Some(end) = self.flush(cx) {
                return Poll::Ready(end);
            }
            let Relay {
                client,
                upstream,
                up,
                down,
                to_upstream,
                to_client,
                metrics,
                max_output,
                client_active,
                upstream_active,
            } = self;
            let mut moved = false;
            for up_way in [true, false] {
                let mut pass = if up_way {
                    Pass {
                        from: &mut *client,
                        to: &mut *upstream,
                        frames: &mut *up,
                        queue: &mut *to_upstream,
                        max_output: *max_output,
                        active: &mut *client_active,
                    }
                } else {
                    Pass {
                        from: &mut *upstream,
                        to: &mut *client,
                        frames: &mut *down,
                        queue: &mut *to_client,
                        max_output: *max_output,
                        active: &mut *upstream_active,
                    }
                };
                match pass.step(cx, metrics) {
                    Step::Idle => {}
                    Step::Moved => moved = true,
                    Step::End(e) => return Poll::Ready(e),
                }
            }
            let done = |f: &Frames| f.closed && f.left == 0;
            if done(up) && done(down) && to_upstream.is_empty() && to_client.is_empty() {
                return Poll::Ready(Ending::Closed);
            }
            if !moved {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Queues a close frame toward the client or the upstream, if that way is between frames
    /// and has not carried a close yet (otherwise the connection is just dropped).
    fn send_close(&mut self, to_client: bool, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(truncate(reason).as_bytes());
        self.send_control(to_client, OpCode::Close, &payload);
    }

    /// Queues a control frame of ours toward one side when that way is between frames (never
    /// inside one passing through) and has not carried a close; false when it could not.
    fn send_control(&mut self, to_client: bool, opcode: OpCode, payload: &[u8]) -> bool {
        let (frames, queue) = if to_client {
            (&self.down, &mut self.to_client)
        } else {
            (&self.up, &mut self.to_upstream)
        };
        if !frames.at_boundary() || frames.closed {
            return false;
        }
        // Toward the upstream we are the client: our frames must be masked.
        queue.push(if to_client {
            frame_bytes(opcode, payload)
        } else {
            Bytes::from(client_frame(opcode, payload, crate::ids::random_bytes()))
        });
        true
    }

    /// Writes what is queued, within the close grace.
    async fn drain(&mut self) {
        let flushed = poll_fn(|cx| {
            if self.flush(cx).is_some() {
                return Poll::Ready(());
            }
            if self.to_upstream.is_empty() && self.to_client.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let _ = timeout(CLOSE_GRACE, flushed).await;
    }
}

/// What the timer watches: per side, when it was last heard from and whether its output is
/// stuck (since when, and how far the output had got then).
struct Watch {
    heard: Instant,
    stall: Option<(Instant, u64)>,
}

impl Watch {
    fn new(now: Instant) -> Watch {
        Watch {
            heard: now,
            stall: None,
        }
    }

    /// Updates from this side's activity flag and output queue; the ending it calls for.
    fn look(
        &mut self,
        now: Instant,
        active: bool,
        queue: &OutQueue,
        limits: &RelayLimits,
        client: bool,
    ) -> Option<Ending> {
        if active {
            self.heard = now;
        }
        self.stall = match self.stall {
            _ if queue.is_empty() => None,
            Some((since, flushed)) if flushed == queue.flushed => {
                if now >= since + limits.send_timeout {
                    return Some(Ending::Stalled { client });
                }
                Some((since, flushed))
            }
            _ => Some((now, queue.flushed)),
        };
        if now >= self.heard + limits.idle_timeout {
            return Some(Ending::Idle { client });
        }
        None
    }

    /// The next moment this side needs a look, besides the ping interval.
    fn deadline(&self, limits: &RelayLimits) -> Instant {
        let idle = self.heard + limits.idle_timeout;
        match self.stall {
            Some((since, _)) => idle.min(since + limits.send_timeout),
            None => idle,
        }
    }
}

/// Relays frames both ways until the close handshake completes, a side goes away or breaks the
/// protocol, or the server shuts down.
pub async fn relay(
    client: Upgraded,
    upstream: Upgraded,
    deflate: bool,
    limits: RelayLimits,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<crate::out::Stop>,
    conn_id: u64,
) {
    let mut relay = Relay {
        client: Stream::new(client),
        upstream: Stream::new(upstream),
        up: Frames::with_deflate(true, limits.max_frame, deflate),
        down: Frames::with_deflate(false, usize::MAX, deflate),
        to_upstream: OutQueue::default(),
        to_client: OutQueue::default(),
        metrics,
        max_output: limits.max_output,
        client_active: false,
        upstream_active: false,
    };
    let ping_every = limits.ping_interval.max(Duration::from_millis(10));
    let now = Instant::now();
    let (mut client_watch, mut upstream_watch) = (Watch::new(now), Watch::new(now));
    // One timer for pings, idle and send timeouts on both sides, moved only when it fires.
    let mut timer = Box::pin(sleep(ping_every));
    let mut next_ping = now + ping_every;
    let mut armed = false;
    let ending = {
        // As in the echo engine: the shutdown wait registers once, then only its channel's
        // version is looked at.
        let probe = shutdown.clone();
        let mut registered = false;
        let stop = crate::out::stop_of(&mut shutdown, conn_id);
        tokio::pin!(stop);
        // Created when the first close frame passes: the other side gets this long to answer.
        let mut grace: Option<Pin<Box<Sleep>>> = None;
        poll_fn(|cx| {
            if !registered || !matches!(probe.has_changed(), Ok(false)) {
                registered = true;
                if let Poll::Ready(why) =
                    Pin::new(&mut tokio::task::unconstrained(stop.as_mut())).poll(cx)
                {
                    return Poll::Ready(Ending::Stopped(why));
                }
            }
            if let Poll::Ready(end) = relay.poll_relay(cx) {
                return Poll::Ready(end);
            }
            // As in the echo engine: the timer is polled to register, then only once it has
            // fired, and unconstrained so a spent task budget cannot leave it unregistered.
            if !armed || timer.is_elapsed() {
                armed = true;
                while grace.is_none()
                    && Pin::new(&mut tokio::task::unconstrained(timer.as_mut()))
                        .poll(cx)
                        .is_ready()
                {
                    let now = Instant::now();
                    let (c, u) = (
                        std::mem::take(&mut relay.client_active),
                        std::mem::take(&mut relay.upstream_active),
                    );
                    if let Some(end) = client_watch.look(now, c, &relay.to_client, &limits, true) {
                        return Poll::Ready(end);
                    }
                    if let Some(end) =
                        upstream_watch.look(now, u, &relay.to_upstream, &limits, false)
                    {
                        return Poll::Ready(end);
                    }
                    if now >= next_ping {
                        // Keep-alive pings toward a side that was quiet; its pong passes on to the
                        // other side, which RFC 6455 §5.5.3 allows (an unsolicited pong).
                        if !c {
                            relay.send_control(true, OpCode::Ping, b"");
                        }
                        if !u {
                            relay.send_control(false, OpCode::Ping, b"");
                        }
                        if let Some(end) = relay.flush(cx) {
                            return Poll::Ready(end);
                        }
                        next_ping = now + ping_every;
                    }
                    let wake = next_ping
                        .min(client_watch.deadline(&limits))
                        .min(upstream_watch.deadline(&limits));
                    timer.as_mut().reset(wake);
                }
            }
            if grace.is_none() && (relay.up.closed || relay.down.closed) {
                grace = Some(Box::pin(sleep(CLOSE_GRACE)));
            }
            match grace.as_mut().map(|g| g.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Ending::Closed),
                _ => Poll::Pending,
            }
        })
        .await
    };
    match ending {
        Ending::Closed => {}
        Ending::Stopped(why) => {
            let (code, reason) = why.close();
            relay.send_close(true, code, reason);
            relay.send_close(false, code, reason);
        }
        Ending::Gone { client: true } => relay.send_close(false, 1001, "the client went away"),
        Ending::Gone { client: false } => {
            relay.send_close(true, 1011, "the upstream closed the connection")
        }
        Ending::Broke {
            client: true,
            code,
            why,
        } => {
            relay.send_close(true, code, why);
            relay.send_close(false, 1001, "the client broke the protocol");
        }
        Ending::Broke {
            client: false,
            code,
            why,
        } => {
            relay.send_close(false, code, why);
            relay.send_close(
                true,
                1011,
                &format!("the upstream broke the protocol: {why}"),
            );
        }
        Ending::Idle { client: true } => {
            tracing::debug!(idle_timeout = ?limits.idle_timeout, "proxied client idle: closing both sides");
            relay.send_close(true, 1000, "idle timeout");
            relay.send_close(false, 1001, "the client went away (idle timeout)");
        }
        Ending::Idle { client: false } => {
            tracing::info!(idle_timeout = ?limits.idle_timeout, "upstream sent nothing, not even a pong: closing both sides");
            relay.send_close(false, 1001, "idle timeout");
            relay.send_close(true, 1011, "the upstream stopped answering");
        }
        Ending::Stalled { client: true } => {
            relay.metrics.slow_closes.inc();
            tracing::info!(queued = relay.to_client.bytes, send_timeout = ?limits.send_timeout, "proxied client stopped reading: closing both sides with 1013/1001");
            relay.send_close(true, 1013, "too slow: the client stopped reading");
            relay.send_close(false, 1001, "the client stopped reading");
        }
        Ending::Stalled { client: false } => {
            relay.metrics.slow_closes.inc();
            tracing::info!(queued = relay.to_upstream.bytes, send_timeout = ?limits.send_timeout, "upstream stopped reading: closing both sides with 1001/1011");
            relay.send_close(false, 1001, "too slow: the upstream stopped reading");
            relay.send_close(true, 1011, "the upstream stopped reading");
        }
    }
    relay.drain().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![b0];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        f
    }

    /// Feeds `stream` in pieces of `chunk` bytes; returns what passed and the scans' totals.
    fn feed(frames: &mut Frames, stream: &[u8], chunk: usize) -> (Vec<u8>, u64, u64, Option<u16>) {
        let (mut passed, mut messages, mut bytes) = (Vec::new(), 0, 0);
        for piece in stream.chunks(chunk) {
            let s = frames.scan(piece);
            passed.extend_from_slice(&s.prefix[..s.prefix_len]);
            passed.extend_from_slice(&piece[..s.forward]);
            messages += s.messages;
            bytes += s.bytes;
            if let Some((code, _)) = s.error {
                return (passed, messages, bytes, Some(code));
            }
        }
        (passed, messages, bytes, None)
    }

    #[test]
    fn frames_pass_verbatim_whatever_the_reads_split() {
        let mut stream = Vec::new();
        stream.extend(client_frame(0x82, b"hello"));
        stream.extend(client_frame(0x01, &[b'a'; 300])); // first fragment
        stream.extend(client_frame(0x89, b"ping")); // a ping between fragments
        stream.extend(client_frame(0x80, &[b'b'; 70_000])); // last fragment
        stream.extend(client_frame(0x88, &[0x03, 0xE8]));
        for chunk in [1, 2, 3, 5, 13, 14, 15, 1000, 1 << 20] {
            let mut f = Frames::new(true, 1 << 20);
            let (passed, messages, bytes, error) = feed(&mut f, &stream, chunk);
            assert_eq!(passed, stream, "chunks of {chunk}");
            assert_eq!(
                (messages, bytes, error),
                (2, 70_305, None),
                "chunks of {chunk}"
            );
            assert!(f.closed && f.at_boundary());
        }
    }

    #[test]
    fn nothing_of_an_invalid_frame_passes() {
        let good = client_frame(0x82, b"ok");
        for (bad, code) in [
            (vec![0x82, 0x05, b'x', b'y', b'z', b'z', b'y'], 1002), // unmasked
            (client_frame(0x83, b""), 1002),                        // reserved opcode
            (client_frame(0x80, b"x"), 1002),                       // continuation, no start
            (client_frame(0x82, &[0; 200]), 1009),                  // over the frame limit
        ] {
            for chunk in [1, 3, 100] {
                let mut f = Frames::new(true, 100);
                let stream = [good.clone(), bad.clone()].concat();
                let (passed, _, _, error) = feed(&mut f, &stream, chunk);
                assert_eq!(
                    passed, good,
                    "only the good frame passes (chunks of {chunk})"
                );
                assert_eq!(error, Some(code));
            }
        }
        let mut f = Frames::new(true, 100);
        let stream = [client_frame(0x01, b"a"), client_frame(0x82, b"b")].concat();
        assert_eq!(
            feed(&mut f, &stream, 100).3,
            Some(1002),
            "new message inside a fragmented one"
        );
    }

    #[test]
    fn upstream_frames_must_be_unmasked() {
        let mut f = Frames::new(false, usize::MAX);
        let (passed, messages, _, error) = feed(&mut f, &[0x81, 0x02, b'h', b'i'], 1);
        assert_eq!((passed.len(), messages, error), (4, 1, None));
        let masked = client_frame(0x81, b"hi");
        assert_eq!(feed(&mut f, &masked, 100).3, Some(1002));
    }

    #[test]
    fn utf8_is_checked_across_pieces() {
        let text = "aé€😀z".as_bytes();
        for cut in 0..text.len() {
            let mut u = Utf8::default();
            assert!(u.feed(&text[..cut]).is_ok() && u.feed(&text[cut..]).is_ok());
            assert!(u.finish().is_ok(), "cut at {cut}");
        }
        let mut u = Utf8::default();
        assert!(u.feed(&"€".as_bytes()[..2]).is_ok());
        assert!(u.finish().is_err(), "a message ending inside a character");
        let mut u = Utf8::default();
        assert!(u.feed(&[0xE2]).is_ok());
        assert!(u.feed(&[0x28]).is_err(), "a bad continuation byte");
        assert!(Utf8::default().feed(b"ok\xff").is_err());
    }

    #[test]
    fn invalid_text_and_close_payloads_are_held_back_and_told() {
        let good = client_frame(0x81, "héllo".as_bytes());
        for (bad, code) in [
            (client_frame(0x81, b"bad \xff text"), 1007),
            (client_frame(0x88, &[0x03]), 1002), // a 1-byte close payload
            (client_frame(0x88, &[0x03, 0xED]), 1002), // 1005 may not be sent
            (client_frame(0x88, &[0x03, 0xE8, 0xFF]), 1007), // a reason that is not UTF-8
        ] {
            for chunk in [1usize << 20, good.len()] {
                let mut f = Frames::new(true, 1 << 20);
                let stream = [good.clone(), bad.clone()].concat();
                let (passed, _, _, error) = feed(&mut f, &stream, chunk);
                assert_eq!(passed, good, "the bad frame is held back");
                assert_eq!(error, Some(code));
                assert!(f.at_boundary() && !f.closed, "a close of ours may follow");
            }
            // Split over reads: the error is still found.
            let mut f = Frames::new(true, 1 << 20);
            assert_eq!(feed(&mut f, &bad, 3).3, Some(code));
        }
        // A text message split into fragments with a character cut between them is fine; one
        // that ends inside a character is not.
        let euro = "€".as_bytes();
        let mut f = Frames::new(true, 1 << 20);
        let stream = [
            client_frame(0x01, &euro[..1]),
            client_frame(0x89, b"ping"),
            client_frame(0x80, &euro[1..]),
        ]
        .concat();
        assert_eq!(feed(&mut f, &stream, 5).3, None);
        let mut f = Frames::new(true, 1 << 20);
        let stream = [client_frame(0x01, &euro[..1]), client_frame(0x80, b"")].concat();
        assert_eq!(feed(&mut f, &stream, 100).3, Some(1007));
        // Upstream (unmasked) text is held to the same rule.
        let mut f = Frames::new(false, usize::MAX);
        assert_eq!(feed(&mut f, &[0x81, 0x01, 0xFF], 100).3, Some(1007));
        // Binary is never checked.
        let mut f = Frames::new(true, 1 << 20);
        assert_eq!(feed(&mut f, &client_frame(0x82, &[0xFF; 10]), 4).3, None);
    }
}
