{{/* Node DaemonSet of one driver: dict "root" . "driver" "ebs"|"efs". */}}
{{- define "aws-storage-csi.node" -}}
{{- $root := .root }}
{{- $driver := .driver }}
{{- $values := index $root.Values $driver }}
{{- $component := printf "%s-csi-node" $driver }}
{{- $efs := eq $driver "efs" }}
{{- /* EFS shares the node's network: health endpoints then listen on its loopback only. */}}
{{- $livenessAddr := ternary "127.0.0.1:9810" ":9808" $efs }}
{{- $registrarAddr := ternary "127.0.0.1:9811" ":9809" $efs }}
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {{ $component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "aws-storage-csi.labels" (dict "root" $root "component" $component) | nindent 4 }}
spec:
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "aws-storage-csi.selectorLabels" (dict "component" $component) | nindent 6 }}
  updateStrategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 10%
  template:
    metadata:
      labels:
        {{- include "aws-storage-csi.labels" (dict "root" $root "component" $component) | nindent 8 }}
      {{- with $root.Values.node.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ $values.node.serviceAccount.name }}
      priorityClassName: {{ $root.Values.node.priorityClassName }}
      {{- if $efs }}
      # An NFS mount belongs to the network namespace it was made from: in the pod's own namespace
      # every mount on the node would hang once this pod restarts.
      hostNetwork: true
      dnsPolicy: ClusterFirstWithHostNet
      {{- end }}
      # Longer than the plugin's --shutdown-timeout (30 s), so in-flight mounts finish before SIGKILL.
      terminationGracePeriodSeconds: 40
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.node.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.node.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        # The registrar writes to the kubelet's root-owned registration directory.
        runAsNonRoot: false
        runAsUser: 0
        runAsGroup: 0
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: {{ $driver }}-plugin
          image: {{ include "aws-storage-csi.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            - --driver={{ $driver }}
            - --mode=node
            - --endpoint=unix:///csi/csi.sock
            - --kubelet-dir={{ $root.Values.node.kubeletPath }}
            {{- if and (not $efs) (ne $values.node.volumeAttachLimit nil) }}
            - --volume-attach-limit={{ $values.node.volumeAttachLimit }}
            {{- end }}
            - --log-level={{ $root.Values.logLevel }}
          env:
            {{- include "aws-storage-csi.pluginEnv" $root | nindent 12 }}
            {{- with $root.Values.node.env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- if not $efs }}
          ports:
            - name: healthz
              containerPort: 9808
              protocol: TCP
          {{- end }}
          livenessProbe:
            httpGet:
              {{- if $efs }}
              host: 127.0.0.1
              path: /healthz
              port: 9810
              {{- else }}
              path: /healthz
              port: healthz
              {{- end }}
            {{- include "aws-storage-csi.probe" . | nindent 12 }}
          resources:
            {{- toYaml $root.Values.node.resources | nindent 12 }}
          securityContext:
            # mount(2) and mkfs on the host; also required for Bidirectional propagation.
            privileged: true
            readOnlyRootFilesystem: true
          volumeMounts:
            - name: kubelet-dir
              mountPath: {{ $root.Values.node.kubeletPath }}
              # Mounts made here must be seen by kubelet and the pods on the host.
              mountPropagation: Bidirectional
            - name: plugin-dir
              mountPath: /csi
            {{- if not $efs }}
            - name: device-dir
              mountPath: /dev
            {{- end }}
            - name: tmp
              mountPath: /tmp
        - name: node-driver-registrar
          image: {{ include "aws-storage-csi.sidecarImage" $root.Values.sidecars.nodeDriverRegistrar }}
          imagePullPolicy: IfNotPresent
          args:
            - --csi-address=/csi/csi.sock
            - --kubelet-registration-path={{ $root.Values.node.kubeletPath }}/plugins/{{ $driver }}.csi.aws.com/csi.sock
            - --http-endpoint={{ $registrarAddr }}
            - --v=2
          {{- if not $efs }}
          ports:
            - name: registrar
              containerPort: 9809
              protocol: TCP
          {{- end }}
          livenessProbe:
            httpGet:
              {{- if $efs }}
              host: 127.0.0.1
              path: /healthz
              port: 9811
              {{- else }}
              path: /healthz
              port: registrar
              {{- end }}
            {{- include "aws-storage-csi.probe" . | nindent 12 }}
          resources:
            {{- toYaml $root.Values.sidecarResources | nindent 12 }}
          securityContext:
            {{- include "aws-storage-csi.restrictedContainer" . | nindent 12 }}
          volumeMounts:
            - name: plugin-dir
              mountPath: /csi
            - name: registration-dir
              mountPath: /registration
        - name: liveness-probe
          image: {{ include "aws-storage-csi.sidecarImage" $root.Values.sidecars.livenessProbe }}
          imagePullPolicy: IfNotPresent
          args:
            - --csi-address=/csi/csi.sock
            - --http-endpoint={{ $livenessAddr }}
          resources:
            {{- toYaml $root.Values.sidecarResources | nindent 12 }}
          securityContext:
            {{- include "aws-storage-csi.restrictedContainer" . | nindent 12 }}
          volumeMounts:
            - name: plugin-dir
              mountPath: /csi
      volumes:
        - name: kubelet-dir
          hostPath:
            path: {{ $root.Values.node.kubeletPath }}
            type: Directory
        - name: plugin-dir
          hostPath:
            path: {{ $root.Values.node.kubeletPath }}/plugins/{{ $driver }}.csi.aws.com/
            type: DirectoryOrCreate
        - name: registration-dir
          hostPath:
            path: {{ $root.Values.node.kubeletPath }}/plugins_registry/
            type: Directory
        {{- if not $efs }}
        # NVMe block devices and their /dev/disk/by-id links appear here after an attach.
        - name: device-dir
          hostPath:
            path: /dev
            type: Directory
        {{- end }}
        - name: tmp
          emptyDir:
            medium: Memory
            sizeLimit: 16Mi
{{- end }}
