//! The limits gate, last in the pipeline: how fast one address may open handshakes (a token
//! bucket), how many connections one address or identity may hold open, how many the whole
//! server may ([`Connections`]), and how many handshakes one address may have in progress.
//!
//! Time is passed in, so every rule is tested without waiting.

use crate::{Reason, Refusal};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Addresses tracked for rates at most; full buckets are dropped first when it is reached.
const MAX_BUCKETS: usize = 100_000;

/// Limits per client; `None` disables a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimitPolicy {
    /// Sustained handshakes per second per address, and the burst allowed above it.
    pub rate: Option<(f64, f64)>,
    /// Open connections per client address.
    pub per_client: Option<usize>,
    /// Open connections per authenticated identity.
    pub per_identity: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<IpAddr, Bucket>,
    by_client: HashMap<IpAddr, usize>,
    by_identity: HashMap<String, usize>,
}

/// The shared counters behind the limits gate.
#[derive(Debug)]
pub struct Limits {
    /// Replaced by a configuration reload; the counters in `state` carry on.
    policy: std::sync::RwLock<LimitPolicy>,
    state: Mutex<State>,
}

/// A connection counted against its address and identity; dropping it gives the slots back.
#[derive(Debug)]
pub struct Held {
    limits: Arc<Limits>,
    client: Option<IpAddr>,
    identity: Option<String>,
}

impl Limits {
    /// Counters for a policy.
    pub fn new(policy: LimitPolicy) -> Arc<Limits> {
        Arc::new(Limits {
            policy: std::sync::RwLock::new(policy),
            state: Mutex::new(State::default()),
        })
    }

