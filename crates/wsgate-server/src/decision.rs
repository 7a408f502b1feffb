//! The handshake decision: one request head in, an admission or a refusal out. Every step runs
//! here, in the order of [`STEPS`] (the README's table is tested against it): draining, framing,
//! the global firewall, route lookup, RFC 6455, the route's gates (through
//! [`wsgate_admission::Policy::admit`]), the per-client limits, the subprotocol choice and the
//! connection slot. No sockets and no hyper types: what it needs from outside comes through
//! [`Services`], so the whole admit/refuse table is tested without a server.

use crate::config::{Config, Route, RouteKind};
use crate::routes::{Match, Router};
use http::{HeaderMap, Method, Uri, Version};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use wsgate_admission::auth::Identity;
use wsgate_admission::firewall::ClientAddress;
use wsgate_admission::limits::{Connections, Held, Limits, Slot};
use wsgate_admission::{ClientCert, Global, Services};
use wsgate_handshake::{select_subprotocol, HeadLimits, Reason, Refusal};

/// One step of the decision: its name (as in the README's table) and the codes it refuses with.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// The step's name.
    pub name: &'static str,
    /// Every reason this step may refuse with.
    pub reasons: &'static [Reason],
}

/// The steps in the order they run, from the accepted connection to the 101. The first and the
/// last run outside [`Gatekeeper::decide`]: handshakes in progress are counted before a request
/// head exists (`accept.rs`), and a proxy route's upstream is connected after admission
/// (`handshake.rs`), since only an admitted client may cost an upstream connection.
pub const STEPS: &[Step] = &[
    Step {
        name: "handshakes in progress",
        reasons: &[Reason::LimitHandshakesInProgress],
    },
    Step {
        name: "draining",
        reasons: &[Reason::ServerDraining],
    },
    Step {
        name: "framing",
        reasons: &[
            Reason::HandshakeHeadTooLarge,
            Reason::HandshakeBody,
            Reason::HandshakeBadRequest,
        ],
    },
    Step {
        name: "global bans and firewall",
        reasons: &[Reason::FirewallBanned, Reason::FirewallIpDenied],
    },
    Step {
        name: "route lookup",
        reasons: &[Reason::RouteNotFound],
    },
    Step {
        name: "RFC 6455",
        reasons: &[
            Reason::HandshakeMethod,
            Reason::HandshakeVersion,
            Reason::HandshakeNotUpgrade,
            Reason::HandshakeBadKey,
            Reason::HandshakeDuplicateHeader,
            Reason::HandshakeBadRequest,
        ],
    },
    Step {
        name: "listener and route firewall",
        reasons: &[Reason::FirewallIpDenied],
    },
    Step {
        name: "TLS identity",
        reasons: &[Reason::TlsClientCertRequired],
    },
    Step {
        name: "host",
        reasons: &[Reason::HostNotAllowed],
    },
    Step {
        name: "origin",
        reasons: &[Reason::OriginNotAllowed, Reason::OriginMissing],
    },
    Step {
        name: "authentication",
        reasons: &[
            Reason::AuthMissing,
            Reason::AuthInvalid,
            Reason::AuthExpired,
            Reason::AuthUnavailable,
        ],
    },
    Step {
        name: "authorization",
        reasons: &[Reason::AuthzForbidden],
    },
    Step {
        name: "limits",
        reasons: &[
            Reason::ClusterUnavailable,
            Reason::LimitRate,
            Reason::LimitClientConnections,
        ],
    },
    Step {
        name: "subprotocol",
        reasons: &[Reason::SubprotocolUnsupported],
    },
    Step {
        name: "connection slot",
        reasons: &[Reason::LimitConnections],
    },
    Step {
        name: "upstream (proxy routes)",
        reasons: &[Reason::UpstreamRefused, Reason::UpstreamUnreachable],
    },
];

/// A request head as the decision sees it, with what the connection knows about the client.
#[derive(Debug, Clone, Copy)]
pub struct Handshake<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target.
    pub uri: &'a Uri,
    /// The HTTP version.
    pub version: Version,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The TCP peer, or the client a trusted PROXY header named.
    pub peer: IpAddr,
    /// Whether the connection is TLS (`wss://`).
    pub tls: bool,
    /// Which listener accepted it (a route's policy differs per listener).
    pub listener: usize,
    /// The verified client certificate, on a mutual-TLS listener.
    pub client_cert: Option<&'a ClientCert>,
}

