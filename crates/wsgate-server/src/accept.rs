//! From an accepted TCP connection to its first request head: the PROXY header, the count of
//! handshakes in progress per address, TLS (and the client certificate), then hyper's HTTP/1.1
//! server, which hands each request to [`crate::handshake::handle`].

use crate::config::Explain;
use crate::server::{ListenerKey, Live, Shared};
use crate::{ids, response, tls};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use wsgate_handshake::Refusal;

/// One bound public listener.
pub(crate) struct Bound {
    /// How the configuration names it, found again in a reloaded configuration.
    pub key: ListenerKey,
    pub listener: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

/// Accepts connections on one listener until the server stops (or a reload removes it), each
/// in its own task, with the configuration in force when it was accepted.
pub(crate) async fn accept_loop(b: Bound, live: Arc<Live>, track: mpsc::Sender<()>) {
    let Bound { key, listener, tls } = b;
    loop {
        let (mut stream, tcp_peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = live.load();
        // A listener a reload removed is stopped by the server; until then it serves.
        let Some(index) = shared.listener_index(&key) else {
            continue;
        };
        let (explain, proxy_protocol) = match shared.config.listeners.get(index) {
            Some(l) => (l.explain, l.proxy_protocol),
            None => continue,
        };
        let track = track.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let timeout = shared.config.limits.handshake_timeout;
            let mut peer = tcp_peer;
            // Whether `peer` is the client itself (not a proxy in front of many clients).
            let mut stated = false;
            if proxy_protocol {
                match tokio::time::timeout(timeout, crate::proxyproto::read_header(&mut stream))
                    .await
                {
                    Ok(Ok(Some(src))) if shared.gate.global().is_trusted(tcp_peer.ip()) => {
                        peer = src;
                        stated = true;
                    }
                    Ok(Ok(Some(src))) => tracing::info!(
                        peer = %tcp_peer,
                        stated = %src,
                        "PROXY header from a peer not in firewall.trusted_proxies: ignored"
                    ),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::info!(peer = %tcp_peer, error = %e, "connection closed: no valid PROXY header");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(peer = %tcp_peer, "connection closed: no PROXY header in time");
                        return;
                    }
                }
            }
            // A trusted proxy's connections carry many clients, told apart only by the headers
            // still to come: they are not counted against one address.
            let pending = if !stated && shared.gate.global().is_trusted(tcp_peer.ip()) {
                None
            } else {
                match shared.in_progress.enter(peer.ip()) {
                    Ok(p) => Some(p),
                    Err(r) => {
                        refuse_early(&shared, &r, peer, explain, tls.is_none().then_some(&stream));
                        return;
                    }
                }
            };
            let pending = std::sync::Mutex::new(pending);
            let ctx = |client_cert| {
                Arc::new(ConnCtx {
                    shared: shared.clone(),
                    peer,
                    explain,
                    tls: tls.is_some(),
                    listener: index,
                    client_cert,
                    track,
                    pending,
                })
            };
            match &tls {
                None => serve_http(stream, ctx(None)).await,
                Some(acceptor) => {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let cert = s
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(tls::client_identity);
                            serve_http(s, ctx(cert)).await
                        }
                        // Failed TLS handshakes are refusals too (an untrusted client
                        // certificate, a client that speaks no TLS): operators must see them.
                        Ok(Err(e)) => {
                            shared.metrics.tls_failures.inc();
                            tracing::info!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            shared.metrics.tls_failures.inc();
                            tracing::info!(peer = %peer, "TLS handshake timed out")
                        }
                    }
                }
            }
        });
    }
}

/// Per-TCP-connection context for the request handler.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    pub explain: Explain,
    pub tls: bool,
    /// Which listener accepted the connection (routes' policies differ per listener).
    pub listener: usize,
    /// The verified client certificate, on mutual-TLS listeners.
    pub client_cert: Option<wsgate_admission::ClientCert>,
    /// Held while the connection (and any WebSocket it becomes) lives, for the drain.
    pub track: mpsc::Sender<()>,
    /// Counts this connection as a handshake in progress until its first request head arrives.
    pub pending: std::sync::Mutex<Option<wsgate_admission::limits::Pending>>,
}

/// Refuses a connection before any request head was read: counted, logged (within the storm
/// limit) and, on a plain listener, answered with the refusal as raw bytes; a TLS connection is
/// just closed, since answering would cost the handshake the limit protects.
fn refuse_early(
    shared: &Shared,
    refusal: &Refusal,
    peer: SocketAddr,
    explain: Explain,
    plain: Option<&TcpStream>,
) {
    let request_id = ids::request_id();
    shared.metrics.refused(refusal.reason);
    shared.console.refusal(
        refusal.reason,
        &request_id,
        peer,
        peer.ip(),
        None,
        "-",
        &refusal.detail,
    );
    if let Some(suppressed_before) =
        shared
            .log_limiter
            .admit(refusal.reason.code(), peer.ip(), "-", Instant::now())
    {
        tracing::info!(
            target: "wsgate::refusal",
            suppressed_before,
            request_id = %request_id,
            peer = %peer,
            client = %peer.ip(),
            code = refusal.reason.code(),
            status = refusal.reason.status(),
            detail = %refusal.detail,
            "connection refused before its handshake"
        );
    }
    if let Some(stream) = plain {
        // One small write into an empty socket buffer; whatever does not fit is dropped.
        let _ = stream.try_write(&response::raw_response(
            refusal.reason,
            &request_id,
            explain,
        ));
    }
}

async fn serve_http<I>(io: I, ctx: Arc<ConnCtx>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = ctx.shared.shutdown.clone();
    let handler = ctx.clone();
    let service = service_fn(move |req| crate::handshake::handle(req, handler.clone()));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.shared.config.limits.handshake_timeout)
        // Room past the configured head bound, so a head that passes it is still parsed and
        // refused with our code (431 handshake.head_too_large); only a head four times the bound
        // meets hyper's own bare 431.
        .max_buf_size((ctx.shared.config.limits.head.max_head * 4).max(64 * 1024))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %ctx.peer, error = %e, "HTTP connection ended with an error");
            }
        }
        _ = crate::out::stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
