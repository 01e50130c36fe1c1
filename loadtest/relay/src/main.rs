//! `rendezvous-relay`: the benchmark **ceiling** for Rendezvous.
//!
//! A deliberately minimal tokio-tungstenite server that speaks the subset of
//! protocol v1 the load tester (`rendezvous-loadtest`) drives, with frames built
//! from the same `rendezvous-protocol` types as the engine, so the bytes on the
//! wire are identical. It only pairs connections and forwards frames; the engine's
//! throughput and latency are reported as a fraction of this program's.
//!
//! What it does:
//! * `GET /ws?user=NAME` upgrade (any name is accepted; `anon-N` when absent), first
//!   frame `welcome`; plain `GET /healthz` → 200.
//! * `find_match` → `searching`, then pairs FIFO with the connection waiting on the
//!   *exact same* language + interest set (an O(1) bucket lookup, so the load
//!   tester's per-pair interests keep concurrent pairs apart; no interests = pair
//!   with whoever waits). Both get `match_found` with `partner_id`. Pairs only.
//! * `cancel_match` → `match_cancelled`; `next` → `left` + `searching` again with
//!   the last criteria, the partner gets `presence` `left` and `room_closed`.
//! * `join`/`leave` of `pub:*` rooms (`joined`, `left`, `presence` to the others).
//! * `send` → `ack` to the sender, then `message` to every member including the
//!   sender (as the engine does), with a gap-free per-room `seq`. The `message`
//!   text is serialized once per send and cloned (`Utf8Bytes`) into each outbox.
//! * `typing`, `read`, `signal` are forwarded to the other members (or `to`).
//! * A dropped connection leaves the waiting list and all its rooms at once.
//!
//! What it deliberately leaves out: authentication, rate limits, history and
//! persistence (`history` and `block` answer `bad_request`), matching scores and
//! the relaxation ladder, groups larger than two, skip lists after `next`, the
//! reconnect grace, duplicate-session replacement, clustering, metrics, draining.
//!
//! Architecture: a multi-threaded tokio runtime (`--threads`); per connection one
//! reader task (this file's `connection`) and one writer task fed by a bounded
//! channel (`--queue`, 1024). A full channel drops that connection. Shared state is
//! a `DashMap` of rooms (each behind its own `Mutex`) and one `Mutex`ed map of
//! waiting searches. Errors end only the connection they happen on.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use dashmap::DashMap;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use rendezvous_protocol::{ChatMessage, ClientFrame, ErrorCode, PresenceStatus, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Largest accepted WebSocket message and frame (the engine's default).
const MAX_FRAME: usize = 64 << 10;
/// Longest chat text, in characters.
const MAX_TEXT_CHARS: usize = 4096;
/// Longest accepted `?user=` value, in bytes.
const MAX_USER: usize = 64;
/// Most interests in one `find_match`.
const MAX_INTERESTS: usize = 20;
/// Frames the writer sends before one flush.
const WRITE_BATCH: usize = 256;

