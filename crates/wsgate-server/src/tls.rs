//! TLS termination with rustls (ring provider): certificates are checked when the server starts,
//! so an expired certificate or a key for another certificate stops it with a clear message
//! instead of failing every client's handshake later.

use crate::config::{ClientAuth, ConfigError, Tls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Certificates expiring sooner than this are warned about at start.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// What start-up learned about a listener's certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Leaf subject, for the log.
    pub subject: String,
    /// End of validity.
    pub not_after: SystemTime,
    /// Whether it expires within [`EXPIRY_WARNING`].
    pub expires_soon: bool,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads and checks a listener's certificate chain and key, returning the rustls configuration
/// (with client-certificate verification if configured) and the reloadable certificate.
pub fn server_config(
    tls: &Tls,
    source: &str,
) -> Result<(Arc<rustls::ServerConfig>, Arc<CertReloader>, CertInfo), ConfigError> {
    let err = |k: &str, message: String| ConfigError {
        file: source.to_owned(),
        key: format!("{}.{k}", tls.key_path),
        message,
    };
    let (certified, info) = load_certified_key(tls).map_err(|(k, m)| err(k, m))?;
    let reloader = Arc::new(CertReloader {
        tls: tls.clone(),
        current: RwLock::new(Arc::new(certified)),
        stamps: Mutex::new(stamps(tls)),
    });
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("cert", format!("TLS setup failed: {e}")))?;
    let builder = match (&tls.client_ca, tls.client_auth) {
        (Some(ca), mode) if mode != ClientAuth::None => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca).map_err(|m| err("client_ca", m))? {
                roots.add(c).map_err(|e| {
                    err(
                        "client_ca",
                        format!("{}: not a usable CA certificate: {e}", ca.display()),
                    )
                })?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            );
            let v = if mode == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder
                .with_client_cert_verifier(v.build().map_err(|e| err("client_ca", e.to_string()))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(reloader.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), reloader, info))
}

/// Reads, parses and checks a certificate chain and key: not expired, key belongs to the leaf.
fn load_certified_key(tls: &Tls) -> Result<(CertifiedKey, CertInfo), (&'static str, String)> {
    let certs = read_certs(&tls.cert).map_err(|m| ("cert", m))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
        (
            "key",
            format!(
                "cannot read a PEM private key from {}: {e}",
                tls.key.display()
            ),
        )
    })?;
    let info =
        cert_info(&certs[0]).map_err(|m| ("cert", format!("{}: {m}", tls.cert.display())))?;
    if info.not_after <= SystemTime::now() {
        return Err((
            "cert",
            format!(
                "the certificate in {} ({}) expired on {}; renew it (for development: `wsgate cert dev --host localhost`)",
                tls.cert.display(),
                info.subject,
                iso_date(info.not_after)
            ),
        ));
    }
    let certified = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => (
            "key",
            format!(
                "the private key in {} does not belong to the certificate in {}",
                tls.key.display(),
                tls.cert.display()
            ),
        ),
        other => ("key", format!("unusable certificate or key: {other}")),
    })?;
    Ok((certified, info))
}

fn stamps(tls: &Tls) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(&tls.cert), m(&tls.key))
}

/// Serves the current certificate and swaps in a new one when the files change, so that a renewed
/// certificate is used without a restart while open connections keep theirs.
#[derive(Debug)]
pub struct CertReloader {
    tls: Tls,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

impl CertReloader {
    /// Reloads when either file's modification time changed; `None` when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<CertInfo, String>> {
        let now = stamps(&self.tls);
        let mut seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == now {
            return None;
        }
        *seen = now;
        drop(seen);
        Some(self.reload())
    }

    /// Loads the files again; on any problem the certificate in use is kept.
    pub fn reload(&self) -> Result<CertInfo, String> {
        let (certified, info) = load_certified_key(&self.tls).map_err(|(_, m)| m)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certified);
        Ok(info)
    }

    /// The files this listener's certificate comes from, for messages.
    pub fn describe(&self) -> String {
        format!("{} / {}", self.tls.cert.display(), self.tls.key.display())
    }
}

/// The TLS identity of a verified client certificate: subject and subject alternative names.
pub fn client_identity(der: &CertificateDer<'_>) -> Option<wsgate_admission::ClientCert> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push((*d).to_owned()),
                GeneralName::RFC822Name(e) => sans.push((*e).to_owned()),
                GeneralName::URI(u) => sans.push((*u).to_owned()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => sans.push(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                    16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        sans.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some(wsgate_admission::ClientCert {
        subject: cert.subject().to_string(),
        sans,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no `-----BEGIN CERTIFICATE-----` block",
            path.display()
        ));
    }
    Ok(certs)
}

fn cert_info(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("the first certificate cannot be parsed: {e}"))?;
    let secs = cert.validity().not_after.timestamp();
    let not_after = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    let expires_soon = not_after
        .duration_since(SystemTime::now())
        .map(|left| left < EXPIRY_WARNING)
        .unwrap_or(true);
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        not_after,
        expires_soon,
    })
}

/// A TLS client configuration for `wss://` upstreams: public roots plus an optional CA file.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A self-signed certificate and key (PEM) for development, valid from yesterday for `days`.
pub fn dev_cert(hosts: &[String], days: u32) -> Result<(String, String), String> {
    let mut names: Vec<String> = hosts.to_vec();
    for extra in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_owned());
        }
    }
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| format!("bad host name: {e}"))?;
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    let ymd = |day: i64| {
        let (y, m, d) = civil_from_days(day);
        rcgen::date_time_ymd(y, m, d)
    };
    params.not_before = ymd(today - 1);
    params.not_after = ymd(today + i64::from(days));
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        hosts.first().map(String::as_str).unwrap_or("localhost"),
    );
    let key = rcgen::KeyPair::generate().map_err(|e| format!("key generation failed: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("signing failed: {e}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m, d)
}

/// The day of `t` as `2026-11-25` (ISO 8601, UTC), for messages and the banner.
pub fn iso_date(t: SystemTime) -> String {
    let days = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_515), (2026, 3, 3));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn dev_cert_loads_and_mismatched_key_is_named() {
        let dir = std::env::temp_dir().join(format!("wsgate-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = dev_cert(&["localhost".into()], 30).unwrap();
        let (_, other_key) = dev_cert(&["localhost".into()], 30).unwrap();
        std::fs::write(dir.join("c.pem"), cert).unwrap();
        std::fs::write(dir.join("k.pem"), key).unwrap();
        std::fs::write(dir.join("k2.pem"), other_key).unwrap();
        let tls = |k: &str| Tls {
            cert: dir.join("c.pem"),
            key: dir.join(k),
            key_path: "listener[0].tls".into(),
            client_ca: None,
            client_auth: ClientAuth::None,
        };
        let (_, _, info) = server_config(&tls("k.pem"), "t.toml").unwrap();
        assert!(!info.expires_soon);
        let e = server_config(&tls("k2.pem"), "t.toml").unwrap_err();
        assert_eq!(e.key, "listener[0].tls.key");
        assert!(e.message.contains("does not belong"), "{e}");
        let e = server_config(&tls("missing.pem"), "t.toml").unwrap_err();
        assert_eq!(e.key, "listener[0].tls.key");
        let (_, soon) = dev_cert(&["localhost".into()], 3).unwrap();
        let _ = soon;
        std::fs::remove_dir_all(&dir).ok();
    }
}
