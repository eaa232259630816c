use std::sync::Arc;
use std::task::Wake;
use std::time::Instant;

use super::*;
use crate::connection::send::send_all;

#[test]
fn the_mark_passes_a_ticket_only_once_every_earlier_one_is_released() {
    let order = InputOrder::default();
    let (a, b, c) = (order.take(), order.take(), order.take());
    assert!(order.is_turn_of(a));
    assert!(!order.is_turn_of(b));
    order.release(c);
    order.release(b);
    assert!(!order.is_turn_of(c), "a is still out");
    order.release(a);
    assert!(order.is_turn_of(c));
    assert!(order.is_turn_of(order.take()));
}

#[test]
fn releases_racing_on_two_threads_never_leave_the_mark_behind() {
    let order = Arc::new(InputOrder::default());
    for _ in 0..200 {
        let tickets: Vec<u64> = (0..64).map(|_| order.take()).collect();
        let (even, odd): (Vec<u64>, Vec<u64>) = tickets.iter().partition(|t| *t % 2 == 0);
        let other = {
            let order = order.clone();
            std::thread::spawn(move || odd.into_iter().rev().for_each(|t| order.release(t)))
        };
        even.into_iter().for_each(|t| order.release(t));
        other.join().expect("thread");
        let last = *tickets.last().expect("tickets");
        assert!(order.is_turn_of(last + 1), "every ticket was released");
    }
}

#[tokio::test]
async fn a_ticket_never_released_holds_others_back_for_max_wait_only() {
    let order = InputOrder::default();
    let lost = order.take();
    let later = order.take();
    let started = Instant::now();
    order.wait_turn(later, later).await;
    assert!(started.elapsed() >= MAX_WAIT);
    assert_eq!(order.timeouts.get(), 1, "the timeout is counted");
    assert!(order.is_turn_of(later), "the lost ticket was given up on");
    order.release(later);
    // Released late, it does not disturb the order of newer tickets.
    order.release(lost);
    let (x, y) = (order.take(), order.take());
    assert!(!order.is_turn_of(y));
    order.release(x);
    assert!(order.is_turn_of(y));
}

#[test]
fn a_wake_up_takes_a_ticket_unless_the_task_waits_elsewhere() {
    let order = Arc::new(InputOrder::default());
    let turn = Turn::new(order.clone());
    // Reading paused: the wake-up takes nothing, so it holds no one back.
    turn.set_paused(true);
    turn.wake_by_ref();
    let other = order.take();
    assert!(order.is_turn_of(other));
    order.release(other);
    // Otherwise the wake-up's ticket comes before input read by others later...
    turn.set_paused(false);
    turn.wake_by_ref();
    let later = order.take();
    assert!(!order.is_turn_of(later));
    let ticket = turn.take();
    assert!(ticket.number < later);
    // ...until the input it announced is handled.
    drop(ticket);
    assert!(order.is_turn_of(later));
    order.release(later);
    // A wake-up that announced no input gives its ticket back.
    turn.wake_by_ref();
    let after = order.take();
    assert!(!order.is_turn_of(after));
    turn.give_back();
    assert!(order.is_turn_of(after));
    order.release(after);
    // A second wake-up before the read keeps the first, earlier ticket.
    turn.wake_by_ref();
    let between = order.take();
    turn.wake_by_ref();
    let ticket = turn.take();
    assert!(ticket.number < between);
}

#[tokio::test]
async fn work_that_has_to_wait_gives_the_ticket_back_and_takes_none_meanwhile() {
    let order = Arc::new(InputOrder::default());
    let turn = Turn::new(order.clone());
    turn.wake_by_ref();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let work = Turn::elsewhere(Some(&turn), rx);
    let check = async {
        tokio::task::yield_now().await;
        let other = order.take();
        assert!(
            order.is_turn_of(other),
            "the waiting task's ticket was given back"
        );
        order.release(other);
        turn.wake_by_ref();
        let next = order.take();
        assert!(
            order.is_turn_of(next),
            "a wake-up while it waits takes none"
        );
        order.release(next);
        tx.send(()).expect("send");
    };
    let (done, ()) = tokio::join!(work, check);
    done.expect("received");
    // Back from waiting, wake-ups take tickets again.
    turn.wake_by_ref();
    let later = order.take();
    assert!(!order.is_turn_of(later));
}

