{{/* ClusterRoleBinding of a role to a driver's controller or node ServiceAccount. */}}
{{- define "aws-storage-csi.clusterRoleBinding" -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ .name }}
  labels:
    {{- include "aws-storage-csi.labels" (dict "root" .root "component" .component) | nindent 4 }}
subjects:
  - kind: ServiceAccount
    name: {{ .serviceAccount }}
    namespace: {{ .root.Release.Namespace }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ .name }}
{{- end }}

{{- define "aws-storage-csi.serviceAccount" -}}
{{- if .serviceAccount.create }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .serviceAccount.name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "aws-storage-csi.labels" (dict "root" .root "component" .component) | nindent 4 }}
  {{- with .serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Rules every sidecar that writes events needs. */}}
{{- define "aws-storage-csi.eventRules" -}}
- apiGroups: [""]
  resources: [events]
  verbs: [create, update, patch]
{{- end }}

{{/* external-provisioner; EBS adds topology and attachment reads. */}}
{{- define "aws-storage-csi.provisionerRules" -}}
- apiGroups: [""]
  resources: [persistentvolumes]
  # patch: the reclaim-policy finalizer on provisioned volumes
  verbs: [get, list, watch, create, delete, patch]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, update]
{{- if eq .driver "ebs" }}
- apiGroups: [storage.k8s.io]
  resources: [storageclasses, volumeattributesclasses, csinodes]
  verbs: [get, list, watch]
- apiGroups: [""]
  # topology: the zone of the node a WaitForFirstConsumer claim was scheduled to
  resources: [nodes]
  verbs: [get, list, watch]
- apiGroups: [storage.k8s.io]
  # a volume is not deleted while a VolumeAttachment still refers to it
  resources: [volumeattachments]
  verbs: [get, list, watch]
{{- else }}
- apiGroups: [storage.k8s.io]
  resources: [storageclasses, volumeattributesclasses]
  verbs: [get, list, watch]
{{- end }}
- apiGroups: [snapshot.storage.k8s.io]
  # the provisioner keeps a finalizer on snapshots used as a data source, even for drivers without snapshots
  resources: [volumesnapshots]
  verbs: [get, list, watch, update, patch]
- apiGroups: [snapshot.storage.k8s.io]
  resources: [volumesnapshotcontents]
  verbs: [get, list, watch]
{{ include "aws-storage-csi.eventRules" . }}
{{- end }}

{{- define "aws-storage-csi.attacherRules" -}}
- apiGroups: [""]
  resources: [persistentvolumes]
  verbs: [get, list, watch, patch]
- apiGroups: [storage.k8s.io]
  resources: [csinodes]
  verbs: [get, list, watch]
- apiGroups: [storage.k8s.io]
  resources: [volumeattachments]
  verbs: [get, list, watch, patch]
- apiGroups: [storage.k8s.io]
  resources: [volumeattachments/status]
  verbs: [patch]
{{ include "aws-storage-csi.eventRules" . }}
{{- end }}

{{- define "aws-storage-csi.resizerRules" -}}
- apiGroups: [""]
  resources: [persistentvolumes]
  verbs: [get, list, watch, patch]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [persistentvolumeclaims/status]
  verbs: [patch]
- apiGroups: [storage.k8s.io]
  # ControllerModifyVolume: a claim's volumeAttributesClassName names the parameters to apply
  resources: [volumeattributesclasses, storageclasses]
  verbs: [get, list, watch]
{{ include "aws-storage-csi.eventRules" . }}
{{- end }}

{{/* csi-snapshotter (EBS): the rules of external-snapshotter's deploy/kubernetes/csi-snapshotter/rbac-csi-snapshotter.yaml. */}}
{{- define "aws-storage-csi.snapshotterRules" -}}
- apiGroups: [""]
  resources: [events]
  verbs: [list, watch, create, update, patch]
- apiGroups: [snapshot.storage.k8s.io]
  resources: [volumesnapshotclasses]
  verbs: [get, list, watch]
- apiGroups: [snapshot.storage.k8s.io]
  resources: [volumesnapshotcontents]
  verbs: [get, list, watch, update, patch]
