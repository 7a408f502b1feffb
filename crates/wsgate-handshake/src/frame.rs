//! RFC 6455 §5.2 frame headers, parsed and written without sockets or buffers of their own.
//!
//! The server's connection engine reads into a buffer it borrows only for the read, and needs a
//! parser that works on whatever bytes are there: this one says "incomplete", "a frame of this
//! shape" or "a protocol error with its close code", and never allocates.

/// A frame's opcode (§5.2); the reserved ones are protocol errors and never get this far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// The next fragment of a message.
    Continuation,
    /// A UTF-8 text message (or its first fragment).
    Text,
    /// A binary message (or its first fragment).
    Binary,
    /// The close handshake.
    Close,
    /// A keep-alive the peer must answer.
    Ping,
    /// The answer to a ping.
    Pong,
}

impl OpCode {
    /// Control frames may not be fragmented and carry at most 125 bytes (§5.5).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }

    /// The opcode as it appears in the low nibble of a frame's first byte.
    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Whether this is the last fragment of its message.
    pub fin: bool,
    /// What the frame is.
    pub opcode: OpCode,
    /// The masking key; clients must mask (§5.1).
    pub mask: Option<[u8; 4]>,
    /// RSV1: with permessage-deflate, the first frame of a compressed message.
    pub rsv1: bool,
    /// Bytes of header before the payload.
    pub header_len: usize,
    /// Bytes of payload.
    pub payload_len: usize,
}

