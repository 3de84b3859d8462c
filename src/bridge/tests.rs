use super::*;

fn names() -> Names {
    Names { channel_prefix: "socket.io".into(), stream: "socket.io".into() }
}

fn msg(kind: u32, uid: &str, data: Option<Mp>) -> Message {
    Message { kind, uid: uid.into(), nsp: "/".into(), data, requester_uid: None }
}

/// A request as the adapters send it: a broadcast's packet and options
/// (what `fetchSockets` and a broadcast with acks read) and its id.
fn request(id: &str) -> Mp {
    let opts = Mp::Map(vec![(Mp::from("rooms"), Mp::Array(vec![])), (Mp::from("except"), Mp::Array(vec![]))]);
    let packet = Mp::Map(vec![(Mp::from("type"), Mp::from(2)), (Mp::from("data"), Mp::Array(vec![Mp::from("e")]))]);
    Mp::Map(vec![(Mp::from("requestId"), Mp::from(id)), (Mp::from("opts"), opts), (Mp::from("packet"), packet)])
}

fn with(id: &str, key: &str, value: Mp) -> Mp {
    Mp::Map(vec![(Mp::from("requestId"), Mp::from(id)), (Mp::from(key), value)])
}

/// A bridge that serves namespace "/" (a worker's first heartbeat).
fn serving() -> (Bridge, Instant) {
    let mut b = Bridge::new("HOST".into(), names());
    let now = Instant::now();
    let out = b.from_worker(msg(INITIAL_HEARTBEAT, "w1", None), now);
    assert!(out.contains(&Action::Subscribe(vec!["socket.io#/#".into(), "socket.io#/#HOST#".into()])), "{out:?}");
    (b, now)
}

fn published(actions: &[Action]) -> Vec<(String, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { channel, payload } => Some((channel.clone(), Message::from_pubsub(payload).unwrap())),
            _ => None,
        })
        .collect()
}

