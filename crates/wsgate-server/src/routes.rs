//! Route patterns such as `/ws/chat/{room}`: literal segments and whole-segment parameters.

use crate::config::Route;

/// A parsed route path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
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
                segments.push(Segment::Param);
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
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        for seg in &self.segments {
            match (seg, parts.next()) {
                (Segment::Literal(l), Some(p)) if l == p => {}
                (Segment::Param, Some(p)) if !p.is_empty() => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

/// The routes of a configuration, ready for lookup.
#[derive(Debug)]
pub struct Router {
    routes: Vec<(Pattern, Route)>,
}

impl Router {
    /// Builds the table; patterns were validated with the configuration.
    pub fn new(routes: &[Route]) -> Result<Router, String> {
        let routes = routes
            .iter()
            .map(|r| Ok((Pattern::parse(&r.path)?, r.clone())))
            .collect::<Result<_, String>>()?;
        Ok(Router { routes })
    }

    /// The first route, in configuration order, whose pattern matches `path`.
    pub fn find(&self, path: &str) -> Option<(usize, &Route)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, (p, _))| p.matches(path))
            .map(|(i, (_, r))| (i, r))
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
        assert!(!Pattern::parse("/ws/echo").unwrap().matches("/ws/echo/"));
    }
}
