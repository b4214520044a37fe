//! Which `Host` the API answers when it has no token: the defence against DNS
//! rebinding.
//!
//! A web page at `http://evil.example/` can make its own name resolve to `127.0.0.1`
//! and then read `http://evil.example:45894/v1/members` as a same-origin request: the
//! browser sends `Host: evil.example:45894`. So without `http_token`, the API answers
//! only requests whose `Host` (and, for a request target in absolute form, its
//! authority) names:
//!
//! - `localhost`, or a loopback address (`127.0.0.1`, any `127.x.y.z`, `[::1]`);
//! - the address the connection came in on (the daemon's own address, e.g. the pod IP
//!   when it binds `0.0.0.0`): a page can only send that `Host` from an origin that is
//!   the daemon itself;
//! - a host listed in `http_allowed_hosts` (compared without case).
//!
//! The port is ignored, and so is one final dot (`localhost.`). A request without `Host`
//! at all (an HTTP/1.0 client) is answered: browsers always send one. `/healthz` and
//! `/readyz` are answered whatever the `Host` (they expose nothing a page could use, and
//! the kubelet probes with `Host` set to the pod's IP and port). With a token configured,
//! any `Host` is answered: the token is what protects the API then.

use std::net::IpAddr;

pub use crate::netutil::Host;

/// The hosts the API answers without a token, besides loopback and its own address.
#[derive(Clone, Debug, Default)]
pub struct AllowedHosts {
    names: Vec<String>,
    ips: Vec<IpAddr>,
}

impl AllowedHosts {
    /// From the entries of `http_allowed_hosts` (host names or addresses, no port);
    /// entries that do not parse are left out (the configuration refuses them).
    pub fn new<S: AsRef<str>>(entries: &[S]) -> AllowedHosts {
        let mut allowed = AllowedHosts::default();
        for e in entries {
            match Host::parse(e.as_ref()) {
                Some(Host::Name(n)) => allowed.names.push(n.to_ascii_lowercase()),
                Some(Host::Ip(ip)) => allowed.ips.push(ip),
                None => {}
            }
        }
        allowed
    }

    /// Whether a request with this `Host` header value (`None`: no header), that came
    /// in on a connection to `local`, is answered.
    pub fn allows(&self, host: Option<&str>, local: Option<IpAddr>) -> bool {
        let Some(value) = host else {
            return true;
        };
        let Some(host) = Host::parse(value) else {
            return false;
        };
        if host.is_loopback() {
            return true;
        }
        match host {
            Host::Ip(ip) => Some(ip) == local.map(canonical) || self.ips.contains(&ip),
            Host::Name(n) => self.names.iter().any(|a| a.eq_ignore_ascii_case(n)),
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is (a dual-stack listener sees
/// `::ffff:10.0.0.5`).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn hosts_parse_with_and_without_ports() {
        assert_eq!(Host::parse("localhost"), Some(Host::Name("localhost")));
        assert_eq!(
            Host::parse("localhost:45894"),
            Some(Host::Name("localhost"))
        );
        assert_eq!(Host::parse("localhost.:1"), Some(Host::Name("localhost")));
        assert_eq!(
            Host::parse("127.0.0.1:45894"),
            Some(Host::Ip("127.0.0.1".parse().unwrap()))
        );
        assert_eq!(
            Host::parse("[::1]:45894"),
            Some(Host::Ip("::1".parse().unwrap()))
        );
        assert_eq!(Host::parse("[::1]"), Some(Host::Ip("::1".parse().unwrap())));
        assert_eq!(Host::parse("host:"), Some(Host::Name("host")));
    }

    #[test]
    fn malformed_hosts_do_not_parse() {
        for bad in [
            "",
            ":80",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:x",
            "a:b:c",
            "evil.example:99999999",
            "a b",
            "user@host",
            "host/path",
            "[evil.example]",
        ] {
            assert_eq!(Host::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn loopback_names_and_addresses_are_allowed_with_any_port() {
        let a = AllowedHosts::default();
        for ok in [
            "localhost",
            "LOCALHOST:1",
            "localhost:45894",
            "127.0.0.1",
            "127.0.0.1:45894",
            "127.1.2.3:8",
            "[::1]:45894",
        ] {
            assert!(a.allows(Some(ok), None), "{ok}");
        }
    }

    #[test]
    fn other_names_are_refused_unless_listed() {
        let a = AllowedHosts::default();
        for bad in [
            "evil.example",
            "evil.example:45894",
            "localhost.evil.example",
            "10.0.0.5:45894",
            "[::1]evil",
        ] {
            assert!(!a.allows(Some(bad), None), "{bad}");
        }
        let a = AllowedHosts::new(&["Rallypoint.Internal", "10.0.0.9", "[fd00::9]", "bad host"]);
        assert!(a.allows(Some("rallypoint.internal:45894"), None));
        assert!(a.allows(Some("RALLYPOINT.internal"), None));
        assert!(a.allows(Some("10.0.0.9:1"), None));
        assert!(a.allows(Some("[fd00::9]:1"), None));
        assert!(!a.allows(Some("evil.example"), None));
        assert!(!a.allows(Some("internal"), None));
    }

    #[test]
    fn the_address_the_connection_came_in_on_is_allowed() {
        let a = AllowedHosts::default();
        assert!(a.allows(Some("10.0.0.5:45894"), local("10.0.0.5")));
        assert!(a.allows(Some("10.0.0.5"), local("::ffff:10.0.0.5")));
        assert!(a.allows(Some("[fd00::5]:45894"), local("fd00::5")));
        assert!(!a.allows(Some("10.0.0.6:45894"), local("10.0.0.5")));
        assert!(!a.allows(Some("evil.example"), local("10.0.0.5")));
    }

    #[test]
    fn a_request_without_host_is_answered() {
        assert!(AllowedHosts::default().allows(None, None));
    }
}
