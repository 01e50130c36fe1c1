//! When each work item of an open-loop run is due: a rate that is constant, or
//! changes by stages (`[[stages]]` in a scenario file), mapped to the offset of
//! item `i` from the start of the load.
//!
//! The cumulative count `N(t)` of items offered by time `t` is the integral of
//! the rate; item `i` is due at the `t` where `N(t) = i` (item 0 at 0). Within a
//! constant stage `N` grows linearly; within a ramp (linear rate from `r0` to
//! `r1` over `s` seconds) it is quadratic, `N(τ) = r0 τ + (r1 - r0) τ² / 2s`, and
//! the offset is its positive root. Pure and unit-tested.

use serde::Deserialize;

/// One stage of a scenario's load: `rate` per second for `secs`, constant, or
/// with `ramp` rising (or falling) linearly from the previous stage's end rate
/// (0 for the first stage) to `rate`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub rate: f64,
    pub secs: f64,
    #[serde(default)]
    pub ramp: bool,
}

/// A stage with its start and the count offered before it.
#[derive(Clone, Debug, PartialEq)]
struct Span {
    t0: f64,
    secs: f64,
    /// Rate at the start and at the end of the stage.
    r0: f64,
    r1: f64,
    /// Items offered before the stage (`N(t0)`).
    n0: f64,
}

impl Span {
    /// Items offered within the stage.
    fn count(&self) -> f64 {
        (self.r0 + self.r1) / 2.0 * self.secs
    }
}

/// The whole load's rate over time.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    spans: Vec<Span>,
}

/// Check stages as written in a file: finite, non-negative rates, positive
/// lengths, something offered.
pub fn validate(stages: &[Stage]) -> Result<(), String> {
    if stages.is_empty() {
        return Err("[[stages]] is empty".into());
    }
    for (k, s) in stages.iter().enumerate() {
        let n = k + 1;
        if !(s.secs.is_finite() && s.secs > 0.0) {
            return Err(format!("stage {n}: secs must be a positive number, got {}", s.secs));
        }
        if !(s.rate.is_finite() && s.rate >= 0.0) {
            return Err(format!("stage {n}: rate must be a number ≥ 0, got {}", s.rate));
        }
    }
    if Schedule::staged(stages).total() < 1.0 {
        return Err("[[stages]] offer less than one item in all".into());
    }
    Ok(())
}

impl Schedule {
    /// `rate` per second for `secs`.
    pub fn constant(rate: f64, secs: f64) -> Self {
        Self::staged(&[Stage { rate, secs, ramp: false }])
    }

    /// The stages in order (assumed valid, see [`validate`]).
    pub fn staged(stages: &[Stage]) -> Self {
        let (mut t0, mut n0, mut prev) = (0.0, 0.0, 0.0);
        let mut spans = Vec::with_capacity(stages.len());
        for s in stages {
            let r0 = if s.ramp { prev } else { s.rate };
            let span = Span { t0, secs: s.secs, r0, r1: s.rate, n0 };
            t0 += s.secs;
            n0 += span.count();
            prev = s.rate;
            spans.push(span);
        }
        Self { spans }
    }

    /// Every rate times `factor` (a worker's share, a sender count).
    pub fn scaled(&self, factor: f64) -> Self {
        let spans = self
            .spans
            .iter()
            .map(|s| Span { r0: s.r0 * factor, r1: s.r1 * factor, n0: s.n0 * factor, ..s.clone() })
            .collect();
        Self { spans }
    }

    /// Only the first `secs` seconds (a shorter `--duration-secs`); longer is
    /// kept as it is.
    pub fn truncated(&self, secs: f64) -> Self {
        let mut spans = Vec::new();
        for s in &self.spans {
            if s.t0 >= secs {
                break;
            }
            let mut s = s.clone();
            if s.t0 + s.secs > secs {
                let part = secs - s.t0;
                s.r1 = s.r0 + (s.r1 - s.r0) * part / s.secs;
                s.secs = part;
            }
            spans.push(s);
        }
        Self { spans }
    }

    /// Length of the load in seconds.
    pub fn secs(&self) -> f64 {
        self.spans.last().map_or(0.0, |s| s.t0 + s.secs)
    }

    /// Items offered over the whole load (a real number).
    pub fn total(&self) -> f64 {
        self.spans.last().map_or(0.0, |s| s.n0 + s.count())
    }

    /// Whole items due within the load: those with an offset before its end.
    pub fn count(&self) -> usize {
        // Item i is due before the end when i < total (less a rounding error).
        (self.total() - 1e-6).ceil().max(0.0) as usize
    }

