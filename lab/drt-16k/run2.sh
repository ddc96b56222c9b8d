#!/usr/bin/env bash
# On the GPU machine (device tool): issue 20, item 1, second attempt — the key vocabulary as a
# curriculum. Run 1 (run.sh) left every chain at chance on 10 random ids from [0, 50256),
# even with chunks of 8, where 3 digit keys are learned in a few hundred steps. Here each
# stage `--init`s from the one before and widens the key ids:
#   D  c8: ids [17, 27) (digits) -> [17, 1017) -> [0, 50256); then c63-w512 (the paper's
#      geometry) on rows of 1K -> 4K, then 16K rows
#   E  c63-w512 from scratch with the same widening (digits first), then 16K rows
# A passkey look at LENS for each chain's last stage; the best chain's weights to $OUT.
#   BIN=.device/bin/lcm scripts/gpu-test.sh exec lab/drt-16k/run2.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=${BIN:-.device/bin/lcm}
out=${OUT:-/tmp/lcm-out}
lab=lab/drt-16k
s_key=${S_KEY:-50} s_b=${S_B:-130} s_16k=${S_16K:-60}
mkdir -p "$out" logs runs
stage() { # name config seconds init|- [--set ...]
  local name=$1 config=$2 secs=$3 init=$4
  shift 4
  [ "$init" = - ] && init=
  timeout --foreground -s INT -k 30 "$secs" "$bin" pretrain --config "$lab/$config" \
    --set checkpoint.dir="runs/$name" ${init:+--init "runs/$init"} "$@" ${EXTRA:-} >"logs/$name.log" 2>&1
  echo "[$(date +%T)] $name done: $(grep -E '^step [0-9]+/' "logs/$name.log" | tail -1 | cut -c1-110)"
}
keys() { echo --set data.synthetic.key_lo="$1" --set data.synthetic.key_hi="$2"; }
short=(--set steps=1200 --set 'curriculum=[{"until":400,"seq_len":96,"min_gap":32}]' --set seq_len=128)
chain_d() {
  stage d1-c8-digits c8.json "$s_key" - $(keys 17 27) "${short[@]}"
  stage d2-c8-1k c8.json "$s_key" d1-c8-digits $(keys 17 1017) "${short[@]}"
  stage d3-c8-all c8.json "$s_key" d2-c8-1k "${short[@]}"
  stage d4-c63-w512 c63-w512.json "$s_b" d3-c8-all
  stage d5-c63-w512-16k c63-w512-16k.json "$s_16k" d4-c63-w512
}
chain_e() {
  local e=(--set steps=600 --set 'curriculum=[]' --set seq_len=1008 --set data.synthetic.min_gap=576)
  stage e1-c63-digits c63-scratch.json "$s_key" - $(keys 17 27) "${e[@]}"
  stage e2-c63-1k c63-w512.json "$s_key" e1-c63-digits $(keys 17 1017) "${e[@]}"
  stage e3-c63-all c63-w512.json "$((s_key + s_b))" e2-c63-1k
  stage e4-c63-w512-16k c63-w512-16k.json "$s_16k" e3-c63-all
}
"$bin" info | head -3
chain_d &
chain_e &
wait
best= best_acc=-1
finals=(d5-c63-w512-16k e4-c63-w512-16k d3-c8-all)
for run in "${finals[@]}"; do
  [ -d "runs/$run" ] || continue
  timeout -k 10 "${EVAL_S:-60}" "$bin" eval niah --checkpoint "runs/$run" --task passkey \
    --len "${LENS:-4K,64K,1M}" --depths 0,0.5,1 --samples "${SAMPLES:-3}" --batch 3 \
    --haystack data/tokens/sample_val --quiet --out "runs/niah-$run" ${EVAL_EXTRA:-} >"logs/niah-$run.log" 2>&1 &
done
wait
for run in "${finals[@]}"; do
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
  echo "[run2] exported $best (passkey $best_acc) into $out/model.txz.part-*"
fi
