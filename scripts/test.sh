#!/usr/bin/env bash
# The whole test suite, as CI runs it: setup, lint, typecheck, build, every vitest test (unit and
# integration, against moto and real loop devices), csi-sanity for both drivers against the
# build, the EBS tests and csi-sanity again against LocalStack, a smoke test of the fake AWS in
# containers (testcontainers on podman) and checks of the driver's image built from the
# Dockerfile, then the e2e scenarios on a real cluster (test/e2e), and the driver's image installed
# there with the chart and an overlay. Every stage runs even when an
# earlier one failed, and prints its duration; the last line sums up all tests that ran.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || { echo "setup failed"; exit 1; }
export PATH="$PWD/node_modules/.bin:$PATH"
mkdir -p .cache/reports
failed_stages=()
passed=0 failed=0 skipped=0

stage() {
  local name=$1 started=$SECONDS; shift
  printf '\n===== %s\n' "$name"
  "$@" || failed_stages+=("$name")
  printf '===== %s: %ds\n' "$name" $((SECONDS - started))
}

# Adds a vitest JSON report's counts to the totals, and names its failed tests (CI shows the tail).
count_vitest() {
  [ -f "$1" ] || return 0
  local p f s found
  read -r p f s < <(node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    console.log(r.numPassedTests, r.numFailedTests, r.numPendingTests + r.numTodoTests);' "$1")
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
  found=$(node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    for (const file of r.testResults) {
      if (file.status === "failed" && file.assertionResults.every((a) => a.status !== "failed"))
        console.log(`  ${file.name}: ${(file.message || "failed").split("\n")[0]}`);
      for (const a of file.assertionResults.filter((a) => a.status === "failed"))
        console.log(`  ${file.name} > ${a.fullName}: ${(a.failureMessages[0] || "").split("\n")[0]}`);
    }' "$1")
  if [ -n "$found" ]; then vitest_failures+="$found"$'\n'; fi
}
vitest_failures=""

stage lint npm run --silent lint
stage typecheck npm run --silent typecheck
stage build npm run --silent build

stage vitest npx vitest run --reporter=default --reporter=json --outputFile.json=.cache/reports/vitest.json
count_vitest .cache/reports/vitest.json

# csi-sanity drives the bundle the build stage made (dist/main.js), as the image runs it: the
# vitest stage ran the TypeScript sources, this proves what ships. Usage: sanity NAME DRIVER LOG [ENV=...]
sanity() {
  local name=$1 driver=$2 log=.cache/reports/$3.log
  shift 3
  stage "$name" bash -c "set -o pipefail; env $* DRIVER_MAIN=$PWD/dist/main.js npm run --silent sanity -- $driver 2>&1 | tee $log"
  counts=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -Eo '[0-9]+ Passed \| [0-9]+ Failed \| [0-9]+ Pending \| [0-9]+ Skipped' | tail -1)
  if [ -n "$counts" ]; then
    read -r p _ _ f _ _ _ _ _ s _ <<<"$counts"
    passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
  fi
}
sanity "csi-sanity ebs" ebs sanity-ebs
sanity "csi-sanity efs" efs sanity-efs

# The EBS tests that talk to EC2, and csi-sanity for EBS, once more against the second fake AWS:
# LocalStack in host mode (test/harness/localstack.ts). EFS is not among its free services.
localstack_timeout=${LOCALSTACK_TIMEOUT:-900}
rm -f .cache/reports/vitest-localstack.json
stage "vitest (LocalStack)" timeout --kill-after=30 "$localstack_timeout" env AWS_FAKE=localstack \
  npx vitest run test/integration/ebs-controller.test.ts test/integration/ebs-snapshots.test.ts \
  test/integration/ebs-node.test.ts test/integration/ebs-volume-health.test.ts \
  --reporter=default --reporter=json --outputFile.json=.cache/reports/vitest-localstack.json
count_vitest .cache/reports/vitest-localstack.json
sanity "csi-sanity ebs (LocalStack)" ebs sanity-ebs-localstack AWS_FAKE=localstack

# Images on the tests' own podman (test/containers): moto's and LocalStack's, and the driver's
# from the Dockerfile as shipped, built here first (minutes cold, seconds warm); then a smoke test
# of the fake AWS in containers started by testcontainers (AWS_FAKE=container) and the checks of
# the driver's image.
containers_timeout=${CONTAINERS_TIMEOUT:-1500}
rm -f .cache/reports/vitest-containers.json
run_containers() {
  if [ "$(id -u)" != 0 ]; then
    echo "containers: skipped: not root (the tests' podman runs rootful on its own store)"
    return 0
  fi
  timeout --kill-after=30 "$containers_timeout" bash -c 'node test/containers/images.ts &&
    npx vitest run --config test/containers/vitest.config.ts \
      --reporter=default --reporter=json --outputFile.json=.cache/reports/vitest-containers.json'
  local rc=$?
  [ $rc -eq 124 ] && echo "containers: out of time after ${containers_timeout}s (CONTAINERS_TIMEOUT)" >&2
  return $rc
}
stage "containers (images, testcontainers + podman)" run_containers
count_vitest .cache/reports/vitest-containers.json

# The real cluster (test/e2e): builds its components first (minutes cold, seconds warm; bounded by
# E2E_BUILD_TIMEOUT), then runs the scenarios with the driver as processes, then install.e2e.ts:
# the driver's image of the containers stage above under the shipped chart and overlays.
rm -f .cache/reports/e2e.json .cache/reports/e2e-install.json
stage "e2e build" scripts/e2e-build.sh
# name, time guard (seconds), report, vitest's file arguments
run_e2e() {
  local name=$1 timeout_s=$2 report=$3; shift 3
  timeout --kill-after=30 "$timeout_s" npx vitest run --config test/e2e/vitest.config.ts \
    --reporter=default --reporter=json --outputFile.json="$report" "$@"
  local rc=$?
  [ $rc -eq 124 ] && echo "$name: out of time after ${timeout_s}s" >&2
  return $rc
}
stage e2e run_e2e "e2e (E2E_TIMEOUT)" "${E2E_TIMEOUT:-1500}" .cache/reports/e2e.json \
  --exclude test/e2e/install.e2e.ts
count_vitest .cache/reports/e2e.json
stage "e2e install (helm, kustomize, the image)" run_e2e "e2e install (E2E_INSTALL_TIMEOUT)" \
  "${E2E_INSTALL_TIMEOUT:-900}" .cache/reports/e2e-install.json test/e2e/install.e2e.ts
count_vitest .cache/reports/e2e-install.json

leftover_loops=$(losetup -a 2>/dev/null | grep -c -e ebs-env -e aws-storage-csi -e /e2e- || true)
[ "$leftover_loops" -gt 0 ] && { echo "loop devices left behind:"; losetup -a; failed_stages+=("cleanup"); }

echo
if [ ${#failed_stages[@]} -gt 0 ]; then
  echo "failed stages: ${failed_stages[*]}"
  [ -n "$vitest_failures" ] && printf 'failed vitest tests:\n%s' "$vitest_failures"
  [ "$failed" -eq 0 ] && failed=${#failed_stages[@]}
fi
echo "total: $passed passed, $failed failed, $skipped skipped"
[ ${#failed_stages[@]} -eq 0 ]
