//! One URL type for every endpoint wsgate connects to: a proxy route's upstream (`ws://`,
//! `wss://`), the external auth check (`http://`, `https://`) and the doctor's target. Parsed
//! once, by `http`'s URI parser, with the same defaults and refusals everywhere.

/// Which schemes an endpoint may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `ws://` or `wss://`.
    WebSocket,
    /// `http://` or `https://`.
    Http,
}

/// A parsed endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `wss://` or `https://`.
    pub tls: bool,
    /// Host name or address, without IPv6 brackets (for connecting and TLS names).
    pub host: String,
    /// Port, defaulted from the scheme (80 or 443).
    pub port: u16,
    /// The `Host` header value, as written in the URL.
    pub authority: String,
    /// Path and query for the request line (at least `/`).
    pub path_and_query: String,
}

impl Endpoint {
    /// Parses `url` as an endpoint of `family`; the error says what was expected.
    pub fn parse(url: &str, family: Family) -> Result<Endpoint, String> {
        let example = match family {
            Family::WebSocket => "ws://host[:port]/path or wss://…",
            Family::Http => "http://host[:port]/path or https://…",
        };
        let uri: http::Uri = url
            .trim()
            .parse()
            .map_err(|_| format!("{url:?} is not a URL; expected {example}"))?;
        let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
        let tls = match (family, scheme.as_deref()) {
            (Family::WebSocket, Some("ws")) | (Family::Http, Some("http")) => false,
            (Family::WebSocket, Some("wss")) | (Family::Http, Some("https")) => true,
            (Family::WebSocket, Some(s @ ("http" | "https"))) => {
                return Err(format!(
                    "{url:?}: a WebSocket URL starts with ws:// or wss://, not {s}://"
                ))
            }
            _ => return Err(format!("{url:?} must look like {example}")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host; expected {example}"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{url:?}: credentials in the URL are not supported (send them as headers)"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(format!("{url:?} has no host; expected {example}"));
        }
        let path_and_query = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") => "/".to_owned(),
            Some(p) if p.starts_with('?') => format!("/{p}"),
            Some(p) => p.to_owned(),
        };
        // What follows the host in the authority: nothing, or `:PORT` (http's own port parser
        // would turn an out-of-range port into "no port" and so into the default).
        let after_host = authority
            .as_str()
            .get(authority.host().len()..)
            .unwrap_or("");
        let port = match after_host.strip_prefix(':') {
            None | Some("") if tls => 443,
            None | Some("") => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{url:?}: the port must be a number from 1 to 65535"))?,
        };
        Ok(Endpoint {
            tls,
            host,
            port,
            authority: authority.as_str().to_owned(),
            path_and_query,
        })
    }

    /// The Origin of a page served from the same host and port (`https://host` for wss).
    pub fn own_origin(&self, https: bool) -> String {
        let scheme = if https { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_and_http_urls() {
        let e = Endpoint::parse("wss://example.com/chat?x=1", Family::WebSocket).unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.path_and_query.as_str()),
            (true, "example.com", 443, "/chat?x=1")
        );
        let e = Endpoint::parse("ws://[::1]:9000", Family::WebSocket).unwrap();
        assert_eq!(
            (
                e.host.as_str(),
                e.port,
                e.authority.as_str(),
                e.path_and_query.as_str()
            ),
            ("::1", 9000, "[::1]:9000", "/")
        );
        let e = Endpoint::parse("WS://h?q", Family::WebSocket).unwrap();
        assert_eq!((e.port, e.path_and_query.as_str()), (80, "/?q"));
        let e = Endpoint::parse("http://127.0.0.1:9000/check", Family::Http).unwrap();
        assert_eq!((e.tls, e.port), (false, 9000));
        assert_eq!(e.own_origin(true), "https://127.0.0.1:9000");
        for (bad, family, says) in [
            ("https://x/ws", Family::WebSocket, "not https://"),
            ("ftp://x/", Family::WebSocket, "must look like"),
            ("ws://x/", Family::Http, "must look like"),
            ("ws://u:p@x/", Family::WebSocket, "credentials"),
            ("example.com", Family::WebSocket, "must look like"),
            ("ws://x:99999/", Family::WebSocket, "1 to 65535"),
            ("ws://x:0/", Family::WebSocket, "1 to 65535"),
            ("", Family::Http, "not a URL"),
        ] {
            let e = Endpoint::parse(bad, family).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
