//! One chat member: sends on schedule, reads everything, keeps the books of what
//! it saw.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use super::plan::Plan;
use crate::client::Member;
use crate::scenario::{progress, timeline};
use crate::stats;

/// Highest message index accepted from a text (guards the bitmaps against junk).
const MAX_INDEX: u64 = 100_000_000;
/// Latest timestamp accepted from a text, µs after the base (guards `Instant` math).
const MAX_MICROS: u64 = 1_000_000_000_000;

/// The fields of the server frames a chat member reads, borrowed from the frame's
/// text (cheaper than the full `ServerFrame`, which matters when the load
/// generator shares two cores with the servers).
#[derive(Deserialize)]
struct View<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    seq: u64,
    #[serde(default, borrow)]
    sender: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    client_msg_id: Option<Cow<'a, str>>,
}

/// `seq` bookkeeping of one member's view of its room.
#[derive(Default)]
pub struct SeqCheck {
    pub last: u64,
    pub missing: BTreeSet<u64>,
    pub reordered: u64,
    pub duplicated: u64,
}

impl SeqCheck {
    fn observe(&mut self, seq: u64) {
        if seq == self.last + 1 {
            self.last = seq;
        } else if seq > self.last + 1 {
            self.missing.extend(self.last + 1..seq);
            self.last = seq;
        } else if self.missing.remove(&seq) {
            self.reordered += 1;
        } else {
            self.duplicated += 1;
        }
    }
}

/// A growable bitmap of message indices; returns whether `k` was already set.
fn mark(bits: &mut Vec<bool>, k: u64) -> bool {
    let i = k as usize;
    if i >= bits.len() {
        bits.resize(i + 1, false);
    }
    std::mem::replace(&mut bits[i], true)
}

/// What one member saw.
pub struct MemberLog {
    pub user: String,
    pub sent: u64,
    /// Own messages acknowledged, by index.
    pub acked: Vec<bool>,
    /// Each peer's messages delivered, by the peer's place in [`Role::peers`],
    /// then by message index.
    pub got: Vec<Vec<bool>>,
    pub delivery_us: Vec<u64>,
    /// Scheduled send time of each delivery (µs since the plan's base).
    pub delivery_due_us: Vec<u64>,
    /// Handed to the socket → delivered (without the generator's send lag).
    pub wire_us: Vec<u64>,
    pub ack_us: Vec<u64>,
    pub lag_us: Vec<u64>,
    pub seq: SeqCheck,
    pub errors: u64,
    pub first_error: Option<String>,
    pub unexpected: u64,
    /// Why the session ended before the drain did, if it did.
    pub ended: Option<String>,
    pub last_delivery: Option<Instant>,
}

impl MemberLog {
    pub fn new(user: String, expected: usize) -> Self {
        Self {
            user,
            sent: 0,
            acked: Vec::with_capacity(expected),
            got: Vec::new(),
            delivery_us: Vec::with_capacity(expected),
            delivery_due_us: Vec::with_capacity(expected),
            wire_us: Vec::with_capacity(expected),
            ack_us: Vec::with_capacity(expected),
            lag_us: Vec::with_capacity(expected),
            seq: SeqCheck::default(),
            errors: 0,
            first_error: None,
            unexpected: 0,
            ended: None,
            last_delivery: None,
        }
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }
}

/// One member's identity in the run.
pub struct Role {
    pub idx: u64,
    pub room_id: String,
    /// The other members of the room.
    pub peers: Vec<String>,
}

/// What a text says about itself.
struct Stamp {
    k: u64,
    due_us: u64,
    handed_us: u64,
}

/// `k.scheduled_us.handed_us.` at the start of a text.
fn parse_text(text: &str) -> Option<Stamp> {
    let mut parts = text.splitn(4, '.');
    let k = parts.next()?.parse().ok()?;
    let due_us = parts.next()?.parse().ok()?;
    let handed_us = parts.next()?.parse().ok()?;
    let sane = k <= MAX_INDEX && due_us <= MAX_MICROS && handed_us <= MAX_MICROS;
    sane.then_some(Stamp { k, due_us, handed_us })
}

