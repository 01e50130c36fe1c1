//! `attack`: what hostile clients cost the normal users of a node.
//!
//! Two phases in one run, each with the same normal load: arrivals at
//! `match_rate`/s that search with shared interests, get matched and leave (as
//! `match-storm`), and `chat_pairs` matched pairs sending at `chat_rate`/s (as
//! `chat-rooms`). The control phase has the normal users alone; in the attack
//! phase the attackers start `lead_secs` earlier and run until its normal load
//! is done. Each phase has users, interests and a language of its own.
//!
//! The attackers, each with a table of its own, each on by default, each from
//! its own client addresses (127.0.0.2, 127.0.0.3, …, so that per-address caps
//! never reach the normal users on 127.0.0.1):
//!
//! * `silent`: TCP connections that never send a byte; `half`: connections that
//!   send half a request line or partial headers, then stall. `sockets` held at
//!   once, each one the server closes replaced, `max_opens` in all.
//! * `languages`: `find_match` with invented languages, every other one
//!   well-formed (three random letters), the rest malformed; each search is
//!   held `hold_ms`, then cancelled.
//! * `block`: `block` floods with random ids.
//! * `signal`: attackers fill a public room and read; `senders` of them send
//!   `signal` without `to` with large payloads (every other member gets each).
//! * `history`: a public room filled with long texts, then `history` floods
//!   (`limit` 200).
//! * `join`: bursts of `burst` joins of distinct public rooms from fresh users.
//! * `typing`: typing floods in a public room of attackers.
//!
//! A session the server closes is replaced by a fresh user a second later, at
//! most `max_reconnects` times per slot. Nothing here depends on frames a
//! newer engine may add: unknown error codes and close codes are counted by name.
//!
//! Numbers: the normal users' under `control.` and `attack.`: `match.*` (the
//! match-storm numbers: `match_latency`, `matched`, `errors.total`, …),
//! `chat.*` (the chat-rooms numbers: `delivery_latency`, `lost`, …) and
//! `normal_errors` (failed arrivals + chat messages lost, unacknowledged or
//! refused + members cut off + rooms that failed to form); `server.peak_fds`,
//! `server.peak_rss_mib` and `server.language_series` (distinct
//! `rendezvous_pool_waiting_by_language` series on `/metrics` after the phase).
//! `ratio.match_p99` and `ratio.delivery_p99`: attack p99 / control p99, each
//! first raised to `ratio_floor_ms` (a floor, so that loopback noise under a
//! millisecond cannot read as "twice as slow"; the raw p99s are beside them).
//! Per attacker under `attackers.<name>.`: `opened` / `sessions`, `refused`
//! (could not connect or upgrade), `sent`, `replies.<type>`,
//! `errors.<code>` (error frames by code), `closes.<code>` (close frames by
//! code; `eof` and `reset` for a connection dropped without one),
//! `closed_by_server`, `closed_after` (time from connecting to the server's
//! close), `closed_at_once` (within 250 ms), `open_at_end`, `reconnects`; the
//! `languages` attacker also `searches.well_formed`, `searches.malformed`,
//! `accepted.well_formed`, `accepted.malformed`; the `join` attacker
//! `joined` and `most_rooms_one_user` (the most joins one burst got).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::net::Dialer;
use super::report::Report;
use super::spec::{Attack, Chat, Storm};
use super::{rooms, server, storm, Ctx, Stream};
use crate::client::Ws;
use crate::stats::{self, Percentiles};

/// A close within this long after connecting counts as "closed at once".
const AT_ONCE: Duration = Duration::from_millis(250);
/// Pause before a closed attacker session is replaced.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// Longest wait for one answer an attacker waits for.
const ANSWER_WAIT: Duration = Duration::from_secs(3);

// ------------------------------------------------------------ small pieces

/// A cheap deterministic generator (xorshift64*): ids, languages.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn letters(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b'a' + (self.next() % 26) as u8)).collect()
    }
}

/// Invented language number `k`: even ones well-formed (three letters), odd
/// ones malformed in one of several ways. Returns (language, well_formed).
fn invented_language(k: u64, rng: &mut Rng) -> (String, bool) {
    if k.is_multiple_of(2) {
        return (rng.letters(3), true);
    }
    let l = rng.letters(5);
    let lang = match (k / 2) % 6 {
        0 => l,                                // five letters: no language has that
        1 => format!("{}{}", &l[..1], k % 10), // a letter and a digit
        2 => format!("{l}!{k}"),               // punctuation
        3 => format!("{}-{l}{l}", &l[..2]),    // a subtag longer than 8
        4 => format!("<{l}>"),                 // markup
        _ => format!("{} {l}", &l[..2]),       // a space
    };
    (lang, false)
}

/// A name safe as one segment of a report path (server-controlled text).
fn segment(text: &str) -> String {
    let ok = !text.is_empty()
        && text.len() <= 32
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        text.to_owned()
    } else {
        "other".to_owned()
    }
}

