//! Mode `merge`: results of one scenario run in parts (`run --worker K/N` on
//! several machines, or separate runs) joined into one result, as if one
//! process had run it all: the latency histograms are merged exactly (from the
//! results' `"raw"` HDR histograms), counters add up, rates add up, and the
//! timelines merge second by second. The thresholds are checked again on the
//! merged numbers, with the bounds the inputs state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::report::{self, Report};
use super::spec::Bound;
use super::{read_result, timeline};

/// What `merge` was asked on the command line.
pub struct MergeArgs {
    pub inputs: Vec<PathBuf>,
    pub output: Option<PathBuf>,
    pub label: Option<String>,
}

/// The inputs merged into one result document, and the merged report (for the
/// table).
pub fn merge_docs(
    docs: &[(PathBuf, Value)],
    label: Option<&str>,
) -> Result<(Value, Report, Vec<report::Verdict>), String> {
    let (first_path, first) = docs.first().ok_or("merge needs at least one result")?;
    let name = |d: &Value| d.get("scenario").and_then(Value::as_str).map(str::to_owned);
    let scenario =
        name(first).ok_or_else(|| format!("{}: no \"scenario\"", first_path.display()))?;
    let mut merged = Report::default();
    let mut thresholds: BTreeMap<String, Bound> = BTreeMap::new();
    let mut timelines = Vec::new();
    let (mut hosts, mut urls): (Vec<String>, Vec<Value>) = (Vec::new(), Vec::new());
    let (mut workers, mut duration, mut started) = (0u64, 0.0f64, f64::INFINITY);
    for (path, doc) in docs {
        let other = name(doc).ok_or_else(|| format!("{}: no \"scenario\"", path.display()))?;
        if other != scenario {
            return Err(format!(
                "{} is of scenario {other}, {} of {scenario}: merge joins parts of one scenario",
                path.display(),
                first_path.display()
            ));
        }
        let raw = doc.get("raw").ok_or_else(|| {
            format!("{}: no \"raw\" report (written by an older load tester?)", path.display())
        })?;
        merged.merge(Report::from_wire(raw).map_err(|e| format!("{}: {e}", path.display()))?)?;
        for t in doc.get("thresholds").and_then(Value::as_array).into_iter().flatten() {
            let Some(p) = t.get("path").and_then(Value::as_str) else { continue };
            let bound = Bound {
                min: t.get("min").and_then(Value::as_f64),
                max: t.get("max").and_then(Value::as_f64),
            };
            thresholds.entry(p.to_owned()).or_insert(bound);
        }
        if let Some(t) = doc.get("timeline") {
            timelines.push(t);
        }
        if let Some(h) = doc.get("host").and_then(Value::as_str) {
            if !hosts.iter().any(|x| x == h) {
                hosts.push(h.to_owned());
            }
        }
        for u in doc.get("urls").and_then(Value::as_array).into_iter().flatten() {
            if !urls.contains(u) {
                urls.push(u.clone());
            }
        }
        workers += doc.get("workers").and_then(Value::as_u64).unwrap_or(1);
        duration = duration.max(doc.get("duration_s").and_then(Value::as_f64).unwrap_or(0.0));
        started =
            started.min(doc.get("started_unix").and_then(Value::as_f64).unwrap_or(f64::INFINITY));
    }
    let results = merged.results();
    let verdicts = report::check(&results, &thresholds);
    let pass = verdicts.iter().all(|v| v.pass);
    let label = label
        .map(str::to_owned)
        .or_else(|| first.get("label").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| scenario.clone());
    let inputs: Vec<String> = docs.iter().map(|(p, _)| p.display().to_string()).collect();
    let mut doc = json!({"format": 2, "scenario": scenario, "label": label,
        "kind": first.get("kind"), "description": first.get("description"),
        "host": hosts.join(","), "started_unix": if started.is_finite() { json!(started) } else { Value::Null },
        "smoke": first.get("smoke"), "urls": urls, "workers": workers, "duration_s": duration,
        "results": results, "thresholds": super::thresholds_json(&verdicts), "pass": pass,
        "timeline": timeline::merge(&timelines)?, "raw": merged.to_wire()?,
        "merged_from": inputs});
    if let Some(stages) = first.get("stages") {
        doc["stages"] = stages.clone();
    }
    Ok((doc, merged, verdicts))
}

