//! Searching as a test sees it: send `find_match`, require `searching`, read the
//! outcome, compare matches. Each suite says which frames may interleave with the
//! search frames by the [`Search`] it uses: the multi-node suites allow `presence`
//! only ([`Search::AMID_PRESENCE`]), the matching suite all room chatter
//! ([`Search::AMID_CHATTER`]).

use std::time::Duration;

use rendezvous_protocol::ServerFrame;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::cluster::Node;
use crate::Client;

/// The search helpers, reading past the frames `skip` names.
#[derive(Clone, Copy)]
pub struct Search {
    skip: fn(&ServerFrame) -> bool,
}

impl Search {
    /// Reads past `presence` only.
    pub const AMID_PRESENCE: Search =
        Search { skip: |f| matches!(f, ServerFrame::Presence { .. }) };

    /// Reads past the room chatter that may interleave with matching frames
    /// (`presence`, `typing`, `read`).
    pub const AMID_CHATTER: Search = Search {
        skip: |f| {
            matches!(
                f,
                ServerFrame::Presence { .. }
                    | ServerFrame::Typing { .. }
                    | ServerFrame::Read { .. }
            )
        },
    };

    /// The next frame this search does not read past.
    pub async fn next(self, c: &mut Client) -> ServerFrame {
        loop {
            let f = c.recv().await;
            if !(self.skip)(&f) {
                return f;
            }
        }
    }

    /// Nothing but frames this search reads past arrives within `wait`.
    pub async fn quiet(self, c: &mut Client, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match c.try_recv(left).await {
                None => return,
                Some(f) if (self.skip)(&f) => continue,
                Some(f) => panic!("{}: expected no frame, got {f:?}", c.user_id),
            }
        }
    }

    /// Send [`find_match`] and require `searching` (with a ticket) as the answer.
    pub async fn search(self, c: &mut Client, interests: &[&str], extra: Value) {
        c.send_json(find_match(interests, extra)).await;
        match self.next(c).await {
            ServerFrame::Searching { ticket } => assert!(!ticket.is_empty(), "empty ticket"),
            other => panic!("{}: expected searching, got {other:?}", c.user_id),
        }
    }

    /// The outcome of the running search: `match_found` or `no_match_found`.
    pub async fn outcome(self, c: &mut Client) -> ServerFrame {
        let f = self.next(c).await;
        match f {
            ServerFrame::MatchFound { .. } | ServerFrame::NoMatchFound {} => f,
            other => panic!("{}: expected a search outcome, got {other:?}", c.user_id),
        }
    }

    /// The outcome of the running search, which must be a match.
    pub async fn expect_match(self, c: &mut Client) -> Found {
        let f = self.outcome(c).await;
        Found::of(&c.user_id, f)
    }
}

/// The `find_match` frame for `interests` plus the fields of `extra` (an object).
pub fn find_match(interests: &[&str], extra: Value) -> Value {
    let mut body = json!({"action": "find_match", "interests": interests});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// A `match_found` as one member saw it, with members and shared interests sorted
/// for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub room: String,
    pub partner: Option<String>,
    pub members: Vec<String>,
    pub shared: Vec<String>,
    pub score: u32,
}

impl Found {
    /// A `match_found` with its lists in the server's order; None for other frames.
    pub(crate) fn as_sent(f: ServerFrame) -> Option<Found> {
        match f {
            ServerFrame::MatchFound { room_id, partner_id, members, shared_interests, score } => {
                Some(Found {
                    room: room_id,
                    partner: partner_id,
                    members,
                    shared: shared_interests,
                    score,
                })
            }
            _ => None,
        }
    }

    /// Members and shared interests sorted, for comparison.
    pub fn sort(&mut self) {
        self.members.sort();
        self.shared.sort();
    }

    /// `f` as `user` received it, sorted; panics unless it is a `match_found` with
    /// a room.
    pub fn of(user: &str, f: ServerFrame) -> Found {
        if !matches!(f, ServerFrame::MatchFound { .. }) {
            panic!("{user}: expected match_found, got {f:?}");
        }
        let mut found = Found::as_sent(f).expect("a match_found");
        assert!(!found.room.is_empty(), "{user}: empty room id");
        found.sort();
        found
    }
}

/// `a` on node `a.0` and `b` on node `b.0` search for chess and go (one after the
/// other) and are matched with each other; the two clients and the room.
pub async fn pair(nodes: &[Node], a: (usize, &str), b: (usize, &str)) -> (Client, Client, String) {
    let mut ca = nodes[a.0].client_checked(a.1).await;
    let mut cb = nodes[b.0].client_checked(b.1).await;
    let s = Search::AMID_PRESENCE;
    s.search(&mut ca, &["chess", "go"], json!({})).await;
    s.search(&mut cb, &["chess", "go"], json!({})).await;
    let fa = s.expect_match(&mut ca).await;
    let fb = s.expect_match(&mut cb).await;
    assert_eq!(fa.room, fb.room, "{} and {} were given different rooms", a.1, b.1);
    assert_eq!(fa.partner.as_deref(), Some(b.1), "{}'s partner", a.1);
    assert_eq!(fb.partner.as_deref(), Some(a.1), "{}'s partner", b.1);
    (ca, cb, fa.room)
}
