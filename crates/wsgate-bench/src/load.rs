//! The load generator: echo throughput and latency (one message in flight per connection, or K),
//! handshake rate and idle connections (fan-out is in `fanout.rs`). The echo client writes prebuilt frames and only
//! walks the headers of the answers, so it costs less than any server it loads; its own CPU time
//! is reported beside the server's to show it is not the limit.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wsgate_handshake::frame::{parse_server_frame_deflate, OpCode as WireOp, Parsed};

/// Opens a WebSocket with a hand-written handshake; reads exactly the answer's head.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    source: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let mut s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        let b = s.read_u8().await?;
        head.push(b);
        if head.len() > 16 * 1024 {
            return Err(std::io::Error::other("answer head too long"));
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&head[..head.len().min(60)]).into_owned();
        return Err(std::io::Error::other(format!("not admitted: {line}")));
    }
    Ok(s)
}

/// Echo results.
#[derive(Debug, Clone, Serialize)]
pub struct EchoResult {
    /// Messages echoed.
    pub messages: u64,
    /// Messages per second.
    pub msgs_per_sec: f64,
    /// Payload MiB per second (one direction).
    pub mib_per_sec: f64,
    /// Round-trip latency percentiles, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Bytes on the wire per echoed message: the client's frame and the server's answer.
    pub wire_bytes_per_msg: f64,
}

/// Runs `connections` connections, each keeping `in_flight` messages of `size` bytes in flight.
///
/// The client is deliberately lean, so the server is what is measured: each connection sends one
/// masked frame built once (all in-flight frames of one turn in one write) and counts the echoes
/// by walking frame headers, never copying or unmasking a payload. One clock read per read call.
pub async fn echo(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    size: usize,
    in_flight: usize,
    duration: Duration,
) -> std::io::Result<EchoResult> {
    let message = EchoMessage {
        frame: client_frame(size, [0x12, 0x34, 0x56, 0x78]),
        payload_len: size,
        headers: Vec::new(),
    };
    echo_message(addr, path, connections, &message, in_flight, duration).await
}

/// One message of an echo load, as it goes on the wire.
pub struct EchoMessage {
    /// The client's masked frame, built once.
    pub frame: Vec<u8>,
    /// Its payload's length before any compression (for MiB/s).
    pub payload_len: usize,
    /// Handshake headers, e.g. a permessage-deflate offer.
    pub headers: Vec<(String, String)>,
}

/// A text message compressed with permessage-deflate (each message on its own, which any
/// agreement allows a client), in a masked frame with RSV1, and the offer that goes with it.
pub fn deflate_message(text: &[u8]) -> EchoMessage {
    let mut packed = Vec::new();
    wsgate_handshake::deflate::compress_message(text, 15, &mut packed);
    let mut frame =
        wsgate_handshake::frame::client_frame(WireOp::Text, &packed, [0x12, 0x34, 0x56, 0x78]);
    frame[0] |= 0x40;
    EchoMessage {
        frame,
        payload_len: text.len(),
        headers: vec![(
            "Sec-WebSocket-Extensions".into(),
            "permessage-deflate; client_max_window_bits".into(),
        )],
    }
}

/// A text message as it is.
pub fn text_message(text: &[u8]) -> EchoMessage {
    EchoMessage {
        frame: wsgate_handshake::frame::client_frame(WireOp::Text, text, [0x12, 0x34, 0x56, 0x78]),
        payload_len: text.len(),
        headers: Vec::new(),
    }
}

