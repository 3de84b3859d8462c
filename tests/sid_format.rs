//! The Node preload run alone: the sids it generates name their worker's
//! slot exactly as the master decodes them (`src/sid.rs`) and carry the
//! host's tag; it leaves out of engine.io the transports the config does.

mod common;

use std::path::Path;
use std::process::Command;

/// 2,000 sids from engine.io's generateId under the preload, as worker
/// `slot` with `host_tag` makes them.
fn preload_sids(preload: &Path, slot: u16, host_tag: Option<&str>) -> Vec<String> {
    let script = r#"
        const { Server } = require("engine.io");
        const s = new Server();
        const ids = Array.from({ length: 2000 }, () => s.generateId());
        console.log(JSON.stringify(ids));
        s.close();
    "#;
    let mut cmd = Command::new("node");
    cmd.args(["--require", preload.to_str().unwrap(), "-e", script])
        .current_dir(common::node_dir())
        .env("SIO_WORKER_SLOT", slot.to_string())
        .env_remove("SIO_HOST_TAG");
    if let Some(tag) = host_tag {
        cmd.env("SIO_HOST_TAG", tag);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids.len(), 2000);
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "sids are random");
    ids
}

fn with_preload(f: impl FnOnce(&Path)) {
    common::ensure_node_modules();
    let dir = common::scratch_dir(&common::app_name());
    let preload = dir.join("preload.cjs");
    std::fs::write(&preload, include_str!("../src/agent/preload.js")).unwrap();
    f(&preload);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn preload_sids_decode_to_their_slot() {
    with_preload(|preload| {
        for slot in [1u16, 2, 63, 64, 1000, 4095] {
            for id in preload_sids(preload, slot, None) {
                assert_eq!(sio::sid::slot_of(id.as_bytes()), Some(slot), "{id} from slot {slot}");
            }
        }
    });
}

#[test]
fn a_hosts_sids_carry_its_tag_where_a_load_balancer_reads_it() {
    with_preload(|preload| {
        for (slot, tag) in [(1u16, "a"), (7, "Z"), (4095, "-"), (64, "_")] {
            let ids = preload_sids(preload, slot, Some(tag));
            for id in &ids {
                assert_eq!(&id[sio::sid::HOST_TAG_AT..sio::sid::HOST_TAG_AT + 1], tag, "{id} from host {tag}");
                assert_eq!(sio::sid::slot_of(id.as_bytes()), Some(slot), "{id} from slot {slot}");
            }
            // The characters after the tag stay random.
            let after: std::collections::HashSet<_> = ids.iter().map(|id| &id[3..4]).collect();
            assert!(after.len() > 32, "{after:?}");
        }
    });
}

/// engine.io's transports, under the preload with `SIO_TRANSPORTS` as the
/// agent sets it (unset: as an agent before the setting did).
fn engine_transports(preload: &Path, sio_transports: Option<&str>, app_asks: &str) -> String {
    let script = format!(
        r#"
        const {{ Server }} = require("engine.io");
        const s = new Server({{ transports: {app_asks} }});
        console.log(JSON.stringify(s.opts.transports));
        s.close();
    "#
    );
    let mut cmd = Command::new("node");
    cmd.args(["--require", preload.to_str().unwrap(), "-e", &script])
        .current_dir(common::node_dir())
        .env("SIO_WORKER_SLOT", "1")
        .env_remove("SIO_TRANSPORTS");
    if let Some(t) = sio_transports {
        cmd.env("SIO_TRANSPORTS", t);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_preload_leaves_out_the_transports_the_config_does_and_no_other() {
    with_preload(|preload| {
        let all = r#"["polling", "websocket", "webtransport"]"#;
        // WebTransport never reaches sio (HTTP/3): it stays the app's.
        assert_eq!(engine_transports(preload, Some("websocket"), all), r#"["websocket","webtransport"]"#);
        assert_eq!(
            engine_transports(preload, Some("polling websocket"), all),
            r#"["polling","websocket","webtransport"]"#
        );
        assert_eq!(engine_transports(preload, None, all), r#"["polling","websocket","webtransport"]"#);
        assert_eq!(engine_transports(preload, Some("websocket"), r#"["polling"]"#), "[]");
    });
}
