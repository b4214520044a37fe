#!/usr/bin/env python3
"""Checks the Helm chart charts/rallypoint with the real Helm engine.

For the default values and for each file in charts/rallypoint/ci/*.yaml:

1. `helm lint --strict` (Helm's Go SDK, through the PyPI package helm-python-sdk);
2. `helm template` (the same SDK, offline: `lookup` finds nothing);
3. every rendered manifest is validated against the Kubernetes 1.33 JSON schemas shipped
   in the PyPI package kubernetes-validate, strictly (an unknown field is an error);
4. what the chart promises is asserted: a headless Service with a port named `cluster`,
   the workload and its pods (restricted security context, exec probes of
   `rallypoint probe live|ready` against the API's address, the daemon's arguments, cookie and token from Secrets), a Role granting
   exactly get/list/watch on the one resource the kubernetes strategy reads (none for
   dns), and a rallypoint configuration that agrees with all of that;
5. the rendered config.toml is written to OUT/<case>.toml, and the arguments of
   `rallypoint check-config` for it (one a line: the pod's own --name, with the
   downward-API variables filled in) to OUT/<case>.args, for tests/chart.rs.

Then values the chart must refuse are rendered, and each must fail with its message.

Usage: scripts/chart_check.py --out DIR [--chart DIR] [--rallypoint BIN]
With --rallypoint, also runs `BIN check-config` on each rendered configuration.
Exit status: 0 when everything holds; 1 on any failure (each one printed); 3 when a
Python package is missing (the message says which and how to install it).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MISSING = 3

try:
    import helm_python as helm
    import kubernetes_validate
    import kubernetes_validate.utils as kv_utils
    import yaml
except ImportError as e:  # pragma: no cover - depends on the machine
    print(
        f"chart_check: missing Python package ({e}); install them with "
        "`pip install helm-python-sdk==0.2.2 kubernetes-validate==1.37.0` "
        "(scripts/setup.sh does)",
        file=sys.stderr,
    )
    sys.exit(MISSING)
try:
    import tomllib
except ImportError:  # Python < 3.11
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ImportError:
        print("chart_check: needs Python 3.11 (tomllib) or the package tomli", file=sys.stderr)
        sys.exit(MISSING)

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "rallypoint"
KUBE_VERSION = "1.33.0"
RELEASE = "demo"
NAMESPACE = "apps"
CONFIG_PATH = "/etc/rallypoint/config.toml"
VERBS = ["get", "list", "watch"]
API_GROUPS = {"endpointslices": "discovery.k8s.io", "endpoints": "", "pods": ""}
# What the kubelet puts in the downward-API variables, for the check-config arguments.
SAMPLE_POD_IP = {"v4": "10.42.0.7", "v6": "fd00:42::7"}

# Values the chart must refuse, and a piece of the message each must fail with.
REFUSED = [
    ("no cookie and generation off", {"cookie": {"generate": False}}, "no cookie"),
    (
        "kubernetes mode dns",
        {"rallypoint": {"kubernetes": {"mode": "dns"}}},
        "mode: dns is not offered",
    ),
    (
        "hostname names in a Deployment",
        {"kind": "Deployment", "rallypoint": {"kubernetes": {"mode": "hostname"}}},
        "need kind StatefulSet",
    ),
    (
        "SRV names in a Deployment",
        {"kind": "Deployment", "rallypoint": {"strategy": "dns", "dns": {"record": "srv"}}},
        "need kind StatefulSet",
    ),
    ("min_members not below replicas", {"replicas": 2, "rallypoint": {"minMembers": 2}}, "must be below replicas"),
    (
        "pods, min_members and only ready pods",
        {"rallypoint": {"minMembers": 1, "kubernetes": {"resource": "pods"}}},
        "includeNotReady",
    ),
    ("another strategy", {"rallypoint": {"strategy": "gossip"}}, "not supported by this chart"),
    ("another resource", {"rallypoint": {"kubernetes": {"resource": "services"}}}, "use endpointslices, endpoints or pods"),
    ("a token with a space", {"httpToken": {"value": "two words"}}, "printable ASCII without spaces"),
    ("a cookie shorter than 16 bytes", {"cookie": {"value": "  fifteen-bytes!!  "}}, "at least 16 bytes"),
    ("a membership key in camelCase", {"rallypoint": {"membership": {"downAfter": "3s"}}}, "snake_case"),
]


class Case:
    """One set of values: its name, the values, and the failures found."""

    def __init__(self, name: str, values: dict[str, Any]):
        self.name = name
        self.values = values
        self.failures: list[str] = []

    def expect(self, ok: bool, message: str) -> bool:
        if not ok:
            self.failures.append(message)
        return ok


def get(d: Any, *path: str, default: Any = None) -> Any:
    """d[path[0]][path[1]]..., or default when any step is missing."""
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def lint(case: Case) -> None:
    report = helm.lint(
        str(CHART),
        case.values,
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSION}",
    )
    for error in report.get("errors") or []:
        case.failures.append(f"helm lint: {error}")
    for m in report.get("messages") or []:
        # 1 = info (e.g. "icon is recommended"), 2 = warning, 3 = error.
        if m.get("severity", 0) >= 2:
            case.failures.append(f"helm lint: {m.get('path')}: {m.get('error')}")


def render(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, revision=1, is_install=True)


def merged_values(values: dict[str, Any]) -> dict[str, Any]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.merge_values(values)


def validate_schemas(case: Case, docs: list[tuple[str, dict[str, Any]]]) -> None:
    for template, doc in docs:
        what = f"{template}: {doc.get('kind')}/{get(doc, 'metadata', 'name')}"
        try:
            version = kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kv_utils.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            case.failures.append(f"{what}: invalid for Kubernetes {e.version} (strict): {path}: {e.message}")
            continue
        except kv_utils.SchemaNotFoundError as e:
            case.failures.append(f"{what}: {e.message}")
            continue
        case.expect(
            version == "1.33",
            f"{what}: validated against Kubernetes {version}, not 1.33 (kubernetes-validate too old?)",
        )


def probe_command(probe: dict[str, Any]) -> list[str]:
    """The command of an exec probe (empty when the probe is not one)."""
    return [str(a) for a in get(probe, "exec", "command", default=[]) or []]


def flag(command: list[str], name: str) -> str | None:
    """The value after `name` in a command line, if any."""
    for i, a in enumerate(command[:-1]):
        if a == name:
            return command[i + 1]
    return None


def env_by_name(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env") or []}


def secret_ref(case: Case, env: dict[str, dict[str, Any]], var: str, secrets: dict[str, dict[str, Any]],
               existing: str, existing_key: str) -> None:
    ref = get(env.get(var), "valueFrom", "secretKeyRef")
    if not case.expect(ref is not None, f"daemon: {var} is not taken from a Secret (secretKeyRef)"):
        return
    if existing:
        case.expect(
            ref.get("name") == existing and ref.get("key") == existing_key,
            f"daemon: {var} should come from Secret {existing} key {existing_key}, not {ref}",
        )
        return
    secret = secrets.get(ref.get("name"))
    if case.expect(secret is not None, f"daemon: {var} refers to Secret {ref.get('name')}, which the chart does not render"):
        case.expect(
            ref.get("key") in (secret.get("data") or {}),
            f"daemon: {var} refers to key {ref.get('key')}, missing from Secret {ref.get('name')}",
        )


def check(case: Case, docs: list[tuple[str, dict[str, Any]]], notes: str, v: dict[str, Any]) -> tuple[str, list[str]] | None:
    """Asserts what the chart promises; returns the config.toml and the --name."""
    r = v["rallypoint"]
    strategy = r["strategy"]
    kinds: dict[str, list[dict[str, Any]]] = {}
    for _, doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    for _, doc in docs:
        case.expect(
            get(doc, "metadata", "namespace") is not None,
            f"{doc['kind']}/{get(doc, 'metadata', 'name')}: no metadata.namespace",
        )

    # The headless Service.
    headless = [s for s in kinds.get("Service", []) if get(s, "spec", "clusterIP") == "None"]
    if not case.expect(len(headless) == 1, f"expected one headless Service (clusterIP: None), found {len(headless)}"):
        return None
    svc = headless[0]
    svc_name = svc["metadata"]["name"]
    case.expect(get(svc, "spec", "publishNotReadyAddresses") is True, "Service: publishNotReadyAddresses is not true")
    cluster_ports = [p for p in get(svc, "spec", "ports", default=[]) if p.get("name") == "cluster"]
    if case.expect(len(cluster_ports) == 1, "Service: no port named cluster"):
        p = cluster_ports[0]
        case.expect(p.get("port") == r["clusterPort"], f"Service: port cluster is {p.get('port')}, not {r['clusterPort']}")
        case.expect(p.get("protocol", "TCP") == "TCP", "Service: port cluster is not TCP")

    # The workload.
    workloads = kinds.get("StatefulSet", []) + kinds.get("Deployment", [])
    if not case.expect(len(workloads) == 1, f"expected one StatefulSet or Deployment, found {len(workloads)}"):
        return None
    w = workloads[0]
    case.expect(w["kind"] == v["kind"], f"workload is a {w['kind']}, values say {v['kind']}")
    case.expect(get(w, "spec", "replicas") == v["replicas"], f"workload: replicas {get(w, 'spec', 'replicas')}, values say {v['replicas']}")
    if w["kind"] == "StatefulSet":
        case.expect(get(w, "spec", "serviceName") == svc_name, f"StatefulSet: serviceName {get(w, 'spec', 'serviceName')}, not the headless Service {svc_name}")
    pod_labels = get(w, "spec", "template", "metadata", "labels", default={})
    selector = get(svc, "spec", "selector", default={})
    case.expect(
        bool(selector) and all(pod_labels.get(k) == val for k, val in selector.items()),
        f"Service selector {selector} does not match the pods' labels {pod_labels}",
    )
    pod = get(w, "spec", "template", "spec", default={})
    case.expect(pod.get("enableServiceLinks") is False, "pod: enableServiceLinks is not false (RALLYPOINT_* service variables would be read as configuration keys)")
    psc = pod.get("securityContext") or {}
    case.expect(psc.get("runAsNonRoot") is True, "pod securityContext: runAsNonRoot is not true")
    case.expect(psc.get("runAsUser") == 65532, f"pod securityContext: runAsUser is {psc.get('runAsUser')}, not 65532")
    case.expect(get(psc, "seccompProfile", "type") == "RuntimeDefault", "pod securityContext: seccompProfile is not RuntimeDefault")

    containers = pod.get("containers") or []
    inits = pod.get("initContainers") or []
    for c in containers + inits:
        sc = c.get("securityContext") or {}
        n = c.get("name")
        case.expect(sc.get("readOnlyRootFilesystem") is True, f"container {n}: readOnlyRootFilesystem is not true")
        case.expect(sc.get("runAsNonRoot") is True, f"container {n}: runAsNonRoot is not true")
        case.expect(sc.get("runAsUser") == 65532, f"container {n}: runAsUser is {sc.get('runAsUser')}, not 65532")
        case.expect(sc.get("allowPrivilegeEscalation") is False, f"container {n}: allowPrivilegeEscalation is not false")
        case.expect("ALL" in (get(sc, "capabilities", "drop") or []), f"container {n}: capabilities do not drop ALL")
        case.expect(get(sc, "seccompProfile", "type") == "RuntimeDefault", f"container {n}: seccompProfile is not RuntimeDefault")

    has_app = bool(v["app"]["image"]["repository"])
    native = bool(r["nativeSidecar"]) and has_app
    daemons = [c for c in (inits if native else containers) if c.get("name") == "rallypoint"]
    if not case.expect(len(daemons) == 1, f"no rallypoint container among the pod's {'initContainers' if native else 'containers'}"):
        return None
    d = daemons[0]
    apps = [c for c in containers if c.get("name") == v["app"]["name"]]
    case.expect(len(apps) == (1 if has_app else 0), f"expected {1 if has_app else 0} application container(s), found {len(apps)}")
    if native:
        case.expect(d.get("restartPolicy") == "Always", "native sidecar: restartPolicy is not Always")
        case.expect(probe_command(d.get("startupProbe") or {})[:3] == ["rallypoint", "probe", "live"],
                    "native sidecar: no startup probe `rallypoint probe live`")

    # Probes: `rallypoint probe live|ready` inside the container, against the API's
    # address as seen from the pod, with the probe's own timeout; no HTTP probe, so
    # the API can stay on loopback.
    probe_addrs = set()
    kinds_checked = [("livenessProbe", "live"), ("readinessProbe", "ready")]
    if native:
        kinds_checked.append(("startupProbe", "live"))
    for kind, check in kinds_checked:
        probe = d.get(kind) or {}
        command = probe_command(probe)
        case.expect(command[:3] == ["rallypoint", "probe", check], f"daemon: {kind} is not an exec of `rallypoint probe {check}`: {probe}")
        case.expect("httpGet" not in probe, f"daemon: {kind} is an HTTP probe too")
        timeout = probe.get("timeoutSeconds", 1)
        # 300 ms under the kubelet's timeout, so the probe's own reason is what is shown.
        case.expect(flag(command, "--timeout") == f"{timeout * 1000 - 300}ms", f"daemon: {kind} --timeout {flag(command, '--timeout')}, the probe's timeoutSeconds is {timeout}")
        probe_addrs.add(flag(command, "--http-addr"))
    d_ports = {p.get("name"): p for p in d.get("ports") or []}
    case.expect(get(d_ports, "cluster", "containerPort") == r["clusterPort"], "daemon: no container port named cluster on the cluster port")

    # Arguments and environment.
    args = d.get("args") or []
    case.expect(not d.get("command"), "daemon: command is set; the image's ENTRYPOINT (rallypoint) is expected")
    ok = case.expect(
        len(args) == 5 and args[:4] == ["run", "--config", CONFIG_PATH, "--name"],
        f"daemon: args are {args}, expected run --config {CONFIG_PATH} --name NAME",
    )
    name = args[4] if ok else ""
    env = env_by_name(d)
    for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", name):
        case.expect(var in env, f"daemon: --name uses $({var}), which is not in the container's env")
    case.expect(get(env.get("POD_IP"), "valueFrom", "fieldRef", "fieldPath") == "status.podIP", "daemon: POD_IP is not the downward API's status.podIP")
    stray = sorted(k for k in env if k.startswith("RALLYPOINT_") and k not in ("RALLYPOINT_COOKIE", "RALLYPOINT_HTTP_TOKEN"))
    case.expect(not stray, f"daemon: environment variables {stray} would be read as configuration keys")
    secrets = {s["metadata"]["name"]: s for s in kinds.get("Secret", [])}
    secret_ref(case, env, "RALLYPOINT_COOKIE", secrets, v["cookie"]["existingSecret"], v["cookie"]["existingSecretKey"])
    if v["httpToken"]["enabled"]:
        secret_ref(case, env, "RALLYPOINT_HTTP_TOKEN", secrets, v["httpToken"]["existingSecret"], v["httpToken"]["existingSecretKey"])
        if has_app and v["app"]["injectHttpToken"]:
            case.expect("RALLYPOINT_HTTP_TOKEN" in env_by_name(apps[0]), "app: RALLYPOINT_HTTP_TOKEN is not set")
    else:
        case.expect("RALLYPOINT_HTTP_TOKEN" not in env, "daemon: RALLYPOINT_HTTP_TOKEN set although httpToken.enabled is false")

    # The configuration, mounted from the ConfigMap.
    mounts = [m for m in d.get("volumeMounts") or [] if m.get("mountPath") in ("/etc/rallypoint", CONFIG_PATH)]
    config_text = None
    if case.expect(len(mounts) == 1, f"daemon: nothing mounted at {CONFIG_PATH}"):
        m = mounts[0]
        vol = next((x for x in pod.get("volumes") or [] if x.get("name") == m.get("name")), None)
        cm_name = get(vol, "configMap", "name")
        items = get(vol, "configMap", "items", default=[])
        if m["mountPath"] == "/etc/rallypoint":
            case.expect(
                not items or any(i.get("key") == "config.toml" and i.get("path") == "config.toml" for i in items),
                "daemon: the ConfigMap volume does not put config.toml at /etc/rallypoint/config.toml",
            )
        cm = next((c for c in kinds.get("ConfigMap", []) if c["metadata"]["name"] == cm_name), None)
        if case.expect(cm is not None, f"daemon: the config volume's ConfigMap {cm_name} is not rendered"):
            config_text = get(cm, "data", "config.toml")
            case.expect(config_text is not None, f"ConfigMap {cm_name}: no config.toml")
    if config_text is None:
        return None
    try:
        config = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as e:
        case.failures.append(f"config.toml is not valid TOML: {e}")
        return None

    def addr(key: str) -> tuple[str, int]:
        host, _, port = str(config.get(key, "")).rpartition(":")
        return host.strip("[]"), int(port) if port.isdigit() else -1

    host, port = addr("http_addr")
    case.expect(port == r["httpPort"], f"config: http_addr port {port}, the values say {r['httpPort']}")
    # The probes (and the application) must reach the API where it listens.
    try:
        ip = ipaddress.ip_address(host)
        local = ("::1" if ip.version == 6 else "127.0.0.1") if ip.is_unspecified else str(ip)
    except ValueError:
        local = host
    want = f"[{local}]:{port}" if ":" in local else f"{local}:{port}"
    case.expect(probe_addrs == {want}, f"daemon: the probes ask {sorted(map(str, probe_addrs))}, the API listens on {config.get('http_addr')} ({want} from the pod)")
    if has_app:
        app_addr = get(env_by_name(apps[0]).get("RALLYPOINT_HTTP_ADDR"), "value")
        case.expect(app_addr == want, f"app: RALLYPOINT_HTTP_ADDR is {app_addr}, the API is at {want} from the pod")
    case.expect(addr("cluster_addr")[1] == r["clusterPort"], f"config: cluster_addr {config.get('cluster_addr')} is not on port {r['clusterPort']}")
    case.expect(config.get("min_members") == r["minMembers"], f"config: min_members {config.get('min_members')}, values say {r['minMembers']}")
    for secret in ("cookie", "cookie_file", "http_token"):
        case.expect(secret not in config, f"config: {secret} is in the ConfigMap; it belongs in a Secret")
    topologies = config.get("topologies") or {}
    if not case.expect(len(topologies) == 1, f"config: expected one topology, found {sorted(topologies)}"):
        return None
    (topo,) = topologies.values()
    case.expect(topo.get("strategy") == strategy, f"config: topology strategy {topo.get('strategy')}, values say {strategy}")

    stable = (strategy == "kubernetes" and r["kubernetes"]["mode"] == "hostname") or (
        strategy == "dns" and r["dns"]["record"] == "srv"
    )
    domain = r["kubernetes"]["clusterDomain"] if strategy == "kubernetes" else r["dns"]["clusterDomain"]
    base, _, host_part = name.partition("@")
    if stable:
        case.expect(host_part == f"$(POD_NAME).{svc_name}.$(POD_NAMESPACE).svc.{domain}", f"daemon: --name {name} is not the pod's stable DNS name")
    else:
        case.expect(host_part == "$(POD_IP)", f"daemon: --name {name} is not basename@$(POD_IP)")

    roles = kinds.get("Role", [])
    bindings = kinds.get("RoleBinding", [])
    case.expect(not kinds.get("ClusterRole") and not kinds.get("ClusterRoleBinding"), "the chart renders a ClusterRole or ClusterRoleBinding")
    sa_name = pod.get("serviceAccountName")
    if v["serviceAccount"]["create"]:
        case.expect(any(s["metadata"]["name"] == sa_name for s in kinds.get("ServiceAccount", [])), f"pod: ServiceAccount {sa_name} is not rendered")
    if strategy == "kubernetes":
        k = r["kubernetes"]
        resource = k["resource"]
        case.expect(topo.get("resource") == resource, f"config: resource {topo.get('resource')}, values say {resource}")
        case.expect(topo.get("port_name") == "cluster", f"config: port_name {topo.get('port_name')}, the Service's port is named cluster")
        case.expect(bool(topo.get("selector")), "config: no selector")
        if resource == "endpointslices" and not k["selector"]:
            case.expect(
                topo.get("selector") == f"kubernetes.io/service-name={svc_name}",
                f"config: selector {topo.get('selector')}, expected kubernetes.io/service-name={svc_name}",
            )
        if resource in ("endpoints", "pods") and not k["selector"]:
            labels = svc["metadata"]["labels"] if resource == "endpoints" else pod_labels
            terms = dict(t.split("=", 1) for t in topo.get("selector", "").split(","))
            case.expect(
                all(labels.get(key) == val for key, val in terms.items()),
                f"config: selector {topo.get('selector')} does not match the {resource}' labels {labels}",
            )
        case.expect(pod.get("automountServiceAccountToken") is True, "pod: the service-account token is not mounted, the kubernetes strategy needs it")
        if v["rbac"]["create"]:
            if case.expect(len(roles) == 1, f"expected one Role, found {len(roles)}"):
                role = roles[0]
                ns = topo.get("namespace") or NAMESPACE
                case.expect(role["metadata"].get("namespace") == ns, f"Role in namespace {role['metadata'].get('namespace')}, the strategy watches {ns}")
                want = [{"apiGroups": [API_GROUPS[resource]], "resources": [resource], "verbs": VERBS}]
                got = [
                    {key: (sorted(val) if key == "verbs" else val) for key, val in rule.items()}
                    for rule in role.get("rules") or []
                ]
                case.expect(got == want, f"Role rules are {role.get('rules')}, expected exactly {want}")
                if case.expect(len(bindings) == 1, f"expected one RoleBinding, found {len(bindings)}"):
                    b = bindings[0]
                    case.expect(
                        b.get("roleRef") == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]},
                        f"RoleBinding refers to {b.get('roleRef')}",
                    )
                    case.expect(
                        b.get("subjects") == [{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}],
                        f"RoleBinding subjects {b.get('subjects')}, the pods run as {NAMESPACE}/{sa_name}",
                    )
    else:
        case.expect(not roles and not bindings, "the dns strategy needs no API access, but a Role or RoleBinding is rendered")
        query = topo.get("query")
        case.expect(bool(query), "config: no query")
        record = r["dns"]["record"]
        case.expect(topo.get("record") == record, f"config: record {topo.get('record')}, values say {record}")
        if not r["dns"]["query"] and isinstance(query, str):
            want = f"{svc_name}.{NAMESPACE}.svc.{domain}."
            if record == "srv":
                want = "_cluster._tcp." + want
            case.expect(query == want, f"config: query {query}, expected {want}")

    case.expect("/v1/members" in notes and "/v1/events" in notes, "NOTES.txt does not say how to read /v1/members and /v1/events")

    # The arguments of `rallypoint check-config`, as the pod would start `run`.
    family = "v6" if ":" in str(r["clusterBind"]) else "v4"
    workload_name = w["metadata"]["name"]
    pod_name = f"{workload_name}-0" if w["kind"] == "StatefulSet" else f"{workload_name}-5d8f9c7b6-x2k4q"
    expanded = (
        name.replace("$(POD_IP)", SAMPLE_POD_IP[family])
        .replace("$(POD_NAME)", pod_name)
        .replace("$(POD_NAMESPACE)", NAMESPACE)
    )
    return config_text, ["--name", expanded]


def run_case(case: Case, out: Path) -> Path | None:
    lint(case)
    try:
        rendered = render(case.values)
    except helm.HelmError as e:
        case.failures.append(f"helm template failed: {e}")
        return None
    docs: list[tuple[str, dict[str, Any]]] = []
    notes = ""
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        try:
            for doc in yaml.safe_load_all(text):
                if doc:
                    docs.append((template, doc))
        except yaml.YAMLError as e:
            case.failures.append(f"{template}: not YAML: {e}")
    validate_schemas(case, docs)
    result = check(case, docs, notes, merged_values(case.values))
    if result is None:
        return None
    config_text, name_args = result
    toml_path = out / f"{case.name}.toml"
    toml_path.write_text(config_text)
    args = ["check-config", "--config", str(toml_path.resolve()), *name_args]
    (out / f"{case.name}.args").write_text("".join(a + "\n" for a in args))
    print(f"chart_check: {case.name}: lint ok, {len(docs)} manifests valid for Kubernetes {KUBE_VERSION} (strict), "
          f"assertions hold; wrote {toml_path}")
    return toml_path


def check_refusals() -> list[str]:
    failures = []
    for what, values, message in REFUSED:
        try:
            render(values)
        except helm.HelmError as e:
            if message not in str(e):
                failures.append(f"refused values ({what}): failed, but without {message!r}: {e}")
            continue
        failures.append(f"refused values ({what}): {values} rendered, but must fail with {message!r}")
    if not failures:
        print(f"chart_check: {len(REFUSED)} sets of bad values refused, each with its message")
    return failures


def main() -> int:
    global CHART
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where to write each case's config.toml and check-config arguments (default: a new temporary directory)")
    parser.add_argument("--chart", type=Path, default=CHART, help="the chart directory (default: charts/rallypoint)")
    parser.add_argument("--rallypoint", type=Path, help="a rallypoint binary: also run `check-config` on each rendered configuration")
    opts = parser.parse_args()
    CHART = opts.chart.resolve()
    out = opts.out or Path(tempfile.mkdtemp(prefix="chart_check."))
    out.mkdir(parents=True, exist_ok=True)
    helm.disable_logging()

    cases = [Case("default", {})]
    for f in sorted((CHART / "ci").glob("*.yaml")):
        cases.append(Case(f.stem, yaml.safe_load(f.read_text()) or {}))

    failures: list[str] = []
    for case in cases:
        toml_path = run_case(case, out)
        failures += [f"{case.name}: {m}" for m in case.failures]
        if opts.rallypoint and toml_path is not None and not case.failures:
            args = (out / f"{case.name}.args").read_text().splitlines()
            env = {**os.environ, "RALLYPOINT_COOKIE": "chart-check-cookie"}
            p = subprocess.run([str(opts.rallypoint), *args], env=env, capture_output=True, text=True)
            if p.returncode != 0:
                failures.append(f"{case.name}: rallypoint {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
            else:
                print(f"chart_check: {case.name}: rallypoint check-config accepts it")
    failures += check_refusals()

    if failures:
        print(f"chart_check: {len(failures)} failure(s):", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print(f"chart_check: ok: {len(cases)} value sets checked; configurations in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
