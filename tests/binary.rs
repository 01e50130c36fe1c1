//! The operations contract, against the real `rendezvous` binary: flags and
//! environment variables, the ready log line, TOML config, graceful drain on
//! SIGTERM/SIGINT with close 1012 and exit code 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Ended};
use rendezvous_actors::protocol::ServerFrame;

const BIN: &str = env!("CARGO_BIN_EXE_rendezvous");

/// A spawned engine process; killed on drop if still running.
struct Proc {
    child: Child,
    addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the binary and wait for its "listening on http://ADDR" line.
fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped()).env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn rendezvous");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).expect("ready line logged");
    Proc { child, addr }
}

fn signal(p: &Proc, sig: &str) {
    let status =
        Command::new("kill").args([sig, &p.child.id().to_string()]).status().expect("kill");
    assert!(status.success());
}

fn wait_exit(p: &mut Proc, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = p.child.try_wait().expect("wait") {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "process did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn sigterm_drains_sessions_with_1012_and_exits_zero() {
    let mut p = spawn(&["--bind", "127.0.0.1:0", "--node-id", "node-a"], &[]);
    let mut c = Client::connect(&format!("ws://{}/ws?user=alice", p.addr)).await;
    match &c.welcome {
        ServerFrame::Welcome { node, user_id, .. } => {
            assert_eq!(node, "node-a");
            assert_eq!(user_id, "alice");
        }
        other => panic!("{other:?}"),
    }
    signal(&p, "-TERM");
    assert_eq!(c.closed().await, Ended::Closed(1012));
    assert_eq!(wait_exit(&mut p, Duration::from_secs(10)), 0);
}

#[tokio::test]
async fn sigint_exits_zero() {
    let mut p = spawn(&["--bind", "127.0.0.1:0"], &[]);
    signal(&p, "-INT");
    assert_eq!(wait_exit(&mut p, Duration::from_secs(10)), 0);
}

#[tokio::test]
async fn environment_variables_configure_the_node() {
    let p = spawn(&[], &[("RENDEZVOUS_BIND", "127.0.0.1:0"), ("RENDEZVOUS_NODE_ID", "from-env")]);
    let c = Client::connect(&format!("ws://{}/ws?user=bob", p.addr)).await;
    assert!(matches!(&c.welcome, ServerFrame::Welcome { node, .. } if node == "from-env"));
    let (status, body) = common::http_get(p.addr.parse().expect("addr"), "/api/stats").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"node\":\"from-env\""), "{body}");
}

#[tokio::test]
async fn flags_override_environment_and_config_file() {
    let dir = std::env::temp_dir().join(format!("rdv-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("rendezvous.toml");
    std::fs::write(
        &file,
        "node_id = \"from-file\"\nbind = \"127.0.0.1:0\"\n[engine]\nmax_text_chars = 5\n",
    )
    .expect("write");
    let p = spawn(
        &["--config", file.to_str().expect("path"), "--node-id", "from-flag"],
        &[("RENDEZVOUS_NODE_ID", "from-env")],
    );
    let mut c = Client::connect(&format!("ws://{}/ws?user=carol", p.addr)).await;
    assert!(matches!(&c.welcome, ServerFrame::Welcome { node, .. } if node == "from-flag"));
    // The file's engine section applies: a 6-character text is too large.
    c.send_json(serde_json::json!({"action":"join","room_id":"pub:x"})).await;
    c.recv_kind("joined").await;
    c.send_json(serde_json::json!({"action":"send","room_id":"pub:x","text":"abcdef"})).await;
    match c.recv_kind("error").await {
        ServerFrame::Error { code, .. } => {
            assert_eq!(code, rendezvous_actors::protocol::ErrorCode::TooLarge)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn help_explains_every_contract_option() {
    let out = Command::new(BIN).arg("--help").output().expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--bind",
        "--redis-url",
        "--node-id",
        "--jwt-secret",
        "--config",
        "RENDEZVOUS_BIND",
        "RENDEZVOUS_REDIS_URL",
        "RENDEZVOUS_NODE_ID",
        "RENDEZVOUS_JWT_SECRET",
        "--search-timeout-ms",
        "--find-match-per-minute",
        "--send-per-second",
        "--max-frame-bytes",
        "--ladder",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn invalid_settings_exit_with_a_clear_message() {
    let out = Command::new(BIN).args(["--ladder", "0:same:2,0:any:0"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ladder"));
    let out = Command::new(BIN).args(["--jwt-secret", "short"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("jwt_secret"));
}
