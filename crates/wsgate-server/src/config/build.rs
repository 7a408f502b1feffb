//! Building the gates' settings from the policy tables, after validation: merging each route's
//! keys over its listener's defaults, parsing origins, hosts and rules, and reading the key files
//! that JWT issuers name (through [`Files`], so that loading stays testable without a disk).

use super::model::{Config, RoutePolicy};
use super::raw::{ClientCertRule, RawAuth, RawAuthz, RawJwt, RawPolicy};
use super::validate::Checked;
use super::values::{parse_duration, parse_http_target};
use super::ConfigError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Credential sources used when a route's `auth` names none: the ones that never land in URLs.
pub const DEFAULT_SOURCES: &[&str] = &["bearer", "cookie:wsgate_token", "subprotocol:token."];

/// Where a configuration's key files (JWT secrets, public keys, JWKS) are read from.
pub trait Files {
    /// The whole file at `path` (already joined to the configuration's directory).
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
}

/// The file system: what `serve` and `check` load from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk;

impl Files for Disk {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// Builds every route's policy on every listener (route keys over the listener's `policy`
/// table), completing the model that validation started.
pub(super) fn policies(
    checked: Checked,
    source: &str,
    base: &Path,
    files: &dyn Files,
) -> Result<Config, ConfigError> {
    let err = |(key, message): (String, String)| ConfigError {
        file: source.to_owned(),
        key,
        message,
    };
    let Checked {
        mut config,
        listener_policies,
        route_policies,
    } = checked;
    let mut dev_token = None;
    let mut defaults = Vec::new();
    for (l, lp) in listener_policies.into_iter().enumerate() {
        if let Some(lp) = &lp {
            // Checked on its own so that a mistake is reported at the listener's key.
            let at = format!("listener[{l}].policy");
            build_policy(lp, "/", &at, &mut dev_token, base, files).map_err(err)?;
        }
        defaults.push(lp.unwrap_or_default());
    }
    for (i, (route, own)) in config.routes.iter_mut().zip(route_policies).enumerate() {
        for (l, lp) in defaults.iter().enumerate() {
            let merged = RawPolicy {
                origins: own.origins.clone().or_else(|| lp.origins.clone()),
                allow_missing_origin: own.allow_missing_origin.or(lp.allow_missing_origin),
                hosts: own.hosts.clone().or_else(|| lp.hosts.clone()),
                firewall: own.firewall.clone(),
                auth: own.auth.clone().or_else(|| lp.auth.clone()),
                authz: own.authz.clone().or_else(|| lp.authz.clone()),
                client_cert: own.client_cert.or(lp.client_cert),
            };
            let at = format!("route[{i}]");
            let mut p = build_policy(&merged, &route.path, &at, &mut dev_token, base, files)
                .map_err(err)?;
            let listener_fw = lp.firewall.clone().unwrap_or_default();
            p.listener_firewall =
                wsgate_admission::firewall::IpRules::parse(&listener_fw.allow, &listener_fw.deny)
                    .map_err(|(k, m)| err((format!("listener[{l}].policy.firewall.{k}"), m)))?;
            route.policies.push(p);
        }
    }
    config.dev_token = dev_token;
    share_remote_keys(&mut config);
    if let Some(c) = &config.cluster {
        redis_tls_files(&c.tls, files).map_err(|(k, m)| err((format!("cluster.{k}"), m)))?;
    }
    Ok(config)
}

/// One [`RemoteKeys`] per identity provider URL, shared by every route and listener that names it,
/// so each set is fetched once.
///
/// [`RemoteKeys`]: wsgate_admission::jwt::RemoteKeys
fn share_remote_keys(config: &mut Config) {
    let mut seen: Vec<std::sync::Arc<wsgate_admission::jwt::RemoteKeys>> = Vec::new();
    for issuer in config.jwt_issuers_mut() {
        let Some(r) = issuer.remote.as_mut() else {
            continue;
        };
        match seen
            .iter()
            .find(|s| s.url == r.url && s.discovery == r.discovery && s.ca_file == r.ca_file)
        {
            Some(s) => *r = s.clone(),
            None => seen.push(r.clone()),
        }
    }
    config.jwks = seen;
}

/// The files for TLS to Redis, checked now so a wrong path stops `serve` and `check` with the
/// key to fix, rather than becoming a Redis outage that never ends. (They are read again at every
/// connection, so a renewed certificate is picked up.)
fn redis_tls_files(
    tls: &super::model::RedisTls,
    files: &dyn Files,
) -> Result<(), (String, String)> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |key: &str, path: &Path| {
        files.read(path).map_err(|e| {
            (
                key.to_owned(),
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    let certs = |key: &str, path: &Path| -> Result<(), (String, String)> {
        let pem = read(key, path)?;
        let n = CertificateDer::pem_slice_iter(&pem)
            .filter(|c| c.is_ok())
            .count();
        if n == 0 {
            return Err((
                key.to_owned(),
                format!(
                    "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                ),
            ));
        }
        Ok(())
    };
    if let Some(ca) = &tls.ca_file {
        certs("ca_file", ca)?;
    }
    if let Some((cert, key)) = &tls.client {
        certs("cert_file", cert)?;
        let pem = read("key_file", key)?;
        PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
            (
                "key_file".to_owned(),
                format!(
                    "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                    key.display()
                ),
            )
        })?;
    }
    Ok(())
}

/// Builds the gates' settings from one policy table; errors carry a full key path under `at`.
fn build_policy(
    p: &RawPolicy,
    path: &str,
    at: &str,
    dev_token: &mut Option<String>,
    base: &Path,
    files: &dyn Files,
) -> Result<RoutePolicy, (String, String)> {
    let origin = wsgate_admission::origin::OriginPolicy::parse(
        p.origins.as_deref().unwrap_or(&["same-origin".to_owned()]),
        p.allow_missing_origin.unwrap_or(true),
    )
    .map_err(|(j, m)| (format!("{at}.origins[{j}]"), m))?;
    let fw = p.firewall.clone().unwrap_or_default();
    let firewall = wsgate_admission::firewall::IpRules::parse(&fw.allow, &fw.deny)
        .map_err(|(k, m)| (format!("{at}.firewall.{k}"), m))?;
    let host = wsgate_admission::host::HostPolicy::parse(p.hosts.as_deref().unwrap_or(&[]))
        .map_err(|(j, m)| (format!("{at}.hosts[{j}]"), m))?;
    // Subprotocol entries under these prefixes carry credentials: the external check gets
    // them, the selection never does (key and JWT routes keep them in their AuthPolicy).
    let token_prefixes: Vec<String> = p
        .auth
        .as_ref()
        .and_then(|a| a.sources.as_ref())
        .map(|v| {
            v.iter()
                .filter_map(|s| s.strip_prefix("subprotocol:").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let external = match p.auth.as_ref().and_then(|a| a.external.as_ref()) {
        None => None,
        Some(x) => {
            let k = |f: &str| format!("{at}.auth.external.{f}");
            if let Some(a) = &p.auth {
                if !a.api_keys.is_empty() || !a.jwt.is_empty() || a.dev_token {
                    return Err((
                            format!("{at}.auth.external"),
                            "the external check decides alone: remove api_keys, jwt and dev_token from this route's auth".into(),
                        ));
                }
            }
            let endpoint = parse_http_target(&x.url).map_err(|m| (k("url"), m))?;
            let dur = |f: &str, v: &Option<String>, d: Duration| match v {
                None => Ok(d),
                Some(s) if s.trim() == "0s" => Ok(Duration::ZERO),
                Some(s) => parse_duration(s).map_err(|m| (k(f), m)),
            };
            let header = |f: &str, v: &str| {
                http::HeaderName::from_bytes(v.as_bytes())
                    .map_err(|_| (k(f), format!("{v:?} is not a header name")))
            };
            let policy = wsgate_admission::external::ExternalPolicy {
                url: x.url.clone(),
                endpoint,
                timeout: dur("timeout", &x.timeout, Duration::from_secs(2))?,
                cache_ttl: dur("cache_ttl", &x.cache_ttl, Duration::ZERO)?,
                identity_header: header(
                    "identity_header",
                    x.identity_header.as_deref().unwrap_or("x-auth-user"),
                )?,
                identity_headers: x
                    .identity_headers
                    .iter()
                    .map(|h| header("identity_headers", h))
                    .collect::<Result<_, _>>()?,
                subprotocol_prefixes: token_prefixes,
            };
            Some(policy)
        }
    };
    let auth = match p.auth.as_ref().filter(|a| a.external.is_none()) {
        None => None,
        Some(a) => Some(
            auth_policy(a, dev_token, base, files)
                .map_err(|(k, m)| (format!("{at}.auth.{k}"), m))?,
        ),
    };
    let authz = match &p.authz {
        None => wsgate_admission::authz::AuthzPolicy::default(),
        Some(z) => {
            let auth = auth.as_ref().map(|_| ()).or(external.as_ref().map(|_| ()));
            let needs_identity =
                !z.require_claims.is_empty() || !z.require_scopes.is_empty() || z.channel.is_some();
            if auth.is_none() && needs_identity {
                return Err((
                        format!("{at}.authz"),
                        "claim, scope and channel rules need an authenticated client: add `[route.auth]` to this route".into(),
                    ));
            }
            authz_policy(z, path).map_err(|(k, m)| (format!("{at}.authz.{k}"), m))?
        }
    };
    Ok(RoutePolicy {
        client_cert_required: p.client_cert == Some(ClientCertRule::Required),
        listener_firewall: Default::default(),
        firewall,
        host,
        origin,
        auth,
        authz,
        external,
    })
}

fn authz_policy(
    z: &RawAuthz,
    path: &str,
) -> Result<wsgate_admission::authz::AuthzPolicy, (String, String)> {
    use wsgate_admission::authz::{AuthzPolicy, ChannelRule};
    let claims = z
        .require_claims
        .iter()
        .map(|(k, v)| {
            let json = serde_json::to_value(v)
                .map_err(|e| (format!("require_claims.{k}"), e.to_string()))?;
            Ok((k.clone(), json))
        })
        .collect::<Result<Vec<_>, (String, String)>>()?;
    let channel = match (&z.channel, &z.channel_claim) {
        (None, None) => None,
        (Some(template), Some(claim)) => {
            let names = crate::pattern::Pattern::parse(path)
                .map(|p| p.params().iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap_or_default();
            let mut rest = template.as_str();
            while let Some(start) = rest.find('{') {
                let end = rest[start..].find('}').ok_or((
                    "channel".to_owned(),
                    format!("{template:?} has an unclosed `{{`"),
                ))?;
                let name = &rest[start + 1..start + end];
                if !names.iter().any(|n| n == name) {
                    return Err((
                        "channel".into(),
                        format!("{template:?} uses {{{name}}}, but the route path {path:?} has parameters {names:?}"),
                    ));
                }
                rest = &rest[start + end..];
            }
            Some(ChannelRule {
                template: template.clone(),
                claim: claim.clone(),
            })
        }
        _ => {
            return Err((
                "channel".into(),
                "`channel` (e.g. \"chat:{room}\") and `channel_claim` (e.g. \"rooms\") go together"
                    .into(),
            ))
        }
    };
    Ok(AuthzPolicy {
        claims,
        scopes: z.require_scopes.clone(),
        channel,
        cert_subjects: z.cert_subjects.clone(),
        cert_sans: z.cert_sans.clone(),
    })
}

/// Keys at an identity provider's URL: `https://` only (the keys decide who is admitted), with
/// an optional CA file beside the public roots.
fn remote_keys(
    url: &str,
    discovery: bool,
    j: &RawJwt,
    base: &Path,
    files: &dyn Files,
    key: &str,
) -> Result<std::sync::Arc<wsgate_admission::jwt::RemoteKeys>, (String, String)> {
    match wsgate_handshake::endpoint::Endpoint::parse(url, wsgate_handshake::endpoint::Family::Http)
    {
        Ok(e) if e.tls => {}
        Ok(_) => {
            return Err((
                key.to_owned(),
                format!("{url:?}: keys that decide who is admitted are fetched over https:// only"),
            ))
        }
        Err(e) => return Err((key.to_owned(), format!("{url:?}: {e}"))),
    }
    let ca_file = match &j.jwks_ca_file {
        Some(p) => {
            let path = base.join(p);
            let pem = files.read(&path).map_err(|e| {
                (
                    "jwks_ca_file".to_owned(),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err((
                    "jwks_ca_file".to_owned(),
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            Some(path)
        }
        None => None,
    };
    Ok(std::sync::Arc::new(wsgate_admission::jwt::RemoteKeys::new(
        url.to_owned(),
        discovery,
        ca_file,
    )))
}

fn jwt_issuer(
    j: &RawJwt,
    base: &Path,
    files: &dyn Files,
) -> Result<wsgate_admission::jwt::JwtIssuer, (String, String)> {
    use wsgate_admission::jwt::{parse_algorithms, JwtIssuer, JwtKey};
    let read = |key: &str, p: &PathBuf| {
        files.read(&base.join(p)).map_err(|e| {
            (
                key.to_owned(),
                format!("cannot read {}: {e}", base.join(p).display()),
            )
        })
    };
    let algs = |default: Option<&str>| -> Result<_, (String, String)> {
        let names = match (&j.algorithms, default) {
            (Some(a), _) => a.clone(),
            (None, Some(d)) => vec![d.to_owned()],
            (None, None) => Vec::new(),
        };
        parse_algorithms(&names).map_err(|m| ("algorithms".to_owned(), m))
    };
    let given = [
        j.public_key.is_some(),
        j.secret.is_some(),
        j.secret_file.is_some(),
        j.public_key_file.is_some(),
        j.jwks_file.is_some(),
        j.jwks_url.is_some(),
        j.discovery == Some(true),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err((
            String::new(),
            "give exactly one of `secret`, `secret_file`, `public_key` or `public_key_file` (with `algorithms`), `jwks_file`, `jwks_url`, or `discovery = true` (with `issuer`)".into(),
        ));
    }
    if j.jwks_ca_file.is_some() && j.jwks_url.is_none() && j.discovery != Some(true) {
        return Err((
            "jwks_ca_file".into(),
            "is the CA of the identity provider's TLS: it goes with `jwks_url` or `discovery = true`".into(),
        ));
    }
    let remote = if let Some(url) = &j.jwks_url {
        Some(remote_keys(url, false, j, base, files, "jwks_url")?)
    } else if j.discovery == Some(true) {
        let Some(issuer) = &j.issuer else {
            return Err((
                "discovery".into(),
                "needs `issuer`: the keys are found from ISSUER/.well-known/openid-configuration"
                    .into(),
            ));
        };
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        Some(remote_keys(&url, true, j, base, files, "issuer")?)
    } else {
        None
    };
    if remote.is_some() && (j.algorithms.is_some() || j.kid.is_some()) {
        return Err((
            "jwks_url".into(),
            "takes `alg` and `kid` from each key the identity provider publishes; remove `algorithms`/`kid`".into(),
        ));
    }
    let keys = if let Some(s) = &j.secret {
        vec![
            JwtKey::secret(j.kid.clone(), s.as_bytes(), algs(Some("HS256"))?)
                .map_err(|m| ("secret".to_owned(), m))?,
        ]
    } else if let Some(p) = &j.secret_file {
        let bytes = read("secret_file", p)?;
        let trimmed = bytes.trim_ascii_end();
        vec![JwtKey::secret(j.kid.clone(), trimmed, algs(Some("HS256"))?)
            .map_err(|m| ("secret_file".to_owned(), m))?]
    } else if let Some(pem) = &j.public_key {
        vec![
            JwtKey::public_pem(j.kid.clone(), pem.as_bytes(), algs(None)?)
                .map_err(|m| ("public_key".to_owned(), m))?,
        ]
    } else if let Some(p) = &j.public_key_file {
        let pem = read("public_key_file", p)?;
        vec![JwtKey::public_pem(j.kid.clone(), &pem, algs(None)?)
            .map_err(|m| ("public_key_file".to_owned(), m))?]
    } else if let Some(p) = &j.jwks_file {
        if j.algorithms.is_some() || j.kid.is_some() {
            return Err((
                "jwks_file".into(),
                "takes `alg` and `kid` from each key of the JWKS; remove `algorithms`/`kid`".into(),
            ));
        }
        let text = String::from_utf8(read("jwks_file", p)?)
            .map_err(|_| ("jwks_file".to_owned(), "is not UTF-8 JSON".to_owned()))?;
        JwtKey::jwks(&text).map_err(|m| ("jwks_file".to_owned(), m))?
    } else {
        Vec::new()
    };
    Ok(JwtIssuer {
        issuer: j.issuer.clone(),
        audience: j.audience.clone(),
        leeway: match &j.leeway {
            None => 30,
            Some(l) if l.trim() == "0s" => 0,
            Some(l) => parse_duration(l)
                .map_err(|m| ("leeway".to_owned(), m))?
                .as_secs(),
        },
        require_exp: j.require_exp.unwrap_or(true),
        remote,
        keys,
    })
}

fn auth_policy(
    a: &RawAuth,
    dev_token: &mut Option<String>,
    base: &Path,
    files: &dyn Files,
) -> Result<wsgate_admission::auth::AuthPolicy, (String, String)> {
    use wsgate_admission::auth::{ApiKey, AuthPolicy, Source};
    let names: Vec<String> = match &a.sources {
        Some(s) if s.is_empty() => {
            return Err((
                "sources".into(),
                "is empty: name at least one source, e.g. [\"bearer\"]".into(),
            ))
        }
        Some(s) => s.clone(),
        None => DEFAULT_SOURCES.iter().map(|s| s.to_string()).collect(),
    };
    let sources = names
        .iter()
        .enumerate()
        .map(|(j, s)| Source::parse(s).map_err(|m| (format!("sources[{j}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut api_keys = a
        .api_keys
        .iter()
        .enumerate()
        .map(|(j, k)| {
            let mut key = ApiKey::from_hex(&k.name, &k.sha256)
                .map_err(|m| (format!("api_keys[{j}].sha256"), m))?;
            key.scopes = k.scopes.clone();
            Ok::<_, (String, String)>(key)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if a.dev_token {
        let token = dev_token.get_or_insert_with(crate::ids::dev_token);
        api_keys.push(ApiKey::from_secret("dev", token));
    }
    let jwt = a
        .jwt
        .iter()
        .enumerate()
        .map(|(j, raw)| {
            jwt_issuer(raw, base, files).map_err(|(k, m)| {
                let key = if k.is_empty() {
                    format!("jwt[{j}]")
                } else {
                    format!("jwt[{j}].{k}")
                };
                (key, m)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let basic_users = a
        .basic_users
        .iter()
        .enumerate()
        .map(|(j, u)| {
            wsgate_admission::auth::BasicUser::new(&u.name, &u.hash)
                .map_err(|m| (format!("basic_users[{j}]"), m))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let has_basic_source = sources.contains(&Source::Basic);
    if has_basic_source == basic_users.is_empty() {
        return Err(if has_basic_source {
            ("basic_users".into(), "the `basic` source needs users: basic_users = [{ name = \"alice\", hash = \"…\" }] (`wsgate passwd` makes a hash)".into())
        } else {
            (
                "sources".into(),
                "basic_users are configured but `basic` is not among the sources".into(),
            )
        });
    }
    if api_keys.is_empty() && jwt.is_empty() && basic_users.is_empty() {
        return Err((
            "api_keys".into(),
            "no verifier: add `api_keys = [{ name = \"ci\", sha256 = \"…\" }]` (printf %s KEY | sha256sum) or `dev_token = true`, or a `[[route.auth.jwt]]` issuer".into(),
        ));
    }
    Ok(AuthPolicy {
        sources,
        api_keys,
        jwt,
        basic_users,
    })
}
