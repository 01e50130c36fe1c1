//! Latency histograms (microsecond resolution) and the JSON report file.

use std::time::Duration;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
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

/// A histogram as base64 of its HDR V2 encoding: exact, so that reports and
/// timelines from several processes or machines merge without loss.
pub fn encode_histogram(h: &Histogram<u64>) -> Result<String, String> {
    let mut bytes = Vec::new();
    V2Serializer::new().serialize(h, &mut bytes).map_err(|e| format!("histogram: {e:?}"))?;
    Ok(base64_encode(&bytes))
}

pub fn decode_histogram(b64: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64_decode(b64).ok_or("histogram not base64")?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| format!("histogram: {e:?}"))
}

fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for n in 0..10u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(base64_decode(&base64_encode(&bytes)).expect("decode"), bytes);
        }
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE=");
    }
}
