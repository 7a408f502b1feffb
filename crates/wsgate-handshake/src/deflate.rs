//! permessage-deflate (RFC 7692): choosing what to answer a client's offers, and compressing and
//! inflating one message at a time.
//!
//! Why stateless by default: a deflate stream that keeps its window between messages ("context
//! takeover") costs a connection hundreds of KiB for its whole life, idle or not. With
//! `server_no_context_takeover` and `client_no_context_takeover` in the answer (RFC 7692 lets a
//! server add both to any offer), every message is compressed and inflated on its own, so the
//! compressor and inflater can belong to the worker thread and be lent to whichever connection
//! has a message: an idle connection holds nothing.
//!
//! Inflating is bounded: a message inflates into at most `max` bytes, and one byte more is the
//! 1009 ("too big") answer, found before the memory is taken, so a small frame cannot become a
//! bomb.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const NAME: &str = "permessage-deflate";

/// Messages shorter than this go out uncompressed (RSV1 clear, which RFC 7692 allows for any
/// message): deflate's block overhead would make them longer, for nothing.
pub const MIN_COMPRESS: usize = 64;

/// The four octets a sync flush ends with, removed by the sender and put back by the receiver
/// (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// How a route uses permessage-deflate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Declined: every offer is answered without the extension.
    Off,
    /// Every message on its own (no context takeover either way): no state while idle.
    #[default]
    Stateless,
    /// Windows kept between messages for better ratios, at a memory cost per connection.
    Contextual,
}

/// What the server answered, and so how both ends compress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreement {
    /// The server starts each message with an empty window.
    pub server_no_context_takeover: bool,
    /// The client starts each message with an empty window.
    pub client_no_context_takeover: bool,
    /// The largest window the server may use (8–15); echoed in the answer when offered.
    pub server_max_window_bits: u8,
    /// Whether the offer named `server_max_window_bits` (the answer must then carry it).
    server_bits_offered: bool,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value of the 101 answer.
    pub fn header(&self) -> String {
        let mut h = String::from(NAME);
        if self.server_no_context_takeover {
            h.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            h.push_str("; client_no_context_takeover");
        }
        if self.server_bits_offered {
            h.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        h
    }

    /// The window the compressor uses: zlib has no 256-byte window for raw deflate, and a 512-byte
    /// one never reaches back more than 250 bytes (it keeps 262 bytes of look-ahead), so 9 honours
    /// a peer that allowed only 8.
    pub fn compressor_bits(&self) -> u8 {
        self.server_max_window_bits.clamp(9, 15)
    }
}

/// One parsed extension offer: its name and parameters (values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer<'a> {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: &'a str,
    /// Parameters in order; a parameter without `=` has `None`.
    pub params: Vec<(&'a str, Option<&'a str>)>,
}

/// Splits `Sec-WebSocket-Extensions` values into offers (RFC 6455 §9.1), in order; malformed
/// pieces are skipped, as an offer that cannot be read is one the server does not accept.
pub fn offers<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Offer<'a>> {
    let mut out = Vec::new();
    for value in values {
        for item in split_outside_quotes(value, ',') {
            let mut parts = split_outside_quotes(item, ';').into_iter();
            let Some(name) = parts.next().map(str::trim).filter(|n| is_token(n)) else {
                continue;
            };
            let mut params = Vec::new();
            let mut ok = true;
            for p in parts {
                let (k, v) = match p.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(unquote(v.trim()))),
                    None => (p.trim(), None),
                };
                if !is_token(k) || v.is_some_and(|v| v.is_empty()) {
                    ok = false;
                    break;
                }
                params.push((k, v));
            }
            if ok {
                out.push(Offer { name, params });
            }
        }
    }
    out
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The answer to the first permessage-deflate offer this server can honour (RFC 7692 §5, §7.1),
/// or `None` to decline the extension. Offers with unknown or repeated parameters, or with
/// window sizes out of 8–15, are skipped.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>, mode: Mode) -> Option<Agreement> {
    if mode == Mode::Off {
        return None;
    }
    offers(values)
        .iter()
        .filter(|o| o.name.eq_ignore_ascii_case(NAME))
        .find_map(|o| accept(o, mode))
}

