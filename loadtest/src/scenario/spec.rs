//! The scenario file: a TOML document naming a driver (`kind`), where to connect,
//! how much load to offer for how long, and the thresholds a run must meet.
//! `loadtest/scenarios/README.md` documents every key; [`Scenario::load`] reads a
//! file, applies its `[smoke]` table when asked, then the command line overrides.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

pub use super::schedule::Stage;
use super::schedule::{self, Schedule};

/// Which driver runs the scenario.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    MatchStorm,
    ChatRooms,
    Churn,
    IdleCapacity,
    Soak,
    FullFlow,
    RedisFailover,
    Attack,
    MatchQuality,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::MatchStorm => "match-storm",
            Kind::ChatRooms => "chat-rooms",
            Kind::Churn => "churn",
            Kind::IdleCapacity => "idle-capacity",
            Kind::Soak => "soak",
            Kind::FullFlow => "full-flow",
            Kind::RedisFailover => "redis-failover",
            Kind::Attack => "attack",
            Kind::MatchQuality => "match-quality",
        }
    }

    /// Drivers whose load divides evenly over worker processes.
    pub fn splits_over_workers(self) -> bool {
        matches!(self, Kind::MatchStorm | Kind::IdleCapacity | Kind::Churn | Kind::ChatRooms)
    }

    /// Drivers with a main rate that `[[stages]]` can set.
    pub fn has_rate(self) -> bool {
        matches!(self, Kind::MatchStorm | Kind::ChatRooms | Kind::Churn | Kind::FullFlow)
    }
}

/// A bound on one number of the result (`results.<path>` in the JSON file).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bound {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Tokens instead of `?user=`: HS256 JWTs signed with a secret.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Environment variable holding the secret (`--jwt-secret` overrides).
    #[serde(default = "default_secret_env")]
    pub secret_env: String,
    /// Lifetime of each minted token.
    #[serde(default = "default_token_ttl")]
    pub ttl_secs: u64,
}

fn default_secret_env() -> String {
    "RENDEZVOUS_JWT_SECRET".into()
}
fn default_token_ttl() -> u64 {
    3_600
}

/// `match-quality`: a seeded trace (4 languages, 3 interests of 40 per user) at
/// each rate in turn, scored for shared interests and wait.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quality {
    /// Arrivals per second, one run each, in order.
    pub rates: Vec<f64>,
    /// Seconds of each run (by position; missing: `duration_secs`).
    #[serde(default)]
    pub secs: Vec<f64>,
    /// Seed of the trace (the same seed gives the same users).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// A second engine (e.g. started with a fixed `--ladder`) that runs the same
    /// trace after each rate, for comparison (`r<rate>.compare.…`).
    #[serde(default)]
    pub compare_urls: Vec<String>,
}

fn default_seed() -> u64 {
    1
}

/// `match-storm`: new connections arrive at `rate`/s, search, get matched, leave.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storm {
    /// Arrivals per second (each a new connection), open loop.
    pub rate: f64,
    /// Interests drawn from `interest_pool` for each user.
    #[serde(default = "default_interests_per_user")]
    pub interests_per_user: usize,
    /// Size of the interest vocabulary (smaller: more shared interests).
    #[serde(default = "default_interest_pool")]
    pub interest_pool: usize,
    /// Every user also names two interests all share, so everyone can match at
    /// the first step of the default relaxation ladder (which wants two shared);
    /// false: some wait for the ladder to relax.
    #[serde(default = "yes")]
    pub common_interest: bool,
    /// Users `2k` and `2k + 1` share two interests of their own (and no others)
    /// and connect through neighbouring URLs: with two nodes, every match spans
    /// them. Replaces the drawn and common interests.
    #[serde(default)]
    pub cross_node: bool,
    /// How long a matched user stays before closing.
    #[serde(default)]
    pub hold_ms: u64,
    /// `max_wait_ms` sent with each search (0: the server's default).
    #[serde(default)]
    pub max_wait_ms: u64,
    /// The language every search names. Unset (the default): the run's own
    /// private-use tag, so runs and workers never meet; set (e.g. `en`, to load
    /// a language split with `--language-parts`): against fresh servers only,
    /// since users left waiting by another run can then be matched.
    #[serde(default)]
    pub language: Option<String>,
}

