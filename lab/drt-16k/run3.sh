#!/usr/bin/env bash
# On the GPU machine (device tool): the key-range curriculum on real text (docs/experiments.md,
# "Keys of random ids"): rare ids [40000, 50256) -> [20000, 50256) -> [0, 50256), three models
# side by side with scripts/device/train-niah.sh (the best exported into $OUT/model).
#   here:  cargo build --release; strip a copy into .device/bin/lcm; pack data/tokens
#   there: BIN=.device/bin/lcm TRAIN_S=400 lab/drt-16k/run3.sh   (carry .device, data/tokens)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BIN=${BIN:-.device/bin/lcm} TRAIN_S=${TRAIN_S:-400} LENS=${LENS:-4K,64K} TASKS=passkey \
  SAMPLES=${SAMPLES:-3} scripts/device/train-niah.sh \
  lab/drt-16k/k-c8-d256.json lab/drt-16k/k-c8-d128.json lab/drt-16k/k-c63-w512.json