/// The `type` of a server frame, cheaply (the engine writes it first), and the
/// error code when it is an error.
fn classify(text: &str) -> (String, Option<String>) {
    let quick = text.strip_prefix("{\"type\":\"").and_then(|rest| rest.split('"').next());
    let kind = match quick {
        Some(k) => k.to_owned(),
        None => serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("type")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unreadable".to_owned()),
    };
    if kind != "error" {
        return (segment(&kind), None);
    }
    let code = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("code")?.as_str().map(segment))
        .unwrap_or_else(|| "unreadable".to_owned());
    (kind, Some(code))
}

/// Count one server frame: `replies.<type>` or `errors.<code>`.
fn tally(r: &mut Report, text: &str) -> (String, Option<String>) {
    let (kind, code) = classify(text);
    match &code {
        Some(code) => {
            r.count(&format!("errors.{code}"), 1);
            r.count("errors.total", 1);
        }
        None => r.count(&format!("replies.{kind}"), 1),
    }
    (kind, code)
}

/// The server ended a connection `opened` ago, `how` (a close code, `eof`, …).
fn closed(r: &mut Report, how: &str, opened: Instant) -> Result<(), String> {
    let after = opened.elapsed();
    r.count(&format!("closes.{}", segment(how)), 1);
    r.count("closed_by_server", 1);
    if after <= AT_ONCE {
        r.count("closed_at_once", 1);
    }
    r.record("closed_after", stats::micros(after))
}

/// `attack / control`, both raised to `floor` first; `None` when the attack
/// phase has no sample at all (the ratio would hide that).
fn ratio(control: &Percentiles, attack: &Percentiles, floor_ms: f64) -> Option<f64> {
    if attack.count == 0 {
        return None;
    }
    let floor = floor_ms.max(1e-3);
    Some(attack.p99.max(floor) / control.p99.max(floor))
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Sleep `d`, or less when stopped; true when stopped.
async fn pause(d: Duration, stop: &watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => *stop.borrow(),
        () = stopped(stop.clone()) => true,
    }
}

/// What a WebSocket read brought.
enum Event {
    Text(String),
    /// The connection ended: a close code, `eof` or `reset`.
    Ended(String),
}

async fn next_event(ws: &mut Ws) -> Event {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Event::Text(t.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => {
                let code =
                    frame.map_or_else(|| "none".to_owned(), |f| u16::from(f.code).to_string());
                return Event::Ended(code);
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => return Event::Ended("reset".into()),
            None => return Event::Ended("eof".into()),
        }
    }
}

/// Send one frame, within 2 s (a server that stopped reading must not stall
/// the attacker's bookkeeping); `Err` when the connection is gone.
async fn send(ws: &mut Ws, text: String, r: &mut Report) -> Result<(), ()> {
    match tokio::time::timeout(Duration::from_secs(2), ws.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => {
            r.count("sent", 1);
            Ok(())
        }
        Ok(Err(_)) => Err(()),
        Err(_) => {
            r.count("send_stalled", 1);
            Ok(())
        }
    }
}

// ------------------------------------------------------------- raw sockets

/// One socket that connects from `source`, sends `bytes` (maybe none) and
/// waits for the server to close it or for the stop.
async fn raw_socket(
    addr: SocketAddr,
    source: IpAddr,
    bytes: &'static [u8],
    stop: watch::Receiver<bool>,
) -> Result<Report, String> {
    let mut r = Report::default();
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let connect = async {
        let socket = socket.map_err(|e| format!("socket: {e}"))?;
        socket.bind(SocketAddr::new(source, 0)).map_err(|e| format!("bind {source}: {e}"))?;
        tokio::time::timeout(ANSWER_WAIT, socket.connect(addr))
            .await
            .map_err(|_| format!("connect {addr}: timed out"))?
            .map_err(|e| format!("connect {addr}: {e}"))
    };
    let mut stream = match connect.await {
        Ok(s) => s,
        Err(e) => {
            r.count("refused", 1);
            r.note("first_refusal", e);
            return Ok(r);
        }
    };
    let opened = Instant::now();
    r.count("opened", 1);
    if !bytes.is_empty() && stream.write_all(bytes).await.is_err() {
        closed(&mut r, "reset", opened)?;
        return Ok(r);
    }
    let mut buf = [0u8; 2048];
    let mut answered = false;
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => {
                r.count("open_at_end", 1);
                break;
            }
            n = stream.read(&mut buf) => match n {
                Ok(0) => {
                    closed(&mut r, "eof", opened)?;
                    break;
                }
                Ok(_) => {
                    // An HTTP answer (408, 400, …) before the close.
                    if !answered {
                        r.count("answered", 1);
                        answered = true;
                    }
                }
                Err(_) => {
                    closed(&mut r, "reset", opened)?;
                    break;
                }
            }
        }
    }
    Ok(r)
}

