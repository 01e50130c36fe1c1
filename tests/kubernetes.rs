//! deploy/kubernetes/, checked without a Kubernetes cluster:
//!
//! * the manifests parse, kustomization.yaml lists files that exist, and the
//!   Deployment has what the issue asks for: readiness on `/readyz` and liveness
//!   on `/healthz` at the port the node binds, a `preStop` and a grace period
//!   that leave the drain its time, resource requests, Redis and the JWT secret
//!   from a Secret that has those keys, a PodDisruptionBudget and a Service that
//!   select the pods;
//! * every `--flag` and `RENDEZVOUS_*` variable the manifests use exists in the
//!   real binary (its `--help`);
//! * the real binary, given exactly the manifests' environment (the Secret's
//!   values, the pod's name as node id; only the address and Redis' host
//!   changed to loopback), accepts it (`--print-config`), serves, turns ready
//!   with a real Redis, and drains on SIGTERM within the grace period.

use rendezvous_test_support as common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cluster::RedisServer;
use common::{engine_bin, free_port};
use serde_norway::Value;

const DIR: &str = "deploy/kubernetes";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every document of every `*.yaml` in deploy/kubernetes/: (file, document).
fn manifests() -> Vec<(String, Value)> {
    let dir = repo().join(DIR);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(dir.join(&f)).expect("read manifest");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{DIR}/{f} is not YAML: {e}"));
            if !v.is_null() {
                out.push((f.clone(), v));
            }
        }
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn of_kind<'a>(all: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    all.iter().filter(|(_, v)| v["kind"] == kind).map(|(_, v)| v).collect()
}

/// The flags and environment variables `rendezvous --help` names.
fn binary_settings() -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new(engine_bin()).arg("--help").output().expect("run rendezvous --help");
    assert!(out.status.success(), "rendezvous --help failed");
    let help = String::from_utf8_lossy(&out.stdout);
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for line in help.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            let name: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            flags.insert(format!("--{name}"));
        }
        if let Some(rest) = t.split("[env: ").nth(1) {
            let name: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            envs.insert(name);
        }
    }
    assert!(flags.len() > 20 && envs.len() > 20, "could not read --help:\n{help}");
    (flags, envs)
}

/// The Deployment's one pod template and its `rendezvous` container.
fn deployment(all: &[(String, Value)]) -> (&Value, &Value) {
    let deps = of_kind(all, "Deployment");
    assert_eq!(deps.len(), 1, "one Deployment expected in {DIR}");
    let d = deps[0];
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("the Deployment has containers");
    let c = containers.iter().find(|c| c["name"] == "rendezvous").expect("a container rendezvous");
    (d, c)
}

/// The container's environment with every value resolved: literal values, the
/// Secret's keys, and `metadata.name` as `pod_name`.
fn resolved_env(all: &[(String, Value)], c: &Value, pod_name: &str) -> BTreeMap<String, String> {
    let secrets: BTreeMap<String, &Value> =
        of_kind(all, "Secret").into_iter().map(|s| (self::s(&s["metadata"]["name"]), s)).collect();
    let secret_value = |name: &str, key: &str| -> Option<String> {
        let sec = secrets.get(name)?;
        if let Some(v) = sec["stringData"].get(key) {
            return Some(s(v));
        }
        None
    };
    let mut env = BTreeMap::new();
    for e in c["envFrom"].as_sequence().into_iter().flatten() {
        let name = s(&e["secretRef"]["name"]);
        let sec = secrets.get(&name).unwrap_or_else(|| panic!("envFrom: no Secret {name}"));
        for (k, v) in sec["stringData"].as_mapping().into_iter().flatten() {
            env.insert(s(k), s(v));
        }
    }
    for e in c["env"].as_sequence().into_iter().flatten() {
        let name = s(&e["name"]);
        let value = if !e["value"].is_null() {
            s(&e["value"])
        } else if !e["valueFrom"]["secretKeyRef"].is_null() {
            let r = &e["valueFrom"]["secretKeyRef"];
            let (sec, key) = (s(&r["name"]), s(&r["key"]));
            secret_value(&sec, &key)
                .unwrap_or_else(|| panic!("{name}: Secret {sec} has no key {key} in {DIR}"))
        } else if s(&e["valueFrom"]["fieldRef"]["fieldPath"]) == "metadata.name" {
            pod_name.to_owned()
        } else {
            panic!("{name}: a value source this test does not know: {e:?}")
        };
        env.insert(name, value);
    }
    env
}

fn millis(env: &BTreeMap<String, String>, key: &str, default: u64) -> u64 {
    env.get(key).map(|v| v.parse().unwrap_or_else(|e| panic!("{key}={v}: {e}"))).unwrap_or(default)
}

