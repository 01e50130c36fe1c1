//! `match-quality`: how well a real engine pairs strangers, and how fast. Users of
//! a seeded trace ([`rendezvous_protocol::trace`]: a language out of 4, 3 interests
//! out of 40) arrive at a fixed rate, each on its own connection, and search
//! once; the driver waits for every `match_found` and scores the pairs. Each rate
//! in `[quality] rates` runs in turn, for its entry of `secs`; with
//! `compare_urls` the same trace then runs against a second engine (started with
//! a fixed `--ladder`), for a side-by-side comparison on the same day and load.
//!
//! Numbers, per rate as `r<rate>.…` (and `r<rate>.compare.…` for the second
//! engine): `pairs`, `mean_shared` (interests a pair shares), `shared_0` …
//! `shared_3` (the histogram, pairs), `wait_p50_ms`/`wait_p99_ms` (`find_match`
//! sent → `match_found`), `partner_wait_p99_ms` (the same wait counted from when
//! a same-language partner was first waiting: what the engine can be held to
//! when arrivals are sparse), `same_language_share`, `double_matches` (a user
//! told twice, or pairs that disagree), `unmatched`. Every run searches in
//! languages of its own (`qaa-…-en`), so runs never meet each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rendezvous_protocol::trace::{self, Arrival, TraceSpec};
use rendezvous_protocol::ServerFrame;
use serde_json::json;

use super::net::Dialer;
use super::{arrivals, failed, progress, Ctx};
use crate::client::{self, Failure};
use crate::scenario::report::Report;

/// What one user saw.
struct Seen {
    searched: Instant,
    found: Instant,
    partner: Option<String>,
    room: String,
    extra: u64,
}

/// Run every configured rate (and its comparison).
pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let q = ctx.scenario.quality.as_ref().ok_or("match-quality needs a [quality] table")?;
    let mut report = Report::default();
    for (i, rate) in q.rates.iter().enumerate() {
        let secs = q.secs.get(i).copied().unwrap_or(ctx.scenario.duration_secs);
        let count = (rate * secs).ceil() as usize;
        let users = trace::trace(&TraceSpec::standard(q.seed, *rate, count));
        let prefix = format!("r{rate}");
        let main = one_run(ctx, &ctx.dialer, &users, &format!("{prefix}m")).await?;
        report.merge_prefixed(&format!("{prefix}."), main)?;
        if !q.compare_urls.is_empty() {
            let tag = format!("{}c", ctx.dialer.tag());
            let other = Dialer::new(
                q.compare_urls.clone(),
                ctx.scenario.source_addrs.clone(),
                None,
                tag,
                ctx.dialer.wait(),
            );
            let cmp = one_run(ctx, &other, &users, &format!("{prefix}c")).await?;
            report.merge_prefixed(&format!("{prefix}.compare."), cmp)?;
        }
    }
    Ok(report)
}

/// One trace against the engine behind `dialer`.
async fn one_run(
    ctx: &Ctx,
    dialer: &Dialer,
    users: &[Arrival],
    run: &str,
) -> Result<Report, String> {
    let dialer =
        dialer.variant(format!("{}{run}", dialer.tag()), ctx.scenario.source_addrs.clone());
    let seen: Arc<Mutex<HashMap<usize, Seen>>> = Arc::default();
    let wait = dialer.wait();
    let base = dialer.language();
    let start = Instant::now() + Duration::from_millis(200);
    let due = |i: usize| start + Duration::from_secs_f64(users[i].at_ms / 1_000.0);
    let deadline = ctx.deadline;
    let shared_users: Arc<Vec<Arrival>> = Arc::new(users.to_vec());
    let results = arrivals(users.len(), due, deadline, |i, _due| {
        let (dialer, seen, users, base) =
            (dialer.clone(), seen.clone(), shared_users.clone(), base.clone());
        async move { one(&dialer, &users[i], &base, wait, &seen).await }
    })
    .await;
    let mut report = Report::default();
    report.count("errors.total", 0);
    for r in &results {
        match r {
            // Nobody came in time (the trace's last users may be alone): counted as
            // `unmatched` below.
            Err(Failure::Timeout { .. }) | Ok(()) => {}
            Err(f) => failed(&mut report, f),
        }
    }
    let seen = seen.lock().map_err(|_| "poisoned")?;
    score(users, &seen, &dialer, &mut report);
    Ok(report)
}