/// Hold `cfg.sockets` raw sockets at once, opened at `cfg.rate`/s, each closed
/// one replaced, until stopped or `max_opens` were opened.
async fn raw_sockets(
    cfg: super::spec::RawSockets,
    addr: SocketAddr,
    payloads: &'static [&'static [u8]],
    stop: watch::Receiver<bool>,
) -> Result<Report, String> {
    let mut r = Report::default();
    r.declare("closed_after")?;
    let mut running = JoinSet::new();
    let mut opened = 0usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / cfg.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = stopped(stop.clone());
    tokio::pin!(end);
    loop {
        tokio::select! {
            () = &mut end => break,
            _ = tick.tick() => {
                if running.len() < cfg.sockets && opened < cfg.max_opens {
                    let source = cfg.sources[opened % cfg.sources.len()];
                    let bytes = payloads[opened % payloads.len()];
                    running.spawn(raw_socket(addr, source, bytes, stop.clone()));
                    opened += 1;
                }
            }
            Some(done) = running.join_next(), if !running.is_empty() => {
                r.merge(done.map_err(|e| format!("raw socket task: {e}"))??)?;
            }
        }
    }
    while let Some(done) = running.join_next().await {
        r.merge(done.map_err(|e| format!("raw socket task: {e}"))??)?;
    }
    for name in ["opened", "refused", "closed_by_server", "closed_at_once", "open_at_end"] {
        r.count(name, 0);
    }
    Ok(r)
}

// ---------------------------------------------------------------- sessions

/// What one attacker session does once connected.
struct Script {
    /// Public room to join first.
    join: Option<String>,
    /// Frames sent back to back after the join.
    preamble: Vec<String>,
    /// Flood frames per second (0: only read).
    rate: f64,
    /// Flood frame number `k`.
    make: fn(&Flooder, u64, &mut Rng) -> String,
    /// Wait before the first connection.
    delay: Duration,
    /// Fresh users after the server closed the session, at most.
    max_reconnects: usize,
}

/// What a flood frame needs to know.
struct Flooder {
    room: String,
    payload_bytes: usize,
    limit: u32,
}

fn block_frame(_: &Flooder, _: u64, rng: &mut Rng) -> String {
    json!({"action": "block", "user_id": format!("ghost-{:016x}", rng.next())}).to_string()
}

fn signal_frame(f: &Flooder, k: u64, _: &mut Rng) -> String {
    let sdp = "x".repeat(f.payload_bytes.saturating_sub(40).max(1));
    json!({"action": "signal", "room_id": f.room, "payload": {"type": "offer", "k": k, "sdp": sdp}})
        .to_string()
}

fn typing_frame(f: &Flooder, k: u64, _: &mut Rng) -> String {
    json!({"action": "typing", "room_id": f.room, "active": k.is_multiple_of(2)}).to_string()
}

fn history_frame(f: &Flooder, _: u64, _: &mut Rng) -> String {
    json!({"action": "history", "room_id": f.room, "after_seq": 0, "limit": f.limit}).to_string()
}

fn nothing(_: &Flooder, _: u64, _: &mut Rng) -> String {
    String::new()
}

/// One attacker slot: connect a fresh user, run `script` until stopped; a
/// session the server closes is replaced (at most `max_reconnects` times).
async fn session_slot(
    d: Dialer,
    slot: usize,
    script: Arc<Script>,
    flooder: Arc<Flooder>,
    stop: watch::Receiver<bool>,
) -> Result<Report, String> {
    let mut r = Report::default();
    let max_reconnects = script.max_reconnects;
    let mut rng = Rng::new(slot as u64 + 1);
    if pause(script.delay, &stop).await {
        return Ok(r);
    }
    let url = d.url(slot).to_owned();
    let mut k = 0u64;
    for attempt in 0..=max_reconnects {
        if *stop.borrow() {
            break;
        }
        let user = d.user(&format!("{slot}-{attempt}"));
        let opened = tokio::select! {
            o = d.open(&url, user) => o,
            () = stopped(stop.clone()) => break,
        };
        let mut m = match opened {
            Ok((m, _)) => m,
            Err(f) => {
                r.count("refused", 1);
                r.note("first_refusal", f.to_string());
                if pause(RECONNECT_PAUSE, &stop).await {
                    break;
                }
                continue;
            }
        };
        let since = Instant::now();
        r.count("sessions", 1);
        r.count("reconnects", u64::from(attempt > 0));
        let mut gone = None;
        if let Some(room) = &script.join {
            // Joined before anything else: a room's frames sent earlier would
            // race the join and be refused.
            let join = json!({"action": "join", "room_id": room}).to_string();
            if send(&mut m.ws, join, &mut r).await.is_err() {
                gone = Some("reset".to_owned());
            } else if let Answer::Ended(how) = until_answer(&mut m.ws, &mut r, &["joined"]).await {
                gone = Some(how);
            }
        }
        for frame in &script.preamble {
            if gone.is_some() {
                break;
            }
            if send(&mut m.ws, frame.clone(), &mut r).await.is_err() {
                gone = Some("reset".to_owned());
            }
        }
        let period = if script.rate > 0.0 { 1.0 / script.rate } else { 3_600.0 };
        let mut tick = tokio::time::interval(Duration::from_secs_f64(period));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let end = stopped(stop.clone());
        tokio::pin!(end);
        while gone.is_none() {
            tokio::select! {
                () = &mut end => break,
                event = next_event(&mut m.ws) => match event {
                    Event::Text(t) => {
                        tally(&mut r, &t);
                    }
                    Event::Ended(how) => gone = Some(how),
                },
                _ = tick.tick(), if script.rate > 0.0 => {
                    let frame = (script.make)(&flooder, k, &mut rng);
                    k += 1;
                    if send(&mut m.ws, frame, &mut r).await.is_err() {
                        gone = Some("reset".to_owned());
                    }
                }
            }
        }
        match gone {
            None => {
                r.count("open_at_end", 1);
                let _ = tokio::time::timeout(Duration::from_secs(1), m.ws.close(None)).await;
                break;
            }
            Some(how) => {
                closed(&mut r, &how, since)?;
                if pause(RECONNECT_PAUSE, &stop).await {
                    break;
                }
            }
        }
    }
    Ok(r)
}

