//! The ordered command pipe to Redis. Every command of this node goes into one
//! queue; one task takes whatever is queued (up to [`BATCH`]), sends it as one
//! pipeline on one connection and hands each reply back. Redis runs the commands
//! of a connection in order, so a command is applied after every command queued
//! before it, whichever thread queued them: a search's registration always comes
//! before the claim that names it. Batching also turns load into fewer round
//! trips instead of more.
//!
//! While the connection is down, queued commands fail at once with
//! `Unavailable` (callers fall back or retry); the task reconnects with capped
//! exponential backoff, loads the scripts again and reports the reconnect so the
//! bridge can resync.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{Cmd, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::bridge::BridgeError;
use crate::metrics as m;

/// Most commands sent in one pipeline.
const BATCH: usize = 512;
/// Longest one pipeline may take before the connection counts as dead.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(3);
/// Queued commands beyond which new ones are refused (the store is too slow).
pub const QUEUE_CAP: usize = 100_000;

/// One queued command and where its reply goes.
pub struct Op {
    pub cmd: Cmd,
    pub kind: &'static str,
    pub reply: Option<oneshot::Sender<Result<Value, BridgeError>>>,
}

/// The queue's sending side.
#[derive(Clone)]
pub struct Pipe {
    /// Bounded so a stuck store cannot grow this node's memory without limit.
    tx: mpsc::Sender<Op>,
    /// True while the command connection is up.
    pub up: Arc<AtomicBool>,
}

impl Pipe {
    /// Queue a command whose reply nobody waits for.
    pub fn fire(&self, kind: &'static str, cmd: Cmd) {
        if self.tx.try_send(Op { cmd, kind, reply: None }).is_err() {
            warn!(kind, "redis command queue full or closed; command dropped");
        }
    }

    /// Queue a command and wait for its reply.
    pub fn call(
        &self,
        kind: &'static str,
        cmd: Cmd,
    ) -> impl std::future::Future<Output = Result<Value, BridgeError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let queued = self.tx.try_send(Op { cmd, kind, reply: Some(tx) });
        async move {
            if queued.is_err() {
                return Err(BridgeError::Unavailable("redis command queue full".into()));
            }
            rx.await.unwrap_or_else(|_| Err(BridgeError::Unavailable("redis pipe stopped".into())))
        }
    }
}

/// The pipe's task, not yet running: commands queue until it is spawned.
pub struct Runner {
    client: redis::Client,
    scripts: Vec<&'static str>,
    rx: mpsc::Receiver<Op>,
    up: Arc<AtomicBool>,
    connected: watch::Sender<u64>,
}

impl Runner {
    /// Send the queue to Redis until every [`Pipe`] is gone.
    pub async fn run(self) {
        run(self.client, self.scripts, self.rx, self.up, self.connected).await
    }
}

/// Make the pipe and its task, to be spawned where the pipe's callers run.
/// `scripts` are loaded on every (re)connect; each reconnect bumps `connected` so
/// the bridge resyncs.
pub fn new(
    client: redis::Client,
    scripts: Vec<&'static str>,
    connected: watch::Sender<u64>,
) -> (Pipe, Runner) {
    let (tx, rx) = mpsc::channel(QUEUE_CAP);
    let up = Arc::new(AtomicBool::new(false));
    let pipe = Pipe { tx, up: up.clone() };
    (pipe, Runner { client, scripts, rx, up, connected })
}

async fn connect(
    client: &redis::Client,
    scripts: &[&'static str],
) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(ROUND_TRIP_TIMEOUT));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    for s in scripts {
        let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(*s).query_async(&mut conn).await?;
    }
    Ok(conn)
}

fn fail(op: Op, why: &str) {
    if let Some(reply) = op.reply {
        let _ = reply.send(Err(BridgeError::Unavailable(why.to_owned())));
    }
}

async fn run(
    client: redis::Client,
    scripts: Vec<&'static str>,
    mut rx: mpsc::Receiver<Op>,
    up: Arc<AtomicBool>,
    connected: watch::Sender<u64>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut generation = 0u64;
    loop {
        let mut conn = match connect(&client, &scripts).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "redis unreachable");
                // Fail what arrives meanwhile instead of letting it wait.
                let until = tokio::time::Instant::now() + backoff;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => break,
                        op = rx.recv() => match op {
                            Some(op) => fail(op, "redis unreachable"),
                            None => return,
                        },
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        generation += 1;
        if generation > 1 {
            metrics::counter!(m::BRIDGE_RECONNECTS_TOTAL).increment(1);
        }
        info!(generation, "redis connected");
        up.store(true, Ordering::Release);
        let _ = connected.send(generation);
        let mut batch: Vec<Op> = Vec::with_capacity(BATCH);
        loop {
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for op in &mut batch {
                metrics::counter!(m::BRIDGE_COMMANDS_TOTAL, "kind" => op.kind).increment(1);
                pipe.add_command(std::mem::replace(&mut op.cmd, Cmd::new()));
            }
            let t0 = Instant::now();
            let res = pipe.query_async::<Vec<Value>>(&mut conn).await;
            metrics::histogram!(m::BRIDGE_REDIS_SECONDS).record(t0.elapsed().as_secs_f64());
            match res {
                Ok(values) if values.len() == batch.len() => {
                    let mut reload = false;
                    for (op, v) in batch.drain(..).zip(values) {
                        let v = match v {
                            Value::ServerError(e) => {
                                if e.code() == "NOSCRIPT" {
                                    reload = true;
                                }
                                warn!(kind = op.kind, error = ?e, "redis command failed");
                                Err(BridgeError::Unavailable(format!("redis: {e:?}")))
                            }
                            v => Ok(v),
                        };
                        if let Some(reply) = op.reply {
                            let _ = reply.send(v);
                        }
                    }
                    if reload {
                        // Someone flushed the script cache: reconnect, which reloads.
                        break;
                    }
                }
                Ok(_) | Err(_) => {
                    if let Err(e) = &res {
                        warn!(error = %e, "redis pipeline failed; reconnecting");
                    }
                    for op in batch.drain(..) {
                        fail(op, "redis connection lost");
                    }
                    break;
                }
            }
        }
        up.store(false, Ordering::Release);
    }
}
