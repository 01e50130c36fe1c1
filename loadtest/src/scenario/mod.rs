//! Mode `run`: a bundled (or your own) scenario file drives the load.
//!
//! A scenario names a driver (`kind`), where to connect, how much load to offer
//! and for how long, and thresholds over the numbers it reports; the run prints a
//! live progress line, then a summary table and the threshold verdicts, writes a
//! JSON result file when asked, and exits non-zero when a threshold is missed.
//! Every driver is open loop: work item `i` is *scheduled* at `start + i / rate`
//! and latencies are measured from that time, so a slow server cannot slow the
//! arrivals down and hide behind them. `loadtest/scenarios/README.md` documents
//! the file format.

mod attack;
mod chat;
mod churn;
mod failover;
mod idle;
pub mod merge;
pub mod net;
pub mod progress;
mod quality;
pub mod report;
mod rooms;
pub mod schedule;
pub mod server;
mod soak;
pub mod spec;
mod storm;
pub mod timeline;

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinSet;

use self::net::Dialer;
use self::report::Report;
use self::schedule::Schedule;
use self::spec::{Kind, Overrides, Scenario};
use crate::client::Failure;

/// Which part of the load this process offers.
#[derive(Clone, Copy, Debug)]
pub struct Share {
    pub index: usize,
    pub of: usize,
}

impl Share {
    pub const WHOLE: Share = Share { index: 0, of: 1 };

    /// This process's part of a total count.
    pub fn count(&self, total: usize) -> usize {
        total / self.of + usize::from(self.index < total % self.of)
    }

    pub fn rate(&self, total: f64) -> f64 {
        total / self.of as f64
    }

    /// `K/N`: part K (1-based) of N.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (k, n) = text.split_once('/').ok_or("--worker takes K/N, e.g. 1/2")?;
        let k: usize = k.trim().parse().map_err(|_| "--worker K/N: K is not a number")?;
        let of: usize = n.trim().parse().map_err(|_| "--worker K/N: N is not a number")?;
        if of == 0 || of > 1_000 || k == 0 || k > of {
            return Err(format!("--worker K/N needs 1 ≤ K ≤ N ≤ 1000, got {text}"));
        }
        Ok(Share { index: k - 1, of })
    }
}

/// What `run` was asked on the command line.
pub struct RunArgs {
    pub file: PathBuf,
    pub smoke: bool,
    pub overrides: Overrides,
    pub json: Option<PathBuf>,
    pub jwt_secret: Option<String>,
    pub quiet: bool,
    /// `K/N`: run part K (1-based) of N of the load (`merge` joins the parts).
    pub worker: Option<String>,
    /// The run's name in reports (default: the scenario's).
    pub label: Option<String>,
}

/// Everything a driver needs.
pub struct Ctx {
    pub scenario: Scenario,
    pub dialer: Dialer,
    pub share: Share,
    /// Latest time any work may be scheduled or awaited.
    pub deadline: Instant,
}

/// One open-loop stream of arrivals on `schedule` through `dialer`, none
/// scheduled after `deadline`.
#[derive(Clone)]
pub struct Stream<'a> {
    pub dialer: &'a Dialer,
    pub schedule: Schedule,
    pub deadline: Instant,
}

impl<'a> Stream<'a> {
    /// `rate` per second for `secs`.
    pub fn steady(dialer: &'a Dialer, rate: f64, secs: f64, deadline: Instant) -> Self {
        Stream { dialer, schedule: Schedule::constant(rate, secs), deadline }
    }

    /// The mean rate over the load.
    pub fn mean_rate(&self) -> f64 {
        self.schedule.total() / self.schedule.secs().max(1e-9)
    }

    /// Run `job(i, due)` for each arrival, on the schedule from `start`; the
    /// count is rounded up to an even one, so that every user of this stream
    /// can find a partner.
    pub async fn paired<T, F>(&self, start: Instant, job: impl Fn(usize, Instant) -> F) -> Vec<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let count = self.schedule.count();
        arrivals(count + count % 2, scheduled(start, &self.schedule), self.deadline, job).await
    }
}

