//! The order in which connections' input takes effect, for protocols that promise one (MQTT:
//! a SUBSCRIBE that arrived before another connection's PUBLISH is in place before that PUBLISH
//! is routed, as with Mosquitto, whose one thread reads its ready sockets in turn).
//!
//! Connections run in parallel, and the runtime may run a later-woken task first (tokio's LIFO
//! slot) or on another worker, so the order in which tasks handle their input says nothing.
//! What is known is which connections the reactor has woken for input they have not handled
//! yet: input that arrived before a given read is among theirs, or handled already. So each
//! connection's read is polled with a waker of its own ([`Turn`]), which takes a ticket from a
//! broker-wide counter ([`InputOrder`]) when the reactor wakes it; the input read next carries
//! that ticket (or a new one, when it was there without a wake-up):
//! - input that changes routing releases its ticket once it is handled;
//! - any other input releases it at once, before it is handled;
//! - input that publishes waits, before it is handled, until the tickets taken before it was
//!   read are released, and those of connections woken since ([`Ticket::wait_turn`]); but not
//!   for tickets of publishers (connections whose last input only published), nor for busy
//!   ones (taken for input that arrived while its connection handled earlier input) taken
//!   since, so publishers sending side by side never wait for each other.
//!
//! Only publishing input that shares a moment with a subscriber's input ever waits, and only
//! for input already woken; every release wakes the waiters. A ticket that is never released
//! (a bug, or a task stalled elsewhere) holds others back for at most [`MAX_WAIT`].
//!
//! Wake-ups alone leave gaps: the reactor hands out one batch of readiness events in turn, and
//! a publisher woken early in a batch can be read and routed on the other worker before a
//! subscriber woken later in the same batch (whose data may have come first) takes its ticket.
//! So the kernel is asked as well: every connection a publisher would wait for has its socket
//! in a level-triggered epoll set of its own ([`UnreadInput`]), and publishing input, before it
//! waits, gives a firm ticket to each of them with unread input ([`InputOrder::claim_unread`]).
//! A read that finds nothing keeps a firm ticket while the socket still holds bytes (the
//! reactor may not have reported them yet) and gives it back once it holds none. Input between
//! the kernel and a ticket is covered by a ticket such a connection takes before each read that
//! may take bytes from its socket ([`listen`]). Nor does the kernel show everything: packets
//! that arrive while a thread is in a call on the socket (a write of a delivery, say) wait in
//! the socket's backlog until the call ends, out of sight of epoll and of reads, and a thread
//! preempted in such a call holds them there for as long as it is off its CPU. So each such
//! call is marked in a slot of its thread ([`Turn::calling`]), and a look first waits for the
//! calls it finds marked on other connections' sockets to end.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use prometheus::IntCounter;
use rustix::event::{epoll, Timespec};
use rustix::net::{recv, RecvFlags};
use tokio::net::TcpStream;

use super::Transport;

#[cfg(test)]
#[path = "input_order_tests.rs"]
mod tests;

/// Tickets that can be outstanding at once before an old one is forgotten (see
/// [`InputOrder::release`]); far more than connections woken together.
const SLOTS: usize = 1 << 16;
/// The longest input waits for earlier tickets before it goes ahead without them: long enough
/// for a busy machine to get round to the tasks holding them, short enough that a ticket
/// lost to a bug costs one hiccup.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(100);
/// Marks a ticket in [`Turn::ticket`] as firm: the kernel held unread input for it, so a read
/// that finds nothing (the reactor has not reported the input yet) does not give it back.
const FIRM: u64 = 1 << 63;
/// Threads whose calls on watched sockets a look can see ([`UnreadInput::calls`]): far more
/// than the runtime's workers, the only threads that make such calls.
const CALL_SLOTS: usize = 256;
/// Connections with unread input one look at the kernel claims at most. More at once (a flood
/// of subscribers' input) are left to their wake-ups; the level-triggered set reports the rest
/// first on the next look.
const CLAIM_BATCH: usize = 64;

