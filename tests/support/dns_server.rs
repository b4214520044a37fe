//! A real DNS server on loopback for the DNS strategy's tests: an authoritative server
//! (hickory-server, in-process) with an in-memory zone the test edits while it runs,
//! behind a small UDP/TCP front that can be switched to misbehave (stay silent, answer
//! SERVFAIL or REFUSED, send garbage, cut or truncate answers).
//!
//! Everything binds 127.0.0.1 port 0 and stops when the [`DnsServer`] is dropped.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// The zone every test name lives in.
pub const ZONE: &str = "rp.test.";

/// How the front answers queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Passes queries to the authoritative server and its answers back.
    Answer,
    /// Drops every query: no answer at all.
    Silent,
    /// Answers SERVFAIL.
    ServFail,
    /// Answers REFUSED.
    Refused,
    /// Answers with the query's ID and then bytes that are no DNS message.
    Garbage,
    /// Sends the first half of the real answer (cut mid-record, no TC flag).
    Cut,
    /// Answers over UDP with the TC (truncated) flag and no records; TCP still answers,
    /// so a resolver that retries over TCP gets the real answer.
    Truncated,
    /// As `Truncated`, but TCP connections are closed at once.
    TruncatedNoTcp,
}

/// The server. The address to give the resolver is [`DnsServer::addr`] (UDP and TCP).
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    mode: Arc<Mutex<Mode>>,
    serial: AtomicU32,
    queries: Arc<Mutex<Vec<(tokio::time::Instant, String, RecordType)>>>,
    _server: Server<Catalog>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn name(n: &str) -> Name {
    let n = if n.ends_with('.') {
        n.to_owned()
    } else {
        format!("{n}.")
    };
    Name::from_ascii(&n).expect("test name")
}

impl DnsServer {
    /// Starts the server with an empty zone `rp.test.` (negative answers: TTL 1 s).
    pub async fn start() -> Self {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into(), 0).await
    }

    /// [`DnsServer::start`], answering on `ip` and `port` (0: a free one; the
    /// authoritative part stays on loopback behind the front).
    pub async fn start_on(ip: std::net::IpAddr, port: u16) -> Self {
        let origin = name(ZONE);
        let zone = InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            name("ns.rp.test."),
            name("admin.rp.test."),
            1,
            3600,
            600,
            86400,
            1,
        );
        assert!(
            zone.upsert(Record::from_rdata(origin.clone(), 1, RData::SOA(soa)), 1)
                .await
        );
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::new(&origin),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );
        let mut server = Server::new(catalog);
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
        let upstream_udp = udp.local_addr().unwrap();
        let upstream_tcp = tcp.local_addr().unwrap();
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);

        // The front: UDP and TCP on one port.
        let (front_udp, front_tcp) = loop {
            let u = UdpSocket::bind((ip, port)).await.expect("bind front");
            let bound = u.local_addr().unwrap().port();
            match TcpListener::bind((ip, bound)).await {
                Ok(t) => break (u, t),
                Err(e) if port != 0 => panic!("bind the front's TCP port {port}: {e}"),
                Err(_) => continue,
            }
        };
        let addr = front_udp.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(Mode::Answer));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let front_udp = Arc::new(front_udp);
        let udp_task = tokio::spawn(serve_udp(
            front_udp,
            upstream_udp,
            mode.clone(),
            queries.clone(),
        ));
        let tcp_task = tokio::spawn(serve_tcp(front_tcp, upstream_tcp, mode.clone()));
        DnsServer {
            addr,
            zone,
            mode,
            serial: AtomicU32::new(1),
            queries,
            _server: server,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// The server's address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches how queries are answered.
    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// The questions received so far: when, name (lowercased, with the final dot), type.
    pub fn queries(&self) -> Vec<(tokio::time::Instant, String, RecordType)> {
        self.queries.lock().unwrap().clone()
    }

    fn serial(&self) -> u32 {
        self.serial.fetch_add(1, Ordering::Relaxed) + 1
    }

    async fn clear(&self, n: &Name, types: &[RecordType]) {
        let mut records = self.zone.records_mut().await;
        for t in types {
            records.remove(&RrKey::new(LowerName::new(n), *t));
        }
    }

    /// Sets the A and AAAA records of `host` (in the zone) to `ips`, with this TTL.
    pub async fn set_ips(&self, host: &str, ips: &[IpAddr], ttl: u32) {
        let n = name(host);
        self.clear(&n, &[RecordType::A, RecordType::AAAA]).await;
        let serial = self.serial();
        for ip in ips {
            let data = match ip {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            assert!(
                self.zone
                    .upsert(Record::from_rdata(n.clone(), ttl, data), serial)
                    .await
            );
        }
    }

    /// Sets the SRV records of `service` to these targets and ports, with this TTL.
    pub async fn set_srv(&self, service: &str, targets: &[(&str, u16)], ttl: u32) {
        let n = name(service);
        self.clear(&n, &[RecordType::SRV]).await;
        let serial = self.serial();
        for (target, port) in targets {
            let data = RData::SRV(SRV::new(0, 10, *port, name(target)));
            assert!(
                self.zone
                    .upsert(Record::from_rdata(n.clone(), ttl, data), serial)
                    .await
            );
        }
    }

    /// Removes every record of `host`: it no longer exists (NXDOMAIN).
    pub async fn remove(&self, host: &str) {
        let n = name(host);
        self.clear(&n, &[RecordType::A, RecordType::AAAA, RecordType::SRV])
            .await;
    }
}

/// The question of a query: its bytes (name, type, class), the name and the type.
fn question(query: &[u8]) -> Option<(&[u8], String, RecordType)> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    query.get(i + 3)?;
    Some((
        &query[12..i + 4],
        format!("{}.", labels.join(".")),
        RecordType::from(qtype),
    ))
}