#[derive(Parser)]
#[command(
    name = "rendezvous-relay",
    about = "Minimal pair-and-forward WebSocket relay (benchmark ceiling)"
)]
struct Cli {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:9090")]
    bind: SocketAddr,
    /// Runtime worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Outbound frames queued per connection before it is dropped.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = cli.threads.unwrap_or(cores).max(1);
    // One file descriptor per connection: lift the soft limit to the hard limit.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("rendezvous-relay: could not raise the open-file limit: {e}");
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build();
    match runtime {
        Ok(rt) => rt.block_on(serve(cli, threads)),
        Err(e) => {
            eprintln!("rendezvous-relay: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A long accept queue, as the engine has: at thousands of connections per second
/// a short one drops SYNs, and each costs its client a one-second retransmit.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(8192)
}

async fn serve(cli: Cli, threads: usize) -> ExitCode {
    let listener = match listen(cli.bind) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rendezvous-relay: cannot bind {}: {e}", cli.bind);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map_or_else(|_| cli.bind.to_string(), |a| a.to_string());
    println!("rendezvous-relay listening on {addr} ({threads} threads)");
    let state = Arc::new(State {
        rooms: DashMap::new(),
        waiting: Mutex::new(HashMap::new()),
        ids: AtomicU64::new(1),
        queue: cli.queue.max(1),
    });
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return ExitCode::SUCCESS,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, state.clone()));
                }
                // Usually EMFILE: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

/// SIGINT or SIGTERM: exit 0 (no drain; open connections just drop).
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Poison-tolerant lock: a panicked holder must not take the whole relay down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn text(frame: &ServerFrame) -> Utf8Bytes {
    frame.to_json().into()
}

struct State {
    rooms: DashMap<Arc<str>, Arc<Room>>,
    /// Waiting searches by criteria key; at most one per key (a second one pairs).
    waiting: Mutex<HashMap<String, Arc<Peer>>>,
    ids: AtomicU64,
    queue: usize,
}

impl State {
    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Open a match room for `a` (waited) and `b` (arrived) and tell both.
    fn open_match(&self, a: Arc<Peer>, b: Arc<Peer>, interests: Vec<String>) {
        let id: Arc<str> = format!("r{}", self.next_id()).into();
        let room = Arc::new(Room::new(id.clone(), false, vec![a.clone(), b.clone()]));
        self.rooms.insert(id.clone(), room.clone());
        // A peer whose cleanup already ran (rooms = None) leaves right away.
        let gone: Vec<Arc<Peer>> = [&a, &b]
            .into_iter()
            .filter(|p| match lock(&p.rooms).as_mut() {
                Some(v) => {
                    v.push(room.clone());
                    false
                }
                None => true,
            })
            .cloned()
            .collect();
        let members = vec![a.user.to_string(), b.user.to_string()];
        let score = u32::try_from(interests.len()).unwrap_or(u32::MAX);
        for (me, other) in [(&a, &b), (&b, &a)] {
            me.send(&ServerFrame::MatchFound {
                room_id: id.to_string(),
                partner_id: Some(other.user.to_string()),
                members: members.clone(),
                shared_interests: interests.clone(),
                score,
            });
        }
        for g in gone {
            self.leave_room(&room, &g);
        }
    }

    /// Take `peer` out of `room`, tell the others, and close the room when a match
    /// room is down to one member or a public room is empty. `false`: not a member.
    fn leave_room(&self, room: &Arc<Room>, peer: &Peer) -> bool {
        let mut inner = lock(&room.inner);
        let Some(pos) = inner.members.iter().position(|m| m.conn == peer.conn) else {
            return false;
        };
        inner.members.remove(pos);
        let room_id = room.id.to_string();
        let left = text(&ServerFrame::Presence {
            room_id: room_id.clone(),
            user_id: peer.user.to_string(),
            status: PresenceStatus::Left,
        });
        inner.members.iter().for_each(|m| m.push(left.clone()));
        let close = if room.public { inner.members.is_empty() } else { inner.members.len() <= 1 };
        if close {
            let closed =
                text(&ServerFrame::RoomClosed { room_id, reason: Some("partner_left".into()) });
            inner.members.iter().for_each(|m| m.push(closed.clone()));
            inner.closed = true;
            let rest = std::mem::take(&mut inner.members);
            drop(inner);
            rest.iter().for_each(|m| m.forget(room));
            self.rooms.remove_if(&room.id, |_, r| Arc::ptr_eq(r, room));
        }
        true
    }
}

struct Room {
    id: Arc<str>,
    public: bool,
    inner: Mutex<RoomInner>,
}

struct RoomInner {
    /// Last `seq` handed out.
    seq: u64,
    members: Vec<Arc<Peer>>,
    /// Set once, when the room is dropped from the map.
    closed: bool,
}

impl Room {
    fn new(id: Arc<str>, public: bool, members: Vec<Arc<Peer>>) -> Self {
        Self { id, public, inner: Mutex::new(RoomInner { seq: 0, members, closed: false }) }
    }
}

impl RoomInner {
    fn has(&self, conn: u64) -> bool {
        !self.closed && self.members.iter().any(|m| m.conn == conn)
    }
}

/// One connection as seen by rooms and the waiting list.
struct Peer {
    conn: u64,
    user: Arc<str>,
    tx: mpsc::Sender<Utf8Bytes>,
    /// Ends the connection (outbox full, or the writer failed).
    kill: Arc<Notify>,
    /// Rooms this connection is in; `None` once its cleanup has run.
    rooms: Mutex<Option<Vec<Arc<Room>>>>,
}

impl Peer {
    /// Queue a frame without waiting; a full queue drops the connection.
    fn push(&self, frame: Utf8Bytes) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(frame) {
            self.kill.notify_one();
        }
    }

