//! A minimal HTTP/1.1 JSON client for the tests (one connection per request).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no answer.
#[derive(Debug)]
pub struct HttpError(pub String);

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Sends a request with an optional JSON body; returns the status and the body parsed as
/// JSON (`Value::Null` when empty or not JSON).
pub async fn request(
    method: Method,
    addr: SocketAddr,
    path: &str,
    body: Option<&Value>,
) -> Result<(StatusCode, Value), HttpError> {
    let raw = body.map(|b| b.to_string().into_bytes());
    request_raw(method, addr, path, raw).await
}

/// Like [`request`] with a body of raw bytes.
pub async fn request_raw(
    method: Method,
    addr: SocketAddr,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Value), HttpError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        HttpError(format!("{method} {addr}{path}: {what}: {e}"))
    };
    let work = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| err("connect", &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| err("handshake", &e))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| err("request", &e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| err("send", &e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| err("body", &e))?
            .to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(err("timeout", &format!("{REQUEST_TIMEOUT:?}"))),
    }
}

/// `GET`, expecting 200 with JSON.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Value, HttpError> {
    match request(Method::GET, addr, path, None).await? {
        (StatusCode::OK, v) => Ok(v),
        (s, v) => Err(HttpError(format!("GET {addr}{path}: {s} {v}"))),
    }
}

/// `POST` with a JSON body.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    body: &Value,
) -> Result<(StatusCode, Value), HttpError> {
    request(Method::POST, addr, path, Some(body)).await
}
