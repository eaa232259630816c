//! A connection's open channels, by number.
//!
//! Every frame after the handshake names a channel, so the lookup runs several times per
//! message. A connection holds few channels (at most `channel_max`, numbers the client picks
//! within it): a vector sorted by number finds one with a binary search, with no hashing, and
//! hands it out in place. Each channel is boxed, so opening or closing one moves pointers, not
//! channels, however many are open.

use super::channel::Channel;

#[derive(Default)]
pub(super) struct Channels {
    /// Sorted by channel number, each number once.
    open: Vec<(u16, Box<Channel>)>,
}

impl Channels {
    fn position(&self, id: u16) -> Result<usize, usize> {
        self.open.binary_search_by_key(&id, |(n, _)| *n)
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn get(&self, id: u16) -> Option<&Channel> {
        self.position(id).ok().map(|i| &*self.open[i].1)
    }

    pub fn get_mut(&mut self, id: u16) -> Option<&mut Channel> {
        self.position(id).ok().map(|i| &mut *self.open[i].1)
    }

    /// Adds channel `id`, in place of any channel of that number.
    pub fn insert(&mut self, id: u16, channel: Channel) {
        match self.position(id) {
            Ok(i) => *self.open[i].1 = channel,
            Err(i) => self.open.insert(i, (id, Box::new(channel))),
        }
    }

    pub fn remove(&mut self, id: u16) -> Option<Channel> {
        self.position(id).ok().map(|i| *self.open.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Channel> {
        self.open.iter().map(|(_, c)| &**c)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Channel> {
        self.open.iter_mut().map(|(_, c)| &mut **c)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Channel) -> bool) {
        self.open.retain(|(_, c)| keep(c));
    }

    /// Removes every channel.
    pub fn drain(&mut self) -> impl Iterator<Item = Channel> + '_ {
        self.open.drain(..).map(|(_, c)| *c)
    }
}
