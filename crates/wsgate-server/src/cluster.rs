//! Rooms across nodes: what a node's members publish is also published to Redis, and what other
//! nodes publish arrives from Redis into the local room. A node subscribes once per room that has
//! local members (never per connection) and unsubscribes when its last local member leaves.
//!
//! Delivery across nodes is at most once: Redis pub/sub keeps nothing for a node that is not
//! connected. When Redis is unreachable, local delivery goes on untouched; what local members
//! publish meanwhile is not sent to other nodes (counted as dropped), and the node reconnects
//! with backoff and jitter and subscribes again to every room it has. One publisher's messages
//! keep their order: a node publishes over one connection, in order, and Redis delivers a
//! channel's messages in the order it received them.
//!
//! The broker sits behind [`Broker`] (publish, subscribe, unsubscribe, a stream of what arrives),
//! so another one could be added; only Redis is built.

use crate::hub::{self, Room};
use crate::metrics::Metrics;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Version of the message envelope, first byte of every message.
const ENVELOPE: u8 = 1;
/// Publishes sent to Redis in one pipeline at most.
const PIPELINE: usize = 256;

/// What a room's node-level subscription needs from the hub.
pub(crate) enum Command {
    /// The room got its first local member.
    Subscribe(String, Weak<Room>),
    /// The room's last local member left.
    Unsubscribe(String),
    /// Local members published these messages (the envelope, and how many messages it holds).
    Publish(String, Bytes, u64),
    /// This node banned an address for a while: every node refuses it.
    Ban(std::net::IpAddr, Duration),
    /// A connection holding an identity lease ended: the lease goes (key, lease id).
    Release(String, String),
}

/// This node's link to the other nodes; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    node_id: Arc<str>,
    tx: mpsc::UnboundedSender<Command>,
    /// A connection for shared admission state, present while Redis is reachable.
    store: Arc<std::sync::Mutex<Option<redis::aio::MultiplexedConnection>>>,
    /// `PREFIX:`, the start of every key.
    prefix: Arc<str>,
    /// Identity leases this node holds (lease id → key), refreshed while their connections live.
    leases: Leases,
    /// How long a lease lives without a refresh: how long a dead node's connections still count.
    lease_ttl: Duration,
    /// Whether new handshakes are refused while Redis is unreachable.
    refuse_when_down: bool,
}

/// The identity leases of this node's connections.
type Leases = Arc<std::sync::Mutex<HashMap<String, String>>>;

/// One place among an identity's connections on all nodes; dropping it gives the place back.
struct IdentityLease {
    key: String,
    id: String,
    leases: Leases,
    tx: mpsc::UnboundedSender<Command>,
}

impl Drop for IdentityLease {
    fn drop(&mut self) {
        if let Ok(mut l) = self.leases.lock() {
            l.remove(&self.id);
        }
        let _ = self.tx.send(Command::Release(
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.id),
        ));
    }
}

/// Takes a lease on one of an identity's `max` places across the nodes, on Redis's clock:
/// expired leases (of a node that died) are dropped first. {1, n} taken, {0, n} full.
const LEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then
  return {0, n}
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return {1, n + 1}
";

/// Moves this node's leases' expiry forward (those still present).
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl * 2)
end
return 0
";

/// How long a handshake waits for the shared store before counting on its own node.
const STORE_TIMEOUT: Duration = Duration::from_millis(250);

/// A token bucket per client address, shared by the nodes, on Redis's clock (so the nodes' clocks
/// do not matter): returns {1, 0} for a token, {0, ms until the next} otherwise.
const BUCKET: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - at) / 1000 * rate)
local ok, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
else
  wait = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {ok, wait}
";

