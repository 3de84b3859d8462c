//! The core promise: unmodified Node workers behind sio, sessions sticky,
//! broadcasts reaching every worker.

mod common;

use common::*;

#[test]
fn websocket_only_polling_upgrade_polling_only_and_a_300k_post() {
    let app = App::start(2);
    let r = node("transports.js", &[&app.port.to_string()]);
    let spread = r["byWorker"].as_object().unwrap();
    assert_eq!(spread.len(), 2, "clients on both workers: {r}");
    assert!(
        spread.values().all(|n| n.as_u64().unwrap() == 8),
        "new sessions split evenly: {r}"
    );
    assert_eq!(r["upgraded"], true, "{r}");
    assert_eq!(r["stillPolling"], true, "{r}");
    assert_eq!(
        r["echoByOwner"], true,
        "every packet reached the session's own worker: {r}"
    );
    assert_eq!(r["bigOk"], true, "{r}");
}

#[test]
fn cluster_adapter_across_workers() {
    let app = App::start(2);
    let r = node("cluster.js", &[&app.port.to_string()]);
    let n = r["clients"].as_u64().unwrap();
    assert_eq!(r["workers"].as_array().unwrap().len(), 2, "{r}");
    for (w, reached) in r["emitReachesAll"].as_object().unwrap() {
        assert_eq!(
            reached.as_u64().unwrap(),
            n,
            "io.emit from {w} reaches every client: {r}"
        );
    }
    assert_eq!(
        r["binaryKinds"],
        serde_json::json!({ "binary": n }),
        "binary stays binary: {r}"
    );
    for c in r["counts"].as_array().unwrap() {
        assert_eq!(c["count"].as_u64(), Some(n), "fetchSockets sees all: {r}");
        assert_eq!(c["servers"].as_u64(), Some(2), "{r}");
    }
    let sse = &r["sse"];
    assert!(sse["err"].is_null(), "{r}");
    assert_eq!(
        sse["replies"].as_array().unwrap().len(),
        1,
        "one other worker answered: {r}"
    );
    assert_ne!(sse["replies"][0]["pong"], sse["worker"], "{r}");
    assert_eq!(
        r["roomReached"].as_u64(),
        Some(n),
        "socketsJoin then to(room).emit: {r}"
    );
}
