//! The two answers to a handshake, side by side: the 101 that admits it ([`switching_protocols`])
//! and the refusal ([`refuse`]): the status, code and body the client gets, the log line and the
//! metric, all from one call so a refusal can never be silent in one of them.

use crate::config::Explain;
use crate::metrics::Metrics;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use wsgate_handshake::Refusal;
use wsgate_handshake::{SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL};
use wsgate_reasons::{Reason, REASON_HEADER, REQUEST_ID_HEADER};

/// The body type of every response wsgate writes itself.
pub type Body = Full<Bytes>;

/// Seconds a client is asked to wait before retrying a 429/503.
const RETRY_AFTER_SECS: &str = "5";

/// What the refusal is about, for the log line.
pub struct Context<'a> {
    /// The id sent to the client and written in the log.
    pub request_id: &'a str,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client address the gates judged (differs from the peer behind a trusted proxy).
    pub client: std::net::IpAddr,
    /// The matched route pattern, if any.
    pub route: Option<&'a str>,
    /// The request path as received.
    pub path: &'a str,
    /// The listener's explain level.
    pub explain: Explain,
}

/// Limits identical refusal log lines (same code, client and route): a storm from one client must
/// not drown the log, while the metric still counts every refusal. The first `burst` lines of a
/// window are written; the next written line says how many were suppressed before it.
pub struct LogLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<HashMap<LogKey, LogWindow>>,
}

