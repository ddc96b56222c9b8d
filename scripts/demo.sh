#!/usr/bin/env bash
# The main job end to end on small bundled data, on any machine (CPU is enough):
# set-up, build, a real-text sample of the Pile, preprocessing, a short DRT training run,
# and its loss curve. Re-running skips what is already done (set-up, sample, corpus).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
echo "[demo] cargo build --release"
cargo build --release
lcm=target/release/lcm

echo "[demo] lcm info"
$lcm info

echo "[demo] a real-text sample in the Pile's format (data/sample-pile)"
scripts/make-sample-pile.sh

mkdir -p data/tokens
for split in train val; do
  input=data/sample-pile/$split
  [ -d "$input" ] || input=data/sample-pile/$split.jsonl.zst
  if [ -f data/tokens/sample_$split.idx ]; then
    echo "[demo] corpus data/tokens/sample_$split present"
  else
    echo "[demo] lcm preprocess pile --input $input --output data/tokens/sample_$split"
    $lcm preprocess pile --input "$input" --output "data/tokens/sample_$split"
  fi
done
$lcm corpus stats data/tokens/sample_train

echo "[demo] lcm pretrain --config configs/drt-tiny.json (CPU, a minute or two)"
rm -rf runs/drt-tiny
$lcm pretrain --config configs/drt-tiny.json
$lcm plot runs/drt-tiny/metrics.jsonl
echo "[demo] done: checkpoints and loss.png in runs/drt-tiny"

# Length extrapolation on any laptop: a 0.2M-parameter DRT learns a passkey at 64 tokens
# and finds it at 16x and 256x that, at every depth (docs/training.md, docs/experiments.md).
echo "[demo] lcm pretrain --config configs/passkey-toy.json (CPU, a few minutes)"
rm -rf runs/passkey-toy
$lcm pretrain --config configs/passkey-toy.json
echo "[demo] lcm eval niah: passkey exact match (%) at 1x, 16x and 256x the training length"
$lcm eval niah --checkpoint runs/passkey-toy --len 64,1K,16K --samples 10 --device cpu \
  --quiet --out runs/passkey-toy/niah
echo "[demo] done: the table above; runs/passkey-toy/niah/heatmap.png"

# The same task and recipe with SWA+HSA (the NeurIPS 2025 paper's model) of the same size.
echo "[demo] lcm pretrain --config configs/passkey-toy-hsa.json (CPU, a few minutes)"
rm -rf runs/passkey-toy-hsa
$lcm pretrain --config configs/passkey-toy-hsa.json
echo "[demo] lcm eval niah: the SWA+HSA toy's exact match (%) at 1x, 16x and 256x"
$lcm eval niah --checkpoint runs/passkey-toy-hsa --len 64,1K,16K --samples 10 --device cpu \
  --quiet --out runs/passkey-toy-hsa/niah
echo "[demo] done: the table above; runs/passkey-toy-hsa/niah/heatmap.png"
