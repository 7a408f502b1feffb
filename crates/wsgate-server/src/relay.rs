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

use crate::metrics::Metrics;
use crate::stream::Stream;
use crate::ws::{frame_bytes, stopped, truncate, OutQueue, CLOSE_GRACE, HIGH_WATER};
use bytes::{BufMut, Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Sleep};
use wsgate_handshake::frame::{parse_client_frame, parse_server_frame, OpCode, Parsed};

const READ_CHUNK: usize = 64 * 1024;
/// Reads per wake-up before letting other connections run.
const READS_PER_POLL: usize = 16;
/// The longest frame header: two bytes, a 64-bit length and a masking key.
const MAX_HEADER: usize = 14;

thread_local! {
    /// The read buffer of this worker thread, borrowed for one read and its forwarding.
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Frame boundaries in one direction's byte stream.
struct Frames {
    /// Client to upstream (frames must be masked) or upstream to client (must not be).
    from_client: bool,
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
    fn new(from_client: bool, max_frame: usize) -> Self {
        Frames {
            from_client,
            max_frame,
            left: 0,
            head: [0; MAX_HEADER],
            head_len: 0,
            fragmented: false,
            closed: false,
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
        loop {
            if self.left > 0 {
                let k = self.left.min((chunk.len() - pos) as u64);
                self.left -= k;
                pos += k as usize;
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
            let parsed = if self.from_client {
                parse_client_frame(&self.head[..held + take], self.max_frame)
            } else {
                parse_server_frame(&self.head[..held + take], self.max_frame)
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
            self.head_len = 0;
            pos += h.header_len - held;
            out.forward = pos;
            self.left = h.payload_len as u64;
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
        }
        out
    }
}

/// How the relaying ended.
enum Ending {
    /// Both close frames passed, or the grace after the first ran out.
    Closed,
    /// The server is shutting down.
    Shutdown,
    /// A side's connection ended (EOF, reset) without the close handshake.
    Gone { client: bool },
    /// A side broke the protocol: the close code and why.
    Broke {
        client: bool,
        code: u16,
        why: &'static str,
    },
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
}

/// One direction's part of a `Relay`, borrowed for one step.
struct Pass<'a> {
    from: &'a mut Stream,
    to: &'a mut Stream,
    frames: &'a mut Frames,
    queue: &'a mut OutQueue,
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
        if self.queue.bytes > HIGH_WATER {
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
            } = self;
            let mut moved = false;
            for up_way in [true, false] {
                let mut pass = if up_way {
                    Pass {
                        from: &mut *client,
                        to: &mut *upstream,
                        frames: &mut *up,
                        queue: &mut *to_upstream,
                    }
                } else {
                    Pass {
                        from: &mut *upstream,
                        to: &mut *client,
                        frames: &mut *down,
                        queue: &mut *to_client,
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
        let (frames, queue) = if to_client {
            (&self.down, &mut self.to_client)
        } else {
            (&self.up, &mut self.to_upstream)
        };
        if frames.at_boundary() && !frames.closed {
            // Toward the upstream we are the client: our frames must be masked.
            queue.push(close_frame(code, reason, !to_client));
        }
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

/// A close frame in its own buffer; `masked` for frames we send as a client.
fn close_frame(code: u16, reason: &str, masked: bool) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(truncate(reason).as_bytes());
    if !masked {
        return frame_bytes(OpCode::Close, &payload);
    }
    let mask: [u8; 4] = crate::ids::random_bytes();
    let mut f = BytesMut::with_capacity(6 + payload.len());
    f.put_u8(0x88);
    f.put_u8(0x80 | payload.len() as u8);
    f.put_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f.freeze()
}

/// Relays frames both ways until the close handshake completes, a side goes away or breaks the
/// protocol, or the server shuts down.
pub async fn relay(
    client: Upgraded,
    upstream: Upgraded,
    max_frame: usize,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut relay = Relay {
        client: Stream::new(client),
        upstream: Stream::new(upstream),
        up: Frames::new(true, max_frame),
        down: Frames::new(false, usize::MAX),
        to_upstream: OutQueue::default(),
        to_client: OutQueue::default(),
        metrics,
    };
    let ending = {
        // As in the echo engine: the shutdown wait registers once, then only its channel's
        // version is looked at.
        let probe = shutdown.clone();
        let mut registered = false;
        let stop = stopped(&mut shutdown);
        tokio::pin!(stop);
        // Created when the first close frame passes: the other side gets this long to answer.
        let mut grace: Option<Pin<Box<Sleep>>> = None;
        poll_fn(|cx| {
            if !registered || !matches!(probe.has_changed(), Ok(false)) {
                registered = true;
                if Pin::new(&mut tokio::task::unconstrained(stop.as_mut()))
                    .poll(cx)
                    .is_ready()
                {
                    return Poll::Ready(Ending::Shutdown);
                }
            }
            if let Poll::Ready(end) = relay.poll_relay(cx) {
                return Poll::Ready(end);
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
        Ending::Shutdown => {
            relay.send_close(true, 1001, "server shutting down");
            relay.send_close(false, 1001, "server shutting down");
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
    fn our_close_frames_toward_the_upstream_are_masked() {
        let f = close_frame(1001, "bye", true);
        assert_eq!(&f[..2], &[0x88, 0x80 | 5]);
        let mask = [f[2], f[3], f[4], f[5]];
        let payload: Vec<u8> = f[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(payload, [&1001u16.to_be_bytes()[..], b"bye"].concat());
        assert_eq!(&close_frame(1000, "", false)[..], &[0x88, 0x02, 0x03, 0xE8]);
    }
}
