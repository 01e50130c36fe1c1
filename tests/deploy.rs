//! The container and monitoring files, checked without a Docker engine:
//!
//! * `dashboards/*.json` parse and carry what Grafana needs (uid, title, panels
//!   with PromQL targets) and import anywhere: every panel, target and query
//!   variable names the dashboard's `datasource` variable, and every selector
//!   picks its job through a variable; the provisioning files agree with
//!   docker-compose.yml.
//! * A fresh two-node cluster, scraped before any client connects, exports every
//!   series the dashboards and deploy/alerts.yml use.
//! * deploy/alerts.yml passes `promtool check rules`, and `promtool test rules`
//!   with deploy/alerts.test.yml, which makes every rule fire and stay silent.
//! * Every metric a dashboard queries is exported: the engine's by a real cluster
//!   (Redis with a password, as in the compose stack, and three `rendezvous`
//!   processes) after a short workload that makes every counter exist (matches,
//!   chat, a seq gap, a slow consumer, rate limits, bad frames, a refused upgrade,
//!   claim conflicts, a Redis reconnect, a SIGKILLed node); the load tester's by the
//!   compose stack's own `loadtest` command run against two nodes.
//! * Debian's `prometheus`, given deploy/prometheus.yml with only its targets
//!   (and rules file path) rewritten to the test's loopback ports, scrapes both
//!   nodes and Debian's Redis exporter, answers every dashboard query with
//!   `"status":"success"`, and evaluates every alerting rule without error.
//! * docker-compose.yml and the Dockerfile parse and reference only files that
//!   exist; the Dockerfile's build step (its exact `cargo build` line) and run step
//!   (its ENV, its HEALTHCHECK command) work when run by hand.
//!
//! Missing tools (redis-server, prometheus, curl) fail the test with a message
//! naming scripts/test.sh, which installs them; nothing is skipped.

use rendezvous_test_support as common;
#[path = "deploy_support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{wait_http_status, wait_nodes, Node, RedisServer, Resp};
use common::Client;
use futures_util::SinkExt;
use rendezvous_actors::protocol::ServerFrame;
use serde_json::{json, Value};
use support::dockerfile as df;
use support::promql;
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

/// Debian's package installs it here.
const PROMETHEUS: &str = "/usr/bin/prometheus";
/// The Redis password of the test clusters (the compose stack sets one too).
const REDIS_PASSWORD: &str = "deploy-test-pw";
/// The dashboards this issue delivers, by uid.
const DASHBOARD_UIDS: [&str; 5] = [
    "rendezvous-overview",
    "rendezvous-matching",
    "rendezvous-chat",
    "rendezvous-cluster",
    "rendezvous-loadtest",
];

/// The two cluster tests each start Redis, nodes and more; one at a time on this
/// 2-core machine.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- 1. dashboards

#[test]
fn dashboards_are_well_formed_and_provisioned() {
    let mut problems: Vec<String> = Vec::new();
    // Importable anywhere: every panel, target and query variable names the
    // dashboard's datasource variable, never a fixed uid.
    let ds = json!({"type": DATASOURCE_TYPE, "uid": format!("${{{DATASOURCE_VARIABLE}}}")});
    let files = dashboard_files();
    assert!(!files.is_empty(), "no dashboards/*.json");
    let mut uids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    let declared = declared_metric_names();
    let contract: BTreeSet<&str> = LOADTEST_METRICS.iter().map(|(n, _)| *n).collect();
    for (file, parsed) in &files {
        let d = match parsed {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("{file}: not JSON: {e}"));
                continue;
            }
        };
        let mut p = |what: String| problems.push(format!("{file}: {what}"));
        match d["uid"].as_str() {
            Some(u) if !u.is_empty() && u.len() <= 40 => {
                if !uids.insert(u.to_owned()) {
                    p(format!("uid {u} used twice"));
                }
            }
            other => p(format!("uid must be a string of 1-40 characters, is {other:?}")),
        }
        match d["title"].as_str() {
            Some(t) if !t.trim().is_empty() => {
                if !titles.insert(t.to_owned()) {
                    p(format!("title {t:?} used twice"));
                }
            }
            _ => p("no title".into()),
        }
        if !d["schemaVersion"].is_u64() {
            p("no schemaVersion".into());
        }
        let vars: BTreeSet<String> = variable_values(d).into_iter().map(|(k, _)| k).collect();
        let list = d["templating"]["list"].as_array().cloned().unwrap_or_default();
        let var = |name: &str| list.iter().find(|v| v["name"] == name);
        match var(DATASOURCE_VARIABLE) {
            Some(v) if v["type"] == "datasource" && v["query"] == DATASOURCE_TYPE => {}
            other => p(format!(
                "no variable {DATASOURCE_VARIABLE} of type datasource for {DATASOURCE_TYPE}: {other:?}"
            )),
        }
        // The scrape job is a variable (a default of the compose stack's job), so
        // the dashboards work whatever the importing Prometheus calls its jobs.
        match var("job") {
            Some(v) if v["type"] == "query" && v["current"]["value"].is_string() => {}
            other => p(format!("no query variable job with a default value: {other:?}")),
        }
        for v in &list {
            if v["type"] == "query" && v["datasource"] != ds {
                p(format!("variable {} does not use datasource {ds}", v["name"]));
            }
            let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or_default();
            for (name, matchers) in promql::selectors(q) {
                if !promql::job_by_variable(&matchers) && name == "up" {
                    p(format!(
                        "variable {}: {name}{{{matchers}}} names no job variable",
                        v["name"]
                    ));
                }
            }
        }
        let all = panels(d);
        if all.iter().all(|p| p["type"] == "row") {
            p("no panels".into());
        }
        let mut ids = BTreeSet::new();
        for panel in all {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            let mut pp = |what: String| problems.push(format!("{file}: panel {title:?}: {what}"));
            match panel["id"].as_u64() {
                Some(id) if ids.insert(id) => {}
                other => pp(format!("id {other:?} missing or used twice")),
            }
            let g = &panel["gridPos"];
            let (x, w) = (g["x"].as_u64(), g["w"].as_u64());
            if g["h"].as_u64().is_none() || g["y"].as_u64().is_none() || x.is_none() || w.is_none()
            {
                pp(format!("gridPos {g} incomplete"));
            } else if x.unwrap_or(0) + w.unwrap_or(0) > 24 {
                pp(format!("gridPos {g} wider than the 24-column grid"));
            }
            if panel["type"] == "row" {
                continue;
            }
            if !panel["type"].is_string() || panel["title"].as_str().is_none_or(|t| t.is_empty()) {
                pp("no type or title".into());
            }
            if panel["datasource"] != ds {
                pp(format!("datasource is {}, not {ds}", panel["datasource"]));
            }
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                pp("no targets".into());
            }
            let mut refs = BTreeSet::new();
            for t in &targets {
                let r = t["refId"].as_str().unwrap_or_default().to_owned();
                if r.is_empty() || !refs.insert(r.clone()) {
                    pp(format!("refId {r:?} empty or used twice"));
                }
                if t["datasource"] != ds {
                    pp(format!("target {r}: datasource is {}, not {ds}", t["datasource"]));
                }
                let expr = t["expr"].as_str().unwrap_or_default();
                if expr.trim().is_empty() {
                    pp(format!("target {r}: no expr"));
                    continue;
                }
                if let Err(e) = promql::balanced(expr) {
                    pp(format!("target {r}: {e} in {expr}"));
                }
                for (name, matchers) in promql::selectors(expr) {
                    if !promql::job_by_variable(&matchers) {
                        pp(format!(
                            "target {r}: {name}{{{matchers}}} does not select job=\"$job\" (or another job variable)"
                        ));
                    }
                }
                for v in promql::variables(expr) {
                    if !vars.contains(&v) {
                        pp(format!("target {r}: ${v} is neither a variable of the dashboard nor a Grafana built-in"));
                    }
                }
                let names = promql::series_names(expr);
                // `up` is Prometheus' own (scrape health); anything else must be ours.
                if names.is_empty() && !expr.contains("up{") {
                    pp(format!("target {r}: queries none of our metrics: {expr}"));
                }
                for n in names {
                    let base = promql::base_name(&n);
                    let known = if base.starts_with(LOADTEST_PREFIX) {
                        contract.contains(base)
                    } else {
                        declared.contains(base)
                    };
                    if !known {
                        pp(format!(
                            "target {r}: {n} is not declared (actors/src/metrics.rs, OPERATIONS.md's process metrics, or the load tester's contract)"
                        ));
                    }
                }
            }
        }
    }
    for uid in DASHBOARD_UIDS {
        if !uids.contains(uid) {
            problems.push(format!("no dashboard with uid {uid}"));
        }
    }
    problems.extend(provisioning_problems());
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