/// Which events count as identical: a reason code (or another event name), client, route.
type LogKey = (&'static str, IpAddr, String);
/// One key's current window.
struct LogWindow {
    start: Instant,
    /// Lines written (or due) in this window.
    lines: u32,
    /// Lines suppressed and not yet reported.
    suppressed: u64,
}

/// Keys remembered at most; older windows are forgotten first.
const MAX_LOG_KEYS: usize = 10_000;

impl LogLimiter {
    /// A limiter writing `burst` identical lines per `window`.
    pub fn new(burst: u32, window: Duration) -> LogLimiter {
        LogLimiter {
            burst,
            window,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed_before)` when this refusal may be logged, `None` to stay quiet.
    pub fn admit(
        &self,
        event: &'static str,
        client: IpAddr,
        route: &str,
        now: Instant,
    ) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.len() >= MAX_LOG_KEYS {
            let w = self.window;
            st.retain(|_, e| now.duration_since(e.start) < w || e.suppressed > 0);
            if st.len() >= MAX_LOG_KEYS {
                st.clear();
            }
        }
        let e = st
            .entry((event, client, route.to_owned()))
            .or_insert(LogWindow {
                start: now,
                lines: 0,
                suppressed: 0,
            });
        if now.duration_since(e.start) >= self.window {
            e.start = now;
            e.lines = 0;
        }
        e.lines += 1;
        if e.lines <= self.burst {
            Some(std::mem::take(&mut e.suppressed))
        } else {
            e.suppressed += 1;
            None
        }
    }
}

/// The 101 that admits a handshake: the accept key, the chosen subprotocol (never a credential
/// entry: those were removed before the choice) and the request id a client can quote.
pub fn switching_protocols(
    accept: &str,
    subprotocol: Option<&str>,
    extensions: Option<&str>,
    request_id: &str,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = subprotocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        h.insert(SEC_WEBSOCKET_PROTOCOL, p);
    }
    if let Some(e) = extensions.and_then(|e| HeaderValue::from_str(e).ok()) {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, e);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// Logs and counts the refusal, and builds the response.
pub fn refuse(
    refusal: &Refusal,
    ctx: &Context<'_>,
    metrics: &Metrics,
    limiter: &LogLimiter,
) -> Response<Body> {
    let reason = refusal.reason;
    metrics.refused(reason);
    let Some(suppressed_before) = limiter.admit(
        reason.code(),
        ctx.client,
        ctx.route.unwrap_or("-"),
        Instant::now(),
    ) else {
        return response(reason, ctx.request_id, ctx.explain, refusal.retry_after);
    };
    tracing::info!(
        target: "wsgate::refusal",
        suppressed_before,
        request_id = ctx.request_id,
        peer = %ctx.peer,
        client = %ctx.client,
        route = ctx.route.unwrap_or("-"),
        path = ctx.path,
        code = reason.code(),
        status = reason.status(),
        detail = %refusal.detail,
        "handshake refused"
    );
    response(reason, ctx.request_id, ctx.explain, refusal.retry_after)
}

/// The body of a refusal: the JSON document at `full`, nothing otherwise.
fn body(reason: Reason, request_id: &str, explain: Explain) -> Bytes {
    if explain != Explain::Full {
        return Bytes::new();
    }
    let json = serde_json::json!({
        "code": reason.code(),
        "status": reason.status(),
        "message": reason.message(),
        "fix": reason.client_fix(),
        "request_id": request_id,
    });
    Bytes::from(format!("{json}\n"))
}

/// A refusal as raw HTTP/1.1 bytes, closing the connection: for refusals made before any
/// request head is read (the HTTP server is not running yet on that connection).
pub fn raw_response(reason: Reason, request_id: &str, explain: Explain) -> Vec<u8> {
    let resp = response(reason, request_id, explain, None);
    let status = resp.status();
    let body = body(reason, request_id, explain);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in resp.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "connection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    out
}

/// The response for a reason at an explain level; protocol-required headers are always present.
pub fn response(
    reason: Reason,
    request_id: &str,
    explain: Explain,
    retry_after: Option<std::time::Duration>,
) -> Response<Body> {
    let status = StatusCode::from_u16(reason.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = Response::new(Full::new(body(reason, request_id, explain)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    match reason {
        Reason::HandshakeMethod => {
            h.insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        Reason::HandshakeVersion => {
            h.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        Reason::HandshakeNotUpgrade => {
            // RFC 9110 §15.5.22: a 426 must say which protocol to upgrade to.
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        }
        // The connection cannot be trusted to be in step after these (an unread body, a head
        // cut short): it ends with this answer.
        Reason::HandshakeBody | Reason::HandshakeHeadTooLarge => {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    if status == StatusCode::UNAUTHORIZED {
        // RFC 6750 §3: every 401 names the scheme; a presented but bad token says so.
        let value = if reason == Reason::AuthMissing {
            "Bearer realm=\"wsgate\""
        } else {
            "Bearer realm=\"wsgate\", error=\"invalid_token\""
        };
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
    }
    if reason.is_retryable() {
        let value = match retry_after {
            Some(d) => HeaderValue::from(d.as_secs().max(1)),
            None => HeaderValue::from_static(RETRY_AFTER_SECS),
        };
        h.insert(header::RETRY_AFTER, value);
    }
    if explain != Explain::None {
        h.insert(REASON_HEADER, HeaderValue::from_static(reason.code()));
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert(REQUEST_ID_HEADER, v);
        }
    }
    if explain == Explain::Full {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_refusals_are_limited_in_the_log() {
        let l = LogLimiter::new(2, Duration::from_secs(10));
        let t = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(l.admit(Reason::AuthInvalid.code(), ip, "/ws", t), Some(0));
        assert_eq!(l.admit(Reason::AuthInvalid.code(), ip, "/ws", t), Some(0));
        assert_eq!(l.admit(Reason::AuthInvalid.code(), ip, "/ws", t), None);
        assert_eq!(l.admit(Reason::AuthInvalid.code(), ip, "/ws", t), None);
        assert_eq!(
            l.admit(Reason::AuthMissing.code(), ip, "/ws", t),
            Some(0),
            "another code"
        );
        assert_eq!(
            l.admit(
                Reason::AuthInvalid.code(),
                ip,
                "/ws",
                t + Duration::from_secs(11)
            ),
            Some(2)
        );
    }

    #[test]
    fn raw_refusals_are_complete_http_answers() {
        let raw = raw_response(Reason::LimitHandshakesInProgress, "rid", Explain::Full);
        let text = String::from_utf8(raw).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{text}"
        );
        assert!(text.contains("wsgate-reason: limit.handshakes_in_progress\r\n"));
        assert!(text.contains("connection: close\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(body.contains("\"request_id\":\"rid\""));
    }

    #[test]
    fn explain_levels() {
        let r = response(Reason::HandshakeVersion, "abc", Explain::None, None);
        assert_eq!(r.status(), 426);
        assert_eq!(r.headers()["sec-websocket-version"], "13");
        assert!(r.headers().get(REASON_HEADER).is_none());
        assert!(r.headers().get(REQUEST_ID_HEADER).is_none());

        let r = response(Reason::LimitConnections, "abc", Explain::Code, None);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[REASON_HEADER], "limit.connections");
        assert_eq!(r.headers()[REQUEST_ID_HEADER], "abc");
        assert_eq!(r.headers()["retry-after"], RETRY_AFTER_SECS);

        let r = response(Reason::HandshakeMethod, "abc", Explain::Full, None);
        assert_eq!(r.headers()["allow"], "GET");
        assert_eq!(r.headers()["content-type"], "application/json");
    }
}
