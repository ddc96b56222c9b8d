#!/usr/bin/env bash
# On the GPU machine (device tool): the SWA and GCA benches of one build on each kernel path
# (`lcm bench kernels --path`), alternated over two rounds so that the paths are compared
# on one machine state. (The tests run every path by themselves.)
#
#   BIN=./lcm PATHS="tma-qs tma wgmma mma" BENCHES="swa-w512 gca-d64" scripts/device/kernel-paths.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
x() { scripts/gpu-test.sh exec "$@" 2>&1 | grep -v '^\[W'; }
for round in 1 2; do
  for p in ${PATHS:-tma-qs tma wgmma mma}; do
    echo "== --path $p, round $round"
    for b in ${BENCHES:-swa-w512 enc-s64 gca-d64}; do
      x "$BIN" bench kernels --only "$b" --runs "${RUNS:-30}" --warmup 3 --no-reference --path "$p" |
        grep -E '^(swa|gca|hsa)' | cut -c1-100
    done
  done
done
