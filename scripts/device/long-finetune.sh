#!/usr/bin/env bash
# On the GPU machine (device tool): the long-context fine-tunes of issue 7, side by side on
# one H200 (each model has 7M parameters; one alone leaves the chip mostly idle):
#   * `sniah`: models/drt-niah-c8 fine-tuned by models/drt-niah-c8/recipe/drt-niah-c8-long.json (passkey and
#     RULER's s-niah phrasing, 1K -> 4K -> 16K -> 64K rows of batch 8), then 256K rows of
#     batch 2 (the same tokens per step);
#   * `passkey`: the same with the passkey phrasing only;
#   * `swa`: the baseline of the same size, e3's pretraining schedule
#     (configs/swa-niah-c8.json), then configs/swa-niah-c8-ft.json.
# Each stage stops at its step count or after its seconds (SIGINT: checkpoint, then exit).
# The device tool returns each run's export (bf16 shards, their index, state.json) in
# $OUT/<run>/, and one $OUT/runs.tgz with every log, metrics file and first NIAH look.
#
#   BIN=.device/s5/lcm scripts/device/long-finetune.sh
#   (carry the binary, data/tokens and assets)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=${BIN:-.device/s5/lcm}
out=${OUT:-/tmp/lcm-out}
mkdir -p "$out" logs
x() { scripts/gpu-test.sh exec "$bin" "$@" 2>&1 | grep -v '^\[W'; }
train() { # NAME SECONDS ARGS...: one stage, logged to logs/NAME.log
  local name=$1 secs=$2
  shift 2
  timeout --foreground -s INT -k 60 "$secs" scripts/gpu-test.sh exec "$bin" pretrain "$@" \
    >"logs/$name.log" 2>&1
}
long=models/drt-niah-c8/recipe/drt-niah-c8-long.json
x info | head -3
start=$(date +%s)
{
  train sniah-1 "${STAGE1_S:-240}" --config $long --init models/drt-niah-c8 \
    --set checkpoint.dir=runs/sniah-1
  train sniah-2 "${STAGE2_S:-120}" --config $long --init runs/sniah-1 --set seq_len=262144 \
    --set batch_size=2 --set curriculum=[] --set steps=150 --set checkpoint.dir=runs/sniah-2
} &
{
  train passkey-1 "${STAGE1_S:-240}" --config $long --init models/drt-niah-c8 \
    --set 'data.synthetic.variants=[]' --set checkpoint.dir=runs/passkey-1
  train passkey-2 "${STAGE2_S:-120}" --config $long --init runs/passkey-1 --set seq_len=262144 \
    --set batch_size=2 --set curriculum=[] --set steps=150 --set 'data.synthetic.variants=[]' \
    --set checkpoint.dir=runs/passkey-2
} &
{
  train swa-1 "${SWA_PRE_S:-170}" --config configs/swa-niah-c8.json --set checkpoint.dir=runs/swa-1
  train swa-2 "${SWA_FT_S:-120}" --config configs/swa-niah-c8-ft.json --init runs/swa-1 \
    --set checkpoint.dir=runs/swa-2
} &
wait
echo "[long-finetune] trained for $(($(date +%s) - start)) s"
for run in sniah passkey swa; do
  echo "== $run"
  for stage in 1 2; do
    cp "runs/$run-$stage/metrics.jsonl" "logs/$run-$stage.metrics.jsonl" 2>/dev/null
    grep -v '^\[W' "logs/$run-$stage.log" | grep -E '^step [0-9]+/' | awk 'NR % 10 == 0' |
      cut -c1-110 | tail -4
    grep -v '^\[W' "logs/$run-$stage.log" | grep -iE 'error|panic' | head -2
  done
  x export "runs/$run-2" --out "$out/$run" --split-rows | tail -1
done
for run in sniah passkey; do
  for task in passkey s-niah; do
    [ "$run/$task" = passkey/s-niah ] && continue
    echo "== $run $task 1M"
    timeout "${LOOK_S:-60}" scripts/gpu-test.sh exec "$bin" eval niah --checkpoint "$out/$run" \
      --task "$task" --len 1M --samples 4 --batch 4 --haystack data/tokens/sample_val \
      --device cuda --quiet --out "logs/niah-$run-$task" 2>&1 |
      grep -v '^\[W' | grep -E '^(all|first token|[0-9.]+ )|prefill|rror' | head -12
  done
done
tar -czf "$out/runs.tgz" logs
echo "[long-finetune] done after $(($(date +%s) - start)) s"
