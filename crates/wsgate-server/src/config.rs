//! The TOML configuration: parsed strictly (unknown keys are errors) and validated before serving,
//! so that a mistake is reported with its file, key path and the fix, never discovered at run time.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The configuration `wsgate serve` uses when given none: loopback only, explained refusals.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// A configuration mistake, located precisely enough to fix without reading our source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{message}", key_prefix(.key))]
pub struct ConfigError {
    /// The file the configuration came from (`<embedded default>` for the built-in one).
    pub file: String,
    /// The key path, e.g. `route[1].upstream`; empty for syntax errors, which carry a line instead.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("`{key}`: ")
    }
}

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

/// The whole file as written; see [`Config`] for the validated form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default, rename = "listener")]
    listeners: Vec<RawListener>,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    logging: RawLogging,
    #[serde(default, rename = "route")]
    routes: Vec<RawRoute>,
    #[serde(default)]
    firewall: RawFirewall,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFirewall {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    client_address_header: Option<String>,
    ban: Option<RawBan>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBan {
    after: u32,
    window: String,
    duration: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouteFirewall {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    policy: Option<RawPolicy>,
    address: String,
    explain: Option<Explain>,
    tls: Option<RawTls>,
    #[serde(default)]
    proxy_protocol: bool,
}

/// Admission settings; a listener's apply to every route on it unless the route sets its own
/// (firewall rules of both apply).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    origins: Option<Vec<String>>,
    allow_missing_origin: Option<bool>,
    hosts: Option<Vec<String>>,
    firewall: Option<RawRouteFirewall>,
    auth: Option<RawAuth>,
    authz: Option<RawAuthz>,
    client_cert: Option<ClientCertRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    client_auth: Option<ClientAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_admin_address")]
    address: String,
    #[serde(default = "yes")]
    enabled: bool,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            address: default_admin_address(),
            enabled: true,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
    max_message_bytes: Option<usize>,
    max_frame_bytes: Option<usize>,
    handshake_timeout: Option<String>,
    ping_interval: Option<String>,
    idle_timeout: Option<String>,
    drain_timeout: Option<String>,
    handshake_rate: Option<f64>,
    handshake_burst: Option<f64>,
    max_connections_per_client: Option<usize>,
    max_connections_per_identity: Option<usize>,
    max_head_bytes: Option<usize>,
    max_header_bytes: Option<usize>,
    max_output_bytes: Option<usize>,
    send_timeout: Option<String>,
    max_handshakes_per_client: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    #[serde(default)]
    format: LogFormat,
    level: Option<String>,
    refusal_burst: Option<u32>,
    refusal_window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: String,
    kind: RouteKind,
    #[serde(default)]
    subprotocols: Vec<String>,
    #[serde(default)]
    subprotocol_required: bool,
    deliver_to_sender: Option<bool>,
    upstream: Option<String>,
    upstream_ca: Option<PathBuf>,
    #[serde(default)]
    forward_headers: Vec<String>,
    connect_timeout: Option<String>,
    origins: Option<Vec<String>>,
    allow_missing_origin: Option<bool>,
    auth: Option<RawAuth>,
    firewall: Option<RawRouteFirewall>,
    hosts: Option<Vec<String>>,
    authz: Option<RawAuthz>,
    client_cert: Option<ClientCertRule>,
}

/// Whether a route needs a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ClientCertRule {
    Required,
    Optional,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthz {
    #[serde(default)]
    require_claims: toml::Table,
    #[serde(default)]
    require_scopes: Vec<String>,
    channel: Option<String>,
    channel_claim: Option<String>,
    #[serde(default)]
    cert_subjects: Vec<String>,
    #[serde(default)]
    cert_sans: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    sources: Option<Vec<String>>,
    #[serde(default)]
    api_keys: Vec<RawApiKey>,
    #[serde(default)]
    dev_token: bool,
    #[serde(default)]
    jwt: Vec<RawJwt>,
    external: Option<RawExternal>,
    #[serde(default)]
    basic_users: Vec<RawBasicUser>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicUser {
    name: String,
    hash: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExternal {
    url: String,
    timeout: Option<String>,
    cache_ttl: Option<String>,
    identity_header: Option<String>,
    #[serde(default)]
    identity_headers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    issuer: Option<String>,
    #[serde(default)]
    audience: Vec<String>,
    leeway: Option<String>,
    require_exp: Option<bool>,
    kid: Option<String>,
    algorithms: Option<Vec<String>>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    public_key: Option<String>,
    public_key_file: Option<PathBuf>,
    jwks_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    name: String,
    sha256: String,
    #[serde(default)]
    scopes: Vec<String>,
}

/// Credential sources used when a route's `auth` names none: the ones that never land in URLs.
pub const DEFAULT_SOURCES: &[&str] = &["bearer", "cookie:wsgate_token", "subprotocol:token."];

fn default_admin_address() -> String {
    "127.0.0.1:9090".to_owned()
}
fn yes() -> bool {
    true
}

/// A validated configuration: everything in it has been checked and has its default filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from, for messages.
    pub source: String,
    /// Public listeners, in file order.
    pub listeners: Vec<Listener>,
    /// The metrics listener, if enabled.
    pub admin: Option<SocketAddr>,
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
    /// What admitted connections are connected to.
    pub kind: RouteKind,
    /// Subprotocols this route speaks, in the server's order.
    pub subprotocols: Vec<String>,
    /// Whether a client must choose one of `subprotocols`.
    pub subprotocol_required: bool,
    /// Channel routes: whether a publisher also receives its own messages.
    pub deliver_to_sender: bool,
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

/// A route's effective admission settings on one listener.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    /// The gates' settings.
    pub gates: wsgate_admission::Policy,
    /// Where the external check of `gates.external` is sent.
    pub external: Option<HttpTarget>,
    /// Subprotocol prefixes that carry credentials (removed before selection).
    pub token_prefixes: Vec<String>,
}

/// An `http://` or `https://` service wsgate calls (the external check): the workspace's one
/// endpoint type.
pub type HttpTarget = wsgate_handshake::endpoint::Endpoint;

fn parse_http_target(url: &str) -> Result<HttpTarget, String> {
    HttpTarget::parse(url, wsgate_handshake::endpoint::Family::Http)
}

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

impl Config {
    /// Parses and validates configuration text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        Config::parse_in(text, source, Path::new("."))
    }

    /// Parses configuration text whose relative file paths are relative to `base`.
    fn parse_in(text: &str, source: &str, base: &Path) -> Result<Config, ConfigError> {
        let err = |key: String, message: String| ConfigError {
            file: source.to_owned(),
            key,
            message,
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| err(String::new(), one_line(&e.to_string())))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            err(
                key.replace("listener.", "listener")
                    .replace("route.", "route"),
                one_line(&e.into_inner().to_string()),
            )
        })?;
        validate(raw, source, base)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: source.clone(),
            key: String::new(),
            message: format!("cannot read the configuration file: {e}"),
        })?;
        // Relative paths are relative to the configuration file, not the working directory.
        let base = path.parent().unwrap_or(Path::new("."));
        let mut cfg = Config::parse_in(&text, &source, base)?;
        for r in &mut cfg.routes {
            if let Some(ca) = r.upstream.as_mut().and_then(|u| u.ca_file.as_mut()) {
                *ca = base.join(&*ca);
            }
        }
        Ok(cfg)
    }

    /// Replaces the first listener's address (the `--listen` flag), keeping the rule that an
    /// unset `explain` is `full` on loopback only.
    pub fn override_first_listener(&mut self, address: SocketAddr) {
        if let Some(l) = self.listeners.first_mut() {
            l.address = address;
            if !l.explain_explicit {
                l.explain = default_explain(address);
            }
        }
    }

    /// The embedded development configuration.
    pub fn embedded() -> Config {
        match Config::parse(EMBEDDED_DEFAULT, "<embedded default>") {
            Ok(c) => c,
            // The embedded text is checked by a unit test; reaching this is a build defect.
            Err(e) => panic!("embedded default configuration is invalid: {e}"),
        }
    }
}

