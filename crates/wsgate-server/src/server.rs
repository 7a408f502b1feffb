//! Listeners, the per-request handshake decision, the admin listener and graceful shutdown.

use crate::config::{Config, Explain, RouteKind};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::refusal::{self, Body, Context};
use crate::routes::Router;
use crate::stream::Stream;
use crate::ws::{self, Local};
use crate::{ids, proxy, relay, tls};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use wsgate_handshake::{
    select_subprotocol, Reason, Refusal, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL,
};
use wsgate_reasons::REQUEST_ID_HEADER;

/// A start-up failure: the message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration (including TLS files) is wrong.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// An address could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}; is another process using it? Pick another port in the configuration")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// State shared by every connection.
struct Shared {
    config: Config,
    router: Router,
    metrics: Arc<Metrics>,
    hub: Arc<Hub>,
    open: AtomicUsize,
    draining: AtomicBool,
    next_conn: AtomicU64,
    global: wsgate_admission::Global,
    limits: Arc<wsgate_admission::limits::Limits>,
    /// Connections per address still before their first request head.
    in_progress: Arc<wsgate_admission::limits::InProgress>,
    log_limiter: refusal::LogLimiter,
    external_cache: wsgate_admission::external::DecisionCache,
    external_tls: Option<TlsConnector>,
    shutdown: watch::Receiver<bool>,
    upstream_tls: Vec<Option<TlsConnector>>,
    /// The limits every admitted connection runs with (one copy, shared).
    conn_limits: Arc<ws::Limits>,
}

/// One bound public listener.
struct Bound {
    index: usize,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    explain: Explain,
    proxy_protocol: bool,
}

/// A bound, ready-to-run server.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Bound>,
    admin: Option<TcpListener>,
    shutdown_tx: watch::Sender<bool>,
    reloaders: Vec<(usize, Arc<tls::CertReloader>)>,
}

/// What a listener turned out to be bound to, for the start-up banner.
#[derive(Debug, Clone)]
pub struct BoundListener {
    /// The real address (port 0 resolved).
    pub address: SocketAddr,
    /// Whether it terminates TLS (`wss://`).
    pub tls: bool,
}

/// Checks everything `serve` would check before binding (configuration, TLS files, upstream CAs).
pub fn preflight(
    config: &Config,
) -> Result<Vec<Option<tls::CertInfo>>, crate::config::ConfigError> {
    let mut infos = Vec::new();
    for l in &config.listeners {
        infos.push(match &l.tls {
            Some(t) => Some(tls::server_config(t, &config.source)?.2),
            None => None,
        });
    }
    upstream_connectors(config)?;
    Ok(infos)
}

fn upstream_connectors(
    config: &Config,
) -> Result<Vec<Option<TlsConnector>>, crate::config::ConfigError> {
    config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| match &r.upstream {
            Some(u) if u.endpoint.tls => tls::client_config(u.ca_file.as_deref())
                .map(|c| Some(TlsConnector::from(c)))
                .map_err(|message| crate::config::ConfigError {
                    file: config.source.clone(),
                    key: format!("route[{i}].upstream_ca"),
                    message,
                }),
            _ => Ok(None),
        })
        .collect()
}

