//! Mode `capacity`: the highest value of one scenario parameter (a rate,
//! usually) at which every threshold of the scenario still holds.
//!
//! Each step runs the scenario `--repeats` times at one value, each run a child
//! process of this binary (`run FILE --set PARAM=VALUE --json …`), optionally
//! after `--restart-cmd` gave it fresh servers. A step holds when the *median*
//! over its runs of each threshold's number meets the bound (the rule of
//! BENCHMARKS.md). The search steps up by `--factor` while steps hold, then
//! bisects between the highest value that held and the lowest that failed (see
//! [`search`]), bounded by `--max-steps` and `--max-time`.

pub mod search;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use self::search::{Next, Phase, Plan};
use crate::scenario::report::lookup;
use crate::scenario::server;
use crate::scenario::spec::{Bound, Overrides, Scenario};

/// What `capacity` was asked on the command line.
pub struct Args {
    pub file: PathBuf,
    pub param: Option<String>,
    pub start: Option<f64>,
    pub factor: f64,
    pub resolution: f64,
    pub repeats: usize,
    pub max_steps: usize,
    pub max_time_secs: f64,
    pub restart_cmd: Option<String>,
    pub json: Option<PathBuf>,
    pub keep: Option<PathBuf>,
    pub urls: Vec<String>,
    pub sets: Vec<String>,
    pub duration_secs: Option<f64>,
    pub label: Option<String>,
    pub smoke: bool,
}

/// How long servers get to answer `/readyz` after `--restart-cmd`.
const READY_WAIT: Duration = Duration::from_secs(60);

/// One run of a step.
struct RunOutcome {
    /// None: the run could not be done (exit 2, a crash, no result file).
    pass: Option<bool>,
    file: PathBuf,
    /// Each threshold's number, by path.
    got: BTreeMap<String, f64>,
    throughput: Option<f64>,
    thresholds: Value,
    error: Option<String>,
}

/// One step: a value and its runs.
struct StepOutcome {
    value: f64,
    phase: Phase,
    pass: bool,
    median: BTreeMap<String, f64>,
    throughput: Option<f64>,
    runs: Vec<RunOutcome>,
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
}

fn holds(bound: &Bound, v: f64) -> bool {
    bound.min.is_none_or(|min| v >= min) && bound.max.is_none_or(|max| v <= max)
}

fn want(bound: &Bound) -> String {
    match (bound.min, bound.max) {
        (Some(a), Some(b)) => format!("in [{a}, {b}]"),
        (Some(a), None) => format!(">= {a}"),
        (None, Some(b)) => format!("<= {b}"),
        (None, None) => "anything".into(),
    }
}

/// The value at dotted `path` in a TOML table.
fn toml_at<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut keys = path.split('.');
    let mut at = table.get(keys.next()?)?;
    for key in keys {
        at = at.as_table()?.get(key)?;
    }
    Some(at)
}

fn as_number(v: &toml::Value) -> Option<f64> {
    v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
}