async fn one(
    dialer: &Dialer,
    u: &Arrival,
    base: &str,
    wait: Duration,
    seen: &Mutex<HashMap<usize, Seen>>,
) -> Result<(), Failure> {
    let user = dialer.user(&format!("q{}", u.index));
    let url = dialer.url(u.index).to_owned();
    let (mut m, _) = dialer.open(&url, user.clone()).await?;
    let find = json!({"action": "find_match", "language": format!("{base}-{}", u.language),
        "interests": u.interests});
    let searched = Instant::now();
    client::send_text(&mut m.ws, &user, find.to_string()).await?;
    let found = client::until(&mut m.ws, &user, "match_found", wait).await?;
    let found_at = Instant::now();
    progress::matched();
    let ServerFrame::MatchFound { room_id, partner_id, .. } = found else {
        return Err(Failure::Server { user, frame: "not a match_found".into() });
    };
    // Stay a moment, counting any further match_found (a double match).
    let extra = client::count_during(&mut m.ws, "match_found", Duration::from_millis(300)).await;
    let _ = m.ws.close(None).await;
    if let Ok(mut s) = seen.lock() {
        s.insert(
            u.index,
            Seen { searched, found: found_at, partner: partner_id, room: room_id, extra },
        );
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn score(users: &[Arrival], seen: &HashMap<usize, Seen>, dialer: &Dialer, report: &mut Report) {
    let index_of: HashMap<String, usize> =
        users.iter().map(|u| (dialer.user(&format!("q{}", u.index)), u.index)).collect();
    let mut pairs = 0u64;
    let mut shared_total = 0u64;
    let mut hist = [0u64; 4];
    let mut same = 0u64;
    let mut double = 0u64;
    let mut waits = Vec::new();
    for u in users {
        let Some(s) = seen.get(&u.index) else {
            report.count("unmatched", 1);
            continue;
        };
        waits.push(s.found.saturating_duration_since(s.searched).as_secs_f64() * 1e3);
        double += s.extra;
        let Some(p) = s.partner.as_ref().and_then(|p| index_of.get(p)) else {
            double += 1;
            continue;
        };
        let other = &users[*p];
        let agrees = seen.get(p).is_some_and(|o| {
            o.room == s.room && o.partner.as_deref() == Some(&dialer.user(&format!("q{}", u.index)))
        });
        if !agrees {
            double += 1;
        }
        if *p > u.index {
            pairs += 1;
            let n = trace::shared(&u.interests, &other.interests);
            shared_total += n as u64;
            hist[n.min(3)] += 1;
            if other.language == u.language {
                same += 1;
            }
        }
    }
    // The wait counted from when a same-language partner was first waiting: the
    // user's own search if someone was already there, else the next
    // same-language arrival.
    let mut partner_waits = Vec::new();
    let mut waiting: HashMap<&str, Vec<(Instant, Option<Instant>)>> = HashMap::new();
    for u in users {
        let Some(s) = seen.get(&u.index) else { continue };
        let open = waiting.entry(u.language).or_default();
        open.retain(|(_, end)| end.is_none_or(|e| e > s.searched));
        let from = if open.is_empty() {
            users[u.index + 1..]
                .iter()
                .filter(|v| v.language == u.language)
                .find_map(|v| seen.get(&v.index).map(|o| o.searched))
                .unwrap_or(s.found)
                .min(s.found)
        } else {
            s.searched
        };
        partner_waits.push(s.found.saturating_duration_since(from).as_secs_f64() * 1e3);
        open.push((s.searched, Some(s.found)));
    }
    waits.sort_by(f64::total_cmp);
    partner_waits.sort_by(f64::total_cmp);
    report.count("pairs", pairs);
    report.count("double_matches", double);
    report.count("unmatched", 0);
    for (k, n) in hist.iter().enumerate() {
        report.count(&format!("shared_{k}"), *n);
    }
    let mean = if pairs == 0 { 0.0 } else { shared_total as f64 / pairs as f64 };
    report.set("mean_shared", mean);
    report.set("same_language_share", if pairs == 0 { 0.0 } else { same as f64 / pairs as f64 });
    report.set("wait_p50_ms", percentile(&waits, 0.50));
    report.set("wait_p99_ms", percentile(&waits, 0.99));
    report.set("partner_wait_p99_ms", percentile(&partner_waits, 0.99));
}
