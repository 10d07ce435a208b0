{{/* Names, labels and the shared RBAC rules of goodput-operator. */}}

{{- define "goodput-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "goodput-operator.fullname" -}}
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

{{- define "goodput-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "goodput-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "goodput-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "goodput-operator.labels" -}}
helm.sh/chart: {{ include "goodput-operator.chart" . }}
{{ include "goodput-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "goodput-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "goodput-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "goodput-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Peering is on with more than one replica (two standalone replicas would both act) or when asked. */}}
{{- define "goodput-operator.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{- define "goodput-operator.peeringName" -}}
{{- default (include "goodput-operator.fullname" .) .Values.peering.name -}}
{{- end -}}

{{/*
What the operator does to objects in the namespaces it serves; nothing else. Verbs were read off
the code: goodput/kube/actions.py (the operator's own calls) and kopf's watcher and patcher.
*/}}
{{- define "goodput-operator.namespacedRules" -}}
# InferenceDeployments: kopf lists and watches them, and patches its progress and diff-base annotations.
- apiGroups: [goodput.dev]
  resources: [inferencedeployments]
  verbs: [list, watch, patch]
# Their status subresource: the plan and conditions (Kube.patch_status).
- apiGroups: [goodput.dev]
  resources: [inferencedeployments/status]
  verbs: [patch]
# The vLLM pools: list owned ones (Kube.observe_pools), server-side apply (a PATCH, authorized as
# `create` too when the object does not exist yet), delete a pool the plan dropped (Kube.delete_pool).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [create, patch, delete]
# One Event per decision (Kube.post_event; core v1 Events, kopf's own event posting is off).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# The pools' pods: read (Pending pods tell of GPUs the cluster lacks; a scale-down picks the pods
# that leave) and patch (Kube.mark_leaving_pods writes controller.kubernetes.io/pod-deletion-cost).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch]
# Disaggregated mode: the P/D router's ServiceAccount, and its RoleBinding to the chart's
# vllm-router role (pods get/list/watch). The API server lets the operator bind only roles whose
# permissions it holds itself, and the operator writes no role rules.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [rolebindings]
  verbs: [create, patch]
# PodMonitors for the vLLM and router pods, where the Prometheus Operator serves them.
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors]
  verbs: [create, patch]
{{- end -}}

{{- define "goodput-operator.routerRoleName" -}}
{{ include "goodput-operator.fullname" . }}-vllm-router
{{- end -}}

{{- define "goodput-operator.routerRules" -}}
# What vllm-router's Kubernetes service discovery reads: the prefill and decode pods.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
{{- end -}}
