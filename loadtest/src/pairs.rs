//! Mode `pairs`: client-observed match latency.
//!
//! For each pair, user A searches, then user B searches with the same interests;
//! B's time from sending `find_match` to receiving `match_found` is the match
//! latency (the server's matching time plus one loopback round trip). With
//! `--peer-url`, A is on `--url` and B on `--peer-url`, so every match crosses
//! nodes. Pairs run `--concurrency` at a time, each with fresh users so per-user
//! rate limits do not interfere.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{bounded, match_pair, Failure, PairSpec};
use crate::stats::{self, Percentiles};

pub struct PairsArgs {
    pub url: String,
    pub peer_url: Option<String>,
    pub pairs: usize,
    pub concurrency: usize,
    pub wait: Duration,
    /// Start no new pair after this long.
    pub max_time: Duration,
    pub json: Option<PathBuf>,
}

/// Match one pair, close both sessions, return B's match latency.
async fn one_pair(spec: PairSpec, id: usize) -> Result<Duration, Failure> {
    let mut pair = match_pair(spec, id).await?;
    let _ = pair.a.ws.close(None).await;
    let _ = pair.b.ws.close(None).await;
    Ok(pair.latency)
}

pub async fn run(args: PairsArgs) -> Result<bool, String> {
    let mut hist = stats::histogram()?;
    let spec = PairSpec {
        url_a: args.url.clone(),
        url_b: args.peer_url.clone().unwrap_or_else(|| args.url.clone()),
        wait: args.wait,
    };
    let started = Instant::now();
    let results = bounded(args.pairs, args.concurrency, started + args.max_time, |id| {
        one_pair(spec.clone(), id)
    })
    .await;
    let mut failures: Vec<String> = Vec::new();
    for (_, result) in results {
        match result {
            Ok(latency) => stats::record(&mut hist, stats::micros(latency)),
            Err(f) => failures.push(f),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let p = Percentiles::of(&hist);
    // Matches that waited for a timer (the relaxation ladder or a parked claim).
    let slow = hist.count_between(1_000_000, hist.high());
    let topology = if args.peer_url.is_some() { "cross-node" } else { "single-node" };
    println!(
        "pairs matched ({topology}): {}/{} in {elapsed:.2} s ({:.0} pairs/s incl. connect)",
        p.count,
        args.pairs,
        p.count as f64 / elapsed
    );
    println!(
        "match latency (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        p.p50, p.p90, p.p99, p.p999, p.max
    );
    println!("matches over 1 s: {slow}");
    let report = json!({"mode": "pairs", "topology": topology, "url": args.url,
        "peer_url": args.peer_url, "pairs": args.pairs, "concurrency": args.concurrency,
        "matched": p.count, "over_1s": slow, "failures": failures.len(), "elapsed_s": elapsed,
        "match_latency": p.to_json(),
        // Flat keys kept from the first version of this report line.
        "p50_ms": p.p50, "p99_ms": p.p99, "max_ms": p.max});
    println!("{report}");
    if let Some(path) = &args.json {
        stats::write_json(path, &report)?;
    }
    if let Some(first) = failures.first() {
        eprintln!("{} failures, first: {first}", failures.len());
        return Ok(false);
    }
    Ok(true)
}