impl Ctx {
    /// This process's share of the driver's main load: `rate` arrivals per
    /// second for the scenario's duration, or its `[[stages]]`.
    pub fn stream(&self, rate: f64) -> Stream<'_> {
        let schedule = self.scenario.schedule(rate).scaled(self.share.rate(1.0));
        Stream { dialer: &self.dialer, schedule, deadline: self.deadline }
    }
}

/// Count one failure by kind (and note the first).
pub fn failed(report: &mut Report, f: &Failure) {
    progress::error();
    report.count(&format!("errors.{}", f.kind()), 1);
    report.count("errors.total", 1);
    report.note("first_error", f.to_string());
}

/// Item `i` of `schedule` is due at `start` plus its offset.
pub fn scheduled(start: Instant, schedule: &Schedule) -> impl Fn(usize) -> Instant + '_ {
    move |i| start + Duration::from_secs_f64(schedule.offset(i))
}

/// Run `job(i, due)` for `i` in `0..count`, item `i` due at `due(i)`
/// (non-decreasing, e.g. [`steady`]), each in its own task, none started after
/// `deadline`. Results in any order.
pub async fn arrivals<T, F>(
    count: usize,
    due: impl Fn(usize) -> Instant,
    deadline: Instant,
    job: impl Fn(usize, Instant) -> F,
) -> Vec<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let mut running = JoinSet::new();
    let mut done = Vec::with_capacity(count);
    for i in 0..count {
        let due = due(i);
        if due >= deadline {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        timeline::offered(due, 1);
        running.spawn(job(i, due));
        while let Some(r) = running.try_join_next() {
            done.extend(r.ok());
        }
    }
    while let Some(r) = running.join_next().await {
        if let Ok(r) = r {
            done.push(r);
        }
    }
    done
}

/// The secret for minted tokens: `--jwt-secret`, else the file's `secret_env`.
fn secret(s: &Scenario, cli: Option<String>) -> Result<Option<(String, u64)>, String> {
    let Some(auth) = &s.auth else {
        return Ok(cli.map(|c| (c, 3_600)));
    };
    let secret = match cli {
        Some(c) => c,
        None => std::env::var(&auth.secret_env).map_err(|_| {
            format!("[auth] needs a secret: --jwt-secret or ${} ({})", auth.secret_env, s.name)
        })?,
    };
    Ok(Some((secret, auth.ttl_secs)))
}

async fn drive(ctx: &Ctx) -> Result<Report, String> {
    match ctx.scenario.kind {
        Kind::MatchStorm => storm::run(ctx).await,
        Kind::ChatRooms => rooms::run(ctx).await,
        Kind::Churn => churn::run(ctx, false).await,
        Kind::FullFlow => churn::run(ctx, true).await,
        Kind::IdleCapacity => idle::run(ctx).await,
        Kind::Soak => soak::run(ctx).await,
        Kind::RedisFailover => failover::run(ctx).await,
        Kind::Attack => attack::run(ctx).await,
        Kind::MatchQuality => quality::run(ctx).await,
    }
}

/// Run this process's share, bounded by the scenario's `max_secs`.
async fn run_share(scenario: Scenario, share: Share, args: &RunArgs) -> Result<Report, String> {
    let secret = secret(&scenario, args.jwt_secret.clone())?;
    let tag = format!("lt{}w{}", std::process::id(), share.index);
    let wait = Duration::from_millis(scenario.timeout_ms);
    let dialer =
        Dialer::new(scenario.urls.clone(), scenario.source_addrs.clone(), secret, tag, wait);
    let max = Duration::from_secs_f64(scenario.max_secs());
    let ctx = Ctx { scenario, dialer, share, deadline: Instant::now() + max };
    let started = Instant::now();
    let mut report = tokio::time::timeout(max + Duration::from_secs(5), drive(&ctx))
        .await
        .map_err(|_| format!("the run passed its bound of {} s", max.as_secs()))??;
    report.set("elapsed_s", started.elapsed().as_secs_f64());
    Ok(report)
}

/// Set in the environment of the worker processes a run spawns: they print
/// their progress counters on standard output for the parent, and leave the
/// servers' `/metrics` to it.
const INTERNAL_WORKER_ENV: &str = "RENDEZVOUS_LOADTEST_INTERNAL_WORKER";

