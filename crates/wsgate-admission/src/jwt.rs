//! JWT verification for the authentication gate (RFC 7519, with RFC 8725's advice).
//!
//! Every key carries its own allowlist of algorithms, so the header's `alg` can only pick among
//! what the operator wrote: `none` is never accepted, and an RSA public key can never be used as
//! an HMAC secret. Keys are selected by issuer *and* `kid` together, so one issuer's `kid` can
//! never select another issuer's key.

use crate::{Reason, Refusal};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};

/// One verification key with the algorithms it may verify.
#[derive(Clone)]
pub struct JwtKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl PartialEq for JwtKey {
    fn eq(&self, other: &Self) -> bool {
        self.kid == other.kid && self.algorithms == other.algorithms
    }
}
impl Eq for JwtKey {}

/// Parses algorithm names from configuration, e.g. `["RS256", "PS256"]`.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err("list the algorithms this key may verify, e.g. [\"RS256\"]".into());
    }
    names
        .iter()
        .map(|n| {
            n.parse::<Algorithm>().map_err(|_| {
                format!("{n:?} is not a supported algorithm (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA; `none` is never allowed)")
            })
        })
        .collect()
}

fn one_family(algs: &[Algorithm]) -> Result<jsonwebtoken::AlgorithmFamily, String> {
    let family = algs[0].family();
    if algs.iter().any(|a| a.family() != family) {
        return Err(format!(
            "{algs:?} mixes algorithm families; one key verifies one family (e.g. HS256 and RS256 need two keys)"
        ));
    }
    Ok(family)
}

impl JwtKey {
    /// The key's id, which tokens name in their header's `kid`.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// An HMAC secret; `algorithms` must all be HS*.
    pub fn secret(
        kid: Option<String>,
        secret: &[u8],
        algorithms: Vec<Algorithm>,
    ) -> Result<JwtKey, String> {
        if one_family(&algorithms)? != jsonwebtoken::AlgorithmFamily::Hmac {
            return Err("a `secret` verifies HS256/HS384/HS512 only".into());
        }
        if secret.len() < 32 {
            return Err(format!(
                "the secret is {} bytes; HMAC secrets need at least 32 (RFC 7518 §3.2)",
                secret.len()
            ));
        }
        Ok(JwtKey {
            kid,
            algorithms,
            key: DecodingKey::from_secret(secret),
        })
    }

    /// A PEM public key; its type must match the family of `algorithms`.
    pub fn public_pem(
        kid: Option<String>,
        pem: &[u8],
        algorithms: Vec<Algorithm>,
    ) -> Result<JwtKey, String> {
        use jsonwebtoken::AlgorithmFamily as F;
        let family = one_family(&algorithms)?;
        let key = match family {
            F::Rsa => DecodingKey::from_rsa_pem(pem),
            F::Ec => DecodingKey::from_ec_pem(pem),
            F::Ed => DecodingKey::from_ed_pem(pem),
            F::Hmac => return Err("HS* algorithms take a `secret`, not a public key".into()),
        }
        .map_err(|e| {
            format!("not a {family:?} public key in PEM form, as {algorithms:?} need: {e}")
        })?;
        Ok(JwtKey {
            kid,
            algorithms,
            key,
        })
    }

    /// Every key of a JWKS document; a key's algorithms come from its `alg`, or its type.
    pub fn jwks(json: &str) -> Result<Vec<JwtKey>, String> {
        let set: JwkSet =
            serde_json::from_str(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        if set.keys.is_empty() {
            return Err("the JWKS has no keys".into());
        }
        set.keys
            .iter()
            .enumerate()
            .map(|(i, jwk)| {
                let algorithms = match &jwk.common.key_algorithm {
                    Some(a) => vec![a.to_string().parse::<Algorithm>().map_err(|_| {
                        format!("key {i}: `alg` {a:?} is not a signature algorithm")
                    })?],
                    None => match &jwk.algorithm {
                        AlgorithmParameters::RSA(_) => vec![Algorithm::RS256],
                        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                            vec![Algorithm::ES256]
                        }
                        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                            vec![Algorithm::ES384]
                        }
                        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
                        AlgorithmParameters::OctetKey(_) => vec![Algorithm::HS256],
                        _ => return Err(format!("key {i}: unsupported key type")),
                    },
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {i}: {e}"))?;
                Ok(JwtKey {
                    kid: jwk.common.key_id.clone(),
                    algorithms,
                    key,
                })
            })
            .collect()
    }
}

