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
//! exponential backoff (asking the sentinels for the current primary first, when
//! the URL names them), loads the scripts again and reports the reconnect so the
//! bridge can resync. A `READONLY` answer (the server was demoted to a replica)
//! forces a reconnect too.
//!
//! Replica acknowledgement: a command queued with [`Pipe::call_durable`] is
//! confirmed only once `WAIT n timeout` says `n` replicas hold it. One `WAIT` ends
//! every pipeline that carries such a command (it covers every write the
//! connection made before it), so its cost is one replica round trip per pipeline,
//! not per message; while it waits the pipe sends nothing else.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{Cmd, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::target::{addr_of, Target};
use crate::bridge::BridgeError;
use crate::metrics as m;

/// Most commands sent in one pipeline.
const BATCH: usize = 512;
/// Longest one pipeline may take before the connection counts as dead.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the pipe checks its server: with Sentinel, that the sentinels still
/// name it the primary; under the default ack policy, how many replicas it has.
const CHECK_EVERY: Duration = Duration::from_secs(5);
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

/// Whether a durable write may wait for a busy pipe's linger (nothing else does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// It may: a chat send, whose ack waits for the replicas anyway.
    Gather,
    /// It goes out with the next pipeline: a step of a chain that a user waits on
    /// (a claim, a join, an offer's recorded outcome), and also what nobody
    /// answers, such as an offer published to another node.
    Now,
}

impl Op {
    /// Whether this op may wait for a busy pipe's linger (see [`Pace`]).
    fn may_linger(&self) -> bool {
        matches!(self.reply, Reply::Durable(_, Pace::Gather))
    }
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
    /// The reply, and whether enough replicas confirmed the write (`WAIT`; true
    /// when none are asked for); and whether it may wait for the linger.
    Durable(oneshot::Sender<Result<(Value, bool), BridgeError>>, Pace),
    /// Each command's own result, in order.
    Many(oneshot::Sender<Result<Vec<Result<Value, BridgeError>>, BridgeError>>),
}

/// How the pipe sends: how many replicas must confirm a durable write and how
/// long to wait for them, and how long a busy pipe gathers commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipePolicy {
    /// `None`: 1 when the primary reports connected replicas, else 0 (read on
    /// every connect and every few seconds).
    pub replicas: Option<u32>,
    /// `WAIT`'s timeout (ms).
    pub timeout_ms: u64,
    /// Under load, at most one pipeline starts per this many ms: what arrives
    /// meanwhile joins it (0: send at once). A pipe idle for longer sends at once,
    /// and so does one given anything but a chat send (see [`Pace`]).
    pub linger_ms: u64,
}

impl Default for PipePolicy {
    fn default() -> Self {
        PipePolicy { replicas: None, timeout_ms: 500, linger_ms: 5 }
    }
}

/// The queue's sending side.
#[derive(Clone)]
pub struct Pipe {
    /// Bounded so a stuck store cannot grow this node's memory without limit.
    tx: mpsc::Sender<Op>,
    /// True while the command connection is up.
    pub up: Arc<AtomicBool>,
    /// Replicas a durable write waits for now (see [`PipePolicy`]).
    wait_replicas: Arc<AtomicU32>,
    policy: PipePolicy,
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

    /// Queue a write whose acknowledgement must survive the loss of the primary and
    /// wait for its reply and whether enough replicas confirmed it (see the module
    /// documentation). `pace`: whether it may wait for a busy pipe's linger.
    pub fn call_durable(
        &self,
        kind: &'static str,
        cmd: Cmd,
        pace: Pace,
    ) -> impl std::future::Future<Output = Result<(Value, bool), BridgeError>> + Send + 'static
    {
        let (tx, rx) = oneshot::channel();
        let queued =
            self.tx.try_send(Op { cmds: Cmds::One(cmd), kind, reply: Reply::Durable(tx, pace) });
        async move {
            if queued.is_err() {
                return Err(BridgeError::Unavailable("redis command queue full".into()));
            }
            rx.await.unwrap_or_else(|_| Err(BridgeError::Unavailable("redis pipe stopped".into())))
        }
    }

    /// Whether `other` queues to the same task.
    pub fn same(&self, other: &Pipe) -> bool {
        self.tx.same_channel(&other.tx)
    }

