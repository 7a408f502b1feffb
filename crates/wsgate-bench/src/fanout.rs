//! The fan-out load: rooms of subscribers, publishers keeping a fixed number of messages in
//! flight, a message counting once every member of its room has it. Like the echo client it is
//! lean, so the server is what is measured: subscribers read raw TCP and walk frame headers
//! (one clock read per read call, no payload copies), publishers write prebuilt masked frames
//! (mask key 0, so the payload is written as is).
//!
//! Each payload starts with the publisher's number, the message's sequence number and its send
//! time; a subscriber counts the message off in its publisher's window, and the publisher sends
//! the next one as soon as a message is complete.

use crate::load::connect;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use wsgate_handshake::frame::{parse_server_frame, OpCode, Parsed};

/// A payload's header: publisher (u32), sequence (u32), send time in µs since the start (u64).
const STAMP: usize = 16;
/// The sequence number that tells a subscriber the run is over.
const END: u32 = u32::MAX;
/// Slots per publisher window: messages to different rooms may complete out of order, so a slot
/// is reused only once its message is complete (in flight are far fewer).
const SLOTS: usize = 1024;

/// What to load.
#[derive(Debug, Clone, Copy)]
pub struct FanoutPlan {
    /// Rooms.
    pub rooms: usize,
    /// Subscribers in each room (the publishers are not members that receive).
    pub members: usize,
    /// Publishers; the rooms are dealt out among them, one publishing connection per room.
    pub publishers: usize,
    /// Payload bytes per message (at least 16).
    pub size: usize,
    /// Messages each publisher keeps in flight.
    pub in_flight: usize,
    /// How long to publish.
    pub duration: Duration,
    /// Stop each publisher after this many messages instead (a fixed amount of work, for
    /// instruction counts).
    pub messages: Option<u64>,
}

/// Fan-out results.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    /// Messages every member of their room received.
    pub messages: u64,
    /// Deliveries: messages × members of their room.
    pub deliveries: u64,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// Publish→delivery latency percentiles over every delivery, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// The worst delivery.
    pub max_us: u64,
    /// The p50 of the members on each address given to [`open_on`], in that order.
    pub p50_us_by_node: Vec<u64>,
    /// Seconds measured (publishing, then waiting for what was in flight).
    pub seconds: f64,
}

/// One publisher's window of messages in flight.
struct Window {
    /// Members still to receive each in-flight message, by sequence number modulo [`SLOTS`].
    remaining: Vec<AtomicU32>,
    /// Messages this publisher keeps in flight.
    in_flight: u64,
    /// Messages complete.
    completed: AtomicU64,
    /// Woken when a message completes.
    notify: Notify,
}

/// A fan-out with every connection open, ready to publish.
pub struct Fanout {
    plan: FanoutPlan,
    size: usize,
    windows: Arc<Vec<Window>>,
    /// Latencies of the members on each member address.
    hists: Vec<Arc<Mutex<Histogram<u64>>>>,
    origin: Instant,
    subscribers: Vec<tokio::task::JoinHandle<()>>,
    rooms_of: Vec<Vec<TcpStream>>,
}

/// Opens every connection to `path_prefix` + room number (subscribers first, then one
/// publishing connection per room); the server must not deliver a publisher's messages to
/// itself. Nothing is published yet, so set-up is not measured.
pub async fn open(
    addr: SocketAddr,
    path_prefix: &str,
    plan: FanoutPlan,
) -> std::io::Result<Fanout> {
    open_on(addr, &[addr], path_prefix, plan).await
}