fn accept(offer: &Offer<'_>, mode: Mode) -> Option<Agreement> {
    let bits = |v: Option<&str>| -> Option<u8> {
        let v = v?;
        if v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
    };
    let mut seen: Vec<&str> = Vec::new();
    let (mut server_nct, mut client_nct) = (false, false);
    let mut server_bits: Option<u8> = None;
    for &(k, v) in &offer.params {
        let k_lower = k.to_ascii_lowercase();
        if seen.iter().any(|s| s.eq_ignore_ascii_case(k)) {
            return None;
        }
        seen.push(k);
        match k_lower.as_str() {
            "server_no_context_takeover" if v.is_none() => server_nct = true,
            "client_no_context_takeover" if v.is_none() => client_nct = true,
            "server_max_window_bits" => server_bits = Some(bits(v)?),
            // Without a value: the client can use a smaller window if told; with one, it says
            // which it will use at most. Either way the inflater's 15-bit window reads it.
            "client_max_window_bits" => {
                if v.is_some() {
                    bits(v)?;
                }
            }
            _ => return None,
        }
    }
    let stateless = mode == Mode::Stateless;
    Some(Agreement {
        server_no_context_takeover: stateless || server_nct,
        client_no_context_takeover: stateless || client_nct,
        server_max_window_bits: server_bits.unwrap_or(15),
        server_bits_offered: server_bits.is_some(),
    })
}

/// The client's permessage-deflate offers as a proxy passes them upstream (other extensions are
/// dropped: the relay could not pass their frames); `None` when there are none.
pub fn forwarded_offers<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let parts: Vec<String> = offers(values)
        .iter()
        .filter(|o| o.name.eq_ignore_ascii_case(NAME))
        .map(|o| {
            let mut s = String::from(NAME);
            for (k, v) in &o.params {
                match v {
                    Some(v) => s.push_str(&format!("; {k}={v}")),
                    None => s.push_str(&format!("; {k}")),
                }
            }
            s
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Checks an upstream server's answer to the `offered` permessage-deflate offers (RFC 7692
/// §5, §7.1): one permessage-deflate, known parameters once each with valid values, and
/// `client_max_window_bits` only if some offer allowed it. What passes is given to the client.
pub fn check_answer(answer: &str, offered: &str) -> Result<(), String> {
    let all = offers([answer]);
    let [a] = all.as_slice() else {
        return Err(format!("{answer:?} is not one extension"));
    };
    if !a.name.eq_ignore_ascii_case(NAME) {
        return Err(format!("{:?} was not offered", a.name));
    }
    let client_bits_offered = offers([offered]).iter().any(|o| {
        o.params
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("client_max_window_bits"))
    });
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in &a.params {
        let k = k.to_ascii_lowercase();
        if seen.contains(&k) {
            return Err(format!("{k} twice"));
        }
        let bits_ok = |v: &Option<&str>| {
            v.and_then(|v| v.parse::<u8>().ok())
                .is_some_and(|b| (8..=15).contains(&b))
        };
        match k.as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" if v.is_none() => {}
            "server_max_window_bits" if bits_ok(v) => {}
            "client_max_window_bits" if bits_ok(v) && client_bits_offered => {}
            _ => return Err(format!("the parameter {k} is not allowed here")),
        }
        seen.push(k);
    }
    Ok(())
}

/// Why a compressed message could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (close 1009).
    TooBig,
    /// It is not a deflate stream (close 1007).
    Corrupt(String),
}

/// A compressor whose window may outlive a message (contextual mode), or one lent per message.
pub struct Deflater {
    c: Compress,
}

impl Deflater {
    /// A raw-deflate compressor with a `bits` window (9–15).
    pub fn new(bits: u8) -> Deflater {
        Deflater {
            c: Compress::new_with_window_bits(Compression::fast(), false, bits.clamp(9, 15)),
        }
    }

    /// Appends `payload` compressed to `out` as one message (sync flush, the tail removed).
    /// The window is kept for the next message; [`Deflater::reset`] forgets it.
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let mut consumed = 0;
        loop {
            out.reserve((payload.len() - consumed) / 2 + 64);
            let before = self.c.total_in();
            // The in-memory compressor has no failure mode for these inputs.
            if self
                .c
                .compress_vec(&payload[consumed..], out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            consumed += (self.c.total_in() - before) as usize;
            if consumed == payload.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.len() >= start + TAIL.len() && out[out.len() - TAIL.len()..] == TAIL {
            out.truncate(out.len() - TAIL.len());
        }
    }

    /// Forgets the window: the next message starts afresh.
    pub fn reset(&mut self) {
        self.c.reset();
    }
}

/// An inflater whose window may outlive a message (contextual mode), or one lent per message.
pub struct Inflater {
    d: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

impl Inflater {
    /// A raw-deflate inflater with the largest window, which reads any window size.
    pub fn new() -> Inflater {
        Inflater {
            d: Decompress::new_with_window_bits(false, 15),
        }
    }

