//! Origin and Host matching: line 1 is the Origin header, line 2 the Host header, the rest are
//! allowlist entries. Parsing entries and checking requests never panics, and an exact entry
//! admits only its own origin.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_admission::host::HostPolicy;
use wsgate_admission::origin::{Origin, OriginPolicy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let origin = lines.next().unwrap_or("");
    let host = lines.next().unwrap_or("");
    let entries: Vec<String> = lines.map(str::to_owned).collect();
    let _ = Origin::parse(origin);
    let req = wsgate_admission::Request {
        tls: data.first().is_some_and(|b| b % 2 == 0),
        origin: Some(origin),
        ..wsgate_admission::Request::new([192, 0, 2, 1].into(), host)
    };
    if let Ok(p) = OriginPolicy::parse(&entries, false) {
        let _ = p.check(&req);
    }
    if let Ok(p) = HostPolicy::parse(&entries) {
        let _ = p.check(host);
    }
});