/// [`open`] with the publishers on `publish` and each room's members dealt out over `members`
/// in turn (the nodes of a cluster), each address's latencies kept apart.
pub async fn open_on(
    publish: SocketAddr,
    members: &[SocketAddr],
    path_prefix: &str,
    plan: FanoutPlan,
) -> std::io::Result<Fanout> {
    let size = plan.size.max(STAMP);
    let in_flight = plan.in_flight.max(1);
    let publishers = plan.publishers.clamp(1, plan.rooms.max(1));
    let windows: Arc<Vec<Window>> = Arc::new(
        (0..publishers)
            .map(|_| Window {
                remaining: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
                in_flight: in_flight as u64,
                completed: AtomicU64::new(0),
                notify: Notify::new(),
            })
            .collect(),
    );
    let mut hists = Vec::with_capacity(members.len());
    for _ in members {
        hists.push(Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                .map_err(|e| std::io::Error::other(e.to_string()))?,
        )));
    }
    let origin = Instant::now();
    let mut subscribers = Vec::with_capacity(plan.rooms * plan.members);
    for room in 0..plan.rooms {
        for m in 0..plan.members {
            // Spread over source addresses: one address has ~28,000 ports to one destination.
            let i = room * plan.members + m;
            let source = IpAddr::from([127, 0, (2 + i / 200 % 50) as u8, (2 + i % 200) as u8]);
            let node = m % members.len().max(1);
            let Some(&addr) = members.get(node) else {
                return Err(std::io::Error::other("no member address"));
            };
            let stream = connect(addr, &format!("{path_prefix}{room}"), &[], Some(source)).await?;
            subscribers.push(tokio::spawn(subscribe(
                stream,
                windows.clone(),
                hists[node].clone(),
                origin,
            )));
        }
    }
    let mut rooms_of: Vec<Vec<TcpStream>> = (0..publishers).map(|_| Vec::new()).collect();
    for room in 0..plan.rooms {
        let stream = connect(publish, &format!("{path_prefix}{room}"), &[], None).await?;
        rooms_of[room % publishers].push(stream);
    }
    Ok(Fanout {
        plan,
        size,
        windows,
        hists,
        origin,
        subscribers,
        rooms_of,
    })
}

