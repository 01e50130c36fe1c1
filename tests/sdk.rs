//! The JavaScript SDK (`clients/js`) against real engines: type-checks its `.d.ts`
//! files with `tsc`, then runs its `node --test` suites, which start this build's
//! `rendezvous` binary (passed as `RENDEZVOUS_BIN`) on loopback ports, and a private
//! `redis-server` for the two-node tests. Every frame the server sends there is
//! validated against the protocol's JSON Schema.
//!
//! Needs Node ≥ 20 and npm; `clients/js/node_modules` is installed with `npm ci` when
//! missing (`bash scripts/test.sh` does it up front). It fails, never skips, when
//! Node, npm or redis-server are missing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rendezvous");
/// Bound on the whole Node run (the suites bound each wait themselves).
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

/// A child process killed on drop if it still runs.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

fn node_ok() -> bool {
    Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// `npm ci` in clients/js when its dev dependencies (ajv, typescript) are missing.
fn ensure_node_modules(dir: &Path) {
    assert!(
        node_ok(),
        "`node` is not runnable; install Debian's `nodejs npm` (scripts/test.sh does)"
    );
    if dir.join("node_modules/ajv/package.json").exists()
        && dir.join("node_modules/typescript/package.json").exists()
    {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("run npm (Debian package `npm`)");
    assert!(status.success(), "`npm ci` in {} failed ({status})", dir.display());
}

/// Node 22+ has a global WebSocket; Node 20 needs `--experimental-websocket`.
fn websocket_flag() -> Option<&'static str> {
    let out = Command::new("node").args(["-p", "typeof WebSocket"]).output().expect("run node");
    let kind = String::from_utf8_lossy(&out.stdout);
    (kind.trim() != "function").then_some("--experimental-websocket")
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = pipe.read_to_string(&mut out);
        out
    })
}

/// Run `cmd` to its end within `limit`; returns (success, stdout + stderr).
fn run_bounded(mut cmd: Command, limit: Duration) -> (bool, String) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Killed(cmd.spawn().expect("spawn"));
    let out = drain(child.0.stdout.take().expect("stdout"));
    let err = drain(child.0.stderr.take().expect("stderr"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > limit {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(child);
    let text = format!(
        "--- stdout\n{}--- stderr\n{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    match status {
        None => (false, format!("did not finish within {limit:?}\n{text}")),
        Some(s) => (s.success(), text),
    }
}

#[test]
fn sdk_types_check_with_tsc() {
    let dir = sdk_dir();
    ensure_node_modules(&dir);
    let mut cmd = Command::new("node");
    cmd.args(["node_modules/typescript/bin/tsc", "-p", "tsconfig.json"]).current_dir(&dir);
    let (ok, out) = run_bounded(cmd, Duration::from_secs(120));
    assert!(ok, "tsc found errors in the SDK's types:\n{out}");
}

#[test]
fn sdk_suites_pass_against_real_engines() {
    let dir = sdk_dir();
    ensure_node_modules(&dir);
    let mut cmd = Command::new("node");
    if let Some(flag) = websocket_flag() {
        cmd.arg(flag);
    }
    // The suites by name: `node --test DIR` would also run the helpers in test/.
    let mut suites: Vec<String> = std::fs::read_dir(dir.join("test"))
        .expect("clients/js/test")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.ends_with(".test.mjs"))
        .map(|name| format!("test/{name}"))
        .collect();
    suites.sort();
    assert!(suites.len() >= 4, "SDK suites in clients/js/test: {suites:?}");
    cmd.args(["--test", "--test-reporter=spec"])
        .args(&suites)
        .current_dir(&dir)
        .env("RENDEZVOUS_BIN", BIN)
        .env_remove("RUST_LOG");
    let (ok, out) = run_bounded(cmd, SUITE_TIMEOUT);
    println!("{out}");
    assert!(ok, "the SDK's node --test suites failed (output above)");
}
