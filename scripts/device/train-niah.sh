#!/usr/bin/env bash
# On the GPU machine (device tool): train a DRT config for at most TRAIN_S seconds (Ctrl-C
# semantics: the trainer saves a checkpoint and stops), export its weights as bf16 shards
# under $OUT/model (the device tool returns files of at most 16 MiB), copy the curve, and
# take a first NIAH look. Carry the binary, data/tokens and assets.
#
#   scripts/device/train-niah.sh CONFIG [pretrain args...]
#   e.g. BIN=.device/niah/lcm TRAIN_S=450 scripts/device/train-niah.sh configs/drt-niah.json
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
config=$1
shift
bin=${BIN:-.device/niah/lcm}
out=${OUT:-/tmp/lcm-out}
train_s=${TRAIN_S:-450}
mkdir -p "$out"
run=$(grep -o '"dir": *"[^"]*"' "$config" | head -1 | sed 's/.*: *"//; s/"$//')
x() { scripts/gpu-test.sh exec "$bin" "$@" 2>&1 | grep -v '^\[W'; }

x info | head -4
start=$(date +%s)
timeout -s INT -k 60 "$train_s" scripts/gpu-test.sh exec "$bin" pretrain --config "$config" "$@" 2>&1 |
  grep -v '^\[W' | tee "$out/train.log" | awk 'NR % 20 == 1'
echo "[train-niah] trained for $(($(date +%s) - start)) s"
tail -3 "$out/train.log"
x export "$run" --out "$out/model"
cp "$run/metrics.jsonl" "$out/metrics.jsonl"
x plot "$run/metrics.jsonl" --out "$out/loss.png"
for task in ${TASKS:-passkey s-niah}; do
  x eval niah --checkpoint "$run" --task "$task" --len "${LENS:-4K,64K}" --depths 0,0.5,1 \
    --samples "${SAMPLES:-3}" --haystack data/tokens/sample_val --device cuda --out "/tmp/niah-$task" |
    grep -v '^\s*$' | tail -12
done
