//! Who is connecting. A JWT from `?token=` or `Authorization: Bearer` (HS256 with the
//! configured secret, or RS256 / ES256 with the configured public key; `sub` = user
//! id, `exp` enforced, `aud` / `iss` when configured), else an anonymous name when
//! anonymous mode is on. Also the [`TokenVerifier`] the engine uses for `refresh`.
//!
//! Rules that keep a client without a token from being anyone else:
//! * the token's `alg` header picks the key, and only its own key: HS256 is checked
//!   against the secret and never against a public key (algorithm confusion);
//! * in `auto` mode a request that came through a proxy (`Forwarded` or
//!   `X-Forwarded-For`) is remote, so it needs a token;
//! * when this node verifies tokens *and* accepts anonymous users, anonymous ids get
//!   the prefix [`ANON_PREFIX`], a character no valid `sub` may contain: `?user=bob`
//!   is the user `~bob`, never the token user `bob`. With no token verification
//!   there are no token users, and names stay as given.
//!
//! Not here: the handshake itself (`http.rs`) and what a session does with the
//! expiry (`rendezvous_actors::token`).

use std::sync::Arc;

use hyper::header::{HeaderName, AUTHORIZATION, FORWARDED};
use hyper::HeaderMap;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use rendezvous_actors::ids::{random_id, UserId};
use rendezvous_actors::token::{Identity, TokenVerifier};
use serde::Deserialize;

use crate::config::{AnonymousMode, Config};
pub use crate::public_key::{KeyError, PublicKey};

/// Longest token accepted; anything larger is refused unread.
const MAX_TOKEN_BYTES: usize = 4096;
/// Longest user id (JWT `sub`, or anonymous id including its prefix).
const MAX_USER_CHARS: usize = 64;
/// First character of every anonymous id on a node that also verifies tokens. Not
/// a character [`valid_name`] allows, so no JWT `sub` and no `?user=` can hold it.
pub const ANON_PREFIX: char = '~';
/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

/// Why a connection is refused (HTTP 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("a token is required: the request came through a proxy (Forwarded / X-Forwarded-For), and anonymous names are only for direct local connections")]
    Proxied,
    #[error("invalid token: {0}")]
    BadToken(String),
    #[error("tokens are not accepted: no JWT secret or public key is configured")]
    NoSecret,
    #[error("invalid user name: use 1-64 letters, digits, '-', '_', '.', '@' or ':'")]
    BadName,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// Who may connect without a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anonymous {
    Never,
    /// `auto` on a loopback bind without token verification: direct connections
    /// only, not ones a proxy forwarded.
    DirectOnly,
    Always,
}

/// How identities are established on this server. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    /// HS256 key and its validation.
    hmac: Option<(DecodingKey, Validation)>,
    /// RS256 or ES256 key and its validation (the algorithm is the key's).
    public: Option<(DecodingKey, Validation)>,
    anonymous: Anonymous,
    /// Anonymous ids get [`ANON_PREFIX`] (token users exist on this node).
    prefix_anonymous: bool,
}

impl Authenticator {
    /// The authenticator `config` describes (its key file already read by
    /// [`Config::load`]).
    pub fn from_config(config: &Config) -> Self {
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.validate_nbf = true;
            v.leeway = LEEWAY_SECS;
            let mut required = vec!["exp", "sub"];
            if let Some(aud) = &config.jwt_audience {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            if let Some(iss) = &config.jwt_issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            v.set_required_spec_claims(&required);
            v
        };
        let hmac = config
            .jwt_secret
            .as_deref()
            .map(|s| (DecodingKey::from_secret(s.as_bytes()), validation(Algorithm::HS256)));
        let public = config
            .jwt_public_key
            .as_ref()
            .map(|k| (k.decoding_key().clone(), validation(k.algorithm())));
        let verifies = hmac.is_some() || public.is_some();
        let anonymous = match config.anonymous {
            AnonymousMode::Allow => Anonymous::Always,
            AnonymousMode::Deny => Anonymous::Never,
            AnonymousMode::Auto if config.anonymous_allowed() => Anonymous::DirectOnly,
            AnonymousMode::Auto => Anonymous::Never,
        };
        let prefix_anonymous = verifies && anonymous != Anonymous::Never;
        Self { inner: Arc::new(Inner { hmac, public, anonymous, prefix_anonymous }) }
    }

    /// This authenticator as the engine's verifier for `refresh` tokens.
    pub fn verifier(&self) -> Arc<dyn TokenVerifier> {
        Arc::new(self.clone())
    }