/// How long after asking for a refetch (a token named an unknown `kid`) another may be asked:
/// tokens with made-up kids must not make the server hammer the identity provider.
pub const REFETCH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// An issuer's keys published at a URL (a JWKS, or the OpenID discovery document that names
/// one), replaced whole by the server's fetcher at each refresh. Admission only reads them, and
/// asks for a refetch when a token names a `kid` the set does not have.
pub struct RemoteKeys {
    /// The JWKS URL, or the issuer's discovery URL when `discovery` is set.
    pub url: String,
    /// `url` is an OpenID discovery document whose `jwks_uri` names the set.
    pub discovery: bool,
    /// A PEM CA file trusted besides the public roots, for the identity provider's TLS.
    pub ca_file: Option<std::path::PathBuf>,
    /// The last good set; `None` until one was loaded.
    set: std::sync::RwLock<Option<std::sync::Arc<Vec<JwtKey>>>>,
    /// A refetch was asked for and not yet done.
    wanted: std::sync::atomic::AtomicBool,
    /// When a refetch was last asked for.
    last_wanted: std::sync::Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("url", &self.url)
            .field("discovery", &self.discovery)
            .finish_non_exhaustive()
    }
}

impl RemoteKeys {
    /// Keys to be fetched from `url`; none are loaded yet.
    pub fn new(url: String, discovery: bool, ca_file: Option<std::path::PathBuf>) -> RemoteKeys {
        RemoteKeys {
            url,
            discovery,
            ca_file,
            set: std::sync::RwLock::new(None),
            wanted: std::sync::atomic::AtomicBool::new(false),
            last_wanted: std::sync::Mutex::new(None),
        }
    }

    /// The set in use; `None` when none was ever loaded.
    pub fn keys(&self) -> Option<std::sync::Arc<Vec<JwtKey>>> {
        self.set.read().ok().and_then(|s| s.clone())
    }

    /// Puts a freshly fetched set in use.
    pub fn replace(&self, keys: Vec<JwtKey>) {
        if let Ok(mut s) = self.set.write() {
            *s = Some(std::sync::Arc::new(keys));
        }
    }

    /// Asks the fetcher for a refetch, unless one was asked within [`REFETCH_EVERY`]; true if
    /// this call asked.
    pub fn want_refetch(&self) -> bool {
        let Ok(mut last) = self.last_wanted.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < REFETCH_EVERY) {
            return false;
        }
        *last = Some(now);
        self.wanted
            .store(true, std::sync::atomic::Ordering::Release);
        true
    }

    /// For the fetcher: whether a refetch was asked for (and forget the asking).
    pub fn take_wanted(&self) -> bool {
        self.wanted.swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

/// Keys and claim checks for tokens of one issuer.
#[derive(Debug, Clone)]
pub struct JwtIssuer {
    /// Required `iss`; `None` accepts tokens with any or no issuer (only sensible with one issuer).
    pub issuer: Option<String>,
    /// Accepted `aud` values; empty skips the audience check.
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway: u64,
    /// Whether tokens without `exp` are refused (RFC 8725 advises bounded lifetimes).
    pub require_exp: bool,
    /// The issuer's keys.
    pub keys: Vec<JwtKey>,
    /// Keys fetched from the identity provider, beside (usually instead of) `keys`.
    pub remote: Option<std::sync::Arc<RemoteKeys>>,
}

impl PartialEq for JwtIssuer {
    fn eq(&self, other: &Self) -> bool {
        self.issuer == other.issuer
            && self.audience == other.audience
            && self.leeway == other.leeway
            && self.require_exp == other.require_exp
            && self.keys == other.keys
            && self.remote.as_ref().map(|r| &r.url) == other.remote.as_ref().map(|r| &r.url)
    }
}
impl Eq for JwtIssuer {}

/// Whether a credential has the shape of a JWS compact token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("eyJ")
}

fn invalid(detail: String) -> Refusal {
    Refusal::new(Reason::AuthInvalid, detail)
}

