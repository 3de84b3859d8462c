//! The request head the master peeks at: is it complete, is it HTTP, and
//! which session does it belong to.
//!
//! Pure code over the peeked bytes. The sid is taken from the request
//! target's query string only: a `sid=` in a `Cookie` or `Referer` header
//! must not route (sticky's regex scans the whole head and does). The query
//! is read the way engine.io reads it (WHATWG `URLSearchParams`), so that
//! the master routes on the very sid the worker will look up.

use std::borrow::Cow;

/// Most headers we accept in one head; more is answered with 431.
const MAX_HEADERS: usize = 100;

/// Most bytes of blank lines (CRLF or LF) accepted before the request line.
/// RFC 9112 asks servers to ignore at least one; the first request on a
/// connection never has any in practice. Refusing a longer run keeps
/// [`head_end`] exact and cheap: a flood of blank lines cannot make every
/// wake-up rescan from byte 0.
const MAX_BLANK_PREFIX: usize = 8;

/// What the master needs from a complete request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The Engine.IO session id from the query string, if any.
    pub sid: Option<String>,
    /// An Engine.IO handshake: `EIO=` present, no `sid=`. Counts as a new
    /// session for balancing.
    pub handshake: bool,
}

/// Why a head was refused. Each maps to the master's own answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not an HTTP/1.x request head: 400.
    Malformed(&'static str),
    /// Larger than the configured cap, or too many headers: 431.
    TooLarge,
}

impl HeadError {
    /// The response the master writes before closing.
    pub fn response(self) -> &'static [u8] {
        match self {
            HeadError::Malformed(_) => crate::http_head::response::BAD_REQUEST,
            HeadError::TooLarge => crate::http_head::response::HEAD_TOO_LARGE,
        }
    }
}

/// Parses the peeked bytes. `Ok(None)`: incomplete, peek again when more
/// bytes arrive (unless `peeked.len()` reached `max_len`, which is
/// [`HeadError::TooLarge`]). Use [`head_end`] to tell when calling this
/// again is worth it.
pub fn parse(peeked: &[u8], max_len: usize) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let window = &peeked[..peeked.len().min(max_len)];
    if blank_prefix(window) > MAX_BLANK_PREFIX {
        return Err(HeadError::Malformed("blank lines before the request line"));
    }
    match req.parse(window) {
        Ok(httparse::Status::Complete(_)) => {
            let target = req.path.unwrap_or("");
            Ok(Some(head_from_target(target)))
        }
        Ok(httparse::Status::Partial) if window.len() >= max_len => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(error_name(e))),
    }
}

/// Where the head in `peeked` ends, scanning only from a little before
/// `scanned_from`: the way not to re-parse a slow client's head from byte 0
/// on every wake-up (httparse has no incremental mode).
///
/// `Some(n)` means that [`parse`] on these bytes does not return `Ok(None)`:
/// for a well-formed head, `n` is its length, terminator included (`\r\n\r\n`,
/// or a bare `\n` for either line break, as httparse accepts). `None` means
/// that `parse` would still say `Ok(None)` for a well-formed head prefix.
///
/// The I/O layer keeps one number per waiting connection, `scanned`:
/// 1. On the first peek it calls `parse`, which answers the usual complete
///    head at once and refuses a TLS hello or other garbage at once.
/// 2. If that was `Ok(None)`, it sets `scanned = peeked.len()`.
/// 3. On each later wake-up (the peek again returns the bytes from byte 0) it
///    calls `parse` only if `head_end(peeked, scanned)` is `Some` or
///    `peeked.len()` reached the cap (then `parse` answers `TooLarge`);
///    otherwise it sets `scanned = peeked.len()` and waits again.
///
/// Each wake-up then costs the new bytes plus two (a terminator split across
/// reads is still found) and a bounded look at the start of the head.
pub fn head_end(peeked: &[u8], scanned_from: usize) -> Option<usize> {
    let start = blank_prefix(peeked);
    if start > MAX_BLANK_PREFIX {
        // `parse` refuses it: have the caller call it now.
        return Some(start);
    }
    // A terminator is `\n\n` or `\n\r\n`; one that began at most two bytes
    // before `scanned_from` was not complete when that scan ran.
    let mut from = scanned_from.saturating_sub(2).max(start);
    loop {
        let lf = from + peeked.get(from..)?.iter().position(|&b| b == b'\n')?;
        match peeked.get(lf + 1..) {
            Some([b'\n', ..]) => return Some(lf + 2),
            Some([b'\r', b'\n', ..]) => return Some(lf + 3),
            _ => from = lf + 1,
        }
    }
}