/// [`echo`] with a prebuilt message (text, compressed, …).
pub async fn echo_message(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    message: &EchoMessage,
    in_flight: usize,
    duration: Duration,
) -> std::io::Result<EchoResult> {
    let size = message.payload_len;
    let stop = Arc::new(AtomicBool::new(false));
    // Every connection is open before any sends, so set-up never competes with load.
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        streams.push(connect(addr, path, &message.headers, None).await?);
    }
    let in_flight = in_flight.max(1);
    let frames: Arc<[u8]> = message.frame.repeat(in_flight).into();
    let mut tasks = Vec::new();
    for stream in streams {
        let until = Until::Flag(stop.clone());
        tasks.push(tokio::spawn(echo_loop(
            stream,
            frames.clone(),
            in_flight,
            until,
        )));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let mut total = 0;
    let mut read = 0;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    for mut t in tasks {
        match tokio::time::timeout(Duration::from_secs(10), &mut t).await {
            Ok(Ok((n, h, r))) => {
                total += n;
                read += r;
                if let Some(h) = h {
                    let _ = hist.add(h);
                }
            }
            // A connection that did not finish must not keep loading the next measurement.
            _ => t.abort(),
        }
    }
    Ok(EchoResult {
        messages: total,
        msgs_per_sec: total as f64 / secs,
        mib_per_sec: total as f64 * size as f64 / secs / (1024.0 * 1024.0),
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        wire_bytes_per_msg: message.frame.len() as f64 + read as f64 / total.max(1) as f64,
    })
}

/// When a connection's echo loop ends.
enum Until {
    /// When the flag is set (a timed run).
    Flag(Arc<AtomicBool>),
    /// After this many echoes, once the server has answered our close too (a fixed amount of
    /// work, for instruction counts).
    Count(u64),
}

/// One connection's echo loop: `in_flight` prebuilt frames out, and every echo answered with the
/// next frame; returns the echoes and their round-trip times.
async fn echo_loop(
    mut stream: TcpStream,
    frames: Arc<[u8]>,
    in_flight: usize,
    until: Until,
) -> (u64, Option<Histogram<u64>>, u64) {
    let frame_len = frames.len() / in_flight;
    let mut read = 0u64;
    let limit = match until {
        Until::Count(n) => n,
        Until::Flag(_) => u64::MAX,
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
    let mut sent = std::collections::VecDeque::with_capacity(in_flight);
    let (mut done, mut out) = (0u64, 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    let mut counter = FrameCounter::default();
    let first = (in_flight as u64).min(limit) as usize;
    if first == 0 {
        return (done, hist, read);
    }
    sent.extend(std::iter::repeat_n(Instant::now(), first));
    if stream
        .write_all(&frames[..first * frame_len])
        .await
        .is_err()
    {
        return (done, hist, read);
    }
    out += first as u64;
    loop {
        let Ok(n) = stream.read(&mut buf[counter.kept..]).await else {
            return (done, hist, read);
        };
        if n == 0 {
            return (done, hist, read);
        }
        read += n as u64;
        let (echoes, closed) = counter.feed(&mut buf, n);
        if closed {
            return (done, hist, read);
        }
        if echoes == 0 {
            continue;
        }
        let now = Instant::now();
        for _ in 0..echoes {
            if let (Some(t), Some(h)) = (sent.pop_front(), hist.as_mut()) {
                let _ = h.record(now.duration_since(t).as_micros().max(1) as u64);
            }
        }
        done += echoes as u64;
        let stopped = match &until {
            Until::Flag(stop) => stop.load(Ordering::Relaxed),
            Until::Count(n) => done >= *n,
        };
        if stopped {
            // A masked close frame, status 1000 (mask key 0 leaves the code as is).
            let _ = stream
                .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8])
                .await;
            if let Until::Count(_) = until {
                // The server's close reply, so its side of the work is counted too.
                let _ = tokio::time::timeout(Duration::from_secs(30), async {
                    while let Ok(n) = stream.read(&mut buf[counter.kept..]).await {
                        if n == 0 || counter.feed(&mut buf, n).1 {
                            break;
                        }
                    }
                })
                .await;
            }
            return (done, hist, read);
        }
        let more = (echoes as u64).min(limit - out) as usize;
        if more == 0 {
            continue;
        }
        sent.extend(std::iter::repeat_n(now, more));
        if stream.write_all(&frames[..more * frame_len]).await.is_err() {
            return (done, hist, read);
        }
        out += more as u64;
    }
}

/// One masked binary client frame of `size` bytes of 0x5A.
fn client_frame(size: usize, mask: [u8; 4]) -> Vec<u8> {
    wsgate_handshake::frame::client_frame(WireOp::Binary, &vec![0x5A; size], mask)
}