/// The metric names the engine declares (actors/src/metrics.rs) plus the process
/// metrics OPERATIONS.md lists.
fn declared_metric_names() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in read("actors/src/metrics.rs").lines() {
        if let Some(rest) = line.trim().strip_prefix("pub const ") {
            if let Some(name) = rest.split('"').nth(1) {
                out.insert(name.to_owned());
            }
        }
    }
    for piece in read("OPERATIONS.md").split('`') {
        if piece.starts_with("process_")
            && piece.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            out.insert(piece.to_owned());
        }
    }
    assert!(out.len() > 30, "could not read the declared metric names: {out:?}");
    out
}

/// The Grafana provisioning files agree with the dashboards and docker-compose.yml.
fn provisioning_problems() -> Vec<String> {
    let mut problems = Vec::new();
    let compose = compose();
    let grafana = &compose["services"]["grafana"];
    let mounts = bind_mounts(grafana);
    let target_of = |src: &str| {
        mounts.iter().find(|(s, _)| s.trim_end_matches('/') == src).map(|(_, t)| t.clone())
    };
    match target_of("./dashboards/provisioning") {
        Some(t) if t == "/etc/grafana/provisioning" => {}
        other => problems.push(format!(
            "grafana must mount ./dashboards/provisioning at /etc/grafana/provisioning, mounts it at {other:?}"
        )),
    }
    let dash_dir = target_of("./dashboards");
    if dash_dir.is_none() {
        problems.push("grafana does not mount ./dashboards".into());
    }

    let mut found_ds = false;
    for f in yaml_files("dashboards/provisioning/datasources") {
        let v = yaml(&f);
        for d in v["datasources"].as_sequence().into_iter().flatten() {
            if yaml_scalar(&d["uid"]) != DATASOURCE_UID {
                continue;
            }
            found_ds = true;
            if yaml_scalar(&d["type"]) != DATASOURCE_TYPE {
                problems
                    .push(format!("{f}: datasource {DATASOURCE_UID} is not of type prometheus"));
            }
            // http://SERVICE:PORT must name the compose service and Prometheus' port.
            let url = yaml_scalar(&d["url"]);
            let hostport = url.trim_start_matches("http://").trim_end_matches('/');
            let (host, port) = hostport.split_once(':').unwrap_or((hostport, "80"));
            if compose["services"][host].is_null() {
                problems.push(format!("{f}: datasource url {url}: no compose service {host}"));
            }
            if port != "9090" {
                problems.push(format!("{f}: datasource url {url}: Prometheus listens on 9090"));
            }
        }
    }
    if !found_ds {
        problems.push(format!("no provisioned datasource with uid {DATASOURCE_UID:?}"));
    }

    let mut found_provider = false;
    for f in yaml_files("dashboards/provisioning/dashboards") {
        let v = yaml(&f);
        for p in v["providers"].as_sequence().into_iter().flatten() {
            found_provider = true;
            if yaml_scalar(&p["type"]) != "file" {
                problems
                    .push(format!("{f}: provider {} is not of type file", yaml_scalar(&p["name"])));
            }
            let path = yaml_scalar(&p["options"]["path"]);
            if Some(path.trim_end_matches('/').to_owned())
                != dash_dir.clone().map(|d| d.trim_end_matches('/').to_owned())
            {
                problems.push(format!(
                    "{f}: provider path {path} is not where compose mounts ./dashboards ({dash_dir:?})"
                ));
            }
        }
    }
    if !found_provider {
        problems.push("no dashboard provider in dashboards/provisioning/dashboards/".into());
    }
    problems
}

