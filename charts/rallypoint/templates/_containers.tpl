{{/*
The pod's two containers: the rallypoint daemon and the application.
*/}}

{{/* The daemon: rallypoint run, its config from the ConfigMap, its cookie from a Secret. */}}
{{- define "rallypoint.daemonContainer" -}}
{{- $r := .Values.rallypoint -}}
- name: rallypoint
  image: {{ include "rallypoint.image" . | quote }}
  imagePullPolicy: {{ $r.image.pullPolicy }}
  {{- if include "rallypoint.native" . }}
  # A native sidecar: started before the application, stopped after it.
  restartPolicy: Always
  {{- end }}
  args:
    - run
    - --config
    - /etc/rallypoint/config.toml
    - --name
    - {{ include "rallypoint.nodeName" . | quote }}
  env:
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    - name: RALLYPOINT_COOKIE
      valueFrom:
        secretKeyRef:
          name: {{ include "rallypoint.cookieSecretName" . }}
          key: {{ include "rallypoint.cookieSecretKey" . }}
    {{- if include "rallypoint.hasToken" . }}
    - name: RALLYPOINT_HTTP_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ include "rallypoint.tokenSecretName" . }}
          key: {{ include "rallypoint.tokenSecretKey" . }}
    {{- end }}
    {{- with $r.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: cluster
      containerPort: {{ $r.clusterPort | int }}
      protocol: TCP
    - name: http
      containerPort: {{ $r.httpPort | int }}
      protocol: TCP
  {{- if include "rallypoint.native" . }}
  startupProbe:
    {{- include "rallypoint.execProbe" (list . "live" $r.startupProbe) | nindent 4 }}
  {{- end }}
  livenessProbe:
    {{- include "rallypoint.execProbe" (list . "live" $r.livenessProbe) | nindent 4 }}
  readinessProbe:
    {{- include "rallypoint.execProbe" (list . "ready" $r.readinessProbe) | nindent 4 }}
  {{- with $r.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $r.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: config
      mountPath: /etc/rallypoint
      readOnly: true
{{- end -}}

{{/* The application, with the daemon's API address (and token) in its environment. */}}
{{- define "rallypoint.appContainer" -}}
{{- $a := .Values.app -}}
- name: {{ $a.name }}
  image: {{ include "rallypoint.appImage" . | quote }}
  imagePullPolicy: {{ $a.image.pullPolicy }}
  {{- with $a.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  env:
    # The rallypoint daemon's API in this pod: GET /v1/members, /v1/events (SSE).
    - name: RALLYPOINT_HTTP_ADDR
      value: {{ include "rallypoint.localHttpAddr" . | quote }}
    {{- if and (include "rallypoint.hasToken" .) $a.injectHttpToken }}
    - name: RALLYPOINT_HTTP_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ include "rallypoint.tokenSecretName" . }}
          key: {{ include "rallypoint.tokenSecretKey" . }}
    {{- end }}
    {{- with $a.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $a.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.ports }}
  ports:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.volumeMounts }}
  volumeMounts:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
