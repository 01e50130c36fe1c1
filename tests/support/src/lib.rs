//! Harness of the integration tests (tests/*.rs): a real server on `127.0.0.1:0`
//! (the same `run` the binary calls, in its own actix system thread), real
//! `rendezvous` processes joined through a private `redis-server` ([`cluster`]) or a
//! real Redis Cluster ([`redis_cluster`]),
//! protocol clients ([`Client`], on the protocol crate's `client` module that the
//! load tester uses too), and the chat, search and storm helpers several suites
//! share. No fixed ports, no sleeps to wait for state: clients wait for frames.
//!
//! It is a crate of its own (a dev-dependency of the root package) rather than a
//! `mod common;` in every test binary so that an unused helper is a warning here,
//! not hidden by a blanket `allow(dead_code)`.

pub mod admin;
pub mod chat;
mod client;
pub mod cluster;
pub mod http;
pub mod redis_cluster;
pub mod search;
pub mod sentinel;
pub mod storm;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rendezvous::config::{AnonymousMode, Config};
use rendezvous_actors::{EngineConfig, LadderStep};
use tokio::sync::oneshot;

pub use client::{matched_pair, matched_pair_on, room_of, Client, Ended, FRAME_TIMEOUT};
pub use http::http_get;

/// Settings for tests: anonymous on loopback, a ladder that relaxes in well under
/// a second, short grace periods, and workers pinned to 2 like this machine.
pub fn test_config() -> Config {
    // Storm tests hold thousands of sockets (client and server side) in one process.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut c = Config { bind: "127.0.0.1:0".parse().expect("addr"), ..Config::default() };
    c.anonymous = AnonymousMode::Auto;
    let e = &mut c.engine;
    e.node_id = "test-node".into();
    e.workers = 2;
    e.pool_shards = 2;
    e.match_tick_ms = 20;
    e.ladder = vec![step(0, true, 2), step(300, true, 1), step(600, false, 1), step(900, false, 0)];
    e.search_timeout_ms = 10_000;
    e.reconnect_grace_ms = 2_000;
    e.empty_room_grace_ms = 500;
    c
}

/// One step of the matching ladder.
pub fn step(after_ms: u64, same_region: bool, min_shared: u32) -> LadderStep {
    LadderStep { after_ms, same_region, min_shared }
}

/// Lift the per-connection rate limits (frames, sends, searches; the byte budget
/// to 2^40) to `to` for a test whose load must get through to what it is about.
pub fn lift_rate_limits(e: &mut EngineConfig, to: u32) {
    e.frames_per_second = to;
    e.frames_burst = to;
    e.send_per_second = to;
    e.send_burst = to;
    e.find_match_per_minute = to;
    e.action_bytes_per_second = 1 << 40;
    e.action_bytes_burst = 1 << 40;
}

/// A running server; stopped (drained) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(config: Config) -> TestServer {
        let (addr_tx, addr_rx) = std_mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let listener = tokio::net::TcpListener::bind(config.bind).await.expect("bind");
                addr_tx.send(listener.local_addr().expect("addr")).expect("send addr");
                let shutdown = async {
                    let _ = stop_rx.await;
                };
                rendezvous::run(listener, config, shutdown).await.expect("server run");
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("server started");
        TestServer { addr, stop: Some(stop_tx), thread: Some(thread) }
    }

    /// A server on [`test_config`] with `edit` applied to its engine settings.
    pub fn start_with(edit: impl FnOnce(&mut EngineConfig)) -> TestServer {
        let mut config = test_config();
        edit(&mut config.engine);
        TestServer::start(config)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    pub async fn client(&self, user: &str) -> Client {
        Client::connect(&self.ws_url(&format!("user={user}"))).await
    }

    /// [`TestServer::client`] for each user, in order.
    pub async fn clients<const N: usize>(&self, users: [&str; N]) -> [Client; N] {
        let mut out = Vec::with_capacity(N);
        for user in users {
            out.push(self.client(user).await);
        }
        out.try_into().unwrap_or_else(|_| unreachable!("one client per user"))
    }

    /// Stop the server (drain) and wait for its thread.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `rendezvous` binary cargo built for this test run. Cargo tells only the
/// test crate itself where it is (`CARGO_BIN_EXE_rendezvous` at compile time), so
/// this finds it the way cargo lays it out: a test binary is
/// `target/<profile>/deps/NAME-HASH`, the engine `target/<profile>/rendezvous`.
pub fn engine_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running test binary");
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binary under target/");
    let bin = profile_dir.join(format!("rendezvous{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.is_file(), "{} not built (run the tests through cargo test)", bin.display());
    bin
}

/// The load tester (`rendezvous-loadtest`), built once per test process by the
/// cargo running the tests, in the engine's profile, so a test never runs a
/// stale binary (cargo builds only the test crate's own package binaries).
pub fn loadtest_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let engine = engine_bin();
        let profile_dir = engine.parent().expect("target profile dir");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--locked", "-p", "rendezvous-loadtest"]).current_dir(repo);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build for the load tester");
        assert!(
            out.status.success(),
            "building the load tester failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join(format!("rendezvous-loadtest{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin
    })
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a probe socket on 127.0.0.1:0");
    l.local_addr().expect("probe socket address").port()
}

/// A directory under the temp dir for one test (Redis data, certificates, a
/// deployment's files); removed on drop, unless the test is failing, when it is
/// kept and named for inspection.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("rdv-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn path_string(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    /// The path of `name` inside, as a string.
    pub fn join(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- kept {} for inspection ----", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
