//! The sids the Node preload generates name their worker's slot exactly as
//! the master decodes them (`src/sid.rs`).

mod common;

use std::process::Command;

#[test]
fn preload_sids_decode_to_their_slot() {
    common::ensure_node_modules();
    let dir = common::scratch_dir(&common::app_name());
    let preload = dir.join("preload.cjs");
    std::fs::write(&preload, include_str!("../src/agent/preload.js")).unwrap();
    let script = r#"
        const { Server } = require("engine.io");
        const s = new Server();
        const ids = Array.from({ length: 2000 }, () => s.generateId());
        console.log(JSON.stringify(ids));
        s.close();
    "#;
    for slot in [1u16, 2, 63, 64, 1000, 4095] {
        let out = Command::new("node")
            .args(["--require", preload.to_str().unwrap(), "-e", script])
            .current_dir(common::node_dir())
            .env("SIO_WORKER_SLOT", slot.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let ids: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ids.len(), 2000);
        for id in &ids {
            assert_eq!(sio::sid::slot_of(id.as_bytes()), Some(slot), "{id} from slot {slot}");
        }
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "sids are random");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
