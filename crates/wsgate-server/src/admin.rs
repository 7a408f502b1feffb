//! The admin listener: the admin page at `/` (served from the binary, live over server-sent
//! events), its JSON API and actions (close a connection, ban or unban an address, reload), plus
//! Prometheus metrics at `/metrics` and a health check at `/healthz` (503 while draining, so a
//! load balancer stops sending new clients), which stay open for scrapers.
//!
//! Access: with `admin.token` set, the page and its API need the token, as `Authorization:
//! Bearer` or the HttpOnly, SameSite=Strict cookie the login form sets. Without one (allowed on
//! loopback only) the page is open to local users, and requests naming another host are refused,
//! so a web page cannot reach it through DNS rebinding. Every action is a POST that carries the
//! page's anti-forgery token in a header (a cross-site form cannot set one, and a cross-site
//! script cannot read it), unless it came with the bearer token.

use crate::console::Filter;
use crate::server::{Live, ReloadRequest, Shared};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use ring::hmac;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use wsgate_admission::firewall::BanSource;
use wsgate_reasons::Reason;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

const PAGE: &str = include_str!("../assets/admin/index.html");
const LOGIN: &str = include_str!("../assets/admin/login.html");
const SCRIPT: &str = include_str!("../assets/admin/app.js");
const STYLE: &str = include_str!("../assets/admin/style.css");
const ICON: &str = include_str!("../assets/admin/favicon.svg");

/// The cookie the login form sets.
const COOKIE: &str = "wsgate_admin";
/// The header actions carry the anti-forgery token in.
const CSRF_HEADER: &str = "x-wsgate-csrf";
/// Refusals and connections a list returns at most.
const LIST_MAX: usize = 200;
/// The longest ban an operator can set from the page (30 days).
const MAX_BAN: Duration = Duration::from_secs(30 * 24 * 3600);
/// The largest action body read.
const MAX_BODY: usize = 4096;
/// Wrong tokens (bearer or login form) accepted per [`FAILURE_WINDOW`], from all clients
/// together: past it, token checks are refused for the rest of the window (a login cookie still
/// works), so guessing online goes nowhere however many connections a guesser opens.
const FAILURES_PER_WINDOW: u32 = 20;
const FAILURE_WINDOW: Duration = Duration::from_secs(10);

/// What the admin listener serves with.
pub(crate) struct Admin {
    live: Arc<Live>,
    /// Keys the anti-forgery token when no admin token is set (a new one per process: a page
    /// reads the token again when it reconnects).
    secret: hmac::Key,
    reload: mpsc::Sender<ReloadRequest>,
    /// Wrong tokens in the current window: (window start, count).
    failures: std::sync::Mutex<(Instant, u32)>,
}

/// Serves the admin listener until the server stops; samples the page's chart once a second.
pub(crate) async fn serve(
    listener: TcpListener,
    live: Arc<Live>,
    reload: mpsc::Sender<ReloadRequest>,
) {
    let mut seed = [0u8; 32];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).is_err() {
        tracing::error!("admin: no randomness for the anti-forgery key; the admin page is off");
        return;
    }
    let admin = Arc::new(Admin {
        live: live.clone(),
        secret: hmac::Key::new(hmac::HMAC_SHA256, &seed),
        reload,
        failures: std::sync::Mutex::new((Instant::now(), 0)),
    });
    tokio::spawn(sample(live));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(serve_one(stream, admin.clone()));
    }
}

/// One sample a second for the chart, for as long as the admin listener runs.
async fn sample(live: Arc<Live>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let shared = live.load();
        shared.console.sample(&shared.metrics);
    }
}

