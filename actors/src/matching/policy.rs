//! When a waiting search accepts a partner: the matching policy, as plain data.
//!
//! Two policies, chosen by the settings ([`Policy::from_config`]):
//!
//! * [`Policy::Ladder`]: a fixed relaxation ladder (`--ladder`), as before: after
//!   each step's `after_ms` the step's region and shared-interest rules apply.
//! * [`Policy::Target`] (the default): aim at a wait target (`--max-wait-target-ms`)
//!   and, within it, hold out for more shared interests only while it is likely to
//!   pay. For each search the pool knows its *forced time* (a fixed share of the
//!   target after it arrived) and, for each score `k`, the chance `q_k` that one
//!   arrival of its bucket shares at least `k` interests with it (measured on the
//!   bucket's recent arrivals, [`ArrivalStats`]). With the bucket's observed
//!   arrival rate `λ` and `R` left until the forced time, the expected number of
//!   such arrivals is `m = λ · R · q_k`. The search *requires* the largest `k`
//!   whose chance of turning up before the forced time, `P(Poisson(m) ≥ need)`
//!   (`need` = group size − 1), is still at least [`HOLD_ODDS`]; past the forced
//!   time it requires nothing. A pair (or group) forms when every member shares
//!   at least the *least* demanding member's requirement with the searcher, so a
//!   search about to reach its forced time is served by any newcomer.
//!
//! The rule adapts by itself: at a high arrival rate (or in a large pool of
//! similar users) `m` stays large until late, so searches hold out for two or
//! three shared interests; at a low rate the requirement falls to one, then to
//! zero, early, and nobody waits for a partner who is not coming.
//!
//! No clock of its own, no actor: callers pass `now`; unit tests and the
//! deterministic simulations (`super::sim`) drive it on virtual time.

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::config::{EngineConfig, LadderStep};
use crate::ids::Interest;

/// The least chance, of a partner sharing `k` interests turning up before the
/// forced time, for which a search keeps requiring `k` (measured with
/// `super::sim`; see DESIGN.md "Matching" for the alternatives tried).
pub const HOLD_ODDS: f64 = 0.01;
/// The forced time comes this share of the wait target before the target…
pub const FORCE_MARGIN_SHARE: f64 = 0.1;
/// …or this many match ticks before it, whichever is more: the margin covers the
/// tick that notices the forced time, the claim and the delivery of `match_found`.
pub const FORCE_MARGIN_TICKS: u32 = 3;
/// Time constant of the arrival-rate estimate.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Recent arrivals kept per bucket to estimate `q_k`: large enough to see pairs
/// sharing two of three interests out of 40 (about 1 % of pairs) a dozen times.
pub const SAMPLE: usize = 1_024;
/// A search holds out only while at least this many arrivals per partner it
/// needs are still expected before its forced time: in a thinner stream, a
/// partner passed over may find nobody else in time.
pub const HOLD_MIN_ARRIVALS: f64 = 4.0;
/// Weight, in arrivals, of the independent-interests estimate in [`Odds`].
pub const PRIOR_WEIGHT: f64 = 256.0;
/// Interests of one arrival kept in the sample (the protocol's limit is 20).
const SAMPLE_INTERESTS: usize = 20;
/// Largest group size (the protocol's limit).
const MAX_GROUP: usize = 8;

/// How a pool decides when a search accepts a partner.
#[derive(Debug, Clone)]
pub enum Policy {
    /// A fixed relaxation ladder (sorted, the first step at 0).
    Ladder(Vec<LadderStep>),
    /// Aim at a wait target; hold out for shared interests while it pays.
    Target(Target),
}

impl Policy {
    /// The ladder when `--ladder` was given, else the wait-target policy.
    pub fn from_config(c: &EngineConfig) -> Self {
        if c.ladder.is_empty() {
            let tick = Duration::from_millis(c.match_tick_ms);
            Policy::Target(Target::new(Duration::from_millis(c.max_wait_target_ms), tick))
        } else {
            Policy::Ladder(c.ladder.clone())
        }
    }
}

