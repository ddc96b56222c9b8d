#!/usr/bin/env bash
# On the GPU machine (device tool): the NIAH grid of issue 7 for one checkpoint, every task
# in TASKS, each length with its own sample count (a 16M sample costs seconds, a 4K one
# milliseconds), samples of a cell prefilled BATCH at a time. Results land under
# $OUT/niah-<task>-<len>/ (results.json, heatmap.png) and one log, $OUT/niah-grid.log.
#
#   BIN=.device/niah/lcm scripts/device/niah-grid.sh models/drt-niah-c8
#   GRID="4K:10 16K:10 64K:10 256K:10 1M:10 4M:4 16M:2" TASKS=passkey BATCH=10 ...
#   (carry the binary, the checkpoint and data/tokens; lengths past what the memory
#   planner allows at BATCH are retried one sample at a time)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ckpt=${1:?usage: niah-grid.sh CHECKPOINT}
bin=${BIN:-.device/niah/lcm}
out=${OUT:-/tmp/lcm-out}
grid=${GRID:-4K:10 16K:10 64K:10 256K:10 1M:10 4M:5 16M:2}
batch=${BATCH:-10}
mkdir -p "$out"
log="$out/niah-grid.log"
x() { scripts/gpu-test.sh exec "$bin" "$@" 2>&1 | grep -v '^\[W'; }
for task in ${TASKS:-passkey}; do
  for cell in $grid; do
    len=${cell%%:*} samples=${cell##*:}
    dir="$out/niah-$task-$len"
    echo "== $task $len: $samples samples per depth, batch $batch" | tee -a "$log"
    start=$(date +%s)
    if ! x eval niah --checkpoint "$ckpt" --task "$task" --len "$len" --samples "$samples" \
      --batch "$batch" --haystack data/tokens/sample_val --device cuda --quiet --out "$dir" \
      >>"$log"; then
      echo "   (retrying one sample at a time)" | tee -a "$log"
      x eval niah --checkpoint "$ckpt" --task "$task" --len "$len" --samples "$samples" \
        --batch 1 --haystack data/tokens/sample_val --device cuda --quiet --out "$dir" >>"$log"
    fi
    echo "   $(($(date +%s) - start)) s" | tee -a "$log"
    grep -E '^(all|first token)' "$log" | tail -2
  done
done