fn yes() -> bool {
    true
}
fn default_interests_per_user() -> usize {
    3
}
fn default_interest_pool() -> usize {
    8
}

/// `chat-rooms`: rooms of `room_size` members, each sending at `rate`/s.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chat {
    pub rooms: usize,
    /// 2: rooms made by matching pairs; more: members join one public room each.
    #[serde(default = "default_room_size")]
    pub room_size: usize,
    /// Messages per second sent by each member, open loop.
    pub rate: f64,
    #[serde(default = "default_text_bytes")]
    pub text_bytes: usize,
    /// How long members keep reading after the last send.
    #[serde(default = "default_drain_ms")]
    pub drain_ms: u64,
    /// Rooms set up at once.
    #[serde(default = "default_setup_concurrency")]
    pub setup_concurrency: usize,
    /// Members of a room on different nodes, round robin over `urls`.
    #[serde(default)]
    pub cross_node: bool,
    /// Extra pairs whose second member never reads (slow consumers); their
    /// first member sends at `stalled_rate`. Only the healthy rooms are measured.
    #[serde(default)]
    pub stalled_pairs: usize,
    #[serde(default = "default_stalled_rate")]
    pub stalled_rate: f64,
    /// Bytes of each text the stalled pairs' senders send (4-byte characters, so
    /// up to 16,384 within the 4,096-character limit: the stalled reader's socket
    /// buffers fill within seconds).
    #[serde(default = "default_stalled_text_bytes")]
    pub stalled_text_bytes: usize,
    /// The control run: the "stalled" receivers read after all (same traffic).
    #[serde(default)]
    pub stalled_reading: bool,
}

fn default_stalled_text_bytes() -> usize {
    16_000
}

fn default_room_size() -> usize {
    2
}
fn default_text_bytes() -> usize {
    64
}
fn default_drain_ms() -> u64 {
    2_000
}
fn default_setup_concurrency() -> usize {
    50
}
fn default_stalled_rate() -> f64 {
    20.0
}

/// `churn` and `full-flow`: users arrive, search, chat, skip with `next`, leave.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Arrivals per second (churn); pairs started per second (full-flow).
    pub rate: f64,
    /// Matches per user before it disconnects (each but the last ended by `next`).
    #[serde(default = "default_rounds")]
    pub rounds: usize,
    /// Messages each user sends in each match.
    #[serde(default = "default_messages")]
    pub messages: usize,
    /// Pause between two sends of one user.
    #[serde(default = "default_think_ms")]
    pub think_ms: u64,
    /// ICE candidates each side sends (full-flow).
    #[serde(default = "default_ice")]
    pub ice_candidates: usize,
}

fn default_rounds() -> usize {
    2
}
fn default_messages() -> usize {
    3
}
fn default_think_ms() -> u64 {
    50
}
fn default_ice() -> usize {
    3
}

/// `idle-capacity`: hold `sessions` idle connections.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Idle {
    pub sessions: usize,
    /// New connections per second, open loop.
    pub connect_rate: f64,
    /// How long all sessions are held once open.
    #[serde(default = "default_hold_secs")]
    pub hold_secs: f64,
    /// Sessions open in this many equal steps, with a pause after each in which
    /// the servers' memory is read (the slope of memory against sessions).
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default = "default_step_pause_ms")]
    pub step_pause_ms: u64,
}

fn default_steps() -> usize {
    4
}
fn default_step_pause_ms() -> u64 {
    1_500
}

fn default_hold_secs() -> f64 {
    5.0
}

/// `soak`: a mix held for the whole duration, then everyone leaves and the
/// server's memory and file descriptors must return near their baseline.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Soak {
    /// Chatting pairs held for the whole run.
    pub chat_pairs: usize,
    pub chat_rate: f64,
    /// Churning arrivals per second.
    pub churn_rate: f64,
    /// Idle sessions held for the whole run.
    pub idle_sessions: usize,
    /// Wait after everyone left before the final sample.
    #[serde(default = "default_settle_secs")]
    pub settle_secs: f64,
    /// The duration is split into this many identical passes; memory after the
    /// last is compared with memory after the first.
    #[serde(default = "default_passes")]
    pub passes: usize,
}

fn default_passes() -> usize {
    2
}

fn default_settle_secs() -> f64 {
    5.0
}

