//! The handshake decision as one table, without sockets: a configuration parsed from text, then each
//! request head through `Gatekeeper::decide`, the very function the server calls (framing, global
//! firewall, route lookup, RFC 6455, the route's gates, limits, subprotocol choice, connection
//! slot), ending in an admission or a refusal's code. The external check is answered from memory.
//! Also here: the order of the steps, proven by peeling one fault at a time off a request that
//! has them all, and the README's table checked against `decision::STEPS`.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use std::net::IpAddr;
use wsgate_admission::auth::Identity;
use wsgate_admission::external::ExternalPolicy;
use wsgate_admission::{Reason, Refusal, Services};
use wsgate_server::config::Config;
use wsgate_server::decision::{Admit, Gatekeeper, Handshake, STEPS};

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
path = "/ws/checked"
kind = "echo"
[route.auth]
sources = ["bearer", "subprotocol:token."]
[route.auth.external]
url = "http://127.0.0.1:9/check"

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

/// The external check service, answered from memory: `Bearer ok` is alice, `Bearer ok2` bob,
/// anything else 401.
struct Memory;

impl Services for Memory {
    async fn external_check(
        &self,
        policy: &ExternalPolicy,
        req: &wsgate_admission::Request<'_>,
    ) -> Result<Identity, Refusal> {
        let name = match req.headers.get("authorization").map(|v| v.as_bytes()) {
            Some(b"Bearer ok") => "alice",
            Some(b"Bearer ok2") => "bob",
            _ => "",
        };
        match name {
            "alice" | "bob" => Ok(Identity {
                name: name.into(),
                source: "external".into(),
                claims: None,
                scopes: Vec::new(),
            }),
            _ => Err(Refusal::new(
                Reason::AuthInvalid,
                format!("{} answered 401", policy.url),
            )),
        }
    }
}

/// One decision on listener 0 from `peer`; admissions are kept in `open`, as open connections
/// hold their places.
fn decide<'g>(
    gate: &'g Gatekeeper,
    open: &mut Vec<Admit<'g>>,
    peer: &str,
    (method, uri, headers): &Head,
) -> Result<Option<String>, &'static str> {
    decide_with(gate, open, peer, None, (method, uri, headers))
}

/// [`decide`] with a verified client certificate.
fn decide_with<'g>(
    gate: &'g Gatekeeper,
    open: &mut Vec<Admit<'g>>,
    peer: &str,
    client_cert: Option<&wsgate_admission::ClientCert>,
    (method, uri, headers): (&Method, &http::Uri, &HeaderMap),
) -> Result<Option<String>, &'static str> {
    let req = Handshake {
        method,
        uri,
        version: Version::HTTP_11,
        headers,
        peer: peer.parse::<IpAddr>().expect("an address"),
        tls: false,
        listener: 0,
        client_cert,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let decision = runtime.block_on(gate.decide(&req, &Memory));
    let admit = decision.outcome.map_err(|r| r.reason.code())?;
    let chosen = admit.subprotocol.clone();
    open.push(admit);
    Ok(chosen)
}

fn gatekeeper(text: &str) -> Gatekeeper {
    let config = Config::parse(text, "table.toml").expect("the table's configuration is valid");
    Gatekeeper::new(&config)
}

#[test]
fn the_whole_admit_refuse_table() {
    let gate = gatekeeper(CONFIG);
    let mut open = Vec::new();
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
            "external check says yes",
            "192.0.2.1",
            head("/ws/checked", &[("authorization", "Bearer ok")]),
            Ok(None),
        ),
        (
            "external check says no",
            "192.0.2.1",
            head("/ws/checked", &[("authorization", "Bearer no")]),
            Err("auth.invalid"),
        ),
        (
            "external check: a token entry is never a subprotocol",
            "192.0.2.1",
            head(
                "/ws/checked",
                &[
                    ("authorization", "Bearer ok2"),
                    ("sec-websocket-protocol", "token.x"),
                ],
            ),
            Ok(None),
        ),
        (
            "unsupported subprotocol",
            "192.0.2.1",
            head("/ws/echo", &[("sec-websocket-protocol", "v9")]),
            Err("subprotocol.unsupported"),
        ),
    ];
    for (name, peer, request, want) in table {
        let got = decide(&gate, &mut open, peer, &request);
        assert_eq!(got, want.map(|p| p.map(str::to_owned)), "{name}");
    }
}

/// A configuration where one route has a fault for every step, each fixable on its own.
const STRICT: &str = r#"
[[listener]]
address = "127.0.0.1:0"

[limits]
max_connections = 2
max_connections_per_identity = 1

[firewall]
deny = ["203.0.113.0/24"]

[[route]]
path = "/ws/strict"
kind = "echo"
firewall = { deny = ["10.0.0.5"] }
client_cert = "required"
hosts = ["gw.test"]
origins = ["https://app.test"]
subprotocols = ["chat.v1"]
[route.auth]
sources = ["bearer"]
api_keys = [
  { name = "reader", sha256 = "69729a2923fe470c6b2ebca64aaf470e4f9c163b30b37171b0485433974700d2", scopes = ["read"] },
  { name = "writer", sha256 = "d60c74492ce54d9857b1bf11705dd80c49394aea92a8689b797ed35a75d42d48", scopes = ["write"] },
]
[route.authz]
require_scopes = ["write"]