/// Verifies `token` against the configured issuers; returns its claims.
pub fn verify(issuers: &[JwtIssuer], token: &str) -> Result<serde_json::Value, Refusal> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| {
        invalid(match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::Json(_) => {
                "the JWT header's `alg` is missing, `none` or unknown".to_owned()
            }
            _ => format!("not a well-formed JWT ({e})"),
        })
    })?;
    // RFC 7515 §4.1.11: a header that lists critical extensions must be refused by a recipient
    // that does not understand them, and this one understands none.
    if let Some(crit) = unverified_part(token, 0).and_then(|h| h.get("crit").cloned()) {
        return Err(invalid(format!(
            "the JWT header lists critical extensions ({} entries in `crit`) and none is supported",
            crit.as_array().map_or(1, Vec::len)
        )));
    }
    // The issuer is read before verification only to choose keys; nothing is trusted until verified.
    let iss = unverified_issuer(token);
    let kid = header.kid.as_deref();
    let matching: Vec<&JwtIssuer> = issuers
        .iter()
        .filter(|i| i.issuer.is_none() || i.issuer.as_deref() == iss.as_deref())
        .collect();
    // Fetched sets are read once here; a refresh meanwhile changes only the next token's keys.
    let fetched: Vec<Option<std::sync::Arc<Vec<JwtKey>>>> = matching
        .iter()
        .map(|i| i.remote.as_ref().and_then(|r| r.keys()))
        .collect();
    let candidates: Vec<(&JwtIssuer, &JwtKey)> = matching
        .iter()
        .zip(&fetched)
        .flat_map(|(i, set)| {
            i.keys
                .iter()
                .chain(set.iter().flat_map(|s| s.iter()))
                .map(move |k| (*i, k))
        })
        // A key with a kid is chosen only by that kid; a key without one is a candidate for any token.
        .filter(|(_, k)| k.kid.is_none() || k.kid.as_deref() == kid)
        .collect();
    if candidates.is_empty() {
        let remote = matching
            .iter()
            .zip(&fetched)
            .filter_map(|(i, set)| Some((i.remote.as_ref()?, set)));
        let mut refetching = None;
        for (r, set) in remote {
            if set.is_none() {
                return Err(Refusal::new(
                    Reason::AuthUnavailable,
                    format!(
                        "the key set of issuer {:?} was never loaded from {} (the identity provider has not answered yet)",
                        iss.as_deref().unwrap_or("-"),
                        r.url
                    ),
                )
                .retry_after(std::time::Duration::from_secs(5)));
            }
            if r.want_refetch() {
                refetching = Some(r.url.clone());
            }
        }
        if let Some(url) = refetching {
            // A rotated key the set does not have yet: fetched again now; the client retries.
            return Err(Refusal::new(
                Reason::AuthUnavailable,
                format!(
                    "kid {:?} is not in the key set of issuer {:?}; it is being fetched again from {url}",
                    kid.unwrap_or("-"),
                    iss.as_deref().unwrap_or("-")
                ),
            )
            .retry_after(std::time::Duration::from_secs(2)));
        }
        return Err(invalid(format!(
            "no configured key for issuer {:?} and kid {:?}",
            iss.as_deref().unwrap_or("-"),
            kid.unwrap_or("-")
        )));
    }
    let allowed: Vec<_> = candidates
        .iter()
        .filter(|(_, k)| k.algorithms.contains(&header.alg))
        .collect();
    if allowed.is_empty() {
        return Err(invalid(format!(
            "alg {:?} is not allowed for the key of issuer {:?}, kid {:?}",
            header.alg,
            iss.as_deref().unwrap_or("-"),
            kid.unwrap_or("-")
        )));
    }
    let mut last = String::from("the signature does not verify");
    for (issuer, key) in allowed {
        let mut v = Validation::new(header.alg);
        v.leeway = issuer.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        // A configured issuer or audience makes the claim required: a token without `aud`
        // must not pass a route that asks for one.
        v.required_spec_claims = [
            (issuer.require_exp, "exp"),
            (issuer.issuer.is_some(), "iss"),
            (!issuer.audience.is_empty(), "aud"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, c)| (*c).to_owned())
        .collect();
        match &issuer.issuer {
            Some(i) => v.set_issuer(&[i]),
            None => v.iss = None,
        }
        if issuer.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&issuer.audience);
        }
        match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &v) {
            Ok(data) => return Ok(data.claims),
            Err(e) => match e.kind() {
                ErrorKind::InvalidSignature => last = "the signature does not verify".into(),
                ErrorKind::ExpiredSignature => {
                    return Err(Refusal::new(
                        Reason::AuthExpired,
                        "the JWT has expired (exp is past, leeway included)",
                    ))
                }
                ErrorKind::ImmatureSignature => {
                    return Err(invalid(
                        "the JWT is not valid yet (nbf is in the future)".into(),
                    ))
                }
                ErrorKind::InvalidIssuer => {
                    return Err(invalid(format!(
                        "iss {:?} is not the expected issuer",
                        iss.as_deref().unwrap_or("-")
                    )))
                }
                ErrorKind::InvalidAudience => {
                    return Err(invalid(format!("aud is not one of {:?}", issuer.audience)))
                }
                ErrorKind::MissingRequiredClaim(c) => {
                    return Err(invalid(format!("the JWT has no `{c}` claim")))
                }
                other => last = format!("rejected: {other:?}"),
            },
        }
    }
    Err(invalid(last))
}

