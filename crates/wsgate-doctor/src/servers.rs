//! The servers the doctor knows: how each is recognised from what it answered (headers, status
//! line, body, the path asked for, and the answer to one plain request), and which of its own
//! settings fixes each cause. A fix names the software it applies to; wsgate's configuration is
//! advised only to wsgate, and an unrecognised server gets the general fix with examples from the
//! common stacks.
//!
//! The answers these rules read were taken from the servers themselves where they run here
//! (Python `websockets`, Node `ws` and Socket.IO, Tornado, python-socketio and Starlette on
//! uvicorn, Django Channels on daphne, nginx, HAProxy, Apache: see
//! `tests/test_doctor_frameworks.py`); for the others (cloud gateways and CDNs, which tests may not
//! reach, and the JVM/.NET/Go/Elixir/Ruby stacks, Envoy, Traefik and Caddy, not installable here)
//! they follow those products' documented answers, and the unit tests below keep one example
//! answer of each.

use crate::probe::Response;
use crate::Reason;
use serde::Serialize;

/// How sure a recognition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// A hint several products share (a response's shape, a path).
    Low,
    /// Behaviour typical of the product, not stated by it.
    Medium,
    /// The product names itself (a `Server` header, its own wording).
    High,
}

impl Confidence {
    /// The word the reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::Low => "low",
            Confidence::Medium => "medium",
            Confidence::High => "high",
        }
    }
}

/// Where a product sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It runs the WebSocket endpoint (a library, framework or application server).
    App,
    /// It stands in front (a proxy, load balancer, CDN or gateway).
    Front,
}

/// A product recognised in an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recognised {
    /// Its name, as fixes name it.
    pub name: &'static str,
    /// What identified it.
    pub evidence: String,
    /// How sure that is.
    pub confidence: Confidence,
    /// Endpoint or front door.
    pub role: Role,
}

/// What recognition looks at.
pub struct Seen<'a> {
    /// The answer to the handshake.
    pub resp: &'a Response,
    /// The path (and query) asked for.
    pub path: &'a str,
    /// The answer to a plain GET of the same URL, when the doctor sent one.
    pub plain: Option<&'a Response>,
}

/// The names, as the README lists them.
pub const KNOWN: &[&str] = &[
    "wsgate",
    "nginx",
    "Apache",
    "HAProxy",
    "Envoy",
    "Traefik",
    "Caddy",
    "Cloudflare",
    "AWS ALB",
    "AWS API Gateway",
    "Python websockets",
    "Node ws",
    "Socket.IO (Node)",
    "Socket.IO (Python)",
    "Tornado",
    "uvicorn (Starlette/FastAPI)",
    "daphne (Django Channels)",
    "Spring",
    "ASP.NET Core",
    "gorilla/websocket",
    "Phoenix",
    "Rails Action Cable",
    "Chromium DevTools",
];

fn has(r: &Response, name: &str) -> bool {
    r.header(name).is_some()
}

fn header_has(r: &Response, name: &str, needle: &str) -> bool {
    r.header(name)
        .is_some_and(|v| v.to_ascii_lowercase().contains(needle))
}

/// Node's `http.STATUS_CODES` wording, which `ws` sends as the whole body of its refusals.
fn bare_status_text(r: &Response) -> bool {
    let body = r.body.trim();
    !body.is_empty() && body.eq_ignore_ascii_case(r.reason.trim())
}

/// The header names of an answer, lower-cased, in order.
fn names(r: &Response) -> Vec<String> {
    r.headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect()
}