/// The length of the blank lines (`\r\n` or `\n`) that httparse skips before
/// the request line, counted only up to one past [`MAX_BLANK_PREFIX`].
fn blank_prefix(peeked: &[u8]) -> usize {
    let mut i = 0;
    while i <= MAX_BLANK_PREFIX {
        match peeked.get(i..) {
            Some([b'\n', ..]) => i += 1,
            Some([b'\r', b'\n', ..]) => i += 2,
            _ => break,
        }
    }
    i
}

fn error_name(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in request line",
        httparse::Error::Version => "not HTTP/1.x",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

/// Reads the query as engine.io does: `new URL(req.url).searchParams`, then
/// `Object.fromEntries`, so the last `sid` wins, and an empty one (falsy in
/// engine.io) is no sid. Keys are decoded too: `s%69d=` is the sid.
fn head_from_target(target: &str) -> Head {
    // The fragment ends the URL first: in `/a#b?sid=x` there is no query.
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let mut sid = None;
    let mut eio = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match &*form_decode(key) {
            "sid" => sid = Some(form_decode(value)),
            "EIO" => eio = true,
            _ => {}
        }
    }
    let sid = sid.filter(|s| !s.is_empty()).map(Cow::into_owned);
    Head { handshake: eio && sid.is_none(), sid }
}