/// A reply with no records: the query's ID and question, QR set, `flags` and `rcode`.
fn bare_reply(query: &[u8], question: &[u8], tc: bool, rcode: u8) -> Vec<u8> {
    let mut r = Vec::with_capacity(12 + question.len());
    r.extend_from_slice(&query[0..2]);
    // QR, the query's opcode and RD; TC if asked.
    let b2 = 0x80 | (query[2] & 0x79) | if tc { 0x02 } else { 0 };
    r.push(b2);
    r.push(0x80 | (rcode & 0x0f));
    r.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    r.extend_from_slice(question);
    r
}

async fn forward_udp(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    s.send_to(query, upstream).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(2), s.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

async fn serve_udp(
    front: Arc<UdpSocket>,
    upstream: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    queries: Arc<Mutex<Vec<(tokio::time::Instant, String, RecordType)>>>,
) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, from)) = front.recv_from(&mut buf).await else {
            return;
        };
        let query = buf[..n].to_vec();
        let Some((q, qname, qtype)) = question(&query) else {
            continue;
        };
        let q = q.to_vec();
        queries
            .lock()
            .unwrap()
            .push((tokio::time::Instant::now(), qname, qtype));
        let mode = *mode.lock().unwrap();
        let front = front.clone();
        tokio::spawn(async move {
            let reply = match mode {
                Mode::Silent => return,
                Mode::Answer => forward_udp(upstream, &query).await,
                Mode::ServFail => Some(bare_reply(&query, &q, false, 2)),
                Mode::Refused => Some(bare_reply(&query, &q, false, 5)),
                Mode::Truncated | Mode::TruncatedNoTcp => Some(bare_reply(&query, &q, true, 0)),
                Mode::Garbage => {
                    let mut r = query[0..2].to_vec();
                    r.extend_from_slice(&[0x81, 0x80, 0x00, 0x01, 0x00, 0x05, 0xff, 0xff]);
                    r.extend((0..48u8).map(|i| i.wrapping_mul(97) ^ 0xc3));
                    Some(r)
                }
                Mode::Cut => forward_udp(upstream, &query).await.map(|mut r| {
                    let keep = (r.len() / 2).max(13);
                    r.truncate(keep);
                    r
                }),
            };
            if let Some(r) = reply {
                let _ = front.send_to(&r, from).await;
            }
        });
    }
}

async fn serve_tcp(front: TcpListener, upstream: SocketAddr, mode: Arc<Mutex<Mode>>) {
    loop {
        let Ok((mut client, _)) = front.accept().await else {
            return;
        };
        let mode = *mode.lock().unwrap();
        tokio::spawn(async move {
            match mode {
                Mode::Silent => {
                    // Hold the connection open, answer nothing.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                Mode::Answer | Mode::Truncated => {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                    }
                }
                // Every other failure mode fails over TCP too, so that a resolver that
                // retries over TCP cannot get around it.
                _ => {
                    let _ = client.shutdown().await;
                }
            }
        });
    }
}
