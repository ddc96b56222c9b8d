#!/usr/bin/env bash
# On the GPU machine (device tool): fine-tune one checkpoint in several variants side by side
# (a 7M model leaves most of the H200 idle), then the NIAH grid of each export, also side by
# side. Each variant is NAME:SEQ_LEN:BATCH:EDGE_RATE on models/drt-niah-c8/recipe/drt-niah-c8-long.json (both
# phrasings, no curriculum, eval on the training split: the validation split is shorter
# than one 512K row), stopped at STEPS or after TRAIN_S seconds.
# Returns $OUT/NAME/ (each export, also kept in runs/export-NAME while the machine is warm)
# and $OUT/variants.tgz (logs, metrics, grids).
#
#   BIN=./lcm INIT=models/drt-niah-c8-sniah VARIANTS="b512:524288:4:0.4 b1m:1048576:2:0.4" \
#     scripts/device/finetune-variants.sh     (carry the binary, data/tokens and assets)
set -uo pipefail
: "${INIT:?}" "${VARIANTS:?}"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=${BIN:-.device/s5/lcm}
out=${OUT:-/tmp/lcm-out}
mkdir -p "$out" logs grids
start=$(date +%s)
variant() { # NAME SEQ BATCH EDGE
  local name=$1
  timeout --foreground -s INT -k 30 "${TRAIN_S:-220}" scripts/gpu-test.sh exec "$bin" pretrain \
    --config models/drt-niah-c8/recipe/drt-niah-c8-long.json --init "$INIT" --set seq_len="$2" \
    --set batch_size="$3" --set curriculum=[] --set steps="${STEPS:-400}" \
    --set data.synthetic.edge_rate="$4" --set data.eval=data/tokens/sample_train \
    --set checkpoint.dir="runs/$name" >"logs/$name.log" 2>&1
  cp "runs/$name/metrics.jsonl" "logs/$name.metrics.jsonl"
  scripts/gpu-test.sh exec "$bin" export "runs/$name" --out "runs/export-$name" --split-rows 2>&1 | grep -v '^\[W'
  cp -r "runs/export-$name" "$out/$name"
  echo "[variants] $name trained and exported after $(($(date +%s) - start)) s"
  DEST=grids/$name LENS=${LENS:-4K,16K,64K,256K,1M,4M} TASKS="s-niah passkey" \
    timeout "${GRID_S:-250}" scripts/device/niah-grid.sh "runs/export-$name" >/dev/null
}
for v in $VARIANTS; do
  IFS=: read -r name seq batch edge <<<"$v"
  variant "$name" "$seq" "$batch" "$edge" &
done
wait
echo "[variants] done after $(($(date +%s) - start)) s"
for v in $VARIANTS; do
  name=${v%%:*}
  echo "#### $name"
  grep -v '^\[W' "logs/$name.log" | grep -E '^step [0-9]+/' | awk 'NR % 5 == 0' | cut -c1-110 | tail -4
  grep -iE 'error|panic' "logs/$name.log" | head -2
  cat "grids/$name/niah-grid.log"
done
tar -czf "$out/variants.tgz" logs grids
