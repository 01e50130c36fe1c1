//! When every send of a chat run is due, and the thread that wakes senders on time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::scenario::schedule::Schedule;
use crate::stats;

/// When the phases of the run happen, shared by every member.
#[derive(Clone)]
pub struct Plan {
    /// Monotonic origin of the timestamps carried in texts.
    pub base: Instant,
    /// First scheduled send (of the member with offset 0).
    pub start: Instant,
    /// No send is scheduled at or after this.
    pub end: Instant,
    /// Members stop reading here.
    pub drain_until: Instant,
    /// All senders' sends together, as one sequence of slots from `start`:
    /// slot `j` is send `j / senders` of sender `j % senders` (the schedule of
    /// one member's rate times `senders`).
    pub schedule: Arc<Schedule>,
    pub senders: u64,
    pub text_bytes: usize,
}

impl Plan {
    /// Each of `senders` sending on `per_member` (a schedule of one member's
    /// rate) from `start` to `end`.
    pub fn schedule_of(per_member: &Schedule, senders: u64) -> Arc<Schedule> {
        Arc::new(per_member.scaled(senders.max(1) as f64))
    }

    /// Scheduled time of send `k` of sender number `idx`.
    pub fn due(&self, idx: u64, k: u64) -> Instant {
        let j = k.saturating_mul(self.senders.max(1)).saturating_add(idx);
        self.start + Duration::from_secs_f64(self.schedule.offset(j as usize))
    }

    /// Sends each member is scheduled to make (at most).
    pub fn sends_per_member(&self) -> usize {
        self.schedule.count() / self.senders.max(1) as usize + 1
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
                if wake >= plan.end + MIN_TICK {
                    return;
                }
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
            schedule: Plan::schedule_of(&Schedule::constant(7.0, 1.0), 5),
            senders: 5,
            text_bytes: 0,
        };
        let slots: Vec<Instant> = (0..50).map(|j| plan.due(j % 5, j / 5)).collect();
        assert!(slots.windows(2).all(|w| w[0] <= w[1]));
        let period = (plan.due(0, 1) - plan.due(0, 0)).as_secs_f64();
        assert!((period - 1.0 / 7.0).abs() < 1e-6, "{period}");
        assert_eq!(plan.sends_per_member(), 8);
    }

    #[test]
    fn staged_sends_follow_the_stages_times_the_senders() {
        use crate::scenario::schedule::Stage;
        let base = Instant::now();
        let per_member = Schedule::staged(&[
            Stage { rate: 10.0, secs: 1.0, ramp: false },
            Stage { rate: 40.0, secs: 1.0, ramp: false },
        ]);
        let plan = Plan {
            base,
            start: base,
            end: base + Duration::from_secs(2),
            drain_until: base + Duration::from_secs(2),
            schedule: Plan::schedule_of(&per_member, 4),
            senders: 4,
            text_bytes: 0,
        };
        // 4 senders: 40 sends in the first second, 160 in the second.
        let in_second = |s: u64| {
            (0..4u64)
                .flat_map(|idx| (0..60u64).map(move |k| (idx, k)))
                .map(|(idx, k)| plan.due(idx, k))
                .filter(|&d| d < plan.end)
                .filter(|&d| ((d - base).as_secs_f64() as u64) == s)
                .count()
        };
        assert_eq!((in_second(0), in_second(1)), (40, 160));
    }
}
