//! The per-user byte budget of actions that make the node copy bytes: `block`,
//! `signal`, `read`, `typing`, `join`/`leave` and `history`. Counting requests
//! alone lets one request cost a thousand times another (a 16 KiB signal to a
//! full room, a page of 200 long messages), so each action is charged what it
//! costs in bytes: a base plus its payload times its recipients ([`cost`]).
//!
//! [`CostBudget`] is the pure core: a token bucket in bytes that may go into debt
//! (costs only known after the fact, like a `history` page, are charged then, and
//! the next request waits until the debt is paid). Time is an argument. [`Budget`]
//! is the shared handle sessions and rooms hold; it owns no policy. `send` keeps
//! its own limiter (messages are stored and counted apart).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What each action costs, in bytes the node copies or keeps.
pub mod cost {
    /// Base of every budgeted action: parsing, routing, the answer frame.
    pub const ACTION: u64 = 256;
    /// Envelope of one relayed frame (type, room, user ids) per recipient, on top of
    /// its payload.
    pub const FRAME: u64 = 128;
    /// A `block`: stored for days (and, in a cluster, copied to every node).
    pub const BLOCK: u64 = 16 * 1024;
    /// Base of a `join` or `leave` (membership bookkeeping, the answer frame); the
    /// room adds [`FRAME`] per member it tells.
    pub const ROOM_CHANGE: u64 = 1024;
    /// Base of a `history` request; the room adds the bytes of the page it returns.
    pub const HISTORY: u64 = 1024;

    /// A relayed event (`typing`, `read`, `signal`) with `payload` bytes, delivered
    /// to `recipients` members.
    pub fn relay(payload: u64, recipients: u64) -> u64 {
        ACTION + (payload + FRAME) * recipients
    }
}

/// A token bucket of bytes: refills at `rate` per second up to `burst`. An action
/// is admitted when the balance covers its cost (or the whole burst, for costs
/// larger than it); charges made after the fact may take the balance below zero.
#[derive(Debug, Clone)]
pub struct CostBudget {
    rate: f64,
    burst: f64,
    balance: f64,
    last: Instant,
}

impl CostBudget {
    /// A full budget of `burst` bytes refilling at `rate_per_second`.
    pub fn new(rate_per_second: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1) as f64;
        Self { rate: rate_per_second.max(1) as f64, burst, balance: burst, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.balance = (self.balance + dt * self.rate).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Admit and charge an action costing `cost` bytes, or say how long to wait
    /// until the balance covers it.
    pub fn try_charge(&mut self, cost: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let need = (cost as f64).min(self.burst);
        if self.balance >= need {
            self.balance -= cost as f64;
            return Ok(());
        }
        Err(Duration::from_secs_f64((need - self.balance) / self.rate))
    }

    /// Charge bytes already spent; the balance may go below zero (a debt the next
    /// requests wait for).
    pub fn charge(&mut self, cost: u64, now: Instant) {
        self.refill(now);
        self.balance -= cost as f64;
    }

    /// True when the budget is back to its full burst (nothing to remember).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.balance >= self.burst
    }

    /// Bytes available now (negative: in debt).
    pub fn balance(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.balance
    }
}

/// A user's [`CostBudget`], shared by their sessions and by the rooms that charge
/// fan-out after the fact. A `std` mutex: held for a few arithmetic operations,
/// never across an await, and uncontended but for one user's own frames.
#[derive(Debug, Clone)]
pub struct Budget(Arc<Mutex<CostBudget>>);

impl Budget {
    pub fn new(rate_per_second: u64, burst: u64) -> Self {
        Self(Arc::new(Mutex::new(CostBudget::new(rate_per_second, burst, Instant::now()))))
    }

