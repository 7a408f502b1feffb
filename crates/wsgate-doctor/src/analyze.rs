//! Reads the evidence: names the cause of a failure, runs at most eight controlled variations
//! for an HTTP refusal, recognises the server, and writes the fixes.

use crate::probe::{self, Outcome, Request, Response, Target};
use crate::servers::{self, Confidence, Role};
use crate::tls::Tls;
use crate::{Diagnosis, Experiment, Fix, Options, Reason, ServerInfo, Side, TokenVia};

/// Variations sent at most per diagnosis.
pub const MAX_EXPERIMENTS: usize = 8;

/// Runs the walk and, if needed, the experiments; returns the diagnosis.
pub async fn run(opts: &Options, target: &Target, tls: &Tls) -> Diagnosis {
    let base = Request::from_options(opts);
    let first = probe::attempt(opts, target, tls, &base, true).await;
    let mut d = Diagnosis {
        url: opts.url.clone(),
        ok: false,
        cause: None,
        summary: String::new(),
        evidence: Vec::new(),
        fixes: Vec::new(),
        steps: first.steps.clone(),
        experiments: Vec::new(),
        server: first
            .response
            .as_ref()
            .map(|r| server_info(r, &target.path_and_query, None))
            .unwrap_or_default(),
        browser: String::new(),
    };
    d.evidence.extend(first.chain.iter().cloned());
    // On wss://, what browsers would do: WebSockets over HTTP/2 when the server advertises them.
    let h2 = match (target.tls && first.response.is_some(), first.addr) {
        (true, Some(addr)) => {
            let clock = std::time::Instant::now();
            let h = crate::h2::probe(opts, target, tls, addr, &base).await;
            d.steps.push(crate::Step {
                name: "h2",
                ok: !h.breaks_browsers(),
                ms: clock.elapsed().as_millis() as u64,
                detail: h.describe(),
            });
            Some(h)
        }
        _ => None,
    };
    if let Some((reason, detail)) = first.failure.clone() {
        let reason = if reason == Reason::TlsRequired && !target.tls {
            confirm_tls(opts, target, tls).await
        } else if target.tls && (first.tls_silent || reason == Reason::TlsNotTls) {
            // Closed on the client hello without a TLS alert: a plain server says so in HTTP.
            match confirm_plain(opts, target, tls).await {
                Some(answer) => {
                    d.evidence.push(format!(
                        "a plain HTTP request to the same port got HTTP {} {}: the port does not speak TLS",
                        answer.status, answer.reason
                    ));
                    d.server = server_info(&answer, &target.path_and_query, None);
                    Reason::TlsNotTls
                }
                None => {
                    d.evidence.push(
                        "a plain HTTP request to the same port got no HTTP answer either".into(),
                    );
                    if first.tls_silent {
                        Reason::TlsProtocol
                    } else {
                        reason
                    }
                }
            }
        } else {
            reason
        };
        d.evidence.insert(0, detail);
        let browser = match reason {
            Reason::TlsUntrusted => "WebSocket connection failed: net::ERR_CERT_AUTHORITY_INVALID",
            Reason::TlsExpired | Reason::TlsNotYetValid => {
                "WebSocket connection failed: net::ERR_CERT_DATE_INVALID"
            }
            Reason::TlsHostnameMismatch => {
                "WebSocket connection failed: net::ERR_CERT_COMMON_NAME_INVALID"
            }
            Reason::DnsUnresolved => "WebSocket connection failed: net::ERR_NAME_NOT_RESOLVED",
            Reason::TcpRefused => "WebSocket connection failed: net::ERR_CONNECTION_REFUSED",
            _ => "WebSocket connection failed",
        };
        d.browser = format!("{browser}; the page's onclose sees code 1006 and no reason");
        conclude(&mut d, reason, None, &first);
        return d;
    }
    let Some(resp) = first.response.clone() else {
        conclude(&mut d, Reason::TcpReset, None, &first);
        return d;
    };
    d.evidence.push(format!("sent:\n{}", first.sent.trim_end()));
    let body_line: String = first_line(&resp.body).chars().take(200).collect();
    d.evidence.push(format!(
        "received: HTTP {} {}\n{}{}",
        resp.status,
        resp.reason,
        headers_text(&resp),
        if body_line.is_empty() {
            String::new()
        } else {
            format!("\n\n{body_line}")
        }
    ));
    if resp.status == 101 {
        opened(&mut d, &first, &resp, &base);
        if let Some(h) = h2.filter(|h| d.ok && h.breaks_browsers()) {
            d.evidence
                .push(format!("HTTP/1.1 works, but {}", h.describe()));
            d.browser = "Chrome and Firefox use the server's HTTP/2 WebSockets here: the connection fails (onclose 1006) while HTTP/1.1 clients work".into();
            conclude(&mut d, Reason::H2ExtendedConnect, Some(&resp), &first);
        }
        return d;
    }
    d.browser = format!(
        "WebSocket connection to '{}' failed: Error during WebSocket handshake: Unexpected response code: {}; the page's onclose sees only code 1006",
        opts.url, resp.status
    );
    // A CDN's challenge page: the handshake never reached the server behind it.
    if let Some(why) = servers::challenge(&resp) {
        d.evidence.push(why);
        conclude(&mut d, Reason::CdnChallenge, Some(&resp), &first);
        return d;
    }
    // The server names its own reason: nothing to guess.
    if let Some(code) = d.server.reason.clone() {
        if let Some(r) = Reason::from_code(&code) {
            d.evidence
                .push(format!("the server states its reason: {code}"));
            conclude(&mut d, r, Some(&resp), &first);
            host_rewrite_hint(&mut d, r, &base, target);
            return d;
        }
    }
    let simple = match resp.status {
        300..=399 => Some(Reason::HttpRedirect),
        404 => Some(Reason::HttpNotFound),
        200..=299 => Some(Reason::HttpNotWebsocket),
        426 => Some(Reason::HttpUpgradeRequired),
        429 => Some(Reason::LimitRate),
        502..=504 => Some(Reason::HttpUpstream),
        505 => Some(Reason::HttpVersion),
        _ => None,
    };
    if let Some(r) = simple {
        if r == Reason::HttpRedirect {
            if let Some(loc) = resp.header("location") {
                d.evidence.push(format!("redirected to {loc}"));
            }
        }
        conclude(&mut d, r, Some(&resp), &first);
        return d;
    }
    let cause = if opts.experiments {
        let identify = d.server.confidence != Some(Confidence::High);
        let software = d.server.software.clone();
        let found = experiment(
            opts,
            target,
            tls,
            &base,
            &resp,
            identify,
            software.as_deref(),
        )
        .await;
        d.experiments = found.experiments;
        d.evidence.extend(found.notes);
        if let Some(plain) = &found.plain {
            d.server = server_info(&resp, &target.path_and_query, Some(plain));
        }
        found.cause
    } else {
        d.evidence.push(
            "experiments are off (--no-experiments): the cause is read from the answer alone"
                .into(),
        );
        read_alone(&base, &resp)
    };
    conclude(&mut d, cause, Some(&resp), &first);
    host_rewrite_hint(&mut d, cause, &base, target);
    d
}

