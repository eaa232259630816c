//! Writing a connection's output with a limit on how long the socket may refuse it, as
//! RabbitMQ's `send_timeout`: a client that stops reading its socket would otherwise hold its
//! connection, and every message it has not acknowledged, for good, since the driver waits on
//! the write and looks at no heartbeat meanwhile.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

/// How many bytes the socket under a stream has taken, for streams that take a write into a
/// buffer of their own and hand it to the socket while flushing (WebSocket messages): progress
/// the write alone does not show. Streams that write through keep the default.
pub(crate) trait SocketProgress {
    fn socket_bytes(&self) -> u64 {
        0
    }
}

/// Writes all of `out` and flushes it. Fails with `TimedOut` once the socket has taken none of
/// it for `limit` (`None`: waits for ever). The clock starts only when the stream first makes
/// the write wait, so output the socket takes at once, the usual case, arms no timer.
/// `on_wait` hears, with the stream, when the write first waits (`true`) and when it ends after
/// waiting (`false`): the stream is borrowed by the write meanwhile.
pub(crate) fn send_all<'a, W, F>(
    stream: &'a mut W,
    out: &'a [u8],
    limit: Option<Duration>,
    on_wait: F,
) -> SendAll<'a, W, F>
where
    W: AsyncWrite + SocketProgress + Unpin,
    F: FnMut(&W, bool) + Unpin,
{
    SendAll {
        stream,
        out,
        limit,
        written: 0,
        stall: None,
        timed_at: 0,
        on_wait,
        waited: false,
    }
}

/// The future of [`send_all`]; a plain state machine, as it runs for every write.
pub(crate) struct SendAll<'a, W, F> {
    stream: &'a mut W,
    out: &'a [u8],
    limit: Option<Duration>,
    written: usize,
    /// Made on the first wait and moved on after each wait that follows progress.
    stall: Option<Pin<Box<Sleep>>>,
    /// How far the write had got (its own bytes plus the socket's) when the stall was last
    /// timed.
    timed_at: u64,
    on_wait: F,
    waited: bool,
}

impl<W, F> Future for SendAll<'_, W, F>
where
    W: AsyncWrite + SocketProgress + Unpin,
    F: FnMut(&W, bool) + Unpin,
{
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let done = this.write(cx);
        if done.is_pending() != this.waited {
            this.waited = done.is_pending();
            (this.on_wait)(this.stream, this.waited);
        }
        done
    }
}