/// Every product an answer shows, endpoint first, then front doors; each once.
pub fn recognise(seen: &Seen<'_>) -> Vec<Recognised> {
    let mut found: Vec<Recognised> = Vec::new();
    let mut add =
        |name: &'static str, role: Role, confidence: Confidence, evidence: String| match found
            .iter_mut()
            .find(|f| f.name == name)
        {
            Some(f) if f.confidence < confidence => {
                f.confidence = confidence;
                f.evidence = evidence;
            }
            Some(_) => {}
            None => found.push(Recognised {
                name,
                evidence,
                confidence,
                role,
            }),
        };
    let answers: Vec<(&Response, &str)> = std::iter::once((seen.resp, "the refusal"))
        .chain(seen.plain.map(|p| (p, "a plain GET of the same URL")))
        .collect();
    let path = seen.path.to_ascii_lowercase();
    use Confidence::*;
    use Role::*;
    for (r, which) in answers {
        let server = r.header("server").unwrap_or("").to_owned();
        let s = server.to_ascii_lowercase();
        let body = r.body.to_ascii_lowercase();
        let said = |what: &str| format!("{which}: {what}");
        if has(r, "wsgate-reason") {
            add("wsgate", App, High, said("the wsgate-reason header"));
        }
        if s.contains("websockets") && s.contains("python") {
            add(
                "Python websockets",
                App,
                High,
                said(&format!("Server: {server}")),
            );
        } else if body.starts_with("failed to open a websocket connection:") {
            add(
                "Python websockets",
                App,
                Medium,
                said("the websockets library's wording (\"Failed to open a WebSocket connection: …\")"),
            );
        }
        if s.starts_with("tornadoserver") {
            add("Tornado", App, High, said(&format!("Server: {server}")));
        } else if body.contains("cross origin websockets not allowed")
            || body.contains("can \"upgrade\" only to \"websocket\"")
        {
            add("Tornado", App, High, said("Tornado's own wording"));
        }
        if s.contains("uvicorn") {
            add(
                "uvicorn (Starlette/FastAPI)",
                App,
                High,
                said(&format!("Server: {server}")),
            );
        } else if r.status == 403
            && r.body.is_empty()
            && server.is_empty()
            && names(r) == ["date", "connection", "content-length", "content-type"]
            && header_has(r, "content-type", "text/plain; charset=utf-8")
        {
            add(
                "uvicorn (Starlette/FastAPI)",
                App,
                Medium,
                said("an empty 403 in the shape uvicorn gives a WebSocket its app closed before accepting (no Server header)"),
            );
        }
        if r.status == 403 && r.reason.eq_ignore_ascii_case("access denied") && r.headers.is_empty()
        {
            add(
                "daphne (Django Channels)",
                App,
                High,
                said("the status line \"403 Access denied\" with no headers (daphne refusing a WebSocket)"),
            );
        } else if s.contains("daphne") || body.contains("<footer>daphne</footer>") {
            add(
                "daphne (Django Channels)",
                App,
                High,
                said("daphne's Server header or page"),
            );
        }
        if path.contains("/socket.io/") || body.contains("\"transport unknown\"") {
            let python = body.contains("not an accepted origin")
                || body.contains("\"invalid websocket upgrade\"");
            let node = body.contains("{\"code\":");
            let (name, why) = if python {
                ("Socket.IO (Python)", "python-engineio's wording")
            } else if node {
                ("Socket.IO (Node)", "engine.io's JSON error")
            } else {
                ("Socket.IO (Node)", "the /socket.io/ path")
            };
            let confidence = if python || node { High } else { Low };
            add(name, App, confidence, said(why));
        }
        let ws_messages = [
            "missing or invalid sec-websocket-key header",
            "missing or invalid sec-websocket-version header",
            "invalid sec-websocket-protocol header",
            "invalid or unacceptable sec-websocket-extensions header",
            "invalid upgrade header",
        ];
        if ws_messages.iter().any(|m| body.trim() == *m) {
            add("Node ws", App, High, said("the ws library's own message"));
        } else if server.is_empty()
            && !has(r, "date")
            && names(r) == ["connection", "content-type", "content-length"]
            && header_has(r, "content-type", "text/html")
            && bare_status_text(r)
        {
            add(
                "Node ws",
                App,
                Medium,
                said("ws's refusal shape: Connection, Content-Type: text/html, Content-Length, no Date, the status text as body"),
            );
        }
        if body.contains("--remote-allow-origins") {
            add(
                "Chromium DevTools",
                App,
                High,
                said("DevTools' --remote-allow-origins message"),
            );
        } else if path.starts_with("/devtools/") {
            add(
                "Chromium DevTools",
                App,
                Medium,
                said("the /devtools/ path"),
            );
        }
        if body.contains("websocket: request origin not allowed by upgrader.checkorigin")
            || body.starts_with("websocket: ")
        {
            add(
                "gorilla/websocket",
                App,
                High,
                said("gorilla/websocket's \"websocket: …\" error"),
            );
        }
        if s.contains("kestrel") {
            add(
                "ASP.NET Core",
                App,
                High,
                said(&format!("Server: {server}")),
            );
        } else if s.contains("microsoft-iis") {
            add(
                "ASP.NET Core",
                App,
                Medium,
                said(&format!("Server: {server} (IIS)")),
            );
        }
        let vary: Vec<String> = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("vary"))
            .map(|(_, v)| v.to_ascii_lowercase())
            .collect();
        if vary
            .iter()
            .any(|v| v.contains("access-control-request-method"))
            && vary.iter().any(|v| v.contains("origin"))
            || body.contains("\"timestamp\"")
                && body.contains("\"error\"")
                && body.contains("\"path\"")
        {
            add(
                "Spring",
                App,
                Medium,
                said("Spring's Vary headers or its JSON error page"),
            );
        }
        if s.contains("cowboy") && (path.ends_with("/websocket") || path.contains("/websocket?")) {
            add(
                "Phoenix",
                App,
                Medium,
                said("Cowboy serving a /websocket path (Phoenix sockets)"),
            );
        } else if body.contains("phoenix") {
            add("Phoenix", App, Low, said("the word Phoenix in the answer"));
        }
        if path.starts_with("/cable") && r.status == 404 {
            add(
                "Rails Action Cable",
                App,
                Medium,
                said("a 404 at /cable (Action Cable refuses disallowed origins with 404)"),
            );
        } else if has(r, "x-runtime") && has(r, "x-request-id") {
            add(
                "Rails Action Cable",
                App,
                Low,
                said("Rails' X-Runtime header"),
            );
        }
        // Front doors.
        if s.starts_with("nginx") || body.contains("<center>nginx") {
            add(
                "nginx",
                Front,
                High,
                said("nginx's Server header or error page"),
            );
        }
        if s.starts_with("apache") || body.contains("<address>apache") {
            add(
                "Apache",
                Front,
                High,
                said("Apache's Server header or error page"),
            );
        }
        if body.contains("request forbidden by administrative rules")
            || body.contains("no server is available to handle this request")
        {
            add(
                "HAProxy",
                Front,
                High,
                said("HAProxy's built-in error page"),
            );
        }
        if s.starts_with("envoy")
            || has(r, "x-envoy-upstream-service-time")
            || body.contains("rbac: access denied")
        {
            add(
                "Envoy",
                Front,
                High,
                said("Envoy's Server/x-envoy header or RBAC text"),
            );
        }
        if s.starts_with("caddy") {
            add("Caddy", Front, High, said(&format!("Server: {server}")));
        }
        if s.contains("traefik") {
            add("Traefik", Front, High, said(&format!("Server: {server}")));
        } else if server.is_empty() && r.body == "404 page not found\n" {
            add(
                "Traefik",
                Front,
                Low,
                said("Go's \"404 page not found\" with no Server header (Traefik's default, or another Go server)"),
            );
        }
        if has(r, "cf-ray") || s == "cloudflare" {
            add(
                "Cloudflare",
                Front,
                High,
                said("the cf-ray header or Server: cloudflare"),
            );
        }
        if s.starts_with("awselb") {
            add("AWS ALB", Front, High, said(&format!("Server: {server}")));
        }
        if has(r, "x-amz-apigw-id") || has(r, "x-amzn-errortype") {
            add(
                "AWS API Gateway",
                Front,
                High,
                said("API Gateway's x-amz-apigw-id / x-amzn-ErrorType headers"),
            );
        } else if has(r, "x-amzn-requestid") {
            add(
                "AWS API Gateway",
                Front,
                Medium,
                said("the x-amzn-RequestId header"),
            );
        }
    }
    // uvicorn carries Socket.IO (Python) as well as Starlette: a Socket.IO path names the app.
    if found
        .iter()
        .any(|f| f.name == "Socket.IO (Node)" && f.confidence == Low)
        && found
            .iter()
            .any(|f| f.name == "uvicorn (Starlette/FastAPI)")
    {
        found.retain(|f| f.name != "Socket.IO (Node)" && f.name != "uvicorn (Starlette/FastAPI)");
        found.push(Recognised {
            name: "Socket.IO (Python)",
            evidence: "the /socket.io/ path, answered by uvicorn (python-socketio's ASGI app)"
                .into(),
            confidence: Medium,
            role: App,
        });
    } else if found.iter().any(|f| f.name == "Socket.IO (Python)") {
        found.retain(|f| f.name != "uvicorn (Starlette/FastAPI)");
    }
    // A Spring Boot or Rails hint loses to a product that names itself.
    if found.iter().any(|f| f.role == App && f.confidence == High) {
        found.retain(|f| f.role == Front || f.confidence == High);
    }
    found.sort_by_key(|f| (f.role == Front, std::cmp::Reverse(f.confidence)));
    found
}

