//! The authorization gate: the client is known ("who are you?" was answered by the
//! authentication gate); may it use *this* route? 403 `authz.forbidden` names the rule that failed.

use crate::auth::Identity;
use crate::{ClientCert, Reason, Refusal};
use serde_json::Value;

/// Rules over the identity; all must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthzPolicy {
    /// Claims that must have a value (or, for an array claim, contain it). Dotted names reach
    /// into objects: `realm_access.roles`.
    pub claims: Vec<(String, Value)>,
    /// Scopes the identity must hold (API-key `scopes`, or the JWT `scope`/`scp` claim).
    pub scopes: Vec<String>,
    /// A channel name built from route parameters (`chat:{room}`) that must match one of the
    /// glob patterns in the named claim (`rooms: ["chat:*"]`).
    pub channel: Option<ChannelRule>,
    /// Globs one of which the client certificate's subject must match.
    pub cert_subjects: Vec<String>,
    /// Globs one of which some subject alternative name of the client certificate must match.
    pub cert_sans: Vec<String>,
}

/// Channel access from a claim of patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRule {
    /// Template with `{param}` placeholders from the route path.
    pub template: String,
    /// The claim holding the allowed patterns (`*` matches any run of characters).
    pub claim: String,
}

impl AuthzPolicy {
    /// Whether any rule is configured.
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
            && self.scopes.is_empty()
            && self.channel.is_none()
            && self.cert_subjects.is_empty()
            && self.cert_sans.is_empty()
    }

    /// The authorization check; `params` are the route's path parameters.
    pub fn check(
        &self,
        id: Option<&Identity>,
        cert: Option<&ClientCert>,
        params: &[(String, String)],
    ) -> Result<(), Refusal> {
        if self.is_empty() {
            return Ok(());
        }
        let who = id.map(|i| i.name.as_str()).unwrap_or("-");
        let forbidden = |d: String| {
            Err(Refusal::new(
                Reason::AuthzForbidden,
                format!("identity {who:?}: {d}"),
            ))
        };
        if !self.cert_subjects.is_empty() {
            let subject = cert.map(|c| c.subject.as_str()).unwrap_or("");
            if !self.cert_subjects.iter().any(|g| glob(g, subject)) {
                return forbidden(format!(
                    "rule cert_subjects: certificate subject {subject:?} matches none of {:?}",
                    self.cert_subjects
                ));
            }
        }
        if !self.cert_sans.is_empty() {
            let sans = cert.map(|c| c.sans.as_slice()).unwrap_or(&[]);
            if !sans
                .iter()
                .any(|s| self.cert_sans.iter().any(|g| glob(g, s)))
            {
                return forbidden(format!(
                    "rule cert_sans: certificate names {sans:?} match none of {:?}",
                    self.cert_sans
                ));
            }
        }
        if self.claims.is_empty() && self.scopes.is_empty() && self.channel.is_none() {
            return Ok(());
        }
        let Some(id) = id else {
            return forbidden(
                "claim, scope and channel rules need an authenticated identity".into(),
            );
        };
        for (name, want) in &self.claims {
            let ok = match claim(id, name) {
                Some(Value::Array(items)) => items.contains(want),
                Some(v) => v == want,
                None => false,
            };
            if !ok {
                return forbidden(format!("rule require_claims.{name} = {want} does not hold"));
            }
        }
        let held = scopes(id);
        for s in &self.scopes {
            if !held.contains(s) {
                return forbidden(format!(
                    "rule require_scopes: scope {s:?} is missing (holds {held:?})"
                ));
            }
        }
        if let Some(rule) = &self.channel {
            let channel = expand(&rule.template, params);
            let patterns: Vec<String> = match claim(id, &rule.claim) {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
                _ => Vec::new(),
            };
            if !patterns.iter().any(|p| glob(p, &channel)) {
                return forbidden(format!(
                    "rule channel: {channel:?} matches none of the patterns in claim {:?} ({patterns:?})",
                    rule.claim
                ));
            }
        }
        Ok(())
    }
}

fn claim<'a>(id: &'a Identity, dotted: &str) -> Option<&'a Value> {
    let mut v = id.claims.as_ref()?;
    for part in dotted.split('.') {
        v = v.get(part)?;
    }
    Some(v)
}

