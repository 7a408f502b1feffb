//! The validated, immutable configuration a server runs on: every value checked, every default
//! filled in, each route owning its parsed pattern and its gates' settings per listener.

use super::ConfigError;
use crate::pattern::Pattern;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How much of a refusal the client is told; logs always carry everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Explain {
    /// Bare status (plus the headers the protocol requires).
    None,
    /// Status, reason code and request id headers.
    Code,
    /// Also a JSON body with the message and the client's fix.
    Full,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// What an admitted connection is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// Sends every message back to its sender.
    Echo,
    /// Pub/sub: every member of a room (one room per matched path) gets what any member publishes.
    Channel,
    /// Relays frames to and from an upstream WebSocket server.
    Proxy,
}

/// A validated configuration: everything in it has been checked and has its default filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from, for messages.
    pub source: String,
    /// Public listeners, in file order.
    pub listeners: Vec<Listener>,
    /// The admin listener (page, metrics, health), if enabled.
    pub admin: Option<SocketAddr>,
    /// The admin page's token (`admin.token`/`admin.token_file`): required for the page and its
    /// actions when set, and set it must be when the admin address is not loopback.
    pub admin_token: Option<AdminToken>,
    /// Protocol and resource limits.
    pub limits: Limits,
    /// Log format and level.
    pub logging: Logging,
    /// Routes, matched in file order.
    pub routes: Vec<Route>,
    /// A random token generated at start for routes with `auth.dev_token = true`.
    pub dev_token: Option<String>,
    /// Global firewall rules, trusted proxies and bans.
    pub firewall: Firewall,
    /// Rooms shared with other nodes through Redis, if configured.
    pub cluster: Option<Cluster>,
    /// Key sets fetched from identity providers (`jwks_url`, `discovery`), one per URL however
    /// many routes use it; the server keeps them fresh.
    pub jwks: Vec<std::sync::Arc<wsgate_admission::jwt::RemoteKeys>>,
}

impl Config {
    /// Every JWT issuer of every route on every listener, to share or carry over their fetched
    /// key sets.
    pub fn jwt_issuers_mut(
        &mut self,
    ) -> impl Iterator<Item = &mut wsgate_admission::jwt::JwtIssuer> {
        self.routes
            .iter_mut()
            .flat_map(|r| r.policies.iter_mut())
            .filter_map(|p| p.auth.as_mut())
            .flat_map(|a| a.jwt.iter_mut())
    }
}

/// `[cluster]`: this node's place among the nodes that share rooms through Redis.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The Redis URL as configured (it may hold a password: print [`Cluster::redacted_url`]).
    pub redis: String,
    /// This node's name, in the banner and on every message it publishes.
    pub node_id: String,
    /// Prefix of the Redis channels, so several deployments can share one Redis.
    pub prefix: String,
    /// How long an identity's connection on a node that stopped renewing (it died) still counts.
    pub lease_ttl: Duration,
    /// What new handshakes get while Redis is unreachable.
    pub on_redis_down: OnRedisDown,
    /// Where the Redis password comes from, when it is not in the URL.
    pub password: Option<PasswordSource>,
    /// Files for TLS to Redis (`rediss://`); the system's roots are trusted when no CA is given.
    pub tls: RedisTls,
    /// Redis 7 sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`), which a Redis Cluster spreads over its
    /// shards instead of sending every message to every shard.
    pub sharded: bool,
}

/// Certificates for `rediss://`, read at every connection so they can be renewed in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// PEM CA certificate(s) that signed Redis's certificate (a private CA); `None`: system roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for Redis's `tls-auth-clients yes` (its default).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// A secret kept out of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// Read from this file (trailing newline removed) at every connection, so it can rotate.
    File(PathBuf),
    /// Read from this environment variable.
    Env(String),
}

impl Cluster {
    /// The URL to connect with: the configured one, with the password from its source put in.
    /// The error names the source, never the secret.
    pub fn connect_url(&self) -> Result<String, String> {
        let password = match &self.password {
            None => return Ok(self.redis.clone()),
            Some(PasswordSource::File(p)) => std::fs::read_to_string(p)
                .map_err(|e| format!("cluster.password_file {}: {e}", p.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            Some(PasswordSource::Env(v)) => std::env::var(v)
                .map_err(|_| format!("cluster.password_env: the variable {v} is not set"))?,
        };
        let encoded: String = password
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        match self.redis.split_once("://") {
            Some((scheme, rest)) => Ok(format!("{scheme}://:{encoded}@{rest}")),
            None => Ok(self.redis.clone()),
        }
    }

    /// The Redis URL with any password replaced by `***`, for banners, logs and `wsgate check`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.redis)
    }
}

/// What a clustered node does with new handshakes while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisDown {
    /// Admit them, with rates, bans and identity caps counted on this node alone (logged).
    #[default]
    Local,
    /// Refuse them with 503 `cluster.unavailable` until Redis is back.
    Refuse,
}

/// A URL with the password of its user-info (`scheme://user:password@host`) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// The global firewall settings (each route may add its own rules).
#[derive(Debug, Clone, Default)]
pub struct Firewall {
    /// Allow and deny lists for every route.
    pub rules: wsgate_admission::firewall::IpRules,
    /// Peers whose forwarding header (and PROXY header) is believed.
    pub trusted_proxies: Vec<wsgate_admission::firewall::Cidr>,
    /// The one forwarding header the trusted proxies set.
    pub client_address_header: wsgate_admission::firewall::ClientHeader,
    /// Automatic temporary bans, if configured.
    pub ban: Option<wsgate_admission::firewall::BanPolicy>,
}

