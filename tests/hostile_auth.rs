//! Identity against an attacker: audience and issuer, RS256 / ES256 public
//! keys made at test time with `openssl`, algorithm confusion, weak secrets and bad
//! key files refused at start, token expiry with `refresh` and its grace, the proxy
//! rule of `auto` mode, and the anonymous namespace that keeps `?user=alice` from
//! being the token user `alice`. Every test runs against a real server.

use rendezvous_test_support as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rendezvous::auth::PublicKey;
use rendezvous::config::AnonymousMode;
use rendezvous_actors::protocol::{ErrorCode, ServerFrame};
use serde_json::{json, Value};

const SECRET: &str = "hostile-auth-test-secret-0123456789abcdef";
const BIN: &str = env!("CARGO_BIN_EXE_rendezvous");

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

fn hs256(claims: &Value) -> String {
    encode(&Header::default(), claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("jwt")
}

/// A valid HS256 token for `sub` that expires `ttl` seconds from now.
fn token(sub: &str, ttl: u64) -> String {
    hs256(&json!({"sub": sub, "exp": now() + ttl}))
}

fn jwt_config(anonymous: AnonymousMode) -> rendezvous::Config {
    let mut c = test_config();
    c.jwt_secret = Some(SECRET.into());
    c.anonymous = anonymous;
    c
}

async fn refused(url: &str, headers: &[(&str, &str)]) {
    match Client::try_connect(url, headers).await {
        Err(status) => assert_eq!(status, 401, "{url}"),
        Ok(c) => panic!("{url} was accepted as {}", c.user_id),
    }
}

/// `user` connected to `server` with a token valid for `ttl_s` seconds.
async fn signed_in(server: &TestServer, user: &str, ttl_s: u64) -> Client {
    accepted_as(&server.ws_url(&format!("token={}", token(user, ttl_s))), user).await
}

async fn accepted_as(url: &str, user: &str) -> Client {
    let c = Client::try_connect(url, &[]).await.unwrap_or_else(|s| panic!("{url}: HTTP {s}"));
    assert_eq!(c.user_id, user, "{url}");
    c
}

/// The session behind `c` still answers.
async fn works(c: &mut Client) {
    c.send_json(json!({"action":"cancel_match"})).await;
    assert_eq!(c.recv_kind("match_cancelled").await.kind(), "match_cancelled");
}

fn error_code(f: &ServerFrame) -> Option<ErrorCode> {
    match f {
        ServerFrame::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// A fresh directory for key files, removed when the test passes.
fn temp_dir(tag: &str) -> TempDir {
    TempDir::new(&format!("auth-{tag}"))
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A key pair made with openssl: the public key PEM file and the private key in the
/// DER form jsonwebtoken signs with (PKCS#1 for RSA, PKCS#8 for EC).
struct KeyPair {
    public_pem: PathBuf,
    signing: EncodingKey,
}

fn key_pair(dir: &Path, kind: &str) -> KeyPair {
    let private = dir.join(format!("{kind}.pem"));
    let public_pem = dir.join(format!("{kind}.pub.pem"));
    let der = dir.join(format!("{kind}.der"));
    let p = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let signing = match kind {
        "rsa" | "rsa1024" => {
            let bits = if kind == "rsa" { "2048" } else { "1024" };
            let opt = format!("rsa_keygen_bits:{bits}");
            openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", &opt, "-out", &p(&private)]);
            openssl(&["pkey", "-in", &p(&private), "-outform", "DER", "-out", &p(&der)]);
            EncodingKey::from_rsa_der(&std::fs::read(&der).expect("der"))
        }
        "ec" => {
            let opt = "ec_paramgen_curve:P-256";
            openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", opt, "-out", &p(&private)]);
            let out = Command::new("openssl")
                .args(["pkcs8", "-topk8", "-nocrypt", "-in", &p(&private), "-outform", "DER"])
                .output()
                .expect("openssl");
            assert!(out.status.success());
            EncodingKey::from_ec_der(&out.stdout)
        }
        other => panic!("unknown key kind {other}"),
    };
    openssl(&["pkey", "-in", &p(&private), "-pubout", "-out", &p(&public_pem)]);
    KeyPair { public_pem, signing }
}

fn signed(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).expect("sign")
}

// ---------------------------------------------------------------------------------
// Claims and keys
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn audience_and_issuer_must_match_when_configured() {
    let mut config = jwt_config(AnonymousMode::Deny);
    config.jwt_audience = Some("rendezvous-chat".into());
    config.jwt_issuer = Some("https://idp.example/".into());
    let server = TestServer::start(config);
    let q = |t: &str| server.ws_url(&format!("token={t}"));
    let exp = now() + 600;
    let good =
        json!({"sub":"alice","exp":exp,"aud":"rendezvous-chat","iss":"https://idp.example/"});
    let mut alice = accepted_as(&q(&hs256(&good)), "alice").await;
    works(&mut alice).await;
    for bad in [
        json!({"sub":"m","exp":exp,"aud":"another-app","iss":"https://idp.example/"}),
        json!({"sub":"m","exp":exp,"aud":"rendezvous-chat","iss":"https://evil.example/"}),
        json!({"sub":"m","exp":exp,"iss":"https://idp.example/"}),
        json!({"sub":"m","exp":exp,"aud":"rendezvous-chat"}),
        json!({"sub":"m","exp":exp}),
    ] {
        refused(&q(&hs256(&bad)), &[]).await;
    }
    works(&mut alice).await;
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_a_public_key_file() {
    let dir = temp_dir("keys");
    let rsa = key_pair(dir.path(), "rsa");
    let ec = key_pair(dir.path(), "ec");
    let claims = |sub: &str| json!({"sub": sub, "exp": now() + 600});
    for (pair, alg, other, other_alg) in [
        (&rsa, Algorithm::RS256, &ec, Algorithm::ES256),
        (&ec, Algorithm::ES256, &rsa, Algorithm::RS256),
    ] {
        let mut config = test_config();
        config.jwt_public_key = Some(PublicKey::from_file(&pair.public_pem).expect("key loads"));
        assert_eq!(config.jwt_public_key.as_ref().map(|k| k.algorithm()), Some(alg));
        assert!(!config.anonymous_allowed(), "a public key turns auto anonymous off");
        let server = TestServer::start(config);
        let q = |t: &str| server.ws_url(&format!("token={t}"));
        let mut a = accepted_as(&q(&signed(alg, &pair.signing, &claims("ann"))), "ann").await;
        let mut b = accepted_as(&q(&signed(alg, &pair.signing, &claims("ben"))), "ben").await;
        // Signed by the other key type, or by another key of the same type.
        refused(&q(&signed(other_alg, &other.signing, &claims("eve"))), &[]).await;
        let stranger_dir = temp_dir("stranger");
        let stranger =
            key_pair(stranger_dir.path(), if alg == Algorithm::RS256 { "rsa" } else { "ec" });
        refused(&q(&signed(alg, &stranger.signing, &claims("eve"))), &[]).await;
        // No secret here: HS256 tokens, even over the public key's bytes, are refused.
        let pem = std::fs::read(&pair.public_pem).expect("pem");
        refused(
            &q(&signed(Algorithm::HS256, &EncodingKey::from_secret(&pem), &claims("eve"))),
            &[],
        )
        .await;
        refused(&server.ws_url("user=eve"), &[]).await;
        // The two token users match and chat.
        a.find_match(&["keys"]).await;
        b.find_match(&["keys"]).await;
        let room = room_of(&a.recv_kind("match_found").await);
        b.recv_kind("match_found").await;
        a.send_json(json!({"action":"send","room_id":room,"text":"signed by a key"})).await;
        match b.recv_kind("message").await {
            ServerFrame::Message(m) => assert_eq!(m.sender, "ann"),
            _ => unreachable!(),
        }
    }
}

/// Algorithm confusion: with a secret *and* a public key, the `alg` header only picks
/// which key checks the token. An HS256 token whose HMAC key is the public key's PEM
/// (which anyone can read) is checked against the secret and fails; RS256 and HS256
/// tokens signed with the right keys both work.
#[tokio::test]
async fn an_hs256_token_is_never_checked_against_the_public_key() {
    let dir = temp_dir("confusion");
    let rsa = key_pair(dir.path(), "rsa");
    let mut config = jwt_config(AnonymousMode::Deny);
    config.jwt_public_key = Some(PublicKey::from_file(&rsa.public_pem).expect("key"));
    let server = TestServer::start(config);
    let q = |t: &str| server.ws_url(&format!("token={t}"));
    let claims = json!({"sub": "admin", "exp": now() + 600});
    let pem = std::fs::read(&rsa.public_pem).expect("pem");
    let confused = signed(Algorithm::HS256, &EncodingKey::from_secret(&pem), &claims);
    refused(&q(&confused), &[]).await;
    // The DER body of the PEM, the other form such attacks try.
    let der_b64: String =
        String::from_utf8_lossy(&pem).lines().filter(|l| !l.starts_with("-----")).collect();
    let confused = signed(Algorithm::HS256, &EncodingKey::from_secret(der_b64.as_bytes()), &claims);
    refused(&q(&confused), &[]).await;
    // Other HMAC strengths and RSA variants than the one the key is for are refused.
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        refused(&q(&signed(alg, &EncodingKey::from_secret(&pem), &claims)), &[]).await;
    }
    refused(&q(&signed(Algorithm::PS256, &rsa.signing, &claims)), &[]).await;
    refused(&q(&signed(Algorithm::RS512, &rsa.signing, &claims)), &[]).await;
    // The right keys get in.
    accepted_as(&q(&signed(Algorithm::RS256, &rsa.signing, &claims)), "admin").await;
    accepted_as(&q(&token("carol", 600)), "carol").await;
}

#[test]
fn weak_secrets_and_bad_key_files_stop_the_binary_at_start() {
    // The exit code and stderr; a binary still serving after 10 s is killed (None).
    let run = |args: &[&str]| {
        let mut child = Command::new(BIN)
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .env_remove("RENDEZVOUS_JWT_SECRET")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let code = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (code, err)
    };
    let (code, err) = run(&["--jwt-secret", &"s".repeat(31)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("jwt_secret") && err.contains("32 bytes"), "{err}");
    let dir = temp_dir("badkeys");
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
    )
    .expect("write");
    let weak = key_pair(dir.path(), "rsa1024").public_pem;
    // A private key where a public key belongs.
    let private = dir.path().join("rsa1024.pem");
    for (file, needle) in [
        (&missing, "cannot read"),
        (&garbage, "not a supported public key"),
        (&private, "not a supported public key"),
        (&weak, "1024 bits"),
    ] {
        let (code, err) = run(&["--jwt-public-key", file.to_str().expect("path")]);
        assert_eq!(code, Some(2), "{file:?}: {err}");
        assert!(err.contains("jwt_public_key") && err.contains(needle), "{file:?}: {err}");
    }
}

// ---------------------------------------------------------------------------------
// Expiry and refresh
// ---------------------------------------------------------------------------------

fn refresh_config(grace_ms: u64) -> rendezvous::Config {
    let mut c = jwt_config(AnonymousMode::Deny);
    c.engine.token_grace_ms = grace_ms;
    c.engine.refresh_min_interval_ms = 0;
    c
}

/// The next frame that is not room chatter, as the refresh tests expect them.
async fn next_token_frame(c: &mut Client) -> ServerFrame {
    loop {
        let f = c.recv().await;
        if !matches!(f.kind(), "presence" | "typing" | "read") {
            return f;
        }
    }
}

#[tokio::test]
async fn an_expired_token_is_refreshed_within_the_grace_and_the_session_chats_on() {
    let server = TestServer::start(refresh_config(4_000));
    let url = |t: &str| server.ws_url(&format!("token={t}"));
    let mut alice = accepted_as(&url(&token("alice", 2)), "alice").await;
    let mut bob = accepted_as(&url(&token("bob", 600)), "bob").await;
    alice.find_match(&["refresh"]).await;
    bob.find_match(&["refresh"]).await;
    let room = room_of(&alice.recv_kind("match_found").await);
    bob.recv_kind("match_found").await;

    let f = next_token_frame(&mut alice).await;
    assert_eq!(error_code(&f), Some(ErrorCode::TokenExpired), "{f:?}");
    // Within the grace: a new token for the same user.
    let new_exp = now() + 600;
    alice
        .send_json(json!({"action":"refresh","token":hs256(&json!({"sub":"alice","exp":new_exp}))}))
        .await;
    match next_token_frame(&mut alice).await {
        ServerFrame::Refreshed { expires_at } => assert_eq!(expires_at, Some(new_exp * 1000)),
        other => panic!("expected refreshed, got {other:?}"),
    }
    // Past the old grace the session is still there and chats.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    alice.send_json(json!({"action":"send","room_id":room,"text":"still here"})).await;
    assert_eq!(alice.recv_kind("ack").await.kind(), "ack");
    match bob.recv_kind("message").await {
        ServerFrame::Message(m) => {
            assert_eq!((m.sender.as_str(), m.text.as_str()), ("alice", "still here"))
        }
        _ => unreachable!(),
    }
    // Refresh is also allowed before expiry (here: bob, an hour early).
    bob.send_json(json!({"action":"refresh","token":token("bob", 1200)})).await;
    assert_eq!(next_token_frame(&mut bob).await.kind(), "refreshed");
    works(&mut bob).await;
}

#[tokio::test]
async fn without_a_refresh_the_session_is_closed_with_4001_after_the_grace() {
    let server = TestServer::start(refresh_config(1_500));
    let mut alice = signed_in(&server, "alice", 1).await;
    let mut bob = signed_in(&server, "bob", 600).await;
    let f = alice.recv().await;
    assert_eq!(error_code(&f), Some(ErrorCode::TokenExpired), "{f:?}");
    let started = std::time::Instant::now();
    assert_eq!(alice.closed().await, Ended::Closed(4001));
    assert!(started.elapsed() >= Duration::from_millis(1_000), "closed before the grace");
    // Nobody else noticed.
    works(&mut bob).await;
}

#[tokio::test]
async fn a_refresh_with_another_users_or_a_bad_token_is_refused_and_changes_nothing() {
    let server = TestServer::start(refresh_config(1_500));
    let mut alice = signed_in(&server, "alice", 3).await;
    for bad in [
        token("mallory", 600),
        "not-a-token".to_owned(),
        hs256(&json!({"sub":"alice","exp": now() - 3600})),
        encode(
            &Header::default(),
            &json!({"sub":"alice","exp":now()+600}),
            &EncodingKey::from_secret(b"forged-secret-forged-secret-forged!!"),
        )
        .expect("jwt"),
    ] {
        alice.send_json(json!({"action":"refresh","token":bad})).await;
        let f = alice.recv().await;
        assert_eq!(error_code(&f), Some(ErrorCode::Unauthorized), "{f:?}");
    }
    // Still alice, and her original token still runs out on time.
    works(&mut alice).await;
    let f = alice.recv().await;
    assert_eq!(error_code(&f), Some(ErrorCode::TokenExpired), "{f:?}");
    // Another user's token within the grace does not rescue the session either.
    alice.send_json(json!({"action":"refresh","token":token("mallory", 600)})).await;
    assert_eq!(error_code(&alice.recv().await), Some(ErrorCode::Unauthorized));
    assert_eq!(alice.closed().await, Ended::Closed(4001));
    // Mallory's own session was never touched by any of it.
    let mut mallory = signed_in(&server, "mallory", 600).await;
    works(&mut mallory).await;
}

#[tokio::test]
async fn refresh_is_bad_request_without_a_token_and_rate_limited_when_hurried() {
    let server = TestServer::start(test_config());
    let mut anon = server.client("anna").await;
    anon.send_json(json!({"action":"refresh","token":"x.y.z"})).await;
    assert_eq!(error_code(&anon.recv().await), Some(ErrorCode::BadRequest));
    anon.send_json(json!({"action":"refresh"})).await;
    assert_eq!(error_code(&anon.recv().await), Some(ErrorCode::BadRequest));
    works(&mut anon).await;

    let mut config = jwt_config(AnonymousMode::Deny);
    config.engine.refresh_min_interval_ms = 60_000;
    let server = TestServer::start(config);
    let mut c = signed_in(&server, "carl", 600).await;
    c.send_json(json!({"action":"refresh","token":token("carl", 900)})).await;
    assert_eq!(c.recv().await.kind(), "refreshed");
    c.send_json(json!({"action":"refresh","token":token("carl", 900)})).await;
    match c.recv().await {
        ServerFrame::Error { code: ErrorCode::RateLimited, retry_after_ms: Some(ms), .. } => {
            assert!(ms > 50_000, "{ms}")
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }
    works(&mut c).await;
}

// ---------------------------------------------------------------------------------
// Anonymous mode
// ---------------------------------------------------------------------------------

/// `auto` on loopback: direct clients may pick a name, but a reverse proxy on the
/// same host must not open that to the Internet.
#[tokio::test]
async fn auto_mode_needs_a_token_for_requests_that_came_through_a_proxy() {
    let server = TestServer::start(test_config());
    let mut direct = server.client("dora").await;
    for headers in [
        [("x-forwarded-for", "203.0.113.9")],
        [("forwarded", "for=203.0.113.9;proto=https")],
        [("x-forwarded-for", "127.0.0.1")],
    ] {
        refused(&server.ws_url("user=mallory"), &headers).await;
        refused(&server.ws_url(""), &headers).await;
    }
    works(&mut direct).await;
}

/// `--anonymous allow` next to a secret: `?user=alice` is the anonymous `~alice`,
/// not the token user alice. It does not replace her session, does not get her
/// rooms, and cannot read or post in them.
#[tokio::test]
async fn in_mixed_mode_a_name_without_a_token_is_not_the_token_user() {
    let server = TestServer::start(jwt_config(AnonymousMode::Allow));
    let mut alice = signed_in(&server, "alice", 600).await;
    let mut bob = signed_in(&server, "bob", 600).await;
    alice.find_match(&["mixed"]).await;
    bob.find_match(&["mixed"]).await;
    let room = room_of(&alice.recv_kind("match_found").await);
    bob.recv_kind("match_found").await;
    alice.send_json(json!({"action":"send","room_id":room,"text":"private"})).await;
    alice.recv_kind("ack").await;
    alice.send_json(json!({"action":"join","room_id":"pub:alices-club"})).await;
    alice.recv_kind("joined").await;

    let mut fake = accepted_as(&server.ws_url("user=alice"), "~alice").await;
    match &fake.welcome {
        ServerFrame::Welcome { rooms, .. } => assert!(rooms.is_empty(), "{rooms:?}"),
        _ => unreachable!(),
    }
    for frame in [
        json!({"action":"history","room_id":room}),
        json!({"action":"send","room_id":room,"text":"it's me, alice"}),
        json!({"action":"leave","room_id":room}),
    ] {
        fake.send_json(frame.clone()).await;
        assert_eq!(error_code(&fake.recv().await), Some(ErrorCode::NotInRoom), "{frame}");
    }
    // The real alice was not replaced and still holds both rooms.
    works(&mut alice).await;
    alice.send_json(json!({"action":"history","room_id":room})).await;
    match alice.recv_kind("history").await {
        ServerFrame::History { messages, .. } => assert_eq!(messages.len(), 1),
        _ => unreachable!(),
    }
    // Nor can the anonymous user get in by naming the namespace itself.
    refused(&server.ws_url("user=~alice"), &[]).await;
    // Generated anonymous ids are in the namespace too.
    let generated = Client::connect(&server.ws_url("")).await;
    assert!(generated.user_id.starts_with("~anon-"), "{}", generated.user_id);
    // And a token cannot claim the anonymous namespace.
    refused(&server.ws_url(&format!("token={}", token("~alice", 600))), &[]).await;
    works(&mut bob).await;
}
