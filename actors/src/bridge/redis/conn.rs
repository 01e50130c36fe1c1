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

/// Most commands one [`Pipe::call_many`] should carry (callers chunk larger sets),
/// so a bulk read or refresh never makes one pipeline much longer than [`BATCH`].
pub const MANY_CHUNK: usize = 1_000;

/// One queued command (or several sent back to back) and where the reply goes.
pub struct Op {
    pub cmds: Cmds,
    pub kind: &'static str,
    pub reply: Reply,
}

/// The command(s) of one [`Op`].
pub enum Cmds {
    One(Cmd),
    /// Sent consecutively in the same pipeline; one reply per command.
    Many(Vec<Cmd>),
}

impl Cmds {
    fn len(&self) -> usize {
        match self {
            Cmds::One(_) => 1,
            Cmds::Many(v) => v.len(),
        }
    }
}

/// Where an [`Op`]'s reply goes.
pub enum Reply {
    /// Nobody waits (fire and forget).
    None,
    One(oneshot::Sender<Result<Value, BridgeError>>),
    /// Each command's own result, in order.
    Many(oneshot::Sender<Result<Vec<Result<Value, BridgeError>>, BridgeError>>),
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
        if self.tx.try_send(Op { cmds: Cmds::One(cmd), kind, reply: Reply::None }).is_err() {
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
        let queued = self.tx.try_send(Op { cmds: Cmds::One(cmd), kind, reply: Reply::One(tx) });
        async move {
            if queued.is_err() {
                return Err(BridgeError::Unavailable("redis command queue full".into()));
            }
            rx.await.unwrap_or_else(|_| Err(BridgeError::Unavailable("redis pipe stopped".into())))
        }
    }

    /// Queue several commands as one entry (they go out back to back in one
    /// pipeline: one round trip for all) and wait for every reply, in order. The
    /// outer error means none was applied for sure (queue full, connection lost);
    /// an inner one is that command's own error. Keep `cmds` at most
    /// [`MANY_CHUNK`] long.
    pub fn call_many(
        &self,
        kind: &'static str,
        cmds: Vec<Cmd>,
    ) -> impl std::future::Future<Output = Result<Vec<Result<Value, BridgeError>>, BridgeError>>
           + Send
           + 'static {
        let (tx, rx) = oneshot::channel();
        let empty = cmds.is_empty();
        let queued = if empty {
            Ok(())
        } else {
            self.tx.try_send(Op { cmds: Cmds::Many(cmds), kind, reply: Reply::Many(tx) })
        };
        async move {
            if empty {
                return Ok(Vec::new());
            }
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
    let err = BridgeError::Unavailable(why.to_owned());
    match op.reply {
        Reply::None => {}
        Reply::One(reply) => {
            let _ = reply.send(Err(err));
        }
        Reply::Many(reply) => {
            let _ = reply.send(Err(err));
        }
    }
}

/// One command's reply: a server error becomes `Err` (and `NOSCRIPT` asks for a
/// reconnect, which reloads the scripts).
fn reply_of(kind: &'static str, v: Value, reload: &mut bool) -> Result<Value, BridgeError> {
    match v {
        Value::ServerError(e) => {
            if e.code() == "NOSCRIPT" {
                *reload = true;
            }
            warn!(kind, error = ?e, "redis command failed");
            Err(BridgeError::Unavailable(format!("redis: {e:?}")))
        }
        v => Ok(v),
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
            // How many replies are each op's.
            let mut sizes = Vec::with_capacity(batch.len());
            for op in &mut batch {
                let n = op.cmds.len();
                sizes.push(n);
                metrics::counter!(m::BRIDGE_COMMANDS_TOTAL, "kind" => op.kind).increment(n as u64);
                match std::mem::replace(&mut op.cmds, Cmds::Many(Vec::new())) {
                    Cmds::One(cmd) => {
                        pipe.add_command(cmd);
                    }
                    Cmds::Many(cmds) => {
                        for cmd in cmds {
                            pipe.add_command(cmd);
                        }
                    }
                }
            }
            let expected: usize = sizes.iter().sum();
            let t0 = Instant::now();
            let res = pipe.query_async::<Vec<Value>>(&mut conn).await;
            metrics::histogram!(m::BRIDGE_REDIS_SECONDS).record(t0.elapsed().as_secs_f64());
            match res {
                Ok(values) if values.len() == expected => {
                    let mut reload = false;
                    let mut values = values.into_iter();
                    for (op, n) in batch.drain(..).zip(sizes) {
                        match op.reply {
                            Reply::None => {
                                for v in values.by_ref().take(n) {
                                    let _ = reply_of(op.kind, v, &mut reload);
                                }
                            }
                            Reply::One(reply) => {
                                let v = values.next().unwrap_or(Value::Nil);
                                let _ = reply.send(reply_of(op.kind, v, &mut reload));
                            }
                            Reply::Many(reply) => {
                                let vs = values
                                    .by_ref()
                                    .take(n)
                                    .map(|v| reply_of(op.kind, v, &mut reload))
                                    .collect();
                                let _ = reply.send(Ok(vs));
                            }
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
