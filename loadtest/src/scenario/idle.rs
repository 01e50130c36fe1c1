//! `idle-capacity`: open `sessions` connections at `connect_rate`/s in `steps`
//! equal steps with a pause after each, hold them all for `hold_secs`, then close
//! them.
//!
//! Numbers: `connect_latency` (scheduled → `welcome`), `connected`, refusals by
//! kind, `handshakes_per_s` (sessions opened over the time spent opening, pauses
//! excluded), and from the servers' own `/metrics` (worker 0 only), read at the
//! end of every pause, when the servers are quiet: `server.peak_sessions`,
//! `server.rss_baseline_mib`, `server.rss_peak_mib`,
//! `server.rss_per_session_kib` (least-squares slope of resident memory against
//! open sessions over the steps: the cost of one more session) and
//! `server.rss_growth_per_session_kib` (growth over the baseline divided by the
//! sessions; meaningful on a freshly started server only, since freed memory is
//! not always returned to the system).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{arrivals, failed, progress, server, Ctx};
use crate::scenario::report::Report;
use crate::stats;

/// When sessions open: `per_step` at `rate`/s, then a pause, and again.
#[derive(Clone, Copy)]
pub struct Steps {
    pub start: Instant,
    pub rate: f64,
    pub per_step: usize,
    pub pause: Duration,
}

impl Steps {
    fn due(&self, i: usize) -> Instant {
        let step = i / self.per_step.max(1);
        self.start + Duration::from_secs_f64(i as f64 / self.rate) + self.pause * step as u32
    }

    /// The end of step `k`'s pause.
    fn quiet(&self, k: usize, count: usize) -> Instant {
        let last = ((k + 1) * self.per_step).min(count);
        self.start + Duration::from_secs_f64(last as f64 / self.rate) + self.pause * (k as u32 + 1)
    }
}

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let s = &ctx.scenario;
    let p = s.idle.as_ref().ok_or("no [idle] table")?;
    let count = ctx.share.count(p.sessions);
    let steps = Steps {
        start: Instant::now() + Duration::from_millis(200),
        rate: ctx.share.rate(p.connect_rate),
        per_step: count.div_ceil(p.steps.max(1)),
        pause: Duration::from_millis(p.step_pause_ms),
    };
    let opened = steps.quiet(p.steps.saturating_sub(1), count);
    let release = (opened + Duration::from_secs_f64(p.hold_secs)).min(ctx.deadline);
    let sample = (ctx.share.index == 0).then_some(&s.urls[..]);
    hold(&ctx.dialer, count, steps, release, ctx.deadline, sample).await
}

/// Read the servers' usage at the end of every step's pause.
async fn sample_steps(urls: Vec<String>, steps: Steps, count: usize) -> Vec<server::Usage> {
    let mut points = Vec::new();
    let n = count.div_ceil(steps.per_step.max(1));
    for k in 0..n {
        let at = steps.quiet(k, count).checked_sub(steps.pause / 5).unwrap_or(steps.start);
        tokio::time::sleep_until(at.into()).await;
        if let Ok(u) = server::usage_of_all(&urls).await {
            points.push(u);
        }
    }
    points
}

/// `count` sessions opened on the `steps` schedule, all held until `release`;
/// with `sample`, those servers' memory is read at every step.
pub async fn hold(
    dialer: &super::net::Dialer,
    count: usize,
    steps: Steps,
    release: Instant,
    deadline: Instant,
    sample: Option<&[String]>,
) -> Result<Report, String> {
    let mut report = Report::default();
    let baseline = match sample {
        Some(urls) => server::usage_of_all(urls).await.ok(),
        None => None,
    };
    let sampler = sample.map(|urls| tokio::spawn(sample_steps(urls.to_vec(), steps, count)));
    let dialer = Arc::new(dialer.clone());
    let results = arrivals(
        count,
        |i| steps.due(i),
        deadline,
        |i, due| {
            let dialer = dialer.clone();
            async move {
                let user = dialer.user(&format!("i{i}"));
                let (mut m, _) = dialer.open(dialer.url(i), user).await?;
                let connected = Instant::now();
                let latency = stats::micros(connected.saturating_duration_since(due));
                let held = tokio::time::sleep_until(release.into());
                tokio::pin!(held);
                let outcome = loop {
                    tokio::select! {
                        () = &mut held => break Ok(latency),
                        next = m.ws.next() => if !matches!(next, Some(Ok(_))) {
                            break Err(crate::client::Failure::Closed {
                                user: m.user.clone(), waiting_for: "the end of the hold" });
                        }
                    }
                };
                let _ = m.ws.close(None).await;
                progress::closed();
                outcome
            }
        },
    )
    .await;
    report.declare("connect_latency")?;
    for r in &results {
        match r {
            Ok(us) => {
                report.record("connect_latency", *us)?;
                report.count("connected", 1);
            }
            Err(f) => failed(&mut report, f),
        }
    }
    report.count("connected", 0);
    report.count("errors.total", 0);
    // The time spent opening: the schedule's own length without its pauses, plus
    // how late the last session was.
    let tail = report.histos.get("connect_latency").map_or(0, |h| h.max());
    let opening = count as f64 / steps.rate + tail as f64 / 1e6;
    report.set("handshakes_per_s", report.counters["connected"] as f64 / opening.max(1e-3));
    if let Some(sampler) = sampler {
        let points = sampler.await.map_err(|e| format!("sampler: {e}"))?;
        usage_books(&mut report, baseline, &points);
    }
    Ok(report)
}

fn usage_books(report: &mut Report, baseline: Option<server::Usage>, points: &[server::Usage]) {
    let Some(base) = baseline else {
        report.note("server_note", "the servers' /metrics could not be read: no memory figures");
        return;
    };
    const MIB: f64 = 1_048_576.0;
    let peak = points.iter().fold(base, |a, u| server::Usage {
        rss_bytes: a.rss_bytes.max(u.rss_bytes),
        open_fds: a.open_fds.max(u.open_fds),
        sessions: a.sessions.max(u.sessions),
    });
    report.set("server.peak_sessions", peak.sessions);
    report.set("server.rss_baseline_mib", base.rss_bytes / MIB);
    report.set("server.rss_peak_mib", peak.rss_bytes / MIB);
    report.set("server.peak_open_fds", peak.open_fds);
    let line: Vec<(f64, f64)> =
        std::iter::once(&base).chain(points).map(|u| (u.sessions, u.rss_bytes)).collect();
    report.count("server.rss_samples", line.len() as u64);
    if let Some(slope) = server::slope(&line) {
        report.set("server.rss_per_session_kib", slope / 1024.0);
    }
    if peak.sessions > 0.0 {
        let whole = (peak.rss_bytes - base.rss_bytes) / peak.sessions / 1024.0;
        report.set("server.rss_growth_per_session_kib", whole);
    }
    if std::env::var_os("RENDEZVOUS_LOADTEST_DUMP_SAMPLES").is_some() {
        for u in line {
            eprintln!("sample: sessions {} rss {}", u.0, u.1);
        }
    }
}
