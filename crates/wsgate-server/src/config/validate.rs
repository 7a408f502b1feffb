//! Validation: the raw file becomes the model, key by key, each mistake reported with the file,
//! the key path and the fix. Only the gates' settings are left for [`super::build`], which may
//! read key files.

use super::model::*;
use super::raw::{RawConfig, RawFirewall, RawPolicy};
use super::values::{default_explain, parse_addr, parse_duration, parse_upstream};
use super::ConfigError;
use crate::pattern::Pattern;
use std::path::Path;
use std::time::Duration;

/// A configuration whose keys are all checked, with each route's own policy table and each
/// listener's default table kept raw until [`super::build::policies`] builds the gates from them.
pub(super) struct Checked {
    /// The model, routes without their `policies` yet and no `dev_token` yet.
    pub config: Config,
    /// `[listener.policy]` of each listener, in listener order.
    pub listener_policies: Vec<Option<RawPolicy>>,
    /// Each route's own policy keys, in route order.
    pub route_policies: Vec<RawPolicy>,
}

/// Checks every key of the raw configuration and fills in defaults. Routes come out with their
/// policy tables still raw (see [`Checked`]): building them is [`super::build`]'s job.
pub(super) fn validate(raw: RawConfig, source: &str, base: &Path) -> Result<Checked, ConfigError> {
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
    let admin_token = admin_token(&raw.admin, base).map_err(|(k, m)| err(k.into(), m))?;

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
    let listener_policies: Vec<Option<RawPolicy>> =
        raw.listeners.into_iter().map(|l| l.policy).collect();
    let mut route_policies = Vec::new();
    let mut routes = Vec::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let key = |k: &str| format!("route[{i}].{k}");
        let pattern = Pattern::parse(&r.path).map_err(|m| err(key("path"), m))?;
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
        use wsgate_handshake::deflate::Mode;
        let compression = match (r.compression.as_deref(), r.kind) {
            (Some("off"), _) => Mode::Off,
            // A proxy passes the client's offers to the upstream and the answer back: the
            // upstream decides, and the relay passes compressed frames as they are.
            (None, _) | (Some("stateless"), _) => Mode::Stateless,
            (Some("contextual"), RouteKind::Echo) => Mode::Contextual,
            (Some("contextual"), RouteKind::Channel) => {
                return Err(err(
                    key("compression"),
                    "channel routes compress each broadcast once for every member, which needs \"stateless\" (the default); \"contextual\" would compress it once per member".into(),
                ))
            }
            (Some("contextual"), RouteKind::Proxy) => {
                return Err(err(
                    key("compression"),
                    "on a proxy route the upstream compresses (the client's offer is passed to it): use \"off\" to offer nothing, or leave compression out".into(),
                ))
            }
            (Some(other), _) => {
                return Err(err(
                    key("compression"),
                    format!("{other:?}: use \"stateless\" (the default: no memory held while idle), \"contextual\" (better ratios, memory per connection) or \"off\""),
                ))
            }
        };
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
                parse_upstream(
                    url,
                    r.upstream_ca.as_ref().map(|c| base.join(c)),
                    connect_timeout,
                )
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
        route_policies.push(own);
        routes.push(Route {
            policies: Vec::new(),
            pattern,
            path: r.path,
            kind: r.kind,
            subprotocols: r.subprotocols,
            subprotocol_required: r.subprotocol_required,
            deliver_to_sender: r.deliver_to_sender.unwrap_or(true),
            compression,
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
    let cluster = match raw.cluster {
        None => None,
        Some(c) => Some(cluster(c, base).map_err(|(k, m)| err(format!("cluster.{k}"), m))?),
    };
    Ok(Checked {
        config: Config {
            source: source.to_owned(),
            listeners,
            admin,
            admin_token,
            limits,
            logging,
            routes,
            dev_token: None,
            firewall,
            cluster,
            jwks: Vec::new(),
        },
        listener_policies,
        route_policies,
    })
}

/// The global `[firewall]`: rules, trusted proxies, their one header and bans.
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

/// `[cluster]`: the Redis URL (checked, never echoed with its password), this node's name and
/// the channel prefix.
fn cluster(c: super::raw::RawCluster, base: &Path) -> Result<Cluster, (String, String)> {
    let url = c.redis.trim();
    let shown = super::model::redact_url(url);
    let tls_url = match url.split_once("://").map(|(s, _)| s) {
        Some("redis") => false,
        Some("rediss") => true,
        _ => {
            return Err((
                "redis".into(),
                format!("{shown:?} is not a Redis URL; write redis://HOST:PORT/DB, e.g. \"redis://127.0.0.1:6379/0\", or rediss:// for TLS (a password goes in redis://:PASSWORD@HOST)"),
            ))
        }
    };
    if let Err(e) = redis::Client::open(url) {
        return Err(("redis".into(), format!("{shown}: {e}")));
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    let node_id = match c.node_id {
        Some(n) if name_ok(&n) => n,
        Some(n) => {
            return Err((
                "node_id".into(),
                format!("{n:?}: use 1 to 64 letters, digits, `-`, `_` or `.`"),
            ))
        }
        None => crate::ids::node_id(),
    };
    let prefix = c.prefix.unwrap_or_else(|| "wsgate".to_owned());
    if !name_ok(&prefix) {
        return Err((
            "prefix".into(),
            format!("{prefix:?}: use 1 to 64 letters, digits, `-`, `_` or `.`"),
        ));
    }
    let in_url = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .is_some_and(|authority| authority.contains('@'));
    let password = match (c.password_file, c.password_env) {
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err((
                "password_file".into(),
                "give the Redis password one way: password_file or password_env".into(),
            ))
        }
        _ if in_url => {
            return Err((
                "redis".into(),
                format!("{shown} carries a password, and password_file or password_env gives another: keep one"),
            ))
        }
        (Some(f), None) => Some(PasswordSource::File(base.join(f))),
        (None, Some(v)) => Some(PasswordSource::Env(v)),
    };
    let lease_ttl = match c.lease_ttl {
        None => Duration::from_secs(15),
        Some(s) => parse_duration(&s).map_err(|m| ("lease_ttl".to_owned(), m))?,
    };
    if lease_ttl < Duration::from_millis(300) {
        return Err((
            "lease_ttl".into(),
            "must be at least 300ms: a node renews its leases every third of it".into(),
        ));
    }
    for (key, given) in [
        ("ca_file", c.ca_file.is_some()),
        ("cert_file", c.cert_file.is_some()),
        ("key_file", c.key_file.is_some()),
    ] {
        if given && !tls_url {
            return Err((
                key.into(),
                format!(
                    "is for TLS to Redis, and {shown} is plain: write rediss://… or remove {key}"
                ),
            ));
        }
    }
    let client = match (c.cert_file, c.key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((base.join(cert), base.join(key))),
        (Some(_), None) => {
            return Err((
                "key_file".into(),
                "cert_file needs its private key: add key_file".into(),
            ))
        }
        (None, Some(_)) => {
            return Err((
                "cert_file".into(),
                "key_file needs its certificate: add cert_file".into(),
            ))
        }
    };
    let tls = super::model::RedisTls {
        ca_file: c.ca_file.map(|f| base.join(f)),
        client,
    };
    Ok(Cluster {
        tls,
        sharded: c.sharded.unwrap_or(false),
        redis: url.to_owned(),
        node_id,
        prefix,
        lease_ttl,
        on_redis_down: c.on_redis_down.unwrap_or_default(),
        password,
    })
}

/// `admin.token` or `admin.token_file` (read now, trimmed), long enough to resist guessing.
fn admin_token(
    a: &super::raw::RawAdmin,
    base: &Path,
) -> Result<Option<AdminToken>, (&'static str, String)> {
    let (key, token) = match (&a.token, &a.token_file) {
        (Some(_), Some(_)) => {
            return Err((
                "admin.token",
                "set admin.token or admin.token_file, not both".into(),
            ))
        }
        (Some(t), None) => ("admin.token", t.clone()),
        (None, Some(f)) => {
            let path = base.join(f);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                (
                    "admin.token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            ("admin.token_file", text.trim().to_owned())
        }
        (None, None) => return Ok(None),
    };
    if token.chars().count() < MIN_ADMIN_TOKEN
        || token.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err((
            key,
            format!("the admin token must be at least {MIN_ADMIN_TOKEN} characters without spaces (e.g. `openssl rand -hex 24`)"),
        ));
    }
    Ok(Some(AdminToken(token)))
}
