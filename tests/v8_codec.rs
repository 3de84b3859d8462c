//! The V8 codec against Node itself: every kind of value Node sends over an
//! `advanced` IPC channel is decoded, re-encoded and sent back, and Node
//! finds it unchanged; a value built in Rust is read by Node as intended.

mod common;

use sio::handoff::{FrameReader, Prefix};
use sio::nodeipc::channel::{ChildEnd, NodeChannel};
use sio::nodeipc::v8::{self, JsString, Value};
use std::time::Duration;

#[test]
fn every_value_kind_round_trips_through_node() {
    common::ensure_node_modules();
    let report = sio::up::block_on(async {
        let (channel, child_end) = NodeChannel::pair().unwrap();
        let fd = child_end.raw();
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(common::node_dir().join("v8_peer.js"))
            .env("NODE_CHANNEL_FD", fd.to_string())
            .env("NODE_CHANNEL_SERIALIZATION_MODE", "advanced");
        // SAFETY: fcntl is async-signal-safe.
        unsafe { cmd.pre_exec(move || ChildEnd::inherit_in_child(fd)) };
        let mut child = cmd.spawn().unwrap();
        drop(child_end);
        let mut reader = FrameReader::new(Prefix::Node, 1 << 30);
        let mut seen = 0;
        let report = loop {
            let payload = tokio::time::timeout(Duration::from_secs(20), reader.next(channel.link()))
                .await
                .expect("node answers")
                .unwrap()
                .expect("node keeps the channel open");
            let value = v8::decode(payload).unwrap_or_else(|e| panic!("message {seen}: {e}"));
            seen += 1;
            if value.get("done").is_some() {
                break value;
            }
            if value.get("ask").is_some() {
                let from_rust = Value::object([
                    ("kind", Value::str("from-rust")),
                    ("s", Value::String(JsString::from("h€llo 😀"))),
                    ("latin", Value::str("café")),
                    ("b", Value::buffer(vec![1, 2, 3])),
                    ("n", Value::Int32(-5)),
                    ("d", Value::Double(1.5)),
                    (
                        "arr",
                        Value::Array {
                            elements: vec![
                                Some(Value::Int32(1)),
                                Some(Value::str("x")),
                                Some(Value::Null),
                                Some(Value::Bool(true)),
                                Some(Value::Undefined),
                            ],
                            properties: vec![],
                        },
                    ),
                ]);
                channel.send_frame(v8::encode_frame(&from_rust).into());
                continue;
            }
            let again = v8::encode_frame(&value);
            // Compared as bytes: NaN is not equal to itself as a value.
            assert_eq!(v8::encode_frame(&v8::decode(&again[4..]).unwrap()), again, "Rust round trip of message {seen}");
            channel.send_frame(again.into());
        };
        let _ = child.kill().await;
        report
    });
    let count = report.get("count").and_then(Value::as_f64).unwrap();
    assert!(count >= 40.0, "{report:?}");
    match report.get("mismatches") {
        Some(Value::Array { elements, .. }) => {
            assert!(elements.is_empty(), "Node saw differences: {report:?}")
        }
        other => panic!("no mismatch list: {other:?}"),
    }
    assert!(report.get("fromRust").and_then(Value::as_js_str).is_some_and(|s| s.eq_str("ok")), "{report:?}");
}
