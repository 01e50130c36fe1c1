//! "Nothing acknowledged is lost", against real `rendezvous` processes joined through
//! a real `redis-server` (harness: `common::cluster`): cross-node pairs chat without
//! pause while a node drains (SIGTERM), while a node is killed (`kill -9`) and
//! started again, and while Redis itself is killed and restarted from its AOF.
//!
//! Every member of a pair sends a numbered message (`USER#N`, never repeated) every
//! few ms with a `client_msg_id`, keeping at most [`WINDOW`] unacknowledged, and
//! records every `ack`, every message it receives (live, or in a `history` answer)
//! and how each of its sessions ended. A member whose session ends reconnects with
//! the same user id, must find its room in `welcome`, catches up with `history` and
//! goes on sending. At the end every room's `history` is read through both members
//! and checked ([`check_rooms`]): seqs 1..=N without a gap, no text and no msg_id
//! twice, every acknowledged message at its acknowledged seq with its msg_id, nothing
//! that nobody sent, and each member received every message of the room. Messages
//! that were sent but never acknowledged (the session ended first) may be missing,
//! never doubled. A failure lists what was lost.
//!
//! The one exception is Redis itself going away: then each node acknowledges with a
//! local seq on its own (CLUSTER.md, "Failures"), and the two nodes of a cross-node
//! room hand out the same seqs to different messages; when Redis is back the store's
//! messages win. Those acks (from the kill until both nodes are ready again) are only
//! held to "never twice"; how many of them survived is printed. That a local seq can
//! also take the seq of a message Redis had already acknowledged is an engine bug,
//! reproduced by the ignored test at the end (`cargo test --test durability --
//! --ignored`).
//!
//! The tests take one lock in turn: they kill processes and bound reconnect and
//! recovery times, which should not be measured while another test's cluster owns
//! both cores.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::chat::{expect_message, history, next, send_text, sent};
use common::cluster::*;
use common::{Client, Ended};
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use rendezvous_actors::protocol::{ChatMessage, HistoryItem, ServerFrame};
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
    epoch: Epoch,
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
    /// Sent on the current session, not answered yet: message number → text.
    pending: BTreeMap<u64, String>,
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
            pending: BTreeMap::new(),
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
            self.unacked.extend(std::mem::take(&mut self.pending).into_values());
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
                    if self.pending.is_empty() && !self.history_open {
                        return Ok(());
                    }
                    assert!(
                        since.elapsed() < SETTLE,
                        "{}: on a live session, no answer within {SETTLE:?} to {:?} \
                         (history catch-up open: {})",
                        self.user,
                        self.pending.values().collect::<Vec<_>>(),
                        self.history_open
                    );
                }
                None => {
                    if !broken && self.pending.len() < WINDOW {
                        broken = !self.send_next().await;
                    }
                }
            }
        }
    }

    /// Send the next numbered message; false when the socket refused it.
    async fn send_next(&mut self) -> bool {
        self.n += 1;
        let text = format!("{}#{}", self.user, self.n);
        let cid = format!("{}-{}", self.user, self.n);
        self.pending.insert(self.n, text.clone());
        let frame = json!({"action":"send","room_id":self.room,"text":text,"client_msg_id":cid});
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
                let n = cid.strip_prefix(&format!("{}-", self.user)).and_then(|n| n.parse().ok());
                let Some(text) = n.and_then(|n| self.pending.remove(&n)) else {
                    panic!("{}: ack for {cid} (seq {seq}), which awaits no ack", self.user)
                };
                assert_eq!(room_id, self.room, "{}: ack of {text} names another room", self.user);
                let epoch = st.epoch.get();
                self.acked.push(Acked { text, seq, msg_id, session: self.session, epoch });
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
            ServerFrame::History { room_id, messages } => {
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
            ServerFrame::Error { code, message, .. } => {
                // Sends are answered in order: an error answers the oldest open one
                // (or the history catch-up when no send is open).
                let answered = match self.pending.pop_first() {
                    Some((_, text)) => {
                        self.unacked.push(text.clone());
                        text
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
                    Some(Read::Frame(ServerFrame::History { room_id, messages })) => {
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
            .chain(self.pending.values().map(String::as_str))
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
    /// Acks received, and how many of them after the fault began.
    acked: usize,
    acked_after_fault: usize,
    /// Acks held to "exactly once at its seq" (see [`Check`]).
    counted: usize,
    /// The others (only held to "at most once"), by epoch: (all, found at their
    /// acked seq in both members' histories).
    uncounted: BTreeMap<Epoch, (usize, usize)>,
    /// Counted acks that a member's history or delivery has replaced by a message its
    /// node acknowledged with a local seq while Redis was away (see
    /// [`Check::known_collisions`]).
    collisions: usize,
    /// Sent but never acknowledged: stored anyway, or absent.
    unacked_stored: usize,
    unacked_absent: usize,
}

/// What [`check_rooms`] holds the rooms to.
struct Check<F: Fn(&Acked) -> bool> {
    /// Acks that must be in every history exactly once, at their seq, with their
    /// msg_id, and received by both members; the others only "at most once".
    counted: F,
    /// Both members' histories are the same, and each member received every message
    /// of it (not only the counted acks).
    same_history: bool,
    /// Tolerate (count in [`Totals::collisions`]) a counted ack whose seq a member's
    /// history or delivery holds a message of the Fault or Recovering epoch for: the
    /// known degraded-mode seq collision reproduced by
    /// `a_message_acked_just_before_redis_dies_reaches_a_partner_whose_node_lagged`.
    /// Anything else (a counted ack missing, moved, doubled) still fails.
    known_collisions: bool,
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

/// True when `text` was acknowledged while Redis was away (Fault or Recovering).
fn degraded(acks: &HashMap<String, (u64, Epoch)>, text: &str) -> bool {
    acks.get(text).is_some_and(|(_, e)| matches!(e, Epoch::Fault | Epoch::Recovering))
}

/// The end-of-test check of every room through both members (pairs as built by
/// [`pairs`]): each member's `history` has seqs 1..=N without a gap, no text and no
/// msg_id twice, nothing that nobody sent, and every counted ack of both members at
/// its seq with its msg_id; each member received every counted ack of both (live or
/// in a catch-up). Panics with everything lost, doubled or missing.
async fn check_rooms<F: Fn(&Acked) -> bool>(
    members: &mut [Member],
    st: &Stage,
    check: Check<F>,
) -> Totals {
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
        }
        if check.same_history && hx != hy {
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
        let by_seq = |h: &[ChatMessage]| -> BTreeMap<u64, ChatMessage> {
            h.iter().map(|m| (m.seq, m.clone())).collect()
        };
        let hists = [(x.user.clone(), by_seq(&hx), &hx), (y.user.clone(), by_seq(&hy), &hy)];
        for (via, _, h) in &hists {
            if let Some((i, m)) = h.iter().enumerate().find(|(i, m)| m.seq != *i as u64 + 1) {
                fails.add(
                    "SEQS NOT 1..=N",
                    format!("history via {via}: position {i} holds seq {} ({})", m.seq, m.text),
                );
            }
            let mut texts: HashMap<&str, Vec<u64>> = HashMap::new();
            let mut ids: HashMap<&str, Vec<u64>> = HashMap::new();
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
                fails.add("DOUBLED", format!("history via {via}: {t} at seqs {seqs:?}"));
            }
            for (id, seqs) in ids.iter().filter(|(_, s)| s.len() > 1) {
                fails.add("DOUBLED", format!("history via {via}: msg_id {id} at seqs {seqs:?}"));
            }
        }
        // Every counted ack, in both histories, where its ack said.
        let ack_epochs: HashMap<String, (u64, Epoch)> = [&*x, &*y]
            .iter()
            .flat_map(|m| m.acked.iter().map(|a| (a.text.clone(), (a.seq, a.epoch))))
            .collect();
        let mut must_receive: BTreeMap<u64, (String, String)> = BTreeMap::new();
        for who in [&*x, &*y] {
            for a in &who.acked {
                totals.acked += 1;
                totals.acked_after_fault += usize::from(a.epoch > Epoch::Before);
                let exact = |h: &BTreeMap<u64, ChatMessage>| {
                    h.get(&a.seq).is_some_and(|m| {
                        m.msg_id == a.msg_id && m.text == a.text && m.sender == who.user
                    })
                };
                if !(check.counted)(a) {
                    let e = totals.uncounted.entry(a.epoch).or_default();
                    e.0 += 1;
                    e.1 += usize::from(hists.iter().all(|(_, h, _)| exact(h)));
                    continue;
                }
                totals.counted += 1;
                must_receive.insert(a.seq, (a.msg_id.clone(), a.text.clone()));
                for (via, h, list) in &hists {
                    if exact(h) {
                        continue;
                    }
                    if check.known_collisions
                        && h.get(&a.seq).is_some_and(|m| degraded(&ack_epochs, &m.text))
                    {
                        totals.collisions += 1;
                        continue;
                    }
                    let elsewhere = list.iter().find(|m| m.text == a.text).map(|m| m.seq);
                    fails.add(
                        "LOST ACKED",
                        format!(
                            "{} acked at seq {} ({}, session {}, {:?}): history via {via} has \
                             {:?} there{}",
                            a.text,
                            a.seq,
                            a.msg_id,
                            a.session,
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
        if check.same_history {
            must_receive =
                hists[0].1.iter().map(|(s, m)| (*s, (m.msg_id.clone(), m.text.clone()))).collect();
        }
        let want: BTreeSet<u64> = must_receive.keys().copied().collect();
        let acked_as = |t: &str| match ack_epochs.get(t) {
            Some((seq, epoch)) => format!("acked at {seq}, {epoch:?}"),
            None => "not acked".into(),
        };
        for who in [&mut *x, &mut *y] {
            who.await_received(&want, st).await;
            let mut missing = Vec::new();
            for (seq, (id, text)) in &must_receive {
                match who.got.get(seq) {
                    None => missing.push(format!("{seq} ({text})")),
                    Some(m)
                        if &m.msg_id != id
                            && check.known_collisions
                            && degraded(&ack_epochs, &m.text) =>
                    {
                        totals.collisions += 1
                    }
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
    let totals = check_rooms(
        &mut members,
        &st,
        Check { counted: |_: &Acked| true, same_history: true, known_collisions: false },
    )
    .await;
    eprintln!(
        "drain: {PAIRS} pairs, first 1012 {first_close:?} after SIGTERM, all moved {moved:?} \
         after exit, reconnect ≤ {:?}; {totals:?}; {:?} in all",
        max_reconnect(&members),
        t0.elapsed()
    );
    assert!(totals.acked_after_fault > 0, "nothing was acknowledged after the drain began");
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
    let totals = check_rooms(
        &mut members,
        &st,
        Check { counted: |_: &Acked| true, same_history: true, known_collisions: false },
    )
    .await;
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

/// A fresh directory under the temp dir; removed on drop unless the test failed.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "rdv-{tag}-{}-{}",
            std::process::id(),
            common::chat::now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TempDir(dir)
    }

    fn path_str(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- kept {} for inspection ----", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// kill -9 of Redis (`--appendonly yes --appendfsync always`) while 10 cross-node
/// pairs chat; Redis is started again on the same port and directory 1.5 s later.
/// While it is down both nodes keep every session (`/readyz` 503, no client
/// disconnected, no node exits) and still acknowledge sends (degraded mode, local
/// seq). Once `/readyz` is 200 on both the chat goes on in the same rooms. Every
/// message acknowledged before the kill, or after the recovery, is in the restarted
/// Redis's stream at its seq, in the history through both members exactly once at its
/// seq, and both members received it; every history has seqs 1..=N, nothing twice and
/// nothing that nobody sent. One exception is counted and printed, not failed: a
/// member's node showing, at the seq of such a message, one of its own degraded-mode
/// messages instead (a known engine bug, reproduced deterministically by
/// `a_message_acked_just_before_redis_dies_reaches_a_partner_whose_node_lagged`;
/// seen here about once in a dozen runs).
///
/// What is not asserted, because the design does not promise it: the acks given from
/// the kill until both nodes are ready again. Both nodes of a room assign the same
/// local seqs to different messages meanwhile (and appends that reach the restarted
/// Redis before a node's re-seed take seqs that node already used locally); the
/// re-seed keeps the store's message for a seq and a replica ignores a stored message
/// whose seq it already holds. Typically more than half of those acks are then missing
/// from one member's history or were never delivered to the partner (the log line
/// prints `uncounted: {epoch: (acks, kept in both histories)}`).
#[tokio::test]
async fn redis_killed_with_aof_under_load_keeps_every_acked_message() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let dir = TempDir::new("durable-aof");
    let dir_s = dir.path_str();
    let redis = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &dir_s,
    ]);
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
        tokio::time::sleep(Duration::from_millis(1_500).saturating_sub(killed.elapsed())).await;
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
        (redis, unready, ready)
    };
    let ((redis, unready, ready), _) =
        tokio::join!(driver, join_all(members.iter_mut().map(|m| m.run(&st))));

    for m in &members {
        assert_eq!(m.ends, vec![], "{}: sessions ended while Redis was away", m.user);
    }
    for node in &mut nodes {
        assert!(node.try_wait().is_none(), "{} exited", node.id);
    }
    for m in &members {
        // Degraded mode: with Redis gone the node still answers sends (local seq).
        let down = m.acked.iter().filter(|a| a.epoch == Epoch::Fault).count();
        assert!(down > 0, "{}: no ack while Redis was down", m.user);
    }
    assert_chatted_to_the_end(&members);
    let counted = |a: &Acked| matches!(a.epoch, Epoch::Before | Epoch::After);
    let check = Check { counted, same_history: false, known_collisions: true };
    let totals = check_rooms(&mut members, &st, check).await;
    // The store itself: every counted ack is in the restarted Redis's stream, at its
    // seq with its msg_id, whatever a member's node shows.
    let mut not_stored = Vec::new();
    let mut stored_degraded = 0;
    for m in &members {
        let stream = stream_of(&redis, &m.room);
        for a in &m.acked {
            let there = stream.get(&a.seq) == Some(&(a.msg_id.clone(), a.text.clone()));
            if counted(a) && !there {
                not_stored.push(format!("{} acked at seq {} ({:?})", a.text, a.seq, a.epoch));
            }
            stored_degraded += usize::from(!counted(a) && there);
        }
    }
    if totals.collisions > 0 {
        eprintln!(
            "KNOWN ENGINE BUG hit {} times: a message acknowledged by Redis was shown or \
             delivered as a degraded-mode message of the same seq (see \
             a_message_acked_just_before_redis_dies_reaches_a_partner_whose_node_lagged)",
            totals.collisions
        );
    }
    assert!(
        not_stored.is_empty(),
        "{} acknowledged messages are not in Redis after the restart: {}",
        not_stored.len(),
        not_stored.iter().take(SHOW).cloned().collect::<Vec<_>>().join(", ")
    );
    eprintln!(
        "redis kill -9: {PAIRS} pairs, /readyz 503 on both {unready:?} after the kill, 200 on \
         both {ready:?} after the restart; {totals:?}; {stored_degraded} acks of the outage in \
         Redis's stream; {:?} in all",
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

/// Minimal reproduction of the loss that the Redis kill under load can show: a
/// message acknowledged by Redis just before Redis dies, whose copy for the partner's
/// node was still in Redis's output buffer, never reaches the partner. node-a is
/// frozen (SIGSTOP) and its subscription filled with junk, so that the copy of
/// b0's message stays queued in Redis; b0 gets its ack (seq 3); Redis is killed;
/// node-a resumes and a0 sends while Redis is down (node-a, not knowing seq 3, acks
/// it with local seq 3); Redis comes back from its AOF (which holds b0's message at
/// seq 3). Expected by the design ("Redis is back: … every room replica … fetches
/// what it missed from the stream"): a0 receives b0's acknowledged message and its
/// history has it at seq 3. Today a0's replica keeps its own seq 3, so a0 never
/// sees it.
#[tokio::test]
#[ignore = "engine bug: a degraded-mode local seq can take the seq of a message the store \
            already acknowledged (see the doc comment); run with --ignored"]
async fn a_message_acked_just_before_redis_dies_reaches_a_partner_whose_node_lagged() {
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("durable-lag");
    let dir_s = dir.path_str();
    let mut redis = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &dir_s,
    ]);
    let url = redis.url();
    let nodes: Vec<Node> = (0..2).map(|i| Node::spawn(Some(&url), &node_name(i), &[])).collect();
    for node in &nodes {
        wait_nodes(node, 2, Duration::from_secs(10)).await;
    }
    let (mut a, mut b, room) = pair(&nodes[0], &nodes[1], 0).await;
    send_text(&mut a, &room, "warm", "w1").await;
    let m = sent(&mut a, &room, "w1").await;
    assert_eq!(expect_message(&mut b).await, m);
    send_text(&mut b, &room, "warm too", "w2").await;
    let m = sent(&mut b, &room, "w2").await;
    assert_eq!(expect_message(&mut a).await, m);

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
    send_text(&mut a, &room, "while redis is down", "a-down").await;
    let local = sent(&mut a, &room, "a-down").await;
    eprintln!("a0's message while Redis is down was acked at seq {}", local.seq);

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
    let mut seen = Vec::new();
    while let Some(f) = a.try_recv(Duration::from_secs(1)).await {
        if let ServerFrame::Message(m) = f {
            seen.push(m);
        }
    }
    let h = history(&mut a, &room, 0, None).await;
    assert!(
        h.contains(&acked) || seen.contains(&acked),
        "a0 never got b0's message acked at seq 3 before Redis died: live {seen:?}, history \
         {:?}",
        h.iter().map(|m| (m.seq, &m.text)).collect::<Vec<_>>()
    );
    assert_eq!(h.iter().find(|m| m.seq == 3), Some(&acked), "a0's history at seq 3");
}
