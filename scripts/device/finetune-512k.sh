#!/usr/bin/env bash
# On the GPU machine (device tool): session 5's fourth and fifth rounds of issue 7:
#   A. INIT (round 4: the round-2 passkey model) fine-tuned on 512K-token rows (batch 1,
#      eval on the training split: the validation split is 360K tokens) as NAME, then its
#      grid: 4K-4M at 10 samples per cell, 16M at SAMPLES16 per cell (none if 0);
#   B. beside it, the same grid of the checkpoint BASE, if given.
# Returns $OUT/NAME/ (export) and $OUT/rounds.tgz (logs, metrics, grids).
#
#   BIN=./lcm INIT=.device/m5/passkey NAME=long512 BASE=.device/m5/passkey \
#     scripts/device/finetune-512k.sh        (carry .device/m5 and the packed binary and data)
#   BIN=./lcm INIT=.device/m5/long512 NAME=edge512 SAMPLES16=0 scripts/device/finetune-512k.sh
set -uo pipefail
: "${INIT:?}" "${NAME:?}"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=${BIN:-.device/s5/lcm}
out=${OUT:-/tmp/lcm-out}
mkdir -p "$out" logs grids
grid() { # NAME CHECKPOINT: 4K-4M, then 16M, each eval under its own time limit
  DEST=grids/$1 LENS=4K,16K,64K,256K,1M,4M timeout 150 scripts/device/niah-grid.sh "$2" >/dev/null
  [ "${SAMPLES16:-2}" = 0 ] && return
  DEST=grids/$1-16M LENS=16M SAMPLES=${SAMPLES16:-2} BATCH=2 timeout "${S16:-200}" \
    scripts/device/niah-grid.sh "$2" >/dev/null
}
start=$(date +%s)
{
  timeout --foreground -s INT -k 30 "${LONG_S:-180}" scripts/gpu-test.sh exec "$bin" pretrain \
    --config models/drt-niah-c8/recipe/drt-niah-c8-long.json --init "$INIT" --set seq_len=524288 \
    --set batch_size=1 --set curriculum=[] --set steps=400 --set 'data.synthetic.variants=[]' \
    --set data.eval=data/tokens/sample_train --set checkpoint.dir=runs/$NAME \
    >logs/$NAME.log 2>&1
  scripts/gpu-test.sh exec "$bin" export runs/$NAME --out "$out/$NAME" --split-rows | grep -v '^\[W'
  cp runs/$NAME/metrics.jsonl logs/$NAME.metrics.jsonl
  grid "$NAME" "$out/$NAME"
} &
[ -n "${BASE:-}" ] && grid base "$BASE" &
wait
echo "[finetune-512k] done after $(($(date +%s) - start)) s"
grep -v '^\[W' logs/$NAME.log | grep -E '^step [0-9]+/' | awk 'NR % 5 == 0' | cut -c1-100 | tail -6
grep -iE 'error|panic' logs/$NAME.log | head -2
for g in grids/*/niah-grid.log; do echo "#### $g"; cat "$g"; done
tar -czf "$out/rounds.tgz" logs grids
