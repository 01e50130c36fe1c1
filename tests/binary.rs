//! The operations contract, against the real `rendezvous` binary: flags and
//! environment variables, the ready log line, TOML config, `--print-config`,
//! graceful drain on SIGTERM/SIGINT with close 1012 and exit code 0.

use rendezvous_test_support as common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Ended};
use futures_util::StreamExt;
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
    let (_dir, file) = temp_file(
        "rendezvous",
        "node_id = \"from-file\"\nbind = \"127.0.0.1:0\"\n[engine]\nmax_text_chars = 5\n",
    );
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

/// Run the binary to its end: (exit code, stdout, stderr).
fn run(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .expect("run rendezvous");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// A file in a fresh temporary folder, removed with the folder when the test
/// passes (kept for inspection when it fails).
fn temp_file(name: &str, contents: &str) -> (common::TempDir, std::path::PathBuf) {
    let dir = common::TempDir::new(&format!("bin-{name}"));
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, contents).expect("write");
    (dir, path)
}

/// `--print-config` prints TOML that `--config` reads back into the same settings.
#[test]
fn print_config_reads_back_through_config() {
    let (code, printed, err) = run(
        &[
            "--print-config",
            "--node-id",
            "n-printed",
            "--max-interests",
            "3",
            "--ladder",
            "0:same:1,700:any:0",
            "--trusted-proxies",
            "10.0.0.0/8,::1",
            "--languages",
            "en,fr",
            "--allowed-origins",
            "https://chat.example.com",
            "--anonymous",
            "deny",
        ],
        &[("RENDEZVOUS_HEARTBEAT_INTERVAL_MS", "1500")],
    );
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "anonymous = \"deny\"",
        "trusted_proxies = [\"10.0.0.0/8\", \"::1/128\"]",
        "node_id = \"n-printed\"",
        "max_interests = 3",
        "heartbeat_interval_ms = 1500",
        "[[engine.ladder]]",
        "after_ms = 700",
    ] {
        assert!(printed.contains(line), "{line} missing:\n{printed}");
    }
    let (_dir, file) = temp_file("printed", &printed);
    let (code, again, err) =
        run(&["--config", file.to_str().expect("path"), "--print-config"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(again, printed);
}

/// A setting given as a flag beats the environment, which beats the file, which
/// beats the declared default.
#[test]
fn a_flag_beats_the_environment_which_beats_the_file() {
    let (_dir, file) = temp_file(
        "layers",
        "handshake_timeout_ms = 1111\n[engine]\nmax_interests = 5\nmax_name_chars = 50\n\
         max_signal_bytes = 500\n",
    );
    let (code, printed, err) = run(
        &["--config", file.to_str().expect("path"), "--max-signal-bytes", "300", "--print-config"],
        &[("RENDEZVOUS_MAX_NAME_CHARS", "40"), ("RENDEZVOUS_MAX_SIGNAL_BYTES", "400")],
    );
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "handshake_timeout_ms = 1111", // file over default
        "max_interests = 5",           // file over default
        "max_name_chars = 40",         // environment over file
        "max_signal_bytes = 300",      // flag over environment and file
        "history_limit_max = 200",     // the default
    ] {
        assert!(printed.lines().any(|l| l == line), "{line} missing:\n{printed}");
    }
}

/// The JWT secret and the Redis password never appear in `--print-config`; the
/// masked file is refused unless the environment supplies the real values.
#[test]
fn print_config_masks_secrets() {
    let secret = "s3cr3t-never-print-this-0123456789abcdef";
    let redis = "redis://:hunter2-redis-password@127.0.0.1:1/0";
    let (code, printed, err) =
        run(&["--print-config", "--jwt-secret", secret, "--redis-url", redis], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!printed.contains(secret) && !printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("jwt_secret = \"<masked>\""), "{printed}");
    assert!(printed.contains("redis_url = \"redis://:<masked>@127.0.0.1:1/0\""), "{printed}");
    let (_dir, file) = temp_file("masked", &printed);
    let path = file.to_str().expect("path");
    let (code, _, err) = run(&["--config", path, "--print-config"], &[]);
    assert_eq!(code, Some(2), "a masked secret was accepted");
    assert!(err.contains("jwt_secret is <masked>"), "{err}");
    let envs = [("RENDEZVOUS_JWT_SECRET", secret), ("RENDEZVOUS_REDIS_URL", redis)];
    let (code, again, err) = run(&["--config", path, "--print-config"], &envs);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(again, printed);
}

