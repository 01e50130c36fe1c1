//! `match-storm`: new connections arrive at a fixed rate, each searches once, is
//! matched, stays `hold_ms` and leaves.
//!
//! Numbers: `connect_latency` (scheduled arrival → `welcome`), `match_latency`
//! (the later searcher of each pair: its `find_match` → its `match_found`, the
//! server's matching time plus one loopback trip), `arrival_to_match`
//! (scheduled arrival → `match_found`), and `cross_node_match_latency`, the
//! same as `match_latency` for the pairs whose members came through different
//! URLs (`cross_node_pairs` counts them). With `cross_node`, users `2k` and
//! `2k + 1` share two interests no one else has and take neighbouring URLs, so
//! with two nodes every pair spans them; `stranger_pairs` counts the pairs whose
//! members were not meant for each other. Correctness: `double_matches` (a user
//! with two `match_found`, or a room with more than two members) and
//! `asymmetric_pairs` (A's partner is B but B's is not A, or their rooms differ).
//! Every worker and run searches in a language of its own (a private-use
//! language tag, `qaa-…`), so their users never meet each other or leftovers of
//! an earlier run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rendezvous_protocol::ServerFrame;
use serde_json::json;

use super::{failed, progress, timeline, Ctx, Stream};
use crate::client::{self, Failure};
use crate::scenario::report::Report;
use crate::scenario::spec::Storm;
use crate::stats;

/// One user's match, as it saw it.
struct Seen {
    room: String,
    partner: Option<String>,
    searched: Instant,
    found: Instant,
    /// Index of the URL the user came through.
    url: usize,
    /// More `match_found` frames after the first.
    extra: u64,
}

/// Interest `k` of user `i`: a cheap deterministic spread over the vocabulary.
fn interests(i: usize, per_user: usize, pool: usize) -> Vec<String> {
    let mut h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..per_user)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            format!("topic-{}", h % pool as u64)
        })
        .collect()
}

async fn one(
    ctx: Arc<CtxLite>,
    i: usize,
    due: Instant,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
) -> Result<(u64, u64), Failure> {
    let user = ctx.dialer.user(&format!("s{i}"));
    let url = ctx.dialer.url(i).to_owned();
    let (mut m, _) = ctx.dialer.open(&url, user.clone()).await?;
    let connect_us = stats::micros(due.elapsed());
    let mut topics = if ctx.cross_node {
        // Two shared: the first step of the default ladder asks for two.
        let k = i / 2;
        vec![format!("pair-{k}-a"), format!("pair-{k}-b")]
    } else {
        interests(i, ctx.per_user, ctx.pool)
    };
    if ctx.common && !ctx.cross_node {
        // Two, because the first step of the default ladder asks for two shared.
        topics.extend(["everyone".to_owned(), "storm".to_owned()]);
    }
    let mut find = json!({"action": "find_match", "language": ctx.language, "interests": topics});
    if ctx.max_wait_ms > 0 {
        find["max_wait_ms"] = json!(ctx.max_wait_ms);
    }
    let searched = Instant::now();
    client::send_text(&mut m.ws, &user, find.to_string()).await?;
    // The protocol's order is `searching`, then `match_found`: one that comes
    // first is a failure here (a tolerant client would miss it).
    let first = client::until_one_of(&mut m.ws, &user, &["searching", "match_found"], ctx.wait);
    if first.await?.kind() != "searching" {
        let frame = "match_found before searching".to_owned();
        return Err(Failure::Server { user, frame });
    }
    let found = client::until(&mut m.ws, &user, "match_found", ctx.wait).await;
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            progress::closed();
            return Err(e);
        }
    };
    let found_at = Instant::now();
    progress::matched();
    timeline::achieved(found_at, 1);
    let ServerFrame::MatchFound { room_id, partner_id, .. } = found else {
        return Err(Failure::Server { user, frame: "not a match_found".into() });
    };
    // Stay a while, counting any further match_found.
    let extra = client::count_during(&mut m.ws, "match_found", ctx.hold).await;
    let _ = m.ws.close(None).await;
    progress::closed();
    if let Ok(mut seen) = seen.lock() {
        // The same user twice would be a bug of the driver, but count it anyway.
        let extra = extra + u64::from(seen.contains_key(&user));
        seen.insert(
            user,
            Seen {
                room: room_id,
                partner: partner_id,
                searched,
                found: found_at,
                url: ctx.dialer.url_index(i),
                extra,
            },
        );
    }
    Ok((connect_us, stats::micros(found_at.saturating_duration_since(due))))
}