async fn serve_one(stream: TcpStream, admin: Arc<Admin>) {
    let service = service_fn(move |req: Request<Incoming>| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(secured(admin.handle(req).await)) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Headers every admin answer carries: never cached, never framed, scripts only from here.
fn secured(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

fn full(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", format!("{v}\n"))
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!({ "error": message }))
}

fn too_many(wait: u64) -> Response<Body> {
    let mut resp = error(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("too many wrong admin tokens: token checks resume in {wait} s (a logged-in page keeps working)"),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    resp
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut resp = full(StatusCode::SEE_OTHER, "text/plain", "");
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    resp
}

/// Compares secrets without a timing signal of where they differ or how long they are: their
/// SHA-256 digests, in constant time.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let digest = |x: &[u8]| ring::digest::digest(&ring::digest::SHA256, x);
    wsgate_admission::auth::ct_eq(digest(a).as_ref(), digest(b).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a request proved it may use the page.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// `Authorization: Bearer TOKEN`: a script, not a browser; needs no anti-forgery token.
    Bearer,
    /// The login cookie, or no token configured (loopback): a browser, whose actions must carry
    /// the page's anti-forgery token.
    Browser,
}

impl Admin {
    /// The login cookie's value: derived from the token, so it survives restarts (the page keeps
    /// working) and dies with a changed token.
    fn session(token: &str) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
        hex(hmac::sign(&key, b"wsgate admin session").as_ref())
    }

    /// The anti-forgery token the page sends with actions.
    fn csrf(&self, shared: &Shared) -> String {
        let tag = match &shared.config.admin_token {
            Some(t) => hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, t.0.as_bytes()),
                b"wsgate admin csrf",
            ),
            None => hmac::sign(&self.secret, b"wsgate admin csrf"),
        };
        hex(tag.as_ref())
    }

    /// Seconds until token checks are accepted again, when too many failed in this window.
    fn locked_out(&self) -> Option<u64> {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let left = FAILURE_WINDOW.saturating_sub(f.0.elapsed());
        (f.1 >= FAILURES_PER_WINDOW && !left.is_zero()).then(|| left.as_secs() + 1)
    }

    /// Counts a wrong token.
    fn failed(&self) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.0.elapsed() >= FAILURE_WINDOW {
            *f = (Instant::now(), 0);
        }
        f.1 += 1;
        if f.1 == FAILURES_PER_WINDOW {
            tracing::warn!(
                window = ?FAILURE_WINDOW,
                "admin: {FAILURES_PER_WINDOW} wrong tokens in a row; token checks are refused for the rest of the window"
            );
        }
    }

    fn caller(&self, shared: &Shared, headers: &HeaderMap) -> Result<Option<Caller>, u64> {
        let Some(token) = &shared.config.admin_token else {
            return Ok(Some(Caller::Browser));
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(b) = bearer {
            if let Some(wait) = self.locked_out() {
                return Err(wait);
            }
            let ok = ct_eq(b.trim().as_bytes(), token.0.as_bytes());
            if !ok {
                self.failed();
            }
            return Ok(ok.then_some(Caller::Bearer));
        }
        let session = Admin::session(&token.0);
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| v);
        match cookie {
            Some(c) if ct_eq(c.as_bytes(), session.as_bytes()) => Ok(Some(Caller::Browser)),
            _ => Ok(None),
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let shared = self.live.load();
        let path = req.uri().path().to_owned();
        // Scrapers and load balancers: always open.
        match path.as_str() {
            "/metrics" => {
                return full(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    shared.metrics.render(),
                )
            }
            "/healthz" if shared.gate.draining() => {
                return full(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            }
            "/healthz" => return full(StatusCode::OK, "text/plain", "ok\n"),
            _ => {}
        }
        if shared.config.admin_token.is_none() && !local_host(req.headers()) {
            return full(
                StatusCode::MISDIRECTED_REQUEST,
                "text/plain",
                "the admin page without admin.token answers only requests for an IP address or localhost (a guard against DNS rebinding); set admin.token to reach it by name\n",
            );
        }
        match (req.method(), path.as_str()) {
            (&Method::GET, "/app.js") => {
                return full(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT)
            }
            (&Method::GET, "/style.css") => {
                return full(StatusCode::OK, "text/css; charset=utf-8", STYLE)
            }
            (&Method::GET, "/favicon.svg") => return full(StatusCode::OK, "image/svg+xml", ICON),
            (&Method::GET, "/login") if shared.config.admin_token.is_none() => {
                return redirect("/")
            }
            (&Method::GET, "/login") => {
                return full(StatusCode::OK, "text/html; charset=utf-8", login_page(""))
            }
            (&Method::POST, "/login") => return self.login(&shared, req).await,
            (&Method::POST, "/logout") => {
                let mut resp = redirect("/login");
                resp.headers_mut().insert(
                    header::SET_COOKIE,
                    HeaderValue::from_static(
                        "wsgate_admin=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict",
                    ),
                );
                return resp;
            }
            _ => {}
        }
        let caller = match self.caller(&shared, req.headers()) {
            Ok(c) => c,
            Err(wait) => return too_many(wait),
        };
        let Some(caller) = caller else {
            return match (req.method(), path.as_str()) {
                (&Method::GET, "/") => redirect("/login"),
                _ => {
                    let mut resp = error(
                        StatusCode::UNAUTHORIZED,
                        "the admin page needs admin.token: send `Authorization: Bearer TOKEN`, or log in at /login",
                    );
                    resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"wsgate admin\""),
                    );
                    resp
                }
            };
        };
        if req.method() == Method::POST {
            if let Err(why) = self.same_site(&shared, req.headers(), caller) {
                return error(StatusCode::FORBIDDEN, why);
            }
        }
        let query = req.uri().query().unwrap_or("").to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/") => full(StatusCode::OK, "text/html; charset=utf-8", PAGE),
            (&Method::GET, "/api/state") => json_response(StatusCode::OK, &self.state(&shared)),
            (&Method::GET, "/api/events") => self.events(),
            (&Method::GET, "/api/refusals") => {
                let (filter, since) = filter(&query);
                let list = shared.console.refusals(since, &filter, LIST_MAX);
                json_response(StatusCode::OK, &json!({ "refusals": list }))
            }
            (&Method::GET, "/api/connections") => {
                let (filter, _) = filter(&query);
                let (list, total) = shared.console.connections(&filter, LIST_MAX);
                let list: Vec<Value> = list
                    .into_iter()
                    .map(|(id, c)| json!({ "id": id, "conn": c }))
                    .collect();
                json_response(
                    StatusCode::OK,
                    &json!({ "connections": list, "matched": total }),
                )
            }
            (&Method::POST, "/api/close") => match read_json(req).await {
                Ok(v) => close(&shared, &v),
                Err(e) => e,
            },
            (&Method::POST, "/api/ban") => match read_json(req).await {
                Ok(v) => ban(&shared, &v),
                Err(e) => e,
            },
            (&Method::POST, "/api/unban") => match read_json(req).await {
                Ok(v) => unban(&shared, &v),
                Err(e) => e,
            },
            (&Method::POST, "/api/reload") => self.reload().await,
            (_, "/" | "/api/state" | "/api/events" | "/api/refusals" | "/api/connections") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
            }
            (_, "/api/close" | "/api/ban" | "/api/unban" | "/api/reload") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "use POST")
            }
            _ => full(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not here: the admin page is at /, metrics at /metrics, health at /healthz\n",
            ),
        }
    }

    /// Actions from a browser must come from this page: the anti-forgery header, and no
    /// cross-site Origin or fetch metadata.
    fn same_site(
        &self,
        shared: &Shared,
        headers: &HeaderMap,
        caller: Caller,
    ) -> Result<(), &'static str> {
        if caller == Caller::Bearer {
            return Ok(());
        }
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if site.is_some_and(|s| s != "same-origin" && s != "none") {
            return Err("cross-site request refused");
        }
        if let (Some(origin), Some(host)) = (
            headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
            headers.get(header::HOST).and_then(|v| v.to_str().ok()),
        ) {
            let bare = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            if bare != Some(host) {
                return Err("cross-origin request refused");
            }
        }
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct_eq(sent.as_bytes(), self.csrf(shared).as_bytes()) {
            return Err("missing or stale anti-forgery token (x-wsgate-csrf): reload the page");
        }
        Ok(())
    }

    async fn login(&self, shared: &Shared, req: Request<Incoming>) -> Response<Body> {
        let Some(token) = shared.config.admin_token.clone() else {
            return redirect("/");
        };
        let origin_ok = req
            .headers()
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|s| s == "same-origin" || s == "none");
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "login form too large"),
        };
        let given = form_urlencoded::parse(&body)
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if let Some(wait) = self.locked_out() {
            let mut resp = full(
                StatusCode::TOO_MANY_REQUESTS,
                "text/html; charset=utf-8",
                login_page(&format!("Too many wrong tokens: try again in {wait} s.")),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return resp;
        }
        if !origin_ok || !ct_eq(given.trim().as_bytes(), token.0.as_bytes()) {
            self.failed();
            // A pause per wrong guess, so a guesser gets few tries a second per connection.
            tokio::time::sleep(Duration::from_millis(300)).await;
            tracing::warn!("admin: a login with a wrong token");
            return full(
                StatusCode::UNAUTHORIZED,
                "text/html; charset=utf-8",
                login_page("That is not the admin token (admin.token in the configuration)."),
            );
        }
        let mut resp = redirect("/");
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
            Admin::session(&token.0)
        )) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        resp
    }

    /// Everything the page draws, in one document.
    fn state(&self, shared: &Shared) -> Value {
        let c = &shared.console;
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "node": shared.config.cluster.as_ref().map(|c| c.node_id.clone()),
            "config": shared.config.source,
            "started_ms": c.started_ms,
            "csrf": self.csrf(shared),
            "token_required": shared.config.admin_token.is_some(),
            "figures": figures(shared),
            "history": c.history(),
            "refusals": c.refusals(0, &Filter::default(), LIST_MAX),
            "routes": routes(shared),
            "bans": bans(shared),
            "codes": Reason::ALL.iter().filter(|r| r.is_refusal()).map(|r| json!({
                "code": r.code(), "status": r.status(), "message": r.message(),
            })).collect::<Vec<_>>(),
        })
    }

    /// Server-sent events: the whole state first, then each second the new figures, samples and
    /// refusals. The browser reconnects by itself (after a restart too) and gets the state again.
    fn events(&self) -> Response<Body> {
        struct Tick {
            live: Arc<Live>,
            first: Option<Value>,
            seq: u64,
            t: u64,
            every: tokio::time::Interval,
        }
        let shared = self.live.load();
        let state = self.state(&shared);
        let seq = shared.console.last_seq();
        let t = shared.console.history().last().map_or(0, |s| s.t);
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let tick = Tick {
            live: self.live.clone(),
            first: Some(state),
            seq,
            t,
            every,
        };
        let stream = futures_util::stream::unfold(tick, |mut s| async move {
            if let Some(first) = s.first.take() {
                let text = format!("retry: 2000\nevent: state\ndata: {first}\n\n");
                return Some((text, s));
            }
            s.every.tick().await;
            let shared = s.live.load();
            let c = &shared.console;
            let refusals = c.refusals(s.seq, &Filter::default(), LIST_MAX);
            s.seq = c.last_seq();
            let samples = c.history_since(s.t);
            if let Some(last) = samples.last() {
                s.t = last.t;
            }
            let tick = json!({
                "figures": figures(&shared),
                "samples": samples,
                "refusals": refusals,
                "bans": bans(&shared),
            });
            Some((format!("event: tick\ndata: {tick}\n\n"), s))
        })
        .map(|text| Ok::<_, Infallible>(Frame::data(Bytes::from(text))));
        let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        resp
    }

    async fn reload(&self) -> Response<Body> {
        let (tx, rx) = oneshot::channel();
        if self.reload.send(tx).await.is_err() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping");
        }
        match rx.await {
            Ok(Ok(summary)) => json_response(
                StatusCode::OK,
                &json!({ "reloaded": true, "changes": summary }),
            ),
            Ok(Err(e)) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({ "reloaded": false, "error": e }),
            ),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"),
        }
    }
}

