{{/* Combinations of values the schema cannot express, each with a message that says what to set.
Every check runs and the render fails once, listing all the problems (one per line), so that a
values file can be fixed in one pass. Rendered (to nothing) by validate.yaml. */}}
{{- define "moss-audio.validate" -}}
{{- $v := .Values }}
{{- $errors := list }}
{{- if not $v.postgresql.enabled }}
  {{- if and (not $v.postgresql.external.existingSecret) (not $v.postgresql.external.url) }}
    {{- $errors = append $errors "postgresql.enabled=false needs postgresql.external.url or postgresql.external.existingSecret" }}
  {{- end }}
  {{- if and $v.mlflow.enabled (not $v.postgresql.external.existingSecret) (not $v.postgresql.external.mlflowUrl) }}
    {{- $errors = append $errors "mlflow.enabled with postgresql.enabled=false needs postgresql.external.mlflowUrl (MLflow's own database) or postgresql.external.existingSecret" }}
  {{- end }}
{{- end }}
{{- if and (not $v.redis.enabled) (not $v.redis.external.existingSecret) (not $v.redis.external.url) }}
  {{- $errors = append $errors "redis.enabled=false needs redis.external.url or redis.external.existingSecret" }}
{{- end }}
{{- if not $v.minio.enabled }}
  {{- if not $v.s3.external.endpoint }}
    {{- $errors = append $errors "minio.enabled=false needs s3.external.endpoint (host:port of the S3 API)" }}
  {{- end }}
  {{- if and (not $v.s3.external.existingSecret) (or (not $v.s3.external.accessKey) (not $v.s3.external.secretKey)) }}
    {{- $errors = append $errors "minio.enabled=false needs s3.external.accessKey and s3.external.secretKey, or s3.external.existingSecret" }}
  {{- end }}
{{- end }}
{{- if eq $v.inference.backend "kserve" }}
  {{- range $component := list "encoder" "generator" }}
    {{- $inCluster := and $v.kserve.enabled (index $v.kserve $component).enabled }}
    {{- if and (not $inCluster) (not (get $v.inference.kserve (printf "%sUrl" $component))) }}
      {{- $errors = append $errors (printf "inference.backend=kserve without the in-cluster %s predictor (kserve.enabled / kserve.%s.enabled) needs inference.kserve.%sUrl" $component $component $component) }}
    {{- end }}
  {{- end }}
{{- end }}
{{- if and (eq $v.inference.backend "openai") (not $v.inference.openai.baseUrl) (not (and $v.kserve.enabled $v.kserve.vllm.enabled)) }}
  {{- $errors = append $errors "inference.backend=openai needs inference.openai.baseUrl or the in-cluster vLLM server (kserve.enabled and kserve.vllm.enabled)" }}
{{- end }}
{{- if $v.kserve.enabled }}
  {{- range $component := list "encoder" "generator" }}
    {{- $p := index $v.kserve $component }}
    {{- $canary := include "moss-audio.predictorCanary" (dict "ctx" $ "component" $component) }}
    {{- if and $p.enabled (ne $canary "") (ne $v.kserve.deploymentMode "Serverless") }}
      {{- $errors = append $errors (printf "kserve.%s.canaryTrafficPercent needs kserve.deploymentMode=Serverless (canary rollouts are a Knative feature; got %s): unset it or switch the mode" $component $v.kserve.deploymentMode) }}
    {{- end }}
  {{- end }}
{{- end }}
{{- range $queue := list "encode" "generate" }}
  {{- $w := index $v.workers $queue }}
  {{- if and $w.keda.enabled (not $v.redis.enabled) (not $v.redis.external.address) }}
    {{- $errors = append $errors (printf "workers.%s.keda.enabled with an external Redis needs redis.external.address (host:port for KEDA's redis scaler)" $queue) }}
  {{- end }}
  {{- if and $w.keda.enabled (gt (int $w.keda.minReplicas) (int $w.keda.maxReplicas)) }}
    {{- $errors = append $errors (printf "workers.%s.keda.minReplicas must not exceed maxReplicas" $queue) }}
  {{- end }}
{{- end }}
{{- if and $v.gateway.autoscaling.enabled (gt (int $v.gateway.autoscaling.minReplicas) (int $v.gateway.autoscaling.maxReplicas)) }}
  {{- $errors = append $errors "gateway.autoscaling.minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- if and $v.trainer.enabled $v.trainer.platformSecret.create (not $v.minio.enabled) $v.s3.external.existingSecret }}
  {{- $errors = append $errors "trainer.enabled with s3.external.existingSecret: the chart cannot copy keys it never sees into the moss-platform Secret; create moss-platform (keys MOSS_*, docs/deploy.md) in the pipeline runner's and the trainer's namespaces yourself and set trainer.platformSecret.create=false" }}
{{- end }}
{{- if $errors }}
  {{- fail (printf "%d problem(s) with the values:\n- %s" (len $errors) (join "\n- " $errors)) }}
{{- end }}
{{- end }}
