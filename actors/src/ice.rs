//! ICE servers handed to clients for WebRTC calls (`welcome.ice_servers`,
//! `GET /api/client-config`), as pure functions: the configured STUN and TURN
//! URLs, and for TURN the usual time-limited credentials derived from a secret
//! shared with the TURN server (the "TURN REST API" scheme coturn implements as
//! `use-auth-secret` / `static-auth-secret`):
//!
//! * username = `EXPIRY:USER_ID`, EXPIRY in seconds since the Unix epoch;
//! * credential = base64(HMAC-SHA1(secret, username)).
//!
//! The TURN server recomputes the credential from the username and refuses it
//! once EXPIRY has passed, so no per-user state is shared and a leaked
//! credential dies on its own.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rendezvous_protocol::IceServer;
use sha1::Sha1;

/// True for a STUN URL (`stun:` / `stuns:`).
pub fn is_stun(url: &str) -> bool {
    url.starts_with("stun:") || url.starts_with("stuns:")
}

/// True for a TURN URL (`turn:` / `turns:`).
pub fn is_turn(url: &str) -> bool {
    url.starts_with("turn:") || url.starts_with("turns:")
}

/// The TURN REST credential pair for `user`, valid until `expires_at_secs`.
pub fn turn_credentials(secret: &str, user: &str, expires_at_secs: u64) -> (String, String) {
    let username = format!("{expires_at_secs}:{user}");
    // HMAC takes a key of any length; this cannot fail.
    let credential = match Hmac::<Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(username.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    (username, credential)
}

/// The ICE servers for `user` at `now_secs`: one entry with every STUN URL, one
/// with every TURN URL and, when `turn_secret` is set, credentials valid for
/// `ttl_secs`. Empty when no URL is configured.
pub fn ice_servers(
    urls: &[String],
    turn_secret: Option<&str>,
    ttl_secs: u64,
    user: &str,
    now_secs: u64,
) -> Vec<IceServer> {
    let mut out = Vec::new();
    let stun: Vec<String> = urls.iter().filter(|u| is_stun(u)).cloned().collect();
    if !stun.is_empty() {
        out.push(IceServer { urls: stun, username: None, credential: None });
    }
    let turn: Vec<String> = urls.iter().filter(|u| is_turn(u)).cloned().collect();
    if !turn.is_empty() {
        let (username, credential) = match turn_secret {
            Some(secret) => {
                let (u, c) = turn_credentials(secret, user, now_secs.saturating_add(ttl_secs));
                (Some(u), Some(c))
            }
            None => (None, None),
        };
        out.push(IceServer { urls: turn, username, credential });
    }
    out
}

/// [`ice_servers`] for `user` now, with the engine's settings.
pub fn for_user(cfg: &crate::config::EngineConfig, user: &str) -> Vec<IceServer> {
    let now_secs = crate::clock::now_ms() / 1_000;
    ice_servers(&cfg.ice_servers, cfg.turn_secret.as_deref(), cfg.turn_ttl_secs, user, now_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_scheme() {
        // Computed independently: printf '%s' '1700000000:alice' |
        //   openssl dgst -sha1 -hmac 'north' -binary | base64
        let (user, cred) = turn_credentials("north", "alice", 1_700_000_000);
        assert_eq!(user, "1700000000:alice");
        assert_eq!(cred, "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
    }

    #[test]
    fn stun_and_turn_urls_are_grouped_and_only_turn_gets_credentials() {
        let urls: Vec<String> = [
            "stun:stun.example.org:3478",
            "turn:turn.example.org:3478?transport=udp",
            "turns:turn.example.org:5349",
        ]
        .map(String::from)
        .to_vec();
        let servers = ice_servers(&urls, Some("s3cret"), 600, "bob", 1_000);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].urls, ["stun:stun.example.org:3478"]);
        assert_eq!(
            (servers[0].username.as_deref(), servers[0].credential.as_deref()),
            (None, None)
        );
        assert_eq!(servers[1].urls.len(), 2);
        assert_eq!(servers[1].username.as_deref(), Some("1600:bob"));
        assert_eq!(servers[1].credential, Some(turn_credentials("s3cret", "bob", 1_600).1),);
        assert!(ice_servers(&[], Some("s"), 600, "bob", 0).is_empty());
    }
}