#[tokio::test]
async fn publishing_input_never_waits_for_input_of_its_own_connection_that_came_after_it() {
    let order = Arc::new(InputOrder::default());
    let turn = Turn::new(order.clone());
    turn.wake_by_ref();
    let mut ticket = turn.take();
    // More input arrives while this is handled (the read filled the buffer, or the client
    // sent more at once): the connection takes a ticket for it, which only its next read
    // gives back.
    turn.wake_by_ref();
    ticket.release();
    tokio::time::timeout(MAX_WAIT / 10, ticket.wait_turn())
        .await
        .expect("the wait ends at once, long before MAX_WAIT");
    // Other connections' publishing input read from now on does wait for it.
    let other = Turn::new(order.clone());
    let mut theirs = other.take();
    theirs.release();
    assert!(
        tokio::time::timeout(MAX_WAIT / 10, theirs.wait_turn())
            .await
            .is_err(),
        "input that arrived before theirs was read holds them back"
    );
}

#[tokio::test]
async fn two_busy_connections_never_wait_for_each_others_next_input() {
    let order = Arc::new(InputOrder::default());
    let (p, q) = (Turn::new(order.clone()), Turn::new(order.clone()));
    // Both read publishing input, and more arrives for each while they handle it.
    let mut theirs = p.take();
    let mut ours = q.take();
    p.wake_by_ref();
    q.wake_by_ref();
    theirs.release();
    ours.release();
    let both = async {
        tokio::join!(theirs.wait_turn(), ours.wait_turn());
    };
    tokio::time::timeout(MAX_WAIT / 10, both)
        .await
        .expect("neither waits for the other's next input");
    assert_eq!(order.timeouts.get(), 0);
}

#[tokio::test]
async fn publishing_input_waits_for_a_connection_woken_just_after_it_was_read() {
    let order = Arc::new(InputOrder::default());
    let (publisher, subscriber) = (Turn::new(order.clone()), Turn::new(order.clone()));
    let mut published = publisher.take();
    published.release();
    // The reactor wakes the idle subscriber only now, though its input may have come first.
    subscriber.wake_by_ref();
    ends_once_read(&published, &subscriber).await;
    // Without the subscriber's read, it would not have ended.
    let other = Turn::new(order.clone());
    let mut later = publisher.take();
    later.release();
    other.wake_by_ref();
    assert!(tokio::time::timeout(MAX_WAIT / 10, later.wait_turn())
        .await
        .is_err());
}

#[tokio::test]
async fn publishers_do_not_wait_for_each_others_input_but_do_for_a_subscribers() {
    let order = Arc::new(InputOrder::default());
    let (publisher, subscriber) = (Turn::new(order.clone()), Turn::new(order.clone()));
    let first = publisher.take();
    first.note(true, false);
    drop(first);
    let subscribed = subscriber.take();
    subscribed.note(false, true);
    drop(subscribed);
    // Both wait to read again and are woken for more input; another publisher reads its own
    // after that.
    publisher.busy.store(false, SeqCst);
    subscriber.busy.store(false, SeqCst);
    publisher.wake_by_ref();
    let other = Turn::new(order.clone());
    let mut published = other.take();
    published.release();
    assert!(
        tokio::time::timeout(MAX_WAIT / 10, published.wait_turn())
            .await
            .is_ok(),
        "a publisher's next input is not waited for"
    );
    subscriber.wake_by_ref();
    let mut again = other.take();
    again.release();
    assert!(
        tokio::time::timeout(MAX_WAIT / 10, again.wait_turn())
            .await
            .is_err(),
        "a subscriber's is"
    );
}

/// A connected pair of sockets: the broker's side and the client's.
async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("address"))
        .await
        .expect("connect");
    let (ours, _) = listener.accept().await.expect("accept");
    (ours, client)
}

/// Waits until the kernel holds `socket`'s input, without reading it.
async fn until_readable(socket: &TcpStream) {
    tokio::time::timeout(MAX_WAIT, socket.readable())
        .await
        .expect("the input arrives")
        .expect("readable");
}

/// Asserts that `ticket`'s wait ends once `subscriber` reads and handles its input.
async fn ends_once_read(ticket: &Ticket<'_>, subscriber: &Turn) {
    let subscribed = async {
        tokio::task::yield_now().await;
        drop(subscriber.take());
    };
    tokio::time::timeout(MAX_WAIT / 2, async {
        tokio::join!(ticket.wait_turn(), subscribed)
    })
    .await
    .expect("the wait ends once the subscriber's input is read and handled");
}

/// Whether `ticket`'s input still waits a while from now.
async fn held_back(ticket: &Ticket<'_>) -> bool {
    tokio::time::timeout(MAX_WAIT / 10, ticket.wait_turn())
        .await
        .is_err()
}