/// The classic proxy fault: the page's origin *is* the address the client connected to, yet the
/// origin is refused. The backend then compares it with a different Host: the one a reverse proxy
/// sent it (nginx sends the upstream's address unless told otherwise).
fn host_rewrite_hint(d: &mut Diagnosis, cause: Reason, base: &Request, target: &Target) {
    let own = [target.own_origin(false), target.own_origin(true)];
    let same = base
        .origin
        .as_ref()
        .is_some_and(|o| own.iter().any(|x| x.eq_ignore_ascii_case(o)));
    if cause == Reason::OriginNotAllowed && same {
        d.evidence.push(
            "the refused Origin is the address you connected to: a proxy in front probably sends the backend another Host, and the backend compares the Origin with that".into(),
        );
        d.fixes.insert(
            1.min(d.fixes.len()),
            Fix {
                side: Side::Server,
                software: d
                    .server
                    .via
                    .clone()
                    .unwrap_or_else(|| "the proxy in front".into()),
                text: "Make the reverse proxy pass the client's Host to the backend (nginx: `proxy_set_header Host $host;`), or allow this origin explicitly in the backend".into(),
            },
        );
    }
}

/// A ws:// URL got no HTTP answer: does the port speak TLS?
async fn confirm_tls(opts: &Options, target: &Target, tls: &Tls) -> Reason {
    let mut t = target.clone();
    t.tls = true;
    let mut quick = opts.clone();
    quick.insecure = true;
    quick.hold = None;
    let o = probe::attempt(&quick, &t, tls, &Request::from_options(opts), false).await;
    // A certificate complaint also proves that the port speaks TLS.
    let speaks_tls = o.steps.iter().any(|s| s.name == "tls" && s.ok)
        || matches!(
            o.failure.as_ref().map(|(reason, _)| *reason),
            Some(
                Reason::TlsUntrusted
                    | Reason::TlsExpired
                    | Reason::TlsNotYetValid
                    | Reason::TlsHostnameMismatch
                    | Reason::TlsClientCertRequired
            )
        );
    if speaks_tls {
        Reason::TlsRequired
    } else {
        Reason::TcpReset
    }
}

