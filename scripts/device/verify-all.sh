#!/usr/bin/env bash
# On the GPU machine (device tool): one call that checks a build end to end and leaves its
# logs under $OUT: every CUDA test binary in DIR (each runs every kernel path the GPU has),
# the kernel benches of this build against OLD_ARGS's path (default: mma.sync) alternated,
# the cross-entropy bench,
# training throughput of drt-128m at 16K (kernels at batch 1 and 4, the reference ops at
# batch 1) and the 1M / 16M prefill.
#
#   DIR=. scripts/device/verify-all.sh      # DIR holds lcm and the ops_*cuda test binaries
#   DIR=. OLD_ARGS="--path wgmma" scripts/device/verify-all.sh
#   PARTS=e2e DIR=. scripts/device/verify-all.sh   # some of: tests kernels xent e2e
#                                                  # (all four run past one 10-minute call)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
dir=${DIR:-.device/bin}
out=${OUT:-/tmp}
x() { scripts/gpu-test.sh exec "$@" 2>&1 | grep -v '^\[W'; }
parts=" ${PARTS:-tests kernels xent e2e} "
nvidia-smi --query-gpu=name,clocks.max.sm,temperature.gpu --format=csv > "$out/gpu.txt"
[[ $parts == *" tests "* ]] && {
  for t in "$dir"/ops_*; do
    echo "== $t"
    x "$t" --test-threads=1 | grep -E '^test |result|panicked|exceeds|not deterministic'
  done
} > "$out/tests.log" 2>&1
[[ $parts == *" kernels "* ]] && BIN=$dir/lcm OLD=$dir/lcm OLD_ARGS=${OLD_ARGS:-"--path mma"} scripts/device/kernels-ab.sh \
  > "$out/kernels.log" 2>&1
[[ $parts == *" xent "* ]] && x "$dir/lcm" bench xent > "$out/xent.log" 2>&1
tp() {
  x scripts/bench/train-throughput.sh --lcm "$dir/lcm" configs/drt-128m.json --set grad_accum=1 "$@" | tail -1
}
[[ $parts == *" e2e "* ]] && {
  echo "== kernels, batch 1"; tp --set batch_size=1
  echo "== reference ops, batch 1"; LCM_REFERENCE_OPS=1 tp --set batch_size=1
  echo "== kernels, batch 4"; tp --set batch_size=4
  echo "== prefill"; x "$dir/lcm" bench prefill --model configs/models/drt-128m.json --len 1M,16M
} > "$out/e2e.log" 2>&1