    /// Replicas a durable write waits for now.
    pub fn wait_replicas(&self) -> u32 {
        self.wait_replicas.load(Ordering::Acquire)
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

/// `connected_slaves:N` of an `INFO replication` answer.
pub fn connected_replicas(info: &str) -> Option<u32> {
    info.lines().find_map(|l| l.trim().strip_prefix("connected_slaves:")?.parse().ok())
}

/// The scripts every connection loads when it is made. Filled in once, before any
/// pipe's task runs: the append script carries the engine's settings, which the
/// bridge learns when it is attached.
#[derive(Clone, Default)]
pub struct ScriptSet(Arc<OnceLock<Arc<[String]>>>);

impl ScriptSet {
    /// Fix the sources (a second call changes nothing).
    pub fn set(&self, sources: Arc<[String]>) {
        let _ = self.0.set(sources);
    }

    fn all(&self) -> &[String] {
        self.0.get().map(|s| &s[..]).unwrap_or(&[])
    }
}

/// The pipe's task, not yet running: commands queue until it is spawned.
pub struct Runner {
    target: Target,
    scripts: ScriptSet,
    rx: mpsc::Receiver<Op>,
    pipe: Pipe,
    connected: Arc<watch::Sender<u64>>,
    reseed_pending: Arc<AtomicBool>,
}

impl Runner {
    /// Send the queue to Redis until every [`Pipe`] is gone.
    pub async fn run(self) {
        let Runner { target, scripts, rx, pipe, connected, reseed_pending } = self;
        // The task's own handle must not keep the queue open.
        let shared = Shared {
            up: pipe.up.clone(),
            wait: pipe.wait_replicas.clone(),
            policy: pipe.policy,
            reseed_pending,
        };
        drop(pipe);
        run(target, scripts, rx, shared, connected).await
    }
}

/// What the task shares with the pipes.
struct Shared {
    up: Arc<AtomicBool>,
    wait: Arc<AtomicU32>,
    policy: PipePolicy,
    /// Set on a reconnect; the bridge clears it once its resync has re-seeded.
    reseed_pending: Arc<AtomicBool>,
}

/// Make the pipe and its task, to be spawned where the pipe's callers run.
/// `scripts` are loaded on every (re)connect; each reconnect bumps `connected` so
/// the bridge resyncs.
pub fn new(
    target: Target,
    scripts: ScriptSet,
    connected: Arc<watch::Sender<u64>>,
    policy: PipePolicy,
    reseed_pending: Arc<AtomicBool>,
) -> (Pipe, Runner) {
    let (tx, rx) = mpsc::channel(QUEUE_CAP);
    let up = Arc::new(AtomicBool::new(false));
    let wait_replicas = Arc::new(AtomicU32::new(policy.replicas.unwrap_or(0)));
    let pipe = Pipe { tx, up, wait_replicas, policy };
    (pipe.clone(), Runner { target, scripts, rx, pipe, connected, reseed_pending })
}

/// Connect to the server to talk to now (the sentinels' primary, when they are
/// named), load the scripts and, under the default ack policy, read how many
/// replicas the primary has.
async fn connect(
    target: &Target,
    scripts: &ScriptSet,
    shared: &Shared,
) -> redis::RedisResult<(MultiplexedConnection, String)> {
    let client = target.client().await?;
    let addr = addr_of(&client);
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(
            ROUND_TRIP_TIMEOUT + Duration::from_millis(shared.policy.timeout_ms),
        ));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    for s in scripts.all() {
        let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(s).query_async(&mut conn).await?;
    }
    if shared.policy.replicas.is_none() {
        let info: String = redis::cmd("INFO").arg("replication").query_async(&mut conn).await?;
        let n = connected_replicas(&info).unwrap_or(0).min(1);
        shared.wait.store(n, Ordering::Release);
    }
    Ok((conn, addr))
}

fn fail(op: Op, why: &str) {
    let err = BridgeError::Unavailable(why.to_owned());
    match op.reply {
        Reply::None => {}
        Reply::One(reply) => {
            let _ = reply.send(Err(err));
        }
        Reply::Durable(reply, _) => {
            let _ = reply.send(Err(err));
        }
        Reply::Many(reply) => {
            let _ = reply.send(Err(err));
        }
    }
}

/// One command's reply: a server error becomes `Err`. `NOSCRIPT` (the script
/// cache was flushed) asks for a reconnect, which reloads the scripts; so do
/// `READONLY` and `MASTERDOWN` (the server is a replica now: a reconnect asks the
/// sentinels for the new primary) and `NOREPLICAS` (a primary configured with
/// `min-replicas-to-write` lost its replicas, as one does when a replica was
/// promoted away from it).
fn reply_of(kind: &'static str, v: Value, reload: &mut bool) -> Result<Value, BridgeError> {
    match v {
        Value::ServerError(e) => {
            if let Some(r) = super::cluster::redirect(e.code(), e.details()) {
                // Redis Cluster: the router sends the command where it is told.
                debug!(kind, redirect = ?r, "redis redirected a command");
                return Err(BridgeError::Redirected(r));
            }
            if matches!(e.code(), "NOSCRIPT" | "READONLY" | "MASTERDOWN" | "NOREPLICAS") {
                *reload = true;
            }
            warn!(kind, error = ?e, "redis command failed");
            Err(BridgeError::Unavailable(format!("redis: {e:?}")))
        }
        v => Ok(v),
    }
}

/// With Sentinel: an error when the sentinels name another server than `addr`
/// as the primary (a failover happened while this connection stayed up, e.g. a
/// switchover that has not demoted this server yet). A failed lookup is no
/// verdict.
async fn check_primary(target: &Target, addr: &str) -> Result<(), String> {
    if !target.is_sentinel() {
        return Ok(());
    }
    match target.client().await {
        Ok(c) if addr_of(&c) != addr => {
            Err(format!("the sentinels name {} as the primary now", addr_of(&c)))
        }
        Ok(_) => Ok(()),
        Err(e) => {
            debug!(error = %e, "could not ask the sentinels for the primary");
            Ok(())
        }
    }
}

/// The periodic check of the connection's server: [`check_primary`], then under
/// the default ack policy its replicas. The count a durable write waits for goes
/// up at once when a replica appears, but down to 0 only after two checks in a
/// row found none, the second still naming this server the primary: a primary
/// whose replica was just promoted away from it has none either, and writes it
/// acknowledged without a replica would be lost when it is demoted.
async fn check_server(
    target: &Target,
    addr: &str,
    conn: &mut MultiplexedConnection,
    shared: &Shared,
    replica_less: &mut u32,
) -> Result<(), String> {
    check_primary(target, addr).await?;
    if shared.policy.replicas.is_some() {
        return Ok(());
    }
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await
        .map_err(|e| format!("INFO replication failed: {e}"))?;
    let n = connected_replicas(&info).unwrap_or(0).min(1);
    let now = shared.wait.load(Ordering::Acquire);
    if n >= now {
        *replica_less = 0;
        if n > now {
            info!(server = %addr, "the primary has a replica: sends wait for it");
        }
        shared.wait.store(n, Ordering::Release);
    } else {
        *replica_less += 1;
        if *replica_less >= 2 {
            warn!(server = %addr, "the primary has no replica any more: sends no longer wait");
            shared.wait.store(n, Ordering::Release);
        }
    }
    Ok(())
}

async fn run(
    target: Target,
    scripts: ScriptSet,
    mut rx: mpsc::Receiver<Op>,
    shared: Shared,
    connected: Arc<watch::Sender<u64>>,
) {
    let up = shared.up.clone();
    let mut backoff = Duration::from_millis(100);
    let mut generation = 0u64;
    loop {
        let (mut conn, addr) = match connect(&target, &scripts, &shared).await {
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
            // Until the bridge has re-seeded its rooms on this connection, a message
            // stored here could take a seq the members were already given (by a
            // server that failed over, or restarted empty): rooms across nodes
            // refuse sends until then (`Bridge::writable`), and what was queued
            // while connecting is failed, not sent ahead of the re-seed. The resync
            // redoes the searches and rooms those commands were about.
            shared.reseed_pending.store(true, Ordering::Release);
            while let Ok(op) = rx.try_recv() {
                fail(op, "redis reconnected; resyncing");
            }
        }
        let wait_replicas = shared.wait.load(Ordering::Acquire);
        info!(generation, server = %addr, wait_replicas, "redis connected");
        up.store(true, Ordering::Release);
        // Several pipes (one per primary of a cluster) may share the counter.
        connected.send_modify(|g| *g += 1);
        let mut batch: Vec<Op> = Vec::with_capacity(BATCH);
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + CHECK_EVERY, CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut replica_less = 0u32;
        let linger = Duration::from_millis(shared.policy.linger_ms);
        let now = tokio::time::Instant::now();
        let mut last_sent = now.checked_sub(linger).unwrap_or(now);
        loop {
            let first = tokio::select! {
                op = rx.recv() => match op {
                    Some(op) => op,
                    None => return,
                },
                _ = check.tick() => {
                    if let Err(why) = check_server(&target, &addr, &mut conn, &shared, &mut replica_less).await {
                        warn!(server = %addr, %why, "reconnecting");
                        break;
                    }
                    continue;
                }
            };
            batch.push(first);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            // A busy pipe (the last pipeline started less than `linger` ago)
            // gathers what comes until then: fewer, larger pipelines cost Redis
            // far less per command (one read and one write for many). Only while
            // everything gathered may wait, though (chat sends): anything else is
            // sent at once, with whatever has gathered.
            let due = last_sent + linger;
            let mut patient = batch.iter().all(Op::may_linger);
            while patient && batch.len() < BATCH && tokio::time::Instant::now() < due {
                tokio::select! {
                    op = rx.recv() => match op {
                        Some(op) => {
                            patient = op.may_linger();
                            batch.push(op);
                        }
                        None => return,
                    },
                    _ = tokio::time::sleep_until(due) => break,
                }
            }
            last_sent = tokio::time::Instant::now();
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
            // One WAIT after the pipeline's writes confirms all of them.
            let wait_n = shared.wait.load(Ordering::Acquire);
            let waits = wait_n > 0 && batch.iter().any(|op| matches!(op.reply, Reply::Durable(..)));
            if waits {
                pipe.add_command(
                    redis::cmd("WAIT").arg(wait_n).arg(shared.policy.timeout_ms.max(1)).clone(),
                );
            }
            let expected: usize = sizes.iter().sum::<usize>() + usize::from(waits);
            let t0 = Instant::now();
            let res = pipe.query_async::<Vec<Value>>(&mut conn).await;
            metrics::histogram!(m::BRIDGE_REDIS_SECONDS).record(t0.elapsed().as_secs_f64());
            match res {
                Ok(mut values) if values.len() == expected => {
                    let mut reload = false;
                    let confirmed = if waits {
                        let acked = values.pop().as_ref().and_then(|v| match v {
                            Value::Int(n) => Some(*n),
                            _ => None,
                        });
                        let ok = acked.is_some_and(|n| n >= i64::from(wait_n));
                        if !ok {
                            metrics::counter!(m::BRIDGE_UNCONFIRMED_WRITES_TOTAL).increment(1);
                            warn!(
                                asked = wait_n,
                                acked = ?acked,
                                "fewer replicas than asked confirmed the writes in time"
                            );
                        }
                        ok
                    } else {
                        true
                    };
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
                            Reply::Durable(reply, _) => {
                                let v = values.next().unwrap_or(Value::Nil);
                                let r = reply_of(op.kind, v, &mut reload).map(|v| (v, confirmed));
                                let _ = reply.send(r);
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
                        // The script cache was flushed, or the server is a replica
                        // now: reconnect (to the primary), which reloads.
                        warn!(server = %addr, "redis asked for a reconnect (NOSCRIPT or READONLY)");
                        break;
                    }
                    if !confirmed {
                        // Its replica may have been promoted away from it.
                        if let Err(why) = check_primary(&target, &addr).await {
                            warn!(server = %addr, %why, "reconnecting");
                            break;
                        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What a pipe queues for each way of calling it, and whether each may wait.
    #[test]
    fn only_sends_asked_to_gather_wait_for_the_linger() {
        let (tx, mut rx) = mpsc::channel(8);
        let pipe = Pipe {
            tx,
            up: Arc::new(AtomicBool::new(true)),
            wait_replicas: Arc::new(AtomicU32::new(0)),
            policy: PipePolicy::default(),
        };
        let ping = || redis::cmd("PING");
        pipe.fire("fire", ping());
        drop(pipe.call("call", ping()));
        drop(pipe.call_many("many", vec![ping(), ping()]));
        drop(pipe.call_durable("offer", ping(), Pace::Now));
        drop(pipe.call_durable("append", ping(), Pace::Gather));
        let mut seen = Vec::new();
        while let Ok(op) = rx.try_recv() {
            seen.push((op.kind, op.may_linger()));
        }
        assert_eq!(
            seen,
            [("fire", false), ("call", false), ("many", false), ("offer", false), ("append", true)]
        );
    }
}
