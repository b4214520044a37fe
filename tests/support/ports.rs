//! Free loopback ports for test processes.
//!
//! Ports are taken below Linux's ephemeral range (32768–60999), so the kernel never
//! hands them out to outgoing connections between the moment a test picks one and the
//! moment its process binds it. Each test binary starts at an offset derived from its
//! process id, and a port is only handed out after a bind on it succeeded.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU16, Ordering};

const LOW: u16 = 20_000;
const SPAN: u16 = 12_000;

static NEXT: AtomicU16 = AtomicU16::new(0);

/// A loopback port that is free now (TCP).
pub fn free_port() -> u16 {
    let start = (std::process::id() % 60) as u16 * 200;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + (start + n) % SPAN;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN);
}

/// A loopback address with a free port.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()))
}