/// The wait-target policy's constants, fixed at start-up.
#[derive(Debug, Clone)]
pub struct Target {
    /// When a search stops requiring anything, after it arrived.
    pub force_after: Duration,
    /// See [`HOLD_MIN_ARRIVALS`].
    pub min_arrivals: f64,
    /// `m_star[need]`: the expected count `m` at which `P(Poisson(m) ≥ need)`
    /// equals [`HOLD_ODDS`] (index 0 unused).
    m_star: [f64; MAX_GROUP],
}

impl Target {
    /// Aim at `target` with the pools looked at every `tick`.
    pub fn new(target: Duration, tick: Duration) -> Self {
        let margin = target.mul_f64(FORCE_MARGIN_SHARE).max(tick * FORCE_MARGIN_TICKS);
        Self::tuned(target.saturating_sub(margin), HOLD_ODDS, HOLD_MIN_ARRIVALS)
    }

    /// With other constants than the defaults (simulations compare them).
    pub fn tuned(force_after: Duration, hold_odds: f64, min_arrivals: f64) -> Self {
        let mut m_star = [0.0; MAX_GROUP];
        for (need, m) in m_star.iter_mut().enumerate().skip(1) {
            *m = solve_m(need, hold_odds);
        }
        Self { force_after, min_arrivals, m_star }
    }

    /// The score a search requires `left` before its forced time, given the
    /// bucket's arrival rate (per second) and the search's odds. `need` is the
    /// number of partners it needs (group size − 1).
    pub fn required(&self, odds: &Odds, rate: f64, left: Duration, need: usize) -> u32 {
        let m_star = self.m_star[need.clamp(1, MAX_GROUP - 1)];
        if rate * self.force_after.as_secs_f64() < self.min_arrivals * need as f64 {
            // Too thin a stream to be choosy: take whoever is there.
            return 0;
        }
        let reach = rate * left.as_secs_f64();
        // q is non-increasing in k: the first k that fails ends the search.
        let mut req = 0;
        for (i, q) in odds.q.iter().enumerate() {
            if reach * f64::from(*q) >= m_star {
                req = i as u32 + 1;
            } else {
                break;
            }
        }
        req
    }

    /// How long before its forced time a search stops requiring `k` (> 0).
    pub fn drops_before_forced(
        &self,
        odds: &Odds,
        rate: f64,
        k: u32,
        need: usize,
    ) -> Option<Duration> {
        let q = f64::from(*odds.q.get((k as usize).checked_sub(1)?)?);
        if q <= 0.0 || rate <= 0.0 {
            return None;
        }
        let secs = self.m_star[need.clamp(1, MAX_GROUP - 1)] / (q * rate);
        Duration::try_from_secs_f64(secs).ok()
    }
}

