//! The one catalog of reason codes that `wsgate serve` sends and `wsgate doctor` reports.
//!
//! Every refusal the server can produce is a [`Reason`]. Its stable code, HTTP status, one-line
//! meaning and the fixes for operator and client all come from one table below, so the server's
//! responses, the doctor's diagnosis and `docs/refusals.md` can never disagree.

#![forbid(unsafe_code)]

/// Response header that carries the reason code of a refusal (omitted at `explain = "none"`).
pub const REASON_HEADER: &str = "wsgate-reason";
/// Response header that carries the request id, the key to find the refusal's log line.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// One catalog entry; kept private so the table is the only way entries come to exist.
struct Entry {
    code: &'static str,
    status: u16,
    message: &'static str,
    operator_fix: &'static str,
    client_fix: &'static str,
    evidence: &'static str,
}

macro_rules! catalog {
    ($( $(#[$doc:meta])* $variant:ident => {
        code: $code:literal, status: $status:literal,
        message: $message:literal, operator: $operator:literal, client: $client:literal
        $(, evidence: $evidence:literal)? $(,)?
    } ),+ $(,)?) => {
        /// Why a WebSocket handshake was refused: one variant per stable, documented code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $( $(#[$doc])* $variant, )+
        }

        impl Reason {
            /// Every reason, in catalog order (the order of `docs/refusals.md`).
            pub const ALL: &'static [Reason] = &[ $( Reason::$variant, )+ ];

            fn entry(self) -> &'static Entry {
                match self {
                    $( Reason::$variant => &Entry {
                        code: $code, status: $status, message: $message,
                        operator_fix: $operator, client_fix: $client,
                        evidence: concat!($($evidence)?),
                    }, )+
                }
            }
        }
    };
}

