//! The session's outbox, created when the session first needs it: the consumers it starts
//! deliver into it, and a newer connection taking the client id over sends its close request
//! through it. An idle client that subscribes to nothing never needs one, and tokio's unbounded
//! channel allocates its first block of slots (over a kilobyte for `Outbound`) when created.

use std::task::Waker;

use rosetta_core::Outbound;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

#[derive(Default)]
pub(crate) struct Outbox {
    tx: Option<UnboundedSender<Outbound>>,
    /// The receiving end, until the connection task picks it up.
    rx: Option<UnboundedReceiver<Outbound>>,
    /// The connection task waiting for the receiver.
    waker: Option<Waker>,
}

impl Outbox {
    /// A sender, creating the channel, and waking the connection task, on first use.
    pub(crate) fn sender(&mut self) -> UnboundedSender<Outbound> {
        if let Some(tx) = &self.tx {
            return tx.clone();
        }
        let (tx, rx) = unbounded_channel();
        self.rx = Some(rx);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
        self.tx.insert(tx).clone()
    }

    /// The receiver once the channel exists; until then `waker` is woken when it is created.
    pub(crate) fn take_receiver(&mut self, waker: &Waker) -> Option<UnboundedReceiver<Outbound>> {
        if self.tx.is_none() {
            match &mut self.waker {
                Some(w) => w.clone_from(waker),
                slot => *slot = Some(waker.clone()),
            }
        }
        self.rx.take()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use rosetta_core::{CloseReason, Outbound};

    use super::Outbox;

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_waiting_task_is_woken_when_the_outbox_is_created_and_then_gets_the_receiver() {
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        let mut outbox = Outbox::default();
        assert!(outbox.take_receiver(&waker).is_none());
        assert!(!flag.0.load(Ordering::SeqCst));

        let sent = outbox
            .sender()
            .send(Outbound::Close(CloseReason::TakenOver));
        assert!(sent.is_ok());
        assert!(flag.0.load(Ordering::SeqCst));

        let mut rx = outbox
            .take_receiver(&waker)
            .expect("the receiver, once created");
        assert!(matches!(
            rx.try_recv(),
            Ok(Outbound::Close(CloseReason::TakenOver))
        ));
        assert!(outbox.take_receiver(&waker).is_none(), "handed out once");
    }
}
