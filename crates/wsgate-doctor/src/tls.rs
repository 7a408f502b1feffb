//! TLS for the doctor: a verifying client that also records whether the server asked for a client
//! certificate, a non-verifying one to read the chain of a server that failed verification, and
//! the mapping of rustls errors to catalog causes.

use crate::{Options, Reason};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS settings from the command line.
#[derive(Debug, Clone)]
pub struct Tls {
    roots: Arc<rustls::RootCertStore>,
    client: Option<Arc<CertifiedKey>>,
    insecure: bool,
}

/// Records whether the server sent a CertificateRequest.
#[derive(Debug)]
pub struct ClientCertProbe {
    key: Option<Arc<CertifiedKey>>,
    /// Set when the server asked for a client certificate.
    pub requested: AtomicBool,
}

impl ResolvesClientCert for ClientCertProbe {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.requested.store(true, Ordering::SeqCst);
        self.key.clone()
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts any certificate: used only to read a chain that failed verification, or with --insecure.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Tls {
    /// Loads `--cacert` and `--cert/--key`.
    pub fn new(opts: &Options) -> Result<Tls, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = &opts.cacert {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--cacert {}: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("--cacert {}: no certificate in it", ca.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("--cacert {}: {e}", ca.display()))?;
            }
        }
        let client = match &opts.client_cert {
            None => None,
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("--cert {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("--key {}: {e}", key.display()))?;
                let ck = CertifiedKey::from_der(chain, key, &provider())
                    .map_err(|e| format!("--cert/--key: {e}"))?;
                Some(Arc::new(ck))
            }
        };
        Ok(Tls {
            roots: Arc::new(roots),
            client,
            insecure: opts.insecure,
        })
    }

    /// A client configuration for one connection, and its client-certificate probe.
    pub fn config(&self, verify: bool) -> (Arc<rustls::ClientConfig>, Arc<ClientCertProbe>) {
        let probe = Arc::new(ClientCertProbe {
            key: self.client.clone(),
            requested: AtomicBool::new(false),
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| unreachable_versions());
        let builder = if verify && !self.insecure {
            builder.with_root_certificates(self.roots.clone())
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        };
        let mut config = builder.with_client_cert_resolver(probe.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        (Arc::new(config), probe)
    }
}

/// The ring provider always supports the default versions; this cannot be reached.
fn unreachable_versions() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder()
}

/// The cause for a failed TLS handshake.
pub fn classify(e: &rustls::Error) -> Reason {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                Reason::TlsExpired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Reason::TlsNotYetValid
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Reason::TlsHostnameMismatch
            }
            _ => Reason::TlsUntrusted,
        },
        E::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            Reason::TlsClientCertRequired
        }
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => Reason::TlsNotTls,
        _ => Reason::TlsProtocol,
    }
}

/// Whether the leaf certificate is in date now, and whether it names `host` (DNS name, with a
/// one-label wildcard, or IP address): the checks reported separately from trust.
pub fn leaf_checks(leaf: &CertificateDer<'_>, host: &str) -> Option<(bool, bool)> {
    use x509_parser::extensions::GeneralName;
    let (_, c) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let in_date = c.validity().is_valid();
    let host = host.to_ascii_lowercase();
    let ip: Option<std::net::IpAddr> = host.parse().ok();
    let names = c.subject_alternative_name().ok().flatten();
    let matches = names.is_some_and(|e| {
        e.value.general_names.iter().any(|n| match n {
            GeneralName::DNSName(d) => {
                let d = d.to_ascii_lowercase();
                match d.strip_prefix("*.") {
                    Some(suffix) => host
                        .split_once('.')
                        .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
                    None => d == host,
                }
            }
            GeneralName::IPAddress(b) => match (ip, b.len()) {
                (Some(std::net::IpAddr::V4(v4)), 4) => v4.octets()[..] == b[..],
                (Some(std::net::IpAddr::V6(v6)), 16) => v6.octets()[..] == b[..],
                _ => false,
            },
            _ => false,
        })
    });
    Some((in_date, matches))
}

/// Subject, issuer, validity and SANs of each certificate, one line each.
pub fn describe_chain(certs: &[CertificateDer<'_>]) -> Vec<String> {
    certs
        .iter()
        .enumerate()
        .map(
            |(i, der)| match x509_parser::parse_x509_certificate(der.as_ref()) {
                Ok((_, c)) => {
                    let sans: Vec<String> = c
                        .subject_alternative_name()
                        .ok()
                        .flatten()
                        .map(|e| {
                            e.value
                                .general_names
                                .iter()
                                .map(|n| n.to_string())
                                .collect()
                        })
                        .unwrap_or_default();
                    format!(
                        "certificate {i}: subject {}; issuer {}; valid {} to {}; names {}",
                        c.subject(),
                        c.issuer(),
                        c.validity().not_before,
                        c.validity().not_after,
                        if sans.is_empty() {
                            "none".into()
                        } else {
                            sans.join(", ")
                        }
                    )
                }
                Err(_) => format!("certificate {i}: cannot be parsed"),
            },
        )
        .collect()
}