/// `n` slots of `script`, slot `i` from the dialer's next source address.
fn slots(
    set: &mut JoinSet<Result<Report, String>>,
    d: &Dialer,
    n: usize,
    first_slot: usize,
    script: Script,
    flooder: &Arc<Flooder>,
    stop: &watch::Receiver<bool>,
) {
    let script = Arc::new(script);
    for i in 0..n {
        set.spawn(session_slot(
            d.clone(),
            first_slot + i,
            script.clone(),
            flooder.clone(),
            stop.clone(),
        ));
    }
}

/// Run every task of `set` to the end and merge their reports.
async fn gather(mut set: JoinSet<Result<Report, String>>) -> Result<Report, String> {
    let mut r = Report::default();
    r.declare("closed_after")?;
    while let Some(done) = set.join_next().await {
        r.merge(done.map_err(|e| format!("attacker task: {e}"))??)?;
    }
    for name in ["sessions", "refused", "sent", "closed_by_server", "errors.total"] {
        r.count(name, 0);
    }
    Ok(r)
}

// ---------------------------------------------------------------- attackers

/// Searches with invented languages, `per_session` per fresh user.
async fn languages(
    d: Dialer,
    cfg: super::spec::Languages,
    stop: watch::Receiver<bool>,
) -> Result<Report, String> {
    let sessions = cfg.max_searches.div_ceil(cfg.per_session);
    let rate = cfg.rate / cfg.per_session as f64;
    let mut set = JoinSet::new();
    let mut r = Report::default();
    let start = Instant::now();
    for s in 0..sessions {
        let due = start + Duration::from_secs_f64(s as f64 / rate);
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            () = stopped(stop.clone()) => break,
        }
        let (d, stop) = (d.clone(), stop.clone());
        let n = cfg.per_session.min(cfg.max_searches - s * cfg.per_session);
        set.spawn(language_session(d, s, n, Duration::from_millis(cfg.hold_ms), stop));
        while let Some(done) = set.try_join_next() {
            r.merge(done.map_err(|e| format!("language task: {e}"))??)?;
        }
    }
    r.merge(gather(set).await?)?;
    for name in
        ["searches.well_formed", "searches.malformed", "accepted.well_formed", "accepted.malformed"]
    {
        r.count(name, 0);
    }
    Ok(r)
}

async fn language_session(
    d: Dialer,
    s: usize,
    n: usize,
    hold: Duration,
    stop: watch::Receiver<bool>,
) -> Result<Report, String> {
    let mut r = Report::default();
    let mut rng = Rng::new(0xA11CE + s as u64);
    let url = d.url(s).to_owned();
    let mut m = match d.open(&url, d.user(&format!("l{s}"))).await {
        Ok((m, _)) => m,
        Err(f) => {
            r.count("refused", 1);
            r.note("first_refusal", f.to_string());
            return Ok(r);
        }
    };
    let since = Instant::now();
    r.count("sessions", 1);
    for j in 0..n {
        if *stop.borrow() {
            break;
        }
        let (language, well_formed) = invented_language((s * 64 + j) as u64, &mut rng);
        let shape = if well_formed { "well_formed" } else { "malformed" };
        let find = json!({"action": "find_match", "language": language, "interests": ["attack"]});
        if send(&mut m.ws, find.to_string(), &mut r).await.is_err() {
            closed(&mut r, "reset", since)?;
            return Ok(r);
        }
        r.count(&format!("searches.{shape}"), 1);
        // Until the answer to the search: `searching` (accepted) or an error.
        let answer = until_answer(&mut m.ws, &mut r, &["searching", "match_found"]).await;
        match answer {
            Answer::Frame(kind) if kind != "error" => {
                r.count(&format!("accepted.{shape}"), 1);
                if pause(hold, &stop).await {
                    break;
                }
                let cancel = json!({"action": "cancel_match"}).to_string();
                if send(&mut m.ws, cancel, &mut r).await.is_err() {
                    closed(&mut r, "reset", since)?;
                    return Ok(r);
                }
                let done = ["match_cancelled", "match_found", "no_match_found"];
                if let Answer::Ended(how) = until_answer(&mut m.ws, &mut r, &done).await {
                    closed(&mut r, &how, since)?;
                    return Ok(r);
                }
            }
            Answer::Frame(_) | Answer::Silence => {}
            Answer::Ended(how) => {
                closed(&mut r, &how, since)?;
                return Ok(r);
            }
        }
    }
    r.count("open_at_end", u64::from(*stop.borrow()));
    let _ = tokio::time::timeout(Duration::from_secs(1), m.ws.close(None)).await;
    Ok(r)
}

