//! Redis Cluster: one ordered pipe per primary, commands routed by hash slot.
//!
//! The [`Router`] reads the slot map (`CLUSTER SLOTS`) from any node that answers
//! (the known primaries first, then the URL's seeds) and keeps one [`Pipe`] of
//! [`super::conn`] per primary, so everything the single-server pipe gives holds
//! per primary: commands to one slot are applied in the order they were queued,
//! batching turns load into fewer round trips, and a durable write ends its
//! pipeline with `WAIT` on the primary that took it.
//!
//! Every script's keys share one hash slot (see CLUSTER.md), so a command goes to
//! exactly one primary. Replies that say the slot is elsewhere are followed:
//! * `MOVED slot host:port`: the map is stale; the slot's owner is noted at once,
//!   a full re-read is asked for, and the command is sent to the new owner;
//! * `ASK host:port`: the slot is being migrated and this key already left; the
//!   command goes to the importing node once, preceded by `ASKING`;
//! * `TRYAGAIN` (a multi-key command, such as a room's script, while its slot is
//!   half migrated) and `CLUSTERDOWN`: sent again every [`RETRY_PAUSE`] for up to
//!   [`RETRY_FOR`].
//!
//! Past [`MAX_REDIRECTS`] redirects, or [`RETRY_FOR`] of retries, the caller gets
//! `Unavailable` (retryable).
//!
//! The map is read again every [`MAP_EVERY`], at once after a redirect, and every
//! [`MAP_EVERY_DOWN`] while a slot has no reachable owner. When a primary left
//! the map (a failover), the bridge resyncs, as after a reconnect, and makes its
//! shard subscriptions anew; a slot migrated between primaries needs neither.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::{Arg, Cmd, Value};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use super::conn::{self, Pace, Pipe, PipePolicy};
use super::target::{ClusterTarget, Target};
use crate::bridge::BridgeError;

/// Hash slots of a Redis Cluster.
pub const SLOTS: usize = 16_384;
/// Redirects one command may follow before the caller is told to retry.
pub const MAX_REDIRECTS: usize = 5;
/// How often the slot map is read while everything is healthy.
const MAP_EVERY: Duration = Duration::from_secs(5);
/// How often while a slot has no reachable owner (a failover under way).
const MAP_EVERY_DOWN: Duration = Duration::from_millis(250);
/// Pause before a command answered `TRYAGAIN` or `CLUSTERDOWN` is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long such a command is retried: a slot migrated by `redis-cli --cluster
/// reshard` is split for milliseconds; longer means a stuck migration, and the
/// client is better told to retry than left waiting.
const RETRY_FOR: Duration = Duration::from_secs(1);
/// Longest one slot-map read may take per node asked.
const MAP_TIMEOUT: Duration = Duration::from_secs(1);
/// No owner (in [`Topology::owner`]).
const NOBODY: u16 = u16::MAX;

/// The hash slot of a key: CRC16 (XMODEM) of its hash tag — the part between the
/// first `{` and the next `}`, when not empty — or of the whole key, mod 16384.
pub fn slot(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&b| b == b'}').filter(|&len| len > 0).map(|len| &rest[..len])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tag) % SLOTS as u16
}

/// The slot a command is routed by: its first key (`EVALSHA`'s first declared
/// key; `SPUBLISH`'s channel), or `None` for commands that name none (`PING`,
/// `PUBLISH`, `WAIT`, a script without keys): any primary takes those.
pub fn slot_of(cmd: &Cmd) -> Option<u16> {
    let mut args = cmd.args_iter().map(|a| match a {
        Arg::Simple(b) => b,
        _ => &[][..],
    });
    let name = args.next()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVALSHA" | b"EVAL" | b"EVALSHA_RO" | b"EVAL_RO" => {
            let _script = args.next()?;
            let numkeys: usize = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
            if numkeys == 0 {
                return None;
            }
            args.next()?
        }
        b"PING" | b"PUBLISH" | b"WAIT" | b"INFO" | b"SCRIPT" | b"CLUSTER" | b"ASKING" => {
            return None
        }
        _ => args.next()?,
    };
    Some(slot(key))
}

