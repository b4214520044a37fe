//! The gossip socket: set up with socket2, each step's failure naming the option to change.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use socket2::{Domain, Protocol, Socket, Type};

use super::Config;

/// Why the gossip socket could not be set up. Each message names the option to change.
/// Nothing is kept of a failed attempt; the strategy retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `multicast_if` names no interface of this host (or one without an address of the
    /// group's family).
    #[error("gossip multicast_if = {value:?}: {reason}")]
    Interface {
        /// The configured value.
        value: String,
        /// What is wrong with it, and what would be accepted.
        reason: String,
    },
    /// The socket could not be created.
    #[error("gossip: cannot create a UDP socket: {0}")]
    Socket(#[source] io::Error),
    /// A socket option was refused.
    #[error("gossip: cannot set {option}: {source}; check `{key}`")]
    Option {
        /// The socket option (`SO_REUSEPORT`, `IP_MULTICAST_TTL`, …).
        option: &'static str,
        /// The configuration key that sets it.
        key: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The socket could not be bound.
    #[error("gossip: cannot bind UDP {addr}: {source}{hint}")]
    Bind {
        /// The address (`if_addr`, `port`).
        addr: SocketAddr,
        /// What to change.
        hint: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The multicast group could not be joined.
    #[error("gossip: cannot join multicast group {group} on {interface}: {source}{hint}")]
    Join {
        /// The group (`multicast_addr`).
        group: IpAddr,
        /// The interface (`multicast_if`, or "the default interface").
        interface: String,
        /// What to change.
        hint: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Why a heartbeat could not be sent. The strategy says it is failing and tries again at
/// the next interval.
#[derive(Debug, thiserror::Error)]
#[error("gossip: cannot send a heartbeat to {dest}: {source}{hint}")]
pub struct SendError {
    /// Where it was sent.
    pub dest: SocketAddr,
    /// What to change.
    pub hint: &'static str,
    /// The cause.
    #[source]
    pub source: io::Error,
}

impl SendError {
    pub(super) fn new(dest: SocketAddr, broadcast: bool, source: io::Error) -> Self {
        let hint = match (source.raw_os_error(), broadcast) {
            (Some(libc_errno::ENETUNREACH), false) => {
                "; no route for multicast: set `multicast_if`, or add a route for 224.0.0.0/4 (ff00::/8)"
            }
            (Some(libc_errno::ENETUNREACH), true) => {
                "; no route to the broadcast address: set `broadcast_addr` to the subnet's broadcast address"
            }
            (Some(libc_errno::EACCES), true) => "; broadcast refused: check `broadcast_addr`",
            (_, false) => "; check `multicast_if`, `multicast_addr` and `ttl`",
            (_, true) => "; check `broadcast_addr`",
        };
        SendError { dest, hint, source }
    }
}

/// The errno values the hints tell apart (Linux numbering; elsewhere the hint is only
/// less specific).
mod libc_errno {
    pub const EACCES: i32 = 13;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const EADDRINUSE: i32 = 98;
    pub const EADDRNOTAVAIL: i32 = 99;
    pub const ENETUNREACH: i32 = 101;
}

/// A set-up socket and where heartbeats go.
pub(super) struct Endpoint {
    pub socket: tokio::net::UdpSocket,
    pub dest: SocketAddr,
}

/// The interface to send and join on, as the socket options want it.
enum Iface {
    Default,
    V4(Ipv4Addr, String),
    V6(u32, String),
}

impl Iface {
    fn describe(&self) -> String {
        match self {
            Iface::Default => "the default interface (chosen by route)".into(),
            Iface::V4(_, d) | Iface::V6(_, d) => d.clone(),
        }
    }
}

/// Finds `multicast_if` among this host's interfaces: an interface name (`eth0`), one
/// of its addresses, or (IPv6) an interface index.
fn resolve_iface(value: Option<&str>, v6: bool) -> Result<Iface, SetupError> {
    let Some(value) = value else {
        return Ok(Iface::Default);
    };
    let err = |reason: String| SetupError::Interface {
        value: value.to_owned(),
        reason,
    };
    let ifs = if_addrs::get_if_addrs()
        .map_err(|e| err(format!("cannot list this host's interfaces: {e}")))?;
    let listing = || {
        let mut names: Vec<String> = ifs
            .iter()
            .map(|i| format!("{} ({})", i.name, i.ip()))
            .collect();
        names.sort();
        names.dedup();
        names.join(", ")
    };
    if let Ok(ip) = value.parse::<IpAddr>() {
        let Some(i) = ifs.iter().find(|i| i.ip() == ip) else {
            return Err(err(format!(
                "no interface has this address (expected an interface name or one of: {})",
                listing()
            )));
        };
        return match (ip, v6) {
            (IpAddr::V4(a), false) => Ok(Iface::V4(a, format!("{} ({a})", i.name))),
            (IpAddr::V6(_), true) => match i.index {
                Some(idx) => Ok(Iface::V6(idx, format!("{} (index {idx})", i.name))),
                None => Err(err("the interface has no index".into())),
            },
            _ => Err(err(
                "the address is not of the multicast group's family (IPv4 vs IPv6)".into(),
            )),
        };
    }
    if v6 && let Ok(idx) = value.parse::<u32>() {
        return Ok(Iface::V6(idx, format!("interface index {idx}")));
    }
    let named: Vec<_> = ifs.iter().filter(|i| i.name == value).collect();
    if named.is_empty() {
        return Err(err(format!(
            "no such interface (expected an interface name or address; this host has: {})",
            listing()
        )));
    }
    if v6 {
        match named.iter().find_map(|i| i.index) {
            Some(idx) => Ok(Iface::V6(idx, format!("{value} (index {idx})"))),
            None => Err(err("the interface has no index".into())),
        }
    } else {
        match named.iter().find_map(|i| match i.ip() {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }) {
            Some(a) => Ok(Iface::V4(a, format!("{value} ({a})"))),
            None => Err(err(
                "the interface has no IPv4 address to send multicast from".into(),
            )),
        }
    }
}

fn opt(option: &'static str, key: &'static str) -> impl FnOnce(io::Error) -> SetupError {
    move |source| SetupError::Option {
        option,
        key,
        source,
    }
}

/// Creates, configures and binds the gossip socket. Must run inside a tokio runtime.
pub(super) fn open(cfg: &Config) -> Result<Endpoint, SetupError> {
    let group = cfg.multicast_addr;
    let v6 = !cfg.broadcast_only && group.is_ipv6();
    let iface = if cfg.broadcast_only {
        Iface::Default
    } else {
        resolve_iface(cfg.multicast_if.as_deref(), v6)?
    };
    let bind_ip = cfg.bind_ip();
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let socket =
        Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(SetupError::Socket)?;
    socket
        .set_reuse_address(true)
        .map_err(opt("SO_REUSEADDR", "port"))?;
    #[cfg(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    ))]
    socket
        .set_reuse_port(true)
        .map_err(opt("SO_REUSEPORT", "port"))?;
    if v6 {
        socket
            .set_only_v6(true)
            .map_err(opt("IPV6_V6ONLY", "if_addr"))?;
    }
    let bind_addr = SocketAddr::new(bind_ip, cfg.port);
    socket.bind(&bind_addr.into()).map_err(|source| {
        let hint = match source.raw_os_error() {
            Some(libc_errno::EADDRINUSE) => {
                "; another program, or another user, holds this port without sharing it: change `port` (on every node)"
            }
            Some(libc_errno::EADDRNOTAVAIL) => {
                "; `if_addr` is not an address of this host: change or remove `if_addr`"
            }
            Some(libc_errno::EACCES) => "; not allowed: change `port` to one above 1023",
            _ => "; check `if_addr` and `port`",
        };
        SetupError::Bind {
            addr: bind_addr,
            hint,
            source,
        }
    })?;
    let dest = if cfg.broadcast_only {
        socket
            .set_broadcast(true)
            .map_err(opt("SO_BROADCAST", "broadcast_only"))?;
        SocketAddr::new(IpAddr::V4(cfg.broadcast_addr), cfg.port)
    } else {
        let join_err = |source: io::Error| {
            let hint = match source.raw_os_error() {
                Some(libc_errno::ENODEV) => {
                    "; no interface routes multicast: set `multicast_if` to an interface name or address"
                }
                Some(libc_errno::EINVAL) => {
                    "; check that `multicast_addr` is a multicast group and `multicast_if` a multicast-capable interface"
                }
                Some(libc_errno::EADDRNOTAVAIL) => {
                    "; `multicast_if` is not an address of this host: change `multicast_if`"
                }
                _ => "; change `multicast_if` (the interface) or `multicast_addr` (the group)",
            };
            SetupError::Join {
                group,
                interface: iface.describe(),
                hint,
                source,
            }
        };
        match (group, &iface) {
            (IpAddr::V4(g), Iface::V4(a, _)) => {
                socket.join_multicast_v4(&g, a).map_err(join_err)?;
                socket
                    .set_multicast_if_v4(a)
                    .map_err(opt("IP_MULTICAST_IF", "multicast_if"))?;
            }
            (IpAddr::V4(g), _) => {
                socket
                    .join_multicast_v4(&g, &Ipv4Addr::UNSPECIFIED)
                    .map_err(join_err)?;
            }
            (IpAddr::V6(g), Iface::V6(idx, _)) => {
                socket.join_multicast_v6(&g, *idx).map_err(join_err)?;
                socket
                    .set_multicast_if_v6(*idx)
                    .map_err(opt("IPV6_MULTICAST_IF", "multicast_if"))?;
            }
            (IpAddr::V6(g), _) => {
                socket.join_multicast_v6(&g, 0).map_err(join_err)?;
            }
        }
        if v6 {
            socket
                .set_multicast_loop_v6(true)
                .map_err(opt("IPV6_MULTICAST_LOOP", "multicast_if"))?;
            socket
                .set_multicast_hops_v6(cfg.ttl)
                .map_err(opt("IPV6_MULTICAST_HOPS", "ttl"))?;
        } else {
            socket
                .set_multicast_loop_v4(true)
                .map_err(opt("IP_MULTICAST_LOOP", "multicast_if"))?;
            socket
                .set_multicast_ttl_v4(cfg.ttl)
                .map_err(opt("IP_MULTICAST_TTL", "ttl"))?;
        }
        match (group, &iface) {
            (IpAddr::V6(g), Iface::V6(idx, _)) => {
                SocketAddr::V6(SocketAddrV6::new(g, cfg.port, 0, *idx))
            }
            _ => SocketAddr::new(group, cfg.port),
        }
    };
    socket
        .set_nonblocking(true)
        .map_err(opt("O_NONBLOCK", "port"))?;
    let socket = tokio::net::UdpSocket::from_std(socket.into()).map_err(SetupError::Socket)?;
    Ok(Endpoint { socket, dest })
}

/// The unspecified address of a family.
pub(super) fn unspecified(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}
