//! The plain HTTP side of the port: health, readiness, Prometheus metrics, stats,
//! trending, and what `/ws` does with requests that are not proper upgrades.
//!
//! The Prometheus recorder is process-global, shared by every server this test
//! binary starts, so metric checks look at presence and increases, never exact
//! values.

use rendezvous_test_support as common;

use std::net::SocketAddr;
use std::time::Duration;

use common::http::{get_json, raw_exchange, raw_request, wait_stats};
use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------- helpers

async fn metrics_text(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Sample lines of metric `name` (exactly that name, any labels).
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.lines().filter(move |l| {
        !l.starts_with('#')
            && l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

/// Sum of all samples of `name` across labels (0 when absent).
fn metric_sum(text: &str, name: &str) -> f64 {
    samples(text, name)
        .map(|l| {
            let v = l.rsplit(' ').next().expect("value");
            v.parse::<f64>().unwrap_or_else(|e| panic!("bad sample `{l}`: {e}"))
        })
        .sum()
}

fn trending_pairs(v: &Value) -> Vec<(String, u64)> {
    v.as_array()
        .unwrap_or_else(|| panic!("trending is not an array: {v}"))
        .iter()
        .map(|e| {
            (
                e["interest"].as_str().expect("interest").to_owned(),
                e["score"].as_u64().expect("score"),
            )
        })
        .collect()
}

// ---------------------------------------------------------------- basics

#[tokio::test]
async fn health_and_readiness_are_200() {
    let server = TestServer::start(test_config());
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200, "GET /healthz");
    assert_eq!(http_get(server.addr, "/readyz").await.0, 200, "GET /readyz");
}

#[tokio::test]
async fn unknown_path_is_404() {
    let server = TestServer::start(test_config());
    for path in ["/nope", "/api", "/api/stats/extra", "/healthz/x", "/app.js/x"] {
        let (status, _) = http_get(server.addr, path).await;
        assert_eq!(status, 404, "{path}");
    }
}

#[tokio::test]
async fn non_get_methods_are_405() {
    let server = TestServer::start(test_config());
    let addr = server.addr;
    for (method, path) in
        [("POST", "/healthz"), ("POST", "/api/stats"), ("PUT", "/api/trending"), ("DELETE", "/ws")]
    {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let (status, body) = raw_request(addr, &req).await;
        assert_eq!(status, 405, "{method} {path}: {body}");
    }
    // The server is still fine afterwards.
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
}

// ---------------------------------------------------------------- metrics

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_activity() {
    let server = TestServer::start(test_config());
    let (status, head, _) = raw_exchange(
        server.addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.addr),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"),
        "Prometheus text content type: {head}"
    );
    let before = metrics_text(server.addr).await;

    let (mut a, mut b, room) = matched_pair_on(&server, "m-alice", "m-bob", &["chess", "go"]).await;
    a.send_json(json!({"action":"send","room_id":room,"text":"hi","client_msg_id":"c1"})).await;
    assert_eq!(a.recv_kind("ack").await.kind(), "ack");
    assert_eq!(b.recv_kind("message").await.kind(), "message");

    // Counters only grow (other tests share the recorder), so compare with `before`.
    let grew_by = |after: &str, name: &str, at_least: f64| {
        metric_sum(after, name) >= metric_sum(&before, name) + at_least
    };
    let expectations: [(&str, f64); 8] = [
        ("rendezvous_sessions_opened_total", 2.0),
        ("rendezvous_searches_started_total", 2.0),
        ("rendezvous_matches_total", 1.0),
        ("rendezvous_match_latency_seconds_count", 2.0),
        ("rendezvous_match_latency_seconds_bucket", 2.0),
        ("rendezvous_frames_in_total", 3.0),
        ("rendezvous_frames_out_total", 8.0),
        ("rendezvous_messages_total", 1.0),
    ];
    // frames_out is counted right after a write is flushed, so allow it a moment.
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    let after = loop {
        let after = metrics_text(server.addr).await;
        if expectations.iter().all(|(n, d)| grew_by(&after, n, *d)) {
            break after;
        }
        if tokio::time::Instant::now() > deadline {
            let report: Vec<_> = expectations
                .iter()
                .map(|(n, _)| {
                    format!("{n}: {} -> {}", metric_sum(&before, n), metric_sum(&after, n))
                })
                .collect();
            panic!("metrics did not grow as expected:\n{}", report.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    for name in [
        "rendezvous_connections",
        "rendezvous_sessions_opened_total",
        "rendezvous_searches_started_total",
        "rendezvous_matches_total",
        "rendezvous_match_latency_seconds_bucket",
        "rendezvous_frames_in_total",
        "rendezvous_frames_out_total",
        "rendezvous_messages_total",
    ] {
        assert!(samples(&after, name).next().is_some(), "{name} missing from /metrics:\n{after}");
    }
    // Prometheus text format: TYPE lines, a histogram with an +Inf bucket.
    assert!(after.contains("# TYPE rendezvous_matches_total counter"), "{after}");
    assert!(after.contains("# TYPE rendezvous_connections gauge"), "{after}");
    assert!(after.contains("# TYPE rendezvous_match_latency_seconds histogram"), "{after}");
    // CPU time keeps its fractions of a second (metrics-process's gauge form; its
    // counter form truncates to whole seconds).
    assert!(after.contains("# TYPE process_cpu_seconds_total gauge"), "{after}");
    assert!(
        samples(&after, "rendezvous_match_latency_seconds_bucket")
            .any(|l| l.contains("le=\"+Inf\"")),
        "{after}"
    );
    // Every sample line is `name{labels} value` with a numeric value.
    for line in after.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let value = line.rsplit(' ').next().expect("value");
        assert!(value.parse::<f64>().is_ok(), "not a sample line: {line}");
        assert!(line.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'), "{line}");
    }
    // The connections gauge counts these two sessions (other tests may add more).
    assert!(metric_sum(&after, "rendezvous_connections") >= 2.0, "{after}");
}

// ---------------------------------------------------------------- stats

#[tokio::test]
async fn stats_track_connections_searches_and_rooms() {
    let server = TestServer::start(test_config());
    let addr = server.addr;
    let s = get_json(addr, "/api/stats").await;
    for key in ["online", "searching", "rooms", "nodes", "trending"] {
        assert!(s.get(key).is_some(), "stats lack `{key}`: {s}");
    }
    assert_eq!(s["online"], 0, "{s}");
    assert_eq!(s["searching"], 0, "{s}");
    assert_eq!(s["rooms"], 0, "{s}");
    assert_eq!(s["nodes"], 1, "{s}");
    assert_eq!(s["trending"], json!([]), "{s}");

    let mut a = server.client("s-alice").await;
    wait_stats(addr, "online == 1", FRAME_TIMEOUT, |s| s["online"] == 1).await;
    a.find_match(&["chess"]).await;
    assert_eq!(a.recv().await.kind(), "searching");
    wait_stats(addr, "searching == 1", FRAME_TIMEOUT, |s| s["searching"] == 1 && s["online"] == 1)
        .await;

    let mut b = server.client("s-bob").await;
    wait_stats(addr, "online == 2", FRAME_TIMEOUT, |s| s["online"] == 2).await;
    b.find_match(&["chess"]).await;
    let room = room_of(&a.recv_kind("match_found").await);
    b.recv_kind("match_found").await;
    let s = wait_stats(addr, "searching == 0, rooms == 1", FRAME_TIMEOUT, |s| {
        s["searching"] == 0 && s["rooms"] == 1
    })
    .await;
    assert_eq!(s["online"], 2);
    assert_eq!(trending_pairs(&s["trending"]), [("chess".to_string(), 1)]);

    // A public room counts as a room too.
    let mut c = server.client("s-carol").await;
    c.send_json(json!({"action":"join","room_id":"pub:stats"})).await;
    assert_eq!(c.recv().await.kind(), "joined");
    wait_stats(addr, "online == 3, rooms == 2", FRAME_TIMEOUT, |s| {
        s["online"] == 3 && s["rooms"] == 2
    })
    .await;

    // Leaving the match room closes it; a cancelled search stops counting.
    a.send_json(json!({"action":"leave","room_id":room})).await;
    assert_eq!(a.recv_kind("left").await.kind(), "left");
    wait_stats(addr, "rooms == 1", FRAME_TIMEOUT, |s| s["rooms"] == 1).await;
    c.find_match(&["zzz-nobody"]).await;
    assert_eq!(c.recv().await.kind(), "searching");
    wait_stats(addr, "searching == 1", FRAME_TIMEOUT, |s| s["searching"] == 1).await;
    c.send_json(json!({"action":"cancel_match"})).await;
    assert_eq!(c.recv_kind("match_cancelled").await.kind(), "match_cancelled");
    wait_stats(addr, "searching == 0", FRAME_TIMEOUT, |s| s["searching"] == 0).await;

    drop(b);
    wait_stats(addr, "online == 2", FRAME_TIMEOUT, |s| s["online"] == 2).await;
}

// ---------------------------------------------------------------- trending

#[tokio::test]
async fn trending_counts_interests_shared_in_matches() {
    let server = TestServer::start(test_config());
    let addr = server.addr;
    assert_eq!(get_json(addr, "/api/trending").await, json!([]));

    // chess and go shared once, then chess alone once more.
    let _p1 = matched_pair_on(&server, "t-a", "t-b", &["chess", "go"]).await;
    let _p2 = matched_pair_on(&server, "t-c", "t-d", &["chess"]).await;
    // Interests given but not shared are not counted.
    let _p3 = {
        let [mut e, mut f] = server.clients(["t-e", "t-f"]).await;
        e.find_match(&["tennis", "opera"]).await;
        assert_eq!(e.recv().await.kind(), "searching");
        f.find_match(&["tennis", "jazz"]).await;
        let shared = match e.recv_kind("match_found").await {
            rendezvous_actors::protocol::ServerFrame::MatchFound { shared_interests, .. } => {
                shared_interests
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(shared, ["tennis"]);
        f.recv_kind("match_found").await;
        (e, f)
    };

    let top = trending_pairs(&get_json(addr, "/api/trending").await);
    assert_eq!(top[0], ("chess".to_string(), 2), "chess ranked first: {top:?}");
    let mut rest = top[1..].to_vec();
    rest.sort();
    assert_eq!(rest, [("go".to_string(), 1), ("tennis".to_string(), 1)], "{top:?}");

    let one = trending_pairs(&get_json(addr, "/api/trending?limit=1").await);
    assert_eq!(one, [("chess".to_string(), 2)]);
    let two = trending_pairs(&get_json(addr, "/api/trending?limit=2").await);
    assert_eq!(two.len(), 2);
    assert_eq!(two[0], ("chess".to_string(), 2));

    for bad in ["abc", "-1", "0", "1.5", ""] {
        let (status, body) = http_get(addr, &format!("/api/trending?limit={bad}")).await;
        assert_eq!(status, 400, "limit={bad}: {body}");
    }

    // /api/stats carries the same ranking.
    let s = get_json(addr, "/api/stats").await;
    assert_eq!(trending_pairs(&s["trending"])[0], ("chess".to_string(), 2));
}

// ---------------------------------------------------------------- /ws

#[tokio::test]
async fn plain_get_on_ws_is_400() {
    let server = TestServer::start(test_config());
    assert_eq!(http_get(server.addr, "/ws").await.0, 400, "GET /ws");
    assert_eq!(http_get(server.addr, "/ws?user=someone").await.0, 400, "GET /ws?user=someone");
    // Upgrade header but no key/version is not a handshake either.
    let req = format!(
        "GET /ws?user=x HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n",
        server.addr
    );
    let (status, _) = raw_request(server.addr, &req).await;
    assert_eq!(status, 400);
    wait_stats(server.addr, "online == 0", FRAME_TIMEOUT, |s| s["online"] == 0).await;
}

#[tokio::test]
async fn websocket_upgrade_to_an_unknown_path_is_not_served() {
    let server = TestServer::start(test_config());
    for path in ["/nope", "/ws/extra", "/api/stats"] {
        let url = format!("ws://{}{path}?user=x", server.addr);
        match Client::try_connect(&url, &[]).await {
            Err(status) => assert_ne!(status, 101, "{path}"),
            Ok(c) => panic!("{path}: upgraded to a session: {:?}", c.welcome),
        }
    }
    let url = format!("ws://{}/nope?user=x", server.addr);
    assert_eq!(Client::try_connect(&url, &[]).await.err(), Some(404));
    // No session was started by any of them.
    assert_eq!(get_json(server.addr, "/api/stats").await["online"], 0);
    // The real endpoint still works.
    let c = server.client("x").await;
    assert_eq!(c.user_id, "x");
}
