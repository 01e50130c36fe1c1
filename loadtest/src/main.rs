//! `rendezvous-loadtest`: drives any server that speaks protocol v1.
//!
//! Mode `pairs` measures client-observed match latency: for each pair, user A
//! searches, then user B searches with the same interests; B's time from sending
//! `find_match` to receiving `match_found` is the match latency (the server's
//! matching time plus one loopback round trip). Pairs run `--concurrency` at a time,
//! each with fresh users so per-user rate limits do not interfere.

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rendezvous_protocol::ServerFrame;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Parser)]
#[command(name = "rendezvous-loadtest", about = "Load generator for the Rendezvous protocol")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Client-observed match latency of pairs.
    Pairs {
        /// WebSocket URL of the server's /ws endpoint.
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// Pairs to match in total (bounded run).
        #[arg(long, default_value_t = 2_000)]
        pairs: usize,
        /// Pairs in flight at once.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Give up on one frame after this long (ms).
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why one pair failed; printed with `{:?}` in the report.
#[derive(Debug)]
#[allow(dead_code)]
enum Failure {
    Connect(String),
    Timeout(&'static str),
    Unexpected(String),
}

async fn connect(url: &str, user: &str) -> Result<Ws, Failure> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("{url}?user={user}"))
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    Ok(ws)
}

/// Read frames until one of `kind`, within `wait`.
async fn until(ws: &mut Ws, kind: &'static str, wait: Duration) -> Result<ServerFrame, Failure> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| Failure::Timeout(kind))?;
        match msg {
            Some(Ok(Message::Text(t))) => {
                let f: ServerFrame = serde_json::from_str(t.as_str())
                    .map_err(|e| Failure::Unexpected(e.to_string()))?;
                if f.kind() == kind {
                    return Ok(f);
                }
                if f.kind() == "error" {
                    return Err(Failure::Unexpected(t.to_string()));
                }
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(Failure::Unexpected(e.to_string())),
            None => return Err(Failure::Unexpected("connection closed".into())),
        }
    }
}

async fn one_pair(url: String, id: usize, wait: Duration) -> Result<Duration, Failure> {
    let run = std::process::id();
    let mut a = connect(&url, &format!("lt{run}-{id}-a")).await?;
    let mut b = connect(&url, &format!("lt{run}-{id}-b")).await?;
    until(&mut a, "welcome", wait).await?;
    until(&mut b, "welcome", wait).await?;
    // Pair-specific interests, so concurrent pairs do not cross-match.
    let find = json!({"action": "find_match", "interests": [format!("p{id}x"), format!("p{id}y")], "language": "en"}).to_string();
    a.send(Message::Text(find.clone().into()))
        .await
        .map_err(|e| Failure::Unexpected(e.to_string()))?;
    until(&mut a, "searching", wait).await?;
    let t0 = Instant::now();
    b.send(Message::Text(find.into())).await.map_err(|e| Failure::Unexpected(e.to_string()))?;
    let found = until(&mut b, "match_found", wait).await?;
    let latency = t0.elapsed();
    until(&mut a, "match_found", wait).await?;
    if let ServerFrame::MatchFound { partner_id, .. } = &found {
        if partner_id.as_deref() != Some(&format!("lt{run}-{id}-a")) {
            return Err(Failure::Unexpected(format!("wrong partner {partner_id:?}")));
        }
    }
    let _ = a.close(None).await;
    let _ = b.close(None).await;
    Ok(latency)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let Cli { mode: Mode::Pairs { url, pairs, concurrency, timeout_ms } } = Cli::parse();
    let wait = Duration::from_millis(timeout_ms);
    // Microseconds, 1 µs to 60 s, 3 significant digits.
    let mut hist = match Histogram::<u64>::new_with_bounds(1, 60_000_000, 3) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("histogram: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut next = 0usize;
    let mut running = tokio::task::JoinSet::new();
    while next < pairs || !running.is_empty() {
        while next < pairs && running.len() < concurrency {
            running.spawn(one_pair(url.clone(), next, wait));
            next += 1;
        }
        match running.join_next().await {
            Some(Ok(Ok(latency))) => {
                let _ = hist.record(latency.as_micros().max(1) as u64);
            }
            Some(Ok(Err(f))) => failures.push(f),
            Some(Err(e)) => failures.push(Failure::Unexpected(e.to_string())),
            None => break,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = hist.len();
    println!(
        "pairs matched: {ok}/{pairs} in {elapsed:.2} s ({:.0} pairs/s incl. connect)",
        ok as f64 / elapsed
    );
    println!(
        "match latency (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        ms(&hist, 0.5),
        ms(&hist, 0.9),
        ms(&hist, 0.99),
        ms(&hist, 0.999),
        hist.max() as f64 / 1000.0
    );
    println!(
        "{}",
        json!({"mode": "pairs", "pairs": pairs, "matched": ok, "failures": failures.len(),
               "p50_ms": ms(&hist, 0.5), "p99_ms": ms(&hist, 0.99), "max_ms": hist.max() as f64 / 1000.0})
    );
    if !failures.is_empty() {
        eprintln!("{} failures, first: {:?}", failures.len(), failures.first());
        return std::process::ExitCode::from(1);
    }
    std::process::ExitCode::SUCCESS
}
