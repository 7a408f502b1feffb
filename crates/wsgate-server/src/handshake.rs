//! One request head, start to finish: the decision ([`crate::decision`]), then either the refusal
//! or, for a proxy route, the upstream's handshake and then the 101 ([`crate::response`]), and the
//! task that runs the admitted connection (echo or channel in [`crate::ws`], proxy in
//! [`crate::relay`]).

use crate::accept::ConnCtx;
use crate::config::{HttpTarget, RouteKind};
use crate::console::ConnInfo;
use crate::decision::{Admit, Handshake};
use crate::metrics::Metrics;
use crate::response::{self, Body, Context};
use crate::server::Shared;
use crate::stream::Stream;
use crate::ws::{self, Local};
use crate::{ids, proxy, relay};
use http::{HeaderMap, HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use wsgate_admission::auth::Identity;
use wsgate_admission::external::{self, DecisionCache, ExternalPolicy};
use wsgate_admission::limits::{Held, Slot};
use wsgate_handshake::Refusal;

/// Decides a request and answers it; an admitted one gets its connection task.
pub(crate) async fn handle(
    mut req: Request<Incoming>,
    ctx: Arc<ConnCtx>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    // The request head has arrived: this connection no longer counts as a handshake in progress.
    drop(ctx.pending.lock().unwrap_or_else(|p| p.into_inner()).take());
    let shared = &ctx.shared;
    let request = ids::request_number();
    let request_id = ids::render_request(request);
    let path = req.uri().path().to_owned();
    let services = Outside {
        shared,
        uri: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        request_id: &request_id,
    };
    let decision = shared
        .gate
        .decide(
            &Handshake {
                method: req.method(),
                uri: req.uri(),
                version: req.version(),
                headers: req.headers(),
                peer: ctx.peer.ip(),
                tls: ctx.tls,
                listener: ctx.listener,
                client_cert: ctx.client_cert.as_ref(),
            },
            &services,
        )
        .await;
    let client = decision.client.ip;
    if decision.client.ignored_headers
        && shared
            .log_limiter
            .admit(
                "forwarding_headers_ignored",
                ctx.peer.ip(),
                "-",
                Instant::now(),
            )
            .is_some()
    {
        tracing::info!(
            request_id = %request_id,
            peer = %ctx.peer,
            "Forwarded/X-Forwarded-For from a peer that is not in firewall.trusted_proxies: ignored"
        );
    }
    let route_path = decision.route.as_ref().map(|m| m.route.path.as_str());
    let refuse =
        |refusal: Refusal| refuse_with(&refusal, &ctx, &request_id, client, route_path, &path);
    let admit = match decision.outcome {
        Ok(a) => a,
        Err(r) => return Ok(refuse(r)),
    };
    let Admit {
        route,
        route_index: route_idx,
        accept,
        mut subprotocol,
        offered,
        identity,
        held,
        lease,
        slot,
    } = admit;
    let places = Places::new(slot, held, lease, shared.metrics.clone());

    // A proxy route's upstream completes its handshake before the client gets its 101.
    let upstream = match (&route.kind, &route.upstream) {
        (RouteKind::Proxy, Some(up)) => {
            let upstream_offer: Vec<String> = if route.subprotocols.is_empty() {
                offered
            } else {
                subprotocol.iter().cloned().collect()
            };
            let extensions = match route.compression {
                wsgate_handshake::deflate::Mode::Off => None,
                _ => wsgate_handshake::deflate::forwarded_offers(
                    req.headers()
                        .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                ),
            };
            let fwd = proxy::Forward {
                subprotocols: &upstream_offer,
                extensions,
                headers: upstream_headers(req.headers(), &route.forward_headers, &identity),
                client,
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

    // permessage-deflate on echo and channel routes: the first offer this route can honour.
    let deflate = match route.kind {
        RouteKind::Proxy => None,
        _ => wsgate_handshake::deflate::negotiate(
            req.headers()
                .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .filter_map(|v| v.to_str().ok()),
            route.compression,
        ),
    };
    let extensions = match &upstream {
        Some(up) => up.extensions.clone(),
        None => deflate.map(|a| a.header()),
    };
    let resp = response::switching_protocols(
        &accept,
        subprotocol.as_deref(),
        extensions.as_deref(),
        &request_id,
    );
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let work = work(shared, route, &path, upstream, deflate, conn_id);
    // Listed for the admin page while it lives; dropping it writes the closing log line.
    let registration = shared.console.register(
        conn_id,
        ConnInfo {
            peer: ctx.peer,
            client,
            request,
            route: shared.console.route_name(&route.path),
            identity: identity.as_ref().map(|i| i.name.as_str().into()),
            opened_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        },
    );
    let on_upgrade = hyper::upgrade::on(&mut req);
    let track = ctx.track.clone();
    tokio::spawn(async move {
        let _track = track;
        let _places = places;
        let _registration = registration;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(conn = _registration.id(), error = %e, "client vanished during the upgrade");
                return;
            }
        };
        match work {
            Work::Local(params) => ws::run_local(Stream::new(upgraded), params).await,
            Work::Proxy(w) => {
                let ProxyWork {
                    up,
                    limits,
                    metrics,
                    shutdown,
                    conn_id,
                } = *w;
                // Boxed: the relay's state is large and would otherwise size every
                // connection's task, echo and channel ones included.
                let deflate = up.extensions.is_some();
                Box::pin(relay::relay(
                    upgraded, up.io, deflate, limits, metrics, shutdown, conn_id,
                ))
                .await
            }
            Work::Nothing => {}
        }
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
        identity = identity.as_ref().map(|i| i.name.as_str()).unwrap_or("-"),
        "handshake admitted"
    );
    Ok(resp)
}

/// What admission needs from the running server: the external check's HTTP call (with its
/// decision cache) and a blocking-capable thread for password hashes.
struct Outside<'a> {
    shared: &'a Shared,
    /// The request's path and query, which the check service is told.
    uri: &'a str,
    request_id: &'a str,
}

impl wsgate_admission::Services for Outside<'_> {
    async fn external_check(
        &self,
        policy: &ExternalPolicy,
        req: &wsgate_admission::Request<'_>,
    ) -> Result<Identity, Refusal> {
        let headers = external::check_headers(req, self.uri, self.request_id);
        let key = DecisionCache::key(&headers);
        let now = Instant::now();
        if let Some(d) = self.shared.external_cache.get(&key, now) {
            return d;
        }
        let target: &HttpTarget = &policy.endpoint;
        let d =
            crate::extcheck::call(policy, target, headers, self.shared.external_tls.as_ref()).await;
        self.shared
            .external_cache
            .put(key, &d, policy.cache_ttl, now);
        d
    }

    async fn shared_rate(
        &self,
        client: IpAddr,
        rate: f64,
        burst: f64,
    ) -> Option<Result<(), Refusal>> {
        match &self.shared.cluster {
            Some(c) => c.rate(client, rate, burst).await,
            None => None,
        }
    }

    fn shared_ready(&self) -> Result<(), Refusal> {
        match &self.shared.cluster {
            Some(c) => c.ready(),
            None => Ok(()),
        }
    }

    async fn shared_identity(
        &self,
        identity: &str,
        max: usize,
    ) -> Option<Result<wsgate_admission::Lease, Refusal>> {
        match &self.shared.cluster {
            Some(c) => c.lease(identity, max).await,
            None => None,
        }
    }

    fn slow<T>(&self, verify: impl FnOnce() -> T) -> T {
        // Password hashes are slow on purpose: verify them off the async workers' hot path.
        tokio::task::block_in_place(verify)
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
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<crate::out::Stop>,
    conn_id: u64,
}

/// Boxed, so the task that waits for the upgrade and then runs the connection carries one
/// pointer for it, not a copy of everything while the connection idles.
fn work(
    shared: &Shared,
    route: &crate::config::Route,
    path: &str,
    upstream: Option<proxy::UpstreamConn>,
    deflate: Option<wsgate_handshake::deflate::Agreement>,
    conn_id: u64,
) -> Work {
    let limits = shared.conn_limits.clone();
    let metrics = shared.metrics.clone();
    let shutdown = shared.console.stop_signal();
    let local = match route.kind {
        RouteKind::Echo => Some(Local::Echo),
        RouteKind::Channel => Some(Local::Channel {
            hub: shared.hub.clone(),
            // The path names the room: the same path always matches the same route, and the
            // name survives a reload that reorders routes (and needs no route order across nodes).
            room: path.to_owned(),
            deliver_to_sender: route.deliver_to_sender,
        }),
        RouteKind::Proxy => None,
    };
    match (local, upstream) {
        (Some(local), _) => Work::Local(Box::new(ws::Params {
            local,
            deflate,
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
            conn_id,
        })),
        (None, None) => Work::Nothing,
    }
}

/// The places an admitted connection holds (the server-wide slot, its client's and identity's
/// counts) and the open-connections gauge, all given back when the connection ends.
struct Places {
    _slot: Slot,
    _held: Held,
    _lease: Option<wsgate_admission::Lease>,
    metrics: Arc<Metrics>,
}

impl Places {
    fn new(
        slot: Slot,
        held: Held,
        lease: Option<wsgate_admission::Lease>,
        metrics: Arc<Metrics>,
    ) -> Places {
        metrics.connections_open.inc();
        Places {
            _slot: slot,
            _held: held,
            _lease: lease,
            metrics,
        }
    }
}

impl Drop for Places {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
    }
}

/// Answers a refusal (see [`response::refuse`]) and counts it towards a ban.
fn refuse_with(
    refusal: &Refusal,
    ctx: &ConnCtx,
    request_id: &str,
    client: IpAddr,
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
    if ctx
        .shared
        .gate
        .global()
        .record_refusal(client, refusal.reason, Instant::now())
    {
        tracing::warn!(request_id, client = %client, "client banned after repeated refused handshakes");
        if let (Some(c), Some(d)) = (
            &ctx.shared.cluster,
            ctx.shared.gate.global().bans.duration(),
        ) {
            c.ban(client, d);
        }
    }
    ctx.shared.console.refusal(
        refusal.reason,
        request_id,
        ctx.peer,
        client,
        route,
        path,
        &refusal.detail,
    );
    response::refuse(refusal, &c, &ctx.shared.metrics, &ctx.shared.log_limiter)
}

/// The headers a proxy route sends upstream: those it forwards from the client, and the identity
/// headers an external check returned.
fn upstream_headers(
    from: &HeaderMap,
    names: &[http::HeaderName],
    identity: &Option<Identity>,
) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in names {
        for v in from.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    if let Some(serde_json::Value::Object(kept)) = identity
        .as_ref()
        .filter(|i| i.source == "external")
        .and_then(|i| i.claims.as_ref())
    {
        for (k, v) in kept {
            if let (Ok(n), Some(Ok(v))) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                v.as_str().map(HeaderValue::from_str),
            ) {
                out.insert(n, v);
            }
        }
    }
    out
}
