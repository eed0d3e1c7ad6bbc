//! Serving connections with the limits `axum::serve` does not offer: a
//! header-read timeout (slowloris), an idle timeout, and a cap on open
//! connections. Graceful shutdown as `axum::serve` does it: stop accepting,
//! let every request being answered finish, close idle connections.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The largest read buffer of a connection; request heads must fit in it.
const READ_BUFFER: usize = 64 * 1024;

/// Bytes a connection reads before its task yields to the others.
const READ_SHARE: usize = 256 * 1024;

/// The limits on each connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// How long a request's headers may take to arrive, counted from when
    /// the connection opens or its previous answer ends; `None`: no limit.
    pub header_read_timeout: Option<Duration>,
    /// How long a connection may go without a byte either way before it is
    /// closed (once the request being answered, if any, is finished);
    /// `None`: no limit.
    pub idle_timeout: Option<Duration>,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown`, then waits for every
/// connection to finish what it is answering.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    // HTTP/1 only: hyper's header-read timeout covers HTTP/1 alone, so an
    // HTTP/2 (h2c) client could hold a connection by trickling bytes. No
    // client of Sluice needs HTTP/2 in the clear; TLS, and HTTP/2 with it,
    // belong to the proxy in front. (`http1_only` holds only for
    // `serve_connection`: with upgrades hyper-util would still detect HTTP/2.)
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Each connection's read buffer: hyper's default lets it grow to
        // about 400 KB, which hundreds of clients uploading at once turn
        // into tens of MB, and into long polls that delay everyone else.
        .max_buf_size(READ_BUFFER);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let builder = Arc::clone(&builder);
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        let idle_timeout = limits.idle_timeout;
        connections.spawn(async move {
            let _slot = slot;
            let (io, activity) = Watched::new(stream);
            let connection = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            let mut closing = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                        break;
                    }
                    _ = shutdown.cancelled(), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = activity.idle_for(idle_timeout), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// An accept that failed. Per-connection errors (the peer gave up) are
/// nothing; running out of file descriptors passes once connections close,
/// so wait a little rather than spin.
async fn accept_failed(error: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(%error, "cannot accept a connection; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// When a connection last moved a byte.
struct Activity {
    since: Instant,
    /// Milliseconds after `since`.
    last: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let now = self.since.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `timeout`; never without one.
    async fn idle_for(&self, timeout: Option<Duration>) {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        loop {
            let last = self.since + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A TCP stream that records when it last read or wrote.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// Bytes read since the task last let others run.
    read_since_yield: usize,
}

impl Watched {
    fn new(stream: TcpStream) -> (Self, Arc<Activity>) {
        let activity = Arc::new(Activity {
            since: Instant::now(),
            last: AtomicU64::new(0),
        });
        let watched = Self {
            stream,
            activity: Arc::clone(&activity),
            read_since_yield: 0,
        };
        (watched, activity)
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // A client uploading fast could keep its task busy for milliseconds
        // per poll, and a hundred of them delay every other connection by
        // the sum: after a share of bytes, let the others run first. (In
        // sluice-bench's hostile-bodies scenario the slowest /healthz went
        // from 19-26 ms without it to 13-14 ms.)
        if self.read_since_yield >= READ_SHARE {
            self.read_since_yield = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.read_since_yield += read;
            self.activity.touch();
        } else if polled.is_pending() {
            self.read_since_yield = 0;
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
