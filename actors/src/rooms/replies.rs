//! Answers the rooms give a client outside any room's own state: a refused join.
//! A leaf of `rooms/` (the supervisor and the room actors both use it), so neither
//! imports the other for it.

use rendezvous_protocol::{ErrorCode, ServerFrame};

use super::messages::JoinPublicRoom;
use crate::metrics as m;
use crate::outbox::Class;
use crate::state::Shared;

/// Answer a refused join with `too_large` and give back the seat the session
/// reserved for it ([`Shared::reserve_room`]).
pub fn refuse_join(shared: &Shared, join: &JoinPublicRoom, message: String) {
    shared.remove_membership(&join.user, &join.room_id);
    metrics::counter!(m::ERRORS_TOTAL, "code" => "too_large").increment(1);
    join.outbox.push_frame(
        &ServerFrame::Error {
            code: ErrorCode::TooLarge,
            message,
            retry_after_ms: None,
            action: Some("join".into()),
            client_msg_id: None,
        },
        Class::Essential,
    );
}
