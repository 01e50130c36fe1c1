//! Multi-node harness: a private `redis-server` on a free loopback port and real
//! `rendezvous` processes joined through it (`--redis-url`, `--node-id`), each bound
//! to `127.0.0.1:0` and found through its ready log line. Every process is killed on
//! drop. When a test panics, the last log lines of every node (and of Redis) are
//! printed, so a failure in a multi-process test explains itself.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rendezvous_protocol::ServerFrame;
use serde_json::Value;

use crate::{engine_bin, free_port, http, http_get, Client, TempDir};

/// Log lines kept per node for failure reports.
const LOG_LINES: usize = 200;
/// How long a node may take to log its ready line.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `redis-server` may take to answer `PING`.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a fresh cluster may take until every node counts all the others.
const FORM_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval of every state wait in this module.
const POLL: Duration = Duration::from_millis(50);

const REDIS_MISSING: &str =
    "redis-server not found: install it (Debian: apt-get install redis-server); .ci/run installs it";

/// Settings every node starts with: a ladder that relaxes to "anyone in the
/// language" at 900 ms, fast ticks, a 3 s reconnect grace, and limits raised so
/// that only the test that is about a limit ever meets one (the outbound queue
/// too: a member of a busy room gets its frames in bursts from the other nodes). [`Node::spawn`]'s
/// `extra_args` replace these by flag name; a value of [`UNSET`] drops the flag.
pub const NODE_DEFAULTS: &[(&str, &str)] = &[
    ("--bind", "127.0.0.1:0"),
    ("--ladder", "0:same:2,300:same:1,600:any:1,900:any:0"),
    ("--match-tick-ms", "20"),
    ("--search-timeout-ms", "10000"),
    ("--reconnect-grace-ms", "3000"),
    ("--find-match-per-minute", "100000"),
    ("--send-per-second", "100000"),
    ("--send-burst", "100000"),
    ("--frames-per-second", "100000"),
    ("--frames-burst", "100000"),
    ("--outbound-queue", "4096"),
];

/// Given as a value in [`Node::spawn`]'s `extra_args`, drops that flag from
/// [`NODE_DEFAULTS`], so the node runs on the binary's own default (e.g.
/// `("--ladder", UNSET)`: the default wait-target policy instead of a fixed ladder).
pub const UNSET: &str = "<unset>";

// ---------------------------------------------------------------- redis

/// A throwaway `redis-server` (no persistence) on a free loopback port; killed on
/// drop. Its output goes to a log file under the temp directory, removed on drop
/// unless the test failed.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    /// Options given after the defaults (see [`RedisServer::start_with`]).
    extra: Vec<String>,
}