/// The decision, with what a refusal's log line needs even when there is no admission.
#[derive(Debug)]
pub struct Decision<'g> {
    /// The client address (after trusted forwarding headers).
    pub client: ClientAddress,
    /// The route the path matched, if any.
    pub route: Option<Match<'g>>,
    /// Admitted, or the first refusal.
    pub outcome: Result<Admit<'g>, Refusal>,
}

/// An admitted handshake: what the 101 and the connection need, and the places it holds.
#[derive(Debug)]
pub struct Admit<'g> {
    /// The route admitted to.
    pub route: &'g Route,
    /// Its position in the configuration (channel rooms are per route).
    pub route_index: usize,
    /// `Sec-WebSocket-Accept` for the 101.
    pub accept: String,
    /// The subprotocol chosen for the client (a proxy route's upstream may still choose).
    pub subprotocol: Option<String>,
    /// The client's subprotocols without credential entries: all a proxy route may pass on.
    pub offered: Vec<String>,
    /// Who the client proved to be, if anyone.
    pub identity: Option<Identity>,
    /// The client's and identity's connection counts, held while the connection lives.
    pub held: Held,
    /// On a clustered node, the identity's place among all nodes' connections.
    pub lease: Option<wsgate_admission::Lease>,
    /// The server-wide connection place, held while the connection lives.
    pub slot: Slot,
}

/// The global gates of a configuration, with its ban list (kept across reloads).
fn global_gates(config: &Config, bans: Arc<wsgate_admission::firewall::Bans>) -> Global {
    Global {
        firewall: config.firewall.rules.clone(),
        trusted_proxies: config.firewall.trusted_proxies.clone(),
        client_header: config.firewall.client_address_header,
        bans,
    }
}

/// The state every decision reads and the counters it takes from: built once per configuration.
#[derive(Debug)]
pub struct Gatekeeper {
    router: Router,
    global: Global,
    limits: Arc<Limits>,
    connections: Arc<Connections>,
    head: HeadLimits,
    draining: AtomicBool,
}

impl Gatekeeper {
    /// The gatekeeper of a validated configuration.
    pub fn new(config: &Config) -> Gatekeeper {
        let bans = Arc::new(wsgate_admission::firewall::Bans::new(config.firewall.ban));
        Gatekeeper {
            router: Router::new(&config.routes),
            global: global_gates(config, bans),
            limits: Limits::new(config.limits.clients),
            connections: Connections::new(config.limits.max_connections),
            head: config.limits.head,
            draining: AtomicBool::new(false),
        }
    }

    /// The gatekeeper of a reloaded configuration: new routes, policies and rules, while the
    /// counters (open connections, per-client and per-identity counts, rate buckets, bans in
    /// force) carry on, with the new limits applying from now on.
    pub fn reloaded(&self, config: &Config) -> Gatekeeper {
        self.limits.set_policy(config.limits.clients);
        self.connections.set_max(config.limits.max_connections);
        // One ban list for the server's life: bans in force outlive a reload, and the cluster
        // link keeps feeding the same list.
        let bans = self.global.bans.clone();
        bans.set_policy(config.firewall.ban);
        Gatekeeper {
            router: Router::new(&config.routes),
            global: global_gates(config, bans),
            limits: self.limits.clone(),
            connections: self.connections.clone(),
            head: config.limits.head,
            draining: AtomicBool::new(self.draining()),
        }
    }

    /// The global gates (trusted proxies, bans), which connections consult before a request.
    pub fn global(&self) -> &Global {
        &self.global
    }

    /// From now on every handshake is refused with `server.draining`.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the server is shutting down.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// WebSocket connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }

