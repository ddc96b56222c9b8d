#!/usr/bin/env bash
# The main job end to end on small bundled data, on any machine (CPU is enough):
# set-up, build, then each stage of the pipeline in order.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
echo "[demo] cargo build --release"
cargo build --release
lcm=target/release/lcm

echo "[demo] lcm info"
$lcm info