/// What each arrival task needs, without the scenario's borrow.
struct CtxLite {
    dialer: super::net::Dialer,
    language: String,
    per_user: usize,
    pool: usize,
    common: bool,
    cross_node: bool,
    max_wait_ms: u64,
    hold: Duration,
    wait: Duration,
}

/// The pair a storm user was meant for with `cross_node`: `k` of `…s{2k}` and
/// `…s{2k+1}` (the user names end in `s` and the arrival number).
fn designated(user: &str) -> Option<usize> {
    let digits = user.rsplit('s').next()?;
    digits.parse::<usize>().ok().map(|i| i / 2)
}

/// Pairs: doubles, asymmetric pairs, and the later searcher's latencies (also
/// into `timed`, with the time of the match).
fn books(
    seen: &HashMap<String, Seen>,
    cross_node: bool,
    report: &mut Report,
    timed: &mut Vec<(Instant, u64)>,
) -> Result<(), String> {
    let mut rooms: HashMap<&str, Vec<&str>> = HashMap::new();
    for (user, s) in seen {
        rooms.entry(s.room.as_str()).or_default().push(user.as_str());
        report.count("double_matches", s.extra);
    }
    report.declare("match_latency")?;
    report.declare("cross_node_match_latency")?;
    for (room, members) in &rooms {
        if members.len() > 2 {
            report.count("double_matches", members.len() as u64 - 2);
            report.note("first_double", format!("room {room} has {members:?}"));
            continue;
        }
        let [a, b] = members[..] else {
            // The partner's side is missing (it failed after its match_found, or
            // it belongs to a bound that ended the run first).
            report.count("half_seen_pairs", 1);
            continue;
        };
        let (sa, sb) = (&seen[a], &seen[b]);
        if sa.partner.as_deref() != Some(b) || sb.partner.as_deref() != Some(a) {
            report.count("asymmetric_pairs", 1);
            report.note("first_asymmetric", format!("{a}→{:?}, {b}→{:?}", sa.partner, sb.partner));
        }
        let later = if sa.searched >= sb.searched { sa } else { sb };
        let us = stats::micros(later.found - later.searched);
        report.record("match_latency", us)?;
        timed.push((later.found, us));
        if sa.url != sb.url {
            report.record("cross_node_match_latency", us)?;
            report.count("cross_node_pairs", 1);
        }
        if cross_node && designated(a) != designated(b) {
            report.count("stranger_pairs", 1);
        }
        report.count("pairs", 1);
    }
    report.count("double_matches", 0);
    report.count("asymmetric_pairs", 0);
    report.count("cross_node_pairs", 0);
    if cross_node {
        report.count("stranger_pairs", 0);
    }
    Ok(())
}

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let p = ctx.scenario.storm.as_ref().ok_or("no [storm] table")?;
    load(ctx.stream(p.rate), p).await
}