    fn send(&self, frame: &ServerFrame) {
        self.push(text(frame));
    }

    fn forget(&self, room: &Arc<Room>) {
        if let Some(v) = lock(&self.rooms).as_mut() {
            v.retain(|r| !Arc::ptr_eq(r, room));
        }
    }
}

/// Failure of one client action, answered with an `error` frame.
type Outcome = Result<(), (ErrorCode, String)>;

fn fail<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, (ErrorCode, String)> {
    Err((code, message.into()))
}

/// `user` from the query string, taken verbatim (no decoding, no checks beyond length).
fn query_user(query: Option<&str>) -> Option<String> {
    let value = query?.split('&').find_map(|kv| kv.strip_prefix("user="))?;
    (!value.is_empty() && value.len() <= MAX_USER).then(|| value.to_owned())
}

/// Whether the request on `stream` is `GET /healthz`, judged from peeked bytes.
async fn is_healthz(stream: &TcpStream) -> bool {
    const PREFIX: &[u8] = b"GET /healthz";
    let mut buf = [0u8; PREFIX.len()];
    for _ in 0..200 {
        match stream.peek(&mut buf).await {
            Ok(n) if n == PREFIX.len() => return buf == PREFIX,
            Ok(n) if n > 0 && PREFIX.starts_with(&buf[..n]) => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            _ => return false,
        }
    }
    false
}

async fn healthz(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
    let reply = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n";
    let _ = stream.write_all(reply).await;
    let _ = stream.shutdown().await;
}

// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, state: Arc<State>) {
    let handshake_wait = Duration::from_secs(10);
    match tokio::time::timeout(handshake_wait, is_healthz(&stream)).await {
        Ok(true) => return healthz(stream).await,
        Ok(false) => {}
        Err(_) => return,
    }
    let mut user = None;
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != "/ws" {
            let mut r = ErrorResponse::new(Some("not found".into()));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return Err(r);
        }
        user = query_user(req.uri().query());
        Ok(resp)
    };
    // The engine's buffer sizes, so that neither pays for memory the other does not.
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024);
    let accept = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
    let ws = match tokio::time::timeout(handshake_wait, accept).await {
        Ok(Ok(ws)) => ws,
        _ => return,
    };
    let conn = state.next_id();
    let user: Arc<str> = user.map_or_else(|| format!("anon-{conn}").into(), Arc::from);
    let (tx, rx) = mpsc::channel(state.queue);
    let kill = Arc::new(Notify::new());
    let peer = Arc::new(Peer {
        conn,
        user: user.clone(),
        tx,
        kill: kill.clone(),
        rooms: Mutex::new(Some(Vec::new())),
    });
    let (sink, mut incoming) = ws.split();
    let writer = tokio::spawn(write_loop(sink, rx, kill.clone()));
    let stop_writer = writer.abort_handle();
    peer.send(&ServerFrame::Welcome {
        user_id: user.to_string(),
        session_id: format!("s{conn}"),
        node: "relay".into(),
        rooms: Vec::new(),
        protocol: rendezvous_protocol::PROTOCOL_VERSION,
        room_details: Vec::new(),
        ice_servers: Vec::new(),
    });
    let mut session = Session { state, peer, last: None };
    loop {
        tokio::select! {
            _ = kill.notified() => break,
            msg = incoming.next() => match msg {
                Some(Ok(Message::Text(t))) => session.on_text(t.as_str()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {} // binary, ping, pong: nothing to relay
            },
        }
    }
    session.cleanup();
    drop(session);
    // With every `Peer` gone the channel closes and the writer sends a close frame;
    // a client that stopped reading does not get to hold the task.
    if tokio::time::timeout(Duration::from_secs(1), writer).await.is_err() {
        stop_writer.abort();
    }
}

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;

