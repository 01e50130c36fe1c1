//! Seeded arrival traces for measuring match quality: users arrive at a fixed
//! rate, each with a language out of a few and a handful of interests out of a
//! fixed list, drawn from a seeded generator (splitmix64, so a seed gives the same
//! trace on every platform and version). The engine's deterministic simulations
//! and the load tester's `match-quality` scenario replay the same traces, so
//! their figures can be compared.
//!
//! With the defaults (4 languages, 3 interests out of 40) two random users share
//! 3 × 3 / 40 = 0.225 interests on average.

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceSpec {
    pub seed: u64,
    /// Arrivals per second (fixed spacing).
    pub rate: f64,
    pub count: usize,
    /// Languages, taken in order from [`LANGUAGES`] (at most its length).
    pub languages: usize,
    pub interests_per_user: usize,
    /// Size of the interest list users draw from.
    pub topics: usize,
}

impl TraceSpec {
    /// The trace: 4 languages, 3 interests out of 40.
    pub fn standard(seed: u64, rate: f64, count: usize) -> Self {
        Self { seed, rate, count, languages: 4, interests_per_user: 3, topics: 40 }
    }
}

/// Language tags used by traces, in order.
pub const LANGUAGES: [&str; 8] = ["en", "es", "de", "fr", "pt", "it", "nl", "pl"];

/// One user of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub index: usize,
    /// Milliseconds after the trace starts.
    pub at_ms: f64,
    pub language: &'static str,
    /// Sorted, distinct.
    pub interests: Vec<String>,
}

/// The trace of `spec`.
pub fn trace(spec: &TraceSpec) -> Vec<Arrival> {
    let mut rng = SplitMix(spec.seed);
    let languages = spec.languages.clamp(1, LANGUAGES.len());
    let per_user = spec.interests_per_user.min(spec.topics);
    (0..spec.count)
        .map(|index| {
            let language = LANGUAGES[rng.below(languages)];
            let mut picked: Vec<usize> = Vec::with_capacity(per_user);
            while picked.len() < per_user {
                let t = rng.below(spec.topics);
                if !picked.contains(&t) {
                    picked.push(t);
                }
            }
            picked.sort_unstable();
            let interests = picked.into_iter().map(|t| format!("topic{t:02}")).collect();
            let at_ms = index as f64 * 1_000.0 / spec.rate;
            Arrival { index, at_ms, language, interests }
        })
        .collect()
}

/// Interests two users share.
pub fn shared(a: &[String], b: &[String]) -> usize {
    a.iter().filter(|i| b.contains(i)).count()
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is negligible for small n).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_shaped_as_asked() {
        let spec = TraceSpec::standard(7, 40.0, 20_000);
        let a = trace(&spec);
        assert_eq!(a, trace(&spec), "same seed, same trace");
        assert_ne!(a, trace(&TraceSpec { seed: 8, ..spec }));
        assert_eq!(a[40].at_ms, 1_000.0);
        assert!(a.iter().all(|u| u.interests.len() == 3));
        // Random pairs share about 0.225 interests.
        let pairs = a.chunks(2).map(|p| shared(&p[0].interests, &p[1].interests) as f64);
        let mean = pairs.sum::<f64>() / (a.len() / 2) as f64;
        assert!((mean - 0.225).abs() < 0.02, "{mean}");
        let en = a.iter().filter(|u| u.language == "en").count() as f64 / a.len() as f64;
        assert!((en - 0.25).abs() < 0.02, "{en}");
    }
}
