//! Fuzzing the frame decoder and the protocol handlers on the stable toolchain,
//! with proptest's generators driven by hand (so a run is bounded by a case count
//! and a time budget, and async code can run between cases).
//!
//! * `decoder_never_panics`: arbitrary text, arbitrary JSON and frames shaped like
//!   the protocol's (real action names, real and bogus fields of any JSON type) go
//!   through `ClientFrame` parsing and every validation function.
//! * `handlers_survive_arbitrary_frames`: the same frames are sent by a real client,
//!   in a real match room, to a real server; after every batch the sender must still
//!   be served and its partner must still chat.
//! * `the_regression_corpus_is_handled`: every file in `tests/fuzz_corpus/` (inputs
//!   that once mattered) is replayed the same way.
//!
//! `RENDEZVOUS_FUZZ_CASES` and `RENDEZVOUS_FUZZ_SECS` set the budget (defaults keep
//! the suite quick); RELIABILITY.md records the long runs.

use rendezvous_test_support as common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use rendezvous_actors::protocol::{ClientFrame, ServerFrame};
use rendezvous_actors::session::validate;
use rendezvous_actors::EngineConfig;
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::Message;

const ACTIONS: &[&str] = &[
    "find_match",
    "cancel_match",
    "next",
    "send",
    "typing",
    "read",
    "signal",
    "block",
    "join",
    "leave",
    "history",
    "report",
];
const FIELDS: &[&str] = &[
    "interests",
    "language",
    "region",
    "group_size",
    "max_wait_ms",
    "room_id",
    "text",
    "client_msg_id",
    "active",
    "seq",
    "payload",
    "to",
    "user_id",
    "after_seq",
    "limit",
    "reason",
];