/// `Ok(true)` when every threshold holds on the merged numbers; `Err` (exit
/// 2) when an input cannot be read or the inputs are of different scenarios.
pub fn run(args: MergeArgs) -> Result<bool, String> {
    if args.inputs.is_empty() {
        return Err("merge needs result files (run --json)".into());
    }
    let mut docs = Vec::with_capacity(args.inputs.len());
    for path in &args.inputs {
        docs.push((path.clone(), read_result(path)?));
    }
    let (doc, report, verdicts) = merge_docs(&docs, args.label.as_deref())?;
    let name = doc["scenario"].as_str().unwrap_or_default().to_owned();
    eprintln!("merged {} result(s) of scenario {name}", docs.len());
    let pass = super::print_outcome(&name, &report, &verdicts);
    if let Some(out) = &args.output {
        write(out, &doc)?;
    }
    Ok(pass)
}

fn write(path: &Path, doc: &Value) -> Result<(), String> {
    crate::stats::write_json(path, doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats;

    /// A result of `samples` as `run --json` writes it (the parts merge uses).
    fn result(scenario: &str, samples: &[u64], matched: u64) -> Value {
        let mut r = Report::default();
        for &us in samples {
            r.record("match_latency", us).expect("record");
        }
        r.count("matched", matched);
        r.set("offered_arrivals_per_s", 10.0);
        let mut h = stats::histogram().expect("h");
        for &us in samples {
            stats::record(&mut h, us);
        }
        let point = timeline::Point {
            t: 0.0,
            offered: samples.len() as u64,
            achieved: samples.len() as u64,
            errors: 0,
            hist: h,
            cpu: None,
            rss_mb: Some(10.0),
        };
        json!({"format": 2, "scenario": scenario, "label": scenario, "host": "h",
               "workers": 1, "results": r.results(),
               "thresholds": [{"path": "match_latency.p99_ms", "min": null, "max": 10.0},
                              {"path": "matched", "min": 3.0, "max": null}],
               "timeline": {"interval_s": 1.0, "latency": "match_latency", "unit": "arrivals",
                            "points": [point.to_json().expect("point")]},
               "raw": r.to_wire().expect("wire")})
    }

    #[test]
    fn split_samples_merge_to_the_histogram_of_all() {
        let all: Vec<u64> = (1..=2_000).map(|i| i * 37 % 9_000 + 1).collect();
        let (a, b) = all.split_at(700);
        let docs = vec![
            (PathBuf::from("a.json"), result("storm", a, 2)),
            (PathBuf::from("b.json"), result("storm", b, 2)),
        ];
        let (doc, merged, verdicts) = merge_docs(&docs, Some("both")).expect("merge");
        let mut one = stats::histogram().expect("h");
        for &us in &all {
            stats::record(&mut one, us);
        }
        assert_eq!(merged.histos["match_latency"], one, "merged == one histogram of all");
        assert_eq!(doc["results"]["match_latency"]["count"], 2_000);
        assert_eq!(doc["results"]["matched"], 4);
        assert_eq!(doc["results"]["offered_arrivals_per_s"], 20.0);
        assert_eq!(doc["label"], "both");
        assert_eq!(doc["workers"], 2);
        // Thresholds again on the merged numbers: matched 4 ≥ 3 now passes.
        assert_eq!(verdicts.len(), 2);
        assert!(verdicts.iter().all(|v| v.pass), "{:?}", doc["thresholds"]);
        let p = &doc["timeline"]["points"][0];
        assert_eq!(p["count"], 2_000);
        let h = crate::stats::decode_histogram(p["hist"].as_str().expect("hist")).expect("decode");
        assert_eq!(h, one);
        // And the merged result merges again (it has its own raw).
        let again = vec![(PathBuf::from("c.json"), doc.clone())];
        let (doc2, _, _) = merge_docs(&again, None).expect("merge again");
        assert_eq!(doc2["results"], doc["results"]);
    }

    #[test]
    fn different_scenarios_or_no_raw_do_not_merge() {
        let docs = vec![
            (PathBuf::from("a.json"), result("storm", &[1], 1)),
            (PathBuf::from("b.json"), result("churn", &[1], 1)),
        ];
        let err = merge_docs(&docs, None).err().expect("must fail");
        assert!(err.contains("churn"), "{err}");
        let mut old = result("storm", &[1], 1);
        old.as_object_mut().expect("object").remove("raw");
        let err = merge_docs(&[(PathBuf::from("old.json"), old)], None).err().expect("no raw");
        assert!(err.contains("raw"), "{err}");
    }
}
