#!/usr/bin/env bash
# Segmented-prefill speed and memory of the 128M DRT (random weights) at 64K, 1M and 16M
# tokens, chunk memory on the GPU and offloaded, with the time by phase at 1M for the
# dispatched ops and for the pure-tch reference ops. Figures: docs/benchmarks.md.
#
#   scripts/bench/prefill.sh [LCM] [OUT]     LCM: the lcm binary (default .device/bin/lcm),
#                                            OUT: folder for the logs (default $OUT or /tmp)
# On the GPU machine (through the device tool), after scripts/gpu-test.sh build here.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
lcm=${1:-.device/bin/lcm}
out=${2:-${OUT:-/tmp}}
model=configs/models/drt-128m.json
run() { scripts/gpu-test.sh exec "$lcm" bench prefill --model $model --json "$out/prefill.jsonl" "$@" 2>&1 | grep -v "^\[W" | tee -a "$out/prefill.log"; }
run --len 64K,1M --profile
LCM_REFERENCE_OPS=1 run --len 1M --profile
run --len 16M
# Offloaded, 16M tokens take minutes (host-side gathers): bounded so the logs come back.
timeout 300 scripts/gpu-test.sh exec "$lcm" bench prefill --model $model --json "$out/prefill.jsonl" \
  --len 16M --offload cpu 2>&1 | grep -v "^\[W" | tee -a "$out/prefill.log"
