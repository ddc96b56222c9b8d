#!/usr/bin/env bash
# The data-parallel path on one GPU (NCCL does not put two ranks on one GPU, so world size 1):
#  1. drt-128m at 16K, batch 4: the plain trainer against `lcm launch --nproc-per-node 1`
#     (NCCL group, DDP's Reducer, the per-step all-reduce of the step's numbers), alternated
#     twice in one process tree; tokens/s of the last metrics window (steps after warm-up);
#  2. `lcm bench allreduce` on the NCCL group (bucket sizes; at one rank, the fixed cost);
#  3. `lcm eval niah` of the published model under a launch against one process.
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
rate() { tail -1 "$1/metrics.jsonl" | python3 -c 'import json,sys; m=json.loads(sys.stdin.read()); print(f"{m[\"tokens_per_s\"]:.0f} tok/s mfu {100*m[\"mfu\"]:.1f}% loss {m[\"loss\"]:.4f}")'; }
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
echo "== eval niah under a launch (1 rank) against one process"
args=(eval niah --checkpoint models/drt-niah-c8 --len 4K,64K --samples 4 --batch 2 --quiet)
"$bin" "${args[@]}" --out /tmp/niah-one >"$out/niah-one.log" 2>&1
"$bin" launch --nproc-per-node 1 --master-port 0 -- "${args[@]}" --out /tmp/niah-launch >"$out/niah-launch.log" 2>&1
python3 - <<'PY'
import json
a = json.load(open("/tmp/niah-one/results.json"))["samples"]
b = json.load(open("/tmp/niah-launch/results.json"))["samples"]
key = lambda s: (s["length"], s["depth"], s["sample"], s["seed"], s["prediction"], s["hit"])
print("niah samples", len(a), "identical" if list(map(key, a)) == list(map(key, b)) else "DIFFER")
PY
