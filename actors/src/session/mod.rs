//! One session actor per connected user. It owns the socket's read half (as an
//! actor stream) and spawns the writer task that owns the write half; everything it
//! sends goes through its [`Outbox`]. It parses and validates frames, applies rate
//! limits, and routes actions: searches to the language's pool shard, room actions
//! to the room actor found in the directory. It never waits on another actor except
//! for `cancel_match`, whose answer depends on the shard.

pub mod messages;
pub mod validate;

use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Running,
    SpawnHandle, StreamHandler, WrapFuture,
};
use futures_util::StreamExt;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rendezvous_protocol::{close, ClientFrame, RoomDetail, ServerFrame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use self::messages::*;
use crate::bridge::Ticket;
use crate::budget::{cost, Budget};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::ids::{RoomId, UserId};
use crate::matching::ad_for;
use crate::matching::messages::{
    CancelOutcome, CancelReason, CancelSearch, EnqueueSearch, SearchLink,
};
use crate::matching::pool::Criteria;
use crate::metrics as m;
use crate::outbox::{run_writer, Class, Outbox};
use crate::registry::SessionEntry;
use crate::rooms::actor::RoomActor;
use crate::rooms::messages::*;
use crate::token::{Identity, LeaseStep, TokenLease};

/// Window in which rate-limit refusals are counted towards a flood close.
const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// The search this session runs, if any.
#[derive(Debug, Clone)]
struct ActiveSearch {
    ticket: Ticket,
    language: std::sync::Arc<str>,
}

pub struct SessionActor {
    engine: Engine,
    /// The client's address, counted in `Shared::per_ip` while the session lives.
    peer_ip: Option<std::net::IpAddr>,
    user: UserId,
    session_id: u64,
    outbox: Outbox,
    search: Option<ActiveSearch>,
    /// A search waits for the cluster-wide rate limit's answer.
    search_pending: bool,
    /// All frames from this connection (per session: a flood is per socket).
    frame_limiter: DefaultDirectRateLimiter,
    /// The user's `send` bucket ([`crate::state::Shared::send_limit`]), taken at
    /// the first `send` so that idle sessions hold none.
    send_limit: Option<std::sync::Arc<DefaultDirectRateLimiter>>,
    /// The user's action byte budget ([`crate::state::Shared::budget`]), taken at
    /// the first budgeted action.
    budget: Option<Budget>,
    last_seen: Instant,
    strikes: u32,
    strikes_since: Instant,
    /// The token's lifetime; `None` for anonymous sessions (nothing expires).
    token: Option<TokenLease>,
    /// The timer that next looks at `token` (replaced on `refresh`).
    token_timer: Option<SpawnHandle>,
}

/// Longest single wait of the token timer: far expiries are reached in steps, so
/// no timer is armed years ahead.
const TOKEN_TIMER_MAX: Duration = Duration::from_secs(24 * 3600);

impl SessionActor {
    /// Start a session for `user` on the current arbiter, with the writer task beside
    /// it. Call on the arbiter that registered the socket.
    /// `user` is a [`UserId`] (anonymous) or an [`Identity`] (with a token's expiry).
    pub fn start<S>(ws: WebSocketStream<S>, user: impl Into<Identity>, engine: Engine) -> Addr<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        Self::start_from(ws, user, engine, None)
    }

    /// [`Self::start`] for a client at `peer_ip`, counted against the per-IP cap.
    pub fn start_from<S>(
        ws: WebSocketStream<S>,
        user: impl Into<Identity>,
        engine: Engine,
        peer_ip: Option<std::net::IpAddr>,
    ) -> Addr<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let Identity { user, expires_at_ms } = user.into();
        let cfg = &engine.shared.config;
        let token = expires_at_ms.map(|at| TokenLease::new(at, cfg.token_grace_ms));
        let (sink, stream) = ws.split();
        let (outbox, rx) = Outbox::new(cfg.outbound_queue, cfg.outbound_queue_bytes);
        let write_timeout = Duration::from_millis(cfg.write_timeout_ms);
        let quota = Quota::per_second(
            std::num::NonZeroU32::new(cfg.frames_per_second.max(1))
                .unwrap_or(std::num::NonZeroU32::MIN),
        )
        .allow_burst(
            std::num::NonZeroU32::new(cfg.frames_burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN),
        );
        let session_id = engine.shared.next_session_id();
        let engine_clock = engine.shared.clock.clone();
        let frames_out = engine.shared.hot.frames_out.clone();
        SessionActor::create(move |ctx| {
            ctx.add_stream(stream);
            let addr = ctx.address();
            actix::spawn(async move {
                let closing = |code| addr.do_send(WriterClosed { code });
                run_writer(sink, rx, write_timeout, frames_out, closing).await;
            });
            SessionActor {
                engine,
                peer_ip,
                user,
                session_id,
                outbox,
                search: None,
                search_pending: false,
                frame_limiter: RateLimiter::direct_with_clock(quota, engine_clock),
                send_limit: None,
                budget: None,
                last_seen: Instant::now(),
                strikes: 0,
                strikes_since: Instant::now(),
                token,
                token_timer: None,
            }
        })
    }

    fn send(&self, frame: &ServerFrame) {
        self.outbox.push_frame(frame, Class::Essential);
    }

    fn send_error(&mut self, action: Option<&str>, err: &EngineError, ctx: &mut Context<Self>) {
        self.send_error_for(action, None, err, ctx);
    }

    /// [`Self::send_error`] echoing the failed frame's `client_msg_id`.
    fn send_error_for(
        &mut self,
        action: Option<&str>,
        client_msg_id: Option<String>,
        err: &EngineError,
        ctx: &mut Context<Self>,
    ) {
        let code = err.code();
        metrics::counter!(m::ERRORS_TOTAL, "code" => code.as_str()).increment(1);
        self.send(&ServerFrame::Error {
            code,
            message: err.to_string(),
            retry_after_ms: err.retry_after_ms(),
            action: action.map(str::to_owned),
            client_msg_id,
        });
        if let EngineError::RateLimited { action, .. } = err {
            metrics::counter!(m::RATE_LIMITED_TOTAL, "action" => *action).increment(1);
            self.strike(ctx);
        }
    }

    /// Count a rate-limit refusal; too many in the window closes with 4008.
    fn strike(&mut self, ctx: &mut Context<Self>) {
        if self.strikes_since.elapsed() > STRIKE_WINDOW {
            self.strikes = 0;
            self.strikes_since = Instant::now();
        }
        self.strikes += 1;
        if self.strikes >= self.engine.shared.config.flood_strikes {
            debug!(user = %self.user, "closing a flooding session");
            self.close(close::POLICY, ctx);
        }
    }

    fn close(&mut self, code: u16, ctx: &mut Context<Self>) {
        self.outbox.close(code);
        ctx.stop();
    }

    /// Count one inbound data frame (text or binary) against the per-session frame
    /// limit; false (after answering `rate_limited`) when it is over.
    fn admit_frame(&mut self, ctx: &mut Context<Self>) -> bool {
        self.engine.shared.hot.frames_in.increment(1);
        if let Err(not_until) = self.frame_limiter.check() {
            let wait = not_until.wait_time_from(self.engine.shared.clock.now());
            let err = EngineError::RateLimited {
                action: "frames",
                retry_after_ms: wait.as_millis() as u64 + 1,
            };
            self.send_error(None, &err, ctx);
            return false;
        }
        true
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        if !self.admit_frame(ctx) {
            return;
        }
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                let err = EngineError::BadRequest(format!("invalid frame: {e}"));
                let (action, echo) = validate::unparsed_ids(text, &self.engine.shared.config);
                return self.send_error_for(action.as_deref(), echo, &err, ctx);
            }
        };
        let action = frame.action();
        let echo = match &frame {
            ClientFrame::Send { client_msg_id, .. } => client_msg_id.clone(),
            _ => None,
        };
        if let Err(err) = self.dispatch(frame, ctx) {
            // An id over the length limit is not echoed (the error says so).
            let echo = echo
                .filter(|id| validate::client_msg_id(Some(id), &self.engine.shared.config).is_ok());
            self.send_error_for(Some(action), echo, &err, ctx);
        }
    }

    fn dispatch(&mut self, frame: ClientFrame, ctx: &mut Context<Self>) -> Result<(), EngineError> {
        let searching = matches!(frame, ClientFrame::FindMatch { .. } | ClientFrame::Next {});
        if searching && self.refuse_if_banned(frame.action(), ctx) {
            return Ok(());
        }
        let cfg = &self.engine.shared.config;
        match frame {
            ClientFrame::FindMatch { interests, language, region, group_size, max_wait_ms } => {
                if self.search.is_some() || self.search_pending {
                    return Err(EngineError::AlreadySearching);
                }
                let (criteria, wait) = validate::search(
                    &interests,
                    language.as_deref(),
                    region.as_deref(),
                    group_size,
                    max_wait_ms,
                    cfg,
                )?;
                self.check_room_count()?;
                self.check_search_limit("find_match")?;
                self.start_search_checked(criteria, wait, "find_match", ctx);
            }
            ClientFrame::CancelMatch {} => self.cancel_search(ctx),
            ClientFrame::Next {} => self.next(ctx)?,
            ClientFrame::Send { room_id, text, client_msg_id } => {
                let room = self.room(&room_id)?;
                validate::text(&text, cfg)?;
                validate::client_msg_id(client_msg_id.as_deref(), cfg)?;
                let bucket = self
                    .send_limit
                    .get_or_insert_with(|| self.engine.shared.send_limit(&self.user));
                if let Err(nu) = bucket.check() {
                    let wait = nu.wait_time_from(self.engine.shared.clock.now());
                    return Err(EngineError::RateLimited {
                        action: "send",
                        retry_after_ms: wait.as_millis() as u64 + 1,
                    });
                }
                room.do_send(PostMessage {
                    user: self.user.clone(),
                    text,
                    client_msg_id,
                    reply: self.outbox.clone(),
                });
            }
            ClientFrame::Typing { room_id, active } => {
                self.relay(&room_id, "typing", 0, Relay::Typing { active })?;
            }
            ClientFrame::Read { room_id, seq } => {
                self.relay(&room_id, "read", 0, Relay::Read { seq })?;
            }
            ClientFrame::Signal { room_id, payload, to } => {
                let size = validate::signal_payload(&payload, cfg)?;
                let to = to.as_deref().map(|t| validate::user_id(t, cfg)).transpose()?;
                self.relay(&room_id, "signal", size as u64, Relay::Signal { payload, to })?;
            }
            ClientFrame::Block { user_id } => {
                let other = validate::user_id(&user_id, cfg)?;
                if other == self.user {
                    return Err(EngineError::BadRequest("you cannot block yourself".into()));
                }
                self.charge("block", cost::BLOCK)?;
                self.block(other);
            }
            ClientFrame::Join { room_id } => {
                let id = RoomId::from(validate::public_room(&room_id, cfg)?);
                let max = cfg.max_rooms_per_user;
                let budget = self.charge("join", cost::ROOM_CHANGE)?;
                // The seat is reserved now, in one step with the count, so a burst of
                // joins cannot all pass it; the room gives it back if it refuses.
                if let Err(held) = self.engine.shared.reserve_room(&self.user, &id, max) {
                    return Err(too_many_rooms(held, max));
                }
                self.engine.rooms.supervisor.do_send(JoinPublicRoom {
                    room_id: id,
                    user: self.user.clone(),
                    session_id: self.session_id,
                    outbox: self.outbox.clone(),
                    budget,
                });
            }
            ClientFrame::Leave { room_id } => {
                let room = self.room(&room_id)?;
                let budget = self.charge("leave", cost::ROOM_CHANGE)?;
                room.do_send(LeaveRoom {
                    user: self.user.clone(),
                    reason: LeaveReason::Leave,
                    reply: self.outbox.clone(),
                    budget,
                });
            }
            ClientFrame::History { room_id, after_seq, limit } => {
                let room = self.room(&room_id)?;
                let limit = limit.unwrap_or(50).min(cfg.history_limit_max) as usize;
                // The page's bytes are charged by the room once it is built.
                let budget = self.charge("history", cost::HISTORY)?;
                room.do_send(FetchHistory {
                    user: self.user.clone(),
                    after_seq,
                    limit,
                    reply: self.outbox.clone(),
                    budget,
                });
            }
            ClientFrame::Refresh { token } => self.refresh(&token, ctx)?,
            ClientFrame::Report { user_id, room_id, reason } => {
                self.report(&user_id, room_id, reason, ctx)?
            }
        }
        Ok(())
    }

    /// Charge `cost` bytes to the user's action budget; `rate_limited` (a strike)
    /// with the wait when it is spent. Returns the budget for the room to charge
    /// the rest of the action's cost to.
    fn charge(&mut self, action: &'static str, cost: u64) -> Result<Budget, EngineError> {
        let budget = self.budget.get_or_insert_with(|| self.engine.shared.budget(&self.user));
        budget.try_charge(cost).map_err(|wait| EngineError::RateLimited {
            action,
            retry_after_ms: wait.as_millis() as u64 + 1,
        })?;
        Ok(budget.clone())
    }

    /// Relay `event` (of `payload_bytes`) to the room's other members, charging its
    /// first copy to the user's budget now; the room charges the other copies.
    fn relay(
        &mut self,
        room_id: &str,
        action: &'static str,
        payload_bytes: u64,
        event: Relay,
    ) -> Result<(), EngineError> {
        let room = self.room(room_id)?;
        let budget = self.charge(action, cost::relay(payload_bytes, 1))?;
        room.do_send(RelayEvent {
            user: self.user.clone(),
            event,
            reply: self.outbox.clone(),
            budget,
        });
        Ok(())
    }

    /// The room actor for `room_id`, or `not_in_room` when there is none.
    fn room(&self, room_id: &str) -> Result<Addr<RoomActor>, EngineError> {
        validate::room_id(room_id, &self.engine.shared.config)?;
        self.engine
            .rooms
            .directory
            .get(room_id)
            .ok_or_else(|| EngineError::NotInRoom(room_id.to_owned()))
    }

    /// Refuse a search that would give the user more rooms than
    /// `max_rooms_per_user` (its match room is not reserved: one search at a time,
    /// so a burst cannot pass this).
    fn check_room_count(&self) -> Result<(), EngineError> {
        let held = self.engine.shared.memberships.get(&self.user).map_or(0, |r| r.len());
        let max = self.engine.shared.config.max_rooms_per_user;
        if held >= max {
            return Err(too_many_rooms(held, max));
        }
        Ok(())
    }

    fn check_search_limit(&self, action: &'static str) -> Result<(), EngineError> {
        self.engine.shared.find_match_limiter.check_key(&self.user).map_err(|nu| {
            let wait = nu.wait_time_from(self.engine.shared.clock.now());
            EngineError::RateLimited { action, retry_after_ms: wait.as_millis() as u64 + 1 }
        })
    }

    fn start_search(&mut self, criteria: Criteria, wait: Duration, ctx: &mut Context<Self>) {
        let shared = &self.engine.shared;
        let criteria = validate::place(criteria, self.user.as_str(), &shared.config);
        let ticket = shared.next_ticket();
        let joined = Instant::now();
        let ad =
            ad_for(shared.bridge.node_id(), ticket, &self.user, &criteria, joined, joined + wait);
        shared.bridge.begin_search(ad);
        // `searching` before the shard can see the search: its `match_found` is
        // queued on the outbox directly (by the room supervisor) and must come after.
        self.send(&ServerFrame::Searching { ticket: format!("t{ticket}") });
        self.engine.shard_for(&criteria.language).do_send(EnqueueSearch {
            ticket,
            user: self.user.clone(),
            criteria: criteria.clone(),
            joined,
            max_wait: wait,
            link: SearchLink { session_id: self.session_id, events: ctx.address().recipient() },
            moved: false,
        });
        metrics::counter!(m::SEARCHES_STARTED_TOTAL).increment(1);
        self.search = Some(ActiveSearch { ticket, language: criteria.language.clone() });
        shared.last_search.insert(self.user.clone(), (criteria, wait));
    }

    /// `cancel_match`: answered with `match_cancelled` when the search was withdrawn
    /// (or none ran). When the shard already picked it, the `match_found` or
    /// `no_match_found` on its way is the answer, or `match_cancelled` after all
    /// (`SessionEvent::SearchCancelled`) if that pick falls through.
    fn cancel_search(&mut self, ctx: &mut Context<Self>) {
        let Some(search) = self.search.clone() else {
            return self.send(&ServerFrame::MatchCancelled {});
        };
        let shard = self.engine.shard_for(&search.language).clone();
        let ask = shard.send(CancelSearch {
            user: self.user.clone(),
            ticket: search.ticket,
            reason: CancelReason::Cancelled,
        });
        ctx.spawn(ask.into_actor(self).map(move |res, act, _| match res {
            Ok(CancelOutcome::Cancelled) => {
                if act.search.as_ref().map(|s| s.ticket) == Some(search.ticket) {
                    act.search = None;
                }
                act.send(&ServerFrame::MatchCancelled {});
            }
            Ok(CancelOutcome::NotWaiting) => {}
            Err(_) => act.send(&ServerFrame::Error {
                code: rendezvous_protocol::ErrorCode::Internal,
                message: "matching is unavailable; try again".into(),
                retry_after_ms: Some(100),
                action: Some("cancel_match".into()),
                client_msg_id: None,
            }),
        }));
    }

    /// `next`: leave the current match room, skip its members, search again. The
    /// room records the skip (the one place that does) before it answers the leave;
    /// the new search starts only after that answer, so it cannot rematch a partner
    /// just skipped. The session waits for it (`ctx.wait`, one mailbox hop), so
    /// frames behind `next` see the new search.
    fn next(&mut self, ctx: &mut Context<Self>) -> Result<(), EngineError> {
        let shared = self.engine.shared.clone();
        let Some((criteria, wait)) = shared.last_search.get(&self.user).map(|e| e.value().clone())
        else {
            return Err(EngineError::BadRequest("next needs an earlier find_match".into()));
        };
        if let Some(s) = &self.search {
            // Already searching again: report the running search.
            self.send(&ServerFrame::Searching { ticket: format!("t{}", s.ticket) });
            return Ok(());
        }
        self.check_search_limit("next")?;
        if self.search_pending {
            return Err(EngineError::AlreadySearching);
        }
        let current = shared.rooms_of(&self.user).into_iter().rev().find(|r| !r.is_public());
        let Some(room_id) = current else {
            self.start_search_checked(criteria, wait, "next", ctx);
            return Ok(());
        };
        let left = self.engine.rooms.directory.get(&room_id).map(|room| {
            room.send(LeaveRoom {
                user: self.user.clone(),
                reason: LeaveReason::Next,
                reply: self.outbox.clone(),
                budget: shared.budget(&self.user),
            })
        });
        self.send(&ServerFrame::Left { room_id: room_id.to_string() });
        match left {
            Some(left) => ctx.wait(
                left.into_actor(self)
                    .map(move |_, act, ctx| act.start_search_checked(criteria, wait, "next", ctx)),
            ),
            None => self.start_search_checked(criteria, wait, "next", ctx),
        }
        Ok(())
    }

    /// Start a search after the cluster-wide search limit agrees (a node's own
    /// limiter only sees this node; the cluster counts with INCR in Redis). With no
    /// cluster, or with the store unreachable, the local limiter alone decides.
    fn start_search_checked(
        &mut self,
        criteria: Criteria,
        wait: Duration,
        action: &'static str,
        ctx: &mut Context<Self>,
    ) {
        let shared = self.engine.shared.clone();
        if !shared.bridge.clustered() {
            return self.start_search(criteria, wait, ctx);
        }
        self.search_pending = true;
        let fut = shared.bridge.count_action(&self.user, "find_match", 60);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.search_pending = false;
            let limit = u64::from(act.engine.shared.config.find_match_per_minute);
            match res {
                Ok(n) if n > limit => {
                    let wait_ms = 60_000 - crate::clock::now_ms() % 60_000;
                    let err = EngineError::RateLimited { action, retry_after_ms: wait_ms };
                    act.send_error(Some(action), &err, ctx);
                }
                _ => act.start_search(criteria, wait, ctx),
            }
        }));
    }

    /// A banned user (a ban made after they connected, on any node) is refused:
    /// an `unauthorized` error, then the session closes with 4003. True when so.
    fn refuse_if_banned(&mut self, action: &'static str, ctx: &mut Context<Self>) -> bool {
        let Some(ban) = self.engine.shared.moderation.banned(self.user.as_str(), self.peer_ip)
        else {
            return false;
        };
        metrics::counter!(m::BANNED_REFUSALS_TOTAL, "at" => action).increment(1);
        let err = EngineError::Unauthorized(banned_message(ban.until_ms));
        self.send_error(Some(action), &err, ctx);
        self.close(close::BANNED, ctx);
        true
    }

    /// `report`: allowed for a partner the user shares a room with now, or shared a
    /// match room with until it closed (within `report_window_secs`); stored with
    /// the room's last messages, then `reported`. Rate limited per user.
    fn report(
        &mut self,
        user_id: &str,
        room_id: String,
        reason: String,
        ctx: &mut Context<Self>,
    ) -> Result<(), EngineError> {
        let shared = self.engine.shared.clone();
        let cfg = &shared.config;
        let other = validate::user_id(user_id, cfg)?;
        if other == self.user {
            return Err(EngineError::BadRequest("you cannot report yourself".into()));
        }
        validate::room_id(&room_id, cfg)?;
        let reason = validate::report_reason(&reason, cfg)?;
        shared.moderation.check_report_rate(&self.user).map_err(|wait| {
            EngineError::RateLimited {
                action: "report",
                retry_after_ms: wait.as_millis() as u64 + 1,
            }
        })?;
        let limit = shared.moderation.evidence_messages();
        let Some(room) = self.engine.rooms.directory.get(room_id.as_str()) else {
            let evidence =
                shared.moderation.recent_evidence(&room_id, self.user.as_str(), other.as_str());
            self.file_report(other, room_id, reason, evidence, ctx);
            return Ok(());
        };
        let ask =
            room.send(Evidence { reporter: self.user.clone(), reported: other.clone(), limit });
        ctx.spawn(ask.into_actor(self).map(move |res, act, ctx| {
            let evidence = res.ok().flatten().or_else(|| {
                act.engine.shared.moderation.recent_evidence(
                    &room_id,
                    act.user.as_str(),
                    other.as_str(),
                )
            });
            act.file_report(other, room_id, reason, evidence, ctx);
        }));
        Ok(())
    }

    /// Store a report (`evidence` is `None` when the two shared no room) and answer.
    fn file_report(
        &mut self,
        other: UserId,
        room_id: String,
        reason: String,
        evidence: Option<Vec<rendezvous_protocol::ChatMessage>>,
        ctx: &mut Context<Self>,
    ) {
        let Some(evidence) = evidence else {
            let err = EngineError::BadRequest(format!(
                "you can report only a current or recent partner, in the room you shared \
                 (`{other}` was not with you in `{room_id}` in the last {} s)",
                self.engine.shared.config.report_window_secs
            ));
            return self.send_error(Some("report"), &err, ctx);
        };
        let shared = &self.engine.shared;
        let report = shared.moderation.new_report(&self.user, &other, &room_id, reason, evidence);
        tracing::info!(report = %report.id, reporter = %self.user, reported = %other, room = %room_id, "report filed");
        metrics::counter!(m::REPORTS_TOTAL).increment(1);
        let id = report.id.clone();
        shared.moderate(&crate::moderation::ModEvent::Report(report));
        self.send(&ServerFrame::Reported { report_id: Some(id) });
    }

    fn block(&mut self, other: UserId) {
        let shared = &self.engine.shared;
        let ttl = Duration::from_secs(shared.config.block_ttl_secs);
        shared.avoid_pair(&self.user, &other, ttl);
        // The block outlives the process: the state file or Redis keeps it.
        shared.moderate(&crate::moderation::ModEvent::Block(crate::moderation::Block {
            a: self.user.to_string(),
            b: other.to_string(),
            until_ms: crate::clock::now_ms().saturating_add(ttl.as_millis() as u64),
        }));
        self.send(&ServerFrame::Blocked { user_id: other.to_string() });
        // The other may be on another node (not in this node's index): each of
        // the blocker's match rooms closes if the other holds a seat in it.
        for room_id in shared.rooms_of(&self.user) {
            if room_id.is_public() {
                continue;
            }
            if let Some(room) = self.engine.rooms.directory.get(&room_id) {
                room.do_send(CloseRoom { reason: "blocked", with: Some(other.clone()) });
            }
        }
    }

    /// Send `welcome` listing `rooms` with their details, and take this session's
    /// seat in each. Without rooms (a fresh session) it goes out at once; with
    /// some, the rooms are asked first and the session waits (`ctx.wait`), so
    /// `welcome` stays the first frame and no client frame overtakes it.
    fn welcome(&mut self, rooms: Vec<RoomId>, ctx: &mut Context<Self>) {
        if rooms.is_empty() {
            return self.welcome_with(Vec::new(), Vec::new());
        }
        let ask = describe_rooms(self.engine.rooms.directory.clone(), rooms);
        ctx.wait(
            ask.into_actor(self).map(|(rooms, details), act, _| act.welcome_with(rooms, details)),
        );
    }

    /// Send `welcome` and take the seats. A room that described itself gets the
    /// seq it reported, and sends this session what it stored since (the seat
    /// had no outbox in between), so `room_details.last_seq` plus the frames that
    /// follow leave no hole.
    fn welcome_with(&self, rooms: Vec<RoomId>, details: Vec<RoomDetail>) {
        let shared = &self.engine.shared;
        self.send(&ServerFrame::Welcome {
            user_id: self.user.to_string(),
            session_id: format!("s{}", self.session_id),
            node: shared.config.node_id.clone(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            protocol: rendezvous_protocol::PROTOCOL_VERSION,
            room_details: details.clone(),
            ice_servers: crate::ice::for_user(&shared.config, self.user.as_str()),
        });
        for room_id in rooms {
            if let Some(room) = self.engine.rooms.directory.get(&room_id) {
                let described = details.iter().find(|d| d.room_id == room_id.as_str());
                room.do_send(MemberOnline {
                    user: self.user.clone(),
                    session_id: self.session_id,
                    outbox: self.outbox.clone(),
                    replay_after: described.map(|d| d.last_seq),
                });
            }
        }
    }

    /// In a cluster the user's rooms may live on other nodes (a reconnect to this
    /// one): close their session elsewhere, move their seats here, open replicas of
    /// rooms this node does not hold, then welcome. If the store is unreachable,
    /// the rooms this node holds are all there is.
    fn welcome_from_cluster(&mut self, ctx: &mut Context<Self>) {
        let shared = self.engine.shared.clone();
        let rooms_here = self.engine.rooms.clone();
        shared.bridge.user_connected(&self.user);
        let user = self.user.clone();
        let fut = async move {
            let mut rooms = shared.rooms_of(&user);
            if let Ok(stored) = shared.bridge.user_rooms(&user).await {
                for room in stored {
                    if rooms.contains(&room) {
                        continue;
                    }
                    if rooms_here.directory.contains(&room) {
                        // A replica is here (other local members); just take the seat.
                        if let Ok(Some(_)) = shared.bridge.room_rehome(&room, &user).await {
                            rooms.push(room);
                        }
                        continue;
                    }
                    if let Ok(Some(snapshot)) = shared.bridge.room_rehome(&room, &user).await {
                        rooms_here.open_replica(&room, &snapshot, Some(&user));
                        rooms.push(room);
                    }
                }
            }
            describe_rooms(rooms_here.directory.clone(), rooms).await
        };
        ctx.wait(
            fut.into_actor(self).map(|(rooms, details), act, _| act.welcome_with(rooms, details)),
        );
    }

    /// `refresh`: a valid token of the same user renews the session's token (before
    /// its expiry or within the grace) and re-arms the timer; anything else changes
    /// nothing. Anonymous sessions have no token to refresh.
    fn refresh(&mut self, token: &str, ctx: &mut Context<Self>) -> Result<(), EngineError> {
        let shared = self.engine.shared.clone();
        let Some(lease) = self.token.as_mut() else {
            return Err(EngineError::BadRequest(
                "this session has no token to refresh (it connected without one)".into(),
            ));
        };
        let now = crate::clock::now_ms();
        lease.attempt(now, shared.config.refresh_min_interval_ms)?;
        let verified = match shared.token_verifier() {
            Some(v) => v.verify(token),
            None => Err("this node cannot verify tokens".to_owned()),
        };
        let renewed = lease.renew(&self.user, verified, now);
        let result = if renewed.is_ok() { "refreshed" } else { "refused" };
        metrics::counter!(m::TOKEN_REFRESHES_TOTAL, "result" => result).increment(1);
        let expires_at = renewed?;
        self.send(&ServerFrame::Refreshed { expires_at: Some(expires_at) });
        self.arm_token_timer(ctx);
        Ok(())
    }

    /// Look at the token now and (re)arm the timer for the next look: tell the
    /// client `token_expired` at expiry, close with 4001 when the grace is over.
    fn arm_token_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.token_timer.take() {
            ctx.cancel_future(t);
        }
        let Some(lease) = self.token.as_mut() else { return };
        let wait = match lease.poll(crate::clock::now_ms()) {
            LeaseStep::Wait(wait) => wait,
            LeaseStep::Expired(rest) => {
                let grace_ms = rest.as_millis() as u64;
                self.send_error(None, &EngineError::TokenExpired { grace_ms }, ctx);
                rest
            }
            LeaseStep::Close => {
                debug!(user = %self.user, "token expired and not refreshed");
                return self.close(close::UNAUTHORIZED, ctx);
            }
        };
        // One millisecond more: a timer may fire a hair early against the wall clock.
        let wait = (wait + Duration::from_millis(1)).min(TOKEN_TIMER_MAX);
        self.token_timer = Some(ctx.run_later(wait, |act, ctx| {
            act.token_timer = None;
            act.arm_token_timer(ctx);
        }));
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let timeout = Duration::from_millis(self.engine.shared.config.client_timeout_ms);
        if self.last_seen.elapsed() > timeout {
            debug!(user = %self.user, "client timed out");
            return self.close(close::NORMAL, ctx);
        }
        self.outbox.push_message(Message::Ping(Default::default()), Class::Droppable);
    }
}