impl RedisServer {
    /// Start on a free port and wait until it answers `PING`.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// [`RedisServer::start`] with more `redis-server` options after the defaults (a
    /// later option wins, so `--appendonly yes --dir D` turns persistence on); every
    /// `{port}` in them is replaced by the chosen port. The readiness probe (and
    /// [`RedisServer::cmd`]) follows the options: with `--requirepass PW` it sends
    /// `AUTH PW` first; with `--tls-port` (e.g. `--port 0 --tls-port {port}`) it talks
    /// TLS through `redis-cli --tls --insecure`. [`RedisServer::restart`] reuses them.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        // The probed port can be taken by someone else before redis binds it; then
        // redis exits (or another server answers, which `launch` detects): retry.
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let log =
                std::env::temp_dir().join(format!("rdv-redis-{}-{port}.log", std::process::id()));
            let extra = extra.iter().map(|a| a.replace("{port}", &port.to_string())).collect();
            let mut redis = RedisServer { port, child: None, log, extra };
            match redis.launch() {
                Ok(()) => return redis,
                Err(e) => failures.push(format!("port {port}: {e}")),
            }
        }
        panic!("redis-server did not start:\n{}", failures.join("\n"));
    }

    /// [`RedisServer::start_with`] persisting every write to an append-only file
    /// in `dir` before it answers (`--appendonly yes --appendfsync always`).
    pub fn start_aof(dir: &str) -> RedisServer {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always", "--dir", dir])
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Send `signal` (`STOP`, `CONT`, …) to the running server.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().unwrap_or_else(|| panic!("redis :{} is not running", self.port));
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed: {status}");
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The value of `--requirepass`, if the server was started with one.
    pub fn password(&self) -> Option<&str> {
        let at = self.extra.iter().rposition(|a| a == "--requirepass")?;
        self.extra.get(at + 1).map(String::as_str)
    }

    /// True when the server was started with `--tls-port`.
    pub fn tls(&self) -> bool {
        self.extra.iter().any(|a| a == "--tls-port")
    }

    /// One command to this server, with `AUTH` first when it has a password. Over
    /// TLS (through `redis-cli`) the reply is redis-cli's raw text as one bulk
    /// string (`PONG` as a simple string). Panics on I/O errors.
    pub fn cmd(&self, args: &[&str]) -> Resp {
        self.try_cmd(args).unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// [`RedisServer::cmd`] without the panic.
    pub fn try_cmd(&self, args: &[&str]) -> io::Result<Resp> {
        if self.tls() {
            let text = redis_cli_tls(self.port, self.password(), args)?;
            let text = text.trim_end().to_owned();
            return Ok(if text == "PONG" { Resp::Simple(text) } else { Resp::Bulk(Some(text)) });
        }
        try_redis_cmd_auth(self.port, self.password(), args)
    }

    /// Kill the server (SIGKILL, as a crash would) and reap it. Its port is free
    /// again once this returns; connected clients see their sockets fail.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port (empty: nothing was persisted) and wait for
    /// `PING`. Stops the running server first if there is one.
    pub fn restart(&mut self) {
        self.stop();
        // Our own port was just released, so a failure here is a real problem;
        // still, give a slow exit a few chances.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match self.launch() {
                Ok(()) => return,
                Err(e) => failures.push(e),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("redis-server did not restart on port {}:\n{}", self.port, failures.join("\n"));
    }

    /// Spawn `redis-server` on `self.port` and wait until *it* (not some other
    /// process on that port) answers `PING`.
    fn launch(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("cannot open {}: {e}", self.log.display()))?;
        let log_err = log.try_clone().map_err(|e| format!("cannot clone log handle: {e}"))?;
        let port = self.port.to_string();
        let dir = std::env::temp_dir();
        let spawned = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("{REDIS_MISSING}"),
            Err(e) => panic!("cannot spawn redis-server: {e}"),
        };
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + REDIS_READY_TIMEOUT;
        loop {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!(
                    "exited ({status}) before answering PING; log:\n{}",
                    self.log_tail()
                ));
            }
            if self.try_cmd(&["PING"]).ok() == Some(Resp::Simple("PONG".into())) {
                // Make sure the PONG came from our process, not a stranger's server.
                let info = self.try_cmd(&["INFO", "server"]);
                let ours = match &info {
                    Ok(Resp::Bulk(Some(text))) => {
                        text.lines().any(|l| l.trim() == format!("process_id:{pid}"))
                    }
                    _ => false,
                };
                if ours {
                    return Ok(());
                }
                self.stop();
                return Err(format!("port taken by another server ({info:?})"));
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "no PONG within {REDIS_READY_TIMEOUT:?}; log:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(POLL / 2);
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- redis-server :{} log ({}) ----\n{}",
                self.port,
                self.log.display(),
                self.log_tail()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Resp>>),
}

