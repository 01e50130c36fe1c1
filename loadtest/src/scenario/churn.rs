//! `churn` and `full-flow`.
//!
//! **churn**: users arrive at `rate`/s; each searches, chats with whoever it is
//! matched with (`messages` sends, `think_ms` apart, every send acknowledged and
//! every partner message counted), then skips with `next` and is matched again,
//! `rounds` times, and disconnects. Numbers: `match_latency` (search or `next` →
//! `match_found`), `delivery_latency` (send → the partner reads it), `rounds`,
//! `no_match` (a search that timed out, expected only at the very end of the
//! run), `undelivered` (acknowledged by the server, never read by a partner who
//! stayed until the sender left), `rematched_skipped` (matched again with a
//! partner skipped earlier: must be 0).
//!
//! **full-flow**: pairs start at `rate`/s, the two members on different nodes
//! when there are several `urls`: match, chat both ways, a typing indicator and a
//! read receipt, a WebRTC-style `signal` exchange (offer, answer, then
//! `ice_candidates` candidates each way), then `next` (the partner must see it)
//! and `cancel_match`. Numbers: `flow_time` (scheduled → the pair is done),
//! `match_latency`, `delivery_latency`, `signal_latency`, `flows_completed`, and
//! failures by kind.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{arrivals, failed, progress, scheduled, timeline, Ctx, Stream};
use crate::client::{self, Failure, Member};
use crate::scenario::net::Dialer;
use crate::scenario::report::Report;
use crate::scenario::spec::Churn;
use crate::stats;

/// The fields of server frames this driver reads.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    room_id: String,
    partner_id: Option<String>,
    sender: String,
    from: String,
    user_id: String,
    status: String,
    text: String,
    client_msg_id: Option<String>,
    payload: Value,
    code: String,
    message: String,
    action: Option<String>,
}

async fn read(m: &mut Member, deadline: tokio::time::Instant) -> Result<Frame, Failure> {
    let user = m.user.clone();
    loop {
        let next = tokio::time::timeout_at(deadline, m.ws.next())
            .await
            .map_err(|_| Failure::Timeout { user: user.clone(), waiting_for: "a frame" })?;
        match next {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str())
                    .map_err(|e| Failure::Protocol { user: user.clone(), error: e.to_string() })
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err(Failure::Closed { user, waiting_for: "a frame" })
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Failure::Protocol { user, error: e.to_string() }),
        }
    }
}

/// Read until a frame of `kind` arrives; error frames fail, others are skipped.
async fn expect(m: &mut Member, kind: &'static str, wait: Duration) -> Result<Frame, Failure> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let f = read(m, deadline).await.map_err(|e| match e {
            Failure::Timeout { user, .. } => Failure::Timeout { user, waiting_for: kind },
            Failure::Closed { user, .. } => Failure::Closed { user, waiting_for: kind },
            other => other,
        })?;
        if f.kind == kind {
            return Ok(f);
        }
        if f.kind == "error" {
            let frame = format!("{} {} (waiting for {kind})", f.code, f.message);
            return Err(Failure::Server { user: m.user.clone(), frame });
        }
    }
}

async fn send(m: &mut Member, frame: Value) -> Result<(), Failure> {
    let user = m.user.clone();
    client::send_text(&mut m.ws, &user, frame.to_string()).await
}

fn micros_since(base: Instant) -> u64 {
    stats::micros(base.elapsed())
}

// ------------------------------------------------------------------- churn

/// Shared books: (room, sender) → (acked by the server, read by the partner).
type Ledger = Mutex<HashMap<(String, String), (u64, u64)>>;

struct Churner {
    dialer: Dialer,
    base: Instant,
    language: String,
    rounds: usize,
    messages: usize,
    think: Duration,
    wait: Duration,
    ledger: Ledger,
}

#[derive(Default)]
struct UserLog {
    match_us: Vec<u64>,
    delivery_us: Vec<u64>,
    rounds: u64,
    no_match: u64,
    rematched_skipped: u64,
    sends_refused: u64,
    /// Refusals naming another room than the one being chatted in.
    refused_elsewhere: u64,
    /// Others' messages read while waiting for `match_found`.
    before_match: u64,
}

