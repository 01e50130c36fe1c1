//! Wiring, the top of the engine: starts the worker arbiters, the pool shards and
//! the room supervisor over one [`Shared`], and hands out the [`Engine`] handle the
//! server (and the sessions it starts) hold. Nothing below imports this file.
//! `Engine::start` must run inside an actix `System`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Arbiter, ArbiterHandle};

use crate::bridge::Bridge;
use crate::config::EngineConfig;
use crate::matching::{shard_for, MatchShard};
use crate::rooms::Rooms;
use crate::state::{set_current_worker, Shared};
use crate::token::TokenVerifier;

/// The handle the server and sessions hold. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub shared: Arc<Shared>,
    pub shards: Arc<[Addr<MatchShard>]>,
    /// The room directory and the supervisor that opens rooms.
    pub rooms: Rooms,
    /// The bridge's sink, owned here: the bridge holds it weakly.
    _inbound: Arc<crate::inbound::Inbound>,
}

impl Engine {
    /// Start worker arbiters, pool shards and the room supervisor. Call inside a
    /// running actix `System`.
    pub fn start(config: EngineConfig, bridge: Arc<dyn Bridge>) -> Engine {
        let workers: Vec<ArbiterHandle> = (0..config.worker_count())
            .map(|i| {
                let handle = Arbiter::new().handle();
                handle.spawn_fn(move || set_current_worker(i));
                handle
            })
            .collect();
        crate::metrics::export_at_zero(&config, bridge.clustered());
        let shared = Arc::new(Shared::new(config, bridge, workers));
        let rooms = Rooms::start(shared.clone());
        let shards: Vec<Addr<MatchShard>> = (0..shared.config.shard_count())
            .map(|i| {
                let (s, sup) = (shared.clone(), rooms.supervisor.clone());
                let arbiter = &shared.workers[i % shared.workers.len()];
                MatchShard::start_in_arbiter(arbiter, move |_| {
                    MatchShard::new(i, s, sup.clone().recipient(), sup.recipient())
                })
            })
            .collect();
        let shards: Arc<[Addr<MatchShard>]> = shards.into();
        for shard in shards.iter() {
            shard.do_send(crate::matching::messages::SetPeers(shards.clone()));
        }
        let _inbound = crate::inbound::Inbound::install(&shared, &shards, &rooms);
        let engine = Engine { shared, shards, rooms, _inbound };
        engine.spawn_housekeeping();
        engine
    }

    /// Install the verifier for tokens sent with `refresh` (once; later calls are
    /// ignored). Call before the first session starts.
    pub fn install_token_verifier(&self, verifier: Arc<dyn TokenVerifier>) {
        self.shared.install_token_verifier(verifier);
    }

    /// Load the moderation state file (single node; nothing without one): its bans,
    /// blocks and reports are in force before the first session. Returns how many
    /// records it held. Call once, right after [`Engine::start`].
    pub fn load_moderation(&self) -> Result<usize, crate::moderation::StateFileError> {
        let events = self.shared.moderation.read_file()?;
        for ev in &events {
            self.shared.moderation.apply(ev);
            crate::admin::enforce(&self.shared, &self.rooms, ev);
        }
        Ok(events.len())
    }

    /// The operators' handle on this engine.
    pub fn admin(&self) -> crate::admin::Admin {
        crate::admin::Admin::new(self.shared.clone(), self.rooms.clone())
    }

    /// The shard that owns searches in `language`.
    pub fn shard_for(&self, language: &str) -> &Addr<MatchShard> {
        shard_for(&self.shards, language)
    }

    /// Periodic sweeps of the avoid list and send-limit state (30 s) and of the
    /// `find_match` limiter (1 s), and the sampled gauges: outbound queues and
    /// actor mailbox delays (5 s).
    fn spawn_housekeeping(&self) {
        let shared = self.shared.clone();
        actix::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let shared = shared.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || shared.sweep_limiter()).await {
                    tracing::error!(error = %e, "limiter sweep failed");
                }
            }
        });
        let shared = self.shared.clone();
        actix::spawn(async move {
            // The first sweep 30 s after the start, not at once: a sweep that
            // starts late on a busy machine would otherwise land among the first
            // clients and drop the send bucket of a user who is reconnecting.
            let period = Duration::from_secs(30);
            let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                every.tick().await;
                // Off the worker threads: the walk takes each map's shard locks
                // in turn, and a large map takes a while.
                let shared = shared.clone();
                let began = std::time::Instant::now();
                match tokio::task::spawn_blocking(move || shared.sweep()).await {
                    Ok(()) => {
                        tracing::debug!(ms = began.elapsed().as_millis(), "housekeeping sweep")
                    }
                    Err(e) => tracing::error!(error = %e, "housekeeping sweep failed"),
                }
            }
        });
        if shared_has_file(&self.shared) {
            // The state file follows changes within a quarter second (one write per
            // round at most, however many changes), and once more at the drain.
            let shared = self.shared.clone();
            actix::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(250));
                loop {
                    every.tick().await;
                    if let Err(e) = shared.moderation.flush() {
                        tracing::warn!(error = %e, "could not write the moderation state file");
                    }
                }
            });
        }
        let engine = self.clone();
        actix::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                let (sum, max) = engine.shared.registry.queued_frames();
                metrics::gauge!(crate::metrics::OUTBOUND_QUEUED_FRAMES).set(sum as f64);
                metrics::gauge!(crate::metrics::OUTBOUND_QUEUE_MAX_FRAMES).set(max as f64);
                for (i, shard) in engine.shards.iter().enumerate() {
                    let t0 = Instant::now();
                    if shard.send(crate::matching::messages::Probe).await.is_ok() {
                        metrics::gauge!(crate::metrics::ACTOR_MAILBOX_DELAY_SECONDS, "actor" => format!("shard-{i}"))
                            .set(t0.elapsed().as_secs_f64());
                    }
                }
                let t0 = Instant::now();
                if engine.rooms.supervisor.send(crate::matching::messages::Probe).await.is_ok() {
                    metrics::gauge!(crate::metrics::ACTOR_MAILBOX_DELAY_SECONDS, "actor" => "rooms")
                        .set(t0.elapsed().as_secs_f64());
                }
            }
        });
    }

    /// Close every session with `code` and wait (bounded) until all are gone.
    pub async fn drain(&self, code: u16, timeout: Duration) -> usize {
        self.shared.registry.close_all(code);
        let deadline = Instant::now() + timeout;
        while !self.shared.registry.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = self.shared.moderation.flush() {
            tracing::warn!(error = %e, "could not write the moderation state file");
        }
        self.shared.registry.len()
    }

    /// Stop the worker arbiters (after a drain).
    pub fn stop(&self) {
        for w in &self.shared.workers {
            w.stop();
        }
    }
}

fn shared_has_file(shared: &Shared) -> bool {
    shared.config.moderation_state_file.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::current_worker;

    #[test]
    fn each_worker_thread_knows_its_index() {
        let seen = actix::System::new().block_on(async {
            let config = EngineConfig { workers: 3, ..EngineConfig::default() };
            let engine =
                Engine::start(config, Arc::new(crate::bridge::memory::MemoryBridge::new("t")));
            let mut seen = Vec::new();
            for w in &engine.shared.workers {
                let (tx, rx) = tokio::sync::oneshot::channel();
                w.spawn_fn(move || {
                    let _ = tx.send(current_worker());
                });
                seen.push(rx.await.ok().flatten());
            }
            engine.stop();
            (seen, current_worker())
        });
        assert_eq!(seen, (vec![Some(0), Some(1), Some(2)], None));
    }
}
