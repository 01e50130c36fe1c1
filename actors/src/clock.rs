//! Wall clock next to the monotonic one. Nodes agree on wall-clock times (search
//! start and deadline, message `ts`); each process measures waits with `Instant`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The wall-clock time of a past or future `Instant`.
pub fn instant_to_ms(at: Instant) -> u64 {
    let now = Instant::now();
    let wall = now_ms();
    if at <= now {
        wall.saturating_sub(now.duration_since(at).as_millis() as u64)
    } else {
        wall + at.duration_since(now).as_millis() as u64
    }
}

/// The `Instant` of a wall-clock time (clamped to what `Instant` can hold).
pub fn ms_to_instant(ms: u64) -> Instant {
    let now = Instant::now();
    let wall = now_ms();
    if ms <= wall {
        now.checked_sub(Duration::from_millis(wall - ms)).unwrap_or(now)
    } else {
        now + Duration::from_millis(ms - wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_within_a_millisecond_or_two() {
        let past = Instant::now() - Duration::from_millis(1_500);
        let ms = instant_to_ms(past);
        let back = ms_to_instant(ms);
        let diff = if back > past { back - past } else { past - back };
        assert!(diff < Duration::from_millis(3), "{diff:?}");
    }
}