impl<W: AsyncWrite + SocketProgress + Unpin, F> SendAll<'_, W, F> {
    fn write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let step = if self.written < self.out.len() {
                Pin::new(&mut *self.stream).poll_write(cx, &self.out[self.written..])
            } else {
                Pin::new(&mut *self.stream).poll_flush(cx).map_ok(|()| 0)
            };
            match step {
                Poll::Ready(Ok(0)) if self.written < self.out.len() => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.wait(cx),
            }
        }
    }

    /// The stream made the write wait: times the stall, from now if anything moved since it
    /// was last timed.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(limit) = self.limit else {
            return Poll::Pending;
        };
        let reached = self.written as u64 + self.stream.socket_bytes();
        let moved = std::mem::replace(&mut self.timed_at, reached) != reached;
        let timer = match &mut self.stall {
            Some(timer) => {
                if moved {
                    timer.as_mut().reset(Instant::now() + limit);
                }
                timer
            }
            None => self.stall.insert(Box::pin(tokio::time::sleep(limit))),
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures_util::task::AtomicWaker;

    use super::*;

    /// A socket that takes what it is allowed: `allowed` grows from outside, waking it.
    #[derive(Clone, Default)]
    struct Allowance {
        bytes: Arc<AtomicUsize>,
        waker: Arc<AtomicWaker>,
    }

    impl Allowance {
        fn grant(&self, n: usize) {
            self.bytes.fetch_add(n, Ordering::SeqCst);
            self.waker.wake();
        }

        /// Grants `n` bytes every `every`, `times` times, from a task of its own.
        fn trickle(&self, n: usize, every: Duration, times: usize) {
            let allowance = self.clone();
            tokio::spawn(async move {
                for _ in 0..times {
                    tokio::time::sleep(every).await;
                    allowance.grant(n);
                }
            });
        }

        /// Up to `want` of the bytes granted beyond `taken`; pending (woken by a grant) if none.
        fn take(&self, cx: &mut Context<'_>, taken: usize, want: usize) -> Poll<usize> {
            self.waker.register(cx.waker());
            let n = want.min(self.bytes.load(Ordering::SeqCst) - taken);
            if n == 0 {
                return Poll::Pending;
            }
            Poll::Ready(n)
        }
    }

    /// Writes through to a socket with an allowance, as TCP does.
    struct Socket {
        allowance: Allowance,
        taken: usize,
    }

    impl SocketProgress for Socket {}

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let Poll::Ready(n) = self.allowance.take(cx, self.taken, data.len()) else {
                return Poll::Pending;
            };
            self.taken += n;
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Takes every write whole into a buffer of its own and hands it to a socket with an
    /// allowance while flushing, as the WebSocket stream does.
    struct Buffering {
        allowance: Allowance,
        buffered: usize,
        sent: usize,
    }

    impl SocketProgress for Buffering {
        fn socket_bytes(&self) -> u64 {
            self.sent as u64
        }
    }

    impl AsyncWrite for Buffering {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.buffered += data.len();
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            while self.sent < self.buffered {
                let want = self.buffered - self.sent;
                let Poll::Ready(n) = self.allowance.take(cx, self.sent, want) else {
                    return Poll::Pending;
                };
                self.sent += n;
            }
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    const LIMIT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn output_the_socket_takes_at_once_is_written_whole() {
        let allowance = Allowance::default();
        allowance.grant(10);
        let mut socket = Socket {
            allowance,
            taken: 0,
        };
        send_all(&mut socket, b"0123456789", Some(LIMIT), |_, _| {})
            .await
            .expect("written");
        assert_eq!(socket.taken, 10);
    }

    #[tokio::test]
    async fn a_socket_that_takes_nothing_more_times_out_after_the_limit() {
        let allowance = Allowance::default();
        allowance.grant(4);
        let mut socket = Socket {
            allowance,
            taken: 0,
        };
        let started = Instant::now();
        let err = send_all(&mut socket, b"0123456789", Some(LIMIT), |_, _| {})
            .await
            .expect_err("stalled");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(socket.taken, 4);
        assert!(started.elapsed() >= LIMIT);
    }

    /// Sends ten bytes to `stream`, whose socket takes two every half limit: the whole write
    /// takes two and a half limits, and no wait is longer than half of one.
    async fn send_through_a_trickle<W: AsyncWrite + SocketProgress + Unpin>(
        make: impl FnOnce(Allowance) -> W,
    ) -> W {
        let allowance = Allowance::default();
        allowance.trickle(2, LIMIT / 2, 5);
        let mut stream = make(allowance);
        let started = Instant::now();
        let mut told = Vec::new();
        send_all(&mut stream, b"0123456789", Some(LIMIT), |_, waits| {
            told.push(waits)
        })
        .await
        .expect("written");
        assert!(started.elapsed() > LIMIT * 2);
        assert_eq!(
            told,
            [true, false],
            "told once that it waits, once that it is done"
        );
        stream
    }

    #[tokio::test]
    async fn a_socket_that_keeps_taking_a_little_is_written_to_the_end_past_the_limit() {
        let socket = send_through_a_trickle(|allowance| Socket {
            allowance,
            taken: 0,
        })
        .await;
        assert_eq!(socket.taken, 10);
    }

    #[tokio::test]
    async fn progress_while_flushing_a_buffering_stream_keeps_the_write_alive() {
        let stream = send_through_a_trickle(|allowance| Buffering {
            allowance,
            buffered: 0,
            sent: 0,
        })
        .await;
        assert_eq!(stream.sent, 10);
    }

    #[tokio::test]
    async fn without_a_limit_a_stalled_write_keeps_waiting() {
        let allowance = Allowance::default();
        allowance.grant(4);
        let mut socket = Socket {
            allowance,
            taken: 0,
        };
        let waited = tokio::time::timeout(
            LIMIT * 3,
            send_all(&mut socket, b"0123456789", None, |_, _| {}),
        )
        .await;
        assert!(waited.is_err(), "the write should still be waiting");
    }
}
