//! What any server may answer the doctor: a response head, frames after a 101 (close payloads
//! included) and certificate bytes. The doctor talks to servers nobody vetted: no panic, ever.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;
use wsgate_doctor::probe::{close_of, parse_response_head, take_server_frame};
use wsgate_doctor::tls::{describe_chain, leaf_checks};

fuzz_target!(|data: &[u8]| {
    if let Some(resp) = parse_response_head(data) {
        let _ = wsgate_doctor::analyze::server_info(&resp, "/ws");
    }
    let mut buf = data.to_vec();
    while let Some(Ok((op, payload))) = take_server_frame(&mut buf) {
        if op == 0x8 {
            let _ = close_of(&payload);
        }
    }
    let cert = CertificateDer::from(data);
    let _ = describe_chain(std::slice::from_ref(&cert));
    let _ = leaf_checks(&cert, "example.test");
});