/// toml errors span several lines with a source excerpt; one line reads better in a terminal.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn validate(raw: RawConfig, source: &str, base: &Path) -> Result<Config, ConfigError> {
    let err = |key: String, message: String| ConfigError {
        file: source.to_owned(),
        key,
        message,
    };
    if raw.listeners.is_empty() {
        return Err(err(
            "listener".into(),
            "no listener: add `[[listener]]` with `address = \"127.0.0.1:8080\"`".into(),
        ));
    }
    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let address =
            parse_addr(&l.address).map_err(|m| err(format!("listener[{i}].address"), m))?;
        let explain = l.explain.unwrap_or(default_explain(address));
        let tls = match &l.tls {
            None => None,
            Some(t) => {
                let client_auth = match (&t.client_ca, t.client_auth) {
                    (None, Some(ClientAuth::None) | None) => ClientAuth::None,
                    (None, Some(_)) => return Err(err(
                        format!("listener[{i}].tls.client_auth"),
                        "needs `client_ca = \"ca.pem\"`: the CA client certificates must chain to"
                            .into(),
                    )),
                    (Some(_), mode) => mode.unwrap_or(ClientAuth::Required),
                };
                Some(Tls {
                    cert: base.join(&t.cert),
                    key: base.join(&t.key),
                    key_path: format!("listener[{i}].tls"),
                    client_ca: t.client_ca.as_ref().map(|c| base.join(c)),
                    client_auth,
                })
            }
        };
        listeners.push(Listener {
            address,
            explain,
            tls,
            explain_explicit: l.explain.is_some(),
            proxy_protocol: l.proxy_protocol,
        });
    }
    let admin = if raw.admin.enabled {
        Some(parse_addr(&raw.admin.address).map_err(|m| err("admin.address".into(), m))?)
    } else {
        None
    };

    let l = &raw.limits;
    let dur = |key: &str, v: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|m| err(format!("limits.{key}"), m)),
        }
    };
    let limits = Limits {
        max_connections: l.max_connections.unwrap_or(10_000),
        max_message_bytes: l.max_message_bytes.unwrap_or(16 << 20),
        max_frame_bytes: l.max_frame_bytes.unwrap_or(16 << 20),
        handshake_timeout: dur(
            "handshake_timeout",
            &l.handshake_timeout,
            Duration::from_secs(10),
        )?,
        ping_interval: dur("ping_interval", &l.ping_interval, Duration::from_secs(30))?,
        idle_timeout: dur("idle_timeout", &l.idle_timeout, Duration::from_secs(90))?,
        drain_timeout: dur("drain_timeout", &l.drain_timeout, Duration::from_secs(10))?,
        clients: wsgate_admission::limits::LimitPolicy {
            rate: match (l.handshake_rate, l.handshake_burst) {
                (None, None) => None,
                (None, Some(_)) => {
                    return Err(err(
                        "limits.handshake_burst".into(),
                        "needs `handshake_rate` (handshakes per second per client address)".into(),
                    ))
                }
                (Some(r), b) if r > 0.0 && r.is_finite() => {
                    let burst = b.unwrap_or(r.max(1.0) * 2.0);
                    if !(burst >= 1.0 && burst.is_finite()) {
                        return Err(err(
                            "limits.handshake_burst".into(),
                            "must be at least 1".into(),
                        ));
                    }
                    Some((r, burst))
                }
                (Some(_), _) => {
                    return Err(err(
                        "limits.handshake_rate".into(),
                        "must be a positive number of handshakes per second".into(),
                    ))
                }
            },
            per_client: l.max_connections_per_client,
            per_identity: l.max_connections_per_identity,
        },
        max_output_bytes: l.max_output_bytes.unwrap_or(256 * 1024),
        send_timeout: dur("send_timeout", &l.send_timeout, Duration::from_secs(30))?,
        max_handshakes_per_client: l.max_handshakes_per_client.unwrap_or(32),
        head: {
            let d = wsgate_handshake::HeadLimits::default();
            wsgate_handshake::HeadLimits {
                max_head: l.max_head_bytes.unwrap_or(d.max_head),
                max_header: l.max_header_bytes.unwrap_or(d.max_header),
            }
        },
    };
    if limits.max_output_bytes < 16 * 1024 {
        return Err(err(
            "limits.max_output_bytes".into(),
            "must be at least 16384: below it, one read's answers would not fit and every connection would stall".into(),
        ));
    }
    if limits.send_timeout < Duration::from_millis(100) {
        return Err(err(
            "limits.send_timeout".into(),
            "must be at least 100ms: a peer needs time to read what it was sent".into(),
        ));
    }
    // Below these, ordinary browser handshakes would not fit.
    if limits.head.max_header < 1024 {
        return Err(err(
            "limits.max_header_bytes".into(),
            "must be at least 1024 (a browser's User-Agent or Cookie line alone can be close to that)".into(),
        ));
    }
    if limits.head.max_head < limits.head.max_header {
        return Err(err(
            "limits.max_head_bytes".into(),
            format!(
                "must be at least limits.max_header_bytes ({}): the head holds every header line",
                limits.head.max_header
            ),
        ));
    }
    if limits.head.max_head > 1 << 20 {
        return Err(err(
            "limits.max_head_bytes".into(),
            "must be at most 1048576 (1 MiB); every connection may hold this much before any gate runs".into(),
        ));
    }
    for (key, v) in [
        ("max_connections", limits.max_connections),
        ("max_message_bytes", limits.max_message_bytes),
        ("max_frame_bytes", limits.max_frame_bytes),
        (
            "max_handshakes_per_client",
            limits.max_handshakes_per_client,
        ),
        (
            "max_connections_per_client",
            limits.clients.per_client.unwrap_or(1),
        ),
        (
            "max_connections_per_identity",
            limits.clients.per_identity.unwrap_or(1),
        ),
    ] {
        if v == 0 {
            return Err(err(format!("limits.{key}"), "must be at least 1".into()));
        }
    }
    if limits.ping_interval >= limits.idle_timeout {
        return Err(err(
            "limits.ping_interval".into(),
            format!(
                "must be shorter than limits.idle_timeout ({:?}), or live clients would be closed as idle",
                limits.idle_timeout
            ),
        ));
    }

    let logging = Logging {
        format: raw.logging.format,
        level: raw
            .logging
            .level
            .clone()
            .unwrap_or_else(|| "info".to_owned()),
        refusal_burst: raw.logging.refusal_burst.unwrap_or(5).max(1),
        refusal_window: match &raw.logging.refusal_window {
            None => Duration::from_secs(10),
            Some(w) => parse_duration(w).map_err(|m| err("logging.refusal_window".into(), m))?,
        },
    };

    if raw.routes.is_empty() {
        return Err(err(
            "route".into(),
            "no route: add `[[route]]` with `path = \"/ws/echo\"` and `kind = \"echo\"`".into(),
        ));
    }
    let raw_firewall = raw.firewall;
    let mut dev_token = None;
    let mut listener_policies = Vec::new();
    for (l, rl) in raw.listeners.iter().enumerate() {
        let lp = rl.policy.clone().unwrap_or_default();
        if rl.policy.is_some() {
            // Checked on its own so that a mistake is reported at the listener's key.
            build_policy(
                &lp,
                "/",
                &format!("listener[{l}].policy"),
                &mut dev_token,
                base,
            )
            .map_err(|(k, m)| err(k, m))?;
        }
        listener_policies.push(lp);
    }
    let mut routes = Vec::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let key = |k: &str| format!("route[{i}].{k}");
        crate::pattern::Pattern::parse(&r.path).map_err(|m| err(key("path"), m))?;
        if routes.iter().any(|p: &Route| p.path == r.path) {
            return Err(err(
                key("path"),
                format!("`{}` is already the path of an earlier route", r.path),
            ));
        }
        for (j, p) in r.subprotocols.iter().enumerate() {
            if p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                return Err(err(
                    format!("route[{i}].subprotocols[{j}]"),
                    format!("{p:?} is not a valid subprotocol name (an HTTP token: letters, digits, `.-_` …)"),
                ));
            }
        }
        if r.subprotocol_required && r.subprotocols.is_empty() {
            return Err(err(
                key("subprotocol_required"),
                "is true but `subprotocols` is empty: list the subprotocols the route speaks"
                    .into(),
            ));
        }
        let is_proxy = r.kind == RouteKind::Proxy;
        if !is_proxy {
            for (k, set) in [
                ("upstream", r.upstream.is_some()),
                ("upstream_ca", r.upstream_ca.is_some()),
                ("forward_headers", !r.forward_headers.is_empty()),
                ("connect_timeout", r.connect_timeout.is_some()),
            ] {
                if set {
                    return Err(err(
                        key(k),
                        "only applies to routes with kind = \"proxy\"".into(),
                    ));
                }
            }
        }
        if r.kind != RouteKind::Channel && r.deliver_to_sender.is_some() {
            return Err(err(
                key("deliver_to_sender"),
                "only applies to routes with kind = \"channel\"".into(),
            ));
        }
        let upstream = if is_proxy {
            let url = r.upstream.as_deref().ok_or_else(|| {
                err(
                    key("upstream"),
                    "a proxy route needs `upstream = \"ws://host:port/path\"`".into(),
                )
            })?;
            let connect_timeout = match &r.connect_timeout {
                None => Duration::from_secs(5),
                Some(s) => parse_duration(s).map_err(|m| err(key("connect_timeout"), m))?,
            };
            Some(
                parse_upstream(url, r.upstream_ca.clone(), connect_timeout)
                    .map_err(|m| err(key("upstream"), m))?,
            )
        } else {
            None
        };
        let mut forward_headers = Vec::new();
        for (j, h) in r.forward_headers.iter().enumerate() {
            let name = http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                err(
                    format!("route[{i}].forward_headers[{j}]"),
                    format!("{h:?} is not a valid header name"),
                )
            })?;
            const MANAGED: &[&str] = &[
                "host",
                "upgrade",
                "connection",
                "sec-websocket-key",
                "sec-websocket-version",
                "sec-websocket-accept",
                "sec-websocket-extensions",
                "sec-websocket-protocol",
                "content-length",
                "transfer-encoding",
                "keep-alive",
                "te",
                "trailer",
                "proxy-connection",
            ];
            if MANAGED.contains(&name.as_str()) {
                return Err(err(
                    format!("route[{i}].forward_headers[{j}]"),
                    format!("`{name}` is set by wsgate itself for the upstream handshake and cannot be forwarded"),
                ));
            }
            forward_headers.push(name);
        }
        let own = RawPolicy {
            origins: r.origins,
            allow_missing_origin: r.allow_missing_origin,
            hosts: r.hosts,
            firewall: r.firewall,
            auth: r.auth,
            authz: r.authz,
            client_cert: r.client_cert,
        };
        let mut policies = Vec::new();
        for (l, lp) in listener_policies.iter().enumerate() {
            let merged = RawPolicy {
                origins: own.origins.clone().or_else(|| lp.origins.clone()),
                allow_missing_origin: own.allow_missing_origin.or(lp.allow_missing_origin),
                hosts: own.hosts.clone().or_else(|| lp.hosts.clone()),
                firewall: own.firewall.clone(),
                auth: own.auth.clone().or_else(|| lp.auth.clone()),
                authz: own.authz.clone().or_else(|| lp.authz.clone()),
                client_cert: own.client_cert.or(lp.client_cert),
            };
            let listener_fw = lp.firewall.clone().unwrap_or_default();
            let mut p = build_policy(
                &merged,
                &r.path,
                &format!("route[{i}]"),
                &mut dev_token,
                base,
            )
            .map_err(|(k, m)| err(k, m))?;
            p.gates.listener_firewall =
                wsgate_admission::firewall::IpRules::parse(&listener_fw.allow, &listener_fw.deny)
                    .map_err(|(k, m)| err(format!("listener[{l}].policy.firewall.{k}"), m))?;
            policies.push(p);
        }
        routes.push(Route {
            policies,
            path: r.path,
            kind: r.kind,
            subprotocols: r.subprotocols,
            subprotocol_required: r.subprotocol_required,
            deliver_to_sender: r.deliver_to_sender.unwrap_or(true),
            upstream,
            forward_headers,
        });
    }
    let firewall =
        global_firewall(&raw_firewall).map_err(|(k, m)| err(format!("firewall.{k}"), m))?;
    if let Some(i) = listeners.iter().position(|l| l.proxy_protocol) {
        if firewall.trusted_proxies.is_empty() {
            return Err(err(
                format!("listener[{i}].proxy_protocol"),
                "PROXY headers are believed only from trusted peers: list the load balancer in firewall.trusted_proxies".into(),
            ));
        }
    }
    Ok(Config {
        source: source.to_owned(),
        listeners,
        admin,
        limits,
        logging,
        routes,
        dev_token,
        firewall,
    })
}