impl Header {
    /// Header and payload together.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// The outcome of looking at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes for the header yet.
    Incomplete,
    /// A well-formed header (its payload may not have arrived yet).
    Header(Header),
    /// A violation: the close code to send (1002 protocol error, 1009 too big) and why.
    Invalid(u16, &'static str),
}

/// Parses the frame header at the start of `buf`, as a server reading a client: frames must be
/// masked, no extension is negotiated (so RSV bits must be 0), and no frame may exceed `max_frame`.
#[inline]
pub fn parse_client_frame(buf: &[u8], max_frame: usize) -> Parsed {
    parse_frame(buf, max_frame, true, false)
}

/// [`parse_client_frame`] on a connection that negotiated permessage-deflate: RSV1 may mark the
/// first frame of a data message (RFC 7692 §6), never a continuation or a control frame.
#[inline]
pub fn parse_client_frame_deflate(buf: &[u8], max_frame: usize) -> Parsed {
    parse_frame(buf, max_frame, true, true)
}

/// Parses the frame header at the start of `buf`, as a client reading a server (the proxy
/// reading its upstream): the same rules, except that server frames must not be masked.
#[inline]
pub fn parse_server_frame(buf: &[u8], max_frame: usize) -> Parsed {
    parse_frame(buf, max_frame, false, false)
}

/// [`parse_server_frame`] on a connection that negotiated permessage-deflate.
#[inline]
pub fn parse_server_frame_deflate(buf: &[u8], max_frame: usize) -> Parsed {
    parse_frame(buf, max_frame, false, true)
}

fn parse_frame(buf: &[u8], max_frame: usize, from_client: bool, deflate: bool) -> Parsed {
    let [b0, b1, ..] = *buf else {
        return Parsed::Incomplete;
    };
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !deflate) {
        return Parsed::Invalid(1002, "reserved bits set without a negotiated extension");
    }
    let opcode = match b0 & 0x0F {
        0x0 => OpCode::Continuation,
        0x1 => OpCode::Text,
        0x2 => OpCode::Binary,
        0x8 => OpCode::Close,
        0x9 => OpCode::Ping,
        0xA => OpCode::Pong,
        _ => return Parsed::Invalid(1002, "reserved opcode"),
    };
    if rsv1 && (opcode == OpCode::Continuation || opcode.is_control()) {
        return Parsed::Invalid(1002, "RSV1 (compressed) on a continuation or control frame");
    }
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    if from_client && !masked {
        return Parsed::Invalid(1002, "client frames must be masked");
    }
    if !from_client && masked {
        return Parsed::Invalid(1002, "server frames must not be masked");
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Parsed::Incomplete;
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Parsed::Incomplete;
            };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            let n = u64::from_be_bytes(a);
            if n >> 63 != 0 {
                return Parsed::Invalid(1002, "payload length with the high bit set");
            }
            (n, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Parsed::Invalid(
            1002,
            "control frames must be unfragmented and at most 125 bytes",
        );
    }
    let payload_len = match usize::try_from(len) {
        Ok(n) if n <= max_frame => n,
        _ => return Parsed::Invalid(1009, "frame larger than the server's limit"),
    };
    let mask = if masked {
        let Some(m) = buf.get(at..at + 4) else {
            return Parsed::Incomplete;
        };
        at += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Parsed::Header(Header {
        fin,
        opcode,
        mask,
        rsv1,
        header_len: at,
        payload_len,
    })
}

/// The largest header a server writes (no mask, 64-bit length).
pub const MAX_SERVER_HEADER: usize = 10;

/// Writes an unmasked, unfragmented server frame header into `out`; returns its length.
pub fn write_server_header(
    out: &mut [u8; MAX_SERVER_HEADER],
    opcode: OpCode,
    payload_len: usize,
) -> usize {
    out[0] = 0x80 | opcode.bits();
    if payload_len < 126 {
        out[1] = payload_len as u8;
        2
    } else if let Ok(n) = u16::try_from(payload_len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&n.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// A whole masked client frame (fin set) with any payload length, as a client (the doctor, the
/// bench, tests) must send it.
pub fn client_frame(opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut header = [0u8; MAX_SERVER_HEADER];
    let n = write_server_header(&mut header, opcode, payload.len());
    header[1] |= 0x80;
    let mut out = Vec::with_capacity(n + 4 + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Whether a close code may appear in a close frame on the wire (§7.4.1, §7.4.2, and the
/// IANA-registered 1012 "restart" and 1013 "try again later").
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_of_every_length_class_parse_back() {
        for len in [0usize, 125, 126, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let f = client_frame(OpCode::Binary, &payload, [9, 8, 7, 6]);
            let Parsed::Header(h) = parse_client_frame(&f, usize::MAX) else {
                panic!("{len}: not parsed");
            };
            assert_eq!((h.payload_len, h.frame_len()), (len, f.len()), "{len}");
            let back: Vec<u8> = f[h.header_len..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [9, 8, 7, 6][i % 4])
                .collect();
            assert_eq!(back, payload);
        }
    }

    fn masked(b0: u8, len_bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![b0];
        v.extend_from_slice(len_bytes);
        v[1] |= 0x80;
        v.extend_from_slice(&[1, 2, 3, 4]);
        v
    }

    #[test]
    fn lengths_of_every_size_class() {
        let h = |buf: &[u8]| match parse_client_frame(buf, 1 << 20) {
            Parsed::Header(h) => h,
            other => panic!("{other:?}"),
        };
        let small = h(&masked(0x82, &[5]));
        assert_eq!(
            (small.header_len, small.payload_len, small.fin),
            (6, 5, true)
        );
        assert_eq!(small.opcode, OpCode::Binary);
        assert_eq!(small.mask, Some([1, 2, 3, 4]));
        let mid = h(&masked(0x01, &[126, 0x01, 0x00]));
        assert_eq!((mid.header_len, mid.payload_len, mid.fin), (8, 256, false));
        let big = h(&masked(0x82, &[127, 0, 0, 0, 0, 0, 1, 0, 0]));
        assert_eq!((big.header_len, big.payload_len), (14, 65536));
    }

    #[test]
    fn incomplete_until_the_mask_is_there() {
        let full = masked(0x82, &[126, 0x01, 0x00]);
        for cut in 0..full.len() {
            assert_eq!(
                parse_client_frame(&full[..cut], 1 << 20),
                Parsed::Incomplete
            );
        }
    }

    #[test]
    fn rsv1_marks_the_first_frame_of_a_compressed_message_only() {
        let deflate = |buf: &[u8]| parse_client_frame_deflate(buf, 100);
        match deflate(&masked(0xC2, &[1])) {
            Parsed::Header(h) => assert!(h.rsv1 && h.opcode == OpCode::Binary),
            other => panic!("{other:?}"),
        }
        match deflate(&masked(0x82, &[1])) {
            Parsed::Header(h) => assert!(!h.rsv1),
            other => panic!("{other:?}"),
        }
        for b0 in [0xC0, 0xC9, 0xCA, 0xC8, 0xA2, 0x92] {
            assert!(
                matches!(deflate(&masked(b0, &[0])), Parsed::Invalid(1002, _)),
                "{b0:#x}"
            );
        }
    }

    #[test]
    fn violations_carry_their_close_code() {
        let code = |buf: &[u8], max| match parse_client_frame(buf, max) {
            Parsed::Invalid(c, _) => c,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(&masked(0xC2, &[0]), 100), 1002); // RSV1
        assert_eq!(code(&masked(0x83, &[0]), 100), 1002); // reserved opcode
        assert_eq!(code(&[0x82, 0x00], 100), 1002); // unmasked
        assert_eq!(code(&masked(0x09, &[0]), 100), 1002); // fragmented ping
        assert_eq!(code(&masked(0x89, &[126, 0, 126]), 1000), 1002); // long ping
        assert_eq!(code(&masked(0x82, &[101]), 100), 1009);
        assert_eq!(
            code(&masked(0x82, &[127, 0x80, 0, 0, 0, 0, 0, 0, 0]), 100),
            1002
        );
    }

    #[test]
    fn server_headers_round_trip_through_the_length_classes() {
        let mut out = [0u8; MAX_SERVER_HEADER];
        assert_eq!(write_server_header(&mut out, OpCode::Text, 5), 2);
        assert_eq!(out[..2], [0x81, 5]);
        assert_eq!(write_server_header(&mut out, OpCode::Binary, 300), 4);
        assert_eq!(out[..4], [0x82, 126, 1, 44]);
        assert_eq!(write_server_header(&mut out, OpCode::Binary, 70_000), 10);
        assert_eq!(out[..10], [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn close_codes() {
        for ok in [1000, 1001, 1003, 1007, 1011, 1013, 3000, 4999] {
            assert!(close_code_allowed(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1014, 1015, 2999, 5000] {
            assert!(!close_code_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn server_frames_are_unmasked() {
        let h = |b: &[u8]| match parse_server_frame(b, 1 << 20) {
            Parsed::Header(h) => h,
            other => panic!("{other:?}"),
        };
        let small = h(&[0x82, 5]);
        assert_eq!(
            (small.mask, small.header_len, small.payload_len),
            (None, 2, 5)
        );
        let mid = h(&[0x01, 126, 0x01, 0x00]);
        assert_eq!((mid.fin, mid.header_len, mid.payload_len), (false, 4, 256));
        assert_eq!(
            parse_server_frame(&[0x82, 126, 0x01], 100),
            Parsed::Incomplete
        );
        assert!(matches!(
            parse_server_frame(&[0x82, 0x85, 1, 2, 3, 4], 100),
            Parsed::Invalid(1002, _)
        ));
        assert!(matches!(
            parse_server_frame(&[0x82, 126, 0x01, 0x00], 100),
            Parsed::Invalid(1009, _)
        ));
    }
}