impl Server {
    /// Validates TLS material and binds every listener; nothing is served yet.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let metrics = Arc::new(Metrics::new());
        let mut listeners = Vec::new();
        let mut reloaders = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let tls = match &l.tls {
                Some(t) => {
                    let (server_config, reloader, info) = tls::server_config(t, &config.source)?;
                    reloaders.push((i, reloader));
                    if info.expires_soon {
                        tracing::warn!(
                            listener = %l.address,
                            subject = %info.subject,
                            expires = %tls::iso_date(info.not_after),
                            "TLS certificate expires within 14 days: renew it"
                        );
                    }
                    metrics.set_cert_not_after(format!("listener[{i}]"), info.not_after);
                    Some(TlsAcceptor::from(server_config))
                }
                None => None,
            };
            let listener =
                TcpListener::bind(l.address)
                    .await
                    .map_err(|source| StartError::Bind {
                        addr: l.address,
                        what: format!("listener[{i}]"),
                        source,
                    })?;
            listeners.push(Bound {
                index: i,
                listener,
                tls,
                explain: l.explain,
                proxy_protocol: l.proxy_protocol,
            });
        }
        let admin = match config.admin {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            addr,
                            what: "admin".into(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        let router = Router::new(&config.routes);
        let upstream_tls = upstream_connectors(&config)?;
        let conn_limits = Arc::new(ws::Limits {
            max_message: config.limits.max_message_bytes,
            max_frame: config.limits.max_frame_bytes,
            ping_interval: config.limits.ping_interval,
            idle_timeout: config.limits.idle_timeout,
            max_output: config.limits.max_output_bytes,
            send_timeout: config.limits.send_timeout,
        });
        let (shutdown_tx, shutdown) = watch::channel(false);
        let global = wsgate_admission::Global {
            firewall: config.firewall.rules.clone(),
            trusted_proxies: config.firewall.trusted_proxies.clone(),
            client_header: config.firewall.client_address_header,
            bans: config
                .firewall
                .ban
                .map(wsgate_admission::firewall::Bans::new),
        };
        let limits = wsgate_admission::limits::Limits::new(config.limits.clients);
        let in_progress =
            wsgate_admission::limits::InProgress::new(config.limits.max_handshakes_per_client);
        let external_tls = if config.routes.iter().any(|r| {
            r.policies
                .iter()
                .any(|p| p.external.as_ref().is_some_and(|t| t.tls))
        }) {
            let c = tls::client_config(None).map_err(|message| crate::config::ConfigError {
                file: config.source.clone(),
                key: "route".into(),
                message,
            })?;
            Some(TlsConnector::from(c))
        } else {
            None
        };
        let log_limiter =
            refusal::LogLimiter::new(config.logging.refusal_burst, config.logging.refusal_window);
        Ok(Server {
            shared: Arc::new(Shared {
                config,
                router,
                metrics,
                hub: Arc::new(Hub::default()),
                open: AtomicUsize::new(0),
                draining: AtomicBool::new(false),
                next_conn: AtomicU64::new(1),
                global,
                limits,
                in_progress,
                log_limiter,
                external_cache: Default::default(),
                external_tls,
                shutdown,
                upstream_tls,
                conn_limits,
            }),
            listeners,
            admin,
            shutdown_tx,
            reloaders,
        })
    }

    /// The public listeners' real addresses.
    pub fn listeners(&self) -> Vec<BoundListener> {
        self.listeners
            .iter()
            .filter_map(|b| {
                b.listener.local_addr().ok().map(|address| BoundListener {
                    address,
                    tls: b.tls.is_some(),
                })
            })
            .collect()
    }

    /// The admin listener's real address.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Serves until `stop` completes, then drains: refuse new handshakes, send close 1001 to every
    /// connection, and wait up to `limits.drain_timeout` for them to finish.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let (track_tx, mut track_rx) = mpsc::channel::<()>(1);
        let mut accept_tasks = Vec::new();
        for b in self.listeners {
            let shared = self.shared.clone();
            let track = track_tx.clone();
            accept_tasks.push(tokio::spawn(accept_loop(b, shared, track)));
        }
        if let Some(admin) = self.admin {
            accept_tasks.push(tokio::spawn(admin_loop(admin, self.shared.clone())));
        }
        if !self.reloaders.is_empty() {
            accept_tasks.push(tokio::spawn(reload_loop(
                self.reloaders,
                self.shared.clone(),
            )));
        }
        stop.await;
        let drain = self.shared.config.limits.drain_timeout;
        tracing::info!(
            open = self.shared.open.load(Ordering::Relaxed),
            drain_timeout = ?drain,
            "shutting down: refusing new handshakes and closing connections with 1001"
        );
        self.shared.draining.store(true, Ordering::SeqCst);
        for t in &accept_tasks {
            t.abort();
        }
        let _ = self.shutdown_tx.send(true);
        drop(track_tx);
        match tokio::time::timeout(drain, track_rx.recv()).await {
            Ok(_) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                open = self.shared.open.load(Ordering::Relaxed),
                "drain timeout reached; dropping the remaining connections"
            ),
        }
    }
}

