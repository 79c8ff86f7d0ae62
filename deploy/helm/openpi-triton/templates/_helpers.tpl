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
