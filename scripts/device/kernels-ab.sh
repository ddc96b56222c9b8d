#!/usr/bin/env bash
# On the GPU machine (device tool): the CUDA kernels' tests with this build, then the
# kernel benches of an older build (OLD) and this one (BIN) alternated in one call, so their
# ratio is measured on one machine state (docs/benchmarks.md, session 6).
#
#   BIN=./lcm OLD=./lcm-old TESTS="./ops_swa_cuda ./ops_gca_cuda" scripts/device/kernels-ab.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
x() { scripts/gpu-test.sh exec "$@" 2>&1 | grep -v '^\[W'; }
for t in ${TESTS:-}; do
  echo "== $t"
  x "$t" --test-threads=1 | grep -E 'test |result|panic'
done
only=""
for b in ${BENCHES:-swa-w512 swa-w512-d128 enc-s64 gca-d64 gca-d128 hsa-64k}; do only="$only --only $b"; done
for round in 1 2; do
  for which in OLD BIN; do
    echo "== $which, round $round"
    # shellcheck disable=SC2086
    x "${!which}" bench kernels $only --runs "${RUNS:-30}" --warmup 3 --no-reference |
      grep -E '^(swa|gca|hsa|sdpa)' | cut -c1-100
  done
done