/// A wss:// handshake closed without a TLS alert: does the port answer plain HTTP?
async fn confirm_plain(opts: &Options, target: &Target, tls: &Tls) -> Option<Response> {
    let mut t = target.clone();
    t.tls = false;
    let mut quick = opts.clone();
    quick.hold = None;
    let mut req = Request::from_options(opts);
    req.plain = true;
    probe::attempt(&quick, &t, tls, &req, false).await.response
}

fn opened(d: &mut Diagnosis, first: &Outcome, resp: &Response, base: &Request) {
    d.browser = "the page's onopen fires".into();
    let upgrade_ok = resp
        .header("upgrade")
        .is_some_and(|v| v.to_ascii_lowercase().contains("websocket"))
        && resp
            .header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
    let expected = wsgate_handshake::accept_key(first.key.as_bytes());
    let offered: Vec<String> = base.subprotocols.clone();
    let chosen = resp.header("sec-websocket-protocol").map(str::to_owned);
    let problem = if !upgrade_ok {
        Some(Reason::WsUpgradeHeaderMissing)
    } else if resp.header("sec-websocket-accept") != Some(expected.as_str()) {
        d.evidence.push(format!(
            "Sec-WebSocket-Accept is {:?}, expected {expected:?} for the key sent",
            resp.header("sec-websocket-accept").unwrap_or("missing")
        ));
        Some(Reason::WsBadAccept)
    } else if !offered.is_empty() && chosen.is_none() {
        d.evidence.push(format!(
            "offered subprotocols {offered:?}; the answer chose none"
        ));
        Some(Reason::SubprotocolNotEchoed)
    } else {
        None
    };
    if let Some(r) = problem {
        d.browser = "WebSocket connection failed: Error during WebSocket handshake; the page's onclose sees code 1006".into();
        conclude(d, r, Some(resp), first);
        return;
    }
    if let Some(p) = &chosen {
        d.evidence.push(format!("subprotocol chosen: {p}"));
    }
    let Some(ws) = &first.ws else {
        d.ok = true;
        d.summary = "The WebSocket opened.".into();
        return;
    };
    if let Some(g) = &ws.greeting {
        d.evidence
            .push(format!("the server sent a first message on its own: {g:?}"));
    }
    if let Some((code, reason)) = &ws.early_close {
        d.evidence.push(format!(
            "close frame right after opening: code {code} ({}) reason {reason:?}",
            close_name(*code)
        ));
        d.browser =
            format!("the page's onopen fires, then onclose with code {code} and reason {reason:?}");
        conclude(d, Reason::WsClosedAfterOpen, Some(resp), first);
        if let Some(extra) = known_close(*code) {
            d.fixes.insert(
                0,
                Fix {
                    side: Side::Client,
                    software: "the client".into(),
                    text: extra,
                },
            );
        }
        return;
    }
    if ws.dropped_while_idle {
        d.browser = "the page's onclose fires with code 1006 while idle".into();
        conclude(d, Reason::IdleTimeout, Some(resp), first);
        return;
    }
    if !ws.ping_ok {
        d.evidence.push("a ping got no pong".into());
    }
    d.ok = ws.ping_ok;
    d.summary = if ws.ping_ok {
        "The WebSocket works: the handshake, a ping/pong and the close handshake all succeeded."
            .into()
    } else {
        "The handshake succeeded, but the server did not answer a ping.".into()
    };
}