/// The sockets of connections that publishing input waits for, in a level-triggered epoll set
/// of their own: one non-blocking look tells which of them hold input not read yet, however
/// far the reactor has got in reporting it.
struct UnreadInput {
    epoll: OwnedFd,
    /// The [`Turn`] of each socket in the set, by the number its events carry.
    turns: DashMap<u64, Weak<Turn>>,
    ids: AtomicU64,
    /// Counts the looks at the set, so that a claim can tell whether the connection read
    /// since the look began ([`Turn::last_read`]).
    looks: AtomicU64,
    /// Slot `i` holds the number of the watched socket that thread `i` is in a call on (a read,
    /// a write, a peek), 0 when none. While a call holds a socket, the kernel parks the
    /// socket's incoming packets in a backlog that neither epoll nor a read sees until the
    /// call ends, so a look cannot tell such a socket's input from none ([`Turn::calling`]).
    calls: Box<[AtomicU64]>,
}

/// How many slots of [`UnreadInput::calls`] threads have been given: a look reads no further.
static THREADS: AtomicUsize = AtomicUsize::new(0);
/// Slots whose threads ended, for the next thread that makes a call.
static FREE_SLOTS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// A thread's slot in [`UnreadInput::calls`], given when it first makes a call and taken back
/// when it ends; threads past [`CALL_SLOTS`] at once get none.
struct CallSlot(usize);

impl CallSlot {
    fn new() -> CallSlot {
        let free = FREE_SLOTS.lock().unwrap_or_else(|e| e.into_inner()).pop();
        CallSlot(free.unwrap_or_else(|| THREADS.fetch_add(1, SeqCst)))
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        FREE_SLOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.0);
    }
}

thread_local! {
    static CALL_SLOT: CallSlot = CallSlot::new();
}

/// Marks a thread's slot while it is in a call, and clears it however the call ends, waking
/// the looks that wait for it.
struct InCall<'a> {
    slot: &'a AtomicU64,
    order: &'a InputOrder,
}

impl Drop for InCall<'_> {
    fn drop(&mut self) {
        self.slot.store(0, SeqCst);
        self.order.wake_waiters();
    }
}

/// The broker-wide ticket counter and the mark below which every ticket is released.
pub(crate) struct InputOrder {
    next: AtomicU64,
    /// Every ticket below it is released (or was given up on).
    passed: AtomicU64,
    /// Slot `t % SLOTS` holds `t` once ticket `t` is released.
    released: Box<[AtomicU64]>,
    /// Slot `t % SLOTS` holds `t` when ticket `t` was taken by a busy connection, for input
    /// that arrived while it handled earlier input ([`Turn::busy`]).
    busy: Box<[AtomicU64]>,
    /// Slot `t % SLOTS` holds `t` when ticket `t` was taken by a connection whose last input
    /// published and changed no routing ([`Turn::publishing`]).
    publishing: Box<[AtomicU64]>,
    /// Tasks waiting for their turn, woken whenever a ticket is released or a marked call
    /// ends ([`Turn::calling`]). Yielding instead would not do: a worker with nothing else to
    /// run parks until its next event, which at low load is the next message a millisecond
    /// later.
    waiters: Mutex<Vec<Waker>>,
    /// How many wakers `waiters` holds, so a release looks at the lock only when someone
    /// waits.
    waiting: AtomicUsize,
    /// Counts the waits that ended at [`MAX_WAIT`]: operators see how often the order was
    /// given up (`rosetta_mqtt_input_order_timeouts_total`).
    timeouts: IntCounter,
    /// None when the kernel gave no epoll set: the order then rests on wake-ups alone.
    unread: Option<UnreadInput>,
}

#[cfg(test)]
impl Default for InputOrder {
    fn default() -> InputOrder {
        InputOrder::new(IntCounter::new("input_order_timeouts", "test").expect("counter"))
    }
}

impl InputOrder {
    pub(crate) fn new(timeouts: IntCounter) -> InputOrder {
        InputOrder {
            next: AtomicU64::new(1),
            passed: AtomicU64::new(1),
            released: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            busy: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            publishing: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            waiters: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            timeouts,
            unread: match epoll::create(epoll::CreateFlags::CLOEXEC) {
                Ok(epoll) => Some(UnreadInput {
                    epoll,
                    turns: DashMap::new(),
                    ids: AtomicU64::new(1),
                    looks: AtomicU64::new(1),
                    calls: (0..CALL_SLOTS).map(|_| AtomicU64::new(0)).collect(),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "no epoll set for the MQTT input order; it rests on wake-ups alone");
                    None
                }
            },
        }
    }