    fn with<R>(&self, f: impl FnOnce(&mut CostBudget) -> R) -> R {
        // A panic elsewhere while locked leaves plain numbers behind: still usable.
        let mut b = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut b)
    }

    /// [`CostBudget::try_charge`] now.
    pub fn try_charge(&self, cost: u64) -> Result<(), Duration> {
        self.with(|b| b.try_charge(cost, Instant::now()))
    }

    /// [`CostBudget::charge`] now.
    pub fn charge(&self, cost: u64) {
        if cost > 0 {
            self.with(|b| b.charge(cost, Instant::now()));
        }
    }

    /// Whether anyone but the owning map holds this budget, or it still remembers
    /// a spend; otherwise it can be forgotten.
    pub fn in_use(&self) -> bool {
        Arc::strong_count(&self.0) > 1 || !self.with(|b| b.is_full(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = CostBudget::new(256 * KIB, 1024 * KIB, t0);
        for _ in 0..64 {
            b.try_charge(16 * KIB, t0).expect("the burst covers 64 x 16 KiB");
        }
        let wait = b.try_charge(16 * KIB, t0).expect_err("burst spent");
        assert_eq!(wait, Duration::from_micros(62_500), "16 KiB at 256 KiB/s");
        let later = t0 + Duration::from_millis(63);
        b.try_charge(16 * KIB, later).expect("refilled");
        assert!(b.try_charge(16 * KIB, later).is_err());
    }

    #[test]
    fn a_debt_makes_the_next_request_wait() {
        let t0 = Instant::now();
        let mut b = CostBudget::new(100 * KIB, 100 * KIB, t0);
        b.try_charge(cost::HISTORY, t0).expect("admitted");
        // The page turned out to be large: charged after the fact.
        b.charge(300 * KIB, t0);
        assert!(b.balance(t0) < 0.0);
        let wait = b.try_charge(cost::HISTORY, t0).expect_err("in debt");
        assert!(wait > Duration::from_secs(2), "the debt of ~201 KiB takes ~2 s: {wait:?}");
        assert!(b.try_charge(cost::HISTORY, t0 + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn a_cost_above_the_burst_needs_a_full_budget_not_the_impossible() {
        let t0 = Instant::now();
        let mut b = CostBudget::new(KIB, 10 * KIB, t0);
        b.try_charge(50 * KIB, t0).expect("a full budget admits it, going into debt");
        assert!(b.try_charge(1, t0 + Duration::from_secs(5)).is_err(), "35 KiB of debt left");
    }

    #[test]
    fn refill_stops_at_the_burst_and_time_never_runs_backwards() {
        let t0 = Instant::now();
        let mut b = CostBudget::new(KIB, 4 * KIB, t0);
        assert!(b.is_full(t0 + Duration::from_secs(3600)));
        let t1 = t0 + Duration::from_secs(3600);
        b.try_charge(4 * KIB, t1).expect("full burst");
        // An earlier instant (another thread's `now`) adds nothing.
        assert!(b.try_charge(KIB, t0).is_err());
        assert!(!b.is_full(t1));
    }

    /// What the protocol's legitimate use costs fits the defaults many times over.
    #[test]
    fn legitimate_use_fits_the_default_budget() {
        let t0 = Instant::now();
        let mut b = CostBudget::new(256 * KIB, 1024 * KIB, t0);
        // A WebRTC offer and answer (~5 KB each) and 20 ICE candidates to one partner.
        for _ in 0..2 {
            b.try_charge(cost::relay(5_000, 1), t0).expect("offer/answer");
        }
        for _ in 0..20 {
            b.try_charge(cost::relay(300, 1), t0).expect("candidate");
        }
        // A history page of 50 messages of 200 bytes on reconnect, in 5 rooms.
        for _ in 0..5 {
            b.try_charge(cost::HISTORY, t0).expect("history");
            b.charge(50 * 300, t0);
        }
        // Typing every 2 s in a room of 8 and reads: nothing next to the refill.
        b.try_charge(cost::relay(0, 7), t0).expect("typing");
        assert!(b.balance(t0) > 800.0 * KIB as f64, "{}", b.balance(t0));
    }
}