fn scopes(id: &Identity) -> Vec<String> {
    let mut out = id.scopes.clone();
    if let Some(Value::String(s)) = claim(id, "scope") {
        out.extend(s.split_whitespace().map(str::to_owned));
    }
    if let Some(Value::Array(a)) = claim(id, "scp") {
        out.extend(a.iter().filter_map(|v| v.as_str().map(str::to_owned)));
    }
    out
}

/// Fills `{name}` placeholders from route parameters.
pub fn expand(template: &str, params: &[(String, String)]) -> String {
    let mut out = template.to_owned();
    for (k, v) in params {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// `*` matches any run of characters (also empty); everything else is literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(claims: Value, scopes: &[&str]) -> Identity {
        Identity {
            name: "alice".into(),
            source: "bearer".into(),
            claims: Some(claims),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn room(r: &str) -> Vec<(String, String)> {
        vec![("room".into(), r.into())]
    }

    #[test]
    fn globs() {
        assert!(glob("chat:*", "chat:lobby"));
        assert!(glob("*", "anything"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("chat:*", "chats:lobby"));
        assert!(!glob("chat:lobby", "chat:lobby2"));
        assert!(!glob("a*a", "a"));
    }

    #[test]
    fn channel_patterns_from_a_claim() {
        let p = AuthzPolicy {
            channel: Some(ChannelRule {
                template: "chat:{room}".into(),
                claim: "rooms".into(),
            }),
            ..Default::default()
        };
        let check = |id: &Identity, params: &[(String, String)]| p.check(Some(id), None, params);
        let alice = id(json!({"rooms": ["chat:*"]}), &[]);
        assert!(check(&alice, &room("lobby")).is_ok());
        let bob = id(json!({"rooms": ["chat:team-*"]}), &[]);
        assert!(check(&bob, &room("team-a")).is_ok());
        let e = check(&bob, &room("lobby")).unwrap_err();
        assert_eq!(e.reason, Reason::AuthzForbidden);
        assert!(
            e.detail.contains("chat:lobby") && e.detail.contains("rooms"),
            "{}",
            e.detail
        );
        assert!(check(&id(json!({}), &[]), &room("lobby")).is_err());
        assert!(
            p.check(None, None, &room("lobby")).is_err(),
            "no identity, no channel"
        );
    }

    #[test]
    fn claims_and_scopes() {
        let policy = AuthzPolicy {
            claims: vec![
                ("role".into(), json!("member")),
                ("org.id".into(), json!(7)),
            ],
            scopes: vec!["chat:write".into()],
            ..Default::default()
        };
        let p = |i: &Identity| policy.check(Some(i), None, &[]);
        let ok = id(
            json!({"role": ["member", "x"], "org": {"id": 7}, "scope": "chat:read chat:write"}),
            &[],
        );
        assert!(p(&ok).is_ok());
        let key = id(json!({"role": "member", "org": {"id": 7}}), &["chat:write"]);
        assert!(p(&key).is_ok(), "API-key scopes count");
        let e = p(&id(
            json!({"role": "guest", "org": {"id": 7}}),
            &["chat:write"],
        ))
        .unwrap_err();
        assert!(e.detail.contains("require_claims.role"));
        let e = p(&id(json!({"role": "member", "org": {"id": 7}}), &[])).unwrap_err();
        assert!(e.detail.contains("require_scopes"));
    }

    #[test]
    fn certificate_subject_and_san_rules() {
        let p = AuthzPolicy {
            cert_subjects: vec!["CN=*, O=Example".into()],
            cert_sans: vec!["*.clients.example".into()],
            ..Default::default()
        };
        let cert = ClientCert {
            subject: "CN=alice, O=Example".into(),
            sans: vec!["alice.clients.example".into()],
        };
        assert!(p.check(None, Some(&cert), &[]).is_ok());
        let other = ClientCert {
            sans: vec!["alice.clients.example.evil".into()],
            ..cert.clone()
        };
        assert!(p
            .check(None, Some(&other), &[])
            .unwrap_err()
            .detail
            .contains("cert_sans"));
        assert!(p
            .check(None, None, &[])
            .unwrap_err()
            .detail
            .contains("cert_subjects"));
    }
}