- apiGroups: [snapshot.storage.k8s.io]
  resources: [volumesnapshotcontents/status]
  verbs: [update, patch]
# Group snapshots are on by default in the sidecar: it looks for their CRDs at start and,
# when they are installed, watches them (this driver has no GroupController yet).
- apiGroups: [groupsnapshot.storage.k8s.io]
  resources: [volumegroupsnapshotclasses]
  verbs: [get, list, watch]
- apiGroups: [groupsnapshot.storage.k8s.io]
  resources: [volumegroupsnapshotcontents]
  verbs: [get, list, watch, update, patch]
- apiGroups: [groupsnapshot.storage.k8s.io]
  resources: [volumegroupsnapshotcontents/status]
  verbs: [update, patch]
{{- end }}

{{/* All RBAC of one driver: dict "root" . "driver" "ebs"|"efs". */}}
{{- define "aws-storage-csi.rbac" -}}
{{- $root := .root }}
{{- $driver := .driver }}
{{- $values := index $root.Values $driver }}
{{- $controller := printf "%s-csi-controller" $driver }}
{{- $node := printf "%s-csi-node" $driver }}
{{- $sidecars := list "provisioner" "resizer" }}
{{- if eq $driver "ebs" }}{{ $sidecars = list "provisioner" "attacher" "resizer" }}{{ end }}
{{- if and (eq $driver "ebs") $values.controller.snapshots.enabled }}{{ $sidecars = append $sidecars "snapshotter" }}{{ end }}
{{- with include "aws-storage-csi.serviceAccount" (dict "root" $root "component" $controller "serviceAccount" $values.controller.serviceAccount) }}
{{ . }}
---
{{- end }}
{{- with include "aws-storage-csi.serviceAccount" (dict "root" $root "component" $node "serviceAccount" $values.node.serviceAccount) }}
{{ . }}
---
{{- end }}
{{- range $sidecars }}
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ $driver }}-csi-{{ . }}
  labels:
    {{- include "aws-storage-csi.labels" (dict "root" $root "component" $controller) | nindent 4 }}
rules:
  {{- include (printf "aws-storage-csi.%sRules" .) (dict "driver" $driver) | nindent 2 }}
---
{{ include "aws-storage-csi.clusterRoleBinding" (dict "root" $root "component" $controller "name" (printf "%s-csi-%s" $driver .) "serviceAccount" $values.controller.serviceAccount.name) }}
---
{{- end }}
# The plugin itself: region and zone from its Node when instance metadata is out of reach.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ $controller }}
  labels:
    {{- include "aws-storage-csi.labels" (dict "root" $root "component" $controller) | nindent 4 }}
rules:
  - apiGroups: [""]
    resources: [nodes]
    verbs: [get]
---
{{ include "aws-storage-csi.clusterRoleBinding" (dict "root" $root "component" $controller "name" $controller "serviceAccount" $values.controller.serviceAccount.name) }}
---
# Leader election of the sidecars, in the controller's own namespace only. client-go's lease
# lock only gets, creates and updates its Lease: the delete in the sidecars' own examples is not needed.
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $driver }}-csi-leader-election
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "aws-storage-csi.labels" (dict "root" $root "component" $controller) | nindent 4 }}
rules:
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    verbs: [get, watch, list, create, update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $driver }}-csi-leader-election
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "aws-storage-csi.labels" (dict "root" $root "component" $controller) | nindent 4 }}
subjects:
  - kind: ServiceAccount
    name: {{ $values.controller.serviceAccount.name }}
    namespace: {{ $root.Release.Namespace }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $driver }}-csi-leader-election
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ $node }}
  labels:
    {{- include "aws-storage-csi.labels" (dict "root" $root "component" $node) | nindent 4 }}
rules:
  # Instance id, zone and instance type from the node's labels and providerID when IMDS is unreachable.
  - apiGroups: [""]
    resources: [nodes]
    verbs: [get]
---
{{ include "aws-storage-csi.clusterRoleBinding" (dict "root" $root "component" $node "name" $node "serviceAccount" $values.node.serviceAccount.name) }}
{{- end }}
