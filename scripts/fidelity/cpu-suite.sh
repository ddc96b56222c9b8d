#!/usr/bin/env bash
# The CPU runs of docs/fidelity.md: fp32 at several geometries (both landmark-slot rules,
# one and two retrieval groups, a tied and an untied head, 16K tokens at the paper's
# depth, the shipped drt-128m config), the reference's own eps, and a bf16 smoke test.
# Each writes DIR/<name>.json and DIR/<name>.log; the last line says which failed.
#
#   PYTHONPATH=/tmp/fidelity-site scripts/fidelity/cpu-suite.sh /tmp/ref DIR [LCM]
#
# About 12 minutes on one CPU thread with the debug build; 14 GB of memory at 16K.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ref=${1:?the reference checkout}
dir=${2:?the folder for the reports}
lcm=${3:-target/debug/lcm}
mkdir -p "$dir"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
tiny=(--model configs/models/drt-tiny.json --set vocab_size=1000 --set drt.landmark_id=999)
mid=(--model configs/models/drt-tiny.json --set d_model=128 --set d_ff=384 --set vocab_size=2000
     --set drt.landmark_id=1999 --set drt.chunk_size=63 --set drt.encoder_layers=2)
failed=()
run() {
  local name=$1
  shift
  echo "== $name: $*"
  if .venv/bin/python scripts/fidelity/compare.py --reference "$ref" --lcm "$lcm" --threads 1 \
    --report "$dir/$name.json" "$@" > "$dir/$name.log" 2>&1; then
    grep -E '^(logits|loss|PASS)' "$dir/$name.log"
  else
    failed+=("$name")
    tail -5 "$dir/$name.log"
  fi
}
run s63 "${tiny[@]}" --set drt.chunk_size=63 --len 504 --batch 2
run s63-reference-eps "${tiny[@]}" --set drt.chunk_size=63 --len 504 --batch 2 --eps reference
run s64-two-groups "${tiny[@]}" --set drt.chunk_size=64 --set drt.landmark_slot=dropped \
  --set drt.topk=3 --set 'drt.decoder_layers=[1,1,1]' --len 1024 --batch 2
run d128-untied "${mid[@]}" --set window=64 --set tie_embeddings=false --len 1008 --batch 2
run d128-16k "${mid[@]}" --set window=512 --set drt.topk=8 --set 'drt.decoder_layers=[6,6]' \
  --len 16380 --batch 1
run drt-128m-2k --model configs/models/drt-128m.json --len 2016 --batch 1
run d128-untied-bf16 "${mid[@]}" --set window=64 --set tie_embeddings=false --len 1008 \
  --batch 2 --dtype bf16
echo "failed: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
