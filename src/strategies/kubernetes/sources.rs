//! How each resource's objects turn into peers: which endpoints count (readiness,
//! termination), which port, and the node name per naming mode.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::{Config, Mode};
use crate::node::NodeName;
use crate::strategies::{Context, Peer};

/// The label an EndpointSlice carries with the name of its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What turns an endpoint into a [`Peer`]: the naming mode and its parts, the port.
pub(super) struct Rules {
    pub(super) basename: String,
    pub(super) namespace: String,
    pub(super) mode: Mode,
    pub(super) cluster_domain: String,
    pub(super) service: Option<String>,
    pub(super) port_name: String,
    pub(super) default_port: u16,
    pub(super) include_not_ready: bool,
}

impl Rules {
    pub(super) fn new(config: &Config, ctx: &Context, namespace: &str) -> Self {
        Rules {
            basename: config
                .node_basename
                .clone()
                .unwrap_or_else(|| ctx.local().name.basename().to_owned()),
            namespace: namespace.to_owned(),
            mode: config.mode,
            cluster_domain: config.cluster_domain.clone(),
            service: config.service.clone(),
            port_name: config.port_name.clone(),
            default_port: ctx.local().addr.port(),
            include_not_ready: config.include_not_ready,
        }
    }

    /// The port: the named one when present and valid, else this node's own.
    pub(super) fn port(&self, named: Option<i32>) -> u16 {
        named
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0)
            .unwrap_or(self.default_port)
    }

    /// A peer from an address string, a port and, for `hostname` mode, the endpoint's
    /// hostname and Service. `None` when the address does not parse or the name cannot
    /// be formed.
    pub(super) fn peer(
        &self,
        ip: &str,
        port: u16,
        host: Option<(&str, Option<&str>)>,
    ) -> Option<Peer> {
        let ip: IpAddr = ip.trim().parse().ok()?;
        let host = match self.mode {
            Mode::Ip => ip.to_string(),
            Mode::Dns => {
                let dashed: String = ip
                    .to_string()
                    .chars()
                    .map(|c| if c == '.' || c == ':' { '-' } else { c })
                    .collect();
                format!("{dashed}.{}.pod.{}", self.namespace, self.cluster_domain)
            }
            Mode::Hostname => {
                let (hostname, service) = host?;
                let service = self.service.as_deref().or(service)?;
                if hostname.is_empty() {
                    return None;
                }
                format!(
                    "{hostname}.{service}.{}.svc.{}",
                    self.namespace, self.cluster_domain
                )
            }
        };
        let name = NodeName::new(&self.basename, &host).ok()?;
        Some(Peer::named(name, SocketAddr::new(ip, port)))
    }
}

/// Where a [`Source`] sends each endpoint it takes: `(ip, port, Some((hostname,
/// service)))`, the hostname empty and the service `None` where unknown.
type Emit<'a> = dyn FnMut(&str, u16, Option<(&str, Option<&str>)>) + 'a;

/// A resource the strategy can read peers from.
pub(super) trait Source:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// Calls `out(ip, port, Some((hostname, service)))` for each endpoint to take.
    fn peers(&self, rules: &Rules, out: &mut Emit<'_>);
}

impl Source for EndpointSlice {
    fn peers(&self, rules: &Rules, out: &mut Emit<'_>) {
        if self.address_type != "IPv4" && self.address_type != "IPv6" {
            return; // FQDN slices name hosts, not addresses
        }
        let port = rules.port(
            self.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(rules.port_name.as_str()))
                .and_then(|p| p.port),
        );
        let service = self.labels().get(SERVICE_NAME_LABEL).map(String::as_str);
        for ep in &self.endpoints {
            let c = ep.conditions.as_ref();
            // `ready` unset means ready; older producers may set only `serving`.
            let ready = c.and_then(|c| c.ready.or(c.serving)).unwrap_or(true);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            if terminating || !(ready || rules.include_not_ready) {
                continue;
            }
            // Addresses are fungible; consumers may take the first.
            let Some(addr) = ep.addresses.first() else {
                continue;
            };
            out(
                addr,
                port,
                Some((ep.hostname.as_deref().unwrap_or(""), service)),
            );
        }
    }
}