    /// Gives a firm ticket to every watched connection but `me` whose socket holds unread
    /// input: input that arrived before now, perhaps before the input `me` just read, whose
    /// wake-up the reactor may not have handed out yet. Input that arrived while another
    /// thread was in a call on its socket is not in sight until that call ends, so the look
    /// waits for such calls first ([`Turn::calling`]).
    async fn claim_unread(&self, me: &Turn) {
        let Some(unread) = &self.unread else {
            return;
        };
        let mine = me.id.load(SeqCst);
        if unread.in_call(mine, 0).is_some()
            && tokio::time::timeout(MAX_WAIT, self.calls_ended(unread, mine))
                .await
                .is_err()
        {
            tracing::debug!("a call on a socket took too long; looking without it");
            self.timeouts.inc();
        }
        let look = unread.looks.fetch_add(1, SeqCst) + 1;
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); CLAIM_BATCH];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let Ok((ready, _)) = epoll::wait(&unread.epoll, &mut events, Some(&now)) else {
            return;
        };
        for event in ready.iter() {
            let data = event.data;
            let id = data.u64();
            if id == mine {
                continue;
            }
            let turn = unread.turns.get(&id).and_then(|turn| turn.upgrade());
            if let Some(turn) = turn {
                turn.claim(look);
            }
        }
    }

    /// Waits until every call on a watched socket but `mine` that a thread is in has ended;
    /// calls begun meanwhile do not count, as input that arrived before them is in sight.
    async fn calls_ended(&self, unread: &UnreadInput, mine: u64) {
        let mut from = 0;
        while let Some((i, id)) = unread.in_call(mine, from) {
            let slot = &unread.calls[i];
            poll_fn(|cx| self.ready_once(cx, || slot.load(SeqCst) != id)).await;
            from = i + 1;
        }
    }

    fn take(&self) -> u64 {
        self.next.fetch_add(1, SeqCst)
    }

    /// A ticket for a wake-up of a connection that is `busy` or `publishing`.
    fn take_marked(&self, busy: bool, publishing: bool) -> u64 {
        let t = self.take();
        if busy {
            self.busy[slot(t)].store(t, SeqCst);
        }
        if publishing {
            self.publishing[slot(t)].store(t, SeqCst);
        }
        t
    }

    /// Ticket `t` is neither busy nor a publisher's.
    fn unmark(&self, t: u64) {
        let _ = self.busy[slot(t)].compare_exchange(t, 0, SeqCst, SeqCst);
        let _ = self.publishing[slot(t)].compare_exchange(t, 0, SeqCst, SeqCst);
    }

    /// Ticket `t`'s input no longer holds anyone back. Sequentially consistent throughout: two
    /// releases racing must not each miss the other's slot and leave the mark behind.
    fn release(&self, t: u64) {
        // A ticket SLOTS older that is still out shares the slot; overwriting it only makes
        // that old ticket look unreleased, which MAX_WAIT ends.
        self.released[slot(t)].store(t, SeqCst);
        self.advance();
        self.wake_waiters();
    }

    fn wake_waiters(&self) {
        if self.waiting.load(SeqCst) > 0 {
            let waiters = {
                let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
                self.waiting.store(0, SeqCst);
                std::mem::take(&mut *waiters)
            };
            waiters.into_iter().for_each(Waker::wake);
        }
    }

    fn advance(&self) {
        let mut mark = self.passed.load(SeqCst);
        while self.released[slot(mark)].load(SeqCst) == mark {
            mark = match self.passed.compare_exchange(mark, mark + 1, SeqCst, SeqCst) {
                Ok(_) => mark + 1,
                Err(now) => now,
            };
        }
    }

    /// Whether every ticket before `t` is released.
    #[cfg(test)]
    fn is_turn_of(&self, t: u64) -> bool {
        self.passed.load(SeqCst) >= t
    }

    /// The first ticket from `from` on and before `hi` that holds a waiter back: one not
    /// released, not a publisher's, and not busy from `lo` on. A ticket that stops holding
    /// back never starts again, so a waiter looks again from where it last stopped: however
    /// many tickets are out, it reads each once.
    fn first_holding_back(&self, from: u64, lo: u64, hi: u64) -> Option<u64> {
        let is = |ring: &[AtomicU64], x: u64| ring[slot(x)].load(SeqCst) == x;
        (from.max(self.passed.load(SeqCst))..hi).find(|&x| {
            !(is(&self.released, x) || is(&self.publishing, x) || (x >= lo && is(&self.busy, x)))
        })
    }

    /// Ready once `done` says so; until then the task waits to be woken by the next release
    /// or end of a call, and asks `done` again after registering, since one that came between
    /// the first asking and the registration woke no one.
    fn ready_once(&self, cx: &mut Context<'_>, mut done: impl FnMut() -> bool) -> Poll<()> {
        if done() {
            return Poll::Ready(());
        }
        {
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            waiters.push(cx.waker().clone());
            self.waiting.fetch_add(1, SeqCst);
        }
        if done() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Gives up on the tickets before `t` that are still out.
    fn skip_to(&self, t: u64) {
        self.passed.fetch_max(t, SeqCst);
        self.advance();
        self.wake_waiters();
    }

    /// Waits until no ticket before `hi` holds it back ([`InputOrder::first_holding_back`]),
    /// or [`MAX_WAIT`] has passed; every release wakes the waiters to look again.
    async fn wait_turn(&self, lo: u64, hi: u64) {
        let Some(mut from) = self.first_holding_back(0, lo, hi) else {
            return;
        };
        let turn = poll_fn(|cx| {
            self.ready_once(cx, || match self.first_holding_back(from, lo, hi) {
                Some(t) => {
                    from = t;
                    false
                }
                None => true,
            })
        });
        if tokio::time::timeout(MAX_WAIT, turn).await.is_err() {
            tracing::debug!(
                ticket = hi,
                "input waited too long for earlier input; going ahead"
            );
            self.timeouts.inc();
            self.skip_to(hi);
        }
    }
}

