//! The external check: authentication delegated to the operator's own HTTP service, in the style
//! of nginx `auth_request`, Envoy `ext_authz` and Traefik ForwardAuth.
//!
//! This module holds the pure parts: which headers the check request carries (the original
//! method, URI, client address, Origin and credentials, and never the hop-by-hop `Upgrade` /
//! `Connection` or the WebSocket key headers), how the answer is read, and the decision cache.
//! The server makes the HTTP call.

use crate::auth::Identity;
use crate::{Reason, Refusal, Request};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use ring::digest::{Context, SHA256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Request headers passed through to the check service as they are (credentials and context).
pub const PASSED: &[&str] = &[
    "authorization",
    "cookie",
    "origin",
    "sec-websocket-protocol",
    "user-agent",
];

/// Decisions remembered at most; expired ones are dropped first.
const MAX_CACHED: usize = 10_000;

/// The external check's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalPolicy {
    /// The check service's URL (`http://` or `https://`), as configured, for messages.
    pub url: String,
    /// Where the check is sent.
    pub endpoint: wsgate_handshake::endpoint::Endpoint,
    /// Longer than this: 503 `auth.unavailable`.
    pub timeout: Duration,
    /// How long a decision is reused for the same credentials, path and client; zero disables.
    pub cache_ttl: Duration,
    /// Response header naming the identity (default `x-auth-user`).
    pub identity_header: HeaderName,
    /// Response headers kept with the identity (and sent upstream by proxy routes).
    pub identity_headers: Vec<HeaderName>,
    /// Prefixes of `Sec-WebSocket-Protocol` entries that carry a credential (the route's
    /// `subprotocol:` sources): passed to the check, never selected.
    pub subprotocol_prefixes: Vec<String>,
}

/// The headers of the check request for a handshake.
pub fn check_headers(req: &Request<'_>, path_and_query: &str, request_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    for name in PASSED {
        for v in req.headers.get_all(*name) {
            h.append(*name, v.clone());
        }
    }
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set("x-original-method", "GET");
    set("x-original-uri", path_and_query);
    set("x-forwarded-for", &req.client.to_string());
    set("x-forwarded-host", req.host);
    set("x-forwarded-proto", if req.tls { "https" } else { "http" });
    set("x-request-id", request_id);
    h
}