/// Spawn `n` worker processes of this binary; their results (the merged report
/// and their timelines).
async fn run_workers(scenario: &Scenario, args: &RunArgs) -> Result<(Report, Vec<Value>), String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let dir = std::env::temp_dir().join(format!("rendezvous-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let n = scenario.workers;
    let counters = std::sync::Arc::new(std::sync::Mutex::new(vec![[0u64; 6]; n]));
    let mut children = Vec::new();
    for k in 0..n {
        let out = dir.join(format!("worker-{}.json", k + 1));
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("run").arg(&args.file).arg("--worker").arg(format!("{}/{n}", k + 1));
        cmd.arg("--json").arg(&out).arg("--quiet");
        cmd.env(INTERNAL_WORKER_ENV, "1");
        if let Some(ca) = crate::client::ca_file() {
            cmd.env(crate::client::CA_FILE_ENV, ca);
        }
        if args.smoke {
            cmd.arg("--smoke");
        }
        for url in &args.overrides.urls {
            cmd.arg("--url").arg(url);
        }
        if let Some(d) = args.overrides.duration_secs {
            cmd.arg("--duration-secs").arg(d.to_string());
        }
        for a in &args.overrides.source_addrs {
            cmd.arg("--source-addr").arg(a.to_string());
        }
        for s in &args.overrides.sets {
            cmd.arg("--set").arg(s);
        }
        if let Some(s) = &args.jwt_secret {
            cmd.env("RENDEZVOUS_LOADTEST_JWT_SECRET", s);
        }
        cmd.stdout(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("spawn worker {}: {e}", k + 1))?;
        if let Some(stdout) = child.stdout.take() {
            let counters = counters.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let Some(c) = progress::parse_line(&line) else { continue };
                    if let Ok(mut all) = counters.lock() {
                        all[k] = c;
                        progress::store(&all);
                    }
                }
            });
        }
        children.push((k + 1, child, out));
    }
    let mut merged = Report::default();
    let mut timelines = Vec::new();
    for (k, mut child, out) in children {
        let status = child.wait().await.map_err(|e| format!("worker {k}: {e}"))?;
        if !status.success() && status.code() != Some(1) {
            return Err(format!("worker {k} failed: {status}"));
        }
        let doc = read_result(&out).map_err(|e| format!("worker {k}: {e}"))?;
        let raw = doc.get("raw").ok_or_else(|| format!("worker {k}: no \"raw\" report"))?;
        merged.merge(Report::from_wire(raw)?)?;
        timelines.extend(doc.get("timeline").cloned());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((merged, timelines))
}

/// A result file (format 2) as JSON.
pub fn read_result(path: &std::path::Path) -> Result<Value, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))
}

/// Raise the open-files limit as far as allowed (a run opens a socket per user).
fn raise_nofile() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: cannot raise the open-files limit: {e}");
    }
}

/// This machine's name, for the result.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Seconds since the epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The verdicts as the result's `"thresholds"`.
pub fn thresholds_json(verdicts: &[report::Verdict]) -> Value {
    let list: Vec<Value> = verdicts
        .iter()
        .map(|v| {
            json!({"path": v.path, "min": v.bound.min, "max": v.bound.max,
                        "got": v.got, "pass": v.pass})
        })
        .collect();
    Value::Array(list)
}

/// Print the table, the verdicts and the outcome line; whether all passed.
pub fn print_outcome(name: &str, report: &Report, verdicts: &[report::Verdict]) -> bool {
    println!("{}", report.table());
    for v in verdicts {
        println!("{}", v.line());
    }
    let pass = verdicts.iter().all(|v| v.pass);
    println!("scenario {name}: {}", if pass { "PASS" } else { "FAIL" });
    pass
}

