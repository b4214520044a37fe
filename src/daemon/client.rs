//! The client of the daemon's own API: `GET` with a bounded answer, and a Server-Sent
//! Events stream. Used by `rallypoint members`, `watch` and `probe`, and by the tests.
//!
//! HTTP/1.1 is hyper's (one connection per request); bodies are bounded with
//! http-body-util; the SSE framing is eventsource-stream's.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use http_body_util::{BodyDataStream, BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The longest body accepted, in bytes; for an event stream, the most bytes read
/// without an event completing.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// The most bytes of an error answer's body kept for the message.
const MAX_ERROR_BODY: usize = 4096;
/// The longest line of an event stream accepted, in bytes (the parser rescans a line
/// for each chunk, so an endless one must end early).
const MAX_LINE: usize = 4 * 1024 * 1024;
/// How long an event stream may bring no bytes at all (the daemon sends a keep-alive
/// every 15 s) before it counts as dropped.
pub const STREAM_IDLE: Duration = Duration::from_secs(45);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon could not be reached.
    #[error(
        "cannot connect to the rallypoint HTTP API at {addr} (is `rallypoint run` running? \
         a node elsewhere: give its API with --http-addr or RALLYPOINT_HTTP_ADDR)"
    )]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed midway, or the answer is not HTTP.
    #[error("the connection to the HTTP API failed: {0}")]
    Http(#[from] hyper::Error),
    /// The answer is not what the API sends.
    #[error("unexpected answer from the HTTP API: {0}")]
    Protocol(String),
    /// An event stream was asked for and something else came.
    #[error("the HTTP API answered 200 with {0:?}, not an event stream (text/event-stream)")]
    NotAStream(String),
    /// The event stream brought nothing, not even a keep-alive, for this long.
    #[error(
        "the event stream was silent for {0:?} (no keep-alive): the connection is taken as dropped"
    )]
    Idle(Duration),
    /// The API answered with an error status.
    #[error("the HTTP API answered {status}: {body}{}", status_hint(*.status))]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

/// What to do about an error status, for the CLI's message.
fn status_hint(status: u16) -> &'static str {
    match status {
        401 => {
            " (the node's API requires its token, its `http_token`: give it with \
             --http-token or RALLYPOINT_HTTP_TOKEN)"
        }
        421 => " (the node refuses this request's Host; see `http_allowed_hosts`)",
        _ => "",
    }
}

/// `GET path`, returning the body of a `200` answer.
pub async fn get(addr: SocketAddr, path: &str) -> Result<String, ClientError> {
    get_with_token(addr, path, None).await
}

/// `GET path` with `Authorization: Bearer TOKEN` when a token is given.
pub async fn get_with_token(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<String, ClientError> {
    let (status, body) = get_any(addr, path, token).await?;
    if status != StatusCode::OK {
        return Err(status_error(status, &body));
    }
    Ok(body)
}

/// `GET path`, returning the status and the body, whatever the status (a probe reads a
/// `503`'s body too).
pub async fn get_any(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(StatusCode, String), ClientError> {
    let response = request(addr, path, &[], token).await?;
    let status = response.status();
    let bytes = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(e) => ClientError::Http(*e),
            Err(_) => ClientError::Protocol(format!("body longer than {MAX_BODY} bytes")),
        })?
        .to_bytes();
    let body = String::from_utf8(bytes.to_vec())
        .map_err(|_| ClientError::Protocol("body is not UTF-8".into()))?;
    Ok((status, body))
}

/// The error for a status other than `200`, with the start of its body.
fn status_error(status: StatusCode, body: &str) -> ClientError {
    let mut end = body.len().min(MAX_ERROR_BODY);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    ClientError::Status {
        status: status.as_u16(),
        body: body[..end].trim().to_owned(),
    }
}

/// One Server-Sent Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerEvent {
    /// The event's name (`message` when the server gave none).
    pub event: String,
    /// The event's id, when it has one.
    pub id: Option<String>,
    /// The data lines, joined by `\n`.
    pub data: String,
}

/// The body as a stream of bytes that fails at once on invalid UTF-8, on a line longer
/// than [`MAX_LINE`], and once more than [`MAX_BODY`] bytes pass without an event
/// completing (the reader resets `pending` at each event); `total` counts every byte,
/// keep-alives included.
struct Bounded {
    inner: BodyDataStream<Incoming>,
    pending: Arc<AtomicUsize>,
    total: Arc<AtomicU64>,
    /// Bytes since the last `\n`.
    line: usize,
    /// The bytes of a character split across chunks (at most 3).
    carry: Vec<u8>,
}

/// The error of a [`Bounded`] stream.
#[derive(Debug)]
enum BodyError {
    Http(hyper::Error),
    TooLong,
    LineTooLong,
    NotUtf8,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Http(e) => write!(f, "{e}"),
            BodyError::TooLong => write!(f, "an event longer than {MAX_BODY} bytes"),
            BodyError::LineTooLong => write!(f, "an event line longer than {MAX_LINE} bytes"),
            BodyError::NotUtf8 => write!(f, "the event stream is not UTF-8"),
        }
    }
}

