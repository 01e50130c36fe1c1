//! Moderation on one node, against real `rendezvous` processes: `report` (a current
//! or recent partner only, rate limited, with the room's last messages as
//! evidence), the admin API (401 without the token; kick, ban, close a room,
//! resolve a report), `--public-metrics=false`, and the state file that keeps
//! blocks and bans across a restart.

use rendezvous_test_support as common;

use std::time::Duration;

use common::admin::{self, ADMIN_ARGS, ADMIN_TOKEN};
use common::chat::{exchange, next};
use common::cluster::Node;
use common::search::pair;
use common::{http_get, Client, Ended, TempDir};
use rendezvous_actors::protocol::client as wire;
use rendezvous_actors::protocol::{close, ErrorCode, ServerFrame};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn args<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    ADMIN_ARGS.iter().copied().chain(extra.iter().copied()).collect()
}

fn report(user: &str, room: &str, reason: &str) -> Value {
    json!({"action":"report","user_id":user,"room_id":room,"reason":reason})
}

/// The answer to a `report`: the report id, or the error code.
async fn report_answer(c: &mut Client) -> Result<String, ErrorCode> {
    match next(c).await {
        ServerFrame::Reported { report_id } => Ok(report_id.expect("reported carries its id")),
        ServerFrame::Error { code, .. } => Err(code),
        other => panic!("{}: expected reported or error, got {other:?}", c.user_id),
    }
}