/// Reads the check service's answer: 2xx admits, 401 and 403 refuse with that status, anything
/// else refuses with 503 `auth.unavailable`.
pub fn interpret(
    policy: &ExternalPolicy,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<Identity, Refusal> {
    if status.is_success() {
        let value = |n: &HeaderName| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let mut id = Identity {
            name: value(&policy.identity_header).unwrap_or_else(|| "external".into()),
            source: "external".into(),
            claims: None,
            scopes: Vec::new(),
        };
        let kept: serde_json::Map<String, serde_json::Value> = policy
            .identity_headers
            .iter()
            .filter_map(|n| value(n).map(|v| (n.as_str().to_owned(), serde_json::Value::String(v))))
            .collect();
        if !kept.is_empty() {
            id.claims = Some(serde_json::Value::Object(kept));
        }
        return Ok(id);
    }
    match status {
        StatusCode::UNAUTHORIZED => Err(Refusal::new(
            Reason::AuthInvalid,
            format!("the external check {} answered 401", policy.url),
        )),
        StatusCode::FORBIDDEN => Err(Refusal::new(
            Reason::AuthzForbidden,
            format!("the external check {} answered 403", policy.url),
        )),
        other => Err(unavailable(policy, format!("answered {other}"))),
    }
}

/// The refusal when the check service cannot be asked.
pub fn unavailable(policy: &ExternalPolicy, what: String) -> Refusal {
    Refusal::new(
        Reason::AuthUnavailable,
        format!("the external check {} {what}", policy.url),
    )
}

/// Cached decisions, keyed by a digest of the client, the URI and the passed headers (the
/// credentials themselves are not kept).
#[derive(Debug, Default)]
pub struct DecisionCache {
    entries: Mutex<HashMap<[u8; 32], (Instant, Decision)>>,
}

/// What the check decided: who the client is, or why it is refused.
pub type Decision = Result<Identity, Refusal>;

impl DecisionCache {
    /// The cache key for a check request.
    pub fn key(headers: &HeaderMap) -> [u8; 32] {
        let mut ctx = Context::new(&SHA256);
        let mut names: Vec<&HeaderName> = headers
            .keys()
            .filter(|n| n.as_str() != "x-request-id")
            .collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        for n in names {
            for v in headers.get_all(n) {
                ctx.update(n.as_str().as_bytes());
                ctx.update(b"\0");
                ctx.update(v.as_bytes());
                ctx.update(b"\n");
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// A decision still fresh at `now`. Unavailability is never cached.
    pub fn get(&self, key: &[u8; 32], now: Instant) -> Option<Decision> {
        let st = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        st.get(key)
            .filter(|(until, _)| *until > now)
            .map(|(_, d)| d.clone())
    }

    /// Remembers a decision for `ttl`.
    pub fn put(
        &self,
        key: [u8; 32],
        decision: &Result<Identity, Refusal>,
        ttl: Duration,
        now: Instant,
    ) {
        if ttl.is_zero() || matches!(decision, Err(r) if r.reason == Reason::AuthUnavailable) {
            return;
        }
        let mut st = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if st.len() >= MAX_CACHED {
            st.retain(|_, (until, _)| *until > now);
            if st.len() >= MAX_CACHED {
                st.clear();
            }
        }
        st.insert(key, (now + ttl, decision.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ExternalPolicy {
        ExternalPolicy {
            url: "http://127.0.0.1:1/check".into(),
            endpoint: wsgate_handshake::endpoint::Endpoint::parse(
                "http://127.0.0.1:1/check",
                wsgate_handshake::endpoint::Family::Http,
            )
            .unwrap(),
            timeout: Duration::from_secs(1),
            cache_ttl: Duration::from_secs(30),
            identity_header: HeaderName::from_static("x-auth-user"),
            identity_headers: vec![HeaderName::from_static("x-auth-roles")],
            subprotocol_prefixes: vec!["token.".into()],
        }
    }

    #[test]
    fn check_request_carries_context_and_credentials_but_no_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer t"),
            ("cookie", "a=b"),
            ("origin", "https://app.example"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        let req = Request {
            tls: true,
            origin: Some("https://app.example"),
            headers: &h,
            ..Request::new("192.0.2.7".parse().unwrap(), "gw.example")
        };
        let out = check_headers(&req, "/ws/chat/lobby?x=1", "rid");
        assert_eq!(out["authorization"], "Bearer t");
        assert_eq!(out["x-original-uri"], "/ws/chat/lobby?x=1");
        assert_eq!(out["x-forwarded-for"], "192.0.2.7");
        assert_eq!(out["x-forwarded-proto"], "https");
        for hop in ["upgrade", "connection", "sec-websocket-key"] {
            assert!(!out.contains_key(hop), "{hop} must not be forwarded");
        }
    }

    #[test]
    fn answers_map_to_decisions() {
        let p = policy();
        let mut h = HeaderMap::new();
        h.insert("x-auth-user", HeaderValue::from_static("alice"));
        h.insert("x-auth-roles", HeaderValue::from_static("admin"));
        let id = interpret(&p, StatusCode::NO_CONTENT, &h).unwrap();
        assert_eq!(id.name, "alice");
        assert_eq!(id.claims.unwrap()["x-auth-roles"], "admin");
        assert_eq!(
            interpret(&p, StatusCode::UNAUTHORIZED, &h)
                .unwrap_err()
                .reason,
            Reason::AuthInvalid
        );
        assert_eq!(
            interpret(&p, StatusCode::FORBIDDEN, &h).unwrap_err().reason,
            Reason::AuthzForbidden
        );
        let e = interpret(&p, StatusCode::FOUND, &h).unwrap_err();
        assert_eq!(
            (e.reason, e.reason.status()),
            (Reason::AuthUnavailable, 503)
        );
    }

    #[test]
    fn cache_expires_and_never_keeps_unavailability() {
        let c = DecisionCache::default();
        let t = Instant::now();
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer a"));
        let k = DecisionCache::key(&h);
        h.insert("authorization", HeaderValue::from_static("Bearer b"));
        assert_ne!(k, DecisionCache::key(&h));
        let ok: Result<Identity, Refusal> = interpret(&policy(), StatusCode::OK, &HeaderMap::new());
        c.put(k, &ok, Duration::from_secs(30), t);
        assert!(c.get(&k, t + Duration::from_secs(29)).is_some());
        assert!(c.get(&k, t + Duration::from_secs(31)).is_none());
        let down = Err(unavailable(&policy(), "timed out".into()));
        c.put(
            k,
            &down,
            Duration::from_secs(30),
            t + Duration::from_secs(40),
        );
        assert!(c.get(&k, t + Duration::from_secs(41)).is_none());
    }
}
