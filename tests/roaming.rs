//! Searches without a language, and the default wait-target policy, through real
//! WebSocket clients against real servers: a language-less search is matched with
//! a user waiting in another language's pool, on one node and across two nodes
//! joined through a real `redis-server`; a cancel reaches a search that moved
//! between pools; with default matching settings a pair that shares nothing is
//! still matched within the wait target; and the default policy across two nodes:
//! many users on both nodes, each matched once, with a partner of their language, in
//! a symmetric pair, within the target.

use rendezvous_test_support as common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, UNSET};
use common::http::wait_stats;
use common::search::Search;
use common::*;
use rendezvous::config::Config;
use rendezvous_actors::protocol::ServerFrame;
use serde_json::json;

const SEARCH: Search = Search::AMID_CHATTER;

/// The test settings under the default policy (no ladder) aiming at `target_ms`.
fn config_with_target(target_ms: u64) -> Config {
    let mut c = test_config();
    c.engine.ladder.clear();
    c.engine.max_wait_target_ms = target_ms;
    c
}

#[tokio::test]
async fn a_search_without_language_matches_a_user_waiting_in_another_language() {
    let server = TestServer::start(test_config());
    let [mut fr, mut any] = server.clients(["francoise", "anyone"]).await;
    SEARCH.search(&mut fr, &["chess", "go"], json!({"language": "fr"})).await;
    // No language: homed in the default pool (en), where nobody waits; it moves on.
    SEARCH.search(&mut any, &["chess", "go"], json!({})).await;
    let a = SEARCH.expect_match(&mut any).await;
    let f = SEARCH.expect_match(&mut fr).await;
    assert_eq!(a.room, f.room);
    assert_eq!(a.partner.as_deref(), Some("francoise"));
    assert_eq!(f.partner.as_deref(), Some("anyone"));
    assert_eq!(a.shared, vec!["chess".to_owned(), "go".to_owned()]);
    // One match each.
    SEARCH.quiet(&mut any, Duration::from_millis(300)).await;
    SEARCH.quiet(&mut fr, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn two_users_who_both_give_a_language_still_need_the_same_one() {
    let server = TestServer::start(test_config());
    let [mut fr, mut de, mut any] = server.clients(["fr1", "de1", "any1"]).await;
    SEARCH.search(&mut fr, &["x", "y"], json!({"language": "fr", "max_wait_ms": 1500})).await;
    SEARCH.search(&mut de, &["x", "y"], json!({"language": "de", "max_wait_ms": 1500})).await;
    let ffr = SEARCH.outcome(&mut fr).await;
    let fde = SEARCH.outcome(&mut de).await;
    assert!(matches!(ffr, ServerFrame::NoMatchFound {}), "{ffr:?}");
    assert!(matches!(fde, ServerFrame::NoMatchFound {}), "{fde:?}");
    // A language-less search then takes one of them (whichever pool it reaches).
    SEARCH.search(&mut fr, &["x", "y"], json!({"language": "fr"})).await;
    SEARCH.search(&mut any, &["x", "y"], json!({})).await;
    assert_eq!(SEARCH.expect_match(&mut any).await.partner.as_deref(), Some("fr1"));
}

#[tokio::test]
async fn a_cancel_reaches_a_search_that_moved_to_another_pool() {
    let server = TestServer::start(test_config());
    let [mut de, mut any] = server.clients(["dieter", "roamer"]).await;
    // Groups of three: one waiter in `de`, so the roamer moves there and waits.
    SEARCH.search(&mut de, &["x"], json!({"language": "de", "group_size": 3})).await;
    SEARCH.search(&mut any, &["x"], json!({"group_size": 3})).await;
    // Let it move (it is alone in `en`: the next tick moves it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    any.send_json(json!({"action": "cancel_match"})).await;
    match SEARCH.next(&mut any).await {
        ServerFrame::MatchCancelled {} => {}
        other => panic!("expected match_cancelled, got {other:?}"),
    }
    // Only the `de` user still searches: the cancelled roamer is gone from every
    // pool, so a third `de` user does not complete a group of three.
    let what = "searching == 1";
    wait_stats(server.addr, what, Duration::from_secs(5), |s| s["searching"].as_u64() == Some(1))
        .await;
    let mut third = server.client("third").await;
    SEARCH.search(&mut third, &["x"], json!({"language": "de", "group_size": 3})).await;
    SEARCH.quiet(&mut third, Duration::from_millis(1_500)).await;
    SEARCH.quiet(&mut any, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_search_without_language_matches_across_nodes() {
    let cluster = Cluster::start(2).await;
    let [mut fr, mut any] = cluster.clients([(0, "fr-node0"), (1, "any-node1")]).await;
    SEARCH.search(&mut fr, &["chess"], json!({"language": "fr"})).await;
    SEARCH.search(&mut any, &["chess"], json!({})).await;
    let a = SEARCH.expect_match(&mut any).await;
    let f = SEARCH.expect_match(&mut fr).await;
    assert_eq!(a.room, f.room, "one room across the nodes");
    assert_eq!(a.partner.as_deref(), Some("fr-node0"));
    assert_eq!(f.partner.as_deref(), Some("any-node1"));
    SEARCH.quiet(&mut any, Duration::from_millis(300)).await;
    SEARCH.quiet(&mut fr, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn by_default_a_pair_sharing_nothing_is_matched_within_the_target() {
    // A fixed ladder of the old default would wait 8 s for a pair sharing nothing.
    let server = TestServer::start(config_with_target(1_500));
    let [mut a, mut b] = server.clients(["knitter", "surfer"]).await;
    let t0 = Instant::now();
    SEARCH.search(&mut a, &["knitting", "tea"], json!({})).await;
    SEARCH.search(&mut b, &["surfing", "vans"], json!({})).await;
    let fa = SEARCH.expect_match(&mut a).await;
    assert_eq!(fa.partner.as_deref(), Some("surfer"));
    assert_eq!(fa.score, 0);
    // Generous: the policy aims at 1.5 s; a busy machine may add some.
    assert!(t0.elapsed() < Duration::from_millis(3_000), "took {:?}", t0.elapsed());
}

#[tokio::test]
async fn by_default_a_pair_with_the_best_score_available_is_matched_at_once() {
    let server = TestServer::start(config_with_target(3_000));
    let [mut a, mut b] = server.clients(["ann", "ben"]).await;
    SEARCH.search(&mut a, &["chess", "go", "jazz"], json!({"language": "it"})).await;
    let t0 = Instant::now();
    SEARCH.search(&mut b, &["chess", "go", "jazz"], json!({"language": "it"})).await;
    let fb = SEARCH.expect_match(&mut b).await;
    assert_eq!(fb.score, 3);
    // Nothing better can come: no reason to hold out (generous bound, shared machine).
    assert!(t0.elapsed() < Duration::from_millis(1_000), "took {:?}", t0.elapsed());
}

#[tokio::test]
async fn by_default_users_on_two_nodes_are_paired_once_within_the_target() {
    // The nodes run the default wait-target policy (no ladder), aiming at 1.5 s.
    let cluster =
        Cluster::start_with(2, &[("--ladder", UNSET), ("--max-wait-target-ms", "1500")]).await;
    let topics = ["chess", "go", "jazz", "tea", "vans", "surf", "knit", "opera"];
    let interests_of = |i: usize| [topics[i % 8], topics[(i / 2 + 3) % 8], topics[(i / 3 + 5) % 8]];
    let lang_of = |i: usize| ["en", "fr"][(i / 2) % 2];
    pair_everyone_on_two_nodes(&cluster, 32, interests_of, lang_of).await;
}

/// Users `u0`…`u{n-1}`, alternately on node 0 and 1, each search with
/// `interests_of(i)` in `lang_of(i)`: each is matched once, with a partner of
/// their language, in a symmetric pair, within 6 s (generous: the policy forces
/// every pair by 1.35 s; two nodes on a busy machine).
async fn pair_everyone_on_two_nodes<const K: usize>(
    cluster: &Cluster,
    n: usize,
    interests_of: impl Fn(usize) -> [&'static str; K],
    lang_of: impl Fn(usize) -> &'static str,
) {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        clients.push(cluster.client(i % 2, &format!("u{i}")).await);
    }
    let t0 = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        SEARCH.search(c, &interests_of(i), json!({"language": lang_of(i)})).await;
    }
    let mut partner_of = std::collections::HashMap::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let found = SEARCH.expect_match(c).await;
        let partner = found.partner.expect("a pair has a partner");
        let j: usize = partner.trim_start_matches('u').parse().expect("a user of this test");
        assert_eq!(lang_of(i), lang_of(j), "u{i} was paired across languages");
        partner_of.insert(i, j);
    }
    assert!(t0.elapsed() < Duration::from_secs(6), "took {:?}", t0.elapsed());
    for (&i, &j) in &partner_of {
        assert_eq!(partner_of.get(&j), Some(&i), "u{i} -> u{j} is not symmetric");
    }
    // Each user heard exactly one match_found.
    for c in clients.iter_mut() {
        SEARCH.quiet(c, Duration::from_millis(50)).await;
    }
}

// ---- a language split into parts (`--language-parts`) ----

/// Two users of `en` (split into `parts`) whose searches start in different parts.
fn users_in_different_parts(parts: u16) -> (String, String) {
    use rendezvous_actors::language::home_pool;
    let first = "p0".to_owned();
    let home = home_pool("en", &first, parts);
    let second = (1..)
        .map(|i| format!("p{i}"))
        .find(|u| home_pool("en", u, parts) != home)
        .expect("users spread over the parts");
    (first, second)
}

fn with_parts(mut c: Config, parts: u16) -> Config {
    c.engine.language_parts =
        vec![rendezvous_actors::config::LanguageParts { language: "en".into(), parts }];
    c
}

/// `rendezvous_pool_waiting_by_language` on `/metrics`: (language, count).
async fn waiting_by_language(addr: std::net::SocketAddr) -> Vec<(String, f64)> {
    let (status, body) = common::http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let prefix = "rendezvous_pool_waiting_by_language{language=\"";
    body.lines()
        .filter_map(|l| {
            let (lang, value) = l.strip_prefix(prefix)?.split_once("\"} ")?;
            Some((lang.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn two_users_of_a_split_language_in_different_parts_meet() {
    let server = TestServer::start(with_parts(config_with_target(3_000), 4));
    let (u1, u2) = users_in_different_parts(4);
    let [mut a, mut b] = server.clients([u1.as_str(), u2.as_str()]).await;
    let t0 = Instant::now();
    SEARCH.search(&mut a, &["chess"], json!({"language": "en"})).await;
    SEARCH.search(&mut b, &["chess"], json!({"language": "en"})).await;
    let fa = SEARCH.expect_match(&mut a).await;
    let fb = SEARCH.expect_match(&mut b).await;
    assert_eq!(fa.room, fb.room);
    assert_eq!(fa.partner.as_deref(), Some(u2.as_str()));
    assert_eq!(fb.partner.as_deref(), Some(u1.as_str()));
    assert_eq!(fa.shared, vec!["chess".to_owned()]);
    // A lone search moves at the next pool tick (100 ms), not after its dwell
    // (generous bound on a shared machine: well inside the 3 s wait target).
    assert!(t0.elapsed() < Duration::from_millis(2_500), "took {:?}", t0.elapsed());
    SEARCH.quiet(&mut a, Duration::from_millis(300)).await;
    SEARCH.quiet(&mut b, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_split_language_is_one_language_to_clients_and_metrics() {
    let server = TestServer::start(with_parts(test_config(), 4));
    // Groups of five that never fill: four users wait, whatever part they are in.
    let names: Vec<String> = (0..4).map(|i| format!("w{i}")).collect();
    let parts: std::collections::BTreeSet<String> =
        names.iter().map(|u| rendezvous_actors::language::home_pool("en", u, 4)).collect();
    assert!(parts.len() > 1, "the users start in several parts: {parts:?}");
    let mut clients = Vec::new();
    for n in &names {
        let mut c = server.client(n).await;
        SEARCH.search(&mut c, &["x"], json!({"language": "en", "group_size": 5})).await;
        clients.push(c);
    }
    let what = "searching == 4";
    wait_stats(server.addr, what, Duration::from_secs(5), |s| s["searching"].as_u64() == Some(4))
        .await;
    // The per-language gauge sums the parts under the language's own name.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let series = waiting_by_language(server.addr).await;
        assert!(series.iter().all(|(l, _)| !l.contains('~')), "a part leaked: {series:?}");
        if series.iter().any(|(l, n)| l == "en" && *n == 4.0) {
            break;
        }
        assert!(Instant::now() < deadline, "en never showed 4 waiting: {series:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A cancel reaches each search wherever it moved; then nobody waits.
    for c in clients.iter_mut() {
        c.send_json(json!({"action": "cancel_match"})).await;
        match SEARCH.next(c).await {
            ServerFrame::MatchCancelled {} => {}
            other => panic!("expected match_cancelled, got {other:?}"),
        }
    }
    wait_stats(server.addr, "searching == 0", Duration::from_secs(5), |s| {
        s["searching"].as_u64() == Some(0)
    })
    .await;
    // A fifth user completes no group: the cancelled searches are gone from every part.
    let mut late = server.client("late").await;
    SEARCH.search(&mut late, &["x"], json!({"language": "en", "group_size": 5})).await;
    SEARCH.quiet(&mut late, Duration::from_millis(1_500)).await;
}

#[tokio::test]
async fn users_of_a_split_language_on_two_nodes_are_paired_once_in_their_language() {
    let cluster = Cluster::start_with(
        2,
        &[("--ladder", UNSET), ("--max-wait-target-ms", "1500"), ("--language-parts", "en=4")],
    )
    .await;
    // Mostly English, the hot language; every fourth user French.
    let lang_of = |i: usize| if i % 4 == 3 { "fr" } else { "en" };
    pair_everyone_on_two_nodes(&cluster, 40, |_| ["chess", "go"], lang_of).await;
}
