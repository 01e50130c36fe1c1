//! Balancing the books of a chat run: totals, percentiles, the summary line and
//! the JSON report.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::member::MemberLog;
use super::plan::Plan;
use super::ChatArgs;
use crate::stats::{self, Percentiles};

/// Totals over all members.
#[derive(Default)]
struct Books {
    sent: u64,
    delivered: u64,
    acked: u64,
    lost: u64,
    unacked: u64,
    duplicated: u64,
    reordered: u64,
    gaps: u64,
    errors: u64,
    unexpected: u64,
    ended: u64,
    /// Deliveries owed: every acknowledged message times the other members.
    expected: u64,
    first_problem: Option<String>,
    last_delivery: Option<Instant>,
}

impl Books {
    /// Member `i` of `room`: its own stream and sends, and what every other
    /// member received of them. A member's peers are the others in room order,
    /// so sender `i` is peer `i` of members before it and `i - 1` of those after.
    fn add(&mut self, room: &[MemberLog], i: usize) {
        let member = &room[i];
        let acked = member.acked.iter().filter(|&&a| a).count() as u64;
        let receivers = room.len().saturating_sub(1) as u64;
        self.sent += member.sent;
        self.acked += acked;
        self.unacked += member.sent.saturating_sub(acked);
        for (j, other) in room.iter().enumerate().filter(|&(j, _)| j != i) {
            let got = other.got.get(if i < j { i } else { i - 1 }).map_or(&[][..], |g| g);
            let delivered = |k: usize| got.get(k).copied().unwrap_or(false);
            let lost =
                (0..member.acked.len()).filter(|&k| member.acked[k] && !delivered(k)).count();
            self.lost += lost as u64;
            metrics::counter!(crate::telemetry::LOST_MESSAGES_TOTAL).increment(lost as u64);
            self.delivered += got.iter().filter(|&&g| g).count() as u64;
            self.last_delivery = self.last_delivery.max(other.last_delivery);
        }
        self.expected += acked * receivers;
        self.duplicated += member.seq.duplicated;
        self.reordered += member.seq.reordered;
        self.gaps += member.seq.missing.len() as u64;
        self.errors += member.errors;
        self.unexpected += member.unexpected;
        self.ended += u64::from(member.ended.is_some());
        if self.first_problem.is_none() {
            self.first_problem = member.ended.clone().or_else(|| member.first_error.clone());
        }
    }

    /// Nothing lost, unconfirmed, duplicated, out of order or cut short.
    fn clean(&self) -> bool {
        self.lost + self.unacked + self.duplicated + self.reordered + self.gaps + self.ended == 0
    }

    /// `logs` holds whole rooms of `room_size`, one after another.
    fn of(logs: &[MemberLog], room_size: usize) -> Self {
        let mut books = Books::default();
        for room in logs.chunks(room_size.max(1)) {
            for i in 0..room.len() {
                books.add(room, i);
            }
        }
        books
    }
}

fn histogram_of<'a>(
    logs: &'a [MemberLog],
    pick: impl Fn(&'a MemberLog) -> &'a [u64],
) -> Result<Percentiles, String> {
    let mut h: Histogram<u64> = stats::histogram()?;
    for us in logs.iter().flat_map(|l| pick(l).iter()) {
        stats::record(&mut h, *us);
    }
    Ok(Percentiles::of(&h))
}

/// Everything the summary and the JSON report say.
struct Summary {
    books: Books,
    delivery: Percentiles,
    ack: Percentiles,
    lag: Percentiles,
    handoff: Percentiles,
    /// Partner deliveries per second, from the first scheduled send to the last delivery.
    per_s: f64,
    offered: f64,
    topology: &'static str,
}

