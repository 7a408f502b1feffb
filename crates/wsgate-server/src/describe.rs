//! A route's effective policy in words, gate by gate in the order the gates run: `wsgate check`
//! prints it and the admin page shows it, so both say the same thing.

use wsgate_admission::firewall::Cidr;
use wsgate_admission::Policy;

/// The policy's gates that do something, as (gate, what it does), in the order they run.
pub fn policy(p: &Policy) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let show = |v: &[Cidr]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    for (name, rules) in [
        ("listener firewall", &p.listener_firewall),
        ("firewall", &p.firewall),
    ] {
        if !rules.is_empty() {
            out.push((
                name,
                format!(
                    "allow {:?} deny {:?}",
                    show(&rules.allow),
                    show(&rules.deny)
                ),
            ));
        }
    }
    if p.client_cert_required {
        out.push((
            "tls identity",
            "a client certificate is required (tls.client_cert_required)".into(),
        ));
    }
    if !p.host.allow.is_empty() {
        out.push(("host", format!("{:?}", p.host.allow)));
    }
    let origins: Vec<String> = p.origin.allow.iter().map(|e| e.to_string()).collect();
    let missing = if p.origin.allow_missing {
        "admitted"
    } else {
        "refused (origin.missing)"
    };
    out.push((
        "origin",
        format!("allow {origins:?}; without Origin: {missing}"),
    ));
    match (&p.auth, &p.external) {
        (_, Some(x)) => out.push((
            "auth",
            format!(
                "external check {} (timeout {:?}, cache {:?})",
                x.url, x.timeout, x.cache_ttl
            ),
        )),
        (None, None) => out.push(("auth", "none (anonymous clients admitted)".into())),
        (Some(a), None) => {
            let sources: Vec<String> = a.sources.iter().map(|s| s.to_string()).collect();
            let keys: Vec<&str> = a.api_keys.iter().map(|k| k.name.as_str()).collect();
            let users: Vec<&str> = a.basic_users.iter().map(|u| u.name.as_str()).collect();
            out.push((
                "auth",
                format!(
                    "sources {sources:?} in that order; api keys {keys:?}; basic users {users:?}; jwt issuers {}",
                    a.jwt.len()
                ),
            ));
            for r in a.jwt.iter().filter_map(|j| j.remote.as_ref()) {
                out.push((
                    "jwks",
                    format!(
                        "keys fetched from {}{} (refreshed on its cache headers)",
                        r.url,
                        if r.discovery {
                            ", the OpenID discovery document"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
    }
    let z = &p.authz;
    if !z.is_empty() {
        let claims: Vec<String> = z.claims.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut text = format!("claims {claims:?} scopes {:?}", z.scopes);
        if let Some(c) = &z.channel {
            text.push_str(&format!(
                " channel {:?} must match a pattern in claim {:?}",
                c.template, c.claim
            ));
        }
        if !z.cert_subjects.is_empty() || !z.cert_sans.is_empty() {
            text.push_str(&format!(
                " certificate subject {:?} SAN {:?}",
                z.cert_subjects, z.cert_sans
            ));
        }
        out.push(("authz", text));
    }
    out
}