/// A Cloudflare (or similar) challenge instead of the origin's answer.
pub fn challenge(r: &Response) -> Option<String> {
    if header_has(r, "cf-mitigated", "challenge") {
        return Some("Cloudflare marked the answer `cf-mitigated: challenge`".into());
    }
    let body = r.body.to_ascii_lowercase();
    let cf = has(r, "cf-ray") || header_has(r, "server", "cloudflare");
    let page = body.contains("/cdn-cgi/challenge-platform")
        || body.contains("<title>just a moment...</title>")
        || body.contains("cf-chl-");
    if cf && page && matches!(r.status, 403 | 429 | 503) {
        let cookie = r
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v.starts_with("__cf_bm="));
        return Some(format!(
            "Cloudflare answered {} with its challenge page (cf-ray{})",
            r.status,
            if cookie { ", a __cf_bm cookie" } else { "" }
        ));
    }
    None
}

/// What a fix may quote.
pub struct Context<'a> {
    /// The Origin sent (or a placeholder).
    pub origin: &'a str,
    /// The path asked for.
    pub path: &'a str,
    /// The subprotocols offered.
    pub subprotocols: &'a [String],
}

impl Context<'_> {
    fn host(&self) -> &str {
        let rest = self
            .origin
            .split_once("://")
            .map_or(self.origin, |(_, r)| r);
        rest.split([':', '/']).next().unwrap_or(rest)
    }

    fn protocol(&self) -> &str {
        self.subprotocols.first().map_or("chat.v1", String::as_str)
    }
}

