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

/// Writes all of `out` and flushes it. Fails with `TimedOut` once the stream has taken none of
/// it for `limit` (`None`: waits for ever). The clock starts only when the stream first makes
/// the write wait, so output the socket takes at once, the usual case, arms no timer.
pub(crate) fn send_all<'a, W: AsyncWrite + Unpin>(
    stream: &'a mut W,
    out: &'a [u8],
    limit: Option<Duration>,
) -> SendAll<'a, W> {
    SendAll {
        stream,
        out,
        limit,
        written: 0,
        stall: None,
        progressed: false,
    }
}

/// The future of [`send_all`]; a plain state machine, as it runs for every write.
pub(crate) struct SendAll<'a, W> {
    stream: &'a mut W,
    out: &'a [u8],
    limit: Option<Duration>,
    written: usize,
    /// Made on the first wait and moved on after each write that made progress.
    stall: Option<Pin<Box<Sleep>>>,
    progressed: bool,
}

impl<W: AsyncWrite + Unpin> Future for SendAll<'_, W> {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            let step = if this.written < this.out.len() {
                Pin::new(&mut *this.stream).poll_write(cx, &this.out[this.written..])
            } else {
                Pin::new(&mut *this.stream).poll_flush(cx).map_ok(|()| 0)
            };
            match step {
                Poll::Ready(Ok(0)) if this.written < this.out.len() => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(n)) => {
                    this.written += n;
                    this.progressed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return this.wait(cx),
            }
        }
    }
}

impl<W> SendAll<'_, W> {
    /// The stream made the write wait: times the stall, from now if the last attempt moved.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(limit) = self.limit else {
            return Poll::Pending;
        };
        let timer = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if std::mem::take(&mut self.progressed) {
            timer.as_mut().reset(Instant::now() + limit);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes `accept` bytes and then waits for ever.
    struct Stuck {
        accept: usize,
        taken: usize,
    }

    impl AsyncWrite for Stuck {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = data.len().min(self.accept - self.taken);
            if n == 0 {
                return Poll::Pending;
            }
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

    #[tokio::test]
    async fn output_the_stream_takes_is_written_whole() {
        let mut w = Stuck {
            accept: 10,
            taken: 0,
        };
        send_all(&mut w, b"0123456789", Some(Duration::from_secs(1)))
            .await
            .expect("written");
        assert_eq!(w.taken, 10);
    }

    #[tokio::test]
    async fn a_stream_that_takes_nothing_more_times_out_after_the_limit() {
        let mut w = Stuck {
            accept: 4,
            taken: 0,
        };
        let started = Instant::now();
        let err = send_all(&mut w, b"0123456789", Some(Duration::from_millis(100)))
            .await
            .expect_err("stalled");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(w.taken, 4);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn without_a_limit_a_stalled_write_keeps_waiting() {
        let mut w = Stuck {
            accept: 4,
            taken: 0,
        };
        let waited = tokio::time::timeout(
            Duration::from_millis(300),
            send_all(&mut w, b"0123456789", None),
        )
        .await;
        assert!(waited.is_err(), "the write should still be waiting");
    }
}
