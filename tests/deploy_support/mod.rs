//! Helpers of tests/deploy.rs: the repository's deployment files, the image's
//! build step run by hand, child processes that die with the test, blocking HTTP,
//! and Prometheus' text format.

pub mod dockerfile;
pub mod promql;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use rendezvous_test_support::http::parse_response;
pub use rendezvous_test_support::{engine_bin, free_port, TempDir};

/// The provisioned datasource of the compose stack:
/// dashboards/provisioning/datasources/prometheus.yml.
pub const DATASOURCE_TYPE: &str = "prometheus";
pub const DATASOURCE_UID: &str = "prometheus";
/// What every panel, target and query variable names instead of a fixed uid: the
/// dashboard's own `datasource` variable, so the files import into any Grafana.
pub const DATASOURCE_VARIABLE: &str = "datasource";

/// The load tester's metrics (its `--metrics-bind` contract) and their types.
pub const LOADTEST_METRICS: &[(&str, &str)] = &[
    ("rendezvous_loadtest_connections", "gauge"),
    ("rendezvous_loadtest_connects_total", "counter"),
    ("rendezvous_loadtest_matches_total", "counter"),
    ("rendezvous_loadtest_match_latency_seconds", "histogram"),
    ("rendezvous_loadtest_messages_sent_total", "counter"),
    ("rendezvous_loadtest_messages_received_total", "counter"),
    ("rendezvous_loadtest_delivery_latency_seconds", "histogram"),
    ("rendezvous_loadtest_ack_latency_seconds", "histogram"),
    ("rendezvous_loadtest_errors_total", "counter"),
    ("rendezvous_loadtest_lost_messages_total", "counter"),
];

pub const LOADTEST_PREFIX: &str = "rendezvous_loadtest_";

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// `rendezvous-loadtest`. Cargo sets `CARGO_BIN_EXE_*` only for the binaries of
/// the package under test, and the load tester is another workspace member, so
/// this is its path beside `rendezvous` in the same target directory; it exists
/// once [`image_build`] (the Dockerfile's build step) has run.
pub fn loadtest_bin() -> PathBuf {
    engine_bin().with_file_name("rendezvous-loadtest")
}

// ---------------------------------------------------------------- files

/// Every dashboards/*.json: (file name, parsed JSON or the parse error).
pub fn dashboard_files() -> Vec<(String, Result<Value, String>)> {
    let dir = repo().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().expect("file name").to_string_lossy().into_owned();
            let parsed = std::fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()));
            (name, parsed)
        })
        .collect()
}

/// Every dashboard, parsed (panics on a file that does not parse: the dashboard
/// test reports those one by one).
pub fn dashboards() -> Vec<(String, Value)> {
    dashboard_files()
        .into_iter()
        .map(|(n, r)| {
            let v = r.unwrap_or_else(|e| panic!("dashboards/{n} is not JSON: {e}"));
            (n, v)
        })
        .collect()
}

/// Every panel of a dashboard, also those nested in (collapsed) rows.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(inner) = p.get("panels") {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// One PromQL expression of a dashboard and where it is.
#[derive(Debug, Clone)]
pub struct Query {
    pub dashboard: String,
    pub place: String,
    pub expr: String,
}

/// Every target expression of every panel.
pub fn panel_queries(file: &str, dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push(Query {
                    dashboard: file.to_owned(),
                    place: format!(
                        "panel {:?} target {}",
                        p["title"].as_str().unwrap_or("?"),
                        t["refId"]
                    ),
                    expr: expr.to_owned(),
                });
            }
        }
    }
    out
}

/// The series selectors inside template variables' `label_values(SELECTOR, label)`.
pub fn variable_queries(file: &str, dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or_default();
        if let Some(inner) = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
            let selector = inner.rsplit_once(',').map(|(s, _)| s).unwrap_or(inner).trim();
            out.push(Query {
                dashboard: file.to_owned(),
                place: format!("variable {}", v["name"]),
                expr: selector.to_owned(),
            });
        }
    }
    out
}

