//! What the admin page shows and acts on, kept for the server's life (reloads included): the
//! open connections (to find and close one), the last refusals with their request ids, counters
//! sampled once a second for the 15-minute chart, and the stop channel every connection listens
//! to. Nothing here is touched per message: connections register once when admitted, refusals
//! once each, and the sampler reads the message counters the metrics already keep.

use crate::metrics::Metrics;
use crate::out::Stop;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use wsgate_reasons::Reason;

/// Refusals kept for the tail and the request-id search.
pub const REFUSALS_KEPT: usize = 2_000;
/// Seconds of history for the chart (15 minutes, one sample a second).
pub const HISTORY_SECONDS: usize = 900;
/// Shards of the connection registry: registering takes one shard's lock, never a global one.
const SHARDS: usize = 16;

/// An open connection, as the admin page lists it. Kept for every open connection, so it is
/// small: the request id as its number, the route's name shared with every connection on it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client address the gates judged (differs behind a trusted proxy).
    pub client: IpAddr,
    /// The number of the request id its 101 carried ([`crate::ids::render_request`]).
    pub request: u64,
    /// The route pattern it matched, with its count of open connections (see
    /// [`Console::route_name`]).
    pub route: Arc<RouteName>,
    /// Who it authenticated as, if anyone.
    pub identity: Option<Box<str>>,
    /// When it was admitted (Unix milliseconds).
    pub opened_ms: u64,
}

impl ConnInfo {
    /// The request id the client was told.
    pub fn request_id(&self) -> String {
        crate::ids::render_request(self.request)
    }
}

impl Serialize for ConnInfo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ConnInfo", 6)?;
        st.serialize_field("peer", &self.peer)?;
        st.serialize_field("client", &self.client)?;
        st.serialize_field("request_id", &self.request_id())?;
        st.serialize_field("route", &*self.route.name)?;
        st.serialize_field("identity", &self.identity)?;
        st.serialize_field("opened_ms", &self.opened_ms)?;
        st.end()
    }
}

/// A route pattern as connections name it: one allocation per route, holding its count of open
/// connections (kept as they register and go, so the page's per-route figures cost no walk over
/// every connection).
#[derive(Debug)]
pub struct RouteName {
    /// The pattern.
    pub name: Box<str>,
    open: AtomicUsize,
}

/// A refusal, as the tail shows it: what the log line carries (never a credential: refusal
/// details are written without secrets, and the path is read without its query).
#[derive(Debug, Clone, Serialize)]
pub struct RefusalEntry {
    /// Position in the stream of refusals, for the page's "since" reads.
    pub seq: u64,
    /// When (Unix milliseconds).
    pub at_ms: u64,
    /// The id the client was told.
    pub request_id: String,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client address the gates judged.
    pub client: IpAddr,
    /// The matched route pattern, if a route matched.
    pub route: Option<String>,
    /// The request path (without its query).
    pub path: String,
    /// The reason code.
    pub code: &'static str,
    /// The HTTP status sent.
    pub status: u16,
    /// What was observed, for the operator.
    pub detail: String,
}

/// One second of the chart.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// The second (Unix seconds).
    pub t: u64,
    /// Handshakes admitted in that second.
    pub admitted: u64,
    /// Handshakes refused in that second, by code (codes with none left out).
    pub refused: BTreeMap<&'static str, u64>,
    /// Messages received from clients in that second.
    pub messages_in: u64,
    /// Messages sent to clients in that second.
    pub messages_out: u64,
    /// Connections open at its end.
    pub open: usize,
}

/// Which connections or refusals a page asks for; empty fields match everything.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// A reason code, exactly.
    pub code: Option<String>,
    /// A route pattern, exactly.
    pub route: Option<String>,
    /// The start of the client (or peer) address, e.g. `192.0.2.` or a whole address.
    pub address: Option<String>,
    /// Part of a request id (a pasted id may be cut or padded).
    pub request_id: Option<String>,
}

impl Filter {
    fn matches(
        &self,
        code: Option<&str>,
        route: Option<&str>,
        client: IpAddr,
        peer: SocketAddr,
        rid: &str,
    ) -> bool {
        let has = |want: &Option<String>, got: Option<&str>| match want {
            None => true,
            Some(w) => got == Some(w.as_str()),
        };
        has(&self.code, code)
            && has(&self.route, route)
            && self.address.as_deref().is_none_or(|a| {
                client.to_string().starts_with(a) || peer.to_string().starts_with(a)
            })
            && self
                .request_id
                .as_deref()
                .is_none_or(|r| rid.contains(r.trim()))
    }
}

/// The counters' totals at the previous sample.
#[derive(Default)]
struct Totals {
    admitted: u64,
    refused: Vec<u64>,
    messages_in: u64,
    messages_out: u64,
}

