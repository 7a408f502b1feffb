//! The admission pipeline: the gates a valid WebSocket handshake passes before it is admitted.
//!
//! A route's gates run in a fixed order, cheapest and least revealing first (firewall → TLS
//! identity → host → origin → authentication → authorization: [`firewall`], TLS identity,
//! [`host`], [`origin`], [`auth`] (with [`jwt`] and [`external`]) and [`authz`]), then the
//! server's [`limits`]. Each gate is a module with its own configuration type and a pure check
//! function; what admission needs from outside (the external check's HTTP call, a thread for slow
//! password hashes) sits behind [`Services`], so the whole pipeline is tested without sockets.
//! The server gathers a [`Request`] and awaits [`Policy::admit`].

#![forbid(unsafe_code)]

pub mod auth;
pub mod authz;
pub mod external;
pub mod firewall;
pub mod host;
pub mod jwt;
pub mod limits;
pub mod origin;
pub mod proxy_protocol;

pub use wsgate_handshake::Refusal;
pub use wsgate_reasons::Reason;

use http::HeaderMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::Instant;

/// What admission asks of the process that drives it. The server answers with its HTTP client and
/// its runtime; a test answers from memory, so every decision is tested without sockets.
pub trait Services: Sync {
    /// Asks the external check service about a handshake: the identity it names, or its refusal
    /// (`auth.missing`/`auth.invalid` for its 401/403, `auth.unavailable` when it cannot answer).
    fn external_check(
        &self,
        policy: &external::ExternalPolicy,
        req: &Request<'_>,
    ) -> impl Future<Output = Result<auth::Identity, Refusal>> + Send;

    /// Whether the store shared with other nodes can be used, when the node is configured to
    /// refuse new handshakes without it (`cluster.unavailable`). By default, always.
    fn shared_ready(&self) -> Result<(), Refusal> {
        Ok(())
    }

    /// On a clustered node, takes a handshake token from the bucket all nodes share: `Some` with
    /// the answer, or `None` (no cluster, or the shared store did not answer in time) to count
    /// on this node.
    fn shared_rate(
        &self,
        _client: IpAddr,
        _rate: f64,
        _burst: f64,
    ) -> impl Future<Output = Option<Result<(), Refusal>>> + Send {
        async { None }
    }

    /// On a clustered node, takes one of the `max` connections an identity may hold across all
    /// nodes: `Some` with a lease (dropping it gives the place back) or the refusal; `None` to
    /// count on this node.
    fn shared_identity(
        &self,
        _identity: &str,
        _max: usize,
    ) -> impl Future<Output = Option<Result<Lease, Refusal>>> + Send {
        async { None }
    }

    /// Runs a verification that is slow on purpose (password hashes) where it does not hold up
    /// other connections' handshakes. By default, right here.
    fn slow<T>(&self, verify: impl FnOnce() -> T) -> T {
        verify()
    }
}

/// A place held in a store outside this process (a cluster's identity lease); dropping it gives
/// the place back.
pub type Lease = Box<dyn std::any::Any + Send + Sync>;

/// For routes without an external check: admission needs nothing from outside.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoServices;

impl Services for NoServices {
    async fn external_check(
        &self,
        policy: &external::ExternalPolicy,
        _req: &Request<'_>,
    ) -> Result<auth::Identity, Refusal> {
        Err(Refusal::new(
            Reason::AuthUnavailable,
            format!("no external check client to call {}", policy.url),
        ))
    }
}

/// What the gates look at, gathered from the connection and the request head.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The client address (the TCP peer, or what a trusted proxy said; see [`firewall::client_address`]).
    pub client: IpAddr,
    /// `wss://` (TLS) or `ws://`, for same-origin checks.
    pub tls: bool,
    /// The `Host` header.
    pub host: &'a str,
    /// The `Origin` header, if any.
    pub origin: Option<&'a str>,
    /// The whole header map (credentials live in several headers).
    pub headers: &'a HeaderMap,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// Subprotocols the client offered, in order.
    pub subprotocols: &'a [String],
    /// The route's path parameters, e.g. `("room", "lobby")`.
    pub params: &'a [(String, String)],
    /// The verified client certificate, on a TLS listener that asked for one.
    pub client_cert: Option<&'a ClientCert>,
}

/// The header map of a request that carries none.
static NO_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);

impl<'a> Request<'a> {
    /// A plain `ws://` request from `client` for `host` and nothing else: no headers, Origin,
    /// query, subprotocols, parameters or certificate. Tests, fuzz targets and tools start here
    /// and set what they need with struct update syntax (`Request { origin, ..Request::new(..) }`).
    pub fn new(client: IpAddr, host: &'a str) -> Request<'a> {
        Request {
            client,
            tls: false,
            host,
            origin: None,
            headers: &NO_HEADERS,
            query: None,
            subprotocols: &[],
            params: &[],
            client_cert: None,
        }
    }
}

/// What a verified client certificate says about the client (the TLS identity).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject, e.g. `CN=alice, O=Example`.
    pub subject: String,
    /// Subject alternative names: DNS names, e-mail addresses, URIs, IP addresses.
    pub sans: Vec<String>,
}