/// Account for one text frame from the server.
fn on_frame(log: &mut MemberLog, role: &Role, plan: &Plan, text: &str, now: Instant) {
    let Ok(view) = serde_json::from_str::<View>(text) else {
        log.unexpected += 1;
        return;
    };
    match view.kind.as_ref() {
        "message" => on_message(log, role, plan, &view, now),
        "ack" => on_ack(log, role, plan, &view, now),
        "error" => {
            crate::telemetry::error("error_frame");
            timeline::error(now);
            log.error(text.to_owned())
        }
        _ => {}
    }
}

fn on_message(log: &mut MemberLog, role: &Role, plan: &Plan, view: &View, now: Instant) {
    log.seq.observe(view.seq);
    let sender = view.sender.as_deref();
    let Some(peer) = role.peers.iter().position(|p| Some(p.as_str()) == sender) else {
        if sender != Some(log.user.as_str()) {
            log.unexpected += 1;
        }
        return;
    };
    let Some(stamp) = view.text.as_deref().and_then(parse_text) else {
        log.unexpected += 1;
        return;
    };
    if log.got.len() < role.peers.len() {
        log.got.resize_with(role.peers.len(), Vec::new);
    }
    if mark(&mut log.got[peer], stamp.k) {
        return; // counted by the seq check as a duplicate
    }
    // Bounded by `parse_text`, so the additions cannot overflow.
    let since = |us: u64| {
        stats::micros(now.saturating_duration_since(plan.base + Duration::from_micros(us)))
    };
    let delivery = since(stamp.due_us);
    metrics::counter!(crate::telemetry::MESSAGES_RECEIVED_TOTAL).increment(1);
    progress::received(1);
    timeline::done(now, delivery);
    metrics::histogram!(crate::telemetry::DELIVERY_LATENCY_SECONDS)
        .record(delivery as f64 / 1_000_000.0);
    log.delivery_us.push(delivery);
    log.delivery_due_us.push(stamp.due_us);
    log.wire_us.push(since(stamp.handed_us));
    log.last_delivery = Some(now);
}

fn on_ack(log: &mut MemberLog, role: &Role, plan: &Plan, view: &View, now: Instant) {
    let Some(k) = view.client_msg_id.as_deref().and_then(|c| c.parse::<u64>().ok()) else {
        log.unexpected += 1;
        return;
    };
    if k >= log.sent || mark(&mut log.acked, k) {
        log.unexpected += 1;
        return;
    }
    let due = plan.due(role.idx, k);
    let ack = stats::micros(now.saturating_duration_since(due));
    metrics::histogram!(crate::telemetry::ACK_LATENCY_SECONDS).record(ack as f64 / 1_000_000.0);
    log.ack_us.push(ack);
}

/// Send message `k`; `Err` ends the member.
async fn send_one(
    member: &mut Member,
    role: &Role,
    plan: &Plan,
    k: u64,
    due: Instant,
) -> Result<(), String> {
    let text = plan.text(k, due, Instant::now());
    let frame = json!({"action": "send", "room_id": role.room_id, "text": text,
                       "client_msg_id": k.to_string()});
    member.ws.send(Message::Text(frame.to_string().into())).await.map_err(|e| {
        crate::telemetry::error("send");
        format!("{}: send #{k} failed: {e}", member.user)
    })?;
    metrics::counter!(crate::telemetry::MESSAGES_SENT_TOTAL).increment(1);
    progress::sent(1);
    Ok(())
}