impl UnreadInput {
    /// The first thread from slot `from` on that is in a call on a watched socket other than
    /// `mine`: its slot and the socket's number.
    fn in_call(&self, mine: u64, from: usize) -> Option<(usize, u64)> {
        let threads = THREADS.load(SeqCst).min(CALL_SLOTS);
        (from..threads)
            .map(|i| (i, self.calls[i].load(SeqCst)))
            .find(|&(_, id)| id != 0 && id != mine)
    }
}

fn slot(t: u64) -> usize {
    (t % SLOTS as u64) as usize
}

/// One connection's place in the [`InputOrder`]: the waker its reads are polled with.
pub(crate) struct Turn {
    order: Arc<InputOrder>,
    /// The ticket the last wake-up took, not yet used by a read; 0 for none.
    ticket: AtomicU64,
    /// Whether the task waits on something other than its input (a slow socket's write, a
    /// login delay). A wake-up then takes no ticket: the task could hold it for long, and its
    /// next read takes a fresh one. A task that is merely busy (writing what it just handled)
    /// does take one: it reads again within microseconds.
    elsewhere: AtomicBool,
    /// Whether the session paused reading ([`Turn::set_paused`]).
    paused: AtomicBool,
    /// Whether the task is handling input it read, rather than waiting to read. A ticket it
    /// takes then is busy: input that publishes, read by another connection later, does not
    /// wait for it, so two busy connections never wait for each other's next input.
    busy: AtomicBool,
    /// Whether the connection's last input published and changed no routing: a publisher's
    /// next input is most likely more of the same, so publishing input does not wait for it,
    /// and publishers sending side by side never wait for each other. A connection that
    /// subscribes (or has sent nothing yet) is waited for.
    publishing: AtomicBool,
    task: Mutex<Option<Waker>>,
    /// The number of the socket's entry in [`UnreadInput`]; 0 while it has none.
    id: AtomicU64,
    /// Whether the entry reports input ([`Turn::follow`]).
    watched: AtomicBool,
    /// The look at the [`UnreadInput`] set that was last begun when the connection last read.
    last_read: AtomicU64,
}

impl Turn {
    pub(crate) fn new(order: Arc<InputOrder>) -> Arc<Turn> {
        Arc::new(Turn {
            order,
            ticket: AtomicU64::new(0),
            elsewhere: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            publishing: AtomicBool::new(false),
            task: Mutex::new(None),
            id: AtomicU64::new(0),
            watched: AtomicBool::new(false),
            last_read: AtomicU64::new(0),
        })
    }