/// `Ok(true)` when every threshold holds.
pub async fn run(mut args: RunArgs) -> Result<bool, String> {
    if args.jwt_secret.is_none() {
        args.jwt_secret = std::env::var("RENDEZVOUS_LOADTEST_JWT_SECRET").ok();
    }
    let scenario = Scenario::load(&args.file, args.smoke, &args.overrides)?;
    let internal = std::env::var(INTERNAL_WORKER_ENV).is_ok_and(|v| v == "1");
    let share = match &args.worker {
        Some(w) => {
            let share = Share::parse(w)?;
            if !scenario.kind.splits_over_workers() {
                return Err(format!(
                    "--worker: kind {} runs in one process and cannot be split",
                    scenario.kind.name()
                ));
            }
            Some(share)
        }
        None => None,
    };
    let label = args.label.clone().unwrap_or_else(|| scenario.name.clone());
    let workers = if share.is_some() { 1 } else { scenario.workers };
    if !internal {
        let part = share.map(|s| format!(" (worker {}/{})", s.index + 1, s.of)).unwrap_or_default();
        eprintln!(
            "scenario {}{part} ({}): {} — {} url(s), {} worker(s), {} s",
            scenario.name,
            scenario.kind.name(),
            scenario.description,
            scenario.urls.len(),
            workers,
            scenario.duration_secs
        );
    }
    raise_nofile();
    let started_unix = unix_now();
    timeline::arm();
    // The servers' CPU and memory, read by one process of a run (not by the
    // workers it spawns).
    let scraper = (!internal).then(|| timeline::scrape(scenario.urls.clone()));
    let ticker =
        if internal { progress::emit() } else { progress::start(label.clone(), args.quiet) };
    let result = if workers > 1 {
        run_workers(&scenario, &args).await
    } else {
        run_share(scenario.clone(), share.unwrap_or(Share::WHOLE), &args).await.map(|r| (r, vec![]))
    };
    progress::stop(ticker, internal);
    if let Some(s) = scraper {
        s.abort();
    }
    let (report, worker_timelines) = result?;
    let own = timeline::take()?;
    let timeline = if worker_timelines.is_empty() {
        own
    } else {
        // The workers' seconds count from their own load's start; this
        // process's (the servers' use) from before they started: shift them.
        let origin = worker_timelines
            .iter()
            .filter_map(|t| t.get("origin_unix").and_then(Value::as_f64))
            .fold(f64::INFINITY, f64::min);
        let shifted = timeline::shifted(&own, origin)?;
        let mut all: Vec<&Value> = worker_timelines.iter().collect();
        all.push(&shifted);
        timeline::merge(&all)?
    };
    let results = report.results();
    let verdicts = report::check(&results, &scenario.thresholds);
    let pass = if internal {
        verdicts.iter().all(|v| v.pass)
    } else {
        print_outcome(&scenario.name, &report, &verdicts)
    };
    if let Some(path) = &args.json {
        let mut doc = json!({"format": 2, "scenario": scenario.name, "label": label,
            "kind": scenario.kind.name(), "description": scenario.description,
            "host": hostname(), "started_unix": started_unix,
            "smoke": args.smoke, "urls": scenario.urls, "workers": workers,
            "duration_s": scenario.duration_secs, "results": results,
            "thresholds": thresholds_json(&verdicts), "pass": pass,
            "timeline": timeline, "raw": report.to_wire()?});
        if !scenario.stages.is_empty() {
            let stages: Vec<Value> = scenario
                .stages
                .iter()
                .map(|s| json!({"rate": s.rate, "secs": s.secs, "ramp": s.ramp}))
                .collect();
            doc["stages"] = Value::Array(stages);
        }
        if let Some(s) = share {
            doc["worker"] = json!(format!("{}/{}", s.index + 1, s.of));
        }
        crate::stats::write_json(path, &doc)?;
    } else if share.is_some() {
        return Err("--worker needs --json".into());
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        let shares: Vec<usize> = (0..3).map(|i| Share { index: i, of: 3 }.count(10)).collect();
        assert_eq!(shares, vec![4, 3, 3]);
        assert!(Share::parse("4/3").is_err());
        assert!(Share::parse("0/3").is_err());
        assert!(Share::parse("3").is_err());
        assert_eq!(Share::parse("2/4").map(|s| (s.index, s.of)), Ok((1, 4)));
        assert_eq!(Share::parse("3/3").map(|s| (s.index, s.of)), Ok((2, 3)));
    }
}
