//! `redis-failover`: cross-node pairs chat at `rate` while the tool stops
//! redis-server (`stop_command`), waits `down_secs` and starts it again
//! (`start_command`); the report says what the clients saw.
//!
//! Numbers: the chat books (`delivery_latency`, `lost`, `unacked`, `gaps`,
//! `duplicated`, `reordered`, `ended_early`, `error_frames`, …), and
//! `failover.not_ready_after_stop_s` (stop → some node's `/readyz` says 503),
//! `failover.ready_after_start_s` (start → every node's `/readyz` is 200 again),
//! `failover.delivery_gap_s` (longest stretch with no delivery at all),
//! `failover.recovery_s` (start → the first 250 ms in which deliveries reach
//! `recovered_share` of their rate before the stop; the run's length if never),
//! and `failover.rate_before_per_s` / `failover.rate_after_per_s`.

use std::time::{Duration, Instant};

use super::chat::member::MemberLog;
use super::chat::plan::Plan;
use super::spec::Chat;
use super::{rooms, server, Ctx};
use crate::scenario::report::Report;

async fn shell(command: &str) -> Result<(), String> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("run `{command}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{command}` failed: {status}"))
    }
}

/// Poll every node's `/readyz` until `want` holds for one (`any`) or all of them.
async fn wait_ready(urls: &[String], want: bool, any: bool, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let mut states = Vec::with_capacity(urls.len());
        for url in urls {
            states.push(server::ready(url).await == want);
        }
        let hit = if any { states.iter().any(|&s| s) } else { states.iter().all(|&s| s) };
        if hit {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

struct Times {
    stopped: Instant,
    started: Instant,
    not_ready_after: Option<Duration>,
    ready_after: Option<Duration>,
}

async fn controller(
    urls: Vec<String>,
    stop_at: Instant,
    down: Duration,
    stop: String,
    start: String,
) -> Result<Times, String> {
    tokio::time::sleep_until(stop_at.into()).await;
    let stopped = Instant::now();
    shell(&stop).await?;
    let not_ready_after = wait_ready(&urls, false, true, down).await;
    tokio::time::sleep_until((stopped + down).into()).await;
    let started = Instant::now();
    shell(&start).await?;
    let ready_after = wait_ready(&urls, true, false, Duration::from_secs(60)).await;
    Ok(Times { stopped, started, not_ready_after, ready_after })
}

const SLOT_US: u64 = 250_000;

/// Deliveries per slot of 250 ms, by the time they were read (µs since `base`).
fn delivery_slots(logs: &[MemberLog]) -> Vec<u64> {
    let mut slots: Vec<u64> = Vec::new();
    for log in logs {
        for (due, latency) in log.delivery_due_us.iter().zip(&log.delivery_us) {
            let i = ((due + latency) / SLOT_US) as usize;
            if slots.len() <= i {
                slots.resize(i + 1, 0);
            }
            slots[i] += 1;
        }
    }
    slots
}

fn us_since(base: Instant, t: Instant) -> u64 {
    crate::stats::micros(t.saturating_duration_since(base))
}

/// The recovery figures from the delivery timeline.
fn recovery(plan: &Plan, logs: &[MemberLog], t: &Times, share: f64, report: &mut Report) {
    let slots = delivery_slots(logs);
    let slot = |at: Instant| (us_since(plan.base, at) / SLOT_US) as usize;
    let (first, stop, restart) = (slot(plan.start) + 1, slot(t.stopped), slot(t.started));
    let before = slots.get(first..stop.max(first)).unwrap_or(&[]);
    let rate_before = before.iter().sum::<u64>() as f64 / (before.len().max(1) as f64 * 0.25);
    report.set("failover.rate_before_per_s", rate_before);
    let last = slot(plan.end).min(slots.len());
    let after = slots.get(restart.min(last)..last).unwrap_or(&[]);
    let rate_after = after.iter().sum::<u64>() as f64 / (after.len().max(1) as f64 * 0.25);
    report.set("failover.rate_after_per_s", rate_after);
    let goal = rate_before * 0.25 * share;
    let recovered = after.iter().position(|&n| n as f64 >= goal && n > 0);
    let run_len = (plan.end - t.started).as_secs_f64();
    report.set("failover.recovery_s", recovered.map_or(run_len, |i| i as f64 * 0.25));
    // Longest run of empty slots inside the sending phase.
    let (mut longest, mut current) = (0usize, 0usize);
    for &n in slots.get(first..last).unwrap_or(&[]) {
        current = if n == 0 { current + 1 } else { 0 };
        longest = longest.max(current);
    }
    report.set("failover.delivery_gap_s", longest as f64 * 0.25);
}

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let s = &ctx.scenario;
    let f = s.failover.as_ref().ok_or("no [failover] table")?;
    let chat = Chat {
        rooms: f.pairs,
        room_size: 2,
        rate: f.rate,
        text_bytes: 64,
        drain_ms: 3_000,
        setup_concurrency: 50,
        cross_node: s.urls.len() > 1,
        stalled_pairs: 0,
        stalled_rate: 1.0,
        stalled_text_bytes: 0,
        stalled_reading: false,
    };
    // Rooms form first (a second or so); the outage is timed from the first send.
    let (tx, rx) = tokio::sync::oneshot::channel::<Instant>();
    let urls = s.urls.clone();
    let (down, stop, start) =
        (Duration::from_secs_f64(f.down_secs), f.stop_command.clone(), f.start_command.clone());
    let stop_after = Duration::from_secs_f64(f.stop_after_secs);
    let control = tokio::spawn(async move {
        let sending = rx.await.map_err(|_| "the chat never started".to_owned())?;
        controller(urls, sending + stop_after, down, stop, start).await
    });
    let (mut report, books) =
        rooms::load_with_start(&ctx.dialer, &chat, s.duration_secs, ctx.deadline, Some(tx)).await?;
    let times = control.await.map_err(|e| format!("controller: {e}"))??;
    report.set(
        "failover.not_ready_after_stop_s",
        times.not_ready_after.map_or(-1.0, |d| d.as_secs_f64()),
    );
    report.set("failover.ready_after_start_s", times.ready_after.map_or(-1.0, |d| d.as_secs_f64()));
    if let Some((plan, logs)) = books {
        recovery(&plan, &logs, &times, f.recovered_share, &mut report);
    }
    Ok(report)
}