enum Answer {
    /// A frame of one of the awaited kinds, or `error`.
    Frame(String),
    Silence,
    Ended(String),
}

/// Read (counting everything) until a frame of `kinds` or an error arrives.
async fn until_answer(ws: &mut Ws, r: &mut Report, kinds: &[&str]) -> Answer {
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, next_event(ws)).await {
            Err(_) => {
                r.count("unanswered", 1);
                return Answer::Silence;
            }
            Ok(Event::Ended(how)) => return Answer::Ended(how),
            Ok(Event::Text(t)) => {
                let (kind, code) = tally(r, &t);
                if code.is_some() || kinds.contains(&kind.as_str()) {
                    return Answer::Frame(kind);
                }
            }
        }
    }
}

/// Bursts of joins of distinct public rooms, each from a fresh user.
async fn join_bursts(
    d: Dialer,
    cfg: super::spec::JoinBurst,
    stop: watch::Receiver<bool>,
) -> Result<Report, String> {
    let mut set = JoinSet::new();
    let start = Instant::now();
    for b in 0..cfg.max_bursts {
        let due = start + Duration::from_secs_f64(b as f64 / cfg.rate);
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            () = stopped(stop.clone()) => break,
        }
        set.spawn(join_burst(d.clone(), b, cfg.burst, stop.clone()));
    }
    let mut most = 0u64;
    let mut r = Report::default();
    r.declare("closed_after")?;
    while let Some(done) = set.join_next().await {
        let (one, joined) = done.map_err(|e| format!("join task: {e}"))??;
        most = most.max(joined);
        r.merge(one)?;
    }
    for name in ["sessions", "refused", "sent", "joined", "closed_by_server", "errors.total"] {
        r.count(name, 0);
    }
    r.set("most_rooms_one_user", most as f64);
    Ok(r)
}

async fn join_burst(
    d: Dialer,
    b: usize,
    burst: usize,
    stop: watch::Receiver<bool>,
) -> Result<(Report, u64), String> {
    let mut r = Report::default();
    let mut m = match d.open(d.url(b), d.user(&format!("j{b}"))).await {
        Ok((m, _)) => m,
        Err(f) => {
            r.count("refused", 1);
            r.note("first_refusal", f.to_string());
            return Ok((r, 0));
        }
    };
    let since = Instant::now();
    r.count("sessions", 1);
    let frames: Vec<Result<Message, _>> = (0..burst)
        .map(|k| {
            let room = format!("pub:{}-j{b}-{k}", d.tag());
            Ok(Message::Text(json!({"action": "join", "room_id": room}).to_string().into()))
        })
        .collect();
    // Back to back, flushed once: as fast as the socket takes them.
    let mut all = futures_util::stream::iter(frames);
    let sent = tokio::time::timeout(Duration::from_secs(5), m.ws.send_all(&mut all)).await;
    if !matches!(sent, Ok(Ok(()))) {
        closed(&mut r, "reset", since)?;
        return Ok((r, 0));
    }
    r.count("sent", burst as u64);
    let (mut joined, mut answers) = (0u64, 0usize);
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    let end = stopped(stop);
    tokio::pin!(end);
    while answers < burst {
        tokio::select! {
            () = &mut end => break,
            event = tokio::time::timeout_at(deadline, next_event(&mut m.ws)) => match event {
                Err(_) => break,
                Ok(Event::Ended(how)) => {
                    closed(&mut r, &how, since)?;
                    r.count("joined", joined);
                    return Ok((r, joined));
                }
                Ok(Event::Text(t)) => {
                    let (kind, code) = tally(&mut r, &t);
                    if kind == "joined" {
                        joined += 1;
                        answers += 1;
                    } else if code.is_some() {
                        answers += 1;
                    }
                }
            },
        }
    }
    r.count("joined", joined);
    r.count("unanswered", (burst - answers) as u64);
    let _ = tokio::time::timeout(Duration::from_secs(1), m.ws.close(None)).await;
    Ok((r, joined))
}

/// The attacker tasks: each names its attacker and returns its report.
type Attackers = JoinSet<(String, Result<Report, String>)>;

