//! Matching-pool shards. Searches are sharded by language (see
//! [`crate::engine::Engine::shard_for`]), so each shard is an independent actor and
//! matching runs on every core. The rules live in [`pool`]; this actor feeds it
//! arrivals, cancels and timer ticks, confirms each chosen group through the
//! bridge's atomic claim, and hands claimed groups to the room supervisor.

pub mod messages;
pub mod pool;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, WrapFuture};
use tracing::warn;

use self::messages::*;
use self::pool::{Entry, Match, Pool};
use crate::bridge::ClaimOutcome;
use crate::engine::Shared;
use crate::metrics as m;
use crate::rooms::messages::{CreateMatchRoom, MatchedMember};
use crate::rooms::RoomSupervisor;
use crate::session::messages::SessionEvent;

/// One shard of the waiting pool.
pub struct MatchShard {
    index: usize,
    label: String,
    pool: Pool<SearchLink>,
    shared: Arc<Shared>,
    supervisor: Addr<RoomSupervisor>,
}

impl MatchShard {
    pub fn new(index: usize, shared: Arc<Shared>, supervisor: Addr<RoomSupervisor>) -> Self {
        let pool = Pool::new(shared.config.ladder.clone());
        Self { index, label: index.to_string(), pool, shared, supervisor }
    }

    fn report_size(&self) {
        metrics::gauge!(m::POOL_WAITING, "shard" => self.label.clone()).set(self.pool.len() as f64);
    }

    /// Try to complete a group for `ticket`; claim it if one is found.
    fn attempt(&mut self, ticket: u64, ctx: &mut Context<Self>) {
        let avoid = &self.shared.avoid;
        if let Some(found) = self.pool.try_match(
            ticket,
            Instant::now(),
            |a, b| avoid.avoids(a, b),
            |l: &SearchLink| l.events.connected(),
        ) {
            self.claim(found, ctx);
        }
    }

    /// Confirm a group through the bridge. Members are out of the pool while the
    /// claim runs, so no other search can pick them.
    fn claim(&mut self, found: Match<SearchLink>, ctx: &mut Context<Self>) {
        let keys = found.members.iter().map(|e| (e.user.clone(), e.ticket)).collect();
        let fut = self.shared.bridge.claim_match(keys);
        ctx.spawn(fut.into_actor(self).map(move |outcome, act, ctx| match outcome {
            Ok(ClaimOutcome::Claimed) => act.deliver(found, ctx),
            Ok(ClaimOutcome::Lost(lost)) => {
                metrics::counter!(m::CLAIM_CONFLICTS_TOTAL).increment(1);
                let keep = found.members.into_iter().filter(|e| !lost.contains(&e.user)).collect();
                act.shared.searching.fetch_sub(lost.len() as u64, Ordering::Relaxed);
                act.requeue(keep, false, ctx);
            }
            Err(e) => {
                warn!(error = %e, shard = act.index, "claim failed; members go back to the pool");
                act.requeue(found.members, false, ctx);
            }
        }));
    }

    /// A claimed group: hand it to the supervisor, unless a member vanished since the
    /// pick, in which case the others return to the pool at their old place.
    fn deliver(&mut self, found: Match<SearchLink>, ctx: &mut Context<Self>) {
        let (alive, gone): (Vec<_>, Vec<_>) =
            found.members.into_iter().partition(|e| e.link.events.connected());
        if !gone.is_empty() {
            self.shared.searching.fetch_sub(gone.len() as u64, Ordering::Relaxed);
            self.requeue(alive, true, ctx);
            return;
        }
        let now = Instant::now();
        let size = alive.len().to_string();
        metrics::counter!(m::MATCHES_TOTAL, "group_size" => size).increment(1);
        metrics::histogram!(m::MATCH_SHARED_INTERESTS).record(found.shared.len() as f64);
        let level = found.step.to_string();
        for e in &alive {
            metrics::histogram!(m::MATCH_LATENCY_SECONDS, "level" => level.clone())
                .record(now.saturating_duration_since(e.joined).as_secs_f64());
        }
        self.shared.searching.fetch_sub(alive.len() as u64, Ordering::Relaxed);
        self.shared.bridge.record_match(found.shared.clone());
        let members = alive
            .into_iter()
            .map(|e| MatchedMember {
                user: e.user,
                session_id: e.link.session_id,
                ticket: e.ticket,
                events: e.link.events,
            })
            .collect();
        self.supervisor.do_send(CreateMatchRoom { members, shared: found.shared });
        self.report_size();
    }

    /// Put entries back with their original ticket and arrival time, then retry them.
    /// `reclaim` re-registers searches the claim had already ended.
    fn requeue(&mut self, entries: Vec<Entry<SearchLink>>, reclaim: bool, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut tickets = Vec::with_capacity(entries.len());
        for e in entries {
            if reclaim {
                self.shared.bridge.begin_search(&e.user, e.ticket);
            }
            tickets.push(e.ticket);
            self.pool.insert(e, now);
        }
        for t in tickets {
            if self.pool.contains(t) {
                self.attempt(t, ctx);
            }
        }
        self.report_size();
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.pool.is_empty() {
            return;
        }
        let avoid = &self.shared.avoid;
        let out = self.pool.tick(
            Instant::now(),
            |a, b| avoid.avoids(a, b),
            |l: &SearchLink| l.events.connected(),
        );
        for e in out.expired {
            self.shared.bridge.end_search(&e.user, e.ticket);
            self.shared.searching.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!(m::SEARCHES_ENDED_TOTAL, "reason" => "timeout").increment(1);
            e.link.events.do_send(SessionEvent::SearchExpired { ticket: e.ticket });
        }
        for found in out.matches {
            self.claim(found, ctx);
        }
        self.report_size();
    }
}

impl Actor for MatchShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = Duration::from_millis(self.shared.config.match_tick_ms);
        ctx.run_interval(every, |act, ctx| act.tick(ctx));
    }
}

impl Handler<EnqueueSearch> for MatchShard {
    type Result = ();

    fn handle(&mut self, msg: EnqueueSearch, ctx: &mut Self::Context) {
        let entry = Entry {
            ticket: msg.ticket,
            user: msg.user,
            criteria: msg.criteria,
            joined: msg.joined,
            deadline: msg.joined + msg.max_wait,
            step: 0,
            link: msg.link,
        };
        self.shared.searching.fetch_add(1, Ordering::Relaxed);
        if self.pool.insert(entry, Instant::now()).is_some() {
            // The same user's older search, from a session that was replaced.
            self.shared.searching.fetch_sub(1, Ordering::Relaxed);
        }
        self.attempt(msg.ticket, ctx);
        self.report_size();
    }
}

impl Handler<CancelSearch> for MatchShard {
    type Result = CancelOutcome;

    fn handle(&mut self, msg: CancelSearch, _ctx: &mut Self::Context) -> CancelOutcome {
        if self.pool.ticket_of(&msg.user) != Some(msg.ticket) {
            return CancelOutcome::NotWaiting;
        }
        self.pool.remove(msg.ticket);
        self.shared.bridge.end_search(&msg.user, msg.ticket);
        self.shared.searching.fetch_sub(1, Ordering::Relaxed);
        let reason = match msg.reason {
            CancelReason::Cancelled => "cancelled",
            CancelReason::Disconnected => "disconnected",
        };
        metrics::counter!(m::SEARCHES_ENDED_TOTAL, "reason" => reason).increment(1);
        self.report_size();
        CancelOutcome::Cancelled
    }
}
