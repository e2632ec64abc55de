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

{{- define "ortserve.configName" -}}
{{- printf "%s-config" (include "ortserve.fullname" .) -}}
{{- end -}}

{{/* The Secret holding the token key file: the user's, else the chart's. */}}
{{- define "ortserve.tokenSecretName" -}}
{{- .Values.tokenAuthorization.existingSecret | default (printf "%s-tokens" (include "ortserve.fullname" .)) -}}
{{- end -}}

{{/* The declarations to render: the user's, else, in the demo mode (the image's own store,
     no ConfigMap of the user's), the demo digit classifier. */}}
{{- define "ortserve.declarations" -}}
{{- if .Values.models.declarations -}}
{{- toYaml .Values.models.declarations -}}
{{- else if and (eq .Values.modelStore.type "image") (not .Values.models.existingConfigMap) -}}
digits.yaml: |
  source: digits_v2
  minWorkers: 1
  maxWorkers: 2
  batchSize: 8
  maxBatchDelay: 5
{{- end -}}
{{- end -}}

{{/* Whether ortserve talks to the Kubernetes API (Events, the ConfigMap watch). */}}
{{- define "ortserve.usesApi" -}}
{{- if or .Values.events.enabled .Values.models.watchApi -}}true{{- end -}}
{{- end -}}

{{/* Marks the chart's model ConfigMap for the API watch (--configmap-selector). */}}
{{- define "ortserve.modelsSelector" -}}
ortserve.io/models={{ include "ortserve.fullname" . }}
{{- end -}}

{{/* Kubernetes waits this long after SIGTERM: preStop, drain delay, shutdown timeout, margin. */}}
{{- define "ortserve.terminationGracePeriod" -}}
{{- add .Values.drain.preStopSleepSeconds .Values.drain.delaySeconds .Values.drain.shutdownTimeoutSeconds 5 -}}
{{- end -}}

{{/* The Deployment's progress deadline: never shorter than the startup budget (plus two
     readiness periods), so a slow but healthy start is not reported as failed. */}}
{{- define "ortserve.progressDeadline" -}}
{{- $budget := add .Values.probes.startupTimeoutSeconds .Values.probes.startupMarginSeconds (mul 2 .Values.probes.readiness.periodSeconds) 60 -}}
{{- max 600 $budget -}}
{{- end -}}

{{/* Startup probe failures allowed: startupTimeout plus a margin, in probe periods. */}}
{{- define "ortserve.startupFailureThreshold" -}}
{{- $budget := add .Values.probes.startupTimeoutSeconds .Values.probes.startupMarginSeconds -}}
{{- div (add $budget (sub .Values.probes.startupPeriodSeconds 1)) .Values.probes.startupPeriodSeconds -}}
{{- end -}}
