//! Reads the evidence: names the cause of a failure, runs at most eight controlled variations
//! for an HTTP refusal, recognises the server, and writes the fixes.

use crate::probe::{self, Outcome, Request, Response, Target};
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
            .map(|r| server_info(r, &target.path_and_query))
            .unwrap_or_default(),
        browser: String::new(),
    };
    d.evidence.extend(first.chain.iter().cloned());
    if let Some((reason, detail)) = first.failure.clone() {
        let reason = if reason == Reason::TlsRequired && !target.tls {
            confirm_tls(opts, target, tls).await
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
    d.evidence.push(format!(
        "received: HTTP {} {}\n{}",
        resp.status,
        resp.reason,
        headers_text(&resp)
    ));
    if resp.status == 101 {
        opened(&mut d, &first, &resp, &base);
        return d;
    }
    d.browser = format!(
        "WebSocket connection to '{}' failed: Error during WebSocket handshake: Unexpected response code: {}; the page's onclose sees only code 1006",
        opts.url, resp.status
    );
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
        let (experiments, cause, notes) = experiment(opts, target, tls, &base, &resp).await;
        d.experiments = experiments;
        d.evidence.extend(notes);
        cause
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

/// What a refusal's body says about its cause, when variations could not tell (servers that
/// refuse every Origin but one, for example, refuse a missing Origin too).
fn body_hint(base: &Request, resp: &Response) -> Option<Reason> {
    let body = resp.body.to_ascii_lowercase();
    if body.contains("origin") {
        Some(if base.origin.is_some() {
            Reason::OriginNotAllowed
        } else {
            Reason::OriginMissing
        })
    } else if [
        "token",
        "unauthorized",
        "unauthenticated",
        "credential",
        "login",
    ]
    .iter()
    .any(|w| body.contains(w))
    {
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

/// The causes and fixes when no experiment could be run.
fn read_alone(base: &Request, resp: &Response) -> Reason {
    if let Some(r) = body_hint(base, resp) {
        return r;
    }
    if resp.status == 401 || resp.header("www-authenticate").is_some() {
        return if base.token.is_some() {
            Reason::AuthInvalid
        } else {
            Reason::AuthMissing
        };
    }
    if resp.status == 400 && resp.body.to_ascii_lowercase().contains("upgrade") {
        return Reason::HttpUpgradeRequired;
    }
    Reason::ForbiddenUnconditional
}

/// Sends the variations and reads the pattern.
async fn experiment(
    opts: &Options,
    target: &Target,
    tls: &Tls,
    base: &Request,
    resp: &Response,
) -> (Vec<Experiment>, Reason, Vec<String>) {
    let own = target.own_origin(target.tls);
    let mut vars: Vec<(String, Request, &'static str)> = Vec::new();
    let with = |f: &dyn Fn(&mut Request)| {
        let mut r = base.clone();
        f(&mut r);
        r
    };
    if base.origin.is_some() {
        vars.push(("no Origin".into(), with(&|r| r.origin = None), "origin"));
    }
    if base.origin.as_deref() != Some(own.as_str()) {
        vars.push((
            format!("Origin {own} (the server's own)"),
            with(&|r| r.origin = Some(own.clone())),
            "origin",
        ));
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
                format!("Origin {flipped} (other scheme)"),
                with(&|r| r.origin = Some(flipped.clone())),
                "origin",
            ));
        }
    }
    if let Some((token, via)) = &base.token {
        vars.push((
            "without the credential".into(),
            with(&|r| r.token = None),
            "token-off",
        ));
        for other in [
            TokenVia::Header,
            TokenVia::Query("access_token".into()),
            TokenVia::Cookie("wsgate_token".into()),
            TokenVia::Subprotocol("token.".into()),
        ] {
            if other != *via {
                let desc = format!("credential in {}", other.describe());
                let t = token.clone();
                vars.push((
                    desc,
                    with(&|r| r.token = Some((t.clone(), other.clone()))),
                    "token",
                ));
            }
        }
    }
    if !base.subprotocols.is_empty() {
        vars.push((
            "no subprotocols offered".into(),
            with(&|r| r.subprotocols.clear()),
            "subprotocol",
        ));
    }
    vars.truncate(MAX_EXPERIMENTS);
    let mut results = Vec::new();
    for (change, req, kind) in &vars {
        let o = probe::attempt(opts, target, tls, req, false).await;
        let status = o.response.as_ref().map(|r| r.status).unwrap_or(0);
        let code = o
            .response
            .as_ref()
            .and_then(|r| r.header("wsgate-reason"))
            .map(str::to_owned);
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
    let mut notes = Vec::new();
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
    } else if !admitted("subprotocol").is_empty() {
        notes.push(format!(
            "refused when offering {:?}, admitted when offering none",
            base.subprotocols
        ));
        Reason::SubprotocolUnsupported
    } else if let Some(r) = body_hint(base, resp) {
        notes.push(format!(
            "no variation was admitted; the refusal's own text points to it: {:?}",
            first_line(&resp.body)
        ));
        r
    } else if base_status == 401 || resp.header("www-authenticate").is_some() {
        notes.push(format!(
            "HTTP {base_status}{}",
            if resp.header("www-authenticate").is_some() {
                " with WWW-Authenticate"
            } else {
                ""
            }
        ));
        if base.token.is_some() {
            Reason::AuthInvalid
        } else {
            Reason::AuthMissing
        }
    } else if base_status == 400 && resp.body.to_ascii_lowercase().contains("upgrade") {
        Reason::HttpUpgradeRequired
    } else {
        notes.push(format!("HTTP {base_status} survived every variation: not an Origin, credential or subprotocol rule"));
        Reason::ForbiddenUnconditional
    };
    (results.into_iter().map(|(e, _)| e).collect(), cause, notes)
}

/// Fills cause, summary and fixes (the catalog's, tailored when the server is recognised).
fn conclude(d: &mut Diagnosis, reason: Reason, resp: Option<&Response>, first: &Outcome) {
    d.ok = false;
    d.cause = Some(reason.code().to_owned());
    d.summary = reason.message().to_owned();
    if d.browser.is_empty() {
        d.browser =
            "WebSocket connection failed; the page's onclose sees code 1006 and no reason".into();
    }
    d.fixes.push(Fix {
        side: Side::Client,
        text: reason.client_fix().to_owned(),
    });
    let software = d.server.software.clone().unwrap_or_default();
    if let Some(text) = tailored(reason, &software, first, resp) {
        d.fixes.push(Fix {
            side: Side::Server,
            text,
        });
    }
    d.fixes.push(Fix {
        side: Side::Server,
        text: reason.operator_fix().to_owned(),
    });
    if let Some(rid) = &d.server.request_id {
        d.evidence.push(format!(
            "quote request id {rid} to the operator: it finds the server's log line"
        ));
    }
}

/// Server-specific configuration for the most common causes.
fn tailored(
    reason: Reason,
    software: &str,
    first: &Outcome,
    _resp: Option<&Response>,
) -> Option<String> {
    let origin = first
        .sent
        .lines()
        .find_map(|l| l.strip_prefix("Origin: "))
        .unwrap_or("https://your-page.example")
        .to_owned();
    match (reason, software) {
        (Reason::OriginNotAllowed, "wsgate") => Some(format!("wsgate: add the page's origin to the route: `origins = [\"{origin}\"]`")),
        (Reason::OriginNotAllowed, "Python websockets") => Some(format!("Python websockets: `serve(handler, host, port, origins=[\"{origin}\"])`")),
        (Reason::OriginNotAllowed, "nginx") => Some(format!("nginx: allow the origin in the check on $http_origin, e.g. `if ($http_origin !~* ^{}$) {{ return 403; }}`", origin.replace('.', "\\."))),
        (Reason::HttpUpgradeRequired | Reason::HttpNotWebsocket, "nginx") => Some(
            "nginx: in the location: `proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\";`".into(),
        ),
        (Reason::OriginNotAllowed | Reason::ForbiddenUnconditional, "Chromium DevTools") => Some(format!(
            "Chromium: start the browser with `--remote-allow-origins={origin}` (or connect without an Origin header)"
        )),
        (Reason::OriginNotAllowed, "gorilla/websocket") => Some(format!(
            "gorilla/websocket: let Upgrader.CheckOrigin accept {origin} (compare r.Header.Get(\"Origin\") with your allowlist; never return true for all)"
        )),
        (Reason::OriginNotAllowed | Reason::ForbiddenUnconditional, "Phoenix") => Some(format!(
            "Phoenix: add the origin to the socket's `check_origin: [\"{origin}\"]` in the endpoint"
        )),
        (Reason::HttpNotFound, "Rails Action Cable") => Some(format!(
            "Rails Action Cable refuses disallowed origins with 404: add it to `config.action_cable.allowed_request_origins = [\"{origin}\"]`"
        )),
        (_, "Socket.IO") => Some(
            "Socket.IO speaks its own protocol over WebSocket: connect with a Socket.IO client, or use the engine URL `/socket.io/?EIO=4&transport=websocket`".into(),
        ),
        (Reason::ForbiddenUnconditional, "nginx") => Some("nginx: look for `deny`/`allow` rules and `return 403` in the server and location blocks for this path".into()),
        (Reason::ForbiddenUnconditional, "Envoy") => Some("Envoy: the RBAC filter refused the request; check its policies for this path and principal".into()),
        (Reason::ForbiddenUnconditional, "Cloudflare") => Some("Cloudflare: check the WAF and firewall rules (Security → Events) for this request's cf-ray".into()),
        (Reason::AuthMissing, _) if !software.is_empty() => Some(format!(
            "{software}: browsers cannot set Authorization on a WebSocket: accept the credential in a cookie, a query parameter or a subprotocol entry"
        )),
        _ => None,
    }
}

/// Recognises common servers and front doors from an answer (and the path asked for).
pub fn server_info(resp: &Response, path: &str) -> ServerInfo {
    let server = resp.header("server").map(str::to_owned);
    let s = server.clone().unwrap_or_default().to_ascii_lowercase();
    let body = resp.body.to_ascii_lowercase();
    let software = if body.contains("--remote-allow-origins") || path.starts_with("/devtools/") {
        Some("Chromium DevTools")
    } else if path.contains("/socket.io/")
        || body.contains("\"transport unknown\"")
        || body.contains("\"code\":3")
    {
        Some("Socket.IO")
    } else if path.starts_with("/cable") && resp.status == 404 {
        Some("Rails Action Cable")
    } else if body.contains("upgrader.checkorigin")
        || body.contains("websocket: request origin not allowed")
    {
        Some("gorilla/websocket")
    } else if body.contains("phoenix") {
        Some("Phoenix")
    } else if resp.header("wsgate-reason").is_some()
        || resp.header("x-request-id").is_some() && s.is_empty() && resp.status == 101
    {
        Some("wsgate")
    } else if resp.header("cf-ray").is_some() || s.contains("cloudflare") {
        Some("Cloudflare")
    } else if resp.header("x-amzn-requestid").is_some() || resp.header("x-amz-apigw-id").is_some() {
        Some("AWS API Gateway")
    } else if s.contains("nginx") {
        Some("nginx")
    } else if s.contains("envoy") || body.contains("rbac: access denied") {
        Some("Envoy")
    } else if body.contains("request forbidden by administrative rules") {
        Some("HAProxy")
    } else if s.contains("apache") {
        Some("Apache")
    } else if s.contains("websockets") && s.contains("python") {
        Some("Python websockets")
    } else {
        None
    };
    ServerInfo {
        software: software.map(str::to_owned),
        header: server,
        reason: resp.header("wsgate-reason").map(str::to_owned),
        request_id: resp.header("x-request-id").map(str::to_owned),
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
    fn recognises_servers() {
        let s = |r: Response| server_info(&r, "/ws").software;
        assert_eq!(
            s(resp(403, &[("Server", "nginx/1.22.1")], "")).as_deref(),
            Some("nginx")
        );
        assert_eq!(
            s(resp(403, &[("wsgate-reason", "origin.not_allowed")], "")).as_deref(),
            Some("wsgate")
        );
        assert_eq!(
            s(resp(403, &[], "RBAC: access denied")).as_deref(),
            Some("Envoy")
        );
        assert_eq!(
            s(resp(403, &[("cf-ray", "x")], "")).as_deref(),
            Some("Cloudflare")
        );
        assert_eq!(
            s(resp(403, &[("Server", "Python/3.11 websockets/17.4")], "")).as_deref(),
            Some("Python websockets")
        );
        let devtools = "Rejected an incoming WebSocket connection from the http://x origin. Use the command line flag --remote-allow-origins=http://x to allow connections from this origin or --remote-allow-origins=* to allow all origins.";
        assert_eq!(
            s(resp(403, &[], devtools)).as_deref(),
            Some("Chromium DevTools")
        );
        assert_eq!(
            s(resp(
                403,
                &[],
                "websocket: request origin not allowed by Upgrader.CheckOrigin"
            ))
            .as_deref(),
            Some("gorilla/websocket")
        );
        assert_eq!(
            server_info(&resp(404, &[], ""), "/cable")
                .software
                .as_deref(),
            Some("Rails Action Cable")
        );
        assert_eq!(
            server_info(
                &resp(400, &[], r#"{"code":3,"message":"Bad request"}"#),
                "/socket.io/?EIO=4"
            )
            .software
            .as_deref(),
            Some("Socket.IO")
        );
    }

    #[test]
    fn without_experiments_the_answer_alone_is_read() {
        let no_token = Request {
            origin: None,
            token: None,
            subprotocols: vec![],
            headers: vec![],
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