    /// Puts the connection's socket in the [`UnreadInput`] set, so that publishing input sees
    /// its unread input. Without it (the kernel refused), the order rests on wake-ups.
    pub(crate) fn watch(self: &Arc<Self>, socket: &TcpStream) {
        let Some(unread) = &self.order.unread else {
            return;
        };
        let id = unread.ids.fetch_add(1, SeqCst);
        unread.turns.insert(id, Arc::downgrade(self));
        let data = epoll::EventData::new_u64(id);
        match epoll::add(&unread.epoll, socket, data, epoll::EventFlags::IN) {
            Ok(()) => {
                self.id.store(id, SeqCst);
                self.watched.store(true, SeqCst);
            }
            Err(e) => {
                unread.turns.remove(&id);
                tracing::debug!(error = %e, "socket not watched for the MQTT input order");
            }
        }
    }

    /// Keeps the socket's entry reporting input only while the connection is one publishers
    /// wait for (not a publisher) and reads (not paused), so a look at the kernel does not go
    /// through the sockets of busy publishers or of connections whose input will not be read
    /// soon. Only the connection's own task calls it: after each read, after the session
    /// pauses or resumes reading, and when a write stops waiting.
    pub(crate) fn follow(&self, socket: &TcpStream) {
        self.report(
            socket,
            !self.publishing.load(SeqCst) && !self.paused.load(SeqCst),
        );
    }

    /// A write of the connection's output waits for its socket (`true`) or is over after
    /// waiting (`false`). While it waits the task reads nothing, so the entry stops reporting:
    /// a client that stops reading its socket and goes on writing to it would otherwise hold
    /// unread input there that every look reports (the set is level-triggered), and could
    /// fill each look with sockets no one is going to read.
    pub(crate) fn write_waits(&self, socket: &TcpStream, waits: bool) {
        if waits {
            self.report(socket, false);
        } else {
            self.follow(socket);
        }
    }

    fn report(&self, socket: &TcpStream, wanted: bool) {
        let id = self.id.load(SeqCst);
        if id == 0 || self.watched.load(SeqCst) == wanted {
            return;
        }
        let Some(unread) = &self.order.unread else {
            return;
        };
        let flags = if wanted {
            epoll::EventFlags::IN
        } else {
            epoll::EventFlags::empty()
        };
        let data = epoll::EventData::new_u64(id);
        if epoll::modify(&unread.epoll, socket, data, flags).is_ok() {
            self.watched.store(wanted, SeqCst);
        }
    }

    /// Makes `call` on the socket visible to looks at the kernel while it runs: input that
    /// arrives meanwhile waits in the socket's backlog, where only the end of the call puts it
    /// in sight. Only while the socket is watched: a publisher's input holds no one back.
    fn calling<R>(&self, call: impl FnOnce() -> R) -> R {
        let Some(unread) = self
            .order
            .unread
            .as_ref()
            .filter(|_| self.watched.load(SeqCst))
        else {
            return call();
        };
        let id = self.id.load(SeqCst);
        let slot = CALL_SLOT.try_with(|i| unread.calls.get(i.0)).ok().flatten();
        let Some(slot) = slot.filter(|_| id != 0) else {
            return call();
        };
        slot.store(id, SeqCst);
        let _marked = InCall {
            slot,
            order: &self.order,
        };
        call()
    }

    /// Look `look` found unread input in the socket: the input gets a firm ticket, unless the
    /// connection is a publisher or waits elsewhere (it will not read soon), or it read since
    /// the look began: it may have read that input already, and a firm ticket would then hold
    /// publishers back until its next input; its next read takes a ticket anyway.
    fn claim(&self, look: u64) {
        if self.publishing.load(SeqCst) || self.elsewhere.load(SeqCst) {
            return;
        }
        loop {
            let held = self.ticket.load(SeqCst);
            if held & FIRM != 0 {
                return;
            }
            let firm = match held {
                0 => self.order.take() | FIRM,
                t => t | FIRM,
            };
            if self
                .ticket
                .compare_exchange(held, firm, SeqCst, SeqCst)
                .is_err()
            {
                if held == 0 {
                    self.order.release(firm & !FIRM);
                }
                continue;
            }
            // The task went elsewhere (it would keep the ticket) or read meanwhile.
            if (self.elsewhere.load(SeqCst) || self.last_read.load(SeqCst) >= look)
                && self
                    .ticket
                    .compare_exchange(firm, 0, SeqCst, SeqCst)
                    .is_ok()
            {
                self.order.release(firm & !FIRM);
            } else if held != 0 {
                // A wake-up's ticket, perhaps taken while the task was busy or last published:
                // the input is a subscriber's and was in the kernel before now, so no
                // publisher reading from now on goes ahead of it.
                self.order.unmark(held);
            }
            return;
        }
    }

