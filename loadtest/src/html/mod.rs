//! Mode `report`: result files of `run --json` and `capacity --json` drawn as
//! one self-contained HTML page. Everything is inline (CSS, SVG charts), a
//! strict Content-Security-Policy forbids any fetch and any script, and every
//! text taken from a file is escaped.
//!
//! Runs are overlaid, one color each: latency p50/p99 over time, offered and
//! achieved throughput over time, the servers' CPU and memory when the runs
//! read them, the main latency's percentiles, and every threshold (as lines on
//! the charts it applies to, and in a verdict table). A capacity search is
//! drawn as its ladder of steps. Results written before time series existed
//! still show their percentiles and verdicts.

pub mod svg;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use self::svg::{color, escape, num, Mark, Rule, Series};

/// One second (or interval) of a run's time series.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Point {
    pub t: f64,
    pub offered: Option<f64>,
    pub achieved: Option<f64>,
    pub errors: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub cpu: Option<f64>,
    pub rss_mb: Option<f64>,
}

/// A threshold and its verdict as a result file states them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Threshold {
    pub path: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub got: Option<f64>,
    pub pass: Option<bool>,
}

impl Threshold {
    fn from_json(v: &Value) -> Option<Self> {
        Some(Threshold {
            path: v.get("path")?.as_str()?.to_owned(),
            min: v.get("min").and_then(Value::as_f64),
            max: v.get("max").and_then(Value::as_f64),
            got: v.get("got").and_then(Value::as_f64),
            pass: v.get("pass").and_then(Value::as_bool),
        })
    }

    pub fn want(&self) -> String {
        match (self.min, self.max) {
            (Some(a), Some(b)) => format!("in [{}, {}]", num(a), num(b)),
            (Some(a), None) => format!("≥ {}", num(a)),
            (None, Some(b)) => format!("≤ {}", num(b)),
            (None, None) => "anything".into(),
        }
    }
}

/// A `run --json` result.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub file: String,
    pub label: String,
    pub scenario: String,
    pub kind: String,
    pub host: String,
    pub started_unix: Option<f64>,
    pub duration_s: Option<f64>,
    pub workers: Option<u64>,
    pub smoke: bool,
    pub pass: Option<bool>,
    /// The main latency histogram's name (`match_latency`, …), when known.
    pub latency: Option<String>,
    /// What offered/achieved count (arrivals, sends, …).
    pub unit: String,
    /// p50, p90, p99, p99.9, max of the main latency (ms).
    pub percentiles: [Option<f64>; 5],
    pub points: Vec<Point>,
    pub thresholds: Vec<Threshold>,
}

/// One step of a capacity search.
#[derive(Clone, Debug, Default)]
pub struct Step {
    pub value: f64,
    pub phase: String,
    pub pass: bool,
    pub median: Vec<(String, f64)>,
    pub throughput: Option<f64>,
    pub runs: Vec<(Option<bool>, String)>,
}

/// A `capacity --json` result.
#[derive(Clone, Debug, Default)]
pub struct Capacity {
    pub file: String,
    pub label: String,
    pub scenario: String,
    pub kind: String,
    pub host: String,
    pub param: String,
    pub unit: String,
    pub throughput_path: Option<String>,
    pub held_up_to: Option<f64>,
    pub first_failed: Option<f64>,
    pub repeats: Option<u64>,
    pub reason: String,
    pub steps: Vec<Step>,
    pub thresholds: Vec<Threshold>,
}

pub enum Doc {
    Run(Run),
    Capacity(Capacity),
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn number(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64).filter(|x| x.is_finite())
}

/// The latency a result is about: its timeline's, else the first threshold on
/// a percentile (`delivery_latency.p99_ms` → `delivery_latency`), else the
/// first histogram in `results`.
fn main_latency(doc: &Value, thresholds: &[Threshold]) -> Option<String> {
    if let Some(name) = doc.pointer("/timeline/latency").and_then(Value::as_str) {
        return Some(name.to_owned());
    }
    let results = doc.get("results");
    let is_histogram = |name: &str| {
        results
            .and_then(|r| r.pointer(&format!("/{}", name.replace('.', "/"))))
            .is_some_and(|h| h.get("p99_ms").is_some())
    };
    for t in thresholds {
        if let Some((head, tail)) = t.path.rsplit_once('.') {
            if tail.ends_with("_ms") && is_histogram(head) {
                return Some(head.to_owned());
            }
        }
    }
    let mut found = None;
    if let Some(Value::Object(map)) = results {
        for (name, v) in map {
            if v.get("p99_ms").is_some() {
                found = Some(name.clone());
                break;
            }
        }
    }
    found
}