impl Summary {
    fn of(args: &ChatArgs, plan: &Plan, logs: &[MemberLog]) -> Result<Self, String> {
        let books = Books::of(logs, args.room_size);
        let window = books.last_delivery.map_or(0.0, |t| (t - plan.start).as_secs_f64());
        let per_s = if window > 0.0 { books.delivered as f64 / window } else { 0.0 };
        Ok(Self {
            delivery: histogram_of(logs, |l| &l.delivery_us)?,
            ack: histogram_of(logs, |l| &l.ack_us)?,
            lag: histogram_of(logs, |l| &l.lag_us)?,
            handoff: histogram_of(logs, |l| &l.wire_us)?,
            books,
            per_s,
            offered: plan.senders as f64 * args.rate,
            topology: if args.peer_url.is_some() { "cross-node" } else { "single-node" },
        })
    }

    fn line(&self, args: &ChatArgs) -> String {
        let (b, d) = (&self.books, &self.delivery);
        let head = format!(
            "chat {} {} pairs x {}/s x {} s, {} B: delivered {}/{} ({:.0} msg/s, offered {:.0})",
            self.topology,
            args.pairs,
            args.rate,
            args.duration.as_secs(),
            args.text_bytes,
            b.delivered,
            b.sent,
            self.per_s,
            self.offered
        );
        let delivery = format!(
            "delivery ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
            d.p50, d.p90, d.p99, d.p999, d.max
        );
        let ack = format!("ack ms p50 {:.3} p99 {:.3}", self.ack.p50, self.ack.p99);
        let lag = format!("send lag ms p50 {:.3} p99 {:.3}", self.lag.p50, self.lag.p99);
        let handoff =
            format!("from hand-off ms p50 {:.3} p99 {:.3}", self.handoff.p50, self.handoff.p99);
        let counters = format!(
            "lost {} unacked {} dup {} reordered {} gaps {} errors {} unexpected {} ended {}",
            b.lost, b.unacked, b.duplicated, b.reordered, b.gaps, b.errors, b.unexpected, b.ended
        );
        format!("{head} | {delivery} | {ack} | {lag} | {handoff} | {counters}")
    }

    fn json(&self, args: &ChatArgs, setup_s: f64) -> Value {
        let b = &self.books;
        json!({"mode": "chat", "topology": self.topology, "url": args.url,
            "peer_url": args.peer_url, "pairs": args.pairs, "rate_per_sender": args.rate,
            "duration_s": args.duration.as_secs_f64(), "text_bytes": args.text_bytes,
            "setup_s": setup_s, "offered_per_s": self.offered, "delivered_per_s": self.per_s,
            "sent": b.sent, "delivered": b.delivered, "acked": b.acked,
            "delivery_latency": self.delivery.to_json(), "ack_latency": self.ack.to_json(),
            "send_lag": self.lag.to_json(), "delivery_from_handoff": self.handoff.to_json(),
            "lost": b.lost, "unacked": b.unacked, "duplicated": b.duplicated,
            "reordered": b.reordered, "gaps": b.gaps, "errors": b.errors,
            "unexpected": b.unexpected, "ended_early": b.ended, "first_problem": b.first_problem})
    }
}

/// Delivery latency by the slice of the run in which the messages were scheduled,
/// to tell a steady queue from a stall.
fn timeline(plan: &Plan, logs: &[MemberLog], slice: Duration) -> Result<Vec<String>, String> {
    let start_us = stats::micros(plan.start - plan.base);
    let slice_us = stats::micros(slice);
    let mut slices: Vec<Histogram<u64>> = Vec::new();
    for log in logs {
        for (due, us) in log.delivery_due_us.iter().zip(&log.delivery_us) {
            let i = (due.saturating_sub(start_us) / slice_us) as usize;
            while slices.len() <= i {
                slices.push(stats::histogram()?);
            }
            stats::record(&mut slices[i], *us);
        }
    }
    Ok(slices
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let p = Percentiles::of(h);
            let at = (i as u64 * slice_us) as f64 / 1e6;
            format!(
                "  at {at:>7.2} s: {:>7} delivered, delivery ms p50 {:.3} p99 {:.3} max {:.3}",
                p.count, p.p50, p.p99, p.max
            )
        })
        .collect())
}