impl Source for Endpoints {
    fn peers(&self, rules: &Rules, out: &mut Emit<'_>) {
        let service = self.metadata.name.as_deref();
        for subset in self.subsets.iter().flatten() {
            let port = rules.port(
                subset
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(rules.port_name.as_str()))
                    .map(|p| p.port),
            );
            let mut take = |a: &EndpointAddress| {
                out(
                    &a.ip,
                    port,
                    Some((a.hostname.as_deref().unwrap_or(""), service)),
                );
            };
            subset.addresses.iter().flatten().for_each(&mut take);
            if rules.include_not_ready {
                subset
                    .not_ready_addresses
                    .iter()
                    .flatten()
                    .for_each(&mut take);
            }
        }
    }
}

impl Source for Pod {
    fn peers(&self, rules: &Rules, out: &mut Emit<'_>) {
        if self.metadata.deletion_timestamp.is_some() {
            return; // terminating
        }
        let Some(status) = &self.status else { return };
        let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) else {
            return;
        };
        let phase = status.phase.as_deref().unwrap_or("");
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let take = if rules.include_not_ready {
            !matches!(phase, "Succeeded" | "Failed")
        } else {
            phase == "Running" && ready
        };
        if !take {
            return;
        }
        let spec = self.spec.as_ref();
        let port = rules.port(
            spec.into_iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(rules.port_name.as_str()))
                .map(|p| p.container_port),
        );
        // A pod's hostname is spec.hostname, else its name; it has a DNS name under
        // its subdomain (a headless Service).
        let hostname = spec
            .and_then(|s| s.hostname.as_deref())
            .or(self.metadata.name.as_deref())
            .unwrap_or("");
        let subdomain = spec.and_then(|s| s.subdomain.as_deref());
        out(ip, port, Some((hostname, subdomain)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(mode: Mode) -> Rules {
        Rules {
            basename: "app".into(),
            namespace: "prod".into(),
            mode,
            cluster_domain: "cluster.local".into(),
            service: None,
            port_name: "cluster".into(),
            default_port: 45893,
            include_not_ready: false,
        }
    }

    #[test]
    fn names_per_mode() {
        let p = rules(Mode::Ip).peer("10.0.0.5", 7, None).unwrap();
        assert_eq!(p.name.unwrap().as_str(), "app@10.0.0.5");
        assert_eq!(p.addr, "10.0.0.5:7".parse().unwrap());
        let p = rules(Mode::Dns).peer("10.0.0.5", 7, None).unwrap();
        assert_eq!(
            p.name.unwrap().as_str(),
            "app@10-0-0-5.prod.pod.cluster.local"
        );
        let p = rules(Mode::Dns).peer("fd00::5", 7, None).unwrap();
        assert_eq!(
            p.name.unwrap().as_str(),
            "app@fd00--5.prod.pod.cluster.local"
        );
        let p = rules(Mode::Hostname)
            .peer("10.0.0.5", 7, Some(("web-0", Some("web"))))
            .unwrap();
        assert_eq!(
            p.name.unwrap().as_str(),
            "app@web-0.web.prod.svc.cluster.local"
        );
        assert!(rules(Mode::Hostname).peer("10.0.0.5", 7, None).is_none());
        assert!(
            rules(Mode::Hostname)
                .peer("10.0.0.5", 7, Some(("", Some("web"))))
                .is_none()
        );
        assert!(
            rules(Mode::Hostname)
                .peer("10.0.0.5", 7, Some(("w", None)))
                .is_none()
        );
        let mut r = rules(Mode::Hostname);
        r.service = Some("svc".into());
        let p = r.peer("10.0.0.5", 7, Some(("w", Some("other")))).unwrap();
        assert_eq!(p.name.unwrap().as_str(), "app@w.svc.prod.svc.cluster.local");
        assert!(rules(Mode::Ip).peer("not-an-ip", 7, None).is_none());
        assert_eq!(rules(Mode::Ip).port(Some(70000)), 45893);
        assert_eq!(rules(Mode::Ip).port(Some(0)), 45893);
        assert_eq!(rules(Mode::Ip).port(Some(9000)), 9000);
    }
}
