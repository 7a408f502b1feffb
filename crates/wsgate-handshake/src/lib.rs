//! The opening handshake of RFC 6455 (§4.2.1–4.2.2), checked strictly and without sockets.
//!
//! The server feeds it parsed request heads; it answers with either a [`ClientHandshake`] (what the
//! client asked for, ready for the 101 answer) or a [`Refusal`] naming a catalog [`Reason`]. Keeping
//! it free of I/O is what lets every rule be unit-tested and reused by the doctor.

#![forbid(unsafe_code)]

pub mod deflate;
pub mod endpoint;
pub mod frame;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use http::header::{HeaderMap, HeaderName, CONNECTION, HOST, ORIGIN, UPGRADE};
use http::{Method, Version};
use sha1::{Digest, Sha1};
pub use wsgate_reasons::Reason;

/// The GUID every server appends to the key before hashing (RFC 6455 §1.3).
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Key`, spelled out because `http` only has constants for some WebSocket headers.
pub const SEC_WEBSOCKET_KEY: HeaderName = http::header::SEC_WEBSOCKET_KEY;
/// `Sec-WebSocket-Version`.
pub const SEC_WEBSOCKET_VERSION: HeaderName = http::header::SEC_WEBSOCKET_VERSION;
/// `Sec-WebSocket-Protocol`.
pub const SEC_WEBSOCKET_PROTOCOL: HeaderName = http::header::SEC_WEBSOCKET_PROTOCOL;
/// `Sec-WebSocket-Accept`.
pub const SEC_WEBSOCKET_ACCEPT: HeaderName = http::header::SEC_WEBSOCKET_ACCEPT;

/// Why a handshake was refused: the public code plus detail for the log (and the `full` body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The catalog entry the client is told about.
    pub reason: Reason,
    /// What exactly was observed, for the log line; never contains secrets.
    pub detail: String,
    /// When the client may retry (429/503); `None` uses the server's default.
    pub retry_after: Option<std::time::Duration>,
}

impl Refusal {
    /// Builds a refusal; `detail` says what was seen and what was expected.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Refusal {
            reason,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// Sets the `Retry-After` the client is told.
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

/// A valid opening handshake: what the 101 answer and the admission gates need from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHandshake {
    /// The value for `Sec-WebSocket-Accept`.
    pub accept: String,
    /// Subprotocols the client offered, in its order of preference.
    pub subprotocols: Vec<String>,
    /// The `Origin` header, if the client sent one (browsers always do).
    pub origin: Option<String>,
    /// The `Host` header.
    pub host: String,
}

/// Computes `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2 step 5.4).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID.as_bytes());
    B64.encode(sha.finalize())
}

/// Bounds on the request head, like nginx's `large_client_header_buffers`: a head is parsed and
/// held before any gate runs, so its size is the first thing a stranger controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// The request line and every header line together, in bytes.
    pub max_head: usize,
    /// One header line (name, `: `, value), or the request line, in bytes.
    pub max_header: usize,
}

impl Default for HeadLimits {
    /// 32 KiB in all and 8 KiB a line: nginx's defaults (four 8 KiB buffers).
    fn default() -> Self {
        HeadLimits {
            max_head: 32 * 1024,
            max_header: 8 * 1024,
        }
    }
}