fn budget() -> (u64, Duration) {
    let cases = std::env::var("RENDEZVOUS_FUZZ_CASES").ok().and_then(|v| v.parse().ok());
    let secs = std::env::var("RENDEZVOUS_FUZZ_SECS").ok().and_then(|v| v.parse().ok());
    (cases.unwrap_or(3_000), Duration::from_secs(secs.unwrap_or(15)))
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        "[a-z:]{0,12}".prop_map(Value::String),
        Just(json!("pub:lobby")),
        Just(json!("x".repeat(5_000))),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((".{0,10}", inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A frame shaped like the protocol's: a real (or bogus) action and any fields.
/// `room` is substituted for the placeholder room id so room actions hit a room.
fn protocol_frame() -> impl Strategy<Value = Value> {
    let action = prop_oneof![
        8 => prop::sample::select(ACTIONS).prop_map(|a| json!(a)),
        1 => json_value(),
    ];
    let fields = prop::collection::vec(
        (prop::sample::select(FIELDS), prop_oneof![3 => Just(json!("@room")), 7 => json_value()]),
        0..6,
    );
    (action, fields).prop_map(|(action, fields)| {
        let mut m = Map::new();
        m.insert("action".into(), action);
        for (k, v) in fields {
            m.insert(k.to_owned(), v);
        }
        Value::Object(m)
    })
}

/// Any text a client could send: raw strings, arbitrary JSON, protocol-shaped frames.
fn frame_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => ".{0,200}",
        1 => prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        2 => json_value().prop_map(|v| v.to_string()),
        6 => protocol_frame().prop_map(|v| v.to_string()),
    ]
}

/// Run every validation a frame's fields go through (they must not panic).
fn validate_all(frame: &ClientFrame, cfg: &EngineConfig) {
    match frame {
        ClientFrame::FindMatch { interests, language, region, group_size, max_wait_ms } => {
            let _ = validate::search(
                interests,
                language.as_deref(),
                region.as_deref(),
                *group_size,
                *max_wait_ms,
                cfg,
            );
        }
        ClientFrame::Send { room_id, text, client_msg_id } => {
            let _ = validate::room_id(room_id, cfg);
            let _ = validate::text(text, cfg);
            let _ = validate::client_msg_id(client_msg_id.as_deref(), cfg);
        }
        ClientFrame::Signal { room_id, payload, to } => {
            let _ = validate::room_id(room_id, cfg);
            let _ = validate::signal_payload(payload, cfg);
            if let Some(to) = to {
                let _ = validate::user_id(to, cfg);
            }
        }
        ClientFrame::Block { user_id } => {
            let _ = validate::user_id(user_id, cfg);
        }
        ClientFrame::Join { room_id } => {
            let _ = validate::public_room(room_id, cfg);
        }
        ClientFrame::Typing { room_id, .. }
        | ClientFrame::Read { room_id, .. }
        | ClientFrame::Leave { room_id }
        | ClientFrame::History { room_id, .. } => {
            let _ = validate::room_id(room_id, cfg);
        }
        ClientFrame::Report { user_id, room_id, reason } => {
            let _ = validate::user_id(user_id, cfg);
            let _ = validate::room_id(room_id, cfg);
            let _ = validate::report_reason(reason, cfg);
        }
        ClientFrame::CancelMatch {} | ClientFrame::Next {} | ClientFrame::Refresh { .. } => {}
    }
}

#[test]
fn decoder_never_panics() {
    let (cases, secs) = budget();
    let cfg = EngineConfig::default();
    let mut runner = TestRunner::new(PropConfig::default());
    let strategy = frame_text();
    let started = Instant::now();
    let (mut runs, mut parsed) = (0u64, 0u64);
    while runs < cases * 10 && started.elapsed() < secs {
        let text = strategy.new_tree(&mut runner).expect("generate").current();
        if let Ok(frame) = serde_json::from_str::<ClientFrame>(&text) {
            parsed += 1;
            validate_all(&frame, &cfg);
        }
        runs += 1;
    }
    eprintln!("decoder: {runs} inputs in {:?}, {parsed} parsed as frames", started.elapsed());
    assert!(runs > 0);
}

fn fuzz_config() -> rendezvous::Config {
    let mut c = test_config();
    let e = &mut c.engine;
    // Generous limits: the fuzzer explores handlers, not the flood protection (which
    // has its own tests); a limit hit is still answered with an error frame.
    lift_rate_limits(e, 1_000_000);
    e.flood_strikes = u32::MAX;
    e.outbound_queue = 1 << 16;
    c
}

/// The server's frame limit (`max_frame_bytes` of the test config).
const MAX_FRAME: usize = 64 * 1024;

/// Keep a batch that broke a session where a person can replay it.
fn save_batch(frames: &[String], why: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts/fuzz");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("failure-{}.jsonl", std::process::id()));
    let _ = std::fs::write(&path, format!("{}\n", frames.join("\n")));
    eprintln!("fuzz: {why}; batch saved to {}", path.display());
    path
}

/// Send `frames` from `a` (a member of `room`), then prove `a` and `b` still work.
/// A frame over the size limit must end `a`'s session with 1009 and nothing
/// else (that is the contract, tested on its own in bad_input.rs); returns
/// false when that happened, so the caller starts a fresh pair.
async fn replay(a: &mut Client, b: &mut Client, room: &str, frames: &[String]) -> bool {
    for (i, f) in frames.iter().enumerate() {
        let text = f.replace("@room", room);
        let oversized = text.len() > MAX_FRAME;
        if let Err(e) = a.ws.send(Message::Text(text.into())).await {
            let ended = a.closed().await;
            let explained = frames[..=i].iter().any(|f| f.len() > MAX_FRAME);
            if explained && matches!(ended, Ended::Closed(1009) | Ended::Dropped) {
                return false;
            }
            let path =
                save_batch(frames, &format!("send #{i} failed ({e}), session ended {ended:?}"));
            panic!("a session ended without cause at frame {i}: {ended:?}; see {}", path.display());
        }
        if oversized {
            let ended = a.closed().await;
            if !matches!(ended, Ended::Closed(1009) | Ended::Dropped) {
                let path =
                    save_batch(frames, &format!("oversized frame #{i} ended with {ended:?}"));
                panic!(
                    "an oversized frame ended the session with {ended:?}; see {}",
                    path.display()
                );
            }
            return false;
        }
    }
    probe(a, "probe-room-that-does-not-exist").await;
    while b.try_recv(Duration::from_millis(1)).await.is_some() {}
    true
}

/// Send a `history` for the unknown room `tag` and skip frames until its error:
/// every frame `c` sent before it has been handled by then.
async fn probe(c: &mut Client, tag: &str) {
    c.send_json(json!({"action":"history","room_id":tag})).await;
    loop {
        match c.recv().await {
            ServerFrame::Error { message, .. } if message.contains(tag) => break,
            _ => continue,
        }
    }
}

/// A fresh matched pair (the fuzzer may have left, blocked or skipped the last).
async fn pair(server: &TestServer, n: u64) -> (Client, Client, String) {
    matched_pair(server, &format!("fa{n}"), &format!("fb{n}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_survive_arbitrary_frames() {
    let (cases, secs) = budget();
    let server = TestServer::start(fuzz_config());
    let mut runner = TestRunner::new(PropConfig::default());
    let strategy = frame_text();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut round = 0u64;
    let mut oversized = 0u64;
    while sent < cases && started.elapsed() < secs {
        let (mut a, mut b, room) = pair(&server, round).await;
        let batch: Vec<String> =
            (0..50).map(|_| strategy.new_tree(&mut runner).expect("generate").current()).collect();
        if !replay(&mut a, &mut b, &room, &batch).await {
            oversized += 1;
        }
        sent += batch.len() as u64;
        round += 1;
        a.close().await;
        b.close().await;
    }
    // The node still serves a fresh pair end to end.
    let (mut a, mut b, room) = pair(&server, u64::MAX).await;
    a.send_json(json!({"action":"send","room_id":room,"text":"still fine"})).await;
    assert_eq!(b.recv_kind("message").await.kind(), "message");
    eprintln!(
        "handlers: {sent} frames in {round} rounds ({oversized} ended by an oversized frame, \
         1009), {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_regression_corpus_is_handled() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    let mut frames = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests/fuzz_corpus") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("corpus file");
        // One frame per line; a file may hold a single frame spanning lines.
        if path.extension().is_some_and(|e| e == "jsonl") {
            frames.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        } else {
            frames.push(text);
        }
    }
    assert!(frames.len() >= 20, "the corpus has {} frames", frames.len());
    let server = TestServer::start(fuzz_config());
    let (mut a, mut b, room) = pair(&server, 0).await;
    assert!(replay(&mut a, &mut b, &room, &frames).await, "the corpus has no oversized frames");
    // The corpus's searches and cancels end asynchronously (a `match_cancelled`
    // can come after the probe), so the corpus user may still be searching, with
    // criteria that accept anyone, and take the next pair's first member. Cancel,
    // and wait for a probe behind the cancel: by its answer the cancel is queued
    // at the shard ahead of any search of the next pair.
    a.send_json(json!({"action":"cancel_match"})).await;
    probe(&mut a, "probe-after-cancel").await;
    let (mut a, mut b, room) = pair(&server, 1).await;
    a.send_json(json!({"action":"send","room_id":room,"text":"after the corpus"})).await;
    assert_eq!(b.recv_kind("message").await.kind(), "message");
}
