//! The load tester's results, with the real `rendezvous-loadtest` binary against
//! a real engine process: the per-second timeline of a run by `[[stages]]`, a
//! run spread over two worker processes, and `merge` of two `--worker K/N`
//! parts against one unsplit run of the same (deterministic) load.
//!
//! Counts are exact; timings on this shared machine are not asserted.

use rendezvous_test_support as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::cluster::Node;
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The load tester, built once per test process (see the support crate).
fn loadtest() -> &'static Path {
    common::loadtest_bin()
}

/// `name` in the test's own temporary folder (removed when the test passes).
fn scratch(dir: &common::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

fn storm_file() -> PathBuf {
    repo().join("loadtest/scenarios/match-storm.toml")
}

/// Run the load tester with `args`; the exit code must be `want`.
fn lt(args: &[&str], want: i32) -> Output {
    let out = Command::new(loadtest())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rendezvous-loadtest");
    assert_eq!(
        out.status.code(),
        Some(want),
        "rendezvous-loadtest {args:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("result file");
    serde_json::from_str(&text).expect("result JSON")
}

fn num(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for key in path.split('.') {
        at = &at[key];
    }
    at.as_f64().unwrap_or_else(|| panic!("no number at {path}: {v}"))
}

fn points(doc: &Value) -> Vec<Value> {
    doc["timeline"]["points"].as_array().expect("timeline points").clone()
}

fn sum(points: &[Value], key: &str) -> u64 {
    points.iter().map(|p| p[key].as_u64().expect(key)).sum()
}

fn ws(node: &Node) -> String {
    format!("ws://{}/ws", node.addr)
}

/// A storm by stages (20/s for 2 s, then 60/s for 2 s): each second of the
/// timeline offers its stage's rate, and the result says what ran.
#[test]
fn a_staged_run_offers_each_stage_rate_second_by_second() {
    let node = Node::spawn(None, "solo", &[]);
    let tmp = common::TempDir::new("lt-results");
    let json = scratch(&tmp, "staged.json");
    let url = ws(&node);
    let file = storm_file();
    lt(
        &[
            "run",
            file.to_str().expect("path"),
            "--smoke",
            "--quiet",
            "--url",
            &url,
            "--set",
            "stages=[{rate=20,secs=2},{rate=60,secs=2}]",
            "--label",
            "staged storm",
            "--json",
            json.to_str().expect("path"),
        ],
        0,
    );
    let doc = read(&json);
    assert_eq!(doc["format"], 2);
    assert_eq!(doc["label"], "staged storm");
    assert_eq!(doc["duration_s"], 4.0);
    assert_eq!(doc["stages"].as_array().map(Vec::len), Some(2), "{}", doc["stages"]);
    assert!(doc["host"].as_str().is_some_and(|h| !h.is_empty()));
    assert!(num(&doc, "started_unix") > 1.6e9);
    assert!(doc["raw"]["histos"]["match_latency"].is_string());
    assert_eq!(doc["timeline"]["latency"], "match_latency");
    let pts = points(&doc);
    assert!(pts.len() >= 4, "{pts:?}");
    for (t, want) in [(0, 20), (1, 20), (2, 60), (3, 60)] {
        let offered = pts[t]["offered"].as_u64().expect("offered");
        assert!(offered.abs_diff(want) <= 2, "second {t}: offered {offered}, want ~{want}");
        assert_eq!(pts[t]["t"], t as f64);
    }
    // Everything offered was matched; every point's latency count is one per pair.
    assert_eq!(sum(&pts, "offered"), 160);
    assert_eq!(sum(&pts, "achieved"), num(&doc, "results.matched") as u64);
    assert_eq!(sum(&pts, "count"), num(&doc, "results.match_latency.count") as u64);
    // The engine exports its memory (and CPU) on /metrics.
    assert!(pts.iter().any(|p| p["server_rss_mb"].as_f64().is_some_and(|m| m > 0.0)), "{pts:?}");
    assert!(pts.iter().any(|p| p["server_cpu"].is_number()), "{pts:?}");
}

/// `workers = 2`: two processes, one result with the totals of both.
#[test]
fn two_worker_processes_add_up_to_the_whole_load() {
    let node = Node::spawn(None, "solo", &[]);
    let tmp = common::TempDir::new("lt-results");
    let json = scratch(&tmp, "workers.json");
    let url = ws(&node);
    let file = storm_file();
    lt(
        &[
            "run",
            file.to_str().expect("path"),
            "--smoke",
            "--url",
            &url,
            "--workers",
            "2",
            "--json",
            json.to_str().expect("path"),
        ],
        0,
    );
    let doc = read(&json);
    // The smoke storm: 100 arrivals/s for 1 s, split 50 + 50.
    assert_eq!(num(&doc, "results.arrivals"), 100.0, "{}", doc["results"]);
    assert_eq!(num(&doc, "results.matched"), 100.0);
    assert_eq!(num(&doc, "results.pairs"), 50.0);
    assert_eq!(num(&doc, "results.match_latency.count"), 50.0);
    assert_eq!(num(&doc, "results.double_matches"), 0.0);
    let pts = points(&doc);
    assert_eq!(sum(&pts, "offered"), 100, "both workers' timelines: {pts:?}");
    assert_eq!(sum(&pts, "achieved"), 100);
    assert_eq!(sum(&pts, "count"), 50);
}

/// `--worker 1/2` and `--worker 2/2` (as on two machines), merged, against one
/// unsplit run of the same load.
#[test]
fn merged_worker_parts_equal_one_unsplit_run() {
    let node = Node::spawn(None, "solo", &[]);
    let url = ws(&node);
    let file = storm_file();
    let file = file.to_str().expect("path");
    let rate = "storm.rate=40";
    let tmp = common::TempDir::new("lt-results");
    let paths: Vec<PathBuf> = ["whole.json", "part1.json", "part2.json", "merged.json"]
        .map(|name| scratch(&tmp, name))
        .to_vec();
    let p: Vec<&str> = paths.iter().map(|p| p.to_str().expect("path")).collect();
    let common = ["--smoke", "--quiet", "--url", &url, "--set", rate];
    let run = |extra: &[&str], out: &str| {
        let mut args = vec!["run", file];
        args.extend(common);
        args.extend(extra);
        args.extend(["--json", out]);
        lt(&args, 0);
    };
    run(&[], p[0]);
    run(&["--worker", "1/2"], p[1]);
    run(&["--worker", "2/2"], p[2]);
    let out = lt(&["merge", p[1], p[2], "-o", p[3]], 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("scenario match-storm: PASS"), "{stdout}");
    let (whole, a, b, merged) =
        (read(&paths[0]), read(&paths[1]), read(&paths[2]), read(&paths[3]));
    assert_eq!(a["worker"], "1/2");
    for key in ["arrivals", "matched", "pairs", "double_matches", "asymmetric_pairs"] {
        let path = format!("results.{key}");
        assert_eq!(num(&merged, &path), num(&whole, &path), "{key}");
        assert_eq!(num(&merged, &path), num(&a, &path) + num(&b, &path), "{key}");
    }
    assert_eq!(num(&merged, "results.arrivals"), 40.0);
    for h in ["match_latency", "connect_latency", "arrival_to_match"] {
        let count = format!("results.{h}.count");
        assert_eq!(num(&merged, &count), num(&a, &count) + num(&b, &count), "{h}");
        assert_eq!(num(&merged, &count), num(&whole, &count), "{h}");
        let max = format!("results.{h}.max_ms");
        assert_eq!(num(&merged, &max), num(&a, &max).max(num(&b, &max)), "{h}");
    }
    let (pa, pb, pm) = (points(&a), points(&b), points(&merged));
    assert_eq!(sum(&pm, "offered"), sum(&pa, "offered") + sum(&pb, "offered"));
    assert_eq!(sum(&pm, "offered"), 40);
    assert_eq!(sum(&pm, "count"), sum(&pa, "count") + sum(&pb, "count"));
    assert_eq!(merged["workers"], 2);
    assert_eq!(merged["merged_from"].as_array().map(Vec::len), Some(2));
    // Inputs of different scenarios, or unreadable, exit 2.
    let churn = scratch(&tmp, "churn.json");
    std::fs::write(&churn, r#"{"format": 2, "scenario": "churn", "raw": {}}"#).expect("write");
    lt(&["merge", p[1], churn.to_str().expect("path")], 2);
    lt(&["merge", p[1], "/nonexistent/result.json"], 2);
    // A bound the merged numbers miss exits 1.
    let mut strict = read(&paths[1]);
    strict["thresholds"] = serde_json::json!([{"path": "matched", "min": 1000.0, "max": null}]);
    let strict_path = scratch(&tmp, "strict.json");
    std::fs::write(&strict_path, strict.to_string()).expect("write");
    lt(&["merge", strict_path.to_str().expect("path"), p[2]], 1);
}

/// Chat by stages: 5 pairs (10 senders) at 5 msg/s per member, then 15: the
/// timeline offers 50, then 150 deliveries a second, and every one arrives.
#[test]
fn a_staged_chat_offers_each_stage_rate_times_the_senders() {
    let node = Node::spawn(None, "solo", &[]);
    let tmp = common::TempDir::new("lt-results");
    let json = scratch(&tmp, "staged-chat.json");
    let url = ws(&node);
    let file = repo().join("loadtest/scenarios/chat-pairs.toml");
    lt(
        &[
            "run",
            file.to_str().expect("path"),
            "--smoke",
            "--quiet",
            "--url",
            &url,
            "--set",
            "stages=[{rate=5,secs=1},{rate=15,secs=1}]",
            "--json",
            json.to_str().expect("path"),
        ],
        0,
    );
    let doc = read(&json);
    assert_eq!(doc["timeline"]["latency"], "delivery_latency");
    let pts = points(&doc);
    for (t, want) in [(0, 50), (1, 150)] {
        let offered = pts[t]["offered"].as_u64().expect("offered");
        assert!(offered.abs_diff(want) <= 2, "second {t}: offered {offered}, want ~{want}");
    }
    assert_eq!(sum(&pts, "offered"), 200);
    assert_eq!(num(&doc, "results.sent"), 200.0);
    assert_eq!(sum(&pts, "achieved"), num(&doc, "results.delivered") as u64);
    assert_eq!(sum(&pts, "count"), num(&doc, "results.delivery_latency.count") as u64);
}