/// What a banned user is told.
pub fn banned_message(until_ms: u64) -> String {
    format!("you are banned until {until_ms} (ms since the epoch); the session is closed with 4003")
}

/// How long `welcome` waits for a room to describe itself; a room slower than
/// this is listed in `rooms` without an entry in `room_details`.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Ask each room for its `welcome.room_details` entry, all at once. Rooms that
/// closed meanwhile are dropped from the list; rooms that do not answer in time
/// stay listed, without details.
async fn describe_rooms(
    directory: std::sync::Arc<crate::rooms::RoomDirectory>,
    rooms: Vec<RoomId>,
) -> (Vec<RoomId>, Vec<RoomDetail>) {
    let asks = rooms.iter().map(|id| {
        let room = directory.get(id);
        async move {
            let room = room?;
            tokio::time::timeout(DESCRIBE_TIMEOUT, room.send(DescribeRoom)).await.ok()?.ok()
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut kept = Vec::with_capacity(rooms.len());
    let mut details = Vec::with_capacity(rooms.len());
    for (id, answer) in rooms.into_iter().zip(answers) {
        match answer {
            Some(Some(detail)) => {
                details.push(detail);
                kept.push(id);
            }
            // Closed meanwhile: the seat is gone with it.
            Some(None) => {}
            // Gone from the directory or too slow: listed as before, no details.
            None => kept.push(id),
        }
    }
    (kept, details)
}

fn too_many_rooms(held: usize, max: usize) -> EngineError {
    EngineError::TooLarge(format!(
        "you are in {held} rooms, the most allowed is {max}; leave one first"
    ))
}

fn close_reason(code: u16) -> &'static str {
    match code {
        0 | close::NORMAL => "normal",
        close::TOO_LARGE => "too_large",
        close::RESTARTING => "restarting",
        close::POLICY => "policy",
        close::REPLACED => "replaced",
        close::UNAUTHORIZED => "unauthorized",
        close::BANNED => "banned",
        close::KICKED => "kicked",
        1006 => "abnormal",
        _ => "other",
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let shared = self.engine.shared.clone();
        let entry = SessionEntry {
            session_id: self.session_id,
            outbox: self.outbox.clone(),
            events: ctx.address().recipient(),
            worker: crate::state::current_worker(),
            ip: self.peer_ip,
        };
        if let Some(ip) = self.peer_ip {
            *shared.per_ip.entry(ip).or_default() += 1;
        }
        if let Some(old) = shared.registry.insert(self.user.clone(), entry) {
            old.outbox.close(close::REPLACED);
        }
        if shared.bridge.clustered() {
            self.welcome_from_cluster(ctx);
        } else {
            self.welcome(shared.rooms_of(&self.user), ctx);
        }
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        metrics::counter!(m::SESSIONS_OPENED_TOTAL).increment(1);
        let every = Duration::from_millis(shared.config.heartbeat_interval_ms);
        ctx.run_interval(every, |act, ctx| act.heartbeat(ctx));
        self.arm_token_timer(ctx);
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        self.outbox.close(close::NORMAL);
        let shared = self.engine.shared.clone();
        if let Some(ip) = self.peer_ip.take() {
            if let Some(mut n) = shared.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
            }
            shared.per_ip.remove_if(&ip, |_, n| *n == 0);
        }
        if let Some(search) = self.search.take() {
            self.engine.shard_for(&search.language).do_send(CancelSearch {
                user: self.user.clone(),
                ticket: search.ticket,
                reason: CancelReason::Disconnected,
            });
        }
        if shared.registry.remove_if_current(&self.user, self.session_id) {
            for room_id in shared.rooms_of(&self.user) {
                if let Some(room) = self.engine.rooms.directory.get(&room_id) {
                    room.do_send(MemberOffline {
                        user: self.user.clone(),
                        session_id: self.session_id,
                    });
                }
            }
            shared.forget_search_if_gone(&self.user);
        }
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        metrics::counter!(m::SESSIONS_CLOSED_TOTAL, "reason" => close_reason(self.outbox.close_code()))
            .increment(1);
        Running::Stop
    }
}

impl StreamHandler<Result<Message, WsError>> for SessionActor {
    fn handle(&mut self, item: Result<Message, WsError>, ctx: &mut Self::Context) {
        match item {
            Ok(Message::Text(text)) => {
                self.last_seen = Instant::now();
                self.on_text(text.as_str(), ctx);
            }
            Ok(Message::Binary(_)) => {
                self.last_seen = Instant::now();
                if !self.admit_frame(ctx) {
                    return;
                }
                let err = EngineError::BadRequest(
                    "binary frames are not supported; send JSON text".into(),
                );
                self.send_error(None, &err, ctx);
            }
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {
                self.last_seen = Instant::now();
            }
            Ok(Message::Close(_)) => self.close(close::NORMAL, ctx),
            Err(WsError::Capacity(e)) => {
                debug!(user = %self.user, error = %e, "frame over the size limit");
                self.close(close::TOO_LARGE, ctx);
            }
            // RFC 6455 §7.4.1: 1007 for a text message that is not UTF-8, 1002 for
            // other protocol violations (not 1000, which would claim all went well).
            Err(WsError::Utf8(e)) => {
                debug!(user = %self.user, error = %e, "text frame is not UTF-8");
                self.close(1007, ctx);
            }
            Err(WsError::Protocol(e)) => {
                debug!(user = %self.user, error = %e, "websocket protocol violation");
                self.close(1002, ctx);
            }
            Err(e) => {
                debug!(user = %self.user, error = %e, "socket read failed");
                ctx.stop();
            }
        }
    }
}

impl Handler<SessionEvent> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: SessionEvent, _ctx: &mut Self::Context) {
        match msg {
            // `match_found` itself is queued by the room supervisor (`rooms`).
            SessionEvent::Matched { ticket } => {
                if self.search.as_ref().map(|s| s.ticket) == Some(ticket) {
                    self.search = None;
                }
            }
            SessionEvent::SearchExpired { ticket } => {
                if self.search.as_ref().map(|s| s.ticket) == Some(ticket) {
                    self.search = None;
                    self.send(&ServerFrame::NoMatchFound {});
                }
            }
            SessionEvent::SearchCancelled { ticket } => {
                if self.search.as_ref().map(|s| s.ticket) == Some(ticket) {
                    self.search = None;
                    self.send(&ServerFrame::MatchCancelled {});
                }
            }
        }
    }
}

impl Handler<WriterClosed> for SessionActor {
    type Result = ();

    fn handle(&mut self, _msg: WriterClosed, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
