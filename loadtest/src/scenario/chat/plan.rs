//! When every send of a chat run is due, and the thread that wakes senders on time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::stats;

/// When the phases of the run happen, shared by every member.
#[derive(Clone, Copy)]
pub struct Plan {
    /// Monotonic origin of the timestamps carried in texts.
    pub base: Instant,
    /// First scheduled send (of the member with offset 0).
    pub start: Instant,
    /// No send is scheduled at or after this.
    pub end: Instant,
    /// Members stop reading here.
    pub drain_until: Instant,
    pub period_ns: u64,
    pub senders: u64,
    pub text_bytes: usize,
}

impl Plan {
    /// Scheduled time of send `k` of sender number `idx`.
    pub fn due(&self, idx: u64, k: u64) -> Instant {
        let offset = self.period_ns.saturating_mul(idx) / self.senders.max(1);
        self.start + Duration::from_nanos(offset.saturating_add(k.saturating_mul(self.period_ns)))
    }

    /// `k.scheduled_us.handed_us.` then padding; both times are µs since `base`.
    pub fn text(&self, k: u64, due: Instant, now: Instant) -> String {
        let (due_us, now_us) = (stats::micros(due - self.base), stats::micros(now - self.base));
        let mut text = format!("{k}.{due_us}.{now_us}.");
        let pad = self.text_bytes.saturating_sub(text.len());
        text.extend(std::iter::repeat_n('x', pad));
        text
    }
}

/// Wakes each sender at its scheduled times from a thread of its own.
///
/// Tokio timers have 1 ms resolution and fire on average about 1 ms late, which
/// would dominate sub-millisecond latencies measured from the scheduled time; a
/// sleeping OS thread wakes within tens of microseconds. All senders together
/// form one evenly spaced sequence (slot j is sender `j % senders`, send
/// `j / senders`), so the thread walks it in order, waking at most every
/// [`MIN_TICK`]. A wake-up a sender misses while busy is not lost: the sender
/// sends everything due whenever it runs.
pub struct Metronome;

/// Shortest sleep of the metronome: at high rates it wakes every sender due by
/// then at once instead of sleeping between each pair of sends. One sleep and one
/// cross-thread wake-up per send cost the load generator about a tenth of a core
/// at 20,000 sends/s; a send held back by this is up to 200 µs late, which
/// `send_lag` and every latency measured from the scheduled time include.
const MIN_TICK: Duration = Duration::from_micros(200);

impl Metronome {
    pub fn start(plan: Plan, senders: Vec<Arc<Notify>>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let m = senders.len().max(1) as u64;
            let slot = |j: u64| (j % m, j / m);
            let mut j = 0u64;
            loop {
                let now = Instant::now();
                loop {
                    let (idx, k) = slot(j);
                    let due = plan.due(idx, k);
                    if due >= plan.end {
                        return;
                    }
                    if due > now {
                        break;
                    }
                    if let Some(n) = senders.get(idx as usize) {
                        n.notify_one();
                    }
                    j += 1;
                }
                let (idx, k) = slot(j);
                let wake = plan.due(idx, k).max(now + MIN_TICK);
                std::thread::sleep(wake.saturating_duration_since(Instant::now()));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metronome_sequence_is_in_time_order() {
        let base = Instant::now();
        let end = base + Duration::from_secs(1);
        let plan = Plan {
            base,
            start: base,
            end,
            drain_until: end,
            period_ns: 1_000_000_000 / 7,
            senders: 5,
            text_bytes: 0,
        };
        let slots: Vec<Instant> = (0..50).map(|j| plan.due(j % 5, j / 5)).collect();
        assert!(slots.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(plan.due(0, 1) - plan.due(0, 0), Duration::from_nanos(plan.period_ns));
    }
}