/// A fault: every time a message containing `needle` is published on a channel
/// matching `pattern` (at most once per `every`), the Redis on `port` cuts every
/// pub/sub connection (`CLIENT KILL TYPE pubsub`) and refuses new subscriptions
/// (`ACL SETUSER default -subscribe -psubscribe`) for `hold`. What is published
/// meanwhile, such as the answer to that message, is lost to every subscriber.
/// Runs on its own thread until dropped; its own subscription is cut too and made
/// again once subscribing is allowed.
pub struct SubscriptionCutter {
    stop: Arc<std::sync::atomic::AtomicBool>,
    cuts: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SubscriptionCutter {
    pub fn start(
        port: u16,
        pattern: &str,
        needle: &str,
        every: Duration,
        hold: Duration,
    ) -> SubscriptionCutter {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (stop2, cuts2) = (stop.clone(), cuts.clone());
        let (pattern, needle) = (pattern.to_owned(), needle.to_owned());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let connect = move || -> io::Result<TcpStream> {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            s.set_write_timeout(Some(Duration::from_secs(2)))?;
            Ok(s)
        };
        let thread = std::thread::spawn(move || {
            let mut last = Instant::now() - every;
            while !stop2.load(Ordering::Relaxed) {
                let (Ok(mut sub), Ok(mut killer)) = (connect(), connect()) else {
                    std::thread::sleep(POLL);
                    continue;
                };
                if sub.write_all(resp_command(&["PSUBSCRIBE", &pattern]).as_bytes()).is_err() {
                    continue;
                }
                let mut r = BufReader::new(sub);
                let mut kr = BufReader::new(match killer.try_clone() {
                    Ok(k) => k,
                    Err(_) => continue,
                });
                // Until this subscription is cut (or a read times out mid-way).
                while !stop2.load(Ordering::Relaxed) {
                    let msg = match read_resp(&mut r) {
                        Ok(Resp::Array(Some(v))) => v,
                        Ok(_) => continue,
                        Err(e)
                            if e.kind() == ErrorKind::WouldBlock
                                || e.kind() == ErrorKind::TimedOut =>
                        {
                            continue
                        }
                        Err(_) => break,
                    };
                    let hit = matches!(msg.last(), Some(Resp::Bulk(Some(body))) if body.contains(&needle));
                    if hit && last.elapsed() >= every {
                        last = Instant::now();
                        // Both in one write: the answer to the message is on its way.
                        let deny = resp_command(&[
                            "ACL",
                            "SETUSER",
                            "default",
                            "-subscribe",
                            "-psubscribe",
                        ]);
                        let cut = resp_command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
                        let allow = resp_command(&[
                            "ACL",
                            "SETUSER",
                            "default",
                            "+subscribe",
                            "+psubscribe",
                        ]);
                        if killer.write_all(format!("{deny}{cut}").as_bytes()).is_err()
                            || read_resp(&mut kr).is_err()
                            || read_resp(&mut kr).is_err()
                        {
                            break;
                        }
                        cuts2.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(hold);
                        if killer.write_all(allow.as_bytes()).is_err()
                            || read_resp(&mut kr).is_err()
                        {
                            // Never leave subscribing refused: once more, on a fresh connection.
                            let _ = try_redis_cmd(
                                port,
                                &["ACL", "SETUSER", "default", "+subscribe", "+psubscribe"],
                            );
                            break;
                        }
                    }
                }
            }
        });
        SubscriptionCutter { stop, cuts, thread: Some(thread) }
    }

    /// How many times the subscriptions were cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for SubscriptionCutter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Send one command to the Redis on `port` and read its reply (to peek at keys,
/// e.g. `redis_cmd(port, &["SCAN", "0", "COUNT", "1000"])`). Panics on I/O errors.
pub fn redis_cmd(port: u16, args: &[&str]) -> Resp {
    try_redis_cmd(port, args).unwrap_or_else(|e| panic!("redis {args:?} on port {port}: {e}"))
}

/// `args` as a RESP request.
fn resp_command(args: &[&str]) -> String {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    req
}

/// [`redis_cmd`] without the panic; every step is bounded by a 2 s timeout.
pub fn try_redis_cmd(port: u16, args: &[&str]) -> io::Result<Resp> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(resp_command(args).as_bytes())?;
    read_resp(&mut BufReader::new(s))
}

/// [`try_redis_cmd`] on one connection that first sends `AUTH password` (when
/// given); an `AUTH` refusal is returned as the reply.
fn try_redis_cmd_auth(port: u16, password: Option<&str>, args: &[&str]) -> io::Result<Resp> {
    let Some(password) = password else { return try_redis_cmd(port, args) };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut req = String::new();
    for cmd in [&["AUTH", password][..], args] {
        req.push_str(&format!("*{}\r\n", cmd.len()));
        for a in cmd {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
    }
    s.write_all(req.as_bytes())?;
    let mut r = BufReader::new(s);
    match read_resp(&mut r)? {
        Resp::Error(e) => Ok(Resp::Error(e)),
        _ => read_resp(&mut r),
    }
}

/// Run one command through `redis-cli --tls --insecure` (bounded to 5 s); its
/// stdout. A failed connection (non-zero exit) is an error.
fn redis_cli_tls(port: u16, password: Option<&str>, args: &[&str]) -> io::Result<String> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--tls", "--insecure", "-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(pw) = password {
        cmd.args(["-a", pw, "--no-auth-warning"]);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(ErrorKind::TimedOut, "redis-cli --tls took over 5 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || stdout.starts_with("Could not connect") {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(io::Error::other(format!("redis-cli {}: {stdout}{stderr}", out.status)));
    }
    Ok(stdout)
}

pub(crate) fn read_resp(r: &mut impl BufRead) -> io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(ErrorKind::UnexpectedEof, "connection closed"));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let bad = |what: &str| io::Error::new(ErrorKind::InvalidData, format!("{what}: {line:?}"));
    let len = || rest.parse::<i64>().map_err(|_| bad("bad length"));
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Int(len()?),
        "$" => match usize::try_from(len()?) {
            Err(_) => Resp::Bulk(None),
            Ok(n) => {
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n);
                Resp::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        },
        "*" => match usize::try_from(len()?) {
            Err(_) => Resp::Array(None),
            Ok(n) => Resp::Array(Some((0..n).map(|_| read_resp(r)).collect::<io::Result<_>>()?)),
        },
        _ => return Err(bad("unknown reply type")),
    })
}

