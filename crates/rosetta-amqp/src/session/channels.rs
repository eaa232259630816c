//! A connection's open channels, by number.
//!
//! Every frame after the handshake names a channel, so the lookup runs several times per
//! message. Channel numbers are small and bounded by `channel_max`, so they are hashed with a
//! multiply rather than SipHash, and each channel is boxed and handed out in place: a lookup
//! moves nothing, and opening or closing one costs the same however many are open.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use rosetta_core::TagHasher;

use super::channel::Channel;

#[derive(Default)]
pub(super) struct Channels {
    open: HashMap<u16, Box<Channel>, BuildHasherDefault<TagHasher>>,
}

impl Channels {
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn get(&self, id: u16) -> Option<&Channel> {
        self.open.get(&id).map(|c| &**c)
    }

    pub fn get_mut(&mut self, id: u16) -> Option<&mut Channel> {
        self.open.get_mut(&id).map(|c| &mut **c)
    }

    /// Adds channel `id`, in place of any channel of that number.
    pub fn insert(&mut self, id: u16, channel: Channel) {
        self.open.insert(id, Box::new(channel));
    }

    pub fn remove(&mut self, id: u16) -> Option<Channel> {
        self.open.remove(&id).map(|c| *c)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Channel> {
        self.open.values().map(|c| &**c)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Channel> {
        self.open.values_mut().map(|c| &mut **c)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Channel) -> bool) {
        self.open.retain(|_, c| keep(c));
    }

    /// Removes every channel.
    pub fn drain(&mut self) -> impl Iterator<Item = Channel> + '_ {
        self.open.drain().map(|(_, c)| *c)
    }
}
