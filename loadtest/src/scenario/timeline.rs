//! The run's time series: one point per second of what was offered, what was
//! achieved, the errors, the main latency of that second (as an HDR histogram,
//! so that runs merge exactly) and the servers' CPU and memory read from their
//! `/metrics`.
//!
//! Like [`super::progress`], a process-wide recorder: the drivers feed it where
//! they already count (an item scheduled, an item done with its latency, an
//! error), each event at its own time; [`begin`] marks the start of the load
//! (second 0); what came before (setup) lands in second 0.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::stats;

/// Longest run a timeline keeps (later events land in the last second).
const MAX_SECONDS: usize = 7 * 24 * 3_600;

#[derive(Default)]
struct Bucket {
    offered: u64,
    achieved: u64,
    errors: u64,
    hist: Option<Histogram<u64>>,
    cpu: Option<f64>,
    rss_mb: Option<f64>,
}

struct Recorder {
    origin: Instant,
    latency: String,
    unit: String,
    buckets: Vec<Bucket>,
}

static REC: Mutex<Option<Recorder>> = Mutex::new(None);

impl Recorder {
    fn bucket(&mut self, at: Instant) -> &mut Bucket {
        let i = (at.saturating_duration_since(self.origin).as_secs_f64() as usize).min(MAX_SECONDS);
        if self.buckets.len() <= i {
            self.buckets.resize_with(i + 1, Bucket::default);
        }
        &mut self.buckets[i]
    }
}

/// Record from now on (until [`take`]); events before are dropped.
pub fn arm() {
    if let Ok(mut rec) = REC.lock() {
        *rec = Some(Recorder {
            origin: Instant::now(),
            latency: String::new(),
            unit: String::new(),
            buckets: Vec::new(),
        });
    }
}

fn with(f: impl FnOnce(&mut Recorder)) {
    if let Ok(mut rec) = REC.lock() {
        if let Some(rec) = rec.as_mut() {
            f(rec);
        }
    }
}

/// The load starts at `origin` (second 0); its main latency is histogram
/// `latency` of the report and offered/achieved count `unit`. Earlier events
/// move to second 0.
pub fn begin(origin: Instant, latency: &str, unit: &str) {
    with(|rec| {
        let mut early = Bucket::default();
        for b in rec.buckets.drain(..) {
            early.offered += b.offered;
            early.achieved += b.achieved;
            early.errors += b.errors;
            if let Some(h) = b.hist {
                match &mut early.hist {
                    Some(e) => {
                        let _ = e.add(&h);
                    }
                    None => early.hist = Some(h),
                }
            }
        }
        rec.origin = origin;
        rec.latency = latency.to_owned();
        rec.unit = unit.to_owned();
        rec.buckets.push(early);
    });
}

pub fn offered(at: Instant, n: u64) {
    with(|rec| rec.bucket(at).offered += n);
}

pub fn achieved(at: Instant, n: u64) {
    with(|rec| rec.bucket(at).achieved += n);
}

/// One main-latency sample of an item done at `at`.
pub fn latency(at: Instant, us: u64) {
    with(|rec| sample(rec.bucket(at), us));
}

/// An item done at `at` with its main latency (one lock for both).
pub fn done(at: Instant, us: u64) {
    with(|rec| {
        let b = rec.bucket(at);
        b.achieved += 1;
        sample(b, us);
    });
}

fn sample(b: &mut Bucket, us: u64) {
    if b.hist.is_none() {
        b.hist = stats::histogram().ok();
    }
    if let Some(h) = &mut b.hist {
        stats::record(h, us);
    }
}

pub fn error(at: Instant) {
    with(|rec| rec.bucket(at).errors += 1);
}

/// The servers' use in the second of `at`: cores busy, resident MiB.
fn server(at: Instant, cpu: Option<f64>, rss_mb: Option<f64>) {
    with(|rec| {
        let b = rec.bucket(at);
        b.cpu = cpu.or(b.cpu);
        b.rss_mb = rss_mb.or(b.rss_mb);
    });
}

/// Read every url's `/metrics` once a second until aborted: the CPU seconds
/// used since the last read (over the time between the reads), and resident
/// memory, each summed over the servers that export it.
pub fn scrape(urls: Vec<String>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<(Instant, f64)> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (mut cpu_s, mut rss, mut seen_cpu, mut seen_rss) = (0.0, 0.0, false, false);
            for url in &urls {
                let Ok((200, text)) = super::server::get(url, "/metrics").await else {
                    continue;
                };
                if let Some(c) = super::server::sample(&text, "process_cpu_seconds_total") {
                    cpu_s += c;
                    seen_cpu = true;
                }
                if let Some(r) = super::server::sample(&text, "process_resident_memory_bytes") {
                    rss += r;
                    seen_rss = true;
                }
            }
            let now = Instant::now();
            let cores = match (last, seen_cpu) {
                (Some((then, before)), true) => {
                    let dt = now.duration_since(then).as_secs_f64();
                    (dt > 0.0).then(|| ((cpu_s - before) / dt).max(0.0))
                }
                _ => None,
            };
            last = seen_cpu.then_some((now, cpu_s));
            server(now, cores, seen_rss.then_some(rss / 1_048_576.0));
        }
    })
}