/// One match of a churning user: chat until both sides are done or the partner
/// left.
async fn chat_round(
    c: &Churner,
    m: &mut Member,
    room: &str,
    partner: &str,
    log: &mut UserLog,
) -> Result<(), Failure> {
    // `settled`: sends acknowledged, refused, or never made because the partner left.
    let (mut sent, mut settled, mut acks, mut got) = (0usize, 0usize, 0u64, 0u64);
    let mut partner_gone = false;
    let deadline = tokio::time::Instant::now() + c.wait;
    let mut next_send = tokio::time::Instant::now();
    while !(settled >= c.messages && (got as usize >= c.messages || partner_gone)) {
        let can_send = sent < c.messages && !partner_gone;
        tokio::select! {
            () = tokio::time::sleep_until(next_send), if can_send => {
                let text = format!("{}.{}", sent, micros_since(c.base));
                send(m, json!({"action": "send", "room_id": room, "text": text,
                                "client_msg_id": sent.to_string()})).await?;
                progress::sent(1);
                sent += 1;
                next_send = tokio::time::Instant::now() + c.think;
            }
            f = read(m, deadline) => {
                let f = f?;
                match f.kind.as_str() {
                    "ack" => {
                        acks += 1;
                        settled += 1;
                    }
                    "message" if f.sender == partner => {
                        got += 1;
                        progress::received(1);
                        let stamp = f.text.split('.').nth(1).and_then(|t| t.parse::<u64>().ok());
                        if let Some(us) = stamp {
                            log.delivery_us.push(micros_since(c.base).saturating_sub(us).max(1));
                        }
                    }
                    "presence" if f.user_id == partner && f.status == "left" => partner_gone = true,
                    "room_closed" if f.room_id == room => partner_gone = true,
                    "error" if f.code == "not_in_room" && f.message.contains(room) => {
                        // Our send raced the partner's `next`: the room is gone.
                        log.sends_refused += 1;
                        settled += 1;
                        partner_gone = true;
                    }
                    // A refusal of a send to an earlier room of ours (it raced that
                    // partner's `next`): not about this room.
                    "error" if f.code == "not_in_room" => {
                        log.sends_refused += 1;
                        log.refused_elsewhere += 1;
                    }
                    "error" => {
                        return Err(Failure::Server { user: m.user.clone(),
                            frame: format!("{} {}", f.code, f.message) })
                    }
                    _ => {}
                }
            }
        }
        if partner_gone && sent < c.messages {
            // What was never sent is settled.
            settled += c.messages - sent;
            sent = c.messages;
        }
    }
    if let Ok(mut ledger) = c.ledger.lock() {
        ledger.entry((room.to_owned(), m.user.clone())).or_default().0 += acks;
        ledger.entry((room.to_owned(), partner.to_owned())).or_default().1 += got;
    }
    Ok(())
}

async fn churn_user(c: Arc<Churner>, i: usize) -> (UserLog, Result<(), Failure>) {
    let mut log = UserLog::default();
    let result = churn_user_inner(&c, i, &mut log).await;
    progress::closed();
    match result {
        Ok(()) => timeline::achieved(Instant::now(), 1),
        Err(_) => timeline::error(Instant::now()),
    }
    (log, result)
}