/// The effective policy of one route on one listener.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The listener's address rules for its routes (the global ones run before route lookup).
    pub listener_firewall: firewall::IpRules,
    /// The route's own address rules; they apply on top of the listener's.
    pub firewall: firewall::IpRules,
    /// Whether the route requires a verified client certificate (TLS identity gate).
    pub client_cert_required: bool,
    /// Which `Host` values the route answers to.
    pub host: host::HostPolicy,
    /// Which page origins may open connections.
    pub origin: origin::OriginPolicy,
    /// Who must the client prove to be; `None` admits anonymous clients.
    pub auth: Option<auth::AuthPolicy>,
    /// What an authenticated client may do here (requires `auth`).
    pub authz: authz::AuthzPolicy,
    /// Authentication delegated to an HTTP service, called through [`Services::external_check`].
    pub external: Option<external::ExternalPolicy>,
}

/// What admission learned about an admitted client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Who the client proved to be, if the route authenticates.
    pub identity: Option<auth::Identity>,
    /// Subprotocols left after removing a credential carried in `Sec-WebSocket-Protocol`: only
    /// these may be selected, so a token is never echoed back.
    pub subprotocols: Vec<String>,
}

impl Policy {
    /// Runs the route's gates in order (firewall, TLS identity, host, origin, authentication,
    /// authorization); the first refusal wins. The only await is the external check, if the
    /// route delegates authentication to one.
    pub async fn admit(
        &self,
        req: &Request<'_>,
        services: &impl Services,
    ) -> Result<Admitted, Refusal> {
        self.listener_firewall.check(req.client, "listener")?;
        self.firewall.check(req.client, "route")?;
        if self.client_cert_required && req.client_cert.is_none() {
            return Err(Refusal::new(
                Reason::TlsClientCertRequired,
                "the route requires a client certificate and the TLS handshake presented none",
            ));
        }
        self.host.check(req.host)?;
        self.origin.check(req)?;
        let (identity, subprotocols) = match (&self.external, &self.auth) {
            (Some(x), _) => {
                let id = services.external_check(x, req).await?;
                // Entries carrying a credential under a configured prefix are never selectable.
                let rest = auth::strip_prefixed(
                    req.subprotocols,
                    x.subprotocol_prefixes.iter().map(String::as_str),
                );
                (Some(id), rest)
            }
            (None, Some(a)) => {
                let (id, rest) = if a.basic_users.is_empty() {
                    a.authenticate(req)?
                } else {
                    services.slow(|| a.authenticate(req))?
                };
                (Some(id), rest)
            }
            // Without an auth gate, a verified certificate is the identity.
            (None, None) => (
                req.client_cert.map(auth::Identity::from_cert),
                req.subprotocols.to_vec(),
            ),
        };
        self.authz
            .check(identity.as_ref(), req.client_cert, req.params)?;
        Ok(Admitted {
            identity,
            subprotocols,
        })
    }
}

/// Gates that apply to every request on every route, run before the route is even looked up.
#[derive(Debug, Default)]
pub struct Global {
    /// Address rules for everyone.
    pub firewall: firewall::IpRules,
    /// Peers whose forwarding header (and PROXY protocol header) is believed.
    pub trusted_proxies: Vec<firewall::Cidr>,
    /// The one forwarding header those proxies set.
    pub client_header: firewall::ClientHeader,
    /// Temporary bans (automatic ones only with `[firewall.ban]`; an operator's always).
    pub bans: std::sync::Arc<firewall::Bans>,
}

impl Global {
    /// Whether a peer's statements about the client (forwarding and PROXY headers) are believed.
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(peer))
    }

    /// The client address for a TCP peer and request headers.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> firewall::ClientAddress {
        firewall::client_address(peer, headers, &self.trusted_proxies, self.client_header)
    }

    /// Bans first (cheapest, and a banned client learns nothing more), then the global rules.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Refusal> {
        self.bans.check(client, now)?;
        self.firewall.check(client, "global")
    }

    /// Counts a refusal towards a ban; true when it starts one. Refusals that are the server's
    /// own condition (5xx) do not count against the client.
    pub fn record_refusal(&self, client: IpAddr, reason: Reason, now: Instant) -> bool {
        reason.status() < 500
            && reason != Reason::FirewallBanned
            && self.bans.record_refusal(client, now)
    }
}
