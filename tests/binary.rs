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
    /// Every line it wrote to stderr so far.
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
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
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                let _ = tx.send(addr);
            }
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).expect("ready line logged");
    Proc { child, addr, logs }
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

/// Neither the JWT secret, nor a token a client sent, nor a Redis password in the
/// URL appears in the logs, even at debug level and even when the token is bad
/// or Redis cannot be reached (the errors that would be tempted to quote them).
#[tokio::test]
async fn secrets_and_tokens_never_reach_the_logs() {
    let secret = "s3cr3t-never-log-this-0123456789abcdef";
    let password = "hunter2-redis-password";
    let redis = format!("redis://:{password}@127.0.0.1:1");
    let mut p = spawn(
        &["--bind", "127.0.0.1:0", "--jwt-secret", secret, "--redis-url", &redis],
        &[("RUST_LOG", "debug")],
    );
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let claims = serde_json::json!({"sub": "alice", "exp": exp});
    let good = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("jwt");
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-of-some-length-000000"),
    )
    .expect("jwt");
    let c = Client::connect(&format!("ws://{}/ws?token={good}", p.addr)).await;
    assert!(matches!(&c.welcome, ServerFrame::Welcome { user_id, .. } if user_id == "alice"));
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={forged}", p.addr)).await;
    assert!(refused.is_err(), "a forged token was accepted");
    // Give the bridge time to fail at Redis a few times.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    drop(c);
    signal(&p, "-TERM");
    assert_eq!(wait_exit(&mut p, Duration::from_secs(10)), 0);
    std::thread::sleep(Duration::from_millis(100));
    let logs = p.logs.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
    assert!(logs.contains("DEBUG") || logs.contains("debug"), "debug logs were on:\n{logs}");
    assert!(logs.contains("redis") || logs.contains("Redis"), "the Redis failure was logged");
    for (what, needle) in [
        ("JWT secret", secret),
        ("token", good.as_str()),
        ("forged token", forged.as_str()),
        ("Redis password", password),
    ] {
        assert!(!logs.contains(needle), "the {what} is in the logs:\n{logs}");
    }
    // Signatures are what make a token usable: not even those.
    for t in [&good, &forged] {
        let signature = t.rsplit('.').next().expect("signature");
        assert!(!logs.contains(signature), "a token signature is in the logs");
    }
}

/// Anonymous names are for loopback: bound to every interface without a secret,
/// the node refuses `?user=` (HTTP 401) unless `--anonymous allow` forces it, and
/// the forced mode says so loudly in the log.
#[tokio::test]
async fn anonymous_mode_is_refused_on_a_non_loopback_bind_unless_forced() {
    let p = spawn(&["--bind", "0.0.0.0:0"], &[]);
    let port = p.addr.rsplit(':').next().expect("port").to_owned();
    let url = format!("ws://127.0.0.1:{port}/ws?user=mallory");
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        Err(e) => panic!("expected HTTP 401, got {e}"),
        Ok(_) => panic!("an anonymous user got in on a non-loopback bind"),
    }
    drop(p);
    let forced = spawn(&["--bind", "0.0.0.0:0", "--anonymous", "allow"], &[]);
    let port = forced.addr.rsplit(':').next().expect("port").to_owned();
    let c = Client::connect(&format!("ws://127.0.0.1:{port}/ws?user=dev")).await;
    assert!(matches!(&c.welcome, ServerFrame::Welcome { user_id, .. } if user_id == "dev"));
    let logs = forced.logs.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
    assert!(logs.contains("ANONYMOUS MODE on a non-loopback address"), "{logs}");
}