async fn churn_user_inner(c: &Churner, i: usize, log: &mut UserLog) -> Result<(), Failure> {
    let user = c.dialer.user(&format!("c{i}"));
    let (mut m, _) = c.dialer.open(c.dialer.url(i), user).await?;
    let mut skipped: HashSet<String> = HashSet::new();
    let find = json!({"action": "find_match", "language": c.language,
                      "interests": ["churn"], "max_wait_ms": c.wait.as_millis() as u64});
    send(&mut m, find).await?;
    for round in 0..c.rounds {
        let t0 = Instant::now();
        let deadline = tokio::time::Instant::now() + c.wait + Duration::from_secs(1);
        let (room, partner) = loop {
            let f = read(&mut m, deadline).await?;
            match f.kind.as_str() {
                "match_found" => break (f.room_id, f.partner_id.unwrap_or_default()),
                "no_match_found" => {
                    log.no_match += 1;
                    let _ = m.ws.close(None).await;
                    return Ok(());
                }
                "error" if f.code == "not_in_room" => {
                    // A send that raced the partner's `next` (the room is gone).
                    log.sends_refused += 1;
                    log.refused_elsewhere += 1;
                }
                // The protocol's order is `match_found`, then the room's messages.
                "message" if f.sender != m.user => log.before_match += 1,
                "error" => {
                    let frame = format!("{} {} ({:?})", f.code, f.message, f.action);
                    return Err(Failure::Server { user: m.user.clone(), frame });
                }
                _ => {}
            }
        };
        let us = stats::micros(t0.elapsed());
        log.match_us.push(us);
        timeline::latency(Instant::now(), us);
        progress::matched();
        if skipped.contains(&partner) {
            log.rematched_skipped += 1;
        }
        chat_round(c, &mut m, &room, &partner, log).await?;
        log.rounds += 1;
        if round + 1 < c.rounds {
            skipped.insert(partner);
            send(&mut m, json!({"action": "next"})).await?;
        }
    }
    let _ = m.ws.close(None).await;
    Ok(())
}

async fn run_churn(ctx: &Ctx) -> Result<Report, String> {
    let p = ctx.scenario.churn.as_ref().ok_or("no [churn] table")?;
    load(ctx.stream(p.rate), p).await
}

/// Churning users: the arrivals of `at`.
pub async fn load(at: Stream<'_>, p: &Churn) -> Result<Report, String> {
    let c = Arc::new(Churner {
        dialer: at.dialer.clone(),
        base: Instant::now(),
        language: at.dialer.language(),
        rounds: p.rounds,
        messages: p.messages,
        think: Duration::from_millis(p.think_ms),
        wait: at.dialer.wait(),
        ledger: Mutex::new(HashMap::new()),
    });
    let start = Instant::now() + Duration::from_millis(100);
    timeline::begin(start, "match_latency", "arrivals");
    let results = at.paired(start, |i, _| churn_user(c.clone(), i)).await;
    let mut report = Report::default();
    for name in ["match_latency", "delivery_latency"] {
        report.declare(name)?;
    }
    report.count("users", results.len() as u64);
    for (log, result) in &results {
        for us in &log.match_us {
            report.record("match_latency", *us)?;
        }
        for us in &log.delivery_us {
            report.record("delivery_latency", *us)?;
        }
        report.count("rounds", log.rounds);
        report.count("no_match", log.no_match);
        report.count("rematched_skipped", log.rematched_skipped);
        report.count("sends_refused_after_partner_left", log.sends_refused);
        report.count("sends_refused_for_an_earlier_room", log.refused_elsewhere);
        report.count("messages_before_match_found", log.before_match);
        if let Err(f) = result {
            failed(&mut report, f);
        }
    }
    let ledger = c.ledger.lock().map_err(|_| "ledger poisoned")?;
    let undelivered: u64 = ledger.values().map(|(acked, got)| acked.saturating_sub(*got)).sum();
    report.count("undelivered", undelivered);
    if let Some(((room, sender), (acked, got))) = ledger.iter().find(|(_, (a, g))| a > g) {
        report.note("first_undelivered", format!("{sender} in {room}: {acked} acked, {got} read"));
    }
    report.count("messages_delivered", ledger.values().map(|(_, got)| got).sum());
    for name in
        ["rounds", "no_match", "rematched_skipped", "errors.total", "messages_before_match_found"]
    {
        report.count(name, 0);
    }
    Ok(report)
}

// --------------------------------------------------------------- full-flow

struct Flow {
    dialer: Dialer,
    messages: usize,
    ice: usize,
    wait: Duration,
}

#[derive(Default)]
struct FlowLog {
    match_us: u64,
    delivery_us: Vec<u64>,
    signal_us: Vec<u64>,
    flow_us: u64,
}

