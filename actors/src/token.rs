//! The token side of a session: who a connection is ([`Identity`]), the hook through
//! which the server verifies tokens sent with `refresh` ([`TokenVerifier`]), and the
//! pure rules of a token's lifetime ([`TokenLease`]): when `token_expired` is due,
//! when the grace ends with a close, what a `refresh` may change.
//!
//! Verification itself (keys, algorithms, claims) lives in the server binary
//! (`src/auth.rs`); the engine only sees this trait, so it never links a JWT library.
//! Time is an argument everywhere here (milliseconds since the Unix epoch, the clock
//! a JWT `exp` is written in); the session actor reads the clock and arms the timers.

use std::time::Duration;

use crate::error::EngineError;
use crate::ids::UserId;

/// Who a session belongs to, as established at the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    /// When the token this identity came from expires (ms since the Unix epoch).
    /// `None`: no token (an anonymous session), so nothing expires.
    pub expires_at_ms: Option<u64>,
}

impl Identity {
    /// An identity proven by a token that expires at `expires_at_ms`.
    pub fn token(user: UserId, expires_at_ms: u64) -> Self {
        Identity { user, expires_at_ms: Some(expires_at_ms) }
    }
}

impl From<UserId> for Identity {
    /// An anonymous identity: no token, no expiry.
    fn from(user: UserId) -> Self {
        Identity { user, expires_at_ms: None }
    }
}

/// Checks a token a session sends with `refresh`. The server installs its own
/// (the one that checks handshakes) with [`crate::Engine::install_token_verifier`].
pub trait TokenVerifier: Send + Sync + 'static {
    /// The identity `token` proves now, or why it proves none (a message for the
    /// client; never the token itself).
    fn verify(&self, token: &str) -> Result<Identity, String>;
}

/// What a session must do about its token at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStep {
    /// Nothing yet; look again after this long.
    Wait(Duration),
    /// The token has just expired: send `token_expired`, look again after this long
    /// (the rest of the grace).
    Expired(Duration),
    /// The grace is over without a valid `refresh`: close with 4001.
    Close,
}

/// The lifetime of one session's token: valid until `expires_at_ms`, then a grace of
/// `grace_ms` in which a `refresh` may renew it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLease {
    expires_at_ms: u64,
    grace_ms: u64,
    /// `token_expired` was sent for the current expiry.
    told: bool,
    /// Last `refresh` attempt (valid or not), to bound how often one is verified.
    last_attempt_ms: Option<u64>,
}