/// Every attacker the file turns on, each as one task with its own report.
fn start_attackers(
    base: &Dialer,
    a: &Attack,
    stop: &watch::Receiver<bool>,
) -> Result<Attackers, String> {
    let tag = base.tag().to_owned();
    let dialer =
        |name: &str, sources: &[IpAddr]| base.variant(format!("{tag}x{name}"), sources.to_vec());
    let url = base.url(0);
    let authority = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split(['/', '?']).next())
        .ok_or_else(|| format!("attack: {url} is not ws://"))?;
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|e| format!("resolve {authority}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("{authority} has no IPv4 address (loopback only)"))?;
    let mut tasks = JoinSet::new();
    let mut add =
        |name: &str, fut: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>| {
            let name = name.to_owned();
            tasks.spawn(async move { (name, fut.await) });
        };
    const SILENT: &[&[u8]] = &[b""];
    const HALF: &[&[u8]] = &[
        b"GET /w",
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upg",
    ];
    if a.silent.enabled {
        add("silent", Box::pin(raw_sockets(a.silent.clone(), addr, SILENT, stop.clone())));
    }
    if a.half.enabled {
        add("half", Box::pin(raw_sockets(a.half.clone(), addr, HALF, stop.clone())));
    }
    if a.languages.enabled {
        let d = dialer("l", &a.languages.sources);
        add("languages", Box::pin(languages(d, a.languages.clone(), stop.clone())));
    }
    let quiet = Arc::new(Flooder { room: String::new(), payload_bytes: 0, limit: 0 });
    if a.block.enabled {
        let d = dialer("b", &a.block.sources);
        let mut set = JoinSet::new();
        let script = Script {
            join: None,
            preamble: vec![],
            rate: a.block.rate,
            make: block_frame,
            delay: Duration::ZERO,
            max_reconnects: a.block.max_reconnects,
        };
        slots(&mut set, &d, a.block.sessions, 0, script, &quiet, stop);
        add("block", Box::pin(gather(set)));
    }
    for (name, short, cfg, make) in [
        ("signal", "s", &a.signal, signal_frame as fn(&Flooder, u64, &mut Rng) -> String),
        ("typing", "t", &a.typing, typing_frame),
    ] {
        if !cfg.enabled {
            continue;
        }
        let d = dialer(short, &cfg.sources);
        let room = format!("pub:{tag}-{name}");
        let f =
            Arc::new(Flooder { room: room.clone(), payload_bytes: cfg.payload_bytes, limit: 0 });
        let mut set = JoinSet::new();
        let readers = cfg.members - cfg.senders;
        let listen = Script {
            join: Some(room.clone()),
            preamble: vec![],
            rate: 0.0,
            make: nothing,
            delay: Duration::ZERO,
            max_reconnects: cfg.max_reconnects,
        };
        slots(&mut set, &d, readers, 0, listen, &f, stop);
        // The senders start once the room has filled.
        let flood = Script {
            join: Some(room),
            preamble: vec![],
            rate: cfg.rate,
            make,
            delay: Duration::from_millis(500),
            max_reconnects: cfg.max_reconnects,
        };
        slots(&mut set, &d, cfg.senders, readers, flood, &f, stop);
        add(name, Box::pin(gather(set)));
    }
    if a.history.enabled {
        let h = &a.history;
        let d = dialer("h", &h.sources);
        let room = format!("pub:{tag}-history");
        let f = Arc::new(Flooder { room: room.clone(), payload_bytes: 0, limit: h.limit });
        let mut set = JoinSet::new();
        // Fillers: the send burst of the engine is 40, so 40 texts each.
        let text = "h".repeat(h.text_bytes.clamp(1, 4_096));
        let fillers = h.fill_messages.div_ceil(40);
        for i in 0..fillers {
            let n = 40.min(h.fill_messages - i * 40);
            let preamble = (0..n)
                .map(|k| {
                    json!({"action": "send", "room_id": room, "text": format!("{k} {text}")})
                        .to_string()
                })
                .collect();
            let fill = Script {
                join: Some(room.clone()),
                preamble,
                rate: 0.0,
                make: nothing,
                delay: Duration::ZERO,
                max_reconnects: 0,
            };
            slots(&mut set, &d, 1, i, fill, &f, stop);
        }
        let flood = Script {
            join: Some(room),
            preamble: vec![],
            rate: h.rate,
            make: history_frame,
            delay: Duration::from_millis(1_000),
            max_reconnects: h.max_reconnects,
        };
        slots(&mut set, &d, h.sessions, fillers, flood, &f, stop);
        add("history", Box::pin(gather(set)));
    }
    if a.join.enabled {
        let d = dialer("j", &a.join.sources);
        add("join", Box::pin(join_bursts(d, a.join.clone(), stop.clone())));
    }
    Ok(tasks)
}

// ----------------------------------------------------------------- phases

