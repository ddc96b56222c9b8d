#!/usr/bin/env bash
# The data-parallel path on one GPU (NCCL does not put two ranks on one GPU, so world size 1):
#  1. drt-128m at 16K, batch 4: the plain trainer against `lcm launch --nproc-per-node 1`
#     (NCCL group, DDP's Reducer, the per-step all-reduce of the step's numbers), the modes
#     alternated ROUNDS times so drift of the device's clocks falls on every mode alike;
#     tokens/s over the steps after the first metrics window (warm-up), and peak memory;
#  2. `lcm bench allreduce` on the NCCL group (bucket sizes; at one rank, the fixed cost).
# Run there with the libraries set: scripts/gpu-test.sh exec scripts/device/data-parallel.sh
#   BIN     the lcm binary (default .device/bin/lcm)
#   BASE    a second lcm binary whose NCCL path is measured too (optional: an A/B of a change)
#   STEPS   steps a run (default 32)        ROUNDS  rounds of the modes (default 3)
set -euo pipefail
bin=${BIN:-.device/bin/lcm}
base=${BASE:-}
out=${OUT:-/tmp/data-parallel}
steps=${STEPS:-32}
rounds=${ROUNDS:-3}
mkdir -p "$out"
common=(--set steps="$steps" --set log.every=8 --set log.eval_every=0
  --set 'data.train=[]' --set data.eval=null --set 'data.random={"lo":2,"hi":50000}'
  --set checkpoint.every=0 --set checkpoint.keep=1 --set batch_size=4 --set grad_accum=1)
# Tokens/s of the metrics windows after the first one, their mean, and the peak memory.
rate() {
  python3 - "$1/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][1:]
tps = [r["tokens_per_s"] for r in rows]
peak = max((r.get("peak_memory") or 0) for r in rows) / 2**30
print("mean %.0f tok/s over steps %d-%d (windows %s), peak %.2f GiB, loss %.4f" % (
    sum(tps) / len(tps), rows[0]["step"] - 7, rows[-1]["step"],
    " ".join("%.0f" % t for t in tps), peak, rows[-1]["loss"]))
PY
}
modes=(plain nccl1)
[ -n "$base" ] && modes+=(nccl1-base)
echo "== drt-128m 16K batch 4: ${modes[*]} ($steps steps, $rounds rounds)"
for round in $(seq 1 "$rounds"); do
  for mode in "${modes[@]}"; do
    dir=/tmp/dp-$mode-$round
    rm -rf "$dir"
    case $mode in
    plain) cmd=("$bin" pretrain) ;;
    nccl1) cmd=("$bin" launch --nproc-per-node 1 --master-port 0 -- pretrain) ;;
    nccl1-base) cmd=("$base" launch --nproc-per-node 1 --master-port 0 -- pretrain) ;;
    esac
    "${cmd[@]}" --config configs/drt-128m.json "${common[@]}" --set checkpoint.dir="$dir" \
      >"$out/train-$mode-$round.log" 2>&1
    echo "round $round $mode: $(rate "$dir")"
  done
done
echo "== bench allreduce (NCCL, 1 rank)"
"$bin" bench allreduce --device cuda --json "$out/allreduce.jsonl"
"$bin" bench allreduce --device cuda --dtype f32 --sizes 25M
