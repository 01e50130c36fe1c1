//! `soak`: a mix held for the whole duration (chatting pairs, churning arrivals
//! and idle sessions at once), in `passes` equal passes; after each, everyone
//! leaves and, `settle_secs` later, the servers' resident memory and open files
//! are read. Files and sessions must be back where they started; memory must stop
//! growing after the first pass (the allocator keeps what the first pass freed).
//!
//! Numbers: everything the parts report, under `chat.`, `churn.` and `idle.`;
//! `server.rss_baseline_mib`, `server.rss_peak_mib`, `server.rss_after_mib`,
//! `server.rss_growth_mib` (after − baseline),
//! `server.rss_growth_after_first_pass_mib` (after the last pass − after the
//! first: the leak signal), `server.fds_baseline`,
//! `server.fds_after`, `server.fds_growth`, `server.sessions_after`, and from
//! `/api/stats` of the first node `server.online_after`, `server.searching_after`.

use std::time::{Duration, Instant};

use super::spec::{Chat, Churn, Soak};
use super::{churn, idle, rooms, server, Ctx, Stream};
use crate::scenario::report::Report;

const MIB: f64 = 1_048_576.0;

async fn peak_sampler(urls: Vec<String>, until: Instant) -> server::Usage {
    let mut peak = server::Usage::default();
    while Instant::now() < until {
        if let Ok(u) = server::usage_of_all(&urls).await {
            peak.rss_bytes = peak.rss_bytes.max(u.rss_bytes);
            peak.open_fds = peak.open_fds.max(u.open_fds);
            peak.sessions = peak.sessions.max(u.sessions);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    peak
}

/// One pass of the mix, `secs` long: chat, churn and idle at once.
async fn pass(ctx: &Ctx, p: &Soak, secs: f64) -> Result<(Report, server::Usage), String> {
    let urls = ctx.scenario.urls.clone();
    let chat = Chat {
        rooms: p.chat_pairs,
        room_size: 2,
        rate: p.chat_rate,
        text_bytes: 64,
        drain_ms: 2_000,
        setup_concurrency: 50,
        cross_node: urls.len() > 1,
        stalled_pairs: 0,
        stalled_rate: 1.0,
        stalled_text_bytes: 0,
        stalled_reading: false,
    };
    let churn = ctx.scenario.churn.clone().unwrap_or(Churn {
        rate: p.churn_rate,
        rounds: 2,
        messages: 3,
        think_ms: 50,
        ice_candidates: 0,
    });
    let start = Instant::now() + Duration::from_millis(200);
    let release = start + Duration::from_secs_f64(secs);
    let idle_rate = (p.idle_sessions as f64 / (secs / 4.0).max(0.5)).max(1.0);
    let sampler = tokio::spawn(peak_sampler(urls.clone(), release));
    let (chat_r, churn_r, idle_r) = tokio::join!(
        async {
            if p.chat_pairs == 0 {
                return Ok(Report::default());
            }
            rooms::load(&ctx.dialer, &chat, secs, ctx.deadline).await.map(|(r, _)| r)
        },
        async {
            if p.churn_rate <= 0.0 {
                return Ok(Report::default());
            }
            let at = Stream::steady(&ctx.dialer, churn.rate, secs, ctx.deadline);
            churn::load(at, &churn).await
        },
        async {
            if p.idle_sessions == 0 {
                return Ok(Report::default());
            }
            let steps = idle::Steps {
                start,
                rate: idle_rate,
                per_step: p.idle_sessions,
                pause: Duration::ZERO,
            };
            idle::hold(&ctx.dialer, p.idle_sessions, steps, release, ctx.deadline, None).await
        },
    );
    let peak = sampler.await.map_err(|e| format!("sampler: {e}"))?;
    let mut report = Report::default();
    report.merge_prefixed("chat.", chat_r?)?;
    report.merge_prefixed("churn.", churn_r?)?;
    report.merge_prefixed("idle.", idle_r?)?;
    Ok((report, peak))
}

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let s = &ctx.scenario;
    let p = s.soak.as_ref().ok_or("no [soak] table")?;
    let urls = s.urls.clone();
    let base = server::usage_of_all(&urls).await?;
    let passes = p.passes.max(1);
    let secs = s.duration_secs / passes as f64;
    let mut report = Report::default();
    let mut peak = server::Usage::default();
    let mut after = Vec::with_capacity(passes);
    for _ in 0..passes {
        let (r, pass_peak) = pass(ctx, p, secs).await?;
        report.merge(r)?;
        peak.rss_bytes = peak.rss_bytes.max(pass_peak.rss_bytes);
        peak.open_fds = peak.open_fds.max(pass_peak.open_fds);
        peak.sessions = peak.sessions.max(pass_peak.sessions);
        // Everyone left: let the server settle, then see what it still holds.
        tokio::time::sleep(Duration::from_secs_f64(p.settle_secs)).await;
        after.push(server::usage_of_all(&urls).await?);
    }
    let last = after[after.len() - 1];
    report.set("server.rss_baseline_mib", base.rss_bytes / MIB);
    report.set("server.rss_peak_mib", peak.rss_bytes.max(last.rss_bytes) / MIB);
    report.set("server.rss_after_first_pass_mib", after[0].rss_bytes / MIB);
    report.set("server.rss_after_mib", last.rss_bytes / MIB);
    report.set("server.rss_growth_mib", (last.rss_bytes - base.rss_bytes) / MIB);
    // What a leak shows: memory still growing from one identical pass to the next
    // (the first pass also fills the allocator's free lists, which it keeps).
    report
        .set("server.rss_growth_after_first_pass_mib", (last.rss_bytes - after[0].rss_bytes) / MIB);
    report.set("server.fds_baseline", base.open_fds);
    report.set("server.fds_peak", peak.open_fds);
    report.set("server.fds_after", last.open_fds);
    report.set("server.fds_growth", last.open_fds - base.open_fds);
    report.set("server.sessions_peak", peak.sessions);
    report.set("server.sessions_after", last.sessions);
    report.count("passes", passes as u64);
    if let Ok((200, body)) = server::get(&urls[0], "/api/stats").await {
        if let Ok(stats) = serde_json::from_str::<serde_json::Value>(&body) {
            for key in ["online", "searching", "rooms"] {
                if let Some(v) = stats.get(key).and_then(serde_json::Value::as_f64) {
                    report.set(&format!("server.{key}_after"), v);
                }
            }
        }
    }
    Ok(report)
}