#[tokio::test]
async fn a_partner_reports_with_the_last_messages_and_a_stranger_cannot() {
    let node = Node::spawn(None, "mod-a", &args(&[("--report-evidence-messages", "2")]));
    let nodes = [node];
    let (mut a, mut b, room) = pair(&nodes, (0, "ann"), (0, "bob")).await;
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        exchange(&mut b, &mut a, &room, text, &format!("c{i}")).await;
    }
    let mut stranger = nodes[0].client("eve").await;
    stranger.send_json(report("bob", &room, "spam")).await;
    assert_eq!(report_answer(&mut stranger).await, Err(ErrorCode::BadRequest));
    a.send_json(report("ann", &room, "me")).await;
    assert_eq!(report_answer(&mut a).await, Err(ErrorCode::BadRequest), "not yourself");

    a.send_json(report("bob", &room, "rude")).await;
    let id = report_answer(&mut a).await.expect("a partner may report");

    let reports = admin::get(nodes[0].admin_addr(), "/api/reports").await;
    let reports = reports.as_array().expect("a list");
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = &reports[0];
    assert_eq!((r["id"].as_str(), r["reporter"].as_str()), (Some(id.as_str()), Some("ann")));
    assert_eq!((r["reported"].as_str(), r["room_id"].as_str()), (Some("bob"), Some(room.as_str())));
    assert_eq!(r["reason"], "rude");
    let texts: Vec<&str> = r["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, ["two", "three"], "the last --report-evidence-messages messages");
    let overview = admin::get(nodes[0].admin_addr(), "/api/overview").await;
    assert_eq!(overview["open_reports"], 1, "{overview}");

    let (status, resolved) = admin::post(
        nodes[0].admin_addr(),
        "/api/reports/resolve",
        json!({"report_id": id, "outcome": "dismissed"}),
    )
    .await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["resolution"]["outcome"], "dismissed");
    let open = admin::get(nodes[0].admin_addr(), "/api/reports?status=open").await;
    assert_eq!(open, json!([]));
    let all = admin::get(nodes[0].admin_addr(), "/api/reports?status=all").await;
    assert_eq!(all.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_partner_who_left_can_still_be_reported_within_the_window_and_reports_are_limited() {
    let node = Node::spawn(None, "mod-b", &args(&[("--reports-per-hour", "2")]));
    let nodes = [node];
    let (mut a, mut b, room) = pair(&nodes, (0, "ann"), (0, "bob")).await;
    exchange(&mut b, &mut a, &room, "rude words", "c1").await;
    // Bob skips Ann with `next`: the match room closes.
    b.send_json(json!({"action":"next"})).await;
    match next(&mut a).await {
        ServerFrame::RoomClosed { room_id, .. } => assert_eq!(room_id, room),
        other => panic!("ann: expected room_closed, got {other:?}"),
    }
    a.send_json(report("bob", &room, "after he left")).await;
    report_answer(&mut a).await.expect("a recent partner may be reported");
    let reports = admin::get(nodes[0].admin_addr(), "/api/reports").await;
    assert_eq!(reports[0]["evidence"][0]["text"], "rude words", "{reports}");
    a.send_json(report("bob", &room, "again")).await;
    report_answer(&mut a).await.expect("the second of two per hour");
    a.send_json(report("bob", &room, "and again")).await;
    assert_eq!(report_answer(&mut a).await, Err(ErrorCode::RateLimited));
}

#[tokio::test]
async fn the_admin_api_needs_its_token_and_public_metrics_can_be_turned_off() {
    let node = Node::spawn(None, "mod-c", &args(&[("--public-metrics", "false")]));
    let admin_addr = node.admin_addr();
    for path in ["/api/overview", "/api/reports", "/api/sessions", "/metrics"] {
        let (status, _) = admin::request(admin_addr, "GET", path, None, None).await;
        assert_eq!(status, 401, "{path} without a token");
        let (status, _) = admin::request(admin_addr, "GET", path, Some("wrong-token"), None).await;
        assert_eq!(status, 401, "{path} with another token");
        let (status, body) = admin::request(admin_addr, "GET", path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, 200, "{path} with the token: {body}");
    }
    let (status, _) =
        admin::request(admin_addr, "POST", "/api/kick", None, Some(&json!({"user_id":"x"}))).await;
    assert_eq!(status, 401, "an action without the token");
    let (status, page) = http_get(admin_addr, "/").await;
    assert!(status == 200 && page.contains("Rendezvous admin"), "the page itself is static");
    let (_, metrics) = admin::request(admin_addr, "GET", "/metrics", Some(ADMIN_TOKEN), None).await;
    assert!(metrics.contains("rendezvous_connections"), "admin /metrics: {metrics}");

    for path in ["/metrics", "/api/stats"] {
        let (status, _) = http_get(node.addr, path).await;
        assert_eq!(status, 404, "public {path} with --public-metrics=false");
    }
    assert_eq!(http_get(node.addr, "/healthz").await.0, 200);
    assert_eq!(http_get(node.addr, "/api/trending").await.0, 200);
}

#[tokio::test]
async fn no_token_no_admin_listener_and_public_metrics_stay_by_default() {
    let node = Node::spawn(None, "mod-d", &[]);
    assert!(node.admin.is_none(), "no --admin-token: no admin API");
    assert!(node.logs().contains("admin API off"), "{}", node.logs());
    assert_eq!(http_get(node.addr, "/metrics").await.0, 200);
    assert_eq!(http_get(node.addr, "/api/stats").await.0, 200);
}

#[tokio::test]
async fn kick_ban_and_close_from_the_admin_api() {
    let node = Node::spawn(None, "mod-e", &args(&[]));
    let admin_addr = node.admin_addr();
    let nodes = [node];
    let (mut a, mut b, room) = pair(&nodes, (0, "ann"), (0, "bob")).await;
    let sessions = admin::get(admin_addr, "/api/sessions?find=bo").await;
    assert_eq!(sessions[0]["user_id"], "bob", "{sessions}");
    assert_eq!(sessions[0]["rooms"][0].as_str(), Some(room.as_str()));
    let rooms = admin::get(admin_addr, "/api/rooms").await;
    assert_eq!(rooms[0]["room_id"].as_str(), Some(room.as_str()), "{rooms}");

    let (status, _) = admin::post(admin_addr, "/api/rooms/close", json!({"room_id": room})).await;
    assert_eq!(status, 200);
    for c in [&mut a, &mut b] {
        match next(c).await {
            ServerFrame::RoomClosed { reason, .. } => {
                assert_eq!(reason.as_deref(), Some("closed_by_operator"))
            }
            other => panic!("{}: expected room_closed, got {other:?}", c.user_id),
        }
    }

    let (status, _) = admin::post(admin_addr, "/api/kick", json!({"user_id": "ann"})).await;
    assert_eq!(status, 200);
    assert_eq!(a.closed().await, Ended::Closed(close::KICKED));
    nodes[0].client("ann").await; // a kick is not a ban

    let (status, ban) =
        admin::post(admin_addr, "/api/bans", json!({"user_id": "bob", "duration_secs": 600})).await;
    assert_eq!(status, 200, "{ban}");
    assert_eq!(b.closed().await, Ended::Closed(close::BANNED));
    assert_eq!(Client::try_connect(&nodes[0].ws_url("bob"), &[]).await.err(), Some(403));
    // A browser (with Origin) is upgraded, told why, and closed with 4003.
    let mut req = nodes[0].ws_url("bob").into_client_request().expect("request");
    req.headers_mut().insert("Origin", "http://localhost".parse().expect("header"));
    let mut ws = wire::connect(req).await.expect("a browser's upgrade is accepted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    match wire::recv(&mut ws, deadline).await {
        Ok(ServerFrame::Error { code: ErrorCode::Unauthorized, message, .. }) => {
            assert!(message.contains("banned"), "{message}")
        }
        other => panic!("expected the banned error, got {other:?}"),
    }
    assert_eq!(wire::closed(&mut ws, deadline).await, Some(Ended::Closed(close::BANNED)));
    let bans = admin::get(admin_addr, "/api/bans").await;
    assert_eq!(bans[0]["user"], "bob");

    let (status, _) = admin::post(admin_addr, "/api/unban", json!({"user_id": "bob"})).await;
    assert_eq!(status, 200);
    nodes[0].client("bob").await;
    let (status, _) = admin::post(admin_addr, "/api/unban", json!({"user_id": "bob"})).await;
    assert_eq!(status, 404, "no ban left to lift");
    let (status, _) = admin::post(admin_addr, "/api/bans", json!({"user_id": "x"})).await;
    assert_eq!(status, 400, "a ban needs a duration");
}

#[tokio::test]
async fn an_address_ban_refuses_anyone_from_that_address() {
    let node = Node::spawn(None, "mod-f", &args(&[]));
    let admin_addr = node.admin_addr();
    let mut bob = node.client("bob").await;
    let sessions = admin::get(admin_addr, "/api/sessions").await;
    let ip = sessions[0]["ip"].as_str().expect("the session's address").to_owned();
    let (status, _) = admin::post(
        admin_addr,
        "/api/bans",
        json!({"user_id": "bob", "duration_secs": 600, "ip": ip}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(bob.closed().await, Ended::Closed(close::BANNED));
    assert_eq!(Client::try_connect(&node.ws_url("someone-else"), &[]).await.err(), Some(403));
}

#[tokio::test]
async fn blocks_and_bans_survive_a_restart_with_the_state_file() {
    let dir = TempDir::new("mod-state");
    let file = dir.join("moderation.json");
    let extra = [("--moderation-state-file", file.as_str())];
    let nodes = [Node::spawn(None, "mod-g", &args(&extra))];
    let (mut a, mut b, _room) = pair(&nodes, (0, "ann"), (0, "bob")).await;
    a.send_json(json!({"action":"block","user_id":"bob"})).await;
    assert_eq!(next(&mut a).await.kind(), "blocked");
    assert_eq!(next(&mut b).await.kind(), "room_closed");
    let (status, _) = admin::post(
        nodes[0].admin_addr(),
        "/api/bans",
        json!({"user_id": "carl", "duration_secs": 600}),
    )
    .await;
    assert_eq!(status, 200);
    drop((a, b));
    let [mut node] = nodes;
    node.sigterm();
    assert_eq!(node.wait_exit(Duration::from_secs(10)), 0);
    let saved = std::fs::read_to_string(&file).expect("the state file was written");
    assert!(saved.contains("carl") && saved.contains("bob"), "{saved}");

    let node = Node::spawn(None, "mod-g", &args(&extra));
    assert!(node.logs().contains("moderation state file loaded"), "{}", node.logs());
    assert_eq!(Client::try_connect(&node.ws_url("carl"), &[]).await.err(), Some(403));
    admin::kept_apart(&node, "ann", "bob", "dan").await;
}