/// Send `n` chat messages from `a` to `b` and check they arrive in order.
async fn chat_one_way(
    f: &Flow,
    a: &mut Member,
    b: &mut Member,
    room: &str,
    log: &mut FlowLog,
) -> Result<(), Failure> {
    let mut sent_at = Vec::with_capacity(f.messages);
    for k in 0..f.messages {
        sent_at.push(Instant::now());
        send(
            a,
            json!({"action": "send", "room_id": room, "text": format!("flow {k}"),
                       "client_msg_id": k.to_string()}),
        )
        .await?;
        progress::sent(1);
    }
    for (k, at) in sent_at.iter().enumerate() {
        // The server echoes a member's own messages back to it: skip b's echoes.
        let got = loop {
            let m = expect(b, "message", f.wait).await?;
            if m.sender != b.user {
                break m;
            }
        };
        if got.text != format!("flow {k}") || got.sender != a.user {
            let frame = format!("message {:?} from {}, expected flow {k}", got.text, got.sender);
            return Err(Failure::Server { user: b.user.clone(), frame });
        }
        log.delivery_us.push(stats::micros(at.elapsed()));
        progress::received(1);
    }
    for k in 0..f.messages {
        let ack = expect(a, "ack", f.wait).await?;
        if ack.client_msg_id.as_deref() != Some(k.to_string().as_str()) {
            let frame = format!("ack for {:?}, expected {k}", ack.client_msg_id);
            return Err(Failure::Server { user: a.user.clone(), frame });
        }
    }
    Ok(())
}

/// `a` signals `payload` to `b`, which must receive it from `a` unchanged.
async fn signal(
    f: &Flow,
    a: &mut Member,
    b: &mut Member,
    room: &str,
    payload: Value,
    log: &mut FlowLog,
) -> Result<(), Failure> {
    let t0 = Instant::now();
    send(a, json!({"action": "signal", "room_id": room, "payload": payload})).await?;
    let got = expect(b, "signal", f.wait).await?;
    if got.from != a.user || got.payload != payload {
        let frame = format!("signal from {} with {}, expected {payload}", got.from, got.payload);
        return Err(Failure::Server { user: b.user.clone(), frame });
    }
    log.signal_us.push(stats::micros(t0.elapsed()));
    Ok(())
}

async fn flow(f: Arc<Flow>, i: usize, due: Instant) -> (FlowLog, Result<(), Failure>) {
    let mut log = FlowLog::default();
    let result = flow_inner(&f, i, due, &mut log).await;
    match result {
        Ok(()) => timeline::achieved(Instant::now(), 1),
        Err(_) => timeline::error(Instant::now()),
    }
    (log, result)
}