/// Whether the Host header names an IP address or localhost (what a browser sends for the
/// loopback admin address; a rebinding attacker's page would send its own name).
fn local_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

fn login_page(message: &str) -> String {
    let escaped: String = message
        .chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            c => c.to_string(),
        })
        .collect();
    LOGIN.replace("{{message}}", &escaped)
}

/// `?code=&route=&address=&request_id=&since=`.
fn filter(query: &str) -> (Filter, u64) {
    let mut f = Filter::default();
    let mut since = 0;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = v.trim().to_owned();
        if v.is_empty() {
            continue;
        }
        match k.as_ref() {
            "code" => f.code = Some(v),
            "route" => f.route = Some(v),
            "address" => f.address = Some(v),
            "request_id" => f.request_id = Some(v),
            "since" => since = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    (f, since)
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Response<Body>> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("the body is not JSON: {e}"),
        )
    })
}

fn figures(shared: &Shared) -> Value {
    let m = &shared.metrics;
    let (admitted, refused) = shared.console.totals();
    let cluster = shared.cluster.as_ref().map(|c| {
        json!({
            "node": c.node_id(),
            "up": m.cluster_up.get() == 1,
            "published": m.cluster_published.get(),
            "received": m.cluster_received.get(),
            "dropped": m.cluster_dropped.get(),
            "reconnects": m.cluster_reconnects.get(),
        })
    });
    json!({
        "open": shared.console.open(),
        "by_route": shared.console.open_by_route(),
        "admitted_total": admitted,
        "refused_total": refused,
        "messages_in_total": m.messages_in.get(),
        "messages_out_total": m.messages_out.get(),
        "rooms": m.channel_rooms.get(),
        "members": m.channel_members.get(),
        "draining": shared.gate.draining(),
        "cluster": cluster,
    })
}