/// Builds the gates' settings from one policy table; errors carry a full key path under `at`.
fn build_policy(
    p: &RawPolicy,
    path: &str,
    at: &str,
    dev_token: &mut Option<String>,
    base: &Path,
) -> Result<RoutePolicy, (String, String)> {
    let origin = wsgate_admission::origin::OriginPolicy::parse(
        p.origins.as_deref().unwrap_or(&["same-origin".to_owned()]),
        p.allow_missing_origin.unwrap_or(true),
    )
    .map_err(|(j, m)| (format!("{at}.origins[{j}]"), m))?;
    let fw = p.firewall.clone().unwrap_or_default();
    let firewall = wsgate_admission::firewall::IpRules::parse(&fw.allow, &fw.deny)
        .map_err(|(k, m)| (format!("{at}.firewall.{k}"), m))?;
    let host = wsgate_admission::host::HostPolicy::parse(p.hosts.as_deref().unwrap_or(&[]))
        .map_err(|(j, m)| (format!("{at}.hosts[{j}]"), m))?;
    let (external_policy, external) = match p.auth.as_ref().and_then(|a| a.external.as_ref()) {
        None => (None, None),
        Some(x) => {
            let k = |f: &str| format!("{at}.auth.external.{f}");
            if let Some(a) = &p.auth {
                if !a.api_keys.is_empty() || !a.jwt.is_empty() || a.dev_token {
                    return Err((
                            format!("{at}.auth.external"),
                            "the external check decides alone: remove api_keys, jwt and dev_token from this route's auth".into(),
                        ));
                }
            }
            let target = parse_http_target(&x.url).map_err(|m| (k("url"), m))?;
            let dur = |f: &str, v: &Option<String>, d: Duration| match v {
                None => Ok(d),
                Some(s) if s.trim() == "0s" => Ok(Duration::ZERO),
                Some(s) => parse_duration(s).map_err(|m| (k(f), m)),
            };
            let header = |f: &str, v: &str| {
                http::HeaderName::from_bytes(v.as_bytes())
                    .map_err(|_| (k(f), format!("{v:?} is not a header name")))
            };
            let policy = wsgate_admission::external::ExternalPolicy {
                url: x.url.clone(),
                timeout: dur("timeout", &x.timeout, Duration::from_secs(2))?,
                cache_ttl: dur("cache_ttl", &x.cache_ttl, Duration::ZERO)?,
                identity_header: header(
                    "identity_header",
                    x.identity_header.as_deref().unwrap_or("x-auth-user"),
                )?,
                identity_headers: x
                    .identity_headers
                    .iter()
                    .map(|h| header("identity_headers", h))
                    .collect::<Result<_, _>>()?,
            };
            (Some(policy), Some(target))
        }
    };
    let token_prefixes: Vec<String> = p
        .auth
        .as_ref()
        .and_then(|a| a.sources.as_ref())
        .map(|v| {
            v.iter()
                .filter_map(|s| s.strip_prefix("subprotocol:").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let auth = match p.auth.as_ref().filter(|a| a.external.is_none()) {
        None => None,
        Some(a) => {
            Some(auth_policy(a, dev_token, base).map_err(|(k, m)| (format!("{at}.auth.{k}"), m))?)
        }
    };
    let authz = match &p.authz {
        None => wsgate_admission::authz::AuthzPolicy::default(),
        Some(z) => {
            let auth = auth.as_ref().map(|_| ()).or(external.as_ref().map(|_| ()));
            let needs_identity =
                !z.require_claims.is_empty() || !z.require_scopes.is_empty() || z.channel.is_some();
            if auth.is_none() && needs_identity {
                return Err((
                        format!("{at}.authz"),
                        "claim, scope and channel rules need an authenticated client: add `[route.auth]` to this route".into(),
                    ));
            }
            authz_policy(z, path).map_err(|(k, m)| (format!("{at}.authz.{k}"), m))?
        }
    };
    Ok(RoutePolicy {
        gates: wsgate_admission::Policy {
            client_cert_required: p.client_cert == Some(ClientCertRule::Required),
            listener_firewall: Default::default(),
            firewall,
            host,
            origin,
            auth,
            authz,
            external: external_policy,
        },
        external,
        token_prefixes,
    })
}

fn global_firewall(f: &RawFirewall) -> Result<Firewall, (String, String)> {
    use wsgate_admission::firewall::{BanPolicy, Cidr, ClientHeader, IpRules};
    let rules = IpRules::parse(&f.allow, &f.deny)?;
    let trusted_proxies = f
        .trusted_proxies
        .iter()
        .enumerate()
        .map(|(i, s)| Cidr::parse(s).map_err(|m| (format!("trusted_proxies[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    let client_address_header = match &f.client_address_header {
        Some(h) => ClientHeader::parse(h).map_err(|m| ("client_address_header".to_owned(), m))?,
        None if trusted_proxies.is_empty() => ClientHeader::None,
        None => {
            return Err((
                "client_address_header".into(),
                "trusted_proxies are listed, so name the one header they set for the client's address: \"x-forwarded-for\" (nginx's $proxy_add_x_forwarded_for, most load balancers), \"forwarded\" (RFC 7239), or \"none\" (PROXY protocol only). The other header is then ignored, so a client cannot forge it".into(),
            ))
        }
    };
    let ban = match &f.ban {
        None => None,
        Some(b) => {
            if b.after == 0 {
                return Err(("ban.after".into(), "must be at least 1".into()));
            }
            Some(BanPolicy {
                after: b.after,
                window: parse_duration(&b.window).map_err(|m| ("ban.window".to_owned(), m))?,
                duration: parse_duration(&b.duration)
                    .map_err(|m| ("ban.duration".to_owned(), m))?,
            })
        }
    };
    Ok(Firewall {
        rules,
        trusted_proxies,
        client_address_header,
        ban,
    })
}

fn authz_policy(
    z: &RawAuthz,
    path: &str,
) -> Result<wsgate_admission::authz::AuthzPolicy, (String, String)> {
    use wsgate_admission::authz::{AuthzPolicy, ChannelRule};
    let claims = z
        .require_claims
        .iter()
        .map(|(k, v)| {
            let json = serde_json::to_value(v)
                .map_err(|e| (format!("require_claims.{k}"), e.to_string()))?;
            Ok((k.clone(), json))
        })
        .collect::<Result<Vec<_>, (String, String)>>()?;
    let channel = match (&z.channel, &z.channel_claim) {
        (None, None) => None,
        (Some(template), Some(claim)) => {
            let names = crate::pattern::Pattern::parse(path)
                .map(|p| p.params().iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap_or_default();
            let mut rest = template.as_str();
            while let Some(start) = rest.find('{') {
                let end = rest[start..].find('}').ok_or((
                    "channel".to_owned(),
                    format!("{template:?} has an unclosed `{{`"),
                ))?;
                let name = &rest[start + 1..start + end];
                if !names.iter().any(|n| n == name) {
                    return Err((
                        "channel".into(),
                        format!("{template:?} uses {{{name}}}, but the route path {path:?} has parameters {names:?}"),
                    ));
                }
                rest = &rest[start + end..];
            }
            Some(ChannelRule {
                template: template.clone(),
                claim: claim.clone(),
            })
        }
        _ => {
            return Err((
                "channel".into(),
                "`channel` (e.g. \"chat:{room}\") and `channel_claim` (e.g. \"rooms\") go together"
                    .into(),
            ))
        }
    };
    Ok(AuthzPolicy {
        claims,
        scopes: z.require_scopes.clone(),
        channel,
        cert_subjects: z.cert_subjects.clone(),
        cert_sans: z.cert_sans.clone(),
    })
}

fn jwt_issuer(
    j: &RawJwt,
    base: &Path,
) -> Result<wsgate_admission::jwt::JwtIssuer, (String, String)> {
    use wsgate_admission::jwt::{parse_algorithms, JwtIssuer, JwtKey};
    let read = |key: &str, p: &PathBuf| {
        std::fs::read(base.join(p)).map_err(|e| {
            (
                key.to_owned(),
                format!("cannot read {}: {e}", base.join(p).display()),
            )
        })
    };
    let algs = |default: Option<&str>| -> Result<_, (String, String)> {
        let names = match (&j.algorithms, default) {
            (Some(a), _) => a.clone(),
            (None, Some(d)) => vec![d.to_owned()],
            (None, None) => Vec::new(),
        };
        parse_algorithms(&names).map_err(|m| ("algorithms".to_owned(), m))
    };
    let given = [
        j.public_key.is_some(),
        j.secret.is_some(),
        j.secret_file.is_some(),
        j.public_key_file.is_some(),
        j.jwks_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err((
            String::new(),
            "give exactly one of `secret`, `secret_file`, `public_key` or `public_key_file` (with `algorithms`), or `jwks_file`".into(),
        ));
    }
    let keys = if let Some(s) = &j.secret {
        vec![
            JwtKey::secret(j.kid.clone(), s.as_bytes(), algs(Some("HS256"))?)
                .map_err(|m| ("secret".to_owned(), m))?,
        ]
    } else if let Some(p) = &j.secret_file {
        let bytes = read("secret_file", p)?;
        let trimmed = bytes.trim_ascii_end();
        vec![JwtKey::secret(j.kid.clone(), trimmed, algs(Some("HS256"))?)
            .map_err(|m| ("secret_file".to_owned(), m))?]
    } else if let Some(pem) = &j.public_key {
        vec![
            JwtKey::public_pem(j.kid.clone(), pem.as_bytes(), algs(None)?)
                .map_err(|m| ("public_key".to_owned(), m))?,
        ]
    } else if let Some(p) = &j.public_key_file {
        let pem = read("public_key_file", p)?;
        vec![JwtKey::public_pem(j.kid.clone(), &pem, algs(None)?)
            .map_err(|m| ("public_key_file".to_owned(), m))?]
    } else if let Some(p) = &j.jwks_file {
        if j.algorithms.is_some() || j.kid.is_some() {
            return Err((
                "jwks_file".into(),
                "takes `alg` and `kid` from each key of the JWKS; remove `algorithms`/`kid`".into(),
            ));
        }
        let text = String::from_utf8(read("jwks_file", p)?)
            .map_err(|_| ("jwks_file".to_owned(), "is not UTF-8 JSON".to_owned()))?;
        JwtKey::jwks(&text).map_err(|m| ("jwks_file".to_owned(), m))?
    } else {
        Vec::new()
    };
    Ok(JwtIssuer {
        issuer: j.issuer.clone(),
        audience: j.audience.clone(),
        leeway: match &j.leeway {
            None => 30,
            Some(l) if l.trim() == "0s" => 0,
            Some(l) => parse_duration(l)
                .map_err(|m| ("leeway".to_owned(), m))?
                .as_secs(),
        },
        require_exp: j.require_exp.unwrap_or(true),
        keys,
    })
}

fn auth_policy(
    a: &RawAuth,
    dev_token: &mut Option<String>,
    base: &Path,
) -> Result<wsgate_admission::auth::AuthPolicy, (String, String)> {
    use wsgate_admission::auth::{ApiKey, AuthPolicy, Source};
    let names: Vec<String> = match &a.sources {
        Some(s) if s.is_empty() => {
            return Err((
                "sources".into(),
                "is empty: name at least one source, e.g. [\"bearer\"]".into(),
            ))
        }
        Some(s) => s.clone(),
        None => DEFAULT_SOURCES.iter().map(|s| s.to_string()).collect(),
    };
    let sources = names
        .iter()
        .enumerate()
        .map(|(j, s)| Source::parse(s).map_err(|m| (format!("sources[{j}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut api_keys = a
        .api_keys
        .iter()
        .enumerate()
        .map(|(j, k)| {
            let mut key = ApiKey::from_hex(&k.name, &k.sha256)
                .map_err(|m| (format!("api_keys[{j}].sha256"), m))?;
            key.scopes = k.scopes.clone();
            Ok::<_, (String, String)>(key)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if a.dev_token {
        let token = dev_token.get_or_insert_with(crate::ids::dev_token);
        api_keys.push(ApiKey::from_secret("dev", token));
    }
    let jwt = a
        .jwt
        .iter()
        .enumerate()
        .map(|(j, raw)| {
            jwt_issuer(raw, base).map_err(|(k, m)| {
                let key = if k.is_empty() {
                    format!("jwt[{j}]")
                } else {
                    format!("jwt[{j}].{k}")
                };
                (key, m)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let basic_users = a
        .basic_users
        .iter()
        .enumerate()
        .map(|(j, u)| {
            wsgate_admission::auth::BasicUser::new(&u.name, &u.hash)
                .map_err(|m| (format!("basic_users[{j}]"), m))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let has_basic_source = sources.contains(&Source::Basic);
    if has_basic_source == basic_users.is_empty() {
        return Err(if has_basic_source {
            ("basic_users".into(), "the `basic` source needs users: basic_users = [{ name = \"alice\", hash = \"…\" }] (`wsgate passwd` makes a hash)".into())
        } else {
            (
                "sources".into(),
                "basic_users are configured but `basic` is not among the sources".into(),
            )
        });
    }
    if api_keys.is_empty() && jwt.is_empty() && basic_users.is_empty() {
        return Err((
            "api_keys".into(),
            "no verifier: add `api_keys = [{ name = \"ci\", sha256 = \"…\" }]` (printf %s KEY | sha256sum) or `dev_token = true`, or a `[[route.auth.jwt]]` issuer".into(),
        ));
    }
    Ok(AuthPolicy {
        sources,
        api_keys,
        jwt,
        basic_users,
    })
}

fn default_explain(address: SocketAddr) -> Explain {
    if address.ip().is_loopback() {
        Explain::Full
    } else {
        Explain::Code
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not an IP address with a port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\" (port 0 picks a free one)")
    })
}

/// Parses `"250ms"`, `"10s"`, `"5m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: write a whole number and a unit, e.g. \"500ms\", \"10s\", \"5m\""))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => {
            return Err(format!(
                "{s:?} has unit {other:?}; use ms, s, m or h, e.g. \"10s\""
            ))
        }
    };
    if d.is_zero() {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(d)
}

fn parse_upstream(
    url: &str,
    ca_file: Option<PathBuf>,
    connect_timeout: Duration,
) -> Result<Upstream, String> {
    let endpoint = wsgate_handshake::endpoint::Endpoint::parse(
        url,
        wsgate_handshake::endpoint::Family::WebSocket,
    )?;
    if ca_file.is_some() && !endpoint.tls {
        return Err(format!(
            "{url:?}: upstream_ca is set but the upstream is not wss://"
        ));
    }
    Ok(Upstream {
        url: url.to_owned(),
        endpoint,
        ca_file,
        connect_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
    }

    const MIN: &str =
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/ws\"\nkind = \"echo\"\n";

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded();
        assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:8080");
        assert_eq!(c.listeners[0].explain, Explain::Full);
        assert!(c.routes.iter().any(|r| r.kind == RouteKind::Channel));
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.admin.unwrap().to_string(), "127.0.0.1:9090");
        assert_eq!(c.listeners[0].explain, Explain::Full);
        let c = parse(&MIN.replace("127.0.0.1:0", "0.0.0.0:0")).unwrap();
        assert_eq!(
            c.listeners[0].explain,
            Explain::Code,
            "non-loopback defaults to code"
        );
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let e = parse(&format!("{MIN}[limits]\nmax_conections = 3\n")).unwrap_err();
        assert_eq!(e.key, "limits.max_conections");
        assert!(
            e.message.contains("max_connections"),
            "the message lists the valid keys: {e}"
        );
        let e = parse(&MIN.replace("kind = \"echo\"", "kind = \"echo\"\ncolour = 1")).unwrap_err();
        assert_eq!(e.key, "route[0].colour", "{e}");
        assert!(
            e.to_string().starts_with("test.toml: `route[0].colour`: "),
            "{e}"
        );
    }

    #[test]
    fn wrong_values_name_their_path_and_the_fix() {
        let e = parse(&MIN.replace("127.0.0.1:0", "localhost")).unwrap_err();
        assert_eq!(e.key, "listener[0].address");
        let e = parse(&MIN.replace("\"echo\"", "\"mirror\"")).unwrap_err();
        assert_eq!(e.key, "route[0].kind", "{e}");
        let e = parse(&format!("{MIN}[limits]\nidle_timeout = \"10 parsecs\"\n")).unwrap_err();
        assert_eq!(e.key, "limits.idle_timeout");
        let e = parse(&format!(
            "{MIN}[limits]\nping_interval = \"2m\"\nidle_timeout = \"1m\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "limits.ping_interval");
        let e = parse(&MIN.replace("\"echo\"", "\"proxy\"")).unwrap_err();
        assert_eq!(e.key, "route[0].upstream");
        let e = parse(&MIN.replace("\"echo\"", "\"proxy\"\nupstream = \"http://x/\"")).unwrap_err();
        assert!(e.message.contains("ws://"), "{e}");
        let e = parse(&MIN.replace("\"echo\"", "\"echo\"\nupstream = \"ws://x/\"")).unwrap_err();
        assert_eq!(e.key, "route[0].upstream");
        let e = parse(&MIN.replace("/ws\"", "ws\"")).unwrap_err();
        assert_eq!(e.key, "route[0].path");
        let e = parse("[[listener]\n").unwrap_err();
        assert!(e.key.is_empty() && e.message.contains("line 1"), "{e}");
    }

    #[test]
    fn upstream_urls() {
        let u = parse_upstream("wss://[::1]/a?b=c", None, Duration::from_secs(1))
            .unwrap()
            .endpoint;
        assert!(u.tls);
        assert_eq!(
            (u.host.as_str(), u.port, u.path_and_query.as_str()),
            ("::1", 443, "/a?b=c")
        );
        let u = parse_upstream("ws://127.0.0.1:9000", None, Duration::from_secs(1))
            .unwrap()
            .endpoint;
        assert_eq!(
            (u.port, u.path_and_query.as_str(), u.authority.as_str()),
            (9000, "/", "127.0.0.1:9000")
        );
    }

    #[test]
    fn the_readme_configuration_example_is_valid() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("a toml block") + 8;
        let text = &readme[start..start + readme[start..].find("```").expect("closed")];
        let c = parse(text).unwrap_or_else(|e| panic!("README example: {e}"));
        assert!(c.listeners[0].tls.is_some() && c.routes.len() == 2);
        assert!(!c.routes[0].policy(0).gates.authz.is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
    }
}