    /// Appends the message in `payload` (tail removed, as sent) inflated to `out`, never letting
    /// `out` grow past `max` bytes of it (its capacity stays within that bound too).
    pub fn inflate(
        &mut self,
        payload: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        let start = out.len();
        let bound = start.saturating_add(max).saturating_add(1);
        for input in [payload, &TAIL[..]] {
            let mut consumed = 0;
            loop {
                let room = bound - out.len();
                if room == 0 {
                    return Err(InflateError::TooBig);
                }
                let chunk = room.min(((input.len() - consumed) * 4).clamp(4096, 1 << 20));
                let at = out.len();
                if at + chunk > out.capacity() {
                    // Geometric growth, but never past the bound.
                    let want = (out.capacity() * 2).max(at + chunk).min(bound);
                    out.reserve_exact(want - at);
                }
                out.resize(at + chunk, 0);
                let (before_in, before_out) = (self.d.total_in(), self.d.total_out());
                let r =
                    self.d
                        .decompress(&input[consumed..], &mut out[at..], FlushDecompress::Sync);
                let wrote = (self.d.total_out() - before_out) as usize;
                let read = (self.d.total_in() - before_in) as usize;
                out.truncate(at + wrote);
                let status = r.map_err(|e| InflateError::Corrupt(e.to_string()))?;
                consumed += read;
                if out.len() - start > max {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block ends the message's stream: nothing more to read, and the next
                    // message starts a new one.
                    self.d.reset(false);
                    return Ok(());
                }
                if consumed == input.len() && wrote < chunk {
                    break;
                }
                if wrote == 0 && read == 0 {
                    return Err(InflateError::Corrupt("the deflate stream stalled".into()));
                }
            }
        }
        Ok(())
    }

    /// Forgets the window: the next message starts afresh.
    pub fn reset(&mut self) {
        self.d.reset(false);
    }
}

/// The compressors (one per window size, made when first needed) and the inflater a worker
/// thread lends to its connections, one message at a time.
struct Pool {
    deflaters: [Option<Deflater>; 7],
    inflater: Option<Inflater>,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { deflaters: [None, None, None, None, None, None, None], inflater: None }) };
}

/// Compresses one message on its own (no context takeover) with this thread's compressor for
/// `bits`, appending it to `out`.
pub fn compress_message(payload: &[u8], bits: u8, out: &mut Vec<u8>) {
    let bits = bits.clamp(9, 15);
    POOL.with(|pool| match pool.try_borrow_mut() {
        Ok(mut pool) => {
            let d = pool.deflaters[(bits - 9) as usize].get_or_insert_with(|| Deflater::new(bits));
            d.compress(payload, out);
            d.reset();
        }
        Err(_) => Deflater::new(bits).compress(payload, out),
    })
}

