#!/usr/bin/env bash
# The data-parallel path on one GPU (NCCL does not put two ranks on one GPU, so world size 1):
#  1. drt-128m at 16K, batch 4: the plain trainer against `lcm launch --nproc-per-node 1`
#     (NCCL group, DDP's Reducer, the per-step all-reduce of the step's numbers), alternated
#     twice in one process tree; tokens/s of the last metrics window (steps after warm-up);
#  2. `lcm bench allreduce` on the NCCL group (bucket sizes; at one rank, the fixed cost).
# Run there with the libraries set: scripts/gpu-test.sh exec scripts/device/data-parallel.sh
#   BIN  the lcm binary (default .device/bin/lcm)   STEPS  steps a run (default 24)
set -euo pipefail
bin=${BIN:-.device/bin/lcm}
out=${OUT:-/tmp/data-parallel}
steps=${STEPS:-24}
mkdir -p "$out"
common=(--set steps="$steps" --set log.every=8 --set log.eval_every=0
  --set 'data.train=[]' --set data.eval=null --set 'data.random={"lo":2,"hi":50000}'
  --set checkpoint.every=0 --set checkpoint.keep=1 --set batch_size=4 --set grad_accum=1)
rate() {
  tail -1 "$1/metrics.jsonl" | python3 -c '
import json, sys
m = json.loads(sys.stdin.read())
print("%.0f tok/s, loss %.4f" % (m["tokens_per_s"], m["loss"]))'
}
echo "== drt-128m 16K batch 4: plain vs NCCL world 1 ($steps steps, last 8)"
for round in 1 2; do
  for mode in plain nccl1; do
    dir=/tmp/dp-$mode-$round
    rm -rf "$dir"
    if [ "$mode" = plain ]; then
      "$bin" pretrain --config configs/drt-128m.json "${common[@]}" --set checkpoint.dir="$dir" \
        >"$out/train-$mode-$round.log" 2>&1
    else
      "$bin" launch --nproc-per-node 1 --master-port 0 -- pretrain --config configs/drt-128m.json \
        "${common[@]}" --set checkpoint.dir="$dir" >"$out/train-$mode-$round.log" 2>&1
    fi
    echo "round $round $mode: $(rate "$dir")"
  done
done
echo "== bench allreduce (NCCL, 1 rank)"
"$bin" bench allreduce --device cuda --json "$out/allreduce.jsonl"
"$bin" bench allreduce --device cuda --dtype f32 --sizes 25M
