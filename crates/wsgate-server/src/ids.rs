//! Request ids and WebSocket keys: unique per process, from the OS random source.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // The OS random source failing is not recoverable in any useful way; fall back to time.
    if SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ u64::from(std::process::id()) << 32;
    }
    u64::from_le_bytes(b)
}

/// `N` bytes from the OS random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    for chunk in b.chunks_mut(8) {
        let r = random_u64().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    b
}

/// A clustered node's name, put in front of its request ids so that an id names its node.
static NODE: OnceLock<String> = OnceLock::new();

/// Makes every later request id start with `node` (once per process; later calls are ignored).
pub fn set_node(node: &str) {
    let _ = NODE.set(node.to_owned());
}

/// A new request id: 16 hex digits, a random per-process base plus a counter; on a clustered
/// node, `NODE-` and the digits.
pub fn request_id() -> String {
    render_request(request_number())
}

/// A new request id's number (what [`render_request`] writes): 8 bytes to keep per connection
/// instead of the text.
pub fn request_number() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(random_u64);
    base.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The request id of a number from [`request_number`].
pub fn render_request(n: u64) -> String {
    match NODE.get() {
        Some(node) => format!("{node}-{n:016x}"),
        None => format!("{n:016x}"),
    }
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes.
pub fn websocket_key() -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&random_u64().to_le_bytes());
    b[8..].copy_from_slice(&random_u64().to_le_bytes());
    B64.encode(b)
}

/// A development token: 24 random bytes, URL- and subprotocol-safe.
pub fn dev_token() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut b = [0u8; 24];
    for chunk in b.chunks_mut(8) {
        chunk.copy_from_slice(&random_u64().to_le_bytes());
    }
    URL_SAFE_NO_PAD.encode(b)
}

/// A default cluster node name: the host name and a random suffix, so two processes on one
/// host differ.
pub fn node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(40)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wsgate".to_owned());
    format!("{host}-{:04x}", random_u64() & 0xffff)
}
