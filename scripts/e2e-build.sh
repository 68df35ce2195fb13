#!/usr/bin/env bash
# Builds the Kubernetes components the e2e test runs (test/e2e/README.md), from the Go module
# proxy, into .cache/e2e/bin. Each component's versions are pinned by a wrapper module under
# test/e2e/build/ (go.mod, go.sum and its `tool` lines). Go's caches stay in their default places,
# so a machine that built them once rebuilds in seconds. A cold build takes about 15 minutes on a
# quiet 2-core machine; E2E_BUILD_TIMEOUT (seconds, default 2400) bounds it.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$PWD/.cache/e2e/bin"
mkdir -p "$out"
timeout_s=${E2E_BUILD_TIMEOUT:-2400}
deadline=$(( $(date +%s) + timeout_s ))

KUBE_VERSION=v1.37.2
kube_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
  -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 \
  -X k8s.io/component-base/version.gitTreeState=clean"

# directory under test/e2e/build, linker flags (versions stamped as upstream stamps them)
build() {
  local dir=$1 ldflags=$2 started=$SECONDS left
  left=$(( deadline - $(date +%s) ))
  if [ "$left" -le 0 ]; then
    echo "e2e build: out of time (E2E_BUILD_TIMEOUT=${timeout_s}s) before $dir" >&2
    return 124
  fi
  echo "e2e build: $dir"
  # The module's tools, and its own programs when it has some (kube: the registrar).
  local packages=(tool)
  [ -n "$(find "test/e2e/build/$dir" -name '*.go' -print -quit)" ] && packages+=(./...)
  if ! (cd "test/e2e/build/$dir" && CGO_ENABLED=0 GOBIN="$out" timeout "$left" go install -trimpath -ldflags "$ldflags" "${packages[@]}" 2>&1); then
    echo "e2e build: $dir failed or ran out of time (E2E_BUILD_TIMEOUT=${timeout_s}s)" >&2
    return 1
  fi
  echo "e2e build: $dir done in $(( SECONDS - started ))s"
}

build kube "$kube_ldflags"
build provisioner "-s -w -X main.version=v6.4.0"
build attacher "-s -w -X main.version=v4.13.0"
build resizer "-s -w -X main.version=v2.3.0"
build snapshotter "-s -w -X main.version=v8.7.0"

# The official EBS driver, for the migration scenario: bench/official.ts builds it as its Makefile
# does, into .cache/, where npm run bench finds it too.
started=$SECONDS
left=$(( deadline - $(date +%s) ))
echo "e2e build: official EBS driver"
if [ "$left" -le 0 ] || ! timeout "$left" node_modules/.bin/node bench/official.ts; then
  echo "e2e build: the official EBS driver failed or ran out of time (E2E_BUILD_TIMEOUT=${timeout_s}s)" >&2
  exit 1
fi
echo "e2e build: official EBS driver done in $(( SECONDS - started ))s"
