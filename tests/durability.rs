//! "Nothing acknowledged is lost", against real `rendezvous` processes joined through
//! a real `redis-server` (harness: `common::cluster`): cross-node pairs chat without
//! pause while a node drains (SIGTERM), while a node is killed (`kill -9`) and
//! started again, and while Redis itself is killed and restarted from its AOF.
//!
//! Every member of a pair sends a numbered message (`USER#N`, a new N for each new
//! message) every few ms with a `client_msg_id`, keeping at most [`WINDOW`]
//! unacknowledged, and records every `ack`, every message it receives (live, or in a
//! `history` answer) and how each of its sessions ended. A member whose session ends
//! reconnects with the same user id, must find its room in `welcome`, catches up with
//! `history` and goes on sending. At the end every room's `history` is read through
//! both members and checked ([`check_rooms`]): the same through both, seqs 1..=N
//! without a gap, no text and no msg_id twice, every acknowledged message at its
//! acknowledged seq with its msg_id, nothing that nobody sent, and each member
//! received every message of the room. Messages that were sent but never
//! acknowledged (the session ended first) may be missing, never doubled. A failure
//! lists what was lost.
//!
//! Redis itself going away is no exception. While it is down, a room whose members
//! are on different nodes refuses `send` (`error` `internal` with `retry_after_ms`,
//! action `send`): nothing is stored, acknowledged or delivered. A member treats a
//! refusal as "not sent" and sends the same message again (same text, same
//! `client_msg_id`, as a client retransmits) once `retry_after_ms` has passed,
//! meanwhile going on with new messages; a refused message that had been stored
//! anyway would then be in the history twice, which the check reports. So every
//! acknowledged message, before, during and after the outage, is held to the same
//! "exactly once at its acked seq" as everywhere else, and no send made while both
//! nodes report `/readyz` 503 may be acknowledged at all.
//!
//! The tests take one lock in turn: they kill processes and bound reconnect and
//! recovery times, which should not be measured while another test's cluster owns
//! both cores.

use rendezvous_test_support as common;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::chat::{exchange, expect_message, history, next, send_text, sent};
use common::cluster::*;
use common::{Client, Ended, TempDir};
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use rendezvous_actors::protocol::{ChatMessage, ErrorCode, HistoryItem, ServerFrame};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

/// Taken by every test (see the module doc).
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Cross-node pairs per test: member `aI` starts on node-a, `bI` on node-b.
const PAIRS: usize = 10;
/// Each member may send one message per tick…
const TICK: Duration = Duration::from_millis(5);
/// …while fewer than this many of its messages are unacknowledged.
const WINDOW: usize = 2;
/// Chat before the fault.
const WARMUP: Duration = Duration::from_millis(1_500);
/// A moved member must get this many acks on its new session before the test ends.
const AFTER_MOVE_ACKS: usize = 20;
/// Bound on every wait once sending stops (last acks, last deliveries, history).
const SETTLE: Duration = Duration::from_secs(10);
/// Bound on a member's reconnect (includes waiting for a restarted node).
const RECONNECT_WITHIN: Duration = Duration::from_secs(20);
/// Largest `history` page.
const PAGE: usize = 200;
/// Failure lines shown per room.
const SHOW: usize = 25;

// ---------------------------------------------------------------- stage

/// Where the cluster is in its fault when an ack arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Epoch {
    /// Before the fault was injected: acknowledged by a healthy cluster.
    Before,
    /// From the fault on (a node drained or killed; Redis down).
    Fault,
    /// Redis restarted, not yet ready on every node.
    Recovering,
    /// After the recovery.
    After,
}

/// What the test driver shares with the members (one task, so plain cells).
struct Stage {
    /// Node ids by index, and their current addresses (None while down).
    ids: Vec<String>,
    addrs: RefCell<Vec<Option<SocketAddr>>>,
    epoch: Cell<Epoch>,
    /// Redis is down and every node reported `/readyz` 503 (and Redis is not being
    /// started again yet): no send made now may be acknowledged.
    down: Cell<bool>,
    /// Set once: stop sending, collect the last acks, return.
    stop: Cell<bool>,
    /// Sessions that ended.
    ended: Cell<usize>,
    /// Members that reached [`AFTER_MOVE_ACKS`] on a later session.
    moved: Cell<usize>,
}

impl Stage {
    fn new(nodes: &[&Node]) -> Stage {
        Stage {
            ids: nodes.iter().map(|n| n.id.clone()).collect(),
            addrs: RefCell::new(nodes.iter().map(|n| Some(n.addr)).collect()),
            epoch: Cell::new(Epoch::Before),
            down: Cell::new(false),
            stop: Cell::new(false),
            ended: Cell::new(0),
            moved: Cell::new(0),
        }
    }

    fn set_addr(&self, i: usize, addr: Option<SocketAddr>) {
        self.addrs.borrow_mut()[i] = addr;
    }
}

// ---------------------------------------------------------------- members

/// One acknowledged message.
#[derive(Debug, Clone)]
struct Acked {
    text: String,
    seq: u64,
    msg_id: String,
    session: usize,
    /// When the ack arrived.
    epoch: Epoch,
    /// When the acknowledged attempt was sent.
    sent_epoch: Epoch,
    /// 1 for the first attempt, more after refusals.
    attempt: u32,
}

/// One send awaiting its answer.
#[derive(Debug, Clone)]
struct Sent {
    n: u64,
    text: String,
    epoch: Epoch,
    /// Sent while [`Stage::down`].
    down: bool,
    attempt: u32,
}

/// A refused message, to be sent again (same text and client_msg_id).
#[derive(Debug, Clone)]
struct Retry {
    n: u64,
    text: String,
    attempt: u32,
    not_before: Instant,
}

/// One `send` refused because the store was unreachable.
#[derive(Debug, Clone)]
struct Refusal {
    text: String,
    /// When the refused attempt was sent, and whether [`Stage::down`] held then.
    sent_epoch: Epoch,
    down: bool,
}

impl Refusal {
    /// Sent before both nodes saw Redis gone, so possibly in flight at the kill:
    /// Redis may have stored it and died before answering, and the node then refuses
    /// a message that is in the AOF. The one case where a refused message may be
    /// stored (and so be in the history twice once its retry is acknowledged).
    fn maybe_stored(&self) -> bool {
        !self.down && self.sent_epoch <= Epoch::Fault
    }
}

/// What one read from the socket gave.
enum Read {
    Frame(ServerFrame),
    Skip,
    Ended(Ended),
}

