//! `idle-capacity`: open `sessions` connections at `connect_rate`/s, hold them
//! all for `hold_secs`, then close them.
//!
//! Numbers: `connect_latency` (scheduled → `welcome`), `connected`, refusals by
//! kind, `handshakes_per_s` (sessions opened over the arrival window), and from
//! the servers' own `/metrics`, sampled while sessions pile up (worker 0 only):
//! `server.peak_sessions`, `server.rss_baseline_mib`, `server.rss_peak_mib` and
//! `server.rss_per_session_kib`, the least-squares slope of resident memory
//! against open sessions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;

use super::{arrivals, failed, progress, server, Ctx};
use crate::scenario::report::Report;
use crate::stats;

async fn sample_until(urls: Vec<String>, mut stop: watch::Receiver<bool>) -> Vec<server::Usage> {
    let mut points = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Ok(u) = server::usage_of_all(&urls).await {
                    points.push(u);
                }
            }
            _ = stop.changed() => break,
        }
    }
    if let Ok(u) = server::usage_of_all(&urls).await {
        points.push(u);
    }
    points
}

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let s = &ctx.scenario;
    let p = s.idle.as_ref().ok_or("no [idle] table")?;
    let count = ctx.share.count(p.sessions);
    let rate = ctx.share.rate(p.connect_rate);
    let start = Instant::now() + Duration::from_millis(200);
    let arrivals_end = start + Duration::from_secs_f64(count as f64 / rate);
    let release = (arrivals_end + Duration::from_secs_f64(p.hold_secs)).min(ctx.deadline);
    let sample = (ctx.share.index == 0).then_some(&s.urls[..]);
    hold(&ctx.dialer, count, rate, start, release, ctx.deadline, sample).await
}

/// `count` sessions opened at `rate`/s from `start`, all held until `release`;
/// with `sample`, those servers' memory is followed meanwhile.
pub async fn hold(
    dialer: &super::net::Dialer,
    count: usize,
    rate: f64,
    start: Instant,
    release: Instant,
    deadline: Instant,
    sample: Option<&[String]>,
) -> Result<Report, String> {
    let mut report = Report::default();
    let baseline = match sample {
        Some(urls) => server::usage_of_all(urls).await.ok(),
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let sampler = sample.map(|urls| tokio::spawn(sample_until(urls.to_vec(), stop_rx)));
    let dialer = Arc::new(dialer.clone());
    let results = arrivals(count, rate, start, deadline, |i, due| {
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
                    () = &mut held => break Ok((latency, connected)),
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
    })
    .await;
    let _ = stop_tx.send(true);
    report.declare("connect_latency")?;
    let mut last_connected = start;
    for r in &results {
        match r {
            Ok((us, at)) => {
                report.record("connect_latency", *us)?;
                report.count("connected", 1);
                last_connected = last_connected.max(*at);
            }
            Err(f) => failed(&mut report, f),
        }
    }
    report.count("connected", 0);
    report.count("errors.total", 0);
    let window = last_connected.saturating_duration_since(start).as_secs_f64().max(1e-3);
    report.set("handshakes_per_s", report.counters["connected"] as f64 / window);
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
    // Only the growing part: memory freed while sessions close would bend the line.
    let rising: Vec<(f64, f64)> = points
        .iter()
        .take_while(|u| u.sessions < peak.sessions)
        .chain(points.iter().find(|u| u.sessions >= peak.sessions))
        .map(|u| (u.sessions, u.rss_bytes))
        .collect();
    report.count("server.rss_samples", rising.len() as u64);
    if let Some(slope) = server::slope(&rising) {
        report.set("server.rss_per_session_kib", slope / 1024.0);
    }
    if peak.sessions > 0.0 {
        let whole = (peak.rss_bytes - base.rss_bytes) / peak.sessions / 1024.0;
        report.set("server.rss_growth_per_session_kib", whole);
    }
    if std::env::var_os("RENDEZVOUS_LOADTEST_DUMP_SAMPLES").is_some() {
        for u in points {
            eprintln!("sample: sessions {} rss {}", u.sessions, u.rss_bytes);
        }
    }
}
