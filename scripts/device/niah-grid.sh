#!/usr/bin/env bash
# On the GPU machine (device tool): the NIAH grid of issue 7 for one checkpoint: every task in
# TASKS at every length in LENS, 5 depths, SAMPLES per cell, the samples of a cell prefilled
# BATCH at a time (retried one at a time if the memory planner refuses). Each task's table,
# results.json and heatmap.png land in $DEST/niah-<task>/ (default $OUT/<name of the
# checkpoint>), the log in $DEST/niah-grid.log.
#
#   BIN=.device/s5/lcm scripts/device/niah-grid.sh models/drt-niah-c8
#   LENS=4K,16K,64K,256K,1M,4M,16M SAMPLES=10 BATCH=4 TASKS="passkey s-niah" ...
#   (carry the binary, the checkpoint and data/tokens)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ckpt=${1:?usage: niah-grid.sh CHECKPOINT}
bin=${BIN:-.device/s5/lcm}
dest=${DEST:-${OUT:-/tmp/lcm-out}/$(basename "$ckpt")}
mkdir -p "$dest"
log="$dest/niah-grid.log"
x() { scripts/gpu-test.sh exec "$bin" "$@" 2>&1 | grep -v '^\[W'; }
for task in ${TASKS:-passkey}; do
  echo "== $ckpt $task ${LENS:=4K,16K,64K,256K,1M,4M,16M}: ${SAMPLES:=10} samples per cell" >>"$log"
  start=$(date +%s)
  args=(eval niah --checkpoint "$ckpt" --task "$task" --len "$LENS" --samples "$SAMPLES"
    --haystack data/tokens/sample_val --device cuda --quiet --out "$dest/niah-$task")
  if ! x "${args[@]}" --batch "${BATCH:-4}" >>"$log"; then
    echo "   (retrying one sample at a time)" >>"$log"
    x "${args[@]}" --batch 1 >>"$log"
  fi
  echo "   $(($(date +%s) - start)) s" >>"$log"
done
cat "$log"