fn routes(shared: &Shared) -> Value {
    let config = &shared.config;
    let routes: Vec<Value> = config
        .routes
        .iter()
        .map(|r| {
            let kind = match r.kind {
                crate::config::RouteKind::Echo => "echo",
                crate::config::RouteKind::Channel => "channel",
                crate::config::RouteKind::Proxy => "proxy",
            };
            let policies: Vec<Value> = r
                .policies
                .iter()
                .zip(&config.listeners)
                .map(|(p, l)| {
                    let gates: Vec<Value> = crate::describe::policy(p)
                        .into_iter()
                        .map(|(g, t)| json!([g, t]))
                        .collect();
                    json!({
                        "listener": format!("{}://{}", if l.tls.is_some() { "wss" } else { "ws" }, l.address),
                        "gates": gates,
                    })
                })
                .collect();
            json!({
                "path": r.path,
                "kind": kind,
                "upstream": r.upstream.as_ref().map(|u| u.url.to_string()),
                "subprotocols": r.subprotocols,
                "policies": policies,
            })
        })
        .collect();
    Value::Array(routes)
}

fn bans(shared: &Shared) -> Value {
    let list = shared.gate.global().bans.in_force(Instant::now(), LIST_MAX);
    Value::Array(
        list.into_iter()
            .map(|b| {
                json!({
                    "address": b.ip.to_string(),
                    "seconds_left": b.left.as_secs() + 1,
                    "by": b.by.as_str(),
                })
            })
            .collect(),
    )
}

