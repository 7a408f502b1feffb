//! TLS termination with rustls (ring provider): certificates are checked when the server starts,
//! so an expired certificate or a key for another certificate stops it with a clear message
//! instead of failing every client's handshake later.

use crate::config::{ConfigError, Tls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
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

/// Loads and checks a listener's certificate chain and key, returning the rustls configuration.
pub fn server_config(
    tls: &Tls,
    source: &str,
) -> Result<(Arc<rustls::ServerConfig>, CertInfo), ConfigError> {
    let err = |k: &str, message: String| ConfigError {
        file: source.to_owned(),
        key: format!("{}.{k}", tls.key_path),
        message,
    };
    let certs = read_certs(&tls.cert).map_err(|m| err("cert", m))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
        err(
            "key",
            format!(
                "cannot read a PEM private key from {}: {e}",
                tls.key.display()
            ),
        )
    })?;
    let info =
        cert_info(&certs[0]).map_err(|m| err("cert", format!("{}: {m}", tls.cert.display())))?;
    let now = SystemTime::now();
    if info.not_after <= now {
        return Err(err(
            "cert",
            format!(
                "the certificate in {} ({}) expired on {}; renew it (for development: `wsgate cert dev --host localhost`)",
                tls.cert.display(),
                info.subject,
                httpdate(info.not_after)
            ),
        ));
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("cert", format!("TLS setup failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => err(
                "key",
                format!(
                    "the private key in {} does not belong to the certificate in {}",
                    tls.key.display(),
                    tls.cert.display()
                ),
            ),
            other => err("key", format!("unusable certificate or key: {other}")),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), info))
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

/// `2026-11-25` for messages.
pub fn httpdate(t: SystemTime) -> String {
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
        };
        let (_, info) = server_config(&tls("k.pem"), "t.toml").unwrap();
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