/// A subscriber whose client sent `input`, which the kernel holds unread (no wake-up reached
/// the subscriber's turn), and a publisher: the order, the publisher's turn, the subscriber's,
/// the subscriber's socket and its client's, kept open (a closed one would be readable).
async fn unread_input_of_a_subscriber(
    input: &[u8],
) -> (Arc<InputOrder>, Arc<Turn>, Arc<Turn>, TcpStream, TcpStream) {
    use tokio::io::AsyncWriteExt;
    let order = Arc::new(InputOrder::default());
    let (publisher, subscriber) = (Turn::new(order.clone()), Turn::new(order.clone()));
    let (ours, mut client) = socket_pair().await;
    subscriber.watch(&ours);
    client.write_all(input).await.expect("write");
    until_readable(&ours).await;
    (order, publisher, subscriber, ours, client)
}

#[tokio::test]
async fn publishing_input_waits_for_a_subscribers_input_the_reactor_has_not_reported() {
    let (order, publisher, subscriber, ours, _client) =
        unread_input_of_a_subscriber(b"subscribe").await;
    let mut published = publisher.take();
    published.note(true, false);
    published.release();
    assert!(
        held_back(&published).await,
        "input still in the kernel holds publishing input back"
    );
    // A read that finds nothing (the reactor has not reported the input yet) keeps the ticket.
    let waker = Waker::from(subscriber.clone());
    let mut unreported = Unreported(ours);
    let mut input = BytesMut::new();
    let nothing = listen(Some((&subscriber, &waker)), &mut unreported, &mut input);
    assert!(tokio::time::timeout(MAX_WAIT / 10, nothing).await.is_err());
    ends_once_read(&published, &subscriber).await;
    assert_eq!(order.timeouts.get(), 0);
}

#[tokio::test]
async fn a_publishers_unread_input_holds_no_other_publisher_back() {
    use tokio::io::AsyncWriteExt;
    let order = Arc::new(InputOrder::default());
    let (streaming, other) = (Turn::new(order.clone()), Turn::new(order.clone()));
    let (ours, mut client) = socket_pair().await;
    streaming.watch(&ours);
    let first = streaming.take();
    first.note(true, false);
    drop(first);
    streaming.follow(&ours);
    client.write_all(b"more publishes").await.expect("write");
    until_readable(&ours).await;
    let mut published = other.take();
    published.note(true, false);
    published.release();
    assert!(
        !held_back(&published).await,
        "a publisher's next input is not waited for"
    );
    // Once it subscribes, its unread input is.
    let subscribed = streaming.take();
    subscribed.note(false, true);
    drop(subscribed);
    streaming.follow(&ours);
    let mut again = other.take();
    again.release();
    assert!(held_back(&again).await);
    streaming.leave(&ours);
}

#[tokio::test]
async fn a_firm_ticket_goes_back_when_the_socket_holds_no_input() {
    let (order, publisher, subscriber, ours, _client) =
        unread_input_of_a_subscriber(b"part of a record").await;
    let mut published = publisher.take();
    published.note(true, false);
    published.release();
    assert!(held_back(&published).await);
    // A TLS or WebSocket layer reads the bytes and yields no input: the firm ticket, whose
    // input is gone from the kernel, holds no one back.
    let mut buffer = vec![0u8; 64];
    ours.try_read(&mut buffer).expect("the bytes are there");
    let waker = Waker::from(subscriber.clone());
    let mut unreported = Unreported(ours);
    let mut input = BytesMut::new();
    let nothing = listen(Some((&subscriber, &waker)), &mut unreported, &mut input);
    assert!(tokio::time::timeout(MAX_WAIT / 10, nothing).await.is_err());
    assert!(!held_back(&published).await, "no ticket is left out");
    assert_eq!(order.timeouts.get(), 0);
}

#[tokio::test]
async fn publishing_input_waits_for_a_call_on_a_subscribers_socket_to_end() {
    use tokio::io::AsyncWriteExt;
    let order = Arc::new(InputOrder::default());
    let (publisher, subscriber) = (Turn::new(order.clone()), Turn::new(order.clone()));
    let (ours, mut client) = socket_pair().await;
    subscriber.watch(&ours);
    // Another thread is in a call on the subscriber's socket (a write, say) until told.
    let (entered, in_call) = std::sync::mpsc::channel();
    let (end, ending) = std::sync::mpsc::channel::<()>();
    let call = {
        let subscriber = subscriber.clone();
        std::thread::spawn(move || {
            subscriber.calling(|| {
                entered.send(()).expect("send");
                ending.recv().expect("told to end");
            })
        })
    };
    in_call.recv().expect("the call began");
    let mut published = publisher.take();
    published.note(true, false);
    published.release();
    assert!(
        held_back(&published).await,
        "input the call may hide holds publishing input back"
    );
    // Input that arrived during the call (the kernel kept it in the socket's backlog) is in
    // sight once the call ends, and is waited for until it is read.
    client.write_all(b"subscribe").await.expect("write");
    until_readable(&ours).await;
    end.send(()).expect("send");
    call.join().expect("the call ended");
    assert!(
        held_back(&published).await,
        "the subscriber's input holds it back"
    );
    ends_once_read(&published, &subscriber).await;
    let mut buffer = vec![0u8; 64];
    ours.try_read(&mut buffer).expect("the input is there");
    // A call that panics does not leave the socket looking busy.
    let panicked = {
        let subscriber = subscriber.clone();
        std::thread::spawn(move || subscriber.calling(|| panic!("a bug in a read")))
    };
    assert!(panicked.join().is_err());
    let mut again = publisher.take();
    again.release();
    assert!(!held_back(&again).await);
    assert_eq!(order.timeouts.get(), 0);
}

