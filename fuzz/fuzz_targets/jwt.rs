//! Tokens through JWT verification: header decoding, `crit`, the unverified issuer and key
//! selection all run before a signature is checked, so a stranger controls every byte of them.
//! The input is also read as a JWKS document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wsgate_admission::jwt::{parse_algorithms, verify, JwtIssuer, JwtKey};

fn issuers() -> &'static [JwtIssuer] {
    static I: OnceLock<Vec<JwtIssuer>> = OnceLock::new();
    I.get_or_init(|| {
        let hs = parse_algorithms(&["HS256".into()]).unwrap();
        let es = parse_algorithms(&["ES256".into()]).unwrap();
        let ec = rcgen::KeyPair::generate().expect("a P-256 key");
        vec![
            JwtIssuer {
                issuer: Some("https://issuer.test".into()),
                audience: vec!["wsgate".into()],
                leeway: 30,
                require_exp: true,
                keys: vec![JwtKey::secret(Some("k1".into()), &[7u8; 32], hs).unwrap()],
                remote: None,
            },
            JwtIssuer {
                issuer: None,
                audience: Vec::new(),
                leeway: 0,
                require_exp: false,
                keys: vec![JwtKey::public_pem(None, ec.public_key_pem().as_bytes(), es).unwrap()],
                remote: None,
            },
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(claims) = verify(issuers(), &text) {
        panic!("a fuzzed token verified: {claims}");
    }
    let _ = JwtKey::jwks(&text);
});
