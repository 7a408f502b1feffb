//! Parsers for the values a configuration holds (addresses, durations, URLs): each error says
//! what to write instead.

use super::model::{Explain, HttpTarget, Upstream};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `full` on loopback, where only the operator connects; `code` elsewhere.
pub fn default_explain(address: SocketAddr) -> Explain {
    if address.ip().is_loopback() {
        Explain::Full
    } else {
        Explain::Code
    }
}

/// A socket address, with the forms to write in the error.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
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

/// A proxy route's upstream: a `ws://` or `wss://` URL (and its CA file, only for `wss://`).
pub fn parse_upstream(
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

/// An `http://` or `https://` service URL (the external check).
pub fn parse_http_target(url: &str) -> Result<HttpTarget, String> {
    HttpTarget::parse(url, wsgate_handshake::endpoint::Family::Http)
}