/// Read what arrived; `Err` says why the session is over.
fn on_read(
    log: &mut MemberLog,
    role: &Role,
    plan: &Plan,
    next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<(), String> {
    match next {
        Some(Ok(Message::Text(t))) => {
            on_frame(log, role, plan, t.as_str(), Instant::now());
            Ok(())
        }
        Some(Ok(Message::Close(c))) => {
            crate::telemetry::error("closed");
            Err(format!("{}: closed by server: {c:?}", log.user))
        }
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(format!("{}: read failed: {e}", log.user)),
        None => Err(format!("{}: connection ended", log.user)),
    }
}

/// Send everything that is due by now, in order.
async fn send_due(
    member: &mut Member,
    role: &Role,
    plan: &Plan,
    log: &mut MemberLog,
) -> Result<(), String> {
    loop {
        let due = plan.due(role.idx, log.sent);
        if due >= plan.end || due > Instant::now() {
            return Ok(());
        }
        log.lag_us.push(stats::micros(due.elapsed()));
        timeline::offered(due, role.peers.len() as u64);
        send_one(member, role, plan, log.sent, due).await?;
        log.sent += 1;
    }
}

/// Send on schedule (woken by the [`Metronome`]) and read everything until the
/// drain ends.
pub async fn member_loop(
    mut member: Member,
    role: Role,
    plan: Plan,
    wake: Arc<Notify>,
) -> MemberLog {
    let mut log = MemberLog::new(member.user.clone(), plan.sends_per_member().min(1 << 20));
    let drained = tokio::time::sleep_until(plan.drain_until.into());
    tokio::pin!(drained);
    loop {
        tokio::select! {
            next = member.ws.next() => {
                if let Err(why) = on_read(&mut log, &role, &plan, next) {
                    timeline::error(Instant::now());
                    log.ended = Some(why);
                    break;
                }
            }
            () = wake.notified() => {}
            () = &mut drained => break,
        }
        if let Err(why) = send_due(&mut member, &role, &plan, &mut log).await {
            log.ended = Some(why);
            break;
        }
    }
    let _ = member.ws.close(None).await;
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let base = Instant::now();
        let start = base + Duration::from_millis(10);
        let end = start + Duration::from_secs(1);
        Plan {
            base,
            start,
            end,
            drain_until: end,
            schedule: Plan::schedule_of(
                &crate::scenario::schedule::Schedule::constant(10.0, 1.0),
                2,
            ),
            senders: 2,
            text_bytes: 64,
        }
    }

    fn role() -> Role {
        Role { idx: 0, room_id: "r1".into(), peers: vec!["bob".into()] }
    }

    fn message(seq: u64, sender: &str, text: &str) -> String {
        json!({"type": "message", "room_id": "r1", "seq": seq, "msg_id": "m", "sender": sender,
               "text": text, "ts": 1})
        .to_string()
    }

    #[test]
    fn seq_check_tells_gaps_reorders_and_duplicates_apart() {
        let mut s = SeqCheck::default();
        for seq in [1, 2, 4, 3, 3, 6] {
            s.observe(seq);
        }
        assert_eq!((s.reordered, s.duplicated), (1, 1));
        assert_eq!(s.missing.iter().copied().collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn texts_carry_their_index_and_times() {
        let p = plan();
        let due = p.due(1, 3);
        let text = p.text(3, due, due + Duration::from_micros(70));
        assert_eq!(text.len(), 64);
        let stamp = parse_text(&text).expect("stamp");
        assert_eq!(stamp.k, 3);
        assert_eq!(stamp.handed_us - stamp.due_us, 70);
        assert!(parse_text("3.x.1.").is_none());
        assert!(parse_text(&format!("1.{}.1.", u64::MAX)).is_none());
    }

    #[test]
    fn deliveries_acks_and_junk_are_counted() {
        let (p, r) = (plan(), role());
        let mut log = MemberLog::new("alice".into(), 4);
        log.sent = 1;
        let now = p.end;
        let text = p.text(0, p.due(1, 0), p.due(1, 0));
        on_frame(&mut log, &r, &p, &message(1, "bob", &text), now);
        on_frame(&mut log, &r, &p, &message(1, "bob", &text), now);
        on_frame(&mut log, &r, &p, &message(2, "alice", "own echo"), now);
        on_frame(
            &mut log,
            &r,
            &p,
            r#"{"type":"ack","room_id":"r1","seq":2,"msg_id":"m","client_msg_id":"0"}"#,
            now,
        );
        on_frame(
            &mut log,
            &r,
            &p,
            r#"{"type":"ack","room_id":"r1","seq":3,"msg_id":"m","client_msg_id":"7"}"#,
            now,
        );
        on_frame(&mut log, &r, &p, &message(3, "mallory", "x"), now);
        on_frame(&mut log, &r, &p, "not json", now);
        assert_eq!(log.got, vec![vec![true]]);
        assert_eq!(log.delivery_us.len(), 1);
        assert_eq!(log.acked, vec![true]);
        assert_eq!(log.seq.duplicated, 1);
        assert_eq!(log.unexpected, 3);
    }
}
