//! The handshake decision as one table, without sockets: a configuration parsed from text, then each
//! request head through the steps the server takes, in its order (framing, global firewall, route
//! lookup, RFC 6455, the route's gates, limits), ending in an admission or a refusal's code.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use std::net::IpAddr;
use std::time::Instant;
use wsgate_server::config::Config;
use wsgate_server::routes::Router;

const CONFIG: &str = r#"
[[listener]]
address = "127.0.0.1:0"

[limits]
max_connections_per_identity = 1

[firewall]
deny = ["203.0.113.0/24"]
trusted_proxies = ["127.0.0.1"]
client_address_header = "x-forwarded-for"

[[route]]
path = "/ws/echo"
kind = "echo"
hosts = ["gw.test"]
origins = ["https://app.test", "https://*.example.org"]
allow_missing_origin = true

[[route]]
path = "/ws/internal"
kind = "echo"
firewall = { allow = ["10.0.0.0/8"] }

[[route]]
path = "/ws/chat/{room}"
kind = "channel"
subprotocols = ["chat.v1"]
[route.auth]
sources = ["bearer", "subprotocol:token."]
api_keys = [{ name = "ci", sha256 = "6a2ea6b7682939cdf265e33233e715552583f041a692825385c7906ef3faf5dd", scopes = ["chat:read"] }]
[route.authz]
require_scopes = ["chat:read"]
"#;

/// The key whose SHA-256 is configured above (`printf %s KEY | sha256sum`).
const KEY: &str = "table-key-0123";

/// A request head: method, target and headers.
type Head = (Method, http::Uri, HeaderMap);
/// One row: what it is, the peer, the request, and the admission (chosen subprotocol) or code.
type Row<'a> = (&'a str, &'a str, Head, Result<Option<&'a str>, &'a str>);

/// A valid handshake for `path`, with `extra` headers added (a name given twice is appended).
fn head(path: &str, extra: &[(&str, &str)]) -> Head {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "gw.test"),
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    for (k, v) in extra {
        let name = HeaderName::from_bytes(k.as_bytes()).expect("a header name");
        let value = HeaderValue::from_str(v).expect("a header value");
        if ["host", "sec-websocket-version"].contains(k) {
            h.insert(name, value);
        } else {
            h.append(name, value);
        }
    }
    (Method::GET, path.parse().expect("a path"), h)
}

/// The server's steps in its order; `Ok(subprotocol)` when admitted, else the refusal's code.
fn decide(
    config: &Config,
    router: &Router,
    limits: &std::sync::Arc<wsgate_admission::limits::Limits>,
    peer: &str,
    (method, uri, headers): Head,
) -> Result<Option<String>, &'static str> {
    let global = wsgate_admission::Global {
        firewall: config.firewall.rules.clone(),
        trusted_proxies: config.firewall.trusted_proxies.clone(),
        client_header: config.firewall.client_address_header,
        bans: None,
    };
    let code = |r: wsgate_handshake::Refusal| r.reason.code();
    wsgate_handshake::check_framing(&method, &uri, &headers, config.limits.head).map_err(code)?;
    let peer: IpAddr = peer.parse().expect("an address");
    let client = global.client(peer, &headers);
    global.check(client.ip, Instant::now()).map_err(code)?;
    let m = router.find(uri.path()).ok_or("route.not_found")?;
    let hs = wsgate_handshake::validate(&method, Version::HTTP_11, &headers).map_err(code)?;
    let view = wsgate_admission::Request {
        client: client.ip,
        tls: false,
        host: &hs.host,
        origin: hs.origin.as_deref(),
        headers: &headers,
        query: uri.query(),
        subprotocols: &hs.subprotocols,
        params: &m.params,
        client_cert: None,
    };
    let admitted = m.route.policy(0).gates.admit(&view).map_err(code)?;
    let identity = admitted.identity.as_ref().map(|i| i.name.as_str());
    // Held for the rest of the table, as an open connection holds it.
    let held = limits
        .admit(client.ip, identity, Instant::now())
        .map_err(code)?;
    std::mem::forget(held);
    let chosen =
        wsgate_handshake::select_subprotocol(&admitted.subprotocols, &m.route.subprotocols);
    if chosen.is_none() && !admitted.subprotocols.is_empty() {
        return Err("subprotocol.unsupported");
    }
    Ok(chosen.map(str::to_owned))
}