/// WHATWG application/x-www-form-urlencoded decoding of one name or value:
/// `+` is a space, `%XX` a byte (a `%` without two hex digits stays as it
/// is), and the bytes are UTF-8 with U+FFFD for invalid sequences. Borrows
/// when there is nothing to decode, the usual case: engine.io-client's keys
/// and sids need no escaping.
fn form_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16)).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(hi), Some(lo)) => {
                    out.push((hi << 4) | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// The master's own answers. It answers only when it must, always closing.
pub mod response {
    pub const BAD_REQUEST: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\r\nmalformed head\r\n";
    pub const HEAD_TIMEOUT: &[u8] =
        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\nhead timeout\r\n";
    pub const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\r\nhead too large\r\n";
    pub const NO_WORKER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\nRetry-After: 1\r\nContent-Length: 17\r\n\r\nno worker ready\r\n";
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sid_from_query_only() {
        let h = parse(b"GET /socket.io/?EIO=4&transport=polling&sid=abc HTTP/1.1\r\nHost: x\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert_eq!(h, Head { sid: Some("abc".into()), handshake: false });
        let h = parse(
            b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nCookie: sid=AAAAAAAAAAAAAAAAAAAA\r\nReferer: http://x/?sid=BBBBBBBBBBBBBBBBBBBB\r\n\r\n",
            8192,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h, Head { sid: None, handshake: true });
    }

    #[test]
    fn partial_heads_wait_and_large_ones_fail() {
        assert_eq!(parse(b"GET /socket.io/?EIO=4&sid=x HTT", 8192), Ok(None));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n", 8192), Ok(None));
        let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 9000]].concat();
        assert_eq!(parse(&big, 8192), Err(HeadError::TooLarge));
    }

    #[test]
    fn garbage_is_malformed_at_once() {
        assert!(matches!(parse(b"\x16\x03\x01\x02\x00\x01\x00", 8192), Err(HeadError::Malformed(_))));
        assert!(matches!(parse(b"GET / SPDY/3\r\n\r\n", 8192), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn empty_sid_is_no_sid_and_fragments_are_ignored() {
        let h = parse(b"GET /?EIO=4&sid= HTTP/1.1\r\n\r\n", 100).unwrap().unwrap();
        assert_eq!(h.sid, None);
        let h = parse(b"GET /?sid=abc#x HTTP/1.1\r\n\r\n", 100).unwrap().unwrap();
        assert_eq!(h.sid.as_deref(), Some("abc"));
    }

    fn sid_of(target: &str) -> Option<String> {
        let head = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        parse(head.as_bytes(), 8192).unwrap().unwrap().sid
    }

    /// JavaScript's `encodeURIComponent`, which engine.io-client applies to
    /// every query value.
    fn encode_uri_component(s: &str) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    #[test]
    fn encoded_plus_slash_and_equals_decode() {
        assert_eq!(sid_of("/socket.io/?EIO=4&sid=a%2Bb%2Fc%3D%3D").as_deref(), Some("a+b/c=="));
        assert_eq!(sid_of("/socket.io/?EIO=4&sid=a%2bb%2fc%3d").as_deref(), Some("a+b/c="));
        // Only the first `=` splits a pair.
        assert_eq!(sid_of("/?sid=ab==").as_deref(), Some("ab=="));
    }

    #[test]
    fn plus_means_space() {
        assert_eq!(sid_of("/?sid=a+b").as_deref(), Some("a b"));
    }

    #[test]
    fn invalid_percent_sequences_stay_literal() {
        assert_eq!(sid_of("/?sid=a%zzb").as_deref(), Some("a%zzb"));
        assert_eq!(sid_of("/?sid=ab%").as_deref(), Some("ab%"));
        assert_eq!(sid_of("/?sid=ab%4").as_deref(), Some("ab%4"));
        assert_eq!(sid_of("/?sid=%%41").as_deref(), Some("%A"));
    }

    #[test]
    fn invalid_utf8_decodes_to_replacement_characters() {
        assert_eq!(sid_of("/?sid=a%FFb%C3%A9").as_deref(), Some("a\u{FFFD}bé"));
    }

    #[test]
    fn the_last_sid_wins_and_an_empty_last_sid_is_no_sid() {
        assert_eq!(sid_of("/?sid=a&sid=b").as_deref(), Some("b"));
        let h = parse(b"GET /?EIO=4&sid=a&sid= HTTP/1.1\r\n\r\n", 100).unwrap().unwrap();
        assert_eq!(h, Head { sid: None, handshake: true });
    }

    #[test]
    fn keys_are_decoded_too() {
        assert_eq!(sid_of("/?s%69d=abc").as_deref(), Some("abc"));
        let h = parse(b"GET /?%45IO=4 HTTP/1.1\r\n\r\n", 100).unwrap().unwrap();
        assert_eq!(h, Head { sid: None, handshake: true });
        // A space-padded key is another key.
        assert_eq!(sid_of("/?sid+=abc"), None);
    }

    #[test]
    fn a_question_mark_inside_the_fragment_starts_no_query() {
        assert_eq!(sid_of("/a#b?sid=x"), None);
        assert_eq!(sid_of("/?&&sid=x&&"), Some("x".into()));
    }

    #[test]
    fn the_head_end_is_found_with_either_line_ending() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody", 0), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\n", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\r\n\n", 0), Some(25));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r", 0), None);
        assert_eq!(head_end(b"", 0), None);
        assert_eq!(head_end(b"GET", 10), None);
    }

    #[test]
    fn a_terminator_split_across_reads_is_found_from_where_the_last_scan_stopped() {
        let full = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in full.len() - 3..full.len() {
            assert_eq!(head_end(&full[..cut], 0), None);
            assert_eq!(head_end(full, cut), Some(full.len()), "cut at {cut}");
        }
    }

    #[test]
    fn blank_lines_before_the_request_line_are_skipped_up_to_a_bound() {
        let h = parse(b"\r\n\nGET /?sid=x HTTP/1.1\r\n\r\n", 100).unwrap().unwrap();
        assert_eq!(h.sid.as_deref(), Some("x"));
        assert_eq!(head_end(b"\r\n\nGET / HTTP/1.1\r\n\r\n", 0), Some(21));
        assert_eq!(head_end(b"\r\n\r\n", 0), None);
        // A flood is refused as soon as it exceeds the bound, not waited on.
        let flood = b"\r\n".repeat(5);
        assert!(matches!(parse(&flood, 8192), Err(HeadError::Malformed(_))));
        assert!(head_end(&flood, flood.len()).is_some());
    }

    /// A well-formed request head, as `(bytes, head length)` with a body
    /// after it, using either line ending anywhere.
    fn arb_head() -> impl Strategy<Value = (Vec<u8>, usize)> {
        let eol = prop_oneof![Just("\r\n"), Just("\n")];
        let header = ("[A-Za-z0-9-]{1,12}", "[ -~]{0,20}", eol.clone()).prop_map(|(n, v, e)| format!("{n}: {v}{e}"));
        (
            proptest::collection::vec(eol.clone(), 0..3),
            "/[!-~&&[^#]]{0,30}",
            eol.clone(),
            proptest::collection::vec(header, 0..6),
            eol,
            proptest::collection::vec(any::<u8>(), 0..20),
        )
            .prop_map(|(blank, target, e1, headers, e2, body)| {
                let head = format!("{}GET {target} HTTP/1.1{e1}{}{e2}", blank.concat(), headers.concat());
                let len = head.len();
                ([head.into_bytes(), body].concat(), len)
            })
    }

    proptest! {
        #[test]
        fn encode_uri_component_then_parse_gives_back_the_sid(s in any::<String>()) {
            let target = format!("/socket.io/?EIO=4&transport=polling&sid={}", encode_uri_component(&s));
            prop_assert_eq!(sid_of(&target), (!s.is_empty()).then_some(s));
        }

        #[test]
        fn head_end_agrees_with_httparse((bytes, len) in arb_head()) {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let parsed = httparse::Request::new(&mut headers).parse(&bytes);
            prop_assert_eq!(parsed, Ok(httparse::Status::Complete(len)));
            prop_assert_eq!(head_end(&bytes, 0), Some(len));
            prop_assert!(matches!(parse(&bytes, 8192), Ok(Some(_))));
        }

        #[test]
        fn splitting_a_head_at_every_point_gives_the_same_end((bytes, len) in arb_head()) {
            for cut in 0..=bytes.len() {
                match head_end(&bytes[..cut], 0) {
                    // Found in the prefix: only once the prefix holds all of it.
                    Some(end) => prop_assert!(end == len && cut >= len, "cut {} found {}", cut, end),
                    None => {
                        prop_assert!(cut < len);
                        prop_assert_eq!(parse(&bytes[..cut], 8192), Ok(None));
                        // The next wake-up resumes where this one stopped.
                        prop_assert_eq!(head_end(&bytes, cut), Some(len), "resumed at {}", cut);
                    }
                }
            }
        }

        #[test]
        fn a_found_end_means_parse_answers(bytes in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b' '), Just(b':'), Just(b'G'), any::<u8>()], 0..64)) {
            if head_end(&bytes, 0).is_some() {
                prop_assert_ne!(parse(&bytes, 8192), Ok(None));
            }
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), cap in 1usize..600) {
            let _ = parse(&bytes, cap);
        }

        #[test]
        fn a_split_head_gives_the_same_answer(cut in 1usize..60) {
            // sticky routes on the first read only; a head split across TCP
            // segments is simply incomplete to us until the rest arrives.
            let full = b"POST /socket.io/?EIO=4&transport=polling&sid=xyz HTTP/1.1\r\nHost: h\r\n\r\n";
            let cut = cut.min(full.len() - 1);
            prop_assert_eq!(parse(&full[..cut], 8192), Ok(None));
            let head = parse(full, 8192).unwrap().unwrap();
            prop_assert_eq!(head.sid.as_deref(), Some("xyz"));
        }
    }
}