/// Print the summary line (and the JSON file); `Ok(false)` when the books do not
/// balance.
pub fn report(
    args: &ChatArgs,
    plan: &Plan,
    logs: &[MemberLog],
    setup_s: f64,
) -> Result<bool, String> {
    let summary = Summary::of(args, plan, logs)?;
    if !args.timeline.is_zero() {
        for line in timeline(plan, logs, args.timeline)? {
            println!("{line}");
        }
    }
    println!("{}", summary.line(args));
    if let Some(path) = &args.json {
        stats::write_json(path, &summary.json(args, setup_s))?;
    }
    if let Some(p) = &summary.books.first_problem {
        eprintln!("first problem: {p}");
    }
    Ok(summary.books.clean())
}

/// The books of a scenario's chat phase as a [`Report`]: `delivery_latency`,
/// `ack_latency`, `send_lag`, `delivery_from_handoff`, `delivered_per_s` and the
/// correctness counters (`lost`, `unacked`, `duplicated`, `reordered`, `gaps`,
/// `ended_early`, …).
pub fn to_report(
    plan: &Plan,
    logs: &[MemberLog],
    room_size: usize,
    prefix: &str,
) -> Result<crate::scenario::report::Report, String> {
    let books = Books::of(logs, room_size);
    let mut r = crate::scenario::report::Report::default();
    let hist = |pick: fn(&MemberLog) -> &[u64]| -> Result<Histogram<u64>, String> {
        let mut h: Histogram<u64> = stats::histogram()?;
        for us in logs.iter().flat_map(|l| pick(l).iter()) {
            stats::record(&mut h, *us);
        }
        Ok(h)
    };
    r.add_histogram(&format!("{prefix}delivery_latency"), &hist(|l| &l.delivery_us)?)?;
    r.add_histogram(&format!("{prefix}ack_latency"), &hist(|l| &l.ack_us)?)?;
    r.add_histogram(&format!("{prefix}send_lag"), &hist(|l| &l.lag_us)?)?;
    r.add_histogram(&format!("{prefix}delivery_from_handoff"), &hist(|l| &l.wire_us)?)?;
    let window = books.last_delivery.map_or(0.0, |t| (t - plan.start).as_secs_f64());
    let per_s = if window > 0.0 { books.delivered as f64 / window } else { 0.0 };
    r.set(&format!("{prefix}delivered_per_s"), per_s);
    let offered = plan.senders as f64 * 1e9 / plan.period_ns.max(1) as f64;
    r.set(&format!("{prefix}offered_sends_per_s"), offered);
    for (name, n) in [
        ("sent", books.sent),
        ("acked", books.acked),
        ("delivered", books.delivered),
        ("expected_deliveries", books.expected),
        ("lost", books.lost),
        ("unacked", books.unacked),
        ("duplicated", books.duplicated),
        ("reordered", books.reordered),
        ("gaps", books.gaps),
        ("error_frames", books.errors),
        ("unexpected", books.unexpected),
        ("ended_early", books.ended),
    ] {
        r.count(&format!("{prefix}{name}"), n);
    }
    if let Some(p) = &books.first_problem {
        r.note(&format!("{prefix}first_problem"), p.clone());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(user: &str, sent: u64, acked: &[bool], got: &[bool]) -> MemberLog {
        let mut l = MemberLog::new(user.into(), 0);
        l.sent = sent;
        l.acked = acked.to_vec();
        l.got = vec![got.to_vec()];
        l
    }

    #[test]
    fn lost_means_acked_but_never_delivered() {
        // A sent 3 (acked 0 and 2); B received only 0. B sent 1, unacked, delivered.
        let a = log("a", 3, &[true, false, true], &[true]);
        let b = log("b", 1, &[false], &[true]);
        let books = Books::of(&[a, b], 2);
        assert_eq!((books.sent, books.acked, books.delivered), (4, 2, 2));
        assert_eq!((books.lost, books.unacked), (1, 2));
        assert!(!books.clean());
    }
}
