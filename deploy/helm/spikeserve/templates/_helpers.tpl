{{/* Names, labels and computed settings shared by the templates. */}}

{{- define "spikeserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, or the release name alone when it already contains the chart name. */}}
{{- define "spikeserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "spikeserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "spikeserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spikeserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "spikeserve.labels" -}}
helm.sh/chart: {{ include "spikeserve.chart" . }}
{{ include "spikeserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: serving-engine
{{- end -}}

{{- define "spikeserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "spikeserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "spikeserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Model directory passed as --model: inside the image, or on the mounted claim. */}}
{{- define "spikeserve.modelPath" -}}
{{- if eq .Values.model.source "image" -}}
{{- .Values.model.imagePath -}}
{{- else if .Values.model.volumeDir -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) (trimPrefix "/" .Values.model.volumeDir) -}}
{{- else -}}
{{- .Values.model.mountPath -}}
{{- end -}}
{{- end -}}

{{/* The served model name is always set explicitly, so the model_name metric label is known here. */}}
{{- define "spikeserve.servedModelName" -}}
{{- default (include "spikeserve.modelPath" . | trimSuffix "/" | base) .Values.server.servedModelName -}}
{{- end -}}

{{- define "spikeserve.modelClaimName" -}}
{{- if eq .Values.model.source "existingClaim" -}}
{{- required "model.existingClaim is required when model.source is existingClaim" .Values.model.existingClaim -}}
{{- else -}}
{{- printf "%s-model" (include "spikeserve.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Secret holding the API keys: the existing one, or the one this chart writes. Empty: no auth. */}}
{{- define "spikeserve.apiKeySecretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else if .Values.auth.apiKeys -}}
{{- printf "%s-api-keys" (include "spikeserve.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
Grace period: the kubelet sends SIGKILL this long after starting the preStop hook, so it must
cover the preStop sleep plus the server's drain. Computed when unset; refused when too short.
*/}}
{{- define "spikeserve.terminationGracePeriodSeconds" -}}
{{- $needed := add (int .Values.preStopSleepSeconds) (int .Values.server.drainTimeoutSeconds) -}}
{{- /* With prefix snapshots on disk the engine writes those still in memory at shutdown (up to 60 s). */ -}}
{{- if include "spikeserve.prefixCacheDir" . -}}
{{- $needed = add $needed 60 -}}
{{- end -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add $needed 15 -}}
{{- else if le (int .Values.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + server.drainTimeoutSeconds (+ 60 with server.prefixCacheDir) (%d)" (int .Values.terminationGracePeriodSeconds) $needed) -}}
{{- else -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* --prefix-cache-dir: server.prefixCacheDir, else the shared snapshot volume's mount path; empty: none. */}}
{{- define "spikeserve.prefixCacheDir" -}}
{{- if not (kindIs "invalid" .Values.server.prefixCacheDir) -}}
{{- .Values.server.prefixCacheDir -}}
{{- else if .Values.prefixSnapshots.existingClaim -}}
{{- .Values.prefixSnapshots.mountPath -}}
{{- end -}}
{{- end -}}

{{/* Checks that values.schema.json cannot express. Included by the Deployment. */}}
{{- define "spikeserve.validate" -}}
{{- if and .Values.autoscaling.hpa.enabled .Values.autoscaling.keda.enabled -}}
{{- fail "enable at most one of autoscaling.hpa and autoscaling.keda: KEDA creates its own HPA" -}}
{{- end -}}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- end -}}