async fn flow_inner(f: &Flow, i: usize, due: Instant, log: &mut FlowLog) -> Result<(), Failure> {
    let d = &f.dialer;
    let (mut a, _) = d.open(d.url(2 * i), d.user(&format!("f{i}a"))).await?;
    let (mut b, _) = d.open(d.url(2 * i + 1), d.user(&format!("f{i}b"))).await?;
    let interests = [format!("{}-{i}", d.tag()), "flow".to_owned()];
    let find = json!({"action": "find_match", "interests": interests});
    send(&mut a, find.clone()).await?;
    expect(&mut a, "searching", f.wait).await?;
    let t0 = Instant::now();
    send(&mut b, find.clone()).await?;
    let found_b = expect(&mut b, "match_found", f.wait).await?;
    log.match_us = stats::micros(t0.elapsed());
    timeline::latency(Instant::now(), log.match_us);
    let found_a = expect(&mut a, "match_found", f.wait).await?;
    progress::matched();
    if found_b.partner_id.as_deref() != Some(a.user.as_str()) || found_a.room_id != found_b.room_id
    {
        return Err(Failure::WrongPartner {
            user: b.user.clone(),
            got: found_b.partner_id,
            want: a.user.clone(),
        });
    }
    let room = found_a.room_id;
    chat_one_way(f, &mut a, &mut b, &room, log).await?;
    chat_one_way(f, &mut b, &mut a, &room, log).await?;
    send(&mut a, json!({"action": "typing", "room_id": room, "active": true})).await?;
    let typing = expect(&mut b, "typing", f.wait).await?;
    send(&mut b, json!({"action": "read", "room_id": room, "seq": f.messages})).await?;
    let read = expect(&mut a, "read", f.wait).await?;
    if typing.user_id != a.user || read.user_id != b.user {
        let frame = format!("typing from {}, read from {}", typing.user_id, read.user_id);
        return Err(Failure::Server { user: a.user.clone(), frame });
    }
    let sdp =
        |kind: &str| json!({"type": kind, "sdp": format!("v=0\r\no=- {i} 2 IN IP4 127.0.0.1\r\n")});
    signal(f, &mut a, &mut b, &room, sdp("offer"), log).await?;
    signal(f, &mut b, &mut a, &room, sdp("answer"), log).await?;
    for k in 0..f.ice {
        let candidate = |side: &str| {
            json!({"type": "candidate", "candidate": {
                "candidate": format!("candidate:{k} 1 udp 2122260223 127.0.0.1 {} typ host {side}", 50_000 + k),
                "sdpMid": "0", "sdpMLineIndex": 0}})
        };
        signal(f, &mut a, &mut b, &room, candidate("a"), log).await?;
        signal(f, &mut b, &mut a, &room, candidate("b"), log).await?;
    }
    send(&mut a, json!({"action": "next"})).await?;
    expect(&mut a, "searching", f.wait).await?;
    loop {
        let seen = expect_any(&mut b, &["presence", "room_closed"], f.wait).await?;
        if seen.kind == "room_closed" || (seen.user_id == a.user && seen.status == "left") {
            break;
        }
    }
    send(&mut a, json!({"action": "cancel_match"})).await?;
    expect(&mut a, "match_cancelled", f.wait).await?;
    log.flow_us = stats::micros(due.elapsed());
    let _ = a.ws.close(None).await;
    let _ = b.ws.close(None).await;
    progress::closed();
    progress::closed();
    Ok(())
}

async fn expect_any(
    m: &mut Member,
    kinds: &[&'static str],
    wait: Duration,
) -> Result<Frame, Failure> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let f = read(m, deadline).await?;
        if kinds.contains(&f.kind.as_str()) {
            return Ok(f);
        }
        if f.kind == "error" {
            let frame = format!("{} {}", f.code, f.message);
            return Err(Failure::Server { user: m.user.clone(), frame });
        }
    }
}

async fn run_flow(ctx: &Ctx) -> Result<Report, String> {
    let s = &ctx.scenario;
    let p = s.churn.as_ref().ok_or("no [churn] table")?;
    let schedule = s.schedule(p.rate);
    let f = Arc::new(Flow {
        dialer: ctx.dialer.clone(),
        messages: p.messages,
        ice: p.ice_candidates,
        wait: ctx.dialer.wait(),
    });
    let start = Instant::now() + Duration::from_millis(100);
    timeline::begin(start, "match_latency", "flows");
    let due = scheduled(start, &schedule);
    let results =
        arrivals(schedule.count(), due, ctx.deadline, |i, due| flow(f.clone(), i, due)).await;
    let mut report = Report::default();
    for name in ["flow_time", "match_latency", "delivery_latency", "signal_latency"] {
        report.declare(name)?;
    }
    report.count("flows_started", results.len() as u64);
    for (log, result) in &results {
        match result {
            Ok(()) => {
                report.count("flows_completed", 1);
                report.record("flow_time", log.flow_us)?;
                report.record("match_latency", log.match_us)?;
            }
            Err(e) => failed(&mut report, e),
        }
        for us in &log.delivery_us {
            report.record("delivery_latency", *us)?;
        }
        for us in &log.signal_us {
            report.record("signal_latency", *us)?;
        }
    }
    report.count("flows_completed", 0);
    report.count("errors.total", 0);
    report.set("cross_node", if s.urls.len() > 1 { 1.0 } else { 0.0 });
    Ok(report)
}

pub async fn run(ctx: &Ctx, full_flow: bool) -> Result<Report, String> {
    if full_flow {
        run_flow(ctx).await
    } else {
        run_churn(ctx).await
    }
}