/// Values for every template variable of `dashboard` when querying Prometheus
/// directly: Grafana's built-ins as a 5 s scrape interval gives them at most
/// (`$__rate_interval` as `1m`), a variable's default (`current`, e.g. the `job`),
/// else its "All" value.
pub fn variable_values(dashboard: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__interval_ms", "15000"),
        ("__range", "1h"),
        ("__range_s", "3600"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default().to_owned();
        let current = v["current"]["value"].as_str().filter(|s| !s.is_empty() && *s != "$__all");
        let all = v["allValue"].as_str().filter(|s| !s.is_empty()).unwrap_or(".*");
        out.push((name, current.unwrap_or(all).to_owned()));
    }
    out
}

/// docker-compose.yml with YAML merge keys (`<<: *node`) applied.
pub fn compose() -> serde_norway::Value {
    yaml("docker-compose.yml")
}

pub fn yaml(rel: &str) -> serde_norway::Value {
    let mut v: serde_norway::Value =
        serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"));
    v.apply_merge().unwrap_or_else(|e| panic!("{rel}: bad merge key: {e}"));
    v
}

/// A YAML scalar or list as strings (compose allows both for `command`).
pub fn yaml_words(v: &serde_norway::Value) -> Vec<String> {
    match v {
        serde_norway::Value::Sequence(s) => s.iter().map(yaml_scalar).collect(),
        serde_norway::Value::Null => Vec::new(),
        other => yaml_scalar(other).split_whitespace().map(str::to_owned).collect(),
    }
}

pub fn yaml_scalar(v: &serde_norway::Value) -> String {
    match v {
        serde_norway::Value::String(s) => s.clone(),
        serde_norway::Value::Number(n) => n.to_string(),
        serde_norway::Value::Bool(b) => b.to_string(),
        serde_norway::Value::Null => String::new(),
        other => format!("{other:?}"),
    }
}

/// A service's `environment` (map or `K=V` list form) as pairs.
pub fn service_env(service: &serde_norway::Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        serde_norway::Value::Mapping(m) => {
            m.iter().map(|(k, v)| (yaml_scalar(k), yaml_scalar(v))).collect()
        }
        serde_norway::Value::Sequence(s) => s
            .iter()
            .map(yaml_scalar)
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv, String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// `${NAME:-default}` and `${NAME}` as compose would expand them with an empty
/// environment (defaults taken, plain variables empty).
pub fn compose_defaults(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find('}') else {
            out.push_str(&rest[at..]);
            return out;
        };
        let inner = &rest[at + 2..at + end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        }
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    out
}

/// The Dockerfile's instructions.
pub fn dockerfile() -> Vec<dockerfile::Instruction> {
    dockerfile::parse(&read("Dockerfile"))
}

/// The last `cargo build …` command of the Dockerfile's RUN steps (the one after
/// the real sources are copied), as written.
pub fn dockerfile_cargo_build() -> String {
    dockerfile()
        .iter()
        .filter(|i| i.keyword == "RUN")
        .flat_map(|i| i.args.split("&&").map(|s| s.trim().to_owned()).collect::<Vec<_>>())
        .rfind(|s| s.starts_with("cargo build"))
        .expect("the Dockerfile has a RUN with `cargo build`")
}

// ---------------------------------------------------------------- the image build, by hand

/// Run the Dockerfile's `cargo build …` line in the repository (once per test
/// process; every caller waits for the one run). It is the build the tests already
/// did, so it is quick, but it may relink `target/release/rendezvous` (the test
/// build enables dev-dependency features), so every test that starts a process
/// calls this first: nothing is spawned while the binary is swapped.
pub fn image_build() -> Result<(), String> {
    // Concurrent callers block in get_or_init until the one build is done.
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let line = dockerfile_cargo_build();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            // The line names `cargo`; run it with the cargo that runs this test.
            let args: Vec<&str> = line.split_whitespace().skip(1).collect();
            let started = Instant::now();
            let out = run_bounded(
                Command::new(&cargo).args(&args).current_dir(repo()),
                Duration::from_secs(20 * 60),
            )
            .map_err(|e| format!("`{line}`: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`{line}` failed ({}):\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            eprintln!("`{line}` by hand: {:.1?}", started.elapsed());
            for bin in [engine_bin(), loadtest_bin()] {
                if !bin.is_file() {
                    return Err(format!("`{line}` did not produce {}", bin.display()));
                }
            }
            Ok(())
        })
        .clone()
}

/// Run to completion within `limit` (killed past it); stdout and stderr captured.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> io::Result<std::process::Output> {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("still running after {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(std::process::Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

// ---------------------------------------------------------------- processes

/// A child process killed (and reaped) on drop; its output goes to a log file
/// that is printed when the test fails.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> Proc {
        let file: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let log = dir.join(format!("{file}.log"));
        let f =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let f2 = f.try_clone().expect("clone log handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc { name: name.to_owned(), child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Poll `GET path` on `addr` (every `poll`) until it answers 200: true; false
    /// once the process has exited or `within` has passed.
    pub fn wait_ok(
        &mut self,
        addr: SocketAddr,
        path: &str,
        within: Duration,
        poll: Duration,
    ) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((200, _)) = http_get(addr, path, Duration::from_secs(2)) {
                return true;
            }
            if self.exited().is_some() || Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(poll);
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its output.
    pub fn tail(&self, n: usize) -> String {
        let text = self.output();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- last output of {} ----\n{}", self.name, self.tail(60));
        }
    }
}

