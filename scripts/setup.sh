#!/usr/bin/env bash
# Installs everything the demo and the tests need, idempotently: npm packages (with the pinned
# Node 24 from the node@24 package), moto in a virtualenv, csi-sanity, and the host tools.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache/bin

step() { printf '\n== %s\n' "$*"; }

lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -x node_modules/.bin/node ] || [ "$(cat .cache/npm.stamp 2>/dev/null)" != "$lock_hash" ]; then
  step "npm ci (Node 24 comes from the node@24 package)"
  npm ci --no-fund --no-audit
  echo "$lock_hash" > .cache/npm.stamp
fi

# The linter has its own package: see tools/biome/package.json for why.
if [ ! -x tools/biome/node_modules/.bin/biome ]; then
  step "biome (lint and format)"
  npm install --prefix tools/biome --no-fund --no-audit --no-save
fi

if [ ! -x .cache/venv/bin/moto_server ]; then
  step "moto (fake AWS) into .cache/venv"
  python3 -m venv .cache/venv
  .cache/venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]==5.2.1'
fi

# LocalStack in host mode, the second fake AWS (test/harness/localstack.ts): localstack-core 4.14.0,
# the last release without an auth token, with its dependencies as they were at its release
# (test/harness/localstack-constraints.txt; today's newest break it). It needs Python 3.12 or newer.
ls_hash=$(sha256sum test/harness/localstack-constraints.txt | cut -d' ' -f1)
if [ ! -x .cache/localstack/bin/python ] || [ "$(cat .cache/localstack.stamp 2>/dev/null)" != "$ls_hash" ]; then
  ls_python=""
  for candidate in python3.13 python3.12 "$HOME"/.pyenv/versions/3.13*/bin/python3 "$HOME"/.pyenv/versions/3.12*/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      ls_python=$candidate
      break
    fi
  done
  if [ -n "$ls_python" ]; then
    step "LocalStack 4.14.0 (host mode) into .cache/localstack, with $ls_python"
    rm -rf .cache/localstack
    "$ls_python" -m venv .cache/localstack
    .cache/localstack/bin/pip install --quiet --disable-pip-version-check \
      -c test/harness/localstack-constraints.txt 'localstack-core[base-runtime]==4.14.0' 'moto-ext[ec2]'
    echo "$ls_hash" > .cache/localstack.stamp
  else
    echo "no Python 3.12 or newer: LocalStack (AWS_FAKE=localstack) is not installed, its stage will fail" >&2
  fi
fi

CSI_SANITY_VERSION=v5.6.0
if [ ! -x .cache/bin/csi-sanity ] || [ "$(cat .cache/csi-sanity.stamp 2>/dev/null)" != "$CSI_SANITY_VERSION" ]; then
  step "csi-sanity $CSI_SANITY_VERSION"
  GOBIN="$PWD/.cache/bin" go install "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$CSI_SANITY_VERSION"
  echo "$CSI_SANITY_VERSION" > .cache/csi-sanity.stamp
fi

# The official csi.proto that test/unit/proto.test.ts compares ours with (a no-op when cached).
CSI_SPEC_VERSION=v1.14.0
if [ ! -f "$(go env GOMODCACHE)/github.com/container-storage-interface/spec@$CSI_SPEC_VERSION/csi.proto" ]; then
  step "CSI spec $CSI_SPEC_VERSION (official csi.proto)"
  go mod download "github.com/container-storage-interface/spec@$CSI_SPEC_VERSION"
fi

# The node's tools, and for the EFS TLS tests openssl (a test CA) and ip (mount target addresses on lo).
missing=()
for tool in mkfs.ext4 mkfs.xfs xfs_growfs resize2fs blkid losetup blockdev openssl ip; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "host tools (missing: ${missing[*]})"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xfsprogs e2fsprogs util-linux openssl iproute2 >/dev/null
  else
    echo "cannot install ${missing[*]}: run as root on Debian/Ubuntu, or install xfsprogs e2fsprogs util-linux openssl iproute2" >&2
  fi
fi

# The e2e cluster's node and store (test/e2e/README.md): Debian's etcd, containerd, runc, CNI
# plugins, and busybox-static for the one test image.
e2e_missing=()
for tool in etcd containerd runc ctr busybox; do
  command -v "$tool" >/dev/null || e2e_missing+=("$tool")
done
[ -d /usr/lib/cni ] || e2e_missing+=("cni-plugins")
if [ ${#e2e_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "e2e host packages (missing: ${e2e_missing[*]})"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      etcd-server containerd runc containernetworking-plugins busybox-static >/dev/null
  else
    echo "e2e needs ${e2e_missing[*]}: as root on Debian, apt-get install etcd-server containerd runc containernetworking-plugins busybox-static" >&2
  fi
fi

# The tests' container runtime (test/containers): podman serves testcontainers, buildah and
# mmdebstrap build the fake AWS images (there is no registry), slirp4netns maps their ports.
ct_missing=()
for tool in podman buildah mmdebstrap slirp4netns; do
  command -v "$tool" >/dev/null || ct_missing+=("$tool")
done
if [ ${#ct_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "container runtime (missing: ${ct_missing[*]})"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      podman buildah mmdebstrap slirp4netns uidmap >/dev/null
  else
    echo "the container tests need ${ct_missing[*]}: as root on Debian, apt-get install podman buildah mmdebstrap slirp4netns uidmap" >&2
  fi
fi

if [ -x scripts/install-deploy-tools.sh ]; then
  scripts/install-deploy-tools.sh
fi