impl Bounded {
    /// Checks one chunk; `Err` ends the stream.
    fn check(&mut self, b: &[u8]) -> Result<(), BodyError> {
        self.total.fetch_add(b.len() as u64, Ordering::Relaxed);
        if self.pending.fetch_add(b.len(), Ordering::Relaxed) + b.len() > MAX_BODY {
            return Err(BodyError::TooLong);
        }
        match b.iter().rposition(|&c| c == b'\n') {
            Some(i) => self.line = b.len() - i - 1,
            None => self.line += b.len(),
        }
        if self.line > MAX_LINE {
            return Err(BodyError::LineTooLong);
        }
        let mut text = std::mem::take(&mut self.carry);
        text.extend_from_slice(b);
        match std::str::from_utf8(&text) {
            Ok(_) => {}
            // A character cut at the chunk's end: wait for the rest.
            Err(e) if e.error_len().is_none() => self.carry = text[e.valid_up_to()..].to_vec(),
            Err(_) => return Err(BodyError::NotUtf8),
        }
        Ok(())
    }
}

impl Stream for Bounded {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(b))) => match self.check(&b) {
                Ok(()) => Poll::Ready(Some(Ok(b))),
                Err(e) => Poll::Ready(Some(Err(e))),
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Http(e)))),
            other => other.map(|o| o.map(|r| r.map_err(BodyError::Http))),
        }
    }
}

/// A Server-Sent Events stream being read.
pub struct EventStream {
    events: eventsource_stream::EventStream<Bounded>,
    pending: Arc<AtomicUsize>,
    total: Arc<AtomicU64>,
}

impl EventStream {
    /// Opens `GET path` as an event stream, with `Last-Event-ID` when given.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<Self, ClientError> {
        Self::connect_with_token(addr, path, last_event_id, None).await
    }

    /// [`EventStream::connect`], with `Authorization: Bearer TOKEN` when a token is
    /// given.
    pub async fn connect_with_token(
        addr: SocketAddr,
        path: &str,
        last_event_id: Option<&str>,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        let mut headers = vec![(header::ACCEPT, "text/event-stream")];
        if let Some(id) = last_event_id {
            headers.push((header::HeaderName::from_static("last-event-id"), id));
        }
        let response = request(addr, path, &headers, token).await?;
        let status = response.status();
        if status != StatusCode::OK {
            let (_, body) = read_error_body(response).await;
            return Err(status_error(status, &body));
        }
        let kind = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !kind.trim_start().starts_with("text/event-stream") {
            return Err(ClientError::NotAStream(kind.chars().take(100).collect()));
        }
        let pending = Arc::new(AtomicUsize::new(0));
        let total = Arc::new(AtomicU64::new(0));
        let bounded = Bounded {
            inner: BodyDataStream::new(response.into_body()),
            pending: pending.clone(),
            total: total.clone(),
            line: 0,
            carry: Vec::new(),
        };
        Ok(EventStream {
            events: bounded.eventsource(),
            pending,
            total,
        })
    }

    /// The next event; `None` when the server ended the stream. A stream that brings
    /// no bytes (not even a keep-alive) for [`STREAM_IDLE`] fails with
    /// [`ClientError::Idle`].
    pub async fn next(&mut self) -> Result<Option<ServerEvent>, ClientError> {
        let next = loop {
            let before = self.total.load(Ordering::Relaxed);
            match tokio::time::timeout(STREAM_IDLE, self.events.next()).await {
                Ok(next) => break next,
                Err(_) if self.total.load(Ordering::Relaxed) == before => {
                    return Err(ClientError::Idle(STREAM_IDLE));
                }
                Err(_) => {}
            }
        };
        match next {
            None => Ok(None),
            Some(Ok(ev)) => {
                self.pending.store(0, Ordering::Relaxed);
                Ok(Some(ServerEvent {
                    event: ev.event,
                    id: (!ev.id.is_empty()).then_some(ev.id),
                    data: ev.data,
                }))
            }
            Some(Err(EventStreamError::Transport(BodyError::Http(e)))) => Err(ClientError::Http(e)),
            Some(Err(EventStreamError::Transport(e))) => Err(ClientError::Protocol(e.to_string())),
            Some(Err(EventStreamError::Utf8(_))) => {
                Err(ClientError::Protocol("event stream is not UTF-8".into()))
            }
            Some(Err(EventStreamError::Parser(e))) => Err(ClientError::Protocol(format!(
                "not an event stream ({:?})",
                e.code
            ))),
        }
    }
}

/// The start of an error answer's body (what fits in [`MAX_ERROR_BODY`]).
async fn read_error_body(response: Response<Incoming>) -> (StatusCode, String) {
    let status = response.status();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while text.len() < MAX_ERROR_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    text.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// Sends `GET path` on a new connection and returns the answer's head, its body still
/// to read.
async fn request(
    addr: SocketAddr,
    path: &str,
    headers: &[(header::HeaderName, &str)],
    token: Option<&str>,
) -> Result<Response<Incoming>, ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect { addr, source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection's errors reach the request or the body being read.
        let _ = conn.await;
    });
    let mut req = Request::get(path).header(header::HOST, addr.to_string());
    for (name, value) in headers {
        let value = HeaderValue::from_str(value)
            .map_err(|_| ClientError::Protocol(format!("{name} is not a header value")))?;
        req = req.header(name, value);
    }
    if let Some(t) = token {
        let value = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
            ClientError::Protocol("the token is not a header value (printable ASCII)".into())
        })?;
        req = req.header(header::AUTHORIZATION, value);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Protocol(format!("bad request for {path:?}: {e}")))?;
    Ok(sender.send_request(req).await?)
}
