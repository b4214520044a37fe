{{/*
Names, labels and the settings several templates share.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "rallypoint.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name. At most 52 characters, so that a StatefulSet's pod
names and their controller-revision-hash label, and "<fullname>-headless", stay within
Kubernetes' 63.
*/}}
{{- define "rallypoint.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "rallypoint.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The helm.sh/chart label: name-version. */}}
{{- define "rallypoint.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The labels that pick this release's pods. */}}
{{- define "rallypoint.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rallypoint.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The labels of every resource. */}}
{{- define "rallypoint.labels" -}}
helm.sh/chart: {{ include "rallypoint.chart" . }}
{{ include "rallypoint.selectorLabels" . }}
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The headless Service's name. */}}
{{- define "rallypoint.serviceName" -}}
{{- default (printf "%s-headless" (include "rallypoint.fullname" .)) .Values.service.name -}}
{{- end -}}

{{/* The ServiceAccount the pods run as. */}}
{{- define "rallypoint.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rallypoint.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret the chart creates for the cookie and the API token. */}}
{{- define "rallypoint.secretName" -}}
{{- include "rallypoint.fullname" . -}}
{{- end -}}

{{/* Where the cookie is: Secret name and key. */}}
{{- define "rallypoint.cookieSecretName" -}}
{{- default (include "rallypoint.secretName" .) .Values.cookie.existingSecret -}}
{{- end -}}
{{- define "rallypoint.cookieSecretKey" -}}
{{- if .Values.cookie.existingSecret -}}{{ .Values.cookie.existingSecretKey }}{{- else -}}cookie{{- end -}}
{{- end -}}

{{/* Where the API token is: Secret name and key. */}}
{{- define "rallypoint.tokenSecretName" -}}
{{- default (include "rallypoint.secretName" .) .Values.httpToken.existingSecret -}}
{{- end -}}
{{- define "rallypoint.tokenSecretKey" -}}
{{- if .Values.httpToken.existingSecret -}}{{ .Values.httpToken.existingSecretKey }}{{- else -}}http-token{{- end -}}
{{- end -}}

{{/* The daemon's image. */}}
{{- define "rallypoint.image" -}}
{{- printf "%s:%s" .Values.rallypoint.image.repository (default .Chart.AppVersion .Values.rallypoint.image.tag) -}}
{{- end -}}

{{/* The application's image. */}}
{{- define "rallypoint.appImage" -}}
{{- printf "%s:%s" .Values.app.image.repository (default "latest" .Values.app.image.tag) -}}
{{- end -}}

{{/* "true" when the pod has an application container. */}}
{{- define "rallypoint.hasApp" -}}
{{- if .Values.app.image.repository -}}true{{- end -}}
{{- end -}}

{{/*
"true" when the daemon runs as a native sidecar (an init container that keeps running).
Without an application container it is the pod's only container, so an ordinary one.
*/}}
{{- define "rallypoint.native" -}}
{{- if and .Values.rallypoint.nativeSidecar (include "rallypoint.hasApp" .) -}}true{{- end -}}
{{- end -}}

{{/* The basename of node names. */}}
{{- define "rallypoint.basename" -}}
{{- default (include "rallypoint.fullname" .) .Values.rallypoint.basename -}}
{{- end -}}

{{/* The topology's name in [topologies.NAME]. */}}
{{- define "rallypoint.topologyName" -}}
{{- default .Values.rallypoint.strategy .Values.rallypoint.topologyName -}}
{{- end -}}

{{/* The namespace the kubernetes strategy watches (and where its Role is). */}}
{{- define "rallypoint.watchNamespace" -}}
{{- default .Release.Namespace .Values.rallypoint.kubernetes.namespace -}}
{{- end -}}

{{/* The API group of the watched resource ("" is the core group). */}}
{{- define "rallypoint.apiGroup" -}}
{{- if eq .Values.rallypoint.kubernetes.resource "endpointslices" -}}discovery.k8s.io{{- end -}}
{{- end -}}

{{/* The kubernetes strategy's label selector. */}}
{{- define "rallypoint.selector" -}}
{{- $k := .Values.rallypoint.kubernetes -}}
{{- if $k.selector -}}
{{- $k.selector -}}
{{- else if eq $k.resource "endpointslices" -}}
{{- printf "kubernetes.io/service-name=%s" (include "rallypoint.serviceName" .) -}}
{{- else if eq $k.resource "endpoints" -}}
{{- /* Endpoints carry the labels of their Service. */ -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=cluster" (include "rallypoint.name" .) .Release.Name -}}
{{- else -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s" (include "rallypoint.name" .) .Release.Name -}}
{{- end -}}
{{- end -}}

{{/* The cluster domain that node names and the default DNS query use. */}}
{{- define "rallypoint.clusterDomain" -}}
{{- if eq .Values.rallypoint.strategy "dns" -}}
{{- .Values.rallypoint.dns.clusterDomain -}}
{{- else -}}
{{- .Values.rallypoint.kubernetes.clusterDomain -}}
{{- end -}}
{{- end -}}

{{/*
"true" when nodes are named by their stable DNS name (kubernetes mode hostname, dns
record srv) rather than by their pod IP.
*/}}
{{- define "rallypoint.stableNames" -}}
{{- $r := .Values.rallypoint -}}
{{- if or (and (eq $r.strategy "kubernetes") (eq $r.kubernetes.mode "hostname")) (and (eq $r.strategy "dns") (eq $r.dns.record "srv")) -}}true{{- end -}}
{{- end -}}

{{/*
The daemon's --name, with $(VAR) references the kubelet expands from the container's
environment: basename@<pod IP>, or basename@<pod>.<service>.<namespace>.svc.<domain>,
the name the other pods derive from the API or from DNS.
*/}}
{{- define "rallypoint.nodeName" -}}
{{- if include "rallypoint.stableNames" . -}}
{{- printf "%s@$(POD_NAME).%s.$(POD_NAMESPACE).svc.%s" (include "rallypoint.basename" .) (include "rallypoint.serviceName" .) (include "rallypoint.clusterDomain" .) -}}
{{- else -}}
{{- printf "%s@$(POD_IP)" (include "rallypoint.basename" .) -}}
{{- end -}}
{{- end -}}

{{/* The default DNS query: the headless Service's full name, with a final dot. */}}
{{- define "rallypoint.dnsQuery" -}}
{{- $d := .Values.rallypoint.dns -}}
{{- if $d.query -}}
{{- $d.query -}}
{{- else -}}
{{- $fqdn := printf "%s.%s.svc.%s." (include "rallypoint.serviceName" .) .Release.Namespace $d.clusterDomain -}}
{{- if eq $d.record "srv" -}}_cluster._tcp.{{ $fqdn }}{{- else -}}{{ $fqdn }}{{- end -}}
{{- end -}}
{{- end -}}

{{/* An address "host:port", IPv6 hosts in brackets. Takes (list host port). */}}
{{- define "rallypoint.addr" -}}
{{- $host := index . 0 | toString | trimPrefix "[" | trimSuffix "]" -}}
{{- $port := index . 1 | int -}}
{{- if contains ":" $host -}}
{{- printf "[%s]:%d" $host $port -}}
{{- else -}}
{{- printf "%s:%d" $host $port -}}
{{- end -}}
{{- end -}}

{{/* The API's address as seen from inside the pod: the loopback of the bind's family
for a wildcard bind, else the bind address itself. An IPv6 bind may be given with or
without brackets (`::`, `[::]`). */}}
{{- define "rallypoint.localHttpAddr" -}}
{{- $bind := toString .Values.rallypoint.httpBind | trimPrefix "[" | trimSuffix "]" -}}
{{- if eq $bind "0.0.0.0" -}}
{{- include "rallypoint.addr" (list "127.0.0.1" .Values.rallypoint.httpPort) -}}
{{- else if has $bind (list "::" "0:0:0:0:0:0:0:0") -}}
{{- include "rallypoint.addr" (list "::1" .Values.rallypoint.httpPort) -}}
{{- else -}}
{{- include "rallypoint.addr" (list $bind .Values.rallypoint.httpPort) -}}
{{- end -}}
{{- end -}}

{{/* An exec probe: `rallypoint probe CHECK` against this pod's API. Arguments: the
root context, the check (`live` or `ready`), the probe's settings (its timing; any
handler in them is dropped). */}}
{{- define "rallypoint.execProbe" -}}
{{- $ctx := index . 0 -}}
{{- $settings := index . 2 -}}
{{- /* The probe gives up 300 ms before the kubelet does, so that its reason (not
the kubelet's "timed out") is what `kubectl describe pod` shows. */ -}}
{{- $timeout := sub (mul (int (default 1 $settings.timeoutSeconds)) 1000) 300 -}}
{{- $command := list "rallypoint" "probe" (index . 1) "--http-addr" (include "rallypoint.localHttpAddr" $ctx) "--timeout" (printf "%dms" $timeout) -}}
{{- /* A handler from the values (an httpGet from an older values file) would make a
probe with two handlers, which the API server refuses: the exec is the one. */ -}}
{{- toYaml (merge (dict "exec" (dict "command" $command)) (omit $settings "httpGet" "tcpSocket" "grpc" "exec")) -}}
{{- end -}}

{{/* "true" when an API token is in use. */}}
{{- define "rallypoint.hasToken" -}}
{{- if .Values.httpToken.enabled -}}true{{- end -}}
{{- end -}}

{{/*
Refuses values that would render a pod that cannot work, each with what to change.
Included by the templates that depend on them.
*/}}
{{- define "rallypoint.validate" -}}
{{- $r := .Values.rallypoint -}}
{{- if not (has .Values.kind (list "StatefulSet" "Deployment")) -}}
{{- fail (printf "kind: %q is not supported; use StatefulSet or Deployment" (toString .Values.kind)) -}}
{{- end -}}
{{- if not (has $r.strategy (list "kubernetes" "dns")) -}}
{{- fail (printf "rallypoint.strategy: %q is not supported by this chart; use kubernetes or dns" (toString $r.strategy)) -}}
{{- end -}}
{{- if not (regexMatch "^[A-Za-z0-9_.-]+$" (include "rallypoint.basename" .)) -}}
{{- fail (printf "rallypoint.basename: %q: use letters, digits, '_', '-' and '.' only (the part of a node name before '@')" (include "rallypoint.basename" .)) -}}
{{- end -}}
{{- if not (regexMatch "^[A-Za-z0-9_-]+$" (include "rallypoint.topologyName" .)) -}}
{{- fail (printf "rallypoint.topologyName: %q: use letters, digits, '_' and '-' only" (include "rallypoint.topologyName" .)) -}}
{{- end -}}
{{- if eq ($r.clusterPort | int) ($r.httpPort | int) -}}
{{- fail "rallypoint.clusterPort and rallypoint.httpPort must differ" -}}
{{- end -}}
{{- if eq $r.strategy "kubernetes" -}}
{{- $k := $r.kubernetes -}}
{{- if not (has $k.resource (list "endpointslices" "endpoints" "pods")) -}}
{{- fail (printf "rallypoint.kubernetes.resource: %q: use endpointslices, endpoints or pods" (toString $k.resource)) -}}
{{- end -}}
{{- if eq $k.mode "dns" -}}
{{- fail "rallypoint.kubernetes.mode: dns is not offered by this chart: a pod would have to name itself basename@10-0-0-5.<namespace>.pod.<domain>, and the downward API cannot give it its IP with dashes. Use mode ip (names basename@<pod IP>) or, with kind StatefulSet, mode hostname" -}}
{{- end -}}
{{- if not (has $k.mode (list "ip" "hostname")) -}}
{{- fail (printf "rallypoint.kubernetes.mode: %q: use ip or hostname" (toString $k.mode)) -}}
{{- end -}}
{{- if and (eq $k.resource "pods") (not $k.includeNotReady) (gt ($r.minMembers | int) 0) -}}
{{- fail "rallypoint.minMembers is above 0 with resource pods: a pod becomes ready only once it has peers, and without rallypoint.kubernetes.includeNotReady=true it only looks for ready pods, so no pod would ever become ready. Set includeNotReady to true" -}}
{{- end -}}
{{- else -}}
{{- if not (has $r.dns.record (list "a" "srv")) -}}
{{- fail (printf "rallypoint.dns.record: %q: use a or srv" (toString $r.dns.record)) -}}
{{- end -}}
{{- end -}}
{{- if and (include "rallypoint.stableNames" .) (ne .Values.kind "StatefulSet") -}}
{{- fail "node names by stable DNS name (rallypoint.kubernetes.mode=hostname, or rallypoint.dns.record=srv) need kind StatefulSet: only a StatefulSet's pods have a hostname under the headless Service" -}}
{{- end -}}
{{- if ge ($r.minMembers | int) (.Values.replicas | int) -}}
{{- fail (printf "rallypoint.minMembers (%d) must be below replicas (%d): it counts the peers that are up, this pod excluded, so the pods would never become ready" ($r.minMembers | int) (.Values.replicas | int)) -}}
{{- end -}}
{{- range $k, $v := $r.membership -}}
{{- if not (regexMatch "^[a-z_]+$" $k) -}}
{{- fail (printf "rallypoint.membership: %q is not a key of the daemon's [membership] table (they are snake_case, e.g. down_after)" $k) -}}
{{- end -}}
{{- end -}}
{{- if not .Values.cookie.existingSecret -}}
{{- if .Values.cookie.value -}}
{{- if lt (len (trim (toString .Values.cookie.value))) 16 -}}
{{- fail "cookie.value: the cookie must be at least 16 bytes (white space around it aside), or the daemon refuses it; make one with: head -c 32 /dev/urandom | base64" -}}
{{- end -}}
{{- else if not .Values.cookie.generate -}}
{{- fail "no cookie: set cookie.existingSecret (a Secret holding the cluster's cookie under cookie.existingSecretKey) or cookie.value, or set cookie.generate=true to have the chart generate one" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.httpToken.enabled (not .Values.httpToken.existingSecret) .Values.httpToken.value -}}
{{- if not (regexMatch "^[!-~]+$" (toString .Values.httpToken.value)) -}}
{{- fail "httpToken.value: the token must be printable ASCII without spaces" -}}
{{- end -}}
{{- end -}}
{{- end -}}
