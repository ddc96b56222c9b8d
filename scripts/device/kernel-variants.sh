#!/usr/bin/env bash
# On the GPU machine (device tool): kernel tests under each of several environments (the
# kernels' variant switches, e.g. LCM_SWA_WGMMA=0 for the mma.sync forward), then the
# benches under each, alternated over two rounds so the variants are compared on one
# machine state. Each entry of CONFIGS is one environment, its variables joined by commas.
#
#   BIN=./lcm TESTS="./ops_swa_cuda ./ops_gca_cuda" \
#     CONFIGS="LCM_SWA_QSMEM=1,LCM_GCA_QSMEM=1 LCM_SWA_QSMEM=0,LCM_GCA_QSMEM=0 LCM_SWA_WGMMA=0,LCM_GCA_WGMMA=0" \
#     scripts/device/kernel-variants.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
x() { scripts/gpu-test.sh exec "$@" 2>&1 | grep -v '^\[W'; }
configs=${CONFIGS:-LCM_SWA_WGMMA=1}
for c in $configs; do
  for t in ${TESTS:-}; do
    echo "== $t, $c"
    # shellcheck disable=SC2086
    x env ${c//,/ } "$t" --test-threads=1 | grep -E '^test |result|panicked|exceeds|not deterministic'
  done
done
# Each bench in a process of its own (see kernels-ab.sh).
for round in 1 2; do
  for c in $configs; do
    echo "== $c, round $round"
    for b in ${BENCHES:-swa-w512 enc-s64 gca-d64}; do
      # shellcheck disable=SC2086
      x env ${c//,/ } "$BIN" bench kernels --only "$b" --runs "${RUNS:-30}" --warmup 3 --no-reference |
        grep -E '^(swa|gca|hsa)' | cut -c1-100
    done
  done
done