/// Whether an answer's text says nothing beyond its status (a default error page, or `ws`'s
/// status text as the whole body): such text is no statement of a reason.
fn says_nothing(resp: &Response) -> bool {
    let mut text = String::new();
    let mut in_tag = false;
    for c in resp.body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c.to_ascii_lowercase()),
            _ => {}
        }
    }
    let mut noise: Vec<String> = vec![resp.status.to_string()];
    noise.extend(
        resp.reason
            .to_ascii_lowercase()
            .split_whitespace()
            .map(str::to_owned),
    );
    if let Some(server) = resp.header("server") {
        noise.extend(
            server
                .to_ascii_lowercase()
                .split_whitespace()
                .map(str::to_owned),
        );
    }
    let left: usize = text
        .split(|c: char| c.is_whitespace())
        .filter(|w| !w.is_empty() && !noise.iter().any(|n| n == w))
        .map(|w| w.chars().filter(|c| c.is_ascii_alphabetic()).count())
        .sum();
    left < 4
}

/// The reason an answer's own text states, if it names one (the server's words, read only when
/// they say more than the status).
fn stated(base: &Request, resp: &Response) -> Option<Reason> {
    let version_header = matches!(resp.status, 400 | 426)
        && resp.header("sec-websocket-version").is_some()
        && resp.header("upgrade").is_none();
    if says_nothing(resp) {
        return version_header.then_some(Reason::HandshakeVersion);
    }
    let body = resp.body.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| body.contains(w));
    if any(&["origin"]) {
        Some(if base.origin.is_some() {
            Reason::OriginNotAllowed
        } else {
            Reason::OriginMissing
        })
    } else if any(&["subprotocol", "sec-websocket-protocol"]) {
        Some(Reason::SubprotocolUnsupported)
    } else if version_header
        || any(&[
            "sec-websocket-version",
            "unsupported version",
            "websocket version",
        ])
    {
        Some(Reason::HandshakeVersion)
    } else if any(&[
        "invalid host",
        "host header",
        "disallowedhost",
        "host not allowed",
        "unknown host",
    ]) {
        Some(Reason::HostNotAllowed)
    } else if any(&[
        "token",
        "unauthorized",
        "unauthenticated",
        "credential",
        "login",
        "authenticat",
        "api key",
        "apikey",
    ]) {
        Some(if base.token.is_some() {
            Reason::AuthInvalid
        } else {
            Reason::AuthMissing
        })
    } else {
        None
    }
}

fn first_line(body: &str) -> &str {
    body.lines().next().unwrap_or("").trim()
}

/// Servers that answer 401 for any refusal (Node `ws` does for a `verifyClient` that says no):
/// their 401 does not ask for a credential.
const ANY_REFUSAL_IS_401: &[&str] = &["Node ws"];

/// A refusal that no variation explained (or, without `varied`, that none was sent for): its
/// text, a challenge, or the status decides. A 401 without a challenge asks for a credential
/// (`auth.missing` when none was sent, `auth.invalid` when every place for one was refused),
/// except from a server that answers 401 for any refusal, where it says no more than a 403.
fn unexplained(
    base: &Request,
    resp: &Response,
    varied: bool,
    software: Option<&str>,
    notes: &mut Vec<String>,
) -> Reason {
    let status = resp.status;
    if let Some(r) = stated(base, resp) {
        notes.push(format!(
            "the refusal's own text states it: {:?}",
            if resp.body.trim().is_empty() {
                resp.header("sec-websocket-version").unwrap_or("")
            } else {
                first_line(&resp.body)
            }
        ));
        return r;
    }
    let any_401 = software.is_some_and(|s| ANY_REFUSAL_IS_401.contains(&s));
    if resp.header("www-authenticate").is_some() || (status == 401 && !(varied && any_401)) {
        notes.push(format!(
            "HTTP {status}{}",
            if resp.header("www-authenticate").is_some() {
                " with WWW-Authenticate"
            } else {
                ""
            }
        ));
        return if base.token.is_some() {
            Reason::AuthInvalid
        } else {
            Reason::AuthMissing
        };
    }
    if status == 400 && resp.body.to_ascii_lowercase().contains("upgrade") {
        return Reason::HttpUpgradeRequired;
    }
    // engine.io (Socket.IO) refuses an upgrade with 400 and the text "Forbidden".
    let says_forbidden = resp.body.trim().eq_ignore_ascii_case("forbidden");
    if matches!(status, 401 | 403) || says_forbidden {
        notes.push(format!(
            "HTTP {status} whatever was varied, and a text that names no cause: not an Origin, credential or subprotocol rule{}",
            if status == 401 {
                format!(" ({} answers 401 for any refusal)", software.unwrap_or("the server"))
            } else if says_forbidden && status != 403 {
                format!(" (HTTP {status} with the text \"Forbidden\")")
            } else {
                String::new()
            }
        ));
        return Reason::ForbiddenUnconditional;
    }
    notes.push(format!(
        "HTTP {status} {} whatever was varied; the answer's text: {:?}",
        resp.reason,
        first_line(&resp.body)
    ));
    Reason::HttpRefused
}

