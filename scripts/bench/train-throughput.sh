#!/usr/bin/env bash
# Training throughput of each config: tokens/s, MFU and peak GPU memory from the metrics
# of a short run on a random-token haystack (speed does not depend on the text).
#
#   scripts/bench/train-throughput.sh [--steps N] [--lcm BIN] CONFIG [--set k=v ...] [-- CONFIG ...]
#
# Each config runs N optimizer steps (default 12) into a scratch folder; the figures are
# those of the last metrics window (the last 4 steps), so start-up is left out.
# Example (GPU machine): scripts/gpu-test.sh exec scripts/bench/train-throughput.sh \
#   --lcm .device/bin/lcm configs/drt-128m.json --set grad_accum=1
set -euo pipefail
steps=12
lcm=target/release/lcm
while [ $# -gt 0 ]; do
  case "$1" in
  --steps) steps=$2; shift 2 ;;
  --lcm) lcm=$2; shift 2 ;;
  *) break ;;
  esac
done
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
printf '%-28s %12s %8s %10s %10s %s\n' config tokens/s mfu peak_GiB loss extra
while [ $# -gt 0 ]; do
  cfg=$1; shift
  extra=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do extra+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  name=$(basename "$cfg" .json)
  dir=$scratch/$name
  if ! "$lcm" pretrain --config "$cfg" \
    --set steps="$steps" --set log.every=4 --set log.eval_every=0 \
    --set 'data.train=[]' --set data.eval=null --set 'data.random={"lo":2,"hi":50000}' \
    --set checkpoint.dir="$dir" --set checkpoint.every=0 --set checkpoint.keep=1 \
    "${extra[@]}" >"$scratch/$name.log" 2>&1; then
    printf '%-28s failed: %s\n' "$name" "$(tail -1 "$scratch/$name.log")"
    continue
  fi
  tail -1 "$dir/metrics.jsonl" | python3 -c '
import json, sys
m = json.loads(sys.stdin.read())
mfu = "-" if m["mfu"] is None else "%.1f%%" % (100 * m["mfu"])
mem = "-" if m["peak_memory"] is None else "%.1f" % (m["peak_memory"] / 2**30)
print("%-28s %12.0f %8s %10s %10.4f %s" % (sys.argv[1], m["tokens_per_s"], mfu, mem, m["loss"], sys.argv[2]))
' "$name" "${extra[*]:-}"
done
