{{/*
Names, labels and shared snippets of the APX chart.
*/}}

{{- define "apx.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-apx, or <release> when it already contains the chart name. */}}
{{- define "apx.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "apx.operatorName" -}}
{{ include "apx.fullname" . }}-operator
{{- end }}

{{- define "apx.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass (dict "ctx" $ "component" "operator"). */}}
{{- define "apx.labels" -}}
helm.sh/chart: {{ include "apx.chart" .ctx }}
{{ include "apx.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: apx
{{- end }}

{{- define "apx.selectorLabels" -}}
app.kubernetes.io/name: {{ include "apx.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "apx.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "apx.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository@digest when a digest is set, else repository:tag (tag defaults to appVersion). */}}
{{- define "apx.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/* Namespaces that get a Role in namespaced mode: the watched ones and the release namespace. */}}
{{- define "apx.roleNamespaces" -}}
{{- $namespaces := concat (list .Release.Namespace) .Values.watchNamespaces | uniq }}
{{- toJson $namespaces }}
{{- end }}

{{- define "apx.webhookSecretName" -}}
{{- default (printf "%s-tls" (include "apx.webhookServiceName" .)) .Values.admission.tls.existingSecret }}
{{- end }}

{{/* The webhook Service: apx-webhook, or apx-<instance>-webhook for a named instance (the operator's default too). */}}
{{- define "apx.webhookServiceName" -}}
{{- if .Values.instance }}apx-{{ .Values.instance }}-webhook{{ else }}apx-webhook{{ end }}
{{- end }}

{{/* Fail early on value combinations the schema cannot express well. */}}
{{- define "apx.validate" -}}
{{- if and (eq .Values.rbac.scope "namespaced") (empty .Values.watchNamespaces) }}
{{- fail "rbac.scope=namespaced needs watchNamespaces: the operator can only watch namespaces it has a Role in" }}
{{- end }}
{{- if and (eq .Values.admission.mode "managed") (ne .Values.rbac.scope "cluster") }}
{{- fail "admission.mode=managed needs rbac.scope=cluster: kopf manages the cluster-scoped ValidatingWebhookConfiguration apx.dev" }}
{{- end }}
{{- include "apx.validatePorts" . }}
{{- end }}

{{/*
Two listeners of one pod cannot share a port (JSON schema cannot compare two values, so
this check lives here; values.schema.json checks each port's range).
*/}}
{{- define "apx.validatePorts" -}}
{{- $pods := list
  (dict "name" "operator" "ports" (dict "operator.livenessPort" .Values.operator.livenessPort "operator.metricsPort" .Values.operator.metricsPort "admission.webhookPort" .Values.admission.webhookPort "xds.port" (.Values.xds.port | default "xds-off")))
  (dict "name" "envoy" "ports" (dict "the traffic listener" (include "apx.envoyListenerPort" .) "envoy.adminPort" .Values.envoy.adminPort "envoy.statsPort" .Values.envoy.statsPort))
  (dict "name" "dataplane.ratelimit" "ports" (dict "dataplane.ratelimit.grpcPort" .Values.dataplane.ratelimit.grpcPort "dataplane.ratelimit.metricsPort" .Values.dataplane.ratelimit.metricsPort))
  (dict "name" "dataplane.gateway" "ports" (dict "dataplane.gateway.httpPort" .Values.dataplane.gateway.httpPort "dataplane.gateway.metricsPort" .Values.dataplane.gateway.metricsPort)) }}
{{- range $pod := $pods }}
{{- $seen := dict }}
{{- range $key := keys $pod.ports | sortAlpha }}
{{- $port := toString (get $pod.ports $key) }}
{{- if hasKey $seen $port }}
{{- fail (printf "%s and %s are both %s: two listeners of the %s pod cannot share a port" (get $seen $port) $key $port $pod.name) }}
{{- end }}
{{- $_ := set $seen $port $key }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The restricted Pod Security Standard, for every pod of the chart.
runAsUser/runAsGroup/fsGroup come from values (null leaves them to the platform).
*/}}
{{- define "apx.podSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.securityContext.runAsUser }}
runAsUser: {{ . }}
{{- end }}
{{- with .Values.securityContext.runAsGroup }}
runAsGroup: {{ . }}
{{- end }}
{{- with .Values.securityContext.fsGroup }}
fsGroup: {{ . }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "apx.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Credentials in URL values (user:password@, or a secret query parameter): such a value never
appears inline. The chart moves it into the Secret "apx.credentialsSecretName"
(templates/credentials-secret.yaml) and containers read it from there; NOTES shows it
redacted. "apx.hasCredentials" answers "true" or "".
*/}}
{{- define "apx.hasCredentials" -}}
{{- if regexMatch "(^|://)[^/@\\s]*:[^/@\\s]*@|[?&](password|passwd|pwd|secret|token|access_token|api_key|apikey|key|sig|signature)=" (toString .) }}true{{ end }}
{{- end }}

{{- define "apx.redactUrl" -}}
{{- regexReplaceAll "[?&](password|passwd|pwd|secret|token|access_token|api_key|apikey|key|sig|signature)=[^&#]*" (regexReplaceAll "(^|://)([^/:@\\s]*):[^/@\\s]*@" (toString .) "${1}${2}:***@") "" }}
{{- end }}

{{- define "apx.credentialsSecretName" -}}
{{ include "apx.fullname" . }}-credentials
{{- end }}

{{/* One env entry: the value inline, or from the credentials Secret when it carries a credential. */}}
{{- define "apx.urlEnv" -}}
- name: {{ .name }}
{{- if include "apx.hasCredentials" .value }}
  valueFrom:
    secretKeyRef:
      name: {{ include "apx.credentialsSecretName" .ctx }}
      key: {{ .key }}
{{- else }}
  value: {{ .value | quote }}
{{- end }}
{{- end }}

{{/* Redis URL and Pub/Sub settings as container env, shared by the operator and the dataplane. */}}
{{- define "apx.backendEnv" -}}
{{- if .Values.redis.existingSecret.name }}
- name: APX_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret.name }}
      key: {{ .Values.redis.existingSecret.key }}
{{- else }}
{{ include "apx.urlEnv" (dict "ctx" . "name" "APX_REDIS_URL" "key" "redis-url" "value" .Values.redis.url) }}
{{- end }}
- name: APX_PUBSUB_PROJECT
  value: {{ .Values.pubsub.project | quote }}
{{- with .Values.pubsub.emulatorHost }}
{{ include "apx.urlEnv" (dict "ctx" $ "name" "PUBSUB_EMULATOR_HOST" "key" "pubsub-emulator-host" "value" .) }}
{{- end }}
- name: APX_LOG_LEVEL
  value: {{ .Values.operator.logLevel | quote }}
- name: APX_JSON_LOGS
  value: {{ .Values.operator.jsonLogs | quote }}
{{- with .Values.operator.otlpEndpoint }}
{{ include "apx.urlEnv" (dict "ctx" $ "name" "APX_OTLP_ENDPOINT" "key" "otlp-endpoint" "value" .) }}
{{- end }}
{{- include "apx.otelEnv" . }}
{{- with .Values.instance }}
{{- /* The operator scopes its route table by it and the gateway reads that one (README, "Outgrowing one operator"). */}}
- name: APX_INSTANCE
  value: {{ . | quote }}
{{- end }}
{{- end }}
