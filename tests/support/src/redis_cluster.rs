//! A real Redis Cluster on loopback: six `redis-server` processes (three
//! primaries, each with one replica) made into a cluster with
//! `redis-cli --cluster create`, plus the operations the cluster tests need:
//! where a key or slot lives, `kill -9` of a primary and the wait for its
//! replica's promotion, and a live slot migration done the way `redis-cli
//! --cluster reshard` does it (keys move while clients use them, so clients meet
//! `ASK` and `TRYAGAIN`).
//!
//! Every process has its own temp directory (its `nodes.conf`, and the `dump.rdb` a
//! replica receives) and persists nothing (`--save ""`, `--appendonly no`). Each
//! is a [`RedisServer`]: killed on drop, its log printed when the test is failing.
//! The cluster bus port of every node is chosen explicitly (`--cluster-port`):
//! the default, port + 10000, does not exist for a free port above 55535.
//!
//! [`ShardedCluster`] is the engine side: `rendezvous` nodes joined through the
//! cluster's `redis+cluster://` URL.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{node_name, read_resp, try_redis_cmd, wait_nodes, Node, RedisServer, Resp};
use crate::{free_port, Client, TempDir};

/// `cluster-node-timeout` of every node: how long a silent node takes to count as
/// failing. A replica is promoted a little after this (failure agreement among the
/// primaries, then an election).
pub const NODE_TIMEOUT_MS: u64 = 2_000;
/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;
/// Primaries, each with this many replicas.
const PRIMARIES: usize = 3;
const REPLICAS_PER_PRIMARY: usize = 1;
/// How long the cluster may take to form (created, every node `ok`, every replica
/// in sync).
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long every node may take to agree on a slot's new owner after a migration.
const AGREE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an engine node may take to count all of them.
const ENGINES_FORM_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

const REDIS_CLI_MISSING: &str =
    "redis-cli not found: install it (Debian: apt-get install redis-tools); scripts/test.sh installs it";

/// One member of the cluster.
struct Member {
    server: RedisServer,
    /// Its `nodes.conf` lives here; kept for [`RedisCluster::restart`].
    _dir: TempDir,
    /// Killed by [`RedisCluster::kill9`] (and not restarted since).
    dead: bool,
}

/// Six `redis-server` processes in one Redis Cluster (three primaries with a
/// replica each). Everything is killed on drop.
pub struct RedisCluster {
    members: Vec<Member>,
    /// When the last [`RedisCluster::kill9`] happened.
    last_kill: Option<Instant>,
}