[[route]]
path = "/ws/open"
kind = "echo"
[route.auth]
sources = ["bearer"]
api_keys = [
  { name = "writer", sha256 = "d60c74492ce54d9857b1bf11705dd80c49394aea92a8689b797ed35a75d42d48", scopes = ["write"] },
]

[[route]]
path = "/ws/anonymous"
kind = "echo"
"#;

/// The order of the steps, proven on the code: a request with a fault for every step is refused
/// by the first step; fixing that fault, the next step refuses; and so on to the admission. The
/// steps met are `decision::STEPS` without the two that run outside the decision.
#[test]
fn steps_run_in_the_documented_order() {
    // Draining comes first: even a request full of faults is told only that.
    let draining = gatekeeper(STRICT);
    draining.start_draining();
    let mut open = Vec::new();
    let faulty = head("/ws/nope", &[("content-length", "5")]);
    assert_eq!(
        decide(&draining, &mut open, "203.0.113.9", &faulty),
        Err("server.draining")
    );

    let gate = gatekeeper(STRICT);
    let cert = wsgate_admission::ClientCert {
        subject: "CN=alice".into(),
        sans: Vec::new(),
    };
    // The writer already holds its one connection, and an anonymous client holds the other slot.
    let mut holders = Vec::new();
    let writer = [("authorization", "Bearer writer-key-01")];
    assert!(decide(&gate, &mut holders, "10.0.0.9", &head("/ws/open", &writer)).is_ok());

    let mut path = "/ws/nope";
    let mut peer = "203.0.113.9";
    let mut with_cert = None;
    let mut headers: Vec<(&str, &str)> = vec![
        ("content-length", "5"),
        ("sec-websocket-version", "8"),
        ("host", "evil.test"),
        ("origin", "https://evil.test"),
        ("sec-websocket-protocol", "v9"),
    ];
    let mut met = vec![("draining", "server.draining")];
    let step_of = |code: &str, after: usize| {
        STEPS
            .iter()
            .enumerate()
            .skip(after)
            .find(|(_, s)| s.reasons.iter().any(|r| r.code() == code))
            .map(|(i, s)| (i, s.name))
    };
    let mut last = 1;
    for fix in 0.. {
        let (method, uri, request) = head(path, &headers);
        let mut open = Vec::new();
        let got = decide_with(
            &gate,
            &mut open,
            peer,
            with_cert.as_ref(),
            (&method, &uri, &request),
        );
        let Err(code) = got else {
            assert_eq!(got, Ok(Some("chat.v1".into())), "admitted in the end");
            break;
        };
        let (i, name) = step_of(code, last).unwrap_or_else(|| panic!("{code} out of order"));
        met.push((name, code));
        last = i;
        match fix {
            0 => headers.retain(|(k, _)| *k != "content-length"),
            1 => peer = "10.0.0.5",
            2 => path = "/ws/strict",
            3 => headers.retain(|(k, _)| *k != "sec-websocket-version"),
            4 => peer = "10.0.0.6",
            5 => with_cert = Some(cert.clone()),
            6 => headers.retain(|(k, _)| *k != "host"),
            7 => headers.retain(|(k, _)| *k != "origin"),
            8 => headers.push(("authorization", "Bearer reader-key-01")),
            9 => {
                headers.retain(|(k, _)| *k != "authorization");
                headers.extend(writer);
            }
            10 => {
                // The writer's own connection ends; another client takes the free slot.
                holders.clear();
                let anon = head("/ws/anonymous", &[]);
                assert!(decide(&gate, &mut holders, "10.0.0.7", &anon).is_ok());
                assert!(decide(&gate, &mut holders, "10.0.0.8", &anon).is_ok());
            }
            11 => headers.retain(|(k, _)| *k != "sec-websocket-protocol"),
            12 => holders.clear(),
            _ => panic!("still refused after every fix: {code}"),
        }
        if fix == 11 {
            headers.push(("sec-websocket-protocol", "chat.v1"));
        }
    }
    let names: Vec<&str> = met.iter().map(|(n, _)| *n).collect();
    let inside: Vec<&str> = STEPS[1..STEPS.len() - 1].iter().map(|s| s.name).collect();
    assert_eq!(names, inside, "codes met: {met:?}");
}

/// The README's table of admission steps lists `decision::STEPS`, in order, with their codes.
#[test]
fn the_readme_table_is_the_code_order() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("| step | refuses with | notes |")
        .expect("the README has the table");
    let rows: Vec<Vec<&str>> = readme[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    let steps: Vec<&str> = STEPS.iter().map(|s| s.name).collect();
    assert_eq!(names, steps);
    for (row, step) in rows.iter().zip(STEPS) {
        let codes: Vec<&str> = row[2]
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|c| c.contains('.'))
            .collect();
        let listed = |code: &str| {
            codes.iter().any(|c| match c.strip_suffix('*') {
                Some(prefix) => code.starts_with(prefix),
                None => *c == code,
            })
        };
        for r in step.reasons {
            assert!(
                listed(r.code()),
                "{}: {} not in the README",
                step.name,
                r.code()
            );
        }
        for c in &codes {
            assert!(
                step.reasons.iter().any(|r| r.code() == *c
                    || c.strip_suffix('*').is_some_and(|p| r.code().starts_with(p))),
                "{}: the README lists {c}, which the step does not refuse with",
                step.name
            );
        }
    }
}