/// The setting to change in `software` for `reason`, when the doctor knows it.
pub fn fix(software: &str, reason: Reason, c: &Context<'_>) -> Option<String> {
    use Reason::*;
    let origin = c.origin;
    let path = c.path.split('?').next().unwrap_or("/");
    let text = match (reason, software) {
        (OriginNotAllowed | OriginMissing, "wsgate") => format!("add the page's origin to the route: `origins = [\"{origin}\"]` (then `wsgate reload`)"),
        (OriginNotAllowed | OriginMissing, "Python websockets") => format!("`serve(handler, host, port, origins=[\"{origin}\"])` (add `None` to the list to admit clients that send no Origin)"),
        (OriginNotAllowed | OriginMissing, "Node ws") => format!("the `verifyClient` option (or your 'upgrade' handler) refused it: let `info.origin === \"{origin}\"` through, from an allowlist"),
        (OriginNotAllowed | OriginMissing, "Tornado") => format!("override `check_origin(self, origin)` in the WebSocketHandler to return True for \"{origin}\" (by default Tornado refuses an Origin whose host is not the Host header's)"),
        (OriginNotAllowed | OriginMissing, "Socket.IO (Python)") => format!("`socketio.AsyncServer(cors_allowed_origins=[\"{origin}\"])` (python-socketio checks it on WebSocket upgrades too)"),
        (OriginNotAllowed | OriginMissing, "Socket.IO (Node)") => format!("`new Server(httpServer, {{ cors: {{ origin: [\"{origin}\"] }} }})`, and check `allowRequest` if you set one"),
        (OriginNotAllowed | OriginMissing, "uvicorn (Starlette/FastAPI)") => format!("the app closed the WebSocket before `await websocket.accept()` (uvicorn then answers 403): let \"{origin}\" through the check that runs before accept (`websocket.headers[\"origin\"]`)"),
        (OriginNotAllowed | OriginMissing, "daphne (Django Channels)") => format!("Channels' `AllowedHostsOriginValidator` refused it: add \"{}\" to `ALLOWED_HOSTS`, or wrap the app in `OriginValidator(app, [\"{origin}\"])`", c.host()),
        (OriginNotAllowed | OriginMissing, "Spring") => format!("`registry.addHandler(handler, \"{path}\").setAllowedOrigins(\"{origin}\")` (or `setAllowedOriginPatterns`; for STOMP `registry.addEndpoint(\"{path}\")…`)"),
        (OriginNotAllowed | OriginMissing, "ASP.NET Core") => format!("`app.UseWebSockets(new WebSocketOptions {{ AllowedOrigins = {{ \"{origin}\" }} }})`"),
        (OriginNotAllowed | OriginMissing, "gorilla/websocket") => format!("let `Upgrader.CheckOrigin` accept \"{origin}\" (compare `r.Header.Get(\"Origin\")` with your allowlist; never return true for all)"),
        (OriginNotAllowed | OriginMissing | ForbiddenUnconditional, "Phoenix") => format!("add the origin to the socket's `check_origin: [\"{origin}\"]` in the endpoint"),
        (OriginNotAllowed | OriginMissing | HttpNotFound, "Rails Action Cable") => format!("Action Cable refuses disallowed origins with 404: `config.action_cable.allowed_request_origins = [\"{origin}\"]`"),
        (OriginNotAllowed | OriginMissing | ForbiddenUnconditional, "Chromium DevTools") => format!("start the browser with `--remote-allow-origins={origin}` (or connect without an Origin header)"),
        (OriginNotAllowed | OriginMissing, "nginx") => format!("if the nginx configuration checks `$http_origin`, allow it there, e.g. `if ($http_origin !~* ^{}$) {{ return 403; }}`", origin.replace('.', "\\.")),
        (AuthMissing | AuthInvalid, "wsgate") => "put the credential where the route's `auth.sources` look (a browser: a cookie, a query parameter or a subprotocol entry), or list this place in `sources`".into(),
        (AuthMissing | AuthInvalid, "Node ws") => "the `verifyClient` option refused it: read the credential where a browser can put it (`new URL(info.req.url, 'http://x').searchParams`, or a cookie), not only `info.req.headers.authorization`".into(),
        (AuthMissing | AuthInvalid, "uvicorn (Starlette/FastAPI)") => "the endpoint closed before `await websocket.accept()`: read the token from `websocket.query_params` or `websocket.cookies` (browsers cannot set Authorization on a WebSocket)".into(),
        (AuthMissing | AuthInvalid, "Tornado") => "the handler refused in `get_current_user`/`prepare`/`open`: accept the token from a cookie or `self.get_argument(\"token\")` (browsers cannot set Authorization)".into(),
        (AuthMissing | AuthInvalid, "Socket.IO (Python)") => "send the token in the `auth` payload (`io(url, { auth: { token } })`) and check it in `async def connect(sid, environ, auth)`; raise `ConnectionRefusedError` to refuse".into(),
        (AuthMissing | AuthInvalid, "Socket.IO (Node)") => "send the token in the `auth` payload (`io(url, { auth: { token } })`) and check `socket.handshake.auth.token` in `io.use((socket, next) => …)`".into(),
        (AuthMissing | AuthInvalid, "daphne (Django Channels)") => "`AuthMiddlewareStack` reads Django's session cookie; for a token, add a middleware that reads `scope[\"query_string\"]` and sets `scope[\"user\"]`".into(),
        (AuthMissing | AuthInvalid | ForbiddenUnconditional, "AWS API Gateway") => "the `$connect` route's authorizer refused: a missing identity source gives 401, a Deny 403. Browsers cannot set headers on a WebSocket: use `route.request.querystring.token` as the identity source and check the authorizer's logs".into(),
        (AuthMissing | AuthInvalid, "Spring") => "Spring Security refused the upgrade: authenticate the endpoint by cookie or query parameter (browsers cannot set Authorization), or permit it and authenticate the first message".into(),
        (AuthMissing | AuthInvalid, "ASP.NET Core") => "read the token from the query string for WebSocket requests: in `JwtBearerEvents.OnMessageReceived` set `context.Token = context.Request.Query[\"access_token\"]`".into(),
        (SubprotocolUnsupported, "Python websockets") => format!("`serve(handler, host, port, subprotocols=[\"{}\"])`: list the subprotocol the client offers", c.protocol()),
        (SubprotocolUnsupported, "Node ws") => format!("the `handleProtocols(protocols, request)` option must return one of the offered names (e.g. \"{}\")", c.protocol()),
        (SubprotocolUnsupported | SubprotocolNotEchoed, "Tornado") => format!("override `select_subprotocol(self, subprotocols)` to return \"{}\"", c.protocol()),
        (SubprotocolUnsupported | SubprotocolNotEchoed, "uvicorn (Starlette/FastAPI)") => format!("accept with the subprotocol: `await websocket.accept(subprotocol=\"{}\")`", c.protocol()),
        (SubprotocolUnsupported | SubprotocolNotEchoed, "daphne (Django Channels)") => format!("accept with the subprotocol: `self.accept(subprotocol=\"{}\")`", c.protocol()),
        (SubprotocolUnsupported | SubprotocolNotEchoed, "ASP.NET Core") => format!("`await context.WebSockets.AcceptWebSocketAsync(\"{}\")`", c.protocol()),
        (SubprotocolUnsupported | SubprotocolNotEchoed, "gorilla/websocket") => format!("`Upgrader{{Subprotocols: []string{{\"{}\"}}}}`", c.protocol()),
        (SubprotocolUnsupported | SubprotocolNotEchoed, "Spring") => format!("`DefaultHandshakeHandler.setSupportedProtocols(\"{}\")`, or implement `SubProtocolCapable` in the handler", c.protocol()),
        (SubprotocolUnsupported, "wsgate") => format!("list it in the route: `subprotocols = [\"{}\"]`", c.protocol()),
        (HttpUpgradeRequired | HttpNotWebsocket, "nginx") => "in the location: `proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\";`".into(),
        (HttpUpgradeRequired | HttpNotWebsocket, "Apache") => format!("proxy WebSockets with mod_proxy_wstunnel: `ProxyPass \"{path}\" \"ws://backend{path}\"` (or `upgrade=websocket` on the ProxyPass)"),
        (HttpUpgradeRequired | HttpNotWebsocket, "HAProxy") => "HAProxy forwards upgrades by itself: remove `option httpclose`/`http-server-close` for this backend and set `timeout tunnel 1h`".into(),
        (HttpUpgradeRequired | HttpNotWebsocket, "Envoy") => "enable upgrades on the route or HTTP connection manager: `upgrade_configs: [{ upgrade_type: websocket }]`".into(),
        (HttpUpgradeRequired | HttpNotWebsocket | HttpNotFound, "Socket.IO (Node)" | "Socket.IO (Python)") => "Socket.IO speaks its own protocol over WebSocket: connect with a Socket.IO client, or use the engine URL `/socket.io/?EIO=4&transport=websocket`".into(),
        (HttpNotFound, "daphne (Django Channels)") => "add the path to the websocket `URLRouter` (`path(\"ws/…/\", Consumer.as_asgi())`); Django paths usually end with a slash".into(),
        (HttpNotFound, "uvicorn (Starlette/FastAPI)") => "add a `WebSocketRoute` (FastAPI: `@app.websocket(\"/ws\")`) for this path".into(),
        (ForbiddenUnconditional, "nginx") => "look for `deny`/`allow` rules, `limit_except` and `return 403` in the server and location blocks for this path".into(),
        (ForbiddenUnconditional, "Apache") => "look for `Require ip`/`Require all denied` and mod_security rules for this path".into(),
        (ForbiddenUnconditional, "HAProxy") => "an `http-request deny` rule or ACL in the frontend matched this request".into(),
        (ForbiddenUnconditional, "Envoy") => "the RBAC filter refused the request; check its policies for this path and principal".into(),
        (ForbiddenUnconditional, "Traefik") => "an IPAllowList (ipWhiteList) middleware or a ForwardAuth middleware on this router refused it".into(),
        (ForbiddenUnconditional, "Caddy") => "a `respond 403` or a `remote_ip` matcher in the site block for this path".into(),
        (ForbiddenUnconditional, "Cloudflare") => "check the WAF and firewall rules (Security → Events) for this request's cf-ray".into(),
        (ForbiddenUnconditional, "AWS ALB") => "a listener rule's fixed 403 or the AWS WAF web ACL on the load balancer".into(),
        (ForbiddenUnconditional, "Node ws") => "`verifyClient` refused every variation: it checks something the doctor cannot vary (the client's address, the path, or an origin allowlist without the ones tried)".into(),
        (ForbiddenUnconditional, "Socket.IO (Node)") => format!("engine.io refused the upgrade (400 \"Forbidden\": the `allowRequest` option said no): let \"{origin}\" (or whatever it checks) through there; `cors` alone does not apply to WebSocket upgrades"),
        (ForbiddenUnconditional, "Socket.IO (Python)") => "python-engineio refused the upgrade whatever was varied: check `cors_allowed_origins` and the `connect` handler".into(),
        (ForbiddenUnconditional, "daphne (Django Channels)") => "the consumer (or a middleware) closed before accepting whatever was varied: check `connect()` and the `ALLOWED_HOSTS`/origin validator".into(),
        (ForbiddenUnconditional, "uvicorn (Starlette/FastAPI)") => "the endpoint closed before `accept()` whatever was varied: check what it tests before accepting".into(),
        (TlsNotTls, "Python websockets") => "serve TLS on this port: `serve(handler, host, port, ssl=ssl_context)` with the certificate and key loaded into the `ssl.SSLContext`".into(),
        (TlsNotTls, "Tornado") => "serve TLS on this port: `app.listen(port, ssl_options={\"certfile\": …, \"keyfile\": …})`".into(),
        (TlsNotTls, "uvicorn (Starlette/FastAPI)" | "Socket.IO (Python)") => "serve TLS on this port: `uvicorn app:app --ssl-certfile cert.pem --ssl-keyfile key.pem` (or a TLS proxy in front)".into(),
        (TlsNotTls, "daphne (Django Channels)") => "serve TLS on this port: `daphne -e ssl:443:privateKey=key.pem:certKey=cert.pem app.asgi:application` (or a TLS proxy in front)".into(),
        (TlsNotTls, "Node ws" | "Socket.IO (Node)") => "serve TLS on this port: create the server with `https.createServer({ cert, key })` and pass it as `new WebSocketServer({ server })`".into(),
        (TlsNotTls, "nginx") => "`listen 443 ssl;` with `ssl_certificate` and `ssl_certificate_key` in this server block".into(),
        (TlsNotTls, "wsgate") => "give the listener `[listener.tls]` `cert` and `key` (`wsgate cert dev` makes a development pair)".into(),
        (CdnChallenge, "Cloudflare") => format!("exempt the WebSocket path from challenges: a WAF custom rule for `http.request.uri.path eq \"{path}\"` with the Skip action (Bot Fight Mode and Managed Challenge rules), or turn Bot Fight Mode off"),
        _ => return None,
    };
    Some(text)
}

