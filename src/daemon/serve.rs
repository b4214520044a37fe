//! The HTTP API's accept loop and connections, in place of `axum::serve`: it holds
//! under abuse.
//!
//! - **A cap**: at most `http_max_connections` connections are served at once (default
//!   256). One more is accepted and closed at once, after a `503` with
//!   `Connection: close` written if the socket takes it without waiting; it is counted
//!   (`rallypoint_http_connections_refused_total{reason="limit"}`). So a flood of idle
//!   connections costs the daemon at most that many file descriptors, and the cluster
//!   port keeps the rest (see [`super::rlimit`]).
//! - **Timeouts** per connection ([`super::timeouts`]): a request head must arrive
//!   within `http_header_timeout` (default 10 s), a kept-alive connection may wait
//!   `http_idle_timeout` (default 60 s) for its next request, and a response the client
//!   does not read is cut after `http_idle_timeout` without progress.
//! - **Bounded buffers**: hyper buffers at most [`MAX_BUF`] per connection (which also
//!   bounds a request's head), and the kernel's send buffer of an API socket is set to
//!   [`SEND_BUFFER`] (no autotuning to megabytes for a client that does not read).
//! - **Accept errors** (out of file descriptors, `EMFILE`) are not spun on: the loop
//!   waits, from 10 ms doubling to 1 s, and logs the recovery. Warnings about what
//!   clients cause (refusals, accept errors) are rate-limited per reason
//!   ([`WarnLimit`]); the counters count every one.
//! - **Shutdown**: once `stop` is cancelled no connection is accepted; idle connections
//!   close at once and those with a request in progress finish it (event streams end on
//!   `stop` too). [`serve`] returns when all are closed; the caller bounds that wait
//!   ([`super::DRAIN_TIMEOUT`]) and drops the rest.
//!
//! Each request carries a [`ConnInfo`] extension: the addresses of its connection and a
//! handle to cut it (the event stream uses it for a client that does not read).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::metrics::{Closed, HttpStats};
use super::timeouts::{Clock, Expired, Limits};
use crate::warn_limit::{self, WarnLimit};

/// The most hyper buffers per connection, for reading (so also the longest request
/// head) and for writing.
pub const MAX_BUF: usize = 64 * 1024;
/// The kernel send buffer asked for each API socket (the kernel doubles it).
pub const SEND_BUFFER: usize = 64 * 1024;
/// The first wait after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest wait after failed accepts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The answer written to a connection over the cap before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
connection: close\r\n\
content-type: text/plain; charset=utf-8\r\n\
retry-after: 1\r\n\
content-length: 65\r\n\
\r\n\
too many connections to the rallypoint HTTP API; try again later\n";

/// How the server limits its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The most connections served at once (`http_max_connections`).
    pub max_connections: usize,
    /// The header and idle timeouts.
    pub limits: Limits,
}

/// The connection a request came on, in the request's extensions.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The address the client connected to (this daemon's side).
    pub local: SocketAddr,
    /// The client's address.
    pub peer: SocketAddr,
    cut: CancellationToken,
}

impl ConnInfo {
    /// Closes the connection now, whatever it is doing, counting it as closed for
    /// `why`. Only the first call counts.
    pub fn cut(&self, why: Closed, stats: &HttpStats) {
        if !self.cut.is_cancelled() {
            self.cut.cancel();
            stats.closed(why);
        }
    }
}