/// `redis-failover`: cross-node chat while the tool stops and restarts Redis.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    pub pairs: usize,
    pub rate: f64,
    /// Shell command that stops redis-server (run by `sh -c`).
    pub stop_command: String,
    /// Shell command that starts it again.
    pub start_command: String,
    /// Seconds into the sending phase when Redis is stopped.
    pub stop_after_secs: f64,
    /// How long Redis stays down.
    pub down_secs: f64,
    /// Delivery rate (share of the rate before the outage) that counts as recovered.
    #[serde(default = "default_recovered_share")]
    pub recovered_share: f64,
}

fn default_recovered_share() -> f64 {
    0.9
}

/// `attack`: normal matching and chat, first alone (the control phase), then
/// the same normal load beside attackers. Each attacker has a table of its own
/// (`[attack.silent]`, …), on by default, connecting from its own addresses.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Attack {
    /// Normal arrivals per second in each phase: connect, search with shared
    /// interests, get matched, leave (open loop, as `match-storm`).
    pub match_rate: f64,
    /// Normal matched pairs chatting in each phase (0: none).
    pub chat_pairs: usize,
    /// Sends per second of each chatting member.
    pub chat_rate: f64,
    pub text_bytes: usize,
    /// The attackers run this long before the attack phase's normal load starts.
    pub lead_secs: f64,
    /// Pause after the control phase (its users leave, rooms close).
    pub pause_secs: f64,
    /// Latencies below this floor count as the floor in the `ratio.*` numbers, so
    /// that 0.4 ms against 0.2 ms of loopback noise does not read as "2× worse".
    pub ratio_floor_ms: f64,
    pub silent: RawSockets,
    pub half: RawSockets,
    pub languages: Languages,
    pub block: Flood,
    pub signal: RoomFlood,
    pub history: History,
    pub join: JoinBurst,
    pub typing: RoomFlood,
}

impl Default for Attack {
    fn default() -> Self {
        Self {
            match_rate: 40.0,
            chat_pairs: 100,
            chat_rate: 5.0,
            text_bytes: 64,
            lead_secs: 3.0,
            pause_secs: 2.0,
            ratio_floor_ms: 5.0,
            silent: RawSockets::on(&[2, 3]),
            half: RawSockets::on(&[4, 5]),
            languages: Languages::default(),
            block: Flood::default(),
            signal: RoomFlood::signal(),
            history: History::default(),
            join: JoinBurst::default(),
            typing: RoomFlood::typing(),
        }
    }
}

/// `127.0.0.N` for each `N`.
fn loopback(last: &[u8]) -> Vec<IpAddr> {
    last.iter().map(|&n| IpAddr::from([127, 0, 0, n])).collect()
}

/// Silent sockets (`[attack.silent]`: connect, never send) or half requests
/// (`[attack.half]`: half a request line or partial headers, then stall).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSockets {
    pub enabled: bool,
    /// Held open at once; one the server closes is replaced.
    pub sockets: usize,
    /// New sockets per second.
    pub rate: f64,
    /// Bound on sockets opened in all.
    pub max_opens: usize,
    pub sources: Vec<IpAddr>,
}

impl RawSockets {
    fn on(last: &[u8]) -> Self {
        Self { enabled: true, sockets: 500, rate: 250.0, max_opens: 2_000, sources: loopback(last) }
    }
}

impl Default for RawSockets {
    fn default() -> Self {
        Self::on(&[2])
    }
}

/// `[attack.languages]`: searches with invented languages, each followed by
/// `cancel_match`; every other one well-formed (three random letters), the rest
/// malformed.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Languages {
    pub enabled: bool,
    /// Searches per second in all.
    pub rate: f64,
    /// Searches per session (the engine allows 10 `find_match` a minute).
    pub per_session: usize,
    /// Bound on searches in all.
    pub max_searches: usize,
    /// How long each accepted search waits before `cancel_match` (the engine
    /// samples its pools every so often: a search must be seen to be counted).
    pub hold_ms: u64,
    pub sources: Vec<IpAddr>,
}

impl Default for Languages {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 100.0,
            per_session: 5,
            max_searches: 4_000,
            hold_ms: 250,
            sources: loopback(&[6]),
        }
    }
}

/// `[attack.block]`: sessions sending `block` with random ids.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Flood {
    pub enabled: bool,
    pub sessions: usize,
    /// Frames per second of each session.
    pub rate: f64,
    /// New sessions (fresh users) after the server closed one, per session slot.
    pub max_reconnects: usize,
    pub sources: Vec<IpAddr>,
}

