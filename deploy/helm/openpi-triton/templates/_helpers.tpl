{{/* Names: every object is <release>-openpi-triton-<part> unless the release name already says it. */}}
{{- define "openpi.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "openpi.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component (triton | bridge). */}}
{{- define "openpi.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The headless Service the bridge resolves to every ready Triton pod's address. */}}
{{- define "openpi.tritonService" -}}
{{- printf "%s-triton" (include "openpi.fullname" .) -}}
{{- end -}}

{{- define "openpi.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) -}}
{{- end -}}

{{/* Where prepare-checkpoint puts the checkpoint (the image's OPENPI_TRITON_HOME is /cache/openpi-triton). */}}
{{- define "openpi.checkpointDir" -}}
{{- if .Values.model.checkpoint -}}
{{- printf "/cache/openpi-triton/checkpoints/%s" (default (base (trimSuffix "/" .Values.model.checkpoint)) .Values.model.checkpointName) -}}
{{- end -}}
{{- end -}}

{{- define "openpi.gpuCount" -}}
{{- if .Values.triton.gpu.enabled -}}{{ int .Values.triton.gpu.count }}{{- else -}}0{{- end -}}
{{- end -}}

{{/* The bridge's admin API (reload, model status, /metrics) leaves the pod's loopback only for the bridge's
PodMonitor, which scrapes /metrics from outside the pod; kubectl port-forward reaches 127.0.0.1 either way. */}}
{{- define "openpi.adminHost" -}}
{{- if .Values.monitoring.podMonitor.enabled -}}0.0.0.0{{- else -}}127.0.0.1{{- end -}}
{{- end -}}

{{/* No Secret means no API key and no QUIC token: refused wherever that reaches past the cluster's own pods
(a LoadBalancer or NodePort robot Service, the admin API on the pod network) unless chosen explicitly. */}}
{{- define "openpi.requireAuth" -}}
{{- if not (or .Values.auth.existingSecret .Values.auth.allowUnauthenticated) -}}
{{- $open := list -}}
{{- range $service := list "websocket" "quic" -}}
{{- $type := (index $.Values.bridge.service $service).type -}}
{{- if has $type (list "LoadBalancer" "NodePort") -}}
{{- $open = append $open (printf "bridge.service.%s.type is %s (robots outside the cluster)" $service $type) -}}
{{- end -}}
{{- end -}}
{{- if eq (include "openpi.adminHost" .) "0.0.0.0" -}}
{{- $open = append $open "monitoring.podMonitor.enabled puts the admin API (reload, model status) on the pod network" -}}
{{- end -}}
{{- if $open -}}
{{- fail (printf "auth.existingSecret is empty, so nothing would ask for an API key or QUIC token, but %s. Create the Secret (kubectl create secret generic openpi-auth --from-literal=api-key=... --from-literal=quic-token=...) and set auth.existingSecret=openpi-auth, or set auth.allowUnauthenticated=true to run without authentication (docs/kubernetes.md#authentication)" (join "; " $open)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The headless Service's name, absolute (trailing dot): looked up as it is, not once per search domain of
the pod's resolv.conf (ndots:5) on every refresh. */}}
{{- define "openpi.tritonDiscoveryName" -}}
{{- printf "%s.%s.svc.%s." (include "openpi.tritonService" .) .Release.Namespace (trimSuffix "." .Values.clusterDomain) -}}
{{- end -}}