/// A segment of the compact form (0 header, 1 payload) as JSON, before any verification.
fn unverified_part(token: &str, index: usize) -> Option<serde_json::Value> {
    let part = token.split('.').nth(index)?;
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn unverified_issuer(token: &str) -> Option<String> {
    unverified_part(token, 1)?
        .get("iss")?
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs_issuer() -> JwtIssuer {
        JwtIssuer {
            issuer: Some("https://issuer.test".into()),
            audience: vec!["wsgate".into()],
            leeway: 5,
            require_exp: true,
            keys: vec![JwtKey::secret(Some("k1".into()), SECRET, vec![Algorithm::HS256]).unwrap()],
            remote: None,
        }
    }

    fn token(claims: serde_json::Value, kid: Option<&str>, secret: &[u8]) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_owned);
        encode(&h, &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn good_claims() -> serde_json::Value {
        json!({"sub": "alice", "iss": "https://issuer.test", "aud": "wsgate", "exp": now() + 60})
    }

    #[test]
    fn valid_token_verifies() {
        let claims = verify(&[hs_issuer()], &token(good_claims(), Some("k1"), SECRET)).unwrap();
        assert_eq!(claims["sub"], "alice");
    }

    #[test]
    fn attacks_are_refused() {
        let iss = [hs_issuer()];
        let reason = |t: &str| verify(&iss, t).unwrap_err().reason;
        // alg: none
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
            URL_SAFE_NO_PAD.encode(good_claims().to_string())
        );
        assert_eq!(reason(&none), Reason::AuthInvalid);
        // expired, beyond the leeway
        let mut c = good_claims();
        c["exp"] = json!(now() - 60);
        assert_eq!(reason(&token(c, Some("k1"), SECRET)), Reason::AuthExpired);
        // within the leeway
        let mut c = good_claims();
        c["exp"] = json!(now() - 2);
        assert!(verify(&iss, &token(c, Some("k1"), SECRET)).is_ok());
        // not yet valid
        let mut c = good_claims();
        c["nbf"] = json!(now() + 600);
        assert!(verify(&iss, &token(c, Some("k1"), SECRET))
            .unwrap_err()
            .detail
            .contains("nbf"));
        // wrong aud / iss / missing exp
        let mut c = good_claims();
        c["aud"] = json!("other");
        assert!(verify(&iss, &token(c, Some("k1"), SECRET))
            .unwrap_err()
            .detail
            .contains("aud"));
        let mut c = good_claims();
        c["iss"] = json!("https://evil.test");
        assert_eq!(reason(&token(c, Some("k1"), SECRET)), Reason::AuthInvalid);
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("exp");
        assert!(verify(&iss, &token(c, Some("k1"), SECRET))
            .unwrap_err()
            .detail
            .contains("exp"));
        // unknown kid, wrong secret, tampered payload, garbage
        assert!(verify(&iss, &token(good_claims(), Some("k9"), SECRET))
            .unwrap_err()
            .detail
            .contains("kid"));
        assert_eq!(
            reason(&token(
                good_claims(),
                Some("k1"),
                b"another-secret-another-secret-xx"
            )),
            Reason::AuthInvalid
        );
        let t = token(good_claims(), Some("k1"), SECRET);
        let mut parts: Vec<&str> = t.split('.').collect();
        let mut c = good_claims();
        c["sub"] = json!("mallory");
        let forged = URL_SAFE_NO_PAD.encode(c.to_string());
        parts[1] = &forged;
        assert_eq!(reason(&parts.join(".")), Reason::AuthInvalid);
        assert_eq!(reason("eyJgarbage.x.y"), Reason::AuthInvalid);
    }

    #[test]
    fn configured_claims_are_required_and_critical_extensions_refused() {
        let iss = [hs_issuer()];
        for claim in ["aud", "iss"] {
            let mut c = good_claims();
            c.as_object_mut().unwrap().remove(claim);
            let e = verify(&iss, &token(c, Some("k1"), SECRET)).unwrap_err();
            assert_eq!(e.reason, Reason::AuthInvalid, "{claim}");
            assert!(e.detail.contains(claim), "{claim}: {}", e.detail);
        }
        // Without a configured audience, a token without `aud` is fine.
        let open = JwtIssuer {
            audience: Vec::new(),
            ..hs_issuer()
        };
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("aud");
        assert!(verify(&[open], &token(c, Some("k1"), SECRET)).is_ok());
        // A validly signed token whose header names a critical extension.
        let header =
            serde_json::json!({"alg": "HS256", "kid": "k1", "crit": ["exp-ext"], "exp-ext": 1});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(good_claims().to_string())
        );
        let sig = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        let e = verify(&iss, &format!("{signing_input}.{sig}")).unwrap_err();
        assert_eq!(e.reason, Reason::AuthInvalid);
        assert!(e.detail.contains("crit"), "{}", e.detail);
    }

    #[test]
    fn fetched_keys_unknown_kids_and_a_set_never_loaded() {
        let remote =
            std::sync::Arc::new(RemoteKeys::new("https://idp.test/jwks".into(), false, None));
        let iss = [JwtIssuer {
            keys: Vec::new(),
            remote: Some(remote.clone()),
            ..hs_issuer()
        }];
        let t = token(good_claims(), Some("k1"), SECRET);
        // Never loaded: the identity provider has not answered, so 503 with Retry-After.
        let e = verify(&iss, &t).unwrap_err();
        assert_eq!(e.reason, Reason::AuthUnavailable);
        assert!(
            e.retry_after.is_some() && e.detail.contains("never loaded"),
            "{}",
            e.detail
        );
        assert!(!remote.take_wanted());
        // Loaded: a known kid verifies; an unknown one asks for a refetch once, then is invalid.
        remote.replace(vec![JwtKey::secret(
            Some("k1".into()),
            SECRET,
            vec![Algorithm::HS256],
        )
        .unwrap()]);
        assert!(verify(&iss, &t).is_ok());
        let rotated = token(good_claims(), Some("k2"), SECRET);
        let e = verify(&iss, &rotated).unwrap_err();
        assert_eq!(e.reason, Reason::AuthUnavailable);
        assert!(e.detail.contains("fetched again"), "{}", e.detail);
        assert!(remote.take_wanted() && !remote.take_wanted());
        let e = verify(&iss, &rotated).unwrap_err();
        assert_eq!(e.reason, Reason::AuthInvalid, "refetches are rate-limited");
        assert!(!remote.take_wanted());
    }

    #[test]
    fn keys_are_selected_by_issuer_and_kid_together() {
        let other_secret = b"ffffffffffffffffffffffffffffffff";
        let a = hs_issuer();
        let b = JwtIssuer {
            issuer: Some("https://b.test".into()),
            keys: vec![
                JwtKey::secret(Some("k1".into()), other_secret, vec![Algorithm::HS256]).unwrap(),
            ],
            ..hs_issuer()
        };
        // a token of issuer b, kid k1, signed with b's secret: verifies with b's key only
        let mut c = good_claims();
        c["iss"] = json!("https://b.test");
        assert!(verify(
            &[a.clone(), b.clone()],
            &token(c.clone(), Some("k1"), other_secret)
        )
        .is_ok());
        // b's kid k1 must not select a's key: a token claiming iss b signed with a's secret fails
        assert!(verify(&[a, b], &token(c, Some("k1"), SECRET)).is_err());
    }

    #[test]
    fn key_configuration_errors() {
        assert!(JwtKey::secret(None, b"short", vec![Algorithm::HS256])
            .unwrap_err()
            .contains("32"));
        assert!(JwtKey::secret(None, SECRET, vec![Algorithm::RS256]).is_err());
        assert!(parse_algorithms(&["none".into()]).is_err());
        assert!(parse_algorithms(&[]).is_err());
        assert!(JwtKey::public_pem(None, b"nope", vec![Algorithm::RS256]).is_err());
        assert!(one_family(&[Algorithm::HS256, Algorithm::RS256]).is_err());
        assert!(looks_like_jwt(&token(good_claims(), None, SECRET)));
        assert!(!looks_like_jwt("an-api-key"));
    }
}
