#!/usr/bin/env bash
# Here (with network): fills .device/fidelity/ (git-ignored) with what the fidelity harness
# needs on the GPU machine, which has torch in /opt/torch/.venv (Python 3.12) and no
# network:
#   .device/fidelity/lcm.gz               the release lcm (cargo build --release --bin lcm),
#                                         stripped and gzipped (about 12 MB)
#   .device/fidelity/reference.tar.gz     the reference checkout's model/, ltriton/ and
#                                         config/DRT*/
#   .device/fidelity/wheels/              requirements.txt's wheels for CPython 3.12, x86-64
#                                         (about 30 MB, most of it numpy)
# Then run scripts/fidelity/device.sh there with the device tool's carry [".device/fidelity"]
# (about 43 MB in all; the carry limit is 64 MiB).
#
#   scripts/fidelity/prepare-device.sh --reference /tmp/ref [--lcm PATH] [--python 3.12]
#
# --reference: a checkout of ant-research/long-context-modeling (HEAD aa7fa60), e.g.
#   git clone https://github.com/ant-research/long-context-modeling /tmp/ref
# --lcm: a release lcm to take instead of building one (e.g. .device/bin/lcm from
#   scripts/gpu-test.sh build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ref= lcm= py=3.12
while [ $# -gt 0 ]; do
  case $1 in
  --reference) ref=$2; shift 2 ;;
  --lcm) lcm=$2; shift 2 ;;
  --python) py=$2; shift 2 ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
  esac
done
[ -n "$ref" ] && [ -f "$ref/model/DRT.py" ] || { echo "--reference: no model/DRT.py under '$ref'" >&2; exit 2; }
dst=.device/fidelity
rm -rf "$dst"
mkdir -p "$dst/wheels"
if [ -z "$lcm" ]; then
  cargo build --release --bin lcm
  lcm=${CARGO_TARGET_DIR:-target}/release/lcm
fi
cp "$lcm" "$dst/lcm"
strip --strip-debug "$dst/lcm"
gzip -9 "$dst/lcm"
tar -C "$ref" -czf "$dst/reference.tar.gz" model ltriton config/DRT config/DRT-unittest
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --implementation cp \
  --python-version "$py" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 -r scripts/fidelity/requirements.txt -d "$dst/wheels"
du -sh "$dst" "$dst"/*
