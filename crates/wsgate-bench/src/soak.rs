//! `wsgate-bench soak`: many connections held for minutes across echo, channel and proxy routes,
//! with churn, to show that the server's memory, descriptors, tasks and latency stay flat and
//! that nothing is left behind once every client is gone.
//!
//! The client is raw TCP with wsgate-handshake's frame helpers: it answers pings, so idle
//! connections stay open through the server's idle timeout; a share of the connections send one
//! message a second (echo and proxy round trips are timed; one member per room publishes).
//! Every second a share of the connections is replaced, half closing cleanly and half vanishing
//! without a close frame. Figures are read from outside the server (`/proc`) and from its
//! metrics (`wsgate_runtime_tasks`), at the start (after a warm-up) and at the end.

use crate::load;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wsgate_handshake::frame::{client_frame, parse_server_frame, OpCode, Parsed};

/// What a soak run does.
#[derive(Debug, Clone, Copy)]
pub struct SoakPlan {
    /// Connections held at once.
    pub connections: usize,
    /// Seconds under load, after the warm-up.
    pub seconds: f64,
    /// Share of the connections replaced every second.
    pub churn: f64,
    /// Share of the connections that send a message every second.
    pub senders: f64,
    /// Seconds between opening every connection and the first figures.
    pub warmup: f64,
}

/// The server's figures at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Figures {
    /// Resident memory, bytes.
    pub rss: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Tasks alive in its runtime.
    pub tasks: u64,
    /// 99th percentile of echo and proxy round trips over the window, microseconds.
    pub p99_us: u64,
}

/// A whole soak run.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Connections held.
    pub connections: usize,
    /// Seconds measured.
    pub seconds: f64,
    /// Figures before any client connected.
    pub baseline: Figures,
    /// After the warm-up.
    pub start: Figures,
    /// At the end, before the clients leave.
    pub end: Figures,
    /// Descriptors once every client is gone (must equal the baseline's).
    pub fds_after: u64,
    /// Tasks once every client is gone.
    pub tasks_after: u64,
    /// Connections opened in all (the initial ones and every replacement).
    pub opened: u64,
    /// Connections that could not be opened.
    pub failed: u64,
    /// Round trips and channel deliveries counted.
    pub round_trips: u64,
    /// Channel messages received by members.
    pub deliveries: u64,
    /// RSS sampled through the run (seconds since the warm-up ended, bytes): a plateau is
    /// allocator caches filling, a steady climb a leak.
    pub rss_trend: Vec<(u64, u64)>,
}

/// What one connection does.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// Answers pings, otherwise quiet.
    Idle,
    /// Sends a timed message every second and waits for it back (echo or proxy).
    RoundTrip,
    /// A room member that publishes every second.
    Publisher,
}

/// Counters shared by every connection task.
#[derive(Default)]
struct Shared {
    round_trips: AtomicU64,
    deliveries: AtomicU64,
    opened: AtomicU64,
    failed: AtomicU64,
    window: Mutex<Option<Histogram<u64>>>,
}

impl Shared {
    fn record(&self, us: u64) {
        if let Ok(mut w) = self.window.lock() {
            if let Some(h) = w.as_mut() {
                let _ = h.record(us.max(1));
            }
        }
    }

    /// Starts a new latency window.
    fn open_window(&self) {
        if let Ok(mut w) = self.window.lock() {
            *w = Histogram::new_with_bounds(1, 60_000_000, 3).ok();
        }
    }

    /// The window's p99, and closes it.
    fn close_window(&self) -> u64 {
        self.window
            .lock()
            .ok()
            .and_then(|mut w| w.take())
            .map(|h| h.value_at_quantile(0.99))
            .unwrap_or(0)
    }
}

/// One connection slot: its task and, while it runs, the way to ask it to close cleanly.
struct Slot {
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

/// Which route and role slot `i` of `n` gets: half echo, three tenths channel (rooms of ten),
/// one fifth proxy.
fn assign(i: usize, n: usize, senders: f64) -> (String, Role) {
    let sends = |k: usize, m: usize| (k as f64) < (m as f64 * senders).ceil();
    let echo = n / 2;
    let channel = n * 3 / 10;
    if i < echo {
        let role = if sends(i, echo) {
            Role::RoundTrip
        } else {
            Role::Idle
        };
        ("/ws/echo".into(), role)
    } else if i < echo + channel {
        let k = i - echo;
        let role = if k % 10 == 0 {
            Role::Publisher
        } else {
            Role::Idle
        };
        (format!("/ws/chat/room{}", k / 10), role)
    } else {
        let k = i - echo - channel;
        let role = if sends(k, n - echo - channel) {
            Role::RoundTrip
        } else {
            Role::Idle
        };
        ("/ws/proxy".into(), role)
    }
}

/// A cheap generator for picking connections to replace (no cryptographic need).
struct XorShift(u64);
impl XorShift {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below.max(1) as u64) as usize
    }
}

