#!/usr/bin/env bash
# On the GPU machine (device tool): the CUDA kernels' tests with this build, then the
# kernel benches of an older build (OLD) and this one (BIN) alternated in one call, so their
# ratio is measured on one machine state (docs/benchmarks.md, session 6).
#
#   BIN=./lcm OLD=./lcm-old TESTS="./ops_swa_cuda ./ops_gca_cuda" scripts/device/kernels-ab.sh
#
# OLD_ENV: environment for the OLD runs, e.g. OLD=./lcm OLD_ENV="LCM_SWA_WGMMA=0" to compare
# a kernel's two paths in one build. TEST_ENVS: environments the tests run under, each
# its own pass ("-" for none), e.g. TEST_ENVS="- LCM_SWA_WGMMA=0".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
x() { scripts/gpu-test.sh exec "$@" 2>&1 | grep -v '^\[W'; }
for envs in ${TEST_ENVS:--}; do
  for t in ${TESTS:-}; do
    echo "== $t ($envs)"
    # shellcheck disable=SC2086
    if [ "$envs" = - ]; then x "$t" --test-threads=1; else x env ${envs//,/ } "$t" --test-threads=1; fi |
      grep -E 'test |result|panic'
  done
done
# Each bench in a process of its own: after the GCA entries in one process the SWA rows
# come out 6-13% slower than alone (docs/benchmarks.md, session 10), whatever the build.
for round in 1 2; do
  for which in OLD BIN; do
    echo "== $which, round $round"
    envs=""
    [ "$which" = OLD ] && envs=${OLD_ENV:-}
    for b in ${BENCHES:-swa-w512 swa-w512-d128 enc-s64 gca-d64 gca-d64-gather gca-d128 hsa-64k}; do
      # shellcheck disable=SC2086
      x env $envs "${!which}" bench kernels --only "$b" --runs "${RUNS:-30}" --warmup 3 --no-reference |
        grep -E '^(swa|gca|hsa|sdpa)' | cut -c1-100
    done
  done
done
