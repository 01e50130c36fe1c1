//! Latency histograms (microsecond resolution) and the JSON report file.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Microseconds, 1 µs to 10 min, 3 significant digits.
pub fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| format!("histogram: {e}"))
}

/// A duration as whole microseconds, at least 1 (the histogram's lowest value).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Record a sample, clamping values beyond the histogram's range to its top.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.min(h.high()));
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The usual percentiles in milliseconds.
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            count: h.len(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({"count": self.count, "p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99,
               "p999_ms": self.p999, "max_ms": self.max})
    }
}

/// Write `report` to `path` as pretty JSON.
pub fn write_json(path: &std::path::Path, report: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| format!("report JSON: {e}"))?;
    std::fs::write(path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))
}