fn close(shared: &Shared, v: &Value) -> Response<Body> {
    let Some(id) = v.get("id").and_then(Value::as_u64) else {
        return error(StatusCode::BAD_REQUEST, "send {\"id\": CONNECTION_ID}");
    };
    match shared.console.close(id) {
        Some(c) => {
            tracing::warn!(conn = id, request_id = %c.request_id(), peer = %c.peer, route = %c.route.name, "admin: connection closed by an operator (1008)");
            json_response(StatusCode::OK, &json!({ "closed": id }))
        }
        None => error(
            StatusCode::NOT_FOUND,
            "no open connection has that id (it may have closed already)",
        ),
    }
}

fn parse_ip(v: &Value) -> Option<IpAddr> {
    v.get("address")
        .and_then(Value::as_str)
        .and_then(|a| a.trim().parse::<IpAddr>().ok())
        .map(wsgate_admission::firewall::canonical)
}

const BAD_ADDRESS: &str = "`address` must be one IP address, like 192.0.2.7 or 2001:db8::7";

fn ban(shared: &Shared, v: &Value) -> Response<Body> {
    let Some(ip) = parse_ip(v) else {
        return error(StatusCode::BAD_REQUEST, BAD_ADDRESS);
    };
    let secs = v.get("seconds").and_then(Value::as_u64).unwrap_or(0);
    let d = Duration::from_secs(secs);
    if secs == 0 || d > MAX_BAN {
        return error(
            StatusCode::BAD_REQUEST,
            "`seconds` must be between 1 and 2592000 (30 days)",
        );
    }
    shared
        .gate
        .global()
        .bans
        .ban_until(ip, Instant::now() + d, BanSource::Operator);
    if let Some(c) = &shared.cluster {
        c.ban(ip, d);
    }
    let mut closed = 0;
    if v.get("close_connections").and_then(Value::as_bool) == Some(true) {
        let (open, _) = shared.console.connections(
            &Filter {
                address: Some(ip.to_string()),
                ..Filter::default()
            },
            usize::MAX,
        );
        for (id, c) in open {
            if c.client == ip && shared.console.close(id).is_some() {
                closed += 1;
            }
        }
    }
    tracing::warn!(client = %ip, secs, closed, "admin: address banned by an operator");
    json_response(
        StatusCode::OK,
        &json!({ "banned": ip.to_string(), "seconds": secs, "closed": closed }),
    )
}