/// Checks what must hold before any gate looks at a request: the head's size, no body, and one
/// target host. Each failure is a request-smuggling or resource shape, refused outright.
pub fn check_framing(
    method: &Method,
    target: &http::Uri,
    headers: &HeaderMap,
    limits: HeadLimits,
) -> Result<(), Refusal> {
    // "GET " + target + " HTTP/1.1\r\n"
    let request_line = method.as_str().len() + target.to_string().len() + 12;
    if request_line > limits.max_header {
        return Err(too_large(format!(
            "the request line is {request_line} bytes; limits.max_header_bytes is {}",
            limits.max_header
        )));
    }
    let mut total = request_line + 2;
    for (name, value) in headers {
        let line = name.as_str().len() + value.len() + 4;
        if line > limits.max_header {
            // The name is shown, never the value (it may be a credential).
            return Err(too_large(format!(
                "the `{name}` header line is {line} bytes; limits.max_header_bytes is {}",
                limits.max_header
            )));
        }
        total += line;
    }
    if total > limits.max_head {
        return Err(too_large(format!(
            "the request head is {total} bytes in {} headers; limits.max_head_bytes is {}",
            headers.len(),
            limits.max_head
        )));
    }
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(Refusal::new(
            Reason::HandshakeBody,
            format!(
                "Transfer-Encoding {:?} announces a body{}",
                joined(headers, &http::header::TRANSFER_ENCODING),
                if headers.contains_key(http::header::CONTENT_LENGTH) {
                    ", together with Content-Length (a request-smuggling shape)"
                } else {
                    ""
                }
            ),
        ));
    }
    let lengths: Vec<&[u8]> = headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if !lengths.is_empty() && lengths != [b"0"] {
        return Err(Refusal::new(
            Reason::HandshakeBody,
            format!(
                "Content-Length {:?} announces a body",
                joined(headers, &http::header::CONTENT_LENGTH)
            ),
        ));
    }
    if let Some(authority) = target.authority() {
        // RFC 9112 §3.2.2: the absolute form's authority wins over Host, so the two must agree
        // or the Host allowlist would judge a host the request is not for.
        let host = headers.get(HOST).map(|h| h.as_bytes());
        if host.is_some_and(|h| !h.eq_ignore_ascii_case(authority.as_str().as_bytes())) {
            return Err(Refusal::new(
                Reason::HandshakeBadRequest,
                format!(
                    "the absolute-form target names {:?} but Host is {:?}; they must agree",
                    authority.as_str(),
                    joined(headers, &HOST)
                ),
            ));
        }
    }
    Ok(())
}

fn too_large(detail: String) -> Refusal {
    Refusal::new(Reason::HandshakeHeadTooLarge, detail)
}

/// Whether a request asks to become a WebSocket at all; plain HTTP gets a 426 that explains.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) || headers.contains_key(SEC_WEBSOCKET_KEY)
}

/// Checks a request head against RFC 6455 §4.2.1, in an order that gives the most useful reason.
pub fn validate(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<ClientHandshake, Refusal> {
    if method != Method::GET {
        return Err(Refusal::new(
            Reason::HandshakeMethod,
            format!("method {method} is not GET"),
        ));
    }
    if version < Version::HTTP_11 {
        return Err(Refusal::new(
            Reason::HandshakeBadRequest,
            format!("{version:?} is older than HTTP/1.1"),
        ));
    }
    for name in [HOST, ORIGIN, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION] {
        let n = headers.get_all(&name).iter().count();
        if n > 1 {
            return Err(Refusal::new(
                Reason::HandshakeDuplicateHeader,
                format!("{n} `{name}` headers; exactly one is allowed"),
            ));
        }
    }
    let host = match headers.get(HOST).map(|v| v.to_str()) {
        None => return Err(Refusal::new(Reason::HandshakeBadRequest, "no Host header")),
        Some(Err(_)) | Some(Ok("")) => {
            return Err(Refusal::new(
                Reason::HandshakeBadRequest,
                "Host header is empty or not ASCII",
            ))
        }
        Some(Ok(h)) => h.to_owned(),
    };
    if !wants_upgrade(headers) {
        return Err(Refusal::new(
            Reason::HandshakeNotUpgrade,
            "no `Upgrade: websocket` header: this is a plain HTTP request",
        ));
    }
    if !header_has_token(headers, &UPGRADE, "websocket") {
        return Err(Refusal::new(
            Reason::HandshakeNotUpgrade,
            format!(
                "Upgrade is {:?}, expected the token `websocket`",
                joined(headers, &UPGRADE)
            ),
        ));
    }
    if !header_has_token(headers, &CONNECTION, "upgrade") {
        return Err(Refusal::new(
            Reason::HandshakeBadRequest,
            format!(
                "Connection is {:?}, expected it to contain the token `Upgrade` (a proxy may have dropped it)",
                joined(headers, &CONNECTION)
            ),
        ));
    }
    match headers.get(SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) {
        Some(b"13") => {}
        Some(other) => {
            return Err(Refusal::new(
                Reason::HandshakeVersion,
                format!(
                    "Sec-WebSocket-Version is {:?}, only 13 is supported",
                    String::from_utf8_lossy(other)
                ),
            ))
        }
        None => {
            return Err(Refusal::new(
                Reason::HandshakeVersion,
                "no Sec-WebSocket-Version header",
            ))
        }
    }
    let key = match headers.get(SEC_WEBSOCKET_KEY) {
        None => {
            return Err(Refusal::new(
                Reason::HandshakeBadKey,
                "no Sec-WebSocket-Key header",
            ))
        }
        Some(k) => k.as_bytes(),
    };
    match B64.decode(key.trim_ascii()) {
        Ok(raw) if raw.len() == 16 => {}
        Ok(raw) => {
            return Err(Refusal::new(
                Reason::HandshakeBadKey,
                format!(
                    "Sec-WebSocket-Key decodes to {} bytes, expected 16",
                    raw.len()
                ),
            ))
        }
        Err(_) => {
            return Err(Refusal::new(
                Reason::HandshakeBadKey,
                "Sec-WebSocket-Key is not valid base64",
            ))
        }
    }
    let origin = match headers.get(ORIGIN).map(|v| v.to_str()) {
        None => None,
        Some(Ok(o)) => Some(o.to_owned()),
        Some(Err(_)) => {
            return Err(Refusal::new(
                Reason::HandshakeBadRequest,
                "Origin header is not ASCII",
            ))
        }
    };
    Ok(ClientHandshake {
        accept: accept_key(key.trim_ascii()),
        subprotocols: offered_subprotocols(headers)?,
        origin,
        host,
    })
}

/// Parses every `Sec-WebSocket-Protocol` header into its tokens, in order.
fn offered_subprotocols(headers: &HeaderMap) -> Result<Vec<String>, Refusal> {
    let mut out = Vec::new();
    for value in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
        let text = value.to_str().map_err(|_| {
            Refusal::new(
                Reason::HandshakeBadRequest,
                "Sec-WebSocket-Protocol is not ASCII",
            )
        })?;
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            if !item.bytes().all(is_tchar) {
                // Do not echo the value: clients put tokens here (issue: never echo them).
                return Err(Refusal::new(
                    Reason::HandshakeBadRequest,
                    "Sec-WebSocket-Protocol holds an entry that is not an HTTP token",
                ));
            }
            out.push(item.to_owned());
        }
    }
    Ok(out)
}

