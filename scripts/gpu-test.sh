#!/usr/bin/env bash
# GPU tests and benchmarks on a machine without cargo (see ../shared/TOOLCHAIN.md).
#
#   scripts/gpu-test.sh build               here: build the release test executables and
#                                           `lcm`, copy them into .device/bin (git-ignored)
#   scripts/gpu-test.sh run [TORCH_DIR]     there: run every test executable from
#                                           .device/bin against the torch install at
#                                           TORCH_DIR (default: the GPU image's), logging
#                                           to $OUT/gpu-tests.log when OUT is set
#   scripts/gpu-test.sh exec CMD...         there: run CMD with the same libraries, e.g.
#                                           scripts/gpu-test.sh exec .device/bin/lcm bench rmsnorm
#
# With the device tool: build here, then run there with carry [".device"].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# LCM_DEVICE_BIN: another folder under .device (e.g. one per worktree), carried instead.
bin=${LCM_DEVICE_BIN:-.device/bin}
default_torch=/opt/torch/.venv/lib/python3.12/site-packages/torch

# The libraries of a torch wheel install (what the rpaths point to on the build machine).
use_torch() {
  local td=$1 sp
  sp=$(dirname "$td")
  [ -d "$td/lib" ] || { echo "[gpu-test] error: no torch install at $td" >&2; exit 2; }
  export LD_LIBRARY_PATH=$td/lib:$sp/nvidia/cu13/lib:$sp/nvidia/cudnn/lib:$sp/nvidia/nccl/lib:$sp/nvidia/cusparselt/lib:$sp/nvidia/nvshmem/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
}

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
  cp "${CARGO_TARGET_DIR:-target}/release/lcm" "$bin/lcm"
  strip --strip-debug "$bin"/*
  ls -la "$bin"
  ;;
exec)
  shift
  use_torch "${TORCH_DIR:-$default_torch}"
  exec "$@"
  ;;
run)
  use_torch "${2:-$default_torch}"
  log=${OUT:-/tmp}/gpu-tests.log
  : >"$log"
  export LCM_TEST_BIN=$bin/lcm
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
  sed -n '2,15p' "$0"
  exit 2
  ;;
esac
