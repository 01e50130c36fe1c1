//! The chat phase of `chat-rooms` (and of the drivers built on it): delivery
//! latency, throughput and ordering of room messages.
//!
//! Every member of every room sends `send` at the chat table's `rate` per second
//! for the load phase, open loop: send number k of a member is *scheduled* at
//! `start + offset + k / rate` (offsets spread the members evenly over one period)
//! and every latency is measured from that scheduled time, so a server that stalls
//! the client cannot hide the stall. A thread of its own wakes the senders on time
//! ([`plan::Metronome`]). Each text carries `k`, the scheduled time and the time
//! it was handed to the socket (µs since the run's monotonic base; every client
//! lives in this process); the `client_msg_id` carries `k`. After the last send,
//! members keep reading for `drain_ms`, then the books are balanced
//! ([`books::to_report`]):
//!
//! * delivery latency: scheduled send → another member reads the `message` frame;
//! * ack latency: scheduled send → the sender reads its `ack`;
//! * send lag: scheduled send → the frame was handed to the socket (the load
//!   generator's own lateness, part of both latencies above);
//! * from hand-off: handed to the socket → another member reads it (delivery
//!   latency without the send lag);
//! * lost: acked but not delivered to a member by the end of the drain (an
//!   overloaded server may only be late: a longer `drain_ms` tells the two
//!   apart); unacked: sent, no ack by the end of the drain;
//! * per member and room: `seq` must go 1, 2, 3, …; a seq below one already seen
//!   is reordered (if it was missing) or duplicated, a seq never seen is a gap.

pub mod books;
pub mod member;
pub mod plan;

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use self::member::{member_loop, MemberLog, Role};
use self::plan::{Metronome, Plan};
use crate::client::Member;

/// Run every member of every room until the drain ends; logs come back in
/// member order, room after room (member `j` of room `i` at `i * size + j`).
pub async fn run_rooms(
    rooms: Vec<(String, Vec<Member>)>,
    plan: Plan,
) -> Result<Vec<MemberLog>, String> {
    let total: usize = rooms.iter().map(|(_, m)| m.len()).sum();
    let wakes: Vec<Arc<Notify>> = (0..total).map(|_| Arc::new(Notify::new())).collect();
    let mut running = JoinSet::new();
    let mut idx = 0usize;
    for (room_id, members) in rooms {
        let names: Vec<String> = members.iter().map(|m| m.user.clone()).collect();
        for (j, member) in members.into_iter().enumerate() {
            let peers = names.iter().enumerate().filter(|&(k, _)| k != j);
            let peers = peers.map(|(_, n)| n.clone()).collect();
            let role = Role { idx: idx as u64, room_id: room_id.clone(), peers };
            let wake = wakes[idx].clone();
            let at = idx;
            let plan = plan.clone();
            running.spawn(async move { (at, member_loop(member, role, plan, wake).await) });
            idx += 1;
        }
    }
    let metronome = Metronome::start(plan, wakes);
    let mut logs: Vec<Option<MemberLog>> = (0..total).map(|_| None).collect();
    while let Some(done) = running.join_next().await {
        let (at, log) = done.map_err(|e| format!("member task: {e}"))?;
        logs[at] = Some(log);
    }
    metronome.join().map_err(|_| "metronome thread panicked".to_owned())?;
    Ok(logs.into_iter().flatten().collect())
}
