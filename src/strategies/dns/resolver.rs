//! The resolver the DNS strategy asks: the [`Resolve`] trait (injected, so the strategy
//! can be tested with a scripted resolver) and [`HickoryResolver`], the real one.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};

/// Which address records to ask for: A (IPv4) or AAAA (IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// A records.
    V4,
    /// AAAA records.
    V6,
}

impl Family {
    /// The record type's name, `A` or `AAAA`.
    pub fn record_type(self) -> &'static str {
        match self {
            Family::V4 => "A",
            Family::V6 => "AAAA",
        }
    }
}

/// One SRV record's target and port (priority and weight play no part in discovery).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Srv {
    /// The target host, as in the record (`web-0.web.ns.svc.cluster.local.`).
    pub target: String,
    /// The port.
    pub port: u16,
}

/// A successful answer: the records (empty for NXDOMAIN or no data of that type, which is
/// a real answer: nothing is there) and how long the answer may be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer<T> {
    /// The records of the asked type.
    pub records: Vec<T>,
    /// The answer's time to live: the least TTL of its records, or for an empty answer
    /// the negative TTL from the zone's SOA. `None` when the server gave none.
    pub ttl: Option<Duration>,
}

/// Why a lookup gave no answer. Any of these keeps the last good answer in force.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No usable answer came in time (no server answered, or only with garbage).
    #[error("timed out")]
    Timeout,
    /// A server answered with an error code (`SERVFAIL`, `REFUSED`, …).
    #[error("server answered {0}")]
    ResponseCode(String),
    /// Anything else: a network error, a malformed or truncated answer, a resolver that
    /// could not be set up.
    #[error("{0}")]
    Other(String),
}

impl LookupError {
    /// The counter this error is counted under.
    pub(crate) fn counter(&self) -> &'static str {
        match self {
            LookupError::Timeout => "errors_timeout",
            LookupError::ResponseCode(_) => "errors_response_code",
            LookupError::Other(_) => "errors_other",
        }
    }
}

/// A DNS resolver, as the DNS strategy uses it. Implement it to script answers in tests.
///
/// Names are passed as configured (a name without a final dot may be completed with the
/// resolver's search domains), SRV targets with their final dot.
pub trait Resolve: Send + Sync + 'static {
    /// Looks up the A or AAAA records of `name`.
    fn lookup_ip(
        &self,
        name: &str,
        family: Family,
    ) -> impl Future<Output = Result<Answer<IpAddr>, LookupError>> + Send;

    /// Looks up the SRV records of `name`.
    fn lookup_srv(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Answer<Srv>, LookupError>> + Send;
}

/// Where [`HickoryResolver`] sends its queries.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Servers {
    /// The system's configuration (`/etc/resolv.conf`: servers, search domains, ndots,
    /// timeout, attempts).
    System,
    /// These servers (UDP, then TCP for truncated answers), no search domains.
    Given(Vec<SocketAddr>),
}

/// The real resolver, built on `hickory-resolver`: the system's configuration or given
/// name servers, its cache off (each poll asks the server), `/etc/hosts` not consulted.
///
/// It is set up at the first lookup, and again at the next one if that failed (an
/// unreadable `/etc/resolv.conf` is reported as a lookup failure, not a panic).
pub struct HickoryResolver {
    servers: Servers,
    timeout: Option<Duration>,
    built: Mutex<Option<TokioResolver>>,
}