/// The eight settings that once had no flag: each flag reaches the engine.
#[tokio::test]
async fn the_limit_and_timer_flags_take_effect() {
    let p = spawn(
        &[
            "--bind",
            "127.0.0.1:0",
            "--max-interests",
            "2",
            "--max-interest-chars",
            "5",
            "--max-name-chars",
            "8",
            "--max-signal-bytes",
            "64",
            "--history-limit-max",
            "2",
            "--heartbeat-interval-ms",
            "200",
            "--client-timeout-ms",
            "900",
            "--empty-room-grace-ms",
            "100",
        ],
        &[],
    );
    let url = |user: &str| format!("ws://{}/ws?user={user}", p.addr);
    let mut a = Client::connect(&url("alice")).await;
    let too_large = |f: ServerFrame| match f {
        ServerFrame::Error { code, .. } => code == rendezvous_actors::protocol::ErrorCode::TooLarge,
        _ => false,
    };
    for search in [
        serde_json::json!({"action":"find_match","interests":["a","b","c"]}),
        serde_json::json!({"action":"find_match","interests":["abcdef"]}),
        serde_json::json!({"action":"find_match","interests":["a"],"region":"abcdefghi"}),
    ] {
        a.send_json(search.clone()).await;
        assert!(too_large(a.recv_kind("error").await), "{search} was accepted");
    }
    // --max-signal-bytes: a signal payload of 65 bytes or more is refused.
    a.send_json(serde_json::json!({"action":"join","room_id":"pub:cfg"})).await;
    a.recv_kind("joined").await;
    let payload = serde_json::json!({"sdp": "x".repeat(60)});
    a.send_json(serde_json::json!({"action":"signal","room_id":"pub:cfg","payload":payload})).await;
    assert!(too_large(a.recv_kind("error").await), "a large signal was accepted");
    // --history-limit-max: a page holds at most 2 messages, whatever the request.
    for i in 0..3 {
        let text = format!("m{i}");
        a.send_json(serde_json::json!({"action":"send","room_id":"pub:cfg","text":text})).await;
        a.recv_kind("ack").await;
    }
    let history =
        serde_json::json!({"action":"history","room_id":"pub:cfg","after_seq":0,"limit":10});
    a.send_json(history.clone()).await;
    match a.recv_kind("history").await {
        ServerFrame::History { messages, .. } => assert_eq!(messages.len(), 2),
        other => panic!("{other:?}"),
    }
    // --empty-room-grace-ms: left empty for longer than 100 ms, the room and its
    // history are forgotten (the default keeps them 30 s).
    a.send_json(serde_json::json!({"action":"leave","room_id":"pub:cfg"})).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    a.send_json(serde_json::json!({"action":"join","room_id":"pub:cfg"})).await;
    a.recv_kind("joined").await;
    a.send_json(history).await;
    match a.recv_kind("history").await {
        ServerFrame::History { messages, .. } => assert!(messages.is_empty(), "{messages:?}"),
        other => panic!("{other:?}"),
    }
    // --heartbeat-interval-ms: pings every 200 ms.
    let start = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        match tokio::time::timeout(Duration::from_secs(2), a.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(_))) => {}
            other => panic!("no ping: {other:?}"),
        }
    }
    assert!(start.elapsed() < Duration::from_millis(1_500), "3 pings took {:?}", start.elapsed());
    // --client-timeout-ms: a client that reads nothing (so answers no ping) is
    // dropped after 900 ms.
    let mut silent = Client::connect(&url("bob")).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let started = Instant::now();
    let _ = silent.closed().await;
    assert!(started.elapsed() < Duration::from_secs(1), "the silent client was not dropped");
}

/// `--help` shows each declared default once, next to its flag and environment
/// variable, with no hand-written copy.
#[test]
fn help_shows_each_default_once_from_the_declaration() {
    let (code, help, _) = run(&["--help"], &[]);
    assert_eq!(code, Some(0));
    let cmd = rendezvous::config::command();
    let mut with_default = 0;
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        assert!(help.contains(&format!("--{long}")), "--help lacks --{long}");
        if let Some(env) = arg.get_env() {
            assert!(help.contains(&*env.to_string_lossy()), "--help lacks {env:?}");
        }
        if !arg.get_default_values().is_empty() && !arg.is_hide_default_value_set() {
            with_default += 1;
        }
    }
    assert_eq!(help.matches("[default: ").count(), with_default, "{help}");
    for (flag, default) in [
        ("heartbeat-interval-ms", "20000"),
        ("client-timeout-ms", "60000"),
        ("empty-room-grace-ms", "30000"),
        ("history-limit-max", "200"),
        ("max-interests", "20"),
        ("max-interest-chars", "32"),
        ("max-signal-bytes", "16384"),
        ("max-name-chars", "64"),
    ] {
        let at = help.find(&format!("--{flag} ")).expect(flag);
        let next = help[at + 2..].find("\n  -").map_or(help.len(), |n| at + 2 + n);
        let entry = &help[at..next];
        assert!(entry.contains(&format!("[default: {default}]")), "{entry}");
        let env = format!("RENDEZVOUS_{}", flag.replace('-', "_").to_uppercase());
        assert!(entry.contains(&env), "{entry}");
    }
}
