//! Balancing the books of a chat phase: totals and latency histograms, as a
//! scenario [`Report`].

use std::time::Instant;

use super::member::MemberLog;
use super::plan::Plan;
use crate::scenario::report::Report;
use crate::stats;

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

/// One series of latency samples (µs) a member keeps.
type Series = fn(&MemberLog) -> &[u64];

/// The latency series every member keeps, by their name in the report.
const LATENCIES: [(&str, Series); 4] = [
    ("delivery_latency", |l| &l.delivery_us),
    ("ack_latency", |l| &l.ack_us),
    ("send_lag", |l| &l.lag_us),
    ("delivery_from_handoff", |l| &l.wire_us),
];

/// The books of a scenario's chat phase as a [`Report`]: `delivery_latency`,
/// `ack_latency`, `send_lag`, `delivery_from_handoff`, `delivered_per_s` and the
/// correctness counters (`lost`, `unacked`, `duplicated`, `reordered`, `gaps`,
/// `ended_early`, …).
pub fn to_report(
    plan: &Plan,
    logs: &[MemberLog],
    room_size: usize,
    prefix: &str,
) -> Result<Report, String> {
    let books = Books::of(logs, room_size);
    let mut r = Report::default();
    for (name, series) in LATENCIES {
        let mut h = stats::histogram()?;
        for us in logs.iter().flat_map(series) {
            stats::record(&mut h, *us);
        }
        r.add_histogram(&format!("{prefix}{name}"), &h)?;
    }
    let window = books.last_delivery.map_or(0.0, |t| (t - plan.start).as_secs_f64());
    let per_s = if window > 0.0 { books.delivered as f64 / window } else { 0.0 };
    r.set(&format!("{prefix}delivered_per_s"), per_s);
    let offered = plan.schedule.total() / plan.schedule.secs().max(1e-9);
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
    }
}