/// Drain the outbox into the socket, flushing once per batch.
async fn write_loop(mut sink: Sink, mut rx: mpsc::Receiver<Utf8Bytes>, kill: Arc<Notify>) {
    let result: Result<(), tokio_tungstenite::tungstenite::Error> = async {
        while let Some(first) = rx.recv().await {
            sink.feed(Message::Text(first)).await?;
            for _ in 1..WRITE_BATCH {
                match rx.try_recv() {
                    Ok(frame) => sink.feed(Message::Text(frame)).await?,
                    Err(_) => break,
                }
            }
            sink.flush().await?;
        }
        sink.close().await
    }
    .await;
    if result.is_err() {
        kill.notify_one();
    }
}

/// The reader side of one connection: handles its client's actions.
struct Session {
    state: Arc<State>,
    peer: Arc<Peer>,
    /// Criteria key and normalized interests of the last `find_match`.
    last: Option<(String, Vec<String>)>,
}

impl Session {
    fn on_text(&mut self, raw: &str) {
        let frame: ClientFrame = match serde_json::from_str(raw) {
            Ok(f) => f,
            Err(e) => return self.error(ErrorCode::BadRequest, format!("bad frame: {e}"), None),
        };
        let action = frame.action();
        if let Err((code, message)) = self.handle(frame) {
            self.error(code, message, Some(action));
        }
    }

    fn error(&self, code: ErrorCode, message: String, action: Option<&str>) {
        let action = action.map(str::to_owned);
        self.peer.send(&ServerFrame::Error {
            code,
            message,
            retry_after_ms: None,
            action,
            client_msg_id: None,
        });
    }

    fn handle(&mut self, frame: ClientFrame) -> Outcome {
        let me = || self.peer.user.to_string();
        match frame {
            ClientFrame::FindMatch { interests, language, group_size, .. } => {
                self.find_match(interests, language, group_size)
            }
            ClientFrame::CancelMatch {} => {
                self.cancel();
                self.peer.send(&ServerFrame::MatchCancelled {});
                Ok(())
            }
            ClientFrame::Next {} => self.next(),
            ClientFrame::Send { room_id, text, client_msg_id } => {
                self.send(room_id, text, client_msg_id)
            }
            ClientFrame::Typing { room_id, active } => self.relay(&room_id, None, |_| {
                ServerFrame::Typing { room_id: room_id.clone(), user_id: me(), active }
            }),
            ClientFrame::Read { room_id, seq } => self.relay(&room_id, None, |last| {
                ServerFrame::Read { room_id: room_id.clone(), user_id: me(), seq: seq.min(last) }
            }),
            ClientFrame::Signal { room_id, payload, to } => {
                if !payload.is_object() {
                    return fail(ErrorCode::BadRequest, "payload must be a JSON object");
                }
                self.relay(&room_id, to.as_deref(), |_| ServerFrame::Signal {
                    room_id: room_id.clone(),
                    from: me(),
                    payload,
                })
            }
            ClientFrame::Join { room_id } => self.join(room_id),
            ClientFrame::Leave { room_id } => self.leave(room_id),
            ClientFrame::Block { .. }
            | ClientFrame::History { .. }
            | ClientFrame::Refresh { .. } => {
                fail(ErrorCode::BadRequest, "not supported by the relay")
            }
        }
    }