/// A reply that sends the command elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// The slot's owner is `addr` now.
    Moved { slot: u16, addr: String },
    /// This key is being migrated to `addr`: ask it there once.
    Ask { addr: String },
    /// Try again shortly (`TRYAGAIN`, `CLUSTERDOWN`).
    Retry,
}

/// Read a redirect from a server error's code and detail, `None` if it is none.
pub fn redirect(code: &str, detail: Option<&str>) -> Option<Redirect> {
    let mut parts = detail.unwrap_or_default().split_whitespace();
    match code {
        "MOVED" => {
            let slot = parts.next()?.parse().ok()?;
            Some(Redirect::Moved { slot, addr: parts.next()?.to_owned() })
        }
        "ASK" => {
            let _slot = parts.next()?;
            Some(Redirect::Ask { addr: parts.next()?.to_owned() })
        }
        "TRYAGAIN" | "CLUSTERDOWN" => Some(Redirect::Retry),
        _ => None,
    }
}

/// `host:port` split at the last colon.
fn split_addr(addr: &str) -> Option<(&str, u16)> {
    let (h, p) = addr.rsplit_once(':')?;
    Some((h.trim_start_matches('[').trim_end_matches(']'), p.parse().ok()?))
}

/// One slot range of a `CLUSTER SLOTS` answer and its primary's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub primary: String,
}

/// Read a `CLUSTER SLOTS` answer: `[[start, end, [host, port, id, …], replicas…], …]`.
/// A primary announced without a host (an empty or `?` endpoint) is reached at
/// the address the map was read from (`asked`).
pub fn parse_slots(v: &Value, asked: &str) -> Vec<SlotRange> {
    let Value::Array(ranges) = v else { return Vec::new() };
    let asked_host = split_addr(asked).map(|(h, _)| h.to_owned()).unwrap_or_default();
    ranges
        .iter()
        .filter_map(|r| {
            let Value::Array(r) = r else { return None };
            let int = |v: &Value| match v {
                Value::Int(i) => u16::try_from(*i).ok(),
                _ => None,
            };
            let (start, end) = (int(r.first()?)?, int(r.get(1)?)?);
            let Value::Array(node) = r.get(2)? else { return None };
            let host = match node.first()? {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                _ => String::new(),
            };
            let host = if host.is_empty() || host == "?" { asked_host.clone() } else { host };
            let port = int(node.get(1)?)?;
            let primary = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            (start <= end && usize::from(end) < SLOTS).then_some(SlotRange { start, end, primary })
        })
        .collect()
}

/// The slot map and the pipe of each primary in it.
struct Topology {
    /// The owner of each slot: an index into `primaries`, or [`NOBODY`].
    owner: Vec<u16>,
    /// Every slot has an owner.
    covered: bool,
    primaries: Vec<(String, Pipe)>,
}

/// Routes commands to the primaries of a Redis Cluster (see the module doc).
pub struct Router {
    target: Arc<ClusterTarget>,
    scripts: conn::ScriptSet,
    policy: PipePolicy,
    connected: Arc<watch::Sender<u64>>,
    reseed_pending: Arc<AtomicBool>,
    topo: RwLock<Topology>,
    /// Asks the map task to read the map now.
    reread: Notify,
    /// The map has been read at least once.
    mapped: AtomicBool,
    /// Bumped when a slot changes owner: shard subscriptions follow.
    moves: watch::Sender<u64>,
}

impl Router {
    pub fn new(
        target: Arc<ClusterTarget>,
        scripts: conn::ScriptSet,
        policy: PipePolicy,
        connected: Arc<watch::Sender<u64>>,
        reseed_pending: Arc<AtomicBool>,
    ) -> Arc<Router> {
        Arc::new(Router {
            target,
            scripts,
            policy,
            connected,
            reseed_pending,
            topo: RwLock::new(Topology {
                owner: vec![NOBODY; SLOTS],
                covered: false,
                primaries: Vec::new(),
            }),
            reread: Notify::new(),
            mapped: AtomicBool::new(false),
            moves: watch::channel(0).0,
        })
    }

    /// Changes whenever a slot changed owner (a failover, a migration).
    pub fn moves(&self) -> watch::Receiver<u64> {
        self.moves.subscribe()
    }