/// Counts the complete binary frames in a server's byte stream, skipping payloads in place.
#[derive(Default)]
struct FrameCounter {
    /// Payload bytes of the current frame still to skip.
    skip: u64,
    /// Whether the current frame is a binary (or final continuation) frame to count.
    counting: bool,
    /// Bytes of an incomplete header kept at the start of the buffer for the next read.
    kept: usize,
}

impl FrameCounter {
    /// Takes `n` new bytes read into `buf` after the kept ones; returns the frames completed and
    /// whether the server sent a close frame.
    fn feed(&mut self, buf: &mut [u8], n: usize) -> (usize, bool) {
        let end = self.kept + n;
        let mut pos = 0;
        let mut frames = 0;
        loop {
            if self.skip > 0 {
                let k = self.skip.min((end - pos) as u64);
                self.skip -= k;
                pos += k as usize;
                if self.skip > 0 {
                    break;
                }
            }
            if self.counting {
                frames += 1;
                self.counting = false;
            }
            // RSV1 is allowed: with permessage-deflate, answers may be compressed.
            let h = match parse_server_frame_deflate(&buf[pos..end], usize::MAX) {
                Parsed::Header(h) => h,
                Parsed::Incomplete => break,
                // Not a server's frame: the server is broken; stop as if it had closed.
                Parsed::Invalid(..) => return (frames, true),
            };
            if h.opcode == WireOp::Close {
                return (frames, true);
            }
            self.counting = h.fin
                && matches!(
                    h.opcode,
                    WireOp::Binary | WireOp::Text | WireOp::Continuation
                );
            self.skip = h.payload_len as u64;
            pos += h.header_len;
        }
        buf.copy_within(pos..end, 0);
        self.kept = end - pos;
        (frames, false)
    }
}