catalog! {
    /// Only `GET` can open a WebSocket (RFC 6455 §4.1).
    HandshakeMethod => {
        code: "handshake.method", status: 405,
        message: "The opening handshake must be an HTTP GET request.",
        operator: "Nothing to change on the server; the client is not speaking WebSocket.",
        client: "Open the connection with a WebSocket client, which sends GET with `Upgrade: websocket`.",
    },
    /// The client asked for a WebSocket version other than 13.
    HandshakeVersion => {
        code: "handshake.version", status: 426,
        message: "Sec-WebSocket-Version must be 13, the only version of RFC 6455.",
        operator: "Nothing to change on the server; version 13 is the only standard version.",
        client: "Use a WebSocket client that speaks RFC 6455 (version 13); the response's `Sec-WebSocket-Version` lists it.",
        evidence: "a refusal whose text names Sec-WebSocket-Version, or that lists the versions it supports in a `Sec-WebSocket-Version` header.",
    },
    /// A plain HTTP request reached a path that only serves WebSockets.
    HandshakeNotUpgrade => {
        code: "handshake.not_upgrade", status: 426,
        message: "This path serves WebSocket connections only; the request did not ask to upgrade.",
        operator: "If a proxy sits in front of wsgate, make it forward `Upgrade` and `Connection` (nginx: `proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\";`).",
        client: "Connect with a WebSocket client (ws:// or wss:// URL), not a plain HTTP client or browser tab.",
    },
    /// `Sec-WebSocket-Key` is missing or is not base64 of 16 bytes.
    HandshakeBadKey => {
        code: "handshake.bad_key", status: 400,
        message: "Sec-WebSocket-Key must be the base64 encoding of exactly 16 random bytes.",
        operator: "Nothing to change on the server; a proxy that rewrites headers could also cause this.",
        client: "Send a fresh `Sec-WebSocket-Key` of 16 random bytes in base64 (24 characters ending in `==`); standard clients do this.",
    },
    /// A header that must appear once appeared several times.
    HandshakeDuplicateHeader => {
        code: "handshake.duplicate_header", status: 400,
        message: "A security-relevant header (Origin, Sec-WebSocket-Key, Sec-WebSocket-Version, Host) appeared more than once.",
        operator: "Check that no proxy in front of wsgate adds a second copy of the header.",
        client: "Send each of Origin, Host, Sec-WebSocket-Key and Sec-WebSocket-Version exactly once.",
    },
    /// The request is malformed in a way the other codes do not name.
    HandshakeBadRequest => {
        code: "handshake.bad_request", status: 400,
        message: "The opening handshake is malformed (HTTP/1.1 or later, a Host header, and `Connection: Upgrade` are required).",
        operator: "If a proxy sits in front of wsgate, make it speak HTTP/1.1 upstream and forward `Connection: upgrade`.",
        client: "Send an HTTP/1.1 GET with Host, `Upgrade: websocket`, `Connection: Upgrade`, Sec-WebSocket-Key and `Sec-WebSocket-Version: 13`.",
    },
    /// The upgrade request announces a body, which a handshake never has.
    HandshakeBody => {
        code: "handshake.body", status: 400,
        message: "The opening handshake carries a body (Content-Length or Transfer-Encoding); a WebSocket handshake has none.",
        operator: "Nothing to change on the server: in front of an upstream, such requests are request-smuggling shapes, so they are refused before any gate. Check that no proxy in front adds these headers.",
        client: "Send the handshake without a body and without `Content-Length`/`Transfer-Encoding` headers; standard WebSocket clients do.",
    },
    /// The request head is larger than the configured bound.
    HandshakeHeadTooLarge => {
        code: "handshake.head_too_large", status: 431,
        message: "The request head (all headers, or one header) is larger than the server accepts.",
        operator: "Raise `limits.max_head_bytes` or `limits.max_header_bytes` if legitimate clients send large headers (big cookies); the log line names which bound was passed.",
        client: "Send fewer or smaller headers: large cookies for the server's domain are the usual cause.",
    },
    /// No route matches the request path.
    RouteNotFound => {
        code: "route.not_found", status: 404,
        message: "No WebSocket route is configured for this path.",
        operator: "Add a `[[route]]` whose `path` matches, or correct the path the client uses; `wsgate check` lists the routes.",
        client: "Check the URL's path against the server's documented endpoints (a missing or extra slash counts).",
    },
    /// The client offered subprotocols and the route supports none of them, or requires one.
    SubprotocolUnsupported => {
        code: "subprotocol.unsupported", status: 400,
        message: "None of the subprotocols the client offered (Sec-WebSocket-Protocol) is supported by this route.",
        operator: "Add the client's subprotocol to the route's `subprotocols`, or set `subprotocol_required = false` if the route can work without one.",
        client: "Offer one of the route's subprotocols (the refusal detail lists them), or none if the route allows it.",
        evidence: "refused while offering subprotocols and admitted when offering none, or a refusal whose text names the subprotocol.",
    },
    /// The client address is denied, or not allowed, by the firewall rules.
    FirewallIpDenied => {
        code: "firewall.ip_denied", status: 403,
        message: "The client's IP address is not allowed to connect.",
        operator: "Check `firewall.allow`/`deny` (global) and the route's `firewall`; behind a proxy, list the proxy in `firewall.trusted_proxies` so the real client address is used instead of the proxy's.",
        client: "Connect from an allowed network (VPN, office), or ask the operator to allow your address; the request id identifies the attempt.",
    },
    /// The client address is temporarily banned after repeated refusals.
    FirewallBanned => {
        code: "firewall.banned", status: 403,
        message: "The client's IP address is temporarily banned after too many refused handshakes.",
        operator: "The ban lifts by itself after `firewall.ban.duration`; if clients trip it by mistake, fix their configuration or raise `firewall.ban.after`.",
        client: "Stop retrying, fix the cause of the earlier refusals (see their reason codes), and retry after the ban expires.",
    },
    /// The route requires a client certificate and the TLS handshake presented none.
    TlsClientCertRequired => {
        code: "tls.client_cert_required", status: 403,
        message: "This route requires a client certificate (mutual TLS) and none was presented.",
        operator: "Issue the client a certificate from the CA in the listener's `tls.client_ca`; routes that need none should not set `client_cert = \"required\"`.",
        client: "Connect with your client certificate and key (e.g. `--cert`/`--key`, or the browser's certificate store), issued by the server's client CA.",
    },
    /// The Host header is not one the server answers to.
    HostNotAllowed => {
        code: "host.not_allowed", status: 403,
        message: "The Host header names a host this route does not serve (DNS-rebinding defence).",
        operator: "Add the public host name (and port, if clients use one) to the route's `hosts`.",
        client: "Connect using the server's documented host name, not an IP address or another name.",
        evidence: "a refusal whose text names the Host header or the host name.",
    },
    /// The page's origin is not on the route's allowlist.
    OriginNotAllowed => {
        code: "origin.not_allowed", status: 403,
        message: "The web page's origin (the Origin header) is not allowed to open WebSockets on this route.",
        operator: "Add the page's exact origin (scheme, host and port, e.g. `https://app.example.com`) to the route's `origins`; the log line names the origin received and the nearest allowed entry.",
        client: "Load the page from an allowed origin; a different port or http instead of https is a different origin.",
        evidence: "refused with the page's Origin and admitted with another (the server's own, the other scheme) or without one; or a refusal whose text names the Origin; or a server that states this code.",
    },
    /// The route admits browsers only and the request had no Origin.
    OriginMissing => {
        code: "origin.missing", status: 403,
        message: "The request has no Origin header and this route admits browser pages only.",
        operator: "Set `allow_missing_origin = true` on the route if non-browser clients should connect.",
        client: "Connect from a web page, or send the Origin of an allowed page.",
        evidence: "refused without an Origin and admitted with one (the server's own); or a refusal whose text says the Origin is missing.",
    },
    /// No credential was found in any of the route's credential sources.
    AuthMissing => {
        code: "auth.missing", status: 401,
        message: "The route requires a credential and none was found in the places it looks.",
        operator: "Check the route's `auth.sources`; browsers cannot set `Authorization` on a WebSocket, so offer a cookie, query or subprotocol source to browser clients.",
        client: "Send the credential in one of the route's sources: `Authorization: Bearer`, the configured cookie, `?access_token=` or a subprotocol entry with the configured prefix (browsers: use the cookie, query or subprotocol).",
        evidence: "admitted once the credential is sent in another place (header, query parameter); or a 401 with WWW-Authenticate, or a refusal whose text asks for a token, while no credential was sent.",
    },
    /// A credential was found but is not valid.
    AuthInvalid => {
        code: "auth.invalid", status: 401,
        message: "The credential the client presented is not valid for this route.",
        operator: "Check that the key or token the client uses is configured (`auth.api_keys` holds SHA-256 digests: `printf %s KEY | sha256sum`).",
        client: "Use a current credential for this server; check for truncation or a stray space.",
        evidence: "a 401 with WWW-Authenticate, or a refusal whose text names the token, while a credential was sent, and no other place for it was admitted.",
    },
    /// The credential was valid once but has expired.
    AuthExpired => {
        code: "auth.expired", status: 401,
        message: "The client's token has expired.",
        operator: "Nothing to change unless clocks are skewed: the route's `auth.jwt.leeway` allows for small clock differences.",
        client: "Get a fresh token and reconnect; refresh tokens before `exp`, and reconnect with the new one.",
    },
    /// The external authentication service could not be asked.
    AuthUnavailable => {
        code: "auth.unavailable", status: 503,
        message: "The service that checks credentials for this route did not answer, or answered with an error.",
        operator: "Check the route's `auth.external.url` service: the log line names the timeout, connection error or status it gave (only 2xx, 401 and 403 are decisions).",
        client: "Retry after `Retry-After`; the credential was not judged, so it may well be valid.",
    },
    /// The client is authenticated but not allowed on this route.
    AuthzForbidden => {
        code: "authz.forbidden", status: 403,
        message: "The client is authenticated but not allowed to use this route or channel.",
        operator: "The log line names the rule that failed (require_claims, require_scopes or channel); grant the claim or scope to the client, or relax the route's `authz`.",
        client: "Ask for a token or key that carries the needed claim, scope or channel; a new login may be needed after permissions change.",
    },
    /// The server is at its configured connection cap.
    LimitConnections => {
        code: "limit.connections", status: 503,
        message: "The server is at its maximum number of open WebSocket connections.",
        operator: "Raise `limits.max_connections` if the machine has room, or add instances behind a load balancer.",
        client: "Retry after the delay in `Retry-After`, with backoff.",
    },
    /// The client opens handshakes faster than its rate allows.
    LimitRate => {
        code: "limit.rate", status: 429,
        message: "The client is opening connections faster than the server allows.",
        operator: "Raise `limits.handshake_rate`/`handshake_burst` if legitimate clients hit it (many users behind one NAT address, or a proxy not in `firewall.trusted_proxies`).",
        client: "Wait for `Retry-After` seconds and reconnect with exponential backoff and jitter, not in a tight loop.",
    },
    /// The client address or identity holds its maximum of open connections.
    LimitClientConnections => {
        code: "limit.client_connections", status: 429,
        message: "This client (address or identity) already has the maximum number of open connections.",
        operator: "Raise `limits.max_connections_per_client` or `max_connections_per_identity` if clients legitimately need more.",
        client: "Close connections you no longer use (another tab or a leaked socket), or share one connection.",
    },
    /// The client address has too many handshakes in progress (slow TLS hellos or request heads).
    LimitHandshakesInProgress => {
        code: "limit.handshakes_in_progress", status: 429,
        message: "This client address has too many connections still in their TLS handshake or request head.",
        operator: "Raise `limits.max_handshakes_per_client` if many legitimate clients share one address (a NAT, or a proxy not in `firewall.trusted_proxies`); a client that opens connections and sends slowly is holding them on purpose.",
        client: "Finish each handshake before opening the next connection, and open them one at a time with backoff.",
    },
    /// A clustered node cannot reach Redis and is configured to refuse rather than count alone.
    ClusterUnavailable => {
        code: "cluster.unavailable", status: 503,
        message: "The server cannot reach the store it shares with the other nodes, and refuses new connections until it can.",
        operator: "Bring Redis (`cluster.redis`) back; the log says when the node lost and regained it. `cluster.on_redis_down = \"local\"` admits clients meanwhile with limits counted per node.",
        client: "Reconnect after the delay in `Retry-After`; another node may answer.",
    },
    /// The server is shutting down and accepts no new connections.
    ServerDraining => {
        code: "server.draining", status: 503,
        message: "The server is shutting down and accepts no new connections.",
        operator: "Expected during a restart or deploy; make the load balancer stop routing to an instance before it drains.",
        client: "Reconnect after the delay in `Retry-After`; another instance will answer.",
    },
    /// The proxy route's upstream answered the handshake with something other than 101.
    UpstreamRefused => {
        code: "upstream.refused", status: 502,
        message: "The upstream WebSocket server refused the handshake that wsgate forwarded.",
        operator: "Look at the upstream status in wsgate's log line for this request id; check the upstream's own policy (origin, auth) and the headers in the route's `forward_headers`.",
        client: "Nothing to change on the client if it was admitted by wsgate; report the request id to the operator.",
    },
    /// The proxy route's upstream could not be reached or did not complete the handshake in time.
    UpstreamUnreachable => {
        code: "upstream.unreachable", status: 502,
        message: "The upstream WebSocket server could not be reached, or did not answer in time.",
        operator: "Check that the route's `upstream` URL is right and that the server is running; the log line for this request id names the error.",
        client: "Retry later; report the request id to the operator if it persists.",
    },
    /// Found by the doctor: the server's host name does not resolve to any address.
    DnsUnresolved => {
        code: "dns.unresolved", status: 0,
        message: "The server's host name does not resolve to any address.",
        operator: "Publish the DNS record (A/AAAA) for the host, or fix its spelling in the URL you hand out.",
        client: "Check the host name in the URL for typos; try `--resolve host:port:address` if you know the address.",
        evidence: "the resolver's answer: no such name, or no address.",
    },
    /// Found by the doctor: nothing is listening on that address and port (the connection was refused).
    TcpRefused => {
        code: "tcp.refused", status: 0,
        message: "Nothing is listening on that address and port (the connection was refused).",
        operator: "Start the server, or check that it listens on this port and on this interface (127.0.0.1 is not reachable from elsewhere).",
        client: "Check the port in the URL (ws:// defaults to 80, wss:// to 443) and that the server runs.",
        evidence: "the connection attempt was refused (RST) by the address.",
    },
    /// Found by the doctor: the TCP connection was not answered in time: a firewall dropping packets, or a wrong address.
    TcpTimeout => {
        code: "tcp.timeout", status: 0,
        message: "The TCP connection was not answered in time: a firewall dropping packets, or a wrong address.",
        operator: "Open the port in the firewall or security group between the client and the server.",
        client: "Check the address and port; a VPN or corporate firewall may block it.",
        evidence: "no answer to the connection attempt within the timeout.",
    },
    /// Found by the doctor: the connection was reset before the handshake finished (a proxy, firewall or crashed server).
    TcpReset => {
        code: "tcp.reset", status: 0,
        message: "The connection was reset before the handshake finished (a proxy, firewall or crashed server).",
        operator: "Look at the server's and any proxy's logs at this time; resets without a response often come from a WAF or an overloaded server.",
        client: "Retry; if it persists, report the time to the operator.",
        evidence: "the connection was closed or reset before any HTTP answer, on a port that is not TLS either.",
    },
    /// Found by the doctor: the server's certificate is not signed by a certificate authority the client trusts (self-signed or a private CA).
    TlsUntrusted => {
        code: "tls.untrusted", status: 0,
        message: "The server's certificate is not signed by a certificate authority the client trusts (self-signed or a private CA).",
        operator: "Serve a certificate from a public CA (e.g. Let's Encrypt) with its full chain, intermediates included.",
        client: "Trust the private CA explicitly (`--cacert ca.pem`), never by disabling verification in production.",
        evidence: "the certificate chain does not verify against the trusted roots (and `--cacert`).",
    },
    /// Found by the doctor: the server's certificate has expired.
    TlsExpired => {
        code: "tls.expired", status: 0,
        message: "The server's certificate has expired.",
        operator: "Renew the certificate and reload the server (wsgate reloads changed files by itself).",
        client: "Nothing to change on the client; check your clock if the date looks wrong.",
        evidence: "the leaf certificate's notAfter is in the past.",
    },
    /// Found by the doctor: the server's certificate is not valid yet (its start date is in the future).
    TlsNotYetValid => {
        code: "tls.not_yet_valid", status: 0,
        message: "The server's certificate is not valid yet (its start date is in the future).",
        operator: "Check the server's clock and the certificate's dates.",
        client: "Check the client machine's clock.",
        evidence: "the leaf certificate's notBefore is in the future.",
    },
    /// Found by the doctor: the certificate is valid, but for other host names than the one in the URL.
    TlsHostnameMismatch => {
        code: "tls.hostname_mismatch", status: 0,
        message: "The certificate is valid, but for other host names than the one in the URL.",
        operator: "Add the host name to the certificate's subject alternative names, or serve the right certificate for this name (SNI).",
        client: "Use the host name the certificate was issued for (see the SANs in the report).",
        evidence: "the certificate verifies, but none of its names matches the URL's host.",
    },
    /// Found by the doctor: the TLS handshake failed: no protocol version or cipher in common, or a TLS alert.
    TlsProtocol => {
        code: "tls.protocol", status: 0,
        message: "The TLS handshake failed: no protocol version or cipher in common, or a TLS alert.",
        operator: "Enable TLS 1.2 and 1.3 with modern ciphers.",
        client: "Use an up-to-date client.",
        evidence: "a TLS alert, or a failed TLS handshake on a port where a plain HTTP request gets no answer either.",
    },
    /// Found by the doctor: a wss:// URL points at a port that does not speak TLS (plain HTTP answered).
    TlsNotTls => {
        code: "tls.not_tls", status: 0,
        message: "A wss:// URL points at a port that does not speak TLS (plain HTTP answered).",
        operator: "Terminate TLS on this port, or publish the ws:// URL instead.",
        client: "Use ws:// for this port, or the port that serves TLS.",
        evidence: "on wss://: an HTTP answer where a TLS server hello belongs, or a connection closed on the client hello while a plain HTTP request to the same port is answered.",
    },
    /// Found by the doctor: a ws:// URL points at a port that expects TLS.
    TlsRequired => {
        code: "tls.required", status: 0,
        message: "A ws:// URL points at a port that expects TLS.",
        operator: "Publish the wss:// URL for this port.",
        client: "Use wss:// instead of ws://.",
        evidence: "on ws://: the connection closes (or a TLS record comes back) on a plain request, and a TLS handshake with the same port succeeds.",
    },
    /// Found by the doctor: the server answered the handshake with a redirect; WebSocket clients do not follow redirects.
    HttpRedirect => {
        code: "http.redirect", status: 0,
        message: "The server answered the handshake with a redirect; WebSocket clients do not follow redirects.",
        operator: "Serve the WebSocket at the URL clients use, or update the URL you publish (often http→https or a missing trailing slash).",
        client: "Use the URL in the Location header directly.",
        evidence: "a 3xx answer to the handshake (its Location is shown).",
    },
    /// Found by the doctor: the server has nothing at this path (404).
    HttpNotFound => {
        code: "http.not_found", status: 0,
        message: "The server has nothing at this path (404).",
        operator: "Check the route/location that should serve WebSockets at this path.",
        client: "Check the path in the URL (trailing slash, prefix such as /ws or /socket.io/).",
        evidence: "a 404 answer to the handshake.",
    },
    /// Found by the doctor: the server answered like a web page (2xx): this path is not a WebSocket endpoint, or a proxy dropped the Upgrade request.
    HttpNotWebsocket => {
        code: "http.not_websocket", status: 0,
        message: "The server answered like a web page (2xx): this path is not a WebSocket endpoint, or a proxy dropped the Upgrade request.",
        operator: "Route this path to the WebSocket server; in a proxy forward `Upgrade` and `Connection` (nginx: `proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\";`).",
        client: "Check that the URL is the WebSocket endpoint, not the web page.",
        evidence: "a 2xx answer other than 101 to the handshake.",
    },
    /// Found by the doctor: the backend saw a plain HTTP request: a proxy in front of it did not forward the Upgrade and Connection headers.
    HttpUpgradeRequired => {
        code: "http.upgrade_required", status: 0,
        message: "The backend saw a plain HTTP request: a proxy in front of it did not forward the Upgrade and Connection headers.",
        operator: "Make every proxy forward the upgrade (nginx: `proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\";`).",
        client: "Nothing to change on the client; report it to the operator.",
        evidence: "a 426, or a 400 whose text asks for an upgrade, from a server behind a proxy.",
    },
    /// Found by the doctor: the server or a proxy answered with an HTTP version that cannot upgrade to WebSocket.
    HttpVersion => {
        code: "http.version", status: 0,
        message: "The server or a proxy answered with an HTTP version that cannot upgrade to WebSocket.",
        operator: "Serve the endpoint over HTTP/1.1 (or enable RFC 8441 WebSockets over HTTP/2).",
        client: "Use an HTTP/1.1 WebSocket client.",
        evidence: "an answer that is not HTTP/1.1, or a 505.",
    },
    /// Found by the doctor: a proxy answered 502/503/504: it could not reach, or got no answer from, the WebSocket backend.
    HttpUpstream => {
        code: "http.upstream", status: 0,
        message: "A proxy answered 502/503/504: it could not reach, or got no answer from, the WebSocket backend.",
        operator: "Check that the backend runs and that the proxy's upstream address and timeouts are right.",
        client: "Retry later; report the time to the operator.",
        evidence: "a 502, 503 or 504 answer.",
    },
    /// Found by the doctor: the server refuses this client whatever the Origin, credentials or subprotocol: a rule on the client's address, the path, or a WAF.
    ForbiddenUnconditional => {
        code: "forbidden.unconditional", status: 0,
        message: "The server refuses this client whatever the Origin, credentials or subprotocol: a rule on the client's address, the path, or a WAF.",
        operator: "Check IP allowlists, deny rules and WAF logs for this client address and path.",
        client: "Connect from an allowed network, or ask the operator which rule refused you.",
        evidence: "a 403 (or a 401 without WWW-Authenticate) that every variation got (Origin, credential, subprotocol), and a text that names no cause.",
    },
    /// Found by the doctor: the server refused the handshake with a status other than 401 or 403, the same whatever was varied, and its text names no single cause.
    HttpRefused => {
        code: "http.refused", status: 0,
        message: "The server refused the handshake with a status other than 401 or 403, whatever the doctor varied; its answer's text (in the evidence) says why.",
        operator: "Read the refusal's text and the server's log for this request: the server states its own reason there.",
        client: "Read the answer's text in the evidence: it usually names the header or parameter the server wants.",
        evidence: "a status other than 401/403 (e.g. 400, 405, 500) that every variation got, with a text that names no single cause.",
    },
    /// Found by the doctor: a CDN's bot protection or WAF answered with a challenge page; the handshake never reached the WebSocket server.
    CdnChallenge => {
        code: "cdn.challenge", status: 0,
        message: "A CDN's bot protection or WAF answered with a challenge page; the handshake never reached the WebSocket server.",
        operator: "Exempt the WebSocket path from challenges (e.g. Cloudflare: a WAF custom rule with the Skip action, or Bot Fight Mode off, for this path); a WebSocket client cannot solve a challenge.",
        client: "Nothing to change in the client: a WebSocket cannot answer a challenge; ask the operator to exempt this path.",
        evidence: "a 403 or 503 from the CDN marked as a challenge (Cloudflare: `cf-mitigated: challenge`, a “Just a moment…” page or /cdn-cgi/challenge-platform, often with a `__cf_bm` cookie).",
    },
    /// Found by the doctor: the server advertises WebSockets over HTTP/2 (RFC 8441) but refuses or breaks the extended CONNECT, so browsers fail while HTTP/1.1 clients work.
    H2ExtendedConnect => {
        code: "h2.extended_connect", status: 0,
        message: "The server advertises WebSockets over HTTP/2 (RFC 8441) but refuses or breaks the extended CONNECT: browsers, which use it, fail while HTTP/1.1 clients work.",
        operator: "Stop advertising it (no SETTINGS_ENABLE_CONNECT_PROTOCOL; e.g. HAProxy `h2-workaround-bogus-websocket-clients`, or turn off the server's HTTP/2 WebSocket support), or make the backend accept extended CONNECT; serving this host over HTTP/1.1 only (ALPN http/1.1) also works.",
        client: "Nothing to change in a browser (it follows the server's advertisement); a non-browser client can keep using HTTP/1.1.",
        evidence: "on wss://: ALPN h2 with SETTINGS_ENABLE_CONNECT_PROTOCOL = 1, and an extended CONNECT (:protocol websocket) answered with a status other than 200, reset, or not answered, while the HTTP/1.1 handshake works.",
    },
    /// Found by the doctor: the client offered subprotocols and the server accepted without choosing one; browsers then fail the connection.
    SubprotocolNotEchoed => {
        code: "subprotocol.not_echoed", status: 0,
        message: "The client offered subprotocols and the server accepted without choosing one; browsers then fail the connection.",
        operator: "Select one of the offered subprotocols in the handshake answer (Sec-WebSocket-Protocol), or refuse explicitly.",
        client: "Offer only subprotocols the server supports, or none.",
        evidence: "a 101 without Sec-WebSocket-Protocol while subprotocols were offered.",
    },
    /// Found by the doctor: the server's Sec-WebSocket-Accept does not match the client's key, so clients must reject the connection.
    WsBadAccept => {
        code: "ws.bad_accept", status: 0,
        message: "The server's Sec-WebSocket-Accept does not match the client's key, so clients must reject the connection.",
        operator: "Compute Sec-WebSocket-Accept per RFC 6455 §4.2.2 (SHA-1 of the key + GUID, base64); a proxy may be rewriting the key.",
        client: "Nothing to change on the client; report it to the operator.",
        evidence: "a 101 whose Sec-WebSocket-Accept does not match the key sent.",
    },
    /// Found by the doctor: the server answered 101 without `Upgrade: websocket` or `Connection: Upgrade` (often a proxy that rewrites headers).
    WsUpgradeHeaderMissing => {
        code: "ws.upgrade_header_missing", status: 0,
        message: "The server answered 101 without `Upgrade: websocket` or `Connection: Upgrade` (often a proxy that rewrites headers).",
        operator: "Make the proxy pass the backend's Upgrade and Connection headers back to the client.",
        client: "Nothing to change on the client; report it to the operator.",
        evidence: "a 101 without `Upgrade: websocket` or `Connection: Upgrade`.",
    },
    /// Found by the doctor: the handshake succeeded but the server closed the connection right after (an application-level refusal).
    WsClosedAfterOpen => {
        code: "ws.closed_after_open", status: 0,
        message: "The handshake succeeded but the server closed the connection right after (an application-level refusal).",
        operator: "Look at the close code and reason in the report; it is the application's own refusal (auth, protocol version, room).",
        client: "Follow the close reason; many servers expect a first message (auth or subscribe) in their own protocol.",
        evidence: "a close frame from the server right after the 101 (its code and reason are shown).",
    },
    /// Found by the doctor: the connection was closed while idle, without a close frame: a proxy or load balancer idle timeout.
    IdleTimeout => {
        code: "idle.timeout", status: 0,
        message: "The connection was closed while idle, without a close frame: a proxy or load balancer idle timeout.",
        operator: "Raise the proxy's idle timeout (nginx `proxy_read_timeout`), or have the server send pings more often than it.",
        client: "Send application pings or heartbeats more often than the idle timeout.",
        evidence: "with `--hold`: the connection ends without a close frame while idle.",
    },
}