/// Is `program` on PATH (or an existing path)?
pub fn have(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Panic (never skip) when a tool the test needs is missing.
pub fn require(program: &str, package: &str) {
    assert!(
        have(program),
        "{program} not found: install Debian's `{package}` package (scripts/test.sh installs it when missing)"
    );
}

// ---------------------------------------------------------------- HTTP

/// `GET path` as HTTP/1.0 (so no chunked answers), bounded by `limit`: status and body.
pub fn http_get(addr: SocketAddr, path: &str, limit: Duration) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let (status, _, body) = parse_response(&buf);
    Ok((status, body))
}

/// `s` percent-encoded for a query string.
pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ---------------------------------------------------------------- Prometheus text format

/// One scrape: every series name with the sum of its samples, and the `# TYPE`s.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut w = rest.split_whitespace();
                if let (Some(n), Some(t)) = (w.next(), w.next()) {
                    s.types.insert(n.to_owned(), t.to_owned());
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..end];
            // The value follows the labels (which may hold spaces in quotes).
            let after = match line[end..].strip_prefix('{') {
                Some(_) => line.rfind('}').map(|i| &line[i + 1..]).unwrap_or(""),
                None => &line[end..],
            };
            let value =
                after.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            *s.samples.entry(name.to_owned()).or_insert(0.0) += value;
        }
        s
    }

    /// Merge another scrape in (the union of names; values summed).
    pub fn absorb(&mut self, other: &Scrape) {
        for (k, v) in &other.samples {
            *self.samples.entry(k.clone()).or_insert(0.0) += v;
        }
        for (k, v) in &other.types {
            self.types.insert(k.clone(), v.clone());
        }
    }

    pub fn has(&self, series: &str) -> bool {
        self.samples.contains_key(series)
    }

    pub fn value(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

/// `GET /metrics` of `addr`, parsed.
pub fn scrape(addr: SocketAddr) -> Result<Scrape, String> {
    match http_get(addr, "/metrics", Duration::from_secs(5)) {
        Ok((200, body)) => Ok(Scrape::parse(&body)),
        Ok((status, body)) => Err(format!("{addr}/metrics answered {status}: {body}")),
        Err(e) => Err(format!("{addr}/metrics: {e}")),
    }
}

/// Poll `/metrics` of `addr` until `series` is above 0, within `within`.
pub fn wait_series(addr: SocketAddr, series: &str, within: Duration) -> Result<Scrape, String> {
    let deadline = Instant::now() + within;
    loop {
        let s = scrape(addr)?;
        if s.value(series) > 0.0 {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(format!("{series} not above 0 on {addr} within {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