/// Serves `router` on `listener` until `stop` is cancelled and the open connections
/// have finished. Never fails: a failed accept is waited out.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: Settings,
    stats: Arc<HttpStats>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let mut conns = JoinSet::new();
    let mut backoff: Option<Duration> = None;
    // What others cause (a flood over the cap, a descriptor shortage) is logged within a
    // budget per reason; the counters count every occurrence.
    let mut warnings = WarnLimit::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            // The client gave up before it was accepted: nothing to wait for.
            Err(e) if per_connection(&e) => continue,
            Err(e) => {
                stats.accept_error();
                let wait = backoff.map_or(ACCEPT_BACKOFF_MIN, |b| (b * 2).min(ACCEPT_BACKOFF_MAX));
                backoff = Some(wait);
                warn_limit::log(&mut warnings, Instant::now(), "http_accept", || {
                    format!("cannot accept HTTP connections ({e}); retrying in {wait:?}")
                });
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        if backoff.take().is_some() {
            tracing::info!("accepting HTTP connections again");
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.refused_limit();
            warn_limit::log(
                &mut warnings,
                Instant::now(),
                "http_connection_limit",
                || {
                    format!(
                        "{} HTTP connections open (`http_max_connections`); refusing one from {peer}",
                        settings.max_connections
                    )
                },
            );
            refuse(stream);
            continue;
        };
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let info = ConnInfo {
            local,
            peer,
            cut: CancellationToken::new(),
        };
        conns.spawn(connection(
            stream,
            info,
            router.clone(),
            settings.limits,
            stats.clone(),
            stop.clone(),
            permit,
        ));
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Whether an accept error concerns only the connection being accepted.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers `503` if the socket takes it at once, and closes the connection.
fn refuse(stream: TcpStream) {
    // Read what the client already sent, so that closing does not reset the
    // connection before it has read the answer (a close with unread data sends RST).
    let mut sink = [0u8; 4096];
    let _ = stream.try_read(&mut sink);
    let _ = stream.try_write(REFUSED);
}

/// What a connection's parts share: its clock, and a way to wake its task when the
/// clock's deadline moved.
struct Shared {
    clock: Mutex<Clock>,
    changed: Notify,
}

impl Shared {
    fn clock(&self) -> MutexGuard<'_, Clock> {
        self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds the clock; wakes the connection's task if its deadline moved.
    fn update(&self, f: impl FnOnce(&mut Clock, Instant)) {
        let mut clock = self.clock();
        let before = clock.poll_timeout();
        f(&mut clock, Instant::now());
        if clock.poll_timeout() != before {
            self.changed.notify_one();
        }
    }
}

/// Serves one connection until it ends, its clock runs out, it is cut, or `stop`.
async fn connection(
    stream: TcpStream,
    info: ConnInfo,
    router: Router,
    limits: Limits,
    stats: Arc<HttpStats>,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _open = stats.opened();
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
    let shared = Arc::new(Shared {
        clock: Mutex::new(Clock::new(limits, Instant::now())),
        changed: Notify::new(),
    });
    let cut = info.cut.clone();
    let peer = info.peer;
    let io = TokioIo::new(Tracked {
        inner: stream,
        shared: shared.clone(),
    });
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            shared.update(|c, now| c.handle_request(now));
            req.extensions_mut().insert(info.clone());
            let router = router.clone();
            let done = ResponseDone(shared.clone());
            async move {
                let response = match router.oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| Guarded { body, _done: done }))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The clock applies the header timeout (hyper's own also counts between requests).
    builder.max_buf_size(MAX_BUF).header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = shared.clock().poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "HTTP connection failed");
                }
                return;
            }
            _ = cut.cancelled() => return,
            _ = stop.cancelled(), if !draining => {
                draining = true;
                if !shared.clock().answering() {
                    return;
                }
                conn.as_mut().graceful_shutdown();
            }
            _ = shared.changed.notified() => {}
            _ = sleep => {
                let expired = shared.clock().expired(Instant::now());
                if let Some(why) = expired {
                    stats.closed(match why {
                        Expired::Header => Closed::HeaderTimeout,
                        Expired::Idle => Closed::IdleTimeout,
                        Expired::Stalled => Closed::WriteStalled,
                    });
                    tracing::debug!(%peer, reason = why.as_str(), "HTTP connection closed");
                    return;
                }
            }
        }
    }
}

/// The socket, reporting reads and writes to the connection's clock.
struct Tracked {
    inner: TcpStream,
    shared: Arc<Shared>,
}

impl Tracked {
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Pending => self.shared.update(|c, now| c.handle_write_blocked(now)),
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.shared.update(|c, now| c.handle_write_progress(now))
            }
            Poll::Ready(_) => {}
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.shared.update(|c, now| c.handle_read(now));
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Tells the clock that the response is done when its body is dropped (hyper drops it
/// once written, or when the connection ends).
struct ResponseDone(Arc<Shared>);

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.0.update(|c, now| c.handle_response_done(now));
    }
}

/// A response body that carries a [`ResponseDone`].
struct Guarded {
    body: axum::body::Body,
    _done: ResponseDone,
}

impl Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_whole_http_response() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains("\r\nconnection: close"));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
    }

    #[test]
    fn only_errors_about_one_connection_are_skipped_without_waiting() {
        assert!(per_connection(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        assert!(!per_connection(&io::Error::from_raw_os_error(24))); // EMFILE
    }
}