fn unban(shared: &Shared, v: &Value) -> Response<Body> {
    let Some(ip) = parse_ip(v) else {
        return error(StatusCode::BAD_REQUEST, BAD_ADDRESS);
    };
    let lifted = shared.gate.global().bans.lift(ip, Instant::now());
    if let Some(c) = &shared.cluster {
        c.lift(ip);
    }
    tracing::warn!(client = %ip, lifted, "admin: ban lifted by an operator");
    json_response(
        StatusCode::OK,
        &json!({ "lifted": lifted, "address": ip.to_string() }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        m
    }

    #[test]
    fn only_addresses_and_localhost_reach_a_tokenless_page() {
        for ok in [
            "127.0.0.1:9090",
            "localhost:9090",
            "[::1]:9090",
            "LOCALHOST",
        ] {
            assert!(local_host(&host(ok)), "{ok}");
        }
        for bad in ["evil.example:9090", "127.0.0.1.evil.example", "[evil]:1"] {
            assert!(!local_host(&host(bad)), "{bad}");
        }
        assert!(!local_host(&HeaderMap::new()));
    }

    #[test]
    fn filters_read_the_query() {
        let (f, since) = filter("code=origin.denied&address=192.0.2.&request_id=%20ab%20&since=7");
        assert_eq!(f.code.as_deref(), Some("origin.denied"));
        assert_eq!(f.address.as_deref(), Some("192.0.2."));
        assert_eq!(f.request_id.as_deref(), Some("ab"));
        assert_eq!(since, 7);
    }

    #[test]
    fn the_session_cookie_follows_the_token() {
        assert_eq!(
            Admin::session("a".repeat(16).as_str()),
            Admin::session(&"a".repeat(16))
        );
        assert_ne!(
            Admin::session(&"a".repeat(16)),
            Admin::session(&"b".repeat(16))
        );
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn the_login_page_escapes_its_message() {
        assert!(login_page("<b>").contains("&lt;b&gt;"));
    }
}