    /// The ticket of the input just read (the wake-up's, or a new one when the read found
    /// bytes without waiting), held until dropped or released.
    pub(crate) fn take(&self) -> Ticket<'_> {
        // Before the ticket leaves its place, so that a claim placing one after it sees it.
        if let Some(unread) = &self.order.unread {
            self.last_read.store(unread.looks.load(SeqCst), SeqCst);
        }
        let number = match self.ticket.swap(0, SeqCst) {
            0 => self.order.take(),
            t => t & !FIRM,
        };
        self.busy.store(true, SeqCst);
        Ticket {
            turn: self,
            number,
            horizon: self.order.next.load(SeqCst),
            held: true,
        }
    }

    /// Whether the session paused reading: while it does, wake-ups take no ticket, since the
    /// input they announce will not be read until it resumes.
    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, SeqCst);
        self.elsewhere.store(paused, SeqCst);
        if paused {
            self.give_back();
        }
    }

    /// Gives back the ticket a wake-up took, whose input will not be read soon.
    pub(crate) fn give_back(&self) {
        let t = self.ticket.swap(0, SeqCst) & !FIRM;
        if t != 0 {
            self.order.release(t);
        }
    }

    /// Watches the socket for its next input as soon as a read is done, so input that arrives
    /// while the task handles this read takes its ticket when it arrives, not when the task
    /// comes back to read it (later than input that other connections read meanwhile).
    pub(crate) fn rearm(&self, socket: &TcpStream, waker: &Waker) {
        if socket
            .poll_read_ready(&mut Context::from_waker(waker))
            .is_ready()
            && self.ticket.load(SeqCst) == 0
        {
            // Input is waiting already (the read filled the buffer): it arrived before
            // anything read from now on.
            let t = self.order.take_marked(true, self.publishing.load(SeqCst));
            if self.ticket.compare_exchange(0, t, SeqCst, SeqCst).is_err() {
                self.order.release(t);
            }
        }
    }

    /// The connection stops reading for good: it holds no ticket and takes none, and its
    /// socket leaves the [`UnreadInput`] set.
    pub(crate) fn leave(&self, socket: &TcpStream) {
        self.elsewhere.store(true, SeqCst);
        self.give_back();
        let id = self.id.swap(0, SeqCst);
        if let (Some(unread), true) = (&self.order.unread, id != 0) {
            let _ = epoll::delete(&unread.epoll, socket);
            unread.turns.remove(&id);
        }
    }

    /// Runs `work`; if it has to wait (a write to a socket that is full, a sleep), the turn
    /// gives its ticket back and takes none until `work` is done. Each poll of `work` counts as
    /// a call on the socket ([`Turn::calling`]): it is where the connection writes.
    pub(crate) async fn elsewhere<F: Future>(turn: Option<&Turn>, work: F) -> F::Output {
        let Some(turn) = turn else {
            return work.await;
        };
        let mut work = pin!(work);
        let mut work = poll_fn(|cx| turn.calling(|| work.as_mut().poll(cx)));
        if let Poll::Ready(out) = poll_fn(|cx| Poll::Ready(Pin::new(&mut work).poll(cx))).await {
            return out;
        }
        let paused = turn.elsewhere.swap(true, SeqCst);
        turn.give_back();
        let out = work.await;
        turn.elsewhere.store(paused, SeqCst);
        out
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let t = *self.ticket.get_mut() & !FIRM;
        if t != 0 {
            self.order.release(t);
        }
        // Left without [`Turn::leave`]: the entry goes when the socket is closed.
        let id = *self.id.get_mut();
        if let (Some(unread), true) = (&self.order.unread, id != 0) {
            unread.turns.remove(&id);
        }
    }
}

impl Wake for Turn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.elsewhere.load(SeqCst) && self.ticket.load(SeqCst) == 0 {
            let t = self
                .order
                .take_marked(self.busy.load(SeqCst), self.publishing.load(SeqCst));
            if self.ticket.compare_exchange(0, t, SeqCst, SeqCst).is_err() {
                self.order.release(t);
            } else if self.elsewhere.load(SeqCst)
                && self.ticket.compare_exchange(t, 0, SeqCst, SeqCst).is_ok()
            {
                // The task went elsewhere as the ticket was taken: it would keep it.
                self.order.release(t);
            }
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

/// A ticket taken for input just read; released once, at the latest when dropped (so a panic
/// while handling the input holds no one back).
pub(crate) struct Ticket<'a> {
    turn: &'a Turn,
    number: u64,
    /// Every ticket taken before the input was read is below it.
    horizon: u64,
    held: bool,
}