    /// Decides one handshake, running every step of [`STEPS`] from draining to the connection
    /// slot; the first refusal wins.
    pub async fn decide<'g>(
        &'g self,
        req: &Handshake<'_>,
        services: &impl Services,
    ) -> Decision<'g> {
        let client = self.global.client(req.peer, req.headers);
        let route = self.router.find(req.uri.path());
        let outcome = self.steps(req, &client, route.as_ref(), services).await;
        Decision {
            client,
            route,
            outcome,
        }
    }

    async fn steps<'g>(
        &self,
        req: &Handshake<'_>,
        client: &ClientAddress,
        route: Option<&Match<'g>>,
        services: &impl Services,
    ) -> Result<Admit<'g>, Refusal> {
        if self.draining() {
            return Err(Refusal::new(
                Reason::ServerDraining,
                "the server is draining for shutdown",
            ));
        }
        // Framing first: a head too large, a body or two hosts is refused before any gate reads it.
        wsgate_handshake::check_framing(req.method, req.uri, req.headers, self.head)?;
        self.global.check(client.ip, Instant::now())?;
        let Some(m) = route else {
            return Err(Refusal::new(
                Reason::RouteNotFound,
                format!("no route matches the path {:?}", req.uri.path()),
            ));
        };
        let hs = wsgate_handshake::validate(req.method, req.version, req.headers)?;
        let view = wsgate_admission::Request {
            client: client.ip,
            tls: req.tls,
            host: &hs.host,
            origin: hs.origin.as_deref(),
            headers: req.headers,
            query: req.uri.query(),
            subprotocols: &hs.subprotocols,
            params: &m.params,
            client_cert: req.client_cert,
        };
        let admitted = m.route.policy(req.listener).admit(&view, services).await?;
        let identity = admitted.identity.as_ref().map(|i| i.name.as_str());
        // A clustered node may be told to refuse rather than count alone while its store is down.
        services.shared_ready()?;
        // The rate is shared by the nodes of a cluster when they can reach their store.
        let counted_elsewhere = match self.limits.rate() {
            Some((rate, burst)) => match services.shared_rate(client.ip, rate, burst).await {
                Some(Err(refusal)) => return Err(refusal),
                Some(Ok(())) => true,
                None => false,
            },
            None => false,
        };
        // So are an identity's connections (leases that expire if a node dies).
        let lease = match (self.limits.per_identity(), identity) {
            (Some(max), Some(id)) => match services.shared_identity(id, max).await {
                Some(Err(refusal)) => return Err(refusal),
                Some(Ok(lease)) => Some(lease),
                None => None,
            },
            _ => None,
        };
        let held = self.limits.admit_with(
            client.ip,
            identity.filter(|_| lease.is_none()),
            Instant::now(),
            !counted_elsewhere,
        )?;
        // A credential carried as a subprotocol has been removed: only real subprotocols remain.
        let offered = admitted.subprotocols;
        let subprotocol = choose_subprotocol(m.route, &offered)?;
        let slot = self.connections.acquire()?;
        Ok(Admit {
            route: m.route,
            route_index: m.index,
            accept: hs.accept,
            subprotocol,
            offered,
            identity: admitted.identity,
            held,
            lease,
            slot,
        })
    }
}

/// The route's subprotocol for what the client offered. A proxy route that lists none lets the
/// upstream choose, so nothing is refused here.
fn choose_subprotocol(route: &Route, offered: &[String]) -> Result<Option<String>, Refusal> {
    let chosen = select_subprotocol(offered, &route.subprotocols).map(str::to_owned);
    if route.kind == RouteKind::Proxy && route.subprotocols.is_empty() {
        return Ok(chosen);
    }
    if chosen.is_none() && !offered.is_empty() {
        // The offered names are not shown: clients sometimes carry tokens in this header.
        return Err(Refusal::new(
            Reason::SubprotocolUnsupported,
            format!(
                "the client offered {} subprotocol(s), none of which the route supports; it supports {:?}",
                offered.len(),
                route.subprotocols
            ),
        ));
    }
    if chosen.is_none() && route.subprotocol_required {
        return Err(Refusal::new(
            Reason::SubprotocolUnsupported,
            format!(
                "the route requires one of the subprotocols {:?} and none was offered",
                route.subprotocols
            ),
        ));
    }
    Ok(chosen)
}