impl Cluster {
    /// Starts the link (it connects, and reconnects, on its own) and returns its handle.
    pub fn start(
        config: &crate::config::Cluster,
        metrics: Arc<Metrics>,
        bans: Option<Arc<wsgate_admission::firewall::Bans>>,
        shutdown: watch::Receiver<bool>,
    ) -> Cluster {
        let (tx, rx) = mpsc::unbounded_channel();
        let node_id: Arc<str> = Arc::from(config.node_id.as_str());
        let store = Arc::new(std::sync::Mutex::new(None));
        let leases: Leases = Arc::default();
        let link = Link {
            leases: leases.clone(),
            lease_ttl: config.lease_ttl,
            bans,
            bans_channel: format!("{}:bans", config.prefix),
            ban_prefix: format!("{}:ban:", config.prefix),
            store: store.clone(),
            config: config.clone(),
            shown: config.redacted_url(),
            prefix: format!("{}:room:", config.prefix),
            node_id: node_id.clone(),
            metrics,
            rooms: HashMap::new(),
        };
        tokio::spawn(link.run(rx, shutdown));
        Cluster {
            node_id,
            tx,
            store,
            prefix: Arc::from(format!("{}:", config.prefix)),
            leases,
            lease_ttl: config.lease_ttl,
            refuse_when_down: config.on_redis_down == crate::config::OnRedisDown::Refuse,
        }
    }

    /// `cluster.unavailable` while Redis is unreachable on a node configured to refuse then.
    pub fn ready(&self) -> Result<(), wsgate_handshake::Refusal> {
        let up = self.store.lock().map(|s| s.is_some()).unwrap_or(false);
        if up || !self.refuse_when_down {
            return Ok(());
        }
        Err(wsgate_handshake::Refusal::new(
            wsgate_handshake::Reason::ClusterUnavailable,
            "Redis is unreachable and cluster.on_redis_down = \"refuse\"",
        ))
    }

    /// Takes one of the `max` places `identity` may hold across all nodes; `None` when Redis is
    /// not reachable (or slow), so the node counts on its own meanwhile.
    pub async fn lease(
        &self,
        identity: &str,
        max: usize,
    ) -> Option<Result<wsgate_admission::Lease, wsgate_handshake::Refusal>> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut con = self.store.lock().ok()?.clone()?;
        let key = format!("{}identity:{identity}", self.prefix);
        let id = format!(
            "{}-{}",
            self.node_id,
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let script = redis::Script::new(LEASE);
        let mut invocation = script.key(&key);
        invocation
            .arg(max)
            .arg(&id)
            .arg(self.lease_ttl.as_millis() as u64);
        let call = invocation.invoke_async::<(i64, i64)>(&mut con);
        match tokio::time::timeout(STORE_TIMEOUT, call).await {
            Ok(Ok((1, _))) => {
                if let Ok(mut l) = self.leases.lock() {
                    l.insert(id.clone(), key.clone());
                }
                Some(Ok(Box::new(IdentityLease {
                    key,
                    id,
                    leases: self.leases.clone(),
                    tx: self.tx.clone(),
                })))
            }
            Ok(Ok((_, n))) => Some(Err(wsgate_handshake::Refusal::new(
                wsgate_handshake::Reason::LimitClientConnections,
                format!(
                    "identity {identity:?} has {n} open connections across the cluster, the limit is {max}"
                ),
            ))),
            _ => None,
        }
    }

    /// Takes a handshake token from the client's bucket shared by every node; `None` when Redis
    /// is not reachable (or slow), so the node counts on its own meanwhile.
    pub async fn rate(
        &self,
        client: std::net::IpAddr,
        rate: f64,
        burst: f64,
    ) -> Option<Result<(), wsgate_handshake::Refusal>> {
        let mut con = self.store.lock().ok()?.clone()?;
        let key = format!("{}rate:{client}", self.prefix);
        let script = redis::Script::new(BUCKET);
        let mut invocation = script.key(key);
        invocation.arg(rate).arg(burst);
        let call = invocation.invoke_async::<(i64, i64)>(&mut con);
        match tokio::time::timeout(STORE_TIMEOUT, call).await {
            Ok(Ok((1, _))) => Some(Ok(())),
            Ok(Ok((_, wait))) => Some(Err(wsgate_admission::limits::over_rate(
                client,
                rate,
                burst,
                Duration::from_millis(wait.max(0) as u64),
                true,
            ))),
            _ => None,
        }
    }

    /// This node's name.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Tells every node that this one banned `client` for `duration`.
    pub fn ban(&self, client: std::net::IpAddr, duration: Duration) {
        self.send(Command::Ban(client, duration));
    }

    pub(crate) fn send(&self, c: Command) {
        // Only fails once the link has stopped at shutdown.
        let _ = self.tx.send(c);
    }

