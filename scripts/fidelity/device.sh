#!/usr/bin/env bash
# There (the GPU machine, carry [".device/fidelity"] filled by prepare-device.sh): unpacks
# the reference checkout and the wheels under $TMPDIR, then runs compare.py with the GPU
# image's Python and lcm's libraries (scripts/gpu-test.sh exec). Arguments go to
# compare.py, e.g. the paper's geometry at 16K tokens in bf16:
#
#   scripts/fidelity/device.sh --model configs/models/drt-128m.json --len 16380 --batch 1 \
#       --device cuda --dtype bf16 --report $OUT/fidelity-16k-bf16.json
#
# PYTHON (default /opt/torch/.venv/bin/python) and TORCH_DIR (its torch, for lcm's
# libraries) name another install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
src=.device/fidelity
py=${PYTHON:-/opt/torch/.venv/bin/python}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/lcm-fidelity-device-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/reference" "$tmp/site"
tar -C "$tmp/reference" -xzf "$src/reference.tar.gz"
gzip -dc "$src/lcm.gz" > "$tmp/lcm"
chmod +x "$tmp/lcm"
for w in "$src"/wheels/*.whl; do "$py" -m zipfile -e "$w" "$tmp/site"; done
export TORCH_DIR=${TORCH_DIR:-$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')}
PYTHONPATH=$tmp/site${PYTHONPATH:+:$PYTHONPATH} scripts/gpu-test.sh exec "$py" \
  scripts/fidelity/compare.py --reference "$tmp/reference" --lcm "$tmp/lcm" "$@"