/// The client's fix when the server is not wsgate, for the causes whose catalog text speaks of
/// wsgate's routes; `admitted` is the variation that worked, if one did.
pub fn client_fix(reason: Reason, admitted: Option<&str>) -> Option<String> {
    use Reason::*;
    let text = match reason {
        AuthMissing => match admitted {
            Some(w) => format!("send the credential in {}, where the server took it; browsers cannot set Authorization on a WebSocket, so a query parameter, a cookie or a subprotocol entry is the usual place", w.strip_prefix("credential in ").unwrap_or(w)),
            None => "send a credential where the server reads it (its documentation says where); browsers cannot set Authorization on a WebSocket, so a query parameter, a cookie or a subprotocol entry is the usual place".into(),
        },
        SubprotocolUnsupported => "offer a subprotocol the server supports (a refusal's text often lists them), or none if the server allows that".into(),
        _ => return None,
    };
    Some(text)
}

/// The cause in one sentence for a server other than wsgate, where the catalog's sentence speaks
/// of wsgate's routes.
pub fn summary(reason: Reason) -> Option<&'static str> {
    use Reason::*;
    Some(match reason {
        OriginNotAllowed => "The server does not allow the web page's origin (the Origin header) to open WebSockets here.",
        OriginMissing => "The server refuses requests without an Origin header: it admits browser pages only.",
        AuthMissing => "The server wants a credential and did not find one where it looks.",
        AuthInvalid => "The server refused the credential that was sent.",
        SubprotocolUnsupported => "None of the subprotocols offered (Sec-WebSocket-Protocol) is one the server supports.",
        HostNotAllowed => "The server does not serve the host name in the Host header.",
        _ => return None,
    })
}

