#!/usr/bin/env bash
# On the GPU machine (device tool): the HSA forward and dq kernels' gather ring depth
# (LCM_HSA_FWD_UNITS / LCM_HSA_DQ_UNITS, K or V tiles in flight + 1): the kernel tests
# under each depth, then the hsa-64k bench under each (docs/benchmarks.md, session 6).
#
#   BIN=./lcm TEST=./ops_hsa_cuda scripts/device/hsa-units.sh   (carry both, release builds)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=${BIN:-.device/bin/lcm}
test=${TEST:-.device/bin/ops_hsa_cuda}
x() { scripts/gpu-test.sh exec "$@" 2>&1 | grep -v '^\[W'; }
for u in ${UNITS:-2 3 4}; do
  echo "== tests, units $u"
  LCM_HSA_FWD_UNITS=$u LCM_HSA_DQ_UNITS=$u x "$test" --test-threads=1 | grep -E 'test |result|panic|rel'
done
for u in ${BENCH_UNITS:-4 2 3 2 4}; do
  echo "== bench, units $u"
  LCM_HSA_FWD_UNITS=$u LCM_HSA_DQ_UNITS=$u x "$bin" bench kernels --only hsa-64k --runs 50 \
    --warmup 2 --no-reference | grep -E 'hsa |error'
done
