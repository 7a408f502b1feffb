//! WebSockets over HTTP/2 (RFC 8441), which browsers use when a `wss://` server offers `h2` in
//! ALPN and advertises `SETTINGS_ENABLE_CONNECT_PROTOCOL`: then they send an extended CONNECT
//! (`:protocol = websocket`) instead of an HTTP/1.1 Upgrade. A proxy that advertises it but cannot
//! pass the CONNECT on (a known failure of lighttpd, Jetty, Go's reverse proxy and some HAProxy
//! set-ups) breaks browsers while every HTTP/1.1 client works; this probe finds that out with one
//! connection and one request.

use crate::probe::{Request, Target};
use crate::tls::Tls;
use crate::{Options, TokenVia};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// What the HTTP/2 probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H2 {
    /// The server did not choose `h2` in ALPN: browsers use HTTP/1.1 here.
    NotOffered,
    /// `h2`, but without `SETTINGS_ENABLE_CONNECT_PROTOCOL`: browsers fall back to HTTP/1.1.
    NoExtendedConnect,
    /// The extended CONNECT was answered with this status (200 opens the WebSocket).
    Answered(u16),
    /// The extended CONNECT was reset or the connection failed.
    Broken(String),
    /// The probe itself could not run (no connection, TLS failed): nothing to say about HTTP/2.
    Unknown(String),
}

impl H2 {
    /// Whether browsers would fail where HTTP/1.1 clients do not.
    pub fn breaks_browsers(&self) -> bool {
        matches!(self, H2::Broken(_)) || matches!(self, H2::Answered(s) if *s != 200)
    }

    /// One line for the report's step.
    pub fn describe(&self) -> String {
        match self {
            H2::NotOffered => "HTTP/2 not offered in ALPN: browsers open WebSockets over HTTP/1.1 here".into(),
            H2::NoExtendedConnect => "HTTP/2 offered without SETTINGS_ENABLE_CONNECT_PROTOCOL: browsers open WebSockets over HTTP/1.1 here".into(),
            H2::Answered(200) => "HTTP/2 with SETTINGS_ENABLE_CONNECT_PROTOCOL; an extended CONNECT (:protocol websocket) got 200: browsers' RFC 8441 WebSockets work".into(),
            H2::Answered(s) => format!("HTTP/2 with SETTINGS_ENABLE_CONNECT_PROTOCOL, but the extended CONNECT (:protocol websocket) got {s}: browsers, which use it, fail"),
            H2::Broken(e) => format!("HTTP/2 with SETTINGS_ENABLE_CONNECT_PROTOCOL, but the extended CONNECT (:protocol websocket) failed: {e}"),
            H2::Unknown(e) => format!("HTTP/2 not checked: {e}"),
        }
    }
}

/// Connects to `addr` with ALPN `h2, http/1.1` and, when the server speaks HTTP/2 with extended
/// CONNECT, sends one for the URL with the request's Origin, credential and subprotocols.
pub async fn probe(
    opts: &Options,
    target: &Target,
    tls: &Tls,
    addr: SocketAddr,
    req: &Request,
) -> H2 {
    let t = opts.timeout;
    let Ok(name) = rustls_pki_types::ServerName::try_from(target.host.clone()) else {
        return H2::Unknown("not a TLS server name".into());
    };
    let tcp = match timeout(t, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return H2::Unknown(format!("connecting: {e}")),
        Err(_) => return H2::Unknown("connecting timed out".into()),
    };
    let (config, _) = tls.config(true);
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let io = match timeout(
        t,
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return H2::Unknown(format!("TLS: {e}")),
        Err(_) => return H2::Unknown("TLS timed out".into()),
    };
    if io.get_ref().1.alpn_protocol() != Some(b"h2") {
        return H2::NotOffered;
    }
    match timeout(t, extended_connect(io, target, req, t)).await {
        Ok(r) => r,
        Err(_) => H2::Broken(format!("no answer within {t:?}")),
    }
}

async fn extended_connect<IO>(io: IO, target: &Target, req: &Request, t: Duration) -> H2
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn) = match h2::client::handshake(io).await {
        Ok(pair) => pair,
        Err(e) => return H2::Broken(format!("HTTP/2 handshake: {e}")),
    };
    // The server's SETTINGS come before its answer to our PING: once the PONG is back, the
    // settings are known.
    let ping = conn.ping_pong();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let outcome = async {
        if let Some(mut p) = ping {
            if let Err(e) = timeout(t, p.ping(h2::Ping::opaque()))
                .await
                .unwrap_or_else(|_| Err(h2::Error::from(h2::Reason::SETTINGS_TIMEOUT)))
            {
                return H2::Broken(format!("HTTP/2 PING: {e}"));
            }
        }
        let mut send = match send.ready().await {
            Ok(s) => s,
            Err(e) => return H2::Broken(format!("HTTP/2: {e}")),
        };
        if !send.is_extended_connect_protocol_enabled() {
            return H2::NoExtendedConnect;
        }
        let request = match connect_request(target, req) {
            Ok(r) => r,
            Err(e) => return H2::Unknown(e),
        };
        let (response, _stream) = match send.send_request(request, false) {
            Ok(pair) => pair,
            Err(e) => return H2::Broken(format!("sending the extended CONNECT: {e}")),
        };
        match response.await {
            Ok(r) => H2::Answered(r.status().as_u16()),
            Err(e) => H2::Broken(match e.reason() {
                Some(reason) => format!("the stream was reset ({reason:?})"),
                None => e.to_string(),
            }),
        }
    }
    .await;
    driver.abort();
    outcome
}

/// The extended CONNECT of RFC 8441 §4 for the URL, with what the HTTP/1.1 request carried.
fn connect_request(target: &Target, req: &Request) -> Result<http::Request<()>, String> {
    let mut path = target.path_and_query.clone();
    let mut protocols = req.subprotocols.clone();
    let mut b = http::Request::builder()
        .method(http::Method::CONNECT)
        .header("sec-websocket-version", "13")
        .header("user-agent", "wsgate-doctor");
    if let Some((token, via)) = &req.token {
        match via {
            TokenVia::Header => b = b.header("authorization", format!("Bearer {token}")),
            TokenVia::Query(n) => {
                path.push(if path.contains('?') { '&' } else { '?' });
                path.push_str(&format!("{n}={token}"));
            }
            TokenVia::Cookie(n) => b = b.header("cookie", format!("{n}={token}")),
            TokenVia::Subprotocol(p) => protocols.push(format!("{p}{token}")),
        }
    }
    if let Some(o) = &req.origin {
        b = b.header("origin", o.as_str());
    }
    if !protocols.is_empty() {
        b = b.header("sec-websocket-protocol", protocols.join(", "));
    }
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let uri = format!("https://{}{path}", target.authority);
    let mut r = b
        .uri(uri)
        .body(())
        .map_err(|e| format!("cannot build the CONNECT: {e}"))?;
    r.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    Ok(r)
}
