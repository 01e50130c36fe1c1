//! What a scenario run found: latency histograms, counters and plain values,
//! merged across worker processes, checked against the file's thresholds and
//! printed as a table and a JSON file.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use super::spec::Bound;
use crate::stats::{self, Percentiles};

/// The findings of one run (or one worker's share of it).
#[derive(Default)]
pub struct Report {
    /// Latencies in µs, by name (`match_latency`, `delivery_latency`, …).
    pub histos: BTreeMap<String, Histogram<u64>>,
    /// Counts that add up across workers (`matched`, `errors.connect`, …).
    pub counters: BTreeMap<String, u64>,
    /// Other numbers (rates, memory); across workers rates add up, the rest take
    /// the largest (`elapsed_s`).
    pub values: BTreeMap<String, f64>,
    /// Notes for the reader (first error seen, …), kept from the first worker.
    pub notes: BTreeMap<String, String>,
}

impl Report {
    pub fn record(&mut self, name: &str, us: u64) -> Result<(), String> {
        if !self.histos.contains_key(name) {
            self.histos.insert(name.to_owned(), stats::histogram()?);
        }
        if let Some(h) = self.histos.get_mut(name) {
            stats::record(h, us);
        }
        Ok(())
    }

    /// Make sure histogram `name` exists (so thresholds on it see zero samples
    /// rather than a missing number).
    pub fn declare(&mut self, name: &str) -> Result<(), String> {
        if !self.histos.contains_key(name) {
            self.histos.insert(name.to_owned(), stats::histogram()?);
        }
        Ok(())
    }

    pub fn add_histogram(&mut self, name: &str, h: &Histogram<u64>) -> Result<(), String> {
        self.declare(name)?;
        if let Some(mine) = self.histos.get_mut(name) {
            mine.add(h).map_err(|e| format!("merge {name}: {e:?}"))?;
        }
        Ok(())
    }

    pub fn count(&mut self, name: &str, n: u64) {
        *self.counters.entry(name.to_owned()).or_default() += n;
    }

    pub fn set(&mut self, name: &str, v: f64) {
        self.values.insert(name.to_owned(), v);
    }

    pub fn note(&mut self, name: &str, text: impl Into<String>) {
        self.notes.entry(name.to_owned()).or_insert_with(|| text.into());
    }

    /// Fold `other` in with every name prefixed (`chat.` + `delivery_latency`).
    pub fn merge_prefixed(&mut self, prefix: &str, other: Report) -> Result<(), String> {
        let mut renamed = Report::default();
        for (name, h) in other.histos {
            renamed.histos.insert(format!("{prefix}{name}"), h);
        }
        for (name, n) in other.counters {
            renamed.counters.insert(format!("{prefix}{name}"), n);
        }
        for (name, v) in other.values {
            renamed.values.insert(format!("{prefix}{name}"), v);
        }
        for (name, t) in other.notes {
            renamed.notes.insert(format!("{prefix}{name}"), t);
        }
        self.merge(renamed)
    }

    /// Fold a worker's report into this one.
    pub fn merge(&mut self, other: Report) -> Result<(), String> {
        for (name, h) in &other.histos {
            self.add_histogram(name, h)?;
        }
        for (name, n) in other.counters {
            self.count(&name, n);
        }
        for (name, v) in other.values {
            let mine = self.values.entry(name.clone()).or_insert(0.0);
            *mine = if name.ends_with("_per_s") { *mine + v } else { mine.max(v) };
        }
        for (name, text) in other.notes {
            self.notes.entry(name).or_insert(text);
        }
        Ok(())
    }

    /// `results`: every number by name, latencies as percentile objects.
    pub fn results(&self) -> Value {
        let mut out = Map::new();
        for (name, h) in &self.histos {
            insert_path(&mut out, name, Percentiles::of(h).to_json());
        }
        for (name, n) in &self.counters {
            insert_path(&mut out, name, json!(n));
        }
        for (name, v) in &self.values {
            insert_path(&mut out, name, json!(v));
        }
        for (name, text) in &self.notes {
            insert_path(&mut out, name, json!(text));
        }
        Value::Object(out)
    }

    /// A worker's report for its parent: histograms as base64 HDR (V2 format).
    pub fn to_wire(&self) -> Result<Value, String> {
        let mut histos = Map::new();
        for (name, h) in &self.histos {
            let b64 = stats::encode_histogram(h).map_err(|e| format!("{name}: {e}"))?;
            histos.insert(name.clone(), json!(b64));
        }
        Ok(json!({"histos": histos, "counters": self.counters, "values": self.values,
                  "notes": self.notes}))
    }

    pub fn from_wire(wire: &Value) -> Result<Self, String> {
        let mut report = Report::default();
        let object = |key: &str| wire.get(key).and_then(Value::as_object).cloned();
        for (name, b64) in object("histos").unwrap_or_default() {
            let b64 = b64.as_str().ok_or("histogram not base64")?;
            let h = stats::decode_histogram(b64).map_err(|e| format!("{name}: {e}"))?;
            report.add_histogram(&name, &h)?;
        }
        for (name, n) in object("counters").unwrap_or_default() {
            report.count(&name, n.as_u64().ok_or("counter not a number")?);
        }
        for (name, v) in object("values").unwrap_or_default() {
            report.set(&name, v.as_f64().ok_or("value not a number")?);
        }
        for (name, t) in object("notes").unwrap_or_default() {
            report.note(&name, t.as_str().unwrap_or_default());
        }
        Ok(report)
    }