impl Run {
    pub fn from_json(file: &str, doc: &Value) -> Result<Self, String> {
        if !doc.get("results").is_some_and(Value::is_object) {
            return Err(format!(
                "{file}: neither a run result (no \"results\") nor a capacity result"
            ));
        }
        let thresholds: Vec<Threshold> = doc
            .get("thresholds")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Threshold::from_json).collect())
            .unwrap_or_default();
        let latency = main_latency(doc, &thresholds);
        let mut percentiles = [None; 5];
        if let Some(name) = &latency {
            if let Some(h) = doc["results"].pointer(&format!("/{}", name.replace('.', "/"))) {
                for (slot, key) in
                    percentiles.iter_mut().zip(["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"])
                {
                    *slot = number(h, key);
                }
            }
        }
        let points = doc
            .pointer("/timeline/points")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        // A second in which nothing finished has no latency
                        // (drawn as a gap, not as 0 ms).
                        let timed = number(p, "count").is_none_or(|c| c > 0.0);
                        let latency = |key: &str| number(p, key).filter(|_| timed);
                        Some(Point {
                            t: number(p, "t")?,
                            offered: number(p, "offered"),
                            achieved: number(p, "achieved"),
                            errors: number(p, "errors"),
                            p50: latency("p50_ms"),
                            p99: latency("p99_ms"),
                            cpu: number(p, "server_cpu"),
                            rss_mb: number(p, "server_rss_mb"),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let scenario = text(doc, "scenario");
        let label = Some(text(doc, "label"))
            .filter(|l| !l.is_empty())
            .or_else(|| Some(scenario.clone()).filter(|s| !s.is_empty()))
            .unwrap_or_else(|| file.to_owned());
        Ok(Run {
            file: file.to_owned(),
            label,
            scenario,
            kind: text(doc, "kind"),
            host: text(doc, "host"),
            started_unix: number(doc, "started_unix"),
            duration_s: number(doc, "duration_s"),
            workers: doc.get("workers").and_then(Value::as_u64),
            smoke: doc.get("smoke").and_then(Value::as_bool).unwrap_or(false),
            pass: doc.get("pass").and_then(Value::as_bool),
            latency,
            unit: doc
                .pointer("/timeline/unit")
                .and_then(Value::as_str)
                .unwrap_or("items")
                .to_owned(),
            percentiles,
            points,
            thresholds,
        })
    }
}

