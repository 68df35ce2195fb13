{{/* Controller Deployment and PodDisruptionBudget of one driver: dict "root" . "driver" "ebs"|"efs". */}}
{{- define "aws-storage-csi.controller" -}}
{{- $root := .root }}
{{- $driver := .driver }}
{{- $values := index $root.Values $driver }}
{{- $component := printf "%s-csi-controller" $driver }}
{{- $privileged := and (eq $driver "efs") $root.Values.efs.controller.deleteAccessPointRootDir }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "aws-storage-csi.labels" (dict "root" $root "component" $component) | nindent 4 }}
spec:
  replicas: {{ $root.Values.controller.replicas }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "aws-storage-csi.selectorLabels" (dict "component" $component) | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 1
  template:
    metadata:
      labels:
        {{- include "aws-storage-csi.labels" (dict "root" $root "component" $component) | nindent 8 }}
      {{- with $root.Values.controller.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ $values.controller.serviceAccount.name }}
      priorityClassName: {{ $root.Values.controller.priorityClassName }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.controller.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.controller.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      affinity:
        # Preferred, not required: a one-node cluster still runs both replicas.
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels:
                    {{- include "aws-storage-csi.selectorLabels" (dict "component" $component) | nindent 20 }}
      securityContext:
        {{- if $privileged }}
        # Mounting the file system to delete access point directories needs root.
        runAsNonRoot: false
        runAsUser: 0
        runAsGroup: 0
        {{- else }}
        runAsNonRoot: true
        runAsUser: 1000
        runAsGroup: 1000
        fsGroup: 1000
        {{- end }}
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: {{ $driver }}-plugin
          image: {{ include "aws-storage-csi.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- include "aws-storage-csi.controllerArgs" (dict "root" $root "driver" $driver) | nindent 12 }}
          env:
            {{- include "aws-storage-csi.pluginEnv" $root | nindent 12 }}
            {{- with $root.Values.controller.env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: healthz
              containerPort: 9808
              protocol: TCP
            - name: metrics
              containerPort: 3301
              protocol: TCP
          livenessProbe:
            httpGet:
              path: /healthz
              port: healthz
            {{- include "aws-storage-csi.probe" . | nindent 12 }}
          resources:
            {{- toYaml $root.Values.controller.resources | nindent 12 }}
          securityContext:
            {{- if $privileged }}
            privileged: true
            readOnlyRootFilesystem: true
            {{- else }}
            {{- include "aws-storage-csi.restrictedContainer" . | nindent 12 }}
            {{- end }}
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
        - name: csi-provisioner
          image: {{ include "aws-storage-csi.sidecarImage" $root.Values.sidecars.provisioner }}
          imagePullPolicy: IfNotPresent
          args:
            - --csi-address=/csi/csi.sock
            - --timeout=60s
            - --extra-create-metadata
            {{- if eq $driver "ebs" }}
            - --feature-gates=Topology=true
            - --default-fstype=ext4
            {{- end }}
            - --leader-election
            - --v=2
          resources:
            {{- toYaml $root.Values.sidecarResources | nindent 12 }}
          securityContext:
            {{- include "aws-storage-csi.restrictedContainer" . | nindent 12 }}
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
        {{- if eq $driver "ebs" }}
        - name: csi-attacher
          image: {{ include "aws-storage-csi.sidecarImage" $root.Values.sidecars.attacher }}
          imagePullPolicy: IfNotPresent
          args:
            - --csi-address=/csi/csi.sock
            - --timeout=60s
            - --leader-election
            - --v=2
          resources:
            {{- toYaml $root.Values.sidecarResources | nindent 12 }}
          securityContext:
            {{- include "aws-storage-csi.restrictedContainer" . | nindent 12 }}
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
        {{- end }}
        - name: csi-resizer
          image: {{ include "aws-storage-csi.sidecarImage" $root.Values.sidecars.resizer }}
          imagePullPolicy: IfNotPresent
          args:
            - --csi-address=/csi/csi.sock
            - --timeout=60s
            # EBS grows volumes online and EFS needs no growing: nothing waits on pods.
            - --handle-volume-inuse-error=false
            - --leader-election
            - --v=2
          resources:
            {{- toYaml $root.Values.sidecarResources | nindent 12 }}
          securityContext:
            {{- include "aws-storage-csi.restrictedContainer" . | nindent 12 }}
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
        {{- if and (eq $driver "ebs") $values.controller.snapshots.enabled }}
        - name: csi-snapshotter
          image: {{ include "aws-storage-csi.sidecarImage" $root.Values.sidecars.snapshotter }}
          imagePullPolicy: IfNotPresent
          args:
            - --csi-address=/csi/csi.sock
            - --timeout=60s
            # The VolumeSnapshot's name and namespace and the content's name, for tagSpecification_<N> templates.
            - --extra-create-metadata
            - --leader-election
            - --v=2
          resources:
            {{- toYaml $root.Values.sidecarResources | nindent 12 }}
          securityContext:
            {{- include "aws-storage-csi.restrictedContainer" . | nindent 12 }}
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
        {{- end }}
        - name: liveness-probe
          image: {{ include "aws-storage-csi.sidecarImage" $root.Values.sidecars.livenessProbe }}
          imagePullPolicy: IfNotPresent
          args:
            - --csi-address=/csi/csi.sock
            - --http-endpoint=:9808
          resources:
            {{- toYaml $root.Values.sidecarResources | nindent 12 }}
          securityContext:
            {{- include "aws-storage-csi.restrictedContainer" . | nindent 12 }}
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
      volumes:
        - name: socket-dir
          emptyDir: {}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "aws-storage-csi.labels" (dict "root" $root "component" $component) | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "aws-storage-csi.selectorLabels" (dict "component" $component) | nindent 6 }}
{{- end }}
