//! Static hosts: a fixed list of `host:port` entries, with hostnames re-resolved
//! periodically (a peer whose address changes is followed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Context, Peer, PeerSet, Strategy};

/// Configuration of the static-hosts strategy (`strategy = "static"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The peers, as `host:port` (`10.0.0.6:45893`, `node3:45893`, `[fe80::1]:45893`).
    pub hosts: Vec<String>,
    /// How often hostnames are resolved again. Default 5 s. Addresses given as IPs are
    /// never looked up.
    #[serde(with = "humantime_serde", default = "default_resolve_interval")]
    pub resolve_interval: Duration,
}

fn default_resolve_interval() -> Duration {
    Duration::from_secs(5)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hosts: Vec::new(),
            resolve_interval: default_resolve_interval(),
        }
    }
}

/// Why a static-hosts entry is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("static host {entry:?} is not host:port (e.g. 10.0.0.6:45893 or node3:45893)")]
pub struct BadHost {
    /// The entry at fault.
    pub entry: String,
}

/// The static-hosts strategy. Reports the addresses its entries resolve to; an entry whose
/// lookup fails keeps its last resolved addresses, and the failure is reported.
#[derive(Clone, Debug)]
pub struct StaticHosts {
    config: Config,
}

impl StaticHosts {
    /// A strategy for these `host:port` entries. Entries are checked when the strategy
    /// starts; use [`StaticHosts::from_config`] to check them up front.
    pub fn new<I, S>(hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        StaticHosts {
            config: Config {
                hosts: hosts.into_iter().map(Into::into).collect(),
                ..Config::default()
            },
        }
    }

    /// A strategy from its configuration, refusing an entry that is not `host:port`.
    pub fn from_config(config: Config) -> Result<Self, BadHost> {
        for h in &config.hosts {
            split_host_port(h)?;
        }
        Ok(StaticHosts { config })
    }

    /// Sets how often hostnames are resolved again.
    pub fn resolve_interval(mut self, every: Duration) -> Self {
        self.config.resolve_interval = every;
        self
    }
}

/// Splits `host:port`, accepting `[v6]:port`.
fn split_host_port(entry: &str) -> Result<(&str, u16), BadHost> {
    let bad = || BadHost {
        entry: entry.to_owned(),
    };
    let (host, port) = entry.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

/// How long one host name's lookup may take before it counts as failed.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Strategy for StaticHosts {
    fn kind(&self) -> &'static str {
        "static"
    }

    async fn run(self, ctx: Context) {
        let mut resolved: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
        loop {
            let mut errors = Vec::new();
            for entry in &self.config.hosts {
                match split_host_port(entry) {
                    Err(e) => errors.push(e.to_string()),
                    Ok((host, port)) => {
                        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                            resolved.insert(entry.clone(), vec![SocketAddr::new(ip, port)]);
                            continue;
                        }
                        let lookup = tokio::time::timeout(
                            RESOLVE_TIMEOUT,
                            tokio::net::lookup_host((host, port)),
                        );
                        let answer = tokio::select! {
                            _ = ctx.shutdown() => return,
                            answer = lookup => answer,
                        };
                        match answer {
                            Ok(Ok(addrs)) => {
                                resolved.insert(entry.clone(), addrs.collect());
                            }
                            Ok(Err(e)) => errors.push(format!("cannot resolve {entry}: {e}")),
                            Err(_) => errors.push(format!(
                                "cannot resolve {entry}: no answer within {RESOLVE_TIMEOUT:?}"
                            )),
                        }
                    }
                }
            }
            let peers: PeerSet = resolved
                .values()
                .flatten()
                .copied()
                .map(Peer::new)
                .collect();
            // A host that does not resolve keeps its last addresses (an error is not an
            // answer); the error is logged when it starts or changes, not every round.
            if errors.is_empty() {
                ctx.report(peers);
            } else {
                ctx.report_degraded(peers);
                ctx.failing(&errors.join("; "));
            }
            if !ctx.sleep(self.config.resolve_interval).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cookie::Cookie;
    use crate::node::Node;

    #[test]
    fn splits_host_and_port() {
        assert_eq!(split_host_port("a:1").unwrap(), ("a", 1));
        assert_eq!(split_host_port("[::1]:45893").unwrap(), ("::1", 45893));
        assert!(split_host_port("a").is_err());
        assert!(split_host_port("a:x").is_err());
        assert!(split_host_port(":5").is_err());
        assert!(split_host_port("a:0").is_err());
        assert!(
            StaticHosts::from_config(Config {
                hosts: vec!["nope".into()],
                ..Config::default()
            })
            .is_err()
        );
    }

    #[tokio::test]
    async fn reports_resolved_hosts_and_keeps_them_through_failures() {
        let me = Node {
            name: "me@127.0.0.1".parse().unwrap(),
            addr: "127.0.0.1:1".parse().unwrap(),
            incarnation: 1,
        };
        let (ctx, mut handle) = Context::new("peers", "static", me, Cookie::new("c"));
        let s = StaticHosts::new([
            "127.0.0.1:2",
            "localhost:3",
            "127.0.0.1:1",
            "no-such-host.invalid:4",
        ])
        .resolve_interval(Duration::from_millis(50));
        let task = tokio::spawn(s.run(ctx));
        let st = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                handle.status.changed().await.unwrap();
                let st = handle.status.borrow().clone();
                if st.reported && st.last_error.is_some() {
                    return st;
                }
            }
        })
        .await
        .expect("strategy reports");
        let addrs: Vec<SocketAddr> = st.peers.iter().map(|p| p.addr).collect();
        assert!(addrs.contains(&"127.0.0.1:2".parse().unwrap()));
        assert!(
            addrs.iter().any(|a| a.port() == 3),
            "localhost resolved: {addrs:?}"
        );
        assert!(
            !addrs.contains(&"127.0.0.1:1".parse().unwrap()),
            "self excluded"
        );
        assert!(st.last_error.unwrap().contains("no-such-host.invalid"));
        // Round after round the failure stays one failure: the error is never cleared
        // (a clear would log a recovery and the next round a new warning, and restart
        // `failing_since`).
        let since = st.failing_since.expect("failing since");
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                handle.status.changed().await.unwrap();
                let st = handle.status.borrow().clone();
                assert!(
                    st.last_error.is_some(),
                    "error cleared while failing: {st:?}"
                );
                assert_eq!(st.failing_since, Some(since), "one run of failures");
                if st.errors_total >= 3 {
                    return;
                }
            }
        })
        .await
        .expect("three rounds");
        handle.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }
}
