//! The browser client (src/web/) in a real browser: starts the `rendezvous` binary on a
//! loopback port and runs `tests/browser/two_tabs.mjs` with Node, which drives Debian's
//! headless chromium through playwright-core: two pages match, chat both ways, see
//! typing and read receipts, set up a WebRTC call (fake camera and microphone) until
//! both peer connections are `connected`; a third page is matched after "Next"; a
//! dropped page reconnects and fetches what it missed. Screenshots land in
//! `tests/artifacts/browser/`.
//!
//! A second scenario, `tests/browser/failover.mjs`, opens two pages on a two-node
//! cluster (a real `redis-server`, two `rendezvous` processes), one per node, and kills
//! one node with SIGKILL while they chat: its page must move to the other node by
//! itself, and every message sent on either side during the outage must show exactly
//! once, in seq order.
//!
//! A third, `tests/browser/admin_page.mjs`, drives the admin page (src/web/admin/) from
//! a report in its queue to a ban.
//!
//! Needs /usr/bin/chromium (Debian's `chromium`) and `tests/browser/node_modules`
//! (`npm ci --prefix tests/browser`); `bash scripts/test.sh` installs both. When either
//! is missing this test fails and says so: it never skips.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rendezvous_test_support::cluster::{Node, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_rendezvous");
const CHROMIUM: &str = "/usr/bin/chromium";
/// Bound on the whole Node scenario (the script bounds itself to 60 s as well).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

/// One browser scenario at a time: each starts its own Chromium, and the machine is shared.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// A child process killed on drop if it still runs.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn install_hint() -> &'static str {
    "install with `bash scripts/test.sh` (it does both), or by hand: \
     `apt-get install -y chromium` and `npm ci --prefix tests/browser`"
}

/// Fail (never skip) when the browser, Node or the node modules are missing.
fn preflight(dir: &Path) {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing (Debian package `chromium`); {}",
        install_hint()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "`node` is not runnable ({node:?}); install Debian's `nodejs npm`, then {}",
        install_hint()
    );
    assert!(
        dir.join("node_modules/playwright-core/package.json").exists(),
        "{} is missing; {}",
        dir.join("node_modules/playwright-core").display(),
        install_hint()
    );
}

/// Start the engine and wait for its "listening on http://ADDR" line; its log is kept
/// in `log` (printed when the test fails).
fn spawn_engine(log: Arc<Mutex<Vec<String>>>) -> (Killed, String) {
    let mut child = Command::new(BIN)
        .args(["--bind", "127.0.0.1:0", "--node-id", "browser-test"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .spawn()
        .expect("spawn rendezvous");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                let _ = tx.send(addr);
            }
            log.lock().expect("log").push(line);
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).expect("ready line logged");
    (Killed(child), addr)
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = pipe.read_to_string(&mut out);
        out
    })
}

/// Run `node SCRIPT ARGS…` in `dir` within [`SCENARIO_TIMEOUT`], print its output,
/// and say whether it exited 0.
fn run_script(dir: &Path, script: &str, args: &[&str]) -> bool {
    let mut child = Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .env("CHROMIUM", CHROMIUM)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let mut node = Killed(child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = node.0.try_wait().expect("wait node") {
            break Some(status);
        }
        if started.elapsed() > SCENARIO_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(node); // kills the script (and so its browser) on a timeout
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    println!("--- {script} stdout\n{out}--- {script} stderr\n{err}");
    if status.is_none() {
        println!("{script} did not finish within {SCENARIO_TIMEOUT:?}");
    }
    status.is_some_and(|s| s.success())
}

#[test]
fn two_tabs_match_chat_call_and_next_in_chromium() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/browser");
    preflight(&dir);
    let artifacts = root.join("tests/artifacts/browser");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");

    let engine_log = Arc::new(Mutex::new(Vec::new()));
    let (_engine, addr) = spawn_engine(engine_log.clone());
    let base = format!("http://{addr}");

    let script_args = [base.as_str(), artifacts.to_str().expect("utf-8 path")];
    let ok = run_script(&dir, "two_tabs.mjs", &script_args);
    if !ok {
        println!("--- engine log\n{}", engine_log.lock().expect("log").join("\n"));
    }
    assert!(ok, "the browser scenario failed; screenshots in {artifacts:?}");
    for page in ["a", "b", "c"] {
        let shot = artifacts.join(format!("{page}-5-after-next.png"));
        assert!(shot.exists(), "screenshot {shot:?} was not saved");
    }
}

#[test]
fn a_tab_moves_to_the_other_node_after_kill_9_and_nothing_is_lost_or_doubled() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/browser");
    preflight(&dir);
    let artifacts = root.join("tests/artifacts/browser");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");

    let redis = RedisServer::start();
    // A grace long enough for the killed node's users to come back through the other.
    let args = [("--reconnect-grace-ms", "30000")];
    let a = Node::spawn(Some(&redis.url()), "fo-node-a", &args);
    let b = Node::spawn(Some(&redis.url()), "fo-node-b", &args);
    let (base_a, base_b) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let pid_a = a.pid().to_string();
    let script_args =
        [base_a.as_str(), base_b.as_str(), pid_a.as_str(), artifacts.to_str().expect("utf-8 path")];
    let ok = run_script(&dir, "failover.mjs", &script_args);
    if !ok {
        println!("--- fo-node-b log\n{}", b.logs());
    }
    assert!(ok, "the failover scenario failed; screenshots in {artifacts:?}");
}

/// The admin page (src/web/admin/) from a report to a ban: a real client reports
/// its partner, `admin_page.mjs` bans them from the report queue in Chromium, and
/// the banned client's socket is closed with 4003.
#[test]
fn the_admin_page_turns_a_report_into_a_ban_in_chromium() {
    use rendezvous_actors::protocol::close;
    use rendezvous_test_support::admin::{self, ADMIN_ARGS, ADMIN_TOKEN};
    use rendezvous_test_support::chat::{exchange, next};
    use rendezvous_test_support::search::pair;
    use rendezvous_test_support::Ended;
    use serde_json::json;

    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/browser");
    preflight(&dir);
    let artifacts = root.join("tests/artifacts/browser");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");

    let nodes = [Node::spawn(None, "admin-page", ADMIN_ARGS)];
    let admin_addr = nodes[0].admin_addr();
    let (_ann, mut bob) = rt.block_on(async {
        let (mut ann, mut bob, room) = pair(&nodes, (0, "ann"), (0, "bob")).await;
        exchange(&mut bob, &mut ann, &room, "something awful", "c1").await;
        ann.send_json(json!({"action":"report","user_id":"bob","room_id":room,"reason":"abuse"}))
            .await;
        assert_eq!(next(&mut ann).await.kind(), "reported");
        (ann, bob)
    });

    let base = format!("http://{admin_addr}");
    let script_args = [base.as_str(), ADMIN_TOKEN, "bob", artifacts.to_str().expect("utf-8 path")];
    let ok = run_script(&dir, "admin_page.mjs", &script_args);
    assert!(ok, "the admin page scenario failed; screenshots in {artifacts:?}");

    rt.block_on(async {
        assert_eq!(bob.closed().await, Ended::Closed(close::BANNED));
        let bans = admin::get(admin_addr, "/api/bans").await;
        assert_eq!(bans[0]["user"], "bob", "{bans}");
        let reports = admin::get(admin_addr, "/api/reports?status=all").await;
        assert_eq!(reports[0]["resolution"]["outcome"], "banned", "{reports}");
    });
}
