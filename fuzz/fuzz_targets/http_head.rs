//! The master's request-head parser on arbitrary peeked bytes: `parse` never
//! panics, `head_end` agrees with it (so a caller that parses only once
//! `head_end` finds an end neither waits forever nor parses too early), and
//! a sid written the way engine.io-client writes it comes back unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sio::http_head::{head_end, parse};

/// The default `limits.max_head_bytes`.
const CAP: usize = 16 * 1024;

/// JavaScript's `encodeURIComponent`.
fn encode_uri_component(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let answer = parse(data, CAP);
    if let Ok(Some(head)) = &answer {
        assert!(head.sid.as_deref() != Some(""), "an empty sid is no sid");
        assert!(!(head.handshake && head.sid.is_some()), "a handshake has no sid");
    }
    let end = head_end(data, 0);
    if data.len() < CAP {
        if end.is_some() {
            assert_ne!(answer, Ok(None), "head_end found an end that parse does not");
        }
        if let Ok(Some(head)) = &answer {
            let n = end.expect("parse found a head that head_end does not");
            assert_eq!(parse(&data[..n], CAP), Ok(Some(head.clone())), "the head is {n} bytes");
        }
    }
    // A caller that scanned a prefix and resumes from its end finds the same
    // end, wherever the bytes were split.
    let cuts = [data.len() / 2, end.map_or(0, |e| e.saturating_sub(1)), end.map_or(0, |e| e.saturating_sub(2))];
    for cut in cuts {
        if head_end(&data[..cut], 0).is_none() {
            assert_eq!(head_end(data, cut), end, "resumed at {cut}");
        }
    }
    // The bytes as a sid, written as engine.io-client writes it.
    if let Ok(s) = std::str::from_utf8(data) {
        let head = format!("GET /socket.io/?EIO=4&transport=polling&sid={} HTTP/1.1\r\n\r\n", encode_uri_component(s));
        let sid = parse(head.as_bytes(), usize::MAX).unwrap().unwrap().sid;
        assert_eq!(sid.as_deref(), (!s.is_empty()).then_some(s));
    }
    // The bytes as a raw query string (what httparse lets through of them).
    let query: String = String::from_utf8_lossy(data).chars().filter(|c| c.is_ascii_graphic() && *c != '#').collect();
    let head = format!("GET /?{query} HTTP/1.1\r\n\r\n");
    if let Ok(Some(head)) = parse(head.as_bytes(), usize::MAX) {
        assert!(head.sid.as_deref() != Some(""));
    }
});
