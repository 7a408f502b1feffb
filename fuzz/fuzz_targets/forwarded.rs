//! `Forwarded` and `X-Forwarded-For` values (one per line; a line's first byte picks the header)
//! through the client-address logic, with each header setting and trusted proxies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wsgate_admission::firewall::{client_address, Cidr, ClientHeader};

fn trusted() -> &'static [Cidr] {
    static T: OnceLock<Vec<Cidr>> = OnceLock::new();
    T.get_or_init(|| {
        ["127.0.0.1", "10.0.0.0/8", "::1", "2001:db8::/32"]
            .iter()
            .map(|c| Cidr::parse(c).expect("valid"))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some((first, value)) = line.split_first() else {
            continue;
        };
        let name = if first % 2 == 0 {
            "forwarded"
        } else {
            "x-forwarded-for"
        };
        if let Ok(v) = http::HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    for peer in ["127.0.0.1", "192.0.2.9", "::ffff:10.1.2.3"] {
        let peer = peer.parse().unwrap();
        for h in [
            ClientHeader::XForwardedFor,
            ClientHeader::Forwarded,
            ClientHeader::None,
        ] {
            let c = client_address(peer, &headers, trusted(), h);
            // An untrusted peer is always judged as itself.
            if !trusted().iter().any(|t| t.contains(peer)) {
                assert_eq!(c.ip, wsgate_admission::firewall::canonical(peer));
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Cidr::parse(text);
        let _ = ClientHeader::parse(text);
    }
});
