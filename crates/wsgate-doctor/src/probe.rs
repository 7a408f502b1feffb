//! One attempt at opening a WebSocket, step by step, recording everything seen on the way.
//! The HTTP request is written by hand so that exactly the intended headers are sent and the
//! response's headers are seen verbatim.

use crate::tls::{classify, describe_chain, Tls};
use crate::{Options, Reason, Step, TokenVia};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use wsgate_handshake::frame::OpCode;

/// The URL under test: the workspace's one endpoint type (`ws://` or `wss://`).
pub type Target = wsgate_handshake::endpoint::Endpoint;

/// Parses the URL under test.
pub fn parse_target(url: &str) -> Result<Target, String> {
    Target::parse(url, wsgate_handshake::endpoint::Family::WebSocket)
}

/// What one attempt sends; the first attempt uses the command line, experiments vary it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The Origin header.
    pub origin: Option<String>,
    /// The credential and where it goes.
    pub token: Option<(String, TokenVia)>,
    /// Offered subprotocols (the token's entry is added separately).
    pub subprotocols: Vec<String>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// A plain GET (no Upgrade), to see how the server answers ordinary HTTP.
    pub plain: bool,
}

impl Request {
    /// The request the command line describes.
    pub fn from_options(opts: &Options) -> Request {
        Request {
            origin: opts.origin.clone(),
            token: opts.token.clone().map(|t| (t, opts.token_via.clone())),
            subprotocols: opts.subprotocols.clone(),
            headers: opts.headers.clone(),
            plain: false,
        }
    }

    fn head(&self, target: &Target, key: &str) -> String {
        let mut path = target.path_and_query.clone();
        let mut lines = vec![];
        let mut protocols = self.subprotocols.clone();
        let mut cookie = None;
        let mut auth = None;
        if let Some((token, via)) = &self.token {
            match via {
                TokenVia::Header => auth = Some(format!("Bearer {token}")),
                TokenVia::Query(n) => {
                    path.push(if path.contains('?') { '&' } else { '?' });
                    path.push_str(&format!("{n}={token}"));
                }
                TokenVia::Cookie(n) => cookie = Some(format!("{n}={token}")),
                TokenVia::Subprotocol(p) => protocols.push(format!("{p}{token}")),
            }
        }
        lines.push(format!("GET {path} HTTP/1.1"));
        lines.push(format!("Host: {}", target.authority));
        if self.plain {
            lines.push("User-Agent: wsgate-doctor".into());
            lines.push("Connection: close".into());
            return lines.join("\r\n") + "\r\n\r\n";
        }
        lines.push("Upgrade: websocket".into());
        lines.push("Connection: Upgrade".into());
        lines.push(format!("Sec-WebSocket-Key: {key}"));
        lines.push("Sec-WebSocket-Version: 13".into());
        lines.push("User-Agent: wsgate-doctor".into());
        if let Some(o) = &self.origin {
            lines.push(format!("Origin: {o}"));
        }
        if !protocols.is_empty() {
            lines.push(format!("Sec-WebSocket-Protocol: {}", protocols.join(", ")));
        }
        if let Some(a) = auth {
            lines.push(format!("Authorization: {a}"));
        }
        if let Some(c) = cookie {
            lines.push(format!("Cookie: {c}"));
        }
        for (k, v) in &self.headers {
            lines.push(format!("{k}: {v}"));
        }
        lines.join("\r\n") + "\r\n\r\n"
    }
}

/// An HTTP answer.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers, verbatim and in order.
    pub headers: Vec<(String, String)>,
    /// The start of the body.
    pub body: String,
}

