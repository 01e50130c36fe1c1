//! Every bundled load-test scenario (`loadtest/scenarios/*.toml`), run by the real
//! `rendezvous-loadtest` binary with its `[smoke]` settings (a second or a few,
//! a handful of users) against real engine processes: one node, or two nodes
//! and a real redis-server. Each run must exit 0 (every threshold of the file
//! met), and its JSON result must show that the scenario really did its work.
//! Also: a missed threshold exits 1, and a file nobody can run exits 2.

use rendezvous_test_support as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Node};
use serde_json::Value;

const RUN_LIMIT: Duration = Duration::from_secs(120);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The load tester, built once per test process (see the support crate).
fn loadtest() -> &'static Path {
    common::loadtest_bin()
}

struct Outcome {
    code: Option<i32>,
    json: Value,
    stdout: String,
    stderr: String,
}

/// `rendezvous-loadtest run <scenario> --smoke` at `urls`, with `--set` pairs.
fn run(scenario: &str, urls: &[String], sets: &[String]) -> Outcome {
    run_with_env(scenario, urls, sets, &[])
}

fn run_with_env(scenario: &str, urls: &[String], sets: &[String], env: &[(&str, &str)]) -> Outcome {
    let file = repo().join("loadtest/scenarios").join(format!("{scenario}.toml"));
    let tmp = common::TempDir::new(&format!("scenario-{scenario}"));
    let json = tmp.path().join("results.json");
    let mut cmd = Command::new(loadtest());
    cmd.arg("run").arg(&file).arg("--smoke").arg("--quiet").arg("--json").arg(&json);
    for url in urls {
        cmd.arg("--url").arg(url);
    }
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rendezvous-loadtest");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            panic!("{scenario}: the smoke run passed {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    Outcome { code: out.status.code(), json, stdout, stderr }
}

/// Run and insist on exit 0 and `"pass": true`.
fn passes(scenario: &str, urls: &[String], sets: &[String]) -> Value {
    let o = run(scenario, urls, sets);
    assert!(
        o.code == Some(0) && o.json["pass"] == Value::Bool(true),
        "{scenario}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.code,
        o.stdout,
        o.stderr
    );
    assert!(o.stdout.contains(&format!("scenario {scenario}: PASS")), "{}", o.stdout);
    o.json["results"].clone()
}

fn num(results: &Value, path: &str) -> f64 {
    let mut at = results;
    for key in path.split('.') {
        at = &at[key];
    }
    at.as_f64().unwrap_or_else(|| panic!("results have no number at {path}: {results}"))
}

fn solo() -> Node {
    Node::spawn(None, "solo", &[])
}

fn ws(node: &Node) -> String {
    format!("ws://{}/ws", node.addr)
}

#[test]
fn match_storm_matches_every_arrival_once() {
    let node = solo();
    let r = passes("match-storm", &[ws(&node)], &[]);
    assert_eq!(num(&r, "matched"), 100.0, "{r}");
    assert_eq!(num(&r, "pairs"), 50.0, "{r}");
    assert_eq!(num(&r, "double_matches") + num(&r, "asymmetric_pairs"), 0.0);
    assert_eq!(num(&r, "match_latency.count"), 50.0);
}

#[test]
fn match_quality_scores_the_trace_against_the_policy_and_a_ladder() {
    let node = solo();
    let three_seconds = "0:same:2,1000:same:1,2000:any:1,2800:any:0";
    let ladder = Node::spawn(None, "ladder", &[("--ladder", three_seconds)]);
    let compare = format!("quality.compare_urls=[\"{}\"]", ws(&ladder));
    let r = passes("match-quality", &[ws(&node)], &[compare]);
    for run in ["r40", "r40.compare"] {
        // 80 arrivals in 2 s: 40 pairs but for the last user of a language or two.
        let pairs = num(&r, &format!("{run}.pairs"));
        assert!((36.0..=40.0).contains(&pairs), "{run}: {r}");
        let hist: f64 = (0..4).map(|k| num(&r, &format!("{run}.shared_{k}"))).sum();
        assert_eq!(hist, pairs, "{run}: the histogram counts every pair");
        assert_eq!(num(&r, &format!("{run}.same_language_share")), 1.0, "{r}");
        assert_eq!(num(&r, &format!("{run}.double_matches")), 0.0, "{r}");
    }
}

#[test]
fn match_pairs_match_every_designated_pair() {
    let node = solo();
    let r = passes("match-pairs", &[ws(&node)], &[]);
    // 40 arrivals: 20 pairs, each matched with its own partner and timed.
    assert_eq!(num(&r, "pairs"), 20.0, "{r}");
    assert_eq!(num(&r, "match_latency.count"), 20.0, "{r}");
    assert_eq!(num(&r, "stranger_pairs") + num(&r, "double_matches"), 0.0, "{r}");
}

#[test]
fn chat_rooms_of_four_deliver_every_message_to_every_other_member() {
    let node = solo();
    let r = passes("chat-rooms", &[ws(&node)], &[]);
    // 3 rooms × 4 members × 10/s × 1 s, each to 3 others.
    assert!(num(&r, "sent") >= 100.0, "{r}");
    assert_eq!(num(&r, "delivered"), num(&r, "acked") * 3.0, "{r}");
    assert_eq!(num(&r, "lost") + num(&r, "gaps") + num(&r, "duplicated"), 0.0);
}

#[test]
fn chat_pairs_deliver_everything() {
    let node = solo();
    let r = passes("chat-pairs", &[ws(&node)], &[]);
    assert!(num(&r, "delivered") >= 90.0, "{r}");
    assert_eq!(num(&r, "delivered"), num(&r, "acked"), "{r}");
    // The engine's CPU time over the sending, from its /metrics (this short run
    // may stay under the kernel's 10 ms tick).
    assert!(num(&r, "server.cpu_s") >= 0.0, "{r}");
    assert!(num(&r, "server.cpu_window_s") >= 1.0, "{r}");
}

#[test]
fn churn_goes_through_every_round() {
    let node = solo();
    let r = passes("churn", &[ws(&node)], &[]);
    assert_eq!(num(&r, "users"), 20.0, "{r}");
    assert_eq!(num(&r, "rounds"), 40.0, "{r}");
    assert_eq!(num(&r, "messages_delivered"), 120.0, "{r}");
}

#[test]
fn idle_capacity_holds_sessions_from_two_worker_processes() {
    let node = solo();
    let r = passes("idle-capacity", &[ws(&node)], &[]);
    assert_eq!(num(&r, "connected"), 200.0, "{r}");
    // Both workers' sessions were open at once on the server.
    assert!(num(&r, "server.peak_sessions") >= 150.0, "{r}");
    assert!(num(&r, "server.rss_peak_mib") > 0.0, "{r}");
}

#[test]
fn soak_returns_to_its_baseline() {
    let node = solo();
    let r = passes("soak", &[ws(&node)], &[]);
    assert!(num(&r, "chat.delivered") > 0.0, "{r}");
    assert!(num(&r, "churn.rounds") > 0.0, "{r}");
    assert!(num(&r, "idle.connected") >= 20.0, "{r}");
    assert_eq!(num(&r, "server.sessions_after"), 0.0, "{r}");
}

#[test]
fn slow_consumers_do_not_stop_the_others() {
    // A short write timeout, so that the stalled readers are cut off within the
    // few seconds of a smoke run.
    let tmp = common::TempDir::new("slow");
    let config = tmp.path().join("slow.toml");
    std::fs::write(&config, "[engine]\nwrite_timeout_ms = 1000\n").expect("write config");
    let node = Node::spawn(None, "solo", &[("--config", config.to_str().expect("utf-8 path"))]);
    let r = passes("slow-consumers", &[ws(&node)], &[]);
    assert_eq!(num(&r, "stalled_pairs"), 5.0, "{r}");
    assert_eq!(
        num(&r, "stalled_cut_off"),
        5.0,
        "the server did not cut the stalled readers off: {r}"
    );
    assert_eq!(num(&r, "delivered"), num(&r, "acked"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_node_pairs_chat_across_nodes() {
    let cluster = Cluster::start(2).await;
    let urls: Vec<String> = cluster.nodes.iter().map(ws).collect();
    let r =
        tokio::task::spawn_blocking(move || passes("multi-node", &urls, &[])).await.expect("run");
    assert!(num(&r, "delivered") >= 150.0, "{r}");
    assert_eq!(num(&r, "setup_match_latency.count"), 10.0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_node_match_pairs_every_user_across_the_nodes() {
    let cluster = Cluster::start(2).await;
    let urls: Vec<String> = cluster.nodes.iter().map(ws).collect();
    let r = tokio::task::spawn_blocking(move || passes("multi-node-match", &urls, &[]))
        .await
        .expect("run");
    // 100 arrivals: 50 pairs, each with one member on each node, each matched
    // with its own partner.
    assert_eq!(num(&r, "matched"), 100.0, "{r}");
    assert_eq!(num(&r, "cross_node_pairs"), 50.0, "{r}");
    assert_eq!(num(&r, "cross_node_match_latency.count"), 50.0, "{r}");
    assert_eq!(num(&r, "stranger_pairs"), 0.0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_completes_across_nodes() {
    let cluster = Cluster::start(2).await;
    let urls: Vec<String> = cluster.nodes.iter().map(ws).collect();
    let r =
        tokio::task::spawn_blocking(move || passes("full-flow", &urls, &[])).await.expect("run");
    assert_eq!(num(&r, "flows_completed"), 5.0, "{r}");
    // Offer, answer and 4 candidates each way, per flow.
    assert_eq!(num(&r, "signal_latency.count"), 50.0, "{r}");
}

/// Normal matching and chat alone, then beside every attacker of RELIABILITY.md's
/// "Facing the open Internet" (silent and half-header sockets, invented languages, block, signal,
/// history, join and typing floods, each from its own 127.0.0.x), against a
/// real node. The normal users must see no error in either phase; every
/// attacker must have done its work and the server's answers be counted.
#[test]
fn attack_runs_every_attacker_beside_the_normal_users() {
    // A short handshake deadline: the smoke run's silent and half-header sockets
    // are then closed by the server within it.
    let flags = [("--max-rooms-per-user", "20"), ("--handshake-timeout-ms", "1000")];
    let node = Node::spawn(None, "solo", &flags);
    let r = passes("attack", &[ws(&node)], &[]);
    for phase in ["control", "attack"] {
        assert_eq!(num(&r, &format!("{phase}.normal_errors")), 0.0, "{r}");
        // 20 arrivals/s for 2 s; 5 pairs × 2 members × 5/s for 2 s.
        assert_eq!(num(&r, &format!("{phase}.match.matched")), 40.0, "{r}");
        assert_eq!(num(&r, &format!("{phase}.chat.delivered")), 100.0, "{r}");
        assert!(num(&r, &format!("{phase}.match.match_latency.p99_ms")) > 0.0, "{r}");
    }
    assert!(num(&r, "ratio.match_p99") > 0.0 && num(&r, "ratio.delivery_p99") > 0.0, "{r}");
    for raw in ["silent", "half"] {
        assert!(num(&r, &format!("attackers.{raw}.opened")) >= 40.0, "{r}");
        assert!(num(&r, &format!("attackers.{raw}.closed_by_server")) >= 1.0, "{r}");
    }
    assert!(num(&r, "attackers.languages.searches.well_formed") >= 40.0, "{r}");
    assert!(num(&r, "attackers.languages.searches.malformed") >= 30.0, "{r}");
    assert!(num(&r, "attackers.block.sent") >= 40.0, "{r}");
    assert_eq!(num(&r, "attackers.join.sent"), 200.0, "{r}");
    let most_rooms = num(&r, "attackers.join.most_rooms_one_user");
    assert!((1.0..=20.0).contains(&most_rooms), "a join burst passed the room cap: {r}");
    assert!(num(&r, "attackers.languages.errors.bad_request") >= 1.0, "{r}");
    for flood in ["signal", "history", "typing"] {
        assert!(num(&r, &format!("attackers.{flood}.sessions")) >= 1.0, "{r}");
        assert!(num(&r, &format!("attackers.{flood}.sent")) >= 5.0, "{r}");
    }
    // The floods were answered: delivered, or refused with an error frame.
    let answered = |name: &str, reply: &str| {
        let at = |path: String| r.pointer(&path).and_then(Value::as_f64).unwrap_or(0.0);
        at(format!("/attackers/{name}/replies/{reply}"))
            + at(format!("/attackers/{name}/errors/total"))
    };
    assert!(answered("signal", "signal") >= 1.0, "{r}");
    assert!(answered("history", "history") >= 1.0, "{r}");
    assert!(answered("typing", "typing") >= 1.0, "{r}");
    assert!(answered("block", "blocked") >= 1.0, "{r}");
}

/// Kills the redis-server the scenario started (daemonized, so no harness owns it).
struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failover_is_survived_and_reported() {
    let cluster = Cluster::start(2).await;
    let urls: Vec<String> = cluster.nodes.iter().map(ws).collect();
    let port = cluster.redis.port();
    let pid = PidFile(std::env::temp_dir().join(format!("rdv-failover-{port}.pid")));
    let stop = format!("failover.stop_command=\"redis-cli -p {port} shutdown nosave\"");
    let start = format!(
        "failover.start_command=\"redis-server --port {port} --bind 127.0.0.1 --save '' \
         --appendonly no --daemonize yes --pidfile {}\"",
        pid.0.display()
    );
    let r = tokio::task::spawn_blocking(move || passes("redis-failover", &urls, &[stop, start]))
        .await
        .expect("run");
    // The tool saw the outage and the recovery.
    assert!(num(&r, "failover.not_ready_after_stop_s") >= 0.0, "never saw a node unready: {r}");
    assert!(num(&r, "failover.ready_after_start_s") >= 0.0, "never ready again: {r}");
    assert!(num(&r, "failover.rate_before_per_s") > 0.0, "{r}");
    assert!(num(&r, "failover.rate_after_per_s") > 0.0, "{r}");
    drop(cluster);
    drop(pid);
}

/// Against a node that takes tokens only, the load tester mints its own HS256
/// JWTs from the secret (users get in, so it signed them right); with a wrong
/// secret nobody gets in.
#[test]
fn tokens_are_minted_for_a_node_that_wants_them() {
    let secret = "scenario-smoke-secret-0123456789abcdef";
    let node = Node::spawn(None, "jwt", &[("--jwt-secret", secret)]);
    let env = [("RENDEZVOUS_LOADTEST_JWT_SECRET", secret)];
    let o = run_with_env("chat-pairs", &[ws(&node)], &[], &env);
    assert_eq!(o.code, Some(0), "stdout:\n{}\nstderr:\n{}", o.stdout, o.stderr);
    assert!(num(&o.json["results"], "delivered") > 0.0);
    let wrong = [("RENDEZVOUS_LOADTEST_JWT_SECRET", "not-the-secret-0123456789abcdefghij")];
    let o = run_with_env("chat-pairs", &[ws(&node)], &[], &wrong);
    assert_eq!(o.code, Some(2), "a wrong secret got in: {}", o.stdout);
}

#[test]
fn a_missed_threshold_exits_1_and_says_which() {
    let node = solo();
    let o = run("chat-pairs", &[ws(&node)], &["thresholds.delivered={min=1e12}".into()]);
    assert_eq!(o.code, Some(1), "stdout:\n{}\nstderr:\n{}", o.stdout, o.stderr);
    assert_eq!(o.json["pass"], Value::Bool(false));
    assert!(o.stdout.contains("FAIL  delivered"), "{}", o.stdout);
    let failed: Vec<&Value> = o.json["thresholds"]
        .as_array()
        .expect("thresholds")
        .iter()
        .filter(|t| t["pass"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{}", o.json);
}

#[test]
fn a_scenario_that_cannot_run_exits_2() {
    let o = run("chat-pairs", &["ws://127.0.0.1:1/ws".into()], &[]);
    assert_eq!(o.code, Some(2), "stdout:\n{}\nstderr:\n{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("failed to form"), "{}", o.stderr);
    let o = run("chat-pairs", &[], &["chat.rate=-1".into()]);
    assert_eq!(o.code, Some(2));
    assert!(o.stderr.contains("chat.rate must be a positive number"), "{}", o.stderr);
}

#[test]
fn every_bundled_scenario_is_covered_here() {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("loadtest/scenarios"))
        .expect("loadtest/scenarios")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".toml").map(str::to_owned))
        .collect();
    names.sort();
    let me = std::fs::read_to_string(repo().join("tests/scenarios.rs")).expect("this file");
    for name in &names {
        assert!(me.contains(&format!("passes(\"{name}\"")), "scenario {name} has no smoke run");
    }
    assert!(names.len() >= 8, "{names:?}");
}
