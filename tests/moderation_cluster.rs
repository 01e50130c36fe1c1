//! Moderation across a cluster, against real `rendezvous` processes joined through a
//! private `redis-server`: a report on one node leads to a ban from that node's
//! admin API, which disconnects the user on the other node within a second and
//! keeps them out of both; blocks and bans stored in Redis hold for a node started
//! later and across a node's restart.

use rendezvous_test_support as common;

use std::time::{Duration, Instant};

use common::admin::{self, ADMIN_ARGS};
use common::chat::{exchange, next};
use common::cluster::{wait_http_status, Cluster, Node, RedisServer, Resp};
use common::search::pair;
use common::{Client, Ended};
use rendezvous_actors::protocol::{close, ServerFrame};
use serde_json::json;

/// How long a node may take to be ready (its first resync loads the record).
const READY: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_report_leads_to_a_ban_that_closes_the_user_on_the_other_node_within_a_second() {
    let cluster = Cluster::start_with(2, ADMIN_ARGS).await;
    let (mut ann, mut bob, room) = pair(&cluster.nodes, (0, "ann"), (1, "bob")).await;
    exchange(&mut bob, &mut ann, &room, "something awful", "c1").await;
    ann.send_json(json!({"action":"report","user_id":"bob","room_id":room,"reason":"abuse"})).await;
    let id = match next(&mut ann).await {
        ServerFrame::Reported { report_id } => report_id.expect("report id"),
        other => panic!("ann: expected reported, got {other:?}"),
    };

    // The report is in the queue of both nodes' admin APIs.
    let admin_a = cluster.node(0).admin_addr();
    let admin_b = cluster.node(1).admin_addr();
    let queue = admin::get(admin_a, "/api/reports").await;
    assert_eq!(queue[0]["id"].as_str(), Some(id.as_str()), "{queue}");
    assert_eq!(queue[0]["evidence"][0]["text"], "something awful");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let theirs = admin::get(admin_b, "/api/reports").await;
        if theirs[0]["id"].as_str() == Some(id.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "node-b never saw the report: {theirs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The operator bans bob from node-a; bob is connected to node-b.
    let t0 = Instant::now();
    let (status, ban) = admin::post(
        admin_a,
        "/api/bans",
        json!({"user_id": "bob", "duration_secs": 3600, "reason": "abuse"}),
    )
    .await;
    assert_eq!(status, 200, "{ban}");
    assert_eq!(bob.closed().await, Ended::Closed(close::BANNED));
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "bob was closed on the other node after {took:?}");
    // His partner's room closed with him (the reason is the replica's to tell).
    match next(&mut ann).await {
        ServerFrame::RoomClosed { room_id, .. } => assert_eq!(room_id, room),
        other => panic!("ann: expected room_closed, got {other:?}"),
    }
    let (status, _) =
        admin::post(admin_a, "/api/reports/resolve", json!({"report_id": id, "outcome": "banned"}))
            .await;
    assert_eq!(status, 200);

    // Kept out of both nodes after reconnecting.
    for node in &cluster.nodes {
        assert_eq!(
            Client::try_connect(&node.ws_url("bob"), &[]).await.err(),
            Some(403),
            "{}",
            node.id
        );
    }
    let bans = admin::get(admin_b, "/api/bans").await;
    assert_eq!(bans[0]["user"], "bob", "{bans}");
}

#[tokio::test]
async fn redis_keeps_blocks_and_bans_for_a_node_started_later_and_across_a_restart() {
    let redis = RedisServer::start();
    let url = redis.url();
    let first = Node::spawn(Some(&url), "node-a", ADMIN_ARGS);
    {
        let nodes = [first];
        let (mut ann, mut bob, _room) = pair(&nodes, (0, "ann"), (0, "bob")).await;
        ann.send_json(json!({"action":"block","user_id":"bob"})).await;
        assert_eq!(next(&mut ann).await.kind(), "blocked");
        assert_eq!(next(&mut bob).await.kind(), "room_closed");
        let (status, _) = admin::post(
            nodes[0].admin_addr(),
            "/api/bans",
            json!({"user_id": "carl", "duration_secs": 3600}),
        )
        .await;
        assert_eq!(status, 200);
        // Both are stored before node-a goes away (a reply after them on the same pipe).
        let deadline = Instant::now() + Duration::from_secs(5);
        while redis.cmd(&["HLEN", "rdv:{mod}:data"]) != Resp::Int(2) {
            assert!(
                Instant::now() < deadline,
                "not stored: {:?}",
                redis.cmd(&["HKEYS", "rdv:{mod}:data"])
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ttl = redis.cmd(&["PTTL", "rdv:{mod}:ends"]);
        assert!(matches!(ttl, Resp::Int(ms) if ms > 3_000_000), "TTL of the record: {ttl:?}");
        // node-a is killed outright: nothing but Redis keeps the record.
    }

    // A node started after both changes enforces them.
    let later = Node::spawn(Some(&url), "node-b", ADMIN_ARGS);
    wait_http_status(&later, "/readyz", 200, READY).await;
    assert_eq!(Client::try_connect(&later.ws_url("carl"), &[]).await.err(), Some(403));
    let bans = admin::get(later.admin_addr(), "/api/bans").await;
    assert_eq!(bans[0]["user"], "carl", "{bans}");
    admin::kept_apart(&later, "ann", "bob", "dan").await;
    drop(later);

    // And again after that node restarts.
    let again = Node::spawn(Some(&url), "node-b", ADMIN_ARGS);
    wait_http_status(&again, "/readyz", 200, READY).await;
    assert_eq!(Client::try_connect(&again.ws_url("carl"), &[]).await.err(), Some(403));
    admin::kept_apart(&again, "ann", "bob", "eve").await;
}

/// A block closes the match room the two share even when they are on different
/// nodes (PROTOCOL.md: `room_closed`, reason `blocked`, to both), and the blocked
/// user can no longer reach the blocker through it. On one node it does; across
/// nodes the blocked member once heard nothing and could still post into the room.
#[tokio::test]
async fn a_block_closes_the_shared_room_across_nodes() {
    let cluster = Cluster::start(2).await;
    let (mut xena, mut yuri, room) = pair(&cluster.nodes, (0, "xena"), (1, "yuri")).await;
    xena.send_json(json!({"action": "block", "user_id": "yuri"})).await;
    assert_eq!(next(&mut xena).await.kind(), "blocked");
    for (c, who) in [(&mut xena, "blocker"), (&mut yuri, "blocked member")] {
        match next(c).await {
            ServerFrame::RoomClosed { room_id, reason } => {
                assert_eq!(room_id, room, "{who}");
                assert_eq!(reason.as_deref(), Some("blocked"), "{who}");
            }
            other => panic!("{who} {}: expected room_closed, got {other:?}", c.user_id),
        }
    }
    // The room is gone for yuri: a send is refused, and xena hears nothing.
    common::chat::send_text(&mut yuri, &room, "still here?", "y1").await;
    match next(&mut yuri).await {
        ServerFrame::Error { .. } => {}
        other => panic!("yuri: a send into the closed room was answered {other:?}"),
    }
    xena.expect_silence(Duration::from_millis(500)).await;
}