    /// Every slot has an owner and every primary's pipe is connected.
    pub fn is_up(&self) -> bool {
        let t = self.topo.read().unwrap_or_else(|p| p.into_inner());
        self.mapped.load(Ordering::Acquire)
            && !t.primaries.is_empty()
            && t.covered
            && t.primaries.iter().all(|(_, p)| p.up.load(Ordering::Acquire))
    }

    /// The primaries now, with whether each one's pipe is connected.
    pub fn primaries(&self) -> Vec<(String, bool)> {
        let t = self.topo.read().unwrap_or_else(|p| p.into_inner());
        t.primaries.iter().map(|(a, p)| (a.clone(), p.up.load(Ordering::Acquire))).collect()
    }

    /// Every primary's pipe.
    pub fn pipes(&self) -> Vec<Pipe> {
        let t = self.topo.read().unwrap_or_else(|p| p.into_inner());
        t.primaries.iter().map(|(_, p)| p.clone()).collect()
    }

    /// The owner of `slot` now, if any.
    pub fn owner_of(&self, slot: u16) -> Option<String> {
        let t = self.topo.read().unwrap_or_else(|p| p.into_inner());
        let i = *t.owner.get(usize::from(slot))?;
        t.primaries.get(usize::from(i)).map(|(a, _)| a.clone())
    }

    /// Replicas a durable write waits for (the most any primary asks).
    pub fn wait_replicas(&self) -> u32 {
        let t = self.topo.read().unwrap_or_else(|p| p.into_inner());
        t.primaries.iter().map(|(_, p)| p.wait_replicas()).max().unwrap_or(0)
    }

    /// The pipe for `slot` (any primary's for `None`).
    fn pipe_for(&self, slot: Option<u16>) -> Result<Pipe, BridgeError> {
        let t = self.topo.read().unwrap_or_else(|p| p.into_inner());
        let i = match slot {
            Some(s) => t.owner[usize::from(s)],
            None => t
                .primaries
                .iter()
                .position(|(_, p)| p.up.load(Ordering::Acquire))
                .map_or(0, |i| i as u16),
        };
        match t.primaries.get(usize::from(i)) {
            Some((_, pipe)) => Ok(pipe.clone()),
            None => {
                drop(t);
                self.reread.notify_one();
                Err(BridgeError::Unavailable(match slot {
                    Some(s) => format!("redis cluster: slot {s} has no known owner"),
                    None => "redis cluster: no primary known yet".into(),
                }))
            }
        }
    }