fn classify(user: &str, m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Read {
    match m {
        Some(Ok(Message::Text(t))) => Read::Frame(
            serde_json::from_str(t.as_str())
                .unwrap_or_else(|e| panic!("{user}: bad server frame {t}: {e}")),
        ),
        Some(Ok(Message::Close(Some(f)))) => Read::Ended(Ended::Closed(u16::from(f.code))),
        Some(Ok(Message::Close(None))) => Read::Ended(Ended::Closed(1005)),
        Some(Ok(_)) => Read::Skip,
        Some(Err(_)) | None => Read::Ended(Ended::Dropped),
    }
}

/// A chatting member of a pair and everything it saw.
struct Member {
    user: String,
    room: String,
    /// Node index it reconnects to when its session ends.
    fallback: usize,
    /// Node index of the current session.
    node: usize,
    conn: Option<Client>,
    /// 1 for the first session.
    session: usize,
    session_acks: usize,
    n: u64,
    /// Sent on the current session, not answered yet, in send order (answers come in
    /// this order).
    pending: VecDeque<Sent>,
    /// Refused, to be sent again (oldest first; preferred to a new message once due).
    retry: VecDeque<Retry>,
    /// Every refusal (store unreachable).
    refused: Vec<Refusal>,
    /// Acks of sends made while [`Stage::down`]: must stay empty.
    acked_while_down: Vec<String>,
    acked: Vec<Acked>,
    /// Sent, never acknowledged (the session ended first).
    unacked: Vec<String>,
    /// Every message of the room received, live or in a history answer, by seq.
    got: BTreeMap<u64, ChatMessage>,
    /// Seq of the last live message of this session (live delivery is in seq order).
    last_live: u64,
    history_open: bool,
    /// How each session ended: (node index, how).
    ends: Vec<(usize, Ended)>,
    /// From the end of a session to the next welcome.
    reconnects: Vec<Duration>,
    /// Error frames: (code and message, session) → (count, first and last thing answered).
    errors: BTreeMap<(String, usize), (usize, String, String)>,
    problems: Vec<String>,
}

impl Member {
    fn new(c: Client, room: &str, node: usize, fallback: usize) -> Member {
        Member {
            user: c.user_id.clone(),
            room: room.to_owned(),
            fallback,
            node,
            conn: Some(c),
            session: 1,
            session_acks: 0,
            n: 0,
            pending: VecDeque::new(),
            retry: VecDeque::new(),
            refused: Vec::new(),
            acked_while_down: Vec::new(),
            acked: Vec::new(),
            unacked: Vec::new(),
            got: BTreeMap::new(),
            last_live: 0,
            history_open: false,
            ends: Vec::new(),
            reconnects: Vec::new(),
            errors: BTreeMap::new(),
            problems: Vec::new(),
        }
    }

    fn conn(&mut self) -> &mut Client {
        let user = &self.user;
        self.conn.as_mut().unwrap_or_else(|| panic!("{user}: no session"))
    }

    /// Chat on every session until `stage.stop` and every send is answered.
    async fn run(&mut self, st: &Stage) {
        loop {
            let how = match self.chat(st).await {
                Ok(()) => return,
                Err(how) => how,
            };
            self.ends.push((self.node, how));
            st.ended.set(st.ended.get() + 1);
            self.unacked.extend(std::mem::take(&mut self.pending).into_iter().map(|s| s.text));
            self.conn = None;
            self.history_open = false;
            self.reconnect(st).await;
        }
    }

    /// One session: Ok once stopped with nothing outstanding, Err when it ends.
    async fn chat(&mut self, st: &Stage) -> Result<(), Ended> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut broken = false;
        let mut stopping: Option<Instant> = None;
        loop {
            let user = self.user.clone();
            let c = self.conn();
            let read = tokio::select! {
                m = c.ws.next() => Some(classify(&user, m)),
                _ = tick.tick() => None,
            };
            match read {
                Some(Read::Frame(f)) => self.on_frame(f, st).await,
                Some(Read::Skip) => {}
                Some(Read::Ended(how)) => return Err(how),
                None if st.stop.get() => {
                    let since = *stopping.get_or_insert_with(Instant::now);
                    if self.pending.is_empty() && self.retry.is_empty() && !self.history_open {
                        return Ok(());
                    }
                    assert!(
                        since.elapsed() < SETTLE,
                        "{}: on a live session, no answer within {SETTLE:?} to {:?}, {} \
                         refused messages still not acknowledged (history catch-up open: {})",
                        self.user,
                        self.pending.iter().map(|s| &s.text).collect::<Vec<_>>(),
                        self.retry.len(),
                        self.history_open
                    );
                    // Stopped: no new message, but the refused ones are sent again.
                    if !broken && self.pending.len() < WINDOW && self.retry_due() {
                        broken = !self.send_next(st).await;
                    }
                }
                None => {
                    if !broken && self.pending.len() < WINDOW {
                        broken = !self.send_next(st).await;
                    }
                }
            }
        }
    }

    fn retry_due(&self) -> bool {
        self.retry.front().is_some_and(|r| r.not_before <= Instant::now())
    }

    /// Send a refused message again once it is due, else the next numbered message;
    /// false when the socket refused it.
    async fn send_next(&mut self, st: &Stage) -> bool {
        let (n, text, attempt) = match self.retry.pop_front() {
            Some(r) if r.not_before <= Instant::now() => (r.n, r.text, r.attempt),
            other => {
                if let Some(r) = other {
                    self.retry.push_front(r);
                }
                self.n += 1;
                (self.n, format!("{}#{}", self.user, self.n), 1)
            }
        };
        let cid = format!("{}-{n}", self.user);
        let frame = json!({"action":"send","room_id":self.room,"text":text,"client_msg_id":cid});
        let down = st.down.get();
        self.pending.push_back(Sent { n, text, epoch: st.epoch.get(), down, attempt });
        self.conn().ws.send(Message::Text(frame.to_string().into())).await.is_ok()
    }

    async fn ask_history(&mut self, after_seq: u64) {
        let req =
            json!({"action":"history","room_id":self.room,"after_seq":after_seq,"limit":PAGE});
        // A failed write ends the session, which the next read reports.
        let _ = self.conn().ws.send(Message::Text(req.to_string().into())).await;
    }

    async fn on_frame(&mut self, f: ServerFrame, st: &Stage) {
        match f {
            ServerFrame::Ack { client_msg_id, room_id, seq, msg_id } => {
                let cid = client_msg_id.unwrap_or_else(|| {
                    panic!("{}: ack without client_msg_id (seq {seq})", self.user)
                });
                let n: Option<u64> =
                    cid.strip_prefix(&format!("{}-", self.user)).and_then(|n| n.parse().ok());
                let at = n.and_then(|n| self.pending.iter().position(|s| s.n == n));
                let Some(s) = at.and_then(|i| self.pending.remove(i)) else {
                    panic!("{}: ack for {cid} (seq {seq}), which awaits no ack", self.user)
                };
                let text = s.text;
                assert_eq!(room_id, self.room, "{}: ack of {text} names another room", self.user);
                let epoch = st.epoch.get();
                if s.down {
                    self.acked_while_down.push(format!(
                        "{text} (attempt {}) sent while both nodes were unready, acked at seq \
                         {seq} ({epoch:?})",
                        s.attempt
                    ));
                }
                self.acked.push(Acked {
                    text,
                    seq,
                    msg_id,
                    session: self.session,
                    epoch,
                    sent_epoch: s.epoch,
                    attempt: s.attempt,
                });
                self.session_acks += 1;
                if self.session > 1 && self.session_acks == AFTER_MOVE_ACKS {
                    st.moved.set(st.moved.get() + 1);
                }
            }
            ServerFrame::Message(m) => {
                if m.seq <= self.last_live {
                    self.problems.push(format!(
                        "{}: live seq {} ({}) after live seq {} on session {}",
                        self.user, m.seq, m.text, self.last_live, self.session
                    ));
                }
                self.last_live = self.last_live.max(m.seq);
                self.record(m, "live");
            }
            ServerFrame::History { room_id, messages, .. } => {
                assert_eq!(room_id, self.room, "{}: history of another room", self.user);
                let full = messages.len() == PAGE;
                let mut last = 0;
                for HistoryItem::Message(m) in messages {
                    last = m.seq;
                    self.record(m, "history");
                }
                if full {
                    self.ask_history(last).await;
                } else {
                    self.history_open = false;
                }
            }
            ServerFrame::Error {
                code: ErrorCode::Unavailable,
                retry_after_ms: Some(wait),
                action: Some(action),
                ..
            } if action == "send" && !self.pending.is_empty() => {
                // The store is unreachable: not sent. Sends are answered in order, so
                // this answers the oldest open one; it is sent again after `wait`.
                let s = self.pending.pop_front().expect("an open send");
                self.refused.push(Refusal {
                    text: s.text.clone(),
                    sent_epoch: s.epoch,
                    down: s.down,
                });
                self.retry.push_back(Retry {
                    n: s.n,
                    text: s.text,
                    attempt: s.attempt + 1,
                    not_before: Instant::now() + Duration::from_millis(wait),
                });
            }
            ServerFrame::Error { code, message, .. } => {
                // Sends are answered in order: an error answers the oldest open one
                // (or the history catch-up when no send is open).
                let answered = match self.pending.pop_front() {
                    Some(s) => {
                        self.unacked.push(s.text.clone());
                        s.text
                    }
                    None => {
                        self.history_open = false;
                        "history".into()
                    }
                };
                self.error(format!("{code:?}: {message}"), answered);
            }
            ServerFrame::RoomClosed { room_id, reason } => self.problems.push(format!(
                "{}: room_closed {room_id} ({reason:?}) on session {}",
                self.user, self.session
            )),
            ServerFrame::Left { room_id } => self
                .problems
                .push(format!("{}: left {room_id} on session {}", self.user, self.session)),
            _ => {} // presence and the like: not what this suite is about
        }
    }

    fn error(&mut self, what: String, answered: String) {
        let e =
            self.errors.entry((what, self.session)).or_insert((0, answered.clone(), String::new()));
        e.0 += 1;
        e.2 = answered;
    }

    /// The error frames, one line per kind and session.
    fn error_lines(&self) -> Vec<String> {
        self.errors
            .iter()
            .map(|((what, session), (n, first, last))| {
                format!(
                    "{}: {n} × error {what} on session {session} (answering {first} … {last})",
                    self.user
                )
            })
            .collect()
    }

    fn record(&mut self, m: ChatMessage, how: &str) {
        if m.room_id != self.room {
            return self
                .problems
                .push(format!("{}: {how} message of another room: {m:?}", self.user));
        }
        if let Some(old) = self.got.get(&m.seq) {
            if *old != m {
                self.problems.push(format!(
                    "{}: seq {} received as {:?} ({}) and as {:?} ({}, {how})",
                    self.user, m.seq, old.text, old.msg_id, m.text, m.msg_id
                ));
            }
            return;
        }
        self.got.insert(m.seq, m);
    }

    /// Reconnect as the same user to `fallback` (waiting for it to be up), require the
    /// room in `welcome`, and start the `history` catch-up.
    async fn reconnect(&mut self, st: &Stage) {
        let started = Instant::now();
        let to = self.fallback;
        let mut last_error = String::from("node down");
        let c = loop {
            let addr = st.addrs.borrow()[to];
            if let Some(addr) = addr {
                match open(addr, &self.user).await {
                    Ok(c) => break c,
                    Err(e) => last_error = e,
                }
            }
            assert!(
                started.elapsed() < RECONNECT_WITHIN,
                "{}: no session on {} within {RECONNECT_WITHIN:?}: {last_error}",
                self.user,
                st.ids[to]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        match &c.welcome {
            ServerFrame::Welcome { user_id, node, rooms, .. } => {
                assert_eq!(user_id, &self.user, "welcome for another user");
                assert_eq!(node, &st.ids[to], "{}: welcome from the wrong node", self.user);
                assert!(
                    rooms.contains(&self.room),
                    "{}: welcome on {node} does not list room {} (lists {rooms:?}): the seat \
                     was lost in the move",
                    self.user,
                    self.room
                );
            }
            other => panic!("{}: first frame was not welcome: {other:?}", self.user),
        }
        self.reconnects.push(started.elapsed());
        self.conn = Some(c);
        self.node = to;
        self.session += 1;
        self.session_acks = 0;
        self.last_live = 0;
        self.history_open = true;
        self.ask_history(0).await;
    }

    /// The next read within `deadline`, None on timeout.
    async fn read_until(&mut self, deadline: Instant) -> Option<Read> {
        let user = self.user.clone();
        let c = self.conn();
        let m = tokio::time::timeout_at(deadline.into(), c.ws.next()).await.ok()?;
        Some(classify(&user, m))
    }

    /// The room's whole `history` through this member's session (pages of
    /// [`PAGE`]); frames that arrive meanwhile are recorded as usual.
    async fn full_history(&mut self, st: &Stage) -> Vec<ChatMessage> {
        let deadline = Instant::now() + SETTLE;
        let mut out: Vec<ChatMessage> = Vec::new();
        loop {
            self.ask_history(out.last().map_or(0, |m| m.seq)).await;
            let page = loop {
                match self.read_until(deadline).await {
                    None => panic!("{}: no history answer within {SETTLE:?}", self.user),
                    Some(Read::Frame(ServerFrame::History { room_id, messages, .. })) => {
                        assert_eq!(room_id, self.room, "{}: history of another room", self.user);
                        break messages;
                    }
                    Some(Read::Frame(ServerFrame::Error { code, message, .. })) => {
                        // Refused (the seat is gone): the check reports it with the rest.
                        self.error(format!("{code:?}: {message}"), "the final history".into());
                        return out;
                    }
                    Some(Read::Frame(f)) => self.on_frame(f, st).await,
                    Some(Read::Skip) => {}
                    Some(Read::Ended(how)) => {
                        panic!("{}: session ended during the final check: {how:?}", self.user)
                    }
                }
            };
            let n = page.len();
            out.extend(page.into_iter().map(|HistoryItem::Message(m)| m));
            if n < PAGE {
                return out;
            }
        }
    }

    /// Keep reading (bounded) until every seq in `want` was received.
    async fn await_received(&mut self, want: &BTreeSet<u64>, st: &Stage) {
        let deadline = Instant::now() + SETTLE;
        while !want.iter().all(|s| self.got.contains_key(s)) {
            match self.read_until(deadline).await {
                None => return, // the check reports what is missing
                Some(Read::Frame(f)) => self.on_frame(f, st).await,
                Some(Read::Skip) => {}
                Some(Read::Ended(how)) => {
                    panic!("{}: session ended during the final check: {how:?}", self.user)
                }
            }
        }
    }

    fn sent_texts(&self) -> BTreeSet<&str> {
        self.acked
            .iter()
            .map(|a| a.text.as_str())
            .chain(self.unacked.iter().map(String::as_str))
            .chain(self.pending.iter().map(|s| s.text.as_str()))
            .chain(self.retry.iter().map(|r| r.text.as_str()))
            .collect()
    }
}

/// Open a session as `user` on `addr` and read its welcome; Err says why not.
async fn open(addr: SocketAddr, user: &str) -> Result<Client, String> {
    let url = format!("ws://{addr}/ws?user={user}");
    let ws = match tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    {
        Err(_) => return Err("upgrade not answered within 5 s".into()),
        Ok(Err(e)) => return Err(format!("upgrade failed: {e}")),
        Ok(Ok((ws, _))) => ws,
    };
    let mut c = Client { ws, user_id: user.to_owned(), welcome: ServerFrame::NoMatchFound {} };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = tokio::time::timeout_at(deadline.into(), c.ws.next())
            .await
            .map_err(|_| "no welcome within 5 s".to_string())?;
        match classify(user, m) {
            Read::Frame(f) => {
                c.welcome = f;
                return Ok(c);
            }
            Read::Skip => {}
            Read::Ended(how) => return Err(format!("closed before welcome: {how:?}")),
        }
    }
}

/// What a new WebSocket session on `addr` gets: Err(status) for a refused upgrade,
/// Err(0) when nothing listens, Ok(()) when a session opened (closed again at once).
async fn probe_upgrade(addr: SocketAddr) -> Result<(), u16> {
    use tokio_tungstenite::tungstenite::Error;
    let url = format!("ws://{addr}/ws?user=probe");
    match tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url)).await
    {
        Err(_) => Err(0),
        Ok(Err(Error::Http(resp))) => Err(resp.status().as_u16()),
        Ok(Err(_)) => Err(0),
        Ok(Ok((mut ws, _))) => {
            let _ = ws.close(None).await;
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- setup

/// `aI` on `a` and `bI` on `b`, matched with each other on interests no other pair
/// shares: the two clients and their room.
async fn pair(a: &Node, b: &Node, i: usize) -> (Client, Client, String) {
    let (ua, ub) = (format!("a{i}"), format!("b{i}"));
    let interests = [format!("dur{i}x"), format!("dur{i}y")];
    let mut ca = a.client(&ua).await;
    let mut cb = b.client(&ub).await;
    for c in [&mut ca, &mut cb] {
        c.send_json(json!({"action":"find_match","interests":interests})).await;
        match next(c).await {
            ServerFrame::Searching { .. } => {}
            other => panic!("{}: expected searching, got {other:?}", c.user_id),
        }
    }
    let mut rooms = Vec::new();
    for (c, partner) in [(&mut ca, &ub), (&mut cb, &ua)] {
        match next(c).await {
            ServerFrame::MatchFound { room_id, partner_id, .. } => {
                assert_eq!(partner_id.as_ref(), Some(partner), "{}'s partner", c.user_id);
                rooms.push(room_id);
            }
            other => panic!("{}: expected match_found, got {other:?}", c.user_id),
        }
    }
    assert_eq!(rooms[0], rooms[1], "{ua} and {ub} got different rooms");
    let room = rooms.swap_remove(0);
    (ca, cb, room)
}

/// [`PAIRS`] pairs (one at a time, see [`pair`]) as members `[a0, b0, a1, b1, …]`;
/// `aI` reconnects to node index `fallback_of_a(I)`, `bI` to its own node.
async fn pairs(
    a: (usize, &Node),
    b: (usize, &Node),
    fallback_of_a: impl Fn(usize) -> usize,
) -> Vec<Member> {
    let mut out = Vec::new();
    for i in 0..PAIRS {
        let (ca, cb, room) = pair(a.1, b.1, i).await;
        out.push(Member::new(ca, &room, a.0, fallback_of_a(i)));
        out.push(Member::new(cb, &room, b.0, b.0));
    }
    out
}

/// Poll (async, bounded) until `cond` holds; panics with `what`.
async fn wait_for(what: &str, within: Duration, cond: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Wait (async, bounded) for `node` to exit; its exit code.
async fn wait_exit(node: &mut Node, within: Duration) -> i32 {
    let started = Instant::now();
    loop {
        if let Some(status) = node.try_wait() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            started.elapsed() < within,
            "{} did not exit within {within:?}\n{}",
            node.id,
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- the check

/// Totals of a run, for the log line.
#[derive(Debug, Default)]
struct Totals {
    /// Acks received, by the epoch they arrived in; all held to "exactly once at its
    /// seq, in both histories, received by both members".
    acked: BTreeMap<Epoch, usize>,
    /// Of them, acks of a message sent again after a refusal.
    acked_retries: usize,
    /// Refusals (store unreachable) by the epoch their send was made in, and how many
    /// of those sends were made while both nodes were unready.
    refused: BTreeMap<Epoch, usize>,
    refused_while_down: usize,
    /// Refused messages that are stored anyway (see [`Refusal::maybe_stored`]): in
    /// the history twice, once where their retry was acknowledged.
    refused_but_stored: usize,
    /// Sent but never acknowledged (the session ended first): stored anyway, or absent.
    unacked_stored: usize,
    unacked_absent: usize,
}

impl Totals {
    fn acked_after_fault(&self) -> usize {
        self.acked.iter().filter(|(e, _)| **e > Epoch::Before).map(|(_, n)| n).sum()
    }
}

/// Failure lines of one room, by kind.
#[derive(Default)]
struct Fails(BTreeMap<&'static str, Vec<String>>);

impl Fails {
    fn add(&mut self, kind: &'static str, line: String) {
        self.0.entry(kind).or_default().push(line);
    }

    fn render(&self, room: &str, x: &Member, y: &Member) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let mut out = format!("room {room} ({} + {}):", x.user, y.user);
        for (kind, lines) in &self.0 {
            out.push_str(&format!("\n  {kind}: {}", lines.len()));
            for l in lines.iter().take(SHOW) {
                out.push_str(&format!("\n    {l}"));
            }
            if lines.len() > SHOW {
                out.push_str(&format!("\n    … and {} more", lines.len() - SHOW));
            }
        }
        Some(out)
    }
}

/// The end-of-test check of every room through both members (pairs as built by
/// [`pairs`]): both members' `history` is the same, has seqs 1..=N without a gap, no
/// text and no msg_id twice, nothing that nobody sent, and every ack of both members
/// at its seq with its msg_id; each member received every message of the room (live
/// or in a catch-up); no send made while both nodes were unready was acknowledged.
/// `refusals`: whether sends may be refused for an unreachable store (only while
/// Redis is away); a refused message is never stored, except one possibly in flight
/// at the kill ([`Refusal::maybe_stored`]). Panics with everything lost, doubled or
/// missing.
async fn check_rooms(members: &mut [Member], st: &Stage, refusals: bool) -> Totals {
    let mut failures: Vec<String> = Vec::new();
    let mut totals = Totals::default();
    for pair in members.chunks_mut(2) {
        let [x, y] = pair else { panic!("members come in pairs") };
        let mut fails = Fails::default();
        let hx = x.full_history(st).await;
        let hy = y.full_history(st).await;
        // What went wrong on the wire first: it usually explains the rest.
        for m in [&*x, &*y] {
            for l in m.error_lines() {
                fails.add("error frames", l);
            }
            for l in &m.problems {
                fails.add("wire problems", l.clone());
            }
            for l in &m.acked_while_down {
                fails.add("ACKED WHILE BOTH NODES WERE UNREADY", format!("{}: {l}", m.user));
            }
            for r in &m.refused {
                *totals.refused.entry(r.sent_epoch).or_default() += 1;
                totals.refused_while_down += usize::from(r.down);
            }
            if !refusals && !m.refused.is_empty() {
                fails.add(
                    "REFUSED (store unreachable) WITH REDIS UP",
                    format!(
                        "{}: {} sends refused, first {:?}",
                        m.user,
                        m.refused.len(),
                        m.refused.first().map(|r| (&r.text, r.sent_epoch))
                    ),
                );
            }
        }
        if hx != hy {
            let first =
                hx.iter().zip(&hy).position(|(p, q)| p != q).unwrap_or(hx.len().min(hy.len()));
            fails.add(
                "HISTORIES DIFFER",
                format!(
                    "via {} (on {}) {} messages, via {} (on {}) {}; first difference at index \
                     {first}: {:?} vs {:?}",
                    x.user,
                    st.ids[x.node],
                    hx.len(),
                    y.user,
                    st.ids[y.node],
                    hy.len(),
                    hx.get(first).map(|m| (m.seq, &m.text)),
                    hy.get(first).map(|m| (m.seq, &m.text))
                ),
            );
        }
        let sent: HashMap<&str, BTreeSet<&str>> =
            [(x.user.as_str(), x.sent_texts()), (y.user.as_str(), y.sent_texts())].into();
        // Texts whose refusal may have come after Redis stored them (see above).
        let maybe_stored: BTreeSet<&str> = [&*x, &*y]
            .iter()
            .flat_map(|m| m.refused.iter().filter(|r| r.maybe_stored()).map(|r| r.text.as_str()))
            .collect();
        let by_seq = |h: &[ChatMessage]| -> BTreeMap<u64, ChatMessage> {
            h.iter().map(|m| (m.seq, m.clone())).collect()
        };
        let hists = [(x.user.clone(), by_seq(&hx), &hx), (y.user.clone(), by_seq(&hy), &hy)];
        for (k, (via, _, h)) in hists.iter().enumerate() {
            if let Some((i, m)) = h.iter().enumerate().find(|(i, m)| m.seq != *i as u64 + 1) {
                fails.add(
                    "SEQS NOT 1..=N",
                    format!("history via {via}: position {i} holds seq {} ({})", m.seq, m.text),
                );
            }
            let mut texts: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
            let mut ids: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
            for m in h.iter() {
                texts.entry(m.text.as_str()).or_default().push(m.seq);
                ids.entry(m.msg_id.as_str()).or_default().push(m.seq);
                if !sent.get(m.sender.as_str()).is_some_and(|s| s.contains(m.text.as_str())) {
                    fails.add(
                        "PHANTOM",
                        format!(
                            "history via {via}: seq {} {} {:?} was never sent",
                            m.seq, m.sender, m.text
                        ),
                    );
                }
            }
            for (t, seqs) in texts.iter().filter(|(_, s)| s.len() > 1) {
                if seqs.len() == 2 && maybe_stored.contains(t) {
                    // Counted once per room (both histories are compared above).
                    totals.refused_but_stored += usize::from(k == 0);
                    continue;
                }
                let refused = [&*x, &*y].iter().any(|m| m.refused.iter().any(|r| r.text == *t));
                let how = if refused { " (refused, then sent again)" } else { "" };
                fails.add("DOUBLED", format!("history via {via}: {t} at seqs {seqs:?}{how}"));
            }
            for (id, seqs) in ids.iter().filter(|(_, s)| s.len() > 1) {
                fails.add("DOUBLED", format!("history via {via}: msg_id {id} at seqs {seqs:?}"));
            }
        }
        // Every ack, in both histories, where its ack said.
        let ack_seqs: HashMap<String, (u64, Epoch)> = [&*x, &*y]
            .iter()
            .flat_map(|m| m.acked.iter().map(|a| (a.text.clone(), (a.seq, a.epoch))))
            .collect();
        // What each member must have received: the room's history and every ack.
        let mut must_receive: BTreeMap<u64, (String, String)> =
            hists[0].1.iter().map(|(s, m)| (*s, (m.msg_id.clone(), m.text.clone()))).collect();
        for who in [&*x, &*y] {
            for a in &who.acked {
                *totals.acked.entry(a.epoch).or_default() += 1;
                totals.acked_retries += usize::from(a.attempt > 1);
                must_receive.entry(a.seq).or_insert_with(|| (a.msg_id.clone(), a.text.clone()));
                let exact = |h: &BTreeMap<u64, ChatMessage>| {
                    h.get(&a.seq).is_some_and(|m| {
                        m.msg_id == a.msg_id && m.text == a.text && m.sender == who.user
                    })
                };
                for (via, h, list) in &hists {
                    if exact(h) {
                        continue;
                    }
                    let elsewhere = list.iter().find(|m| m.text == a.text).map(|m| m.seq);
                    fails.add(
                        "LOST ACKED",
                        format!(
                            "{} acked at seq {} ({}, attempt {}, session {}, sent {:?}, acked \
                             {:?}): history via {via} has {:?} there{}",
                            a.text,
                            a.seq,
                            a.msg_id,
                            a.attempt,
                            a.session,
                            a.sent_epoch,
                            a.epoch,
                            h.get(&a.seq).map(|m| &m.text),
                            elsewhere.map(|s| format!(", and it at seq {s}")).unwrap_or_default()
                        ),
                    );
                }
            }
            for t in &who.unacked {
                if hists.iter().any(|(_, _, l)| l.iter().any(|m| &m.text == t)) {
                    totals.unacked_stored += 1;
                } else {
                    totals.unacked_absent += 1;
                }
            }
        }
        // Each member received the room's messages (live or in its catch-up).
        let want: BTreeSet<u64> = must_receive.keys().copied().collect();
        let acked_as = |t: &str| match ack_seqs.get(t) {
            Some((seq, epoch)) => format!("acked at {seq}, {epoch:?}"),
            None => "not acked".into(),
        };
        for who in [&mut *x, &mut *y] {
            who.await_received(&want, st).await;
            let mut missing = Vec::new();
            for (seq, (id, text)) in &must_receive {
                match who.got.get(seq) {
                    None => missing.push(format!("{seq} ({text}, {})", acked_as(text))),
                    Some(m) if &m.msg_id != id => fails.add(
                        "RECEIVED OTHER",
                        format!(
                            "{} got seq {seq} as {:?} ({}), stored is {text:?} ({})",
                            who.user,
                            m.text,
                            acked_as(&m.text),
                            acked_as(text)
                        ),
                    ),
                    Some(_) => {}
                }
            }
            if !missing.is_empty() {
                fails.add(
                    "NEVER RECEIVED",
                    format!(
                        "{}: {} of {}: {}",
                        who.user,
                        missing.len(),
                        must_receive.len(),
                        missing.iter().take(SHOW).cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
        failures.extend(fails.render(&x.room, x, y));
    }
    assert!(
        failures.is_empty(),
        "what was acknowledged is not what is stored:\n{}",
        failures.join("\n")
    );
    totals
}

/// Every member sent and got acks on its last session, so the chat was really going on.
fn assert_chatted_to_the_end(members: &[Member]) {
    for m in members {
        let last = m.acked.iter().filter(|a| a.session == m.session).count();
        assert!(
            last >= 5,
            "{}: only {last} acks on its last session (of {})",
            m.user,
            m.acked.len()
        );
    }
}

fn max_reconnect(members: &[Member]) -> Duration {
    members.iter().flat_map(|m| m.reconnects.iter().copied()).max().unwrap_or_default()
}

// ---------------------------------------------------------------- the tests

/// SIGTERM of node-a while 10 cross-node pairs chat: node-a's members get close 1012,
/// node-a accepts no new session, exits 0; each of its members reconnects to node-b
/// as the same user, finds its room in `welcome`, catches up with `history` and sends
/// at least 20 more acknowledged messages. Every acknowledged message of both sides,
/// before and after the move, is in the room's history exactly once at its seq; seqs
/// are 1..=N; each member received every message; node-b's members never lost their
/// session.
#[tokio::test]
async fn sigterm_drain_moves_clients_to_another_node_without_losing_an_acked_message() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let mut cluster = Cluster::start(2).await;
    let mut members = pairs((0, cluster.node(0)), (1, cluster.node(1)), |_| 1).await;
    let st = Stage::new(&[cluster.node(0), cluster.node(1)]);

    let driver = async {
        tokio::time::sleep(WARMUP).await;
        st.epoch.set(Epoch::Fault);
        cluster.node(0).sigterm();
        let first_close =
            wait_for("a session of node-a ends after SIGTERM", Duration::from_secs(5), || {
                st.ended.get() > 0
            })
            .await;
        let a = cluster.node(0).addr;
        match probe_upgrade(a).await {
            Err(503) | Err(0) => {}
            other => panic!("node-a draining: a new session got {other:?}, want 503 or refused"),
        }
        let code = wait_exit(cluster.node_mut(0), Duration::from_secs(15)).await;
        assert_eq!(code, 0, "node-a's exit code after SIGTERM\n{}", cluster.node(0).logs());
        st.set_addr(0, None);
        let moved = wait_for(
            &format!("each of node-a's {PAIRS} members moves and gets {AFTER_MOVE_ACKS} acks"),
            Duration::from_secs(20),
            || st.moved.get() == PAIRS,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        st.stop.set(true);
        (first_close, moved)
    };
    let ((first_close, moved), _) =
        tokio::join!(driver, join_all(members.iter_mut().map(|m| m.run(&st))));

    for m in &members {
        let want: Vec<(usize, Ended)> =
            if m.user.starts_with('a') { vec![(0, Ended::Closed(1012))] } else { vec![] };
        assert_eq!(m.ends, want, "{}: how its sessions ended", m.user);
    }
    assert_chatted_to_the_end(&members);
    let totals = check_rooms(&mut members, &st, false).await;
    eprintln!(
        "drain: {PAIRS} pairs, first 1012 {first_close:?} after SIGTERM, all moved {moved:?} \
         after exit, reconnect ≤ {:?}; {totals:?}; {:?} in all",
        max_reconnect(&members),
        t0.elapsed()
    );
    assert!(totals.acked_after_fault() > 0, "nothing was acknowledged after the drain began");
}

/// kill -9 of node-a while 10 cross-node pairs chat: its members see their sockets
/// drop; half of them reconnect to node-b at once, the other half wait for node-a to
/// be started again (same node id, new port, after node-b declared it dead) and
/// reconnect there. Each finds its room in `welcome`, catches up with `history` and
/// sends at least 20 more acknowledged messages. Every message acknowledged before
/// the kill or after it is in the history exactly once at its seq; messages sent
/// but never acknowledged may be missing, never doubled; each member received every
/// message of the room.
#[tokio::test]
async fn a_killed_and_restarted_node_loses_no_acked_message() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let mut cluster = Cluster::start(2).await;
    let url = cluster.redis.url();
    let mut members =
        pairs((0, cluster.node(0)), (1, cluster.node(1)), |i| if i % 2 == 0 { 1 } else { 0 }).await;
    let st = Stage::new(&[cluster.node(0), cluster.node(1)]);

    let driver = async {
        tokio::time::sleep(WARMUP).await;
        st.epoch.set(Epoch::Fault);
        cluster.node_mut(0).kill9();
        let killed = Instant::now();
        st.set_addr(0, None);
        wait_nodes(cluster.node(1), 1, Duration::from_secs(6)).await;
        let noticed = killed.elapsed();
        let again = tokio::task::spawn_blocking(move || Node::spawn(Some(&url), "node-a", &[]))
            .await
            .expect("restart node-a");
        st.set_addr(0, Some(again.addr));
        cluster.nodes[0] = again;
        let restarted = killed.elapsed();
        let moved = wait_for(
            &format!("each of node-a's {PAIRS} members reconnects and gets {AFTER_MOVE_ACKS} acks"),
            Duration::from_secs(20),
            || st.moved.get() == PAIRS,
        )
        .await;
        // Chat on until well past node-b's reconnect grace for the dead node's seats
        // (3 s from `noticed`): a seat taken back on the restarted node must outlive it.
        let grace_over = noticed + Duration::from_millis(4_500);
        tokio::time::sleep(grace_over.saturating_sub(killed.elapsed())).await;
        st.stop.set(true);
        (noticed, restarted, moved)
    };
    let ((noticed, restarted, moved), _) =
        tokio::join!(driver, join_all(members.iter_mut().map(|m| m.run(&st))));

    for m in &members {
        let want: Vec<(usize, Ended)> =
            if m.user.starts_with('a') { vec![(0, Ended::Dropped)] } else { vec![] };
        assert_eq!(m.ends, want, "{}: how its sessions ended", m.user);
    }
    for node in &mut cluster.nodes {
        assert!(node.try_wait().is_none(), "{} exited", node.id);
    }
    assert_chatted_to_the_end(&members);
    let totals = check_rooms(&mut members, &st, false).await;
    eprintln!(
        "kill -9: {PAIRS} pairs, node-b counted 1 node {noticed:?} after the kill, node-a back \
         {restarted:?} after it, all moved {moved:?} later, reconnect ≤ {:?}; {totals:?}; {:?} \
         in all",
        max_reconnect(&members),
        t0.elapsed()
    );
}

/// The seat of a user whose node died is kept when the user comes back, within the
/// reconnect grace, on that node started again under the same node id: node-b
/// declares node-a dead (its grace for a0's seat starts), node-a is started again,
/// a0 reconnects there (its room in `welcome`), and once node-b's grace is over the
/// pair still chats both ways.
#[tokio::test]
async fn a_seat_survives_the_dead_nodes_grace_when_its_user_is_back_on_the_restarted_node() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2).await;
    let url = cluster.redis.url();
    let (a, mut b, room) = pair(cluster.node(0), cluster.node(1), 0).await;
    cluster.node_mut(0).kill9();
    drop(a);
    wait_nodes(cluster.node(1), 1, Duration::from_secs(6)).await;
    let noticed = Instant::now();
    let again = tokio::task::spawn_blocking(move || Node::spawn(Some(&url), "node-a", &[]))
        .await
        .expect("restart node-a");
    cluster.nodes[0] = again;
    let mut a = cluster.client(0, "a0").await;
    let back = noticed.elapsed();
    assert!(
        back < Duration::from_millis(2_500),
        "precondition: back within the 3 s grace, took {back:?}"
    );
    match &a.welcome {
        ServerFrame::Welcome { rooms, .. } => {
            assert_eq!(rooms.as_slice(), std::slice::from_ref(&room), "a0's welcome")
        }
        other => panic!("a0: not a welcome: {other:?}"),
    }
    // Past node-b's grace for the seats of the dead node (3 s from `noticed`).
    tokio::time::sleep(Duration::from_millis(3_500).saturating_sub(noticed.elapsed())).await;
    send_text(&mut a, &room, "still here", "a1").await;
    let m = sent(&mut a, &room, "a1").await;
    assert_eq!(expect_message(&mut b).await, m, "b0 got a0's message");
    send_text(&mut b, &room, "so am I", "b1").await;
    let m = sent(&mut b, &room, "b1").await;
    assert_eq!(expect_message(&mut a).await, m, "a0 got b0's message");
}

/// kill -9 of Redis (`--appendonly yes --appendfsync always`) while 10 cross-node
/// pairs chat; Redis is started again on the same port and directory 1.5 s later
/// (at least 1 s after both nodes reported `/readyz` 503). While it is down both
/// nodes keep every session (`/readyz` 503, no client disconnected, no node exits)
/// and refuse every send in these rooms (`internal`, `retry_after_ms`, action
/// `send`): each member sees refusals for sends made while both nodes were unready,
/// and no such send is acknowledged (sends in flight at the kill may be acked or
/// refused either way). A member sends every refused message again, same text and
/// client_msg_id, after `retry_after_ms` (see the module doc) until it is
/// acknowledged. Once `/readyz` is 200 on both the chat goes on in the same rooms.
/// Then every acknowledged message, whenever it was sent or acked, is in the
/// restarted Redis's stream at its seq with its msg_id and text, in the history
/// through both members exactly once at its seq, and both members received it; both
/// histories are the same, have seqs 1..=N, nothing twice and nothing that nobody
/// sent; and what each member received is exactly the stream.
#[tokio::test]
async fn redis_killed_with_aof_under_load_keeps_every_acked_message() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let dir = TempDir::new("durable-aof");
    let dir_s = dir.path_string();
    let redis = RedisServer::start_aof(&dir_s);
    let url = redis.url();
    let mut nodes: Vec<Node> =
        (0..2).map(|i| Node::spawn(Some(&url), &node_name(i), &[])).collect();
    for node in &nodes {
        wait_nodes(node, 2, Duration::from_secs(10)).await;
    }
    let mut members = pairs((0, &nodes[0]), (1, &nodes[1]), |_| 0).await;
    let st = Stage::new(&[&nodes[0], &nodes[1]]);

    let driver = async {
        tokio::time::sleep(WARMUP).await;
        let mut redis = redis;
        st.epoch.set(Epoch::Fault);
        redis.stop(); // SIGKILL
        let killed = Instant::now();
        for node in &nodes {
            let left = Duration::from_secs(4).saturating_sub(killed.elapsed());
            wait_http_status(node, "/readyz", 503, left).await;
        }
        let unready = killed.elapsed();
        st.down.set(true);
        let restart_at = Duration::from_millis(1_500).max(unready + Duration::from_secs(1));
        tokio::time::sleep(restart_at.saturating_sub(killed.elapsed())).await;
        // From here on a send may reach the restarted Redis.
        st.down.set(false);
        let down_for = killed.elapsed() - unready;
        st.epoch.set(Epoch::Recovering);
        let redis = tokio::task::spawn_blocking(move || {
            redis.restart();
            redis
        })
        .await
        .expect("restart redis");
        let restarted = Instant::now();
        for node in &nodes {
            let left = Duration::from_secs(10).saturating_sub(restarted.elapsed());
            wait_http_status(node, "/readyz", 200, left).await;
        }
        let ready = restarted.elapsed();
        st.epoch.set(Epoch::After);
        tokio::time::sleep(Duration::from_secs(2)).await;
        st.stop.set(true);
        (redis, unready, down_for, ready)
    };
    let ((redis, unready, down_for, ready), _) =
        tokio::join!(driver, join_all(members.iter_mut().map(|m| m.run(&st))));

    for m in &members {
        assert_eq!(m.ends, vec![], "{}: sessions ended while Redis was away", m.user);
    }
    for node in &mut nodes {
        assert!(node.try_wait().is_none(), "{} exited", node.id);
    }
    for m in &members {
        // With Redis gone a room that spans nodes refuses sends (nothing stored).
        let down = m.refused.iter().filter(|r| r.down).count();
        assert!(
            down > 0,
            "{}: no send refused while both nodes were unready ({} refusals in all, acks by \
             epoch sent: {:?})",
            m.user,
            m.refused.len(),
            m.acked.iter().fold(BTreeMap::<Epoch, usize>::new(), |mut acc, a| {
                *acc.entry(a.sent_epoch).or_default() += 1;
                acc
            })
        );
        assert!(
            m.acked_while_down.is_empty(),
            "{}: {} sends made while both nodes were unready were acknowledged: {:?}",
            m.user,
            m.acked_while_down.len(),
            m.acked_while_down.iter().take(SHOW).collect::<Vec<_>>()
        );
    }
    assert_chatted_to_the_end(&members);
    let totals = check_rooms(&mut members, &st, true).await;
    // The store itself: every ack is in the restarted Redis's stream at its seq with
    // its msg_id, and each member received exactly what the stream holds.
    let mut not_stored = Vec::new();
    let mut differ = Vec::new();
    for m in &members {
        let stream = stream_of(&redis, &m.room);
        for a in &m.acked {
            if stream.get(&a.seq) != Some(&(a.msg_id.clone(), a.text.clone())) {
                not_stored.push(format!(
                    "{} acked at seq {} (sent {:?}, acked {:?}, attempt {}): stream has {:?}",
                    a.text,
                    a.seq,
                    a.sent_epoch,
                    a.epoch,
                    a.attempt,
                    stream.get(&a.seq)
                ));
            }
        }
        let got: BTreeMap<u64, (String, String)> =
            m.got.iter().map(|(s, g)| (*s, (g.msg_id.clone(), g.text.clone()))).collect();
        if got != stream {
            let first = stream
                .iter()
                .zip(&got)
                .position(|(p, q)| p != q)
                .unwrap_or(stream.len().min(got.len()));
            differ.push(format!(
                "{}: stream {} messages, received {}; first difference at index {first}: {:?} \
                 vs {:?}",
                m.user,
                stream.len(),
                got.len(),
                stream.iter().nth(first),
                got.iter().nth(first)
            ));
        }
    }
    assert!(
        not_stored.is_empty(),
        "{} acknowledged messages are not in Redis after the restart: {}",
        not_stored.len(),
        not_stored.iter().take(SHOW).cloned().collect::<Vec<_>>().join(", ")
    );
    assert!(differ.is_empty(), "what members received is not the stream:\n{}", differ.join("\n"));
    eprintln!(
        "redis kill -9: {PAIRS} pairs, /readyz 503 on both {unready:?} after the kill (then \
         {down_for:?} until the restart began), 200 on both {ready:?} after the restart; \
         {totals:?}; {:?} in all",
        t0.elapsed()
    );
}

/// `seq → (msg_id, text)` of a room's stream (`XRANGE rdv:room:{ROOM}:log - +`).
fn stream_of(redis: &RedisServer, room: &str) -> BTreeMap<u64, (String, String)> {
    let key = format!("rdv:room:{{{room}}}:log");
    let reply = redis.cmd(&["XRANGE", &key, "-", "+"]);
    let Resp::Array(Some(entries)) = reply else { panic!("XRANGE {key}: {reply:?}") };
    let mut out = BTreeMap::new();
    for e in entries {
        let Resp::Array(Some(parts)) = &e else { panic!("XRANGE entry: {e:?}") };
        let (Some(Resp::Bulk(Some(id))), Some(Resp::Array(Some(fields)))) =
            (parts.first(), parts.get(1))
        else {
            panic!("XRANGE entry: {e:?}")
        };
        let seq: u64 = id
            .split('-')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("XRANGE entry id {id}"));
        let Some(Resp::Bulk(Some(j))) = fields.get(1) else { panic!("XRANGE fields: {e:?}") };
        let v: serde_json::Value =
            serde_json::from_str(j).unwrap_or_else(|err| panic!("stored message {j}: {err}"));
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        out.insert(seq, (field("msg_id"), field("text")));
    }
    out
}

/// Redis output buffered for pub/sub clients (`omem` of `CLIENT LIST` lines with a
/// subscription), largest first.
fn subscriber_omem(redis: &RedisServer) -> Vec<u64> {
    let Resp::Bulk(Some(list)) = redis.cmd(&["CLIENT", "LIST"]) else {
        panic!("CLIENT LIST: not a bulk string")
    };
    let field = |line: &str, name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut out: Vec<u64> =
        list.lines().filter(|l| field(l, "sub=") > 0).map(|l| field(l, "omem=")).collect();
    out.sort_unstable_by(|a, b| b.cmp(a));
    out
}

/// A message acknowledged by Redis just before Redis dies, whose copy for the
/// partner's node was still in Redis's output buffer, reaches the partner once Redis
/// is back. node-a is frozen (SIGSTOP) and its subscription filled with junk, so that
/// the copy of b0's message stays queued in Redis; b0 gets its ack (seq 3); Redis is
/// killed (what it held for node-a is gone); node-a resumes. a0's send while Redis
/// is down is refused (`internal`, `retry_after_ms`): node-a does not know seq 3, and
/// a local seq there would take it. Redis comes back from its AOF (which holds b0's
/// message at seq 3): node-a's replica re-seeds the room, sees the store ahead of it
/// and reads what it missed, so a0 receives b0's message live without asking; a0's
/// retry is acknowledged at seq 4 and reaches b0; both histories are 1..=4 with b0's
/// message at 3, and so is the stream.
///
/// (Before refusals, node-a acknowledged a0's send with local seq 3 and kept it, so
/// a0 never saw b0's acknowledged message.)
#[tokio::test]
async fn a_message_acked_just_before_redis_dies_reaches_a_partner_whose_node_lagged() {
    let _serial = SERIAL.lock().await;
    let (_dir, mut redis, nodes) = aof_cluster("durable-lag", 2).await;
    let (mut a, mut b, room) = pair(&nodes[0], &nodes[1], 0).await;
    let w1 = exchange(&mut a, &mut b, &room, "warm", "w1").await;
    let w2 = exchange(&mut b, &mut a, &room, "warm too", "w2").await;

    let frozen = nodes[0].pid().to_string();
    let signal = |sig: &str| {
        let st = std::process::Command::new("kill").args([sig, &frozen]).status().expect("kill");
        assert!(st.success(), "kill {sig} {frozen}");
    };
    signal("-STOP");
    // Fill node-a's subscription until Redis itself holds output for it.
    let junk = "x".repeat(1 << 20);
    let mut floods = 0;
    while subscriber_omem(&redis).first().copied().unwrap_or(0) < 1 << 20 {
        floods += 1;
        assert!(
            floods <= 30,
            "node-a's subscription never backed up: {:?}",
            subscriber_omem(&redis)
        );
        redis.cmd(&["PUBLISH", "rdv:node:node-a", &junk]);
    }
    send_text(&mut b, &room, "acked before the crash", "b-last").await;
    let acked = sent(&mut b, &room, "b-last").await;
    assert_eq!(acked.seq, 3, "b0's ack");
    redis.stop(); // SIGKILL: what it still held for node-a is gone
    signal("-CONT");
    for node in &nodes {
        wait_http_status(node, "/readyz", 503, Duration::from_secs(4)).await;
    }
    // Redis is down and the room spans nodes: refused, not stored, not delivered.
    send_text(&mut a, &room, "while redis is down", "a-down").await;
    match next(&mut a).await {
        ServerFrame::Error {
            code: ErrorCode::Unavailable,
            retry_after_ms: Some(ms),
            action: Some(action),
            ..
        } if action == "send" => assert!(ms > 0, "retry_after_ms {ms}"),
        // b0's message cannot arrive now (Redis lost node-a's copy and is down);
        // anything else, an ack above all, is wrong.
        other => panic!("a0's send while Redis is down: expected a refusal, got {other:?}"),
    }
    b.expect_silence(Duration::from_millis(300)).await;

    redis.restart();
    let restarted = Instant::now();
    for node in &nodes {
        let left = Duration::from_secs(10).saturating_sub(restarted.elapsed());
        wait_http_status(node, "/readyz", 200, left).await;
    }
    // Precondition: the store holds b0's message at seq 3 (it was acknowledged).
    let key = format!("rdv:room:{{{room}}}:log");
    let stored = format!("{:?}", redis.cmd(&["XRANGE", &key, "3-1", "3-1"]));
    assert!(stored.contains("acked before the crash"), "seq 3 in the restarted Redis: {stored}");
    // node-a's replica fills the gap by itself: a0 receives seq 3 live, unasked.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while !seen.contains(&acked) {
        let left = deadline.saturating_duration_since(Instant::now());
        match a.try_recv(left).await {
            Some(ServerFrame::Message(m)) => seen.push(m),
            Some(ServerFrame::Presence { .. }) => {}
            Some(other) => panic!("a0 after the restart: unexpected {other:?}"),
            None => panic!(
                "a0 never got b0's message acked at seq 3 before Redis died (5 s after both \
                 nodes were ready; live: {seen:?})"
            ),
        }
    }
    assert_eq!(seen, vec![acked.clone()], "a0's live messages after the restart");
    // a0 sends the refused message again (same text and client_msg_id): seq 4.
    send_text(&mut a, &room, "while redis is down", "a-down").await;
    let retried = sent(&mut a, &room, "a-down").await;
    assert_eq!(retried.seq, 4, "a0's retried message");
    assert_eq!(expect_message(&mut b).await, retried, "b0 got a0's retried message");

    let want = vec![w1, w2, acked, retried];
    for c in [&mut a, &mut b] {
        let h = history(c, &room, 0, None).await;
        assert_eq!(h, want, "history via {}", c.user_id);
    }
    let stream = stream_of(&redis, &room);
    let want_stream: BTreeMap<u64, (String, String)> =
        want.iter().map(|m| (m.seq, (m.msg_id.clone(), m.text.clone()))).collect();
    assert_eq!(stream, want_stream, "the room's stream in Redis");
}
