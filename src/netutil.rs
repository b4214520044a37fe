//! Small network helpers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The first non-loopback address of an interface that is up (IPv4 preferred).
pub fn first_non_loopback_ip() -> Option<IpAddr> {
    let addrs = if_addrs::get_if_addrs().ok()?;
    let mut candidates: Vec<IpAddr> = addrs
        .into_iter()
        .filter(|i| !i.is_loopback())
        .map(|i| i.ip())
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        })
        .collect();
    candidates.sort_by_key(|ip| ip.is_ipv6());
    candidates.into_iter().next()
}

/// A `Host` header's host, without its port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host<'a> {
    /// A name (`localhost`, `rallypoint.internal`), final dot removed.
    Name(&'a str),
    /// An IP address (`127.0.0.1`, `[::1]`).
    Ip(IpAddr),
}

impl<'a> Host<'a> {
    /// Parses `host[:port]` as a `Host` header (or a URI's authority) writes it; an IPv6
    /// address must be in brackets. `None` when it is not that shape.
    pub fn parse(value: &'a str) -> Option<Host<'a>> {
        let value = value.trim();
        if let Some(rest) = value.strip_prefix('[') {
            let (ip, after) = rest.split_once(']')?;
            if !(after.is_empty() || after.strip_prefix(':').is_some_and(port)) {
                return None;
            }
            return ip.parse::<Ipv6Addr>().ok().map(|ip| Host::Ip(ip.into()));
        }
        let name = match value.rsplit_once(':') {
            Some((name, p)) if port(p) => name,
            Some(_) => return None,
            None => value,
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return None;
        }
        Some(match name.parse::<Ipv4Addr>() {
            Ok(ip) => Host::Ip(ip.into()),
            Err(_) => Host::Name(name),
        })
    }

    /// Whether this is a loopback name or address.
    pub fn is_loopback(&self) -> bool {
        match self {
            Host::Name(n) => n.eq_ignore_ascii_case("localhost"),
            Host::Ip(ip) => ip.is_loopback(),
        }
    }
}

/// Digits only (possibly none: `host:` is allowed by RFC 3986).
fn port(s: &str) -> bool {
    s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}