/// The recorded series as the result's `"timeline"`; clears the recorder.
pub fn take() -> Result<Value, String> {
    let rec = REC.lock().map_err(|_| "timeline poisoned")?.take();
    let Some(rec) = rec else {
        return Ok(json!({"interval_s": 1.0, "latency": "", "unit": "", "points": []}));
    };
    let origin_unix = super::unix_now() - rec.origin.elapsed().as_secs_f64()
        + rec.origin.saturating_duration_since(Instant::now()).as_secs_f64();
    let mut points = Vec::with_capacity(rec.buckets.len());
    for (i, b) in rec.buckets.into_iter().enumerate() {
        let hist = match b.hist {
            Some(h) => h,
            None => stats::histogram()?,
        };
        let p = Point {
            t: i as f64,
            offered: b.offered,
            achieved: b.achieved,
            errors: b.errors,
            hist,
            cpu: b.cpu,
            rss_mb: b.rss_mb,
        };
        points.push(p.to_json()?);
    }
    Ok(json!({"interval_s": 1.0, "latency": rec.latency, "unit": rec.unit,
              "origin_unix": origin_unix, "points": points}))
}

/// `timeline` with its seconds counted from `origin_unix` instead of its own
/// origin (earlier points go to second 0).
pub fn shifted(timeline: &Value, origin_unix: f64) -> Result<Value, String> {
    let own = timeline.get("origin_unix").and_then(Value::as_f64);
    let (Some(own), true) = (own, origin_unix.is_finite()) else {
        return Ok(timeline.clone());
    };
    let by = (origin_unix - own).round();
    let mut out: BTreeMap<i64, Point> = BTreeMap::new();
    for v in timeline.get("points").and_then(Value::as_array).into_iter().flatten() {
        let mut p = Point::from_json(v)?;
        p.t = (p.t - by).max(0.0);
        let key = (p.t * 1000.0).round() as i64;
        match out.get_mut(&key) {
            Some(mine) => mine.merge(&p)?,
            None => {
                out.insert(key, p);
            }
        }
    }
    let points: Result<Vec<Value>, String> = out.values().map(Point::to_json).collect();
    let mut t = timeline.clone();
    t["points"] = Value::Array(points?);
    t["origin_unix"] = json!(origin_unix);
    Ok(t)
}

/// One second of the series.
pub struct Point {
    pub t: f64,
    pub offered: u64,
    pub achieved: u64,
    pub errors: u64,
    pub hist: Histogram<u64>,
    pub cpu: Option<f64>,
    pub rss_mb: Option<f64>,
}

impl Point {
    pub fn to_json(&self) -> Result<Value, String> {
        let p = stats::Percentiles::of(&self.hist);
        Ok(json!({"t": self.t, "offered": self.offered, "achieved": self.achieved,
                  "errors": self.errors, "count": p.count, "p50_ms": p.p50, "p99_ms": p.p99,
                  "max_ms": p.max, "server_cpu": self.cpu, "server_rss_mb": self.rss_mb,
                  "hist": stats::encode_histogram(&self.hist)?}))
    }

    pub fn from_json(v: &Value) -> Result<Self, String> {
        let u = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        let hist = match v.get("hist").and_then(Value::as_str) {
            Some(b64) => stats::decode_histogram(b64)?,
            None => stats::histogram()?,
        };
        Ok(Self {
            t: f("t").ok_or("a timeline point without \"t\"")?,
            offered: u("offered"),
            achieved: u("achieved"),
            errors: u("errors"),
            hist,
            cpu: f("server_cpu"),
            rss_mb: f("server_rss_mb"),
        })
    }

    /// Fold in the same second of another run: counts add up, histograms merge
    /// exactly; the servers' numbers take the larger (runs merged by second
    /// usually watched the same servers).
    pub fn merge(&mut self, other: &Point) -> Result<(), String> {
        self.offered += other.offered;
        self.achieved += other.achieved;
        self.errors += other.errors;
        self.hist.add(&other.hist).map_err(|e| format!("merge timeline hist: {e:?}"))?;
        let larger = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        self.cpu = larger(self.cpu, other.cpu);
        self.rss_mb = larger(self.rss_mb, other.rss_mb);
        Ok(())
    }
}