impl Reason {
    /// The stable dotted code, e.g. `origin.not_allowed`: what clients and dashboards match on.
    pub fn code(self) -> &'static str {
        self.entry().code
    }
    /// The HTTP status the server answers with for this reason; 0 for causes only the doctor
    /// reports (DNS, TCP, TLS, a proxy's answer), which the server never sends.
    pub fn status(self) -> u16 {
        self.entry().status
    }
    /// Whether `wsgate serve` can send this reason (otherwise only the doctor reports it).
    pub fn is_refusal(self) -> bool {
        self.status() != 0
    }
    /// One sentence saying what went wrong, for people who never read RFC 6455.
    pub fn message(self) -> &'static str {
        self.entry().message
    }
    /// What the server's operator can change.
    pub fn operator_fix(self) -> &'static str {
        self.entry().operator_fix
    }
    /// What the client (or the person using it) can change.
    pub fn client_fix(self) -> &'static str {
        self.entry().client_fix
    }
    /// What `wsgate doctor` needs to see before it names this cause against any server (empty
    /// for codes only `wsgate serve` sends).
    pub fn evidence(self) -> &'static str {
        self.entry().evidence
    }
    /// Looks a code up, e.g. from a `wsgate-reason` header the doctor received.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.code() == code)
    }
    /// Whether a client should be told when to retry (429 and 503 carry `Retry-After`).
    pub fn is_retryable(self) -> bool {
        matches!(self.status(), 429 | 503)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// Renders the user documentation of every code; `docs/refusals.md` must equal this output.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Refusal reasons\n\n\
         <!-- Generated by `wsgate reasons --markdown` from crates/wsgate-reasons; a test fails if this file drifts. -->\n\n\
         Every refused WebSocket handshake carries one of these codes. `wsgate serve` sends it in the\n\
         `wsgate-reason` response header together with a request id in `x-request-id` (unless the listener's\n\
         `explain` level is `none`); at `explain = \"full\"` the body is JSON:\n\
         `{\"code\", \"status\", \"message\", \"fix\", \"request_id\"}`. The server's log line for the refusal\n\
         carries the same request id and the detail the client is not shown. `wsgate doctor` reports the same codes.\n\n\
         | code | status | meaning |\n|---|---|---|\n",
    );
    for r in Reason::ALL.iter().filter(|r| r.is_refusal()) {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            r.code(),
            r.status(),
            r.message()
        ));
    }
    out.push_str(
        "\nThese further causes are found by `wsgate doctor` (against any server); `wsgate serve` never sends\n\
         them, as they happen before or outside its handshake answer:\n\n| code | meaning |\n|---|---|\n",
    );
    for r in Reason::ALL.iter().filter(|r| !r.is_refusal()) {
        out.push_str(&format!("| `{}` | {} |\n", r.code(), r.message()));
    }
    for r in Reason::ALL {
        let status = if r.is_refusal() {
            format!("Status {}. ", r.status())
        } else {
            "Found by `wsgate doctor`. ".to_owned()
        };
        out.push_str(&format!(
            "\n## `{}`\n\n{status}{}\n\n- **Operator:** {}\n- **Client:** {}\n",
            r.code(),
            r.message(),
            r.operator_fix(),
            r.client_fix()
        ));
        if !r.evidence().is_empty() {
            out.push_str(&format!(
                "- **`wsgate doctor` names it from:** {}\n",
                r.evidence()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_dotted_and_round_trip() {
        let mut seen = HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            let (family, name) = r.code().split_once('.').expect("family.name");
            assert!(!family.is_empty() && !name.is_empty());
            // Lower-case words (a digit may follow a letter, as in `h2`).
            assert!(r
                .code()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_'));
            assert!(family.starts_with(|c: char| c.is_ascii_lowercase()));
            assert!(name.starts_with(|c: char| c.is_ascii_lowercase()));
            assert_eq!(Reason::from_code(r.code()), Some(*r));
        }
        assert_eq!(Reason::from_code("no.such"), None);
    }

    #[test]
    fn statuses_are_refusals_and_texts_present() {
        for r in Reason::ALL {
            assert!(
                [0, 400, 401, 403, 404, 405, 426, 429, 431, 502, 503].contains(&r.status()),
                "{} has status {}",
                r.code(),
                r.status()
            );
            assert!(r.message().ends_with('.'), "{}", r.code());
            assert!(!r.operator_fix().is_empty() && !r.client_fix().is_empty());
            // Every cause the doctor finds says what it needs to see.
            assert!(r.is_refusal() || !r.evidence().is_empty(), "{}", r.code());
        }
    }

    #[test]
    fn docs_refusals_md_matches_the_catalog() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/refusals.md");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == markdown(),
            "docs/refusals.md is out of date: run `cargo run -- reasons --markdown > docs/refusals.md`"
        );
    }
}