// ---------------------------------------------------------------- nodes

/// One `rendezvous` process; killed on drop (its recent log printed if the test is
/// failing).
pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    /// The admin API's address, when the node serves one (`--admin-token`); logged
    /// before the ready line.
    pub admin: Option<SocketAddr>,
    child: Child,
    logs: Arc<Mutex<VecDeque<String>>>,
}

impl Node {
    /// Start the binary as node `node_id` (joined to `redis_url` when given) with
    /// [`NODE_DEFAULTS`], and wait for its `listening on http://ADDR` line.
    /// `extra_args` are `(flag, value)` pairs; a flag that is already present
    /// (a default, `--bind`, `--redis-url`, `--node-id`) has its value replaced,
    /// any other is appended.
    pub fn spawn(redis_url: Option<&str>, node_id: &str, extra_args: &[(&str, &str)]) -> Node {
        Self::spawn_with_file_limit(None, redis_url, node_id, extra_args)
    }

    /// [`Node::spawn`] with the process's open-file limit (soft and hard) set to
    /// `files` (through util-linux's `prlimit`, which execs the binary: same pid).
    pub fn spawn_with_file_limit(
        files: Option<u64>,
        redis_url: Option<&str>,
        node_id: &str,
        extra_args: &[(&str, &str)],
    ) -> Node {
        // Each client socket of a storm is a descriptor in this test process.
        let _ = rlimit::increase_nofile_limit(u64::MAX);
        let mut args: Vec<(String, String)> =
            NODE_DEFAULTS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        args.push(("--node-id".into(), node_id.into()));
        if let Some(url) = redis_url {
            args.push(("--redis-url".into(), url.into()));
        }
        for (k, v) in extra_args {
            assert!(k.starts_with("--"), "extra_args take (\"--flag\", \"value\") pairs, got {k}");
            match args.iter_mut().find(|(have, _)| have == k) {
                Some(slot) => slot.1 = v.to_string(),
                None => args.push((k.to_string(), v.to_string())),
            }
        }
        args.retain(|(_, v)| v != UNSET);
        let mut cmd = match files {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(engine_bin());
                c
            }
            None => Command::new(engine_bin()),
        };
        for (k, v) in &args {
            cmd.arg(k).arg(v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        let mut child = cmd.spawn().expect("spawn the rendezvous binary");
        let stderr = child.stderr.take().expect("piped stderr of rendezvous");

        let logs = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_LINES)));
        let (ready_tx, ready_rx) = mpsc::channel::<String>();
        let sink = logs.clone();
        let admin_slot = Arc::new(Mutex::new(None::<SocketAddr>));
        let admin_seen = admin_slot.clone();
        std::thread::Builder::new()
            .name(format!("{node_id}-stderr"))
            .spawn(move || {
                let mut ready = Some(ready_tx);
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("admin API serving http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or_default();
                        *admin_seen.lock().unwrap_or_else(|e| e.into_inner()) = addr.parse().ok();
                    }
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    let mut buf = sink.lock().unwrap_or_else(|e| e.into_inner());
                    if buf.len() == LOG_LINES {
                        buf.pop_front();
                    }
                    buf.push_back(line);
                }
            })
            .expect("spawn the log reader thread");

        let mut node = Node {
            id: node_id.to_owned(),
            addr: ([0, 0, 0, 0], 0).into(),
            admin: None,
            child,
            logs,
        };
        match ready_rx.recv_timeout(NODE_READY_TIMEOUT) {
            Ok(addr) => {
                node.addr = addr.parse().unwrap_or_else(|e| {
                    panic!("{node_id}: ready line has no address ({addr:?}: {e})")
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stderr closed before the ready line: the process is exiting.
                let code = node.wait_exit_quietly(Duration::from_secs(5));
                panic!(
                    "{node_id} exited ({code:?}) before logging its ready line; args {args:?}\n{}",
                    node.logs()
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!(
                    "{node_id}: no ready line within {NODE_READY_TIMEOUT:?}; args {args:?}\n{}",
                    node.logs()
                );
            }
        }
        node.admin = *admin_slot.lock().unwrap_or_else(|e| e.into_inner());
        node
    }

    /// The admin API's address (panics when the node serves none).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.unwrap_or_else(|| panic!("{}: no admin API (start it with ADMIN_ARGS)", self.id))
    }

    /// `ws://ADDR/ws?user=USER` (anonymous mode, implied by the loopback bind).
    pub fn ws_url(&self, user: &str) -> String {
        format!("ws://{}/ws?user={user}", self.addr)
    }

    /// Connect as `user` and read the `welcome`.
    pub async fn client(&self, user: &str) -> Client {
        Client::connect(&self.ws_url(user)).await
    }

    /// [`Node::client`], asserting the welcome names this node.
    pub async fn client_checked(&self, user: &str) -> Client {
        let c = self.client(user).await;
        match &c.welcome {
            ServerFrame::Welcome { node: served_by, .. } => {
                assert_eq!(served_by, &self.id, "{user}: welcome from the wrong node")
            }
            other => panic!("{user}: not a welcome: {other:?}"),
        }
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap: the node vanishes without any goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: start the graceful drain. Use [`Node::wait_exit`] for the result.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed: {status}", self.child.id());
    }

    /// Wait (bounded) for the process to exit; its exit code (-1 if killed by a
    /// signal). Panics with the node's log if it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        match self.wait_exit_quietly(within) {
            Some(code) => code,
            None => panic!("{} did not exit within {within:?}\n{}", self.id, self.logs()),
        }
    }

    fn wait_exit_quietly(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has exited, None while it runs.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("query the rendezvous process status")
    }

    /// The last log lines (at most 200), oldest first.
    pub fn logs(&self) -> String {
        let buf = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for line in buf.iter() {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- last log lines of {} ({}) ----\n{}", self.id, self.addr, self.logs());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `node-a`, `node-b`, … for node index `i`.
pub fn node_name(i: usize) -> String {
    assert!(i < 26, "at most 26 named nodes");
    format!("node-{}", char::from(b'a' + i as u8))
}

// ---------------------------------------------------------------- cluster

/// One Redis and `n` nodes joined through it. Nodes are dropped (killed) before
/// Redis, so their last log lines describe the test, not Redis going away.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub redis: RedisServer,
}

impl Cluster {
    /// Redis plus `n` nodes named `node-a`, `node-b`, … with [`NODE_DEFAULTS`];
    /// returns once every node reports `"nodes": n` in `/api/stats`.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, &[]).await
    }

    /// [`Cluster::start`] with `extra_args` for every node (see [`Node::spawn`]).
    pub async fn start_with(n: usize, extra_args: &[(&str, &str)]) -> Cluster {
        let redis = RedisServer::start();
        let url = redis.url();
        let nodes = (0..n).map(|i| Node::spawn(Some(&url), &node_name(i), extra_args)).collect();
        let cluster = Cluster { nodes, redis };
        cluster.wait_formed().await;
        cluster
    }

    /// Wait (bounded) until every running node counts all nodes of the cluster.
    pub async fn wait_formed(&self) {
        let n = self.nodes.len() as u64;
        for node in &self.nodes {
            wait_nodes(node, n, FORM_TIMEOUT).await;
        }
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }

    /// Connect `user` to node `i`; asserts the welcome names that node.
    pub async fn client(&self, i: usize, user: &str) -> Client {
        self.nodes[i].client_checked(user).await
    }

    /// [`Cluster::client`] for each (node, user), in order.
    pub async fn clients<const N: usize>(&self, who: [(usize, &str); N]) -> [Client; N] {
        let mut out = Vec::with_capacity(N);
        for (i, user) in who {
            out.push(self.client(i, user).await);
        }
        out.try_into().unwrap_or_else(|_| unreachable!("one client per entry"))
    }
}

