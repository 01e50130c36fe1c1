//! When a node asks append.lua to renew a room's duplicate-send records.
//!
//! The records (`sent` and `sentids`) must live at least one dedup window past the
//! room's last record. A renewal sets their lifetime to 1.5 windows, so a node that
//! renewed a room's records less than half a window ago need not renew them on its
//! next send there: they still have more than a window left. Each node keeps, per
//! room, when its last renewal was confirmed (the script answered a stored message,
//! having renewed); a send asks for a renewal when there is none, or it is older
//! than half a window. Nodes decide alone: whichever node sends, its own last
//! renewal covers its record. A renewal is noted only once Redis confirmed it, so a
//! failed send never leaves a room marked as renewed.
//!
//! This replaces reading meta `srenew` on every send (a command per message).
//! Nodes of the previous version still decide by `srenew`, which only they write;
//! either rule alone keeps the records alive, so a mixed cluster does too.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The rooms this node renewed records of, and when (pure: the caller passes the
/// time and `half`, half the dedup window).
#[derive(Debug, Default)]
pub struct Renewals {
    last: HashMap<String, Instant>,
}

/// Half of a dedup window of `window_ms`: how long a renewal holds.
pub fn half_window(window_ms: u64) -> Duration {
    Duration::from_millis(window_ms.max(1) / 2)
}

impl Renewals {
    /// Whether a send into `room` at `now` must renew the room's records.
    pub fn due(&self, room: &str, now: Instant, half: Duration) -> bool {
        self.last.get(room).is_none_or(|t| now.saturating_duration_since(*t) >= half)
    }

    /// The store confirmed a renewal asked for at `asked` (the time `due` was
    /// asked, so the renewal is never taken for later than it was).
    pub fn renewed(&mut self, room: &str, asked: Instant) {
        match self.last.get_mut(room) {
            Some(t) => *t = (*t).max(asked),
            None => {
                self.last.insert(room.to_owned(), asked);
            }
        }
    }

    /// Forget the rooms whose last renewal is half a window old or more (their next
    /// send renews anyway), so the map holds only rooms sent to lately.
    pub fn prune(&mut self, now: Instant, half: Duration) {
        self.last.retain(|_, t| now.saturating_duration_since(*t) < half);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF: Duration = Duration::from_millis(5_000);

    #[test]
    fn a_room_never_renewed_is_due() {
        let r = Renewals::default();
        assert!(r.due("a", Instant::now(), HALF));
    }

    #[test]
    fn a_renewal_holds_for_half_a_window() {
        let mut r = Renewals::default();
        let t0 = Instant::now();
        r.renewed("a", t0);
        assert!(!r.due("a", t0, HALF));
        assert!(!r.due("a", t0 + Duration::from_millis(4_999), HALF));
        assert!(r.due("a", t0 + Duration::from_millis(5_000), HALF), "half a window later");
        assert!(r.due("b", t0, HALF), "another room");
    }

    #[test]
    fn a_late_confirmation_never_moves_the_renewal_back() {
        let mut r = Renewals::default();
        let t0 = Instant::now();
        r.renewed("a", t0 + Duration::from_millis(3_000));
        // An earlier send's confirmation arrives after a later one's.
        r.renewed("a", t0);
        assert!(!r.due("a", t0 + Duration::from_millis(7_999), HALF));
        assert!(r.due("a", t0 + Duration::from_millis(8_000), HALF));
    }

    #[test]
    fn pruning_keeps_only_rooms_renewed_within_half_a_window() {
        let mut r = Renewals::default();
        let t0 = Instant::now();
        r.renewed("old", t0);
        r.renewed("new", t0 + Duration::from_millis(4_000));
        r.prune(t0 + Duration::from_millis(5_000), HALF);
        assert_eq!(r.last.len(), 1);
        assert!(r.due("old", t0 + Duration::from_millis(5_000), HALF));
        assert!(!r.due("new", t0 + Duration::from_millis(5_000), HALF));
        r.prune(t0 + Duration::from_millis(20_000), HALF);
        assert!(r.last.is_empty());
    }
}