/// `*.yml` / `*.yaml` files of a repository folder, as repository-relative paths.
fn yaml_files(rel: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo().join(rel))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".yml") || n.ends_with(".yaml"))
                .map(|n| format!("{rel}/{n}"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A service's bind mounts as (source, target); named volumes are left out.
fn bind_mounts(service: &serde_norway::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for v in service["volumes"].as_sequence().into_iter().flatten() {
        match v {
            serde_norway::Value::String(s) => {
                let mut parts = s.splitn(3, ':');
                let (src, dst) =
                    (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
                if src.starts_with('.') || src.starts_with('/') {
                    out.push((src.to_owned(), dst.to_owned()));
                }
            }
            m => {
                if yaml_scalar(&m["type"]) == "bind" {
                    out.push((yaml_scalar(&m["source"]), yaml_scalar(&m["target"])));
                }
            }
        }
    }
    out
}

/// Every series name of ours the dashboards query: (name, where it is used).
fn dashboard_series() -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (file, d) in dashboards() {
        for q in panel_queries(&file, &d).into_iter().chain(variable_queries(&file, &d)) {
            for n in promql::series_names(&q.expr) {
                out.entry(n).or_default().push(format!("{} {}", q.dashboard, q.place));
            }
        }
    }
    out
}

// ---------------------------------------------------------------- 2. compose + Dockerfile, statically

#[test]
fn compose_file_and_dockerfile_reference_only_existing_files() {
    let mut problems: Vec<String> = Vec::new();
    let compose = compose();
    let services = compose["services"].as_mapping().expect("docker-compose.yml has services");
    let names: BTreeSet<String> = services.keys().map(yaml_scalar).collect();
    for want in ["redis", "redis-exporter", "node-a", "node-b", "loadtest", "prometheus", "grafana"]
    {
        if !names.contains(want) {
            problems.push(format!("docker-compose.yml: no service {want}"));
        }
    }
    let volumes: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .map(|m| m.keys().map(yaml_scalar).collect())
        .unwrap_or_default();
    for (name, svc) in services {
        let name = yaml_scalar(name);
        let mut p = |what: String| problems.push(format!("docker-compose.yml: {name}: {what}"));
        // build: . | {context, dockerfile}
        let build = &svc["build"];
        if !build.is_null() {
            let (ctx, file) = match build {
                serde_norway::Value::String(s) => (s.clone(), "Dockerfile".to_owned()),
                m => (
                    yaml_scalar(&m["context"]),
                    Some(yaml_scalar(&m["dockerfile"]))
                        .filter(|s| !s.is_empty())
                        .unwrap_or("Dockerfile".into()),
                ),
            };
            let dir = repo().join(&ctx);
            if !dir.is_dir() {
                p(format!("build context {ctx} is not a directory"));
            } else if !dir.join(&file).is_file() {
                p(format!("no {file} in build context {ctx}"));
            }
        } else if svc["image"].is_null() {
            p("neither build nor image".into());
        }
        for (src, _) in bind_mounts(svc) {
            if !repo().join(&src).exists() {
                p(format!("bind-mounted {src} does not exist"));
            }
        }
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            if let serde_norway::Value::String(s) = v {
                let src = s.split(':').next().unwrap_or_default();
                if !(src.starts_with('.') || src.starts_with('/') || volumes.contains(src)) {
                    p(format!("named volume {src} is not declared under volumes:"));
                }
            }
        }
        for f in
            svc["env_file"].as_sequence().cloned().unwrap_or_default().iter().chain(
                svc["env_file"].as_str().map(|s| serde_norway::Value::String(s.into())).iter(),
            )
        {
            if !repo().join(yaml_scalar(f)).is_file() {
                p(format!("env_file {} does not exist", yaml_scalar(f)));
            }
        }
        let deps: Vec<String> = match &svc["depends_on"] {
            serde_norway::Value::Sequence(s) => s.iter().map(yaml_scalar).collect(),
            serde_norway::Value::Mapping(m) => m.keys().map(yaml_scalar).collect(),
            _ => Vec::new(),
        };
        for d in deps {
            if !names.contains(&d) {
                p(format!("depends on unknown service {d}"));
            }
        }
    }

    // The stack's contract: Redis with a password and persistence; two nodes of one
    // cluster through it; Prometheus with deploy/prometheus.yml.
    let redis_cmd = yaml_words(&compose["services"]["redis"]["command"]).join(" ");
    if !redis_cmd.contains("--requirepass") || !redis_cmd.contains("--appendonly yes") {
        problems
            .push(format!("redis: command {redis_cmd:?} lacks --requirepass or --appendonly yes"));
    }
    let mut ids = BTreeSet::new();
    for node in ["node-a", "node-b"] {
        let svc = &compose["services"][node];
        let env = service_env(svc);
        let url =
            compose_defaults(env.get("RENDEZVOUS_REDIS_URL").map(String::as_str).unwrap_or(""));
        if !url.starts_with("redis://:") || !url.contains("@redis:6379") {
            problems.push(format!(
                "{node}: RENDEZVOUS_REDIS_URL {url:?} is not redis://:PASSWORD@redis:6379/…"
            ));
        }
        if env.get("RENDEZVOUS_ANONYMOUS").map(String::as_str) != Some("allow") {
            problems
                .push(format!("{node}: the demo needs RENDEZVOUS_ANONYMOUS=allow (off loopback)"));
        }
        match env.get("RENDEZVOUS_NODE_ID") {
            Some(id) if ids.insert(id.clone()) => {}
            other => {
                problems.push(format!("{node}: RENDEZVOUS_NODE_ID {other:?} missing or not unique"))
            }
        }
        if svc["healthcheck"].is_null() {
            problems.push(format!("{node}: no healthcheck"));
        }
        if yaml_scalar(&svc["depends_on"]["redis"]["condition"]) != "service_healthy" {
            problems.push(format!("{node}: must wait for redis to be healthy"));
        }
    }
    let prom = &compose["services"]["prometheus"];
    let config_flag = yaml_words(&prom["command"])
        .into_iter()
        .find_map(|w| w.strip_prefix("--config.file=").map(str::to_owned))
        .unwrap_or_else(|| "/etc/prometheus/prometheus.yml".into());
    if !bind_mounts(prom).iter().any(|(s, t)| s == "./deploy/prometheus.yml" && *t == config_flag) {
        problems
            .push(format!("prometheus: ./deploy/prometheus.yml is not mounted at {config_flag}"));
    }
    // The alerting rules: mounted where deploy/prometheus.yml's rule_files look.
    let rule_files: Vec<String> = yaml("deploy/prometheus.yml")["rule_files"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(yaml_scalar)
        .collect();
    match bind_mounts(prom).iter().find(|(s, _)| s == "./deploy/alerts.yml") {
        Some((_, t)) if rule_files.contains(t) => {}
        other => problems.push(format!(
            "prometheus: ./deploy/alerts.yml must be mounted at one of deploy/prometheus.yml's rule_files {rule_files:?}, is {other:?}"
        )),
    }
    // The Redis exporter reads the stack's Redis with its password.
    let exporter = service_env(&compose["services"]["redis-exporter"]);
    if exporter.get("REDIS_ADDR").map(String::as_str) != Some("redis://redis:6379") {
        problems.push(format!("redis-exporter: REDIS_ADDR is {:?}", exporter.get("REDIS_ADDR")));
    }
    let redis_pw = yaml_words(&compose["services"]["redis"]["command"])
        .windows(2)
        .find(|w| w[0] == "--requirepass")
        .map(|w| w[1].clone());
    if exporter.get("REDIS_PASSWORD") != redis_pw.as_ref() {
        problems.push(format!(
            "redis-exporter: REDIS_PASSWORD {:?} is not Redis' --requirepass {redis_pw:?}",
            exporter.get("REDIS_PASSWORD")
        ));
    }

    // deploy/prometheus.yml scrapes compose services at the ports they listen on.
    let instrs = dockerfile();
    let image_env: BTreeMap<String, String> = instrs
        .iter()
        .filter(|i| i.keyword == "ENV")
        .flat_map(|i| df::env(i).unwrap_or_else(|e| panic!("Dockerfile: {e}")))
        .collect();
    let listen_port = |service: &str| -> Option<String> {
        let svc = &compose["services"][service];
        let words = yaml_words(&svc["command"]);
        if let Some(i) = words.iter().position(|w| w == "--metrics-bind") {
            return words.get(i + 1).and_then(|a| a.rsplit(':').next()).map(str::to_owned);
        }
        // Exporters: `--web.listen-address=[HOST]:PORT`.
        if let Some(a) = words.iter().find_map(|w| w.strip_prefix("--web.listen-address=")) {
            return a.rsplit(':').next().map(str::to_owned);
        }
        let env = service_env(svc);
        let bind = env.get("RENDEZVOUS_BIND").or(image_env.get("RENDEZVOUS_BIND"))?;
        bind.rsplit(':').next().map(str::to_owned)
    };
    let prom_cfg = yaml("deploy/prometheus.yml");
    let mut jobs = BTreeSet::new();
    for sc in prom_cfg["scrape_configs"].as_sequence().into_iter().flatten() {
        jobs.insert(yaml_scalar(&sc["job_name"]));
        for st in sc["static_configs"].as_sequence().into_iter().flatten() {
            for t in st["targets"].as_sequence().into_iter().flatten() {
                let t = yaml_scalar(t);
                let (host, port) = t.split_once(':').unwrap_or((&t, ""));
                match listen_port(host) {
                    None => problems.push(format!(
                        "deploy/prometheus.yml: target {t}: no compose service {host} listening"
                    )),
                    Some(p) if p != port => problems
                        .push(format!("deploy/prometheus.yml: target {t}: {host} listens on {p}")),
                    Some(_) => {}
                }
            }
        }
    }
    for job in ["rendezvous", "rendezvous-loadtest", "redis"] {
        if !jobs.contains(job) {
            problems.push(format!(
                "deploy/prometheus.yml: no job {job} (the dashboards select by job)"
            ));
        }
    }

    problems.extend(dockerfile_problems(&instrs));
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

/// Static checks of the Dockerfile.
fn dockerfile_problems(instrs: &[df::Instruction]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut p = |what: String| problems.push(format!("Dockerfile: {what}"));
    let stages = df::stages(instrs);
    if stages.len() < 2 {
        p(format!("{} stage(s); a build stage and a small runtime stage expected", stages.len()));
        return problems;
    }
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap_or_default();
    let stage_names: BTreeSet<String> = stages
        .iter()
        .filter_map(|s| {
            s[0].args
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .find(|w| w[0].eq_ignore_ascii_case("as"))
                .map(|w| w[1].to_owned())
        })
        .collect();
    // Every COPY from the context names files that exist and that .dockerignore lets in.
    let mut copied: Vec<String> = Vec::new();
    let mut first_build_at = None;
    for (n, i) in instrs.iter().enumerate() {
        if i.keyword == "RUN" && i.args.contains("cargo build") && first_build_at.is_none() {
            first_build_at = Some(n);
        }
        if i.keyword != "COPY" && i.keyword != "ADD" {
            continue;
        }
        let c = match df::copy(i) {
            Ok(c) => c,
            Err(e) => {
                p(e);
                continue;
            }
        };
        if let Some(from) = c.flag("from") {
            if !stage_names.contains(from) {
                p(format!("line {}: --from={from} names no stage", i.line));
            }
            continue;
        }
        for src in &c.sources {
            if !repo().join(src).exists() {
                p(format!("line {}: COPY source {src} does not exist", i.line));
            } else if df::ignored(&ignore, src) {
                p(format!("line {}: COPY source {src} is excluded by .dockerignore", i.line));
            }
            if first_build_at.is_none() {
                copied.push(src.trim_start_matches("./").to_owned());
            }
        }
    }
    // The dependency layer needs every workspace member's manifest.
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml parses");
    let members = manifest["workspace"]["members"].as_array().cloned().unwrap_or_default();
    for m in members.iter().filter_map(|m| m.as_str()) {
        let want = format!("{m}/Cargo.toml");
        if !copied.contains(&want) {
            p(format!(
                "{want} is not copied before the first `cargo build` (the dependency layer)"
            ));
        }
    }
    for f in ["Cargo.toml", "Cargo.lock"] {
        if !copied.iter().any(|c| c == f) {
            p(format!("{f} is not copied before the first `cargo build`"));
        }
    }
    let build = dockerfile_cargo_build();
    for need in ["--release", "--locked", "-p rendezvous ", "-p rendezvous-loadtest"] {
        if !format!("{build} ").contains(need) {
            p(format!("`{build}` lacks {need}"));
        }
    }
    if !instrs.iter().any(|i| i.keyword == "RUN" && i.args.contains("strip ")) {
        p("the binaries are not stripped".into());
    }

    let last = stages.last().expect("two stages");
    let runtime = &last[0].args;
    if !runtime.starts_with("debian:bookworm-slim") {
        p(format!("runtime stage is {runtime}, not debian:bookworm-slim"));
    }
    let find = |kw: &str| last.iter().rfind(|i| i.keyword == kw);
    match find("USER").map(|i| i.args.split(':').next().unwrap_or_default().trim().to_owned()) {
        None => p("the runtime stage sets no USER (it would run as root)".into()),
        Some(u) if u == "root" || u == "0" => p(format!("USER {u} is root")),
        Some(_) => {}
    }
    match find("HEALTHCHECK").map(df::healthcheck) {
        Some(Ok(h)) if h.argv.join(" ").contains("/healthz") => {}
        other => p(format!("no HEALTHCHECK on /healthz: {other:?}")),
    }
    let entry = find("ENTRYPOINT").map(df::exec_form);
    let bins: Vec<String> = last
        .iter()
        .filter(|i| i.keyword == "COPY")
        .filter_map(|i| df::copy(i).ok())
        .filter(|c| c.flag("from").is_some() && c.dest.starts_with("/usr/local/bin"))
        .flat_map(|c| {
            c.sources.into_iter().map(|s| s.rsplit('/').next().unwrap_or_default().to_owned())
        })
        .collect();
    match entry {
        Some(Ok(e)) if e.first().map(String::as_str) == Some("rendezvous") => {}
        other => p(format!("ENTRYPOINT is {other:?}, not [\"rendezvous\"]")),
    }
    for b in ["rendezvous", "rendezvous-loadtest"] {
        if !bins.iter().any(|x| x == b) {
            p(format!("the runtime stage does not copy {b} into /usr/local/bin (copies {bins:?})"));
        }
    }
    let env: BTreeMap<String, String> = last
        .iter()
        .filter(|i| i.keyword == "ENV")
        .flat_map(|i| df::env(i).unwrap_or_default())
        .collect();
    match env.get("RENDEZVOUS_BIND") {
        Some(b) if b == "0.0.0.0:8080" => {}
        other => p(format!("ENV RENDEZVOUS_BIND is {other:?}, not 0.0.0.0:8080")),
    }
    if !last.iter().any(|i| {
        i.keyword == "EXPOSE"
            && i.args.split_whitespace().any(|a| a.trim_end_matches("/tcp") == "8080")
    }) {
        p("no EXPOSE 8080".into());
    }
    problems
}

// ---------------------------------------------------------------- 3. the Dockerfile, by hand

#[test]
fn dockerfile_build_and_run_steps_work_by_hand() {
    require("curl", "curl");
    // The build step: the exact `cargo build …` line of the Dockerfile.
    image_build().unwrap_or_else(|e| panic!("the Dockerfile's build step: {e}"));

    let instrs = dockerfile();
    let stages = df::stages(&instrs);
    let last = stages.last().expect("a runtime stage");
    let env: Vec<(String, String)> = last
        .iter()
        .filter(|i| i.keyword == "ENV")
        .flat_map(|i| df::env(i).unwrap_or_else(|e| panic!("Dockerfile: {e}")))
        .collect();
    let hc = last
        .iter()
        .rfind(|i| i.keyword == "HEALTHCHECK")
        .map(|i| df::healthcheck(i).unwrap_or_else(|e| panic!("Dockerfile: {e}")))
        .expect("a HEALTHCHECK");
    let entry = last
        .iter()
        .rfind(|i| i.keyword == "ENTRYPOINT")
        .map(|i| df::exec_form(i).unwrap_or_else(|e| panic!("Dockerfile: {e}")))
        .expect("an ENTRYPOINT");
    assert_eq!(entry.first().map(String::as_str), Some("rendezvous"), "ENTRYPOINT {entry:?}");
    let bind = env
        .iter()
        .find(|(k, _)| k == "RENDEZVOUS_BIND")
        .map(|(_, v)| v.clone())
        .expect("ENV RENDEZVOUS_BIND");
    let image_port = bind.rsplit(':').next().expect("a port").to_owned();
    let user = last.iter().rfind(|i| i.keyword == "USER").map(|i| i.args.clone()).expect("a USER");

    let tmp = TempDir::new("image");
    let mut started = None;
    let mut expect_uid = None;
    for attempt in 0..3 {
        let port = free_port();
        let (mut cmd, uid) = as_image_user(&user);
        expect_uid = uid;
        cmd.arg(engine_bin()).args(&entry[1..]).current_dir(tmp.path());
        // Only the image's configuration: nothing RENDEZVOUS_* (or RUST_LOG) from ours.
        for (k, _) in std::env::vars() {
            if k.starts_with("RENDEZVOUS_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &env {
            // The image binds 0.0.0.0:8080; a test binds loopback only, on a free
            // port: the one change to the Dockerfile's ENV.
            let v = if k == "RENDEZVOUS_BIND" { format!("127.0.0.1:{port}") } else { v.clone() };
            cmd.env(k, v);
        }
        let mut proc =
            Proc::spawn(&format!("rendezvous (image ENV, try {attempt})"), &mut cmd, tmp.path());
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        if proc.wait_ok(addr, "/healthz", Duration::from_secs(20), Duration::from_millis(50)) {
            started = Some((proc, port));
            break;
        }
        eprintln!("rendezvous did not serve on {addr} (port taken?):\n{}", proc.tail(20));
    }
    let (mut server, port) = started.expect("rendezvous started with the Dockerfile's ENV");
    if let Some(uid) = &expect_uid {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
            .expect("the server's /proc status");
        let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default().to_owned();
        assert_eq!(uids.split_whitespace().nth(1), Some(uid.as_str()), "not USER {user}: {uids}");
    }
    assert!(
        server.output().contains(&format!("listening on http://127.0.0.1:{port}")),
        "the ready line names another address:\n{}",
        server.tail(20)
    );

    // The HEALTHCHECK command, as Docker runs it (shell form: /bin/sh -c), aimed at
    // this port instead of the image's.
    let argv: Vec<String> = hc
        .argv
        .iter()
        .map(|a| {
            a.replace(&format!("127.0.0.1:{image_port}"), &format!("127.0.0.1:{port}"))
                .replace(&format!("localhost:{image_port}"), &format!("127.0.0.1:{port}"))
        })
        .collect();
    assert_ne!(
        argv, hc.argv,
        "the HEALTHCHECK command does not name 127.0.0.1:{image_port}: {:?}",
        hc.argv
    );
    let run_hc = || {
        run_bounded(Command::new(&argv[0]).args(&argv[1..]), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("HEALTHCHECK {argv:?}: {e}"))
    };
    let ok = run_hc();
    assert!(
        ok.status.success(),
        "HEALTHCHECK {argv:?} failed against a serving node: {}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    // …and it notices a dead one.
    server.kill();
    let dead = run_hc();
    assert!(!dead.status.success(), "HEALTHCHECK {argv:?} passed with the node gone");

    // The image's second binary runs too.
    let help = run_bounded(Command::new(loadtest_bin()).arg("--help"), Duration::from_secs(10))
        .expect("run rendezvous-loadtest");
    assert!(
        help.status.success(),
        "rendezvous-loadtest --help: {}",
        String::from_utf8_lossy(&help.stderr)
    );
}

/// A command that runs its first argument as the Dockerfile's `USER uid:gid` when
/// this test runs as root (through util-linux's `setpriv`), with the uid to expect;
/// as the current user otherwise.
fn as_image_user(user: &str) -> (Command, Option<String>) {
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let root = run_bounded(Command::new("id").arg("-u"), Duration::from_secs(5))
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root && numeric(uid) && numeric(gid) && have("setpriv") {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", uid, "--regid", gid, "--clear-groups", "--"]);
        (c, Some(uid.to_owned()))
    } else {
        eprintln!("running the image's binary as the current user, not USER {user}");
        // `env` with nothing to set runs its command unchanged.
        (Command::new("env"), None)
    }
}

// ---------------------------------------------------------------- 4. engine metrics + Prometheus

/// Node-a of the engine test: a small outbound queue (a client that stops reading
/// is cut off quickly) and a low search limit (rate limits are hit quickly).
const NODE_A_ARGS: &[(&str, &str)] =
    &[("--outbound-queue", "16"), ("--find-match-per-minute", "5")];

#[tokio::test]
async fn engine_exports_every_dashboard_metric_and_prometheus_answers_every_query() {
    require("redis-server", "redis-server");
    require(PROMETHEUS, "prometheus");
    image_build().unwrap_or_else(|e| panic!("the Dockerfile's build step: {e}"));
    let _heavy = HEAVY.lock().await;
    let tmp = TempDir::new("engine");
    let mut failures: Vec<String> = Vec::new();

    let wanted = engine_series();

    let redis = RedisServer::start_with(&["--requirepass", REDIS_PASSWORD]);
    let url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0", redis.port());
    let a = Node::spawn(Some(&url), "node-a", NODE_A_ARGS);
    let b = Node::spawn(Some(&url), "node-b", &[]);
    let mut c = Node::spawn(Some(&url), "node-c", &[]);
    for n in [&a, &b, &c] {
        wait_nodes(n, 3, Duration::from_secs(15)).await;
    }
    let mut seen = Scrape::default();

    // A cross-node match and chat, both ways.
    let mut alice = a.client("alice").await;
    let mut bob = b.client("bob").await;
    alice.find_match(&["chess", "go"]).await;
    alice.recv_kind("searching").await;
    bob.find_match(&["chess", "go"]).await;
    bob.recv_kind("searching").await;
    let room = common::room_of(&alice.recv_kind("match_found").await);
    bob.recv_kind("match_found").await;
    for i in 0..3 {
        chat(&mut alice, &mut bob, &room, &format!("hello {i}")).await;
        chat(&mut bob, &mut alice, &room, &format!("hello {i}")).await;
    }

    // A seq gap: a message stored in the room's stream but never published (as if
    // the subscription had missed it); the next message makes both replicas notice
    // the gap and read it from the stream.
    let gap_seq = inject_unpublished_message(&redis, &room);
    alice.send_json(json!({"action": "send", "room_id": room, "text": "after the gap"})).await;
    for member in [&mut alice, &mut bob] {
        let mut got = Vec::new();
        while got.last().copied() != Some(gap_seq + 1) {
            got.push(frame_json(&member.recv_kind("message").await)["seq"].as_u64().unwrap_or(0));
        }
        assert!(
            got.contains(&gap_seq),
            "{}: the gap's message never arrived: {got:?}",
            member.user_id
        );
    }
    if let Err(e) = wait_series(a.addr, "rendezvous_bridge_seq_gaps_total", Duration::from_secs(5))
    {
        failures.push(e);
    }

    // Searches that end without a match: cancelled, disconnected, and one left to
    // time out (10 s) while the rest runs.
    let mut carol = b.client("carol").await;
    carol.find_match(&["knitting"]).await;
    carol.recv_kind("searching").await;
    carol.send_json(json!({"action": "cancel_match"})).await;
    carol.recv_kind("match_cancelled").await;
    let mut dave = a.client("dave").await;
    dave.find_match(&["origami"]).await;
    dave.recv_kind("searching").await;
    dave.close().await;
    let mut frank = b.client("frank").await;
    frank.find_match(&["zither"]).await;
    frank.recv_kind("searching").await;

    // A rate limit (node-a allows 5 searches a minute), a bad frame, a refused upgrade.
    let mut erin = a.client("erin").await;
    let mut limited = false;
    for _ in 0..12 {
        erin.find_match(&["erin-only"]).await;
        let f = frame_json(&erin.recv().await);
        if f["type"] == "error" && f["code"] == "rate_limited" {
            limited = true;
            break;
        }
        assert_eq!(f["type"], "searching", "{f}");
        erin.send_json(json!({"action": "cancel_match"})).await;
        erin.recv_kind("match_cancelled").await;
    }
    assert!(limited, "12 searches in a row were never rate limited on node-a");
    erin.send_raw("{this is not json").await;
    let f = frame_json(&erin.recv_kind("error").await);
    assert_eq!(f["code"], "bad_request", "{f}");
    let (status, _) = common::http_get(a.addr, "/ws").await;
    assert_eq!(status, 400, "a plain GET /ws must be refused");

    // A client that stops reading: typing frames to it are dropped once its queue
    // (16 frames on node-a) is full, then a message cuts it off (4008).
    slow_consumer(&a).await.unwrap_or_else(|e| failures.push(e));

    // Concurrent searches spread over two nodes: both nodes try to claim groups
    // with the same members, and some claims lose.
    claim_conflicts(&a, &b).await.unwrap_or_else(|e| failures.push(e));

    for n in [&a, &b, &c] {
        match scrape(n.addr) {
            Ok(s) => seen.absorb(&s),
            Err(e) => failures.push(e),
        }
    }

    // A node vanishes (SIGKILL): the others declare it lost.
    c.kill9();
    for n in [&a, &b] {
        wait_nodes(n, 2, Duration::from_secs(10)).await;
    }
    if let Err(e) =
        wait_series(a.addr, "rendezvous_bridge_nodes_lost_total", Duration::from_secs(10))
    {
        failures.push(e);
    }

    // Redis drops every connection: the nodes reconnect and resync.
    for kind in ["normal", "pubsub"] {
        let r = redis.cmd(&["CLIENT", "KILL", "TYPE", kind]);
        assert!(matches!(r, Resp::Int(_)), "CLIENT KILL TYPE {kind}: {r:?}");
    }
    for n in [&a, &b] {
        if let Err(e) =
            wait_series(n.addr, "rendezvous_bridge_reconnects_total", Duration::from_secs(15))
        {
            failures.push(e);
        }
        wait_http_status(n, "/readyz", 200, Duration::from_secs(20)).await;
    }
    // The chat still works across the nodes after the reconnect.
    alice
        .send_json(json!({"action": "send", "room_id": room, "text": "after the reconnect"}))
        .await;
    alice.recv_kind("ack").await;
    bob.recv_kind("message").await;

    for n in [&a, &b] {
        match scrape(n.addr) {
            Ok(s) => seen.absorb(&s),
            Err(e) => failures.push(e),
        }
    }
    for (series, used) in &wanted {
        if !seen.has(series) {
            failures.push(format!(
                "{series} is not in any node's /metrics after the workload; used by {}",
                used.join("; ")
            ));
        }
    }
    eprintln!(
        "engine: {} dashboard series, all seen: {}",
        wanted.len(),
        wanted.keys().all(|s| seen.has(s))
    );

    // Prometheus, with the compose stack's configuration, and Debian's Redis
    // exporter in place of the stack's.
    let exporter = redis_exporter(&tmp, &redis);
    prometheus_answers_every_query(
        &tmp,
        &[("node-a", a.addr), ("node-b", b.addr)],
        exporter.1,
        &wanted,
        &mut failures,
    );

    drop((alice, bob, carol, erin, frank));
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// `from` sends `text` to `room`: its ack and its own copy (in either order: they
/// may travel different paths between nodes), then `to`'s copy.
async fn chat(from: &mut Client, to: &mut Client, room: &str, text: &str) {
    from.send_json(json!({"action": "send", "room_id": room, "text": text})).await;
    let (mut ack, mut own) = (false, false);
    while !(ack && own) {
        match from.recv().await.kind() {
            "ack" => ack = true,
            "message" => own = true,
            _ => {}
        }
    }
    to.recv_kind("message").await;
}

fn frame_json(f: &ServerFrame) -> Value {
    serde_json::from_str(&f.to_json()).expect("a server frame is JSON")
}

/// Store message `seq + 1` in the room's stream and bump its seq, as append.lua
/// does, but publish nothing. Returns that seq.
fn inject_unpublished_message(redis: &RedisServer, room: &str) -> u64 {
    let log = format!("rdv:room:{{{room}}}:log");
    let seq_key = format!("rdv:room:{{{room}}}:seq");
    let last = redis.cmd(&["XREVRANGE", &log, "+", "-", "COUNT", "1"]);
    // [[id "SEQ-1", ["j", JSON]]]
    let entry = match &last {
        Resp::Array(Some(entries)) => match entries.first() {
            Some(Resp::Array(Some(entry))) => entry.clone(),
            _ => panic!("room {room} has no stored message: {last:?}"),
        },
        other => panic!("XREVRANGE {log}: {other:?}"),
    };
    let (id, stored) = match (entry.first(), entry.get(1)) {
        (Some(Resp::Bulk(Some(id))), Some(Resp::Array(Some(fields)))) => match fields.get(1) {
            Some(Resp::Bulk(Some(j))) => (id.clone(), j.clone()),
            _ => panic!("unexpected stream entry {last:?}"),
        },
        _ => panic!("unexpected stream entry {last:?}"),
    };
    let prev: u64 = id
        .strip_suffix("-1")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("stream entry id {id} is not SEQ-1"));
    let mut msg: Value =
        serde_json::from_str(&stored).unwrap_or_else(|e| panic!("stored message {stored}: {e}"));
    let seq = match redis.cmd(&["INCR", &seq_key]) {
        Resp::Int(n) => n as u64,
        other => panic!("INCR {seq_key}: {other:?}"),
    };
    assert_eq!(seq, prev + 1, "the room's seq and its stream disagree");
    msg["msg_id"] = json!("m-deploy-gap");
    msg["text"] = json!("read from the stream");
    let id = format!("{seq}-1");
    let r = redis.cmd(&["XADD", &log, &id, "j", &msg.to_string()]);
    assert_eq!(r, Resp::Bulk(Some(id.clone())), "XADD {log} {id}");
    seq
}

/// A client on `node` with a 4 KiB receive buffer, so its frames back up quickly.
async fn connect_small_rcvbuf(node: &Node, user: &str) -> Client {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = sock.connect(node.addr).await.expect("tcp connect");
    let req = node.ws_url(user).into_client_request().expect("request");
    let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
        .await
        .expect("websocket handshake");
    let mut c = Client { ws, user_id: user.to_owned(), welcome: ServerFrame::NoMatchFound {} };
    c.welcome = c.recv().await;
    assert_eq!(c.welcome.kind(), "welcome");
    c
}

async fn slow_consumer(node: &Node) -> Result<(), String> {
    // Long names make each typing frame ~200 bytes, so fewer fill the buffers.
    let room = format!("pub:{}", "s".repeat(60));
    let talker_name = "t".repeat(64);
    let mut talker = node.client(&talker_name).await;
    let mut slow = connect_small_rcvbuf(node, "slowpoke").await;
    for c in [&mut talker, &mut slow] {
        c.send_json(json!({"action": "join", "room_id": room})).await;
        c.recv_kind("joined").await;
    }
    let started = Instant::now();
    let mut sent = 0;
    loop {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "no typing frame dropped after {sent} sent to a client that does not read"
            ));
        }
        for i in 0..2_000 {
            let f = json!({"action": "typing", "room_id": room, "active": i % 2 == 0}).to_string();
            talker.ws.feed(Message::Text(f.into())).await.expect("feed a typing frame");
        }
        sent += 2_000;
        // Barrier: the room answers `history` after it relayed every typing frame.
        talker.send_json(json!({"action": "history", "room_id": room})).await;
        talker.recv_kind("history").await;
        if scrape(node.addr)?.value("rendezvous_frames_dropped_total") > 0.0 {
            break;
        }
    }
    // Essential frames (messages of ~4 KB) while its queue is full: it is cut off.
    let text = "x".repeat(4_000);
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(20) {
        talker.send_json(json!({"action": "send", "room_id": room, "text": text})).await;
        talker.recv_kind("ack").await;
        sent += 1;
        if sent % 10 == 0
            && scrape(node.addr)?.value("rendezvous_slow_consumer_disconnects_total") > 0.0
        {
            drop(slow);
            return Ok(());
        }
    }
    Err(format!(
        "a client that does not read was never cut off as a slow consumer ({sent} messages)"
    ))
}

/// The next frame of `kind` within `within`, or None.
async fn wait_kind(c: &mut Client, kind: &str, within: Duration) -> Option<ServerFrame> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let f = c.try_recv(left).await?;
        if f.kind() == kind {
            return Some(f);
        }
    }
}