fn to_workers(actions: &[Action]) -> Vec<(Local, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToWorkers { to, message } => Some((to.clone(), message.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_remote_fetch_sockets_gets_one_answer_from_the_whole_host() {
    let (mut b, now) = serving();
    let asked = b.from_redis(msg(FETCH_SOCKETS, "REMOTE", Some(request("r1"))), 2, now).unwrap();
    let delivered = to_workers(&asked);
    assert!(delivered.iter().any(|(to, m)| *to == Local::All && m.kind == FETCH_SOCKETS), "{asked:?}");
    assert!(b.takes_response("REMOTE", Some("r1")));
    let answer = |uid, socket: &str| Message {
        requester_uid: Some("REMOTE".into()),
        ..msg(FETCH_SOCKETS_RESPONSE, uid, Some(with("r1", "sockets", Mp::Array(vec![Mp::from(socket)]))))
    };
    assert!(published(&b.from_worker(answer("w1", "s1"), now)).is_empty(), "waits for the other worker");
    let out = published(&b.from_worker(answer("w2", "s2"), now));
    assert_eq!(out.len(), 1, "{out:?}");
    let (channel, m) = &out[0];
    assert_eq!((channel.as_str(), m.uid.as_str(), m.kind), ("socket.io#/#REMOTE#", "HOST", FETCH_SOCKETS_RESPONSE));
    assert_eq!(get(m.data.as_ref().unwrap(), "sockets"), Some(&Mp::Array(vec![Mp::from("s1"), Mp::from("s2")])));
    assert!(!b.takes_response("REMOTE", Some("r1")), "answered and forgotten");
}

#[test]
fn a_worker_that_never_answers_leaves_the_host_answering_with_what_it_has_in_time() {
    let (mut b, now) = serving();
    b.from_redis(msg(FETCH_SOCKETS, "REMOTE", Some(request("r1"))), 2, now).unwrap();
    let one = Message {
        requester_uid: Some("REMOTE".into()),
        ..msg(FETCH_SOCKETS_RESPONSE, "w1", Some(with("r1", "sockets", Mp::Array(vec![Mp::from("s1")]))))
    };
    b.from_worker(one, now);
    assert!(published(&b.tick(now + Duration::from_secs(1))).iter().all(|(_, m)| m.kind != FETCH_SOCKETS_RESPONSE));
    let late = published(&b.tick(now + ANSWER_WITHIN));
    let answer = late.iter().find(|(_, m)| m.kind == FETCH_SOCKETS_RESPONSE).expect("answered at the deadline");
    assert_eq!(get(answer.1.data.as_ref().unwrap(), "sockets"), Some(&Mp::Array(vec![Mp::from("s1")])));
}

#[test]
fn a_broadcast_with_ack_sums_the_workers_client_counts_and_passes_every_ack() {
    let (mut b, now) = serving();
    b.from_redis(msg(BROADCAST, "REMOTE", Some(request("r1"))), 2, now).unwrap();
    let from = |kind, uid, key, value| Message {
        requester_uid: Some("REMOTE".into()),
        ..msg(kind, uid, Some(with("r1", key, value)))
    };
    assert!(published(&b.from_worker(from(BROADCAST_CLIENT_COUNT, "w1", "clientCount", Mp::from(3)), now)).is_empty());
    let acked = published(&b.from_worker(from(BROADCAST_ACK, "w1", "packet", Mp::from("ok")), now));
    assert_eq!(acked.len(), 1, "an ack goes at once");
    let counted = published(&b.from_worker(from(BROADCAST_CLIENT_COUNT, "w2", "clientCount", Mp::from(2)), now));
    assert_eq!(counted.len(), 1);
    assert_eq!(get(counted[0].1.data.as_ref().unwrap(), "clientCount"), Some(&Mp::from(5)));
    let later = published(&b.from_worker(from(BROADCAST_ACK, "w2", "packet", Mp::from("ok")), now));
    assert_eq!(later.len(), 1, "acks after the count still go");
}

#[test]
fn answers_to_a_local_request_go_back_to_the_worker_that_asked() {
    let (mut b, now) = serving();
    let out = published(&b.from_worker(msg(SERVER_SIDE_EMIT, "w1", Some(request("r9"))), now));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0.as_str(), out[0].1.uid.as_str()), ("socket.io#/#", "HOST"), "the host asks as itself");
    let answer = b
        .from_redis(msg(SERVER_SIDE_EMIT_RESPONSE, "REMOTE", Some(with("r9", "packet", Mp::from(1)))), 2, now)
        .unwrap();
    let delivered = to_workers(&answer);
    let (to, m) = delivered.iter().find(|(_, m)| m.kind == SERVER_SIDE_EMIT_RESPONSE).unwrap();
    assert_eq!(*to, Local::Adapter("w1".into()));
    assert_eq!((m.uid.as_str(), m.requester_uid.as_deref()), ("REMOTE", Some("w1")));
}

#[test]
fn remote_servers_are_heartbeaten_to_the_workers_until_they_go_silent() {
    let (mut b, now) = serving();
    // A probe from another host: answered at once, and that host is known.
    let probe = b
        .from_redis(
            msg(
                FETCH_SOCKETS,
                "OTHER",
                Some(Mp::Map(vec![
                    (Mp::from("requestId"), Mp::from("p1")),
                    (Mp::from("opts"), Mp::Map(vec![(Mp::from("rooms"), Mp::Array(vec![Mp::from(PROBE_ROOM)]))])),
                ])),
            ),
            2,
            now,
        )
        .unwrap();
    let answered = published(&probe);
    assert_eq!(answered[0].0, "socket.io#/#OTHER#");
    assert!(to_workers(&probe).is_empty(), "a probe is not the workers' business");
    // Its answer to this host's probe makes it a member.
    let answer = b.from_redis(msg(FETCH_SOCKETS_RESPONSE, "OTHER", Some(probe_answer(&b))), 2, now).unwrap();
    let beats =
        |out: &[Action]| to_workers(out).iter().filter(|(_, m)| m.kind == HEARTBEAT && m.uid == "OTHER").count();
    assert_eq!(beats(&answer), 1, "the workers learn of it at once");
    assert_eq!(beats(&b.tick(now + PROBE_INTERVAL)), 1);
    assert_eq!(beats(&b.tick(now + REMOTE_TIMEOUT + PROBE_INTERVAL)), 0, "silent: no longer a member");
}

#[test]
fn own_echoes_and_unserved_namespaces_are_ignored() {
    let (mut b, now) = serving();
    assert!(b.from_redis(msg(BROADCAST, "HOST", Some(request("x"))), 2, now).unwrap().is_empty());
    let other_nsp = Message { nsp: "/admin".into(), ..msg(BROADCAST, "REMOTE", None) };
    assert!(b.from_redis(other_nsp, 2, now).unwrap().is_empty());
}

#[test]
fn what_no_worker_could_take_is_refused_and_nothing_of_it_goes_anywhere() {
    let (mut b, now) = serving();
    // socket.io-adapter reads `message.data.requestId` of every request.
    assert_eq!(b.from_redis(msg(BROADCAST, "REMOTE", None), 2, now), Err(Rejection::Field("data")));
    let nil_key = Mp::Map(vec![(Mp::Nil, Mp::from(1))]);
    assert_eq!(b.from_redis(msg(BROADCAST, "REMOTE", Some(nil_key)), 2, now), Err(Rejection::NonStringKey));
    assert_eq!(b.from_redis(msg(99, "REMOTE", None), 2, now), Err(Rejection::UnknownType(99)));
    // Refused before the sender counted as a cluster member.
    assert!(to_workers(&b.tick(now + PROBE_INTERVAL)).is_empty());
}

#[test]
fn a_request_id_in_flight_cannot_be_taken_over_nor_its_requester_fill_the_table() {
    let (mut b, now) = serving();
    b.from_redis(msg(FETCH_SOCKETS, "REMOTE", Some(request("r1"))), 2, now).unwrap();
    assert_eq!(b.from_redis(msg(FETCH_SOCKETS, "REMOTE", Some(request("r1"))), 2, now), Err(Rejection::Duplicate));
    // Another server's request of the same id is its own.
    b.from_redis(msg(FETCH_SOCKETS, "OTHER", Some(request("r1"))), 2, now).unwrap();
    assert!(b.takes_response("REMOTE", Some("r1")) && b.takes_response("OTHER", Some("r1")));
    for i in 0..MAX_REQUESTS_PER_REMOTE + 10 {
        b.from_redis(msg(FETCH_SOCKETS, "FLOOD", Some(request(&format!("f{i}")))), 2, now).unwrap();
    }
    assert_eq!(b.incoming_by_requester["FLOOD"], MAX_REQUESTS_PER_REMOTE);
    b.from_redis(msg(FETCH_SOCKETS, "LATE", Some(request("l1"))), 2, now).unwrap();
    assert!(b.takes_response("LATE", Some("l1")), "the others still get answers");
    b.tick(now + ANSWER_WITHIN);
    assert!(b.incoming.is_empty() && b.incoming_by_requester.is_empty(), "all forgotten at their deadline");
}

/// An answer to the probe `b` sent when it began to serve "/".
fn probe_answer(b: &Bridge) -> Mp {
    with(&format!("{PROBE_ID}HOST-{}", b.probes), "sockets", Mp::Array(vec![]))
}

#[test]
fn remote_servers_and_namespaces_are_bounded() {
    let (mut b, now) = serving();
    let mut heartbeaten = 0;
    for i in 0..100 {
        // Made-up uids that only speak are no members.
        let out = b.from_redis(msg(HEARTBEAT, &format!("chatty{i}"), None), 2, now).unwrap();
        heartbeaten += to_workers(&out).len();
    }
    assert_eq!(heartbeaten, 0);
    // Nor is one that answers another host's probe.
    let foreign = with(&format!("{PROBE_ID}ELSEWHERE-1"), "sockets", Mp::Array(vec![]));
    assert!(to_workers(&b.from_redis(msg(FETCH_SOCKETS_RESPONSE, "x", Some(foreign)), 2, now).unwrap()).is_empty());
    for i in 0..MAX_REMOTES + 50 {
        let out = b.from_redis(msg(FETCH_SOCKETS_RESPONSE, &format!("fake{i}"), Some(probe_answer(&b))), 2, now);
        heartbeaten += to_workers(&out.unwrap()).len();
    }
    assert_eq!(heartbeaten, MAX_REMOTES, "past the bound no server becomes a member");
    for i in 0..MAX_NAMESPACES + 50 {
        b.from_worker(Message { nsp: format!("/n{i}"), ..msg(INITIAL_HEARTBEAT, "w1", None) }, now);
    }
    assert_eq!(b.namespaces.len(), MAX_NAMESPACES);
}

#[test]
fn a_namespace_no_worker_serves_is_unsubscribed_after_the_grace_and_served_again_on_use() {
    let (mut b, now) = serving();
    let dynamic = Message { nsp: "/room-42".into(), ..msg(INITIAL_HEARTBEAT, "w1", None) };
    b.from_worker(dynamic.clone(), now);
    let served = |nsp: &str| nsp == "/";
    assert!(b.forget_unserved(now, served).is_empty(), "a restart is shorter than the grace");
    let later = b.forget_unserved(now + UNSERVED_GRACE, served);
    assert_eq!(later, [Action::Unsubscribe(vec!["socket.io#/room-42#".into(), "socket.io#/room-42#HOST#".into()])]);
    assert_eq!(b.namespaces.iter().collect::<Vec<_>>(), ["/"], "no longer probed");
    // Back in use: subscribed again.
    let again = b.from_worker(dynamic, now + UNSERVED_GRACE);
    assert!(again.iter().any(|a| matches!(a, Action::Subscribe(_))), "{again:?}");
    // A namespace served again before the grace runs out is kept.
    assert!(b.forget_unserved(now + UNSERVED_GRACE, |_| false).is_empty());
    assert!(b.forget_unserved(now + UNSERVED_GRACE * 3 / 2, |_| true).is_empty());
    assert!(b.forget_unserved(now + UNSERVED_GRACE * 2, |_| false).is_empty(), "its clock started anew");
}