/// The parameter's value in the file as a run would see it: the last
/// `--set PARAM=…`, else the `[smoke]` table's (with `--smoke`), else the file's.
pub fn current_value(text: &str, smoke: bool, sets: &[String], param: &str) -> Option<f64> {
    for s in sets.iter().rev() {
        if let Some((k, v)) = s.split_once('=') {
            if k.trim() == param {
                return v.trim().parse().ok();
            }
        }
    }
    let table: toml::Table = toml::from_str(text).ok()?;
    if smoke {
        if let Some(v) =
            table.get("smoke").and_then(toml::Value::as_table).and_then(|s| toml_at(s, param))
        {
            return as_number(v);
        }
    }
    toml_at(&table, param).and_then(as_number)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Whether the server behind `url` is ready: `/readyz` answers 200; a server
/// without `/readyz` (the relay: no answer, or any other status than 503)
/// may answer `/healthz` instead.
async fn ready(url: &str) -> bool {
    match server::get(url, "/readyz").await {
        Ok((200, _)) => true,
        Ok((503, _)) => false,
        // No answer or another status: a server without /readyz (the relay
        // closes the connection) may answer /healthz.
        Ok(_) | Err(_) => matches!(server::get(url, "/healthz").await, Ok((200, _))),
    }
}

/// Wait until every url is ready, at most `READY_WAIT`.
async fn wait_ready(urls: &[String], why: &str) -> Result<(), String> {
    let until = Instant::now() + READY_WAIT;
    // Only ws:// is probed (wss:// is refused with --restart-cmd up front).
    for url in urls.iter().filter(|u| server::http_base(u).is_some()) {
        while !ready(url).await {
            if Instant::now() >= until {
                return Err(format!(
                    "{url}: /readyz did not answer 200 within {} s {why}",
                    READY_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn restart(cmd: &str, urls: &[String]) -> Result<(), String> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .status()
        .await
        .map_err(|e| format!("--restart-cmd: cannot run sh: {e}"))?;
    if !status.success() {
        return Err(format!("--restart-cmd {cmd:?} failed: {status}"));
    }
    wait_ready(urls, "after --restart-cmd").await
}

/// A number for a `--set` value and for people: `20` rather than `20.0`.
fn show(v: f64) -> String {
    format!("{v}")
}

/// One child `run` at `value`.
async fn run_once(
    args: &Args,
    label: &str,
    param: &str,
    value: f64,
    out: PathBuf,
    throughput_path: Option<&str>,
) -> Result<RunOutcome, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let _ = std::fs::remove_file(&out);
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("run").arg(&args.file).arg("--json").arg(&out).arg("--quiet");
    if args.smoke {
        cmd.arg("--smoke");
    }
    for url in &args.urls {
        cmd.arg("--url").arg(url);
    }
    if let Some(d) = args.duration_secs {
        cmd.arg("--duration-secs").arg(d.to_string());
    }
    for s in &args.sets {
        cmd.arg("--set").arg(s);
    }
    cmd.arg("--set").arg(format!("{param}={}", show(value)));
    cmd.arg("--label").arg(format!("{label} {param}={}", show(value)));
    if let Some(ca) = crate::client::ca_file() {
        cmd.env(crate::client::CA_FILE_ENV, ca);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = cmd.output().await.map_err(|e| format!("spawn a run: {e}"))?;
    let stderr = String::from_utf8_lossy(&child.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join(" / ");
    let not_done = |error: String| RunOutcome {
        pass: None,
        file: out.clone(),
        got: BTreeMap::new(),
        throughput: None,
        thresholds: json!([]),
        error: Some(error),
    };
    if !matches!(child.status.code(), Some(0 | 1)) {
        return Ok(not_done(format!("run ended with {}: {tail}", child.status)));
    }
    let doc: Value = match std::fs::read_to_string(&out)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(doc) => doc,
        Err(e) => return Ok(not_done(format!("result {}: {e}", out.display()))),
    };
    let thresholds = doc.get("thresholds").cloned().unwrap_or_else(|| json!([]));
    let got = thresholds
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    Some((t.get("path")?.as_str()?.to_owned(), t.get("got")?.as_f64()?))
                })
                .collect()
        })
        .unwrap_or_default();
    let throughput = throughput_path.and_then(|p| lookup(&doc["results"], p));
    Ok(RunOutcome {
        pass: doc.get("pass").and_then(Value::as_bool),
        file: out,
        got,
        throughput,
        thresholds,
        error: None,
    })
}

/// Decide a step on the median of each threshold's number over its runs; a
/// run that could not be done fails the step.
fn decide(
    runs: &[RunOutcome],
    bounds: &BTreeMap<String, Bound>,
) -> (bool, BTreeMap<String, f64>, Option<f64>) {
    let mut medians = BTreeMap::new();
    let mut pass = !runs.is_empty() && runs.iter().all(|r| r.pass.is_some());
    for (path, bound) in bounds {
        let mut values: Vec<f64> = runs.iter().filter_map(|r| r.got.get(path).copied()).collect();
        match median(&mut values) {
            Some(m) => {
                pass &= holds(bound, m);
                medians.insert(path.clone(), m);
            }
            None => pass = false,
        }
    }
    let mut through: Vec<f64> = runs.iter().filter_map(|r| r.throughput).collect();
    (pass, medians, median(&mut through))
}

fn step_line(
    k: usize,
    s: &StepOutcome,
    param: &str,
    bounds: &BTreeMap<String, Bound>,
    tp: Option<&str>,
) -> String {
    let mut line = format!(
        "step {k:>2} {:<6} {param}={:<10} {}",
        s.phase.name(),
        show(s.value),
        if s.pass { "PASS" } else { "FAIL" }
    );
    for (path, bound) in bounds {
        let got = s.median.get(path).map_or_else(|| "missing".to_owned(), |v| format!("{v:.4}"));
        let got = got.trim_end_matches('0').trim_end_matches('.');
        line.push_str(&format!("  {path}={got} ({})", want(bound)));
    }
    if let (Some(p), Some(t)) = (tp, s.throughput) {
        line.push_str(&format!("  {p}={t:.1}"));
    }
    let undone = s.runs.iter().filter(|r| r.pass.is_none()).count();
    if undone > 0 {
        line.push_str(&format!("  ({undone} run(s) not done)"));
    }
    line
}

/// `Ok(true)` when some value held, `Ok(false)` when even the start failed its
/// thresholds; `Err` when the start could not be run at all.
pub async fn run(args: Args) -> Result<bool, String> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| format!("read {}: {e}", args.file.display()))?;
    let overrides = Overrides {
        urls: args.urls.clone(),
        duration_secs: args.duration_secs,
        sets: args.sets.clone(),
        ..Overrides::default()
    };
    let scenario = Scenario::parse(&text, args.smoke, &overrides)
        .map_err(|e| format!("{}: {e}", args.file.display()))?;
    let spec = scenario.capacity.clone().unwrap_or_default();
    let param = args.param.clone().or(spec.param.clone()).ok_or_else(|| {
        format!(
            "{}: no parameter to search: give --param KEY (e.g. chat.rate) or a [capacity] table \
             with param = \"…\"",
            args.file.display()
        )
    })?;
    // The parameter must be one the file knows (a typo would search nothing).
    Scenario::parse(
        &text,
        args.smoke,
        &Overrides {
            sets: [args.sets.clone(), vec![format!("{param}={}", 1)]].concat(),
            ..overrides.clone()
        },
    )
    .map_err(|e| format!("--param {param}: {e} (is it a setting of the file?)"))?;
    let start = args
        .start
        .or(spec.start)
        .or_else(|| current_value(&text, args.smoke, &args.sets, &param))
        .ok_or_else(|| {
            format!("no start value: {param} is not a number in the file; give --start X")
        })?;
    let positive = |what: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(format!("{what} must be a positive number, got {v}"))
        }
    };
    positive("--start", start)?;
    positive("--resolution", args.resolution)?;
    positive("--max-time", args.max_time_secs)?;
    if !(args.factor.is_finite() && args.factor > 1.0) {
        return Err(format!("--factor must be greater than 1, got {}", args.factor));
    }
    if args.repeats == 0 || args.max_steps == 0 {
        return Err("--repeats and --max-steps must be at least 1".into());
    }
    if scenario.thresholds.is_empty() {
        return Err(format!(
            "{}: the scenario states no thresholds, so nothing can hold or fail",
            args.file.display()
        ));
    }
    let urls = scenario.urls.clone();
    if args.restart_cmd.is_some() {
        if let Some(bad) = urls.iter().find(|u| server::http_base(u).is_none()) {
            return Err(format!(
                "--restart-cmd waits for /readyz, which is probed on ws:// only: {bad}"
            ));
        }
    }
    let throughput_path = spec.throughput.clone();
    let label = args.label.clone().unwrap_or_else(|| scenario.name.clone());
    let dir = match (&args.keep, &args.json) {
        (Some(k), _) => k.clone(),
        (None, Some(j)) => runs_dir_for(j),
        (None, None) => {
            std::env::temp_dir().join(format!("rendezvous-capacity-{}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let plan =
        Plan { start, factor: args.factor, resolution: args.resolution, integer: spec.integer };
    eprintln!(
        "capacity {} ({}): {param} from {} (x{}, resolution {}), {} repeat(s) per step, at most {} \
         step(s) and {} s; runs kept in {}",
        scenario.name,
        scenario.kind.name(),
        show(start),
        args.factor,
        args.resolution,
        args.repeats,
        args.max_steps,
        args.max_time_secs,
        dir.display()
    );
    let started_unix = unix_now();
    let began = Instant::now();
    let max_time = Duration::from_secs_f64(args.max_time_secs);
    let mut steps: Vec<StepOutcome> = Vec::new();
    let reason = loop {
        let history: Vec<(f64, bool)> = steps.iter().map(|s| (s.value, s.pass)).collect();
        let (value, phase) = match search::next(&plan, &history) {
            Next::Done(why) => break why,
            Next::Try(v, p) => (v, p),
        };
        if steps.len() >= args.max_steps {
            break format!("reached --max-steps {}", args.max_steps);
        }
        if began.elapsed() >= max_time {
            break format!("reached --max-time {} s", args.max_time_secs);
        }
        let k = steps.len() + 1;
        let mut runs = Vec::new();
        for rep in 1..=args.repeats {
            match &args.restart_cmd {
                Some(cmd) => restart(cmd, &urls).await?,
                None if k == 1 && rep == 1 => wait_ready(&urls, "(is the server running?)").await?,
                None => {}
            }
            let out = dir.join(format!("step-{k}-rep-{rep}.json"));
            let run =
                run_once(&args, &label, &param, value, out, throughput_path.as_deref()).await?;
            if let Some(e) = &run.error {
                eprintln!("step {k} repeat {rep}: not done: {e}");
            }
            runs.push(run);
        }
        if k == 1 && runs.iter().all(|r| r.pass.is_none()) {
            let why = runs.iter().filter_map(|r| r.error.clone()).next().unwrap_or_default();
            return Err(format!("the start ({param}={}) could not be run: {why}", show(value)));
        }
        let (pass, median, throughput) = decide(&runs, &scenario.thresholds);
        let step = StepOutcome { value, phase, pass, median, throughput, runs };
        println!(
            "{}",
            step_line(k, &step, &param, &scenario.thresholds, throughput_path.as_deref())
        );
        steps.push(step);
    };
    let history: Vec<(f64, bool)> = steps.iter().map(|s| (s.value, s.pass)).collect();
    let (held, failed) = search::bracket(&history);
    let held_step = held.and_then(|h| steps.iter().rev().find(|s| s.pass && s.value == h));
    let unit = spec.unit.clone().unwrap_or_default();
    println!();
    println!("evidence ({} repeat(s) per step, medians):", args.repeats);
    for (k, s) in steps.iter().enumerate() {
        println!(
            "{}",
            step_line(k + 1, s, &param, &scenario.thresholds, throughput_path.as_deref())
        );
    }
    println!("stopped: {reason}");
    match held {
        Some(h) => {
            let through = held_step
                .and_then(|s| s.throughput)
                .zip(throughput_path.as_deref())
                .map(|(t, p)| format!(", {p} {t:.1}/s (median)"))
                .unwrap_or_default();
            let unit = if unit.is_empty() { String::new() } else { format!(", {unit}") };
            println!(
                "held up to {}/s ({param}{unit}){through}; first failed at {}",
                show(h),
                failed.map_or_else(|| "none tried".to_owned(), show)
            );
        }
        None => println!("held at no value tried: {param}={} already fails", show(start)),
    }
    let doc = json!({
        "format": 2, "label": label, "host": hostname(), "started_unix": started_unix,
        "scenario": scenario.name, "kind": scenario.kind.name(), "smoke": args.smoke,
        "urls": urls,
        "capacity": {
            "param": param, "unit": unit, "throughput_path": throughput_path,
            "held_up_to": held, "first_failed": failed, "repeats": args.repeats,
            "start": start, "factor": args.factor, "resolution": args.resolution,
            "reason": reason, "elapsed_s": began.elapsed().as_secs_f64(), "runs_dir": dir,
            "thresholds": scenario.thresholds.iter()
                .map(|(p, b)| json!({"path": p, "min": b.min, "max": b.max}))
                .collect::<Vec<_>>(),
            "steps": steps.iter().map(|s| json!({
                "value": s.value, "phase": s.phase.name(), "pass": s.pass,
                "median": s.median, "throughput": s.throughput,
                "runs": s.runs.iter().map(|r| json!({
                    "pass": r.pass, "thresholds": r.thresholds, "file": r.file,
                    "error": r.error,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }
    });
    if let Some(path) = &args.json {
        crate::stats::write_json(path, &doc)?;
    }
    Ok(held.is_some())
}

/// Where a capacity search keeps its runs, for a given `--json` path.
pub fn runs_dir_for(json: &Path) -> PathBuf {
    let stem = json.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    json.with_file_name(format!("{stem}-runs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(pass: Option<bool>, got: &[(&str, f64)], throughput: Option<f64>) -> RunOutcome {
        RunOutcome {
            pass,
            file: PathBuf::from("x.json"),
            got: got.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            throughput,
            thresholds: json!([]),
            error: None,
        }
    }

    #[test]
    fn medians_decide_a_step() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let bounds: BTreeMap<String, Bound> =
            [("lat".to_owned(), Bound { min: None, max: Some(10.0) })].into_iter().collect();
        // One bad run of three: the median holds.
        let runs = vec![
            outcome(Some(true), &[("lat", 5.0)], Some(100.0)),
            outcome(Some(false), &[("lat", 50.0)], Some(90.0)),
            outcome(Some(true), &[("lat", 6.0)], Some(80.0)),
        ];
        let (pass, med, through) = decide(&runs, &bounds);
        assert!(pass);
        assert_eq!((med["lat"], through), (6.0, Some(90.0)));
        // Two bad of three: it fails.
        let runs = vec![
            outcome(Some(false), &[("lat", 11.0)], None),
            outcome(Some(false), &[("lat", 50.0)], None),
            outcome(Some(true), &[("lat", 6.0)], None),
        ];
        assert!(!decide(&runs, &bounds).0);
        // A run that could not be done fails the step; so does a missing number.
        let runs = vec![outcome(Some(true), &[("lat", 1.0)], None), outcome(None, &[], None)];
        assert!(!decide(&runs, &bounds).0);
        assert!(!decide(&[outcome(Some(true), &[], None)], &bounds).0);
    }

    #[test]
    fn the_start_comes_from_sets_smoke_or_the_file() {
        let text = "[chat]\nrate = 10\n[smoke]\nchat = { rate = 2.5 }\n";
        assert_eq!(current_value(text, false, &[], "chat.rate"), Some(10.0));
        assert_eq!(current_value(text, true, &[], "chat.rate"), Some(2.5));
        let sets = vec!["chat.rate=7".to_owned()];
        assert_eq!(current_value(text, true, &sets, "chat.rate"), Some(7.0));
        assert_eq!(current_value(text, false, &[], "chat.rooms"), None);
        assert_eq!(show(20.0), "20");
        assert_eq!(show(12.5), "12.5");
        assert_eq!(runs_dir_for(Path::new("/tmp/cap.json")), PathBuf::from("/tmp/cap-runs"));
    }
}
