//! Where the bridge's commands go: the ordered pipe to one server (a fixed one, or
//! the primary Sentinel names), or the slot router of a Redis Cluster. Both answer
//! the same calls, so the bridge does not care which it has.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use redis::{Cmd, Value};
use tracing::debug;

use super::cluster::Router;
use super::conn::{Pace, Pipe};
use crate::bridge::BridgeError;

type Fut<T> = Pin<Box<dyn Future<Output = Result<T, BridgeError>> + Send>>;

#[derive(Clone)]
pub enum Store {
    One(Pipe),
    Cluster(Arc<Router>),
}

impl Store {
    /// Queue a command whose reply nobody waits for. On a cluster a task follows
    /// its redirects; commands to one slot keep their order either way.
    pub fn fire(&self, kind: &'static str, cmd: Cmd) {
        match self {
            Store::One(p) => p.fire(kind, cmd),
            Store::Cluster(r) => {
                let f = r.call(kind, cmd, None);
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move {
                            if let Err(e) = f.await {
                                debug!(kind, error = %e, "redis cluster command failed");
                            }
                        });
                    }
                    Err(_) => debug!(kind, "no runtime to follow a cluster command; dropped"),
                }
            }
        }
    }

    /// Queue a command and wait for its reply.
    pub fn call(&self, kind: &'static str, cmd: Cmd) -> Fut<Value> {
        match self {
            Store::One(p) => Box::pin(p.call(kind, cmd)),
            Store::Cluster(r) => {
                let f = r.call(kind, cmd, None);
                Box::pin(async move { f.await.map(|(v, _)| v) })
            }
        }
    }

    /// A write confirmed by the replicas asked for (`WAIT`): the reply and
    /// whether they confirmed it.
    pub fn call_durable(&self, kind: &'static str, cmd: Cmd, pace: Pace) -> Fut<(Value, bool)> {
        match self {
            Store::One(p) => Box::pin(p.call_durable(kind, cmd, pace)),
            Store::Cluster(r) => Box::pin(r.call(kind, cmd, Some(pace))),
        }
    }

    /// Several commands, answered in order (see [`Pipe::call_many`]).
    pub fn call_many(
        &self,
        kind: &'static str,
        cmds: Vec<Cmd>,
    ) -> Fut<Vec<Result<Value, BridgeError>>> {
        match self {
            Store::One(p) => Box::pin(p.call_many(kind, cmds)),
            Store::Cluster(r) => Box::pin(r.call_many(kind, cmds)),
        }
    }

    /// The store can take writes: the server's connection is up; on a cluster,
    /// every slot has a primary whose connection is up.
    pub fn is_up(&self) -> bool {
        match self {
            Store::One(p) => p.up.load(Ordering::Acquire),
            Store::Cluster(r) => r.is_up(),
        }
    }

    /// Replicas a durable write waits for now.
    pub fn wait_replicas(&self) -> u32 {
        match self {
            Store::One(p) => p.wait_replicas(),
            Store::Cluster(r) => r.wait_replicas(),
        }
    }

    /// Resolves once everything queued before it has been applied: a `PING`
    /// behind it on the pipe, on a cluster behind it on every primary's pipe.
    pub async fn barrier(&self) -> Result<(), BridgeError> {
        match self {
            Store::One(p) => p.call("ping", redis::cmd("PING")).await.map(|_| ()),
            Store::Cluster(r) => {
                let pings: Vec<_> =
                    r.pipes().into_iter().map(|p| p.call("ping", redis::cmd("PING"))).collect();
                for ping in pings {
                    ping.await?;
                }
                Ok(())
            }
        }
    }

    /// The cluster router, on a cluster.
    pub fn router(&self) -> Option<&Arc<Router>> {
        match self {
            Store::One(_) => None,
            Store::Cluster(r) => Some(r),
        }
    }
}