async fn claim_conflicts(a: &Node, b: &Node) -> Result<(), String> {
    const ROUNDS: usize = 10;
    const USERS: usize = 16;
    for round in 0..ROUNDS {
        let mut clients = Vec::new();
        for i in 0..USERS {
            let node = if i % 2 == 0 { a } else { b };
            clients.push(node.client(&format!("storm{round}-{i}")).await);
        }
        let tag = format!("storm{round}");
        for c in clients.iter_mut() {
            c.find_match(&["storm", &tag]).await;
        }
        let mut unmatched = 0;
        for c in clients.iter_mut() {
            if wait_kind(c, "match_found", Duration::from_secs(8)).await.is_none() {
                unmatched += 1;
            }
        }
        for c in clients {
            c.close().await;
        }
        let conflicts = scrape(a.addr)?.value("rendezvous_claim_conflicts_total")
            + scrape(b.addr)?.value("rendezvous_claim_conflicts_total");
        eprintln!("claim storm round {round}: {conflicts} conflicts so far, {unmatched} of {USERS} unmatched");
        if conflicts > 0.0 {
            return Ok(());
        }
    }
    Err(format!(
        "no claim conflict in {ROUNDS} rounds of {USERS} concurrent searches over two nodes"
    ))
}

/// Start Debian's Prometheus with deploy/prometheus.yml (only the targets
/// rewritten: each compose service to its loopback address here; the load tester
/// to a port where nothing listens), wait until it scrapes both nodes, check it
/// ingested every dashboard series, and run every dashboard query.
fn prometheus_answers_every_query(
    tmp: &TempDir,
    nodes: &[(&str, SocketAddr)],
    redis_exporter: SocketAddr,
    wanted: &BTreeMap<String, Vec<String>>,
    failures: &mut Vec<String>,
) {
    let nowhere = free_port();
    let mut rewrite: BTreeMap<String, String> =
        nodes.iter().map(|(n, addr)| (format!("{n}:8080"), addr.to_string())).collect();
    rewrite.insert("loadtest:9100".into(), format!("127.0.0.1:{nowhere}"));
    rewrite.insert("redis-exporter:9121".into(), redis_exporter.to_string());
    let mut cfg = yaml("deploy/prometheus.yml");
    // The rules file from the repository instead of the container's mount point.
    let rules = repo().join("deploy/alerts.yml").display().to_string();
    cfg["rule_files"] = serde_norway::Value::Sequence(vec![serde_norway::Value::String(rules)]);
    for sc in cfg["scrape_configs"].as_sequence_mut().expect("scrape_configs").iter_mut() {
        for st in sc["static_configs"].as_sequence_mut().into_iter().flatten() {
            for t in st["targets"].as_sequence_mut().into_iter().flatten() {
                let name = yaml_scalar(t);
                let to = rewrite
                    .get(&name)
                    .unwrap_or_else(|| panic!("deploy/prometheus.yml: unexpected target {name}"));
                *t = serde_norway::Value::String(to.clone());
            }
        }
    }
    let cfg_path = tmp.path().join("prometheus.yml");
    std::fs::write(&cfg_path, serde_norway::to_string(&cfg).expect("YAML"))
        .expect("write prometheus.yml");
    let data = tmp.path().join("prometheus-data");

    let mut started = None;
    for attempt in 0..3 {
        let port = free_port();
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let mut proc = Proc::spawn(&format!("prometheus-{attempt}"), &mut cmd, tmp.path());
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        if proc.wait_ok(addr, "/-/ready", Duration::from_secs(30), Duration::from_millis(100)) {
            started = Some((proc, addr));
            break;
        }
        eprintln!("prometheus not ready on {addr}:\n{}", proc.tail(20));
    }
    let (prom, addr) = started.expect("Prometheus started");
    let api = |path: &str| -> Result<Value, String> {
        match http_get(addr, path, Duration::from_secs(10)) {
            Ok((_, body)) => {
                serde_json::from_str(&body).map_err(|e| format!("{path}: not JSON ({e}): {body}"))
            }
            Err(e) => Err(format!("{path}: {e}")),
        }
    };
    let query = |expr: &str| api(&format!("/api/v1/query?query={}", urlencode(expr)));

    // Both nodes scraped, under the instance names of the config.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = api("/api/v1/targets").unwrap_or(Value::Null);
        let up: BTreeSet<String> = t["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["labels"]["job"] == "rendezvous" && t["health"] == "up")
            .filter_map(|t| t["labels"]["instance"].as_str().map(str::to_owned))
            .collect();
        if nodes.iter().all(|(n, _)| up.contains(*n)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape both nodes within 60 s: {t}\n{}",
            prom.tail(20)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Two scrapes of each node, so rate() has something to say.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = query(r#"count_over_time(up{job="rendezvous"}[1m]) >= 2"#).unwrap_or(Value::Null);
        if r["data"]["result"].as_array().is_some_and(|a| a.len() == nodes.len()) {
            break;
        }
        assert!(Instant::now() < deadline, "fewer than two scrapes of each node within 30 s: {r}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Prometheus ingested every series the dashboards use.
    let ingested: BTreeSet<String> = query(r#"count by (__name__) ({job="rendezvous"})"#)
        .map(|r| {
            r["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["metric"]["__name__"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for series in wanted.keys() {
        if !ingested.contains(series) {
            failures
                .push(format!("Prometheus has no {series} from the nodes (job=\"rendezvous\")"));
        }
    }
    // …and every series of Redis' exporter that an alert uses.
    let from_redis: BTreeSet<String> = query(r#"count by (__name__) ({job="redis"})"#)
        .map(|r| {
            r["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["metric"]["__name__"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for series in alert_series(&["redis_"]).keys() {
        if !from_redis.contains(series) {
            failures.push(format!(
                "Prometheus has no {series} from the Redis exporter (job=\"redis\"), which deploy/alerts.yml uses"
            ));
        }
    }
    // Every alerting rule loaded and evaluates without error.
    let want_rules = alert_rules().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = api("/api/v1/rules").unwrap_or(Value::Null);
        let rules: Vec<&Value> = r["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let evaluated = rules
            .iter()
            .filter(|r| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")))
            .count();
        let bad: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] == "err")
            .map(|r| format!("{}: {}", r["name"], r["lastError"]))
            .collect();
        if !bad.is_empty() {
            failures.push(format!("alerting rules failed to evaluate: {bad:?}"));
            break;
        }
        if rules.len() == want_rules && evaluated == want_rules {
            let firing: Vec<String> = rules
                .iter()
                .filter(|r| r["state"] != "inactive")
                .map(|r| format!("{} ({})", r["name"], r["state"]))
                .collect();
            eprintln!(
                "Prometheus: {want_rules} alerting rules evaluated; not inactive: {firing:?}"
            );
            break;
        }
        if Instant::now() > deadline {
            failures.push(format!(
                "Prometheus evaluated {evaluated} of {want_rules} rules of deploy/alerts.yml within 30 s: {r}"
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // Every dashboard query (and every variable's selector) gets a valid answer.
    let mut total = 0;
    let mut with_data = 0;
    let mut empty = Vec::new();
    for (file, d) in dashboards() {
        let values = variable_values(&d);
        for q in panel_queries(&file, &d).into_iter().chain(variable_queries(&file, &d)) {
            total += 1;
            let expr = match promql::substitute(&q.expr, &values) {
                Ok(e) => e,
                Err(e) => {
                    failures.push(format!("{} {}: {e}", q.dashboard, q.place));
                    continue;
                }
            };
            match query(&expr) {
                Ok(r) if r["status"] == "success" => {
                    if r["data"]["result"].as_array().is_some_and(|a| !a.is_empty()) {
                        with_data += 1;
                    } else {
                        empty.push(format!("{} {}", q.dashboard, q.place));
                    }
                }
                Ok(r) => failures.push(format!(
                    "{} {}: Prometheus answered {r} to {expr}",
                    q.dashboard, q.place
                )),
                Err(e) => failures.push(format!("{} {}: {e}", q.dashboard, q.place)),
            }
        }
    }
    eprintln!("Prometheus: {total} dashboard queries, {with_data} with data; empty: {empty:#?}");
    let nodes_up = query(r#"sum(up{job="rendezvous"})"#).expect("query up");
    assert_eq!(nodes_up["data"]["result"][0]["value"][1], "2", "{nodes_up}");
}

// ---------------------------------------------------------------- 5. the load tester's metrics

#[tokio::test]
async fn loadtest_exports_every_metric_of_its_dashboard() {
    require("redis-server", "redis-server");
    image_build().unwrap_or_else(|e| panic!("the Dockerfile's build step: {e}"));
    let _heavy = HEAVY.lock().await;
    let tmp = TempDir::new("loadtest");

    let wanted: BTreeMap<String, Vec<String>> =
        dashboard_series().into_iter().filter(|(n, _)| n.starts_with(LOADTEST_PREFIX)).collect();
    assert!(!wanted.is_empty(), "no dashboard uses the load tester's metrics");

    let redis = RedisServer::start_with(&["--requirepass", REDIS_PASSWORD]);
    let url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0", redis.port());
    let a = Node::spawn(Some(&url), "node-a", &[]);
    let b = Node::spawn(Some(&url), "node-b", &[]);
    for n in [&a, &b] {
        wait_nodes(n, 2, Duration::from_secs(15)).await;
    }

    // The compose stack's loadtest service, with only its addresses and its bind
    // mounts (the scenario files) rewritten.
    let compose = compose();
    let svc = &compose["services"]["loadtest"];
    assert_eq!(yaml_words(&svc["entrypoint"]), ["rendezvous-loadtest"], "loadtest entrypoint");
    let metrics_port = free_port();
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let mounts = bind_mounts(svc);
    let args: Vec<String> = yaml_words(&svc["command"])
        .into_iter()
        .map(|w| {
            let w = mounts.iter().fold(w, |w, (src, dst)| {
                w.replace(dst.as_str(), &repo().join(src).display().to_string())
            });
            let w = w
                .replace("node-a:8080", &a.addr.to_string())
                .replace("node-b:8080", &b.addr.to_string())
                .replace("0.0.0.0:9100", &metrics.to_string());
            assert!(
                !w.contains("node-") && !w.contains("0.0.0.0"),
                "loadtest argument {w:?} not rewritten"
            );
            w
        })
        .collect();
    let mut seen = Scrape::default();
    let mut outputs = Vec::new();
    let mut run = |label: &str, args: &[String], metrics: SocketAddr, seen: &mut Scrape| {
        let mut lt = Proc::spawn(label, Command::new(loadtest_bin()).args(args), tmp.path());
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(s) = scrape(metrics) {
                seen.absorb(&s);
                if wanted.keys().all(|n| seen.has(n)) {
                    break;
                }
            }
            if lt.exited().is_some() {
                // One last look: the endpoint may outlive the run briefly.
                if let Ok(s) = scrape(metrics) {
                    seen.absorb(&s);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        lt.kill();
        outputs.push(format!(
            "---- {label}: rendezvous-loadtest {} ----\n{}",
            args.join(" "),
            lt.tail(15)
        ));
    };
    run("loadtest (compose command)", &args, metrics, &mut seen);

    // A clean run has no errors; a run whose second users cannot connect has.
    if !wanted.keys().all(|n| seen.has(n)) {
        let port2 = free_port();
        let m2: SocketAddr = ([127, 0, 0, 1], port2).into();
        let failing: Vec<String> = [
            "run",
            &repo().join("loadtest/scenarios/chat-pairs.toml").display().to_string(),
            "--smoke",
            "--url",
            &format!("ws://{}/ws", a.addr),
            "--url",
            &format!("ws://127.0.0.1:{}/ws", free_port()),
            "--set",
            "chat.cross_node=true",
            "--set",
            "chat.rooms=4",
            "--set",
            "timeout_ms=2000",
            "--set",
            "max_secs=10",
            "--metrics-bind",
            &m2.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        run("loadtest (unreachable peer)", &failing, m2, &mut seen);
    }

    let mut failures = Vec::new();
    for (series, used) in &wanted {
        if !seen.has(series) {
            failures.push(format!(
                "{series} is not in the load tester's /metrics; used by {}",
                used.join("; ")
            ));
        }
    }
    for (name, kind) in LOADTEST_METRICS {
        match seen.types.get(*name) {
            Some(t) if t == kind => {}
            Some(t) => failures.push(format!("{name} is a {t}, the contract says {kind}")),
            None if seen.has(name) || seen.has(&format!("{name}_bucket")) => {
                failures.push(format!("{name} has no # TYPE line"))
            }
            None => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        outputs.join("\n")
    );
}

// ---------------------------------------------------------------- 6. alerts

/// Debian's prometheus package ships it.
const PROMTOOL: &str = "/usr/bin/promtool";

/// `promtool check rules` and `promtool test rules` pass, and the unit tests
/// cover every rule both ways: each alert fires in some test and stays silent
/// in another.
#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    require(PROMTOOL, "prometheus");
    for args in
        [["check", "rules", "deploy/alerts.yml"], ["test", "rules", "deploy/alerts.test.yml"]]
    {
        let out = run_bounded(
            Command::new(PROMTOOL).args(args).current_dir(repo()),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("promtool {}: {e}", args.join(" ")));
        assert!(
            out.status.success(),
            "promtool {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let rules = alert_rules();
    let tests = yaml("deploy/alerts.test.yml");
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for t in tests["tests"].as_sequence().into_iter().flatten() {
        for a in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = yaml_scalar(&a["alertname"]);
            if a["exp_alerts"].as_sequence().is_some_and(|e| !e.is_empty()) {
                fires.insert(name);
            } else {
                silent.insert(name);
            }
        }
    }
    let mut problems = Vec::new();
    for (name, _) in &rules {
        if !fires.contains(name) {
            problems.push(format!("{name}: no unit test where it fires"));
        }
        if !silent.contains(name) {
            problems.push(format!("{name}: no unit test where it stays silent"));
        }
    }
    // What the rules must watch (the issue's list), by the series they read.
    let used: BTreeSet<String> = rules.iter().flat_map(|(_, e)| promql::identifiers(e)).collect();
    let all_exprs: String = rules.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>().join("\n");
    for (what, series) in [
        ("a node not ready", "up"),
        ("the bridge down", "rendezvous_bridge_up"),
        ("the bridge resyncing", "rendezvous_bridge_reconnects_total"),
        ("nodes lost", "rendezvous_bridge_nodes_lost_total"),
        ("file descriptors near the cap", "process_max_fds"),
        ("slow-consumer disconnects", "rendezvous_slow_consumer_disconnects_total"),
        ("the error-frame rate", "rendezvous_error_frames_total"),
        ("p99 match wait", "rendezvous_match_wait_seconds_bucket"),
        ("the match-wait target", "rendezvous_match_wait_target_seconds"),
        ("delivery p99", "rendezvous_delivery_latency_seconds_bucket"),
        ("Redis memory", "redis_memory_used_bytes"),
    ] {
        if !used.contains(series) {
            problems.push(format!("no rule watches {what} ({series})"));
        }
    }
    assert!(
        all_exprs.contains(r#"up{job="rendezvous"}"#),
        "the not-ready rule must select the job"
    );
    // Every engine series a rule reads is one the engine declares.
    let declared = declared_metric_names();
    for series in alert_series(&["rendezvous_", "process_"]).keys() {
        if !declared.contains(promql::base_name(series)) {
            problems
                .push(format!("{series} is not declared (actors/src/metrics.rs, OPERATIONS.md)"));
        }
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

/// Every alerting rule of deploy/alerts.yml: (alert name, expression).
fn alert_rules() -> Vec<(String, String)> {
    let v = yaml("deploy/alerts.yml");
    let mut out = Vec::new();
    for g in v["groups"].as_sequence().into_iter().flatten() {
        for r in g["rules"].as_sequence().into_iter().flatten() {
            if !r["alert"].is_null() {
                out.push((yaml_scalar(&r["alert"]), yaml_scalar(&r["expr"])));
            }
        }
    }
    assert!(!out.is_empty(), "deploy/alerts.yml has no alerting rules");
    out
}

/// The series deploy/alerts.yml reads whose names start with one of `prefixes`:
/// (series, the alerts that use it).
fn alert_series(prefixes: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, expr) in alert_rules() {
        for id in promql::identifiers(&expr) {
            if prefixes.iter().any(|p| id.starts_with(p)) {
                out.entry(id).or_default().push(format!("deploy/alerts.yml {name}"));
            }
        }
    }
    out
}

/// Every engine series the dashboards and the alerts use (not the load tester's,
/// not Redis' exporter's): (series, where).
fn engine_series() -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> =
        dashboard_series().into_iter().filter(|(n, _)| !n.starts_with(LOADTEST_PREFIX)).collect();
    for (series, used) in alert_series(&["rendezvous_", "process_"]) {
        out.entry(series).or_default().extend(used);
    }
    out
}

/// Debian's Redis exporter reading `redis`, on a free loopback port.
fn redis_exporter(tmp: &TempDir, redis: &RedisServer) -> (Proc, SocketAddr) {
    const EXPORTER: &str = "/usr/bin/prometheus-redis-exporter";
    require(EXPORTER, "prometheus-redis-exporter");
    for attempt in 0..3 {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = Command::new(EXPORTER);
        cmd.arg(format!("-redis.addr=redis://127.0.0.1:{}", redis.port()))
            .arg(format!("-redis.password={REDIS_PASSWORD}"))
            .arg(format!("-web.listen-address={addr}"));
        let mut proc = Proc::spawn(&format!("redis-exporter-{attempt}"), &mut cmd, tmp.path());
        if proc.wait_ok(addr, "/metrics", Duration::from_secs(20), Duration::from_millis(100)) {
            match scrape(addr) {
                Ok(s) if s.value("redis_up") == 1.0 => return (proc, addr),
                other => panic!("the Redis exporter does not see Redis: {other:?}"),
            }
        }
        eprintln!("redis exporter not serving on {addr}:\n{}", proc.tail(20));
    }
    panic!("the Redis exporter did not start");
}

// ---------------------------------------------------------------- 7. metrics at zero

/// A fresh two-node cluster, scraped before any client connects, exports every
/// series its dashboards and alerts use, on each node: panels read 0 rather than
/// "No data", and an alert on a rare event can fire on its first occurrence.
#[tokio::test]
async fn two_nodes_export_every_dashboard_and_alert_series_before_any_traffic() {
    require("redis-server", "redis-server");
    image_build().unwrap_or_else(|e| panic!("the Dockerfile's build step: {e}"));
    let _heavy = HEAVY.lock().await;

    let wanted = engine_series();
    assert!(wanted.len() > 30, "too few series found in the dashboards and alerts: {wanted:?}");
    let redis = RedisServer::start_with(&["--requirepass", REDIS_PASSWORD]);
    let url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0", redis.port());
    let a = Node::spawn(Some(&url), "node-a", &[]);
    let b = Node::spawn(Some(&url), "node-b", &[]);
    for n in [&a, &b] {
        wait_nodes(n, 2, Duration::from_secs(15)).await;
    }
    let mut failures = Vec::new();
    for (name, node) in [("node-a", &a), ("node-b", &b)] {
        // The gauges sampled by the housekeeping tick (at once, then every 5 s)
        // and the peer's heartbeat age may take a moment: poll, bounded.
        let deadline = Instant::now() + Duration::from_secs(15);
        let missing = loop {
            let s = scrape(node.addr).unwrap_or_else(|e| panic!("{name}: {e}"));
            let missing: Vec<&String> = wanted.keys().filter(|k| !s.has(k)).collect();
            if missing.is_empty() || Instant::now() > deadline {
                break missing;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        for series in missing {
            failures.push(format!("{name}: no {series}; used by {}", wanted[series].join("; ")));
        }
        let s = scrape(node.addr).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            s.value("rendezvous_sessions_opened_total"),
            0.0,
            "{name}: a session was opened: the scrape is not before traffic"
        );
    }
    eprintln!("{} series checked on each of two nodes", wanted.len());
    assert!(failures.is_empty(), "{} missing:\n{}", failures.len(), failures.join("\n"));
}