/// Opens, completes and drops handshakes from `parallel` tasks for `duration`; handshakes/s.
pub async fn handshakes(
    addr: SocketAddr,
    path: &str,
    headers: Vec<(String, String)>,
    parallel: usize,
    duration: Duration,
) -> std::io::Result<f64> {
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let headers = Arc::new(headers);
    let mut tasks = Vec::new();
    for i in 0..parallel {
        let (count, errors, headers) = (count.clone(), errors.clone(), headers.clone());
        let path = path.to_owned();
        // Several source addresses keep one address's ephemeral ports (and TIME_WAIT) from running out.
        let source: IpAddr = format!("127.0.0.{}", 2 + i % 8)
            .parse()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match connect(addr, &path, &headers, Some(source)).await {
                    Ok(_) => count.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let started = Instant::now();
    for mut t in tasks {
        if tokio::time::timeout(duration + Duration::from_secs(10), &mut t)
            .await
            .is_err()
        {
            t.abort();
        }
    }
    let n = count.load(Ordering::Relaxed);
    if n == 0 {
        return Err(std::io::Error::other(format!(
            "no handshake succeeded ({} errors)",
            errors.load(Ordering::Relaxed)
        )));
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Opens `count` idle connections (spread over source addresses) and keeps them until dropped.
/// A `{room}` in `path` becomes one of 1,000 room numbers, in turn.
///
/// With `message`, each connection first echoes it (with its handshake headers, e.g. a
/// permessage-deflate offer) so whatever a connection keeps after a message is counted.
pub async fn idle_after(
    addr: SocketAddr,
    path: &str,
    count: usize,
    message: Option<&EchoMessage>,
) -> std::io::Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(count);
    let headers = message.map_or(&[][..], |m| &m.headers[..]);
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..count {
        let source: IpAddr = format!("127.0.0.{}", 2 + i % 200)
            .parse()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let path = path.replace("{room}", &(i % 1000).to_string());
        let mut c = connect(addr, &path, headers, Some(source)).await?;
        if let Some(m) = message {
            c.write_all(&m.frame).await?;
            let mut counter = FrameCounter::default();
            loop {
                let n = c.read(&mut buf[counter.kept..]).await?;
                if n == 0 {
                    return Err(std::io::Error::other("closed before the echo"));
                }
                if counter.feed(&mut buf, n).0 > 0 {
                    break;
                }
            }
        }
        conns.push(c);
    }
    Ok(conns)
}

/// Sends `message` on one connection and returns the answer's payload, inflated when the server
/// compressed it: proof that a server echoes correctly before it is measured.
pub async fn echo_once(
    addr: SocketAddr,
    path: &str,
    message: &EchoMessage,
) -> std::io::Result<Vec<u8>> {
    let mut c = connect(addr, path, &message.headers, None).await?;
    c.write_all(&message.frame).await?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Parsed::Header(h) = parse_server_frame_deflate(&buf, usize::MAX) {
            if buf.len() >= h.frame_len() {
                let payload = &buf[h.header_len..h.frame_len()];
                if !h.rsv1 {
                    return Ok(payload.to_vec());
                }
                let mut plain = Vec::new();
                wsgate_handshake::deflate::Inflater::new()
                    .inflate(payload, 64 << 20, &mut plain)
                    .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
                return Ok(plain);
            }
        }
        let n = c.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the echo"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Echoes exactly `per_connection` messages of `size` bytes on each of `connections`
/// connections, one in flight, then closes: a fixed amount of work, for instruction counts.
pub async fn echo_fixed(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    size: usize,
    per_connection: usize,
) -> std::io::Result<u64> {
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        streams.push(connect(addr, path, &[], None).await?);
    }
    let frames: Arc<[u8]> = client_frame(size, [0x12, 0x34, 0x56, 0x78]).into();
    let mut tasks = Vec::new();
    for stream in streams {
        let until = Until::Count(per_connection as u64);
        tasks.push(tokio::spawn(echo_loop(stream, frames.clone(), 1, until)));
    }
    let mut total = 0;
    for mut t in tasks {
        match tokio::time::timeout(Duration::from_secs(600), &mut t).await {
            Ok(Ok((n, _, _))) => total += n,
            _ => t.abort(),
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_frames_across_reads_of_any_split() {
        // Three binary frames (5 B, 300 B, 70,000 B), a ping, then a close.
        let mut stream = Vec::new();
        for (len, op) in [(5usize, 0x82u8), (300, 0x82), (70_000, 0x82), (2, 0x89)] {
            stream.push(op);
            match len {
                0..=125 => stream.push(len as u8),
                126..=0xFFFF => {
                    stream.push(126);
                    stream.extend_from_slice(&(len as u16).to_be_bytes());
                }
                _ => {
                    stream.push(127);
                    stream.extend_from_slice(&(len as u64).to_be_bytes());
                }
            }
            stream.extend(std::iter::repeat_n(7u8, len));
        }
        stream.extend_from_slice(&[0x88, 0x02, 0x03, 0xE8]);
        for chunk in [1, 2, 3, 7, 1000, 100_000] {
            let mut c = FrameCounter::default();
            let mut buf = vec![0u8; 64 * 1024];
            let (mut total, mut closed) = (0, false);
            for piece in stream.chunks(chunk) {
                let mut piece = piece;
                while !piece.is_empty() && !closed {
                    let room = buf.len() - c.kept;
                    let n = piece.len().min(room);
                    buf[c.kept..c.kept + n].copy_from_slice(&piece[..n]);
                    piece = &piece[n..];
                    let (f, cl) = c.feed(&mut buf, n);
                    total += f;
                    closed = cl;
                }
            }
            assert_eq!((total, closed), (3, true), "chunks of {chunk}");
        }
    }

    #[test]
    fn client_frames_are_masked_with_the_right_length() {
        let f = client_frame(20, [1, 2, 3, 4]);
        assert_eq!(&f[..6], &[0x82, 0x80 | 20, 1, 2, 3, 4]);
        assert_eq!(f[6], 0x5A ^ 1);
        assert_eq!(client_frame(16384, [0; 4])[1..4], [0x80 | 126, 0x40, 0x00]);
        assert_eq!(client_frame(70_000, [0; 4]).len(), 70_000 + 14);
    }
}
