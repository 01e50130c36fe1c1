//! Mode `chat`: delivery latency, throughput and ordering of room messages.
//!
//! `--pairs` pairs are matched first (as in mode `pairs`, A on `--url`, B on
//! `--peer-url` when given). Then every member sends `send` at `--rate` per second
//! for `--duration-secs`, open loop: send number k of a member is *scheduled* at
//! `start + offset + k / rate` (offsets spread the members evenly over one period)
//! and every latency is measured from that scheduled time, so a server that stalls
//! the client cannot hide the stall. A thread of its own wakes the senders on time
//! ([`plan::Metronome`]). Each text carries `k`, the scheduled time and the time
//! it was handed to the socket (µs since the run's monotonic base; both clients
//! live in this process); the `client_msg_id` carries `k`. After the last send,
//! members keep reading for `--drain-ms`, then the books are balanced:
//!
//! * delivery latency: scheduled send → the partner reads the `message` frame;
//! * ack latency: scheduled send → the sender reads its `ack`;
//! * send lag: scheduled send → the frame was handed to the socket (the load
//!   generator's own lateness, part of both latencies above);
//! * from hand-off: handed to the socket → the partner reads it (delivery
//!   latency without the send lag);
//! * lost: acked but not delivered to the partner by the end of the drain (an
//!   overloaded server may only be late: a longer `--drain-ms` tells the two
//!   apart); unacked: sent, no ack by the end of the drain;
//! * per member and room: `seq` must go 1, 2, 3, …; a seq below one already seen
//!   is reordered (if it was missing) or duplicated, a seq never seen is a gap.

pub mod books;
pub mod member;
pub mod plan;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use self::member::{member_loop, MemberLog, Role};
use self::plan::{Metronome, Plan};
use crate::client::Member;
use crate::client::{bounded, match_pair, Pair, PairSpec};

pub struct ChatArgs {
    pub url: String,
    pub peer_url: Option<String>,
    pub pairs: usize,
    pub concurrency: usize,
    pub rate: f64,
    pub duration: Duration,
    pub text_bytes: usize,
    pub drain: Duration,
    pub wait: Duration,
    /// Print delivery latency per slice of this length before the summary (zero: off).
    pub timeline: Duration,
    pub json: Option<PathBuf>,
    /// Members per room (the `chat` mode's rooms are pairs).
    pub room_size: usize,
}

/// Match every pair, `concurrency` at a time; any failure aborts the run.
async fn setup(args: &ChatArgs) -> Result<Vec<Pair>, String> {
    let spec = PairSpec {
        url_a: args.url.clone(),
        url_b: args.peer_url.clone().unwrap_or_else(|| args.url.clone()),
        wait: args.wait,
    };
    let no_limit = Instant::now() + Duration::from_secs(24 * 3_600);
    let results =
        bounded(args.pairs, args.concurrency, no_limit, |id| match_pair(spec.clone(), id)).await;
    let mut pairs: Vec<Option<Pair>> = (0..args.pairs).map(|_| None).collect();
    let mut failures = Vec::new();
    for (id, result) in results {
        match (result, pairs.get_mut(id)) {
            (Ok(pair), Some(slot)) => *slot = Some(pair),
            (Ok(_), None) => failures.push(format!("pair {id} out of range")),
            (Err(f), _) => failures.push(f),
        }
    }
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} of {} pairs failed to match; first: {first}",
            failures.len(),
            args.pairs
        ));
    }
    Ok(pairs.into_iter().flatten().collect())
}

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

/// Rooms of two from matched pairs.
fn pair_rooms(pairs: Vec<Pair>) -> Vec<(String, Vec<Member>)> {
    pairs.into_iter().map(|p| (p.room_id, vec![p.a, p.b])).collect()
}

fn validate(args: &ChatArgs) -> Result<u64, String> {
    if args.pairs == 0 {
        return Err("--pairs must be at least 1".into());
    }
    if !(args.rate > 0.0 && args.rate <= 1_000_000.0) {
        return Err("--rate must be above 0 and at most 1,000,000".into());
    }
    Ok((1e9 / args.rate) as u64)
}

pub async fn run(args: ChatArgs) -> Result<bool, String> {
    let period_ns = validate(&args)?;
    let t0 = Instant::now();
    let pairs = setup(&args).await?;
    let setup_s = t0.elapsed().as_secs_f64();
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + args.duration;
    let plan = Plan {
        base: t0,
        start,
        end,
        drain_until: end + args.drain,
        period_ns,
        senders: 2 * pairs.len() as u64,
        text_bytes: args.text_bytes,
    };
    let logs = run_rooms(pair_rooms(pairs), plan).await?;
    books::report(&args, &plan, &logs, setup_s)
}
