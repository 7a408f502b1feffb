//! The host gate: an optional allowlist of `Host` values, the defence against DNS rebinding (a
//! hostile name that resolves to this server must not reach it).

use crate::{Reason, Refusal};

/// Allowed `Host` values; empty admits every host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPolicy {
    /// Lower-case entries; one without a port matches any port.
    pub allow: Vec<String>,
}

impl HostPolicy {
    /// Builds the policy; the error names the bad entry's index.
    pub fn parse(entries: &[String]) -> Result<HostPolicy, (usize, String)> {
        for (i, e) in entries.iter().enumerate() {
            if e.is_empty() || e.contains(['/', ' ', '*', '@']) {
                return Err((i, format!("{e:?} is not a host name with an optional port, e.g. \"gw.example.com\" or \"127.0.0.1:8080\"")));
            }
        }
        Ok(HostPolicy {
            allow: entries.iter().map(|e| e.to_ascii_lowercase()).collect(),
        })
    }

    /// The host check.
    pub fn check(&self, host: &str) -> Result<(), Refusal> {
        if self.allow.is_empty() {
            return Ok(());
        }
        let host = host.to_ascii_lowercase();
        let name = strip_port(&host);
        let ok = self
            .allow
            .iter()
            .any(|e| *e == host || (strip_port(e) == e.as_str() && *e == name));
        if ok {
            Ok(())
        } else {
            Err(Refusal::new(
                Reason::HostNotAllowed,
                format!("Host {host:?} is not one of {:?}", self.allow),
            ))
        }
    }
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h
            .split_once(']')
            .map(|(a, _)| &h[..a.len() + 1])
            .unwrap_or(h);
    }
    match h.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let p = HostPolicy::parse(&[
            "GW.example.com".into(),
            "127.0.0.1:8080".into(),
            "[::1]".into(),
        ])
        .unwrap();
        assert!(p.check("gw.example.com").is_ok());
        assert!(p.check("gw.example.com:443").is_ok());
        assert!(p.check("127.0.0.1:8080").is_ok());
        assert!(p.check("[::1]:9").is_ok());
        assert_eq!(
            p.check("127.0.0.1:8081").unwrap_err().reason,
            Reason::HostNotAllowed
        );
        assert!(p.check("evil.example.com").is_err());
        assert!(p.check("gw.example.com.evil.net").is_err());
        assert!(HostPolicy::default().check("anything").is_ok());
        assert!(HostPolicy::parse(&["*.x".into()]).is_err());
    }
}