    /// Seconds from the start of the load to when item `i` is due (item 0 at 0,
    /// non-decreasing in `i`). Items past [`Schedule::total`] keep the last
    /// stage's end rate after the end (a driver that rounds its count up gets
    /// them just after), or come at the end if that rate is 0.
    pub fn offset(&self, i: usize) -> f64 {
        let n = i as f64;
        // The stage in which N reaches n: the last with n0 <= n and a positive
        // count (zero-rate stages are skipped over).
        let Some(last) = self.spans.last() else {
            return 0.0;
        };
        let end_n = last.n0 + last.count();
        if n >= end_n {
            let end = last.t0 + last.secs;
            return if last.r1 > 0.0 { end + (n - end_n) / last.r1 } else { end };
        }
        let k = self.spans.partition_point(|s| s.n0 + s.count() <= n);
        let Some(s) = self.spans.get(k) else {
            return last.t0 + last.secs;
        };
        let m = (n - s.n0).max(0.0);
        let a = (s.r1 - s.r0) / (2.0 * s.secs);
        let b = s.r0;
        let tau = if a.abs() < 1e-12 {
            if b > 0.0 {
                m / b
            } else {
                0.0
            }
        } else {
            // The positive root of a τ² + b τ - m = 0, in the form that stays
            // exact when a is small or b is 0.
            let disc = (b * b + 4.0 * a * m).max(0.0);
            let denom = b + disc.sqrt();
            if denom > 0.0 {
                2.0 * m / denom
            } else {
                0.0
            }
        };
        s.t0 + tau.clamp(0.0, s.secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(rate: f64, secs: f64, ramp: bool) -> Stage {
        Stage { rate, secs, ramp }
    }

    /// How many of the first `count` items fall in [t0, t1).
    fn in_window(s: &Schedule, t0: f64, t1: f64) -> usize {
        (0..s.count()).filter(|&i| (t0..t1).contains(&s.offset(i))).count()
    }

    #[test]
    fn a_constant_rate_is_evenly_spaced() {
        let s = Schedule::constant(4.0, 10.0);
        assert_eq!(s.count(), 40);
        assert_eq!(s.secs(), 10.0);
        for i in 0..40 {
            assert!((s.offset(i) - i as f64 / 4.0).abs() < 1e-9, "{i}");
        }
        // Past the end: the last rate goes on (drivers round counts up).
        assert!((s.offset(41) - 10.25).abs() < 1e-9);
        assert_eq!(Schedule::constant(2.5, 1.0).count(), 3);
    }

    #[test]
    fn offsets_never_go_back_across_stages_and_ramps() {
        let s = Schedule::staged(&[
            stage(100.0, 2.0, true),
            stage(100.0, 3.0, false),
            stage(0.0, 1.0, false),
            stage(300.0, 2.0, false),
            stage(50.0, 2.0, true),
        ]);
        let offsets: Vec<f64> = (0..s.count() + 5).map(|i| s.offset(i)).collect();
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "not monotonic");
        assert_eq!(offsets[0], 0.0);
        assert!(offsets.iter().all(|t| t.is_finite()));
        // Nothing is due in the pause (5 s to 6 s).
        assert!(offsets.iter().all(|&t| !(5.0 + 1e-9..6.0 - 1e-9).contains(&t)));
    }

    #[test]
    fn each_stage_offers_its_count() {
        // ramp 0→100 over 2 s: 100; 100/s for 3 s: 300; 300/s for 2 s: 600;
        // ramp 300→50 over 2 s: 350.
        let s = Schedule::staged(&[
            stage(100.0, 2.0, true),
            stage(100.0, 3.0, false),
            stage(300.0, 2.0, false),
            stage(50.0, 2.0, true),
        ]);
        assert!((s.total() - 1350.0).abs() < 1e-9);
        assert_eq!(s.count(), 1350);
        let counts = [
            in_window(&s, 0.0, 2.0),
            in_window(&s, 2.0, 5.0),
            in_window(&s, 5.0, 7.0),
            in_window(&s, 7.0, 9.0),
        ];
        for (got, want) in counts.iter().zip([100, 300, 600, 350]) {
            assert!(got.abs_diff(want) <= 1, "{counts:?}");
        }
        // Within the first ramp the first second holds a quarter (N = 25 t²).
        assert!(in_window(&s, 0.0, 1.0).abs_diff(25) <= 1);
    }

    #[test]
    fn scaling_and_truncating() {
        let s = Schedule::staged(&[stage(10.0, 1.0, false), stage(30.0, 2.0, true)]);
        let half = s.scaled(0.5);
        assert!((half.total() - s.total() / 2.0).abs() < 1e-9);
        assert!((half.offset(5) - s.offset(10)).abs() < 1e-9);
        let cut = s.truncated(2.0);
        assert_eq!(cut.secs(), 2.0);
        // 10 in the first second, then the ramp from 10 to 20 (half way): 15.
        assert!((cut.total() - 25.0).abs() < 1e-9);
        assert_eq!(s.truncated(9.0), s);
    }

    #[test]
    fn bad_stages_are_named() {
        let err = |st: &[Stage]| validate(st).expect_err("must fail");
        assert!(err(&[]).contains("empty"));
        assert!(err(&[stage(1.0, 0.0, false)]).contains("secs"));
        assert!(err(&[stage(1.0, -1.0, false)]).contains("secs"));
        assert!(err(&[stage(f64::NAN, 1.0, false)]).contains("rate"));
        assert!(err(&[stage(-5.0, 1.0, false)]).contains("rate"));
        assert!(err(&[stage(1.0, f64::INFINITY, false)]).contains("secs"));
        assert!(err(&[stage(0.0, 1.0, false)]).contains("less than one"));
        assert!(validate(&[stage(10.0, 1.0, true)]).is_ok());
    }
}