impl Fanout {
    /// Publishes for the plan's duration (or message count), waits for what is in flight, and
    /// reports.
    pub async fn run(self) -> std::io::Result<FanoutResult> {
        let Fanout {
            plan,
            size,
            windows,
            hists,
            origin,
            subscribers,
            rooms_of,
        } = self;
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (p, conns) in rooms_of.into_iter().enumerate() {
            tasks.push(tokio::spawn(publish(
                p as u32,
                conns,
                windows.clone(),
                plan.members as u32,
                size,
                (stop.clone(), plan.messages.unwrap_or(u64::MAX)),
                origin,
            )));
        }
        if plan.messages.is_none() {
            tokio::time::sleep(plan.duration).await;
            stop.store(true, Ordering::Relaxed);
        }
        let mut failed = None;
        for t in tasks {
            match tokio::time::timeout(Duration::from_secs(60), t).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => failed = Some(e),
                _ => failed = Some(std::io::Error::other("a publisher did not finish")),
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        for s in subscribers {
            if tokio::time::timeout(Duration::from_secs(30), s)
                .await
                .is_err()
            {
                failed = Some(std::io::Error::other("a subscriber did not get the end"));
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let messages: u64 = windows
            .iter()
            .map(|w| w.completed.load(Ordering::Relaxed))
            .sum();
        let deliveries = messages * plan.members as u64;
        let mut p50_us_by_node = Vec::with_capacity(hists.len());
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        for node in &hists {
            let node = node.lock().unwrap_or_else(|p| p.into_inner());
            p50_us_by_node.push(node.value_at_quantile(0.5));
            h.add(&*node)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(FanoutResult {
            p50_us_by_node,
            messages,
            deliveries,
            deliveries_per_sec: deliveries as f64 / seconds,
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            seconds,
        })
    }
}
/// A masked binary frame (mask key 0) for a message: the stamp, then filler.
fn frame(publisher: u32, seq: u32, sent_us: u64, size: usize, out: &mut Vec<u8>) {
    let mut payload = vec![0x5A; size];
    payload[..4].copy_from_slice(&publisher.to_le_bytes());
    payload[4..8].copy_from_slice(&seq.to_le_bytes());
    payload[8..16].copy_from_slice(&sent_us.to_le_bytes());
    out.extend_from_slice(&wsgate_handshake::frame::client_frame(
        wsgate_handshake::frame::OpCode::Binary,
        &payload,
        [0; 4],
    ));
}

/// One publisher: keeps `in_flight` messages out over its rooms in turn; when stopped, waits for
/// what is in flight and sends every room the end.
async fn publish(
    p: u32,
    mut conns: Vec<TcpStream>,
    windows: Arc<Vec<Window>>,
    members: u32,
    size: usize,
    (stop, limit): (Arc<AtomicBool>, u64),
    origin: Instant,
) -> std::io::Result<()> {
    let w = &windows[p as usize];
    let slots = w.remaining.len() as u64;
    let mut sent = 0u64;
    let mut next_room = 0;
    let mut buf = Vec::with_capacity(64 * 1024);
    while !stop.load(Ordering::Relaxed) && sent < limit {
        let free = (w.in_flight - (sent - w.completed.load(Ordering::Acquire))).min(limit - sent);
        if free == 0 || w.remaining[(sent % slots) as usize].load(Ordering::Acquire) != 0 {
            w.notify.notified().await;
            continue;
        }
        let now = origin.elapsed().as_micros() as u64;
        // One room's frames go out in one write; with one room, the whole turn does.
        for _ in 0..free {
            let slot = &w.remaining[(sent % slots) as usize];
            if slot.load(Ordering::Acquire) != 0 {
                break;
            }
            slot.store(members, Ordering::Release);
            frame(p, sent as u32, now, size, &mut buf);
            sent += 1;
            if conns.len() > 1 {
                conns[next_room].write_all(&buf).await?;
                buf.clear();
                next_room = (next_room + 1) % conns.len();
            }
        }
        if !buf.is_empty() {
            conns[next_room].write_all(&buf).await?;
            buf.clear();
        }
    }
    // What is in flight completes; then every subscriber is told the end.
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.completed.load(Ordering::Acquire) < sent && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(100), w.notify.notified()).await;
    }
    for c in &mut conns {
        frame(p, END, 0, STAMP, &mut buf);
        c.write_all(&buf).await?;
        buf.clear();
    }
    Ok(())
}

/// One subscriber: counts each message off in its publisher's window and records its latency;
/// returns at the end message.
async fn subscribe(
    mut stream: TcpStream,
    windows: Arc<Vec<Window>>,
    hist: Arc<Mutex<Histogram<u64>>>,
    origin: Instant,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut kept = 0;
    loop {
        let n = match stream.read(&mut buf[kept..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = origin.elapsed().as_micros() as u64;
        let end = kept + n;
        let mut pos = 0;
        let mut h = hist.lock().unwrap_or_else(|p| p.into_inner());
        while let Parsed::Header(f) = parse_server_frame(&buf[pos..end], usize::MAX) {
            if end - pos < f.frame_len() {
                break;
            }
            let payload = &buf[pos + f.header_len..pos + f.frame_len()];
            pos += f.frame_len();
            if f.opcode == OpCode::Close {
                return;
            }
            if f.opcode != OpCode::Binary || payload.len() < STAMP {
                continue;
            }
            let word = |at: usize| {
                u32::from_le_bytes([
                    payload[at],
                    payload[at + 1],
                    payload[at + 2],
                    payload[at + 3],
                ])
            };
            let (p, seq) = (word(0) as usize, word(4));
            if seq == END {
                return;
            }
            let mut t = [0u8; 8];
            t.copy_from_slice(&payload[8..16]);
            let _ = h.record(now.saturating_sub(u64::from_le_bytes(t)).max(1));
            if let Some(w) = windows.get(p) {
                let slot = seq as usize % w.remaining.len();
                if w.remaining[slot].fetch_sub(1, Ordering::AcqRel) == 1 {
                    w.completed.fetch_add(1, Ordering::Release);
                    w.notify.notify_one();
                }
            }
        }
        drop(h);
        buf.copy_within(pos..end, 0);
        kept = end - pos;
    }
}