    /// Whether this connection waits under `key`.
    fn waiting_under(&self, key: &str) -> bool {
        lock(&self.state.waiting).get(key).is_some_and(|p| p.conn == self.peer.conn)
    }

    fn find_match(
        &mut self,
        interests: Vec<String>,
        language: Option<String>,
        group_size: Option<u8>,
    ) -> Outcome {
        if group_size.is_some_and(|g| g != 2) {
            return fail(ErrorCode::BadRequest, "the relay only forms pairs (group_size 2)");
        }
        if interests.len() > MAX_INTERESTS {
            return fail(ErrorCode::TooLarge, format!("at most {MAX_INTERESTS} interests"));
        }
        if self.last.as_ref().is_some_and(|(key, _)| self.waiting_under(key)) {
            return fail(ErrorCode::AlreadySearching, "a search is already running");
        }
        let mut norm: Vec<String> = interests.iter().map(|i| i.trim().to_lowercase()).collect();
        norm.sort();
        norm.dedup();
        let lang = language.map(|l| l.trim().to_lowercase()).filter(|l| !l.is_empty());
        let key = serde_json::json!([lang.as_deref().unwrap_or("en"), norm]).to_string();
        self.last = Some((key, norm));
        self.search(false)
    }

    /// Search with the last criteria: wait, or pair with whoever waits there.
    fn search(&mut self, again: bool) -> Outcome {
        let Some((key, interests)) = self.last.clone() else {
            return fail(ErrorCode::BadRequest, "next needs an earlier find_match");
        };
        let ticket = ServerFrame::Searching { ticket: format!("t{}", self.state.next_id()) };
        let partner = {
            let mut waiting = lock(&self.state.waiting);
            match waiting.get(&key) {
                Some(p) if p.conn == self.peer.conn && again => {
                    self.peer.send(&ticket);
                    return Ok(());
                }
                Some(p) if p.user == self.peer.user => {
                    return fail(ErrorCode::AlreadySearching, "a search is already running");
                }
                _ => {}
            }
            // Queued under the lock, so `searching` precedes any `match_found`.
            self.peer.send(&ticket);
            let partner = waiting.remove(&key);
            if partner.is_none() {
                waiting.insert(key, self.peer.clone());
            }
            partner
        };
        if let Some(partner) = partner {
            self.state.open_match(partner, self.peer.clone(), interests);
        }
        Ok(())
    }

    fn cancel(&self) {
        if let Some((key, _)) = &self.last {
            let mut waiting = lock(&self.state.waiting);
            if waiting.get(key).is_some_and(|p| p.conn == self.peer.conn) {
                waiting.remove(key);
            }
        }
    }

    fn next(&mut self) -> Outcome {
        if self.last.is_none() {
            return fail(ErrorCode::BadRequest, "next needs an earlier find_match");
        }
        let current = lock(&self.peer.rooms)
            .as_ref()
            .and_then(|rooms| rooms.iter().rev().find(|r| !r.public).cloned());
        if let Some(room) = current {
            self.peer.forget(&room);
            if self.state.leave_room(&room, &self.peer) {
                self.peer.send(&ServerFrame::Left { room_id: room.id.to_string() });
            }
        }
        self.search(true)
    }

    fn room(&self, room_id: &str) -> Result<Arc<Room>, (ErrorCode, String)> {
        match self.state.rooms.get(room_id) {
            Some(r) => Ok(r.value().clone()),
            None => fail(ErrorCode::NotInRoom, format!("not in room {room_id}")),
        }
    }

