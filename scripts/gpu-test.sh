#!/usr/bin/env bash
# GPU tests and benchmarks on a machine without cargo (see ../shared/TOOLCHAIN.md).
#
#   scripts/gpu-test.sh build               here: build the release test executables and
#                                           `lcm`, copy them into .device/bin (git-ignored)
#   scripts/gpu-test.sh run [TORCH_DIR]     there: run every test executable from
#                                           .device/bin against the torch install at
#                                           TORCH_DIR (default: the GPU image's), logging
#                                           to $OUT/gpu-tests.log when OUT is set
#
# With the device tool: build here, then run with carry [".device"]:
#   scripts/gpu-test.sh run && .device/bin/lcm bench rmsnorm
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=.device/bin

case "${1:-}" in
build)
  mkdir -p "$bin"
  rm -f "$bin"/*
  echo "[gpu-test] building release test executables"
  cargo test --release --no-run --message-format=json 2>/dev/null |
    .venv/bin/python -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' |
    while read -r exe; do cp "$exe" "$bin/$(basename "$exe" | sed "s/-[0-9a-f]*$//")"; done
  cargo build --release
  cp target/release/lcm "$bin/lcm"
  strip --strip-debug "$bin"/*
  ls -la "$bin"
  ;;
run)
  td=${2:-/opt/torch/.venv/lib/python3.12/site-packages/torch}
  sp=$(dirname "$td")
  export LD_LIBRARY_PATH=$td/lib:$sp/nvidia/cu13/lib:$sp/nvidia/cudnn/lib:$sp/nvidia/nccl/lib:$sp/nvidia/cusparselt/lib:$sp/nvidia/nvshmem/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  log=${OUT:-/tmp}/gpu-tests.log
  : >"$log"
  "$bin/lcm" info | tee -a "$log"
  status=0
  for t in "$bin"/*; do
    [ "$(basename "$t")" = lcm ] && continue
    echo "== $(basename "$t")" | tee -a "$log"
    "$t" --test-threads=1 2>&1 | tee -a "$log" || status=1
  done
  echo "[gpu-test] exit status $status (log: $log)"
  exit $status
  ;;
*)
  sed -n '2,13p' "$0"
  exit 2
  ;;
esac
