//! The origin gate: which web pages may open a WebSocket here (the defence against cross-site
//! WebSocket hijacking). Matching is exact on scheme, host and port (RFC 6454 serialisation);
//! wildcards cover subdomains only and never look-alikes.

use crate::{Reason, Refusal, Request};

/// A serialised origin: scheme, lower-case host and an explicit port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Exactly this origin.
    Exact(Origin),
    /// Any subdomain (one or more labels) of `suffix`, same scheme and port.
    Subdomains {
        /// `https`.
        scheme: String,
        /// `.example.com`, with its leading dot.
        suffix: String,
        /// Explicit or default port.
        port: u16,
    },
    /// The request's own scheme and `Host`.
    SameOrigin,
    /// The literal `null` origin (sandboxed frames, `file:` pages): only when listed.
    Null,
}

/// The origin gate's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Allowed origins; an empty list allows none.
    pub allow: Vec<Entry>,
    /// Whether a request without `Origin` (a non-browser client) is admitted.
    pub allow_missing: bool,
}

impl Default for OriginPolicy {
    /// Same-origin pages, and non-browser clients.
    fn default() -> Self {
        OriginPolicy {
            allow: vec![Entry::SameOrigin],
            allow_missing: true,
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]`, lower-casing the host and validating both.
fn host_port(s: &str, default: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unclosed `[` in host")?;
        if !h
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            || h.is_empty()
        {
            return Err("bad IPv6 address".into());
        }
        (
            format!("[{}]", h.to_ascii_lowercase()),
            after.strip_prefix(':'),
        )
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (s.to_ascii_lowercase(), None),
        }
    };
    if !host.starts_with('[') {
        let labels: Vec<&str> = host.strip_suffix('.').unwrap_or(&host).split('.').collect();
        if host.is_empty()
            || labels.iter().any(|l| l.is_empty())
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(format!("{host:?} is not a host name"));
        }
    }
    let port = match port {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
            .parse::<u16>()
            .map_err(|_| format!("port {p} is out of range"))?,
        Some(p) => return Err(format!("port {p:?} is not a number")),
        None => default.ok_or("a port is needed for this scheme")?,
    };
    Ok((host, port))
}

impl Origin {
    /// Parses an `Origin` header value strictly: `scheme://host[:port]`, nothing more.
    pub fn parse(s: &str) -> Result<Origin, String> {
        let (scheme, rest) = s.split_once("://").ok_or("expected scheme://host[:port]")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(format!("bad scheme {scheme:?}"));
        }
        if rest.contains(['/', '?', '#', '@', ' ', '\\']) {
            return Err("an origin has no path, query, user name or spaces".into());
        }
        let (host, port) = host_port(rest, default_port(&scheme))?;
        Ok(Origin { scheme, host, port })
    }

    /// The origin a page on this server would have: `http(s)://` + the `Host` header.
    fn of_request(tls: bool, host: &str) -> Result<Origin, String> {
        let scheme = if tls { "https" } else { "http" };
        let (host, port) = host_port(host, default_port(scheme))?;
        Ok(Origin {
            scheme: scheme.to_owned(),
            host,
            port,
        })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if default_port(&self.scheme) != Some(self.port) {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl Entry {
    /// Parses an allowlist entry: an origin, `scheme://*.domain[:port]`, `same-origin` or `null`.
    pub fn parse(s: &str) -> Result<Entry, String> {
        match s {
            "same-origin" => return Ok(Entry::SameOrigin),
            "null" => return Ok(Entry::Null),
            "*" => return Err(
                "`*` would let any web page connect with its visitors' cookies; list the origins"
                    .into(),
            ),
            _ => {}
        }
        if let Some((scheme, rest)) = s.split_once("://*.") {
            let o = Origin::parse(&format!("{scheme}://{rest}"))
                .map_err(|e| format!("{s:?} is not `scheme://*.domain[:port]`: {e}"))?;
            if !o.host.contains('.') || o.host.starts_with('[') {
                return Err(format!(
                    "{s:?} would match every host under a top-level domain; name a domain like *.example.com"
                ));
            }
            return Ok(Entry::Subdomains {
                scheme: o.scheme,
                suffix: format!(".{}", o.host),
                port: o.port,
            });
        }
        if s.contains('*') {
            return Err(format!(
                "{s:?}: a wildcard may only stand for subdomains, as in https://*.example.com"
            ));
        }
        Origin::parse(s)
            .map(Entry::Exact)
            .map_err(|e| format!("{s:?} is not an origin like https://app.example.com[:port]: {e}"))
    }

    fn matches(&self, origin: Option<&Origin>, raw: &str, own: Option<&Origin>) -> bool {
        match (self, origin) {
            (Entry::Null, _) => raw == "null",
            (Entry::Exact(e), Some(o)) => e == o,
            (Entry::SameOrigin, Some(o)) => own == Some(o),
            (
                Entry::Subdomains {
                    scheme,
                    suffix,
                    port,
                },
                Some(o),
            ) => {
                o.scheme == *scheme
                    && o.port == *port
                    && o.host.len() > suffix.len()
                    && o.host.ends_with(suffix.as_str())
            }
            (_, None) => false,
        }
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Exact(o) => write!(f, "{o}"),
            Entry::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                write!(f, "{scheme}://*{suffix}")?;
                if default_port(scheme) != Some(*port) {
                    write!(f, ":{port}")?;
                }
                Ok(())
            }
            Entry::SameOrigin => f.write_str("same-origin"),
            Entry::Null => f.write_str("null"),
        }
    }
}

impl OriginPolicy {
    /// Builds a policy from configuration strings; the error names the bad entry's index.
    pub fn parse(entries: &[String], allow_missing: bool) -> Result<OriginPolicy, (usize, String)> {
        let allow = entries
            .iter()
            .enumerate()
            .map(|(i, e)| Entry::parse(e).map_err(|m| (i, m)))
            .collect::<Result<_, _>>()?;
        Ok(OriginPolicy {
            allow,
            allow_missing,
        })
    }

    /// The origin gate.
    pub fn check(&self, req: &Request<'_>) -> Result<(), Refusal> {
        let Some(raw) = req.origin else {
            return if self.allow_missing {
                Ok(())
            } else {
                Err(Refusal::new(
                    Reason::OriginMissing,
                    "no Origin header, and this route admits browsers only (allow_missing_origin = false)",
                ))
            };
        };
        let parsed = Origin::parse(raw).ok();
        let own = Origin::of_request(req.tls, req.host).ok();
        if self
            .allow
            .iter()
            .any(|e| e.matches(parsed.as_ref(), raw, own.as_ref()))
        {
            return Ok(());
        }
        // At most 200 bytes, cut on a character boundary (fuzzing found a cut inside one).
        let cut = (0..=raw.len().min(200))
            .rev()
            .find(|i| raw.is_char_boundary(*i))
            .unwrap_or(0);
        let shown = &raw[..cut];
        let nearest = self.nearest(raw, own.as_ref());
        let malformed = if parsed.is_none() && raw != "null" {
            " (not a valid serialized origin)"
        } else {
            ""
        };
        Err(Refusal::new(
            Reason::OriginNotAllowed,
            format!("Origin {shown:?}{malformed} is not allowed (Host {:?}); nearest allowed entry: {nearest}", req.host),
        ))
    }

    /// The allowlist entry most like `raw`, to make typos (a port, http vs https) obvious.
    fn nearest(&self, raw: &str, own: Option<&Origin>) -> String {
        self.allow
            .iter()
            .map(|e| match (e, own) {
                (Entry::SameOrigin, Some(o)) => (format!("same-origin ({o})"), o.to_string()),
                _ => (e.to_string(), e.to_string()),
            })
            .min_by_key(|(_, text)| distance(text, raw))
            .map(|(label, _)| label)
            .unwrap_or_else(|| "none (the allowlist is empty)".into())
    }
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().take(256).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().take(256).enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: &[&str], origin: Option<&str>, tls: bool, host: &str) -> Result<(), Refusal> {
        let entries: Vec<String> = policy.iter().map(|s| s.to_string()).collect();
        let p = OriginPolicy::parse(&entries, true).unwrap();
        p.check(&Request {
            tls,
            origin,
            ..Request::new("127.0.0.1".parse().unwrap(), host)
        })
    }

    fn ok(policy: &[&str], origin: &str) -> bool {
        check(policy, Some(origin), true, "gw.example.com").is_ok()
    }

    #[test]
    fn exact_origins_normalise_case_and_default_ports() {
        let p = ["https://app.example.com"];
        assert!(ok(&p, "https://app.example.com"));
        assert!(ok(&p, "HTTPS://APP.Example.COM"));
        assert!(ok(&p, "https://app.example.com:443"));
        assert!(!ok(&p, "https://app.example.com:8443"));
        assert!(!ok(&p, "http://app.example.com"));
        assert!(
            !ok(&p, "https://app.example.com."),
            "trailing dot is another name"
        );
        assert!(!ok(&p, "https://app.example.com/"), "an origin has no path");
        assert!(ok(&["http://localhost:3000"], "http://localhost:3000"));
        assert!(!ok(&["http://localhost:3000"], "http://localhost:3001"));
    }

    #[test]
    fn long_non_ascii_origins_are_cut_on_a_character_boundary() {
        // Found by the origin_host fuzz target: the detail cut byte 200 inside a character.
        let p = OriginPolicy::parse(&["https://app.test".into()], false).unwrap();
        let origin = format!("https://x{}.test", "\u{d409}".repeat(100));
        let e = p
            .check(&Request {
                tls: true,
                origin: Some(&origin),
                ..Request::new("192.0.2.1".parse().unwrap(), "app.test")
            })
            .unwrap_err();
        assert_eq!(e.reason, Reason::OriginNotAllowed);
    }

    #[test]
    fn look_alikes_never_match() {
        let p = ["https://app.example.com", "https://*.example.org"];
        for evil in [
            "https://app.example.com.evil.net",
            "https://evilapp.example.com",
            "https://app.example.comevil.net",
            "https://app.example.com@evil.net",
            "https://good@app.example.com",
            "https://evilexample.org",
            "https://example.org",
            "https://a.example.org.evil.net",
            "http://a.example.org",
            "https://a.example.org:444",
            "https://a..example.org",
            "null",
            "",
            "https://app.example.com https://evil.net",
        ] {
            assert!(!ok(&p, evil), "{evil} must be refused");
        }
        assert!(ok(&p, "https://a.example.org"));
        assert!(ok(&p, "https://a.b.example.org"));
    }

    #[test]
    fn same_origin_uses_scheme_and_host() {
        assert!(check(
            &["same-origin"],
            Some("https://gw.example.com"),
            true,
            "gw.example.com:443"
        )
        .is_ok());
        assert!(check(
            &["same-origin"],
            Some("http://127.0.0.1:8080"),
            false,
            "127.0.0.1:8080"
        )
        .is_ok());
        assert!(check(
            &["same-origin"],
            Some("http://127.0.0.1:8081"),
            false,
            "127.0.0.1:8080"
        )
        .is_err());
        assert!(check(
            &["same-origin"],
            Some("http://gw.example.com"),
            true,
            "gw.example.com"
        )
        .is_err());
    }

    #[test]
    fn null_only_when_listed_and_missing_origin_setting() {
        assert!(!ok(&["same-origin"], "null"));
        assert!(ok(&["null"], "null"));
        assert!(check(&["https://a.example.com"], None, true, "x").is_ok());
        let p = OriginPolicy::parse(&["same-origin".into()], false).unwrap();
        let r = Request::new("127.0.0.1".parse().unwrap(), "x");
        assert_eq!(p.check(&r).unwrap_err().reason, Reason::OriginMissing);
    }

    #[test]
    fn refusal_names_the_origin_and_the_nearest_entry() {
        let e = check(
            &["https://app.example.com", "http://localhost:3000"],
            Some("http://localhost:3001"),
            false,
            "127.0.0.1:8080",
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::OriginNotAllowed);
        assert!(
            e.detail.contains("\"http://localhost:3001\""),
            "{}",
            e.detail
        );
        assert!(
            e.detail
                .contains("nearest allowed entry: http://localhost:3000"),
            "{}",
            e.detail
        );
    }

    #[test]
    fn bad_entries_are_config_errors() {
        for bad in [
            "*",
            "https://*.com",
            "https://app.*.com",
            "app.example.com",
            "https://a.com/path",
            "https://*",
        ] {
            assert!(Entry::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Entry::parse("https://*.example.com:8443")
                .unwrap()
                .to_string(),
            "https://*.example.com:8443"
        );
    }
}
