//! A Sentinel-managed Redis on loopback: a primary, one replica (`--replicaof`) and
//! three `redis-sentinel` processes (quorum 2, down after 1 s, failover timeout
//! 3 s). Every process has its own temp directory and persists nothing
//! (`--save ""`, `--appendonly no`): processes sharing a `--dir` would load each
//! other's stale `dump.rdb` (a replica writes the one it receives from the
//! primary there). Everything is killed on drop; the sentinels' logs are printed
//! when the test is failing.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{try_redis_cmd, RedisServer, Resp};
use crate::{free_port, TempDir};

/// The name the sentinels know the primary by.
pub const MASTER_NAME: &str = "rdv-main";
/// Sentinels that must agree the primary is down.
const QUORUM: u32 = 2;
/// How long a silent primary takes to count as down.
pub const DOWN_AFTER_MS: u64 = 1_000;
/// Sentinel's failover timeout.
pub const FAILOVER_TIMEOUT_MS: u64 = 3_000;
/// How long the group may take to form (replica synced, sentinels know each other
/// and the replica).
const FORM_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

const SENTINEL_MISSING: &str = "redis-sentinel not found: install it (Debian: apt-get install \
                                redis-sentinel); scripts/test.sh installs it";

/// One `redis-sentinel` process with its own directory and config file.
pub struct Sentinel {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    _dir: TempDir,
}

impl Sentinel {
    fn start(primary_port: u16) -> Sentinel {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = TempDir::new(&format!("sentinel-{port}"));
            let conf = dir.join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} {QUORUM}\n\
                 sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = dir.path_string(),
            );
            std::fs::write(&conf, text).expect("write sentinel.conf");
            let log = dir.path().join("sentinel.log");
            let out = OpenOptions::new().create(true).append(true).open(&log).expect("log");
            let err = out.try_clone().expect("clone log handle");
            let spawned = Command::new("redis-sentinel")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn();
            let child = match spawned {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::NotFound => panic!("{SENTINEL_MISSING}"),
                Err(e) => panic!("cannot spawn redis-sentinel: {e}"),
            };
            let mut s = Sentinel { port, child: Some(child), log, _dir: dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if try_redis_cmd(port, &["PING"]).ok() == Some(Resp::Simple("PONG".into())) {
                    return s;
                }
                let exited = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                if exited.is_some() || Instant::now() > deadline {
                    failures.push(format!("port {port}: {exited:?}\n{}", s.log_tail()));
                    s.stop();
                    break;
                }
                std::thread::sleep(POLL);
            }
        }
        panic!("redis-sentinel did not start:\n{}", failures.join("\n"));
    }

    /// One command to this sentinel (panics on I/O errors).
    pub fn cmd(&self, args: &[&str]) -> Resp {
        try_redis_cmd(self.port, args)
            .unwrap_or_else(|e| panic!("sentinel :{} {args:?}: {e}", self.port))
    }

    /// `SENTINEL MASTER` of the group, as field → value.
    pub fn master_fields(&self) -> Vec<(String, String)> {
        match try_redis_cmd(self.port, &["SENTINEL", "MASTER", MASTER_NAME]) {
            Ok(Resp::Array(Some(items))) => items
                .chunks_exact(2)
                .filter_map(|kv| match (&kv[0], &kv[1]) {
                    (Resp::Bulk(Some(k)), Resp::Bulk(Some(v))) => Some((k.clone(), v.clone())),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    fn field(&self, name: &str) -> Option<String> {
        self.master_fields().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The primary's port as this sentinel names it now.
    pub fn primary_port(&self) -> Option<u16> {
        match try_redis_cmd(self.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]) {
            Ok(Resp::Array(Some(items))) => match items.get(1) {
                Some(Resp::Bulk(Some(p))) => p.parse().ok(),
                _ => None,
            },
            _ => None,
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- redis-sentinel :{} log ----\n{}", self.port, self.log_tail());
        }
    }
}

/// A primary, its replica and three sentinels watching them.
pub struct SentinelGroup {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<Sentinel>,
    _dirs: [TempDir; 2],
}

impl SentinelGroup {
    /// Start the primary, the replica (waiting until it is in sync), then the
    /// sentinels (waiting until each knows the replica and the two others).
    pub fn start() -> SentinelGroup {
        Self::start_with(&[])
    }

    /// [`SentinelGroup::start`] with more `redis-server` options for the first
    /// primary (e.g. `--min-replicas-to-write 1`).
    pub fn start_with(primary_extra: &[&str]) -> SentinelGroup {
        let pdir = TempDir::new("sentinel-primary");
        let rdir = TempDir::new("sentinel-replica");
        let pdir_s = pdir.path_string();
        let mut pargs = vec!["--dir", pdir_s.as_str()];
        pargs.extend_from_slice(primary_extra);
        let primary = RedisServer::start_with(&pargs);
        let pport = primary.port().to_string();
        let replica = RedisServer::start_with(&[
            "--dir",
            &rdir.path_string(),
            "--replicaof",
            "127.0.0.1",
            &pport,
        ]);
        wait_until("the replica is in sync", || {
            info_field(&replica, "replication", "master_link_status").as_deref() == Some("up")
                && info_field(&primary, "replication", "connected_slaves").as_deref() == Some("1")
        });
        let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(primary.port())).collect();
        let group = SentinelGroup { primary, replica, sentinels, _dirs: [pdir, rdir] };
        wait_until("every sentinel knows the replica and the other sentinels", || {
            group.sentinels.iter().all(|s| {
                s.field("num-slaves").as_deref() == Some("1")
                    && s.field("num-other-sentinels").as_deref() == Some("2")
            })
        });
        group
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/rdv-main`
    pub fn url(&self) -> String {
        let hosts: Vec<String> =
            self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The primary's port as a majority of the sentinels name it now.
    pub fn primary_port(&self) -> Option<u16> {
        let ports: Vec<u16> = self.sentinels.iter().filter_map(Sentinel::primary_port).collect();
        ports.iter().copied().find(|p| ports.iter().filter(|q| *q == p).count() >= 2)
    }

    /// Wait (bounded) until the sentinels name the replica as the primary and it
    /// calls itself one; how long it took.
    pub fn wait_promoted(&self, within: Duration) -> Duration {
        let started = Instant::now();
        let want = self.replica.port();
        loop {
            let role = info_field(&self.replica, "replication", "role");
            if self.primary_port() == Some(want) && role.as_deref() == Some("master") {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "no failover to :{want} within {within:?} (sentinels name {:?}, its role {role:?})",
                self.primary_port()
            );
            std::thread::sleep(POLL);
        }
    }
}

/// `name:value` of an `INFO section` answer.
pub fn info_field(redis: &RedisServer, section: &str, name: &str) -> Option<String> {
    match redis.try_cmd(&["INFO", section]) {
        Ok(Resp::Bulk(Some(text))) => text.lines().find_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            (k == name).then(|| v.to_owned())
        }),
        _ => None,
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + FORM_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "sentinel group: {what}: not within {FORM_TIMEOUT:?}");
        std::thread::sleep(POLL);
    }
}