impl Capacity {
    pub fn from_json(file: &str, doc: &Value) -> Result<Self, String> {
        let c = doc
            .get("capacity")
            .filter(|c| c.is_object())
            .ok_or_else(|| format!("{file}: no \"capacity\" object"))?;
        let thresholds = |v: &Value| -> Vec<Threshold> {
            v.get("thresholds")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Threshold::from_json).collect())
                .unwrap_or_default()
        };
        let steps = c
            .get("steps")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| {
                        Some(Step {
                            value: number(s, "value")?,
                            phase: text(s, "phase"),
                            pass: s.get("pass").and_then(Value::as_bool).unwrap_or(false),
                            median: s
                                .get("median")
                                .and_then(Value::as_object)
                                .map(|m| {
                                    m.iter()
                                        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                                        .collect()
                                })
                                .unwrap_or_default(),
                            throughput: number(s, "throughput"),
                            runs: s
                                .get("runs")
                                .and_then(Value::as_array)
                                .map(|r| {
                                    r.iter()
                                        .map(|r| {
                                            (
                                                r.get("pass").and_then(Value::as_bool),
                                                text(r, "file"),
                                            )
                                        })
                                        .collect()
                                })
                                .unwrap_or_default(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let scenario = text(doc, "scenario");
        let label = Some(text(doc, "label"))
            .filter(|l| !l.is_empty())
            .or_else(|| Some(scenario.clone()).filter(|s| !s.is_empty()))
            .unwrap_or_else(|| file.to_owned());
        Ok(Capacity {
            file: file.to_owned(),
            label,
            scenario,
            kind: text(doc, "kind"),
            host: text(doc, "host"),
            param: text(c, "param"),
            unit: text(c, "unit"),
            throughput_path: c.get("throughput_path").and_then(Value::as_str).map(str::to_owned),
            held_up_to: number(c, "held_up_to"),
            first_failed: number(c, "first_failed"),
            repeats: c.get("repeats").and_then(Value::as_u64),
            reason: text(c, "reason"),
            steps,
            thresholds: thresholds(c),
        })
    }

    /// The threshold the ladder is drawn against: the first on a latency
    /// percentile with an upper bound, else the first with an upper bound, else
    /// the first.
    pub fn main_threshold(&self) -> Option<&Threshold> {
        self.thresholds
            .iter()
            .find(|t| t.max.is_some() && t.path.contains("latency") && t.path.ends_with("_ms"))
            .or_else(|| self.thresholds.iter().find(|t| t.max.is_some()))
            .or_else(|| self.thresholds.first())
    }
}

pub fn parse(file: &str, doc: &Value) -> Result<Doc, String> {
    if doc.get("capacity").is_some_and(Value::is_object) {
        Capacity::from_json(file, doc).map(Doc::Capacity)
    } else {
        Run::from_json(file, doc).map(Doc::Run)
    }
}

/// `report FILE... -o OUT`: read, draw, write.
pub fn run(inputs: &[PathBuf], out: &Path) -> Result<(), String> {
    if inputs.is_empty() {
        return Err("report needs at least one result JSON file".into());
    }
    let mut docs = Vec::new();
    for path in inputs {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("read {name}: {e}"))?;
        let doc: Value =
            serde_json::from_str(&text).map_err(|e| format!("{name}: not JSON: {e}"))?;
        docs.push(parse(&name, &doc)?);
    }
    let html = render(&mut docs);
    std::fs::write(out, html).map_err(|e| format!("write {}: {e}", out.display()))?;
    let runs = docs.iter().filter(|d| matches!(d, Doc::Run(_))).count();
    println!(
        "report: {} run(s), {} capacity search(es) -> {}",
        runs,
        docs.len() - runs,
        out.display()
    );
    Ok(())
}

const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;
 padding:0 16px;color:#1b1b1b;background:#fff}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37;font-weight:600}.fail{color:#c62828;font-weight:600}.muted{color:#666}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.legend span.item{margin-right:18px;white-space:nowrap}
svg.chart{width:100%;max-width:900px;height:auto;display:block;margin:6px 0 18px}
svg .grid{stroke:#eee}svg .axis{stroke:#888}svg .tick{font-size:10px;fill:#555}
svg .label{font-size:11px;fill:#333}svg .threshold line{stroke:#c62828;stroke-dasharray:6 4}
svg .threshold text{font-size:10px;fill:#c62828}svg .held line{stroke:#1a7f37;stroke-dasharray:3 3}
svg .held text{font-size:11px;fill:#1a7f37;font-weight:600}svg .ladder{stroke:#999}
svg .step.pass circle{fill:#1a7f37}svg .step.fail path{stroke:#c62828;stroke-width:2.5}
code{font-size:12px}
";

/// Content-Security-Policy: nothing may be fetched, nothing may run.
pub const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(unix: f64) -> String {
    let secs = unix.floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3_600, rem % 3_600 / 60, rem % 60)
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), num)
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "<span class=\"pass\">PASS</span>",
        Some(false) => "<span class=\"fail\">FAIL</span>",
        None => "<span class=\"muted\">–</span>",
    }
}

/// Give repeated labels a suffix, so each legend entry names one run.
fn unique_labels(docs: &mut [Doc]) {
    let mut seen: Vec<String> = Vec::new();
    for d in docs.iter_mut() {
        let label = match d {
            Doc::Run(r) => &mut r.label,
            Doc::Capacity(c) => &mut c.label,
        };
        let base = label.clone();
        let mut k = 1;
        while seen.contains(label) {
            k += 1;
            *label = format!("{base} ({k})");
        }
        seen.push(label.clone());
    }
}

/// Upper bounds on `<latency>.<key>` of these runs, as chart rules.
fn latency_rules(runs: &[(usize, &Run)], keys: &[&str]) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    for (_, r) in runs {
        let Some(lat) = &r.latency else { continue };
        for t in &r.thresholds {
            let Some(max) = t.max else { continue };
            for key in keys {
                if t.path == format!("{lat}.{key}") {
                    let label = format!("{} max", t.path);
                    if !out.iter().any(|o| o.label == label && o.y == max) {
                        out.push(Rule { label, y: max });
                    }
                }
            }
        }
    }
    out
}

/// The whole page.
pub fn render(docs: &mut [Doc]) -> String {
    unique_labels(docs);
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Load test report</title><style>{CSS}</style></head><body>\
         <h1>Load test report</h1>"
    );
    let runs: Vec<(usize, &Run)> = docs
        .iter()
        .enumerate()
        .filter_map(|(i, d)| if let Doc::Run(r) = d { Some((i, r)) } else { None })
        .collect();
    let caps: Vec<(usize, &Capacity)> = docs
        .iter()
        .enumerate()
        .filter_map(|(i, d)| if let Doc::Capacity(c) = d { Some((i, c)) } else { None })
        .collect();
    // Legend: one color per input, in the order given.
    h.push_str("<p class=\"legend\" id=\"legend\">");
    for (i, d) in docs.iter().enumerate() {
        let label = match d {
            Doc::Run(r) => &r.label,
            Doc::Capacity(c) => &c.label,
        };
        let _ = write!(
            h,
            "<span class=\"item\" data-series=\"{}\"><span class=\"swatch\" \
             style=\"background:{}\"></span>{}</span>",
            escape(label),
            color(i),
            escape(label)
        );
    }
    h.push_str("</p>");
    if !runs.is_empty() {
        runs_section(&mut h, &runs);
    }
    capacities_overlaid(&mut h, &caps);
    for (i, c) in &caps {
        capacity_section(&mut h, *i, c);
    }
    h.push_str(
        "<p class=\"muted\">Made by <code>rendezvous-loadtest report</code>. Lines on the time \
         charts: solid p99 / achieved, dashed p50 / offered; red dashed lines are thresholds.</p>\
         </body></html>\n",
    );
    h
}