#[tokio::test]
async fn a_look_waits_for_every_call_it_found_and_for_none_begun_since() {
    let order = Arc::new(InputOrder::default());
    let publisher = Turn::new(order.clone());
    let calls = &order.unread.as_ref().expect("an epoll set").calls;
    THREADS.fetch_max(2, SeqCst);
    // Two threads are in calls on two subscribers' sockets, numbered 7 and 8.
    calls[0].store(7, SeqCst);
    calls[1].store(8, SeqCst);
    let mut published = publisher.take();
    published.note(true, false);
    published.release();
    let mut wait = pin!(published.wait_turn());
    assert!(still_waits(&mut wait).await, "both calls hold it back");
    // The first thread ends its call and begins one on socket 9: that call does not count,
    // but the second thread's does.
    calls[0].store(9, SeqCst);
    order.wake_waiters();
    assert!(
        still_waits(&mut wait).await,
        "the second call still holds it back"
    );
    calls[1].store(0, SeqCst);
    order.wake_waiters();
    assert!(
        !still_waits(&mut wait).await,
        "every call it found has ended"
    );
    calls[0].store(0, SeqCst);
    assert_eq!(order.timeouts.get(), 0);
}

/// How many sockets a look at the order's set would report now.
fn reported(order: &InputOrder) -> usize {
    let unread = order.unread.as_ref().expect("the kernel gave an epoll set");
    let mut events = [MaybeUninit::<epoll::Event>::uninit(); CLAIM_BATCH];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let (ready, _) = epoll::wait(&unread.epoll, &mut events, Some(&now)).expect("epoll_wait");
    ready.len()
}

#[tokio::test]
async fn a_connection_that_waits_to_write_or_is_paused_is_left_out_of_looks() {
    use tokio::io::AsyncReadExt;
    let (order, _publisher, subscriber, mut ours, mut client) =
        unread_input_of_a_subscriber(b"PINGREQ").await;
    assert_eq!(reported(&order), 1, "unread input is in sight");
    // The client stops reading: the output waits for its socket, and meanwhile the input it
    // keeps sending would be reported to every look, though no one reads it.
    let out = vec![0u8; 64 << 20];
    let turn = subscriber.clone();
    let mut write = Box::pin(send_all(
        &mut ours,
        &out,
        None,
        move |socket: &TcpStream, waits| turn.write_waits(socket, waits),
    ));
    assert!(still_waits(&mut write).await, "the client reads nothing");
    assert_eq!(
        reported(&order),
        0,
        "a waiting write takes its socket out of looks"
    );
    // Once the client reads again and the write is done, the input is in sight again.
    let drain = async {
        let mut sink = vec![0u8; 1 << 20];
        let mut left = out.len();
        while left > 0 {
            left -= client.read(&mut sink).await.expect("read");
        }
    };
    let (written, ()) = tokio::join!(write, drain);
    written.expect("written");
    assert_eq!(reported(&order), 1, "the input is in sight again");
    // Reading paused by the session: the same.
    subscriber.set_paused(true);
    subscriber.follow(&ours);
    assert_eq!(reported(&order), 0);
    subscriber.set_paused(false);
    subscriber.follow(&ours);
    assert_eq!(reported(&order), 1);
    subscriber.leave(&ours);
}

/// Whether `wait` is still pending a while from now; it stays as it is for the next look.
async fn still_waits<F: Future + Unpin>(wait: &mut F) -> bool {
    tokio::time::timeout(MAX_WAIT / 10, wait).await.is_err()
}

/// A transport whose reads find nothing, whatever its socket holds: a read polled before the
/// reactor reported the input, or a TLS or WebSocket layer that took bytes without yielding
/// input.
struct Unreported(TcpStream);

impl Transport for Unreported {
    const NAME: &'static str = "test";

    async fn read_some(&mut self, _: &mut BytesMut) -> io::Result<usize> {
        std::future::pending().await
    }

    fn socket(&self) -> &TcpStream {
        &self.0
    }
}

impl crate::connection::SocketProgress for Unreported {}

impl tokio::io::AsyncRead for Unreported {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

impl tokio::io::AsyncWrite for Unreported {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
        out: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(out.len()))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