impl Default for Flood {
    fn default() -> Self {
        Self { enabled: true, sessions: 4, rate: 80.0, max_reconnects: 10, sources: loopback(&[7]) }
    }
}

/// `[attack.signal]` (`signal` without `to`, large payloads) and
/// `[attack.typing]` (typing on/off): `members` attackers fill one public
/// room and read; `senders` of them flood it.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomFlood {
    pub enabled: bool,
    pub members: usize,
    pub senders: usize,
    /// Frames per second of each sender.
    pub rate: f64,
    /// Bytes of each signal payload (signal only).
    pub payload_bytes: usize,
    pub max_reconnects: usize,
    pub sources: Vec<IpAddr>,
}

impl RoomFlood {
    fn signal() -> Self {
        Self {
            enabled: true,
            members: 50,
            senders: 2,
            rate: 10.0,
            payload_bytes: 15_000,
            max_reconnects: 10,
            sources: loopback(&[8]),
        }
    }

    fn typing() -> Self {
        Self {
            enabled: true,
            members: 20,
            senders: 4,
            rate: 80.0,
            payload_bytes: 0,
            max_reconnects: 10,
            sources: loopback(&[9]),
        }
    }
}

impl Default for RoomFlood {
    fn default() -> Self {
        Self::signal()
    }
}

/// `[attack.history]`: a public room filled with `fill_messages` texts of
/// `text_bytes`, then `sessions` members asking for `history` (`limit`) at `rate`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct History {
    pub enabled: bool,
    pub fill_messages: usize,
    pub text_bytes: usize,
    pub sessions: usize,
    pub rate: f64,
    pub limit: u32,
    pub max_reconnects: usize,
    pub sources: Vec<IpAddr>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            enabled: true,
            fill_messages: 200,
            text_bytes: 2_000,
            sessions: 3,
            rate: 10.0,
            limit: 200,
            max_reconnects: 10,
            sources: loopback(&[10]),
        }
    }
}

/// `[attack.join]`: a fresh user sends `burst` joins of distinct public rooms
/// back to back, reads the answers, leaves; `rate` such bursts per second.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JoinBurst {
    pub enabled: bool,
    pub burst: usize,
    /// Bursts per second.
    pub rate: f64,
    pub max_bursts: usize,
    pub sources: Vec<IpAddr>,
}

impl Default for JoinBurst {
    fn default() -> Self {
        Self { enabled: true, burst: 200, rate: 1.0, max_bursts: 120, sources: loopback(&[11]) }
    }
}

impl Attack {
    /// What every attacker's table has: its name, whether it runs, its rate and
    /// its source addresses.
    pub fn attackers(&self) -> [(&'static str, bool, f64, &[IpAddr]); 8] {
        [
            ("silent", self.silent.enabled, self.silent.rate, &self.silent.sources),
            ("half", self.half.enabled, self.half.rate, &self.half.sources),
            ("languages", self.languages.enabled, self.languages.rate, &self.languages.sources),
            ("block", self.block.enabled, self.block.rate, &self.block.sources),
            ("signal", self.signal.enabled, self.signal.rate, &self.signal.sources),
            ("history", self.history.enabled, self.history.rate, &self.history.sources),
            ("join", self.join.enabled, self.join.rate, &self.join.sources),
            ("typing", self.typing.enabled, self.typing.rate, &self.typing.sources),
        ]
    }

    fn validate(&self) -> Result<(), String> {
        let positive = |what: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("attack.{what} must be a positive number, got {v}"))
            }
        };
        positive("match_rate", self.match_rate)?;
        if self.chat_pairs > 0 {
            positive("chat_rate", self.chat_rate)?;
        }
        if !(self.lead_secs >= 0.0 && self.pause_secs >= 0.0 && self.ratio_floor_ms >= 0.0) {
            return Err("attack: lead_secs, pause_secs, ratio_floor_ms must be ≥ 0".into());
        }
        for (what, enabled, rate, sources) in self.attackers() {
            if !enabled {
                continue;
            }
            if sources.is_empty() {
                return Err(format!("attack.{what}.sources must name at least one address"));
            }
            positive(&format!("{what}.rate"), rate)?;
        }
        if self.languages.enabled && self.languages.per_session == 0 {
            return Err("attack.languages.per_session must be at least 1".into());
        }
        for (what, r) in [("signal", &self.signal), ("typing", &self.typing)] {
            if r.enabled && r.senders > r.members {
                return Err(format!("attack.{what}: senders ≤ members"));
            }
        }
        Ok(())
    }
}

