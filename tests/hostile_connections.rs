//! Hostile connections at the front door, against a real `rendezvous` process (so
//! its open files can be counted in /proc/PID/fd): sockets that send nothing or half
//! a request, the per-address cap on connections not yet upgraded, the keep-alive
//! idle deadline, and client addresses named by a trusted proxy. Attackers connect
//! from their own loopback addresses (127.0.0.2, …: bound before connect); the
//! users who must notice nothing connect from 127.0.0.1.

use rendezvous_test_support as common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::chat::{expect_message, send_text, sent};
use common::cluster::Node;
use common::{http_get, room_of, Client};
use rendezvous_actors::protocol::ServerFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::MaybeTlsStream;

/// The margin of the issue: a deadline is met when the server closed the socket
/// within it plus this.
const GRACE: Duration = Duration::from_secs(5);

fn lo(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to `addr` from the local address `src` (bound before connect).
async fn connect_from(src: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(src, 0)).unwrap_or_else(|e| panic!("bind {src}: {e}"));
    socket.connect(addr).await.unwrap_or_else(|e| panic!("connect from {src} to {addr}: {e}"))
}

/// Read (discarding) until the peer closes; true if it did within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.is_ok()
}

/// Open descriptors of process `pid`.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Samples a process's open files every 10 ms on its own thread, keeping the most.
struct FdSampler {
    max: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FdSampler {
    fn start(pid: u32) -> FdSampler {
        let (max, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (m, s) = (max.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(open_files(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        FdSampler { max, stop, thread: Some(thread) }
    }

    /// Stop sampling; the most open files seen.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max.load(Ordering::Relaxed)
    }
}

/// The value of one series (`name{labels}` exactly as exported) on `/metrics`.
async fn metric(node: &Node, series: &str) -> f64 {
    let (status, body) = http_get(node.addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics answered {status}");
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not exported:\n{body}"))
}

const PENDING: &str = "rendezvous_connections_pending";
const REFUSED_PER_IP: &str = "rendezvous_connections_refused_total{reason=\"pending_per_ip\"}";
const REFUSED_TOTAL: &str = "rendezvous_connections_refused_total{reason=\"pending_total\"}";
const EVICTED: &str = "rendezvous_connections_refused_total{reason=\"pending_evicted\"}";
const TIMED_OUT_HANDSHAKE: &str = "rendezvous_connections_timed_out_total{phase=\"handshake\"}";
const TIMED_OUT_IDLE: &str = "rendezvous_connections_timed_out_total{phase=\"idle\"}";

/// A WebSocket session for `user` from the local address `src`, with extra
/// headers; Err carries the HTTP status of a refused upgrade.
async fn ws_from(
    node: &Node,
    src: IpAddr,
    user: &str,
    headers: &[(&'static str, &str)],
) -> Result<Client, u16> {
    let mut req = node.ws_url(user).into_client_request().expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().expect("header value"));
    }
    let stream = connect_from(src, node.addr).await;
    let ws = match tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)).await {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            return Err(resp.status().as_u16())
        }
        Err(e) => panic!("{user}: upgrade failed: {e}"),
    };
    let mut c = Client { ws, user_id: user.into(), welcome: ServerFrame::NoMatchFound {} };
    c.welcome = c.recv().await;
    assert_eq!(c.welcome.kind(), "welcome", "{user}: first frame");
    Ok(c)
}

/// A node whose only pending cap is a total of `cap`, with a handshake deadline far
/// enough that nothing times out during a test.
fn total_capped_node(cap: usize) -> Node {
    Node::spawn(
        None,
        "n1",
        &[
            ("--handshake-timeout-ms", "30000"),
            ("--max-pending-connections", &cap.to_string()),
            ("--max-pending-per-ip", "0"),
        ],
    )
}

/// Two new users on `node`, matched on interests no one else has; and their room.
async fn matched_pair(node: &Node, a: &str, b: &str) -> (Client, Client, String) {
    let (mut ca, mut cb) = (node.client(a).await, node.client(b).await);
    let topic = format!("topic-{a}-{b}");
    ca.find_match(&[&topic, "front-door"]).await;
    cb.find_match(&[&topic, "front-door"]).await;
    let ra = room_of(&ca.recv_kind("match_found").await);
    let rb = room_of(&cb.recv_kind("match_found").await);
    assert_eq!(ra, rb, "{a} and {b} matched together");
    (ca, cb, ra)
}

/// `from` says `text` in `room` and `to` gets it.
async fn chat(from: &mut Client, to: &mut Client, room: &str, text: &str) {
    send_text(from, room, text, text).await;
    sent(from, room, text).await;
    let m = expect_message(to).await;
    assert_eq!((m.text.as_str(), m.sender.as_str()), (text, from.user_id.as_str()));
}

/// 1,000 sockets from 10 attacker addresses, half silent and half stopping in the
/// request line or the headers: each is closed by the server within the handshake
/// timeout plus 5 s (past the per-address cap, at once); the node's open files stay
/// within its baseline plus the pending cap plus the sessions; and while they are
/// open, new users from 127.0.0.1 connect, match and chat, as do users who were
/// already chatting.
#[tokio::test]
async fn silent_and_half_header_sockets_are_closed_and_bounded() {
    const HANDSHAKE_MS: u64 = 3000;
    const PENDING_CAP: usize = 700;
    const PER_IP: usize = 64;
    const ADDRESSES: u8 = 10;
    const SOCKETS: usize = 1000;
    let node = Node::spawn(
        None,
        "n1",
        &[
            ("--handshake-timeout-ms", &HANDSHAKE_MS.to_string()),
            ("--max-pending-connections", &PENDING_CAP.to_string()),
            ("--max-pending-per-ip", &PER_IP.to_string()),
        ],
    );
    let (mut alice, mut bob, room) = matched_pair(&node, "alice", "bob").await;
    chat(&mut alice, &mut bob, &room, "before").await;
    let baseline = open_files(node.pid());
    let sampler = FdSampler::start(node.pid());

    let connected = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let within = Duration::from_millis(HANDSHAKE_MS) + GRACE;
    let mut attackers = Vec::with_capacity(SOCKETS);
    for i in 0..SOCKETS {
        let src = lo(2 + (i % ADDRESSES as usize) as u8);
        let (addr, connected, open) = (node.addr, connected.clone(), open.clone());
        attackers.push(tokio::spawn(async move {
            let mut s = connect_from(src, addr).await;
            let started = Instant::now();
            open.fetch_add(1, Ordering::SeqCst);
            connected.fetch_add(1, Ordering::SeqCst);
            let partial: &[u8] = match i % 4 {
                0 | 2 => b"",
                1 => b"GET /ws?user=slow HTT",
                _ => {
                    b"GET /ws?user=slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-"
                }
            };
            // A refused socket may already be closed: then the write may fail.
            let _ = s.write_all(partial).await;
            let closed = closed_within(&mut s, within).await;
            open.fetch_sub(1, Ordering::SeqCst);
            (src, closed, started.elapsed())
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while connected.load(Ordering::SeqCst) < SOCKETS {
        assert!(Instant::now() < deadline, "attack sockets did not connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // While they are open: new users connect, match and chat; old ones go on.
    let (mut carol, mut dave, room2) = matched_pair(&node, "carol", "dave").await;
    let held_while_new_users_matched = open.load(Ordering::SeqCst);
    chat(&mut carol, &mut dave, &room2, "during").await;
    chat(&mut bob, &mut alice, &room, "during-too").await;
    assert!(
        held_while_new_users_matched >= 500,
        "the attack should still be holding its sockets: {held_while_new_users_matched} open"
    );

    let mut late = Vec::new();
    for a in attackers {
        let (src, closed, took) = a.await.expect("attacker task");
        if !closed {
            late.push((src, took));
        }
    }
    let max_files = sampler.finish();
    eprintln!(
        "open files: baseline {baseline}, peak {max_files}; {held_while_new_users_matched} attack sockets open when carol and dave matched"
    );
    assert!(
        late.is_empty(),
        "{} sockets not closed within {within:?}, e.g. {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
    // The sessions opened meanwhile (carol, dave) and a few files of our own probes.
    let bound = baseline + PENDING_CAP + 2 + 16;
    assert!(
        max_files <= bound,
        "open files peaked at {max_files}: baseline {baseline} + pending cap {PENDING_CAP} + 2 sessions + 16"
    );
    assert!(
        max_files >= baseline + 500,
        "the sampler never saw the attack: peak {max_files}, baseline {baseline}"
    );
    // Every attack socket was either refused at once or timed out: none was served.
    let refused = metric(&node, REFUSED_PER_IP).await + metric(&node, REFUSED_TOTAL).await;
    let timed_out = metric(&node, TIMED_OUT_HANDSHAKE).await;
    assert_eq!(refused + timed_out, SOCKETS as f64, "refused {refused} + timed out {timed_out}");
    assert!(refused >= 1.0, "the per-address cap refused none");
    chat(&mut alice, &mut bob, &room, "after").await;
}

/// Past `--max-pending-per-ip`, a new connection from that address is closed at
/// once (long before the handshake timeout) and counted, while other addresses get
/// in; a trusted proxy's own address is not capped; a session keeps chatting
/// throughout.
#[tokio::test]
async fn past_the_per_ip_pending_cap_a_connection_is_closed_at_once() {
    const PER_IP: usize = 8;
    let node = Node::spawn(
        None,
        "n1",
        &[
            ("--handshake-timeout-ms", "30000"),
            ("--max-pending-connections", "100"),
            ("--max-pending-per-ip", &PER_IP.to_string()),
            ("--trusted-proxies", "127.0.0.4/32"),
        ],
    );
    let (mut alice, mut bob, room) = matched_pair(&node, "alice", "bob").await;
    chat(&mut alice, &mut bob, &room, "before").await;

    let (attacker, other, proxy) = (lo(2), lo(3), lo(4));
    let mut held = Vec::new();
    for _ in 0..PER_IP {
        held.push(connect_from(attacker, node.addr).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, PENDING).await < PER_IP as f64 {
        assert!(Instant::now() < deadline, "the node never counted {PER_IP} pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    chat(&mut bob, &mut alice, &room, "while-held").await;

    let mut one_more = connect_from(attacker, node.addr).await;
    assert!(
        closed_within(&mut one_more, GRACE).await,
        "a connection past the per-address cap was not closed at once"
    );
    assert_eq!(metric(&node, REFUSED_PER_IP).await, 1.0);
    assert_eq!(metric(&node, REFUSED_TOTAL).await, 0.0);

    // Other addresses still get in: a session and a plain request.
    let mut carol = ws_from(&node, other, "carol", &[]).await.expect("carol from 127.0.0.3");
    carol.send_json(serde_json::json!({"action": "cancel_match"})).await;
    assert_eq!(carol.recv().await.kind(), "match_cancelled");

    // A trusted proxy carries many clients: its address meets only the total cap.
    for _ in 0..PER_IP + 4 {
        held.push(connect_from(proxy, node.addr).await);
    }
    let mut via_proxy = connect_from(proxy, node.addr).await;
    via_proxy
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(GRACE, via_proxy.read_to_string(&mut answer))
        .await
        .expect("the proxy's request was answered")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "through the proxy: {answer}");
    assert_eq!(metric(&node, REFUSED_PER_IP).await, 1.0, "the proxy was not capped");
    assert!(metric(&node, PENDING).await >= (2 * PER_IP + 4) as f64);

    chat(&mut alice, &mut bob, &room, "after").await;
    for s in &mut held {
        assert!(!closed_within(s, Duration::from_millis(1)).await, "a held socket was closed");
    }
}

/// Past `--max-pending-connections`, while the pending connections are young (none
/// has waited the displacement age), a new connection from any address is closed
/// at once and counted; a freed slot is usable again; a session keeps chatting.
#[tokio::test]
async fn past_the_total_pending_cap_a_connection_is_closed_at_once() {
    const CAP: usize = 16;
    let node = total_capped_node(CAP);
    let (mut alice, mut bob, room) = matched_pair(&node, "alice", "bob").await;
    // Sockets are accepted in the order they connected: these fill the cap first.
    let mut held = Vec::new();
    for i in 0..CAP {
        held.push(connect_from(lo(2 + (i % 2) as u8), node.addr).await);
    }
    let mut one_more = connect_from(lo(5), node.addr).await;
    assert!(
        closed_within(&mut one_more, GRACE).await,
        "a connection past the total cap was not closed at once"
    );
    chat(&mut alice, &mut bob, &room, "while-full").await;
    drop(held.pop());
    // The freed slot takes our /metrics request (retried: the close is seen by the
    // server a moment after we make it).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect_from(lo(1), node.addr).await;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut text = String::new();
        let _ = tokio::time::timeout(GRACE, s.read_to_string(&mut text)).await;
        if let Some(line) = text.lines().find(|l| l.starts_with(REFUSED_TOTAL)) {
            let refused: f64 = line[REFUSED_TOTAL.len()..].trim().parse().expect("a number");
            assert!(refused >= 1.0, "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "no /metrics answer after a slot was freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    chat(&mut bob, &mut alice, &room, "after").await;
}

/// With the total pending cap full of stalled sockets, a newcomer is refused while
/// they are young, and after a second takes the oldest one's place.
#[tokio::test]
async fn a_full_door_lets_a_new_user_in_by_closing_the_oldest_stalled_socket() {
    const CAP: usize = 16;
    let node = total_capped_node(CAP);
    // Silent sockets from two addresses fill every pending slot.
    let mut held = Vec::new();
    for i in 0..CAP {
        held.push(connect_from(lo(2 + (i % 2) as u8), node.addr).await);
    }
    // While they are young, a newcomer is the one refused (a real handshake takes
    // milliseconds, so a young pending connection is given its chance).
    let mut early = connect_from(lo(4), node.addr).await;
    assert!(closed_within(&mut early, GRACE).await, "a newcomer past a young full door got in");
    // A second later (displacement starts after min(1 s, half the handshake
    // timeout)), new users get in: each takes the place of the oldest stalled socket.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (mut alice, mut bob, room) = matched_pair(&node, "alice", "bob").await;
    chat(&mut alice, &mut bob, &room, "through-a-full-door").await;
    assert!(
        closed_within(&mut held[0], GRACE).await,
        "the oldest stalled socket was not closed to make room"
    );
    assert!(metric(&node, EVICTED).await >= 1.0, "displacements are counted");
    // The newest stalled sockets are still open: only the oldest gave way.
    let newest = held.last_mut().expect("held");
    assert!(!closed_within(newest, Duration::from_millis(200)).await);
}

/// Sessions and pending connections together stay within the open-file limit
/// minus the node's reserve, with the automatic pending cap.
#[tokio::test]
async fn sessions_and_pending_connections_never_exceed_the_file_limit() {
    // A node with 600 files: 570 sessions at most (95 %), and the automatic pending
    // cap (4,096) is held to what the files leave beside the open sessions.
    const FILES: usize = 600;
    const SESSIONS: usize = 400;
    let node = Node::spawn_with_file_limit(
        Some(FILES as u64),
        None,
        "n1",
        &[("--handshake-timeout-ms", "30000"), ("--max-pending-per-ip", "0")],
    );
    // The node's own files (listener, epoll, eventfds, logs): what the reserve is for.
    let own = open_files(node.pid());
    let (mut alice, mut bob, room) = matched_pair(&node, "alice", "bob").await;
    let mut idle = Vec::new();
    for i in 0..SESSIONS - 2 {
        idle.push(node.client(&format!("idle{i}")).await);
    }
    // A burst of stalled sockets, well within the displacement age (1 s).
    let mut stalled = Vec::new();
    for i in 0..400 {
        stalled.push(connect_from(lo(2 + (i % 4) as u8), node.addr).await);
    }
    // The kernel would stop it at FILES anyway (accept failing with EMFILE, and
    // Redis reconnects with it); the node stops itself short of that: sessions and
    // pending connections within FILES - 64, its own files in the reserve.
    let peak = open_files(node.pid());
    assert!(
        peak <= FILES - 64 + own + 4,
        "the node holds {peak} files of its {FILES} ({own} of its own): no reserve left"
    );
    // Those the files had no room for were closed at once.
    let mut refused = 0;
    for s in stalled.iter_mut().rev().take(200) {
        if closed_within(s, Duration::from_millis(20)).await {
            refused += 1;
        }
    }
    assert!(refused >= 100, "only {refused} of the last 200 stalled sockets were refused");
    // Room again for a /metrics request once the stalled sockets are gone.
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(metric(&node, REFUSED_TOTAL).await >= 100.0);
    // The sessions notice nothing.
    chat(&mut alice, &mut bob, &room, "beside-a-full-door").await;
    assert_eq!(idle.len(), SESSIONS - 2);
}

/// A keep-alive connection serves a second request, then is closed once idle for
/// `--http-idle-timeout-ms` after its last response.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    const IDLE_MS: u64 = 1000;
    let node = Node::spawn(None, "n1", &[("--http-idle-timeout-ms", &IDLE_MS.to_string())]);
    let mut s = TcpStream::connect(node.addr).await.expect("connect");
    let mut last_answer = Instant::now();
    for round in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !String::from_utf8_lossy(&got).ends_with("ok\n") {
            let n = tokio::time::timeout(GRACE, s.read(&mut buf))
                .await
                .expect("answer in time")
                .expect("read");
            assert!(n > 0, "round {round}: closed before the answer");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"), "round {round}");
        last_answer = Instant::now();
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(IDLE_MS / 2)).await;
        }
    }
    let limit = Duration::from_millis(IDLE_MS) + GRACE;
    assert!(closed_within(&mut s, limit).await, "idle keep-alive still open after {limit:?}");
    let idle = last_answer.elapsed();
    assert!(
        idle >= Duration::from_millis(IDLE_MS * 8 / 10),
        "closed after only {idle:?} idle: not the idle deadline"
    );
    assert_eq!(metric(&node, TIMED_OUT_IDLE).await, 1.0);
}

/// Behind a trusted proxy, `--max-sessions-per-ip` counts the forwarded client
/// addresses (`X-Forwarded-For`, `Forwarded`); the same headers from an untrusted
/// peer are ignored, so it is counted by its own address.
#[tokio::test]
async fn per_ip_session_cap_counts_clients_named_by_trusted_proxies() {
    let node = Node::spawn(
        None,
        "n1",
        &[
            ("--max-sessions-per-ip", "1"),
            ("--trusted-proxies", "127.0.0.1/32"),
            ("--anonymous", "allow"),
        ],
    );
    let proxy = lo(1);
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];
    let _u1 = ws_from(&node, proxy, "u1", &xff("203.0.113.1")).await.expect("first client");
    let _u2 = ws_from(&node, proxy, "u2", &xff("203.0.113.2")).await.expect("second client");
    assert_eq!(
        ws_from(&node, proxy, "u3", &xff("203.0.113.1")).await.err(),
        Some(503),
        "a second session of 203.0.113.1"
    );
    // The client appended to what it sent itself: the proxy's entry is the right-most.
    let _u4 = ws_from(&node, proxy, "u4", &[("x-forwarded-for", "203.0.113.1, 203.0.113.4")])
        .await
        .expect("the right-most entry is the client");
    let fwd = [("forwarded", "for=\"[2001:db8::1]:4711\";proto=http")];
    let _u5 = ws_from(&node, proxy, "u5", &fwd).await.expect("Forwarded client");
    assert_eq!(
        ws_from(&node, proxy, "u6", &[("forwarded", "for=\"[2001:db8::1]\"")]).await.err(),
        Some(503),
        "the same Forwarded client again"
    );

    // 127.0.0.2 is not a trusted proxy: its headers are ignored.
    let stranger = lo(2);
    let _u7 = ws_from(&node, stranger, "u7", &xff("198.51.100.1")).await.expect("first");
    assert_eq!(
        ws_from(&node, stranger, "u8", &xff("198.51.100.2")).await.err(),
        Some(503),
        "counted by its own address, whatever it forwards"
    );
}

/// A request head over `--max-header-bytes` gets 431; a limit below hyper's
/// smallest buffer stops the binary at start.
#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    const LIMIT: usize = 16 * 1024;
    let node = Node::spawn(None, "n1", &[("--max-header-bytes", &LIMIT.to_string())]);
    let status_of = |head: Vec<u8>| async move {
        let mut s = TcpStream::connect(node.addr).await.expect("connect");
        // The server may answer (and close) before it has read everything we send.
        let _ = s.write_all(&head).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(GRACE, s.read(&mut buf)).await.expect("answer in time") {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).lines().next().unwrap_or_default().to_owned()
    };
    let request = |pad: usize| {
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(pad))
            .into_bytes()
    };
    // A head a little under the limit is served; one over it is refused with 431.
    assert!(status_of(request(LIMIT / 2)).await.starts_with("HTTP/1.1 200"));
    let refused = status_of(request(LIMIT * 2)).await;
    assert!(refused.starts_with("HTTP/1.1 431"), "oversized head answered {refused:?}");
    // A limit below hyper's smallest buffer is refused at start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rendezvous"))
        .args(["--bind", "127.0.0.1:0", "--max-header-bytes", "4096"])
        .output()
        .expect("run the binary");
    assert!(!out.status.success(), "a 4 KiB header limit was accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_header_bytes"));
}