/// A public listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Address to bind; port 0 asks the OS for one.
    pub address: SocketAddr,
    /// How much refusals explain; defaults to `full` on loopback and `code` elsewhere.
    pub explain: Explain,
    /// TLS termination, if configured.
    pub tls: Option<Tls>,
    /// Whether `explain` was written in the file (otherwise it follows the address).
    pub explain_explicit: bool,
    /// Every connection starts with a PROXY protocol v1/v2 header (believed from trusted proxies).
    pub proxy_protocol: bool,
}

/// Certificate chain and key files for a TLS listener.
#[derive(Debug, Clone)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// The key path of this block, for error messages at load time.
    pub key_path: String,
    /// CA certificates that client certificates must chain to (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Whether clients must, may or need not present a certificate.
    pub client_auth: ClientAuth,
}

/// Mutual TLS on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates are asked for.
    None,
    /// Asked for; clients without one are still served (a route may then require one).
    Optional,
    /// The TLS handshake fails without a certificate from `client_ca`.
    Required,
}

/// Limits that keep one client from hurting the others.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open WebSocket connections across all listeners; beyond it: 503 `limit.connections`.
    pub max_connections: usize,
    /// Largest message after reassembly of fragments; beyond it: close 1009.
    pub max_message_bytes: usize,
    /// Largest single frame; beyond it: close 1009.
    pub max_frame_bytes: usize,
    /// Time a client has to send its complete request head (and finish TLS).
    pub handshake_timeout: Duration,
    /// How often the server pings an otherwise quiet connection.
    pub ping_interval: Duration,
    /// A connection from which nothing (not even a pong) arrives for this long is closed.
    pub idle_timeout: Duration,
    /// How long shutdown waits for connections to finish their close handshake.
    pub drain_timeout: Duration,
    /// Per-client rate and connection caps (the limits gate).
    pub clients: wsgate_admission::limits::LimitPolicy,
    /// Bounds on the request head; beyond them: 431 `handshake.head_too_large`.
    pub head: wsgate_handshake::HeadLimits,
    /// Output queued for a peer that is not reading, above which wsgate stops reading from the
    /// other side (and taking broadcasts): what a peer that never reads can cost.
    pub max_output_bytes: usize,
    /// A peer whose queued output makes no progress for this long is closed (1013).
    pub send_timeout: Duration,
    /// Connections of one address still in their TLS handshake or request head; beyond it the
    /// connection is refused at once (`limit.handshakes_in_progress`).
    pub max_handshakes_per_client: usize,
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct Logging {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `wsgate=debug`.
    pub level: String,
    /// Identical refusal lines (same code, client, route) written per window.
    pub refusal_burst: u32,
    /// The window for `refusal_burst`.
    pub refusal_window: Duration,
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The pattern as written, e.g. `/ws/chat/{room}`.
    pub path: String,
    /// The same pattern, parsed: what requests are matched against.
    pub pattern: Pattern,
    /// What admitted connections are connected to.
    pub kind: RouteKind,
    /// Subprotocols this route speaks, in the server's order.
    pub subprotocols: Vec<String>,
    /// Whether a client must choose one of `subprotocols`.
    pub subprotocol_required: bool,
    /// Channel routes: whether a publisher also receives its own messages.
    pub deliver_to_sender: bool,
    /// Echo and channel routes: permessage-deflate (RFC 7692), stateless unless configured.
    pub compression: wsgate_handshake::deflate::Mode,
    /// Proxy routes: where to relay to.
    pub upstream: Option<Upstream>,
    /// Proxy routes: request headers copied from the client to the upstream handshake.
    pub forward_headers: Vec<http::HeaderName>,
    /// The effective admission settings of this route on each listener (by listener index).
    pub policies: Vec<RoutePolicy>,
}

impl Route {
    /// The effective policy on listener `listener`.
    pub fn policy(&self, listener: usize) -> &RoutePolicy {
        &self.policies[listener.min(self.policies.len() - 1)]
    }
}

/// A route's effective admission settings on one listener: its gates.
pub type RoutePolicy = wsgate_admission::Policy;

/// An `http://` or `https://` service wsgate calls (the external check): the workspace's one
/// endpoint type.
pub type HttpTarget = wsgate_handshake::endpoint::Endpoint;

/// A proxy route's upstream WebSocket server.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The URL as configured.
    pub url: String,
    /// Where it points (`ws://` or `wss://`).
    pub endpoint: wsgate_handshake::endpoint::Endpoint,
    /// Extra CA certificates trusted for a `wss://` upstream (besides the public roots).
    pub ca_file: Option<PathBuf>,
    /// Time allowed to connect and finish the upstream handshake.
    pub connect_timeout: Duration,
}

/// The admin token: a secret, so its `Debug` (which reload summaries and logs may print) hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Shortest admin token accepted: the page's actions ban and close, so it must not be guessable.
pub const MIN_ADMIN_TOKEN: usize = 16;

impl Config {
    /// The admin address may leave loopback only behind a token: anyone who reaches the page can
    /// ban and close. The message names the key and the fix.
    pub fn admin_exposure(&self) -> Result<(), ConfigError> {
        match (self.admin, &self.admin_token) {
            (Some(a), None) if !a.ip().is_loopback() => Err(ConfigError {
                file: self.source.clone(),
                key: "admin.token".into(),
                message: format!(
                    "the admin listener {a} is not loopback, and its page can ban addresses and close connections: set admin.token (at least {MIN_ADMIN_TOKEN} characters, e.g. from `openssl rand -hex 24`) or admin.token_file, or keep admin.address on 127.0.0.1"
                ),
            }),
            _ => Ok(()),
        }
    }
}