    /// The message other nodes receive for frames published here: the envelope version, this
    /// node's name, the message and payload-byte counts, then the frames as members write them.
    pub(crate) fn envelope(&self, frames: &[u8], messages: u64, payload_bytes: u64) -> Bytes {
        let id = self.node_id.as_bytes();
        let mut b = BytesMut::with_capacity(1 + 1 + id.len() + 16 + frames.len());
        b.put_u8(ENVELOPE);
        b.put_u8(id.len() as u8);
        b.put_slice(id);
        b.put_u64_le(messages);
        b.put_u64_le(payload_bytes);
        b.put_slice(frames);
        b.freeze()
    }
}

/// Connects to the cluster's Redis and asks it to PING, for `wsgate check`: the error says what
/// failed (unreachable, wrong password, …) without the password.
pub fn probe(config: &crate::config::Cluster) -> Result<(), String> {
    let shown = config.redacted_url();
    let client = client(config)?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(3))
        .map_err(|e| explain(format!("cannot connect to {shown}: {e}")))?;
    redis::cmd("PING")
        .query::<String>(&mut con)
        .map(|_| ())
        .map_err(|e| format!("{shown} did not answer PING: {e}"))
}

/// A Redis client for the configured URL, with the password from its source and, for
/// `rediss://`, the CA and client certificate read now (so renewed files are used at the next
/// connection). Errors name the file or the source, never the secret.
fn client(config: &crate::config::Cluster) -> Result<redis::Client, String> {
    let shown = config.redacted_url();
    let url = config.connect_url()?;
    let tls = &config.tls;
    if tls.ca_file.is_none() && tls.client.is_none() {
        return redis::Client::open(url.as_str()).map_err(|e| format!("{shown}: {e}"));
    }
    let read = |key: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cluster.{key} {}: {e}", p.display()))
    };
    let root_cert = match &tls.ca_file {
        Some(p) => Some(read("ca_file", p)?),
        None => None,
    };
    let client_tls = match &tls.client {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read("cert_file", cert)?,
            client_key: read("key_file", key)?,
        }),
        None => None,
    };
    redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| format!("{shown}: {e}"))
}

/// A connection error with the fix for the TLS failures whose words do not say it.
fn explain(error: String) -> String {
    let hint = if error.contains("UnknownIssuer") {
        " (Redis's certificate is signed by a CA this machine does not trust: set cluster.ca_file to that CA's PEM file)"
    } else if error.contains("CertificateRequired") {
        " (Redis asks for a client certificate, tls-auth-clients yes: set cluster.cert_file and cluster.key_file)"
    } else if error.contains("NotValidForName") {
        " (Redis's certificate does not name the host in cluster.redis: connect by a name or IP address it lists)"
    } else if error.contains("Expired") {
        " (Redis's certificate has expired: renew it)"
    } else {
        ""
    };
    error + hint
}

/// A decoded message from another node.
struct Arrival {
    node: String,
    messages: u64,
    payload_bytes: u64,
    frames: Bytes,
}