/// Merge timelines (the `"timeline"` objects of results) point by point by `t`.
pub fn merge(timelines: &[&Value]) -> Result<Value, String> {
    let mut points: BTreeMap<i64, Point> = BTreeMap::new();
    let (mut latency, mut unit) = (String::new(), String::new());
    let mut interval = 1.0;
    let mut origin = f64::INFINITY;
    for tl in timelines {
        origin = origin.min(tl.get("origin_unix").and_then(Value::as_f64).unwrap_or(f64::INFINITY));
        if latency.is_empty() {
            latency = tl.get("latency").and_then(Value::as_str).unwrap_or_default().to_owned();
        }
        if unit.is_empty() {
            unit = tl.get("unit").and_then(Value::as_str).unwrap_or_default().to_owned();
        }
        interval = tl.get("interval_s").and_then(Value::as_f64).unwrap_or(interval);
        let list = tl.get("points").and_then(Value::as_array).cloned().unwrap_or_default();
        for v in &list {
            let p = Point::from_json(v)?;
            let key = (p.t * 1000.0).round() as i64;
            match points.get_mut(&key) {
                Some(mine) => mine.merge(&p)?,
                None => {
                    points.insert(key, p);
                }
            }
        }
    }
    let points: Result<Vec<Value>, String> = points.values().map(Point::to_json).collect();
    let mut out =
        json!({"interval_s": interval, "latency": latency, "unit": unit, "points": points?});
    if origin.is_finite() {
        out["origin_unix"] = json!(origin);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process-wide recorder is shared by the tests of this module: one
    /// test uses it.
    #[test]
    fn events_land_in_their_second_and_setup_in_the_first() {
        let t0 = Instant::now();
        arm();
        error(t0);
        offered(t0 + Duration::from_millis(300), 1);
        let origin = t0 + Duration::from_secs(10);
        begin(origin, "match_latency", "arrivals");
        let at = |ms: u64| origin + Duration::from_millis(ms);
        offered(at(0), 2);
        offered(at(999), 1);
        offered(at(1_000), 5);
        achieved(at(2_500), 3);
        latency(at(2_500), 1_000);
        latency(at(2_600), 3_000);
        error(at(3_100));
        let tl = take().expect("take");
        let points = tl["points"].as_array().expect("points");
        assert_eq!(points.len(), 4);
        let field = |i: usize, k: &str| points[i][k].as_u64().expect(k);
        assert_eq!((field(0, "offered"), field(0, "errors")), (4, 1), "setup in second 0");
        assert_eq!(field(1, "offered"), 5);
        assert_eq!((field(2, "achieved"), field(2, "count")), (3, 2));
        assert!((points[2]["max_ms"].as_f64().expect("max") - 3.0).abs() < 0.01);
        assert_eq!(field(3, "errors"), 1);
        assert_eq!(tl["latency"], "match_latency");
        assert!(points[0]["server_cpu"].is_null());
        // Taken: the next run starts empty.
        assert_eq!(take().expect("take")["points"].as_array().map(Vec::len), Some(0));
    }

    fn point(t: f64, samples: &[u64], cpu: Option<f64>) -> Point {
        let mut hist = stats::histogram().expect("h");
        for &us in samples {
            stats::record(&mut hist, us);
        }
        let n = samples.len() as u64;
        Point { t, offered: n, achieved: n, errors: 0, hist, cpu, rss_mb: None }
    }

    fn timeline(points: &[Point]) -> Value {
        let points: Vec<Value> = points.iter().map(|p| p.to_json().expect("json")).collect();
        json!({"interval_s": 1.0, "latency": "l", "unit": "u", "points": points})
    }

    #[test]
    fn timelines_merge_by_second_exactly() {
        let a = timeline(&[point(0.0, &[100, 200], Some(0.5)), point(1.0, &[5_000], None)]);
        let b = timeline(&[point(1.0, &[7_000, 9_000], Some(0.25)), point(2.0, &[1], None)]);
        let m = merge(&[&a, &b]).expect("merge");
        let points = m["points"].as_array().expect("points");
        assert_eq!(points.len(), 3);
        assert_eq!(points[1]["count"], 3);
        assert_eq!(points[1]["offered"], 3);
        assert!((points[1]["max_ms"].as_f64().expect("max") - 9.0).abs() < 0.01);
        assert_eq!(points[0]["server_cpu"], 0.5);
        assert_eq!(points[1]["server_cpu"], 0.25);
        let h = stats::decode_histogram(points[1]["hist"].as_str().expect("hist")).expect("decode");
        let mut all = stats::histogram().expect("h");
        for us in [5_000, 7_000, 9_000] {
            stats::record(&mut all, us);
        }
        assert_eq!(h, all, "merged histogram == one histogram of all samples");
    }
}
