{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "tap-controller.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: the release name, or release-chart when they differ. */}}
{{- define "tap-controller.fullname" -}}
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

{{- define "tap-controller.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tap-controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tap-controller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tap-controller.labels" -}}
helm.sh/chart: {{ include "tap-controller.chart" . }}
{{ include "tap-controller.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: tap-controller
{{- end -}}

{{- define "tap-controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tap-controller.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is pinned. */}}
{{- define "tap-controller.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* "true" when leader election is on: asked for, or forced by replicas > 1. */}}
{{- define "tap-controller.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) -}}
true
{{- else -}}
false
{{- end -}}
{{- end -}}

{{/* extraTags map -> "k=v,k2=v2", keys sorted so the rendering is stable. */}}
{{- define "tap-controller.extraTags" -}}
{{- $pairs := list -}}
{{- range $k := keys .Values.extraTags | sortAlpha -}}
{{- $pairs = append $pairs (printf "%s=%s" $k (toString (get $.Values.extraTags $k))) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* watchNamespaces list -> "a,b" (empty = all namespaces). */}}
{{- define "tap-controller.watchNamespaces" -}}
{{- join "," (uniq .Values.watchNamespaces) -}}
{{- end -}}

{{/*
The controller's rules on the namespaced resources it works on: exactly the API use of the binary
(controller/src/k8s/rbac.rs, tested against every request it makes), plus delete on Secrets for the
OwnerReferencesPermissionEnforcement admission plugin (the API key Secret carries an ownerReference).
*/}}
{{- define "tap-controller.workloadRules" -}}
- apiGroups: ["tap.dev"]
  resources: ["transactionpipelines"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["tap.dev"]
  resources: ["transactionpipelines/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
