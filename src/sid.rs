//! The sio session id format: the owning worker's slot is *inside* the sid.
//!
//! The master routes a request by decoding the sid in its query string, so
//! routing needs no table learned from the worker (no race with the
//! worker's `sticky:connection` announcement, socket.io-sticky#2) and
//! survives a master restart. Node workers generate such sids through the
//! preload (`src/agent/preload.js`), which overrides engine.io's
//! `generateId`; the two implementations are checked against each other in
//! `tests/sid_format.rs`.
//!
//! Layout: 20 characters of base64url, like engine.io's default ids:
//!
//! ```text
//!   SS RRRRRRRRRRRRRRRR CC
//!   |  |                `- check: 12 bits of FNV-1a over "sio1:" + the first 18 chars
//!   |  `- 16 random characters (96 bits)
//!   `- slot, 12 bits, most significant character first
//! ```
//!
//! The check tells our sids from foreign ones (an app with its own
//! `generateId`); those are routed through the learned table instead.
//!
//! A host with a `host_tag` puts it in place of the first random character
//! ([`HOST_TAG_AT`], leaving 90 random bits): a load balancer in front of
//! several hosts routes a session's requests by that one character, with
//! no cookie and no shared table (README: "Several hosts").

pub const SID_LEN: usize = 20;
/// Slots are 12 bits.
pub const MAX_SLOT: u16 = 4095;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// Mixed into the check: a new sid layout changes this tag.
const VERSION_TAG: &[u8] = b"sio1:";

/// Where a host's tag sits in its sids (0-based).
pub const HOST_TAG_AT: usize = 2;

/// Whether `c` is a character of the sid alphabet (base64url).
pub fn is_sid_char(c: char) -> bool {
    u8::try_from(c).is_ok_and(|b| sextet(b).is_some())
}

fn sextet(c: u8) -> Option<u16> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    } as u16)
}

fn check(prefix: &[u8]) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in VERSION_TAG.iter().chain(prefix) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    ((h ^ (h >> 12) ^ (h >> 24)) & 0xFFF) as u16
}

fn two_chars(v: u16) -> [u8; 2] {
    [ALPHABET[usize::from(v >> 6)], ALPHABET[usize::from(v & 63)]]
}

/// The slot a sio sid names, or `None` for a foreign sid.
pub fn slot_of(sid: &[u8]) -> Option<u16> {
    if sid.len() != SID_LEN {
        return None;
    }
    let mut sextets = [0u16; SID_LEN];
    for (s, &c) in sextets.iter_mut().zip(sid) {
        *s = sextet(c)?;
    }
    let stored = (sextets[18] << 6) | sextets[19];
    (stored == check(&sid[..18])).then_some((sextets[0] << 6) | sextets[1])
}

/// Builds the sid for `slot` from 16 random base64url characters. The
/// Node preload does the same in JavaScript; this one serves tests and
/// documentation.
pub fn make(slot: u16, random: &[u8; 16]) -> String {
    assert!(slot <= MAX_SLOT, "slot out of range");
    let mut sid = Vec::with_capacity(SID_LEN);
    sid.extend_from_slice(&two_chars(slot));
    sid.extend(random.iter().map(|&r| ALPHABET[usize::from(r & 63)]));
    let c = check(&sid);
    sid.extend_from_slice(&two_chars(c));
    String::from_utf8(sid).expect("base64url is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn engine_io_default_ids_are_foreign() {
        // Real base64id output: random, so its check matches 1 time in 4096.
        assert_eq!(slot_of(b"Yx9kP2_bGq7TzA0cVwLm"), None);
        assert_eq!(slot_of(b"short"), None);
        assert_eq!(slot_of(b"AAAAAAAAAAAAAAAAAA!!"), None);
    }

    #[test]
    fn known_vector() {
        // Pinned: the preload must produce the same (tests/sid_format.rs),
        // and a change here is a change of format.
        let sid = make(3, b"0123456789abcdef");
        assert_eq!(sid, "ADwxyz012345hijklmfD");
        assert_eq!(slot_of(sid.as_bytes()), Some(3));
    }

    #[test]
    fn single_character_changes_are_caught() {
        let mut caught = 0;
        let mut total = 0;
        for n in 0..2000u32 {
            let random: [u8; 16] = std::array::from_fn(|i| (n.wrapping_mul(2654435761) >> (i % 24)) as u8 ^ i as u8);
            let sid = make((n % 4096) as u16, &random).into_bytes();
            for at in 2..SID_LEN {
                let mut bad = sid.clone();
                bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
                total += 1;
                caught += usize::from(slot_of(&bad).is_none());
            }
        }
        // A 12-bit check lets about 1 in 4096 through.
        assert!(caught * 1000 >= total * 995, "{caught} of {total}");
    }

    proptest! {
        #[test]
        fn roundtrip(slot in 0..=MAX_SLOT, random in any::<[u8; 16]>()) {
            let sid = make(slot, &random);
            prop_assert_eq!(sid.len(), SID_LEN);
            prop_assert_eq!(slot_of(sid.as_bytes()), Some(slot));
        }
    }
}
