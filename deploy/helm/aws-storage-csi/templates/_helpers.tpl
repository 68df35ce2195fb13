{{/* Labels on every object; component is e.g. "ebs-csi-controller". */}}
{{- define "aws-storage-csi.labels" -}}
{{ include "aws-storage-csi.selectorLabels" . }}
app.kubernetes.io/part-of: aws-storage-csi
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Selector labels: the same as the kustomize manifests', so either can replace the other. */}}
{{- define "aws-storage-csi.selectorLabels" -}}
app.kubernetes.io/name: aws-storage-csi
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "aws-storage-csi.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "aws-storage-csi.sidecarImage" -}}
{{ .repository }}:{{ .tag }}
{{- end }}

{{/* Security context of every container that needs no privilege. */}}
{{- define "aws-storage-csi.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* --extra-tags value from a map, keys sorted so the output is stable. */}}
{{- define "aws-storage-csi.extraTags" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}{{ $pairs = append $pairs (printf "%s=%s" $k $v) }}{{ end }}
{{- join "," $pairs }}
{{- end }}

{{/* Arguments the controller plugin of either driver shares. */}}
{{- define "aws-storage-csi.controllerArgs" -}}
- --driver={{ .driver }}
- --mode=controller
- --endpoint=unix:///csi/csi.sock
- --http-endpoint=0.0.0.0:3301
{{- if eq .driver "ebs" }}
- --batching={{ .root.Values.ebs.controller.batching }}
{{- end }}
{{- if .root.Values.extraTags }}
- --extra-tags={{ include "aws-storage-csi.extraTags" .root.Values.extraTags }}
{{- end }}
{{- with .root.Values.clusterId }}
- --k8s-tag-cluster-id={{ . }}
{{- end }}
{{- if and (eq .driver "efs") .root.Values.efs.controller.deleteAccessPointRootDir }}
- --delete-access-point-root-dir
{{- end }}
- --log-level={{ .root.Values.logLevel }}
{{- end }}

{{/* Environment shared by every plugin container. */}}
{{- define "aws-storage-csi.pluginEnv" -}}
- name: CSI_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- with .Values.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.awsAccessSecret }}
# Static credentials, as the official drivers read them: only when the Secret exists.
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .keyId }}
      optional: true
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .accessKey }}
      optional: true
{{- end }}
{{- end }}

{{- define "aws-storage-csi.probe" -}}
initialDelaySeconds: 10
periodSeconds: 10
timeoutSeconds: 3
failureThreshold: 5
{{- end }}
