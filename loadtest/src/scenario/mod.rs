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
pub mod net;
pub mod progress;
mod quality;
pub mod report;
mod rooms;
pub mod schedule;
pub mod server;
mod soak;
pub mod spec;
pub mod timeline;
mod storm;

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
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

    fn parse(text: &str) -> Result<Self, String> {
        let (i, n) = text.split_once('/').ok_or("--worker takes K/N")?;
        let index = i.parse().map_err(|_| "--worker K/N: K is not a number")?;
        let of: usize = n.parse().map_err(|_| "--worker K/N: N is not a number")?;
        if of == 0 || index >= of {
            return Err("--worker K/N needs K < N".into());
        }
        Ok(Share { index, of })
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
    /// `K/N`: run as worker K of N and write the raw report (internal).
    pub worker: Option<String>,
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

/// Spawn `n` worker processes of this binary and merge their reports.
async fn run_workers(scenario: &Scenario, args: &RunArgs) -> Result<Report, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let dir = std::env::temp_dir().join(format!("rendezvous-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let mut children = Vec::new();
    for k in 0..scenario.workers {
        let out = dir.join(format!("worker-{k}.json"));
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("run").arg(&args.file).arg("--worker").arg(format!("{k}/{}", scenario.workers));
        cmd.arg("--json").arg(&out).arg("--quiet");
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
        cmd.stdout(Stdio::null()).kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| format!("spawn worker {k}: {e}"))?;
        children.push((k, child, out));
    }
    let mut merged = Report::default();
    for (k, mut child, out) in children {
        let status = child.wait().await.map_err(|e| format!("worker {k}: {e}"))?;
        if !status.success() && status.code() != Some(1) {
            return Err(format!("worker {k} failed: {status}"));
        }
        let text = std::fs::read_to_string(&out).map_err(|e| format!("worker {k} report: {e}"))?;
        let wire = serde_json::from_str(&text).map_err(|e| format!("worker {k} report: {e}"))?;
        merged.merge(Report::from_wire(&wire)?)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(merged)
}

/// Raise the open-files limit as far as allowed (a run opens a socket per user).
fn raise_nofile() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: cannot raise the open-files limit: {e}");
    }
}

/// `Ok(true)` when every threshold holds.
pub async fn run(mut args: RunArgs) -> Result<bool, String> {
    if args.jwt_secret.is_none() {
        args.jwt_secret = std::env::var("RENDEZVOUS_LOADTEST_JWT_SECRET").ok();
    }
    let scenario = Scenario::load(&args.file, args.smoke, &args.overrides)?;
    if let Some(w) = &args.worker {
        let share = Share::parse(w)?;
        let report = run_share(scenario, share, &args).await?;
        let path = args.json.as_ref().ok_or("--worker needs --json")?;
        crate::stats::write_json(path, &report.to_wire()?)?;
        return Ok(true);
    }
    let label = scenario.name.clone();
    eprintln!(
        "scenario {} ({}): {} — {} url(s), {} worker(s), {} s",
        scenario.name,
        scenario.kind.name(),
        scenario.description,
        scenario.urls.len(),
        scenario.workers,
        scenario.duration_secs
    );
    raise_nofile();
    let ticker = progress::start(label, args.quiet || scenario.workers > 1);
    let result = if scenario.workers > 1 {
        run_workers(&scenario, &args).await
    } else {
        run_share(scenario.clone(), Share::WHOLE, &args).await
    };
    progress::stop(ticker);
    let report = result?;
    let results = report.results();
    let verdicts = report::check(&results, &scenario.thresholds);
    println!("{}", report.table());
    for v in &verdicts {
        println!("{}", v.line());
    }
    let pass = verdicts.iter().all(|v| v.pass);
    println!("scenario {}: {}", scenario.name, if pass { "PASS" } else { "FAIL" });
    if let Some(path) = &args.json {
        let thresholds: Vec<_> = verdicts
            .iter()
            .map(|v| {
                json!({"path": v.path, "min": v.bound.min, "max": v.bound.max,
                            "got": v.got, "pass": v.pass})
            })
            .collect();
        let doc = json!({"scenario": scenario.name, "kind": scenario.kind.name(),
            "description": scenario.description, "smoke": args.smoke, "urls": scenario.urls,
            "workers": scenario.workers, "duration_s": scenario.duration_secs,
            "results": results, "thresholds": thresholds, "pass": pass});
        crate::stats::write_json(path, &doc)?;
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
        assert!(Share::parse("3/3").is_err());
        assert_eq!(Share::parse("1/4").map(|s| (s.index, s.of)), Ok((1, 4)));
    }
}