/// `[capacity]`: what `rendezvous-loadtest capacity` searches over by default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacitySpec {
    /// The setting to vary (`chat.rate`), as `--set` names it.
    pub param: Option<String>,
    /// First value tried (default: the setting's value in the file).
    pub start: Option<f64>,
    /// What the setting counts, for people (`msg/s per member`).
    pub unit: Option<String>,
    /// A number of `results` reported beside each step (`delivered_per_s`).
    pub throughput: Option<String>,
    /// The setting takes whole numbers only.
    #[serde(default)]
    pub integer: bool,
}

/// One scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub kind: Kind,
    /// WebSocket endpoints (`ws://host:port/ws`); drivers spread users over them.
    #[serde(default = "default_urls")]
    pub urls: Vec<String>,
    /// Length of the load phase (arrivals, sends); with `[[stages]]`, the sum of
    /// their lengths (a shorter `--duration-secs` cuts them).
    #[serde(default)]
    pub duration_secs: f64,
    /// Hard bound on the whole run; past it the run stops and fails.
    #[serde(default)]
    pub max_secs: Option<f64>,
    /// Give up on one awaited frame after this long.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Local addresses to connect from, round robin (e.g. 127.0.0.2, 127.0.0.3):
    /// more client ports than one address allows.
    #[serde(default)]
    pub source_addrs: Vec<IpAddr>,
    /// Worker processes sharing the load (each with its own file limit).
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default)]
    pub auth: Option<Auth>,
    #[serde(default)]
    pub storm: Option<Storm>,
    #[serde(default)]
    pub chat: Option<Chat>,
    #[serde(default)]
    pub churn: Option<Churn>,
    #[serde(default)]
    pub idle: Option<Idle>,
    #[serde(default)]
    pub soak: Option<Soak>,
    #[serde(default)]
    pub failover: Option<Failover>,
    #[serde(default)]
    pub attack: Option<Attack>,
    #[serde(default)]
    pub quality: Option<Quality>,
    #[serde(default)]
    pub capacity: Option<CapacitySpec>,
    /// `path = { min = .., max = .. }` over `results` of the JSON report.
    #[serde(default)]
    pub thresholds: BTreeMap<String, Bound>,
    /// The main rate by stages, replacing the driver's rate and `duration_secs`
    /// (`[[stages]]`: `rate`, `secs`, `ramp`).
    #[serde(default)]
    pub stages: Vec<Stage>,
}

fn default_urls() -> Vec<String> {
    vec!["ws://127.0.0.1:8080/ws".into()]
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_workers() -> usize {
    1
}

/// Command-line overrides of a file's settings.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub urls: Vec<String>,
    pub duration_secs: Option<f64>,
    pub workers: Option<usize>,
    pub source_addrs: Vec<IpAddr>,
    /// `key.path=value` pairs (TOML values), applied after `[smoke]`.
    pub sets: Vec<String>,
}

/// Overlay `top` onto `base`, table by table.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// `a.b.c=value` into a nested table; the value is TOML, or a bare string.
fn set_path(table: &mut toml::Table, assignment: &str) -> Result<(), String> {
    let (path, raw) = assignment
        .split_once('=')
        .ok_or_else(|| format!("--set {assignment}: expected KEY=VALUE"))?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let keys: Vec<&str> = path.trim().split('.').collect();
    let (last, parents) = keys.split_last().ok_or_else(|| format!("--set {assignment}: no key"))?;
    let mut at = table;
    for key in parents {
        let entry = at.entry((*key).to_owned()).or_insert_with(|| toml::Table::new().into());
        at =
            entry.as_table_mut().ok_or_else(|| format!("--set {assignment}: {key} is no table"))?;
    }
    at.insert((*last).to_owned(), value);
    Ok(())
}