fn open_envelope(payload: &[u8]) -> Option<Arrival> {
    let (&version, rest) = payload.split_first()?;
    if version != ENVELOPE {
        return None;
    }
    let (&n, rest) = rest.split_first()?;
    let node = std::str::from_utf8(rest.get(..n as usize)?)
        .ok()?
        .to_owned();
    let rest = rest.get(n as usize..)?;
    let word = |at: usize| -> Option<u64> {
        let b: [u8; 8] = rest.get(at..at + 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    };
    let (messages, payload_bytes) = (word(0)?, word(8)?);
    Some(Arrival {
        node,
        messages,
        payload_bytes,
        frames: Bytes::copy_from_slice(rest.get(16..)?),
    })
}

/// A message broker that carries rooms between nodes.
trait Broker {
    /// Publishes messages to a channel, in order.
    async fn publish(&mut self, batch: &[(String, Bytes)]) -> Result<(), String>;
    /// Starts receiving a channel.
    async fn subscribe(&mut self, channel: &str) -> Result<(), String>;
    /// Stops receiving a channel.
    async fn unsubscribe(&mut self, channel: &str) -> Result<(), String>;
    /// The next message received: channel and payload; `None` when the connection is lost.
    async fn next(&mut self) -> Option<(String, Vec<u8>)>;
}

/// Redis: one connection for publishing, one for the subscriptions.
struct Redis {
    publish: redis::aio::MultiplexedConnection,
    sink: redis::aio::PubSubSink,
    stream: redis::aio::PubSubStream,
}

impl Redis {
    /// Connects both connections, giving up after 5 s (a host that drops packets would otherwise
    /// hold the attempt for the system's TCP timeout, minutes).
    async fn connect(client: redis::Client) -> Result<Redis, String> {
        match tokio::time::timeout(Duration::from_secs(5), Redis::connect_now(client)).await {
            Ok(r) => r,
            Err(_) => Err("no answer within 5 s".into()),
        }
    }

    async fn connect_now(client: redis::Client) -> Result<Redis, String> {
        let publish = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let (sink, stream) = client
            .get_async_pubsub()
            .await
            .map_err(|e| e.to_string())?
            .split();
        Ok(Redis {
            publish,
            sink,
            stream,
        })
    }
}

impl Broker for Redis {
    async fn publish(&mut self, batch: &[(String, Bytes)]) -> Result<(), String> {
        let mut pipe = redis::pipe();
        for (channel, payload) in batch {
            pipe.cmd("PUBLISH").arg(channel).arg(&payload[..]).ignore();
        }
        pipe.query_async::<()>(&mut self.publish)
            .await
            .map_err(|e| e.to_string())
    }

    async fn subscribe(&mut self, channel: &str) -> Result<(), String> {
        self.sink
            .subscribe(channel)
            .await
            .map_err(|e| e.to_string())
    }

    async fn unsubscribe(&mut self, channel: &str) -> Result<(), String> {
        self.sink
            .unsubscribe(channel)
            .await
            .map_err(|e| e.to_string())
    }

    async fn next(&mut self) -> Option<(String, Vec<u8>)> {
        let m = self.stream.next().await?;
        Some((
            m.get_channel_name().to_owned(),
            m.get_payload_bytes().to_vec(),
        ))
    }
}

/// The task that owns the connection to Redis.
struct Link {
    /// Identity leases held here, renewed every third of `lease_ttl`.
    leases: Leases,
    lease_ttl: Duration,
    /// This node's bans, which other nodes' bans join (when `[firewall.ban]` is configured).
    bans: Option<Arc<wsgate_admission::firewall::Bans>>,
    /// `PREFIX:bans`, where bans are announced.
    bans_channel: String,
    /// `PREFIX:ban:`, the keys of the bans in force (with their expiry), for nodes that start later.
    ban_prefix: String,
    /// Where the admission store's connection is offered to handshakes.
    store: Arc<std::sync::Mutex<Option<redis::aio::MultiplexedConnection>>>,
    /// The settings; the password (from its file or variable) is read at every connection.
    config: crate::config::Cluster,
    /// The URL with its password hidden, for logs.
    shown: String,
    /// `PREFIX:room:`, the start of every channel name.
    prefix: String,
    node_id: Arc<str>,
    metrics: Arc<Metrics>,
    /// Rooms with local members, by key.
    rooms: HashMap<String, Weak<Room>>,
}

/// Why the connected loop ended.
enum Ended {
    /// The server is shutting down, or the hub is gone.
    Stop,
    /// The connection to Redis failed.
    Lost(String),
}

impl Link {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Command>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(100);
        let mut down_since: Option<std::time::Instant> = None;
        let mut first = true;
        loop {
            let client = client(&self.config);
            let connected = tokio::select! {
                r = async {
                    match client {
                        Ok(c) => Redis::connect(c).await.map_err(explain),
                        Err(e) => Err(e),
                    }
                } => r,
                _ = crate::out::stopped(&mut shutdown) => return,
            };
            let reason = match connected {
                Ok(mut redis) => {
                    if let Ok(mut s) = self.store.lock() {
                        *s = Some(redis.publish.clone());
                    }
                    self.metrics.cluster_up.set(1);
                    match down_since.take() {
                        Some(t) => tracing::info!(
                            redis = %self.shown,
                            after = ?t.elapsed(),
                            "cluster: Redis reachable again; rooms subscribed again"
                        ),
                        None if first => {
                            tracing::info!(redis = %self.shown, node = %self.node_id, "cluster: connected to Redis")
                        }
                        None => {}
                    }
                    if !first {
                        self.metrics.cluster_reconnects.inc();
                    }
                    first = false;
                    backoff = Duration::from_millis(100);
                    match self.connected(&mut redis, &mut rx, &mut shutdown).await {
                        Ended::Stop => return,
                        Ended::Lost(e) => e,
                    }
                }
                Err(e) => e,
            };
            self.metrics.cluster_up.set(0);
            if let Ok(mut s) = self.store.lock() {
                *s = None;
            }
            if down_since.is_none() {
                // Logged once per outage; local delivery goes on meanwhile.
                tracing::warn!(
                    redis = %self.shown,
                    error = %reason,
                    "cluster: Redis unreachable; local delivery continues, other nodes do not get this node's messages until it is back"
                );
                down_since = Some(std::time::Instant::now());
            }
            // Wait before reconnecting, keeping the room list current and counting what is lost.
            let jitter = Duration::from_millis(crate::ids::random_bytes::<1>()[0] as u64);
            let wait = tokio::time::sleep(backoff + jitter);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    _ = crate::out::stopped(&mut shutdown) => return,
                    c = rx.recv() => match c {
                        None => return,
                        Some(Command::Subscribe(k, w)) => { self.rooms.insert(k, w); }
                        Some(Command::Unsubscribe(k)) => { self.rooms.remove(&k); }
                        Some(Command::Publish(_, _, n)) => {
                            self.metrics.cluster_dropped.inc_by(n);
                        }
                        // A lease not renewed expires by itself.
                        Some(Command::Ban(..)) | Some(Command::Release(..)) => {}
                    },
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn channel(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn connected(
        &mut self,
        broker: &mut Redis,
        rx: &mut mpsc::UnboundedReceiver<Command>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        self.rooms.retain(|_, w| w.strong_count() > 0);
        if self.bans.is_some() {
            if let Err(e) = broker.subscribe(&self.bans_channel).await {
                return Ended::Lost(e);
            }
            if let Err(e) = self.load_bans(broker).await {
                return Ended::Lost(e);
            }
        }
        let channels: Vec<String> = self.rooms.keys().map(|k| self.channel(k)).collect();
        for c in channels {
            if let Err(e) = broker.subscribe(&c).await {
                return Ended::Lost(e);
            }
        }
        let mut batch: Vec<(String, Bytes)> = Vec::new();
        let mut messages = 0;
        let mut renew = tokio::time::interval((self.lease_ttl / 3).max(Duration::from_millis(100)));
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = crate::out::stopped(shutdown) => return Ended::Stop,
                _ = renew.tick() => {
                    if let Err(e) = self.renew_leases(broker).await {
                        return Ended::Lost(e);
                    }
                }
                c = rx.recv() => {
                    let Some(first) = c else {
                        return Ended::Stop;
                    };
                    let mut next = Some(first);
                    while let Some(c) = next.take() {
                        match c {
                            Command::Subscribe(k, w) => {
                                let ch = self.channel(&k);
                                self.rooms.insert(k, w);
                                if let Err(e) = broker.subscribe(&ch).await {
                                    return Ended::Lost(e);
                                }
                            }
                            Command::Unsubscribe(k) => {
                                self.rooms.remove(&k);
                                if let Err(e) = broker.unsubscribe(&self.channel(&k)).await {
                                    return Ended::Lost(e);
                                }
                            }
                            Command::Publish(k, payload, n) => {
                                batch.push((self.channel(&k), payload));
                                messages += n;
                            }
                            Command::Ban(ip, d) => {
                                if let Err(e) = self.announce_ban(broker, ip, d).await {
                                    return Ended::Lost(e);
                                }
                            }
                            Command::Release(key, id) => {
                                let r = redis::cmd("ZREM")
                                    .arg(&key)
                                    .arg(&id)
                                    .query_async::<()>(&mut broker.publish)
                                    .await;
                                if let Err(e) = r {
                                    return Ended::Lost(e.to_string());
                                }
                            }
                        }
                        if batch.len() < PIPELINE {
                            next = rx.try_recv().ok();
                        }
                    }
                    if !batch.is_empty() {
                        let n = std::mem::take(&mut messages);
                        let r = broker.publish(&batch).await;
                        batch.clear();
                        match r {
                            Ok(()) => {
                                self.metrics.cluster_published.inc_by(n);
                            }
                            Err(e) => {
                                self.metrics.cluster_dropped.inc_by(n);
                                return Ended::Lost(e);
                            }
                        }
                    }
                }
                m = broker.next() => match m {
                    None => return Ended::Lost("the subscription connection closed".into()),
                    Some((channel, payload)) => self.arrived(&channel, &payload),
                },
            }
        }
    }

    /// Moves the expiry of every lease this node holds forward, so only a dead node's expire.
    async fn renew_leases(&self, broker: &mut Redis) -> Result<(), String> {
        let held: Vec<(String, String)> = match self.leases.lock() {
            Ok(l) => l
                .iter()
                .map(|(id, key)| (key.clone(), id.clone()))
                .collect(),
            Err(_) => return Ok(()),
        };
        for chunk in held.chunks(500) {
            let script = redis::Script::new(RENEW);
            let mut invocation = script.prepare_invoke();
            invocation.arg(self.lease_ttl.as_millis() as u64);
            for (key, id) in chunk {
                invocation.key(key).arg(id);
            }
            invocation
                .invoke_async::<()>(&mut broker.publish)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Stores the ban with its expiry (for nodes that connect later) and announces it.
    async fn announce_ban(
        &self,
        broker: &mut Redis,
        ip: std::net::IpAddr,
        d: Duration,
    ) -> Result<(), String> {
        let ms = d.as_millis().max(1) as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("{}{ip}", self.ban_prefix))
            .arg(1)
            .arg("PX")
            .arg(ms)
            .ignore();
        pipe.cmd("PUBLISH")
            .arg(&self.bans_channel)
            .arg(format!("{ip} {ms}"))
            .ignore();
        pipe.query_async::<()>(&mut broker.publish)
            .await
            .map_err(|e| e.to_string())
    }

    /// The bans in force, read when (re)connecting: a node that starts, or comes back, after a
    /// ban still refuses the address.
    async fn load_bans(&self, broker: &mut Redis) -> Result<(), String> {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.ban_prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut broker.publish)
                .await
                .map_err(|e| e.to_string())?;
            for key in keys {
                let ttl: i64 = redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut broker.publish)
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(ip) = key.strip_prefix(&self.ban_prefix) {
                    self.banned(&format!("{ip} {ttl}"));
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// A ban announced by a node (`IP MILLISECONDS`): refused here too until it ends.
    fn banned(&self, text: &str) {
        let (Some(bans), Some((ip, ms))) = (&self.bans, text.split_once(' ')) else {
            return;
        };
        let (Ok(ip), Ok(ms)) = (ip.parse::<std::net::IpAddr>(), ms.parse::<i64>()) else {
            return;
        };
        if ms > 0 {
            let until = std::time::Instant::now() + Duration::from_millis(ms as u64);
            bans.ban_until(ip, until);
        }
    }

    /// Another node's message: into the local room, unless this node sent it.
    fn arrived(&self, channel: &str, payload: &[u8]) {
        if channel == self.bans_channel {
            if let Ok(text) = std::str::from_utf8(payload) {
                self.banned(text);
            }
            return;
        }
        let Some(a) = open_envelope(payload) else {
            tracing::debug!(
                channel,
                "cluster: a message that is not wsgate's envelope, ignored"
            );
            return;
        };
        if a.node == *self.node_id {
            return;
        }
        let Some(key) = channel.strip_prefix(&self.prefix) else {
            return;
        };
        if let Some(room) = self.rooms.get(key).and_then(Weak::upgrade) {
            self.metrics.cluster_received.inc_by(a.messages);
            hub::append_remote(&room, a.frames, a.messages, a.payload_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_foreign_payloads_are_ignored() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let c = Cluster {
            node_id: Arc::from("node-a"),
            tx,
            store: Arc::default(),
            prefix: Arc::from("t:"),
            leases: Arc::default(),
            lease_ttl: Duration::from_secs(15),
            refuse_when_down: false,
        };
        let e = c.envelope(b"\x81\x02hi", 1, 2);
        let a = open_envelope(&e).unwrap();
        assert_eq!(
            (a.node.as_str(), a.messages, a.payload_bytes),
            ("node-a", 1, 2)
        );
        assert_eq!(&a.frames[..], b"\x81\x02hi");
        assert!(open_envelope(b"hello").is_none());
        assert!(open_envelope(&e[..5]).is_none());
        assert!(open_envelope(b"").is_none());
    }
}
