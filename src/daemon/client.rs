//! A small HTTP/1.1 client for the daemon's own API, over a plain [`TcpStream`]: enough
//! for `GET` with a JSON answer and for following a Server-Sent Events stream. Used by
//! `rallypoint members` and `rallypoint watch`, and by the tests.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The longest status or header line accepted, in bytes.
const MAX_HEAD_LINE: usize = 64 * 1024;
/// The longest body (or SSE line) accepted, in bytes.
const MAX_BODY: usize = 16 * 1024 * 1024;

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
    /// The connection failed midway.
    #[error("connection to the HTTP API failed")]
    Io(#[from] std::io::Error),
    /// The answer is not what the API sends.
    #[error("unexpected answer from the HTTP API: {0}")]
    Protocol(String),
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
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    let mut body = request(addr, path, &headers).await?;
    let mut out = Vec::new();
    while body.read(&mut out).await? > 0 {
        if out.len() > MAX_BODY {
            return Err(ClientError::Protocol("body too large".into()));
        }
    }
    String::from_utf8(out).map_err(|_| ClientError::Protocol("body is not UTF-8".into()))
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

/// A Server-Sent Events stream being read.
pub struct EventStream {
    body: Body,
    buf: Vec<u8>,
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
    comments: u64,
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
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Accept", "text/event-stream")];
        if let Some(id) = last_event_id {
            headers.push(("Last-Event-ID", id));
        }
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let body = request(addr, path, &headers).await?;
        Ok(EventStream {
            body,
            buf: Vec::new(),
            event: None,
            id: None,
            data: None,
            comments: 0,
        })
    }

    /// How many comment lines (keep-alives) have been read so far.
    pub fn comments(&self) -> u64 {
        self.comments
    }

    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<ServerEvent>, ClientError> {
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8(line)
                    .map_err(|_| ClientError::Protocol("event line is not UTF-8".into()))?;
                if let Some(ev) = self.line(&line) {
                    return Ok(Some(ev));
                }
            }
            if self.buf.len() > MAX_BODY {
                return Err(ClientError::Protocol("event line too long".into()));
            }
            if self.body.read(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Takes one line; a blank line completes an event.
    fn line(&mut self, line: &str) -> Option<ServerEvent> {
        if line.is_empty() {
            let event = self.event.take();
            let data = self.data.take()?;
            return Some(ServerEvent {
                event: event.unwrap_or_else(|| "message".into()),
                id: self.id.clone(),
                data,
            });
        }
        if line.starts_with(':') {
            self.comments += 1;
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "id" => self.id = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
        None
    }
}

/// How a response body is delimited.
enum Framing {
    /// `Transfer-Encoding: chunked`; bytes left in the current chunk.
    Chunked { left: usize },
    /// `Content-Length`; bytes left.
    Length(usize),
    /// Until the connection closes.
    Eof,
}

/// A response body being read.
struct Body {
    reader: BufReader<TcpStream>,
    framing: Framing,
    done: bool,
}

impl Body {
    /// Appends the next bytes of the body to `out`; 0 at the end.
    async fn read(&mut self, out: &mut Vec<u8>) -> Result<usize, ClientError> {
        if self.done {
            return Ok(0);
        }
        let want = match self.framing {
            Framing::Length(0) => {
                self.done = true;
                return Ok(0);
            }
            Framing::Length(n) => n,
            Framing::Chunked { left: 0 } => {
                let line = read_line(&mut self.reader).await?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| ClientError::Protocol(format!("bad chunk size {size:?}")))?;
                if size == 0 {
                    // Trailers, up to the blank line.
                    while !read_line(&mut self.reader).await?.is_empty() {}
                    self.done = true;
                    return Ok(0);
                }
                self.framing = Framing::Chunked { left: size };
                size
            }
            Framing::Chunked { left } => left,
            Framing::Eof => 8192,
        };
        let mut chunk = vec![0u8; want.min(8192)];
        let n = self.reader.read(&mut chunk).await?;
        if n == 0 {
            self.done = true;
            return match self.framing {
                Framing::Eof => Ok(0),
                _ => Err(ClientError::Protocol("connection closed mid-body".into())),
            };
        }
        out.extend_from_slice(&chunk[..n]);
        match &mut self.framing {
            Framing::Length(left) => *left -= n,
            Framing::Chunked { left } => {
                *left -= n;
                if *left == 0 && !read_line(&mut self.reader).await?.is_empty() {
                    return Err(ClientError::Protocol("chunk not followed by CRLF".into()));
                }
            }
            Framing::Eof => {}
        }
        Ok(n)
    }
}

/// Reads one line of the response head (or of the chunked framing), without its CRLF.
async fn read_line(reader: &mut BufReader<TcpStream>) -> Result<String, ClientError> {
    let mut line = Vec::new();
    let n = (&mut *reader)
        .take(MAX_HEAD_LINE as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Err(ClientError::Protocol("connection closed early".into()));
    }
    if line.last() != Some(&b'\n') {
        return Err(ClientError::Protocol("line too long".into()));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| ClientError::Protocol("line is not UTF-8".into()))
}

/// Sends `GET path` and reads the response head; returns the body of a `200`.
async fn request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Body, ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect { addr, source })?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut reader = BufReader::new(stream);
    reader.get_mut().write_all(req.as_bytes()).await?;
    let status_line = read_line(&mut reader).await?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("bad status line {status_line:?}")))?;
    let mut framing = Framing::Eof;
    loop {
        let line = read_line(&mut reader).await?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ClientError::Protocol(format!("bad header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked { left: 0 };
        } else if name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked { .. })
        {
            let n: usize = value
                .parse()
                .map_err(|_| ClientError::Protocol(format!("bad content-length {value:?}")))?;
            if n > MAX_BODY {
                return Err(ClientError::Protocol(format!(
                    "body of {n} bytes is too large"
                )));
            }
            framing = Framing::Length(n);
        }
    }
    let mut body = Body {
        reader,
        framing,
        done: false,
    };
    if status != 200 {
        let mut text = Vec::new();
        while text.len() < 4096 && body.read(&mut text).await.unwrap_or(0) > 0 {}
        text.truncate(4096);
        return Err(ClientError::Status {
            status,
            body: String::from_utf8_lossy(&text).trim().to_owned(),
        });
    }
    Ok(body)
}