/// The arrivals of `at`, each searching once in the dialer's own language (so
/// other runs and workers never meet these users), or in `p.language`.
pub async fn load(at: Stream<'_>, p: &Storm) -> Result<Report, String> {
    let dialer = at.dialer;
    let lite = Arc::new(CtxLite {
        dialer: dialer.clone(),
        language: p.language.clone().unwrap_or_else(|| dialer.language()),
        per_user: p.interests_per_user,
        pool: p.interest_pool,
        common: p.common_interest,
        cross_node: p.cross_node,
        max_wait_ms: p.max_wait_ms,
        hold: Duration::from_millis(p.hold_ms),
        wait: dialer.wait(),
    });
    // Sized for the whole load up front: growing it mid-run rehashes every
    // entry under the lock, a stall of several ms that the arrivals' latencies
    // would show as a spike (at 14,336 and 28,672 users).
    let seen = Arc::new(Mutex::new(HashMap::with_capacity(at.schedule.count() + 1)));
    let start = Instant::now() + Duration::from_millis(100);
    timeline::begin(start, "match_latency", "arrivals");
    let results = at
        .paired(start, |i, due| {
            let job = one(lite.clone(), i, due, seen.clone());
            async move {
                let r = job.await;
                if r.is_err() {
                    timeline::error(Instant::now());
                }
                r
            }
        })
        .await;
    let window = start.elapsed().as_secs_f64();
    let mut report = Report::default();
    report.count("arrivals", results.len() as u64);
    report.declare("connect_latency")?;
    report.declare("arrival_to_match")?;
    for r in &results {
        match r {
            Ok((connect_us, to_match_us)) => {
                report.record("connect_latency", *connect_us)?;
                report.record("arrival_to_match", *to_match_us)?;
                report.count("matched", 1);
            }
            Err(f) => failed(&mut report, f),
        }
    }
    report.count("matched", 0);
    report.count("errors.total", 0);
    let seen = seen.lock().map_err(|_| "match books poisoned")?;
    let mut timed = Vec::new();
    books(&seen, p.cross_node, &mut report, &mut timed)?;
    for (found, us) in timed {
        timeline::latency(found, us);
    }
    report.set("offered_arrivals_per_s", at.mean_rate());
    report.set("matched_users_per_s", report.counters["matched"] as f64 / window.max(1e-9));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(room: &str, partner: &str, searched_ms: u64, found_ms: u64) -> Seen {
        let t0 = Instant::now();
        Seen {
            room: room.into(),
            partner: Some(partner.into()),
            searched: t0 + Duration::from_millis(searched_ms),
            found: t0 + Duration::from_millis(found_ms),
            url: 0,
            extra: 0,
        }
    }

    /// The books of what each user saw.
    fn books_of<const N: usize>(cross_node: bool, users: [(&str, Seen); N]) -> Report {
        let m: HashMap<String, Seen> = users.into_iter().map(|(u, s)| (u.to_owned(), s)).collect();
        let mut r = Report::default();
        books(&m, cross_node, &mut r, &mut Vec::new()).expect("books");
        r
    }

    /// `name` holds `count` latencies, the longest `max_ms` (to 10 µs).
    fn assert_latencies(r: &Report, name: &str, count: u64, max_ms: u64) {
        let h = &r.histos[name];
        assert_eq!(h.len(), count, "{name}");
        assert!(h.max().abs_diff(max_ms * 1_000) <= 10, "{name}: max {}", h.max());
    }

    #[test]
    fn the_books_find_doubles_and_asymmetry_and_time_the_later_searcher() {
        let r = books_of(
            false,
            [
                ("a", seen("r1", "b", 0, 10)),
                ("b", seen("r1", "a", 8, 10)),
                ("c", seen("r2", "d", 0, 5)),
                ("d", seen("r2", "e", 1, 5)),
                ("e", seen("r3", "x", 0, 5)),
                ("f", seen("r4", "g", 0, 5)),
                ("g", seen("r4", "f", 0, 5)),
                ("h", seen("r4", "f", 0, 5)),
            ],
        );
        assert_eq!(r.counters["double_matches"], 1);
        assert_eq!(r.counters["asymmetric_pairs"], 1);
        assert_eq!(r.counters["half_seen_pairs"], 1);
        assert_eq!(r.counters["pairs"], 2);
        // r1: b searched later, waited 2 ms; r2: d, 4 ms.
        assert_latencies(&r, "match_latency", 2, 4);
    }

    #[test]
    fn cross_node_books_time_pairs_across_urls_and_count_strangers() {
        let r = books_of(
            true,
            [
                // x-s0 / x-s1: the designated pair, on URLs 0 and 1.
                ("x-s0", Seen { url: 0, ..seen("r1", "x-s1", 0, 10) }),
                ("x-s1", Seen { url: 1, ..seen("r1", "x-s0", 7, 10) }),
                // x-s2 met x-s5 (meant for x-s3 and x-s4), both on URL 0.
                ("x-s2", seen("r2", "x-s5", 0, 5)),
                ("x-s5", seen("r2", "x-s2", 1, 5)),
            ],
        );
        assert_eq!(r.counters["pairs"], 2);
        assert_eq!(r.counters["cross_node_pairs"], 1);
        assert_eq!(r.counters["stranger_pairs"], 1);
        assert_latencies(&r, "cross_node_match_latency", 1, 3);
        assert_eq!(designated("lt-abc-s13"), Some(6));
    }

    #[test]
    fn interests_come_from_the_pool() {
        let all: Vec<String> = (0..100).flat_map(|i| interests(i, 3, 8)).collect();
        assert!(all
            .iter()
            .all(|t| t.starts_with("topic-") && t[6..].parse::<u64>().is_ok_and(|n| n < 8)));
        assert!(all.iter().collect::<std::collections::HashSet<_>>().len() > 4);
    }
}