async fn accept_loop(b: Bound, shared: Arc<Shared>, track: mpsc::Sender<()>) {
    let Bound {
        index,
        listener,
        tls,
        explain,
        proxy_protocol,
    } = b;
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
        let shared = shared.clone();
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
                    Ok(Ok(Some(src))) if shared.global.is_trusted(tcp_peer.ip()) => {
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
            let pending = if !stated && shared.global.is_trusted(tcp_peer.ip()) {
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
struct ConnCtx {
    shared: Arc<Shared>,
    peer: SocketAddr,
    explain: Explain,
    tls: bool,
    /// Which listener accepted the connection (routes' policies differ per listener).
    listener: usize,
    /// The verified client certificate, on mutual-TLS listeners.
    client_cert: Option<wsgate_admission::ClientCert>,
    /// Held while the connection (and any WebSocket it becomes) lives, for the drain.
    track: mpsc::Sender<()>,
    /// Counts this connection as a handshake in progress until its first request head arrives.
    pending: std::sync::Mutex<Option<wsgate_admission::limits::Pending>>,
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
        let _ = stream.try_write(&refusal::raw_response(refusal.reason, &request_id, explain));
    }
}

async fn serve_http<I>(io: I, ctx: Arc<ConnCtx>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = ctx.shared.shutdown.clone();
    let handler = ctx.clone();
    let service = service_fn(move |req| handle(req, handler.clone()));
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

/// What an admitted connection becomes once upgraded.
enum Work {
    Local(Box<ws::Params>),
    Proxy(Box<ProxyWork>),
    Nothing,
}

/// A `proxy` route's connection: the upstream is already connected.
struct ProxyWork {
    up: proxy::UpstreamConn,
    limits: relay::RelayLimits,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: watch::Receiver<bool>,
}

/// What the closing log line of a connection names.
struct About {
    peer: SocketAddr,
    request_id: String,
    route: String,
}

/// Counts an open WebSocket connection for as long as it lives.
struct Slot(Arc<Shared>);

impl Slot {
    fn acquire(shared: &Arc<Shared>) -> Option<Slot> {
        let max = shared.config.limits.max_connections;
        let prev = shared.open.fetch_add(1, Ordering::SeqCst);
        if prev >= max {
            shared.open.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        shared.metrics.connections_open.inc();
        Some(Slot(shared.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.connections_open.dec();
    }
}

async fn handle(
    mut req: Request<Incoming>,
    ctx: Arc<ConnCtx>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    // The request head has arrived: this connection no longer counts as a handshake in progress.
    drop(ctx.pending.lock().unwrap_or_else(|p| p.into_inner()).take());
    let shared = &ctx.shared;
    let request_id = ids::request_id();
    let path = req.uri().path().to_owned();
    let route_match = shared.router.find(&path);
    let client = shared.global.client(ctx.peer.ip(), req.headers());
    let limited = |event| {
        shared
            .log_limiter
            .admit(event, ctx.peer.ip(), "-", Instant::now())
            .is_some()
    };
    if client.ignored_headers && limited("forwarding_headers_ignored") {
        tracing::info!(
            request_id = %request_id,
            peer = %ctx.peer,
            "Forwarded/X-Forwarded-For from a peer that is not in firewall.trusted_proxies: ignored"
        );
    }
    let refuse = |refusal: Refusal| {
        let route = route_match.as_ref().map(|m| m.route.path.as_str());
        refuse_with(&refusal, &ctx, &request_id, client.ip, route, &path)
    };

    if shared.draining.load(Ordering::SeqCst) {
        return Ok(refuse(Refusal::new(
            Reason::ServerDraining,
            "the server is draining for shutdown",
        )));
    }
    // Framing first: a head too large, a body or two hosts is refused before any gate reads it.
    if let Err(r) = wsgate_handshake::check_framing(
        req.method(),
        req.uri(),
        req.headers(),
        shared.config.limits.head,
    ) {
        return Ok(refuse(r));
    }
    if let Err(r) = shared.global.check(client.ip, Instant::now()) {
        return Ok(refuse(r));
    }
    let Some((route_idx, route, params)) = route_match
        .as_ref()
        .map(|m| (m.index, m.route, m.params.as_slice()))
    else {
        return Ok(refuse(Refusal::new(
            Reason::RouteNotFound,
            format!("no route matches the path {path:?}"),
        )));
    };
    let hs = match wsgate_handshake::validate(req.method(), req.version(), req.headers()) {
        Ok(hs) => hs,
        Err(r) => return Ok(refuse(r)),
    };
    let view = wsgate_admission::Request {
        client: client.ip,
        tls: ctx.tls,
        host: &hs.host,
        origin: hs.origin.as_deref(),
        headers: req.headers(),
        query: req.uri().query(),
        subprotocols: &hs.subprotocols,
        params,
        client_cert: ctx.client_cert.as_ref(),
    };
    let rp = route.policy(ctx.listener);
    let admitted = match (&rp.gates.external, &rp.external) {
        (Some(policy), Some(target)) => {
            let uri = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            external_admit(shared, rp, policy, target, &view, uri, &request_id).await
        }
        // Password hashes are slow on purpose: verify them off the async workers' hot path.
        _ if rp
            .gates
            .auth
            .as_ref()
            .is_some_and(|a| !a.basic_users.is_empty()) =>
        {
            tokio::task::block_in_place(|| rp.gates.admit(&view))
        }
        _ => rp.gates.admit(&view),
    };
    let admitted = match admitted {
        Ok(a) => a,
        Err(r) => return Ok(refuse(r)),
    };
    let identity = admitted.identity.as_ref().map(|i| i.name.as_str());
    let held = match shared.limits.admit(client.ip, identity, Instant::now()) {
        Ok(h) => h,
        Err(r) => return Ok(refuse(r)),
    };
    // A credential carried as a subprotocol has been removed: only real subprotocols remain.
    let offered = &admitted.subprotocols;
    let mut subprotocol = select_subprotocol(offered, &route.subprotocols).map(str::to_owned);
    if route.kind != RouteKind::Proxy || !route.subprotocols.is_empty() {
        if subprotocol.is_none() && !offered.is_empty() {
            // The offered names are not shown: clients sometimes carry tokens in this header.
            return Ok(refuse(Refusal::new(
                Reason::SubprotocolUnsupported,
                format!(
                    "the client offered {} subprotocol(s), none of which the route supports; it supports {:?}",
                    offered.len(),
                    route.subprotocols
                ),
            )));
        }
        if subprotocol.is_none() && route.subprotocol_required {
            return Ok(refuse(Refusal::new(
                Reason::SubprotocolUnsupported,
                format!(
                    "the route requires one of the subprotocols {:?} and none was offered",
                    route.subprotocols
                ),
            )));
        }
    }
    let Some(slot) = Slot::acquire(shared) else {
        return Ok(refuse(Refusal::new(
            Reason::LimitConnections,
            format!(
                "all {} connections of limits.max_connections are open",
                shared.config.limits.max_connections
            ),
        )));
    };

    let upstream = match (&route.kind, &route.upstream) {
        (RouteKind::Proxy, Some(up)) => {
            let upstream_offer: Vec<String> = if route.subprotocols.is_empty() {
                offered.clone()
            } else {
                subprotocol.iter().cloned().collect()
            };
            let mut headers = forwarded_headers(req.headers(), &route.forward_headers);
            // Identity headers the external check returned travel upstream with the connection.
            if let Some(serde_json::Value::Object(kept)) = admitted
                .identity
                .as_ref()
                .filter(|i| i.source == "external")
                .and_then(|i| i.claims.as_ref())
            {
                for (k, v) in kept {
                    if let (Ok(n), Some(Ok(v))) = (
                        http::HeaderName::from_bytes(k.as_bytes()),
                        v.as_str().map(HeaderValue::from_str),
                    ) {
                        headers.insert(n, v);
                    }
                }
            }
            let fwd = proxy::Forward {
                subprotocols: &upstream_offer,
                headers,
                client: client.ip,
                request_id: &request_id,
            };
            let tls = shared.upstream_tls.get(route_idx).and_then(Option::as_ref);
            match proxy::connect(up, tls, fwd).await {
                Ok(conn) => {
                    subprotocol = conn.subprotocol.clone();
                    Some(conn)
                }
                Err(r) => return Ok(refuse(r)),
            }
        }
        _ => None,
    };

    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&hs.accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = subprotocol
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        h.insert(SEC_WEBSOCKET_PROTOCOL, p);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(REQUEST_ID_HEADER, v);
    }

    let on_upgrade = hyper::upgrade::on(&mut req);
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let limits = shared.conn_limits.clone();
    let local = match route.kind {
        RouteKind::Echo => Some(Local::Echo),
        RouteKind::Channel => Some(Local::Channel {
            hub: shared.hub.clone(),
            room: format!("{route_idx}:{path}"),
            deliver_to_sender: route.deliver_to_sender,
        }),
        RouteKind::Proxy => None,
    };
    let track = ctx.track.clone();
    let metrics = shared.metrics.clone();
    let shutdown = shared.shutdown.clone();
    // Boxed, so the task that waits for the upgrade and then runs the connection carries one
    // pointer for it, not a copy of everything while the connection idles.
    let work = match (local, upstream) {
        (Some(local), _) => Work::Local(Box::new(ws::Params {
            local,
            conn_id,
            limits,
            metrics,
            shutdown,
        })),
        (None, Some(up)) => Work::Proxy(Box::new(ProxyWork {
            up,
            limits: relay::RelayLimits {
                max_frame: limits.max_frame,
                max_output: limits.max_output,
                ping_interval: limits.ping_interval,
                idle_timeout: limits.idle_timeout,
                send_timeout: limits.send_timeout,
            },
            metrics,
            shutdown,
        })),
        (None, None) => Work::Nothing,
    };
    // For the closing log line; one small box rather than three fields in every idle task.
    let about = Box::new(About {
        peer: ctx.peer,
        request_id: request_id.clone(),
        route: route.path.clone(),
    });
    tokio::spawn(async move {
        let _track = track;
        let _slot = slot;
        let _held = held;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(request_id = %about.request_id, error = %e, "client vanished during the upgrade");
                return;
            }
        };
        let opened = Instant::now();
        match work {
            Work::Local(params) => ws::run_local(Stream::new(upgraded), params).await,
            Work::Proxy(w) => {
                let ProxyWork {
                    up,
                    limits,
                    metrics,
                    shutdown,
                } = *w;
                // Boxed: the relay's state is large and would otherwise size every
                // connection's task, echo and channel ones included.
                Box::pin(relay::relay(upgraded, up.io, limits, metrics, shutdown)).await
            }
            Work::Nothing => {}
        }
        let About {
            peer,
            request_id: rid,
            route: route_path,
        } = &*about;
        tracing::debug!(request_id = %rid, peer = %peer, route = %route_path, secs = opened.elapsed().as_secs_f64(), "connection closed");
    });

    shared
        .metrics
        .admitted
        .get_or_create(&[("route", route.path.clone())])
        .inc();
    shared
        .metrics
        .handshake_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(
        request_id = %request_id,
        peer = %ctx.peer,
        route = %route.path,
        subprotocol = subprotocol.as_deref().unwrap_or("-"),
        identity = admitted.identity.as_ref().map(|i| i.name.as_str()).unwrap_or("-"),
        "handshake admitted"
    );
    Ok(resp)
}

/// Admission for a route whose authentication is an external HTTP check: the gates before it,
/// the (cached) call, then authorization.
async fn external_admit(
    shared: &Shared,
    route: &crate::config::RoutePolicy,
    policy: &wsgate_admission::external::ExternalPolicy,
    target: &crate::config::HttpTarget,
    view: &wsgate_admission::Request<'_>,
    uri: &str,
    request_id: &str,
) -> Result<wsgate_admission::Admitted, Refusal> {
    use wsgate_admission::external::{self, DecisionCache};
    route.gates.before_auth(view)?;
    let headers = external::check_headers(view, uri, request_id);
    let key = DecisionCache::key(&headers);
    let now = Instant::now();
    let decision = match shared.external_cache.get(&key, now) {
        Some(d) => d,
        None => {
            let d =
                crate::extcheck::call(policy, target, headers, shared.external_tls.as_ref()).await;
            shared.external_cache.put(key, &d, policy.cache_ttl, now);
            d
        }
    };
    let identity = decision?;
    // Entries carrying a credential under a configured prefix are never selectable.
    let subprotocols = wsgate_admission::auth::strip_prefixed(
        view.subprotocols,
        route.token_prefixes.iter().map(String::as_str),
    );
    route.gates.after_auth(Some(identity), subprotocols, view)
}

fn refuse_with(
    refusal: &Refusal,
    ctx: &ConnCtx,
    request_id: &str,
    client: std::net::IpAddr,
    route: Option<&str>,
    path: &str,
) -> Response<Body> {
    let c = Context {
        request_id,
        peer: ctx.peer,
        client,
        route,
        path,
        explain: ctx.explain,
    };
    let now = Instant::now();
    if ctx
        .shared
        .global
        .record_refusal(client, refusal.reason, now)
    {
        tracing::warn!(request_id, client = %client, "client banned after repeated refused handshakes");
    }
    refusal::refuse(refusal, &c, &ctx.shared.metrics, &ctx.shared.log_limiter)
}

fn forwarded_headers(from: &HeaderMap, names: &[http::HeaderName]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in names {
        for v in from.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// Reloads listener certificates when their files change (checked every 2 s) or on SIGHUP; a bad
/// new file is logged and the certificate in use is kept.
async fn reload_loop(reloaders: Vec<(usize, Arc<tls::CertReloader>)>, shared: Arc<Shared>) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let forced = match hup.as_mut() {
            Some(h) => tokio::select! {
                _ = h.recv() => true,
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => false,
            },
            None => {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                false
            }
        };
        #[cfg(not(unix))]
        let forced = {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            false
        };
        for (i, r) in &reloaders {
            let result = if forced {
                Some(r.reload())
            } else {
                r.reload_if_changed()
            };
            match result {
                None => {}
                Some(Ok(info)) => {
                    shared
                        .metrics
                        .set_cert_not_after(format!("listener[{i}]"), info.not_after);
                    tracing::info!(
                        listener = i,
                        subject = %info.subject,
                        expires = %tls::iso_date(info.not_after),
                        "TLS certificate reloaded; open connections keep theirs"
                    );
                }
                Some(Err(e)) => tracing::error!(
                    listener = i,
                    files = %r.describe(),
                    error = %e,
                    "TLS certificate reload failed; still serving the previous certificate"
                ),
            }
        }
    }
}

async fn admin_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(serve_admin(stream, shared));
    }
}

async fn serve_admin(stream: TcpStream, shared: Arc<Shared>) {
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move {
            let (status, ctype, body) = match req.uri().path() {
                "/metrics" => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    shared.metrics.render(),
                ),
                "/healthz" if shared.draining.load(Ordering::SeqCst) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".to_owned(),
                ),
                "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
                _ => (
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "try /metrics or /healthz\n".to_owned(),
                ),
            };
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
