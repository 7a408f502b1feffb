//! The load generator: echo throughput and latency (one message in flight per connection, or K),
//! handshake rate, fan-out and idle connections. It speaks WebSocket with fastwebsockets so the
//! client is cheap; its own CPU time is reported beside the server's to show it is not the limit.

use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

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
}

/// Runs `connections` connections, each keeping `in_flight` messages of `size` bytes in flight.
pub async fn echo(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    size: usize,
    in_flight: usize,
    duration: Duration,
) -> std::io::Result<EchoResult> {
    let stop = Arc::new(AtomicBool::new(false));
    // Every connection is open before any sends, so set-up never competes with load.
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        streams.push(connect(addr, path, &[], None).await?);
    }
    let mut tasks = Vec::new();
    for stream in streams {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = WebSocket::after_handshake(stream, Role::Client);
            ws.set_auto_pong(true);
            let payload = vec![0x5Au8; size];
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            let mut sent = std::collections::VecDeque::with_capacity(in_flight);
            let mut done = 0u64;
            for _ in 0..in_flight {
                sent.push_back(Instant::now());
                if ws
                    .write_frame(Frame::binary(Payload::Borrowed(&payload)))
                    .await
                    .is_err()
                {
                    return (done, hist);
                }
            }
            loop {
                let frame = match ws.read_frame().await {
                    Ok(f) => f,
                    Err(_) => return (done, hist),
                };
                if frame.opcode != OpCode::Binary {
                    continue;
                }
                if let Some(t) = sent.pop_front() {
                    if let Some(h) = hist.as_mut() {
                        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                    }
                }
                done += 1;
                if stop.load(Ordering::Relaxed) {
                    let _ = ws.write_frame(Frame::close(1000, b"")).await;
                    return (done, hist);
                }
                sent.push_back(Instant::now());
                if ws
                    .write_frame(Frame::binary(Payload::Borrowed(&payload)))
                    .await
                    .is_err()
                {
                    return (done, hist);
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let mut total = 0;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    for mut t in tasks {
        match tokio::time::timeout(Duration::from_secs(10), &mut t).await {
            Ok(Ok((n, h))) => {
                total += n;
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
    })
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

/// Fan-out results.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    /// Deliveries (messages × subscribers) per second.
    pub deliveries_per_sec: f64,
    /// Publish-to-delivery latency at the 99th percentile, microseconds.
    pub p99_us: u64,
    /// Publish to the last subscriber's delivery, worst message, microseconds.
    pub max_us: u64,
}

/// One publisher, `subscribers` members of one room, `messages` publishes of 64 bytes.
pub async fn fanout(
    addr: SocketAddr,
    path: &str,
    subscribers: usize,
    messages: u64,
) -> std::io::Result<FanoutResult> {
    let origin = Instant::now();
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let source: IpAddr = format!("127.0.0.{}", 2 + i % 200)
            .parse()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let stream = connect(addr, path, &[], Some(source)).await?;
        subs.push(tokio::spawn(async move {
            let mut ws = WebSocket::after_handshake(stream, Role::Client);
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).ok();
            let mut got = 0;
            while got < messages {
                let Ok(Ok(f)) =
                    tokio::time::timeout(Duration::from_secs(30), ws.read_frame()).await
                else {
                    break;
                };
                if f.opcode != OpCode::Binary || f.payload.len() < 8 {
                    continue;
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&f.payload[..8]);
                let sent = u64::from_le_bytes(b);
                let now = origin.elapsed().as_micros() as u64;
                if let Some(h) = hist.as_mut() {
                    let _ = h.record(now.saturating_sub(sent).max(1));
                }
                got += 1;
            }
            (got, hist)
        }));
    }
    let stream = connect(addr, path, &[], None).await?;
    let mut publisher = WebSocket::after_handshake(stream, Role::Client);
    let started = Instant::now();
    let mut payload = vec![0u8; 64];
    for _ in 0..messages {
        let t = origin.elapsed().as_micros() as u64;
        payload[..8].copy_from_slice(&t.to_le_bytes());
        publisher
            .write_frame(Frame::binary(Payload::Borrowed(&payload)))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // Paced a little so the room's queues (256 per member) are not the thing measured.
        tokio::task::yield_now().await;
    }
    let mut delivered = 0;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    for s in subs {
        if let Ok((n, h)) = s.await {
            delivered += n;
            if let Some(h) = h {
                let _ = hist.add(h);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(FanoutResult {
        deliveries_per_sec: delivered as f64 / secs,
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
    })
}

/// Opens `count` idle connections (spread over source addresses) and keeps them until dropped.
pub async fn idle(addr: SocketAddr, path: &str, count: usize) -> std::io::Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let source: IpAddr = format!("127.0.0.{}", 2 + i % 200)
            .parse()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        conns.push(connect(addr, path, &[], Some(source)).await?);
    }
    Ok(conns)
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
    let mut tasks = Vec::new();
    for stream in streams {
        tasks.push(tokio::spawn(async move {
            let mut ws = WebSocket::after_handshake(stream, Role::Client);
            let payload = vec![0x5Au8; size];
            let mut done = 0u64;
            for _ in 0..per_connection {
                if ws
                    .write_frame(Frame::binary(Payload::Borrowed(&payload)))
                    .await
                    .is_err()
                {
                    break;
                }
                loop {
                    match ws.read_frame().await {
                        Ok(f) if f.opcode == OpCode::Binary => break,
                        Ok(_) => continue,
                        Err(_) => return done,
                    }
                }
                done += 1;
            }
            let _ = ws.write_frame(Frame::close(1000, b"")).await;
            // Wait for the server's close reply, so its side of the work is counted too.
            let _ = tokio::time::timeout(Duration::from_secs(30), ws.read_frame()).await;
            done
        }));
    }
    let mut total = 0;
    for mut t in tasks {
        match tokio::time::timeout(Duration::from_secs(600), &mut t).await {
            Ok(Ok(n)) => total += n,
            _ => t.abort(),
        }
    }
    Ok(total)
}
