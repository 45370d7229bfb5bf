{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "portico.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, suffixed with the chart name unless it already contains it. */}}
{{- define "portico.fullname" -}}
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

{{- define "portico.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portico.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portico.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "portico.labels" -}}
helm.sh/chart: {{ include "portico.chart" . }}
{{ include "portico.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: portico
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "portico.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portico.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "portico.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/* Name of both webhook configurations (--webhook-configuration-name). */}}
{{- define "portico.webhookConfigurationName" -}}
{{- default (include "portico.fullname" .) .Values.webhook.configurationName }}
{{- end }}

{{/* The Service in front of the webhook and metrics ports (--webhook-service-name). */}}
{{- define "portico.serviceName" -}}
{{- include "portico.fullname" . }}
{{- end }}

{{/* Secret with the webhook serving certificate (--tls-secret-name or cert-manager's secretName). */}}
{{- define "portico.tlsSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "portico.fullname" .)) .Values.webhook.tls.secretName }}
{{- end }}

{{/* cert-manager Certificate of the webhook; the CA injector copies its CA into caBundle. */}}
{{- define "portico.certificateName" -}}
{{- printf "%s-webhook" (include "portico.fullname" .) }}
{{- end }}

{{- define "portico.leaseName" -}}
{{- default (include "portico.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Whether Portico manages its own webhook certificate (webhook on, cert-manager off). */}}
{{- define "portico.selfManagedCerts" -}}
{{- if and .Values.webhook.enabled (not .Values.certManager.enabled) }}true{{ end }}
{{- end }}

{{/* Whether a controller is enabled: include "portico.controllerEnabled" (list . "endpoint"). */}}
{{- define "portico.controllerEnabled" -}}
{{- $root := index . 0 }}
{{- if has (index . 1) $root.Values.controllers.enabled }}true{{ end }}
{{- end }}

{{/* namespaceSelector shared by both webhooks: never kube-system, kube-node-lease, the release
namespace or webhook.excludeNamespaces. */}}
{{- define "portico.webhookNamespaceSelector" -}}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values:
        {{- range (concat (list "kube-system" "kube-node-lease" .Release.Namespace) .Values.webhook.excludeNamespaces | uniq) }}
        - {{ . | quote }}
        {{- end }}
    {{- with .Values.webhook.namespaceSelectorExpressions }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* clientConfig of a webhook; argument: (list . "/path"). caBundle is left out on purpose:
Portico (self-managed) or cert-manager's CA injector owns it, so upgrades never reset it. */}}
{{- define "portico.webhookClientConfig" -}}
{{- $root := index . 0 -}}
clientConfig:
  service:
    name: {{ include "portico.serviceName" $root }}
    namespace: {{ $root.Release.Namespace }}
    path: {{ index . 1 }}
    port: 443
{{- end }}

{{/* Annotations of the webhook configurations: cert-manager's CA injection when enabled. */}}
{{- define "portico.webhookAnnotations" -}}
{{- if .Values.certManager.enabled -}}
annotations:
  cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "portico.certificateName" .) }}
{{- end }}
{{- end }}

{{/*
"true" when the webhook allocates clusterIPs and nodePorts (mutating webhook, allocation RBAC).
*/}}
{{- define "portico.allocating" -}}
{{- if and .Values.webhook.enabled .Values.allocation.enabled }}true{{ end }}
{{- end }}

{{/* Refuses combinations the schema cannot say clearly; included by the Deployment. */}}
{{- define "portico.validateValues" -}}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled }}
{{- fail "metrics.serviceMonitor.enabled and metrics.podMonitor.enabled are both true: choose one (each scrapes every pod, so every series would be ingested twice)" }}
{{- end }}
{{- if include "portico.controllerEnabled" (list . "endpointslicemirroring") }}
{{- $slices := list .Values.controllers.managedBy "endpointslice-controller.k8s.io" "endpointslice-controller.portico" }}
{{- with .Values.controllers.adoptFrom }}{{ $slices = append $slices . }}{{ end }}
{{- range $key, $name := dict "controllers.mirroring.managedBy" .Values.controllers.mirroring.managedBy "controllers.mirroring.adoptFrom" .Values.controllers.mirroring.adoptFrom }}
{{- if and $name (has $name $slices) }}
{{- fail (printf "%s is %q, an EndpointSlice controller's manager name (controllers.managedBy, controllers.adoptFrom, or upstream's or Portico's default): the mirroring controller deletes its slices of every Service with a selector, so it would delete that controller's slices; give it a name of its own" $key $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.metrics.https.enabled (not .Values.webhook.enabled) }}
{{- fail "metrics.https.enabled needs webhook.enabled: the metrics listener serves HTTPS with the webhook's serving certificate (--metrics-secure); turn the webhook on, or metrics.https off" }}
{{- end }}
{{- end }}

{{/* scheme and tlsConfig of a ServiceMonitor/PodMonitor endpoint: plain HTTP, or HTTPS trusting
the CA of the webhook TLS Secret (`ca.crt`: Portico's own CA, or cert-manager's) for the
Service's DNS name, which the serving certificate carries. */}}
{{- define "portico.scrapeScheme" -}}
{{- if .Values.metrics.https.enabled }}
scheme: https
tlsConfig:
  {{- if .Values.metrics.https.insecureSkipVerify }}
  insecureSkipVerify: true
  {{- else }}
  ca:
    secret:
      name: {{ include "portico.tlsSecretName" . }}
      key: ca.crt
  serverName: {{ printf "%s.%s.svc" (include "portico.serviceName" .) .Release.Namespace }}
  {{- end }}
{{- else }}
scheme: http
{{- end }}
{{- end }}
