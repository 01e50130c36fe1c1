//! The live progress line: a few process-wide counters, printed once a second to
//! standard error while a scenario runs (in place on a terminal).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static OPENED: AtomicU64 = AtomicU64::new(0);
static CLOSED: AtomicU64 = AtomicU64::new(0);
static MATCHED: AtomicU64 = AtomicU64::new(0);
static SENT: AtomicU64 = AtomicU64::new(0);
static RECEIVED: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);

pub fn opened() {
    OPENED.fetch_add(1, Ordering::Relaxed);
}
pub fn closed() {
    CLOSED.fetch_add(1, Ordering::Relaxed);
}
pub fn matched() {
    MATCHED.fetch_add(1, Ordering::Relaxed);
}
pub fn sent(n: u64) {
    SENT.fetch_add(n, Ordering::Relaxed);
}
pub fn received(n: u64) {
    RECEIVED.fetch_add(n, Ordering::Relaxed);
}
pub fn error() {
    ERRORS.fetch_add(1, Ordering::Relaxed);
}

fn line(started: Instant, label: &str, last_received: &mut u64) -> String {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let open = get(&OPENED).saturating_sub(get(&CLOSED));
    let received = get(&RECEIVED);
    let per_s = received.saturating_sub(*last_received);
    *last_received = received;
    format!(
        "[{label} {:>6.1}s] open {open:>6}  opened {:>7}  matched {:>7}  sent {:>9}  \
         received {:>10} ({per_s}/s)  errors {}",
        started.elapsed().as_secs_f64(),
        get(&OPENED),
        get(&MATCHED),
        get(&SENT),
        received,
        get(&ERRORS)
    )
}

/// Print the line every second until the returned guard drops.
pub fn start(label: String, quiet: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if quiet {
            return;
        }
        let started = Instant::now();
        let tty = std::io::stderr().is_terminal();
        let mut last = RECEIVED.load(Ordering::Relaxed);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let text = line(started, &label, &mut last);
            let mut err = std::io::stderr().lock();
            let _ = if tty { write!(err, "\r{text}\x1b[K") } else { writeln!(err, "{text}") };
            let _ = err.flush();
        }
    })
}

/// Stop the line (and end it on a terminal; a worker's counters end as they
/// are).
pub fn stop(handle: tokio::task::JoinHandle<()>, worker: bool) {
    handle.abort();
    if !worker && std::io::stderr().is_terminal() {
        eprintln!();
    }
}

const ALL: [&AtomicU64; 6] = [&OPENED, &CLOSED, &MATCHED, &SENT, &RECEIVED, &ERRORS];

/// The counters now.
pub fn snapshot() -> [u64; 6] {
    ALL.map(|c| c.load(Ordering::Relaxed))
}

/// A worker's counters for its parent: one JSON line per second on standard
/// output, `{"progress": [opened, closed, matched, sent, received, errors]}`.
pub fn emit() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let line = serde_json::json!({"progress": snapshot()}).to_string();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    })
}

/// A worker's line, as [`emit`] printed it.
pub fn parse_line(line: &str) -> Option<[u64; 6]> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let list = v.get("progress")?.as_array()?;
    let mut out = [0u64; 6];
    for (slot, n) in out.iter_mut().zip(list) {
        *slot = n.as_u64()?;
    }
    (list.len() == 6).then_some(out)
}

/// The parent of workers shows the sum of their latest counters.
pub fn store(workers: &[[u64; 6]]) {
    for (i, counter) in ALL.iter().enumerate() {
        counter.store(workers.iter().map(|w| w[i]).sum(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_lines_round_trip() {
        let line = serde_json::json!({"progress": [1, 2, 3, 4, 5, 6]}).to_string();
        assert_eq!(parse_line(&line), Some([1, 2, 3, 4, 5, 6]));
        assert_eq!(parse_line("match_latency 1 2 3"), None);
        assert_eq!(parse_line(r#"{"progress": [1, 2]}"#), None);
    }

    #[test]
    fn the_parent_shows_the_sum_of_its_workers() {
        // The only test here that touches the process-wide counters.
        store(&[[1, 0, 2, 3, 4, 5], [10, 1, 20, 30, 40, 50]]);
        assert_eq!(snapshot(), [11, 1, 22, 33, 44, 55]);
        let mut last = 0;
        let text = line(Instant::now(), "w", &mut last);
        assert!(text.contains("open     10") && text.contains("errors 55"), "{text}");
    }
}
