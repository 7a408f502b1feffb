//! The PROXY protocol v1 line and v2 header parsers: what a load balancer (or anyone reaching a
//! `proxy_protocol` listener) sends before the request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_admission::proxy_protocol::{parse_v1, parse_v2, v2_length};

fuzz_target!(|data: &[u8]| {
    let _ = parse_v1(data);
    if data.len() >= 16 {
        let mut head = [0u8; 16];
        head.copy_from_slice(&data[..16]);
        if let Ok(n) = v2_length(&head) {
            let body = &data[16..];
            let _ = parse_v2(&head, &body[..n.min(body.len())]);
        }
        let _ = parse_v2(&head, &data[16..]);
    }
});