/// Inflates one message on its own (no context takeover) with this thread's inflater,
/// appending at most `max` bytes to `out`.
pub fn inflate_message(payload: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
    POOL.with(|pool| match pool.try_borrow_mut() {
        Ok(mut pool) => {
            let i = pool.inflater.get_or_insert_with(Inflater::new);
            let r = i.inflate(payload, max, out);
            i.reset();
            r
        }
        Err(_) => Inflater::new().inflate(payload, max, out),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agree(offer: &str, mode: Mode) -> Option<String> {
        negotiate([offer], mode).map(|a| a.header())
    }

    #[test]
    fn answers_the_first_offer_it_can_honour() {
        let s = Mode::Stateless;
        assert_eq!(
            agree("permessage-deflate; client_max_window_bits", s).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        assert_eq!(
            agree("permessage-deflate; server_max_window_bits=10", s).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10")
        );
        // The first offer has an unknown parameter: the second is taken.
        assert_eq!(
            agree(
                "permessage-deflate; foo, permessage-deflate; server_max_window_bits=\"9\"",
                s
            )
            .as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9")
        );
        assert_eq!(agree("x-webkit-deflate-frame", s), None);
        assert_eq!(
            agree("permessage-deflate; server_max_window_bits=16", s),
            None
        );
        assert_eq!(agree("permessage-deflate; server_max_window_bits", s), None);
        assert_eq!(
            agree("permessage-deflate; client_max_window_bits=7", s),
            None
        );
        assert_eq!(
            agree("permessage-deflate; server_no_context_takeover=1", s),
            None
        );
        assert_eq!(
            agree(
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                s
            ),
            None
        );
        assert_eq!(agree("permessage-deflate", Mode::Off), None);
        assert_eq!(
            agree("permessage-deflate", Mode::Contextual).as_deref(),
            Some("permessage-deflate")
        );
        assert_eq!(
            agree(
                "permessage-deflate; client_no_context_takeover",
                Mode::Contextual
            )
            .as_deref(),
            Some("permessage-deflate; client_no_context_takeover")
        );
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=8"], s)
                .map(|a| a.compressor_bits()),
            Some(9)
        );
    }

    #[test]
    fn a_proxy_passes_deflate_offers_and_checks_the_answer() {
        assert_eq!(
            forwarded_offers([
                "permessage-deflate; client_max_window_bits, x-foo",
                "permessage-deflate"
            ])
            .as_deref(),
            Some("permessage-deflate; client_max_window_bits, permessage-deflate")
        );
        assert_eq!(forwarded_offers(["x-webkit-deflate-frame"]), None);
        let offered = "permessage-deflate; client_max_window_bits";
        assert!(check_answer("permessage-deflate; client_max_window_bits=12", offered).is_ok());
        assert!(check_answer("permessage-deflate; server_no_context_takeover", offered).is_ok());
        assert!(check_answer(
            "permessage-deflate; client_max_window_bits=12",
            "permessage-deflate"
        )
        .is_err());
        assert!(check_answer("x-foo", offered).is_err());
        assert!(check_answer("permessage-deflate, permessage-deflate", offered).is_err());
        assert!(check_answer("permessage-deflate; server_max_window_bits=99", offered).is_err());
    }

    #[test]
    fn messages_round_trip_and_the_tail_is_removed() {
        let text = br#"{"user":"alice","text":"hello hello hello hello hello"}"#.repeat(20);
        let mut packed = Vec::new();
        compress_message(&text, 15, &mut packed);
        assert!(packed.len() < text.len() / 4, "{}", packed.len());
        assert_ne!(packed[packed.len() - 4..], TAIL);
        let mut back = Vec::new();
        inflate_message(&packed, text.len(), &mut back).unwrap();
        assert_eq!(back, text);
        // The limit is exact: one byte less is too big.
        let mut back = Vec::new();
        assert_eq!(
            inflate_message(&packed, text.len() - 1, &mut back),
            Err(InflateError::TooBig)
        );
        assert!(back.len() <= text.len());
        // The same inflater then reads an empty message (the pool was reset).
        let mut empty = Vec::new();
        compress_message(b"", 9, &mut empty);
        let mut back = Vec::new();
        inflate_message(&empty, 10, &mut back).unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn a_bomb_stops_at_the_limit_without_taking_the_memory() {
        let zeros = vec![0u8; 16 << 20];
        let mut bomb = Vec::new();
        compress_message(&zeros, 15, &mut bomb);
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let mut out = Vec::new();
        assert_eq!(
            inflate_message(&bomb, 1 << 20, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(out.capacity() <= (1 << 20) + 1, "{}", out.capacity());
    }

    #[test]
    fn garbage_is_corrupt() {
        let mut out = Vec::new();
        assert!(matches!(
            inflate_message(&[0xff, 0xff, 0xff, 0xff, 0x00], 1000, &mut out),
            Err(InflateError::Corrupt(_))
        ));
        // The pool's inflater still works after the failure.
        let mut packed = Vec::new();
        compress_message(b"fine", 15, &mut packed);
        let mut back = Vec::new();
        inflate_message(&packed, 100, &mut back).unwrap();
        assert_eq!(back, b"fine");
    }

    #[test]
    fn contextual_compression_reuses_the_window() {
        let msg = br#"{"type":"update","value":"the same words again and again"}"#;
        let (mut d, mut i) = (Deflater::new(15), Inflater::new());
        let mut first = Vec::new();
        d.compress(msg, &mut first);
        let mut second = Vec::new();
        d.compress(msg, &mut second);
        assert!(second.len() < first.len());
        let mut back = Vec::new();
        i.inflate(&first, 1000, &mut back).unwrap();
        i.inflate(&second, 1000, &mut back).unwrap();
        assert_eq!(back, [&msg[..], &msg[..]].concat());
    }
}
