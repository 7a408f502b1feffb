//! Route patterns such as `/ws/chat/{room}`: literal segments and whole-segment parameters.
//! Below the configuration (which validates them) and the route table (which matches them).

/// A parsed route path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

impl Pattern {
    /// Parses a pattern; the error says what to write instead.
    pub fn parse(path: &str) -> Result<Pattern, String> {
        let rest = path
            .strip_prefix('/')
            .ok_or_else(|| format!("{path:?} must start with `/`"))?;
        if path.contains(['?', '#']) {
            return Err(format!("{path:?} must be a path only, without `?` or `#`"));
        }
        let mut segments = Vec::new();
        for seg in rest.split('/') {
            if seg.starts_with('{') && seg.ends_with('}') && seg.len() > 2 {
                let name = &seg[1..seg.len() - 1];
                if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(format!(
                        "parameter `{seg}` in {path:?} must be a name like `{{room}}`"
                    ));
                }
                segments.push(Segment::Param(name.to_owned()));
            } else if seg.contains(['{', '}']) {
                return Err(format!(
                    "segment {seg:?} in {path:?}: a parameter must be a whole segment, like `/ws/chat/{{room}}`"
                ));
            } else {
                segments.push(Segment::Literal(seg.to_owned()));
            }
        }
        Ok(Pattern { segments })
    }

    /// Whether `path` (without query) matches; parameters match one non-empty segment.
    pub fn matches(&self, path: &str) -> bool {
        self.captures(path).is_some()
    }

    /// The parameters of a matching path, e.g. `[("room", "lobby")]`.
    pub fn captures(&self, path: &str) -> Option<Vec<(String, String)>> {
        let rest = path.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let mut params = Vec::new();
        for seg in &self.segments {
            match (seg, parts.next()) {
                (Segment::Literal(l), Some(p)) if l == p => {}
                (Segment::Param(name), Some(p)) if !p.is_empty() => {
                    params.push((name.clone(), p.to_owned()))
                }
                _ => return None,
            }
        }
        parts.next().is_none().then_some(params)
    }

    /// Names of the pattern's parameters, for validating templates that use them.
    pub fn params(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) => Some(n.as_str()),
                Segment::Literal(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_parameter_segments() {
        let p = Pattern::parse("/ws/chat/{room}").unwrap();
        assert!(p.matches("/ws/chat/lobby"));
        assert!(!p.matches("/ws/chat/"));
        assert!(!p.matches("/ws/chat"));
        assert!(!p.matches("/ws/chat/lobby/x"));
        assert!(!p.matches("/ws/chats/lobby"));
        assert!(Pattern::parse("/ws/{room}x").is_err());
        assert!(Pattern::parse("/ws/x{room}").is_err());
        assert!(Pattern::parse("ws").is_err());
        assert!(Pattern::parse("/ws?x").is_err());
        let root = Pattern::parse("/").unwrap();
        assert!(root.matches("/") && !root.matches("/a"));
        assert!(Pattern::parse("/ws/echo").unwrap().matches("/ws/echo"));
        let two = Pattern::parse("/t/{org}/r/{room}").unwrap();
        assert_eq!(
            two.captures("/t/acme/r/lobby").unwrap(),
            vec![
                ("org".to_owned(), "acme".to_owned()),
                ("room".to_owned(), "lobby".to_owned())
            ]
        );
        assert_eq!(two.params(), ["org", "room"]);
        assert!(!Pattern::parse("/ws/echo").unwrap().matches("/ws/echo/"));
    }
}