/// Runs one connection until it is stopped (clean close), aborted (vanishes) or the server
/// ends it.
async fn connection(
    addr: SocketAddr,
    path: String,
    role: Role,
    source: IpAddr,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
    origin: Instant,
) {
    let mut s = match load::connect(addr, &path, &[], Some(source)).await {
        Ok(s) => s,
        Err(_) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    shared.opened.fetch_add(1, Ordering::Relaxed);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    // Senders start at a random phase, so the load is spread over each second.
    let phase = Duration::from_micros(origin.elapsed().subsec_micros() as u64);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + phase, Duration::from_secs(1));
    let sends = !matches!(role, Role::Idle);
    loop {
        tokio::select! {
            r = s.read(&mut chunk) => {
                let n = match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    let h = match parse_server_frame(&buf, 1 << 20) {
                        Parsed::Header(h) if buf.len() >= h.frame_len() => h,
                        Parsed::Header(_) | Parsed::Incomplete => break,
                        Parsed::Invalid(..) => return,
                    };
                    let payload = &buf[h.header_len..h.frame_len()];
                    match h.opcode {
                        OpCode::Ping => {
                            let pong = client_frame(OpCode::Pong, payload, [1, 2, 3, 4]);
                            if s.write_all(&pong).await.is_err() {
                                return;
                            }
                        }
                        OpCode::Close => {
                            let _ = s.write_all(&client_frame(OpCode::Close, &[], [1, 2, 3, 4])).await;
                            return;
                        }
                        OpCode::Binary if payload.len() >= 8 => {
                            let mut t = [0u8; 8];
                            t.copy_from_slice(&payload[..8]);
                            match role {
                                Role::RoundTrip => {
                                    let sent = u64::from_le_bytes(t);
                                    let now = origin.elapsed().as_micros() as u64;
                                    shared.record(now.saturating_sub(sent));
                                    shared.round_trips.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {
                                    shared.deliveries.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        _ => {}
                    }
                    buf.drain(..h.frame_len());
                }
                if buf.is_empty() && buf.capacity() > 4096 {
                    buf = Vec::with_capacity(1024);
                }
            }
            _ = tick.tick(), if sends => {
                let mut payload = [0u8; 32];
                payload[..8].copy_from_slice(&(origin.elapsed().as_micros() as u64).to_le_bytes());
                if s.write_all(&client_frame(OpCode::Binary, &payload, [9, 8, 7, 6])).await.is_err() {
                    return;
                }
            }
            _ = &mut stop => {
                let mut close = 1000u16.to_be_bytes().to_vec();
                close.extend_from_slice(b"soak churn");
                let _ = s.write_all(&client_frame(OpCode::Close, &close, [1, 2, 3, 4])).await;
                // Wait briefly for the server's close, then go.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Ok(n) = s.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
                return;
            }
        }
    }
}

fn source(i: usize) -> IpAddr {
    IpAddr::from([127, 0, (2 + i / 250 % 4) as u8, (2 + i % 250) as u8])
}

fn spawn(
    i: usize,
    plan: &SoakPlan,
    addr: SocketAddr,
    shared: &Arc<Shared>,
    origin: Instant,
    generation: usize,
) -> Slot {
    let (path, role) = assign(i, plan.connections, plan.senders);
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(connection(
        addr,
        path,
        role,
        source(i + generation * 7919),
        shared.clone(),
        rx,
        origin,
    ));
    Slot {
        task,
        stop: Some(tx),
    }
}

/// The server's figures now, from `/proc` and its metrics.
async fn figures(pid: u32, admin: SocketAddr, p99_us: u64) -> Figures {
    Figures {
        rss: crate::servers::rss_bytes(pid),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0),
        tasks: scrape(admin, "wsgate_runtime_tasks").await.unwrap_or(0),
        p99_us,
    }
}

/// One sample of the server's Prometheus text, by name.
async fn scrape(admin: SocketAddr, name: &str) -> Option<u64> {
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .ok()?
        .ok()?;
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Opens every connection (a bounded number at a time), holds them with churn for the planned
/// time, and reports the figures; `pid` and `admin` are the server's.
pub async fn soak(
    plan: SoakPlan,
    addr: SocketAddr,
    pid: u32,
    admin: SocketAddr,
    progress: impl Fn(&str),
) -> Result<SoakReport, String> {
    let origin = Instant::now();
    let shared = Arc::new(Shared::default());
    let baseline = figures(pid, admin, 0).await;
    let mut slots: Vec<Slot> = Vec::with_capacity(plan.connections);
    // Opened 64 at a time, spread over addresses, so no address has many handshakes in progress.
    for i in 0..plan.connections {
        slots.push(spawn(i, &plan, addr, &shared, origin, 0));
        if i % 64 == 63 {
            while shared.opened.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
                < (i as u64 + 1).saturating_sub(64)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.opened.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
        < plan.connections as u64
    {
        if Instant::now() > deadline {
            return Err("the connections did not open within 2 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress(&format!(
        "{} connections open ({} failed); warming up for {:.0} s",
        shared.opened.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed),
        plan.warmup
    ));

    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ origin.elapsed().as_nanos() as u64);
    let per_second = ((plan.connections as f64) * plan.churn).round() as usize;
    let window = (plan.seconds * 0.2).clamp(2.0, 30.0);
    let total = plan.warmup + plan.seconds;
    let started = Instant::now();
    let mut start = None;
    let mut end_window_open = false;
    let mut generation = 1;
    let mut second = 0u64;
    let mut rss_trend = Vec::new();
    let sample_every = ((plan.seconds / 10.0).round() as u64).max(1);
    loop {
        let elapsed = started.elapsed().as_secs_f64();
        if elapsed >= total {
            break;
        }
        if start.is_none() && elapsed >= plan.warmup && !end_window_open {
            shared.open_window();
            end_window_open = true;
        }
        if start.is_none() && elapsed >= plan.warmup + window {
            let p99 = shared.close_window();
            start = Some(figures(pid, admin, p99).await);
            end_window_open = false;
            progress("start figures taken");
        }
        if start.is_some() && !end_window_open && elapsed >= total - window {
            shared.open_window();
            end_window_open = true;
        }
        let warm = plan.warmup.ceil() as u64;
        if second >= warm && (second - warm) % sample_every == 0 {
            rss_trend.push((second - warm, crate::servers::rss_bytes(pid)));
        }
        // Churn: replace a share of the connections, half cleanly, half vanishing, spread
        // over the second in ten steps (a burst at the top of each second would be what the
        // round trips measure).
        for step in 0..10 {
            for k in per_second * step / 10..per_second * (step + 1) / 10 {
                let i = rng.next(slots.len());
                let new = spawn(i, &plan, addr, &shared, origin, generation);
                let old = std::mem::replace(&mut slots[i], new);
                generation += 1;
                match (k % 2, old.stop) {
                    (0, Some(stop)) => {
                        let _ = stop.send(());
                    }
                    _ => old.task.abort(),
                }
            }
            let next = started
                + Duration::from_secs(second)
                + Duration::from_millis(100 * (step as u64 + 1));
            tokio::time::sleep_until(next.into()).await;
        }
        second += 1;
    }
    let p99 = shared.close_window();
    let end = figures(pid, admin, p99).await;
    progress("end figures taken; closing every client");
    for s in slots {
        s.task.abort();
    }
    // Descriptors must come back to the baseline once the server has seen every client go.
    let mut after = figures(pid, admin, 0).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while after.fds != baseline.fds && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = figures(pid, admin, 0).await;
    }
    Ok(SoakReport {
        connections: plan.connections,
        seconds: plan.seconds,
        baseline,
        start: start.unwrap_or(end),
        end,
        fds_after: after.fds,
        tasks_after: after.tasks,
        opened: shared.opened.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
        round_trips: shared.round_trips.load(Ordering::Relaxed),
        deliveries: shared.deliveries.load(Ordering::Relaxed),
        rss_trend,
    })
}

/// How far the end may be from the start and still count as flat.
pub struct Tolerance {
    /// RSS may grow by this share (allocator caches fill under churn) ...
    pub rss_share: f64,
    /// ... plus this many bytes.
    pub rss_bytes: u64,
    /// Descriptors and tasks may differ by this share of the connections (those being
    /// replaced at the moment of measuring).
    pub count_share: f64,
    /// p99 may be this many times the start's, plus 2 ms.
    pub p99_factor: f64,
}

/// The tolerance the docs state.
pub const TOLERANCE: Tolerance = Tolerance {
    rss_share: 0.10,
    rss_bytes: 8 << 20,
    count_share: 0.02,
    p99_factor: 2.0,
};

impl SoakReport {
    /// Each figure at the start and the end of the load, judged against the tolerance.
    pub fn verdicts(&self, t: &Tolerance) -> Vec<Verdict> {
        let slack = (self.connections as f64 * t.count_share).ceil() as u64 + 2;
        let near = |a: u64, b: u64| a.abs_diff(b) <= slack;
        vec![
            verdict(
                "RSS",
                mib(self.start.rss),
                mib(self.end.rss),
                (self.end.rss as f64)
                    <= self.start.rss as f64 * (1.0 + t.rss_share) + t.rss_bytes as f64,
            ),
            verdict(
                "open descriptors",
                self.start.fds.to_string(),
                self.end.fds.to_string(),
                near(self.start.fds, self.end.fds),
            ),
            verdict(
                "runtime tasks",
                self.start.tasks.to_string(),
                self.end.tasks.to_string(),
                near(self.start.tasks, self.end.tasks),
            ),
            verdict(
                "round-trip p99",
                format!("{:.2} ms", self.start.p99_us as f64 / 1000.0),
                format!("{:.2} ms", self.end.p99_us as f64 / 1000.0),
                (self.end.p99_us as f64) <= self.start.p99_us as f64 * t.p99_factor + 2000.0,
            ),
        ]
    }

    /// No descriptor left behind once every client is gone.
    pub fn nothing_left_behind(&self) -> bool {
        self.fds_after == self.baseline.fds
    }

    /// The Markdown table.
    pub fn markdown(&self, t: &Tolerance) -> String {
        let mut md = format!(
            "### Soak: {} connections for {:.0} s (echo, channel, proxy; {} opened in all, {} failed)\n\n\
             | figure | start | end | flat |\n|---|---|---|---|\n",
            self.connections, self.seconds, self.opened, self.failed
        );
        for Verdict {
            what: name,
            start,
            end,
            flat: ok,
        } in self.verdicts(t)
        {
            md.push_str(&format!(
                "| {name} | {start} | {end} | {} |\n",
                if ok { "yes" } else { "NO" }
            ));
        }
        md.push_str(&format!(
            "| open descriptors once every client left | {} (before any client) | {} | {} |\n",
            self.baseline.fds,
            self.fds_after,
            if self.nothing_left_behind() {
                "yes"
            } else {
                "NO"
            }
        ));
        let trend: Vec<String> = self
            .rss_trend
            .iter()
            .map(|(t, b)| format!("{t} s: {:.1}", *b as f64 / (1 << 20) as f64))
            .collect();
        md.push_str(&format!(
            "\nRSS through the run (MiB): {}.\n",
            trend.join(", ")
        ));
        md.push_str(&format!(
            "\n{} round trips timed, {} channel deliveries. Flat means: RSS within +{:.0} % + {} MiB, descriptors \
             and tasks within {:.0} % of the connections (those being replaced when measured), p99 within {:.0}x + 2 ms.\n",
            self.round_trips,
            self.deliveries,
            t.rss_share * 100.0,
            t.rss_bytes >> 20,
            t.count_share * 100.0,
            t.p99_factor
        ));
        md
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// One figure of the soak, at the start and the end, and whether it stayed flat.
pub struct Verdict {
    /// What was measured, e.g. `RSS`.
    pub what: &'static str,
    /// After the warm-up.
    pub start: String,
    /// At the end of the load.
    pub end: String,
    /// Within the tolerance.
    pub flat: bool,
}

fn verdict(what: &'static str, start: String, end: String, flat: bool) -> Verdict {
    Verdict {
        what,
        start,
        end,
        flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_split_over_routes_and_roles() {
        let n = 1000;
        let all: Vec<_> = (0..n).map(|i| assign(i, n, 0.1)).collect();
        let count = |p: &str| all.iter().filter(|(path, _)| path.starts_with(p)).count();
        assert_eq!(
            (count("/ws/echo"), count("/ws/chat/"), count("/ws/proxy")),
            (500, 300, 200)
        );
        let senders = all
            .iter()
            .filter(|(_, r)| matches!(r, Role::RoundTrip))
            .count();
        assert_eq!(senders, 50 + 20);
        let publishers = all
            .iter()
            .filter(|(_, r)| matches!(r, Role::Publisher))
            .count();
        assert_eq!(publishers, 30, "one per room of ten");
    }
}