impl TokenLease {
    pub fn new(expires_at_ms: u64, grace_ms: u64) -> Self {
        TokenLease { expires_at_ms, grace_ms, told: false, last_attempt_ms: None }
    }

    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }

    /// What is due at `now_ms`. Returns [`LeaseStep::Expired`] once per expiry.
    pub fn poll(&mut self, now_ms: u64) -> LeaseStep {
        let ends = self.expires_at_ms.saturating_add(self.grace_ms);
        if now_ms < self.expires_at_ms {
            return LeaseStep::Wait(Duration::from_millis(self.expires_at_ms - now_ms));
        }
        if now_ms >= ends {
            return LeaseStep::Close;
        }
        let rest = Duration::from_millis(ends - now_ms);
        if self.told {
            LeaseStep::Wait(rest)
        } else {
            self.told = true;
            LeaseStep::Expired(rest)
        }
    }

    /// Count a `refresh` attempt at `now_ms`; refused when the last one was less
    /// than `min_interval_ms` ago (each attempt costs a signature check).
    pub fn attempt(&mut self, now_ms: u64, min_interval_ms: u64) -> Result<(), EngineError> {
        if let Some(last) = self.last_attempt_ms {
            let next = last.saturating_add(min_interval_ms);
            if now_ms < next {
                return Err(EngineError::RateLimited {
                    action: "refresh",
                    retry_after_ms: next - now_ms,
                });
            }
        }
        self.last_attempt_ms = Some(now_ms);
        Ok(())
    }

    /// Apply a verified `refresh` for the session of `user`: only a token of the same
    /// user renews the lease (and a lease past its grace cannot be renewed; the
    /// session is closing). On error nothing changes. Returns the new expiry.
    pub fn renew(
        &mut self,
        user: &UserId,
        verified: Result<Identity, String>,
        now_ms: u64,
    ) -> Result<u64, EngineError> {
        let identity = verified.map_err(EngineError::Unauthorized)?;
        if identity.user != *user {
            return Err(EngineError::Unauthorized(
                "the token is for another user; a session keeps its user".into(),
            ));
        }
        let Some(expires_at_ms) = identity.expires_at_ms else {
            return Err(EngineError::Unauthorized("the token has no expiry".into()));
        };
        if now_ms >= self.expires_at_ms.saturating_add(self.grace_ms) {
            return Err(EngineError::Unauthorized("the grace period is over".into()));
        }
        self.expires_at_ms = expires_at_ms;
        self.told = false;
        Ok(expires_at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn alice() -> UserId {
        UserId::from("alice")
    }

    #[test]
    fn expiry_then_grace_then_close() {
        let mut l = TokenLease::new(10_000, 3_000);
        assert_eq!(l.poll(4_000), LeaseStep::Wait(MS(6_000)));
        assert_eq!(l.poll(10_000), LeaseStep::Expired(MS(3_000)));
        // Told once; afterwards only the rest of the grace.
        assert_eq!(l.poll(11_000), LeaseStep::Wait(MS(2_000)));
        assert_eq!(l.poll(12_999), LeaseStep::Wait(MS(1)));
        assert_eq!(l.poll(13_000), LeaseStep::Close);
        assert_eq!(l.poll(99_000), LeaseStep::Close);
    }

    #[test]
    fn a_late_first_look_still_tells_then_closes() {
        // A timer that fires late (a busy thread) inside the grace still tells.
        let mut l = TokenLease::new(10_000, 3_000);
        assert_eq!(l.poll(12_500), LeaseStep::Expired(MS(500)));
        // Past the grace it closes without telling first.
        let mut l = TokenLease::new(10_000, 3_000);
        assert_eq!(l.poll(20_000), LeaseStep::Close);
        // No grace: told and closed at the next look.
        let mut l = TokenLease::new(10_000, 0);
        assert_eq!(l.poll(10_000), LeaseStep::Close);
    }

    #[test]
    fn a_refresh_for_the_same_user_renews_before_or_after_expiry() {
        let mut l = TokenLease::new(10_000, 3_000);
        assert_eq!(l.renew(&alice(), Ok(Identity::token(alice(), 50_000)), 5_000), Ok(50_000));
        assert_eq!(l.poll(10_000), LeaseStep::Wait(MS(40_000)));
        assert_eq!(l.poll(50_000), LeaseStep::Expired(MS(3_000)));
        assert_eq!(l.renew(&alice(), Ok(Identity::token(alice(), 90_000)), 51_000), Ok(90_000));
        // Renewed after being told: told again at the next expiry.
        assert_eq!(l.poll(52_000), LeaseStep::Wait(MS(38_000)));
        assert_eq!(l.poll(90_000), LeaseStep::Expired(MS(3_000)));
    }

    #[test]
    fn a_bad_refresh_changes_nothing() {
        let mut l = TokenLease::new(10_000, 3_000);
        let before = l.clone();
        let other = l.renew(&alice(), Ok(Identity::token(UserId::from("mallory"), 99_000)), 1);
        assert!(matches!(other, Err(EngineError::Unauthorized(_))), "{other:?}");
        let bad = l.renew(&alice(), Err("invalid signature".into()), 1);
        assert_eq!(bad, Err(EngineError::Unauthorized("invalid signature".into())));
        let anon = l.renew(&alice(), Ok(Identity::from(alice())), 1);
        assert!(matches!(anon, Err(EngineError::Unauthorized(_))));
        assert_eq!(l, before);
        // Too late: the grace is over, the session is closing.
        assert!(l.renew(&alice(), Ok(Identity::token(alice(), 99_000)), 13_000).is_err());
        assert_eq!(l, before);
    }

    #[test]
    fn refresh_attempts_are_spaced() {
        let mut l = TokenLease::new(10_000, 3_000);
        assert_eq!(l.attempt(1_000, 1_000), Ok(()));
        assert_eq!(
            l.attempt(1_400, 1_000),
            Err(EngineError::RateLimited { action: "refresh", retry_after_ms: 600 })
        );
        assert_eq!(l.attempt(2_000, 1_000), Ok(()));
        assert_eq!(l.attempt(2_000, 0), Ok(()));
    }
}