/// Chooses the subprotocol for the 101 answer: the client's first offer that the route supports.
pub fn select_subprotocol<'a>(offered: &'a [String], supported: &[String]) -> Option<&'a str> {
    offered
        .iter()
        .find(|o| supported.iter().any(|s| s == *o))
        .map(String::as_str)
}

/// `tchar` of RFC 9110 §5.6.2: what may appear in a subprotocol name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether a comma-list header (possibly repeated) contains `token`, case-insensitively.
fn header_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> String {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn good() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("127.0.0.1:8080"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h
    }

    fn check(h: &HeaderMap) -> Result<ClientHandshake, Refusal> {
        validate(&Method::GET, Version::HTTP_11, h)
    }

    fn reason(h: &HeaderMap) -> Reason {
        check(h).expect_err("should be refused").reason
    }

    #[test]
    fn rfc_sample_key_gives_rfc_accept() {
        let ok = check(&good()).expect("valid");
        assert_eq!(ok.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(ok.host, "127.0.0.1:8080");
        assert!(ok.subprotocols.is_empty());
    }

    #[test]
    fn tokens_are_case_insensitive_comma_lists() {
        let mut h = good();
        h.insert(UPGRADE, HeaderValue::from_static("foo/1, WebSocket"));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, UPGRADE"));
        assert!(check(&h).is_ok());
    }

    #[test]
    fn method_and_version() {
        assert_eq!(
            validate(&Method::POST, Version::HTTP_11, &good())
                .unwrap_err()
                .reason,
            Reason::HandshakeMethod
        );
        assert_eq!(
            validate(&Method::GET, Version::HTTP_10, &good())
                .unwrap_err()
                .reason,
            Reason::HandshakeBadRequest
        );
        let mut h = good();
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(reason(&h), Reason::HandshakeVersion);
        h.remove(SEC_WEBSOCKET_VERSION);
        assert_eq!(reason(&h), Reason::HandshakeVersion);
    }

    #[test]
    fn plain_http_and_wrong_upgrade() {
        let mut h = good();
        h.remove(UPGRADE);
        h.remove(SEC_WEBSOCKET_KEY);
        assert_eq!(reason(&h), Reason::HandshakeNotUpgrade);
        let mut h = good();
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert_eq!(reason(&h), Reason::HandshakeNotUpgrade);
        let mut h = good();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(reason(&h), Reason::HandshakeBadRequest);
        let mut h = good();
        h.remove(HOST);
        assert_eq!(reason(&h), Reason::HandshakeBadRequest);
    }

    #[test]
    fn keys_must_be_16_bytes_of_base64() {
        for bad in ["", "not base64!", "AAAAAAAAAAAAAAAAAAAAAAAAAAAA", "AQID"] {
            let mut h = good();
            h.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_str(bad).unwrap());
            assert_eq!(reason(&h), Reason::HandshakeBadKey, "{bad:?}");
        }
        let mut h = good();
        h.remove(SEC_WEBSOCKET_KEY);
        assert_eq!(reason(&h), Reason::HandshakeBadKey);
    }

    #[test]
    fn duplicate_security_headers_are_refused() {
        for name in [ORIGIN, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, HOST] {
            let mut h = good();
            h.append(name.clone(), HeaderValue::from_static("x"));
            h.append(name.clone(), HeaderValue::from_static("y"));
            assert_eq!(reason(&h), Reason::HandshakeDuplicateHeader, "{name}");
        }
    }

    fn framing(target: &str, h: &HeaderMap) -> Result<(), Refusal> {
        check_framing(
            &Method::GET,
            &target.parse().unwrap(),
            h,
            HeadLimits {
                max_head: 2048,
                max_header: 512,
            },
        )
    }

    #[test]
    fn bodies_big_heads_and_conflicting_targets_are_refused() {
        assert!(framing("/ws", &good()).is_ok());
        let reason = |h: &HeaderMap| framing("/ws", h).unwrap_err().reason;
        let mut h = good();
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        assert_eq!(reason(&h), Reason::HandshakeBody);
        h.insert("content-length", HeaderValue::from_static("5"));
        assert_eq!(reason(&h), Reason::HandshakeBody);
        let mut h = good();
        h.insert("content-length", HeaderValue::from_static("5"));
        assert_eq!(reason(&h), Reason::HandshakeBody);
        h.insert("content-length", HeaderValue::from_static("0"));
        assert!(framing("/ws", &h).is_ok(), "an empty body is no body");
        h.append("content-length", HeaderValue::from_static("0"));
        assert_eq!(reason(&h), Reason::HandshakeBody, "two lengths");

        let mut h = good();
        h.insert("cookie", HeaderValue::from_str(&"a".repeat(600)).unwrap());
        let e = framing("/ws", &h).unwrap_err();
        assert_eq!(e.reason, Reason::HandshakeHeadTooLarge);
        assert!(e.detail.contains("`cookie`") && !e.detail.contains("aaaa"));
        let mut h = good();
        for i in 0..10 {
            h.insert(
                HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                HeaderValue::from_str(&"a".repeat(300)).unwrap(),
            );
        }
        assert_eq!(reason(&h), Reason::HandshakeHeadTooLarge);
        let long = format!("/ws?{}", "q".repeat(600));
        assert_eq!(
            framing(&long, &good()).unwrap_err().reason,
            Reason::HandshakeHeadTooLarge
        );

        // The absolute form's authority must be the Host.
        assert!(framing("http://127.0.0.1:8080/ws", &good()).is_ok());
        assert!(framing("http://127.0.0.1:8080/ws", &{
            let mut h = good();
            h.insert(HOST, HeaderValue::from_static("127.0.0.1:8080"));
            h
        })
        .is_ok());
        assert_eq!(
            framing("http://other.host/ws", &good()).unwrap_err().reason,
            Reason::HandshakeBadRequest
        );
    }

    #[test]
    fn subprotocols_parse_and_select_first_supported_offer() {
        let mut h = good();
        h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("a, b"));
        h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("c"));
        let ok = check(&h).unwrap();
        assert_eq!(ok.subprotocols, ["a", "b", "c"]);
        let supported = vec!["c".to_owned(), "b".to_owned()];
        assert_eq!(select_subprotocol(&ok.subprotocols, &supported), Some("b"));
        assert_eq!(select_subprotocol(&ok.subprotocols, &[]), None);
        h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("a b"));
        assert_eq!(reason(&h), Reason::HandshakeBadRequest);
    }
}
