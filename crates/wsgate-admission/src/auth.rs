//! The authentication gate: find the client's credential in one of the configured places, then
//! verify it. Browsers cannot set `Authorization` on a WebSocket, which is why a cookie, a query
//! parameter and a `Sec-WebSocket-Protocol` entry are sources too.
//!
//! Verifiers built so far: JWTs ([`crate::jwt`]) and static API keys, stored only as SHA-256
//! digests and compared in constant time. A credential never appears in a refusal detail or a log
//! line.

use crate::{Reason, Refusal, Request};
use http::header::{AUTHORIZATION, COOKIE};
use ring::digest::{digest, SHA256};

/// Where a credential may be carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `Authorization: Bearer TOKEN` (non-browser clients).
    Bearer,
    /// `?NAME=TOKEN` in the URL (lands in proxies' access logs: prefer the others).
    Query(String),
    /// A cookie `NAME=TOKEN` (browsers send it on the handshake).
    Cookie(String),
    /// An offered subprotocol `PREFIXTOKEN`; it is removed before subprotocol selection.
    Subprotocol(String),
    /// `Authorization: Basic` user and password, checked against `basic_users`.
    Basic,
}

impl Source {
    /// Parses `bearer`, `query:NAME`, `cookie:NAME` or `subprotocol:PREFIX`.
    pub fn parse(s: &str) -> Result<Source, String> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        let need = |what: &str| -> Result<String, String> {
            if arg.is_empty() {
                Err(format!(
                    "{s:?} needs a {what}, e.g. `{kind}:{}`",
                    example(kind)
                ))
            } else {
                Ok(arg.to_owned())
            }
        };
        match kind {
            "bearer" if arg.is_empty() => Ok(Source::Bearer),
            "basic" if arg.is_empty() => Ok(Source::Basic),
            "query" => need("parameter name").map(Source::Query),
            "cookie" => need("cookie name").map(Source::Cookie),
            "subprotocol" => need("prefix").map(Source::Subprotocol),
            _ => Err(format!(
                "{s:?} is not a credential source; use bearer, basic, query:NAME, cookie:NAME or subprotocol:PREFIX"
            )),
        }
    }

    fn label(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for Source {
    /// The configuration spelling, e.g. `cookie:wsgate_token`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Bearer => f.write_str("bearer"),
            Source::Query(n) => write!(f, "query:{n}"),
            Source::Cookie(n) => write!(f, "cookie:{n}"),
            Source::Subprotocol(p) => write!(f, "subprotocol:{p}"),
            Source::Basic => f.write_str("basic"),
        }
    }
}

fn example(kind: &str) -> &'static str {
    match kind {
        "query" => "access_token",
        "cookie" => "wsgate_token",
        _ => "token.",
    }
}

/// A static API key: its name (the identity) and the SHA-256 of the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Who holds it; becomes the identity.
    pub name: String,
    /// SHA-256 digest of the key; the key itself is never stored.
    pub sha256: [u8; 32],
    /// Scopes the key grants, for authorization rules.
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// A key from its hex SHA-256 digest (`printf %s KEY | sha256sum`).
    pub fn from_hex(name: &str, hex: &str) -> Result<ApiKey, String> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(
                "sha256 must be 64 hex digits: the output of `printf %s KEY | sha256sum`".into(),
            );
        }
        let mut sha256 = [0u8; 32];
        for (i, byte) in sha256.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(ApiKey {
            name: name.to_owned(),
            sha256,
            scopes: Vec::new(),
        })
    }

    /// A key from the secret itself (for a generated development token).
    pub fn from_secret(name: &str, secret: &str) -> ApiKey {
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest(&SHA256, secret.as_bytes()).as_ref());
        ApiKey {
            name: name.to_owned(),
            sha256,
            scopes: Vec::new(),
        }
    }
}

/// The authentication gate's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Where to look, in order; the first source that carries a credential is the one verified.
    pub sources: Vec<Source>,
    /// Accepted API keys.
    pub api_keys: Vec<ApiKey>,
    /// Accepted JWT issuers and their keys.
    pub jwt: Vec<crate::jwt::JwtIssuer>,
    /// Users of the `basic` source, with password hashes.
    pub basic_users: Vec<BasicUser>,
}

/// A user of HTTP Basic authentication; only a slow password hash is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicUser {
    /// The user name; becomes the identity.
    pub name: String,
    hash: String,
}

impl std::fmt::Debug for BasicUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicUser")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Checked against when the user does not exist, so timing does not reveal which users do.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$7mO3s3VhIF0M2y3Y0nJtP1cSkzJxZbJ9nGQm2wMZCj8";

