//! A search storm: many clients connect (bounded parallelism), wait for each
//! other, send `find_match` at the same moment and record every frame until the
//! storm is over. The suites check the invariants on what each client [`Seen`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rendezvous_protocol::ServerFrame;
use serde_json::Value;
use tokio::sync::{watch, Barrier, Semaphore};

use crate::search::Found;
use crate::Client;

/// Connections opened at the same time.
const CONNECT_SLOTS: usize = 128;
/// How long all clients may take to connect.
const CONNECT_WITHIN: Duration = Duration::from_secs(60);

const INTERESTS: [&str; 8] =
    ["chess", "go", "poker", "music", "films", "books", "hiking", "cooking"];

/// Deterministic, varied interests for client `i`: 1 to 3 of eight.
pub fn interests_for(i: usize) -> Vec<&'static str> {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut pick = || {
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 29;
        x
    };
    let n = 1 + (pick() % 3) as usize;
    let mut v: Vec<&str> = (0..n).map(|_| INTERESTS[(pick() % 8) as usize]).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// What one storm client saw after its `find_match`.
pub struct Seen {
    pub user: String,
    pub searching: usize,
    /// Every `match_found`, as sent (lists in the server's order).
    pub matches: Vec<Found>,
    pub no_match: usize,
    /// Frames other than searching, outcomes and `presence`.
    pub other: Vec<ServerFrame>,
}

impl Seen {
    fn decided(&self) -> bool {
        !self.matches.is_empty() || self.no_match > 0
    }
}

/// How a storm runs.
pub struct Storm {
    /// One client per URL (its user in the query).
    pub urls: Vec<String>,
    /// Every client has an outcome within this long after the start, or the storm
    /// fails.
    pub outcome_within: Duration,
    /// How long to keep reading after the last outcome, so that a stray second
    /// `match_found` is seen.
    pub linger: Duration,
}

impl Storm {
    /// Run it; client `i` sends `find_match(i)`. What each saw (index = client
    /// number), the live clients (kept open so rooms stay open for the checks) and
    /// how long until the last outcome.
    pub async fn run(
        self,
        find_match: impl Fn(usize) -> Value,
    ) -> (Vec<Seen>, Vec<Client>, Duration) {
        let n = self.urls.len();
        let connect_slots = Arc::new(Semaphore::new(CONNECT_SLOTS));
        let ready = Arc::new(Barrier::new(n + 1));
        let decided = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::with_capacity(n);
        for (i, url) in self.urls.into_iter().enumerate() {
            let (slots, ready, decided) = (connect_slots.clone(), ready.clone(), decided.clone());
            let mut stop = stop_rx.clone();
            let body = find_match(i);
            tasks.push(tokio::spawn(async move {
                let mut c = {
                    let _slot = slots.acquire().await.expect("connect semaphore");
                    Client::connect(&url).await
                };
                ready.wait().await;
                c.send_json(body).await;
                let mut seen = Seen {
                    user: c.user_id.clone(),
                    searching: 0,
                    matches: Vec::new(),
                    no_match: 0,
                    other: Vec::new(),
                };
                loop {
                    let f = tokio::select! {
                        _ = stop.changed() => break,
                        f = c.recv_any() => f,
                    };
                    let undecided = !seen.decided();
                    match f {
                        ServerFrame::Searching { .. } => seen.searching += 1,
                        f @ ServerFrame::MatchFound { .. } => {
                            seen.matches.extend(Found::as_sent(f));
                        }
                        ServerFrame::NoMatchFound {} => seen.no_match += 1,
                        ServerFrame::Presence { .. } => continue,
                        other => {
                            seen.other.push(other);
                            continue;
                        }
                    }
                    if undecided && seen.decided() {
                        decided.fetch_add(1, Ordering::SeqCst);
                    }
                }
                (seen, c)
            }));
        }
        // Every client connected (or a connect panicked, which fails the wait below).
        tokio::time::timeout(CONNECT_WITHIN, ready.wait())
            .await
            .unwrap_or_else(|_| panic!("all storm clients connected within {CONNECT_WITHIN:?}"));
        let started = Instant::now();
        let deadline = started + self.outcome_within;
        while decided.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} clients got an outcome within {:?}",
                decided.load(Ordering::SeqCst),
                self.outcome_within
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        tokio::time::sleep(self.linger).await;
        stop_tx.send(true).expect("stop the storm readers");
        let mut seen = Vec::with_capacity(n);
        let mut clients = Vec::with_capacity(n);
        for t in tasks {
            let (s, c) = t.await.expect("storm client task");
            seen.push(s);
            clients.push(c);
        }
        (seen, clients, took)
    }
}