    /// Identify the user of an upgrade request from its query string and headers.
    pub fn identify(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Identity, AuthError> {
        let mut token = None;
        let mut user = None;
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "token" if token.is_none() => token = Some(v.into_owned()),
                "user" if user.is_none() => user = Some(v.into_owned()),
                _ => {}
            }
        }
        if token.is_none() {
            token = headers
                .get(AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim().to_owned());
        }
        if let Some(token) = token {
            return self.verify_token(&token);
        }
        match self.inner.anonymous {
            Anonymous::Never => return Err(AuthError::Missing),
            Anonymous::DirectOnly if forwarded(headers) => return Err(AuthError::Proxied),
            Anonymous::DirectOnly | Anonymous::Always => {}
        }
        self.anonymous_id(user.as_deref()).map(Identity::from)
    }

    /// The anonymous id for `?user=NAME` (or a generated one), in the anonymous
    /// namespace when this node also has token users.
    fn anonymous_id(&self, name: Option<&str>) -> Result<UserId, AuthError> {
        let prefix = self.inner.prefix_anonymous;
        let name = match name {
            Some(n) if valid_name(n) => n.to_owned(),
            Some(_) => return Err(AuthError::BadName),
            None => random_id("anon-"),
        };
        if !prefix {
            return Ok(UserId::from(name));
        }
        if name.chars().count() >= MAX_USER_CHARS {
            return Err(AuthError::BadName);
        }
        Ok(UserId::from(format!("{ANON_PREFIX}{name}")))
    }

    fn verify_token(&self, token: &str) -> Result<Identity, AuthError> {
        let inner = &self.inner;
        if inner.hmac.is_none() && inner.public.is_none() {
            return Err(AuthError::NoSecret);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::BadToken("token too large".into()));
        }
        let header = decode_header(token).map_err(|e| AuthError::BadToken(e.to_string()))?;
        // The header only *picks* a key; each key has its own one-algorithm
        // validation, so an HS256 token never meets the public key.
        let (key, validation) = match header.alg {
            Algorithm::HS256 => inner.hmac.as_ref(),
            alg => inner.public.as_ref().filter(|(_, v)| v.algorithms == [alg]),
        }
        .ok_or_else(|| {
            AuthError::BadToken(format!("algorithm {:?} is not accepted here", header.alg))
        })?;
        let data = decode::<Claims>(token, key, validation)
            .map_err(|e| AuthError::BadToken(e.to_string()))?;
        if !valid_name(&data.claims.sub) {
            return Err(AuthError::BadToken("claim `sub` is not a valid user id".into()));
        }
        let expires_at_ms = data.claims.exp.saturating_mul(1000);
        Ok(Identity::token(UserId::from(data.claims.sub), expires_at_ms))
    }
}

impl TokenVerifier for Authenticator {
    fn verify(&self, token: &str) -> Result<Identity, String> {
        self.verify_token(token).map_err(|e| e.to_string())
    }
}

/// Whether a proxy forwarded this request (it says whom for).
fn forwarded(headers: &HeaderMap) -> bool {
    const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    headers.contains_key(FORWARDED) || headers.contains_key(X_FORWARDED_FOR)
}