/// The fix for a server the doctor did not recognise (or knows no setting of), with examples
/// from the common stacks; `None` when the catalog's own text already fits any server.
pub fn generic(reason: Reason, c: &Context<'_>) -> Option<String> {
    use Reason::*;
    let origin = c.origin;
    let text = match reason {
        OriginNotAllowed | OriginMissing => format!("allow \"{origin}\" in the server's WebSocket origin check, e.g. Tornado `check_origin`, Socket.IO `cors`, Django Channels `ALLOWED_HOSTS`, Spring `setAllowedOrigins`, ASP.NET `WebSocketOptions.AllowedOrigins`, gorilla `Upgrader.CheckOrigin`, Python websockets `origins=`, Node ws `verifyClient`"),
        AuthMissing | AuthInvalid => "accept the credential where a browser can send it on a WebSocket (a cookie, a query parameter such as `token`, or a subprotocol entry): browsers cannot set Authorization, e.g. Starlette `websocket.query_params`, ASP.NET `OnMessageReceived`, Socket.IO's `auth` payload".into(),
        SubprotocolUnsupported => format!("add \"{}\" to the subprotocols the server accepts, e.g. Python websockets `subprotocols=`, Node ws `handleProtocols`, Tornado `select_subprotocol`, Starlette `accept(subprotocol=…)`", c.protocol()),
        HostNotAllowed => "add the host name clients use to the server's allowed hosts (e.g. Django `ALLOWED_HOSTS`, wsgate `hosts`), or make the proxy in front pass the client's Host".into(),
        HandshakeVersion => "serve RFC 6455 (Sec-WebSocket-Version 13): upgrade the server library, or the client if it offers an old draft".into(),
        ForbiddenUnconditional => "find the rule that refuses this client whatever its Origin, credential or subprotocol: IP allowlists, deny rules, WAF logs, or the application's own check before accepting".into(),
        _ => return None,
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, reason: &str, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            reason: reason.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }

    fn names(r: &Response, path: &str) -> Vec<&'static str> {
        recognise(&Seen {
            resp: r,
            path,
            plain: None,
        })
        .into_iter()
        .map(|f| f.name)
        .collect()
    }

    /// Answers as these servers give them (taken from the real servers where they run here;
    /// following the products' documented answers for the others).
    #[test]
    fn recorded_answers_name_their_server() {
        let cases: Vec<(Response, &str, &str)> = vec![
            (resp(403, "Forbidden", &[("Server", "TornadoServer/6.6.1"), ("Content-Type", "text/html; charset=UTF-8")], "Cross origin websockets not allowed"), "/ws", "Tornado"),
            (resp(403, "Forbidden", &[("Date", "x"), ("Connection", "close"), ("Content-Length", "84"), ("Content-Type", "text/plain; charset=utf-8"), ("Server", "Python/3.11 websockets/17.4")], "Failed to open a WebSocket connection: invalid Origin header: https://evil.example.\n"), "/", "Python websockets"),
            (resp(401, "Unauthorized", &[("Connection", "close"), ("Content-Type", "text/html"), ("Content-Length", "12")], "Unauthorized"), "/", "Node ws"),
            (resp(400, "Bad Request", &[("Connection", "close"), ("Content-Type", "text/html"), ("Content-Length", "47"), ("Sec-WebSocket-Version", "13, 8")], "Missing or invalid Sec-WebSocket-Version header"), "/", "Node ws"),
            (resp(403, "Forbidden", &[("Date", "x"), ("Connection", "close"), ("Content-Length", "0"), ("Content-Type", "text/plain; charset=utf-8")], ""), "/ws", "uvicorn (Starlette/FastAPI)"),
            (resp(403, "Forbidden", &[("Date", "x"), ("Connection", "close"), ("Content-Length", "0"), ("Content-Type", "text/plain; charset=utf-8")], ""), "/socket.io/?EIO=4&transport=websocket", "Socket.IO (Python)"),
            (resp(400, "Bad Request", &[("Content-Type", "application/json")], r#"{"code":0,"message":"Transport unknown"}"#), "/socket.io/?EIO=4&transport=websocket", "Socket.IO (Node)"),
            (resp(400, "Bad Request", &[("Connection", "close"), ("Content-type", "text/html"), ("Content-Length", "9")], "Forbidden"), "/socket.io/?EIO=4&transport=websocket", "Socket.IO (Node)"),
            (resp(403, "Access denied", &[], ""), "/ws/", "daphne (Django Channels)"),
            (resp(403, "Forbidden", &[("Vary", "Origin"), ("Vary", "Access-Control-Request-Method"), ("Vary", "Access-Control-Request-Headers"), ("Content-Length", "0")], ""), "/ws", "Spring"),
            (resp(403, "Forbidden", &[("Server", "Kestrel"), ("Content-Length", "0")], ""), "/ws", "ASP.NET Core"),
            (resp(403, "Forbidden", &[("Content-Type", "text/plain; charset=utf-8")], "websocket: request origin not allowed by Upgrader.CheckOrigin\n"), "/ws", "gorilla/websocket"),
            (resp(403, "Forbidden", &[("server", "Cowboy"), ("content-length", "0")], ""), "/socket/websocket?vsn=2.0.0", "Phoenix"),
            (resp(404, "Not Found", &[("X-Request-Id", "r"), ("X-Runtime", "0.01")], ""), "/cable", "Rails Action Cable"),
            (resp(403, "Forbidden", &[], "Rejected an incoming WebSocket connection from the http://x origin. Use the command line flag --remote-allow-origins=http://x to allow connections from this origin or --remote-allow-origins=* to allow all origins."), "/devtools/browser/1", "Chromium DevTools"),
            (resp(403, "Forbidden", &[("Server", "nginx/1.22.1")], "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n"), "/ws", "nginx"),
            (resp(403, "Forbidden", &[("Server", "Apache/2.4.62 (Debian)")], ""), "/ws", "Apache"),
            (resp(403, "Forbidden", &[("content-length", "93"), ("cache-control", "no-cache"), ("content-type", "text/html")], "<html><body><h1>403 Forbidden</h1>\nRequest forbidden by administrative rules.\n</body></html>\n"), "/ws", "HAProxy"),
            (resp(403, "Forbidden", &[("content-length", "19"), ("content-type", "text/plain"), ("server", "envoy")], "RBAC: access denied"), "/ws", "Envoy"),
            (resp(404, "Not Found", &[("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")], "404 page not found\n"), "/ws", "Traefik"),
            (resp(403, "Forbidden", &[("Server", "Caddy")], ""), "/ws", "Caddy"),
            (resp(403, "Forbidden", &[("Server", "cloudflare"), ("CF-RAY", "8a1b2c3d4e5f-AMS")], "error code: 1020"), "/ws", "Cloudflare"),
            (resp(403, "Forbidden", &[("Server", "awselb/2.0"), ("Content-Type", "text/html")], "<html><head><title>403 Forbidden</title></head><body><center><h1>403 Forbidden</h1></center></body></html>"), "/ws", "AWS ALB"),
            (resp(403, "Forbidden", &[("Content-Type", "application/json"), ("x-amzn-RequestId", "0b1c"), ("x-amz-apigw-id", "AbCd"), ("x-amzn-ErrorType", "AccessDeniedException")], r#"{"message":"Forbidden"}"#), "/production", "AWS API Gateway"),
            (resp(403, "Forbidden", &[("wsgate-reason", "origin.not_allowed"), ("x-request-id", "1")], ""), "/ws", "wsgate"),
        ];
        for (r, path, want) in cases {
            let got = names(&r, path);
            assert_eq!(
                got.first().copied(),
                Some(want),
                "{path}: {got:?} for {r:?}"
            );
        }
    }

    #[test]
    fn a_framework_behind_a_proxy_is_named_with_the_proxy_after_it() {
        let r = resp(
            403,
            "Forbidden",
            &[
                ("Server", "nginx/1.22.1"),
                ("Content-Type", "text/html; charset=UTF-8"),
            ],
            "Cross origin websockets not allowed",
        );
        assert_eq!(names(&r, "/ws"), vec!["Tornado", "nginx"]);
    }

    #[test]
    fn a_plain_get_confirms_what_the_refusal_only_suggests() {
        let refusal = resp(
            403,
            "Forbidden",
            &[
                ("Date", "x"),
                ("Connection", "close"),
                ("Content-Length", "0"),
                ("Content-Type", "text/plain; charset=utf-8"),
            ],
            "",
        );
        let plain = resp(
            404,
            "Not Found",
            &[("date", "x"), ("server", "uvicorn")],
            "Not Found",
        );
        let found = recognise(&Seen {
            resp: &refusal,
            path: "/ws",
            plain: Some(&plain),
        });
        assert_eq!(found[0].name, "uvicorn (Starlette/FastAPI)");
        assert_eq!(found[0].confidence, Confidence::High);
        assert!(
            found[0].evidence.contains("plain GET"),
            "{}",
            found[0].evidence
        );
    }

    #[test]
    fn cloudflare_challenges_are_told_from_refusals() {
        let challenge_page = resp(
            403,
            "Forbidden",
            &[("Server", "cloudflare"), ("cf-ray", "8a1b-AMS"), ("cf-mitigated", "challenge"), ("Set-Cookie", "__cf_bm=abc; path=/")],
            "<!DOCTYPE html><html><head><title>Just a moment...</title></head><body><script src=\"/cdn-cgi/challenge-platform/h/b/orchestrate/chl_page/v1\"></script></body></html>",
        );
        assert!(challenge(&challenge_page).is_some());
        let without_header = Response {
            headers: vec![
                ("Server".into(), "cloudflare".into()),
                ("cf-ray".into(), "x".into()),
                ("Set-Cookie".into(), "__cf_bm=abc".into()),
            ],
            ..challenge_page.clone()
        };
        assert!(challenge(&without_header).unwrap().contains("__cf_bm"));
        let firewall = resp(
            403,
            "Forbidden",
            &[("Server", "cloudflare"), ("cf-ray", "x")],
            "error code: 1020",
        );
        assert!(
            challenge(&firewall).is_none(),
            "a firewall rule is not a challenge"
        );
    }

    #[test]
    fn every_known_name_can_be_recognised_and_fixes_name_the_setting() {
        let c = Context {
            origin: "https://app.example",
            path: "/ws",
            subprotocols: &[],
        };
        for name in KNOWN {
            let any = [
                Reason::OriginNotAllowed,
                Reason::AuthMissing,
                Reason::SubprotocolUnsupported,
                Reason::ForbiddenUnconditional,
                Reason::HttpUpgradeRequired,
                Reason::HttpNotFound,
                Reason::CdnChallenge,
            ]
            .iter()
            .any(|r| fix(name, *r, &c).is_some());
            assert!(any, "{name} has no fix at all");
        }
        assert!(fix("Tornado", Reason::OriginNotAllowed, &c)
            .unwrap()
            .contains("check_origin"));
        assert!(
            fix("daphne (Django Channels)", Reason::OriginNotAllowed, &c)
                .unwrap()
                .contains("\"app.example\"")
        );
        assert!(generic(Reason::OriginNotAllowed, &c)
            .unwrap()
            .contains("Tornado"));
        assert!(fix("nginx", Reason::AuthMissing, &c).is_none());
    }
}
