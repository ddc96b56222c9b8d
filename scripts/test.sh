#!/usr/bin/env bash
# The test command (README, .ci/run): set-up, formatting, lints, then every test.
# GPU tests print that they were not run when no CUDA device is visible; run them on a
# GPU machine with scripts/gpu-test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
scripts/make-sample-pile.sh
echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "[test] cargo test"
cargo test --all-targets
echo "[test] all passed"