/// The admin page's state; one per server, shared by every configuration it runs.
pub struct Console {
    /// Shared with the connection's own task, so listing a connection costs the map slot only.
    conns: [Mutex<HashMap<u64, Arc<ConnInfo>>>; SHARDS],
    /// Route names handed to connections, one allocation per route rather than per connection.
    routes: Mutex<Vec<Arc<RouteName>>>,
    refusals: Mutex<VecDeque<RefusalEntry>>,
    next_seq: AtomicU64,
    admitted: AtomicU64,
    /// Refusals by reason, in [`Reason::ALL`] order.
    refused: Box<[AtomicU64]>,
    history: Mutex<VecDeque<Sample>>,
    last: Mutex<Totals>,
    stop: watch::Sender<Stop>,
    /// When the server started (Unix milliseconds), so the page tells a restart.
    pub started_ms: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

impl Console {
    /// An empty console.
    pub fn new() -> Console {
        Console {
            conns: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            routes: Mutex::new(Vec::new()),
            refusals: Mutex::new(VecDeque::new()),
            next_seq: AtomicU64::new(1),
            admitted: AtomicU64::new(0),
            refused: Reason::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            history: Mutex::new(VecDeque::new()),
            last: Mutex::new(Totals::default()),
            stop: watch::channel(Stop::default()).0,
            started_ms: unix_ms(SystemTime::now()),
        }
    }

    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnInfo>>> {
        self.conns[(id as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The shared name of a route pattern, for [`ConnInfo::route`].
    pub fn route_name(&self, path: &str) -> Arc<RouteName> {
        let mut names = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = names.iter().find(|n| *n.name == *path) {
            return n.clone();
        }
        let n = Arc::new(RouteName {
            name: path.into(),
            open: AtomicUsize::new(0),
        });
        names.push(n.clone());
        n
    }

    /// The channel an admitted connection watches for the shutdown or an operator's close.
    pub fn stop_signal(&self) -> watch::Receiver<Stop> {
        self.stop.subscribe()
    }

    /// Tells every connection the server is shutting down.
    pub fn shut_down(&self) {
        self.stop.send_modify(Stop::shut_down);
    }

    /// Lists an admitted connection until the returned registration is dropped.
    pub fn register(self: &Arc<Self>, id: u64, info: ConnInfo) -> Registration {
        self.admitted.fetch_add(1, Ordering::Relaxed);
        info.route.open.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(info);
        self.shard(id).insert(id, info.clone());
        Registration {
            console: self.clone(),
            id,
        }
    }

    /// Closes connection `id` (close 1008, "closed by an operator"); `None` if it is not open.
    pub fn close(&self, id: u64) -> Option<ConnInfo> {
        let info = self.shard(id).get(&id).cloned()?;
        self.stop.send_modify(|s| s.close(id));
        Some(ConnInfo::clone(&info))
    }

    /// Open connections matching `filter`, newest first (at most `max`), and how many matched.
    pub fn connections(&self, filter: &Filter, max: usize) -> (Vec<(u64, ConnInfo)>, usize) {
        let mut found = Vec::new();
        for shard in &self.conns {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            found.extend(
                shard
                    .iter()
                    .filter(|(_, c)| {
                        filter.matches(None, Some(&c.route.name), c.client, c.peer, &c.request_id())
                    })
                    .map(|(id, c)| (*id, ConnInfo::clone(c))),
            );
        }
        let total = found.len();
        found.sort_by_key(|c| std::cmp::Reverse(c.0));
        found.truncate(max);
        (found, total)
    }

    /// Open connections per route pattern (routes with none left out).
    pub fn open_by_route(&self) -> BTreeMap<String, usize> {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|r| (r.name.to_string(), r.open.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.conns
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Records a refusal for the tail and the chart.
    #[allow(clippy::too_many_arguments)]
    pub fn refusal(
        &self,
        reason: Reason,
        request_id: &str,
        peer: SocketAddr,
        client: IpAddr,
        route: Option<&str>,
        path: &str,
        detail: &str,
    ) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
        let entry = RefusalEntry {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            at_ms: unix_ms(SystemTime::now()),
            request_id: request_id.to_owned(),
            peer,
            client,
            route: route.map(str::to_owned),
            path: path.chars().take(200).collect(),
            code: reason.code(),
            status: reason.status(),
            detail: detail.to_owned(),
        };
        let mut tail = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == REFUSALS_KEPT {
            tail.pop_front();
        }
        tail.push_back(entry);
    }

    /// Refusals after `since` matching `filter`, newest first (at most `max`).
    pub fn refusals(&self, since: u64, filter: &Filter, max: usize) -> Vec<RefusalEntry> {
        let tail = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter()
            .rev()
            .take_while(|e| e.seq > since)
            .filter(|e| {
                filter.matches(
                    Some(e.code),
                    e.route.as_deref(),
                    e.client,
                    e.peer,
                    &e.request_id,
                )
            })
            .take(max)
            .cloned()
            .collect()
    }

    /// The last refusal's position (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed) - 1
    }

    /// Takes one second's sample: called once a second by the sampler task.
    pub fn sample(&self, metrics: &Metrics) -> Sample {
        let admitted = self.admitted.load(Ordering::Relaxed);
        let refused: Vec<u64> = self
            .refused
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let (messages_in, messages_out) = (metrics.messages_in.get(), metrics.messages_out.get());
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.refused.len() != refused.len() {
            last.refused = vec![0; refused.len()];
        }
        let sample = Sample {
            t: unix_ms(SystemTime::now()) / 1000,
            admitted: admitted - last.admitted,
            refused: Reason::ALL
                .iter()
                .zip(refused.iter().zip(&last.refused))
                .filter(|(_, (now, before))| now > before)
                .map(|(r, (now, before))| (r.code(), now - before))
                .collect(),
            messages_in: messages_in.saturating_sub(last.messages_in),
            messages_out: messages_out.saturating_sub(last.messages_out),
            open: self.open(),
        };
        *last = Totals {
            admitted,
            refused,
            messages_in,
            messages_out,
        };
        drop(last);
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if h.len() == HISTORY_SECONDS {
            h.pop_front();
        }
        h.push_back(sample.clone());
        sample
    }

    /// The samples after second `t`, oldest first (what a live page has not seen yet).
    pub fn history_since(&self, t: u64) -> Vec<Sample> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let newer = h.iter().rev().take_while(|s| s.t > t).count();
        h.iter().skip(h.len() - newer).cloned().collect()
    }

    /// The samples of the last 15 minutes, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Handshakes admitted and refused since start.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.admitted.load(Ordering::Relaxed),
            self.refused.iter().map(|c| c.load(Ordering::Relaxed)).sum(),
        )
    }
}

/// Keeps a connection listed while it lives; dropping it unlists it and writes the connection's
/// closing log line.
pub struct Registration {
    console: Arc<Console>,
    id: u64,
}

impl Registration {
    /// The connection's id (rooms and the operator's close know it by it).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(c) = self.console.shard(self.id).remove(&self.id) {
            c.route.open.fetch_sub(1, Ordering::Relaxed);
            let secs = (unix_ms(SystemTime::now()).saturating_sub(c.opened_ms)) as f64 / 1000.0;
            tracing::debug!(request_id = %c.request_id(), peer = %c.peer, route = %c.route.name, secs, "connection closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(rid: u64, client: &str, route: &Arc<RouteName>) -> ConnInfo {
        let client: IpAddr = client.parse().unwrap();
        ConnInfo {
            peer: SocketAddr::new(client, 40000),
            client,
            request: rid,
            route: route.clone(),
            identity: None,
            opened_ms: 0,
        }
    }

