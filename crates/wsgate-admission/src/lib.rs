//! The admission pipeline: the gates a valid WebSocket handshake passes before it is admitted.
//!
//! Gates run in a fixed order, cheapest and least revealing first (firewall → TLS identity → host →
//! origin → authentication → authorization → limits: [`firewall`], TLS identity, [`host`],
//! [`origin`], [`auth`] (with [`jwt`] and [`external`]), [`authz`] and [`limits`]). Each gate is a module with its own configuration type and a pure check function, so the
//! whole pipeline is tested without sockets; the server only gathers a [`Request`] and drives
//! [`Policy::admit`].

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
use std::net::IpAddr;
use std::time::Instant;

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
    /// Authentication delegated to an HTTP service; the server makes the call between
    /// [`Policy::before_auth`] and [`Policy::after_auth`].
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
    /// Runs the route's gates in order; the first refusal wins. Routes with an external check
    /// are driven through [`Policy::before_auth`] and [`Policy::after_auth`] instead, with the
    /// server's HTTP call in between.
    pub fn admit(&self, req: &Request<'_>) -> Result<Admitted, Refusal> {
        self.before_auth(req)?;
        let (identity, subprotocols) = match &self.auth {
            Some(a) => {
                let (id, rest) = a.authenticate(req)?;
                (Some(id), rest)
            }
            // Without an auth gate, a verified certificate is the identity.
            None => (
                req.client_cert.map(auth::Identity::from_cert),
                req.subprotocols.to_vec(),
            ),
        };
        self.after_auth(identity, subprotocols, req)
    }

    /// The gates before authentication: route firewall, TLS identity, host, origin.
    pub fn before_auth(&self, req: &Request<'_>) -> Result<(), Refusal> {
        self.listener_firewall.check(req.client, "listener")?;
        self.firewall.check(req.client, "route")?;
        if self.client_cert_required && req.client_cert.is_none() {
            return Err(Refusal::new(
                Reason::TlsClientCertRequired,
                "the route requires a client certificate and the TLS handshake presented none",
            ));
        }
        self.host.check(req.host)?;
        self.origin.check(req)
    }

    /// The gate after authentication: authorization over the identity.
    pub fn after_auth(
        &self,
        identity: Option<auth::Identity>,
        subprotocols: Vec<String>,
        req: &Request<'_>,
    ) -> Result<Admitted, Refusal> {
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
    /// Temporary bans, if enabled.
    pub bans: Option<firewall::Bans>,
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
        if let Some(b) = &self.bans {
            b.check(client, now)?;
        }
        self.firewall.check(client, "global")
    }

    /// Counts a refusal towards a ban; true when it starts one. Refusals that are the server's
    /// own condition (5xx) do not count against the client.
    pub fn record_refusal(&self, client: IpAddr, reason: Reason, now: Instant) -> bool {
        match &self.bans {
            Some(b) if reason.status() < 500 && reason != Reason::FirewallBanned => {
                b.record_refusal(client, now)
            }
            _ => false,
        }
    }
}
