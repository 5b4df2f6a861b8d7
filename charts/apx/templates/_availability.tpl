{{/*
Helpers for high availability and tracing, used by operator-deployment.yaml, dataplane.yaml
(through apx.backendEnv) and leader-election-rbac.yaml.
*/}}

{{/* The Lease the operator replicas elect their leader with (in the release namespace). */}}
{{- define "apx.leaseName" -}}
{{ include "apx.operatorName" . }}
{{- end }}

{{/* Leader-election settings of the operator container (POD_NAME is its identity in the Lease). */}}
{{- define "apx.leaderElectionEnv" -}}
{{- with .Values.operator.leaderElection }}
- name: APX_LEADER_ELECTION
  value: {{ .enabled | quote }}
{{- if .enabled }}
- name: APX_LEASE_NAME
  value: {{ include "apx.leaseName" $ | quote }}
- name: APX_LEASE_DURATION_SECONDS
  value: {{ .leaseDurationSeconds | quote }}
- name: APX_LEASE_RENEW_SECONDS
  value: {{ .renewSeconds | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- end }}
{{- end }}

{{/*
Placement of the operator pods: the user's affinity if given; else, with more than one replica,
replicas preferably on different nodes, and spread over zones when the cluster has them.
*/}}
{{- define "apx.operatorPlacement" -}}
{{- $many := and .Values.operator.leaderElection.enabled (gt (int .Values.operator.replicaCount) 1) }}
{{- if .Values.affinity }}
affinity:
  {{- toYaml .Values.affinity | nindent 2 }}
{{- else if $many }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "apx.selectorLabels" (dict "ctx" . "component" "operator") | nindent 14 }}
{{- end }}
{{- if $many }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "apx.selectorLabels" (dict "ctx" . "component" "operator") | nindent 8 }}
{{- end }}
{{- end }}

{{/*
Standard OpenTelemetry settings for every APX container; they only matter when an OTLP endpoint
is set (operator.otlpEndpoint, rendered as APX_OTLP_ENDPOINT by apx.backendEnv).
*/}}
{{- define "apx.otelEnv" -}}
{{- if .Values.operator.otlpEndpoint }}
{{- with .Values.operator.tracing }}
{{- with .sampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ . | quote }}
{{- end }}
{{- with .samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- with .resourceAttributes }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
