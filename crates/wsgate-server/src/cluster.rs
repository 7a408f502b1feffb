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
    /// An operator lifted a ban: every node admits the address again.
    Lift(std::net::IpAddr),
    /// A connection holding an identity lease ended: the lease goes (key, lease id).
    Release(String, String),
}

/// This node's link to the other nodes; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    node_id: Arc<str>,
    tx: mpsc::UnboundedSender<Command>,
    /// A connection for shared admission state, present while Redis is reachable.
    store: Arc<std::sync::Mutex<Option<Store>>>,
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

/// Moves the expiry of this node's leases on one identity forward (those still present). One key
/// a call: a Redis Cluster refuses a script whose keys live on different shards.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 0
";

/// Records a ban in the one sorted set of bans (address → end, on Redis's clock), keeping the
/// later end when the address is already banned; the set expires with its last ban.
const BAN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ends = now + tonumber(ARGV[2])
local old = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if not old or old < ends then
  redis.call('ZADD', KEYS[1], ends, ARGV[1])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(last[2]) - now))
return 0
";

/// The bans in force, as `ADDRESS MILLISECONDS_LEFT`.
const BANS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'WITHSCORES')
local out = {}
for i = 1, #r, 2 do
  out[#out + 1] = r[i] .. ' ' .. string.format('%d', tonumber(r[i + 1]) - now)
end
return out
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
        bans: Arc<wsgate_admission::firewall::Bans>,
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
            bans_key: format!("{}:bans", config.prefix),
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

    /// Tells every node that a ban on `client` was lifted.
    pub fn lift(&self, client: std::net::IpAddr) {
        self.send(Command::Lift(client));
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
/// failed (unreachable, wrong password, an untrusted certificate, …) without the password.
pub fn probe(config: &crate::config::Cluster) -> Result<(), String> {
    let shown = config.redacted_url();
    let ping = |r: redis::RedisResult<String>| {
        r.map(|_| ())
            .map_err(|e| explain(format!("{shown} did not answer PING: {e}")))
    };
    let timeout = Duration::from_secs(3);
    if config.sharded {
        // The seed first, so a single Redis is told apart from a cluster that does not answer.
        let mut seed = client(config)?
            .get_connection_with_timeout(timeout)
            .map_err(|e| explain(format!("cannot connect to {shown}: {e}")))?;
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query::<String>(&mut seed)
            .map_err(|e| explain(format!("{shown}: {e}")))?;
        let client = cluster_client(config, None)?;
        let mut con = client.get_connection().map_err(|e| {
            explain(format!(
                "cannot connect to the Redis Cluster at {shown}: {e}"
            ))
        })?;
        return ping(redis::cmd("PING").query(&mut con));
    }
    let client = client(config)?;
    let mut con = client
        .get_connection_with_timeout(timeout)
        .map_err(|e| explain(format!("cannot connect to {shown}: {e}")))?;
    ping(redis::cmd("PING").query(&mut con))?;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query(&mut con)
        .map_err(|e| format!("{shown}: {e}"))?;
    not_a_cluster(&info).map_err(|e| format!("{shown}: {e}"))
}

/// A single Redis's `INFO cluster`: an error when it is in fact a Redis Cluster node, where the
/// keys of limits, bans and leases would be refused with MOVED on other shards.
fn not_a_cluster(info: &str) -> Result<(), String> {
    if info.contains("cluster_enabled:1") {
        return Err(explain(
            "this Redis is a Redis Cluster node (MOVED for keys of other shards)".into(),
        ));
    }
    Ok(())
}

/// For `rediss://`: the CA and client certificate, read now (so renewed files are used at the
/// next connection); `None` when neither is configured. Errors name the file.
fn certificates(config: &crate::config::Cluster) -> Result<Option<redis::TlsCertificates>, String> {
    let tls = &config.tls;
    if tls.ca_file.is_none() && tls.client.is_none() {
        return Ok(None);
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
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// A client of one Redis for the configured URL, with the password from its source and the TLS
/// files. Errors name the file or the source, never the secret.
fn client(config: &crate::config::Cluster) -> Result<redis::Client, String> {
    let shown = config.redacted_url();
    let url = config.connect_url()?;
    match certificates(config)? {
        None => redis::Client::open(url.as_str()),
        Some(certs) => redis::Client::build_with_tls(url.as_str(), certs),
    }
    .map_err(|e| format!("{shown}: {e}"))
}

/// A client of a Redis Cluster, the URL's node being where it learns the others; RESP3, so
/// sharded subscriptions arrive as pushes on `pushes`.
fn cluster_client(
    config: &crate::config::Cluster,
    pushes: Option<mpsc::UnboundedSender<redis::PushInfo>>,
) -> Result<redis::cluster::ClusterClient, String> {
    let shown = config.redacted_url();
    let url = config.connect_url()?;
    let mut b = redis::cluster::ClusterClientBuilder::new([url.as_str()])
        .use_protocol(redis::ProtocolVersion::RESP3)
        .connection_timeout(Duration::from_secs(3))
        .retries(2);
    if let Some(certs) = certificates(config)? {
        b = b.certs(certs);
    }
    if let Some(tx) = pushes {
        b = b.push_sender(tx);
    }
    b.build().map_err(|e| format!("{shown}: {e}"))
}

/// A connection error with the fix for the failures whose words do not say it.
fn explain(error: String) -> String {
    let hint = if error.contains("UnknownIssuer") {
        " (Redis's certificate is signed by a CA this machine does not trust: set cluster.ca_file to that CA's PEM file)"
    } else if error.contains("CertificateRequired") {
        " (Redis asks for a client certificate, tls-auth-clients yes: set cluster.cert_file and cluster.key_file)"
    } else if error.contains("NotValidForName") {
        " (Redis's certificate does not name the host in cluster.redis: connect by a name or IP address it lists)"
    } else if error.contains("Expired") {
        " (Redis's certificate has expired: renew it)"
    } else if error.contains("cluster support disabled") {
        " (cluster.sharded = true needs a Redis Cluster, cluster-enabled yes; for a single Redis remove sharded)"
    } else if error.contains("MOVED") || error.contains("CLUSTERDOWN") {
        " (this Redis is part of a Redis Cluster: set cluster.sharded = true)"
    } else if error.contains("WRONGPASS")
        || error.contains("NOAUTH")
        || error.contains("AuthenticationFailed")
    {
        " (Redis refused the password: check cluster.password_file, cluster.password_env or the redis://:PASSWORD@HOST URL)"
    } else if error.contains("Connection refused") {
        " (nothing listens there: check the host and port in cluster.redis, and that Redis runs)"
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
    /// Publishes messages to their channels, each channel's in order.
    async fn publish(&mut self, batch: &[(String, Bytes)]) -> Result<(), String>;
    /// Starts receiving a channel.
    async fn subscribe(&mut self, channel: &str) -> Result<(), String>;
    /// Stops receiving a channel.
    async fn unsubscribe(&mut self, channel: &str) -> Result<(), String>;
    /// The next message received: channel and payload; `None` when the connection is lost.
    async fn next(&mut self) -> Option<(String, Vec<u8>)>;
}

/// The connection for commands (limits, bans, leases, publishing): to one Redis, or to a Redis
/// Cluster, which sends each key's command to the shard that holds it.
#[derive(Clone)]
pub(crate) enum Store {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Store {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Store::Single(c) => c.req_packed_command(cmd),
            Store::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Store::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Store::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Store::Single(c) => c.get_db(),
            Store::Cluster(c) => c.get_db(),
        }
    }
}

/// What arrives on the subscriptions.
enum Subscriptions {
    /// One Redis: a connection of its own in subscriber mode (`SUBSCRIBE`/`PUBLISH`).
    Single {
        sink: redis::aio::PubSubSink,
        stream: redis::aio::PubSubStream,
    },
    /// A Redis Cluster: sharded channels (`SSUBSCRIBE`/`SPUBLISH`), each on its shard's
    /// connection; messages come as RESP3 pushes.
    Sharded(mpsc::UnboundedReceiver<redis::PushInfo>),
}

/// Redis: a connection for commands and the subscriptions.
struct Redis {
    store: Store,
    subscriptions: Subscriptions,
}

impl Redis {
    /// Connects, giving up after 5 s (a host that drops packets would otherwise hold the attempt
    /// for the system's TCP timeout, minutes).
    async fn connect(config: &crate::config::Cluster) -> Result<Redis, String> {
        let attempt = async {
            if config.sharded {
                Redis::connect_cluster(config).await
            } else {
                Redis::connect_single(config).await
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(r) => r.map_err(explain),
            Err(_) => Err("no answer within 5 s".into()),
        }
    }

    async fn connect_single(config: &crate::config::Cluster) -> Result<Redis, String> {
        let client = client(config)?;
        let mut store = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut store)
            .await
            .map_err(|e| e.to_string())?;
        not_a_cluster(&info)?;
        let (sink, stream) = client
            .get_async_pubsub()
            .await
            .map_err(|e| e.to_string())?
            .split();
        Ok(Redis {
            store: Store::Single(store),
            subscriptions: Subscriptions::Single { sink, stream },
        })
    }

    async fn connect_cluster(config: &crate::config::Cluster) -> Result<Redis, String> {
        // The seed first, so a single Redis is told apart from a cluster that does not answer.
        let mut seed = client(config)?
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async::<String>(&mut seed)
            .await
            .map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let client = cluster_client(config, Some(tx))?;
        let store = client
            .get_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Redis {
            store: Store::Cluster(store),
            subscriptions: Subscriptions::Sharded(rx),
        })
    }

    /// Publishes one message outside the room traffic (a ban's announcement).
    async fn publish_one(&mut self, channel: &str, payload: &[u8]) -> Result<(), String> {
        let verb = match self.subscriptions {
            Subscriptions::Single { .. } => "PUBLISH",
            Subscriptions::Sharded(_) => "SPUBLISH",
        };
        redis::cmd(verb)
            .arg(channel)
            .arg(payload)
            .query_async::<()>(&mut self.store)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Broker for Redis {
    async fn publish(&mut self, batch: &[(String, Bytes)]) -> Result<(), String> {
        match (&mut self.store, &self.subscriptions) {
            (Store::Single(con), _) => {
                let mut pipe = redis::pipe();
                for (channel, payload) in batch {
                    pipe.cmd("PUBLISH").arg(channel).arg(&payload[..]).ignore();
                }
                pipe.query_async::<()>(con).await.map_err(|e| e.to_string())
            }
            (Store::Cluster(con), _) => {
                // A pipeline must stay on one shard: one per channel (in order), all at once.
                let mut by_channel: Vec<(&str, redis::Pipeline)> = Vec::new();
                for (channel, payload) in batch {
                    let at = match by_channel.iter().position(|(c, _)| *c == channel.as_str()) {
                        Some(i) => i,
                        None => {
                            by_channel.push((channel, redis::pipe()));
                            by_channel.len() - 1
                        }
                    };
                    by_channel[at]
                        .1
                        .cmd("SPUBLISH")
                        .arg(channel)
                        .arg(&payload[..])
                        .ignore();
                }
                let sends = by_channel.iter().map(|(_, pipe)| {
                    let mut con = con.clone();
                    async move { pipe.query_async::<()>(&mut con).await }
                });
                futures_util::future::try_join_all(sends)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    async fn subscribe(&mut self, channel: &str) -> Result<(), String> {
        match (&mut self.subscriptions, &mut self.store) {
            (Subscriptions::Single { sink, .. }, _) => sink.subscribe(channel).await,
            (Subscriptions::Sharded(_), Store::Cluster(con)) => con.ssubscribe(channel).await,
            (Subscriptions::Sharded(_), Store::Single(_)) => return Err("not a cluster".into()),
        }
        .map_err(|e| e.to_string())
    }

    async fn unsubscribe(&mut self, channel: &str) -> Result<(), String> {
        match (&mut self.subscriptions, &mut self.store) {
            (Subscriptions::Single { sink, .. }, _) => sink.unsubscribe(channel).await,
            (Subscriptions::Sharded(_), Store::Cluster(con)) => con.sunsubscribe(channel).await,
            (Subscriptions::Sharded(_), Store::Single(_)) => return Err("not a cluster".into()),
        }
        .map_err(|e| e.to_string())
    }

    async fn next(&mut self) -> Option<(String, Vec<u8>)> {
        match &mut self.subscriptions {
            Subscriptions::Single { stream, .. } => {
                let m = stream.next().await?;
                Some((
                    m.get_channel_name().to_owned(),
                    m.get_payload_bytes().to_vec(),
                ))
            }
            Subscriptions::Sharded(rx) => loop {
                let push = rx.recv().await?;
                match push.kind {
                    // A shard's connection dropped: start again (the outage is logged and
                    // every room subscribed again), rather than guess what was missed.
                    redis::PushKind::Disconnection => return None,
                    redis::PushKind::SMessage => {
                        let mut data = push.data.into_iter();
                        let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
                            continue;
                        };
                        let (Ok(channel), Ok(payload)) = (
                            redis::from_redis_value::<String>(channel),
                            redis::from_redis_value::<Vec<u8>>(payload),
                        ) else {
                            continue;
                        };
                        return Some((channel, payload));
                    }
                    // Confirmations of (un)subscribing.
                    _ => continue,
                }
            },
        }
    }
}

/// The task that owns the connection to Redis.
struct Link {
    /// Identity leases held here, renewed every third of `lease_ttl`.
    leases: Leases,
    lease_ttl: Duration,
    /// This node's bans, which other nodes' bans join.
    bans: Arc<wsgate_admission::firewall::Bans>,
    /// `PREFIX:bans`, where bans are announced.
    bans_channel: String,
    /// `PREFIX:bans`, the sorted set of the bans in force (address → end), for nodes that start
    /// later. (The channel of the same name is another namespace.)
    bans_key: String,
    /// Where the admission store's connection is offered to handshakes.
    store: Arc<std::sync::Mutex<Option<Store>>>,
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
            let connected = tokio::select! {
                r = Redis::connect(&self.config) => r,
                _ = crate::out::stopped(&mut shutdown) => return,
            };
            let reason = match connected {
                Ok(mut redis) => {
                    if let Ok(mut s) = self.store.lock() {
                        *s = Some(redis.store.clone());
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
                        Some(Command::Ban(..)) | Some(Command::Lift(..)) | Some(Command::Release(..)) => {}
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
        if let Err(e) = broker.subscribe(&self.bans_channel).await {
            return Ended::Lost(e);
        }
        if let Err(e) = self.load_bans(broker).await {
            return Ended::Lost(e);
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
                            Command::Lift(ip) => {
                                if let Err(e) = self.announce_lift(broker, ip).await {
                                    return Ended::Lost(e);
                                }
                            }
                            Command::Release(key, id) => {
                                let r = redis::cmd("ZREM")
                                    .arg(&key)
                                    .arg(&id)
                                    .query_async::<()>(&mut broker.store)
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

    /// Moves the expiry of every lease this node holds forward, so only a dead node's expire:
    /// one call per identity, many at once over the multiplexed connection.
    async fn renew_leases(&self, broker: &mut Redis) -> Result<(), String> {
        let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
        match self.leases.lock() {
            Ok(l) => {
                for (id, key) in l.iter() {
                    by_key.entry(key.clone()).or_default().push(id.clone());
                }
            }
            Err(_) => return Ok(()),
        }
        let ttl = self.lease_ttl.as_millis() as u64;
        let script = redis::Script::new(RENEW);
        let calls: Vec<_> = by_key.iter().collect();
        for chunk in calls.chunks(256) {
            let sends = chunk.iter().map(|(key, ids)| {
                let mut con = broker.store.clone();
                let mut invocation = script.key(key.as_str());
                invocation.arg(ttl);
                for id in ids.iter() {
                    invocation.arg(id.as_str());
                }
                async move { invocation.invoke_async::<()>(&mut con).await }
            });
            futures_util::future::try_join_all(sends)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Stores the ban with its end (for nodes that connect later) and announces it.
    async fn announce_ban(
        &self,
        broker: &mut Redis,
        ip: std::net::IpAddr,
        d: Duration,
    ) -> Result<(), String> {
        let ms = d.as_millis().max(1) as u64;
        let script = redis::Script::new(BAN);
        let mut invocation = script.key(&self.bans_key);
        invocation.arg(ip.to_string()).arg(ms);
        invocation
            .invoke_async::<()>(&mut broker.store)
            .await
            .map_err(|e| e.to_string())?;
        broker
            .publish_one(&self.bans_channel, format!("{ip} {ms}").as_bytes())
            .await
    }

    /// Removes the ban from the set and announces `IP 0`, which every node reads as lifted.
    async fn announce_lift(&self, broker: &mut Redis, ip: std::net::IpAddr) -> Result<(), String> {
        redis::cmd("ZREM")
            .arg(&self.bans_key)
            .arg(ip.to_string())
            .query_async::<()>(&mut broker.store)
            .await
            .map_err(|e| e.to_string())?;
        broker
            .publish_one(&self.bans_channel, format!("{ip} 0").as_bytes())
            .await
    }

    /// The bans in force, read when (re)connecting: a node that starts, or comes back, after a
    /// ban still refuses the address.
    async fn load_bans(&self, broker: &mut Redis) -> Result<(), String> {
        let bans: Vec<String> = redis::Script::new(BANS)
            .key(&self.bans_key)
            .invoke_async(&mut broker.store)
            .await
            .map_err(|e| e.to_string())?;
        for b in bans {
            self.banned(&b);
        }
        Ok(())
    }

    /// A ban announced by a node (`IP MILLISECONDS`): refused here too until it ends.
    fn banned(&self, text: &str) {
        let Some((ip, ms)) = text.split_once(' ') else {
            return;
        };
        let (Ok(ip), Ok(ms)) = (ip.parse::<std::net::IpAddr>(), ms.parse::<i64>()) else {
            return;
        };
        let now = std::time::Instant::now();
        if ms > 0 {
            let until = now + Duration::from_millis(ms as u64);
            self.bans
                .ban_until(ip, until, wsgate_admission::firewall::BanSource::Cluster);
        } else {
            self.bans.lift(ip, now);
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
