//! The load tester's `capacity` and `report` modes, for real: a real engine
//! process, the real `rendezvous-loadtest` binary, and the report opened in
//! Debian's headless chromium (`tests/browser/report_page.mjs` through
//! playwright-core).
//!
//! A short `chat-pairs` run writes a result with its time series; a capacity
//! search with the smoke settings (two steps, one repeat each, a restart
//! command that leaves a trace) writes its steps and verdict; `report` draws
//! both in one HTML file, which must show in the browser without errors and
//! without any network request, with one chart point per second of the run (per
//! latency series: per second in which something finished) and
//! one ladder mark per step. Also: what a user gets for bad input.

use rendezvous_test_support as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cluster::Node;
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";
const LIMIT: Duration = Duration::from_secs(180);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The load tester, built once per test process (see the support crate).
fn loadtest() -> &'static Path {
    common::loadtest_bin()
}

/// `rendezvous-loadtest ARGS…` within [`LIMIT`].
fn loadtest_run(args: &[&str]) -> Output {
    let mut child = Command::new(loadtest())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rendezvous-loadtest");
    let started = Instant::now();
    // Output is small (a table): the pipes do not fill while we poll.
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("rendezvous-loadtest {args:?} passed {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn read_json(path: &Path) -> Value {
    let t = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn scenario(name: &str) -> String {
    repo().join("loadtest/scenarios").join(format!("{name}.toml")).display().to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rdv-ltreport-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn a_run_and_a_capacity_search_are_drawn_in_one_report_that_chromium_shows() {
    let node = Node::spawn(None, "ltreport", &[]);
    let url = format!("ws://{}/ws", node.addr);
    let dir = scratch("report");
    let path = |name: &str| dir.join(name).display().to_string();

    // A short run with its time series.
    let run_json = path("run.json");
    let out = loadtest_run(&[
        "run",
        &scenario("chat-pairs"),
        "--smoke",
        "--quiet",
        "--url",
        &url,
        "--duration-secs",
        "3",
        "--label",
        "engine run",
        "--json",
        &run_json,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = read_json(Path::new(&run_json));
    assert_eq!(run["label"], "engine run");
    let points = run["timeline"]["points"].as_array().map_or(0, Vec::len);
    assert!(points >= 2, "a 3 s run has a point per second: {}", run["timeline"]);

    // A capacity search: two steps of one run each, a restart command before each run.
    let cap_json = path("capacity.json");
    let restarts = path("restarts");
    let restart_cmd = format!("echo restarted >> '{restarts}'");
    let out = loadtest_run(&[
        "capacity",
        &scenario("chat-pairs"),
        "--smoke",
        "--url",
        &url,
        "--start",
        "4",
        "--max-steps",
        "2",
        "--repeats",
        "1",
        "--restart-cmd",
        &restart_cmd,
        "--label",
        "engine search",
        "--json",
        &cap_json,
    ]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("held up to 8/s"), "{said}");
    assert!(said.contains("delivered_per_s"), "the throughput is quoted: {said}");
    let ran = std::fs::read_to_string(&restarts).expect("the restart command ran");
    assert_eq!(ran.lines().count(), 2, "once before each run: {ran:?}");
    let cap = read_json(Path::new(&cap_json));
    let c = &cap["capacity"];
    assert_eq!(cap["label"], "engine search");
    assert_eq!(c["param"], "chat.rate");
    assert_eq!(c["held_up_to"].as_f64(), Some(8.0), "{c}");
    assert!(c["first_failed"].is_null(), "{c}");
    assert!(c["reason"].as_str().is_some_and(|r| r.contains("max-steps")), "{c}");
    let steps = c["steps"].as_array().expect("steps");
    let values: Vec<f64> = steps.iter().filter_map(|s| s["value"].as_f64()).collect();
    assert_eq!(values, vec![4.0, 8.0]);
    for s in steps {
        assert_eq!(s["pass"], true, "{s}");
        assert_eq!(s["phase"], "step", "{s}");
        assert!(s["median"]["delivery_latency.p99_ms"].is_number(), "{s}");
        assert!(s["throughput"].as_f64().is_some_and(|t| t > 0.0), "{s}");
        let file = s["runs"][0]["file"].as_str().expect("the run's file");
        let one = read_json(Path::new(file));
        assert_eq!(one["pass"], true, "{file}");
        let value = s["value"].as_f64().unwrap_or_default();
        assert_eq!(one["label"], format!("engine search chat.rate={value}"), "{file}");
    }
    assert_eq!(
        c["thresholds"].as_array().map(Vec::len),
        run["thresholds"].as_array().map(Vec::len),
        "the search judges by the scenario's thresholds"
    );

    // A start that already fails its thresholds: exit 1, nothing held.
    let failing_json = path("failing.json");
    let out = loadtest_run(&[
        "capacity",
        &scenario("chat-pairs"),
        "--smoke",
        "--url",
        &url,
        "--repeats",
        "1",
        "--set",
        "thresholds.lost={max=-1}",
        "--json",
        &failing_json,
    ]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("held at no value tried"), "{said}");
    let failing = read_json(Path::new(&failing_json));
    assert!(failing["capacity"]["held_up_to"].is_null(), "{failing}");
    assert_eq!(failing["capacity"]["first_failed"].as_f64(), Some(10.0), "{failing}");
    assert_eq!(failing["capacity"]["steps"].as_array().map(Vec::len), Some(1), "{failing}");

    // The report over both, opened in Chromium.
    let html = path("report.html");
    let out = loadtest_run(&["report", &run_json, &cap_json, "-o", &html]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let page = std::fs::read_to_string(&html).expect("report written");
    assert!(page.contains("Content-Security-Policy") && !page.contains("<script"));
    assert!(!page.contains("http://") && !page.contains("https://"), "nothing to fetch");

    let browser = repo().join("tests/browser");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: `bash scripts/test.sh` installs it"
    );
    assert!(
        browser.join("node_modules/playwright-core/package.json").exists(),
        "tests/browser/node_modules is missing: `npm ci --prefix tests/browser`"
    );
    let artifacts = repo().join("tests/artifacts/browser");
    let node_out = Command::new("node")
        .arg(browser.join("report_page.mjs"))
        .args([&html, &run_json, &cap_json])
        .arg(&artifacts)
        .env("CHROMIUM", CHROMIUM)
        .current_dir(&browser)
        .stdin(Stdio::null())
        .output()
        .expect("run node");
    assert!(node_out.status.success(), "report_page.mjs failed:\n{}", text(&node_out));
    assert!(artifacts.join("loadtest-report.png").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_named_and_exits_2() {
    let dir = scratch("bad");
    let junk = dir.join("junk.json");
    std::fs::write(&junk, "{\"hello\": 1}").expect("write");
    let html = dir.join("r.html").display().to_string();
    let junk = junk.display().to_string();
    let out = loadtest_run(&["report", &junk, "-o", &html]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("neither a run result"), "{}", text(&out));
    let missing = dir.join("nope.json").display().to_string();
    let out = loadtest_run(&["report", &missing, "-o", &html]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!Path::new(&html).exists(), "no page for bad input");

    let file = scenario("chat-pairs");
    for (args, says) in [
        (vec!["--param", "chat.speed"], "unknown field"),
        (vec!["--factor", "1"], "--factor"),
        (vec!["--repeats", "0"], "--repeats"),
        (vec!["--start", "0"], "--start"),
    ] {
        let mut all = vec!["capacity", file.as_str(), "--smoke"];
        all.extend(args.iter().copied());
        let out = loadtest_run(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    let no_param = dir.join("x.toml");
    std::fs::write(
        &no_param,
        "name='x'\nkind='churn'\nduration_secs=1\n[churn]\nrate=1\n[thresholds]\nerrors={max=0}\n",
    )
    .expect("write");
    let out = loadtest_run(&["capacity", &no_param.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--param"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
