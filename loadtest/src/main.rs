//! `rendezvous-loadtest`: drives any server that speaks protocol v1.
//!
//! `run FILE`: a scenario file (`loadtest/scenarios/*.toml`) drives one of the
//! drivers, with thresholds that decide the exit status (see [`scenario`]). Give
//! a scenario several `--url`s (nodes of one cluster) and the drivers spread
//! users over them; with `cross_node` every match and message crosses nodes.

// `match_pair`, `Pair` and `PairSpec` served only the removed `pairs` and `chat`
// modes; they leave client.rs when it becomes the client module shared with the
// tests, and this expectation with them.
mod capacity;
mod client;
mod html;
mod scenario;
mod stats;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rendezvous-loadtest", about = "Load generator for the Rendezvous protocol")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// Serve the load tester's own Prometheus metrics on ADDR:PORT while it runs
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    metrics_bind: Option<std::net::SocketAddr>,
    /// PEM certificate authority to trust for wss:// URLs, besides the system's
    /// (e.g. a proxy's private CA)
    #[arg(long, global = true, value_name = "PEM", env = client::CA_FILE_ENV)]
    ca_file: Option<PathBuf>,
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
        /// Run part K of N of the load (K from 1), e.g. one part on each of N
        /// machines; join the parts' --json results with `merge`.
        #[arg(long, value_name = "K/N")]
        worker: Option<String>,
        /// The run's name in reports and merged results (default: the scenario's).
        #[arg(long)]
        label: Option<String>,
    },
    /// Merge results of one scenario (e.g. `run --worker K/N` parts) into one:
    /// exact histogram merge, thresholds checked again; exits 1 when one is missed.
    Merge {
        /// Result files written by `run --json`.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Write the merged result here.
        #[arg(short = 'o', long = "output", value_name = "OUT.json")]
        output: Option<PathBuf>,
        /// The merged run's name in reports (default: the first input's label).
        #[arg(long)]
        label: Option<String>,
    },
    /// Search for the highest value of a setting (a rate) at which every threshold
    /// holds; exits 1 when even the start fails, 2 when it cannot be run.
    Capacity {
        /// The scenario (TOML), e.g. loadtest/scenarios/chat-pairs.toml.
        file: PathBuf,
        /// The setting to vary (default: the file's [capacity] param).
        #[arg(long, value_name = "KEY")]
        param: Option<String>,
        /// First value (default: [capacity] start, else the setting's value).
        #[arg(long, value_name = "X")]
        start: Option<f64>,
        /// Step up by this factor while steps hold.
        #[arg(long, default_value_t = 2.0, value_name = "F")]
        factor: f64,
        /// Stop bisecting when (first failed - held) / held is at most this.
        #[arg(long, default_value_t = 0.1, value_name = "R")]
        resolution: f64,
        /// Runs per step; a step is decided on their median.
        #[arg(long, default_value_t = 3, value_name = "N")]
        repeats: usize,
        /// Bound on the number of steps.
        #[arg(long, default_value_t = 12, value_name = "N")]
        max_steps: usize,
        /// No new step after this many seconds.
        #[arg(long = "max-time", default_value_t = 1800.0, value_name = "SECS")]
        max_time: f64,
        /// Shell command (sh -c) run before every run, e.g. to restart the servers;
        /// then every url's /readyz must answer 200 within 60 s.
        #[arg(long, value_name = "CMD")]
        restart_cmd: Option<String>,
        /// Write the search (every step, its runs and medians) to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Keep the runs' result files here (default: next to --json, NAME-runs/).
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        /// Endpoint(s) instead of the file's `urls`.
        #[arg(long = "url", value_name = "WS_URL")]
        urls: Vec<String>,
        /// Override any setting, as for `run` (the searched one is set last).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Length of each run's load phase instead of the file's `duration_secs`.
        #[arg(long)]
        duration_secs: Option<f64>,
        /// The name of this search in reports (default: the scenario's name).
        #[arg(long)]
        label: Option<String>,
        /// Use the file's [smoke] settings for every run.
        #[arg(long)]
        smoke: bool,
    },
    /// Draw result files (of `run --json` and `capacity --json`) as one
    /// self-contained HTML page.
    Report {
        /// Result JSON files; runs are overlaid in this order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The HTML file to write.
        #[arg(short = 'o', long = "out", value_name = "HTML")]
        out: PathBuf,
    },
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
            label,
        } => {
            let overrides =
                scenario::spec::Overrides { urls, duration_secs, workers, source_addrs, sets };
            let args = scenario::RunArgs {
                file,
                smoke,
                overrides,
                json,
                jwt_secret,
                quiet,
                worker,
                label,
            };
            scenario::run(args).await
        }
        Mode::Capacity {
            file,
            param,
            start,
            factor,
            resolution,
            repeats,
            max_steps,
            max_time,
            restart_cmd,
            json,
            keep,
            urls,
            sets,
            duration_secs,
            label,
            smoke,
        } => {
            let args = capacity::Args {
                file,
                param,
                start,
                factor,
                resolution,
                repeats,
                max_steps,
                max_time_secs: max_time,
                restart_cmd,
                json,
                keep,
                urls,
                sets,
                duration_secs,
                label,
                smoke,
            };
            capacity::run(args).await
        }
        Mode::Report { files, out } => html::run(&files, &out).map(|()| true),
        Mode::Merge { inputs, output, label } => {
            scenario::merge::run(scenario::merge::MergeArgs { inputs, output, label })
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(ca) = cli.ca_file {
        client::trust_ca_file(ca);
    }
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