/// A user id a token or a client may name: 1-64 letters, digits, `-_.@:`.
fn valid_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=MAX_USER_CHARS).contains(&n)
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn token(secret: &str, sub: &str, exp: u64) -> String {
        encode(
            &Header::default(),
            &json!({"sub": sub, "exp": exp}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    const SECRET: &str = "a-test-secret-of-some-length-0123456789";

    fn auth(secret: Option<&str>, anonymous: AnonymousMode) -> Authenticator {
        Authenticator::from_config(&Config {
            jwt_secret: secret.map(str::to_owned),
            anonymous,
            ..Config::default()
        })
    }

    fn user(r: Result<Identity, AuthError>) -> Result<UserId, AuthError> {
        r.map(|i| i.user)
    }

    #[test]
    fn valid_tokens_from_query_or_header() {
        let a = auth(Some(SECRET), AnonymousMode::Deny);
        let exp = now() + 60;
        let t = token(SECRET, "alice", exp);
        assert_eq!(
            a.identify(Some(&format!("token={t}")), &HeaderMap::new()),
            Ok(Identity::token(UserId::from("alice"), exp * 1000))
        );
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {t}").parse().expect("header"));
        assert_eq!(user(a.identify(None, &h)), Ok(UserId::from("alice")));
        assert_eq!(a.verify(&t).map(|i| i.user), Ok(UserId::from("alice")));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let a = auth(Some(SECRET), AnonymousMode::Allow);
        let expired = token(SECRET, "alice", now() - 3600);
        assert!(matches!(
            a.identify(Some(&format!("token={expired}")), &HeaderMap::new()),
            Err(AuthError::BadToken(_))
        ));
        let forged = token("another-secret-entirely-0123456789", "alice", now() + 60);
        assert!(matches!(
            a.identify(Some(&format!("token={forged}")), &HeaderMap::new()),
            Err(AuthError::BadToken(_))
        ));
        assert!(a.identify(Some("token=garbage"), &HeaderMap::new()).is_err());
        let none_alg =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(a.identify(Some(&format!("token={none_alg}")), &HeaderMap::new()).is_err());
        // A sub in the anonymous namespace is not a valid user id.
        let tilde = token(SECRET, "~bob", now() + 60);
        assert!(matches!(a.verify_token(&tilde), Err(AuthError::BadToken(_))));
    }

    #[test]
    fn audience_and_issuer_are_required_when_configured() {
        let a = Authenticator::from_config(&Config {
            jwt_secret: Some(SECRET.into()),
            jwt_audience: Some("chat".into()),
            jwt_issuer: Some("https://idp.example".into()),
            ..Config::default()
        });
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let t = |claims: serde_json::Value| encode(&Header::default(), &claims, &key).expect("t");
        let exp = now() + 60;
        let ok = t(json!({"sub":"a","exp":exp,"aud":"chat","iss":"https://idp.example"}));
        assert!(a.verify_token(&ok).is_ok());
        let list = t(json!({"sub":"a","exp":exp,"aud":["x","chat"],"iss":"https://idp.example"}));
        assert!(a.verify_token(&list).is_ok());
        for bad in [
            json!({"sub":"a","exp":exp,"aud":"other","iss":"https://idp.example"}),
            json!({"sub":"a","exp":exp,"aud":"chat","iss":"https://evil.example"}),
            json!({"sub":"a","exp":exp,"iss":"https://idp.example"}),
            json!({"sub":"a","exp":exp,"aud":"chat"}),
        ] {
            assert!(a.verify_token(&t(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn anonymous_only_when_enabled() {
        let on = auth(None, AnonymousMode::Allow);
        assert_eq!(user(on.identify(Some("user=bob"), &HeaderMap::new())), Ok(UserId::from("bob")));
        let generated = on.identify(None, &HeaderMap::new()).expect("generated");
        assert!(generated.user.as_str().starts_with("anon-"));
        assert_eq!(generated.expires_at_ms, None);
        assert_eq!(
            on.identify(Some("user=bad%20name"), &HeaderMap::new()),
            Err(AuthError::BadName)
        );
        assert_eq!(on.identify(Some("user=~bob"), &HeaderMap::new()), Err(AuthError::BadName));
        assert_eq!(on.identify(Some("token=x"), &HeaderMap::new()), Err(AuthError::NoSecret));
        let off = auth(None, AnonymousMode::Deny);
        assert_eq!(off.identify(Some("user=bob"), &HeaderMap::new()), Err(AuthError::Missing));
    }

    #[test]
    fn auto_mode_refuses_names_that_came_through_a_proxy() {
        let auto = auth(None, AnonymousMode::Auto);
        assert_eq!(
            user(auto.identify(Some("user=bob"), &HeaderMap::new())),
            Ok(UserId::from("bob"))
        );
        for (name, value) in [("x-forwarded-for", "203.0.113.7"), ("forwarded", "for=203.0.113.7")]
        {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), value.parse().expect("value"));
            assert_eq!(auto.identify(Some("user=bob"), &h), Err(AuthError::Proxied), "{name}");
            assert_eq!(auto.identify(None, &h), Err(AuthError::Proxied), "{name}");
            // `allow` is an explicit choice: it stays open behind a proxy.
            let allow = auth(None, AnonymousMode::Allow);
            assert_eq!(user(allow.identify(Some("user=bob"), &h)), Ok(UserId::from("bob")));
        }
    }

    #[test]
    fn anonymous_ids_never_meet_token_users() {
        let mixed = auth(Some(SECRET), AnonymousMode::Allow);
        assert_eq!(
            user(mixed.identify(Some("user=alice"), &HeaderMap::new())),
            Ok(UserId::from("~alice"))
        );
        let generated = mixed.identify(None, &HeaderMap::new()).expect("generated").user;
        assert!(generated.as_str().starts_with("~anon-"), "{generated}");
        let t = token(SECRET, "alice", now() + 60);
        assert_eq!(
            user(mixed.identify(Some(&format!("token={t}")), &HeaderMap::new())),
            Ok("alice".into())
        );
        // The prefixed id stays within the 64 characters of any user id.
        let n63 = "n".repeat(63);
        let id = user(mixed.identify(Some(&format!("user={n63}")), &HeaderMap::new()))
            .expect("63 chars");
        assert_eq!(id.as_str().chars().count(), 64);
        let n64 = "n".repeat(64);
        assert_eq!(
            mixed.identify(Some(&format!("user={n64}")), &HeaderMap::new()),
            Err(AuthError::BadName)
        );
    }
}