#[test]
fn manifests_are_complete_and_use_only_settings_the_binary_has() {
    let all = manifests();
    let mut problems: Vec<String> = Vec::new();

    // kustomization.yaml names files that exist, and every manifest.
    let files: BTreeSet<String> = all.iter().map(|(f, _)| f.clone()).collect();
    let kust: Vec<String> = all
        .iter()
        .filter(|(_, v)| v["kind"] == "Kustomization")
        .flat_map(|(_, v)| v["resources"].as_sequence().cloned().unwrap_or_default())
        .map(|r| s(&r))
        .collect();
    for r in &kust {
        if !files.contains(r) {
            problems.push(format!("kustomization.yaml: {r} does not exist"));
        }
    }
    for f in &files {
        if f != "kustomization.yaml" && !kust.contains(f) {
            problems.push(format!("kustomization.yaml does not list {f}"));
        }
    }

    let (d, c) = deployment(&all);
    let pod = &d["spec"]["template"]["spec"];
    let pod_labels = d["spec"]["template"]["metadata"]["labels"].as_mapping().cloned();
    let selects_pods = |sel: &Value| -> bool {
        match (sel.as_mapping(), &pod_labels) {
            (Some(sel), Some(labels)) if !sel.is_empty() => {
                sel.iter().all(|(k, v)| labels.get(k) == Some(v))
            }
            _ => false,
        }
    };
    if !selects_pods(&d["spec"]["selector"]["matchLabels"]) {
        problems.push("the Deployment's selector does not match its pod labels".into());
    }

    // Flags and variables exist in the binary.
    let (flags, envs) = binary_settings();
    for w in c["command"]
        .as_sequence()
        .into_iter()
        .flatten()
        .chain(c["args"].as_sequence().into_iter().flatten())
    {
        let w = s(w);
        if let Some(flag) =
            w.strip_prefix("--").map(|f| format!("--{}", f.split('=').next().unwrap_or(f)))
        {
            if !flags.contains(&flag) {
                problems.push(format!("container argument {w}: rendezvous has no {flag}"));
            }
        }
    }
    let mut used_vars: Vec<String> =
        c["env"].as_sequence().into_iter().flatten().map(|e| s(&e["name"])).collect();
    for sec in of_kind(&all, "Secret") {
        used_vars.extend(sec["stringData"].as_mapping().into_iter().flatten().map(|(k, _)| s(k)));
        used_vars.extend(sec["data"].as_mapping().into_iter().flatten().map(|(k, _)| s(k)));
    }
    for v in &used_vars {
        if v.starts_with("RENDEZVOUS_") && !envs.contains(v) {
            problems.push(format!("{v} is not a variable of rendezvous (--help)"));
        }
    }

    // Secrets come from the Secret, never as literal values.
    let env = resolved_env(&all, c, "rendezvous-0");
    for secret in ["RENDEZVOUS_REDIS_URL", "RENDEZVOUS_JWT_SECRET"] {
        let from_secret = c["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|e| s(&e["name"]) == secret && !e["valueFrom"]["secretKeyRef"].is_null())
            || !c["envFrom"].is_null() && env.contains_key(secret);
        if !from_secret {
            problems.push(format!("{secret} does not come from a Secret"));
        }
    }

    // Probes at the port the node binds.
    let bind_port = env
        .get("RENDEZVOUS_BIND")
        .and_then(|b| b.rsplit(':').next())
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(8080);
    let ports: BTreeMap<String, u64> = c["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|p| (s(&p["name"]), p["containerPort"].as_u64().unwrap_or(0)))
        .collect();
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        if s(&get["path"]) != path {
            problems.push(format!("{probe} is not an httpGet of {path}: {:?}", c[probe]));
        }
        let port = get["port"].as_u64().or_else(|| ports.get(&s(&get["port"])).copied());
        if port != Some(bind_port) {
            problems
                .push(format!("{probe} port {:?} is not the bound port {bind_port}", get["port"]));
        }
    }

    // preStop + drain fit in the grace period.
    let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .map(|w| w.iter().map(s).collect::<Vec<_>>())
        .unwrap_or_default();
    let pre_stop_ms = match pre_stop.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["sleep", secs] => secs.parse::<u64>().map(|s| s * 1000).unwrap_or(0),
        _ => {
            problems.push(format!("no preStop sleep: {pre_stop:?}"));
            0
        }
    };
    let drain_ms = millis(&env, "RENDEZVOUS_DRAIN_TIMEOUT_MS", 5000);
    let grace_ms = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30) * 1000;
    if grace_ms < pre_stop_ms + drain_ms + 5000 {
        problems.push(format!(
            "terminationGracePeriodSeconds ({grace_ms} ms) leaves no 5 s margin after preStop ({pre_stop_ms} ms) and the drain ({drain_ms} ms)"
        ));
    }

    // Resource requests.
    for r in ["cpu", "memory"] {
        if c["resources"]["requests"][r].is_null() {
            problems.push(format!("no resources.requests.{r}"));
        }
    }

    // A PodDisruptionBudget and a Service for these pods.
    let pdbs = of_kind(&all, "PodDisruptionBudget");
    if !pdbs.iter().any(|p| selects_pods(&p["spec"]["selector"]["matchLabels"])) {
        problems.push("no PodDisruptionBudget selects the Deployment's pods".into());
    }
    let services = of_kind(&all, "Service");
    if !services.iter().any(|sv| selects_pods(&sv["spec"]["selector"])) {
        problems.push("no Service selects the Deployment's pods".into());
    }
    for sv in services {
        for p in sv["spec"]["ports"].as_sequence().into_iter().flatten() {
            let t = &p["targetPort"];
            if t.as_u64().or_else(|| ports.get(&s(t)).copied()) != Some(bind_port) {
                problems.push(format!("Service port {p:?} does not reach {bind_port}"));
            }
        }
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn the_binary_runs_with_the_manifests_environment_and_drains_within_the_grace_period() {
    assert!(
        std::process::Command::new("redis-server").arg("--version").output().is_ok(),
        "redis-server not found: install Debian's `redis-server` package (scripts/test.sh installs it when missing)"
    );
    let all = manifests();
    let (d, c) = deployment(&all);
    let mut env = resolved_env(&all, c, "rendezvous-7d9f8-abcde");
    let grace_ms =
        d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30)
            * 1000;

    let run = |env: &BTreeMap<String, String>, args: &[&str]| {
        let mut cmd = Command::new(engine_bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("RENDEZVOUS_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env).args(args);
        cmd
    };

    // --print-config: the binary accepts every value as the manifests give it.
    let out = run(&env, &["--print-config"]).output().expect("run --print-config");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rendezvous --print-config refused the manifests' environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (k, v) in &env {
        let key = k.trim_start_matches("RENDEZVOUS_").to_ascii_lowercase();
        if k.contains("SECRET") || k.contains("REDIS_URL") {
            continue; // printed masked
        }
        let shown = printed.lines().any(|l| {
            l.split_once('=').is_some_and(|(pk, pv)| {
                pk.trim() == key && pv.trim().trim_matches(['"', '[', ']']) == v.as_str()
            })
        });
        assert!(shown, "--print-config does not show {key} = {v}:\n{printed}");
    }

    // Serve: loopback instead of 0.0.0.0, a real Redis with the Secret's
    // password at the Secret's URL with only the host changed.
    let url = env.get("RENDEZVOUS_REDIS_URL").cloned().expect("RENDEZVOUS_REDIS_URL");
    let password = url
        .strip_prefix("redis://:")
        .and_then(|r| r.split('@').next())
        .expect("the Secret's URL is redis://:PASSWORD@HOST:PORT/DB")
        .to_owned();
    let redis = RedisServer::start_with(&["--requirepass", &password]);
    let host_port = url.split('@').nth(1).and_then(|r| r.split('/').next()).expect("host:port");
    env.insert(
        "RENDEZVOUS_REDIS_URL".into(),
        url.replace(host_port, &format!("127.0.0.1:{}", redis.port())),
    );
    env.insert("RENDEZVOUS_BIND".into(), format!("127.0.0.1:{}", free_port()));
    let mut child = run(&env, &[])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rendezvous");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no ready line within 30 s:\n{}", log.join("\n")));
        log.push(line.clone());
        // JSON logs (RENDEZVOUS_LOG_FORMAT=json): the message holds the address.
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let a: String = rest.chars().take_while(|c| *c != ' ' && *c != '"').collect();
            break a.parse::<std::net::SocketAddr>().expect("address in the ready line");
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = common::http::http_get(addr, "/readyz").await;
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "/readyz still {status} after 20 s: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(common::http::http_get(addr, "/healthz").await.0, 200);
        let stats = common::http::get_json(addr, "/api/stats").await;
        assert_eq!(stats["node"], "rendezvous-7d9f8-abcde", "the pod name is the node id");
    });

    // SIGTERM (what the kubelet sends after preStop): exit 0 within the drain bound.
    let t0 = Instant::now();
    let status =
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill -TERM");
    assert!(status.success());
    let drain_ms = millis(&env, "RENDEZVOUS_DRAIN_TIMEOUT_MS", 5000);
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > Duration::from_millis(grace_ms) {
            let _ = child.kill();
            panic!("still running {grace_ms} ms after SIGTERM (the kubelet would SIGKILL it)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "exit status after SIGTERM: {code}");
    assert!(
        t0.elapsed() < Duration::from_millis(drain_ms + 5000),
        "the drain took {:?}, over its bound of {drain_ms} ms",
        t0.elapsed()
    );
}