    /// The policy a reloaded configuration gives, for the handshakes from now on; connections
    /// already counted stay counted.
    pub fn set_policy(&self, policy: LimitPolicy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    fn policy(&self) -> LimitPolicy {
        *self.policy.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The handshake rate and burst per client address, if limited.
    pub fn rate(&self) -> Option<(f64, f64)> {
        self.policy().rate
    }

    /// Takes a handshake token and a connection slot, or refuses with `limit.rate` /
    /// `limit.client_connections`.
    pub fn admit(
        self: &Arc<Self>,
        client: IpAddr,
        identity: Option<&str>,
        now: Instant,
    ) -> Result<Held, Refusal> {
        self.admit_with(client, identity, now, true)
    }

    /// The cap on open connections per identity, if any.
    pub fn per_identity(&self) -> Option<usize> {
        self.policy().per_identity
    }

    /// [`Limits::admit`] with the rate counted elsewhere (a cluster's shared bucket) when
    /// `count_rate` is false; `identity` is `None` when its connections are counted elsewhere too.
    pub fn admit_with(
        self: &Arc<Self>,
        client: IpAddr,
        identity: Option<&str>,
        now: Instant,
        count_rate: bool,
    ) -> Result<Held, Refusal> {
        let policy = self.policy();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((rate, burst)) = policy.rate.filter(|_| count_rate) {
            if st.buckets.len() >= MAX_BUCKETS && !st.buckets.contains_key(&client) {
                st.buckets.retain(|_, b| {
                    b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst
                });
            }
            let b = st.buckets.entry(client).or_insert(Bucket {
                tokens: burst,
                at: now,
            });
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
            b.at = now;
            if b.tokens < 1.0 {
                let wait = ((1.0 - b.tokens) / rate).ceil().max(1.0);
                return Err(Refusal::new(
                    Reason::LimitRate,
                    format!("client {client} exceeds {rate} handshakes/s (burst {burst})"),
                )
                .retry_after(Duration::from_secs_f64(wait)));
            }
            b.tokens -= 1.0;
        }
        let busy = |what: String| Err(Refusal::new(Reason::LimitClientConnections, what));
        let n_client = st.by_client.get(&client).copied().unwrap_or(0);
        if let Some(max) = policy.per_client {
            if n_client >= max {
                return busy(format!(
                    "client {client} has {n_client} open connections, the limit is {max}"
                ));
            }
        }
        if let (Some(max), Some(id)) = (policy.per_identity, identity) {
            let n = st.by_identity.get(id).copied().unwrap_or(0);
            if n >= max {
                return busy(format!(
                    "identity {id:?} has {n} open connections, the limit is {max}"
                ));
            }
        }
        let track_client = policy.per_client.is_some();
        if track_client {
            *st.by_client.entry(client).or_default() += 1;
        }
        let identity = match (policy.per_identity, identity) {
            (Some(_), Some(id)) => {
                *st.by_identity.entry(id.to_owned()).or_default() += 1;
                Some(id.to_owned())
            }
            _ => None,
        };
        Ok(Held {
            limits: self.clone(),
            client: track_client.then_some(client),
            identity,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut st = self.limits.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = self.client {
            if let Some(n) = st.by_client.get_mut(&c) {
                *n -= 1;
                if *n == 0 {
                    st.by_client.remove(&c);
                }
            }
        }
        if let Some(id) = &self.identity {
            if let Some(n) = st.by_identity.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    st.by_identity.remove(id);
                }
            }
        }
    }
}

/// The refusal for a client over its handshake rate; `wait` is when a token is back.
pub fn over_rate(client: IpAddr, rate: f64, burst: f64, wait: Duration, shared: bool) -> Refusal {
    let whole = if shared { " across the cluster" } else { "" };
    Refusal::new(
        Reason::LimitRate,
        format!("client {client} exceeds {rate} handshakes/s (burst {burst}){whole}"),
    )
    .retry_after(wait.max(Duration::from_secs(1)))
}

/// Open WebSocket connections across all listeners, against `limits.max_connections`: the last
/// step of admission, taken once everything else said yes.
#[derive(Debug)]
pub struct Connections {
    max: AtomicUsize,
    open: AtomicUsize,
}

/// One open connection; dropping it frees the place.
#[derive(Debug)]
pub struct Slot(Arc<Connections>);

impl Connections {
    /// A server-wide count with room for `max` connections.
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max: AtomicUsize::new(max),
            open: AtomicUsize::new(0),
        })
    }

    /// A reloaded configuration's limit, for the connections from now on (none is closed).
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::SeqCst);
    }

    /// Takes a place, or refuses with 503 `limit.connections` when the server is full.
    pub fn acquire(self: &Arc<Self>) -> Result<Slot, Refusal> {
        let prev = self.open.fetch_add(1, Ordering::SeqCst);
        let max = self.max.load(Ordering::SeqCst);
        if prev >= max {
            self.open.fetch_sub(1, Ordering::SeqCst);
            return Err(Refusal::new(
                Reason::LimitConnections,
                format!("all {max} connections of limits.max_connections are open"),
            ));
        }
        Ok(Slot(self.clone()))
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Connections of each address that have not yet delivered a request head (still in their TLS
/// handshake, or sending the head slowly). Bounding them per address keeps a client that opens
/// connections and trickles bytes from holding the server's handshake capacity; every
/// connection still has `handshake_timeout` to finish.
#[derive(Debug)]
pub struct InProgress {
    max: AtomicUsize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted as in progress; dropping it (when its request head has arrived, or
/// the connection ended) gives the count back.
#[derive(Debug)]
pub struct Pending {
    of: Arc<InProgress>,
    client: IpAddr,
}

impl InProgress {
    /// Counters allowing `max` handshakes in progress per address.
    pub fn new(max: usize) -> Arc<InProgress> {
        Arc::new(InProgress {
            max: AtomicUsize::new(max),
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A reloaded configuration's limit, for the connections from now on.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::SeqCst);
    }

    /// Counts a new connection of `client`, or refuses with `limit.handshakes_in_progress`.
    pub fn enter(self: &Arc<Self>, client: IpAddr) -> Result<Pending, Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(client).or_insert(0);
        let max = self.max.load(Ordering::SeqCst);
        if *n >= max {
            return Err(Refusal::new(
                Reason::LimitHandshakesInProgress,
                format!(
                    "client {client} already has {n} connections in their TLS handshake or request head (limits.max_handshakes_per_client = {max})"
                ),
            ));
        }
        *n += 1;
        Ok(Pending {
            of: self.clone(),
            client,
        })
    }

    /// Connections in progress of one address (for tests and the log).
    pub fn count(&self, client: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&client).copied().unwrap_or(0)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut counts = self.of.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_bounded_and_given_back() {
        let c = Connections::new(2);
        let a = c.acquire().unwrap();
        let _b = c.acquire().unwrap();
        assert_eq!(c.acquire().unwrap_err().reason, Reason::LimitConnections);
        assert_eq!(c.open(), 2);
        drop(a);
        assert!(c.acquire().is_ok());
        assert_eq!(c.open(), 1);
    }

    #[test]
    fn handshakes_in_progress_are_bounded_per_address_and_released_on_drop() {
        let p = InProgress::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = p.enter(a).unwrap();
        let _second = p.enter(a).unwrap();
        let e = p.enter(a).unwrap_err();
        assert_eq!(e.reason, Reason::LimitHandshakesInProgress);
        assert!(p.enter(b).is_ok(), "another address is not affected");
        drop(first);
        assert_eq!(p.count(a), 1);
        assert!(p.enter(a).is_ok());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn token_bucket_refills_at_the_rate_and_says_when_to_retry() {
        let l = Limits::new(LimitPolicy {
            rate: Some((1.0, 2.0)),
            ..Default::default()
        });
        let t = Instant::now();
        let a = ip("192.0.2.1");
        let _h1 = l.admit(a, None, t).unwrap();
        let _h2 = l.admit(a, None, t).unwrap();
        let e = l.admit(a, None, t).unwrap_err();
        assert_eq!(e.reason, Reason::LimitRate);
        assert_eq!(e.retry_after, Some(Duration::from_secs(1)));
        assert!(l.admit(ip("192.0.2.2"), None, t).is_ok(), "per address");
        assert!(
            l.admit(a, None, t + Duration::from_millis(1100)).is_ok(),
            "refilled"
        );
    }

    #[test]
    fn connection_caps_per_client_and_identity_release_on_drop() {
        let l = Limits::new(LimitPolicy {
            per_client: Some(2),
            per_identity: Some(1),
            ..Default::default()
        });
        let t = Instant::now();
        let a = ip("192.0.2.1");
        let h1 = l.admit(a, Some("alice"), t).unwrap();
        let e = l.admit(ip("192.0.2.9"), Some("alice"), t).unwrap_err();
        assert_eq!(e.reason, Reason::LimitClientConnections);
        let _h2 = l.admit(a, Some("bob"), t).unwrap();
        assert!(l.admit(a, None, t).is_err(), "address at its cap");
        drop(h1);
        assert!(
            l.admit(ip("192.0.2.9"), Some("alice"), t).is_ok(),
            "released on drop"
        );
        let st = l.state.lock().unwrap();
        assert_eq!(st.by_client.get(&a), Some(&1));
    }
}