/// The attackers on a thread and runtime of their own, so that their work
/// (reading floods, thousands of sockets) does not queue behind or ahead of the
/// normal users' tasks in one scheduler: the measured latencies then show what
/// the server did, not the load tester's own run queue. The receiver yields
/// every attacker's report once `stop` turns true.
fn attackers_thread(
    base: Dialer,
    a: Attack,
    stop: watch::Receiver<bool>,
) -> Result<tokio::sync::oneshot::Receiver<Result<Finished, String>>, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let work = move || {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build();
        let out = match runtime {
            Ok(rt) => rt.block_on(async move {
                let mut set = start_attackers(&base, &a, &stop)?;
                let mut out = Vec::new();
                while let Some(done) = set.join_next().await {
                    out.push(done.map_err(|e| format!("attacker: {e}"))?);
                }
                Ok(out)
            }),
            Err(e) => Err(format!("attackers' runtime: {e}")),
        };
        let _ = tx.send(out);
    };
    std::thread::Builder::new()
        .name("attackers".into())
        .spawn(work)
        .map_err(|e| format!("attackers' thread: {e}"))?;
    Ok(rx)
}

/// Each attacker's name and report.
type Finished = Vec<(String, Result<Report, String>)>;

/// Resident memory and open files of the servers at their highest, sampled
/// every 500 ms until stopped.
async fn peaks(urls: Vec<String>, stop: watch::Receiver<bool>) -> server::Usage {
    let mut peak = server::Usage::default();
    loop {
        if let Ok(u) = server::usage_of_all(&urls).await {
            peak.rss_bytes = peak.rss_bytes.max(u.rss_bytes);
            peak.open_fds = peak.open_fds.max(u.open_fds);
            peak.sessions = peak.sessions.max(u.sessions);
        }
        if pause(Duration::from_millis(500), &stop).await {
            return peak;
        }
    }
}

/// Distinct per-language pool series on the servers' `/metrics`.
async fn language_series(urls: &[String]) -> Option<f64> {
    let mut n = 0usize;
    for url in urls {
        let (status, text) = server::get(url, "/metrics").await.ok()?;
        if status != 200 {
            return None;
        }
        n += text.lines().filter(|l| l.starts_with("rendezvous_pool_waiting_by_language{")).count();
    }
    Some(n as f64)
}

