//! The PROXY protocol (HAProxy, versions 1 and 2): a load balancer that forwards raw TCP states the
//! original client address in a header before the client's first byte. The server reads the
//! header; these pure functions parse it. The address is believed only from trusted proxies.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12-byte signature that starts a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 header is at most this long, CRLF included.
pub const V1_MAX: usize = 107;

/// Parses a version 1 line (`PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n`); `None` for
/// `PROXY UNKNOWN` (the connection is the proxy's own, e.g. a health check).
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, String> {
    let text = std::str::from_utf8(line).map_err(|_| "PROXY v1 header is not ASCII".to_owned())?;
    let text = text
        .strip_suffix("\r\n")
        .ok_or("PROXY v1 header does not end with CRLF")?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", fam @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| format!("PROXY v1 source {src:?} is not an address"))?;
            if (*fam == "TCP4") != ip.is_ipv4() {
                return Err(format!("PROXY v1 source {src} does not match {fam}"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| format!("PROXY v1 port {sport:?} is not a number"))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(format!("malformed PROXY v1 header {text:?}")),
    }
}

/// The length of the address block that follows a version 2 header's first 16 bytes.
pub fn v2_length(head: &[u8; 16]) -> Result<usize, String> {
    if head[..12] != V2_SIGNATURE {
        return Err("not a PROXY v2 signature".into());
    }
    if head[12] >> 4 != 2 {
        return Err(format!("PROXY v2 header has version {}", head[12] >> 4));
    }
    Ok(usize::from(u16::from_be_bytes([head[14], head[15]])))
}

/// Parses a version 2 header (`head` and its `body`); `None` for LOCAL connections and address
/// families without a client address.
pub fn parse_v2(head: &[u8; 16], body: &[u8]) -> Result<Option<SocketAddr>, String> {
    v2_length(head)?;
    match head[12] & 0x0F {
        0 => return Ok(None), // LOCAL: the proxy's own connection
        1 => {}
        c => return Err(format!("PROXY v2 command {c} is unknown")),
    }
    let short = || {
        format!(
            "PROXY v2 address block of {} bytes is too short",
            body.len()
        )
    };
    match head[13] >> 4 {
        1 => {
            let b = body.get(..12).ok_or_else(short)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Ok(Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([b[8], b[9]]),
            )))
        }
        2 => {
            let b = body.get(..36).ok_or_else(short)?;
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a)),
                u16::from_be_bytes([b[32], b[33]]),
            )))
        }
        _ => Ok(None), // UNSPEC or UNIX: no IP to report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n").unwrap(),
            Some("192.0.2.1:56324".parse().unwrap())
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n").unwrap(),
            Some("[2001:db8::1]:1".parse().unwrap())
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").unwrap(), None);
        assert!(parse_v1(b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n").is_err());
        assert!(parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\n").is_err());
        assert!(parse_v1(b"GET / HTTP/1.1\r\n").is_err());
    }

    #[test]
    fn v2() {
        let mut head = [0u8; 16];
        head[..12].copy_from_slice(&V2_SIGNATURE);
        head[12] = 0x21;
        head[13] = 0x11;
        head[15] = 12;
        let body = [203, 0, 113, 9, 127, 0, 0, 1, 0x15, 0xb3, 0, 80];
        assert_eq!(v2_length(&head).unwrap(), 12);
        assert_eq!(
            parse_v2(&head, &body).unwrap(),
            Some("203.0.113.9:5555".parse().unwrap())
        );
        assert!(parse_v2(&head, &body[..5]).is_err());
        head[12] = 0x20;
        assert_eq!(parse_v2(&head, &body).unwrap(), None, "LOCAL");
        head[12] = 0x11;
        assert!(v2_length(&head).is_err(), "version 1 in a v2 header");
    }
}
