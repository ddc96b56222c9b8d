#!/usr/bin/env bash
# On the GPU machine (device tool): the DRT-at-16K experiment of issue 20, item 1 — three
# chains of stages side by side on one GPU (small models leave it mostly idle), each stage
# `--init` from the one before and stopped by SIGINT after its time (the trainer saves and
# exits, as on Ctrl-C):
#   A  c8 (chunks of 8, window 16: where retrieval-and-copy is quick to learn)
#      -> c63-w512 (the paper's geometry: 63 + landmark, top-8, window 512; rows 1K -> 4K)
#      -> c63-w512-16k (rows of 16,380 tokens)
#   B  c63-scratch (the paper's geometry from scratch, residual warm-up 1500) -> c63-w512-16k
#   C  A's c8 -> c63-w64 (window 64) -> c63-w64-16k
# Then a passkey look (10 random ids, exact match) at LENS for each chain's last stage, and
# the best chain's weights packed into $OUT (model.txz.part-*), logs and results in
# $OUT/runs.tgz.
#   BIN=.device/bin/lcm scripts/gpu-test.sh exec lab/drt-16k/run.sh   (carry .device, data/tokens)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=${BIN:-.device/bin/lcm}
out=${OUT:-/tmp/lcm-out}
lab=lab/drt-16k
s_c8=${S_C8:-140} s_b=${S_B:-190} s_16k=${S_16K:-90} s_scratch=${S_SCRATCH:-330}
mkdir -p "$out" logs runs
stage() { # name config seconds [init]
  local name=$1 config=$2 secs=$3 init=${4:-}
  timeout --foreground -s INT -k 30 "$secs" "$bin" pretrain --config "$lab/$config" \
    --set checkpoint.dir="runs/$name" ${init:+--init "runs/$init"} ${EXTRA:-} >"logs/$name.log" 2>&1
  echo "[$(date +%T)] $name done (exit $?): $(grep -E '^step [0-9]+/' "logs/$name.log" | tail -1 | cut -c1-100)"
}
chain_a_c() {
  stage a1-c8 c8.json "$s_c8"
  stage a2-c63-w512 c63-w512.json "$s_b" a1-c8 &
  stage c2-c63-w64 c63-w64.json "$s_b" a1-c8 &
  wait
  stage a3-c63-w512-16k c63-w512-16k.json "$s_16k" a2-c63-w512 &
  stage c3-c63-w64-16k c63-w64-16k.json "$s_16k" c2-c63-w64 &
  wait
}
chain_b() {
  stage b1-c63-scratch c63-scratch.json "$s_scratch"
  stage b2-c63-w512-16k c63-w512-16k.json "$s_16k" b1-c63-scratch
}
"$bin" info | head -3
chain_a_c &
chain_b &
wait
best= best_acc=-1
for run in a3-c63-w512-16k b2-c63-w512-16k c3-c63-w64-16k; do
  [ -d "runs/$run" ] || continue
  timeout -k 10 "${EVAL_S:-120}" "$bin" eval niah --checkpoint "runs/$run" --task passkey \
    --len "${LENS:-4K,16K,64K,1M}" --depths 0,0.5,1 --samples "${SAMPLES:-3}" --batch 3 \
    --haystack data/tokens/sample_val --quiet ${EVAL_EXTRA:-} --out "runs/niah-$run" >"logs/niah-$run.log" 2>&1 &
done
wait
for run in a3-c63-w512-16k b2-c63-w512-16k c3-c63-w64-16k; do
  f=runs/niah-$run/results.json
  acc=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); s=r['samples']; print('%.3f' % (sum(x['hit'] for x in s)/max(1,len(s))))" "$f" 2>/dev/null || echo -1)
  echo "== $run: passkey exact $acc"
  grep -v '^\[W' "logs/niah-$run.log" | tail -8
  cp "$f" "logs/niah-$run.json" 2>/dev/null
  if awk -v a="$acc" -v b="$best_acc" 'BEGIN {exit !(a > b)}'; then best=$run best_acc=$acc; fi
done
for m in runs/*/metrics.jsonl; do cp "$m" "logs/$(basename "$(dirname "$m")").metrics.jsonl"; done
tar -czf "$out/runs.tgz" logs
if [ -n "$best" ]; then
  "$bin" export "runs/$best" --out "/tmp/model-$best" 2>&1 | tail -1
  tar -cf - -C /tmp "model-$best" | xz -1 | split -b 15M - "$out/model.txz.part-"
  echo "[run] exported $best (passkey $best_acc) into $out/model.txz.part-*"
fi
