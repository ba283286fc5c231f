{{- define "llm-sidecar.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "llm-sidecar.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "llm-sidecar.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "llm-sidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "llm-sidecar.service" -}}
{{- printf "%s-webhook" (include "llm-sidecar.fullname" .) -}}
{{- end -}}

{{- define "llm-sidecar.tlsSecret" -}}
{{- printf "%s-webhook-tls" (include "llm-sidecar.fullname" .) -}}
{{- end -}}

{{/* The MutatingWebhookConfiguration's two webhooks; `caBundle` is passed in (or empty for cert-manager). */}}
{{- define "llm-sidecar.webhooks" -}}
{{- $ctx := .ctx -}}
{{- $excluded := concat $ctx.Values.webhook.excludeNamespaces (list $ctx.Release.Namespace) | uniq -}}
{{- range $w := list (dict "name" "namespace.inject.llm-sidecar.io" "path" "/inject-namespace" "operator" "In") (dict "name" "pod.inject.llm-sidecar.io" "path" "/inject" "operator" "NotIn") }}
  - name: {{ $w.name }}
    admissionReviewVersions: ["v1"]
    sideEffects: None
    failurePolicy: {{ $ctx.Values.webhook.failurePolicy }}
    timeoutSeconds: {{ $ctx.Values.webhook.timeoutSeconds }}
    reinvocationPolicy: Never
    matchPolicy: Equivalent
    clientConfig:
      service:
        name: {{ include "llm-sidecar.service" $ctx }}
        namespace: {{ $ctx.Release.Namespace }}
        path: {{ $w.path }}
        port: 443
      {{- if $.caBundle }}
      caBundle: {{ $.caBundle }}
      {{- end }}
    rules:
      - operations: ["CREATE"]
        apiGroups: [""]
        apiVersions: ["v1"]
        resources: ["pods"]
        scope: Namespaced
    namespaceSelector:
      matchExpressions:
        # Namespaces labelled llm-sidecar.io/inject=enabled inject every pod (unless it opts out);
        # elsewhere only pods annotated llm-sidecar.io/inject: "true".
        - key: llm-sidecar.io/inject
          operator: {{ $w.operator }}
          values: ["enabled"]
        - key: kubernetes.io/metadata.name
          operator: NotIn
          values: {{ toJson $excluded }}
{{- end }}
{{- end -}}
