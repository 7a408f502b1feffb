//! The admission pipeline: the gates a valid WebSocket handshake passes before it is admitted.
//!
//! Gates run in a fixed order, cheapest and least revealing first (firewall → TLS identity → host →
//! origin → authentication → authorization → limits; the gates built so far are [`origin`] and
//! [`auth`]). Each gate is a module with its own configuration type and a pure check function, so the
//! whole pipeline is tested without sockets; the server only gathers a [`Request`] and drives
//! [`Policy::admit`].

pub mod auth;
pub mod origin;

pub use wsgate_handshake::Refusal;
pub use wsgate_reasons::Reason;

use http::HeaderMap;

/// What the gates look at, gathered from the connection and the request head.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
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
}

/// The effective policy of one route on one listener.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Which page origins may open connections.
    pub origin: origin::OriginPolicy,
    /// Who must the client prove to be; `None` admits anonymous clients.
    pub auth: Option<auth::AuthPolicy>,
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
    /// Runs the gates in order; the first refusal wins.
    pub fn admit(&self, req: &Request<'_>) -> Result<Admitted, Refusal> {
        self.origin.check(req)?;
        let (identity, subprotocols) = match &self.auth {
            Some(a) => {
                let (id, rest) = a.authenticate(req)?;
                (Some(id), rest)
            }
            None => (None, req.subprotocols.to_vec()),
        };
        Ok(Admitted {
            identity,
            subprotocols,
        })
    }
}
