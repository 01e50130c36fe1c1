//! The pure part of a capacity search: given the steps so far, which value to
//! try next, or why to stop. Step up by `factor` while steps hold; after the
//! first failure, bisect between the highest value that held and the lowest
//! above it that failed, until they are within `resolution` of each other.

/// How the search moves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    pub start: f64,
    pub factor: f64,
    /// Stop when (first failed − held) / held ≤ this.
    pub resolution: f64,
    /// The parameter takes whole numbers (e.g. a count of rooms).
    pub integer: bool,
}

/// Which part of the search a step belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Step,
    Bisect,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Step => "step",
            Phase::Bisect => "bisect",
        }
    }
}

/// What the search decides.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    Try(f64, Phase),
    Done(String),
}

/// The highest value that held, and the lowest value above it that failed.
pub fn bracket(history: &[(f64, bool)]) -> (Option<f64>, Option<f64>) {
    let held = history.iter().filter(|(_, pass)| *pass).map(|(v, _)| *v).reduce(f64::max);
    let failed = history
        .iter()
        .filter(|(v, pass)| !*pass && held.is_none_or(|h| *v > h))
        .map(|(v, _)| *v)
        .reduce(f64::min);
    (held, failed)
}

/// `v` rounded to three significant digits (whole numbers for integers).
fn round(v: f64, integer: bool) -> f64 {
    if integer {
        return v.round();
    }
    if v <= 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(2 - v.log10().floor() as i32);
    (v * scale).round() / scale
}

/// The next value to try after `history` (value, held), in the order tried.
pub fn next(plan: &Plan, history: &[(f64, bool)]) -> Next {
    if history.is_empty() {
        let start = if plan.integer { plan.start.round().max(1.0) } else { plan.start };
        return Next::Try(start, Phase::Step);
    }
    match bracket(history) {
        (None, _) => Next::Done("the start value already fails".into()),
        (Some(held), None) => {
            let mut up = round(held * plan.factor, plan.integer);
            if up <= held {
                up = held + 1.0;
            }
            Next::Try(up, Phase::Step)
        }
        (Some(held), Some(failed)) => {
            if (failed - held) / held <= plan.resolution || (plan.integer && failed - held <= 1.0) {
                return Next::Done(format!(
                    "bracketed within the resolution of {}",
                    plan.resolution
                ));
            }
            let mid = (held + failed) / 2.0;
            let rounded = round(mid, plan.integer);
            let value = if rounded > held && rounded < failed { rounded } else { mid };
            Next::Try(value, Phase::Bisect)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: Plan = Plan { start: 10.0, factor: 2.0, resolution: 0.1, integer: false };

    /// Run the search against a server that holds up to `limit`.
    fn search(plan: &Plan, limit: f64, max_steps: usize) -> (Vec<(f64, bool)>, Next) {
        let mut history = Vec::new();
        loop {
            let n = next(plan, &history);
            match n {
                Next::Try(v, _) if history.len() < max_steps => history.push((v, v <= limit)),
                other => return (history, other),
            }
        }
    }

    #[test]
    fn steps_up_then_bisects_to_the_resolution() {
        let (h, done) = search(&PLAN, 55.0, 50);
        let values: Vec<f64> = h.iter().map(|s| s.0).collect();
        assert_eq!(&values[..4], &[10.0, 20.0, 40.0, 80.0]);
        assert_eq!(values[4], 60.0);
        assert!(matches!(done, Next::Done(_)));
        let (held, failed) = bracket(&h);
        let (held, failed) = (held.expect("held"), failed.expect("failed"));
        assert!(held <= 55.0 && failed > 55.0, "{held} {failed}");
        assert!((failed - held) / held <= 0.1);
    }

    #[test]
    fn phases_and_a_failing_start() {
        assert_eq!(next(&PLAN, &[]), Next::Try(10.0, Phase::Step));
        assert_eq!(next(&PLAN, &[(10.0, true)]), Next::Try(20.0, Phase::Step));
        assert_eq!(next(&PLAN, &[(10.0, true), (20.0, false)]), Next::Try(15.0, Phase::Bisect));
        let Next::Done(why) = next(&PLAN, &[(10.0, false)]) else { panic!("must stop") };
        assert!(why.contains("start"));
    }

    #[test]
    fn the_step_bound_stops_it_and_noise_is_tolerated() {
        let (h, _) = search(&PLAN, 1e9, 3);
        assert_eq!(h.len(), 3);
        // A failure below a later pass (noise) does not bracket anything.
        assert_eq!(bracket(&[(10.0, true), (20.0, false), (15.0, true)]), (Some(15.0), Some(20.0)));
        assert_eq!(bracket(&[(10.0, false), (5.0, true)]), (Some(5.0), Some(10.0)));
        assert_eq!(bracket(&[(10.0, true), (8.0, false)]), (Some(10.0), None));
    }

    #[test]
    fn whole_numbers_stay_whole() {
        let plan = Plan { start: 3.0, factor: 1.5, resolution: 0.01, integer: true };
        let (h, done) = search(&plan, 17.0, 50);
        assert!(h.iter().all(|(v, _)| v.fract() == 0.0), "{h:?}");
        assert!(matches!(done, Next::Done(_)));
        assert_eq!(bracket(&h), (Some(17.0), Some(18.0)));
        assert_eq!(round(1234.5, false), 1230.0);
        assert_eq!(round(0.012_34, false), 0.0123);
    }
}
