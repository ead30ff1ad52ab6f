{{/* Names, labels and the generated broker configuration. */}}

{{- define "wif-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wif-broker.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "wif-broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wif-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wif-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "wif-broker.labels" -}}
helm.sh/chart: {{ include "wif-broker.chart" . }}
{{ include "wif-broker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wif-broker
{{- end }}

{{- define "wif-broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wif-broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wif-broker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "wif-broker.agentImage" -}}
{{- $a := .Values.webhook.agent }}
{{- printf "%s:%s" (default .Values.image.repository $a.repository) (default (default .Chart.AppVersion .Values.image.tag) $a.tag) }}
{{- end }}

{{/* The Secret holding the serving certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "wif-broker.tlsSecretName" -}}
{{- if eq .Values.tls.source "secret" }}
{{- required "tls.existingSecret is required with tls.source: secret" .Values.tls.existingSecret }}
{{- else }}
{{- printf "%s-tls" (include "wif-broker.fullname" .) }}
{{- end }}
{{- end }}

{{/* DNS names the serving certificate must carry. */}}
{{- define "wif-broker.dnsNames" -}}
{{- $name := include "wif-broker.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list $name (printf "%s.%s" $name $ns) (printf "%s.%s.svc" $name $ns) (printf "%s.%s.svc.cluster.local" $name $ns) | toJson }}
{{- end }}

{{/* The webhook's own Service (and its certificate's name): apart from the API's. */}}
{{- define "wif-broker.webhookName" -}}
{{- printf "%s-webhook" (include "wif-broker.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
The Secret holding the webhook listener's certificate (tls.crt, tls.key, ca.crt): its own,
generated or issued for the webhook Service's names; with tls.source: secret, the given
Secret, whose certificate must also carry those names.
*/}}
{{- define "wif-broker.webhookTlsSecretName" -}}
{{- if eq .Values.tls.source "secret" }}
{{- include "wif-broker.tlsSecretName" . }}
{{- else }}
{{- printf "%s-tls" (include "wif-broker.webhookName" .) }}
{{- end }}
{{- end }}

{{/* DNS names the webhook listener's certificate must carry (the API server calls <svc>.<ns>.svc). */}}
{{- define "wif-broker.webhookDnsNames" -}}
{{- $name := include "wif-broker.webhookName" . }}
{{- $ns := .Release.Namespace }}
{{- list $name (printf "%s.%s" $name $ns) (printf "%s.%s.svc" $name $ns) (printf "%s.%s.svc.cluster.local" $name $ns) | toJson }}
{{- end }}

{{- define "wif-broker.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* Refuse combinations that cannot work, with the reason. */}}
{{- define "wif-broker.checks" -}}
{{- if and .Values.webhook.enabled (not .Values.tls.enabled) }}
{{- fail "webhook.enabled needs tls.enabled: the API server calls admission webhooks over https only" }}
{{- end }}
{{- if not (has .Values.store.type (list "sqlite" "postgres")) }}
{{- fail (printf "store.type must be sqlite or postgres, not %q" .Values.store.type) }}
{{- end }}
{{- if eq .Values.store.type "sqlite" }}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- fail "several broker replicas (replicaCount > 1 or autoscaling.enabled) need store.type: postgres; SQLite lives on one pod's volume" }}
{{- end }}
{{- else }}
{{- if not .Values.store.postgres.existingSecret }}
{{- fail "store.type: postgres needs store.postgres.existingSecret, a Secret holding the PostgreSQL URL" }}
{{- end }}
{{- end }}
{{- if and .Values.webhook.enabled .Values.networkPolicy.enabled (not .Values.networkPolicy.webhookFrom) }}
{{- fail "networkPolicy.enabled with the webhook needs networkPolicy.webhookFrom: the peers the API server's calls come from (a NetworkPolicy cannot name the API server; see docs/kubernetes.md)" }}
{{- end }}
{{- if and .Values.webhook.enabled (eq (int .Values.webhook.port) (int .Values.broker.port)) }}
{{- fail "webhook.port must differ from broker.port: the webhook has its own listener, never the API port" }}
{{- end }}
{{- if and .Values.webhook.enabled (eq .Values.tls.source "secret") (not .Values.tls.caBundle) }}
{{- fail "the webhook with tls.source: secret needs tls.caBundle (base64 PEM) for the API server" }}
{{- end }}
{{- end }}

{{/*
The broker's TOML. The chart's own settings are merged over `broker.config`, then written
with toToml. Helm reads every number in values as a float, and toToml would write 3600 as
3600.0, which the broker's integer keys refuse; whole numbers are written back as integers
(the broker has no float keys).
*/}}
{{- define "wif-broker.config" -}}
{{- $managed := dict }}
{{- $server := dict "listen" (printf "0.0.0.0:%d" (int .Values.broker.port)) "drain_secs" (int .Values.broker.drainSeconds) "shutdown_timeout_secs" (int .Values.broker.shutdownTimeoutSeconds) }}
{{- if .Values.tls.enabled }}
{{- $_ := set $server "tls_cert" "/etc/wif-broker/tls/tls.crt" }}
{{- $_ := set $server "tls_key" "/etc/wif-broker/tls/tls.key" }}
{{- end }}
{{- $publicUrl := .Values.broker.publicUrl }}
{{- if and (not $publicUrl) .Values.tls.enabled }}
{{- $publicUrl = printf "https://%s.%s.svc:%d" (include "wif-broker.fullname" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}
{{- if $publicUrl }}
{{- $_ := set $server "public_url" $publicUrl }}
{{- end }}
{{- $_ := set $managed "server" $server }}
{{- if eq .Values.store.type "sqlite" }}
{{- $_ := set $managed "store" (dict "url" "sqlite:///var/lib/wif-broker/wif.db") }}
{{- end }}
{{- $_ := set $managed "log" (dict "level" .Values.broker.logLevel "format" .Values.broker.logFormat) }}
{{- if .Values.admin.existingSecret }}
{{- $_ := set $managed "admin" (dict "tokens_file" "/etc/wif-broker/admin/tokens") }}
{{- end }}
{{- $issuer := dict }}
{{- if .Values.brokerIssuer.url }}
{{- $_ := set $issuer "url" .Values.brokerIssuer.url }}
{{- end }}
{{- if .Values.signingKeys.existingSecret }}
{{- $_ := set $issuer "signing_key_file" "/etc/wif-broker/signing-keys/signing.pem" }}
{{- $_ := set $issuer "published_key_files" (list "/etc/wif-broker/signing-keys/next.pem" "/etc/wif-broker/signing-keys/previous.pem") }}
{{- end }}
{{- if $issuer }}
{{- $_ := set $managed "broker_issuer" $issuer }}
{{- end }}
{{- if .Values.webhook.enabled }}
{{- $w := .Values.webhook }}
{{- $webhook := dict
      "enabled" true
      "listen" (printf "0.0.0.0:%d" (int $w.port))
      "tls_cert" "/etc/wif-broker/webhook-tls/tls.crt"
      "tls_key" "/etc/wif-broker/webhook-tls/tls.key"
      "broker_url" (printf "https://%s.%s.svc:%d" (include "wif-broker.fullname" .) .Release.Namespace (int .Values.service.port))
      "agent_image" (include "wif-broker.agentImage" .)
      "agent_image_pull_policy" $w.agent.imagePullPolicy
      "agent_port" (int $w.agent.port)
      "agent_cpu_request" $w.agent.cpuRequest
      "agent_memory_request" $w.agent.memoryRequest
      "agent_memory_limit" $w.agent.memoryLimit
      "token_audience" $w.token.audience
      "token_expiration_secs" (int $w.token.expirationSeconds)
      "skip_containers_annotation" $w.skipContainersAnnotation }}
{{- if $w.agent.trustBrokerCA }}
{{- $_ := set $webhook "broker_ca_file" "/etc/wif-broker/tls/ca.crt" }}
{{- end }}
{{- if $w.defaultTenantId }}
{{- $_ := set $webhook "default_tenant_id" $w.defaultTenantId }}
{{- end }}
{{- $_ := set $managed "webhook" $webhook }}
{{- end }}
{{- $config := mustMergeOverwrite (deepCopy (.Values.broker.config | default dict)) $managed }}
{{- regexReplaceAll "(?m)(=\\s*-?[0-9]+)\\.0\\s*$" (toToml $config) "${1}" }}
{{- end }}
