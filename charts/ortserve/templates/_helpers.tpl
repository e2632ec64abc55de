{{/* Names, labels and derived settings shared by the templates. */}}

{{- define "ortserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ortserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "ortserve.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "ortserve.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ortserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ortserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ortserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ortserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ortserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ortserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The CPU image by default; the CUDA build of the same binary with gpu.enabled. */}}
{{- define "ortserve.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if and .Values.gpu.enabled (not .Values.image.tag) -}}
{{- $tag = printf "%s-cuda" $tag -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "ortserve.configMapName" -}}
{{- default (printf "%s-models" (include "ortserve.fullname" .)) .Values.models.existingConfigMap -}}
{{- end -}}

{{/* Marks the chart's model ConfigMap for the API watch (--configmap-selector). */}}
{{- define "ortserve.modelsSelector" -}}
ortserve.io/models={{ include "ortserve.fullname" . }}
{{- end -}}

{{/* Kubernetes waits this long after SIGTERM: preStop, drain delay, shutdown timeout, margin. */}}
{{- define "ortserve.terminationGracePeriod" -}}
{{- add .Values.drain.preStopSleepSeconds .Values.drain.delaySeconds .Values.drain.shutdownTimeoutSeconds 5 -}}
{{- end -}}

{{/* Startup probe failures allowed: startupTimeout plus a margin, in probe periods. */}}
{{- define "ortserve.startupFailureThreshold" -}}
{{- $budget := add .Values.probes.startupTimeoutSeconds .Values.probes.startupMarginSeconds -}}
{{- div (add $budget (sub .Values.probes.startupPeriodSeconds 1)) .Values.probes.startupPeriodSeconds -}}
{{- end -}}
