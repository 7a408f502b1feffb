//! The HTTP call of the external check (see `wsgate_admission::external` for what it carries and
//! how its answer is read). One connection per check; decisions are cached by the caller.

use crate::config::HttpTarget;
use bytes::Bytes;
use http::{header, HeaderMap, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use wsgate_admission::auth::Identity;
use wsgate_admission::external::{interpret, unavailable, ExternalPolicy};
use wsgate_handshake::Refusal;

/// Asks the check service about a handshake; every failure to get an answer is `auth.unavailable`.
pub async fn call(
    policy: &ExternalPolicy,
    target: &HttpTarget,
    headers: HeaderMap,
    tls: Option<&TlsConnector>,
) -> Result<Identity, Refusal> {
    match tokio::time::timeout(policy.timeout, ask(policy, target, headers, tls)).await {
        Ok(r) => r,
        Err(_) => Err(unavailable(
            policy,
            format!("did not answer within {:?}", policy.timeout),
        )),
    }
}

async fn ask(
    policy: &ExternalPolicy,
    target: &HttpTarget,
    headers: HeaderMap,
    tls: Option<&TlsConnector>,
) -> Result<Identity, Refusal> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| unavailable(policy, format!("cannot be reached: {e}")))?;
    match (target.tls, tls) {
        (true, Some(connector)) => {
            let name =
                rustls_pki_types::ServerName::try_from(target.host.clone()).map_err(|_| {
                    unavailable(policy, "has a host name that is not valid for TLS".into())
                })?;
            let s = connector
                .connect(name, tcp)
                .await
                .map_err(|e| unavailable(policy, format!("failed the TLS handshake: {e}")))?;
            send(policy, target, headers, s).await
        }
        _ => send(policy, target, headers, tcp).await,
    }
}

async fn send<S>(
    policy: &ExternalPolicy,
    target: &HttpTarget,
    headers: HeaderMap,
    io: S,
) -> Result<Identity, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|e| unavailable(policy, format!("failed the HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::get(target.path_and_query.as_str())
        .header(header::HOST, target.authority.as_str())
        .body(Empty::new())
        .map_err(|e| unavailable(policy, format!("request could not be built: {e}")))?;
    req.headers_mut().extend(headers);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unavailable(policy, format!("closed the connection: {e}")))?;
    interpret(policy, resp.status(), resp.headers())
}