    /// The pipe of the primary at `addr`, made when it is not in the map (an
    /// `ASK` target, or an owner named by `MOVED` before the map says so).
    fn pipe_at(&self, addr: &str) -> Result<Pipe, BridgeError> {
        if let Some(p) = self.find(addr) {
            return Ok(p);
        }
        let mut t = self.topo.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, p)) = t.primaries.iter().find(|(a, _)| a == addr) {
            return Ok(p.clone());
        }
        let pipe = self.spawn_pipe(addr)?;
        t.primaries.push((addr.to_owned(), pipe.clone()));
        Ok(pipe)
    }

    fn find(&self, addr: &str) -> Option<Pipe> {
        let t = self.topo.read().unwrap_or_else(|p| p.into_inner());
        t.primaries.iter().find(|(a, _)| a == addr).map(|(_, p)| p.clone())
    }

    /// A new pipe to the primary at `addr`, its task running on this runtime.
    fn spawn_pipe(&self, addr: &str) -> Result<Pipe, BridgeError> {
        let (host, port) = split_addr(addr)
            .ok_or_else(|| BridgeError::Unavailable(format!("bad node address {addr:?}")))?;
        let client = self
            .target
            .node_client(host, port)
            .map_err(|e| BridgeError::Unavailable(format!("redis cluster node {addr}: {e}")))?;
        let (pipe, runner) = conn::new(
            Target::Direct(Box::new(client)),
            self.scripts.clone(),
            self.connected.clone(),
            self.policy,
            self.reseed_pending.clone(),
        );
        tokio::spawn(runner.run());
        Ok(pipe)
    }

    /// `MOVED`: note the slot's new owner at once and ask for a full re-read.
    fn moved(&self, slot: u16, addr: &str) -> Result<Pipe, BridgeError> {
        let pipe = self.pipe_at(addr)?;
        {
            let mut t = self.topo.write().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = t.primaries.iter().position(|(a, _)| a == addr) {
                t.owner[usize::from(slot)] = i as u16;
            }
        }
        self.reread.notify_one();
        Ok(pipe)
    }

    /// Queue `cmd` now (so commands to one slot keep their order) and follow
    /// redirects until it is answered. `durable`: wait for the replicas (`WAIT`),
    /// at that pace (see [`Pace`]).
    pub fn call(
        self: &Arc<Self>,
        kind: &'static str,
        cmd: Cmd,
        durable: Option<Pace>,
    ) -> impl std::future::Future<Output = Result<(Value, bool), BridgeError>> + Send + 'static
    {
        let slot = slot_of(&cmd);
        let first = self.pipe_for(slot).map(|p| send(&p, kind, cmd.clone(), durable));
        let this = self.clone();
        async move {
            let mut res = match first {
                Ok(f) => f.await,
                Err(e) => Err(e),
            };
            let (mut redirects, since) = (0, tokio::time::Instant::now());
            while let Err(BridgeError::Redirected(r)) = &res {
                let retry = *r == Redirect::Retry;
                if retry && since.elapsed() >= RETRY_FOR || !retry && redirects >= MAX_REDIRECTS {
                    break;
                }
                redirects += usize::from(!retry);
                res = this.follow(r.clone(), kind, &cmd, durable).await;
            }
            match res {
                Err(BridgeError::Redirected(r)) => Err(BridgeError::Unavailable(format!(
                    "redis cluster: too many redirects ({r:?})"
                ))),
                other => other,
            }
        }
    }

    /// Send `cmd` where `r` says.
    async fn follow(
        &self,
        r: Redirect,
        kind: &'static str,
        cmd: &Cmd,
        durable: Option<Pace>,
    ) -> Result<(Value, bool), BridgeError> {
        match r {
            Redirect::Moved { slot, addr } => {
                debug!(slot, %addr, kind, "MOVED");
                let pipe = self.moved(slot, &addr)?;
                send(&pipe, kind, cmd.clone(), durable).await
            }
            Redirect::Ask { addr } => {
                debug!(%addr, kind, "ASK");
                let pipe = self.pipe_at(&addr)?;
                let asked = pipe.call_many(kind, vec![redis::cmd("ASKING"), cmd.clone()]);
                let mut replies = asked.await?.into_iter();
                let answer = replies.nth(1).unwrap_or(Ok(Value::Nil))?;
                if let Some(pace) = durable.filter(|_| pipe.wait_replicas() > 0) {
                    // `WAIT` covers every write this connection made before it.
                    let (_, confirmed) =
                        pipe.call_durable("wait", redis::cmd("PING"), pace).await?;
                    return Ok((answer, confirmed));
                }
                Ok((answer, true))
            }
            Redirect::Retry => {
                tokio::time::sleep(RETRY_PAUSE).await;
                self.reread.notify_one();
                let pipe = self.pipe_for(slot_of(cmd))?;
                send(&pipe, kind, cmd.clone(), durable).await
            }
        }
    }

    /// Several commands, each routed by its own slot, answered in order: one
    /// pipeline per primary, redirects followed per command.
    pub fn call_many(
        self: &Arc<Self>,
        kind: &'static str,
        cmds: Vec<Cmd>,
    ) -> impl std::future::Future<Output = Result<Vec<Result<Value, BridgeError>>, BridgeError>>
           + Send
           + 'static {
        // Group by primary, keeping each command's index.
        let mut groups: Vec<(Pipe, Vec<usize>, Vec<Cmd>)> = Vec::new();
        let mut failed = None;
        for (i, cmd) in cmds.iter().enumerate() {
            match self.pipe_for(slot_of(cmd)) {
                Ok(pipe) => match groups.iter_mut().find(|(p, _, _)| p.same(&pipe)) {
                    Some((_, idx, cs)) => {
                        idx.push(i);
                        cs.push(cmd.clone());
                    }
                    None => groups.push((pipe, vec![i], vec![cmd.clone()])),
                },
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let sent: Vec<_> = if failed.is_some() {
            Vec::new()
        } else {
            groups.into_iter().map(|(p, idx, cs)| (idx, p.call_many(kind, cs))).collect()
        };
        let this = self.clone();
        async move {
            if let Some(e) = failed {
                return Err(e);
            }
            let mut out: Vec<Result<Value, BridgeError>> =
                (0..cmds.len()).map(|_| Ok(Value::Nil)).collect();
            for (idx, fut) in sent {
                let replies = fut.await?;
                for (i, r) in idx.into_iter().zip(replies) {
                    out[i] = r;
                }
            }
            for (i, r) in out.iter_mut().enumerate() {
                if matches!(r, Err(BridgeError::Redirected(_))) {
                    *r = this.call(kind, cmds[i].clone(), None).await.map(|(v, _)| v);
                }
            }
            Ok(out)
        }
    }

    /// Keep the slot map current (see the module doc), until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            if let Err(e) = self.read_map().await {
                warn!(error = %e, "could not read the redis cluster's slot map");
            }
            let every = if self.is_up() { MAP_EVERY } else { MAP_EVERY_DOWN };
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.reread.notified() => {
                    // Several redirects at once ask once.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Read `CLUSTER SLOTS` from the first node that answers and apply it.
    async fn read_map(&self) -> Result<(), String> {
        let mut ask: Vec<String> = self.primaries().into_iter().map(|(a, _)| a).collect();
        for (h, p) in &self.target.url.seeds {
            let a = if h.contains(':') { format!("[{h}]:{p}") } else { format!("{h}:{p}") };
            if !ask.contains(&a) {
                ask.push(a);
            }
        }
        let mut last = String::from("no node to ask");
        for addr in ask {
            match self.slots_from(&addr).await {
                Ok(ranges) if !ranges.is_empty() => {
                    self.apply(&ranges);
                    return Ok(());
                }
                Ok(_) => last = format!("{addr}: empty slot map"),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    }

    async fn slots_from(&self, addr: &str) -> Result<Vec<SlotRange>, String> {
        let (host, port) = split_addr(addr).ok_or("bad address")?;
        let client = self.target.node_client(host, port).map_err(|e| e.to_string())?;
        let read = async {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(MAP_TIMEOUT))
                .set_response_timeout(Some(MAP_TIMEOUT));
            let mut c = client.get_multiplexed_async_connection_with_config(&config).await?;
            let state: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await?;
            if !state.lines().any(|l| l.trim() == "cluster_state:ok") {
                // A node cut off from the majority still answers with its old map.
                return Ok(Vec::new());
            }
            let v: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await?;
            Ok::<_, redis::RedisError>(parse_slots(&v, addr))
        };
        match tokio::time::timeout(MAP_TIMEOUT * 2, read).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Make `ranges` the map: pipes for new primaries, none for gone ones. A slot
    /// that changed owner makes the bridge resync (the new owner may be a
    /// promoted replica that lacks the last writes of the old one).
    fn apply(&self, ranges: &[SlotRange]) {
        let mut t = self.topo.write().unwrap_or_else(|p| p.into_inner());
        let old_owner: Vec<Option<String>> = t
            .owner
            .iter()
            .map(|&i| t.primaries.get(usize::from(i)).map(|(a, _)| a.clone()))
            .collect();
        let mut pipes: HashMap<String, Pipe> = t.primaries.drain(..).collect();
        let mut primaries: Vec<(String, Pipe)> = Vec::new();
        let mut owner = vec![NOBODY; SLOTS];
        for r in ranges {
            let i = match primaries.iter().position(|(a, _)| *a == r.primary) {
                Some(i) => i,
                None => {
                    let pipe = match pipes.remove(&r.primary) {
                        Some(p) => p,
                        None => match self.spawn_pipe(&r.primary) {
                            Ok(p) => {
                                info!(primary = %r.primary, "redis cluster primary found");
                                p
                            }
                            Err(e) => {
                                warn!(error = %e, "redis cluster primary unusable");
                                continue;
                            }
                        },
                    };
                    primaries.push((r.primary.clone(), pipe));
                    primaries.len() - 1
                }
            };
            for s in r.start..=r.end {
                owner[usize::from(s)] = i as u16;
            }
        }
        let was_mapped = self.mapped.swap(true, Ordering::AcqRel);
        let moved = owner
            .iter()
            .zip(&old_owner)
            .filter(|(&i, old)| {
                let now = primaries.get(usize::from(i)).map(|(a, _)| a);
                old.is_some() && now != old.as_ref()
            })
            .count();
        let gone = pipes.len();
        for (addr, _) in pipes {
            info!(node = %addr, "no longer a redis cluster primary");
        }
        t.covered = owner.iter().all(|&o| o != NOBODY);
        t.owner = owner;
        t.primaries = primaries;
        drop(t);
        if moved > 0 && gone == 0 {
            // A migration: the keys moved with their slots, and shard
            // subscriptions follow Redis's `sunsubscribe` one by one.
            debug!(slots = moved, "redis cluster slots migrated");
        }
        if was_mapped && moved > 0 && gone > 0 {
            // A failover (or a primary removed): the new owner may be a promoted
            // replica without the old primary's last writes, and every shard
            // subscription on the old one is gone.
            info!(slots = moved, "redis cluster slots changed owner; resyncing");
            self.reseed_pending.store(true, Ordering::Release);
            self.connected.send_modify(|g| *g += 1);
            self.moves.send_modify(|g| *g += 1);
        }
    }
}

/// A reply and whether the replicas asked for confirmed it.
type Answer =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(Value, bool), BridgeError>> + Send>>;

/// Queue one command on `pipe`: durable (replicas confirm) at a pace, or not.
fn send(pipe: &Pipe, kind: &'static str, cmd: Cmd, durable: Option<Pace>) -> Answer {
    match durable {
        Some(pace) => Box::pin(pipe.call_durable(kind, cmd, pace)),
        None => {
            let f = pipe.call(kind, cmd);
            Box::pin(async move { f.await.map(|v| (v, true)) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Known values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 12_739);
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"rdv:room:{r1}:seq"), slot(b"r1"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"), "an empty tag hashes the whole key");
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn commands_route_by_their_first_key() {
        let mut e = redis::cmd("EVALSHA");
        e.arg("abc").arg(2).arg("rdv:room:{r9}:seq").arg("rdv:room:{r9}:log").arg("x");
        assert_eq!(slot_of(&e), Some(slot(b"r9")));
        let mut k = redis::cmd("EVALSHA");
        k.arg("abc").arg(0).arg("x");
        assert_eq!(slot_of(&k), None, "a script without keys goes anywhere");
        assert_eq!(
            slot_of(redis::cmd("SADD").arg("rdv:pool:langs").arg("en")),
            Some(slot(b"rdv:pool:langs"))
        );
        assert_eq!(
            slot_of(redis::cmd("SPUBLISH").arg("rdv:{node:a}:ev").arg("p")),
            Some(slot(b"node:a"))
        );
        assert_eq!(slot_of(redis::cmd("PUBLISH").arg("rdv:cluster").arg("p")), None);
        assert_eq!(slot_of(&redis::cmd("PING")), None);
    }

    #[test]
    fn redirects_are_read_from_errors() {
        assert_eq!(
            redirect("MOVED", Some("3999 127.0.0.1:6381")),
            Some(Redirect::Moved { slot: 3999, addr: "127.0.0.1:6381".into() })
        );
        assert_eq!(
            redirect("ASK", Some("3999 127.0.0.1:6381")),
            Some(Redirect::Ask { addr: "127.0.0.1:6381".into() })
        );
        assert_eq!(redirect("TRYAGAIN", None), Some(Redirect::Retry));
        assert_eq!(redirect("CLUSTERDOWN", Some("The cluster is down")), Some(Redirect::Retry));
        assert_eq!(redirect("MOVED", Some("garbage")), None);
        assert_eq!(redirect("ERR", Some("x")), None);
    }

    #[test]
    fn a_slot_map_is_read_with_its_primaries() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![Value::BulkString(h.as_bytes().to_vec()), Value::Int(p)])
        };
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("", 7001)]),
            Value::Array(vec![Value::Int(10923), Value::Int(20000), node("h", 7002)]),
            Value::Int(3),
        ]);
        let r = parse_slots(&v, "10.1.1.1:7005");
        assert_eq!(
            r,
            [
                SlotRange { start: 0, end: 5460, primary: "127.0.0.1:7000".into() },
                SlotRange { start: 5461, end: 10922, primary: "10.1.1.1:7001".into() },
            ],
            "a primary without a host is at the asked node's host; a bad range is skipped"
        );
    }
}