impl Response {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What happened after a 101.
#[derive(Debug, Clone, Default)]
pub struct WsResult {
    /// A close frame the server sent right after opening, with its code and reason.
    pub early_close: Option<(u16, String)>,
    /// A first message the server sent on its own (some protocols greet).
    pub greeting: Option<String>,
    /// Whether a ping got its pong.
    pub ping_ok: bool,
    /// Whether our close got a close back.
    pub close_ok: bool,
    /// With --hold: how the connection ended (or that it stayed open).
    pub hold: Option<String>,
    /// With --hold: it ended without a close frame (a proxy's idle timeout).
    pub dropped_while_idle: bool,
}

/// Everything one attempt saw.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The cause, when a step before the HTTP answer failed (DNS, TCP, TLS, no HTTP answer).
    pub failure: Option<(Reason, String)>,
    /// The HTTP answer, when there was one.
    pub response: Option<Response>,
    /// The request head sent.
    pub sent: String,
    /// The key sent, to check Sec-WebSocket-Accept.
    pub key: String,
    /// After a 101.
    pub ws: Option<WsResult>,
    /// The server's certificate chain (wss).
    pub chain: Vec<String>,
    /// Whether the server asked for a client certificate.
    pub client_cert_requested: bool,
    /// The TLS handshake ended without a TLS alert (the peer closed or reset): a port that may
    /// not speak TLS at all.
    pub tls_silent: bool,
    /// The address connected to.
    pub addr: Option<SocketAddr>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Clock(Instant);
impl Clock {
    fn ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

fn step(
    steps: &mut Vec<Step>,
    name: &'static str,
    ok: bool,
    clock: &Clock,
    detail: impl Into<String>,
) {
    steps.push(Step {
        name,
        ok,
        ms: clock.ms(),
        detail: detail.into(),
    });
}

/// Makes one attempt with `req`; `frames` also exercises the connection after a 101.
pub async fn attempt(
    opts: &Options,
    target: &Target,
    tls: &Tls,
    req: &Request,
    frames: bool,
) -> Outcome {
    let mut out = Outcome::default();
    let t = opts.timeout;

    // DNS
    let clock = Clock(Instant::now());
    let addrs: Vec<SocketAddr> = if let Some(ip) = opts.resolve {
        vec![SocketAddr::new(ip, target.port)]
    } else if let Ok(ip) = target.host.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, target.port)]
    } else {
        match timeout(
            t,
            tokio::net::lookup_host((target.host.as_str(), target.port)),
        )
        .await
        {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                step(
                    &mut out.steps,
                    "dns",
                    false,
                    &clock,
                    format!("{}: {e}", target.host),
                );
                out.failure = Some((
                    Reason::DnsUnresolved,
                    format!("{} does not resolve: {e}", target.host),
                ));
                return out;
            }
            Err(_) => {
                step(&mut out.steps, "dns", false, &clock, "no answer in time");
                out.failure = Some((
                    Reason::DnsUnresolved,
                    format!("{} did not resolve in time", target.host),
                ));
                return out;
            }
        }
    };
    let Some(addr) = addrs.first().copied() else {
        step(&mut out.steps, "dns", false, &clock, "no addresses");
        out.failure = Some((
            Reason::DnsUnresolved,
            format!("{} has no addresses", target.host),
        ));
        return out;
    };
    let all: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    step(
        &mut out.steps,
        "dns",
        true,
        &clock,
        format!("{} → {} (using {})", target.host, all.join(", "), addr.ip()),
    );

    // TCP
    let clock = Clock(Instant::now());
    let tcp = match timeout(t, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => Reason::TcpRefused,
                std::io::ErrorKind::TimedOut => Reason::TcpTimeout,
                _ => Reason::TcpReset,
            };
            step(&mut out.steps, "tcp", false, &clock, format!("{addr}: {e}"));
            out.failure = Some((reason, format!("connecting to {addr}: {e}")));
            return out;
        }
        Err(_) => {
            step(
                &mut out.steps,
                "tcp",
                false,
                &clock,
                format!("{addr}: no answer within {t:?}"),
            );
            out.failure = Some((
                Reason::TcpTimeout,
                format!("{addr} did not answer within {t:?}"),
            ));
            return out;
        }
    };
    let _ = tcp.set_nodelay(true);
    out.addr = Some(addr);
    step(
        &mut out.steps,
        "tcp",
        true,
        &clock,
        format!("connected to {addr}"),
    );

    // TLS
    let mut io: Box<dyn Io> = if target.tls {
        let clock = Clock(Instant::now());
        let Ok(name) = rustls_pki_types::ServerName::try_from(target.host.clone()) else {
            out.failure = Some((
                Reason::TlsProtocol,
                format!("{:?} is not a valid TLS server name", target.host),
            ));
            return out;
        };
        let (config, probe) = tls.config(true);
        let connector = tokio_rustls::TlsConnector::from(config);
        match timeout(t, connector.connect(name.clone(), tcp)).await {
            Ok(Ok(s)) => {
                let (_, conn) = s.get_ref();
                out.chain = conn
                    .peer_certificates()
                    .map(describe_chain)
                    .unwrap_or_default();
                let proto = conn
                    .protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default();
                let suite = conn
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default();
                let alpn = conn
                    .alpn_protocol()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .unwrap_or("none".into());
                out.client_cert_requested =
                    probe.requested.load(std::sync::atomic::Ordering::SeqCst);
                let checks = conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|leaf| crate::tls::leaf_checks(leaf, &target.host));
                let yes = |b: bool| if b { "yes" } else { "NO" };
                let (in_date, matches) = checks.unwrap_or((false, false));
                let trusted = if opts.insecure {
                    "not checked (--insecure)"
                } else {
                    "yes"
                };
                step(
                    &mut out.steps,
                    "tls",
                    true,
                    &clock,
                    format!(
                        "{proto} {suite}, ALPN {alpn}; trusted: {trusted}; in date: {}; matches {}: {}; client certificate requested: {}",
                        yes(in_date),
                        target.host,
                        yes(matches),
                        yes(out.client_cert_requested).to_lowercase()
                    ),
                );
                Box::new(s)
            }
            Ok(Err(e)) => {
                let rustls_err = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .cloned();
                let reason = rustls_err
                    .as_ref()
                    .map(classify)
                    .unwrap_or(Reason::TlsProtocol);
                out.tls_silent = rustls_err.is_none();
                // Read the chain over a second, unverified connection, to show what is wrong with it.
                out.chain = read_chain(addr, name, tls, t).await;
                step(&mut out.steps, "tls", false, &clock, format!("{e}"));
                out.failure = Some((reason, format!("TLS handshake: {e}")));
                return out;
            }
            Err(_) => {
                step(
                    &mut out.steps,
                    "tls",
                    false,
                    &clock,
                    format!("no TLS answer within {t:?}"),
                );
                out.failure = Some((Reason::TlsNotTls, format!("the server did not answer the TLS handshake within {t:?} (is this port TLS?)")));
                return out;
            }
        }
    } else {
        Box::new(tcp)
    };

    // HTTP Upgrade
    let clock = Clock(Instant::now());
    let key = B64.encode(random16());
    out.key = key.clone();
    out.sent = req.head(target, &key);
    if let Err(e) = io.write_all(out.sent.as_bytes()).await {
        step(
            &mut out.steps,
            "http",
            false,
            &clock,
            format!("sending the request: {e}"),
        );
        out.failure = Some((
            Reason::TcpReset,
            format!("the connection broke while sending the request: {e}"),
        ));
        return out;
    }
    let mut buf = Vec::with_capacity(4096);
    let read = timeout(t, async {
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                return Ok(end + 4);
            }
            if buf.len() > 32 * 1024 {
                return Err(std::io::Error::other("response head longer than 32 KiB"));
            }
            let mut chunk = [0u8; 4096];
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let head_len = match read {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            let text = e.to_string();
            let reason = if !target.tls && buf.first().is_some_and(|b| *b == 0x15 || *b == 0x16) {
                Reason::TlsRequired
            } else if text.contains("CertificateRequired")
                || (out.client_cert_requested && opts.client_cert.is_none())
            {
                Reason::TlsClientCertRequired
            } else if e.kind() == std::io::ErrorKind::UnexpectedEof && buf.is_empty() && !target.tls
            {
                // A TLS port answers a plain request by closing: the caller checks with a TLS probe.
                Reason::TlsRequired
            } else {
                Reason::TcpReset
            };
            step(
                &mut out.steps,
                "http",
                false,
                &clock,
                format!("no HTTP answer: {text}"),
            );
            out.failure = Some((reason, format!("the server sent no HTTP answer ({text})")));
            return out;
        }
        Err(_) => {
            step(
                &mut out.steps,
                "http",
                false,
                &clock,
                format!("no HTTP answer within {t:?}"),
            );
            out.failure = Some((
                Reason::TcpTimeout,
                format!("the server did not answer the handshake within {t:?}"),
            ));
            return out;
        }
    };
    let resp = match parse_response_head(&buf[..head_len]) {
        Some(resp) => resp,
        None => {
            let start = String::from_utf8_lossy(&buf[..buf.len().min(40)]).into_owned();
            step(
                &mut out.steps,
                "http",
                false,
                &clock,
                format!("not an HTTP answer: {start:?}"),
            );
            out.failure = Some((
                Reason::HttpVersion,
                format!("the answer is not HTTP/1.1: {start:?}"),
            ));
            return out;
        }
    };
    let mut rest = buf[head_len..].to_vec();
    let mut resp = resp;
    if resp.status != 101 {
        let want = resp
            .header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(4096);
        let _ = timeout(Duration::from_millis(300), async {
            while rest.len() < want {
                let mut chunk = [0u8; 4096];
                match io.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => rest.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        resp.body = String::from_utf8_lossy(&rest[..rest.len().min(4096)]).into_owned();
    }
    let ok = resp.status == 101;
    step(
        &mut out.steps,
        "http",
        ok,
        &clock,
        format!("HTTP {} {}", resp.status, resp.reason),
    );
    out.response = Some(resp);
    if ok && frames {
        let clock = Clock(Instant::now());
        let ws = exercise(&mut io, rest, opts).await;
        let good = ws.early_close.is_none() && ws.ping_ok && !ws.dropped_while_idle;
        let detail = match &ws.early_close {
            Some((code, reason)) => {
                format!("the server closed right after opening: {code} {reason:?}")
            }
            None => format!(
                "ping/pong {}, close handshake {}{}",
                if ws.ping_ok { "ok" } else { "got no pong" },
                if ws.close_ok { "ok" } else { "not answered" },
                ws.hold
                    .as_ref()
                    .map(|h| format!("; {h}"))
                    .unwrap_or_default()
            ),
        };
        step(&mut out.steps, "websocket", good, &clock, detail);
        out.ws = Some(ws);
    }
    out
}

async fn read_chain(
    addr: SocketAddr,
    name: rustls_pki_types::ServerName<'static>,
    tls: &Tls,
    t: Duration,
) -> Vec<String> {
    let Ok(Ok(tcp)) = timeout(t, TcpStream::connect(addr)).await else {
        return Vec::new();
    };
    let (config, _) = tls.config(false);
    match timeout(
        t,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    {
        Ok(Ok(s)) => s
            .get_ref()
            .1
            .peer_certificates()
            .map(describe_chain)
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// 16 random bytes (keys and masks); the probe is the layer that needs them.
fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    if SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = t.to_le_bytes();
    }
    b
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a complete response head (status line and headers, ending in a blank line); `None`
/// when it is not HTTP/1.x. Whatever the server sent, this never panics (fuzzed).
pub fn parse_response_head(head: &[u8]) -> Option<Response> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => Some(Response {
            status: parsed.code.unwrap_or(0),
            reason: parsed.reason.unwrap_or("").to_owned(),
            headers: parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            body: String::new(),
        }),
        _ => None,
    }
}

/// The largest server frame the doctor reads; a longer one is reported as a broken connection.
const MAX_SERVER_FRAME: usize = 1 << 20;

/// Takes one complete server frame off the front of `buf`: `Some(Ok((opcode, payload)))`,
/// `Some(Err(()))` for a frame no server may send (masked, reserved bits or opcode, too long),
/// `None` until more bytes arrive. Never panics, whatever the server sent (fuzzed).
pub fn take_server_frame(buf: &mut Vec<u8>) -> Option<Result<(u8, Vec<u8>), ()>> {
    match wsgate_handshake::frame::parse_server_frame(buf, MAX_SERVER_FRAME) {
        wsgate_handshake::frame::Parsed::Incomplete => None,
        wsgate_handshake::frame::Parsed::Invalid(..) => Some(Err(())),
        wsgate_handshake::frame::Parsed::Header(h) if buf.len() >= h.frame_len() => {
            let payload = buf[h.header_len..h.frame_len()].to_vec();
            buf.drain(..h.frame_len());
            Some(Ok((h.opcode.bits(), payload)))
        }
        wsgate_handshake::frame::Parsed::Header(_) => None,
    }
}

/// Reads one server frame: `(opcode, payload)`; `None` on timeout or end of stream.
async fn read_frame(
    io: &mut Box<dyn Io>,
    buf: &mut Vec<u8>,
    wait: Duration,
) -> Option<Result<(u8, Vec<u8>), ()>> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(frame) = take_server_frame(buf) {
            return Some(frame);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        let mut chunk = [0u8; 8192];
        match timeout(left, io.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Err(())),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn masked(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let r = random16();
    wsgate_handshake::frame::client_frame(op, payload, [r[0], r[1], r[2], r[3]])
}

/// A close frame's code and reason (1005 when it has none).
pub fn close_of(payload: &[u8]) -> (u16, String) {
    if payload.len() >= 2 {
        (
            u16::from_be_bytes([payload[0], payload[1]]),
            String::from_utf8_lossy(&payload[2..]).into_owned(),
        )
    } else {
        (1005, String::new())
    }
}

/// Watches for an immediate close, pings, optionally holds, then closes cleanly.
async fn exercise(io: &mut Box<dyn Io>, mut buf: Vec<u8>, opts: &Options) -> WsResult {
    let mut ws = WsResult::default();
    // Many servers accept the upgrade and refuse right after with a close frame.
    match read_frame(io, &mut buf, Duration::from_millis(300)).await {
        Some(Ok((0x8, p))) => {
            ws.early_close = Some(close_of(&p));
            let _ = io
                .write_all(&masked(OpCode::Close, &p[..p.len().min(2)]))
                .await;
            return ws;
        }
        Some(Ok((0x1, p))) => {
            ws.greeting = Some(String::from_utf8_lossy(&p[..p.len().min(200)]).into_owned())
        }
        Some(Err(())) => {
            ws.early_close = Some((1006, "connection closed without a close frame".into()));
            return ws;
        }
        _ => {}
    }
    if io
        .write_all(&masked(OpCode::Ping, b"wsgate-doctor"))
        .await
        .is_ok()
    {
        while let Some(Ok((op, p))) = read_frame(io, &mut buf, opts.timeout).await {
            match op {
                0xA => {
                    ws.ping_ok = true;
                    break;
                }
                0x8 => {
                    ws.early_close = Some(close_of(&p));
                    return ws;
                }
                _ => continue,
            }
        }
    }
    if let Some(hold) = opts.hold {
        let started = Instant::now();
        loop {
            match read_frame(io, &mut buf, hold.saturating_sub(started.elapsed())).await {
                None => {
                    ws.hold = Some(format!("still open after {hold:?}"));
                    break;
                }
                Some(Ok((0x8, p))) => {
                    let (code, reason) = close_of(&p);
                    ws.hold = Some(format!(
                        "the server closed after {:?} with {code} {reason:?}",
                        started.elapsed()
                    ));
                    return ws;
                }
                Some(Ok((0x9, p))) => {
                    let _ = io.write_all(&masked(OpCode::Pong, &p)).await;
                }
                Some(Ok(_)) => {}
                Some(Err(())) => {
                    ws.hold = Some(format!(
                        "the connection was dropped without a close frame after {:?}",
                        started.elapsed()
                    ));
                    ws.dropped_while_idle = true;
                    return ws;
                }
            }
        }
    }
    if io
        .write_all(&masked(OpCode::Close, &1000u16.to_be_bytes()))
        .await
        .is_ok()
    {
        while let Some(Ok((op, _))) = read_frame(io, &mut buf, opts.timeout).await {
            if op == 0x8 {
                ws.close_ok = true;
                break;
            }
        }
    }
    ws
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_server_frames_never_panic() {
        // A 64-bit length near u64::MAX once overflowed `header + length` and sliced out of bounds.
        let mut buf = vec![
            0x82, 127, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF7, 1, 2,
        ];
        assert_eq!(take_server_frame(&mut buf), Some(Err(())));
        let mut buf = vec![0x82, 127, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(take_server_frame(&mut buf), Some(Err(())));
        let mut buf = vec![0x89, 0x02, b'h'];
        assert_eq!(take_server_frame(&mut buf), None, "incomplete");
        buf.push(b'i');
        buf.extend_from_slice(&[0x88, 0x00]);
        assert_eq!(take_server_frame(&mut buf), Some(Ok((0x9, b"hi".to_vec()))));
        assert_eq!(take_server_frame(&mut buf), Some(Ok((0x8, Vec::new()))));
        assert!(buf.is_empty());
        assert_eq!(close_of(&[0x03]), (1005, String::new()));
        assert_eq!(close_of(&[0x03, 0xE8, 0xFF]).0, 1000);
        assert!(parse_response_head(b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n\r\n").is_some());
        assert!(parse_response_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_none());
    }

    #[test]
    fn urls() {
        let t = parse_target("wss://example.com/chat?x=1").unwrap();
        assert!(
            t.tls
                && t.port == 443
                && t.path_and_query == "/chat?x=1"
                && t.authority == "example.com"
        );
        let t = parse_target("ws://[::1]:8080").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path_and_query.as_str()),
            ("::1", 8080, "/")
        );
        assert!(parse_target("https://x/").unwrap_err().contains("ws://"));
        assert!(parse_target("ws://u:p@x/").is_err());
        assert_eq!(
            parse_target("ws://h:81/").unwrap().own_origin(false),
            "http://h:81"
        );
    }

    #[test]
    fn token_placements() {
        let t = parse_target("ws://h/p?a=1").unwrap();
        let mut r = Request {
            origin: Some("http://o".into()),
            token: Some(("T".into(), TokenVia::Query("access_token".into()))),
            subprotocols: vec!["chat".into()],
            headers: vec![],
            plain: false,
        };
        let head = r.head(&t, "k");
        assert!(head.starts_with("GET /p?a=1&access_token=T HTTP/1.1\r\n"));
        assert!(
            head.contains("Origin: http://o\r\n")
                && head.contains("Sec-WebSocket-Protocol: chat\r\n")
        );
        r.token = Some(("T".into(), TokenVia::Subprotocol("token.".into())));
        assert!(r
            .head(&t, "k")
            .contains("Sec-WebSocket-Protocol: chat, token.T\r\n"));
        r.token = Some(("T".into(), TokenVia::Cookie("c".into())));
        assert!(r.head(&t, "k").contains("Cookie: c=T\r\n"));
    }
}