fn runs_section(h: &mut String, runs: &[(usize, &Run)]) {
    h.push_str(
        "<h2>Runs</h2><table id=\"runs\"><tr><th>run</th><th>scenario</th><th>kind</th>\
         <th>host</th><th>started</th><th>duration (s)</th><th>workers</th><th>verdict</th>\
         <th>file</th></tr>",
    );
    for (i, r) in runs {
        let _ = write!(
            h,
            "<tr data-series=\"{}\"><td><span class=\"swatch\" style=\"background:{}\"></span>{}\
             </td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td>{}</td><td><code>{}</code></td></tr>",
            escape(&r.label),
            color(*i),
            escape(&r.label),
            escape(&r.scenario),
            if r.smoke { " (smoke)" } else { "" },
            escape(&r.kind),
            escape(&r.host),
            r.started_unix.map_or_else(|| "–".to_owned(), utc),
            opt(r.duration_s),
            r.workers.map_or_else(|| "–".to_owned(), |w| w.to_string()),
            verdict(r.pass),
            escape(&r.file)
        );
    }
    h.push_str("</table>");

    let timed: Vec<&(usize, &Run)> = runs.iter().filter(|(_, r)| !r.points.is_empty()).collect();
    let untimed: Vec<&str> =
        runs.iter().filter(|(_, r)| r.points.is_empty()).map(|(_, r)| r.label.as_str()).collect();
    if !untimed.is_empty() {
        let _ = write!(
            h,
            "<p class=\"muted\" id=\"no-timeline\">No time series in: {} (results written before \
             time series were recorded); their percentiles and verdicts are below.</p>",
            escape(&untimed.join(", "))
        );
    }
    if !timed.is_empty() {
        let series_of = |pick: &dyn Fn(&Point) -> Option<f64>, suffix: &str, dashed: bool| {
            timed
                .iter()
                .map(|(i, r)| Series {
                    name: format!("{} {suffix}", r.label),
                    color: color(*i),
                    dashed,
                    points: r.points.iter().filter_map(|p| Some((p.t, pick(p)?))).collect(),
                })
                .collect::<Vec<_>>()
        };
        let timed_runs: Vec<(usize, &Run)> = timed.iter().map(|(i, r)| (*i, *r)).collect();
        let names: Vec<String> = {
            let mut n: Vec<String> = timed.iter().filter_map(|(_, r)| r.latency.clone()).collect();
            n.dedup();
            n
        };
        let _ = write!(
            h,
            "<h2>Latency over time</h2><p class=\"muted\">{} per second.</p>",
            escape(&names.join(", "))
        );
        let mut lat = series_of(&|p| p.p99, "p99", false);
        lat.extend(series_of(&|p| p.p50, "p50", true));
        h.push_str(&svg::line_chart(
            "chart-latency",
            "latency over time",
            "seconds into the run",
            "ms",
            &lat,
            &latency_rules(&timed_runs, &["p99_ms", "p50_ms"]),
        ));
        let units: Vec<String> = {
            let mut u: Vec<String> = timed.iter().map(|(_, r)| r.unit.clone()).collect();
            u.dedup();
            u
        };
        let _ = write!(
            h,
            "<h2>Throughput over time</h2><p class=\"muted\">{} per second, \
            offered (dashed) and achieved (solid).</p>",
            escape(&units.join(", "))
        );
        let mut thr = series_of(&|p| p.achieved, "achieved", false);
        thr.extend(series_of(&|p| p.offered, "offered", true));
        h.push_str(&svg::line_chart(
            "chart-throughput",
            "throughput over time",
            "seconds into the run",
            "per second",
            &thr,
            &[],
        ));
        if timed.iter().any(|(_, r)| r.points.iter().any(|p| p.errors.unwrap_or(0.0) > 0.0)) {
            h.push_str("<h2>Errors over time</h2>");
            h.push_str(&svg::line_chart(
                "chart-errors",
                "errors over time",
                "seconds into the run",
                "errors per second",
                &series_of(&|p| p.errors, "errors", false),
                &[],
            ));
        }
        if timed.iter().any(|(_, r)| r.points.iter().any(|p| p.cpu.is_some())) {
            h.push_str("<h2>Server CPU</h2>");
            h.push_str(&svg::line_chart(
                "chart-cpu",
                "server CPU over time",
                "seconds into the run",
                "cores",
                &series_of(&|p| p.cpu, "cpu", false),
                &[],
            ));
        }
        if timed.iter().any(|(_, r)| r.points.iter().any(|p| p.rss_mb.is_some())) {
            h.push_str("<h2>Server memory</h2>");
            h.push_str(&svg::line_chart(
                "chart-rss",
                "server resident memory over time",
                "seconds into the run",
                "MiB",
                &series_of(&|p| p.rss_mb, "rss", false),
                &[],
            ));
        }
    }

    let cats = ["p50", "p90", "p99", "p99.9", "max"];
    let keys = ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"];
    h.push_str("<h2>Latency percentiles</h2>");
    let bars: Vec<(String, &'static str, Vec<Option<f64>>)> = runs
        .iter()
        .filter(|(_, r)| r.percentiles.iter().any(Option::is_some))
        .map(|(i, r)| (r.label.clone(), color(*i), r.percentiles.to_vec()))
        .collect();
    if !bars.is_empty() {
        h.push_str(&svg::bar_chart(
            "chart-percentiles",
            "latency percentiles",
            "ms",
            &cats,
            &bars,
            &latency_rules(runs, &keys),
        ));
    }
    h.push_str("<table id=\"percentiles\"><tr><th>run</th><th>latency</th>");
    for c in cats {
        let _ = write!(h, "<th>{c} (ms)</th>");
    }
    h.push_str("</tr>");
    for (i, r) in runs {
        let _ = write!(
            h,
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td>{}</td>",
            color(*i),
            escape(&r.label),
            escape(r.latency.as_deref().unwrap_or("–"))
        );
        for p in r.percentiles {
            let _ = write!(h, "<td class=\"n\">{}</td>", opt(p));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");

    h.push_str(
        "<h2>Thresholds</h2><table id=\"verdicts\"><tr><th>run</th><th>threshold</th>\
         <th>want</th><th>got</th><th>verdict</th></tr>",
    );
    for (i, r) in runs {
        if r.thresholds.is_empty() {
            let _ = write!(
                h,
                "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td>\
                 <td colspan=\"4\" class=\"muted\">no thresholds</td></tr>",
                color(*i),
                escape(&r.label)
            );
        }
        for t in &r.thresholds {
            let _ = write!(
                h,
                "<tr class=\"verdict\" data-series=\"{}\"><td><span class=\"swatch\" \
                 style=\"background:{}\"></span>{}</td><td><code>{}</code></td><td>{}</td>\
                 <td class=\"n\">{}</td><td>{}</td></tr>",
                escape(&r.label),
                color(*i),
                escape(&r.label),
                escape(&t.path),
                escape(&t.want()),
                t.got.map_or_else(|| "missing".to_owned(), num),
                verdict(t.pass)
            );
        }
    }
    h.push_str("</table>");
}

/// The median of `c`'s main threshold at each step, as ladder marks.
fn ladder_marks(c: &Capacity, color: Option<&'static str>) -> Vec<Mark> {
    let main = c.main_threshold();
    c.steps
        .iter()
        .enumerate()
        .map(|(k, s)| Mark {
            series: c.label.clone(),
            color,
            step: k + 1,
            x: s.value,
            y: main.and_then(|t| s.median.iter().find(|(p, _)| *p == t.path).map(|(_, v)| *v)),
            pass: s.pass,
            phase: s.phase.clone(),
        })
        .collect()
}

/// Searches over the same setting (engine against relay) on one ladder.
fn capacities_overlaid(h: &mut String, caps: &[(usize, &Capacity)]) {
    let Some((_, first)) = caps.first() else { return };
    let same: Vec<&(usize, &Capacity)> =
        caps.iter().filter(|(_, c)| c.param == first.param).collect();
    if same.len() < 2 {
        return;
    }
    let mut marks = Vec::new();
    let mut held = Vec::new();
    let mut rules: Vec<Rule> = Vec::new();
    for (i, c) in &same {
        marks.extend(ladder_marks(c, Some(color(*i))));
        if let Some(v) = c.held_up_to {
            held.push((v, Some(color(*i)), format!("{}: ", c.label)));
        }
        if let Some(t) = c.main_threshold() {
            for (w, v) in [("max", t.max), ("min", t.min)] {
                let label = format!("{} {w}", t.path);
                if let Some(v) = v.filter(|v| !rules.iter().any(|r| r.label == label && r.y == *v))
                {
                    rules.push(Rule { label, y: v });
                }
            }
        }
    }
    let y_label = first
        .main_threshold()
        .map_or_else(|| "median".to_owned(), |t| format!("median {}", t.path));
    let names: Vec<&str> = same.iter().map(|(_, c)| c.label.as_str()).collect();
    let _ = write!(
        h,
        "<h2>Capacity compared</h2><p class=\"muted\">{}: each search's steps over <code>{}</code>, \
         in its color (dots held, crosses failed).</p>",
        escape(&names.join(" against ")),
        escape(&first.param)
    );
    h.push_str(&svg::ladder_chart(
        "chart-capacities",
        "capacity searches compared",
        &format!("{} ({})", first.param, first.unit),
        &y_label,
        &marks,
        &rules,
        &held,
    ));
}

fn capacity_section(h: &mut String, i: usize, c: &Capacity) {
    let _ = write!(
        h,
        "<h2>Capacity: <span class=\"swatch\" style=\"background:{}\"></span>{}</h2>",
        color(i),
        escape(&c.label)
    );
    let held = match c.held_up_to {
        Some(v) => format!("held up to <b>{}</b> {}", num(v), escape(&c.unit)),
        None => "<span class=\"fail\">did not hold at any value tried</span>".to_owned(),
    };
    let through = c
        .steps
        .iter()
        .rev()
        .find(|s| Some(s.value) == c.held_up_to)
        .and_then(|s| s.throughput)
        .zip(c.throughput_path.as_deref())
        .map(|(t, p)| format!(" ({} = {})", escape(p), num(t)))
        .unwrap_or_default();
    let _ = write!(
        h,
        "<p class=\"capacity-summary\">Scenario <b>{}</b> ({}) on {}: search over <code>{}</code>: \
         {held}{through}; first failed: {}; {} repeat(s) per step, decided on the median. \
         Stopped: {}. <span class=\"muted\">File <code>{}</code>.</span></p>",
        escape(&c.scenario),
        escape(&c.kind),
        escape(if c.host.is_empty() { "an unnamed host" } else { &c.host }),
        escape(&c.param),
        c.first_failed.map_or_else(|| "none".to_owned(), num),
        c.repeats.map_or_else(|| "?".to_owned(), |r| r.to_string()),
        escape(&c.reason),
        escape(&c.file)
    );
    let main = c.main_threshold();
    let marks = ladder_marks(c, None);
    let rules: Vec<Rule> = main
        .into_iter()
        .flat_map(|t| {
            [("max", t.max), ("min", t.min)]
                .into_iter()
                .filter_map(|(w, v)| Some(Rule { label: format!("{} {w}", t.path), y: v? }))
        })
        .collect();
    let y_label = main.map_or_else(|| "median".to_owned(), |t| format!("median {}", t.path));
    h.push_str(&svg::ladder_chart(
        &format!("chart-capacity-{i}"),
        &format!("capacity ladder of {}", c.label),
        &format!("{} ({})", c.param, c.unit),
        &y_label,
        &marks,
        &rules,
        &c.held_up_to.map(|v| (v, None, String::new())).into_iter().collect::<Vec<_>>(),
    ));
    h.push_str("<table class=\"capacity-steps\"><tr><th>step</th><th>phase</th><th>value</th><th>verdict</th>");
    for t in &c.thresholds {
        let _ =
            write!(h, "<th>median <code>{}</code> ({})</th>", escape(&t.path), escape(&t.want()));
    }
    let _ = write!(
        h,
        "<th>{}</th><th>runs</th></tr>",
        escape(c.throughput_path.as_deref().unwrap_or("throughput"))
    );
    for (k, s) in c.steps.iter().enumerate() {
        let _ = write!(
            h,
            "<tr><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td>",
            k + 1,
            escape(&s.phase),
            num(s.value),
            verdict(Some(s.pass))
        );
        for t in &c.thresholds {
            let v = s.median.iter().find(|(p, _)| *p == t.path).map(|(_, v)| *v);
            let _ = write!(h, "<td class=\"n\">{}</td>", opt(v));
        }
        let files: Vec<String> = s
            .runs
            .iter()
            .map(|(pass, f)| {
                let mark = match pass {
                    Some(true) => "pass",
                    Some(false) => "fail",
                    None => "not done",
                };
                format!("<code>{}</code> {mark}", escape(f))
            })
            .collect();
        let _ = write!(
            h,
            "<td class=\"n\">{}</td><td>{}</td></tr>",
            opt(s.throughput),
            files.join("<br>")
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(label: &str, seconds: usize) -> Value {
        let points: Vec<Value> = (0..seconds)
            .map(|t| {
                json!({"t": t as f64, "offered": 100, "achieved": 99, "errors": 0, "count": 99,
                       "p50_ms": 1.0, "p99_ms": 2.0 + t as f64, "max_ms": 9.0,
                       "server_cpu": if t == 0 { Value::Null } else { json!(0.5) },
                       "server_rss_mb": 40.0, "hist": ""})
            })
            .collect();
        json!({"format": 2, "scenario": "chat-pairs", "kind": "chat-rooms", "label": label,
               "host": "box", "started_unix": 1_764_748_800.0, "smoke": false, "workers": 1,
               "duration_s": seconds,
               "results": {"delivery_latency": {"count": 10, "p50_ms": 1.0, "p90_ms": 1.5,
                   "p99_ms": 3.0, "p999_ms": 4.0, "max_ms": 5.0}, "lost": 0},
               "thresholds": [{"path": "delivery_latency.p99_ms", "max": 10.0, "got": 3.0, "pass": true},
                              {"path": "lost", "max": 0, "got": 0, "pass": true}],
               "pass": true,
               "timeline": {"interval_s": 1.0, "latency": "delivery_latency", "unit": "sends",
                            "points": points}})
    }

    #[test]
    fn seconds_without_results_have_no_latency_point() {
        let mut doc = result("r", 4);
        doc["timeline"]["points"][3]["count"] = json!(0);
        let Doc::Run(r) = parse("r.json", &doc).expect("run") else { panic!("a run") };
        assert_eq!(r.points.len(), 4);
        assert_eq!(r.points.iter().filter(|p| p.p99.is_some()).count(), 3);
        assert_eq!(r.points.iter().filter(|p| p.offered.is_some()).count(), 4);
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_764_748_800.0), "2025-12-03 08:00:00 UTC");
        assert_eq!(utc(951_782_400.0 + 3_661.5), "2000-02-29 01:01:01 UTC");
    }

    #[test]
    fn runs_are_overlaid_with_a_point_per_second() {
        let mut docs = vec![
            parse("a.json", &result("engine", 5)).expect("a"),
            parse("b.json", &result("relay", 3)).expect("b"),
        ];
        let page = render(&mut docs);
        for (label, n) in [("engine", 5), ("relay", 3)] {
            for s in ["p99", "p50", "offered", "achieved", "rss"] {
                let needle = format!("class=\"pt\" data-series=\"{label} {s}\"");
                assert_eq!(page.matches(&needle).count(), n, "{label} {s}");
            }
            // The first second has no CPU reading.
            let cpu = format!("class=\"pt\" data-series=\"{label} cpu\"");
            assert_eq!(page.matches(&cpu).count(), n - 1);
            assert_eq!(page.matches(&format!("class=\"bar\" data-series=\"{label}\"")).count(), 5);
        }
        assert!(page.contains("data-threshold=\"delivery_latency.p99_ms max\""));
        assert!(page.contains(CSP));
        assert!(!page.contains("<script"));
        assert!(!page.contains("chart-errors"), "no errors, no errors chart");
    }

    #[test]
    fn old_results_keep_percentiles_and_verdicts() {
        let mut old = result("x", 0);
        let o = old.as_object_mut().expect("object");
        for k in ["timeline", "label", "host", "started_unix", "format"] {
            o.remove(k);
        }
        let mut docs = vec![parse("old.json", &old).expect("old")];
        let Doc::Run(r) = &docs[0] else { panic!("a run") };
        assert_eq!(r.label, "chat-pairs");
        assert_eq!(r.latency.as_deref(), Some("delivery_latency"));
        assert_eq!(r.percentiles[2], Some(3.0));
        let page = render(&mut docs);
        assert!(page.contains("id=\"no-timeline\""));
        assert_eq!(page.matches("class=\"bar\"").count(), 5);
        assert_eq!(page.matches("class=\"verdict\"").count(), 2);
        assert!(!page.contains("chart-latency"));
    }

    #[test]
    fn text_from_files_is_escaped() {
        let mut evil = result("<img src=x onerror=alert(1)>", 2);
        evil["scenario"] = json!("</table><script>alert(2)</script>");
        evil["host"] = json!("\"><b>");
        evil["thresholds"][0]["path"] = json!("a<b>.p99_ms");
        let mut docs = vec![parse("evil.json", &evil).expect("evil")];
        let page = render(&mut docs);
        assert!(!page.contains("<img"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("\"><b>"));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
    }

    #[test]
    fn a_capacity_search_is_a_ladder() {
        let cap = json!({"format": 2, "label": "engine <cap>", "scenario": "chat-pairs", "kind": "chat-rooms",
            "capacity": {"param": "chat.rate", "unit": "msg/s per member",
              "throughput_path": "delivered_per_s", "held_up_to": 20.0, "first_failed": 40.0,
              "repeats": 3, "reason": "resolution reached",
              "thresholds": [{"path": "lost", "max": 0}, {"path": "delivery_latency.p99_ms", "max": 10.0}],
              "steps": [
                {"value": 10.0, "phase": "step", "pass": true, "throughput": 100.0,
                 "median": {"delivery_latency.p99_ms": 2.0, "lost": 0}, "runs": [{"pass": true, "file": "s1.json"}]},
                {"value": 20.0, "phase": "step", "pass": true, "throughput": 200.0,
                 "median": {"delivery_latency.p99_ms": 4.0, "lost": 0}, "runs": []},
                {"value": 40.0, "phase": "step", "pass": false, "throughput": 300.0,
                 "median": {"delivery_latency.p99_ms": 40.0, "lost": 0}, "runs": []},
                {"value": 30.0, "phase": "bisect", "pass": false, "throughput": null,
                 "median": {}, "runs": [{"pass": null, "file": "s4.json"}]}]}});
        let mut docs = vec![parse("cap.json", &cap).expect("cap")];
        let Doc::Capacity(c) = &docs[0] else { panic!("a capacity") };
        assert_eq!(c.main_threshold().map(|t| t.path.as_str()), Some("delivery_latency.p99_ms"));
        let page = render(&mut docs);
        assert_eq!(page.matches("class=\"step pass\"").count(), 2);
        assert_eq!(page.matches("class=\"step fail\"").count(), 2);
        assert!(page.contains("held up to 20"));
        assert!(page.contains("delivered_per_s = 200"));
        assert!(page.contains("engine &lt;cap&gt;"));
        assert!(page.contains("data-threshold=\"delivery_latency.p99_ms max\""));
    }

    #[test]
    fn two_searches_over_one_setting_share_a_ladder() {
        let cap = |label: &str, held: f64| {
            json!({"label": label, "scenario": "chat-pairs", "capacity": {"param": "chat.rate",
                "held_up_to": held, "thresholds": [{"path": "delivery_latency.p99_ms", "max": 10.0}],
                "steps": [{"value": 10.0, "pass": true, "median": {"delivery_latency.p99_ms": 2.0}},
                          {"value": 20.0, "pass": false, "median": {"delivery_latency.p99_ms": 20.0}}]}})
        };
        let mut docs = vec![
            parse("e.json", &cap("engine", 10.0)).expect("e"),
            parse("r.json", &cap("relay", 10.0)).expect("r"),
        ];
        let page = render(&mut docs);
        let overlay = &page[page.find("id=\"chart-capacities\"").expect("overlaid ladder")..];
        let overlay = &overlay[..overlay.find("</svg>").expect("end")];
        assert_eq!(overlay.matches("class=\"step ").count(), 4);
        assert_eq!(overlay.matches("data-series=\"relay\" data-step").count(), 2);
        assert_eq!(overlay.matches("class=\"held\"").count(), 2);
        assert_eq!(page.matches("id=\"chart-capacity-").count(), 2);
    }

    #[test]
    fn other_json_is_refused() {
        assert!(parse("x.json", &json!({"hello": 1})).is_err());
        assert!(parse("x.json", &json!([1, 2])).is_err());
    }
}
