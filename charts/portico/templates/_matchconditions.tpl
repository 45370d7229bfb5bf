{{/*
matchConditions of the validating webhook (Kubernetes 1.30+): CEL that keeps from /validate the
writes Portico would certainly admit, without a warning. Soundness first: each condition is
false (the webhook is skipped) only when webhook/src/validate.rs and validation/pod.rs provably
return "allowed" with no warning, whatever the apiserver itself checked before:

* Services always go to Portico (its targetPort warning depends on the pods, not on the write).
* A pod spec (a Pod's, or a workload's template) is checked only for container ports, the port
  references of probes and lifecycle handlers, and what ephemeral containers declare. A spec
  where no container or init container declares a port, every probe/lifecycle httpGet, tcpSocket
  and grpc port is a number in 1-65535 (a name must be declared by its container, so a name is
  never skipped), and no ephemeral container has ports, probes or lifecycle, yields no error.
* An UPDATE whose pod spec equals the old one's yields exactly the old errors, and Portico's
  ratcheting only refuses violations an update introduces.

Every condition is "not (this kind, and skippable)", so a request of any other kind is always
sent; has() guards every step, so an object the apiserver sends cannot make one fail to evaluate.
The object is the unstructured request object (dyn): ports are int or string there.
*/}}

{{/* A pod spec Portico has nothing to check in. Argument: the spec's field path. Its containers
and init containers declare no ports, and every httpGet, tcpSocket and grpc port of their probes
and lifecycle handlers is a number in 1-65535 (a named port must be declared by its container,
so a name is never skipped); its ephemeral containers declare no ports, probes or lifecycle. */}}
{{- define "portico.cel.plainPodSpec" -}}
((has({{ . }}.containers) ? {{ . }}.containers : []) + (has({{ . }}.initContainers) ? {{ . }}.initContainers : [])).all(c,
  (!has(c.ports) || size(c.ports) == 0)
  && ((has(c.livenessProbe) ? [c.livenessProbe] : []) + (has(c.readinessProbe) ? [c.readinessProbe] : [])
      + (has(c.startupProbe) ? [c.startupProbe] : [])
      + (has(c.lifecycle) && has(c.lifecycle.postStart) ? [c.lifecycle.postStart] : [])
      + (has(c.lifecycle) && has(c.lifecycle.preStop) ? [c.lifecycle.preStop] : [])).all(h,
    (!has(h.httpGet) || (has(h.httpGet.port) && type(h.httpGet.port) == int && h.httpGet.port >= 1 && h.httpGet.port <= 65535))
    && (!has(h.tcpSocket) || (has(h.tcpSocket.port) && type(h.tcpSocket.port) == int && h.tcpSocket.port >= 1 && h.tcpSocket.port <= 65535))
    && (!has(h.grpc) || (has(h.grpc.port) && type(h.grpc.port) == int && h.grpc.port >= 1 && h.grpc.port <= 65535))))
&& (!has({{ . }}.ephemeralContainers) || {{ . }}.ephemeralContainers.all(e,
  (!has(e.ports) || size(e.ports) == 0) && !has(e.livenessProbe) && !has(e.readinessProbe)
  && !has(e.startupProbe) && !has(e.lifecycle)))
{{- end }}

{{/* has() for every step of a path: (list "object" "spec.template.spec"). */}}
{{- define "portico.cel.present" -}}
{{- $acc := index . 0 -}}
{{- $steps := list -}}
{{- range splitList "." (index . 1) }}
{{- $acc = printf "%s.%s" $acc . }}
{{- $steps = append $steps (printf "has(%s)" $acc) }}
{{- end -}}
{{- join " && " $steps -}}
{{- end }}

{{/* One condition: requests of kinds `match` are skipped when their pod spec at `path` is
unchanged by an UPDATE or has nothing Portico checks. Argument: (list match path). */}}
{{- define "portico.cel.podSpecCondition" -}}
{{- $match := index . 0 -}}
{{- $path := index . 1 -}}
!(({{ $match }})
  && {{ include "portico.cel.present" (list "object" $path) }}
  && ((request.operation == 'UPDATE' && oldObject != null
        && {{ include "portico.cel.present" (list "oldObject" $path) }}
        && object.{{ $path }} == oldObject.{{ $path }})
      || ({{ include "portico.cel.plainPodSpec" (printf "object.%s" $path) | nindent 8 }})))
{{- end }}

{{/* The validating webhook's matchConditions, or nothing when they are off or the cluster is
older than 1.30 (where the field is beta or absent). */}}
{{- define "portico.validatingMatchConditions" -}}
{{- if and .Values.webhook.validating.matchConditions.enabled (semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version) -}}
matchConditions:
  # Pods whose spec has no ports and no named probe ports, and pod UPDATEs that keep the spec.
  - name: pods-portico-can-refuse
    expression: |-
      {{- include "portico.cel.podSpecCondition" (list "request.kind.group == '' && request.kind.kind == 'Pod'" "spec") | nindent 6 }}
  # The same for the pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs.
  - name: templates-portico-can-refuse
    expression: |-
      {{- include "portico.cel.podSpecCondition" (list "(request.kind.group == 'apps' && request.kind.kind in ['Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet']) || (request.kind.group == 'batch' && request.kind.kind == 'Job')" "spec.template.spec") | nindent 6 }}
  # And of CronJobs' job templates.
  - name: cronjob-templates-portico-can-refuse
    expression: |-
      {{- include "portico.cel.podSpecCondition" (list "request.kind.group == 'batch' && request.kind.kind == 'CronJob'" "spec.jobTemplate.spec.template.spec") | nindent 6 }}
{{- end }}
{{- end }}

{{/* objectSelector of both webhooks, when webhook.objectSelector is set. */}}
{{- define "portico.webhookObjectSelector" -}}
{{- with .Values.webhook.objectSelector -}}
objectSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* objectSelector of the endpoint-address webhook (endpoints.portico.dev): webhook.objectSelector,
if set, ANDed with "no managed-by label", so controller-managed Endpoints and EndpointSlices
(endpoints.kubernetes.io/managed-by, endpointslice.kubernetes.io/managed-by, any value) are never
sent; Portico admits them untouched anyway (webhook/src/validation/endpoints.rs). */}}
{{- define "portico.endpointsObjectSelector" -}}
{{- $user := .Values.webhook.objectSelector | default dict -}}
objectSelector:
  {{- with $user.matchLabels }}
  matchLabels:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  matchExpressions:
    {{- with $user.matchExpressions }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    - key: endpoints.kubernetes.io/managed-by
      operator: DoesNotExist
    - key: endpointslice.kubernetes.io/managed-by
      operator: DoesNotExist
{{- end }}

{{/* matchConditions of the endpoint-address webhook, under the same switch and version as the
validating ones: the Endpoints and EndpointSlice default/kubernetes that kube-apiserver's own
reconciler writes (without a managed-by label) are never sent; Portico admits them anyway. */}}
{{- define "portico.endpointsMatchConditions" -}}
{{- if and .Values.webhook.validating.matchConditions.enabled (semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version) -}}
matchConditions:
  - name: not-the-apiservers-own-endpoints
    expression: "!(request.namespace == 'default' && request.name == 'kubernetes')"
{{- end }}
{{- end }}
