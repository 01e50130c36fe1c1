//! `chat-rooms`: rooms of `room_size` members, every member sending at `rate`/s
//! (open loop, see [`super::chat`]), every delivery booked.
//!
//! Rooms of two are made by matching (each pair with interests of its own);
//! larger rooms by joining one public room each. With `cross_node`, the members
//! of a room are spread over the `urls` round robin, so every message crosses
//! nodes. Numbers: `delivery_latency` (scheduled send → a member reads it),
//! `ack_latency`, `send_lag` (the generator's own lateness), `delivered_per_s`,
//! `setup_match_latency` (rooms of two), and `lost`, `unacked`, `duplicated`,
//! `reordered`, `gaps`, `ended_early`; from servers that export
//! `process_cpu_seconds_total`, `server.cpu_s`: their CPU seconds (summed) over
//! `server.cpu_window_s`, the sending and draining without the setup.
//!
//! `stalled_pairs` adds pairs whose second member never reads (a tiny receive
//! buffer, never polled) while the first sends at `stalled_rate`: the measured
//! rooms show what the slow consumers cost everyone else; `stalled_cut_off`
//! counts the stalled members the server disconnected.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::chat::member::MemberLog;
use super::chat::{books, plan::Plan, run_rooms};
use super::net::Dialer;
use super::schedule::Schedule;
use super::server;
use super::{progress, timeline, Ctx};
use crate::client::{self, bounded, Failure, Member};
use crate::scenario::report::Report;
use crate::scenario::spec::Chat;
use crate::stats;

/// Match `a_url`'s user with `b_url`'s; B's search time is the match latency.
///
/// Connections open concurrently, but one pair searches at a time (`gate`):
/// while several first members wait at once, a matching policy that trades
/// shared interests for a shorter wait (the engine's default) may pair two of
/// them with each other instead of with their designated partners.
async fn pair(
    d: Dialer,
    id: String,
    a_url: String,
    b_url: String,
    small_b: bool,
    gate: Arc<tokio::sync::Mutex<()>>,
) -> Result<(String, Vec<Member>, u64), Failure> {
    let wait = d.wait();
    let (mut a, _) = d.open(&a_url, d.user(&format!("{id}a"))).await?;
    let (mut b, _) = if small_b {
        d.open_small_rcvbuf(&b_url, d.user(&format!("{id}b"))).await?
    } else {
        d.open(&b_url, d.user(&format!("{id}b"))).await?
    };
    let find =
        json!({"action": "find_match", "interests": [format!("{}-{id}", d.tag())]}).to_string();
    let _searching = gate.lock().await;
    client::send_text(&mut a.ws, &a.user, find.clone()).await?;
    client::until(&mut a.ws, &a.user, "searching", wait).await?;
    let t0 = Instant::now();
    client::send_text(&mut b.ws, &b.user, find).await?;
    let found = client::until(&mut b.ws, &b.user, "match_found", wait).await?;
    let latency = t0.elapsed();
    metrics::histogram!(crate::telemetry::MATCH_LATENCY_SECONDS).record(latency.as_secs_f64());
    metrics::counter!(crate::telemetry::MATCHES_TOTAL).increment(1);
    client::until(&mut a.ws, &a.user, "match_found", wait).await?;
    progress::matched();
    let rendezvous_protocol::ServerFrame::MatchFound { room_id, partner_id, .. } = found else {
        return Err(Failure::Server { user: b.user, frame: "not a match_found".into() });
    };
    if partner_id.as_deref() != Some(a.user.as_str()) {
        return Err(Failure::WrongPartner { user: b.user, got: partner_id, want: a.user });
    }
    Ok((room_id, vec![a, b], stats::micros(latency)))
}

