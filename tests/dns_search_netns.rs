//! The DNS strategy with the system's resolver, as in a Kubernetes pod: three daemons,
//! each on a host whose `/etc/resolv.conf` names a DNS server on another host and two
//! search domains, query a bare name (`pods`). The first search domain has no such name
//! (NXDOMAIN), the second has the three addresses: the daemons find each other.
//!
//! `ip netns exec` puts `/etc/netns/<namespace>/resolv.conf` over `/etc/resolv.conf` for
//! what it runs; the test writes those files and removes them afterwards. Needs root.

#[path = "support/dns_server.rs"]
mod dns_server;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/switch.rs"]
mod switch;

use std::path::PathBuf;
use std::time::Duration;

use fleet::{FAST, wait_full_mesh};

/// Removes the per-namespace `/etc/netns/<ns>` directories when dropped.
struct ResolvConfs(Vec<PathBuf>);

impl Drop for ResolvConfs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(feature = "dns")]
#[test]
fn a_bare_name_is_completed_with_the_search_domains_of_resolv_conf() {
    if !netns::require_root("a_bare_name_is_completed_with_the_search_domains_of_resolv_conf") {
        return;
    }
    let net = switch::Net::new(4).expect("the test network");
    let server = net.host(3).ip;
    let ips: Vec<std::net::IpAddr> = (0..3).map(|i| net.host(i).ip.into()).collect();
    let dns = fleet::OnHost::start(&net, 3, move || async move {
        let s = dns_server::DnsServer::start_on(server.into(), 53).await;
        s.set_ips("pods.rp.test.", &ips, 1).await;
        s
    });
    let mut confs = ResolvConfs(Vec::new());
    for i in 0..3 {
        let dir = PathBuf::from("/etc/netns").join(&net.host(i).ns);
        std::fs::create_dir_all(&dir).expect("/etc/netns/<ns>");
        confs.0.push(dir.clone());
        std::fs::write(
            dir.join("resolv.conf"),
            format!(
                "nameserver {server}\nsearch svc.rp.test rp.test\noptions timeout:1 attempts:2\n"
            ),
        )
        .expect("resolv.conf");
    }
    let topology = format!(
        "{FAST}\n[topologies.pods]\nstrategy = \"dns\"\nquery = \"pods\"\ninterval = \"500ms\"\n"
    );
    let ds = fleet::start_apps(&net, 3, "dns-search-test-cookie", &topology);
    wait_full_mesh(&ds, Duration::from_secs(60));
    // Both search domains were asked, in order.
    let asked: Vec<String> = dns.get().queries().into_iter().map(|(_, n, _)| n).collect();
    assert!(asked.iter().any(|n| n == "pods.svc.rp.test."), "{asked:?}");
    assert!(asked.iter().any(|n| n == "pods.rp.test."), "{asked:?}");
    for d in &ds {
        d.observer.assert_clean();
    }
    drop(ds);
    drop(confs);
}
