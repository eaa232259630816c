//! A channel's output held back until the store's durable point passes a reply's epoch.
//!
//! A reply that promises a durable change (`declare-ok` of a durable entity, `tx.commit-ok`)
//! must not leave before the change is on disk, and the fsync must not run on the async worker
//! thread. So the reply waits here with the epoch of its write. An AMQP 0-9-1 channel is one
//! ordered stream of frames whose synchronous replies answer requests in the order they came,
//! and a delivery that overtook a `declare-ok`, or a confirm that overtook a `commit-ok`, would
//! tell the client about work it has not been told is done. So once something is held,
//! everything the channel writes afterwards queues behind it.

use bytes::BytesMut;
use rosetta_core::durable::Held;
use rosetta_core::store::Epoch;

#[derive(Default)]
pub(super) struct HeldOutput {
    /// Encoded frames, each run released once the durable epoch reaches its epoch, in order.
    runs: Held<BytesMut>,
    /// Where, in the session's output buffer, the output of the current call starts being
    /// held; `None` while nothing of this call is held.
    from: Option<usize>,
}

impl HeldOutput {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Before the channel writes to `out`: when output is already held, what it writes from
    /// here on is held too.
    pub fn begin(&mut self, out: &BytesMut) {
        self.from = (!self.runs.is_empty()).then_some(out.len());
    }

    /// After the channel wrote to `out`: takes back what must wait behind held output.
    pub fn end(&mut self, out: &mut BytesMut) {
        if let Some(from) = self.from.take() {
            self.take_tail(out, from);
        }
    }

    /// Whether a reply with `epoch` can go out now, `durable` being the store's durable epoch.
    pub fn passes(&self, epoch: Option<Epoch>, durable: Epoch) -> bool {
        self.runs.is_empty() && epoch.is_none_or(|e| e <= durable)
    }

    /// Holds `frames` (a reply, encoded) until the durable epoch reaches `epoch`; the channel's
    /// later output in this call follows it. Must be called between `begin` and `end`.
    pub fn hold(&mut self, out: &mut BytesMut, epoch: Epoch, frames: BytesMut) {
        if let Some(from) = self.from {
            self.take_tail(out, from);
        }
        self.runs.push(epoch, frames);
        self.from = Some(out.len());
    }

    /// Appends to `out`, in order, every run whose epoch is durable, stopping at the first that
    /// is not: later runs may have smaller epochs but must not overtake it.
    pub fn release(&mut self, out: &mut BytesMut, durable: Epoch) {
        while let Some(frames) = self.runs.pop_durable(durable) {
            out.extend_from_slice(&frames);
        }
    }

    fn take_tail(&mut self, out: &mut BytesMut, from: usize) {
        let tail = out.split_off(from);
        if let Some(run) = self.runs.last_mut() {
            run.extend_from_slice(&tail);
        }
    }
}