impl BasicUser {
    /// A user with an argon2 (`$argon2id$…`) or bcrypt (`$2b$…`) hash.
    pub fn new(name: &str, hash: &str) -> Result<BasicUser, String> {
        if name.is_empty() || name.contains(':') {
            return Err(format!(
                "user name {name:?} must be non-empty and contain no `:`"
            ));
        }
        let ok = if hash.starts_with("$argon2") {
            argon2::PasswordHash::new(hash).is_ok()
        } else if hash.starts_with("$2") {
            hash.len() == 60
        } else {
            false
        };
        if !ok {
            return Err(
                "hash must be an argon2 PHC string ($argon2id$…, from `wsgate passwd`) or a bcrypt hash ($2b$…)".into(),
            );
        }
        Ok(BasicUser {
            name: name.to_owned(),
            hash: hash.to_owned(),
        })
    }

    fn verify(hash: &str, password: &str) -> bool {
        use argon2::PasswordVerifier;
        if hash.starts_with("$argon2") {
            argon2::PasswordHash::new(hash)
                .map(|h| {
                    argon2::Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        } else {
            bcrypt::verify(password, hash).unwrap_or(false)
        }
    }
}

/// An argon2id hash of `password` with the given salt, for `basic_users` (what `wsgate passwd` prints).
pub fn hash_password(password: &str, salt: &[u8; 16]) -> Result<String, String> {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::encode_b64(salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Who an authenticated client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Who the credential names: the API key's name, the JWT subject, the Basic user, the
    /// certificate subject, or what the external check answered.
    pub name: String,
    /// Which source carried the credential, e.g. `cookie:wsgate_token`.
    pub source: String,
    /// A verified JWT's claims, for authorization rules.
    pub claims: Option<serde_json::Value>,
    /// Scopes granted to an API key.
    pub scopes: Vec<String>,
}

impl Identity {
    /// The identity a verified client certificate gives: its subject.
    pub fn from_cert(cert: &crate::ClientCert) -> Identity {
        Identity {
            name: cert.subject.clone(),
            source: "tls".into(),
            claims: None,
            scopes: Vec::new(),
        }
    }
}

/// A credential found in a request, with the subprotocols that remain once it is removed.
struct Found {
    basic: bool,
    token: String,
    source: String,
    rest: Vec<String>,
}

impl AuthPolicy {
    /// The authentication gate: 401 `auth.missing` without a credential, `auth.invalid` with a bad one.
    pub fn authenticate(&self, req: &Request<'_>) -> Result<(Identity, Vec<String>), Refusal> {
        let Some(found) = self.find(req) else {
            let looked: Vec<String> = self.sources.iter().map(Source::label).collect();
            return Err(Refusal::new(
                Reason::AuthMissing,
                format!(
                    "no credential in any configured source ({})",
                    looked.join(", ")
                ),
            ));
        };
        if found.basic {
            let (user, password) = found
                .token
                .split_once(':')
                .unwrap_or((found.token.as_str(), ""));
            let entry = self.basic_users.iter().find(|u| u.name == user);
            let ok = BasicUser::verify(
                entry.map(|u| u.hash.as_str()).unwrap_or(DUMMY_HASH),
                password,
            );
            return match (entry, ok) {
                (Some(u), true) => Ok((
                    Identity {
                        name: u.name.clone(),
                        source: found.source,
                        claims: None,
                        scopes: Vec::new(),
                    },
                    found.rest,
                )),
                // Whether the user exists is not said, not even in the log.
                _ => Err(Refusal::new(
                    Reason::AuthInvalid,
                    "the basic credentials do not match a configured user and password",
                )),
            };
        }
        if !self.jwt.is_empty()
            && (crate::jwt::looks_like_jwt(&found.token) || self.api_keys.is_empty())
        {
            let claims = crate::jwt::verify(&self.jwt, &found.token).map_err(|mut r| {
                r.detail = format!("{} (credential from {})", r.detail, found.source);
                r
            })?;
            let name = claims
                .get("sub")
                .and_then(|s| s.as_str())
                .unwrap_or("jwt")
                .to_owned();
            return Ok((
                Identity {
                    name,
                    source: found.source,
                    claims: Some(claims),
                    scopes: Vec::new(),
                },
                found.rest,
            ));
        }
        let presented = digest(&SHA256, found.token.as_bytes());
        // Every key is compared, matching or not, so timing does not reveal which key is near.
        let mut matched: Option<&ApiKey> = None;
        for key in &self.api_keys {
            if ct_eq(presented.as_ref(), &key.sha256) && matched.is_none() {
                matched = Some(key);
            }
        }
        match matched {
            Some(key) => Ok((
                Identity {
                    name: key.name.clone(),
                    source: found.source,
                    claims: None,
                    scopes: key.scopes.clone(),
                },
                found.rest,
            )),
            None => Err(Refusal::new(
                Reason::AuthInvalid,
                format!(
                    "the credential in {} matches no configured API key",
                    found.source
                ),
            )),
        }
    }

    /// The offered subprotocols with every entry under a credential prefix removed, however
    /// many there are and whichever source carried the credential.
    pub fn strip_credentials(&self, offered: &[String]) -> Vec<String> {
        strip_prefixed(
            offered,
            self.sources.iter().filter_map(|s| match s {
                Source::Subprotocol(prefix) => Some(prefix.as_str()),
                _ => None,
            }),
        )
    }

    fn find(&self, req: &Request<'_>) -> Option<Found> {
        let rest = self.strip_credentials(req.subprotocols);
        let plain = |token: String, s: &Source| Found {
            basic: false,
            token,
            source: s.label(),
            rest: rest.clone(),
        };
        for s in &self.sources {
            let found = match s {
                Source::Bearer => req
                    .headers
                    .get_all(AUTHORIZATION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(|v| {
                        let (scheme, token) = v.trim().split_once(' ')?;
                        scheme
                            .eq_ignore_ascii_case("bearer")
                            .then(|| token.trim().to_owned())
                    })
                    .map(|t| plain(t, s)),
                Source::Query(name) => req
                    .query
                    .and_then(|q| {
                        q.split('&').find_map(|pair| {
                            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                            (percent_decode(k) == *name).then(|| percent_decode(v))
                        })
                    })
                    .map(|t| plain(t, s)),
                Source::Cookie(name) => req
                    .headers
                    .get_all(COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|c| {
                        let (k, v) = c.trim().split_once('=')?;
                        (k == name).then(|| v.trim_matches('"').to_owned())
                    })
                    .map(|t| plain(t, s)),
                Source::Basic => req
                    .headers
                    .get_all(AUTHORIZATION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(|v| {
                        let (scheme, b64) = v.trim().split_once(' ')?;
                        if !scheme.eq_ignore_ascii_case("basic") {
                            return None;
                        }
                        use base64::Engine as _;
                        let raw = base64::engine::general_purpose::STANDARD
                            .decode(b64.trim())
                            .unwrap_or_default();
                        Some(String::from_utf8(raw).unwrap_or_default())
                    })
                    .map(|t| Found {
                        basic: true,
                        ..plain(t, s)
                    }),
                Source::Subprotocol(prefix) => req
                    .subprotocols
                    .iter()
                    .find_map(|p| p.strip_prefix(prefix.as_str()))
                    .map(|token| plain(token.to_owned(), s)),
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

/// `offered` without every entry that starts with one of `prefixes`: such an entry carries a
/// credential and may never be selected, forwarded upstream, echoed or logged. The one rule for
/// every authentication path (keys and JWTs here, the external check in the server).
pub fn strip_prefixed<'a>(
    offered: &[String],
    prefixes: impl Iterator<Item = &'a str> + Clone,
) -> Vec<String> {
    offered
        .iter()
        .filter(|p| !prefixes.clone().any(|t| p.starts_with(t)))
        .cloned()
        .collect()
}

/// Constant-time equality of two digests: the time does not tell where they differ (compare
/// digests of secrets, so that their lengths do not show either).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Decodes `%XX` and `+` in a query component; malformed escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    const KEY: &str = "s3cret-key";

    fn policy() -> AuthPolicy {
        AuthPolicy {
            sources: [
                "bearer",
                "cookie:wsgate_token",
                "query:access_token",
                "subprotocol:token.",
            ]
            .iter()
            .map(|s| Source::parse(s).unwrap())
            .collect(),
            api_keys: vec![ApiKey::from_secret("ci", KEY)],
            jwt: Vec::new(),
            basic_users: Vec::new(),
        }
    }

    fn auth(
        headers: &[(&'static str, &str)],
        query: Option<&str>,
        protos: &[&str],
    ) -> Result<(Identity, Vec<String>), Refusal> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        let protos: Vec<String> = protos.iter().map(|s| s.to_string()).collect();
        policy().authenticate(&Request {
            headers: &h,
            query,
            subprotocols: &protos,
            ..Request::new("127.0.0.1".parse().unwrap(), "x")
        })
    }

    #[test]
    fn every_source_finds_the_credential() {
        let id = auth(&[("authorization", "Bearer s3cret-key")], None, &[])
            .unwrap()
            .0;
        assert_eq!((id.name.as_str(), id.source.as_str()), ("ci", "bearer"));
        let id = auth(&[("cookie", "a=b; wsgate_token=s3cret-key")], None, &[])
            .unwrap()
            .0;
        assert_eq!(id.source, "cookie:wsgate_token");
        let id = auth(&[], Some("x=1&access_token=s3cret%2Dkey"), &[])
            .unwrap()
            .0;
        assert_eq!(id.source, "query:access_token");
        let (id, rest) = auth(&[], None, &["chat.v1", "token.s3cret-key", "chat.v2"]).unwrap();
        assert_eq!(id.source, "subprotocol:token.");
        assert_eq!(
            rest,
            ["chat.v1", "chat.v2"],
            "the token entry is removed, never selectable"
        );
    }

    #[test]
    fn every_credential_entry_is_removed_whatever_the_count_or_source() {
        // The same token offered twice: neither copy may survive as a subprotocol.
        let (_, rest) = auth(
            &[],
            None,
            &["token.s3cret-key", "chat.v1", "token.s3cret-key"],
        )
        .unwrap();
        assert_eq!(rest, ["chat.v1"]);
        // A credential found in another source still strips token entries from the offer.
        let (id, rest) = auth(
            &[("authorization", "Bearer s3cret-key")],
            None,
            &["token.other", "chat.v1"],
        )
        .unwrap();
        assert_eq!(id.source, "bearer");
        assert_eq!(rest, ["chat.v1"]);
    }

    #[test]
    fn missing_and_invalid_are_told_apart_and_never_show_the_token() {
        let e = auth(&[], None, &["chat.v1"]).unwrap_err();
        assert_eq!(e.reason, Reason::AuthMissing);
        let e = auth(&[("authorization", "Bearer wrong-token-value")], None, &[]).unwrap_err();
        assert_eq!(e.reason, Reason::AuthInvalid);
        assert!(!e.detail.contains("wrong-token-value"));
        let e = auth(&[("authorization", "Basic czNjcmV0LWtleQ==")], None, &[]).unwrap_err();
        assert_eq!(
            e.reason,
            Reason::AuthMissing,
            "only Bearer is a bearer credential"
        );
        // the first source that carries a credential is the one verified
        let e = auth(
            &[("authorization", "Bearer nope")],
            Some("access_token=s3cret-key"),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::AuthInvalid);
    }

    #[test]
    fn sources_and_keys_parse_with_helpful_errors() {
        assert!(Source::parse("query")
            .unwrap_err()
            .contains("query:access_token"));
        assert!(Source::parse("header:x").is_err());
        assert!(ApiKey::from_hex("a", "abc").is_err());
        let k = ApiKey::from_hex("a", &"0f".repeat(32)).unwrap();
        assert_eq!(k.sha256[0], 0x0f);
        assert!(!format!("{k:?}").contains("15"), "digests are not printed");
    }

    #[test]
    fn basic_users_with_argon2_and_bcrypt() {
        let argon = hash_password("s3cret", b"0123456789abcdef").unwrap();
        let bc = bcrypt::hash("hunter2", 4).unwrap();
        let p = AuthPolicy {
            sources: vec![Source::Basic],
            api_keys: Vec::new(),
            jwt: Vec::new(),
            basic_users: vec![
                BasicUser::new("alice", &argon).unwrap(),
                BasicUser::new("bob", &bc).unwrap(),
            ],
        };
        let try_auth = |user_pass: &str| {
            use base64::Engine as _;
            let mut h = HeaderMap::new();
            let v = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user_pass)
            );
            h.insert("authorization", HeaderValue::from_str(&v).unwrap());
            p.authenticate(&Request {
                headers: &h,
                ..Request::new("127.0.0.1".parse().unwrap(), "x")
            })
        };
        assert_eq!(try_auth("alice:s3cret").unwrap().0.name, "alice");
        assert_eq!(try_auth("bob:hunter2").unwrap().0.name, "bob");
        assert_eq!(
            try_auth("alice:wrong").unwrap_err().reason,
            Reason::AuthInvalid
        );
        let e = try_auth("mallory:s3cret").unwrap_err();
        assert!(!e.detail.contains("mallory"), "unknown users are not named");
        assert!(BasicUser::new("a", "plain").is_err());
        assert!(
            argon2::PasswordHash::new(DUMMY_HASH).is_ok(),
            "unknown users cost a real verification"
        );
        assert!(BasicUser::new("a:b", &argon).is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