#[test]
fn the_whole_admit_refuse_table() {
    let config = Config::parse(CONFIG, "table.toml").expect("the table's configuration is valid");
    let router = Router::new(&config.routes);
    let limits = wsgate_admission::limits::Limits::new(config.limits.clients);
    let bearer = format!("Bearer {KEY}");
    let token_entry = format!("chat.v1, token.{KEY}, token.{KEY}");
    let long_cookie = "a".repeat(9000);
    let table: Vec<Row<'_>> = vec![
        ("plain echo", "192.0.2.1", head("/ws/echo", &[]), Ok(None)),
        (
            "allowed origin",
            "192.0.2.1",
            head("/ws/echo", &[("origin", "https://app.test")]),
            Ok(None),
        ),
        (
            "wildcard origin",
            "192.0.2.1",
            head("/ws/echo", &[("origin", "https://a.example.org")]),
            Ok(None),
        ),
        (
            "look-alike origin",
            "192.0.2.1",
            head("/ws/echo", &[("origin", "https://example.org.evil.test")]),
            Err("origin.not_allowed"),
        ),
        (
            "other host",
            "192.0.2.1",
            head("/ws/echo", &[("host", "evil.test")]),
            Err("host.not_allowed"),
        ),
        (
            "absolute-form target for another host",
            "192.0.2.1",
            head("http://evil.test/ws/echo", &[]),
            Err("handshake.bad_request"),
        ),
        (
            "a body",
            "192.0.2.1",
            head("/ws/echo", &[("content-length", "5")]),
            Err("handshake.body"),
        ),
        (
            "chunked",
            "192.0.2.1",
            head("/ws/echo", &[("transfer-encoding", "chunked")]),
            Err("handshake.body"),
        ),
        (
            "a header over 8 KiB",
            "192.0.2.1",
            head("/ws/echo", &[("cookie", &long_cookie)]),
            Err("handshake.head_too_large"),
        ),
        (
            "denied address",
            "203.0.113.9",
            head("/ws/nope", &[]),
            Err("firewall.ip_denied"),
        ),
        (
            "denied client behind the proxy",
            "127.0.0.1",
            head("/ws/echo", &[("x-forwarded-for", "203.0.113.9")]),
            Err("firewall.ip_denied"),
        ),
        (
            "Forwarded is not the configured header",
            "127.0.0.1",
            head("/ws/internal", &[("forwarded", "for=10.0.0.1")]),
            Err("firewall.ip_denied"),
        ),
        (
            "internal client behind the proxy",
            "127.0.0.1",
            head("/ws/internal", &[("x-forwarded-for", "10.1.2.3")]),
            Ok(None),
        ),
        (
            "unknown path",
            "192.0.2.1",
            head("/ws/nope", &[]),
            Err("route.not_found"),
        ),
        (
            "version 8",
            "192.0.2.1",
            head("/ws/echo", &[("sec-websocket-version", "8")]),
            Err("handshake.version"),
        ),
        (
            "two keys",
            "192.0.2.1",
            head(
                "/ws/echo",
                &[("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAAAA==")],
            ),
            Err("handshake.duplicate_header"),
        ),
        (
            "no credential",
            "192.0.2.1",
            head("/ws/chat/a", &[]),
            Err("auth.missing"),
        ),
        (
            "wrong credential",
            "192.0.2.1",
            head("/ws/chat/a", &[("authorization", "Bearer nope")]),
            Err("auth.invalid"),
        ),
        (
            "token offered twice as a subprotocol: admitted, the token never chosen",
            "192.0.2.1",
            head("/ws/chat/a", &[("sec-websocket-protocol", &token_entry)]),
            Ok(Some("chat.v1")),
        ),
        (
            "the identity's one connection is taken",
            "192.0.2.2",
            head("/ws/chat/b", &[("authorization", &bearer)]),
            Err("limit.client_connections"),
        ),
        (
            "unsupported subprotocol",
            "192.0.2.1",
            head("/ws/echo", &[("sec-websocket-protocol", "v9")]),
            Err("subprotocol.unsupported"),
        ),
    ];
    for (name, peer, request, want) in table {
        let got = decide(&config, &router, &limits, peer, request);
        assert_eq!(got, want.map(|p| p.map(str::to_owned)), "{name}");
    }
}