/// `size` members join public room number `r`.
async fn public_room(
    d: Dialer,
    r: usize,
    size: usize,
    cross: bool,
) -> Result<(String, Vec<Member>, u64), Failure> {
    let room = format!("pub:{}-r{r}", d.tag());
    let mut members = Vec::with_capacity(size);
    for j in 0..size {
        let url = d.url(if cross { r + j } else { r }).to_owned();
        let (mut m, _) = d.open(&url, d.user(&format!("r{r}m{j}"))).await?;
        let join = json!({"action": "join", "room_id": room}).to_string();
        client::send_text(&mut m.ws, &m.user, join).await?;
        client::until(&mut m.ws, &m.user, "joined", d.wait()).await?;
        members.push(m);
    }
    Ok((room, members, 0))
}

/// One stalled pair: the sender sends until `end`; the receiver never reads.
/// Returns whether the server cut the receiver off.
async fn stalled(
    mut room: Vec<Member>,
    room_id: String,
    rate: f64,
    text_bytes: usize,
    reading: bool,
    end: Instant,
) -> bool {
    let (Some(mut receiver), Some(mut sender)) = (room.pop(), room.pop()) else {
        return false;
    };
    let mut receiver_back = None;
    // The control experiment: the same traffic, read.
    let reader = if reading {
        Some(tokio::spawn(async move { while let Some(Ok(_)) = receiver.ws.next().await {} }))
    } else {
        receiver_back = Some(receiver);
        None
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut k = 0u64;
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {
                let text = format!("{k} {}", "\u{1F600}".repeat((text_bytes / 4).max(1)));
                let frame = json!({"action": "send", "room_id": room_id, "text": text});
                if sender.ws.send(Message::Text(frame.to_string().into())).await.is_err() {
                    break;
                }
                k += 1;
            }
            next = sender.ws.next() => if !matches!(next, Some(Ok(_))) { break },
        }
    }
    let _ = sender.ws.close(None).await;
    let mut receiver = match (reader, receiver_back) {
        (Some(reader), _) => {
            reader.abort();
            progress::closed();
            progress::closed();
            return false;
        }
        (None, Some(r)) => r,
        (None, None) => return false,
    };
    // Read what the receiver was sent: a cut-off session ends in a close or EOF.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let cut = loop {
        match tokio::time::timeout_at(deadline, receiver.ws.next()).await {
            Err(_) => break false,
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break true,
            Ok(Some(Ok(_))) => {}
        }
    };
    progress::closed();
    progress::closed();
    cut
}

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let s = &ctx.scenario;
    let mut c = s.chat.clone().ok_or("no [chat] table")?;
    // This process's share of the rooms (the rate is each member's own).
    c.rooms = ctx.share.count(c.rooms);
    c.stalled_pairs = ctx.share.count(c.stalled_pairs);
    if c.rooms == 0 {
        return Err(format!(
            "worker {} of {} has no room to run",
            ctx.share.index + 1,
            ctx.share.of
        ));
    }
    let schedule = s.schedule(c.rate);
    let (report, _) = load_scheduled(&ctx.dialer, &c, schedule, ctx.deadline, None).await?;
    Ok(report)
}

/// Set up the rooms, send for `secs`, balance the books; also returns the plan
/// and the logs for drivers that look closer (redis-failover).
pub async fn load(
    dialer: &Dialer,
    c: &Chat,
    secs: f64,
    deadline: Instant,
) -> Result<(Report, Option<(Plan, Vec<MemberLog>)>), String> {
    load_scheduled(dialer, c, Schedule::constant(c.rate, secs), deadline, None).await
}

/// [`load`], telling `started` when the first send is scheduled.
pub async fn load_with_start(
    dialer: &Dialer,
    c: &Chat,
    secs: f64,
    deadline: Instant,
    started: Option<tokio::sync::oneshot::Sender<Instant>>,
) -> Result<(Report, Option<(Plan, Vec<MemberLog>)>), String> {
    load_scheduled(dialer, c, Schedule::constant(c.rate, secs), deadline, started).await
}

