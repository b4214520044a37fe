//! Kubernetes objects for the fake API server, in the shapes the real API returns
//! (the fields a kubelet, the EndpointSlice controller and the Endpoints controller
//! fill in, trimmed to what matters for discovery).

#![allow(dead_code)]

use serde_json::{Map, Value, json};

/// The port name the strategy looks for by default.
pub const PORT_NAME: &str = "cluster";

fn labels(pairs: &[(&str, &str)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect::<Map<_, _>>(),
    )
}

/// A pod with `labels`, IP `ip` (none: not yet scheduled), phase Running when it has
/// an IP (else Pending), and a Ready condition `ready`. Its container exposes port
/// `port` named `cluster`.
pub fn pod(
    ns: &str,
    name: &str,
    pairs: &[(&str, &str)],
    ip: Option<&str>,
    ready: bool,
    port: u16,
) -> Value {
    let mut status = json!({
        "phase": if ip.is_some() { "Running" } else { "Pending" },
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2025-01-01T00:00:00Z"},
            {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2025-01-01T00:00:01Z"},
            {"type": "ContainersReady", "status": if ready { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": "2025-01-01T00:00:02Z"},
            {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": "2025-01-01T00:00:02Z"}
        ],
        "hostIP": "192.168.49.2",
        "hostIPs": [{"ip": "192.168.49.2"}],
        "startTime": "2025-01-01T00:00:00Z",
        "qosClass": "BestEffort"
    });
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels(pairs)},
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1.0",
                "ports": [
                    {"name": PORT_NAME, "containerPort": port, "protocol": "TCP"},
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"}
                ],
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "nodeName": "node-1",
            "schedulerName": "default-scheduler"
        },
        "status": status
    })
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug)]
pub struct Ep {
    pub ip: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub hostname: Option<String>,
    pub pod: String,
}

impl Ep {
    /// A ready endpoint for pod `pod` at `ip`.
    pub fn ready(ip: &str, pod: &str) -> Ep {
        Ep {
            ip: ip.to_owned(),
            ready: true,
            serving: true,
            terminating: false,
            hostname: None,
            pod: pod.to_owned(),
        }
    }
    /// Not ready (failing its readiness probe).
    pub fn not_ready(mut self) -> Ep {
        self.ready = false;
        self.serving = false;
        self
    }
    /// Terminating but still serving (as during graceful shutdown).
    pub fn terminating(mut self) -> Ep {
        self.ready = false;
        self.serving = true;
        self.terminating = true;
        self
    }
    /// With a hostname (a pod with `hostname` and `subdomain` set, as StatefulSets do).
    pub fn hostname(mut self, h: &str) -> Ep {
        self.hostname = Some(h.to_owned());
        self
    }
}

/// An EndpointSlice of Service `service` with `endpoints`, and the port named
/// `cluster` when `port` is given (plus an unnamed-looking `http` port).
pub fn endpoint_slice(
    ns: &str,
    name: &str,
    service: &str,
    port: Option<u16>,
    endpoints: &[Ep],
) -> Value {
    let mut ports = vec![json!({"name": "http", "port": 8080, "protocol": "TCP"})];
    if let Some(p) = port {
        ports.push(json!({"name": PORT_NAME, "port": p, "protocol": "TCP"}));
    }
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            let mut v = json!({
                "addresses": [e.ip],
                "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                "targetRef": {"kind": "Pod", "namespace": ns, "name": e.pod, "uid": format!("uid-{}", e.pod)},
                "nodeName": "node-1",
                "zone": "zone-a"
            });
            if let Some(h) = &e.hostname {
                v["hostname"] = json!(h);
            }
            v
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns,
            "generateName": format!("{service}-"),
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
            },
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service, "uid": format!("uid-svc-{service}"), "controller": true, "blockOwnerDeletion": true}]
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": ports
    })
}

/// An Endpoints object of Service `name`: `ready` and `not_ready` addresses as
/// `(ip, hostname)`, and the port named `cluster` when `port` is given.
pub fn endpoints(
    ns: &str,
    name: &str,
    ready: &[(&str, Option<&str>)],
    not_ready: &[(&str, Option<&str>)],
    port: Option<u16>,
) -> Value {
    let addr = |(ip, host): &(&str, Option<&str>)| {
        let mut v = json!({"ip": ip, "nodeName": "node-1", "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("pod-{ip}")}});
        if let Some(h) = host {
            v["hostname"] = json!(h);
        }
        v
    };
    let mut ports = vec![json!({"name": "http", "port": 8080, "protocol": "TCP"})];
    if let Some(p) = port {
        ports.push(json!({"name": PORT_NAME, "port": p, "protocol": "TCP"}));
    }
    let mut subset = json!({"ports": ports});
    if !ready.is_empty() {
        subset["addresses"] = json!(ready.iter().map(addr).collect::<Vec<_>>());
    }
    if !not_ready.is_empty() {
        subset["notReadyAddresses"] = json!(not_ready.iter().map(addr).collect::<Vec<_>>());
    }
    let subsets = if ready.is_empty() && not_ready.is_empty() {
        json!([])
    } else {
        json!([subset])
    };
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "subsets": subsets
    })
}
