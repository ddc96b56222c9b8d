#!/usr/bin/env bash
# On the GPU machine (device tool): train one or more DRT configs side by side (a small
# model leaves most of an H200 idle) for at most TRAIN_S seconds each (the trainer takes the
# SIGINT like Ctrl-C: it saves a checkpoint and stops), export the run whose synthetic
# answers scored best over its last 200 steps as bf16 shards under $OUT/model (the device
# tool returns files of at most 16 MiB), pack every run's log and metrics into
# $OUT/runs.tgz, and take a first NIAH look at the exported run.
#
#   BIN=.device/niah/lcm TRAIN_S=420 scripts/device/train-niah.sh configs/a.json configs/b.json
#   (carry the binary, data/tokens and assets)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=${BIN:-.device/niah/lcm}
out=${OUT:-/tmp/lcm-out}
train_s=${TRAIN_S:-450}
mkdir -p "$out" logs
x() { scripts/gpu-test.sh exec "$bin" "$@" 2>&1 | grep -v '^\[W'; }
run_dir() { grep -o '"dir": *"[^"]*"' "$1" | head -1 | sed 's/.*: *"//; s/"$//'; }

x info | head -4
start=$(date +%s)
for config in "$@"; do
  name=$(basename "$config" .json)
  timeout --foreground -s INT -k 60 "$train_s" scripts/gpu-test.sh exec "$bin" pretrain --config "$config" \
    ${PRETRAIN_ARGS:-} >"logs/$name.log" 2>&1 &
done
wait
echo "[train-niah] trained for $(($(date +%s) - start)) s"
best= best_acc=-1
for config in "$@"; do
  name=$(basename "$config" .json) run=$(run_dir "$config")
  cp "$run/metrics.jsonl" "logs/$name.metrics.jsonl"
  acc=$(grep -o '"answer_acc":[0-9.e-]*' "$run/metrics.jsonl" | tail -8 | cut -d: -f2 |
    awk '{s += $1} END {printf "%.3f", NR ? s / NR : 0}')
  echo "== $name: answer accuracy (last 200 steps) $acc"
  grep -v '^\[W' "logs/$name.log" | grep -E '^step [0-9]+/' | awk 'NR % 20 == 0' | cut -c1-110
  grep -v '^\[W' "logs/$name.log" | tail -2
  if awk -v a="$acc" -v b="$best_acc" 'BEGIN {exit !(a > b)}'; then best=$config best_acc=$acc; fi
done
tar -czf "$out/runs.tgz" logs
run=$(run_dir "$best")
echo "[train-niah] exporting $best ($run)"
x export "$run" --out "$out/model" --split-rows
x plot "$run/metrics.jsonl" --out "$out/loss.png"
for task in ${TASKS:-passkey s-niah}; do
  x eval niah --checkpoint "$run" --task "$task" --len "${LENS:-4K,64K}" --depths 0,0.5,1 \
    --samples "${SAMPLES:-3}" --haystack data/tokens/sample_val --device cuda --out "/tmp/niah-$task" |
    grep -v '^\s*$' | tail -9
done