/// [`load_with_start`] with each member sending on `per_member` (one member's
/// rate over time).
pub async fn load_scheduled(
    dialer: &Dialer,
    c: &Chat,
    per_member: Schedule,
    deadline: Instant,
    started: Option<tokio::sync::oneshot::Sender<Instant>>,
) -> Result<(Report, Option<(Plan, Vec<MemberLog>)>), String> {
    let t0 = Instant::now();
    let d = dialer.clone();
    let (size, cross) = (c.room_size, c.cross_node);
    let gate = Arc::new(tokio::sync::Mutex::new(()));
    let results = bounded(c.rooms, c.setup_concurrency, deadline, |r| {
        let (d, gate) = (d.clone(), gate.clone());
        async move {
            if size == 2 {
                let (a, b) = (d.url(r).to_owned(), d.url(if cross { r + 1 } else { r }).to_owned());
                pair(d, format!("p{r}"), a, b, false, gate).await
            } else {
                public_room(d, r, size, cross).await
            }
        }
    })
    .await;
    let mut rooms: Vec<Option<(String, Vec<Member>)>> = (0..c.rooms).map(|_| None).collect();
    let mut report = Report::default();
    report.declare("setup_match_latency")?;
    let mut failures = Vec::new();
    for (r, result) in results {
        match result {
            Ok((id, members, us)) => {
                if size == 2 {
                    report.record("setup_match_latency", us)?;
                }
                if let Some(slot) = rooms.get_mut(r) {
                    *slot = Some((id, members));
                }
            }
            Err(f) => failures.push(f),
        }
    }
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} of {} rooms failed to form; first: {first}",
            failures.len(),
            c.rooms
        ));
    }
    let rooms: Vec<(String, Vec<Member>)> = rooms.into_iter().flatten().collect();
    let stalled_rooms = bounded(c.stalled_pairs, c.setup_concurrency, deadline, |r| {
        let (d, gate) = (d.clone(), gate.clone());
        async move {
            let (a, b) = (d.url(r).to_owned(), d.url(r).to_owned());
            pair(d, format!("st{r}"), a, b, true, gate).await
        }
    })
    .await;
    report.set("setup_s", t0.elapsed().as_secs_f64());
    // The servers' own CPU time over the sending and draining (setup excluded),
    // where they export it: the engine does, the relay does not. Read before the
    // schedule is fixed, so a slow answer cannot make the first sends late.
    let cpu_before = server::cpu_seconds_of_all(dialer.urls()).await.ok();
    let window = Instant::now();
    let start = Instant::now() + Duration::from_millis(300);
    let end = start + Duration::from_secs_f64(per_member.secs());
    let senders = rooms.iter().map(|(_, m)| m.len() as u64).sum::<u64>();
    let plan = Plan {
        base: t0,
        start,
        end,
        drain_until: end + Duration::from_millis(c.drain_ms),
        schedule: Plan::schedule_of(&per_member, senders),
        senders,
        text_bytes: c.text_bytes,
    };
    timeline::begin(start, "delivery_latency", "deliveries");
    let mut stalls = JoinSet::new();
    for (r, result) in stalled_rooms {
        match result {
            Ok((id, members, _)) => {
                let (rate, bytes, reading) =
                    (c.stalled_rate, c.stalled_text_bytes, c.stalled_reading);
                stalls.spawn(stalled(members, id, rate, bytes, reading, end));
            }
            Err(f) => {
                report.count("stalled_setup_failures", 1);
                report.note("stalled_first_failure", format!("stalled pair {r}: {f}"));
            }
        }
    }
    if let Some(tx) = started {
        let _ = tx.send(start);
    }
    let logs = run_rooms(rooms, plan.clone()).await?;
    if let Some(before) = cpu_before {
        if let Ok(after) = server::cpu_seconds_of_all(dialer.urls()).await {
            report.set("server.cpu_s", after - before);
            report.set("server.cpu_window_s", window.elapsed().as_secs_f64());
        }
    }
    let mut cut = 0;
    while let Some(done) = stalls.join_next().await {
        cut += u64::from(done.unwrap_or(false));
    }
    report.merge(books::to_report(&plan, &logs, size, "")?)?;
    report.count("rooms", (logs.len() / size) as u64);
    if c.stalled_pairs > 0 {
        report.count("stalled_pairs", c.stalled_pairs as u64);
        report.count("stalled_cut_off", cut);
    }
    Ok((report, Some((plan, logs))))
}
