//! The table of live client connections, whatever their protocol: the connection and channel
//! gauges and the management API read it. The connection driver registers each connection for
//! as long as its task runs; the lock is taken only when a connection opens, closes or is listed.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Poll;
use std::time::SystemTime;

use futures_util::task::AtomicWaker;
use rosetta_core::front_end::Eviction;

use crate::metrics::PROTOCOLS;

#[derive(Default)]
pub(crate) struct Connections {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<ConnectionInfo>>>,
}

/// What is known about one connection.
pub(crate) struct ConnectionInfo {
    pub id: u64,
    pub protocol: &'static str,
    /// `tcp`, `tls`, `ws` or `wss` ([`crate::connection::Transport::NAME`]).
    pub transport: &'static str,
    pub peer: SocketAddr,
    pub opened_at: SystemTime,
    /// Set once the client has authenticated.
    user: OnceLock<String>,
    channels: AtomicUsize,
    /// Set when an operator deleted the connection's user: the task closes it when signalled.
    evicted: OnceLock<Eviction>,
    /// Raised when a broker-wide signal (shutdown, the resource alarm) changes, so a connection
    /// task sleeps until its own next deadline instead of polling the signals on a fixed tick.
    signal: Signal,
}

/// A flag one task waits on and anyone raises. The task polls it on every wake-up, so a wait
/// must be cheap: registering costs two atomic exchanges when the waker is unchanged, where `tokio::sync::Notify` locks its
/// waiter list to join it and again to leave.
#[derive(Default)]
struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Completes once the flag was raised since the last completion, and lowers it.
    fn lowered(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            // Registered before looking: a raise after the look finds the waker.
            self.waker.register(cx.waker());
            if self.raised.swap(false, Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

impl ConnectionInfo {
    pub fn user(&self) -> Option<&str> {
        self.user.get().map(String::as_str)
    }

    pub fn channels(&self) -> usize {
        self.channels.load(Ordering::Relaxed)
    }
}

/// Connections and channels counted per protocol at one instant.
pub(crate) struct Totals {
    /// Every protocol in [`PROTOCOLS`] is present, with 0 if it has no connection.
    pub connections: BTreeMap<&'static str, u64>,
    pub channels: u64,
}

/// A connection's entry in the table; dropping it removes the entry.
pub(crate) struct Registration<'a> {
    table: &'a Connections,
    info: Arc<ConnectionInfo>,
}

impl Registration<'_> {
    /// Completes once [`Connections::signal_all`] was called since the last completion (a
    /// signal sent while nobody waits is kept, so none is lost between two waits).
    pub fn signalled(&self) -> impl Future<Output = ()> + '_ {
        self.info.signal.lowered()
    }

    /// Why an operator wants the connection closed, if they do.
    pub fn evicted(&self) -> Option<Eviction> {
        self.info.evicted.get().copied()
    }

    /// Records what the session reports; cheap enough to call after every wake-up. The first
    /// user reported is asked about with `deleted`: a login that checked the password just
    /// before the user's deletion would otherwise miss the sweep ([`Connections::evict_user`])
    /// and stay open.
    pub fn update(&self, user: Option<&str>, channels: usize, deleted: impl FnOnce(&str) -> bool) {
        if self.info.user.get().is_none() {
            if let Some(user) = user {
                // Set under the table's lock: a sweep either comes after and sees the user, or
                // came before, and then the directory already lacks the user (a deletion
                // changes it before sweeping), which `deleted` sees.
                let _ = {
                    let _table = self.table.lock();
                    self.info.user.set(user.to_owned())
                };
                if deleted(user) {
                    let _ = self.info.evicted.set(Eviction::UserDeleted);
                    self.info.signal.raise();
                }
            }
        }
        self.info.channels.store(channels, Ordering::Relaxed);
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.table.lock().remove(&self.info.id);
    }
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<ConnectionInfo>>> {
        // The map stays consistent even if a holder panicked: every update is one insert or remove.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn register(
        &self,
        protocol: &'static str,
        transport: &'static str,
        peer: SocketAddr,
    ) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let info = Arc::new(ConnectionInfo {
            id,
            protocol,
            transport,
            peer,
            opened_at: SystemTime::now(),
            user: OnceLock::new(),
            channels: AtomicUsize::new(0),
            evicted: OnceLock::new(),
            signal: Signal::default(),
        });
        self.lock().insert(id, info.clone());
        Registration { table: self, info }
    }

    /// Tells every connection task to look at the broker-wide signals again. Rare (shutdown,
    /// an alarm raised or cleared), so one pass over the table is fine.
    pub fn signal_all(&self) {
        for c in self.lock().values() {
            c.signal.raise();
        }
    }

    /// Closes every connection of user `name` (its user was deleted): each is marked and woken,
    /// and its task says goodbye in its protocol's terms. Returns how many there were.
    pub fn evict_user(&self, name: &str) -> usize {
        let mut evicted = 0;
        for c in self.lock().values().filter(|c| c.user() == Some(name)) {
            let _ = c.evicted.set(Eviction::UserDeleted);
            c.signal.raise();
            evicted += 1;
        }
        evicted
    }

    /// Every live connection, oldest first.
    pub fn list(&self) -> Vec<Arc<ConnectionInfo>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by_key(|c| c.id);
        all
    }

    pub fn totals(&self) -> Totals {
        let mut connections: BTreeMap<&'static str, u64> =
            PROTOCOLS.iter().map(|p| (*p, 0)).collect();
        let mut channels = 0u64;
        for c in self.lock().values() {
            *connections.entry(c.protocol).or_default() += 1;
            channels += c.channels() as u64;
        }
        Totals {
            connections,
            channels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40000))
    }

    #[test]
    fn registrations_are_counted_per_protocol_until_dropped() {
        let table = Connections::default();
        let a = table.register("amqp", "tcp", peer());
        let b = table.register("amqp", "tls", peer());
        let m = table.register("mqtt", "ws", peer());
        a.update(Some("guest"), 3, |_| false);
        b.update(None, 1, |_| false);
        let totals = table.totals();
        assert_eq!(totals.connections["amqp"], 2);
        assert_eq!(totals.connections["mqtt"], 1);
        assert_eq!(totals.connections["stomp"], 0);
        assert_eq!(totals.channels, 4);
        drop(a);
        drop(m);
        let totals = table.totals();
        assert_eq!(totals.connections["amqp"], 1);
        assert_eq!(totals.connections["mqtt"], 0);
        assert_eq!(totals.channels, 1);
    }

    #[test]
    fn evicting_a_user_marks_only_its_connections() {
        let table = Connections::default();
        let a = table.register("amqp", "tcp", peer());
        let b = table.register("mqtt", "tcp", peer());
        let c = table.register("stomp", "tcp", peer());
        a.update(Some("bob"), 1, |_| false);
        b.update(Some("bob"), 0, |_| false);
        c.update(Some("bobby"), 0, |_| false);
        assert_eq!(table.evict_user("bob"), 2);
        assert_eq!(a.evicted(), Some(Eviction::UserDeleted));
        assert_eq!(b.evicted(), Some(Eviction::UserDeleted));
        assert_eq!(c.evicted(), None);
    }

    #[tokio::test]
    async fn a_login_racing_with_its_users_deletion_is_evicted() {
        let table = Connections::default();
        let late = table.register("amqp", "tcp", peer());
        let kept = table.register("stomp", "tcp", peer());
        // The sweep ran while the session was still logging in: it saw no user.
        assert_eq!(table.evict_user("carol"), 0);
        late.update(Some("carol"), 1, |user| user == "carol");
        kept.update(Some("dave"), 0, |user| user == "carol");
        assert_eq!(late.evicted(), Some(Eviction::UserDeleted));
        assert_eq!(kept.evicted(), None);
        // Marked and woken, as the sweep does, so its task closes it.
        let woken = tokio::time::timeout(std::time::Duration::from_secs(5), late.signalled()).await;
        assert!(woken.is_ok(), "the evicted connection was signalled");
    }

    #[tokio::test]
    async fn a_signal_wakes_a_waiting_task_once() {
        use futures_util::FutureExt;
        let table = Connections::default();
        let r = table.register("mqtt", "tcp", peer());
        // The wait is polled (and parks) before the raise.
        let raise_later = async {
            tokio::task::yield_now().await;
            table.signal_all();
        };
        let both = async { tokio::join!(r.signalled(), raise_later) };
        let woken = tokio::time::timeout(std::time::Duration::from_secs(5), both).await;
        assert!(woken.is_ok(), "the waiting task saw the signal");
        // That wait took the signal; the next one waits for a new signal.
        assert!(
            r.signalled().now_or_never().is_none(),
            "one signal completes one wait"
        );
    }

    #[test]
    fn the_first_authenticated_user_is_kept() {
        let table = Connections::default();
        let r = table.register("stomp", "wss", peer());
        r.update(None, 0, |_| false);
        r.update(Some("alice"), 0, |_| false);
        r.update(Some("bob"), 0, |_| false);
        let listed = table.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].user(), Some("alice"));
        assert_eq!(listed[0].protocol, "stomp");
        assert_eq!(listed[0].transport, "wss");
    }
}