/// The normal users of one phase: matching arrivals and chatting pairs, the
/// arrivals starting when the pairs start sending.
async fn normal(d: &Dialer, a: &Attack, secs: f64, deadline: Instant) -> Result<Report, String> {
    let chat = Chat {
        rooms: a.chat_pairs,
        room_size: 2,
        rate: a.chat_rate,
        text_bytes: a.text_bytes,
        drain_ms: 2_000,
        setup_concurrency: 50,
        cross_node: d.urls().len() > 1,
        stalled_pairs: 0,
        stalled_rate: 1.0,
        stalled_text_bytes: 0,
        stalled_reading: false,
    };
    let storm = Storm {
        rate: a.match_rate,
        interests_per_user: 3,
        interest_pool: 8,
        common_interest: true,
        cross_node: false,
        hold_ms: 0,
        max_wait_ms: 0,
        language: None,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (chat_r, match_r) = tokio::join!(
        async {
            if a.chat_pairs == 0 {
                drop(tx);
                return Ok((Report::default(), None));
            }
            rooms::load_with_start(d, &chat, secs, deadline, Some(tx)).await
        },
        async {
            // The pairs' setup first (or its failure), then arrivals beside the sends.
            let _ = rx.await;
            storm::load(Stream::steady(d, a.match_rate, secs, deadline), &storm).await
        },
    );
    let match_r = match_r?;
    let mut r = Report::default();
    let mut errors = match_r.counters.get("errors.total").copied().unwrap_or(0);
    r.merge_prefixed("match.", match_r)?;
    match chat_r {
        Ok((chat_r, _)) => {
            for name in ["lost", "unacked", "error_frames", "ended_early"] {
                errors += chat_r.counters.get(name).copied().unwrap_or(0);
            }
            r.merge_prefixed("chat.", chat_r)?;
        }
        Err(e) => {
            errors += 1;
            r.count("chat.setup_failed", 1);
            r.note("chat.first_error", e);
            r.declare("chat.delivery_latency")?;
        }
    }
    r.count("normal_errors", errors);
    Ok(r)
}

/// One phase's normal load with the servers' peaks sampled meanwhile.
async fn phase(ctx: &Ctx, a: &Attack, name: &str, report: &mut Report) -> Result<Report, String> {
    let urls = ctx.scenario.urls.clone();
    let (tx, rx) = watch::channel(false);
    let sampler = tokio::spawn(peaks(urls.clone(), rx));
    let d = ctx
        .dialer
        .variant(format!("{}{name}", ctx.dialer.tag()), ctx.scenario.source_addrs.clone());
    let r = normal(&d, a, ctx.scenario.duration_secs, ctx.deadline).await;
    let _ = tx.send(true);
    let peak = sampler.await.map_err(|e| format!("sampler: {e}"))?;
    let r = r?;
    if peak.open_fds > 0.0 {
        report.set(&format!("{name}.server.peak_fds"), peak.open_fds);
        report.set(&format!("{name}.server.peak_rss_mib"), peak.rss_bytes / 1_048_576.0);
    }
    if let Some(n) = language_series(&urls).await {
        report.set(&format!("{name}.server.language_series"), n);
    }
    Ok(r)
}

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let a = ctx.scenario.attack.as_ref().ok_or("no [attack] table")?;
    let mut report = Report::default();
    let control = phase(ctx, a, "control", &mut report).await?;
    tokio::time::sleep(Duration::from_secs_f64(a.pause_secs)).await;

    let (stop_tx, stop) = watch::channel(false);
    let attackers = attackers_thread(ctx.dialer.clone(), a.clone(), stop)?;
    tokio::time::sleep(Duration::from_secs_f64(a.lead_secs)).await;
    let attack = phase(ctx, a, "attack", &mut report).await;
    let _ = stop_tx.send(true);
    // Every attacker stops at once when told; a bound in case one cannot.
    let finished = tokio::time::timeout(Duration::from_secs(15), attackers)
        .await
        .map_err(|_| "the attackers did not stop within 15 s".to_owned())?
        .map_err(|_| "the attackers' thread ended without a report".to_owned())??;
    let attack = attack?;
    for (name, r) in finished {
        match r {
            Ok(r) => report.merge_prefixed(&format!("attackers.{name}."), r)?,
            Err(e) => report.note(&format!("attackers.{name}.failed"), e),
        }
    }

    for (what, path) in
        [("match_p99", "match.match_latency"), ("delivery_p99", "chat.delivery_latency")]
    {
        let (Some(c), Some(x)) = (control.histos.get(path), attack.histos.get(path)) else {
            continue;
        };
        let (c, x) = (Percentiles::of(c), Percentiles::of(x));
        report.set(&format!("ratio.{what}_control_ms"), c.p99);
        report.set(&format!("ratio.{what}_attack_ms"), x.p99);
        match ratio(&c, &x, a.ratio_floor_ms) {
            Some(q) => report.set(&format!("ratio.{what}"), q),
            None => report.note(&format!("ratio.{what}_missing"), "no samples in the attack phase"),
        }
    }
    report.set("ratio.floor_ms", a.ratio_floor_ms);
    report.merge_prefixed("control.", control)?;
    report.merge_prefixed("attack.", attack)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape the engine's language rule accepts: 2–3 letters, then subtags
    /// of 1–8 letters or digits.
    fn tag_shaped(s: &str) -> bool {
        let mut parts = s.split('-');
        let primary = parts.next().unwrap_or("");
        (2..=3).contains(&primary.len())
            && primary.chars().all(|c| c.is_ascii_alphabetic())
            && parts
                .all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
    }

    #[test]
    fn invented_languages_alternate_well_formed_and_malformed_and_differ() {
        let mut rng = Rng::new(7);
        let all: Vec<(String, bool)> = (0..600).map(|k| invented_language(k, &mut rng)).collect();
        for (lang, well_formed) in &all {
            assert_eq!(tag_shaped(lang), *well_formed, "{lang:?}");
        }
        let distinct: std::collections::HashSet<&String> = all.iter().map(|(l, _)| l).collect();
        assert!(distinct.len() > 550, "{}", distinct.len());
        assert_eq!(all.iter().filter(|(_, w)| *w).count(), 300);
    }

    #[test]
    fn frames_are_classified_by_type_and_error_code() {
        let err =
            r#"{"type":"error","code":"rate_limited","message":"slow down","retry_after_ms":9}"#;
        assert_eq!(classify(err), ("error".into(), Some("rate_limited".into())));
        let unknown = r#"{"type":"error","code":"some_new_code","message":"?"}"#;
        assert_eq!(classify(unknown).1.as_deref(), Some("some_new_code"));
        assert_eq!(classify(r#"{"type":"blocked","user_id":"x"}"#).0, "blocked");
        // Key order does not matter, only speed does.
        assert_eq!(classify(r#"{"room_id":"r","type":"joined"}"#).0, "joined");
        assert_eq!(classify("not json").0, "unreadable");
        // Server text never becomes a nested report path.
        assert_eq!(classify(r#"{"type":"a.b"}"#).0, "other");
        let mut r = Report::default();
        tally(&mut r, err);
        tally(&mut r, r#"{"type":"joined","room_id":"r"}"#);
        assert_eq!(r.counters["errors.rate_limited"], 1);
        assert_eq!(r.counters["errors.total"], 1);
        assert_eq!(r.counters["replies.joined"], 1);
    }

    #[test]
    fn ratios_use_the_floor_and_refuse_an_empty_attack_phase() {
        let p = |p99: f64, count: u64| Percentiles {
            p50: 0.0,
            p90: 0.0,
            p99,
            p999: 0.0,
            max: 0.0,
            count,
        };
        // Both under the floor: equal.
        assert_eq!(ratio(&p(0.2, 10), &p(0.9, 10), 5.0), Some(1.0));
        assert_eq!(ratio(&p(0.2, 10), &p(20.0, 10), 5.0), Some(4.0));
        assert_eq!(ratio(&p(10.0, 10), &p(15.0, 10), 5.0), Some(1.5));
        assert_eq!(ratio(&p(10.0, 10), &p(0.0, 0), 5.0), None);
    }
}
