//! One regression test per upstream bug sio exists to fix, named after it.

mod common;

use common::*;
use serde_json::json;

#[test]
fn sticky_first_read_routing_split_request_line() {
    let app = App::start(2);
    let r = node("split_request_line.js", &[&app.port.to_string()]);
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 12);
    assert!(results.iter().all(|x| x == "ok"), "every split request reached its session's worker: {r}");
}

#[test]
fn socket_io_sticky_8_17_two_sessions_one_keepalive_connection() {
    let app = App::start(2);
    let r = node("keepalive.js", &[&app.port.to_string()]);
    for a in r["answers"].as_array().unwrap() {
        assert_eq!(a["status"], 200, "{r}");
        assert_eq!(
            a["connection"], "close",
            "each response ends its connection, so the next request is routed anew: {r}"
        );
        assert!(!a["body"].as_str().unwrap().contains("Session ID unknown"), "{r}");
    }
    let piped = r["pipelined"].as_array().unwrap();
    assert_eq!(piped.len(), 1, "only the first pipelined request is answered on that connection: {r}");
    assert!(piped[0].as_str().unwrap().starts_with("200 OK"), "{r}");
    assert!(piped[0].as_str().unwrap().ends_with("ok"), "{r}");
    assert_eq!(r["timedOut"], false, "the connection is closed, not left hanging: {r}");
    assert_eq!(r["retried"], json!({"status": 200, "body": "ok"}), "{r}");
}

#[test]
fn socket_io_sticky_2_no_session_id_unknown_race() {
    let app = App::start(2);
    let r = node("race.js", &[&app.port.to_string(), "500"]);
    assert_eq!(r["counts"], json!({"ok": 500}), "{r}");
}

#[test]
fn sid_in_cookie_or_referer_is_ignored() {
    let app = App::start(2);
    let r = node("cookie_referer.js", &[&app.port.to_string()]);
    let slots = r["handshakeSlots"].as_object().unwrap();
    assert_eq!(slots.len(), 2, "handshakes with a decoy sid still spread over both workers: {r}");
    assert!(slots.values().all(|n| n.as_u64() == Some(10)), "{r}");
    assert_eq!(r["otherSession"], json!({"status": 200, "body": "ok"}), "{r}");
}

#[test]
fn nodejs_node_8353_nothing_lost_10k_websocket_sessions() {
    let app = App::start(2);
    let r = node("nothing_lost.js", &[&app.port.to_string(), "10000", "500"]);
    assert_eq!(r["counts"], json!({"answered": 10000}), "{r}");
    let c = &app.status()["counters"];
    assert_eq!(c["rerouted"], 0, "{c}");
    assert_eq!(c["answered_503"], 0, "{c}");
}

#[test]
fn socket_io_sticky_2_with_the_apps_own_generate_id() {
    // Foreign sids route through the announced table; a request that beats
    // its sid's announcement waits for it instead of failing.
    let app = App::start_with(2, json!({"env": {"CUSTOM_IDS": "1"}}));
    let r = node("race.js", &[&app.port.to_string(), "300"]);
    assert_eq!(r["counts"], json!({"ok": 300}), "{r}");
}

#[test]
fn engine_io_client_percent_encodes_an_apps_standard_base64_sids() {
    // engine.io-client writes the query with encodeURIComponent and engine.io
    // reads it decoded (URLSearchParams): the master must look up `a+b/...`,
    // not `a%2Bb%2F...`, or the session's requests reach a random worker.
    let app = App::start_with(2, json!({"env": {"CUSTOM_IDS": "base64"}}));
    let r = node("race.js", &[&app.port.to_string(), "60"]);
    assert_eq!(r["counts"], json!({"ok": 60}), "{r}");
}