/// `m` with `P(Poisson(m) ≥ need) = p`, by bisection (the tail grows with `m`).
fn solve_m(need: usize, p: f64) -> f64 {
    let tail = |m: f64| {
        // 1 - P(X < need)
        let mut term = (-m).exp();
        let mut below = 0.0;
        for i in 0..need {
            below += term;
            term *= m / (i as f64 + 1.0);
        }
        1.0 - below
    };
    let (mut lo, mut hi) = (0.0f64, 64.0f64);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if tail(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// A search's chances in its bucket: `q[k-1]` is the share of recent arrivals
/// that listed at least `k` of its interests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Odds {
    pub q: Vec<f32>,
}

/// What a bucket (language, group size) has seen arrive: a bias-corrected
/// exponentially decaying arrival rate and the interests of the latest
/// [`SAMPLE`] arrivals (as hashes: small, and the same on every run).
///
/// The sample is a ring of [`SAMPLE`] slots with an index from each interest to
/// the slots that list it (a bitset), so [`ArrivalStats::odds`] adds up a few
/// bitsets instead of comparing the search with every arrival of the sample.
#[derive(Debug, Clone)]
pub struct ArrivalStats {
    first: Instant,
    last: Instant,
    /// Decayed arrival count as of `last`.
    weight: f64,
    /// The sampled arrivals' interest hashes; slot `next` is overwritten next.
    slots: Vec<Vec<u64>>,
    next: usize,
    /// Interest hash → the slots listing it (never an empty set).
    index: FxHashMap<u64, Box<Slots>>,
}

/// Bit `s` is set when slot `s` of the sample lists the interest.
type Slots = [u64; SAMPLE / 64];
const _: () =
    assert!(SAMPLE.is_multiple_of(64) && SAMPLE_INTERESTS < 32, "whole words; counts fit 5 planes");

impl ArrivalStats {
    pub fn new(now: Instant) -> Self {
        Self {
            first: now,
            last: now,
            weight: 0.0,
            slots: Vec::with_capacity(SAMPLE),
            next: 0,
            index: FxHashMap::default(),
        }
    }

    /// One search arrived with these (sorted, deduplicated) interests.
    pub fn arrive(&mut self, interests: &[Interest], now: Instant) {
        let tau = RATE_WINDOW.as_secs_f64();
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.weight = self.weight * (-dt / tau).exp() + 1.0;
        self.last = self.last.max(now);
        let s = self.next;
        self.next = (s + 1) % SAMPLE;
        let (word, bit) = (s / 64, 1u64 << (s % 64));
        let new = hashes(interests);
        for h in &new {
            self.index.entry(*h).or_insert_with(|| Box::new([0; SAMPLE / 64]))[word] |= bit;
        }
        if s == self.slots.len() {
            self.slots.push(new);
            return;
        }
        let old = std::mem::replace(&mut self.slots[s], new);
        for h in old {
            if self.slots[s].binary_search(&h).is_ok() {
                continue;
            }
            if let Some(set) = self.index.get_mut(&h) {
                set[word] &= !bit;
                if set.iter().all(|w| *w == 0) {
                    self.index.remove(&h);
                }
            }
        }
    }

    /// Arrivals per second, as of `now`.
    pub fn rate(&self, now: Instant) -> f64 {
        let tau = RATE_WINDOW.as_secs_f64();
        let since_last = now.saturating_duration_since(self.last).as_secs_f64();
        // Early on the decayed count has not filled its window yet: divide by the
        // part of the window that has passed (at least one second).
        let seen = now.saturating_duration_since(self.first).as_secs_f64().max(1.0);
        let filled = tau * (1.0 - (-seen / tau).exp());
        self.weight * (-since_last / tau).exp() / filled
    }

    /// When the last search arrived.
    pub fn last(&self) -> Instant {
        self.last
    }

    /// The odds of a search with these interests against the recent arrivals.
    ///
    /// Two estimates, blended: the share of the sample that shares at least `k`
    /// (exact for the sample, but blind to rare events in a small one), and the
    /// same figure computed from how often each interest appears, as if interests
    /// were listed independently (smooth from a few dozen arrivals on). The second
    /// counts as [`PRIOR_WEIGHT`] arrivals, so it leads while the sample is small.
    pub fn odds(&self, interests: &[Interest]) -> Odds {
        let mine = hashes(interests);
        if mine.is_empty() || self.slots.is_empty() {
            return Odds::default();
        }
        // listed[i]: arrivals listing my i-th interest; at_least[k-1]: arrivals
        // listing at least k of mine. The bitsets of my interests are added up
        // slot by slot in bit-sliced counters (plane j holds bit j of each slot's
        // count), then each count's slots are counted.
        let mut listed = vec![0u32; mine.len()];
        let mut sets: Vec<&Slots> = Vec::with_capacity(mine.len());
        for (i, h) in mine.iter().enumerate() {
            if let Some(set) = self.index.get(h) {
                listed[i] = set.iter().map(|w| w.count_ones()).sum();
                sets.push(set);
            }
        }
        let mut at_least = vec![0u32; mine.len()];
        let planes = (usize::BITS - sets.len().leading_zeros()) as usize;
        for w in 0..SAMPLE / 64 {
            let mut p = [0u64; 5];
            for set in &sets {
                let mut carry = set[w];
                for plane in p.iter_mut().take(planes) {
                    let next = *plane & carry;
                    *plane ^= carry;
                    carry = next;
                    if carry == 0 {
                        break;
                    }
                }
            }
            for count in 1..=sets.len() {
                let mut eq = !0u64;
                for (j, plane) in p.iter().enumerate().take(planes) {
                    eq &= if count >> j & 1 == 1 { *plane } else { !*plane };
                }
                let n = eq.count_ones();
                for slot in at_least.iter_mut().take(count) {
                    *slot += n;
                }
            }
        }
        let n = self.slots.len() as f64;
        // P(at least k) when interest i is listed with probability listed[i] / n.
        let mut dist = vec![0.0f64; mine.len() + 1];
        dist[0] = 1.0;
        for (i, c) in listed.iter().enumerate() {
            let p = f64::from(*c) / n;
            for k in (0..=i + 1).rev() {
                let stay = dist[k] * (1.0 - p);
                let up = if k > 0 { dist[k - 1] * p } else { 0.0 };
                dist[k] = stay + up;
            }
        }
        let mut tail = 0.0;
        let mut independent = vec![0.0f64; mine.len()];
        for k in (1..=mine.len()).rev() {
            tail += dist[k];
            independent[k - 1] = tail;
        }
        let q: Vec<f32> = at_least
            .iter()
            .zip(independent)
            .map(|(c, p)| ((f64::from(*c) + PRIOR_WEIGHT * p) / (n + PRIOR_WEIGHT)) as f32)
            .take_while(|q| *q > 1e-6)
            .collect();
        Odds { q }
    }
}

/// Sorted hashes of up to [`SAMPLE_INTERESTS`] interests.
fn hashes(interests: &[Interest]) -> Vec<u64> {
    let mut out: Vec<u64> = interests
        .iter()
        .take(SAMPLE_INTERESTS)
        .map(|i| {
            let mut h = rustc_hash::FxHasher::default();
            i.as_str().hash(&mut h);
            h.finish()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interests(list: &[&str]) -> Vec<Interest> {
        let mut v: Vec<Interest> = list.iter().map(|s| Interest::from(*s)).collect();
        v.sort();
        v
    }

    #[test]
    fn poisson_thresholds() {
        // P(X ≥ 1) = 1 - e^-m = p  ⇒  m = -ln(1 - p)
        let m = solve_m(1, 0.05);
        assert!((m - -(0.95f64).ln()).abs() < 1e-9, "{m}");
        assert!(solve_m(2, 0.05) > m, "two partners need a larger expectation");
    }

    #[test]
    fn odds_count_recent_arrivals_sharing_at_least_k() {
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(t0);
        s.arrive(&interests(&["a", "b", "c"]), t0);
        s.arrive(&interests(&["a", "b", "x"]), t0);
        s.arrive(&interests(&["a", "y", "z"]), t0);
        s.arrive(&interests(&["q", "r", "s"]), t0);
        let o = s.odds(&interests(&["a", "b", "c"]));
        // a: 3/4, b: 2/4, c: 1/4 listed; sample shares: ≥1: 3/4, ≥2: 2/4, ≥3: 1/4.
        let indep = [
            1.0 - 0.25 * 0.5 * 0.75,
            0.75 * 0.5 * 0.75 + 0.75 * 0.5 * 0.25 + 0.25 * 0.5 * 0.25 + 0.75 * 0.5 * 0.25,
            0.75 * 0.5 * 0.25,
        ];
        for (k, (got, sample)) in o.q.iter().zip([0.75, 0.5, 0.25]).enumerate() {
            let want = (4.0 * sample + PRIOR_WEIGHT * indep[k]) / (4.0 + PRIOR_WEIGHT);
            assert!((f64::from(*got) - want).abs() < 1e-5, "k={} {got} vs {want}", k + 1);
        }
        let o = s.odds(&interests(&["m", "n"]));
        assert!(o.q.is_empty(), "nobody shares: nothing to hold out for");
        assert!(s.odds(&[]).q.is_empty());
    }

    /// The indexed sample gives what comparing the search with each of the last
    /// [`SAMPLE`] arrivals gives, also once the ring has wrapped several times.
    #[test]
    fn odds_match_a_plain_scan_of_the_last_arrivals() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(t0);
        let mut plain: std::collections::VecDeque<Vec<u64>> = Default::default();
        let pick = |rng: &mut rand::rngs::StdRng, n: usize, vocab: u32| -> Vec<Interest> {
            let names: Vec<String> =
                (0..n).map(|_| format!("i{}", rng.random_range(0..vocab))).collect();
            interests(&names.iter().map(String::as_str).collect::<Vec<_>>())
        };
        for round in 0..3_000 {
            let vocab = if round < 1_500 { 12 } else { 60 };
            let n = rng.random_range(0..6);
            let arrival = pick(&mut rng, n, vocab);
            s.arrive(&arrival, t0);
            if plain.len() == SAMPLE {
                plain.pop_front();
            }
            plain.push_back(hashes(&arrival));
            if round % 97 != 0 {
                continue;
            }
            let k = rng.random_range(1..21);
            let mine = pick(&mut rng, k, vocab);
            let h = hashes(&mine);
            let mut at_least = vec![0u32; h.len()];
            let mut listed = vec![0u32; h.len()];
            for other in &plain {
                let shared = h.iter().filter(|x| other.contains(x)).count();
                for (i, x) in h.iter().enumerate() {
                    listed[i] += u32::from(other.contains(x));
                }
                for slot in at_least.iter_mut().take(shared) {
                    *slot += 1;
                }
            }
            let got = s.odds(&mine);
            let n = plain.len() as f64;
            let mut dist = vec![0.0f64; h.len() + 1];
            dist[0] = 1.0;
            for (i, c) in listed.iter().enumerate() {
                let p = f64::from(*c) / n;
                for k in (0..=i + 1).rev() {
                    dist[k] = dist[k] * (1.0 - p) + if k > 0 { dist[k - 1] * p } else { 0.0 };
                }
            }
            let want: Vec<f32> = (1..=h.len())
                .map(|k| {
                    let indep: f64 = dist[k..].iter().sum();
                    ((f64::from(at_least[k - 1]) + PRIOR_WEIGHT * indep) / (n + PRIOR_WEIGHT))
                        as f32
                })
                .take_while(|q| *q > 1e-6)
                .collect();
            assert_eq!(got.q.len(), want.len(), "round {round}");
            for (g, w) in got.q.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "round {round}: {:?} vs {want:?}", got.q);
            }
        }
    }

    #[test]
    fn rate_follows_arrivals() {
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(t0);
        for i in 0..600u64 {
            s.arrive(&[], t0 + Duration::from_millis(i * 50));
        }
        let r = s.rate(t0 + Duration::from_secs(30));
        assert!((r - 20.0).abs() < 1.0, "20/s measured as {r}");
        let later = s.rate(t0 + Duration::from_secs(60));
        assert!(later < 2.0, "the rate decays when nobody comes: {later}");
    }

    #[test]
    fn requirement_falls_as_the_forced_time_nears_and_with_the_rate() {
        let p = Target::new(Duration::from_millis(3_000), Duration::from_millis(100));
        assert_eq!(p.force_after, Duration::from_millis(2_700));
        let odds = Odds { q: vec![0.2, 0.01, 0.0001] };
        let left = Duration::from_millis(2_400);
        assert_eq!(p.required(&odds, 100.0, left, 1), 3);
        assert_eq!(p.required(&odds, 10.0, left, 1), 2);
        assert_eq!(p.required(&odds, 1.0, left, 1), 0, "too few arrivals to be choosy");
        assert_eq!(p.required(&odds, 10.0, Duration::from_millis(100), 1), 1);
        assert_eq!(p.required(&odds, 10.0, Duration::ZERO, 1), 0);
        // A group needs several such partners: it holds out less.
        assert!(p.required(&odds, 10.0, left, 4) < 2);
        let before = p.drops_before_forced(&odds, 10.0, 2, 1).expect("drops");
        assert_eq!(p.required(&odds, 10.0, before + Duration::from_millis(1), 1), 2);
        assert_eq!(p.required(&odds, 10.0, before - Duration::from_millis(1), 1), 1);
    }
}