// ---------------------------------------------------------------- http waits

/// `GET /api/stats` of `node` as JSON (asserts 200).
pub async fn stats(node: &Node) -> Value {
    http::stats(node.addr).await
}

/// Poll `/api/stats` of `node` until `pred` holds; how long it took. Panics after
/// `within` with the last stats.
pub async fn wait_stats(
    node: &Node,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Duration {
    let started = Instant::now();
    http::wait_stats(node.addr, &format!("{}: {what}", node.id), within, pred).await;
    started.elapsed()
}

/// Wait (bounded) until `node` reports `"nodes": want`; how long it took.
pub async fn wait_nodes(node: &Node, want: u64, within: Duration) -> Duration {
    wait_stats(node, &format!("nodes == {want}"), within, |s| s["nodes"].as_u64() == Some(want))
        .await
}

/// Poll `GET path` on `node` until it answers `want`; how long it took.
pub async fn wait_http_status(node: &Node, path: &str, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    http::wait_status(node.addr, path, want, within).await;
    started.elapsed()
}

/// `GET path` on `node` as JSON, with its status.
pub async fn get_json(node: &Node, path: &str) -> (u16, Value) {
    let (status, body) = http_get(node.addr, path).await;
    let v = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("{}: {path} is not JSON ({e}): {body}", node.id));
    (status, v)
}

/// A fresh directory tagged `tag`, a Redis persisting every write to an append-only
/// file there ([`RedisServer::start_aof`]) and `n` nodes joined through it
/// ([`spawn_nodes`]).
pub async fn aof_cluster(tag: &str, n: usize) -> (TempDir, RedisServer, Vec<Node>) {
    let dir = TempDir::new(tag);
    let redis = RedisServer::start_aof(&dir.path_string());
    let nodes = spawn_nodes(&redis.url(), n).await;
    (dir, redis, nodes)
}

/// `n` nodes (`node-a`, …) joined to `redis_url` with [`NODE_DEFAULTS`], once
/// every one of them counts all `n`.
async fn spawn_nodes(redis_url: &str, n: usize) -> Vec<Node> {
    let nodes: Vec<Node> =
        (0..n).map(|i| Node::spawn(Some(redis_url), &node_name(i), &[])).collect();
    for node in &nodes {
        wait_nodes(node, n as u64, FORM_TIMEOUT).await;
    }
    nodes
}
