#!/usr/bin/env bash
# On the GPU machine (device tool): teach the published passkey model RULER's s-niah
# phrasing as well. Without exploration a fine-tune never retrieves the new needle's chunk
# (session 5: 600 steps from 1K to 64K tokens left s-niah at 0%), so the first stage runs
# on 128-token rows with Gumbel noise on the retrieval (models/drt-niah-c8-sniah/recipe/drt-niah-c8-explore.json),
# then the long stages of models/drt-niah-c8/recipe/drt-niah-c8-long.json (1K -> 64K, then 512K rows), both
# phrasings throughout. Each stage stops at its step count or after its seconds.
# Returns $OUT/sniah/ (export) and $OUT/sniah.tgz (logs, metrics, the 4K-1M grid of both
# tasks).
#
#   BIN=./lcm scripts/device/sniah-finetune.sh   (carry the binary, data/tokens, assets)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=${BIN:-.device/s5/lcm}
out=${OUT:-/tmp/lcm-out}
mkdir -p "$out" logs grids
train() { # NAME SECONDS ARGS...: one stage, logged to logs/NAME.log
  local name=$1 secs=$2
  shift 2
  timeout --foreground -s INT -k 20 "$secs" scripts/gpu-test.sh exec "$bin" pretrain "$@" \
    >"logs/$name.log" 2>&1
  grep -v '^\[W' "logs/$name.log" | grep -E '^step [0-9]+/' | awk 'NR % 10 == 0' | cut -c1-100 | tail -3
  grep -iE 'error|panic' "logs/$name.log" | head -2
}
long=models/drt-niah-c8/recipe/drt-niah-c8-long.json
start=$(date +%s)
train explore "${EXPLORE_S:-50}" --config models/drt-niah-c8-sniah/recipe/drt-niah-c8-explore.json --init models/drt-niah-c8
train long "${LONG_S:-110}" --config $long --init runs/drt-niah-c8-explore \
  --set checkpoint.dir=runs/sniah-long
train long512 "${LONG512_S:-50}" --config $long --init runs/sniah-long --set seq_len=524288 \
  --set batch_size=1 --set curriculum=[] --set steps=150 --set data.eval=data/tokens/sample_train \
  --set checkpoint.dir=runs/sniah-512
for d in runs/drt-niah-c8-explore runs/sniah-long runs/sniah-512; do
  cp "$d/metrics.jsonl" "logs/$(basename "$d").metrics.jsonl" 2>/dev/null
done
scripts/gpu-test.sh exec "$bin" export runs/sniah-512 --out "$out/sniah" --split-rows 2>&1 | grep -v '^\[W'
echo "[sniah-finetune] trained for $(($(date +%s) - start)) s"
DEST=grids/sniah LENS=${LENS:-4K,16K,64K,256K,1M} TASKS="s-niah passkey" timeout "${GRID_S:-100}" \
  scripts/device/niah-grid.sh "$out/sniah" | grep -vE '^(results|prefill)'
tar -czf "$out/sniah.tgz" logs grids
echo "[sniah-finetune] done after $(($(date +%s) - start)) s"
