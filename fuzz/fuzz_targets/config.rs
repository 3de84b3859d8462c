//! App config parsing on arbitrary text: the pure `AppConfig::parse` never
//! panics, and the generator's `listen`-only reader gives the same addresses
//! for every config that the full parser accepts.

#![no_main]

use libfuzzer_sys::{fuzz_target, Corpus};
use sio::config::{listen_addresses, AppConfig};
use std::path::Path;

fuzz_target!(|data: &[u8]| -> Corpus {
    // Config files are read as UTF-8; other bytes never get this far.
    let Ok(text) = std::str::from_utf8(data) else {
        return Corpus::Reject;
    };
    let path = Path::new("/etc/sio/fuzz.json");
    let full = AppConfig::parse(path, text);
    let listen = listen_addresses(path, text);
    match (&full, &listen) {
        (Ok(cfg), Ok(listen)) => assert_eq!(&cfg.listen, listen),
        (Ok(cfg), Err(e)) => panic!("the full parser accepts {cfg:?}, the generator's reader says {e}"),
        (Err(e), _) => assert!(!e.to_string().is_empty()),
    }
    Corpus::Keep
});