    #[test]
    fn connections_are_listed_while_registered_and_found_by_request_id() {
        let c = Arc::new(Console::new());
        let echo = c.route_name("/ws/echo");
        let a = c.register(1, info(0xaaaa1111, "192.0.2.1", &echo));
        let _b = c.register(2, info(0xbbbb2222, "192.0.2.2", &echo));
        assert_eq!(c.open(), 2);
        let f = Filter {
            request_id: Some(" 00000000bbbb2222 ".into()),
            ..Filter::default()
        };
        let (found, n) = c.connections(&f, 10);
        assert_eq!((n, found[0].0), (1, 2));
        assert_eq!(c.open_by_route()["/ws/echo"], 2);
        assert!(Arc::ptr_eq(
            &c.route_name("/ws/echo"),
            &c.route_name("/ws/echo")
        ));
        drop(a);
        assert_eq!(c.open(), 1);
        assert_eq!(c.open_by_route()["/ws/echo"], 1, "counted down as it goes");
        assert!(c.close(1).is_none(), "gone");
        let rx = c.stop_signal();
        assert!(c.close(2).is_some());
        assert!(rx.has_changed().unwrap());
    }

    #[test]
    fn the_tail_keeps_the_last_refusals_and_filters_them() {
        let c = Console::new();
        let peer: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        for i in 0..REFUSALS_KEPT + 5 {
            let reason = if i % 2 == 0 {
                Reason::OriginNotAllowed
            } else {
                Reason::AuthMissing
            };
            c.refusal(
                reason,
                &format!("rid{i}"),
                peer,
                peer.ip(),
                Some("/ws"),
                "/ws",
                "d",
            );
        }
        let all = c.refusals(0, &Filter::default(), usize::MAX);
        assert_eq!(all.len(), REFUSALS_KEPT);
        assert_eq!(all[0].request_id, format!("rid{}", REFUSALS_KEPT + 4));
        let origin = Filter {
            code: Some("origin.not_allowed".into()),
            address: Some("192.0.2.".into()),
            ..Filter::default()
        };
        assert!(c
            .refusals(0, &origin, 50)
            .iter()
            .all(|e| e.code == "origin.not_allowed"));
        let since = c.last_seq();
        c.refusal(Reason::AuthMissing, "new", peer, peer.ip(), None, "/x", "d");
        assert_eq!(c.refusals(since, &Filter::default(), 50).len(), 1);
        let m = Metrics::new();
        let s = c.sample(&m);
        assert_eq!(
            s.refused["auth.missing"],
            (REFUSALS_KEPT as u64 + 5) / 2 + 1
        );
        assert!(
            c.sample(&m).refused.is_empty(),
            "a second sample counts anew"
        );
        let first = c.history()[0].t;
        assert_eq!(c.history_since(first - 1).len(), 2);
        assert!(c.history_since(u64::MAX).is_empty());
    }
}
