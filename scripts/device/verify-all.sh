#!/usr/bin/env bash
# On the GPU machine (device tool): one call that checks a build end to end and leaves its
# logs under $OUT: every CUDA test binary in DIR (the wgmma forwards also with
# LCM_SWA_WGMMA=0 / LCM_GCA_WGMMA=0), the kernel benches of the wgmma and mma.sync paths
# alternated, the cross-entropy bench, training throughput of drt-128m at 16K (kernels at
# batch 1 and 4, the reference ops at batch 1) and the 1M / 16M prefill.
#
#   DIR=. scripts/device/verify-all.sh      # DIR holds lcm and the ops_*cuda test binaries
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
dir=${DIR:-.device/bin}
out=${OUT:-/tmp}
x() { scripts/gpu-test.sh exec "$@" 2>&1 | grep -v '^\[W'; }
nvidia-smi --query-gpu=name,clocks.max.sm,temperature.gpu --format=csv > "$out/gpu.txt"
{
  for t in "$dir"/ops_*; do
    echo "== $t"
    x "$t" --test-threads=1 | grep -E '^test |result|panicked|exceeds|not deterministic'
  done
  for t in "$dir"/ops_swa_cuda "$dir"/ops_gca_cuda; do
    echo "== $t, LCM_SWA_WGMMA=0 LCM_GCA_WGMMA=0"
    x env LCM_SWA_WGMMA=0 LCM_GCA_WGMMA=0 "$t" --test-threads=1 | grep -E 'result|panicked'
  done
} > "$out/tests.log" 2>&1
BIN=$dir/lcm OLD=$dir/lcm OLD_ENV="LCM_SWA_WGMMA=0 LCM_GCA_WGMMA=0" scripts/device/kernels-ab.sh \
  > "$out/kernels.log" 2>&1
x "$dir/lcm" bench xent > "$out/xent.log" 2>&1
tp() {
  x scripts/bench/train-throughput.sh --lcm "$dir/lcm" configs/drt-128m.json --set grad_accum=1 "$@" | tail -1
}
{
  echo "== kernels, batch 1"; tp --set batch_size=1
  echo "== reference ops, batch 1"; LCM_REFERENCE_OPS=1 tp --set batch_size=1
  echo "== kernels, batch 4"; tp --set batch_size=4
  echo "== prefill"; x "$dir/lcm" bench prefill --model configs/models/drt-128m.json --len 1M,16M
} > "$out/e2e.log" 2>&1