impl std::fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryResolver")
            .field("servers", &self.servers)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HickoryResolver {
    /// A resolver with the system's configuration (`/etc/resolv.conf`, search domains
    /// honoured, as Kubernetes pods need).
    pub fn system() -> Self {
        Self::make(Servers::System, None)
    }

    /// A resolver that asks these servers only (no search domains).
    pub fn with_nameservers(servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self::make(Servers::Given(servers.into_iter().collect()), None)
    }

    /// Sets how long one query waits for an answer (default: `/etc/resolv.conf`'s
    /// `timeout`, else 5 s). The resolver tries each query up to its `attempts` times.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn make(servers: Servers, timeout: Option<Duration>) -> Self {
        HickoryResolver {
            servers,
            timeout,
            built: Mutex::new(None),
        }
    }

    fn resolver(&self) -> Result<TokioResolver, LookupError> {
        let mut built = self
            .built
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(r) = &*built {
            return Ok(r.clone());
        }
        let r = self.build()?;
        *built = Some(r.clone());
        Ok(r)
    }

    fn build(&self) -> Result<TokioResolver, LookupError> {
        let mut builder = match &self.servers {
            Servers::System => TokioResolver::builder_tokio().map_err(|e| {
                LookupError::Other(format!(
                    "cannot read the system's resolver configuration: {e}"
                ))
            })?,
            Servers::Given(addrs) => {
                let servers = addrs
                    .iter()
                    .map(|a| {
                        let mut udp = ConnectionConfig::udp();
                        udp.port = a.port();
                        let mut tcp = ConnectionConfig::tcp();
                        tcp.port = a.port();
                        NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                    })
                    .collect();
                let mut b = TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), servers),
                    TokioRuntimeProvider::default(),
                );
                *b.options_mut() = ResolverOpts::default();
                b
            }
        };
        let opts = builder.options_mut();
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        if let Some(t) = self.timeout {
            opts.timeout = t;
        }
        builder
            .build()
            .map_err(|e| LookupError::Other(format!("cannot set up the resolver: {e}")))
    }

    async fn lookup<T>(
        &self,
        name: &str,
        record_type: RecordType,
        pick: impl Fn(&RData) -> Option<T>,
    ) -> Result<Answer<T>, LookupError> {
        let resolver = self.resolver()?;
        match resolver.lookup(name, record_type).await {
            Ok(lookup) => {
                let answers = lookup.answers();
                let ttl = answers.iter().map(|r| r.ttl).min();
                Ok(Answer {
                    records: answers.iter().filter_map(|r| pick(&r.data)).collect(),
                    ttl: ttl.map(|s| Duration::from_secs(u64::from(s))),
                })
            }
            Err(e) => classify(e),
        }
    }
}

/// Sorts a resolver error: a negative answer is an empty answer; the rest are failures.
fn classify<T>(e: NetError) -> Result<Answer<T>, LookupError> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no)) => {
            let negative = matches!(
                no.response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            );
            // A referral (name servers, no SOA) from a server that does not recurse is
            // not an answer about the name.
            let referral = no.soa.is_none() && no.ns.is_some();
            if negative && !referral {
                Ok(Answer {
                    records: Vec::new(),
                    ttl: no.negative_ttl.map(|s| Duration::from_secs(u64::from(s))),
                })
            } else if referral {
                Err(LookupError::Other(
                    "the server sent a referral instead of an answer (is it recursive?)".into(),
                ))
            } else {
                Err(LookupError::ResponseCode(rcode_name(no.response_code)))
            }
        }
        NetError::Dns(DnsError::ResponseCode(code)) => {
            Err(LookupError::ResponseCode(rcode_name(code)))
        }
        NetError::Timeout => Err(LookupError::Timeout),
        other => Err(LookupError::Other(other.to_string())),
    }
}

/// The mnemonic of a response code (`SERVFAIL`), or its number.
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        other => format!("response code {}", u16::from(other)),
    }
}

impl Resolve for HickoryResolver {
    async fn lookup_ip(&self, name: &str, family: Family) -> Result<Answer<IpAddr>, LookupError> {
        match family {
            Family::V4 => {
                self.lookup(name, RecordType::A, |d| match d {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .await
            }
            Family::V6 => {
                self.lookup(name, RecordType::AAAA, |d| match d {
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
                .await
            }
        }
    }

    async fn lookup_srv(&self, name: &str) -> Result<Answer<Srv>, LookupError> {
        self.lookup(name, RecordType::SRV, |d| match d {
            RData::SRV(s) => Some(Srv {
                target: s.target.to_ascii(),
                port: s.port,
            }),
            _ => None,
        })
        .await
    }
}
