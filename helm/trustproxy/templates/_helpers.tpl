{{/* Names and labels. */}}
{{- define "trustproxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "trustproxy.fullname" -}}
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

{{- define "trustproxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "trustproxy.commonLabels" -}}
helm.sh/chart: {{ include "trustproxy.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "trustproxy.labels" -}}
{{ include "trustproxy.commonLabels" . }}
{{ include "trustproxy.selectorLabels" . }}
{{- end }}

{{- define "trustproxy.redis.labels" -}}
{{ include "trustproxy.commonLabels" . }}
{{ include "trustproxy.redis.selectorLabels" . }}
{{- end }}

{{- define "trustproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trustproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end }}

{{- define "trustproxy.redis.fullname" -}}
{{- printf "%s-redis" (include "trustproxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "trustproxy.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trustproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "trustproxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trustproxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "trustproxy.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Paths inside the trustproxy container. The image's CMD reads CONFIG_DIR/trustproxy.yaml. */}}
{{- define "trustproxy.configDir" -}}/etc/trustproxy{{- end }}
{{- define "trustproxy.tlsDir" -}}/run/trustproxy/tls{{- end }}
{{- define "trustproxy.clientCADir" -}}/run/trustproxy/client-ca{{- end }}
{{- define "trustproxy.htpasswdDir" -}}/run/trustproxy/htpasswd{{- end }}
{{- define "trustproxy.stateDir" -}}/var/lib/trustproxy{{- end }}
{{- define "trustproxy.caDir" -}}/run/trustproxy/ca{{- end }}
{{- define "trustproxy.port" -}}8443{{- end }}

{{/* The Redis URL the chart puts into the config ("" when it comes from a Secret or nowhere). */}}
{{- define "trustproxy.redisURL" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s:6379/0" (include "trustproxy.redis.fullname" .) }}
{{- else if and .Values.externalRedis.url (not .Values.externalRedis.existingSecret) }}
{{- .Values.externalRedis.url }}
{{- end }}
{{- end }}

{{/*
The trustproxy config as YAML: the user's `config` with what the chart owns set on top.
Fails the render on settings the chart cannot run with.
*/}}
{{- define "trustproxy.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- if not $cfg.upstreams }}
{{- fail "config.upstreams: at least one upstream is required" }}
{{- end }}
{{- $server := deepCopy ($cfg.server | default dict) }}
{{- $_ := set $server "listen" (printf "0.0.0.0:%s" (include "trustproxy.port" .)) }}
{{- if .Values.tls.enabled }}
{{- if not .Values.tls.secretName }}
{{- fail "tls.enabled needs tls.secretName (an existing kubernetes.io/tls Secret)" }}
{{- end }}
{{- $_ := set $server "tls_cert_file" (printf "%s/tls.crt" (include "trustproxy.tlsDir" .)) }}
{{- $_ := set $server "tls_key_file" (printf "%s/tls.key" (include "trustproxy.tlsDir" .)) }}
{{- else }}
{{- $_ := unset $server "tls_cert_file" }}
{{- $_ := unset $server "tls_key_file" }}
{{- end }}
{{- $clientAuth := dict }}
{{- if .Values.tls.clientCA.secretName }}
{{- if not .Values.tls.enabled }}
{{- fail "tls.clientCA (mTLS) needs tls.enabled" }}
{{- end }}
{{- $_ := set $clientAuth "client_ca_file" (printf "%s/%s" (include "trustproxy.clientCADir" .) .Values.tls.clientCA.key) }}
{{- end }}
{{- if .Values.clientAuth.htpasswd.secretName }}
{{- $_ := set $clientAuth "htpasswd_file" (printf "%s/%s" (include "trustproxy.htpasswdDir" .) .Values.clientAuth.htpasswd.key) }}
{{- end }}
{{- $_ := set $server "client_auth" $clientAuth }}
{{- $_ := set $cfg "server" $server }}
{{- $cache := deepCopy ($cfg.cache | default dict) }}
{{- $url := include "trustproxy.redisURL" . }}
{{- if $url }}
{{- $_ := set $cache "redis_url" $url }}
{{- end }}
{{- /* The host's trust state file (shared by the pod's workers): on the emptyDir. */}}
{{- $_ := set $cache "state_dir" (include "trustproxy.stateDir" .) }}
{{- $_ := set $cfg "cache" $cache }}
{{- $shared := or $cache.redis_url .Values.externalRedis.existingSecret }}
{{- if and (not $shared) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "several replicas need shared trust state: enable redis, or set externalRedis.url, externalRedis.existingSecret or config.cache.redis_url" }}
{{- end }}
{{- $_ := set $cfg "audit" (dict "sink" "stdout") }}
{{- $_ := set $cfg "policy_file" "policy.yaml" }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Environment of the trustproxy container: passwords and the Redis URL from existing
Secrets (TRUSTPROXY_<KEY__PATH> overrides, see README), then extraEnv. Fails on Secret
references to upstreams or trust sources that config does not have.
*/}}
{{- define "trustproxy.env" -}}
{{- range $i, $up := .Values.config.upstreams }}
{{- with get $.Values.upstreamPasswords $up.name }}
- name: TRUSTPROXY_UPSTREAMS__{{ $i }}__AUTH__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "upstreamPasswords.%s.secretName is required" $up.name) .secretName }}
      key: {{ .key | default "password" }}
{{- end }}
{{- end }}
{{- range $name := keys .Values.upstreamPasswords | sortAlpha }}
{{- $found := false }}
{{- range $.Values.config.upstreams }}
{{- if eq .name $name }}{{ $found = true }}{{ end }}
{{- end }}
{{- if not $found }}
{{- fail (printf "upstreamPasswords.%s: no upstream named %s in config.upstreams" $name $name) }}
{{- end }}
{{- end }}
{{- $sources := dict }}
{{- if .Values.config.trust }}{{ $sources = .Values.config.trust.sources | default dict }}{{ end }}
{{- range $name := keys .Values.notaryPasswords | sortAlpha }}
{{- $ref := get $.Values.notaryPasswords $name }}
{{- if not (hasKey $sources $name) }}
{{- fail (printf "notaryPasswords.%s: no trust source named %s in config.trust.sources" $name $name) }}
{{- end }}
- name: TRUSTPROXY_TRUST__SOURCES__{{ $name | upper }}__AUTH__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "notaryPasswords.%s.secretName is required" $name) $ref.secretName }}
      key: {{ $ref.key | default "password" }}
{{- end }}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.existingSecret }}
- name: TRUSTPROXY_CACHE__REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.existingSecretKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The policy as YAML; none given: no rules, so every repository is refused. */}}
{{- define "trustproxy.policy" -}}
{{- if .Values.policy }}
{{- toYaml .Values.policy }}
{{- else }}
{{- toYaml (dict "version" "2.0" "trust" (dict "repositories" dict)) }}
{{- end }}
{{- end }}