/// The cause an answer alone shows, when no variation could be sent (`--no-experiments`).
pub fn read_alone(base: &Request, resp: &Response) -> Reason {
    unexplained(base, resp, false, None, &mut Vec::new())
}

/// What the variations found.
struct Found {
    experiments: Vec<Experiment>,
    cause: Reason,
    notes: Vec<String>,
    /// The answer to the plain GET, when one was sent to identify the server.
    plain: Option<Response>,
}

/// Sends the variations (at most [`MAX_EXPERIMENTS`], the most telling first) and reads the
/// pattern. `identify` adds a plain GET for a server not yet recognised for sure; `wsgate`
/// adds wsgate's own credential places.
async fn experiment(
    opts: &Options,
    target: &Target,
    tls: &Tls,
    base: &Request,
    resp: &Response,
    identify: bool,
    software: Option<&str>,
) -> Found {
    let wsgate = software == Some("wsgate");
    let own = target.own_origin(target.tls);
    // (priority, what changed, the request, its kind): lower priorities are sent first.
    let mut vars: Vec<(u8, String, Request, &'static str)> = Vec::new();
    let with = |f: &dyn Fn(&mut Request)| {
        let mut r = base.clone();
        f(&mut r);
        r
    };
    if base.origin.as_deref() != Some(own.as_str()) {
        vars.push((
            0,
            format!("Origin {own} (the server's own)"),
            with(&|r| r.origin = Some(own.clone())),
            "origin",
        ));
    }
    if base.origin.is_some() {
        vars.push((1, "no Origin".into(), with(&|r| r.origin = None), "origin"));
    }
    if let Some(o) = &base.origin {
        let flipped = if let Some(rest) = o.strip_prefix("https://") {
            format!("http://{rest}")
        } else if let Some(rest) = o.strip_prefix("http://") {
            format!("https://{rest}")
        } else {
            o.clone()
        };
        if flipped != *o {
            vars.push((
                6,
                format!("Origin {flipped} (other scheme)"),
                with(&|r| r.origin = Some(flipped.clone())),
                "origin",
            ));
        }
    }
    if let Some((token, via)) = &base.token {
        vars.push((
            2,
            "without the credential".into(),
            with(&|r| r.token = None),
            "token-off",
        ));
        let mut places = vec![
            TokenVia::Header,
            TokenVia::Query("access_token".into()),
            TokenVia::Query("token".into()),
        ];
        if wsgate {
            places.push(TokenVia::Cookie("wsgate_token".into()));
            places.push(TokenVia::Subprotocol("token.".into()));
        }
        for (i, other) in places.into_iter().enumerate() {
            if other != *via {
                let t = token.clone();
                vars.push((
                    if i < 3 { 3 } else { 7 },
                    format!("credential in {}", other.describe()),
                    with(&|r| r.token = Some((t.clone(), other.clone()))),
                    "token",
                ));
            }
        }
    }
    if !base.subprotocols.is_empty() {
        vars.push((
            4,
            "no subprotocols offered".into(),
            with(&|r| r.subprotocols.clear()),
            "subprotocol",
        ));
    }
    if identify {
        vars.push((
            5,
            "a plain GET (no Upgrade), to identify the server".into(),
            with(&|r| r.plain = true),
            "identify",
        ));
    }
    vars.sort_by_key(|v| v.0);
    let mut notes = Vec::new();
    if vars.len() > MAX_EXPERIMENTS {
        let skipped: Vec<String> = vars[MAX_EXPERIMENTS..]
            .iter()
            .map(|v| v.1.clone())
            .collect();
        notes.push(format!(
            "not tried (at most {MAX_EXPERIMENTS} variations per diagnosis): {}",
            skipped.join("; ")
        ));
        vars.truncate(MAX_EXPERIMENTS);
    }
    let mut results = Vec::new();
    let mut plain = None;
    for (_, change, req, kind) in &vars {
        let o = probe::attempt(opts, target, tls, req, false).await;
        let status = o.response.as_ref().map(|r| r.status).unwrap_or(0);
        let code = o
            .response
            .as_ref()
            .and_then(|r| r.header("wsgate-reason"))
            .map(str::to_owned);
        if *kind == "identify" {
            plain = o.response.clone();
        }
        results.push((
            Experiment {
                change: change.clone(),
                status,
                code,
            },
            *kind,
        ));
    }
    let admitted = |kind: &str| {
        results
            .iter()
            .filter(|(e, k)| *k == kind && e.status == 101)
            .map(|(e, _)| e.change.clone())
            .collect::<Vec<_>>()
    };
    let base_status = resp.status;
    let cause = if !admitted("origin").is_empty() {
        let works = admitted("origin");
        notes.push(format!(
            "refused ({base_status}) with Origin {:?}, admitted with: {}",
            base.origin.as_deref().unwrap_or("none"),
            works.join("; ")
        ));
        if base.origin.is_none() {
            Reason::OriginMissing
        } else {
            Reason::OriginNotAllowed
        }
    } else if !admitted("token").is_empty() {
        notes.push(format!(
            "refused with the credential in {}, admitted with the {}",
            base.token
                .as_ref()
                .map(|(_, v)| v.describe())
                .unwrap_or_default(),
            admitted("token").join("; ")
        ));
        Reason::AuthMissing
    } else if !admitted("token-off").is_empty() {
        notes.push(
            "admitted without the credential: the credential itself is refused (invalid, expired, or for another audience)".into(),
        );
        Reason::AuthInvalid
    } else if !admitted("subprotocol").is_empty() {
        notes.push(format!(
            "refused when offering {:?}, admitted when offering none",
            base.subprotocols
        ));
        Reason::SubprotocolUnsupported
    } else {
        unexplained(base, resp, true, software, &mut notes)
    };
    Found {
        experiments: results.into_iter().map(|(e, _)| e).collect(),
        cause,
        notes,
        plain,
    }
}

/// Fills cause, summary and fixes: the client's, then the setting to change in the software
/// that answered (and in the front door before it), then the general fix. wsgate's own
/// configuration is advised only when the server is wsgate.
fn conclude(d: &mut Diagnosis, reason: Reason, _resp: Option<&Response>, first: &Outcome) {
    d.ok = false;
    d.cause = Some(reason.code().to_owned());
    let is_wsgate = d.server.software.as_deref() == Some("wsgate");
    d.summary = servers::summary(reason)
        .filter(|_| !is_wsgate)
        .unwrap_or(reason.message())
        .to_owned();
    if d.browser.is_empty() {
        d.browser =
            "WebSocket connection failed; the page's onclose sees code 1006 and no reason".into();
    }
    let admitted = d
        .experiments
        .iter()
        .find(|e| e.status == 101 && e.change.starts_with("credential in"))
        .map(|e| e.change.clone());
    d.fixes.push(Fix {
        side: Side::Client,
        software: "the client".into(),
        text: (!is_wsgate)
            .then(|| servers::client_fix(reason, admitted.as_deref()))
            .flatten()
            .unwrap_or_else(|| reason.client_fix().to_owned()),
    });
    let origin = first
        .sent
        .lines()
        .find_map(|l| l.strip_prefix("Origin: "))
        .unwrap_or("https://your-page.example")
        .to_owned();
    let path = first
        .sent
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let subprotocols: Vec<String> = first
        .sent
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Protocol: "))
        .map(|v| v.split(',').map(|p| p.trim().to_owned()).collect())
        .unwrap_or_default();
    let ctx = servers::Context {
        origin: &origin,
        path: &path,
        subprotocols: &subprotocols,
    };
    let software = d.server.software.clone();
    let mut specific = false;
    for name in software.iter().chain(d.server.via.iter()) {
        if let Some(text) = servers::fix(name, reason, &ctx) {
            d.fixes.push(Fix {
                side: Side::Server,
                software: name.clone(),
                text,
            });
            specific = true;
        }
    }
    if is_wsgate || !reason.is_refusal() {
        // wsgate's own texts, or a cause whose catalog text fits any server; a proxy's fault is
        // the proxy's to fix, seen or not.
        let proxy_fault = matches!(
            reason,
            Reason::HttpUpgradeRequired
                | Reason::HttpUpstream
                | Reason::IdleTimeout
                | Reason::WsUpgradeHeaderMissing
        );
        let who = if proxy_fault && !is_wsgate {
            d.server
                .via
                .clone()
                .unwrap_or_else(|| "the proxy in front".into())
        } else {
            software.clone().unwrap_or_else(|| "any server".into())
        };
        d.fixes.push(Fix {
            side: Side::Server,
            software: who,
            text: reason.operator_fix().to_owned(),
        });
    } else if let Some(text) = servers::generic(reason, &ctx).filter(|_| !specific) {
        d.fixes.push(Fix {
            side: Side::Server,
            software: software
                .clone()
                .map_or("any server".into(), |s| format!("{s} (no setting known)")),
            text,
        });
    } else if !specific {
        d.fixes.push(Fix {
            side: Side::Server,
            software: software.clone().unwrap_or_else(|| "any server".into()),
            text: format!(
                "the server refused with what amounts to {}: look at its log for this request",
                reason.code()
            ),
        });
    }
    if let Some(rid) = &d.server.request_id {
        d.evidence.push(format!(
            "quote request id {rid} to the operator: it finds the server's log line"
        ));
    }
}

/// Recognises the server and front door from an answer, the path asked for, and the answer to a
/// plain GET when one was sent.
pub fn server_info(resp: &Response, path: &str, plain: Option<&Response>) -> ServerInfo {
    let found = servers::recognise(&servers::Seen { resp, path, plain });
    let first = found.first();
    let via = match first {
        Some(f) if f.role == Role::App => found
            .iter()
            .find(|f| f.role == Role::Front)
            .map(|f| f.name.to_owned()),
        _ => None,
    };
    ServerInfo {
        software: first.map(|f| f.name.to_owned()),
        header: resp
            .header("server")
            .or_else(|| plain.and_then(|p| p.header("server")))
            .map(str::to_owned),
        reason: resp.header("wsgate-reason").map(str::to_owned),
        request_id: resp.header("x-request-id").map(str::to_owned),
        evidence: found
            .iter()
            .map(|f| {
                format!(
                    "{}: {} ({} confidence)",
                    f.name,
                    f.evidence,
                    f.confidence.as_str()
                )
            })
            .collect(),
        confidence: first.map(|f| f.confidence),
        via,
    }
}

fn headers_text(resp: &Response) -> String {
    resp.headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn close_name(code: u16) -> &'static str {
    match code {
        1000 => "normal closure",
        1001 => "going away",
        1002 => "protocol error",
        1003 => "unsupported data",
        1007 => "invalid payload",
        1008 => "policy violation",
        1009 => "message too big",
        1011 => "server error",
        1013 => "try again later",
        3000..=3999 => "library or framework code",
        4000..=4999 => "application code",
        _ => "other",
    }
}

/// Advice for close codes some well-known servers use.
fn known_close(code: u16) -> Option<String> {
    match code {
        1008 => Some("1008 is a policy refusal after the handshake: usually missing or rejected credentials in the server's own first-message protocol".into()),
        3500..=3599 => Some("35xx are Centrifugo's codes: 3500 invalid token, 3501 bad request; check the connect token".into()),
        4000..=4099 => Some("40xx are Pusher's codes: 4001 app does not exist, 4003 app disabled, 4004 over connection quota; check the app key and cluster".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            reason: String::new(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }

    #[test]
    fn the_server_info_names_the_endpoint_and_the_front_door() {
        let r = resp(
            403,
            &[("Server", "nginx/1.22.1")],
            "Cross origin websockets not allowed",
        );
        let info = server_info(&r, "/ws", None);
        assert_eq!(info.software.as_deref(), Some("Tornado"));
        assert_eq!(info.via.as_deref(), Some("nginx"));
        assert_eq!(info.confidence, Some(Confidence::High));
        assert_eq!(info.evidence.len(), 2, "{:?}", info.evidence);
    }

    #[test]
    fn an_api_gateway_authorizer_refusal_names_the_authorizer() {
        let none = Request {
            origin: None,
            token: None,
            subprotocols: vec![],
            headers: vec![],
            plain: false,
        };
        // API Gateway's answers when the $connect route's authorizer lacks its identity source
        // (401) or denies (403), as its documentation shows them.
        let missing = resp(
            401,
            &[
                ("Content-Type", "application/json"),
                ("x-amzn-RequestId", "5f0c"),
                ("x-amzn-ErrorType", "UnauthorizedException"),
                ("x-amz-apigw-id", "AbC="),
            ],
            r#"{"message":"Unauthorized"}"#,
        );
        assert_eq!(read_alone(&none, &missing), Reason::AuthMissing);
        let info = server_info(&missing, "/production", None);
        assert_eq!(info.software.as_deref(), Some("AWS API Gateway"));
        let c = servers::Context {
            origin: "https://app.example",
            path: "/production",
            subprotocols: &[],
        };
        let fix = servers::fix("AWS API Gateway", Reason::AuthMissing, &c).unwrap();
        assert!(
            fix.contains("$connect") && fix.contains("querystring"),
            "{fix}"
        );
        let denied = resp(
            403,
            &[("x-amzn-ErrorType", "AccessDeniedException")],
            r#"{"message":"Forbidden"}"#,
        );
        assert_eq!(
            unexplained(
                &none,
                &denied,
                true,
                Some("AWS API Gateway"),
                &mut Vec::new()
            ),
            Reason::ForbiddenUnconditional
        );
        assert!(
            servers::fix("AWS API Gateway", Reason::ForbiddenUnconditional, &c)
                .unwrap()
                .contains("Deny")
        );
    }

    #[test]
    fn causes_follow_the_status_and_the_text() {
        let none = Request {
            origin: None,
            token: None,
            subprotocols: vec![],
            headers: vec![],
            plain: false,
        };
        let with_origin = Request {
            origin: Some("https://evil.example".into()),
            ..none.clone()
        };
        // A 400 that names the subprotocol is not "forbidden".
        let sub = resp(
            400,
            &[("Server", "Python/3.11 websockets/17.4")],
            "Failed to open a WebSocket connection: invalid subprotocol; expected one of chat.v1.\n",
        );
        assert_eq!(read_alone(&none, &sub), Reason::SubprotocolUnsupported);
        // Node ws: the status text alone says nothing; a 401 without a challenge survived.
        let ws = Response {
            status: 401,
            reason: "Unauthorized".into(),
            headers: vec![("Connection".into(), "close".into())],
            body: "Unauthorized".into(),
        };
        assert_eq!(
            unexplained(&with_origin, &ws, true, Some("Node ws"), &mut Vec::new()),
            Reason::ForbiddenUnconditional
        );
        assert_eq!(
            unexplained(&with_origin, &ws, true, Some("nginx"), &mut Vec::new()),
            Reason::AuthMissing,
            "nginx's 401 (auth_request) asks for a credential"
        );
        assert_eq!(
            read_alone(&with_origin, &ws),
            Reason::AuthMissing,
            "unvaried"
        );
        // nginx's default page says nothing either.
        let nginx = Response {
            status: 403,
            reason: "Forbidden".into(),
            headers: vec![("Server".into(), "nginx/1.22.1".into())],
            body: "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n".into(),
        };
        assert_eq!(read_alone(&none, &nginx), Reason::ForbiddenUnconditional);
        // Another status with an unexplained text is reported as a refusal by its status.
        let teapot = resp(405, &[], "this endpoint only answers on Tuesdays");
        assert_eq!(read_alone(&none, &teapot), Reason::HttpRefused);
        let version = resp(400, &[("Sec-WebSocket-Version", "13, 8")], "");
        assert_eq!(read_alone(&none, &version), Reason::HandshakeVersion);
        let origin = resp(403, &[], "Cross origin websockets not allowed");
        assert_eq!(read_alone(&with_origin, &origin), Reason::OriginNotAllowed);
    }

    #[test]
    fn without_experiments_the_answer_alone_is_read() {
        let no_token = Request {
            origin: None,
            token: None,
            subprotocols: vec![],
            headers: vec![],
            plain: false,
        };
        assert_eq!(
            read_alone(&no_token, &resp(401, &[], "")),
            Reason::AuthMissing
        );
        assert_eq!(
            read_alone(&no_token, &resp(403, &[("WWW-Authenticate", "Bearer")], "")),
            Reason::AuthMissing
        );
        assert_eq!(
            read_alone(&no_token, &resp(403, &[], "")),
            Reason::ForbiddenUnconditional
        );
    }
}
