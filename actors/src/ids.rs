//! Identifier newtypes. Each wraps an `Arc<str>`, so cloning one into a pool entry,
//! a room member list or a registry key is a reference-count bump, not an allocation.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

macro_rules! arc_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(s: impl Into<Arc<str>>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(Arc::from(s))
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(Arc::from(s))
            }
        }
    };
}

arc_id!(
    /// A user, as authenticated at connect time (JWT `sub` or anonymous name).
    UserId
);
arc_id!(
    /// A room: `r…` for match rooms, `pub:…` for named public rooms.
    RoomId
);
arc_id!(
    /// A normalized interest slug (lower case, trimmed).
    Interest
);

impl RoomId {
    /// Named public rooms are the ones clients may `join`.
    pub fn is_public(&self) -> bool {
        self.0.starts_with(PUBLIC_PREFIX)
    }
}

/// Prefix of rooms that anyone may join by name.
pub const PUBLIC_PREFIX: &str = "pub:";

/// A short random identifier with a prefix (`r…`, `m…`, `s…`), 64 random bits in hex.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}