impl Ticket<'_> {
    pub(crate) fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            self.turn.order.release(self.number);
        }
    }

    /// What the input does, which tells what the connection's next input most likely does
    /// ([`Turn::publishing`]).
    pub(crate) fn note(&self, publishes: bool, changes_routing: bool) {
        self.turn
            .publishing
            .store(publishes && !changes_routing, SeqCst);
    }

    /// Waits until the input that must take effect first has. Once the ticket is released
    /// (the input only publishes): every ticket taken before the input was read, and the
    /// tickets of connections woken since, since the reactor's order of wake-ups is not quite
    /// the order of arrival (a socket already reported for write readiness keeps its earlier
    /// place when data arrives), so input woken just after this one was read may have arrived
    /// first; but not busy tickets taken since, nor publishers' tickets. While it is held (the
    /// input also changes routing): every earlier ticket but busy and publishers' ones. A
    /// connection waits only for busy tickets taken before its own read, and busy ones are
    /// taken after their own connection's read, so no two connections wait for each other.
    pub(crate) async fn wait_turn(&self) {
        let order = &self.turn.order;
        if self.held {
            order.wait_turn(0, self.number).await;
        } else {
            order.claim_unread(self.turn).await;
            order.wait_turn(self.horizon, order.next.load(SeqCst)).await;
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Reads what `stream` has into `input`, polling the read with `turn` as its waker when the
/// connection has one: the reactor then wakes the turn, which takes a ticket and wakes the
/// task. The read is made afresh at each poll (reads are cancel-safe), so that between polls
/// the socket can be asked whether it still holds input.
pub(crate) async fn listen<T: Transport>(
    turn: Option<(&Turn, &Waker)>,
    stream: &mut T,
    input: &mut BytesMut,
) -> io::Result<usize> {
    let Some((turn, waker)) = turn else {
        return stream.read_some(input).await;
    };
    poll_fn(|cx| {
        turn.busy.store(false, SeqCst);
        {
            let mut task = turn.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        // Input read from here on is neither in the kernel nor under a ticket until the read
        // returns: a connection publishers wait for takes its ticket first, when the read may
        // take bytes from the socket (the runtime has seen it readable; a poll for other work,
        // a delivery to write, reads nothing then).
        let mut held = turn.ticket.load(SeqCst);
        if held == 0
            && !turn.publishing.load(SeqCst)
            && !turn.elsewhere.load(SeqCst)
            && stream
                .socket()
                .poll_read_ready(&mut Context::from_waker(waker))
                .is_ready()
        {
            let t = turn.order.take();
            match turn.ticket.compare_exchange(0, t, SeqCst, SeqCst) {
                Ok(_) => held = t,
                Err(now) => {
                    turn.order.release(t);
                    held = now;
                }
            }
        }
        let (read, empty) = turn.calling(|| {
            let read = pin!(stream.read_some(input)).poll(&mut Context::from_waker(waker));
            // Nothing was read: the ticket goes back (it was taken for the read, or by a
            // wake-up for something that was not input, write readiness say), unless a
            // wake-up took it while the read was being polled, or it is firm and the socket
            // still holds input (the reactor has not reported it yet). A firm ticket whose
            // input a TLS or WebSocket layer took without yielding any (part of a record, a
            // control frame) goes back too.
            let empty = read.is_pending() && held & FIRM != 0 && !holds_input(stream.socket());
            (read, empty)
        });
        if read.is_pending()
            && held != 0
            && (held & FIRM == 0 || empty)
            && turn
                .ticket
                .compare_exchange(held, 0, SeqCst, SeqCst)
                .is_ok()
        {
            turn.order.release(held & !FIRM);
        }
        read
    })
    .await
}

/// Whether the kernel holds bytes of `socket` not read yet (a peek that does not wait).
fn holds_input(socket: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
    matches!(recv(socket, &mut byte, flags), Ok((_, n)) if n > 0)
}