impl RedisCluster {
    /// Start six nodes, make them a cluster (`redis-cli --cluster create …
    /// --cluster-replicas 1 --cluster-yes`) and wait until every node reports
    /// `cluster_state:ok`, knows all six, and every replica's link to its primary
    /// is up.
    pub fn start() -> RedisCluster {
        let n = PRIMARIES * (1 + REPLICAS_PER_PRIMARY);
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let dir = TempDir::new(&format!("rcluster-{i}"));
                let bus = free_port().to_string();
                let timeout = NODE_TIMEOUT_MS.to_string();
                let server = RedisServer::start_with(&[
                    "--dir",
                    &dir.path_string(),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &timeout,
                    "--cluster-port",
                    &bus,
                    // A replica's first copy starts at once, not 5 s later.
                    "--repl-diskless-sync-delay",
                    "0",
                ]);
                Member { server, _dir: dir, dead: false }
            })
            .collect();
        let cluster = RedisCluster { members, last_kill: None };
        cluster.create();
        cluster.wait_healthy(FORM_TIMEOUT);
        cluster
    }

    /// `redis-cli --cluster create` over every member.
    fn create(&self) {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for p in self.ports() {
            cmd.arg(format!("127.0.0.1:{p}"));
        }
        cmd.args(["--cluster-replicas", &REPLICAS_PER_PRIMARY.to_string(), "--cluster-yes"]);
        let out = match cmd.stdin(Stdio::null()).output() {
            Ok(out) => out,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("{REDIS_CLI_MISSING}"),
            Err(e) => panic!("cannot run redis-cli --cluster create: {e}"),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("[OK] All 16384 slots covered"),
            "redis-cli --cluster create failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Wait (bounded) until every live member says `cluster_state:ok`, knows every
    /// member (live or dead: a killed one stays known, flagged `fail`), every live
    /// replica's link to its primary is up, and every primary counts its replicas
    /// `online`.
    pub fn wait_healthy(&self, within: Duration) {
        let n = self.members.len();
        let deadline = Instant::now() + within;
        loop {
            let mut why = Vec::new();
            for m in self.live() {
                let port = m.server.port();
                let info = cluster_info(port);
                if info.get("cluster_state").map(String::as_str) != Some("ok") {
                    why.push(format!(":{port} cluster_state {:?}", info.get("cluster_state")));
                }
                if info.get("cluster_known_nodes").and_then(|v| v.parse().ok()) != Some(n) {
                    why.push(format!(":{port} knows {:?} nodes", info.get("cluster_known_nodes")));
                }
                let repl = info_section(port, "replication");
                if repl.get("role").map(String::as_str) == Some("slave")
                    && repl.get("master_link_status").map(String::as_str) != Some("up")
                {
                    why.push(format!(":{port} link {:?}", repl.get("master_link_status")));
                }
                // The primary's side too: a replica that finished loading the
                // initial copy is not sent new writes until the primary counts it
                // `online`.
                let offline: Vec<&String> = repl
                    .iter()
                    .filter(|(k, v)| {
                        k.starts_with("slave")
                            && k[5..].parse::<u32>().is_ok()
                            && !v.contains("state=online")
                    })
                    .map(|(_, v)| v)
                    .collect();
                if !offline.is_empty() {
                    why.push(format!(":{port} replicas not online: {offline:?}"));
                }
            }
            if why.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis cluster not healthy within {within:?}: {}\n{}",
                why.join("; "),
                self.describe()
            );
            std::thread::sleep(POLL);
        }
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`: the first three
    /// members as seed nodes.
    pub fn url(&self) -> String {
        let seeds: Vec<String> =
            self.ports().iter().take(3).map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Every member's port, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.server.port()).collect()
    }

    /// The ports of the members running now.
    pub fn live_ports(&self) -> Vec<u16> {
        self.live().map(|m| m.server.port()).collect()
    }

    fn live(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| !m.dead)
    }

    fn member(&self, port: u16) -> &Member {
        self.members
            .iter()
            .find(|m| m.server.port() == port)
            .unwrap_or_else(|| panic!("no cluster member on :{port}"))
    }

    fn member_mut(&mut self, port: u16) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.server.port() == port)
            .unwrap_or_else(|| panic!("no cluster member on :{port}"))
    }

    /// The [`RedisServer`] on `port` (to send it signals, read its pid, …).
    pub fn server(&self, port: u16) -> &RedisServer {
        &self.member(port).server
    }

    /// One command to the member on `port`, without redirection: `MOVED`/`ASK`
    /// come back as [`Resp::Error`]. Panics on I/O errors.
    pub fn cmd(&self, port: u16, args: &[&str]) -> Resp {
        cmd(port, args)
    }

    /// Several commands to the member on `port` on one connection (what `WAIT`
    /// needs: it counts the replicas that have this connection's writes); their
    /// replies. Panics on I/O errors.
    pub fn cmds(&self, port: u16, cmds: &[&[&str]]) -> Vec<Resp> {
        try_pipeline(port, cmds).unwrap_or_else(|e| panic!("redis :{port} {cmds:?}: {e}"))
    }

    /// One command to whichever member owns `key`'s slot now (follows `MOVED` and
    /// `ASK`, a few hops at most).
    pub fn cmd_key(&self, key: &str, args: &[&str]) -> Resp {
        let mut port = self.primary_of_key(key);
        let mut asking = false;
        for _ in 0..5 {
            let reply = if asking { asking_cmd(port, args) } else { cmd(port, args) };
            match &reply {
                Resp::Error(e) if e.starts_with("MOVED ") || e.starts_with("ASK ") => {
                    asking = e.starts_with("ASK ");
                    port = redirect_port(e);
                }
                _ => return reply,
            }
        }
        panic!("{args:?} for {key}: more than 5 redirects")
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        match cmd(self.any_live(), &["CLUSTER", "KEYSLOT", key]) {
            Resp::Int(s) => u16::try_from(s).expect("slot in range"),
            other => panic!("CLUSTER KEYSLOT {key}: {other:?}"),
        }
    }

    /// The port of the primary serving `key`'s slot now.
    pub fn primary_of_key(&self, key: &str) -> u16 {
        self.primary_of_slot(self.slot_of(key))
    }

    /// The port of the primary serving `slot` now, as a live member sees it.
    pub fn primary_of_slot(&self, slot: u16) -> u16 {
        let port = self.any_live();
        slot_owner(port, slot).unwrap_or_else(|| {
            panic!("no primary for slot {slot} in :{port}'s view\n{}", self.describe())
        })
    }

    /// The ports of the primaries serving slots now (as a live member sees them).
    pub fn primaries(&self) -> Vec<u16> {
        let ranges = slot_ranges(self.any_live());
        let set: BTreeSet<u16> = ranges.iter().map(|r| r.primary).collect();
        set.into_iter().collect()
    }

    /// The replicas of the primary on `port` (from its `INFO replication`).
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let info = info_section(port, "replication");
        (0..)
            .map_while(|i| info.get(&format!("slave{i}")))
            .filter_map(|v| {
                v.split(',').find_map(|kv| kv.strip_prefix("port=")).and_then(|p| p.parse().ok())
            })
            .collect()
    }

    /// A slot served by the primary on `port` (the first of its first range).
    pub fn a_slot_of(&self, port: u16) -> u16 {
        slot_ranges(self.any_live())
            .into_iter()
            .find(|r| r.primary == port)
            .map(|r| r.start)
            .unwrap_or_else(|| panic!(":{port} serves no slot\n{}", self.describe()))
    }

    /// `kill -9` the primary serving `slot`; its port.
    pub fn kill9_primary_of_slot(&mut self, slot: u16) -> u16 {
        let port = self.primary_of_slot(slot);
        self.kill9(port);
        port
    }

    /// `kill -9` the member on `port` (reaped; it stays dead until
    /// [`RedisCluster::restart`]).
    pub fn kill9(&mut self, port: u16) {
        let m = self.member_mut(port);
        m.server.stop();
        m.dead = true;
        self.last_kill = Some(Instant::now());
    }

    /// Start the member on `port` again, with its old `nodes.conf`: it rejoins the
    /// cluster (a killed primary comes back as a replica of the one promoted in its
    /// place).
    pub fn restart(&mut self, port: u16) {
        let m = self.member_mut(port);
        m.server.restart();
        m.dead = false;
    }

    /// Wait (bounded by `within`, counted from the call) until a live member other
    /// than the killed one owns `slot` as a primary (`role:master`) and the
    /// surviving members answer `cluster_state:ok`. How long it took since the last
    /// [`RedisCluster::kill9`] (since the call when nothing was killed).
    pub fn wait_promoted(&self, slot: u16, within: Duration) -> Duration {
        let started = Instant::now();
        let since = self.last_kill.unwrap_or(started);
        let dead: Vec<u16> =
            self.members.iter().filter(|m| m.dead).map(|m| m.server.port()).collect();
        loop {
            let live = self.live_ports();
            let owner =
                live.iter().find_map(|p| slot_owner(*p, slot)).filter(|o| !dead.contains(o));
            let promoted = owner.is_some_and(|o| {
                info_section(o, "replication").get("role").map(String::as_str) == Some("master")
            });
            let ok = live
                .iter()
                .all(|p| cluster_info(*p).get("cluster_state").map(String::as_str) == Some("ok"));
            let agreed = owner.is_some() && live.iter().all(|p| slot_owner(*p, slot) == owner);
            if promoted && ok && agreed {
                return since.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "slot {slot}: no promoted primary within {within:?} (owner {owner:?}, \
                 state ok everywhere: {ok})\n{}",
                self.describe()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Move `slot` to the primary on `to` while it is in use, as `redis-cli
    /// --cluster reshard` does: `SETSLOT IMPORTING` on the target, `SETSLOT
    /// MIGRATING` on the source, then `GETKEYSINSLOT` + `MIGRATE … KEYS` until
    /// the slot is empty on the source, then `SETSLOT NODE` on the target, the
    /// source and the other primaries; returns once every live member names `to`
    /// as the owner. Keys move in batches of `batch`, `pause` apart (clients that
    /// touch the slot meanwhile get `ASK` or `TRYAGAIN`). How many keys moved.
    pub fn migrate_slot_paced(&self, slot: u16, to: u16, batch: usize, pause: Duration) -> usize {
        let from = self.primary_of_slot(slot);
        assert_ne!(from, to, "slot {slot} is already on :{to}");
        let (from_id, to_id) = (node_id(from), node_id(to));
        let s = slot.to_string();
        expect_ok(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]);
        expect_ok(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]);
        let (to_port, timeout_ms, count) = (to.to_string(), "5000", batch.max(1).to_string());
        let mut moved = 0;
        loop {
            let keys = match cmd(from, &["CLUSTER", "GETKEYSINSLOT", &s, &count]) {
                Resp::Array(Some(items)) => items
                    .into_iter()
                    .filter_map(|k| match k {
                        Resp::Bulk(Some(k)) => Some(k),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
                other => panic!("CLUSTER GETKEYSINSLOT {slot} on :{from}: {other:?}"),
            };
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", timeout_ms, "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            match cmd(from, &args) {
                Resp::Simple(s) if s == "OK" || s == "NOKEY" => {}
                other => panic!("MIGRATE {keys:?} :{from} -> :{to}: {other:?}"),
            }
            moved += keys.len();
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
        // The target first (it then serves the slot; the source answers MOVED).
        expect_ok(to, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        expect_ok(from, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        for p in self.primaries() {
            if p != to && p != from {
                expect_ok(p, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
            }
        }
        let deadline = Instant::now() + AGREE_TIMEOUT;
        loop {
            let views: Vec<(u16, Option<u16>)> =
                self.live_ports().into_iter().map(|p| (p, slot_owner(p, slot))).collect();
            if views.iter().all(|(_, o)| *o == Some(to)) {
                return moved;
            }
            assert!(
                Instant::now() < deadline,
                "slot {slot}: not every member names :{to} as its owner: {views:?}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// [`RedisCluster::migrate_slot_paced`] ten keys at a time, without pauses.
    pub fn migrate_slot(&self, slot: u16, to: u16) -> usize {
        self.migrate_slot_paced(slot, to, 10, Duration::ZERO)
    }

    /// `used_cpu_user + used_cpu_sys` of the member on `port`, in seconds.
    pub fn info_cpu(&self, port: u16) -> f64 {
        info_cpu(port)
    }

    /// A live member's port.
    fn any_live(&self) -> u16 {
        self.live().map(|m| m.server.port()).next().expect("a live cluster member")
    }

    /// Every live member's view: role, state and slot ranges (for failure messages).
    pub fn describe(&self) -> String {
        let mut out = String::from("redis cluster:\n");
        for m in &self.members {
            let port = m.server.port();
            if m.dead {
                out.push_str(&format!("  :{port} killed\n"));
                continue;
            }
            let role = info_section(port, "replication").get("role").cloned();
            let state = cluster_info(port).get("cluster_state").cloned();
            let ranges: Vec<String> = slot_ranges(port)
                .iter()
                .map(|r| format!("{}-{}@{}", r.start, r.end, r.primary))
                .collect();
            out.push_str(&format!("  :{port} {role:?} {state:?} slots {ranges:?}\n"));
        }
        out
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
    }
}

// ---------------------------------------------------------------- listening

/// A sharded-pub/sub subscriber (`SSUBSCRIBE`) to one channel on the primary
/// that owns its slot, counting the messages published there while it lives.
pub struct ShardListener {
    stream: TcpStream,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ShardListener {
    /// Subscribe to `channel` on `port` (its slot's primary); returns once Redis
    /// confirmed the subscription.
    pub fn start(port: u16, channel: &str) -> ShardListener {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("connect :{port}: {e}"));
        let req = format!("*2\r\n$10\r\nSSUBSCRIBE\r\n${}\r\n{channel}\r\n", channel.len());
        s.write_all(req.as_bytes()).expect("send SSUBSCRIBE");
        let mut r = BufReader::new(s.try_clone().expect("clone the socket"));
        match read_resp(&mut r) {
            Ok(Resp::Array(Some(v))) if matches!(&v[0], Resp::Bulk(Some(k)) if k == "ssubscribe") =>
                {}
            other => panic!("SSUBSCRIBE {channel} on :{port}: {other:?}"),
        }
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        // Reads until the socket is shut down (drop) or Redis closes it.
        let thread = std::thread::spawn(move || {
            while let Ok(Resp::Array(Some(v))) = read_resp(&mut r) {
                if matches!(v.first(), Some(Resp::Bulk(Some(k))) if k == "smessage") {
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        ShardListener { stream: s, count, thread: Some(thread) }
    }

    /// Messages seen so far.
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for ShardListener {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- commands

/// One command to `port` (no redirection). Panics on I/O errors.
pub fn cmd(port: u16, args: &[&str]) -> Resp {
    try_redis_cmd(port, args).unwrap_or_else(|e| panic!("redis :{port} {args:?}: {e}"))
}

/// `ASKING` then `args`, on one connection (the reply to `args`).
fn asking_cmd(port: u16, args: &[&str]) -> Resp {
    try_pipeline(port, &[&["ASKING"], args])
        .and_then(|mut replies| replies.pop().ok_or_else(|| io::Error::other("no reply")))
        .unwrap_or_else(|e| panic!("redis :{port} ASKING {args:?}: {e}"))
}

/// Several commands on one connection; their replies, in order.
fn try_pipeline(port: u16, cmds: &[&[&str]]) -> io::Result<Vec<Resp>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut req = String::new();
    for c in cmds {
        req.push_str(&format!("*{}\r\n", c.len()));
        for a in *c {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
    }
    s.write_all(req.as_bytes())?;
    let mut r = BufReader::new(s);
    cmds.iter().map(|_| read_resp(&mut r)).collect()
}

/// The port of a `MOVED slot host:port` / `ASK slot host:port` error.
fn redirect_port(err: &str) -> u16 {
    err.rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("not a redirect: {err}"))
}

fn expect_ok(port: u16, args: &[&str]) {
    match cmd(port, args) {
        Resp::Simple(s) if s == "OK" => {}
        other => panic!("redis :{port} {args:?}: {other:?}"),
    }
}

/// `CLUSTER MYID` of the member on `port`.
pub fn node_id(port: u16) -> String {
    match cmd(port, &["CLUSTER", "MYID"]) {
        Resp::Bulk(Some(id)) => id,
        other => panic!("CLUSTER MYID on :{port}: {other:?}"),
    }
}

/// `name:value` lines of an `INFO`-style text.
fn fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// `CLUSTER INFO` of `port` as field -> value (empty when it does not answer).
pub fn cluster_info(port: u16) -> BTreeMap<String, String> {
    match try_redis_cmd(port, &["CLUSTER", "INFO"]) {
        Ok(Resp::Bulk(Some(text))) => fields(&text),
        _ => BTreeMap::new(),
    }
}

/// `INFO section` of `port` as field -> value (empty when it does not answer).
pub fn info_section(port: u16, section: &str) -> BTreeMap<String, String> {
    match try_redis_cmd(port, &["INFO", section]) {
        Ok(Resp::Bulk(Some(text))) => fields(&text),
        _ => BTreeMap::new(),
    }
}

/// `used_cpu_user + used_cpu_sys` of the Redis on `port`, in seconds.
pub fn info_cpu(port: u16) -> f64 {
    let info = info_section(port, "cpu");
    let get = |k: &str| -> f64 {
        info.get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("INFO cpu of :{port} has no {k}: {info:?}"))
    };
    get("used_cpu_user") + get("used_cpu_sys")
}

/// One range of `CLUSTER SLOTS`.
#[derive(Debug, Clone, Copy)]
struct SlotRange {
    start: u16,
    end: u16,
    primary: u16,
}

/// `CLUSTER SLOTS` as `port` sees it (empty when it does not answer).
fn slot_ranges(port: u16) -> Vec<SlotRange> {
    let Ok(Resp::Array(Some(ranges))) = try_redis_cmd(port, &["CLUSTER", "SLOTS"]) else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|r| {
            let Resp::Array(Some(parts)) = r else { return None };
            let (Some(Resp::Int(start)), Some(Resp::Int(end)), Some(Resp::Array(Some(node)))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return None;
            };
            let Some(Resp::Int(primary)) = node.get(1) else { return None };
            Some(SlotRange {
                start: u16::try_from(*start).ok()?,
                end: u16::try_from(*end).ok()?,
                primary: u16::try_from(*primary).ok()?,
            })
        })
        .collect()
}

/// The primary serving `slot` in `port`'s view.
fn slot_owner(port: u16, slot: u16) -> Option<u16> {
    slot_ranges(port).into_iter().find(|r| r.start <= slot && slot <= r.end).map(|r| r.primary)
}

// ---------------------------------------------------------------- engine nodes

/// A Redis Cluster and `rendezvous` nodes joined through its `redis+cluster://`
/// URL. The nodes are dropped (killed) before the cluster, so their last log
/// lines describe the test, not Redis going away.
pub struct ShardedCluster {
    pub nodes: Vec<Node>,
    pub redis: RedisCluster,
}

impl ShardedCluster {
    /// A fresh [`RedisCluster`] and `n` nodes (`node-a`, …) with `extra_args`
    /// (see [`Node::spawn`]); returns once every node counts all `n`.
    pub async fn start(n: usize, extra_args: &[(&str, &str)]) -> ShardedCluster {
        let redis = RedisCluster::start();
        let url = redis.url();
        let nodes = (0..n).map(|i| Node::spawn(Some(&url), &node_name(i), extra_args)).collect();
        let cluster = ShardedCluster { nodes, redis };
        cluster.wait_formed().await;
        cluster
    }

    /// Start one more node (named after its index) on the same URL; its index.
    pub fn spawn_node(&mut self, extra_args: &[(&str, &str)]) -> usize {
        let i = self.nodes.len();
        self.nodes.push(Node::spawn(Some(&self.redis.url()), &node_name(i), extra_args));
        i
    }

    /// Wait (bounded) until every node counts all of them.
    pub async fn wait_formed(&self) {
        let n = self.nodes.len() as u64;
        for node in &self.nodes {
            wait_nodes(node, n, ENGINES_FORM_TIMEOUT).await;
        }
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Connect `user` to node `i`; asserts the welcome names that node.
    pub async fn client(&self, i: usize, user: &str) -> Client {
        self.nodes[i].client_checked(user).await
    }
}
