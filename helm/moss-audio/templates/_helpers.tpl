{{/* ---------------------------------------------------------------------------------------
Names
--------------------------------------------------------------------------------------- */}}

{{- define "moss-audio.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "moss-audio.fullname" -}}
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

{{- define "moss-audio.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <fullname>-<component>, short enough for StatefulSet pods and their revision labels.
Usage: include "moss-audio.componentName" (dict "ctx" $ "component" "gateway") */}}
{{- define "moss-audio.componentName" -}}
{{- printf "%s-%s" (include "moss-audio.fullname" .ctx | trunc 40 | trimSuffix "-") .component }}
{{- end }}

{{/* InferenceService name. Knative names revisions <isvc>-predictor-00001 (a 63-character DNS
label), so the prefix is kept short. */}}
{{- define "moss-audio.isvcName" -}}
{{- printf "%s-%s" (include "moss-audio.fullname" .ctx | trunc 30 | trimSuffix "-") .component }}
{{- end }}

{{- define "moss-audio.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "moss-audio.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "moss-audio.predictorServiceAccountName" -}}
{{- if .Values.kserve.serviceAccount.create }}
{{- default (include "moss-audio.componentName" (dict "ctx" . "component" "predictor")) .Values.kserve.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.kserve.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "moss-audio.configMapName" -}}
{{- include "moss-audio.componentName" (dict "ctx" . "component" "config") }}
{{- end }}

{{/* The Secret the chart generates (API key, passwords, composed URLs). */}}
{{- define "moss-audio.credentialsSecretName" -}}
{{- include "moss-audio.componentName" (dict "ctx" . "component" "credentials") }}
{{- end }}

{{/* The S3 credentials Secret annotated for KServe's storage initializer. */}}
{{- define "moss-audio.kserveS3SecretName" -}}
{{- include "moss-audio.componentName" (dict "ctx" . "component" "kserve-s3") }}
{{- end }}

{{/* Kubeflow Trainer: the namespace the TrainJobs run in (trainer.namespace, else the pipeline
runner's), and the Secret the pipeline steps and training pods read (its name is fixed: the
compiled pipelines name it). */}}
{{- define "moss-audio.trainerNamespace" -}}
{{- default .Values.trainer.pipelineRunner.namespace .Values.trainer.namespace }}
{{- end }}

{{- define "moss-audio.platformSecretName" -}}moss-platform{{- end }}

{{/* "true" when the chart knows the S3 keys and so can hand them to KServe. */}}
{{- define "moss-audio.kserveS3SecretEnabled" -}}
{{- if and .Values.kserve.enabled (or .Values.minio.enabled (not .Values.s3.external.existingSecret)) }}true{{ end }}
{{- end }}

{{/* ---------------------------------------------------------------------------------------
Labels. Selectors use the stable subset: name, instance, component.
--------------------------------------------------------------------------------------- */}}

{{- define "moss-audio.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moss-audio.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "moss-audio.labels" -}}
helm.sh/chart: {{ include "moss-audio.chart" .ctx }}
{{ include "moss-audio.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: moss-audio
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Every pod of the release (NetworkPolicy peers). */}}
{{- define "moss-audio.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "moss-audio.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* ---------------------------------------------------------------------------------------
Images and pod/container security
--------------------------------------------------------------------------------------- */}}

{{/* Usage: include "moss-audio.image" (dict "ctx" $ "variant" "cpu") */}}
{{- define "moss-audio.image" -}}
{{- printf "%s:%s-%s" .ctx.Values.image.repository (.ctx.Values.image.tag | default .ctx.Chart.AppVersion) .variant }}
{{- end }}

{{/* Usage: include "moss-audio.thirdPartyImage" .Values.redis.image */}}
{{- define "moss-audio.thirdPartyImage" -}}
{{- printf "%s:%s" .repository .tag }}
{{- end }}

{{- define "moss-audio.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "moss-audio.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The pod-level fields every pod of ours shares. */}}
{{- define "moss-audio.podCommon" -}}
serviceAccountName: {{ include "moss-audio.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "moss-audio.podSecurityContext" . | nindent 2 }}
{{- end }}

{{/* Pod annotations: roll pods when the shared configuration changes. */}}
{{- define "moss-audio.podAnnotations" -}}
checksum/config: {{ include (print .ctx.Template.BasePath "/configmap.yaml") .ctx | sha256sum }}
{{- with .ctx.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "moss-audio.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "moss-audio.tmpVolume" -}}
- name: tmp
  emptyDir: {}
{{- end }}

{{/* ---------------------------------------------------------------------------------------
Where things are
--------------------------------------------------------------------------------------- */}}

{{- define "moss-audio.s3Endpoint" -}}
{{- if .Values.minio.enabled }}
{{- printf "%s:9000" (include "moss-audio.componentName" (dict "ctx" . "component" "minio")) }}
{{- else }}
{{- .Values.s3.external.endpoint }}
{{- end }}
{{- end }}

{{- define "moss-audio.s3Secure" -}}
{{- if .Values.minio.enabled }}false{{ else }}{{ .Values.s3.external.secure }}{{ end }}
{{- end }}

{{- define "moss-audio.s3EndpointUrl" -}}
{{- printf "%s://%s" (ternary "https" "http" (eq (include "moss-audio.s3Secure" .) "true")) (include "moss-audio.s3Endpoint" .) }}
{{- end }}

{{/* The same endpoints as seen from another namespace (the Kubeflow Pipelines and TrainJob pods
read them from the `moss-platform` Secret): in-cluster services by their full DNS names. */}}
{{- define "moss-audio.s3EndpointFromAnywhere" -}}
{{- if .Values.minio.enabled }}
{{- printf "%s.%s.svc.cluster.local:9000" (include "moss-audio.componentName" (dict "ctx" . "component" "minio")) .Release.Namespace }}
{{- else }}
{{- .Values.s3.external.endpoint }}
{{- end }}
{{- end }}

{{- define "moss-audio.mlflowUriFromAnywhere" -}}
{{- if .Values.mlflow.enabled }}
{{- printf "http://%s.%s.svc.cluster.local:%v" (include "moss-audio.componentName" (dict "ctx" . "component" "mlflow")) .Release.Namespace .Values.mlflow.port }}
{{- else }}
{{- .Values.mlflow.externalUri }}
{{- end }}
{{- end }}

{{- define "moss-audio.mlflowUri" -}}
{{- if .Values.mlflow.enabled }}
{{- printf "http://%s:%v" (include "moss-audio.componentName" (dict "ctx" . "component" "mlflow")) .Values.mlflow.port }}
{{- else }}
{{- .Values.mlflow.externalUri }}
{{- end }}
{{- end }}

{{/* host:port of Redis for KEDA (which runs in its own namespace). */}}
{{- define "moss-audio.redisAddress" -}}
{{- if .Values.redis.enabled }}
{{- printf "%s.%s.svc.cluster.local:6379" (include "moss-audio.componentName" (dict "ctx" . "component" "redis")) .Release.Namespace }}
{{- else }}
{{- .Values.redis.external.address }}
{{- end }}
{{- end }}

{{/* The OpenAI-compatible API root the workers call with inference.backend=openai: the value,
or the in-cluster vLLM InferenceService (KServe's Hugging Face runtime serves it at /openai/v1). */}}
{{- define "moss-audio.openaiUrl" -}}
{{- if .Values.inference.openai.baseUrl }}
{{- .Values.inference.openai.baseUrl }}
{{- else }}
{{- printf "http://%s-predictor.%s.svc.cluster.local/openai/v1" (include "moss-audio.isvcName" (dict "ctx" . "component" "vllm")) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* The URL a worker calls for a predictor: the value, or the in-cluster InferenceService.
Usage: include "moss-audio.predictorUrl" (dict "ctx" $ "component" "encoder") */}}
{{- define "moss-audio.predictorUrl" -}}
{{- $v := .ctx.Values }}
{{- $explicit := get $v.inference.kserve (printf "%sUrl" .component) }}
{{- if $explicit }}
{{- $explicit }}
{{- else }}
{{- $host := printf "%s-predictor.%s.svc.cluster.local" (include "moss-audio.isvcName" .) .ctx.Release.Namespace }}
{{- if eq $v.inference.kserve.protocol "grpc" }}
{{- printf "%s:%s" $host (ternary "80" "8081" (eq $v.kserve.deploymentMode "Serverless")) }}
{{- else }}
{{- printf "http://%s" $host }}
{{- end }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------------------------------
Secret references (the body of a secretKeyRef: name + key)
--------------------------------------------------------------------------------------- */}}

{{- define "moss-audio.apiKeyRef" -}}
{{- if .Values.auth.existingSecret -}}
name: {{ .Values.auth.existingSecret }}
key: {{ .Values.auth.existingSecretKey }}
{{- else -}}
name: {{ include "moss-audio.credentialsSecretName" . }}
key: api-key
{{- end }}
{{- end }}

{{- define "moss-audio.databaseUrlRef" -}}
{{- if and (not .Values.postgresql.enabled) .Values.postgresql.external.existingSecret -}}
name: {{ .Values.postgresql.external.existingSecret }}
key: {{ .Values.postgresql.external.urlKey }}
{{- else -}}
name: {{ include "moss-audio.credentialsSecretName" . }}
key: database-url
{{- end }}
{{- end }}

{{- define "moss-audio.mlflowDatabaseUrlRef" -}}
{{- if and (not .Values.postgresql.enabled) .Values.postgresql.external.existingSecret -}}
name: {{ .Values.postgresql.external.existingSecret }}
key: {{ .Values.postgresql.external.mlflowUrlKey }}
{{- else -}}
name: {{ include "moss-audio.credentialsSecretName" . }}
key: mlflow-database-url
{{- end }}
{{- end }}

{{- define "moss-audio.redisUrlRef" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.existingSecret -}}
name: {{ .Values.redis.external.existingSecret }}
key: {{ .Values.redis.external.urlKey }}
{{- else -}}
name: {{ include "moss-audio.credentialsSecretName" . }}
key: redis-url
{{- end }}
{{- end }}

{{- define "moss-audio.s3AccessKeyRef" -}}
{{- if and (not .Values.minio.enabled) .Values.s3.external.existingSecret -}}
name: {{ .Values.s3.external.existingSecret }}
key: {{ .Values.s3.external.accessKeyKey }}
{{- else -}}
name: {{ include "moss-audio.credentialsSecretName" . }}
key: s3-access-key
{{- end }}
{{- end }}

{{- define "moss-audio.s3SecretKeyRef" -}}
{{- if and (not .Values.minio.enabled) .Values.s3.external.existingSecret -}}
name: {{ .Values.s3.external.existingSecret }}
key: {{ .Values.s3.external.secretKeyKey }}
{{- else -}}
name: {{ include "moss-audio.credentialsSecretName" . }}
key: s3-secret-key
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------------------------------
Application environment (pydantic-settings, MOSS_ prefix). Non-secret settings come from the
ConfigMap (envFrom); secrets are secretKeyRefs.
Usage: include "moss-audio.appEnv" (dict "ctx" $ "apiKey" true)
--------------------------------------------------------------------------------------- */}}
{{- define "moss-audio.appEnv" -}}
- name: HOME
  value: /tmp
- name: MOSS_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- include "moss-audio.databaseUrlRef" .ctx | nindent 6 }}
- name: MOSS_REDIS_URL
  valueFrom:
    secretKeyRef:
      {{- include "moss-audio.redisUrlRef" .ctx | nindent 6 }}
- name: MOSS_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      {{- include "moss-audio.s3AccessKeyRef" .ctx | nindent 6 }}
- name: MOSS_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      {{- include "moss-audio.s3SecretKeyRef" .ctx | nindent 6 }}
{{- if .apiKey }}
- name: MOSS_API_KEY
  valueFrom:
    secretKeyRef:
      {{- include "moss-audio.apiKeyRef" .ctx | nindent 6 }}
{{- end }}
{{- end }}

{{/* A map of extra variables as an env list. Usage: include "moss-audio.envMap" .Values.x.extraEnv */}}
{{- define "moss-audio.envMap" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* A predictor's canaryTrafficPercent: its own, else kserve.canaryTrafficPercent; "" when unset.
Usage: include "moss-audio.predictorCanary" (dict "ctx" $ "component" "encoder") */}}
{{- define "moss-audio.predictorCanary" -}}
{{- $canary := (index .ctx.Values.kserve .component).canaryTrafficPercent }}
{{- if kindIs "invalid" $canary }}{{ $canary = .ctx.Values.kserve.canaryTrafficPercent }}{{ end }}
{{- if not (kindIs "invalid" $canary) }}{{ int $canary }}{{ end }}
{{- end }}