    fn send(&self, room_id: String, body: String, client_msg_id: Option<String>) -> Outcome {
        if body.trim().is_empty() {
            return fail(ErrorCode::BadRequest, "text must not be empty");
        }
        if body.chars().count() > MAX_TEXT_CHARS {
            return fail(
                ErrorCode::TooLarge,
                format!("text is longer than {MAX_TEXT_CHARS} characters"),
            );
        }
        let room = self.room(&room_id)?;
        let mut inner = lock(&room.inner);
        if !inner.has(self.peer.conn) {
            return fail(ErrorCode::NotInRoom, format!("not in room {room_id}"));
        }
        // seq, ack and fan-out under the room lock: every member sees seq order.
        inner.seq += 1;
        let seq = inner.seq;
        let msg_id = format!("m{}", self.state.next_id());
        self.peer.send(&ServerFrame::Ack {
            client_msg_id,
            room_id: room_id.clone(),
            seq,
            msg_id: msg_id.clone(),
        });
        let message = text(&ServerFrame::Message(ChatMessage {
            room_id,
            seq,
            msg_id,
            sender: self.peer.user.to_string(),
            text: body,
            ts: now_ms(),
        }));
        inner.members.iter().for_each(|m| m.push(message.clone()));
        Ok(())
    }

    /// Forward a frame (built from the room's last seq) to `to` or to every other member.
    fn relay(
        &self,
        room_id: &str,
        to: Option<&str>,
        build: impl FnOnce(u64) -> ServerFrame,
    ) -> Outcome {
        let room = self.room(room_id)?;
        let inner = lock(&room.inner);
        if !inner.has(self.peer.conn) {
            return fail(ErrorCode::NotInRoom, format!("not in room {room_id}"));
        }
        let frame = text(&build(inner.seq));
        match to {
            Some(user) => match inner.members.iter().find(|m| &*m.user == user) {
                Some(target) => target.push(frame),
                None => return fail(ErrorCode::NotInRoom, format!("{user} is not in {room_id}")),
            },
            None => inner
                .members
                .iter()
                .filter(|m| m.conn != self.peer.conn)
                .for_each(|m| m.push(frame.clone())),
        }
        Ok(())
    }

    fn join(&self, room_id: String) -> Outcome {
        if room_id.strip_prefix("pub:").is_none_or(|name| name.trim().is_empty()) {
            return fail(
                ErrorCode::BadRequest,
                "only named public rooms (`pub:name`) can be joined",
            );
        }
        if room_id.len() > MAX_USER + 4 {
            return fail(ErrorCode::TooLarge, "room_id is too long");
        }
        loop {
            let room = self
                .state
                .rooms
                .entry(Arc::from(room_id.as_str()))
                .or_insert_with(|| {
                    Arc::new(Room::new(Arc::from(room_id.as_str()), true, Vec::new()))
                })
                .value()
                .clone();
            let mut inner = lock(&room.inner);
            if inner.closed {
                // Emptied concurrently: drop the stale entry and make a fresh room.
                drop(inner);
                self.state.rooms.remove_if(&room.id, |_, r| Arc::ptr_eq(r, &room));
                continue;
            }
            let fresh = !inner.members.iter().any(|m| m.conn == self.peer.conn);
            if fresh {
                let online = text(&ServerFrame::Presence {
                    room_id: room_id.clone(),
                    user_id: self.peer.user.to_string(),
                    status: PresenceStatus::Online,
                });
                inner.members.iter().for_each(|m| m.push(online.clone()));
                inner.members.push(self.peer.clone());
            }
            let members = inner.members.iter().map(|m| m.user.to_string()).collect();
            self.peer.send(&ServerFrame::Joined { room_id, members });
            drop(inner);
            if fresh {
                if let Some(v) = lock(&self.peer.rooms).as_mut() {
                    v.push(room);
                }
            }
            return Ok(());
        }
    }

    fn leave(&self, room_id: String) -> Outcome {
        let room = self.room(&room_id)?;
        if !self.state.leave_room(&room, &self.peer) {
            return fail(ErrorCode::NotInRoom, format!("not in room {room_id}"));
        }
        self.peer.forget(&room);
        self.peer.send(&ServerFrame::Left { room_id });
        Ok(())
    }

    /// The connection is over: leave the waiting list and every room.
    fn cleanup(&mut self) {
        self.cancel();
        let rooms = lock(&self.peer.rooms).take().unwrap_or_default();
        for room in rooms {
            self.state.leave_room(&room, &self.peer);
        }
    }
}
