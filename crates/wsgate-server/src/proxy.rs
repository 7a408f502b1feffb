//! `proxy` routes: the upstream handshake is completed *before* the client gets its 101, so an
//! upstream that refuses or is down becomes a 502 with a reason, never a hang or a silent close.

use crate::config::Upstream;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use wsgate_handshake::{accept_key, Reason, Refusal, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL};

/// An upstream connection that has answered 101.
pub struct UpstreamConn {
    /// The upstream's connection, after its 101 (relayed verbatim, see `relay`).
    pub io: Upgraded,
    /// The subprotocol the upstream chose (always one the client offered).
    pub subprotocol: Option<String>,
    /// The upstream's permessage-deflate answer, given to the client as it is (always to an
    /// offer the client made).
    pub extensions: Option<String>,
}

/// What the client's handshake contributes to the upstream's.
pub struct Forward<'a> {
    /// Subprotocols the client offered, to offer upstream in the same order.
    pub subprotocols: &'a [String],
    /// The client's permessage-deflate offers, to make upstream (none: offer nothing).
    pub extensions: Option<String>,
    /// Headers copied from the client (the route's `forward_headers`).
    pub headers: HeaderMap,
    /// The client's address (as the firewall judged it), sent as `X-Forwarded-For`.
    pub client: std::net::IpAddr,
    /// Sent as `X-Request-Id`, so both sides' logs line up.
    pub request_id: &'a str,
}

fn unreachable(detail: String) -> Refusal {
    Refusal::new(Reason::UpstreamUnreachable, detail)
}
fn refused(detail: String) -> Refusal {
    Refusal::new(Reason::UpstreamRefused, detail)
}

/// Connects and performs the upstream handshake within the route's `connect_timeout`.
pub async fn connect(
    up: &Upstream,
    tls: Option<&TlsConnector>,
    fwd: Forward<'_>,
) -> Result<UpstreamConn, Refusal> {
    match timeout(up.connect_timeout, connect_inner(up, tls, fwd)).await {
        Ok(r) => r,
        Err(_) => Err(unreachable(format!(
            "upstream {} did not complete its handshake within {:?}",
            up.url, up.connect_timeout
        ))),
    }
}

async fn connect_inner(
    up: &Upstream,
    tls: Option<&TlsConnector>,
    fwd: Forward<'_>,
) -> Result<UpstreamConn, Refusal> {
    let tcp = TcpStream::connect((up.endpoint.host.as_str(), up.endpoint.port))
        .await
        .map_err(|e| unreachable(format!("cannot connect to upstream {}: {e}", up.url)))?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => handshake(up, tcp, fwd).await,
        Some(connector) => {
            let name =
                rustls_pki_types::ServerName::try_from(up.endpoint.host.clone()).map_err(|_| {
                    unreachable(format!(
                        "upstream host {:?} is not a valid TLS server name",
                        up.endpoint.host
                    ))
                })?;
            let stream = connector.connect(name, tcp).await.map_err(|e| {
                unreachable(format!(
                    "TLS handshake with upstream {} failed: {e}",
                    up.url
                ))
            })?;
            handshake(up, stream, fwd).await
        }
    }
}

async fn handshake<S>(up: &Upstream, io: S, fwd: Forward<'_>) -> Result<UpstreamConn, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|e| {
                unreachable(format!(
                    "HTTP handshake with upstream {} failed: {e}",
                    up.url
                ))
            })?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let key = crate::ids::websocket_key();
    let mut req = Request::get(up.endpoint.path_and_query.as_str())
        .header(header::HOST, up.endpoint.authority.as_str())
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_KEY, key.as_str())
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .body(Empty::new())
        .map_err(|e| unreachable(format!("cannot build the upstream request: {e}")))?;
    let h = req.headers_mut();
    for (name, value) in fwd.headers.iter() {
        h.append(name, value.clone());
    }
    if !fwd.subprotocols.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&fwd.subprotocols.join(", ")) {
            h.insert(SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    if let Some(v) = fwd
        .extensions
        .as_deref()
        .and_then(|e| HeaderValue::from_str(e).ok())
    {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
    }
    if let Ok(v) = HeaderValue::from_str(&fwd.client.to_string()) {
        h.insert("x-forwarded-for", v);
    }
    if let Ok(v) = HeaderValue::from_str(fwd.request_id) {
        h.insert("x-request-id", v);
    }
    let resp = sender.send_request(req).await.map_err(|e| {
        unreachable(format!(
            "upstream {} closed during the handshake: {e}",
            up.url
        ))
    })?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let their_code = resp
            .headers()
            .get(wsgate_reasons::REASON_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|c| format!(" (its reason: {c})"))
            .unwrap_or_default();
        return Err(refused(format!(
            "upstream {} answered {} instead of 101{their_code}",
            up.url,
            resp.status()
        )));
    }
    let expected = accept_key(key.as_bytes());
    if resp
        .headers()
        .get(SEC_WEBSOCKET_ACCEPT)
        .map(|v| v.as_bytes())
        != Some(expected.as_bytes())
    {
        return Err(refused(format!(
            "upstream {} answered 101 with a wrong Sec-WebSocket-Accept",
            up.url
        )));
    }
    let answers: Vec<&str> = resp
        .headers()
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let extensions = match (&fwd.extensions, answers.as_slice()) {
        (_, []) => None,
        (Some(offered), _) => {
            let answer = answers.join(", ");
            wsgate_handshake::deflate::check_answer(&answer, offered).map_err(|why| {
                refused(format!(
                    "upstream {} answered permessage-deflate wrongly: {why}",
                    up.url
                ))
            })?;
            Some(answer)
        }
        (None, _) => {
            return Err(refused(format!(
                "upstream {} negotiated an extension that was not offered",
                up.url
            )))
        }
    };
    let subprotocol = match resp
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .map(|v| v.to_str())
    {
        None => None,
        Some(Ok(p)) if fwd.subprotocols.iter().any(|o| o == p) => Some(p.to_owned()),
        Some(_) => {
            return Err(refused(format!(
                "upstream {} chose a subprotocol the client did not offer",
                up.url
            )))
        }
    };
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| unreachable(format!("upstream {} upgrade failed: {e}", up.url)))?;
    Ok(UpstreamConn {
        io: upgraded,
        subprotocol,
        extensions,
    })
}
