{{/* Names and labels shared by every template. */}}

{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tollgate.fullname" -}}
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

{{- define "tollgate.controller.fullname" -}}
{{- printf "%s-controller" (include "tollgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tollgate.dataplane.fullname" -}}
{{- printf "%s-dataplane" (include "tollgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "controller"). */}}
{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tollgate.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .image.repository $tag -}}
{{- end -}}

{{/* The security context of every container: non-root, read-only root filesystem. */}}
{{- define "tollgate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tollgate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tollgate.validate" -}}
{{- if not (has .Values.auth.mode (list "tokenReview" "sharedToken")) -}}
{{- fail "auth.mode must be tokenReview or sharedToken" -}}
{{- end -}}
{{- if and (eq .Values.auth.mode "sharedToken") (not .Values.auth.sharedToken.secretName) -}}
{{- fail "auth.mode sharedToken needs auth.sharedToken.secretName (a Secret with key `token`)" -}}
{{- end -}}
{{- if lt (int .Values.controller.replicas) 1 -}}
{{- fail "controller.replicas must be at least 1" -}}
{{- end -}}
{{- end -}}

{{/* How the config stream's certificates come: generated, certManager, existingSecret
or disabled; `auto` is certManager where its API is served, generated elsewhere. */}}
{{- define "tollgate.tlsMode" -}}
{{- $mode := .Values.tls.mode -}}
{{- if eq $mode "auto" -}}
{{- if .Capabilities.APIVersions.Has "cert-manager.io/v1" -}}certManager{{- else -}}generated{{- end -}}
{{- else -}}
{{- $mode -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the controller's certificate (tls.crt, tls.key) and the CA
(ca.crt). */}}
{{- define "tollgate.tlsSecret" -}}
{{- if eq (include "tollgate.tlsMode" .) "existingSecret" -}}
{{- required "tls.existingSecret is required with tls.mode existingSecret" .Values.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-stream-tls" (include "tollgate.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* OpenTelemetry's standard variables, from .Values.telemetry (none while it has no endpoint). */}}
{{- define "tollgate.otelEnv" -}}
{{- $t := .Values.telemetry -}}
{{- if $t.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $t.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $t.protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $t.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $t.samplerArg | quote }}
{{- with $t.resourceAttributes }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ . | quote }}
{{- end }}
{{- with $t.headersSecretRef }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ required "telemetry.headersSecretRef.name" .name | quote }}
      key: {{ required "telemetry.headersSecretRef.key" .key | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The Secret holding the admin token that /status, /usage and /config require. */}}
{{- define "tollgate.adminSecret" -}}
{{- default (printf "%s-admin" (include "tollgate.fullname" .)) .Values.admin.existingSecret -}}
{{- end -}}

{{/* The Secret holding the dataplanes' client certificate (mutual TLS). */}}
{{- define "tollgate.tlsClientSecret" -}}
{{- if eq (include "tollgate.tlsMode" .) "existingSecret" -}}
{{- required "tls.existingClientSecret is required with tls.mode existingSecret and tls.mutual" .Values.tls.existingClientSecret -}}
{{- else -}}
{{- printf "%s-client" (include "tollgate.tlsSecret" .) -}}
{{- end -}}
{{- end -}}
