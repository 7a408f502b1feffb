//! What any server may answer the doctor: a response head, frames after a 101 (close payloads
//! included) and certificate bytes. The doctor talks to servers nobody vetted: no panic, ever.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;
use wsgate_doctor::probe::{close_of, parse_response_head, take_server_frame};
use wsgate_doctor::tls::{describe_chain, leaf_checks};

fuzz_target!(|data: &[u8]| {
    if let Some(mut resp) = parse_response_head(data) {
        // The same bytes as a body too: recognition and the refusal's text are read from it.
        resp.body = String::from_utf8_lossy(data).into_owned();
        let _ = wsgate_doctor::analyze::server_info(&resp, "/ws", Some(&resp));
        let _ = wsgate_doctor::servers::challenge(&resp);
        let req = wsgate_doctor::probe::Request {
            origin: Some("https://app.example".into()),
            token: None,
            subprotocols: vec!["chat.v1".into()],
            headers: vec![],
            plain: false,
        };
        let _ = wsgate_doctor::analyze::read_alone(&req, &resp);
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
