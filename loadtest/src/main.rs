//! `rendezvous-loadtest`: drives any server that speaks protocol v1.
//!
//! * `pairs`: client-observed match latency (see [`pairs`]).
//! * `chat`: delivery latency, throughput and ordering of room messages between
//!   matched pairs (see [`chat`]).
//! * `run`: a scenario file (`loadtest/scenarios/*.toml`) drives one of the
//!   drivers, with thresholds that decide the exit status (see [`scenario`]).
//!
//! With `--peer-url`, the second user of every pair connects to another node of
//! the same cluster, so every match and every message crosses nodes.

mod chat;
mod client;
mod pairs;
mod scenario;
mod stats;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rendezvous-loadtest", about = "Load generator for the Rendezvous protocol")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// Serve the load tester's own Prometheus metrics on ADDR:PORT while it runs
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    metrics_bind: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
enum Mode {
    /// Run a scenario file; exits 1 when a threshold it states is missed.
    Run {
        /// The scenario (TOML), e.g. loadtest/scenarios/match-storm.toml.
        file: PathBuf,
        /// Use the file's [smoke] settings: a short, small run.
        #[arg(long)]
        smoke: bool,
        /// Endpoint(s) instead of the file's `urls` (repeat for several nodes).
        #[arg(long = "url", value_name = "WS_URL")]
        urls: Vec<String>,
        /// Length of the load phase instead of the file's `duration_secs`.
        #[arg(long)]
        duration_secs: Option<f64>,
        /// Worker processes instead of the file's `workers`.
        #[arg(long)]
        workers: Option<usize>,
        /// Local address(es) to connect from instead of the file's `source_addrs`.
        #[arg(long = "source-addr", value_name = "IP")]
        source_addrs: Vec<std::net::IpAddr>,
        /// Override any setting: `--set chat.rate=50` (TOML value), repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Secret for minting HS256 tokens (else the file's [auth] secret_env).
        #[arg(long, env = "RENDEZVOUS_LOADTEST_JWT_SECRET", hide_env_values = true)]
        jwt_secret: Option<String>,
        /// Write the result (and the threshold verdicts) to this file as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
        /// Internal: run as worker K of N and write the raw report to --json.
        #[arg(long, hide = true, value_name = "K/N")]
        worker: Option<String>,
    },
    /// Client-observed match latency of pairs.
    Pairs {
        /// WebSocket URL of the server's /ws endpoint (first user of each pair).
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// Another node's /ws endpoint for the second user of each pair (cross-node).
        #[arg(long)]
        peer_url: Option<String>,
        /// Pairs to match in total (bounded run).
        #[arg(long, default_value_t = 2_000)]
        pairs: usize,
        /// Pairs in flight at once.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Give up on one frame after this long (ms).
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Start no new pair after this many seconds (bounded run).
        #[arg(long, default_value_t = 25)]
        max_secs: u64,
        /// Also write the report to this file as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Chat between matched pairs: open-loop sends, delivery latency, loss and order.
    Chat {
        /// WebSocket URL of the server's /ws endpoint (first member of each pair).
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// Another node's /ws endpoint for the second member of each pair (cross-node).
        #[arg(long)]
        peer_url: Option<String>,
        /// Rooms of two.
        #[arg(long, default_value_t = 200)]
        pairs: usize,
        /// Pairs being matched at once during setup.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Messages per second sent by each member (open loop).
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// How long members send (bounded run).
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Length of each text (at least the ~20-byte header carrying index and time).
        #[arg(long, default_value_t = 64)]
        text_bytes: usize,
        /// How long members keep reading after the last send (ms); what is acked but
        /// not delivered by then counts as lost.
        #[arg(long, default_value_t = 2_000)]
        drain_ms: u64,
        /// Give up on one setup frame after this long (ms).
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Print delivery latency per this many ms of the run (by scheduled send
        /// time), before the summary line; 0 = off.
        #[arg(long, default_value_t = 0)]
        timeline_ms: u64,
        /// Also write the report to this file as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// Raise the open-files limit as far as allowed; warn when it is below `need`.
pub(crate) fn raise_nofile(need: u64) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < need => {
            eprintln!(
                "warning: open-files limit {limit} is below the {need} sockets this run needs"
            )
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-files limit: {e}"),
    }
}

async fn run(mode: Mode) -> Result<bool, String> {
    match mode {
        Mode::Run {
            file,
            smoke,
            urls,
            duration_secs,
            workers,
            source_addrs,
            sets,
            jwt_secret,
            json,
            quiet,
            worker,
        } => {
            let overrides =
                scenario::spec::Overrides { urls, duration_secs, workers, source_addrs, sets };
            let args =
                scenario::RunArgs { file, smoke, overrides, json, jwt_secret, quiet, worker };
            scenario::run(args).await
        }
        Mode::Pairs { url, peer_url, pairs, concurrency, timeout_ms, max_secs, json } => {
            raise_nofile(2 * concurrency as u64 + 64);
            let wait = Duration::from_millis(timeout_ms);
            let max_time = Duration::from_secs(max_secs);
            let args = pairs::PairsArgs { url, peer_url, pairs, concurrency, wait, max_time, json };
            pairs::run(args).await
        }
        Mode::Chat {
            url,
            peer_url,
            pairs,
            concurrency,
            rate,
            duration_secs,
            text_bytes,
            drain_ms,
            timeout_ms,
            timeline_ms,
            json,
        } => {
            raise_nofile(2 * pairs as u64 + 64);
            chat::run(chat::ChatArgs {
                url,
                peer_url,
                pairs,
                concurrency,
                rate,
                duration: Duration::from_secs(duration_secs),
                text_bytes,
                drain: Duration::from_millis(drain_ms),
                wait: Duration::from_millis(timeout_ms),
                timeline: Duration::from_millis(timeline_ms),
                json,
                room_size: 2,
            })
            .await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(addr) = cli.metrics_bind {
        if let Err(e) = telemetry::serve(addr) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    match run(cli.mode).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
