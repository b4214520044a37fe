//! Small network helpers.

use std::net::IpAddr;

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
