//! `Sec-WebSocket-Extensions` as a client or an upstream writes it: offers are parsed and answered
//! (or declined) without panicking, an answer is always one the server can stand behind, and an
//! upstream's answer is checked against the offers a proxy passed on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_handshake::deflate::{check_answer, forwarded_offers, negotiate, offers, Mode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = offers([text]);
    for mode in [Mode::Off, Mode::Stateless, Mode::Contextual] {
        if let Some(a) = negotiate([text], mode) {
            assert!(mode != Mode::Off);
            // What we answer is itself a well-formed extension list naming permessage-deflate.
            let header = a.header();
            let parsed = offers([header.as_str()]);
            assert_eq!(parsed.len(), 1, "{header}");
            assert!((9..=15).contains(&a.compressor_bits()));
        }
    }
    if let Some(forwarded) = forwarded_offers([text]) {
        let _ = check_answer(text, &forwarded);
    }
});
