//! Raw request bytes through what the server runs on a request head: HTTP/1.1 parsing (httparse,
//! hyper's parser), then `Gatekeeper::decide`, the server's own decision (framing, firewall, route
//! lookup, RFC 6455, every gate of a configuration that uses them all, limits, subprotocol choice,
//! connection slot). Any input must end in an admission or a refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wsgate_server::config::Config;
use wsgate_server::decision::{Gatekeeper, Handshake};

const CONFIG: &str = r#"
[[listener]]
address = "127.0.0.1:0"

[[route]]
path = "/ws/echo"
kind = "echo"
hosts = ["gw.test", "127.0.0.1"]
origins = ["https://app.test", "https://*.example.org", "null"]

[[route]]
path = "/ws/chat/{room}"
kind = "channel"
subprotocols = ["chat.v1"]
[route.auth]
sources = ["bearer", "cookie:wsgate_token", "subprotocol:token.", "query:access_token"]
api_keys = [{ name = "ci", sha256 = "c018c41c1afaf2c0b66c64f97d0ee135657b699ad260f299234cd40a5d625e0e", scopes = ["chat:read"] }]
[[route.auth.jwt]]
issuer = "https://issuer.test"
audience = ["wsgate"]
secret = "a-shared-secret-of-at-least-32-bytes!"
[route.authz]
channel = "chat:{room}"
channel_claim = "rooms"
"#;

fn setup() -> &'static (Gatekeeper, tokio::runtime::Runtime) {
    static S: OnceLock<(Gatekeeper, tokio::runtime::Runtime)> = OnceLock::new();
    S.get_or_init(|| {
        let config = Config::parse(CONFIG, "fuzz.toml").expect("the fuzz configuration is valid");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        (Gatekeeper::new(&config), runtime)
    })
}

fuzz_target!(|data: &[u8]| {
    let (gate, runtime) = setup();
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return;
    };
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Ok(uri) = path.parse::<http::Uri>() else {
        return;
    };
    let version = if version == 1 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_10
    };
    let mut map = http::HeaderMap::new();
    for h in req.headers.iter() {
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        map.append(n, v);
    }
    let req = Handshake {
        method: &method,
        uri: &uri,
        version,
        headers: &map,
        peer: [192, 0, 2, 1].into(),
        tls: false,
        listener: 0,
        client_cert: None,
    };
    let decision = runtime.block_on(gate.decide(&req, &wsgate_admission::NoServices));
    if let (Ok(admitted), Some(m)) = (&decision.outcome, &decision.route) {
        // On a route that takes credentials in subprotocols, a credential entry never survives to
        // be offered or selected (on other routes `token.x` is an ordinary subprotocol name).
        if m.route.policy(0).auth.is_some() {
            assert!(admitted.offered.iter().all(|p| !p.starts_with("token.")));
            assert!(admitted
                .subprotocol
                .as_deref()
                .is_none_or(|p| !p.starts_with("token.")));
        }
    }
});
