//! The room directory: room id → a handle of the room open on this node. Generic
//! over the handle so that this leaf imports no actor; `rooms/` instantiates it as
//! `Directory<Addr<RoomActor>>`. Sessions route room actions through it, the
//! inbound router routes other nodes' room events through it, and a room removes
//! itself from it when it closes. It knows nothing of how a room starts.

use std::borrow::Borrow;
use std::hash::Hash;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::ids::RoomId;

/// What [`Directory::get_or_try_open`] found or did.
pub enum Opened<H, S> {
    /// A room was registered already: its handle.
    Existing(H),
    /// No room was registered: the one just made, with what the opener returned
    /// beside it (e.g. the closure that starts its actor).
    New(H, S),
}

/// Sharded map (DashMap): sessions on every worker thread look rooms up while the
/// supervisor and the inbound router insert. Handles are cloned out; no guard is
/// held across an `.await`.
pub struct Directory<H> {
    map: DashMap<RoomId, H>,
}

impl<H> Default for Directory<H> {
    fn default() -> Self {
        Self { map: DashMap::new() }
    }
}

impl<H: Clone + PartialEq> Directory<H> {
    /// The handle of `room` (a [`RoomId`] or a `str`), if it is open here.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, room: &Q) -> Option<H>
    where
        RoomId: Borrow<Q>,
    {
        self.map.get(room).map(|h| h.value().clone())
    }

    pub fn contains<Q: Hash + Eq + ?Sized>(&self, room: &Q) -> bool
    where
        RoomId: Borrow<Q>,
    {
        self.map.contains_key(room)
    }

    /// The handle of `room`, or register the one `open` makes. `open` runs with the
    /// room's entry locked, so two openers of one id cannot both make a room; it
    /// may refuse (`Err`), and then nothing is registered.
    pub fn get_or_try_open<S, E>(
        &self,
        room: &RoomId,
        open: impl FnOnce() -> Result<(H, S), E>,
    ) -> Result<Opened<H, S>, E> {
        match self.map.entry(room.clone()) {
            Entry::Occupied(e) => Ok(Opened::Existing(e.get().clone())),
            Entry::Vacant(v) => {
                let (handle, made) = open()?;
                v.insert(handle.clone());
                Ok(Opened::New(handle, made))
            }
        }
    }

    /// Forget `room` if `handle` is still the one registered (a newer room of the
    /// same id stays).
    pub fn remove_if_current(&self, room: &RoomId, handle: &H) {
        self.map.remove_if(room, |_, h| h == handle);
    }

    /// Every open room's handle (a snapshot).
    pub fn handles(&self) -> Vec<H> {
        self.map.iter().map(|e| e.value().clone()).collect()
    }

    /// Every open room's id (a snapshot).
    pub fn ids(&self) -> Vec<RoomId> {
        self.map.iter().map(|e| e.key().clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_opener_per_id_and_a_refusal_registers_nothing() {
        let d: Directory<u32> = Directory::default();
        let id = RoomId::from("r1");
        let refused: Result<Opened<u32, ()>, &str> = d.get_or_try_open(&id, || Err("full"));
        assert!(refused.is_err());
        assert!(!d.contains("r1"));
        let first = d.get_or_try_open(&id, || Ok::<_, ()>((1, "started")));
        assert!(matches!(first, Ok(Opened::New(1, "started"))));
        let second = d.get_or_try_open(&id, || Ok::<_, ()>((2, "started")));
        assert!(matches!(second, Ok(Opened::Existing(1))));
        // Only the registered handle removes the entry.
        d.remove_if_current(&id, &2);
        assert_eq!(d.get("r1"), Some(1));
        d.remove_if_current(&id, &1);
        assert!(d.is_empty());
    }
}
