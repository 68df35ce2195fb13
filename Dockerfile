# syntax=docker/dockerfile:1
# One image for both drivers and both roles; the command line chooses:
#   node /app/dist/main.js --driver ebs|efs --mode controller|node
# Build: docker build -t public.ecr.aws/aws-storage-csi/aws-storage-csi:v0.1.0 .

ARG NODE_IMAGE=node:24-trixie-slim

# --- build: bundle the TypeScript sources into dist/ (scripts/build.ts) -------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: the image already has Node 24; the "node" dev dependency would only download
# another. esbuild's binary comes as an optional dependency and needs no script.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY scripts/build.ts scripts/
COPY proto/ proto/
COPY src/ src/
# The source maps stay out of the image (5.8 of the bundle's 8 MiB): nothing at run time reads
# them, and no stack trace reaches a caller. The license notices (*.LEGAL.txt) ship.
RUN node scripts/build.ts && find dist -name '*.map' -delete

# --- runtime ---------------------------------------------------------------------------
FROM ${NODE_IMAGE}
ARG VERSION=dev
LABEL org.opencontainers.image.title="aws-storage-csi" \
      org.opencontainers.image.description="CSI driver for Amazon EBS (ebs.csi.aws.com) and EFS (efs.csi.aws.com)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

# What the node plugin runs on the host: mount/umount/findmnt and blkid (mount, util-linux),
# mkfs/fsck/resize for ext4 and xfs (e2fsprogs, xfsprogs), the NVMe serial of an EBS volume
# (nvme-cli), NFS 4.1 mounts for EFS (nfs-common: mount.nfs4). Debian has no efs-utils package:
# EFS is encrypted in transit by the driver's own TLS relay, in the node plugin's process, which
# the kernel mounts through as 127.0.0.1 (README: Encryption in transit). Versions are not pinned: Debian's security updates replace
# them in place, and a pinned version would vanish from the archive and break the build.
# npm and corepack are removed: the runtime needs neither, and a privileged container should
# carry as little as it can.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      e2fsprogs \
      mount \
      nfs-common \
      nvme-cli \
      util-linux \
      xfsprogs \
 && rm -rf /var/lib/apt/lists/* \
 && rm -rf /usr/local/lib/node_modules /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack

WORKDIR /app
ENV NODE_ENV=production
# A 4 MiB young generation (V8's default grows to 16 MiB per semi-space) lowers the controller's
# peak memory by about 45 MiB under npm run bench's load, at no measurable cost in speed.
ENV NODE_OPTIONS=--max-semi-space-size=4
# glibc malloc serves blocks of 32 KiB and more with mmap and returns them on free. Its default
# threshold rises as big buffers come and go, so they land in the heap, which keeps its high-water
# mark: after 20,000 random requests (test/fuzz) the EBS plugin's RSS was 171 MiB with the
# default and 117 MiB with this, the EFS plugin's 143 MiB and 108 MiB, and stopped growing.
ENV MALLOC_MMAP_THRESHOLD_=32768
# The bundle is the whole program: no node_modules at run time.
COPY --from=build /src/dist/ dist/
# V8's compiled code for every module, made now so that no plugin compiles them at start-up (the
# root filesystem is read-only at run time; the cache is only read): one cache per mode, each under
# the V8 flags that mode launches with (src/main.ts turns the cache on once they are set; Node's own
# NODE_COMPILE_CACHE would turn it on before), and per user, as Node files them: root (the node
# DaemonSet) and 1000 (the controller, and this image's default user).
ENV CSI_COMPILE_CACHE=/app/compile-cache
RUN mkdir /app/compile-cache \
 && chown 1000:1000 /app/compile-cache \
 && node /app/dist/fill-compile-cache.js node \
 && node /app/dist/fill-compile-cache.js controller
USER 1000:1000
RUN node /app/dist/fill-compile-cache.js node \
 && node /app/dist/fill-compile-cache.js controller
USER 0:0
RUN chown -R 0:0 /app/compile-cache && chmod -R a+rX,go-w /app/compile-cache

# Non-root by default (the controller); the node DaemonSet runs its plugin as root, privileged.
# Numeric, so Kubernetes can check runAsNonRoot without a passwd lookup.
USER 1000:1000
ENTRYPOINT ["node", "/app/dist/main.js"]
