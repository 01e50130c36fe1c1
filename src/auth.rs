//! Who is connecting: a JWT (HS256, `sub` = user id, `exp` enforced) from `?token=`
//! or `Authorization: Bearer`, else an anonymous name when anonymous mode is on.

use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use rendezvous_actors::ids::{random_id, UserId};
use serde::Deserialize;

/// Longest token accepted; anything larger is refused unread.
const MAX_TOKEN_BYTES: usize = 4096;
/// Longest user id (JWT `sub` or anonymous name).
const MAX_USER_CHARS: usize = 64;

/// Why a connection is refused (HTTP 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("invalid token: {0}")]
    BadToken(String),
    #[error("tokens are not accepted: no JWT secret is configured")]
    NoSecret,
    #[error("invalid user name: use 1-64 letters, digits, '-', '_', '.', '@' or ':'")]
    BadName,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// How identities are established on this server.
pub struct Authenticator {
    key: Option<DecodingKey>,
    validation: Validation,
    anonymous: bool,
}

impl Authenticator {
    pub fn new(secret: Option<&str>, anonymous: bool) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Self { key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())), validation, anonymous }
    }

    /// Identify the user of an upgrade request from its query string and headers.
    pub fn identify(&self, query: Option<&str>, headers: &HeaderMap) -> Result<UserId, AuthError> {
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
            return self.verify(&token);
        }
        if !self.anonymous {
            return Err(AuthError::Missing);
        }
        match user {
            Some(name) if valid_name(&name) => Ok(UserId::from(name)),
            Some(_) => Err(AuthError::BadName),
            None => Ok(UserId::from(random_id("anon-"))),
        }
    }

    fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::NoSecret)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::BadToken("token too large".into()));
        }
        let data = decode::<Claims>(token, key, &self.validation)
            .map_err(|e| AuthError::BadToken(e.to_string()))?;
        if !valid_name(&data.claims.sub) {
            return Err(AuthError::BadToken("claim `sub` is not a valid user id".into()));
        }
        Ok(UserId::from(data.claims.sub))
    }
}

fn valid_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=MAX_USER_CHARS).contains(&n)
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;

    #[derive(Serialize)]
    struct C<'a> {
        sub: &'a str,
        exp: u64,
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn token(secret: &str, sub: &str, exp: u64) -> String {
        encode(&Header::default(), &C { sub, exp }, &EncodingKey::from_secret(secret.as_bytes()))
            .expect("encode")
    }

    const SECRET: &str = "a-test-secret-of-some-length";

    #[test]
    fn valid_tokens_from_query_or_header() {
        let a = Authenticator::new(Some(SECRET), false);
        let t = token(SECRET, "alice", now() + 60);
        assert_eq!(
            a.identify(Some(&format!("token={t}")), &HeaderMap::new()),
            Ok(UserId::from("alice"))
        );
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {t}").parse().expect("header"));
        assert_eq!(a.identify(None, &h), Ok(UserId::from("alice")));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let a = Authenticator::new(Some(SECRET), true);
        let expired = token(SECRET, "alice", now() - 3600);
        assert!(matches!(
            a.identify(Some(&format!("token={expired}")), &HeaderMap::new()),
            Err(AuthError::BadToken(_))
        ));
        let forged = token("another-secret-entirely", "alice", now() + 60);
        assert!(matches!(
            a.identify(Some(&format!("token={forged}")), &HeaderMap::new()),
            Err(AuthError::BadToken(_))
        ));
        assert!(a.identify(Some("token=garbage"), &HeaderMap::new()).is_err());
        let none_alg =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(a.identify(Some(&format!("token={none_alg}")), &HeaderMap::new()).is_err());
    }

    #[test]
    fn anonymous_only_when_enabled() {
        let on = Authenticator::new(None, true);
        assert_eq!(on.identify(Some("user=bob"), &HeaderMap::new()), Ok(UserId::from("bob")));
        assert!(on
            .identify(None, &HeaderMap::new())
            .expect("generated")
            .as_str()
            .starts_with("anon-"));
        assert_eq!(
            on.identify(Some("user=bad%20name"), &HeaderMap::new()),
            Err(AuthError::BadName)
        );
        assert_eq!(on.identify(Some("token=x"), &HeaderMap::new()), Err(AuthError::NoSecret));
        let off = Authenticator::new(None, false);
        assert_eq!(off.identify(Some("user=bob"), &HeaderMap::new()), Err(AuthError::Missing));
    }
}