    /// The summary table: one row per latency, then the counters and values.
    pub fn table(&self) -> String {
        let mut out = String::new();
        // Names as wide as the longest (prefixed names of composite drivers).
        let w = self.histos.keys().map(String::len).max().unwrap_or(0).max(28);
        if !self.histos.is_empty() {
            out.push_str(&format!(
                "{:<w$} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
            ));
            for (name, h) in &self.histos {
                let p = Percentiles::of(h);
                out.push_str(&format!(
                    "{name:<w$} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
                    p.count, p.p50, p.p90, p.p99, p.p999, p.max
                ));
            }
        }
        let w = self.counters.keys().chain(self.values.keys()).map(String::len).max().unwrap_or(0);
        let w = w.max(40);
        for (name, n) in &self.counters {
            out.push_str(&format!("{name:<w$} {n:>12}\n"));
        }
        for (name, v) in &self.values {
            out.push_str(&format!("{name:<w$} {v:>12.2}\n"));
        }
        for (name, t) in &self.notes {
            out.push_str(&format!("{name}: {t}\n"));
        }
        out
    }
}

/// `a.b` → `{"a": {"b": v}}` inside `out`.
fn insert_path(out: &mut Map<String, Value>, path: &str, v: Value) {
    match path.split_once('.') {
        None => {
            out.insert(path.to_owned(), v);
        }
        Some((head, rest)) => {
            let entry = out.entry(head.to_owned()).or_insert_with(|| json!({}));
            if !entry.is_object() {
                *entry = json!({});
            }
            if let Some(inner) = entry.as_object_mut() {
                insert_path(inner, rest, v);
            }
        }
    }
}

/// The number at dotted `path` inside `results`.
pub fn lookup(results: &Value, path: &str) -> Option<f64> {
    let mut at = results;
    for key in path.split('.') {
        at = at.get(key)?;
    }
    at.as_f64()
}

/// One threshold's verdict.
pub struct Verdict {
    pub path: String,
    pub bound: Bound,
    pub got: Option<f64>,
    pub pass: bool,
}

pub fn check(results: &Value, thresholds: &BTreeMap<String, Bound>) -> Vec<Verdict> {
    thresholds
        .iter()
        .map(|(path, bound)| {
            let got = lookup(results, path);
            let pass = got.is_some_and(|v| {
                bound.min.is_none_or(|min| v >= min) && bound.max.is_none_or(|max| v <= max)
            });
            Verdict { path: path.clone(), bound: bound.clone(), got, pass }
        })
        .collect()
}

impl Verdict {
    pub fn line(&self) -> String {
        let want = match (self.bound.min, self.bound.max) {
            (Some(min), Some(max)) => format!("in [{min}, {max}]"),
            (Some(min), None) => format!(">= {min}"),
            (None, Some(max)) => format!("<= {max}"),
            (None, None) => "anything".into(),
        };
        let got = self.got.map_or_else(|| "missing".to_owned(), |v| format!("{v}"));
        let mark = if self.pass { "pass" } else { "FAIL" };
        format!("{mark}  {} = {got} (want {want})", self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_merge_and_survive_the_wire() {
        let mut a = Report::default();
        let mut b = Report::default();
        for us in 1..=1000 {
            a.record("match_latency", us).expect("record");
        }
        b.record("match_latency", 50_000).expect("record");
        a.count("matched", 10);
        b.count("matched", 5);
        b.count("errors.connect", 1);
        a.set("deliveries_per_s", 100.0);
        b.set("deliveries_per_s", 50.0);
        a.set("elapsed_s", 3.0);
        b.set("elapsed_s", 4.0);
        let b = Report::from_wire(&b.to_wire().expect("wire")).expect("from wire");
        a.merge(b).expect("merge");
        let r = a.results();
        assert_eq!(lookup(&r, "matched"), Some(15.0));
        assert_eq!(lookup(&r, "errors.connect"), Some(1.0));
        assert_eq!(lookup(&r, "deliveries_per_s"), Some(150.0));
        assert_eq!(lookup(&r, "elapsed_s"), Some(4.0));
        assert_eq!(lookup(&r, "match_latency.count"), Some(1001.0));
        assert!(lookup(&r, "match_latency.max_ms").expect("max") >= 49.9);
        assert!(a.table().contains("match_latency"));
    }

    #[test]
    fn thresholds_pass_fail_and_miss() {
        let r = json!({"match_latency": {"p99_ms": 1.5}, "double_matches": 0, "matched": 10});
        let t: BTreeMap<String, Bound> = [
            ("match_latency.p99_ms".to_owned(), Bound { min: None, max: Some(2.0) }),
            ("double_matches".to_owned(), Bound { min: None, max: Some(0.0) }),
            ("matched".to_owned(), Bound { min: Some(11.0), max: None }),
            ("nowhere".to_owned(), Bound { min: Some(0.0), max: None }),
        ]
        .into_iter()
        .collect();
        let v = check(&r, &t);
        let passed: Vec<bool> = v.iter().map(|v| v.pass).collect();
        // BTreeMap order: double_matches, match_latency.p99_ms, matched, nowhere.
        assert_eq!(passed, vec![true, true, false, false]);
        assert!(v[3].line().contains("missing"));
    }
}
