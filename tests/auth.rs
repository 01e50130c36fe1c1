//! Identity at the door: anonymous names on loopback, HS256 JWTs (query or header)
//! when a secret is configured, the explicit anonymous modes, and the metric that
//! counts refusals. Every refusal is an HTTP 401 on the upgrade.

use rendezvous_test_support as common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rendezvous::config::AnonymousMode;
use rendezvous_actors::protocol::ServerFrame;
use serde_json::{json, Value};

const SECRET: &str = "integration-test-secret-0123456789";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// An HS256 token over `claims` signed with `secret`.
fn token_with(secret: &str, claims: &Value) -> String {
    encode(&Header::default(), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .expect("encode")
}

/// A valid token for `sub`, an hour to live.
fn token(sub: &str) -> String {
    token_with(SECRET, &json!({"sub": sub, "exp": now() + 3600}))
}

/// Unpadded base64url, for hand-made tokens.
fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn jwt_config(anonymous: AnonymousMode) -> rendezvous::Config {
    let mut c = test_config();
    c.jwt_secret = Some(SECRET.into());
    c.anonymous = anonymous;
    c
}

fn user_of(c: &Client) -> &str {
    match &c.welcome {
        ServerFrame::Welcome { user_id, .. } => user_id,
        other => panic!("not a welcome: {other:?}"),
    }
}

/// The session behind `c` really works: a frame gets its answer.
async fn works(c: &mut Client) {
    c.send_json(json!({"action":"cancel_match"})).await;
    assert_eq!(c.recv().await.kind(), "match_cancelled");
}

async fn refused(url: &str, headers: &[(&str, &str)]) {
    match Client::try_connect(url, headers).await {
        Err(status) => assert_eq!(status, 401, "{url}"),
        Ok(c) => panic!("{url} was accepted as {}", c.user_id),
    }
}

/// Sum of metric `name` samples whose line contains `filter`; 0 when absent.
async fn metric(server: &TestServer, name: &str, filter: &str) -> f64 {
    let (status, body) = http_get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| !l.starts_with('#') && l.contains(filter))
        .filter(|l| {
            l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------
// Anonymous mode (loopback, no secret)
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn loopback_without_a_secret_is_anonymous() {
    let server = TestServer::start(test_config());
    let mut alice = server.client("alice").await;
    assert_eq!(user_of(&alice), "alice");
    works(&mut alice).await;

    // Every allowed character class, and exactly 64 characters.
    for name in ["a.b-c_d@e:f", "Ünïcødé", &"n".repeat(64)] {
        let url = server.ws_url(&format!("user={}", urlencode(name)));
        let c = Client::try_connect(&url, &[]).await.expect("accepted");
        assert_eq!(user_of(&c), name);
    }

    // No name: a generated one, different each time.
    let mut anon1 = Client::connect(&server.ws_url("")).await;
    let anon2 = Client::connect(&format!("ws://{}/ws", server.addr)).await;
    assert!(user_of(&anon1).starts_with("anon-"), "{}", user_of(&anon1));
    assert!(user_of(&anon2).starts_with("anon-"), "{}", user_of(&anon2));
    assert_ne!(user_of(&anon1), user_of(&anon2));
    works(&mut anon1).await;

    // Invalid names are refused at the upgrade.
    for bad in ["bad%20name", "a%2Fb", "tab%09", "", "%00"] {
        refused(&server.ws_url(&format!("user={bad}")), &[]).await;
    }
    refused(&server.ws_url(&format!("user={}", "n".repeat(65))), &[]).await;

    // A token without a configured secret is refused, not ignored.
    refused(&server.ws_url(&format!("token={}", token("alice"))), &[]).await;

    // The refusals did not disturb alice.
    works(&mut alice).await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_second_connection_of_the_same_user_replaces_the_first_with_4009() {
    let server = TestServer::start(test_config());
    let [mut first, mut second] = server.clients(["alice", "alice"]).await;
    assert_eq!(first.closed().await, Ended::Closed(4009));
    works(&mut second).await;

    let server = TestServer::start(jwt_config(AnonymousMode::Auto));
    let url = server.ws_url(&format!("token={}", token("carol")));
    let mut first = Client::connect(&url).await;
    let mut second = Client::connect(&url).await;
    assert_eq!(first.closed().await, Ended::Closed(4009));
    works(&mut second).await;
}

// ---------------------------------------------------------------------------------
// JWT
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_valid_token_in_the_query_or_header_names_the_user() {
    let server = TestServer::start(jwt_config(AnonymousMode::Auto));

    let mut q = Client::try_connect(&server.ws_url(&format!("token={}", token("alice"))), &[])
        .await
        .expect("query token accepted");
    assert_eq!(user_of(&q), "alice");
    works(&mut q).await;

    let bearer = format!("Bearer {}", token("bob"));
    let mut h =
        Client::try_connect(&format!("ws://{}/ws", server.addr), &[("authorization", &bearer)])
            .await
            .expect("header token accepted");
    assert_eq!(user_of(&h), "bob");
    works(&mut h).await;

    // The auth scheme is case-insensitive (RFC 9110 §11.1).
    let lower = format!("bearer {}", token("bea"));
    let c = Client::try_connect(&format!("ws://{}/ws", server.addr), &[("authorization", &lower)])
        .await
        .expect("lower-case scheme accepted");
    assert_eq!(user_of(&c), "bea");

    // The token decides the identity; a ?user= next to it changes nothing.
    let url = server.ws_url(&format!("user=mallory&token={}", token("carol")));
    let c = Client::try_connect(&url, &[]).await.expect("accepted");
    assert_eq!(user_of(&c), "carol");

    // A not-before in the past and extra claims are fine.
    let t = token_with(
        SECRET,
        &json!({"sub": "dave", "exp": now() + 60, "nbf": now() - 60, "iat": now(), "role": "x"}),
    );
    let c = Client::try_connect(&server.ws_url(&format!("token={t}")), &[]).await.expect("ok");
    assert_eq!(user_of(&c), "dave");

    // Two users with tokens can match and chat.
    let mut a = Client::connect(&server.ws_url(&format!("token={}", token("erin")))).await;
    let mut b = Client::connect(&server.ws_url(&format!("token={}", token("frank")))).await;
    a.find_match(&["chess"]).await;
    assert_eq!(a.recv().await.kind(), "searching");
    b.find_match(&["chess"]).await;
    assert_eq!(b.recv().await.kind(), "searching");
    let room = room_of(&a.recv_kind("match_found").await);
    match b.recv_kind("match_found").await {
        ServerFrame::MatchFound { partner_id, .. } => {
            assert_eq!(partner_id.as_deref(), Some("erin"))
        }
        _ => unreachable!(),
    }
    a.send_json(json!({"action":"send","room_id":room,"text":"signed in"})).await;
    match b.recv_kind("message").await {
        ServerFrame::Message(m) => assert_eq!(m.sender, "erin"),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn bad_or_missing_tokens_are_refused_with_401() {
    let server = TestServer::start(jwt_config(AnonymousMode::Auto));
    let q = |t: &str| server.ws_url(&format!("token={t}"));

    // Expired (well past the leeway).
    let expired = token_with(SECRET, &json!({"sub": "alice", "exp": now() - 3600}));
    refused(&q(&expired), &[]).await;
    // Signed with another secret.
    let forged = token_with(
        "some-other-secret-entirely-0123456789",
        &json!({"sub": "alice", "exp": now() + 3600}),
    );
    refused(&q(&forged), &[]).await;
    // A valid signature over different claims (payload swapped).
    let claims = json!({"sub": "alice", "exp": now() + 3600});
    let good = token_with(SECRET, &claims);
    let parts: Vec<&str> = good.split('.').collect();
    assert_eq!(parts[1], b64url(claims.to_string().as_bytes()), "hand-made parts are well formed");
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        b64url(json!({"sub": "admin", "exp": now() + 3600}).to_string().as_bytes()),
        parts[2]
    );
    refused(&q(&swapped), &[]).await;
    // alg: none, with and without a trailing signature part.
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    assert_eq!(header, "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0");
    let claims = b64url(json!({"sub": "alice", "exp": now() + 3600}).to_string().as_bytes());
    refused(&q(&format!("{header}.{claims}.")), &[]).await;
    refused(&q(&format!("{header}.{claims}")), &[]).await;
    // Same secret, other algorithm.
    let hs384 = encode(
        &Header::new(Algorithm::HS384),
        &json!({"sub": "alice", "exp": now() + 3600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode");
    refused(&q(&hs384), &[]).await;
    // Missing exp, missing sub, invalid sub, not yet valid.
    refused(&q(&token_with(SECRET, &json!({"sub": "alice"}))), &[]).await;
    refused(&q(&token_with(SECRET, &json!({"exp": now() + 3600}))), &[]).await;
    refused(&q(&token_with(SECRET, &json!({"sub": "has space", "exp": now() + 3600}))), &[]).await;
    refused(&q(&token_with(SECRET, &json!({"sub": "", "exp": now() + 3600}))), &[]).await;
    refused(&q(&token_with(SECRET, &json!({"sub": "x".repeat(65), "exp": now() + 3600}))), &[])
        .await;
    refused(
        &q(&token_with(SECRET, &json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 3600}))),
        &[],
    )
    .await;
    // Garbage, empty, huge.
    for t in ["garbage", "", "a.b.c", "...", "eyJhbGciOiJIUzI1NiJ9"] {
        refused(&q(t), &[]).await;
    }
    refused(&q(&"A".repeat(5_000)), &[]).await;
    // Bad tokens in the header, and a header that is not Bearer.
    let url = format!("ws://{}/ws", server.addr);
    refused(&url, &[("authorization", &format!("Bearer {expired}"))]).await;
    refused(&url, &[("authorization", "Bearer garbage")]).await;
    refused(&url, &[("authorization", &format!("Basic {}", token("alice")))]).await;
    // No token at all; an anonymous name is not enough when a secret is set.
    refused(&url, &[]).await;
    refused(&server.ws_url("user=bob"), &[]).await;

    // A good token still gets in after all that.
    let mut ok = Client::connect(&q(&token("alice"))).await;
    assert_eq!(user_of(&ok), "alice");
    works(&mut ok).await;
}

// ---------------------------------------------------------------------------------
// Explicit anonymous modes
// ---------------------------------------------------------------------------------

/// Names without a token live in their own namespace (prefix `~`) when the node
/// also has token users: `?user=bob` is `~bob`, never the token user `bob`.
#[tokio::test]
async fn allow_with_a_secret_accepts_tokens_and_names() {
    let server = TestServer::start(jwt_config(AnonymousMode::Allow));
    let mut t = Client::connect(&server.ws_url(&format!("token={}", token("alice")))).await;
    assert_eq!(user_of(&t), "alice");
    works(&mut t).await;
    let mut n = server.client("bob").await;
    assert_eq!(user_of(&n), "~bob");
    works(&mut n).await;
    let g = Client::connect(&server.ws_url("")).await;
    assert!(user_of(&g).starts_with("~anon-"), "{}", user_of(&g));
    // A token that is present but bad is refused, not downgraded to anonymous.
    let expired = token_with(SECRET, &json!({"sub": "carol", "exp": now() - 3600}));
    refused(&server.ws_url(&format!("user=carol&token={expired}")), &[]).await;
    refused(&server.ws_url("user=bad%20name"), &[]).await;
}

#[tokio::test]
async fn deny_without_a_secret_refuses_everyone() {
    let mut config = test_config();
    config.anonymous = AnonymousMode::Deny;
    let server = TestServer::start(config);
    refused(&server.ws_url("user=alice"), &[]).await;
    refused(&server.ws_url(""), &[]).await;
    refused(&server.ws_url(&format!("token={}", token("alice"))), &[]).await;
    refused(
        &format!("ws://{}/ws", server.addr),
        &[("authorization", &format!("Bearer {}", token("alice")))],
    )
    .await;
    // HTTP is still served.
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn deny_with_a_secret_takes_tokens_only() {
    let server = TestServer::start(jwt_config(AnonymousMode::Deny));
    refused(&server.ws_url("user=alice"), &[]).await;
    let mut c = Client::connect(&server.ws_url(&format!("token={}", token("alice")))).await;
    assert_eq!(user_of(&c), "alice");
    works(&mut c).await;
}

// ---------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn refused_handshakes_are_counted() {
    let server = TestServer::start(jwt_config(AnonymousMode::Auto));
    let name = "rendezvous_handshakes_refused_total";
    // The recorder is shared by every server in this process, and other tests
    // refuse handshakes concurrently: the counter can only have grown by at least
    // our own refusals.
    let before = metric(&server, name, "unauthorized").await;
    refused(&server.ws_url("user=alice"), &[]).await;
    refused(&server.ws_url("token=garbage"), &[]).await;
    refused(&server.ws_url(""), &[]).await;
    let after = metric(&server, name, "unauthorized").await;
    assert!(after - before >= 3.0, "before {before}, after {after}");
    let (_, body) = http_get(server.addr, "/metrics").await;
    assert!(
        body.lines()
            .any(|l| l.starts_with(&format!("{name}{{")) && l.contains(r#"reason="unauthorized""#)),
        "no {name} with reason=unauthorized in:\n{body}"
    );
}

/// A browser (it sends `Origin`) cannot read a refused upgrade's status, so it is
/// told with an error frame and close code 4001 instead of HTTP 401.
#[tokio::test]
async fn a_browser_with_a_bad_token_gets_close_4001() {
    let server = TestServer::start(jwt_config(AnonymousMode::Deny));
    let url = server.ws_url("token=not-a-jwt");
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .expect("request");
    req.headers_mut().insert("Origin", "http://127.0.0.1".parse().expect("origin"));
    let (ws, _) = tokio_tungstenite::connect_async(req).await.expect("accepted");
    let mut c = Client { ws, user_id: "browser".into(), welcome: ServerFrame::NoMatchFound {} };
    match c.try_recv(std::time::Duration::from_secs(5)).await {
        Some(ServerFrame::Error { code, .. }) => {
            assert_eq!(code, rendezvous_actors::protocol::ErrorCode::Unauthorized)
        }
        other => panic!("expected an unauthorized error frame, got {other:?}"),
    }
    assert_eq!(c.closed().await, Ended::Closed(4001));
    // Without Origin the same token is refused at the HTTP level.
    refused(&url, &[]).await;
}