impl Scenario {
    /// Parse `text`; with `smoke`, its `[smoke]` table overrides the rest first.
    pub fn parse(text: &str, smoke: bool, overrides: &Overrides) -> Result<Self, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let smoke_table = match table.remove("smoke") {
            Some(toml::Value::Table(t)) => Some(t),
            Some(_) => return Err("`smoke` must be a table".into()),
            None => None,
        };
        if smoke {
            merge(&mut table, smoke_table.ok_or("the file has no [smoke] table")?);
        }
        for assignment in &overrides.sets {
            set_path(&mut table, assignment)?;
        }
        let mut s: Scenario = toml::Value::Table(table).try_into().map_err(|e| e.to_string())?;
        if !overrides.urls.is_empty() {
            s.urls = overrides.urls.clone();
        }
        if !s.stages.is_empty() {
            if !s.kind.has_rate() {
                return Err(format!(
                    "[[stages]]: kind {} has no rate that stages could set",
                    s.kind.name()
                ));
            }
            schedule::validate(&s.stages)?;
            s.duration_secs = Schedule::staged(&s.stages).secs();
        }
        if let Some(d) = overrides.duration_secs {
            s.duration_secs = d;
        }
        if let Some(w) = overrides.workers {
            s.workers = w;
        }
        if !overrides.source_addrs.is_empty() {
            s.source_addrs = overrides.source_addrs.clone();
        }
        s.validate()?;
        Ok(s)
    }

    pub fn load(path: &Path, smoke: bool, overrides: &Overrides) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        Self::parse(&text, smoke, overrides).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The schedule of the driver's main rate: its `[[stages]]` (cut at
    /// `duration_secs`), else `rate` for `duration_secs`.
    pub fn schedule(&self, rate: f64) -> Schedule {
        if self.stages.is_empty() {
            Schedule::constant(rate, self.duration_secs)
        } else {
            Schedule::staged(&self.stages).truncated(self.duration_secs)
        }
    }

    /// The hard bound on the whole run.
    pub fn max_secs(&self) -> f64 {
        self.max_secs.unwrap_or(self.duration_secs * 2.0 + 60.0)
    }

    fn validate(&self) -> Result<(), String> {
        let positive = |what: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{what} must be a positive number, got {v}"))
            }
        };
        positive("duration_secs", self.duration_secs)?;
        positive("max_secs", self.max_secs())?;
        if self.urls.is_empty() {
            return Err("urls must name at least one endpoint".into());
        }
        for url in &self.urls {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(format!("url {url:?} is not ws:// or wss://"));
            }
        }
        if self.workers == 0 || self.workers > 64 {
            return Err(format!("workers must be 1 to 64, got {}", self.workers));
        }
        if self.workers > 1 && !self.kind.splits_over_workers() {
            return Err(format!("kind {} runs in one process (workers = 1)", self.kind.name()));
        }
        let missing = |table: &str| format!("kind {} needs a [{table}] table", self.kind.name());
        match self.kind {
            Kind::MatchStorm => {
                let s = self.storm.as_ref().ok_or_else(|| missing("storm"))?;
                positive("storm.rate", s.rate)?;
                if s.interest_pool == 0 || s.interests_per_user > 18 {
                    return Err("storm: interest_pool ≥ 1, interests_per_user ≤ 18".into());
                }
            }
            Kind::ChatRooms => {
                let c = self.chat.as_ref().ok_or_else(|| missing("chat"))?;
                positive("chat.rate", c.rate)?;
                if c.rooms == 0 || c.room_size < 2 {
                    return Err("chat: rooms ≥ 1 and room_size ≥ 2".into());
                }
                if c.cross_node && self.urls.len() < 2 {
                    return Err("chat.cross_node needs at least two urls".into());
                }
                if c.stalled_pairs > 0 {
                    positive("chat.stalled_rate", c.stalled_rate)?;
                }
            }
            Kind::Churn | Kind::FullFlow => {
                let c = self.churn.as_ref().ok_or_else(|| missing("churn"))?;
                positive("churn.rate", c.rate)?;
                if c.rounds == 0 {
                    return Err("churn.rounds must be at least 1".into());
                }
            }
            Kind::IdleCapacity => {
                let i = self.idle.as_ref().ok_or_else(|| missing("idle"))?;
                positive("idle.connect_rate", i.connect_rate)?;
                if i.sessions == 0 || i.steps == 0 || i.steps > 1_000 {
                    return Err("idle: sessions ≥ 1 and steps 1 to 1,000".into());
                }
            }
            Kind::Soak => {
                let s = self.soak.as_ref().ok_or_else(|| missing("soak"))?;
                if s.chat_pairs > 0 {
                    positive("soak.chat_rate", s.chat_rate)?;
                }
            }
            Kind::RedisFailover => {
                let f = self.failover.as_ref().ok_or_else(|| missing("failover"))?;
                positive("failover.rate", f.rate)?;
                positive("failover.down_secs", f.down_secs)?;
                if f.pairs == 0 || f.stop_after_secs >= self.duration_secs {
                    return Err("failover: pairs ≥ 1 and stop_after_secs < duration_secs".into());
                }
            }
            Kind::Attack => {
                let a = self.attack.as_ref().ok_or_else(|| missing("attack"))?;
                a.validate()?;
            }
            Kind::MatchQuality => {
                let q = self.quality.as_ref().ok_or_else(|| missing("quality"))?;
                if q.rates.is_empty() {
                    return Err("quality.rates must name at least one rate".into());
                }
                for r in q.rates.iter().chain(&q.secs) {
                    positive("quality.rates and quality.secs", *r)?;
                }
            }
        }
        for (path, bound) in &self.thresholds {
            if bound.min.is_none() && bound.max.is_none() {
                return Err(format!("threshold {path} has neither min nor max"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORM: &str = r#"
        name = "storm"
        kind = "match-storm"
        duration_secs = 10
        [storm]
        rate = 500
        [thresholds]
        "match_latency.p99_ms" = { max = 2.0 }
        double_matches = { max = 0 }
        [smoke]
        duration_secs = 1
        storm = { rate = 20 }
    "#;

    #[test]
    fn a_file_parses_with_defaults_and_thresholds() {
        let s = Scenario::parse(STORM, false, &Overrides::default()).expect("parse");
        assert_eq!(s.kind, Kind::MatchStorm);
        assert_eq!(s.urls, vec!["ws://127.0.0.1:8080/ws".to_owned()]);
        assert_eq!(s.duration_secs, 10.0);
        let storm = s.storm.expect("storm");
        assert_eq!((storm.rate, storm.interests_per_user), (500.0, 3));
        assert_eq!(s.thresholds["match_latency.p99_ms"], Bound { min: None, max: Some(2.0) });
    }

    #[test]
    fn smoke_and_command_line_override_in_that_order() {
        let o = Overrides {
            urls: vec!["ws://127.0.0.1:9/ws".into()],
            sets: vec!["storm.hold_ms=250".into(), "description=quick".into()],
            ..Overrides::default()
        };
        let s = Scenario::parse(STORM, true, &o).expect("parse");
        assert_eq!(s.duration_secs, 1.0);
        let storm = s.storm.as_ref().expect("storm");
        assert_eq!((storm.rate, storm.hold_ms), (20.0, 250));
        assert_eq!(s.description, "quick");
        assert_eq!(s.urls, vec!["ws://127.0.0.1:9/ws".to_owned()]);
    }

    #[test]
    fn the_attack_file_gives_every_attacker_addresses_of_its_own() {
        let text = include_str!("../../scenarios/attack.toml");
        for smoke in [false, true] {
            let s = Scenario::parse(text, smoke, &Overrides::default()).expect("parse");
            let a = s.attack.expect("[attack]");
            let mut seen = std::collections::HashSet::new();
            for (_, _, _, sources) in a.attackers() {
                assert!(!sources.is_empty());
                for ip in sources {
                    assert!(ip.is_loopback() && *ip != IpAddr::from([127, 0, 0, 1]), "{ip}");
                    assert!(seen.insert(*ip), "{ip} is shared by two attackers");
                }
            }
            if smoke {
                // [smoke.attack] tables merge key by key: sources stay.
                assert_eq!((a.silent.sockets, a.silent.sources.len()), (40, 2));
                assert_eq!(s.thresholds["ratio.match_p99"].max, Some(1000.0));
                assert_eq!(s.thresholds["attack.normal_errors"].max, Some(0.0));
            }
        }
        let bad = "name='x'\nkind='attack'\nduration_secs=1\n[attack]\n\
                   signal={members=2,senders=3}";
        let err = Scenario::parse(bad, false, &Overrides::default()).expect_err("must fail");
        assert!(err.contains("senders"), "{err}");
        let off = "name='x'\nkind='attack'\nduration_secs=1\n[attack]\n\
                   block={enabled=false,sources=[]}";
        assert!(Scenario::parse(off, false, &Overrides::default()).is_ok());
    }

    #[test]
    fn stages_replace_the_rate_and_duration() {
        let staged = format!(
            "{STORM}\n[[stages]]\nrate = 100\nsecs = 2\nramp = true\n\
             [[stages]]\nrate = 300\nsecs = 3\n"
        );
        let s = Scenario::parse(&staged, false, &Overrides::default()).expect("parse");
        assert_eq!(s.duration_secs, 5.0);
        assert_eq!(s.stages.len(), 2);
        assert!((s.schedule(500.0).total() - 1000.0).abs() < 1e-9);
        // A shorter --duration-secs cuts the stages.
        let o = Overrides { duration_secs: Some(2.0), ..Overrides::default() };
        let s = Scenario::parse(&staged, false, &o).expect("parse");
        assert!((s.schedule(500.0).total() - 100.0).abs() < 1e-9);
        // No stages: the rate for the duration.
        let s = Scenario::parse(STORM, false, &Overrides::default()).expect("parse");
        assert!((s.schedule(500.0).total() - 5000.0).abs() < 1e-9);
        // --set replaces them, [smoke] too.
        let o = Overrides {
            sets: vec!["stages=[{rate=10,secs=1},{rate=20,secs=1}]".into()],
            ..Overrides::default()
        };
        let s = Scenario::parse(&staged, false, &o).expect("parse");
        assert_eq!((s.duration_secs, s.schedule(1.0).count()), (2.0, 30));
        // (appended after [smoke], so inside it)
        let smoked = format!("{STORM}\nstages = [{{rate = 7, secs = 1}}]\n");
        let s = Scenario::parse(&smoked, true, &Overrides::default()).expect("parse");
        assert_eq!(s.schedule(20.0).count(), 7, "[smoke] stages");
        let s = Scenario::parse(&smoked, false, &Overrides::default()).expect("parse");
        assert_eq!(s.schedule(500.0).count(), 5000, "no stages outside [smoke]");
        let err = |text: &str| Scenario::parse(text, false, &Overrides::default()).expect_err("x");
        let base = "name='x'\nkind='churn'\n[churn]\nrate=1\n";
        assert!(err(&format!("{base}[[stages]]\nrate=1\nsecs=0")).contains("secs"));
        assert!(err(&format!("{base}[[stages]]\nrate=1\nsecs=-2")).contains("secs"));
        assert!(err(&format!("{base}[[stages]]\nrate=nan\nsecs=2")).contains("rate"));
        assert!(err(&format!("{base}[[stages]]\nrate=1\nsecs=2\nfast=1")).contains("unknown"));
        let idle = "name='x'\nkind='idle-capacity'\n[idle]\nsessions=1\nconnect_rate=1\n\
                    [[stages]]\nrate=1\nsecs=1";
        assert!(err(idle).contains("no rate"));
    }

    #[test]
    fn mistakes_are_named() {
        let o = Overrides::default();
        let err = |text: &str| Scenario::parse(text, false, &o).expect_err("must fail");
        assert!(err("name='x'\nkind='match-storm'\nduration_secs=1").contains("[storm]"));
        assert!(err("name='x'\nkind='teleport'\nduration_secs=1").contains("unknown variant"));
        assert!(err("name='x'\nkind='churn'\nduration_secs=0\n[churn]\nrate=1")
            .contains("duration_secs"));
        assert!(err("name='x'\nkind='churn'\nduration_secs=1\nspeed=3\n[churn]\nrate=1")
            .contains("unknown field"));
        let bad_bound = "name='x'\nkind='churn'\nduration_secs=1\n[churn]\nrate=1\n\
                         [thresholds]\nerrors={}";
        assert!(err(bad_bound).contains("neither min nor max"));
        let no_smoke = "name='x'\nkind='churn'\nduration_secs=1\n[churn]\nrate=1";
        assert!(Scenario::parse(no_smoke, true, &o).expect_err("no smoke").contains("[smoke]"));
        let workers = "name='x'\nkind='full-flow'\nduration_secs=1\nworkers=2\n[churn]\nrate=1";
        assert!(err(workers).contains("one process"));
    }
}
