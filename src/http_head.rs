//! The request head the master peeks at: is it complete, is it HTTP, and
//! which session does it belong to.
//!
//! Pure code over the peeked bytes. The sid is taken from the request
//! target's query string only: a `sid=` in a `Cookie` or `Referer` header
//! must not route (sticky's regex scans the whole head and does).

/// Most headers we accept in one head; more is answered with 431.
const MAX_HEADERS: usize = 100;

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
/// [`HeadError::TooLarge`]).
pub fn parse(peeked: &[u8], max_len: usize) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let window = &peeked[..peeked.len().min(max_len)];
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

fn head_from_target(target: &str) -> Head {
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let query = query.split_once('#').map(|(q, _)| q).unwrap_or(query);
    let mut sid = None;
    let mut eio = false;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sid" if !value.is_empty() => sid = Some(value.to_owned()),
            "EIO" => eio = true,
            _ => {}
        }
    }
    Head { handshake: eio && sid.is_none(), sid }
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

    proptest! {
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
