#!/usr/bin/env bash
# On the GPU machine (device tool): the kernel tests of this build (every kernel path runs
# in each test binary), then the kernel benches of an older build (OLD) and this one (BIN)
# alternated in one call, so that their ratio is measured on one machine state.
#
#   BIN=./lcm OLD=./lcm-old TESTS="./ops_swa_cuda ./ops_gca_cuda" scripts/device/kernels-ab.sh
#
# OLD_ARGS: extra `lcm bench kernels` arguments for the OLD runs, e.g. OLD=./lcm
# OLD_ARGS="--path wgmma" to compare two kernel paths of one build.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
x() { scripts/gpu-test.sh exec "$@" 2>&1 | grep -v '^\[W'; }
for t in ${TESTS:-}; do
  echo "== $t"
  x "$t" --test-threads=1 | grep -E 'test |result|panic'
done
# Each bench in a process of its own: after the GCA entries in one process the SWA rows
# come out slower than alone, whatever the build.
for round in 1 2; do
  for which in OLD BIN; do
    echo "== $which, round $round"
    args=""
    [ "$which" = OLD ] && args=${OLD_ARGS:-}
    for b in ${BENCHES:-swa-w512 swa-w512-d128 enc-s64 gca-d64 gca-d64-gather gca-d128 hsa-64k}; do
      # shellcheck disable=SC2086
      x "${!which}" bench kernels --only "$b" --runs "${RUNS:-30}" --warmup 3 --no-reference $args |
        grep -E '^(swa|gca|hsa|sdpa)' | cut -c1-100
    done
  done
done
