{{/* Port the webhook listens on in the pod: hostNetwork.webhookPort on the node's network,
webhook.port otherwise. The Service reaches it through the container port's name. */}}
{{- define "portico.webhookPort" -}}
{{- if .Values.hostNetwork.enabled }}{{ .Values.hostNetwork.webhookPort }}{{ else }}{{ .Values.webhook.port }}{{ end }}
{{- end }}

{{/* Port of the metrics and probe listener in the pod: hostNetwork.metricsPort on the node's
network, metrics.port otherwise. */}}
{{- define "portico.metricsPort" -}}
{{- if .Values.hostNetwork.enabled }}{{ .Values.hostNetwork.metricsPort }}{{ else }}{{ .Values.metrics.port }}{{ end }}
{{- end }}

{{/* "true" when the NetworkPolicy is rendered: asked for, and the pods are not on the host
network, where NetworkPolicy does not apply. */}}
{{- define "portico.networkPolicy" -}}
{{- if and .Values.networkPolicy.enabled (not .Values.hostNetwork.enabled) }}true{{ end }}
{{- end }}
